/* libFuzzer target for the handling of Redis's answers (src/redis.c):
 * bl_redis_interpret (the acquire, release, release-done and extend
 * scripts' results), bl_redis_inspect_reply, bl_redis_scan_reply, and the
 * Redis Cluster parsers bl_redis_parse_redirect (MOVED / ASK) and
 * bl_redis_parse_slots (CLUSTER SLOTS).
 * How to run: README.md here.
 *
 * The input is raw RESP bytes, parsed by hiredis's own reader
 * (redisReaderCreate / redisReaderFeed / redisReaderGetReply) exactly as an
 * async connection would; every reply it yields goes through each parser.
 * Beyond "no crash": each result must be one the code documents - the
 * status set per operation kind, a token only for a granted acquire, equal
 * to the script's integer, an error message for every BL_EREDIS, and only
 * lock keys under the prefix from a SCAN.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "resp.h"
#include "scripts.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_reply: check failed: %s (line %d)\n", #cond, __LINE__); \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static void check_interpret(const redisReply *reply)
{
    static const enum bl_op_kind kinds[] = {BL_OP_ACQUIRE, BL_OP_RELEASE, BL_OP_RELEASE_DONE,
                                            BL_OP_EXTEND, BL_OP_TRANSFER, BL_OP_NONE};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        bl_op_result res;
        memset(&res, 0xa5, sizeof res);
        bl_redis_interpret(kinds[i], reply, &res);
        int st = res.status;
        int is_int = reply->type == REDIS_REPLY_INTEGER;
        long long v = reply->integer;
        switch (kinds[i]) {
        case BL_OP_ACQUIRE:
            CHECK(st == BL_OK || st == BL_EBUSY || st == BL_EDONE || st == BL_EREDIS);
            if (st == BL_OK)
                CHECK(is_int && v > 0 && res.token == (uint64_t)v);
            else
                CHECK(res.token == 0);
            if (st == BL_EBUSY)
                CHECK(is_int && (v == BL_ACQ_BUSY || v == BL_ACQ_OURS) &&
                      res.ours == (v == BL_ACQ_OURS));
            else
                CHECK(!res.ours);
            if (st == BL_EDONE)
                CHECK(is_int && v == BL_ACQ_DONE);
            CHECK(!res.handed_off);
            break;
        case BL_OP_RELEASE:
        case BL_OP_RELEASE_DONE:
            CHECK(st == BL_OK || st == BL_ENOTHELD || st == BL_EREDIS);
            if (st != BL_EREDIS)
                CHECK(is_int && v >= 0 && v <= 2 && (st == BL_OK) == (v != 0));
            CHECK(res.handed_off == (st == BL_OK && v == BL_REL_HANDED_OFF));
            CHECK(res.token == 0);
            break;
        case BL_OP_EXTEND:
            CHECK(st == BL_OK || st == BL_ENOTHELD || st == BL_EREDIS);
            if (st != BL_EREDIS)
                CHECK(is_int && (v == 0 || v == 1) && (st == BL_OK) == (v == 1));
            CHECK(res.token == 0 && !res.handed_off);
            break;
        case BL_OP_TRANSFER:
            CHECK(st == BL_OK || st == BL_ENOTHELD || st == BL_EREDIS);
            if (st == BL_OK)
                CHECK(is_int && v > 0 && res.token == (uint64_t)v);
            else
                CHECK(res.token == 0);
            if (st == BL_ENOTHELD)
                CHECK(is_int && v == 0);
            CHECK(!res.handed_off && !res.ours);
            break;
        default:
            CHECK(st == BL_EREDIS); /* no such operation */
            break;
        }
        if (st == BL_EREDIS) {
            CHECK(res.errmsg && res.errmsg[0]);
            if (reply->type == REDIS_REPLY_ERROR && reply->str[0])
                CHECK(res.errmsg == reply->str); /* the server's own words */
            (void)strlen(res.errmsg);
        } else {
            CHECK(is_int);
        }
    }
}

