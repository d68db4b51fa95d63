/* harness.c - see harness.h. */
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
#endif

uint64_t mono_ms(void)
{
    return mono_us() / 1000u;
}

uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void assert_no_leaks(void)
{
#ifdef HAVE_LSAN
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "%s: leaked memory (see LeakSanitizer above)",
                 tl_name());
#endif
}

/* ---- redis-server: tests/rsrv, asserted ------------------------------------- */

int unused_port(void)
{
    int port = rsrv_free_port(); /* bound and closed: nothing listens there */
    cr_assert(port > 0, "no free port");
    return port;
}

void rs_start(redis_srv *s, const char *const *extra)
{
    cr_assert_eq(rsrv_start(s, extra), 0, "%s", s->err);
}

void rs_stop(redis_srv *s)
{
    rsrv_stop(s);
}

void rs_kill(redis_srv *s)
{
    rsrv_kill(s);
}

void rs_restart(redis_srv *s)
{
    cr_assert_eq(rsrv_restart(s), 0, "%s", s->err);
}

redisContext *rs_connect(const redis_srv *s)
{
    redisContext *c = rsrv_connect(s->port, s->password, 2000);
    cr_assert(c, "connect (and AUTH) to the test's redis-server on port %d failed", s->port);
    return c;
}

static redisReply *vcmd(const redis_srv *s, const char *fmt, va_list ap)
{
    redisContext *c = rs_connect(s);
    redisReply *r = redisvCommand(c, fmt, ap);
    cr_assert(r, "command failed: %s", c->errstr);
    redisFree(c);
    return r;
}

redisReply *rs_cmd(const redis_srv *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(s, fmt, ap);
    va_end(ap);
    return r;
}

long long rs_int(const redis_srv *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(s, fmt, ap);
    va_end(ap);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "expected an integer reply (%s)",
                 r->type == REDIS_REPLY_ERROR ? r->str : "other type");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

int rs_exists(const redis_srv *s, const char *key)
{
    return (int)rs_int(s, "EXISTS %s", key);
}

/* ---- host loop -------------------------------------------------------------
 * One suite, three loops: the build picks one with -DBL_TEST_LOOP_LIBEV,
 * _LIBUV or _EPOLL. Every turn of the loop waits at most ~5 ms, so waits
 * are bounded in time even when nothing happens. Each tl_new() makes a new
 * loop, so a forked child never runs its parent's. */

#if defined(BL_TEST_LOOP_LIBUV)

#include <uv.h>

#include "bidlock/libuv.h"

struct tloop {
    uv_loop_t loop;
    bl_loop bl;
    uv_timer_t tick;
    int handles; /* scratch for tl_idle */
};

static void tick_cb(uv_timer_t *h)
{
    (void)h;
}

const char *tl_name(void)
{
    return "libuv";
}

tloop *tl_new(void)
{
    signal(SIGPIPE, SIG_IGN); /* as every bidlock program must: see bidlock.h */
    tloop *t = calloc(1, sizeof *t);
    cr_assert(t);
    cr_assert_eq(uv_loop_init(&t->loop), 0);
    bl_libuv_loop(&t->bl, &t->loop);
    uv_timer_init(&t->loop, &t->tick);
    return t;
}

int tl_wait(tloop *t, const int *counter, int target, int timeout_ms)
{
    uint64_t end = mono_ms() + (uint64_t)timeout_ms;
    uv_timer_start(&t->tick, tick_cb, 5, 5);
    while (*counter < target && mono_ms() < end)
        uv_run(&t->loop, UV_RUN_ONCE);
    uv_timer_stop(&t->tick);
    return *counter >= target;
}

static void count_handle(uv_handle_t *h, void *arg)
{
    tloop *t = arg;
    if (h != (uv_handle_t *)&t->tick && !uv_is_closing(h))
        t->handles++;
}

/* Every handle counts, started or not: a stopped timer nobody closed is
 * a leak too. Closing handles get their turn first. */
int tl_idle(tloop *t)
{
    uv_run(&t->loop, UV_RUN_NOWAIT);
    t->handles = 0;
    uv_walk(&t->loop, count_handle, t);
    return t->handles == 0;
}

void tl_free(tloop *t)
{
    tl_run_for(t, 1); /* close callbacks free adapter memory */
    uv_close((uv_handle_t *)&t->tick, NULL);
    uv_run(&t->loop, UV_RUN_NOWAIT);
    if (uv_loop_close(&t->loop) != 0) {
        /* Something was never closed: leak it rather than free live memory. */
        fprintf(stderr, "tl_free: the libuv loop still has handles\n");
        return;
    }
    free(t);
}

#elif defined(BL_TEST_LOOP_EPOLL)

#include <sys/epoll.h>

#include "bidlock/epoll.h"

/* The test owns its loop, as an epoll program does: its own epoll set,
 * where bidlock is one fd, dispatched only when readable (bidlock/epoll.h). */
struct tloop {
    bl_epoll *ep;
    bl_loop bl;
    int epfd;
};

const char *tl_name(void)
{
    return "epoll";
}

tloop *tl_new(void)
{
    signal(SIGPIPE, SIG_IGN); /* as every bidlock program must: see bidlock.h */
    tloop *t = calloc(1, sizeof *t);
    cr_assert(t);
    t->ep = bl_epoll_new();
    cr_assert(t->ep);
    bl_epoll_loop(&t->bl, t->ep);
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    cr_assert(t->epfd >= 0 && epoll_ctl(t->epfd, EPOLL_CTL_ADD, bl_epoll_fd(t->ep), &ev) == 0);
    return t;
}

