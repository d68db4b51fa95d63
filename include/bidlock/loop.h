/* bidlock/loop.h - the host-loop seam.
 *
 * bidlock owns no thread and no loop. Whatever loop the program already runs
 * supplies four things through a bl_loop: attaching a hiredis async context
 * to the loop, one-shot timers, and a monotonic clock. Adapters for libev,
 * libuv and epoll fill a bl_loop for you (bidlock/libev.h, ...); they are
 * header-only, so libbidlock links no loop library and a program links only
 * the loop it runs. You only need this header to write an adapter of your
 * own; each adapter header is a page or two to copy from.
 *
 * Contract for an adapter:
 *  - attach(): make the loop drive `ac` (read/write interest through the
 *    ac->ev hooks). Return 0 on success, -1 on failure. bidlock calls it
 *    before redisAsyncSetConnectCallback (hiredis 0.14 asks for write
 *    interest inside that call; attached later, the connect never completes).
 *  - timer_new(): a stopped one-shot timer that calls cb(data) when it
 *    expires. NULL on out of memory.
 *  - timer_start(): (re)arm the timer to fire once, `after_ms` from now.
 *    Arming a running timer re-arms it. Never calls cb synchronously, even
 *    for after_ms == 0.
 *  - timer_stop(): disarm; cb will not run until started again.
 *  - timer_free(): disarm and release. cb never runs again. The adapter may
 *    release memory later (libuv frees handles in close callbacks), but the
 *    caller must not touch the timer after this call.
 *  - now_ms(): a monotonic clock in milliseconds.
 *  - io_new(), io_set(), io_free() (optional; since 0.2.0): watch a plain
 *    fd that is not a hiredis connection - bidlock's TLS relay (README,
 *    "TLS") needs them. io_new returns a watch with no interest (NULL on
 *    out of memory); io_set(io, BL_IO_READ | BL_IO_WRITE) says what to
 *    watch for from now on (0: nothing); cb(data, events) gets what is
 *    ready, with an error or hang-up reported as both BL_IO_READ and
 *    BL_IO_WRITE so that the next read or write sees it. io_free stops
 *    the watch at once (cb never runs again; it may be called from inside
 *    cb or any other callback); the fd is the caller's and is closed by
 *    the caller right after. An adapter of your own may leave the three
 *    NULL: a TLS configuration then fails with BL_EINVAL and a sentence.
 * All of these are called on the loop thread only.
 */
#ifndef BIDLOCK_LOOP_H
#define BIDLOCK_LOOP_H

#include <stdint.h>

/* Exported from the shared library (built with -fvisibility=hidden). The
 * same definition as in bidlock.h, for adapter headers included alone. */
#ifndef BL_API
#if defined(BIDLOCK_BUILDING) && defined(__GNUC__)
#define BL_API __attribute__((visibility("default")))
#else
#define BL_API
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

struct redisAsyncContext;

typedef struct bl_timer bl_timer; /* defined by each adapter */
typedef void (*bl_timer_cb)(void *data);
typedef struct bl_io bl_io; /* defined by each adapter */
typedef void (*bl_io_cb)(void *data, int events);
#define BL_IO_READ 1
#define BL_IO_WRITE 2

typedef struct bl_loop {
    void *impl; /* the adapter's loop object, passed back to attach/timer_new/now_ms */
    int (*attach)(void *impl, struct redisAsyncContext *ac);
    bl_timer *(*timer_new)(void *impl, bl_timer_cb cb, void *data);
    void (*timer_start)(bl_timer *t, uint64_t after_ms);
    void (*timer_stop)(bl_timer *t);
    void (*timer_free)(bl_timer *t);
    uint64_t (*now_ms)(void *impl);
    /* optional (NULL: no TLS), see above; at the end so that a bl_loop
     * filled by code written before 0.2.0 keeps its layout up to here */
    bl_io *(*io_new)(void *impl, int fd, bl_io_cb cb, void *data);
    void (*io_set)(bl_io *io, int events);
    void (*io_free)(bl_io *io);
} bl_loop;

#ifdef __cplusplus
}
#endif
#endif
