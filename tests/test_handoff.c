/* test_handoff.c - one holder id, many requests, against a real
 * redis-server: the server's wait queue holds one entry per manager (its
 * holder id), and that entry must speak for every request of the manager
 * still waiting on the key; a lock left under that id by a grant whose
 * reply was lost is taken back by the next acquire, not waited out. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"


static void setup(void)
{
    static const char *const extra[] = {"--enable-debug-command", "local", NULL};
    rs_start(&srv, extra);
    T = tl_new();
}

static void teardown(void)
{
    tl_free(T);
    rs_stop(&srv);
}

TestSuite(handoff, .init = setup, .fini = teardown, .timeout = 60);

static int in_queue(const char *holder)
{
    redisReply *rep = rs_cmd(&srv, "ZSCORE {bid_lock:mp:k}:q %s", holder);
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
    for (int i = 0; i < 1500 && conflicts(b) < 2; i++)
        tl_run_for(T, 10);
    cr_assert_geq(conflicts(b), 2, "both of B's requests found the lock taken");
    cr_assert(in_queue(bl_manager_holder(b)));

    /* Which of B's two goes first depends on which one is between attempts
     * when the hand-off comes (a slow machine may have one mid-retry). */
    cr_assert_eq(bl_release(ra.lock, on_rel, &rel), BL_OK);
    for (int i = 0; i < 1500 && b1.n + b2.n < 1; i++)
        tl_run_for(T, 10);
    cr_assert_eq(b1.n + b2.n, 1, "one of B's requests got it");
    rec *first = b1.n ? &b1 : &b2, *second = b1.n ? &b2 : &b1;
    cr_assert_eq(first->status, BL_OK);
    /* The release handed B the lock directly and took B's entry out of the
     * queue; B's other request goes again at once and queues behind. */
    for (int i = 0; i < 1500 && !in_queue(bl_manager_holder(b)); i++)
        tl_run_for(T, 10);
    cr_assert(in_queue(bl_manager_holder(b)),
              "B is in the queue again: its other request still waits");

    rec rel1 = {0};
    cr_assert_eq(bl_release(first->lock, on_rel, &rel1), BL_OK);
    cr_assert(tl_wait(T, &rel1.n, 1, 5000));
    bl_stats s;
    bl_manager_stats(b, &s);
    cr_assert_eq(s.handoffs, 1, "B's release handed the lock on (to B's other request)");
    cr_assert(tl_wait(T, &second->n, 1, 15000));
    cr_assert_eq(second->status, BL_OK);
    cr_assert(!in_queue(bl_manager_holder(b)), "nobody of B waits any more");
    rec rel2 = {0};
    cr_assert_eq(bl_release(second->lock, on_rel, &rel2), BL_OK);
    cr_assert(tl_wait(T, &rel2.n, 1, 5000));
    close_manager(T, a);
    close_manager(T, b);
}

static void drop(bl_lock *l, int status, void *data)
{
    (void)l;
    (void)status;
    (void)data;
}

static uint64_t reclaims(bl_manager *m)
{
    bl_stats s;
    bl_manager_stats(m, &s);
    return s.reclaims;
}

Test(handoff, a_lock_left_under_our_id_by_nobody_of_ours_is_taken_back_at_once)
{
    bl_manager *m = mk_manager(T, srv.port, NULL);
    /* What a lost reply leaves: the server granted, nobody here knows. */
    freeReplyObject(rs_cmd(&srv, "SET bid_lock:mp:orphan %s PX 60000", bl_manager_holder(m)));
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 30000;
    rec r = {0};
    cr_assert_eq(bl_acquire(m, "mp", "orphan", &o, on_acq, &r, NULL), BL_OK);
    cr_assert(tl_wait(T, &r.n, 1, 10000));
    cr_assert_eq(r.status, BL_OK);
    cr_assert_eq(reclaims(m), 1);
    cr_assert_gt(bl_lock_token(r.lock), 0, "a fresh fencing token");
    /* A lock that a request of ours holds is never taken by another. */
    rec r2 = {0};
    bl_acquire_opts once = o;
    once.wait_ms = 0;
    cr_assert_eq(bl_acquire(m, "mp", "orphan", &once, on_acq, &r2, NULL), BL_OK);
    cr_assert(tl_wait(T, &r2.n, 1, 10000));
    cr_assert_eq(r2.status, BL_EBUSY);
    cr_assert_eq(reclaims(m), 1, "no reclaim while a request of ours holds it");
    rec rel = {0};
    cr_assert_eq(bl_release(r.lock, on_rel, &rel), BL_OK);
    cr_assert(tl_wait(T, &rel.n, 1, 5000));
    cr_assert_eq(rel.status, BL_OK);
    close_manager(T, m);
}

