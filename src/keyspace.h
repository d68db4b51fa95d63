/* keyspace.h - every name bidlock uses on the server, built and parsed in
 * one place (keyspace.c). A posting (prefix P, marketplace M, posting X),
 * with L = "P:M:X", the lock key:
 *   P:M:X          the lock: holder id (a waiter's, for handoff_ms, when a
 *                  release handed it on), or "~"..holder while a group's
 *                  release has reserved it for that waiter (short PX)
 *   {L}:q          waiters: sorted set holder -> arrival ms (server clock)
 *   {L}:fence      last fencing token handed out
 *   {L}:done       done marker (holder that marked it)
 *   {L}|H          pub/sub channel (not a key) on which holder H waits
 * Every name but the lock's carries the lock key as its Redis Cluster hash
 * tag, and the lock key itself has no '{' before a '}' (ids.c refuses '}'
 * everywhere and a prefix that starts with '{'), so all of a lock's names
 * hash to one slot: a script touching them never gets CROSSSLOT, and a
 * client of the 0.1 layout still contends on the same lock key.
 *
 * The 0.1 layout, still honoured for one release on one server
 * (never in a cluster, where it could not run):
 *   P::q:M:X  P::fence:M:X  P::done:M:X  channel P:M:X|H
 * Acquire also refuses a posting marked done under the old name and takes
 * the old counter as a token floor; release-done writes both markers, so
 * old and new clients can run side by side during an upgrade. */
#ifndef BIDLOCK_KEYSPACE_H
#define BIDLOCK_KEYSPACE_H

#include <stddef.h>
#include <stdint.h>

enum {
    BL_KEY_LOCK,
    BL_KEY_QUEUE,
    BL_KEY_FENCE,
    BL_KEY_DONE,
    BL_KEY_OLD_DONE,  /* P::done:M:X (0.1 layout) */
    BL_KEY_OLD_FENCE, /* P::fence:M:X (0.1 layout) */
    BL_KEY_COUNT
};

/* The names of one posting. The strings are NUL-terminated and live in a
 * block the owner of the struct provides (bl_keys_size / bl_keys_build) or
 * in the same allocation (bl_keys_new). */
typedef struct bl_keys {
    const char *k[BL_KEY_COUNT];
    size_t len[BL_KEY_COUNT];
} bl_keys;

/* Bytes bl_keys_build needs for ids of these lengths. */
size_t bl_keys_size(size_t plen, size_t mlen, size_t xlen);
/* Build every name into block (bl_keys_size bytes) and point *out at them.
 * Plain copies, not sprintf: a request builds six names, and sprintf was
 * a fifth of the client's instructions per W2 cycle. */
void bl_keys_build(bl_keys *out, char *block, const char *prefix, size_t plen, const char *mp,
                   size_t mlen, const char *posting, size_t xlen);
/* The same in one malloc (free() it); NULL on out of memory. */
bl_keys *bl_keys_new(const char *prefix, const char *mp, const char *posting);
/* "<prefix>:<mp>:<posting>" into a fresh malloc'd string; NULL on OOM. */
char *bl_make_key(const char *prefix, const char *mp, const char *posting, size_t *len);

/* 1 if k[0..n) is a lock key under prefix: "<prefix>:<mp>:<posting>" with
 * both ids non-empty (never "<prefix>::...", the old layout's names). */
int bl_keys_is_lock_key(const char *k, size_t n, const char *prefix, size_t plen);
/* 1 if k[0..n) is a wait queue of the 0.1 layout ("<prefix>::q:..."). */
int bl_keys_is_old_queue(const char *k, size_t n, const char *prefix, size_t plen);
/* A SCAN MATCH pattern for the lock keys under prefix, which also matches
 * the old layout's names (glob characters of the prefix escaped) into dst
 * (2 * BL_PREFIX_MAX + 4 bytes). */
void bl_keys_scan_pattern(char *dst, const char *prefix);

/* The wake-up channel "{<lock key>}|<holder>" into dst (cap bytes, NUL-
 * terminated); returns its length, or 0 if it does not fit. */
size_t bl_keys_channel(char *dst, size_t cap, const char *key, size_t keylen, const char *holder,
                       size_t hlen);
/* The lock key of channel ch[0..n) if it is holder's channel: its length
 * in *keylen and a pointer into ch; NULL if the channel is not holder's. */
const char *bl_keys_channel_key(const char *ch, size_t n, const char *holder, size_t hlen,
                                size_t *keylen);

/* The fence counter "{<lock key>}:fence" of lock key key[0..n) into dst
 * (cap bytes, NUL-terminated); its length, or 0 if it does not fit. */
size_t bl_keys_fence_of(char *dst, size_t cap, const char *key, size_t n);
/* The same for any of a lock's tagged names: "{<lock key>}<suffix>"
 * (suffix ":q", ":fence", ":done"). */
size_t bl_keys_tagged_of(char *dst, size_t cap, const char *key, size_t n, const char *suffix);

/* Redis Cluster: CRC16 (XMODEM: poly 0x1021, init 0, no reflection) of
 * s[0..n), and the slot (0..16383) of a key - of its hash tag, the bytes
 * between the first '{' and the first '}' after it, if they are not
 * empty, else of the whole key. */
uint16_t bl_crc16(const char *s, size_t n);
unsigned bl_key_slot(const char *key, size_t n);
#define BL_CLUSTER_SLOTS 16384

#endif
