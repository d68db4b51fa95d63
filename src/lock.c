/* lock.c - the lock request state machine.
 *
 *  bl_acquire -> ACQUIRING --granted--> HELD --bl_release--> RELEASING --> DEAD
 *                  |    ^                 |  ^
 *           taken  v    | timer / wake    |  | renew timer (<= ttl/3): queue, extend;
 *               WAITING-+                 |  +- refused/expired -> on_lost once
 *                  +-- deadline/cancel --> ENDING --(timer 0)--> callback --> DEAD
 *
 * Only backend completions (op_done), the request's own timer and
 * wake-ups (bl_lock_wake) move a request. The timer is reused for
 * backoff pauses, lease renewals and deferred completions (a callback must
 * never run inside the call that started it). A request has at most one
 * backend operation in flight; the handle lives until the user is done with
 * it (DEAD) and that operation has answered.
 *
 * Lease renewals go through the manager's renewal queue: a lock whose
 * renewal is due waits there a few ms for others, and the queue goes out
 * as batches of up to BL_RENEW_BATCH_MAX leases per call (start_many).
 * Each lock still has its own BL_OP_EXTEND in flight and its own answer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* Keep why the request ended. The buffer is made the first time there is
 * something to keep and reused after; without memory the message is lost,
 * not the status. */
static void set_errmsg(bl_lock *lock, const char *msg)
{
    if (!lock->errmsg && !(lock->errmsg = malloc(BL_ERRMSG_MAX)))
        return;
    snprintf(lock->errmsg, BL_ERRMSG_MAX, "%s", msg ? msg : "");
}

static int has_errmsg(const bl_lock *lock)
{
    return lock->errmsg && lock->errmsg[0];
}

static void clear_errmsg(bl_lock *lock)
{
    if (lock->errmsg)
        lock->errmsg[0] = '\0';
}

static void renew_unqueue(bl_lock *lock);

void bl_lock_free(bl_lock *lock)
{
    bl_manager *m = lock->m;
    renew_unqueue(lock);
    if (lock->wq)
        bl_wq_leave(lock);
    if (lock->prev)
        lock->prev->next = lock->next;
    else
        m->locks = lock->next;
    if (lock->next)
        lock->next->prev = lock->prev;
    bl_wq_unref(m, lock->kq);
    bl_lt_release(lock);
    free(lock->transfer_to);
    free(lock->errmsg);
    free(lock);
}

/* A DEAD lock goes once its last operation has answered. While the manager
 * closes, handles stay valid until the close callback has returned. */
static void maybe_free(bl_lock *lock)
{
    bl_manager *m = lock->m;
    if (lock->state != LS_DEAD || lock->op.kind != BL_OP_NONE)
        return;
    if (m->closing) {
        bl_mgr_check_close(m);
        return;
    }
    bl_lock_free(lock);
}

/* ms this request may still wait: the lifetime of its wait-queue entry on
 * the server (0 = try once, no entry). */
static uint64_t queue_ttl(const bl_lock *lock)
{
    const bl_manager *m = lock->m;
    if (lock->try_once || !m->cfg.wake_on_release)
        return 0;
    uint64_t now = bl_mgr_now(m);
    uint64_t left = lock->deadline > now ? lock->deadline - now : 0;
    return left + m->cfg.handoff_ms + 1000;
}

/* 1 if another request of this manager waits on lock's key. */
static int others_wait(bl_lock *lock)
{
    if (lock->wq)
        return lock->wq->nwait > 1;
    return lock->kq && lock->kq->nwait > 0;
}

static void op_done(bl_op *op, const bl_op_result *r);

/* The lock is held under our holder id, and we were told so. It is ours to
 * take (a grant whose reply was lost: the connection dropped, the request
 * ended BL_ECONN) only if no other request of this manager holds it, is
 * getting or giving it back, or has anything in flight on it. Rare: a walk
 * of the manager's requests is fine. */
static int has_key(const bl_lock *l, const char *key, size_t n)
{
    const bl_keys *k = l->nkeys ? l->gkeys : l->keys;
    for (size_t i = 0; i < (l->nkeys ? l->nkeys : 1); i++)
        if (k[i].len[BL_KEY_LOCK] == n && memcmp(k[i].k[BL_KEY_LOCK], key, n) == 0)
            return 1;
    return 0;
}

static int may_reclaim(const bl_lock *lock)
{
    const char *key = lock->keys->k[BL_KEY_LOCK];
    size_t n = lock->keys->len[BL_KEY_LOCK];
    for (const bl_lock *l = lock->m->locks; l; l = l->next)
        if (l != lock && has_key(l, key, n) &&
            (l->op.kind != BL_OP_NONE || l->state == LS_HELD || l->state == LS_RELEASING))
            return 0;
    return 1;
}

/* Fill lock->op for kind; start_op sends it. */
static void prep_op(bl_lock *lock, enum bl_op_kind kind)
{
    bl_manager *m = lock->m;
    lock->op_sent = bl_mgr_now(m);
    lock->op = (bl_op){.kind = kind, .keys = lock->nkeys ? lock->gkeys : lock->keys,
                       .nkeys = lock->nkeys, .tokens = lock->gtokens, .ttl_ms = lock->ttl_ms,
                       .errbuf = m->op_err, .done = op_done};
    if (kind == BL_OP_TRANSFER) {
        lock->op.ttl_ms = lock->transfer_ms;
        lock->op.target = lock->transfer_to;
        lock->op.target_len = strlen(lock->transfer_to);
    }
    if (kind == BL_OP_ACQUIRE && !lock->nkeys) {
        /* (A group joins no queue: it retries on its timer; a queue entry
         * per posting would reserve locks it cannot take all at once.) */
        lock->op.queue_ttl_ms = queue_ttl(lock);
        lock->op.queued = lock->queued;
        /* Our holder id in the server's queue speaks for every request of
         * ours on this key: while another one waits, a grant keeps the
         * entry (moved to the back), for as long as the longest of them
         * may wait, so the next release wakes it. */
        const bl_wq *w = lock->kq;
        const bl_lock *longest = NULL;
        for (const bl_lock *l = w ? w->head : NULL; l; l = l->wnext)
            if (l != lock && !l->try_once && (!longest || l->deadline > longest->deadline))
                longest = l;
        uint64_t keep = longest ? queue_ttl(longest) : 0;
        lock->op.keep_queued = keep > 0;
        lock->op.reclaim = lock->reclaim;
        lock->reclaim = 0;
        if (keep > lock->op.queue_ttl_ms)
            lock->op.queue_ttl_ms = keep;
    }
}

