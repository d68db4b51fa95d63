/* bidlock_cli.c - the `bidlock` command: flock(1) across machines, on Redis.
 *
 *   bidlock run [--url URL] [--wait SECONDS] [--ttl MS] [--prefix P]
 *               [--min-replicas N|auto] [--done] MARKETPLACE POSTING -- COMMAND [ARG...]
 *   bidlock status  [--url URL] [--prefix P] MARKETPLACE POSTING
 *   bidlock health  [--url URL]
 *   bidlock cleanup [--url URL] [--prefix P]
 *
 * A program on a libev loop like any other bidlock user: `run` acquires with
 * auto-extension, fork/execs COMMAND, learns that it exited from ev_child
 * (libev reaps on SIGCHLD; nothing here blocks in waitpid), releases, and
 * exits with COMMAND's status. Every exit goes through finish(): close the
 * manager, stop our watchers, let ev_run return, free the loop.
 *
 * Exit codes (sysexits.h): 64 usage / invalid input, 69 Redis unavailable,
 * 70 lock lost while COMMAND ran, 75 lock not acquired within --wait, 71 out
 * of memory or fork failed, else COMMAND's status (128+N if killed by N).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bidlock.h>
#include <bidlock/libev.h>
#include <ev.h>

#define MAX_WAIT_MS (30LL * 24 * 3600 * 1000) /* the library's limit: 30 days */
#define DEFAULT_TTL_MS 30000                  /* renewed every 10 s while COMMAND runs */
#define KILL_GRACE_S 10.0                     /* SIGTERM, then SIGKILL after this */
#define ANSWER_SLACK_MS 5000                  /* on top of connect + wait: Redis is hung */

static const char usage_text[] =
    "Usage:\n"
    "  bidlock run [--url URL] [--wait SECONDS] [--ttl MS] [--prefix P]\n"
    "              [--min-replicas N|auto] [--done]\n"
    "              MARKETPLACE POSTING -- COMMAND [ARG...]\n"
    "  bidlock status  [--url URL] [--prefix P] MARKETPLACE POSTING\n"
    "  bidlock health  [--url URL]\n"
    "  bidlock cleanup [--url URL] [--prefix P]\n"
    "  bidlock --help | --version\n";

