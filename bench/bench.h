/* bench.h - the W1-W5 workloads of shared/BENCH.md as functions, shared by
 * the bidlock-bench program and tests/test_bench.c.
 *
 * Every workload talks to a redis-server on 127.0.0.1:port that somebody
 * else started (bench_srv_start, or the test harness). Timings come from
 * CLOCK_MONOTONIC in microseconds; processes on one machine share that clock,
 * so W3 compares stamps taken in different processes directly.
 *
 * Blocking is allowed here, outside the measured sections (this is the
 * benchmark, not the library): waiting for children, reading INFO.
 * Workload children block nowhere while they are measured: the 1 ms hold of
 * W3 and the 0.2 ms sleep of W4 are loop timers. */
#ifndef BIDLOCK_BENCH_H
#define BIDLOCK_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "bidlock.h"
#include "rsrv.h"

/* Names and keys exactly as BENCH.md has them. */
#define BENCH_MARKETPLACE "bench"
#define BENCH_HOT "hot"                        /* bid_lock:bench:hot (W3, W4) */
#define BENCH_JOB_FMT "job_%d"                 /* bid_lock:bench:job_<i> (W1, W2) */
#define BENCH_W6_FMT "w6_%d"                   /* bid_lock:bench:w6_<k> (W6) */
#define BENCH_TTL_MS 30000                     /* "TTL 30 s unless stated" */
#define BENCH_W4_COUNTER "bid_lock_bench:w4:counter" /* outside the lock prefix */

uint64_t bench_now_us(void);
/* CPU time this process used so far, user + system, in seconds. */
double bench_cpu_s(void);

/* ---- server.c: a private redis-server, blocking helpers, the limit ------- */

/* A private redis-server on a free 127.0.0.1 port (tests/rsrv: --save ''
 * --appendonly no --bind 127.0.0.1); it dies with this process
 * (PR_SET_PDEATHSIG). bench_srv_start returns 0 once it answers PING, else
 * -1 with a message on stderr. */
typedef rsrv bench_srv;
int bench_srv_start(bench_srv *s);
void bench_srv_stop(bench_srv *s);

/* FLUSHALL + CONFIG RESETSTAT. 0 or -1. */
int bench_reset(int port);
int bench_del(int port, const char *key);
/* GET key as a number (0 if missing); -1 on error. */
long long bench_get_int(int port, const char *key);
/* "7.0.15" etc. into buf. */
int bench_redis_version(int port, char *buf, size_t len);
/* SCRIPT LOAD of bidlock's script `which` (BL_SCRIPT_*) into sha[41]. */
int bench_script_load(int port, int which, char sha[41]);

/* INFO commandstats, summed: every command the server ran, including the
 * ones Lua scripts call, except INFO itself (the bench's own probe). */
typedef struct bench_cmdstats {
    uint64_t total;
    uint64_t evalsha, eval, subscribe, unsubscribe, publish, zrem;
    uint64_t get, pexpire; /* W5: what the renewal scripts run inside */
} bench_cmdstats;
int bench_cmdstats_read(int port, bench_cmdstats *out);

/* redis-benchmark -n n -c 1 -P pipeline [-r 100000000] <command...>:
 * requests per second, or a negative value on failure. */
double bench_redis_benchmark(int port, int n, int pipeline, const char *command);
/* The same with extra options before the command ("--tls --cacert F"). */
double bench_redis_benchmark_x(int port, int n, int pipeline, const char *extra,
                               const char *command);

/* ---- report.c: percentiles and run-set summaries -------------------------- */

/* Nearest-rank percentile (0 < p <= 100) of v[0..n); sorts v in place.
 * 0 for n == 0. */
double bench_pct(double *v, size_t n, double p);
/* Median/min/max of n values (v is not changed). */
typedef struct bench_mmm {
    double median, min, max;
} bench_mmm;
bench_mmm bench_summary(const double *v, int n);

/* ---- workloads.c ---------------------------------------------------------------- */

/* Settings a workload runs with: bl_config_init defaults (what a user gets),
 * or the documented tuned set (bench/README in docs/BENCHMARKS.md). */
