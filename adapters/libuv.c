/* libuv.c - bidlock on libuv: one uv_poll_t per hiredis connection filling
 * the ac->ev hooks, and uv_timer_t timers.
 *
 * Not hiredis's adapters/libuv.h: in 0.14.1 its poll callback returns on a
 * non-zero status. libuv reports POLLERR (a refused connect, a reset) as
 * status UV_EBADF and stops the handle, so that adapter never tells hiredis:
 * the connect callback never runs and the handle stays open for ever. */
#include <stdlib.h>

#include <hiredis/async.h>
#include <uv.h>

#include "bidlock/libuv.h"
#include "clock.h"

/* ---- connections ---------------------------------------------------------- */

typedef struct conn {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis has let go (cleanup) */
    int events;            /* UV_READABLE | UV_WRITABLE, as hiredis asked */
} conn;

static void on_poll(uv_poll_t *h, int status, int events);

static void arm(conn *c)
{
    if (c->events)
        uv_poll_start(&c->poll, c->events, on_poll);
    else
        uv_poll_stop(&c->poll);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    conn *c = h->data;
    if (status < 0) {
        /* A socket error. Let hiredis find it: before the connect completes
         * HandleRead checks SO_ERROR and calls the connect callback with
         * REDIS_ERR; afterwards read() returns the pending error. Either
         * way hiredis frees the context, which calls cleanup below. */
        if (c->ac)
            redisAsyncHandleRead(c->ac);
        if (c->ac) /* hiredis kept it: libuv stopped the handle, re-arm */
            arm(c);
        return;
    }
    if (c->ac && (events & UV_READABLE))
        redisAsyncHandleRead(c->ac);
    if (c->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(c->ac);
}

static void set_events(void *privdata, int add, int ev)
{
    conn *c = privdata;
    c->events = add ? c->events | ev : c->events & ~ev;
    arm(c);
}

static void add_read(void *p)
{
    set_events(p, 1, UV_READABLE);
}

static void del_read(void *p)
{
    set_events(p, 0, UV_READABLE);
}

static void add_write(void *p)
{
    set_events(p, 1, UV_WRITABLE);
}

static void del_write(void *p)
{
    set_events(p, 0, UV_WRITABLE);
}

static void conn_closed(uv_handle_t *h)
{
    free(h->data);
}

/* hiredis calls this while freeing the context, possibly from inside
 * on_poll: the conn lives on until libuv's close callback. */
static void cleanup(void *privdata)
{
    conn *c = privdata;
    c->ac = NULL;
    c->events = 0;
    uv_close((uv_handle_t *)&c->poll, conn_closed);
}

static int attach(void *impl, redisAsyncContext *ac)
{
    if (ac->ev.data)
        return -1;
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return -1;
    if (uv_poll_init(impl, &c->poll, ac->c.fd) != 0) {
        free(c); /* a failed init leaves nothing registered */
        return -1;
    }
    c->poll.data = c;
    c->ac = ac;
    ac->ev.data = c;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return 0;
}

/* ---- timers ------------------------------------------------------------------ */

struct bl_timer {
    uv_timer_t h;
    bl_timer_cb cb;
    void *data;
};

static void fire(uv_timer_t *h)
{
    bl_timer *t = h->data;
    t->cb(t->data);
}

static bl_timer *timer_new(void *impl, bl_timer_cb cb, void *data)
{
    bl_timer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    uv_timer_init(impl, &t->h); /* cannot fail on Unix */
    t->h.data = t;
    t->cb = cb;
    t->data = data;
    return t;
}

/* libuv runs a due timer in its next timer phase, never from here. Its
 * "now" is cached per loop turn; refresh it so that a timer armed outside
 * a callback, or after a long one, does not expire early on our clock. */
static void timer_start(bl_timer *t, uint64_t after_ms)
{
    uv_update_time(t->h.loop);
    uv_timer_start(&t->h, fire, after_ms, 0);
}

static void timer_stop(bl_timer *t)
{
    uv_timer_stop(&t->h);
}

static void timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void timer_free(bl_timer *t)
{
    uv_timer_stop(&t->h);
    uv_close((uv_handle_t *)&t->h, timer_closed);
}

static uint64_t now_ms(void *impl)
{
    (void)impl;
    return bl_adapter_now_ms();
}

void bl_libuv_loop(bl_loop *out, uv_loop_t *loop)
{
    out->impl = loop;
    out->attach = attach;
    out->timer_new = timer_new;
    out->timer_start = timer_start;
    out->timer_stop = timer_stop;
    out->timer_free = timer_free;
    out->now_ms = now_ms;
}
