/* redis_sub.c - wake-ups: the subscriber connection and the backend's own
 * table of what it listens on. The engine says when the first waiter of
 * this manager arrives on a key and when the last one leaves (watch); this
 * file (UN)SUBSCRIBEs the channel "{<key>}|<holder>" and reports releases
 * heard there to the host (wake). A subscription lingers LINGER_MS after
 * the last waiter, so a hot key is not re-subscribed per request. */
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "redis.h"

static unsigned hash_key(const char *k, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h % SUB_BUCKETS;
}

static sub_entry *find(redis_be *r, const char *key, size_t n)
{
    for (sub_entry *e = r->subs[hash_key(key, n)]; e; e = e->hnext)
        if (e->keylen == n && memcmp(e->key, key, n) == 0)
            return e;
    return NULL;
}

static sub_entry *find_or_add(redis_be *r, const char *key, size_t n)
{
    sub_entry *e = find(r, key, n);
    if (e)
        return e;
    e = calloc(1, sizeof *e + n + 1);
    if (!e)
        return NULL; /* no wake-ups for this key: the backoff timer still runs */
    memcpy(e->key, key, n);
    e->keylen = n;
    unsigned b = hash_key(key, n);
    e->hnext = r->subs[b];
    r->subs[b] = e;
    return e;
}

static void drop(redis_be *r, sub_entry *e)
{
    sub_entry **pp = &r->subs[hash_key(e->key, e->keylen)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    free(e);
}

/* Visit every entry; fn may drop the one it is given. */
static void each(redis_be *r, void (*fn)(redis_be *, sub_entry *, void *), void *arg)
{
    for (int i = 0; i < SUB_BUCKETS; i++) {
        sub_entry *e = r->subs[i];
        while (e) {
            sub_entry *next = e->hnext;
            fn(r, e, arg);
            e = next;
        }
    }
}

static int sub_command(redis_be *r, sub_entry *e, const char *verb, redisCallbackFn *cb)
{
    /* The channel of keyspace.h: "{<key>}|<holder>". */
    return redisAsyncCommand(r->sub.ac, cb, r, "%s {%b}|%b", verb, e->key, e->keylen,
                             r->h.holder, r->h.holder_len);
}

static void sub_cb(redisAsyncContext *ac, void *reply, void *priv);

static void subscribe(redis_be *r, sub_entry *e)
{
    if (!r->sub.ac || r->shutting)
        return;
    if (sub_command(r, e, "SUBSCRIBE", sub_cb) == REDIS_OK)
        e->state = SUB_PENDING;
}

static void sub_cb(redisAsyncContext *ac, void *reply_, void *priv)
{
    redisReply *reply = reply_;
    redis_be *r = priv;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 || r->sub.ac != ac)
        return; /* NULL: the connection went; redis_sub_forget resets the states */
    const redisReply *type = reply->element[0], *ch = reply->element[1], *arg = reply->element[2];
    if (type->type != REDIS_REPLY_STRING || ch->type != REDIS_REPLY_STRING)
        return;
    size_t keylen;
    const char *key = bl_keys_channel_key(ch->str, ch->len, r->h.holder, r->h.holder_len, &keylen);
    if (!key)
        return;
    if (strcmp(type->str, "message") == 0) {
        /* "g<token>": a release made us the holder (direct hand-off);
         * "": the lock is reserved for us (a group's release, a transfer);
         * "*": it is done, look again. */
        uint64_t token = 0;
        if (arg->type == REDIS_REPLY_STRING && arg->len > 1 && arg->len <= 21 &&
            arg->str[0] == 'g') {
            for (size_t i = 1; i < arg->len && token != UINT64_MAX; i++)
                token = arg->str[i] >= '0' && arg->str[i] <= '9' &&
                                token <= (UINT64_MAX - 9) / 10
                            ? token * 10 + (uint64_t)(arg->str[i] - '0')
                            : UINT64_MAX;
            if (token == UINT64_MAX)
                token = 0;
        }
        if (token && r->h.granted) {
            if (!r->h.granted(r->h.ctx, key, keylen, token))
                redis_give_back(r, key, keylen);
            return;
        }
        int all = arg->type == REDIS_REPLY_STRING && arg->len == 1 && arg->str[0] == '*';
        r->h.wake(r->h.ctx, key, keylen, !all);
        return;
    }
    sub_entry *e = find(r, key, keylen);
    if (!e)
        return;
    if (strcmp(type->str, "subscribe") == 0) {
        e->state = SUB_ON;
        /* A release between our busy attempt and this subscription was not
         * heard: everyone waiting retries once now. */
        if (e->wanted)
            r->h.wake(r->h.ctx, key, keylen, 0);
    } else if (strcmp(type->str, "unsubscribe") == 0) {
        e->state = SUB_NONE;
        if (e->wanted)
            subscribe(r, e); /* a waiter came back meanwhile */
        else
            drop(r, e);
    }
}

