/* Redis Cluster (issue 14): bidlock on a real 3 masters + 3 replicas bed
 * (tests/bed_cluster.h), through the public API. A bed takes ~2-3 s to come
 * up, so each test brings one up and runs several scenarios on it, in
 * order; every assertion names its scenario.
 *   routing_safety_and_resharding: locks on every master, each where
 *     CLUSTER KEYSLOT / CLUSTER SLOTS says; inspect, health, cleanup;
 *     4 processes of read-modify-write under the lock while slots of their
 *     postings migrate: counters exact, tokens increasing, no error seen;
 *     a waiter on a migrated lock gets it.
 *   failover_wakeups_and_cluster_down: kill -9 of the master the
 *     subscriber is on, with a lock held there and waiters elsewhere, the
 *     CLI running in loops: the replica takes over, the held lock is
 *     re-verified, other shards never notice, the waiter wakes; then most
 *     masters killed: BL_ECONN in bounded time, never a grant; restarted:
 *     grants again. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "bed_cluster.h"
#include "harness.h"
#include "helpers.h"
#include "keyspace.h"

static cb_bed bed;

/* A failed assertion skips the test's own cb_stop: stop the bed here too
 * (safe twice), so no temp dir is left behind (the nodes die with us). */
static void fini(void)
{
    cb_stop(&bed);
    fx_loop_fini();
}

TestSuite(cluster, .init = fx_loop_init, .fini = fini, .timeout = 240);

static void start_bed(void)
{
    cr_assert_eq(cb_start(&bed), 0, "bed: %s", bed.err);
    fprintf(stderr, "cluster-test: bed up in %.0f ms\n", bed.up_ms);
}

static void url_of(char *url, size_t len)
{
    /* Two seeds: any one that answers will do. */
    snprintf(url, len, "redis-cluster://127.0.0.1:%d,127.0.0.1:%d", bed.node[0].port,
             bed.node[1].port);
}

static bl_config cluster_cfg(const char *url)
{
    bl_config c;
    bl_config_init(&c);
    c.url = url;
    c.reconnect_initial_ms = 50;
    c.backoff_initial_ms = 20;
    c.backoff_max_ms = 200;
    /* min_replicas is auto on a cluster: a replica of a busy machine may
     * take more than the default 100 ms to acknowledge (BL_ENOREPL). */
    c.replica_timeout_ms = 1000;
    return c;
}

static bl_manager *mk(const bl_config *c)
{
    bl_manager *m = NULL;
    int rc = bl_manager_new(tl_bl(T), c, &m);
    cr_assert_eq(rc, BL_OK, "bl_manager_new: %s", bl_status_name(rc));
    cr_assert(wait_up(m, 10000), "the slot map was read");
    return m;
}

static unsigned slot_of(const char *posting)
{
    char key[300];
    int n = snprintf(key, sizeof key, "bid_lock:ebay:%s", posting);
    return bl_key_slot(key, (size_t)n);
}

/* m waits on posting: its attempt was answered busy and it queued there
 * (ZSCORE on the slot's master). */
static int queued_on(void *arg)
{
    void **a = arg;
    bl_manager *m = a[0];
    const char *posting = a[1];
    bl_stats st;
    bl_manager_stats(m, &st);
    if (st.waiting < 1)
        return 0;
    char key[300];
    snprintf(key, sizeof key, "{bid_lock:ebay:%s}:q", posting);
    redisReply *r = cb_cmd_key(&bed, key, "ZSCORE %s %s", key, bl_manager_holder(m));
    int in = r && r->type == REDIS_REPLY_STRING;
    if (r)
        freeReplyObject(r);
    return in;
}

static int wait_queued_cluster(bl_manager *m, const char *posting)
{
    void *a[2] = {m, (void *)posting};
    return tl_wait_for(T, queued_on, a, 20000);
}

/* ---- routing ---------------------------------------------------------------------- */

typedef struct hrec2 {
    int n, status, nodes, slots_total, all_ok;
    char servers[8][64];
    int slots[8];
} hrec2;

static void on_health2(bl_manager *m, const bl_health *h, void *data)
{
    (void)m;
    hrec2 *r = data;
    r->n++;
    r->status = h->status;
    r->nodes = h->nodes;
    r->all_ok = 1;
    for (int i = 0; i < h->nodes && i < 8; i++) {
        snprintf(r->servers[i], sizeof r->servers[i], "%s", h->node[i].server);
        r->slots[i] = h->node[i].slots;
        r->slots_total += h->node[i].slots;
        r->all_ok &= h->node[i].status == BL_OK && h->node[i].latency_ms >= 0;
    }
}