static const char help_text[] =
    "\n"
    "Distributed locks on Redis, one per (MARKETPLACE, POSTING): like flock(1),\n"
    "but across machines. The lock is the Redis key PREFIX:MARKETPLACE:POSTING.\n"
    "\n"
    "Commands\n"
    "  run      Acquire the lock, waiting up to --wait seconds; run COMMAND while\n"
    "           holding it (the lease is renewed every TTL/3 while it runs);\n"
    "           release it when COMMAND exits; exit with COMMAND's status.\n"
    "           COMMAND's environment gets:\n"
    "             BIDLOCK_KEY     the lock's key\n"
    "             BIDLOCK_HOLDER  this holder's id, HOSTNAME:PID:UUID\n"
    "             BIDLOCK_TOKEN   the fencing token (decimal): it grows with every\n"
    "                             acquisition of this lock, so a store that rejects\n"
    "                             a token lower than the last one it saw stops a\n"
    "                             holder that was paused past its TTL\n"
    "           SIGINT, SIGTERM and SIGHUP sent to bidlock are passed on to COMMAND;\n"
    "           the lock is released once COMMAND has exited. If the lock is lost\n"
    "           while COMMAND runs (renewal refused, or Redis unreachable until the\n"
    "           TTL ran out), COMMAND gets SIGTERM (SIGKILL 10 s later) and bidlock\n"
    "           exits 70. A release Redis does not answer is given up after the\n"
    "           connect timeout + 5 s (the lock then expires with its TTL).\n"
    "  status   Print the lock's state as one JSON object:\n"
    "           {\"key\":\"...\",\"held\":true|false,\"holder\":\"...\"|null,\n"
    "            \"pttl_ms\":N|null,\"done\":true|false}\n"
    "  health   PING Redis; print the round-trip time.\n"
    "  cleanup  Delete every lock under the prefix, whoever holds it (done\n"
    "           markers and fencing counters stay); print how many.\n"
    "\n"
    "Options\n"
    "  --url URL       redis://[[USER]:PASSWORD@]HOST[:PORT][/DB],\n"
    "                  unix:///PATH/TO/SOCKET[?db=N] or\n"
    "                  redis-sentinel://[[USER]:PASSWORD@]HOST[:PORT]\n"
    "                                   [,HOST[:PORT]...][/DB]#NAME\n"
    "                  (Sentinels, port 26379 by default, asked for the master NAME;\n"
    "                  USER/PASSWORD are the master's, the Sentinels' own come from\n"
    "                  REDIS_SENTINEL_USERNAME/REDIS_SENTINEL_PASSWORD). HOST must be\n"
    "                  an IP address or localhost. Without --url the connection comes\n"
    "                  from the environment, exactly as the library reads it:\n"
    "                  REDIS_URL, else REDIS_HOST, REDIS_PORT, REDIS_DB,\n"
    "                  REDIS_USERNAME, REDIS_PASSWORD; REDIS_SENTINEL_*,\n"
    "                  BIDLOCK_MIN_REPLICAS and BIDLOCK_REPLICA_TIMEOUT_MS;\n"
    "                  USE_REDIS_LOCKS and BIDLOCK_ENV/ENV choose the backend\n"
    "                  (default: Redis on 127.0.0.1:6379).\n"
    "  --wait SECONDS  How long run waits for a busy lock; decimals allowed\n"
    "                  (0.5). 0 = try once. Default 10.\n"
    "  --ttl MS        Lease length in milliseconds (3 .. 30 days). Default 30000.\n"
    "                  Renewed while COMMAND runs; if bidlock dies, others wait at\n"
    "                  most this long.\n"
    "  --prefix P      Key prefix. Default bid_lock.\n"
    "  --min-replicas N|auto\n"
    "                  The lock counts only once N replicas (auto: those connected)\n"
    "                  acknowledge it (WAIT). Default: auto with a redis-sentinel://\n"
    "                  URL, else 0 (off). Not in this version yet: only 0 is\n"
    "                  accepted.\n"
    "  --done          When COMMAND exits 0, mark the posting done (in the same\n"
    "                  atomic step as the release): later runs on it, from any\n"
    "                  machine, do not run COMMAND; they say so and exit 0.\n"
    "                  Markers last 7 days.\n"
    "  -h, --help      This text.   --version  The version.\n"
    "\n"
    "Exit status\n"
    "  0..   COMMAND's own status (128+N if a signal N ended it); 0 when the\n"
    "        posting was already done and COMMAND was not run\n"
    "  64    bad usage or invalid input (empty id, ':' in MARKETPLACE, whitespace,\n"
    "        malformed URL or environment, bad number)\n"
    "  69    Redis unavailable (unreachable, refused, or it did not answer)\n"
    "  70    the lock was lost while COMMAND ran, or was gone when it exited\n"
    "  71    out of memory, or COMMAND could not be started (fork failed)\n"
    "  75    lock not acquired within --wait (held by someone else)\n"
    "  126/127  COMMAND not executable / not found\n"
    "Errors are one line on stderr, starting with \"bidlock: \".\n"
    "\n"
    "Examples\n"
    "  bidlock run --wait 30 ebay 42 -- ./place-bid 42\n"
    "  bidlock run --done --wait 0 ebay 42 -- ./place-bid 42   # once, ever\n"
    "  REDIS_URL=redis://10.0.0.5:6379/2 bidlock status ebay 42\n";

/* ---- state ----------------------------------------------------------------- */

enum sub { SUB_RUN, SUB_STATUS, SUB_HEALTH, SUB_CLEANUP };

typedef struct app {
    struct ev_loop *loop;
    bl_manager *m;
    enum sub sub;
    /* options */
    const char *url, *prefix;
    int64_t wait_ms, ttl_ms;
    int min_replicas; /* BL_REPLICAS_DEFAULT unless --min-replicas */
    int done_flag;
    const char *mp, *posting;
    char **command;
    uint32_t connect_timeout_ms;
    /* progress */
    int finishing, exit_code;
    bl_lock *lock;     /* run: from acquire until release */
    int acquiring;
    pid_t child;       /* run: > 0 while COMMAND runs */
    int child_code;    /* COMMAND's status as an exit code */
    int lost;
    int signo;         /* a signal that stopped us before COMMAND ran */
    double watchdog_s; /* its delay */
    ev_child child_w;
    int sigfd;         /* signalfd for SIGINT, SIGTERM, SIGHUP */
    ev_io sig_w;
    ev_timer watchdog; /* Redis did not answer at all */
    ev_timer grace;    /* SIGKILL after SIGTERM */
} app;

