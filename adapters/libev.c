/* libev.c - bidlock on libev. hiredis's own libev adapter attaches the
 * connection; timers are ev_timer. */
#include <stdlib.h>

#include <ev.h>
#include <hiredis/adapters/libev.h>

#include "bidlock/libev.h"
#include "clock.h"

struct bl_timer {
    ev_timer w;
    struct ev_loop *loop;
    bl_timer_cb cb;
    void *data;
};

static void fire(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    bl_timer *t = (bl_timer *)w;
    t->cb(t->data);
}

static int attach(void *impl, struct redisAsyncContext *ac)
{
    return redisLibevAttach((struct ev_loop *)impl, ac) == REDIS_OK ? 0 : -1;
}

static bl_timer *timer_new(void *impl, bl_timer_cb cb, void *data)
{
    bl_timer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    ev_timer_init(&t->w, fire, 0., 0.);
    t->loop = impl;
    t->cb = cb;
    t->data = data;
    return t;
}

/* ev_now() is cached per loop turn; refresh it so that a timer armed
 * outside a callback, or after a long one, does not expire early on our
 * clock. */
static void timer_start(bl_timer *t, uint64_t after_ms)
{
    ev_now_update(t->loop);
    ev_timer_stop(t->loop, &t->w);
    ev_timer_set(&t->w, (double)after_ms / 1000.0, 0.);
    ev_timer_start(t->loop, &t->w);
}

static void timer_stop(bl_timer *t)
{
    ev_timer_stop(t->loop, &t->w);
}

static void timer_free(bl_timer *t)
{
    ev_timer_stop(t->loop, &t->w);
    free(t);
}

static uint64_t now_ms(void *impl)
{
    (void)impl;
    return bl_adapter_now_ms();
}

void bl_libev_loop(bl_loop *out, struct ev_loop *loop)
{
    out->impl = loop;
    out->attach = attach;
    out->timer_new = timer_new;
    out->timer_start = timer_start;
    out->timer_stop = timer_stop;
    out->timer_free = timer_free;
    out->now_ms = now_ms;
}
