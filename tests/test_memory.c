/* The in-memory backend keeps the lock semantics of Redis for one process:
 * the behaviour scenarios, with no server running at all. */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"

static tloop *T;
static int warned;

static void on_log(int level, const char *msg, void *data)
{
    (void)data;
    if (level == BL_LOG_WARN && strstr(msg, "in-memory backend"))
        warned++;
}

static void setup(void)
{
    T = tl_new();
    warned = 0;
}

static void teardown(void)
{
    tl_free(T);
}

TestSuite(memory, .init = setup, .fini = teardown, .timeout = 60);

static bl_manager *mem_manager(void)
{
    bl_config c;
    bl_config_init(&c);
    c.backend = BL_BACKEND_MEMORY;
    c.port = 1; /* nothing is ever dialled */
    c.log = on_log;
    bl_manager *m = NULL;
    cr_assert_eq(bl_manager_new(tl_bl(T), &c, &m), BL_OK);
    return m;
}

typedef struct rec {
    int n, status;
    bl_lock *lock;
    uint64_t at, token;
} rec;

static void on_acq(bl_lock *lock, int status, void *data)
{
    rec *r = data;
    r->n++;
    r->status = status;
    r->lock = status == BL_OK ? lock : NULL;
    r->token = status == BL_OK ? bl_lock_token(lock) : 0;
    r->at = mono_ms();
}

static void on_rel(bl_lock *lock, int status, void *data)
{
    (void)lock;
    rec *r = data;
    r->n++;
    r->status = status;
}

static rec acq(bl_manager *m, const char *mp, const char *posting, int64_t wait_ms, int64_t ttl_ms)
{
    rec r = {0};
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = wait_ms;
    o.ttl_ms = ttl_ms;
    cr_assert_eq(bl_acquire(m, mp, posting, &o, on_acq, &r, NULL), BL_OK);
    cr_assert_eq(r.n, 0, "asynchronous even in memory");
    cr_assert(tl_wait(T, &r.n, 1, 20000));
    return r;
}

static int rel(bl_lock *lock, int done)
{
    rec r = {0};
    cr_assert_eq((done ? bl_release_done : bl_release)(lock, on_rel, &r), BL_OK);
    cr_assert_eq(r.n, 0);
    cr_assert(tl_wait(T, &r.n, 1, 20000));
    return r.status;
}

typedef struct irec {
    int n, held, done;
    int64_t pttl;
    char holder[400];
} irec;

static void on_inspect(bl_manager *m, const bl_lock_info *i, void *data)
{
    (void)m;
    irec *r = data;
    r->n++;
    r->held = i->held;
    r->done = i->done;
    r->pttl = i->pttl_ms;
    snprintf(r->holder, sizeof r->holder, "%s", i->holder ? i->holder : "");
}

static irec inspect(bl_manager *m, const char *posting)
{
    irec r = {0};
    cr_assert_eq(bl_inspect(m, "ebay", posting, on_inspect, &r), BL_OK);
    cr_assert(tl_wait(T, &r.n, 1, 5000));
    return r;
}

Test(memory, warns_once_that_it_is_local)
{
    bl_manager *a = mem_manager();
    cr_assert_eq(warned, 1);
    close_manager(T, a);
}

Test(memory, two_instances_only_one_wins_and_only_the_holder_releases)
{
    bl_manager *a = mem_manager(), *b = mem_manager();
    rec ra = acq(a, "ebay", "p1", 0, 200);
    cr_assert_eq(ra.status, BL_OK);
    cr_assert_eq(acq(b, "ebay", "p1", 0, 0).status, BL_EBUSY);
    cr_assert_eq(acq(b, "etsy", "p1", 0, 0).status, BL_OK, "marketplaces independent");
    irec i = inspect(b, "p1");
    cr_assert_eq(i.held, 1);
    cr_assert_str_eq(i.holder, bl_manager_holder(a));
    cr_assert(i.pttl > 0 && i.pttl <= 200);
    tl_run_for(T, 300); /* a's TTL runs out */
    rec rb = acq(b, "ebay", "p1", 0, 0);
    cr_assert_eq(rb.status, BL_OK, "expired locks are free");
    cr_assert_eq(rel(ra.lock, 0), BL_ENOTHELD, "a cannot release b's lock");
    cr_assert(rb.token > ra.token);
    cr_assert_eq(inspect(a, "p1").held, 1);
    cr_assert_eq(rel(rb.lock, 0), BL_OK);
    close_manager(T, a);
    close_manager(T, b);
}

