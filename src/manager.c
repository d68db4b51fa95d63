/* manager.c - the manager handle: configuration, lifecycle and close, wait
 * queues (which requests wait on which key), wake-ups, admin operations
 * (health, inspect, cleanup), logging and metrics snapshots. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

int bl_mgr_fail(bl_manager *m, int status, const char *msg)
{
    snprintf(m->errmsg, BL_ERRMSG_MAX, "%s", msg ? msg : "");
    return status;
}

void bl_log(const bl_manager *m, int level, const char *fmt, ...)
{
    if (!m->cfg.log)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    m->cfg.log(level, line, m->cfg.log_data);
}

/* ---- configuration ----------------------------------------------------- */

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
    cfg->command_timeout_ms = 5000;
    cfg->reconnect_initial_ms = 100;
    cfg->done_ttl_ms = 7ULL * 24 * 3600 * 1000;
    cfg->handoff_ms = 250;
    cfg->wake_on_release = 1;
    cfg->min_replicas = BL_REPLICAS_DEFAULT; /* sentinel branch (issue 13) */
    cfg->replica_timeout_ms = 100;
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
    if (c->backend != BL_BACKEND_REDIS && c->backend != BL_BACKEND_MEMORY)
        BAD("backend must be BL_BACKEND_REDIS or BL_BACKEND_MEMORY");
    if (c->backend == BL_BACKEND_REDIS && c->url) {
        /* bl_manager_new parses it: refuse here what it would refuse there. */
        char msg[BL_ERRMSG_MAX];
        if (bl_url_parse(c->url, NULL, msg, sizeof msg) != BL_OK) {
            if (why && why_len)
                snprintf(why, why_len, "url: %s", msg);
            return BL_EINVAL;
        }
    } else if (c->backend == BL_BACKEND_REDIS) {
        if (c->unix_path) {
            if (!*c->unix_path || strlen(c->unix_path) >= 108)
                BAD("unix_path must be 1..107 bytes");
        } else {
            if (!c->host || !*c->host)
                BAD("host is empty");
            if (c->port < 1 || c->port > 65535)
                BAD("port must be 1..65535");
        }
    }
    if (c->db < 0)
        BAD("db must be >= 0");
    if (c->username && !c->password)
        BAD("username needs a password (AUTH has no username-only form)");
    if (c->connect_timeout_ms == 0)
        BAD("connect_timeout_ms must be > 0");
    if (c->command_timeout_ms == 0)
        BAD("command_timeout_ms must be > 0");
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
    if (c->done_ttl_ms == 0 || c->done_ttl_ms > 10 * BL_MAX_MS)
        BAD("done_ttl_ms must be 1 ms .. 300 days");
    if (c->handoff_ms == 0 || c->handoff_ms > 60000)
        BAD("handoff_ms must be 1 .. 60000");
    /* ---- sentinel branch (issue 13): Sentinel and replica settings ---- */
    {
        int redis = c->backend == BL_BACKEND_REDIS;
        int sentinel = redis && bl_url_kind(c->url) == BL_URL_SENTINEL;
        int replicas = bl_config_min_replicas(c);
        if (c->sentinel_username && !c->sentinel_password)
            BAD("sentinel_username needs a sentinel_password (AUTH has no username-only form)");
        if (redis && !sentinel && (c->sentinel_username || c->sentinel_password))
            BAD("sentinel_username/sentinel_password are set but url is not a "
                "redis-sentinel:// URL");
        if (c->min_replicas < BL_REPLICAS_DEFAULT || c->min_replicas > BL_REPLICAS_MAX)
            BAD("min_replicas must be 0 .. 64, BL_REPLICAS_AUTO or BL_REPLICAS_DEFAULT");
        if (c->replica_timeout_ms == 0 || c->replica_timeout_ms > BL_REPLICA_TIMEOUT_MAX)
            BAD("replica_timeout_ms must be 1 .. 60000 (WAIT 0 would block for ever)");
        if (redis && replicas != 0 && c->replica_timeout_ms >= c->command_timeout_ms)
            BAD("replica_timeout_ms must be below command_timeout_ms while replica "
                "acknowledgement is on (WAIT holds the connection that long)");
        if (sentinel && !BL_HAVE_SENTINEL_BACKEND)
            BAD("url: redis-sentinel:// is understood, but this version of bidlock cannot "
                "follow a Sentinel master yet");
        if (redis && replicas != 0 && !BL_HAVE_REPLICA_WAIT)
            BAD("min_replicas: replica acknowledgement (WAIT) is not in this version of "
                "bidlock yet; set 0");
    }
    /* ---- end of the sentinel branch block ---- */
    return BL_OK;
