/* backend.h - the seam between the engine and a store (Redis, memory).
 *
 * One way only. The engine hands a backend a request descriptor that
 * carries everything the store needs and how to finish (bl_op, bl_aop); a
 * backend is created with a host struct (bl_backend_host) that says where
 * it runs and whom to tell about things nobody asked for (a wake-up, the
 * end of a close). A backend includes this header and nothing of the
 * engine's; no backend calls the engine by name.
 *
 * Ownership: the engine owns every bl_op and bl_aop; a backend holds a
 * pointer to one from the start call until it calls its done (bl_op) or
 * release (bl_aop) hook, exactly once. The engine owns who waits on which
 * key; a backend owns only what it needs to hear about releases (the Redis
 * backend's subscriptions).
 *
 * Lease renewals may come as a batch (start_many): the engine hands an
 * array of one-posting BL_OP_EXTEND descriptors at once, and the backend
 * renews them in as few calls as it can, then calls each op's done with
 * that key's own result, exactly once each, as if each had been started
 * alone. The array is the engine's and valid only during the call; each
 * bl_op in it is held until its done, as for start.
 */
#ifndef BIDLOCK_BACKEND_H
#define BIDLOCK_BACKEND_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "keyspace.h"

#define BL_FENCE_TTL_MS (24ULL * 3600 * 1000) /* how long a fence counter lives */
/* Most leases one renewal call carries (start_many's n). Redisson's
 * watchdog renews 100 per call too: a script over 100 keys runs in well
 * under a millisecond, so it never stalls the single-threaded server for
 * other clients, its request stays a few kB, and a lost reply costs at
 * most 100 retries; beyond 100 the calls saved per second no longer
 * matter (10,000 leases at ttl 3 s are then 100 calls/s). */
#define BL_RENEW_BATCH_MAX 100

enum bl_op_kind {
    BL_OP_NONE = 0,
    BL_OP_ACQUIRE,      /* join the wait queue unless try-once */
    BL_OP_RELEASE,
    BL_OP_RELEASE_DONE, /* release and mark the posting done */
    BL_OP_EXTEND,
    BL_OP_TRANSFER      /* hand the lock to op->target for op->ttl_ms (a new token) */
};

/* The outcome of one lock operation. status: BL_OK, BL_EBUSY (acquire
 * found it taken), BL_EDONE, BL_ENOTHELD (release/extend refused),
 * BL_ECONN, BL_EREDIS, BL_ENOMEM. token: for a granted acquire. handed_off:
 * a release gave the lock to a waiter. errmsg: valid during the call. */
typedef struct bl_op_result {
    int status;
    uint64_t token;
    int handed_off;
    const char *errmsg;
    int ours; /* acquire, BL_EBUSY: the lock is held under our own holder id */
    int index; /* group acquire, BL_EBUSY/BL_EDONE: which posting (0-based) */
} bl_op_result;

/* One lock operation: what to do, on which names, and how to finish. The
 * engine fills it before each start; it stays valid and unchanged until
 * done has been called. */
typedef struct bl_op {
    enum bl_op_kind kind;
    unsigned queued : 1;   /* acquire: an earlier attempt of this request queued us */
    unsigned keep_queued : 1; /* acquire: another request of ours waits on this key, so
                            * a grant must keep our place in the queue */
    unsigned reclaim : 1;  /* acquire: take the lock if it is held under our own
                            * holder id (no request of ours holds or is getting it:
                            * it is a grant whose reply was lost) */
    const bl_keys *keys;   /* nkeys names for a group, else one; the engine's (a single
                            * posting's are shared by all its requests on the key):
                            * read them, never keep the pointer past done */
    size_t nkeys;          /* a group (bl_acquire_many): acquire, release, extend all of
                            * keys[0..nkeys) in one script; 0 = one posting */
    uint64_t *tokens;      /* group acquire: the backend writes each posting's token here
                            * before done(BL_OK), and sets result.token = tokens[0] */
    uint64_t ttl_ms;       /* acquire, extend: the lease */
    uint64_t queue_ttl_ms; /* acquire: lifetime of our wait-queue entry; 0 = try once */
    const char *target;    /* transfer: the receiving holder id (target_len bytes) */
    size_t target_len;
    char *errbuf;          /* BL_ERRMSG_MAX bytes: why a start failed synchronously;
                            * written only inside start (the engine shares one
                            * buffer between operations and copies it out) */
    void (*done)(struct bl_op *op, const bl_op_result *r);
} bl_op;