/* The real thing: the connection dies between the grant and its reply.
 * The server is made to sleep (DEBUG SLEEP) while our acquire and a
 * CLIENT KILL of our connection both arrive; when it wakes it may run the
 * acquire first (granted, reply lost with the connection) or the kill
 * first (nothing granted). The outcome is read from the server, and a try
 * that did not lose a grant is made again. */
Test(handoff, a_grant_whose_reply_died_with_the_connection_is_reclaimed)
{
    bl_manager *m = mk_manager(T, srv.port, NULL);
    rec warm = {0}, wr = {0};
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 0;
    cr_assert_eq(bl_acquire(m, "mp", "warm", &o, on_acq, &warm, NULL), BL_OK);
    cr_assert(tl_wait(T, &warm.n, 1, 5000));
    cr_assert_eq(bl_release(warm.lock, on_rel, &wr), BL_OK);
    cr_assert(tl_wait(T, &wr.n, 1, 5000));
    int lost = 0;
    for (int attempt = 0; attempt < 20 && !lost; attempt++) {
        pid_t kid = fork();
        if (kid == 0) {
            redisContext *sleeper = rs_connect(&srv), *killer = rs_connect(&srv);
            redisAppendCommand(sleeper, "DEBUG SLEEP 0.4");
            redisBufferWrite(sleeper, &(int){0});
            usleep(200 * 1000); /* the server sleeps; our acquire is on its way */
            freeReplyObject(redisCommand(killer, "CLIENT KILL TYPE normal SKIPME yes"));
            _exit(0);
        }
        usleep(50 * 1000); /* the DEBUG SLEEP is running */
        rec r = {0};
        char posting[32];
        snprintf(posting, sizeof posting, "lost-%d", attempt);
        cr_assert_eq(bl_acquire(m, "mp", posting, &o, on_acq, &r, NULL), BL_OK);
        cr_assert(tl_wait(T, &r.n, 1, 10000));
        int st;
        waitpid(kid, &st, 0);
        if (r.status == BL_OK) { /* the kill came too late: not this case */
            rec rr = {0};
            bl_release(r.lock, on_rel, &rr);
            tl_wait(T, &rr.n, 1, 5000);
            continue;
        }
        char key[64];
        snprintf(key, sizeof key, "bid_lock:mp:%s", posting);
        redisReply *v = rs_cmd(&srv, "GET %s", key);
        lost = r.status == BL_ECONN && v && v->type == REDIS_REPLY_STRING &&
               strcmp(v->str, bl_manager_holder(m)) == 0;
        freeReplyObject(v);
        if (!lost)
            continue;
        /* The grant sits under our id. Once reconnected, the next acquire
         * takes it back. */
        for (int i = 0; i < 1000 && bl_manager_conn_state(m) != BL_CONN_UP; i++)
            tl_run_for(T, 10);
        bl_acquire_opts w = o;
        w.wait_ms = 20000;
        rec again = {0}, rel = {0};
        uint64_t before = reclaims(m);
        cr_assert_eq(bl_acquire(m, "mp", posting, &w, on_acq, &again, NULL), BL_OK);
        cr_assert(tl_wait(T, &again.n, 1, 25000));
        cr_assert_eq(again.status, BL_OK, "%s", bl_strerror(again.status));
        cr_assert_eq(reclaims(m), before + 1, "taken back, not waited out (TTL 300 s)");
        cr_assert_eq(bl_release(again.lock, on_rel, &rel), BL_OK);
        cr_assert(tl_wait(T, &rel.n, 1, 5000));
        cr_assert_eq(rel.status, BL_OK);
    }
    cr_assert(lost, "in 20 tries the connection never died between a grant and its reply");
    (void)drop;
    close_manager(T, m);
}

/* ---- direct hand-off: the release makes the longest waiter the holder ---- */

