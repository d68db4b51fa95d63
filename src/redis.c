/* redis.c - the Redis backend: one hiredis async connection, the Lua
 * scripts, reconnect. No lock logic lives here: it turns operations into
 * script calls and replies into bl_op_result.
 *
 * hiredis 0.14.1 facts this file leans on (see DESIGN.md):
 *  - attach the loop adapter before redisAsyncSetConnectCallback;
 *  - every pending reply callback runs exactly once, with NULL when the
 *    context is freed or the connection fails;
 *  - after a failed connect or a disconnect, hiredis frees the context
 *    itself; there is no async reconnect, so we make a new context;
 *  - never free the context inside its connect or disconnect callback.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "internal.h"
#include "scripts.h"

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_UP };
enum timer_role { TR_NONE, TR_CONNECT_DEADLINE, TR_RECONNECT };

typedef struct redis_be {
    bl_backend base;
    redisAsyncContext *ac;
    enum conn_state state;
    bl_timer *timer;
    enum timer_role role;
    char sha[BL_SCRIPT_COUNT][41];
    int sha_ok[BL_SCRIPT_COUNT];
    int shutting, closed_notified, ever_up;
    double reconnect_step;
    char last_err[128];
} redis_be;

/* Set by the connect deadline: hiredis has no message for a context we
 * freed ourselves. */
static const char *conn_errmsg(redis_be *r, const redisAsyncContext *ac)
{
    if (ac && ac->c.errstr[0])
        return ac->c.errstr;
    if (r->last_err[0])
        return r->last_err;
    return "connection to Redis lost";
}

static void notify_closed(redis_be *r)
{
    if (r->closed_notified)
        return;
    r->closed_notified = 1;
    bl_manager_backend_closed(r->base.m);
}

static void schedule_reconnect(redis_be *r)
{
    const bl_manager *m = r->base.m;
    const bl_config *cfg = bl_manager_config(m);
    if (r->shutting) {
        notify_closed(r);
        return;
    }
    bl_backoff b = {cfg->reconnect_initial_ms, 30000.0, 2.0};
    uint64_t pause = bl_backoff_next(&b, &r->reconnect_step, bl_manager_rand(r->base.m), 0,
                                     UINT64_MAX);
    r->role = TR_RECONNECT;
    bl_manager_loop(m)->timer_start(r->timer, pause);
}

/* ---- replies ------------------------------------------------------------ */

static void script_load_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    redis_be *r = ac->data;
    int i = (int)(intptr_t)priv;
    if (!r || !reply || reply->type != REDIS_REPLY_STRING || reply->len != 40)
        return; /* EVAL keeps working without the cache; next connect retries */
    memcpy(r->sha[i], reply->str, 40);
    r->sha[i][40] = '\0';
    r->sha_ok[i] = 1;
}

static void load_scripts(redis_be *r)
{
    for (int i = 0; i < BL_SCRIPT_COUNT; i++)
        redisAsyncCommand(r->ac, script_load_cb, (void *)(intptr_t)i, "SCRIPT LOAD %s",
                          bl_scripts[i].body);
}

static int send_op(redis_be *r, bl_lock *lock, enum bl_op_kind kind, int by_body);

static void op_reply_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_lock *lock = priv;
    redis_be *r = ac->data;
    enum bl_op_kind kind = bl_lock_inflight(lock);
    bl_op_result res = {BL_EREDIS, NULL};

    if (!reply) {
        res.status = BL_ECONN;
        res.errmsg = conn_errmsg(r, ac);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        if (strncmp(reply->str, "NOSCRIPT", 8) == 0 && r && r->ac == ac) {
            /* The server lost its script cache (restart, SCRIPT FLUSH):
             * run this call by body, which also caches it, and reload. */
            int s = kind == BL_OP_ACQUIRE ? BL_SCRIPT_ACQUIRE : BL_SCRIPT_RELEASE;
            r->sha_ok[s] = 0;
            if (send_op(r, lock, kind, 1) == 0) {
                load_scripts(r);
                return;
            }
            res.status = BL_ECONN;
            res.errmsg = "connection to Redis lost while reloading scripts";
        } else {
            res.errmsg = reply->str;
        }
    } else if (reply->type == REDIS_REPLY_INTEGER && (reply->integer == 0 || reply->integer == 1)) {
        if (reply->integer == 1)
            res.status = BL_OK;
        else
            res.status = kind == BL_OP_ACQUIRE ? BL_EBUSY : BL_ENOTHELD;
    } else {
        res.errmsg = "unexpected reply from a bidlock script";
    }
    bl_lock_op_done(lock, &res);
}

/* ---- commands ----------------------------------------------------------- */

static int send_op(redis_be *r, bl_lock *lock, enum bl_op_kind kind, int by_body)
{
    int s = kind == BL_OP_ACQUIRE ? BL_SCRIPT_ACQUIRE : BL_SCRIPT_RELEASE;
    const char *holder = bl_manager_holder(r->base.m);
    size_t keylen;
    const char *key = bl_lock_key_len(lock, &keylen);
    char ttl[24];
    int ttl_len = snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)bl_lock_ttl(lock));

    const char *argv[6];
    size_t lens[6];
    int argc = 0;
    if (by_body || !r->sha_ok[s]) {
        argv[argc] = "EVAL", lens[argc++] = 4;
        argv[argc] = bl_scripts[s].body, lens[argc++] = strlen(bl_scripts[s].body);
    } else {
        argv[argc] = "EVALSHA", lens[argc++] = 7;
        argv[argc] = r->sha[s], lens[argc++] = 40;
    }
    argv[argc] = "1", lens[argc++] = 1;
    argv[argc] = key, lens[argc++] = keylen;
    argv[argc] = holder, lens[argc++] = strlen(holder);
    if (kind == BL_OP_ACQUIRE)
        argv[argc] = ttl, lens[argc++] = (size_t)ttl_len;
    if (redisAsyncCommandArgv(r->ac, op_reply_cb, lock, argc, argv, lens) != REDIS_OK)
        return BL_ECONN;
    return 0;
}

