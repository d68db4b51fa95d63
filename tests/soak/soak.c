/* soak.c - a bounded soak run of bidlock against one redis-server (started
 * by tests/soak/run). Run it with tests/soak/run; see there.
 *
 * Keeps `inflight` requests going on `managers` managers on one libev loop,
 * each slot cycling through a mix: try-once, waiting, auto-extended holds,
 * done markers (and acquires that find them), cancels and bl_with_lock
 * sections, over a small pool of hot postings so they contend. Every
 * `kill_every` seconds it CLIENT KILLs the managers' connections (command
 * connections, and every other time the subscribers too).
 *
 * Pass criteria, printed at the end:
 *  - memory: resident set size (from /proc/self/statm, sampled each second)
 *    is flat after warm-up (the first 20% of the run, at least 3 s): the mean
 *    of the last quarter of the remaining samples exceeds the mean of their
 *    first quarter by less than 10% (or 512 KiB, whichever is larger);
 *  - every callback exactly once: an acquire/section callback for every
 *    request started, a release callback for every release started, at most
 *    one on_lost per lock;
 *  - counters, once drained: for every manager requests == acquired + busy
 *    + timeouts + cancelled + failed + done, attempts + direct_handoffs ==
 *    acquired + done +
 *    abandoned + conflicts + errors_attempt, held == 0, waiting == 0; and
 *    the sums match this program's own tally of callbacks by status;
 *  - it drains (every slot idle) within 30 s of the end, and every manager
 *    closes.
 * Exit status 0 = pass. Blocking is fine here: this is test code.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <hiredis/hiredis.h>

#include "bidlock.h"
#include "bidlock/libev.h"

enum mode { M_ONCE, M_WAIT, M_EXTEND, M_DONE, M_DONE_AGAIN, M_CANCEL, M_SECTION, M_COUNT };
static const char *const mode_names[M_COUNT] = {"once",      "wait",   "extend", "done",
                                                "done-again", "cancel", "section"};

typedef struct slot {
    int id;
    bl_manager *m;
    enum mode mode;
    int pending_acq, pending_rel, lost, restart;
    bl_lock *lock;
    ev_timer hold;   /* hold time, or when to cancel */
    int hold_armed;
} slot;

static struct {
    struct ev_loop *loop;
    bl_loop bl;
    bl_manager **m;
    int nm, inflight, seconds, kill_every;
    const char *unix_path;
    int port;
    slot *slots;
    int stopping;
    uint64_t seq;
    /* tally */
    uint64_t started, ended, by_status[16], rel_started, rel_ended, rel_by_status[16];
    uint64_t lost_calls, twice, kills;
    uint64_t recent_done[64];
    int nrecent;
    /* rss samples, KiB, one per second */
    long rss[4096];
    int nrss;
    double t0;
    char fail[1024];
} S;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void failf(const char *fmt, ...)
{
    size_t n = strlen(S.fail);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(S.fail + n, sizeof S.fail - n, fmt, ap);
    va_end(ap);
    n = strlen(S.fail);
    if (n + 2 < sizeof S.fail)
        strcat(S.fail, "; ");
}

static int st_idx(int status)
{
    return status <= 0 && status > -16 ? -status : 15;
}

static long rss_kib(void)
{
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static void next_cycle(slot *s);

static void released(bl_lock *lock, int status, void *data)
{
    (void)lock;
    slot *s = data;
    if (!s->pending_rel)
        S.twice++;
    s->pending_rel = 0;
    S.rel_ended++;
    S.rel_by_status[st_idx(status)]++;
    next_cycle(s);
}

static void release_now(slot *s)
{
    bl_lock *l = s->lock;
    s->lock = NULL;
    s->pending_rel = 1;
    S.rel_started++;
    int rc = s->mode == M_DONE ? bl_release_done(l, released, s) : bl_release(l, released, s);
    if (rc != BL_OK) {
        failf("release refused: %s", bl_strerror(rc));
        s->pending_rel = 0;
        S.rel_started--;
        next_cycle(s);
    }
}

static void hold_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    slot *s = w->data;
    s->hold_armed = 0;
    if (s->restart) { /* the pause after a failed request */
        s->restart = 0;
        next_cycle(s);
        return;
    }
    if (s->mode == M_SECTION) { /* the section's work is done */
        if (bl_section_end(s->lock, 0) != BL_OK)
            failf("bl_section_end refused");
        return;
    }
    if (s->pending_acq) { /* M_CANCEL: time to cancel */
        if (s->lock)
            bl_cancel(s->lock); /* BL_EINVAL if it is ending anyway: fine */
        return;
    }
    release_now(s);
}

