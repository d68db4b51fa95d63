/* scanner.c - an event-driven marketplace scanner: the job bidlock exists for.
 *
 * A simulated feed holds N postings (posting-0000 ...), the same for every
 * instance; each instance polls it and sees the postings in its own shuffled
 * order, a few at a time, and works on up to --inflight of them at once:
 *
 *   lock the posting (bl_acquire, waiting up to --wait-ms)
 *     -> check the bid store: LLEN bids:MP:POSTING   \  on a SECOND hiredis
 *     -> think (pricing, 0..--think-ms ms)           |  connection, same loop:
 *     -> place the bid: RPUSH bids:MP:POSTING ...    /  the check-then-bid race
 *     -> bl_release_done: nobody bids on it again
 *
 * Without the lock, two instances can both see an empty store and both bid
 * (try --no-lock). With it, the bid store ends with at most one bid per
 * posting, whatever the number of instances.
 *
 *   scanner [--port P | --unix PATH | --memory] [--instances K] [--name NAME]
 *           [--postings N] [--inflight F] [--think-ms T] [--wait-ms W] [--poll-ms P]
 *           [--marketplace MP] [--seed S] [--no-lock] [--quiet]
 *           [--metrics-port PORT [--metrics-addr ADDR] [--linger]]
 *
 * At the end each instance prints one JSON line of counts on stdout;
 * progress goes to stderr. --memory runs the K instances in this process on
 * the in-memory backend, with an in-process bid store, and adds a line that
 * audits that store. Exit status 0, or 1 if an operation failed.
 *
 * --metrics-port serves GET /metrics (bl_metrics_prometheus, summed over
 * the K instances) on ADDR (default 127.0.0.1; loopback only, ::1 too) from
 * the same loop, through metrics_http.c; PORT 0 takes a free port. The
 * address is printed on stderr as "scanner: metrics on http://ADDR:PORT/metrics".
 * --linger keeps serving the final figures after the feed is done, until
 * SIGINT or SIGTERM (then exit as usual).
 */
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <bidlock.h>
#include <bidlock/libev.h>
#include <ev.h>
#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>

#include "metrics_http.h"

typedef struct options {
    int port, memory, instances, postings, inflight, think_ms, wait_ms, poll_ms, no_lock, quiet;
    const char *unix_path, *name, *mp;
    int metrics_port, linger; /* metrics_port -1: no endpoint */
    const char *metrics_addr;
    uint64_t seed;
} options;

typedef struct counts {
    int seen, bids, passed, already_bid, done, busy, timeouts, errors;
} counts;

typedef struct inst inst;

typedef struct job { /* one posting in flight */
    inst *in;
    int idx;
    char posting[32];
    bl_lock *lock;
    uint64_t token;
    ev_timer t; /* the think pause; the memory store's round trip */
    int phase;  /* memory store: 0 = check, 1 = bid */
} job;

struct inst {
    char name[48];
    bl_manager *m;
    redisAsyncContext *store; /* the bid store: our second connection */
    int *order, next, arrived, inflight, finished;
    uint64_t rng;
    counts c;
    bl_stats stats;
    bl_metrics final; /* the manager's last metrics, kept when it closes */
    ev_timer poll;
};

static options opt = {6379, 0, 1, 200, 4, 3, 5000, 10, 0, 0, NULL, NULL, "demo", -1, 0,
                      "127.0.0.1", 0};
static struct ev_loop *loop;
static inst *insts;
static int live; /* instances not yet closed */
static ev_timer progress;
static int *mem_bids;      /* memory bid store: bids per posting */
static int *mem_by;        /* ...and bids per instance */
static int failed;
static mh_server *metrics;
static ev_signal stop_signals[2]; /* --linger: SIGINT, SIGTERM */

/* ---- the feed ------------------------------------------------------------ */

