/* Beyond polling: wake-ups, fair hand-off, fencing tokens, done markers,
 * lease auto-extension - and the operations API (health, inspect, cleanup,
 * metrics) - against a real redis-server. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"
#include "keyspace.h"

TestSuite(features, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 60);

static bl_manager *slow_backoff_manager(uint32_t backoff_ms)
{
    bl_config c;
    bl_config_init(&c);
    c.backoff_initial_ms = backoff_ms;
    c.backoff_max_ms = backoff_ms;
    return mk_manager(T, srv.port, &c);
}

/* ---- wake-ups and hand-off ------------------------------------------------- */

Test(features, a_waiter_wakes_on_release_without_waiting_for_its_backoff)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    bl_manager *b = slow_backoff_manager(5000); /* pauses of 2.5 .. 5 s */
    rec ra = acq(a, "wake", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    rec rb = {0};
    acq_start(b, "wake", 20000, 0, &rb);
    cr_assert(wait_queued(&srv, b, "wake", 5000), "b waits, its timer far away");
    cr_assert_eq(rb.n, 0);
    bl_stats waiting;
    bl_manager_stats(b, &waiting);
    uint64_t t0 = mono_ms();
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &rb.n, 1, 10000));
    cr_assert_eq(rb.status, BL_OK);
    uint64_t handoff = rb.at - t0;
    cr_log_info("hand-off after release: %llu ms", (unsigned long long)handoff);
    cr_assert(handoff < 1000, "woken by the release, not by a >= 2.5 s timer (%llu ms)",
              (unsigned long long)handoff);
    bl_stats s;
    bl_manager_stats(a, &s);
    cr_assert_eq(s.handoffs, 1, "the release handed it to the queued waiter");
    bl_manager_stats(b, &s);
    /* Woken by the release's message - or, on a slow machine (seen under
     * valgrind), its retry after the subscription was confirmed was still
     * out and found the lock reserved for it: no wake-up counted then, and
     * no poll either, which is what the attempt count pins. */
    cr_log_info("wake-ups while waiting: %llu",
                (unsigned long long)(s.wakeups - waiting.wakeups));
    cr_assert(s.attempts <= 4, "no polling: %llu attempts", (unsigned long long)s.attempts);
    close_manager(T, a);
    close_manager(T, b);
}

Test(features, a_lost_notification_falls_back_to_the_timer)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    bl_config c;
    bl_config_init(&c);
    c.backoff_initial_ms = c.backoff_max_ms = 2000;
    c.reconnect_initial_ms = 20000; /* the subscriber stays away: only the timer helps */
    bl_manager *b = mk_manager(T, srv.port, &c);
    rec ra = acq(a, "lost-note", 0, 0);
    rec rb = {0};
    acq_start(b, "lost-note", 20000, 0, &rb);
    cr_assert(wait_queued(&srv, b, "lost-note", 5000));
    bl_stats before;
    bl_manager_stats(b, &before);
    /* Cut the subscriber connection: the release's message is lost. */
    cr_assert(rs_int(&srv, "CLIENT KILL TYPE pubsub") >= 1);
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &rb.n, 1, 10000), "the backoff timer still retries");
    cr_assert_eq(rb.status, BL_OK);
    bl_stats s;
    bl_manager_stats(b, &s);
    cr_assert_eq(s.wakeups, before.wakeups, "no notification reached b");
    cr_assert(s.conflicts > before.conflicts || s.attempts > before.attempts);
    close_manager(T, a);
    close_manager(T, b);
}