static void resubscribe_one(redis_be *r, sub_entry *e, void *arg)
{
    (void)arg;
    if (e->wanted && e->state == SUB_NONE)
        subscribe(r, e);
}

void redis_sub_resubscribe(redis_be *r)
{
    each(r, resubscribe_one, NULL);
}

static void forget_one(redis_be *r, sub_entry *e, void *arg)
{
    (void)arg;
    e->state = SUB_NONE;
    if (!e->wanted)
        drop(r, e);
}

void redis_sub_forget(redis_be *r)
{
    each(r, forget_one, NULL);
}

static void free_one(redis_be *r, sub_entry *e, void *arg)
{
    (void)arg;
    drop(r, e);
}

void redis_sub_free(redis_be *r)
{
    each(r, free_one, NULL);
}

typedef struct sweep {
    uint64_t now;
    int lingering;
} sweep;

static void sweep_one(redis_be *r, sub_entry *e, void *arg)
{
    sweep *s = arg;
    if (e->wanted || e->state != SUB_ON)
        return;
    if (s->now - e->idle_since >= LINGER_MS) {
        if (sub_command(r, e, "UNSUBSCRIBE", NULL) == REDIS_OK)
            e->state = SUB_LEAVING;
    } else {
        s->lingering = 1;
    }
}

void redis_linger_cb(void *data)
{
    redis_be *r = data;
    r->linger_armed = 0;
    if (!r->sub.ac || r->sub.state != CONN_UP || r->shutting)
        return;
    sweep s = {bl_host_now(&r->h), 0};
    each(r, sweep_one, &s);
    if (s.lingering) {
        r->linger_armed = 1;
        LOOP(r)->timer_start(r->linger_timer, LINGER_MS / 2);
    }
}

void redis_sub_watch(bl_backend *be, const char *key, size_t keylen, int on)
{
    redis_be *r = (redis_be *)be;
    if (r->shutting)
        return;
    if (on) {
        sub_entry *e = find_or_add(r, key, keylen);
        if (!e)
            return;
        e->wanted = 1;
        if (!r->sub_started) {
            r->sub_started = 1;
            redis_connect(&r->sub); /* subscribes every wanted key itself */
        } else if (e->state == SUB_NONE) {
            subscribe(r, e);
        }
        return;
    }
    sub_entry *e = find(r, key, keylen);
    if (!e)
        return;
    e->wanted = 0;
    e->idle_since = bl_host_now(&r->h);
    if (e->state == SUB_NONE) {
        drop(r, e);
    } else if (!r->linger_armed) {
        r->linger_armed = 1;
        LOOP(r)->timer_start(r->linger_timer, LINGER_MS);
    }
}

typedef struct visit {
    void (*fn)(void *arg, const char *key, size_t keylen);
    void *arg;
} visit;

static void visit_one(redis_be *r, sub_entry *e, void *arg)
{
    (void)r;
    visit *v = arg;
    if (e->wanted)
        v->fn(v->arg, e->key, e->keylen);
}

void redis_sub_each_wanted(redis_be *r, void (*fn)(void *arg, const char *key, size_t keylen),
                           void *arg)
{
    visit v = {fn, arg};
    each(r, visit_one, &v);
}
