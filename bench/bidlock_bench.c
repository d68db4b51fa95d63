/* bidlock-bench - the W1-W8 workloads of shared/BENCH.md.
 *
 *   bidlock-bench [--workload W1|W2|W3|W4|W5|W6|W7|W8|all] [--runs N] [--tuned]
 *                 [--lean] [--quick] [--no-lock] [--no-batch] [--steal N] [--no-limit]
 *                 [--port P] [--waiters N] [--keys K]
 *
 * Starts its own redis-server on a free 127.0.0.1 port (unless --port),
 * measures the limit with redis-benchmark, then runs each workload --runs
 * times (3 by default) with bl_config_init defaults, and W3 once more with
 * the tuned settings when --tuned, and W1 and W2 once more without fencing
 * tokens and done markers when --lean (bl_config.fencing_tokens and
 * done_markers 0: "settings":"lean"). One JSON object per run-set on stdout:
 * every figure as {"median","min","max"} over the runs, and "vs_limit", the
 * figure as a ratio to what redis-benchmark (or a raw hiredis loop) reaches.
 * Progress goes to stderr.
 *
 *   --quick     tiny sizes (tests, smoke runs): not BENCH.md's workloads
 *   --no-lock   W4 as a CONTROL run that skips the lock (must fail)
 *   --no-batch  W5 as a CONTROL run that renews each lease in its own call
 *   --steal N   W5 as a CONTROL run that deletes N lock keys half-way (lost)
 *   --locks N   W5 size (analysis runs); not BENCH.md's workloads
 *   --no-limit  skip redis-benchmark (ratios are then left out)
 *   --port P    use a redis-server already listening on 127.0.0.1:P
 *   --cycles N  W1/W2 size (profiling runs); not BENCH.md's workloads
 *   --procs N   W3/W4 processes (analysis runs); not BENCH.md's workloads
 *   --waiters N, --keys K
 *               W6 with N requests on K keys only (K = 1: one hot key);
 *               without them W6 runs BENCH.md's n = 10,000 and n = 100,000
 *               on 1,000 keys
 *
 * W6 (not in "all": the 100,000 run takes longer than the others together)
 * prints one line per size.
 *
 * W7 (W2 on a 3 masters + 3 replicas Redis Cluster it starts itself, and
 * on the one node above, in the same run) runs only when asked for: "all"
 * is W1-W5 (W5 holds its leases for 30 s a run).
 * W8 (not in "all": it starts a server of its own, with a TLS port beside
 * the plaintext one and certificates made with the openssl command) runs
 * W1 and W2 in plaintext and over TLS, taking turns within each run, and
 * redis-benchmark with and without --tls as the limit.
 *
 * Exit status 0 when every workload ran cleanly and W4 passed. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/crypto.h>

#include "backend.h"
#include "bed_cluster.h"
#include "bench.h"
#include "bench_loop.h"
#include "scripts.h"

#define MAX_RUNS 50
#define MAX_FIGS 64

/* ---- figures: one series of values per JSON path, over the runs ---------- */

typedef struct series {
    char path[64]; /* "handoff_ms.A.cross.p50" */
    double v[MAX_RUNS];
    int n;
} series;

typedef struct figset {
    series s[MAX_FIGS];
    int n;
} figset;

static series *find(figset *f, const char *path)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->s[i].path, path) == 0)
            return &f->s[i];
    return NULL;
}

static void fig(figset *f, const char *path, double v)
{
    series *s = find(f, path);
    if (!s && f->n < MAX_FIGS) {
        s = &f->s[f->n++];
        snprintf(s->path, sizeof s->path, "%s", path);
    }
    if (s && s->n < MAX_RUNS)
        s->v[s->n++] = v;
}

static double med(figset *f, const char *path)
{
    series *s = find(f, path);
    return s ? bench_summary(s->v, s->n).median : 0;
}

static void jnum(FILE *o, double v)
{
    if (v != v || v > 1e300 || v < -1e300)
        fputs("null", o);
    else if (v == (double)(long long)v && v < 1e15 && v > -1e15)
        fprintf(o, "%lld", (long long)v);
    else
        fprintf(o, "%.6g", v);
}

/* Emit the series as members of the object being printed, nested by path
 * ("a.b.c" -> "a":{"b":{"c":{...}}}); paths sharing a prefix must have been
 * added one after another. */
static void emit_figs(FILE *o, const figset *f)
{
    enum { MAXD = 8 };
    char open[MAXD][32];
    int first[MAXD + 1] = {0}; /* level 0 is the caller's object: not empty */
    int depth = 0;
    for (int i = 0; i < f->n; i++) {
        char tmp[64], *parts[MAXD];
        int np = 0;
        snprintf(tmp, sizeof tmp, "%s", f->s[i].path);
        for (char *save = NULL, *t = strtok_r(tmp, ".", &save); t && np < MAXD;
             t = strtok_r(NULL, ".", &save))
            parts[np++] = t;
        int common = 0;
        while (common < depth && common < np - 1 && strcmp(open[common], parts[common]) == 0)
            common++;
        for (; depth > common; depth--)
            fputc('}', o);
        for (; depth < np - 1; depth++) {
            fprintf(o, "%s\"%s\":{", first[depth] ? "" : ",", parts[depth]);
            first[depth] = 0;
            snprintf(open[depth], sizeof open[depth], "%s", parts[depth]);
            first[depth + 1] = 1;
        }
        fprintf(o, "%s\"%s\":", first[depth] ? "" : ",", parts[np - 1]);
        first[depth] = 0;
        bench_mmm m = bench_summary(f->s[i].v, f->s[i].n);
        fputs("{\"median\":", o);
        jnum(o, m.median);
        fputs(",\"min\":", o);
        jnum(o, m.min);
        fputs(",\"max\":", o);
        jnum(o, m.max);
        fputc('}', o);
    }
    for (; depth > 0; depth--)
        fputc('}', o);
}

/* ---- options --------------------------------------------------------------- */

typedef struct opts {
    int w[9]; /* w[1..8] */
    int runs, tuned, lean, quick, no_lock, no_limit, port, cycles, procs;
    int no_batch, steal, locks, waiters, keys;
} opts;

