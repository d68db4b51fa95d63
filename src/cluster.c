/* cluster.c - the Redis Cluster backend (redis-cluster:// seed nodes).
 *
 * A backend of backends: every master of the slot map gets its own Redis
 * backend (redis_node_new: the single-server connection, AUTH, script
 * cache, NOSCRIPT, WAIT and reconnect code as it is), opened the first time
 * an operation goes there. This file only routes:
 *  - the slot map comes from CLUSTER SLOTS, asked on a node's lock
 *    connection (any node that answers; the seeds when none is known);
 *  - an operation goes to the master of its lock key's slot (every name of
 *    a lock hashes there, keyspace.h), wrapped in a creq whose done hook
 *    sees the answer before the engine does;
 *  - MOVED: the slot's owner is updated at once, a full refresh follows
 *    (at most one per CL_REFRESH_MIN_MS), and the operation is sent again;
 *    ASK: ASKING plus a resend to that node, once, the map unchanged;
 *    TRYAGAIN (a slot mid-migration whose keys are split), CLUSTERDOWN and
 *    a node that is not connected: sent again from one timer, 25 ms
 *    growing to 200 ms, within command_timeout_ms, then BL_ECONN;
 *  - a lost connection (a dead node never answers MOVED): the map is read
 *    again from another node; the engine sees BL_ECONN, as on one server;
 *  - at most CL_REDIRECTS_MAX redirections per operation. The engine never
 *    sees one: it sees the final answer, and a BL_BE_REDIRECTED event.
 * Wake-ups: classic SUBSCRIBE on one master's subscriber connection
 * (PUBLISH is broadcast over the cluster bus); when that master leaves the
 * map or its subscriber connection stays down, the subscriptions move to
 * another master (its "subscribe" replies wake every waiter once).
 * Replicas are never asked for lock state. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "backoff.h"
#include "ids.h"
#include "resp.h"
#include "redis.h"

#define CL_NODES_MAX 128
#define CL_NONE BL_SLOT_NONE
#define CL_REDIRECTS_MAX 8
#define CL_REFRESH_MIN_MS 200 /* between two slot map reads */
#define CL_RETRY_FIRST_MS 25
#define CL_RETRY_MAX_MS 200
#define CL_TICK_MS 1000 /* looks at the subscriber connection while anyone waits */

typedef struct cluster cluster;

typedef struct cnode {
    cluster *cl;
    int idx;
    char ip[INET6_ADDRSTRLEN];
    int port;
    char name[INET6_ADDRSTRLEN + 8]; /* "ip:port" */
    bl_backend *be;                  /* its lock connection, opened lazily */
    bl_backend_host h;               /* what be was given: ctx = this node */
    int master, slots;               /* in the current map */
    int closing, closed;             /* be shut down; freed once closed */
} cnode;

/* One lock operation on its way through the cluster. */
typedef struct creq {
    bl_op sub; /* what a node runs: a copy of orig, done = sub_done */
    bl_op *orig;
    cluster *cl;
    cnode *node; /* where it went last */
    cnode *ask;  /* ASK: the next send goes there, behind ASKING */
    int redirects, asked;
    uint64_t started, due;
    uint32_t pause;
    char errbuf[BL_ERRMSG_MAX];
    struct creq *next;
} creq;

struct cluster {
    bl_backend base;
    bl_backend_host h;
    bl_url url;
    cnode *nodes[CL_NODES_MAX];
    int nnodes;
    int seeds[BL_URL_SEEDS_MAX], nseeds;
    uint16_t owner[BL_CLUSTER_SLOTS];
    uint16_t scratch[BL_CLUSTER_SLOTS];
    int map_ok;
    int down; /* the last refresh reached no node: operations fail fast */
    char down_why[BL_ERRMSG_MAX];
    /* slot map reads: one at a time, over a list of candidate nodes */
    int refreshing, refresh_again, asked_node;
    char slots_err[200]; /* the last refusal of a CLUSTER SLOTS in this round */
    int cand[CL_NODES_MAX], ncand, cand_pos;
    cnode *avoid;
    uint64_t last_refresh;
    bl_timer *refresh_timer;
    int refresh_armed;
    double refresh_step;
    /* operations waiting for a map, or for their retry */
    creq *mapq, **mapq_tail;
    creq *delayed;
    bl_timer *retry_timer;
    int retry_armed;
    uint64_t retry_at;
    /* wake-ups */
    int sub_node; /* -1: none yet */
    int watching; /* keys with waiters, as the engine said */
    bl_timer *tick_timer;
    int tick_armed;
    /* admin answers that end without a node, admin operations waiting for
     * the first map, and children to free */
    bl_aop *deferred, *admin_wait;
    bl_timer *defer_timer, *reap_timer;
    int open_children;
    int shutting, closed_notified, freeing;
};

static inline const bl_loop *CL_LOOP(const cluster *cl) { return cl->h.loop; }
static uint64_t cl_now(const cluster *cl) { return bl_host_now(&cl->h); }

static void refresh(cluster *cl, cnode *avoid);
static int route(creq *q, int from_start);

/* ---- nodes --------------------------------------------------------------------- */

static cnode *node_find(cluster *cl, const char *ip, int port)
{
    for (int i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i]->port == port && strcmp(cl->nodes[i]->ip, ip) == 0)
            return cl->nodes[i];
    return NULL;
}

/* The node at ip:port (a numeric address), added if new; NULL if the
 * table is full, the address is not numeric, or out of memory. */
static cnode *node_get(cluster *cl, const char *ip, int port)
{
    cnode *n = node_find(cl, ip, port);
    if (n)
        return n;
    unsigned char buf[sizeof(struct in6_addr)];
    if (cl->nnodes == CL_NODES_MAX || port < 1 || port > 65535 ||
        strlen(ip) >= INET6_ADDRSTRLEN ||
        (inet_pton(AF_INET, ip, buf) != 1 && inet_pton(AF_INET6, ip, buf) != 1))
        return NULL;
    n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->cl = cl;
    n->idx = cl->nnodes;
    snprintf(n->ip, sizeof n->ip, "%s", ip);
    n->port = port;
    snprintf(n->name, sizeof n->name, strchr(ip, ':') ? "[%s]:%d" : "%s:%d", ip, port);
    cl->nodes[cl->nnodes++] = n;
    return n;
}

static int node_granted(void *ctx, const char *key, size_t keylen, uint64_t token)
{
    cnode *n = ctx;
    return n->cl->h.granted ? n->cl->h.granted(n->cl->h.ctx, key, keylen, token) : 0;
}

static void node_wake(void *ctx, const char *key, size_t keylen, int directed)
{
    cnode *n = ctx;
    n->cl->h.wake(n->cl->h.ctx, key, keylen, directed);
}

