/* uncontended.c - W1 (serial), W2 (100 in flight) and the raw hiredis loops
 * W1 is compared with. One process, one loop, one command connection. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>
#include <hiredis/adapters/libev.h>
#include <sys/resource.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "bench.h"
#include "bench_loop.h"
#include "scripts.h"

void bench_config(bl_config *cfg, int port, enum bench_settings s)
{
    bl_config_init(cfg);
    cfg->port = port;
    if (s == BENCH_LEAN) {
        cfg->fencing_tokens = 0;
        cfg->done_markers = 0;
    }
    if (s == BENCH_TUNED) {
        /* docs/BENCHMARKS.md, "Tuned settings". A waiter is woken by the
         * release (pub/sub, directed to the longest waiter); its backoff
         * timer is only the fallback for a lost wake-up. Under contention a
         * timer that fires anyway sends a useless attempt (the lock is held
         * or reserved for someone else), so the tuned set waits longer
         * before polling: 200 ms -> 2 s. A 50 ms reservation frees a lock
         * handed to a waiter that has vanished sooner. (Shorter backoff,
         * 10 -> 100 ms, was tried: +0.9 commands per acquisition, no gain.) */
        cfg->backoff_initial_ms = 200;
        cfg->backoff_max_ms = 2000;
        cfg->handoff_ms = 50;
        /* BIDLOCK_BENCH_TUNING="backoff_initial_ms=..,backoff_max_ms=..,
         * backoff_multiplier=..,handoff_ms=..,wake_on_release=.." overrides
         * them, to try other settings without a rebuild. */
        const char *env = getenv("BIDLOCK_BENCH_TUNING");
        char name[32];
        double v;
        int used;
        while (env && sscanf(env, " %31[a-z_] = %lf%n", name, &v, &used) == 2) {
            if (strcmp(name, "backoff_initial_ms") == 0)
                cfg->backoff_initial_ms = (uint32_t)v;
            else if (strcmp(name, "backoff_max_ms") == 0)
                cfg->backoff_max_ms = (uint32_t)v;
            else if (strcmp(name, "backoff_multiplier") == 0)
                cfg->backoff_multiplier = v;
            else if (strcmp(name, "handoff_ms") == 0)
                cfg->handoff_ms = (uint32_t)v;
            else if (strcmp(name, "wake_on_release") == 0)
                cfg->wake_on_release = (int)v;
            else
                fprintf(stderr, "bench: BIDLOCK_BENCH_TUNING: unknown %s\n", name);
            env += used;
            env += *env == ',';
        }
    }
}

static bl_acquire_opts bench_opts(void)
{
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.ttl_ms = BENCH_TTL_MS; /* wait: the manager's default */
    return o;
}

/* ---- W1 uncontended-serial ------------------------------------------------- */

typedef struct w1_ctx {
    bl_manager *m;
    bl_acquire_opts opts;
    int n, i, stop, done, aborted, errors, nacq, nrel;
    uint64_t t;
    double *acq_us, *rel_us;
} w1_ctx;

static void w1_start(w1_ctx *c);

static void w1_released(bl_lock *lock, int status, void *data)
{
    (void)lock;
    w1_ctx *c = data;
    if (status == BL_OK)
        c->rel_us[c->nrel++] = (double)(bench_now_us() - c->t);
    else
        c->errors++;
    c->i++;
    w1_start(c);
}

static void w1_acquired(bl_lock *lock, int status, void *data)
{
    w1_ctx *c = data;
    uint64_t now = bench_now_us();
    if (status != BL_OK) {
        c->errors++;
        c->i++;
        w1_start(c);
        return;
    }
    c->acq_us[c->nacq++] = (double)(now - c->t);
    c->t = bench_now_us();
    if (bl_release(lock, w1_released, c) != BL_OK) {
        c->errors++;
        c->aborted = c->done = 1;
    }
}

static void w1_start(w1_ctx *c)
{
    if (c->i == c->stop) {
        c->done = 1;
        return;
    }
    char posting[32];
    snprintf(posting, sizeof posting, BENCH_JOB_FMT, c->i);
    c->t = bench_now_us();
    if (bl_acquire(c->m, BENCH_MARKETPLACE, posting, &c->opts, w1_acquired, c, NULL) != BL_OK) {
        c->errors++;
        c->aborted = c->done = 1;
    }
}

/* ---- W2 uncontended-concurrent ------------------------------------------------ */

