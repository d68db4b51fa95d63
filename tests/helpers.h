/* helpers.h - recorders for bidlock's callbacks and the waits built on
 * them, shared by the suites (c-ares' test/ares-test.h, nghttp2's
 * tests/nghttp2_test_helper.h). A recorder counts its callbacks (exactly one
 * is the contract) and keeps what the last one said. The blocking helpers
 * run the harness's loop T and assert what every caller would: the call was
 * accepted, its callback did not run inside it, and came within 20 s.
 * Postings are in the marketplace "ebay" unless a name says otherwise. */
#ifndef BIDLOCK_TEST_HELPERS_H
#define BIDLOCK_TEST_HELPERS_H

#include <stdint.h>

#include "bidlock.h"
#include "harness.h"

/* ---- recorders -------------------------------------------------------------- */

/* One request's outcome: an acquire, a release, or an on_lost. */
typedef struct rec {
    int n;          /* callbacks so far */
    int status;
    bl_lock *lock;  /* the held lock after an acquire's BL_OK, else NULL */
    uint64_t token; /* its fencing token then, else 0 */
    uint64_t at;    /* mono_ms() of the last callback */
    char errmsg[256];
} rec;

/* Every rec callback in this process adds one: a test with many requests
 * waits for their sum (tl_wait(T, &rec_calls, N, ...)). */
extern int rec_calls;

void on_acq(bl_lock *lock, int status, void *rec_);  /* a bl_acquire_cb */
void on_rel(bl_lock *lock, int status, void *rec_);  /* a bl_release_cb */
void on_lost(bl_lock *lock, int status, void *rec_); /* for opts.on_lost */

typedef struct hrec { /* bl_health_check */
    int n, status, state;
    double latency_ms;
    char backend[16], errmsg[256];
} hrec;
void on_health(bl_manager *m, const bl_health *h, void *hrec_);

typedef struct irec { /* bl_inspect */
    int n, status, held, done;
    int64_t pttl;
    uint64_t token;
    char holder[400]; /* "(null)" when nobody holds it */
    char errmsg[256];
} irec;
void on_inspect(bl_manager *m, const bl_lock_info *i, void *irec_);

typedef struct crec { /* bl_cleanup */
    int n, status;
    uint64_t removed;
} crec;
void on_cleanup(bl_manager *m, int status, uint64_t removed, void *crec_);

/* ---- requests on T ------------------------------------------------------------- */

/* Defaults for port, except that it notices and retries quickly: reconnect
 * after 20 ms, wait with backoff between 20 and 200 ms. */
bl_config quick_cfg(int port);

/* bl_acquire_opts_init, then these two. */
bl_acquire_opts acq_opts(int64_t wait_ms, int64_t ttl_ms);

/* Start acquiring posting into *r (asserts bl_acquire accepted it). */
void acq_start(bl_manager *m, const char *posting, int64_t wait_ms, int64_t ttl_ms, rec *r);
/* Acquire and wait for the one callback. */
rec acq(bl_manager *m, const char *posting, int64_t wait_ms, int64_t ttl_ms);
rec acq_in(bl_manager *m, const char *marketplace, const char *posting, int64_t wait_ms,
           int64_t ttl_ms);
/* Start a try-once acquire of posting that renews its lease (auto_extend:
 * at about ttl_ms/3) into *held; its on_lost goes to *lost (may be NULL). */
void acq_start_renewed(bl_manager *m, const char *posting, int64_t ttl_ms, rec *held, rec *lost);
/* The same, waited for. */
rec acq_renewed(bl_manager *m, const char *posting, int64_t ttl_ms, rec *lost);
/* Release (or release and mark done) and wait: the release's status. */
int rel(bl_lock *lock);
int rel_done(bl_lock *lock);
/* Inspect posting and wait; asserts the inspection itself worked. */
irec inspect(bl_manager *m, const char *posting);

/* ---- waits and checks ----------------------------------------------------------- */

/* Run T until every rec in recs[0..n) has had its callback, at most ms. */
int wait_all(rec *recs, int n, int ms);
/* Each of recs[0..n) had exactly one callback ("what i: k callbacks"). */
void assert_once(const rec *recs, int n, const char *what);
/* Run T until m's connection is up, at most ms. */
int wait_up(bl_manager *m, int ms);
/* Run T until key is gone from s (expired or deleted), at most ms. The
 * server's own clock decides a TTL, so this waits for what Redis did, not
 * for a guess of how long that takes on a busy machine. */
int wait_gone(const redis_srv *s, const char *key, int ms);
/* Run T until m has renewed `extends` leases in all (bl_stats.extends), at
 * most ms. */
int wait_renewed(bl_manager *m, uint64_t extends, int ms);
/* Run T until s holds no lock key (rs_lock_count), at most ms. */
int wait_no_locks(const redis_srv *s, int ms);
/* Run T until every attempt m has sent is answered (bl_stats: attempts add
 * up by outcome), at most ms. A cancelled request's attempt still runs on
 * the server; this waits for its answer. */
int wait_answered(bl_manager *m, int ms);
/* Run T until m's one request, for posting, waits and nothing else is
 * going on: m's holder id is in the posting's queue, m's subscriber listens
 * on its wake-up channel, m has heard that subscription (every waiter then
 * retries once: bl_stats.wakeups, and a second attempt) and that retry was
 * answered. A release
 * now hands the lock over and its message wakes the request; an attempt
 * still on the wire would miss that message. For a fresh manager whose
 * backoff is longer than a subscription takes (1 s or more). At most ms. */
int wait_queued(const redis_srv *s, bl_manager *m, const char *posting, int ms);
/* The identities bidlock.h states for bl_stats, once nothing is in flight:
 * requests and attempts add up by outcome, errors by kind, no gauge left. */
void assert_counters(bl_manager *m);

#endif