Test(memory, waiters_queue_time_out_and_wake_on_release)
{
    bl_manager *a = mem_manager(), *b = mem_manager(), *c = mem_manager();
    rec ra = acq(a, "ebay", "q", 0, 0);
    uint64_t t0 = mono_ms();
    rec late = acq(c, "ebay", "q", 300, 0);
    cr_assert_eq(late.status, BL_ETIMEDOUT);
    cr_assert(late.at - t0 >= 300);
    rec rb = {0};
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 10000;
    cr_assert_eq(bl_acquire(b, "ebay", "q", &o, on_acq, &rb, NULL), BL_OK);
    tl_run_for(T, 100);
    cr_assert_eq(rb.n, 0);
    cr_assert_eq(rel(ra.lock, 0), BL_OK);
    cr_assert(tl_wait(T, &rb.n, 1, 2000));
    cr_assert_eq(rb.status, BL_OK);
    bl_stats s;
    bl_manager_stats(b, &s);
    cr_assert(s.wakeups >= 1, "woken by the release");
    bl_manager_stats(c, &s);
    cr_assert_eq(s.timeouts, 1);
    cr_assert_eq(s.requests, s.acquired + s.busy + s.timeouts + s.cancelled + s.failed + s.done);
    close_manager(T, a);
    close_manager(T, b);
    close_manager(T, c);
}

Test(memory, done_markers_tokens_and_many_postings)
{
    bl_manager *a = mem_manager(), *b = mem_manager();
    uint64_t last = 0;
    char id[16];
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "p%d", i % 7);
        rec r = acq(i % 2 ? a : b, "ebay", id, 0, 0);
        cr_assert_eq(r.status, BL_OK);
        cr_assert(r.token > last, "tokens increase");
        last = r.token;
        cr_assert_eq(rel(r.lock, 0), BL_OK);
    }
    rec r = acq(a, "ebay", "sold", 0, 0);
    cr_assert_eq(rel(r.lock, 1), BL_OK);
    cr_assert_eq(acq(b, "ebay", "sold", 1000, 0).status, BL_EDONE);
    cr_assert_eq(acq(a, "ebay", "sold", 0, 0).status, BL_EDONE);
    cr_assert_eq(inspect(b, "sold").done, 1);
    close_manager(T, a);
    close_manager(T, b);
}

typedef struct crec {
    int n;
    uint64_t removed;
} crec;

static void on_cleanup(bl_manager *m, int status, uint64_t removed, void *data)
{
    (void)m;
    crec *r = data;
    r->n++;
    cr_assert_eq(status, BL_OK);
    r->removed = removed;
}

typedef struct hrec {
    int n, status;
} hrec;

static void on_health(bl_manager *m, const bl_health *h, void *data)
{
    (void)m;
    hrec *r = data;
    r->n++;
    r->status = h->status;
    cr_assert_str_eq(h->backend, "memory");
}

static void lost_cb(bl_lock *lock, int status, void *data)
{
    (void)lock;
    (void)status;
    (*(int *)data)++;
}

Test(memory, auto_extension_cleanup_close_and_health)
{
    bl_manager *a = mem_manager(), *b = mem_manager();
    int lost = 0;
    rec ra = {0};
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 0;
    o.ttl_ms = 150;
    o.auto_extend = 1;
    o.on_lost = lost_cb;
    o.on_lost_data = &lost;
    cr_assert_eq(bl_acquire(a, "ebay", "long", &o, on_acq, &ra, NULL), BL_OK);
    cr_assert(tl_wait(T, &ra.n, 1, 2000));
    tl_run_for(T, 1500); /* 10x the TTL */
    cr_assert_eq(acq(b, "ebay", "long", 0, 0).status, BL_EBUSY);
    cr_assert_eq(lost, 0);
    /* cleanup: b's own only, then everything under the prefix */
    cr_assert_eq(acq(b, "ebay", "b1", 0, 0).status, BL_OK);
    cr_assert_eq(acq(b, "ebay", "b2", 0, 0).status, BL_OK);
    crec c = {0};
    cr_assert_eq(bl_cleanup(b, 1, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 2000));
    cr_assert_eq(c.removed, 2, "only b's own");
    cr_assert_eq(inspect(b, "long").held, 1);
    cr_assert_eq(acq(b, "ebay", "b3", 0, 0).status, BL_OK);
    close_manager(T, a); /* releases "long" */
    cr_assert_eq(inspect(b, "long").held, 0, "close gave it back");
    c = (crec){0};
    cr_assert_eq(bl_cleanup(b, 0, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 2000));
    cr_assert_eq(c.removed, 1);
    hrec h = {0};
    cr_assert_eq(bl_health_check(b, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 2000));
    cr_assert_eq(h.status, BL_OK);
    close_manager(T, b);
}

Test(memory, bad_input_is_refused_the_same_way)
{
    bl_manager *a = mem_manager();
    rec r = {0};
    cr_assert_eq(bl_acquire(a, "a:b", "c", NULL, on_acq, &r, NULL), BL_EINVAL);
    cr_assert_eq(bl_acquire(a, "ebay", "", NULL, on_acq, &r, NULL), BL_EINVAL);
    tl_run_for(T, 20);
    cr_assert_eq(r.n, 0);
    close_manager(T, a);
}
