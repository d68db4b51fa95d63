/* redis_conn.c - the Redis backend's connections: connect (to the address
 * resolved once at creation), AUTH/SELECT pipelined behind it, a connect
 * deadline, reconnect with backoff. Both the command and the subscriber
 * connection are a `conn`; what each does once up is in redis_ops.c and
 * redis_sub.c. */
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "acl.h"
#include "backoff.h"
#include "redis.h"
#include "sentinel.h"
#include "tls.h"

/* A plaintext TCP connection the server dropped before answering anything
 * (ROLE is asked at every connect) is what a TLS port does to a plaintext
 * client: say so. */
static const char *tls_hint(conn *c, const char *msg)
{
    if (c->tls || c->is_sub || c->answered || c->r->unix_path || c->state != CONN_UP)
        return msg;
    snprintf(c->msgbuf, sizeof c->msgbuf,
             "%s (before Redis answered anything: if that port speaks TLS, use rediss://)", msg);
    return c->msgbuf;
}

const char *redis_conn_errmsg(conn *c, const redisAsyncContext *ac)
{
    /* TLS: hiredis only saw its unix socket close; the relay knows why. */
    if (c->tls && bl_tls_error(c->tls)[0])
        return bl_tls_error(c->tls);
    if (ac && ac->c.errstr[0])
        return tls_hint(c, ac->c.errstr);
    if (c->last_err[0])
        return c->last_err;
    return "connection to Redis lost";
}

void redis_notify_closed(redis_be *r)
{
    if (!r->shutting || r->closed_notified || r->cmd.ac || r->sub.ac)
        return;
    r->closed_notified = 1;
    r->h.closed(r->h.ctx);
}

static void schedule_reconnect(conn *c)
{
    redis_be *r = c->r;
    if (r->shutting) {
        redis_notify_closed(r);
        return;
    }
    bl_backoff b = {r->h.cfg->reconnect_initial_ms, 30000.0, 2.0};
    uint64_t pause = bl_backoff_next(&b, &c->reconnect_step, r->h.rand(r->h.ctx), 0, UINT64_MAX);
    c->role = TR_RECONNECT;
    LOOP(r)->timer_start(c->timer, pause);
}

/* A connect to this address failed: the next attempt takes the next one
 * of the host name's addresses. */
static void next_addr(redis_be *r)
{
    if (r->naddrs > 1)
        r->addr_i = (r->addr_i + 1) % r->naddrs;
}

static void set_err(conn *c, const char *why)
{
    if (why != c->last_err) /* callers may pass last_err itself: no overlapping copy */
        snprintf(c->last_err, sizeof c->last_err, "%s", why);
}

/* The context is gone (or never was): so goes its relay. */
static void drop_tls(conn *c)
{
    bl_tls_release(c->tls);
    c->tls = NULL;
    c->hi_up = 0;
}

static void went_down(conn *c, const char *why)
{
    redis_be *r = c->r;
    char acl[BL_ERRMSG_MAX];
    /* hiredis drops a subscribed connection on an error reply: a refused
     * (UN)SUBSCRIBE ends up here, and should say what the user lacks. */
    if (bl_acl_denied(why))
        why = bl_acl_explain(acl, sizeof acl, why, c->is_sub ? "SUBSCRIBE" : NULL, NULL, NULL,
                             r->h.prefix);
    set_err(c, why);
    why = c->last_err; /* why may be the relay's, which goes now */
    drop_tls(c);
    c->ac = NULL;
    c->state = CONN_DOWN;
    c->awaiting = 0;
    if (!c->is_sub)
        r->master_ok = 0; /* Sentinel: ask again where the master is */
    if (c->is_sub)
        redis_sub_forget(r);
    else
        redis_wait_fail_all(r);
    if (!r->shutting)
        bl_host_log(&r->h, BL_LOG_WARN, "bidlock: %s connection down: %s",
                    c->is_sub ? "subscriber" : "Redis", why);
    schedule_reconnect(c);
}

