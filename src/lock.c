/* lock.c - the manager handle and the lock request state machine.
 *
 *  bl_acquire -> ACQUIRING --granted--> HELD --bl_release--> RELEASING --> DEAD
 *                  |    ^                 |
 *           taken  v    | timer           | (close: best-effort release)
 *               WAITING-+                 v
 *                  +-- deadline/cancel --> ENDING --(timer 0)--> callback --> DEAD
 *
 * Only backend completions (bl_lock_op_done) and the request's own timer
 * move a request. The timer is reused: backoff pauses, and deferred
 * completions (a callback must never run inside the call that started it).
 * A request has at most one backend operation in flight; the handle lives
 * until the user is done with it (DEAD) and that operation has answered.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum lock_state { LS_ACQUIRING, LS_WAITING, LS_HELD, LS_RELEASING, LS_ENDING, LS_DEAD };

struct bl_lock {
    bl_manager *m;
    bl_lock *prev, *next;
    enum lock_state state;
    enum bl_op_kind inflight;
    int abandoned;     /* user no longer waits for this grant/lock: give it back */
    char *key;
    size_t keylen;
    uint64_t ttl_ms;
    uint64_t deadline; /* absolute, loop clock */
    int try_once;
    double step;       /* backoff state */
    bl_timer *timer;
    int pending_status;
    enum bl_op_kind pending_kind; /* which callback ENDING fires */
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

struct bl_manager {
    bl_loop loop;
    bl_config cfg; /* string fields point at the copies below */
    char *host, *unix_path, *prefix;
    char holder[BL_HOLDER_MAX];
    char errmsg[BL_ERRMSG_MAX];
    bl_backend *be;
    bl_lock *locks;
    bl_stats stats;
    bl_backoff backoff;
    uint64_t rng;
    bl_timer *kick_timer;  /* deferred shutdown / finish of close */
    bl_timer *close_timer; /* close deadline */
    enum mgr_kick kick;
    int closing, shutdown_started, backend_closed;
    bl_close_cb close_cb;
    void *close_data;
};

/* ---- small helpers ------------------------------------------------------ */

static uint64_t now_ms(const bl_manager *m)
{
    return m->loop.now_ms(m->loop.impl);
}

static void set_errmsg(char *dst, const char *msg)
{
    snprintf(dst, BL_ERRMSG_MAX, "%s", msg ? msg : "");
}

static int mgr_fail(bl_manager *m, int status, const char *msg)
{
    set_errmsg(m->errmsg, msg);
    return status;
}

static void check_close(bl_manager *m);

static void lock_free(bl_lock *lock)
{
    bl_manager *m = lock->m;
    if (lock->prev)
        lock->prev->next = lock->next;
    else
        m->locks = lock->next;
    if (lock->next)
        lock->next->prev = lock->prev;
    m->loop.timer_free(lock->timer);
    free(lock->key);
    free(lock);
}

/* A DEAD lock goes once its last operation has answered. While the manager
 * closes, handles stay valid until the close callback has returned. */
static void maybe_free(bl_lock *lock)
{
    bl_manager *m = lock->m;
    if (lock->state != LS_DEAD || lock->inflight != BL_OP_NONE)
        return;
    if (m->closing) {
        check_close(m);
        return;
    }
    lock_free(lock);
}

static int start_op(bl_lock *lock, enum bl_op_kind kind)
{
    int rc = lock->m->be->vt->start(lock->m->be, lock, kind);
    if (rc == 0)
        lock->inflight = kind;
    return rc;
}

static void end_later(bl_lock *lock, enum bl_op_kind kind, int status)
{
    lock->state = LS_ENDING;
    lock->pending_kind = kind;
    lock->pending_status = status;
    lock->m->loop.timer_start(lock->timer, 0);
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
    default: m->stats.failed++; break;
    }
    if (status == BL_OK) {
        lock->state = LS_HELD;
        m->stats.held++;
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
    case BL_OK: m->stats.releases++; break;
    case BL_ENOTHELD: m->stats.not_held++; break;
    case BL_ECANCELED: break;
    default: m->stats.release_errors++; break;
    }
    lock->state = LS_DEAD;
    if (lock->in_section) {
        lock->in_section = 0;
        lock->sdone(status, lock->section_status, lock->sdata);
    } else if (lock->rcb) {
        lock->rcb(lock, status, lock->rdata);
    }
    maybe_free(lock);
}

