/* TLS to Redis (issue 12): rediss://, verified certificates, client
 * certificates, on a real redis-server with --tls-port, on every loop.
 * Certificates are made by the test (rsrv_tls_certs, the openssl command)
 * in a private directory; each test has its own server. The server's
 * plaintext port stays for the test's own checks and for CONFIG SET
 * tls-cert-file (one server serves the expired and wrong-host certificates
 * too). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"
#include "url.h"

static char certs[96];
static char logbuf[16384];
static char path_buf[8][256];

static void on_log(int level, const char *msg, void *data)
{
    (void)level;
    (void)data;
    size_t n = strlen(logbuf);
    snprintf(logbuf + n, sizeof logbuf - n, "%s\n", msg);
}

/* certs/<name> */
static const char *P(int slot, const char *name)
{
    snprintf(path_buf[slot], sizeof path_buf[slot], "%s/%s", certs, name);
    return path_buf[slot];
}

static void setup(void)
{
    fx_loop_init();
    logbuf[0] = '\0';
    cr_assert_eq(rsrv_tmpdir(certs, sizeof certs, "tls"), 0);
    char err[256];
    cr_assert_eq(rsrv_tls_certs(certs, err, sizeof err), 0, "%s", err);
}

static void teardown(void)
{
    fx_loop_fini();
    rsrv_rmdir(certs);
}

TestSuite(tls, .init = setup, .fini = teardown, .timeout = 120);

static void start_tls(redis_srv *s, const char *const *extra)
{
    cr_assert_eq(rsrv_start_tls(s, extra, certs), 0, "%s", s->err);
}

/* A config for rediss://127.0.0.1:<tls port> trusting the test CA. */
static bl_config tls_cfg(const redis_srv *s, char *url, size_t len)
{
    bl_config c = quick_cfg(0);
    snprintf(url, len, "rediss://127.0.0.1:%d", s->tls_port);
    c.url = url;
    c.tls_ca_file = P(0, "ca.crt");
    c.log = on_log;
    c.connect_timeout_ms = 3000;
    return c;
}

static bl_manager *mk(const bl_config *c)
{
    bl_manager *m = NULL;
    int rc = bl_manager_new(tl_bl(T), c, &m);
    cr_assert_eq(rc, BL_OK, "bl_manager_new: %s", bl_strerror(rc));
    return m;
}

static hrec health(bl_manager *m)
{
    hrec h = {0};
    cr_assert_eq(bl_health_check(m, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 20000), "health never answered");
    return h;
}

/* The attempt fails (try-once) with BL_ECONN; returns the message. */
static rec refused(bl_manager *m, const char *posting)
{
    rec r = acq(m, posting, 0, 0);
    cr_assert_eq(r.status, BL_ECONN, "%s: %s (%s)", posting, bl_status_name(r.status), r.errmsg);
    return r;
}

typedef struct sub_seen {
    const redis_srv *s;
    bl_manager *m;
    const char *posting;
} sub_seen;

/* m's subscriber connection listens on bid_lock:ebay:<posting>, m has a
 * waiter, and no attempt of m is in flight (the retry the subscription's
 * confirmation asks for has been answered too). */
static int subscribed(void *arg)
{
    sub_seen *x = arg;
    bl_stats st;
    bl_manager_stats(x->m, &st);
    char channel[600];
    snprintf(channel, sizeof channel, "{bid_lock:ebay:%s}|%s", x->posting, bl_manager_holder(x->m));
    return st.waiting >= 1 &&
           st.attempts + st.direct_handoffs == st.acquired + st.done + st.abandoned + st.conflicts + st.errors_attempt &&
           rs_subscribers(x->s, channel) >= 1;
}

/* ---- the engine, features and faults over TLS --------------------------- */

