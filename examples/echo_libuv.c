/* echo_libuv.c - bidlock on libuv. Try-lock each "marketplace posting" line
 * of stdin once and print the outcome (see echo_common.h).
 *
 *   printf 'ebay p1\netsy p2\n' | echo_libuv [redis-port]      (default 6379)
 *
 * stdin is read with uv_fs_read, as libuv's own uvcat does: it works for a
 * pipe, a terminal and a regular file alike (uv_poll refuses files) and
 * leaves the terminal's blocking mode alone. */
#include <bidlock/libuv.h>
#include <uv.h>

#include "echo_common.h"

static uv_fs_t read_req;
static int reading;

static void on_read(uv_fs_t *req)
{
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    reading = 0;
    if (n < 0)
        errno = (int)-n;
    echo_feed(req->data, n < 0 ? -1 : n);
}

/* Ask for the next chunk when echo wants input. A read in flight cannot
 * be paused; echo just does not ask again until it is ready. */
static void want_input(echo *e, int on)
{
    if (!on || reading)
        return;
    uv_buf_t b = uv_buf_init(e->buf + e->len, (unsigned)(sizeof e->buf - e->len));
    read_req.data = e;
    int rc = uv_fs_read(e->user, &read_req, 0 /* stdin */, &b, 1, -1, on_read);
    if (rc == 0) {
        reading = 1;
    } else {
        errno = -rc;
        echo_feed(e, -1);
    }
}

int main(int argc, char **argv)
{
    uv_loop_t *loop = uv_default_loop();
    bl_loop bl;
    bl_libuv_loop(&bl, loop); /* bidlock's hooks into this loop */

    static echo e;
    e.want_input = want_input;
    e.user = loop;
    if (echo_start(&e, &bl, argc, argv) != 0)
        return 1;
    uv_run(loop, UV_RUN_DEFAULT); /* returns once stdin ended and the manager closed */
    uv_loop_close(loop);          /* every handle is closed by now */
    return e.closed ? 0 : 1;
}
