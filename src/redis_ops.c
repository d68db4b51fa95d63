/* redis_ops.c - lock operations as script calls: the script cache (SCRIPT
 * LOAD at connect, EVALSHA, re-run by body on NOSCRIPT), the arguments of
 * each script, and a reply's way back to op->done. */
#include <stdio.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "acl.h"
#include "redis.h"
#include "resp.h"

static void script_load_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    conn *c = ac->data;
    int i = (int)(intptr_t)priv;
    if (c && c->r->loads_pending > 0)
        c->r->loads_pending--;
    if (c && reply && reply->type == REDIS_REPLY_ERROR && bl_acl_denied(reply->str) && i == 0) {
        char msg[BL_ERRMSG_MAX];
        bl_host_log(&c->r->h, BL_LOG_WARN, "bidlock: %s; scripts are sent whole every call",
                    bl_acl_explain(msg, sizeof msg, reply->str, "SCRIPT|LOAD", NULL, NULL,
                                   c->r->h.prefix));
    }
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
                              r->body[i]) == REDIS_OK)
            r->loads_pending++;
}

static int send_op(redis_be *r, bl_op *op, enum bl_op_kind kind, int by_body,
                   redisCallbackFn *cb);
static int script_of(enum bl_op_kind kind, size_t nkeys);
static int hold_for_wait(redis_be *r, redisAsyncContext *ac, bl_op *op, const bl_op_result *res);

/* Give a grant back, holder-checked, without waiting for the answer. */
static void send_release(redis_be *r, bl_op *op)
{
    send_op(r, op, BL_OP_RELEASE, !r->sha_ok[BL_SCRIPT_RELEASE], NULL);
}

/* A direct hand-off nobody here wants (backend.h, granted): release it,
 * holder-checked, which hands it on to the next waiter. Names from the lock
 * key alone; where the 0.1 layout's names would go (one server), the new
 * ones stand in: a plain release reads neither. */
void redis_give_back(redis_be *r, const char *key, size_t keylen)
{
    enum { NAME_CAP = 640 }; /* a lock key is far shorter (ids.c bounds its parts) */
    if (r->cmd.state != CONN_UP || !r->cmd.ac || keylen + 8 > NAME_CAP)
        return; /* the lease ends by itself after handoff_ms */
    char q[NAME_CAP], d[NAME_CAP], f[NAME_CAP];
    bl_keys k = {{0}, {0}};
    k.k[BL_KEY_LOCK] = key, k.len[BL_KEY_LOCK] = keylen;
    k.len[BL_KEY_QUEUE] = bl_keys_tagged_of(q, sizeof q, key, keylen, ":q");
    k.len[BL_KEY_DONE] = bl_keys_tagged_of(d, sizeof d, key, keylen, ":done");
    k.len[BL_KEY_FENCE] = bl_keys_tagged_of(f, sizeof f, key, keylen, ":fence");
    k.k[BL_KEY_QUEUE] = q, k.k[BL_KEY_DONE] = d, k.k[BL_KEY_FENCE] = f;
    k.k[BL_KEY_OLD_DONE] = d, k.len[BL_KEY_OLD_DONE] = k.len[BL_KEY_DONE];
    k.k[BL_KEY_OLD_FENCE] = f, k.len[BL_KEY_OLD_FENCE] = k.len[BL_KEY_FENCE];
    bl_op op = {.kind = BL_OP_RELEASE, .keys = &k};
    send_release(r, &op);
}

/* What a script call's reply says before its own answer is read:
 * REPLY_FAILED (res says why; nothing was done), REPLY_NOSCRIPT (send the
 * call again by body; the script cache is being reloaded), or
 * REPLY_ANSWER. */