static void usage(void)
{
    fprintf(stderr,
            "usage: bidlock-bench [--workload W1|W2|W3|W4|W5|W6|W7|W8|all] [--runs N]\n"
            "                     [--tuned] [--lean] [--quick] [--no-lock] [--no-batch]\n"
            "                     [--steal N] [--no-limit] [--port P] [--cycles N] [--procs N]\n"
            "                     [--locks N] [--waiters N] [--keys K]\n");
}

static int parse(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof *o);
    o->runs = 3;
    int any = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--workload") == 0 && i + 1 < argc) {
            const char *w = argv[++i];
            if (strcmp(w, "all") == 0)
                o->w[1] = o->w[2] = o->w[3] = o->w[4] = o->w[5] = 1;
            else if ((w[0] == 'W' || w[0] == 'w') &&
                     w[1] >= '1' && w[1] <= '8' && !w[2])
                o->w[w[1] - '0'] = 1;
            else
                return -1;
            any = 1;
        } else if (strcmp(a, "--runs") == 0 && i + 1 < argc) {
            o->runs = atoi(argv[++i]);
            if (o->runs < 1 || o->runs > MAX_RUNS)
                return -1;
        } else if (strcmp(a, "--port") == 0 && i + 1 < argc) {
            o->port = atoi(argv[++i]);
            if (o->port < 1 || o->port > 65535)
                return -1;
        } else if (strcmp(a, "--cycles") == 0 && i + 1 < argc) {
            o->cycles = atoi(argv[++i]);
            if (o->cycles < 1)
                return -1;
        } else if (strcmp(a, "--procs") == 0 && i + 1 < argc) {
            o->procs = atoi(argv[++i]);
            if (o->procs < 1 || o->procs > 64)
                return -1;
        } else if (strcmp(a, "--steal") == 0 && i + 1 < argc) {
            o->steal = atoi(argv[++i]);
            if (o->steal < 1)
                return -1;
        } else if (strcmp(a, "--locks") == 0 && i + 1 < argc) {
            o->locks = atoi(argv[++i]);
            if (o->locks < 1)
                return -1;
        } else if (strcmp(a, "--no-batch") == 0) {
            o->no_batch = 1;
        } else if (strcmp(a, "--waiters") == 0 && i + 1 < argc) {
            o->waiters = atoi(argv[++i]);
            if (o->waiters < 1)
                return -1;
        } else if (strcmp(a, "--keys") == 0 && i + 1 < argc) {
            o->keys = atoi(argv[++i]);
            if (o->keys < 1)
                return -1;
        } else if (strcmp(a, "--tuned") == 0) {
            o->tuned = 1;
        } else if (strcmp(a, "--lean") == 0) {
            o->lean = 1;
        } else if (strcmp(a, "--quick") == 0) {
            o->quick = 1;
        } else if (strcmp(a, "--no-lock") == 0) {
            o->no_lock = 1;
        } else if (strcmp(a, "--no-limit") == 0) {
            o->no_limit = 1;
        } else {
            return -1;
        }
    }
    if (!any)
        o->w[1] = o->w[2] = o->w[3] = o->w[4] = o->w[5] = 1;
    return 0;
}

/* ---- the limit ---------------------------------------------------------------- */

typedef struct limit {
    int have;
    double set_p1, set_p16, evalsha_p1, evalsha_p16; /* medians, requests/s */
    double cycle_p1, cycle_p16;                      /* SET + EVALSHA, cycles/s */
} limit;

static double cycle(double a, double b)
{
    return a > 0 && b > 0 ? 1.0 / (1.0 / a + 1.0 / b) : 0;
}

static int run_limit(const opts *o, int port, limit *L)
{
    memset(L, 0, sizeof *L);
    char sha[41];
    if (bench_reset(port) != 0 || bench_script_load(port, BL_SCRIPT_RELEASE, sha) != 0)
        return -1;
    /* The release script's normal not-held path: the lock key is absent, so
     * it compares and returns 0 (one GET inside Lua). */
    char evalsha[256];
    snprintf(evalsha, sizeof evalsha,
             "EVALSHA %s 3 bid_lock:bench:hot {bid_lock:bench:hot}:done {bid_lock:bench:hot}:q "
             "bench-limit 0 250",
             sha);
    const char *set = "SET bench:__rand_int__ v NX PX 30000";
    int n = o->quick ? 5000 : 200000;
    figset f = {0};
    for (int r = 0; r < o->runs; r++) {
        fprintf(stderr, "limit run %d/%d: redis-benchmark -n %d ...\n", r + 1, o->runs, n);
        double v[4] = {bench_redis_benchmark(port, n, 1, set),
                       bench_redis_benchmark(port, n, 16, set),
                       bench_redis_benchmark(port, n, 1, evalsha),
                       bench_redis_benchmark(port, n, 16, evalsha)};
        if (v[0] <= 0 || v[1] <= 0 || v[2] <= 0 || v[3] <= 0)
            return -1;
        fig(&f, "set_nx_px.P1_rps", v[0]);
        fig(&f, "set_nx_px.P16_rps", v[1]);
        fig(&f, "evalsha_release.P1_rps", v[2]);
        fig(&f, "evalsha_release.P16_rps", v[3]);
        fig(&f, "cycle_set_evalsha.P1_per_s", cycle(v[0], v[2]));
        fig(&f, "cycle_set_evalsha.P16_per_s", cycle(v[1], v[3]));
        fprintf(stderr, "  SET P1 %.0f/s P16 %.0f/s, EVALSHA P1 %.0f/s P16 %.0f/s\n", v[0], v[1],
                v[2], v[3]);
        bench_reset(port);
        bench_script_load(port, BL_SCRIPT_RELEASE, sha);
    }
    L->have = 1;
    L->set_p1 = med(&f, "set_nx_px.P1_rps");
    L->set_p16 = med(&f, "set_nx_px.P16_rps");
    L->evalsha_p1 = med(&f, "evalsha_release.P1_rps");
    L->evalsha_p16 = med(&f, "evalsha_release.P16_rps");
    L->cycle_p1 = cycle(L->set_p1, L->evalsha_p1);
    L->cycle_p16 = cycle(L->set_p16, L->evalsha_p16);
    printf("{\"workload\":\"limit\",\"name\":\"redis-benchmark\",\"runs\":%d,"
           "\"command\":{\"set\":\"%s\",\"evalsha\":\"EVALSHA <release sha> 3 "
           "bid_lock:bench:hot {bid_lock:bench:hot}:done {bid_lock:bench:hot}:q bench-limit 0 "
           "250\"},\"n\":%d,\"c\":1,\"r\":100000000",
           o->runs, set, n);
    emit_figs(stdout, &f);
    printf("}\n");
    fflush(stdout);
    return 0;
}

