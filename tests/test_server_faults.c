/* Server faults: what bidlock does when the server misbehaves - killed and
 * restarted with requests in flight, paused (CLIENT PAUSE), its connections
 * killed (CLIENT KILL), its script cache flushed, read-only, out of memory,
 * a key of the wrong type at a lock's name, its password changed. Each case
 * checks that nothing crashes or leaks, that every callback runs exactly
 * once with the status the header promises, and that the manager works
 * again once the fault ends. Cases already pinned elsewhere are not
 * repeated here: test_conn.c (SIGSTOP of the server, one CLIENT KILL, a
 * restart, a wrong password), test_features.c (a lost notification),
 * test_engine.c (SCRIPT FLUSH between requests, WRONGTYPE on release).
 * Other processes misbehaving: test_holders.c; bad calls: test_misuse.c. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"

TestSuite(server_faults, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 90);

Test(server_faults, sigkill_with_requests_in_flight_waiting_and_held_then_restart_on_the_same_port)
{
    bl_config c = quick_cfg(srv.port);
    c.command_timeout_ms = 2000;
    bl_manager *holder = mk_manager(T, srv.port, &c), *waiter = mk_manager(T, srv.port, &c),
               *once = mk_manager(T, srv.port, &c);
    enum { HELD = 8, RELEASING = 4, WAITING = 8, ONCE = 16 };
    rec held[HELD] = {{0}}, lost[HELD] = {{0}}, plain[RELEASING] = {{0}};
    rec releasing[RELEASING] = {{0}}, waiting[WAITING] = {{0}}, inflight[ONCE] = {{0}};
    char id[32];
    /* Held with auto-extension (renewed every 200 ms). */
    for (int i = 0; i < HELD; i++) {
        snprintf(id, sizeof id, "held%d", i);
        acq_start_renewed(holder, id, 600, &held[i], &lost[i]);
    }
    for (int i = 0; i < RELEASING; i++) {
        snprintf(id, sizeof id, "plain%d", i);
        acq_start(holder, id, 0, 30000, &plain[i]);
    }
    cr_assert(wait_all(held, HELD, 5000) && wait_all(plain, RELEASING, 5000));
    for (int i = 0; i < HELD; i++)
        cr_assert_eq(held[i].status, BL_OK);
    /* Waiters on the held locks, from another manager. Those not on the
     * wire when the server dies wait on through the outage, to their
     * deadline. */
    for (int i = 0; i < WAITING; i++) {
        snprintf(id, sizeof id, "held%d", i % HELD);
        acq_start(waiter, id, 1500, 0, &waiting[i]);
    }
    tl_run_for(T, 300);
    /* Freeze the server, so what is sent now sits unanswered on the wire. */
    kill(srv.pid, SIGSTOP);
    for (int i = 0; i < ONCE; i++) {
        snprintf(id, sizeof id, "once%d", i);
        acq_start(once, id, 0, 0, &inflight[i]);
    }
    for (int i = 0; i < RELEASING; i++)
        cr_assert_eq(bl_release(plain[i].lock, on_rel, &releasing[i]), BL_OK);
    tl_run_for(T, 100);
    rs_kill(&srv);
    uint64_t down_at = mono_ms();

    /* During the outage every request ends, once, with a connection error
     * (a waiter at its deadline at the latest); every auto-extended lock is
     * reported lost once its lease has run out. */
    cr_assert(wait_all(inflight, ONCE, 5000), "in-flight requests ended");
    cr_assert(wait_all(releasing, RELEASING, 5000), "in-flight releases ended");
    cr_assert(wait_all(waiting, WAITING, 5000), "waiters ended");
    cr_assert(wait_all(lost, HELD, 5000), "auto-extended locks reported lost");
    for (int i = 0; i < ONCE; i++) {
        cr_assert_eq(inflight[i].status, BL_ECONN, "once %d: %s", i,
                     bl_status_name(inflight[i].status));
        cr_assert(inflight[i].errmsg[0], "a reason is given");
    }
    for (int i = 0; i < RELEASING; i++)
        cr_assert_eq(releasing[i].status, BL_ECONN);
    for (int i = 0; i < WAITING; i++)
        cr_assert_eq(waiting[i].status, BL_ECONN, "waiter %d: %s", i,
                     bl_status_name(waiting[i].status));
    for (int i = 0; i < HELD; i++)
        cr_assert_eq(lost[i].status, BL_ELOST);
    rec down = acq(once, "while-down", 0, 0);
    cr_assert_eq(down.status, BL_ECONN, "fails closed while down");
    cr_log_info("outage handled in %llu ms", (unsigned long long)(mono_ms() - down_at));

    rs_restart(&srv);
    cr_assert(wait_up(holder, 10000) && wait_up(waiter, 10000) && wait_up(once, 10000),
              "every manager reconnected");
    /* The restarted server has no keys: the lost locks are not ours. */
    for (int i = 0; i < HELD; i++) {
        int st = rel(held[i].lock);
        cr_assert_eq(st, BL_ENOTHELD, "held %d: %s", i, bl_status_name(st));
    }
    /* And everything works again, with tokens above the ones handed out
     * before the restart (the fence keys are gone; server time floors them). */
    for (int i = 0; i < HELD; i++) {
        snprintf(id, sizeof id, "held%d", i);
        rec r = acq(waiter, id, 0, 0);
        cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
        cr_assert(r.token > held[i].token, "token %llu after %llu", (unsigned long long)r.token,
                  (unsigned long long)held[i].token);
        cr_assert_eq(rel(r.lock), BL_OK);
    }
    rec back = acq(once, "once0", 0, 0);
    cr_assert_eq(back.status, BL_OK);
    cr_assert_eq(rel(back.lock), BL_OK);
    tl_run_for(T, 100);
    assert_once(inflight, ONCE, "in-flight");
    assert_once(releasing, RELEASING, "release");
    assert_once(waiting, WAITING, "waiter");
    assert_once(lost, HELD, "on_lost");
    assert_once(held, HELD, "held");
    bl_manager *all[] = {holder, waiter, once};
    for (int i = 0; i < 3; i++) {
        bl_stats st;
        bl_manager_stats(all[i], &st);
        assert_counters(all[i]);
        cr_assert(st.reconnects >= 1);
        close_manager(T, all[i]);
    }
    assert_no_leaks();
}

