/* loop.c - the libev loop every workload runs on, and the few blocking-ish
 * helpers around it (run until a flag is set, a manager that is connected).
 *
 * Why the select backend: libev's epoll and poll backends never block for
 * less than 1 ms (backend_mintime) and round timeouts up to whole ms, so the
 * 0.2 ms sleep of W4 would last >= 1 ms and the 1 ms hold of W3 drifts up
 * to ~1.1 ms. select takes a timeval (us). A workload watches 2-3 fds, where
 * select costs the same as epoll. BIDLOCK_BENCH_BACKEND=epoll|auto overrides
 * it to compare. The kernel also lets a sleeping timer fire up to 50 us late
 * (timer slack); the bench asks for 1 ns so holds and sleeps last what they
 * say. */
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include <ev.h>

#include "bench_loop.h"
#include "bidlock/libev.h"

const char *bench_loop_backend(void)
{
    const char *b = getenv("BIDLOCK_BENCH_BACKEND");
    if (b && (strcmp(b, "epoll") == 0 || strcmp(b, "auto") == 0 || strcmp(b, "poll") == 0))
        return b;
    return "select";
}

struct ev_loop *bench_loop_new(void)
{
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    const char *b = bench_loop_backend();
    unsigned flags = strcmp(b, "epoll") == 0  ? EVBACKEND_EPOLL
                     : strcmp(b, "poll") == 0 ? EVBACKEND_POLL
                     : strcmp(b, "auto") == 0 ? EVFLAG_AUTO
                                              : EVBACKEND_SELECT;
    struct ev_loop *loop = ev_loop_new(flags);
    return loop ? loop : ev_loop_new(EVFLAG_AUTO);
}

static void expire_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    *(int *)w->data = 1;
}

int bench_run_until(struct ev_loop *loop, const int *flag, double timeout_s)
{
    int expired = 0;
    ev_timer wd;
    ev_timer_init(&wd, expire_cb, timeout_s, 0.);
    wd.data = &expired;
    ev_timer_start(loop, &wd);
    while (!*flag && !expired)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &wd);
    return *flag != 0;
}

typedef struct ready {
    int done, status;
} ready;

static void health_cb(bl_manager *m, const bl_health *h, void *data)
{
    (void)m;
    ready *r = data;
    r->status = h->status;
    r->done = 1;
}

static void closed_cb(bl_manager *m, void *data)
{
    (void)m;
    *(int *)data = 1;
}

void bench_close_manager(struct ev_loop *loop, bl_manager *m)
{
    int closed = 0;
    if (bl_manager_close(m, closed_cb, &closed) == BL_OK)
        bench_run_until(loop, &closed, 10.0);
}

bl_manager *bench_manager(struct ev_loop *loop, bl_loop *bl, const bl_config *cfg)
{
    bl_libev_loop(bl, loop);
    bl_manager *m = NULL;
    if (bl_manager_new(bl, cfg, &m) != BL_OK)
        return NULL;
    /* PING answers after the SCRIPT LOADs the manager pipelined at connect:
     * from here on every request runs by EVALSHA. */
    ready r = {0, 0};
    if (bl_health_check(m, health_cb, &r) != BL_OK || !bench_run_until(loop, &r.done, 10.0) ||
        r.status != BL_OK) {
        bench_close_manager(loop, m);
        return NULL;
    }
    return m;
}