enum { REPLY_ANSWER, REPLY_FAILED, REPLY_NOSCRIPT };
static int reply_check(redisAsyncContext *ac, redisReply *reply, bl_op_result *res)
{
    conn *c = ac->data;
    if (!reply) {
        res->status = BL_ECONN;
        res->errmsg = redis_conn_errmsg(c, ac);
    } else if (c && c->ac == ac && c->setup_failed) {
        /* AUTH/SELECT was refused on this connection: what follows it fails
         * for that reason (NOAUTH, protocol errors), so say that. */
        res->status = BL_ECONN;
        res->errmsg = c->last_err;
    } else if (reply->type == REDIS_REPLY_ERROR && c && c->r->sent &&
               (strncmp(reply->str, "READONLY", 8) == 0 ||
                strncmp(reply->str, "MASTERDOWN", 10) == 0)) {
        /* Sentinel: this node is no longer the master (demoted, or cut off
         * from it). Nothing was written; move, and let the engine retry
         * as after a lost connection. */
        res->status = BL_ECONN;
        res->errmsg = reply->str;
        redis_rediscover(c->r, reply->str);
    } else if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
               c && c->ac == ac) {
        /* The server lost its script cache (restart, SCRIPT FLUSH). */
        memset(c->r->sha_ok, 0, sizeof c->r->sha_ok);
        return REPLY_NOSCRIPT;
    } else {
        return REPLY_ANSWER;
    }
    return REPLY_FAILED;
}

static void op_reply_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_op *op = priv;
    conn *c = ac->data;
    bl_op_result res = {BL_EREDIS, 0, 0, NULL, 0, 0};
    char acl_msg[BL_ERRMSG_MAX];
    int how = reply_check(ac, reply, &res);

    if (how == REPLY_FAILED) {
        /* res says why */
    } else if (how == REPLY_NOSCRIPT) {
        /* Run this call by body, which also caches it, and reload. */
        if (send_op(c->r, op, op->kind, 1, op_reply_cb) == 0) {
            redis_load_scripts(c->r);
            return;
        }
        res.status = BL_ECONN;
        res.errmsg = "connection to Redis lost while reloading scripts";
    } else {
        if (op->nkeys)
            bl_redis_interpret_group(op->kind, op->nkeys, reply, &res, op->tokens);
        else
            bl_redis_interpret(op->kind, reply, &res);
        if (res.status == BL_EREDIS && reply->type == REDIS_REPLY_ERROR &&
            bl_acl_denied(res.errmsg)) {
            /* Name what the ACL user lacks: Redis 7.0 does not, inside a
             * script. Valid during op->done, as res.errmsg must be. */
            const bl_script *sc = &bl_scripts[script_of(op->kind, op->nkeys)];
            res.errmsg = bl_acl_explain(acl_msg, sizeof acl_msg, res.errmsg, "EVALSHA", sc->name,
                                        sc->body, c->r->h.prefix);
        }
        if (hold_for_wait(c->r, ac, op, &res))
            return;
    }
    op->done(op, &res);
}

/* The script that runs kind (for a group of nkeys postings if nkeys). */
static int script_of(enum bl_op_kind kind, size_t nkeys)
{
    if (nkeys)
        return kind == BL_OP_ACQUIRE  ? BL_SCRIPT_ACQUIRE_MANY
               : kind == BL_OP_EXTEND ? BL_SCRIPT_EXTEND_MANY
                                      : BL_SCRIPT_RELEASE_MANY;
    return kind == BL_OP_ACQUIRE    ? BL_SCRIPT_ACQUIRE
           : kind == BL_OP_EXTEND   ? BL_SCRIPT_EXTEND
           : kind == BL_OP_TRANSFER ? BL_SCRIPT_TRANSFER
                                    : BL_SCRIPT_RELEASE;
}

#define RESP_STACK_MAX 2048

static int send_group(redis_be *r, bl_op *op, enum bl_op_kind kind, int by_body,
                      redisCallbackFn *cb);

/* "EVALSHA sha" (or "EVAL body" when by_body or not cached) into argv[0..2):
 * returns 2. */
static int script_head(const redis_be *r, int s, int by_body, const char **argv, size_t *lens)
{
    if (by_body || !r->sha_ok[s]) {
        argv[0] = "EVAL", lens[0] = 4;
        argv[1] = r->body[s], lens[1] = strlen(r->body[s]);
    } else {
        argv[0] = "EVALSHA", lens[0] = 7;
        argv[1] = r->sha[s], lens[1] = 40;
    }
    return 2;
}

