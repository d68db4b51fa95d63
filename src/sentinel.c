/* sentinel.c - see sentinel.h.
 *
 * hiredis 0.14.1 rules this file keeps (DESIGN.md):
 *  - attach to the loop before redisAsyncSetConnectCallback;
 *  - never free a context inside its connect or disconnect callback: a
 *    failed connect and a lost connection are freed by hiredis itself, we
 *    only forget the pointer; we free our own contexts from reply callbacks
 *    (hiredis defers that) or from timers;
 *  - before freeing a context ourselves we clear ac->data: every callback
 *    first looks at ac->data, so the NULL replies and the disconnect
 *    callback that hiredis runs while freeing are ignored;
 *  - a NULL reply with ac->data still set means the context is dying on its
 *    own: the disconnect callback (connected) or the connect callback (not
 *    connected) comes with it and handles it;
 *  - a subscribed connection gets AUTH and the address question before
 *    SUBSCRIBE, and only SUBSCRIBE after it (re-sent as the probe).
 * Every step has a loop timer armed; user callbacks run from 0 ms timers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "sentinel.h"
#include "tls.h"

#define WATCH_BACKOFF_MIN_MS 50.0
#define WATCH_BACKOFF_MAX_MS 5000.0
#define TIMEOUT_MAX_MS 600000u
#define REASONS_MAX 448
#define EPOCH_GRACE_MAX_MS 3600000u

typedef struct disc disc;

enum phase { PH_ASK, PH_CHECK, PH_DONE };
enum dtimer { DT_NONE, DT_START, DT_NEXT, DT_DEADLINE, DT_DONE };
enum wstate { W_OFF, W_PAUSE, W_SUBSCRIBING, W_UP };

struct disc {
    bl_sentinel *s;
    disc *prev, *next;
    bl_sentinel_cb cb;
    void *arg;
    redisAsyncContext *ac;
    bl_timer *timer;
    enum dtimer tmode;
    enum phase phase;
    int verify_only;
    int tried;  /* positions of order[] used so far */
    int asking; /* index of the sentinel asked / that named the candidate; -1 for verify */
    int have_addr;        /* the sentinel named the candidate; its SENTINEL master is next */
    long long cand_epoch; /* that sentinel's config-epoch, -1 if unknown */
    char host[BL_SENTINEL_ADDR_MAX]; /* the candidate, then the result */
    int port;
    int status;
    char reasons[REASONS_MAX]; /* "; "-joined, one per sentinel/candidate */
    int order[BL_SENTINEL_MAX]; /* s->order when the round started */
};

typedef struct watch {
    int on;
    enum wstate state;
    int probing;
    int idx; /* the sentinel in use, -1 before the first */
    int have_addr; /* its get-master-addr-by-name answer, until SENTINEL master's */
    char ahost[BL_SENTINEL_ADDR_MAX];
    int aport;
    redisAsyncContext *ac;
    bl_timer *timer;
    double step;
    bl_timer *notify;
    int notify_pending;
    char nhost[BL_SENTINEL_ADDR_MAX];
    int nport;
} watch;

struct bl_sentinel {
    bl_loop loop;
    char *master_name;
    int n;
    char *hosts[BL_SENTINEL_MAX];
    int ports[BL_SENTINEL_MAX];
    int order[BL_SENTINEL_MAX];
    char *s_user, *s_pass, *user, *pass;
    int db;
    struct bl_tls_ctx *tls; /* borrowed; NULL: plaintext */
    char *tls_name;
    uint32_t timeout_ms, probe_ms, epoch_grace_ms;
    void (*log)(int, const char *, void *);
    void *log_data;
    void (*switched)(void *, const char *, int);
    void *ctx;
    int freeing;
    disc *discs;
    watch w;
    char known_host[BL_SENTINEL_ADDR_MAX];
    int known_port;
    long long max_epoch; /* highest config-epoch a sentinel reported */
    uint64_t lag_since;  /* when answers below max_epoch began to be refused; 0 = not */
    uint64_t rnd;
    bl_sentinel_stats st;
};

/* ---- small things ------------------------------------------------------------ */

