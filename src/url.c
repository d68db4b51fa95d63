/* url.c - where Redis is, as a URL:
 *
 *   redis://[[user]:password@]host[:port][/db]     port 6379, db 0 by default
 *   unix:///path/to/socket[?db=N]                  db 0 by default
 *   redis-sentinel://[[user]:password@]host[:port][,host[:port]...][/db]#NAME
 *                                                  sentinel port 26379, db 0
 *   redis-cluster://[[user]:password@]host[:port][,host[:port]...]
 *                                                  seed nodes, port 6379
 *
 * Strict on purpose: a URL that is not understood exactly is refused with a
 * sentence naming the bad part, never patched up with a default - a
 * half-understood URL is how an instance ends up locking on the wrong Redis.
 *
 * Decisions
 *  - The scheme is case-insensitive (RFC 3986). rediss:// is redis:// with
 *    tls set (the same grammar; TLS itself is src/tls.c).
 *  - The credentials end at the LAST '@' and the username at the first ':',
 *    so a password may hold '@', ':', '/', '?' and '#' as they are. Username
 *    and password are percent-decoded (%40 -> '@', %25 -> '%', %20 -> ' ');
 *    a '%' without two hex digits after it, and %00, are refused. A username
 *    needs a password: AUTH has no username-only form.
 *  - The unix socket path is percent-decoded too; host, port and db are not.
 *  - "host:" and "host/" are refused: an empty port or db is a typo.
 *  - Host: a name of letters, digits, '-', '.', '_', or an IPv6 address in
 *    brackets. Whitespace and control characters are refused everywhere.
 *  - redis-sentinel:// (Lettuce's form) lists 1..16 sentinels, each
 *    host[:port] or [IPv6][:port], separated by ','; an empty entry, the
 *    same host and port twice, and a query are refused. The credentials
 *    (same rules as above) and the db are the master's, not the sentinels'
 *    (those are bl_config.sentinel_username/sentinel_password). NAME, after
 *    the first '#' that follows the credentials, is required: it is
 *    percent-decoded and must then be 1..256 bytes of printable ASCII
 *    without space. A '@' in it must be written %40 (the credentials end at
 *    the last '@').
 *  - redis-cluster:// lists 1..16 seed nodes of a Redis Cluster, like the
 *    sentinels above (any reachable one will do: the slot map is read from
 *    it). No db (a cluster has only db 0), no query, no fragment. The
 *    credentials are every node's.
 *  - Messages quote the bad part (escaped, cut at 40 bytes) but nothing
 *    between "://" and the last '@', no query value and no part that holds
 *    an '@': a password must never reach a log.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ids.h"
#include "url.h"

#define QUOTE_MAX 40


void bl_quote(char *dst, size_t cap, const char *s, size_t n)
{
    if (!dst || !cap)
        return;
    if (cap < 8) {
        dst[0] = '\0';
        return;
    }
    size_t o = 0, i = 0, lim = n > QUOTE_MAX ? QUOTE_MAX : n;
    dst[o++] = '\'';
    for (; i < lim; i++) {
        unsigned char c = (unsigned char)s[i];
        char t[5];
        if (c > 0x20 && c < 0x7f && c != '\'' && c != '\\') {
            t[0] = (char)c;
            t[1] = '\0';
        } else {
            snprintf(t, sizeof t, "\\x%02x", c);
        }
        size_t tn = strlen(t);
        if (o + tn + 5 > cap) /* keep room for "...'" and the NUL */
            break;
        memcpy(dst + o, t, tn);
        o += tn;
    }
    if (i < n) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o++] = '\'';
    dst[o] = '\0';
}

int bl_parse_uint(const char *s, size_t n, long lo, long hi, long *out)
{
    /* Digits only: strtol alone would also take spaces, a sign and "0x". */
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return -1;
    if (n > 19) /* more than any long: out of range, not "not a number" */
        return -2;
    char buf[20];
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end;
    errno = 0;
    long v = strtol(buf, &end, 10);
    if (end != buf + n)
        return -1;
    if (errno == ERANGE || v < lo || v > hi)
        return -2;
    *out = v;
    return 0;
}

static int bad_byte(unsigned char c)
{
    return c <= 0x20 || c == 0x7f;
}

static int has_bad_byte(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (bad_byte((unsigned char)s[i]))
            return 1;
    return 0;
}

/* Quote a part for a message - unless it holds an '@': then it may hold
 * credentials written in the wrong place (unix:///s#user:pw@x), and it is
 * described instead of shown. */
