/* echo.c - type "marketplace posting" lines; each one tries its lock once
 * and prints the outcome. Locks you got are held until end of input (they
 * expire after 60 s otherwise), so a second echo in another terminal sees
 * them busy:
 *
 *   $ ./echo 6379
 *   ebay 42
 *   ebay 42: acquired bid_lock:ebay:42 (token 1795...)
 *   ebay 42
 *   ebay 42: busy - someone holds it
 *
 * stdin is read through the loop (ev_io, non-blocking), like any socket.
 */
#include <bidlock.h>
#include <bidlock/libev.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bl_manager *mgr;
static char line[1024];
static size_t used;
static int pending, eof; /* acquires not answered yet; input ended */

/* At end of input, once every line has its answer: release all, end. */
static void maybe_close(void)
{
    if (eof && pending == 0)
        bl_manager_close(mgr, NULL, NULL);
}

static void acquired(bl_lock *lock, int status, void *data)
{
    char *what = data; /* "marketplace posting", ours to free */
    if (status == BL_OK)
        printf("%s: acquired %s (token %" PRIu64 ")\n", what, bl_lock_key(lock),
               bl_lock_token(lock)); /* held: bl_manager_close releases it */
    else if (status == BL_EBUSY)
        printf("%s: busy - someone holds it\n", what);
    else
        printf("%s: %s %s\n", what, bl_strerror(status), bl_lock_errmsg(lock));
    fflush(stdout);
    free(what);
    pending--;
    maybe_close();
}

static void one_line(char *s)
{
    char mp[300], posting[300];
    if (sscanf(s, "%299s %299s", mp, posting) != 2) {
        if (*s)
            printf("want: marketplace posting\n");
        return;
    }
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 0; /* try once */
    o.ttl_ms = 60000;
    char *what = malloc(strlen(mp) + strlen(posting) + 2);
    if (!what)
        return;
    sprintf(what, "%s %s", mp, posting);
    if (bl_acquire(mgr, mp, posting, &o, acquired, what, NULL) != BL_OK) {
        printf("%s: %s\n", what, bl_manager_errmsg(mgr)); /* e.g. ':' in marketplace */
        free(what);
        return;
    }
    pending++;
}

static void on_stdin(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    ssize_t n = read(w->fd, line + used, sizeof line - 1 - used);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) { /* end of input */
        ev_io_stop(loop, w);
        eof = 1;
        maybe_close();
        return;
    }
    used += (size_t)n;
    line[used] = '\0';
    char *start = line, *nl;
    while ((nl = strchr(start, '\n'))) {
        *nl = '\0';
        one_line(start);
        start = nl + 1;
    }
    used -= (size_t)(start - line);
    memmove(line, start, used);
    if (used == sizeof line - 1)
        used = 0; /* a line too long for us: drop it */
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
    if (bl_manager_new(&bl, &cfg, &mgr) != BL_OK)
        return 1;
    int flags = fcntl(0, F_GETFL); /* stdin may be the shell's tty: put it back after */
    fcntl(0, F_SETFL, flags | O_NONBLOCK);
    ev_io in;
    ev_io_init(&in, on_stdin, 0, EV_READ);
    ev_io_start(loop, &in);
    ev_run(loop, 0);
    fcntl(0, F_SETFL, flags);
    ev_loop_destroy(loop);
    return 0;
}
