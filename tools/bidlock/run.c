/* run.c - `bidlock run`: acquire with auto-extension, fork/exec COMMAND,
 * learn that it exited from ev_child (libev reaps on SIGCHLD; nothing here
 * blocks in waitpid), release, and finish with COMMAND's status. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tool.h"

/* fds open when we started: passed on to COMMAND. Ours (Redis sockets) are
 * not: hiredis does not set close-on-exec, so the child marks them. */
static unsigned char inherited_fds[1024 / 8];

/* ---- run: the child ------------------------------------------------------- */

void record_inherited_fds(void)
{
    for (int fd = 3; fd < (int)(8 * sizeof inherited_fds); fd++)
        if (fcntl(fd, F_GETFD) != -1)
            inherited_fds[fd / 8] |= (unsigned char)(1u << (fd % 8));
}

/* In the child, between fork and exec: COMMAND gets a clean signal state,
 * the fds we inherited, and the lock in its environment. Never returns. */
static void exec_command(app *a)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int sigs[] = {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], SIG_DFL); /* SIGPIPE: ignored in bidlock, not in COMMAND */
    for (int fd = 3; fd < (int)(8 * sizeof inherited_fds); fd++)
        if (!(inherited_fds[fd / 8] & (1u << (fd % 8))))
            fcntl(fd, F_SETFD, FD_CLOEXEC); /* EBADF for closed ones: fine */
    char token[24];
    snprintf(token, sizeof token, "%" PRIu64, bl_lock_token(a->lock));
    /* Every posting's key and token, space-separated, in the order given
     * (one each for a single pair). */
    size_t n = bl_lock_postings(a->lock), klen = 1, tlen = 1;
    for (size_t i = 0; i < n; i++)
        klen += strlen(bl_lock_key_at(a->lock, i)) + 1, tlen += 21;
    char *keys = malloc(klen), *tokens = malloc(tlen);
    if (!keys || !tokens) {
        dprintf(2, "bidlock: cannot set COMMAND's environment: out of memory\n");
        _exit(EX_OSERR);
    }
    size_t ko = 0, to = 0;
    for (size_t i = 0; i < n; i++) {
        ko += (size_t)snprintf(keys + ko, klen - ko, "%s%s", i ? " " : "", bl_lock_key_at(a->lock, i));
        to += (size_t)snprintf(tokens + to, tlen - to, "%s%" PRIu64, i ? " " : "",
                               bl_lock_token_at(a->lock, i));
    }
    if (setenv("BIDLOCK_KEY", bl_lock_key(a->lock), 1) || setenv("BIDLOCK_TOKEN", token, 1) ||
        setenv("BIDLOCK_KEYS", keys, 1) || setenv("BIDLOCK_TOKENS", tokens, 1) ||
        setenv("BIDLOCK_HOLDER", bl_manager_holder(a->m), 1)) {
        dprintf(2, "bidlock: cannot set COMMAND's environment: %s\n", strerror(errno));
        _exit(EX_OSERR);
    }
    execvp(a->command[0], a->command);
    int e = errno;
    dprintf(2, "bidlock: cannot run '%s': %s\n", a->command[0], strerror(e));
    _exit(e == ENOENT ? 127 : 126);
}

/* ---- run: the parent ------------------------------------------------------- */

static void on_released(bl_lock *lock, int status, void *data)
{
    app *a = data;
    const char *key = bl_lock_key(lock);
    a->lock = NULL;
    if (a->finishing)
        return; /* the watchdog gave up on this release and said so */
    if (a->signo && a->child == 0 && a->child_code < 0) { /* never ran COMMAND */
        finish(a, 128 + a->signo);
        return;
    }
    if (a->lost) {
        finish(a, EX_SOFTWARE); /* said so when it happened */
        return;
    }
    switch (status) {
    case BL_OK:
        finish(a, a->child_code);
        break;
    case BL_ENOTHELD:
        say("the lock %s was gone when COMMAND exited (expired or taken over): COMMAND may "
            "not have run alone",
            key);
        finish(a, EX_SOFTWARE);
        break;
    default:
        if (a->done_flag && a->child_code == 0) {
            say("COMMAND succeeded but %s was not marked done (%s: %s); it expires within "
                "%" PRId64 " ms",
                key, bl_strerror(status), bl_lock_errmsg(lock), a->ttl_ms);
            finish(a, EX_UNAVAILABLE);
        } else {
            say("could not release %s (%s: %s); it expires within %" PRId64 " ms", key,
                bl_strerror(status), bl_lock_errmsg(lock), a->ttl_ms);
            finish(a, a->child_code);
        }
        break;
    }
}

static void release(app *a, int mark_done)
{
    int rc = mark_done ? bl_release_done(a->lock, on_released, a)
                       : bl_release(a->lock, on_released, a);
    if (rc != BL_OK) { /* not expected: the handle is held */
        say("cannot release: %s", bl_manager_errmsg(a->m));
        finish(a, EX_SOFTWARE);
    }
}

static void on_child(struct ev_loop *loop, ev_child *w, int revents)
{
    (void)revents;
    app *a = w->data;
    ev_child_stop(loop, w);
    ev_timer_stop(loop, &a->grace);
    int st = w->rstatus;
    a->child_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    a->child = 0;
    start_watchdog(a, 0); /* a release Redis never answers must not keep us */
    release(a, a->done_flag && a->child_code == 0 && !a->lost);
}