static void maybe_closed(cluster *cl)
{
    if (!cl->shutting || cl->closed_notified || cl->open_children > 0 || cl->refreshing)
        return;
    cl->closed_notified = 1;
    cl->h.closed(cl->h.ctx);
}

static void node_closed(void *ctx)
{
    cnode *n = ctx;
    cluster *cl = n->cl;
    n->closed = 1;
    cl->open_children--;
    if (cl->shutting) {
        maybe_closed(cl);
    } else if (!cl->freeing) {
        CL_LOOP(cl)->timer_start(cl->reap_timer, 0); /* never free inside its own hook */
    }
}

static void node_event(void *ctx, int ev)
{
    cnode *n = ctx;
    if (ev != BL_BE_MASTER_CHANGED) /* a node's address never changes */
        n->cl->h.event(n->cl->h.ctx, ev);
}

static uint64_t node_rand(void *ctx)
{
    cnode *n = ctx;
    return n->cl->h.rand(n->cl->h.ctx);
}

static void node_log(void *ctx, int level, const char *line)
{
    cnode *n = ctx;
    char l[600];
    /* "bidlock: ..." from the node: say which node. */
    snprintf(l, sizeof l, "%s [%s]", line, n->name);
    n->cl->h.log(n->cl->h.ctx, level, l);
}

/* The node's backend, opened now if it has none; NULL while an old one
 * is still closing, or on out of memory. */
static bl_backend *node_be(cnode *n)
{
    cluster *cl = n->cl;
    if (n->be)
        return n->closing ? NULL : n->be;
    if (cl->shutting)
        return NULL;
    n->h = cl->h;
    n->h.ctx = n;
    n->h.wake = node_wake;
    n->h.granted = node_granted;
    n->h.closed = node_closed;
    n->h.event = node_event;
    n->h.rand = node_rand;
    n->h.log = cl->h.log ? node_log : NULL;
    n->closed = n->closing = 0;
    if (redis_node_new(&n->h, n->ip, n->port, cl->url.username, cl->url.password, &n->be) != 0) {
        n->be = NULL;
        return NULL;
    }
    cl->open_children++;
    return n->be;
}

static redis_be *node_rb(const cnode *n)
{
    return n->be && !n->closing ? (redis_be *)n->be : NULL;
}

/* Close a node's backend (it left the map): in-flight operations end
 * there (a MOVED, or BL_ECONN) and come back here. */
static void node_retire(cnode *n)
{
    if (!n->be || n->closing)
        return;
    n->closing = 1;
    bl_host_log(&n->cl->h, BL_LOG_INFO, "bidlock: cluster node %s is no longer a master",
                n->name);
    n->be->vt->shutdown(n->be, 1);
}

static void reap_cb(void *data)
{
    cluster *cl = data;
    for (int i = 0; i < cl->nnodes; i++) {
        cnode *n = cl->nodes[i];
        if (n->be && n->closing && n->closed) {
            n->be->vt->free(n->be);
            n->be = NULL;
            n->closing = n->closed = 0;
        }
    }
}

/* ---- finishing and delaying operations ------------------------------------------ */

static void finish(creq *q, const bl_op_result *r)
{
    bl_op *orig = q->orig;
    free(q);
    orig->done(orig, r);
}

static void finish_err(creq *q, int status, const char *why)
{
    /* why may point into q (or a reply): copy it before q goes. */
    char msg[BL_ERRMSG_MAX];
    snprintf(msg, sizeof msg, "%s", why);
    bl_op_result r = {status, 0, 0, msg, 0, 0};
    bl_op *orig = q->orig;
    free(q);
    orig->done(orig, &r);
}

static void arm_retry(cluster *cl, uint64_t at)
{
    uint64_t now = cl_now(cl);
    if (cl->retry_armed && cl->retry_at <= at)
        return;
    cl->retry_armed = 1;
    cl->retry_at = at;
    CL_LOOP(cl)->timer_start(cl->retry_timer, at > now ? at - now : 0);
}

/* Send q again after a pause (TRYAGAIN, CLUSTERDOWN, a node not
 * connected), if its time allows: 1, or 0 when it is over. */
static int delay(creq *q)
{
    cluster *cl = q->cl;
    uint64_t now = cl_now(cl);
    if (now - q->started >= cl->h.cfg->command_timeout_ms)
        return 0;
    q->pause = q->pause ? (q->pause * 2 > CL_RETRY_MAX_MS ? CL_RETRY_MAX_MS : q->pause * 2)
                        : CL_RETRY_FIRST_MS;
    q->due = now + q->pause;
    q->next = cl->delayed;
    cl->delayed = q;
    arm_retry(cl, q->due);
    return 1;
}

static void retry_cb(void *data)
{
    cluster *cl = data;
    cl->retry_armed = 0;
    uint64_t now = cl_now(cl), next = UINT64_MAX;
    creq *due = NULL, **pp = &cl->delayed;
    while (*pp) {
        creq *q = *pp;
        if (q->due <= now) {
            *pp = q->next;
            q->next = due;
            due = q;
        } else {
            if (q->due < next)
                next = q->due;
            pp = &q->next;
        }
    }
    while (due) {
        creq *q = due;
        due = q->next;
        route(q, 0);
    }
    if (next != UINT64_MAX)
        arm_retry(cl, next);
}

static void fail_list(creq *list, int status, const char *why)
{
    while (list) {
        creq *q = list;
        list = q->next;
        finish_err(q, status, why);
    }
}

/* ---- routing ------------------------------------------------------------------------ */

static void sub_done(bl_op *op, const bl_op_result *r);

static void wait_for_map(creq *q)
{
    cluster *cl = q->cl;
    q->next = NULL;
    *cl->mapq_tail = q;
    cl->mapq_tail = &q->next;
    refresh(cl, NULL);
}

/* Send q to the node that owns its slot (or that an ASK named). From
 * vt->start (from_start): a negative status means nothing was sent and
 * q is freed; the caller says so synchronously. Otherwise q is finished
 * here on failure. */