static void hold(slot *s, double secs)
{
    s->hold_armed = 1;
    ev_timer_set(&s->hold, secs, 0);
    ev_timer_start(S.loop, &s->hold);
}

static double rnd01(void)
{
    return (double)rand() / ((double)RAND_MAX + 1.0);
}

static void acquired(bl_lock *lock, int status, void *data)
{
    slot *s = data;
    if (!s->pending_acq)
        S.twice++;
    s->pending_acq = 0;
    S.ended++;
    S.by_status[st_idx(status)]++;
    if (s->hold_armed) { /* cancel timer still armed */
        ev_timer_stop(S.loop, &s->hold);
        s->hold_armed = 0;
    }
    if (status != BL_OK) {
        s->lock = NULL;
        if (status == BL_ECONN || status == BL_EREDIS) {
            /* Like a real caller: pause a little before trying again, rather
             * than spinning on a connection that is being re-made. */
            s->restart = 1;
            hold(s, 0.01 + 0.02 * rnd01());
            return;
        }
        next_cycle(s);
        return;
    }
    s->lock = lock;
    switch (s->mode) {
    case M_EXTEND: hold(s, 0.1 + 0.5 * rnd01()); break;
    case M_DONE: hold(s, 0.0); break;
    default: hold(s, 0.02 * rnd01()); break;
    }
}

static void on_lost(bl_lock *lock, int status, void *data)
{
    (void)lock;
    (void)status;
    slot *s = data;
    S.lost_calls++;
    if (s->lost++)
        S.twice++;
}

static void section_fn(bl_lock *lock, void *data)
{
    slot *s = data;
    s->lock = lock;
    hold(s, 0.01 * rnd01());
}

static void section_done(int status, int section_status, void *data)
{
    (void)section_status;
    slot *s = data;
    if (!s->pending_acq)
        S.twice++;
    s->pending_acq = 0;
    S.ended++;
    /* A section that ran reports its release; count the outcome the same. */
    S.by_status[st_idx(status)]++;
    s->lock = NULL;
    if (s->hold_armed) {
        ev_timer_stop(S.loop, &s->hold);
        s->hold_armed = 0;
    }
    next_cycle(s);
}

/* The next request of a slot. Called from callbacks: never inside bidlock. */
static void next_cycle(slot *s)
{
    if (S.stopping)
        return;
    s->mode = (enum mode)(rand() % M_COUNT);
    s->lost = 0;
    s->m = S.m[rand() % S.nm];
    char posting[48];
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.ttl_ms = 5000;
    o.wait_ms = 0;
    snprintf(posting, sizeof posting, "hot%d", rand() % 40);
    /* Every request hears of a loss: a directly handed-off lock whose
     * takeover failed is lost with or without auto_extend (bidlock.h). */
    o.on_lost = on_lost;
    o.on_lost_data = s;
    switch (s->mode) {
    case M_ONCE: break;
    case M_WAIT: o.wait_ms = 50 + rand() % 950; break;
    case M_EXTEND:
        o.ttl_ms = 150 + rand() % 150;
        o.wait_ms = rand() % 300;
        o.auto_extend = 1;
        break;
    case M_DONE:
        snprintf(posting, sizeof posting, "d%llu", (unsigned long long)++S.seq);
        S.recent_done[S.nrecent++ % 64] = S.seq;
        break;
    case M_DONE_AGAIN:
        if (S.nrecent)
            snprintf(posting, sizeof posting, "d%llu",
                     (unsigned long long)S.recent_done[rand() % (S.nrecent < 64 ? S.nrecent : 64)]);
        o.wait_ms = rand() % 200;
        break;
    case M_CANCEL: o.wait_ms = 2000; break;
    case M_SECTION: o.wait_ms = 500; break;
    default: break;
    }
    s->pending_acq = 1;
    S.started++;
    int rc;
    s->lock = NULL;
    if (s->mode == M_SECTION) {
        rc = bl_with_lock(s->m, "soak", posting, &o, section_fn, section_done, s);
    } else {
        rc = bl_acquire(s->m, "soak", posting, &o, acquired, s, &s->lock);
        if (rc == BL_OK && s->mode == M_CANCEL)
            hold(s, 0.03 * rnd01());
    }
    if (rc != BL_OK) {
        failf("%s refused: %s (%s)", mode_names[s->mode], bl_strerror(rc),
              bl_manager_errmsg(s->m));
        s->pending_acq = 0;
        S.started--;
    }
}

