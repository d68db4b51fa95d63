/* Misuse: bidlock called wrongly - bad ids, TTLs and waits, calls in the
 * wrong state or after close, malformed URLs and configs - and called at an
 * awkward moment (a cancel while the answer is on its way). A refused call
 * returns a clear status and message, calls nothing back and sends nothing
 * to the server; test_engine.c has the basic bad ids and a double release. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"

TestSuite(misuse, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 90);

/* ==== bad input: a clear status and message, and nothing reaches the server ========= */

Test(misuse, bad_ids_ttls_and_waits_are_refused_before_the_server)
{
    bl_manager *m = mk_manager(T, srv.port, NULL);
    cr_assert(wait_up(m, 5000));
    /* The scripts are loaded once a PING sent behind the loads is answered. */
    hrec h = {0};
    cr_assert_eq(bl_health_check(m, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 5000) && h.status == BL_OK, "%s", h.errmsg);
    long long before = rs_calls(&srv, NULL);
    size_t big = 10u << 20; /* 10 MB */
    char *huge = malloc(big + 1);
    cr_assert(huge);
    memset(huge, 'x', big);
    huge[big] = '\0';
    rec r = {0};
    irec ir = {0};
    struct {
        const char *mp, *posting, *reason;
    } bad[] = {
        {huge, "p", "marketplace is longer than 256 bytes"},
        {"ebay", huge, "posting is longer than 256 bytes"},
        {NULL, NULL, "marketplace is NULL"},
        {"", "", "marketplace is empty"},
        {"eb:ay", "p", "marketplace contains ':'"},
        {"ebay\n", "p", "marketplace contains whitespace or a control character"},
        {"ebay", "p\r\nSET x y", "posting contains whitespace or a control character"},
        {"ebay", "p\t", "posting contains whitespace or a control character"},
        {"ebay", "\x7f", "posting contains whitespace or a control character"},
        {"eb}ay", "p", "marketplace contains '}', which would end the Redis Cluster hash tag "
                       "{<lock key>} of the lock's other keys early"},
        {"ebay", "{p}", "posting contains '}', which would end the Redis Cluster hash tag "
                        "{<lock key>} of the lock's other keys early"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(bl_acquire(m, bad[i].mp, bad[i].posting, NULL, on_acq, &r, NULL),
                     BL_EINVAL, "case %zu", i);
        cr_assert_str_eq(bl_manager_errmsg(m), bad[i].reason, "case %zu", i);
        cr_assert_eq(bl_inspect(m, bad[i].mp, bad[i].posting, on_inspect, &ir), BL_EINVAL,
                     "inspect, case %zu", i);
        cr_assert_str_eq(bl_manager_errmsg(m), bad[i].reason);
    }
    struct {
        int64_t wait, ttl;
        int auto_extend;
        const char *reason;
    } nums[] = {
        {0, -1, 0, "ttl_ms"},
        {0, INT64_MIN, 0, "ttl_ms"},
        {0, INT64_MAX, 0, "ttl_ms"},
        {0, 30LL * 24 * 3600 * 1000 + 1, 0, "ttl_ms"},
        {-2, 0, 0, "wait_ms"},
        {INT64_MIN, 0, 0, "wait_ms"},
        {INT64_MAX, 0, 0, "wait_ms"},
        {30LL * 24 * 3600 * 1000 + 1, 0, 0, "wait_ms"},
        {0, 2, 1, "auto_extend needs ttl_ms >= 3"},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        bl_acquire_opts o = acq_opts(nums[i].wait, nums[i].ttl);
        o.auto_extend = nums[i].auto_extend;
        cr_assert_eq(bl_acquire(m, "ebay", "p", &o, on_acq, &r, NULL), BL_EINVAL, "num %zu", i);
        cr_assert(strstr(bl_manager_errmsg(m), nums[i].reason), "num %zu: '%s'", i,
                  bl_manager_errmsg(m));
    }
    cr_assert_eq(bl_acquire(m, "ebay", "p", NULL, NULL, &r, NULL), BL_EINVAL);
    cr_assert_str_eq(bl_manager_errmsg(m), "callback is NULL");
    cr_assert_eq(bl_with_lock(m, "ebay", "p", NULL, NULL, NULL, &r), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(m), "NULL"));
    cr_assert_eq(bl_acquire(NULL, "ebay", "p", NULL, on_acq, &r, NULL), BL_EINVAL);
    cr_assert_eq(bl_health_check(m, NULL, NULL), BL_EINVAL);
    cr_assert_eq(bl_cleanup(m, 0, NULL, NULL), BL_EINVAL);
    cr_assert_eq(bl_section_end(NULL, 0), BL_EINVAL);
    cr_assert_eq(bl_release_done(NULL, NULL, NULL), BL_EINVAL);
    tl_run_for(T, 100);
    cr_assert_eq(r.n + ir.n, 0, "no callback for a refused call");
    cr_assert_eq(rs_calls(&srv, NULL), before, "a refused call reached the server");
    bl_stats st;
    bl_manager_stats(m, &st);
    cr_assert_eq(st.requests + st.attempts, 0);

    /* Accepted as they are: a posting may contain ':' (only the marketplace
     * may not: the key stays unambiguous), bytes >= 0x80 are fine (UTF-8),
     * the limits themselves are valid, and a C string ends at its first NUL:
     * "eb\0ay" IS "eb" - bidlock cannot see past it. */
    rec ok = acq_in(m, "ebay", "a:b", 0, 0);
    cr_assert_eq(ok.status, BL_OK);
    cr_assert_str_eq(bl_lock_key(ok.lock), "bid_lock:ebay:a:b");
    cr_assert_eq(rel(ok.lock), BL_OK);
    huge[256] = '\0';
    ok = acq_in(m, "\xc3\xa9""bay", huge, 0, 30LL * 24 * 3600 * 1000);
    cr_assert_eq(ok.status, BL_OK, "256 bytes, 30 days: %s", ok.errmsg);
    cr_assert_eq(rel(ok.lock), BL_OK);
    static const char cut[] = "eb\0ay";
    ok = acq_in(m, cut, "p", 0, 0);
    cr_assert_eq(ok.status, BL_OK);
    cr_assert_str_eq(bl_lock_key(ok.lock), "bid_lock:eb:p", "cut at the NUL");
    cr_assert_eq(rel(ok.lock), BL_OK);
    free(huge);
    assert_counters(m);
    close_manager(T, m);
    assert_no_leaks();
}

