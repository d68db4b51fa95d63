/* redis_admin.c - admin operations on the command connection: PING,
 * the inspect script, and cleanup (SCAN steps, each batch of lock keys
 * through the cleanup script). Every answer is waited for at most
 * command_timeout_ms: a hung server is reported, not waited for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "acl.h"
#include "ids.h"
#include "redis.h"
#include "resp.h"

void redis_defer_cb(void *data)
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
        op->release(op);
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
    op->deliver(op);
}

/* (Re)start the answer deadline of op. */
static void aop_arm(redis_be *r, bl_aop *op)
{
    if (op->timer)
        LOOP(r)->timer_start(op->timer, r->h.cfg->command_timeout_ms);
}

/* An ACL refusal of command (script: the bidlock script it ran, or -1) as
 * a message that names what the user lacks (acl.h). */
static void acl_errmsg(bl_aop *op, redis_be *r, const char *err, const char *command, int script)
{
    bl_acl_explain(op->errmsg, sizeof op->errmsg, err, command,
                   script >= 0 ? bl_scripts[script].name : NULL,
                   script >= 0 ? bl_scripts[script].body : NULL, r->h.prefix);
}

static void admin_fail(bl_aop *op, redisAsyncContext *ac, const redisReply *reply,
                       const char *command, int script)
{
    conn *c = ac->data;
    op->status = reply ? BL_EREDIS : BL_ECONN;
    if (reply && reply->type == REDIS_REPLY_ERROR && bl_acl_denied(reply->str))
        acl_errmsg(op, c->r, reply->str, command, script);
    else
        snprintf(op->errmsg, sizeof op->errmsg, "%s",
                 reply && reply->type == REDIS_REPLY_ERROR && reply->str[0] ? reply->str
                 : reply                                   ? "unexpected reply"
                                                           : redis_conn_errmsg(c, ac));
    bl_aop_done(op);
}

static void ping_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_aop *op = priv;
    if (!aop_answered(op))
        return;
    if (!reply || reply->type != REDIS_REPLY_STATUS) {
        admin_fail(op, ac, reply, "PING", -1);
        return;
    }
    op->latency_ms = (double)(bl_now_us() - op->started_us) / 1000.0;
    op->status = BL_OK;
    redis_be *r = ((conn *)ac->data)->r;
    snprintf(op->role, sizeof op->role, "%s", r->role);
    op->replicas = r->replicas_known ? r->replicas_now : -1;
    snprintf(op->server, sizeof op->server, "%s", r->master_now);
    bl_aop_done(op);
}

static void inspect_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_aop *op = priv;
    if (!aop_answered(op))
        return;
    if (!reply) {
        admin_fail(op, ac, reply, "EVAL", BL_SCRIPT_INSPECT);
        return;
    }
    op->status = bl_redis_inspect_reply(reply, &op->info, &op->holder_buf);
    if (op->status != BL_OK && reply->type == REDIS_REPLY_ERROR && bl_acl_denied(reply->str))
        acl_errmsg(op, ((conn *)ac->data)->r, reply->str, "EVAL", BL_SCRIPT_INSPECT);
    else if (op->status != BL_OK)
        snprintf(op->errmsg, sizeof op->errmsg, "%s", op->info.errmsg);
    bl_aop_done(op);
}

static int scan_step(redis_be *r, bl_aop *op);

/* Per-key script calls of a SCAN batch (cleanup on a cluster node, the
 * lock list): keep the first failure, the server's words or the
 * connection's. */
static void batch_error(bl_aop *op, redisAsyncContext *ac, const redisReply *reply)
{
    op->status = reply ? BL_EREDIS : BL_ECONN;
    snprintf(op->errmsg, sizeof op->errmsg, "%s",
             reply && reply->type == REDIS_REPLY_ERROR ? reply->str
             : reply                                   ? "unexpected reply"
                                                       : redis_conn_errmsg(ac->data, ac));
}

/* One answer of such a batch is in: the last one goes on with the scan,
 * or ends the operation. */
static void batch_answered(bl_aop *op, redisAsyncContext *ac)
{
    if (--op->inflight > 0)
        return;
    if (!aop_answered(op))
        return;
    conn *c = ac->data;
    if (op->status != BL_OK || strcmp(op->cursor, "0") == 0) {
        bl_aop_done(op);
    } else if (!c || scan_step(c->r, op) != 0) {
        op->status = BL_ECONN;
        snprintf(op->errmsg, sizeof op->errmsg, "connection to Redis is closing");
        bl_aop_done(op);
    }
}

