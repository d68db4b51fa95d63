/* The lock engine against a real redis-server (one per test, private port). */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"

TestSuite(engine, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 60);

Test(engine, two_instances_same_posting_only_one_wins)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    cr_assert_str_neq(bl_manager_holder(a), bl_manager_holder(b));
    rec ra = {0}, rb = {0};
    acq_start(a, "p1", 0, 0, &ra);
    acq_start(b, "p1", 0, 0, &rb);
    cr_assert(tl_wait(T, &rec_calls, 2, 5000));
    cr_assert_eq(ra.n + rb.n, 2);
    cr_assert((ra.status == BL_OK) != (rb.status == BL_OK), "exactly one winner");
    cr_assert(ra.status == BL_EBUSY || rb.status == BL_EBUSY);
    bl_lock *held = ra.status == BL_OK ? ra.lock : rb.lock;
    cr_assert_str_eq(bl_lock_key(held), "bid_lock:ebay:p1");
    redisReply *v = rs_cmd(&srv, "GET bid_lock:ebay:p1");
    cr_assert_str_eq(v->str, bl_manager_holder(ra.status == BL_OK ? a : b));
    freeReplyObject(v);
    cr_assert_eq(rel(held), BL_OK);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:p1"), 0);
    close_manager(T, a);
    close_manager(T, b);
}

Test(engine, three_instances_queue_and_each_gets_it_in_turn)
{
    bl_manager *m[3];
    rec r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        m[i] = mk_manager(T, srv.port, NULL);
    for (int i = 0; i < 3; i++)
        acq_start(m[i], "hot", 15000, 0, &r[i]);
    int served[3] = {0};
    for (int round = 0; round < 3; round++) {
        cr_assert(tl_wait(T, &rec_calls, round + 1, 15000), "round %d: nobody got the lock", round);
        tl_run_for(T, 60); /* nobody else may get it while it is held */
        int holders = 0, who = -1;
        for (int i = 0; i < 3; i++)
            if (r[i].n && r[i].status == BL_OK && !served[i]) {
                holders++;
                who = i;
            }
        cr_assert_eq(holders, 1, "round %d: %d holders", round, holders);
        for (int i = 0; i < 3; i++)
            if (i != who && !served[i])
                cr_assert_eq(r[i].n, 0, "a waiter gave up instead of queueing");
        served[who] = 1;
        int before = rec_calls;
        cr_assert_eq(rel(r[who].lock), BL_OK);
        rec_calls = before + (rec_calls - before - 1); /* count acquisitions only */
    }
    for (int i = 0; i < 3; i++)
        close_manager(T, m[i]);
}

Test(engine, a_holders_lock_cannot_be_released_by_another)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "p2", 0, 1000); /* held for sure while b tries, even on a busy machine */
    cr_assert_eq(ra.status, BL_OK);
    rec rb = acq(b, "p2", 0, 0);
    cr_assert_eq(rb.status, BL_EBUSY, "b cannot take it while a holds it");
    cr_assert(wait_gone(&srv, "bid_lock:ebay:p2", 10000), "a's lock expires");
    rb = acq(b, "p2", 0, 0);
    cr_assert_eq(rb.status, BL_OK);
    /* a's release now targets b's lock: refused, nothing deleted. */
    cr_assert_eq(rel(ra.lock), BL_ENOTHELD);
    redisReply *v = rs_cmd(&srv, "GET bid_lock:ebay:p2");
    cr_assert_eq(v->type, REDIS_REPLY_STRING);
    cr_assert_str_eq(v->str, bl_manager_holder(b));
    freeReplyObject(v);
    /* Someone overwrote the value outright: still refused. */
    freeReplyObject(rs_cmd(&srv, "SET bid_lock:ebay:p2 intruder"));
    cr_assert_eq(rel(rb.lock), BL_ENOTHELD);
    v = rs_cmd(&srv, "GET bid_lock:ebay:p2");
    cr_assert_str_eq(v->str, "intruder");
    freeReplyObject(v);
    close_manager(T, a);
    close_manager(T, b);
}

