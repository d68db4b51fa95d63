/* echo_libev.c - bidlock on libev. Try-lock each "marketplace posting" line
 * of stdin once and print the outcome (see echo_common.h).
 *
 *   printf 'ebay p1\netsy p2\n' | echo_libev [redis-port]      (default 6379)
 */
#include <bidlock/libev.h>
#include <ev.h>

#include "echo_common.h"

static ev_io stdin_watcher;

static void on_stdin(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    echo_read(w->data, w->fd);
}

/* Watch stdin only while echo wants input. */
static void want_input(echo *e, int on)
{
    if (on)
        ev_io_start(e->user, &stdin_watcher);
    else
        ev_io_stop(e->user, &stdin_watcher);
}

int main(int argc, char **argv)
{
    struct ev_loop *loop = EV_DEFAULT;
    bl_loop bl;
    bl_libev_loop(&bl, loop); /* bidlock's hooks into this loop */

    static echo e;
    e.want_input = want_input;
    e.user = loop;
    ev_io_init(&stdin_watcher, on_stdin, 0 /* stdin */, EV_READ);
    stdin_watcher.data = &e;
    if (echo_start(&e, &bl, argc, argv) != 0)
        return 1;
    ev_run(loop, 0); /* returns once stdin ended and the manager closed */
    return e.closed ? 0 : 1;
}
