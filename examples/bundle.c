/* bundle.c - a bundle bid: one bid that covers a job posted on two
 * marketplaces and a third listing sold with it. Either every posting is
 * locked or none; then bid once, with each posting's own fencing token, and
 * mark them all done in the release, so no scanner ever bids on any of them
 * again. Usage: bundle [port]   (the memory backend with port 0) */
#include <bidlock.h>
#include <bidlock/libev.h>
#include <ev.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static const bl_posting bundle[] = {
    {"upwork", "job-881"}, {"freelancer", "job-881-mirror"}, {"ebay", "lot-17"}};

static void released(bl_lock *lock, int status, void *data)
{
    (void)lock;
    printf("released and marked done: %s\n", bl_strerror(status));
    bl_manager_close(data, NULL, NULL); /* the loop ends when the manager is gone */
}

static void acquired(bl_lock *lock, int status, void *data)
{
    bl_manager *m = data;
    if (status == BL_EDONE) {
        int i = bl_lock_done_index(lock);
        printf("already bid on: %s:%s is done\n", bundle[i].marketplace, bundle[i].posting);
        bl_manager_close(m, NULL, NULL);
        return;
    }
    if (status != BL_OK) {
        printf("bundle not locked: %s %s\n", bl_strerror(status), bl_lock_errmsg(lock));
        bl_manager_close(m, NULL, NULL);
        return;
    }
    for (size_t i = 0; i < bl_lock_postings(lock); i++)
        printf("holding %s (token %" PRIu64 ")\n", bl_lock_key_at(lock, i),
               bl_lock_token_at(lock, i));
    printf("placing one bid for the bundle\n");
    bl_release_done(lock, released, m);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    struct ev_loop *loop = EV_DEFAULT;
    bl_loop bl;
    bl_libev_loop(&bl, loop);
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.port = argc > 1 ? atoi(argv[1]) : 6379;
    if (cfg.port == 0)
        cfg.backend = BL_BACKEND_MEMORY;
    bl_manager *m;
    if (bl_manager_new(&bl, &cfg, &m) != BL_OK)
        return 1;
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 5000; /* wait while another scanner holds one of them */
    o.auto_extend = 1;
    if (bl_acquire_many(m, bundle, sizeof bundle / sizeof bundle[0], &o, acquired, m, NULL) !=
        BL_OK) {
        fprintf(stderr, "bundle: %s\n", bl_manager_errmsg(m));
        return 1;
    }
    ev_run(loop, 0);
    return 0;
}