/* ---- the attempt loop --------------------------------------------------- */

static void attempt(bl_lock *lock)
{
    bl_manager *m = lock->m;
    lock->state = LS_ACQUIRING;
    lock->errmsg[0] = '\0';
    m->stats.attempts++;
    int rc = start_op(lock, BL_OP_ACQUIRE);
    if (rc < 0) {
        m->stats.errors_attempt++;
        m->stats.errors++;
        if (!lock->errmsg[0])
            set_errmsg(lock->errmsg, "not connected to Redis");
        end_later(lock, BL_OP_ACQUIRE, rc);
    }
}

static void wait_or_give_up(bl_lock *lock)
{
    bl_manager *m = lock->m;
    if (lock->try_once) {
        fire_acquire(lock, BL_EBUSY);
        return;
    }
    uint64_t now = now_ms(m);
    if (now >= lock->deadline) {
        fire_acquire(lock, BL_ETIMEDOUT);
        return;
    }
    uint64_t pause =
        bl_backoff_next(&m->backoff, &lock->step, bl_rand_next(&m->rng), now, lock->deadline);
    lock->state = LS_WAITING;
    m->stats.waiting++;
    m->loop.timer_start(lock->timer, pause);
}

void bl_lock_op_done(bl_lock *lock, const bl_op_result *r)
{
    bl_manager *m = lock->m;
    enum bl_op_kind kind = lock->inflight;
    lock->inflight = BL_OP_NONE;
    int err = r->status != BL_OK && r->status != BL_EBUSY && r->status != BL_ENOTHELD;
    if (err) {
        m->stats.errors++;
        set_errmsg(lock->errmsg, r->errmsg);
    }
    if (kind == BL_OP_ACQUIRE) {
        if (r->status == BL_EBUSY)
            m->stats.conflicts++;
        else if (err)
            m->stats.errors_attempt++;
    }

    if (lock->abandoned) {
        /* Nobody waits for this answer. A late grant is given back at once
         * so the lock does not sit until its TTL. */
        if (kind == BL_OP_ACQUIRE && r->status == BL_OK) {
            m->stats.abandoned++;
            if (start_op(lock, BL_OP_RELEASE) == 0)
                return;
        }
        maybe_free(lock);
        return;
    }

    if (kind == BL_OP_ACQUIRE) {
        if (r->status == BL_EBUSY)
            wait_or_give_up(lock);
        else
            fire_acquire(lock, r->status);
    } else {
        fire_release(lock, r->status);
    }
}

static void lock_timer_cb(void *data)
{
    bl_lock *lock = data;
    switch (lock->state) {
    case LS_WAITING:
        lock->m->stats.waiting--;
        attempt(lock);
        break;
    case LS_ENDING:
        if (lock->pending_kind == BL_OP_ACQUIRE)
            fire_acquire(lock, lock->pending_status);
        else
            fire_release(lock, lock->pending_status);
        break;
    default:
        break;
    }
}

/* ---- public: requests ---------------------------------------------------- */

void bl_acquire_opts_init(bl_acquire_opts *opts)
{
    opts->ttl_ms = 0;
    opts->wait_ms = BL_WAIT_DEFAULT;
}