static void slog(bl_sentinel *s, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void slog(bl_sentinel *s, int level, const char *fmt, ...)
{
    if (!s->log)
        return;
    char buf[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    s->log(level, buf, s->log_data);
}

static int einval(char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int einval(char *why, size_t len, const char *fmt, ...)
{
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return BL_EINVAL;
}

int bl_sentinel_addr_ok(const char *s, size_t n)
{
    char buf[BL_SENTINEL_ADDR_MAX];
    unsigned char bin[16];
    if (!s || n == 0 || n >= sizeof buf || memchr(s, '\0', n))
        return 0;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET, buf, bin) == 1 || inet_pton(AF_INET6, buf, bin) == 1;
}

/* Decimal 1..65535 in s[0..n), nothing else: the port, or -1. */
static int parse_port(const char *s, size_t n)
{
    if (n == 0 || n > 5)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= 65535 ? (int)v : -1;
}

static char *dup_or_null(const char *s, int *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static uint64_t next_rand(bl_sentinel *s)
{
    uint64_t z = (s->rnd += 0x9e3779b97f4a7c15ULL); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Forget a context of ours and free it. Never from inside its connect or
 * disconnect callback (nobody here calls it there). From a reply callback
 * hiredis defers the free until the callback returns. */
static void drop(redisAsyncContext **acp)
{
    redisAsyncContext *ac = *acp;
    *acp = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
}

/* A context to host:port driven by s's loop, callbacks set; NULL and why. */
static void tls_log(void *arg, const char *msg)
{
    bl_sentinel *s = arg;
    slog(s, BL_LOG_WARN, "%s", msg);
}

/* Plain or TLS (tls.h). A TLS relay here is not kept: it frees itself once
 * hiredis lets go, and its failure reason goes to the log (hiredis reports
 * it as a closed connection). */
static redisAsyncContext *open_ctx(bl_sentinel *s, const char *host, int port, void *data,
                                   redisConnectCallback *on_conn,
                                   redisDisconnectCallback *on_disc, char *why, size_t len)
{
    bl_ctx_spec spec = {.loop = &s->loop, .host = host, .port = port, .tls = s->tls,
                        .name = s->tls_name, .data = data, .on_connect = on_conn,
                        .on_disconnect = on_disc, .log = tls_log, .log_arg = s};
    return bl_ctx_open(&spec, NULL, why, len);
}

/* AUTH [user] pass, pipelined. 0 or -1. */
static int send_auth(redisAsyncContext *ac, redisCallbackFn *cb, void *priv, const char *user,
                     const char *pass)
{
    if (!pass)
        return 0;
    int rc = user ? redisAsyncCommand(ac, cb, priv, "AUTH %s %s", user, pass)
                  : redisAsyncCommand(ac, cb, priv, "AUTH %s", pass);
    return rc == REDIS_OK ? 0 : -1;
}

static const char *ctx_err(const redisAsyncContext *ac, const char *dflt)
{
    return ac && ac->c.errstr[0] ? ac->c.errstr : dflt;
}

static void set_known(bl_sentinel *s, const char *host, int port)
{
    snprintf(s->known_host, sizeof s->known_host, "%s", host);
    s->known_port = port;
}

/* ---- pure helpers ---------------------------------------------------------- */

int bl_sentinel_parse_switch(const char *p, size_t len, bl_sentinel_switch *out)
{
    if (!p || !out)
        return -1;
    /* Four fields from the right, each separated by exactly one space. */
    const char *f[4];
    size_t fl[4];
    size_t end = len;
    for (int k = 3; k >= 0; k--) {
        size_t i = end;
        while (i > 0 && p[i - 1] != ' ')
            i--;
        if (i == 0 || i == end) /* no space before it, or an empty field */
            return -1;
        f[k] = p + i;
        fl[k] = end - i;
        end = i - 1; /* the space */
    }
    if (end == 0) /* empty name */
        return -1;
    if (!bl_sentinel_addr_ok(f[0], fl[0]) || !bl_sentinel_addr_ok(f[2], fl[2]))
        return -1;
    int op = parse_port(f[1], fl[1]), np = parse_port(f[3], fl[3]);
    if (op < 0 || np < 0)
        return -1;
    if (memchr(p, '\0', end))
        return -1;
    memset(out, 0, sizeof *out);
    out->name = p;
    out->name_len = end;
    memcpy(out->old_host, f[0], fl[0]);
    memcpy(out->new_host, f[2], fl[2]);
    out->old_port = op;
    out->new_port = np;
    return 0;
}

static int is_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) && r->str;
}

int bl_sentinel_parse_role(const redisReply *r, bl_sentinel_role *out)
{
    if (!r || !out || r->type != REDIS_REPLY_ARRAY || r->elements < 1 || !is_str(r->element[0]))
        return -1;
    bl_sentinel_role o;
    memset(&o, 0, sizeof o);
    const char *k = r->element[0]->str;
    if (!strcmp(k, "master")) {
        if (r->elements != 3 || r->element[1]->type != REDIS_REPLY_INTEGER ||
            r->element[2]->type != REDIS_REPLY_ARRAY)
            return -1;
        o.kind = BL_ROLE_MASTER;
        o.offset = r->element[1]->integer;
        const redisReply *list = r->element[2];
        for (size_t i = 0; i < list->elements; i++)
            if (list->element[i]->type != REDIS_REPLY_ARRAY || list->element[i]->elements < 2)
                return -1;
        o.replicas = list->elements > 1000000 ? 1000000 : (int)list->elements;
    } else if (!strcmp(k, "slave")) {
        if (r->elements != 5 || !is_str(r->element[1]) ||
            r->element[2]->type != REDIS_REPLY_INTEGER || !is_str(r->element[3]) ||
            r->element[4]->type != REDIS_REPLY_INTEGER)
            return -1;
        o.kind = BL_ROLE_REPLICA;
        snprintf(o.master_host, sizeof o.master_host, "%s", r->element[1]->str);
        long long mp = r->element[2]->integer;
        o.master_port = mp >= 0 && mp <= 65535 ? (int)mp : -1;
        snprintf(o.link, sizeof o.link, "%s", r->element[3]->str);
        o.offset = r->element[4]->integer;
    } else if (!strcmp(k, "sentinel")) {
        if (r->elements != 2 || r->element[1]->type != REDIS_REPLY_ARRAY)
            return -1;
        o.kind = BL_ROLE_SENTINEL;
    } else {
        return -1;
    }
    *out = o;
    return 0;
}

static int has_flag(const char *flags, const char *f)
{
    size_t n = strlen(f);
    for (const char *p = flags; p && *p;) {
        size_t l = strcspn(p, ",");
        if (l == n && !strncmp(p, f, n))
            return 1;
        p += l;
        if (*p == ',')
            p++;
    }
    return 0;
}

static long long to_ll(const char *s, int *ok)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    *ok = *s && *end == '\0' && errno == 0;
    return v;
}

int bl_sentinel_parse_master_info(const redisReply *r, bl_sentinel_master_info *out)
{
    if (!r || !out || r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0)
        return -1;
    bl_sentinel_master_info o;
    memset(&o, 0, sizeof o);
    o.config_epoch = -1;
    o.other_sentinels = -1;
    int have_ip = 0, have_port = 0, have_flags = 0;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (!is_str(k) || !is_str(v))
            return -1;
        int ok = 0;
        if (!strcmp(k->str, "ip")) {
            if (v->len >= sizeof o.ip)
                return -1;
            memcpy(o.ip, v->str, v->len);
            o.ip[v->len] = '\0';
            have_ip = 1;
        } else if (!strcmp(k->str, "port")) {
            if ((o.port = parse_port(v->str, v->len)) < 0)
                return -1;
            have_port = 1;
        } else if (!strcmp(k->str, "flags")) {
            o.is_master = has_flag(v->str, "master");
            o.s_down = has_flag(v->str, "s_down");
            o.o_down = has_flag(v->str, "o_down");
            o.failover = has_flag(v->str, "failover_in_progress");
            have_flags = 1;
        } else if (!strcmp(k->str, "config-epoch")) {
            long long e = to_ll(v->str, &ok);
            if (!ok || e < 0)
                return -1;
            o.config_epoch = e;
        } else if (!strcmp(k->str, "num-other-sentinels")) {
            long long n = to_ll(v->str, &ok);
            if (!ok || n < 0 || n > 1000000)
                return -1;
            o.other_sentinels = (int)n;
        }
    }
    if (!have_ip || !have_port || !have_flags)
        return -1;
    *out = o;
    return 0;
}