static void routing(bl_manager *m)
{
    enum { N = 60 };
    rec held[N];
    char id[N][16];
    int on_master[CB_NODES] = {0};
    for (int i = 0; i < N; i++) {
        snprintf(id[i], sizeof id[i], "r%d", i);
        held[i] = acq(m, id[i], 0, 60000);
        cr_assert_eq(held[i].status, BL_OK, "routing: %s: %s (%s)", id[i],
                     bl_status_name(held[i].status), held[i].errmsg);
    }
    for (int i = 0; i < N; i++) {
        char key[80];
        snprintf(key, sizeof key, "bid_lock:ebay:%.15s", id[i]);
        /* Our slot is the server's. */
        redisReply *ks = cb_cmd(bed.node[0].port, "CLUSTER KEYSLOT %s", key);
        cr_assert(ks && ks->type == REDIS_REPLY_INTEGER);
        cr_assert_eq((unsigned)ks->integer, slot_of(id[i]), "routing: slot of %s", key);
        freeReplyObject(ks);
        /* The lock, and its fence counter, live on the slot's master,
         * asked directly (no redirection followed). */
        int port = cb_master_of(&bed, slot_of(id[i]));
        cr_assert_gt(port, 0);
        redisReply *v = cb_cmd(port, "GET %s", key);
        cr_assert(v && v->type == REDIS_REPLY_STRING, "routing: %s is on its master :%d", key,
                  port);
        cr_assert_str_eq(v->str, bl_manager_holder(m));
        freeReplyObject(v);
        redisReply *f = cb_cmd(port, "EXISTS {%s}:fence", key);
        cr_assert(f && f->type == REDIS_REPLY_INTEGER && f->integer == 1,
                  "routing: the fence counter of %s is beside it", key);
        freeReplyObject(f);
        on_master[cb_index(&bed, port)]++;
        irec ir = inspect(m, id[i]);
        cr_assert_eq(ir.held, 1, "routing: inspect %s", id[i]);
        cr_assert_eq(ir.token, held[i].token);
    }
    int masters = 0;
    for (int i = 0; i < CB_NODES; i++)
        masters += on_master[i] > 0;
    cr_assert_eq(masters, 3, "routing: %d postings spread over all three masters", N);
    hrec2 h = {0};
    cr_assert_eq(bl_health_check(m, on_health2, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 10000));
    cr_assert_eq(h.status, BL_OK, "health");
    cr_assert_eq(h.nodes, 3, "health reports every master");
    cr_assert_eq(h.slots_total, BL_CLUSTER_SLOTS, "their slots add up");
    cr_assert(h.all_ok);
    for (int i = 0; i < N; i++)
        cr_assert_eq(rel(held[i].lock), BL_OK, "routing: release %s", id[i]);
    /* Cleanup SCANs every master. */
    for (int i = 0; i < 9; i++)
        cr_assert_eq(acq(m, id[i], 0, 60000).status, BL_OK);
    crec c = {0};
    cr_assert_eq(bl_cleanup(m, 1, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 20000));
    cr_assert_eq(c.status, BL_OK, "cleanup");
    cr_assert_eq(c.removed, 9, "cleanup removed the locks on every master");
    bl_stats st;
    bl_manager_stats(m, &st);
    cr_assert_eq(st.redirects, 0, "a fresh map needs no redirection");
    cr_assert_geq(st.map_refreshes, 1);
    fprintf(stderr, "cluster-test: routing: %d locks on masters", N);
    for (int i = 0; i < CB_NODES; i++)
        if (on_master[i])
            fprintf(stderr, " :%d=%d", bed.node[i].port, on_master[i]);
    fprintf(stderr, "; health: %d masters, slots", h.nodes);
    for (int i = 0; i < h.nodes; i++)
        fprintf(stderr, " %s=%d", h.servers[i], h.slots[i]);
    fprintf(stderr, "\n");
}

/* ---- safety while slots migrate ------------------------------------------------------ */

#define SAFE_PROCS 4
#define SAFE_POSTINGS 6
#define SAFE_AFTER_MS 1500 /* they go on this long after the last slot moved */

typedef struct shared {
    volatile int stop; /* the parent: every slot moved, and SAFE_AFTER_MS more */
    /* written only under the posting's lock */
    uint64_t counter[SAFE_POSTINGS], last_token[SAFE_POSTINGS];
    /* each process its own */
    uint64_t grants[SAFE_PROCS], redirects[SAFE_PROCS], refreshes[SAFE_PROCS];
    uint32_t moved[SAFE_PROCS], ask[SAFE_PROCS], tryagain[SAFE_PROCS]; /* debug log lines */
    uint32_t bad_token[SAFE_PROCS], acq_err[SAFE_PROCS], rel_err[SAFE_PROCS],
        extra_cb[SAFE_PROCS], hung[SAFE_PROCS], setup[SAFE_PROCS];
    char why[SAFE_PROCS][200];
} shared;

static const char *safe_id(int p)
{
    static char ids[SAFE_POSTINGS][16];
    snprintf(ids[p], sizeof ids[p], "safe%d", p);
    return ids[p];
}

static shared *log_S;
static int log_me;

/* The backend's debug lines name each redirection it followed. */
static void count_log(int level, const char *msg, void *data)
{
    (void)level;
    (void)data;
    if (strstr(msg, ": MOVED from "))
        log_S->moved[log_me]++;
    else if (strstr(msg, ": ASK from "))
        log_S->ask[log_me]++;
    else if (strstr(msg, "TRYAGAIN"))
        log_S->tryagain[log_me]++;
}

