/* test_profiling.c - hold-time profiling against a real redis-server (and
 * the memory backend): the fleet-wide list of held locks (bl_list_locks),
 * longest held first, from every holder; this manager's longest-held locks
 * (bl_manager_longest_held); the hold-time histogram. */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "helpers.h"

TestSuite(profiling, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 120);

typedef struct lrec {
    int n, status;
    size_t count, total;
    struct {
        char key[128], holder[400];
        uint64_t held_ms, token;
        int64_t pttl_ms;
    } l[8];
} lrec;

static void on_locks(bl_manager *m, int status, const bl_held_lock *l, size_t n, size_t total,
                     void *data)
{
    (void)m;
    lrec *r = data;
    r->n++;
    r->status = status;
    r->count = n;
    r->total = total;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(r->l[i].key, sizeof r->l[i].key, "%s", l[i].key);
        snprintf(r->l[i].holder, sizeof r->l[i].holder, "%s", l[i].holder);
        r->l[i].held_ms = l[i].held_ms;
        r->l[i].token = l[i].token;
        r->l[i].pttl_ms = l[i].pttl_ms;
    }
}

static lrec list(bl_manager *m, size_t max)
{
    lrec r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(bl_list_locks(m, max, on_locks, &r), BL_OK, "%s", bl_manager_errmsg(m));
    cr_assert_eq(r.n, 0, "never called back from inside the call");
    cr_assert(tl_wait(T, &r.n, 1, 20000), "the list came");
    tl_run_for(T, 2);
    cr_assert_eq(r.n, 1, "exactly once");
    return r;
}

/* Three locks of two managers, taken one after another (each grant's token
 * is the server's clock then), plus names that are not held locks. */
static void fleet(bl_manager *a, bl_manager *b, int redis)
{
    rec r1 = acq(a, "first", 0, 60000);
    cr_assert_eq(r1.status, BL_OK);
    tl_run_for(T, 20);
    rec r2 = acq(b, "second", 0, 60000);
    cr_assert_eq(r2.status, BL_OK);
    tl_run_for(T, 20);
    rec r3 = acq_in(a, "etsy", "third", 0, 30000);
    cr_assert_eq(r3.status, BL_OK);
    /* released, done: not held, not listed */
    rec gone = acq(b, "gone", 0, 60000);
    cr_assert_eq(rel_done(gone.lock), BL_OK);
    if (redis) { /* other names under and outside the prefix */
        freeReplyObject(rs_cmd(&srv, "SET other_prefix:ebay:x someone"));
        freeReplyObject(rs_cmd(&srv, "SET bid_lockx:ebay:y someone"));
    }

    lrec all = list(b, 0);
    cr_assert_eq(all.status, BL_OK);
    cr_assert_eq(all.total, 3, "three held locks (got %zu)", all.total);
    cr_assert_eq(all.count, 3);
    cr_assert_str_eq(all.l[0].key, "bid_lock:ebay:first", "the longest held first");
    cr_assert_str_eq(all.l[1].key, "bid_lock:ebay:second");
    cr_assert_str_eq(all.l[2].key, "bid_lock:etsy:third");
    cr_assert_str_eq(all.l[0].holder, bl_manager_holder(a), "every holder, not just ours");
    cr_assert_str_eq(all.l[1].holder, bl_manager_holder(b));
    cr_assert_eq(all.l[0].token, r1.token);
    cr_assert_eq(all.l[2].token, r3.token);
    cr_assert(all.l[0].held_ms >= all.l[1].held_ms && all.l[1].held_ms >= all.l[2].held_ms);
    cr_assert_gt(all.l[0].pttl_ms, 0);
    cr_assert_leq(all.l[0].pttl_ms, 60000);
    cr_assert_leq(all.l[2].pttl_ms, 30000);

    lrec top = list(a, 2);
    cr_assert_eq(top.count, 2, "at most max");
    cr_assert_eq(top.total, 3, "and how many there are");
    cr_assert_str_eq(top.l[1].key, "bid_lock:ebay:second");

    /* This manager's own, longest held first. */
    bl_lock *mine[4];
    cr_assert_eq(bl_manager_longest_held(a, mine, 4), 2);
    cr_assert_eq(mine[0], r1.lock);
    cr_assert_eq(mine[1], r3.lock);

    cr_assert_eq(rel(r1.lock), BL_OK);
    cr_assert_eq(rel(r2.lock), BL_OK);
    cr_assert_eq(rel(r3.lock), BL_OK);
    lrec none = list(a, 0);
    cr_assert_eq(none.total, 0);
    bl_metrics mt;
    bl_manager_metrics(a, &mt);
    cr_assert_eq(mt.hold_ms.count, 2, "a's two holds are in its hold-time histogram");
}

Test(profiling, the_fleet_list_has_every_holder_longest_held_first)
{
    bl_manager *a = mk_manager(T, srv.port, NULL), *b = mk_manager(T, srv.port, NULL);
    fleet(a, b, 1);
    close_manager(T, a);
    close_manager(T, b);
}

Test(profiling, the_memory_backend_lists_its_locks_too)
{
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.backend = BL_BACKEND_MEMORY;
    bl_manager *a = mk_manager(T, 0, &cfg), *b = mk_manager(T, 0, &cfg);
    fleet(a, b, 0);
    close_manager(T, a);
    close_manager(T, b);
}

Test(profiling, listing_a_server_that_is_gone_is_a_connection_error_once)
{
    bl_config cfg = quick_cfg(srv.port);
    bl_manager *a = mk_manager(T, srv.port, &cfg);
    rec r = acq(a, "x", 0, 60000);
    cr_assert_eq(r.status, BL_OK);
    rs_kill(&srv);
    lrec l = list(a, 0);
    cr_assert_eq(l.status, BL_ECONN, "%s", bl_status_name(l.status));
    cr_assert_eq(l.count, 0);
    cr_assert(bl_list_locks(a, 0, NULL, NULL) == BL_EINVAL);
    rs_restart(&srv);
    close_manager(T, a);
}
