/* Connecting: AUTH (password, ACL user), SELECT, URLs, fail-closed, and
 * recovery after CLIENT KILL, server restarts and drops mid-flight. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"

static char logbuf[8192];

static void on_log(int level, const char *msg, void *data)
{
    (void)level;
    (void)data;
    size_t n = strlen(logbuf);
    snprintf(logbuf + n, sizeof logbuf - n, "%s\n", msg);
}

static void setup(void)
{
    fx_redis_loop_init();
    logbuf[0] = '\0';
}

TestSuite(conn, .init = setup, .fini = fx_redis_loop_fini, .timeout = 60);

static bl_config cfg_for(const redis_srv *s)
{
    bl_config c;
    bl_config_init(&c);
    c.port = s->port;
    c.log = on_log;
    c.reconnect_initial_ms = 20;
    return c;
}

static int exists_in_db(const redis_srv *s, int db, const char *key)
{
    redisContext *c = rs_connect(s);
    freeReplyObject(redisCommand(c, "SELECT %d", db));
    redisReply *r = redisCommand(c, "EXISTS %s", key);
    int v = (int)r->integer;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

static const char *const with_auth[] = {"--requirepass", "s3cret-pw",
                                        "--user", "alice", "on", ">wonder-pw", "~*", "&*", "+@all",
                                        "--user", "pinger", "on", ">ping-pw", "~*", "+ping",
                                        NULL};

Test(conn, auth_with_a_password_and_with_an_acl_user)
{
    redis_srv s;
    rs_start(&s, with_auth);
    snprintf(s.password, sizeof s.password, "s3cret-pw");
    bl_config c = cfg_for(&s);
    c.password = "s3cret-pw";
    bl_manager *a = mk_manager(T, c.port, &c);
    cr_assert_eq(acq(a, "p1", 0, 0).status, BL_OK);
    c.username = "alice";
    c.password = "wonder-pw";
    bl_manager *b = mk_manager(T, c.port, &c);
    cr_assert_eq(acq(b, "p2", 0, 0).status, BL_OK);
    cr_assert_eq(acq(b, "p1", 0, 0).status, BL_EBUSY, "same server, same locks");
    /* A user without the rights gets the server's refusal, verbatim. */
    c.username = "pinger";
    c.password = "ping-pw";
    bl_manager *p = mk_manager(T, c.port, &c);
    rec r = acq(p, "p3", 0, 0);
    cr_assert_eq(r.status, BL_EREDIS);
    cr_assert(strstr(r.errmsg, "NOPERM"), "message: %s", r.errmsg);
    close_manager(T, a);
    close_manager(T, b);
    close_manager(T, p);
    rs_stop(&s);
}

Test(conn, a_wrong_password_is_a_clear_error_that_never_shows_the_password)
{
    redis_srv s;
    rs_start(&s, with_auth);
    bl_config c = cfg_for(&s);
    c.password = "not-the-pw-4711";
    bl_manager *a = mk_manager(T, c.port, &c);
    tl_run_for(T, 200);
    rec r = acq(a, "p", 0, 0);
    cr_assert(r.status == BL_ECONN || r.status == BL_EREDIS, "%s", bl_status_name(r.status));
    cr_assert(strstr(r.errmsg, "WRONGPASS") || strstr(r.errmsg, "AUTH"), "message: %s", r.errmsg);
    cr_assert_null(strstr(r.errmsg, "4711"));
    cr_assert(strstr(logbuf, "AUTH failed"), "logged: %s", logbuf);
    cr_assert_null(strstr(logbuf, "4711"), "password in the log: %s", logbuf);
    /* No password at all: the server's NOAUTH comes through. */
    bl_config none = cfg_for(&s);
    bl_manager *b = mk_manager(T, none.port, &none);
    r = acq(b, "p", 0, 0);
    /* Redis 7 answers NOAUTH, or - for a long command from a client that
     * has not authenticated - a protocol error that says so. */
    cr_assert_eq(r.status, BL_EREDIS);
    cr_assert(strstr(r.errmsg, "NOAUTH") || strstr(r.errmsg, "unauthenticated"), "message: %s",
              r.errmsg);
    close_manager(T, a);
    close_manager(T, b);
    rs_stop(&s);
}

