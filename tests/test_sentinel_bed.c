/* The Sentinel test bed itself (tests/bed_sentinel.h), checked with plain
 * blocking hiredis before any library code relies on it: discovery answers,
 * ROLE, a real failover after kill -9, the helpers (freeze, kill, restart),
 * and a teardown that leaves no process and no directory behind. Measured
 * times go to stderr; the only time limits are generous bounded waits. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <criterion/criterion.h>

#include "bed_sentinel.h"

static sb_bed bed;

static void teardown(void)
{
    sb_stop(&bed);
}

TestSuite(bed, .fini = teardown, .timeout = 90);

static void up(int replicas)
{
    cr_assert_eq(sb_start(&bed, replicas), 0, "bed: %s", bed.err);
    fprintf(stderr,
            "bed: up in %.0f ms (%d servers answering at %.0f ms, replicas synced at %.0f ms, "
            "sentinels converged at %.0f ms)\n",
            bed.up_ms, bed.n_nodes, bed.servers_ms, bed.synced_ms, bed.up_ms);
}

static long long int_reply(int port, const char *cmd)
{
    redisReply *r = sb_cmd(port, "%s", cmd);
    cr_assert(r, "no answer from %d to %s", port, cmd);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "%s on %d: %s", cmd, port,
                 r->type == REDIS_REPLY_ERROR ? r->str : "not an integer");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static void assert_status(int port, const char *what, redisReply *r)
{
    cr_assert(r, "no answer from %d to %s", port, what);
    cr_assert_eq(r->type, REDIS_REPLY_STATUS, "%s on %d: %s", what, port,
                 r->type == REDIS_REPLY_ERROR ? r->str : "not a status");
    freeReplyObject(r);
}

static void assert_role(int port, const char *want)
{
    char role[32];
    cr_assert_eq(sb_role(port, role, sizeof role), 0, "ROLE on %d: no answer", port);
    cr_assert_str_eq(role, want, "ROLE on %d", port);
}

static void assert_sentinel_names(int sport, int port)
{
    redisReply *r = sb_cmd(sport, "SENTINEL get-master-addr-by-name %s", SB_MASTER_NAME);
    cr_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2,
              "sentinel %d: get-master-addr-by-name gave no address", sport);
    cr_assert_str_eq(r->element[0]->str, "127.0.0.1");
    cr_assert_eq(atoi(r->element[1]->str), port, "sentinel %d names %s", sport,
                 r->element[1]->str);
    freeReplyObject(r);
}

/* Stop the bed and check that every process it had is gone, and its dir. */
static void stop_and_check_clean(void)
{
    pid_t pids[SB_MAX_NODES + SB_SENTINELS];
    int n = sb_pids(&bed, pids, (int)(sizeof pids / sizeof pids[0]));
    cr_assert_gt(n, 0);
    char dir[sizeof bed.dir];
    memcpy(dir, bed.dir, sizeof dir);
    sb_stop(&bed);
    for (int i = 0; i < n; i++)
        cr_assert(kill(pids[i], 0) == -1 && errno == ESRCH, "pid %d still exists",
                  (int)pids[i]);
    struct stat st;
    cr_assert(stat(dir, &st) == -1 && errno == ENOENT, "%s is still there", dir);
    cr_assert_eq(sb_pids(&bed, pids, 8), 0);
    sb_stop(&bed); /* twice is fine */
}

Test(bed, discovery_and_failover_after_kill_9)
{
    up(2);
    int m = bed.node[0].port;
    for (int i = 0; i < SB_SENTINELS; i++)
        assert_sentinel_names(bed.sentinel[i].port, m);
    assert_role(m, "master");
    assert_role(bed.node[1].port, "slave");
    assert_role(bed.node[2].port, "slave");
    cr_assert_eq(sb_master_port(&bed), m, "%s", bed.err);
    char url[256];
    sb_url(&bed, 0, url, sizeof url);
    char want[256];
    snprintf(want, sizeof want, "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d#%s",
             bed.sentinel[0].port, bed.sentinel[1].port, bed.sentinel[2].port, SB_MASTER_NAME);
    cr_assert_str_eq(url, want);

    /* A write both replicas acknowledged survives the failover. */
    assert_status(m, "SET", sb_cmd(m, "SET bed:k v"));
    redisContext *c = redisConnect("127.0.0.1", m);
    cr_assert(c && !c->err);
    redisReply *r = redisCommand(c, "SET bed:acked yes");
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = redisCommand(c, "WAIT 2 2000"); /* on the same connection as the write */
    cr_assert(r && r->type == REDIS_REPLY_INTEGER);
    cr_assert_eq(r->integer, 2, "both replicas acknowledge");
    freeReplyObject(r);
    redisFree(c);

    uint64_t t0 = sb_now_ms();
    cr_assert_eq(sb_kill_master(&bed), 0, "%s", bed.err);
    int nm = sb_wait_failover(&bed, m, 30000);
    uint64_t t1 = sb_now_ms();
    cr_assert_gt(nm, 0, "%s", bed.err);
    int ni = sb_node_index(&bed, nm);
    cr_assert(ni == 1 || ni == 2, "the new master (port %d) is a former replica", nm);
    assert_role(nm, "master");
    cr_assert_eq(sb_wait_sentinels_agree(&bed, nm, 20000), 0, "%s", bed.err);
    uint64_t t2 = sb_now_ms();
    cr_assert_eq(sb_wait_replicas_up(&bed, nm, 20000), 0, "%s", bed.err);
    uint64_t t3 = sb_now_ms();
    fprintf(stderr,
            "bed: kill -9 master -> a sentinel names the promoted replica (ROLE master) in "
            "%llu ms; all sentinels agree at %llu ms; the other replica follows at %llu ms\n",
            (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t0),
            (unsigned long long)(t3 - t0));
    cr_assert_eq(sb_master_port(&bed), nm, "%s", bed.err);
    r = sb_cmd(nm, "GET bed:acked");
    cr_assert(r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, "yes"),
              "the acknowledged write is on the new master");
    freeReplyObject(r);

    /* The old master, restarted at once, is an EMPTY master until Sentinel
     * demotes it: why a client must check ROLE and trust the sentinels. */
    cr_assert_eq(sb_restart_node(&bed, 0), 0, "%s", bed.err);
    assert_role(m, "master");
    cr_assert_eq(int_reply(m, "DBSIZE"), 0, "the restarted old master is empty");
    cr_assert_eq(sb_master_port(&bed), nm, "the sentinels still name the new master");

    stop_and_check_clean();
}

