/* bed_sentinel.h - a Redis Sentinel test bed on loopback, for tests.
 *
 * One redis-server master, 1..2 replicas and 3 redis-sentinel processes,
 * each on a free 127.0.0.1 port, all in a private temp dir, all started by
 * the calling process and killed by pid. Every child has
 * PR_SET_PDEATHSIG(SIGKILL): a test that crashes takes its bed with it.
 * Blocking on purpose (plain hiredis, usleep polls): it is the harness, not
 * the library. No Criterion in here: failures return -1 with a sentence in
 * bed->err, so any test framework (or a plain program) can use it.
 *
 * Settings: quorum 2, down-after-milliseconds 1000, failover-timeout 2000,
 * parallel-syncs 1; servers run --save '' --appendonly no
 * --repl-diskless-sync-delay 0 --enable-debug-command local, each in its own
 * directory (so a restarted node never loads another node's dump.rdb).
 * Logs: <dir>/redis-PORT.log, <dir>/sentinel-PORT.log (removed by sb_stop).
 */
#ifndef BED_SENTINEL_H
#define BED_SENTINEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

#define SB_MAX_REPLICAS 2
#define SB_MAX_NODES (1 + SB_MAX_REPLICAS)
#define SB_SENTINELS 3
#define SB_MASTER_NAME "mymaster"
#define SB_DOWN_AFTER_MS 1000
#define SB_FAILOVER_TIMEOUT_MS 2000

typedef struct sb_proc {
    int port;
    pid_t pid;      /* 0 while not running (killed, or not started) */
    int replica_of; /* redis-server: the port given to --replicaof at start, or 0 */
    int frozen;     /* SIGSTOPped by sb_freeze_node */
} sb_proc;

typedef struct sb_bed {
    char dir[64];                    /* private temp dir, "" when stopped */
    int n_nodes;                     /* 1 + replicas */
    sb_proc node[SB_MAX_NODES];      /* node[0] is the first master */
    sb_proc sentinel[SB_SENTINELS];
    /* How long sb_start took, in ms, and its phases (from its start):
     * every server answers PING; every replica's link is up; every sentinel
     * knows the master, its replicas and the other sentinels. */
    double up_ms, servers_ms, synced_ms;
    char err[512]; /* why the last call returned -1 */
} sb_bed;

/* Monotonic milliseconds. */
uint64_t sb_now_ms(void);

/* Start a bed with n_replicas (1..SB_MAX_REPLICAS) and wait (bounded, about
 * 30 s at most) until it is ready: each replica reports
 * master_link_status:up, and each sentinel reports the master (flags
 * "master"), n_replicas replicas and SB_SENTINELS-1 other sentinels.
 * Returns 0, or -1 with b->err (then nothing is left running). Sets
 * b->up_ms. Never uses a system-wide redis-server or redis-sentinel. */
int sb_start(sb_bed *b, int n_replicas);

/* SIGKILL every process still running (frozen ones too), reap them and
 * remove the temp dir. Safe to call twice, and on a zeroed or failed bed. */
void sb_stop(sb_bed *b);

/* One command on 127.0.0.1:port, on a fresh blocking connection with a 1 s
 * timeout. NULL if the connection or the command failed (an error REPLY is
 * returned as a reply). Free with freeReplyObject. */
redisReply *sb_cmd(int port, const char *fmt, ...);

/* ROLE's first element ("master", "slave", "sentinel") into role[0..len):
 * 0, or -1 if the node does not answer. */
int sb_role(int port, char *role, size_t len);

/* The master's port as the first live sentinel that answers says it
 * (SENTINEL get-master-addr-by-name), checked with ROLE on that port: -1 if
 * no sentinel answers or the node it names is not a master. */
int sb_master_port(sb_bed *b);

/* The index into b->node of the server on port, or -1. */
int sb_node_index(const sb_bed *b, int port);

/* SIGKILL node i (and reap it). 0, or -1 if it was not running. */
int sb_kill_node(sb_bed *b, int i);

/* SIGKILL the node that is master now (sb_master_port). Returns its index,
 * or -1. */
int sb_kill_master(sb_bed *b);

/* Start killed node i again on its port with the arguments it first had
 * (a first master comes back as an empty master; a replica with
 * --replicaof its first master). Waits until it answers PING (bounded).
 * 0 or -1. */
int sb_restart_node(sb_bed *b, int i);

/* Wait until a live sentinel names a master other than old_port and that
 * node says ROLE master. Returns the new master's port, or -1 after
 * timeout_ms. */
int sb_wait_failover(sb_bed *b, int old_port, int timeout_ms);

/* Wait until every live sentinel names port as the master. 0 or -1. */
int sb_wait_sentinels_agree(sb_bed *b, int port, int timeout_ms);

/* Wait until every live, unfrozen node but the master on master_port says
 * ROLE slave of master_port with master_link_status:up. 0 or -1. */
int sb_wait_replicas_up(sb_bed *b, int master_port, int timeout_ms);

/* SIGSTOP / SIGCONT node i: a frozen replica acknowledges nothing (WAIT
 * returns fewer replicas); a frozen master stops answering (Sentinel will
 * fail it over after SB_DOWN_AFTER_MS). 0 or -1. For CLIENT PAUSE or
 * DEBUG SLEEP use sb_cmd. */
int sb_freeze_node(sb_bed *b, int i);
int sb_thaw_node(sb_bed *b, int i);

/* SIGKILL sentinel i; start it again from its config file (which Sentinel
 * has rewritten with what it learned). 0 or -1. */
int sb_kill_sentinel(sb_bed *b, int i);
int sb_restart_sentinel(sb_bed *b, int i);

/* "redis-sentinel://127.0.0.1:P1,...#mymaster" naming the sentinels whose
 * bit is set in mask (bit i = sentinel i; 0 means all), into buf. Returns buf. */
char *sb_url(const sb_bed *b, unsigned mask, char *buf, size_t len);

/* How many failovers the sentinels have made so far: the most
 * "+switch-master" lines in any sentinel's log (a sentinel that learned a
 * switch from another logs it too). Sentinel sometimes fails a freshly
 * promoted master over once more on its own; tests use this to tell. */
int sb_switches(const sb_bed *b);

/* Every pid the bed has running now into out[0..cap); returns how many. */
int sb_pids(const sb_bed *b, pid_t *out, int cap);

#endif
