/* memory.c - the in-memory backend, for development and tests.
 *
 * Same semantics as Redis for one process: TTL expiry, holder-verified
 * release and extend, busy/timeout outcomes, fencing tokens, done markers,
 * wake-ups on release. Every manager of the process that uses it shares one
 * store, so several "instances" in one process exclude each other - but
 * nothing is shared with other processes. Callbacks stay asynchronous: an
 * operation runs when the loop drains the backend's queue (timer 0), in
 * order, like a server would. The store is not thread-safe: keep every
 * memory-backed manager on one loop thread. Differences from Redis: a
 * release wakes every waiter (no reserved hand-off), and expiry is checked
 * when a key is touched.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ids.h"

#define MEM_BUCKETS 1024

typedef struct mem_entry {
    struct mem_entry *next;
    char *holder;         /* NULL when free */
    uint64_t expires_ms;  /* when held */
    uint64_t done_until;  /* 0 = not done */
    char *done_by;
    uint64_t last_token;
    size_t keylen;
    char key[];
} mem_entry;

typedef struct mem_op {
    struct mem_op *next;
    bl_op *lop;         /* lock operation, or */
    bl_aop *aop;        /* admin operation */
} mem_op;

typedef struct mem_be {
    bl_backend base;
    bl_backend_host h;
    struct mem_be *next_be;
    mem_op *head, *tail;
    bl_timer *timer;
    int shutting;
} mem_be;

static struct {
    mem_entry *buckets[MEM_BUCKETS];
    mem_be *backends;
    uint64_t last_token_floor;
} store;

static unsigned bucket(const char *k, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h % MEM_BUCKETS;
}

static uint64_t now_ms(mem_be *b)
{
    return bl_host_now(&b->h);
}

static mem_entry *find(const char *key, size_t n, int create)
{
    unsigned i = bucket(key, n);
    for (mem_entry *e = store.buckets[i]; e; e = e->next)
        if (e->keylen == n && memcmp(e->key, key, n) == 0)
            return e;
    if (!create)
        return NULL;
    mem_entry *e = calloc(1, sizeof *e + n + 1);
    if (!e)
        return NULL;
    memcpy(e->key, key, n);
    e->keylen = n;
    e->next = store.buckets[i];
    store.buckets[i] = e;
    return e;
}

/* Lazy expiry, and forget entries that carry nothing. Tokens survive the
 * entry: they are floored by a process-wide monotonic clock. */
static void settle(mem_entry *e, uint64_t now)
{
    if (e->holder && now >= e->expires_ms) {
        free(e->holder);
        e->holder = NULL;
    }
    if (e->done_until && now >= e->done_until) {
        e->done_until = 0;
        free(e->done_by);
        e->done_by = NULL;
    }
}

