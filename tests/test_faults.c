/* Faults: what bidlock does when the server, the network or another
 * process misbehaves, and when it is called wrongly. Each case checks that
 * nothing crashes or leaks, that every callback runs exactly once with the
 * status the header promises, and that the manager works again once the
 * fault ends. Cases already pinned elsewhere are not repeated here:
 * test_conn.c (SIGSTOP of the server, one CLIENT KILL, a restart, a wrong
 * password), test_features.c (a lost notification), test_engine.c (a
 * crashed holder without auto-extension, SCRIPT FLUSH between requests,
 * WRONGTYPE on release, the basic bad ids). */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_LSAN 1
#endif
#endif
#ifdef HAVE_LSAN
#include <sanitizer/lsan_interface.h>
/* Under ASan a leak is only printed; this makes it fail the test. */
#define ASSERT_NO_LEAKS()                                                                  \
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "leaked: see LeakSanitizer above")
#else
#define ASSERT_NO_LEAKS() ((void)0) /* tests/valgrind checks the plain build */
#endif

static tloop *T;

static void setup(void)
{
    T = tl_new();
}

static void teardown(void)
{
    tl_free(T);
}

TestSuite(faults, .init = setup, .fini = teardown, .timeout = 90);

/* ---- helpers -------------------------------------------------------------------- */

typedef struct rec {
    int n, status;
    bl_lock *lock;
    uint64_t token;
    char errmsg[256];
} rec;

static void on_acq(bl_lock *lock, int status, void *data)
{
    rec *r = data;
    r->n++;
    r->status = status;
    r->lock = status == BL_OK ? lock : NULL;
    r->token = status == BL_OK ? bl_lock_token(lock) : 0;
    snprintf(r->errmsg, sizeof r->errmsg, "%s", bl_lock_errmsg(lock));
}

static void on_rel(bl_lock *lock, int status, void *data)
{
    rec *r = data;
    r->n++;
    r->status = status;
    r->lock = NULL;
    snprintf(r->errmsg, sizeof r->errmsg, "%s", bl_lock_errmsg(lock));
}

static void on_lost(bl_lock *lock, int status, void *data)
{
    (void)lock;
    rec *r = data;
    r->n++;
    r->status = status;
}

static bl_acquire_opts opts(int64_t wait_ms, int64_t ttl_ms)
{
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = wait_ms;
    o.ttl_ms = ttl_ms;
    return o;
}

static bl_config quick_cfg(int port)
{
    bl_config c;
    bl_config_init(&c);
    c.port = port;
    c.reconnect_initial_ms = 20;
    c.backoff_initial_ms = 20;
    c.backoff_max_ms = 200;
    return c;
}

static void start(bl_manager *m, const char *posting, int64_t wait_ms, int64_t ttl_ms, rec *r)
{
    bl_acquire_opts o = opts(wait_ms, ttl_ms);
    cr_assert_eq(bl_acquire(m, "ebay", posting, &o, on_acq, r, NULL), BL_OK, "%s",
                 bl_manager_errmsg(m));
}

static rec acq(bl_manager *m, const char *posting, int64_t wait_ms, int64_t ttl_ms)
{
    rec r = {0};
    start(m, posting, wait_ms, ttl_ms, &r);
    cr_assert_eq(r.n, 0, "callback inside bl_acquire");
    cr_assert(tl_wait(T, &r.n, 1, 20000), "acquire never ended");
    return r;
}

static rec acq_mp(bl_manager *m, const char *mp, const char *posting, int64_t ttl_ms)
{
    rec r = {0};
    bl_acquire_opts o = opts(0, ttl_ms);
    cr_assert_eq(bl_acquire(m, mp, posting, &o, on_acq, &r, NULL), BL_OK, "%s",
                 bl_manager_errmsg(m));
    cr_assert(tl_wait(T, &r.n, 1, 20000), "acquire never ended");
    return r;
}

/* Try once every 50 ms for up to 10 s. */
static rec acq_until_ok(bl_manager *m, const char *posting)
{
    rec r;
    uint64_t end = mono_ms() + 10000;
    do {
        tl_run_for(T, 50);
        r = acq(m, posting, 0, 0);
    } while (r.status != BL_OK && mono_ms() < end);
    return r;
}

static rec rel(bl_lock *lock)
{
    rec r = {0};
    cr_assert_eq(bl_release(lock, on_rel, &r), BL_OK);
    cr_assert(tl_wait(T, &r.n, 1, 20000), "release never ended");
    return r;
}

/* Run the loop until every rec in recs[0..n) has been called (or ms). */
static int wait_all(rec *recs, int n, int ms)
{
    uint64_t end = mono_ms() + (uint64_t)ms;
    for (;;) {
        int done = 1;
        for (int i = 0; i < n; i++)
            done &= recs[i].n >= 1;
        if (done)
            return 1;
        if (mono_ms() >= end)
            return 0;
        tl_run_for(T, 5);
    }
}

static void assert_once(const rec *recs, int n, const char *what)
{
    for (int i = 0; i < n; i++)
        cr_assert_eq(recs[i].n, 1, "%s %d: %d callbacks", what, i, recs[i].n);
}

static int wait_up(bl_manager *m, int ms)
{
    uint64_t end = mono_ms() + (uint64_t)ms;
    while (mono_ms() < end) {
        if (bl_manager_conn_state(m) == BL_CONN_UP)
            return 1;
        tl_run_for(T, 10);
    }
    return 0;
}

/* The identities bidlock.h states, once nothing is in flight. */
static void assert_counters(bl_manager *m)
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
    cr_assert_eq(s.attempts, s.acquired + s.done + s.abandoned + s.conflicts + s.errors_attempt,
                 "attempts %llu != acquired %llu + done %llu + abandoned %llu + conflicts %llu "
                 "+ errors_attempt %llu",
                 (unsigned long long)s.attempts, (unsigned long long)s.acquired,
                 (unsigned long long)s.done, (unsigned long long)s.abandoned,
                 (unsigned long long)s.conflicts, (unsigned long long)s.errors_attempt);
    cr_assert_eq(s.errors, s.redis_errors + s.conn_errors);
    cr_assert_eq(s.held, 0, "held gauge %llu", (unsigned long long)s.held);
    cr_assert_eq(s.waiting, 0, "waiting gauge %llu", (unsigned long long)s.waiting);
}

/* Calls of every command the server ran (or of one: "evalsha"), from INFO
 * commandstats; calls made inside scripts count too. */
static long long server_calls_of(const redis_srv *s, const char *only)
{
    redisReply *r = rs_cmd(s, "INFO commandstats");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    long long total = 0;
    for (const char *p = r->str; (p = strstr(p, "cmdstat_")); p++) {
        /* The test's own INFO calls are not bidlock's. */
        if (strncmp(p, "cmdstat_info:", 13) == 0)
            continue;
        if (only && (strncmp(p + 8, only, strlen(only)) != 0 || p[8 + strlen(only)] != ':'))
            continue;
        const char *c = strstr(p, "calls=");
        if (c)
            total += atoll(c + 6);
    }
    freeReplyObject(r);
    return total;
}

