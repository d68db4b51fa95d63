/* redis.c - the Redis backend: a command connection (scripts, admin) and a
 * subscriber connection (wake-ups), reconnect, AUTH/SELECT. No lock logic
 * lives here: it turns operations into script calls and replies into
 * bl_op_result.
 *
 * hiredis 0.14.1 facts this file leans on (see DESIGN.md):
 *  - attach the loop adapter before redisAsyncSetConnectCallback;
 *  - every pending reply callback runs exactly once, with NULL when the
 *    context is freed or the connection fails;
 *  - after a failed connect or a disconnect, hiredis frees the context
 *    itself; there is no async reconnect, so we make a new context;
 *  - never free the context inside its connect or disconnect callback;
 *  - a subscribed connection (RESP2) takes only (UN)SUBSCRIBE: we send it
 *    AUTH/SELECT first and nothing else afterwards.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "internal.h"
#include "scripts.h"

enum conn_state { CONN_DOWN, CONN_CONNECTING, CONN_UP };
enum timer_role { TR_NONE, TR_CONNECT_DEADLINE, TR_RECONNECT };
enum sub_state { SUB_NONE = 0, SUB_PENDING, SUB_ON, SUB_LEAVING };

#define LINGER_MS 1000 /* keep a subscription this long after the last waiter */
#define EVALSHA_SCRIPTS 3 /* acquire, release, extend run by sha */

typedef struct redis_be redis_be;

typedef struct conn {
    redis_be *r;
    int is_sub;
    redisAsyncContext *ac;
    enum conn_state state;
    bl_timer *timer;
    enum timer_role role;
    double reconnect_step;
    int ever_up;
    int setup_failed; /* AUTH/SELECT refused: last_err says why */
    char last_err[160];
} conn;

struct redis_be {
    bl_backend base;
    conn cmd, sub;
    int sub_started;
    char sha[BL_SCRIPT_COUNT][41];
    int sha_ok[BL_SCRIPT_COUNT];
    int loads_pending; /* SCRIPT LOADs on the wire */
    int shutting, closed_notified;
    /* where to connect */
    bl_url url;
    const char *host, *unix_path, *username, *password;
    int port, db;
    char resolved[INET6_ADDRSTRLEN];
    /* admin operations that end without the server (down, closing) */
    bl_aop *deferred;
    bl_timer *defer_timer;
    bl_timer *linger_timer;
    int linger_armed;
    char ttl_buf[24];
};

static bl_manager *M(redis_be *r) { return r->base.m; }
static const bl_loop *LOOP(redis_be *r) { return bl_manager_loop(r->base.m); }

/* ---- connections ---------------------------------------------------------- */

static const char *conn_errmsg(conn *c, const redisAsyncContext *ac)
{
    if (ac && ac->c.errstr[0])
        return ac->c.errstr;
    if (c->last_err[0])
        return c->last_err;
    return "connection to Redis lost";
}

static void notify_closed(redis_be *r)
{
    if (!r->shutting || r->closed_notified || r->cmd.ac || r->sub.ac)
        return;
    r->closed_notified = 1;
    bl_manager_backend_closed(M(r));
}

static void schedule_reconnect(conn *c)
{
    redis_be *r = c->r;
    if (r->shutting) {
        notify_closed(r);
        return;
    }
    const bl_config *cfg = bl_manager_config(M(r));
    bl_backoff b = {cfg->reconnect_initial_ms, 30000.0, 2.0};
    uint64_t pause =
        bl_backoff_next(&b, &c->reconnect_step, bl_manager_rand(M(r)), 0, UINT64_MAX);
    c->role = TR_RECONNECT;
    LOOP(r)->timer_start(c->timer, pause);
}

static void subscribe_wq(redis_be *r, bl_wq *w);

static void resubscribe_each(bl_wq *w, void *arg)
{
    if (w->nwait > 0 && w->sub == SUB_NONE)
        subscribe_wq(arg, w);
}

static void forget_subs_each(bl_wq *w, void *arg)
{
    w->sub = SUB_NONE;
    if (w->nwait == 0)
        bl_manager_wq_drop(M(arg), w);
}