static void quote(char *dst, size_t cap, const char *s, size_t n)
{
    if (memchr(s, '@', n))
        snprintf(dst, cap, "(not shown: it contains '@')");
    else
        bl_quote(dst, cap, s, n);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

enum { PCT_OK = 0, PCT_BAD = 1, PCT_NUL = 2 };

/* Percent-decode s[0..n) into d (n + 1 bytes), or only check when d is NULL. */
static int pct_decode_into(const char *s, size_t n, char *d)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            int hi = i + 1 < n ? hexval(s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return PCT_BAD;
            c = (char)(hi * 16 + lo);
            if (c == '\0')
                return PCT_NUL;
            i += 2;
        }
        if (d)
            d[o++] = c;
    }
    if (d)
        d[o] = '\0';
    return PCT_OK;
}

/* Check s[0..n); when out is not NULL and it is good, *out is the decoded
 * fresh string (NULL on out of memory: the caller checks). A bad input never
 * leaves anything in *out. */
static int pct_decode(const char *s, size_t n, char **out)
{
    int rc = pct_decode_into(s, n, NULL);
    if (rc != PCT_OK || !out)
        return rc;
    *out = malloc(n + 1);
    if (*out)
        pct_decode_into(s, n, *out);
    return PCT_OK;
}

/* A decoded field: check (out NULL) or decode into *out. */
static int take_pct(const char *what, const char *s, size_t n, char **out, char *why,
                    size_t why_len)
{
    if (has_bad_byte(s, n))
        return bl_einval(why, why_len, "%s contains whitespace or a control character", what);
    int rc = pct_decode(s, n, out);
    if (rc == PCT_BAD)
        return bl_einval(why, why_len,
                   "%s has a '%%' not followed by two hex digits (write %%25 for '%%')", what);
    if (rc == PCT_NUL)
        return bl_einval(why, why_len, "%s contains %%00, which cannot be sent", what);
    if (out && !*out) {
        bl_einval(why, why_len, "out of memory");
        return BL_ENOMEM;
    }
    return BL_OK;
}

static int take_str(const char *s, size_t n, char **out, char *why, size_t why_len)
{
    if (!out)
        return BL_OK;
    *out = strndup(s, n);
    if (*out)
        return BL_OK;
    bl_einval(why, why_len, "out of memory");
    return BL_ENOMEM;
}

int bl_host_ok(const char *h, size_t n)
{
    if (n == 0 || n > 255)
        return 0;
    if (memchr(h, ':', n)) { /* only IPv6 has ':' */
        char buf[64];
        struct in6_addr a;
        if (n >= sizeof buf)
            return 0;
        memcpy(buf, h, n);
        buf[n] = '\0';
        return inet_pton(AF_INET6, buf, &a) == 1;
    }
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return 0;
    }
    return 1;
}

static int parse_userinfo(const char *s, size_t n, bl_url *u, char *why, size_t why_len)
{
    /* Nothing of s is ever quoted: it may be, or contain, the password. */
    if (n == 0)
        return bl_einval(why, why_len, "credentials before '@' are empty");
    const char *colon = memchr(s, ':', n);
    if (!colon)
        return bl_einval(why, why_len,
                   "credentials before '@' have no ':' (write redis://user:password@host "
                   "or redis://:password@host)");
    size_t un = (size_t)(colon - s), pn = n - un - 1;
    if (pn == 0)
        return bl_einval(why, why_len, "password after ':' is empty");
    int rc = BL_OK;
    if (un > 0)
        rc = take_pct("username", s, un, u ? &u->username : NULL, why, why_len);
    if (rc == BL_OK)
        rc = take_pct("password", colon + 1, pn, u ? &u->password : NULL, why, why_len);
    return rc;
}

static int parse_db(const char *s, size_t n, int *db, char *why, size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    long v;
    int rc = bl_parse_uint(s, n, 0, INT_MAX, &v);
    if (rc == 0) {
        *db = (int)v;
        return BL_OK;
    }
    quote(q, sizeof q, s, n);
    return bl_einval(why, why_len, "db %s is %s 0..%d", q,
               rc == -1 ? "not a number" : "out of range", INT_MAX);
}

/* One host[:port] or [IPv6][:port] in s[0..n): the whole of it (a '/', '?',
 * '#' or ',' after it is the caller's). what prefixes every message
 * ("" or "sentinel 2: "); scheme is for the IPv6 hint. Sets *h, *hn to the
 * host inside s and *port (defport when left out). */
