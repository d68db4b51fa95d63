/* Unit tests: pure pieces of the engine, no server. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "backoff.h"
#include "ids.h"
#include "keyspace.h"
#include "resp.h"

static char why[256];

Test(ids, accepts_plain_ids)
{
    cr_assert_eq(bl_validate_id("ebay", 1, why, sizeof why), 0);
    cr_assert_eq(bl_validate_id("posting-123_ä", 0, why, sizeof why), 0);
    cr_assert_eq(bl_validate_id("a:b:c", 0, why, sizeof why), 0, "':' is fine in a posting");
    char max[257];
    memset(max, 'x', 256);
    max[256] = '\0';
    cr_assert_eq(bl_validate_id(max, 1, why, sizeof why), 0, "256 bytes is the limit");
}

Test(ids, rejects_bad_ids_with_a_reason)
{
    struct {
        const char *id;
        int mp;
        const char *reason;
    } cases[] = {
        {NULL, 1, "NULL"},          {"", 0, "empty"},
        {"a:b", 1, "':'"},          {"a b", 0, "whitespace"},
        {"a\tb", 1, "whitespace"},  {"a\nb", 0, "control"},
        {"a\x7f", 0, "control"},    {"\x01", 1, "control"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        why[0] = '\0';
        cr_assert_eq(bl_validate_id(cases[i].id, cases[i].mp, why, sizeof why), BL_EINVAL,
                     "case %zu accepted", i);
        cr_assert(strstr(why, cases[i].reason), "case %zu: reason '%s'", i, why);
        cr_assert(strstr(why, cases[i].mp ? "marketplace" : "posting"), "names the field");
    }
    char *big = malloc(258);
    memset(big, 'x', 257);
    big[257] = '\0';
    cr_assert_eq(bl_validate_id(big, 0, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "256"));
    free(big);
}

Test(ids, marketplace_colon_rule_prevents_key_collisions)
{
    /* "a:b"+"c" and "a"+"b:c" would both be prefix:a:b:c. */
    cr_assert_eq(bl_validate_id("a:b", 1, why, sizeof why), BL_EINVAL);
    size_t n;
    char *k = bl_make_key("bid_lock", "a", "b:c", &n);
    cr_assert_str_eq(k, "bid_lock:a:b:c");
    cr_assert_eq(n, strlen(k));
    free(k);
}

Test(ids, prefix_rules)
{
    cr_assert_eq(bl_validate_prefix("bid_lock", why, sizeof why), 0);
    cr_assert_eq(bl_validate_prefix("app:locks", why, sizeof why), 0);
    cr_assert_eq(bl_validate_prefix("", why, sizeof why), BL_EINVAL);
    cr_assert_eq(bl_validate_prefix("a b", why, sizeof why), BL_EINVAL);
    cr_assert_eq(bl_validate_prefix(NULL, why, sizeof why), BL_EINVAL);
}