/* ---- config-epochs: a sentinel that lags behind a failover -------------------
 * A sentinel restarted from an old config file, or cut off during the
 * failover, names the old master under an older config-epoch. Once any
 * sentinel has reported epoch E, answers below E are refused - for
 * epoch_grace_ms at most: sentinels that keep reporting a lower epoch after
 * that were reset (SENTINEL REMOVE + MONITOR starts again at 0), and are
 * believed again rather than refused forever. */
static int lags(bl_sentinel *s, long long epoch)
{
    if (epoch < 0)
        return 0; /* unknown (SENTINEL master refused): ROLE decides alone */
    if (epoch >= s->max_epoch) {
        s->max_epoch = epoch;
        s->lag_since = 0;
        return 0;
    }
    uint64_t now = s->loop.now_ms(s->loop.impl);
    if (!s->lag_since)
        s->lag_since = now;
    if (now - s->lag_since < s->epoch_grace_ms)
        return 1;
    slog(s, BL_LOG_WARN,
         "bidlock: sentinel: sentinels have reported config-epoch %lld (below %lld) for %llu "
         "ms: assuming they were reset, believing them again",
         epoch, s->max_epoch, (unsigned long long)(now - s->lag_since));
    s->max_epoch = epoch;
    s->lag_since = 0;
    return 0;
}

/* ---- discovery --------------------------------------------------------------- */

static void note(disc *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(disc *d, const char *fmt, ...)
{
    size_t o = strlen(d->reasons);
    if (o + 8 >= sizeof d->reasons)
        return;
    if (o) {
        memcpy(d->reasons + o, "; ", 3);
        o += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->reasons + o, sizeof d->reasons - o, fmt, ap);
    va_end(ap);
    slog(d->s, BL_LOG_DEBUG, "bidlock: sentinel: %s", d->reasons + o);
}

static void arm(disc *d, enum dtimer mode, uint64_t ms)
{
    d->tmode = mode;
    d->s->loop.timer_start(d->timer, ms);
}

/* End the round; the callback runs from the timer. */
static void finish(disc *d, int status)
{
    drop(&d->ac);
    d->phase = PH_DONE;
    d->status = status;
    bl_sentinel *s = d->s;
    if (status == BL_OK) {
        s->st.discover_ok++;
        if (!d->verify_only)
            set_known(s, d->host, d->port);
    } else {
        s->st.discover_failed++;
        if (d->verify_only)
            slog(s, BL_LOG_WARN, "bidlock: sentinel: %s:%d is not a usable master: %s", d->host,
                 d->port, d->reasons);
        else
            slog(s, BL_LOG_WARN, "bidlock: sentinel: no verified master for '%s': %s",
                 s->master_name, d->reasons);
    }
    arm(d, DT_DONE, 0);
}

/* Go on with the next sentinel, from the loop (not from inside hiredis). */
static void next_soon(disc *d)
{
    arm(d, DT_NEXT, 0);
}

static const char *sname(const disc *d, char *buf, size_t len)
{
    snprintf(buf, len, "sentinel %s:%d", d->s->hosts[d->asking], d->s->ports[d->asking]);
    return buf;
}

/* Which node the current step talks to, for messages. */
static const char *step_name(const disc *d, char *buf, size_t len)
{
    if (d->phase == PH_CHECK) {
        snprintf(buf, len, "%s:%d", d->host, d->port);
        return buf;
    }
    return sname(d, buf, len);
}

static void d_on_connect(const redisAsyncContext *ac, int status)
{
    disc *d = ac->data;
    if (!d || status == REDIS_OK)
        return;
    /* hiredis frees ac after this returns and fails the queued commands
     * with NULL: they are ignored (ac->data cleared). */
    ((redisAsyncContext *)ac)->data = NULL;
    d->ac = NULL;
    char nm[96];
    note(d, "%s: %s", step_name(d, nm, sizeof nm), ctx_err(ac, "connect failed"));
    next_soon(d);
}

static void d_on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    disc *d = ac->data;
    if (!d || d->ac != ac)
        return;
    d->ac = NULL; /* hiredis frees it */
    char nm[96];
    note(d, "%s: %s", step_name(d, nm, sizeof nm), ctx_err(ac, "connection closed"));
    next_soon(d);
}