static int parse_endpoint(const char *s, size_t n, int defport, const char *what,
                          const char *scheme, const char **h, size_t *hn, int *port,
                          char *why, size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    const char *p = s, *end = s + n;
    if (n && *p == '[') {
        const char *close = memchr(p, ']', n);
        if (!close) {
            quote(q, sizeof q, p, n);
            return bl_einval(why, why_len, "%sIPv6 address %s has no closing ']'", what, q);
        }
        *h = p + 1;
        *hn = (size_t)(close - *h);
        p = close + 1;
        if (*hn == 0)
            return bl_einval(why, why_len, "%sIPv6 address between '[' and ']' is empty", what);
        if (!bl_host_ok(*h, *hn) || !memchr(*h, ':', *hn)) {
            quote(q, sizeof q, *h, *hn);
            return bl_einval(why, why_len, "%shost %s in brackets is not an IPv6 address", what,
                             q);
        }
        if (p < end && *p != ':') {
            quote(q, sizeof q, p, (size_t)(end - p));
            return bl_einval(why, why_len, "%sunexpected %s after the IPv6 address", what, q);
        }
    } else {
        const char *c1 = memchr(p, ':', n);
        *h = p;
        *hn = c1 ? (size_t)(c1 - p) : n;
        p += *hn;
        if (*hn == 0) {
            int v6 = c1 && memchr(c1 + 1, ':', (size_t)(end - c1 - 1));
            if (v6)
                return bl_einval(why, why_len,
                                 "%shost is empty (write an IPv6 address in brackets: "
                                 "%s[::1]:%d)",
                                 what, scheme, defport);
            return bl_einval(why, why_len, "%shost is empty", what);
        }
        quote(q, sizeof q, *h, *hn);
        if (has_bad_byte(*h, *hn))
            return bl_einval(why, why_len, "%shost %s contains whitespace or a control character",
                             what, q);
        if (*hn > 255)
            return bl_einval(why, why_len, "%shost %s is longer than 255 bytes", what, q);
        if (!bl_host_ok(*h, *hn))
            return bl_einval(why, why_len,
                             "%shost %s has a character not allowed in a host name "
                             "(letters, digits, '-', '.', '_')",
                             what, q);
    }
    *port = defport;
    if (p < end) { /* at ':' */
        p++;
        size_t pn = (size_t)(end - p);
        if (pn == 0)
            return bl_einval(why, why_len, "%sport after ':' is empty (leave out ':' for %d)",
                             what, defport);
        long v;
        int rc = bl_parse_uint(p, pn, 1, 65535, &v);
        if (rc) {
            quote(q, sizeof q, p, pn);
            return bl_einval(why, why_len, "%sport %s is %s 1..65535", what, q,
                             rc == -1 ? "not a number" : "out of range");
        }
        *port = (int)v;
    }
    return BL_OK;
}

/* Credentials up to the last '@', if any; *p is then what follows them. */
static int take_userinfo(const char *r, const char **p, bl_url *u, char *why, size_t why_len)
{
    const char *at = strrchr(r, '@');
    *p = r;
    if (!at)
        return BL_OK;
    *p = at + 1;
    return parse_userinfo(r, (size_t)(at - r), u, why, why_len);
}

static int parse_redis(const char *r, bl_url *u, char *why, size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    const char *p;
    int rc = take_userinfo(r, &p, u, why, why_len);
    if (rc)
        return rc;

    const char *h;
    size_t hn, en = strcspn(p, "/?#");
    int port, db = 0;
    rc = parse_endpoint(p, en, 6379, "", "redis://", &h, &hn, &port, why, why_len);
    if (rc)
        return rc;
    p += en;
    if (*p == '/') {
        p++;
        size_t dn = strcspn(p, "?#");
        if (dn == 0)
            return bl_einval(why, why_len, "db after '/' is empty (leave out '/' for db 0)");
        rc = parse_db(p, dn, &db, why, why_len);
        if (rc)
            return rc;
        p += dn;
    }
    if (*p) {
        quote(q, sizeof q, p, strlen(p));
        return bl_einval(why, why_len, "unexpected %s at the end (redis:// takes no query or "
                   "fragment; the db goes after '/')", q);
    }
    if (u) {
        u->mode = BL_URL_PLAIN;
        u->port = port;
        u->db = db;
    }
    return take_str(h, hn, u ? &u->host : NULL, why, why_len);
}

/* host[:port] spans of p[0..ln), comma-separated: at most max, each
 * valid (port default_port when left out), no two the same; "<noun> N: "
 * starts a refusal. Nothing is allocated. */