Test(holder, has_host_pid_uuid4_and_is_unique)
{
    char a[BL_HOLDER_MAX], b[BL_HOLDER_MAX];
    cr_assert_eq(bl_make_holder(a, sizeof a), 0);
    cr_assert_eq(bl_make_holder(b, sizeof b), 0);
    cr_assert_str_neq(a, b);
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    char pid[32];
    snprintf(pid, sizeof pid, ":%ld:", (long)getpid());
    cr_assert(strstr(a, pid), "pid field in %s", a);
    /* Last field: a lower-case v4 uuid, 8-4-4-4-12 with version nibble 4. */
    const char *u = strrchr(a, ':') + 1;
    cr_assert_eq(strlen(u), 36);
    cr_assert_eq(u[14], '4', "uuid version 4: %s", u);
    cr_assert(strchr("89ab", u[19]), "uuid variant: %s", u);
    for (const char *p = u; *p; p++)
        cr_assert(*p == '-' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'));
    /* Host first, with ':' replaced so fields stay separable. */
    size_t colons = 0;
    for (const char *p = a; *p; p++)
        colons += *p == ':';
    cr_assert_eq(colons, 2);
}

Test(backoff, grows_by_factor_up_to_the_cap_with_jitter_in_range)
{
    bl_backoff b = {50, 1000, 1.5};
    double step = 0;
    uint64_t rng = 42, now = 0, deadline = 1000000;
    double expect = 50;
    for (int i = 0; i < 20; i++) {
        uint64_t p = bl_backoff_next(&b, &step, bl_rand_next(&rng), now, deadline);
        cr_assert_float_eq(step, expect, 1e-9, "step %d: %f", i, step);
        cr_assert(p >= (uint64_t)(expect / 2) && p <= (uint64_t)(expect + 0.5),
                  "pause %llu outside [%f/2, %f]", (unsigned long long)p, expect, expect);
        expect = expect * 1.5 > 1000 ? 1000 : expect * 1.5;
        now += p;
    }
    cr_assert_float_eq(step, 1000, 1e-9);
}

Test(backoff, never_passes_the_deadline_with_a_fake_clock)
{
    /* Walk a 10 s wait with the defaults: every pause ends at or before the
     * deadline, the last one lands exactly on it, and the count is sane. */
    bl_backoff b = {50, 1000, 1.5};
    double step = 0;
    uint64_t rng = 7, now = 5000, deadline = 15000;
    int n = 0;
    while (now < deadline) {
        uint64_t p = bl_backoff_next(&b, &step, bl_rand_next(&rng), now, deadline);
        cr_assert(p >= 1);
        cr_assert(now + p <= deadline);
        now += p;
        n++;
        cr_assert(n < 100, "bounded number of attempts");
    }
    cr_assert_eq(now, deadline);
    cr_assert(n >= 12 && n <= 30, "attempts in 10 s: %d", n);
    cr_assert_eq(bl_backoff_next(&b, &step, 1, deadline, deadline), 0);
}

Test(backoff, jitter_spreads_waiters)
{
    bl_backoff b = {50, 1000, 1.5};
    uint64_t rng = 99;
    int distinct = 0;
    uint64_t seen[64] = {0};
    for (int i = 0; i < 64; i++) {
        double step = 800;
        uint64_t p = bl_backoff_next(&b, &step, bl_rand_next(&rng), 0, 100000);
        int dup = 0;
        for (int j = 0; j < i; j++)
            dup |= seen[j] == p;
        distinct += !dup;
        seen[i] = p;
    }
    cr_assert(distinct > 32, "only %d distinct pauses", distinct);
}

Test(status, every_code_has_a_distinct_message_and_name)
{
    int codes[] = {BL_OK, BL_ETIMEDOUT, BL_EBUSY, BL_ENOTHELD, BL_ECONN,
                   BL_EREDIS, BL_EINVAL, BL_ECANCELED, BL_ENOMEM, BL_ECLOSED};
    size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            cr_assert_str_neq(bl_strerror(codes[i]), bl_strerror(codes[j]));
            cr_assert_str_neq(bl_status_name(codes[i]), bl_status_name(codes[j]));
        }
    cr_assert_str_eq(bl_status_name(12345), "BL_UNKNOWN");
    cr_assert_not_null(bl_strerror(-999));
}

Test(config, defaults_are_valid_and_bad_fields_are_named)
{
    bl_config c;
    bl_config_init(&c);
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_OK);
    cr_assert_eq(c.default_ttl_ms, 300000);
    cr_assert_eq(c.default_wait_ms, 10000);
    cr_assert_str_eq(c.key_prefix, "bid_lock");
    c.port = 70000;
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "port"));
    bl_config_init(&c);
    c.backoff_multiplier = 0.5;
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "multiplier"));
    bl_config_init(&c);
    c.default_ttl_ms = 0;
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "ttl"));
}

/* ---- command encoding: byte for byte what hiredis would send ------------- */

#include <hiredis/hiredis.h>

