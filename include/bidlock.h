/* bidlock.h - distributed locks on Redis for programs that run an event loop.
 *
 * Read this header top to bottom; it is the whole public API.
 *
 * The idea
 *   Several instances of a scanner see the same marketplace posting; exactly
 *   one may bid. Each (marketplace, posting) pair names one Redis lock, the
 *   key "<prefix>:<marketplace>:<posting>" (prefix "bid_lock" by default).
 *   Acquire is an atomic SET NX PX, release is a holder-verified
 *   compare-and-delete; both run as Lua scripts on the server. A lock left
 *   behind by a crashed instance expires after its TTL.
 *
 * The model (libuv's, on purpose)
 *   - A bl_manager is a long-lived handle: one Redis connection, one holder
 *     id "<hostname>:<pid>:<uuid4>", living on your loop (see bidlock/loop.h
 *     and the adapters bidlock/libev.h, ...).
 *   - A bl_lock is a request: bl_acquire() starts it and its callback ends
 *     the acquire; bl_release() starts the release and its callback ends it.
 *   - Nothing blocks, with one exception: bl_manager_new resolves a Redis
 *     host name (not a numeric address or a unix socket) once, with a
 *     synchronous getaddrinfo - call it at start-up. Waiting for a busy
 *     lock is a loop timer (exponential backoff with jitter, 50 ms -> 1 s,
 *     x1.5, clamped to the deadline).
 *   - Every function that takes a callback either returns 0 and then calls
 *     the callback exactly once, later, from the loop - never from inside
 *     the call that started it - or returns a negative BL_E* status and
 *     never calls it.
 *   - Everything runs on the loop thread. A manager is not thread-safe.
 *   - Ignore SIGPIPE in a program that uses bidlock (signal(SIGPIPE,
 *     SIG_IGN), as for hiredis): hiredis writes to its sockets with
 *     write(2), and a connection the server has just closed (a restart, a
 *     CLIENT KILL, a failover) would otherwise kill the process instead of
 *     ending the requests on it with BL_ECONN. A library must not change a
 *     process-wide signal disposition, so bidlock does not do it for you.
 *   - A bl_lock handle is yours until the callback that ends the request
 *     returns (libuv's rule): the acquire callback with any status but
 *     BL_OK, the release callback, or the section's done callback. Inside
 *     that callback every call on the handle is still safe (a second
 *     bl_release there says BL_EINVAL); after it returns, the handle is
 *     freed and must not be passed to any function again. bl_manager_close
 *     keeps every handle valid until its close callback has returned.
 *
 * A first program is in README.md and examples/.
 */
#ifndef BIDLOCK_H
#define BIDLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "bidlock/loop.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(BIDLOCK_BUILDING) && defined(__GNUC__)
#define BL_API __attribute__((visibility("default")))
#else
#define BL_API
#endif

/* The version this header belongs to; bl_version() is the library's. */
#define BIDLOCK_VERSION "0.2.0"
#define BIDLOCK_VERSION_NUM 0x000200 /* 0xMMmmpp: major, minor, patch */

/* The library's version: its BIDLOCK_VERSION string, and its
 * BIDLOCK_VERSION_NUM in *num when num is not NULL. Compare with the
 * macros to see whether a program runs against the library it was built
 * with. Static storage. */
BL_API const char *bl_version(int *num);

/* ---- Status codes ------------------------------------------------------ */

/* One table, three views: the enum, bl_status_name and bl_strerror.
 * X(name, value, sentence); 0 is success, every failure is negative and
 * distinct. */
#define BL_STATUS_MAP(X)                                                                   \
    X(BL_OK, 0, "success")                      /* acquired / released */                \
    X(BL_ETIMEDOUT, -1, "lock not acquired before the deadline")                        \
    X(BL_EBUSY, -2, "lock is held by another holder") /* try-once (wait 0) */          \
    X(BL_ENOTHELD, -3, "lock is not held by this holder (expired or taken over)")       \
    X(BL_ECONN, -4, "Redis connection error")   /* not reachable / connection lost */    \
    X(BL_EREDIS, -5, "Redis replied with an error") /* see bl_lock_errmsg() */         \
    X(BL_EINVAL, -6, "invalid argument")        /* or a call in the wrong state */       \
    X(BL_ECANCELED, -7, "request cancelled")    /* bl_cancel() or bl_manager_close() */  \
    X(BL_ENOMEM, -8, "out of memory")                                                   \
    X(BL_ECLOSED, -9, "manager is closing")     /* nothing was started */                \
    X(BL_EDONE, -10, "posting is already done") /* acquire: marked done; no lock taken */ \
    X(BL_ELOST, -11, "lock was lost while held") /* auto-extend */                     \
    X(BL_ENOREPL, -12, "lock not acknowledged by enough replicas") /* min_replicas */

enum bl_status {
#define BL_STATUS_ENUM(name, value, text) name = value,
    BL_STATUS_MAP(BL_STATUS_ENUM)
#undef BL_STATUS_ENUM
};

/* A sentence for a status ("lock not acquired before the deadline").
 * Static storage; never NULL, also for unknown values. */
BL_API const char *bl_strerror(int status);
/* The code's name ("BL_ETIMEDOUT"). Static storage; never NULL. */
BL_API const char *bl_status_name(int status);

/* ---- Configuration ----------------------------------------------------- */

