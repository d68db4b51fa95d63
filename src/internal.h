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

/* A parsed URL. Strings are malloc'd and owned by the struct; NULL when the
 * URL has none. Exactly one of host (with port) and unix_path is set. */
typedef struct bl_url {
    char *host;      /* without brackets: "::1" */
    int port;        /* 6379 by default; 0 for unix */
    char *unix_path; /* percent-decoded */
    char *username;  /* percent-decoded */
    char *password;  /* percent-decoded */
    int db;          /* 0 by default */
} bl_url;

/* Parse redis://[[user]:password@]host[:port][/db] or
 * unix:///path/to/socket[?db=N] (grammar and decisions atop url.c).
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

/* ---- backend seam: what the state machine needs from a store ------------ */

enum bl_op_kind { BL_OP_NONE = 0, BL_OP_ACQUIRE, BL_OP_RELEASE };

/* The outcome of one backend operation. status: BL_OK, BL_EBUSY (acquire
 * found it taken), BL_ENOTHELD (release refused), BL_ECONN, BL_EREDIS.
 * errmsg: for errors, valid only during the callback. */
typedef struct bl_op_result {
    int status;
    const char *errmsg;
} bl_op_result;

/* Completion of an operation; the ctx is the bl_lock that started it. */
void bl_lock_op_done(bl_lock *lock, const bl_op_result *r);

typedef struct bl_backend bl_backend;
typedef struct bl_backend_vt {
    /* Start an operation for `lock` (key, holder, ttl come from it). On 0,
     * bl_lock_op_done(lock, ...) is called exactly once, later, from the
     * loop. On a negative status nothing was sent and it is never called. */
    int (*start)(bl_backend *be, bl_lock *lock, enum bl_op_kind kind);
    /* Close: let in-flight operations finish, then call done(m). force: drop
     * the connection now (in-flight operations end with BL_ECONN). */
    void (*shutdown)(bl_backend *be, int force);
    void (*free)(bl_backend *be);
} bl_backend_vt;

struct bl_backend {
    const bl_backend_vt *vt;
    bl_manager *m;
};

/* redis.c */
int bl_redis_backend_new(bl_manager *m, bl_backend **out);

/* Called by a backend when shutdown() has finished. */
void bl_manager_backend_closed(bl_manager *m);
/* Called by a backend when its connection comes up or goes down. */
void bl_manager_conn_event(bl_manager *m, int up);

/* ---- manager/lock internals that backends read ------------------------- */

const bl_loop *bl_manager_loop(const bl_manager *m);
const bl_config *bl_manager_config(const bl_manager *m);
bl_stats *bl_manager_stats_mut(bl_manager *m);
uint64_t bl_manager_rand(bl_manager *m);

const char *bl_lock_key_len(const bl_lock *lock, size_t *len);
uint64_t bl_lock_ttl(const bl_lock *lock);
enum bl_op_kind bl_lock_inflight(const bl_lock *lock);
/* The lock's message buffer (BL_ERRMSG_MAX bytes), for a backend to explain
 * a synchronous failure. */
char *bl_lock_errbuf(bl_lock *lock);

#endif