#undef BAD
}

/* ---- lifecycle ----------------------------------------------------------- */

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

static void wipe(char *s)
{
    if (s) {
        volatile char *p = s;
        while (*p)
            *p++ = 0;
    }
}

static void manager_free(bl_manager *m)
{
    while (m->locks)
        bl_lock_free(m->locks);
    if (m->be)
        m->be->vt->free(m->be);
    for (int i = 0; i < BL_WQ_BUCKETS; i++)
        while (m->wq[i])
            bl_manager_wq_drop(m, m->wq[i]);
    if (m->kick_timer)
        m->loop.timer_free(m->kick_timer);
    if (m->close_timer)
        m->loop.timer_free(m->close_timer);
    wipe(m->password);
    wipe(m->sentinel_password);
    free(m->sentinel_username);
    free(m->sentinel_password);
    free(m->url);
    free(m->host);
    free(m->unix_path);
    free(m->prefix);
    free(m->username);
    free(m->password);
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
    m->url = dup_or_null(cfg->url, &oom);
    m->host = dup_or_null(cfg->host, &oom);
    m->unix_path = dup_or_null(cfg->unix_path, &oom);
    m->prefix = dup_or_null(cfg->key_prefix, &oom);
    m->username = dup_or_null(cfg->username, &oom);
    m->password = dup_or_null(cfg->password, &oom);
    m->cfg.url = m->url;
    m->cfg.host = m->host;
    m->cfg.unix_path = m->unix_path;
    m->cfg.key_prefix = m->prefix;
    m->cfg.username = m->username;
    m->cfg.password = m->password;
    m->cfg.sentinel_username = m->sentinel_username = dup_or_null(cfg->sentinel_username, &oom);
    m->cfg.sentinel_password = m->sentinel_password = dup_or_null(cfg->sentinel_password, &oom);
    m->backoff.initial_ms = cfg->backoff_initial_ms;
    m->backoff.max_ms = cfg->backoff_max_ms;
    m->backoff.multiplier = cfg->backoff_multiplier;
    m->rng = bl_random_seed();
    if (!oom)
        oom = bl_make_holder(m->holder, sizeof m->holder) != 0;
    m->holder_len = strlen(m->holder);
    if (!oom) {
        m->kick_timer = loop->timer_new(loop->impl, kick_cb, m);
        m->close_timer = loop->timer_new(loop->impl, close_timeout_cb, m);
        oom = !m->kick_timer || !m->close_timer;
    }
    int rc = oom ? BL_ENOMEM : BL_OK;
    if (rc == BL_OK) {
        if (cfg->backend == BL_BACKEND_MEMORY) {
            rc = bl_memory_backend_new(m, &m->be);
            bl_log(m, BL_LOG_WARN,
                   "bidlock: using the in-memory backend: locks are local to this process "
                   "and exclude nothing across instances");
        } else {
            rc = bl_redis_backend_new(m, &m->be);
        }
    }
    if (rc != BL_OK) {
        manager_free(m);
        return rc;
    }
    *out = m;
    return BL_OK;
}

/* Every request is DEAD with nothing in flight: the backend may close. */
void bl_mgr_check_close(bl_manager *m)
{
    if (!m->closing || m->shutdown_started || m->kick != KICK_NONE || m->admin_inflight)
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
        /* A completion still due runs before the close callback. */
        for (bl_lock *l = m->locks; l; l = l->next)
            bl_lock_flush_ending(l);
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
    bl_log(m, BL_LOG_WARN, "bidlock: close timed out; dropping the connection");
    m->shutdown_started = 1;
    m->be->vt->shutdown(m->be, 1);
}

int bl_manager_close(bl_manager *m, bl_close_cb cb, void *data)
{
    if (!m)
        return BL_EINVAL;
    if (m->closing)
        return bl_mgr_fail(m, BL_ECLOSED, "bl_manager_close was already called");
    m->closing = 1;
    m->close_cb = cb;
    m->close_data = data;
    for (bl_lock *l = m->locks; l; l = l->next)
        bl_lock_close_one(l);
    m->loop.timer_start(m->close_timer, m->cfg.close_timeout_ms);
    bl_mgr_check_close(m);
    return BL_OK;
}