Test(engine, many_postings_concurrently_are_independent)
{
    enum { N = 200 };
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    static rec r[2 * N];
    bl_acquire_opts o = acq_opts(0, 0);
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "posting-%d", i);
        acq_start(a, id, 0, 0, &r[i]);
        cr_assert_eq(bl_acquire(b, "etsy", id, &o, on_acq, &r[N + i], NULL), BL_OK);
    }
    cr_assert(tl_wait(T, &rec_calls, 2 * N, 20000));
    for (int i = 0; i < 2 * N; i++)
        cr_assert_eq(r[i].status, BL_OK, "request %d: %s", i, bl_strerror(r[i].status));
    cr_assert_eq(rs_lock_count(&srv), 2 * N);
    static rec rel[2 * N];
    for (int i = 0; i < 2 * N; i++)
        cr_assert_eq(bl_release(r[i].lock, on_rel, &rel[i]), BL_OK);
    cr_assert(tl_wait(T, &rec_calls, 4 * N, 20000));
    for (int i = 0; i < 2 * N; i++)
        cr_assert_eq(rel[i].status, BL_OK);
    cr_assert_eq(rs_lock_count(&srv), 0);
    close_manager(T, a);
    close_manager(T, b);
}

Test(engine, a_lock_expires_after_its_ttl)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "ttl", 0, 1000); /* long enough to read its PTTL on a busy machine */
    cr_assert_eq(ra.status, BL_OK);
    long long pttl = rs_int(&srv, "PTTL bid_lock:ebay:ttl");
    cr_assert(pttl > 0 && pttl <= 1000, "pttl %lld", pttl);
    cr_assert(wait_gone(&srv, "bid_lock:ebay:ttl", 10000), "Redis expired it");
    cr_assert_eq(acq(b, "ttl", 0, 0).status, BL_OK);
    /* The default TTL is 300 s. */
    pttl = rs_int(&srv, "PTTL bid_lock:ebay:ttl");
    cr_assert(pttl > 290000 && pttl <= 300000, "default pttl %lld", pttl);
    close_manager(T, a);
    close_manager(T, b);
}

/* ---- bid workflow: acquire -> check -> "bid" (async) -> release ---------- */

enum { WF_POSTINGS = 10, WF_MANAGERS = 3 };
static int bids[WF_POSTINGS];
static int sections_ended;
typedef struct bidder {
    int posting;
    bl_lock *lock;
    bl_timer *timer;
    int done, status, section_status;
} bidder;

static void place_bid(void *data)
{
    bidder *b = data;
    bids[b->posting]++; /* the "bid store" */
    bl_section_end(b->lock, 0);
}

static void bid_section(bl_lock *lock, void *data)
{
    bidder *b = data;
    if (bids[b->posting] > 0) { /* check: somebody already bid */
        bl_section_end(lock, 1);
        return;
    }
    b->lock = lock;
    tl_bl(T)->timer_start(b->timer, 3); /* the bid takes a while */
}

static void bid_done(int status, int section_status, void *data)
{
    bidder *b = data;
    b->done++;
    b->status = status;
    b->section_status = section_status;
    sections_ended++;
}