/* Why hiredis let go: the relay's reason first (hiredis saw only its unix
 * socket close), then hiredis's. */
static const char *down_msg(conn *c, const redisAsyncContext *ac, const char *dflt)
{
    if (c->tls && bl_tls_error(c->tls)[0])
        return bl_tls_error(c->tls);
    return ac->c.errstr[0] ? tls_hint(c, ac->c.errstr) : dflt;
}

/* Connected: for TLS, once both hiredis's unix connect and the relay's
 * handshake and checks are done. */
static void conn_up(conn *c)
{
    redis_be *r = c->r;
    LOOP(r)->timer_stop(c->timer);
    c->role = TR_NONE;
    c->state = CONN_UP;
    c->reconnect_step = 0;
    if (!c->is_sub) {
        char now[sizeof r->master_now];
        snprintf(now, sizeof now, "%s:%d", r->unix_path ? r->unix_path : r->addrs[r->addr_i],
                 r->port);
        int moved = r->master_now[0] && strcmp(now, r->master_now) != 0;
        snprintf(r->master_now, sizeof r->master_now, "%s", now);
        if (moved) {
            bl_host_log(&r->h, BL_LOG_WARN, "bidlock: now on master %s", now);
            r->h.event(r->h.ctx, BL_BE_MASTER_CHANGED);
        } else if (c->ever_up) {
            r->h.event(r->h.ctx, BL_BE_RECONNECTED);
            bl_host_log(&r->h, BL_LOG_INFO, "bidlock: reconnected to Redis");
        }
    }
    c->ever_up = 1;
    c->last_err[0] = '\0';
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    conn *c = ac->data;
    if (!c)
        return;
    redis_be *r = c->r;
    if (status != REDIS_OK) {
        LOOP(r)->timer_stop(c->timer);
        c->role = TR_NONE;
        /* hiredis frees the context after this and fails every queued
         * command with a NULL reply. A host name with several addresses:
         * the next attempt takes the next one. */
        next_addr(r);
        went_down(c, down_msg(c, ac, "connect failed"));
        return;
    }
    if (c->tls && !bl_tls_ready(c->tls)) {
        /* Only the unix side is up: the connect deadline keeps running
         * until the handshake is done (or its failure closes the socket). */
        c->hi_up = 1;
        return;
    }
    conn_up(c);
}

/* The relay's handshake and certificate checks passed. */
static void tls_ready(void *arg)
{
    conn *c = arg;
    if (c->hi_up && c->ac)
        conn_up(c);
}

static void tls_log(void *arg, const char *msg)
{
    conn *c = arg;
    if (!c->r->shutting)
        bl_host_log(&c->r->h, BL_LOG_WARN, "bidlock: %s", msg);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    conn *c = ac->data;
    (void)status;
    if (!c || c->ac != ac)
        return;
    if (c->tls && !bl_tls_ready(c->tls)) {
        /* the TLS connect or handshake failed: as a failed connect */
        LOOP(c->r)->timer_stop(c->timer);
        c->role = TR_NONE;
        next_addr(c->r);
    }
    went_down(c, down_msg(c, ac, "connection closed"));
    redis_notify_closed(c->r);
}

void redis_drop(conn *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    set_err(c, why);
    c->ac = NULL;
    c->state = CONN_DOWN;
    if (ac)
        redisAsyncFree(ac); /* pending callbacks run now with NULL */
    drop_tls(c);
    if (c->is_sub) {
        redis_sub_forget(c->r);
    } else {
        c->r->master_ok = 0;
        redis_wait_fail_all(c->r);
    }
}

/* AUTH / SELECT answers. A refusal makes the connection useless: drop it
 * (from the loop, not inside hiredis's callback) and retry with backoff. */
