/* waiters.c - W6 many-waiters: one manager with n requests pending on k
 * keys that a second manager holds; heap per pending request, wake-up
 * latency as the keys are released one by one, and the close with what
 * is left. Both managers run on one loop in this process, so the release
 * and the grant it causes are stamped on one clock. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "bench.h"
#include "bench_loop.h"

typedef struct w6_ctx w6_ctx;

typedef struct w6_req {
    w6_ctx *c;
    int k, calls, status;
} w6_req;

struct w6_ctx {
    bl_manager *holder, *m;
    bl_lock **held;  /* the holder's lock on each key */
    int nkeys, nheld, hold_failed, all_held;
    w6_req *reqs;
    int n, calls, twice, granted, cancelled, other;
    uint64_t *released_at; /* per key, once the holder let it go */
    char *woken;           /* per key: its first grant since then was seen */
    double *wake_ms;
    int nwake, all_woken, rel_errors;
    int closed;
};

typedef struct hold_slot {
    bl_lock *lock;
    w6_ctx *c;
} hold_slot;

static void hold_cb(bl_lock *lock, int status, void *data)
{
    hold_slot *s = data;
    if (status == BL_OK)
        s->lock = lock;
    else
        s->c->hold_failed++;
    s->c->all_held = ++s->c->nheld == s->c->nkeys;
}

static void waiter_cb(bl_lock *lock, int status, void *data)
{
    (void)lock;
    w6_req *r = data;
    w6_ctx *c = r->c;
    if (r->calls++)
        c->twice++;
    r->status = status;
    c->calls++;
    if (status == BL_OK) {
        c->granted++;
        if (c->released_at[r->k] && !c->woken[r->k]) {
            c->woken[r->k] = 1;
            c->wake_ms[c->nwake++] = (double)(bench_now_us() - c->released_at[r->k]) / 1000.0;
            c->all_woken = c->nwake == c->nkeys;
        }
    } else if (status == BL_ECANCELED) {
        c->cancelled++;
    } else {
        c->other++;
    }
}

static void released_cb(bl_lock *lock, int status, void *data)
{
    (void)lock;
    w6_ctx *c = data;
    if (status != BL_OK)
        c->rel_errors++;
}

static void closed_cb(bl_manager *m, void *data)
{
    (void)m;
    *(int *)data = 1;
}

static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd; /* small chunks + mmapped ones */
}

/* 1 if mallinfo2 sees this process's allocations: not under ASan or
 * valgrind, whose allocators glibc's statistics know nothing of. */
static int heap_measurable(void)
{
    size_t before = heap_in_use();
    char *volatile p = malloc(4096);
    int seen = p && heap_in_use() >= before + 4096;
    free(p);
    return seen;
}

/* Run the loop until the manager has had n busy answers (every request's
 * first attempt came back: it is pending), or timeout_s. */
static int run_until_pending(struct ev_loop *loop, w6_ctx *c, double timeout_s)
{
    uint64_t until = bench_now_us() + (uint64_t)(timeout_s * 1e6);
    bl_stats st;
    for (;;) {
        bl_manager_stats(c->m, &st);
        if (st.conflicts >= (uint64_t)c->n || c->calls == c->n)
            return 1;
        if (bench_now_us() > until)
            return 0;
        ev_run(loop, EVRUN_ONCE);
    }
}

/* The heap while the most requests are between attempts, over window_s:
 * the rest have a retry out, whose hiredis buffers come and go. */
static size_t heap_when_quiet(struct ev_loop *loop, w6_ctx *c, double window_s, int *waiting)
{
    uint64_t until = bench_now_us() + (uint64_t)(window_s * 1e6);
    bl_stats st;
    size_t heap = 0;
    *waiting = -1;
    do {
        bl_manager_stats(c->m, &st);
        if ((int)st.waiting > *waiting) {
            *waiting = (int)st.waiting;
            heap = heap_in_use();
        }
        if (*waiting == c->n - c->calls)
            break;
        ev_run(loop, EVRUN_NOWAIT);
    } while (bench_now_us() < until);
    return heap;
}

int bench_w6(const bl_config *cfg, int requests, int keys, w6_result *out)
{
    return bench_w6_opts(cfg, requests, keys, 60000, out);
}

