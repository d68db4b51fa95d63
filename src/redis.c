/* redis.c - the Redis backend: its vtable, creation, shutdown and free.
 * A command connection runs scripts and admin operations; a subscriber
 * connection, opened when the first request waits, hears releases. No lock
 * logic lives in the backend: it turns operations into script calls and
 * replies into bl_op_result. The parts: see redis.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>

#include "redis.h"

static int be_conn_state(const bl_backend *be)
{
    const redis_be *r = (const redis_be *)be;
    return r->cmd.state == CONN_UP           ? BL_CONN_UP
           : r->cmd.state == CONN_CONNECTING ? BL_CONN_CONNECTING
                                             : BL_CONN_DOWN;
}

static void be_shutdown(bl_backend *be, int force)
{
    redis_be *r = (redis_be *)be;
    r->shutting = 1;
    LOOP(r)->timer_stop(r->cmd.timer);
    LOOP(r)->timer_stop(r->sub.timer);
    LOOP(r)->timer_stop(r->linger_timer);
    r->cmd.role = r->sub.role = TR_NONE;
    if (r->sub.ac)
        redis_drop(&r->sub, "manager closed");
    r->cmd.awaiting = r->sub.awaiting = 0;
    redis_preq_fail(r, "manager closed");
    if (r->cmd.ac && (force || r->cmd.state != CONN_UP)) {
        redis_drop(&r->cmd, force ? "manager closed before Redis answered" : "manager closed");
    } else if (r->cmd.ac) {
        /* Graceful: hiredis waits for pending replies, then disconnects and
         * calls on_disconnect, which reports closed. */
        redisAsyncDisconnect(r->cmd.ac);
        return;
    }
    redis_notify_closed(r);
}

static void be_free(bl_backend *be)
{
    redis_be *r = (redis_be *)be;
    const bl_loop *loop = LOOP(r);
    redis_conn_free(r);
    redis_preq_fail(r, "manager freed");
    if (r->sub.ac)
        redis_drop(&r->sub, "manager freed");
    if (r->cmd.ac)
        redis_drop(&r->cmd, "manager freed");
    bl_timer *timers[] = {r->cmd.timer, r->sub.timer, r->defer_timer, r->linger_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
        if (timers[i])
            loop->timer_free(timers[i]);
    while (r->deferred) { /* not reached: close waits for admin ops */
        bl_aop *op = r->deferred;
        r->deferred = op->next;
        bl_aop_done(op);
    }
    redis_sub_free(r);
    bl_url_free(&r->url);
    for (int i = 0; i < BL_SCRIPT_COUNT; i++)
        free(r->shebang[i]);
    free(r);
}

static const bl_backend_vt redis_vt = {
    "redis",       redis_op_start, redis_op_leave, redis_sub_watch,
    redis_admin,   be_conn_state,  be_shutdown,    be_free,
    redis_op_start_many,
};

static redis_be *be_alloc(const bl_backend_host *host)
{
    redis_be *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->base.vt = &redis_vt;
    r->h = *host;
    r->pend_tail = &r->pend;
    r->preq_tail = &r->preq;
    r->min_replicas = bl_config_min_replicas(host->cfg);
    for (int i = 0; i < BL_SCRIPT_COUNT; i++)
        r->body[i] = bl_scripts[i].body;
    return r;
}

/* The timers, then the first connect. */
static int be_start(redis_be *r, bl_backend **out)
{
    const bl_loop *loop = r->h.loop;
    r->cmd.r = r->sub.r = r;
    r->sub.is_sub = 1;
    r->cmd.timer = loop->timer_new(loop->impl, redis_conn_timer_cb, &r->cmd);
    r->sub.timer = loop->timer_new(loop->impl, redis_conn_timer_cb, &r->sub);
    r->defer_timer = loop->timer_new(loop->impl, redis_defer_cb, r);
    r->linger_timer = loop->timer_new(loop->impl, redis_linger_cb, r);
    if (!r->cmd.timer || !r->sub.timer || !r->defer_timer || !r->linger_timer) {
        be_free(&r->base);
        return BL_ENOMEM;
    }
    redis_connect(&r->cmd);
    *out = &r->base;
    return 0;
}

int bl_redis_backend_new(const bl_backend_host *host, bl_backend **out)
{
    if (host->cfg->url && bl_url_kind(host->cfg->url) == BL_URL_CLUSTER)
        return bl_cluster_backend_new(host, out);
    redis_be *r = be_alloc(host);
    if (!r)
        return BL_ENOMEM;
    r->legacy_keys = 1;
    int rc = redis_conn_init(r);
    if (rc != BL_OK) {
        redis_conn_free(r);
        bl_url_free(&r->url);
        free(r);
        return rc;
    }
    return be_start(r, out);
}

int redis_node_new(const bl_backend_host *host, const char *ip, int port, const char *username,
                   const char *password, bl_backend **out)
{
    redis_be *r = be_alloc(host);
    if (!r)
        return BL_ENOMEM;
    r->cluster_node = 1;
    snprintf(r->addrs[0], sizeof r->addrs[0], "%s", ip);
    r->naddrs = 1;
    r->port = port;
    r->username = username;
    r->password = password;
    /* "#!lua": the server then refuses a key in another slot that was not
     * declared, which an old-style EVAL would touch silently until the
     * next reshard moved it away. */
    for (int i = 0; i < BL_SCRIPT_COUNT; i++) {
        size_t n = strlen(bl_scripts[i].body);
        r->shebang[i] = malloc(n + 7);
        if (!r->shebang[i]) {
            be_free(&r->base);
            return BL_ENOMEM;
        }
        memcpy(r->shebang[i], "#!lua\n", 6);
        memcpy(r->shebang[i] + 6, bl_scripts[i].body, n + 1);
        r->body[i] = r->shebang[i];
    }
    return be_start(r, out);
}
