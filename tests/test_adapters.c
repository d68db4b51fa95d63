/* The host-loop adapters, on whichever loop this build runs (harness.h):
 * managers come and go without leaving anything behind, socket errors reach
 * hiredis, a connection freed while its events are pending is safe, and
 * timers keep the contract of bidlock/loop.h. */
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

/* ---- the epoll loop's own facilities ------------------------------------------------- */

#if defined(BL_TEST_LOOP_EPOLL)
#include "bidlock/epoll.h"

typedef struct reader {
    int n, eof, unwatch_at_eof;
    unsigned last;
    char buf[64];
    size_t len;
} reader;

static void read_cb(bl_epoll_watch *w, int fd, unsigned events, void *data)
{
    reader *r = data;
    r->n++;
    r->last = events;
    ssize_t k = read(fd, r->buf + r->len, sizeof r->buf - 1 - r->len);
    if (k > 0)
        r->len += (size_t)k;
    else if (k == 0) {
        r->eof++;
        if (r->unwatch_at_eof)
            bl_epoll_unwatch(w);
    }
}

static bl_epoll *own_epoll(tloop *t)
{
    return (bl_epoll *)tl_bl(t)->impl;
}

Test(adapters, epoll_watches_a_pipe_pauses_and_sees_the_hangup)
{
    bl_epoll *ep = own_epoll(T);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    reader r = {0};
    r.unwatch_at_eof = 1;
    bl_epoll_watch *w = bl_epoll_watch_fd(ep, p[0], BL_EPOLL_READ, read_cb, &r);
    cr_assert(w);
    cr_assert(bl_epoll_alive(ep));
    cr_assert_eq(write(p[1], "ab", 2), 2);
    cr_assert(tl_wait(T, &r.n, 1, 1000));
    cr_assert_eq(r.last, BL_EPOLL_READ);
    cr_assert_eq(bl_epoll_watch_set(w, 0), 0);
    cr_assert(!bl_epoll_alive(ep), "a paused watch keeps nothing alive");
    cr_assert_eq(write(p[1], "cd", 2), 2);
    close(p[1]); /* hang-up while paused: no busy loop, no callback */
    tl_run_for(T, 30);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(bl_epoll_watch_set(w, BL_EPOLL_READ), 0);
    cr_assert(tl_wait(T, &r.eof, 1, 1000));
    cr_assert_str_eq(r.buf, "abcd");
    cr_assert(!bl_epoll_alive(ep), "unwatched from inside its callback");
    close(p[0]);
}

Test(adapters, epoll_reports_a_regular_file_as_always_ready)
{
    bl_epoll *ep = own_epoll(T);
    char path[] = "/tmp/bidlock-file-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    unlink(path);
    cr_assert_eq(write(fd, "posting\n", 8), 8);
    lseek(fd, 0, SEEK_SET);
    reader r = {0};
    r.unwatch_at_eof = 1;
    cr_assert(bl_epoll_watch_fd(ep, fd, BL_EPOLL_READ, read_cb, &r), "%s", strerror(errno));
    cr_assert(tl_wait(T, &r.eof, 1, 1000));
    cr_assert_str_eq(r.buf, "posting\n");
    cr_assert(!bl_epoll_alive(ep));
    close(fd);
}

static void stop_cb(void *data)
{
    bl_epoll_stop(data);
}

Test(adapters, epoll_run_returns_when_nothing_is_left_or_when_stopped)
{
    bl_epoll *ep = own_epoll(T);
    const bl_loop *l = tl_bl(T);
    int n = 0;
    bl_timer *a = l->timer_new(l->impl, count_cb, &n);
    l->timer_start(a, 20);
    uint64_t t0 = mono_ms();
    cr_assert_eq(bl_epoll_run(ep), 0);
    cr_assert_eq(n, 1);
    cr_assert(mono_ms() - t0 >= 20);
    bl_timer *s = l->timer_new(l->impl, stop_cb, ep);
    l->timer_start(a, 10000);
    l->timer_start(s, 10);
    cr_assert_eq(bl_epoll_run(ep), 0);
    cr_assert(mono_ms() - t0 < 5000, "stopped, not run to the 10 s timer");
    cr_assert(bl_epoll_alive(ep));
    l->timer_free(a);
    l->timer_free(s);
    cr_assert(!bl_epoll_alive(ep));
}
#endif
