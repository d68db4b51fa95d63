/* test_seam.c - both sides of the backend seam (src/backend.h) without a
 * server, a real loop or a sleep: the engine against a fake backend on a
 * fake clock (backoff, deadlines, answer deadlines, leases, wake-ups,
 * close), and the memory backend against a fake engine (a host struct of
 * recorders). Time moves only when a test says so. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* ---- a fake loop: a clock the test moves, one-shot timers --------------- */

struct bl_timer {
    bl_timer_cb cb;
    void *data;
    int armed;
    uint64_t due, seq;
    struct bl_timer *next;
};

static uint64_t fnow, fseq;
static struct bl_timer *ftimers;

static bl_timer *ft_new(void *impl, bl_timer_cb cb, void *data)
{
    (void)impl;
    struct bl_timer *t = calloc(1, sizeof *t);
    t->cb = cb;
    t->data = data;
    t->next = ftimers;
    ftimers = t;
    return t;
}
static void ft_start(bl_timer *t, uint64_t after)
{
    t->armed = 1;
    t->due = fnow + after;
    t->seq = ++fseq;
}
static void ft_stop(bl_timer *t) { t->armed = 0; }
static void ft_free(bl_timer *t)
{
    struct bl_timer **pp = &ftimers;
    while (*pp != t)
        pp = &(*pp)->next;
    *pp = t->next;
    free(t);
}
static uint64_t ft_now(void *impl)
{
    (void)impl;
    return fnow;
}
static int ft_attach(void *impl, struct redisAsyncContext *ac)
{
    (void)impl;
    (void)ac;
    return -1;
}

/* Move the clock by ms, firing due timers in order (due time, then arming
 * order), each at its own time. */
static void advance(uint64_t ms)
{
    uint64_t target = fnow + ms;
    for (;;) {
        struct bl_timer *best = NULL;
        for (struct bl_timer *t = ftimers; t; t = t->next)
            if (t->armed && t->due <= target &&
                (!best || t->due < best->due || (t->due == best->due && t->seq < best->seq)))
                best = t;
        if (!best)
            break;
        if (best->due > fnow)
            fnow = best->due;
        best->armed = 0;
        best->cb(best->data);
    }
    fnow = target;
}

static const bl_loop floop = {NULL, ft_attach, ft_new, ft_start, ft_stop, ft_free, ft_now,
                              NULL, NULL, NULL};

/* ---- a fake backend: records what the engine asks ------------------------ */

#define MAX_OPS 1024
typedef struct fake_be {
    bl_backend base;
    bl_backend_host h;
    bl_op *ops[MAX_OPS];
    enum bl_op_kind kinds[MAX_OPS];
    uint64_t sent_at[MAX_OPS];
    int nops;
    int watch_on, watch_off, leaves;
    int batches, batch_max, batch_fails; /* start_many (fb_vt_many) */
} fake_be;

static fake_be *FB;

static int fb_start(bl_backend *be, bl_op *op)
{
    fake_be *f = (fake_be *)be;
    cr_assert_lt(f->nops, MAX_OPS);
    f->kinds[f->nops] = op->kind;
    f->sent_at[f->nops] = fnow;
    f->ops[f->nops++] = op;
    return 0;
}
static void fb_leave(bl_backend *be, const bl_keys *k)
{
    (void)k;
    ((fake_be *)be)->leaves++;
}
static void fb_watch(bl_backend *be, const char *key, size_t n, int on)
{
    (void)key;
    (void)n;
    if (on)
        ((fake_be *)be)->watch_on++;
    else
        ((fake_be *)be)->watch_off++;
}
static int fb_admin(bl_backend *be, bl_aop *op)
{
    (void)be;
    (void)op;
    return BL_ENOMEM;
}
static int fb_state(const bl_backend *be)
{
    (void)be;
    return BL_CONN_UP;
}
static void fb_shutdown(bl_backend *be, int force)
{
    (void)force;
    fake_be *f = (fake_be *)be;
    f->h.closed(f->h.ctx);
}
static void fb_free(bl_backend *be) { free(be); }
static const bl_backend_vt fb_vt = {"fake", fb_start, fb_leave, fb_watch, fb_admin,
                                    fb_state, fb_shutdown, fb_free, NULL};
/* A backend that batches renewals: each op is recorded as start does. */
static int fb_start_many(bl_backend *be, bl_op *const *ops, size_t n)
{
    fake_be *f = (fake_be *)be;
    cr_assert(n >= 2 && n <= BL_RENEW_BATCH_MAX, "%zu ops in a batch", n);
    if (f->batch_fails)
        return BL_ECONN;
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(ops[i]->kind, BL_OP_EXTEND);
        cr_assert_eq(ops[i]->nkeys, 0, "a group renews alone");
        fb_start(be, ops[i]);
    }
    f->batches++;
    if ((int)n > f->batch_max)
        f->batch_max = (int)n;
    return 0;
}
static const bl_backend_vt fb_vt_many = {"fake", fb_start, fb_leave, fb_watch, fb_admin,
                                         fb_state, fb_shutdown, fb_free, fb_start_many};
