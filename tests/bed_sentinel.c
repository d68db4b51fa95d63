/* bed_sentinel.c - see bed_sentinel.h. Self-contained on purpose (no
 * Criterion, nothing from harness.c), so it can be folded into a shared
 * launcher later. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bed_sentinel.h"
#include "rsrv.h" /* rsrv_server_bin / rsrv_sentinel_bin: BIDLOCK_TEST_SERVER */

#define POLL_US 20000 /* 20 ms between polls */

uint64_t sb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int fail(sb_bed *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(sb_bed *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, sizeof b->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* A port nothing listens on right now (bound to 0, read, closed). Another
 * process may still take it before we do: callers retry on a failed start. */
static int free_port(void)
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

/* ---- talking to a node ------------------------------------------------------- */

static redisContext *conn(int port)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

redisReply *sb_cmd(int port, const char *fmt, ...)
{
    redisContext *c = conn(port);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

static int pings(int port)
{
    redisReply *r = sb_cmd(port, "PING");
    int ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    return ok;
}

int sb_role(int port, char *role, size_t len)
{
    redisReply *r = sb_cmd(port, "ROLE");
    int rc = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        snprintf(role, len, "%s", r->element[0]->str);
        rc = 0;
    }
    if (r)
        freeReplyObject(r);
    return rc;
}

static int is_master(int port)
{
    char role[32];
    return sb_role(port, role, sizeof role) == 0 && strcmp(role, "master") == 0;
}

/* "field:value" out of an INFO text, into out. 0 or -1. */
static int info_field(const char *info, const char *field, char *out, size_t len)
{
    size_t fn = strlen(field);
    for (const char *p = info; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, field, fn) == 0 && p[fn] == ':') {
            size_t vn = strcspn(p + fn + 1, "\r\n");
            snprintf(out, len, "%.*s", (int)vn, p + fn + 1);
            return 0;
        }
    }
    return -1;
}

/* A replica of master_port with its link up. */
static int replica_synced(int port, int master_port)
{
    redisReply *r = sb_cmd(port, "INFO replication");
    int ok = 0;
    if (r && r->type == REDIS_REPLY_STRING) {
        char role[16], mport[16], link[16];
        ok = info_field(r->str, "role", role, sizeof role) == 0 && !strcmp(role, "slave") &&
             info_field(r->str, "master_port", mport, sizeof mport) == 0 &&
             atoi(mport) == master_port &&
             info_field(r->str, "master_link_status", link, sizeof link) == 0 &&
             !strcmp(link, "up");
    }
    if (r)
        freeReplyObject(r);
    return ok;
}

/* SENTINEL get-master-addr-by-name: the port, or -1. */
static int sentinel_says(int sport)
{
    redisReply *r = sb_cmd(sport, "SENTINEL get-master-addr-by-name %s", SB_MASTER_NAME);
    int port = -1;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING)
        port = atoi(r->element[1]->str);
    if (r)
        freeReplyObject(r);
    return port;
}

/* SENTINEL master: the sentinel sees the master as a healthy master with
 * replicas replicas and others other sentinels. */
static int sentinel_ready(int sport, int replicas, int others)
{
    redisReply *r = sb_cmd(sport, "SENTINEL master %s", SB_MASTER_NAME);
    int ok = 0;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements % 2 == 0) {
        int flags_ok = 0, nrep = -1, noth = -1;
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            const redisReply *k = r->element[i], *v = r->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(k->str, "flags"))
                flags_ok = !strcmp(v->str, "master");
            else if (!strcmp(k->str, "num-slaves"))
                nrep = atoi(v->str);
            else if (!strcmp(k->str, "num-other-sentinels"))
                noth = atoi(v->str);
        }
        ok = flags_ok && nrep == replicas && noth == others;
    }
    if (r)
        freeReplyObject(r);
    return ok;
}

/* ---- processes ------------------------------------------------------------------ */

/* fork + exec argv with stdio on /dev/null, dying with us. */
static pid_t spawn(char *const *argv)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid; /* -1 on failure */
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test, even when SIGSTOPped */
    if (getppid() != parent)          /* the parent died before prctl */
        _exit(126);
    int dn = open("/dev/null", O_RDWR);
    dup2(dn, 0);
    dup2(dn, 1);
    dup2(dn, 2);
    close_range(3, ~0U, 0); /* no test pipe held open by a server */
    execvp(argv[0], argv);
    _exit(127);
}

/* Reap pid if it has exited: 1 (and *status) if so, 0 if still running. */
static int exited(pid_t pid, int *status)
{
    return waitpid(pid, status, WNOHANG) == pid;
}

