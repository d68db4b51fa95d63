/* bidlock/libev.h - run bidlock on a libev loop.
 *
 *   struct ev_loop *loop = EV_DEFAULT;
 *   bl_loop bl;
 *   bl_libev_loop(&bl, loop);
 *   bl_manager_new(&bl, &cfg, &m);   // bl is copied; it may go out of scope
 *
 * The loop must outlive every manager created on it. */
#ifndef BIDLOCK_LIBEV_H
#define BIDLOCK_LIBEV_H

#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;

/* Fill *out for `loop`. Always succeeds. */
BL_API void bl_libev_loop(bl_loop *out, struct ev_loop *loop);

#ifdef __cplusplus
}
#endif
#endif