static void went_down(conn *c, const char *why)
{
    redis_be *r = c->r;
    if (why != c->last_err) /* callers pass last_err itself: no overlapping copy */
        snprintf(c->last_err, sizeof c->last_err, "%s", why);
    c->ac = NULL;
    c->state = CONN_DOWN;
    if (c->is_sub)
        bl_manager_wq_each(M(r), forget_subs_each, r);
    if (!r->shutting)
        bl_log(M(r), BL_LOG_WARN, "bidlock: %s connection down: %s",
               c->is_sub ? "subscriber" : "Redis", why);
    schedule_reconnect(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    conn *c = ac->data;
    if (!c)
        return;
    redis_be *r = c->r;
    LOOP(r)->timer_stop(c->timer);
    c->role = TR_NONE;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this and fails every queued
         * command with a NULL reply. */
        went_down(c, ac->c.errstr[0] ? ac->c.errstr : "connect failed");
        return;
    }
    c->state = CONN_UP;
    c->reconnect_step = 0;
    if (c->ever_up && !c->is_sub) {
        bl_manager_stats_mut(M(r))->reconnects++;
        bl_log(M(r), BL_LOG_INFO, "bidlock: reconnected to Redis");
    }
    c->ever_up = 1;
    c->last_err[0] = '\0';
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    conn *c = ac->data;
    (void)status;
    if (!c || c->ac != ac)
        return;
    went_down(c, ac->c.errstr[0] ? ac->c.errstr : "connection closed");
    notify_closed(c->r);
}

/* Drop the context ourselves (deadline, bad AUTH, close). Pending callbacks
 * run now with NULL; on_disconnect ignores a context we dropped. */
static void drop_connection(conn *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    if (why != c->last_err) /* callers pass last_err itself: no overlapping copy */
        snprintf(c->last_err, sizeof c->last_err, "%s", why);
    c->ac = NULL;
    c->state = CONN_DOWN;
    if (ac)
        redisAsyncFree(ac);
    if (c->is_sub)
        bl_manager_wq_each(M(c->r), forget_subs_each, c->r);
}

/* AUTH / SELECT answers. A refusal makes the connection useless: drop it
 * (from the loop, not inside hiredis's callback) and retry with backoff. */
static void setup_reply_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    conn *c = ac->data;
    const char *what = priv;
    if (!c || !reply || reply->type != REDIS_REPLY_ERROR || c->ac != ac)
        return;
    /* Server messages never contain the password. */
    snprintf(c->last_err, sizeof c->last_err, "%s failed: %s", what, reply->str);
    bl_log(M(c->r), BL_LOG_ERROR, "bidlock: %s", c->last_err);
    c->state = CONN_DOWN; /* new operations fail fast from now on */
    c->setup_failed = 1;
    c->role = TR_CONNECT_DEADLINE; /* reuse the deadline path: drop + retry */
    LOOP(c->r)->timer_start(c->timer, 0);
}

static void script_load_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    conn *c = ac->data;
    int i = (int)(intptr_t)priv;
    if (c && c->r->loads_pending > 0)
        c->r->loads_pending--;
    if (!c || !reply || reply->type != REDIS_REPLY_STRING || reply->len != 40)
        return; /* EVAL keeps working without the cache; next connect retries */
    memcpy(c->r->sha[i], reply->str, 40);
    c->r->sha[i][40] = '\0';
    c->r->sha_ok[i] = 1;
}

/* One reload at a time: many in-flight calls can meet NOSCRIPT together. */
static void load_scripts(redis_be *r)
{
    if (r->loads_pending > 0)
        return;
    for (int i = 0; i < EVALSHA_SCRIPTS; i++)
        if (redisAsyncCommand(r->cmd.ac, script_load_cb, (void *)(intptr_t)i, "SCRIPT LOAD %s",
                              bl_scripts[i].body) == REDIS_OK)
            r->loads_pending++;
}

static void sub_cb(redisAsyncContext *ac, void *reply, void *priv);