static redisContext *admin_conn(void)
{
    struct timeval tv = {2, 0};
    redisContext *c = S.unix_path ? redisConnectUnixWithTimeout(S.unix_path, tv)
                                  : redisConnectWithTimeout("127.0.0.1", S.port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    return c;
}

static void kill_conns(void)
{
    redisContext *c = admin_conn();
    if (!c) {
        failf("cannot reach redis-server for CLIENT KILL");
        return;
    }
    redisReply *r = redisCommand(c, "CLIENT KILL TYPE normal");
    if (r)
        freeReplyObject(r);
    if (S.kills % 2 == 1) {
        r = redisCommand(c, "CLIENT KILL TYPE pubsub");
        if (r)
            freeReplyObject(r);
    }
    redisFree(c);
    S.kills++;
}

static void totals(bl_stats *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < S.nm; i++) {
        bl_stats s;
        bl_manager_stats(S.m[i], &s);
        uint64_t *a = (uint64_t *)t, *b = (uint64_t *)&s;
        for (size_t k = 0; k < sizeof s / sizeof(uint64_t); k++)
            a[k] += b[k];
    }
}

static void progress(double t)
{
    bl_stats st;
    totals(&st);
    int busy = 0;
    for (int i = 0; i < S.inflight; i++)
        busy += S.slots[i].pending_acq || S.slots[i].pending_rel || S.slots[i].lock;
    fprintf(stderr,
            "soak: t=%3.0fs rss=%ld KiB active=%d requests=%llu acquired=%llu busy=%llu "
            "timeouts=%llu cancelled=%llu failed=%llu done=%llu lost=%llu reconnects=%llu "
            "kills=%llu\n",
            t, S.nrss ? S.rss[S.nrss - 1] : rss_kib(), busy, (unsigned long long)st.requests,
            (unsigned long long)st.acquired, (unsigned long long)st.busy,
            (unsigned long long)st.timeouts, (unsigned long long)st.cancelled,
            (unsigned long long)st.failed, (unsigned long long)st.done,
            (unsigned long long)st.lost, (unsigned long long)st.reconnects,
            (unsigned long long)S.kills);
}

static double tick_last_kill, tick_last_progress;

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    double t = now_s() - S.t0;
    if (S.nrss < (int)(sizeof S.rss / sizeof S.rss[0]))
        S.rss[S.nrss++] = rss_kib();
    if (S.kill_every > 0 && t - tick_last_kill >= S.kill_every) {
        tick_last_kill = t;
        kill_conns();
    }
    if (t - tick_last_progress >= 5) {
        tick_last_progress = t;
        progress(t);
    }
    if (t >= S.seconds) {
        S.stopping = 1;
        ev_timer_stop(loop, w);
        ev_break(loop, EVBREAK_ONE);
    }
}

static int drained(void)
{
    for (int i = 0; i < S.inflight; i++) {
        slot *s = &S.slots[i];
        if (s->pending_acq || s->pending_rel)
            return 0;
        if (s->restart && s->hold_armed) {
            ev_timer_stop(S.loop, &s->hold);
            s->hold_armed = 0;
            s->restart = 0;
        }
        if (s->lock && !s->hold_armed)
            return 0;
        if (s->lock && s->hold_armed) {
            /* holding: end it now */
            ev_timer_stop(S.loop, &s->hold);
            ev_feed_event(S.loop, &s->hold, EV_TIMER);
            return 0;
        }
    }
    return 1;
}

static void check_memory(void)
{
    int warm = S.nrss / 5 > 3 ? S.nrss / 5 : 3;
    int n = S.nrss - warm;
    if (n < 4) {
        failf("too few memory samples (%d)", S.nrss);
        return;
    }
    int q = n / 4;
    double first = 0, last = 0;
    for (int i = 0; i < q; i++) {
        first += (double)S.rss[warm + i];
        last += (double)S.rss[S.nrss - q + i];
    }
    first /= q;
    last /= q;
    double limit = first * 1.10 > first + 512 ? first * 1.10 : first + 512;
    fprintf(stderr, "soak: rss after warm-up: first quarter %.0f KiB, last quarter %.0f KiB "
                    "(limit %.0f KiB)\n", first, last, limit);
    if (last > limit)
        failf("resident memory grew from %.0f KiB to %.0f KiB", first, last);
}