static int start_op(bl_lock *lock, enum bl_op_kind kind)
{
    bl_manager *m = lock->m;
    prep_op(lock, kind);
    m->op_err[0] = '\0';
    int rc = m->be->vt->start(m->be, &lock->op);
    if (rc != 0) {
        lock->op.kind = BL_OP_NONE;
        if (m->op_err[0])
            set_errmsg(lock, m->op_err);
    }
    return rc;
}

static void leave_server_queue(bl_lock *lock)
{
    lock->m->be->vt->leave(lock->m->be, lock->keys);
}

/* ---- lease renewal: spread, then batched --------------------------------- */

/* The most a due renewal waits in the queue for others. Small against any
 * lease worth renewing, and renewals are due early by as much (the timer
 * fires that much sooner), so waiting never makes one late. */
#define RENEW_WINDOW_MS 50

/* Arm the next renewal, at most ttl/3 after the last one answered. Each
 * lock picks its own moment in the last quarter of that third: locks
 * granted together drift apart at once and keep drifting, so they never
 * renew as one herd; a lease of ttl is renewed three times over before it
 * could run out. The moment is rounded down to a multiple of the window on
 * the loop clock: leases due within one window fire together, in one turn
 * of the loop, rather than each waking it on its own millisecond. */
static void schedule_renewal(bl_lock *lock)
{
    bl_manager *m = lock->m;
    uint64_t third = lock->ttl_ms / 3 ? lock->ttl_ms / 3 : 1, spread = third / 4;
    uint64_t w = spread < RENEW_WINDOW_MS ? spread : RENEW_WINDOW_MS;
    uint64_t early = w + (spread ? bl_rand_next(&m->rng) % (spread + 1) : 0);
    uint64_t now = bl_mgr_now(m), at = now + (third > early ? third - early : 0);
    if (w)
        at -= at % w;
    lock->renew_window = w;
    bl_lt_start(lock, at > now ? at - now : 0);
}

static void renew_unqueue(bl_lock *lock)
{
    bl_manager *m = lock->m;
    if (!lock->renew_queued)
        return;
    lock->renew_queued = 0;
    if (lock->rprev)
        lock->rprev->rnext = lock->rnext;
    else
        m->renew_head = lock->rnext;
    if (lock->rnext)
        lock->rnext->rprev = lock->rprev;
    else
        m->renew_tail = lock->rprev;
    lock->rprev = lock->rnext = NULL;
    if (--m->renew_n == 0 && m->renew_armed) {
        m->renew_armed = 0;
        m->loop.timer_stop(m->renew_timer);
    }
}

static void extend_done(bl_lock *lock, const bl_op_result *r);

/* The renewal is on the wire: while it is out, the timer bounds the lease
 * (no answer by then: lost). */
static void renewal_sent(bl_lock *lock)
{
    bl_manager *m = lock->m;
    uint64_t now = bl_mgr_now(m);
    bl_lt_start(lock, lock->lease_until > now ? lock->lease_until - now : 1);
}

/* Send the renewals of locks[0..n) (n <= BL_RENEW_BATCH_MAX; a group only
 * alone): one call if the backend batches, else one each. */
static void renew_send(bl_manager *m, bl_lock **locks, size_t n)
{
    bl_op *ops[BL_RENEW_BATCH_MAX];
    for (size_t i = 0; i < n; i++) {
        prep_op(locks[i], BL_OP_EXTEND);
        ops[i] = &locks[i]->op;
    }
    if (n > 1 && m->be->vt->start_many && m->be->vt->start_many(m->be, ops, n) == 0) {
        for (size_t i = 0; i < n; i++)
            renewal_sent(locks[i]);
        return;
    }
    /* Every op goes out before any failure is handled: a failure may end
     * in on_lost, whose callback may release or close anything. */
    int failed[BL_RENEW_BATCH_MAX];
    for (size_t i = 0; i < n; i++) {
        failed[i] = m->be->vt->start(m->be, ops[i]) != 0;
        if (failed[i])
            locks[i]->op.kind = BL_OP_NONE;
        else
            renewal_sent(locks[i]);
    }
    for (size_t i = 0; i < n; i++)
        if (failed[i]) {
            bl_op_result r = {BL_ECONN, 0, 0, "not connected", 0, 0};
            extend_done(locks[i], &r);
        }
}

void bl_lock_renew_flush(void *data)
{
    bl_manager *m = data;
    bl_lock *chunk[BL_RENEW_BATCH_MAX];
    size_t cap = m->renew_batch && m->renew_batch < BL_RENEW_BATCH_MAX ? m->renew_batch
                                                                       : BL_RENEW_BATCH_MAX;
    m->renew_armed = 0;
    m->loop.timer_stop(m->renew_timer);
    /* The head is read again after each send: a callback from one may have
     * released (unqueued) others, or closed the manager (unqueued all). */
    while (m->renew_head) {
        size_t n = 0;
        while (m->renew_head && n < cap) {
            bl_lock *l = m->renew_head;
            renew_unqueue(l);
            if (l->nkeys) /* a group renews its postings in a script of its own */
                renew_send(m, &l, 1);
            else
                chunk[n++] = l;
        }
        if (n)
            renew_send(m, chunk, n);
    }
}