static int fb_make(const bl_backend_host *h, bl_backend **out)
{
    fake_be *f = calloc(1, sizeof *f);
    f->base.vt = &fb_vt;
    f->h = *h;
    FB = f;
    *out = &f->base;
    return 0;
}

/* Answer operation i. */
static void answer(int i, int status, uint64_t token)
{
    cr_assert_lt(i, FB->nops, "no operation %d was sent", i);
    bl_op_result r = {status, token, 0, status == BL_ECONN ? "connection lost" : NULL, 0, 0};
    FB->ops[i]->done(FB->ops[i], &r);
}

/* ---- recorders -------------------------------------------------------------- */

typedef struct rec {
    int calls, status;
    uint64_t at;
    bl_lock *lock;
    char errmsg[BL_ERRMSG_MAX];
} rec;

static void on_acq(bl_lock *l, int status, void *data)
{
    rec *r = data;
    r->calls++;
    r->status = status;
    r->at = fnow;
    r->lock = l;
    snprintf(r->errmsg, sizeof r->errmsg, "%s", bl_lock_errmsg(l));
}
static void on_rel(bl_lock *l, int status, void *data) { on_acq(l, status, data); }
static int lost_calls, lost_status;
static void on_lost(bl_lock *l, int status, void *data)
{
    (void)l;
    (void)data;
    lost_calls++;
    lost_status = status;
}
static int closed_calls;
static void on_closed(bl_manager *m, void *data)
{
    (void)m;
    (void)data;
    closed_calls++;
}

static bl_manager *M;

static void setup(void)
{
    fnow = 1000000;
    fseq = 0;
    lost_calls = closed_calls = 0;
    bl_config cfg;
    bl_config_init(&cfg);
    cr_assert_eq(bl_manager_new_with(&floop, &cfg, fb_make, &M), BL_OK);
}

static void teardown(void)
{
    if (M) {
        cr_assert_eq(bl_manager_close(M, on_closed, NULL), BL_OK);
        advance(10000);
        cr_assert_eq(closed_calls, 1, "close called back once");
        M = NULL;
    }
    cr_assert_null(ftimers, "every timer freed");
}

static bl_acquire_opts opts(int64_t ttl, int64_t wait)
{
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.ttl_ms = ttl;
    o.wait_ms = wait;
    return o;
}

TestSuite(seam, .init = setup, .fini = teardown);

Test(seam, busy_attempts_follow_the_backoff_and_end_at_the_deadline)
{
    rec r = {0};
    bl_acquire_opts o = opts(30000, 2000);
    uint64_t start = fnow;
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &r, NULL), BL_OK);
    cr_assert_eq(FB->nops, 1, "the first attempt goes at once");
    cr_assert_eq(FB->kinds[0], BL_OP_ACQUIRE);
    cr_assert_gt(FB->ops[0]->queue_ttl_ms, 2000, "the queue entry outlives the wait");
    double step = 50;
    for (int i = 0; r.calls == 0; i++) {
        cr_assert_lt(i, 40, "bounded number of attempts");
        answer(FB->nops - 1, BL_EBUSY, 0);
        if (r.calls)
            break;
        int before = FB->nops;
        uint64_t asked = fnow, left = start + 2000 - fnow;
        /* drawn from [step/2, step], clamped to the deadline */
        uint64_t lo = (uint64_t)(step / 2), hi = (uint64_t)step;
        lo = lo < left ? lo : left;
        hi = hi < left ? hi : left;
        while (FB->nops == before && fnow - asked <= hi)
            advance(1);
        cr_assert_eq(FB->nops, before + 1, "one attempt per pause (%d)", i);
        cr_assert(fnow - asked >= lo && fnow - asked <= hi,
                  "pause %d: %llu ms, not in [%llu, %llu]", i,
                  (unsigned long long)(fnow - asked), (unsigned long long)lo,
                  (unsigned long long)hi);
        step = step * 1.5 > 1000 ? 1000 : step * 1.5;
    }
    cr_assert_eq(r.calls, 1);
    cr_assert_eq(r.status, BL_ETIMEDOUT);
    cr_assert_geq(fnow, start + 2000, "not before the deadline");
    cr_assert_str_empty(r.errmsg, "every attempt was answered: no message, not '%s'", r.errmsg);
    cr_assert_eq(FB->watch_on, 1);
    cr_assert_eq(FB->watch_off, 1);
    cr_assert_eq(FB->leaves, 1, "leaves the server's queue when it gives up");
    bl_stats s;
    bl_manager_stats(M, &s);
    cr_assert_eq(s.timeouts, 1);
    cr_assert_eq(s.attempts, s.conflicts);
}