static int be_start(bl_backend *be, bl_lock *lock, enum bl_op_kind kind)
{
    redis_be *r = (redis_be *)be;
    if (r->state == CONN_DOWN || !r->ac) {
        snprintf(bl_lock_errbuf(lock), BL_ERRMSG_MAX, "not connected to Redis: %s",
                 r->last_err[0] ? r->last_err : "connection down");
        return BL_ECONN;
    }
    /* While connecting, hiredis buffers the command until the socket is up
     * and fails it with a NULL reply if the connect fails. */
    return send_op(r, lock, kind, 0);
}

/* ---- connection --------------------------------------------------------- */

static void connect_now(redis_be *r);

static void on_connect(const redisAsyncContext *ac, int status)
{
    redis_be *r = ac->data;
    if (!r)
        return;
    const bl_loop *loop = bl_manager_loop(r->base.m);
    loop->timer_stop(r->timer);
    r->role = TR_NONE;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback and fails every
         * queued command with a NULL reply. */
        snprintf(r->last_err, sizeof r->last_err, "%s",
                 ac->c.errstr[0] ? ac->c.errstr : "connect failed");
        r->ac = NULL;
        r->state = CONN_DOWN;
        schedule_reconnect(r);
        return;
    }
    r->state = CONN_UP;
    r->reconnect_step = 0;
    if (r->ever_up)
        bl_manager_stats_mut(r->base.m)->reconnects++;
    r->ever_up = 1;
    r->last_err[0] = '\0';
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    redis_be *r = ac->data;
    (void)status;
    if (!r)
        return;
    if (ac->c.errstr[0])
        snprintf(r->last_err, sizeof r->last_err, "%s", ac->c.errstr);
    else
        snprintf(r->last_err, sizeof r->last_err, "connection closed");
    r->ac = NULL;
    r->state = CONN_DOWN;
    schedule_reconnect(r);
}

static void connect_now(redis_be *r)
{
    const bl_config *cfg = bl_manager_config(r->base.m);
    const bl_loop *loop = bl_manager_loop(r->base.m);
    redisAsyncContext *ac = cfg->unix_path ? redisAsyncConnectUnix(cfg->unix_path)
                                           : redisAsyncConnect(cfg->host, cfg->port);
    if (!ac || ac->err) {
        snprintf(r->last_err, sizeof r->last_err, "%s",
                 ac && ac->errstr ? ac->errstr : "cannot create a connection");
        if (ac)
            redisAsyncFree(ac);
        r->state = CONN_DOWN;
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    if (loop->attach(loop->impl, ac) != 0) {
        snprintf(r->last_err, sizeof r->last_err, "cannot attach the connection to the loop");
        redisAsyncFree(ac);
        r->state = CONN_DOWN;
        schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->state = CONN_CONNECTING;
    r->role = TR_CONNECT_DEADLINE;
    loop->timer_start(r->timer, cfg->connect_timeout_ms);
    load_scripts(r);
}

/* Drop the context ourselves (deadline, forced close). Pending callbacks
 * run now with NULL; no connect/disconnect callback follows for a context
 * that never connected, and on_disconnect ignores one that did. */
static void drop_connection(redis_be *r, const char *why)
{
    redisAsyncContext *ac = r->ac;
    snprintf(r->last_err, sizeof r->last_err, "%s", why);
    r->ac = NULL;
    r->state = CONN_DOWN;
    if (ac) {
        ac->data = r; /* reply callbacks still read it for the message */
        ac->onDisconnect = NULL; /* the setter only sets an unset callback */
        redisAsyncFree(ac);
    }
}

static void timer_cb(void *data)
{
    redis_be *r = data;
    enum timer_role role = r->role;
    r->role = TR_NONE;
    if (role == TR_CONNECT_DEADLINE && r->state == CONN_CONNECTING) {
        drop_connection(r, "connect timed out");
        schedule_reconnect(r);
    } else if (role == TR_RECONNECT && !r->shutting) {
        connect_now(r);
    }
}

static void be_shutdown(bl_backend *be, int force)
{
    redis_be *r = (redis_be *)be;
    const bl_loop *loop = bl_manager_loop(be->m);
    r->shutting = 1;
    loop->timer_stop(r->timer);
    r->role = TR_NONE;
    if (!r->ac) {
        notify_closed(r);
    } else if (force || r->state != CONN_UP) {
        drop_connection(r, force ? "manager closed before Redis answered" : "manager closed");
        notify_closed(r);
    } else {
        /* Graceful: hiredis waits for pending replies, then disconnects
         * and calls on_disconnect, which reports closed. */
        redisAsyncDisconnect(r->ac);
    }
}

static void be_free(bl_backend *be)
{
    redis_be *r = (redis_be *)be;
    if (r->ac)
        drop_connection(r, "manager freed");
    bl_manager_loop(be->m)->timer_free(r->timer);
    free(r);
}

static const bl_backend_vt redis_vt = {be_start, be_shutdown, be_free};

int bl_redis_backend_new(bl_manager *m, bl_backend **out)
{
    redis_be *r = calloc(1, sizeof *r);
    if (!r)
        return BL_ENOMEM;
    r->base.vt = &redis_vt;
    r->base.m = m;
    const bl_loop *loop = bl_manager_loop(m);
    r->timer = loop->timer_new(loop->impl, timer_cb, r);
    if (!r->timer) {
        free(r);
        return BL_ENOMEM;
    }
    connect_now(r);
    *out = &r->base;
    return 0;
}