static int route(creq *q, int from_start)
{
    cluster *cl = q->cl;
    if (cl->shutting) {
        if (from_start) {
            snprintf(q->orig->errbuf, BL_ERRMSG_MAX, "manager closed");
            free(q);
            return BL_ECONN;
        }
        finish_err(q, BL_ECONN, "manager closed");
        return 0;
    }
    if (cl->down && from_start) {
        snprintf(q->orig->errbuf, BL_ERRMSG_MAX, "Redis Cluster unreachable: %.180s", cl->down_why);
        free(q);
        refresh(cl, NULL);
        return BL_ECONN;
    }
    if (!cl->map_ok) {
        wait_for_map(q);
        return 0;
    }
    const bl_keys *k = q->orig->keys;
    unsigned slot = bl_key_slot(k->k[BL_KEY_LOCK], k->len[BL_KEY_LOCK]);
    cnode *n = q->ask ? q->ask : cl->owner[slot] == CL_NONE ? NULL : cl->nodes[cl->owner[slot]];
    int asking = q->ask != NULL;
    q->ask = NULL;
    bl_backend *be = n ? node_be(n) : NULL;
    int rc = BL_ECONN;
    if (be) {
        q->node = n;
        q->sub.errbuf = q->errbuf;
        q->errbuf[0] = '\0';
        rc = asking ? redis_op_start_asking(be, &q->sub) : be->vt->start(be, &q->sub);
        if (rc == 0)
            return 0;
    }
    if (rc == BL_ENOMEM || (!be && n && !n->closing)) {
        if (from_start) {
            snprintf(q->orig->errbuf, BL_ERRMSG_MAX, "out of memory");
            free(q);
            return BL_ENOMEM;
        }
        finish_err(q, BL_ENOMEM, "out of memory");
        return 0;
    }
    /* Nothing was sent: no owner (a slot not served), or its node is not
     * connected (down, or closing after it left the map). Read the map
     * again and retry in a moment, within the operation's time. */
    char why[BL_ERRMSG_MAX];
    if (!n)
        snprintf(why, sizeof why, "Redis Cluster: no master serves slot %u", slot);
    else
        snprintf(why, sizeof why, "Redis Cluster node %s: %.160s", n->name,
                 q->errbuf[0] ? q->errbuf : "not connected");
    refresh(cl, n);
    /* An acquire waits for the map to name a reachable master (a failover
     * takes seconds). A release or renewal does not: by then the lease may
     * be over, and "not held" would be a wrong answer to a release that
     * never reached the server; it fails now, as on one server. */
    if (q->orig->kind == BL_OP_ACQUIRE && delay(q))
        return 0;
    if (from_start) {
        snprintf(q->orig->errbuf, BL_ERRMSG_MAX, "%s", why);
        free(q);
        return BL_ECONN;
    }
    finish_err(q, BL_ECONN, why);
    return 0;
}


static int starts(const char *s, const char *word)
{
    size_t n = strlen(word);
    return s && strncmp(s, word, n) == 0 && (s[n] == ' ' || s[n] == '\0');
}

static void sub_done(bl_op *op, const bl_op_result *r)
{
    creq *q = (creq *)((char *)op - offsetof(creq, sub));
    cluster *cl = q->cl;
    const char *e = r->status == BL_EREDIS ? r->errmsg : NULL;
    int moved = starts(e, "MOVED"), ask = starts(e, "ASK");
    if (moved || ask) {
        unsigned slot;
        char ip[INET6_ADDRSTRLEN];
        int port;
        cnode *to = NULL;
        int is_ask;
        if (bl_redis_parse_redirect(e, &is_ask, &slot, ip, sizeof ip, &port) == 0)
            to = node_get(cl, ip, port);
        if (!to || ++q->redirects > CL_REDIRECTS_MAX) {
            char why[BL_ERRMSG_MAX];
            snprintf(why, sizeof why, "Redis Cluster: %s after %d redirections (%.160s)",
                     to ? "gave up" : "cannot follow", q->redirects, e);
            finish_err(q, BL_ECONN, why);
            return;
        }
        cl->h.event(cl->h.ctx, BL_BE_REDIRECTED);
        bl_host_log(&cl->h, BL_LOG_DEBUG, "bidlock: %s from %s: to %s", moved ? "MOVED" : "ASK",
                    q->node ? q->node->name : "?", to->name);
        if (moved) {
            cl->owner[slot] = (uint16_t)to->idx; /* at once; a full read follows */
            refresh(cl, NULL);
        } else {
            q->ask = to;
        }
        route(q, 0);
        return;
    }
    if (starts(e, "TRYAGAIN") || starts(e, "CLUSTERDOWN")) {
        char why[BL_ERRMSG_MAX];
        snprintf(why, sizeof why, "Redis Cluster node %s: %.160s",
                 q->node ? q->node->name : "?", e);
        bl_host_log(&cl->h, BL_LOG_DEBUG, "bidlock: %.160s: retrying", why);
        if (starts(e, "CLUSTERDOWN"))
            refresh(cl, NULL);
        if (!delay(q))
            finish_err(q, BL_ECONN, why);
        return;
    }
    if (r->status == BL_ECONN)
        refresh(cl, q->node); /* the node may be gone: ask another one */
    finish(q, r);
}

/* ---- groups across slots ---------------------------------------------------------
 * A group (bl_acquire_many) whose postings share a slot runs as one script
 * on its master. Across slots no script can: the postings are taken one at
 * a time, in one fixed order (their lock keys, bytewise: two groups that
 * overlap meet in the same order), each by the single-posting acquire
 * without a queue entry; the first that is taken or done gives back what
 * this one took and ends the group with that posting's answer, so a group
 * never holds part of itself while it waits (the engine retries it on its
 * timer). Release, release-done and renewal go to every posting at once. */

typedef struct cgroup cgroup;
typedef struct cpart {
    bl_op op; /* first: its done gets back here */
    cgroup *g;
    size_t i; /* the posting, in the caller's order */
} cpart;

enum { CG_ACQUIRE, CG_ROLLBACK, CG_ALL };

struct cgroup {
    cluster *cl;
    bl_op *orig;
    size_t n, next, pending;
    int phase;
    size_t order[BL_GROUP_MAX];
    int taken[BL_GROUP_MAX];
    cpart part[BL_GROUP_MAX];
    bl_op_result res; /* the group's answer once decided (errmsg -> err) */
    char err[BL_ERRMSG_MAX], errbuf[BL_ERRMSG_MAX];
};

static int cl_start(bl_backend *be, bl_op *op);
static void cg_done(bl_op *op, const bl_op_result *r);

/* Never called inside cl_start for the group's own op (the engine's rule:
 * done comes later): group_start answers a failure it meets before
 * anything was sent by its return value instead. */
static void cg_finish(cgroup *g)
{
    bl_op *orig = g->orig;
    bl_op_result r = g->res;
    char msg[BL_ERRMSG_MAX];
    snprintf(msg, sizeof msg, "%s", g->err);
    r.errmsg = r.status == BL_OK || r.status == BL_EBUSY || r.status == BL_EDONE ||
                       r.status == BL_ENOTHELD
                   ? NULL
                   : msg;
    if (r.status == BL_OK && orig->kind == BL_OP_ACQUIRE)
        r.token = orig->tokens[0];
    free(g);
    orig->done(orig, &r);
}

/* Keep the first error of the group (a connection or server error wins
 * over "not held"). */
static void cg_note(cgroup *g, const bl_op_result *r, size_t i)
{
    int serious = r->status != BL_OK && r->status != BL_ENOTHELD;
    int had = g->res.status != BL_OK && g->res.status != BL_ENOTHELD;
    if (r->status == BL_OK || had || (!serious && g->res.status == BL_ENOTHELD))
        return;
    g->res.status = r->status;
    g->res.index = (int)i;
    snprintf(g->err, sizeof g->err, "%s", r->errmsg ? r->errmsg : "");
}

