/* consumer.c - a program built against the INSTALLED packages (tests/package/run):
 *
 *   cc consumer.c $(pkg-config --cflags --libs bidlock) -lev            (libev)
 *   cc -DCONSUMER_LIBUV consumer.c $(pkg-config --cflags --libs bidlock libuv) (libuv)
 *   cc -DCONSUMER_EPOLL consumer.c $(pkg-config --cflags --libs bidlock) (epoll)
 *
 * Usage: consumer UNIX_SOCKET. Against a private redis-server on that
 * socket it walks one lock through the public API on its loop: manager A
 * acquires it (a fencing token > 0), manager B finds it busy, A releases it
 * done, B's next acquire ends BL_EDONE, A's metrics render as Prometheus
 * text. Prints "consumer: ok" and exits 0, or says which step failed and
 * exits 1. The library's version must be the header's. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bidlock.h>
#if defined(CONSUMER_EPOLL)
#include <bidlock/epoll.h>
#include <sys/epoll.h>
#elif defined(CONSUMER_LIBUV)
#include <bidlock/libuv.h>
#include <uv.h>
#else
#include <bidlock/libev.h>
#include <ev.h>
#endif

static bl_manager *ma, *mb;
static int open_managers, failed;
static bl_lock *held;

static void fail(const char *step, int status, const char *msg)
{
    fprintf(stderr, "consumer: %s: %s (%s) %s\n", step, bl_status_name(status),
            bl_strerror(status), msg ? msg : "");
    failed = 1;
}

static void closed(bl_manager *m, void *data)
{
    (void)m;
    (void)data;
    open_managers--;
}

static void finish(void)
{
    bl_manager_close(ma, closed, NULL);
    bl_manager_close(mb, closed, NULL);
}

static void check_metrics(void)
{
    bl_metrics mt;
    char text[16384];
    bl_manager_metrics(ma, &mt);
    size_t n = bl_metrics_prometheus(&mt, text, sizeof text);
    if (n >= sizeof text || !strstr(text, "\nbidlock_acquired_total 1\n") ||
        !strstr(text, "bidlock_acquire_seconds_bucket{le=\"+Inf\"} 1\n"))
        fail("metrics", BL_OK, "bidlock_acquired_total / _bucket{le=\"+Inf\"} not 1");
}

static void b_done(bl_lock *lock, int status, void *data)
{
    (void)data;
    if (status != BL_EDONE)
        fail("B acquires after the done release (want BL_EDONE)", status, bl_lock_errmsg(lock));
    check_metrics();
    finish();
}

static void a_released(bl_lock *lock, int status, void *data)
{
    (void)data;
    if (status != BL_OK) {
        fail("A releases done", status, bl_lock_errmsg(lock));
        finish();
        return;
    }
    if (bl_acquire(mb, "pkg", "posting-1", NULL, b_done, NULL, NULL) != BL_OK) {
        fail("B acquire", BL_EINVAL, bl_manager_errmsg(mb));
        finish();
    }
}

static void b_busy(bl_lock *lock, int status, void *data)
{
    (void)data;
    if (status != BL_EBUSY)
        fail("B tries once while A holds (want BL_EBUSY)", status, bl_lock_errmsg(lock));
    if (bl_release_done(held, a_released, NULL) != BL_OK) {
        fail("A release_done", BL_EINVAL, bl_manager_errmsg(ma));
        finish();
    }
}

static void a_acquired(bl_lock *lock, int status, void *data)
{
    (void)data;
    if (status != BL_OK || bl_lock_token(lock) == 0) {
        fail("A acquires (want BL_OK and a token)", status, bl_lock_errmsg(lock));
        finish();
        return;
    }
    held = lock;
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 0; /* try once */
    if (bl_acquire(mb, "pkg", "posting-1", &o, b_busy, NULL, NULL) != BL_OK) {
        fail("B acquire", BL_EINVAL, bl_manager_errmsg(mb));
        finish();
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: consumer UNIX_SOCKET\n");
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    int num = 0;
    if (strcmp(bl_version(&num), BIDLOCK_VERSION) != 0 || num != BIDLOCK_VERSION_NUM) {
        fprintf(stderr, "consumer: library %s, header %s\n", bl_version(NULL), BIDLOCK_VERSION);
        return 1;
    }
    bl_loop bl;
#if defined(CONSUMER_EPOLL)
    bl_epoll *ep = bl_epoll_new();
    if (!ep)
        return 1;
    bl_epoll_loop(&bl, ep);
#elif defined(CONSUMER_LIBUV)
    uv_loop_t *loop = uv_default_loop();
    bl_libuv_loop(&bl, loop);
#else
    struct ev_loop *loop = EV_DEFAULT;
    bl_libev_loop(&bl, loop);
#endif
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.backend = BL_BACKEND_REDIS;
    cfg.unix_path = argv[1];
    cfg.key_prefix = "pkgtest";
    if (bl_manager_new(&bl, &cfg, &ma) != BL_OK || bl_manager_new(&bl, &cfg, &mb) != BL_OK) {
        fprintf(stderr, "consumer: bl_manager_new failed\n");
        return 1;
    }
    open_managers = 2;
    if (bl_acquire(ma, "pkg", "posting-1", NULL, a_acquired, NULL, NULL) != BL_OK) {
        fail("A acquire", BL_EINVAL, bl_manager_errmsg(ma));
        finish();
    }
#if defined(CONSUMER_EPOLL)
    /* The program's own epoll set, with bidlock's one fd in it (README). */
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, bl_epoll_fd(ep), &ev) < 0)
        return 1;
    while (open_managers > 0) {
        struct epoll_event got;
        if (epoll_wait(epfd, &got, 1, -1) < 0 || bl_epoll_dispatch(ep) < 0)
            return 1;
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, bl_epoll_fd(ep), NULL);
    bl_epoll_free(ep);
    printf("consumer (epoll): %s\n", failed ? "FAILED" : "ok");
#elif defined(CONSUMER_LIBUV)
    uv_run(loop, UV_RUN_DEFAULT); /* returns when the managers' handles are closed */
    if (uv_loop_close(loop) != 0) {
        fprintf(stderr, "consumer: uv_loop_close: handles left open\n");
        failed = 1;
    }
    printf("consumer (libuv): %s\n", failed ? "FAILED" : "ok");
#else
    ev_run(loop, 0);
    ev_loop_destroy(loop);
    printf("consumer (libev): %s\n", failed ? "FAILED" : "ok");
#endif
    return failed || open_managers ? 1 : 0;
}
