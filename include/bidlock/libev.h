/* bidlock/libev.h - run bidlock on a libev loop.
 *
 *   struct ev_loop *loop = EV_DEFAULT;
 *   bl_loop bl;
 *   bl_libev_loop(&bl, loop);
 *   bl_manager_new(&bl, &cfg, &m);   // bl is copied; it may go out of scope
 *
 * Header-only, like hiredis's adapters/libev.h (which attaches the
 * connections here): the code is compiled into your program, so libbidlock
 * links no loop library and only a libev program needs libev:
 *
 *   cc app.c $(pkg-config --cflags --libs bidlock) -lev
 *
 * Timers are ev_timer. The loop must outlive every manager created on it.
 * Needs POSIX's clock_gettime (any default gcc/clang mode; with -std=c11
 * also -D_POSIX_C_SOURCE=200809L). */
#ifndef BIDLOCK_LIBEV_H
#define BIDLOCK_LIBEV_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <ev.h>
#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>

#include "loop.h"

#ifndef CLOCK_MONOTONIC
#error "bidlock/libev.h needs POSIX clocks: compile with -D_POSIX_C_SOURCE=200809L"
#endif

/* bl_timer is opaque to the engine; on libev it is this. */
typedef struct bl_libev_timer {
    ev_timer w; /* first: the ev_timer * libev hands back is the timer */
    struct ev_loop *loop;
    bl_timer_cb cb;
    void *data;
} bl_libev_timer;

static inline void bl_libev_fire(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    bl_libev_timer *t = (bl_libev_timer *)w;
    t->cb(t->data);
}

static inline int bl_libev_attach(void *impl, struct redisAsyncContext *ac)
{
    return redisLibevAttach((struct ev_loop *)impl, ac) == REDIS_OK ? 0 : -1;
}

static inline bl_timer *bl_libev_timer_new(void *impl, bl_timer_cb cb, void *data)
{
    bl_libev_timer *t = (bl_libev_timer *)calloc(1, sizeof *t);
    if (!t)
        return NULL;
    ev_timer_init(&t->w, bl_libev_fire, 0., 0.);
    t->loop = (struct ev_loop *)impl;
    t->cb = cb;
    t->data = data;
    return (bl_timer *)t;
}

/* ev_now() is cached per loop turn; refresh it so that a timer armed
 * outside a callback, or after a long one, does not expire early on our
 * clock. */
static inline void bl_libev_timer_start(bl_timer *bt, uint64_t after_ms)
{
    bl_libev_timer *t = (bl_libev_timer *)bt;
    ev_now_update(t->loop);
    ev_timer_stop(t->loop, &t->w);
    ev_timer_set(&t->w, (double)after_ms / 1000.0, 0.);
    ev_timer_start(t->loop, &t->w);
}

static inline void bl_libev_timer_stop(bl_timer *bt)
{
    bl_libev_timer *t = (bl_libev_timer *)bt;
    ev_timer_stop(t->loop, &t->w);
}

static inline void bl_libev_timer_free(bl_timer *bt)
{
    bl_libev_timer *t = (bl_libev_timer *)bt;
    ev_timer_stop(t->loop, &t->w);
    free(t);
}

/* A plain fd watch (bidlock's TLS relay); bl_io is opaque, on libev it is this. */
typedef struct bl_libev_io {
    ev_io w; /* first: the ev_io * libev hands back is the watch */
    struct ev_loop *loop;
    bl_io_cb cb;
    void *data;
} bl_libev_io;

static inline void bl_libev_io_fire(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    bl_libev_io *io = (bl_libev_io *)w;
    int ev = ((revents & (EV_READ | EV_ERROR)) ? BL_IO_READ : 0) |
             ((revents & (EV_WRITE | EV_ERROR)) ? BL_IO_WRITE : 0);
    io->cb(io->data, ev);
}

static inline bl_io *bl_libev_io_new(void *impl, int fd, bl_io_cb cb, void *data)
{
    bl_libev_io *io = (bl_libev_io *)calloc(1, sizeof *io);
    if (!io)
        return NULL;
    ev_io_init(&io->w, bl_libev_io_fire, fd, 0);
    io->loop = (struct ev_loop *)impl;
    io->cb = cb;
    io->data = data;
    return (bl_io *)io;
}

static inline void bl_libev_io_set(bl_io *bio, int events)
{
    bl_libev_io *io = (bl_libev_io *)bio;
    int want = ((events & BL_IO_READ) ? EV_READ : 0) | ((events & BL_IO_WRITE) ? EV_WRITE : 0);
    if (ev_is_active(&io->w) && (io->w.events & (EV_READ | EV_WRITE)) == want)
        return;
    ev_io_stop(io->loop, &io->w);
    ev_io_set(&io->w, io->w.fd, want);
    if (want)
        ev_io_start(io->loop, &io->w);
}

/* ev_io_stop also drops a pending event, so freeing inside a callback of
 * the same loop turn is safe. */
static inline void bl_libev_io_free(bl_io *bio)
{
    bl_libev_io *io = (bl_libev_io *)bio;
    ev_io_stop(io->loop, &io->w);
    free(io);
}

/* The engine's clock: monotonic, unlike ev_now() (wall clock). */
static inline uint64_t bl_libev_now_ms(void *impl)
{
    (void)impl;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Fill *out for `loop`. Always succeeds. */
static inline void bl_libev_loop(bl_loop *out, struct ev_loop *loop)
{
    out->impl = loop;
    out->attach = bl_libev_attach;
    out->timer_new = bl_libev_timer_new;
    out->timer_start = bl_libev_timer_start;
    out->timer_stop = bl_libev_timer_stop;
    out->timer_free = bl_libev_timer_free;
    out->now_ms = bl_libev_now_ms;
    out->io_new = bl_libev_io_new;
    out->io_set = bl_libev_io_set;
    out->io_free = bl_libev_io_free;
}

#endif