static bl_stats stats_of(bl_manager *m)
{
    bl_stats s;
    bl_manager_stats(m, &s);
    return s;
}

static long long pttl_k(void)
{
    return rs_int(&srv, "PTTL bid_lock:mp:k");
}

static int holder_is(const char *holder)
{
    redisReply *r = rs_cmd(&srv, "GET bid_lock:mp:k");
    int same = r->type == REDIS_REPLY_STRING && strcmp(r->str, holder) == 0;
    freeReplyObject(r);
    return same;
}

/* m's request waits on mp/k: queued on the server and subscribed. */
static int waits_here(bl_manager *m)
{
    const char *h = bl_manager_holder(m);
    for (int i = 0; i < 1000; i++) {
        char ch[600];
        snprintf(ch, sizeof ch, "{bid_lock:mp:k}|%s", h);
        /* ...and the retry its subscription's confirmation asked for has
         * been answered (on a slow machine it may still be out, and a
         * grant then goes the reclaim way instead of the direct one). */
        bl_stats st;
        bl_manager_stats(m, &st);
        if (in_queue(h) && rs_subscribers(&srv, ch) >= 1 && st.wakeups >= 1 &&
            st.attempts >= 2 && st.waiting >= 1 && wait_answered(m, 1))
            return 1;
        tl_run_for(T, 10);
    }
    return 0;
}

static bl_manager *slow_poller(uint32_t handoff_ms)
{
    bl_config c;
    bl_config_init(&c);
    c.backoff_initial_ms = c.backoff_max_ms = 5000; /* only a release moves it */
    c.handoff_ms = handoff_ms;
    return mk_manager(T, srv.port, &c);
}

Test(handoff, the_release_grants_the_waiter_which_then_takes_its_own_ttl)
{
    bl_manager *a = slow_poller(5000), *b = slow_poller(5000);
    rec ra = acq_in(a, "mp", "k", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    rec rb = {0};
    bl_acquire_opts o = acq_opts(30000, 60000); /* b's TTL: 60 s, far above handoff_ms */
    cr_assert_eq(bl_acquire(b, "mp", "k", &o, on_acq, &rb, NULL), BL_OK);
    cr_assert(waits_here(b), "b waits in the queue");
    uint64_t attempts = stats_of(b).attempts;
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &rb.n, 1, 20000), "b was granted");
    cr_assert_eq(rb.status, BL_OK, "%s", rb.errmsg);
    bl_stats s = stats_of(b);
    cr_assert_eq(s.direct_handoffs, 1, "by the release itself");
    cr_assert_eq(s.attempts, attempts, "without an attempt of its own");
    cr_assert_gt(rb.token, ra.token, "with a higher fencing token");
    cr_assert(holder_is(bl_manager_holder(b)));
    /* The takeover: b's own TTL replaces the hand-off's 5 s lease. */
    for (int i = 0; i < 1000 && pttl_k() <= 5000; i++)
        tl_run_for(T, 10);
    cr_assert_gt(pttl_k(), 5000, "extended to b's TTL (PTTL %lld)", pttl_k());
    cr_assert(wait_answered(b, 10000));
    cr_assert_eq(stats_of(b).extends, 1, "one takeover extension");
    cr_assert_eq(rel(rb.lock), BL_OK);
    cr_assert_eq(rs_exists(&srv, "bid_lock:mp:k"), 0);
    close_manager(T, a);
    close_manager(T, b);
}

/* A waiter that died in the queue (its holder id there, nobody behind it
 * to take the grant) keeps the lock for handoff_ms (3 s here), not for a
 * TTL (the default, 300 s). */