Test(seam, an_unanswered_attempt_ends_at_the_deadline_and_a_late_grant_is_given_back)
{
    rec r = {0};
    bl_acquire_opts o = opts(30000, 500);
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &r, NULL), BL_OK);
    advance(499);
    cr_assert_eq(r.calls, 0);
    advance(1);
    cr_assert_eq(r.calls, 1);
    cr_assert_eq(r.status, BL_ETIMEDOUT);
    cr_assert_str_eq(r.errmsg, "Redis did not answer in time");
    answer(0, BL_OK, 42); /* the grant arrives after all */
    cr_assert_eq(FB->nops, 2);
    cr_assert_eq(FB->kinds[1], BL_OP_RELEASE, "a late grant is released at once");
    answer(1, BL_OK, 0);
    bl_stats s;
    bl_manager_stats(M, &s);
    cr_assert_eq(s.abandoned, 1);
    cr_assert_eq(s.attempts + s.direct_handoffs, s.acquired + s.done + s.abandoned + s.conflicts + s.errors_attempt);
    cr_assert_eq(r.calls, 1, "the callback ran once");
}

Test(seam, a_try_once_without_an_answer_is_a_connection_error_after_command_timeout)
{
    rec r = {0};
    bl_acquire_opts o = opts(30000, 0);
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &r, NULL), BL_OK);
    advance(4999);
    cr_assert_eq(r.calls, 0);
    advance(1);
    cr_assert_eq(r.status, BL_ECONN);
    answer(0, BL_EBUSY, 0); /* late and harmless */
    cr_assert_eq(r.calls, 1);
}

/* Renewals are spread: each comes at most ttl/3 after the last one
 * answered, and no sooner than its spread (the last quarter of that
 * third), the queue's window (a quarter of it, at most 50 ms) and the
 * rounding to a window allow. */
Test(seam, a_lease_is_renewed_within_every_third_of_its_ttl)
{
    rec r = {0};
    bl_acquire_opts o = opts(300, 0);
    o.auto_extend = 1;
    o.on_lost = on_lost;
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &r, NULL), BL_OK);
    answer(0, BL_OK, 7);
    cr_assert_eq(r.status, BL_OK);
    cr_assert_eq(bl_lock_token(r.lock), 7);
    for (int i = 1; i <= 5; i++) {
        int earliest = 100 - 25 - 25 - 25;
        advance((uint64_t)earliest - 1);
        cr_assert_eq(FB->nops, i, "not early (%d)", i);
        int waited = earliest - 1;
        while (FB->nops == i && waited < 100) {
            advance(1);
            waited++;
        }
        cr_assert_eq(FB->nops, i + 1, "renewal %d within ttl/3 (%d ms)", i, waited);
        cr_assert_eq(FB->kinds[i], BL_OP_EXTEND);
        cr_assert_eq(FB->ops[i]->ttl_ms, 300);
        answer(i, BL_OK, 0);
    }
    cr_assert_eq(lost_calls, 0);
    rec rr = {0};
    cr_assert_eq(bl_release(r.lock, on_rel, &rr), BL_OK);
    answer(FB->nops - 1, BL_OK, 0);
    cr_assert_eq(rr.status, BL_OK);
}

Test(seam, an_unanswered_renewal_loses_the_lock_when_the_lease_runs_out)
{
    rec r = {0};
    bl_acquire_opts o = opts(300, 0);
    o.auto_extend = 1;
    o.on_lost = on_lost;
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &r, NULL), BL_OK);
    uint64_t sent = fnow;
    answer(0, BL_OK, 7);
    advance(100);
    cr_assert_eq(FB->kinds[1], BL_OP_EXTEND);
    advance(sent + 299 - fnow);
    cr_assert_eq(lost_calls, 0, "the lease still runs");
    advance(1);
    cr_assert_eq(lost_calls, 1, "lost exactly when the lease surely ended");
    cr_assert_eq(lost_status, BL_ELOST);
    advance(1000);
    cr_assert_eq(lost_calls, 1, "once");
    answer(1, BL_OK, 0); /* a late renewal: the handle stays valid */
    rec rr = {0};
    cr_assert_eq(bl_release(r.lock, on_rel, &rr), BL_OK);
    answer(FB->nops - 1, BL_ENOTHELD, 0);
    cr_assert_eq(rr.calls, 1);
}

Test(seam, a_refused_renewal_loses_at_once_and_a_failed_one_retries_within_the_lease)
{
    rec r = {0};
    bl_acquire_opts o = opts(300, 0);
    o.auto_extend = 1;
    o.on_lost = on_lost;
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &r, NULL), BL_OK);
    answer(0, BL_OK, 7);
    advance(100);
    answer(1, BL_ECONN, 0);
    cr_assert_eq(lost_calls, 0, "a transient error is not a loss");
    advance(30); /* ttl/10 */
    cr_assert_eq(FB->nops, 3, "retried soon");
    cr_assert_eq(FB->kinds[2], BL_OP_EXTEND);
    answer(2, BL_ENOTHELD, 0);
    cr_assert_eq(lost_calls, 1, "a refused renewal is a loss at once");
    rec rr = {0};
    cr_assert_eq(bl_release(r.lock, on_rel, &rr), BL_OK);
    answer(FB->nops - 1, BL_ENOTHELD, 0);
}

