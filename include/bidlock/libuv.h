/* bidlock/libuv.h - run bidlock on a libuv loop.
 *
 *   uv_loop_t *loop = uv_default_loop();
 *   bl_loop bl;
 *   bl_libuv_loop(&bl, loop);
 *   bl_manager_new(&bl, &cfg, &m);   // bl is copied; it may go out of scope
 *
 * Connections are driven by bidlock's own uv_poll_t attach (not hiredis's
 * adapters/libuv.h, which in 0.14.1 drops socket errors, so a refused
 * connect would never be reported). Timers are uv_timer_t.
 *
 * libuv frees handles in close callbacks: after a manager's close callback
 * has run, let the loop turn once more (uv_run(loop, UV_RUN_NOWAIT)) before
 * uv_loop_close(). The loop must outlive every manager created on it. */
#ifndef BIDLOCK_LIBUV_H
#define BIDLOCK_LIBUV_H

#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

struct uv_loop_s; /* uv_loop_t */

/* Fill *out for `loop`. Always succeeds. */
BL_API void bl_libuv_loop(bl_loop *out, struct uv_loop_s *loop);

#ifdef __cplusplus
}
#endif
#endif