/* fds open when we started: passed on to COMMAND. Ours (Redis sockets) are
 * not: hiredis does not set close-on-exec, so the child marks them. */
static unsigned char inherited_fds[1024 / 8];

/* ---- messages -------------------------------------------------------------- */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One line on stderr: "bidlock: <what was wrong>". */
static void say(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    for (char *p = line; *p; p++) /* one line, whatever the message holds */
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "bidlock: %s\n", line);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    say("%s (see 'bidlock --help')", msg);
    return EX_USAGE;
}

/* JSON string: quotes, backslashes and control characters escaped; valid
 * UTF-8 passes through; any other byte becomes \u00XX so the output stays
 * valid JSON whatever Redis holds. */
static void json_string(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    while (*p) {
        unsigned char c = *p;
        int n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                : (c & 0xf8) == 0xf0 ? 4 : 0;
        for (int i = 1; i < n; i++)
            if ((p[i] & 0xc0) != 0x80)
                n = 0;
        if (n > 1 && c >= 0xc2 && c <= 0xf4) { /* no overlong leads, <= U+10FFFF */
            fwrite(p, 1, (size_t)n, f);
            p += n;
            continue;
        }
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20 || c >= 0x80)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
        p++;
    }
    fputc('"', f);
}

/* "Redis unavailable: Connection refused", "Redis error: NOAUTH ...". */
static const char *detail(int status, const char *msg)
{
    static char buf[512];
    const char *what = status == BL_ECONN    ? "Redis unavailable"
                       : status == BL_EREDIS ? "Redis error"
                                             : bl_strerror(status);
    if (msg && *msg)
        snprintf(buf, sizeof buf, "%s: %s", what, msg);
    else
        snprintf(buf, sizeof buf, "%s", status == BL_ECONN ? "Redis unavailable" : bl_strerror(status));
    return buf;
}

/* ---- ending ---------------------------------------------------------------- */

static void on_closed(bl_manager *m, void *data)
{
    (void)m;
    app *a = data;
    a->m = NULL;
    ev_io_stop(a->loop, &a->sig_w);
    if (a->sigfd >= 0)
        close(a->sigfd);
    a->sigfd = -1;
    ev_child_stop(a->loop, &a->child_w);
    ev_timer_stop(a->loop, &a->watchdog);
    ev_timer_stop(a->loop, &a->grace);
    /* Nothing of ours is active now: ev_run returns. */
}

/* Choose the exit code (first call wins) and close the manager. */
static void finish(app *a, int code)
{
    if (a->finishing)
        return;
    a->finishing = 1;
    a->exit_code = code;
    ev_timer_stop(a->loop, &a->watchdog);
    if (bl_manager_close(a->m, on_closed, a) != BL_OK)
        on_closed(a->m, a);
}

static int connection_code(int status)
{
    switch (status) {
    case BL_ECONN:
    case BL_EREDIS: return EX_UNAVAILABLE;
    case BL_EINVAL: return EX_USAGE;
    case BL_ENOMEM: return EX_OSERR;
    default: return EX_SOFTWARE;
    }
}