/* "vs_limit": ratio of a median to a limit figure (skipped without one). */
static void ratio(FILE *out, int *first, const char *name, double v, double basis)
{
    if (basis <= 0)
        return;
    fprintf(out, "%s\"%s\":", *first ? "" : ",", name);
    jnum(out, v / basis);
    *first = 0;
}

/* failed_runs: runs that reported an error; their figures are still in the
 * medians, so a non-zero value means: do not quote this line. */
static void header(const char *w, const char *name, const char *settings, int runs, int failed)
{
    printf("{\"workload\":\"%s\",\"name\":\"%s\",\"settings\":\"%s\",\"runs\":%d,"
           "\"failed_runs\":%d,\"loop_backend\":\"%s\"",
           w, name, settings, runs, failed, bench_loop_backend());
}

/* ---- workloads -------------------------------------------------------------------- */

static const char *settings_name(enum bench_settings s)
{
    return s == BENCH_TUNED ? "tuned" : s == BENCH_LEAN ? "lean" : "default";
}

static int run_w1(const opts *o, int port, const limit *L, enum bench_settings s)
{
    int cycles = o->cycles ? o->cycles : o->quick ? 1000 : 20000, bad = 0;
    bl_config cfg;
    bench_config(&cfg, port, s);
    figset f = {0};
    for (int r = 0; r < o->runs; r++) {
        /* The yardsticks take turns with W1 (1000 cycles each). */
        raw_result raw[RAW_MODES];
        w1_result w;
        bench_reset(port);
        bad += bench_w1(&cfg, cycles, cycles < 1000 ? cycles : 1000, &w, raw) != 0;
        fig(&f, "cycles", w.cycles);
        fig(&f, "errors", w.errors);
        fig(&f, "cycles_per_s", w.cycles_per_s);
        fig(&f, "acquire_us.p50", w.acquire_us_p50);
        fig(&f, "acquire_us.p99", w.acquire_us_p99);
        fig(&f, "release_us.p50", w.release_us_p50);
        fig(&f, "release_us.p99", w.release_us_p99);
        fig(&f, "raw_hiredis.set_evalsha_cycles_per_s", raw[RAW_SET_EVALSHA].cycles_per_s);
        fig(&f, "raw_hiredis.scripts_cycles_per_s", raw[RAW_SCRIPTS].cycles_per_s);
        fig(&f, "raw_hiredis.sync_set_evalsha_cycles_per_s",
            raw[RAW_SYNC_SET_EVALSHA].cycles_per_s);
        fig(&f, "w1_over_raw_set_evalsha",
            raw[0].cycles_per_s > 0 ? w.cycles_per_s / raw[0].cycles_per_s : 0);
        fprintf(stderr,
                "W1 (%s) run %d/%d: %.0f cycles/s (raw SET+EVALSHA %.0f, raw scripts %.0f, sync "
                "%.0f), acquire p50 %.0f us, release p50 %.0f us%s\n",
                settings_name(s), r + 1, o->runs, w.cycles_per_s, raw[0].cycles_per_s, raw[1].cycles_per_s,
                raw[2].cycles_per_s, w.acquire_us_p50, w.release_us_p50,
                w.errors ? " ERRORS" : "");
    }
    header("W1", "uncontended-serial", settings_name(s), o->runs, bad);
    printf(",\"processes\":1,\"connections\":1,\"cycles_requested\":%d,\"key\":\"bid_lock:bench:"
           "job_<i>\",\"ttl_ms\":%d,\"raw_interleaved_chunk\":1000",
           cycles, BENCH_TTL_MS);
    emit_figs(stdout, &f);
    printf(",\"vs_limit\":{");
    int first = 1;
    ratio(stdout, &first, "cycles_per_s_over_raw_hiredis_set_evalsha", med(&f, "cycles_per_s"),
          med(&f, "raw_hiredis.set_evalsha_cycles_per_s"));
    ratio(stdout, &first, "cycles_per_s_over_raw_hiredis_scripts", med(&f, "cycles_per_s"),
          med(&f, "raw_hiredis.scripts_cycles_per_s"));
    if (L->have) {
        ratio(stdout, &first, "cycles_per_s_over_cycle_P1", med(&f, "cycles_per_s"), L->cycle_p1);
        ratio(stdout, &first, "acquire_us_p50_over_set_P1_us", med(&f, "acquire_us.p50"),
              1e6 / L->set_p1);
        ratio(stdout, &first, "acquire_us_p99_over_set_P1_us", med(&f, "acquire_us.p99"),
              1e6 / L->set_p1);
        ratio(stdout, &first, "release_us_p50_over_evalsha_P1_us", med(&f, "release_us.p50"),
              1e6 / L->evalsha_p1);
        ratio(stdout, &first, "release_us_p99_over_evalsha_P1_us", med(&f, "release_us.p99"),
              1e6 / L->evalsha_p1);
    }
    printf("}}\n");
    fflush(stdout);
    return bad;
}

