/* epoll.c - a minimal loop on epoll, and bidlock on it. hiredis ships no
 * epoll adapter, so this file is both the loop and the attach.
 *
 * Two rules shape it:
 *  - hiredis calls cleanup from inside HandleRead/HandleWrite (and from any
 *    redisAsyncFree), while later entries of the current epoll_wait batch
 *    may still point at that connection's watch. A released watch is only
 *    marked dead, its events are ignored, and it is freed after the batch.
 *  - timer_start cannot fail, so timer_new reserves the timer's heap slot.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <hiredis/async.h>

#include "bidlock/epoll.h"
#include "clock.h"

enum { BATCH = 64 };
#define UNARMED SIZE_MAX

struct bl_epoll_watch {
    bl_epoll *ep;
    bl_epoll_watch *next; /* ep->watches */
    int fd;
    unsigned want;  /* BL_EPOLL_READ | BL_EPOLL_WRITE */
    unsigned armed; /* what the epoll set holds for fd; 0: not in it */
    int file;       /* epoll refused it (regular file): always ready */
    int dead;       /* released: ignore its events; freed by reap() */
    bl_epoll_fd_cb cb;
    void *data;
    redisAsyncContext *ac; /* a hiredis connection instead of cb */
};

struct bl_timer {
    bl_epoll *ep;
    bl_timer_cb cb;
    void *data;
    uint64_t due, seq; /* heap order: due, then arming order */
    size_t slot;       /* index in ep->heap, or UNARMED */
};

struct bl_epoll {
    int epfd;
    int stopped;
    int has_dead;
    bl_epoll_watch *watches;
    size_t active; /* live watches that want something */
    size_t files;  /* ... of which always-ready files */
    bl_timer **heap;
    size_t n, cap, ntimers;
    uint64_t seq;
};

/* ---- fd watches --------------------------------------------------------------- */

static void count(bl_epoll_watch *w, int add)
{
    if (w->dead || !w->want)
        return;
    w->ep->active = add ? w->ep->active + 1 : w->ep->active - 1;
    if (w->file)
        w->ep->files = add ? w->ep->files + 1 : w->ep->files - 1;
}

/* Make the epoll set match w->want. A paused watch leaves the set, so a
 * hung-up fd nobody reads does not wake the loop over and over. */
static int sync_fd(bl_epoll_watch *w)
{
    unsigned want = w->dead ? 0 : w->want;
    if (w->file || want == w->armed)
        return 0;
    if (!want) {
        epoll_ctl(w->ep->epfd, EPOLL_CTL_DEL, w->fd, NULL);
        w->armed = 0;
        return 0;
    }
    struct epoll_event ev = {0};
    ev.events = (want & BL_EPOLL_READ ? EPOLLIN : 0u) | (want & BL_EPOLL_WRITE ? EPOLLOUT : 0u);
    ev.data.ptr = w;
    if (epoll_ctl(w->ep->epfd, w->armed ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, w->fd, &ev) != 0) {
        if (errno != EPERM || w->armed)
            return -1;
        w->file = 1;
        return 0;
    }
    w->armed = want;
    return 0;
}

static int set_want(bl_epoll_watch *w, unsigned want)
{
    unsigned old = w->want;
    count(w, 0);
    w->want = want;
    int rc = sync_fd(w);
    if (rc != 0)
        w->want = old;
    count(w, 1);
    return rc;
}

static bl_epoll_watch *watch_new(bl_epoll *ep, int fd)
{
    bl_epoll_watch *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->ep = ep;
    w->fd = fd;
    w->next = ep->watches;
    ep->watches = w;
    return w;
}

/* Out of the epoll set now (the fd may be closed right after), freed later. */
static void watch_kill(bl_epoll_watch *w)
{
    if (w->dead)
        return;
    count(w, 0);
    w->dead = 1;
    sync_fd(w);
    w->ac = NULL;
    w->ep->has_dead = 1;
}

static void reap(bl_epoll *ep)
{
    if (!ep->has_dead)
        return;
    ep->has_dead = 0;
    for (bl_epoll_watch **p = &ep->watches; *p;) {
        bl_epoll_watch *w = *p;
        if (w->dead) {
            *p = w->next;
            free(w);
        } else {
            p = &w->next;
        }
    }
}