Test(conn, select_and_urls_are_honoured)
{
    redis_srv s;
    char sock[96];
    snprintf(sock, sizeof sock, "/tmp/bidlock-conn-%d.sock", (int)getpid());
    const char *const extra[] = {"--unixsocket", sock, "--unixsocketperm", "700", NULL};
    rs_start(&s, extra);
    bl_config c = cfg_for(&s);
    c.db = 3;
    bl_manager *a = mk_manager(T, c.port, &c);
    cr_assert_eq(acq(a, "in3", 0, 0).status, BL_OK);
    cr_assert_eq(exists_in_db(&s, 3, "bid_lock:ebay:in3"), 1);
    cr_assert_eq(exists_in_db(&s, 0, "bid_lock:ebay:in3"), 0);

    char url[160];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/2", s.port);
    bl_config u = cfg_for(&s);
    u.port = 1; /* the url wins */
    u.url = url;
    bl_manager *b = mk_manager(T, u.port, &u);
    cr_assert_eq(acq(b, "in2", 0, 0).status, BL_OK);
    cr_assert_eq(exists_in_db(&s, 2, "bid_lock:ebay:in2"), 1);

    snprintf(url, sizeof url, "unix://%s?db=5", sock);
    bl_manager *x = mk_manager(T, u.port, &u);
    cr_assert_eq(acq(x, "in5", 0, 0).status, BL_OK);
    cr_assert_eq(exists_in_db(&s, 5, "bid_lock:ebay:in5"), 1);

    u.url = "redis://127.0.0.1:99999/";
    bl_manager *bad = NULL;
    cr_assert_eq(bl_manager_new(tl_bl(T), &u, &bad), BL_EINVAL);
    char why[256];
    cr_assert_eq(bl_config_validate(&u, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "port"), "why: %s", why);
    close_manager(T, a);
    close_manager(T, b);
    close_manager(T, x);
    rs_stop(&s);
    unlink(sock);
}

Test(conn, a_configured_redis_that_is_down_fails_closed)
{
    bl_config c;
    bl_config_init(&c);
    c.port = unused_port();
    c.log = on_log;
    bl_manager *a = mk_manager(T, c.port, &c);
    for (int i = 0; i < 3; i++) {
        rec r = acq(a, "p", 0, 0);
        cr_assert_eq(r.status, BL_ECONN, "never a local lock: got %s", bl_status_name(r.status));
        tl_run_for(T, 50);
    }
    cr_assert_null(strstr(logbuf, "in-memory"), "no silent fallback");
    close_manager(T, a);
}

Test(conn, reconnects_after_client_kill)
{
    bl_config c = cfg_for(&srv);
    bl_manager *a = mk_manager(T, c.port, &c);
    rec held = acq(a, "k1", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    cr_assert(rs_int(&srv, "CLIENT KILL TYPE normal") >= 1);
    tl_run_for(T, 50);
    cr_assert(wait_up(a, 5000), "reconnected");
    cr_assert_eq(acq(a, "k2", 0, 0).status, BL_OK, "works after the reconnect");
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert(st.reconnects >= 1);
    /* The lock held across the drop is still ours: release works. */
    rec r = {0};
    cr_assert_eq(bl_release(held.lock, on_rel, &r), BL_OK);
    cr_assert(tl_wait(T, &r.n, 1, 5000));
    cr_assert_eq(r.status, BL_OK);
    cr_assert(strstr(logbuf, "reconnected"), "log: %s", logbuf);
    close_manager(T, a);
}

Test(conn, requests_in_flight_when_the_server_dies_end_once_and_it_recovers_after_restart)
{
    bl_config c = cfg_for(&srv);
    bl_manager *a = mk_manager(T, c.port, &c);
    cr_assert_eq(acq(a, "warm", 0, 0).status, BL_OK);
    kill(srv.pid, SIGSTOP); /* requests now sit unanswered */
    enum { N = 5 };
    rec r[N] = {{0}};
    char id[8];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "f%d", i);
        acq_start(a, id, 0, 0, &r[i]);
    }
    tl_run_for(T, 100);
    rs_kill(&srv); /* SIGKILL also ends a stopped process */
    wait_all(r, N, 5000);
    assert_once(r, N, "request");
    for (int i = 0; i < N; i++)
        cr_assert_eq(r[i].status, BL_ECONN);
    cr_assert_eq(acq(a, "down", 0, 0).status, BL_ECONN, "fails closed while down");
    rs_restart(&srv);
    cr_assert(wait_up(a, 10000), "reconnected to the restarted server");
    cr_assert_eq(acq(a, "back", 0, 0).status, BL_OK, "scripts reloaded on the new server");
    tl_run_for(T, 50);
    assert_once(r, N, "never twice: request");
    close_manager(T, a);
}