static void safety_child(shared *S, int me, const char *url, uint64_t end)
{
    tloop *t = tl_new();
    bl_config c = cluster_cfg(url);
    log_S = S;
    log_me = me;
    c.log = count_log;
    bl_manager *m = NULL;
    int base = rec_calls; /* the parent's, inherited by fork */
    if (bl_manager_new(tl_bl(t), &c, &m) != BL_OK) {
        S->setup[me] = 1;
        _exit(0);
    }
    uint64_t rng = (uint64_t)me * 7919 + 1;
    while (!S->stop && mono_ms() < end) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        int p = (int)((rng >> 33) % SAFE_POSTINGS);
        rec r = {0};
        bl_acquire_opts o = acq_opts(10000, 5000);
        if (bl_acquire(m, "ebay", safe_id(p), &o, on_acq, &r, NULL) != BL_OK) {
            S->acq_err[me]++;
            break;
        }
        if (!tl_wait(t, &r.n, 1, 20000)) {
            S->hung[me]++;
            break;
        }
        if (r.status != BL_OK) {
            if (!S->why[me][0])
                snprintf(S->why[me], sizeof S->why[me], "acquire %s: %s (%.120s)", safe_id(p),
                         bl_status_name(r.status), r.errmsg);
            S->acq_err[me]++;
            continue;
        }
        S->grants[me]++;
        if (r.token <= S->last_token[p])
            S->bad_token[me]++;
        S->last_token[p] = r.token;
        uint64_t v = S->counter[p];
        usleep(300);
        S->counter[p] = v + 1;
        int before = r.n;
        if (bl_release(r.lock, on_rel, &r) != BL_OK || !tl_wait(t, &r.n, before + 1, 20000)) {
            S->hung[me]++;
            break;
        }
        if (r.status != BL_OK) {
            if (!S->why[me][0])
                snprintf(S->why[me], sizeof S->why[me], "release %s: %s (%.120s)", safe_id(p),
                         bl_status_name(r.status), r.errmsg);
            S->rel_err[me]++;
        }
    }
    tl_run_for(t, 300);
    /* Every callback once: an acquire's, and a release's after each grant. */
    int expected = base + (int)(S->grants[me] * 2 + S->acq_err[me]);
    if (rec_calls != expected)
        S->extra_cb[me] = (uint32_t)(rec_calls > expected ? rec_calls - expected : 1000000);
    bl_stats st;
    bl_manager_stats(m, &st);
    S->redirects[me] = st.redirects;
    S->refreshes[me] = st.map_refreshes;
    int closed = 0;
    if (bl_manager_close(m, on_closed, &closed) != BL_OK || !tl_wait(t, &closed, 1, 10000))
        S->hung[me]++;
    tl_free(t);
    _exit(0);
}

/* A master other than port. */
static int other_master(int port)
{
    int ms[8];
    int n = cb_masters(&bed, ms, 8);
    for (int i = 0; i < n; i++)
        if (ms[i] != port)
            return ms[i];
    return -1;
}