/* Admin operations (health, inspect, cleanup). */
enum bl_aop_kind { BL_AOP_PING, BL_AOP_INSPECT, BL_AOP_CLEANUP, BL_AOP_LOCKS };

/* A held lock found by BL_AOP_LOCKS; key and holder are malloc'd, freed
 * with the op (bl_aop_locks_free). */
typedef struct bl_aop_lock {
    char *key, *holder;
    int64_t pttl_ms;
    uint64_t token, held_ms;
} bl_aop_lock;
typedef struct bl_aop {
    enum bl_aop_kind kind;
    bl_keys *keys;      /* inspect: the posting's names */
    int mine_only;      /* cleanup */
    uint64_t started_us;
    /* results, filled by the backend before deliver */
    int status;
    char errmsg[BL_ERRMSG_MAX];
    double latency_ms;
    bl_lock_info info;
    char *holder_buf;   /* inspect: malloc'd holder id, freed by release */
    uint64_t removed;
    char role[16];      /* ping: "master"/"replica", "" unknown */
    int replicas;       /* ping: -1 unknown */
    char server[64];    /* ping: "ip:port", "" unknown */
    int nnodes;         /* ping, Redis Cluster: entries in nodes (the backend's) */
    const struct bl_node_health *nodes;
    /* engine hooks: deliver runs the user's callback (once); release frees
     * the op (and its timer). An answer that did not come in time is
     * delivered at once and released when the late answer, or the
     * connection's end, comes: see bl_aop_done. */
    void (*deliver)(struct bl_aop *op);
    void (*release)(struct bl_aop *op);
    /* the backend's own */
    char cursor[32];     /* cleanup: SCAN cursor */
    struct bl_aop *next;
    bl_timer *timer;     /* bounds the wait for an answer; freed by release */
    int orphaned;        /* delivered already; release it on the late answer */
    int inflight;        /* cleanup on a cluster node: script calls out (one key each) */
    bl_aop_lock *locks;  /* BL_AOP_LOCKS: what was found (the backend appends) */
    size_t nlocks, caplocks;
} bl_aop;

static inline void bl_aop_done(bl_aop *op)
{
    op->deliver(op);
    op->release(op);
}

/* BL_AOP_LOCKS: append one held lock (copies key and holder). 0 or BL_ENOMEM. */
static inline int bl_aop_add_lock(bl_aop *op, const char *key, size_t klen, const char *holder,
                                  size_t hlen, int64_t pttl_ms, uint64_t token, uint64_t held_ms)
{
    if (op->nlocks == op->caplocks) {
        size_t cap = op->caplocks ? 2 * op->caplocks : 64;
        bl_aop_lock *l = (bl_aop_lock *)realloc(op->locks, cap * sizeof *l);
        if (!l)
            return BL_ENOMEM;
        op->locks = l;
        op->caplocks = cap;
    }
    char *k = (char *)malloc(klen + 1), *h = (char *)malloc(hlen + 1);
    if (!k || !h) {
        free(k);
        free(h);
        return BL_ENOMEM;
    }
    memcpy(k, key, klen);
    k[klen] = '\0';
    memcpy(h, holder, hlen);
    h[hlen] = '\0';
    op->locks[op->nlocks++] = (bl_aop_lock){k, h, pttl_ms, token, held_ms};
    return 0;
}

static inline void bl_aop_locks_free(bl_aop *op)
{
    for (size_t i = 0; i < op->nlocks; i++) {
        free(op->locks[i].key);
        free(op->locks[i].holder);
    }
    free(op->locks);
    op->locks = NULL;
    op->nlocks = op->caplocks = 0;
}

