/* libFuzzer target for bl_url_parse (src/url.c). How to run: README.md here.
 *
 * Besides "no crash, no leak, no UB" it checks the parser's promises:
 *  - the check-only call (out NULL, no why) agrees with the full one;
 *  - an error has a one-line, printable message and leaves *out zeroed;
 *  - an error message never contains the password;
 *  - rediss:// (TLS) is accepted only as redis:// with tls set, and only there;
 *  - an accepted URL is sane (one of host/unix_path/sentinels as its mode
 *    says, ports and db in range, a printable master name) and survives a
 *    round trip: printed back (credentials, path and master name
 *    percent-encoded) it parses to the same fields.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ids.h"
#include "url.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_url: check failed: %s (line %d)\n", #cond, __LINE__);  \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

static int same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Everything but unreserved characters (and '/' in paths) as %XX. */
static size_t enc(char *dst, const char *s, int keep_slash)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/'))
            dst[o++] = (char)c;
        else
            o += (size_t)sprintf(dst + o, "%%%02X", c);
    }
    dst[o] = '\0';
    return o;
}

static void round_trip(const bl_url *u)
{
    size_t cap = 3 * BL_URL_MAX + 64;
    char *s = malloc(cap), *o = s;
    if (u->unix_path) {
        o += sprintf(o, "unix://");
        o += enc(o, u->unix_path, 1);
        o += sprintf(o, "?db=%d", u->db);
    } else {
        o += sprintf(o, u->mode == BL_URL_SENTINEL  ? "redis-sentinel://"
                        : u->mode == BL_URL_CLUSTER ? "redis-cluster://"
                        : u->tls                    ? "rediss://"
                                                    : "redis://");
        if (u->password) {
            if (u->username)
                o += enc(o, u->username, 0);
            *o++ = ':';
            o += enc(o, u->password, 0);
            *o++ = '@';
        }
        if (u->mode == BL_URL_SENTINEL) {
            for (int i = 0; i < u->n_sentinels; i++) {
                const bl_url_endpoint *e = &u->sentinels[i];
                o += sprintf(o, strchr(e->host, ':') ? "%s[%s]:%d" : "%s%s:%d", i ? "," : "",
                             e->host, e->port);
            }
            o += sprintf(o, "/%d#", u->db);
            o += enc(o, u->master_name, 0);
        } else if (u->mode == BL_URL_CLUSTER) {
            for (int i = 0; i < u->n_seeds; i++) {
                const bl_url_endpoint *e = &u->seeds[i];
                o += sprintf(o, strchr(e->host, ':') ? "%s[%s]:%d" : "%s%s:%d", i ? "," : "",
                             e->host, e->port);
            }
        } else {
            o += sprintf(o, strchr(u->host, ':') ? "[%s]:%d/%d" : "%s:%d/%d", u->host, u->port,
                         u->db);
        }
    }
    bl_url v;
    char why[256];
    int rc = bl_url_parse(s, &v, why, sizeof why);
    if (rc != BL_OK)
        fprintf(stderr, "fuzz_url: round trip refused: %s\n", why);
    CHECK(rc == BL_OK || strlen(s) > BL_URL_MAX);
    if (rc == BL_OK) {
        CHECK(same(u->host, v.host) && same(u->unix_path, v.unix_path));
        CHECK(same(u->username, v.username) && same(u->password, v.password));
        CHECK(u->port == v.port && u->db == v.db);
        CHECK(u->mode == v.mode && u->n_sentinels == v.n_sentinels);
        CHECK(u->tls == v.tls); /* rediss:// stays TLS */
        CHECK(same(u->master_name, v.master_name));
        for (int i = 0; i < u->n_sentinels; i++)
            CHECK(same(u->sentinels[i].host, v.sentinels[i].host) &&
                  u->sentinels[i].port == v.sentinels[i].port);
        CHECK(u->n_seeds == v.n_seeds);
        for (int i = 0; i < u->n_seeds; i++)
            CHECK(same(u->seeds[i].host, v.seeds[i].host) && u->seeds[i].port == v.seeds[i].port);
    }
    bl_url_free(&v);
    free(s);
}

/* s[from..to) quoted the way messages quote, NUL-terminated, in a fresh buffer. */
static char *escaped(const char *s, size_t n)
{
    char *e = malloc(4 * n + 1), *o = e;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c > 0x20 && c < 0x7f && c != '\'' && c != '\\')
            *o++ = (char)c;
        else
            o += sprintf(o, "\\x%02x", c);
    }
    *o = '\0';
    return e;
}

/* The raw password, if the input has one that is distinctive enough to look
 * for: 8+ alphanumerics with a digit, an upper and a lower case letter (no
 * message text is like that), found nowhere outside the credentials. */