/* AUTH / SELECT answers: a refusal ends this step. */
static void d_setup_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    disc *d = ac->data;
    if (!d || !reply || reply->type != REDIS_REPLY_ERROR)
        return;
    char nm[96];
    note(d, "%s: %s refused: %s", step_name(d, nm, sizeof nm), (const char *)priv,
         reply->str ? reply->str : "");
    drop(&d->ac);
    next_soon(d);
}

static int start_check(disc *d);

static void role_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)priv;
    redisReply *reply = reply_;
    disc *d = ac->data;
    if (!d || !reply)
        return;
    bl_sentinel *s = d->s;
    char by[96] = "";
    if (!d->verify_only)
        snprintf(by, sizeof by, " (named by sentinel %s:%d)", s->hosts[d->asking],
                 s->ports[d->asking]);
    bl_sentinel_role role;
    if (reply->type == REDIS_REPLY_ERROR) {
        note(d, "ROLE on %s:%d%s: %s", d->host, d->port, by, reply->str ? reply->str : "");
    } else if (bl_sentinel_parse_role(reply, &role) != 0) {
        note(d, "ROLE on %s:%d%s: not a ROLE answer", d->host, d->port, by);
    } else if (role.kind == BL_ROLE_MASTER) {
        if (!d->verify_only) {
            if (d->cand_epoch > s->max_epoch)
                s->max_epoch = d->cand_epoch;
            /* Sentinel client guidelines: the sentinel that answered goes
             * first next time. */
            int p = 0;
            while (p < s->n && s->order[p] != d->asking)
                p++;
            if (p < s->n) {
                memmove(s->order + 1, s->order, (size_t)p * sizeof s->order[0]);
                s->order[0] = d->asking;
            }
        }
        finish(d, BL_OK);
        return;
    } else {
        s->st.not_master++;
        if (role.kind == BL_ROLE_REPLICA)
            note(d, "%s:%d%s is a replica of %s:%d (link %s), not the master", d->host,
                 d->port, by, role.master_host, role.master_port, role.link);
        else
            note(d, "%s:%d%s is a sentinel, not the master", d->host, d->port, by);
    }
    drop(&d->ac);
    next_soon(d);
}

static void ask_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)priv;
    redisReply *reply = reply_;
    disc *d = ac->data;
    if (!d || !reply)
        return;
    bl_sentinel *s = d->s;
    char nm[96];
    sname(d, nm, sizeof nm);
    if (reply->type == REDIS_REPLY_NIL) {
        note(d, "%s does not know master '%s'", nm, s->master_name);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        note(d, "%s: %s", nm, reply->str ? reply->str : "error");
    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
               !is_str(reply->element[0]) || !is_str(reply->element[1]) ||
               parse_port(reply->element[1]->str, reply->element[1]->len) < 0) {
        note(d, "%s: not an address answer", nm);
    } else if (!bl_sentinel_addr_ok(reply->element[0]->str, reply->element[0]->len)) {
        char q[48];
        snprintf(q, sizeof q, "%.40s", reply->element[0]->str);
        note(d, "%s names '%s', not a numeric address (bidlock cannot resolve names without "
                "blocking: set 'sentinel announce-hostnames no')",
             nm, q);
    } else {
        memcpy(d->host, reply->element[0]->str, reply->element[0]->len);
        d->host[reply->element[0]->len] = '\0';
        d->port = parse_port(reply->element[1]->str, reply->element[1]->len);
        d->have_addr = 1; /* SENTINEL master's answer follows on this connection */
        return;
    }
    drop(&d->ac);
    next_soon(d);
}

/* SENTINEL master NAME, after the address: is this sentinel behind (older
 * config-epoch), or does it see the node it names as down? */
static void info_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)priv;
    redisReply *reply = reply_;
    disc *d = ac->data;
    if (!d || !reply || !d->have_addr)
        return;
    bl_sentinel *s = d->s;
    char nm[96];
    sname(d, nm, sizeof nm);
    bl_sentinel_master_info mi;
    d->have_addr = 0;
    d->cand_epoch = -1;
    if (bl_sentinel_parse_master_info(reply, &mi) == 0) {
        int same = mi.port == d->port && !strcmp(mi.ip, d->host);
        if (same && (mi.s_down || mi.o_down)) {
            s->st.lagging++;
            note(d, "%s names %s:%d but sees it down (%s)", nm, d->host, d->port,
                 mi.o_down ? "o_down" : "s_down");
            drop(&d->ac);
            next_soon(d);
            return;
        }
        if (lags(s, mi.config_epoch)) {
            s->st.lagging++;
            note(d, "%s lags behind a failover (config-epoch %lld, %lld seen before); it names "
                    "%s:%d",
                 nm, mi.config_epoch, s->max_epoch, d->host, d->port);
            drop(&d->ac);
            next_soon(d);
            return;
        }
        d->cand_epoch = mi.config_epoch;
    } /* else refused or unreadable (an ACL without SENTINEL MASTER): ROLE decides */
    drop(&d->ac); /* deferred by hiredis until we return */
    if (start_check(d) != 0)
        next_soon(d);
}