static void connect_now(conn *c)
{
    redis_be *r = c->r;
    const bl_config *cfg = bl_manager_config(M(r));
    redisAsyncContext *ac =
        r->unix_path ? redisAsyncConnectUnix(r->unix_path) : redisAsyncConnect(r->host, r->port);
    if (!ac || ac->err) {
        const char *why = ac && ac->errstr[0] ? ac->errstr : "cannot create a connection";
        snprintf(c->last_err, sizeof c->last_err, "%s", why);
        if (ac)
            redisAsyncFree(ac);
        went_down(c, c->last_err);
        return;
    }
    ac->data = c;
    if (LOOP(r)->attach(LOOP(r)->impl, ac) != 0) {
        redisAsyncFree(ac);
        went_down(c, "cannot attach the connection to the loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->state = CONN_CONNECTING;
    c->role = TR_CONNECT_DEADLINE;
    LOOP(r)->timer_start(c->timer, cfg->connect_timeout_ms);
    /* Pipelined behind the connect: hiredis sends them once it is up. */
    if (r->password) {
        if (r->username)
            redisAsyncCommand(ac, setup_reply_cb, "AUTH", "AUTH %s %s", r->username, r->password);
        else
            redisAsyncCommand(ac, setup_reply_cb, "AUTH", "AUTH %s", r->password);
    }
    if (r->db)
        redisAsyncCommand(ac, setup_reply_cb, "SELECT", "SELECT %d", r->db);
    if (c->is_sub)
        bl_manager_wq_each(M(r), resubscribe_each, r);
    else
        load_scripts(r);
}

static void conn_timer_cb(void *data)
{
    conn *c = data;
    enum timer_role role = c->role;
    c->role = TR_NONE;
    if (role == TR_CONNECT_DEADLINE && c->ac) {
        /* A connect deadline, or AUTH/SELECT refused (message already set). */
        if (!c->setup_failed) {
            snprintf(c->last_err, sizeof c->last_err, "connect timed out");
            bl_log(M(c->r), BL_LOG_WARN, "bidlock: Redis connect timed out");
        }
        c->setup_failed = 0;
        drop_connection(c, c->last_err);
        schedule_reconnect(c);
    } else if (role == TR_RECONNECT && !c->r->shutting) {
        connect_now(c);
    }
}

/* ---- lock operations -------------------------------------------------------- */

static int send_op(redis_be *r, bl_lock *lock, enum bl_op_kind kind, int by_body);

/* A script's reply as an operation result. Pure, so it can be fuzzed:
 * anything that is not one of the documented answers is BL_EREDIS. */
void bl_redis_interpret(enum bl_op_kind kind, const redisReply *reply, bl_op_result *res)
{
    *res = (bl_op_result){BL_EREDIS, 0, 0, "unexpected reply from a bidlock script"};
    if (reply->type == REDIS_REPLY_ERROR) {
        res->errmsg = reply->str && reply->str[0] ? reply->str : "Redis sent an empty error";
        return;
    }
    if (reply->type != REDIS_REPLY_INTEGER)
        return;
    long long v = reply->integer;
    switch (kind) {
    case BL_OP_ACQUIRE:
        if (v > 0)
            *res = (bl_op_result){BL_OK, (uint64_t)v, 0, NULL};
        else if (v == BL_ACQ_BUSY)
            *res = (bl_op_result){BL_EBUSY, 0, 0, NULL};
        else if (v == BL_ACQ_DONE)
            *res = (bl_op_result){BL_EDONE, 0, 0, NULL};
        break;
    case BL_OP_EXTEND:
        if (v == 0 || v == 1)
            *res = (bl_op_result){v ? BL_OK : BL_ENOTHELD, 0, 0, NULL};
        break;
    case BL_OP_RELEASE:
    case BL_OP_RELEASE_DONE:
        if (v >= 0 && v <= 2)
            *res = (bl_op_result){v ? BL_OK : BL_ENOTHELD, 0, v == BL_REL_HANDED_OFF, NULL};
        break;
    default:
        break;
    }
}

static void op_reply_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_lock *lock = priv;
    conn *c = ac->data;
    enum bl_op_kind kind = bl_lock_inflight(lock);
    bl_op_result res = {BL_EREDIS, 0, 0, NULL};

    if (!reply) {
        res.status = BL_ECONN;
        res.errmsg = conn_errmsg(c, ac);
    } else if (c && c->ac == ac && c->setup_failed) {
        /* AUTH/SELECT was refused on this connection: what follows it fails
         * for that reason (NOAUTH, protocol errors), so say that. */
        res.status = BL_ECONN;
        res.errmsg = c->last_err;
    } else if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
               c && c->ac == ac) {
        /* The server lost its script cache (restart, SCRIPT FLUSH): run
         * this call by body, which also caches it, and reload. */
        memset(c->r->sha_ok, 0, sizeof c->r->sha_ok);
        if (send_op(c->r, lock, kind, 1) == 0) {
            load_scripts(c->r);
            return;
        }
        res.status = BL_ECONN;
        res.errmsg = "connection to Redis lost while reloading scripts";
    } else {
        bl_redis_interpret(kind, reply, &res);
    }
    bl_lock_op_done(lock, &res);
}

/* v in decimal into buf (>= 20 bytes, no NUL); returns the length. snprintf
 * cost ~700 instructions a number, three numbers per acquire. */
size_t bl_u64_dec(char *buf, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

/* See internal.h. hiredis 0.14's redisAsyncCommandArgv builds the same bytes
 * in a fresh sds (two allocations, a printf-like pass per argument): ~7,000
 * instructions for an acquire, against a few hundred here. */
#define RESP_STACK_MAX 2048
size_t bl_resp_format(char *buf, size_t cap, int argc, const char **argv, const size_t *lens)
{
    size_t need = 1 + 20 + 2;
    for (int i = 0; i < argc; i++)
        need += 1 + 20 + 2 + lens[i] + 2;
    if (need > cap)
        return 0;
    char *p = buf;
    *p++ = '*';
    p += bl_u64_dec(p, (uint64_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p += bl_u64_dec(p, lens[i]);
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], lens[i]);
        p += lens[i];
        *p++ = '\r';
        *p++ = '\n';
    }
    return (size_t)(p - buf);
}