static void check_counters(void)
{
    bl_stats t;
    totals(&t);
    for (int i = 0; i < S.nm; i++) {
        bl_stats s;
        bl_manager_stats(S.m[i], &s);
        if (s.requests != s.acquired + s.busy + s.timeouts + s.cancelled + s.failed + s.done)
            failf("manager %d: requests %llu != acquired+busy+timeouts+cancelled+failed+done %llu",
                  i, (unsigned long long)s.requests,
                  (unsigned long long)(s.acquired + s.busy + s.timeouts + s.cancelled + s.failed +
                                       s.done));
        if (s.attempts + s.direct_handoffs != s.acquired + s.done + s.abandoned + s.conflicts + s.errors_attempt)
            failf("manager %d: attempts %llu != acquired+done+abandoned+conflicts+errors %llu", i,
                  (unsigned long long)s.attempts,
                  (unsigned long long)(s.acquired + s.done + s.abandoned + s.conflicts +
                                       s.errors_attempt));
        if (s.held || s.waiting)
            failf("manager %d: held %llu, waiting %llu after draining", i,
                  (unsigned long long)s.held, (unsigned long long)s.waiting);
    }
    if (S.twice)
        failf("%llu callbacks came twice", (unsigned long long)S.twice);
    if (S.started != S.ended)
        failf("%llu requests started, %llu ended", (unsigned long long)S.started,
              (unsigned long long)S.ended);
    if (S.rel_started != S.rel_ended)
        failf("%llu releases started, %llu ended", (unsigned long long)S.rel_started,
              (unsigned long long)S.rel_ended);
    if (t.requests != S.started)
        failf("managers count %llu requests, we started %llu", (unsigned long long)t.requests,
              (unsigned long long)S.started);
    /* Acquire callbacks by status (sections report their release status
     * when they ran, so compare the request-ending ones only). */
    if (t.busy != S.by_status[st_idx(BL_EBUSY)] || t.timeouts != S.by_status[st_idx(BL_ETIMEDOUT)] ||
        t.done != S.by_status[st_idx(BL_EDONE)])
        failf("busy/timeouts/done: managers %llu/%llu/%llu, callbacks %llu/%llu/%llu",
              (unsigned long long)t.busy, (unsigned long long)t.timeouts,
              (unsigned long long)t.done, (unsigned long long)S.by_status[st_idx(BL_EBUSY)],
              (unsigned long long)S.by_status[st_idx(BL_ETIMEDOUT)],
              (unsigned long long)S.by_status[st_idx(BL_EDONE)]);
    if (t.lost != S.lost_calls)
        failf("lost: managers %llu, on_lost calls %llu", (unsigned long long)t.lost,
              (unsigned long long)S.lost_calls);
    if (t.acquired == 0)
        failf("nothing was ever acquired");
    fprintf(stderr,
            "soak: %llu requests: acquired %llu, busy %llu, timeouts %llu, cancelled %llu, "
            "failed %llu, done %llu; %llu releases (%llu not held, %llu errors); %llu lost; "
            "%llu reconnects after %llu kills\n",
            (unsigned long long)t.requests, (unsigned long long)t.acquired,
            (unsigned long long)t.busy, (unsigned long long)t.timeouts,
            (unsigned long long)t.cancelled, (unsigned long long)t.failed,
            (unsigned long long)t.done, (unsigned long long)(t.releases + t.not_held +
                                                             t.release_errors),
            (unsigned long long)t.not_held, (unsigned long long)t.release_errors,
            (unsigned long long)t.lost, (unsigned long long)t.reconnects,
            (unsigned long long)S.kills);
}

static void pulse_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

