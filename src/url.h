/* url.h - REDIS_URL and friends (url.c). */
#ifndef BIDLOCK_URL_H
#define BIDLOCK_URL_H

#include "common.h"

#define BL_URL_MAX 8192

enum bl_url_mode { BL_URL_PLAIN = 0, BL_URL_UNIX = 1, BL_URL_SENTINEL = 2, BL_URL_CLUSTER = 3 };
#define BL_URL_SEEDS_MAX 16      /* seed nodes in one redis-cluster:// URL */
#define BL_URL_SENTINELS_MAX 16  /* sentinels in one redis-sentinel:// URL */
#define BL_MASTER_NAME_MAX 256   /* bytes in a Sentinel master name */
#define BL_REPLICAS_MAX 64       /* largest min_replicas */
#define BL_REPLICA_TIMEOUT_MAX 60000
/* 0 until the Redis backend follows a Sentinel master / sends WAIT: meanwhile
 * bl_config_validate refuses a redis-sentinel:// url and min_replicas other
 * than 0 (fail closed: a setting that would silently do nothing is an
 * error). Set to 1 with the backend that implements it. */
#define BL_HAVE_SENTINEL_BACKEND 1
#define BL_HAVE_REPLICA_WAIT 1
typedef struct bl_url_endpoint {
    char *host; /* without brackets */
    int port;   /* 26379 by default */
} bl_url_endpoint;
/* The mode a URL's scheme asks for (nothing else is checked): BL_URL_PLAIN
 * for redis:// and rediss://, BL_URL_UNIX, BL_URL_SENTINEL, BL_URL_CLUSTER; -1 for NULL or
 * another scheme. */
int bl_url_kind(const char *url);
/* cfg->min_replicas with BL_REPLICAS_DEFAULT resolved: BL_REPLICAS_AUTO for
 * a redis-sentinel:// url (Redis backend), else 0. */
int bl_config_min_replicas(const bl_config *cfg);

/* A parsed URL. Strings are malloc'd and owned by the struct; NULL when the
 * URL has none. Exactly one of host (with port) and unix_path is set, except
 * for a Sentinel URL: then neither, and sentinels[] says where to ask. */
typedef struct bl_url {
    char *host;      /* without brackets: "::1" */
    int port;        /* 6379 by default; 0 for unix */
    char *unix_path; /* percent-decoded */
    char *username;  /* percent-decoded */
    char *password;  /* percent-decoded */
    int db;          /* 0 by default */
    int tls;         /* rediss:// */
    /* redis-sentinel:// */
    int mode;                                           /* enum bl_url_mode */
    int n_sentinels;                                    /* BL_URL_SENTINEL: 1..16 */
    bl_url_endpoint sentinels[BL_URL_SENTINELS_MAX];    /* in the URL's order */
    char *master_name;                                  /* percent-decoded */
    /* redis-cluster:// (then host, unix_path are NULL) */
    int n_seeds;                                        /* BL_URL_CLUSTER: 1..16 */
    bl_url_endpoint seeds[BL_URL_SEEDS_MAX];            /* in the URL's order */
} bl_url;

/* Parse redis://[[user]:password@]host[:port][/db] (rediss:// the same, tls set),
 * unix:///path/to/socket[?db=N] or
 * redis-sentinel://[[user]:password@]host[:port][,host[:port]...][/db]#NAME
 * or redis-cluster://[[user]:password@]host[:port][,host[:port]...]
 * (grammar and decisions atop url.c).
 * Returns BL_OK and fills *out, or BL_EINVAL with a sentence naming the bad
 * part in why (never the password), or BL_ENOMEM. *out is zeroed on any
 * failure, so bl_url_free(out) is always safe. out may be NULL: then the URL
 * is only checked and nothing is allocated (never BL_ENOMEM). */
int bl_url_parse(const char *url, bl_url *out, char *why, size_t why_len);
/* Free u's strings (the password is wiped first) and zero *u. NULL is fine. */
void bl_url_free(bl_url *u);

/* Digits only (no sign, space or "0x"), value in lo..hi: 0 and *out set;
 * -1 not a number; -2 out of range. s need not be NUL-terminated. */
int bl_parse_uint(const char *s, size_t n, long lo, long hi, long *out);
/* 1 if h[0..n) is a host name (letters, digits, '-', '.', '_'; 1..255
 * bytes) or an IPv6 address without brackets. */
int bl_host_ok(const char *h, size_t n);
/* s[0..n) for a message: in single quotes, bytes outside printable ASCII as
 * \xNN, cut after 40 bytes with "...". Always NUL-terminates dst (cap >= 8). */
void bl_quote(char *dst, size_t cap, const char *s, size_t n);

#endif
