/* test_transfer.c - bl_transfer against a real redis-server (and the memory
 * backend): a holder hands its lock to another manager by holder id, in
 * one script, so the lock is never free in between; the receiver takes it
 * over with a plain bl_acquire; a third party never gets in; a transfer by
 * a holder that lost its lock changes nothing; a transfer to a receiver
 * that never comes runs out with its lease. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"

TestSuite(transfer, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 120);

static bl_stats stats_of(bl_manager *m)
{
    bl_stats s;
    bl_manager_stats(m, &s);
    return s;
}

static int transfer(bl_lock *lock, const char *holder, int64_t lease_ms)
{
    rec r = {0};
    cr_assert_eq(bl_transfer(lock, holder, lease_ms, on_rel, &r), BL_OK, "%s",
                 bl_manager_errmsg(bl_lock_manager(lock)));
    cr_assert_eq(r.n, 0, "never called back from inside the call");
    cr_assert(tl_wait(T, &r.n, 1, 20000), "the transfer's callback came");
    tl_run_for(T, 5);
    cr_assert_eq(r.n, 1, "exactly once");
    return r.status;
}

/* ---- a third process hammers the posting all along --------------------------- */

typedef struct shared {
    volatile int stop;
    volatile int attempts, got;
} shared;

static int hammer(int port, shared *sh)
{
    tloop *t = tl_new();
    bl_config c = quick_cfg(port);
    bl_manager *m;
    if (bl_manager_new(tl_bl(t), &c, &m) != BL_OK)
        return 2;
    while (!sh->stop) {
        rec r = {0};
        bl_acquire_opts o = acq_opts(0, 30000);
        if (bl_acquire(m, "ebay", "bundle", &o, on_acq, &r, NULL) != BL_OK)
            return 3;
        if (!tl_wait(t, &r.n, 1, 20000))
            return 4;
        __atomic_add_fetch(&sh->attempts, 1, __ATOMIC_SEQ_CST);
        if (r.status == BL_OK) {
            __atomic_add_fetch(&sh->got, 1, __ATOMIC_SEQ_CST);
            rec rr = {0};
            bl_release(r.lock, on_rel, &rr);
            tl_wait(t, &rr.n, 1, 20000);
        }
        tl_run_for(t, 1);
    }
    int closed = 0;
    bl_manager_close(m, on_closed, &closed);
    tl_wait(t, &closed, 1, 10000);
    tl_free(t);
    return closed ? 0 : 5;
}