Test(handoff, a_grant_to_a_dead_waiter_ends_after_handoff_ms)
{
    bl_manager *a = slow_poller(3000);
    rec ra = acq_in(a, "mp", "k", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    freeReplyObject(rs_cmd(&srv, "ZADD {bid_lock:mp:k}:q 1 gone-waiter"));
    freeReplyObject(rs_cmd(&srv, "PEXPIRE {bid_lock:mp:k}:q 60000"));
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(holder_is("gone-waiter"), "granted to the head of the queue");
    long long pttl = pttl_k();
    cr_assert(pttl > 0 && pttl <= 3000, "for handoff_ms only (PTTL %lld)", pttl);
    redisReply *f = rs_cmd(&srv, "GET {bid_lock:mp:k}:fence");
    cr_assert_eq(f->type, REDIS_REPLY_STRING);
    long long tok = atoll(f->str);
    freeReplyObject(f);
    cr_assert_gt((uint64_t)tok, ra.token, "the grant took a token");
    /* Then anyone may take it, with a token above the dead waiter's. */
    bl_manager *c = mk_manager(T, srv.port, NULL);
    rec rc = acq_in(c, "mp", "k", 20000, 0);
    cr_assert_eq(rc.status, BL_OK, "%s", rc.errmsg);
    cr_assert_gt(rc.token, (uint64_t)tok);
    cr_assert_eq(rel(rc.lock), BL_OK);
    close_manager(T, c);
    close_manager(T, a);
}

/* The grant reaches a manager whose request has gone (cancelled) while its
 * holder id was still queued: the manager gives it back at once, which
 * hands it to the next waiter - long before handoff_ms (60 s) would. */
Test(handoff, a_grant_nobody_wants_any_more_is_given_back_and_handed_on)
{
    bl_manager *a = slow_poller(60000), *b = slow_poller(60000), *c = slow_poller(60000);
    rec ra = acq_in(a, "mp", "k", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    rec rb = {0}, rc = {0};
    bl_lock *lb = NULL;
    bl_acquire_opts o = acq_opts(30000, 0);
    cr_assert_eq(bl_acquire(b, "mp", "k", &o, on_acq, &rb, &lb), BL_OK);
    cr_assert(waits_here(b));
    cr_assert_eq(bl_acquire(c, "mp", "k", &o, on_acq, &rc, NULL), BL_OK);
    cr_assert(waits_here(c));
    /* b cancels; its queue entry is put back, as if the cancel's ZREM had
     * not arrived yet when the release ran. Its subscription lingers. */
    redisReply *sc = rs_cmd(&srv, "ZSCORE {bid_lock:mp:k}:q %s", bl_manager_holder(c));
    cr_assert_eq(sc->type, REDIS_REPLY_STRING);
    double score = atof(sc->str);
    freeReplyObject(sc);
    cr_assert_eq(bl_cancel(lb), BL_OK);
    cr_assert(tl_wait(T, &rb.n, 1, 5000));
    cr_assert_eq(rb.status, BL_ECANCELED);
    tl_run_for(T, 50); /* the cancel's ZREM reaches the server first */
    freeReplyObject(rs_cmd(&srv, "ZADD {bid_lock:mp:k}:q %.0f %s", score - 1,
                           bl_manager_holder(b)));
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &rc.n, 1, 20000), "c got it well before the 60 s lease");
    cr_assert_eq(rc.status, BL_OK, "%s", rc.errmsg);
    cr_assert_eq(rb.n, 1, "b's callback came once");
    bl_stats sb = stats_of(b);
    cr_assert_eq(sb.acquired, 0, "b took nothing");
    cr_assert_eq(sb.releases + sb.not_held, 0, "the give-back is no release of b's");
    cr_assert_eq(rel(rc.lock), BL_OK);
    close_manager(T, a);
    close_manager(T, b);
    close_manager(T, c);
}

/* The waiter's manager closes while the release runs: every callback once;
 * the next waiter gets the lock (given back by the closing manager if the
 * message came in time, else when handoff_ms ends). */