/* Which store holds the locks. */
enum bl_backend_kind {
    BL_BACKEND_REDIS = 0, /* the real thing (default) */
    BL_BACKEND_MEMORY = 1 /* one process only: development and tests */
};

/* bl_config.min_replicas: see there. */
#define BL_REPLICAS_AUTO (-1)    /* the replicas connected to the master now */
#define BL_REPLICAS_DEFAULT (-2) /* AUTO for a Sentinel or Cluster url, else 0 */

typedef struct bl_config {
    /* Where Redis is. A url, when set, wins over the fields below it:
     *   redis://[[user]:password@]host[:port][/db]
     *   unix:///path/to/socket[?db=N]
     *   redis-sentinel://[[user]:password@]host[:port][,host[:port]...][/db]#NAME
     *   redis-cluster://[[user]:password@]host[:port][,host[:port]...]
     * (port 6379, db 0 when left out; IPv6 in brackets: redis://[::1]:6380/2).
     * redis-cluster:// names 1..16 seed nodes of a Redis (or Valkey)
     * Cluster: the slot map is read from any that answers, and every lock
     * goes to the master of its key's slot (README, "Redis Cluster"); the
     * credentials are every node's; no db. Seed host names are resolved once
     * in bl_manager_new; the nodes the map names must be numeric addresses.
     * redis-sentinel:// names 1..16 Sentinels (port 26379 when left out) that
     * are asked where the master called NAME is; NAME is required (1..256
     * printable bytes, no space; percent-decoded, so a '@' is %40). Its
     * credentials and db are the master's; the Sentinels' own are
     * sentinel_username/sentinel_password below. Sentinel hosts must be
     * numeric addresses (asking them happens on the loop: no resolving;
     * bl_manager_new says BL_ECONN, with the reason in the log, for a
     * name). The master is found, checked with ROLE, and followed through
     * failovers: see README ("High availability").
     *   rediss://... as redis://, over TLS (see tls below)
     * user, password and the socket path are percent-decoded (%40 is '@',
     * %25 is '%'); the credentials end at the last '@'. An empty port or db
     * ("host:", "host/"), a query on redis:// or rediss:// and any
     * whitespace are refused by bl_config_validate.
     * Otherwise unix_path wins over host/port. A host name (not a numeric
     * address like 127.0.0.1 or ::1) is resolved ONCE, synchronously, by
     * bl_manager_new - a setup call, so make it at start-up, not on a hot
     * path - and reconnects reuse its addresses (up to 4, tried in turn
     * after a failed connect: "localhost" may be ::1 and 127.0.0.1); hiredis
     * would otherwise resolve it on the loop at every reconnect.
     * Defaults: NULL, "127.0.0.1", 6379, NULL. */
    const char *url;
    const char *host;
    int port;
    const char *unix_path;
    /* Sent on every (re)connect: AUTH [username] password, then SELECT db.
     * Never logged, never put in an error message. Defaults NULL, NULL, 0. */
    const char *username;
    const char *password;
    int db;
    /* AUTH for the Sentinels of a redis-sentinel:// url (Sentinel has its
     * own requirepass; the URL's credentials are the master's). Only with a
     * Sentinel url (bl_config_validate refuses them with another url: a
     * credential that is silently unused hides a wrong url); a username
     * needs a password. Copied by bl_manager_new; never logged.
     * Defaults NULL, NULL. */
    const char *sentinel_username;
    const char *sentinel_password;
    /* Replica acknowledgement: a grant (or a lease renewal) counts only once
     * WAIT says this many replicas have it, so that a failover right after
     * it cannot promote a replica without the lock. 0 = off; 1..64 = that
     * many; BL_REPLICAS_AUTO = as many as are connected to the master (read
     * with ROLE at every (re)connect and after a shortfall; none connected:
     * no WAIT, and a warning in the log); BL_REPLICAS_DEFAULT = AUTO for a
     * redis-sentinel:// or redis-cluster:// url (per master), 0 for
     * redis:// and unix:// (bidlock then
     * talks to one fixed server and follows no failover, and WAIT costs up
     * to a third of the throughput - set it if something else, a virtual IP
     * or a proxy, can move that address to a replica).
     * One WAIT per connection covers every grant answered before it was
     * sent (coalesced). A grant that fewer replicas acknowledged within
     * replica_timeout_ms is never reported as acquired: it is given back
     * (holder-checked) and the attempt retries within the request's wait;
     * the request ends BL_ENOREPL if the deadline passes that way (a
     * try-once request at once). A renewal short of replicas is retried
     * like a failed one, within the lease. With WAIT on, the answer to the
     * last attempt may come up to 2 * replica_timeout_ms after the deadline.
     * Per manager, never per request: one caller must not weaken what
     * every holder of the key relies on. WAIT is best effort: see README
     * ("High availability") for what it does not give. Ignored by the
     * memory backend. Default BL_REPLICAS_DEFAULT. */
    int min_replicas;
    /* How long one WAIT may take, in ms (WAIT's timeout). It holds the
     * command connection meanwhile, so keep it small: replicas on a LAN
     * acknowledge within a round trip (~1 ms), and 100 ms is far above that
     * yet small against the default wait (10 s) and TTL (300 s). 1 .. 60000,
     * and below command_timeout_ms while replica acknowledgement is on.
     * Default 100. */
    uint32_t replica_timeout_ms;
    /* BL_BACKEND_REDIS or BL_BACKEND_MEMORY. Default BL_BACKEND_REDIS.
     * bidlock never switches backend by itself: a configured Redis that is
     * down gives BL_ECONN (fail closed), not a local lock. */
    int backend;
    /* First part of every key. Default "bid_lock". No whitespace or control
     * characters, 1..64 bytes; may not end with ':' or contain "::" (the
     * names of the 0.1 layout), contain '}' or start with '{' (the
     * other keys of a lock are "{<lock key>}:q", ":fence", ":done", so
     * that all of a lock's keys share one Redis Cluster slot). */
    const char *key_prefix;
    /* Connect deadline, enforced with a loop timer. Default 5000 ms. */
    uint32_t connect_timeout_ms;
    /* Defaults for requests that do not say otherwise. */
    uint64_t default_ttl_ms;     /* 300000 (300 s) */
    uint64_t default_wait_ms;    /* 10000 (10 s); 0 = try once */
    /* Waiting for a busy lock: first pause, cap, growth factor. A pause is
     * drawn uniformly from [d/2, d] (jitter) and never runs past the deadline.
     * Defaults 50, 1000, 1.5. */
    uint32_t backoff_initial_ms;
    uint32_t backoff_max_ms;
    double backoff_multiplier;
    /* How long an operation may wait for Redis's answer (a paused or hung
     * server). An acquire ends at its wait deadline regardless (BL_ETIMEDOUT;
     * a try-once acquire after this, BL_ECONN), a release after this with
     * BL_ECONN; a late grant is given back, a late release is harmless.
     * bl_health_check, bl_inspect and each step of bl_cleanup end with
     * BL_ECONN ("Redis did not answer in time") after it too.
     * Default 5000 ms. */
    uint32_t command_timeout_ms;
    /* How long bl_manager_close() waits for its best-effort releases before
     * it drops the connection. Default 2000 ms. */
    uint32_t close_timeout_ms;
    /* After a lost connection, reconnect after this pause (doubling up to
     * 30 s, with jitter). Default 100 ms. */
    uint32_t reconnect_initial_ms;
    /* How long a "done" marker lives (bl_release_done). Default 7 days. */
    uint64_t done_ttl_ms;
    /* Fair hand-off: a release hands a contended lock to the longest waiter
     * directly - the waiter's manager becomes the holder, with a fencing
     * token, for this long, and the message that tells it so is its grant
     * (no attempt of its own); it extends the lease to the request's TTL
     * as it takes over. A waiter that has vanished costs this long, then
     * the lock is free. With WAIT on (min_replicas) the waiter takes it by
     * an attempt instead, so that replicas acknowledge it first. A group's
     * release and a transfer reserve the lock for the waiter, which then
     * takes it with an attempt. Default 250 ms. */
    uint32_t handoff_ms;
    /* Wake waiters when a lock is released (pub/sub on a second
     * connection). 1 by default; 0 = poll with backoff only. */
    int wake_on_release;
    /* What an acquire does beside taking the lock (since 0.2.0). Each is
     * work the server does on every grant; turn one off only if no part of
     * the program (and, for done markers, of the fleet) relies on it.
     * fencing_tokens: 1 = every grant gets a fencing token (bl_lock_token),
     *   strictly increasing per lock key. 0 = bl_lock_token is 0 and the
     *   acquire skips the fence counter and the server clock (TIME + SET;
     *   the dearest part of the acquire script). Transfers and group
     *   acquires (bl_acquire_many) still issue tokens.
     * done_markers: 1 = an acquire of a posting marked done ends BL_EDONE,
     *   and bl_release_done marks it. 0 = this manager neither reads nor
     *   writes done markers: it WILL take a posting that another instance
     *   marked done, and bl_release_done is BL_EINVAL. Group acquires still
     *   read them.
     * With both 0, an uncontended acquire is a single SET NX PX GET, no
     * script (Redis >= 7.0 or Valkey; on an older server, which refuses
     * that form, it falls back to the script once and for good). A lock
     * that is taken goes on to the script, which queues the waiter as
     * always: fairness, hand-off and reclaim are unchanged. The figures
     * are in docs/BENCHMARKS.md. In code only (not from the environment):
     * it is the program's choice, not the deployment's. Defaults 1, 1. */
    int fencing_tokens;
    int done_markers;
    /* Log hook: called on the loop thread with a level and one line (no
     * newline, never a password). NULL = silent. */
    void (*log)(int level, const char *msg, void *data);
    void *log_data;
    /* TLS (since 0.2.0; README, "TLS"). 1 = every connection of the manager
     * - lock, subscriber, and for a redis-sentinel:// url the Sentinels and
     * the master too - is TLS; a rediss:// url sets it as well. Never a
     * fallback to plaintext. Not with a unix socket. The certificate chain
     * is verified against tls_ca_file and/or tls_ca_dir (PEM; a dir as made
     * by c_rehash / openssl rehash), or the system trust store when both
     * are NULL; and the certificate must be for tls_server_name, or else
     * for the host of the url / `host` (a name: its DNS SANs, also sent as
     * SNI; an IP literal: its IP SANs; a master named by Sentinel: its
     * address). A handshake or verification failure is BL_ECONN with the
     * reason in the message ("certificate verify failed: ...", "host name
     * mismatch ..."). tls_cert_file + tls_key_file (PEM, both or neither):
     * a client certificate, for servers with tls-auth-clients yes.
     * tls_insecure_skip_verify = 1 turns every check off (the traffic is
     * still encrypted, but anyone on the path can read it): testing only,
     * and refused together with a CA file or dir. Every file must be
     * readable when the config is validated. Needs a bl_loop with the io
     * hooks (the bundled adapters have them), else bl_manager_new says
     * BL_EINVAL. Defaults 0, NULL, NULL, NULL, NULL, NULL, 0. */
    int tls;
    const char *tls_ca_file;
    const char *tls_ca_dir;
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_server_name;
    int tls_insecure_skip_verify;
} bl_config;

