/* Batched lease renewal: many locks held with auto_extend on one manager
 * renew in few script calls (one per batch of up to BL_RENEW_BATCH_MAX),
 * each lock with its own answer - a lost lease is lost alone, a release or
 * a close while a batch is out still answers every request once - against
 * a real redis-server. Script calls are counted on the server (INFO
 * commandstats); nothing here asserts how long anything took. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "engine.h"
#include "harness.h"
#include "helpers.h"

TestSuite(renew, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 120);

#define NLOCKS 200

static long long script_calls(void)
{
    return rs_calls(&srv, "evalsha") + rs_calls(&srv, "eval");
}

static bl_stats stats_of(bl_manager *m)
{
    bl_stats s;
    bl_manager_stats(m, &s);
    return s;
}

/* n locks "r<i>" held with auto_extend for ttl_ms, their on_lost in lost[]. */
static void hold_many(bl_manager *m, int n, int64_t ttl_ms, rec *held, rec *lost)
{
    char name[32];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "r%d", i);
        acq_start_renewed(m, name, ttl_ms, &held[i], &lost[i]);
    }
    cr_assert(wait_all(held, n, 20000), "every acquire answered");
    for (int i = 0; i < n; i++)
        cr_assert_eq(held[i].status, BL_OK, "lock %d: %d %s", i, held[i].status,
                     held[i].errmsg);
}

/* 1 if key "bid_lock:ebay:r<i>" holds m's holder id. */
static int ours(bl_manager *m, int i)
{
    redisReply *v = rs_cmd(&srv, "GET bid_lock:ebay:r%d", i);
    int yes = v->type == REDIS_REPLY_STRING && strcmp(v->str, bl_manager_holder(m)) == 0;
    freeReplyObject(v);
    return yes;
}

/* Run until m has renewed `more` leases beyond what it had, at most ms. */
static int wait_renewals(bl_manager *m, uint64_t more, int ms)
{
    return wait_renewed(m, stats_of(m).extends + more, ms);
}

typedef struct inflight_arg {
    rec *held;
    int n;
} inflight_arg;

static int all_renewing(void *arg)
{
    inflight_arg *a = arg;
    for (int i = 0; i < a->n; i++)
        if (a->held[i].lock->op.kind != BL_OP_EXTEND)
            return 0;
    return 1;
}

/* Pause the server's writes (scripts included) and renew every lock now:
 * one batch goes out and stays unanswered until the pause ends. */
static void renewals_in_flight(rec *held, int n, int pause_ms)
{
    freeReplyObject(rs_cmd(&srv, "CLIENT PAUSE %d WRITE", pause_ms));
    for (int i = 0; i < n; i++)
        bl_lock_reverify(held[i].lock);
    inflight_arg a = {held, n};
    cr_assert(tl_wait_for(T, all_renewing, &a, 5000), "every renewal is out");
}

Test(renew, many_leases_stay_held_past_several_ttls_in_few_script_calls)
{
    bl_manager *m = mk_manager(T, srv.port, NULL);
    static rec held[NLOCKS], lost[NLOCKS];
    hold_many(m, NLOCKS, 1200, held, lost);
    long long calls0 = script_calls(), pexpire0 = rs_calls(&srv, "pexpire");
    uint64_t ext0 = stats_of(m).extends;
    /* Each lock renews at least every 400 ms: 3.6 s is three TTLs, and a
     * lock not renewed for one TTL is gone from the server. */
    tl_run_for(T, 3600);
    bl_stats s = stats_of(m);
    long long calls = script_calls() - calls0, pexpire = rs_calls(&srv, "pexpire") - pexpire0;
    uint64_t renewals = s.extends - ext0;
    cr_log_info("%llu renewals (%lld PEXPIRE on the server) in %lld script calls",
                (unsigned long long)renewals, pexpire, calls);
    for (int i = 0; i < NLOCKS; i++) {
        cr_assert_eq(lost[i].n, 0, "lock %d was not lost", i);
        cr_assert(ours(m, i), "lock %d is still ours past three TTLs", i);
    }
    cr_assert_eq(s.lost, 0);
    cr_assert_geq(renewals, 3 * NLOCKS, "every lock renewed, several times");
    cr_assert_geq(pexpire, (long long)renewals, "each renewal was a PEXPIRE on the server");
    cr_assert_gt(calls, 0);
    cr_assert_leq(calls * 10, (long long)renewals, "batched: %lld calls for %llu renewals",
                  calls, (unsigned long long)renewals);
    for (int i = 0; i < NLOCKS; i++)
        cr_assert_eq(rel(held[i].lock), BL_OK);
    cr_assert_eq(rs_lock_count(&srv), 0);
    close_manager(T, m);
}