typedef struct w2_ctx w2_ctx;
typedef struct w2_slot {
    w2_ctx *c;
    uint64_t t0;
} w2_slot;

struct w2_ctx {
    bl_manager *m;
    bl_acquire_opts opts;
    int n, next, completed, done, errors, ncycle;
    double *cycle_us;
};

static void w2_start(w2_slot *s);

static void w2_complete(w2_slot *s)
{
    w2_ctx *c = s->c;
    if (++c->completed == c->n)
        c->done = 1;
    else
        w2_start(s);
}

static void w2_released(bl_lock *lock, int status, void *data)
{
    (void)lock;
    w2_slot *s = data;
    if (status == BL_OK)
        s->c->cycle_us[s->c->ncycle++] = (double)(bench_now_us() - s->t0);
    else
        s->c->errors++;
    w2_complete(s);
}

static void w2_acquired(bl_lock *lock, int status, void *data)
{
    w2_slot *s = data;
    if (status != BL_OK || bl_release(lock, w2_released, s) != BL_OK) {
        s->c->errors++;
        w2_complete(s);
    }
}

static void w2_start(w2_slot *s)
{
    w2_ctx *c = s->c;
    if (c->next >= c->n)
        return;
    char posting[32];
    snprintf(posting, sizeof posting, BENCH_JOB_FMT, c->next++);
    s->t0 = bench_now_us();
    if (bl_acquire(c->m, BENCH_MARKETPLACE, posting, &c->opts, w2_acquired, s, NULL) != BL_OK) {
        c->errors++;
        c->done = 1; /* the manager refuses: stop rather than spin */
    }
}

int bench_w2(const bl_config *cfg, int cycles, int inflight, w2_result *out)
{
    memset(out, 0, sizeof *out);
    struct ev_loop *loop = bench_loop_new();
    bl_loop bl;
    w2_ctx c = {.n = cycles, .opts = bench_opts()};
    c.cycle_us = malloc((size_t)cycles * sizeof *c.cycle_us);
    w2_slot *slots = calloc((size_t)inflight, sizeof *slots);
    c.m = loop && c.cycle_us && slots ? bench_manager(loop, &bl, cfg) : NULL;
    int rc = -1;
    if (c.m) {
        uint64_t t0 = bench_now_us();
        double cpu0 = bench_cpu_s();
        for (int i = 0; i < inflight; i++) {
            slots[i].c = &c;
            w2_start(&slots[i]);
        }
        bench_run_until(loop, &c.done, 600.0);
        double s = (double)(bench_now_us() - t0) / 1e6;
        bl_stats st;
        bl_manager_stats(c.m, &st);
        out->redirects = st.redirects;
        out->map_refreshes = st.map_refreshes;
        out->client_cpu_s = bench_cpu_s() - cpu0;
        out->cycles = c.ncycle;
        out->errors = c.errors + (c.completed < c.n);
        out->cycles_per_s = c.ncycle / s;
        out->cycle_us_p50 = bench_pct(c.cycle_us, (size_t)c.ncycle, 50);
        out->cycle_us_p99 = bench_pct(c.cycle_us, (size_t)c.ncycle, 99);
        bench_close_manager(loop, c.m);
        rc = out->errors ? -1 : 0;
    }
    free(c.cycle_us);
    free(slots);
    if (loop)
        ev_loop_destroy(loop);
    return rc;
}

/* ---- the raw hiredis loops ------------------------------------------------------- */

#define FENCE_TTL "86400000"
#define QUEUE_TTL "11250" /* what bidlock sends with the default 10 s wait */

typedef struct raw_ctx {
    redisAsyncContext *ac;
    redisContext *sc; /* RAW_SYNC_SET_EVALSHA */
    enum raw_mode mode;
    char acq_sha[41], rel_sha[41];
    char holder[64];
    char key[64], fence[80], done_key[80], queue[80];
    int n, i, stop, done, aborted, errors, ok, connected;
} raw_ctx;

static void raw_keys(raw_ctx *c, int i)
{
    /* The names of keyspace.h: the lock key, and the others tagged with it. */
    snprintf(c->key, sizeof c->key, "bid_lock:" BENCH_MARKETPLACE ":" BENCH_JOB_FMT, i);
    snprintf(c->fence, sizeof c->fence, "{%s}:fence", c->key);
    snprintf(c->done_key, sizeof c->done_key, "{%s}:done", c->key);
    snprintf(c->queue, sizeof c->queue, "{%s}:q", c->key);
}

