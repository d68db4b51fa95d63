/* pipeline.c - a bidding pipeline as a chain of callbacks:
 *
 *   scan -> lock -> should_bid -> place_bid -> release (done)
 *
 * Each stage is started by the previous stage's completion callback, and
 * one `bid` struct flows down the chain, freed at its end. The pricing
 * service and the marketplace's bid API are simulated by loop timers (they
 * would be HTTP calls on the same loop). Run two at once: each posting gets
 * exactly one bid; the other pipeline finds it done.
 *
 *   pipeline [port]     (Redis on 127.0.0.1, default 6379)
 */
#include <bidlock.h>
#include <bidlock/libev.h>
#include <ev.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static struct ev_loop *loop;
static bl_manager *mgr;
static int in_flight;

typedef struct bid {
    const char *posting;
    double price, budget;
    bl_lock *lock;
    ev_timer call;          /* the simulated remote call of the current stage */
    void (*next)(struct bid *); /* the stage its answer goes to */
} bid;

static void should_bid(bid *b);
static void place_bid(bid *b);
static void release(bid *b);

static void call_done(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    bid *b = w->data;
    b->next(b);
}

/* A remote call that answers after `ms`, then continues with `next`. */
static void call_later(bid *b, double ms, void (*next)(bid *))
{
    ev_timer_init(&b->call, call_done, ms / 1000.0, 0.);
    b->call.data = b;
    b->next = next;
    ev_timer_start(loop, &b->call);
}

/* 5. Released (and marked done): this posting is finished for everyone. */
static void released(bl_lock *lock, int status, void *data)
{
    bid *b = data;
    printf("%-10s released %s: %s\n", b->posting, bl_lock_key(lock), bl_strerror(status));
    free(b);
    if (--in_flight == 0)
        bl_manager_close(mgr, NULL, NULL); /* the loop ends when the manager is gone */
}

static void release(bid *b)
{
    if (bl_release_done(b->lock, released, b) != BL_OK)
        released(b->lock, BL_EINVAL, b);
}

/* 4. The marketplace accepted the bid. We still hold the lock, so no other
 *    instance is between its own "should I bid?" and "bid". */
static void place_bid(bid *b)
{
    printf("%-10s bid %.2f placed (fencing token %" PRIu64 ")\n", b->posting, b->price,
           bl_lock_token(b->lock));
    release(b);
}

/* 3. The pricing service answered. */
static void should_bid(bid *b)
{
    if (b->price > b->budget) {
        printf("%-10s pass: %.2f is over budget %.2f\n", b->posting, b->price, b->budget);
        release(b); /* decided: done as well */
        return;
    }
    call_later(b, 20, place_bid); /* POST /bids */
}

/* 2. Locked, or not. */
static void locked(bl_lock *lock, int status, void *data)
{
    bid *b = data;
    if (status != BL_OK) { /* BL_EDONE: another instance already decided */
        printf("%-10s skip: %s\n", b->posting, bl_strerror(status));
        free(b);
        if (--in_flight == 0)
            bl_manager_close(mgr, NULL, NULL);
        return;
    }
    b->lock = lock;
    call_later(b, 10, should_bid); /* GET /price */
}

/* 1. Scan: every posting enters the pipeline at once; they run side by side. */
static void scan(void)
{
    static const struct { const char *id; double price, budget; } feed[] = {
        {"p-100", 12.5, 20}, {"p-101", 99, 50}, {"p-102", 7.25, 10}, {"p-103", 31, 40},
    };
    for (size_t i = 0; i < sizeof feed / sizeof feed[0]; i++) {
        bid *b = calloc(1, sizeof *b);
        if (!b)
            return;
        b->posting = feed[i].id;
        b->price = feed[i].price;
        b->budget = feed[i].budget;
        bl_acquire_opts o;
        bl_acquire_opts_init(&o);
        o.wait_ms = 2000;
        if (bl_acquire(mgr, "ebay", b->posting, &o, locked, b, NULL) != BL_OK) {
            free(b);
            continue;
        }
        in_flight++;
    }
    if (in_flight == 0)
        bl_manager_close(mgr, NULL, NULL);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a connection the server closed: an error, not death */
    loop = EV_DEFAULT;
    bl_loop bl;
    bl_libev_loop(&bl, loop);
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.port = argc > 1 ? atoi(argv[1]) : 6379;
    if (bl_manager_new(&bl, &cfg, &mgr) != BL_OK)
        return 1;
    scan();
    ev_run(loop, 0);
    ev_loop_destroy(loop);
    return 0;
}
