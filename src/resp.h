/* resp.h - the pure half of the Redis backend: command encoding and the
 * reading of script, inspect and SCAN replies (resp.c). No I/O, no state:
 * it links alone into the fuzzers. */
#ifndef BIDLOCK_RESP_H
#define BIDLOCK_RESP_H

#include "backend.h"

struct redisReply;

/* v in decimal into buf (>= 20 bytes), no NUL; returns the length. */
size_t bl_u64_dec(char *buf, uint64_t v);
/* The RESP encoding of argv ("*<argc>\r\n", then "$<len>\r\n<arg>\r\n" per
 * argument: the bytes redisFormatCommandArgv produces) into buf; returns its
 * length, or 0 if cap might be too small (it counts 20 digits a length). */
size_t bl_resp_format(char *buf, size_t cap, int argc, const char **argv, const size_t *lens);

/* A lock script's reply as a result. Anything that is not one of the
 * documented answers is BL_EREDIS; res->errmsg may point into reply. */
void bl_redis_interpret(enum bl_op_kind kind, const struct redisReply *reply, bl_op_result *res);
/* The same for a group of n postings (the *_many scripts): on an acquire's
 * BL_OK, tokens[0..n) are written (and res->token = tokens[0]); on its
 * BL_EBUSY / BL_EDONE, res->index says which posting. Pure. */
void bl_redis_interpret_group(enum bl_op_kind kind, size_t n, const struct redisReply *reply,
                              bl_op_result *res, uint64_t *tokens);
/* The lock_info script's reply (bl_list_locks): 1 held (key[0..*klen) and
 * holder[0..*hlen) point into reply; *held_ms from the token and the
 * server's TIME), 0 not held any more, -1 not such an answer. Pure. */
int bl_redis_lock_info_reply(const struct redisReply *reply, const char **key, size_t *klen,
                             const char **holder, size_t *hlen, int64_t *pttl_ms, uint64_t *token,
                             uint64_t *held_ms);
/* The inspect script's reply as lock info. BL_OK: info's held, pttl_ms,
 * done, last_token are set, and info->holder points at a malloc'd copy
 * stored in *holder_buf (the caller frees it). BL_EREDIS: not an inspect
 * answer; info->errmsg says why (it may point into reply). BL_ENOMEM. */
int bl_redis_inspect_reply(const struct redisReply *reply, bl_lock_info *info, char **holder_buf);
/* A SCAN reply. Returns -1 if it is not a SCAN answer (an error reply, a
 * cursor that is not 1..cap-1 digits), else the number of lock keys under
 * prefix it lists, stored as pointers into reply in keys/lens (room for
 * reply's element[1]->elements entries); the next cursor goes to
 * cursor[0..cap). */
long bl_redis_scan_reply(const struct redisReply *reply, const char *prefix, char *cursor,
                         size_t cap, const char **keys, size_t *lens);

/* Redis Cluster's redirections: "MOVED 3999 127.0.0.1:6381" or
 * "ASK 3999 [::1]:6381" (an error reply's text). 0 and the slot
 * (< BL_CLUSTER_SLOTS), the address (brackets taken off, NUL-terminated in
 * ip[0..iplen)) and the port (1..65535), *ask saying which it was; -1 if
 * msg is neither. Pure. */
int bl_redis_parse_redirect(const char *msg, int *ask, unsigned *slot, char *ip, size_t iplen,
                            int *port);

/* A CLUSTER SLOTS answer into owner[0..BL_CLUSTER_SLOTS): the index that
 * node(ctx, ip, port, 1) gives each range's master, BL_SLOT_NONE for slots
 * no range names or whose master node() refused (< 0: an address it cannot
 * use); replicas are passed to node(ctx, ip, port, 0) (its answer is not
 * used). An empty ip is the node that answered (Redis's own rule): node()
 * gets "" then. 0, or -1 if rep is not such an answer (owner is then
 * partly written). Pure. */
#define BL_SLOT_NONE 0xFFFF
typedef int (*bl_slots_node_fn)(void *ctx, const char *ip, long long port, int master);
int bl_redis_parse_slots(const struct redisReply *rep, uint16_t *owner, bl_slots_node_fn node,
                         void *ctx);

#endif