Test(features, waiters_get_the_lock_in_arrival_order_not_the_releaser)
{
    bl_manager *m[3];
    for (int i = 0; i < 3; i++)
        m[i] = slow_backoff_manager(2000);
    rec first = acq(m[0], "fair", 0, 0);
    cr_assert_eq(first.status, BL_OK);
    rec w1 = {0}, w2 = {0}, again = {0};
    acq_start(m[1], "fair", 20000, 0, &w1);
    cr_assert(wait_queued(&srv, m[1], "fair", 5000), "the first waiter arrived");
    acq_start(m[2], "fair", 20000, 0, &w2);
    cr_assert(wait_queued(&srv, m[2], "fair", 5000), "the second waiter arrived");
    /* The releaser asks again at once: it must queue behind the others. */
    cr_assert_eq(rel(first.lock), BL_OK);
    acq_start(m[0], "fair", 20000, 0, &again);
    cr_assert(tl_wait(T, &w1.n, 1, 5000));
    cr_assert_eq(w1.status, BL_OK, "longest waiter first");
    tl_run_for(T, 50);
    cr_assert_eq(w2.n + again.n, 0, "nobody else while it is held");
    cr_assert_eq(rel(w1.lock), BL_OK);
    cr_assert(tl_wait(T, &w2.n, 1, 5000));
    cr_assert_eq(w2.status, BL_OK, "second waiter next");
    cr_assert_eq(again.n, 0, "the releaser is last");
    cr_assert_eq(rel(w2.lock), BL_OK);
    cr_assert(tl_wait(T, &again.n, 1, 5000));
    cr_assert_eq(again.status, BL_OK);
    cr_assert(w1.token < w2.token && w2.token < again.token);
    cr_assert_eq(rel(again.lock), BL_OK);
    for (int i = 0; i < 3; i++)
        close_manager(T, m[i]);
}

/* ---- fencing tokens -------------------------------------------------------------- */

typedef struct looper {
    bl_manager *m;
    int *left, *done_flag;
    uint64_t *tokens;
    int *ntok;
    int bad;
} looper;

static void loop_acquired(bl_lock *lock, int status, void *data);

static void loop_next(looper *l)
{
    if (*l->left <= 0) {
        (*l->done_flag)++;
        return;
    }
    (*l->left)--;
    bl_acquire_opts o = acq_opts(20000, 0);
    if (bl_acquire(l->m, "ebay", "tokens", &o, loop_acquired, l, NULL) != BL_OK)
        l->bad++;
}

static void loop_released(bl_lock *lock, int status, void *data)
{
    (void)lock;
    looper *l = data;
    if (status != BL_OK)
        l->bad++;
    loop_next(l);
}

static void loop_acquired(bl_lock *lock, int status, void *data)
{
    looper *l = data;
    if (status != BL_OK) {
        l->bad++;
        (*l->left)++;
        loop_next(l);
        return;
    }
    l->tokens[(*l->ntok)++] = bl_lock_token(lock);
    bl_release(lock, loop_released, l);
}

Test(features, tokens_strictly_increase_across_a_thousand_acquisitions_by_several_managers)
{
    enum { MGRS = 4, TOTAL = 1000 };
    static uint64_t tokens[TOTAL + MGRS];
    int left = TOTAL, finished = 0, ntok = 0;
    looper l[MGRS];
    bl_config c;
    bl_config_init(&c);
    c.backoff_initial_ms = 2;
    c.backoff_max_ms = 20;
    for (int i = 0; i < MGRS; i++) {
        l[i] = (looper){mk_manager(T, srv.port, &c), &left, &finished, tokens, &ntok, 0};
        loop_next(&l[i]);
    }
    cr_assert(tl_wait(T, &finished, MGRS, 50000), "only %d of %d done", ntok, TOTAL);
    cr_assert_eq(ntok, TOTAL);
    for (int i = 0; i < MGRS; i++)
        cr_assert_eq(l[i].bad, 0);
    for (int i = 1; i < TOTAL; i++)
        cr_assert(tokens[i] > tokens[i - 1], "token %d: %llu after %llu", i,
                  (unsigned long long)tokens[i], (unsigned long long)tokens[i - 1]);
    for (int i = 0; i < MGRS; i++)
        close_manager(T, l[i].m);
}

Test(features, tokens_increase_across_ttl_expiry_and_fence_key_loss)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    rec r1 = acq(a, "expiry", 0, 100);
    cr_assert_eq(r1.status, BL_OK);
    cr_assert(r1.token > 0);
    cr_assert(wait_gone(&srv, "bid_lock:ebay:expiry", 10000), "expired without release");
    rec r2 = acq(a, "expiry", 0, 0);
    cr_assert_eq(r2.status, BL_OK);
    cr_assert(r2.token > r1.token);
    cr_assert_eq(rel(r2.lock), BL_OK);
    /* Even with the counter key gone (evicted, expired), tokens go up. */
    freeReplyObject(rs_cmd(&srv, "DEL {bid_lock:ebay:expiry}:fence"));
    rec r3 = acq(a, "expiry", 0, 0);
    cr_assert_eq(r3.status, BL_OK);
    cr_assert(r3.token > r2.token, "%llu after %llu", (unsigned long long)r3.token,
              (unsigned long long)r2.token);
    close_manager(T, a);
}