static int start_request(bl_manager *m, const char *mp, const char *posting,
                         const bl_acquire_opts *opts, bl_lock **out)
{
    if (!m)
        return BL_EINVAL;
    if (m->closing)
        return mgr_fail(m, BL_ECLOSED, "the manager is closing");
    char why[BL_ERRMSG_MAX];
    if (bl_validate_id(mp, 1, why, sizeof why) || bl_validate_id(posting, 0, why, sizeof why))
        return mgr_fail(m, BL_EINVAL, why);
    uint64_t ttl = m->cfg.default_ttl_ms, wait = m->cfg.default_wait_ms;
    if (opts) {
        if (opts->ttl_ms < 0 || (uint64_t)opts->ttl_ms > BL_MAX_MS)
            return mgr_fail(m, BL_EINVAL, "ttl_ms must be 1 ms .. 30 days (0 = default)");
        if (opts->ttl_ms > 0)
            ttl = (uint64_t)opts->ttl_ms;
        if (opts->wait_ms != BL_WAIT_DEFAULT) {
            if (opts->wait_ms < 0 || (uint64_t)opts->wait_ms > BL_MAX_MS)
                return mgr_fail(m, BL_EINVAL,
                                "wait_ms must be 0 .. 30 days (or BL_WAIT_DEFAULT)");
            wait = (uint64_t)opts->wait_ms;
        }
    }
    bl_lock *lock = calloc(1, sizeof *lock);
    if (!lock)
        return mgr_fail(m, BL_ENOMEM, "out of memory");
    lock->m = m;
    lock->key = bl_make_key(m->prefix, mp, posting, &lock->keylen);
    lock->timer = m->loop.timer_new(m->loop.impl, lock_timer_cb, lock);
    if (!lock->key || !lock->timer) {
        if (lock->timer)
            m->loop.timer_free(lock->timer);
        free(lock->key);
        free(lock);
        return mgr_fail(m, BL_ENOMEM, "out of memory");
    }
    lock->ttl_ms = ttl;
    lock->try_once = wait == 0;
    lock->deadline = now_ms(m) + wait;
    lock->next = m->locks;
    if (m->locks)
        m->locks->prev = lock;
    m->locks = lock;
    m->errmsg[0] = '\0';
    *out = lock;
    return BL_OK;
}

int bl_acquire(bl_manager *m, const char *marketplace, const char *posting,
               const bl_acquire_opts *opts, bl_acquire_cb cb, void *data, bl_lock **lockp)
{
    if (m && !cb)
        return mgr_fail(m, BL_EINVAL, "callback is NULL");
    bl_lock *lock;
    int rc = start_request(m, marketplace, posting, opts, &lock);
    if (rc)
        return rc;
    lock->acb = cb;
    lock->adata = data;
    m->stats.requests++;
    attempt(lock);
    if (lockp)
        *lockp = lock;
    return BL_OK;
}

int bl_with_lock(bl_manager *m, const char *marketplace, const char *posting,
                 const bl_acquire_opts *opts, bl_section_fn fn, bl_section_done_cb done,
                 void *data)
{
    if (m && (!fn || !done))
        return mgr_fail(m, BL_EINVAL, "section or done callback is NULL");
    bl_lock *lock;
    int rc = start_request(m, marketplace, posting, opts, &lock);
    if (rc)
        return rc;
    lock->sfn = fn;
    lock->sdone = done;
    lock->sdata = data;
    m->stats.requests++;
    attempt(lock);
    return BL_OK;
}

static int start_release(bl_lock *lock)
{
    bl_manager *m = lock->m;
    lock->state = LS_RELEASING;
    m->stats.held--;
    lock->errmsg[0] = '\0';
    int rc = start_op(lock, BL_OP_RELEASE);
    if (rc < 0) {
        m->stats.errors++;
        if (!lock->errmsg[0])
            set_errmsg(lock->errmsg, "not connected to Redis");
        end_later(lock, BL_OP_RELEASE, rc);
    }
    return BL_OK;
}

int bl_release(bl_lock *lock, bl_release_cb cb, void *data)
{
    if (!lock)
        return BL_EINVAL;
    bl_manager *m = lock->m;
    if (m->closing)
        return mgr_fail(m, BL_ECLOSED, "the manager is closing; it releases held locks itself");
    if (lock->state != LS_HELD)
        return mgr_fail(m, BL_EINVAL, "the lock is not held (released twice, or still acquiring)");
    if (lock->in_section)
        return mgr_fail(m, BL_EINVAL, "a section's lock is released by bl_section_end");
    lock->rcb = cb;
    lock->rdata = data;
    return start_release(lock);
}