enum bl_log_level { BL_LOG_DEBUG = 0, BL_LOG_INFO = 1, BL_LOG_WARN = 2, BL_LOG_ERROR = 3 };

/* Fill *cfg with the defaults above. Always call it before setting fields,
 * so fields added in later versions get their defaults. */
BL_API void bl_config_init(bl_config *cfg);

/* Fill connection and backend fields of *cfg from the environment (call
 * bl_config_init first). Reads REDIS_URL (any form of bl_config.url, also
 * redis-sentinel://), else REDIS_HOST, REDIS_PORT, REDIS_DB, REDIS_USERNAME,
 * REDIS_PASSWORD (with REDIS_URL set these are not read; set, they override
 * url/unix_path set in code). Beside them, always read:
 *   REDIS_SENTINEL_USERNAME, REDIS_SENTINEL_PASSWORD -> sentinel_username,
 *     sentinel_password (only with a redis-sentinel:// url, from REDIS_URL
 *     or from code; a username needs a password);
 *   BIDLOCK_MIN_REPLICAS -> min_replicas: 0..64 or "auto" (any case);
 *   BIDLOCK_REPLICA_TIMEOUT_MS -> replica_timeout_ms: 1..60000;
 *   REDIS_TLS (true/false/1/0/yes/no/on/off) -> tls (false with a rediss://
 *     url is refused), REDIS_TLS_CA_FILE, REDIS_TLS_CA_DIR,
 *     REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE, REDIS_TLS_SERVER_NAME ->
 *     tls_ca_file .. tls_server_name, REDIS_TLS_INSECURE_SKIP_VERIFY
 *     (boolean) -> tls_insecure_skip_verify.
 * USE_REDIS_LOCKS
 * (true/false/1/0/yes/no/on/off, any case) and BIDLOCK_ENV, else ENV, choose
 * the backend. Deployment spellings, any case: production, prod, staging;
 * development, dev, local, test. An unknown BIDLOCK_ENV is an error; an
 * unknown ENV is ignored (shells use ENV for their startup file).
 *   USE_REDIS_LOCKS=true  -> Redis;   USE_REDIS_LOCKS=false -> memory,
 *   except in production, where it is refused (BL_EINVAL): local locks
 *   cannot stop another instance from bidding;
 *   unset: Redis if REDIS_URL/REDIS_HOST is set, memory in development,
 *   else Redis on 127.0.0.1:6379 (production fails closed).
 * REDIS_*, USE_REDIS_LOCKS or BIDLOCK_* set to "" is an error, not "unset".
 * String fields point into the environment (bl_manager_new copies them).
 * Returns BL_OK, or BL_EINVAL with a sentence naming the bad variable or URL
 * part in why (never the password); *cfg is then unchanged. */
