/* helpers.c - see helpers.h. */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

enum { WAIT_MS = 20000 }; /* for one callback: generous, it is a bound */

/* ---- recorders -------------------------------------------------------------- */

int rec_calls;

void on_acq(bl_lock *lock, int status, void *rec_)
{
    rec *r = rec_;
    r->n++;
    r->status = status;
    r->lock = status == BL_OK ? lock : NULL;
    r->token = status == BL_OK ? bl_lock_token(lock) : 0;
    r->at = mono_ms();
    snprintf(r->errmsg, sizeof r->errmsg, "%s", bl_lock_errmsg(lock));
    rec_calls++;
}

void on_rel(bl_lock *lock, int status, void *rec_)
{
    rec *r = rec_;
    r->n++;
    r->status = status;
    r->lock = NULL;
    r->at = mono_ms();
    snprintf(r->errmsg, sizeof r->errmsg, "%s", bl_lock_errmsg(lock));
    rec_calls++;
}

void on_lost(bl_lock *lock, int status, void *rec_)
{
    (void)lock;
    rec *r = rec_;
    r->n++;
    r->status = status;
    r->at = mono_ms();
    rec_calls++;
}

void on_health(bl_manager *m, const bl_health *h, void *hrec_)
{
    (void)m;
    hrec *r = hrec_;
    r->n++;
    r->status = h->status;
    r->state = h->state;
    r->latency_ms = h->latency_ms;
    snprintf(r->backend, sizeof r->backend, "%s", h->backend);
    snprintf(r->errmsg, sizeof r->errmsg, "%s", h->errmsg ? h->errmsg : "");
}

void on_inspect(bl_manager *m, const bl_lock_info *i, void *irec_)
{
    (void)m;
    irec *r = irec_;
    r->n++;
    r->status = i->status;
    r->held = i->held;
    r->done = i->done;
    r->pttl = i->pttl_ms;
    r->token = i->last_token;
    snprintf(r->holder, sizeof r->holder, "%s", i->holder ? i->holder : "(null)");
    snprintf(r->errmsg, sizeof r->errmsg, "%s", i->errmsg ? i->errmsg : "");
}

void on_cleanup(bl_manager *m, int status, uint64_t removed, void *crec_)
{
    (void)m;
    crec *r = crec_;
    r->n++;
    r->status = status;
    r->removed = removed;
}

/* ---- requests on T ------------------------------------------------------------- */

bl_config quick_cfg(int port)
{
    bl_config c;
    bl_config_init(&c);
    c.port = port;
    c.reconnect_initial_ms = 20;
    c.backoff_initial_ms = 20;
    c.backoff_max_ms = 200;
    return c;
}

bl_acquire_opts acq_opts(int64_t wait_ms, int64_t ttl_ms)
{
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = wait_ms;
    o.ttl_ms = ttl_ms;
    return o;
}

static void start_in(bl_manager *m, const char *mp, const char *posting, int64_t wait_ms,
                     int64_t ttl_ms, rec *r)
{
    bl_acquire_opts o = acq_opts(wait_ms, ttl_ms);
    int before = r->n;
    cr_assert_eq(bl_acquire(m, mp, posting, &o, on_acq, r, NULL), BL_OK, "%s",
                 bl_manager_errmsg(m));
    cr_assert_eq(r->n, before, "callback ran inside bl_acquire");
}

void acq_start(bl_manager *m, const char *posting, int64_t wait_ms, int64_t ttl_ms, rec *r)
{
    start_in(m, "ebay", posting, wait_ms, ttl_ms, r);
}

rec acq_in(bl_manager *m, const char *marketplace, const char *posting, int64_t wait_ms,
           int64_t ttl_ms)
{
    rec r = {0};
    start_in(m, marketplace, posting, wait_ms, ttl_ms, &r);
    cr_assert(tl_wait(T, &r.n, 1, WAIT_MS), "acquire of %s never completed", posting);
    cr_assert_eq(r.n, 1);
    return r;
}

rec acq(bl_manager *m, const char *posting, int64_t wait_ms, int64_t ttl_ms)
{
    return acq_in(m, "ebay", posting, wait_ms, ttl_ms);
}

void acq_start_renewed(bl_manager *m, const char *posting, int64_t ttl_ms, rec *held, rec *lost)
{
    bl_acquire_opts o = acq_opts(0, ttl_ms);
    o.auto_extend = 1;
    o.on_lost = lost ? on_lost : NULL;
    o.on_lost_data = lost;
    int before = held->n;
    cr_assert_eq(bl_acquire(m, "ebay", posting, &o, on_acq, held, NULL), BL_OK, "%s",
                 bl_manager_errmsg(m));
    cr_assert_eq(held->n, before, "callback ran inside bl_acquire");
}

rec acq_renewed(bl_manager *m, const char *posting, int64_t ttl_ms, rec *lost)
{
    rec r = {0};
    acq_start_renewed(m, posting, ttl_ms, &r, lost);
    cr_assert(tl_wait(T, &r.n, 1, WAIT_MS), "acquire of %s never completed", posting);
    cr_assert_eq(r.n, 1);
    return r;
}

static int release_with(int (*release)(bl_lock *, bl_release_cb, void *), bl_lock *lock)
{
    rec r = {0};
    cr_assert_eq(release(lock, on_rel, &r), BL_OK, "%s",
                 lock ? bl_manager_errmsg(bl_lock_manager(lock)) : "the lock is NULL");
    cr_assert_eq(r.n, 0, "callback ran inside bl_release");
    cr_assert(tl_wait(T, &r.n, 1, WAIT_MS), "release never completed");
    cr_assert_eq(r.n, 1);
    return r.status;
}