static void on_hung(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    app *a = w->data;
    if (a->sub == SUB_RUN && a->child_code >= 0) { /* COMMAND ran; the release hangs */
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
    if (a->sub == SUB_RUN && a->acquiring && bl_cancel(a->lock) == BL_OK)
        return; /* the acquire callback ends it (BL_ECANCELED) */
    finish(a, EX_UNAVAILABLE);
}

static void start_watchdog(app *a, int64_t extra_ms)
{
    a->watchdog_s = (double)(a->connect_timeout_ms + (uint64_t)extra_ms + ANSWER_SLACK_MS) / 1000.0;
    ev_timer_init(&a->watchdog, on_hung, a->watchdog_s, 0.);
    a->watchdog.data = a;
    ev_timer_start(a->loop, &a->watchdog);
}

/* ---- run: the child ------------------------------------------------------- */

static void record_inherited_fds(void)
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
    if (setenv("BIDLOCK_KEY", bl_lock_key(a->lock), 1) || setenv("BIDLOCK_TOKEN", token, 1) ||
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
    const char *key = bl_lock_key(lock);
    switch (status) {
    case BL_OK:
        break;
    case BL_EDONE:
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

static void on_signal(app *a, int signo, int from_tty)
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
    if (a->sub == SUB_RUN && a->acquiring) {
        bl_cancel(a->lock); /* the acquire callback ends it */
        return;
    }
    if (a->sub != SUB_RUN)
        finish(a, 128 + signo);
    /* run, releasing: the release callback ends it, soon */
}

/* A signalfd rather than ev_signal: its siginfo tells a terminal's Ctrl-C
 * (sent by the kernel to the whole foreground group) from a kill(1). */
static void on_sigfd(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    app *a = w->data;
    struct signalfd_siginfo si;
    while (a->sigfd >= 0 && read(a->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
        on_signal(a, (int)si.ssi_signo, si.ssi_code == SI_KERNEL);
}

static int watch_signals(app *a)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL); /* COMMAND gets an empty mask back */
    a->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (a->sigfd < 0)
        return -1;
    ev_io_init(&a->sig_w, on_sigfd, a->sigfd, EV_READ);
    a->sig_w.data = a;
    ev_io_start(a->loop, &a->sig_w);
    return 0;
}

static int start_run(app *a)
{
    bl_acquire_opts o;
    bl_acquire_opts_init(&o);
    o.wait_ms = a->wait_ms;
    o.ttl_ms = a->ttl_ms;
    o.auto_extend = 1;
    o.on_lost = on_lost;
    o.on_lost_data = a;
    a->child_code = -1;
    int rc = bl_acquire(a->m, a->mp, a->posting, &o, on_acquired, a, &a->lock);
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

/* ---- status, health, cleanup ------------------------------------------------ */

static void on_inspected(bl_manager *m, const bl_lock_info *info, void *data)
{
    (void)m;
    app *a = data;
    if (a->finishing)
        return;
    if (info->status != BL_OK) {
        say("%s", detail(info->status, info->errmsg));
        finish(a, connection_code(info->status));
        return;
    }
    char *key = malloc(strlen(a->prefix) + strlen(a->mp) + strlen(a->posting) + 3);
    if (!key) {
        say("out of memory");
        finish(a, EX_OSERR);
        return;
    }
    sprintf(key, "%s:%s:%s", a->prefix, a->mp, a->posting);
    fputs("{\"key\":", stdout);
    json_string(stdout, key);
    printf(",\"held\":%s,\"holder\":", info->held ? "true" : "false");
    if (info->held && info->holder)
        json_string(stdout, info->holder);
    else
        fputs("null", stdout);
    if (info->held && info->pttl_ms >= 0)
        printf(",\"pttl_ms\":%" PRId64, info->pttl_ms);
    else
        fputs(",\"pttl_ms\":null", stdout);
    printf(",\"done\":%s}\n", info->done ? "true" : "false");
    free(key);
    finish(a, 0);
}

static void on_health(bl_manager *m, const bl_health *h, void *data)
{
    (void)m;
    app *a = data;
    if (a->finishing)
        return;
    if (h->status != BL_OK) {
        say("%s", detail(h->status, h->errmsg));
        finish(a, connection_code(h->status));
        return;
    }
    printf("%s: ok, round trip %.3f ms\n", h->backend, h->latency_ms);
    finish(a, 0);
}

static void on_cleaned(bl_manager *m, int status, uint64_t removed, void *data)
{
    (void)m;
    app *a = data;
    if (a->finishing)
        return;
    if (status != BL_OK) {
        say("cleanup stopped after removing %" PRIu64 " locks: %s", removed,
            detail(status, ""));
        finish(a, connection_code(status));
        return;
    }
    printf("removed %" PRIu64 " lock%s under prefix %s\n", removed, removed == 1 ? "" : "s",
           a->prefix);
    finish(a, 0);
}

static int start_admin(app *a)
{
    int rc;
    switch (a->sub) {
    case SUB_STATUS: rc = bl_inspect(a->m, a->mp, a->posting, on_inspected, a); break;
    case SUB_HEALTH: rc = bl_health_check(a->m, on_health, a); break;
    default: rc = bl_cleanup(a->m, 0, on_cleaned, a); break;
    }
    if (rc != BL_OK) {
        say("%s", rc == BL_EINVAL ? bl_manager_errmsg(a->m) : bl_strerror(rc));
        return connection_code(rc);
    }
    start_watchdog(a, 0);
    return 0;
}

/* ---- arguments ------------------------------------------------------------- */

/* SECONDS: digits with an optional fraction ("10", "2.5", ".5", "0"); no
 * sign or exponent. Rounded up to whole ms, so 0.0001 still waits. */
static int parse_seconds(const char *s, int64_t *ms)
{
    int64_t whole = 0, frac = 0;
    int digits = 0, scale = 100, rest = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++, digits++)
        if ((whole = whole * 10 + (*p - '0')) > MAX_WAIT_MS / 1000)
            return -2;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (scale)
                frac += (*p - '0') * scale, scale /= 10;
            else
                rest |= *p != '0';
        }
    if (*p || digits == 0)
        return -1;
    *ms = whole * 1000 + frac + (rest ? 1 : 0);
    return *ms > MAX_WAIT_MS ? -2 : 0;
}

static int parse_ms(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    int64_t v = 0;
    if (!*s)
        return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if ((v = v * 10 + (*p - '0')) > hi)
            return -2;
    }
    if (v < lo)
        return -2;
    *out = v;
    return 0;
}

