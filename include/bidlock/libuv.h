/* bidlock/libuv.h - run bidlock on a libuv loop.
 *
 *   uv_loop_t *loop = uv_default_loop();
 *   bl_loop bl;
 *   bl_libuv_loop(&bl, loop);
 *   bl_manager_new(&bl, &cfg, &m);   // bl is copied; it may go out of scope
 *
 * Header-only: the code is compiled into your program, so libbidlock links
 * no loop library and only a libuv program needs libuv:
 *
 *   cc app.c $(pkg-config --cflags --libs bidlock libuv)
 *
 * Connections are driven by bidlock's own uv_poll_t attach, not hiredis's
 * adapters/libuv.h: in 0.14.1 its poll callback returns on a non-zero
 * status. libuv reports POLLERR (a refused connect, a reset) as status
 * UV_EBADF and stops the handle, so that adapter never tells hiredis: the
 * connect callback never runs and the handle stays open for ever. Timers
 * are uv_timer_t.
 *
 * libuv frees handles in close callbacks: after a manager's close callback
 * has run, let the loop turn once more (uv_run(loop, UV_RUN_NOWAIT)) before
 * uv_loop_close(). The loop must outlive every manager created on it. */
#ifndef BIDLOCK_LIBUV_H
#define BIDLOCK_LIBUV_H

#include <stdint.h>
#include <stdlib.h>

#include <hiredis/async.h>
#include <uv.h>

#include "loop.h"

/* ---- connections ---------------------------------------------------------- */

typedef struct bl_libuv_conn {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis has let go (cleanup) */
    int events;            /* UV_READABLE | UV_WRITABLE, as hiredis asked */
} bl_libuv_conn;

static inline void bl_libuv_on_poll(uv_poll_t *h, int status, int events);

static inline void bl_libuv_arm(bl_libuv_conn *c)
{
    if (c->events)
        uv_poll_start(&c->poll, c->events, bl_libuv_on_poll);
    else
        uv_poll_stop(&c->poll);
}