int tl_wait(tloop *t, const int *counter, int target, int timeout_ms)
{
    uint64_t end = mono_ms() + (uint64_t)timeout_ms, now;
    while (*counter < target && (now = mono_ms()) < end) {
        struct epoll_event ev;
        int n = epoll_wait(t->epfd, &ev, 1, end - now < 5 ? (int)(end - now) : 5);
        cr_assert(n >= 0 || errno == EINTR);
        if (n > 0)
            cr_assert(bl_epoll_dispatch(t->ep) >= 0);
    }
    return *counter >= target;
}

int tl_idle(tloop *t)
{
    bl_epoll_dispatch(t->ep);
    return !bl_epoll_alive(t->ep);
}

void tl_free(tloop *t)
{
    tl_run_for(t, 1);
    if (bl_epoll_alive(t->ep))
        fprintf(stderr, "tl_free: the epoll loop still has connections or timers\n");
    close(t->epfd);
    bl_epoll_free(t->ep);
    free(t);
}

#else /* libev, the default */

#include <ev.h>

#include "bidlock/libev.h"

struct tloop {
    struct ev_loop *loop;
    bl_loop bl;
    ev_timer tick;
};

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

const char *tl_name(void)
{
    return "libev";
}

tloop *tl_new(void)
{
    signal(SIGPIPE, SIG_IGN); /* as every bidlock program must: see bidlock.h */
    tloop *t = calloc(1, sizeof *t);
    cr_assert(t);
    t->loop = ev_loop_new(EVFLAG_AUTO);
    cr_assert(t->loop);
    bl_libev_loop(&t->bl, t->loop);
    ev_timer_init(&t->tick, tick_cb, 0.005, 0.005);
    return t;
}

int tl_wait(tloop *t, const int *counter, int target, int timeout_ms)
{
    uint64_t end = mono_ms() + (uint64_t)timeout_ms;
    ev_timer_start(t->loop, &t->tick);
    while (*counter < target && mono_ms() < end)
        ev_run(t->loop, EVRUN_ONCE);
    ev_timer_stop(t->loop, &t->tick);
    return *counter >= target;
}

/* ev_run returns whether active watchers are left (the tick is stopped). */
int tl_idle(tloop *t)
{
    return ev_run(t->loop, EVRUN_NOWAIT) == 0;
}

void tl_free(tloop *t)
{
    /* Let adapters finish deferred frees, then drop the loop. */
    tl_run_for(t, 1);
    ev_loop_destroy(t->loop);
    free(t);
}

#endif

const bl_loop *tl_bl(tloop *t)
{
    return &t->bl;
}

void tl_run_for(tloop *t, int ms)
{
    int never = 0;
    tl_wait(t, &never, 1, ms);
}

int tl_wait_for(tloop *t, int (*done)(void *arg), void *arg, int timeout_ms)
{
    uint64_t end = mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (done(arg))
            return 1;
        if (mono_ms() >= end)
            return 0;
        tl_run_for(t, 5);
    }
}

bl_manager *mk_manager(tloop *t, int port, const bl_config *cfg)
{
    bl_config c;
    if (cfg)
        c = *cfg;
    else
        bl_config_init(&c);
    c.port = port;
    bl_manager *m = NULL;
    int rc = bl_manager_new(tl_bl(t), &c, &m);
    cr_assert_eq(rc, BL_OK, "bl_manager_new: %s", bl_strerror(rc));
    return m;
}

void on_closed(bl_manager *m, void *data)
{
    (void)m;
    (*(int *)data)++;
}

void close_manager(tloop *t, bl_manager *m)
{
    int closed = 0;
    cr_assert_eq(bl_manager_close(m, on_closed, &closed), BL_OK);
    cr_assert(tl_wait(t, &closed, 1, 10000), "close callback never ran");
}

long long rs_lock_count(const redis_srv *s)
{
    redisReply *r = rs_cmd(s, "KEYS bid_lock:*");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    long long n = 0;
    for (size_t i = 0; i < r->elements; i++)
        n += strncmp(r->element[i]->str, "bid_lock::", 10) != 0;
    freeReplyObject(r);
    return n;
}

long long rs_calls(const redis_srv *s, const char *only)
{
    redisReply *r = rs_cmd(s, "INFO commandstats");
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    long long total = 0;
    for (const char *p = r->str; (p = strstr(p, "cmdstat_")); p++) {
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

long long rs_subscribers(const redis_srv *s, const char *channel)
{
    redisReply *n = rs_cmd(s, "PUBSUB NUMSUB %s", channel);
    cr_assert(n->type == REDIS_REPLY_ARRAY && n->elements == 2);
    long long v = n->element[1]->integer;
    freeReplyObject(n);
    return v;
}

/* ---- fixtures ------------------------------------------------------------------ */

tloop *T;
redis_srv srv;

void fx_loop_init(void)
{
    T = tl_new();
}

void fx_loop_fini(void)
{
    tl_free(T);
    T = NULL;
}

void fx_redis_init(void)
{
    rs_start(&srv, NULL);
}

void fx_redis_fini(void)
{
    rs_stop(&srv);
}

void fx_redis_loop_init(void)
{
    fx_redis_init();
    fx_loop_init();
}

void fx_redis_loop_fini(void)
{
    fx_loop_fini();
    fx_redis_fini();
}