static uint64_t next_rand(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Worth a bid? Deterministic per posting, so every instance agrees. */
static int worth_bidding(int idx)
{
    uint64_t s = (uint64_t)idx;
    return next_rand(&s) % 100 < 80;
}

/* ---- one posting ---------------------------------------------------------- */

static void pump(inst *in);

static void job_end(job *j)
{
    inst *in = j->in;
    ev_timer_stop(loop, &j->t);
    free(j);
    in->inflight--;
    pump(in);
}

static void on_released(bl_lock *lock, int status, void *data)
{
    (void)lock;
    if (status != BL_OK && status != BL_ENOTHELD)
        ((job *)data)->in->c.errors++;
    job_end(data);
}

/* Decided (bid, passed or found a bid): done for good, for every instance. */
static void finish_posting(job *j, int decided)
{
    if (opt.no_lock) {
        job_end(j);
        return;
    }
    int rc = decided ? bl_release_done(j->lock, on_released, j)
                     : bl_release(j->lock, on_released, j);
    if (rc != BL_OK) {
        j->in->c.errors++;
        job_end(j);
    }
}

static void place_bid(job *j);

/* The store said how many bids the posting has. */
static void checked(job *j, long long nbids)
{
    if (nbids > 0) {
        j->in->c.already_bid++; /* with the lock, only after a done marker expired */
        finish_posting(j, 1);
    } else if (!worth_bidding(j->idx)) {
        j->in->c.passed++;
        finish_posting(j, 1);
    } else {
        /* Pricing takes a moment: exactly the window where, without the
         * lock, another instance also sees "no bid yet". */
        ev_timer_set(&j->t, (double)(next_rand(&j->in->rng) % (uint64_t)(opt.think_ms + 1)) / 1e3,
                     0.);
        j->phase = 1;
        ev_timer_start(loop, &j->t);
    }
}

static void bid_placed(job *j)
{
    j->in->c.bids++;
    finish_posting(j, 1);
}

static void store_failed(job *j, const char *why)
{
    fprintf(stderr, "[%s] bid store: %s\n", j->in->name, why);
    j->in->c.errors++;
    finish_posting(j, 0);
}

static void llen_cb(redisAsyncContext *ac, void *reply_, void *data)
{
    redisReply *r = reply_;
    (void)ac;
    if (!r || r->type != REDIS_REPLY_INTEGER)
        store_failed(data, r && r->type == REDIS_REPLY_ERROR ? r->str : "connection lost");
    else
        checked(data, r->integer);
}

static void rpush_cb(redisAsyncContext *ac, void *reply_, void *data)
{
    redisReply *r = reply_;
    (void)ac;
    if (!r || r->type != REDIS_REPLY_INTEGER)
        store_failed(data, r && r->type == REDIS_REPLY_ERROR ? r->str : "connection lost");
    else
        bid_placed(data);
}

/* Check the store: LLEN on Redis; the memory store answers from the loop. */
static void check_store(job *j)
{
    inst *in = j->in;
    if (opt.memory) {
        j->phase = 0;
        ev_timer_set(&j->t, 0., 0.);
        ev_timer_start(loop, &j->t);
    } else if (!in->store ||
               redisAsyncCommand(in->store, llen_cb, j, "LLEN bids:%s:%s", opt.mp, j->posting)) {
        store_failed(j, "not connected");
    }
}

/* The bid names who placed it and under which fencing token. */
static void place_bid(job *j)
{
    inst *in = j->in;
    if (opt.memory) {
        mem_bids[j->idx]++;
        mem_by[in - insts]++;
        bid_placed(j);
    } else if (!in->store || redisAsyncCommand(in->store, rpush_cb, j, "RPUSH bids:%s:%s %s:%" PRIu64,
                                               opt.mp, j->posting, in->name, j->token)) {
        store_failed(j, "not connected");
    }
}

static void job_timer(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    job *j = w->data;
    if (j->phase == 0) /* memory store: the check's answer */
        checked(j, mem_bids[j->idx]);
    else
        place_bid(j);
}

static void on_locked(bl_lock *lock, int status, void *data)
{
    job *j = data;
    counts *c = &j->in->c;
    switch (status) {
    case BL_OK:
        j->lock = lock;
        j->token = bl_lock_token(lock);
        check_store(j);
        return;
    case BL_EDONE: c->done++; break;     /* another instance decided it */
    case BL_EBUSY: c->busy++; break;
    case BL_ETIMEDOUT: c->timeouts++; break;
    default:
        c->errors++;
        fprintf(stderr, "[%s] lock %s: %s %s\n", j->in->name, j->posting, bl_strerror(status),
                bl_lock_errmsg(lock));
        break;
    }
    job_end(j);
}

static void start_job(inst *in, int idx)
{
    job *j = calloc(1, sizeof *j);
    if (!j) {
        in->c.errors++;
        return;
    }
    j->in = in;
    j->idx = idx;
    snprintf(j->posting, sizeof j->posting, "posting-%04d", idx);
    ev_timer_init(&j->t, job_timer, 0., 0.);
    j->t.data = j;
    in->inflight++;
    in->c.seen++;
    if (opt.no_lock) {
        check_store(j);
        return;
    }
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = opt.wait_ms;
    o.ttl_ms = 10000; /* a crashed instance's posting is free again in 10 s */
    if (bl_acquire(in->m, opt.mp, j->posting, &o, on_locked, j, NULL) != BL_OK) {
        fprintf(stderr, "[%s] %s\n", in->name, bl_manager_errmsg(in->m));
        in->c.errors++;
        job_end(j);
    }
}

/* ---- one instance ---------------------------------------------------------- */

static void all_closed(void);

static void on_manager_closed(bl_manager *m, void *data)
{
    inst *in = data;
    bl_manager_stats(m, &in->stats);
    bl_manager_metrics(m, &in->final); /* for /metrics after the close */
    in->m = NULL;
    if (--live == 0)
        all_closed();
}

static void store_disconnected(const redisAsyncContext *ac, int status)
{
    (void)status;
    inst *in = ac->data;
    in->store = NULL; /* hiredis frees it */
}

static void store_connected(const redisAsyncContext *ac, int status)
{
    inst *in = ac->data;
    if (status != REDIS_OK) {
        fprintf(stderr, "[%s] bid store: %s\n", in->name, ac->c.errstr);
        in->store = NULL; /* hiredis frees it; queued commands get NULL */
    }
}

/* Start more postings while the feed has shown some and there is room. */
static void pump(inst *in)
{
    while (in->inflight < opt.inflight && in->next < in->arrived)
        start_job(in, in->order[in->next++]);
    if (in->next == opt.postings && in->inflight == 0 && !in->finished) {
        in->finished = 1;
        ev_timer_stop(loop, &in->poll);
        if (in->store)
            redisAsyncDisconnect(in->store); /* graceful: nothing pending */
        bl_manager_close(in->m, on_manager_closed, in);
    }
}

/* The feed: each poll shows a few more postings, in this instance's order. */
static void on_poll(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    inst *in = w->data;
    in->arrived += 1 + (int)(next_rand(&in->rng) % 8);
    if (in->arrived > opt.postings)
        in->arrived = opt.postings;
    pump(in);
}

static int inst_start(inst *in, int k, const bl_loop *bl)
{
    if (opt.instances == 1)
        snprintf(in->name, sizeof in->name, "%s", opt.name);
    else
        snprintf(in->name, sizeof in->name, "%s-%d", opt.name, k + 1);
    in->rng = opt.seed ^ ((uint64_t)(k + 1) * 0x9e3779b97f4a7c15ull);
    for (const char *p = in->name; *p; p++)
        in->rng = (in->rng ^ (unsigned char)*p) * 0x100000001b3ull;
    in->order = malloc(sizeof *in->order * (size_t)opt.postings);
    if (!in->order)
        return -1;
    for (int i = 0; i < opt.postings; i++)
        in->order[i] = i;
    for (int i = opt.postings - 1; i > 0; i--) { /* Fisher-Yates */
        int r = (int)(next_rand(&in->rng) % (uint64_t)(i + 1)), t = in->order[i];
        in->order[i] = in->order[r];
        in->order[r] = t;
    }
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.backend = opt.memory ? BL_BACKEND_MEMORY : BL_BACKEND_REDIS;
    cfg.port = opt.port;
    cfg.unix_path = opt.unix_path;
    if (bl_manager_new(bl, &cfg, &in->m) != BL_OK)
        return -1;
    live++;
    if (!opt.memory) {
        in->store = opt.unix_path ? redisAsyncConnectUnix(opt.unix_path)
                                  : redisAsyncConnect("127.0.0.1", opt.port);
        if (!in->store || in->store->err) {
            fprintf(stderr, "[%s] bid store: cannot connect\n", in->name);
            if (in->store)
                redisAsyncFree(in->store);
            in->store = NULL;
        } else {
            in->store->data = in;
            redisLibevAttach(loop, in->store); /* before the connect callback */
            redisAsyncSetConnectCallback(in->store, store_connected);
            redisAsyncSetDisconnectCallback(in->store, store_disconnected);
        }
    }
    ev_timer_init(&in->poll, on_poll, 0., opt.poll_ms / 1e3);
    in->poll.data = in;
    ev_timer_start(loop, &in->poll);
    return 0;
}

/* ---- /metrics ------------------------------------------------------------------ */

static void hist_add(bl_histogram *to, const bl_histogram *h)
{
    for (int i = 0; i <= BL_HIST_BUCKETS; i++)
        to->counts[i] += h->counts[i];
    to->count += h->count;
    to->sum_ms += h->sum_ms;
}

/* bl_stats is uint64_t counters and gauges only, and bl_metrics ends with
 * its histograms (acquire, release, and any a later version adds): both
 * add up member by member, whatever their number. */
#define STATS_N (sizeof(bl_stats) / sizeof(uint64_t))
#define HIST_AT offsetof(bl_metrics, acquire_ms)
#define HIST_N ((sizeof(bl_metrics) - HIST_AT) / sizeof(bl_histogram))
_Static_assert(sizeof(bl_stats) % sizeof(uint64_t) == 0, "bl_stats is uint64_t only");
_Static_assert((sizeof(bl_metrics) - HIST_AT) % sizeof(bl_histogram) == 0,
               "bl_metrics ends with histograms");

static void metrics_add(bl_metrics *sum, const bl_metrics *one)
{
    uint64_t to[STATS_N], from[STATS_N];
    memcpy(to, &sum->stats, sizeof to);
    memcpy(from, &one->stats, sizeof from);
    for (size_t i = 0; i < STATS_N; i++)
        to[i] += from[i];
    memcpy(&sum->stats, to, sizeof to);
    bl_histogram hto[HIST_N], hfrom[HIST_N];
    memcpy(hto, (char *)sum + HIST_AT, sizeof hto);
    memcpy(hfrom, (const char *)one + HIST_AT, sizeof hfrom);
    for (size_t i = 0; i < HIST_N; i++)
        hist_add(&hto[i], &hfrom[i]);
    memcpy((char *)sum + HIST_AT, hto, sizeof hto);
    if (one->conn_state != BL_CONN_UP)
        sum->conn_state = one->conn_state;
}

/* The process's figures: every instance's, summed (one scrape target). The
 * connection is "up" only while every instance's is. */
static size_t render_metrics(char *buf, size_t len, void *data)
{
    (void)data;
    bl_metrics sum;
    memset(&sum, 0, sizeof sum);
    sum.conn_state = BL_CONN_UP;
    for (int k = 0; k < opt.instances; k++) {
        bl_metrics one;
        if (insts[k].m)
            bl_manager_metrics(insts[k].m, &one);
        else
            one = insts[k].final;
        metrics_add(&sum, &one);
    }
    return bl_metrics_prometheus(&sum, buf, len);
}

static void stop_metrics(void)
{
    mh_stop(metrics);
    metrics = NULL;
    for (int i = 0; i < 2; i++)
        ev_signal_stop(loop, &stop_signals[i]);
}

static void on_stop_signal(struct ev_loop *l, ev_signal *w, int revents)
{
    (void)l;
    (void)revents;
    if (!opt.quiet)
        fprintf(stderr, "scanner: signal %d: metrics endpoint closed\n", w->signum);
    stop_metrics(); /* with the instances closed, nothing is left: ev_run returns */
}

static int start_metrics(void)
{
    char err[256];
    metrics = mh_start(loop, opt.metrics_addr, opt.metrics_port, render_metrics, NULL, err,
                       sizeof err);
    if (!metrics) {
        fprintf(stderr, "scanner: --metrics-port: %s\n", err);
        return -1;
    }
    int v6 = strchr(opt.metrics_addr, ':') != NULL;
    fprintf(stderr, "scanner: metrics on http://%s%s%s:%d/metrics\n", v6 ? "[" : "",
            opt.metrics_addr, v6 ? "]" : "", mh_port(metrics));
    if (opt.linger) {
        int sigs[2] = {SIGINT, SIGTERM};
        for (int i = 0; i < 2; i++) {
            ev_signal_init(&stop_signals[i], on_stop_signal, sigs[i]);
            ev_signal_start(loop, &stop_signals[i]);
        }
    }
    return 0;
}

/* ---- reporting --------------------------------------------------------------- */

static void print_progress(void)
{
    if (opt.quiet)
        return;
    for (int k = 0; k < opt.instances; k++) {
        counts *c = &insts[k].c;
        fprintf(stderr, "[%s] %d/%d seen, %d bids, %d done elsewhere, %d busy/timeouts%s\n",
                insts[k].name, c->seen, opt.postings, c->bids, c->done, c->busy + c->timeouts,
                insts[k].finished ? " (finished)" : "");
    }
}

static void on_progress(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    print_progress();
}

static void all_closed(void)
{
    ev_timer_stop(loop, &progress);
    if (!opt.linger)
        stop_metrics(); /* else it serves the final figures until a signal */
    print_progress();
    for (int k = 0; k < opt.instances; k++) {
        inst *in = &insts[k];
        counts *c = &in->c;
        failed |= c->errors > 0;
        printf("{\"instance\":\"%s\",\"pid\":%d,\"postings\":%d,\"seen\":%d,\"bids\":%d,"
               "\"passed\":%d,\"already_bid\":%d,\"done\":%d,\"lock_waits\":%" PRIu64 ","
               "\"wakeups\":%" PRIu64 ",\"busy\":%d,\"timeouts\":%d,\"errors\":%d,"
               "\"locked\":%s}\n",
               in->name, (int)getpid(), opt.postings, c->seen, c->bids, c->passed,
               c->already_bid, c->done, in->stats.conflicts, in->stats.wakeups, c->busy,
               c->timeouts, c->errors, opt.no_lock ? "false" : "true");
    }
    if (opt.memory) { /* audit the in-process store, like demo.sh audits Redis */
        int bid_on = 0, bids = 0;
        for (int i = 0; i < opt.postings; i++) {
            bids += mem_bids[i];
            bid_on += mem_bids[i] > 0;
        }
        printf("{\"store\":\"memory\",\"postings\":%d,\"bid_on\":%d,\"bids\":%d,"
               "\"duplicates\":%d,\"bids_by\":{",
               opt.postings, bid_on, bids, bids - bid_on);
        for (int k = 0; k < opt.instances; k++)
            printf("%s\"%s\":%d", k ? "," : "", insts[k].name, mem_by[k]);
        printf("}}\n");
    }
    fflush(stdout);
}

/* ---- main ---------------------------------------------------------------------- */

static int arg_int(const char *flag, const char *v, int lo, int hi)
{
    char *end;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || n < lo || n > hi) {
        fprintf(stderr, "scanner: %s needs a number %d..%d\n", flag, lo, hi);
        exit(64);
    }
    return (int)n;
}

