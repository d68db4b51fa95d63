/* server.c - the benchmark's private redis-server, the blocking helpers the
 * parent uses between runs, and the limit measured with redis-benchmark. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "bench.h"
#include "rsrv.h"
#include "scripts.h"

uint64_t bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

double bench_cpu_s(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 +
           (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6;
}

/* The server itself comes from tests/rsrv (one launcher for the tests and
 * the bench); the bench only says why it did not start. */
int bench_srv_start(bench_srv *s)
{
    if (rsrv_start(s, NULL) == 0)
        return 0;
    fprintf(stderr, "bench: %s\n", s->err);
    return -1;
}

void bench_srv_stop(bench_srv *s)
{
    rsrv_stop(s);
}

/* One command on a fresh blocking connection. */
static redisReply *cmd(int port, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static redisReply *cmd(int port, const char *fmt, ...)
{
    redisContext *c = rsrv_connect(port, NULL, 10000);
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
        {"get", offsetof(bench_cmdstats, get)},
        {"pexpire", offsetof(bench_cmdstats, pexpire)},
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
    return bench_redis_benchmark_x(port, n, pipeline, "", command);
}

double bench_redis_benchmark_x(int port, int n, int pipeline, const char *extra,
                               const char *command)
{
    char line[1024];
    snprintf(line, sizeof line,
             "redis-benchmark -h 127.0.0.1 -p %d -n %d -c 1 -P %d -r 100000000 %s --csv %s "
             "2>/dev/null",
             port, n, pipeline, extra, command);
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