static int cg_send(cgroup *g, size_t i, enum bl_op_kind kind)
{
    cpart *p = &g->part[i];
    bl_op *o = g->orig;
    p->op = (bl_op){.kind = kind, .keys = &o->keys[i], .ttl_ms = o->ttl_ms,
                    .errbuf = g->errbuf, .done = NULL};
    p->g = g;
    p->i = i;
    p->op.done = cg_done;
    g->errbuf[0] = '\0';
    return cl_start(&g->cl->base, &p->op);
}

static void cg_rollback(cgroup *g);

/* Take the next posting, in order; all taken: the group holds. */
static void cg_next(cgroup *g)
{
    while (g->next < g->n) {
        size_t i = g->order[g->next];
        int rc = cg_send(g, i, BL_OP_ACQUIRE);
        if (rc == 0)
            return; /* cg_done goes on */
        bl_op_result r = {rc, 0, 0, g->errbuf, 0, 0};
        cg_note(g, &r, i);
        cg_rollback(g);
        return;
    }
    cg_finish(g);
}

/* Give back every posting this acquire took, then answer. */
static void cg_rollback(cgroup *g)
{
    g->phase = CG_ROLLBACK;
    g->pending = 1; /* this loop's own hold: no answer inside it finishes */
    for (size_t k = 0; k < g->n; k++)
        if (g->taken[k]) {
            g->taken[k] = 0;
            if (cg_send(g, k, BL_OP_RELEASE) == 0)
                g->pending++;
        }
    if (--g->pending == 0)
        cg_finish(g);
}

static void cg_done(bl_op *op, const bl_op_result *r)
{
    cpart *p = (cpart *)op;
    cgroup *g = p->g;
    switch (g->phase) {
    case CG_ACQUIRE:
        if (r->status == BL_OK) {
            g->taken[p->i] = 1;
            g->orig->tokens[p->i] = r->token;
            g->next++;
            cg_next(g);
            return;
        }
        /* taken (by anyone, our own id too: a group never reclaims), done,
         * or an error: this answer is the group's */
        g->res = (bl_op_result){r->status, 0, 0, NULL, 0, (int)p->i};
        snprintf(g->err, sizeof g->err, "%s", r->errmsg ? r->errmsg : "");
        cg_rollback(g);
        return;
    case CG_ROLLBACK:
        if (--g->pending == 0)
            cg_finish(g);
        return;
    default:
        if (r->handed_off)
            g->res.handed_off = 1;
        cg_note(g, r, p->i);
        if (--g->pending == 0)
            cg_finish(g);
        return;
    }
}

static int cmp_keys(const void *a, const void *b, void *ks)
{
    const bl_keys *k = ks;
    const bl_keys *x = &k[*(const size_t *)a], *y = &k[*(const size_t *)b];
    size_t n = x->len[BL_KEY_LOCK] < y->len[BL_KEY_LOCK] ? x->len[BL_KEY_LOCK] : y->len[BL_KEY_LOCK];
    int c = memcmp(x->k[BL_KEY_LOCK], y->k[BL_KEY_LOCK], n);
    return c ? c : (x->len[BL_KEY_LOCK] > y->len[BL_KEY_LOCK]) - (x->len[BL_KEY_LOCK] < y->len[BL_KEY_LOCK]);
}

static int group_start(cluster *cl, bl_op *op)
{
    if (op->kind != BL_OP_ACQUIRE && op->kind != BL_OP_RELEASE &&
        op->kind != BL_OP_RELEASE_DONE && op->kind != BL_OP_EXTEND) {
        snprintf(op->errbuf, BL_ERRMSG_MAX, "a group cannot do that");
        return BL_EINVAL;
    }
    cgroup *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(op->errbuf, BL_ERRMSG_MAX, "out of memory");
        return BL_ENOMEM;
    }
    g->cl = cl;
    g->orig = op;
    g->n = op->nkeys;
    g->res = (bl_op_result){BL_OK, 0, 0, NULL, 0, 0};
    for (size_t i = 0; i < g->n; i++)
        g->order[i] = i;
    qsort_r(g->order, g->n, sizeof g->order[0], cmp_keys, (void *)op->keys);
    int rc = 0;
    if (op->kind == BL_OP_ACQUIRE) {
        g->phase = CG_ACQUIRE;
        rc = cg_send(g, g->order[0], BL_OP_ACQUIRE); /* cg_done takes the next */
    } else {
        g->phase = CG_ALL;
        int first = 0;
        for (size_t k = 0; k < g->n; k++) {
            size_t i = g->order[k];
            int r1 = cg_send(g, i, op->kind);
            if (r1 == 0) {
                g->pending++; /* answers never come inside cl_start */
                continue;
            }
            bl_op_result r = {r1, 0, 0, g->errbuf, 0, 0};
            cg_note(g, &r, i);
            first = first ? first : r1;
        }
        rc = g->pending ? 0 : first;
    }
    if (rc) { /* nothing went out */
        snprintf(op->errbuf, BL_ERRMSG_MAX, "%s", g->errbuf[0] ? g->errbuf : g->err);
        free(g);
    }
    return rc;
}

static int cl_start(bl_backend *be, bl_op *op)
{
    cluster *cl = (cluster *)be;
    /* A group on one slot is one script on its master; across slots it
     * is taken posting by posting (above). */
    for (size_t i = 1; i < op->nkeys; i++)
        if (bl_key_slot(op->keys[i].k[BL_KEY_LOCK], op->keys[i].len[BL_KEY_LOCK]) !=
            bl_key_slot(op->keys[0].k[BL_KEY_LOCK], op->keys[0].len[BL_KEY_LOCK]))
            return group_start(cl, op);
    creq *q = calloc(1, sizeof *q);
    if (!q) {
        snprintf(op->errbuf, BL_ERRMSG_MAX, "out of memory");
        return BL_ENOMEM;
    }
    q->orig = op;
    q->cl = cl;
    q->sub = *op;
    q->sub.done = sub_done;
    q->started = cl_now(cl);
    return route(q, 1);
}

static void cl_leave(bl_backend *be, const bl_keys *keys)
{
    cluster *cl = (cluster *)be;
    if (!cl->map_ok)
        return; /* the queue entry expires with its TTL */
    unsigned slot = bl_key_slot(keys->k[BL_KEY_LOCK], keys->len[BL_KEY_LOCK]);
    if (cl->owner[slot] == CL_NONE)
        return;
    bl_backend *nb = node_be(cl->nodes[cl->owner[slot]]);
    if (nb)
        nb->vt->leave(nb, keys);
}

/* ---- the slot map ------------------------------------------------------------------- */