static void safety_while_resharding(const char *url)
{
    shared *S = mmap(NULL, sizeof *S, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(S != MAP_FAILED);
    memset(S, 0, sizeof *S);
    uint64_t t0 = mono_ms(), end = t0 + 120000; /* a bound; S->stop ends them */
    pid_t kid[SAFE_PROCS];
    for (int i = 0; i < SAFE_PROCS; i++) {
        fflush(NULL);
        kid[i] = fork();
        cr_assert(kid[i] >= 0);
        if (kid[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            safety_child(S, i, url, end);
        }
    }
    /* While they run: move the slots of three of their postings, one at a
     * time, a key per step with a pause, so requests meet every stage. */
    usleep(500000);
    int moved = 0;
    for (int p = 0; p < 3; p++) {
        unsigned slot = slot_of(safe_id(p));
        int from = cb_master_of(&bed, slot), to = other_master(from);
        cr_assert_gt(to, 0);
        cr_assert_eq(cb_migrate_slot(&bed, slot, to, 1, 100), 0, "reshard: %s", bed.err);
        cr_assert_eq(cb_master_of(&bed, slot), to, "reshard: slot %u moved", slot);
        moved++;
    }
    uint64_t t_moved = mono_ms();
    usleep(SAFE_AFTER_MS * 1000);
    S->stop = 1;
    uint64_t t_stop = mono_ms();
    for (int i = 0; i < SAFE_PROCS; i++) {
        int st;
        uint64_t until = t_stop + 60000;
        while (waitpid(kid[i], &st, WNOHANG) != kid[i] && mono_ms() < until)
            usleep(10000);
        if (kill(kid[i], SIGKILL) == 0)
            waitpid(kid[i], &st, 0);
    }
    uint64_t grants = 0, counted = 0, redirects = 0, refreshes = 0, moved_n = 0, ask_n = 0,
             try_n = 0;
    for (int i = 0; i < SAFE_PROCS; i++) {
        cr_assert_eq(S->setup[i], 0, "safety: process %d could not start", i);
        cr_assert_eq(S->hung[i], 0, "safety: process %d: a callback never came", i);
        cr_assert_eq(S->acq_err[i] + S->rel_err[i], 0, "safety: process %d saw an error: %s", i,
                     S->why[i]);
        cr_assert_eq(S->bad_token[i], 0, "safety: process %d: a token did not increase", i);
        cr_assert_eq(S->extra_cb[i], 0, "safety: process %d: a callback came twice (or never)",
                     i);
        grants += S->grants[i];
        redirects += S->redirects[i];
        refreshes += S->refreshes[i];
        moved_n += S->moved[i];
        ask_n += S->ask[i];
        try_n += S->tryagain[i];
    }
    for (int p = 0; p < SAFE_POSTINGS; p++)
        counted += S->counter[p];
    fprintf(stderr,
            "cluster-test: safety while resharding: %d processes, %" PRIu64 " ms, %d slots "
            "moved (done at %" PRIu64 " ms); %" PRIu64 " grants, counters sum %" PRIu64
            "; %" PRIu64 " redirections followed (%" PRIu64 " MOVED, %" PRIu64 " ASK), %" PRIu64
            " TRYAGAIN retried, %" PRIu64 " map reads\n",
            SAFE_PROCS, t_stop - t0, moved, t_moved - t0, grants, counted, redirects, moved_n,
            ask_n, try_n, refreshes);
    cr_assert_eq(counted, grants, "safety: every counter is exact");
    cr_assert_gt(grants, 100);
    cr_assert_gt(redirects, 0, "the reshard was met (else this test proves nothing)");
    cr_assert_eq(moved_n + ask_n, redirects, "stats and the debug log agree");
    munmap(S, sizeof *S);
}

/* A waiter on a lock whose slot migrates gets the lock. */
static void waiter_on_a_migrated_lock(const char *url)
{
    bl_config c = cluster_cfg(url);
    bl_manager *a = mk(&c), *b = mk(&c);
    rec ra = acq(a, "migrating", 0, 60000);
    cr_assert_eq(ra.status, BL_OK);
    rec rb = {0};
    acq_start(b, "migrating", 30000, 0, &rb);
    tl_run_for(T, 200);
    cr_assert_eq(rb.n, 0, "b waits");
    unsigned slot = slot_of("migrating");
    int to = other_master(cb_master_of(&bed, slot));
    cr_assert_eq(cb_migrate_slot(&bed, slot, to, 1, 50), 0, "%s", bed.err);
    cr_assert_eq(rel(ra.lock), BL_OK, "the holder releases after the move");
    cr_assert(tl_wait(T, &rb.n, 1, 30000));
    cr_assert_eq(rb.status, BL_OK, "the waiter got it: %s (%s)", bl_status_name(rb.status),
                 rb.errmsg);
    cr_assert_eq(rel(rb.lock), BL_OK);
    close_manager(T, a);
    close_manager(T, b);
}

/* CLUSTER INFO's count of publish messages sent over the bus, all nodes. */
static long long bus_publishes(void)
{
    long long sum = 0;
    for (int i = 0; i < CB_NODES; i++) {
        redisReply *r = cb_cmd(bed.node[i].port, "CLUSTER INFO");
        const char *p = r && r->type == REDIS_REPLY_STRING
                            ? strstr(r->str, "cluster_stats_messages_publish_sent:")
                            : NULL;
        if (p)
            sum += atoll(p + strlen("cluster_stats_messages_publish_sent:"));
        if (r)
            freeReplyObject(r);
    }
    return sum;
}

/* Hand-offs between two managers: each release that wakes a waiter is one
 * PUBLISH, broadcast to every other node over the bus. */
static void bus_cost(const char *url)
{
    enum { ROUNDS = 20 };
    bl_config c = cluster_cfg(url);
    bl_manager *m[2] = {mk(&c), mk(&c)};
    rec held = acq(m[0], "bus", 0, 60000);
    cr_assert_eq(held.status, BL_OK);
    long long before = bus_publishes();
    uint64_t wakeups0 = 0;
    for (int i = 0; i < 2; i++) {
        bl_stats st;
        bl_manager_stats(m[i], &st);
        wakeups0 += st.wakeups;
    }
    for (int i = 0; i < ROUNDS; i++) {
        bl_manager *next = m[(i + 1) % 2];
        rec w = {0};
        acq_start(next, "bus", 30000, 60000, &w);
        cr_assert(wait_queued_cluster(next, "bus"), "bus: round %d: the waiter queued", i);
        cr_assert_eq(rel(held.lock), BL_OK);
        cr_assert(tl_wait(T, &w.n, 1, 30000));
        cr_assert_eq(w.status, BL_OK, "bus: round %d: %s", i, bl_status_name(w.status));
        held = w;
    }
    long long sent = bus_publishes() - before;
    cr_assert_eq(rel(held.lock), BL_OK);
    fprintf(stderr, "cluster-test: wake-ups: %d hand-offs, %lld publish messages on the cluster "
                    "bus (%.1f per release, %d nodes)\n",
            ROUNDS, sent, (double)sent / ROUNDS, CB_NODES);
    cr_assert_geq(sent, ROUNDS, "bus: each hand-off's PUBLISH crossed the bus");
    close_manager(T, m[0]);
    close_manager(T, m[1]);
}

/* bidlock health on a cluster: a line per master, exit 0. */
static void cli_health(const char *url)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "env -u REDIS_URL %s health --url '%s' 2>&1", BIDLOCK_CLI_PATH,
             url);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    char line[512];
    int masters = 0, ok = 0;
    while (fgets(line, sizeof line, p)) {
        masters += strncmp(line, "master 127.0.0.1:", 17) == 0 && strstr(line, ": ok, ") &&
                   strstr(line, " slots, round trip ");
        ok += strncmp(line, "redis-cluster: ok", 17) == 0;
    }
    int st = pclose(p);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "bidlock health exited %d", st);
    cr_assert_eq(masters, 3, "bidlock health: one line per master");
    cr_assert_eq(ok, 1);
}

/* A group (bl_acquire_many) across slots: taken posting by posting in
 * one order, given back at the first taken or done one, never part held. */
typedef struct grec {
    int n, status, done_index;
    bl_lock *lock;
    uint64_t tokens[3];
} grec;