/* A cluster node: one script call per key (keys of a SCAN batch are in
 * many slots). The last answer of a batch goes on with the scan; an error
 * is kept and reported once they are all in. */
static void cleanup_key_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_aop *op = priv;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer >= 0)
        op->removed += (uint64_t)reply->integer;
    else if (op->status == BL_OK) {
        batch_error(op, ac, reply);
    }
    batch_answered(op, ac);
}

/* bl_list_locks: one lock_info script per lock key of a SCAN batch (its
 * fence counter in the same slot), pipelined; the last answer goes on
 * with the scan. */
static void locks_key_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_aop *op = priv;
    const char *key, *holder;
    size_t klen, hlen;
    int64_t pttl;
    uint64_t token, held;
    int got = reply && reply->type != REDIS_REPLY_ERROR
                  ? bl_redis_lock_info_reply(reply, &key, &klen, &holder, &hlen, &pttl, &token,
                                             &held)
                  : -1;
    if (got < 0 && op->status == BL_OK) {
        batch_error(op, ac, reply);
    } else if (got > 0 && op->status == BL_OK) {
        if (bl_aop_add_lock(op, key, klen, holder, hlen, pttl, token, held)) {
            op->status = BL_ENOMEM;
            snprintf(op->errmsg, sizeof op->errmsg, "out of memory");
        }
    }
    batch_answered(op, ac);
}

static int locks_per_key(redis_be *r, redisAsyncContext *ac, bl_aop *op, const char **keys,
                         const size_t *lens, long nkeys)
{
    op->inflight = 0;
    int failed = 0;
    for (long i = 0; i < nkeys && !failed; i++) {
        char fence[BL_PREFIX_MAX + 2 * BL_ID_MAX + 16];
        size_t flen = bl_keys_fence_of(fence, sizeof fence, keys[i], lens[i]);
        if (!flen)
            continue; /* longer than any name bidlock makes: not one of ours */
        const char *argv[5] = {"EVAL", r->body[BL_SCRIPT_LOCK_INFO], "2", keys[i], fence};
        size_t alen[5] = {4, strlen(argv[1]), 1, lens[i], flen};
        failed = redisAsyncCommandArgv(ac, locks_key_cb, op, 5, argv, alen) != REDIS_OK;
        op->inflight += !failed;
    }
    aop_arm(r, op);
    if (op->inflight) /* the last answer goes on */
        return REDIS_OK;
    if (failed)
        return REDIS_ERR;
    if (strcmp(op->cursor, "0") != 0)
        return scan_step(r, op);
    bl_aop_done(op);
    return REDIS_OK;
}

static int cleanup_per_key(redis_be *r, redisAsyncContext *ac, bl_aop *op, const char **keys,
                           const size_t *lens, long nkeys, long nlocks)
{
    const char *holder = op->mine_only ? r->h.holder : "";
    op->status = BL_OK;
    op->inflight = 0;
    for (long i = 0; i < nkeys; i++) {
        const char *argv[6] = {"EVAL", r->body[BL_SCRIPT_CLEANUP], "1", keys[i], holder,
                               i < nlocks ? "1" : "0"};
        size_t alen[6] = {4, strlen(argv[1]), 1, lens[i], strlen(holder), 1};
        if (redisAsyncCommandArgv(ac, cleanup_key_cb, op, 6, argv, alen) != REDIS_OK)
            break;
        op->inflight++;
    }
    aop_arm(r, op);
    return op->inflight == nkeys ? REDIS_OK : op->inflight ? REDIS_OK : REDIS_ERR;
}