Test(seam, a_release_during_a_renewal_goes_after_it)
{
    rec r = {0};
    bl_acquire_opts o = opts(300, 0);
    o.auto_extend = 1;
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &r, NULL), BL_OK);
    answer(0, BL_OK, 7);
    advance(100);
    rec rr = {0};
    cr_assert_eq(bl_release(r.lock, on_rel, &rr), BL_OK);
    cr_assert_eq(FB->nops, 2, "one operation at a time");
    answer(1, BL_OK, 0);
    cr_assert_eq(FB->nops, 3);
    cr_assert_eq(FB->kinds[2], BL_OP_RELEASE);
    answer(2, BL_OK, 0);
    cr_assert_eq(rr.calls, 1);
    cr_assert_eq(rr.status, BL_OK);
}

/* n locks "l<i>" granted together with auto_extend (ttl), ops 0..n-1. */
static void grant_many(int n, int64_t ttl, rec *r)
{
    bl_acquire_opts o = opts(ttl, 0);
    o.auto_extend = 1;
    o.on_lost = on_lost;
    char name[16];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "l%d", i);
        cr_assert_eq(bl_acquire(M, "mp", name, &o, on_acq, &r[i], NULL), BL_OK);
    }
    for (int i = 0; i < n; i++)
        answer(i, BL_OK, 100 + (uint64_t)i);
}

/* Distinct send times among ops[from..to). */
static int instants(int from, int to)
{
    int k = 0;
    for (int i = from; i < to; i++) {
        int seen = 0;
        for (int j = from; j < i && !seen; j++)
            seen = FB->sent_at[j] == FB->sent_at[i];
        k += !seen;
    }
    return k;
}

Test(seam, leases_granted_together_renew_spread_out_in_few_batches_never_late)
{
    enum { N = 100 };
    FB->base.vt = &fb_vt_many;
    rec r[N] = {{0}};
    grant_many(N, 3000, r);
    for (int round = 0; round < 3; round++) {
        uint64_t from = fnow;
        int first = FB->nops, batches = FB->batches;
        while (FB->nops < first + N && fnow < from + 1000)
            advance(1);
        cr_assert_eq(FB->nops, first + N, "round %d: every lease renewed within ttl/3", round);
        int calls = FB->batches - batches;
        int at = instants(first, first + N);
        cr_log_info("round %d: %d batches at %d instants over %llu ms", round, calls, at,
                    (unsigned long long)(fnow - from));
        cr_assert_geq(at, 2, "round %d: not one herd", round);
        cr_assert_lt(calls, N / 4, "round %d: batched (%d calls)", round, calls);
        for (int i = first; i < first + N; i++) {
            cr_assert_eq(FB->kinds[i], BL_OP_EXTEND);
            cr_assert_leq(FB->sent_at[i], from + 1000, "never later than ttl/3");
        }
        for (int i = first; i < first + N; i++)
            answer(i, BL_OK, 0);
    }
    cr_assert_leq(FB->batch_max, BL_RENEW_BATCH_MAX);
    cr_assert_eq(lost_calls, 0);
    bl_stats s;
    bl_manager_stats(M, &s);
    cr_assert_eq(s.extends, 3 * N);
}

Test(seam, a_batch_the_backend_refuses_goes_out_one_by_one)
{
    enum { N = 20 };
    FB->base.vt = &fb_vt_many;
    FB->batch_fails = 1;
    rec r[N] = {{0}};
    grant_many(N, 300, r);
    while (FB->nops < 2 * N && fnow < 1000000 + 100)
        advance(1);
    cr_assert_eq(FB->nops, 2 * N, "every renewal went out alone");
    cr_assert_eq(FB->batches, 0);
    for (int i = N; i < 2 * N; i++)
        answer(i, i == N + 3 ? BL_ENOTHELD : BL_OK, 0);
    cr_assert_eq(lost_calls, 1, "each lease answered on its own");
}

Test(seam, a_directed_wake_sends_the_oldest_waiter_which_keeps_the_queue_for_the_next)
{
    rec a = {0}, b = {0};
    bl_acquire_opts o = opts(30000, 10000);
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &a, NULL), BL_OK);
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &b, NULL), BL_OK);
    answer(0, BL_EBUSY, 0);
    answer(1, BL_EBUSY, 0);
    cr_assert_eq(FB->watch_on, 1, "one watch per key, not per request");
    size_t n = strlen("bid_lock:mp:x");
    FB->h.wake(FB->h.ctx, "bid_lock:mp:x", n, 1);
    cr_assert_eq(FB->nops, 3, "the oldest goes at once, without a timer");
    cr_assert(FB->ops[2]->queued, "it says it queued before");
    cr_assert(FB->ops[2]->keep_queued, "another request of ours still waits");
    cr_assert_gt(FB->ops[2]->queue_ttl_ms, 9000, "kept as long as the other may wait");
    answer(2, BL_OK, 5);
    cr_assert_eq(a.status, BL_OK);
    rec ra = {0};
    cr_assert_eq(bl_release(a.lock, on_rel, &ra), BL_OK);
    answer(3, BL_OK, 0);
    FB->h.wake(FB->h.ctx, "bid_lock:mp:x", n, 1);
    cr_assert_eq(FB->nops, 5, "the second waiter is woken too");
    cr_assert(!FB->ops[4]->keep_queued, "nobody else of ours waits");
    answer(4, BL_OK, 6);
    cr_assert_eq(b.status, BL_OK);
    cr_assert_eq(FB->watch_off, 1);
    cr_assert_eq(FB->leaves, 0, "granted: the server took us out itself");
    rec rb = {0};
    cr_assert_eq(bl_release(b.lock, on_rel, &rb), BL_OK);
    answer(5, BL_OK, 0);
    bl_stats s;
    bl_manager_stats(M, &s);
    cr_assert_eq(s.wakeups, 2);
}

