/* manager.c - the manager handle: creation, the backend's host hooks,
 * close, logging and counters. Configuration is in config.c, wait queues in
 * waitq.c, admin operations in admin.c, metrics in metrics.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "tls.h"
#include "url.h"

int bl_mgr_fail(bl_manager *m, int status, const char *msg)
{
    snprintf(m->errmsg, BL_ERRMSG_MAX, "%s", msg ? msg : "");
    return status;
}

void bl_mgr_count_error(bl_manager *m, int status)
{
    if (status == BL_ECONN)
        m->stats.conn_errors++;
    else if (status == BL_EREDIS)
        m->stats.redis_errors++;
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
    bl_wq_free_all(m);
    bl_lt_free_all(m);
    if (m->kick_timer)
        m->loop.timer_free(m->kick_timer);
    if (m->close_timer)
        m->loop.timer_free(m->close_timer);
    if (m->renew_timer)
        m->loop.timer_free(m->renew_timer);
    wipe(m->password);
    wipe(m->sentinel_password);
    free(m->sentinel_username);
    free(m->sentinel_password);
    for (int i = 0; i < 5; i++)
        free(m->tls_files[i]);
    free(m->url);
    free(m->host);
    free(m->unix_path);
    free(m->prefix);
    free(m->username);
    free(m->password);
    free(m);
}

static void host_closed(void *ctx);

static void host_wake(void *ctx, const char *key, size_t keylen, int directed)
{
    bl_wq_wake(ctx, key, keylen, directed);
}

static int host_granted(void *ctx, const char *key, size_t keylen, uint64_t token)
{
    return bl_wq_granted(ctx, key, keylen, token);
}

static void host_event(void *ctx, int ev)
{
    bl_manager *m = ctx;
    switch (ev) {
    case BL_BE_RECONNECTED: m->stats.reconnects++; break;
    case BL_BE_WAIT_SHORT: m->stats.replica_shortfalls++; break;
    case BL_BE_REDIRECTED: m->stats.redirects++; break;
    case BL_BE_MAP_REFRESHED: m->stats.map_refreshes++; break;
    case BL_BE_MASTER_CHANGED:
        m->stats.failovers++;
        for (bl_lock *l = m->locks; l; l = l->next)
            bl_lock_reverify(l);
        break;
    }
}

static uint64_t host_rand(void *ctx)
{
    return bl_rand_next(&((bl_manager *)ctx)->rng);
}

static void host_log(void *ctx, int level, const char *line)
{
    const bl_manager *m = ctx;
    if (m->cfg.log)
        m->cfg.log(level, line, m->cfg.log_data);
}

int bl_manager_new(const bl_loop *loop, const bl_config *cfg, bl_manager **out)
{
    return bl_manager_new_with(loop, cfg, NULL, out);
}

int bl_manager_new_with(const bl_loop *loop, const bl_config *cfg, bl_backend_factory make,
                        bl_manager **out)
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
    if (cfg->backend == BL_BACKEND_REDIS && bl_tls_wanted(cfg) &&
        (!loop->io_new || !loop->io_set || !loop->io_free))
        return BL_EINVAL; /* TLS needs the io hooks: see bidlock/loop.h */
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
    const char **tls_strs[5] = {&m->cfg.tls_ca_file, &m->cfg.tls_ca_dir, &m->cfg.tls_cert_file,
                                &m->cfg.tls_key_file, &m->cfg.tls_server_name};
    for (int i = 0; i < 5; i++)
        *tls_strs[i] = m->tls_files[i] = dup_or_null(*tls_strs[i], &oom);
    m->backoff.initial_ms = cfg->backoff_initial_ms;
    m->backoff.max_ms = cfg->backoff_max_ms;
    m->backoff.multiplier = cfg->backoff_multiplier;
    m->rng = bl_random_seed();
    m->renew_batch = BL_RENEW_BATCH_MAX;
    m->wait_on = cfg->backend == BL_BACKEND_REDIS && bl_config_min_replicas(cfg) != 0;
    if (!oom)
        oom = bl_make_holder(m->holder, sizeof m->holder) != 0;
    m->holder_len = strlen(m->holder);
    if (!oom) {
        m->kick_timer = loop->timer_new(loop->impl, kick_cb, m);
        m->close_timer = loop->timer_new(loop->impl, close_timeout_cb, m);
        m->renew_timer = loop->timer_new(loop->impl, bl_lock_renew_flush, m);
        oom = !m->kick_timer || !m->close_timer || !m->renew_timer || bl_lt_init(m) != 0;
    }
    m->host_if = (bl_backend_host){
        .loop = &m->loop, .cfg = &m->cfg, .holder = m->holder, .holder_len = m->holder_len,
        .prefix = m->prefix, .ctx = m, .wake = host_wake, .granted = host_granted, .closed = host_closed,
        .event = host_event, .rand = host_rand, .log = host_log};
    int rc = oom ? BL_ENOMEM : BL_OK;
    if (rc == BL_OK) {
        if (make) {
            rc = make(&m->host_if, &m->be);
        } else if (cfg->backend == BL_BACKEND_MEMORY) {
            rc = bl_memory_backend_new(&m->host_if, &m->be);
            bl_log(m, BL_LOG_WARN,
                   "bidlock: using the in-memory backend: locks are local to this process "
                   "and exclude nothing across instances");
        } else {
            rc = bl_redis_backend_new(&m->host_if, &m->be);
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
    /* While closing, no request is added or freed, and one that is DEAD
     * with nothing in flight stays so: resume where the last check
     * stopped, so close is linear in the number of requests. */
    for (; m->close_scan; m->close_scan = m->close_scan->next)
        if (m->close_scan->state != LS_DEAD || m->close_scan->op.kind != BL_OP_NONE)
            return;
    m->kick = KICK_SHUTDOWN; /* from the loop, not from inside a reply callback */
    m->loop.timer_start(m->kick_timer, 0);
}

/* ---- the backend's host hooks ---------------------------------------------- */

static void host_closed(void *ctx)
{
    bl_manager *m = ctx;
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
    m->close_scan = m->locks;
    for (bl_lock *l = m->locks; l; l = l->next)
        bl_lock_close_one(l);
    m->loop.timer_start(m->close_timer, m->cfg.close_timeout_ms);
    bl_mgr_check_close(m);
    return BL_OK;
}

const char *bl_manager_holder(const bl_manager *m) { return m->holder; }
const char *bl_manager_errmsg(const bl_manager *m) { return m->errmsg; }
void bl_manager_stats(const bl_manager *m, bl_stats *out)
{
    *out = m->stats;
    out->errors = out->redis_errors + out->conn_errors; /* derived, never bumped */
}
int bl_manager_conn_state(const bl_manager *m) { return m->be->vt->conn_state(m->be); }
