/* keyspace.c - see keyspace.h: the one place that knows the key layout. */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "keyspace.h"

/* How each name is made from the lock key L = "P:M:X". */
enum form { F_LOCK, F_TAGGED, F_OLD };
static const struct {
    enum form form;
    const char *kind;
} names[BL_KEY_COUNT] = {
    [BL_KEY_LOCK] = {F_LOCK, ""},
    [BL_KEY_QUEUE] = {F_TAGGED, "q"},        /* {L}:q */
    [BL_KEY_FENCE] = {F_TAGGED, "fence"},    /* {L}:fence */
    [BL_KEY_DONE] = {F_TAGGED, "done"},      /* {L}:done */
    [BL_KEY_OLD_DONE] = {F_OLD, "done"},     /* P::done:M:X */
    [BL_KEY_OLD_FENCE] = {F_OLD, "fence"},   /* P::fence:M:X */
};

static size_t name_len(int i, size_t plen, size_t mlen, size_t xlen)
{
    size_t n = plen + 1 + mlen + 1 + xlen;
    switch (names[i].form) {
    case F_TAGGED:
        return n + 3 + strlen(names[i].kind); /* "{" "}:" */
    case F_OLD:
        return n + 2 + strlen(names[i].kind); /* ":" kind ":" */
    default:
        return n;
    }
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
        const char *kind = names[i].kind;
        if (names[i].form == F_TAGGED)
            *p++ = '{';
        p = put(p, prefix, plen);
        *p++ = ':';
        if (names[i].form == F_OLD) {
            *p++ = ':';
            p = put(p, kind, strlen(kind));
            *p++ = ':';
        }
        p = put(p, mp, mlen);
        *p++ = ':';
        p = put(p, posting, xlen);
        if (names[i].form == F_TAGGED) {
            *p++ = '}';
            *p++ = ':';
            p = put(p, kind, strlen(kind));
        }
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

int bl_keys_is_old_queue(const char *k, size_t n, const char *prefix, size_t plen)
{
    return n > plen + 4 && memcmp(k, prefix, plen) == 0 && memcmp(k + plen, "::q:", 4) == 0;
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
    if (keylen + 3 + hlen + 1 > cap)
        return 0;
    char *p = dst;
    *p++ = '{';
    p = put(p, key, keylen);
    *p++ = '}';
    *p++ = '|';
    p = put(p, holder, hlen);
    *p = '\0';
    return keylen + 3 + hlen;
}

const char *bl_keys_channel_key(const char *ch, size_t n, const char *holder, size_t hlen,
                                size_t *keylen)
{
    if (n < hlen + 5 || ch[0] != '{' || ch[n - hlen - 1] != '|' || ch[n - hlen - 2] != '}' ||
        memcmp(ch + n - hlen, holder, hlen) != 0)
        return NULL;
    *keylen = n - hlen - 3;
    return ch + 1;
}

uint16_t bl_crc16(const char *s, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)((unsigned char)s[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned bl_key_slot(const char *key, size_t n)
{
    const char *open = memchr(key, '{', n);
    if (open) {
        const char *from = open + 1;
        const char *close = memchr(from, '}', (size_t)(key + n - from));
        if (close && close > from)
            return bl_crc16(from, (size_t)(close - from)) & (BL_CLUSTER_SLOTS - 1);
    }
    return bl_crc16(key, n) & (BL_CLUSTER_SLOTS - 1);
}

size_t bl_keys_tagged_of(char *dst, size_t cap, const char *key, size_t n, const char *suffix)
{
    size_t sl = strlen(suffix), len = 1 + n + 1 + sl;
    if (len + 1 > cap)
        return 0;
    dst[0] = '{';
    memcpy(dst + 1, key, n);
    dst[1 + n] = '}';
    memcpy(dst + 2 + n, suffix, sl + 1); /* with its NUL */
    return len;
}

size_t bl_keys_fence_of(char *dst, size_t cap, const char *key, size_t n)
{
    return bl_keys_tagged_of(dst, cap, key, n, ":fence");
}