Test(tls, locks_waiters_inspect_cleanup_and_health_over_rediss)
{
    redis_srv s;
    start_tls(&s, NULL);
    char url[64];
    bl_config c = tls_cfg(&s, url, sizeof url);
    bl_manager *a = mk(&c), *b = mk(&c);
    rec ra = acq(a, "p1", 0, 0);
    cr_assert_eq(ra.status, BL_OK, "%s", ra.errmsg);
    cr_assert_gt(ra.token, 0);
    cr_assert_eq(acq(b, "p1", 0, 0).status, BL_EBUSY);
    cr_assert(rs_exists(&s, "bid_lock:ebay:p1"), "the lock is on the server");
    irec i = inspect(b, "p1");
    cr_assert_eq(i.status, BL_OK);
    cr_assert_eq(i.held, 1);
    cr_assert_str_eq(i.holder, bl_manager_holder(a));
    /* a waiter on w is woken through w's subscriber connection (TLS too):
     * its backoff is a minute, so without the wake-up it would not look
     * again within this test's bound */
    bl_config cw = c;
    cw.backoff_initial_ms = cw.backoff_max_ms = 60000;
    bl_manager *w = mk(&cw);
    rec wb = {0};
    acq_start(w, "p1", 120000, 0, &wb);
    sub_seen x = {&s, w, "p1"};
    cr_assert(tl_wait_for(T, subscribed, &x, 30000), "the waiter never subscribed; log:\n%s",
              logbuf);
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &wb.n, 1, 25000), "the waiter was not woken; log:\n%s", logbuf);
    cr_assert_eq(wb.status, BL_OK, "%s", wb.errmsg);
    cr_assert_gt(wb.token, ra.token, "fencing tokens increase");
    cr_assert_eq(rel(wb.lock), BL_OK);
    bl_stats st;
    bl_manager_stats(w, &st);
    cr_assert_geq(st.wakeups, 1, "woken by pub/sub, not found by polling");
    cr_assert_leq(st.attempts, 3, "attempts %llu: it polled", (unsigned long long)st.attempts);
    close_manager(T, w);
    /* done markers and cleanup */
    rec d = acq(a, "p2", 0, 0);
    cr_assert_eq(d.status, BL_OK);
    cr_assert_eq(rel_done(d.lock), BL_OK);
    cr_assert_eq(acq(b, "p2", 0, 0).status, BL_EDONE);
    rec k = acq(a, "p3", 0, 0);
    cr_assert_eq(k.status, BL_OK);
    crec cl = {0};
    cr_assert_eq(bl_cleanup(a, 1, on_cleanup, &cl), BL_OK);
    cr_assert(tl_wait(T, &cl.n, 1, 20000));
    cr_assert_eq(cl.status, BL_OK);
    cr_assert_eq(cl.removed, 1);
    cr_assert_eq(bl_release(k.lock, NULL, NULL), BL_OK); /* cleanup took it: ENOTHELD, unseen */
    hrec h = health(a);
    cr_assert_eq(h.status, BL_OK, "%s", h.errmsg);
    cr_assert_eq(h.state, BL_CONN_UP);
    cr_assert_gt(h.latency_ms, 0.0);
    assert_counters(a);
    assert_counters(b);
    close_manager(T, a);
    close_manager(T, b);
    cr_assert(tl_idle(T), "a relay or a connection was left on the loop");
    rs_stop(&s);
}