static int run_w2(const opts *o, int port, const limit *L, enum bench_settings s)
{
    int cycles = o->cycles ? o->cycles : o->quick ? 2000 : 50000, inflight = 100, bad = 0;
    bl_config cfg;
    bench_config(&cfg, port, s);
    figset f = {0};
    for (int r = 0; r < o->runs; r++) {
        w2_result w;
        bench_reset(port);
        bad += bench_w2(&cfg, cycles, inflight, &w) != 0;
        fig(&f, "cycles", w.cycles);
        fig(&f, "errors", w.errors);
        fig(&f, "cycles_per_s", w.cycles_per_s);
        fig(&f, "cycle_us.p50", w.cycle_us_p50);
        fig(&f, "cycle_us.p99", w.cycle_us_p99);
        fprintf(stderr, "W2 (%s) run %d/%d: %.0f cycles/s, cycle p50 %.0f us p99 %.0f us%s\n",
                settings_name(s), r + 1, o->runs, w.cycles_per_s, w.cycle_us_p50, w.cycle_us_p99,
                w.errors ? " ERRORS" : "");
    }
    header("W2", "uncontended-concurrent", settings_name(s), o->runs, bad);
    printf(",\"processes\":1,\"connections\":1,\"in_flight\":%d,\"cycles_requested\":%d,"
           "\"key\":\"bid_lock:bench:job_<i>\",\"ttl_ms\":%d",
           inflight, cycles, BENCH_TTL_MS);
    emit_figs(stdout, &f);
    printf(",\"vs_limit\":{");
    int first = 1;
    if (L->have) {
        ratio(stdout, &first, "cycles_per_s_over_cycle_P16", med(&f, "cycles_per_s"), L->cycle_p16);
        ratio(stdout, &first, "cycles_per_s_over_cycle_P1", med(&f, "cycles_per_s"), L->cycle_p1);
    }
    printf("}}\n");
    fflush(stdout);
    return bad;
}

/* W6 at one size: one line. */
static int run_w6_size(const opts *o, int port, int n, int keys)
{
    int bad = 0;
    bl_config cfg;
    bench_config(&cfg, port, BENCH_DEFAULT);
    figset f = {0};
    for (int r = 0; r < o->runs; r++) {
        w6_result w;
        bench_reset(port);
        bad += bench_w6(&cfg, n, keys, &w) != 0;
        fig(&f, "heap_measurable", w.heap_measurable);
        fig(&f, "heap_bytes_per_pending", w.heap_bytes_per_pending);
        fig(&f, "heap_delta_bytes", (double)w.heap_delta);
        fig(&f, "pending_measured", w.pending_measured);
        fig(&f, "waiting_measured", w.waiting_measured);
        fig(&f, "setup_s", w.setup_s);
        fig(&f, "wake_ms.p50", w.wake_ms_p50);
        fig(&f, "wake_ms.p99", w.wake_ms_p99);
        fig(&f, "wake_ms.max", w.wake_ms_max);
        fig(&f, "wakes", w.wakes);
        fig(&f, "wake_misses", w.wake_misses);
        fig(&f, "pending_at_close", w.pending_at_close);
        fig(&f, "close_ms", w.close_ms);
        fig(&f, "close_us_per_pending",
            w.pending_at_close ? w.close_ms * 1000.0 / w.pending_at_close : 0);
        fig(&f, "attempts_per_request", (double)w.attempts / n);
        fig(&f, "callbacks.total", w.callbacks);
        fig(&f, "callbacks.twice", w.twice);
        fig(&f, "callbacks.missing", w.missing);
        fig(&f, "callbacks.granted", w.granted);
        fig(&f, "callbacks.cancelled", w.cancelled);
        fig(&f, "callbacks.other", w.other);
        fig(&f, "errors", w.errors);
        fprintf(stderr,
                "W6 run %d/%d n=%d keys=%d: %.0f B/pending, wake p50 %.2f ms p99 %.2f ms, "
                "close %.1f ms with %d pending%s\n",
                r + 1, o->runs, n, keys, w.heap_bytes_per_pending, w.wake_ms_p50, w.wake_ms_p99,
                w.close_ms, w.pending_at_close, w.errors || w.twice || w.missing ? " ERRORS" : "");
    }
    header("W6", "many-waiters", "default", o->runs, bad);
    printf(",\"processes\":1,\"managers\":2,\"requests\":%d,\"keys\":%d,"
           "\"key\":\"bid_lock:bench:w6_<k>\",\"wait_ms\":60000,\"heap\":\"mallinfo2 "
           "uordblks+hblkhd\"",
           n, keys);
    emit_figs(stdout, &f);
    printf("}\n");
    fflush(stdout);
    return bad;
}

/* W6: BENCH.md's sizes, or the one asked for. */
static int run_w6(const opts *o, int port)
{
    if (o->waiters || o->keys) {
        int n = o->waiters ? o->waiters : o->quick ? 2000 : 100000;
        int k = o->keys ? o->keys : n < 1000 ? n : 1000;
        return run_w6_size(o, port, n, k > n ? n : k);
    }
    if (o->quick)
        return run_w6_size(o, port, 2000, 20);
    return run_w6_size(o, port, 10000, 1000) | run_w6_size(o, port, 100000, 1000);
}

/* INFO cpu of a server: used_cpu_sys + used_cpu_user, seconds; -1 if it
 * does not answer. */
static double server_cpu(int port)
{
    redisReply *r = cb_cmd(port, "INFO cpu");
    double v = -1;
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *s = strstr(r->str, "used_cpu_sys:"), *u = strstr(r->str, "used_cpu_user:");
        if (s && u)
            v = atof(s + 13) + atof(u + 14);
    }
    if (r)
        freeReplyObject(r);
    return v;
}

/* INFO cpu summed over the cluster's masters (masters = 1) or replicas. */
static double cluster_cpu(const cb_bed *b, int masters)
{
    double sum = 0;
    for (int i = 0; i < CB_NODES; i++) {
        redisReply *r = cb_cmd(b->node[i].port, "ROLE");
        int is_master = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                        r->element[0]->type == REDIS_REPLY_STRING &&
                        strcmp(r->element[0]->str, "master") == 0;
        if (r)
            freeReplyObject(r);
        if (is_master == masters)
            sum += server_cpu(b->node[i].port);
    }
    return sum;
}