const char *bl_manager_holder(const bl_manager *m) { return m->holder; }
const char *bl_manager_prefix(const bl_manager *m) { return m->prefix; }
const char *bl_manager_errmsg(const bl_manager *m) { return m->errmsg; }
void bl_manager_stats(const bl_manager *m, bl_stats *out) { *out = m->stats; }
const bl_loop *bl_manager_loop(const bl_manager *m) { return &m->loop; }
const bl_config *bl_manager_config(const bl_manager *m) { return &m->cfg; }
bl_stats *bl_manager_stats_mut(bl_manager *m) { return &m->stats; }
uint64_t bl_manager_rand(bl_manager *m) { return bl_rand_next(&m->rng); }
int bl_manager_conn_state(const bl_manager *m) { return m->be->vt->conn_state(m->be); }

/* ---- wait queues ------------------------------------------------------- */

static unsigned hash_key(const char *k, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h % BL_WQ_BUCKETS;
}

bl_wq *bl_manager_wq_find(bl_manager *m, const char *key, size_t n)
{
    for (bl_wq *w = m->wq[hash_key(key, n)]; w; w = w->hnext)
        if (w->keylen == n && memcmp(w->key, key, n) == 0)
            return w;
    return NULL;
}

void bl_wq_join(bl_lock *lock)
{
    bl_manager *m = lock->m;
    bl_wq *w = bl_manager_wq_find(m, lock->key, lock->keylen);
    if (!w) {
        w = calloc(1, sizeof *w + lock->keylen + 1);
        if (!w)
            return; /* no wake-ups for this one: the backoff timer still runs */
        w->key = (char *)(w + 1);
        memcpy(w->key, lock->key, lock->keylen);
        w->keylen = lock->keylen;
        unsigned b = hash_key(w->key, w->keylen);
        w->hnext = m->wq[b];
        m->wq[b] = w;
    }
    lock->wq = w;
    lock->wnext = NULL;
    lock->wprev = w->tail;
    if (w->tail)
        w->tail->wnext = lock;
    else
        w->head = lock;
    w->tail = lock;
    if (++w->nwait == 1)
        m->be->vt->watch(m->be, w, 1);
}

void bl_wq_leave(bl_lock *lock)
{
    bl_manager *m = lock->m;
    bl_wq *w = lock->wq;
    if (lock->wprev)
        lock->wprev->wnext = lock->wnext;
    else
        w->head = lock->wnext;
    if (lock->wnext)
        lock->wnext->wprev = lock->wprev;
    else
        w->tail = lock->wprev;
    lock->wq = NULL;
    lock->wprev = lock->wnext = NULL;
    if (--w->nwait == 0) {
        w->idle_since = m->loop.now_ms(m->loop.impl);
        m->be->vt->watch(m->be, w, 0); /* may keep it (linger) or drop it */
        if (w->sub == 0 && w->nwait == 0)
            bl_manager_wq_drop(m, w);
    }
}

void bl_manager_wq_drop(bl_manager *m, bl_wq *w)
{
    bl_wq **pp = &m->wq[hash_key(w->key, w->keylen)];
    while (*pp && *pp != w)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = w->hnext;
    for (bl_lock *l = w->head; l; l = l->wnext)
        l->wq = NULL; /* only at manager free */
    free(w);
}

void bl_manager_wq_each(bl_manager *m, void (*fn)(bl_wq *wq, void *arg), void *arg)
{
    for (int i = 0; i < BL_WQ_BUCKETS; i++) {
        bl_wq *w = m->wq[i];
        while (w) {
            bl_wq *next = w->hnext; /* fn may drop w */
            fn(w, arg);
            w = next;
        }
    }
}

void bl_manager_wake(bl_manager *m, const char *key, size_t keylen, const char *target,
                     size_t target_len)
{
    bl_wq *w = bl_manager_wq_find(m, key, keylen);
    if (!w)
        return;
    int all = target_len == 1 && target[0] == '*';
    if (!all && (target_len != m->holder_len || memcmp(target, m->holder, target_len) != 0))
        return; /* handed to another holder: not our turn */
    for (bl_lock *l = w->head; l;) {
        bl_lock *next = l->wnext; /* waking may end the request */
        if (l->state == LS_WAITING) {
            bl_lock_wake(l, !all);
            if (!all)
                return; /* reserved for one of us: the oldest goes */
        }
        l = next;
    }
}

/* ---- admin operations -------------------------------------------------- */

static bl_aop *aop_new(bl_manager *m, enum bl_aop_kind kind, void *cb, void *data)
{
    bl_aop *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->kind = kind;
    op->m = m;
    op->cb = cb;
    op->data = data;
    op->started_us = bl_now_us();
    return op;
}