static int send_op(redis_be *r, bl_lock *lock, enum bl_op_kind kind, int by_body)
{
    const bl_config *cfg = bl_manager_config(M(r));
    int s = kind == BL_OP_ACQUIRE ? BL_SCRIPT_ACQUIRE
            : kind == BL_OP_EXTEND ? BL_SCRIPT_EXTEND
                                   : BL_SCRIPT_RELEASE;
    const char *holder = bl_manager_holder(M(r));
    char n1[24], n2[24], n3[24];
    const char *argv[14];
    size_t lens[14];
    int argc = 0;
#define ARG(p, n) (argv[argc] = (p), lens[argc++] = (n))
#define NUM(buf, v) ARG(buf, bl_u64_dec(buf, (v)))
    if (by_body || !r->sha_ok[s]) {
        ARG("EVAL", 4);
        ARG(bl_scripts[s].body, strlen(bl_scripts[s].body));
    } else {
        ARG("EVALSHA", 7);
        ARG(r->sha[s], 40);
    }
    size_t len;
    const char *key = bl_lock_key_len(lock, &len);
    switch (kind) {
    case BL_OP_ACQUIRE:
        ARG("4", 1);
        ARG(key, len);
        for (int i = 0; i < 3; i++) {
            static const int order[3] = {BL_AUX_FENCE, BL_AUX_DONE, BL_AUX_QUEUE};
            const char *k = bl_lock_aux_key(lock, order[i], &len);
            ARG(k, len);
        }
        ARG(holder, strlen(holder));
        NUM(n1, bl_lock_ttl(lock));
        NUM(n2, BL_FENCE_TTL_MS);
        NUM(n3, bl_lock_queue_ttl(lock));
        ARG(bl_lock_queued(lock) ? "1" : "0", 1);
        break;
    case BL_OP_EXTEND:
        ARG("1", 1);
        ARG(key, len);
        ARG(holder, strlen(holder));
        NUM(n1, bl_lock_ttl(lock));
        break;
    default: {
        ARG("3", 1);
        ARG(key, len);
        const char *k = bl_lock_aux_key(lock, BL_AUX_DONE, &len);
        ARG(k, len);
        k = bl_lock_aux_key(lock, BL_AUX_QUEUE, &len);
        ARG(k, len);
        ARG(holder, strlen(holder));
        NUM(n1, kind == BL_OP_RELEASE_DONE ? cfg->done_ttl_ms : 0);
        NUM(n2, cfg->handoff_ms);
        break;
    }
    }
#undef ARG
#undef NUM
    char resp[RESP_STACK_MAX];
    size_t n = bl_resp_format(resp, sizeof resp, argc, argv, lens);
    int rc = n ? redisAsyncFormattedCommand(r->cmd.ac, op_reply_cb, lock, resp, n)
               : redisAsyncCommandArgv(r->cmd.ac, op_reply_cb, lock, argc, argv, lens);
    return rc == REDIS_OK ? 0 : BL_ECONN;
}

static int be_start(bl_backend *be, bl_lock *lock, enum bl_op_kind kind)
{
    redis_be *r = (redis_be *)be;
    if (r->cmd.state == CONN_DOWN || !r->cmd.ac) {
        snprintf(bl_lock_errbuf(lock), BL_ERRMSG_MAX, "not connected to Redis: %s",
                 r->cmd.last_err[0] ? r->cmd.last_err : "connection down");
        return BL_ECONN;
    }
    /* While connecting, hiredis buffers the command until the socket is up
     * and fails it with a NULL reply if the connect fails. */
    return send_op(r, lock, kind, 0);
}

static void be_leave(bl_backend *be, bl_lock *lock)
{
    redis_be *r = (redis_be *)be;
    if (r->cmd.state != CONN_UP)
        return; /* the queue entry expires with its TTL */
    size_t len;
    const char *q = bl_lock_aux_key(lock, BL_AUX_QUEUE, &len);
    const char *holder = bl_manager_holder(M(r));
    redisAsyncCommand(r->cmd.ac, NULL, NULL, "ZREM %b %s", q, len, holder);
}

/* ---- wake-ups: the subscriber connection --------------------------------------- */

/* (UN)SUBSCRIBE the channel "<key>|<holder>" of a wait queue. */
static int sub_command(redis_be *r, bl_wq *w, const char *verb, redisCallbackFn *cb)
{
    const char *holder = bl_manager_holder(M(r));
    return redisAsyncCommand(r->sub.ac, cb, r, "%s %b|%s", verb, w->key, w->keylen, holder);
}

/* The lock key of one of our channels, or NULL if it is not ours. */
static const char *channel_key(redis_be *r, const redisReply *ch, size_t *keylen)
{
    const char *holder = bl_manager_holder(M(r));
    size_t hl = strlen(holder);
    if (ch->len < hl + 2 || ch->str[ch->len - hl - 1] != '|' ||
        memcmp(ch->str + ch->len - hl, holder, hl) != 0)
        return NULL;
    *keylen = ch->len - hl - 1;
    return ch->str;
}