Test(features, a_holder_not_renewed_gets_not_held_and_an_older_token)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "stale", 0, 200); /* no auto-extend */
    cr_assert_eq(ra.status, BL_OK);
    /* Until the server's clock says the lease is over: a fixed sleep on
     * ours guesses that, and a busy machine made it guess wrong. */
    cr_assert(wait_gone(&srv, "bid_lock:ebay:stale", 10000), "the lease ran out");
    rec rb = acq(b, "stale", 0, 0);
    cr_assert_eq(rb.status, BL_OK);
    cr_assert_eq(rel(ra.lock), BL_ENOTHELD);
    cr_assert(ra.token < rb.token, "the bid store can reject the stale holder");
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:stale"), 1, "b's lock is untouched");
    close_manager(T, a);
    close_manager(T, b);
}

/* ---- done markers ---------------------------------------------------------------- */

Test(features, a_done_posting_is_never_acquired_again_by_any_manager)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    bl_manager *b = slow_backoff_manager(5000); /* only the release's message is quick */
    rec ra = acq(a, "sold", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    /* b waits while a bids; a's release marks it done; b learns at once. */
    rec rb = {0};
    acq_start(b, "sold", 20000, 0, &rb);
    cr_assert(wait_queued(&srv, b, "sold", 5000));
    uint64_t t0 = mono_ms();
    cr_assert_eq(rel_done(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &rb.n, 1, 10000));
    cr_assert_eq(rb.status, BL_EDONE, "got %s", bl_status_name(rb.status));
    cr_assert(rb.at - t0 < 2000);
    cr_assert_eq(acq(a, "sold", 0, 0).status, BL_EDONE);
    cr_assert_eq(acq(b, "sold", 5000, 0).status, BL_EDONE);
    bl_manager *c = mk_manager(T, srv.port, NULL);
    cr_assert_eq(acq(c, "sold", 0, 0).status, BL_EDONE);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:sold"), 0, "no lock taken");
    long long pttl = rs_int(&srv, "PTTL {bid_lock:ebay:sold}:done");
    cr_assert(pttl > 6LL * 24 * 3600 * 1000, "done marker has its own long TTL (%lld)", pttl);
    bl_stats s;
    bl_manager_stats(b, &s);
    cr_assert_eq(s.done, 2);
    cr_assert_eq(acq(a, "other", 0, 0).status, BL_OK, "other postings unaffected");
    close_manager(T, a);
    close_manager(T, b);
    close_manager(T, c);
}

Test(features, only_the_holder_can_mark_done)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "mark", 0, 150);
    cr_assert_eq(ra.status, BL_OK);
    cr_assert(wait_gone(&srv, "bid_lock:ebay:mark", 10000), "a's lease ran out");
    rec rb = acq(b, "mark", 0, 0);
    cr_assert_eq(rb.status, BL_OK);
    cr_assert_eq(rel_done(ra.lock), BL_ENOTHELD);
    cr_assert_eq(rs_exists(&srv, "{bid_lock:ebay:mark}:done"), 0);
    close_manager(T, a);
    close_manager(T, b);
}

/* ---- lease auto-extension ----------------------------------------------------------- */

Test(features, auto_extension_keeps_a_lock_alive_for_ten_times_its_ttl)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    rec lost = {0}, ra = acq_renewed(a, "long", 200, &lost);
    cr_assert_eq(ra.status, BL_OK);
    uint64_t end = mono_ms() + 2000;
    while (mono_ms() < end) {
        tl_run_for(T, 150);
        cr_assert_eq(acq(b, "long", 0, 0).status, BL_EBUSY, "still held");
    }
    cr_assert_eq(lost.n, 0);
    bl_stats s;
    bl_manager_stats(a, &s);
    cr_assert(s.extends >= 8, "renewed %llu times", (unsigned long long)s.extends);
    cr_assert_eq(rel(ra.lock), BL_OK);
    tl_run_for(T, 300);
    cr_assert_eq(lost.n, 0, "no renewal after release");
    close_manager(T, a);
    close_manager(T, b);
}