Test(server_faults, client_pause_past_request_deadlines)
{
    bl_config c = quick_cfg(srv.port);
    c.command_timeout_ms = 300;
    bl_manager *a = mk_manager(T, srv.port, &c);
    rec held = acq(a, "held", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    /* The server stops serving every client for 1.5 s (connections stay). */
    freeReplyObject(rs_cmd(&srv, "CLIENT PAUSE 1500 ALL"));
    uint64_t t0 = mono_ms();
    rec waiting = {0}, once = {0}, released = {0};
    acq_start(a, "late", 400, 0, &waiting);
    acq_start(a, "once", 0, 0, &once);
    cr_assert_eq(bl_release(held.lock, on_rel, &released), BL_OK);
    cr_assert(tl_wait(T, &waiting.n, 1, 3000) && tl_wait(T, &once.n, 1, 3000) &&
              tl_wait(T, &released.n, 1, 3000));
    uint64_t took = mono_ms() - t0;
    cr_assert_eq(waiting.status, BL_ETIMEDOUT, "%s", bl_status_name(waiting.status));
    cr_assert_eq(once.status, BL_ECONN, "%s", bl_status_name(once.status));
    cr_assert(strstr(once.errmsg, "did not answer"), "%s", once.errmsg);
    cr_assert_eq(released.status, BL_ECONN);
    cr_assert(took < 1200, "ended by the deadlines, not by the pause (%llu ms)",
              (unsigned long long)took);
    /* The pause ends; the queued scripts run: the late grants are given
     * back, the late release deletes the lock. */
    cr_assert(wait_no_locks(&srv, 5000), "nothing left behind");
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert_eq(st.abandoned, 2, "late grants given back: %llu", (unsigned long long)st.abandoned);
    rec again = acq(a, "late", 0, 0);
    cr_assert_eq(again.status, BL_OK, "and it works again");
    cr_assert_eq(rel(again.lock), BL_OK);
    assert_once(&waiting, 1, "waiting");
    assert_once(&once, 1, "once");
    assert_once(&released, 1, "release");
    assert_counters(a);
    close_manager(T, a);
    assert_no_leaks();
}

Test(server_faults, a_health_check_on_a_paused_server_answers_by_the_command_timeout)
{
    bl_config c = quick_cfg(srv.port);
    c.command_timeout_ms = 300;
    bl_manager *a = mk_manager(T, srv.port, &c);
    cr_assert(wait_up(a, 5000));
    freeReplyObject(rs_cmd(&srv, "CLIENT PAUSE 2000 ALL"));
    hrec h = {0};
    uint64_t t0 = mono_ms();
    cr_assert_eq(bl_health_check(a, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 5000));
    uint64_t took = mono_ms() - t0;
    cr_assert_eq(h.status, BL_ECONN, "%s", bl_status_name(h.status));
    cr_assert(took < 1500, "a hung server is reported, not waited for (%llu ms)",
              (unsigned long long)took);
    /* A manager closed while its timed-out check is still unanswered. */
    c.close_timeout_ms = 300;
    bl_manager *b = mk_manager(T, srv.port, &c);
    hrec hb = {0};
    cr_assert_eq(bl_health_check(b, on_health, &hb), BL_OK);
    cr_assert(tl_wait(T, &hb.n, 1, 5000));
    cr_assert_eq(hb.status, BL_ECONN);
    close_manager(T, b);
    tl_run_for(T, 2000); /* the pause ends, the late PONG arrives: ignored */
    cr_assert_eq(h.n, 1, "health: %d callbacks", h.n);
    cr_assert_eq(hb.n, 1, "health b: %d callbacks", hb.n);
    h = (hrec){0};
    cr_assert_eq(bl_health_check(a, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 5000));
    cr_assert_eq(h.status, BL_OK);
    close_manager(T, a);
    assert_no_leaks();
}

Test(server_faults, client_kill_of_the_lock_connection_while_waiters_wait)
{
    bl_config c = quick_cfg(srv.port);
    enum { W = 3 };
    bl_manager *a = mk_manager(T, srv.port, &c), *w[W];
    rec held = acq(a, "k", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    /* The waiters retry only every 2.5-5 s, so none has an attempt on the
     * wire when the connections go (such an attempt ends with BL_ECONN: the
     * server may have granted it, see lock.c), and they take 1.5-3 s to
     * reconnect, so the release's wake-up finds their connection down. */
    bl_config slow = c;
    slow.backoff_initial_ms = slow.backoff_max_ms = 5000;
    slow.reconnect_initial_ms = 3000;
    rec waiting[W] = {{0}};
    for (int i = 0; i < W; i++) {
        w[i] = mk_manager(T, srv.port, &slow);
        acq_start(w[i], "k", 30000, 0, &waiting[i]);
        cr_assert(wait_queued(&srv, w[i], "k", 5000), "waiter %d waits", i);
    }
    /* Every command connection goes (the subscribers stay). */
    cr_assert(rs_int(&srv, "CLIENT KILL TYPE normal") >= W + 1);
    tl_run_for(T, 100); /* a sees the drop and is back; the waiters are not yet */
    cr_assert(wait_up(a, 5000));
    for (int i = 0; i < W; i++)
        cr_assert_neq(bl_manager_conn_state(w[i]), BL_CONN_UP);
    cr_assert_eq(rel(held.lock), BL_OK, "the holder's lock survived the drop");
    /* The waiters still get the lock, one after the other. */
    for (int turn = 0; turn < W; turn++) {
        uint64_t end = mono_ms() + 15000;
        int who = -1;
        while (who < 0 && mono_ms() < end) {
            tl_run_for(T, 5);
            for (int i = 0; i < W; i++)
                if (waiting[i].n == 1 && waiting[i].lock)
                    who = i;
        }
        cr_assert(who >= 0, "turn %d: nobody got the lock", turn);
        for (int i = 0; i < W; i++)
            cr_assert(waiting[i].n == 0 || waiting[i].status == BL_OK,
                      "waiter %d: %s (%s)", i, bl_status_name(waiting[i].status),
                      waiting[i].errmsg);
        bl_lock *l = waiting[who].lock;
        waiting[who].lock = NULL;
        cr_assert_eq(rel(l), BL_OK);
    }
    assert_once(waiting, W, "waiter");
    assert_counters(a);
    close_manager(T, a);
    for (int i = 0; i < W; i++) {
        assert_counters(w[i]);
        close_manager(T, w[i]);
    }
    assert_no_leaks();
}

Test(server_faults, client_kill_of_the_subscriber_connection_while_waiters_wait)
{
    bl_config c = quick_cfg(srv.port);
    bl_manager *a = mk_manager(T, srv.port, &c);
    c.backoff_initial_ms = c.backoff_max_ms = 8000; /* only a wake-up is quick */
    bl_manager *b = mk_manager(T, srv.port, &c);
    rec held = acq(a, "sub", 0, 0);
    rec waiting = {0};
    acq_start(b, "sub", 20000, 0, &waiting);
    cr_assert(wait_queued(&srv, b, "sub", 5000), "b waits, subscribed");
    cr_assert(rs_int(&srv, "CLIENT KILL TYPE pubsub") >= 1);
    /* The subscriber comes back and subscribes again (a few ms) to its
     * channel for this lock, "<key>|<holder>". */
    char channel[512];
    snprintf(channel, sizeof channel, "{bid_lock:ebay:sub}|%s", bl_manager_holder(b));
    uint64_t end = mono_ms() + 5000;
    while (mono_ms() < end && rs_subscribers(&srv, channel) == 0)
        tl_run_for(T, 10);
    tl_run_for(T, 100);
    cr_assert_eq(rs_subscribers(&srv, channel), 1, "resubscribed");
    uint64_t t0 = mono_ms();
    cr_assert_eq(rel(held.lock), BL_OK);
    cr_assert(tl_wait(T, &waiting.n, 1, 10000));
    cr_assert_eq(waiting.status, BL_OK, "%s", bl_status_name(waiting.status));
    cr_assert(mono_ms() - t0 < 2000, "woken by the release, not by its 4-8 s timer (%llu ms)",
              (unsigned long long)(mono_ms() - t0));
    cr_assert_eq(rel(waiting.lock), BL_OK);
    assert_counters(b);
    close_manager(T, a);
    close_manager(T, b);
    assert_no_leaks();
}

Test(server_faults, script_flush_while_requests_are_in_flight)
{
    bl_config c = quick_cfg(srv.port);
    bl_manager *a = mk_manager(T, srv.port, &c);
    enum { HELD = 10, NEW = 30 };
    rec held[HELD] = {{0}}, lost[HELD] = {{0}}, fresh[NEW] = {{0}}, released[HELD] = {{0}};
    char id[32];
    for (int i = 0; i < HELD; i++) {
        snprintf(id, sizeof id, "h%d", i);
        acq_start_renewed(a, id, 300, &held[i], &lost[i]); /* renewed every 100 ms */
    }
    cr_assert(wait_all(held, HELD, 5000));
    /* Queue acquires and releases, then flush the cache before they are
     * written: every one of them meets NOSCRIPT. */
    for (int i = 0; i < NEW; i++) {
        snprintf(id, sizeof id, "n%d", i);
        acq_start(a, id, i % 2 ? 5000 : 0, 0, &fresh[i]);
    }
    for (int i = 0; i < HELD / 2; i++)
        cr_assert_eq(bl_release(held[i].lock, on_rel, &released[i]), BL_OK);
    freeReplyObject(rs_cmd(&srv, "SCRIPT FLUSH"));
    cr_assert(wait_all(fresh, NEW, 5000) && wait_all(released, HELD / 2, 5000));
    for (int i = 0; i < NEW; i++)
        cr_assert_eq(fresh[i].status, BL_OK, "%d: %s (%s)", i, bl_status_name(fresh[i].status),
                     fresh[i].errmsg);
    for (int i = 0; i < HELD / 2; i++)
        cr_assert_eq(released[i].status, BL_OK);
    /* Flushes between renewals: the lease survives them. */
    for (int i = 0; i < 5; i++) {
        freeReplyObject(rs_cmd(&srv, "SCRIPT FLUSH"));
        tl_run_for(T, 130);
    }
    for (int i = 0; i < HELD; i++)
        cr_assert_eq(lost[i].n, 0, "lock %d lost", i);
    for (int i = HELD / 2; i < HELD; i++)
        cr_assert_eq(rel(held[i].lock), BL_OK);
    for (int i = 0; i < NEW; i++)
        cr_assert_eq(rel(fresh[i].lock), BL_OK);
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert_eq(st.errors, 0, "NOSCRIPT never reaches the user");
    cr_assert(st.extends >= 10);
    assert_once(fresh, NEW, "acquire");
    assert_counters(a);
    close_manager(T, a);
    assert_no_leaks();
}

Test(server_faults, a_read_only_replica_refuses_with_readonly_and_nothing_breaks)
{
    redis_srv master, replica;
    rs_start(&master, NULL);
    char port[16];
    snprintf(port, sizeof port, "%d", master.port);
    const char *const extra[] = {"--replicaof", "127.0.0.1", port, NULL};
    rs_start(&replica, extra);
    bl_config c = quick_cfg(replica.port);
    bl_manager *a = mk_manager(T, replica.port, &c);
    rec once = acq(a, "ro", 0, 0), waiting = acq(a, "ro", 2000, 0);
    cr_assert_eq(once.status, BL_EREDIS, "%s", bl_status_name(once.status));
    cr_assert(strstr(once.errmsg, "READONLY"), "message: %s", once.errmsg);
    cr_assert_eq(waiting.status, BL_EREDIS, "a refusal is not worth waiting for");
    cr_assert(strstr(waiting.errmsg, "READONLY"), "message: %s", waiting.errmsg);
    /* Reads still work there. */
    hrec h = {0};
    cr_assert_eq(bl_health_check(a, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 5000));
    cr_assert_eq(h.status, BL_OK);
    /* Promoted, it takes locks. */
    freeReplyObject(rs_cmd(&replica, "REPLICAOF NO ONE"));
    rec ok = acq(a, "ro", 0, 0);
    cr_assert_eq(ok.status, BL_OK, "%s", ok.errmsg);
    cr_assert_eq(rel(ok.lock), BL_OK);
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert_eq(st.redis_errors, 2);
    assert_counters(a);
    close_manager(T, a);
    assert_no_leaks();
    rs_stop(&replica);
    rs_stop(&master);
}

Test(server_faults, maxmemory_reached_gives_the_oom_message_and_recovers)
{
    bl_config c = quick_cfg(srv.port);
    bl_manager *a = mk_manager(T, srv.port, &c);
    rec lost = {0}, held = acq_renewed(a, "kept", 300, &lost);
    cr_assert_eq(held.status, BL_OK);
    freeReplyObject(rs_cmd(&srv, "CONFIG SET maxmemory-policy noeviction"));
    freeReplyObject(rs_cmd(&srv, "CONFIG SET maxmemory 1"));
    rec r = acq(a, "full", 0, 0);
    cr_assert_eq(r.status, BL_EREDIS, "%s", bl_status_name(r.status));
    cr_assert(strstr(r.errmsg, "OOM"), "the server's message: %s", r.errmsg);
    r = acq(a, "full", 1000, 0);
    cr_assert_eq(r.status, BL_EREDIS);
    /* Renewing (PEXPIRE) and releasing (DEL) free memory: they still run. */
    tl_run_for(T, 400);
    cr_assert_eq(lost.n, 0, "the held lock is still renewed");
    cr_assert_eq(rel(held.lock), BL_OK);
    freeReplyObject(rs_cmd(&srv, "CONFIG SET maxmemory 0"));
    r = acq(a, "full", 0, 0);
    cr_assert_eq(r.status, BL_OK, "recovered: %s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    assert_counters(a);
    close_manager(T, a);
    assert_no_leaks();
}

Test(server_faults, a_key_of_the_wrong_type_at_a_locks_name)
{
    bl_config c = quick_cfg(srv.port);
    bl_manager *a = mk_manager(T, srv.port, &c);
    freeReplyObject(rs_cmd(&srv, "RPUSH bid_lock:ebay:list x"));
    rec r = acq(a, "list", 0, 0);
    cr_assert_eq(r.status, BL_EREDIS, "%s", bl_status_name(r.status));
    cr_assert(strstr(r.errmsg, "WRONGTYPE"), "acquire: %s", r.errmsg);
    r = acq(a, "list", 1000, 0);
    cr_assert_eq(r.status, BL_EREDIS, "no waiting on a foreign key");
    irec i = {0};
    cr_assert_eq(bl_inspect(a, "ebay", "list", on_inspect, &i), BL_OK);
    cr_assert(tl_wait(T, &i.n, 1, 5000));
    cr_assert_eq(i.status, BL_EREDIS, "inspect: %s", bl_status_name(i.status));
    cr_assert(strstr(i.errmsg, "WRONGTYPE"), "inspect: %s", i.errmsg);
    cr_assert_eq(rs_int(&srv, "LLEN bid_lock:ebay:list"), 1, "the foreign key is untouched");

    /* Renewals that meet a foreign key end in on_lost once the lease ran out. */
    rec lost = {0}, held = acq_renewed(a, "swap", 300, &lost);
    freeReplyObject(rs_cmd(&srv, "DEL bid_lock:ebay:swap"));
    freeReplyObject(rs_cmd(&srv, "SADD bid_lock:ebay:swap x"));
    cr_assert(tl_wait(T, &lost.n, 1, 3000), "on_lost was called");
    cr_assert_eq(lost.status, BL_ELOST);
    tl_run_for(T, 300);
    cr_assert_eq(lost.n, 1, "once");
    rec rr = {0};
    cr_assert_eq(bl_release_done(held.lock, on_rel, &rr), BL_OK);
    cr_assert(tl_wait(T, &rr.n, 1, 5000));
    cr_assert_eq(rr.status, BL_EREDIS, "release_done: %s", bl_status_name(rr.status));
    cr_assert(strstr(rr.errmsg, "WRONGTYPE"), "release_done: %s", rr.errmsg);
    cr_assert_eq(rs_int(&srv, "SCARD bid_lock:ebay:swap"), 1);
    bl_stats st;
    bl_manager_stats(a, &st);
    cr_assert_eq(st.lost, 1);
    assert_counters(a);
    close_manager(T, a);
    assert_no_leaks();
}

/* Try once every 50 ms for up to 10 s. */
static rec acq_until_ok(bl_manager *m, const char *posting)
{
    rec r;
    uint64_t end = mono_ms() + 10000;
    do {
        tl_run_for(T, 50);
        r = acq(m, posting, 0, 0);
    } while (r.status != BL_OK && mono_ms() < end);
    return r;
}

Test(server_faults, a_password_change_on_the_server_is_survived)
{
    static const char *const pw[] = {"--requirepass", "old-pw", NULL};
    redis_srv s;
    rs_start(&s, pw);
    snprintf(s.password, sizeof s.password, "old-pw");
    bl_config c = quick_cfg(s.port);
    c.password = "new-pw";
    bl_manager *a = mk_manager(T, s.port, &c);
    tl_run_for(T, 200);
    rec r = acq(a, "pw", 0, 0);
    cr_assert_eq(r.status, BL_ECONN, "%s", bl_status_name(r.status));
    cr_assert(strstr(r.errmsg, "WRONGPASS") || strstr(r.errmsg, "AUTH"), "%s", r.errmsg);
    /* The operator rotates the password: the manager's retries get in. */
    freeReplyObject(rs_cmd(&s, "CONFIG SET requirepass new-pw"));
    snprintf(s.password, sizeof s.password, "new-pw");
    r = acq_until_ok(a, "pw");
    cr_assert_eq(r.status, BL_OK, "recovered: %s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    /* A server that starts asking for a password: connections made before
     * keep working, a reconnect meets NOAUTH, and it is back once the server
     * no longer asks. */
    freeReplyObject(rs_cmd(&s, "CONFIG SET requirepass %s", ""));
    s.password[0] = '\0';
    bl_config none = quick_cfg(s.port);
    bl_manager *b = mk_manager(T, s.port, &none);
    r = acq(b, "pw2", 0, 0);
    cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    freeReplyObject(rs_cmd(&s, "CONFIG SET requirepass %s", "other-pw"));
    snprintf(s.password, sizeof s.password, "other-pw");
    cr_assert(rs_int(&s, "CLIENT KILL TYPE normal") >= 1);
    tl_run_for(T, 200);
    r = acq(b, "pw2", 0, 0);
    cr_assert_eq(r.status, BL_EREDIS, "%s", bl_status_name(r.status));
    cr_assert(strstr(r.errmsg, "NOAUTH") || strstr(r.errmsg, "unauthenticated"), "%s", r.errmsg);
    freeReplyObject(rs_cmd(&s, "CONFIG SET requirepass %s", ""));
    s.password[0] = '\0';
    r = acq_until_ok(b, "pw2"); /* the server may drop the connection meanwhile */
    cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
    cr_assert_eq(rel(r.lock), BL_OK);
    assert_counters(a);
    assert_counters(b);
    close_manager(T, a);
    close_manager(T, b);
    assert_no_leaks();
    rs_stop(&s);
}