Test(tls, auth_select_and_a_busy_pipeline_over_tls)
{
    static const char *const extra[] = {"--requirepass", "tls-pw", NULL};
    redis_srv s;
    start_tls(&s, extra);
    char url[96];
    bl_config c = tls_cfg(&s, url, sizeof url);
    snprintf(url, sizeof url, "rediss://:tls-pw@127.0.0.1:%d/3", s.tls_port);
    bl_manager *m = mk(&c);
    /* a burst bigger than the relay buffers: they fill and drain in turn */
    enum { N = 300 }; /* ~60 KB of EVALSHA: more than the relay buffers (32 KB) */
    static rec r[N];
    char posting[32];
    for (int i = 0; i < N; i++) {
        snprintf(posting, sizeof posting, "many-%d", i);
        acq_start(m, posting, 0, 0, &r[i]);
    }
    cr_assert(wait_all(r, N, 60000), "not every acquire ended");
    assert_once(r, N, "acquire");
    for (int i = 0; i < N; i++)
        cr_assert_eq(r[i].status, BL_OK, "%d: %s", i, r[i].errmsg);
    redisContext *rc = rs_connect(&s);
    redisReply *rep = redisCommand(rc, "SELECT 3");
    freeReplyObject(rep);
    rep = redisCommand(rc, "DBSIZE");
    cr_assert_geq(rep->integer, N, "the locks are in db 3");
    freeReplyObject(rep);
    redisFree(rc);
    static rec rr[N];
    for (int i = 0; i < N; i++)
        cr_assert_eq(bl_release(r[i].lock, on_rel, &rr[i]), BL_OK);
    cr_assert(wait_all(rr, N, 60000));
    for (int i = 0; i < N; i++)
        cr_assert_eq(rr[i].status, BL_OK, "%d: %s", i, rr[i].errmsg);
    /* a wrong password is the server's refusal, verbatim, over TLS */
    snprintf(url, sizeof url, "rediss://:nope@127.0.0.1:%d", s.tls_port);
    bl_manager *bad = mk(&c);
    rec e = acq(bad, "x", 0, 0);
    cr_assert(e.status == BL_ECONN || e.status == BL_EREDIS, "%s", bl_status_name(e.status));
    cr_assert(strstr(e.errmsg, "WRONGPASS") || strstr(e.errmsg, "invalid"), "%s", e.errmsg);
    close_manager(T, bad);
    close_manager(T, m);
    rs_stop(&s);
}

/* ---- client certificates ------------------------------------------------- */

Test(tls, mtls_required_given_and_missing)
{
    static const char *const extra[] = {"--tls-auth-clients", "yes", NULL};
    redis_srv s;
    start_tls(&s, extra);
    char url[64];
    bl_config c = tls_cfg(&s, url, sizeof url);
    c.tls_cert_file = P(1, "client.crt");
    c.tls_key_file = P(2, "client.key");
    bl_manager *with = mk(&c);
    rec ok = acq(with, "m1", 0, 0);
    cr_assert_eq(ok.status, BL_OK, "%s", ok.errmsg);
    cr_assert_eq(rel(ok.lock), BL_OK);
    c.tls_cert_file = c.tls_key_file = NULL;
    bl_manager *without = mk(&c);
    rec no = refused(without, "m2");
    cr_assert(strstr(no.errmsg, "client certificate"), "says why: %s", no.errmsg);
    cr_assert_null(strstr(no.errmsg, "Server closed the connection"), "%s", no.errmsg);
    cr_assert(!rs_exists(&s, "bid_lock:ebay:m2"), "nothing done without the certificate");
    close_manager(T, with);
    close_manager(T, without);
    rs_stop(&s);
}

/* ---- verification: each failure with its own message --------------------- */

static void set_cert(const redis_srv *s, const char *name)
{
    char crt[32], key[32];
    snprintf(crt, sizeof crt, "%s.crt", name);
    snprintf(key, sizeof key, "%s.key", name);
    redisReply *r = rs_cmd(s, "CONFIG SET tls-cert-file %s tls-key-file %s", P(3, crt),
                           P(4, key));
    cr_assert(r && r->type == REDIS_REPLY_STATUS, "CONFIG SET: %s", r ? r->str : "no reply");
    freeReplyObject(r);
}