Test(engine, bid_workflow_with_several_managers_bids_once_per_posting)
{
    bl_manager *m[WF_MANAGERS];
    static bidder jobs[WF_MANAGERS][WF_POSTINGS];
    memset(bids, 0, sizeof bids);
    for (int i = 0; i < WF_MANAGERS; i++)
        m[i] = mk_manager(T, srv.port, NULL);
    bl_acquire_opts o = acq_opts(15000, 0);
    for (int p = 0; p < WF_POSTINGS; p++)
        for (int i = 0; i < WF_MANAGERS; i++) {
            bidder *b = &jobs[i][p];
            b->posting = p;
            b->timer = tl_bl(T)->timer_new(tl_bl(T)->impl, place_bid, b);
            char id[16];
            snprintf(id, sizeof id, "%d", p);
            cr_assert_eq(bl_with_lock(m[i], "ebay", id, &o, bid_section, bid_done, b), BL_OK);
        }
    cr_assert(tl_wait(T, &sections_ended, WF_MANAGERS * WF_POSTINGS, 30000));
    int placed = 0;
    for (int p = 0; p < WF_POSTINGS; p++) {
        cr_assert_eq(bids[p], 1, "posting %d got %d bids", p, bids[p]);
        for (int i = 0; i < WF_MANAGERS; i++) {
            cr_assert_eq(jobs[i][p].done, 1);
            cr_assert_eq(jobs[i][p].status, BL_OK);
            placed += jobs[i][p].section_status == 0;
            tl_bl(T)->timer_free(jobs[i][p].timer);
        }
    }
    cr_assert_eq(placed, WF_POSTINGS);
    cr_assert_eq(rs_lock_count(&srv), 0, "every lock released");
    for (int i = 0; i < WF_MANAGERS; i++)
        close_manager(T, m[i]);
}

Test(engine, timeout_is_reported_near_the_deadline)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    cr_assert_eq(acq(a, "busy", 0, 0).status, BL_OK);
    uint64_t t0 = mono_ms();
    rec rb = acq(b, "busy", 400, 0);
    cr_assert_eq(rb.status, BL_ETIMEDOUT);
    uint64_t waited = rb.at - t0;
    cr_assert(waited >= 400, "gave up early: %llu ms", (unsigned long long)waited);
    cr_assert(waited < 5000, "did not give up at its deadline: %llu ms",
              (unsigned long long)waited);
    bl_stats st;
    bl_manager_stats(b, &st);
    cr_assert_eq(st.timeouts, 1);
    cr_assert(st.conflicts >= 2, "it retried while waiting (%llu)",
              (unsigned long long)st.conflicts);
    close_manager(T, a);
    close_manager(T, b);
}

static void failing_section(bl_lock *lock, void *data)
{
    (void)data;
    bl_section_end(lock, -42); /* the work failed */
}

Test(engine, a_section_that_fails_still_releases)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    bidder b = {0};
    cr_assert_eq(bl_with_lock(a, "ebay", "fail", NULL, failing_section, bid_done, &b), BL_OK);
    cr_assert_eq(b.done, 0);
    cr_assert(tl_wait(T, &sections_ended, 1, 5000));
    cr_assert_eq(b.done, 1);
    cr_assert_eq(b.status, BL_OK, "the release itself worked");
    cr_assert_eq(b.section_status, -42);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:fail"), 0);
    close_manager(T, a);
}

/* ---- separate OS processes -------------------------------------------------- */

static void child_acquire_then_crash(int port, int fd)
{
    tloop *t = tl_new();
    bl_config c;
    bl_config_init(&c);
    c.port = port;
    bl_manager *m;
    if (bl_manager_new(tl_bl(t), &c, &m) != BL_OK)
        _exit(2);
    rec r = {0};
    bl_acquire_opts o = acq_opts(0, 1500); /* outlives the parent's first look, even when busy */
    bl_acquire(m, "ebay", "crash", &o, on_acq, &r, NULL);
    if (!tl_wait(t, &r.n, 1, 5000) || r.status != BL_OK)
        _exit(3);
    if (write(fd, "1", 1) != 1)
        _exit(4);
    raise(SIGKILL); /* crash while holding the lock */
}

Test(engine, a_crashed_instances_lock_is_taken_over_after_ttl)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        child_acquire_then_crash(srv.port, p[1]);
    }
    close(p[1]);
    struct pollfd pf = {p[0], POLLIN, 0};
    cr_assert_eq(poll(&pf, 1, 10000), 1, "child never acquired");
    char ch;
    cr_assert_eq(read(p[0], &ch, 1), 1);
    uint64_t t0 = mono_ms();
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    close(p[0]);

    bl_manager *m = mk_manager(T, srv.port, NULL);
    cr_assert_eq(acq(m, "crash", 0, 0).status, BL_EBUSY,
                 "the dead holder's lock is still there");
    rec r = acq(m, "crash", 5000, 0);
    cr_assert_eq(r.status, BL_OK, "taken over after the TTL");
    cr_assert(r.at - t0 <= 5000);
    close_manager(T, m);
}