/* Returns -1 to go on, or the exit code (0 after --help/--version). */
static int parse_args(app *a, int argc, char **argv)
{
    if (argc < 2)
        return usage_error("no command given: run, status, health or cleanup");
    const char *s = argv[1];
    if (!strcmp(s, "--help") || !strcmp(s, "-h") || !strcmp(s, "help")) {
        printf("%s%s", usage_text, help_text);
        return 0;
    }
    if (!strcmp(s, "--version")) {
        printf("bidlock %s\n", BIDLOCK_VERSION);
        return 0;
    }
    int npos;
    if (!strcmp(s, "run"))
        a->sub = SUB_RUN, npos = 2;
    else if (!strcmp(s, "status"))
        a->sub = SUB_STATUS, npos = 2;
    else if (!strcmp(s, "health"))
        a->sub = SUB_HEALTH, npos = 0;
    else if (!strcmp(s, "cleanup"))
        a->sub = SUB_CLEANUP, npos = 0;
    else
        return usage_error("unknown command '%s': expected run, status, health or cleanup", s);

    const char *pos[2] = {NULL, NULL}, *wait = NULL, *ttl = NULL, *replicas = NULL;
    int n = 0, i = 2;
    for (; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--")) {
            i++;
            break;
        }
        if (arg[0] == '-' && arg[1]) {
            if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
                printf("%s%s", usage_text, help_text);
                return 0;
            }
            if (!strcmp(arg, "--done") && a->sub == SUB_RUN) {
                a->done_flag = 1;
                continue;
            }
            /* --name VALUE or --name=VALUE */
            static const char *const names[] = {"--url", "--prefix", "--wait", "--ttl",
                                                "--min-replicas"};
            const char *val = NULL;
            int which = -1;
            for (int k = 0; k < 5; k++) {
                size_t len = strlen(names[k]);
                if (!strncmp(arg, names[k], len) && (arg[len] == '\0' || arg[len] == '=')) {
                    which = k;
                    val = arg[len] == '=' ? arg + len + 1 : NULL;
                }
            }
            int allowed = which == 0 || (which == 1 && a->sub != SUB_HEALTH) ||
                          (which >= 2 && a->sub == SUB_RUN);
            if (which < 0 || !allowed)
                return usage_error("unknown option '%s' for '%s'", arg, s);
            if (!val) {
                if (i + 1 >= argc)
                    return usage_error("%s needs a value", names[which]);
                val = argv[++i];
            }
            const char **slot[] = {&a->url, &a->prefix, &wait, &ttl, &replicas};
            *slot[which] = val;
            continue;
        }
        if (n == npos)
            break; /* run: COMMAND without "--" */
        pos[n++] = arg;
    }
    if (n < npos)
        return usage_error("'%s' needs MARKETPLACE and POSTING", s);
    if (a->sub == SUB_RUN) {
        if (i >= argc)
            return usage_error("no COMMAND: bidlock run MARKETPLACE POSTING -- COMMAND [ARG...]");
        a->command = argv + i;
    } else if (i < argc) {
        return usage_error("unexpected argument '%s' for '%s'", argv[i], s);
    }
    a->mp = pos[0];
    a->posting = pos[1];
    a->wait_ms = 10000;
    a->ttl_ms = DEFAULT_TTL_MS;
    int rc;
    if (wait && (rc = parse_seconds(wait, &a->wait_ms)) != 0)
        return usage_error("--wait '%s' is %s", wait,
                           rc == -1 ? "not a number of seconds (like 10, 2.5 or 0)"
                                    : "more than 30 days");
    if (ttl && (rc = parse_ms(ttl, 3, MAX_WAIT_MS, &a->ttl_ms)) != 0)
        return usage_error("--ttl '%s' is %s", ttl,
                           rc == -1 ? "not a whole number of milliseconds"
                                    : "out of range (3 ms .. 30 days)");
    a->min_replicas = BL_REPLICAS_DEFAULT;
    int64_t nrep;
    if (replicas && !strcmp(replicas, "auto"))
        a->min_replicas = BL_REPLICAS_AUTO;
    else if (replicas && (rc = parse_ms(replicas, 0, 64, &nrep)) != 0)
        return usage_error("--min-replicas '%s' is %s", replicas,
                           rc == -1 ? "not a number or 'auto'" : "out of range (0 .. 64)");
    else if (replicas)
        a->min_replicas = (int)nrep;
    return -1;
}