int bl_section_end(bl_lock *lock, int section_status)
{
    if (!lock)
        return BL_EINVAL;
    if (!lock->in_section || lock->state != LS_HELD)
        return mgr_fail(lock->m, BL_EINVAL, "not a running section (ended twice?)");
    lock->section_status = section_status;
    return start_release(lock);
}

int bl_cancel(bl_lock *lock)
{
    if (!lock)
        return BL_EINVAL;
    switch (lock->state) {
    case LS_WAITING:
        lock->m->stats.waiting--;
        lock->m->loop.timer_stop(lock->timer);
        end_later(lock, BL_OP_ACQUIRE, BL_ECANCELED);
        return BL_OK;
    case LS_ACQUIRING:
        lock->abandoned = 1;
        end_later(lock, BL_OP_ACQUIRE, BL_ECANCELED);
        return BL_OK;
    default:
        return mgr_fail(lock->m, BL_EINVAL, "the acquire has already ended");
    }
}

const char *bl_lock_key(const bl_lock *lock) { return lock->key; }
const char *bl_lock_errmsg(const bl_lock *lock) { return lock->errmsg; }
bl_manager *bl_lock_manager(const bl_lock *lock) { return lock->m; }
const char *bl_lock_key_len(const bl_lock *lock, size_t *len)
{
    *len = lock->keylen;
    return lock->key;
}
uint64_t bl_lock_ttl(const bl_lock *lock) { return lock->ttl_ms; }
enum bl_op_kind bl_lock_inflight(const bl_lock *lock) { return lock->inflight; }
char *bl_lock_errbuf(bl_lock *lock) { return lock->errmsg; }

/* ---- manager ------------------------------------------------------------- */

void bl_config_init(bl_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->host = "127.0.0.1";
    cfg->port = 6379;
    cfg->key_prefix = "bid_lock";
    cfg->connect_timeout_ms = 5000;
    cfg->default_ttl_ms = 300000;
    cfg->default_wait_ms = 10000;
    cfg->backoff_initial_ms = 50;
    cfg->backoff_max_ms = 1000;
    cfg->backoff_multiplier = 1.5;
    cfg->close_timeout_ms = 2000;
    cfg->reconnect_initial_ms = 100;
}

int bl_config_validate(const bl_config *c, char *why, size_t why_len)
{
#define BAD(msg)                                                                           \
    do {                                                                                   \
        if (why && why_len)                                                                \
            snprintf(why, why_len, "%s", msg);                                             \
        return BL_EINVAL;                                                                  \
    } while (0)
    if (!c)
        BAD("config is NULL");
    if (bl_validate_prefix(c->key_prefix, why, why_len))
        return BL_EINVAL;
    if (c->url) { /* wins over host/port/unix_path, which are then not checked */
        char msg[BL_ERRMSG_MAX];
        if (bl_url_parse(c->url, NULL, msg, sizeof msg) != BL_OK) {
            if (why && why_len)
                snprintf(why, why_len, "url: %s", msg);
            return BL_EINVAL;
        }
    } else if (c->unix_path) {
        if (!*c->unix_path || strlen(c->unix_path) >= 108)
            BAD("unix_path must be 1..107 bytes");
    } else {
        if (!c->host || !*c->host)
            BAD("host is empty");
        if (c->port < 1 || c->port > 65535)
            BAD("port must be 1..65535");
    }
    if (c->db < 0)
        BAD("db must be >= 0");
    if (c->username && !c->password)
        BAD("username needs a password (AUTH has no username-only form)");
    if (c->backend != BL_BACKEND_REDIS && c->backend != BL_BACKEND_MEMORY)
        BAD("backend must be BL_BACKEND_REDIS or BL_BACKEND_MEMORY");
    if (c->connect_timeout_ms == 0)
        BAD("connect_timeout_ms must be > 0");
    if (c->default_ttl_ms == 0 || c->default_ttl_ms > BL_MAX_MS)
        BAD("default_ttl_ms must be 1 ms .. 30 days");
    if (c->default_wait_ms > BL_MAX_MS)
        BAD("default_wait_ms must be at most 30 days");
    if (c->backoff_initial_ms == 0 || c->backoff_max_ms < c->backoff_initial_ms)
        BAD("backoff needs 0 < backoff_initial_ms <= backoff_max_ms");
    if (!(c->backoff_multiplier >= 1.0 && c->backoff_multiplier <= 16.0))
        BAD("backoff_multiplier must be 1.0 .. 16.0");
    if (c->reconnect_initial_ms == 0)
        BAD("reconnect_initial_ms must be > 0");
    return BL_OK;
#undef BAD
}