Test(conn, a_paused_server_cannot_hold_requests_past_their_deadlines)
{
    bl_config c = cfg_for(&srv);
    c.command_timeout_ms = 300;
    bl_manager *a = mk_manager(T, c.port, &c);
    rec held = acq(a, "held", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    kill(srv.pid, SIGSTOP);
    rec waiting = {0}, once = {0}, released = {0};
    uint64_t t0 = mono_ms();
    acq_start(a, "late", 400, 0, &waiting);
    acq_start(a, "once", 0, 0, &once);
    cr_assert_eq(bl_release(held.lock, on_rel, &released), BL_OK);
    cr_assert(tl_wait(T, &waiting.n, 1, 3000));
    cr_assert(tl_wait(T, &once.n, 1, 3000));
    cr_assert(tl_wait(T, &released.n, 1, 3000));
    uint64_t took = mono_ms() - t0;
    cr_assert_eq(waiting.status, BL_ETIMEDOUT, "%s", bl_status_name(waiting.status));
    cr_assert_eq(once.status, BL_ECONN, "%s", bl_status_name(once.status));
    cr_assert_eq(released.status, BL_ECONN);
    cr_assert(strstr(released.errmsg, "did not answer"), "%s", released.errmsg);
    cr_assert(took < 2500, "bounded by the deadlines, not by the pause (%llu ms)",
              (unsigned long long)took);
    /* The server wakes up and runs the queued scripts: both grants were
     * real, and bidlock gives them back. */
    kill(srv.pid, SIGCONT);
    cr_assert(wait_no_locks(&srv, 5000), "late grants given back, the late release ran too");
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert_eq(st.abandoned, 2, "late grants given back: %llu", (unsigned long long)st.abandoned);
    cr_assert_eq(acq(a, "late", 0, 0).status, BL_OK, "and it works again");
    close_manager(T, a);
}

Test(conn, a_host_name_is_resolved_once_at_create)
{
    bl_config c = cfg_for(&srv);
    c.host = "localhost";
    bl_manager *a = mk_manager(T, c.port, &c);
    cr_assert_eq(acq(a, "named", 0, 0).status, BL_OK);
    close_manager(T, a);
    c.host = "no-such-host.invalid";
    bl_manager *b = NULL;
    cr_assert_eq(bl_manager_new(tl_bl(T), &c, &b), BL_ECONN);
    cr_assert_null(b);
}

Test(conn, a_release_behind_a_hung_lease_renewal_still_answers)
{
    bl_config c = cfg_for(&srv);
    c.command_timeout_ms = 300;
    bl_manager *a = mk_manager(T, c.port, &c);
    rec released = {0}, held = acq_renewed(a, "lease", 600, NULL); /* renews every ~200 ms */
    cr_assert_eq(held.status, BL_OK);
    kill(srv.pid, SIGSTOP);
    tl_run_for(T, 300); /* a renewal is now in flight, unanswered */
    cr_assert_eq(bl_release(held.lock, on_rel, &released), BL_OK);
    cr_assert(tl_wait(T, &released.n, 1, 3000), "the release answered without the server");
    cr_assert_eq(released.status, BL_ECONN);
    kill(srv.pid, SIGCONT);
    cr_assert(wait_gone(&srv, "bid_lock:ebay:lease", 5000), "given back once the server woke");
    cr_assert_eq(released.n, 1);
    close_manager(T, a);
}
