/* echo_common.h - what echo_libev.c, echo_libuv.c and echo_epoll.c share.
 *
 * Each input line is "marketplace posting". For each line we try the lock
 * once (wait 0), print the outcome, and release it if we got it:
 *
 *   ebay p1: acquired
 *   ebay p1: busy                (another process holds it)
 *   ebay p1: error: BL_ECONN ... (Redis unreachable: fail closed)
 *
 * One line at a time: stdin is paused while a line's lock is in flight, so
 * the output follows the input. At end of input the manager is closed; once
 * its close callback has run, nothing is left on the loop and it returns.
 * The examples differ only in how they watch stdin and run the loop: they
 * call echo_start(), then echo_feed() whenever bytes (or EOF) arrived in
 * e->buf + e->len, and echo calls back want_input(e, on) to start or pause
 * watching stdin. */
#ifndef ECHO_COMMON_H
#define ECHO_COMMON_H

#include <bidlock.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

typedef struct echo {
    bl_manager *m;
    char buf[4096]; /* unprocessed input */
    size_t len;
    int eof, busy, closed;
    char mp[300], posting[300]; /* the line in flight */
    void (*want_input)(struct echo *e, int on);
    void *user; /* the example's own state */
} echo;

static inline void echo_next(echo *e);

static inline void echo_released(bl_lock *lock, int status, void *data)
{
    echo *e = data;
    if (status != BL_OK)
        printf("%s %s: release: %s %s\n", e->mp, e->posting, bl_status_name(status),
               bl_lock_errmsg(lock));
    e->busy = 0;
    echo_next(e);
}

static inline void echo_acquired(bl_lock *lock, int status, void *data)
{
    echo *e = data;
    if (status == BL_OK)
        printf("%s %s: acquired\n", e->mp, e->posting);
    else if (status == BL_EBUSY)
        printf("%s %s: busy\n", e->mp, e->posting);
    else
        printf("%s %s: error: %s %s\n", e->mp, e->posting, bl_status_name(status),
               bl_lock_errmsg(lock));
    fflush(stdout);
    /* A real scanner would bid here, then release. */
    if (status == BL_OK && bl_release(lock, echo_released, e) == BL_OK)
        return;
    e->busy = 0;
    echo_next(e);
}

/* Start the request for one line; 0 if nothing is in flight afterwards. */
static inline int echo_line(echo *e, char *line)
{
    char extra[2];
    if (sscanf(line, "%299s %299s %1s", e->mp, e->posting, extra) != 2) {
        if (strspn(line, " \t\r") != strlen(line)) /* blank lines are fine */
            printf("bad line (want \"marketplace posting\"): %s\n", line);
        return 0;
    }
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = 0; /* try once: busy rather than wait */
    int rc = bl_acquire(e->m, e->mp, e->posting, &o, echo_acquired, e, NULL);
    if (rc != BL_OK) { /* refused at once (bad id): no callback follows */
        printf("%s %s: error: %s %s\n", e->mp, e->posting, bl_status_name(rc),
               bl_manager_errmsg(e->m));
        return 0;
    }
    return 1;
}

static inline void echo_closed(bl_manager *m, void *data)
{
    (void)m;
    ((echo *)data)->closed = 1;
}

/* Handle complete lines until one is in flight; then ask for more input,
 * or close the manager at end of input. */
static inline void echo_next(echo *e)
{
    while (!e->busy) {
        char *nl = memchr(e->buf, '\n', e->len);
        if (!nl && e->len == sizeof e->buf) {
            printf("line too long: skipped\n");
            e->len = 0;
            continue;
        }
        if (!nl && !(e->eof && e->len > 0))
            break;
        size_t n = nl ? (size_t)(nl - e->buf) + 1 : e->len; /* a last line may lack '\n' */
        char line[sizeof e->buf + 1];
        memcpy(line, e->buf, n);
        line[nl ? n - 1 : n] = '\0';
        memmove(e->buf, e->buf + n, e->len - n);
        e->len -= n;
        e->busy = echo_line(e, line);
    }
    fflush(stdout);
    e->want_input(e, !e->busy && !e->eof);
    if (e->eof && !e->busy && e->m) {
        bl_manager_close(e->m, echo_closed, e);
        e->m = NULL;
    }
}

/* n bytes arrived at e->buf + e->len; 0 is end of input, < 0 an error. */
static inline void echo_feed(echo *e, ssize_t n)
{
    if (n > 0)
        e->len += (size_t)n;
    else
        e->eof = 1;
    if (n < 0)
        fprintf(stderr, "stdin: %s\n", strerror(errno));
    echo_next(e);
}

/* One read() per readiness event, so a blocking stdin never blocks us. */
static inline void echo_read(echo *e, int fd)
{
    ssize_t n = read(fd, e->buf + e->len, sizeof e->buf - e->len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    echo_feed(e, n);
}

/* Connect to 127.0.0.1:port (argv[1], default 6379) and start reading. */
static inline int echo_start(echo *e, const bl_loop *loop, int argc, char **argv)
{
    bl_config cfg;
    bl_config_init(&cfg);
    cfg.port = argc > 1 ? atoi(argv[1]) : 6379;
    int rc = bl_manager_new(loop, &cfg, &e->m);
    if (rc != BL_OK) {
        fprintf(stderr, "bl_manager_new: %s\n", bl_strerror(rc));
        return -1;
    }
    e->want_input(e, 1);
    return 0;
}

#endif