typedef struct ep_span {
    const char *h;
    size_t hn;
    int port;
} ep_span;

static int parse_endpoints(const char *p, size_t ln, int max, int default_port, const char *noun,
                           const char *scheme, ep_span *ep, int *count, char *why,
                           size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    int n = 0;
    for (const char *s = p, *end = p + ln;;) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        size_t sn = comma ? (size_t)(comma - s) : (size_t)(end - s);
        if (n == max)
            return bl_einval(why, why_len, "more than %d %ss", max, noun);
        char what[32];
        snprintf(what, sizeof what, "%s %d: ", noun, n + 1);
        if (sn == 0)
            return bl_einval(why, why_len, "%sis empty (a stray ',')", what);
        int rc = parse_endpoint(s, sn, default_port, what, scheme, &ep[n].h, &ep[n].hn,
                                &ep[n].port, why, why_len);
        if (rc)
            return rc;
        for (int k = 0; k < n; k++)
            if (ep[k].port == ep[n].port && ep[k].hn == ep[n].hn &&
                strncasecmp(ep[k].h, ep[n].h, ep[n].hn) == 0) {
                quote(q, sizeof q, ep[n].h, ep[n].hn);
                return bl_einval(why, why_len, "%s%s port %d is the same as %s %d", what, q,
                                 ep[n].port, noun, k + 1);
            }
        n++;
        if (!comma)
            break;
        s = comma + 1;
    }
    *count = n;
    return 0;
}

/* The master name after '#': percent-decoded, then 1..256 bytes of printable
 * ASCII without space (Sentinel takes it as one command argument, and it
 * shows up in logs and messages). */
static int parse_master_name(const char *s, bl_url *u, char *why, size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    size_t n = strlen(s);
    if (n == 0)
        return bl_einval(why, why_len, "master name after '#' is empty");
    int rc = take_pct("master name", s, n, NULL, why, why_len);
    if (rc)
        return rc;
    size_t dn = 0;
    for (size_t i = 0; i < n; i++, dn++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            c = (unsigned char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        }
        if (c == ' ')
            return bl_einval(why, why_len, "master name contains whitespace");
        if (c < 0x21 || c > 0x7e) {
            quote(q, sizeof q, s, n);
            return bl_einval(why, why_len,
                             "master name %s has a byte outside printable ASCII", q);
        }
    }
    if (dn > BL_MASTER_NAME_MAX)
        return bl_einval(why, why_len, "master name is longer than %d bytes",
                         BL_MASTER_NAME_MAX);
    return take_pct("master name", s, n, u ? &u->master_name : NULL, why, why_len);
}

static int parse_sentinel(const char *r, bl_url *u, char *why, size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    const char *p;
    int rc = take_userinfo(r, &p, u, why, why_len);
    if (rc)
        return rc;
    const char *hash = strchr(p, '#');
    if (!hash)
        return bl_einval(why, why_len,
                         "master name is missing: end the URL with #NAME, the name Sentinel "
                         "monitors (redis-sentinel://10.0.0.1:26379#mymaster)%s",
                         memchr(r, '#', (size_t)(p - r))
                             ? "; a '@' in the master name is written %40"
                             : "");
    const char *qm = memchr(p, '?', (size_t)(hash - p));
    if (qm) {
        quote(q, sizeof q, qm, (size_t)(hash - qm));
        return bl_einval(why, why_len,
                         "unexpected %s: redis-sentinel:// takes no query (the db goes after "
                         "'/', the master name after '#')",
                         q);
    }
    size_t ln = strcspn(p, "/#");
    if (ln == 0)
        return bl_einval(why, why_len, "sentinel list is empty (write "
                                       "redis-sentinel://host[:port][,host[:port]...]#NAME)");

    /* Check every sentinel before allocating anything. */
    ep_span ep[BL_URL_SENTINELS_MAX];
    int n = 0;
    rc = parse_endpoints(p, ln, BL_URL_SENTINELS_MAX, 26379, "sentinel", "", ep, &n, why,
                         why_len);
    if (rc)
        return rc;
    int db = 0;
    const char *d = p + ln;
    if (*d == '/') {
        d++;
        size_t dn = (size_t)(hash - d);
        if (dn == 0)
            return bl_einval(why, why_len, "db after '/' is empty (leave out '/' for db 0)");
        rc = parse_db(d, dn, &db, why, why_len);
        if (rc)
            return rc;
    }
    rc = parse_master_name(hash + 1, u, why, why_len);
    if (rc || !u)
        return rc;
    u->mode = BL_URL_SENTINEL;
    u->db = db;
    u->n_sentinels = n;
    for (int k = 0; k < n; k++) {
        u->sentinels[k].port = ep[k].port;
        rc = take_str(ep[k].h, ep[k].hn, &u->sentinels[k].host, why, why_len);
        if (rc)
            return rc;
    }
    return BL_OK;
}

