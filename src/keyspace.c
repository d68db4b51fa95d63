/* keyspace.c - see keyspace.h: the one place that knows the key layout. */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "keyspace.h"

/* The part after "<prefix>:" for each name; NULL for the lock itself. */
static const char *const kinds[BL_KEY_COUNT] = {NULL, "q", "fence", "done"};

static size_t name_len(int i, size_t plen, size_t mlen, size_t xlen)
{
    size_t n = plen + 1 + mlen + 1 + xlen;
    return kinds[i] ? n + 1 + strlen(kinds[i]) + 1 : n;
}

size_t bl_keys_size(size_t plen, size_t mlen, size_t xlen)
{
    size_t total = 0;
    for (int i = 0; i < BL_KEY_COUNT; i++)
        total += name_len(i, plen, mlen, xlen) + 1;
    return total;
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

void bl_keys_build(bl_keys *out, char *block, const char *prefix, size_t plen, const char *mp,
                   size_t mlen, const char *posting, size_t xlen)
{
    char *p = block;
    for (int i = 0; i < BL_KEY_COUNT; i++) {
        char *start = p;
        p = put(p, prefix, plen);
        *p++ = ':';
        if (kinds[i]) {
            *p++ = ':';
            p = put(p, kinds[i], strlen(kinds[i]));
            *p++ = ':';
        }
        p = put(p, mp, mlen);
        *p++ = ':';
        p = put(p, posting, xlen);
        *p++ = '\0';
        out->k[i] = start;
        out->len[i] = (size_t)(p - start - 1);
    }
}

bl_keys *bl_keys_new(const char *prefix, const char *mp, const char *posting)
{
    size_t plen = strlen(prefix), mlen = strlen(mp), xlen = strlen(posting);
    bl_keys *k = malloc(sizeof *k + bl_keys_size(plen, mlen, xlen));
    if (k)
        bl_keys_build(k, (char *)(k + 1), prefix, plen, mp, mlen, posting, xlen);
    return k;
}

char *bl_make_key(const char *prefix, const char *mp, const char *posting, size_t *len)
{
    bl_keys *k = bl_keys_new(prefix, mp, posting);
    char *key = k ? strdup(k->k[BL_KEY_LOCK]) : NULL;
    if (key && len)
        *len = k->len[BL_KEY_LOCK];
    free(k);
    return key;
}

int bl_keys_is_lock_key(const char *k, size_t n, const char *prefix, size_t plen)
{
    if (n < plen + 4 || memcmp(k, prefix, plen) != 0 || k[plen] != ':' || k[plen + 1] == ':')
        return 0;
    const char *c = memchr(k + plen + 2, ':', n - plen - 2);
    return c && c + 1 < k + n;
}

void bl_keys_scan_pattern(char *dst, const char *prefix)
{
    char *p = dst;
    for (const char *s = prefix; *s; s++) {
        if (strchr("*?[]\\", *s))
            *p++ = '\\';
        *p++ = *s;
    }
    *p++ = ':';
    *p++ = '*';
    *p = '\0';
}

size_t bl_keys_channel(char *dst, size_t cap, const char *key, size_t keylen, const char *holder,
                       size_t hlen)
{
    if (keylen + 1 + hlen + 1 > cap)
        return 0;
    char *p = put(dst, key, keylen);
    *p++ = '|';
    p = put(p, holder, hlen);
    *p = '\0';
    return keylen + 1 + hlen;
}

const char *bl_keys_channel_key(const char *ch, size_t n, const char *holder, size_t hlen,
                                size_t *keylen)
{
    if (n < hlen + 2 || ch[n - hlen - 1] != '|' || memcmp(ch + n - hlen, holder, hlen) != 0)
        return NULL;
    *keylen = n - hlen - 1;
    return ch;
}