static void setup_reply_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    conn *c = ac->data;
    const char *what = priv;
    if (!c || !reply || reply->type != REDIS_REPLY_ERROR || c->ac != ac)
        return;
    /* Server messages never contain the password. */
    snprintf(c->last_err, sizeof c->last_err, "%s failed: %s", what, reply->str);
    bl_host_log(&c->r->h, BL_LOG_ERROR, "bidlock: %s", c->last_err);
    c->state = CONN_DOWN; /* new operations fail fast from now on */
    c->setup_failed = 1;
    c->role = TR_CONNECT_DEADLINE; /* reuse the deadline path: drop + retry */
    LOOP(c->r)->timer_start(c->timer, 0);
}

static void discovered(void *arg, int status, const char *host, int port, const char *errmsg);

void redis_connect(conn *c)
{
    redis_be *r = c->r;
    if (r->sent && !r->master_ok) {
        /* Sentinel: the address comes from a discovery (which checks ROLE);
         * the connection waits for it, and so do operations started now. */
        c->awaiting = 1;
        c->state = CONN_CONNECTING;
        if (!r->discovering) {
            if (bl_sentinel_discover(r->sent, discovered, r) != BL_OK) {
                went_down(c, "cannot start a Sentinel discovery");
                return;
            }
            r->discovering = 1;
        }
        return;
    }
    bl_ctx_spec spec = {.loop = LOOP(r), .host = r->addrs[r->addr_i], .port = r->port,
                        .unix_path = r->unix_path, .tls = r->tls,
                        .name = r->tls_name[0] ? r->tls_name : NULL, .data = c,
                        .on_connect = on_connect, .on_disconnect = on_disconnect,
                        .ready = tls_ready, .ready_arg = c, .log = tls_log, .log_arg = c};
    char why[BL_ERRMSG_MAX];
    redisAsyncContext *ac = bl_ctx_open(&spec, &c->tls, why, sizeof why);
    if (!ac) {
        next_addr(r);
        went_down(c, why);
        return;
    }
    c->hi_up = 0;
    c->answered = 0;
    c->ac = ac;
    c->state = CONN_CONNECTING;
    c->role = TR_CONNECT_DEADLINE;
    LOOP(r)->timer_start(c->timer, r->h.cfg->connect_timeout_ms);
    /* Pipelined behind the connect: hiredis sends them once it is up. */
    if (r->password) {
        if (r->username)
            redisAsyncCommand(ac, setup_reply_cb, "AUTH", "AUTH %s %s", r->username, r->password);
        else
            redisAsyncCommand(ac, setup_reply_cb, "AUTH", "AUTH %s", r->password);
    }
    if (r->db)
        redisAsyncCommand(ac, setup_reply_cb, "SELECT", "SELECT %d", r->db);
    if (c->is_sub) {
        redis_sub_resubscribe(r);
    } else {
        redis_ask_role(r);
        redis_load_scripts(r);
        redis_preq_flush(r);
    }
}

void redis_conn_timer_cb(void *data)
{
    conn *c = data;
    enum timer_role role = c->role;
    c->role = TR_NONE;
    if (role == TR_CONNECT_DEADLINE && c->ac) {
        /* A connect deadline, or AUTH/SELECT refused (message already set). */
        if (!c->setup_failed) {
            next_addr(c->r);
            snprintf(c->last_err, sizeof c->last_err, "%s",
                     bl_tls_handshaking(c->tls)
                         ? "connect timed out in the TCP connect or TLS handshake (is that "
                           "port a TLS port, and the server answering?)"
                     : c->tls && !bl_tls_ready(c->tls)
                         ? "connect timed out before TLS was up"
                         : "connect timed out");
            bl_host_log(&c->r->h, BL_LOG_WARN, "bidlock: Redis %s", c->last_err);
        }
        c->setup_failed = 0;
        redis_drop(c, c->last_err);
        schedule_reconnect(c);
    } else if (role == TR_REDISCOVER && c->ac) {
        redis_drop(c, c->last_err);
        c->reconnect_step = 0;
        redis_connect(c);
    } else if (role == TR_RECONNECT && !c->r->shutting) {
        redis_connect(c);
    }
}