static int parse_cluster(const char *r, bl_url *u, char *why, size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    const char *p;
    int rc = take_userinfo(r, &p, u, why, why_len);
    if (rc)
        return rc;
    size_t ln = strcspn(p, "/?#");
    if (ln == 0)
        return bl_einval(why, why_len, "seed node list is empty (write "
                                       "redis-cluster://host:port[,host:port...])");
    if (p[ln]) {
        quote(q, sizeof q, p + ln, strlen(p + ln));
        return bl_einval(why, why_len,
                         "unexpected %s after the seed nodes (redis-cluster:// takes no db, "
                         "query or fragment: a cluster has only db 0)",
                         q);
    }
    ep_span ep[BL_URL_SEEDS_MAX];
    int n = 0;
    rc = parse_endpoints(p, ln, BL_URL_SEEDS_MAX, 6379, "seed node", "redis-cluster://", ep, &n,
                         why, why_len);
    if (rc)
        return rc;
    if (!u)
        return BL_OK;
    u->mode = BL_URL_CLUSTER;
    u->n_seeds = n;
    for (int k = 0; k < n; k++) {
        u->seeds[k].port = ep[k].port;
        rc = take_str(ep[k].h, ep[k].hn, &u->seeds[k].host, why, why_len);
        if (rc)
            return rc;
    }
    return BL_OK;
}

static int parse_query(const char *p, int *db, char *why, size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    int seen = 0;
    if (!*p || *p == '#')
        return bl_einval(why, why_len, "query after '?' is empty");
    for (;;) {
        size_t n = strcspn(p, "&#");
        if (n == 0)
            return bl_einval(why, why_len, "query has an empty parameter (a stray '&')");
        const char *eq = memchr(p, '=', n);
        size_t kn = eq ? (size_t)(eq - p) : n;
        if (kn == 2 && memcmp(p, "db", 2) == 0) {
            if (!eq || eq + 1 == p + n)
                return bl_einval(why, why_len, "query parameter 'db' has no value");
            if (seen)
                return bl_einval(why, why_len, "query parameter 'db' is given twice");
            seen = 1;
            int rc = parse_db(eq + 1, n - kn - 1, db, why, why_len);
            if (rc)
                return rc;
        } else {
            /* The name only: the value may be a secret (?password=...). */
            quote(q, sizeof q, p, kn);
            return bl_einval(why, why_len, "unknown query parameter %s (only db=N is understood)",
                       q);
        }
        p += n;
        if (*p != '&')
            break;
        p++;
        if (!*p || *p == '#')
            return bl_einval(why, why_len, "query has an empty parameter (a stray '&')");
    }
    if (*p) {
        quote(q, sizeof q, p, strlen(p));
        return bl_einval(why, why_len, "unexpected %s at the end", q);
    }
    return BL_OK;
}

static int parse_unix(const char *r, bl_url *u, char *why, size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    if (!*r)
        return bl_einval(why, why_len, "socket path is empty (write unix:///path/to/socket)");
    if (*r != '/') {
        if (strchr(r, '@')) /* credentials: quote nothing */
            return bl_einval(why, why_len, "unix:// takes no credentials or host; write "
                       "unix:///path/to/socket");
        quote(q, sizeof q, r, strcspn(r, "/?#"));
        return bl_einval(why, why_len, "unix:// takes no host (got %s); write "
                   "unix:///path/to/socket, with three slashes", q);
    }
    size_t pn = strcspn(r, "?#");
    /* Check first so a bad path never allocates, then measure decoded size. */
    int rc = take_pct("socket path", r, pn, NULL, why, why_len);
    if (rc)
        return rc;
    size_t dn = 0;
    for (size_t i = 0; i < pn; i++, dn++)
        if (r[i] == '%')
            i += 2;
    if (dn > 107)
        return bl_einval(why, why_len, "socket path is longer than 107 bytes");
    int db = 0;
    const char *p = r + pn;
    if (*p == '?')
        rc = parse_query(p + 1, &db, why, why_len);
    else if (*p) {
        quote(q, sizeof q, p, strlen(p));
        rc = bl_einval(why, why_len, "unexpected %s at the end", q);
    }
    if (rc)
        return rc;
    if (u) {
        u->mode = BL_URL_UNIX;
        u->db = db;
        u->port = 0;
    }
    return take_pct("socket path", r, pn, u ? &u->unix_path : NULL, why, why_len);
}

