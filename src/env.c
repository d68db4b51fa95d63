/* env.c - bl_config_from_env: where Redis is and which backend, from the
 * environment of a twelve-factor deployment.
 *
 * Decisions (also in bidlock.h)
 *  - REDIS_URL wins: REDIS_HOST, REDIS_PORT, REDIS_DB, REDIS_USERNAME and
 *    REDIS_PASSWORD are then not read at all.
 *  - One of our variables set to "" is an error, not "unset": an empty
 *    REDIS_PASSWORD from a missing secret must not mean "no AUTH".
 *  - USE_REDIS_LOCKS: true/1/yes/on or false/0/no/off, any case, nothing
 *    else (no surrounding spaces either).
 *  - BIDLOCK_ENV (ours, strict) wins over ENV (shared, lenient):
 *      production class:  production, prod, staging
 *      development class: development, dev, local, test
 *    any case. An unknown BIDLOCK_ENV is an error. An unknown or empty ENV
 *    is ignored: POSIX shells use ENV for their startup file, so
 *    ENV=/home/me/.shrc is common and says nothing about deployment.
 *  - REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD, BIDLOCK_MIN_REPLICAS
 *    and BIDLOCK_REPLICA_TIMEOUT_MS are read whether or not REDIS_URL is set
 *    (the Sentinel url may come from code, the secret from the
 *    environment). Sentinel credentials with a url that is not
 *    redis-sentinel:// are refused, as bl_config_validate does, but naming
 *    the variables (unless the backend is memory: then nothing is used).
 *  - TLS: REDIS_TLS (a boolean like USE_REDIS_LOCKS) -> tls,
 *    REDIS_TLS_CA_FILE, REDIS_TLS_CA_DIR, REDIS_TLS_CERT_FILE,
 *    REDIS_TLS_KEY_FILE, REDIS_TLS_SERVER_NAME -> tls_ca_file ...
 *    tls_server_name, REDIS_TLS_INSECURE_SKIP_VERIFY (boolean) ->
 *    tls_insecure_skip_verify. Read whether or not REDIS_URL is set (a
 *    rediss:// REDIS_URL turns TLS on by itself; REDIS_TLS=false with it is
 *    refused, not obeyed: there is no quiet fallback to plaintext). The
 *    combinations are checked as bl_config_validate does, naming the
 *    variables.
 *  - USE_REDIS_LOCKS=false in the production class is refused: in-process
 *    locks cannot stop a second instance from bidding, which is exactly the
 *    failure bidlock exists to prevent. A single-instance service that
 *    really wants them sets cfg->backend = BL_BACKEND_MEMORY in code.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ids.h"
#include "url.h"

enum env_class { ENV_UNSET, ENV_PROD, ENV_DEV, ENV_UNKNOWN };


/* One of our variables: NULL when unset, an error when set but empty. */
static int get(const char *name, const char **out, char *why, size_t why_len)
{
    const char *v = getenv(name);
    *out = v;
    if (v && !*v)
        return bl_einval(why, why_len, "%s is set but empty; unset it or give it a value", name);
    return BL_OK;
}

static int one_of(const char *v, const char *const *words)
{
    for (; *words; words++)
        if (strcasecmp(v, *words) == 0)
            return 1;
    return 0;
}

static enum env_class classify(const char *v)
{
    static const char *const prod[] = {"production", "prod", "staging", NULL};
    static const char *const dev[] = {"development", "dev", "local", "test", NULL};
    if (!v || !*v)
        return ENV_UNSET;
    if (one_of(v, prod))
        return ENV_PROD;
    if (one_of(v, dev))
        return ENV_DEV;
    return ENV_UNKNOWN;
}

static int get_number(const char *name, long lo, long hi, int *out, char *why, size_t why_len)
{
    const char *v;
    if (get(name, &v, why, why_len))
        return BL_EINVAL;
    if (!v)
        return BL_OK;
    long n;
    int rc = bl_parse_uint(v, strlen(v), lo, hi, &n);
    if (rc) {
        char q[200];
        bl_quote(q, sizeof q, v, strlen(v));
        return bl_einval(why, why_len, "%s %s is %s %ld..%ld", name, q,
                   rc == -1 ? "not a number" : "out of range", lo, hi);
    }
    *out = (int)n;
    return BL_OK;
}

