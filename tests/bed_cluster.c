/* bed_cluster.c - see bed_cluster.h. */
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bed_cluster.h"
#include "keyspace.h"
#include "rsrv.h"

uint64_t cb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void nap(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int fail(cb_bed *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(cb_bed *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, sizeof b->err, fmt, ap);
    va_end(ap);
    return -1;
}

static int port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* A port that is free, with its bus port (+10000) free too, and not one
 * of the first n already taken. */
static int pick_port(const cb_bed *b, int n)
{
    for (int tries = 0; tries < 2000; tries++) {
        int p = 20000 + (int)((unsigned)rand() % 30000u);
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= b->node[i].port == p || b->node[i].port + 10000 == p ||
                   b->node[i].port == p + 10000;
        if (!dup && port_free(p) && port_free(p + 10000))
            return p;
    }
    return -1;
}

/* The password the helpers AUTH with ("" none): cb_cmd takes no bed. */
static char bed_password[64];

static pid_t launch(cb_bed *b, int i)
{
    char conf[128], dbf[64], log[128];
    snprintf(conf, sizeof conf, "nodes-%d.conf", b->node[i].port);
    snprintf(dbf, sizeof dbf, "dump-%d.rdb", b->node[i].port);
    snprintf(log, sizeof log, "%s/redis-%d.log", b->dir, b->node[i].port);
    const char *extra[] = {"--save", "", "--appendonly", "no", "--daemonize", "no",
                           "--loglevel", "warning", "--dir", b->dir, "--dbfilename", dbf,
                           "--cluster-enabled", "yes", "--cluster-config-file", conf,
                           "--cluster-node-timeout", "2000",
                           "--cluster-require-full-coverage", "no",
                           "--cluster-allow-replica-migration", "no",
                           "--repl-diskless-sync-delay", "0", NULL, NULL, NULL, NULL, NULL};
    if (b->password[0]) {
        size_t k = 0;
        while (extra[k])
            k++;
        extra[k++] = "--requirepass";
        extra[k++] = b->password;
        extra[k++] = "--masterauth";
        extra[k++] = b->password;
    }
    return rsrv_launch("redis-server", NULL, b->node[i].port, extra, log);
}

redisReply *cb_cmd(int port, const char *fmt, ...)
{
    redisContext *c = rsrv_connect(port, bed_password, 1000);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

static int info_has(int port, const char *section, const char *needle)
{
    redisReply *r = cb_cmd(port, section ? "INFO %s" : "CLUSTER INFO", section);
    int ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, needle);
    if (r)
        freeReplyObject(r);
    return ok;
}

int cb_masters(cb_bed *b, int *ports, int max)
{
    for (int i = 0; i < CB_NODES; i++) {
        if (!b->node[i].pid)
            continue;
        redisReply *r = cb_cmd(b->node[i].port, "CLUSTER SLOTS");
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            if (r)
                freeReplyObject(r);
            continue;
        }
        int n = 0;
        for (size_t k = 0; k < r->elements; k++) {
            const redisReply *e = r->element[k];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 3)
                continue;
            int p = (int)e->element[2]->element[1]->integer, seen = 0;
            for (int j = 0; j < n; j++)
                seen |= ports[j] == p;
            if (!seen && n < max)
                ports[n++] = p;
        }
        freeReplyObject(r);
        return n;
    }
    return 0;
}

int cb_master_of(cb_bed *b, unsigned slot)
{
    for (int i = 0; i < CB_NODES; i++) {
        if (!b->node[i].pid)
            continue;
        redisReply *r = cb_cmd(b->node[i].port, "CLUSTER SLOTS");
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            if (r)
                freeReplyObject(r);
            continue;
        }
        int port = -1;
        for (size_t k = 0; k < r->elements; k++) {
            const redisReply *e = r->element[k];
            if (e->type == REDIS_REPLY_ARRAY && e->elements >= 3 &&
                (unsigned)e->element[0]->integer <= slot &&
                slot <= (unsigned)e->element[1]->integer)
                port = (int)e->element[2]->element[1]->integer;
        }
        freeReplyObject(r);
        return port;
    }
    return -1;
}

