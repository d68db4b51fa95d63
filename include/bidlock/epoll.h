/* bidlock/epoll.h - run bidlock from your own epoll loop.
 *
 * Why this shape: a program on plain epoll already owns its loop - its
 * epoll_wait, its fds, its timeouts - and a library must not take it over
 * or make it juggle a changing set of sockets and deadlines. So bidlock
 * lives inside the caller's loop, as c-ares and curl's multi_socket do, but
 * with less to wire up: it keeps its Redis connections in an inner epoll fd
 * of its own, plus one timerfd for all its timers, and hands you ONE fd.
 * Add it to your epoll set with EPOLLIN (level-triggered, no EPOLLET) and
 * call bl_epoll_dispatch() whenever it is readable. There is no timeout to
 * compute: the fd turns readable when a connection has events or a timer
 * is due. (It is an epoll fd, so poll() and select() can watch it too.)
 *
 *   bl_epoll *ep = bl_epoll_new();
 *   bl_loop bl;
 *   bl_epoll_loop(&bl, ep);
 *   bl_manager_new(&bl, &cfg, &m);   // bl is copied; it may go out of scope
 *
 *   struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
 *   epoll_ctl(my_epfd, EPOLL_CTL_ADD, bl_epoll_fd(ep), &ev);
 *   for (;;) {                       // your loop, your other fds
 *       int n = epoll_wait(my_epfd, evs, 16, -1);
 *       for (int i = 0; i < n; i++)
 *           if (evs[i].data.ptr == NULL)
 *               bl_epoll_dispatch(ep);   // bidlock's callbacks run here
 *           else
 *               my_handler(evs[i]);
 *   }
 *   // after every manager's close callback has run:
 *   epoll_ctl(my_epfd, EPOLL_CTL_DEL, bl_epoll_fd(ep), NULL);
 *   bl_epoll_free(ep);
 *
 * Header-only and Linux-only (epoll, timerfd); links nothing beyond libc
 * and hiredis: cc app.c $(pkg-config --cflags --libs bidlock).
 *
 * Single-threaded: every function is called on the thread that runs your
 * loop. The bl_epoll must outlive every manager created on it. A forked
 * child creates its own bl_epoll; it must not dispatch its parent's.
 *
 * Inside, two rules shape the code:
 *  - hiredis calls cleanup from inside HandleRead/HandleWrite (and from any
 *    redisAsyncFree), while later entries of the current batch may still
 *    point at that connection. Its fd leaves the epoll set at once (hiredis
 *    closes it right after); its state is freed after the batch.
 *  - timer_start cannot fail, so timer_new reserves the timer's heap slot. */
#ifndef BIDLOCK_EPOLL_H
#define BIDLOCK_EPOLL_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/async.h>

#include "loop.h"

#ifndef CLOCK_MONOTONIC
#error "bidlock/epoll.h needs POSIX clocks: compile with -D_POSIX_C_SOURCE=200809L"
#endif

typedef struct bl_epoll bl_epoll;

/* ---- the API ------------------------------------------------------------------ */

/* A new bl_epoll (an inner epoll fd and a timerfd). NULL (errno set) if a
 * system call or malloc fails. */
static inline bl_epoll *bl_epoll_new(void);
/* The one fd to watch for EPOLLIN. It stays bidlock's: do not read it or
 * close it. */
static inline int bl_epoll_fd(const bl_epoll *ep);
/* Fill *out for `ep`. Always succeeds. */
static inline void bl_epoll_loop(bl_loop *out, bl_epoll *ep);
/* Handle what is ready, without blocking: connection events (at most one
 * batch of 64; if more were ready the fd stays readable and your loop
 * comes back), then the timers that are due; re-arms the timerfd for the
 * next one. Calling it when the fd is not readable is harmless. Returns how
 * many callbacks ran, or -1 (errno set) if epoll_wait failed. */
static inline int bl_epoll_dispatch(bl_epoll *ep);
/* 1 while a connection or an armed timer is left, else 0: a loop that
 * should end when bidlock has nothing left to do stops at 0. */