static long long server_calls(const redis_srv *s)
{
    return server_calls_of(s, NULL);
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ==== server faults ================================================================ */

Test(faults, sigkill_with_requests_in_flight_waiting_and_held_then_restart_on_the_same_port)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    c.command_timeout_ms = 2000;
    bl_manager *holder = mk_manager(T, s.port, &c), *waiter = mk_manager(T, s.port, &c),
               *once = mk_manager(T, s.port, &c);
    enum { HELD = 8, RELEASING = 4, WAITING = 8, ONCE = 16 };
    rec held[HELD] = {{0}}, lost[HELD] = {{0}}, plain[RELEASING] = {{0}};
    rec releasing[RELEASING] = {{0}}, waiting[WAITING] = {{0}}, inflight[ONCE] = {{0}};
    char id[32];
    /* Held with auto-extension (renewed every 200 ms). */
    for (int i = 0; i < HELD; i++) {
        bl_acquire_opts o = opts(0, 600);
        o.auto_extend = 1;
        o.on_lost = on_lost;
        o.on_lost_data = &lost[i];
        snprintf(id, sizeof id, "held%d", i);
        cr_assert_eq(bl_acquire(holder, "ebay", id, &o, on_acq, &held[i], NULL), BL_OK);
    }
    for (int i = 0; i < RELEASING; i++) {
        snprintf(id, sizeof id, "plain%d", i);
        start(holder, id, 0, 30000, &plain[i]);
    }
    cr_assert(wait_all(held, HELD, 5000) && wait_all(plain, RELEASING, 5000));
    for (int i = 0; i < HELD; i++)
        cr_assert_eq(held[i].status, BL_OK);
    /* Waiters on the held locks, from another manager. Those not on the
     * wire when the server dies wait on through the outage, to their
     * deadline. */
    for (int i = 0; i < WAITING; i++) {
        snprintf(id, sizeof id, "held%d", i % HELD);
        start(waiter, id, 1500, 0, &waiting[i]);
    }
    tl_run_for(T, 300);
    /* Freeze the server, so what is sent now sits unanswered on the wire. */
    kill(s.pid, SIGSTOP);
    for (int i = 0; i < ONCE; i++) {
        snprintf(id, sizeof id, "once%d", i);
        start(once, id, 0, 0, &inflight[i]);
    }
    for (int i = 0; i < RELEASING; i++)
        cr_assert_eq(bl_release(plain[i].lock, on_rel, &releasing[i]), BL_OK);
    tl_run_for(T, 100);
    rs_kill(&s);
    uint64_t down_at = mono_ms();

    /* During the outage every request ends, once, with a connection error
     * (a waiter at its deadline at the latest); every auto-extended lock is
     * reported lost once its lease has run out. */
    cr_assert(wait_all(inflight, ONCE, 5000), "in-flight requests ended");
    cr_assert(wait_all(releasing, RELEASING, 5000), "in-flight releases ended");
    cr_assert(wait_all(waiting, WAITING, 5000), "waiters ended");
    cr_assert(wait_all(lost, HELD, 5000), "auto-extended locks reported lost");
    for (int i = 0; i < ONCE; i++) {
        cr_assert_eq(inflight[i].status, BL_ECONN, "once %d: %s", i,
                     bl_status_name(inflight[i].status));
        cr_assert(inflight[i].errmsg[0], "a reason is given");
    }
    for (int i = 0; i < RELEASING; i++)
        cr_assert_eq(releasing[i].status, BL_ECONN);
    for (int i = 0; i < WAITING; i++)
        cr_assert_eq(waiting[i].status, BL_ECONN, "waiter %d: %s", i,
                     bl_status_name(waiting[i].status));
    for (int i = 0; i < HELD; i++)
        cr_assert_eq(lost[i].status, BL_ELOST);
    rec down = acq(once, "while-down", 0, 0);
    cr_assert_eq(down.status, BL_ECONN, "fails closed while down");
    cr_log_info("outage handled in %llu ms", (unsigned long long)(mono_ms() - down_at));

    rs_restart(&s);
    cr_assert(wait_up(holder, 10000) && wait_up(waiter, 10000) && wait_up(once, 10000),
              "every manager reconnected");
    /* The restarted server has no keys: the lost locks are not ours. */
    for (int i = 0; i < HELD; i++) {
        rec r = rel(held[i].lock);
        cr_assert_eq(r.status, BL_ENOTHELD, "held %d: %s", i, bl_status_name(r.status));
    }
    /* And everything works again, with tokens above the ones handed out
     * before the restart (the fence keys are gone; server time floors them). */
    for (int i = 0; i < HELD; i++) {
        snprintf(id, sizeof id, "held%d", i);
        rec r = acq(waiter, id, 0, 0);
        cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
        cr_assert(r.token > held[i].token, "token %llu after %llu", (unsigned long long)r.token,
                  (unsigned long long)held[i].token);
        cr_assert_eq(rel(r.lock).status, BL_OK);
    }
    rec back = acq(once, "once0", 0, 0);
    cr_assert_eq(back.status, BL_OK);
    cr_assert_eq(rel(back.lock).status, BL_OK);
    tl_run_for(T, 100);
    assert_once(inflight, ONCE, "in-flight");
    assert_once(releasing, RELEASING, "release");
    assert_once(waiting, WAITING, "waiter");
    assert_once(lost, HELD, "on_lost");
    assert_once(held, HELD, "held");
    bl_manager *all[] = {holder, waiter, once};
    for (int i = 0; i < 3; i++) {
        bl_stats st;
        bl_manager_stats(all[i], &st);
        assert_counters(all[i]);
        cr_assert(st.reconnects >= 1);
        close_manager(T, all[i]);
    }
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

static void on_health(bl_manager *m, const bl_health *h, void *data)
{
    (void)m;
    rec *r = data;
    r->n++;
    r->status = h->status;
    snprintf(r->errmsg, sizeof r->errmsg, "%s", h->errmsg ? h->errmsg : "");
}

Test(faults, client_pause_past_request_deadlines)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    c.command_timeout_ms = 300;
    bl_manager *a = mk_manager(T, s.port, &c);
    rec held = acq(a, "held", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    /* The server stops serving every client for 1.5 s (connections stay). */
    freeReplyObject(rs_cmd(&s, "CLIENT PAUSE 1500 ALL"));
    uint64_t t0 = mono_ms();
    rec waiting = {0}, once = {0}, released = {0};
    start(a, "late", 400, 0, &waiting);
    start(a, "once", 0, 0, &once);
    cr_assert_eq(bl_release(held.lock, on_rel, &released), BL_OK);
    cr_assert(tl_wait(T, &waiting.n, 1, 3000) && tl_wait(T, &once.n, 1, 3000) &&
              tl_wait(T, &released.n, 1, 3000));
    uint64_t took = mono_ms() - t0;
    cr_assert_eq(waiting.status, BL_ETIMEDOUT, "%s", bl_status_name(waiting.status));
    cr_assert_eq(once.status, BL_ECONN, "%s", bl_status_name(once.status));
    cr_assert(strstr(once.errmsg, "did not answer"), "%s", once.errmsg);
    cr_assert_eq(released.status, BL_ECONN);
    cr_assert(took < 1200, "ended by the deadlines, not by the pause (%llu ms)",
              (unsigned long long)took);
    /* The pause ends; the queued scripts run: the late grants are given
     * back, the late release deletes the lock. */
    tl_run_for(T, 1500);
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert_eq(st.abandoned, 2, "late grants given back: %llu", (unsigned long long)st.abandoned);
    cr_assert_eq(rs_lock_count(&s), 0, "nothing left behind");
    rec again = acq(a, "late", 0, 0);
    cr_assert_eq(again.status, BL_OK, "and it works again");
    cr_assert_eq(rel(again.lock).status, BL_OK);
    assert_once(&waiting, 1, "waiting");
    assert_once(&once, 1, "once");
    assert_once(&released, 1, "release");
    assert_counters(a);
    close_manager(T, a);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

Test(faults, a_health_check_on_a_paused_server_answers_by_the_command_timeout)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    c.command_timeout_ms = 300;
    bl_manager *a = mk_manager(T, s.port, &c);
    cr_assert(wait_up(a, 5000));
    freeReplyObject(rs_cmd(&s, "CLIENT PAUSE 2000 ALL"));
    rec h = {0};
    uint64_t t0 = mono_ms();
    cr_assert_eq(bl_health_check(a, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 5000));
    uint64_t took = mono_ms() - t0;
    cr_assert_eq(h.status, BL_ECONN, "%s", bl_status_name(h.status));
    cr_assert(took < 1500, "a hung server is reported, not waited for (%llu ms)",
              (unsigned long long)took);
    /* A manager closed while its timed-out check is still unanswered. */
    c.close_timeout_ms = 300;
    bl_manager *b = mk_manager(T, s.port, &c);
    rec hb = {0};
    cr_assert_eq(bl_health_check(b, on_health, &hb), BL_OK);
    cr_assert(tl_wait(T, &hb.n, 1, 5000));
    cr_assert_eq(hb.status, BL_ECONN);
    close_manager(T, b);
    tl_run_for(T, 2000); /* the pause ends, the late PONG arrives: ignored */
    assert_once(&h, 1, "health");
    assert_once(&hb, 1, "health b");
    h = (rec){0};
    cr_assert_eq(bl_health_check(a, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 5000));
    cr_assert_eq(h.status, BL_OK);
    close_manager(T, a);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

Test(faults, client_kill_of_the_lock_connection_while_waiters_wait)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    enum { W = 3 };
    bl_manager *a = mk_manager(T, s.port, &c), *w[W];
    rec held = acq(a, "k", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    /* The waiters retry only every 2.5-5 s, so none has an attempt on the
     * wire when the connections go (such an attempt ends with BL_ECONN: the
     * server may have granted it, see lock.c), and they take 0.5-1 s to
     * reconnect, so the release's wake-up finds their connection down. */
    bl_config slow = c;
    slow.backoff_initial_ms = slow.backoff_max_ms = 5000;
    slow.reconnect_initial_ms = 1000;
    rec waiting[W] = {{0}};
    for (int i = 0; i < W; i++) {
        w[i] = mk_manager(T, s.port, &slow);
        start(w[i], "k", 30000, 0, &waiting[i]);
        tl_run_for(T, 50);
    }
    tl_run_for(T, 300);
    /* Every command connection goes (the subscribers stay). */
    cr_assert(rs_int(&s, "CLIENT KILL TYPE normal") >= W + 1);
    tl_run_for(T, 100); /* a sees the drop and is back; the waiters are not yet */
    cr_assert(wait_up(a, 5000));
    for (int i = 0; i < W; i++)
        cr_assert_neq(bl_manager_conn_state(w[i]), BL_CONN_UP);
    cr_assert_eq(rel(held.lock).status, BL_OK, "the holder's lock survived the drop");
    /* The waiters still get the lock, one after the other. */
    for (int turn = 0; turn < W; turn++) {
        uint64_t end = mono_ms() + 15000;
        int who = -1;
        while (who < 0 && mono_ms() < end) {
            tl_run_for(T, 5);
            for (int i = 0; i < W; i++)
                if (waiting[i].n == 1 && waiting[i].lock)
                    who = i;
        }
        cr_assert(who >= 0, "turn %d: nobody got the lock", turn);
        for (int i = 0; i < W; i++)
            cr_assert(waiting[i].n == 0 || waiting[i].status == BL_OK,
                      "waiter %d: %s (%s)", i, bl_status_name(waiting[i].status),
                      waiting[i].errmsg);
        bl_lock *l = waiting[who].lock;
        waiting[who].lock = NULL;
        cr_assert_eq(rel(l).status, BL_OK);
    }
    assert_once(waiting, W, "waiter");
    assert_counters(a);
    close_manager(T, a);
    for (int i = 0; i < W; i++) {
        assert_counters(w[i]);
        close_manager(T, w[i]);
    }
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

static long long subscribers(const redis_srv *s, const char *channel)
{
    redisReply *n = rs_cmd(s, "PUBSUB NUMSUB %s", channel);
    cr_assert(n->type == REDIS_REPLY_ARRAY && n->elements == 2);
    long long v = n->element[1]->integer;
    freeReplyObject(n);
    return v;
}

Test(faults, client_kill_of_the_subscriber_connection_while_waiters_wait)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    bl_manager *a = mk_manager(T, s.port, &c);
    c.backoff_initial_ms = c.backoff_max_ms = 8000; /* only a wake-up is quick */
    bl_manager *b = mk_manager(T, s.port, &c);
    rec held = acq(a, "sub", 0, 0);
    rec waiting = {0};
    start(b, "sub", 20000, 0, &waiting);
    tl_run_for(T, 300);
    cr_assert(rs_int(&s, "CLIENT KILL TYPE pubsub") >= 1);
    /* The subscriber comes back and subscribes again (a few ms) to its
     * channel for this lock, "<key>|<holder>". */
    char channel[512];
    snprintf(channel, sizeof channel, "bid_lock:ebay:sub|%s", bl_manager_holder(b));
    uint64_t end = mono_ms() + 5000;
    while (mono_ms() < end && subscribers(&s, channel) == 0)
        tl_run_for(T, 10);
    tl_run_for(T, 100);
    cr_assert_eq(subscribers(&s, channel), 1, "resubscribed");
    uint64_t t0 = mono_ms();
    cr_assert_eq(rel(held.lock).status, BL_OK);
    cr_assert(tl_wait(T, &waiting.n, 1, 10000));
    cr_assert_eq(waiting.status, BL_OK, "%s", bl_status_name(waiting.status));
    cr_assert(mono_ms() - t0 < 2000, "woken by the release, not by its 4-8 s timer (%llu ms)",
              (unsigned long long)(mono_ms() - t0));
    cr_assert_eq(rel(waiting.lock).status, BL_OK);
    assert_counters(b);
    close_manager(T, a);
    close_manager(T, b);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

Test(faults, script_flush_while_requests_are_in_flight)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    bl_manager *a = mk_manager(T, s.port, &c);
    enum { HELD = 10, NEW = 30 };
    rec held[HELD] = {{0}}, lost[HELD] = {{0}}, fresh[NEW] = {{0}}, released[HELD] = {{0}};
    char id[32];
    for (int i = 0; i < HELD; i++) {
        bl_acquire_opts o = opts(0, 300); /* renewed every 100 ms */
        o.auto_extend = 1;
        o.on_lost = on_lost;
        o.on_lost_data = &lost[i];
        snprintf(id, sizeof id, "h%d", i);
        cr_assert_eq(bl_acquire(a, "ebay", id, &o, on_acq, &held[i], NULL), BL_OK);
    }
    cr_assert(wait_all(held, HELD, 5000));
    /* Queue acquires and releases, then flush the cache before they are
     * written: every one of them meets NOSCRIPT. */
    for (int i = 0; i < NEW; i++) {
        snprintf(id, sizeof id, "n%d", i);
        start(a, id, i % 2 ? 5000 : 0, 0, &fresh[i]);
    }
    for (int i = 0; i < HELD / 2; i++)
        cr_assert_eq(bl_release(held[i].lock, on_rel, &released[i]), BL_OK);
    freeReplyObject(rs_cmd(&s, "SCRIPT FLUSH"));
    cr_assert(wait_all(fresh, NEW, 5000) && wait_all(released, HELD / 2, 5000));
    for (int i = 0; i < NEW; i++)
        cr_assert_eq(fresh[i].status, BL_OK, "%d: %s (%s)", i, bl_status_name(fresh[i].status),
                     fresh[i].errmsg);
    for (int i = 0; i < HELD / 2; i++)
        cr_assert_eq(released[i].status, BL_OK);
    /* Flushes between renewals: the lease survives them. */
    for (int i = 0; i < 5; i++) {
        freeReplyObject(rs_cmd(&s, "SCRIPT FLUSH"));
        tl_run_for(T, 130);
    }
    for (int i = 0; i < HELD; i++)
        cr_assert_eq(lost[i].n, 0, "lock %d lost", i);
    for (int i = HELD / 2; i < HELD; i++)
        cr_assert_eq(rel(held[i].lock).status, BL_OK);
    for (int i = 0; i < NEW; i++)
        cr_assert_eq(rel(fresh[i].lock).status, BL_OK);
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert_eq(st.errors, 0, "NOSCRIPT never reaches the user");
    cr_assert(st.extends >= 10);
    assert_once(fresh, NEW, "acquire");
    assert_counters(a);
    close_manager(T, a);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

Test(faults, a_read_only_replica_refuses_with_readonly_and_nothing_breaks)
{
    redis_srv master, replica;
    rs_start(&master, NULL);
    char port[16];
    snprintf(port, sizeof port, "%d", master.port);
    const char *const extra[] = {"--replicaof", "127.0.0.1", port, NULL};
    rs_start(&replica, extra);
    bl_config c = quick_cfg(replica.port);
    bl_manager *a = mk_manager(T, replica.port, &c);
    rec once = acq(a, "ro", 0, 0), waiting = acq(a, "ro", 2000, 0);
    cr_assert_eq(once.status, BL_EREDIS, "%s", bl_status_name(once.status));
    cr_assert(strstr(once.errmsg, "READONLY"), "message: %s", once.errmsg);
    cr_assert_eq(waiting.status, BL_EREDIS, "a refusal is not worth waiting for");
    cr_assert(strstr(waiting.errmsg, "READONLY"), "message: %s", waiting.errmsg);
    /* Reads still work there. */
    rec h = {0};
    cr_assert_eq(bl_health_check(a, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 5000));
    cr_assert_eq(h.status, BL_OK);
    /* Promoted, it takes locks. */
    freeReplyObject(rs_cmd(&replica, "REPLICAOF NO ONE"));
    rec ok = acq(a, "ro", 0, 0);
    cr_assert_eq(ok.status, BL_OK, "%s", ok.errmsg);
    cr_assert_eq(rel(ok.lock).status, BL_OK);
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert_eq(st.redis_errors, 2);
    assert_counters(a);
    close_manager(T, a);
    ASSERT_NO_LEAKS();
    rs_stop(&replica);
    rs_stop(&master);
}

Test(faults, maxmemory_reached_gives_the_oom_message_and_recovers)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    bl_manager *a = mk_manager(T, s.port, &c);
    rec lost = {0}, held = {0};
    bl_acquire_opts o = opts(0, 300);
    o.auto_extend = 1;
    o.on_lost = on_lost;
    o.on_lost_data = &lost;
    cr_assert_eq(bl_acquire(a, "ebay", "kept", &o, on_acq, &held, NULL), BL_OK);
    cr_assert(tl_wait(T, &held.n, 1, 5000));
    cr_assert_eq(held.status, BL_OK);
    freeReplyObject(rs_cmd(&s, "CONFIG SET maxmemory-policy noeviction"));
    freeReplyObject(rs_cmd(&s, "CONFIG SET maxmemory 1"));
    rec r = acq(a, "full", 0, 0);
    cr_assert_eq(r.status, BL_EREDIS, "%s", bl_status_name(r.status));
    cr_assert(strstr(r.errmsg, "OOM"), "the server's message: %s", r.errmsg);
    r = acq(a, "full", 1000, 0);
    cr_assert_eq(r.status, BL_EREDIS);
    /* Renewing (PEXPIRE) and releasing (DEL) free memory: they still run. */
    tl_run_for(T, 400);
    cr_assert_eq(lost.n, 0, "the held lock is still renewed");
    cr_assert_eq(rel(held.lock).status, BL_OK);
    freeReplyObject(rs_cmd(&s, "CONFIG SET maxmemory 0"));
    r = acq(a, "full", 0, 0);
    cr_assert_eq(r.status, BL_OK, "recovered: %s", r.errmsg);
    cr_assert_eq(rel(r.lock).status, BL_OK);
    assert_counters(a);
    close_manager(T, a);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

typedef struct irec {
    int n, status, held;
    char errmsg[256];
} irec;

static void on_inspect(bl_manager *m, const bl_lock_info *i, void *data)
{
    (void)m;
    irec *r = data;
    r->n++;
    r->status = i->status;
    r->held = i->held;
    snprintf(r->errmsg, sizeof r->errmsg, "%s", i->errmsg ? i->errmsg : "");
}

Test(faults, a_key_of_the_wrong_type_at_a_locks_name)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    bl_manager *a = mk_manager(T, s.port, &c);
    freeReplyObject(rs_cmd(&s, "RPUSH bid_lock:ebay:list x"));
    rec r = acq(a, "list", 0, 0);
    cr_assert_eq(r.status, BL_EREDIS, "%s", bl_status_name(r.status));
    cr_assert(strstr(r.errmsg, "WRONGTYPE"), "acquire: %s", r.errmsg);
    r = acq(a, "list", 1000, 0);
    cr_assert_eq(r.status, BL_EREDIS, "no waiting on a foreign key");
    irec i = {0};
    cr_assert_eq(bl_inspect(a, "ebay", "list", on_inspect, &i), BL_OK);
    cr_assert(tl_wait(T, &i.n, 1, 5000));
    cr_assert_eq(i.status, BL_EREDIS, "inspect: %s", bl_status_name(i.status));
    cr_assert(strstr(i.errmsg, "WRONGTYPE"), "inspect: %s", i.errmsg);
    cr_assert_eq(rs_int(&s, "LLEN bid_lock:ebay:list"), 1, "the foreign key is untouched");

    /* Renewals that meet a foreign key end in on_lost once the lease ran out. */
    rec lost = {0}, held = {0};
    bl_acquire_opts o = opts(0, 300);
    o.auto_extend = 1;
    o.on_lost = on_lost;
    o.on_lost_data = &lost;
    cr_assert_eq(bl_acquire(a, "ebay", "swap", &o, on_acq, &held, NULL), BL_OK);
    cr_assert(tl_wait(T, &held.n, 1, 5000));
    freeReplyObject(rs_cmd(&s, "DEL bid_lock:ebay:swap"));
    freeReplyObject(rs_cmd(&s, "SADD bid_lock:ebay:swap x"));
    cr_assert(tl_wait(T, &lost.n, 1, 3000), "on_lost was called");
    cr_assert_eq(lost.status, BL_ELOST);
    tl_run_for(T, 300);
    cr_assert_eq(lost.n, 1, "once");
    rec rr = {0};
    cr_assert_eq(bl_release_done(held.lock, on_rel, &rr), BL_OK);
    cr_assert(tl_wait(T, &rr.n, 1, 5000));
    cr_assert_eq(rr.status, BL_EREDIS, "release_done: %s", bl_status_name(rr.status));
    cr_assert(strstr(rr.errmsg, "WRONGTYPE"), "release_done: %s", rr.errmsg);
    cr_assert_eq(rs_int(&s, "SCARD bid_lock:ebay:swap"), 1);
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert_eq(st.lost, 1);
    assert_counters(a);
    close_manager(T, a);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

Test(faults, a_password_change_on_the_server_is_survived)
{
    static const char *const pw[] = {"--requirepass", "old-pw", NULL};
    redis_srv s;
    rs_start(&s, pw);
    snprintf(s.password, sizeof s.password, "old-pw");
    bl_config c = quick_cfg(s.port);
    c.password = "new-pw";
    bl_manager *a = mk_manager(T, s.port, &c);
    tl_run_for(T, 200);
    rec r = acq(a, "pw", 0, 0);
    cr_assert_eq(r.status, BL_ECONN, "%s", bl_status_name(r.status));
    cr_assert(strstr(r.errmsg, "WRONGPASS") || strstr(r.errmsg, "AUTH"), "%s", r.errmsg);
    /* The operator rotates the password: the manager's retries get in. */
    freeReplyObject(rs_cmd(&s, "CONFIG SET requirepass new-pw"));
    snprintf(s.password, sizeof s.password, "new-pw");
    r = acq_until_ok(a, "pw");
    cr_assert_eq(r.status, BL_OK, "recovered: %s", r.errmsg);
    cr_assert_eq(rel(r.lock).status, BL_OK);
    /* A server that starts asking for a password: connections made before
     * keep working, a reconnect meets NOAUTH, and it is back once the server
     * no longer asks. */
    freeReplyObject(rs_cmd(&s, "CONFIG SET requirepass %s", ""));
    s.password[0] = '\0';
    bl_config none = quick_cfg(s.port);
    bl_manager *b = mk_manager(T, s.port, &none);
    r = acq(b, "pw2", 0, 0);
    cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
    cr_assert_eq(rel(r.lock).status, BL_OK);
    freeReplyObject(rs_cmd(&s, "CONFIG SET requirepass %s", "other-pw"));
    snprintf(s.password, sizeof s.password, "other-pw");
    cr_assert(rs_int(&s, "CLIENT KILL TYPE normal") >= 1);
    tl_run_for(T, 200);
    r = acq(b, "pw2", 0, 0);
    cr_assert_eq(r.status, BL_EREDIS, "%s", bl_status_name(r.status));
    cr_assert(strstr(r.errmsg, "NOAUTH") || strstr(r.errmsg, "unauthenticated"), "%s", r.errmsg);
    freeReplyObject(rs_cmd(&s, "CONFIG SET requirepass %s", ""));
    s.password[0] = '\0';
    r = acq_until_ok(b, "pw2"); /* the server may drop the connection meanwhile */
    cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
    cr_assert_eq(rel(r.lock).status, BL_OK);
    assert_counters(a);
    assert_counters(b);
    close_manager(T, a);
    close_manager(T, b);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

/* ==== client faults: other processes ================================================ */

/* A child process that holds one lock and obeys one-byte commands from the
 * parent: 'r' release (answers with the release status), 'q' quit. It
 * reports "<acquire status> <token>\n", and later "L <status>\n" from
 * on_lost and "R <status>\n" from the release. */
typedef struct kid {
    pid_t pid;
    int to, from; /* pipe ends, parent side */
} kid;

static void say(int fd, const char *fmt, long long a, long long b)
{
    char line[64];
    int n = snprintf(line, sizeof line, fmt, a, b);
    if (write(fd, line, (size_t)n) != n)
        _exit(9);
}

static int g_out = -1;

static void kid_lost(bl_lock *lock, int status, void *data)
{
    (void)lock;
    (void)data;
    say(g_out, "L %lld %lld\n", status, 0);
}

static void kid_main(int port, int ttl_ms, int auto_extend, int in, int out)
{
    g_out = out;
    tloop *t = tl_new();
    bl_config c = quick_cfg(port);
    bl_manager *m;
    if (bl_manager_new(tl_bl(t), &c, &m) != BL_OK)
        _exit(2);
    rec r = {0};
    bl_acquire_opts o = opts(0, ttl_ms);
    o.auto_extend = auto_extend;
    o.on_lost = kid_lost;
    if (bl_acquire(m, "ebay", "kid", &o, on_acq, &r, NULL) != BL_OK)
        _exit(3);
    if (!tl_wait(t, &r.n, 1, 5000))
        _exit(4);
    say(out, "%lld %lld\n", r.status, (long long)r.token);
    for (;;) {
        char cmd;
        tl_run_for(t, 5);
        ssize_t got = read(in, &cmd, 1);
        if (got == 0)
            _exit(0);
        if (got < 0)
            continue; /* non-blocking: nothing yet */
        if (cmd == 'r') {
            rec rr = {0};
            if (bl_release(r.lock, on_rel, &rr) != BL_OK)
                _exit(5);
            tl_wait(t, &rr.n, 1, 5000);
            say(out, "R %lld %lld\n", rr.status, 0);
        } else if (cmd == 'k') {
            raise(SIGKILL);
        } else {
            _exit(0);
        }
    }
}

static void fcntl_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static kid spawn_kid(int port, int ttl_ms, int auto_extend)
{
    int down[2], up[2];
    cr_assert_eq(pipe(down), 0);
    cr_assert_eq(pipe(up), 0);
    kid k = {fork(), down[1], up[0]};
    cr_assert(k.pid >= 0);
    if (k.pid == 0) {
        close(down[1]);
        close(up[0]);
        fcntl_nonblock(down[0]);
        kid_main(port, ttl_ms, auto_extend, down[0], up[1]);
    }
    close(down[0]);
    close(up[1]);
    return k;
}

/* One line from the kid (blocking, bounded by alarm-free polling). */
static void kid_line(kid *k, char *buf, size_t cap)
{
    size_t n = 0;
    uint64_t end = mono_ms() + 10000;
    while (n + 1 < cap && mono_ms() < end) {
        struct pollfd pf = {k->from, POLLIN, 0};
        if (poll(&pf, 1, 50) != 1)
            continue;
        char ch;
        if (read(k->from, &ch, 1) != 1)
            break;
        if (ch == '\n')
            break;
        buf[n++] = ch;
    }
    buf[n] = '\0';
    cr_assert(n > 0, "no answer from the child");
}

static void kid_end(kid *k)
{
    close(k->to);
    close(k->from);
    int st;
    cr_assert_eq(waitpid(k->pid, &st, 0), k->pid);
}

static void kid_acquired(kid *k, uint64_t *token)
{
    char line[64];
    kid_line(k, line, sizeof line);
    long long st = 0, tok = 0;
    cr_assert_eq(sscanf(line, "%lld %lld", &st, &tok), 2, "child said: %s", line);
    cr_assert_eq(st, BL_OK, "child's acquire: %s", bl_status_name((int)st));
    *token = (uint64_t)tok;
}

static int kid_event(kid *k, char what)
{
    char line[64], w;
    long long st = 0, unused;
    kid_line(k, line, sizeof line);
    cr_assert_eq(sscanf(line, "%c %lld %lld", &w, &st, &unused), 3, "child said: %s", line);
    cr_assert_eq(w, what, "child said: %s", line);
    return (int)st;
}

Test(faults, a_holder_paused_past_its_ttl_loses_to_another_process_and_gets_not_held)
{
    redis_srv s;
    rs_start(&s, NULL);
    kid k = spawn_kid(s.port, 300, 0);
    uint64_t old_token;
    kid_acquired(&k, &old_token);
    kill(k.pid, SIGSTOP); /* a GC pause, a swapped-out VM, a debugger */
    tl_run_for(T, 500);
    bl_config c = quick_cfg(s.port);
    bl_manager *a = mk_manager(T, s.port, &c);
    rec mine = acq(a, "kid", 0, 30000);
    cr_assert_eq(mine.status, BL_OK, "the expired lock is free for another process");
    cr_assert(mine.token > old_token, "the paused holder's token is older: %llu vs %llu",
              (unsigned long long)old_token, (unsigned long long)mine.token);
    kill(k.pid, SIGCONT);
    cr_assert_eq(write(k.to, "r", 1), 1);
    cr_assert_eq(kid_event(&k, 'R'), BL_ENOTHELD, "the resumed holder is told");
    redisReply *v = rs_cmd(&s, "GET bid_lock:ebay:kid");
    cr_assert_str_eq(v->str, bl_manager_holder(a), "and it took nothing from us");
    freeReplyObject(v);
    cr_assert_eq(rel(mine.lock).status, BL_OK);
    cr_assert_eq(write(k.to, "q", 1), 1);
    kid_end(&k);
    close_manager(T, a);
    rs_stop(&s);
}

Test(faults, an_auto_extending_holder_paused_past_its_ttl_is_told_on_lost)
{
    redis_srv s;
    rs_start(&s, NULL);
    kid k = spawn_kid(s.port, 300, 1);
    uint64_t old_token;
    kid_acquired(&k, &old_token);
    tl_run_for(T, 400); /* renewed past its first TTL */
    bl_config c = quick_cfg(s.port);
    bl_manager *a = mk_manager(T, s.port, &c);
    cr_assert_eq(acq(a, "kid", 0, 0).status, BL_EBUSY, "kept alive by renewals");
    kill(k.pid, SIGSTOP);
    rec mine = acq(a, "kid", 3000, 30000);
    cr_assert_eq(mine.status, BL_OK, "taken once the renewals stopped");
    cr_assert(mine.token > old_token);
    kill(k.pid, SIGCONT);
    cr_assert_eq(kid_event(&k, 'L'), BL_ELOST, "the resumed holder's renewal is refused");
    cr_assert_eq(write(k.to, "r", 1), 1);
    cr_assert_eq(kid_event(&k, 'R'), BL_ENOTHELD);
    cr_assert_eq(rel(mine.lock).status, BL_OK, "our lock was untouched");
    cr_assert_eq(write(k.to, "q", 1), 1);
    kid_end(&k);
    close_manager(T, a);
    rs_stop(&s);
}

Test(faults, an_auto_extending_holder_killed_frees_the_lock_after_its_ttl)
{
    redis_srv s;
    rs_start(&s, NULL);
    kid k = spawn_kid(s.port, 400, 1);
    uint64_t old_token;
    kid_acquired(&k, &old_token);
    tl_run_for(T, 900);
    bl_config c = quick_cfg(s.port);
    bl_manager *a = mk_manager(T, s.port, &c);
    cr_assert_eq(acq(a, "kid", 0, 0).status, BL_EBUSY, "renewed past its TTL while alive");
    cr_assert_eq(write(k.to, "k", 1), 1);
    int st;
    cr_assert_eq(waitpid(k.pid, &st, 0), k.pid);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    uint64_t t0 = mono_ms();
    rec mine = acq(a, "kid", 5000, 0);
    cr_assert_eq(mine.status, BL_OK);
    cr_assert(mono_ms() - t0 < 1500, "free within about one TTL (%llu ms)",
              (unsigned long long)(mono_ms() - t0));
    cr_assert(mine.token > old_token);
    close(k.to);
    close(k.from);
    close_manager(T, a);
    rs_stop(&s);
}

/* ==== safety under load: W4 of BENCH.md, and with the server restarted ============== */

static void on_close(bl_manager *m, void *data);

enum { W4_PROCS = 8, W4_MAX = 2000 };

typedef struct section {
    uint64_t token, enter_us, exit_us;
    int proc;
} section;

typedef struct w4_shared {
    volatile long counter; /* the restart variant's read-modify-write target */
    int ok[W4_PROCS], fail_conn[W4_PROCS], fail_other[W4_PROCS], rel_fail[W4_PROCS];
    int last_fail[W4_PROCS];
    section sec[W4_PROCS][W4_MAX];
} w4_shared;

static int w4_iters(void)
{
    const char *e = getenv("BIDLOCK_W4_ITERS");
    int n = e ? atoi(e) : 100;
    return n > 0 && n <= W4_MAX ? n : 100;
}

/* One of the 8 processes: `iters` critical sections, each a non-atomic
 * read-modify-write of a counter in Redis (GET, sleep 0.2 ms, SET) or in
 * shared memory, stamped with its fencing token and CLOCK_MONOTONIC. */
static int w4_child(int port, w4_shared *sh, int i, int iters, int redis_counter)
{
    tloop *t = tl_new();
    bl_config c;
    bl_config_init(&c);
    c.port = port;
    c.reconnect_initial_ms = 20;
    bl_manager *m;
    redisContext *sync = redis_counter ? redisConnect("127.0.0.1", port) : NULL;
    if ((redis_counter && (!sync || sync->err)) || bl_manager_new(tl_bl(t), &c, &m) != BL_OK)
        return 2;
    uint64_t end = mono_ms() + 60000;
    while (sh->ok[i] < iters && mono_ms() < end) {
        rec r = {0};
        bl_acquire_opts o = opts(10000, 30000);
        if (bl_acquire(m, "bench", "hot", &o, on_acq, &r, NULL) != BL_OK)
            return 3;
        if (!tl_wait(t, &r.n, 1, 15000))
            return 4;
        if (r.status != BL_OK) {
            (r.status == BL_ECONN ? sh->fail_conn : sh->fail_other)[i]++;
            sh->last_fail[i] = r.status;
            tl_run_for(t, 20);
            continue;
        }
        section *x = &sh->sec[i][sh->ok[i]];
        x->proc = i;
        x->token = r.token;
        x->enter_us = now_us();
        if (redis_counter) {
            redisReply *g = redisCommand(sync, "GET counter");
            long v = g && g->type == REDIS_REPLY_STRING ? atol(g->str) : 0;
            freeReplyObject(g);
            usleep(200); /* widen the window the lock must close */
            freeReplyObject(redisCommand(sync, "SET counter %ld", v + 1));
        } else {
            long v = sh->counter;
            usleep(200);
            sh->counter = v + 1;
        }
        x->exit_us = now_us();
        __atomic_add_fetch(&sh->ok[i], 1, __ATOMIC_SEQ_CST);
        rec rr = {0};
        if (bl_release(r.lock, on_rel, &rr) != BL_OK)
            return 5;
        if (!tl_wait(t, &rr.n, 1, 15000))
            return 6;
        if (rr.status != BL_OK)
            sh->rel_fail[i]++;
    }
    /* Leave nothing behind: tests/valgrind checks these processes too. */
    int closed = 0;
    bl_manager_close(m, on_close, &closed);
    tl_wait(t, &closed, 1, 10000);
    tl_free(t);
    if (sync)
        redisFree(sync);
    return !closed ? 8 : sh->ok[i] == iters ? 0 : 7;
}

static int by_token(const void *a, const void *b)
{
    const section *x = a, *y = b;
    return x->token < y->token ? -1 : x->token > y->token;
}

/* Sorted by fencing token, the critical sections follow one another: no
 * two holders at once, and no token handed out twice. */
static void check_sections(w4_shared *sh, int iters)
{
    int n = W4_PROCS * iters;
    section *all = malloc((size_t)n * sizeof *all);
    cr_assert(all);
    for (int i = 0; i < W4_PROCS; i++)
        memcpy(all + i * iters, sh->sec[i], (size_t)iters * sizeof *all);
    qsort(all, (size_t)n, sizeof *all, by_token);
    for (int k = 1; k < n; k++) {
        cr_assert(all[k].token > all[k - 1].token, "token %llu handed out twice",
                  (unsigned long long)all[k].token);
        cr_assert(all[k].enter_us >= all[k - 1].exit_us,
                  "two holders at once: token %llu (proc %d) entered at %llu us, before token "
                  "%llu (proc %d) left at %llu us",
                  (unsigned long long)all[k].token, all[k].proc,
                  (unsigned long long)all[k].enter_us, (unsigned long long)all[k - 1].token,
                  all[k - 1].proc, (unsigned long long)all[k - 1].exit_us);
    }
    free(all);
}

static w4_shared *w4_run(redis_srv *s, int iters, int redis_counter, int restart)
{
    w4_shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                         -1, 0);
    cr_assert(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    pid_t kids[W4_PROCS];
    for (int i = 0; i < W4_PROCS; i++) {
        kids[i] = fork();
        cr_assert(kids[i] >= 0);
        if (kids[i] == 0)
            _exit(w4_child(s->port, sh, i, iters, redis_counter));
    }
    if (restart) {
        /* A third of the way in, the server dies; back after 0.5 s, empty. */
        uint64_t end = mono_ms() + 60000;
        for (;;) {
            int total = 0;
            for (int i = 0; i < W4_PROCS; i++)
                total += __atomic_load_n(&sh->ok[i], __ATOMIC_SEQ_CST);
            if (total >= W4_PROCS * iters / 3 || mono_ms() > end)
                break;
            usleep(1000);
        }
        rs_kill(s);
        usleep(500000);
        rs_restart(s);
    }
    for (int i = 0; i < W4_PROCS; i++) {
        int st;
        cr_assert_eq(waitpid(kids[i], &st, 0), kids[i]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "process %d failed (%d): %d sections, %d conn failures, %d other (last %s)", i,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1, sh->ok[i], sh->fail_conn[i],
                  sh->fail_other[i], bl_status_name(sh->last_fail[i]));
    }
    return sh;
}

Test(faults, w4_eight_processes_read_modify_write_lose_no_update, .timeout = 180)
{
    redis_srv s;
    rs_start(&s, NULL);
    int iters = w4_iters();
    w4_shared *sh = w4_run(&s, iters, 1, 0);
    long ok = 0, failed = 0;
    for (int i = 0; i < W4_PROCS; i++) {
        ok += sh->ok[i];
        failed += sh->fail_conn[i] + sh->fail_other[i];
    }
    redisReply *r = rs_cmd(&s, "GET counter");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    long counter = atol(r->str);
    freeReplyObject(r);
    cr_log_info("W4: %ld acquisitions, %ld failed, counter %ld", ok, failed, counter);
    cr_assert_eq(counter, ok, "lost updates: counter %ld after %ld acquisitions", counter, ok);
    cr_assert_eq(ok, (long)W4_PROCS * iters);
    check_sections(sh, iters);
    munmap(sh, sizeof *sh);
    rs_stop(&s);
}

Test(faults, w4_with_the_server_killed_and_restarted_midway_never_has_two_holders,
     .timeout = 180)
{
    redis_srv s;
    rs_start(&s, NULL);
    int iters = w4_iters();
    w4_shared *sh = w4_run(&s, iters, 0, 1);
    long ok = 0, conn = 0, other = 0;
    for (int i = 0; i < W4_PROCS; i++) {
        ok += sh->ok[i];
        conn += sh->fail_conn[i];
        other += sh->fail_other[i];
    }
    cr_log_info("W4 with restart: %ld acquisitions, %ld BL_ECONN, %ld other failures", ok, conn,
                other);
    cr_assert(conn > 0, "acquisitions fail during the outage (BL_ECONN)");
    cr_assert_eq(ok, (long)W4_PROCS * iters);
    cr_assert_eq(sh->counter, ok, "lost updates: counter %ld after %ld", sh->counter, ok);
    check_sections(sh, iters);
    munmap(sh, sizeof *sh);
    rs_stop(&s);
}

/* ==== bad input: a clear status and message, and nothing reaches the server ========= */

Test(faults, bad_ids_ttls_and_waits_are_refused_before_the_server)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_manager *m = mk_manager(T, s.port, NULL);
    cr_assert(wait_up(m, 5000));
    tl_run_for(T, 100); /* the scripts are loaded */
    long long before = server_calls(&s);
    size_t big = 10u << 20; /* 10 MB */
    char *huge = malloc(big + 1);
    cr_assert(huge);
    memset(huge, 'x', big);
    huge[big] = '\0';
    rec r = {0};
    struct {
        const char *mp, *posting, *reason;
    } bad[] = {
        {huge, "p", "marketplace is longer than 256 bytes"},
        {"ebay", huge, "posting is longer than 256 bytes"},
        {NULL, NULL, "marketplace is NULL"},
        {"", "", "marketplace is empty"},
        {"eb:ay", "p", "marketplace contains ':'"},
        {"ebay\n", "p", "marketplace contains whitespace or a control character"},
        {"ebay", "p\r\nSET x y", "posting contains whitespace or a control character"},
        {"ebay", "p\t", "posting contains whitespace or a control character"},
        {"ebay", "\x7f", "posting contains whitespace or a control character"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(bl_acquire(m, bad[i].mp, bad[i].posting, NULL, on_acq, &r, NULL),
                     BL_EINVAL, "case %zu", i);
        cr_assert_str_eq(bl_manager_errmsg(m), bad[i].reason, "case %zu", i);
        cr_assert_eq(bl_inspect(m, bad[i].mp, bad[i].posting, (bl_inspect_cb)on_inspect, &r),
                     BL_EINVAL, "inspect, case %zu", i);
        cr_assert_str_eq(bl_manager_errmsg(m), bad[i].reason);
    }
    struct {
        int64_t wait, ttl;
        int auto_extend;
        const char *reason;
    } nums[] = {
        {0, -1, 0, "ttl_ms"},
        {0, INT64_MIN, 0, "ttl_ms"},
        {0, INT64_MAX, 0, "ttl_ms"},
        {0, 30LL * 24 * 3600 * 1000 + 1, 0, "ttl_ms"},
        {-2, 0, 0, "wait_ms"},
        {INT64_MIN, 0, 0, "wait_ms"},
        {INT64_MAX, 0, 0, "wait_ms"},
        {30LL * 24 * 3600 * 1000 + 1, 0, 0, "wait_ms"},
        {0, 2, 1, "auto_extend needs ttl_ms >= 3"},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        bl_acquire_opts o = opts(nums[i].wait, nums[i].ttl);
        o.auto_extend = nums[i].auto_extend;
        cr_assert_eq(bl_acquire(m, "ebay", "p", &o, on_acq, &r, NULL), BL_EINVAL, "num %zu", i);
        cr_assert(strstr(bl_manager_errmsg(m), nums[i].reason), "num %zu: '%s'", i,
                  bl_manager_errmsg(m));
    }
    cr_assert_eq(bl_acquire(m, "ebay", "p", NULL, NULL, &r, NULL), BL_EINVAL);
    cr_assert_str_eq(bl_manager_errmsg(m), "callback is NULL");
    cr_assert_eq(bl_with_lock(m, "ebay", "p", NULL, NULL, NULL, &r), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(m), "NULL"));
    cr_assert_eq(bl_acquire(NULL, "ebay", "p", NULL, on_acq, &r, NULL), BL_EINVAL);
    cr_assert_eq(bl_health_check(m, NULL, NULL), BL_EINVAL);
    cr_assert_eq(bl_cleanup(m, 0, NULL, NULL), BL_EINVAL);
    cr_assert_eq(bl_section_end(NULL, 0), BL_EINVAL);
    cr_assert_eq(bl_release_done(NULL, NULL, NULL), BL_EINVAL);
    tl_run_for(T, 100);
    cr_assert_eq(r.n, 0, "no callback for a refused call");
    cr_assert_eq(server_calls(&s), before, "a refused call reached the server");
    bl_stats st;
    bl_manager_stats(m, &st);
    cr_assert_eq(st.requests + st.attempts, 0);

    /* Accepted as they are: a posting may contain ':' (only the marketplace
     * may not: the key stays unambiguous), bytes >= 0x80 are fine (UTF-8),
     * the limits themselves are valid, and a C string ends at its first NUL:
     * "eb\0ay" IS "eb" - bidlock cannot see past it. */
    rec ok = acq_mp(m, "ebay", "a:b", 0);
    cr_assert_eq(ok.status, BL_OK);
    cr_assert_str_eq(bl_lock_key(ok.lock), "bid_lock:ebay:a:b");
    cr_assert_eq(rel(ok.lock).status, BL_OK);
    huge[256] = '\0';
    ok = acq_mp(m, "\xc3\xa9""bay", huge, 30LL * 24 * 3600 * 1000);
    cr_assert_eq(ok.status, BL_OK, "256 bytes, 30 days: %s", ok.errmsg);
    cr_assert_eq(rel(ok.lock).status, BL_OK);
    static const char cut[] = "eb\0ay";
    ok = acq_mp(m, cut, "p", 0);
    cr_assert_eq(ok.status, BL_OK);
    cr_assert_str_eq(bl_lock_key(ok.lock), "bid_lock:eb:p", "cut at the NUL");
    cr_assert_eq(rel(ok.lock).status, BL_OK);
    free(huge);
    assert_counters(m);
    close_manager(T, m);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

typedef struct sec_ctx {
    bl_lock *lock;
    rec done;
} sec_ctx;

static void sec_run(bl_lock *lock, void *data)
{
    ((sec_ctx *)data)->lock = lock;
}

static void sec_done(int status, int section_status, void *data)
{
    sec_ctx *c = data;
    (void)section_status;
    c->done.n++;
    c->done.status = status;
}

Test(faults, calls_in_the_wrong_state_are_refused_with_a_reason)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    bl_manager *a = mk_manager(T, s.port, &c), *b = mk_manager(T, s.port, &c);
    rec held = acq(a, "busy", 0, 0);
    cr_assert_eq(held.status, BL_OK);

    /* Release of a lock still being acquired (waiting in b). */
    rec pending = {0};
    bl_lock *pl;
    bl_acquire_opts o = opts(10000, 0);
    cr_assert_eq(bl_acquire(b, "ebay", "busy", &o, on_acq, &pending, &pl), BL_OK);
    cr_assert_eq(bl_release(pl, on_rel, &pending), BL_EINVAL, "release while acquiring");
    cr_assert(strstr(bl_manager_errmsg(b), "still acquiring"), "%s", bl_manager_errmsg(b));
    cr_assert_eq(bl_release_done(pl, on_rel, &pending), BL_EINVAL);
    cr_assert_eq(bl_section_end(pl, 0), BL_EINVAL);
    tl_run_for(T, 200);
    cr_assert_eq(bl_release(pl, on_rel, &pending), BL_EINVAL, "release while waiting");
    cr_assert_eq(bl_cancel(pl), BL_OK);
    cr_assert_eq(bl_cancel(pl), BL_EINVAL, "cancel twice");
    cr_assert(strstr(bl_manager_errmsg(b), "already ended"), "%s", bl_manager_errmsg(b));
    cr_assert(tl_wait(T, &pending.n, 1, 3000));
    cr_assert_eq(pending.status, BL_ECANCELED);

    /* Cancel of a held lock; bl_section_end of a plain lock. */
    cr_assert_eq(bl_cancel(held.lock), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(a), "already ended"), "%s", bl_manager_errmsg(a));
    cr_assert_eq(bl_section_end(held.lock, 0), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(a), "not a running section"), "%s", bl_manager_errmsg(a));

    /* A section: ended twice; released the plain way. */
    sec_ctx sc = {0};
    cr_assert_eq(bl_with_lock(a, "ebay", "sect", NULL, sec_run, sec_done, &sc), BL_OK);
    uint64_t end = mono_ms() + 5000;
    while (!sc.lock && mono_ms() < end)
        tl_run_for(T, 5);
    cr_assert(sc.lock, "the section ran");
    cr_assert_eq(bl_release(sc.lock, on_rel, &pending), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(a), "bl_section_end"), "%s", bl_manager_errmsg(a));
    cr_assert_eq(bl_cancel(sc.lock), BL_EINVAL);

    tl_run_for(T, 100); /* quiet: nothing in flight */
    long long scripts = server_calls_of(&s, "evalsha");
    bl_stats before;
    bl_manager_stats(a, &before);
    cr_assert_eq(bl_section_end(sc.lock, 7), BL_OK);
    cr_assert_eq(bl_section_end(sc.lock, 7), BL_EINVAL, "ended twice");
    cr_assert(strstr(bl_manager_errmsg(a), "ended twice"), "%s", bl_manager_errmsg(a));
    cr_assert(tl_wait(T, &sc.done.n, 1, 5000));
    cr_assert_eq(sc.done.status, BL_OK);

    /* Double release: one release reaches the server. */
    rec r1 = {0}, r2 = {0};
    cr_assert_eq(bl_release(held.lock, on_rel, &r1), BL_OK);
    cr_assert_eq(bl_release(held.lock, on_rel, &r2), BL_EINVAL);
    cr_assert_eq(bl_release_done(held.lock, on_rel, &r2), BL_EINVAL);
    cr_assert(tl_wait(T, &r1.n, 1, 5000));
    tl_run_for(T, 100);
    cr_assert_eq(r1.status, BL_OK);
    cr_assert_eq(r2.n, 0);
    bl_stats after;
    bl_manager_stats(a, &after);
    cr_assert_eq(after.releases, before.releases + 2, "the section's and the lock's release");
    /* Two release scripts ran, and nothing else came from the refused calls
     * (each script also counts the commands it called). */
    cr_assert_eq(server_calls_of(&s, "evalsha") - scripts, 2, "only the two accepted releases");
    assert_once(&sc.done, 1, "section done");
    assert_counters(a);
    assert_counters(b);
    close_manager(T, a);
    close_manager(T, b);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

static void on_cleanup(bl_manager *m, int status, uint64_t removed, void *data)
{
    (void)m;
    (void)removed;
    rec *r = data;
    r->n++;
    r->status = status;
}

static void on_close(bl_manager *m, void *data)
{
    (void)m;
    (*(int *)data)++;
}

Test(faults, calls_after_close_get_closed_and_reach_nothing)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_config c = quick_cfg(s.port);
    bl_manager *a = mk_manager(T, s.port, &c), *b = mk_manager(T, s.port, &c);
    rec held = acq(a, "mine", 0, 0), other = acq(b, "theirs", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    rec waiting = {0};
    bl_lock *wl;
    bl_acquire_opts o = opts(10000, 0);
    cr_assert_eq(bl_acquire(a, "ebay", "theirs", &o, on_acq, &waiting, &wl), BL_OK);
    sec_ctx sc = {0};
    cr_assert_eq(bl_with_lock(a, "ebay", "sect", NULL, sec_run, sec_done, &sc), BL_OK);
    uint64_t end = mono_ms() + 5000;
    while (!sc.lock && mono_ms() < end)
        tl_run_for(T, 5);
    cr_assert(sc.lock);
    tl_run_for(T, 100);

    int closed = 0;
    rec r = {0};
    cr_assert_eq(bl_manager_close(a, on_close, &closed), BL_OK);
    cr_assert_eq(bl_manager_close(a, on_close, &closed), BL_ECLOSED);
    cr_assert(strstr(bl_manager_errmsg(a), "already called"), "%s", bl_manager_errmsg(a));
    cr_assert_eq(bl_acquire(a, "ebay", "new", NULL, on_acq, &r, NULL), BL_ECLOSED);
    cr_assert(strstr(bl_manager_errmsg(a), "closing"), "%s", bl_manager_errmsg(a));
    cr_assert_eq(bl_with_lock(a, "ebay", "new", NULL, sec_run, sec_done, &sc), BL_ECLOSED);
    cr_assert_eq(bl_inspect(a, "ebay", "new", (bl_inspect_cb)on_inspect, &r), BL_ECLOSED);
    cr_assert_eq(bl_health_check(a, on_health, &r), BL_ECLOSED);
    cr_assert_eq(bl_cleanup(a, 0, on_cleanup, &r), BL_ECLOSED);
    cr_assert_eq(bl_release(held.lock, on_rel, &r), BL_ECLOSED);
    cr_assert(strstr(bl_manager_errmsg(a), "releases held locks itself"), "%s",
              bl_manager_errmsg(a));
    cr_assert_eq(bl_release_done(held.lock, on_rel, &r), BL_ECLOSED);
    cr_assert_eq(bl_cancel(wl), BL_EINVAL, "close already ended it");
    cr_assert_eq(bl_section_end(sc.lock, 0), BL_EINVAL, "close ends the section");
    cr_assert_eq(r.n + closed + waiting.n + sc.done.n, 0, "nothing runs inside those calls");
    cr_assert(tl_wait(T, &closed, 1, 5000));
    cr_assert_eq(waiting.n, 1);
    cr_assert_eq(waiting.status, BL_ECANCELED);
    cr_assert_eq(sc.done.n, 1, "the section's done callback, before the close callback");
    cr_assert_eq(sc.done.status, BL_ECANCELED);
    tl_run_for(T, 100);
    cr_assert_eq(r.n, 0);
    cr_assert_eq(closed, 1);
    cr_assert_eq(rs_exists(&s, "bid_lock:ebay:mine"), 0, "held locks released by close");
    cr_assert_eq(rs_exists(&s, "bid_lock:ebay:sect"), 0);
    cr_assert_eq(rs_exists(&s, "bid_lock:ebay:theirs"), 1);
    cr_assert_eq(rel(other.lock).status, BL_OK);
    close_manager(T, b);
    ASSERT_NO_LEAKS();
    rs_stop(&s);
}

static int noop_attach(void *impl, struct redisAsyncContext *ac)
{
    (void)impl;
    (void)ac;
    return 0;
}

Test(faults, malformed_urls_and_configs_create_nothing)
{
    const char *urls[] = {
        "", "redis://", "redis://:@", "http://127.0.0.1", "rediss://127.0.0.1:6379",
        "redis://127.0.0.1:0", "redis://127.0.0.1:65536", "redis://127.0.0.1:-1",
        "redis://127.0.0.1:6379/-1", "redis://127.0.0.1:6379/x", "redis://[::1",
        "redis://127.0.0.1 :6379", "redis://127.0.0.1:6379?db=1", "unix://", "unix://relative",
        "redis://127.0.0.1:6379/\n", "redis://a@b@", "redis://%zz@127.0.0.1",
    };
    bl_config c;
    bl_config_init(&c);
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        c.url = urls[i];
        char why[256] = "";
        cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL, "url '%s'", urls[i]);
        cr_assert(strncmp(why, "url: ", 5) == 0 && strlen(why) > 6, "url '%s': why '%s'",
                  urls[i], why);
        bl_manager *m = (bl_manager *)&c; /* must stay untouched */
        cr_assert_eq(bl_manager_new(tl_bl(T), &c, &m), BL_EINVAL, "url '%s'", urls[i]);
        cr_assert_eq(m, (bl_manager *)&c);
    }
    size_t big = 10u << 20;
    char *huge = malloc(big + 1);
    memcpy(huge, "redis://", 8);
    memset(huge + 8, 'h', big - 8);
    huge[big] = '\0';
    c.url = huge;
    char why[256];
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strlen(why) < 200, "the message stays short: %s", why);
    free(huge);
    /* Fields, NULL arguments, a loop without its hooks. */
    bl_manager *m = NULL;
    bl_config_init(&c);
    c.port = 0;
    cr_assert_eq(bl_manager_new(tl_bl(T), &c, &m), BL_EINVAL);
    bl_config_init(&c);
    c.key_prefix = "a b";
    cr_assert_eq(bl_manager_new(tl_bl(T), &c, &m), BL_EINVAL);
    cr_assert_eq(bl_manager_new(NULL, NULL, &m), BL_EINVAL);
    cr_assert_eq(bl_manager_new(tl_bl(T), NULL, NULL), BL_EINVAL);
    bl_loop half = *tl_bl(T);
    half.timer_new = NULL;
    cr_assert_eq(bl_manager_new(&half, NULL, &m), BL_EINVAL);
    half = *tl_bl(T);
    half.attach = noop_attach;
    half.now_ms = NULL;
    cr_assert_eq(bl_manager_new(&half, NULL, &m), BL_EINVAL);
    cr_assert_null(m);
    cr_assert_eq(bl_config_validate(NULL, why, sizeof why), BL_EINVAL);
    cr_assert_str_eq(why, "config is NULL");
    cr_assert(tl_idle(T), "nothing was started on the loop");
    ASSERT_NO_LEAKS();
}

/* ==== counters stay consistent when answers come late ================================= */

Test(faults, a_done_answer_after_cancel_keeps_the_attempt_counters_consistent)
{
    redis_srv s;
    rs_start(&s, NULL);
    bl_manager *a = mk_manager(T, s.port, NULL);
    rec r = acq(a, "sold", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    rec d = {0};
    cr_assert_eq(bl_release_done(r.lock, on_rel, &d), BL_OK);
    cr_assert(tl_wait(T, &d.n, 1, 5000));
    /* The acquire is on its way when it is cancelled; the server answers
     * "done" to nobody. */
    rec c = {0};
    bl_lock *l;
    bl_acquire_opts o = opts(0, 0);
    cr_assert_eq(bl_acquire(a, "ebay", "sold", &o, on_acq, &c, &l), BL_OK);
    cr_assert_eq(bl_cancel(l), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 5000));
    cr_assert_eq(c.status, BL_ECANCELED);
    tl_run_for(T, 100);
    assert_counters(a);
    close_manager(T, a);
    rs_stop(&s);
}