Test(handoff, a_waiter_closed_as_it_is_granted_ends_once_and_the_next_gets_it)
{
    bl_manager *a = slow_poller(500), *b = slow_poller(500), *c = slow_poller(500);
    rec ra = acq_in(a, "mp", "k", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    rec rb = {0}, rc = {0};
    bl_acquire_opts o = acq_opts(30000, 0);
    cr_assert_eq(bl_acquire(b, "mp", "k", &o, on_acq, &rb, NULL), BL_OK);
    cr_assert(waits_here(b));
    cr_assert_eq(bl_acquire(c, "mp", "k", &o, on_acq, &rc, NULL), BL_OK);
    cr_assert(waits_here(c));
    rec released = {0};
    cr_assert_eq(bl_release(ra.lock, on_rel, &released), BL_OK);
    int closed = 0;
    bl_manager_close(b, on_closed, &closed); /* in the same loop turn */
    cr_assert(tl_wait(T, &closed, 1, 15000), "b closed");
    cr_assert_eq(rb.n, 1, "b's request ended once");
    cr_assert(rb.status == BL_ECANCELED || rb.status == BL_OK, "%s", bl_status_name(rb.status));
    cr_assert(tl_wait(T, &rc.n, 1, 25000), "c got it");
    cr_assert_eq(rc.status, BL_OK, "%s", rc.errmsg);
    cr_assert_gt(rc.token, ra.token);
    cr_assert_eq(rel(rc.lock), BL_OK);
    cr_assert_eq(released.n, 1);
    close_manager(T, a);
    close_manager(T, c);
}

/* With auto_extend a directly granted lease is renewed like any other. */
Test(handoff, a_directly_granted_lease_is_renewed)
{
    bl_manager *a = slow_poller(2000), *b = slow_poller(2000);
    rec ra = acq_in(a, "mp", "k", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    rec held = {0}, lost = {0};
    bl_acquire_opts o = acq_opts(30000, 1500);
    o.auto_extend = 1;
    o.on_lost = on_lost;
    o.on_lost_data = &lost;
    cr_assert_eq(bl_acquire(b, "mp", "k", &o, on_acq, &held, NULL), BL_OK);
    cr_assert(waits_here(b));
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &held.n, 1, 20000));
    cr_assert_eq(held.status, BL_OK);
    cr_assert_eq(stats_of(b).direct_handoffs, 1);
    /* The takeover, then renewals every ttl/3: counted, not timed. */
    for (int i = 0; i < 1000 && stats_of(b).extends < 6; i++)
        tl_run_for(T, 10);
    cr_assert_geq(stats_of(b).extends, 6, "renewed (%llu)",
                  (unsigned long long)stats_of(b).extends);
    cr_assert_eq(lost.n, 0, "not lost");
    cr_assert(holder_is(bl_manager_holder(b)));
    cr_assert_eq(rel(held.lock), BL_OK);
    close_manager(T, a);
    close_manager(T, b);
}

/* The takeover fails: someone else has the lock by the time the extension
 * arrives (here: written by the test inside the grant's callback, before
 * the loop sends the extension). The request learns it through on_lost -
 * without auto_extend too - and its release says not held. */
typedef struct grab {
    rec r;
    int lost, lost_status;
} grab;

static void grant_then_steal(bl_lock *lock, int status, void *data)
{
    grab *g = data;
    g->r.n++;
    g->r.status = status;
    g->r.lock = status == BL_OK ? lock : NULL;
    if (status == BL_OK)
        freeReplyObject(rs_cmd(&srv, "SET bid_lock:mp:k intruder PX 60000"));
}

static void grab_lost(bl_lock *lock, int status, void *data)
{
    (void)lock;
    grab *g = data;
    g->lost++;
    g->lost_status = status;
}

Test(handoff, a_failed_takeover_is_reported_lost)
{
    bl_manager *a = slow_poller(5000), *b = slow_poller(5000);
    rec ra = acq_in(a, "mp", "k", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    grab g = {{0}, 0, 0};
    bl_acquire_opts o = acq_opts(30000, 0); /* no auto_extend */
    o.on_lost = grab_lost;
    o.on_lost_data = &g;
    cr_assert_eq(bl_acquire(b, "mp", "k", &o, grant_then_steal, &g, NULL), BL_OK);
    cr_assert(waits_here(b));
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &g.r.n, 1, 20000));
    cr_assert_eq(g.r.status, BL_OK);
    cr_assert_eq(stats_of(b).direct_handoffs, 1);
    cr_assert(tl_wait(T, &g.lost, 1, 20000), "on_lost came");
    cr_assert_eq(g.lost_status, BL_ELOST);
    tl_run_for(T, 100);
    cr_assert_eq(g.lost, 1, "once");
    cr_assert(holder_is("intruder"), "the takeover changed nothing");
    rec rr = {0};
    cr_assert_eq(bl_release(g.r.lock, on_rel, &rr), BL_OK);
    cr_assert(tl_wait(T, &rr.n, 1, 5000));
    cr_assert_eq(rr.status, BL_ENOTHELD);
    cr_assert(holder_is("intruder"));
    close_manager(T, a);
    close_manager(T, b);
}