int bench_w6_opts(const bl_config *cfg, int requests, int keys, int64_t wait_ms, w6_result *out)
{
    memset(out, 0, sizeof *out);
    out->requests = requests;
    out->keys = keys;
    if (requests < 1 || keys < 1 || keys > requests)
        return -1;
    struct ev_loop *loop = bench_loop_new();
    bl_loop bl_h, bl_m;
    w6_ctx c = {.n = requests, .nkeys = keys};
    hold_slot *slots = calloc((size_t)keys, sizeof *slots);
    c.reqs = calloc((size_t)requests, sizeof *c.reqs);
    c.wake_ms = calloc((size_t)keys, sizeof *c.wake_ms);
    c.released_at = calloc((size_t)keys, sizeof *c.released_at);
    c.woken = calloc((size_t)keys, 1);
    int rc = -1;
    if (!loop || !slots || !c.reqs || !c.wake_ms || !c.released_at || !c.woken)
        goto out;
    c.holder = bench_manager(loop, &bl_h, cfg);
    c.m = c.holder ? bench_manager(loop, &bl_m, cfg) : NULL;
    if (!c.m)
        goto out;
    char posting[32];
    bl_acquire_opts hold;
    bl_acquire_opts_init(&hold);
    hold.ttl_ms = 300000; /* outlives the run: the holder never renews */
    hold.wait_ms = 0;
    for (int k = 0; k < keys; k++) {
        slots[k].c = &c;
        snprintf(posting, sizeof posting, BENCH_W6_FMT, k);
        if (bl_acquire(c.holder, BENCH_MARKETPLACE, posting, &hold, hold_cb, &slots[k], NULL))
            c.hold_failed++, c.all_held = ++c.nheld == keys;
    }
    if (!bench_run_until(loop, &c.all_held, 30.0) || c.hold_failed) {
        fprintf(stderr, "W6: the holder got %d of %d keys\n", keys - c.hold_failed, keys);
        goto close;
    }

    /* The requests: every byte the manager adds for them is theirs. */
    bl_acquire_opts wait;
    bl_acquire_opts_init(&wait);
    wait.ttl_ms = BENCH_TTL_MS;
    wait.wait_ms = wait_ms;
    size_t before = heap_in_use();
    uint64_t t0 = bench_now_us();
    for (int i = 0; i < requests; i++) {
        w6_req *r = &c.reqs[i];
        r->c = &c;
        r->k = i % keys;
        snprintf(posting, sizeof posting, BENCH_W6_FMT, r->k);
        if (bl_acquire(c.m, BENCH_MARKETPLACE, posting, &wait, waiter_cb, r, NULL) != BL_OK) {
            out->errors++;
            r->calls = -1; /* never started: no callback due */
        }
    }
    if (out->errors || !run_until_pending(loop, &c, 60.0)) {
        fprintf(stderr, "W6: the requests did not all become pending\n");
        out->errors++;
        goto close;
    }
    out->setup_s = (double)(bench_now_us() - t0) / 1e6;
    out->pending_measured = requests - c.calls;
    size_t after = heap_when_quiet(loop, &c, 2.0, &out->waiting_measured);
    out->heap_measurable = heap_measurable();
    out->heap_delta = (long long)after - (long long)before;
    out->heap_bytes_per_pending = (double)out->heap_delta / requests;

    /* Release the keys one by one, in key order, back to back: awaiting
     * each would time the holder's round trips through a server that every
     * pending request polls (the default backoff: about once a second
     * each, 100,000/s at n = 100,000) and run past the requests' 60 s. The
     * first grant on a key after its release is its wake-up. */
    for (int k = 0; k < keys; k++) {
        c.released_at[k] = bench_now_us();
        if (bl_release(slots[k].lock, released_cb, &c) != BL_OK)
            c.rel_errors++;
    }
    if (c.calls < requests) /* else nobody is left to wake (the CONTROL) */
        bench_run_until(loop, &c.all_woken, 30.0);
    out->wake_misses = keys - c.nwake;
    out->release_errors = c.rel_errors;
    out->wakes = c.nwake;
    out->wake_ms_p50 = bench_pct(c.wake_ms, (size_t)c.nwake, 50);
    out->wake_ms_p99 = bench_pct(c.wake_ms, (size_t)c.nwake, 99);
    out->wake_ms_max = bench_pct(c.wake_ms, (size_t)c.nwake, 100);

    /* Close with whatever is left: every key held by one request, the rest
     * pending. */
    out->pending_at_close = requests - c.calls;
    bl_stats st;
    bl_manager_stats(c.m, &st);
    out->attempts = st.attempts;
    out->wakeups = st.wakeups;
    uint64_t tc = bench_now_us();
    if (bl_manager_close(c.m, closed_cb, &c.closed) == BL_OK &&
        bench_run_until(loop, &c.closed, 120.0))
        out->close_ms = (double)(bench_now_us() - tc) / 1000.0;
    else
        out->errors++;
    c.m = NULL;
    rc = 0;

close:
    if (c.m)
        bench_close_manager(loop, c.m);
    if (c.holder)
        bench_close_manager(loop, c.holder);
    out->callbacks = c.calls;
    out->twice = c.twice;
    out->granted = c.granted;
    out->cancelled = c.cancelled;
    out->other = c.other;
    for (int i = 0; i < requests; i++)
        if (c.reqs[i].calls == 0)
            out->missing++;
    if (rc == 0 && (out->errors || out->twice || out->missing || out->wake_misses ||
                    out->release_errors))
        rc = -1;
out:
    free(slots);
    free(c.reqs);
    free(c.wake_ms);
    free(c.released_at);
    free(c.woken);
    if (loop)
        ev_loop_destroy(loop);
    return rc;
}