Test(renew, a_lease_stolen_from_a_batch_is_lost_once_and_the_others_go_on)
{
    enum { N = 50 };
    bl_manager *m = mk_manager(T, srv.port, NULL);
    rec held[N] = {{0}}, lost[N] = {{0}};
    hold_many(m, N, 1200, held, lost);
    cr_assert(wait_renewals(m, 2 * N, 20000), "renewing");
    freeReplyObject(rs_cmd(&srv, "SET bid_lock:ebay:r17 thief PX 60000"));
    long long calls0 = script_calls();
    cr_assert(tl_wait(T, &lost[17].n, 1, 10000), "on_lost for the stolen lease");
    cr_assert_eq(lost[17].status, BL_ELOST);
    cr_assert(wait_renewals(m, 3 * N, 20000), "the others keep renewing");
    cr_assert_lt(script_calls() - calls0, 2 * N, "in batches, the stolen one among them");
    for (int i = 0; i < N; i++) {
        cr_assert_eq(lost[i].n, i == 17 ? 1 : 0, "lock %d: on_lost %d times", i, lost[i].n);
        if (i != 17)
            cr_assert(ours(m, i), "lock %d is still ours", i);
    }
    redisReply *v = rs_cmd(&srv, "GET bid_lock:ebay:r17");
    cr_assert_str_eq(v->str, "thief", "nothing renewed or deleted there");
    freeReplyObject(v);
    cr_assert_eq(stats_of(m).lost, 1);
    for (int i = 0; i < N; i++)
        cr_assert_eq(rel(held[i].lock), i == 17 ? BL_ENOTHELD : BL_OK, "release %d", i);
    close_manager(T, m);
}

Test(renew, a_lease_deleted_before_its_batch_is_lost_alone)
{
    enum { N = 30 };
    bl_manager *m = mk_manager(T, srv.port, NULL);
    rec held[N] = {{0}}, lost[N] = {{0}};
    hold_many(m, N, 5000, held, lost);
    long long calls0 = script_calls();
    uint64_t ext0 = stats_of(m).extends;
    /* All renewed at once, in one call, one of them gone meanwhile. */
    cr_assert_eq(rs_int(&srv, "DEL bid_lock:ebay:r5"), 1);
    for (int i = 0; i < N; i++)
        bl_lock_reverify(held[i].lock);
    cr_assert(tl_wait(T, &lost[5].n, 1, 10000));
    cr_assert(wait_renewals(m, 0, 1) && stats_of(m).extends - ext0 == N - 1,
              "the others renewed by the same call");
    cr_assert_eq(script_calls() - calls0, 1, "one script call renewed all %d", N);
    tl_run_for(T, 100);
    for (int i = 0; i < N; i++)
        cr_assert_eq(lost[i].n, i == 5 ? 1 : 0, "lock %d: on_lost %d times", i, lost[i].n);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:r5"), 0, "not brought back");
    for (int i = 0; i < N; i++)
        cr_assert_eq(rel(held[i].lock), i == 5 ? BL_ENOTHELD : BL_OK, "release %d", i);
    close_manager(T, m);
}

Test(renew, a_release_while_its_batch_is_out_goes_after_it)
{
    enum { N = 20 };
    bl_manager *m = mk_manager(T, srv.port, NULL);
    rec held[N] = {{0}}, lost[N] = {{0}}, released[2] = {{0}};
    hold_many(m, N, 20000, held, lost);
    renewals_in_flight(held, N, 1000);
    cr_assert_eq(bl_release(held[3].lock, on_rel, &released[0]), BL_OK);
    cr_assert_eq(bl_release_done(held[7].lock, on_rel, &released[1]), BL_OK);
    cr_assert_eq(released[0].n + released[1].n, 0, "not inside bl_release");
    freeReplyObject(rs_cmd(&srv, "CLIENT UNPAUSE"));
    cr_assert(wait_all(released, 2, 10000), "both releases answered");
    cr_assert_eq(released[0].status, BL_OK);
    cr_assert_eq(released[1].status, BL_OK);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:r3"), 0, "released after its renewal");
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:r7"), 0);
    cr_assert(rs_exists(&srv, "{bid_lock:ebay:r7}:done"), "marked done");
    tl_run_for(T, 100);
    assert_once(released, 2, "release");
    for (int i = 0; i < N; i++) {
        cr_assert_eq(lost[i].n, 0, "lock %d", i);
        if (i != 3 && i != 7)
            cr_assert(ours(m, i), "lock %d is still ours", i);
    }
    close_manager(T, m);
    cr_assert_eq(rs_lock_count(&srv), 0, "close gave the rest back");
}

static int closes;

Test(renew, close_with_a_batch_out_answers_every_request_once)
{
    enum { N = 40 };
    bl_manager *m = mk_manager(T, srv.port, NULL);
    rec held[N] = {{0}}, lost[N] = {{0}}, released[3] = {{0}};
    hold_many(m, N, 20000, held, lost);
    renewals_in_flight(held, N, 1000);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(bl_release(held[i].lock, on_rel, &released[i]), BL_OK);
    closes = 0;
    cr_assert_eq(bl_manager_close(m, on_closed, &closes), BL_OK);
    cr_assert_eq(closes, 0, "not inside bl_manager_close");
    cr_assert(tl_wait(T, &closes, 1, 20000), "closed");
    assert_once(released, 3, "release");
    for (int i = 0; i < 3; i++)
        cr_assert_eq(released[i].status, BL_OK, "release %d: %d", i, released[i].status);
    for (int i = 0; i < N; i++)
        cr_assert_eq(lost[i].n, 0, "lock %d: no on_lost at close", i);
    tl_run_for(T, 50);
    cr_assert_eq(closes, 1, "once");
    cr_assert(wait_no_locks(&srv, 10000), "every lease given back");
    cr_assert(tl_idle(T), "nothing left on the loop");
}
