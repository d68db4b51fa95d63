/* sentinel.h - Redis Sentinel discovery for the Redis backend (issue 13).
 *
 * Self-contained: it knows nothing of managers, locks or backends. It needs
 * a host loop (bidlock/loop.h), hiredis 0.14's async API, and the data a
 * redis-sentinel:// URL holds. The Redis backend (src/redis.c) fills a
 * bl_sentinel_host from its bl_url, roughly:
 *
 *     const char *hosts[BL_SENTINEL_MAX]; int ports[BL_SENTINEL_MAX];
 *     for (int i = 0; i < u->n_sentinels; i++)
 *         hosts[i] = u->sentinels[i].host, ports[i] = u->sentinels[i].port;
 *     bl_sentinel_host h = {.loop = loop, .master_name = u->master_name,
 *         .n = u->n_sentinels, .hosts = hosts, .ports = ports,
 *         .sentinel_username = cfg->sentinel_username,
 *         .sentinel_password = cfg->sentinel_password,
 *         .username = u->username, .password = u->password, .db = u->db,
 *         .timeout_ms = cfg->connect_timeout_ms,
 *         .log = cfg->log, .log_data = cfg->log_data,
 *         .switched = on_switched, .ctx = backend};
 *
 * and then: bl_sentinel_discover() before every (re)connect of its command
 * connection, bl_sentinel_watch() once, and bl_sentinel_discover() again
 * when `switched` fires, when the connection drops, and after a READONLY or
 * -MASTERDOWN reply.
 *
 * What it does, per the Sentinel client guidelines
 * (https://redis.io/docs/latest/develop/reference/sentinel-clients/):
 *  - discovery asks the sentinels one at a time, SENTINEL
 *    get-master-addr-by-name (and, pipelined, SENTINEL master for its
 *    config-epoch and flags); the address named is then connected to, with
 *    AUTH and SELECT, and asked ROLE. Only a node that says "master" is
 *    returned. Discovery goes on to the next sentinel when the node is a
 *    replica (a sentinel lagging behind a failover, or an old master
 *    Sentinel has demoted) or does not answer, when the sentinel itself
 *    flags the node it names s_down/o_down (as redis-py's
 *    check_master_state does), and when the sentinel's
 *    config-epoch is below one another sentinel already reported (it
 *    lags behind a failover: restarted from an old config file, or cut
 *    off) - see epoch_grace_ms. After one full round with no verified
 *    master it fails (BL_ECONN; errmsg lists each sentinel's reason).
 *  - the sentinel that named the verified master moves to the front of the
 *    list: the next discovery (and the watch) ask it first.
 *  - the watch keeps one connection SUBSCRIBEd to +switch-master on one
 *    sentinel, moving to the next sentinel (with backoff) when it is lost.
 *
 * Threading and the loop: everything runs on the loop thread, nothing
 * blocks. Every wait is bounded by a loop timer (hiredis 0.14 has none).
 *
 * Addresses are numeric only (IPv4 or IPv6, no brackets): hiredis 0.14
 * resolves a host name inside redisAsyncConnect, blocking the loop.
 * bl_sentinel_new refuses a sentinel given by name (BL_EINVAL, with a
 * sentence saying so), and a sentinel that answers with a host name
 * (`sentinel announce-hostnames yes`) does not count as an answer.
 *
 * Limits (say them, do not hide them): ROLE proves the node is a master
 * now, not that it is the master Sentinel elected. A sentinel that lags
 * behind a failover names the old master, and an old master restarted at
 * once is an empty master (ROLE says master) for ~10 s until Sentinel
 * demotes it. The config-epoch rule refuses such a sentinel only once this
 * bl_sentinel has heard a newer epoch: a process that starts (or a
 * bl_sentinel created) during that window, and asks the lagging sentinel
 * first, can be handed the empty old master. The watch's switched callback
 * and the READONLY after the demotion move the caller off it; fencing
 * tokens are the final guard.
 */