static inline void bl_libuv_on_poll(uv_poll_t *h, int status, int events)
{
    bl_libuv_conn *c = (bl_libuv_conn *)h->data;
    if (status < 0) {
        /* A socket error. Let hiredis find it: before the connect completes
         * HandleRead checks SO_ERROR and calls the connect callback with
         * REDIS_ERR; afterwards read() returns the pending error. Either
         * way hiredis frees the context, which calls cleanup below. */
        if (c->ac)
            redisAsyncHandleRead(c->ac);
        if (c->ac) /* hiredis kept it: libuv stopped the handle, re-arm */
            bl_libuv_arm(c);
        return;
    }
    if (c->ac && (events & UV_READABLE))
        redisAsyncHandleRead(c->ac);
    if (c->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(c->ac);
}

static inline void bl_libuv_set_events(void *privdata, int add, int ev)
{
    bl_libuv_conn *c = (bl_libuv_conn *)privdata;
    c->events = add ? c->events | ev : c->events & ~ev;
    bl_libuv_arm(c);
}

static inline void bl_libuv_add_read(void *p)
{
    bl_libuv_set_events(p, 1, UV_READABLE);
}

static inline void bl_libuv_del_read(void *p)
{
    bl_libuv_set_events(p, 0, UV_READABLE);
}

static inline void bl_libuv_add_write(void *p)
{
    bl_libuv_set_events(p, 1, UV_WRITABLE);
}

static inline void bl_libuv_del_write(void *p)
{
    bl_libuv_set_events(p, 0, UV_WRITABLE);
}

static inline void bl_libuv_conn_closed(uv_handle_t *h)
{
    free(h->data);
}

/* hiredis calls this while freeing the context, possibly from inside
 * on_poll: the conn lives on until libuv's close callback. */
static inline void bl_libuv_cleanup(void *privdata)
{
    bl_libuv_conn *c = (bl_libuv_conn *)privdata;
    c->ac = NULL;
    c->events = 0;
    uv_close((uv_handle_t *)&c->poll, bl_libuv_conn_closed);
}

static inline int bl_libuv_attach(void *impl, struct redisAsyncContext *ac)
{
    if (ac->ev.data)
        return -1;
    bl_libuv_conn *c = (bl_libuv_conn *)calloc(1, sizeof *c);
    if (!c)
        return -1;
    if (uv_poll_init((uv_loop_t *)impl, &c->poll, ac->c.fd) != 0) {
        free(c); /* a failed init leaves nothing registered */
        return -1;
    }
    c->poll.data = c;
    c->ac = ac;
    ac->ev.data = c;
    ac->ev.addRead = bl_libuv_add_read;
    ac->ev.delRead = bl_libuv_del_read;
    ac->ev.addWrite = bl_libuv_add_write;
    ac->ev.delWrite = bl_libuv_del_write;
    ac->ev.cleanup = bl_libuv_cleanup;
    return 0;
}

/* ---- plain fd watches (bidlock's TLS relay) ---------------------------------- */

/* bl_io is opaque; on libuv it is this. Freed in libuv's close callback. */
typedef struct bl_libuv_io {
    uv_poll_t poll;
    bl_io_cb cb;
    void *data;
    int events; /* UV_READABLE | UV_WRITABLE */
} bl_libuv_io;

static inline void bl_libuv_io_fire(uv_poll_t *h, int status, int events)
{
    bl_libuv_io *io = (bl_libuv_io *)h->data;
    if (status < 0) {
        /* libuv stopped the handle; the relay reads the error and re-arms
         * or frees. Report both, so the next read or write sees it. */
        io->events = 0;
        io->cb(io->data, BL_IO_READ | BL_IO_WRITE);
        return;
    }
    io->cb(io->data, ((events & UV_READABLE) ? BL_IO_READ : 0) |
                         ((events & UV_WRITABLE) ? BL_IO_WRITE : 0));
}

static inline bl_io *bl_libuv_io_new(void *impl, int fd, bl_io_cb cb, void *data)
{
    bl_libuv_io *io = (bl_libuv_io *)calloc(1, sizeof *io);
    if (!io)
        return NULL;
    if (uv_poll_init((uv_loop_t *)impl, &io->poll, fd) != 0) {
        free(io);
        return NULL;
    }
    io->poll.data = io;
    io->cb = cb;
    io->data = data;
    return (bl_io *)io;
}

static inline void bl_libuv_io_set(bl_io *bio, int events)
{
    bl_libuv_io *io = (bl_libuv_io *)bio;
    int want = ((events & BL_IO_READ) ? UV_READABLE : 0) | ((events & BL_IO_WRITE) ? UV_WRITABLE : 0);
    if (want == io->events && uv_is_active((uv_handle_t *)&io->poll) == (want != 0))
        return;
    io->events = want;
    if (want)
        uv_poll_start(&io->poll, want, bl_libuv_io_fire);
    else
        uv_poll_stop(&io->poll);
}

static inline void bl_libuv_io_closed(uv_handle_t *h)
{
    free(h->data);
}

/* uv_close stops the poll at once (the fd leaves the backend set), so the
 * caller may close the fd right after; the memory goes in the close
 * callback. */
static inline void bl_libuv_io_free(bl_io *bio)
{
    bl_libuv_io *io = (bl_libuv_io *)bio;
    uv_close((uv_handle_t *)&io->poll, bl_libuv_io_closed);
}

/* ---- timers ------------------------------------------------------------------ */

/* bl_timer is opaque to the engine; on libuv it is this. */
typedef struct bl_libuv_timer {
    uv_timer_t h;
    bl_timer_cb cb;
    void *data;
} bl_libuv_timer;

static inline void bl_libuv_fire(uv_timer_t *h)
{
    bl_libuv_timer *t = (bl_libuv_timer *)h->data;
    t->cb(t->data);
}

static inline bl_timer *bl_libuv_timer_new(void *impl, bl_timer_cb cb, void *data)
{
    bl_libuv_timer *t = (bl_libuv_timer *)calloc(1, sizeof *t);
    if (!t)
        return NULL;
    uv_timer_init((uv_loop_t *)impl, &t->h); /* cannot fail on Unix */
    t->h.data = t;
    t->cb = cb;
    t->data = data;
    return (bl_timer *)t;
}

/* libuv runs a due timer in its next timer phase, never from here. Its
 * "now" is cached per loop turn; refresh it so that a timer armed outside
 * a callback, or after a long one, does not expire early on our clock. */
static inline void bl_libuv_timer_start(bl_timer *bt, uint64_t after_ms)
{
    bl_libuv_timer *t = (bl_libuv_timer *)bt;
    uv_update_time(t->h.loop);
    uv_timer_start(&t->h, bl_libuv_fire, after_ms, 0);
}

static inline void bl_libuv_timer_stop(bl_timer *bt)
{
    uv_timer_stop(&((bl_libuv_timer *)bt)->h);
}

static inline void bl_libuv_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static inline void bl_libuv_timer_free(bl_timer *bt)
{
    bl_libuv_timer *t = (bl_libuv_timer *)bt;
    uv_timer_stop(&t->h);
    uv_close((uv_handle_t *)&t->h, bl_libuv_timer_closed);
}

/* The engine's clock: libuv's monotonic clock, read now (uv_now() is the
 * cached per-turn value). */
static inline uint64_t bl_libuv_now_ms(void *impl)
{
    (void)impl;
    return uv_hrtime() / 1000000u;
}

/* Fill *out for `loop`. Always succeeds. */
static inline void bl_libuv_loop(bl_loop *out, uv_loop_t *loop)
{
    out->impl = loop;
    out->attach = bl_libuv_attach;
    out->timer_new = bl_libuv_timer_new;
    out->timer_start = bl_libuv_timer_start;
    out->timer_stop = bl_libuv_timer_stop;
    out->timer_free = bl_libuv_timer_free;
    out->now_ms = bl_libuv_now_ms;
    out->io_new = bl_libuv_io_new;
    out->io_set = bl_libuv_io_set;
    out->io_free = bl_libuv_io_free;
}

#endif