static void raw_next(raw_ctx *c);

static void raw_released(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)ac;
    redisReply *r = reply_;
    raw_ctx *c = priv;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == BL_REL_OK)
        c->ok++;
    else
        c->errors++;
    c->i++;
    raw_next(c);
}

static void raw_acquired(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *r = reply_;
    raw_ctx *c = priv;
    int ok = r && (c->mode == RAW_SCRIPTS ? r->type == REDIS_REPLY_INTEGER && r->integer > 0
                                          : r->type == REDIS_REPLY_STATUS);
    if (!ok) {
        c->errors++;
        c->aborted = c->done = 1;
        return;
    }
    redisAsyncCommand(ac, raw_released, c, "EVALSHA %s 3 %s %s %s %s 0 250", c->rel_sha, c->key,
                      c->done_key, c->queue, c->holder);
}

static void raw_next(raw_ctx *c)
{
    if (c->i == c->stop) {
        c->done = 1;
        return;
    }
    raw_keys(c, c->i);
    if (c->mode == RAW_SCRIPTS)
        redisAsyncCommand(c->ac, raw_acquired, c,
                          "EVALSHA %s 4 %s %s %s %s %s %d " FENCE_TTL " " QUEUE_TTL, c->acq_sha,
                          c->key, c->fence, c->done_key, c->queue, c->holder, BENCH_TTL_MS);
    else
        redisAsyncCommand(c->ac, raw_acquired, c, "SET %s %s NX PX %d", c->key, c->holder,
                          BENCH_TTL_MS);
}

static void raw_pong(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    raw_ctx *c = priv;
    c->connected = reply ? 1 : -1;
}

static void raw_disconnected(const redisAsyncContext *ac, int status)
{
    (void)ac;
    (void)status;
}

