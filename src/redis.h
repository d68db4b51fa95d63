/* redis.h - the Redis backend's own parts, shared by its files only:
 *   redis.c        creation, the vtable, shutdown and free
 *   redis_conn.c   connections: connect, AUTH/SELECT, deadlines, reconnect
 *   redis_ops.c    the script cache and the lock operations
 *   redis_sub.c    the subscriber connection's table: wake-ups, linger
 *   redis_admin.c  PING, inspect, cleanup (SCAN + script)
 *   resp.c         the pure codec (resp.h), fuzzed on its own
 *   cluster.c      Redis Cluster: a backend of backends, one redis_be per
 *                  master (redis_node_new), routing by slot
 *
 * hiredis 0.14.1 facts these files lean on (see DESIGN.md):
 *  - attach the loop adapter before redisAsyncSetConnectCallback;
 *  - every pending reply callback runs exactly once, with NULL when the
 *    context is freed or the connection fails;
 *  - after a failed connect or a disconnect, hiredis frees the context
 *    itself; there is no async reconnect, so we make a new context;
 *  - never free the context inside its connect or disconnect callback;
 *  - a subscribed connection (RESP2) takes only (UN)SUBSCRIBE: we send it
 *    AUTH/SELECT first and nothing else afterwards.
 */
#ifndef BIDLOCK_REDIS_H
#define BIDLOCK_REDIS_H

#include <netinet/in.h>

#include "backend.h"
#include "scripts.h"
#include "url.h"

struct redisAsyncContext;
struct bl_sentinel;
struct bl_tls;
struct bl_tls_ctx;

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_UP };
enum timer_role { TR_NONE, TR_CONNECT_DEADLINE, TR_RECONNECT, TR_REDISCOVER };
enum sub_state { SUB_NONE = 0, SUB_PENDING, SUB_ON, SUB_LEAVING };

#define LINGER_MS 1000     /* keep a subscription this long after the last waiter */
#define EVALSHA_SCRIPTS 7  /* acquire, release, extend, their group forms and the
                            * batched renewal run by sha */
#define SUB_BUCKETS 256
#define ADDRS_MAX 4        /* addresses of one host name, tried in turn */

typedef struct redis_be redis_be;

/* A grant or renewal the server answered, held back until WAIT says
 * enough replicas have it (min_replicas). */
typedef struct wait_item {
    struct wait_item *next;
    bl_op *op;
    bl_op_result res;
} wait_item;

typedef struct conn {
    redis_be *r;
    int is_sub;
    struct redisAsyncContext *ac;
    enum conn_state state;
    bl_timer *timer;
    enum timer_role role;
    double reconnect_step;
    int ever_up;
    int setup_failed; /* AUTH/SELECT refused: last_err says why */
    int awaiting;     /* Sentinel: connects once discovery names the master */
    struct bl_tls *tls; /* TLS: the relay under ac (tls.h), NULL for plaintext */
    int hi_up;          /* TLS: hiredis's connect callback came; up once the relay is ready too */
    int answered;       /* command connection: ROLE (asked at connect) has answered */
    char msgbuf[BL_ERRMSG_MAX]; /* redis_conn_errmsg's, when it adds a hint */
    char last_err[224]; /* fits "not connected to Redis: " + it in BL_ERRMSG_MAX */
} conn;

/* A key the subscriber connection listens on (its channel
 * "{<key>}|<holder>"), kept while the engine has waiters there and for
 * LINGER_MS after, so a busy key is not re-subscribed per request. */
typedef struct sub_entry {
    struct sub_entry *hnext;
    enum sub_state state;
    int wanted;          /* the engine has waiters on this key */
    uint64_t idle_since; /* loop clock, when wanted dropped to 0 */
    size_t keylen;
    char key[];
} sub_entry;