/* The lock's renewal is due: queue it, and send the queue once it fills a
 * batch or the earliest deadline in it comes. */
static void renew_enqueue(bl_lock *lock)
{
    bl_manager *m = lock->m;
    uint64_t w = lock->renew_window;
    lock->renew_window = 0; /* a retry or a re-check waits for nobody */
    lock->renew_queued = 1;
    lock->rnext = NULL;
    lock->rprev = m->renew_tail;
    if (m->renew_tail)
        m->renew_tail->rnext = lock;
    else
        m->renew_head = lock;
    m->renew_tail = lock;
    if (++m->renew_n >= (m->renew_batch ? m->renew_batch : 1)) {
        bl_lock_renew_flush(m);
        return;
    }
    uint64_t at = bl_mgr_now(m) + w;
    if (!m->renew_armed || at < m->renew_flush_at) {
        m->renew_armed = 1;
        m->renew_flush_at = at;
        m->loop.timer_start(m->renew_timer, w);
    }
}

static void end_later(bl_lock *lock, enum bl_op_kind kind, int status)
{
    lock->state = LS_ENDING;
    lock->pending_kind = kind;
    lock->pending_status = status;
    bl_lt_start(lock, 0);
}

/* ---- wait queues ------------------------------------------------------- */

static void leave_queue(bl_lock *lock, int tell_server)
{
    if (!lock->wq)
        return;
    int last = lock->wq->nwait == 1;
    bl_wq_leave(lock);
    /* Our holder id sits in the server's queue: take it out so a release
     * does not reserve the lock for a waiter that has gone. */
    if (tell_server && last)
        leave_server_queue(lock);
}

/* ---- completions -------------------------------------------------------- */

static void fire_acquire(bl_lock *lock, int status)
{
    bl_manager *m = lock->m;
    switch (status) {
    case BL_OK: m->stats.acquired++; break;
    case BL_EBUSY: m->stats.busy++; break;
    case BL_ETIMEDOUT: m->stats.timeouts++; break;
    case BL_ECANCELED: m->stats.cancelled++; break;
    case BL_EDONE: m->stats.done++; break;
    default: m->stats.failed++; break;
    }
    /* Granted: the server took us out of its queue. Otherwise we say so. */
    /* Granted (or done): the server took us out of its queue - unless the
     * grant kept our entry for another request of ours, which has left
     * meanwhile: then we are the last and say so. Otherwise we say so. */
    leave_queue(lock, (status != BL_OK && status != BL_EDONE) || lock->op.keep_queued);
    if (status == BL_OK) {
        lock->state = LS_HELD;
        lock->held_since = bl_mgr_now(m);
        m->stats.held++;
        bl_hist_add(&m->acquire_hist, (double)(bl_now_us() - lock->started_us) / 1000.0);
        if (lock->op.kind == BL_OP_EXTEND) {
            /* A direct hand-off: ours for handoff_ms, counted from when the
             * message came (the release set it a little earlier: half of it
             * is kept as the margin), until the takeover extension now out
             * answers; the timer watches that lease meanwhile. */
            lock->lease_until = lock->op_sent + m->cfg.handoff_ms / 2;
            bl_lt_start(lock, m->cfg.handoff_ms / 2);
        } else {
            lock->lease_until = lock->op_sent + lock->ttl_ms;
            if (lock->auto_extend)
                schedule_renewal(lock);
        }
        if (lock->sfn) {
            lock->in_section = 1;
            lock->sfn(lock, lock->sdata);
        } else {
            lock->acb(lock, BL_OK, lock->adata);
        }
        return;
    }
    lock->state = LS_DEAD;
    if (lock->sfn)
        lock->sdone(status, 0, lock->sdata);
    else
        lock->acb(lock, status, lock->adata);
    maybe_free(lock);
}

static void fire_release(bl_lock *lock, int status)
{
    bl_manager *m = lock->m;
    switch (status) {
    case BL_OK: lock->transfer_to ? m->stats.transfers++ : m->stats.releases++; break;
    case BL_ENOTHELD: m->stats.not_held++; break;
    case BL_ECANCELED: break;
    default: m->stats.release_errors++; break;
    }
    if (status != BL_ECANCELED)
        bl_hist_add(&m->release_hist, (double)(bl_now_us() - lock->started_us) / 1000.0);
    lock->state = LS_DEAD;
    if (lock->in_section) {
        lock->in_section = 0;
        lock->sdone(status, lock->section_status, lock->sdata);
    } else if (lock->rcb) {
        lock->rcb(lock, status, lock->rdata);
    }
    maybe_free(lock);
}

void bl_lock_end_hold(bl_lock *lock)
{
    bl_manager *m = lock->m;
    m->stats.held--;
    bl_hist_add_to(&m->hold_hist, bl_hold_bounds_ms, (double)(bl_mgr_now(m) - lock->held_since));
    lock->held_since = 0;
}

uint64_t bl_lock_held_ms(const bl_lock *lock)
{
    if (!lock || lock->state != LS_HELD)
        return 0;
    uint64_t now = bl_mgr_now(lock->m);
    return now > lock->held_since ? now - lock->held_since : 0;
}