Test(tls, wrong_ca_expired_and_host_mismatch_are_refused_each_with_its_reason)
{
    redis_srv s;
    start_tls(&s, NULL);
    char url[64];
    bl_config c = tls_cfg(&s, url, sizeof url);
    c.tls_ca_file = P(5, "other-ca.crt");
    bl_manager *m = mk(&c);
    rec r = refused(m, "w1");
    /* the server sends its chain (OpenSSL builds it from its CA file): the
     * root there is one we do not trust */
    cr_assert(strstr(r.errmsg, "certificate verify failed: self-signed certificate in "
                               "certificate chain") ||
                  strstr(r.errmsg, "certificate verify failed: unable to get local issuer"),
              "wrong CA: %s", r.errmsg);
    close_manager(T, m);

    c.tls_ca_file = P(5, "ca.crt");
    set_cert(&s, "expired");
    m = mk(&c);
    r = refused(m, "w2");
    cr_assert(strstr(r.errmsg, "certificate verify failed: certificate has expired"),
              "expired: %s", r.errmsg);
    close_manager(T, m);

    set_cert(&s, "wronghost");
    m = mk(&c);
    r = refused(m, "w3");
    cr_assert(strstr(r.errmsg, "host name mismatch") && strstr(r.errmsg, "'127.0.0.1'"),
              "wrong host (IP literal): %s", r.errmsg);
    close_manager(T, m);
    /* a name: checked against the DNS SANs, and sent as SNI */
    c.tls_server_name = "localhost";
    m = mk(&c);
    r = refused(m, "w4");
    cr_assert(strstr(r.errmsg, "host name mismatch") && strstr(r.errmsg, "'localhost'"),
              "wrong host (name): %s", r.errmsg);
    close_manager(T, m);
    c.tls_server_name = "wrong.example"; /* what that certificate is for */
    m = mk(&c);
    r = acq(m, "w5", 0, 0);
    cr_assert_eq(r.status, BL_OK, "tls_server_name wrong.example: %s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    close_manager(T, m);

    /* the good certificate again, now checked by name (localhost) */
    set_cert(&s, "server");
    c.tls_server_name = NULL;
    snprintf(url, sizeof url, "rediss://localhost:%d", s.tls_port);
    m = mk(&c);
    r = acq(m, "w6", 0, 0);
    cr_assert_eq(r.status, BL_OK, "localhost: %s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    close_manager(T, m);
    for (int i = 1; i <= 4; i++) {
        char k[32];
        snprintf(k, sizeof k, "bid_lock:ebay:w%d", i);
        cr_assert(!rs_exists(&s, k), "%s was written through a refused connection", k);
    }
    cr_assert(strstr(logbuf, "certificate verify failed"), "and logged: %s", logbuf);
    rs_stop(&s);
}

Test(tls, insecure_skip_verify_connects_to_an_untrusted_server)
{
    redis_srv s;
    start_tls(&s, NULL);
    char url[64];
    bl_config c = tls_cfg(&s, url, sizeof url);
    c.tls_ca_file = NULL;
    c.tls_insecure_skip_verify = 1;
    set_cert(&s, "wronghost"); /* and for another name, too */
    bl_manager *m = mk(&c);
    rec r = acq(m, "i1", 0, 0);
    cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    close_manager(T, m);
    /* without the opt-out, the system trust store does not know the test CA */
    c.tls_insecure_skip_verify = 0;
    m = mk(&c);
    r = refused(m, "i2");
    cr_assert(strstr(r.errmsg, "certificate verify failed"), "%s", r.errmsg);
    close_manager(T, m);
    rs_stop(&s);
}

/* ---- the wrong kind of port ------------------------------------------------ */

Test(tls, plaintext_to_the_tls_port_and_tls_to_a_plaintext_port_fail_clearly)
{
    redis_srv s;
    start_tls(&s, NULL);
    char url[64];
    bl_config c = tls_cfg(&s, url, sizeof url);
    c.connect_timeout_ms = 1500;
    snprintf(url, sizeof url, "rediss://127.0.0.1:%d", s.port); /* the plaintext port */
    bl_manager *m = mk(&c);
    rec r = refused(m, "k1");
    cr_assert(strstr(r.errmsg, "TLS"), "names TLS: %s", r.errmsg);
    close_manager(T, m);

    bl_config p = quick_cfg(s.tls_port);
    p.connect_timeout_ms = 1500;
    p.command_timeout_ms = 1500;
    bl_manager *q = mk(&p);
    r = acq(q, "k2", 0, 0);
    cr_assert(r.status == BL_ECONN, "%s: %s", bl_status_name(r.status), r.errmsg);
    cr_assert(strstr(r.errmsg, "if that port speaks TLS, use rediss://"), "says why: %s",
              r.errmsg);
    close_manager(T, q);
    cr_assert(!rs_exists(&s, "bid_lock:ebay:k1") && !rs_exists(&s, "bid_lock:ebay:k2"));
    rs_stop(&s);
}

/* ---- faults ------------------------------------------------------------------ */

Test(tls, server_killed_mid_request_then_restarted_recovers)
{
    redis_srv s;
    start_tls(&s, NULL);
    char url[64];
    bl_config c = tls_cfg(&s, url, sizeof url);
    bl_manager *m = mk(&c);
    rec held = acq(m, "f1", 0, 60000);
    cr_assert_eq(held.status, BL_OK, "%s", held.errmsg);
    cr_assert_eq(kill(s.pid, SIGSTOP), 0);
    enum { N = 50 };
    static rec r[N];
    char posting[32];
    for (int i = 0; i < N; i++) {
        snprintf(posting, sizeof posting, "inflight-%d", i);
        acq_start(m, posting, 0, 0, &r[i]);
    }
    tl_run_for(T, 50); /* written to the relay and on to the stopped server */
    rs_kill(&s);
    cr_assert(wait_all(r, N, 30000), "not every in-flight acquire ended");
    assert_once(r, N, "in-flight acquire");
    for (int i = 0; i < N; i++)
        cr_assert(r[i].status == BL_ECONN, "%d: %s %s", i, bl_status_name(r[i].status),
                  r[i].errmsg);
    rs_restart(&s);
    cr_assert(wait_up(m, 30000), "never reconnected (a new handshake)");
    rec again = {.status = BL_ECONN};
    for (int tries = 0; tries < 100 && again.status != BL_OK; tries++)
        again = acq(m, "f2", 0, 0); /* the subscriber may still be reconnecting */
    cr_assert_eq(again.status, BL_OK, "%s", again.errmsg);
    cr_assert_eq(rel(again.lock), BL_OK);
    bl_stats st;
    bl_manager_stats(m, &st);
    cr_assert_geq(st.reconnects, 1);
    rec rel_old = {0};
    cr_assert_eq(bl_release(held.lock, on_rel, &rel_old), BL_OK);
    cr_assert(tl_wait(T, &rel_old.n, 1, 20000));
    cr_assert_eq(rel_old.status, BL_ENOTHELD, "the server lost it with the restart");
    close_manager(T, m);
    rs_stop(&s);
}

Test(tls, server_stopped_mid_handshake_then_killed_fails_by_the_deadline_and_recovers)
{
    redis_srv s;
    start_tls(&s, NULL);
    char url[64];
    bl_config c = tls_cfg(&s, url, sizeof url);
    c.connect_timeout_ms = 1000;
    cr_assert_eq(kill(s.pid, SIGSTOP), 0); /* the kernel still accepts the TCP connect */
    bl_manager *m = mk(&c);
    rec r = refused(m, "h1");
    cr_assert(strstr(r.errmsg, "TLS handshake") || strstr(r.errmsg, "timed out"), "%s",
              r.errmsg);
    cr_assert_eq(bl_manager_conn_state(m) == BL_CONN_UP, 0);
    rs_kill(&s);
    rs_restart(&s);
    cr_assert(wait_up(m, 30000), "never connected after the restart");
    rec ok = {.status = BL_ECONN};
    for (int tries = 0; tries < 100 && ok.status != BL_OK; tries++)
        ok = acq(m, "h2", 0, 0);
    cr_assert_eq(ok.status, BL_OK, "%s", ok.errmsg);
    cr_assert_eq(rel(ok.lock), BL_OK);
    close_manager(T, m);
    cr_assert(tl_idle(T));
    rs_stop(&s);
}

Test(tls, client_kill_drops_tls_connections_with_requests_in_flight_exactly_once)
{
    redis_srv s;
    start_tls(&s, NULL);
    char url[64];
    bl_config c = tls_cfg(&s, url, sizeof url);
    bl_manager *h = mk(&c);
    c.backoff_initial_ms = c.backoff_max_ms = 60000; /* the waiters do not poll */
    bl_manager *m = mk(&c);
    rec held = acq(h, "busy", 0, 60000);
    cr_assert_eq(held.status, BL_OK);
    enum { N = 40 };
    static rec r[N];
    for (int i = 0; i < N; i++)
        acq_start(m, "busy", 10000, 0, &r[i]); /* waiting: the subscriber is up too */
    sub_seen x = {&s, m, "busy"};
    cr_assert(tl_wait_for(T, subscribed, &x, 30000), "the waiters never subscribed");
    long long killed = rs_int(&s, "CLIENT KILL TYPE pubsub");
    cr_assert_geq(killed, 1);
    cr_assert_eq(rel(held.lock), BL_OK);
    cr_assert(wait_all(r, N, 60000), "not every waiter ended");
    assert_once(r, N, "waiter");
    int ok = 0;
    for (int i = 0; i < N; i++) {
        cr_assert(r[i].status == BL_OK || r[i].status == BL_ETIMEDOUT, "%d: %s %s", i,
                  bl_status_name(r[i].status), r[i].errmsg);
        if (r[i].status == BL_OK) {
            ok++;
            cr_assert_eq(rel(r[i].lock), BL_OK);
        }
    }
    cr_assert_geq(ok, 1, "the lock went round after the subscriber came back");
    close_manager(T, m);
    close_manager(T, h);
    rs_stop(&s);
}

/* ---- configuration ------------------------------------------------------------- */

static int why_is(const bl_config *c, const char *part)
{
    char why[256] = "";
    int rc = bl_config_validate(c, why, sizeof why);
    cr_assert_eq(rc, BL_EINVAL, "wanted a refusal mentioning '%s'", part);
    cr_assert(strstr(why, part), "wanted '%s' in '%s'", part, why);
    bl_manager *m = NULL;
    cr_assert_eq(bl_manager_new(tl_bl(T), c, &m), BL_EINVAL);
    cr_assert_null(m);
    return 1;
}

Test(tls, bad_combinations_and_files_are_refused_before_anything_is_sent)
{
    bl_config c;
    bl_config_init(&c);
    c.url = "rediss://127.0.0.1:1";
    c.tls_ca_file = P(0, "ca.crt");
    char why[256];
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_OK, "%s", why);
    c.tls_key_file = P(1, "client.key");
    why_is(&c, "tls_key_file is set but tls_cert_file is not");
    c.tls_key_file = NULL;
    c.tls_cert_file = P(1, "client.crt");
    why_is(&c, "tls_cert_file is set but tls_key_file is not");
    c.tls_key_file = P(2, "server.key");
    why_is(&c, "does not match");
    c.tls_cert_file = c.tls_key_file = NULL;
    c.tls_ca_file = P(1, "no-such.pem");
    why_is(&c, "No such file");
    c.tls_ca_file = P(1, "client.key"); /* not a certificate */
    why_is(&c, "cannot load the CA file");
    c.tls_ca_file = NULL;
    c.tls_ca_dir = P(1, "ca.crt");
    why_is(&c, "is not a directory");
    c.tls_ca_dir = NULL;
    c.tls_ca_file = P(0, "ca.crt");
    c.tls_insecure_skip_verify = 1;
    why_is(&c, "tls_insecure_skip_verify");
    c.tls_insecure_skip_verify = 0;
    c.tls_server_name = "bad name";
    why_is(&c, "tls_server_name");
    c.tls_server_name = NULL;
    c.url = "redis://127.0.0.1:1"; /* tls_* with TLS off */
    why_is(&c, "TLS is off");
    c.tls = 1; /* the field turns it on for redis:// */
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_OK, "%s", why);
    c.url = "unix:///tmp/x.sock";
    why_is(&c, "unix socket");
    c.url = "redis-cluster://127.0.0.1:7000";
    why_is(&c, "Redis Cluster");
    c.url = NULL;
    c.unix_path = "/tmp/x.sock";
    why_is(&c, "unix socket");
    c.unix_path = NULL;
    c.tls = 2;
    why_is(&c, "tls must be 0 or 1");
    if (geteuid() != 0) { /* root reads anything */
        c.tls = 1;
        const char *locked = P(6, "locked.pem");
        FILE *f = fopen(locked, "w");
        cr_assert(f);
        fclose(f);
        chmod(locked, 0);
        c.tls_ca_file = locked;
        why_is(&c, "not readable");
    }
    /* a loop without the io hooks cannot run TLS */
    c.tls = 1;
    c.tls_ca_file = P(0, "ca.crt");
    bl_loop bare = *tl_bl(T);
    bare.io_new = NULL;
    bare.io_set = NULL;
    bare.io_free = NULL;
    bl_manager *m = NULL;
    cr_assert_eq(bl_manager_new(&bare, &c, &m), BL_EINVAL);
    cr_assert_null(m);
}