static char *dup_or_null(const char *s, int *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

static void kick_cb(void *data);
static void close_timeout_cb(void *data);

static void manager_free(bl_manager *m)
{
    while (m->locks)
        lock_free(m->locks);
    if (m->be)
        m->be->vt->free(m->be);
    if (m->kick_timer)
        m->loop.timer_free(m->kick_timer);
    if (m->close_timer)
        m->loop.timer_free(m->close_timer);
    free(m->host);
    free(m->unix_path);
    free(m->prefix);
    free(m);
}

int bl_manager_new(const bl_loop *loop, const bl_config *cfg, bl_manager **out)
{
    bl_config defaults;
    if (!cfg) {
        bl_config_init(&defaults);
        cfg = &defaults;
    }
    if (!loop || !out || !loop->attach || !loop->timer_new || !loop->timer_start ||
        !loop->timer_stop || !loop->timer_free || !loop->now_ms)
        return BL_EINVAL;
    if (bl_config_validate(cfg, NULL, 0))
        return BL_EINVAL;
    bl_manager *m = calloc(1, sizeof *m);
    if (!m)
        return BL_ENOMEM;
    m->loop = *loop;
    m->cfg = *cfg;
    int oom = 0;
    m->host = dup_or_null(cfg->host, &oom);
    m->unix_path = dup_or_null(cfg->unix_path, &oom);
    m->prefix = dup_or_null(cfg->key_prefix, &oom);
    m->cfg.host = m->host;
    m->cfg.unix_path = m->unix_path;
    m->cfg.key_prefix = m->prefix;
    m->backoff.initial_ms = cfg->backoff_initial_ms;
    m->backoff.max_ms = cfg->backoff_max_ms;
    m->backoff.multiplier = cfg->backoff_multiplier;
    m->rng = bl_random_seed();
    if (!oom)
        oom = bl_make_holder(m->holder, sizeof m->holder) != 0;
    if (!oom) {
        m->kick_timer = loop->timer_new(loop->impl, kick_cb, m);
        m->close_timer = loop->timer_new(loop->impl, close_timeout_cb, m);
        oom = !m->kick_timer || !m->close_timer;
    }
    if (oom || bl_redis_backend_new(m, &m->be) != 0) {
        manager_free(m);
        return BL_ENOMEM;
    }
    *out = m;
    return BL_OK;
}

/* Every request is DEAD with nothing in flight: the backend may close. */
static void check_close(bl_manager *m)
{
    if (!m->closing || m->shutdown_started || m->kick != KICK_NONE)
        return;
    for (bl_lock *l = m->locks; l; l = l->next)
        if (l->state != LS_DEAD || l->inflight != BL_OP_NONE)
            return;
    m->kick = KICK_SHUTDOWN; /* from the loop, not from inside a reply callback */
    m->loop.timer_start(m->kick_timer, 0);
}

void bl_manager_backend_closed(bl_manager *m)
{
    m->backend_closed = 1;
    m->loop.timer_stop(m->close_timer);
    m->kick = KICK_FINISH;
    m->loop.timer_start(m->kick_timer, 0);
}

static void kick_cb(void *data)
{
    bl_manager *m = data;
    enum mgr_kick k = m->kick;
    m->kick = KICK_NONE;
    if (k == KICK_SHUTDOWN && !m->shutdown_started) {
        m->shutdown_started = 1;
        m->be->vt->shutdown(m->be, 0);
    } else if (k == KICK_FINISH) {
        if (m->close_cb)
            m->close_cb(m, m->close_data);
        manager_free(m);
    }
}

/* Releases or the server took too long: drop the connection. Every reply
 * callback then runs with an error, which completes what is still open. */
static void close_timeout_cb(void *data)
{
    bl_manager *m = data;
    if (m->backend_closed)
        return;
    m->shutdown_started = 1;
    m->be->vt->shutdown(m->be, 1);
}

int bl_manager_close(bl_manager *m, bl_close_cb cb, void *data)
{
    if (!m)
        return BL_EINVAL;
    if (m->closing)
        return mgr_fail(m, BL_ECLOSED, "bl_manager_close was already called");
    m->closing = 1;
    m->close_cb = cb;
    m->close_data = data;
    for (bl_lock *l = m->locks; l; l = l->next) {
        switch (l->state) {
        case LS_WAITING:
        case LS_ACQUIRING:
            bl_cancel(l);
            break;
        case LS_HELD:
            /* Best effort: give the lock back now rather than at its TTL. */
            m->stats.held--;
            l->abandoned = 1;
            if (start_op(l, BL_OP_RELEASE) != 0)
                m->stats.release_errors++;
            if (l->in_section)
                end_later(l, BL_OP_RELEASE, BL_ECANCELED);
            else
                l->state = LS_DEAD;
            break;
        default: /* RELEASING, ENDING: their callback still comes; DEAD: nothing */
            break;
        }
    }
    m->loop.timer_start(m->close_timer, m->cfg.close_timeout_ms);
    check_close(m);
    return BL_OK;
}

const char *bl_manager_holder(const bl_manager *m) { return m->holder; }
const char *bl_manager_errmsg(const bl_manager *m) { return m->errmsg; }
void bl_manager_stats(const bl_manager *m, bl_stats *out) { *out = m->stats; }
const bl_loop *bl_manager_loop(const bl_manager *m) { return &m->loop; }
const bl_config *bl_manager_config(const bl_manager *m) { return &m->cfg; }
bl_stats *bl_manager_stats_mut(bl_manager *m) { return &m->stats; }
uint64_t bl_manager_rand(bl_manager *m) { return bl_rand_next(&m->rng); }

/* ---- status strings ----------------------------------------------------- */

const char *bl_strerror(int status)
{
    switch (status) {
    case BL_OK: return "success";
    case BL_ETIMEDOUT: return "lock not acquired before the deadline";
    case BL_EBUSY: return "lock is held by another holder";
    case BL_ENOTHELD: return "lock is not held by this holder (expired or taken over)";
    case BL_ECONN: return "Redis connection error";
    case BL_EREDIS: return "Redis replied with an error";
    case BL_EINVAL: return "invalid argument";
    case BL_ECANCELED: return "request cancelled";
    case BL_ENOMEM: return "out of memory";
    case BL_ECLOSED: return "manager is closing";
    default: return "unknown status";
    }
}

const char *bl_status_name(int status)
{
    switch (status) {
    case BL_OK: return "BL_OK";
    case BL_ETIMEDOUT: return "BL_ETIMEDOUT";
    case BL_EBUSY: return "BL_EBUSY";
    case BL_ENOTHELD: return "BL_ENOTHELD";
    case BL_ECONN: return "BL_ECONN";
    case BL_EREDIS: return "BL_EREDIS";
    case BL_EINVAL: return "BL_EINVAL";
    case BL_ECANCELED: return "BL_ECANCELED";
    case BL_ENOMEM: return "BL_ENOMEM";
    case BL_ECLOSED: return "BL_ECLOSED";
    default: return "BL_UNKNOWN";
    }
}