size_t bl_manager_longest_held(const bl_manager *m, bl_lock **out, size_t n)
{
    size_t k = 0;
    if (!m || !out || n == 0)
        return 0;
    /* Keep out[0..k) sorted, oldest grant first: an insertion per held
     * lock, n is small (a top-N). */
    for (bl_lock *l = m->locks; l; l = l->next) {
        if (l->state != LS_HELD)
            continue;
        size_t i = k < n ? k++ : n;
        while (i > 0 && out[i - 1]->held_since > l->held_since) {
            if (i < n)
                out[i] = out[i - 1];
            i--;
        }
        if (i < n)
            out[i] = l;
    }
    return k;
}

static void lose(bl_lock *lock)
{
    if (lock->lost)
        return;
    lock->lost = 1;
    lock->m->stats.lost++;
    bl_log(lock->m, BL_LOG_WARN, "lock %s was lost while held", lock->keys->k[BL_KEY_LOCK]);
    if (lock->on_lost)
        lock->on_lost(lock, BL_ELOST, lock->on_lost_data);
}

/* ---- the attempt loop --------------------------------------------------- */

/* Bound the wait for an answer: a paused server must not hold a request
 * past its deadline. The attempt may still succeed on the server: then the
 * late grant is given back (abandoned). */
static void arm_answer_deadline(bl_lock *lock)
{
    bl_manager *m = lock->m;
    uint64_t now = bl_mgr_now(m), limit = m->cfg.command_timeout_ms;
    if (!lock->try_once && lock->state == LS_ACQUIRING) {
        limit = lock->deadline > now + 50 ? lock->deadline - now : 50;
        /* A grant near the deadline still needs its WAIT to count, and
         * that WAIT may queue behind the one on the wire. */
        if (m->wait_on)
            limit += 2 * m->cfg.replica_timeout_ms + 50;
    }
    bl_lt_start(lock, limit);
}

static void attempt(bl_lock *lock)
{
    bl_manager *m = lock->m;
    lock->state = LS_ACQUIRING;
    lock->wake_pending = 0; /* this attempt sees every release before it */
    clear_errmsg(lock);
    m->stats.attempts++;
    int rc = start_op(lock, BL_OP_ACQUIRE);
    if (rc == 0)
        arm_answer_deadline(lock);
    if (rc < 0) {
        m->stats.errors_attempt++;
        bl_mgr_count_error(m, rc);
        if (!has_errmsg(lock))
            set_errmsg(lock, "not connected to Redis");
        /* A request already waiting whose retry finds the connection down
         * (dropped, being re-made): nothing reached the server, so keep
         * waiting; the deadline still ends it, then with BL_ECONN. A first
         * attempt still fails at once: a Redis that is down fails closed. */
        uint64_t now = bl_mgr_now(m);
        if (rc == BL_ECONN && !lock->try_once && lock->step > 0 && now < lock->deadline) {
            lock->state = LS_WAITING;
            m->stats.waiting++;
            bl_lt_start(lock, bl_backoff_next(&m->backoff, &lock->step,
                                                             bl_rand_next(&m->rng), now,
                                                             lock->deadline));
            return;
        }
        end_later(lock, BL_OP_ACQUIRE, rc);
    }
}

/* The attempt found the lock taken (BL_EBUSY), or granted but not
 * acknowledged by enough replicas (BL_ENOREPL, already given back): try
 * again after a pause, or end with that status (a busy one at the deadline
 * with BL_ETIMEDOUT). */
static void wait_or_give_up(bl_lock *lock, int why)
{
    bl_manager *m = lock->m;
    if (lock->try_once) {
        fire_acquire(lock, why);
        return;
    }
    uint64_t now = bl_mgr_now(m);
    if (now >= lock->deadline) {
        fire_acquire(lock, why == BL_EBUSY ? BL_ETIMEDOUT : why);
        return;
    }
    int queues = m->cfg.wake_on_release && !lock->nkeys;
    if (!lock->wq && queues)
        bl_wq_join(lock);
    lock->queued = queues; /* the busy attempt queued us */
    uint64_t pause =
        bl_backoff_next(&m->backoff, &lock->step, bl_rand_next(&m->rng), now, lock->deadline);
    /* A release (maybe reserved for us) came while the attempt was out:
     * the attempt may have run before it, so go again now, not after a
     * full backoff while a reservation for us runs out. */
    if (lock->wake_pending)
        pause = lock->wake_pending == 2 ? 0 : bl_rand_next(&m->rng) % 4;
    lock->wake_pending = 0;
    lock->state = LS_WAITING;
    m->stats.waiting++;
    bl_lt_start(lock, pause);
}

static void start_release_op(bl_lock *lock, enum bl_op_kind kind)
{
    bl_manager *m = lock->m;
    int rc = start_op(lock, kind);
    if (rc == 0)
        arm_answer_deadline(lock);
    if (rc < 0) {
        bl_mgr_count_error(m, rc);
        if (!has_errmsg(lock))
            set_errmsg(lock, "not connected to Redis");
        end_later(lock, BL_OP_RELEASE, rc);
    }
}

/* The lease renewal answered. */
static void extend_done(bl_lock *lock, const bl_op_result *r)
{
    bl_manager *m = lock->m;
    if (r->status == BL_OK)
        m->stats.extends++;
    if (lock->release_after != BL_OP_NONE) { /* bl_release came meanwhile */
        enum bl_op_kind k = lock->release_after;
        lock->release_after = BL_OP_NONE;
        start_release_op(lock, k);
        return;
    }
    if (lock->state != LS_HELD || lock->lost)
        return;
    bl_lt_stop(lock);
    uint64_t now = bl_mgr_now(m);
    if (r->status == BL_OK) {
        lock->lease_until = lock->op_sent + lock->ttl_ms; /* counted from when we asked */
        if (!lock->auto_extend) {
            /* The takeover of a direct hand-off: the lease is the
             * request's TTL now, and nothing renews it. */
        } else if (lock->reverify) { /* a failover came while this renewal was out */
            lock->reverify = 0;
            bl_lt_start(lock, 0);
        } else {
            schedule_renewal(lock);
        }
    } else if (r->status == BL_ENOTHELD || now >= lock->lease_until) {
        lose(lock);
    } else {
        /* Transient failure: try again soon, while the lease still runs. */
        uint64_t left = lock->lease_until - now;
        uint64_t again = lock->ttl_ms / 10 < 10 ? 10 : lock->ttl_ms / 10;
        bl_lt_start(lock, again < left ? again : left);
    }
}