static int dispatch(bl_epoll_watch *w, uint32_t e)
{
    unsigned ready = 0;
    if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
        ready |= BL_EPOLL_READ;
    if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        ready |= BL_EPOLL_WRITE;
    if (w->dead || !(ready & w->want))
        return 0;
    ready &= w->want;
    if (!w->ac) {
        w->cb(w, w->fd, ready, w->data);
        return 1;
    }
    /* A refused connect is ERR|HUP|OUT with write interest: HandleWrite
     * reads SO_ERROR and reports it to the connect callback. */
    if (ready & BL_EPOLL_READ)
        redisAsyncHandleRead(w->ac);
    if (!w->dead && (ready & BL_EPOLL_WRITE) && (w->want & BL_EPOLL_WRITE))
        redisAsyncHandleWrite(w->ac);
    return 1;
}

/* Regular files never block: report them ready each iteration. */
static int files_ready(bl_epoll *ep)
{
    int ran = 0;
    for (bl_epoll_watch *w = ep->watches; w; w = w->next) /* dead ones stay linked */
        if (!w->dead && w->file && w->want) {
            w->cb(w, w->fd, w->want, w->data);
            ran++;
        }
    return ran;
}

bl_epoll_watch *bl_epoll_watch_fd(bl_epoll *ep, int fd, unsigned events, bl_epoll_fd_cb cb,
                                  void *data)
{
    if (!ep || fd < 0 || !cb) {
        errno = EINVAL;
        return NULL;
    }
    bl_epoll_watch *w = watch_new(ep, fd);
    if (!w)
        return NULL;
    w->cb = cb;
    w->data = data;
    if (set_want(w, events & (BL_EPOLL_READ | BL_EPOLL_WRITE)) != 0) {
        w->dead = 1; /* nothing was registered */
        ep->has_dead = 1;
        return NULL;
    }
    return w;
}

int bl_epoll_watch_set(bl_epoll_watch *w, unsigned events)
{
    if (!w || w->dead) {
        errno = EINVAL;
        return -1;
    }
    return set_want(w, events & (BL_EPOLL_READ | BL_EPOLL_WRITE));
}

void bl_epoll_unwatch(bl_epoll_watch *w)
{
    if (w)
        watch_kill(w);
}

/* ---- hiredis attach ------------------------------------------------------------- */

/* No way to report a failure from these hooks. Only the first epoll_ctl
 * ADD can fail for lack of memory or watches (hiredis keeps read interest
 * once connected); the connect then never completes and the engine's
 * connect deadline drops it and retries. */
static void add_read(void *p)
{
    bl_epoll_watch *w = p;
    set_want(w, w->want | BL_EPOLL_READ);
}

static void del_read(void *p)
{
    bl_epoll_watch *w = p;
    set_want(w, w->want & ~BL_EPOLL_READ);
}

static void add_write(void *p)
{
    bl_epoll_watch *w = p;
    set_want(w, w->want | BL_EPOLL_WRITE);
}

static void del_write(void *p)
{
    bl_epoll_watch *w = p;
    set_want(w, w->want & ~BL_EPOLL_WRITE);
}

static void cleanup(void *p)
{
    watch_kill(p);
}

static int attach(void *impl, redisAsyncContext *ac)
{
    if (ac->ev.data)
        return -1;
    bl_epoll_watch *w = watch_new(impl, ac->c.fd);
    if (!w)
        return -1;
    w->ac = ac;
    ac->ev.data = w;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return 0;
}

/* ---- timers: a binary min-heap ----------------------------------------------------- */

static int before(const bl_timer *a, const bl_timer *b)
{
    return a->due != b->due ? a->due < b->due : a->seq < b->seq;
}

static void place(bl_epoll *ep, bl_timer *t, size_t i)
{
    ep->heap[i] = t;
    t->slot = i;
}

static void sift_up(bl_epoll *ep, size_t i)
{
    bl_timer *t = ep->heap[i];
    while (i > 0 && before(t, ep->heap[(i - 1) / 2])) {
        place(ep, ep->heap[(i - 1) / 2], i);
        i = (i - 1) / 2;
    }
    place(ep, t, i);
}

static void sift_down(bl_epoll *ep, size_t i)
{
    bl_timer *t = ep->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= ep->n)
            break;
        if (c + 1 < ep->n && before(ep->heap[c + 1], ep->heap[c]))
            c++;
        if (!before(ep->heap[c], t))
            break;
        place(ep, ep->heap[c], i);
        i = c;
    }
    place(ep, t, i);
}

static void heap_remove(bl_epoll *ep, bl_timer *t)
{
    size_t i = t->slot;
    t->slot = UNARMED;
    bl_timer *last = ep->heap[--ep->n];
    if (i < ep->n) {
        place(ep, last, i);
        sift_down(ep, i);
        sift_up(ep, last->slot);
    }
}