/* The script call for kind on op's keys; its reply goes to cb(op), or
 * nowhere when cb is NULL. */
static int send_op(redis_be *r, bl_op *op, enum bl_op_kind kind, int by_body,
                   redisCallbackFn *cb)
{
    if (op->nkeys)
        return send_group(r, op, kind, by_body, cb);
    const bl_config *cfg = r->h.cfg;
    const bl_keys *k = op->keys;
    int s = script_of(kind, 0);
    char n1[24], n2[24], n3[24];
    const char *argv[20]; /* the acquire: EVALSHA sha n, 6 keys, 9 arguments */
    size_t lens[20];
    int argc = 0;
#define ARG(p, n) (argv[argc] = (p), lens[argc++] = (n))
#define NUM(buf, v) ARG(buf, bl_u64_dec(buf, (v)))
#define KEY(i) ARG(k->k[i], k->len[i])
    argc = script_head(r, s, by_body, argv, lens);
    switch (kind) {
    case BL_OP_ACQUIRE:
        ARG(r->legacy_keys ? "6" : "4", 1);
        KEY(BL_KEY_LOCK);
        KEY(BL_KEY_FENCE);
        KEY(BL_KEY_DONE);
        KEY(BL_KEY_QUEUE);
        if (r->legacy_keys) {
            KEY(BL_KEY_OLD_DONE);
            KEY(BL_KEY_OLD_FENCE);
        }
        ARG(r->h.holder, r->h.holder_len);
        NUM(n1, op->ttl_ms);
        NUM(n2, BL_FENCE_TTL_MS);
        NUM(n3, op->queue_ttl_ms);
        ARG(op->queued ? "1" : "0", 1);
        ARG(op->keep_queued ? "1" : "0", 1);
        ARG(op->reclaim ? "1" : "0", 1);
        ARG(cfg->done_markers ? "1" : "0", 1);
        ARG(cfg->fencing_tokens ? "1" : "0", 1);
        break;
    case BL_OP_EXTEND:
        ARG("1", 1);
        KEY(BL_KEY_LOCK);
        ARG(r->h.holder, r->h.holder_len);
        NUM(n1, op->ttl_ms);
        break;
    case BL_OP_TRANSFER:
        ARG("2", 1);
        KEY(BL_KEY_LOCK);
        KEY(BL_KEY_FENCE);
        ARG(r->h.holder, r->h.holder_len);
        ARG(op->target, op->target_len);
        NUM(n1, op->ttl_ms);
        NUM(n2, BL_FENCE_TTL_MS);
        break;
    default:
        ARG(r->legacy_keys ? "6" : "4", 1);
        KEY(BL_KEY_LOCK);
        KEY(BL_KEY_DONE);
        KEY(BL_KEY_QUEUE);
        KEY(BL_KEY_FENCE);
        if (r->legacy_keys) {
            KEY(BL_KEY_OLD_DONE);
            KEY(BL_KEY_OLD_FENCE);
        }
        ARG(r->h.holder, r->h.holder_len);
        NUM(n1, kind == BL_OP_RELEASE_DONE ? cfg->done_ttl_ms : 0);
        NUM(n2, cfg->handoff_ms);
        NUM(n3, BL_FENCE_TTL_MS);
        break;
    }
#undef ARG
#undef NUM
#undef KEY
    char resp[RESP_STACK_MAX];
    size_t n = bl_resp_format(resp, sizeof resp, argc, argv, lens);
    int rc = n ? redisAsyncFormattedCommand(r->cmd.ac, cb, cb ? op : NULL, resp, n)
               : redisAsyncCommandArgv(r->cmd.ac, cb, cb ? op : NULL, argc, argv, lens);
    return rc == REDIS_OK ? 0 : BL_ECONN;
}

/* A group's script call (bl_acquire_many): every posting's names in KEYS,
 * S of them per posting (ARGV[4]); the 0.1 layout's too on one server. */