static void op_done(bl_op *op, const bl_op_result *r)
{
    bl_lock *lock = (bl_lock *)((char *)op - offsetof(bl_lock, op));
    bl_manager *m = lock->m;
    enum bl_op_kind kind = lock->op.kind;
    lock->op.kind = BL_OP_NONE;
    if (!lock->abandoned && (lock->state == LS_ACQUIRING || lock->state == LS_RELEASING))
        bl_lt_stop(lock); /* the answer came in time */
    int err = r->status == BL_ECONN || r->status == BL_EREDIS;
    if (err)
        bl_mgr_count_error(m, r->status);
    if (err || r->status == BL_ENOMEM)
        set_errmsg(lock, r->errmsg ? r->errmsg : "out of memory");
    if (kind == BL_OP_ACQUIRE) {
        if (r->status == BL_EBUSY)
            m->stats.conflicts++;
        else if (err || r->status == BL_ENOREPL)
            m->stats.errors_attempt++;
    }
    if (r->status == BL_ENOREPL)
        set_errmsg(lock, r->errmsg);
    if (r->handed_off)
        m->stats.handoffs++;

    if (lock->abandoned) {
        /* Nobody waits for this answer. A late grant, or a lease we were
         * renewing, is given back at once so it does not sit until its TTL. */
        if (kind == BL_OP_ACQUIRE && r->status == BL_EDONE)
            m->stats.abandoned++; /* a late answer too: keeps attempts adding up */
        if ((kind == BL_OP_ACQUIRE && r->status == BL_OK) || kind == BL_OP_EXTEND) {
            if (kind == BL_OP_ACQUIRE)
                m->stats.abandoned++;
            if (start_op(lock, BL_OP_RELEASE) == 0)
                return;
        }
        /* A busy answer queued us on the server: leave, or the next release
         * reserves the lock for a waiter that has gone. */
        if (kind == BL_OP_ACQUIRE && r->status == BL_EBUSY && op->queue_ttl_ms > 0 &&
            !others_wait(lock))
            leave_server_queue(lock);
        maybe_free(lock);
        return;
    }

    switch (kind) {
    case BL_OP_ACQUIRE:
        if (r->status == BL_OK) /* fencing_tokens 0: a single grant's is 0 (bidlock.h) */
            lock->token = m->cfg.fencing_tokens || lock->nkeys ? r->token : 0;
        if (r->status == BL_EDONE)
            lock->done_index = lock->nkeys ? r->index : 0;
        if (r->status == BL_EBUSY && r->ours && !op->reclaim && may_reclaim(lock)) {
            m->stats.reclaims++;
            bl_log(m, BL_LOG_INFO, "lock %s is held under our id by no request: reclaiming",
                   lock->keys->k[BL_KEY_LOCK]);
            lock->reclaim = 1;
            /* The busy answer put us in the server's queue (unless try
             * once): the reclaiming attempt must take that entry out. */
            if (op->queue_ttl_ms > 0)
                lock->queued = 1;
            attempt(lock);
        } else if (r->status == BL_EBUSY || r->status == BL_ENOREPL)
            wait_or_give_up(lock, r->status);
        else if (r->status == BL_ECONN && !lock->try_once && lock->step > 0)
            /* The connection went while this retry was out (a failover,
             * a kill): keep waiting to the deadline, as when a retry finds
             * it down. A grant that was lost with it is reclaimed. */
            wait_or_give_up(lock, BL_ECONN);
        else
            fire_acquire(lock, r->status);
        break;
    case BL_OP_EXTEND:
        extend_done(lock, r);
        break;
    default:
        fire_release(lock, r->status);
        break;
    }
}

void bl_lock_timer_cb(void *data)
{
    bl_lock *lock = data;
    bl_manager *m = lock->m;
    switch (lock->state) {
    case LS_WAITING:
        m->stats.waiting--;
        attempt(lock);
        break;
    case LS_ACQUIRING: /* no answer in time: see arm_answer_deadline */
        if (lock->op.kind != BL_OP_ACQUIRE)
            break;
        lock->abandoned = 1;
        set_errmsg(lock, "Redis did not answer in time");
        if (lock->try_once) {
            bl_mgr_count_error(m, BL_ECONN);
        }
        fire_acquire(lock, lock->try_once ? BL_ECONN : BL_ETIMEDOUT);
        break;
    case LS_RELEASING:
        if (lock->op.kind == BL_OP_NONE)
            break;
        lock->abandoned = 1;
        bl_mgr_count_error(m, BL_ECONN);
        set_errmsg(lock, "Redis did not answer the release in time; the lock ends with its TTL");
        fire_release(lock, BL_ECONN);
        break;
    case LS_ENDING:
        if (lock->pending_kind == BL_OP_ACQUIRE)
            fire_acquire(lock, lock->pending_status);
        else
            fire_release(lock, lock->pending_status);
        break;
    case LS_HELD: /* lease renewal */
        if (lock->lost)
            break;
        if (lock->op.kind != BL_OP_NONE) { /* renewal unanswered */
            uint64_t now = bl_mgr_now(m);
            if (now >= lock->lease_until)
                lose(lock);
            else
                bl_lt_start(lock, lock->lease_until - now);
            break;
        }
        renew_enqueue(lock);
        break;
    default:
        break;
    }
}