static int scheme_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '-' || c == '.';
}

int bl_url_parse(const char *url, bl_url *out, char *why, size_t why_len)
{
    char q[4 * QUOTE_MAX + 8];
    bl_url u;
    memset(&u, 0, sizeof u);
    if (out)
        memset(out, 0, sizeof *out);
    if (why && why_len)
        why[0] = '\0';
    if (!url)
        return bl_einval(why, why_len, "URL is NULL");
    if (!*url)
        return bl_einval(why, why_len, "URL is empty");
    if (strnlen(url, BL_URL_MAX + 1) > BL_URL_MAX)
        return bl_einval(why, why_len, "URL is longer than %d bytes", BL_URL_MAX);

    const char *sep = strstr(url, "://");
    size_t sn = sep ? (size_t)(sep - url) : 0;
    for (size_t i = 0; sep && i < sn; i++)
        if (!scheme_char(url[i]))
            sep = NULL;
    if (!sep || sn == 0)
        return bl_einval(why, why_len, "URL does not start with redis://, rediss://, unix://, "
                   "redis-sentinel:// or redis-cluster:// (e.g. redis://127.0.0.1:6379/0)");
    const char *rest = sep + 3;
    int rc;
    if (sn == 5 && strncasecmp(url, "redis", 5) == 0) {
        rc = parse_redis(rest, out ? &u : NULL, why, why_len);
    } else if (sn == 4 && strncasecmp(url, "unix", 4) == 0) {
        rc = parse_unix(rest, out ? &u : NULL, why, why_len);
    } else if (sn == 14 && strncasecmp(url, "redis-sentinel", 14) == 0) {
        rc = parse_sentinel(rest, out ? &u : NULL, why, why_len);
    } else if (sn == 13 && strncasecmp(url, "redis-cluster", 13) == 0) {
        rc = parse_cluster(rest, out ? &u : NULL, why, why_len);
    } else if (sn == 6 && strncasecmp(url, "rediss", 6) == 0) {
        rc = parse_redis(rest, out ? &u : NULL, why, why_len);
        u.tls = 1;
    } else {
        quote(q, sizeof q, url, sn);
        return bl_einval(why, why_len, "scheme %s is not redis://, rediss://, unix://, "
                         "redis-sentinel:// or redis-cluster://",
                         q);
    }
    if (rc) {
        bl_url_free(&u);
        return rc;
    }
    if (out)
        *out = u;
    return BL_OK;
}

void bl_url_free(bl_url *u)
{
    if (!u)
        return;
    free(u->host);
    free(u->unix_path);
    for (int i = 0; i < u->n_sentinels && i < BL_URL_SENTINELS_MAX; i++)
        free(u->sentinels[i].host);
    for (int i = 0; i < u->n_seeds && i < BL_URL_SEEDS_MAX; i++)
        free(u->seeds[i].host);
    free(u->master_name);
    free(u->username);
    if (u->password) /* do not leave the secret lying in freed memory */
        explicit_bzero(u->password, strlen(u->password));
    free(u->password);
    memset(u, 0, sizeof *u);
}

int bl_url_kind(const char *url)
{
    static const struct {
        const char *scheme;
        int mode;
    } k[] = {{"redis://", BL_URL_PLAIN}, {"rediss://", BL_URL_PLAIN}, {"unix://", BL_URL_UNIX},
             {"redis-sentinel://", BL_URL_SENTINEL}, {"redis-cluster://", BL_URL_CLUSTER}};
    for (size_t i = 0; url && i < sizeof k / sizeof k[0]; i++)
        if (strncasecmp(url, k[i].scheme, strlen(k[i].scheme)) == 0)
            return k[i].mode;
    return -1;
}

int bl_config_min_replicas(const bl_config *c)
{
    if (c->min_replicas != BL_REPLICAS_DEFAULT)
        return c->min_replicas;
    int kind = bl_url_kind(c->url);
    return c->backend == BL_BACKEND_REDIS && (kind == BL_URL_SENTINEL || kind == BL_URL_CLUSTER)
               ? BL_REPLICAS_AUTO
               : 0;
}
