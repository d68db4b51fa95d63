/* test_handoff.c - hand-off between requests of one manager, against a real
 * redis-server: the server's wait queue holds one entry per manager (its
 * holder id), and that entry must speak for every request of the manager
 * still waiting on the key. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"

static redis_srv srv;
static tloop *T;

static void setup(void)
{
    rs_start(&srv, NULL);
    T = tl_new();
}

static void teardown(void)
{
    tl_free(T);
    rs_stop(&srv);
}

TestSuite(handoff, .init = setup, .fini = teardown, .timeout = 60);

typedef struct rec {
    int n, status;
    bl_lock *lock;
} rec;

static void on_acq(bl_lock *lock, int status, void *data)
{
    rec *r = data;
    r->n++;
    r->status = status;
    r->lock = status == BL_OK ? lock : NULL;
}

static void on_rel(bl_lock *lock, int status, void *data)
{
    (void)lock;
    rec *r = data;
    r->n++;
    r->status = status;
}

static int in_queue(const char *holder)
{
    redisReply *rep = rs_cmd(&srv, "ZSCORE bid_lock::q:mp:k %s", holder);
    int there = rep && rep->type == REDIS_REPLY_STRING;
    freeReplyObject(rep);
    return there;
}

static int conflicts(bl_manager *m)
{
    bl_stats s;
    bl_manager_stats(m, &s);
    return (int)s.conflicts;
}

/* Manager B polls only every 1-2 s, so a hand-off and a poll cannot be
 * mistaken for each other: the checks are on the server's queue and on
 * B's hand-off counter, not on the clock. */
Test(handoff, the_second_waiter_of_one_manager_is_handed_the_lock_too)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.backoff_initial_ms = cfg.backoff_max_ms = 2000;
    bl_manager *b = mk_manager(T, srv.port, &cfg);
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 20000;
    rec ra = {0}, b1 = {0}, b2 = {0}, rel = {0};
    cr_assert_eq(bl_acquire(a, "mp", "k", &o, on_acq, &ra, NULL), BL_OK);
    cr_assert(tl_wait(T, &ra.n, 1, 5000));
    cr_assert_eq(ra.status, BL_OK);
    cr_assert_eq(bl_acquire(b, "mp", "k", &o, on_acq, &b1, NULL), BL_OK);
    cr_assert_eq(bl_acquire(b, "mp", "k", &o, on_acq, &b2, NULL), BL_OK);
    for (int i = 0; i < 500 && conflicts(b) < 2; i++)
        tl_run_for(T, 10);
    cr_assert_geq(conflicts(b), 2, "both of B's requests found the lock taken");
    cr_assert(in_queue(bl_manager_holder(b)));

    cr_assert_eq(bl_release(ra.lock, on_rel, &rel), BL_OK);
    cr_assert(tl_wait(T, &b1.n, 1, 15000));
    cr_assert_eq(b1.status, BL_OK, "B's first request got it");
    cr_assert_eq(b2.n, 0, "B's second still waits");
    cr_assert(in_queue(bl_manager_holder(b)),
              "B keeps its place in the queue: its second request still waits");

    rec rel1 = {0};
    cr_assert_eq(bl_release(b1.lock, on_rel, &rel1), BL_OK);
    cr_assert(tl_wait(T, &rel1.n, 1, 5000));
    bl_stats s;
    bl_manager_stats(b, &s);
    cr_assert_eq(s.handoffs, 1, "B's release handed the lock on (to B's second request)");
    cr_assert(tl_wait(T, &b2.n, 1, 15000));
    cr_assert_eq(b2.status, BL_OK);
    cr_assert(!in_queue(bl_manager_holder(b)), "nobody of B waits any more");
    rec rel2 = {0};
    cr_assert_eq(bl_release(b2.lock, on_rel, &rel2), BL_OK);
    cr_assert(tl_wait(T, &rel2.n, 1, 5000));
    close_manager(T, a);
    close_manager(T, b);
}