static void kill_proc(sb_proc *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    p->pid = 0;
    p->frozen = 0;
}

static pid_t spawn_server(const sb_bed *b, const sb_proc *n)
{
    char port[16], dir[128], log[128], master[16];
    snprintf(port, sizeof port, "%d", n->port);
    snprintf(dir, sizeof dir, "%s/node-%d", b->dir, n->port);
    snprintf(log, sizeof log, "%s/redis-%d.log", b->dir, n->port);
    snprintf(master, sizeof master, "%d", n->replica_of);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -1;
    char *argv[40] = {(char *)rsrv_server_bin(), "--port", port, "--bind", "127.0.0.1", "--save", "",
                      "--appendonly", "no", "--daemonize", "no", "--dir", dir, "--logfile", log,
                      "--repl-diskless-sync-delay", "0", "--enable-debug-command", "local"};
    int a = 19;
    if (n->replica_of) {
        argv[a++] = "--replicaof";
        argv[a++] = "127.0.0.1";
        argv[a++] = master;
    }
    argv[a] = NULL;
    return spawn(argv);
}

/* Start (or restart) p as what kind says, wait until it answers PING. When
 * new_port_ok, a start that fails (port taken meanwhile) is retried on a
 * fresh port; a restart keeps its port and retries a little. */
static int start_proc(sb_bed *b, sb_proc *p, int is_sentinel, int new_port_ok,
                      int (*write_conf)(sb_bed *, sb_proc *))
{
    const char *what = is_sentinel ? rsrv_sentinel_bin() : rsrv_server_bin();
    for (int tries = 0; tries < 5; tries++) {
        if (new_port_ok && tries > 0 && (p->port = free_port()) < 0)
            return fail(b, "no free port: %s", strerror(errno));
        char conf[128];
        snprintf(conf, sizeof conf, "%s/sentinel-%d.conf", b->dir, p->port);
        if (is_sentinel && write_conf && write_conf(b, p) != 0)
            return fail(b, "cannot write %s: %s", conf, strerror(errno));
        char *sargv[] = {(char *)rsrv_sentinel_bin(), conf, NULL};
        p->pid = is_sentinel ? spawn(sargv) : spawn_server(b, p);
        if (p->pid < 0) {
            p->pid = 0;
            return fail(b, "cannot start %s: %s", what, strerror(errno));
        }
        for (uint64_t until = sb_now_ms() + 5000; sb_now_ms() < until;) {
            if (pings(p->port))
                return 0;
            int st;
            if (exited(p->pid, &st)) {
                p->pid = 0;
                if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
                    return fail(b, "%s not found: install its package (BIDLOCK_TEST_SERVER and "
                                "BIDLOCK_TEST_SENTINEL choose the binaries)", what);
                break; /* port taken after all: try again */
            }
            usleep(POLL_US);
        }
        kill_proc(p);
        usleep(50000);
    }
    return fail(b, "%s did not start on 127.0.0.1:%d (see %s)", what, p->port, b->dir);
}

static int write_sentinel_conf(sb_bed *b, sb_proc *s)
{
    char path[128];
    snprintf(path, sizeof path, "%s/sentinel-%d.conf", b->dir, s->port);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f,
            "port %d\n"
            "bind 127.0.0.1\n"
            "daemonize no\n"
            "dir %s\n"
            "logfile \"%s/sentinel-%d.log\"\n"
            "sentinel resolve-hostnames no\n"
            "sentinel monitor %s 127.0.0.1 %d 2\n"
            "sentinel down-after-milliseconds %s %d\n"
            "sentinel failover-timeout %s %d\n"
            "sentinel parallel-syncs %s 1\n",
            s->port, b->dir, b->dir, s->port, SB_MASTER_NAME, b->node[0].port, SB_MASTER_NAME,
            SB_DOWN_AFTER_MS, SB_MASTER_NAME, SB_FAILOVER_TIMEOUT_MS, SB_MASTER_NAME);
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- the bed ---------------------------------------------------------------------- */