static void flush_cluster(const cb_bed *b)
{
    for (int i = 0; i < CB_NODES; i++)
        freeReplyObject(cb_cmd(b->node[i].port, "FLUSHALL"));
}

/* W7: W2 (100 in flight, distinct keys) against one node and against a 3
 * masters + 3 replicas Redis Cluster on this machine, taking turns in the
 * same run: cycles/s, redirections seen, client CPU per cycle (this
 * process) and server CPU per cycle (INFO cpu deltas, every server of the
 * target, and split into masters and replicas). The cluster
 * runs twice: with its default (min_replicas auto: a WAIT per batch of
 * grants, as for Sentinel) and with min_replicas 0 (what one node does). */
static int run_w7(const opts *o, int port)
{
    int cycles = o->cycles ? o->cycles : o->quick ? 2000 : 50000, inflight = 100, bad = 0;
    cb_bed bed;
    fprintf(stderr, "W7: starting a 3 masters + 3 replicas cluster...\n");
    if (cb_start(&bed) != 0) {
        fprintf(stderr, "W7: cluster bed: %s\n", bed.err);
        return 1;
    }
    fprintf(stderr, "W7: cluster up in %.0f ms\n", bed.up_ms);
    char url[128];
    snprintf(url, sizeof url, "redis-cluster://127.0.0.1:%d,127.0.0.1:%d", bed.node[0].port,
             bed.node[1].port);
    enum { ONE, CL_AUTO, CL_ZERO, TARGETS };
    static const char *const names[TARGETS] = {"one_node", "cluster", "cluster_min_replicas_0"};
    figset f[TARGETS];
    memset(f, 0, sizeof f);
    for (int r = 0; r < o->runs; r++) {
        for (int t = 0; t < TARGETS; t++) {
            bl_config cfg;
            bench_config(&cfg, port, BENCH_DEFAULT);
            if (t != ONE) {
                cfg.url = url;
                if (t == CL_ZERO)
                    cfg.min_replicas = 0;
                flush_cluster(&bed);
            } else {
                bench_reset(port);
            }
            double m0 = t == ONE ? server_cpu(port) : cluster_cpu(&bed, 1);
            double r0 = t == ONE ? 0 : cluster_cpu(&bed, 0);
            w2_result w;
            bad += bench_w2(&cfg, cycles, inflight, &w) != 0;
            double m1 = t == ONE ? server_cpu(port) : cluster_cpu(&bed, 1);
            double r1 = t == ONE ? 0 : cluster_cpu(&bed, 0);
            double s0 = m0 + r0, s1 = m1 + r1;
            double n = w.cycles > 0 ? w.cycles : 1;
            fig(&f[t], "cycles", w.cycles);
            fig(&f[t], "errors", w.errors);
            fig(&f[t], "cycles_per_s", w.cycles_per_s);
            fig(&f[t], "cycle_us.p50", w.cycle_us_p50);
            fig(&f[t], "cycle_us.p99", w.cycle_us_p99);
            fig(&f[t], "redirects", (double)w.redirects);
            fig(&f[t], "map_refreshes", (double)w.map_refreshes);
            fig(&f[t], "client_cpu_us_per_cycle", w.client_cpu_s * 1e6 / n);
            fig(&f[t], "server_cpu_us_per_cycle", (s1 - s0) * 1e6 / n);
            fig(&f[t], "master_cpu_us_per_cycle", (m1 - m0) * 1e6 / n);
            fig(&f[t], "replica_cpu_us_per_cycle", (r1 - r0) * 1e6 / n);
            fprintf(stderr,
                    "W7 run %d/%d %s: %.0f cycles/s, p50 %.0f us, %llu redirections, client "
                    "%.1f us/cycle, servers %.1f us/cycle%s\n",
                    r + 1, o->runs, names[t], w.cycles_per_s, w.cycle_us_p50,
                    (unsigned long long)w.redirects, w.client_cpu_s * 1e6 / n,
                    (s1 - s0) * 1e6 / n, w.errors ? " ERRORS" : "");
        }
    }
    cb_stop(&bed);
    header("W7", "cluster-concurrent", "default", o->runs, bad);
    printf(",\"processes\":1,\"in_flight\":%d,\"cycles_requested\":%d,"
           "\"key\":\"bid_lock:bench:job_<i>\",\"ttl_ms\":%d,\"cluster\":\"3 masters + 3 "
           "replicas on this machine\",\"cores\":%ld",
           inflight, cycles, BENCH_TTL_MS, sysconf(_SC_NPROCESSORS_ONLN));
    for (int t = 0; t < TARGETS; t++) {
        printf(",\"%s\":{\"url_kind\":\"%s\"", names[t], t == ONE ? "redis" : "redis-cluster");
        emit_figs(stdout, &f[t]);
        printf("}");
    }
    printf("}\n");
    fflush(stdout);
    return bad;
}