/* REDIS_HOST and friends, when REDIS_URL is not set. */
static int from_fields(bl_config *c, int *named, char *why, size_t why_len)
{
    const char *host, *user, *pass, *port, *db;
    if (get("REDIS_HOST", &host, why, why_len) || get("REDIS_PORT", &port, why, why_len) ||
        get("REDIS_DB", &db, why, why_len) || get("REDIS_USERNAME", &user, why, why_len) ||
        get("REDIS_PASSWORD", &pass, why, why_len))
        return BL_EINVAL;
    if (host && !bl_host_ok(host, strlen(host))) {
        char q[200];
        bl_quote(q, sizeof q, host, strlen(host));
        return bl_einval(why, why_len,
                   "REDIS_HOST %s is not a host name (letters, digits, '-', '.', '_') or an "
                   "IPv6 address (no brackets)",
                   q);
    }
    if (get_number("REDIS_PORT", 1, 65535, &c->port, why, why_len) ||
        get_number("REDIS_DB", 0, INT_MAX, &c->db, why, why_len))
        return BL_EINVAL;
    if (user && !pass)
        return bl_einval(why, why_len, "REDIS_USERNAME is set but REDIS_PASSWORD is not (AUTH needs "
                   "a password)");
    /* The environment says where Redis is: it beats a url or unix_path set in code. */
    if (host || port || db || user || pass)
        c->url = NULL;
    if (host || port)
        c->unix_path = NULL;
    if (host)
        c->host = host;
    if (user)
        c->username = user;
    if (pass)
        c->password = pass;
    *named = host != NULL;
    return BL_OK;
}

/* REDIS_SENTINEL_*, BIDLOCK_MIN_REPLICAS, BIDLOCK_REPLICA_TIMEOUT_MS. */
static int replication(bl_config *c, char *why, size_t why_len)
{
    const char *user, *pass, *n;
    if (get("REDIS_SENTINEL_USERNAME", &user, why, why_len) ||
        get("REDIS_SENTINEL_PASSWORD", &pass, why, why_len) ||
        get("BIDLOCK_MIN_REPLICAS", &n, why, why_len))
        return BL_EINVAL;
    if (user && !pass)
        return bl_einval(why, why_len, "REDIS_SENTINEL_USERNAME is set but "
                         "REDIS_SENTINEL_PASSWORD is not (AUTH needs a password)");
    if (n && strcasecmp(n, "auto") == 0) {
        c->min_replicas = BL_REPLICAS_AUTO;
    } else if (n) {
        long v;
        int rc = bl_parse_uint(n, strlen(n), 0, BL_REPLICAS_MAX, &v);
        if (rc) {
            char q[200];
            bl_quote(q, sizeof q, n, strlen(n));
            return bl_einval(why, why_len, "BIDLOCK_MIN_REPLICAS %s is %s 0..%d or 'auto'", q,
                             rc == -1 ? "not a number" : "out of range", BL_REPLICAS_MAX);
        }
        c->min_replicas = (int)v;
    }
    int ms = -1;
    if (get_number("BIDLOCK_REPLICA_TIMEOUT_MS", 1, BL_REPLICA_TIMEOUT_MAX, &ms, why, why_len))
        return BL_EINVAL;
    if (ms > 0)
        c->replica_timeout_ms = (uint32_t)ms;
    if (user)
        c->sentinel_username = user;
    if (pass)
        c->sentinel_password = pass;
    return BL_OK;
}

static int get_bool(const char *name, int *use, char *why, size_t why_len)
{
    static const char *const yes[] = {"true", "1", "yes", "on", NULL};
    static const char *const no[] = {"false", "0", "no", "off", NULL};
    const char *v;
    *use = -1;
    if (get(name, &v, why, why_len))
        return BL_EINVAL;
    if (!v)
        return BL_OK;
    if (one_of(v, yes)) {
        *use = 1;
    } else if (one_of(v, no)) {
        *use = 0;
    } else {
        char q[200];
        bl_quote(q, sizeof q, v, strlen(v));
        return bl_einval(why, why_len, "%s %s is not true/false/1/0/yes/no/on/off", name, q);
    }
    return BL_OK;
}

static int use_redis_locks(int *use, char *why, size_t why_len)
{
    return get_bool("USE_REDIS_LOCKS", use, why, why_len);
}

