/* libFuzzer target for the pure parsers of src/sentinel.c:
 * bl_sentinel_parse_switch (a +switch-master payload), and, on RESP bytes
 * read by hiredis's own reader, bl_sentinel_parse_role (ROLE) and
 * bl_sentinel_parse_master_info (SENTINEL master NAME). How to run:
 * README.md here.
 *
 * The first byte picks the input kind: 'S' = the rest is a payload, any
 * other = the rest is RESP. Beyond "no crash": a parsed payload has a
 * non-empty name inside the input, numeric addresses, ports in 1..65535,
 * and printed back as "NAME oldip oldport newip newport" it parses to the
 * same fields; a parsed ROLE / SENTINEL master answer has only documented
 * values, NUL-terminated strings, and a failed parse leaves *out alone.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "sentinel.h"

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "fuzz_sentinel: check failed: %s (line %d)\n", #cond, __LINE__); \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

static int terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static void check_switch(const char *p, size_t n)
{
    bl_sentinel_switch o;
    if (bl_sentinel_parse_switch(p, n, &o) != 0)
        return;
    CHECK(o.name == p && o.name_len > 0 && o.name_len < n);
    CHECK(!memchr(o.name, '\0', o.name_len));
    CHECK(terminated(o.old_host, sizeof o.old_host) && terminated(o.new_host, sizeof o.new_host));
    CHECK(bl_sentinel_addr_ok(o.old_host, strlen(o.old_host)));
    CHECK(bl_sentinel_addr_ok(o.new_host, strlen(o.new_host)));
    CHECK(o.old_port >= 1 && o.old_port <= 65535 && o.new_port >= 1 && o.new_port <= 65535);
    size_t cap = o.name_len + 2 * BL_SENTINEL_ADDR_MAX + 32;
    char *again = malloc(cap);
    CHECK(again);
    int len = snprintf(again, cap, "%.*s %s %d %s %d", (int)o.name_len, o.name, o.old_host,
                       o.old_port, o.new_host, o.new_port);
    CHECK(len > 0 && (size_t)len < cap);
    bl_sentinel_switch o2;
    CHECK(bl_sentinel_parse_switch(again, (size_t)len, &o2) == 0);
    CHECK(o2.name_len == o.name_len && !memcmp(o2.name, o.name, o.name_len));
    CHECK(!strcmp(o2.old_host, o.old_host) && !strcmp(o2.new_host, o.new_host));
    CHECK(o2.old_port == o.old_port && o2.new_port == o.new_port);
    free(again);
}

static void check_reply(const redisReply *r)
{
    bl_sentinel_role role;
    memset(&role, 0x5a, sizeof role);
    if (bl_sentinel_parse_role(r, &role) == 0) {
        CHECK(r->type == REDIS_REPLY_ARRAY);
        CHECK(role.kind == BL_ROLE_MASTER || role.kind == BL_ROLE_REPLICA ||
              role.kind == BL_ROLE_SENTINEL);
        CHECK(role.replicas >= 0);
        CHECK(role.kind == BL_ROLE_MASTER || role.replicas == 0);
        CHECK(terminated(role.master_host, sizeof role.master_host));
        CHECK(terminated(role.link, sizeof role.link));
        CHECK(role.master_port >= -1 && role.master_port <= 65535);
    } else {
        unsigned char *b = (unsigned char *)&role;
        for (size_t i = 0; i < sizeof role; i++)
            CHECK(b[i] == 0x5a);
    }
    bl_sentinel_master_info mi;
    memset(&mi, 0x5a, sizeof mi);
    if (bl_sentinel_parse_master_info(r, &mi) == 0) {
        CHECK(r->type == REDIS_REPLY_ARRAY && r->elements % 2 == 0);
        CHECK(terminated(mi.ip, sizeof mi.ip));
        CHECK(mi.port >= 1 && mi.port <= 65535);
        CHECK(mi.config_epoch >= -1 && mi.other_sentinels >= -1);
        CHECK((mi.is_master | mi.s_down | mi.o_down | mi.failover) <= 1);
    } else {
        unsigned char *b = (unsigned char *)&mi;
        for (size_t i = 0; i < sizeof mi; i++)
            CHECK(b[i] == 0x5a);
    }
}

/* hiredis 0.14's reader allocates what a header declares and aborts when
 * that fails: skip absurd multi-bulk counts (as fuzz_reply does). */
static int too_big(const uint8_t *d, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++)
        if (d[i] == '*' && d[i + 1] >= '0' && d[i + 1] <= '9' &&
            atol((const char *)d + i + 1) > 10000)
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] == 'S') {
        check_switch((const char *)data + 1, size - 1);
        return 0;
    }
    char *buf = malloc(size); /* NUL-terminated copy for too_big's atol */
    if (!buf)
        return 0;
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    if (too_big((const uint8_t *)buf, size - 1)) {
        free(buf);
        return 0;
    }
    redisReader *rd = redisReaderCreate();
    if (rd && redisReaderFeed(rd, buf, size - 1) == REDIS_OK) {
        void *reply = NULL;
        while (redisReaderGetReply(rd, &reply) == REDIS_OK && reply) {
            check_reply(reply);
            freeReplyObject(reply);
            reply = NULL;
        }
    }
    if (rd)
        redisReaderFree(rd);
    free(buf);
    return 0;
}
