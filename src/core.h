/* core.h - the manager and request structs, shared by lock.c and manager.c
 * only. Backends see them through the accessors in internal.h. */
#ifndef BIDLOCK_CORE_H
#define BIDLOCK_CORE_H

#include "internal.h"

enum lock_state {
    LS_ACQUIRING, /* an acquire attempt is in flight */
    LS_WAITING,   /* between attempts: timer armed, maybe woken early */
    LS_HELD,
    LS_RELEASING,
    LS_ENDING,    /* a completion is due from the timer (never inline) */
    LS_DEAD       /* the user is done with it; freed once nothing is in flight */
};

struct bl_lock {
    bl_manager *m;
    bl_lock *prev, *next;   /* manager's list of live requests */
    bl_lock *wprev, *wnext; /* its wait queue (while wq != NULL) */
    bl_wq *wq;
    enum lock_state state;
    enum bl_op_kind inflight;
    int abandoned;      /* user no longer waits for this grant/lock: give it back */
    char *key;
    size_t keylen;
    char *aux[BL_AUX_COUNT];
    size_t auxlen[BL_AUX_COUNT];
    uint64_t ttl_ms;
    uint64_t started;   /* loop clock, bl_acquire */
    uint64_t started_us;
    uint64_t deadline;  /* loop clock */
    int try_once;
    int queued;         /* joined the server's wait queue */
    double step;        /* backoff state */
    bl_timer *timer;    /* backoff, deferred completion, lease renewal */
    int pending_status;
    enum bl_op_kind pending_kind; /* which callback ENDING fires */
    uint64_t token;
    /* lease */
    int auto_extend, lost;
    uint64_t lease_until; /* loop clock: the lease surely ends by then */
    uint64_t op_sent;     /* loop clock: when the last operation was sent */
    void (*on_lost)(bl_lock *, int, void *);
    void *on_lost_data;
    enum bl_op_kind release_after; /* a release asked for while extending */
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
    char *sentinel_username, *sentinel_password; /* sentinel branch (issue 13) */
    char holder[BL_HOLDER_MAX];
    size_t holder_len;
    char errmsg[BL_ERRMSG_MAX];
    bl_backend *be;
    bl_lock *locks;
    bl_wq *wq[BL_WQ_BUCKETS];
    bl_stats stats;
    bl_histogram acquire_hist, release_hist;
    bl_backoff backoff;
    uint64_t rng;
    int admin_inflight;
    bl_timer *kick_timer;  /* deferred shutdown / finish of close */
    bl_timer *close_timer; /* close deadline */
    enum mgr_kick kick;
    int closing, shutdown_started, backend_closed;
    bl_close_cb close_cb;
    void *close_data;
};

/* lock.c -> manager.c */
void bl_mgr_check_close(bl_manager *m);
int bl_mgr_fail(bl_manager *m, int status, const char *msg);
void bl_hist_add(bl_histogram *h, double ms);
/* lock.c: join/leave a wait queue */
void bl_wq_join(bl_lock *lock);
void bl_wq_leave(bl_lock *lock);
/* manager.c: cancel/abandon everything at close */
void bl_lock_close_one(bl_lock *lock);
void bl_lock_flush_ending(bl_lock *lock);
void bl_lock_free(bl_lock *lock);
void bl_lock_wake(bl_lock *lock, int directed);

#endif