static int run_w3(const opts *o, int port, const limit *L, enum bench_settings s)
{
    w3_params p;
    w3_params_init(&p);
    if (o->quick)
        p.target = 200;
    if (o->procs)
        p.procs = o->procs;
    bl_config cfg;
    bench_config(&cfg, port, s);
    const char *label = s == BENCH_TUNED ? "tuned" : "default";
    figset f = {0};
    int bad = 0;
    for (int r = 0; r < o->runs; r++) {
        w3_result w;
        bench_reset(port);
        bad += bench_w3(&cfg, &p, &w) != 0;
        fig(&f, "acquisitions", w.acquisitions);
        fig(&f, "failed_acquisitions", w.failed);
        fig(&f, "not_held_releases", w.not_held);
        fig(&f, "elapsed_s", w.elapsed_s);
        fig(&f, "acq_per_s", w.acq_per_s);
        static const char *def[2] = {"A", "B"}, *pairs[2] = {"cross", "all"},
                          *pc[2] = {"p50", "p99"};
        for (int d = 0; d < 2; d++)
            for (int x = 0; x < 2; x++)
                for (int q = 0; q < 2; q++) {
                    char path[64];
                    snprintf(path, sizeof path, "handoff_ms.%s.%s.%s", def[d], pairs[x], pc[q]);
                    fig(&f, path, w.handoff_ms[d][x][q]);
                }
        fig(&f, "handoffs.cross", w.handoffs_cross);
        fig(&f, "handoffs.total", w.handoffs_total);
        fig(&f, "exclusion_violations", w.exclusion_violations);
        fig(&f, "wait_ms.p50", w.wait_ms_p50);
        fig(&f, "wait_ms.p99", w.wait_ms_p99);
        fig(&f, "wait_ms.max", w.wait_ms_max);
        fig(&f, "per_process_acquisitions.min", w.per_proc_min);
        fig(&f, "per_process_acquisitions.max", w.per_proc_max);
        fig(&f, "share.min", w.share_min);
        fig(&f, "share.max", w.share_max);
        fig(&f, "share.min_over_max", w.share_min_over_max);
        fig(&f, "commands_per_acq.client", w.client_per_acq);
        fig(&f, "commands_per_acq.server", w.server_per_acq);
        fig(&f, "commands.client", (double)w.client_cmds);
        fig(&f, "commands.server", (double)w.server_cmds);
        fig(&f, "commands.evalsha_top_level", (double)w.evalsha_calls);
        fig(&f, "hold_ms_measured.p50", w.hold_ms_p50);
        fig(&f, "lib.wakeups", (double)w.wakeups);
        fig(&f, "lib.handoffs", (double)w.handoffs_lib);
        fig(&f, "lib.direct_handoffs", (double)w.direct_handoffs);
        fprintf(stderr,
                "W3 (%s) run %d/%d: %d acq in %.2f s = %.0f acq/s; hand-off B cross p50 %.3f "
                "p99 %.3f ms; share min/max %.2f; cmds/acq client %.2f server %.2f; "
                "violations %d%s\n",
                label, r + 1, o->runs, w.acquisitions, w.elapsed_s, w.acq_per_s,
                w.handoff_ms[1][0][0], w.handoff_ms[1][0][1], w.share_min_over_max,
                w.client_per_acq, w.server_per_acq, w.exclusion_violations,
                w.child_failures ? " CHILD FAILURES" : "");
    }
    header("W3", "contended-handoff", label, o->runs, bad);
    printf(",\"processes\":%d,\"key\":\"bid_lock:bench:hot\",\"hold_ms\":%g,"
           "\"acquire_wait_ms\":%lld,\"stop\":{\"max_s\":%g,\"acquisitions\":%d},"
           "\"ttl_ms\":%d,\"clock\":\"CLOCK_MONOTONIC\"",
           p.procs, p.hold_ms, (long long)p.wait_ms, p.max_s, p.target, BENCH_TTL_MS);
    printf(",\"config\":{\"backoff_initial_ms\":%u,\"backoff_max_ms\":%u,"
           "\"backoff_multiplier\":%g,\"handoff_ms\":%u,\"wake_on_release\":%d}",
           cfg.backoff_initial_ms, cfg.backoff_max_ms, cfg.backoff_multiplier, cfg.handoff_ms,
           cfg.wake_on_release);
    emit_figs(stdout, &f);
    printf(",\"vs_limit\":{");
    int first = 1;
    if (L->have) {
        double rtt_ms = 1e3 / L->evalsha_p1;
        ratio(stdout, &first, "acq_per_s_over_cycle_P1", med(&f, "acq_per_s"), L->cycle_p1);
        /* Issue 15's limit: one hold and one round trip per acquisition
         * (a hand-off that costs nothing but the release's answer). */
        double hold = med(&f, "hold_ms_measured.p50");
        if (hold > 0)
            ratio(stdout, &first, "acq_per_s_over_1_per_hold_plus_rtt", med(&f, "acq_per_s"),
                  1e3 / (hold + rtt_ms));
        ratio(stdout, &first, "handoff_ms_B_cross_p50_over_evalsha_P1_ms",
              med(&f, "handoff_ms.B.cross.p50"), rtt_ms);
        ratio(stdout, &first, "handoff_ms_B_cross_p99_over_evalsha_P1_ms",
              med(&f, "handoff_ms.B.cross.p99"), rtt_ms);
        ratio(stdout, &first, "handoff_ms_A_cross_p50_over_evalsha_P1_ms",
              med(&f, "handoff_ms.A.cross.p50"), rtt_ms);
        ratio(stdout, &first, "handoff_ms_A_cross_p99_over_evalsha_P1_ms",
              med(&f, "handoff_ms.A.cross.p99"), rtt_ms);
    }
    printf("}}\n");
    fflush(stdout);
    return bad;
}

static int run_w4(const opts *o, int port)
{
    w4_params p;
    w4_params_init(&p);
    if (o->quick)
        p.iterations = 50;
    if (o->procs)
        p.procs = o->procs;
    p.use_lock = !o->no_lock;
    bl_config cfg;
    bench_config(&cfg, port, BENCH_DEFAULT);
    figset f = {0};
    int passed = 0, bad = 0;
    for (int r = 0; r < o->runs; r++) {
        w4_result w;
        bench_reset(port);
        bad += bench_w4(&cfg, &p, &w) != 0;
        passed += w.pass;
        fig(&f, "final_counter", (double)w.counter);
        fig(&f, "acquisitions", (double)w.acquisitions);
        fig(&f, "failed_acquisitions", (double)w.failed);
        fig(&f, "increments", (double)w.increments);
        fig(&f, "lost_updates", (double)w.lost_updates);
        fig(&f, "errors", (double)w.errors);
        fig(&f, "elapsed_s", w.elapsed_s);
        fig(&f, "sleep_ms_measured.p50", w.sleep_ms_p50);
        fprintf(stderr,
                "W4%s run %d/%d: %s - counter %lld, acquisitions %lld, failed %lld, lost "
                "updates %lld, %.2f s\n",
                p.use_lock ? "" : " CONTROL (no lock)", r + 1, o->runs, w.pass ? "PASS" : "FAIL",
                w.counter, w.acquisitions, w.failed, w.lost_updates, w.elapsed_s);
    }
    header("W4", "safety", p.use_lock ? "default" : "control-no-lock", o->runs, bad);
    printf(",\"processes\":%d,\"iterations\":%d,\"sleep_ms\":%g,\"key\":\"bid_lock:bench:hot\","
           "\"counter_key\":\"%s\",\"pass\":%s,\"passed_runs\":%d",
           p.procs, p.iterations, p.sleep_ms, BENCH_W4_COUNTER,
           passed == o->runs ? "true" : "false", passed);
    emit_figs(stdout, &f);
    printf("}\n");
    fflush(stdout);
    /* The control is expected to fail its check: that is its point. */
    return bad || (p.use_lock && passed != o->runs);
}

