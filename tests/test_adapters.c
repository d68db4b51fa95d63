/* The host-loop adapters, on whichever loop this build runs (harness.h):
 * managers come and go without leaving anything behind, socket errors reach
 * hiredis, a connection freed while its events are pending is safe, and
 * timers keep the contract of bidlock/loop.h. On epoll, bidlock is one fd
 * in the caller's own epoll set (the harness's loop already is such a
 * caller; the tests at the end write one out). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <hiredis/async.h>

#include "harness.h"
#include "helpers.h"

TestSuite(adapters, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 60);

/* ---- managers: create, attach, close --------------------------------------- */

/* Try-once acquire, then release if it was granted: the connection has
 * really been used. Returns the acquire's status. On loop t, not T. */
static int use(tloop *t, bl_manager *m)
{
    rec a = {0}, r = {0};
    acq_start(m, "cycle", 0, 0, &a);
    cr_assert(tl_wait(t, &a.n, 1, 10000), "%s: acquire never completed", tl_name());
    if (a.status == BL_OK) {
        cr_assert_eq(bl_release(a.lock, on_rel, &r), BL_OK);
        cr_assert(tl_wait(t, &r.n, 1, 10000), "%s: release never completed", tl_name());
        cr_assert_eq(r.status, BL_OK);
    }
    return a.status;
}

Test(adapters, manager_cycles_on_a_real_server_leave_nothing_behind)
{
    for (int i = 0; i < 4; i++) {
        tloop *t = tl_new();
        for (int j = 0; j < 3; j++) {
            bl_manager *m = mk_manager(t, srv.port, NULL);
            cr_assert_eq(use(t, m), BL_OK);
            close_manager(t, m);
        }
        close_manager(t, mk_manager(t, srv.port, NULL)); /* still connecting */
        cr_assert(tl_idle(t), "%s: something is left on the loop", tl_name());
        tl_free(t);
    }
    assert_no_leaks();
}

Test(adapters, manager_cycles_against_an_unused_port_leave_nothing_behind)
{
    for (int i = 0; i < 3; i++) {
        tloop *t = tl_new();
        bl_manager *m = mk_manager(t, unused_port(), NULL);
        cr_assert_eq(use(t, m), BL_ECONN, "a refused connect is reported");
        close_manager(t, m);
        close_manager(t, mk_manager(t, unused_port(), NULL));
        cr_assert(tl_idle(t), "%s: something is left on the loop", tl_name());
        tl_free(t);
    }
    assert_no_leaks();
}

Test(adapters, a_manager_whose_server_dies_closes_cleanly)
{
    tloop *t = tl_new();
    bl_config c;
    bl_config_init(&c);
    c.reconnect_initial_ms = 20;
    bl_manager *m = mk_manager(t, srv.port, &c);
    cr_assert_eq(use(t, m), BL_OK);
    rs_stop(&srv); /* the connection breaks under the manager */
    tl_run_for(t, 100); /* it notices, and retries against a closed port */
    cr_assert_eq(use(t, m), BL_ECONN);
    close_manager(t, m);
    cr_assert(tl_idle(t), "%s: something is left on the loop", tl_name());
    tl_free(t);
    assert_no_leaks();
}

/* ---- raw hiredis contexts on the adapter ------------------------------------- */

static int connects, connect_status, disconnects, replies, null_replies;
static char connect_err[128];

static void on_connect(const redisAsyncContext *ac, int status)
{
    connects++;
    connect_status = status;
    snprintf(connect_err, sizeof connect_err, "%s", ac->c.errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)ac;
    (void)status;
    disconnects++;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    (void)priv;
    replies++;
    null_replies += reply == NULL;
}