BL_API int bl_config_from_env(bl_config *cfg, char *why, size_t why_len);

/* BL_OK if bl_manager_new would accept cfg; else BL_EINVAL and, when why is
 * not NULL, a sentence naming the bad field in why[0..why_len). */
BL_API int bl_config_validate(const bl_config *cfg, char *why, size_t why_len);

/* ---- Manager: the long-lived handle ------------------------------------ */

typedef struct bl_manager bl_manager;
typedef struct bl_lock bl_lock;

/* Create a manager on `loop` and start connecting (asynchronously).
 * The bl_loop and every string in cfg are copied; the caller keeps
 * ownership of both. cfg may be NULL for all defaults.
 * Returns BL_OK and sets *out, or BL_EINVAL (bad config - bl_config_validate
 * says why; *out untouched), BL_ECONN (the host name does not resolve) or
 * BL_ENOMEM. Requests may be started at once: they are queued until the
 * connection is up, and end with BL_ECONN if it cannot be made. */
BL_API int bl_manager_new(const bl_loop *loop, const bl_config *cfg, bl_manager **out);

typedef void (*bl_close_cb)(bl_manager *m, void *data);

/* Close the manager. Every request still acquiring ends with BL_ECANCELED;
 * releases already started finish normally; locks still held are released
 * (best effort, bounded by close_timeout_ms). Then cb (may be NULL) runs,
 * and after it returns the manager and every bl_lock handle are freed.
 * Returns BL_OK, or BL_ECLOSED if close was already called. */
BL_API int bl_manager_close(bl_manager *m, bl_close_cb cb, void *data);

/* This manager's holder id, "<hostname>:<pid>:<uuid4>". Owned by m. */
BL_API const char *bl_manager_holder(const bl_manager *m);

/* Why the last call on m that returned BL_EINVAL/BL_ECLOSED failed, in one
 * sentence ("marketplace contains ':'"). Owned by m; valid until the next
 * call on m. "" when there is nothing to tell. */
BL_API const char *bl_manager_errmsg(const bl_manager *m);

