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

TestSuite(cluster, .init = fx_loop_init, .fini = fx_loop_fini, .timeout = 240);

static cb_bed bed;

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
#define SAFE_RUN_MS 4000

typedef struct shared {
    /* written only under the posting's lock */
    uint64_t counter[SAFE_POSTINGS], last_token[SAFE_POSTINGS];
    /* each process its own */
    uint64_t grants[SAFE_PROCS], redirects[SAFE_PROCS], refreshes[SAFE_PROCS];
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

static void safety_child(shared *S, int me, const char *url, uint64_t end)
{
    tloop *t = tl_new();
    bl_config c = cluster_cfg(url);
    bl_manager *m = NULL;
    if (bl_manager_new(tl_bl(t), &c, &m) != BL_OK) {
        S->setup[me] = 1;
        _exit(0);
    }
    uint64_t rng = (uint64_t)me * 7919 + 1;
    while (mono_ms() < end) {
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
    tl_run_for(t, 100);
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
    uint64_t t0 = mono_ms(), end = t0 + SAFE_RUN_MS;
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
    for (int i = 0; i < SAFE_PROCS; i++) {
        int st;
        uint64_t until = end + 60000;
        while (waitpid(kid[i], &st, WNOHANG) != kid[i] && mono_ms() < until)
            usleep(10000);
        if (kill(kid[i], SIGKILL) == 0)
            waitpid(kid[i], &st, 0);
    }
    uint64_t grants = 0, counted = 0, redirects = 0, refreshes = 0;
    for (int i = 0; i < SAFE_PROCS; i++) {
        cr_assert_eq(S->setup[i], 0, "safety: process %d could not start", i);
        cr_assert_eq(S->hung[i], 0, "safety: process %d: a callback never came", i);
        cr_assert_eq(S->acq_err[i] + S->rel_err[i], 0, "safety: process %d saw an error: %s", i,
                     S->why[i]);
        cr_assert_eq(S->bad_token[i], 0, "safety: process %d: a token did not increase", i);
        grants += S->grants[i];
        redirects += S->redirects[i];
        refreshes += S->refreshes[i];
    }
    for (int p = 0; p < SAFE_POSTINGS; p++)
        counted += S->counter[p];
    fprintf(stderr,
            "cluster-test: safety while resharding: %d processes, %d ms, %d slots moved "
            "(done at %" PRIu64 " ms); %" PRIu64 " grants, counters sum %" PRIu64
            "; %" PRIu64 " redirections followed, %" PRIu64 " map reads\n",
            SAFE_PROCS, SAFE_RUN_MS, moved, t_moved - t0, grants, counted, redirects, refreshes);
    cr_assert_eq(counted, grants, "safety: every counter is exact");
    cr_assert_gt(grants, 100);
    cr_assert_gt(redirects, 0, "the reshard was met (else this test proves nothing)");
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

Test(cluster, routing_safety_and_resharding)
{
    start_bed();
    char url[128];
    url_of(url, sizeof url);
    bl_config c = cluster_cfg(url);
    bl_manager *m = mk(&c);
    routing(m);
    close_manager(T, m);
    safety_while_resharding(url);
    waiter_on_a_migrated_lock(url);
    cb_stop(&bed);
}