static redisAsyncContext *raw_connect(int port)
{
    redisAsyncContext *ac = redisAsyncConnect("127.0.0.1", port);
    cr_assert(ac && !ac->err);
    cr_assert_eq(tl_bl(T)->attach(tl_bl(T)->impl, ac), 0);
    redisAsyncSetConnectCallback(ac, on_connect); /* after attach: see loop.h */
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

Test(adapters, a_refused_connect_reaches_the_connect_callback)
{
    redisAsyncContext *ac = raw_connect(unused_port());
    redisAsyncCommand(ac, on_reply, NULL, "PING"); /* queued behind the connect */
    cr_assert(tl_wait(T, &connects, 1, 5000), "%s: connect callback never ran", tl_name());
    cr_assert_eq(connect_status, REDIS_ERR);
    cr_assert(strstr(connect_err, "refused"), "errstr: %s", connect_err);
    cr_assert_eq(replies, 1, "the queued command ended too");
    cr_assert_eq(null_replies, 1);
    /* hiredis freed the context itself; the adapter's state went with it. */
    cr_assert(tl_idle(T), "%s: the connection is still on the loop", tl_name());
    cr_assert_eq(disconnects, 0);
    assert_no_leaks();
}

Test(adapters, a_killed_server_reaches_the_disconnect_callback)
{
    raw_connect(srv.port);
    cr_assert(tl_wait(T, &connects, 1, 5000));
    cr_assert_eq(connect_status, REDIS_OK);
    rs_stop(&srv);
    cr_assert(tl_wait(T, &disconnects, 1, 5000), "%s: the loss went unnoticed", tl_name());
    cr_assert(tl_idle(T), "%s: the connection is still on the loop", tl_name());
    assert_no_leaks();
}

/* Two connections whose replies land in the same loop turn (one epoll_wait
 * batch): whichever reply is handled first frees the other context and
 * opens a new one, which likely gets the freed fd number back. The freed
 * connection's pending event must be ignored, not dispatched to freed
 * memory or to the newcomer. */
static redisAsyncContext *pair[2], *newcomer;

static void on_pair_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    replies++;
    null_replies += reply == NULL;
    if (!reply || newcomer)
        return;
    redisAsyncContext *other = pair[ac == pair[0]];
    pair[ac == pair[0]] = NULL;
    redisAsyncFree(other); /* safe from another context's reply callback */
    newcomer = raw_connect(srv.port);
    redisAsyncCommand(newcomer, on_reply, NULL, "PING");
}

Test(adapters, a_context_freed_while_its_event_is_pending_is_skipped)
{
    for (int round = 0; round < 20; round++) {
        connects = replies = null_replies = 0;
        newcomer = NULL;
        for (int i = 0; i < 2; i++)
            pair[i] = raw_connect(srv.port);
        cr_assert(tl_wait(T, &connects, 2, 5000));
        for (int i = 0; i < 2; i++)
            redisAsyncCommand(pair[i], on_pair_reply, NULL, "PING");
        tl_run_for(T, 1); /* send both */
        usleep(20000);    /* both replies are waiting now */
        cr_assert(tl_wait(T, &replies, 3, 5000), "%s: replies %d", tl_name(), replies);
        cr_assert_eq(null_replies, 1, "the freed context's reply ended with NULL");
        cr_assert_eq(connects, 3, "the newcomer connected");
        tl_run_for(T, 5);
        cr_assert_eq(replies, 3, "exactly once each");
        redisAsyncFree(pair[0] ? pair[0] : pair[1]);
        redisAsyncFree(newcomer);
        cr_assert(tl_idle(T), "%s: round %d left something on the loop", tl_name(), round);
    }
    assert_no_leaks();
}

/* ---- timers ----------------------------------------------------------------------- */

static void count_cb(void *data)
{
    (*(int *)data)++;
}

Test(adapters, a_zero_timer_fires_once_later_never_inside_start)
{
    const bl_loop *l = tl_bl(T);
    int n = 0;
    bl_timer *t = l->timer_new(l->impl, count_cb, &n);
    cr_assert(t);
    l->timer_start(t, 0);
    cr_assert_eq(n, 0, "called from inside timer_start");
    cr_assert(tl_wait(T, &n, 1, 1000));
    tl_run_for(T, 20);
    cr_assert_eq(n, 1, "one-shot");

    l->timer_start(t, 10);
    l->timer_stop(t);
    tl_run_for(T, 40);
    cr_assert_eq(n, 1, "a stopped timer does not fire");

    uint64_t t0 = mono_ms();
    l->timer_start(t, 10);
    l->timer_start(t, 80); /* re-arming a running timer moves it */
    cr_assert(tl_wait(T, &n, 2, 2000));
    cr_assert(mono_ms() - t0 >= 78, "%s: fired after %llu ms", tl_name(),
              (unsigned long long)(mono_ms() - t0));
    l->timer_free(t);
    cr_assert(tl_idle(T));
}

typedef struct self {
    const bl_loop *l;
    bl_timer *t;
    int n, limit;
} self;

static void rearm_or_free(void *data)
{
    self *s = data;
    if (++s->n < s->limit)
        s->l->timer_start(s->t, 0);
    else
        s->l->timer_free(s->t); /* from inside its own callback */
}

Test(adapters, a_timer_may_rearm_or_free_itself_in_its_callback)
{
    self s = {tl_bl(T), NULL, 0, 100};
    s.t = s.l->timer_new(s.l->impl, rearm_or_free, &s);
    s.l->timer_start(s.t, 0);
    cr_assert(tl_wait(T, &s.n, 100, 5000));
    tl_run_for(T, 20);
    cr_assert_eq(s.n, 100);
    cr_assert(tl_idle(T));
    assert_no_leaks();
}