Test(tls, rediss_and_the_tls_variables_from_the_environment)
{
    redis_srv s;
    start_tls(&s, NULL);
    char url[64];
    snprintf(url, sizeof url, "rediss://127.0.0.1:%d", s.tls_port);
    setenv("REDIS_URL", url, 1);
    setenv("REDIS_TLS_CA_FILE", P(0, "ca.crt"), 1);
    bl_config c;
    bl_config_init(&c);
    char why[256] = "";
    cr_assert_eq(bl_config_from_env(&c, why, sizeof why), BL_OK, "%s", why);
    cr_assert_str_eq(c.tls_ca_file, P(0, "ca.crt"));
    bl_manager *m = mk(&c);
    rec r = acq(m, "e1", 0, 0);
    cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    close_manager(T, m);
    setenv("REDIS_TLS", "false", 1);
    bl_config_init(&c);
    cr_assert_eq(bl_config_from_env(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "REDIS_TLS=false"), "%s", why);
    setenv("REDIS_TLS", "yes", 1);
    setenv("REDIS_TLS_KEY_FILE", P(1, "client.key"), 1);
    cr_assert_eq(bl_config_from_env(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "REDIS_TLS_KEY_FILE is set but REDIS_TLS_CERT_FILE"), "%s", why);
    unsetenv("REDIS_TLS_KEY_FILE");
    setenv("REDIS_TLS_INSECURE_SKIP_VERIFY", "1", 1);
    cr_assert_eq(bl_config_from_env(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "REDIS_TLS_INSECURE_SKIP_VERIFY"), "%s", why);
    unsetenv("REDIS_TLS_INSECURE_SKIP_VERIFY");
    /* REDIS_TLS=1 turns TLS on for REDIS_HOST/REDIS_PORT */
    unsetenv("REDIS_URL");
    setenv("REDIS_HOST", "127.0.0.1", 1);
    char port[16];
    snprintf(port, sizeof port, "%d", s.tls_port);
    setenv("REDIS_PORT", port, 1);
    bl_config_init(&c);
    cr_assert_eq(bl_config_from_env(&c, why, sizeof why), BL_OK, "%s", why);
    cr_assert_eq(c.tls, 1);
    m = mk(&c);
    r = acq(m, "e2", 0, 0);
    cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    close_manager(T, m);
    rs_stop(&s);
}