/* A release that reserves the lock for us while our retry is on the wire:
 * the retry may have run before the release and come back busy. Then the
 * waiter goes again at once, not after a full backoff (by which time the
 * reservation would have run out). */
Test(seam, a_directed_wake_during_an_attempt_sends_the_next_attempt_at_once)
{
    rec a = {0};
    bl_acquire_opts o = opts(30000, 10000);
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &a, NULL), BL_OK);
    answer(0, BL_EBUSY, 0);
    /* Let the backoff timer send the retry, and keep it unanswered. */
    for (int i = 0; i < 2000 && FB->nops < 2; i++)
        advance(1);
    cr_assert_eq(FB->nops, 2, "the retry went out");
    size_t n = strlen("bid_lock:mp:x");
    FB->h.wake(FB->h.ctx, "bid_lock:mp:x", n, 1);
    cr_assert_eq(FB->nops, 2, "no second attempt while one is out");
    uint64_t t = fnow;
    answer(1, BL_EBUSY, 0); /* it ran before the release */
    advance(0);
    advance(1);
    cr_assert_eq(FB->nops, 3, "the next attempt goes at once after the busy answer");
    cr_assert_leq(FB->sent_at[2], t + 1);
    answer(2, BL_OK, 7);
    cr_assert_eq(a.calls, 1);
    cr_assert_eq(a.status, BL_OK);
    /* A wake-up that came during an attempt which then got the lock is
     * spent: the next wait starts with a normal backoff. */
    rec b = {0};
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &b, NULL), BL_OK);
    answer(3, BL_EBUSY, 0);
    for (int i = 0; i < 2000 && FB->nops < 5; i++)
        advance(1);
    cr_assert_eq(FB->nops, 5);
    FB->h.wake(FB->h.ctx, "bid_lock:mp:x", n, 0);
    answer(4, BL_OK, 8);
    cr_assert_eq(b.status, BL_OK);
    cr_assert_eq(FB->nops, 5, "nothing more sent");
    rec ra = {0}, rb = {0};
    cr_assert_eq(bl_release(a.lock, on_rel, &ra), BL_OK);
    cr_assert_eq(bl_release(b.lock, on_rel, &rb), BL_OK);
    answer(5, BL_OK, 0);
    answer(6, BL_OK, 0);
    bl_stats s;
    bl_manager_stats(M, &s);
    cr_assert_eq(s.wakeups, 2);
}

Test(seam, hold_times_are_profiled_and_the_longest_held_locks_listed)
{
    rec a = {0}, b = {0}, c = {0};
    bl_acquire_opts o = opts(60000, 0);
    cr_assert_eq(bl_acquire(M, "mp", "a", &o, on_acq, &a, NULL), BL_OK);
    answer(0, BL_OK, 1);
    advance(700);
    cr_assert_eq(bl_acquire(M, "mp", "b", &o, on_acq, &b, NULL), BL_OK);
    answer(1, BL_OK, 1);
    advance(200);
    cr_assert_eq(bl_acquire(M, "mp", "c", &o, on_acq, &c, NULL), BL_OK);
    answer(2, BL_OK, 1);
    advance(100);
    cr_assert_eq(bl_lock_held_ms(a.lock), 1000);
    cr_assert_eq(bl_lock_held_ms(c.lock), 100);
    bl_lock *top[2] = {NULL, NULL};
    cr_assert_eq(bl_manager_longest_held(M, top, 2), 2);
    cr_assert_eq(top[0], a.lock, "longest first");
    cr_assert_eq(top[1], b.lock);
    bl_lock *all[8];
    cr_assert_eq(bl_manager_longest_held(M, all, 8), 3, "only as many as are held");
    cr_assert_eq(all[2], c.lock);
    cr_assert_eq(bl_manager_longest_held(M, NULL, 8), 0);
    rec ra = {0}, rb = {0};
    cr_assert_eq(bl_release(a.lock, on_rel, &ra), BL_OK);
    cr_assert_eq(bl_lock_held_ms(a.lock), 0, "not held once released");
    answer(3, BL_OK, 0);
    cr_assert_eq(bl_manager_longest_held(M, top, 2), 2);
    cr_assert_eq(top[0], b.lock, "a released: b is now the longest held");
    cr_assert_eq(bl_release(b.lock, on_rel, &rb), BL_OK);
    answer(4, BL_OK, 0);
    bl_metrics mt;
    bl_manager_metrics(M, &mt);
    cr_assert_eq(mt.hold_ms.count, 2);
    cr_assert_float_eq(mt.hold_ms.sum_ms, 1000.0 + 300.0, 1e-9);
    /* 1000 ms is in the "<= 1000" bucket, 300 ms in "<= 500". */
    size_t i1000 = 0, i500 = 0;
    for (size_t i = 0; i < BL_HIST_BUCKETS; i++) {
        if (bl_hold_bounds_ms[i] == 1000)
            i1000 = i;
        if (bl_hold_bounds_ms[i] == 500)
            i500 = i;
    }
    cr_assert_eq(mt.hold_ms.counts[i1000], 1);
    cr_assert_eq(mt.hold_ms.counts[i500], 1);
    char text[16384];
    size_t len = bl_metrics_prometheus(&mt, text, sizeof text);
    cr_assert_lt(len, sizeof text);
    cr_assert(strstr(text, "# TYPE bidlock_hold_seconds histogram\n"));
    cr_assert(strstr(text, "bidlock_hold_seconds_bucket{le=\"1\"} 2\n"), "%s", text);
    cr_assert(strstr(text, "bidlock_hold_seconds_bucket{le=\"0.5\"} 1\n"));
    cr_assert(strstr(text, "bidlock_hold_seconds_count 2\n"));
    /* c is still held: close gives it back and counts its hold too. */
}