void bl_lock_reverify(bl_lock *lock)
{
    if (lock->state != LS_HELD || !lock->auto_extend || lock->lost)
        return;
    bl_manager *m = lock->m;
    m->stats.reverified++;
    if (lock->op.kind != BL_OP_NONE) {
        lock->reverify = 1; /* the renewal out now went to the old master */
    } else if (lock->renew_queued) { /* due already: send the queue now */
        m->renew_armed = 1;
        m->renew_flush_at = bl_mgr_now(m);
        m->loop.timer_start(m->renew_timer, 0);
    } else {
        lock->renew_window = 0;
        bl_lt_start(lock, 0);
    }
}

/* From bl_wq_granted: a release made our holder id the holder (direct
 * hand-off) and this request waited longest here. It holds the lock now:
 * the takeover - an extension to its own TTL - goes out first, so that a
 * release from inside the callback waits for it (release_after), then the
 * callback runs. With WAIT on a grant must be acknowledged by replicas
 * before it counts, so the request takes it by reclaiming instead (an
 * attempt: SET with its TTL, then WAIT). 0 if it could not: the connection
 * is down (the lease then ends by itself), or the request takes no
 * hand-offs (try-once, a group). */
int bl_lock_take_grant(bl_lock *lock, uint64_t token)
{
    bl_manager *m = lock->m;
    if (lock->state != LS_WAITING || lock->try_once || lock->nkeys)
        return 0;
    m->stats.wakeups++;
    if (m->wait_on) {
        bl_lt_stop(lock);
        m->stats.waiting--;
        lock->reclaim = 1;
        attempt(lock);
        return 1;
    }
    lock->op_sent = bl_mgr_now(m);
    if (start_op(lock, BL_OP_EXTEND) != 0)
        return 0;
    bl_lt_stop(lock);
    m->stats.waiting--;
    m->stats.direct_handoffs++;
    lock->token = m->cfg.fencing_tokens ? token : 0;
    /* Another request of ours on this key shared our place in the queue,
     * which the release took: it goes again now, to queue behind us. */
    bl_wq *w = lock->wq;
    for (bl_lock *l = w ? w->head : NULL; l; l = l->wnext)
        if (l != lock && l->state == LS_WAITING) {
            bl_lock_wake(l, 0);
            break;
        }
    fire_acquire(lock, BL_OK);
    return 1;
}

/* Called from bl_wq_wake: a release on our key. */
void bl_lock_wake(bl_lock *lock, int directed)
{
    bl_manager *m = lock->m;
    if (lock->state != LS_WAITING && lock->state != LS_ACQUIRING)
        return;
    m->stats.wakeups++;
    if (lock->state == LS_ACQUIRING) {
        /* An attempt is out. If it ran before the release and comes back
         * busy, wait_or_give_up goes again at once; if it got the lock,
         * the wake-up is spent. */
        if (directed || !lock->wake_pending)
            lock->wake_pending = directed ? 2 : 1;
        return;
    }
    if (directed) {
        /* The lock is reserved for us: go now. */
        bl_lt_stop(lock);
        m->stats.waiting--;
        attempt(lock);
    } else {
        /* Everyone was woken: spread the retries over a few ms. */
        bl_lt_start(lock, bl_rand_next(&m->rng) % 4);
    }
}

/* Close: end or abandon this request. */
void bl_lock_close_one(bl_lock *lock)
{
    bl_manager *m = lock->m;
    switch (lock->state) {
    case LS_WAITING:
    case LS_ACQUIRING:
        bl_cancel(lock);
        break;
    case LS_HELD:
        /* Best effort: give the lock back now rather than at its TTL. */
        bl_lock_end_hold(lock);
        lock->abandoned = 1;
        renew_unqueue(lock);
        bl_lt_stop(lock);
        if (lock->op.kind == BL_OP_NONE && start_op(lock, BL_OP_RELEASE) != 0)
            m->stats.release_errors++;
        if (lock->in_section)
            end_later(lock, BL_OP_RELEASE, BL_ECANCELED);
        else
            lock->state = LS_DEAD;
        break;
    default: /* RELEASING, ENDING: their callback still comes; DEAD: nothing */
        break;
    }
}

/* The backend is gone: a due completion runs now, before the close callback. */
void bl_lock_flush_ending(bl_lock *lock)
{
    if (lock->state != LS_ENDING)
        return;
    bl_lt_stop(lock);
    bl_lock_timer_cb(lock);
}

/* ---- public: requests ---------------------------------------------------- */

void bl_acquire_opts_init(bl_acquire_opts *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->wait_ms = BL_WAIT_DEFAULT;
}

/* The postings of a group: each valid, none twice, 1..BL_GROUP_MAX. */
static int check_group(bl_manager *m, const bl_posting *p, size_t n)
{
    char why[BL_ERRMSG_MAX], msg[BL_ERRMSG_MAX + 32];
    if (!p || n == 0)
        return bl_mgr_fail(m, BL_EINVAL, "a group needs at least one posting");
    if (n > BL_GROUP_MAX)
        return bl_mgr_fail(m, BL_EINVAL, "a group has at most 32 postings");
    for (size_t i = 0; i < n; i++) {
        if (bl_validate_id(p[i].marketplace, 1, why, sizeof why) ||
            bl_validate_id(p[i].posting, 0, why, sizeof why)) {
            snprintf(msg, sizeof msg, "posting %zu: %s", i, why);
            return bl_mgr_fail(m, BL_EINVAL, msg);
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(p[i].marketplace, p[j].marketplace) == 0 &&
                strcmp(p[i].posting, p[j].posting) == 0) {
                snprintf(msg, sizeof msg, "postings %zu and %zu are the same", j, i);
                return bl_mgr_fail(m, BL_EINVAL, msg);
            }
    }
    return 0;
}