static inline int bl_epoll_alive(const bl_epoll *ep);
/* Release ep and its fds. Close every manager (and wait for its close
 * callback) first; connections and timers still alive are not freed.
 * Remove bl_epoll_fd(ep) from your epoll set before. NULL is ignored. */
static inline void bl_epoll_free(bl_epoll *ep);

/* ---- inside ------------------------------------------------------------------- */

#define BL_EPOLL_BATCH 64
#define BL_EPOLL_UNARMED SIZE_MAX /* a timer's slot when not in the heap */
#define BL_EPOLL_NEVER UINT64_MAX /* the timerfd's due time when disarmed */

typedef struct bl_epoll_conn {
    bl_epoll *ep;
    redisAsyncContext *ac; /* NULL once hiredis has let go (cleanup) */
    bl_io_cb io_cb;        /* a plain fd watch (bl_io) instead of hiredis */
    void *io_data;
    struct bl_epoll_conn *next_dead;
    int fd;
    int dead;
    uint32_t want;  /* EPOLLIN | EPOLLOUT, as hiredis asked */
    uint32_t armed; /* what the epoll set holds for fd; 0: not in it */
} bl_epoll_conn;

/* bl_timer is opaque to the engine; on epoll it is this. */
typedef struct bl_epoll_timer {
    bl_epoll *ep;
    bl_timer_cb cb;
    void *data;
    uint64_t due, seq; /* heap order: due, then arming order */
    size_t slot;       /* index in ep->heap, or BL_EPOLL_UNARMED */
} bl_epoll_timer;

struct bl_epoll {
    int epfd;              /* the fd the caller watches: conns + tfd */
    int tfd;               /* timerfd, in epfd with data.ptr NULL */
    int depth;             /* dispatches running (a callback may nest one) */
    size_t conns;          /* live connections */
    bl_epoll_conn *dead;   /* released during a dispatch, freed after it */
    bl_epoll_timer **heap; /* armed timers, a binary min-heap */
    size_t n, cap, ntimers;
    uint64_t seq;
    uint64_t armed_due; /* what tfd is set to (ms), or BL_EPOLL_NEVER */
};

static inline uint64_t bl_epoll_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- hiredis attach ------------------------------------------------------------- */

/* Make the epoll set match c->want. No way to report a failure from
 * hiredis's hooks: only the first ADD can fail (no memory, too many
 * watches); the connect then never completes and the engine's connect
 * deadline drops it and retries. */
