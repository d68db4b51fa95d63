/* rsrv.c - see rsrv.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rsrv.h"

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- which server ---------------------------------------------------------- */

const char *rsrv_server_bin(void)
{
    const char *s = getenv("BIDLOCK_TEST_SERVER");
    return s && *s ? s : "redis-server";
}

const char *rsrv_sentinel_bin(void)
{
    static char buf[512];
    const char *s = getenv("BIDLOCK_TEST_SENTINEL");
    if (s && *s)
        return s;
    s = getenv("BIDLOCK_TEST_SERVER");
    size_t n = s ? strlen(s) : 0;
    if (n > 7 && n < sizeof buf - 2 && strcmp(s + n - 7, "-server") == 0) {
        snprintf(buf, sizeof buf, "%.*s-sentinel", (int)(n - 7), s);
        return buf;
    }
    return "redis-sentinel";
}

/* ---- steps ---------------------------------------------------------------- */

int rsrv_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

pid_t rsrv_spawn(const char *const *argv, const char *log_path)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid; /* the child's pid, or -1 */
    /* Dies with the parent, even while SIGSTOPped; and if the parent died
     * before prctl took effect, do not start at all. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(126);
    int in = open("/dev/null", O_RDONLY);
    int out = log_path ? open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600) : -1;
    if (out < 0)
        out = open("/dev/null", O_WRONLY);
    dup2(in, 0);
    dup2(out, 1);
    dup2(out, 2);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
}

pid_t rsrv_launch(const char *bin, const char *conf, int port, const char *const *extra,
                  const char *log_path)
{
    size_t n = 0;
    while (extra && extra[n])
        n++;
    const char **argv = calloc(n + 8, sizeof *argv);
    if (!argv)
        return -1;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", port);
    size_t k = 0;
    argv[k++] = bin;
    if (conf)
        argv[k++] = conf;
    argv[k++] = "--port";
    argv[k++] = port_s;
    argv[k++] = "--bind"; /* without a config file it would listen everywhere */
    argv[k++] = "127.0.0.1";
    for (size_t i = 0; i < n; i++)
        argv[k++] = extra[i];
    argv[k] = NULL;
    pid_t pid = rsrv_spawn(argv, log_path);
    free(argv);
    return pid;
}

/* Is a server up on port? 1 if it answers PING with PONG (then *who is the
 * process_id its INFO reports, or 0), 2 if with NOAUTH (up, but it wants a
 * password we were not told: *who stays 0), else 0 (LOADING and other
 * errors mean not yet). */
static int probe(int port, const char *password, long *who)
{
    *who = 0;
    redisContext *c = rsrv_connect(port, NULL, 200);
    if (!c)
        return 0;
    if (password && password[0])
        freeReplyObject(redisCommand(c, "AUTH %s", password));
    int up = 0;
    redisReply *r = redisCommand(c, "PING");
    if (r && r->type == REDIS_REPLY_STATUS)
        up = 1;
    else if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOAUTH", 6) == 0)
        up = 2;
    if (r)
        freeReplyObject(r);
    r = up == 1 ? redisCommand(c, "INFO server") : NULL;
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "process_id:") : NULL;
    if (p)
        *who = strtol(p + strlen("process_id:"), NULL, 10);
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return up;
}

int rsrv_wait_ping(int port, pid_t pid, const char *password, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        long who;
        int up = probe(port, password, &who);
        int st;
        pid_t gone = pid > 0 ? waitpid(pid, &st, WNOHANG) : 0;
        if (gone == pid && pid > 0)
            return WIFEXITED(st) && WEXITSTATUS(st) == 127 ? RSRV_NOT_FOUND : RSRV_EXITED;
        /* Two tests may pick the same free port at once: the answer must
         * come from our process, not from the one that won the port. */
        if (up && pid > 0 && who > 0 && who != (long)pid)
            return RSRV_PORT_TAKEN;
        if (up)
            return RSRV_OK; /* ours, or (NOAUTH) ours as far as one can tell: it still runs */
        if (now_ms() >= end)
            return RSRV_TIMEOUT;
        sleep_ms(20);
    }
}

void rsrv_kill_pid(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
}

redisContext *rsrv_connect(int port, const char *password, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err || redisSetTimeout(c, tv) != REDIS_OK) {
        if (c)
            redisFree(c);
        return NULL;
    }
    if (password && password[0]) {
        redisReply *r = redisCommand(c, "AUTH %s", password);
        int ok = r && r->type == REDIS_REPLY_STATUS;
        if (r)
            freeReplyObject(r);
        if (!ok) {
            redisFree(c);
            return NULL;
        }
    }
    return c;
}