typedef struct sec_ctx {
    bl_lock *lock;
    rec done;
} sec_ctx;

static void sec_run(bl_lock *lock, void *data)
{
    ((sec_ctx *)data)->lock = lock;
}

static void sec_done(int status, int section_status, void *data)
{
    sec_ctx *c = data;
    (void)section_status;
    c->done.n++;
    c->done.status = status;
}

Test(misuse, calls_in_the_wrong_state_are_refused_with_a_reason)
{
    bl_config c = quick_cfg(srv.port);
    bl_manager *a = mk_manager(T, srv.port, &c), *b = mk_manager(T, srv.port, &c);
    rec held = acq(a, "busy", 0, 0);
    cr_assert_eq(held.status, BL_OK);

    /* Release of a lock still being acquired (waiting in b). */
    rec pending = {0};
    bl_lock *pl;
    bl_acquire_opts o = acq_opts(10000, 0);
    cr_assert_eq(bl_acquire(b, "ebay", "busy", &o, on_acq, &pending, &pl), BL_OK);
    cr_assert_eq(bl_release(pl, on_rel, &pending), BL_EINVAL, "release while acquiring");
    cr_assert(strstr(bl_manager_errmsg(b), "still acquiring"), "%s", bl_manager_errmsg(b));
    cr_assert_eq(bl_release_done(pl, on_rel, &pending), BL_EINVAL);
    cr_assert_eq(bl_section_end(pl, 0), BL_EINVAL);
    tl_run_for(T, 200);
    cr_assert_eq(bl_release(pl, on_rel, &pending), BL_EINVAL, "release while waiting");
    cr_assert_eq(bl_cancel(pl), BL_OK);
    cr_assert_eq(bl_cancel(pl), BL_EINVAL, "cancel twice");
    cr_assert(strstr(bl_manager_errmsg(b), "already ended"), "%s", bl_manager_errmsg(b));
    cr_assert(tl_wait(T, &pending.n, 1, 3000));
    cr_assert_eq(pending.status, BL_ECANCELED);

    /* Cancel of a held lock; bl_section_end of a plain lock. */
    cr_assert_eq(bl_cancel(held.lock), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(a), "already ended"), "%s", bl_manager_errmsg(a));
    cr_assert_eq(bl_section_end(held.lock, 0), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(a), "not a running section"), "%s", bl_manager_errmsg(a));

    /* A section: ended twice; released the plain way. */
    sec_ctx sc = {0};
    cr_assert_eq(bl_with_lock(a, "ebay", "sect", NULL, sec_run, sec_done, &sc), BL_OK);
    uint64_t end = mono_ms() + 5000;
    while (!sc.lock && mono_ms() < end)
        tl_run_for(T, 5);
    cr_assert(sc.lock, "the section ran");
    cr_assert_eq(bl_release(sc.lock, on_rel, &pending), BL_EINVAL);
    cr_assert(strstr(bl_manager_errmsg(a), "bl_section_end"), "%s", bl_manager_errmsg(a));
    cr_assert_eq(bl_cancel(sc.lock), BL_EINVAL);

    tl_run_for(T, 100); /* quiet: nothing in flight */
    long long scripts = rs_calls(&srv, "evalsha");
    bl_stats before;
    bl_manager_stats(a, &before);
    cr_assert_eq(bl_section_end(sc.lock, 7), BL_OK);
    cr_assert_eq(bl_section_end(sc.lock, 7), BL_EINVAL, "ended twice");
    cr_assert(strstr(bl_manager_errmsg(a), "ended twice"), "%s", bl_manager_errmsg(a));
    cr_assert(tl_wait(T, &sc.done.n, 1, 5000));
    cr_assert_eq(sc.done.status, BL_OK);

    /* Double release: one release reaches the server. */
    rec r1 = {0}, r2 = {0};
    cr_assert_eq(bl_release(held.lock, on_rel, &r1), BL_OK);
    cr_assert_eq(bl_release(held.lock, on_rel, &r2), BL_EINVAL);
    cr_assert_eq(bl_release_done(held.lock, on_rel, &r2), BL_EINVAL);
    cr_assert(tl_wait(T, &r1.n, 1, 5000));
    tl_run_for(T, 100);
    cr_assert_eq(r1.status, BL_OK);
    cr_assert_eq(r2.n, 0);
    bl_stats after;
    bl_manager_stats(a, &after);
    cr_assert_eq(after.releases, before.releases + 2, "the section's and the lock's release");
    /* Two release scripts ran, and nothing else came from the refused calls
     * (each script also counts the commands it called). */
    cr_assert_eq(rs_calls(&srv, "evalsha") - scripts, 2, "only the two accepted releases");
    assert_once(&sc.done, 1, "section done");
    assert_counters(a);
    assert_counters(b);
    close_manager(T, a);
    close_manager(T, b);
    assert_no_leaks();
}