static void move_subscriber(cluster *cl);
static void send_refresh(cluster *cl);

static void refresh_timer_cb(void *data)
{
    cluster *cl = data;
    cl->refresh_armed = 0;
    if (!cl->refreshing && !cl->shutting)
        refresh(cl, NULL);
}

/* Read the map again, from a node other than avoid if there is one: now,
 * or once CL_REFRESH_MIN_MS has passed since the last read. */
static void refresh(cluster *cl, cnode *avoid)
{
    if (cl->shutting)
        return;
    if (avoid)
        cl->avoid = avoid;
    if (cl->refreshing) {
        cl->refresh_again = 1;
        return;
    }
    uint64_t now = cl_now(cl);
    if (cl->last_refresh && now - cl->last_refresh < CL_REFRESH_MIN_MS) {
        if (!cl->refresh_armed) {
            cl->refresh_armed = 1;
            CL_LOOP(cl)->timer_start(cl->refresh_timer,
                                     CL_REFRESH_MIN_MS - (now - cl->last_refresh));
        }
        return;
    }
    if (cl->refresh_armed) {
        CL_LOOP(cl)->timer_stop(cl->refresh_timer);
        cl->refresh_armed = 0;
    }
    /* Candidates: masters whose connection is up, the other nodes, the
     * seeds; the node to avoid last. */
    cl->ncand = cl->cand_pos = 0;
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < cl->nnodes; i++) {
            cnode *n = cl->nodes[i];
            redis_be *rb = node_rb(n);
            int up = rb && rb->cmd.state == CONN_UP;
            int pick = pass == 0   ? n != cl->avoid && n->master && up
                       : pass == 1 ? n != cl->avoid && !(n->master && up)
                                   : n == cl->avoid;
            if (pick)
                cl->cand[cl->ncand++] = i;
        }
    cl->avoid = NULL;
    cl->refreshing = 1;
    cl->slots_err[0] = '\0';
    cl->last_refresh = now;
    send_refresh(cl);
}

/* bl_redis_parse_slots's node lookup: the node at that address (an empty
 * one is the node that answered), made known if new. */
typedef struct slots_ctx {
    cluster *cl;
    const cnode *asked;
} slots_ctx;

static int slots_node(void *ctx_, const char *ip, long long port, int master)
{
    slots_ctx *ctx = ctx_;
    if (!ip[0])
        ip = ctx->asked->ip;
    cnode *n = port >= 1 && port <= 65535 ? node_get(ctx->cl, ip, (int)port) : NULL;
    if (!n && master)
        bl_host_log(&ctx->cl->h, BL_LOG_WARN,
                    "bidlock: cluster: cannot use master %s:%lld (not a numeric address)", ip,
                    port);
    return n ? n->idx : -1;
}

static int parse_slots(cluster *cl, const redisReply *rep, const cnode *asked)
{
    slots_ctx ctx = {cl, asked};
    return bl_redis_parse_slots(rep, cl->scratch, slots_node, &ctx);
}

static void apply_map(cluster *cl)
{
    int was_master[CL_NODES_MAX], slots[CL_NODES_MAX] = {0};
    for (int i = 0; i < cl->nnodes; i++)
        was_master[i] = cl->nodes[i]->master;
    int new_master = 0;
    for (int s = 0; s < BL_CLUSTER_SLOTS; s++) {
        uint16_t o = cl->scratch[s];
        if (o != CL_NONE) {
            slots[o]++;
            if (cl->map_ok && !was_master[o])
                new_master = 1;
        }
    }
    memcpy(cl->owner, cl->scratch, sizeof cl->owner);
    int first = !cl->map_ok;
    cl->map_ok = 1;
    cl->down = 0;
    for (int i = 0; i < cl->nnodes; i++) {
        cnode *n = cl->nodes[i];
        n->slots = slots[i];
        n->master = slots[i] > 0;
    }
    cl->h.event(cl->h.ctx, BL_BE_MAP_REFRESHED);
    if (first) {
        int masters = 0;
        for (int i = 0; i < cl->nnodes; i++)
            masters += cl->nodes[i]->master;
        bl_host_log(&cl->h, BL_LOG_INFO, "bidlock: Redis Cluster slot map: %d masters",
                    masters);
    }
    move_subscriber(cl);
    for (int i = 0; i < cl->nnodes; i++)
        if (!cl->nodes[i]->master)
            node_retire(cl->nodes[i]);
    if (new_master) {
        /* A replica took over (failover): held leases are checked again on
         * their (new) masters at once, as after a Sentinel failover. */
        bl_host_log(&cl->h, BL_LOG_WARN, "bidlock: Redis Cluster: a new master took slots over");
        cl->h.event(cl->h.ctx, BL_BE_MASTER_CHANGED);
    }
}

static int cl_admin(bl_backend *be, bl_aop *op);
static void admin_later(cluster *cl, bl_aop *op, int status, const char *msg);

/* Admin operations that waited for the map: start them now (or fail them,
 * with the map still missing, from the defer timer). */
static void admin_flush(cluster *cl)
{
    bl_aop *list = cl->admin_wait;
    cl->admin_wait = NULL;
    while (list) {
        bl_aop *op = list;
        list = op->next;
        op->next = NULL;
        if (cl_admin(&cl->base, op) != 0)
            admin_later(cl, op, BL_ENOMEM, "out of memory");
    }
}

static void refresh_done(cluster *cl, int ok, const char *why)
{
    cl->refreshing = 0;
    if (cl->shutting) {
        maybe_closed(cl);
        return;
    }
    if (ok) {
        cl->refresh_step = 0;
        creq *list = cl->mapq;
        cl->mapq = NULL;
        cl->mapq_tail = &cl->mapq;
        while (list) {
            creq *q = list;
            list = q->next;
            route(q, 0);
        }
        admin_flush(cl);
    } else {
        cl->down = 1;
        snprintf(cl->down_why, sizeof cl->down_why, "%s", why);
        admin_flush(cl); /* down: each ends BL_ECONN from the defer timer */
        bl_host_log(&cl->h, BL_LOG_WARN, "bidlock: Redis Cluster: no slot map: %s", why);
        creq *list = cl->mapq;
        cl->mapq = NULL;
        cl->mapq_tail = &cl->mapq;
        char msg[BL_ERRMSG_MAX];
        snprintf(msg, sizeof msg, "Redis Cluster unreachable: %.180s", why);
        fail_list(list, BL_ECONN, msg);
        /* Keep trying, with backoff: the cluster comes back by itself. */
        bl_backoff b = {cl->h.cfg->reconnect_initial_ms, 2000.0, 2.0};
        uint64_t pause = bl_backoff_next(&b, &cl->refresh_step, cl->h.rand(cl->h.ctx), 0,
                                         UINT64_MAX);
        cl->refresh_armed = 1;
        CL_LOOP(cl)->timer_start(cl->refresh_timer, pause);
        return;
    }
    if (cl->refresh_again) {
        cl->refresh_again = 0;
        refresh(cl, NULL);
    }
}