Test(features, a_refused_renewal_calls_on_lost_once_and_stops)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    rec lost = {0}, ra = acq_renewed(a, "stolen", 300, &lost);
    freeReplyObject(rs_cmd(&srv, "SET bid_lock:ebay:stolen thief PX 10000"));
    cr_assert(tl_wait(T, &lost.n, 1, 3000), "on_lost was called");
    cr_assert_eq(lost.status, BL_ELOST);
    tl_run_for(T, 400);
    cr_assert_eq(lost.n, 1, "exactly once");
    redisReply *v = rs_cmd(&srv, "GET bid_lock:ebay:stolen");
    cr_assert_str_eq(v->str, "thief", "nothing renewed or deleted");
    freeReplyObject(v);
    cr_assert_eq(rel(ra.lock), BL_ENOTHELD);
    bl_stats s;
    bl_manager_stats(a, &s);
    cr_assert_eq(s.lost, 1);
    close_manager(T, a);
}

/* ---- operations: health, inspect, cleanup, metrics ---------------------------------- */

Test(features, health_check_measures_ping_and_reports_the_state)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    hrec h = {0};
    cr_assert_eq(bl_health_check(a, on_health, &h), BL_OK);
    cr_assert_eq(h.n, 0);
    cr_assert(tl_wait(T, &h.n, 1, 5000));
    cr_assert_eq(h.status, BL_OK);
    cr_assert_eq(h.state, BL_CONN_UP);
    cr_assert(h.latency_ms >= 0 && h.latency_ms < 5000);
    cr_assert_str_eq(h.backend, "redis");
    close_manager(T, a);

    bl_config slow;
    bl_config_init(&slow);
    slow.reconnect_initial_ms = 20000; /* stays DOWN, also when slowed (valgrind) */
    bl_manager *down = mk_manager(T, unused_port(), &slow);
    tl_run_for(T, 50);
    h = (hrec){0};
    cr_assert_eq(bl_health_check(down, on_health, &h), BL_OK);
    cr_assert_eq(h.n, 0, "never from inside the call");
    cr_assert(tl_wait(T, &h.n, 1, 5000));
    cr_assert_eq(h.status, BL_ECONN);
    cr_assert_eq(h.state, BL_CONN_DOWN);
    close_manager(T, down);
}

Test(features, inspect_reports_holder_ttl_done_and_token)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    irec i = inspect(b, "look");
    cr_assert_eq(i.held, 0);
    cr_assert_eq(i.pttl, -1);
    cr_assert_str_eq(i.holder, "(null)");
    rec ra = acq(a, "look", 0, 60000);
    i = inspect(b, "look");
    cr_assert_eq(i.held, 1);
    cr_assert_str_eq(i.holder, bl_manager_holder(a));
    cr_assert(i.pttl > 50000 && i.pttl <= 60000);
    cr_assert_eq(i.token, ra.token);
    cr_assert_eq(i.done, 0);
    cr_assert_eq(rel_done(ra.lock), BL_OK);
    i = inspect(b, "look");
    cr_assert_eq(i.held, 0);
    cr_assert_eq(i.done, 1);
    cr_assert_eq(bl_inspect(b, "a:b", "x", on_inspect, &i), BL_EINVAL);
    close_manager(T, a);
    close_manager(T, b);
}

Test(features, cleanup_removes_only_locks_under_the_prefix)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    char id[16];
    for (int i = 0; i < 30; i++) {
        snprintf(id, sizeof id, "a%d", i);
        cr_assert_eq(acq(a, id, 0, 0).status, BL_OK);
        snprintf(id, sizeof id, "b%d", i);
        cr_assert_eq(acq(b, id, 0, 0).status, BL_OK);
    }
    const char *outside[] = {"other:ebay:x", "bid_lockX:ebay:y", "bid_lock", "bid_lock:noposting",
                             "BID_LOCK:ebay:z", "bid_lock:ebay:"};
    for (size_t i = 0; i < sizeof outside / sizeof outside[0]; i++)
        freeReplyObject(rs_cmd(&srv, "SET %s keep", outside[i]));
    crec c = {0};
    cr_assert_eq(bl_cleanup(a, 1, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 10000));
    cr_assert_eq(c.status, BL_OK);
    cr_assert_eq(c.removed, 30, "only a's own locks");
    cr_assert_eq(rs_lock_count(&srv), 30 + 2 /* bid_lock:noposting, bid_lock:ebay: */);
    c = (crec){0};
    cr_assert_eq(bl_cleanup(a, 0, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 10000));
    cr_assert_eq(c.removed, 30);
    for (size_t i = 0; i < sizeof outside / sizeof outside[0]; i++)
        cr_assert_eq(rs_exists(&srv, outside[i]), 1, "%s untouched", outside[i]);
    cr_assert(rs_exists(&srv, "{bid_lock:ebay:a0}:fence"), "fencing counters stay");
    close_manager(T, a);
    close_manager(T, b);
}

