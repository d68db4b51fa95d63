/* harness.h - what every suite shares: a private redis-server per test, a
 * host loop to run bidlock on, bounded waits, and the fixtures built from
 * them. Blocking is allowed here (this is the test harness), never in the
 * library. The recorders and waits for lock requests are in helpers.h. */
#ifndef BIDLOCK_TEST_HARNESS_H
#define BIDLOCK_TEST_HARNESS_H

#include <stdint.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

#include "bidlock.h"
#include "rsrv.h"

/* ---- redis-server ------------------------------------------------------- */

/* tests/rsrv's server, with Criterion assertions around it: pid, port, dir,
 * and password (set it after rs_start when extra adds --requirepass). */
typedef rsrv redis_srv;

/* Start redis-server on a free 127.0.0.1 port (extra args NULL-terminated
 * array or NULL); returns when it answers PING. Dies with the test. */
void rs_start(redis_srv *s, const char *const *extra);
void rs_stop(redis_srv *s);
/* SIGKILL the server, keep its port; rs_restart brings it back there. */
void rs_kill(redis_srv *s);
void rs_restart(redis_srv *s);
/* A blocking connection for the test's own checks. */
redisContext *rs_connect(const redis_srv *s);
/* Run one command on a fresh blocking connection; caller frees. */
redisReply *rs_cmd(const redis_srv *s, const char *fmt, ...);
long long rs_int(const redis_srv *s, const char *fmt, ...);
/* 1 if the key exists. */
int rs_exists(const redis_srv *s, const char *key);
/* Lock keys ("bid_lock:mp:posting"), not fences, queues or done markers. */
long long rs_lock_count(const redis_srv *s);
/* Calls of every command the server ran, or only of `only` ("evalsha"),
 * from INFO commandstats; commands run inside scripts count too, the
 * test's own INFO calls do not. */
long long rs_calls(const redis_srv *s, const char *only);
/* Subscribers of a pub/sub channel (PUBSUB NUMSUB). */
long long rs_subscribers(const redis_srv *s, const char *channel);
/* A loopback port where nothing listens. */
int unused_port(void);

/* ---- host loop ------------------------------------------------------------ */

/* Which loop this build runs on: -DBL_TEST_LOOP_LIBEV (default), _LIBUV or
 * _EPOLL picks the adapter; the suites are the same. */
typedef struct tloop tloop;
const char *tl_name(void); /* "libev", "libuv", "epoll" */
tloop *tl_new(void);
const bl_loop *tl_bl(tloop *t);
/* Run the loop until *counter >= target or timeout_ms passed; returns 1 if
 * the target was reached. */
int tl_wait(tloop *t, const int *counter, int target, int timeout_ms);
/* Run the loop until done(arg) says 1, looking after every turn (about
 * every 5 ms), or timeout_ms passed; returns 1 if it did. For conditions
 * that are not a counter: a key gone from the server, a state reached. */
int tl_wait_for(tloop *t, int (*done)(void *arg), void *arg, int timeout_ms);
/* Run the loop for ms milliseconds. */
void tl_run_for(tloop *t, int ms);
/* 1 if nothing is left on the loop: no watched fd or connection, no armed
 * timer (libuv: no handle at all, closed or not). Turns the loop once. */
int tl_idle(tloop *t);
void tl_free(tloop *t);

/* ---- managers ------------------------------------------------------------- */

/* A manager on t for the server's port, defaults otherwise (cfg may be NULL). */
bl_manager *mk_manager(tloop *t, int port, const bl_config *cfg);
/* Close m and run the loop until its close callback ran (asserts it does). */
void close_manager(tloop *t, bl_manager *m);
/* A bl_close_cb that counts into the int that data points to. */
void on_closed(bl_manager *m, void *data);

/* ---- fixtures --------------------------------------------------------------
 * The suite's loop T and server srv, for .init / .fini of TestSuite:
 *   fx_loop_init      T only (the test starts the servers it needs)
 *   fx_redis_init     srv only (processes talk to it, not a loop)
 *   fx_redis_loop_init  srv, then T
 * Criterion runs each test in its own process, so each test gets new ones. */
extern tloop *T;
extern redis_srv srv;
void fx_loop_init(void);
void fx_loop_fini(void);
void fx_redis_init(void);
void fx_redis_fini(void);
void fx_redis_loop_init(void);
void fx_redis_loop_fini(void);

/* ---- clock and memory ----------------------------------------------------- */

uint64_t mono_ms(void);
uint64_t mono_us(void);

/* Under ASan, fail the test on memory nobody can reach any more (a leak is
 * only printed otherwise); without ASan nothing: tests/valgrind checks the
 * plain build. */
void assert_no_leaks(void);

#endif