static void subscribe_wq(redis_be *r, bl_wq *w)
{
    if (!r->sub.ac || r->shutting)
        return;
    if (sub_command(r, w, "SUBSCRIBE", sub_cb) == REDIS_OK)
        w->sub = SUB_PENDING;
}

static void sub_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    redis_be *r = priv;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        r->sub.ac != ac)
        return; /* NULL: the connection went; went_down resets the states */
    const redisReply *type = reply->element[0], *ch = reply->element[1], *arg = reply->element[2];
    if (type->type != REDIS_REPLY_STRING || ch->type != REDIS_REPLY_STRING)
        return;
    bl_manager *m = M(r);
    size_t keylen;
    const char *key = channel_key(r, ch, &keylen);
    if (!key)
        return;
    bl_wq *w = bl_manager_wq_find(m, key, keylen);
    if (strcmp(type->str, "message") == 0) {
        /* "": the lock was handed to us; "*": it is done, look again. */
        int all = arg->type == REDIS_REPLY_STRING && arg->len == 1 && arg->str[0] == '*';
        const char *me = bl_manager_holder(m);
        bl_manager_wake(m, key, keylen, all ? "*" : me, all ? 1 : strlen(me));
    } else if (strcmp(type->str, "subscribe") == 0) {
        if (!w)
            return;
        w->sub = SUB_ON;
        /* A release between our busy attempt and this subscription was not
         * heard: everyone waiting retries once now. */
        if (w->nwait > 0)
            bl_manager_wake(m, key, keylen, "*", 1);
    } else if (strcmp(type->str, "unsubscribe") == 0) {
        if (!w)
            return;
        w->sub = SUB_NONE;
        if (w->nwait > 0)
            subscribe_wq(r, w); /* a waiter came back meanwhile */
        else
            bl_manager_wq_drop(m, w);
    }
}

typedef struct sweep {
    redis_be *r;
    uint64_t now;
    int lingering;
} sweep;

static void sweep_each(bl_wq *w, void *arg)
{
    sweep *s = arg;
    if (w->nwait > 0 || w->sub != SUB_ON)
        return;
    if (s->now - w->idle_since >= LINGER_MS) {
        if (sub_command(s->r, w, "UNSUBSCRIBE", NULL) == REDIS_OK)
            w->sub = SUB_LEAVING;
    } else {
        s->lingering = 1;
    }
}

static void linger_cb(void *data)
{
    redis_be *r = data;
    r->linger_armed = 0;
    if (!r->sub.ac || r->sub.state != CONN_UP || r->shutting)
        return;
    sweep s = {r, LOOP(r)->now_ms(LOOP(r)->impl), 0};
    bl_manager_wq_each(M(r), sweep_each, &s);
    if (s.lingering) {
        r->linger_armed = 1;
        LOOP(r)->timer_start(r->linger_timer, LINGER_MS / 2);
    }
}

static void be_watch(bl_backend *be, bl_wq *w, int on)
{
    redis_be *r = (redis_be *)be;
    if (r->shutting)
        return;
    if (on) {
        if (!r->sub_started) {
            r->sub_started = 1;
            connect_now(&r->sub); /* subscribes every waiting key itself */
            return;
        }
        if (w->sub == SUB_NONE)
            subscribe_wq(r, w);
        return;
    }
    if (w->sub != SUB_NONE && !r->linger_armed) {
        r->linger_armed = 1;
        LOOP(r)->timer_start(r->linger_timer, LINGER_MS);
    }
}

/* ---- admin operations ----------------------------------------------------------- */

static void defer_cb(void *data)
{
    redis_be *r = data;
    bl_aop *list = r->deferred;
    r->deferred = NULL;
    while (list) {
        bl_aop *op = list;
        list = op->next;
        bl_aop_done(op);
    }
}

static void end_later(redis_be *r, bl_aop *op, int status, const char *msg)
{
    if (op->timer)
        LOOP(r)->timer_stop(op->timer);
    op->status = status;
    snprintf(op->errmsg, sizeof op->errmsg, "%s", msg);
    op->next = r->deferred;
    r->deferred = op;
    LOOP(r)->timer_start(r->defer_timer, 0);
}

/* An answer came for op. 0 if op was already reported as timed out: it is
 * freed here and the answer dropped. */
static int aop_answered(bl_aop *op)
{
    if (op->orphaned) {
        bl_aop_free(op);
        return 0;
    }
    return 1;
}

/* No answer within command_timeout_ms (a paused or hung server): report it
 * now; the late answer is dropped by aop_answered. */
static void aop_timeout_cb(void *data)
{
    bl_aop *op = data;
    op->status = BL_ECONN;
    snprintf(op->errmsg, sizeof op->errmsg, "Redis did not answer in time");
    op->orphaned = 1;
    bl_aop_deliver(op);
}

