/* config.c - configuration defaults and validation (bl_config_init,
 * bl_config_validate). */
#include <stdio.h>
#include <string.h>

#include "ids.h"
#include "tls.h"
#include "url.h"

void bl_config_init(bl_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->host = "127.0.0.1";
    cfg->port = 6379;
    cfg->key_prefix = "bid_lock";
    cfg->connect_timeout_ms = 5000;
    cfg->default_ttl_ms = 300000;
    cfg->default_wait_ms = 10000;
    cfg->backoff_initial_ms = 50;
    cfg->backoff_max_ms = 1000;
    cfg->backoff_multiplier = 1.5;
    cfg->close_timeout_ms = 2000;
    cfg->command_timeout_ms = 5000;
    cfg->reconnect_initial_ms = 100;
    cfg->done_ttl_ms = 7ULL * 24 * 3600 * 1000;
    cfg->handoff_ms = 250;
    cfg->wake_on_release = 1;
    cfg->fencing_tokens = 1;
    cfg->done_markers = 1;
    cfg->min_replicas = BL_REPLICAS_DEFAULT; /* sentinel branch (issue 13) */
    cfg->replica_timeout_ms = 100;
}

int bl_config_validate(const bl_config *c, char *why, size_t why_len)
{
#define BAD(msg)                                                                           \
    do {                                                                                   \
        if (why && why_len)                                                                \
            snprintf(why, why_len, "%s", msg);                                             \
        return BL_EINVAL;                                                                  \
    } while (0)
    if (!c)
        BAD("config is NULL");
    if (bl_validate_prefix(c->key_prefix, why, why_len))
        return BL_EINVAL;
    if (c->backend != BL_BACKEND_REDIS && c->backend != BL_BACKEND_MEMORY)
        BAD("backend must be BL_BACKEND_REDIS or BL_BACKEND_MEMORY");
    if (c->backend == BL_BACKEND_REDIS && c->url) {
        /* bl_manager_new parses it: refuse here what it would refuse there. */
        char msg[BL_ERRMSG_MAX];
        if (bl_url_parse(c->url, NULL, msg, sizeof msg) != BL_OK) {
            if (why && why_len)
                snprintf(why, why_len, "url: %s", msg);
            return BL_EINVAL;
        }
    } else if (c->backend == BL_BACKEND_REDIS) {
        if (c->unix_path) {
            if (!*c->unix_path || strlen(c->unix_path) >= 108)
                BAD("unix_path must be 1..107 bytes");
        } else {
            if (!c->host || !*c->host)
                BAD("host is empty");
            if (c->port < 1 || c->port > 65535)
                BAD("port must be 1..65535");
        }
    }
    if (c->db < 0)
        BAD("db must be >= 0");
    if (c->username && !c->password)
        BAD("username needs a password (AUTH has no username-only form)");
    if (c->connect_timeout_ms == 0)
        BAD("connect_timeout_ms must be > 0");
    if (c->command_timeout_ms == 0)
        BAD("command_timeout_ms must be > 0");
    if (c->default_ttl_ms == 0 || c->default_ttl_ms > BL_MAX_MS)
        BAD("default_ttl_ms must be 1 ms .. 30 days");
    if (c->default_wait_ms > BL_MAX_MS)
        BAD("default_wait_ms must be at most 30 days");
    if (c->backoff_initial_ms == 0 || c->backoff_max_ms < c->backoff_initial_ms)
        BAD("backoff needs 0 < backoff_initial_ms <= backoff_max_ms");
    if (!(c->backoff_multiplier >= 1.0 && c->backoff_multiplier <= 16.0))
        BAD("backoff_multiplier must be 1.0 .. 16.0");
    if (c->reconnect_initial_ms == 0)
        BAD("reconnect_initial_ms must be > 0");
    if (c->done_ttl_ms == 0 || c->done_ttl_ms > 10 * BL_MAX_MS)
        BAD("done_ttl_ms must be 1 ms .. 300 days");
    if (c->handoff_ms == 0 || c->handoff_ms > 60000)
        BAD("handoff_ms must be 1 .. 60000");
    if (c->fencing_tokens != 0 && c->fencing_tokens != 1)
        BAD("fencing_tokens must be 0 or 1");
    if (c->done_markers != 0 && c->done_markers != 1)
        BAD("done_markers must be 0 or 1");
    if (c->backend == BL_BACKEND_REDIS && bl_tls_validate(c, why, why_len))
        return BL_EINVAL;
    /* ---- sentinel branch (issue 13): Sentinel and replica settings ---- */
    {
        int redis = c->backend == BL_BACKEND_REDIS;
        int sentinel = redis && bl_url_kind(c->url) == BL_URL_SENTINEL;
        int replicas = bl_config_min_replicas(c);
        if (c->sentinel_username && !c->sentinel_password)
            BAD("sentinel_username needs a sentinel_password (AUTH has no username-only form)");
        if (redis && !sentinel && (c->sentinel_username || c->sentinel_password))
            BAD("sentinel_username/sentinel_password are set but url is not a "
                "redis-sentinel:// URL");
        if (c->min_replicas < BL_REPLICAS_DEFAULT || c->min_replicas > BL_REPLICAS_MAX)
            BAD("min_replicas must be 0 .. 64, BL_REPLICAS_AUTO or BL_REPLICAS_DEFAULT");
        if (c->replica_timeout_ms == 0 || c->replica_timeout_ms > BL_REPLICA_TIMEOUT_MAX)
            BAD("replica_timeout_ms must be 1 .. 60000 (WAIT 0 would block for ever)");
        if (redis && replicas != 0 && c->replica_timeout_ms >= c->command_timeout_ms)
            BAD("replica_timeout_ms must be below command_timeout_ms while replica "
                "acknowledgement is on (WAIT holds the connection that long)");
        if (sentinel && !BL_HAVE_SENTINEL_BACKEND)
            BAD("url: redis-sentinel:// is understood, but this version of bidlock cannot "
                "follow a Sentinel master yet");
        if (redis && replicas != 0 && !BL_HAVE_REPLICA_WAIT)
            BAD("min_replicas: replica acknowledgement (WAIT) is not in this version of "
                "bidlock yet; set 0");
    }
    /* ---- end of the sentinel branch block ---- */
    return BL_OK;
#undef BAD
}