/* Counters since the manager was created. Once nothing is in flight:
 * each acquire *attempt* (one script call) ends as a grant, a conflict or
 * an error, a release may grant a waiter directly (no attempt of its own),
 * and a grant is either acquired, done or abandoned:
 *   attempts + direct_handoffs == acquired + done + abandoned + conflicts
 *                                 + errors_attempt
 * each acquire *request* ends exactly once:
 *   requests == acquired + busy + timeouts + cancelled + failed + done */
typedef struct bl_stats {
    uint64_t requests;       /* bl_acquire/bl_with_lock calls that started */
    uint64_t attempts;       /* acquire scripts sent */
    uint64_t acquired;       /* successful acquisitions */
    uint64_t conflicts;      /* attempts that found the lock taken */
    uint64_t errors_attempt; /* attempts that ended in a connection/Redis error, or
                              * granted but short of replicas (given back) */
    uint64_t busy;           /* try-once requests that found it taken */
    uint64_t timeouts;       /* requests that hit their deadline */
    uint64_t cancelled;      /* requests ended by bl_cancel/close */
    uint64_t failed;         /* requests ended by a connection/Redis error or
                              * BL_ENOREPL */
    uint64_t done;           /* requests that found the posting done */
    uint64_t abandoned;      /* grants (given back) or "done" answers that came
                              * after the request ended (cancel, close, deadline) */
    uint64_t releases;       /* releases that deleted (or handed off) our lock */
    uint64_t handoffs;       /* releases that handed the lock to a waiter */
    uint64_t not_held;       /* releases that found the lock gone or taken */
    uint64_t release_errors; /* releases that ended in an error */
    uint64_t extends;        /* lease renewals that succeeded */
    uint64_t lost;           /* held locks lost (on_lost calls) */
    uint64_t wakeups;        /* waiting requests woken by a release */
    uint64_t direct_handoffs; /* of them, handed the lock by the release itself
                               * (no attempt of their own: README, "Fairness") */
    uint64_t redis_errors;   /* error replies from Redis */
    uint64_t conn_errors;    /* operations failed by the connection */
    uint64_t errors;         /* redis_errors + conn_errors */
    uint64_t reconnects;     /* connections re-established after a loss */
    uint64_t replica_shortfalls; /* grants/renewals that fewer than min_replicas
                              * replicas acknowledged in time (given back) */
    uint64_t failovers;      /* master changes followed (Sentinel) */
    uint64_t reverified;     /* held leases re-checked at once after a failover */
    uint64_t reclaims;       /* acquires that took back a lock held under this
                              * manager's id by none of its requests (a grant
                              * whose reply was lost with the connection, or a
                              * lock transferred to this manager) */
    uint64_t transfers;      /* held locks handed to another holder (bl_transfer) */
    uint64_t groups;         /* of requests: bl_acquire_many calls that started */
    uint64_t held;           /* gauge: locks held right now */
    uint64_t waiting;        /* gauge: requests between attempts right now */
    /* (added at the end: the fields above keep their offsets) */
    uint64_t redirects;      /* Redis Cluster: MOVED/ASK answers followed (never seen
                              * by the caller) */
    uint64_t map_refreshes;  /* Redis Cluster: slot maps read (CLUSTER SLOTS) */
} bl_stats;

BL_API void bl_manager_stats(const bl_manager *m, bl_stats *out);

/* ---- Locks: acquire, release, cancel ----------------------------------- */

#define BL_WAIT_DEFAULT (-1)

typedef struct bl_acquire_opts {
    /* Lock lifetime in ms; Redis deletes the lock after it. 0 = the
     * manager's default. Valid: 1 .. 30 days. */
    int64_t ttl_ms;
    /* How long to wait for a busy lock, in ms. 0 = try once (BL_EBUSY if
     * taken); BL_WAIT_DEFAULT = the manager's default. Valid: up to 30 days. */
    int64_t wait_ms;
    /* Keep the lease alive while held: renew at about ttl/3 with a
     * holder-verified compare-and-pexpire. Renewals are spread and
     * batched: each lease renews at a random moment of the last quarter of
     * every third of its ttl, never later, so leases granted together do
     * not renew together; a manager sends the renewals due within 50 ms of
     * each other (rounded to 50 ms slots) as one script call
     * of up to 100 leases, in which each key is checked and renewed on its
     * own, so each lease still learns alone whether it is held. (In a
     * Redis Cluster each renews in its own call: keys of different slots
     * cannot share a script.) If a renewal is refused, or
     * renewals keep failing until the TTL has run out, on_lost is called
     * once with BL_ELOST (the lock is no longer yours: stop the work) and
     * renewing stops. The handle stays valid until you call bl_release,
     * which then reports BL_ENOTHELD - or BL_OK if, after all, a late
     * renewal had kept the lock yours. Default 0.
     * on_lost is also called, with or without auto_extend, for a lock a
     * release handed to this request directly (README, "Fairness") whose
     * takeover failed: such a grant is held on the server for handoff_ms
     * until the takeover - an extension to ttl_ms sent as the grant
     * arrives, one round trip - answers, so a connection lost in that
     * moment ends the lease after handoff_ms. NULL: not told (fencing
     * tokens still protect what you write). */
    int auto_extend;
    void (*on_lost)(bl_lock *lock, int status, void *data);
    void *on_lost_data;
} bl_acquire_opts;

BL_API void bl_acquire_opts_init(bl_acquire_opts *opts);