int rsrv_tmpdir(char *dir, size_t len, const char *tag)
{
    int n = snprintf(dir, len, "/tmp/bidlock-%s-XXXXXX", tag);
    if (n < 0 || (size_t)n >= len) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return mkdtemp(dir) ? 0 : -1;
}

void rsrv_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char path[512];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                unlink(path);
            }
        closedir(d);
    }
    rmdir(dir);
}

/* ---- one throw-away redis-server ---------------------------------------------- */

enum { START_TRIES = 5, START_WAIT_MS = 10000, RESTART_WAIT_MS = 10000 };

static pid_t launch_redis(const rsrv *s)
{
    static const char *const settings[] = {"--save", "", "--appendonly", "no",
                                           "--daemonize", "no", "--loglevel", "warning"};
    enum { NSET = sizeof settings / sizeof settings[0] };
    size_t n = 0;
    while (s->extra && s->extra[n])
        n++;
    const char **args = calloc(NSET + 2 + n + 10 + 1, sizeof *args);
    if (!args)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < NSET; i++)
        args[k++] = settings[i];
    args[k++] = "--dir";
    args[k++] = s->dir;
    char tport[16], cert[128], key[128], ca[128];
    int auth_given = 0;
    for (size_t i = 0; i < n; i++) {
        auth_given |= strcmp(s->extra[i], "--tls-auth-clients") == 0;
        args[k++] = s->extra[i];
    }
    if (s->tls_port) {
        snprintf(tport, sizeof tport, "%d", s->tls_port);
        snprintf(cert, sizeof cert, "%s/server.crt", s->tls_dir);
        snprintf(key, sizeof key, "%s/server.key", s->tls_dir);
        snprintf(ca, sizeof ca, "%s/ca.crt", s->tls_dir);
        const char *t[] = {"--tls-port", tport, "--tls-cert-file", cert, "--tls-key-file", key,
                           "--tls-ca-cert-file", ca};
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            args[k++] = t[i];
        if (!auth_given) {
            args[k++] = "--tls-auth-clients";
            args[k++] = "no";
        }
    }
    args[k] = NULL;
    pid_t pid = rsrv_launch(rsrv_server_bin(), NULL, s->port, args, NULL);
    free(args);
    return pid;
}

static int start(rsrv *s, const char *const *extra, const char *certdir)
{
    memset(s, 0, sizeof *s);
    s->extra = extra;
    if (certdir)
        snprintf(s->tls_dir, sizeof s->tls_dir, "%s", certdir);
    for (size_t i = 0; extra && extra[i] && extra[i + 1]; i++)
        if (strcmp(extra[i], "--requirepass") == 0)
            snprintf(s->password, sizeof s->password, "%s", extra[i + 1]);
    if (rsrv_tmpdir(s->dir, sizeof s->dir, "redis") != 0) {
        snprintf(s->err, sizeof s->err, "mkdtemp: %s", strerror(errno));
        s->dir[0] = '\0';
        return -1;
    }
    for (int tries = 0; tries < START_TRIES; tries++) {
        s->port = rsrv_free_port();
        if (certdir) {
            do
                s->tls_port = rsrv_free_port();
            while (s->tls_port == s->port);
        }
        if (s->port <= 0 || (certdir && s->tls_port <= 0)) {
            snprintf(s->err, sizeof s->err, "no free port: %s", strerror(errno));
            break;
        }
        s->pid = launch_redis(s);
        if (s->pid < 0) {
            snprintf(s->err, sizeof s->err, "fork: %s", strerror(errno));
            s->pid = 0;
            break;
        }
        int rc = rsrv_wait_ping(s->port, s->pid, s->password, START_WAIT_MS);
        if (rc == RSRV_OK)
            return 0;
        if (rc == RSRV_NOT_FOUND) {
            s->pid = 0;
            snprintf(s->err, sizeof s->err, "%s not found: install it (BIDLOCK_TEST_SERVER)",
                     rsrv_server_bin());
            rsrv_stop(s);
            return -1;
        }
        if (rc == RSRV_EXITED)
            s->pid = 0; /* reaped: the port was taken after all, try another */
        else
            rsrv_kill(s);
        snprintf(s->err, sizeof s->err, "%s did not start (%s)", rsrv_server_bin(),
                 rc == RSRV_TIMEOUT ? "no PONG within 10 s" : "its port was taken");
    }
    rsrv_stop(s);
    return -1;
}