static void on_group(bl_lock *lock, int status, void *data)
{
    grec *g = data;
    g->n++;
    g->status = status;
    g->done_index = bl_lock_done_index(lock);
    g->lock = status == BL_OK ? lock : NULL;
    for (size_t i = 0; i < 3; i++)
        g->tokens[i] = bl_lock_token_at(lock, i);
}

typedef struct lrec {
    int n, status;
    size_t total;
    uint64_t held[3];
} lrec;

static void on_locks(bl_manager *m, int status, const bl_held_lock *l, size_t n, size_t total,
                     void *data)
{
    (void)m;
    lrec *r = data;
    r->n++;
    r->status = status;
    r->total = total;
    for (size_t i = 0; i < n && i < 3; i++)
        r->held[i] = l[i].held_ms;
}

static grec group3(bl_manager *m, const bl_posting *p, int64_t wait_ms)
{
    grec g = {0};
    bl_acquire_opts o = acq_opts(wait_ms, 60000);
    cr_assert_eq(bl_acquire_many(m, p, 3, &o, on_group, &g, NULL), BL_OK, "%s",
                 bl_manager_errmsg(m));
    cr_assert(tl_wait(T, &g.n, 1, 30000), "groups: the callback came");
    return g;
}

static void groups_across_slots(const char *url)
{
    bl_config c = cluster_cfg(url);
    bl_manager *g = mk(&c), *x = mk(&c);
    const bl_posting ps[] = {{"ebay", "ga"}, {"ebay", "gb"}, {"ebay", "gc"}};
    cr_assert(slot_of("ga") != slot_of("gb") && slot_of("gb") != slot_of("gc") &&
              slot_of("ga") != slot_of("gc"), "groups: three slots");
    rec b = acq(x, "gb", 0, 60000);
    cr_assert_eq(b.status, BL_OK);
    grec busy = group3(g, ps, 0);
    cr_assert_eq(busy.status, BL_EBUSY, "groups: %s", bl_status_name(busy.status));
    cr_assert(!inspect(x, "ga").held && !inspect(x, "gc").held,
              "groups: a busy group holds none of its postings");
    /* Waiting: gb is freed while the group retries on its timer. */
    grec w = {0};
    bl_acquire_opts o = acq_opts(20000, 60000);
    cr_assert_eq(bl_acquire_many(g, ps, 3, &o, on_group, &w, NULL), BL_OK);
    tl_run_for(T, 100);
    cr_assert_eq(w.n, 0);
    cr_assert_eq(rel(b.lock), BL_OK);
    cr_assert(tl_wait(T, &w.n, 1, 30000));
    cr_assert_eq(w.status, BL_OK, "groups: %s", bl_status_name(w.status));
    for (int i = 0; i < 3; i++) {
        irec r = inspect(x, ps[i].posting);
        cr_assert(r.held, "groups: %s held", ps[i].posting);
        cr_assert_str_eq(r.holder, bl_manager_holder(g));
        cr_assert_eq(r.token, w.tokens[i], "groups: %s's own token", ps[i].posting);
    }
    cr_assert_gt(w.tokens[1], b.token);
    /* bl_list_locks asks every master: the group's three, longest first */
    lrec l = {0};
    cr_assert_eq(bl_list_locks(x, 0, on_locks, &l), BL_OK);
    cr_assert(tl_wait(T, &l.n, 1, 20000));
    cr_assert_eq(l.status, BL_OK, "locks: %s", bl_status_name(l.status));
    cr_assert_eq(l.total, 3, "locks: every master's (%zu)", l.total);
    /* Sorted by time held. (Not necessarily in token order: each master
     * reads its own TIME, a moment apart, and these grants were.) */
    cr_assert(l.held[0] >= l.held[1] && l.held[1] >= l.held[2], "locks: the longest held first");
    cr_assert_eq(rel_done(w.lock), BL_OK, "groups: one release for all");
    for (int i = 0; i < 3; i++) {
        irec r = inspect(x, ps[i].posting);
        cr_assert(!r.held && r.done, "groups: %s released and done", ps[i].posting);
    }
    const bl_posting ps2[] = {{"ebay", "gd"}, {"ebay", "ge"}, {"ebay", "gc"}};
    grec d = group3(g, ps2, 0);
    cr_assert_eq(d.status, BL_EDONE, "groups: %s", bl_status_name(d.status));
    cr_assert_eq(d.done_index, 2, "groups: gc (posting 2) was done");
    cr_assert(!inspect(x, "gd").held && !inspect(x, "ge").held, "groups: given back");
    assert_counters(g);
    close_manager(T, g);
    close_manager(T, x);
}

Test(cluster, routing_safety_and_resharding)
{
    start_bed();
    char url[128];
    url_of(url, sizeof url);
    bl_config c = cluster_cfg(url);
    bl_manager *m = mk(&c);
    routing(m);
    close_manager(T, m);
    groups_across_slots(url);
    cli_health(url);
    safety_while_resharding(url);
    waiter_on_a_migrated_lock(url);
    bus_cost(url);
    cb_stop(&bed);
}

/* ---- failover, wake-ups, the CLI, a cluster that goes down ----------------------------- */

#define CLI_PROCS 3

typedef struct cli_counts {
    uint32_t runs, code[256];
} cli_counts;

