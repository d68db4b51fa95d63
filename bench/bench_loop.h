/* bench_loop.h - loop helpers the workload files share (see loop.c). */
#ifndef BIDLOCK_BENCH_LOOP_H
#define BIDLOCK_BENCH_LOOP_H

#include "bidlock.h"

struct ev_loop;

/* "select" unless BIDLOCK_BENCH_BACKEND says epoll, poll or auto. */
const char *bench_loop_backend(void);
struct ev_loop *bench_loop_new(void);
/* Run the loop until *flag != 0 or timeout_s passed; 1 if the flag was set. */
int bench_run_until(struct ev_loop *loop, const int *flag, double timeout_s);
/* A manager on loop (bl is filled and must outlive nothing: it is copied)
 * that is connected and has its scripts loaded; NULL on failure. */
bl_manager *bench_manager(struct ev_loop *loop, bl_loop *bl, const bl_config *cfg);
/* bl_manager_close and wait (bounded) for its callback. */
void bench_close_manager(struct ev_loop *loop, bl_manager *m);

#endif
