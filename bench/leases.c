/* leases.c - W5 many-leases: one manager holds many locks with auto_extend
 * and renews them; what that costs the server (commands/s, INFO
 * commandstats deltas) and the client (CPU), and whether every lease was
 * renewed in time (renewals per lock, the longest gap, locks lost).
 *
 * The gaps come from the engine's own record of each lease (engine.h:
 * lease_until is set from the moment each renewal was sent), read by a
 * 50 ms poll: a renewal moves it, so the poll's rhythm does not blur the
 * gap. The bench is bidlock's own and links its internals for that, and for
 * the CONTROL run that turns batching off (renew_batch = 1). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "bench.h"
#include "bench_loop.h"
#include "engine.h"

void w5_params_init(w5_params *p)
{
    p->locks = 10000;
    p->ttl_ms = 3000;
    p->hold_s = 30;
    p->batch = 0;
    p->steal = 0;
}

typedef struct w5_lease {
    bl_lock *lock;
    uint64_t last; /* lease_until after the last renewal seen (0: not granted) */
    int renewals;
    struct w5_ctx *c;
} w5_lease;

typedef struct w5_ctx {
    w5_lease *l;
    int n, answered, granted, held, errors, lost;
    uint64_t max_gap;
} w5_ctx;

static void w5_lost(bl_lock *lock, int status, void *data)
{
    (void)lock;
    (void)status;
    ((w5_lease *)data)->c->lost++;
}

static void w5_acquired(bl_lock *lock, int status, void *data)
{
    w5_lease *l = data;
    l->c->granted = ++l->c->answered >= l->c->n;
    if (status != BL_OK) {
        l->c->errors++;
        return;
    }
    l->c->held++;
    l->lock = lock;
    l->last = lock->lease_until;
}

/* Every lease the engine renewed since the last look. */
static void w5_look(w5_ctx *c, int count)
{
    for (int i = 0; i < c->n; i++) {
        w5_lease *l = &c->l[i];
        if (!l->lock || l->lock->lease_until == l->last)
            continue;
        uint64_t gap = l->lock->lease_until - l->last;
        if (count) {
            l->renewals++;
            if (gap > c->max_gap)
                c->max_gap = gap;
        }
        l->last = l->lock->lease_until;
    }
}

static void w5_poll_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    w5_look(w->data, 1);
}

/* CONTROL: break n leases behind the manager's back (blocking: it is not
 * a measured figure). */
static void w5_steal(int port, int n)
{
    redisContext *rc = redisConnect("127.0.0.1", port);
    for (int i = 0; rc && !rc->err && i < n; i++) {
        redisReply *r = redisCommand(rc, "DEL bid_lock:" BENCH_MARKETPLACE ":lease_%d", i);
        if (r)
            freeReplyObject(r);
    }
    if (rc)
        redisFree(rc);
}

int bench_w5(const bl_config *cfg, const w5_params *p, w5_result *out)
{
    memset(out, 0, sizeof *out);
    out->locks = p->locks;
    struct ev_loop *loop = bench_loop_new();
    bl_loop bl;
    w5_ctx c = {.n = p->locks};
    c.l = calloc((size_t)p->locks, sizeof *c.l);
    bl_manager *m = loop && c.l ? bench_manager(loop, &bl, cfg) : NULL;
    if (!m) {
        free(c.l);
        if (loop)
            ev_loop_destroy(loop);
        return -1;
    }
    if (p->batch > 0)
        m->renew_batch = (size_t)p->batch;
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.ttl_ms = p->ttl_ms;
    o.wait_ms = 0;
    o.auto_extend = 1;
    o.on_lost = w5_lost;
    char posting[32];
    for (int i = 0; i < p->locks; i++) {
        c.l[i].c = &c;
        o.on_lost_data = &c.l[i];
        snprintf(posting, sizeof posting, "lease_%d", i);
        if (bl_acquire(m, BENCH_MARKETPLACE, posting, &o, w5_acquired, &c.l[i], NULL) != BL_OK) {
            c.errors++;
            c.answered++;
        }
    }
    c.granted = c.answered >= c.n;
    bench_run_until(loop, &c.granted, 120.0);
    w5_look(&c, 0); /* renewals during the grants are not in the hold */
    out->held = c.held;
    out->acquire_errors = c.errors;

    bench_cmdstats s0, s1;
    bench_cmdstats_read(cfg->port, &s0);
    bl_stats st0, st1;
    bl_manager_stats(m, &st0);
    double cpu0 = bench_cpu_s();
    uint64_t t0 = bench_now_us();
    ev_timer poll;
    ev_timer_init(&poll, w5_poll_cb, 0.05, 0.05);
    poll.data = &c;
    ev_timer_start(loop, &poll);
    int never = 0;
    if (p->steal > 0) {
        bench_run_until(loop, &never, p->hold_s / 2);
        w5_steal(cfg->port, p->steal);
        bench_run_until(loop, &never, p->hold_s / 2);
    } else {
        bench_run_until(loop, &never, p->hold_s);
    }
    ev_timer_stop(loop, &poll);
    w5_look(&c, 1);
    double elapsed = (double)(bench_now_us() - t0) / 1e6;
    out->client_cpu_pct = (bench_cpu_s() - cpu0) / elapsed * 100.0;
    bl_manager_stats(m, &st1);
    bench_cmdstats_read(cfg->port, &s1);

    out->elapsed_s = elapsed;
    out->renewals = st1.extends - st0.extends;
    out->renewals_per_lock = p->locks ? (double)out->renewals / p->locks : 0;
    out->renewals_min = -1;
    for (int i = 0; i < c.n; i++)
        if (c.l[i].lock && (out->renewals_min < 0 || c.l[i].renewals < out->renewals_min))
            out->renewals_min = c.l[i].renewals;
    out->max_gap_ms = (double)c.max_gap;
    out->lost = c.lost;
    out->server_cmds = s1.total - s0.total;
    out->script_calls = (s1.evalsha - s0.evalsha) + (s1.eval - s0.eval);
    uint64_t inner = (s1.get - s0.get) + (s1.pexpire - s0.pexpire);
    out->client_cmds = out->server_cmds > inner ? out->server_cmds - inner : 0;
    out->server_cmds_per_s = (double)out->server_cmds / elapsed;
    out->client_cmds_per_s = (double)out->client_cmds / elapsed;
    out->script_calls_per_s = (double)out->script_calls / elapsed;

    bench_close_manager(loop, m);
    free(c.l);
    ev_loop_destroy(loop);
    return out->acquire_errors || out->held != p->locks ? -1 : 0;
}