/* group: the request is a bl_acquire_many of p[0..n) (n == 1 for a single
 * posting otherwise). */
static int start_request(bl_manager *m, const bl_posting *p, size_t n, int group,
                         const bl_acquire_opts *opts, bl_lock **out)
{
    if (!m)
        return BL_EINVAL;
    if (m->closing)
        return bl_mgr_fail(m, BL_ECLOSED, "the manager is closing");
    char why[BL_ERRMSG_MAX];
    if (group) {
        int rc = check_group(m, p, n);
        if (rc)
            return rc;
    } else if (bl_validate_id(p->marketplace, 1, why, sizeof why) ||
               bl_validate_id(p->posting, 0, why, sizeof why)) {
        return bl_mgr_fail(m, BL_EINVAL, why);
    }
    uint64_t ttl = m->cfg.default_ttl_ms, wait = m->cfg.default_wait_ms;
    if (opts) {
        if (opts->ttl_ms < 0 || (uint64_t)opts->ttl_ms > BL_MAX_MS)
            return bl_mgr_fail(m, BL_EINVAL, "ttl_ms must be 1 ms .. 30 days (0 = default)");
        if (opts->ttl_ms > 0)
            ttl = (uint64_t)opts->ttl_ms;
        if (opts->wait_ms != BL_WAIT_DEFAULT) {
            if (opts->wait_ms < 0 || (uint64_t)opts->wait_ms > BL_MAX_MS)
                return bl_mgr_fail(m, BL_EINVAL,
                                   "wait_ms must be 0 .. 30 days (or BL_WAIT_DEFAULT)");
            wait = (uint64_t)opts->wait_ms;
        }
        if (opts->auto_extend && ttl < 3)
            return bl_mgr_fail(m, BL_EINVAL, "auto_extend needs ttl_ms >= 3");
    }
    /* One block: the request, and for a group its names, tokens and the
     * names' bytes. A single posting's names are its key's, shared with
     * every other request of this manager on that key (waitq.c). */
    size_t plen = strlen(m->prefix), bytes = 0, head = sizeof(bl_lock);
    if (group) {
        for (size_t i = 0; i < n; i++)
            bytes += bl_keys_size(plen, strlen(p[i].marketplace), strlen(p[i].posting));
        head += n * (sizeof(bl_keys) + sizeof(uint64_t));
    }
    bl_lock *lock = calloc(1, head + bytes);
    if (!lock)
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    if (group) {
        char *names = (char *)lock + head;
        lock->nkeys = n;
        lock->gkeys = (bl_keys *)(lock + 1);
        lock->gtokens = (uint64_t *)(lock->gkeys + n);
        for (size_t i = 0; i < n; i++) {
            size_t mlen = strlen(p[i].marketplace), xlen = strlen(p[i].posting);
            bl_keys_build(&lock->gkeys[i], names, m->prefix, plen, p[i].marketplace, mlen,
                          p[i].posting, xlen);
            names += bl_keys_size(plen, mlen, xlen);
        }
        lock->keys = &lock->gkeys[0]; /* the first names the group in logs */
    } else if (!(lock->kq = bl_wq_ref(m, p->marketplace, p->posting))) {
        free(lock);
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    } else {
        lock->keys = &lock->kq->names;
    }
    lock->done_index = -1;
    lock->m = m;
    if (bl_lt_reserve(m) != 0) {
        bl_wq_unref(m, lock->kq);
        free(lock);
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    }
    lock->ttl_ms = ttl;
    lock->try_once = wait == 0;
    lock->started_us = bl_now_us();
    lock->deadline = bl_mgr_now(m) + wait;
    if (opts) {
        lock->auto_extend = opts->auto_extend != 0;
        lock->on_lost = opts->on_lost;
        lock->on_lost_data = opts->on_lost_data;
    }
    lock->next = m->locks;
    if (m->locks)
        m->locks->prev = lock;
    m->locks = lock;
    m->errmsg[0] = '\0';
    *out = lock;
    return BL_OK;
}

static int acquire_as(bl_manager *m, const bl_posting *p, size_t n, int group,
                      const bl_acquire_opts *opts, bl_acquire_cb cb, void *data, bl_lock **lockp)
{
    if (m && !cb)
        return bl_mgr_fail(m, BL_EINVAL, "callback is NULL");
    bl_lock *lock;
    int rc = start_request(m, p, n, group, opts, &lock);
    if (rc)
        return rc;
    lock->acb = cb;
    lock->adata = data;
    m->stats.requests++;
    m->stats.groups += group;
    if (lockp)
        *lockp = lock;
    attempt(lock);
    return BL_OK;
}

int bl_acquire(bl_manager *m, const char *marketplace, const char *posting,
               const bl_acquire_opts *opts, bl_acquire_cb cb, void *data, bl_lock **lockp)
{
    bl_posting p = {marketplace, posting};
    return acquire_as(m, &p, 1, 0, opts, cb, data, lockp);
}

int bl_acquire_many(bl_manager *m, const bl_posting *postings, size_t n,
                    const bl_acquire_opts *opts, bl_acquire_cb cb, void *data, bl_lock **lockp)
{
    return acquire_as(m, postings, n, 1, opts, cb, data, lockp);
}

int bl_with_lock(bl_manager *m, const char *marketplace, const char *posting,
                 const bl_acquire_opts *opts, bl_section_fn fn, bl_section_done_cb done,
                 void *data)
{
    if (m && (!fn || !done))
        return bl_mgr_fail(m, BL_EINVAL, "section or done callback is NULL");
    bl_lock *lock;
    bl_posting p = {marketplace, posting};
    int rc = start_request(m, &p, 1, 0, opts, &lock);
    if (rc)
        return rc;
    lock->sfn = fn;
    lock->sdone = done;
    lock->sdata = data;
    m->stats.requests++;
    attempt(lock);
    return BL_OK;
}