Test(features, prometheus_text_parses_and_counts_match)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    rec r = acq(a, "prom", 0, 0);
    cr_assert_eq(rel(r.lock), BL_OK);
    cr_assert_eq(acq(a, "prom", 0, 0).status, BL_OK);
    bl_metrics mt;
    bl_manager_metrics(a, &mt);
    cr_assert_eq(mt.acquire_ms.count, 2);
    cr_assert_eq(mt.release_ms.count, 1);
    /* snprintf's contract: the text's length without the NUL; a text that
     * fits exactly (len = n + 1) is whole, len = n is cut (ret >= len). */
    size_t need = bl_metrics_prometheus(&mt, NULL, 0);
    char *buf = malloc(need + 1);
    cr_assert_eq(bl_metrics_prometheus(&mt, buf, need + 1), need);
    cr_assert_eq(strlen(buf), need, "exact fit: whole and terminated");
    cr_assert_eq(bl_metrics_prometheus(&mt, buf, need), need, "one byte short: reports n");
    cr_assert_eq(strlen(buf), need - 1, "...and is cut, terminated");
    cr_assert_eq(bl_metrics_prometheus(&mt, buf, need + 1), need);
    char small[64];
    cr_assert_eq(bl_metrics_prometheus(&mt, small, sizeof small), need, "reports what it needs");
    cr_assert_eq(strlen(small), sizeof small - 1, "truncated, terminated");
    /* Every sample line: name{labels} value, with HELP and TYPE before it. */
    int samples = 0, acquired_seen = 0;
    char *save, *line = strtok_r(buf, "\n", &save);
    char typed[128] = "";
    for (; line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# HELP bidlock_", 15) == 0)
            continue;
        if (strncmp(line, "# TYPE bidlock_", 15) == 0) {
            sscanf(line + 7, "%127s", typed);
            continue;
        }
        char name[128], value[64];
        cr_assert_eq(sscanf(line, "%127s %63s", name, value), 2, "line: %s", line);
        cr_assert(strncmp(name, "bidlock_", 8) == 0, "name: %s", name);
        cr_assert(strncmp(name, typed, strlen(typed)) == 0, "%s has no TYPE line", name);
        char *end;
        strtod(value, &end);
        cr_assert_eq(*end, '\0', "value: %s", value);
        for (char *p = name; *p && *p != '{'; p++)
            cr_assert(strchr("abcdefghijklmnopqrstuvwxyz_", *p), "name char in %s", name);
        samples++;
        if (strcmp(name, "bidlock_acquired_total") == 0)
            acquired_seen = atoi(value);
    }
    cr_assert(samples > 30);
    cr_assert_eq(acquired_seen, 2);
    free(buf);
    close_manager(T, a);
}

Test(features, tokens_never_go_back_even_if_the_server_clock_does)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    /* A token from "the future" (a clock that stepped back since). */
    freeReplyObject(rs_cmd(&srv, "SET {bid_lock:ebay:clock}:fence 8000000000000000"));
    rec r = acq(a, "clock", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    cr_assert_eq(r.token, 8000000000000001ULL, "token %llu", (unsigned long long)r.token);
    cr_assert_eq(rel(r.lock), BL_OK);
    r = acq(a, "clock", 0, 0);
    cr_assert_eq(r.token, 8000000000000002ULL);
    redisReply *v = rs_cmd(&srv, "GET {bid_lock:ebay:clock}:fence");
    cr_assert_str_eq(v->str, "8000000000000002");
    freeReplyObject(v);
    close_manager(T, a);
}

