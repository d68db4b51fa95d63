/* The in-memory backend keeps the lock semantics of Redis for one process:
 * the behaviour scenarios, with no server running at all. */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"

static int warned;

static void on_log(int level, const char *msg, void *data)
{
    (void)data;
    if (level == BL_LOG_WARN && strstr(msg, "in-memory backend"))
        warned++;
}

TestSuite(memory, .init = fx_loop_init, .fini = fx_loop_fini, .timeout = 60);

static bl_manager *mem_manager(void)
{
    bl_config c;
    bl_config_init(&c);
    c.backend = BL_BACKEND_MEMORY;
    c.port = 1; /* nothing is ever dialled */
    c.log = on_log;
    bl_manager *m = NULL;
    cr_assert_eq(bl_manager_new(tl_bl(T), &c, &m), BL_OK);
    return m;
}

Test(memory, warns_once_that_it_is_local)
{
    bl_manager *a = mem_manager();
    cr_assert_eq(warned, 1);
    close_manager(T, a);
}

Test(memory, two_instances_only_one_wins_and_only_the_holder_releases)
{
    bl_manager *a = mem_manager(), *b = mem_manager();
    rec ra = acq(a, "p1", 0, 1000); /* held for sure while b looks, even on a busy machine */
    cr_assert_eq(ra.status, BL_OK);
    cr_assert_eq(acq(b, "p1", 0, 0).status, BL_EBUSY);
    cr_assert_eq(acq_in(b, "etsy", "p1", 0, 0).status, BL_OK, "marketplaces independent");
    irec i = inspect(b, "p1");
    cr_assert_eq(i.held, 1);
    cr_assert_str_eq(i.holder, bl_manager_holder(a));
    cr_assert(i.pttl > 0 && i.pttl <= 1000);
    tl_run_for(T, 1100); /* a's TTL runs out: by the loop's clock, the one the backend keeps */
    rec rb = acq(b, "p1", 0, 0);
    cr_assert_eq(rb.status, BL_OK, "expired locks are free");
    cr_assert_eq(rel(ra.lock), BL_ENOTHELD, "a cannot release b's lock");
    cr_assert(rb.token > ra.token);
    cr_assert_eq(inspect(a, "p1").held, 1);
    cr_assert_eq(rel(rb.lock), BL_OK);
    close_manager(T, a);
    close_manager(T, b);
}

Test(memory, waiters_queue_time_out_and_wake_on_release)
{
    bl_manager *a = mem_manager(), *b = mem_manager(), *c = mem_manager();
    rec ra = acq(a, "q", 0, 0);
    uint64_t t0 = mono_ms();
    rec late = acq(c, "q", 300, 0);
    cr_assert_eq(late.status, BL_ETIMEDOUT);
    cr_assert(late.at - t0 >= 300);
    rec rb = {0};
    acq_start(b, "q", 10000, 0, &rb);
    tl_run_for(T, 100);
    cr_assert_eq(rb.n, 0);
    cr_assert_eq(rel(ra.lock), BL_OK);
    cr_assert(tl_wait(T, &rb.n, 1, 2000));
    cr_assert_eq(rb.status, BL_OK);
    bl_stats s;
    bl_manager_stats(b, &s);
    cr_assert(s.wakeups >= 1, "woken by the release");
    bl_manager_stats(c, &s);
    cr_assert_eq(s.timeouts, 1);
    cr_assert_eq(s.requests, s.acquired + s.busy + s.timeouts + s.cancelled + s.failed + s.done);
    close_manager(T, a);
    close_manager(T, b);
    close_manager(T, c);
}

Test(memory, done_markers_tokens_and_many_postings)
{
    bl_manager *a = mem_manager(), *b = mem_manager();
    uint64_t last = 0;
    char id[16];
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "p%d", i % 7);
        rec r = acq(i % 2 ? a : b, id, 0, 0);
        cr_assert_eq(r.status, BL_OK);
        cr_assert(r.token > last, "tokens increase");
        last = r.token;
        cr_assert_eq(rel(r.lock), BL_OK);
    }
    rec r = acq(a, "sold", 0, 0);
    cr_assert_eq(rel_done(r.lock), BL_OK);
    cr_assert_eq(acq(b, "sold", 1000, 0).status, BL_EDONE);
    cr_assert_eq(acq(a, "sold", 0, 0).status, BL_EDONE);
    cr_assert_eq(inspect(b, "sold").done, 1);
    close_manager(T, a);
    close_manager(T, b);
}

Test(memory, auto_extension_cleanup_close_and_health)
{
    bl_manager *a = mem_manager(), *b = mem_manager();
    rec lost = {0};
    acq_renewed(a, "long", 150, &lost);
    tl_run_for(T, 1500); /* 10x the TTL */
    cr_assert_eq(acq(b, "long", 0, 0).status, BL_EBUSY);
    cr_assert_eq(lost.n, 0);
    /* cleanup: b's own only, then everything under the prefix */
    cr_assert_eq(acq(b, "b1", 0, 0).status, BL_OK);
    cr_assert_eq(acq(b, "b2", 0, 0).status, BL_OK);
    crec c = {0};
    cr_assert_eq(bl_cleanup(b, 1, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 2000));
    cr_assert_eq(c.status, BL_OK);
    cr_assert_eq(c.removed, 2, "only b's own");
    cr_assert_eq(inspect(b, "long").held, 1);
    cr_assert_eq(acq(b, "b3", 0, 0).status, BL_OK);
    close_manager(T, a); /* releases "long" */
    cr_assert_eq(inspect(b, "long").held, 0, "close gave it back");
    c = (crec){0};
    cr_assert_eq(bl_cleanup(b, 0, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, 2000));
    cr_assert_eq(c.status, BL_OK);
    cr_assert_eq(c.removed, 1);
    hrec h = {0};
    cr_assert_eq(bl_health_check(b, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, 2000));
    cr_assert_eq(h.status, BL_OK);
    cr_assert_str_eq(h.backend, "memory");
    close_manager(T, b);
}

Test(memory, bad_input_is_refused_the_same_way)
{
    bl_manager *a = mem_manager();
    rec r = {0};
    cr_assert_eq(bl_acquire(a, "a:b", "c", NULL, on_acq, &r, NULL), BL_EINVAL);
    cr_assert_eq(bl_acquire(a, "ebay", "", NULL, on_acq, &r, NULL), BL_EINVAL);
    tl_run_for(T, 20);
    cr_assert_eq(r.n, 0);
    close_manager(T, a);
}