Test(resp, numbers_in_decimal)
{
    char buf[24];
    struct {
        uint64_t v;
        const char *s;
    } cases[] = {{0, "0"}, {7, "7"}, {10, "10"}, {30000, "30000"},
                 {UINT64_MAX, "18446744073709551615"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = bl_u64_dec(buf, cases[i].v);
        cr_assert_eq(n, strlen(cases[i].s));
        cr_assert(memcmp(buf, cases[i].s, n) == 0, "case %zu: %.*s", i, (int)n, buf);
    }
}

Test(resp, encoding_matches_redisFormatCommandArgv)
{
    char big[1500];
    memset(big, 'b', sizeof big);
    const char *argv[] = {"EVALSHA", "0123456789012345678901234567890123456789", "4",
                          "bid_lock:ebay:42", "", "bin\r\n\0ary", big};
    size_t lens[] = {7, 40, 1, 16, 0, 10, sizeof big};
    int argc = (int)(sizeof argv / sizeof argv[0]);
    char *want = NULL;
    int wlen = redisFormatCommandArgv(&want, argc, argv, lens);
    cr_assert(wlen > 0);
    char buf[2048];
    size_t n = bl_resp_format(buf, sizeof buf, argc, argv, lens);
    cr_assert_eq(n, (size_t)wlen);
    cr_assert(memcmp(buf, want, n) == 0);
    /* Too small: 0, and the caller lets hiredis format it. */
    cr_assert_eq(bl_resp_format(buf, (size_t)wlen - 1, argc, argv, lens), 0);
    redisFreeCommand(want);
}

Test(units, the_runtime_version_is_the_header_version)
{
    int num = -1;
    const char *v = bl_version(&num);
    cr_assert_str_eq(v, BIDLOCK_VERSION);
    cr_assert_eq(num, BIDLOCK_VERSION_NUM);
    int maj, min, pat;
    cr_assert_eq(sscanf(v, "%d.%d.%d", &maj, &min, &pat), 3);
    cr_assert_eq(num, maj << 16 | min << 8 | pat, "the number spells the string");
    cr_assert_str_eq(bl_version(NULL), v);
}

Test(units, every_status_has_one_name_and_one_sentence)
{
    for (int s = 0; s >= -12; s--) {
        cr_assert_str_neq(bl_status_name(s), "BL_UNKNOWN", "status %d", s);
        cr_assert_str_neq(bl_strerror(s), "unknown status", "status %d", s);
        for (int t = s + 1; t <= 0; t++)
            cr_assert_str_neq(bl_strerror(s), bl_strerror(t), "%d and %d", s, t);
    }
    cr_assert_str_eq(bl_status_name(-13), "BL_UNKNOWN");
    cr_assert_str_eq(bl_status_name(BL_EDONE), "BL_EDONE");
}

/* ---- the key layout and Redis Cluster slots ---------------------------------- */

Test(keys, crc16_and_slots_match_the_cluster_specification)
{
    /* The check value of CRC16/XMODEM, quoted by the Redis Cluster spec. */
    cr_assert_eq(bl_crc16("123456789", 9), 0x31C3);
    cr_assert_eq(bl_crc16("", 0), 0);
    /* Hash tags, the spec's own examples. */
    unsigned u = bl_key_slot("user1000", 8);
    cr_assert_eq(bl_key_slot("{user1000}.following", 20), u);
    cr_assert_eq(bl_key_slot("{user1000}.followers", 20), u);
    cr_assert_eq(bl_key_slot("foo{}{bar}", 10), bl_crc16("foo{}{bar}", 10) & 16383,
                 "an empty tag: the whole key");
    cr_assert_eq(bl_key_slot("foo{{bar}}zap", 13), bl_crc16("{bar", 4) & 16383);
    cr_assert_eq(bl_key_slot("foo{bar}{zap}", 13), bl_key_slot("bar", 3));
    cr_assert_eq(bl_key_slot("{", 1), bl_crc16("{", 1) & 16383, "no '}': the whole key");
    /* Measured with CLUSTER KEYSLOT on Redis 7.0.15 (DESIGN.md). */
    cr_assert_eq(bl_key_slot("bid_lock:ebay:123", 17), 616);
    cr_assert_eq(bl_key_slot("bid_lock::q:ebay:123", 20), 277);
    cr_assert_eq(bl_key_slot("bid_lock::fence:ebay:123", 24), 5507);
    cr_assert_eq(bl_key_slot("bid_lock::done:ebay:123", 23), 11655);
}

Test(keys, every_name_of_a_lock_hashes_to_the_lock_keys_slot)
{
    const char *ids[][3] = {{"bid_lock", "ebay", "123"},
                            {"bid_lock", "ebay", "a:b:c"},
                            {"app:locks", "m{x", "p{q{"}, /* '{' alone is harmless */
                            {"p", "m", "x"}};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        bl_keys *k = bl_keys_new(ids[i][0], ids[i][1], ids[i][2]);
        cr_assert(k);
        unsigned s = bl_key_slot(k->k[BL_KEY_LOCK], k->len[BL_KEY_LOCK]);
        cr_assert_eq(s, bl_crc16(k->k[BL_KEY_LOCK], k->len[BL_KEY_LOCK]) & 16383,
                     "the lock key has no tag of its own");
        for (int n = BL_KEY_QUEUE; n <= BL_KEY_DONE; n++)
            cr_assert_eq(bl_key_slot(k->k[n], k->len[n]), s, "%s", k->k[n]);
        char ch[600];
        size_t cn = bl_keys_channel(ch, sizeof ch, k->k[BL_KEY_LOCK], k->len[BL_KEY_LOCK],
                                    "h:1:u", 5);
        cr_assert(cn > 0);
        cr_assert_eq(bl_key_slot(ch, cn), s, "channel %s", ch);
        size_t kl;
        const char *back = bl_keys_channel_key(ch, cn, "h:1:u", 5, &kl);
        cr_assert(back);
        cr_assert_eq(kl, k->len[BL_KEY_LOCK]);
        cr_assert_eq(memcmp(back, k->k[BL_KEY_LOCK], kl), 0);
        cr_assert_null(bl_keys_channel_key(ch, cn, "h:1:v", 5, &kl), "another holder's");
        free(k);
    }
    bl_keys *k = bl_keys_new("bid_lock", "ebay", "123");
    cr_assert_str_eq(k->k[BL_KEY_LOCK], "bid_lock:ebay:123");
    cr_assert_str_eq(k->k[BL_KEY_QUEUE], "{bid_lock:ebay:123}:q");
    cr_assert_str_eq(k->k[BL_KEY_FENCE], "{bid_lock:ebay:123}:fence");
    cr_assert_str_eq(k->k[BL_KEY_DONE], "{bid_lock:ebay:123}:done");
    cr_assert_str_eq(k->k[BL_KEY_OLD_DONE], "bid_lock::done:ebay:123");
    cr_assert_str_eq(k->k[BL_KEY_OLD_FENCE], "bid_lock::fence:ebay:123");
    for (int n = 0; n < BL_KEY_COUNT; n++)
        cr_assert_eq(k->len[n], strlen(k->k[n]));
    cr_assert_eq(bl_key_slot(k->k[BL_KEY_QUEUE], k->len[BL_KEY_QUEUE]), 616);
    cr_assert(bl_keys_is_old_queue("bid_lock::q:ebay:1", 18, "bid_lock", 8));
    cr_assert(!bl_keys_is_old_queue("{bid_lock:ebay:1}:q", 19, "bid_lock", 8));
    cr_assert(!bl_keys_is_lock_key("{bid_lock:ebay:1}:q", 19, "bid_lock", 8));
    free(k);
}