/* ---- Sentinel --------------------------------------------------------------- */

static void discovered(void *arg, int status, const char *host, int port, const char *errmsg)
{
    redis_be *r = arg;
    if (status == BL_ECANCELED) /* the backend is being freed */
        return;
    r->discovering = 0;
    conn *conns[2] = {&r->cmd, &r->sub};
    if (status == BL_OK && !r->shutting) {
        snprintf(r->addrs[0], sizeof r->addrs[0], "%s", host);
        r->naddrs = 1;
        r->addr_i = 0;
        r->port = port;
        r->master_ok = 1;
        for (int i = 0; i < 2; i++)
            if (conns[i]->awaiting) {
                conns[i]->awaiting = 0;
                redis_connect(conns[i]);
            }
        return;
    }
    char why[sizeof r->cmd.last_err];
    snprintf(why, sizeof why, "no master from the Sentinels: %s",
             r->shutting ? "manager closed" : errmsg ? errmsg : "unknown");
    redis_preq_fail(r, why);
    for (int i = 0; i < 2; i++)
        if (conns[i]->awaiting)
            went_down(conns[i], why);
    redis_notify_closed(r);
}

/* Move off the current master: drop both connections (from the loop, not
 * inside a hiredis callback) and connect again after a fresh discovery. */
void redis_rediscover(redis_be *r, const char *why)
{
    if (!r->sent || r->shutting)
        return;
    r->master_ok = 0;
    conn *conns[2] = {&r->cmd, &r->sub};
    for (int i = 0; i < 2; i++) {
        conn *c = conns[i];
        if (!c->ac && c->role == TR_RECONNECT) { /* waiting out a backoff: go now */
            c->reconnect_step = 0;
            LOOP(r)->timer_start(c->timer, 0);
            continue;
        }
        if (!c->ac || c->role == TR_REDISCOVER)
            continue;
        bl_host_log(&r->h, BL_LOG_WARN, "bidlock: %s; asking the Sentinels again", why);
        set_err(c, why);
        c->state = CONN_DOWN; /* new operations fail fast meanwhile */
        c->role = TR_REDISCOVER;
        LOOP(r)->timer_start(c->timer, 0);
    }
}

static void switched(void *ctx, const char *host, int port)
{
    redis_be *r = ctx;
    char why[96];
    snprintf(why, sizeof why, "%s:%d", host, port);
    if (r->cmd.state == CONN_UP && strcmp(why, r->master_now) == 0)
        return; /* moved there already (the switch was heard late) */
    snprintf(why, sizeof why, "Sentinel says the master is now %s:%d", host, port);
    redis_rediscover(r, why);
}

static void sentinel_log(int level, const char *msg, void *data)
{
    redis_be *r = data;
    bl_host_log(&r->h, level, "bidlock: %s", msg);
}

static int sentinel_init(redis_be *r)
{
    const bl_url *u = &r->url;
    const char *hosts[BL_URL_SENTINELS_MAX];
    int ports[BL_URL_SENTINELS_MAX];
    for (int i = 0; i < u->n_sentinels; i++) {
        hosts[i] = u->sentinels[i].host;
        ports[i] = u->sentinels[i].port;
    }
    /* A discovery takes at most about 2 * n * timeout: keep it within
     * the connect deadline. */
    uint32_t step = r->h.cfg->connect_timeout_ms / (uint32_t)(2 * u->n_sentinels);
    bl_sentinel_host h = {
        .loop = r->h.loop, .master_name = u->master_name, .n = u->n_sentinels,
        .hosts = hosts, .ports = ports, .sentinel_username = r->h.cfg->sentinel_username,
        .sentinel_password = r->h.cfg->sentinel_password, .username = u->username,
        .password = u->password, .db = u->db, .tls = r->tls,
        .tls_name = r->tls_name[0] ? r->tls_name : NULL, .timeout_ms = step < 100 ? 100 : step,
        .log = sentinel_log, .log_data = r, .switched = switched, .ctx = r};
    char why[BL_ERRMSG_MAX];
    int rc = bl_sentinel_new(&h, &r->sent, why, sizeof why);
    if (rc != BL_OK) {
        bl_host_log(&r->h, BL_LOG_ERROR, "bidlock: %s", why);
        return rc == BL_EINVAL ? BL_ECONN : rc;
    }
    bl_sentinel_watch(r->sent);
    return BL_OK;
}