static int start_release(bl_lock *lock, enum bl_op_kind kind)
{
    lock->state = LS_RELEASING;
    bl_lock_end_hold(lock);
    clear_errmsg(lock);
    lock->started_us = bl_now_us();
    bl_lt_stop(lock); /* lease renewal */
    renew_unqueue(lock);
    if (lock->op.kind == BL_OP_EXTEND) {
        lock->release_after = kind; /* one operation at a time */
        arm_answer_deadline(lock);  /* ...and not forever behind a hung renewal */
        return BL_OK;
    }
    start_release_op(lock, kind);
    return BL_OK;
}

static int check_releasable(bl_lock *lock)
{
    if (!lock)
        return BL_EINVAL;
    bl_manager *m = lock->m;
    if (m->closing)
        return bl_mgr_fail(m, BL_ECLOSED, "the manager is closing; it releases held locks itself");
    if (lock->state != LS_HELD)
        return bl_mgr_fail(m, BL_EINVAL,
                           "the lock is not held (released twice, or still acquiring)");
    return BL_OK;
}

static int release_as(bl_lock *lock, enum bl_op_kind kind, bl_release_cb cb, void *data)
{
    int rc = check_releasable(lock);
    if (rc)
        return rc;
    if (lock->in_section)
        return bl_mgr_fail(lock->m, BL_EINVAL, "a section's lock is released by bl_section_end");
    lock->rcb = cb;
    lock->rdata = data;
    return start_release(lock, kind);
}

int bl_release(bl_lock *lock, bl_release_cb cb, void *data)
{
    return release_as(lock, BL_OP_RELEASE, cb, data);
}

int bl_release_done(bl_lock *lock, bl_release_cb cb, void *data)
{
    if (lock && !lock->m->cfg.done_markers && check_releasable(lock) == BL_OK)
        return bl_mgr_fail(lock->m, BL_EINVAL,
                           "done markers are off for this manager (bl_config.done_markers)");
    return release_as(lock, BL_OP_RELEASE_DONE, cb, data);
}

int bl_transfer(bl_lock *lock, const char *holder, int64_t lease_ms, bl_release_cb cb,
                void *data)
{
    int rc = check_releasable(lock);
    if (rc)
        return rc;
    bl_manager *m = lock->m;
    if (lock->in_section)
        return bl_mgr_fail(m, BL_EINVAL, "a section's lock is released by bl_section_end");
    if (lock->nkeys)
        return bl_mgr_fail(m, BL_EINVAL, "a group (bl_acquire_many) cannot be transferred");
    char why[BL_ERRMSG_MAX];
    if (!holder || bl_validate_holder(holder, why, sizeof why))
        return bl_mgr_fail(m, BL_EINVAL, holder ? why : "holder is NULL");
    if (strcmp(holder, bl_manager_holder(m)) == 0)
        return bl_mgr_fail(m, BL_EINVAL, "the lock is already this manager's: nothing to transfer");
    if (lease_ms < 0 || (uint64_t)lease_ms > BL_MAX_MS)
        return bl_mgr_fail(m, BL_EINVAL, "lease_ms must be 1 ms .. 30 days (0 = the default)");
    char *to = strdup(holder);
    if (!to)
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    lock->transfer_to = to;
    lock->transfer_ms = lease_ms ? (uint64_t)lease_ms : BL_TRANSFER_DEFAULT_MS;
    lock->rcb = cb;
    lock->rdata = data;
    return start_release(lock, BL_OP_TRANSFER);
}

int bl_section_end(bl_lock *lock, int section_status)
{
    if (!lock)
        return BL_EINVAL;
    if (!lock->in_section || lock->state != LS_HELD)
        return bl_mgr_fail(lock->m, BL_EINVAL, "not a running section (ended twice?)");
    lock->section_status = section_status;
    return start_release(lock, BL_OP_RELEASE);
}

int bl_cancel(bl_lock *lock)
{
    if (!lock)
        return BL_EINVAL;
    switch (lock->state) {
    case LS_WAITING:
        lock->m->stats.waiting--;
        bl_lt_stop(lock);
        end_later(lock, BL_OP_ACQUIRE, BL_ECANCELED);
        return BL_OK;
    case LS_ACQUIRING:
        lock->abandoned = 1;
        end_later(lock, BL_OP_ACQUIRE, BL_ECANCELED);
        return BL_OK;
    default:
        return bl_mgr_fail(lock->m, BL_EINVAL, "the acquire has already ended");
    }
}

const char *bl_lock_key(const bl_lock *lock) { return lock->keys->k[BL_KEY_LOCK]; }
const char *bl_lock_errmsg(const bl_lock *lock) { return lock->errmsg ? lock->errmsg : ""; }
bl_manager *bl_lock_manager(const bl_lock *lock) { return lock->m; }
uint64_t bl_lock_token(const bl_lock *lock) { return lock->token; }
size_t bl_lock_postings(const bl_lock *lock) { return lock->nkeys ? lock->nkeys : 1; }

const char *bl_lock_key_at(const bl_lock *lock, size_t i)
{
    if (i >= bl_lock_postings(lock))
        return NULL;
    return lock->nkeys ? lock->gkeys[i].k[BL_KEY_LOCK] : lock->keys->k[BL_KEY_LOCK];
}

uint64_t bl_lock_token_at(const bl_lock *lock, size_t i)
{
    if (i >= bl_lock_postings(lock) || !lock->token)
        return 0;
    return lock->nkeys ? lock->gtokens[i] : lock->token;
}

int bl_lock_done_index(const bl_lock *lock) { return lock->done_index; }