/* The group scripts' answers (bl_acquire_many), for groups of 1..4. */
static void check_group(const redisReply *reply)
{
    static const enum bl_op_kind kinds[] = {BL_OP_ACQUIRE, BL_OP_RELEASE, BL_OP_RELEASE_DONE,
                                            BL_OP_EXTEND, BL_OP_TRANSFER};
    for (size_t n = 1; n <= 4; n++)
        for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
            bl_op_result res;
            uint64_t tokens[4] = {0, 0, 0, 0};
            memset(&res, 0xa5, sizeof res);
            bl_redis_interpret_group(kinds[i], n, reply, &res, tokens);
            int st = res.status;
            CHECK(st == BL_OK || st == BL_EBUSY || st == BL_EDONE || st == BL_ENOTHELD ||
                  st == BL_EREDIS);
            if (st == BL_EREDIS)
                CHECK(res.errmsg && res.errmsg[0]);
            switch (kinds[i]) {
            case BL_OP_ACQUIRE:
                CHECK(st != BL_ENOTHELD);
                if (st == BL_OK) {
                    CHECK(reply->type == REDIS_REPLY_ARRAY && reply->elements == n + 1);
                    for (size_t k = 0; k < n; k++)
                        CHECK(tokens[k] > 0 && tokens[k] == (uint64_t)reply->element[k + 1]->integer);
                    CHECK(res.token == tokens[0]);
                } else {
                    for (size_t k = 0; k < n; k++)
                        CHECK(tokens[k] == 0);
                }
                if (st == BL_EBUSY || st == BL_EDONE)
                    CHECK(res.index >= 0 && (size_t)res.index < n);
                break;
            case BL_OP_TRANSFER:
                CHECK(st == BL_EREDIS); /* a group is never transferred */
                break;
            default:
                CHECK(st == BL_OK || st == BL_ENOTHELD || st == BL_EREDIS);
                break;
            }
        }
}

/* bl_list_locks' per-lock answer. */
static void check_lock_info(const redisReply *reply)
{
    const char *key = NULL, *holder = NULL;
    size_t klen = 0, hlen = 0;
    int64_t pttl = 0;
    uint64_t token = 0, held = 0;
    int got = bl_redis_lock_info_reply(reply, &key, &klen, &holder, &hlen, &pttl, &token, &held);
    CHECK(got == -1 || got == 0 || got == 1);
    if (got == 0)
        CHECK(reply->type == REDIS_REPLY_ARRAY && reply->elements == 0);
    if (got == 1) {
        CHECK(reply->type == REDIS_REPLY_ARRAY && reply->elements == 6);
        CHECK(key == reply->element[0]->str && klen == reply->element[0]->len);
        CHECK(holder == reply->element[1]->str && hlen == reply->element[1]->len);
        CHECK(token || held == 0);
        if (klen)
            (void)key[klen - 1];
        if (hlen)
            (void)holder[hlen - 1];
    }
}

static void check_inspect(const redisReply *reply)
{
    bl_lock_info info;
    memset(&info, 0xa5, sizeof info);
    char *holder = (char *)&info; /* must be overwritten */
    int st = bl_redis_inspect_reply(reply, &info, &holder);
    CHECK(st == BL_OK || st == BL_EREDIS || st == BL_ENOMEM);
    if (st == BL_OK) {
        CHECK(reply->type == REDIS_REPLY_ARRAY && reply->elements == 4);
        CHECK(info.held == 0 || info.held == 1);
        CHECK(info.done == 0 || info.done == 1);
        CHECK(info.held ? info.holder == holder && holder : !info.holder && !holder);
        if (!info.held)
            CHECK(info.pttl_ms == -1);
        if (holder)
            (void)strlen(holder);
    } else {
        CHECK(info.errmsg && info.errmsg[0]);
        CHECK(!info.held && !info.holder && !holder);
    }
    free(holder);
}

static int lock_key_rule(const char *k, size_t n, const char *prefix)
{
    size_t p = strlen(prefix);
    if (n <= p + 1 || memcmp(k, prefix, p) != 0 || k[p] != ':')
        return 0;
    const char *mp = k + p + 1;
    const char *colon = memchr(mp, ':', n - p - 1);
    return colon && colon > mp && (size_t)(colon - k) + 1 < n;
}