int cb_index(const cb_bed *b, int port)
{
    for (int i = 0; i < CB_NODES; i++)
        if (b->node[i].port == port)
            return i;
    return -1;
}

redisReply *cb_cmd_key(cb_bed *b, const char *key, const char *fmt, ...)
{
    int port = cb_master_of(b, bl_key_slot(key, strlen(key)));
    int asking = 0;
    for (int hop = 0; hop < 6 && port > 0; hop++) {
        redisContext *c = rsrv_connect(port, bed_password, 1000);
        if (!c)
            return NULL;
        if (asking)
            freeReplyObject(redisCommand(c, "ASKING"));
        va_list ap;
        va_start(ap, fmt);
        redisReply *r = redisvCommand(c, fmt, ap);
        va_end(ap);
        redisFree(c);
        if (!r || r->type != REDIS_REPLY_ERROR)
            return r;
        int moved = strncmp(r->str, "MOVED ", 6) == 0, ask = strncmp(r->str, "ASK ", 4) == 0;
        if (strncmp(r->str, "TRYAGAIN", 8) == 0) {
            freeReplyObject(r);
            nap(20);
            port = cb_master_of(b, bl_key_slot(key, strlen(key)));
            asking = 0;
            continue;
        }
        if (!moved && !ask)
            return r;
        const char *colon = strrchr(r->str, ':');
        port = colon ? atoi(colon + 1) : -1;
        asking = ask;
        freeReplyObject(r);
    }
    return NULL;
}