static int send_group(redis_be *r, bl_op *op, enum bl_op_kind kind, int by_body,
                      redisCallbackFn *cb)
{
    enum { MAXARGS = 8 + 5 * BL_GROUP_MAX };
    const char *argv[MAXARGS];
    size_t lens[MAXARGS];
    char nk[24], n1[24], n2[24], n3[24];
    int argc = 0, s, stride;
    static const int acq[] = {BL_KEY_LOCK, BL_KEY_FENCE, BL_KEY_DONE, BL_KEY_OLD_DONE,
                              BL_KEY_OLD_FENCE};
    static const int rel[] = {BL_KEY_LOCK, BL_KEY_DONE, BL_KEY_QUEUE, BL_KEY_OLD_DONE};
    const int *which;
    switch (kind) {
    case BL_OP_ACQUIRE:
        s = BL_SCRIPT_ACQUIRE_MANY, which = acq, stride = r->legacy_keys ? 5 : 3;
        break;
    case BL_OP_EXTEND:
        s = BL_SCRIPT_EXTEND_MANY, which = acq, stride = 1;
        break;
    case BL_OP_RELEASE:
    case BL_OP_RELEASE_DONE:
        s = BL_SCRIPT_RELEASE_MANY, which = rel, stride = r->legacy_keys ? 4 : 3;
        break;
    default:
        snprintf(op->errbuf, BL_ERRMSG_MAX, "a group cannot do that");
        return BL_EINVAL;
    }
    if (op->nkeys > BL_GROUP_MAX)
        return BL_EINVAL;
#define ARG(p, n) (argv[argc] = (p), lens[argc++] = (n))
#define NUM(buf, v) ARG(buf, bl_u64_dec(buf, (v)))
    argc = script_head(r, s, by_body, argv, lens);
    NUM(nk, (uint64_t)op->nkeys * (uint64_t)stride);
    for (size_t i = 0; i < op->nkeys; i++)
        for (int j = 0; j < stride; j++)
            ARG(op->keys[i].k[which[j]], op->keys[i].len[which[j]]);
    ARG(r->h.holder, r->h.holder_len);
    if (kind == BL_OP_ACQUIRE) {
        NUM(n1, op->ttl_ms);
        NUM(n2, BL_FENCE_TTL_MS);
        NUM(n3, (uint64_t)stride);
    } else if (kind == BL_OP_EXTEND) {
        NUM(n1, op->ttl_ms);
    } else {
        NUM(n1, kind == BL_OP_RELEASE_DONE ? r->h.cfg->done_ttl_ms : 0);
        NUM(n2, r->h.cfg->handoff_ms);
        NUM(n3, (uint64_t)stride);
    }
#undef ARG
#undef NUM
    int rc = redisAsyncCommandArgv(r->cmd.ac, cb, cb ? op : NULL, argc, argv, lens);
    return rc == REDIS_OK ? 0 : BL_ECONN;
}

/* bl_config.done_markers and fencing_tokens both 0: what is left of the
 * acquire script on a free lock is its first call, SET NX PX. A request's
 * first attempt sends just that, with GET (Redis >= 7.0, Valkey), whose
 * answer says who holds the lock when it is taken. Anything but a free
 * lock goes on to the script, so queueing, reservations and reclaim work
 * as always; a try-once request that finds another holder ends there. */
static int fast_acquire(const redis_be *r, const bl_op *op)
{
    const bl_config *cfg = r->h.cfg;
    return op->kind == BL_OP_ACQUIRE && !op->nkeys && !cfg->done_markers &&
           !cfg->fencing_tokens && !op->queued && !op->keep_queued && !op->reclaim &&
           !r->no_set_get;
}