static void parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--memory")) opt.memory = 1;
        else if (!strcmp(a, "--no-lock")) opt.no_lock = 1;
        else if (!strcmp(a, "--quiet")) opt.quiet = 1;
        else if (!strcmp(a, "--port")) opt.port = arg_int(a, v, 1, 65535), i++;
        else if (!strcmp(a, "--unix") && v) opt.unix_path = v, i++;
        else if (!strcmp(a, "--name") && v) opt.name = v, i++;
        else if (!strcmp(a, "--marketplace") && v) opt.mp = v, i++;
        else if (!strcmp(a, "--instances")) opt.instances = arg_int(a, v, 1, 64), i++;
        else if (!strcmp(a, "--postings")) opt.postings = arg_int(a, v, 1, 9999), i++;
        else if (!strcmp(a, "--inflight")) opt.inflight = arg_int(a, v, 1, 1000), i++;
        else if (!strcmp(a, "--think-ms")) opt.think_ms = arg_int(a, v, 0, 10000), i++;
        else if (!strcmp(a, "--wait-ms")) opt.wait_ms = arg_int(a, v, 0, 600000), i++;
        else if (!strcmp(a, "--poll-ms")) opt.poll_ms = arg_int(a, v, 1, 10000), i++;
        else if (!strcmp(a, "--seed")) opt.seed = (uint64_t)arg_int(a, v, 0, 1 << 30), i++;
        else if (!strcmp(a, "--metrics-port")) opt.metrics_port = arg_int(a, v, 0, 65535), i++;
        else if (!strcmp(a, "--metrics-addr") && v) opt.metrics_addr = v, i++;
        else if (!strcmp(a, "--linger")) opt.linger = 1;
        else {
            fprintf(stderr, "scanner: unknown argument '%s' (see the comment atop scanner.c)\n", a);
            exit(64);
        }
    }
}