static void cleanup_batch_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_aop *op = priv;
    if (!aop_answered(op))
        return;
    if (!reply || reply->type != REDIS_REPLY_INTEGER || reply->integer < 0) {
        admin_fail(op, ac, reply, "EVAL", BL_SCRIPT_CLEANUP);
        return;
    }
    op->removed += (uint64_t)reply->integer;
    conn *c = ac->data;
    if (strcmp(op->cursor, "0") == 0) {
        op->status = BL_OK;
        bl_aop_done(op);
    } else if (scan_step(c->r, op) != 0) {
        admin_fail(op, ac, NULL, NULL, -1);
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
    const char **argv = malloc((room + 7) * sizeof *argv);
    size_t *lens = malloc((room + 7) * sizeof *lens);
    if (!argv || !lens) {
        free(argv);
        free(lens);
        op->status = BL_ENOMEM;
        snprintf(op->errmsg, sizeof op->errmsg, "out of memory");
        bl_aop_done(op);
        return;
    }
    redis_be *r = c->r;
    long nkeys = reply ? bl_redis_scan_reply(reply, r->h.prefix, op->cursor,
                                             sizeof op->cursor, argv + 3, lens + 3)
                       : -1;
    if (nkeys < 0) {
        free(argv);
        free(lens);
        admin_fail(op, ac, reply, "SCAN", -1);
        return;
    }
    long nlocks = nkeys;
    if (op->kind == BL_AOP_LOCKS) {
        int rc = nkeys > 0                     ? locks_per_key(r, ac, op, argv + 3, lens + 3, nkeys)
                 : strcmp(op->cursor, "0") != 0 ? scan_step(r, op)
                                                : (op->status = BL_OK, bl_aop_done(op), REDIS_OK);
        free(argv);
        free(lens);
        if (rc != REDIS_OK)
            admin_fail(op, ac, NULL, NULL, -1);
        return;
    }
    if (!op->mine_only) /* and the wait queues of the 0.1 layout */
        for (size_t i = 0; i < room; i++) {
            const redisReply *k = reply->element[1]->element[i];
            if (k->type == REDIS_REPLY_STRING &&
                bl_keys_is_old_queue(k->str, k->len, r->h.prefix, strlen(r->h.prefix))) {
                argv[3 + nkeys] = k->str;
                lens[3 + nkeys++] = k->len;
            }
        }
    int argc = 3 + (int)nkeys;
    int rc;
    if (nkeys > 0 && r->cluster_node) {
        rc = cleanup_per_key(r, ac, op, argv + 3, lens + 3, nkeys, nlocks);
    } else if (nkeys > 0) {
        char nk[24], nl[24];
        const char *holder = op->mine_only ? r->h.holder : "";
        argv[0] = "EVAL", lens[0] = 4;
        argv[1] = r->body[BL_SCRIPT_CLEANUP];
        lens[1] = strlen(argv[1]);
        argv[2] = nk, lens[2] = (size_t)snprintf(nk, sizeof nk, "%ld", nkeys);
        argv[argc] = holder, lens[argc++] = strlen(holder);
        argv[argc] = nl, lens[argc++] = (size_t)snprintf(nl, sizeof nl, "%ld", nlocks);
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
        admin_fail(op, ac, NULL, NULL, -1);
}

static int scan_step(redis_be *r, bl_aop *op)
{
    char pat[2 * BL_PREFIX_MAX + 4];
    bl_keys_scan_pattern(pat, r->h.prefix); /* MATCH takes a glob: escaped */
    aop_arm(r, op);
    return redisAsyncCommand(r->cmd.ac, scan_cb, op, "SCAN %s MATCH %s COUNT 1000", op->cursor,
                             pat);
}

static int send_inspect(redis_be *r, bl_aop *op)
{
    static const int order[] = {BL_KEY_LOCK, BL_KEY_DONE, BL_KEY_FENCE, BL_KEY_OLD_DONE,
                                BL_KEY_OLD_FENCE};
    const bl_keys *k = op->keys;
    int nkeys = r->legacy_keys ? 5 : 3;
    const char *argv[3 + 5];
    size_t lens[3 + 5];
    argv[0] = "EVAL", lens[0] = 4;
    argv[1] = r->body[BL_SCRIPT_INSPECT], lens[1] = strlen(argv[1]);
    argv[2] = nkeys == 5 ? "5" : "3", lens[2] = 1;
    for (int i = 0; i < nkeys; i++)
        argv[3 + i] = k->k[order[i]], lens[3 + i] = k->len[order[i]];
    return redisAsyncCommandArgv(r->cmd.ac, inspect_cb, op, 3 + nkeys, argv, lens);
}

int redis_admin(bl_backend *be, bl_aop *op)
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
        redis_ask_role(r); /* answered first: the health reads what it said */
        rc = redisAsyncCommand(r->cmd.ac, ping_cb, op, "PING");
        break;
    case BL_AOP_INSPECT:
        rc = send_inspect(r, op);
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
