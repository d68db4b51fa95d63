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

/* The requests of this manager that wait on one key, oldest first. */
typedef struct bl_wq {
    bl_lock *head, *tail;
    int nwait;
    struct bl_wq *hnext; /* hash chain */
    size_t keylen;
    char key[];
} bl_wq;

struct bl_lock {
    bl_manager *m;
    bl_lock *prev, *next;   /* manager's list of live requests */
    bl_lock *wprev, *wnext; /* its wait queue (while wq != NULL) */
    bl_wq *wq;
    enum lock_state state;
    bl_op op;               /* the backend operation; op.kind != NONE while in flight */
    int abandoned;          /* user no longer waits for this grant/lock: give it back */
    bl_keys keys;           /* the posting's names (a group's first posting) */
    size_t nkeys;           /* bl_acquire_many: postings in gkeys; 0 = one, in keys */
    bl_keys *gkeys;         /* a group's names, in the same block */
    uint64_t *gtokens;      /* a group's tokens once held */
    int done_index;         /* after BL_EDONE: which posting was done; else -1 */
    uint64_t ttl_ms;
    uint64_t started;       /* loop clock, bl_acquire */
    uint64_t started_us;
    uint64_t deadline;      /* loop clock */
    int try_once;
    int queued;             /* joined the server's wait queue */
    int reclaim;            /* the next attempt may take a lock held under our id */
    int reverify;           /* renew at once after the renewal now in flight */
    int wake_pending;       /* a release came while an attempt was out: 1 any, 2 directed */
    double step;            /* backoff state */
    bl_timer *timer;        /* backoff, deferred completion, lease renewal */
    int pending_status;
    enum bl_op_kind pending_kind; /* which callback ENDING fires */
    uint64_t token;
    uint64_t held_since;    /* loop clock when granted; 0 when not held */
    /* lease */
    int auto_extend, lost;
    uint64_t lease_until;   /* loop clock: the lease surely ends by then */
    uint64_t op_sent;       /* loop clock: when the last operation was sent */
    int renew_queued;       /* in the manager's renewal queue (renew_head..) */
    bl_lock *rprev, *rnext; /* ...its neighbours there */
    uint64_t renew_window;  /* ms the due renewal may wait there for others */
    void (*on_lost)(bl_lock *, int, void *);
    void *on_lost_data;
    enum bl_op_kind release_after; /* a release asked for while extending */
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
    int in_section;
    int section_status;
    char errmsg[BL_ERRMSG_MAX];
};

enum mgr_kick { KICK_NONE, KICK_SHUTDOWN, KICK_FINISH };

#define BL_WQ_BUCKETS 256

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
    bl_wq *wq[BL_WQ_BUCKETS];
    bl_stats stats;
    bl_histogram acquire_hist, release_hist, hold_hist;
    bl_backoff backoff;
    int wait_on;   /* min_replicas resolves to non-zero: grants wait for WAIT */
    uint64_t rng;
    int admin_inflight;
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
void bl_wq_join(bl_lock *lock);
void bl_wq_leave(bl_lock *lock);
void bl_wq_wake(bl_manager *m, const char *key, size_t keylen, int directed);
/* A direct hand-off to us on key (backend.h, granted): 1 taken, 0 not. */
int bl_wq_granted(bl_manager *m, const char *key, size_t keylen, uint64_t token);
bl_wq *bl_wq_find(bl_manager *m, const char *key, size_t keylen);
void bl_wq_free_all(bl_manager *m);
/* lock.c: close and wake-up entry points */
void bl_lock_close_one(bl_lock *lock);
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