int main(int argc, char **argv)
{
    char name[32];
    snprintf(name, sizeof name, "s%d", (int)getpid());
    opt.name = name;
    opt.seed = (uint64_t)getpid() ^ (uint64_t)time(NULL);
    parse(argc, argv);
    if (opt.linger && opt.metrics_port < 0) {
        fprintf(stderr, "scanner: --linger needs --metrics-port\n");
        return 64;
    }
    signal(SIGPIPE, SIG_IGN); /* a dropped connection is an error reply, not death */
    loop = EV_DEFAULT;
    bl_loop bl;
    bl_libev_loop(&bl, loop);
    insts = calloc((size_t)opt.instances, sizeof *insts);
    mem_bids = calloc((size_t)opt.postings, sizeof *mem_bids);
    mem_by = calloc((size_t)opt.instances, sizeof *mem_by);
    if (!insts || !mem_bids || !mem_by)
        return 1;
    if (opt.metrics_port >= 0 && start_metrics() != 0)
        return 64;
    if (opt.memory)
        fprintf(stderr, "scanner: in-memory backend: %d instances share this process's locks "
                        "and bid store; nothing is shared with other processes\n",
                opt.instances);
    for (int k = 0; k < opt.instances; k++)
        if (inst_start(&insts[k], k, &bl) != 0) {
            fprintf(stderr, "scanner: cannot start instance %d\n", k + 1);
            return 1;
        }
    ev_timer_init(&progress, on_progress, 0.5, 0.5);
    ev_timer_start(loop, &progress);
    ev_run(loop, 0);
    for (int k = 0; k < opt.instances; k++)
        free(insts[k].order);
    free(insts);
    free(mem_bids);
    free(mem_by);
    ev_loop_destroy(loop);
    return failed ? 1 : 0;
}