Test(tls, the_url_parser_takes_rediss)
{
    bl_url u;
    char why[256];
    cr_assert_eq(bl_url_parse("rediss://alice:pw@cache.internal:6380/2", &u, why, sizeof why),
                 BL_OK, "%s", why);
    cr_assert_eq(u.tls, 1);
    cr_assert_str_eq(u.host, "cache.internal");
    cr_assert_eq(u.port, 6380);
    cr_assert_eq(u.db, 2);
    cr_assert_str_eq(u.username, "alice");
    bl_url_free(&u);
    cr_assert_eq(bl_url_parse("redis://h", &u, why, sizeof why), BL_OK);
    cr_assert_eq(u.tls, 0);
    bl_url_free(&u);
}

/* ---- Sentinel over TLS ----------------------------------------------------------- */

/* One redis-sentinel with a plaintext port (for the launcher's PING) and a
 * TLS port, monitoring the master on its TLS port (tls-replication yes: the
 * sentinel itself talks TLS to the master). */
static pid_t start_sentinel_tls(const redis_srv *master, int *port, int *tls_port, char *dir,
                                size_t dirlen)
{
    cr_assert_eq(rsrv_tmpdir(dir, dirlen, "tls-sentinel"), 0);
    *port = rsrv_free_port();
    do
        *tls_port = rsrv_free_port();
    while (*tls_port == *port);
    char conf[256];
    snprintf(conf, sizeof conf, "%s/sentinel.conf", dir);
    FILE *f = fopen(conf, "w");
    cr_assert(f);
    fprintf(f,
            "bind 127.0.0.1\ndaemonize no\ndir %s\nsentinel resolve-hostnames no\n"
            "tls-port %d\ntls-cert-file %s/server.crt\ntls-key-file %s/server.key\n"
            "tls-ca-cert-file %s/ca.crt\ntls-auth-clients no\ntls-replication yes\n"
            "sentinel monitor m 127.0.0.1 %d 1\n",
            dir, *tls_port, certs, certs, certs, master->tls_port);
    cr_assert_eq(fclose(f), 0);
    pid_t pid = rsrv_launch("redis-sentinel", conf, *port, NULL, NULL);
    cr_assert_gt(pid, 0);
    cr_assert_eq(rsrv_wait_ping(*port, pid, NULL, 10000), RSRV_OK, "redis-sentinel did not start");
    return pid;
}