static void fast_reply_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    bl_op *op = priv;
    conn *c = ac->data;
    if (!reply || !c || c->ac != ac || c->setup_failed ||
        (reply->type != REDIS_REPLY_NIL && reply->type != REDIS_REPLY_STRING &&
         !(reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "ERR syntax", 10) == 0))) {
        op_reply_cb(ac, reply, op); /* a lost connection, READONLY, MOVED, NOPERM...: as a script's */
        return;
    }
    redis_be *r = c->r;
    if (reply->type == REDIS_REPLY_NIL) { /* it was free: ours now */
        bl_op_result res = {BL_OK, 0, 0, NULL, 0, 0};
        if (!hold_for_wait(r, ac, op, &res))
            op->done(op, &res);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        /* A server before 7.0: SET takes NX or GET, not both. */
        r->no_set_get = 1;
        bl_host_log(&r->h, BL_LOG_INFO, "bidlock: this server refuses SET NX GET (%s): the "
                    "acquire script is used instead", reply->str);
    } else if (!op->queue_ttl_ms && reply->len > 0 && reply->str[0] != '~' &&
               !(reply->len == r->h.holder_len && !memcmp(reply->str, r->h.holder, reply->len))) {
        bl_op_result res = {BL_EBUSY, 0, 0, NULL, 0, 0}; /* someone else's: try-once ends */
        op->done(op, &res);
        return;
    }
    if (send_op(r, op, op->kind, 0, op_reply_cb) != 0) {
        bl_op_result res = {BL_ECONN, 0, 0, "connection to Redis lost", 0, 0};
        op->done(op, &res);
    }
}

static int send_fast_acquire(redis_be *r, bl_op *op)
{
    const bl_keys *k = op->keys;
    char ttl[24];
    const char *argv[7] = {"SET", k->k[BL_KEY_LOCK], r->h.holder, "NX", "PX", ttl, "GET"};
    size_t lens[7] = {3, k->len[BL_KEY_LOCK], r->h.holder_len, 2, 2, bl_u64_dec(ttl, op->ttl_ms),
                      3};
    char resp[RESP_STACK_MAX];
    size_t n = bl_resp_format(resp, sizeof resp, 7, argv, lens);
    int rc = n ? redisAsyncFormattedCommand(r->cmd.ac, fast_reply_cb, op, resp, n)
               : redisAsyncCommandArgv(r->cmd.ac, fast_reply_cb, op, 7, argv, lens);
    return rc == REDIS_OK ? 0 : BL_ECONN;
}

/* Sentinel: a discovery is under way, or the connection is being made
 * again (after a failover, most likely): an op waits for it (preq). */
static int finding_master(const redis_be *r)
{
    return r->sent && !r->shutting &&
           (r->cmd.awaiting || (r->cmd.state != CONN_UP && (r->cmd.role == TR_RECONNECT ||
                                                            r->cmd.role == TR_REDISCOVER)));
}

int redis_op_start(bl_backend *be, bl_op *op)
{
    redis_be *r = (redis_be *)be;
    if (finding_master(r)) {
        /* Sentinel: a discovery is under way, or the connection is being
         * made again (after a failover, most likely): sent once connected,
         * failed with the discovery's reason if it finds no master. The
         * engine's answer deadline bounds the wait. */
        wait_item *it = malloc(sizeof *it);
        if (!it) {
            snprintf(op->errbuf, BL_ERRMSG_MAX, "out of memory");
            return BL_ENOMEM;
        }
        it->next = NULL;
        it->op = op;
        *r->preq_tail = it;
        r->preq_tail = &it->next;
        return 0;
    }
    if (r->cmd.state == CONN_DOWN || !r->cmd.ac) {
        snprintf(op->errbuf, BL_ERRMSG_MAX, "not connected to Redis: %s",
                 r->cmd.last_err[0] ? r->cmd.last_err : "connection down");
        return BL_ECONN;
    }
    /* While connecting, hiredis buffers the command until the socket is up
     * and fails it with a NULL reply if the connect fails. */
    if (fast_acquire(r, op))
        return send_fast_acquire(r, op);
    return send_op(r, op, op->kind, 0, op_reply_cb);
}

/* ---- batched lease renewal (start_many) ---------------------------------- */

/* One extend_batch call on the wire: the ops it answers, in KEYS order. */
typedef struct renew_batch {
    redis_be *r;
    size_t n;
    bl_op *ops[];
} renew_batch;

static int send_batch(renew_batch *b, int by_body);