#ifndef BIDLOCK_SENTINEL_H
#define BIDLOCK_SENTINEL_H

#include <stddef.h>
#include <stdint.h>

#include "bidlock.h" /* BL_E* status codes, BL_LOG_* levels */
#include "bidlock/loop.h"

#ifdef __cplusplus
extern "C" {
#endif

struct redisReply;

#define BL_SENTINEL_MAX 16       /* sentinels in one bl_sentinel */
#define BL_SENTINEL_NAME_MAX 255 /* bytes in a master name */
#define BL_SENTINEL_ADDR_MAX 46  /* a numeric address with its NUL (INET6_ADDRSTRLEN) */
#define BL_SENTINEL_TIMEOUT_DEFAULT 1000 /* ms, when timeout_ms is 0 */
#define BL_SENTINEL_PROBE_DEFAULT 5000   /* ms, when watch_probe_ms is 0 */
#define BL_SENTINEL_EPOCH_GRACE_DEFAULT 30000 /* ms, when epoch_grace_ms is 0 */

typedef struct bl_sentinel bl_sentinel;

/* What bl_sentinel_new needs. Everything is copied (strings and arrays
 * included); the struct and what it points to may go away after the call.
 * The loop itself (loop->impl) must outlive the bl_sentinel. */
typedef struct bl_sentinel_host {
    const bl_loop *loop;
    const char *master_name; /* 1..BL_SENTINEL_NAME_MAX bytes */
    /* The sentinels, in the order to ask them first: n in 1..BL_SENTINEL_MAX,
     * hosts[i] a numeric IPv4/IPv6 address, ports[i] in 1..65535. */
    int n;
    const char *const *hosts;
    const int *ports;
    /* AUTH to the sentinels (their own requirepass / ACL user), and to the
     * master (the URL's credentials, for the ROLE check connection). AUTH is
     * sent only when the password is set; "AUTH user pass" when the user is
     * set too. NULL = none. Never logged, never in a message. */
    const char *sentinel_username, *sentinel_password;
    const char *username, *password;
    int db; /* SELECT before ROLE when not 0 (so a bad db number fails here) */
    /* TLS for every connection (sentinels and candidates), NULL = plain;
     * borrowed: it must outlive the bl_sentinel. tls_name: what every
     * certificate must be for, NULL = each connection's address. */
    struct bl_tls_ctx *tls;
    const char *tls_name;
    /* Each step is bounded by this: connecting to one sentinel and getting
     * its answer; connecting to one candidate and getting AUTH/SELECT/ROLE
     * answered; the watch's connect + subscribe, and each of its probes.
     * A discovery therefore ends within about 2 * n * timeout_ms.
     * 0 = BL_SENTINEL_TIMEOUT_DEFAULT. At most 600000. */
    uint32_t timeout_ms;
    /* The watch re-sends SUBSCRIBE +switch-master this often and expects the
     * confirmation within timeout_ms: a frozen or partitioned sentinel is
     * noticed (TCP alone does not notice a SIGSTOPped process). 0 =
     * BL_SENTINEL_PROBE_DEFAULT. */
    uint32_t watch_probe_ms;
    /* A sentinel whose config-epoch is below the highest one a sentinel has
     * reported to this bl_sentinel is refused as lagging - for this long at
     * most after the first such refusal: sentinels that still report the lower
     * epoch then were reset (SENTINEL REMOVE/MONITOR starts again at 0), and
     * are believed again rather than refused forever. 0 =
     * BL_SENTINEL_EPOCH_GRACE_DEFAULT; at most 3600000. */
    uint32_t epoch_grace_ms;
    /* Log hook, same shape as bl_config's: level is a BL_LOG_* value, msg one
     * line without newline. NULL = silent. Called from inside hiredis
     * callbacks: it must not call bl_sentinel_free. */
    void (*log)(int level, const char *msg, void *data);
    void *log_data;
    /* The master may have changed: a +switch-master for master_name arrived
     * on the watch, or the watch (on connecting to a sentinel) found that it
     * names another address than the last one known. host/port are what the
     * sentinel announced, NOT verified: run bl_sentinel_discover (which
     * checks ROLE) before trusting them. host is valid during the call only.
     * Runs from a loop timer of its own (never inside hiredis), so it may
     * call anything, bl_sentinel_free included. May be NULL. */
    void (*switched)(void *ctx, const char *host, int port);
    void *ctx;
} bl_sentinel_host;

/* Copy h and check it. Connects to nothing yet.
 * Returns BL_OK and *out; BL_EINVAL with a sentence in why[0..why_len) (if
 * why is not NULL; never a password) - e.g. a host name instead of an
 * address; or BL_ENOMEM. *out is untouched on failure. */
int bl_sentinel_new(const bl_sentinel_host *h, bl_sentinel **out, char *why, size_t why_len);

/* Discovery result. status BL_OK: host/port are a verified master (host
 * valid during the call only), errmsg NULL. status BL_ECONN: no verified
 * master after a full round, host NULL, port 0, errmsg says why for each
 * sentinel tried. status BL_ECANCELED: bl_sentinel_free ran (see there). */
typedef void (*bl_sentinel_cb)(void *arg, int status, const char *host, int port,
                               const char *errmsg);

/* Start a discovery round; cb runs exactly once, later, from a loop timer
 * (never inside this call, never inside a hiredis callback), so it may call
 * bl_sentinel_discover again or bl_sentinel_free. Several rounds may run at
 * once; each is independent (own connections, own callback).
 * Returns BL_OK (cb will run), BL_EINVAL (s or cb NULL), BL_ENOMEM, or
 * BL_ECANCELED when called while s is being freed; on an error return cb
 * never runs. */
int bl_sentinel_discover(bl_sentinel *s, bl_sentinel_cb cb, void *arg);

/* The ROLE-check step alone, on host:port (numeric): connect, AUTH/SELECT
 * with the master's credentials, ROLE. cb as for discover: BL_OK if it says
 * master, else BL_ECONN with the reason ("... is a replica of ..."). No
 * sentinel is asked and the sentinel order is not changed. For the backend
 * to re-check a last-known address cheaply, and for tests.
 * Returns BL_OK, BL_EINVAL (bad arguments, host not numeric), BL_ENOMEM,
 * BL_ECANCELED. */
int bl_sentinel_verify(bl_sentinel *s, const char *host, int port, bl_sentinel_cb cb,
                       void *arg);

/* Start the watch (idempotent: a second call is BL_OK and does nothing).
 * It connects to the first sentinel in the current order, AUTHs, asks
 * get-master-addr-by-name (to notice a switch missed while it was away),
 * then SUBSCRIBEs to +switch-master. On loss, no confirmation within
 * timeout_ms, or a failed probe, it moves to the next sentinel after a
 * jittered backoff (50 ms doubling to 5 s, reset once subscribed). It stops
 * only with bl_sentinel_free. Returns BL_OK, BL_EINVAL (s NULL),
 * BL_ECANCELED (freeing). The first connect happens from a loop timer. */
int bl_sentinel_watch(bl_sentinel *s);

/* Free s: close every connection and timer of s. Each discovery or verify
 * still running ends with BL_ECANCELED, exactly once, INSIDE this call
 * (host NULL, errmsg "cancelled"); from such a callback, calls on s are
 * refused (BL_ECANCELED) or ignored (bl_sentinel_free). A switched
 * notification not yet delivered is dropped. No callback of s runs after
 * this returns. NULL is fine. Safe from any callback of s but `log`. */
void bl_sentinel_free(bl_sentinel *s);

/* ---- introspection --------------------------------------------------------- */

/* Index (into h->hosts) of the sentinel the next discovery asks first: the
 * one that last named a verified master, else the first given. */
int bl_sentinel_first(const bl_sentinel *s);
/* Index of the sentinel the watch is subscribed to now (confirmed), or -1. */
int bl_sentinel_watching(const bl_sentinel *s);
/* The last master address known: verified by a discovery (not by
 * bl_sentinel_verify), or announced by the watch. NULL (and *port 0) when
 * none yet. Valid until s's next callback or call. */
const char *bl_sentinel_master(const bl_sentinel *s, int *port);

typedef struct bl_sentinel_stats {
    uint64_t discover_ok, discover_failed; /* rounds (and verifies) ended */
    uint64_t not_master;       /* candidates the ROLE check refused */
    uint64_t lagging;          /* answers refused: older config-epoch, or named node down */
    uint64_t switches;         /* switched notifications delivered */
    uint64_t watch_subscribed; /* watch subscriptions confirmed (first + after a loss) */
    uint64_t watch_lost;       /* watch connections lost, refused or timed out */
} bl_sentinel_stats;
void bl_sentinel_stats_get(const bl_sentinel *s, bl_sentinel_stats *out);

/* ---- pure helpers (unit tests, fuzzing) ------------------------------------ */

/* A +switch-master payload, "NAME oldip oldport newip newport". The name
 * may itself contain spaces: the last four fields are taken from the
 * right. Addresses must be numeric, ports 1..65535. payload need not be
 * NUL-terminated. Returns 0 and fills *out (name points into payload), or
 * -1 if it is not such a payload. */
typedef struct bl_sentinel_switch {
    const char *name;
    size_t name_len;
    char old_host[BL_SENTINEL_ADDR_MAX];
    int old_port;
    char new_host[BL_SENTINEL_ADDR_MAX];
    int new_port;
} bl_sentinel_switch;
int bl_sentinel_parse_switch(const char *payload, size_t len, bl_sentinel_switch *out);

/* A ROLE reply (RESP2 array). Returns 0 and fills *out, or -1 if the reply
 * is not a well-formed ROLE answer (an error reply included). */
enum bl_sentinel_role_kind {
    BL_ROLE_MASTER = 1,
    BL_ROLE_REPLICA = 2, /* "slave" */
    BL_ROLE_SENTINEL = 3
};
typedef struct bl_sentinel_role {
    int kind;                                /* enum bl_sentinel_role_kind */
    long long offset;                        /* master: its offset; replica: processed */
    int replicas;                            /* master: replicas listed */
    char master_host[BL_SENTINEL_ADDR_MAX];  /* replica: whom it follows (as it says; */
    int master_port;                         /*   may be a host name), cut to fit */
    char link[16];                           /* replica: "connected", "connect", "sync", ... */
} bl_sentinel_role;
int bl_sentinel_parse_role(const struct redisReply *r, bl_sentinel_role *out);

/* A SENTINEL master NAME reply (RESP2: a flat field/value array). Returns 0
 * and fills *out, or -1 if it is not one (an error reply included). ip,
 * port and flags must be there; config_epoch and other_sentinels are -1
 * when absent. */
typedef struct bl_sentinel_master_info {
    char ip[BL_SENTINEL_ADDR_MAX]; /* as the sentinel says it (may be a name) */
    int port;
    int is_master, s_down, o_down, failover; /* flags: master, s_down, o_down,
                                              * failover_in_progress */
    long long config_epoch;
    int other_sentinels;
} bl_sentinel_master_info;
int bl_sentinel_parse_master_info(const struct redisReply *r, bl_sentinel_master_info *out);

/* 1 if s[0..n) is a numeric IPv4 or IPv6 address (what redisAsyncConnect
 * takes without resolving), else 0. */
int bl_sentinel_addr_ok(const char *s, size_t n);

#ifdef __cplusplus
}
#endif
#endif
