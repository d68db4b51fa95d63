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

typedef struct bl_loop {
    void *impl; /* the adapter's loop object, passed back to attach/timer_new/now_ms */
    int (*attach)(void *impl, struct redisAsyncContext *ac);
    bl_timer *(*timer_new)(void *impl, bl_timer_cb cb, void *data);
    void (*timer_start)(bl_timer *t, uint64_t after_ms);
    void (*timer_stop)(bl_timer *t);
    void (*timer_free)(bl_timer *t);
    uint64_t (*now_ms)(void *impl);
} bl_loop;

#ifdef __cplusplus
}
#endif
#endif