Test(features, a_request_cancelled_mid_attempt_leaves_the_servers_queue)
{
    bl_config c;
    bl_config_init(&c);
    c.handoff_ms = 2000; /* a stale entry would stall the next waiter 2 s */
    c.backoff_initial_ms = c.backoff_max_ms = 5000;
    bl_manager *a = mk_manager(T, srv.port, &c), *b = mk_manager(T, srv.port, &c),
               *w = mk_manager(T, srv.port, &c);
    rec ra = acq(a, "gone", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    rec rb = {0}, rw = {0};
    bl_lock *lb;
    bl_acquire_opts o = acq_opts(20000, 0);
    cr_assert_eq(bl_acquire(b, "ebay", "gone", &o, on_acq, &rb, &lb), BL_OK);
    cr_assert_eq(bl_cancel(lb), BL_OK); /* its first attempt is on the wire */
    cr_assert(tl_wait(T, &rb.n, 1, 2000));
    cr_assert_eq(rb.status, BL_ECANCELED);
    /* The attempt still ran on the server and queued b there; its answer
     * makes b take itself out again. */
    cr_assert(wait_answered(b, 10000), "b's attempt was answered");
    cr_assert(wait_gone(&srv, "{bid_lock:ebay:gone}:q", 10000), "b left the queue");
    acq_start(w, "gone", 20000, 0, &rw);
    cr_assert(wait_queued(&srv, w, "gone", 5000), "w waits, its timer 2.5 s away");
    uint64_t t0 = mono_ms();
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &rw.n, 1, 10000));
    cr_assert_eq(rw.status, BL_OK);
    cr_assert(rw.at - t0 < 1000, "handed straight to the live waiter (%llu ms)",
              (unsigned long long)(rw.at - t0));
    close_manager(T, a);
    close_manager(T, b);
    close_manager(T, w);
}

/* ---- the key layout, and the 0.1 layout still honoured --------------------------- */

Test(features, every_name_of_a_lock_is_tagged_with_its_lock_key)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "tag", 0, 0);
    cr_assert_eq(ra.status, BL_OK);
    rec rb = {0};
    acq_start(b, "tag", 20000, 0, &rb);
    cr_assert(wait_queued(&srv, b, "tag", 5000), "b waits in {bid_lock:ebay:tag}:q");
    cr_assert(rs_exists(&srv, "{bid_lock:ebay:tag}:fence"));
    char ch[512];
    snprintf(ch, sizeof ch, "{bid_lock:ebay:tag}|%s", bl_manager_holder(b));
    cr_assert_eq(rs_subscribers(&srv, ch), 1, "b listens on %s", ch);
    cr_assert_eq(rel_done(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &rb.n, 1, 10000));
    cr_assert_eq(rb.status, BL_EDONE);
    cr_assert(rs_exists(&srv, "{bid_lock:ebay:tag}:done"));
    /* Nothing else: the lock, its three tagged keys and (for clients of the
     * old layout still running) the old done marker. */
    redisReply *k = rs_cmd(&srv, "KEYS *tag*");
    cr_assert_eq(k->type, REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < k->elements; i++)
        cr_assert(strncmp(k->element[i]->str, "{bid_lock:ebay:tag}:", 20) == 0 ||
                      strcmp(k->element[i]->str, "bid_lock::done:ebay:tag") == 0,
                  "unexpected key %s", k->element[i]->str);
    freeReplyObject(k);
    close_manager(T, a);
    close_manager(T, b);
}