Test(transfer, handing_the_lock_back_and_forth_never_lets_a_third_process_in)
{
    shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    bl_manager *mg[2] = {mk_manager(T, srv.port, NULL), mk_manager(T, srv.port, NULL)};
    rec cur = acq(mg[0], "bundle", 20000, 30000);
    cr_assert_eq(cur.status, BL_OK);
    pid_t kid = fork();
    cr_assert(kid >= 0);
    if (kid == 0)
        _exit(hammer(srv.port, sh));
    /* Let the third process try a few times against the first holder. */
    for (int i = 0; i < 2000 && sh->attempts < 5; i++)
        tl_run_for(T, 10);
    cr_assert_geq(sh->attempts, 5, "the third process is trying");
    uint64_t token = cur.token;
    int from = 0;
    enum { HOPS = 20 };
    for (int hop = 0; hop < HOPS; hop++) {
        int to = 1 - from;
        cr_assert_eq(transfer(cur.lock, bl_manager_holder(mg[to]), 10000), BL_OK);
        rec next = acq(mg[to], "bundle", 20000, 30000);
        cr_assert_eq(next.status, BL_OK, "hop %d: the receiver takes it over (%s)", hop,
                     bl_status_name(next.status));
        cr_assert_gt(next.token, token, "hop %d: a higher token", hop);
        token = next.token;
        cur = next;
        from = to;
    }
    int seen = sh->attempts;
    for (int i = 0; i < 2000 && sh->attempts < seen + 5; i++)
        tl_run_for(T, 10);
    sh->stop = 1;
    int st;
    cr_assert_eq(waitpid(kid, &st, 0), kid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the third process ended cleanly");
    cr_log_info("transfer: %d hops; the third process tried %d times, got it %d times", HOPS,
                sh->attempts, sh->got);
    cr_assert_eq(sh->got, 0, "a third party got in %d times", sh->got);
    cr_assert_eq(stats_of(mg[0]).transfers + stats_of(mg[1]).transfers, HOPS);
    cr_assert_eq(stats_of(mg[0]).reclaims + stats_of(mg[1]).reclaims, HOPS,
                 "each take-over is a reclaim");
    cr_assert_eq(rel(cur.lock), BL_OK, "the last receiver releases as usual");
    for (int i = 0; i < 2; i++) {
        assert_counters(mg[i]);
        close_manager(T, mg[i]);
    }
    munmap(sh, sizeof *sh);
}

Test(transfer, a_receiver_that_waits_is_woken_and_takes_it_with_its_own_lease)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    bl_config cfg = quick_cfg(srv.port);
    cfg.backoff_initial_ms = cfg.backoff_max_ms = 2000;
    bl_manager *b = mk_manager(T, srv.port, &cfg);
    rec ra = acq(a, "w", 20000, 30000);
    cr_assert_eq(ra.status, BL_OK);
    rec rb = {0}, lost = {0};
    bl_acquire_opts o = acq_opts(60000, 3000);
    o.auto_extend = 1;
    o.on_lost = on_lost;
    o.on_lost_data = &lost;
    cr_assert_eq(bl_acquire(b, "ebay", "w", &o, on_acq, &rb, NULL), BL_OK);
    cr_assert(wait_queued(&srv, b, "w", 20000), "B waits, subscribed");
    uint64_t wakeups = stats_of(b).wakeups;
    cr_assert_eq(transfer(ra.lock, bl_manager_holder(b), 1000), BL_OK);
    cr_assert(tl_wait(T, &rb.n, 1, 20000));
    cr_assert_eq(rb.status, BL_OK);
    cr_assert_gt(rb.token, ra.token);
    cr_assert_gt(stats_of(b).wakeups, wakeups, "the transfer's message woke B");
    /* B's lease is its own (3 s, renewed), not the transfer's 1 s: it still
     * holds the lock well after the transfer lease would have ended. */
    irec i = inspect(a, "w");
    cr_assert(i.held);
    cr_assert_str_eq(i.holder, bl_manager_holder(b));
    cr_assert_gt(i.pttl, 1000, "B's own TTL, not the 1 s lease (pttl %lld)", (long long)i.pttl);
    uint64_t renewed = stats_of(b).extends;
    for (int k = 0; k < 2000 && stats_of(b).extends < renewed + 2; k++)
        tl_run_for(T, 10);
    cr_assert_geq(stats_of(b).extends, renewed + 2, "B renews it as its own");
    cr_assert_eq(lost.n, 0);
    cr_assert_eq(rel(rb.lock), BL_OK);
    assert_counters(a);
    assert_counters(b);
    close_manager(T, a);
    close_manager(T, b);
}

Test(transfer, a_holder_that_lost_its_lock_cannot_transfer_it)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    bl_manager *b = mk_manager(T, srv.port, NULL);
    bl_manager *c = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "gone", 20000, 200); /* not renewed: it runs out */
    cr_assert_eq(ra.status, BL_OK);
    cr_assert(wait_gone(&srv, "bid_lock:ebay:gone", 20000));
    rec rb = acq(b, "gone", 20000, 30000);
    cr_assert_eq(rb.status, BL_OK);
    cr_assert_eq(transfer(ra.lock, bl_manager_holder(c), 5000), BL_ENOTHELD);
    irec i = inspect(c, "gone");
    cr_assert_str_eq(i.holder, bl_manager_holder(b), "the holder is unchanged");
    cr_assert_eq(i.token, rb.token, "no token was taken");
    cr_assert_eq(stats_of(a).transfers, 0);
    /* C cannot take it either: it was never C's. */
    rec rc = acq(c, "gone", 0, 30000);
    cr_assert_eq(rc.status, BL_EBUSY);
    cr_assert_eq(stats_of(c).reclaims, 0);
    cr_assert_eq(rel(rb.lock), BL_OK);
    close_manager(T, a);
    close_manager(T, b);
    close_manager(T, c);
}