Test(misuse, calls_after_close_get_closed_and_reach_nothing)
{
    bl_config c = quick_cfg(srv.port);
    bl_manager *a = mk_manager(T, srv.port, &c), *b = mk_manager(T, srv.port, &c);
    rec held = acq(a, "mine", 0, 0), other = acq(b, "theirs", 0, 0);
    cr_assert_eq(held.status, BL_OK);
    rec waiting = {0};
    bl_lock *wl;
    bl_acquire_opts o = acq_opts(10000, 0);
    cr_assert_eq(bl_acquire(a, "ebay", "theirs", &o, on_acq, &waiting, &wl), BL_OK);
    sec_ctx sc = {0};
    cr_assert_eq(bl_with_lock(a, "ebay", "sect", NULL, sec_run, sec_done, &sc), BL_OK);
    uint64_t end = mono_ms() + 5000;
    while (!sc.lock && mono_ms() < end)
        tl_run_for(T, 5);
    cr_assert(sc.lock);
    tl_run_for(T, 100);

    int closed = 0;
    rec r = {0};
    irec ir = {0};
    hrec hr = {0};
    crec cr = {0};
    cr_assert_eq(bl_manager_close(a, on_closed, &closed), BL_OK);
    cr_assert_eq(bl_manager_close(a, on_closed, &closed), BL_ECLOSED);
    cr_assert(strstr(bl_manager_errmsg(a), "already called"), "%s", bl_manager_errmsg(a));
    cr_assert_eq(bl_acquire(a, "ebay", "new", NULL, on_acq, &r, NULL), BL_ECLOSED);
    cr_assert(strstr(bl_manager_errmsg(a), "closing"), "%s", bl_manager_errmsg(a));
    cr_assert_eq(bl_with_lock(a, "ebay", "new", NULL, sec_run, sec_done, &sc), BL_ECLOSED);
    cr_assert_eq(bl_inspect(a, "ebay", "new", on_inspect, &ir), BL_ECLOSED);
    cr_assert_eq(bl_health_check(a, on_health, &hr), BL_ECLOSED);
    cr_assert_eq(bl_cleanup(a, 0, on_cleanup, &cr), BL_ECLOSED);
    cr_assert_eq(bl_release(held.lock, on_rel, &r), BL_ECLOSED);
    cr_assert(strstr(bl_manager_errmsg(a), "releases held locks itself"), "%s",
              bl_manager_errmsg(a));
    cr_assert_eq(bl_release_done(held.lock, on_rel, &r), BL_ECLOSED);
    cr_assert_eq(bl_cancel(wl), BL_EINVAL, "close already ended it");
    cr_assert_eq(bl_section_end(sc.lock, 0), BL_EINVAL, "close ends the section");
    cr_assert_eq(r.n + ir.n + hr.n + cr.n + closed + waiting.n + sc.done.n, 0,
                 "nothing runs inside those calls");
    cr_assert(tl_wait(T, &closed, 1, 5000));
    cr_assert_eq(waiting.n, 1);
    cr_assert_eq(waiting.status, BL_ECANCELED);
    cr_assert_eq(sc.done.n, 1, "the section's done callback, before the close callback");
    cr_assert_eq(sc.done.status, BL_ECANCELED);
    tl_run_for(T, 100);
    cr_assert_eq(r.n + ir.n + hr.n + cr.n, 0, "refused calls never call back");
    cr_assert_eq(closed, 1);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:mine"), 0, "held locks released by close");
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:sect"), 0);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:theirs"), 1);
    cr_assert_eq(rel(other.lock), BL_OK);
    close_manager(T, b);
    assert_no_leaks();
}

