/* tool.h - what the files of the `bidlock` command share: the state of one
 * invocation and the functions each file offers the others.
 *
 *   main.c   main(): arguments, configuration, the loop, the manager
 *   args.c   the command line (and --help)
 *   msgs.c   messages on stderr and the exit code of a library status
 *   app.c    ending (finish), the watchdog for a Redis that never answers,
 *            signals
 *   run.c    `run`: acquire, fork/exec COMMAND, release
 *   admin.c  `status`, `health`, `cleanup`
 *   acl.c    `acl`: the ACL SETUSER line for a prefix (no connection)
 */
#ifndef BIDLOCK_TOOL_H
#define BIDLOCK_TOOL_H

#include <stdint.h>
#include <sys/types.h>

#include <bidlock.h>
#include <ev.h>

#define MAX_WAIT_MS (30LL * 24 * 3600 * 1000) /* the library's limit: 30 days */
#define DEFAULT_TTL_MS 30000                  /* renewed every 10 s while COMMAND runs */
#define KILL_GRACE_S 10.0                     /* SIGTERM, then SIGKILL after this */
#define ANSWER_SLACK_MS 5000                  /* on top of connect + wait: Redis is hung */

enum sub { SUB_RUN, SUB_STATUS, SUB_HEALTH, SUB_CLEANUP, SUB_LOCKS };

typedef struct app {
    struct ev_loop *loop;
    bl_manager *m;
    enum sub sub;
    /* options */
    const char *url, *prefix;
    int64_t wait_ms, ttl_ms;
    int min_replicas; /* BL_REPLICAS_DEFAULT unless --min-replicas */
    int done_flag;
    /* TLS, as redis-cli spells it: --tls --cacert --cacertdir --cert --key
     * --sni --insecure */
    int tls, insecure;
    const char *cacert, *cacertdir, *cert, *key, *sni;
    int json;        /* locks: --json */
    int64_t longest; /* locks: --longest N (0 = all) */
    const char *mp, *posting; /* the first (or only) pair */
    bl_posting pairs[BL_GROUP_MAX]; /* run: every MARKETPLACE POSTING pair */
    size_t npairs;
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

/* args.c: returns -1 to go on, or the exit code (0 after --help/--version). */
int parse_args(app *a, int argc, char **argv);
/* Print --help on stdout; returns 0. */
int print_help(void);

/* acl.c: `bidlock acl`, which needs no connection; returns the exit code. */
int acl_main(int argc, char **argv);

/* msgs.c */
/* One line on stderr: "bidlock: <what was wrong>". */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* say() plus a pointer to --help; returns EX_USAGE. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "Redis unavailable: Connection refused", "Redis error: NOAUTH ...". */
const char *detail(int status, const char *msg);
/* The exit code for a failed library call or request. */
int connection_code(int status);

/* app.c */
/* Choose the exit code (first call wins) and close the manager. */
void finish(app *a, int code);
/* Give Redis connect timeout + extra_ms + ANSWER_SLACK_MS to answer. */
void start_watchdog(app *a, int64_t extra_ms);
/* SIGINT, SIGTERM, SIGHUP through a signalfd on the loop; 0 or -1. */
int watch_signals(app *a);

/* run.c */
/* Note the fds open at start: COMMAND inherits those, not ours. */
void record_inherited_fds(void);
/* Start `run`: 0, or the exit code if the acquire was refused at once. */
int start_run(app *a);
/* A signal for `run` (app.c has read it). */
void run_signal(app *a, int signo, int from_tty);
/* The watchdog expired during `run`. */
void run_hung(app *a);

/* admin.c: start `status`, `health` or `cleanup`: 0, or the exit code. */
int start_admin(app *a);

#endif