Test(bed, helpers_freeze_kill_restart)
{
    up(1);
    int m = bed.node[0].port, rp = bed.node[1].port;

    /* One sentinel dead: the others still answer. */
    cr_assert_eq(sb_kill_sentinel(&bed, 0), 0, "%s", bed.err);
    cr_assert_eq(sb_master_port(&bed), m, "%s", bed.err);
    assert_sentinel_names(bed.sentinel[1].port, m);
    assert_sentinel_names(bed.sentinel[2].port, m);
    char url[256];
    sb_url(&bed, 0x6, url, sizeof url);
    cr_assert_eq(strncmp(url, "redis-sentinel://127.0.0.1:", 27), 0, "%s", url);
    cr_assert_null(strchr(strchr(url, ',') + 1, ','), "two sentinels: %s", url);

    /* A frozen replica acknowledges nothing; thawed, it catches up. */
    redisContext *c = redisConnect("127.0.0.1", m);
    cr_assert(c && !c->err);
    cr_assert_eq(sb_freeze_node(&bed, 1), 0, "%s", bed.err);
    redisReply *r = redisCommand(c, "SET bed:frozen 1");
    freeReplyObject(r);
    uint64_t t0 = sb_now_ms();
    r = redisCommand(c, "WAIT 1 200");
    cr_assert(r && r->type == REDIS_REPLY_INTEGER);
    cr_assert_eq(r->integer, 0, "a frozen replica does not acknowledge");
    freeReplyObject(r);
    fprintf(stderr, "bed: WAIT 1 200 with the replica frozen: 0 after %llu ms\n",
            (unsigned long long)(sb_now_ms() - t0));
    cr_assert_eq(sb_thaw_node(&bed, 1), 0, "%s", bed.err);
    r = redisCommand(c, "WAIT 1 5000");
    cr_assert(r && r->type == REDIS_REPLY_INTEGER);
    cr_assert_eq(r->integer, 1, "thawed, the replica acknowledges");
    freeReplyObject(r);

    /* CLIENT PAUSE on the replica, for the record (a fact later tests may
     * want): does it stop the replica's acknowledgements? */
    freeReplyObject(sb_cmd(rp, "CLIENT PAUSE 1000 ALL"));
    r = redisCommand(c, "SET bed:paused 1");
    freeReplyObject(r);
    t0 = sb_now_ms();
    r = redisCommand(c, "WAIT 1 300");
    cr_assert(r && r->type == REDIS_REPLY_INTEGER);
    fprintf(stderr, "bed: WAIT 1 300 with CLIENT PAUSE 1000 ALL on the replica: %lld after "
                    "%llu ms\n",
            r->integer, (unsigned long long)(sb_now_ms() - t0));
    freeReplyObject(r);
    freeReplyObject(sb_cmd(rp, "CLIENT UNPAUSE"));
    redisFree(c);

    /* A killed replica comes back on its port and syncs again. */
    cr_assert_eq(sb_kill_node(&bed, 1), 0, "%s", bed.err);
    cr_assert_eq(bed.node[1].pid, 0);
    cr_assert_neq(sb_kill_node(&bed, 1), 0, "killing it twice is refused");
    cr_assert_eq(sb_restart_node(&bed, 1), 0, "%s", bed.err);
    cr_assert_eq(bed.node[1].port, rp, "same port");
    cr_assert_eq(sb_wait_replicas_up(&bed, m, 10000), 0, "%s", bed.err);
    cr_assert_eq(int_reply(rp, "DBSIZE"), 2,
                 "it has the master's keys again (bed:frozen, bed:paused)");

    /* The killed sentinel comes back from its (rewritten) config file. */
    cr_assert_eq(sb_restart_sentinel(&bed, 0), 0, "%s", bed.err);
    assert_sentinel_names(bed.sentinel[0].port, m);

    stop_and_check_clean();
}