static void slots_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)ac;
    cluster *cl = priv;
    redisReply *reply = reply_;
    if (cl->freeing)
        return;
    if (cl->shutting) {
        refresh_done(cl, 0, "manager closed");
        return;
    }
    cnode *asked = cl->nodes[cl->asked_node];
    if (reply && parse_slots(cl, reply, asked) == 0) {
        apply_map(cl);
        refresh_done(cl, 1, NULL);
        return;
    }
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        bl_host_log(&cl->h, BL_LOG_WARN, "bidlock: CLUSTER SLOTS on %s: %s", asked->name,
                    reply->str);
        snprintf(cl->slots_err, sizeof cl->slots_err, "%s: %.120s", asked->name, reply->str);
    }
    cl->cand_pos++;
    send_refresh(cl);
}

/* Ask the next candidate; refresh_done when none is left. */
static void send_refresh(cluster *cl)
{
    while (cl->cand_pos < cl->ncand && !cl->shutting) {
        cnode *n = cl->nodes[cl->cand[cl->cand_pos]];
        bl_backend *be = node_be(n);
        redis_be *rb = be ? (redis_be *)be : NULL;
        /* A node whose connection is down is reconnecting with backoff:
         * skip it; a new or connecting one buffers the command. */
        if (rb && rb->cmd.ac && rb->cmd.state != CONN_DOWN) {
            cl->asked_node = n->idx;
            if (redisAsyncCommand(rb->cmd.ac, slots_cb, cl, "CLUSTER SLOTS") == REDIS_OK)
                return;
        }
        cl->cand_pos++;
    }
    char why[BL_ERRMSG_MAX];
    snprintf(why, sizeof why, "no node answered CLUSTER SLOTS%s%.170s%s",
             cl->slots_err[0] ? " (last: " : "", cl->slots_err, cl->slots_err[0] ? ")" : "");
    refresh_done(cl, 0, cl->shutting ? "manager closed" : why);
}

/* ---- wake-ups ------------------------------------------------------------------------ */

typedef struct mover {
    bl_backend *from, *to;
} mover;

static void move_one(void *arg, const char *key, size_t keylen)
{
    mover *mv = arg;
    mv->to->vt->watch(mv->to, key, keylen, 1);
    mv->from->vt->watch(mv->from, key, keylen, 0);
}

static int sub_ok(const cluster *cl, int i)
{
    if (i < 0)
        return 0;
    const cnode *n = cl->nodes[i];
    const redis_be *rb = node_rb(n);
    return n->master && rb && !(rb->sub_started && rb->sub.state == CONN_DOWN);
}

/* Keep the subscriptions on a master whose subscriber connection is not
 * down; move them (re-subscribing: each waiter wakes once) otherwise. */
static void move_subscriber(cluster *cl)
{
    if (cl->sub_node >= 0 && sub_ok(cl, cl->sub_node))
        return;
    int to = -1;
    for (int i = 0; i < cl->nnodes && to < 0; i++)
        if (i != cl->sub_node && cl->nodes[i]->master && node_be(cl->nodes[i]) && sub_ok(cl, i))
            to = i;
    if (to < 0 && cl->sub_node >= 0)
        return; /* nowhere better: stay (the backoff timers go on) */
    for (int i = 0; i < cl->nnodes && to < 0; i++)
        if (cl->nodes[i]->master && node_be(cl->nodes[i]))
            to = i;
    if (to < 0)
        return;
    int from = cl->sub_node;
    cl->sub_node = to;
    if (from < 0 || !cl->nodes[from]->be)
        return;
    bl_host_log(&cl->h, BL_LOG_WARN, "bidlock: wake-ups move from %s to %s",
                cl->nodes[from]->name, cl->nodes[to]->name);
    mover mv = {cl->nodes[from]->be, cl->nodes[to]->be};
    redis_sub_each_wanted((redis_be *)mv.from, move_one, &mv);
}

static void tick_cb(void *data)
{
    cluster *cl = data;
    cl->tick_armed = 0;
    if (cl->shutting || cl->watching <= 0)
        return;
    if (cl->sub_node >= 0 && !sub_ok(cl, cl->sub_node))
        refresh(cl, cl->nodes[cl->sub_node]); /* moves it once the map is read */
    cl->tick_armed = 1;
    CL_LOOP(cl)->timer_start(cl->tick_timer, CL_TICK_MS);
}

static void cl_watch(bl_backend *be, const char *key, size_t keylen, int on)
{
    cluster *cl = (cluster *)be;
    if (cl->shutting)
        return;
    cl->watching += on ? 1 : -1;
    if (cl->sub_node < 0)
        move_subscriber(cl);
    if (cl->sub_node < 0)
        return; /* no master known yet: the backoff timer wakes them */
    bl_backend *sb = node_be(cl->nodes[cl->sub_node]);
    if (sb)
        sb->vt->watch(sb, key, keylen, on);
    if (on && !cl->tick_armed) {
        cl->tick_armed = 1;
        CL_LOOP(cl)->timer_start(cl->tick_timer, CL_TICK_MS);
    }
}

/* ---- admin: every master, or the slot's --------------------------------------------- */

typedef struct ckid {
    bl_aop op;
    struct cadmin *ca;
    cnode *node;
    int i; /* its entry in the health table */
} ckid;

typedef struct cadmin {
    bl_aop *orig;
    cluster *cl;
    int kids, delivered, released, tries;
    bl_node_health *nh;
    char (*names)[INET6_ADDRSTRLEN + 8];
    char (*errs)[BL_ERRMSG_MAX];
} cadmin;

static void defer_cb(void *data)
{
    cluster *cl = data;
    bl_aop *list = cl->deferred;
    cl->deferred = NULL;
    while (list) {
        bl_aop *op = list;
        list = op->next;
        bl_aop_done(op);
    }
}

static void admin_later(cluster *cl, bl_aop *op, int status, const char *msg)
{
    op->status = status;
    snprintf(op->errmsg, sizeof op->errmsg, "%s", msg);
    op->next = cl->deferred;
    cl->deferred = op;
    CL_LOOP(cl)->timer_start(cl->defer_timer, 0);
}

static void cadmin_free_if_done(cadmin *ca)
{
    if (ca->orig || ca->released < ca->kids)
        return;
    free(ca->nh);
    free(ca->names);
    free(ca->errs);
    free(ca);
}

static void kid_release(bl_aop *op)
{
    ckid *k = (ckid *)op;
    cadmin *ca = k->ca;
    if (op->timer)
        CL_LOOP(ca->cl)->timer_free(op->timer);
    free(op->holder_buf);
    bl_aop_locks_free(op);
    free(k);
    ca->released++;
    cadmin_free_if_done(ca);
}