/* LEAN: the defaults without fencing tokens and done markers. */
enum bench_settings { BENCH_DEFAULT = 0, BENCH_TUNED = 1, BENCH_LEAN = 2 };
void bench_config(bl_config *cfg, int port, enum bench_settings s);

typedef struct w1_result {
    int cycles, errors;
    double cycles_per_s;
    double acquire_us_p50, acquire_us_p99, release_us_p50, release_us_p99;
} w1_result;
/* The W1 yardstick without bidlock: one hiredis async connection on the same
 * kind of loop, `cycles` x (command A, then command B), each awaited.
 *  RAW_SET_EVALSHA: SET key holder NX PX 30000, then EVALSHA of bidlock's
 *                   release script (held path: compare, ZPOPMIN, DEL).
 *  RAW_SCRIPTS:     EVALSHA of bidlock's acquire script, then its release
 *                   script: bidlock's exact server work, no library.
 *  RAW_SYNC_SET_EVALSHA: like the first, blocking hiredis (no loop). */
enum raw_mode { RAW_SET_EVALSHA, RAW_SCRIPTS, RAW_SYNC_SET_EVALSHA, RAW_MODES };
typedef struct raw_result {
    int cycles, errors;
    double cycles_per_s;
} raw_result;
int bench_raw(int port, enum raw_mode mode, int cycles, raw_result *out);

/* W1 uncontended-serial: `cycles` x (acquire job_i, then release it), each
 * awaited. With raw != NULL (raw[RAW_MODES]), one connection per raw mode
 * takes turns with the manager in the same process, `chunk` cycles each, so
 * the ratios compare loops that saw the same machine (other load comes and
 * goes within seconds here). cycles_per_s counts only each side's turns. */
int bench_w1(const bl_config *cfg, int cycles, int chunk, w1_result *out, raw_result *raw);

typedef struct w2_result {
    int cycles, errors;
    double cycles_per_s, cycle_us_p50, cycle_us_p99;
    uint64_t redirects, map_refreshes; /* the manager's (W7, Redis Cluster) */
    double client_cpu_s;               /* this process, user + system, while it ran */
} w2_result;
/* W2 uncontended-concurrent: `inflight` cycles at once, `cycles` in all,
 * over distinct keys job_0 .. job_<cycles-1>. */
int bench_w2(const bl_config *cfg, int cycles, int inflight, w2_result *out);

typedef struct w3_params {
    int procs;       /* 8 */
    int target;      /* 2000 acquisitions in total */
    double hold_ms;  /* 1 */
    double max_s;    /* 15 */
    int64_t wait_ms; /* 10000 */
    int use_lock;    /* 0: CONTROL, "acquire" returns at once (proves the
                        exclusion-violation count can fire) */
} w3_params;
void w3_params_init(w3_params *p);

typedef struct w3_result {
    int procs;
    int acquisitions, failed, not_held;
    double elapsed_s, acq_per_s;
    /* hand-off, ms: [def A/B][cross-process / all pairs][p50/p99] */
    double handoff_ms[2][2][2];
    int handoffs_cross, handoffs_total;
    int exclusion_violations; /* B < 0 */
    double wait_ms_p50, wait_ms_p99, wait_ms_max;
    int per_proc_min, per_proc_max;
    double share_min, share_max, share_min_over_max;
    double hold_ms_p50; /* measured hold: acquired callback -> release issued */
    /* Redis commands per acquisition */
    uint64_t client_cmds, server_cmds, evalsha_calls;
    uint64_t attempts, release_ops; /* sums of bl_stats: scripts the managers sent */
    uint64_t extend_ops;            /* ...the takeovers of direct hand-offs (extends) */
    uint64_t direct_handoffs;       /* waiters the release itself made holders */
    double client_per_acq, server_per_acq;
    uint64_t wakeups, handoffs_lib; /* sums of bl_stats.wakeups, .handoffs */
    int child_failures; /* children that did not exit 0 */
} w3_result;
/* W3 contended-handoff: p->procs processes (fork) contend for bid_lock:bench:hot. */
int bench_w3(const bl_config *cfg, const w3_params *p, w3_result *out);