enum { NT = 2000 };
typedef struct tt {
    bl_timer *t;
    uint64_t due, at;
    int n, stopped;
} tt;
static int fired;

static void tt_cb(void *data)
{
    tt *x = data;
    x->n++;
    x->at = mono_ms();
    fired++;
}

Test(adapters, thousands_of_timers_fire_once_each_no_earlier_than_due)
{
    static tt x[NT];
    const bl_loop *l = tl_bl(T);
    srand(7);
    int expect = 0;
    for (int i = 0; i < NT; i++) {
        x[i].t = l->timer_new(l->impl, tt_cb, &x[i]);
        cr_assert(x[i].t);
        uint64_t after = (uint64_t)(rand() % 300);
        x[i].due = mono_ms() + after;
        l->timer_start(x[i].t, after);
    }
    for (int i = 0; i < NT; i++) {
        if (i % 7 == 0) {
            l->timer_stop(x[i].t);
            x[i].stopped = 1;
        } else if (i % 5 == 0) {
            uint64_t after = (uint64_t)(rand() % 300);
            x[i].due = mono_ms() + after;
            l->timer_start(x[i].t, after);
        }
        expect += !x[i].stopped;
    }
    cr_assert(tl_wait(T, &fired, expect, 10000), "%d of %d fired", fired, expect);
    tl_run_for(T, 50);
    for (int i = 0; i < NT; i++) {
        cr_assert_eq(x[i].n, !x[i].stopped, "timer %d fired %d times", i, x[i].n);
        /* libuv keeps a millisecond clock of its own: allow it 2 ms. */
        if (!x[i].stopped)
            cr_assert(x[i].at + 2 >= x[i].due, "%s: timer %d early by %lld ms", tl_name(), i,
                      (long long)(x[i].due - x[i].at));
        l->timer_free(x[i].t);
    }
    cr_assert(tl_idle(T));
    assert_no_leaks();
}

/* ---- epoll: driven from the caller's own epoll set ----------------------------------- */

#if defined(BL_TEST_LOOP_EPOLL)
#include <sys/epoll.h>

#include "bidlock/epoll.h"

/* A program's own loop, written out here rather than taken from the
 * harness: its epoll set holds bidlock's one fd (data.ptr NULL) and a pipe
 * of its own. bidlock runs only when its fd is readable. */
typedef struct own_loop {
    int epfd, pipe[2];
    bl_epoll *ep;
    int pipe_events, dispatches;
} own_loop;

static void own_new(own_loop *o)
{
    memset(o, 0, sizeof *o);
    o->ep = bl_epoll_new();
    cr_assert(o->ep);
    o->epfd = epoll_create1(EPOLL_CLOEXEC);
    cr_assert(o->epfd >= 0);
    cr_assert_eq(pipe(o->pipe), 0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    cr_assert_eq(epoll_ctl(o->epfd, EPOLL_CTL_ADD, bl_epoll_fd(o->ep), &ev), 0);
    ev.data.ptr = o;
    cr_assert_eq(epoll_ctl(o->epfd, EPOLL_CTL_ADD, o->pipe[0], &ev), 0);
}

/* Turn the caller's loop until *counter >= target (or timeout_ms). */
static int own_wait(own_loop *o, const int *counter, int target, int timeout_ms)
{
    uint64_t end = mono_ms() + (uint64_t)timeout_ms;
    while (*counter < target && mono_ms() < end) {
        struct epoll_event evs[8];
        int n = epoll_wait(o->epfd, evs, 8, 50);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                o->dispatches++;
                cr_assert(bl_epoll_dispatch(o->ep) >= 0);
            } else {
                char buf[16];
                cr_assert(read(o->pipe[0], buf, sizeof buf) > 0);
                o->pipe_events++;
            }
        }
    }
    return *counter >= target;
}

static void own_free(own_loop *o)
{
    epoll_ctl(o->epfd, EPOLL_CTL_DEL, bl_epoll_fd(o->ep), NULL);
    bl_epoll_free(o->ep);
    close(o->pipe[0]);
    close(o->pipe[1]);
    close(o->epfd);
}

static void on_closed_count(bl_manager *m, void *data)
{
    (void)m;
    (*(int *)data)++;
}