/* What a backend tells the engine without being asked. */
enum bl_be_event {
    BL_BE_RECONNECTED,    /* the connection came back after a loss */
    BL_BE_WAIT_SHORT,     /* a grant or renewal was not acknowledged by enough replicas */
    BL_BE_MASTER_CHANGED, /* now on another master (failover): re-verify held leases */
    BL_BE_REDIRECTED,     /* Redis Cluster: a MOVED or ASK answer was followed */
    BL_BE_MAP_REFRESHED,  /* Redis Cluster: the slot map was read */
};

/* What a backend is given at creation. Copied by the backend; every
 * pointer in it outlives the backend. */
typedef struct bl_backend_host {
    const bl_loop *loop;
    const bl_config *cfg; /* validated; strings live as long as the backend */
    const char *holder;   /* this manager's holder id */
    size_t holder_len;
    const char *prefix;
    void *ctx;            /* passed back to every hook below */
    /* A release was seen on key: the engine wakes its waiters there.
     * directed: the lock was handed to us (the oldest waiter goes);
     * otherwise everyone retries. */
    void (*wake)(void *ctx, const char *key, size_t keylen, int directed);
    /* A release made us the holder of key (direct hand-off: for
     * cfg->handoff_ms, with token). 1: a waiting request has it now, or
     * one whose attempt is out will take it; 0: nobody here wants it, and
     * the backend gives it back (a holder-checked release, which hands it
     * on). NULL: the backend treats it as a directed wake. */
    int (*granted)(void *ctx, const char *key, size_t keylen, uint64_t token);
    /* A shutdown finished: nothing is in flight and no callback will come. */
    void (*closed)(void *ctx);
    /* Something the engine counts or acts on (enum bl_be_event). */
    void (*event)(void *ctx, int ev);
    uint64_t (*rand)(void *ctx);
    void (*log)(void *ctx, int level, const char *line); /* NULL: silent */
} bl_backend_host;

/* Log a formatted line through the host (no newline, never a password). */
static inline void bl_host_log(const bl_backend_host *h, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void bl_host_log(const bl_backend_host *h, int level, const char *fmt, ...)
{
    if (!h->log)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    h->log(h->ctx, level, line);
}

static inline uint64_t bl_host_now(const bl_backend_host *h)
{
    return h->loop->now_ms(h->loop->impl);
}

typedef struct bl_backend bl_backend;
typedef struct bl_backend_vt {
    const char *name;
    /* Start op. On 0, op->done is called exactly once, later, from the
     * loop. On a negative status nothing was sent, done is never called,
     * and op->errbuf may say why. */
    int (*start)(bl_backend *be, bl_op *op);
    /* Fire-and-forget: this holder stops waiting on the posting. */
    void (*leave)(bl_backend *be, const bl_keys *keys);
    /* The first waiter of ours arrived on key (on = 1) / the last one left. */
    void (*watch)(bl_backend *be, const char *key, size_t keylen, int on);
    /* Admin op: 0 and bl_aop_done later (exactly once), or a negative
     * status and nothing happens. */
    int (*admin)(bl_backend *be, bl_aop *op);
    int (*conn_state)(const bl_backend *be); /* enum bl_conn_state */
    /* Close: let in-flight operations finish, then call host->closed.
     * force: drop the connection now (in-flight operations end with
     * BL_ECONN). May be called again with force = 1. */
    void (*shutdown)(bl_backend *be, int force);
    void (*free)(bl_backend *be);
    /* Renew ops[0..n) (2 <= n <= BL_RENEW_BATCH_MAX, each a BL_OP_EXTEND
     * of one posting) in as few calls as the store allows, each key
     * holder-checked on its own. On 0 every op's done is called exactly
     * once, later, with its own key's result (BL_OK, BL_ENOTHELD, or the
     * call's error). On a negative status nothing was sent and no done
     * comes: the engine then starts each op alone. NULL: the engine always
     * does (a store that cannot batch, e.g. keys in different slots). */
    int (*start_many)(bl_backend *be, bl_op *const *ops, size_t n);
} bl_backend_vt;

struct bl_backend {
    const bl_backend_vt *vt;
};

int bl_redis_backend_new(const bl_backend_host *host, bl_backend **out);
int bl_memory_backend_new(const bl_backend_host *host, bl_backend **out);

#endif
