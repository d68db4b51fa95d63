/* internal.h - what the engine's files share. Not installed. */
#ifndef BIDLOCK_INTERNAL_H
#define BIDLOCK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "bidlock.h"

#define BL_ID_MAX 256
#define BL_PREFIX_MAX 64
#define BL_HOLDER_MAX 320
#define BL_ERRMSG_MAX 256
#define BL_MAX_MS (30ULL * 24 * 3600 * 1000) /* 30 days */

/* ---- ids.c: key validation, holder ids, randomness ---------------------- */

/* Write a sentence into why[0..why_len) (if why is not NULL) and return
 * BL_EINVAL: how every validator explains a refusal. */
int bl_einval(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 0 if `id` is a valid marketplace (is_marketplace) or posting id, else
 * BL_EINVAL with a sentence in why[0..why_len). */
int bl_validate_id(const char *id, int is_marketplace, char *why, size_t why_len);
int bl_validate_prefix(const char *prefix, char *why, size_t why_len);
/* "<prefix>:<mp>:<posting>" into a fresh malloc'd string; NULL on OOM. */
char *bl_make_key(const char *prefix, const char *mp, const char *posting, size_t *len);
/* "<hostname>:<pid>:<uuid4>" into buf (BL_HOLDER_MAX). 0 or BL_ENOMEM. */
int bl_make_holder(char *buf, size_t len);
/* Seed for the per-manager generator, from the kernel's random source. */
uint64_t bl_random_seed(void);
/* splitmix64 step: cheap, good enough for jitter. */
uint64_t bl_rand_next(uint64_t *state);

/* ---- url.c: REDIS_URL and friends ------------------------------------- */

#define BL_URL_MAX 8192

/* ---- sentinel branch (issue 13): Sentinel URLs and replica settings ----
 * Kept in this one block (plus the marked tail of struct bl_url below) so
 * that a merge with the engine refactor is easy. */
enum bl_url_mode { BL_URL_PLAIN = 0, BL_URL_UNIX = 1, BL_URL_SENTINEL = 2 };
#define BL_URL_SENTINELS_MAX 16  /* sentinels in one redis-sentinel:// URL */
#define BL_MASTER_NAME_MAX 256   /* bytes in a Sentinel master name */
#define BL_REPLICAS_MAX 64       /* largest min_replicas */
#define BL_REPLICA_TIMEOUT_MAX 60000
/* 0 until src/redis.c follows a Sentinel master / sends WAIT: meanwhile
 * bl_config_validate refuses a redis-sentinel:// url and min_replicas other
 * than 0 (fail closed: a setting that would silently do nothing is an
 * error). Set to 1 with the backend that implements it. */
#define BL_HAVE_SENTINEL_BACKEND 0
#define BL_HAVE_REPLICA_WAIT 0
typedef struct bl_url_endpoint {
    char *host; /* without brackets */
    int port;   /* 26379 by default */
} bl_url_endpoint;
/* The mode a URL's scheme asks for (nothing else is checked): BL_URL_PLAIN
 * for redis://, BL_URL_UNIX, BL_URL_SENTINEL; -1 for NULL or another scheme. */
int bl_url_kind(const char *url);
/* cfg->min_replicas with BL_REPLICAS_DEFAULT resolved: BL_REPLICAS_AUTO for
 * a redis-sentinel:// url (Redis backend), else 0. */
int bl_config_min_replicas(const bl_config *cfg);
/* ---- end of the sentinel branch block ---------------------------------- */

/* A parsed URL. Strings are malloc'd and owned by the struct; NULL when the
 * URL has none. Exactly one of host (with port) and unix_path is set, except
 * for a Sentinel URL: then neither, and sentinels[] says where to ask. */
typedef struct bl_url {
    char *host;      /* without brackets: "::1" */
    int port;        /* 6379 by default; 0 for unix */
    char *unix_path; /* percent-decoded */
    char *username;  /* percent-decoded */
    char *password;  /* percent-decoded */
    int db;          /* 0 by default */
    /* sentinel branch (issue 13): */
    int mode;                                           /* enum bl_url_mode */
    int n_sentinels;                                    /* BL_URL_SENTINEL: 1..16 */
    bl_url_endpoint sentinels[BL_URL_SENTINELS_MAX];    /* in the URL's order */
    char *master_name;                                  /* percent-decoded */
} bl_url;

/* Parse redis://[[user]:password@]host[:port][/db],
 * unix:///path/to/socket[?db=N] or
 * redis-sentinel://[[user]:password@]host[:port][,host[:port]...][/db]#NAME
 * (grammar and decisions atop url.c).
 * Returns BL_OK and fills *out, or BL_EINVAL with a sentence naming the bad
 * part in why (never the password), or BL_ENOMEM. *out is zeroed on any
 * failure, so bl_url_free(out) is always safe. out may be NULL: then the URL
 * is only checked and nothing is allocated (never BL_ENOMEM). */
int bl_url_parse(const char *url, bl_url *out, char *why, size_t why_len);
/* Free u's strings (the password is wiped first) and zero *u. NULL is fine. */
void bl_url_free(bl_url *u);

/* Digits only (no sign, space or "0x"), value in lo..hi: 0 and *out set;
 * -1 not a number; -2 out of range. s need not be NUL-terminated. */
int bl_parse_uint(const char *s, size_t n, long lo, long hi, long *out);
/* 1 if h[0..n) is a host name (letters, digits, '-', '.', '_'; 1..255
 * bytes) or an IPv6 address without brackets. */
int bl_host_ok(const char *h, size_t n);
/* s[0..n) for a message: in single quotes, bytes outside printable ASCII as
 * \xNN, cut after 40 bytes with "...". Always NUL-terminates dst (cap >= 8). */
void bl_quote(char *dst, size_t cap, const char *s, size_t n);

/* ---- backoff.c: the waiting schedule, pure so it is testable ----------- */

typedef struct bl_backoff {
    double initial_ms, max_ms, multiplier;
} bl_backoff;

/* The pause before the next attempt. *step is the un-jittered pause of the
 * previous wait (0 before the first); it grows by multiplier up to max_ms.
 * The pause is drawn from [step/2, step] using rnd, and clamped so that it
 * never passes `deadline` (absolute ms, same clock as now). */
uint64_t bl_backoff_next(const bl_backoff *b, double *step, uint64_t rnd, uint64_t now,
                         uint64_t deadline);

/* ---- redis.c: command encoding ------------------------------------------ */

/* v in decimal into buf (>= 20 bytes), no NUL; returns the length. */
size_t bl_u64_dec(char *buf, uint64_t v);
/* The RESP encoding of argv ("*<argc>\r\n", then "$<len>\r\n<arg>\r\n" per
 * argument: the bytes redisFormatCommandArgv produces) into buf; returns its
 * length, or 0 if cap might be too small (it counts 20 digits a length). */
size_t bl_resp_format(char *buf, size_t cap, int argc, const char **argv, const size_t *lens);

/* ---- backend seam: what the state machine needs from a store ------------ */

enum bl_op_kind {
    BL_OP_NONE = 0,
    BL_OP_ACQUIRE,      /* join the wait queue unless try-once */
    BL_OP_RELEASE,
    BL_OP_RELEASE_DONE, /* release and mark the posting done */
    BL_OP_EXTEND
};

/* The outcome of one backend operation. status: BL_OK, BL_EBUSY (acquire
 * found it taken), BL_EDONE, BL_ENOTHELD (release/extend refused),
 * BL_ECONN, BL_EREDIS. token: for a granted acquire. handed_off: a release
 * gave the lock to a waiter. errmsg: valid only during the callback. */
typedef struct bl_op_result {
    int status;
    uint64_t token;
    int handed_off;
    const char *errmsg;
} bl_op_result;

/* Completion of a lock operation. */
void bl_lock_op_done(bl_lock *lock, const bl_op_result *r);

/* Per-key wait queue of this manager: the requests waiting on one lock.
 * The backend owns `sub` (its subscription state) and may keep an entry
 * alive (linger) after the last waiter left. */
typedef struct bl_wq {
    char *key;
    size_t keylen;
    bl_lock *head, *tail; /* waiting requests, oldest first */
    int nwait;
    int sub;              /* backend-defined; 0 = not subscribed */
    uint64_t idle_since;  /* loop clock, when nwait dropped to 0 */
    struct bl_wq *hnext;  /* hash chain */
} bl_wq;

/* Admin operations (health, inspect, cleanup): one struct per call. */
enum bl_aop_kind { BL_AOP_PING, BL_AOP_INSPECT, BL_AOP_CLEANUP };
typedef struct bl_aop {
    enum bl_aop_kind kind;
    bl_manager *m;
    char *key;          /* inspect */
    char *done_key, *fence_key;
    int mine_only;      /* cleanup */
    uint64_t started_us;
    /* results, filled by the backend */
    int status;
    char errmsg[BL_ERRMSG_MAX];
    double latency_ms;
    bl_lock_info info;
    char *holder_buf;
    uint64_t removed;
    char cursor[32];    /* cleanup: SCAN cursor */
    /* user callback */
    void *cb;
    void *data;
    struct bl_aop *next; /* backend's own list */
    bl_timer *timer;     /* backend's: bounds the wait for an answer */
    int orphaned;        /* reported already; the backend frees it on its answer */
} bl_aop;

/* Called by a backend when an admin operation ended (exactly once): the
 * user callback runs and op is freed. */
void bl_aop_done(bl_aop *op);
/* The same in two steps, for an answer that did not come in time: the user
 * callback runs now (op->status, op->errmsg), and the backend frees op
 * with bl_aop_free once the late answer (or the connection's end) comes. */
void bl_aop_deliver(bl_aop *op);
void bl_aop_free(bl_aop *op);

typedef struct bl_backend bl_backend;
typedef struct bl_backend_vt {
    const char *name;
    /* Start an operation for `lock` (keys, holder, ttl come from it). On 0,
     * bl_lock_op_done(lock, ...) is called exactly once, later, from the
     * loop. On a negative status nothing was sent and it is never called. */
    int (*start)(bl_backend *be, bl_lock *lock, enum bl_op_kind kind);
    /* Fire-and-forget: this holder stops waiting on the lock's key. */
    void (*leave)(bl_backend *be, bl_lock *lock);
    /* The first waiter arrived on wq (on = 1) / the last one left (on = 0). */
    void (*watch)(bl_backend *be, bl_wq *wq, int on);
    /* Admin op: 0 and bl_aop_done later, or a negative status. */
    int (*admin)(bl_backend *be, bl_aop *op);
    int (*conn_state)(const bl_backend *be);
    /* Close: let in-flight operations finish, then call
     * bl_manager_backend_closed. force: drop the connection now (in-flight
     * operations end with BL_ECONN). */
    void (*shutdown)(bl_backend *be, int force);
    void (*free)(bl_backend *be);
} bl_backend_vt;

struct bl_backend {
    const bl_backend_vt *vt;
    bl_manager *m;
};

int bl_redis_backend_new(bl_manager *m, bl_backend **out);
struct redisReply;
/* redis.c: a lock script's reply as a result (pure; fuzzed). */
void bl_redis_interpret(enum bl_op_kind kind, const struct redisReply *reply, bl_op_result *res);
/* redis.c: the inspect script's reply, and a SCAN reply (pure; fuzzed). */
int bl_redis_inspect_reply(const struct redisReply *reply, bl_lock_info *info, char **holder_buf);
long bl_redis_scan_reply(const struct redisReply *reply, const char *prefix, char *cursor,
                         size_t cap, const char **keys, size_t *lens);
int bl_memory_backend_new(bl_manager *m, bl_backend **out);

/* Backend -> manager. */
void bl_manager_backend_closed(bl_manager *m);
/* A release was seen on `key`: wake this manager's waiters. target is the
 * holder the lock was handed to, or "*" for everyone. */
void bl_manager_wake(bl_manager *m, const char *key, size_t keylen, const char *target,
                     size_t target_len);
/* Visit wait queues (for resubscribing after a reconnect, linger sweeps).
 * The visitor may call bl_manager_wq_drop on the entry it is given. */
void bl_manager_wq_each(bl_manager *m, void (*fn)(bl_wq *wq, void *arg), void *arg);
bl_wq *bl_manager_wq_find(bl_manager *m, const char *key, size_t keylen);
const char *bl_manager_prefix(const bl_manager *m);
/* Forget an idle entry (nwait == 0) the backend no longer needs. */
void bl_manager_wq_drop(bl_manager *m, bl_wq *wq);
void bl_log(const bl_manager *m, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- manager/lock internals that backends read ------------------------- */

const bl_loop *bl_manager_loop(const bl_manager *m);
const bl_config *bl_manager_config(const bl_manager *m);
bl_stats *bl_manager_stats_mut(bl_manager *m);
uint64_t bl_manager_rand(bl_manager *m);
uint64_t bl_now_us(void);

const char *bl_lock_key_len(const bl_lock *lock, size_t *len);
/* The posting's other keys (see scripts.c): queue, fence, done. */
const char *bl_lock_aux_key(const bl_lock *lock, int which, size_t *len);
enum { BL_AUX_QUEUE, BL_AUX_FENCE, BL_AUX_DONE, BL_AUX_COUNT };
uint64_t bl_lock_ttl(const bl_lock *lock);
/* ms the request may still wait (queue entry lifetime); 0 = try once. */
uint64_t bl_lock_queue_ttl(const bl_lock *lock);
/* 1 once an attempt of this request joined the server's wait queue. */
int bl_lock_queued(const bl_lock *lock);
enum bl_op_kind bl_lock_inflight(const bl_lock *lock);
/* The lock's message buffer (BL_ERRMSG_MAX bytes), for a backend to explain
 * a synchronous failure. */
char *bl_lock_errbuf(bl_lock *lock);
/* "<prefix>::<kind>:<mp>:<posting>" for an aux key, malloc'd. */
char *bl_make_aux_key(const char *prefix, const char *kind, const char *mp, const char *posting,
                      size_t *len);

#define BL_FENCE_TTL_MS (24ULL * 3600 * 1000)

#endif