/* Called once when an acquire ends. status is BL_OK (you hold the lock:
 * release it with bl_release), BL_EBUSY, BL_ETIMEDOUT, BL_EDONE (the
 * posting is marked done: do not bid), BL_ENOREPL (granted, but not
 * acknowledged by min_replicas replicas in time, so given back: see
 * bl_config.min_replicas), BL_ECONN, BL_EREDIS, BL_ECANCELED or
 * BL_ENOMEM. On any status but BL_OK the handle is freed when the
 * callback returns. */
typedef void (*bl_acquire_cb)(bl_lock *lock, int status, void *data);

/* Start acquiring the lock for (marketplace, posting).
 * Ids: 1..256 bytes, no whitespace or control characters; the marketplace
 * may not contain ':' (else "a:b"+"c" and "a"+"b:c" would be one key);
 * neither may contain '}' (it would end the hash tag "{<lock key>}" that
 * keeps a lock's keys in one Redis Cluster slot).
 * opts may be NULL for the defaults. Strings are copied.
 * Returns BL_OK (cb will be called once; *lockp, if lockp is not NULL, is
 * the handle, e.g. for bl_cancel), or BL_EINVAL / BL_ECLOSED / BL_ENOMEM
 * synchronously: nothing is sent to Redis and cb is never called. */
BL_API int bl_acquire(bl_manager *m, const char *marketplace, const char *posting,
                      const bl_acquire_opts *opts, bl_acquire_cb cb, void *data,
                      bl_lock **lockp);

/* Called once when a release ends: BL_OK (our lock was deleted),
 * BL_ENOTHELD (it had expired or belongs to another holder; nothing was
 * deleted), BL_ECONN, BL_EREDIS, BL_ENOMEM (the memory backend, or no
 * memory to send the command; the lock then ends with its TTL). The
 * handle is freed when it returns. */
typedef void (*bl_release_cb)(bl_lock *lock, int status, void *data);

/* Release a held lock (after its acquire callback said BL_OK). cb may be
 * NULL: then the handle is gone, for the caller, once this returns. Returns BL_OK, or BL_EINVAL if the lock is not in the held state
 * (a second release while the first is under way, or from inside its
 * callback; after that callback the handle is gone, see the model above)
 * / BL_ECLOSED while the manager closes; then nothing is sent and cb is
 * never called. */
BL_API int bl_release(bl_lock *lock, bl_release_cb cb, void *data);

/* Like bl_release, and atomically (in the same script) mark the posting
 * "done" for config.done_ttl_ms: every later acquire of it, by any manager,
 * ends with BL_EDONE without taking the lock. Only the holder can mark. */
BL_API int bl_release_done(bl_lock *lock, bl_release_cb cb, void *data);

/* ---- Groups: several postings, all or nothing ----------------------------- */

typedef struct bl_posting {
    const char *marketplace;
    const char *posting;
} bl_posting;

#define BL_GROUP_MAX 32

/* Acquire every posting of postings[0..n) or none: a bundle bid, or one job
 * posted on two marketplaces. The same options, outcomes and exactly-once
 * rule as bl_acquire, and one handle for the group: bl_release /
 * bl_release_done release (mark) every posting in one script, auto_extend
 * renews all of them in one script and calls on_lost if any one is lost,
 * bl_cancel cancels it. On one Redis one script checks and takes all the
 * keys, so a group is never partly held. A group that finds one of them
 * taken waits on its timer (backoff and jitter, up to wait_ms) and tries
 * all again; it never holds some while waiting for others (two groups
 * that overlap cannot deadlock), and it joins no wait queue, so it is not
 * woken by releases and a busy posting's queued waiters go first. BL_EDONE
 * when a posting is marked done (bl_lock_done_index() says which: the
 * callback's handle is valid during the callback). Each posting keeps its
 * own fencing token (bl_lock_token_at). Returns BL_EINVAL without sending
 * anything for n == 0 or n > BL_GROUP_MAX, an invalid id ("posting 3:
 * marketplace contains ':'") or a posting given twice. In a Redis Cluster
 * postings in different slots cannot share a script: they are taken one
 * at a time in one fixed order (their keys, bytewise), and the first that
 * is taken or done gives back what the group took; a release or renewal
 * goes to each; so a group is held whole or not at all once its callback
 * says so, though another client may see part of it held for a moment. */
BL_API int bl_acquire_many(bl_manager *m, const bl_posting *postings, size_t n,
                           const bl_acquire_opts *opts, bl_acquire_cb cb, void *data,
                           bl_lock **lockp);
/* A group's size (1 for bl_acquire), the lock key and the fencing token of
 * its i-th posting (in the caller's order; NULL / 0 out of range or
 * before it is held), and after BL_EDONE which posting was done (-1
 * otherwise; 0 for bl_acquire). */
BL_API size_t bl_lock_postings(const bl_lock *lock);
BL_API const char *bl_lock_key_at(const bl_lock *lock, size_t i);
BL_API uint64_t bl_lock_token_at(const bl_lock *lock, size_t i);
BL_API int bl_lock_done_index(const bl_lock *lock);