Test(seam, close_cancels_waiters_and_gives_held_locks_back_before_calling_back)
{
    rec w = {0}, h = {0};
    bl_acquire_opts o = opts(30000, 10000);
    cr_assert_eq(bl_acquire(M, "mp", "held", &o, on_acq, &h, NULL), BL_OK);
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &w, NULL), BL_OK);
    answer(0, BL_OK, 1);
    answer(1, BL_EBUSY, 0);
    cr_assert_eq(bl_manager_close(M, on_closed, NULL), BL_OK);
    cr_assert_eq(FB->kinds[2], BL_OP_RELEASE, "the held lock is given back");
    advance(0);
    cr_assert_eq(w.status, BL_ECANCELED);
    cr_assert_eq(closed_calls, 0, "not while the release is out");
    answer(2, BL_OK, 0);
    advance(0);
    cr_assert_eq(closed_calls, 1);
    M = NULL;
}

Test(seam, calls_inside_an_ending_callback_are_refused_not_undefined)
{
    rec r = {0};
    bl_acquire_opts o = opts(30000, 0);
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &r, NULL), BL_OK);
    answer(0, BL_OK, 1);
    cr_assert_eq(bl_cancel(r.lock), BL_EINVAL, "a held lock cannot be cancelled");
    rec rr = {0};
    cr_assert_eq(bl_release(r.lock, on_rel, &rr), BL_OK);
    cr_assert_eq(bl_release(r.lock, on_rel, &rr), BL_EINVAL, "a second release while the first runs");
    answer(1, BL_OK, 0);
    cr_assert_eq(rr.calls, 1);
}

/* ---- the memory backend against a fake engine ----------------------------- */

typedef struct host_rec {
    int wakes, directed, closed;
    char key[64];
} host_rec;
static void h_wake(void *ctx, const char *key, size_t n, int directed)
{
    host_rec *h = ctx;
    h->wakes++;
    h->directed += directed;
    snprintf(h->key, sizeof h->key, "%.*s", (int)n, key);
}
static void h_closed(void *ctx) { ((host_rec *)ctx)->closed++; }
static void h_event(void *ctx, int ev)
{
    (void)ctx;
    (void)ev;
}
static uint64_t h_rand(void *ctx)
{
    (void)ctx;
    return 4;
}

typedef struct op_rec {
    bl_op op;
    int calls;
    bl_op_result r;
    char err[BL_ERRMSG_MAX];
} op_rec;
static void op_done(bl_op *op, const bl_op_result *r)
{
    op_rec *o = (op_rec *)op;
    o->calls++;
    o->r = *r;
}
static void mk_op(op_rec *o, enum bl_op_kind kind, const bl_keys *k, uint64_t ttl)
{
    memset(o, 0, sizeof *o);
    o->op = (bl_op){.kind = kind, .keys = k, .ttl_ms = ttl, .errbuf = o->err, .done = op_done};
}

TestSuite(memory_seam);

