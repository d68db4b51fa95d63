/* keyspace.h - every name bidlock uses on the server, built and parsed in
 * one place (keyspace.c). A posting (prefix P, marketplace M, posting X):
 *   P:M:X          the lock: holder id, or "~"..holder while a release has
 *                  reserved it for that waiter (fair hand-off, short PX)
 *   P::q:M:X       waiters: sorted set holder -> arrival ms (server clock)
 *   P::fence:M:X   last fencing token handed out
 *   P::done:M:X    done marker (holder that marked it)
 *   P:M:X|H        pub/sub channel (not a key) on which holder H waits
 * A marketplace is never empty, so "P::..." can never be a lock key. */
#ifndef BIDLOCK_KEYSPACE_H
#define BIDLOCK_KEYSPACE_H

#include <stddef.h>

enum { BL_KEY_LOCK, BL_KEY_QUEUE, BL_KEY_FENCE, BL_KEY_DONE, BL_KEY_COUNT };

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
 * Plain copies, not sprintf: a request builds four names, and sprintf was
 * a fifth of the client's instructions per W2 cycle. */
void bl_keys_build(bl_keys *out, char *block, const char *prefix, size_t plen, const char *mp,
                   size_t mlen, const char *posting, size_t xlen);
/* The same in one malloc (free() it); NULL on out of memory. */
bl_keys *bl_keys_new(const char *prefix, const char *mp, const char *posting);
/* "<prefix>:<mp>:<posting>" into a fresh malloc'd string; NULL on OOM. */
char *bl_make_key(const char *prefix, const char *mp, const char *posting, size_t *len);

/* 1 if k[0..n) is a lock key under prefix: "<prefix>:<mp>:<posting>" with
 * both ids non-empty (never "<prefix>::...", the other names). */
int bl_keys_is_lock_key(const char *k, size_t n, const char *prefix, size_t plen);
/* A SCAN MATCH pattern for every name under prefix (glob characters of the
 * prefix escaped) into dst (2 * BL_PREFIX_MAX + 4 bytes). */
void bl_keys_scan_pattern(char *dst, const char *prefix);

/* The wake-up channel "<lock key>|<holder>" into dst (cap bytes, NUL-
 * terminated); returns its length, or 0 if it does not fit. */
size_t bl_keys_channel(char *dst, size_t cap, const char *key, size_t keylen, const char *holder,
                       size_t hlen);
/* The lock key of channel ch[0..n) if it is holder's channel: its length
 * in *keylen and ch itself; NULL if the channel is not holder's. */
const char *bl_keys_channel_key(const char *ch, size_t n, const char *holder, size_t hlen,
                                size_t *keylen);

#endif