static void batch_reply_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    renew_batch *b = priv;
    redis_be *r = b->r;
    bl_op_result all = {BL_EREDIS, 0, 0, "unexpected reply to the renewal script", 0, 0};
    char acl_msg[BL_ERRMSG_MAX];
    int how = reply_check(ac, reply, &all);
    if (how == REPLY_NOSCRIPT) {
        if (send_batch(b, 1) == 0) {
            redis_load_scripts(r);
            return;
        }
        all.status = BL_ECONN;
        all.errmsg = "connection to Redis lost while reloading scripts";
    }
    int per_key = how == REPLY_ANSWER && reply->type == REDIS_REPLY_ARRAY &&
                  reply->elements == b->n;
    if (how == REPLY_ANSWER && reply->type == REDIS_REPLY_ERROR) {
        all.errmsg = reply->str;
        if (bl_acl_denied(reply->str)) {
            const bl_script *sc = &bl_scripts[BL_SCRIPT_EXTEND_BATCH];
            all.errmsg = bl_acl_explain(acl_msg, sizeof acl_msg, reply->str, "EVALSHA", sc->name,
                                        sc->body, r->h.prefix);
        }
    }
    /* Each lease has its own answer, as if it had been renewed alone; a
     * renewed one waits for WAIT like any renewal. */
    for (size_t i = 0; i < b->n; i++) {
        bl_op *op = b->ops[i];
        bl_op_result res = all;
        if (per_key) {
            const redisReply *e = reply->element[i];
            if (e->type == REDIS_REPLY_INTEGER) {
                res.status = e->integer == 1 ? BL_OK : BL_ENOTHELD;
                res.errmsg = NULL;
            }
        }
        if (!hold_for_wait(r, ac, op, &res))
            op->done(op, &res);
    }
    free(b);
}

static int send_batch(renew_batch *b, int by_body)
{
    redis_be *r = b->r;
    enum { MAXARGS = 4 + 2 * BL_RENEW_BATCH_MAX };
    const char *argv[MAXARGS];
    size_t lens[MAXARGS];
    char nk[24], ttl[BL_RENEW_BATCH_MAX][24];
    int argc = script_head(r, BL_SCRIPT_EXTEND_BATCH, by_body, argv, lens);
    argv[argc] = nk, lens[argc++] = bl_u64_dec(nk, b->n);
    for (size_t i = 0; i < b->n; i++) {
        const bl_keys *k = b->ops[i]->keys;
        argv[argc] = k->k[BL_KEY_LOCK], lens[argc++] = k->len[BL_KEY_LOCK];
    }
    argv[argc] = r->h.holder, lens[argc++] = r->h.holder_len;
    for (size_t i = 0; i < b->n; i++)
        argv[argc] = ttl[i], lens[argc++] = bl_u64_dec(ttl[i], b->ops[i]->ttl_ms);
    int rc = redisAsyncCommandArgv(r->cmd.ac, batch_reply_cb, b, argc, argv, lens);
    return rc == REDIS_OK ? 0 : BL_ECONN;
}

int redis_op_start_many(bl_backend *be, bl_op *const *ops, size_t n)
{
    redis_be *r = (redis_be *)be;
    /* Only on a connection that is up or being made: otherwise (down, a
     * Sentinel discovery under way) each op goes its own way through
     * redis_op_start, which knows what to do then. */
    if (n < 1 || n > BL_RENEW_BATCH_MAX || r->cmd.state == CONN_DOWN || !r->cmd.ac ||
        finding_master(r))
        return BL_ECONN;
    renew_batch *b = malloc(sizeof *b + n * sizeof b->ops[0]);
    if (!b)
        return BL_ENOMEM;
    b->r = r;
    b->n = n;
    for (size_t i = 0; i < n; i++) {
        if (ops[i]->kind != BL_OP_EXTEND || ops[i]->nkeys) {
            free(b);
            return BL_EINVAL;
        }
        b->ops[i] = ops[i];
    }
    if (send_batch(b, 0) != 0) {
        free(b);
        return BL_ECONN;
    }
    return 0;
}