static void on_grace(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    app *a = w->data;
    if (a->child > 0)
        kill(a->child, SIGKILL);
}

static void on_lost(bl_lock *lock, int status, void *data)
{
    (void)status;
    app *a = data;
    a->lost = 1;
    say("lost the lock %s while COMMAND ran (renewal refused, or Redis unreachable past the "
        "TTL): stopping COMMAND",
        bl_lock_key(lock));
    if (a->child > 0) {
        kill(a->child, SIGTERM);
        ev_timer_start(a->loop, &a->grace);
    }
}

static void on_acquired(bl_lock *lock, int status, void *data)
{
    app *a = data;
    a->acquiring = 0;
    ev_timer_stop(a->loop, &a->watchdog);
    char group[600];
    const char *key = bl_lock_key(lock);
    if (bl_lock_postings(lock) > 1) { /* which one was busy is not known */
        snprintf(group, sizeof group, "one of %s and %zu more", key, bl_lock_postings(lock) - 1);
        key = group;
    }
    switch (status) {
    case BL_OK:
        break;
    case BL_EDONE:
        if (bl_lock_postings(lock) > 1 && bl_lock_done_index(lock) >= 0)
            key = bl_lock_key_at(lock, (size_t)bl_lock_done_index(lock));
        say("%s is done (marked by an earlier --done run): COMMAND not run", key);
        finish(a, 0);
        return;
    case BL_EBUSY:
        say("%s is held by another holder (--wait 0: tried once)", key);
        finish(a, EX_TEMPFAIL);
        return;
    case BL_ETIMEDOUT:
        say("%s is held by another holder: not acquired within %.3g s", key,
            (double)a->wait_ms / 1000.0);
        finish(a, EX_TEMPFAIL);
        return;
    case BL_ECANCELED:
        if (a->signo) {
            say("interrupted by %s while waiting for %s", strsignal(a->signo), key);
            finish(a, 128 + a->signo);
        } else {
            finish(a, EX_UNAVAILABLE); /* the watchdog: said so already */
        }
        return;
    default:
        say("%s", detail(status, bl_lock_errmsg(lock)));
        finish(a, connection_code(status));
        return;
    }
    a->lock = lock;
    if (a->signo) { /* a signal came while the grant was on its way */
        say("interrupted by %s while waiting for %s", strsignal(a->signo), key);
        release(a, 0);
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        say("cannot start COMMAND: fork: %s", strerror(errno));
        a->child_code = EX_OSERR;
        release(a, 0);
        return;
    }
    if (pid == 0)
        exec_command(a);
    a->child = pid;
    ev_child_init(&a->child_w, on_child, pid, 0);
    a->child_w.data = a;
    ev_child_start(a->loop, &a->child_w);
}

/* The acquire hangs: cancel it (its callback ends the run); the release
 * hangs after COMMAND ran: give up on it, with COMMAND's status. */
void run_hung(app *a)
{
    if (a->child_code >= 0) { /* COMMAND ran; the release hangs */
        say("no answer from Redis within %.1f s to the release of %s; it expires within "
            "%" PRId64 " ms%s",
            a->watchdog_s, bl_lock_key(a->lock), a->ttl_ms,
            a->done_flag && a->child_code == 0 ? ", not marked done" : "");
        finish(a, a->lost ? EX_SOFTWARE
                  : a->done_flag && a->child_code == 0 ? EX_UNAVAILABLE
                                                       : a->child_code);
        return; /* closing drops the connection; the release ends with it */
    }
    say("no answer from Redis within %.1f s", a->watchdog_s);
    if (a->acquiring && bl_cancel(a->lock) == BL_OK)
        return; /* the acquire callback ends it (BL_ECANCELED) */
    finish(a, EX_UNAVAILABLE);
}

void run_signal(app *a, int signo, int from_tty)
{
    if (a->child > 0) {
        /* COMMAND decides; we release when it exits. Ctrl-C on a terminal
         * already reached COMMAND if it shares our process group: passing
         * it on would deliver it twice. */
        if (!(from_tty && getpgid(a->child) == getpgrp()))
            kill(a->child, signo);
        return;
    }
    if (!a->signo)
        a->signo = signo;
    if (a->acquiring)
        bl_cancel(a->lock); /* the acquire callback ends it */
    /* else releasing: the release callback ends it, soon */
}

int start_run(app *a)
{
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = a->wait_ms;
    o.ttl_ms = a->ttl_ms;
    o.auto_extend = 1;
    o.on_lost = on_lost;
    o.on_lost_data = a;
    a->child_code = -1;
    int rc = a->npairs > 1
                 ? bl_acquire_many(a->m, a->pairs, a->npairs, &o, on_acquired, a, &a->lock)
                 : bl_acquire(a->m, a->mp, a->posting, &o, on_acquired, a, &a->lock);
    if (rc != BL_OK) {
        say("%s", rc == BL_EINVAL ? bl_manager_errmsg(a->m) : bl_strerror(rc));
        return connection_code(rc);
    }
    a->acquiring = 1;
    ev_timer_init(&a->grace, on_grace, KILL_GRACE_S, 0.);
    a->grace.data = a;
    start_watchdog(a, a->wait_ms);
    return 0;
}