static void closed(bl_manager *m, void *data)
{
    (void)m;
    (*(int *)data)++;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a connection the server closed: an error, not death */
    S.seconds = 600;
    S.inflight = 100;
    S.nm = 4;
    S.kill_every = 5;
    static const struct option lo[] = {{"seconds", 1, 0, 's'}, {"inflight", 1, 0, 'i'},
                                       {"managers", 1, 0, 'm'}, {"kill-every", 1, 0, 'k'},
                                       {"unix", 1, 0, 'u'},     {"port", 1, 0, 'p'},
                                       {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 's': S.seconds = atoi(optarg); break;
        case 'i': S.inflight = atoi(optarg); break;
        case 'm': S.nm = atoi(optarg); break;
        case 'k': S.kill_every = atoi(optarg); break;
        case 'u': S.unix_path = optarg; break;
        case 'p': S.port = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: soak (--unix PATH | --port N) [--seconds 600] "
                            "[--inflight 100] [--managers 4] [--kill-every 5]\n");
            return 2;
        }
    }
    if ((!S.unix_path && !S.port) || S.seconds < 5 || S.inflight < 1 || S.nm < 1) {
        fprintf(stderr, "soak: need --unix or --port, --seconds >= 5\n");
        return 2;
    }
    srand((unsigned)time(NULL));
    S.loop = ev_loop_new(EVFLAG_AUTO);
    bl_libev_loop(&S.bl, S.loop);
    bl_config cfg;
    bl_config_init(&cfg);
    if (S.unix_path)
        cfg.unix_path = S.unix_path;
    else
        cfg.port = S.port;
    cfg.reconnect_initial_ms = 20;
    cfg.backoff_initial_ms = 10;
    cfg.backoff_max_ms = 200;
    cfg.command_timeout_ms = 2000;
    cfg.done_ttl_ms = 3000; /* markers expire: the server's memory stays flat too */
    S.m = calloc((size_t)S.nm, sizeof *S.m);
    S.slots = calloc((size_t)S.inflight, sizeof *S.slots);
    for (int i = 0; i < S.nm; i++)
        if (bl_manager_new(&S.bl, &cfg, &S.m[i]) != BL_OK) {
            printf("soak: FAIL: bl_manager_new\n");
            return 1;
        }
    S.t0 = now_s();
    for (int i = 0; i < S.inflight; i++) {
        slot *s = &S.slots[i];
        s->id = i;
        ev_timer_init(&s->hold, hold_cb, 0, 0);
        s->hold.data = s;
        next_cycle(s);
    }
    ev_timer tick;
    ev_timer_init(&tick, tick_cb, 1.0, 1.0);
    ev_timer_start(S.loop, &tick);
    fprintf(stderr, "soak: %d s, %d requests in flight on %d managers, CLIENT KILL every %d s\n",
            S.seconds, S.inflight, S.nm, S.kill_every);
    ev_run(S.loop, 0);

    /* Drain: no new cycles; held locks are released now. The pulse keeps
     * each turn of the loop short. */
    ev_timer pulse;
    ev_timer_init(&pulse, pulse_cb, 0.05, 0.05);
    ev_timer_start(S.loop, &pulse);
    double end = now_s() + 30;
    while (!drained() && now_s() < end)
        ev_run(S.loop, EVRUN_ONCE);
    if (!drained()) {
        failf("did not drain within 30 s");
        for (int i = 0, shown = 0; i < S.inflight && shown < 5; i++) {
            slot *x = &S.slots[i];
            if (x->pending_acq || x->pending_rel || x->lock) {
                failf("slot %d: %s acq=%d rel=%d lock=%s timer=%d/%d", i, mode_names[x->mode],
                      x->pending_acq, x->pending_rel, x->lock ? "yes" : "no", x->hold_armed,
                      ev_is_active(&x->hold));
                shown++;
            }
        }
    }
    progress(now_s() - S.t0);
    check_counters();
    check_memory();
    int nclosed = 0;
    for (int i = 0; i < S.nm; i++)
        bl_manager_close(S.m[i], closed, &nclosed);
    end = now_s() + 15;
    while (nclosed < S.nm && now_s() < end)
        ev_run(S.loop, EVRUN_ONCE);
    ev_timer_stop(S.loop, &pulse);
    if (nclosed < S.nm)
        failf("%d of %d managers closed", nclosed, S.nm);
    ev_loop_destroy(S.loop);
    free(S.m);
    free(S.slots);
    if (S.fail[0]) {
        printf("soak: FAIL: %s\n", S.fail);
        return 1;
    }
    printf("soak: PASS (%d s, %llu requests, %d memory samples)\n", S.seconds,
           (unsigned long long)S.started, S.nrss);
    return 0;
}
