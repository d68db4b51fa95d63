/* server.c - the benchmark's private redis-server, the blocking helpers the
 * parent uses between runs, and the limit measured with redis-benchmark. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "bench.h"
#include "scripts.h"

uint64_t bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

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

static redisContext *connect_port(int port)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, (struct timeval){10, 0});
    return c;
}

static int ping(int port)
{
    redisContext *c = connect_port(port);
    if (!c)
        return 0;
    redisReply *r = redisCommand(c, "PING");
    int ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return ok;
}

static pid_t spawn(const bench_srv *s)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    const char *argv[] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--daemonize", "no", "--dir", s->dir,
                          "--loglevel", "warning", NULL};
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the bench */
        int dn = open("/dev/null", O_RDWR);
        dup2(dn, 0);
        dup2(dn, 1);
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    return pid;
}

int bench_srv_start(bench_srv *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/bidlock-bench-XXXXXX");
    if (!mkdtemp(s->dir)) {
        fprintf(stderr, "bench: mkdtemp: %s\n", strerror(errno));
        s->dir[0] = '\0';
        return -1;
    }
    for (int tries = 0; tries < 5; tries++) {
        s->port = free_port();
        if (s->port <= 0)
            break;
        s->pid = spawn(s);
        if (s->pid < 0)
            break;
        for (int i = 0; i < 250; i++) { /* up to ~5 s */
            if (ping(s->port))
                return 0;
            int st;
            if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
                s->pid = 0;
                if (WIFEXITED(st) && WEXITSTATUS(st) == 127) {
                    fprintf(stderr, "bench: redis-server not found: install redis-server\n");
                    bench_srv_stop(s);
                    return -1;
                }
                break; /* the port was taken after all: another one */
            }
            usleep(20000);
        }
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
            s->pid = 0;
        }
    }
    fprintf(stderr, "bench: redis-server did not start\n");
    bench_srv_stop(s);
    return -1;
}

void bench_srv_stop(bench_srv *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
    if (s->dir[0]) {
        char path[128];
        snprintf(path, sizeof path, "%s/dump.rdb", s->dir);
        unlink(path);
        rmdir(s->dir);
        s->dir[0] = '\0';
    }
}

/* One command on a fresh blocking connection. */
static redisReply *cmd(int port, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static redisReply *cmd(int port, const char *fmt, ...)
{
    redisContext *c = connect_port(port);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    if (r && r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "bench: redis error: %s\n", r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

int bench_reset(int port)
{
    redisReply *a = cmd(port, "FLUSHALL");
    redisReply *b = a ? cmd(port, "CONFIG RESETSTAT") : NULL;
    int ok = a && b;
    if (a)
        freeReplyObject(a);
    if (b)
        freeReplyObject(b);
    return ok ? 0 : -1;
}

int bench_del(int port, const char *key)
{
    redisReply *r = cmd(port, "DEL %s", key);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

long long bench_get_int(int port, const char *key)
{
    redisReply *r = cmd(port, "GET %s", key);
    if (!r)
        return -1;
    long long v = r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
    freeReplyObject(r);
    return v;
}

int bench_redis_version(int port, char *buf, size_t len)
{
    redisReply *r = cmd(port, "INFO server");
    snprintf(buf, len, "unknown");
    if (!r)
        return -1;
    const char *p = r->type == REDIS_REPLY_STRING ? strstr(r->str, "redis_version:") : NULL;
    if (p) {
        p += strlen("redis_version:");
        size_t n = strcspn(p, "\r\n");
        snprintf(buf, len, "%.*s", (int)n, p);
    }
    freeReplyObject(r);
    return p ? 0 : -1;
}

int bench_script_load(int port, int which, char sha[41])
{
    redisReply *r = cmd(port, "SCRIPT LOAD %s", bl_scripts[which].body);
    if (!r)
        return -1;
    int ok = r->type == REDIS_REPLY_STRING && r->len == 40;
    if (ok)
        memcpy(sha, r->str, 41);
    freeReplyObject(r);
    return ok ? 0 : -1;
}

int bench_cmdstats_read(int port, bench_cmdstats *out)
{
    memset(out, 0, sizeof *out);
    redisReply *r = cmd(port, "INFO commandstats");
    if (!r)
        return -1;
    if (r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        return -1;
    }
    /* cmdstat_<name>:calls=<n>,usec=... ; subcommands are "config|resetstat" */
    static const struct {
        const char *name;
        size_t off;
    } named[] = {
        {"evalsha", offsetof(bench_cmdstats, evalsha)},
        {"eval", offsetof(bench_cmdstats, eval)},
        {"subscribe", offsetof(bench_cmdstats, subscribe)},
        {"unsubscribe", offsetof(bench_cmdstats, unsubscribe)},
        {"publish", offsetof(bench_cmdstats, publish)},
        {"zrem", offsetof(bench_cmdstats, zrem)},
    };
    for (const char *p = strstr(r->str, "cmdstat_"); p; p = strstr(p + 1, "cmdstat_")) {
        const char *name = p + strlen("cmdstat_");
        const char *colon = strchr(name, ':');
        const char *calls = colon ? strstr(colon, "calls=") : NULL;
        if (!calls)
            break;
        size_t nlen = (size_t)(colon - name);
        uint64_t n = strtoull(calls + strlen("calls="), NULL, 10);
        if (nlen == 4 && memcmp(name, "info", 4) == 0)
            continue;
        out->total += n;
        for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
            if (strlen(named[i].name) == nlen && memcmp(named[i].name, name, nlen) == 0)
                *(uint64_t *)((char *)out + named[i].off) += n;
    }
    freeReplyObject(r);
    return 0;
}

double bench_redis_benchmark(int port, int n, int pipeline, const char *command)
{
    char line[1024];
    snprintf(line, sizeof line,
             "redis-benchmark -h 127.0.0.1 -p %d -n %d -c 1 -P %d -r 100000000 --csv %s "
             "2>/dev/null",
             port, n, pipeline, command);
    FILE *f = popen(line, "r");
    if (!f) {
        fprintf(stderr, "bench: cannot run redis-benchmark: %s\n", strerror(errno));
        return -1;
    }
    double rps = -1;
    /* "test","rps",...  then  "<command>","<rps>",... */
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "\"test\"", 6) == 0)
            continue;
        const char *q = strstr(line, "\",\"");
        if (q)
            rps = strtod(q + 3, NULL);
    }
    int st = pclose(f);
    if (st != 0 || rps <= 0) {
        fprintf(stderr, "bench: redis-benchmark failed (status %d): is redis-tools installed?\n",
                st);
        return -1;
    }
    return rps;
}