static raw_ctx *raw_new(int port, enum raw_mode mode, int cycles)
{
    raw_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->mode = mode;
    c->n = cycles;
    snprintf(c->holder, sizeof c->holder, "bench-raw:%d", (int)getpid());
    if (bench_script_load(port, BL_SCRIPT_RELEASE, c->rel_sha) != 0 ||
        bench_script_load(port, BL_SCRIPT_ACQUIRE, c->acq_sha) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

/* Connect c on loop; 0 once it answered PING. */
static int raw_connect(raw_ctx *c, struct ev_loop *loop, int port)
{
    if (c->mode == RAW_SYNC_SET_EVALSHA) {
        c->sc = redisConnect("127.0.0.1", port);
        return c->sc && !c->sc->err ? 0 : -1;
    }
    c->ac = redisAsyncConnect("127.0.0.1", port);
    if (!c->ac || c->ac->err || redisLibevAttach(loop, c->ac) != REDIS_OK) {
        if (c->ac)
            redisAsyncFree(c->ac);
        c->ac = NULL;
        return -1;
    }
    redisAsyncSetDisconnectCallback(c->ac, raw_disconnected);
    redisAsyncCommand(c->ac, raw_pong, c, "PING");
    bench_run_until(loop, &c->connected, 10.0);
    return c->connected == 1 ? 0 : -1;
}

/* Blocking hiredis: cycles c->i .. c->stop on c->sc. */
static void raw_sync_run(raw_ctx *c)
{
    for (; c->i < c->stop; c->i++) {
        raw_keys(c, c->i);
        redisReply *a = redisCommand(c->sc, "SET %s %s NX PX %d", c->key, c->holder, BENCH_TTL_MS);
        int ok = a && a->type == REDIS_REPLY_STATUS;
        if (a)
            freeReplyObject(a);
        redisReply *b = ok ? redisCommand(c->sc, "EVALSHA %s 3 %s %s %s %s 0 250", c->rel_sha,
                                          c->key, c->done_key, c->queue, c->holder)
                           : NULL;
        ok = b && b->type == REDIS_REPLY_INTEGER && b->integer == BL_REL_OK;
        if (b)
            freeReplyObject(b);
        if (!ok) {
            c->errors++;
            c->aborted = 1;
            break;
        }
        c->ok++;
    }
    c->done = 1;
}

static void raw_free(raw_ctx *c)
{
    if (c && c->ac)
        redisAsyncFree(c->ac);
    if (c && c->sc)
        redisFree(c->sc);
    free(c);
}

/* Run the next `chunk` cycles of c; returns the time they took. */
static uint64_t raw_turn(raw_ctx *c, struct ev_loop *loop, int chunk)
{
    c->stop = c->i + chunk < c->n ? c->i + chunk : c->n;
    c->done = 0;
    uint64_t t = bench_now_us();
    if (c->mode == RAW_SYNC_SET_EVALSHA) {
        raw_sync_run(c);
    } else {
        raw_next(c);
        bench_run_until(loop, &c->done, 600.0);
    }
    return bench_now_us() - t;
}

static void raw_fill(const raw_ctx *c, double seconds, raw_result *out)
{
    out->cycles = c->ok;
    out->errors = c->errors + (c->ok != c->n);
    out->cycles_per_s = seconds > 0 ? c->ok / seconds : 0;
}

int bench_raw(int port, enum raw_mode mode, int cycles, raw_result *out)
{
    memset(out, 0, sizeof *out);
    raw_ctx *c = raw_new(port, mode, cycles);
    struct ev_loop *loop = bench_loop_new();
    uint64_t t = 0;
    if (c && loop && raw_connect(c, loop, port) == 0)
        t = raw_turn(c, loop, cycles);
    else if (c)
        c->errors++;
    if (c)
        raw_fill(c, (double)t / 1e6, out);
    raw_free(c);
    if (loop)
        ev_loop_destroy(loop);
    return c && !out->errors ? 0 : -1;
}

/* ---- W1 and its yardstick, interleaved ---------------------------------------------- */

int bench_w1(const bl_config *cfg, int cycles, int chunk, w1_result *out, raw_result *raw_out)
{
    memset(out, 0, sizeof *out);
    if (chunk <= 0 || chunk > cycles)
        chunk = cycles;
    struct ev_loop *loop = bench_loop_new();
    bl_loop bl;
    w1_ctx c = {.n = cycles, .opts = bench_opts()};
    c.acq_us = malloc((size_t)cycles * sizeof *c.acq_us);
    c.rel_us = malloc((size_t)cycles * sizeof *c.rel_us);
    raw_ctx *raw[RAW_MODES] = {NULL};
    uint64_t t_raw[RAW_MODES] = {0}, t_w1 = 0;
    c.m = loop && c.acq_us && c.rel_us ? bench_manager(loop, &bl, cfg) : NULL;
    int ok = c.m != NULL;
    for (int m = 0; raw_out && m < RAW_MODES; m++) {
        memset(&raw_out[m], 0, sizeof raw_out[m]);
        raw[m] = raw_new(cfg->port, (enum raw_mode)m, cycles);
        ok = ok && raw[m] && raw_connect(raw[m], loop, cfg->port) == 0;
    }
    /* Take turns, `chunk` cycles each: all see the same machine. */
    while (ok && c.i < c.n && !c.aborted) {
        c.stop = c.i + chunk < c.n ? c.i + chunk : c.n;
        c.done = 0;
        uint64_t t = bench_now_us();
        w1_start(&c);
        bench_run_until(loop, &c.done, 600.0);
        t_w1 += bench_now_us() - t;
        for (int m = 0; raw_out && m < RAW_MODES; m++)
            if (!raw[m]->aborted)
                t_raw[m] += raw_turn(raw[m], loop, chunk);
    }
    if (ok) {
        out->cycles = c.nrel;
        out->errors = c.errors + (c.nrel != c.n);
        out->cycles_per_s = t_w1 ? c.nrel / ((double)t_w1 / 1e6) : 0;
        out->acquire_us_p50 = bench_pct(c.acq_us, (size_t)c.nacq, 50);
        out->acquire_us_p99 = bench_pct(c.acq_us, (size_t)c.nacq, 99);
        out->release_us_p50 = bench_pct(c.rel_us, (size_t)c.nrel, 50);
        out->release_us_p99 = bench_pct(c.rel_us, (size_t)c.nrel, 99);
        for (int m = 0; raw_out && m < RAW_MODES; m++) {
            raw_fill(raw[m], (double)t_raw[m] / 1e6, &raw_out[m]);
            if (raw_out[m].errors)
                ok = 0;
        }
    }
    if (c.m)
        bench_close_manager(loop, c.m);
    for (int m = 0; m < RAW_MODES; m++)
        raw_free(raw[m]);
    free(c.acq_us);
    free(c.rel_us);
    if (loop)
        ev_loop_destroy(loop);
    return ok && !out->errors ? 0 : -1;
}
