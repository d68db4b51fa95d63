/* bidlock/epoll.h - run bidlock on plain epoll, with no loop library.
 *
 * A minimal loop: fd watches through epoll_ctl, one-shot timers in a binary
 * heap driven by epoll_wait's timeout, and a clock. Enough for bidlock and
 * for a few fds of your own (stdin, a listening socket).
 *
 *   bl_epoll *ep = bl_epoll_new();
 *   bl_loop bl;
 *   bl_epoll_loop(&bl, ep);
 *   bl_manager_new(&bl, &cfg, &m);   // bl is copied; it may go out of scope
 *   bl_epoll_run(ep);                // until nothing is left to wait for
 *   bl_epoll_free(ep);
 *
 * Single-threaded: every function is called on the thread that runs the
 * loop. The loop must outlive every manager created on it. A forked child
 * creates its own bl_epoll; it must not run its parent's. */
#ifndef BIDLOCK_EPOLL_H
#define BIDLOCK_EPOLL_H

#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bl_epoll bl_epoll;

/* A new, empty loop. NULL (errno set) if epoll_create1 or malloc fails. */
BL_API bl_epoll *bl_epoll_new(void);
/* Release the loop. Close every manager (and wait for its close callback)
 * and remove every watch first; timers and watches still alive are not
 * freed. NULL is ignored. */
BL_API void bl_epoll_free(bl_epoll *ep);

/* Fill *out for `ep`. Always succeeds. */
BL_API void bl_epoll_loop(bl_loop *out, bl_epoll *ep);

/* Wait for events at most max_wait_ms (-1: until the next event or timer;
 * 0: poll), run their callbacks and the timers that are due. Returns how
 * many callbacks ran, or -1 (errno set) if epoll_wait failed. */
BL_API int bl_epoll_run_once(bl_epoll *ep, int max_wait_ms);
/* Run until no watched fd, connection or armed timer is left, or until
 * bl_epoll_stop(). Returns 0, or -1 (errno set) if epoll_wait failed. */
BL_API int bl_epoll_run(bl_epoll *ep);
/* Make bl_epoll_run() return after the current iteration. */
BL_API void bl_epoll_stop(bl_epoll *ep);
/* 1 while something would keep bl_epoll_run() going, else 0. */
BL_API int bl_epoll_alive(const bl_epoll *ep);

/* ---- your own fds ---------------------------------------------------------- */

#define BL_EPOLL_READ 1u
#define BL_EPOLL_WRITE 2u

typedef struct bl_epoll_watch bl_epoll_watch;
/* `events` is what is ready (BL_EPOLL_READ / BL_EPOLL_WRITE). An error or
 * hang-up on the fd is reported as ready for whatever was asked, so the
 * next read()/write() returns the error or EOF. */
typedef void (*bl_epoll_fd_cb)(bl_epoll_watch *w, int fd, unsigned events, void *data);

/* Watch `fd` for `events` (level-triggered). A regular file, which epoll
 * refuses, is reported ready on every iteration, as libev does. The fd
 * stays yours: close it only after bl_epoll_unwatch(). Returns NULL (errno
 * set) on failure. */
BL_API bl_epoll_watch *bl_epoll_watch_fd(bl_epoll *ep, int fd, unsigned events, bl_epoll_fd_cb cb,
                                         void *data);
/* Change what `w` waits for; 0 pauses it. Returns 0 or -1 (errno set). */
BL_API int bl_epoll_watch_set(bl_epoll_watch *w, unsigned events);
/* Stop watching and release `w`; its callback never runs again. Safe from
 * inside any callback, including w's own. */
BL_API void bl_epoll_unwatch(bl_epoll_watch *w);

#ifdef __cplusplus
}
#endif
#endif
