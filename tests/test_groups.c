/* test_groups.c - bl_acquire_many against a real redis-server (and the
 * memory backend): every posting of a group or none, never part of one;
 * waiting without holding; done markers naming the posting; one token per
 * posting; renewal and loss of a group; overlapping groups that cannot
 * deadlock; and the faults: the server killed mid-group, cancel and close
 * with groups in flight. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"

TestSuite(groups, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 120);

/* A group's outcome: a rec, plus what only the callback may read. */
typedef struct grec {
    rec r;
    int done_index;
    size_t postings;
    uint64_t tokens[BL_GROUP_MAX];
} grec;

static void on_group(bl_lock *lock, int status, void *data)
{
    grec *g = data;
    g->done_index = bl_lock_done_index(lock);
    g->postings = bl_lock_postings(lock);
    for (size_t i = 0; i < g->postings && i < BL_GROUP_MAX; i++)
        g->tokens[i] = bl_lock_token_at(lock, i);
    on_acq(lock, status, &g->r);
}

static void group_start(bl_manager *m, const bl_posting *p, size_t n, int64_t wait_ms,
                        int64_t ttl_ms, grec *g)
{
    memset(g, 0, sizeof *g);
    bl_acquire_opts o = acq_opts(wait_ms, ttl_ms);
    cr_assert_eq(bl_acquire_many(m, p, n, &o, on_group, g, NULL), BL_OK, "%s",
                 bl_manager_errmsg(m));
    cr_assert_eq(g->r.n, 0, "never called back from inside the call");
}

static grec group(bl_manager *m, const bl_posting *p, size_t n, int64_t wait_ms, int64_t ttl_ms)
{
    grec g;
    group_start(m, p, n, wait_ms, ttl_ms, &g);
    cr_assert(tl_wait(T, &g.r.n, 1, 30000), "the group's callback came");
    tl_run_for(T, 2);
    cr_assert_eq(g.r.n, 1, "exactly once");
    return g;
}

static const bl_posting bundle[] = {{"ebay", "a"}, {"ebay", "b"}, {"etsy", "c"}};
static const char *const bundle_keys[] = {"bid_lock:ebay:a", "bid_lock:ebay:b",
                                          "bid_lock:etsy:c"};

static int held_by(const char *key, const char *holder)
{
    redisReply *r = rs_cmd(&srv, "GET %s", key);
    int yes = r && r->type == REDIS_REPLY_STRING && strcmp(r->str, holder) == 0;
    freeReplyObject(r);
    return yes;
}

Test(groups, a_group_takes_every_posting_or_none)
{
    bl_manager *g = mk_manager(T, srv.port, NULL), *x = mk_manager(T, srv.port, NULL);
    rec b = acq(x, "b", 20000, 30000); /* another holder has one of them */
    cr_assert_eq(b.status, BL_OK);
    grec busy = group(g, bundle, 3, 0, 30000);
    cr_assert_eq(busy.r.status, BL_EBUSY);
    cr_assert(!rs_exists(&srv, bundle_keys[0]) && !rs_exists(&srv, bundle_keys[2]),
              "nothing of the group is held");
    cr_assert_eq(rel(b.lock), BL_OK);

    grec all = group(g, bundle, 3, 0, 30000);
    cr_assert_eq(all.r.status, BL_OK);
    cr_assert_eq(all.postings, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert(held_by(bundle_keys[i], bl_manager_holder(g)), "%s is the group's",
                  bundle_keys[i]);
        cr_assert_gt(all.tokens[i], 0);
        cr_assert_str_eq(bl_lock_key_at(all.r.lock, (size_t)i), bundle_keys[i]);
    }
    cr_assert_gt(all.tokens[1], b.token, "b's token still increases");
    cr_assert_eq(all.r.token, all.tokens[0]);
    cr_assert_null(bl_lock_key_at(all.r.lock, 3));
    cr_assert_eq(bl_lock_token_at(all.r.lock, 3), 0);
    cr_assert_eq(bl_lock_done_index(all.r.lock), -1);
    /* Each posting is a lock of its own for everyone else. */
    rec c = acq_in(x, "etsy", "c", 0, 30000);
    cr_assert_eq(c.status, BL_EBUSY);
    cr_assert_eq(rel(all.r.lock), BL_OK, "one release for the group");
    for (int i = 0; i < 3; i++)
        cr_assert(!rs_exists(&srv, bundle_keys[i]), "%s released", bundle_keys[i]);
    bl_stats s;
    bl_manager_stats(g, &s);
    cr_assert_eq(s.groups, 2);
    assert_counters(g);
    assert_counters(x);
    close_manager(T, g);
    close_manager(T, x);
}