/* Each child: `iters` times lock, read-modify-write a counter, unlock. */
typedef struct rmw {
    redisContext *sync; /* the test's own blocking connection (harness side) */
    bl_manager *m;
    int left, ok, done;
} rmw;

static void rmw_next(rmw *w);

static void rmw_released(bl_lock *lock, int status, void *data)
{
    (void)lock;
    rmw *w = data;
    if (status != BL_OK) {
        w->done = -1;
        return;
    }
    rmw_next(w);
}

static void rmw_acquired(bl_lock *lock, int status, void *data)
{
    rmw *w = data;
    if (status != BL_OK) {
        w->done = -1;
        return;
    }
    redisReply *r = redisCommand(w->sync, "GET counter");
    long v = r && r->type == REDIS_REPLY_STRING ? atol(r->str) : 0;
    freeReplyObject(r);
    usleep(200); /* widen the race window the lock must close */
    freeReplyObject(redisCommand(w->sync, "SET counter %ld", v + 1));
    w->ok++;
    bl_release(lock, rmw_released, w);
}

static void rmw_next(rmw *w)
{
    if (w->left == 0) {
        w->done = 1;
        return;
    }
    w->left--;
    bl_acquire_opts o = acq_opts(20000, 5000);
    if (bl_acquire(w->m, "ebay", "counter", &o, rmw_acquired, w, NULL) != BL_OK)
        w->done = -1;
}

static int rmw_child(int port, int iters)
{
    tloop *t = tl_new();
    bl_config c;
    bl_config_init(&c);
    c.port = port;
    c.backoff_initial_ms = 5; /* keep the test short */
    c.backoff_max_ms = 50;
    rmw w = {0};
    w.sync = redisConnect("127.0.0.1", port);
    if (!w.sync || w.sync->err || bl_manager_new(tl_bl(t), &c, &w.m) != BL_OK)
        return 2;
    w.left = iters;
    rmw_next(&w);
    uint64_t end = mono_ms() + 40000;
    while (w.done == 0 && mono_ms() < end)
        tl_run_for(t, 10);
    return w.done == 1 && w.ok == iters ? 0 : 3;
}

Test(engine, separate_processes_exclude_each_other, .timeout = 90)
{
    enum { PROCS = 4, ITERS = 25 };
    pid_t kids[PROCS];
    for (int i = 0; i < PROCS; i++) {
        kids[i] = fork();
        cr_assert(kids[i] >= 0);
        if (kids[i] == 0)
            _exit(rmw_child(srv.port, ITERS));
    }
    for (int i = 0; i < PROCS; i++) {
        int st;
        cr_assert_eq(waitpid(kids[i], &st, 0), kids[i]);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d failed (%d)", i,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
    redisReply *r = rs_cmd(&srv, "GET counter");
    cr_assert_eq(atol(r->str), PROCS * ITERS, "lost updates: counter %s", r->str);
    freeReplyObject(r);
}

/* ---- counters, marketplaces, volume ------------------------------------------ */

Test(engine, counters_add_up)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "c", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    cr_assert_eq(acq(b, "c", 0, 0).status, BL_EBUSY);
    cr_assert_eq(acq(b, "c", 200, 0).status, BL_ETIMEDOUT);
    /* b waits; a releases after a while; b gets it. */
    rec rb = {0};
    acq_start(b, "c", 10000, 0, &rb);
    tl_run_for(T, 150);
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &rec_calls, rec_calls + 1, 10000) || rb.n == 1);
    cr_assert(tl_wait(T, &rb.n, 1, 10000));
    cr_assert_eq(rb.status, BL_OK);
    bl_stats s;
    bl_manager_stats(b, &s);
    cr_assert_eq(s.held, 1);
    cr_assert_eq(rel(rb.lock), BL_OK);
    bl_manager_stats(b, &s);
    cr_assert_eq(s.requests, 3);
    cr_assert_eq(s.acquired, 1);
    cr_assert_eq(s.busy, 1);
    cr_assert_eq(s.timeouts, 1);
    cr_assert_eq(s.requests, s.acquired + s.busy + s.timeouts + s.cancelled + s.failed);
    cr_assert_eq(s.attempts + s.direct_handoffs, s.acquired + s.conflicts + s.errors_attempt + s.abandoned);
    cr_assert(s.conflicts >= 3);
    cr_assert_eq(s.errors, 0);
    cr_assert_eq(s.releases, 1);
    cr_assert_eq(s.held, 0);
    cr_assert_eq(s.waiting, 0);
    bl_manager_stats(a, &s);
    cr_assert_eq(s.attempts, 1);
    cr_assert_eq(s.acquired, 1);
    cr_assert_eq(s.releases, 1);
    close_manager(T, a);
    close_manager(T, b);
}