static int noop_attach(void *impl, struct redisAsyncContext *ac)
{
    (void)impl;
    (void)ac;
    return 0;
}

Test(misuse, malformed_urls_and_configs_create_nothing)
{
    const char *urls[] = {
        "", "redis://", "redis://:@", "http://127.0.0.1", "rediss://127.0.0.1:0",
        "redis://127.0.0.1:0", "redis://127.0.0.1:65536", "redis://127.0.0.1:-1",
        "redis://127.0.0.1:6379/-1", "redis://127.0.0.1:6379/x", "redis://[::1",
        "redis://127.0.0.1 :6379", "redis://127.0.0.1:6379?db=1", "unix://", "unix://relative",
        "redis://127.0.0.1:6379/\n", "redis://a@b@", "redis://%zz@127.0.0.1",
    };
    bl_config c;
    bl_config_init(&c);
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        c.url = urls[i];
        char why[256] = "";
        cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL, "url '%s'", urls[i]);
        cr_assert(strncmp(why, "url: ", 5) == 0 && strlen(why) > 6, "url '%s': why '%s'",
                  urls[i], why);
        bl_manager *m = (bl_manager *)&c; /* must stay untouched */
        cr_assert_eq(bl_manager_new(tl_bl(T), &c, &m), BL_EINVAL, "url '%s'", urls[i]);
        cr_assert_eq(m, (bl_manager *)&c);
    }
    size_t big = 10u << 20;
    char *huge = malloc(big + 1);
    memcpy(huge, "redis://", 8);
    memset(huge + 8, 'h', big - 8);
    huge[big] = '\0';
    c.url = huge;
    char why[256];
    cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL);
    cr_assert(strlen(why) < 200, "the message stays short: %s", why);
    free(huge);
    /* Fields, NULL arguments, a loop without its hooks. */
    bl_manager *m = NULL;
    bl_config_init(&c);
    c.port = 0;
    cr_assert_eq(bl_manager_new(tl_bl(T), &c, &m), BL_EINVAL);
    bl_config_init(&c);
    c.key_prefix = "a b";
    cr_assert_eq(bl_manager_new(tl_bl(T), &c, &m), BL_EINVAL);
    const char *braced[] = {"{app", "app}", "a{b}c"};
    for (size_t i = 0; i < sizeof braced / sizeof braced[0]; i++) {
        c.key_prefix = braced[i];
        cr_assert_eq(bl_config_validate(&c, why, sizeof why), BL_EINVAL, "%s", braced[i]);
        cr_assert(strstr(why, "key_prefix") && strstr(why, "{"), "%s: %s", braced[i], why);
        cr_assert_eq(bl_manager_new(tl_bl(T), &c, &m), BL_EINVAL);
    }
    cr_assert_eq(bl_manager_new(NULL, NULL, &m), BL_EINVAL);
    cr_assert_eq(bl_manager_new(tl_bl(T), NULL, NULL), BL_EINVAL);
    bl_loop half = *tl_bl(T);
    half.timer_new = NULL;
    cr_assert_eq(bl_manager_new(&half, NULL, &m), BL_EINVAL);
    half = *tl_bl(T);
    half.attach = noop_attach;
    half.now_ms = NULL;
    cr_assert_eq(bl_manager_new(&half, NULL, &m), BL_EINVAL);
    cr_assert_null(m);
    cr_assert_eq(bl_config_validate(NULL, why, sizeof why), BL_EINVAL);
    cr_assert_str_eq(why, "config is NULL");
    cr_assert(tl_idle(T), "nothing was started on the loop");
    assert_no_leaks();
}

/* ==== counters stay consistent when answers come late ================================= */

Test(misuse, a_done_answer_after_cancel_keeps_the_attempt_counters_consistent)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    rec r = acq(a, "sold", 0, 0);
    cr_assert_eq(r.status, BL_OK);
    rec d = {0};
    cr_assert_eq(bl_release_done(r.lock, on_rel, &d), BL_OK);
    cr_assert(tl_wait(T, &d.n, 1, 5000));
    /* The acquire is on its way when it is cancelled; the server answers
     * "done" to nobody. */
    rec c = {0};
    bl_lock *l;
    bl_acquire_opts o = acq_opts(0, 0);
    cr_assert_eq(bl_acquire(a, "ebay", "sold", &o, on_acq, &c, &l), BL_OK);
    cr_assert_eq(bl_cancel(l), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 5000));
    cr_assert_eq(c.status, BL_ECANCELED);
    tl_run_for(T, 100);
    assert_counters(a);
    close_manager(T, a);
}