/* --url, else the environment; then the prefix; then the library's check. */
static int make_config(app *a, bl_config *cfg)
{
    char why[512];
    bl_config_init(cfg);
    if (a->url) {
        cfg->url = a->url;
        cfg->backend = BL_BACKEND_REDIS;
        /* A password has no place on a command line: with a Sentinel
         * --url, the Sentinels' credentials still come from the
         * environment (with any other --url it is not read at all). */
        int sentinel = strncasecmp(a->url, "redis-sentinel://", 17) == 0;
        const char *su = sentinel ? getenv("REDIS_SENTINEL_USERNAME") : NULL;
        const char *sp = sentinel ? getenv("REDIS_SENTINEL_PASSWORD") : NULL;
        if ((su && !*su) || (sp && !*sp)) {
            say("environment: REDIS_SENTINEL_%s is set but empty", su && !*su ? "USERNAME"
                                                                             : "PASSWORD");
            return EX_USAGE;
        }
        if (su || sp) {
            cfg->sentinel_username = su;
            cfg->sentinel_password = sp;
        }
    } else if (bl_config_from_env(cfg, why, sizeof why) != BL_OK) {
        say("environment: %s", why);
        return EX_USAGE;
    }
    if (a->prefix)
        cfg->key_prefix = a->prefix;
    a->prefix = cfg->key_prefix;
    if (a->min_replicas != BL_REPLICAS_DEFAULT)
        cfg->min_replicas = a->min_replicas;
    if (bl_config_validate(cfg, why, sizeof why) != BL_OK) {
        if (a->url && !strncmp(why, "url: ", 5))
            say("--url: %s", why + 5);
        else if (a->min_replicas != BL_REPLICAS_DEFAULT && !strncmp(why, "min_replicas", 12))
            say("--min-replicas: %s", why);
        else if (a->prefix && strstr(why, "key_prefix"))
            say("--prefix: %s", why);
        else
            say("%s", why);
        return EX_USAGE;
    }
    if (cfg->backend == BL_BACKEND_MEMORY)
        say("warning: the environment selects the in-memory backend (USE_REDIS_LOCKS / "
            "BIDLOCK_ENV / ENV): this lock excludes nothing outside this process");
    a->connect_timeout_ms = cfg->connect_timeout_ms;
    return 0;
}

int main(int argc, char **argv)
{
    record_inherited_fds();
    app a;
    memset(&a, 0, sizeof a);
    a.sigfd = -1;
    int rc = parse_args(&a, argc, argv);
    if (rc >= 0)
        return rc;
    bl_config cfg;
    if ((rc = make_config(&a, &cfg)) != 0)
        return rc;
    /* A write to a dropped connection must be an error, not our death. */
    signal(SIGPIPE, SIG_IGN);

    a.loop = EV_DEFAULT; /* the default loop: ev_child needs it */
    bl_loop bl;
    bl_libev_loop(&bl, a.loop);
    rc = bl_manager_new(&bl, &cfg, &a.m);
    if (rc != BL_OK) {
        say("cannot start: %s", bl_strerror(rc));
        ev_loop_destroy(a.loop);
        return connection_code(rc);
    }
    if (watch_signals(&a) != 0) {
        say("cannot watch signals: signalfd: %s", strerror(errno));
        rc = EX_OSERR;
    } else {
        rc = a.sub == SUB_RUN ? start_run(&a) : start_admin(&a);
    }
    if (rc != 0)
        finish(&a, rc);
    ev_run(a.loop, 0);
    ev_loop_destroy(a.loop);
    fflush(stdout);
    return a.exit_code;
}