Test(memory_seam, the_memory_backend_keeps_redis_semantics_behind_the_seam)
{
    fnow = 5000;
    bl_config cfg;
    bl_config_init(&cfg);
    host_rec ha = {0}, hb = {0};
    bl_backend_host a = {.loop = &floop, .cfg = &cfg, .holder = "A", .holder_len = 1,
                         .prefix = "bid_lock", .ctx = &ha, .wake = h_wake, .closed = h_closed,
                         .event = h_event, .rand = h_rand};
    bl_backend_host b = a;
    b.holder = "B";
    b.ctx = &hb;
    bl_backend *ba, *bb;
    cr_assert_eq(bl_memory_backend_new(&a, &ba), 0);
    cr_assert_eq(bl_memory_backend_new(&b, &bb), 0);
    bl_keys *k = bl_keys_new("bid_lock", "mp", "x");
    op_rec o1, o2, o3;
    mk_op(&o1, BL_OP_ACQUIRE, k, 1000);
    cr_assert_eq(ba->vt->start(ba, &o1.op), 0);
    cr_assert_eq(o1.calls, 0, "never inside start");
    advance(0);
    cr_assert_eq(o1.calls, 1);
    cr_assert_eq(o1.r.status, BL_OK);
    cr_assert_gt(o1.r.token, 0);
    mk_op(&o2, BL_OP_ACQUIRE, k, 1000);
    bb->vt->start(bb, &o2.op);
    advance(0);
    cr_assert_eq(o2.r.status, BL_EBUSY);
    mk_op(&o3, BL_OP_EXTEND, k, 1000);
    bb->vt->start(bb, &o3.op);
    advance(0);
    cr_assert_eq(o3.r.status, BL_ENOTHELD, "only the holder extends");
    mk_op(&o3, BL_OP_RELEASE, k, 0);
    ba->vt->start(ba, &o3.op);
    advance(0);
    cr_assert_eq(o3.r.status, BL_OK);
    cr_assert_eq(hb.wakes, 1, "a release wakes every manager on the store");
    cr_assert_eq(hb.directed, 0);
    cr_assert_str_eq(hb.key, "bid_lock:mp:x");
    uint64_t last = o1.r.token;
    mk_op(&o2, BL_OP_ACQUIRE, k, 1000);
    bb->vt->start(bb, &o2.op);
    advance(0);
    cr_assert_eq(o2.r.status, BL_OK);
    cr_assert_gt(o2.r.token, last, "fencing tokens increase across holders");
    advance(1000); /* B's lease runs out on the fake clock */
    mk_op(&o1, BL_OP_ACQUIRE, k, 1000);
    ba->vt->start(ba, &o1.op);
    advance(0);
    cr_assert_eq(o1.r.status, BL_OK, "an expired lock is free");
    ba->vt->shutdown(ba, 0);
    bb->vt->shutdown(bb, 0);
    advance(0);
    cr_assert_eq(ha.closed, 1);
    cr_assert_eq(hb.closed, 1);
    ba->vt->free(ba);
    bb->vt->free(bb);
    free(k);
    cr_assert_null(ftimers);
}

/* ---- what the header promises about handles inside ending callbacks ---- */

static int inner_rc;
static void cancel_inside(bl_lock *l, int status, void *data)
{
    on_acq(l, status, data);
    inner_rc = bl_cancel(l);
}
static void release_inside(bl_lock *l, int status, void *data)
{
    on_rel(l, status, data);
    inner_rc = bl_release(l, NULL, NULL);
}

Test(seam, inside_its_last_callback_a_handle_refuses_cancel_and_release)
{
    rec r = {0};
    bl_acquire_opts o = opts(30000, 0);
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, cancel_inside, &r, NULL), BL_OK);
    answer(0, BL_EBUSY, 0);
    cr_assert_eq(r.status, BL_EBUSY);
    cr_assert_eq(inner_rc, BL_EINVAL, "cancel of an ended acquire, inside its callback");
    rec h = {0}, rr = {0};
    cr_assert_eq(bl_acquire(M, "mp", "y", &o, on_acq, &h, NULL), BL_OK);
    answer(1, BL_OK, 3);
    cr_assert_eq(bl_release(h.lock, release_inside, &rr), BL_OK);
    answer(2, BL_OK, 0);
    cr_assert_eq(rr.calls, 1);
    cr_assert_eq(inner_rc, BL_EINVAL, "a second release, inside the first one's callback");
    cr_assert_eq(FB->nops, 3, "nothing was sent for it");
}

static bl_lock *section_lock;
static int section_done_calls, section_done_status;
static void section_fn(bl_lock *l, void *data)
{
    (void)data;
    section_lock = l;
}
static void section_done(int status, int section_status, void *data)
{
    (void)section_status;
    (void)data;
    section_done_calls++;
    section_done_status = status;
    inner_rc = bl_section_end(section_lock, 0);
}

Test(seam, a_section_ended_by_close_refuses_a_late_end_inside_its_done_callback)
{
    section_done_calls = 0;
    bl_acquire_opts o = opts(30000, 0);
    cr_assert_eq(bl_with_lock(M, "mp", "s", &o, section_fn, section_done, NULL), BL_OK);
    answer(0, BL_OK, 9);
    cr_assert_not_null(section_lock, "the section runs");
    cr_assert_eq(bl_manager_close(M, on_closed, NULL), BL_OK);
    advance(0);
    cr_assert_eq(section_done_calls, 1);
    cr_assert_eq(section_done_status, BL_ECANCELED);
    cr_assert_eq(inner_rc, BL_EINVAL, "bl_section_end after close ended it");
    answer(1, BL_OK, 0); /* the close's give-back */
    advance(0);
    cr_assert_eq(closed_calls, 1);
    M = NULL;
}