/* Connect to the candidate: AUTH, SELECT, ROLE. 0, or -1 (noted). */
static int start_check(disc *d)
{
    bl_sentinel *s = d->s;
    char why[160];
    d->phase = PH_CHECK;
    d->ac = open_ctx(s, d->host, d->port, d, d_on_connect, d_on_disconnect, why, sizeof why);
    if (!d->ac) {
        note(d, "%s:%d: %s", d->host, d->port, why);
        return -1;
    }
    int bad = send_auth(d->ac, d_setup_cb, "AUTH", s->user, s->pass) != 0;
    if (!bad && s->db)
        bad = redisAsyncCommand(d->ac, d_setup_cb, "SELECT", "SELECT %d", s->db) != REDIS_OK;
    if (!bad)
        bad = redisAsyncCommand(d->ac, role_cb, NULL, "ROLE") != REDIS_OK;
    if (bad) {
        drop(&d->ac);
        note(d, "%s:%d: cannot send ROLE", d->host, d->port);
        return -1;
    }
    arm(d, DT_DEADLINE, s->timeout_ms);
    return 0;
}

/* Ask sentinel i. 0, or -1 (noted). */
static int start_ask(disc *d, int i)
{
    bl_sentinel *s = d->s;
    char why[160], nm[96];
    d->phase = PH_ASK;
    d->asking = i;
    d->have_addr = 0;
    d->ac = open_ctx(s, s->hosts[i], s->ports[i], d, d_on_connect, d_on_disconnect, why,
                     sizeof why);
    if (!d->ac) {
        note(d, "%s: %s", sname(d, nm, sizeof nm), why);
        return -1;
    }
    if (send_auth(d->ac, d_setup_cb, "AUTH", s->s_user, s->s_pass) != 0 ||
        redisAsyncCommand(d->ac, ask_cb, NULL, "SENTINEL get-master-addr-by-name %s",
                          s->master_name) != REDIS_OK ||
        redisAsyncCommand(d->ac, info_cb, NULL, "SENTINEL master %s", s->master_name) !=
            REDIS_OK) {
        drop(&d->ac);
        note(d, "%s: cannot send the question", sname(d, nm, sizeof nm));
        return -1;
    }
    arm(d, DT_DEADLINE, s->timeout_ms);
    return 0;
}

static void advance(disc *d)
{
    if (!d->verify_only)
        while (d->tried < d->s->n)
            if (start_ask(d, d->order[d->tried++]) == 0)
                return;
    finish(d, BL_ECONN);
}

static void deliver(disc *d)
{
    bl_sentinel *s = d->s;
    if (d->prev)
        d->prev->next = d->next;
    else
        s->discs = d->next;
    if (d->next)
        d->next->prev = d->prev;
    char msg[REASONS_MAX + 128];
    if (d->status != BL_OK) {
        if (d->verify_only)
            snprintf(msg, sizeof msg, "%s:%d is not a usable master: %s", d->host, d->port,
                     d->reasons);
        else
            snprintf(msg, sizeof msg, "no verified master for '%s' after asking %d sentinel%s: %s",
                     s->master_name, s->n, s->n == 1 ? "" : "s", d->reasons);
    }
    /* s may be freed by the callback: touch only d (ours) afterwards. */
    void (*timer_free)(bl_timer *) = s->loop.timer_free;
    d->cb(d->arg, d->status, d->status == BL_OK ? d->host : NULL,
          d->status == BL_OK ? d->port : 0, d->status == BL_OK ? NULL : msg);
    timer_free(d->timer);
    free(d);
}

static void disc_timer(void *data)
{
    disc *d = data;
    enum dtimer m = d->tmode;
    d->tmode = DT_NONE;
    char nm[96];
    switch (m) {
    case DT_START:
        if (d->verify_only && start_check(d) == 0)
            return;
        advance(d); /* verify: the check could not start */
        break;
    case DT_DEADLINE:
        note(d, "%s: no answer within %u ms", step_name(d, nm, sizeof nm), d->s->timeout_ms);
        drop(&d->ac);
        advance(d);
        break;
    case DT_NEXT:
        advance(d);
        break;
    case DT_DONE:
        deliver(d);
        break;
    case DT_NONE:
        break;
    }
}

static int start_disc(bl_sentinel *s, const char *host, int port, bl_sentinel_cb cb,
                      void *arg)
{
    if (!s || !cb)
        return BL_EINVAL;
    if (s->freeing)
        return BL_ECANCELED;
    disc *d = calloc(1, sizeof *d);
    if (!d)
        return BL_ENOMEM;
    d->timer = s->loop.timer_new(s->loop.impl, disc_timer, d);
    if (!d->timer) {
        free(d);
        return BL_ENOMEM;
    }
    d->s = s;
    d->cb = cb;
    d->arg = arg;
    d->asking = -1;
    d->cand_epoch = -1;
    if (host) {
        d->verify_only = 1;
        snprintf(d->host, sizeof d->host, "%s", host);
        d->port = port;
    }
    memcpy(d->order, s->order, sizeof d->order);
    d->next = s->discs;
    if (s->discs)
        s->discs->prev = d;
    s->discs = d;
    arm(d, DT_START, 0);
    return BL_OK;
}

int bl_sentinel_discover(bl_sentinel *s, bl_sentinel_cb cb, void *arg)
{
    return start_disc(s, NULL, 0, cb, arg);
}