/* REDIS_TLS and REDIS_TLS_*. */
static int tls_vars(bl_config *c, char *why, size_t why_len)
{
    static const char *const names[] = {"REDIS_TLS_CA_FILE", "REDIS_TLS_CA_DIR",
                                        "REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE",
                                        "REDIS_TLS_SERVER_NAME"};
    const char **fields[] = {&c->tls_ca_file, &c->tls_ca_dir, &c->tls_cert_file,
                             &c->tls_key_file, &c->tls_server_name};
    const char *v[5];
    int on, insecure;
    for (int i = 0; i < 5; i++)
        if (get(names[i], &v[i], why, why_len))
            return BL_EINVAL;
    if (get_bool("REDIS_TLS", &on, why, why_len) ||
        get_bool("REDIS_TLS_INSECURE_SKIP_VERIFY", &insecure, why, why_len))
        return BL_EINVAL;
    int rediss = c->url && strncasecmp(c->url, "rediss://", 9) == 0;
    if (on == 0 && rediss)
        return bl_einval(why, why_len, "REDIS_TLS=false, but the url is rediss:// (TLS): say "
                                       "redis:// for plaintext");
    if (on == 0 && (v[0] || v[1] || v[2] || v[3] || v[4] || insecure == 1))
        return bl_einval(why, why_len, "REDIS_TLS=false, but REDIS_TLS_* settings are given");
    if (v[2] && !v[3])
        return bl_einval(why, why_len, "REDIS_TLS_CERT_FILE is set but REDIS_TLS_KEY_FILE is "
                                       "not (a client certificate needs both)");
    if (v[3] && !v[2])
        return bl_einval(why, why_len, "REDIS_TLS_KEY_FILE is set but REDIS_TLS_CERT_FILE is "
                                       "not (a client certificate needs both)");
    if (insecure == 1 && (v[0] || v[1]))
        return bl_einval(why, why_len, "REDIS_TLS_INSECURE_SKIP_VERIFY turns verification off, "
                                       "so REDIS_TLS_CA_FILE/REDIS_TLS_CA_DIR would be unused");
    for (int i = 0; i < 5; i++)
        if (v[i])
            *fields[i] = v[i];
    if (on == 1)
        c->tls = 1;
    if (insecure >= 0)
        c->tls_insecure_skip_verify = insecure;
    return BL_OK;
}

/* BIDLOCK_ENV, else ENV. name and value say which one decided, for messages. */
static int deployment(enum env_class *cls, const char **name, const char **value, char *why,
                      size_t why_len)
{
    const char *v;
    if (get("BIDLOCK_ENV", &v, why, why_len))
        return BL_EINVAL;
    if (v) {
        *cls = classify(v);
        *name = "BIDLOCK_ENV";
        *value = v;
        if (*cls == ENV_UNKNOWN) {
            char q[200];
            bl_quote(q, sizeof q, v, strlen(v));
            return bl_einval(why, why_len,
                       "BIDLOCK_ENV %s is not production/prod/staging or "
                       "development/dev/local/test",
                       q);
        }
        return BL_OK;
    }
    *name = "ENV";
    *value = getenv("ENV");
    *cls = classify(*value);
    if (*cls == ENV_UNKNOWN)
        *cls = ENV_UNSET;
    return BL_OK;
}

int bl_config_from_env(bl_config *cfg, char *why, size_t why_len)
{
    if (why && why_len)
        why[0] = '\0';
    if (!cfg)
        return bl_einval(why, why_len, "config is NULL");
    bl_config c = *cfg; /* *cfg changes only on success */

    const char *url;
    int named = 0; /* REDIS_URL or REDIS_HOST points somewhere */
    if (get("REDIS_URL", &url, why, why_len))
        return BL_EINVAL;
    if (url) {
        char msg[BL_ERRMSG_MAX];
        if (bl_url_parse(url, NULL, msg, sizeof msg) != BL_OK)
            return bl_einval(why, why_len, "REDIS_URL: %s", msg);
        c.url = url;
        named = 1;
    } else if (from_fields(&c, &named, why, why_len)) {
        return BL_EINVAL;
    }
    if (replication(&c, why, why_len) || tls_vars(&c, why, why_len))
        return BL_EINVAL;

    int use;
    enum env_class cls;
    const char *env_name, *env_value;
    if (use_redis_locks(&use, why, why_len) ||
        deployment(&cls, &env_name, &env_value, why, why_len))
        return BL_EINVAL;
    if (use == 0 && cls == ENV_PROD) {
        char q[200];
        bl_quote(q, sizeof q, env_value, strlen(env_value));
        return bl_einval(why, why_len,
                   "USE_REDIS_LOCKS=false is refused with %s=%s: in-process locks cannot stop "
                   "another instance from bidding (set cfg->backend in code if you must)",
                   env_name, q);
    }
    if (use == 1)
        c.backend = BL_BACKEND_REDIS;
    else if (use == 0)
        c.backend = BL_BACKEND_MEMORY;
    else if (named)
        c.backend = BL_BACKEND_REDIS;
    else if (cls == ENV_DEV)
        c.backend = BL_BACKEND_MEMORY;
    else
        c.backend = BL_BACKEND_REDIS; /* production or unsaid: fail closed */
    if (c.backend == BL_BACKEND_REDIS && bl_url_kind(c.url) != BL_URL_SENTINEL &&
        (getenv("REDIS_SENTINEL_USERNAME") || getenv("REDIS_SENTINEL_PASSWORD")))
        return bl_einval(why, why_len,
                         "REDIS_SENTINEL_USERNAME/REDIS_SENTINEL_PASSWORD are set but the url "
                         "(REDIS_URL, or the one set in code) is not a redis-sentinel:// URL");
    *cfg = c;
    return BL_OK;
}