static void check_no_password(const char *s, const char *why)
{
    const char *sep = strstr(s, "://");
    if (!sep)
        return;
    const char *ui = sep + 3, *at = strrchr(ui, '@');
    if (!at)
        return;
    /* unix:///path has no credentials in its grammar; only the refused
     * unix://user:pw@/path form holds something meant as a password. */
    if ((size_t)(sep - s) == 4 && strncasecmp(s, "unix", 4) == 0 && *ui == '/')
        return;
    const char *colon = memchr(ui, ':', (size_t)(at - ui));
    if (!colon)
        return;
    const char *pw = colon + 1;
    size_t n = (size_t)(at - pw);
    int dig = 0, up = 0, lo = 0;
    for (size_t i = 0; i < n; i++) {
        char c = pw[i];
        if (c >= '0' && c <= '9')
            dig = 1;
        else if (c >= 'A' && c <= 'Z')
            up = 1;
        else if (c >= 'a' && c <= 'z')
            lo = 1;
        else
            return;
    }
    if (n < 8 || !dig || !up || !lo)
        return;
    char *p = strndup(pw, n);
    char *before = escaped(s, (size_t)(ui - s)), *after = escaped(at, strlen(at));
    if (!strstr(before, p) && !strstr(after, p)) {
        if (strstr(why, p))
            fprintf(stderr, "fuzz_url: password leaked: %s\n", why);
        CHECK(!strstr(why, p));
    }
    free(before);
    free(after);
    free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > BL_URL_MAX + 16)
        return 0;
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';

    bl_url u;
    char why[256];
    memset(why, 'x', sizeof why);
    int rc = bl_url_parse(s, &u, why, sizeof why);
    CHECK(rc == BL_OK || rc == BL_EINVAL);
    CHECK(memchr(why, '\0', sizeof why));
    CHECK(bl_url_parse(s, NULL, NULL, 0) == rc);
    char small[9];
    CHECK(bl_url_parse(s, NULL, small, sizeof small) == rc);
    CHECK(memchr(small, '\0', sizeof small));

    if (rc == BL_OK) {
        CHECK(why[0] == '\0');
        CHECK(u.db >= 0);
        if (u.mode == BL_URL_SENTINEL) {
            CHECK(!u.host && !u.unix_path && !u.port);
            CHECK(u.n_sentinels >= 1 && u.n_sentinels <= BL_URL_SENTINELS_MAX);
            for (int i = 0; i < BL_URL_SENTINELS_MAX; i++) {
                const bl_url_endpoint *e = &u.sentinels[i];
                if (i >= u.n_sentinels) {
                    CHECK(!e->host && !e->port);
                    continue;
                }
                CHECK(e->port >= 1 && e->port <= 65535);
                CHECK(bl_host_ok(e->host, strlen(e->host)));
                for (int k = 0; k < i; k++)
                    CHECK(e->port != u.sentinels[k].port ||
                          strcasecmp(e->host, u.sentinels[k].host) != 0);
            }
            size_t mn = strlen(u.master_name);
            CHECK(mn >= 1 && mn <= BL_MASTER_NAME_MAX);
            for (size_t i = 0; i < mn; i++)
                CHECK(u.master_name[i] > 0x20 && u.master_name[i] < 0x7f);
        } else if (u.mode == BL_URL_CLUSTER) {
            CHECK(!u.host && !u.unix_path && !u.port && !u.db);
            CHECK(u.n_seeds >= 1 && u.n_seeds <= BL_URL_SEEDS_MAX);
            for (int i = 0; i < BL_URL_SEEDS_MAX; i++) {
                const bl_url_endpoint *e = &u.seeds[i];
                if (i >= u.n_seeds) {
                    CHECK(!e->host && !e->port);
                    continue;
                }
                CHECK(e->port >= 1 && e->port <= 65535);
                CHECK(bl_host_ok(e->host, strlen(e->host)));
            }
            CHECK(!u.n_sentinels && !u.master_name && !u.sentinels[0].host);
        } else {
            CHECK(!u.host != !u.unix_path);
            CHECK(u.mode == (u.unix_path ? BL_URL_UNIX : BL_URL_PLAIN));
            CHECK(!u.n_sentinels && !u.master_name && !u.sentinels[0].host);
            CHECK(!u.n_seeds && !u.seeds[0].host);
        }
        CHECK(bl_url_kind(s) == u.mode);
        if (u.mode == BL_URL_SENTINEL || u.mode == BL_URL_CLUSTER) {
            /* checked above */
        } else if (u.host) {
            CHECK(u.port >= 1 && u.port <= 65535);
            CHECK(bl_host_ok(u.host, strlen(u.host)));
        } else {
            CHECK(u.port == 0 && u.unix_path[0] == '/' && strlen(u.unix_path) <= 107);
            CHECK(!u.username && !u.password);
        }
        CHECK(!u.username || u.password);
        CHECK(!u.password || u.password[0]);
        CHECK(u.tls == (strncasecmp(s, "rediss://", 9) == 0)); /* TLS exactly when asked */
        CHECK(!u.tls || (u.host && u.mode == BL_URL_PLAIN));
        round_trip(&u);
    } else {
        CHECK(why[0] != '\0');
        for (const char *p = why; *p; p++)
            CHECK(*p >= 0x20 && *p < 0x7f);
        CHECK(!u.host && !u.unix_path && !u.username && !u.password && !u.port && !u.db);
        CHECK(!u.mode && !u.n_sentinels && !u.master_name && !u.sentinels[0].host);
        CHECK(!u.tls);
        check_no_password(s, why);
    }
    bl_url_free(&u);
    free(s);
    return 0;
}