int bl_sentinel_verify(bl_sentinel *s, const char *host, int port, bl_sentinel_cb cb,
                       void *arg)
{
    if (!host || !bl_sentinel_addr_ok(host, strlen(host)) || port < 1 || port > 65535)
        return BL_EINVAL;
    return start_disc(s, host, port, cb, arg);
}

/* ---- the watch ----------------------------------------------------------------- */

static void w_connect(bl_sentinel *s);

static const char *w_name(bl_sentinel *s, char *buf, size_t len)
{
    snprintf(buf, len, "sentinel %s:%d", s->hosts[s->w.idx], s->ports[s->w.idx]);
    return buf;
}

/* The connection is gone (already dropped or being freed by hiredis):
 * pause, then the next sentinel in the current order. */
static void w_lost(bl_sentinel *s, const char *why)
{
    watch *w = &s->w;
    char nm[96];
    w->state = W_PAUSE;
    w->probing = 0;
    s->st.watch_lost++;
    int p = 0;
    while (p < s->n && s->order[p] != w->idx)
        p++;
    int next = s->order[p < s->n ? (p + 1) % s->n : 0];
    w->step = w->step <= 0 ? WATCH_BACKOFF_MIN_MS : w->step * 2;
    if (w->step > WATCH_BACKOFF_MAX_MS)
        w->step = WATCH_BACKOFF_MAX_MS;
    uint64_t half = (uint64_t)(w->step / 2);
    uint64_t pause = half + (half ? next_rand(s) % (half + 1) : 0);
    slog(s, BL_LOG_WARN,
         "bidlock: sentinel: watch on %s lost (%s); next: sentinel %s:%d in %llu ms",
         w_name(s, nm, sizeof nm), why, s->hosts[next], s->ports[next],
         (unsigned long long)pause);
    w->idx = next;
    s->loop.timer_start(w->timer, pause);
}

static void w_notify(bl_sentinel *s, const char *host, int port)
{
    watch *w = &s->w;
    snprintf(w->nhost, sizeof w->nhost, "%s", host);
    w->nport = port;
    w->notify_pending = 1;
    s->loop.timer_start(w->notify, 0);
}

static void w_notify_cb(void *data)
{
    bl_sentinel *s = data;
    watch *w = &s->w;
    if (!w->notify_pending)
        return;
    w->notify_pending = 0;
    s->st.switches++;
    if (!s->switched)
        return;
    char host[BL_SENTINEL_ADDR_MAX];
    memcpy(host, w->nhost, sizeof host);
    s->switched(s->ctx, host, w->nport); /* may free s */
}

static void w_on_connect(const redisAsyncContext *ac, int status)
{
    bl_sentinel *s = ac->data;
    if (!s || status == REDIS_OK)
        return;
    ((redisAsyncContext *)ac)->data = NULL;
    s->w.ac = NULL; /* hiredis frees it */
    w_lost(s, ctx_err(ac, "connect failed"));
}

static void w_on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    bl_sentinel *s = ac->data;
    if (!s || s->w.ac != ac)
        return;
    s->w.ac = NULL; /* hiredis frees it */
    w_lost(s, ctx_err(ac, "connection closed"));
}

static void w_fail(bl_sentinel *s, const char *why)
{
    drop(&s->w.ac);
    w_lost(s, why);
}

static void w_setup_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)priv;
    redisReply *reply = reply_;
    bl_sentinel *s = ac->data;
    if (!s || !reply || reply->type != REDIS_REPLY_ERROR)
        return;
    char why[200];
    snprintf(why, sizeof why, "AUTH refused: %s", reply->str ? reply->str : "");
    w_fail(s, why);
}

static void w_addr_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)priv;
    redisReply *reply = reply_;
    bl_sentinel *s = ac->data;
    if (!s || !reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[200];
        snprintf(why, sizeof why, "%s", reply->str ? reply->str : "error");
        w_fail(s, why);
        return;
    }
    if (reply->type == REDIS_REPLY_NIL) {
        char why[BL_SENTINEL_NAME_MAX + 64];
        snprintf(why, sizeof why, "it does not know master '%s'", s->master_name);
        w_fail(s, why);
        return;
    }
    int port = -1;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 && is_str(reply->element[0]) &&
        is_str(reply->element[1]) &&
        bl_sentinel_addr_ok(reply->element[0]->str, reply->element[0]->len))
        port = parse_port(reply->element[1]->str, reply->element[1]->len);
    if (port < 0) {
        w_fail(s, "it gave no numeric address for the master");
        return;
    }
    watch *w = &s->w;
    memcpy(w->ahost, reply->element[0]->str, reply->element[0]->len);
    w->ahost[reply->element[0]->len] = '\0';
    w->aport = port;
    w->have_addr = 1; /* judged with SENTINEL master's answer, next */
}