struct redis_be {
    bl_backend base;
    bl_backend_host h;
    conn cmd, sub;
    int sub_started;
    const char *body[BL_SCRIPT_COUNT]; /* bl_scripts; a cluster node's with "#!lua" */
    char *shebang[BL_SCRIPT_COUNT];    /* a cluster node's bodies (malloc'd) */
    char sha[BL_SCRIPT_COUNT][41];
    int sha_ok[BL_SCRIPT_COUNT];
    int loads_pending; /* SCRIPT LOADs on the wire */
    int no_set_get;    /* the server refused SET NX GET (before 7.0): see fast_acquire */
    int legacy_keys;   /* one server: the scripts also get the names of the
                        * 0.1 layout (keyspace.h) */
    int cluster_node;  /* one master of a Redis Cluster (cluster.c) */
    int shutting, closed_notified;
    /* where to connect */
    bl_url url;
    const char *unix_path, *username, *password;
    int port, db;
    char addrs[ADDRS_MAX][INET6_ADDRSTRLEN];
    int naddrs, addr_i;
    /* TLS: the manager's settings, and the name certificates must be for
     * (tls_server_name, else the configured host; for a Sentinel master,
     * its address unless tls_server_name is set) */
    struct bl_tls_ctx *tls;
    char tls_name[256];
    /* replica acknowledgement: one WAIT on the wire at a time covers every
     * grant answered before it was sent; the next batch waits meanwhile */
    int min_replicas;      /* configured: 0 off, N, BL_REPLICAS_AUTO */
    int replicas_now;      /* connected replicas, from ROLE at connect */
    int replicas_known;    /* ROLE has answered on this connection */
    uint64_t role_asked;   /* loop clock of the last ROLE sent for the count */
    wait_item *pend, **pend_tail;
    int wait_inflight;
    /* Sentinel (redis-sentinel://): the master is found, and checked with
     * ROLE, before every (re)connect of the command connection */
    struct bl_sentinel *sent;
    int master_ok;         /* addrs[0]:port is the verified master to connect to */
    int discovering;
    char master_now[INET6_ADDRSTRLEN + 8]; /* "ip:port" the command connection is on */
    wait_item *preq, **preq_tail; /* lock operations started while discovering */
    /* what ROLE said at the last connect, for health */
    char role[16];
    /* subscriptions */
    sub_entry *subs[SUB_BUCKETS];
    bl_timer *linger_timer;
    int linger_armed;
    /* admin operations that end without the server (down, closing) */
    bl_aop *deferred;
    bl_timer *defer_timer;
};

static inline const bl_loop *LOOP(const redis_be *r) { return r->h.loop; }

/* redis.c: one master of a Redis Cluster, for cluster.c: a backend on
 * ip:port (numeric) with the cluster's credentials (strings that outlive
 * it), no 0.1 names, "#!lua" scripts, cleanup one key per script call. */
int redis_node_new(const bl_backend_host *host, const char *ip, int port, const char *username,
                   const char *password, bl_backend **out);
/* redis_ops.c: start op behind an ASKING on the same connection (an ASK
 * redirection); as vt->start otherwise. */
int redis_op_start_asking(bl_backend *be, bl_op *op);

/* redis_conn.c */
void redis_rediscover(redis_be *r, const char *why); /* READONLY, MASTERDOWN, not master */
void redis_conn_free(redis_be *r);
int redis_conn_init(redis_be *r);   /* resolve once; BL_ECONN + log if it cannot */
void redis_connect(conn *c);
void redis_drop(conn *c, const char *why);
void redis_conn_timer_cb(void *data);
const char *redis_conn_errmsg(conn *c, const struct redisAsyncContext *ac);
void redis_notify_closed(redis_be *r);
/* redis_ops.c */
void redis_load_scripts(redis_be *r);
int redis_op_start(bl_backend *be, bl_op *op);
int redis_op_start_many(bl_backend *be, bl_op *const *ops, size_t n);
void redis_op_leave(bl_backend *be, const bl_keys *keys);
void redis_give_back(redis_be *r, const char *key, size_t keylen); /* redis_ops.c */
void redis_ask_role(redis_be *r);        /* replica count, for WAIT */
void redis_wait_fail_all(redis_be *r);   /* the connection is gone: held grants end */
void redis_preq_flush(redis_be *r);      /* connected after a discovery: send them */
void redis_preq_fail(redis_be *r, const char *why);
/* redis_sub.c */
void redis_sub_watch(bl_backend *be, const char *key, size_t keylen, int on);
void redis_sub_resubscribe(redis_be *r); /* the subscriber connection is new */
void redis_sub_forget(redis_be *r);      /* ...or gone: nothing is subscribed */
void redis_sub_free(redis_be *r);
void redis_linger_cb(void *data);
/* Every key the engine has waiters on (a cluster moving its subscriber
 * to another node). fn may watch(key, 0) on r: the entry may go then. */
void redis_sub_each_wanted(redis_be *r, void (*fn)(void *arg, const char *key, size_t keylen),
                           void *arg);
/* cluster.c: the redis-cluster:// backend (bl_redis_backend_new hands over). */
int bl_cluster_backend_new(const bl_backend_host *host, bl_backend **out);
/* redis_admin.c */
int redis_admin(bl_backend *be, bl_aop *op);
void redis_defer_cb(void *data);

#endif