void redis_conn_free(redis_be *r)
{
    bl_sentinel_free(r->sent); /* a discovery still out ends here, ignored */
    r->sent = NULL;
    bl_tls_ctx_free(r->tls); /* relays still alive hold their own reference */
    r->tls = NULL;
}

/* hiredis would resolve a host name at every (re)connect, synchronously,
 * on the loop. Resolve it once here - bl_manager_new is a setup call, and
 * bidlock.h says it may block there - and reconnect to the addresses,
 * taking the next one after a failed connect ("localhost" may be ::1 and
 * 127.0.0.1, and the server may listen on only one of them). */
static int resolve_once(redis_be *r, const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1) {
        snprintf(r->addrs[0], sizeof r->addrs[0], "%s", host);
        r->naddrs = 1;
        return 0;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return -1;
    for (struct addrinfo *a = res; a && r->naddrs < ADDRS_MAX; a = a->ai_next) {
        const void *addr = a->ai_family == AF_INET6
                               ? (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr
                               : (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr;
        if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) &&
            inet_ntop(a->ai_family, addr, r->addrs[r->naddrs], sizeof r->addrs[0]))
            r->naddrs++;
    }
    freeaddrinfo(res);
    return r->naddrs > 0 ? 0 : -1;
}

/* TLS settings: the context, and the name certificates must be for. */
static int tls_init(redis_be *r, const char *host)
{
    const bl_config *cfg = r->h.cfg;
    if (!bl_tls_wanted(cfg))
        return BL_OK;
    char why[BL_ERRMSG_MAX];
    int rc = bl_tls_ctx_new(cfg, &r->tls, why, sizeof why);
    if (rc != BL_OK) {
        bl_host_log(&r->h, BL_LOG_ERROR, "bidlock: %s", why);
        return rc;
    }
    const char *name = cfg->tls_server_name ? cfg->tls_server_name : host;
    snprintf(r->tls_name, sizeof r->tls_name, "%s", name ? name : "");
    return BL_OK;
}

int redis_conn_init(redis_be *r)
{
    const bl_config *cfg = r->h.cfg;
    const char *host;
    if (cfg->url) {
        int rc = bl_url_parse(cfg->url, &r->url, NULL, 0);
        if (rc != BL_OK)
            return rc;
        host = r->url.host;
        r->port = r->url.port;
        r->unix_path = r->url.unix_path;
        r->username = r->url.username;
        r->password = r->url.password;
        r->db = r->url.db;
        if (r->url.mode == BL_URL_SENTINEL) {
            int trc = tls_init(r, NULL);
            return trc != BL_OK ? trc : sentinel_init(r);
        }
    } else {
        host = cfg->host;
        r->port = cfg->port;
        r->unix_path = cfg->unix_path;
        r->username = cfg->username;
        r->password = cfg->password;
        r->db = cfg->db;
    }
    int trc = tls_init(r, host);
    if (trc != BL_OK)
        return trc;
    if (!r->unix_path && (!host || resolve_once(r, host) != 0)) {
        bl_host_log(&r->h, BL_LOG_ERROR, "bidlock: cannot resolve the Redis host name");
        return BL_ECONN;
    }
    return BL_OK;
}