static void w_info_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)priv;
    redisReply *reply = reply_;
    bl_sentinel *s = ac->data;
    watch *w = s ? &s->w : NULL;
    if (!s || !reply || !w->have_addr)
        return;
    w->have_addr = 0;
    bl_sentinel_master_info mi;
    char nm[96];
    if (bl_sentinel_parse_master_info(reply, &mi) == 0 && lags(s, mi.config_epoch)) {
        /* Stay subscribed: when it catches up it announces +switch-master. */
        slog(s, BL_LOG_INFO,
             "bidlock: sentinel: %s lags (config-epoch %lld, %lld seen before): its address "
             "%s:%d is not reported",
             w_name(s, nm, sizeof nm), mi.config_epoch, s->max_epoch, w->ahost, w->aport);
        return;
    }
    if (!s->known_port) {
        set_known(s, w->ahost, w->aport); /* a baseline, nothing to report */
    } else if (s->known_port != w->aport || strcmp(s->known_host, w->ahost) != 0) {
        slog(s, BL_LOG_INFO, "bidlock: sentinel: %s names %s:%d, not %s:%d",
             w_name(s, nm, sizeof nm), w->ahost, w->aport, s->known_host, s->known_port);
        set_known(s, w->ahost, w->aport);
        w_notify(s, w->ahost, w->aport);
    }
}

static void w_sub_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    (void)priv;
    redisReply *reply = reply_;
    bl_sentinel *s = ac->data;
    if (!s || !reply)
        return;
    watch *w = &s->w;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 || !is_str(reply->element[0])) {
        if (reply->type == REDIS_REPLY_ERROR) {
            char why[200];
            snprintf(why, sizeof why, "SUBSCRIBE refused: %s", reply->str ? reply->str : "");
            w_fail(s, why);
        }
        return;
    }
    const char *kind = reply->element[0]->str;
    char nm[96];
    if (!strcmp(kind, "subscribe")) {
        if (w->state == W_SUBSCRIBING) {
            w->state = W_UP;
            w->step = 0;
            s->st.watch_subscribed++;
            slog(s, BL_LOG_INFO, "bidlock: sentinel: watching +switch-master on %s",
                 w_name(s, nm, sizeof nm));
        }
        w->probing = 0;
        s->loop.timer_start(w->timer, s->probe_ms);
        return;
    }
    if (strcmp(kind, "message") != 0 || !is_str(reply->element[2]))
        return;
    bl_sentinel_switch sw;
    size_t nlen = strlen(s->master_name);
    if (bl_sentinel_parse_switch(reply->element[2]->str, reply->element[2]->len, &sw) != 0) {
        slog(s, BL_LOG_WARN, "bidlock: sentinel: unusable +switch-master from %s",
             w_name(s, nm, sizeof nm));
        return;
    }
    if (sw.name_len != nlen || memcmp(sw.name, s->master_name, nlen) != 0)
        return; /* another master this sentinel watches */
    slog(s, BL_LOG_INFO, "bidlock: sentinel: +switch-master %s: %s:%d -> %s:%d",
         s->master_name, sw.old_host, sw.old_port, sw.new_host, sw.new_port);
    set_known(s, sw.new_host, sw.new_port);
    w_notify(s, sw.new_host, sw.new_port);
}

static void w_connect(bl_sentinel *s)
{
    watch *w = &s->w;
    char why[160];
    if (w->idx < 0)
        w->idx = s->order[0];
    w->state = W_SUBSCRIBING;
    w->probing = 0;
    w->have_addr = 0;
    w->ac = open_ctx(s, s->hosts[w->idx], s->ports[w->idx], s, w_on_connect, w_on_disconnect,
                     why, sizeof why);
    if (!w->ac) {
        w_lost(s, why);
        return;
    }
    if (send_auth(w->ac, w_setup_cb, NULL, s->s_user, s->s_pass) != 0 ||
        redisAsyncCommand(w->ac, w_addr_cb, NULL, "SENTINEL get-master-addr-by-name %s",
                          s->master_name) != REDIS_OK ||
        redisAsyncCommand(w->ac, w_info_cb, NULL, "SENTINEL master %s", s->master_name) !=
            REDIS_OK ||
        redisAsyncCommand(w->ac, w_sub_cb, NULL, "SUBSCRIBE +switch-master") != REDIS_OK) {
        w_fail(s, "cannot send SUBSCRIBE");
        return;
    }
    s->loop.timer_start(w->timer, s->timeout_ms);
}

static void w_timer_cb(void *data)
{
    bl_sentinel *s = data;
    watch *w = &s->w;
    char why[96];
    switch (w->state) {
    case W_PAUSE:
        w_connect(s);
        break;
    case W_SUBSCRIBING:
        snprintf(why, sizeof why, "not subscribed within %u ms", s->timeout_ms);
        w_fail(s, why);
        break;
    case W_UP:
        if (w->probing) {
            snprintf(why, sizeof why, "no answer to the probe within %u ms", s->timeout_ms);
            w_fail(s, why);
        } else if (redisAsyncCommand(w->ac, w_sub_cb, NULL, "SUBSCRIBE +switch-master") !=
                   REDIS_OK) {
            w_fail(s, "cannot send the probe");
        } else {
            w->probing = 1;
            s->loop.timer_start(w->timer, s->timeout_ms);
        }
        break;
    case W_OFF:
        break;
    }
}

int bl_sentinel_watch(bl_sentinel *s)
{
    if (!s)
        return BL_EINVAL;
    if (s->freeing)
        return BL_ECANCELED;
    if (s->w.on)
        return BL_OK;
    s->w.on = 1;
    s->w.state = W_PAUSE;
    s->loop.timer_start(s->w.timer, 0);
    return BL_OK;
}

/* ---- lifetime ------------------------------------------------------------------ */