static void maybe_drop(mem_entry *e)
{
    if (e->holder || e->done_until)
        return;
    mem_entry **pp = &store.buckets[bucket(e->key, e->keylen)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    free(e);
}

static uint64_t next_token(mem_entry *e)
{
    uint64_t t = bl_now_us();
    if (t <= e->last_token)
        t = e->last_token + 1;
    if (t <= store.last_token_floor)
        t = store.last_token_floor + 1;
    e->last_token = t;
    store.last_token_floor = t;
    return t;
}

static void wake_all(const char *key, size_t n)
{
    for (mem_be *b = store.backends; b; b = b->next_be)
        if (!b->shutting)
            b->h.wake(b->h.ctx, key, n, 0);
}

/* ---- running operations ------------------------------------------------------ */

/* A group (bl_acquire_many): all of op->keys[0..nkeys) or none, as the
 * *_many scripts do on Redis. */
static void run_group_op(mem_be *b, bl_op *op)
{
    const char *holder = b->h.holder;
    uint64_t now = now_ms(b);
    bl_op_result r = {BL_OK, 0, 0, NULL, 0, 0};
    size_t n = op->nkeys;
#define KEY(i) op->keys[i].k[BL_KEY_LOCK], op->keys[i].len[BL_KEY_LOCK]
    if (op->kind == BL_OP_ACQUIRE) {
        for (int pass = 0; pass < 2 && r.status == BL_OK; pass++)
            for (size_t i = 0; i < n && r.status == BL_OK; i++) {
                mem_entry *e = find(KEY(i), 0);
                if (!e)
                    continue;
                settle(e, now);
                if (pass == 0 && e->done_until)
                    r.status = BL_EDONE, r.index = (int)i;
                else if (pass == 1 && e->holder)
                    r.status = BL_EBUSY, r.index = (int)i;
                maybe_drop(e);
            }
        for (size_t i = 0; i < n && r.status == BL_OK; i++) {
            mem_entry *e = find(KEY(i), 1);
            if (!e || !(e->holder = strdup(holder))) {
                if (e)
                    maybe_drop(e);
                /* Give back what this call took, so nothing is half held. */
                for (size_t j = 0; j < i; j++) {
                    mem_entry *x = find(KEY(j), 0);
                    free(x->holder);
                    x->holder = NULL;
                    maybe_drop(x);
                }
                r.status = BL_ENOMEM, r.errmsg = "out of memory in the memory backend";
                break;
            }
            e->expires_ms = now + op->ttl_ms;
            op->tokens[i] = next_token(e);
        }
        if (r.status == BL_OK)
            r.token = op->tokens[0];
        op->done(op, &r);
        return;
    }
    size_t mine = 0;
    for (size_t i = 0; i < n; i++) {
        mem_entry *e = find(KEY(i), 0);
        if (!e)
            continue;
        settle(e, now);
        if (e->holder && strcmp(e->holder, holder) == 0) {
            mine++;
            if (op->kind == BL_OP_EXTEND) {
                e->expires_ms = now + op->ttl_ms;
            } else {
                free(e->holder);
                e->holder = NULL;
                if (op->kind == BL_OP_RELEASE_DONE) {
                    free(e->done_by);
                    e->done_by = strdup(holder);
                    e->done_until = now + b->h.cfg->done_ttl_ms;
                }
            }
        }
        maybe_drop(e);
    }
    if (mine < n)
        r.status = BL_ENOTHELD;
    /* Wake first: completing may free the request and with it the keys. */
    if (op->kind != BL_OP_EXTEND)
        for (size_t i = 0; i < n; i++)
            wake_all(KEY(i));
#undef KEY
    op->done(op, &r);
}

static void run_lock_op(mem_be *b, bl_op *op)
{
    if (op->nkeys) {
        run_group_op(b, op);
        return;
    }
    enum bl_op_kind kind = op->kind;
    const char *holder = b->h.holder;
    uint64_t now = now_ms(b);
    size_t n = op->keys->len[BL_KEY_LOCK];
    const char *key = op->keys->k[BL_KEY_LOCK];
    bl_op_result r = {BL_OK, 0, 0, NULL, 0, 0};
    mem_entry *e = find(key, n, kind == BL_OP_ACQUIRE);
    if (!e && kind == BL_OP_ACQUIRE) {
        r.status = BL_ENOMEM;
        r.errmsg = "out of memory in the memory backend";
        op->done(op, &r);
        return;
    }
    if (e)
        settle(e, now);
    int woke = 0;
    switch (kind) {
    case BL_OP_ACQUIRE:
        if (e->done_until && b->h.cfg->done_markers)
            r.status = BL_EDONE;
        else if (e->holder && !(op->reclaim && strcmp(e->holder, holder) == 0))
            r.status = BL_EBUSY, r.ours = strcmp(e->holder, holder) == 0;
        else if (e->holder) /* reclaimed: it was ours */
            e->expires_ms = now + op->ttl_ms, r.token = next_token(e);
        else if (!(e->holder = strdup(holder)))
            r.status = BL_ENOMEM, r.errmsg = "out of memory in the memory backend";
        else {
            e->expires_ms = now + op->ttl_ms;
            r.token = next_token(e);
        }
        break;
    case BL_OP_EXTEND:
        if (e && e->holder && strcmp(e->holder, holder) == 0)
            e->expires_ms = now + op->ttl_ms;
        else
            r.status = BL_ENOTHELD;
        break;
    case BL_OP_TRANSFER: {
        if (!e || !e->holder || strcmp(e->holder, holder) != 0) {
            r.status = BL_ENOTHELD;
            break;
        }
        char *to = strndup(op->target, op->target_len);
        if (!to) {
            r.status = BL_ENOMEM, r.errmsg = "out of memory in the memory backend";
            break;
        }
        free(e->holder);
        e->holder = to;
        e->expires_ms = now + op->ttl_ms;
        r.token = next_token(e);
        woke = 1; /* the target may wait on it */
        break;
    }
    default: /* release, release + done */
        if (!e || !e->holder || strcmp(e->holder, holder) != 0) {
            r.status = BL_ENOTHELD;
            break;
        }
        free(e->holder);
        e->holder = NULL;
        if (kind == BL_OP_RELEASE_DONE) {
            free(e->done_by);
            e->done_by = strdup(holder);
            e->done_until = now + b->h.cfg->done_ttl_ms;
        }
        woke = 1;
        break;
    }
    if (e)
        maybe_drop(e);
    /* Wake first: completing may free the lock and with it `key`. Woken
     * requests only queue their attempt, which runs on a later drain. */
    if (woke)
        wake_all(key, n);
    op->done(op, &r);
}

static void run_admin(mem_be *b, bl_aop *op)
{
    uint64_t now = now_ms(b);
    op->status = BL_OK;
    if (op->kind == BL_AOP_INSPECT) {
        mem_entry *e = find(op->keys->k[BL_KEY_LOCK], op->keys->len[BL_KEY_LOCK], 0);
        if (e) {
            settle(e, now);
            if (e->holder) {
                op->info.held = 1;
                op->holder_buf = strdup(e->holder);
                op->info.holder = op->holder_buf;
                op->info.pttl_ms = (int64_t)(e->expires_ms - now);
            }
            op->info.done = e->done_until != 0;
            op->info.last_token = e->last_token;
            maybe_drop(e);
        }
    } else if (op->kind == BL_AOP_LOCKS) {
        const char *prefix = b->h.prefix;
        size_t plen = strlen(prefix);
        uint64_t now_us = bl_now_us(); /* tokens are this clock's microseconds */
        for (int i = 0; i < MEM_BUCKETS && op->status == BL_OK; i++)
            for (mem_entry *e = store.buckets[i]; e && op->status == BL_OK; e = e->next) {
                settle(e, now);
                if (!e->holder || !bl_keys_is_lock_key(e->key, e->keylen, prefix, plen))
                    continue;
                uint64_t held =
                    e->last_token && now_us > e->last_token ? (now_us - e->last_token) / 1000 : 0;
                if (bl_aop_add_lock(op, e->key, e->keylen, e->holder, strlen(e->holder),
                                    (int64_t)(e->expires_ms - now), e->last_token, held)) {
                    op->status = BL_ENOMEM;
                    snprintf(op->errmsg, sizeof op->errmsg, "out of memory");
                }
            }
    } else if (op->kind == BL_AOP_CLEANUP) {
        const char *prefix = b->h.prefix, *holder = b->h.holder;
        size_t plen = strlen(prefix);
        for (int i = 0; i < MEM_BUCKETS; i++) {
            mem_entry *e = store.buckets[i];
            while (e) {
                mem_entry *next = e->next;
                settle(e, now);
                if (e->holder && bl_keys_is_lock_key(e->key, e->keylen, prefix, plen) &&
                    (!op->mine_only || strcmp(e->holder, holder) == 0)) {
                    free(e->holder);
                    e->holder = NULL;
                    op->removed++;
                }
                maybe_drop(e);
                e = next;
            }
        }
    }
    bl_aop_done(op);
}

static void drain(void *data)
{
    mem_be *b = data;
    /* Operations queued while draining run on the next turn of the loop. */
    mem_op *list = b->head;
    b->head = b->tail = NULL;
    while (list) {
        mem_op *op = list;
        list = op->next;
        if (op->lop)
            run_lock_op(b, op->lop);
        else
            run_admin(b, op->aop);
        free(op);
    }
    if (b->shutting && !b->head)
        b->h.closed(b->h.ctx);
}

static int enqueue(mem_be *b, bl_op *lop, bl_aop *aop)
{
    mem_op *op = calloc(1, sizeof *op);
    if (!op)
        return BL_ENOMEM;
    op->lop = lop;
    op->aop = aop;
    if (b->tail)
        b->tail->next = op;
    else
        b->head = op;
    b->tail = op;
    b->h.loop->timer_start(b->timer, 0);
    return 0;
}

static int be_start(bl_backend *be, bl_op *op)
{
    int rc = enqueue((mem_be *)be, op, NULL);
    if (rc)
        snprintf(op->errbuf, BL_ERRMSG_MAX, "out of memory");
    return rc;
}

static int be_admin(bl_backend *be, bl_aop *op)
{
    return enqueue((mem_be *)be, NULL, op);
}

static void be_leave(bl_backend *be, const bl_keys *keys)
{
    (void)be;
    (void)keys;
}

static void be_watch(bl_backend *be, const char *key, size_t keylen, int on)
{
    (void)be;
    (void)key;
    (void)keylen;
    (void)on;
}

static int be_conn_state(const bl_backend *be)
{
    (void)be;
    return BL_CONN_UP;
}

static void be_shutdown(bl_backend *be, int force)
{
    mem_be *b = (mem_be *)be;
    (void)force; /* nothing can hang: the queue drains on the next turn */
    b->shutting = 1;
    b->h.loop->timer_start(b->timer, 0);
}

static void be_free(bl_backend *be)
{
    mem_be *b = (mem_be *)be;
    mem_be **pp = &store.backends;
    while (*pp && *pp != b)
        pp = &(*pp)->next_be;
    if (*pp)
        *pp = b->next_be;
    while (b->head) { /* not reached after a close: it drains first */
        mem_op *op = b->head;
        b->head = op->next;
        free(op);
    }
    if (b->timer)
        b->h.loop->timer_free(b->timer);
    free(b);
    if (!store.backends) { /* last one out frees the store */
        for (int i = 0; i < MEM_BUCKETS; i++)
            while (store.buckets[i]) {
                mem_entry *e = store.buckets[i];
                store.buckets[i] = e->next;
                free(e->holder);
                free(e->done_by);
                free(e);
            }
    }
}

static const bl_backend_vt mem_vt = {
    "memory", be_start, be_leave, be_watch, be_admin, be_conn_state, be_shutdown, be_free,
    NULL, /* start_many: every renewal is a table lookup, there is no call to save */
};

int bl_memory_backend_new(const bl_backend_host *host, bl_backend **out)
{
    mem_be *b = calloc(1, sizeof *b);
    if (!b)
        return BL_ENOMEM;
    b->base.vt = &mem_vt;
    b->h = *host;
    b->timer = host->loop->timer_new(host->loop->impl, drain, b);
    if (!b->timer) {
        free(b);
        return BL_ENOMEM;
    }
    b->next_be = store.backends;
    store.backends = b;
    *out = &b->base;
    return 0;
}