void bl_aop_free(bl_aop *op)
{
    if (op->timer)
        op->m->loop.timer_free(op->timer);
    free(op->key);
    free(op->done_key);
    free(op->fence_key);
    free(op->holder_buf);
    free(op);
}

static int aop_start(bl_manager *m, bl_aop *op)
{
    int rc = m->be->vt->admin(m->be, op);
    if (rc < 0) {
        bl_aop_free(op);
        return bl_mgr_fail(m, rc, "the backend cannot take the request");
    }
    m->admin_inflight++;
    return BL_OK;
}

void bl_aop_done(bl_aop *op)
{
    bl_aop_deliver(op);
    bl_aop_free(op);
}

void bl_aop_deliver(bl_aop *op)
{
    bl_manager *m = op->m;
    m->admin_inflight--;
    switch (op->kind) {
    case BL_AOP_PING: {
        bl_health h = {op->status, m->be->vt->conn_state(m->be), op->latency_ms,
                       m->be->vt->name, op->errmsg};
        ((bl_health_cb)op->cb)(m, &h, op->data);
        break;
    }
    case BL_AOP_INSPECT:
        op->info.status = op->status;
        op->info.errmsg = op->errmsg;
        ((bl_inspect_cb)op->cb)(m, &op->info, op->data);
        break;
    case BL_AOP_CLEANUP:
        ((bl_cleanup_cb)op->cb)(m, op->status, op->removed, op->data);
        break;
    }
    bl_mgr_check_close(m);
}

int bl_health_check(bl_manager *m, bl_health_cb cb, void *data)
{
    if (!m || !cb)
        return m ? bl_mgr_fail(m, BL_EINVAL, "callback is NULL") : BL_EINVAL;
    if (m->closing)
        return bl_mgr_fail(m, BL_ECLOSED, "the manager is closing");
    bl_aop *op = aop_new(m, BL_AOP_PING, (void *)cb, data);
    if (!op)
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    return aop_start(m, op);
}

int bl_inspect(bl_manager *m, const char *marketplace, const char *posting, bl_inspect_cb cb,
               void *data)
{
    if (!m || !cb)
        return m ? bl_mgr_fail(m, BL_EINVAL, "callback is NULL") : BL_EINVAL;
    if (m->closing)
        return bl_mgr_fail(m, BL_ECLOSED, "the manager is closing");
    char why[BL_ERRMSG_MAX];
    if (bl_validate_id(marketplace, 1, why, sizeof why) ||
        bl_validate_id(posting, 0, why, sizeof why))
        return bl_mgr_fail(m, BL_EINVAL, why);
    bl_aop *op = aop_new(m, BL_AOP_INSPECT, (void *)cb, data);
    if (!op)
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    op->key = bl_make_key(m->prefix, marketplace, posting, NULL);
    op->done_key = bl_make_aux_key(m->prefix, "done", marketplace, posting, NULL);
    op->fence_key = bl_make_aux_key(m->prefix, "fence", marketplace, posting, NULL);
    if (!op->key || !op->done_key || !op->fence_key) {
        bl_aop_free(op);
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    }
    op->info.pttl_ms = -1;
    return aop_start(m, op);
}

int bl_cleanup(bl_manager *m, int mine_only, bl_cleanup_cb cb, void *data)
{
    if (!m || !cb)
        return m ? bl_mgr_fail(m, BL_EINVAL, "callback is NULL") : BL_EINVAL;
    if (m->closing)
        return bl_mgr_fail(m, BL_ECLOSED, "the manager is closing");
    bl_aop *op = aop_new(m, BL_AOP_CLEANUP, (void *)cb, data);
    if (!op)
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    op->mine_only = mine_only != 0;
    return aop_start(m, op);
}

/* ---- metrics ------------------------------------------------------------- */

const double bl_hist_bounds_ms[BL_HIST_BUCKETS] = {0.1, 0.25, 0.5, 1,   2.5,  5,    10,
                                                   25,  50,   100, 250, 500, 1000, 2500};

void bl_hist_add(bl_histogram *h, double ms)
{
    int i = 0;
    while (i < BL_HIST_BUCKETS && ms > bl_hist_bounds_ms[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum_ms += ms;
}

void bl_manager_metrics(const bl_manager *m, bl_metrics *out)
{
    memset(out, 0, sizeof *out);
    out->stats = m->stats;
    out->conn_state = m->be->vt->conn_state(m->be);
    out->acquire_ms = m->acquire_hist;
    out->release_ms = m->release_hist;
}