int bl_sentinel_new(const bl_sentinel_host *h, bl_sentinel **out, char *why, size_t why_len)
{
    if (!h || !out)
        return einval(why, why_len, "no sentinel settings given");
    const bl_loop *l = h->loop;
    if (!l || !l->attach || !l->timer_new || !l->timer_start || !l->timer_stop ||
        !l->timer_free || !l->now_ms)
        return einval(why, why_len, "the host loop is missing or incomplete");
    if (!h->master_name || !h->master_name[0])
        return einval(why, why_len, "the Sentinel master name is missing");
    if (strlen(h->master_name) > BL_SENTINEL_NAME_MAX)
        return einval(why, why_len, "the Sentinel master name is longer than %d bytes",
                      BL_SENTINEL_NAME_MAX);
    if (h->n < 1 || h->n > BL_SENTINEL_MAX || !h->hosts || !h->ports)
        return einval(why, why_len, "give 1 to %d sentinels (got %d)", BL_SENTINEL_MAX, h->n);
    for (int i = 0; i < h->n; i++) {
        const char *host = h->hosts[i];
        if (!host || !host[0])
            return einval(why, why_len, "sentinel %d has no address", i + 1);
        if (!bl_sentinel_addr_ok(host, strlen(host))) {
            char q[48];
            snprintf(q, sizeof q, "%.40s", host);
            return einval(why, why_len,
                          "sentinel %d: '%s' is not a numeric IPv4 or IPv6 address; bidlock "
                          "does not resolve host names (hiredis 0.14 would block the loop): "
                          "give the sentinel's IP address",
                          i + 1, q);
        }
        if (h->ports[i] < 1 || h->ports[i] > 65535)
            return einval(why, why_len, "sentinel %d: port %d is not in 1..65535", i + 1,
                          h->ports[i]);
    }
    if (h->db < 0)
        return einval(why, why_len, "db %d is negative", h->db);
    if (h->timeout_ms > TIMEOUT_MAX_MS)
        return einval(why, why_len, "timeout_ms %u is over %u", h->timeout_ms, TIMEOUT_MAX_MS);
    if (h->epoch_grace_ms > EPOCH_GRACE_MAX_MS)
        return einval(why, why_len, "epoch_grace_ms %u is over %u", h->epoch_grace_ms,
                      EPOCH_GRACE_MAX_MS);

    bl_sentinel *s = calloc(1, sizeof *s);
    if (!s)
        return BL_ENOMEM;
    int oom = 0;
    s->loop = *l;
    s->master_name = dup_or_null(h->master_name, &oom);
    s->n = h->n;
    for (int i = 0; i < h->n; i++) {
        s->hosts[i] = dup_or_null(h->hosts[i], &oom);
        s->ports[i] = h->ports[i];
        s->order[i] = i;
    }
    s->s_user = dup_or_null(h->sentinel_username, &oom);
    s->s_pass = dup_or_null(h->sentinel_password, &oom);
    s->user = dup_or_null(h->username, &oom);
    s->pass = dup_or_null(h->password, &oom);
    s->db = h->db;
    s->tls = h->tls;
    s->tls_name = dup_or_null(h->tls_name, &oom);
    s->timeout_ms = h->timeout_ms ? h->timeout_ms : BL_SENTINEL_TIMEOUT_DEFAULT;
    s->probe_ms = h->watch_probe_ms ? h->watch_probe_ms : BL_SENTINEL_PROBE_DEFAULT;
    s->epoch_grace_ms = h->epoch_grace_ms ? h->epoch_grace_ms : BL_SENTINEL_EPOCH_GRACE_DEFAULT;
    s->log = h->log;
    s->log_data = h->log_data;
    s->switched = h->switched;
    s->ctx = h->ctx;
    s->w.idx = -1;
    s->rnd = l->now_ms(l->impl) ^ (uint64_t)(uintptr_t)s;
    s->w.timer = l->timer_new(l->impl, w_timer_cb, s);
    s->w.notify = l->timer_new(l->impl, w_notify_cb, s);
    if (oom || !s->w.timer || !s->w.notify) {
        bl_sentinel_free(s);
        return BL_ENOMEM;
    }
    *out = s;
    return BL_OK;
}

void bl_sentinel_free(bl_sentinel *s)
{
    if (!s || s->freeing)
        return;
    s->freeing = 1;
    drop(&s->w.ac);
    if (s->w.timer)
        s->loop.timer_free(s->w.timer);
    if (s->w.notify)
        s->loop.timer_free(s->w.notify);
    s->w.timer = s->w.notify = NULL;
    while (s->discs) {
        disc *d = s->discs;
        s->discs = d->next;
        drop(&d->ac);
        s->loop.timer_free(d->timer);
        d->cb(d->arg, BL_ECANCELED, NULL, 0, "cancelled");
        free(d);
    }
    free(s->master_name);
    for (int i = 0; i < s->n; i++)
        free(s->hosts[i]);
    wipe_free(s->s_user);
    wipe_free(s->s_pass);
    free(s->tls_name);
    wipe_free(s->user);
    wipe_free(s->pass);
    free(s);
}

/* ---- introspection --------------------------------------------------------------- */

int bl_sentinel_first(const bl_sentinel *s)
{
    return s ? s->order[0] : -1;
}

int bl_sentinel_watching(const bl_sentinel *s)
{
    return s && s->w.state == W_UP ? s->w.idx : -1;
}

const char *bl_sentinel_master(const bl_sentinel *s, int *port)
{
    if (port)
        *port = s && s->known_port ? s->known_port : 0;
    return s && s->known_port ? s->known_host : NULL;
}

void bl_sentinel_stats_get(const bl_sentinel *s, bl_sentinel_stats *out)
{
    if (out)
        *out = s ? s->st : (bl_sentinel_stats){0};
}
