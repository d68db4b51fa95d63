/* resp.c - the pure half of the Redis backend (resp.h): command encoding
 * and the reading of replies. No I/O and no state, so the fuzzers link it
 * alone; anything that is not one of the documented answers is an error. */
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "resp.h"
#include "scripts.h"

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

/* See resp.h. hiredis 0.14's redisAsyncCommandArgv builds the same bytes
 * in a fresh sds (two allocations, a printf-like pass per argument): ~7,000
 * instructions for an acquire, against a few hundred here. */
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

/* A script's reply as an operation result. Pure, so it can be fuzzed:
 * anything that is not one of the documented answers is BL_EREDIS. */
void bl_redis_interpret(enum bl_op_kind kind, const redisReply *reply, bl_op_result *res)
{
    *res = (bl_op_result){BL_EREDIS, 0, 0, "unexpected reply from a bidlock script", 0, 0};
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
            *res = (bl_op_result){BL_OK, (uint64_t)v, 0, NULL, 0, 0};
        else if (v == BL_ACQ_BUSY)
            *res = (bl_op_result){BL_EBUSY, 0, 0, NULL, 0, 0};
        else if (v == BL_ACQ_DONE)
            *res = (bl_op_result){BL_EDONE, 0, 0, NULL, 0, 0};
        else if (v == BL_ACQ_OURS)
            *res = (bl_op_result){BL_EBUSY, 0, 0, NULL, 1, 0};
        break;
    case BL_OP_TRANSFER:
        if (v > 0)
            *res = (bl_op_result){BL_OK, (uint64_t)v, 0, NULL, 0, 0};
        else if (v == 0)
            *res = (bl_op_result){BL_ENOTHELD, 0, 0, NULL, 0, 0};
        break;
    case BL_OP_EXTEND:
        if (v == 0 || v == 1)
            *res = (bl_op_result){v ? BL_OK : BL_ENOTHELD, 0, 0, NULL, 0, 0};
        break;
    case BL_OP_RELEASE:
    case BL_OP_RELEASE_DONE:
        if (v >= 0 && v <= 2)
            *res = (bl_op_result){v ? BL_OK : BL_ENOTHELD, 0, v == BL_REL_HANDED_OFF, NULL, 0, 0};
        break;
    default:
        break;
    }
}

void bl_redis_interpret_group(enum bl_op_kind kind, size_t n, const redisReply *reply,
                              bl_op_result *res, uint64_t *tokens)
{
    *res = (bl_op_result){BL_EREDIS, 0, 0, "unexpected reply from a bidlock script", 0, 0};
    if (reply->type == REDIS_REPLY_ERROR) {
        res->errmsg = reply->str && reply->str[0] ? reply->str : "Redis sent an empty error";
        return;
    }
    if (kind == BL_OP_EXTEND) {
        if (reply->type == REDIS_REPLY_INTEGER && (reply->integer == 0 || reply->integer == 1))
            *res = (bl_op_result){reply->integer ? BL_OK : BL_ENOTHELD, 0, 0, NULL, 0, 0};
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2)
        return;
    for (size_t i = 0; i < reply->elements; i++)
        if (reply->element[i]->type != REDIS_REPLY_INTEGER)
            return;
    long long a = reply->element[0]->integer, b = reply->element[1]->integer;
    switch (kind) {
    case BL_OP_ACQUIRE:
        if (a == 1 && reply->elements == n + 1) {
            for (size_t i = 0; i < n; i++)
                if (reply->element[i + 1]->integer <= 0)
                    return;
            for (size_t i = 0; i < n; i++)
                tokens[i] = (uint64_t)reply->element[i + 1]->integer;
            *res = (bl_op_result){BL_OK, tokens[0], 0, NULL, 0, 0};
        } else if ((a == BL_ACQ_BUSY || a == BL_ACQ_DONE) && reply->elements == 2 && b >= 0 &&
                   (unsigned long long)b < n) {
            *res = (bl_op_result){a == BL_ACQ_BUSY ? BL_EBUSY : BL_EDONE, 0, 0, NULL, 0, (int)b};
        }
        break;
    case BL_OP_RELEASE:
    case BL_OP_RELEASE_DONE:
        if (reply->elements == 2 && a >= 0 && (unsigned long long)a <= n && b >= 0 && b <= a)
            *res = (bl_op_result){(size_t)a == n ? BL_OK : BL_ENOTHELD, 0, b > 0, NULL, 0, 0};
        break;
    default:
        break;
    }
}

