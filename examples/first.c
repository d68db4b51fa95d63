/* first.c - lock a posting, "bid", release. Usage: first [port] */
#include <bidlock.h>
#include <bidlock/libev.h>
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static void released(bl_lock *lock, int status, void *data)
{
    printf("released %s: %s\n", bl_lock_key(lock), bl_strerror(status));
    bl_manager_close(data, NULL, NULL); /* loop ends when the manager is gone */
}

static void acquired(bl_lock *lock, int status, void *data)
{
    if (status != BL_OK) {
        printf("not acquired: %s %s\n", bl_strerror(status), bl_lock_errmsg(lock));
        bl_manager_close(data, NULL, NULL);
        return;
    }
    printf("holding %s - placing the bid\n", bl_lock_key(lock));
    bl_release(lock, released, data);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a connection the server closed: an error, not death */
    struct ev_loop *loop = EV_DEFAULT;
    bl_loop bl;
    bl_libev_loop(&bl, loop);
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.port = argc > 1 ? atoi(argv[1]) : 6379;
    bl_manager *m;
    if (bl_manager_new(&bl, &cfg, &m) != BL_OK)
        return 1;
    bl_acquire(m, "ebay", "posting-42", NULL, acquired, m, NULL);
    ev_run(loop, 0);
    return 0;
}