int redis_op_start_asking(bl_backend *be, bl_op *op)
{
    redis_be *r = (redis_be *)be;
    if (r->cmd.state == CONN_DOWN || !r->cmd.ac) {
        snprintf(op->errbuf, BL_ERRMSG_MAX, "not connected to Redis: %s",
                 r->cmd.last_err[0] ? r->cmd.last_err : "connection down");
        return BL_ECONN;
    }
    /* Its reply is OK (or an error that the next reply then reflects). */
    if (redisAsyncCommand(r->cmd.ac, NULL, NULL, "ASKING") != REDIS_OK)
        return BL_ECONN;
    return send_op(r, op, op->kind, 0, op_reply_cb);
}

void redis_op_leave(bl_backend *be, const bl_keys *keys)
{
    redis_be *r = (redis_be *)be;
    if (r->cmd.state != CONN_UP)
        return; /* the queue entry expires with its TTL */
    redisAsyncCommand(r->cmd.ac, NULL, NULL, "ZREM %b %b", keys->k[BL_KEY_QUEUE],
                      keys->len[BL_KEY_QUEUE], r->h.holder, r->h.holder_len);
}

/* ---- replica acknowledgement (min_replicas) ------------------------------ */

static int replicas_needed(const redis_be *r)
{
    return r->min_replicas == BL_REPLICAS_AUTO ? r->replicas_now : r->min_replicas;
}

static void role_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    redis_be *r = priv;
    if (!reply || r->cmd.ac != ac)
        return;
    r->cmd.answered = 1;
    if (reply->type == REDIS_REPLY_ERROR && bl_acl_denied(reply->str)) {
        char msg[BL_ERRMSG_MAX];
        bl_host_log(&r->h, BL_LOG_WARN, "bidlock: %s; the server's role and replicas are unknown",
                    bl_acl_explain(msg, sizeof msg, reply->str, "ROLE", NULL, NULL, r->h.prefix));
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
        reply->element[0]->type == REDIS_REPLY_STRING) {
        snprintf(r->role, sizeof r->role, "%s",
                 strcmp(reply->element[0]->str, "slave") == 0 ? "replica" : reply->element[0]->str);
        if (r->sent && strcmp(r->role, "master") != 0) {
            /* Checked by the discovery, then demoted before we got here. */
            redis_rediscover(r, "the node Sentinel named is no longer a master");
            return;
        }
    }
    /* ["master", offset, [[ip, port, offset], ...]] */
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 3 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(reply->element[0]->str, "master") == 0 &&
        reply->element[2]->type == REDIS_REPLY_ARRAY) {
        int n = (int)reply->element[2]->elements;
        if (r->min_replicas == BL_REPLICAS_AUTO && n == 0 && (!r->replicas_known || r->replicas_now))
            bl_host_log(&r->h, BL_LOG_WARN,
                        "bidlock: min_replicas auto: no replica is connected; grants are "
                        "acknowledged by the master alone");
        r->replicas_now = n;
        r->replicas_known = 1;
    }
}

void redis_ask_role(redis_be *r)
{
    if (!r->cmd.ac)
        return;
    redisAsyncCommand(r->cmd.ac, role_cb, r, "ROLE");
}

static void send_wait(redis_be *r);

static void finish(wait_item *list, int acks, int need, int conn_lost, redis_be *r)
{
    while (list) {
        wait_item *it = list;
        list = it->next;
        bl_op *op = it->op;
        if (conn_lost) {
            bl_op_result res = {BL_ECONN, 0, 0, "connection lost before the replicas acknowledged",
                                0, 0};
            op->done(op, &res);
        } else if (acks >= need) {
            op->done(op, &it->res);
        } else {
            /* Not on enough replicas: a failover could lose it, so it does
             * not count. A grant is given back at once (holder-checked). */
            r->h.event(r->h.ctx, BL_BE_WAIT_SHORT);
            if (op->kind == BL_OP_ACQUIRE && r->cmd.ac)
                send_release(r, op);
            char msg[BL_ERRMSG_MAX];
            snprintf(msg, sizeof msg, "acknowledged by %d of %d replicas within %u ms", acks,
                     need, r->h.cfg->replica_timeout_ms);
            bl_op_result res = {BL_ENOREPL, 0, 0, msg, 0, 0};
            op->done(op, &res);
        }
        free(it);
    }
}