/* (Re)start the answer deadline of op. */
static void aop_arm(redis_be *r, bl_aop *op)
{
    if (op->timer)
        LOOP(r)->timer_start(op->timer, bl_manager_config(M(r))->command_timeout_ms);
}

static void admin_fail(bl_aop *op, redisAsyncContext *ac, const redisReply *reply)
{
    conn *c = ac->data;
    op->status = reply ? BL_EREDIS : BL_ECONN;
    snprintf(op->errmsg, sizeof op->errmsg, "%s",
             reply && reply->type == REDIS_REPLY_ERROR && reply->str[0] ? reply->str
             : reply                                   ? "unexpected reply"
                                                       : conn_errmsg(c, ac));
    bl_aop_done(op);
}

static void ping_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_aop *op = priv;
    if (!aop_answered(op))
        return;
    if (!reply || reply->type != REDIS_REPLY_STATUS) {
        admin_fail(op, ac, reply);
        return;
    }
    op->latency_ms = (double)(bl_now_us() - op->started_us) / 1000.0;
    op->status = BL_OK;
    bl_aop_done(op);
}

/* The inspect script's reply as lock info. Pure, so it can be fuzzed.
 * BL_OK: info's held, pttl_ms, done, last_token are set, and info->holder
 * points at a malloc'd copy stored in *holder_buf (the caller frees it).
 * BL_EREDIS: not an inspect answer; info->errmsg says why (the server's
 * message for an error reply; it points into reply). BL_ENOMEM. */
int bl_redis_inspect_reply(const redisReply *reply, bl_lock_info *info, char **holder_buf)
{
    *holder_buf = NULL;
    info->held = 0;
    info->holder = NULL;
    info->pttl_ms = -1;
    info->done = 0;
    info->last_token = 0;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        info->errmsg = reply->type != REDIS_REPLY_ERROR ? "unexpected reply"
                       : reply->str && reply->str[0]   ? reply->str
                                                       : "Redis sent an empty error";
        return BL_EREDIS;
    }
    redisReply **e = reply->element;
    if (e[0]->type == REDIS_REPLY_STRING) {
        const char *v = e[0]->str;
        *holder_buf = strdup(v[0] == '~' ? v + 1 : v); /* "~": handed to it */
        if (!*holder_buf) {
            info->errmsg = "out of memory";
            return BL_ENOMEM;
        }
        info->held = 1;
        info->holder = *holder_buf;
    }
    info->pttl_ms = info->held && e[1]->type == REDIS_REPLY_INTEGER ? e[1]->integer : -1;
    info->done = e[2]->type == REDIS_REPLY_INTEGER && e[2]->integer == 1;
    if (e[3]->type == REDIS_REPLY_STRING)
        info->last_token = strtoull(e[3]->str, NULL, 10);
    return BL_OK;
}

static void inspect_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_aop *op = priv;
    if (!aop_answered(op))
        return;
    if (!reply) {
        admin_fail(op, ac, reply);
        return;
    }
    op->status = bl_redis_inspect_reply(reply, &op->info, &op->holder_buf);
    if (op->status != BL_OK)
        snprintf(op->errmsg, sizeof op->errmsg, "%s", op->info.errmsg);
    bl_aop_done(op);
}

static int scan_step(redis_be *r, bl_aop *op);

/* A lock key is "<prefix>:<mp>:<posting>" with a non-empty mp (not "P::",
 * the aux keys) and a non-empty posting: ids are never empty. */
static int is_lock_key(const char *k, size_t n, const char *prefix, size_t plen)
{
    if (n < plen + 4 || memcmp(k, prefix, plen) != 0 || k[plen] != ':' || k[plen + 1] == ':')
        return 0;
    const char *c = memchr(k + plen + 2, ':', n - plen - 2);
    return c && c + 1 < k + n;
}

/* A SCAN reply. Pure, so it can be fuzzed. Returns -1 if it is not a SCAN
 * answer (an error reply, a cursor that is not 1..cap-1 digits), else the
 * number of lock keys under prefix it lists, stored as pointers into reply
 * in keys/lens (room for reply's element[1]->elements entries); the next
 * cursor goes to cursor[0..cap). */
long bl_redis_scan_reply(const redisReply *reply, const char *prefix, char *cursor, size_t cap,
                         const char **keys, size_t *lens)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_ARRAY)
        return -1;
    const redisReply *c = reply->element[0];
    if (c->len == 0 || c->len >= cap || strspn(c->str, "0123456789") != c->len)
        return -1; /* cut short, the next SCAN would start over: never loop */
    memcpy(cursor, c->str, c->len);
    cursor[c->len] = '\0';
    size_t plen = strlen(prefix);
    const redisReply *list = reply->element[1];
    long n = 0;
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *k = list->element[i];
        if (k->type == REDIS_REPLY_STRING && is_lock_key(k->str, k->len, prefix, plen)) {
            keys[n] = k->str;
            lens[n++] = k->len;
        }
    }
    return n;
}