/* Decimal digits s[0..n) (1..20 of them, no sign) as a number; -1 if not. */
static int dec_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int bl_redis_lock_info_reply(const redisReply *reply, const char **key, size_t *klen,
                             const char **holder, size_t *hlen, int64_t *pttl_ms, uint64_t *token,
                             uint64_t *held_ms)
{
    if (reply->type != REDIS_REPLY_ARRAY)
        return -1;
    if (reply->elements == 0)
        return 0;
    if (reply->elements != 6 || reply->element[0]->type != REDIS_REPLY_STRING)
        return -1;
    *key = reply->element[0]->str;
    *klen = reply->element[0]->len;
    redisReply *const *e = reply->element + 1;
    uint64_t tok, sec, usec;
    if (e[0]->type != REDIS_REPLY_STRING || e[1]->type != REDIS_REPLY_INTEGER ||
        e[2]->type != REDIS_REPLY_STRING || e[3]->type != REDIS_REPLY_STRING ||
        e[4]->type != REDIS_REPLY_STRING || dec_u64(e[2]->str, e[2]->len, &tok) ||
        dec_u64(e[3]->str, e[3]->len, &sec) || dec_u64(e[4]->str, e[4]->len, &usec) ||
        sec > UINT64_MAX / 2000000 || usec >= 1000000)
        return -1;
    uint64_t now = sec * 1000000 + usec;
    *holder = e[0]->str;
    *hlen = e[0]->len;
    *pttl_ms = e[1]->integer;
    *token = tok;
    *held_ms = tok && now > tok ? (now - tok) / 1000 : 0; /* no token: not known */
    return 1;
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
        if (k->type == REDIS_REPLY_STRING && bl_keys_is_lock_key(k->str, k->len, prefix, plen)) {
            keys[n] = k->str;
            lens[n++] = k->len;
        }
    }
    return n;
}

/* ---- Redis Cluster: redirections and the slot map ------------------------- */

int bl_redis_parse_redirect(const char *msg, int *ask, unsigned *slot, char *ip, size_t iplen,
                            int *port)
{
    const char *p;
    if (!msg)
        return -1;
    if (strncmp(msg, "MOVED ", 6) == 0)
        p = msg + 6, *ask = 0;
    else if (strncmp(msg, "ASK ", 4) == 0)
        p = msg + 4, *ask = 1;
    else
        return -1;
    if (*p < '0' || *p > '9')
        return -1;
    char *end;
    unsigned long s = strtoul(p, &end, 10);
    if (*end != ' ' || s >= BL_CLUSTER_SLOTS)
        return -1;
    p = end + 1;
    const char *colon = strrchr(p, ':');
    if (!colon || colon == p || (size_t)(colon - p) >= iplen)
        return -1;
    if (colon[1] < '0' || colon[1] > '9')
        return -1;
    long pt = strtol(colon + 1, &end, 10);
    if ((*end && *end != ' ' && *end != '\r') || pt < 1 || pt > 65535)
        return -1;
    const char *h = p;
    size_t hn = (size_t)(colon - p);
    if (hn >= 2 && h[0] == '[' && h[hn - 1] == ']') {
        h++;
        hn -= 2;
    }
    if (hn == 0 || memchr(h, ' ', hn))
        return -1;
    memcpy(ip, h, hn);
    ip[hn] = '\0';
    *slot = (unsigned)s;
    *port = (int)pt;
    return 0;
}

static int is_node(const redisReply *n)
{
    return n->type == REDIS_REPLY_ARRAY && n->elements >= 2 &&
           n->element[0]->type == REDIS_REPLY_STRING && n->element[1]->type == REDIS_REPLY_INTEGER;
}

int bl_redis_parse_slots(const redisReply *rep, uint16_t *owner, bl_slots_node_fn node,
                         void *ctx)
{
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements == 0)
        return -1;
    for (int i = 0; i < BL_CLUSTER_SLOTS; i++)
        owner[i] = BL_SLOT_NONE;
    for (size_t i = 0; i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER || !is_node(e->element[2]))
            return -1;
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        if (lo < 0 || hi >= BL_CLUSTER_SLOTS || lo > hi)
            return -1;
        const redisReply *m = e->element[2];
        int idx = node(ctx, m->element[0]->str, m->element[1]->integer, 1);
        if (idx < 0 || idx >= BL_SLOT_NONE)
            continue;
        for (long long s = lo; s <= hi; s++)
            owner[s] = (uint16_t)idx;
        /* Replicas: known as nodes (a map can be read from them). */
        for (size_t j = 3; j < e->elements; j++)
            if (is_node(e->element[j]) && e->element[j]->element[0]->len)
                node(ctx, e->element[j]->element[0]->str, e->element[j]->element[1]->integer, 0);
    }
    return 0;
}