static inline void bl_epoll_conn_want(bl_epoll_conn *c, uint32_t want)
{
    c->want = want;
    if (c->dead)
        want = 0;
    if (want == c->armed)
        return;
    if (!want) {
        epoll_ctl(c->ep->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->armed = 0;
        return;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = want;
    ev.data.ptr = c;
    if (epoll_ctl(c->ep->epfd, c->armed ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) == 0)
        c->armed = want;
}

static inline void bl_epoll_add_read(void *p)
{
    bl_epoll_conn *c = (bl_epoll_conn *)p;
    bl_epoll_conn_want(c, c->want | EPOLLIN);
}

static inline void bl_epoll_del_read(void *p)
{
    bl_epoll_conn *c = (bl_epoll_conn *)p;
    bl_epoll_conn_want(c, c->want & ~(uint32_t)EPOLLIN);
}

static inline void bl_epoll_add_write(void *p)
{
    bl_epoll_conn *c = (bl_epoll_conn *)p;
    bl_epoll_conn_want(c, c->want | EPOLLOUT);
}

static inline void bl_epoll_del_write(void *p)
{
    bl_epoll_conn *c = (bl_epoll_conn *)p;
    bl_epoll_conn_want(c, c->want & ~(uint32_t)EPOLLOUT);
}

/* Out of the epoll set now (hiredis closes the fd right after); freed at
 * once outside a dispatch, else when the batch is done. */
static inline void bl_epoll_cleanup(void *p)
{
    bl_epoll_conn *c = (bl_epoll_conn *)p;
    bl_epoll *ep = c->ep;
    bl_epoll_conn_want(c, 0);
    c->dead = 1;
    c->ac = NULL;
    ep->conns--;
    if (ep->depth) {
        c->next_dead = ep->dead;
        ep->dead = c;
    } else {
        free(c);
    }
}

static inline int bl_epoll_attach(void *impl, struct redisAsyncContext *ac)
{
    if (ac->ev.data)
        return -1;
    bl_epoll_conn *c = (bl_epoll_conn *)calloc(1, sizeof *c);
    if (!c)
        return -1;
    c->ep = (bl_epoll *)impl;
    c->ac = ac;
    c->fd = ac->c.fd;
    c->ep->conns++;
    ac->ev.data = c;
    ac->ev.addRead = bl_epoll_add_read;
    ac->ev.delRead = bl_epoll_del_read;
    ac->ev.addWrite = bl_epoll_add_write;
    ac->ev.delWrite = bl_epoll_del_write;
    ac->ev.cleanup = bl_epoll_cleanup;
    return 0;
}

/* ---- plain fd watches (bidlock's TLS relay): a bl_io is a bl_epoll_conn ---------- */

static inline bl_io *bl_epoll_io_new(void *impl, int fd, bl_io_cb cb, void *data)
{
    bl_epoll_conn *c = (bl_epoll_conn *)calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ep = (bl_epoll *)impl;
    c->fd = fd;
    c->io_cb = cb;
    c->io_data = data;
    c->ep->conns++;
    return (bl_io *)c;
}

static inline void bl_epoll_io_set(bl_io *io, int events)
{
    bl_epoll_conn_want((bl_epoll_conn *)io, ((events & BL_IO_READ) ? (uint32_t)EPOLLIN : 0) |
                                                ((events & BL_IO_WRITE) ? (uint32_t)EPOLLOUT : 0));
}

/* Like cleanup: out of the set now, freed after the batch. */
static inline void bl_epoll_io_free(bl_io *io)
{
    bl_epoll_cleanup(io);
}

/* An error or hang-up counts as ready for whatever hiredis asked, so it
 * reads the error: a refused connect is ERR|HUP|OUT with write interest,
 * and HandleWrite reads SO_ERROR and reports it to the connect callback. */
static inline int bl_epoll_conn_event(bl_epoll_conn *c, uint32_t e)
{
    uint32_t ready = 0;
    if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
        ready |= EPOLLIN;
    if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        ready |= EPOLLOUT;
    if (c->dead || !(ready & c->want))
        return 0;
    if (c->io_cb) { /* a plain watch: an error or hang-up is both */
        int both = (e & (EPOLLERR | EPOLLHUP)) != 0;
        c->io_cb(c->io_data, ((ready & EPOLLIN) || both ? BL_IO_READ : 0) |
                                 ((ready & EPOLLOUT) || both ? BL_IO_WRITE : 0));
        return 1;
    }
    ready &= c->want;
    if (ready & EPOLLIN)
        redisAsyncHandleRead(c->ac);
    if (!c->dead && (ready & EPOLLOUT) && (c->want & EPOLLOUT))
        redisAsyncHandleWrite(c->ac);
    return 1;
}

/* ---- timers: a binary min-heap, and the timerfd set to its top ------------------- */

static inline int bl_epoll_before(const bl_epoll_timer *a, const bl_epoll_timer *b)
{
    return a->due != b->due ? a->due < b->due : a->seq < b->seq;
}

static inline void bl_epoll_place(bl_epoll *ep, bl_epoll_timer *t, size_t i)
{
    ep->heap[i] = t;
    t->slot = i;
}

static inline void bl_epoll_sift_up(bl_epoll *ep, size_t i)
{
    bl_epoll_timer *t = ep->heap[i];
    while (i > 0 && bl_epoll_before(t, ep->heap[(i - 1) / 2])) {
        bl_epoll_place(ep, ep->heap[(i - 1) / 2], i);
        i = (i - 1) / 2;
    }
    bl_epoll_place(ep, t, i);
}

static inline void bl_epoll_sift_down(bl_epoll *ep, size_t i)
{
    bl_epoll_timer *t = ep->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= ep->n)
            break;
        if (c + 1 < ep->n && bl_epoll_before(ep->heap[c + 1], ep->heap[c]))
            c++;
        if (!bl_epoll_before(ep->heap[c], t))
            break;
        bl_epoll_place(ep, ep->heap[c], i);
        i = c;
    }
    bl_epoll_place(ep, t, i);
}