Test(engine, different_marketplaces_are_independent)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    cr_assert_eq(acq(a, "same-id", 0, 0).status, BL_OK);
    cr_assert_eq(acq_in(b, "etsy", "same-id", 0, 0).status, BL_OK);
    cr_assert_eq(acq(b, "same-id", 0, 0).status, BL_EBUSY);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:same-id"), 1);
    cr_assert_eq(rs_exists(&srv, "bid_lock:etsy:same-id"), 1);
    close_manager(T, a);
    close_manager(T, b);
    cr_assert_eq(rs_lock_count(&srv), 0, "close released both");
}

typedef struct cycler {
    bl_manager *m;
    int left, ok, done;
} cycler;

static void cyc_acquired(bl_lock *lock, int status, void *data);

static void cyc_released(bl_lock *lock, int status, void *data)
{
    (void)lock;
    cycler *c = data;
    if (status != BL_OK || c->left == 0) {
        c->done = 1;
        return;
    }
    c->left--;
    bl_acquire_opts o = acq_opts(0, 0);
    if (bl_acquire(c->m, "ebay", "rapid", &o, cyc_acquired, c, NULL) != BL_OK)
        c->done = 1;
}

static void cyc_acquired(bl_lock *lock, int status, void *data)
{
    cycler *c = data;
    if (status != BL_OK) {
        c->done = 1;
        return;
    }
    c->ok++;
    bl_release(lock, cyc_released, c);
}

Test(engine, a_thousand_rapid_acquire_release_cycles)
{
    cycler c = {mk_manager(T, srv.port, NULL), 999, 0, 0};
    bl_acquire_opts o = acq_opts(0, 0);
    cr_assert_eq(bl_acquire(c.m, "ebay", "rapid", &o, cyc_acquired, &c, NULL), BL_OK);
    cr_assert(tl_wait(T, &c.done, 1, 30000));
    cr_assert_eq(c.ok, 1000);
    bl_stats s;
    bl_manager_stats(c.m, &s);
    cr_assert_eq(s.acquired, 1000);
    cr_assert_eq(s.releases, 1000);
    cr_assert_eq(s.conflicts, 0);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:rapid"), 0);
    close_manager(T, c.m);
}

/* ---- failures ------------------------------------------------------------------ */

Test(engine, unreachable_redis_gives_a_connection_error_not_a_hang)
{
    bl_manager *m = mk_manager(T, unused_port(), NULL);
    uint64_t t0 = mono_ms();
    rec r = acq(m, "p", 10000, 0); /* a long wait must not help */
    cr_assert_eq(r.status, BL_ECONN, "got %s", bl_status_name(r.status));
    cr_assert(r.errmsg[0], "a message says why");
    cr_assert(r.at - t0 < 5000, "fail closed and fast, not at the deadline");
    /* Later requests fail the same way while it is down. */
    tl_run_for(T, 20);
    cr_assert_eq(acq(m, "p", 0, 0).status, BL_ECONN);
    bl_stats s;
    bl_manager_stats(m, &s);
    cr_assert_eq(s.failed, 2);
    cr_assert_eq(s.acquired, 0);
    close_manager(T, m);
}

