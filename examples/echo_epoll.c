/* echo_epoll.c - bidlock on its own epoll loop, no loop library. Try-lock
 * each "marketplace posting" line of stdin once and print the outcome (see
 * echo_common.h).
 *
 *   printf 'ebay p1\netsy p2\n' | echo_epoll [redis-port]      (default 6379)
 */
#include <bidlock/epoll.h>

#include "echo_common.h"

static void on_stdin(bl_epoll_watch *w, int fd, unsigned events, void *data)
{
    (void)w;
    (void)events;
    echo_read(data, fd);
}

/* Watch stdin only while echo wants input. */
static void want_input(echo *e, int on)
{
    bl_epoll_watch_set(e->user, on ? BL_EPOLL_READ : 0);
}

int main(int argc, char **argv)
{
    bl_epoll *ep = bl_epoll_new();
    if (!ep) {
        perror("bl_epoll_new");
        return 1;
    }
    bl_loop bl;
    bl_epoll_loop(&bl, ep); /* bidlock's hooks into this loop */

    static echo e;
    e.want_input = want_input;
    /* Paused until echo asks; a regular file on stdin works too. */
    e.user = bl_epoll_watch_fd(ep, 0 /* stdin */, 0, on_stdin, &e);
    if (!e.user) {
        perror("bl_epoll_watch_fd");
        return 1;
    }
    if (echo_start(&e, &bl, argc, argv) != 0)
        return 1;
    bl_epoll_run(ep); /* returns once stdin ended and the manager closed */
    bl_epoll_unwatch(e.user);
    bl_epoll_free(ep);
    return e.closed ? 0 : 1;
}