/* Loops of `bidlock run --url URL --wait 2 ebay cliN -- true` until end. */
static void cli_loop(cli_counts *out, int me, const char *url, uint64_t end)
{
    char posting[16];
    snprintf(posting, sizeof posting, "cli%d", me);
    while (mono_ms() < end) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            int dn = open("/dev/null", O_RDWR);
            dup2(dn, 0);
            dup2(dn, 1);
            dup2(dn, 2);
            unsetenv("REDIS_URL");
            const char *argv[] = {BIDLOCK_CLI_PATH, "run", "--url", url, "--wait", "2",
                                  "--ttl", "3000", "ebay", posting, "--", "true", NULL};
            execv(argv[0], (char *const *)argv);
            _exit(126);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) != pid)
            _exit(1);
        out->runs++;
        out->code[WIFEXITED(st) ? WEXITSTATUS(st) : 255]++;
    }
    _exit(0);
}

/* A posting (prefix p) whose slot the master on port serves, or not. */
static void posting_on(int port, int on, const char *p, char *out, size_t len)
{
    for (int i = 0; i < 100000; i++) {
        snprintf(out, len, "%s%d", p, i);
        if ((cb_master_of(&bed, slot_of(out)) == port) == on)
            return;
    }
    cr_assert_fail("no posting found");
}

static long long numsub(int port, const char *channel)
{
    redisReply *r = cb_cmd(port, "PUBSUB NUMSUB %s", channel);
    long long n = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2
                      ? r->element[1]->integer
                      : -1;
    if (r)
        freeReplyObject(r);
    return n;
}

/* A try-once acquire and its release; the acquire's status. */
static int probe(bl_manager *m, const char *posting)
{
    rec r = {0};
    bl_acquire_opts o = acq_opts(0, 3000);
    cr_assert_eq(bl_acquire(m, "ebay", posting, &o, on_acq, &r, NULL), BL_OK);
    cr_assert(tl_wait(T, &r.n, 1, 30000), "probe %s: no callback", posting);
    if (r.status == BL_OK) {
        int before = r.n;
        cr_assert_eq(bl_release(r.lock, on_rel, &r), BL_OK);
        cr_assert(tl_wait(T, &r.n, before + 1, 30000), "probe %s: no release callback", posting);
    }
    return r.status;
}