Test(keys, a_closing_brace_or_a_leading_open_brace_is_refused)
{
    const char *bad_ids[] = {"a}b", "}", "x{y}"};
    for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
        for (int mp = 0; mp <= 1; mp++) {
            why[0] = '\0';
            cr_assert_eq(bl_validate_id(bad_ids[i], mp, why, sizeof why), BL_EINVAL, "%s",
                         bad_ids[i]);
            cr_assert(strstr(why, "'}'") && strstr(why, "hash tag"), "reason: %s", why);
        }
    }
    cr_assert_eq(bl_validate_id("a{b", 1, why, sizeof why), 0, "'{' alone is fine");
    cr_assert_eq(bl_validate_prefix("app}x", why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "key_prefix") && strstr(why, "'}'"), "%s", why);
    cr_assert_eq(bl_validate_prefix("{app", why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "start with '{'"), "%s", why);
    cr_assert_eq(bl_validate_prefix("a{pp", why, sizeof why), 0);
}

/* ---- Redis Cluster: MOVED / ASK and CLUSTER SLOTS (resp.c) ------------------ */

Test(cluster_parse, redirections_are_read_and_bad_ones_refused)
{
    char ip[46];
    unsigned slot;
    int port, ask;
    cr_assert_eq(bl_redis_parse_redirect("MOVED 3999 127.0.0.1:6381", &ask, &slot, ip, sizeof ip,
                                         &port), 0);
    cr_assert(ask == 0 && slot == 3999 && port == 6381 && !strcmp(ip, "127.0.0.1"));
    cr_assert_eq(bl_redis_parse_redirect("ASK 0 [::1]:7000", &ask, &slot, ip, sizeof ip, &port),
                 0);
    cr_assert(ask == 1 && slot == 0 && port == 7000 && !strcmp(ip, "::1"), "%s", ip);
    /* A bare word, a slot out of range or signed, no port, port 0, an
     * address too long for ip, an empty address, another error. */
    static const char *const bad[] = {"MOVED", "MOVED ", "ASK", "MOVED 16384 1.2.3.4:1",
                                      "MOVED -1 1.2.3.4:1", "MOVED  1 1.2.3.4:1",
                                      "MOVED 1 1.2.3.4", "MOVED 1 1.2.3.4:0",
                                      "MOVED 1 1.2.3.4:-5", "MOVED 1 :6379", "MOVED 1 []:6379",
                                      "MOVED 1 1.2.3.4:65536",
                                      "MOVED 1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:1",
                                      "TRYAGAIN Multiple keys", NULL};
    for (int i = 0; bad[i]; i++)
        cr_assert_eq(bl_redis_parse_redirect(bad[i], &ask, &slot, ip, sizeof ip, &port), -1,
                     "accepted '%s'", bad[i]);
    cr_assert_eq(bl_redis_parse_redirect(NULL, &ask, &slot, ip, sizeof ip, &port), -1);
}