Test(groups, a_group_waits_without_holding_any_and_then_gets_all)
{
    bl_config cfg = quick_cfg(srv.port);
    bl_manager *g = mk_manager(T, srv.port, &cfg), *x = mk_manager(T, srv.port, NULL);
    rec c = acq_in(x, "etsy", "c", 20000, 30000);
    cr_assert_eq(c.status, BL_OK);
    grec w;
    group_start(g, bundle, 3, 20000, 30000, &w);
    bl_stats s = {0};
    for (int i = 0; i < 2000 && s.conflicts < 2; i++) {
        tl_run_for(T, 10);
        bl_manager_stats(g, &s);
    }
    cr_assert_geq(s.conflicts, 2, "the group found c taken, twice");
    cr_assert(!rs_exists(&srv, bundle_keys[0]) && !rs_exists(&srv, bundle_keys[1]),
              "it holds none of the others while it waits");
    cr_assert_eq(w.r.n, 0);
    cr_assert_eq(rel(c.lock), BL_OK);
    cr_assert(tl_wait(T, &w.r.n, 1, 20000));
    cr_assert_eq(w.r.status, BL_OK);
    cr_assert_gt(w.tokens[2], c.token);
    cr_assert_eq(rel(w.r.lock), BL_OK);
    assert_counters(g);
    close_manager(T, g);
    close_manager(T, x);
}

Test(groups, a_done_posting_ends_the_group_with_bl_edone_and_says_which)
{
    bl_manager *g = mk_manager(T, srv.port, NULL), *x = mk_manager(T, srv.port, NULL);
    rec b = acq(x, "b", 20000, 30000);
    cr_assert_eq(b.status, BL_OK);
    cr_assert_eq(rel_done(b.lock), BL_OK);
    grec d = group(g, bundle, 3, 20000, 30000);
    cr_assert_eq(d.r.status, BL_EDONE);
    cr_assert_eq(d.done_index, 1, "posting 1 (ebay b) was done");
    for (int i = 0; i < 3; i++)
        cr_assert(!rs_exists(&srv, bundle_keys[i]));
    /* And release_done of a group marks every posting done. */
    const bl_posting two[] = {{"ebay", "a"}, {"etsy", "c"}};
    grec ok = group(g, two, 2, 0, 30000);
    cr_assert_eq(ok.r.status, BL_OK);
    cr_assert_eq(rel_done(ok.r.lock), BL_OK);
    rec a = acq(x, "a", 0, 30000), c = acq_in(x, "etsy", "c", 0, 30000);
    cr_assert_eq(a.status, BL_EDONE);
    cr_assert_eq(c.status, BL_EDONE);
    close_manager(T, g);
    close_manager(T, x);
}

/* Two managers take groups of the same postings in opposite orders, over
 * and over: neither ever waits holding a part, so both finish; each time
 * one is granted, the server shows both postings as its own. */
typedef struct cycler {
    bl_manager *m;
    const bl_posting *p;
    int left, busy;
} cycler;