typedef struct w4_params {
    int procs, iterations;
    double sleep_ms;
    int use_lock; /* 0: the CONTROL run, which skips the lock */
} w4_params;
void w4_params_init(w4_params *p);

typedef struct w4_result {
    int pass;
    long long counter;       /* final value */
    long long increments;    /* GET+SET rounds done (= successful acquisitions with the lock) */
    long long acquisitions;  /* successful acquisitions */
    long long failed;        /* failed acquisitions */
    long long lost_updates;  /* increments - counter */
    long long errors;        /* Redis errors on GET/SET, failed releases */
    double elapsed_s, sleep_ms_p50;
    int child_failures;
} w4_result;
/* W4 safety: procs x iterations of (acquire hot, GET, sleep, SET+1, release). */
int bench_w4(const bl_config *cfg, const w4_params *p, w4_result *out);

typedef struct w5_params {
    int locks;       /* 10,000 */
    int64_t ttl_ms;  /* 3000 */
    double hold_s;   /* 30 */
    int batch;       /* leases per renewal call; 1 = CONTROL: no batching */
    int steal;       /* CONTROL: delete this many lock keys half-way (must be lost) */
} w5_params;
void w5_params_init(w5_params *p);

typedef struct w5_result {
    int locks, held, acquire_errors;
    double elapsed_s;          /* the measured hold, after every lock was granted */
    uint64_t renewals;         /* bl_stats.extends in the hold */
    int renewals_min;          /* the least renewed lock's count */
    double renewals_per_lock;  /* renewals / locks */
    double max_gap_ms;         /* longest time between one lock's renewals (grant to
                                * first included), from the lease each answer set */
    int lost;                  /* on_lost calls */
    /* server side, INFO commandstats deltas over the hold */
    uint64_t server_cmds;      /* every command, those inside scripts too */
    uint64_t script_calls;     /* EVALSHA + EVAL */
    uint64_t client_cmds;      /* server_cmds less the GET and PEXPIRE the scripts ran */
    double server_cmds_per_s, client_cmds_per_s, script_calls_per_s;
    double client_cpu_pct;     /* this process, user + system, over the hold */
} w5_result;
/* W5 many-leases: p->locks locks on distinct keys (bid_lock:bench:lease_<i>),
 * held with auto_extend on one manager for p->hold_s. */
int bench_w5(const bl_config *cfg, const w5_params *p, w5_result *out);

typedef struct w6_result {
    int requests, keys;
    /* heap (mallinfo2: in-use small chunks + mmapped blocks) added by the
     * requests once every one had its first busy answer, and per request */
    int heap_measurable;  /* 0: mallinfo2 sees no allocation (ASan, valgrind): ignore both */
    long long heap_delta;
    double heap_bytes_per_pending;
    int pending_measured; /* requests pending when the heap was read */
    int waiting_measured; /* ...of which between attempts (the rest had a retry out) */
    double setup_s;       /* bl_acquire x n until all were pending */
    /* release of each key by the holder -> the first grant on it */
    int wakes, wake_misses, release_errors;
    double wake_ms_p50, wake_ms_p99, wake_ms_max;
    int pending_at_close;
    double close_ms;      /* bl_manager_close -> its callback */
    uint64_t attempts, wakeups; /* the waiting manager's bl_stats before close */
    /* every request's callback: once each */
    int callbacks, twice, missing, granted, cancelled, other;
    int errors;
} w6_result;
/* W6 many-waiters: a second manager holds bid_lock:bench:w6_<k>, k < keys;
 * `requests` acquires (wait 60 s) spread over them on one manager; then the
 * holder releases the keys one by one, then the manager closes. 0 when
 * every callback came exactly once and nothing failed. */
int bench_w6(const bl_config *cfg, int requests, int keys, w6_result *out);
/* The same with the requests' wait (the CONTROL of tests/test_bench.c: 0,
 * so nothing is left pending to wake). */
int bench_w6_opts(const bl_config *cfg, int requests, int keys, int64_t wait_ms, w6_result *out);

#endif