static void wait_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    wait_item *batch = priv;
    redis_be *r = ((conn *)ac->data)->r;
    int need = replicas_needed(r);
    int acks = reply && reply->type == REDIS_REPLY_INTEGER ? (int)reply->integer : -1;
    r->wait_inflight = 0;
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        /* WAIT refused (e.g. on a replica): the grants cannot be vouched for. */
        acks = -1;
        bl_host_log(&r->h, BL_LOG_WARN, "bidlock: WAIT failed: %s", reply->str);
    }
    if (acks >= 0 && acks < need)
        redis_ask_role(r); /* a replica may have gone: refresh the count */
    finish(batch, acks, need, !reply, r);
    if (r->pend && r->cmd.ac == ac)
        send_wait(r);
}

static void send_wait(redis_be *r)
{
    wait_item *batch = r->pend;
    r->pend = NULL;
    r->pend_tail = &r->pend;
    if (redisAsyncCommand(r->cmd.ac, wait_cb, batch, "WAIT %d %u", replicas_needed(r),
                          r->h.cfg->replica_timeout_ms) == REDIS_OK)
        r->wait_inflight = 1;
    else
        finish(batch, 0, 0, 1, r);
}

/* A grant or renewal answered OK: 1 if it is held back for WAIT. */
static int hold_for_wait(redis_be *r, redisAsyncContext *ac, bl_op *op, const bl_op_result *res)
{
    if (res->status != BL_OK || (op->kind != BL_OP_ACQUIRE && op->kind != BL_OP_EXTEND) ||
        r->cmd.ac != ac)
        return 0;
    if (replicas_needed(r) <= 0) {
        /* auto, and no replica was connected when we looked: after a
         * failover the promoted master has none for a while. Look again,
         * at most once a second, so WAIT starts once one attaches. */
        uint64_t now = bl_host_now(&r->h);
        if (r->min_replicas == BL_REPLICAS_AUTO && now - r->role_asked >= 1000) {
            r->role_asked = now;
            redis_ask_role(r);
        }
        return 0;
    }
    wait_item *it = malloc(sizeof *it);
    if (!it) { /* it cannot be vouched for: never report it held */
        if (op->kind == BL_OP_ACQUIRE)
            send_release(r, op);
        bl_op_result oom = {BL_ENOMEM, 0, 0, "out of memory", 0, 0};
        op->done(op, &oom);
        return 1;
    }
    it->next = NULL;
    it->op = op;
    it->res = *res;
    *r->pend_tail = it;
    r->pend_tail = &it->next;
    if (!r->wait_inflight)
        send_wait(r);
    return 1;
}

void redis_wait_fail_all(redis_be *r)
{
    wait_item *list = r->pend;
    r->pend = NULL;
    r->pend_tail = &r->pend;
    finish(list, 0, 0, 1, r);
}

/* ---- operations started while Sentinel discovery runs ---------------------- */

void redis_preq_flush(redis_be *r)
{
    wait_item *list = r->preq;
    r->preq = NULL;
    r->preq_tail = &r->preq;
    while (list) {
        wait_item *it = list;
        list = it->next;
        if (send_op(r, it->op, it->op->kind, 0, op_reply_cb) != 0) {
            bl_op_result res = {BL_ECONN, 0, 0, "connection to Redis is closing", 0, 0};
            it->op->done(it->op, &res);
        }
        free(it);
    }
}

void redis_preq_fail(redis_be *r, const char *why)
{
    wait_item *list = r->preq;
    r->preq = NULL;
    r->preq_tail = &r->preq;
    while (list) {
        wait_item *it = list;
        list = it->next;
        bl_op_result res = {BL_ECONN, 0, 0, why, 0, 0};
        it->op->done(it->op, &res);
        free(it);
    }
}