/* ---- W5: many leases renewed by one manager ------------------------------------ */

static int run_w5(const opts *o, int port)
{
    w5_params p;
    w5_params_init(&p);
    if (o->quick) {
        p.locks = 200;
        p.ttl_ms = 300;
        p.hold_s = 2;
    }
    if (o->locks)
        p.locks = o->locks;
    p.batch = o->no_batch ? 1 : 0;
    p.steal = o->steal < p.locks ? o->steal : p.locks;
    bl_config cfg;
    bench_config(&cfg, port, BENCH_DEFAULT);
    figset f = {0};
    int bad = 0, lost_runs = 0;
    /* What one call per lease and renewal would send: a lease renewed
     * every ttl/3. */
    double per_lock_rate = p.locks / ((double)(p.ttl_ms / 3) / 1000.0);
    for (int r = 0; r < o->runs; r++) {
        w5_result w;
        bench_reset(port);
        bad += bench_w5(&cfg, &p, &w) != 0;
        lost_runs += w.lost > 0;
        fig(&f, "held", w.held);
        fig(&f, "elapsed_s", w.elapsed_s);
        fig(&f, "client_cmds_per_s", w.client_cmds_per_s);
        fig(&f, "script_calls_per_s", w.script_calls_per_s);
        fig(&f, "server_cmds_per_s", w.server_cmds_per_s);
        fig(&f, "client_cmds_vs_per_lock_rate", w.client_cmds_per_s / per_lock_rate);
        fig(&f, "client_cpu_pct", w.client_cpu_pct);
        fig(&f, "renewals", (double)w.renewals);
        fig(&f, "renewals_per_lock", w.renewals_per_lock);
        fig(&f, "renewals_per_lock_min", w.renewals_min);
        fig(&f, "leases_per_script_call",
            w.script_calls ? (double)w.renewals / (double)w.script_calls : 0);
        fig(&f, "max_gap_ms", w.max_gap_ms);
        fig(&f, "lost", w.lost);
        fprintf(stderr,
                "W5%s run %d/%d: %d/%d held, %.1f s: %.1f commands/s sent (%.1f script calls/s, "
                "%.0f/s on the server with the scripts' own), %.2f renewals per lock (min %d), "
                "max gap %.0f ms, %d lost, client CPU %.1f%%\n",
                o->no_batch ? " CONTROL (no batching)" : o->steal ? " CONTROL (stolen leases)" : "",
                r + 1, o->runs, w.held, w.locks, w.elapsed_s, w.client_cmds_per_s,
                w.script_calls_per_s, w.server_cmds_per_s, w.renewals_per_lock, w.renewals_min,
                w.max_gap_ms, w.lost, w.client_cpu_pct);
    }
    header("W5", "many-leases",
           o->no_batch ? "control-no-batch" : o->steal ? "control-stolen" : "default", o->runs,
           bad);
    printf(",\"processes\":1,\"managers\":1,\"locks\":%d,\"ttl_ms\":%lld,\"hold_s\":%g,"
           "\"renew_batch_max\":%d,\"stolen\":%d,\"per_lock_rate_cmds_per_s\":%g",
           p.locks, (long long)p.ttl_ms, p.hold_s, p.batch ? p.batch : BL_RENEW_BATCH_MAX,
           p.steal, per_lock_rate);
    emit_figs(stdout, &f);
    printf("}\n");
    fflush(stdout);
    /* A lost lease fails the run; the stealing control fails without one. */
    return bad || (p.steal ? lost_runs != o->runs : lost_runs != 0);
}

/* ---- W8: W1 and W2 over TLS beside plaintext, on one server ------------------ */

/* The manager's config for W8: plaintext on the port, or TLS on the TLS port. */
static void w8_config(bl_config *cfg, const rsrv *s, int tls, char *url, size_t len,
                      const char *ca)
{
    bench_config(cfg, s->port, BENCH_DEFAULT);
    if (tls) {
        snprintf(url, len, "rediss://127.0.0.1:%d", s->tls_port);
        cfg->url = url;
        cfg->tls_ca_file = ca;
    }
}