Test(tls, sentinel_discovery_and_the_master_connections_over_tls)
{
    redis_srv s;
    start_tls(&s, NULL);
    char dir[96];
    int sport, stls;
    pid_t sp = start_sentinel_tls(&s, &sport, &stls, dir, sizeof dir);
    char url[96];
    bl_config c = quick_cfg(0);
    snprintf(url, sizeof url, "redis-sentinel://127.0.0.1:%d#m", stls);
    c.url = url;
    c.tls = 1;
    c.tls_ca_file = P(0, "ca.crt");
    c.log = on_log;
    c.min_replicas = 0;
    bl_manager *m = mk(&c);
    rec r = acq(m, "s1", 0, 0);
    cr_assert_eq(r.status, BL_OK, "%s\nlog:\n%s", r.errmsg, logbuf);
    hrec h = health(m);
    cr_assert_eq(h.status, BL_OK, "%s", h.errmsg);
    cr_assert(rs_exists(&s, "bid_lock:ebay:s1"));
    cr_assert_eq(rel(r.lock), BL_OK);
    close_manager(T, m);
    /* the same sentinel asked in plaintext on its TLS port: refused, not
     * answered */
    c.tls = 0;
    c.tls_ca_file = NULL;
    c.connect_timeout_ms = 1500;
    m = mk(&c);
    r = acq(m, "s2", 0, 0);
    cr_assert_eq(r.status, BL_ECONN, "%s", bl_status_name(r.status));
    close_manager(T, m);
    /* TLS to a sentinel whose certificate we do not trust: refused, and
     * the log says why */
    logbuf[0] = '\0';
    c.tls = 1;
    c.tls_ca_file = P(0, "other-ca.crt");
    m = mk(&c);
    r = acq(m, "s3", 0, 0);
    cr_assert_eq(r.status, BL_ECONN, "%s", bl_status_name(r.status));
    cr_assert(strstr(logbuf, "certificate verify failed"), "log: %s", logbuf);
    close_manager(T, m);
    rsrv_kill_pid(sp);
    rsrv_rmdir(dir);
    rs_stop(&s);
}