int rel(bl_lock *lock)
{
    return release_with(bl_release, lock);
}

int rel_done(bl_lock *lock)
{
    return release_with(bl_release_done, lock);
}

irec inspect(bl_manager *m, const char *posting)
{
    irec r = {0};
    cr_assert_eq(bl_inspect(m, "ebay", posting, on_inspect, &r), BL_OK);
    cr_assert_eq(r.n, 0, "callback ran inside bl_inspect");
    cr_assert(tl_wait(T, &r.n, 1, WAIT_MS), "inspect never completed");
    cr_assert_eq(r.status, BL_OK, "inspect: %s", r.errmsg);
    return r;
}

/* ---- waits and checks ----------------------------------------------------------- */

typedef struct renewed_arg {
    bl_manager *m;
    uint64_t extends;
} renewed_arg;

static int renewed(void *arg)
{
    renewed_arg *a = arg;
    bl_stats s;
    bl_manager_stats(a->m, &s);
    return s.extends >= a->extends;
}

int wait_renewed(bl_manager *m, uint64_t extends, int ms)
{
    renewed_arg a = {m, extends};
    return tl_wait_for(T, renewed, &a, ms);
}

typedef struct recs {
    rec *r;
    int n;
} recs;

static int all_called(void *arg)
{
    recs *x = arg;
    for (int i = 0; i < x->n; i++)
        if (x->r[i].n < 1)
            return 0;
    return 1;
}

int wait_all(rec *r, int n, int ms)
{
    recs x = {r, n};
    return tl_wait_for(T, all_called, &x, ms);
}

void assert_once(const rec *r, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        cr_assert_eq(r[i].n, 1, "%s %d: %d callbacks", what, i, r[i].n);
}

static int is_up(void *m)
{
    return bl_manager_conn_state(m) == BL_CONN_UP;
}

int wait_up(bl_manager *m, int ms)
{
    return tl_wait_for(T, is_up, m, ms);
}

typedef struct on_server {
    const redis_srv *s;
    const char *key;
    bl_manager *m;
} on_server;

static int key_gone(void *arg)
{
    on_server *x = arg;
    return !rs_exists(x->s, x->key);
}

int wait_gone(const redis_srv *s, const char *key, int ms)
{
    on_server x = {s, key, NULL};
    return tl_wait_for(T, key_gone, &x, ms);
}

static int no_locks(void *s)
{
    return rs_lock_count(s) == 0;
}

int wait_no_locks(const redis_srv *s, int ms)
{
    return tl_wait_for(T, no_locks, (void *)s, ms);
}

static int answered(void *m)
{
    bl_stats s;
    bl_manager_stats(m, &s);
    return s.attempts + s.direct_handoffs == s.acquired + s.done + s.abandoned + s.conflicts + s.errors_attempt;
}

int wait_answered(bl_manager *m, int ms)
{
    return tl_wait_for(T, answered, m, ms);
}

static int queued(void *arg)
{
    on_server *x = arg;
    bl_stats st;
    bl_manager_stats(x->m, &st);
    /* The first attempt, then the retry its subscription asked for (which
     * starts from a timer of up to 3 ms after the wake-up), both answered. */
    if (st.wakeups < 1 || st.attempts < 2 || st.waiting < 1 || !answered(x->m))
        return 0;
    const char *holder = bl_manager_holder(x->m);
    redisReply *r = rs_cmd(x->s, "ZSCORE {bid_lock:ebay:%s}:q %s", x->key, holder);
    int in_queue = r->type == REDIS_REPLY_STRING;
    freeReplyObject(r);
    if (!in_queue)
        return 0;
    char channel[600];
    snprintf(channel, sizeof channel, "{bid_lock:ebay:%s}|%s", x->key, holder);
    return rs_subscribers(x->s, channel) >= 1;
}

int wait_queued(const redis_srv *s, bl_manager *m, const char *posting, int ms)
{
    on_server x = {s, posting, m};
    return tl_wait_for(T, queued, &x, ms);
}

void assert_counters(bl_manager *m)
{
    bl_stats s;
    bl_manager_stats(m, &s);
    cr_assert_eq(s.requests, s.acquired + s.busy + s.timeouts + s.cancelled + s.failed + s.done,
                 "requests %llu != acquired %llu + busy %llu + timeouts %llu + cancelled %llu + "
                 "failed %llu + done %llu",
                 (unsigned long long)s.requests, (unsigned long long)s.acquired,
                 (unsigned long long)s.busy, (unsigned long long)s.timeouts,
                 (unsigned long long)s.cancelled, (unsigned long long)s.failed,
                 (unsigned long long)s.done);
    cr_assert_eq(s.attempts + s.direct_handoffs, s.acquired + s.done + s.abandoned + s.conflicts + s.errors_attempt,
                 "attempts %llu (+ direct hand-offs) != acquired %llu + done %llu + abandoned %llu + conflicts %llu "
                 "+ errors_attempt %llu",
                 (unsigned long long)s.attempts, (unsigned long long)s.acquired,
                 (unsigned long long)s.done, (unsigned long long)s.abandoned,
                 (unsigned long long)s.conflicts, (unsigned long long)s.errors_attempt);
    cr_assert_eq(s.errors, s.redis_errors + s.conn_errors);
    cr_assert_eq(s.held, 0, "held gauge %llu", (unsigned long long)s.held);
    cr_assert_eq(s.waiting, 0, "waiting gauge %llu", (unsigned long long)s.waiting);
}