typedef struct nodes_seen {
    char ip[4][46];
    long long port[4];
    int master[4], n;
} nodes_seen;

static int seen_node(void *ctx, const char *ip, long long port, int master)
{
    nodes_seen *s = ctx;
    if (port < 1 || port > 65535 || s->n == 4)
        return -1;
    snprintf(s->ip[s->n], sizeof s->ip[0], "%s", ip);
    s->port[s->n] = port;
    s->master[s->n] = master;
    return s->n++;
}

static redisReply *read_reply(const char *resp, size_t n)
{
    redisReader *rd = redisReaderCreate();
    cr_assert_eq(redisReaderFeed(rd, resp, n), REDIS_OK);
    void *out = NULL;
    cr_assert_eq(redisReaderGetReply(rd, &out), REDIS_OK);
    cr_assert_not_null(out);
    redisReaderFree(rd);
    return out;
}

Test(cluster_parse, a_slot_map_names_each_slots_master)
{
    static const char map[] = "*2\r\n"
                              "*4\r\n:0\r\n:5460\r\n*2\r\n$9\r\n127.0.0.1\r\n:30001\r\n"
                              "*2\r\n$9\r\n127.0.0.1\r\n:30004\r\n"
                              "*3\r\n:5461\r\n:16383\r\n*2\r\n$0\r\n\r\n:30002\r\n";
    redisReply *r = read_reply(map, sizeof map - 1);
    static uint16_t owner[BL_CLUSTER_SLOTS];
    nodes_seen s = {.n = 0};
    cr_assert_eq(bl_redis_parse_slots(r, owner, seen_node, &s), 0);
    cr_assert_eq(s.n, 3, "two masters and a replica");
    cr_assert(s.master[0] && s.port[0] == 30001 && !s.master[1] && s.port[1] == 30004);
    cr_assert(s.master[2] && s.port[2] == 30002 && s.ip[2][0] == '\0',
              "an empty address is passed on as the node that answered");
    cr_assert(owner[0] == 0 && owner[5460] == 0 && owner[5461] == 2 && owner[16383] == 2);
    freeReplyObject(r);
    /* A refused master leaves its range unowned; a bad range or shape is -1. */
    static const char refused[] = "*1\r\n*3\r\n:0\r\n:9\r\n*2\r\n$1\r\nx\r\n:0\r\n";
    r = read_reply(refused, sizeof refused - 1);
    s.n = 0;
    cr_assert_eq(bl_redis_parse_slots(r, owner, seen_node, &s), 0);
    cr_assert_eq(owner[0], BL_SLOT_NONE);
    freeReplyObject(r);
    static const char *const bad[] = {
        "*1\r\n*3\r\n:10\r\n:9\r\n*2\r\n$1\r\nx\r\n:1\r\n",    /* lo > hi */
        "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nx\r\n:1\r\n", /* past the last slot */
        "*1\r\n*2\r\n:0\r\n:9\r\n",                              /* no master */
        "*1\r\n*3\r\n:0\r\n:9\r\n*1\r\n$1\r\nx\r\n",             /* no port */
        "*0\r\n", "-ERR This instance has cluster support disabled\r\n", NULL};
    for (int i = 0; bad[i]; i++) {
        r = read_reply(bad[i], strlen(bad[i]));
        cr_assert_eq(bl_redis_parse_slots(r, owner, seen_node, &s), -1, "accepted #%d", i);
        freeReplyObject(r);
    }
}