Test(features, a_posting_marked_done_under_the_old_layout_is_never_acquired)
{
    /* What a client before 0.2 left behind: "P::done:M:X". */
    freeReplyObject(rs_cmd(&srv, "SET bid_lock::done:ebay:olddone someone PX 600000"));
    bl_manager *a = mk_manager(T, srv.port, NULL);
    cr_assert_eq(acq(a, "olddone", 0, 0).status, BL_EDONE);
    cr_assert_eq(acq(a, "olddone", 2000, 0).status, BL_EDONE);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:olddone"), 0, "no lock taken");
    irec i = inspect(a, "olddone");
    cr_assert_eq(i.done, 1, "inspect sees the old marker too");
    /* And a posting marked done now is done for a client of the old layout. */
    rec r = acq(a, "newdone", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    cr_assert_eq(rel_done(r.lock), BL_OK);
    cr_assert(rs_exists(&srv, "{bid_lock:ebay:newdone}:done"));
    long long pttl = rs_int(&srv, "PTTL bid_lock::done:ebay:newdone");
    cr_assert(pttl > 6LL * 24 * 3600 * 1000, "old marker written too, same TTL (%lld)", pttl);
    close_manager(T, a);
}

Test(features, tokens_keep_increasing_from_the_old_layouts_counter)
{
    /* The old counter is ahead of the server clock (a token floor the new
     * counter, which does not exist yet, must not fall below). */
    freeReplyObject(rs_cmd(&srv, "SET bid_lock::fence:ebay:oldfence 8000000000000000"));
    bl_manager *a = mk_manager(T, srv.port, NULL);
    rec r = acq(a, "oldfence", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    cr_assert_eq(r.token, 8000000000000001ULL, "token %llu", (unsigned long long)r.token);
    cr_assert_eq(rel(r.lock), BL_OK);
    rec r2 = acq(a, "oldfence", 0, 0);
    cr_assert_eq(r2.token, 8000000000000002ULL, "the new counter goes on from there");
    cr_assert_eq(rel(r2.lock), BL_OK);
    /* The usual case: the old counter holds a token from the past (its
     * server time); the new counter starts from the server-time floor,
     * above it. */
    freeReplyObject(rs_cmd(&srv, "SET bid_lock::fence:ebay:oldpast 1000"));
    rec r3 = acq(a, "oldpast", 0, 0);
    cr_assert_eq(r3.status, BL_OK);
    cr_assert(r3.token > 1000);
    irec i = inspect(a, "oldpast");
    cr_assert_eq(i.token, r3.token);
    cr_assert_eq(rel(r3.lock), BL_OK);
    close_manager(T, a);
}

Test(features, cleanup_also_removes_the_old_layouts_wait_queues)
{
    freeReplyObject(rs_cmd(&srv, "ZADD bid_lock::q:ebay:oldq 1 someone"));
    freeReplyObject(rs_cmd(&srv, "SET bid_lock::done:ebay:oldq someone"));
    freeReplyObject(rs_cmd(&srv, "SET bid_lock::fence:ebay:oldq 5"));
    bl_manager *a = mk_manager(T, srv.port, NULL);
    cr_assert_eq(acq(a, "held", 0, 0).status, BL_OK);
    crec c = {0};
    cr_assert_eq(bl_cleanup(a, 1, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 10000));
    cr_assert_eq(c.removed, 1);
    cr_assert_eq(rs_exists(&srv, "bid_lock::q:ebay:oldq"), 1, "mine_only leaves queues alone");
    c = (crec){0};
    cr_assert_eq(acq(a, "held", 0, 0).status, BL_OK);
    cr_assert_eq(bl_cleanup(a, 0, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 10000));
    cr_assert_eq(c.status, BL_OK);
    cr_assert_eq(c.removed, 1, "counts locks only");
    cr_assert_eq(rs_exists(&srv, "bid_lock::q:ebay:oldq"), 0, "the old queue is gone");
    cr_assert_eq(rs_exists(&srv, "bid_lock::done:ebay:oldq"), 1, "done markers stay");
    cr_assert_eq(rs_exists(&srv, "bid_lock::fence:ebay:oldq"), 1, "fencing counters stay");
    close_manager(T, a);
}

Test(features, our_slots_are_the_ones_a_cluster_node_computes)
{
    /* CLUSTER KEYSLOT answers on a cluster-enabled node with no slots yet. */
    static const char *const extra[] = {"--cluster-enabled", "yes", "--cluster-config-file",
                                        "nodes.conf", NULL};
    redis_srv node = {0};
    rs_start(&node, extra);
    redisContext *c = rs_connect(&node);
    char id[32];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, i % 2 ? "p%d" : "%d{x", i * 7919);
        bl_keys *k = bl_keys_new("bid_lock", i % 3 ? "ebay" : "m{", id);
        cr_assert(k);
        for (int n = 0; n < BL_KEY_COUNT; n++) {
            redisReply *r = redisCommand(c, "CLUSTER KEYSLOT %b", k->k[n], k->len[n]);
            cr_assert(r && r->type == REDIS_REPLY_INTEGER, "CLUSTER KEYSLOT %s", k->k[n]);
            cr_assert_eq((unsigned)r->integer, bl_key_slot(k->k[n], k->len[n]), "%s", k->k[n]);
            if (n <= BL_KEY_DONE)
                cr_assert_eq((unsigned)r->integer,
                             bl_key_slot(k->k[BL_KEY_LOCK], k->len[BL_KEY_LOCK]),
                             "%s is in its lock's slot", k->k[n]);
            freeReplyObject(r);
        }
        free(k);
    }
    redisFree(c);
    rs_stop(&node);
}

/* ---- acquires without fencing tokens or done markers (bl_config) ----------- */

static bl_manager *lean_manager(int fencing, int done)
{
    bl_config c;
    bl_config_init(&c);
    c.fencing_tokens = fencing;
    c.done_markers = done;
    return mk_manager(T, srv.port, &c);
}