Test(cluster, failover_wakeups_and_cluster_down)
{
    start_bed();
    char url[128];
    url_of(url, sizeof url);
    bl_config c = cluster_cfg(url);
    c.command_timeout_ms = 3000;
    bl_manager *h = mk(&c);
    bl_config cw = c;
    cw.backoff_initial_ms = cw.backoff_max_ms = 20000; /* only a wake-up is quick */
    bl_manager *w = mk(&cw);

    /* The waiter's subscriptions go to one master: find it, with a first
     * wait (then released: the waiter gets it). */
    char x[32], chan[512];
    rec hp = acq(h, "subprobe", 0, 60000), wp = {0};
    cr_assert_eq(hp.status, BL_OK);
    acq_start(w, "subprobe", 60000, 0, &wp);
    snprintf(chan, sizeof chan, "{bid_lock:ebay:subprobe}|%s", bl_manager_holder(w));
    uint64_t until = mono_ms() + 10000;
    int sub_port = -1;
    while (sub_port < 0 && mono_ms() < until) {
        tl_run_for(T, 20);
        int ms[8], n = cb_masters(&bed, ms, 8);
        for (int i = 0; i < n; i++)
            if (numsub(ms[i], chan) == 1)
                sub_port = ms[i];
    }
    cr_assert_gt(sub_port, 0, "wake-ups: the waiter subscribed");
    cr_assert_eq(rel(hp.lock), BL_OK);
    cr_assert(tl_wait(T, &wp.n, 1, 30000));
    cr_assert_eq(wp.status, BL_OK, "wake-ups: the first waiter got it");
    cr_assert_eq(rel(wp.lock), BL_OK);
    int victim = cb_index(&bed, sub_port);
    /* The lock waited on through the failover is on another master. */
    posting_on(sub_port, 0, "wx", x, sizeof x);
    rec hx = acq(h, x, 0, 60000);
    cr_assert_eq(hx.status, BL_OK);
    rec wx = {0};
    acq_start(w, x, 60000, 0, &wx);
    cr_assert(wait_queued_cluster(w, x), "wake-ups: the waiter queued");
    snprintf(chan, sizeof chan, "{bid_lock:ebay:%s}|%s", x, bl_manager_holder(w));
    until = mono_ms() + 10000;
    while (numsub(sub_port, chan) != 1 && mono_ms() < until)
        tl_run_for(T, 20);
    cr_assert_eq(numsub(sub_port, chan), 1, "wake-ups: subscribed on :%d", sub_port);

    /* A lock held on the victim, renewed (auto_extend), with WAIT. */
    char y[32], other[32], gone[32];
    posting_on(sub_port, 1, "held", y, sizeof y);
    posting_on(sub_port, 0, "other", other, sizeof other);
    posting_on(sub_port, 1, "gone", gone, sizeof gone);
    rec hy = {0}, hy_lost = {0};
    /* ttl 15 s (renewed every 5 s): the lease outlasts a slow failover. */
    acq_start_renewed(h, y, 15000, &hy, &hy_lost);
    cr_assert(tl_wait(T, &hy.n, 1, 20000));
    cr_assert_eq(hy.status, BL_OK, "held: %s (%s)", bl_status_name(hy.status), hy.errmsg);

    /* The CLI in loops, through a reshard and the failover. */
    cli_counts *cc = mmap(NULL, CLI_PROCS * sizeof *cc, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(cc != MAP_FAILED);
    memset(cc, 0, CLI_PROCS * sizeof *cc);
    uint64_t t0 = mono_ms(), cli_end = t0 + 12000;
    pid_t kid[CLI_PROCS];
    for (int i = 0; i < CLI_PROCS; i++) {
        fflush(NULL);
        kid[i] = fork();
        cr_assert(kid[i] >= 0);
        if (kid[i] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            cli_loop(&cc[i], i, url, cli_end);
        }
    }
    tl_run_for(T, 800);
    unsigned cs = slot_of("cli0");
    cr_assert_eq(cb_migrate_slot(&bed, cs, other_master(cb_master_of(&bed, cs)), 1, 50), 0,
                 "reshard: %s", bed.err);
    tl_run_for(T, 500);

    /* kill -9 the master the subscriber is on. */
    cr_assert_eq(cb_wait_synced(&bed, 20000), 0, "%s", bed.err);
    bl_stats before;
    bl_manager_stats(h, &before);
    uint64_t t_kill = mono_ms();
    cr_assert_eq(cb_kill(&bed, victim), 0);
    int other_bad = 0, other_ok = 0, gone_bad = 0, failed_over = 0;
    uint64_t t_fo = 0, t_back = 0;
    rec g = {0};
    int g_out = 0;
    while (mono_ms() < t_kill + 30000 && !t_back) {
        /* The victim's slots come back: one try-once acquire out at a time
         * (one may wait out command_timeout_ms while the node is dead). */
        if (!g_out) {
            memset(&g, 0, sizeof g);
            bl_acquire_opts o = acq_opts(0, 3000);
            cr_assert_eq(bl_acquire(h, "ebay", gone, &o, on_acq, &g, NULL), BL_OK);
            g_out = 1;
        } else if (g.n == 1 && g.status == BL_OK) {
            if (failed_over)
                t_back = mono_ms();
            cr_assert_eq(bl_release(g.lock, on_rel, &g), BL_OK);
            cr_assert(tl_wait(T, &g.n, 2, 30000));
            g_out = 0;
        } else if (g.n == 1) {
            gone_bad++;
            g_out = 0;
        }
        /* Meanwhile the other shards never notice. */
        int st = probe(h, other);
        if (st == BL_OK)
            other_ok++;
        else
            other_bad++;
        if (!failed_over && cb_wait_failover(&bed, sub_port, 1) == 0) {
            failed_over = 1;
            t_fo = mono_ms();
        }
        tl_run_for(T, 10);
    }
    cr_assert(tl_wait(T, &g.n, g_out ? 1 : 0, 30000));
    if (g_out && g.status == BL_OK)
        cr_assert_eq(rel(g.lock), BL_OK);
    cr_assert(failed_over, "failover: the replica took over");
    cr_assert(t_back, "failover: the victim's slots work again");
    cr_assert_eq(other_bad, 0, "failover: the other shards never noticed (%d of %d failed)",
                 other_bad, other_bad + other_ok);
    /* The held lock: re-verified on its new master, not lost. */
    tl_run_for(T, 500);
    bl_stats after;
    bl_manager_stats(h, &after);
    cr_assert_geq(after.failovers, before.failovers + 1, "failover: noticed");
    cr_assert_geq(after.reverified, 1, "failover: held leases re-verified");
    cr_assert_eq(hy_lost.n, 0, "failover: the held (WAIT-acknowledged) lock survived: %s",
                 hy_lost.errmsg);
    /* The waiter: its subscription moved; the release wakes it. */
    bl_stats wbefore;
    bl_manager_stats(w, &wbefore);
    cr_assert_eq(wx.n, 0, "the waiter still waits");
    uint64_t t_rel = mono_ms();
    cr_assert_eq(rel(hx.lock), BL_OK);
    cr_assert(tl_wait(T, &wx.n, 1, 30000));
    cr_assert_eq(wx.status, BL_OK, "wake-ups: %s (%s)", bl_status_name(wx.status), wx.errmsg);
    bl_stats wafter;
    bl_manager_stats(w, &wafter);
    cr_assert_gt(wafter.wakeups, wbefore.wakeups, "wake-ups: woken by the release");
    cr_assert_eq(rel(wx.lock), BL_OK);
    cr_assert_eq(rel(hy.lock), BL_OK, "the held lock is still ours");
    fprintf(stderr,
            "cluster-test: failover of :%d: replica took over after %" PRIu64
            " ms, its slots worked again after %" PRIu64 " ms (%d failed probes before); "
            "other shards %d/%d probes OK; held lock reverified (%" PRIu64 "), not lost; "
            "waiter woken %" PRIu64 " ms after the release (%" PRIu64 " attempts, %" PRIu64
            " wake-ups in all)\n",
            sub_port, t_fo - t_kill, t_back - t_kill, gone_bad, other_ok, other_ok + other_bad,
            after.reverified, wx.at - t_rel, wafter.attempts, wafter.wakeups);

    for (int i = 0; i < CLI_PROCS; i++) {
        int st;
        uint64_t lim = cli_end + 60000;
        while (waitpid(kid[i], &st, WNOHANG) != kid[i] && mono_ms() < lim)
            tl_run_for(T, 20);
        if (kill(kid[i], SIGKILL) == 0)
            waitpid(kid[i], &st, 0);
    }
    uint32_t runs = 0, ok = 0;
    for (int i = 0; i < CLI_PROCS; i++) {
        runs += cc[i].runs;
        ok += cc[i].code[0];
        for (int code = 0; code < 256; code++)
            cr_assert(cc[i].code[code] == 0 || code == 0 || code == 69 || code == 75,
                      "cli: %u runs exited %d", cc[i].code[code], code);
    }
    fprintf(stderr, "cluster-test: cli: %u runs through a reshard and a failover, %u exited 0, "
                    "the rest 69/75\n", runs, ok);
    cr_assert_gt(ok, 0, "cli: some runs succeeded");
    munmap(cc, CLI_PROCS * sizeof *cc);

    /* Most masters killed: BL_ECONN in bounded time, never a grant. */
    int ms[8], nm = cb_masters(&bed, ms, 8);
    cr_assert_eq(nm, 3);
    int killed[2] = {cb_index(&bed, ms[0]), cb_index(&bed, ms[1])};
    char on_live[32], on_dead[32];
    posting_on(ms[2], 1, "live", on_live, sizeof on_live);
    posting_on(ms[0], 1, "dead", on_dead, sizeof on_dead);
    cr_assert_eq(cb_kill(&bed, killed[0]), 0);
    cr_assert_eq(cb_kill(&bed, killed[1]), 0);
    until = mono_ms() + 30000;
    int failing = 0;
    while (!failing && mono_ms() < until) {
        redisReply *r = cb_cmd(ms[2], "CLUSTER INFO");
        failing = r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:fail");
        if (r)
            freeReplyObject(r);
        tl_run_for(T, 50);
    }
    cr_assert(failing, "down: the last master says cluster_state:fail");
    for (int i = 0; i < 2; i++) {
        const char *p = i % 2 ? on_live : on_dead;
        uint64_t t = mono_ms();
        int st = probe(h, p);
        cr_assert_eq(st, BL_ECONN, "down: %s: %s, not a grant", p, bl_status_name(st));
        fprintf(stderr, "cluster-test: down: %s ended BL_ECONN after %" PRIu64 " ms\n", p,
                mono_ms() - t);
    }
    /* Restarted: grants again. */
    cr_assert_eq(cb_restart(&bed, killed[0]), 0, "%s", bed.err);
    cr_assert_eq(cb_restart(&bed, killed[1]), 0, "%s", bed.err);
    uint64_t t_up = mono_ms();
    int live_ok = 0, dead_ok = 0;
    until = t_up + 40000;
    while ((!live_ok || !dead_ok) && mono_ms() < until) {
        live_ok = live_ok || probe(h, on_live) == BL_OK;
        dead_ok = dead_ok || probe(h, on_dead) == BL_OK;
        tl_run_for(T, 50);
    }
    cr_assert(live_ok && dead_ok, "recovery: grants again after the restart");
    fprintf(stderr, "cluster-test: recovery: grants again %" PRIu64 " ms after the restart\n",
            mono_ms() - t_up);
    close_manager(T, h);
    close_manager(T, w);
    cb_stop(&bed);
}

/* ---- AUTH on every node ----------------------------------------------------------------- */

Test(cluster, auth_on_every_node)
{
    memset(&bed, 0, sizeof bed);
    snprintf(bed.password, sizeof bed.password, "s3cret-cluster");
    start_bed();
    char url[192];
    snprintf(url, sizeof url, "redis-cluster://:s3cret-cluster@127.0.0.1:%d", bed.node[2].port);
    bl_config c = cluster_cfg(url);
    bl_manager *m = mk(&c);
    int masters_seen[CB_NODES] = {0};
    for (int i = 0; i < 30; i++) {
        char id[16];
        snprintf(id, sizeof id, "auth%d", i);
        rec r = acq(m, id, 0, 60000);
        cr_assert_eq(r.status, BL_OK, "auth: %s: %s (%s)", id, bl_status_name(r.status),
                     r.errmsg);
        masters_seen[cb_index(&bed, cb_master_of(&bed, slot_of(id)))]++;
        cr_assert_eq(rel(r.lock), BL_OK);
    }
    int n = 0;
    for (int i = 0; i < CB_NODES; i++)
        n += masters_seen[i] > 0;
    cr_assert_eq(n, 3, "auth: every master's connection authenticated");
    close_manager(T, m);
    /* A wrong password fails closed, with the reason, nothing granted. */
    snprintf(url, sizeof url, "redis-cluster://:wrong@127.0.0.1:%d", bed.node[2].port);
    bl_config w = cluster_cfg(url);
    w.command_timeout_ms = 2000;
    bl_manager *bad = NULL;
    cr_assert_eq(bl_manager_new(tl_bl(T), &w, &bad), BL_OK);
    rec r = {0};
    bl_acquire_opts o = acq_opts(0, 1000);
    int rc = bl_acquire(bad, "ebay", "auth0", &o, on_acq, &r, NULL);
    const char *why = bl_manager_errmsg(bad);
    if (rc == BL_OK) {
        cr_assert(tl_wait(T, &r.n, 1, 30000));
        rc = r.status;
        why = r.errmsg;
    }
    cr_assert_eq(rc, BL_ECONN, "auth: wrong password: %s", bl_status_name(rc));
    cr_assert(strstr(why, "NOAUTH") || strstr(why, "WRONGPASS") || strstr(why, "AUTH"),
              "auth: the reason is given: %s", why);
    cr_assert_null(strstr(why, "wrong@"), "never the password");
    close_manager(T, bad);
    cb_stop(&bed);
    memset(&bed, 0, sizeof bed);
}