Test(seam, a_kept_queue_entry_is_dropped_when_the_other_waiter_left_during_the_grant)
{
    rec a = {0}, b = {0};
    bl_acquire_opts o = opts(30000, 10000);
    bl_lock *bl;
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &a, NULL), BL_OK);
    cr_assert_eq(bl_acquire(M, "mp", "x", &o, on_acq, &b, &bl), BL_OK);
    answer(0, BL_EBUSY, 0);
    answer(1, BL_EBUSY, 0);
    FB->h.wake(FB->h.ctx, "bid_lock:mp:x", strlen("bid_lock:mp:x"), 1);
    cr_assert(FB->ops[2]->keep_queued);
    cr_assert_eq(bl_cancel(bl), BL_OK); /* the other waiter goes while the grant is out */
    advance(0);
    cr_assert_eq(b.status, BL_ECANCELED);
    cr_assert_eq(FB->leaves, 0, "another request of ours still acquires");
    answer(2, BL_OK, 5);
    cr_assert_eq(a.status, BL_OK);
    cr_assert_eq(FB->leaves, 1, "the entry the grant kept has nobody behind it: dropped");
    rec ra = {0};
    cr_assert_eq(bl_release(a.lock, on_rel, &ra), BL_OK);
    answer(3, BL_OK, 0);
}

/* ---- allocations: per pending request, and none per retry ------------------ */

/* Linked with -Wl,--wrap=malloc,calloc,realloc (tests/meson.build): every
 * call from this file and the static library lands here first. */
void *__real_malloc(size_t n);
void *__real_calloc(size_t k, size_t n);
void *__real_realloc(void *p, size_t n);
static unsigned long nallocs;
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t k, size_t n);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n)
{
    nallocs++;
    return __real_malloc(n);
}
void *__wrap_calloc(size_t k, size_t n)
{
    nallocs++;
    return __real_calloc(k, n);
}
void *__wrap_realloc(void *p, size_t n)
{
    nallocs++;
    return __real_realloc(p, n);
}

Test(seam, a_pending_request_costs_one_allocation_and_its_retries_none)
{
    enum { N = 20 }; /* (N + 1) x 6 operations stay under MAX_OPS */
    rec r[N + 1];
    memset(r, 0, sizeof r);
    bl_acquire_opts o = opts(30000, 600000);
    /* CONTROL, and the per-key cost: the first request on a key makes the
     * key's entry (names and wait queue) beside its handle; the very first
     * one also the key table and the timer heap. The counter sees them. */
    cr_assert_eq(bl_acquire(M, "mp", "other", &o, on_acq, &r[N], NULL), BL_OK);
    unsigned long before = nallocs;
    cr_assert_eq(bl_acquire(M, "mp", "hot", &o, on_acq, &r[0], NULL), BL_OK);
    cr_assert_eq(nallocs - before, 2, "handle, key entry");
    /* Every further request on the key: its handle only (the names are the
     * key's, the timer is inside the handle with its heap slot reserved,
     * 64 at first; the error buffer waits for an error). */
    before = nallocs;
    for (int i = 1; i < N; i++)
        cr_assert_eq(bl_acquire(M, "mp", "hot", &o, on_acq, &r[i], NULL), BL_OK);
    cr_assert_eq(nallocs - before, N - 1);
    /* Busy answers, backoff pauses and the retries they send: nothing. */
    before = nallocs;
    int answered = 0;
    for (int round = 0; round < 5; round++) {
        int upto = FB->nops;
        for (int i = answered; i < upto; i++)
            answer(i, BL_EBUSY, 0);
        answered = upto;
        advance(1000); /* every waiter's pause (at most backoff_max_ms) ends */
        cr_assert_gt(FB->nops, upto, "round %d sent retries", round);
    }
    cr_assert_geq(FB->nops, 5 * (N + 1), "each request retried");
    cr_assert_eq(nallocs - before, 0, "%lu allocations for %d attempts", nallocs - before,
                 FB->nops - N - 1);
    for (int i = 0; i <= N; i++)
        cr_assert_eq(r[i].calls, 0, "still pending");
    cr_assert_eq(FB->watch_on, 2, "one subscription per key");
    /* Closed here, not by teardown: the records live on this stack. The
     * answers still out come back; the close ends each request once. */
    cr_assert_eq(bl_manager_close(M, on_closed, NULL), BL_OK);
    for (int i = answered; i < FB->nops; i++)
        answer(i, BL_EBUSY, 0);
    advance(10000);
    cr_assert_eq(closed_calls, 1);
    M = NULL;
    for (int i = 0; i <= N; i++) {
        cr_assert_eq(r[i].calls, 1, "request %d ended once", i);
        cr_assert_eq(r[i].status, BL_ECANCELED);
    }
}