Test(engine, cancel_ends_a_waiting_request_with_cancelled)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    cr_assert_eq(acq(a, "x", 0, 0).status, BL_OK);
    rec rb = {0};
    bl_lock *lb;
    bl_acquire_opts o = acq_opts(10000, 0);
    cr_assert_eq(bl_acquire(b, "ebay", "x", &o, on_acq, &rb, &lb), BL_OK);
    tl_run_for(T, 120);
    cr_assert_eq(rb.n, 0);
    cr_assert_eq(bl_cancel(lb), BL_OK);
    cr_assert_eq(rb.n, 0, "not from inside bl_cancel");
    cr_assert(tl_wait(T, &rb.n, 1, 2000));
    cr_assert_eq(rb.status, BL_ECANCELED);
    bl_stats s;
    bl_manager_stats(b, &s);
    cr_assert_eq(s.cancelled, 1);
    cr_assert_eq(s.waiting, 0);
    close_manager(T, a);
    close_manager(T, b);
}

Test(engine, a_grant_that_arrives_after_cancel_is_given_back)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    rec r = {0};
    bl_lock *l;
    cr_assert_eq(bl_acquire(a, "ebay", "late", NULL, on_acq, &r, &l), BL_OK);
    cr_assert_eq(bl_cancel(l), BL_OK); /* the SET NX is already on its way */
    cr_assert(tl_wait(T, &r.n, 1, 2000));
    cr_assert_eq(r.status, BL_ECANCELED);
    tl_run_for(T, 100);
    bl_stats s;
    bl_manager_stats(a, &s);
    cr_assert_eq(s.abandoned, 1, "the server granted it");
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:late"), 0, "and bidlock gave it back");
    close_manager(T, a);
}

Test(engine, close_cancels_waiters_and_releases_held_locks)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    rec held = acq(a, "mine", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    cr_assert_eq(acq(b, "theirs", 0, 0).status, BL_OK);
    rec waiter = {0};
    acq_start(a, "theirs", 10000, 0, &waiter);
    tl_run_for(T, 100);
    int closed = 0;
    cr_assert_eq(bl_manager_close(a, on_closed, &closed), BL_OK);
    cr_assert_eq(bl_manager_close(a, on_closed, &closed), BL_ECLOSED);
    cr_assert_eq(bl_acquire(a, "ebay", "new", NULL, on_acq, &waiter, NULL), BL_ECLOSED);
    cr_assert_eq(bl_release(held.lock, NULL, NULL), BL_ECLOSED);
    cr_assert_eq(waiter.n + closed, 0, "nothing runs inside bl_manager_close");
    cr_assert(tl_wait(T, &closed, 1, 5000));
    cr_assert_eq(waiter.n, 1, "the waiter ended before the close callback");
    cr_assert_eq(waiter.status, BL_ECANCELED);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:mine"), 0, "held lock released on close");
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:theirs"), 1, "other's lock untouched");
    close_manager(T, b);
}

Test(engine, close_right_after_create_and_while_unreachable)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    close_manager(T, a); /* still connecting */
    bl_manager *b = mk_manager(T, unused_port(), NULL);
    rec r = {0};
    cr_assert_eq(bl_acquire(b, "ebay", "p", NULL, on_acq, &r, NULL), BL_OK);
    close_manager(T, b);
    cr_assert_eq(r.n, 1, "exactly once");
    cr_assert(r.status == BL_ECONN || r.status == BL_ECANCELED);
}