static void cyc_next(cycler *c);
static void cyc_released(bl_lock *lock, int status, void *data)
{
    (void)lock;
    cycler *c = data;
    cr_assert_eq(status, BL_OK);
    cyc_next(c);
}
static void cyc_got(bl_lock *lock, int status, void *data)
{
    cycler *c = data;
    cr_assert_eq(status, BL_OK, "%s", bl_status_name(status));
    c->left--;
    cr_assert(held_by("bid_lock:ebay:a", bl_manager_holder(c->m)));
    cr_assert(held_by("bid_lock:ebay:b", bl_manager_holder(c->m)));
    cr_assert_eq(bl_release(lock, cyc_released, c), BL_OK);
}
static void cyc_next(cycler *c)
{
    if (c->left == 0) {
        c->busy = 0;
        return;
    }
    bl_acquire_opts o = acq_opts(20000, 30000);
    cr_assert_eq(bl_acquire_many(c->m, c->p, 2, &o, cyc_got, c, NULL), BL_OK);
}

Test(groups, overlapping_groups_in_opposite_orders_never_deadlock)
{
    static const bl_posting ab[] = {{"ebay", "a"}, {"ebay", "b"}};
    static const bl_posting ba[] = {{"ebay", "b"}, {"ebay", "a"}};
    bl_config cfg = quick_cfg(srv.port);
    cycler c1 = {.m = mk_manager(T, srv.port, &cfg), .p = ab, .left = 30, .busy = 1};
    cycler c2 = {.m = mk_manager(T, srv.port, &cfg), .p = ba, .left = 30, .busy = 1};
    cyc_next(&c1);
    cyc_next(&c2);
    for (int i = 0; i < 6000 && (c1.busy || c2.busy); i++)
        tl_run_for(T, 10);
    cr_assert(!c1.busy && !c2.busy, "both finished: %d and %d left", c1.left, c2.left);
    bl_stats s1, s2;
    bl_manager_stats(c1.m, &s1);
    bl_manager_stats(c2.m, &s2);
    cr_log_info("overlapping groups: 60 grants, %llu + %llu conflicts",
                (unsigned long long)s1.conflicts, (unsigned long long)s2.conflicts);
    assert_counters(c1.m);
    assert_counters(c2.m);
    close_manager(T, c1.m);
    close_manager(T, c2.m);
}

Test(groups, a_renewed_group_that_loses_one_posting_is_lost_once)
{
    bl_manager *g = mk_manager(T, srv.port, NULL);
    rec lost = {0};
    grec held;
    memset(&held, 0, sizeof held);
    bl_acquire_opts o = acq_opts(0, 3000); /* renewed about every second */
    o.auto_extend = 1;
    o.on_lost = on_lost;
    o.on_lost_data = &lost;
    cr_assert_eq(bl_acquire_many(g, bundle, 3, &o, on_group, &held, NULL), BL_OK);
    cr_assert(tl_wait(T, &held.r.n, 1, 20000));
    cr_assert_eq(held.r.status, BL_OK);
    bl_stats s = {0};
    for (int i = 0; i < 3000 && s.extends < 4; i++) {
        tl_run_for(T, 10);
        bl_manager_stats(g, &s);
    }
    cr_assert_geq(s.extends, 4, "renewed, as one");
    for (int i = 0; i < 3; i++)
        cr_assert(rs_exists(&srv, bundle_keys[i]), "%s still held past its 3 s TTL",
                  bundle_keys[i]);
    freeReplyObject(rs_cmd(&srv, "DEL %s", bundle_keys[1]));
    cr_assert(tl_wait(T, &lost.n, 1, 20000), "on_lost came");
    tl_run_for(T, 1200); /* a second renewal would call it again */
    cr_assert_eq(lost.n, 1, "once");
    cr_assert_eq(lost.status, BL_ELOST);
    cr_assert_eq(rel(held.r.lock), BL_ENOTHELD, "one posting was gone");
    for (int i = 0; i < 3; i++)
        cr_assert(!rs_exists(&srv, bundle_keys[i]), "the others are released anyway");
    close_manager(T, g);
}