static int send_kid(cadmin *ca, cnode *n, int i);

static void all_delivered(cadmin *ca)
{
    bl_aop *o = ca->orig;
    ca->orig = NULL;
    cadmin_free_if_done(ca); /* not yet: the kids are released after this */
    bl_aop_done(o);
}

static void kid_deliver(bl_aop *op)
{
    ckid *k = (ckid *)op;
    cadmin *ca = k->ca;
    bl_aop *o = ca->orig;
    cluster *cl = ca->cl;
    ca->delivered++;
    if (o->kind == BL_AOP_INSPECT) {
        /* Routed by slot: a MOVED (a reshard) is followed, a few times. */
        if (op->status == BL_EREDIS && starts(op->errmsg, "MOVED") && ca->tries++ < 3) {
            unsigned slot;
            char ip[INET6_ADDRSTRLEN];
            int port;
            cnode *to = NULL;
            int is_ask;
            if (bl_redis_parse_redirect(op->errmsg, &is_ask, &slot, ip, sizeof ip, &port) == 0 &&
                !is_ask)
                to = node_get(cl, ip, port);
            if (to) {
                cl->owner[slot] = (uint16_t)to->idx;
                cl->h.event(cl->h.ctx, BL_BE_REDIRECTED);
                refresh(cl, NULL);
                if (send_kid(ca, to, 0) == 0)
                    return;
            }
        }
        o->status = op->status;
        snprintf(o->errmsg, sizeof o->errmsg, "%s", op->errmsg);
        o->info = op->info;
        o->holder_buf = op->holder_buf; /* the engine frees it now */
        op->holder_buf = NULL;
        all_delivered(ca);
        return;
    }
    int i = k->i;
    bl_node_health *h = &ca->nh[i];
    h->status = op->status;
    h->latency_ms = op->latency_ms;
    h->replicas = op->replicas;
    redis_be *rb = node_rb(k->node);
    h->state = !rb ? BL_CONN_DOWN
               : rb->cmd.state == CONN_UP ? BL_CONN_UP
               : rb->cmd.state == CONN_CONNECTING ? BL_CONN_CONNECTING
                                                 : BL_CONN_DOWN;
    snprintf(ca->errs[i], sizeof ca->errs[i], "%s", op->status == BL_OK ? "" : op->errmsg);
    h->errmsg = op->status == BL_OK ? NULL : ca->errs[i];
    if (op->status != BL_OK && o->status == BL_OK) {
        o->status = op->status;
        snprintf(o->errmsg, sizeof o->errmsg, "%s: %.180s", k->node->name, op->errmsg);
    }
    if (o->kind == BL_AOP_CLEANUP)
        o->removed += op->removed;
    if (o->kind == BL_AOP_LOCKS && op->status == BL_OK && op->nlocks) {
        /* every master's locks in one list: moved, not copied */
        size_t need = o->nlocks + op->nlocks;
        bl_aop_lock *l = need > o->caplocks ? realloc(o->locks, need * sizeof *l) : o->locks;
        if (!l) {
            if (o->status == BL_OK) {
                o->status = BL_ENOMEM;
                snprintf(o->errmsg, sizeof o->errmsg, "out of memory");
            }
        } else {
            o->locks = l;
            o->caplocks = need > o->caplocks ? need : o->caplocks;
            memcpy(o->locks + o->nlocks, op->locks, op->nlocks * sizeof *l);
            o->nlocks = need;
            free(op->locks);
            op->locks = NULL;
            op->nlocks = op->caplocks = 0;
        }
    }
    if (o->kind == BL_AOP_PING && op->latency_ms > o->latency_ms)
        o->latency_ms = op->latency_ms;
    if (ca->delivered < ca->kids)
        return;
    if (o->kind == BL_AOP_PING) {
        o->nnodes = ca->kids;
        o->nodes = ca->nh;
        snprintf(o->role, sizeof o->role, "master");
        o->replicas = -1;
        for (int j = 0; j < ca->kids; j++)
            if (ca->nh[j].replicas >= 0)
                o->replicas = (o->replicas < 0 ? 0 : o->replicas) + ca->nh[j].replicas;
        snprintf(o->server, sizeof o->server, "%s", ca->names[0]);
    }
    all_delivered(ca);
}

/* One node's part; i is its entry in the health table. 0, or -1 if it
 * could not start (the kid is then counted as delivered and released). */
static int send_kid(cadmin *ca, cnode *n, int i)
{
    bl_aop *o = ca->orig;
    ckid *k = calloc(1, sizeof *k);
    bl_backend *be = node_be(n);
    if (!k || !be) {
        free(k);
        return -1;
    }
    k->ca = ca;
    k->node = n;
    k->i = i;
    k->op.kind = o->kind;
    k->op.keys = o->keys;
    k->op.mine_only = o->mine_only;
    k->op.started_us = bl_now_us();
    k->op.replicas = -1;
    k->op.deliver = kid_deliver;
    k->op.release = kid_release;
    ca->kids++;
    if (be->vt->admin(be, &k->op) != 0) {
        ca->kids--;
        free(k);
        return -1;
    }
    return 0;
}