Test(engine, bad_input_gets_invalid_argument_and_sends_nothing)
{
    bl_manager *m = mk_manager(T, srv.port, NULL);
    rec r = {0};
    char big[300];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    struct {
        const char *mp, *posting, *reason;
    } bad[] = {
        {NULL, "p", "NULL"}, {"ebay", NULL, "NULL"}, {"", "p", "empty"},
        {"ebay", "", "empty"}, {"a:b", "c", "':'"}, {"ebay", "p 1", "whitespace"},
        {"ebay", "p\n", "control"}, {big, "p", "256"}, {"ebay", big, "256"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(bl_acquire(m, bad[i].mp, bad[i].posting, NULL, on_acq, &r, NULL), BL_EINVAL,
                     "case %zu", i);
        cr_assert(strstr(bl_manager_errmsg(m), bad[i].reason), "case %zu: '%s'", i,
                  bl_manager_errmsg(m));
    }
    bl_acquire_opts o = acq_opts(0, -5);
    cr_assert_eq(bl_acquire(m, "ebay", "p", &o, on_acq, &r, NULL), BL_EINVAL);
    o = acq_opts(-7, 0);
    cr_assert_eq(bl_acquire(m, "ebay", "p", &o, on_acq, &r, NULL), BL_EINVAL);
    o = acq_opts(0, (int64_t)1 << 50);
    cr_assert_eq(bl_acquire(m, "ebay", "p", &o, on_acq, &r, NULL), BL_EINVAL);
    cr_assert_eq(bl_acquire(m, "ebay", "p", NULL, NULL, &r, NULL), BL_EINVAL);
    cr_assert_eq(bl_release(NULL, NULL, NULL), BL_EINVAL);
    cr_assert_eq(bl_cancel(NULL), BL_EINVAL);
    tl_run_for(T, 100);
    cr_assert_eq(r.n, 0, "no callback for a refused call");
    bl_stats s;
    bl_manager_stats(m, &s);
    cr_assert_eq(s.requests, 0);
    cr_assert_eq(s.attempts, 0);
    redisReply *info = rs_cmd(&srv, "INFO commandstats");
    cr_assert_null(strstr(info->str, "cmdstat_eval"), "a script ran:\n%s", info->str);
    freeReplyObject(info);
    cr_assert_eq(rs_lock_count(&srv), 0);
    close_manager(T, m);
}

Test(engine, double_release_is_refused)
{
    bl_manager *m = mk_manager(T, srv.port, NULL);
    rec r = acq(m, "twice", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    rec rel = {0};
    cr_assert_eq(bl_release(r.lock, on_rel, &rel), BL_OK);
    cr_assert_eq(bl_release(r.lock, on_rel, &rel), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(m), "not held"));
    cr_assert(tl_wait(T, &rel.n, 1, 5000));
    tl_run_for(T, 50);
    cr_assert_eq(rel.n, 1, "one release callback");
    cr_assert_eq(rel.status, BL_OK);
    close_manager(T, m);
}

Test(engine, scripts_are_reloaded_after_script_flush)
{
    bl_manager *m = mk_manager(T, srv.port, NULL);
    rec r = acq(m, "s", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    cr_assert_eq(rel(r.lock), BL_OK);
    freeReplyObject(rs_cmd(&srv, "SCRIPT FLUSH"));
    r = acq(m, "s", 0, 0);
    cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    redisReply *ex = rs_cmd(&srv, "SCRIPT EXISTS %s", "0");
    freeReplyObject(ex);
    r = acq(m, "s", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    close_manager(T, m);
}

Test(engine, a_redis_error_keeps_the_servers_message)
{
    bl_manager *m = mk_manager(T, srv.port, NULL);
    rec r = acq(m, "wrong", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    freeReplyObject(rs_cmd(&srv, "DEL bid_lock:ebay:wrong"));
    freeReplyObject(rs_cmd(&srv, "RPUSH bid_lock:ebay:wrong x"));
    rec rel = {0};
    cr_assert_eq(bl_release(r.lock, on_rel, &rel), BL_OK);
    cr_assert(tl_wait(T, &rel.n, 1, 5000));
    cr_assert_eq(rel.status, BL_EREDIS);
    cr_assert(strstr(rel.errmsg, "WRONGTYPE"), "message: %s", rel.errmsg);
    cr_assert_eq(rs_int(&srv, "LLEN bid_lock:ebay:wrong"), 1, "nothing deleted");
    close_manager(T, m);
}