Test(groups, bad_groups_are_refused_and_send_nothing)
{
    bl_manager *g = mk_manager(T, srv.port, NULL);
    long long before = rs_calls(&srv, NULL);
    bl_posting many[BL_GROUP_MAX + 1];
    char names[BL_GROUP_MAX + 1][8];
    for (int i = 0; i <= BL_GROUP_MAX; i++) {
        snprintf(names[i], sizeof names[i], "p%d", i);
        many[i] = (bl_posting){"ebay", names[i]};
    }
    const bl_posting bad_id[] = {{"ebay", "a"}, {"ebay", "b"}, {"e:bay", "c"}};
    const bl_posting twice[] = {{"ebay", "a"}, {"ebay", "b"}, {"ebay", "a"}};
    const bl_posting brace[] = {{"ebay", "a}"}};
    struct {
        const bl_posting *p;
        size_t n;
        const char *why;
    } bad[] = {
        {many, 0, "at least one"},
        {NULL, 2, "at least one"},
        {many, BL_GROUP_MAX + 1, "at most 32"},
        {bad_id, 3, "posting 2: marketplace contains ':'"},
        {twice, 3, "postings 0 and 2 are the same"},
        {brace, 1, "posting 0:"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        grec r;
        memset(&r, 0, sizeof r);
        cr_assert_eq(bl_acquire_many(g, bad[k].p, bad[k].n, NULL, on_group, &r, NULL), BL_EINVAL,
                     "case %zu", k);
        cr_assert(strstr(bl_manager_errmsg(g), bad[k].why), "case %zu: \"%s\"", k,
                  bl_manager_errmsg(g));
    }
    cr_assert_eq(bl_acquire_many(g, bundle, 3, NULL, NULL, NULL, NULL), BL_EINVAL);
    grec ok = group(g, many, BL_GROUP_MAX, 0, 30000);
    cr_assert_eq(ok.r.status, BL_OK, "32 postings are fine");
    cr_assert_eq(bl_transfer(ok.r.lock, "other:1:x", 0, on_rel, NULL), BL_EINVAL,
                 "a group is not transferred");
    cr_assert_eq(rel(ok.r.lock), BL_OK);
    cr_assert_eq(rs_lock_count(&srv), 0);
    cr_assert_gt(rs_calls(&srv, NULL), before);
    close_manager(T, g);
}

Test(groups, the_server_killed_mid_group_ends_it_once_and_never_half_held)
{
    bl_config cfg = quick_cfg(srv.port);
    bl_manager *g = mk_manager(T, srv.port, &cfg), *x = mk_manager(T, srv.port, &cfg);
    rec b = acq(x, "b", 20000, 30000);
    cr_assert_eq(b.status, BL_OK);
    grec w;
    group_start(g, bundle, 3, 20000, 30000, &w);
    bl_stats s = {0};
    for (int i = 0; i < 2000 && s.conflicts < 1; i++) {
        tl_run_for(T, 10);
        bl_manager_stats(g, &s);
    }
    rs_kill(&srv);
    tl_run_for(T, 200);
    rs_restart(&srv); /* empty: b's holder is gone with it */
    cr_assert(tl_wait(T, &w.r.n, 1, 30000));
    tl_run_for(T, 5);
    cr_assert_eq(w.r.n, 1);
    cr_assert(w.r.status == BL_OK || w.r.status == BL_ECONN, "%s", bl_status_name(w.r.status));
    if (w.r.status == BL_OK) {
        for (int i = 0; i < 3; i++)
            cr_assert(held_by(bundle_keys[i], bl_manager_holder(g)));
        cr_assert_eq(rel(w.r.lock), BL_OK);
    } else {
        cr_assert_eq(rs_lock_count(&srv), 0, "nothing half held");
    }
    close_manager(T, g);
    close_manager(T, x);
}

Test(groups, cancel_and_close_with_groups_in_flight_call_back_once)
{
    bl_config cfg = quick_cfg(srv.port);
    bl_manager *g = mk_manager(T, srv.port, &cfg), *x = mk_manager(T, srv.port, &cfg);
    rec b = acq(x, "b", 20000, 30000);
    cr_assert_eq(b.status, BL_OK);
    grec w1, w2, held;
    group_start(g, bundle, 3, 20000, 30000, &w1);
    tl_run_for(T, 30);
    cr_assert_eq(bl_cancel((bl_lock *)NULL), BL_EINVAL);
    /* Cancel: via a handle from bl_acquire_many's last argument. */
    bl_lock *h = NULL;
    bl_acquire_opts o = acq_opts(20000, 30000);
    memset(&w2, 0, sizeof w2);
    cr_assert_eq(bl_acquire_many(g, bundle, 3, &o, on_group, &w2, &h), BL_OK);
    tl_run_for(T, 30);
    cr_assert_eq(bl_cancel(h), BL_OK);
    cr_assert(tl_wait(T, &w2.r.n, 1, 20000));
    cr_assert_eq(w2.r.status, BL_ECANCELED);
    const bl_posting other[] = {{"ebay", "x"}, {"ebay", "y"}};
    held = group(g, other, 2, 0, 30000);
    cr_assert_eq(held.r.status, BL_OK);
    int closed = 0;
    cr_assert_eq(bl_manager_close(g, on_closed, &closed), BL_OK);
    cr_assert(tl_wait(T, &closed, 1, 20000));
    tl_run_for(T, 5);
    cr_assert_eq(w1.r.n, 1);
    cr_assert_eq(w1.r.status, BL_ECANCELED);
    cr_assert_eq(w2.r.n, 1);
    cr_assert(!rs_exists(&srv, "bid_lock:ebay:x") && !rs_exists(&srv, "bid_lock:ebay:y"),
              "close gave the held group back");
    cr_assert(!rs_exists(&srv, bundle_keys[0]), "the cancelled ones took nothing");
    cr_assert_eq(rel(b.lock), BL_OK);
    close_manager(T, x);
}

Test(groups, the_memory_backend_takes_groups_all_or_nothing_too)
{
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.backend = BL_BACKEND_MEMORY;
    bl_manager *g = mk_manager(T, 0, &cfg), *x = mk_manager(T, 0, &cfg);
    rec b = acq(x, "b", 20000, 30000);
    cr_assert_eq(b.status, BL_OK);
    grec busy = group(g, bundle, 3, 0, 30000);
    cr_assert_eq(busy.r.status, BL_EBUSY);
    rec a = acq(x, "a", 0, 30000);
    cr_assert_eq(a.status, BL_OK, "the group took nothing");
    cr_assert_eq(rel(a.lock), BL_OK);
    cr_assert_eq(rel_done(b.lock), BL_OK);
    grec done = group(g, bundle, 3, 0, 30000);
    cr_assert_eq(done.r.status, BL_EDONE);
    cr_assert_eq(done.done_index, 1);
    const bl_posting two[] = {{"ebay", "a"}, {"etsy", "c"}};
    grec ok = group(g, two, 2, 0, 30000);
    cr_assert_eq(ok.r.status, BL_OK);
    cr_assert(ok.tokens[0] > 0 && ok.tokens[1] > 0);
    rec c = acq_in(x, "etsy", "c", 0, 30000);
    cr_assert_eq(c.status, BL_EBUSY);
    cr_assert_eq(rel(ok.r.lock), BL_OK);
    rec c2 = acq_in(x, "etsy", "c", 0, 30000);
    cr_assert_eq(c2.status, BL_OK);
    cr_assert_eq(rel(c2.lock), BL_OK);
    close_manager(T, g);
    close_manager(T, x);
}