Test(adapters, epoll_from_the_callers_own_epoll_set_acquires_and_releases)
{
    own_loop o;
    own_new(&o);
    bl_loop bl;
    bl_epoll_loop(&bl, o.ep);
    bl_config c;
    bl_config_init(&c);
    c.port = srv.port;
    bl_manager *m = NULL;
    cr_assert_eq(bl_manager_new(&bl, &c, &m), BL_OK);

    rec a = {0}, r = {0};
    cr_assert_eq(bl_acquire(m, "ebay", "own-loop", NULL, on_acq, &a, NULL), BL_OK);
    cr_assert_eq(write(o.pipe[1], "x", 1), 1); /* the program's own fd, same set */
    cr_assert(own_wait(&o, &a.n, 1, 10000), "acquire never completed");
    cr_assert_eq(a.status, BL_OK, "%s", bl_strerror(a.status));
    cr_assert_eq(rs_lock_count(&srv), 1, "the lock is in Redis");
    cr_assert_eq(bl_release(a.lock, on_rel, &r), BL_OK);
    cr_assert(own_wait(&o, &r.n, 1, 10000), "release never completed");
    cr_assert_eq(r.status, BL_OK);
    cr_assert_eq(rs_lock_count(&srv), 0);
    cr_assert(own_wait(&o, &o.pipe_events, 1, 1000), "the program's own fd was served too");

    int closed = 0;
    cr_assert_eq(bl_manager_close(m, on_closed_count, &closed), BL_OK);
    cr_assert(own_wait(&o, &closed, 1, 10000), "close callback never ran");
    cr_assert(!bl_epoll_alive(o.ep), "a connection or timer is left");
    struct epoll_event ev;
    cr_assert_eq(epoll_wait(o.epfd, &ev, 1, 20), 0,
                 "with nothing left, bidlock's fd does not wake the caller's loop");
    cr_assert(o.dispatches > 0);
    own_free(&o);
    assert_no_leaks();
}

Test(adapters, epoll_fd_turns_readable_when_a_timer_is_due)
{
    own_loop o;
    own_new(&o);
    bl_loop bl;
    bl_epoll_loop(&bl, o.ep);
    int n = 0;
    bl_timer *t = bl.timer_new(bl.impl, count_cb, &n);
    cr_assert(t);
    struct epoll_event ev;

    /* Armed outside any dispatch: the caller's epoll_wait wakes for it. */
    uint64_t t0 = mono_ms();
    bl.timer_start(t, 40);
    cr_assert_eq(epoll_wait(o.epfd, &ev, 1, 2000), 1, "the timer woke the loop");
    cr_assert(mono_ms() - t0 >= 39, "woke after %llu ms", (unsigned long long)(mono_ms() - t0));
    cr_assert_eq(ev.data.ptr, NULL);
    cr_assert_eq(bl_epoll_dispatch(o.ep), 1);
    cr_assert_eq(n, 1);
    cr_assert_eq(epoll_wait(o.epfd, &ev, 1, 20), 0, "one-shot: quiet afterwards");

    /* Moved later, then stopped: no wake-up at the old or any time. */
    bl.timer_start(t, 10);
    bl.timer_start(t, 60);
    cr_assert_eq(epoll_wait(o.epfd, &ev, 1, 30), 0, "re-arming moved it");
    bl.timer_stop(t);
    cr_assert_eq(epoll_wait(o.epfd, &ev, 1, 80), 0, "a stopped timer does not wake the loop");

    /* Due at once: readable right away, but the callback waits for dispatch. */
    bl.timer_start(t, 0);
    cr_assert_eq(n, 1, "never from inside timer_start");
    cr_assert_eq(epoll_wait(o.epfd, &ev, 1, 1000), 1);
    cr_assert_eq(bl_epoll_dispatch(o.ep), 1);
    cr_assert_eq(n, 2);
    bl.timer_free(t);
    cr_assert(!bl_epoll_alive(o.ep));
    own_free(&o);
    assert_no_leaks();
}

/* A timer re-armed with 0 from its own callback runs in the next dispatch,
 * not in this one: the fd is readable again as soon as this one ends. */
typedef struct again {
    const bl_loop *l;
    bl_timer *t;
    int n;
} again;

static void again_cb(void *data)
{
    again *g = data;
    if (++g->n < 3)
        g->l->timer_start(g->t, 0);
}

Test(adapters, epoll_a_timer_rearmed_in_its_callback_wakes_the_loop_again)
{
    own_loop o;
    own_new(&o);
    bl_loop bl;
    bl_epoll_loop(&bl, o.ep);
    again g = {&bl, NULL, 0};
    g.t = bl.timer_new(bl.impl, again_cb, &g);
    bl.timer_start(g.t, 0);
    struct epoll_event ev;
    for (int i = 1; i <= 3; i++) {
        cr_assert_eq(epoll_wait(o.epfd, &ev, 1, 1000), 1, "round %d: the fd is readable", i);
        cr_assert_eq(bl_epoll_dispatch(o.ep), 1, "one run per dispatch");
        cr_assert_eq(g.n, i);
    }
    cr_assert_eq(epoll_wait(o.epfd, &ev, 1, 20), 0);
    bl.timer_free(g.t);
    own_free(&o);
    assert_no_leaks();
}
#endif