Test(transfer, a_transfer_to_a_receiver_that_never_comes_runs_out_with_its_lease)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    bl_manager *c = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "ghost", 20000, 30000);
    cr_assert_eq(ra.status, BL_OK);
    const char *ghost = "scanner-7:4242:00000000-0000-4000-8000-000000000000";
    /* 2 s: the inspection below must see the lease on a slow machine */
    cr_assert_eq(transfer(ra.lock, ghost, 2000), BL_OK);
    irec i = inspect(c, "ghost");
    cr_assert(i.held);
    cr_assert_str_eq(i.holder, ghost);
    cr_assert_gt(i.token, ra.token, "the transfer took a new token");
    cr_assert_leq(i.pttl, 2000);
    rec rc = acq(c, "ghost", 20000, 30000); /* waits out the lease */
    cr_assert_eq(rc.status, BL_OK);
    cr_assert_gt(rc.token, i.token);
    cr_assert_eq(rel(rc.lock), BL_OK);
    assert_counters(a);
    close_manager(T, a);
    close_manager(T, c);
}

Test(transfer, bad_arguments_are_refused_and_send_nothing)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "bad", 20000, 30000);
    cr_assert_eq(ra.status, BL_OK);
    long long before = rs_calls(&srv, NULL);
    char longid[400];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    struct {
        const char *holder;
        int64_t lease;
        const char *why;
    } bad[] = {
        {NULL, 0, "holder is NULL"},
        {"", 0, "holder is empty"},
        {"two words", 0, "whitespace"},
        {"~reserved", 0, "'~'"},
        {longid, 0, "longer than"},
        {bl_manager_holder(a), 0, "already this manager's"},
        {"other:1:x", -1, "lease_ms"},
        {"other:1:x", (int64_t)31 * 24 * 3600 * 1000, "lease_ms"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        rec r = {0};
        cr_assert_eq(bl_transfer(ra.lock, bad[k].holder, bad[k].lease, on_rel, &r), BL_EINVAL,
                     "case %zu", k);
        cr_assert(strstr(bl_manager_errmsg(a), bad[k].why), "case %zu: \"%s\"", k,
                  bl_manager_errmsg(a));
        cr_assert_eq(r.n, 0, "no callback for a refused call");
    }
    cr_assert_eq(bl_transfer(NULL, "other:1:x", 0, on_rel, NULL), BL_EINVAL);
    cr_assert_eq(rs_calls(&srv, NULL), before, "nothing was sent");
    cr_assert_eq(rel(ra.lock), BL_OK, "the lock is still held and released as usual");
    close_manager(T, a);
}

Test(transfer, close_with_a_transfer_in_flight_calls_back_once)
{
    bl_manager *a = mk_manager(T, srv.port, NULL);
    bl_manager *b = mk_manager(T, srv.port, NULL);
    rec ra = acq(a, "closing", 20000, 30000);
    cr_assert_eq(ra.status, BL_OK);
    rec rt = {0};
    cr_assert_eq(bl_transfer(ra.lock, bl_manager_holder(b), 10000, on_rel, &rt), BL_OK);
    int closed = 0;
    cr_assert_eq(bl_manager_close(a, on_closed, &closed), BL_OK);
    cr_assert(tl_wait(T, &closed, 1, 20000));
    tl_run_for(T, 5);
    cr_assert_eq(rt.n, 1, "the transfer called back once, before the close callback");
    cr_assert_eq(rt.status, BL_OK, "%s", bl_status_name(rt.status));
    rec rb = acq(b, "closing", 0, 30000);
    cr_assert_eq(rb.status, BL_OK, "B takes over what A handed it");
    cr_assert_eq(rel(rb.lock), BL_OK);
    close_manager(T, b);
}

/* The memory backend: the same rules in one process. */
Test(transfer, the_memory_backend_transfers_too)
{
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.backend = BL_BACKEND_MEMORY;
    bl_manager *a = mk_manager(T, 0, &cfg), *b = mk_manager(T, 0, &cfg), *c = mk_manager(T, 0, &cfg);
    rec ra = acq(a, "mem", 20000, 30000);
    cr_assert_eq(ra.status, BL_OK);
    cr_assert_eq(transfer(ra.lock, bl_manager_holder(b), 5000), BL_OK);
    rec rc = acq(c, "mem", 0, 30000);
    cr_assert_eq(rc.status, BL_EBUSY, "never free in between");
    rec rb = acq(b, "mem", 0, 30000);
    cr_assert_eq(rb.status, BL_OK);
    cr_assert_gt(rb.token, ra.token);
    cr_assert_eq(transfer(rb.lock, bl_manager_holder(a), 5000), BL_OK);
    rec back = acq(a, "mem", 0, 30000);
    cr_assert_eq(back.status, BL_OK);
    cr_assert_gt(back.token, rb.token);
    cr_assert_eq(rel(back.lock), BL_OK);
    close_manager(T, a);
    close_manager(T, b);
    close_manager(T, c);
}
