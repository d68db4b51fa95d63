/* bed_cluster.h - a Redis Cluster test bed on loopback, for tests and the
 * bench: 3 masters + 3 replicas of redis-server --cluster-enabled yes on
 * free 127.0.0.1 ports (each port + 10000, the cluster bus, free too), made
 * with redis-cli --cluster create --cluster-replicas 1, every node in its
 * own directory of one private temp dir, started by the calling process
 * and killed by pid (PR_SET_PDEATHSIG via rsrv_spawn: a crashed test takes
 * its bed with it). Blocking on purpose: it is the harness, not the
 * library. No Criterion in here: failures return -1 with a sentence in
 * b->err.
 *
 * Settings (DESIGN.md): cluster-node-timeout 2000 (a failover in 3-4 s),
 * cluster-require-full-coverage no (healthy shards keep answering while
 * another fails over), repl-diskless-sync-delay 0 (replicas sync at once),
 * cluster-allow-replica-migration no, --save '' --appendonly no. */
#ifndef BED_CLUSTER_H
#define BED_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

#define CB_NODES 6
#define CB_NODE_TIMEOUT_MS 2000

typedef struct cb_node {
    int port;
    pid_t pid; /* 0 while not running */
} cb_node;

typedef struct cb_bed {
    char dir[64];
    char password[64]; /* set before cb_start: every node requires it */
    cb_node node[CB_NODES];
    double up_ms;  /* how long cb_start took */
    char err[512]; /* why the last call returned -1 */
} cb_bed;

uint64_t cb_now_ms(void);

/* Start the bed (with b->password, if set before: --requirepass and
 * --masterauth on every node; the helpers below then AUTH with it; one bed
 * with a password per process at a time) and wait (bounded, ~30 s) until
 * every node says
 * cluster_state:ok and knows 3 masters, and every replica's link is up.
 * 0, or -1 with b->err and nothing left running. */
int cb_start(cb_bed *b);
/* Kill every node, remove the temp dir. Safe twice and on a failed bed. */
void cb_stop(cb_bed *b);

/* One command on a fresh blocking connection to 127.0.0.1:port (1 s
 * timeout). NULL if the connection failed. */
redisReply *cb_cmd(int port, const char *fmt, ...);
/* The same, routed by the slot of key: follows MOVED and ASK (a few
 * times), like a cluster client. NULL if no node answered. */
redisReply *cb_cmd_key(cb_bed *b, const char *key, const char *fmt, ...);

/* The port of the master that serves slot, as a live node's CLUSTER SLOTS
 * says (-1 if none answers or nobody serves it). */
int cb_master_of(cb_bed *b, unsigned slot);
/* Index in b->node of port, or -1. */
int cb_index(const cb_bed *b, int port);
/* Ports of the masters now (from a live node), up to 8; returns how many. */
int cb_masters(cb_bed *b, int *ports, int max);

/* Move slot from its master to the master on to_port: SETSLOT IMPORTING /
 * MIGRATING, MIGRATE its keys in batches of batch (with pause_ms between
 * batches, so requests meet the slot mid-migration), then SETSLOT NODE on
 * every master. 0, or -1 with b->err. */
int cb_migrate_slot(cb_bed *b, unsigned slot, int to_port, int batch, int pause_ms);

/* SIGKILL node i / start it again on its port (it rejoins from its
 * nodes.conf). 0, or -1 with b->err. */
int cb_kill(cb_bed *b, int i);
int cb_restart(cb_bed *b, int i);
/* Wait until a live node's CLUSTER SLOTS no longer names port as a master
 * (its replica took over), at most ms: 0, or -1. */
int cb_wait_failover(cb_bed *b, int port, int ms);
/* Wait until every live node says cluster_state:ok, at most ms: 0, or -1. */
int cb_wait_ok(cb_bed *b, int ms);
/* Wait until every live replica's master_link_status is up: 0, or -1. */
int cb_wait_synced(cb_bed *b, int ms);

#endif