static int run_w8(const opts *o)
{
    char dir[96], err[256] = "", ca[160], url[64], tls_args[256];
    if (rsrv_tmpdir(dir, sizeof dir, "bench-tls") != 0 ||
        rsrv_tls_certs(dir, err, sizeof err) != 0) {
        fprintf(stderr, "bench: W8: no certificates: %s\n", err);
        return 1;
    }
    snprintf(ca, sizeof ca, "%s/ca.crt", dir);
    snprintf(tls_args, sizeof tls_args, "--tls --cacert %s", ca);
    rsrv s;
    if (rsrv_start_tls(&s, NULL, dir) != 0) {
        fprintf(stderr, "bench: W8: %s\n", s.err);
        rsrv_rmdir(dir);
        return 1;
    }
    int bad = 0;
    int c1 = o->cycles ? o->cycles : o->quick ? 1000 : 20000;
    int c2 = o->cycles ? o->cycles : o->quick ? 2000 : 50000;
    int n = o->quick ? 5000 : 200000;
    const char *set = "SET bench:__rand_int__ v NX PX 30000";
    figset f = {0};
    for (int r = 0; r < o->runs; r++) {
        if (!o->no_limit) {
            double v[4] = {bench_redis_benchmark_x(s.port, n, 1, "", set),
                           bench_redis_benchmark_x(s.tls_port, n, 1, tls_args, set),
                           bench_redis_benchmark_x(s.port, n, 16, "", set),
                           bench_redis_benchmark_x(s.tls_port, n, 16, tls_args, set)};
            bad += v[0] <= 0 || v[1] <= 0 || v[2] <= 0 || v[3] <= 0;
            /* plain first, then tls: emit_figs nests by common prefix */
            fig(&f, "limit.plain.set_P1_rps", v[0]);
            fig(&f, "limit.plain.set_P16_rps", v[2]);
            fig(&f, "limit.tls.set_P1_rps", v[1]);
            fig(&f, "limit.tls.set_P16_rps", v[3]);
            fprintf(stderr, "W8 limit run %d/%d: SET P1 %.0f/s (TLS %.0f), P16 %.0f/s (TLS %.0f)\n",
                    r + 1, o->runs, v[0], v[1], v[2], v[3]);
        }
        /* plaintext and TLS take turns within a run: the same machine state */
        for (int tls = 0; tls < 2; tls++) {
            const char *k = tls ? "tls" : "plain";
            char name[64];
            bl_config cfg;
            w8_config(&cfg, &s, tls, url, sizeof url, ca);
            w1_result w1;
            bench_reset(s.port);
            bad += bench_w1(&cfg, c1, c1 < 1000 ? c1 : 1000, &w1, NULL) != 0 || w1.errors;
            snprintf(name, sizeof name, "%s.w1.cycles_per_s", k);
            fig(&f, name, w1.cycles_per_s);
            snprintf(name, sizeof name, "%s.w1.acquire_us_p50", k);
            fig(&f, name, w1.acquire_us_p50);
            snprintf(name, sizeof name, "%s.w1.release_us_p50", k);
            fig(&f, name, w1.release_us_p50);
            w2_result w2;
            bench_reset(s.port);
            bad += bench_w2(&cfg, c2, 100, &w2) != 0 || w2.errors;
            snprintf(name, sizeof name, "%s.w2.cycles_per_s", k);
            fig(&f, name, w2.cycles_per_s);
            snprintf(name, sizeof name, "%s.w2.cycle_us_p50", k);
            fig(&f, name, w2.cycle_us_p50);
            snprintf(name, sizeof name, "%s.w2.cycle_us_p99", k);
            fig(&f, name, w2.cycle_us_p99);
            fprintf(stderr, "W8 run %d/%d %s: W1 %.0f cycles/s (acquire p50 %.0f us), W2 %.0f "
                            "cycles/s (p50 %.0f us)%s\n",
                    r + 1, o->runs, k, w1.cycles_per_s, w1.acquire_us_p50, w2.cycles_per_s,
                    w2.cycle_us_p50, w1.errors || w2.errors ? " ERRORS" : "");
        }
    }
    header("W8", "tls", "default", o->runs, bad);
    printf(",\"processes\":1,\"connections\":1,\"w1_cycles_requested\":%d,"
           "\"w2_cycles_requested\":%d,\"w2_in_flight\":100,\"tls\":\"%s\"",
           c1, c2, OpenSSL_version(OPENSSL_VERSION));
    emit_figs(stdout, &f);
    printf(",\"tls_over_plain\":{");
    int first = 1;
    ratio(stdout, &first, "w1_cycles_per_s", med(&f, "tls.w1.cycles_per_s"),
          med(&f, "plain.w1.cycles_per_s"));
    ratio(stdout, &first, "w2_cycles_per_s", med(&f, "tls.w2.cycles_per_s"),
          med(&f, "plain.w2.cycles_per_s"));
    if (!o->no_limit) {
        ratio(stdout, &first, "redis_benchmark_set_P1", med(&f, "limit.tls.set_P1_rps"),
              med(&f, "limit.plain.set_P1_rps"));
        ratio(stdout, &first, "redis_benchmark_set_P16", med(&f, "limit.tls.set_P16_rps"),
              med(&f, "limit.plain.set_P16_rps"));
    }
    printf("}}\n");
    fflush(stdout);
    rsrv_stop(&s);
    rsrv_rmdir(dir);
    return bad != 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a connection the server closed: an error, not death */
    opts o;
    if (parse(argc, argv, &o) != 0) {
        usage();
        return 2;
    }
    bench_srv srv = {0};
    int port = o.port;
    if (!port) {
        if (bench_srv_start(&srv) != 0)
            return 1;
        port = srv.port;
    }
    char ver[32];
    bench_redis_version(port, ver, sizeof ver);
    fprintf(stderr, "bidlock-bench %s: redis-server %s on 127.0.0.1:%d, hiredis %d.%d.%d, "
                    "libev backend %s\n",
            BIDLOCK_VERSION, ver, port, HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH,
            bench_loop_backend());
    int bad = 0;
    limit L = {0};
    if (!o.no_limit && run_limit(&o, port, &L) != 0) {
        fprintf(stderr, "bench: the limit could not be measured; ratios are left out\n");
        bad = 1;
    }
    if (o.w[1])
        bad |= run_w1(&o, port, &L, BENCH_DEFAULT);
    if (o.w[1] && o.lean)
        bad |= run_w1(&o, port, &L, BENCH_LEAN);
    if (o.w[2])
        bad |= run_w2(&o, port, &L, BENCH_DEFAULT);
    if (o.w[2] && o.lean)
        bad |= run_w2(&o, port, &L, BENCH_LEAN);
    if (o.w[3]) {
        bad |= run_w3(&o, port, &L, BENCH_DEFAULT);
        if (o.tuned)
            bad |= run_w3(&o, port, &L, BENCH_TUNED);
    }
    if (o.w[4])
        bad |= run_w4(&o, port);
    if (o.w[5])
        bad |= run_w5(&o, port);
    if (o.w[6])
        bad |= run_w6(&o, port);
    if (o.w[7])
        bad |= run_w7(&o, port);
    if (o.w[8])
        bad |= run_w8(&o);
    if (srv.pid)
        bench_srv_stop(&srv);
    fprintf(stderr, "bidlock-bench: %s\n", bad ? "some runs failed (see above)" : "done");
    return bad ? 1 : 0;
}