int sb_start(sb_bed *b, int n_replicas)
{
    memset(b, 0, sizeof *b);
    if (n_replicas < 1 || n_replicas > SB_MAX_REPLICAS)
        return fail(b, "n_replicas must be 1..%d", SB_MAX_REPLICAS);
    uint64_t t0 = sb_now_ms();
    snprintf(b->dir, sizeof b->dir, "/tmp/bidlock-sentinel-XXXXXX");
    if (!mkdtemp(b->dir)) {
        b->dir[0] = '\0';
        return fail(b, "mkdtemp: %s", strerror(errno));
    }
    char why[sizeof b->err];
    b->n_nodes = 1 + n_replicas;

    /* The master, then its replicas (started after it so that they sync at
     * once), then the sentinels (after the replicas are up, so that their
     * first INFO of the master already lists them: Sentinel asks only every
     * 10 s after that). */
    b->node[0].port = free_port();
    if (start_proc(b, &b->node[0], 0, 1, NULL) != 0)
        goto failed;
    for (int i = 1; i < b->n_nodes; i++) {
        b->node[i].port = free_port();
        b->node[i].replica_of = b->node[0].port;
        if (start_proc(b, &b->node[i], 0, 1, NULL) != 0)
            goto failed;
    }
    b->servers_ms = (double)(sb_now_ms() - t0);
    for (int i = 1; i < b->n_nodes; i++) {
        uint64_t until = sb_now_ms() + 10000;
        while (!replica_synced(b->node[i].port, b->node[0].port)) {
            if (sb_now_ms() >= until) {
                fail(b, "replica on port %d did not sync with the master on %d within 10 s",
                     b->node[i].port, b->node[0].port);
                goto failed;
            }
            usleep(POLL_US);
        }
    }
    b->synced_ms = (double)(sb_now_ms() - t0);
    for (int i = 0; i < SB_SENTINELS; i++) {
        b->sentinel[i].port = free_port();
        if (start_proc(b, &b->sentinel[i], 1, 1, write_sentinel_conf) != 0)
            goto failed;
    }
    /* Sentinels find each other through hello messages on the master every
     * 2 s: this is most of the bed's start-up time. */
    for (int i = 0; i < SB_SENTINELS; i++) {
        uint64_t until = sb_now_ms() + 15000;
        while (!sentinel_ready(b->sentinel[i].port, n_replicas, SB_SENTINELS - 1)) {
            if (sb_now_ms() >= until) {
                fail(b, "sentinel on port %d did not see the master, %d replica(s) and %d "
                        "other sentinels within 15 s",
                     b->sentinel[i].port, n_replicas, SB_SENTINELS - 1);
                goto failed;
            }
            usleep(POLL_US);
        }
    }
    b->up_ms = (double)(sb_now_ms() - t0);
    return 0;

failed:
    memcpy(why, b->err, sizeof why);
    sb_stop(b);
    memcpy(b->err, why, sizeof why);
    return -1;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

void sb_stop(sb_bed *b)
{
    for (int i = 0; i < SB_SENTINELS; i++)
        kill_proc(&b->sentinel[i]);
    for (int i = 0; i < SB_MAX_NODES; i++)
        kill_proc(&b->node[i]);
    if (b->dir[0]) {
        /* BIDLOCK_TEST_KEEP_BED=1 keeps the servers' logs, for a post-mortem. */
        if (getenv("BIDLOCK_TEST_KEEP_BED"))
            fprintf(stderr, "sentinel bed kept: %s\n", b->dir);
        else
            nftw(b->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
        b->dir[0] = '\0';
    }
}

int sb_switches(const sb_bed *b)
{
    int most = 0;
    for (int i = 0; i < SB_SENTINELS; i++) {
        char path[sizeof b->dir + 32];
        snprintf(path, sizeof path, "%s/sentinel-%d.log", b->dir, b->sentinel[i].port);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        char line[512];
        int n = 0;
        while (fgets(line, sizeof line, f))
            n += strstr(line, "+switch-master ") != NULL;
        fclose(f);
        if (n > most)
            most = n;
    }
    return most;
}

int sb_node_index(const sb_bed *b, int port)
{
    for (int i = 0; i < b->n_nodes; i++)
        if (b->node[i].port == port)
            return i;
    return -1;
}

int sb_master_port(sb_bed *b)
{
    for (int i = 0; i < SB_SENTINELS; i++) {
        if (!b->sentinel[i].pid)
            continue;
        int port = sentinel_says(b->sentinel[i].port);
        if (port < 0)
            continue;
        if (is_master(port))
            return port;
        return fail(b, "sentinel %d names port %d, which is not a master", i, port);
    }
    return fail(b, "no live sentinel names a master");
}

int sb_kill_node(sb_bed *b, int i)
{
    if (i < 0 || i >= b->n_nodes || !b->node[i].pid)
        return fail(b, "node %d is not running", i);
    kill_proc(&b->node[i]);
    return 0;
}

int sb_kill_master(sb_bed *b)
{
    int port = sb_master_port(b);
    int i = port < 0 ? -1 : sb_node_index(b, port);
    if (i < 0)
        return port < 0 ? -1 : fail(b, "the master on port %d is not one of ours", port);
    return sb_kill_node(b, i) == 0 ? i : -1;
}

int sb_restart_node(sb_bed *b, int i)
{
    if (i < 0 || i >= b->n_nodes)
        return fail(b, "no node %d", i);
    if (b->node[i].pid)
        return fail(b, "node %d is still running", i);
    return start_proc(b, &b->node[i], 0, 0, NULL);
}

int sb_wait_failover(sb_bed *b, int old_port, int timeout_ms)
{
    uint64_t until = sb_now_ms() + (uint64_t)timeout_ms;
    do {
        for (int i = 0; i < SB_SENTINELS; i++) {
            if (!b->sentinel[i].pid)
                continue;
            int port = sentinel_says(b->sentinel[i].port);
            if (port > 0 && port != old_port && is_master(port))
                return port;
        }
        usleep(POLL_US);
    } while (sb_now_ms() < until);
    return fail(b, "no failover away from port %d within %d ms", old_port, timeout_ms);
}

int sb_wait_sentinels_agree(sb_bed *b, int port, int timeout_ms)
{
    uint64_t until = sb_now_ms() + (uint64_t)timeout_ms;
    do {
        int all = 1;
        for (int i = 0; i < SB_SENTINELS && all; i++)
            if (b->sentinel[i].pid && sentinel_says(b->sentinel[i].port) != port)
                all = 0;
        if (all)
            return 0;
        usleep(POLL_US);
    } while (sb_now_ms() < until);
    return fail(b, "the live sentinels did not all name port %d within %d ms", port,
                timeout_ms);
}

int sb_wait_replicas_up(sb_bed *b, int master_port, int timeout_ms)
{
    uint64_t until = sb_now_ms() + (uint64_t)timeout_ms;
    int lagging = -1;
    do {
        lagging = -1;
        for (int i = 0; i < b->n_nodes && lagging < 0; i++) {
            const sb_proc *n = &b->node[i];
            if (n->pid && !n->frozen && n->port != master_port &&
                !replica_synced(n->port, master_port))
                lagging = n->port;
        }
        if (lagging < 0)
            return 0;
        usleep(POLL_US);
    } while (sb_now_ms() < until);
    return fail(b, "the node on port %d is not a synced replica of %d after %d ms", lagging,
                master_port, timeout_ms);
}

static int signal_node(sb_bed *b, int i, int sig, int frozen)
{
    if (i < 0 || i >= b->n_nodes || !b->node[i].pid)
        return fail(b, "node %d is not running", i);
    if (kill(b->node[i].pid, sig) != 0)
        return fail(b, "kill(%d): %s", (int)b->node[i].pid, strerror(errno));
    b->node[i].frozen = frozen;
    return 0;
}

int sb_freeze_node(sb_bed *b, int i)
{
    return signal_node(b, i, SIGSTOP, 1);
}

int sb_thaw_node(sb_bed *b, int i)
{
    return signal_node(b, i, SIGCONT, 0);
}

int sb_kill_sentinel(sb_bed *b, int i)
{
    if (i < 0 || i >= SB_SENTINELS || !b->sentinel[i].pid)
        return fail(b, "sentinel %d is not running", i);
    kill_proc(&b->sentinel[i]);
    return 0;
}

int sb_restart_sentinel(sb_bed *b, int i)
{
    if (i < 0 || i >= SB_SENTINELS)
        return fail(b, "no sentinel %d", i);
    if (b->sentinel[i].pid)
        return fail(b, "sentinel %d is still running", i);
    return start_proc(b, &b->sentinel[i], 1, 0, NULL); /* its own, rewritten, config */
}

char *sb_url(const sb_bed *b, unsigned mask, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "redis-sentinel://");
    int first = 1;
    for (int i = 0; i < SB_SENTINELS && o < len; i++) {
        if (mask && !(mask & (1u << i)))
            continue;
        o += (size_t)snprintf(buf + o, len - o, "%s127.0.0.1:%d", first ? "" : ",",
                              b->sentinel[i].port);
        first = 0;
    }
    if (o < len)
        snprintf(buf + o, len - o, "#%s", SB_MASTER_NAME);
    return buf;
}

int sb_pids(const sb_bed *b, pid_t *out, int cap)
{
    int n = 0;
    for (int i = 0; i < b->n_nodes && n < cap; i++)
        if (b->node[i].pid)
            out[n++] = b->node[i].pid;
    for (int i = 0; i < SB_SENTINELS && n < cap; i++)
        if (b->sentinel[i].pid)
            out[n++] = b->sentinel[i].pid;
    return n;
}