static bl_timer *timer_new(void *impl, bl_timer_cb cb, void *data)
{
    bl_epoll *ep = impl;
    if (ep->ntimers == ep->cap) {
        size_t cap = ep->cap ? 2 * ep->cap : 16;
        bl_timer **heap = realloc(ep->heap, cap * sizeof *heap);
        if (!heap)
            return NULL;
        ep->heap = heap;
        ep->cap = cap;
    }
    bl_timer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ep = ep;
    t->cb = cb;
    t->data = data;
    t->slot = UNARMED;
    ep->ntimers++;
    return t;
}

/* Due now + after_ms; runs in a later run_once, never from here. */
static void timer_start(bl_timer *t, uint64_t after_ms)
{
    bl_epoll *ep = t->ep;
    if (t->slot != UNARMED)
        heap_remove(ep, t);
    uint64_t now = bl_adapter_now_ms();
    t->due = after_ms > UINT64_MAX - now ? UINT64_MAX : now + after_ms;
    t->seq = ep->seq++;
    place(ep, t, ep->n++);
    sift_up(ep, t->slot);
}

static void timer_stop(bl_timer *t)
{
    if (t->slot != UNARMED)
        heap_remove(t->ep, t);
}

static void timer_free(bl_timer *t)
{
    timer_stop(t);
    t->ep->ntimers--;
    free(t);
}

/* Timers armed while this runs (seq >= limit) wait for the next round,
 * so a callback that re-arms with 0 cannot starve the fds. */
static int run_timers(bl_epoll *ep)
{
    uint64_t now = bl_adapter_now_ms(), limit = ep->seq;
    int ran = 0;
    while (ep->n && ep->heap[0]->due <= now && ep->heap[0]->seq < limit) {
        bl_timer *t = ep->heap[0];
        heap_remove(ep, t);
        t->cb(t->data); /* may free t */
        ran++;
    }
    return ran;
}

static uint64_t now_ms(void *impl)
{
    (void)impl;
    return bl_adapter_now_ms();
}

/* ---- the loop ----------------------------------------------------------------------- */

bl_epoll *bl_epoll_new(void)
{
    bl_epoll *ep = calloc(1, sizeof *ep);
    if (!ep)
        return NULL;
    ep->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (ep->epfd < 0) {
        free(ep);
        return NULL;
    }
    return ep;
}

void bl_epoll_free(bl_epoll *ep)
{
    if (!ep)
        return;
    while (ep->watches) {
        bl_epoll_watch *w = ep->watches;
        ep->watches = w->next;
        free(w);
    }
    close(ep->epfd);
    free(ep->heap);
    free(ep);
}

void bl_epoll_loop(bl_loop *out, bl_epoll *ep)
{
    out->impl = ep;
    out->attach = attach;
    out->timer_new = timer_new;
    out->timer_start = timer_start;
    out->timer_stop = timer_stop;
    out->timer_free = timer_free;
    out->now_ms = now_ms;
}

int bl_epoll_run_once(bl_epoll *ep, int max_wait_ms)
{
    int timeout = ep->files ? 0 : max_wait_ms;
    if (ep->n && timeout != 0) {
        uint64_t now = bl_adapter_now_ms(), due = ep->heap[0]->due;
        uint64_t left = due > now ? due - now : 0;
        if (timeout < 0 || left < (uint64_t)timeout)
            timeout = left > INT_MAX ? INT_MAX : (int)left;
    }
    struct epoll_event evs[BATCH];
    int n = epoll_wait(ep->epfd, evs, BATCH, timeout);
    if (n < 0) {
        if (errno != EINTR)
            return -1;
        n = 0;
    }
    int ran = 0;
    for (int i = 0; i < n; i++)
        ran += dispatch(evs[i].data.ptr, evs[i].events);
    if (ep->files)
        ran += files_ready(ep);
    ran += run_timers(ep);
    reap(ep); /* nothing of this batch refers to a dead watch any more */
    return ran;
}

int bl_epoll_alive(const bl_epoll *ep)
{
    return ep->active > 0 || ep->n > 0;
}

int bl_epoll_run(bl_epoll *ep)
{
    int rc = 0;
    while (!ep->stopped && bl_epoll_alive(ep))
        if (bl_epoll_run_once(ep, -1) < 0) {
            rc = -1;
            break;
        }
    ep->stopped = 0;
    return rc;
}

void bl_epoll_stop(bl_epoll *ep)
{
    ep->stopped = 1;
}