static int cl_admin(bl_backend *be, bl_aop *op)
{
    cluster *cl = (cluster *)be;
    if (!cl->shutting && !cl->map_ok && !cl->down) {
        /* The first map is on its way: start once it is read (or fail when
         * no node answers, within the connect deadlines). */
        op->next = cl->admin_wait;
        cl->admin_wait = op;
        refresh(cl, NULL);
        return 0;
    }
    if (cl->shutting || !cl->map_ok) {
        if (!cl->map_ok)
            refresh(cl, NULL);
        char msg[BL_ERRMSG_MAX];
        snprintf(msg, sizeof msg, "Redis Cluster: %.200s",
                 cl->shutting ? "manager closed"
                 : cl->down   ? cl->down_why
                              : "no slot map yet");
        admin_later(cl, op, BL_ECONN, msg);
        return 0;
    }
    cadmin *ca = calloc(1, sizeof *ca);
    if (!ca)
        return BL_ENOMEM;
    ca->orig = op;
    ca->cl = cl;
    op->status = BL_OK;
    op->removed = 0;
    op->latency_ms = 0;
    if (op->kind == BL_AOP_INSPECT) {
        unsigned slot = bl_key_slot(op->keys->k[BL_KEY_LOCK], op->keys->len[BL_KEY_LOCK]);
        cnode *n = cl->owner[slot] == CL_NONE ? NULL : cl->nodes[cl->owner[slot]];
        if (!n || send_kid(ca, n, 0) != 0) {
            free(ca);
            char msg[BL_ERRMSG_MAX];
            snprintf(msg, sizeof msg, "Redis Cluster: %s slot %u",
                     n ? "cannot reach the master of" : "no master serves", slot);
            admin_later(cl, op, BL_ECONN, msg);
        }
        return 0;
    }
    int masters = 0;
    for (int i = 0; i < cl->nnodes; i++)
        masters += cl->nodes[i]->master;
    ca->nh = calloc((size_t)masters + 1, sizeof *ca->nh);
    ca->names = calloc((size_t)masters + 1, sizeof *ca->names);
    ca->errs = calloc((size_t)masters + 1, sizeof *ca->errs);
    if (!ca->nh || !ca->names || !ca->errs) {
        free(ca->nh);
        free(ca->names);
        free(ca->errs);
        free(ca);
        return BL_ENOMEM;
    }
    /* Fill the table first: a kid may be delivered before the next starts
     * only from the loop, never inside admin() (the backend's rule). */
    int j = 0;
    for (int i = 0; i < cl->nnodes; i++) {
        cnode *n = cl->nodes[i];
        if (!n->master)
            continue;
        snprintf(ca->names[j], sizeof ca->names[j], "%s", n->name);
        ca->nh[j].server = ca->names[j];
        ca->nh[j].slots = n->slots;
        ca->nh[j].replicas = -1;
        ca->nh[j].status = BL_ECONN;
        j++;
    }
    int started = 0;
    for (int i = 0, t = 0; i < cl->nnodes; i++) {
        cnode *n = cl->nodes[i];
        if (!n->master)
            continue;
        if (send_kid(ca, n, t) == 0)
            started++;
        else if (op->status == BL_OK) {
            op->status = BL_ECONN;
            snprintf(op->errmsg, sizeof op->errmsg, "%s: cannot open a connection", n->name);
        }
        t++;
    }
    if (started == 0) {
        free(ca->nh);
        free(ca->names);
        free(ca->errs);
        free(ca);
        admin_later(cl, op, BL_ECONN, "Redis Cluster: no master to ask");
    }
    return 0;
}

/* ---- the backend ------------------------------------------------------------------- */

static int cl_conn_state(const bl_backend *be)
{
    const cluster *cl = (const cluster *)be;
    if (cl->map_ok && !cl->down)
        return BL_CONN_UP;
    return cl->down ? BL_CONN_DOWN : BL_CONN_CONNECTING;
}

static void cl_shutdown(bl_backend *be, int force)
{
    cluster *cl = (cluster *)be;
    cl->shutting = 1;
    const bl_loop *loop = CL_LOOP(cl);
    loop->timer_stop(cl->refresh_timer);
    loop->timer_stop(cl->tick_timer);
    cl->refresh_armed = cl->tick_armed = 0;
    creq *list = cl->mapq;
    cl->mapq = NULL;
    cl->mapq_tail = &cl->mapq;
    fail_list(list, BL_ECONN, "manager closed");
    list = cl->delayed;
    cl->delayed = NULL;
    loop->timer_stop(cl->retry_timer);
    cl->retry_armed = 0;
    fail_list(list, BL_ECONN, "manager closed");
    admin_flush(cl); /* shutting: each ends "manager closed" from the defer timer */
    for (int i = 0; i < cl->nnodes; i++) {
        cnode *n = cl->nodes[i];
        if (n->be && !n->closed)
            n->be->vt->shutdown(n->be, force || n->closing);
    }
    maybe_closed(cl);
}

static void cl_free(bl_backend *be)
{
    cluster *cl = (cluster *)be;
    const bl_loop *loop = CL_LOOP(cl);
    cl->freeing = 1;
    for (int i = 0; i < cl->nnodes; i++) {
        cnode *n = cl->nodes[i];
        if (n->be)
            n->be->vt->free(n->be);
        free(n);
    }
    fail_list(cl->mapq, BL_ECONN, "manager freed"); /* not reached: close ends them */
    fail_list(cl->delayed, BL_ECONN, "manager freed");
    defer_cb(cl);
    bl_timer *timers[] = {cl->refresh_timer, cl->retry_timer, cl->tick_timer, cl->defer_timer,
                          cl->reap_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
        if (timers[i])
            loop->timer_free(timers[i]);
    bl_url_free(&cl->url);
    free(cl);
}

static const bl_backend_vt cluster_vt = {
    "redis-cluster", cl_start,      cl_leave,    cl_watch,
    cl_admin,        cl_conn_state, cl_shutdown, cl_free,
    NULL, /* start_many: leases of different slots cannot share a script; each
           * renewal is routed to its own slot's master alone */
};

/* A seed's address: numeric as it is, a host name resolved once here
 * (bl_manager_new may block; the loop never does). */
static int seed_node(cluster *cl, const char *host, int port)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1)
        return node_get(cl, host, port) ? 0 : -1;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return -1;
    int ok = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        char ip[INET6_ADDRSTRLEN];
        const void *addr = a->ai_family == AF_INET6
                               ? (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr
                               : (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr;
        if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) &&
            inet_ntop(a->ai_family, addr, ip, sizeof ip) && node_get(cl, ip, port))
            ok = 0;
    }
    freeaddrinfo(res);
    return ok;
}

int bl_cluster_backend_new(const bl_backend_host *host, bl_backend **out)
{
    cluster *cl = calloc(1, sizeof *cl);
    if (!cl)
        return BL_ENOMEM;
    cl->base.vt = &cluster_vt;
    cl->h = *host;
    cl->mapq_tail = &cl->mapq;
    cl->sub_node = -1;
    for (int i = 0; i < BL_CLUSTER_SLOTS; i++)
        cl->owner[i] = CL_NONE;
    int rc = bl_url_parse(host->cfg->url, &cl->url, NULL, 0);
    if (rc != BL_OK) {
        free(cl);
        return rc;
    }
    int seeds = 0;
    for (int i = 0; i < cl->url.n_seeds; i++)
        seeds += seed_node(cl, cl->url.seeds[i].host, cl->url.seeds[i].port) == 0;
    if (!seeds) {
        bl_host_log(&cl->h, BL_LOG_ERROR, "bidlock: cannot resolve any Redis Cluster seed node");
        cl_free(&cl->base);
        return BL_ECONN;
    }
    const bl_loop *loop = host->loop;
    cl->refresh_timer = loop->timer_new(loop->impl, refresh_timer_cb, cl);
    cl->retry_timer = loop->timer_new(loop->impl, retry_cb, cl);
    cl->tick_timer = loop->timer_new(loop->impl, tick_cb, cl);
    cl->defer_timer = loop->timer_new(loop->impl, defer_cb, cl);
    cl->reap_timer = loop->timer_new(loop->impl, reap_cb, cl);
    if (!cl->refresh_timer || !cl->retry_timer || !cl->tick_timer || !cl->defer_timer ||
        !cl->reap_timer) {
        cl_free(&cl->base);
        return BL_ENOMEM;
    }
    refresh(cl, NULL); /* from the seeds, in the URL's order */
    *out = &cl->base;
    return 0;
}