static inline void bl_epoll_heap_remove(bl_epoll *ep, bl_epoll_timer *t)
{
    size_t i = t->slot;
    t->slot = BL_EPOLL_UNARMED;
    bl_epoll_timer *last = ep->heap[--ep->n];
    if (i < ep->n) {
        bl_epoll_place(ep, last, i);
        bl_epoll_sift_down(ep, i);
        bl_epoll_sift_up(ep, last->slot);
    }
}

/* Set the timerfd to the earliest timer (absolute, on the same clock), or
 * disarm it. During a dispatch this waits for its end: one syscall per
 * dispatch at most, and only when the earliest due time changed. */
static inline void bl_epoll_sync_timerfd(bl_epoll *ep)
{
    if (ep->depth)
        return;
    uint64_t due = ep->n ? ep->heap[0]->due : BL_EPOLL_NEVER;
    if (due == ep->armed_due)
        return;
    struct itimerspec its;
    memset(&its, 0, sizeof its); /* all zero: disarm */
    if (due != BL_EPOLL_NEVER) {
        its.it_value.tv_sec = (time_t)(due / 1000u);
        its.it_value.tv_nsec = (long)(due % 1000u) * 1000000L;
        if (!its.it_value.tv_sec && !its.it_value.tv_nsec)
            its.it_value.tv_nsec = 1; /* zero would disarm */
    }
    /* Cannot fail with a valid fd and value. A time already past expires
     * at once, so a timer due now makes the fd readable. */
    timerfd_settime(ep->tfd, TFD_TIMER_ABSTIME, &its, NULL);
    ep->armed_due = due;
}

static inline bl_timer *bl_epoll_timer_new(void *impl, bl_timer_cb cb, void *data)
{
    bl_epoll *ep = (bl_epoll *)impl;
    if (ep->ntimers == ep->cap) {
        size_t cap = ep->cap ? 2 * ep->cap : 16;
        bl_epoll_timer **heap = (bl_epoll_timer **)realloc(ep->heap, cap * sizeof *heap);
        if (!heap)
            return NULL;
        ep->heap = heap;
        ep->cap = cap;
    }
    bl_epoll_timer *t = (bl_epoll_timer *)calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ep = ep;
    t->cb = cb;
    t->data = data;
    t->slot = BL_EPOLL_UNARMED;
    ep->ntimers++;
    return (bl_timer *)t;
}

/* Due now + after_ms; runs in a later dispatch, never from here. */
static inline void bl_epoll_timer_start(bl_timer *bt, uint64_t after_ms)
{
    bl_epoll_timer *t = (bl_epoll_timer *)bt;
    bl_epoll *ep = t->ep;
    if (t->slot != BL_EPOLL_UNARMED)
        bl_epoll_heap_remove(ep, t);
    uint64_t now = bl_epoll_clock_ms();
    t->due = after_ms >= BL_EPOLL_NEVER - now ? BL_EPOLL_NEVER - 1 : now + after_ms;
    t->seq = ep->seq++;
    bl_epoll_place(ep, t, ep->n++);
    bl_epoll_sift_up(ep, t->slot);
    bl_epoll_sync_timerfd(ep);
}

static inline void bl_epoll_timer_stop(bl_timer *bt)
{
    bl_epoll_timer *t = (bl_epoll_timer *)bt;
    if (t->slot != BL_EPOLL_UNARMED) {
        bl_epoll_heap_remove(t->ep, t);
        bl_epoll_sync_timerfd(t->ep);
    }
}

static inline void bl_epoll_timer_free(bl_timer *bt)
{
    bl_epoll_timer *t = (bl_epoll_timer *)bt;
    bl_epoll_timer_stop(bt);
    t->ep->ntimers--;
    free(t);
}

