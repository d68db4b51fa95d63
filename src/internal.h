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
