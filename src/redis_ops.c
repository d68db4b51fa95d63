/* redis_ops.c - lock operations as script calls: the script cache (SCRIPT
 * LOAD at connect, EVALSHA, re-run by body on NOSCRIPT), the arguments of
 * each script, and a reply's way back to op->done. */
#include <stdio.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "redis.h"
#include "resp.h"

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
void redis_load_scripts(redis_be *r)
{
    if (r->loads_pending > 0)
        return;
    for (int i = 0; i < EVALSHA_SCRIPTS; i++)
        if (redisAsyncCommand(r->cmd.ac, script_load_cb, (void *)(intptr_t)i, "SCRIPT LOAD %s",
                              bl_scripts[i].body) == REDIS_OK)
            r->loads_pending++;
}

static int send_op(redis_be *r, bl_op *op, int by_body);

static void op_reply_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_op *op = priv;
    conn *c = ac->data;
    bl_op_result res = {BL_EREDIS, 0, 0, NULL, 0};

    if (!reply) {
        res.status = BL_ECONN;
        res.errmsg = redis_conn_errmsg(c, ac);
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
        if (send_op(c->r, op, 1) == 0) {
            redis_load_scripts(c->r);
            return;
        }
        res.status = BL_ECONN;
        res.errmsg = "connection to Redis lost while reloading scripts";
    } else {
        bl_redis_interpret(op->kind, reply, &res);
    }
    op->done(op, &res);
}

#define RESP_STACK_MAX 2048

static int send_op(redis_be *r, bl_op *op, int by_body)
{
    const bl_config *cfg = r->h.cfg;
    const bl_keys *k = op->keys;
    int s = op->kind == BL_OP_ACQUIRE  ? BL_SCRIPT_ACQUIRE
            : op->kind == BL_OP_EXTEND ? BL_SCRIPT_EXTEND
                                       : BL_SCRIPT_RELEASE;
    char n1[24], n2[24], n3[24];
    const char *argv[16];
    size_t lens[16];
    int argc = 0;
#define ARG(p, n) (argv[argc] = (p), lens[argc++] = (n))
#define NUM(buf, v) ARG(buf, bl_u64_dec(buf, (v)))
#define KEY(i) ARG(k->k[i], k->len[i])
    if (by_body || !r->sha_ok[s]) {
        ARG("EVAL", 4);
        ARG(bl_scripts[s].body, strlen(bl_scripts[s].body));
    } else {
        ARG("EVALSHA", 7);
        ARG(r->sha[s], 40);
    }
    switch (op->kind) {
    case BL_OP_ACQUIRE:
        ARG("4", 1);
        KEY(BL_KEY_LOCK);
        KEY(BL_KEY_FENCE);
        KEY(BL_KEY_DONE);
        KEY(BL_KEY_QUEUE);
        ARG(r->h.holder, r->h.holder_len);
        NUM(n1, op->ttl_ms);
        NUM(n2, BL_FENCE_TTL_MS);
        NUM(n3, op->queue_ttl_ms);
        ARG(op->queued ? "1" : "0", 1);
        ARG(op->keep_queued ? "1" : "0", 1);
        ARG(op->reclaim ? "1" : "0", 1);
        break;
    case BL_OP_EXTEND:
        ARG("1", 1);
        KEY(BL_KEY_LOCK);
        ARG(r->h.holder, r->h.holder_len);
        NUM(n1, op->ttl_ms);
        break;
    default:
        ARG("3", 1);
        KEY(BL_KEY_LOCK);
        KEY(BL_KEY_DONE);
        KEY(BL_KEY_QUEUE);
        ARG(r->h.holder, r->h.holder_len);
        NUM(n1, op->kind == BL_OP_RELEASE_DONE ? cfg->done_ttl_ms : 0);
        NUM(n2, cfg->handoff_ms);
        break;
    }
#undef ARG
#undef NUM
#undef KEY
    char resp[RESP_STACK_MAX];
    size_t n = bl_resp_format(resp, sizeof resp, argc, argv, lens);
    int rc = n ? redisAsyncFormattedCommand(r->cmd.ac, op_reply_cb, op, resp, n)
               : redisAsyncCommandArgv(r->cmd.ac, op_reply_cb, op, argc, argv, lens);
    return rc == REDIS_OK ? 0 : BL_ECONN;
}

int redis_op_start(bl_backend *be, bl_op *op)
{
    redis_be *r = (redis_be *)be;
    if (r->cmd.state == CONN_DOWN || !r->cmd.ac) {
        snprintf(op->errbuf, BL_ERRMSG_MAX, "not connected to Redis: %s",
                 r->cmd.last_err[0] ? r->cmd.last_err : "connection down");
        return BL_ECONN;
    }
    /* While connecting, hiredis buffers the command until the socket is up
     * and fails it with a NULL reply if the connect fails. */
    return send_op(r, op, 0);
}

void redis_op_leave(bl_backend *be, const bl_keys *keys)
{
    redis_be *r = (redis_be *)be;
    if (r->cmd.state != CONN_UP)
        return; /* the queue entry expires with its TTL */
    redisAsyncCommand(r->cmd.ac, NULL, NULL, "ZREM %b %b", keys->k[BL_KEY_QUEUE],
                      keys->len[BL_KEY_QUEUE], r->h.holder, r->h.holder_len);
}