int rsrv_start(rsrv *s, const char *const *extra)
{
    return start(s, extra, NULL);
}

int rsrv_start_tls(rsrv *s, const char *const *extra, const char *certdir)
{
    return start(s, extra, certdir);
}

/* One openssl step through sh; 0 or -1 with err. */
static int sh(const char *cmd, char *err, size_t len)
{
    int rc = system(cmd);
    if (rc != 0) {
        snprintf(err, len, "openssl failed (status %d): %.120s", rc, cmd);
        return -1;
    }
    return 0;
}

int rsrv_tls_certs(const char *dir, char *err, size_t len)
{
    static const struct {
        const char *name, *ca, *subj, *san, *days;
    } leaf[] = {
        {"server", "ca", "/CN=localhost", "IP:127.0.0.1,IP:::1,DNS:localhost", "2"},
        {"client", "ca", "/CN=bidlock test client", NULL, "2"},
        {"expired", "ca", "/CN=localhost", "IP:127.0.0.1,IP:::1,DNS:localhost", "-1"},
        {"wronghost", "ca", "/CN=wrong.example", "DNS:wrong.example", "2"},
    };
    char cmd[1024];
    const char *key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const char *cas[] = {"ca", "other-ca"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd,
                 "cd '%s' && openssl req -x509 %s -keyout %s.key -out %s.crt -days 2 "
                 "-subj '/CN=bidlock test %s' >/dev/null 2>&1",
                 dir, key, cas[i], cas[i], cas[i]);
        if (sh(cmd, err, len))
            return -1;
    }
    for (size_t i = 0; i < sizeof leaf / sizeof leaf[0]; i++) {
        snprintf(cmd, sizeof cmd,
                 "cd '%s' && openssl req %s -keyout %s.key -out %s.csr -subj '%s' >/dev/null "
                 "2>&1 && printf '%s%s\n' > %s.ext && openssl x509 -req -in %s.csr -CA %s.crt "
                 "-CAkey %s.key -CAcreateserial -days %s -extfile %s.ext -out %s.crt "
                 ">/dev/null 2>&1 && rm -f %s.csr %s.ext",
                 dir, key, leaf[i].name, leaf[i].name, leaf[i].subj,
                 leaf[i].san ? "subjectAltName=" : "basicConstraints=CA:FALSE",
                 leaf[i].san ? leaf[i].san : "", leaf[i].name, leaf[i].name, leaf[i].ca,
                 leaf[i].ca, leaf[i].days, leaf[i].name, leaf[i].name, leaf[i].name,
                 leaf[i].name);
        if (sh(cmd, err, len))
            return -1;
    }
    return 0;
}

void rsrv_kill(rsrv *s)
{
    rsrv_kill_pid(s->pid);
    s->pid = 0;
}

int rsrv_restart(rsrv *s)
{
    rsrv_kill(s);
    uint64_t end = now_ms() + RESTART_WAIT_MS;
    int rc = RSRV_TIMEOUT;
    while (now_ms() < end) {
        s->pid = launch_redis(s);
        if (s->pid < 0) {
            s->pid = 0;
            break;
        }
        uint64_t now = now_ms();
        rc = rsrv_wait_ping(s->port, s->pid, s->password, now < end ? (int)(end - now) : 0);
        if (rc == RSRV_OK)
            return 0;
        if (rc == RSRV_NOT_FOUND || rc == RSRV_TIMEOUT) {
            s->pid = rc == RSRV_NOT_FOUND ? 0 : s->pid;
            rsrv_kill(s);
            break;
        }
        rsrv_kill(s); /* the port lingers, or another server holds it: again, later */
        sleep_ms(50);
    }
    snprintf(s->err, sizeof s->err, "%s did not come back on port %d (%s)", rsrv_server_bin(), s->port,
             rc == RSRV_NOT_FOUND ? "not installed" : rc == RSRV_TIMEOUT ? "no PONG" : "port in use");
    return -1;
}

void rsrv_stop(rsrv *s)
{
    rsrv_kill(s);
    if (s->dir[0]) {
        rsrv_rmdir(s->dir);
        s->dir[0] = '\0';
    }
}
