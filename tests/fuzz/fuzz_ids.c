/* libFuzzer target for bl_validate_id / bl_validate_prefix / bl_make_key
 * (src/ids.c). How to run: README.md here.
 *
 * The input is "<marketplace>\0<posting>". Both validators are compared with
 * a plain restatement of the rules in bidlock.h, and for ids they accept,
 * the key must be "<prefix>:<mp>:<posting>" and split back unambiguously.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "keyspace.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_ids: check failed: %s (line %d)\n", #cond, __LINE__);  \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* The rule as bidlock.h states it: 1..max bytes, no whitespace or control
 * characters, no '}' (it would end a Cluster hash tag early), no ':' where
 * forbidden. */
static int rule(const char *s, size_t max, int no_colon)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f || c == '}' || (no_colon && c == ':'))
            return 0;
    }
    return 1;
}

static void check_one(const char *s, int is_mp)
{
    char why[128];
    memset(why, 'x', sizeof why);
    int rc = bl_validate_id(s, is_mp, why, sizeof why);
    CHECK(rc == 0 || rc == BL_EINVAL);
    CHECK((rc == 0) == rule(s, BL_ID_MAX, is_mp));
    if (rc)
        CHECK(memchr(why, '\0', sizeof why) && why[0]);
    CHECK(bl_validate_id(s, is_mp, NULL, 0) == rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2 * BL_ID_MAX + 16)
        return 0;
    char *buf = malloc(size + 2);
    memcpy(buf, data, size);
    buf[size] = buf[size + 1] = '\0';
    const char *mp = buf, *posting = buf + strlen(buf) + 1;

    check_one(mp, 1);
    check_one(mp, 0);
    check_one(posting, 0);
    char why[128];
    int prc = bl_validate_prefix(mp, why, sizeof why);
    /* A prefix also may not end with ':', contain "::" or start with '{'
     * (a Cluster hash tag of its own) (bidlock.h). */
    size_t mn = strlen(mp);
    int prefix_ok = rule(mp, BL_PREFIX_MAX, 0) && mp[mn - 1] != ':' && !strstr(mp, "::") &&
                    mp[0] != '{';
    CHECK((prc == 0) == prefix_ok);

    if (bl_validate_id(mp, 1, NULL, 0) == 0 && bl_validate_id(posting, 0, NULL, 0) == 0) {
        const char *prefix = prc == 0 ? mp : "bid_lock";
        size_t n;
        char *key = bl_make_key(prefix, mp, posting, &n);
        CHECK(key);
        CHECK(n == strlen(key) && n == strlen(prefix) + strlen(mp) + strlen(posting) + 2);
        /* Unambiguous: the marketplace ends at the first ':' after the prefix. */
        const char *m = key + strlen(prefix) + 1;
        CHECK(key[strlen(prefix)] == ':');
        const char *c = strchr(m, ':');
        CHECK(c && (size_t)(c - m) == strlen(mp) && strcmp(c + 1, posting) == 0);
        free(key);
    }
    free(buf);
    return 0;
}