/* Hand a held lock to another manager, named by its holder id (what
 * bl_manager_holder() says there), in one script: the lock is never free
 * in between, so no third instance can take it. It then belongs to
 * `holder` for lease_ms (0 = 5 s), with a new, higher fencing token. The
 * receiving manager takes it over with a plain bl_acquire of the same
 * posting: an acquire that finds the lock held under its own id by none
 * of its requests takes it (bl_stats.reclaims), with its own TTL, renewal
 * and a token higher still. A receiver already waiting on the posting is
 * woken at once. If it never comes, the lease runs out and the lock is free.
 * cb gets BL_OK (transferred: this handle is done, as after a release),
 * BL_ENOTHELD (the lock had expired or was taken over: nothing changed on
 * the server), BL_ECONN (maybe transferred, maybe not: either way the lock
 * is no longer this handle's), BL_EREDIS. Returns BL_OK, or without
 * sending anything BL_EINVAL (not held, inside bl_with_lock, holder NULL,
 * empty, with whitespace, starting with '~', 320 bytes or more, or this
 * manager's own id; lease_ms < 0 or over 30 days) or BL_ECLOSED. */
BL_API int bl_transfer(bl_lock *lock, const char *holder, int64_t lease_ms, bl_release_cb cb,
                       void *data);

/* Stop an acquire that has not ended yet: its callback is called with
 * BL_ECANCELED (later, from the loop). If the server granted the lock in
 * the meantime, bidlock releases it. Returns BL_OK, or BL_EINVAL when the
 * acquire is ending (its callback still comes) or has ended with BL_OK
 * (the lock is held: release it). Once an acquire callback with another
 * status has returned, the handle is gone: never cancel it then. */
BL_API int bl_cancel(bl_lock *lock);

/* The lock's full key, "<prefix>:<marketplace>:<posting>". Owned by lock. */
BL_API const char *bl_lock_key(const bl_lock *lock);
/* Why a request ended as it did, in one line: for BL_EREDIS / BL_ECONN the
 * server's or the connection's message; for BL_ETIMEDOUT, "Redis did not
 * answer in time" when the deadline passed with an attempt unanswered (a
 * paused or hung server), else ""; for BL_ENOMEM, "out of memory".
 * "" for every other status. Owned by lock; valid inside the callback. */
BL_API const char *bl_lock_errmsg(const bl_lock *lock);
BL_API bl_manager *bl_lock_manager(const bl_lock *lock);
/* The fencing token of a held lock: a number that strictly increases per
 * lock across holders, releases and expiries. Pass it to the system you
 * write to (the bid store) and have it reject a token lower than the last
 * one it accepted: that stops a holder that was paused past its TTL.
 * 0 before the lock is held. */
BL_API uint64_t bl_lock_token(const bl_lock *lock);
/* How long this manager has held the lock, in ms (loop clock); 0 when it
 * is not held. */
BL_API uint64_t bl_lock_held_ms(const bl_lock *lock);
/* The locks this manager holds now, longest held first: fills out[0..n)
 * and returns how many it filled (at most n; 0 when out is NULL or n is
 * 0). The handles stay owned by the manager, valid as held handles are
 * (until their release callback). One pass over the manager's requests. */
BL_API size_t bl_manager_longest_held(const bl_manager *m, bl_lock **out, size_t n);

/* ---- Operations: health, inspection, cleanup, metrics ------------------ */

/* Connection state as seen by the manager. */
enum bl_conn_state { BL_CONN_DOWN = 0, BL_CONN_CONNECTING = 1, BL_CONN_UP = 2 };

typedef struct bl_health {
    int status;           /* BL_OK, BL_ECONN, BL_EREDIS */
    int state;            /* enum bl_conn_state when the answer came */
    double latency_ms;    /* PING round trip (memory backend: 0) */
    const char *backend;  /* "redis" or "memory" */
    const char *errmsg;   /* for failures; valid inside the callback */
    /* Where the lock connection is (Redis, when it answered): role "master"
     * or "replica" as ROLE says, the number of replicas connected to it,
     * and its address "ip:port" (the master Sentinel named, for a
     * redis-sentinel:// url). NULL, -1, NULL when not known (memory
     * backend, no answer). Valid inside the callback. */
    const char *role;
    int replicas;
    const char *server;
    /* Redis Cluster (redis-cluster:// url): one entry per master of the slot
     * map, the fields above then summing them up (status: the first
     * failure; latency: the slowest; server: the first master). 0 and NULL
     * otherwise. Valid inside the callback. */
    int nodes;
    const struct bl_node_health *node;
} bl_health;

typedef struct bl_node_health {
    const char *server;  /* "ip:port" */
    int slots;           /* hash slots it serves */
    int status;          /* BL_OK, BL_ECONN, BL_EREDIS */
    int state;           /* enum bl_conn_state of its lock connection */
    double latency_ms;   /* PING round trip */
    int replicas;        /* replicas connected to it (ROLE), -1 unknown */
    const char *errmsg;  /* for failures */
} bl_node_health;

typedef void (*bl_health_cb)(bl_manager *m, const bl_health *h, void *data);

/* Asynchronous PING. Returns BL_OK (cb once, later) or BL_ECLOSED/BL_ENOMEM. */
BL_API int bl_health_check(bl_manager *m, bl_health_cb cb, void *data);
BL_API int bl_manager_conn_state(const bl_manager *m);

typedef struct bl_lock_info {
    int status;          /* BL_OK, or an error (then the rest is empty) */
    int held;            /* 1 if somebody holds the lock */
    const char *holder;  /* holder id, or NULL; valid inside the callback */
    int64_t pttl_ms;     /* remaining TTL, -1 when not held */
    int done;            /* 1 if the posting is marked done */
    uint64_t last_token; /* last fencing token handed out (0 if none kept) */
    const char *errmsg;
} bl_lock_info;