Test(features, without_tokens_and_done_markers_a_free_acquire_is_one_set)
{
    bl_manager *m = lean_manager(0, 0);
    cr_assert_eq(acq(m, "warm", 0, 0).status, BL_OK); /* connected, scripts loaded */
    long long ev0 = rs_calls(&srv, "evalsha") + rs_calls(&srv, "eval");
    long long set0 = rs_calls(&srv, "set");
    enum { N = 20 };
    for (int i = 0; i < N; i++) {
        char posting[16];
        snprintf(posting, sizeof posting, "lean-%d", i);
        rec r = acq(m, posting, 1000, 0);
        cr_assert_eq(r.status, BL_OK, "%s: %s", posting, r.errmsg);
        cr_assert_eq(r.token, 0, "no fencing token");
        cr_assert_eq(rel(r.lock), BL_OK);
    }
    long long scripts = rs_calls(&srv, "evalsha") + rs_calls(&srv, "eval") - ev0;
    cr_assert_eq(scripts, N, "one script per cycle (the release), not %lld", scripts);
    cr_assert_geq(rs_calls(&srv, "set") - set0, N, "the acquires were SETs");
    cr_assert_eq(rs_exists(&srv, "{bid_lock:ebay:lean-0}:fence"), 0, "no fence counter");

    /* Taken: try-once is EBUSY; a waiter queues and is handed the lock. */
    bl_manager *b = lean_manager(0, 0);
    rec held = acq(m, "shared", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    rec busy = acq(b, "shared", 0, 0);
    cr_assert_eq(busy.status, BL_EBUSY, "got %s", bl_status_name(busy.status));
    rec w = {0};
    acq_start(b, "shared", 20000, 0, &w);
    cr_assert(wait_queued(&srv, b, "shared", 5000), "the waiter joined the queue");
    cr_assert_eq(rel(held.lock), BL_OK);
    cr_assert(tl_wait(T, &w.n, 1, 15000));
    cr_assert_eq(w.status, BL_OK, "got %s", bl_status_name(w.status));
    bl_stats s;
    bl_manager_stats(m, &s);
    cr_assert_eq(s.handoffs, 1, "handed to the waiter");
    /* Done markers are off: marking is refused, the lock stays held. */
    cr_assert_eq(bl_release_done(w.lock, on_rel, NULL), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(b), "done_markers"), "%s", bl_manager_errmsg(b));
    cr_assert_eq(rs_exists(&srv, "{bid_lock:ebay:shared}:done"), 0);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:shared"), 1, "still held");
    cr_assert_eq(rel(w.lock), BL_OK);
    close_manager(T, b);
    close_manager(T, m);
}

Test(features, a_manager_without_done_markers_takes_a_posting_marked_done)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    rec r = acq(a, "marked", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    cr_assert_eq(rel_done(r.lock), BL_OK);
    cr_assert_eq(acq(a, "marked", 0, 0).status, BL_EDONE, "the default honours it");
    /* Documented: done_markers 0 neither reads nor writes them. */
    bl_manager *lean = lean_manager(1, 0);
    rec t = acq(lean, "marked", 0, 0);
    cr_assert_eq(t.status, BL_OK, "got %s", bl_status_name(t.status));
    cr_assert_gt(t.token, 0, "tokens are still on");
    cr_assert_eq(rel(t.lock), BL_OK);
    close_manager(T, lean);
    close_manager(T, a);
}

Test(features, without_tokens_done_markers_still_hold_and_no_fence_is_kept)
{
    bl_manager *m = lean_manager(0, 1);
    bl_manager *d = mk_manager(T, srv.port, NULL);
    rec r = acq(m, "plain", 0, 0);
    cr_assert_eq(r.status, BL_OK, "%s", r.errmsg);
    cr_assert_eq(r.token, 0);
    cr_assert_eq(rs_exists(&srv, "{bid_lock:ebay:plain}:fence"), 0, "no fence counter");
    cr_assert_eq(rel_done(r.lock), BL_OK, "marking done works with tokens off");
    cr_assert_eq(acq(m, "plain", 0, 0).status, BL_EDONE);
    cr_assert_eq(acq(d, "plain", 0, 0).status, BL_EDONE, "and every manager sees it");
    bl_config c;
    bl_config_init(&c);
    c.fencing_tokens = 2;
    char why[160];
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "fencing_tokens"), "%s", why);
    bl_config_init(&c);
    c.done_markers = -1;
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strstr(why, "done_markers"), "%s", why);
    close_manager(T, d);
    close_manager(T, m);
}