static void cleanup_batch_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_aop *op = priv;
    if (!aop_answered(op))
        return;
    if (!reply || reply->type != REDIS_REPLY_INTEGER || reply->integer < 0) {
        admin_fail(op, ac, reply);
        return;
    }
    op->removed += (uint64_t)reply->integer;
    conn *c = ac->data;
    if (strcmp(op->cursor, "0") == 0) {
        op->status = BL_OK;
        bl_aop_done(op);
    } else if (scan_step(c->r, op) != 0) {
        admin_fail(op, ac, NULL);
    }
}

static void scan_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_aop *op = priv;
    if (!aop_answered(op))
        return;
    conn *c = ac->data;
    size_t room = reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
                          reply->element[1]->type == REDIS_REPLY_ARRAY
                      ? reply->element[1]->elements
                      : 0;
    const char **argv = malloc((room + 6) * sizeof *argv);
    size_t *lens = malloc((room + 6) * sizeof *lens);
    if (!argv || !lens) {
        free(argv);
        free(lens);
        op->status = BL_ENOMEM;
        snprintf(op->errmsg, sizeof op->errmsg, "out of memory");
        bl_aop_done(op);
        return;
    }
    redis_be *r = c->r;
    long nkeys = reply ? bl_redis_scan_reply(reply, bl_manager_prefix(M(r)), op->cursor,
                                             sizeof op->cursor, argv + 3, lens + 3)
                       : -1;
    if (nkeys < 0) {
        free(argv);
        free(lens);
        admin_fail(op, ac, reply);
        return;
    }
    int argc = 3 + (int)nkeys;
    int rc;
    if (nkeys > 0) {
        char nk[24];
        const char *holder = op->mine_only ? bl_manager_holder(M(r)) : "";
        argv[0] = "EVAL", lens[0] = 4;
        argv[1] = bl_scripts[BL_SCRIPT_CLEANUP].body;
        lens[1] = strlen(argv[1]);
        argv[2] = nk, lens[2] = (size_t)snprintf(nk, sizeof nk, "%ld", nkeys);
        argv[argc] = holder, lens[argc++] = strlen(holder);
        rc = redisAsyncCommandArgv(ac, cleanup_batch_cb, op, argc, argv, lens);
        aop_arm(r, op);
    } else if (strcmp(op->cursor, "0") == 0) {
        free(argv);
        free(lens);
        op->status = BL_OK;
        bl_aop_done(op);
        return;
    } else {
        rc = scan_step(r, op);
    }
    free(argv);
    free(lens);
    if (rc != REDIS_OK)
        admin_fail(op, ac, NULL);
}

static int scan_step(redis_be *r, bl_aop *op)
{
    /* MATCH takes a glob: escape the prefix's glob characters. */
    const char *prefix = bl_manager_prefix(M(r));
    char pat[2 * BL_PREFIX_MAX + 4], *p = pat;
    for (const char *s = prefix; *s; s++) {
        if (strchr("*?[]\\", *s))
            *p++ = '\\';
        *p++ = *s;
    }
    *p++ = ':';
    *p++ = '*';
    *p = '\0';
    aop_arm(r, op);
    return redisAsyncCommand(r->cmd.ac, scan_cb, op, "SCAN %s MATCH %s COUNT 1000", op->cursor,
                             pat);
}

static int be_admin(bl_backend *be, bl_aop *op)
{
    redis_be *r = (redis_be *)be;
    if (r->cmd.state == CONN_DOWN || !r->cmd.ac) {
        char msg[BL_ERRMSG_MAX];
        snprintf(msg, sizeof msg, "not connected to Redis: %s",
                 r->cmd.last_err[0] ? r->cmd.last_err : "connection down");
        end_later(r, op, BL_ECONN, msg);
        return 0;
    }
    /* Every answer is waited for at most command_timeout_ms (per SCAN step
     * for cleanup): a hung server is reported, not waited for. */
    op->timer = LOOP(r)->timer_new(LOOP(r)->impl, aop_timeout_cb, op);
    if (!op->timer)
        return BL_ENOMEM;
    aop_arm(r, op);
    int rc;
    switch (op->kind) {
    case BL_AOP_PING:
        rc = redisAsyncCommand(r->cmd.ac, ping_cb, op, "PING");
        break;
    case BL_AOP_INSPECT:
        rc = redisAsyncCommand(r->cmd.ac, inspect_cb, op, "EVAL %s 3 %s %s %s",
                               bl_scripts[BL_SCRIPT_INSPECT].body, op->key, op->done_key,
                               op->fence_key);
        break;
    default:
        snprintf(op->cursor, sizeof op->cursor, "0");
        rc = scan_step(r, op);
        break;
    }
    if (rc != REDIS_OK) {
        end_later(r, op, BL_ECONN, "connection to Redis is closing");
        return 0;
    }
    return 0;
}