static int node_id(int port, char *id, size_t len)
{
    redisReply *r = cb_cmd(port, "CLUSTER MYID");
    int ok = r && r->type == REDIS_REPLY_STRING && r->len < len;
    if (ok)
        snprintf(id, len, "%s", r->str);
    if (r)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

static int ok_reply(redisReply *r)
{
    int ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    return ok;
}

int cb_migrate_slot(cb_bed *b, unsigned slot, int to_port, int batch, int pause_ms)
{
    int from_port = cb_master_of(b, slot);
    if (from_port < 0)
        return fail(b, "slot %u has no master", slot);
    if (from_port == to_port)
        return 0;
    char from_id[64], to_id[64];
    if (node_id(from_port, from_id, sizeof from_id) || node_id(to_port, to_id, sizeof to_id))
        return fail(b, "CLUSTER MYID failed");
    if (!ok_reply(cb_cmd(to_port, "CLUSTER SETSLOT %u IMPORTING %s", slot, from_id)) ||
        !ok_reply(cb_cmd(from_port, "CLUSTER SETSLOT %u MIGRATING %s", slot, to_id)))
        return fail(b, "SETSLOT IMPORTING/MIGRATING of slot %u failed", slot);
    for (int round = 0; round < 100000; round++) {
        redisReply *k = cb_cmd(from_port, "CLUSTER GETKEYSINSLOT %u %d", slot, batch);
        if (!k || k->type != REDIS_REPLY_ARRAY) {
            if (k)
                freeReplyObject(k);
            return fail(b, "GETKEYSINSLOT %u failed", slot);
        }
        size_t n = k->elements;
        for (size_t i = 0; i < n; i++) {
            redisReply *m = cb_cmd(from_port, "MIGRATE 127.0.0.1 %d %b 0 5000 REPLACE", to_port,
                                   k->element[i]->str, (size_t)k->element[i]->len);
            int bad = !m || (m->type == REDIS_REPLY_ERROR && !strstr(m->str, "NOKEY"));
            char why[200];
            snprintf(why, sizeof why, "%s",
                     m && m->type == REDIS_REPLY_ERROR ? m->str : "no reply");
            if (m)
                freeReplyObject(m);
            if (bad) {
                freeReplyObject(k);
                return fail(b, "MIGRATE of a key of slot %u: %s", slot, why);
            }
        }
        freeReplyObject(k);
        if (n == 0)
            break;
        if (pause_ms > 0)
            nap(pause_ms);
    }
    /* The new owner first, then the old one, then everyone else. */
    if (!ok_reply(cb_cmd(to_port, "CLUSTER SETSLOT %u NODE %s", slot, to_id)) ||
        !ok_reply(cb_cmd(from_port, "CLUSTER SETSLOT %u NODE %s", slot, to_id)))
        return fail(b, "SETSLOT %u NODE failed", slot);
    int masters[8];
    int nm = cb_masters(b, masters, 8);
    for (int i = 0; i < nm; i++)
        if (masters[i] != to_port && masters[i] != from_port)
            freeReplyObject(cb_cmd(masters[i], "CLUSTER SETSLOT %u NODE %s", slot, to_id));
    return 0;
}

int cb_wait_ok(cb_bed *b, int ms)
{
    uint64_t end = cb_now_ms() + (uint64_t)ms;
    for (;;) {
        int all = 1;
        for (int i = 0; i < CB_NODES && all; i++)
            if (b->node[i].pid)
                all = info_has(b->node[i].port, NULL, "cluster_state:ok");
        if (all)
            return 0;
        if (cb_now_ms() >= end)
            return fail(b, "cluster_state is not ok on every node after %d ms", ms);
        nap(50);
    }
}

int cb_wait_synced(cb_bed *b, int ms)
{
    uint64_t end = cb_now_ms() + (uint64_t)ms;
    for (;;) {
        int all = 1;
        for (int i = 0; i < CB_NODES && all; i++)
            if (b->node[i].pid && info_has(b->node[i].port, "replication", "role:slave"))
                all = info_has(b->node[i].port, "replication", "master_link_status:up");
        if (all)
            return 0;
        if (cb_now_ms() >= end)
            return fail(b, "a replica's link is not up after %d ms", ms);
        nap(50);
    }
}

int cb_start(cb_bed *b)
{
    uint64_t t0 = cb_now_ms();
    char pw[sizeof b->password];
    snprintf(pw, sizeof pw, "%s", b->password);
    memset(b, 0, sizeof *b);
    snprintf(b->password, sizeof b->password, "%s", pw);
    snprintf(bed_password, sizeof bed_password, "%s", pw);
    srand((unsigned)(getpid() ^ (pid_t)t0));
    if (rsrv_tmpdir(b->dir, sizeof b->dir, "cluster") != 0)
        return fail(b, "cannot make a temp dir: %s", strerror(errno));
    for (int i = 0; i < CB_NODES; i++) {
        int ok = 0;
        for (int attempt = 0; attempt < 5 && !ok; attempt++) {
            b->node[i].port = pick_port(b, i);
            if (b->node[i].port < 0)
                break;
            b->node[i].pid = launch(b, i);
            int rc = b->node[i].pid > 0 ? rsrv_wait_ping(b->node[i].port, b->node[i].pid,
                                                         b->password, 5000)
                                        : RSRV_EXITED;
            ok = rc == RSRV_OK;
            if (!ok) {
                rsrv_kill_pid(b->node[i].pid);
                b->node[i].pid = 0;
                if (rc == RSRV_NOT_FOUND) {
                    cb_stop(b);
                    return fail(b, "redis-server is not installed");
                }
            }
        }
        if (!ok) {
            cb_stop(b);
            return fail(b, "node %d did not start", i);
        }
    }
    const char *argv[CB_NODES + 12];
    char addr[CB_NODES][32];
    int k = 0;
    argv[k++] = "redis-cli";
    argv[k++] = "--cluster";
    argv[k++] = "create";
    for (int i = 0; i < CB_NODES; i++) {
        snprintf(addr[i], sizeof addr[i], "127.0.0.1:%d", b->node[i].port);
        argv[k++] = addr[i];
    }
    argv[k++] = "--cluster-replicas";
    argv[k++] = "1";
    argv[k++] = "--cluster-yes";
    if (b->password[0]) {
        argv[k++] = "-a";
        argv[k++] = b->password;
        argv[k++] = "--no-auth-warning";
    }
    argv[k] = NULL;
    char log[128];
    snprintf(log, sizeof log, "%s/create.log", b->dir);
    pid_t cli = rsrv_spawn(argv, log);
    int st = -1;
    uint64_t end = cb_now_ms() + 30000;
    while (cli > 0 && waitpid(cli, &st, WNOHANG) != cli) {
        if (cb_now_ms() >= end) {
            rsrv_kill_pid(cli);
            cb_stop(b);
            return fail(b, "redis-cli --cluster create did not finish in 30 s");
        }
        nap(20);
    }
    if (cli <= 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        cb_stop(b);
        return fail(b, "redis-cli --cluster create failed (status %d)", st);
    }
    if (cb_wait_ok(b, 20000) != 0 || cb_wait_synced(b, 20000) != 0) {
        char why[sizeof b->err];
        snprintf(why, sizeof why, "%s", b->err);
        cb_stop(b);
        return fail(b, "%s", why);
    }
    /* Every node has the whole map (3 masters) before a test relies on it. */
    for (;;) {
        int all = 1;
        for (int i = 0; i < CB_NODES && all; i++) {
            redisReply *r = cb_cmd(b->node[i].port, "CLUSTER SLOTS");
            all = r && r->type == REDIS_REPLY_ARRAY && r->elements >= 3;
            if (r)
                freeReplyObject(r);
        }
        if (all)
            break;
        if (cb_now_ms() >= end) {
            cb_stop(b);
            return fail(b, "not every node knows the whole slot map");
        }
        nap(50);
    }
    b->up_ms = (double)(cb_now_ms() - t0);
    return 0;
}

void cb_stop(cb_bed *b)
{
    for (int i = 0; i < CB_NODES; i++) {
        rsrv_kill_pid(b->node[i].pid);
        b->node[i].pid = 0;
    }
    if (b->dir[0])
        rsrv_rmdir(b->dir);
    b->dir[0] = '\0';
}

int cb_kill(cb_bed *b, int i)
{
    if (i < 0 || i >= CB_NODES || !b->node[i].pid)
        return fail(b, "node %d is not running", i);
    rsrv_kill_pid(b->node[i].pid);
    b->node[i].pid = 0;
    return 0;
}

int cb_restart(cb_bed *b, int i)
{
    if (i < 0 || i >= CB_NODES)
        return fail(b, "no node %d", i);
    rsrv_kill_pid(b->node[i].pid);
    uint64_t end = cb_now_ms() + 10000;
    for (;;) {
        b->node[i].pid = launch(b, i);
        if (b->node[i].pid > 0 &&
            rsrv_wait_ping(b->node[i].port, b->node[i].pid, b->password, 5000) == RSRV_OK)
            return 0;
        rsrv_kill_pid(b->node[i].pid);
        b->node[i].pid = 0;
        if (cb_now_ms() >= end)
            return fail(b, "node %d did not come back on port %d", i, b->node[i].port);
        nap(100);
    }
}

int cb_wait_failover(cb_bed *b, int port, int ms)
{
    uint64_t end = cb_now_ms() + (uint64_t)ms;
    for (;;) {
        int masters[8];
        int n = cb_masters(b, masters, 8), named = 0;
        for (int i = 0; i < n; i++)
            named |= masters[i] == port;
        if (n > 0 && !named)
            return 0;
        if (cb_now_ms() >= end)
            return fail(b, "node %d is still a master after %d ms", port, ms);
        nap(50);
    }
}