typedef void (*bl_inspect_cb)(bl_manager *m, const bl_lock_info *info, void *data);

/* Look up (marketplace, posting) without touching it. Same synchronous
 * errors as bl_acquire. */
BL_API int bl_inspect(bl_manager *m, const char *marketplace, const char *posting,
                      bl_inspect_cb cb, void *data);

typedef void (*bl_cleanup_cb)(bl_manager *m, int status, uint64_t removed, void *data);

/* Remove every lock under this manager's prefix (mine_only = 0), or only
 * the ones held by this manager's holder id (mine_only = 1), with
 * SCAN + UNLINK (never KEYS). Fencing counters and done markers stay.
 * Keys outside the prefix are never touched. cb gets how many locks it
 * removed; when status is not BL_OK, bl_manager_errmsg(m) says why inside
 * cb (the server's message, e.g. an ACL refusal; also logged). */
BL_API int bl_cleanup(bl_manager *m, int mine_only, bl_cleanup_cb cb, void *data);

/* One held lock of the fleet, as the server has it. */
typedef struct bl_held_lock {
    const char *key;    /* "<prefix>:<marketplace>:<posting>" */
    const char *holder; /* its holder id ("~<id>" while a release hands it to <id>) */
    uint64_t held_ms;   /* since it was granted (or handed on), by the server's clock;
                         * 0 when token is 0 (a lock no bidlock of this layout took) */
    int64_t pttl_ms;    /* TTL left */
    uint64_t token;     /* its fencing token */
} bl_held_lock;

/* locks[0..n): the longest held first; total: how many locks are held in
 * all (n <= max). Valid inside the callback. On an error, n == 0 and
 * bl_manager_errmsg(m) says why inside cb. */
typedef void (*bl_locks_cb)(bl_manager *m, int status, const bl_held_lock *locks, size_t n,
                            size_t total, void *data);

/* Every lock held under this manager's prefix, by any holder (fleet-wide),
 * longest held first, at most max of them (0 = all), with SCAN (never
 * KEYS) and one read per lock; on a Redis Cluster, every master. How long
 * a lock has been held comes from its fencing token, which is the server's
 * time in microseconds when it was granted (or later if tokens ran ahead
 * of the clock, which only a clock that stepped back causes), so it needs
 * no extra key and is exact across holders and processes. Same
 * synchronous errors as bl_cleanup. */
BL_API int bl_list_locks(bl_manager *m, size_t max, bl_locks_cb cb, void *data);

/* Latency histogram: counts[i] is the number of samples <= bounds_ms[i];
 * the last bucket (+Inf) holds the rest. */
#define BL_HIST_BUCKETS 14
typedef struct bl_histogram {
    uint64_t counts[BL_HIST_BUCKETS + 1];
    uint64_t count;
    double sum_ms;
} bl_histogram;
BL_API extern const double bl_hist_bounds_ms[BL_HIST_BUCKETS];
/* The hold-time histogram's bounds: 1 ms .. 30 min (holds are longer
 * than round trips). */
BL_API extern const double bl_hold_bounds_ms[BL_HIST_BUCKETS];

typedef struct bl_metrics {
    bl_stats stats;
    int conn_state;
    bl_histogram acquire_ms; /* bl_acquire -> acquired callback (successes) */
    bl_histogram release_ms; /* bl_release -> release callback */
    bl_histogram hold_ms;    /* acquired -> bl_release/bl_section_end or close
                              * (a lost lock counts until then); bounds
                              * bl_hold_bounds_ms */
} bl_metrics;

BL_API void bl_manager_metrics(const bl_manager *m, bl_metrics *out);

/* Render a metrics snapshot in Prometheus text exposition format (metric
 * names bidlock_*, with # HELP and # TYPE lines). Like snprintf: writes at
 * most len bytes including the NUL (buf may be NULL when len is 0) and
 * returns the text's length without the NUL, so the text was cut when the
 * result is >= len. */
BL_API size_t bl_metrics_prometheus(const bl_metrics *mt, char *buf, size_t len);

/* ---- Scoped section: acquire, run, always release ---------------------- */

/* Runs while the lock is held. Do your work (asynchronously if you like)
 * and call bl_section_end(lock, your_status) exactly once when finished,
 * success or failure: that releases the lock. */
typedef void (*bl_section_fn)(bl_lock *lock, void *data);

/* Called once at the end. If the acquire failed, status is its BL_E* code
 * and the section never ran (section_status 0). Otherwise status is the
 * release outcome and section_status what the section passed to
 * bl_section_end. */
typedef void (*bl_section_done_cb)(int status, int section_status, void *data);

/* Acquire (marketplace, posting), run fn, release when fn's work ends.
 * Same arguments and synchronous errors as bl_acquire. If the manager
 * closes while the section runs, the lock is released and done is called
 * with BL_ECANCELED. */
BL_API int bl_with_lock(bl_manager *m, const char *marketplace, const char *posting,
                        const bl_acquire_opts *opts, bl_section_fn fn,
                        bl_section_done_cb done, void *data);

/* End a section started by bl_with_lock. Returns BL_OK, or BL_EINVAL if
 * lock is not a running section (called twice before the done callback
 * returned). The handle is gone once the done callback has returned -
 * also when close ended the section with BL_ECANCELED: after that done
 * callback, never call bl_section_end with it. */
BL_API int bl_section_end(bl_lock *lock, int section_status);

#ifdef __cplusplus
}
#endif
#endif