/* Timers armed while this runs (seq >= limit) wait for the next dispatch,
 * so a callback that re-arms with 0 cannot starve the connections. */
static inline int bl_epoll_run_timers(bl_epoll *ep)
{
    uint64_t now = bl_epoll_clock_ms(), limit = ep->seq;
    int ran = 0;
    while (ep->n && ep->heap[0]->due <= now && ep->heap[0]->seq < limit) {
        bl_epoll_timer *t = ep->heap[0];
        bl_epoll_heap_remove(ep, t);
        t->cb(t->data); /* may free t */
        ran++;
    }
    return ran;
}

static inline uint64_t bl_epoll_now_ms(void *impl)
{
    (void)impl;
    return bl_epoll_clock_ms();
}

/* ---- the API, defined ----------------------------------------------------------- */

static inline bl_epoll *bl_epoll_new(void)
{
    bl_epoll *ep = (bl_epoll *)calloc(1, sizeof *ep);
    if (!ep)
        return NULL;
    ep->armed_due = BL_EPOLL_NEVER;
    ep->epfd = epoll_create1(EPOLL_CLOEXEC);
    ep->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL; /* the timerfd; connections have their own pointer */
    if (ep->epfd < 0 || ep->tfd < 0 || epoll_ctl(ep->epfd, EPOLL_CTL_ADD, ep->tfd, &ev) != 0) {
        int e = errno;
        if (ep->epfd >= 0)
            close(ep->epfd);
        if (ep->tfd >= 0)
            close(ep->tfd);
        free(ep);
        errno = e;
        return NULL;
    }
    return ep;
}

static inline int bl_epoll_fd(const bl_epoll *ep)
{
    return ep->epfd;
}

static inline void bl_epoll_loop(bl_loop *out, bl_epoll *ep)
{
    out->impl = ep;
    out->attach = bl_epoll_attach;
    out->timer_new = bl_epoll_timer_new;
    out->timer_start = bl_epoll_timer_start;
    out->timer_stop = bl_epoll_timer_stop;
    out->timer_free = bl_epoll_timer_free;
    out->now_ms = bl_epoll_now_ms;
    out->io_new = bl_epoll_io_new;
    out->io_set = bl_epoll_io_set;
    out->io_free = bl_epoll_io_free;
}

static inline int bl_epoll_dispatch(bl_epoll *ep)
{
    struct epoll_event evs[BL_EPOLL_BATCH];
    int n = epoll_wait(ep->epfd, evs, BL_EPOLL_BATCH, 0);
    if (n < 0) {
        if (errno != EINTR)
            return -1;
        n = 0;
    }
    int ran = 0;
    ep->depth++;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.ptr) {
            ran += bl_epoll_conn_event((bl_epoll_conn *)evs[i].data.ptr, evs[i].events);
            continue;
        }
        /* The timerfd expired, which disarmed it (one-shot): clear it, and
         * re-arm below for whatever is next. */
        uint64_t expirations;
        ssize_t got = read(ep->tfd, &expirations, sizeof expirations); /* or EAGAIN */
        (void)got;
        ep->armed_due = BL_EPOLL_NEVER;
    }
    ran += bl_epoll_run_timers(ep);
    if (--ep->depth == 0) {
        /* Nothing of this batch refers to a released connection any more. */
        while (ep->dead) {
            bl_epoll_conn *c = ep->dead;
            ep->dead = c->next_dead;
            free(c);
        }
        bl_epoll_sync_timerfd(ep);
    }
    return ran;
}

static inline int bl_epoll_alive(const bl_epoll *ep)
{
    return ep->conns > 0 || ep->n > 0;
}

static inline void bl_epoll_free(bl_epoll *ep)
{
    if (!ep)
        return;
    while (ep->dead) {
        bl_epoll_conn *c = ep->dead;
        ep->dead = c->next_dead;
        free(c);
    }
    close(ep->tfd);
    close(ep->epfd);
    free(ep->heap);
    free(ep);
}

#endif
