/* engine.h - the manager and request structs, shared by the engine's files
 * (lock.c, waitq.c, manager.c, config.c, admin.c, metrics.c). Backends
 * never see them: they get a bl_op / bl_aop and a bl_backend_host. */
#ifndef BIDLOCK_ENGINE_H
#define BIDLOCK_ENGINE_H

#include "backend.h"
#include "backoff.h"
#include "ids.h"

enum lock_state {
    LS_ACQUIRING, /* an acquire attempt is in flight */
    LS_WAITING,   /* between attempts: timer armed, maybe woken early */
    LS_HELD,
    LS_RELEASING,
    LS_ENDING,    /* a completion is due from the timer (never inline) */
    LS_DEAD       /* the user is done with it; freed once nothing is in flight */
};

/* One key of this manager's: the names of its posting, built once per key
 * and shared by every single-posting request on it (a group's postings have
 * their own, in the group's block), and the requests that wait on it,
 * oldest first. refs counts those requests: the entry goes with the last
 * of them (bl_lock_free), so it outlives every operation in flight on the
 * key, and the bl_op.keys a backend is given (&names) stays valid until
 * that operation's done, as backend.h asks. Owned by the engine (waitq.c);
 * a backend only ever reads the names. */
typedef struct bl_wq {
    bl_lock *head, *tail;
    int nwait;
    unsigned refs;
    struct bl_wq *hnext; /* hash chain */
    bl_keys names;       /* names.k[BL_KEY_LOCK] is the key */
    char block[];        /* the names' bytes */
} bl_wq;

/* A request's timer (ltimer.c): its due time on the loop clock, its place
 * in the manager's heap (slot - 1; 0 = not armed), and when it was armed. */
typedef struct bl_ltimer {
    uint64_t due;
    uint32_t slot, seq;
} bl_ltimer;

/* Pointers and 64-bit fields first, then the small ones packed together:
 * a request that waits is all this struct (with its timer), so its padding
 * is paid 100,000 times by a manager with that many pending. */
struct bl_lock {
    bl_manager *m;
    bl_lock *prev, *next;   /* manager's list of live requests */
    bl_lock *wprev, *wnext; /* its wait queue (while wq != NULL) */
    bl_wq *wq;              /* = kq while in its key's wait queue, else NULL */
    bl_wq *kq;              /* its key's entry (a single posting; NULL for a group) */
    bl_op op;               /* the backend operation; op.kind != NONE while in flight */
    const bl_keys *keys;    /* the posting's names (&kq->names; a group's: &gkeys[0]) */
    size_t nkeys;           /* bl_acquire_many: postings in gkeys; 0 = one, in keys */
    bl_keys *gkeys;         /* a group's names, in the same block */
    uint64_t *gtokens;      /* a group's tokens once held */
    uint64_t ttl_ms;
    uint64_t started_us;
    uint64_t deadline;      /* loop clock */
    double step;            /* backoff state */
    uint64_t token;
    uint64_t held_since;    /* loop clock when granted; 0 when not held */
    char *transfer_to;      /* bl_transfer: the receiving holder id (malloc'd) */
    uint64_t transfer_ms;   /* ...and its lease */
    /* callbacks */
    bl_acquire_cb acb;
    void *adata;
    bl_release_cb rcb;
    void *rdata;
    /* bl_with_lock */
    bl_section_fn sfn;
    bl_section_done_cb sdone;
    void *sdata;
    /* Why it ended, kept only once there is something to say: a buffer
     * (BL_ERRMSG_MAX) per request cost more than the rest of a pending
     * request. NULL: "" (bl_lock_errmsg). */
    char *errmsg;
    enum lock_state state;
    enum bl_op_kind pending_kind; /* which callback ENDING fires */
    int pending_status;
    int done_index;         /* after BL_EDONE: which posting was done; else -1 */
    int section_status;
    bl_ltimer lt;           /* backoff, deferred completion, lease renewal (ltimer.c) */
    unsigned abandoned : 1; /* user no longer waits for this grant/lock: give it back */
    unsigned try_once : 1;
    unsigned queued : 1;    /* joined the server's wait queue */
    unsigned reclaim : 1;   /* the next attempt may take a lock held under our id */
    unsigned reverify : 1;  /* renew at once after the renewal now in flight */
    unsigned wake_pending : 2; /* a release came while an attempt was out: 1 any, 2 directed */
    unsigned in_section : 1;
    /* lease */
    int auto_extend, lost;
    uint64_t lease_until;   /* loop clock: the lease surely ends by then */
    uint64_t op_sent;       /* loop clock: when the last operation was sent */
    void (*on_lost)(bl_lock *, int, void *);
    void *on_lost_data;
    enum bl_op_kind release_after; /* a release asked for while extending */
    int renew_queued;       /* in the manager's renewal queue (renew_head..) */
    bl_lock *rprev, *rnext; /* ...its neighbours there */
    uint64_t renew_window;  /* ms the due renewal may wait there for others */
};

enum mgr_kick { KICK_NONE, KICK_SHUTDOWN, KICK_FINISH };

#define BL_WQ_BUCKETS 256 /* to start with: the table doubles as keys are added */