static int be_conn_state(const bl_backend *be)
{
    const redis_be *r = (const redis_be *)be;
    return r->cmd.state == CONN_UP ? BL_CONN_UP
           : r->cmd.state == CONN_CONNECTING ? BL_CONN_CONNECTING
                                             : BL_CONN_DOWN;
}

/* ---- lifecycle ---------------------------------------------------------------- */

static void be_shutdown(bl_backend *be, int force)
{
    redis_be *r = (redis_be *)be;
    r->shutting = 1;
    LOOP(r)->timer_stop(r->cmd.timer);
    LOOP(r)->timer_stop(r->sub.timer);
    LOOP(r)->timer_stop(r->linger_timer);
    r->cmd.role = r->sub.role = TR_NONE;
    if (r->sub.ac)
        drop_connection(&r->sub, "manager closed");
    if (r->cmd.ac && (force || r->cmd.state != CONN_UP)) {
        drop_connection(&r->cmd, force ? "manager closed before Redis answered" : "manager closed");
    } else if (r->cmd.ac) {
        /* Graceful: hiredis waits for pending replies, then disconnects and
         * calls on_disconnect, which reports closed. */
        redisAsyncDisconnect(r->cmd.ac);
        return;
    }
    notify_closed(r);
}

static void be_free(bl_backend *be)
{
    redis_be *r = (redis_be *)be;
    const bl_loop *loop = LOOP(r);
    if (r->sub.ac)
        drop_connection(&r->sub, "manager freed");
    if (r->cmd.ac)
        drop_connection(&r->cmd, "manager freed");
    bl_timer *timers[] = {r->cmd.timer, r->sub.timer, r->defer_timer, r->linger_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
        if (timers[i])
            loop->timer_free(timers[i]);
    while (r->deferred) { /* not reached: close waits for admin ops */
        bl_aop *op = r->deferred;
        r->deferred = op->next;
        bl_aop_done(op);
    }
    bl_url_free(&r->url);
    free(r);
}

static int resolve_once(redis_be *r)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, r->host, buf) == 1 || inet_pton(AF_INET6, r->host, buf) == 1)
        return 0;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(r->host, NULL, &hints, &res) != 0 || !res)
        return -1;
    const void *addr = res->ai_family == AF_INET6
                           ? (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                           : (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    const char *ok = inet_ntop(res->ai_family, addr, r->resolved, sizeof r->resolved);
    freeaddrinfo(res);
    if (!ok)
        return -1;
    r->host = r->resolved;
    return 0;
}

static const bl_backend_vt redis_vt = {
    "redis", be_start, be_leave, be_watch, be_admin, be_conn_state, be_shutdown, be_free,
};

int bl_redis_backend_new(bl_manager *m, bl_backend **out)
{
    const bl_config *cfg = bl_manager_config(m);
    redis_be *r = calloc(1, sizeof *r);
    if (!r)
        return BL_ENOMEM;
    r->base.vt = &redis_vt;
    r->base.m = m;
    if (cfg->url) {
        int rc = bl_url_parse(cfg->url, &r->url, NULL, 0);
        if (rc != BL_OK) {
            free(r);
            return rc;
        }
        r->host = r->url.host;
        r->port = r->url.port;
        r->unix_path = r->url.unix_path;
        r->username = r->url.username;
        r->password = r->url.password;
        r->db = r->url.db;
    } else {
        r->host = cfg->host;
        r->port = cfg->port;
        r->unix_path = cfg->unix_path;
        r->username = cfg->username;
        r->password = cfg->password;
        r->db = cfg->db;
    }
    /* hiredis would resolve a name on every (re)connect, synchronously, on
     * the loop. Resolve it once here - bl_manager_new is a setup call - and
     * reconnect to the address. */
    if (r->host && strcmp(r->host, "localhost") == 0)
        r->host = "127.0.0.1";
    if (r->host && !r->unix_path && resolve_once(r) != 0) {
        bl_log(m, BL_LOG_ERROR, "bidlock: cannot resolve the Redis host name");
        bl_url_free(&r->url);
        free(r);
        return BL_ECONN;
    }
    const bl_loop *loop = bl_manager_loop(m);
    r->cmd.r = r->sub.r = r;
    r->sub.is_sub = 1;
    r->cmd.timer = loop->timer_new(loop->impl, conn_timer_cb, &r->cmd);
    r->sub.timer = loop->timer_new(loop->impl, conn_timer_cb, &r->sub);
    r->defer_timer = loop->timer_new(loop->impl, defer_cb, r);
    r->linger_timer = loop->timer_new(loop->impl, linger_cb, r);
    if (!r->cmd.timer || !r->sub.timer || !r->defer_timer || !r->linger_timer) {
        r->base.vt = &redis_vt;
        be_free(&r->base);
        return BL_ENOMEM;
    }
    connect_now(&r->cmd);
    *out = &r->base;
    return 0;
}