static void check_scan(const redisReply *reply)
{
    static const char prefix[] = "bid_lock";
    size_t room = reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
                          reply->element[1]->type == REDIS_REPLY_ARRAY
                      ? reply->element[1]->elements
                      : 0;
    const char **keys = malloc((room + 1) * sizeof *keys);
    size_t *lens = malloc((room + 1) * sizeof *lens);
    CHECK(keys && lens);
    char cursor[32];
    memset(cursor, 'x', sizeof cursor);
    long n = bl_redis_scan_reply(reply, prefix, cursor, sizeof cursor, keys, lens);
    CHECK(n >= -1 && n <= (long)room);
    if (n >= 0) {
        size_t cl = strnlen(cursor, sizeof cursor);
        CHECK(cl > 0 && cl < sizeof cursor && strspn(cursor, "0123456789") == cl);
        const redisReply *list = reply->element[1];
        for (long i = 0; i < n; i++) {
            CHECK(lock_key_rule(keys[i], lens[i], prefix));
            int found = 0; /* points into the reply, in its order */
            for (size_t j = 0; j < list->elements && !found; j++)
                found = list->element[j]->str == keys[i] && list->element[j]->len == lens[i];
            CHECK(found);
        }
    }
    free(keys);
    free(lens);
}

/* hiredis 0.14's reader allocates an array of the size a multi-bulk header
 * declares, with no limit ("*400000000\r\n" asks for 3 GB, and hiredis
 * aborts when malloc fails). That is hiredis's, not ours: such inputs are
 * skipped. (Against a real server it never comes up: bidlock's scripts
 * answer 4 elements at most, SCAN answers COUNT 1000-ish batches.) */
static int huge_aggregate(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        if (data[i] != '*')
            continue;
        unsigned long long n = 0;
        for (size_t j = i + 1; j < size && data[j] >= '0' && data[j] <= '9' && n < 100000; j++)
            n = n * 10 + (data[j] - '0');
        if (n > 10000)
            return 1;
    }
    return 0;
}

/* The Redis Cluster parsers (resp.c): a redirection in any error reply,
 * and a slot map in any array. The node lookup accepts what cluster.c's
 * does (a port 1..65535, at most 128 nodes) and counts its calls. */
typedef struct fake_nodes {
    int n, calls;
} fake_nodes;

static int fake_node(void *ctx, const char *ip, long long port, int master)
{
    fake_nodes *f = ctx;
    f->calls++;
    CHECK(ip);
    (void)master;
    if (port < 1 || port > 65535 || f->n == 128)
        return -1;
    return f->n++;
}

static void check_cluster(const redisReply *reply)
{
    if (reply->type == REDIS_REPLY_ERROR || reply->type == REDIS_REPLY_STRING ||
        reply->type == REDIS_REPLY_STATUS) {
        char ip[46];
        unsigned slot = 99999;
        int port = -1, ask = -1;
        if (bl_redis_parse_redirect(reply->str, &ask, &slot, ip, sizeof ip, &port) == 0) {
            CHECK(slot < BL_CLUSTER_SLOTS);
            CHECK(port >= 1 && port <= 65535);
            CHECK(ask == 0 || ask == 1);
            CHECK(strncmp(reply->str, ask ? "ASK " : "MOVED ", ask ? 4 : 6) == 0);
            CHECK(ip[0] && strlen(ip) < sizeof ip && !strchr(ip, ' '));
        }
    }
    static uint16_t owner[BL_CLUSTER_SLOTS];
    fake_nodes f = {0, 0};
    if (bl_redis_parse_slots(reply, owner, fake_node, &f) == 0) {
        CHECK(reply->type == REDIS_REPLY_ARRAY && reply->elements > 0);
        for (int s = 0; s < BL_CLUSTER_SLOTS; s++)
            CHECK(owner[s] == BL_SLOT_NONE || owner[s] < f.n);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (huge_aggregate(data, size))
        return 0;
    redisReader *rd = redisReaderCreate();
    CHECK(rd);
    if (redisReaderFeed(rd, (const char *)data, size) != REDIS_OK) {
        redisReaderFree(rd);
        return 0;
    }
    for (int i = 0; i < 64; i++) {
        void *out = NULL;
        if (redisReaderGetReply(rd, &out) != REDIS_OK || !out)
            break;
        const redisReply *reply = out;
        check_interpret(reply);
        check_group(reply);
        check_lock_info(reply);
        check_inspect(reply);
        check_scan(reply);
        check_cluster(reply);
        freeReplyObject(out);
    }
    redisReaderFree(rd);
    return 0;
}