struct bl_manager {
    bl_loop loop;
    bl_config cfg; /* string fields point at the copies below */
    char *url, *host, *unix_path, *prefix, *username, *password;
    char *sentinel_username, *sentinel_password;
    char *tls_files[5]; /* copies: ca file, ca dir, cert, key, server name */
    char holder[BL_HOLDER_MAX];
    size_t holder_len;
    char errmsg[BL_ERRMSG_MAX];
    bl_backend *be;
    bl_backend_host host_if; /* what the backend was given */
    bl_lock *locks;
    bl_wq **wq;          /* the keys' entries: a hash table of nbuckets chains */
    size_t nbuckets, nkq;
    char op_err[BL_ERRMSG_MAX]; /* bl_op.errbuf: a start that fails says why here */
    bl_stats stats;
    bl_histogram acquire_hist, release_hist, hold_hist;
    bl_backoff backoff;
    int wait_on;   /* min_replicas resolves to non-zero: grants wait for WAIT */
    uint64_t rng;
    int admin_inflight;
    /* the requests' timers (ltimer.c) */
    bl_timer *lt_tick;     /* the loop's one timer for them all */
    bl_lock **lt_heap;     /* armed ones, a binary min-heap of lt_n */
    size_t lt_n, lt_cap, lt_count; /* lt_count: requests, each with a slot reserved */
    uint64_t lt_tick_due;  /* what lt_tick is armed for; UINT64_MAX: not armed */
    uint32_t lt_seq;
    int lt_firing;
    bl_timer *kick_timer;  /* deferred shutdown / finish of close */
    bl_timer *close_timer; /* close deadline */
    enum mgr_kick kick;
    int closing, shutdown_started, backend_closed;
    bl_lock *close_scan; /* close: the first request that may still be busy */
    /* Lease renewals due within a few ms of each other, sent as one batch
     * (lock.c, renew_enqueue): oldest first. */
    bl_lock *renew_head, *renew_tail;
    size_t renew_n;
    size_t renew_batch;    /* leases per renewal call: BL_RENEW_BATCH_MAX; 1 = one call
                            * each (the bench's control run sets it) */
    bl_timer *renew_timer; /* sends the queue by the earliest deadline in it */
    int renew_armed;
    uint64_t renew_flush_at; /* loop clock: renew_timer's deadline while armed */
    bl_close_cb close_cb;
    void *close_data;
};

static inline uint64_t bl_mgr_now(const bl_manager *m)
{
    return m->loop.now_ms(m->loop.impl);
}

/* manager.c */
typedef int (*bl_backend_factory)(const bl_backend_host *host, bl_backend **out);
/* bl_manager_new with a backend of the caller's (make != NULL), e.g. a fake
 * one in the engine's tests; NULL = the one cfg->backend names. */
int bl_manager_new_with(const bl_loop *loop, const bl_config *cfg, bl_backend_factory make,
                        bl_manager **out);
int bl_mgr_fail(bl_manager *m, int status, const char *msg);
void bl_mgr_check_close(bl_manager *m);
void bl_log(const bl_manager *m, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Count an operation that failed: conn_errors or redis_errors. */
void bl_mgr_count_error(bl_manager *m, int status);
/* metrics.c */
void bl_hist_add(bl_histogram *h, double ms);
void bl_hist_add_to(bl_histogram *h, const double *bounds, double ms);
/* The lock stops being held (released, given back, lost): count the hold. */
void bl_lock_end_hold(bl_lock *lock);
/* waitq.c: the engine's wait queues */
/* The entry of "<prefix>:<mp>:<posting>", made (names and all) if this is
 * its first request, with one more reference; NULL on out of memory. */
bl_wq *bl_wq_ref(bl_manager *m, const char *mp, const char *posting);
void bl_wq_unref(bl_manager *m, bl_wq *w);
void bl_wq_join(bl_lock *lock);
void bl_wq_leave(bl_lock *lock);
void bl_wq_wake(bl_manager *m, const char *key, size_t keylen, int directed);
/* A direct hand-off to us on key (backend.h, granted): 1 taken, 0 not. */
int bl_wq_granted(bl_manager *m, const char *key, size_t keylen, uint64_t token);
bl_wq *bl_wq_find(bl_manager *m, const char *key, size_t keylen);
void bl_wq_free_all(bl_manager *m);
/* ltimer.c: the requests' timers. bl_lt_reserve makes room for one more
 * request's (0, or -1 out of memory); bl_lt_release gives it back. */
int bl_lt_init(bl_manager *m);
void bl_lt_free_all(bl_manager *m);
int bl_lt_reserve(bl_manager *m);
void bl_lt_release(bl_lock *lock);
void bl_lt_start(bl_lock *lock, uint64_t after_ms);
void bl_lt_stop(bl_lock *lock);
/* lock.c: close and wake-up entry points */
void bl_lock_close_one(bl_lock *lock);
void bl_lock_timer_cb(void *data); /* the request's timer fired */
void bl_lock_flush_ending(bl_lock *lock);
void bl_lock_free(bl_lock *lock);
void bl_lock_wake(bl_lock *lock, int directed);
/* A direct hand-off for this waiting request: 1 if it holds the lock now. */
int bl_lock_take_grant(bl_lock *lock, uint64_t token);
/* The store may have lost what it had (a failover): a held, auto-extended
 * lock renews now instead of at its next tick. */
void bl_lock_reverify(bl_lock *lock);
/* renew_timer's callback: send every queued renewal now. */
void bl_lock_renew_flush(void *manager);

#endif
