/* rsrv.h - private Redis-protocol servers for the test harness and the
 * bench: start a server binary (redis-server, redis-sentinel,
 * valkey-server, ...) as a child on a free 127.0.0.1 port, wait until it
 * answers PING, kill it by pid, start it again on the same port.
 *
 * No Criterion and no exit(): every call returns a status, and the calls
 * that can fail for a reason worth reading leave a sentence in an err
 * buffer (the harness turns them into assertions, the bench prints them).
 * Everything here blocks; it is test code, never part of the library.
 *
 * Two levels:
 *   - steps, for any server and any topology (a sentinel bed, replicas):
 *     rsrv_free_port, rsrv_launch / rsrv_spawn, rsrv_wait_ping, rsrv_kill_pid;
 *   - rsrv_start & co., one throw-away redis-server with the usual test
 *     settings (no persistence, its own temporary --dir). */
#ifndef BIDLOCK_RSRV_H
#define BIDLOCK_RSRV_H

#include <stddef.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

/* ---- which server ---------------------------------------------------------- */

/* The data server binary every test and the bench start: $BIDLOCK_TEST_SERVER
 * (a path or a name on PATH, e.g. /usr/bin/valkey-server), else
 * "redis-server". */
const char *rsrv_server_bin(void);
/* The Sentinel binary: $BIDLOCK_TEST_SENTINEL, else the server binary with
 * its "-server" suffix turned into "-sentinel" (valkey-server ->
 * valkey-sentinel) when $BIDLOCK_TEST_SERVER is set, else "redis-sentinel".
 * Owned by this module (a static buffer); call it from one thread. */
const char *rsrv_sentinel_bin(void);

/* ---- steps ---------------------------------------------------------------- */

/* A 127.0.0.1 TCP port that nothing listened on a moment ago (bound to port
 * 0 and closed again), or -1. A server started on it may still lose a race
 * for it: rsrv_start tries again with another one. */
int rsrv_free_port(void);

/* fork + execvp(argv[0], argv): the child's stdin is /dev/null, its stdout
 * and stderr go to log_path (appended) or to /dev/null, and it is SIGKILLed
 * when this process dies (PR_SET_PDEATHSIG), so a crashed test or bench
 * leaves no server behind. Returns the child's pid, or -1 if fork failed.
 * A binary that is not installed exits with status 127 (see rsrv_wait_ping). */
pid_t rsrv_spawn(const char *const *argv, const char *log_path);

/* Start `bin` [conf] --port PORT --bind 127.0.0.1 [extra...] with
 * rsrv_spawn, and return at once with its pid (or -1). conf (a config file
 * path, first argument as redis-server and redis-sentinel want it) and extra
 * (a NULL-terminated argument list) may be NULL. Add nothing else: a
 * sentinel refuses options a data server takes. */
pid_t rsrv_launch(const char *bin, const char *conf, int port, const char *const *extra,
                  const char *log_path);

enum rsrv_status {
    RSRV_OK = 0,
    RSRV_TIMEOUT = -1,   /* no answer within the bound */
    RSRV_EXITED = -2,    /* the process ended first (e.g. its port was taken) */
    RSRV_NOT_FOUND = -3, /* it exited with 127: the binary is not installed */
    RSRV_PORT_TAKEN = -4, /* another server answers on the port */
};

/* Wait, at most timeout_ms, until 127.0.0.1:port answers PING (PONG, or
 * NOAUTH from a server that wants a password we were not given: it is up
 * either way); password (may be NULL) is sent with AUTH first. If pid > 0,
 * the answer must be that process's (INFO's process_id, where INFO answers):
 * two callers can pick the same free port at once, and the loser's server
 * exits while the winner's answers. It stops early when pid exits (it is
 * reaped then). */
int rsrv_wait_ping(int port, pid_t pid, const char *password, int timeout_ms);

/* SIGKILL pid and reap it; nothing for pid <= 0. SIGKILL also ends a
 * SIGSTOPped server. */
void rsrv_kill_pid(pid_t pid);

/* A new private directory /tmp/bidlock-<tag>-XXXXXX into dir[0..len) (for
 * --dir, config files a sentinel may rewrite, logs): 0, or -1 (errno). */
int rsrv_tmpdir(char *dir, size_t len, const char *tag);
/* Remove the files in dir, then dir itself (one level: what servers write). */
void rsrv_rmdir(const char *dir);

/* A blocking connection to 127.0.0.1:port whose connect and commands time
 * out after timeout_ms; AUTH password first if password is not NULL or "".
 * NULL if it cannot connect or AUTH is refused. Free with redisFree. */
redisContext *rsrv_connect(int port, const char *password, int timeout_ms);

/* ---- one throw-away redis-server ---------------------------------------------- */

typedef struct rsrv {
    pid_t pid;                /* 0 while not running */
    int port;
    char dir[64];             /* its private --dir, removed by rsrv_stop */
    const char *const *extra; /* its extra arguments, kept for rsrv_restart */
    char password[64];        /* what clients need: rsrv_start takes it from a
                                 "--requirepass X" in extra; change it when
                                 the test changes the server's */
    char err[192];            /* why the last rsrv_start / rsrv_restart failed */
    /* TLS (rsrv_start_tls): the port that speaks TLS beside the plaintext
     * `port` (the launcher's PING, and tests' own checks, stay plaintext),
     * and the certificate directory (rsrv_tls_certs). 0 / "" otherwise. */
    int tls_port;
    char tls_dir[96];
} rsrv;

/* redis-server --port P --bind 127.0.0.1 --save '' --appendonly no
 * --daemonize no --loglevel warning --dir D [extra...] on a free port, with
 * a new temporary directory D; returns 0 once it answers PING (within
 * about 5 s, trying up to 5 ports), else -1 with s->err set and nothing
 * left running. extra (NULL-terminated, may be NULL) must outlive s. */
int rsrv_start(rsrv *s, const char *const *extra);
/* TLS certificates for tests and the bench, made with the `openssl`
 * command into dir (which must exist), EC P-256 keys, each .crt with its
 * .key:
 *   ca          a CA ("bidlock test CA"), 2 days
 *   server      for IP 127.0.0.1, IP ::1 and DNS localhost, signed by ca
 *   client      a client certificate signed by ca
 *   other-ca    a second, unrelated CA
 *   expired     like server, but its notAfter is a day before its notBefore
 *   wronghost   like server, but for DNS wrong.example only
 * 0, or -1 with a sentence in err (openssl missing or failing). */
int rsrv_tls_certs(const char *dir, char *err, size_t len);
/* rsrv_start, plus --tls-port on a second free port with certdir's
 * server.crt/server.key and ca.crt, --tls-auth-clients no unless extra
 * sets --tls-auth-clients; the plaintext port stays for PING and checks.
 * rsrv_restart keeps both ports. */
int rsrv_start_tls(rsrv *s, const char *const *extra, const char *certdir);
/* SIGKILL the server; its port and directory stay (rsrv_restart). */
void rsrv_kill(rsrv *s);
/* Start it again on the same port with the same arguments (the old one is
 * killed first if it still runs); the port may linger a moment after a
 * kill, so this tries for up to about 10 s. 0, or -1 with s->err set. */
int rsrv_restart(rsrv *s);
/* Kill it and remove its directory. Safe to call twice. */
void rsrv_stop(rsrv *s);

#endif
