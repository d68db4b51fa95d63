/* waitq.c - the engine's wait queues: which requests of this manager wait
 * on which key, oldest first. The engine alone owns them; a backend only
 * hears "first waiter on key" / "last waiter gone" (watch) and reports
 * releases (host wake), which land in bl_wq_wake. */
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static unsigned hash_key(const char *k, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h % BL_WQ_BUCKETS;
}

bl_wq *bl_wq_find(bl_manager *m, const char *key, size_t n)
{
    for (bl_wq *w = m->wq[hash_key(key, n)]; w; w = w->hnext)
        if (w->keylen == n && memcmp(w->key, key, n) == 0)
            return w;
    return NULL;
}

static void drop(bl_manager *m, bl_wq *w)
{
    bl_wq **pp = &m->wq[hash_key(w->key, w->keylen)];
    while (*pp != w)
        pp = &(*pp)->hnext;
    *pp = w->hnext;
    free(w);
}

void bl_wq_join(bl_lock *lock)
{
    bl_manager *m = lock->m;
    const char *key = lock->keys.k[BL_KEY_LOCK];
    size_t n = lock->keys.len[BL_KEY_LOCK];
    bl_wq *w = bl_wq_find(m, key, n);
    if (!w) {
        w = calloc(1, sizeof *w + n + 1);
        if (!w)
            return; /* no wake-ups for this one: the backoff timer still runs */
        memcpy(w->key, key, n);
        w->keylen = n;
        unsigned b = hash_key(key, n);
        w->hnext = m->wq[b];
        m->wq[b] = w;
    }
    lock->wq = w;
    lock->wnext = NULL;
    lock->wprev = w->tail;
    if (w->tail)
        w->tail->wnext = lock;
    else
        w->head = lock;
    w->tail = lock;
    if (++w->nwait == 1)
        m->be->vt->watch(m->be, w->key, w->keylen, 1);
}

void bl_wq_leave(bl_lock *lock)
{
    bl_manager *m = lock->m;
    bl_wq *w = lock->wq;
    if (lock->wprev)
        lock->wprev->wnext = lock->wnext;
    else
        w->head = lock->wnext;
    if (lock->wnext)
        lock->wnext->wprev = lock->wprev;
    else
        w->tail = lock->wprev;
    lock->wq = NULL;
    lock->wprev = lock->wnext = NULL;
    if (--w->nwait == 0) {
        m->be->vt->watch(m->be, w->key, w->keylen, 0);
        drop(m, w);
    }
}

void bl_wq_wake(bl_manager *m, const char *key, size_t keylen, int directed)
{
    bl_wq *w = bl_wq_find(m, key, keylen);
    if (!w)
        return;
    for (bl_lock *l = w->head; l;) {
        bl_lock *next = l->wnext; /* waking may end the request */
        if (l->state == LS_WAITING || l->state == LS_ACQUIRING) {
            bl_lock_wake(l, directed);
            if (directed)
                return; /* reserved for one of us: the oldest goes */
        }
        l = next;
    }
}

int bl_wq_granted(bl_manager *m, const char *key, size_t keylen, uint64_t token)
{
    bl_wq *w = bl_wq_find(m, key, keylen);
    if (!w)
        return 0;
    /* The oldest waiting request takes it. One with an attempt out will
     * find the lock held under our id and reclaim it (lock.c): nothing to
     * give back then. */
    int out = 0;
    for (bl_lock *l = w->head; l; l = l->wnext) {
        if (l->state == LS_WAITING && bl_lock_take_grant(l, token))
            return 1;
        if (l->state == LS_ACQUIRING && !l->abandoned)
            out = 1;
    }
    if (out)
        for (bl_lock *l = w->head; l; l = l->wnext)
            if (l->state == LS_ACQUIRING && !l->abandoned) {
                bl_lock_wake(l, 1);
                break;
            }
    return out;
}

/* Manager free: every request is gone, so every queue is empty already;
 * this only guards against a queue left by an out-of-memory path. */
void bl_wq_free_all(bl_manager *m)
{
    for (int i = 0; i < BL_WQ_BUCKETS; i++)
        while (m->wq[i]) {
            for (bl_lock *l = m->wq[i]->head; l; l = l->wnext)
                l->wq = NULL;
            drop(m, m->wq[i]);
        }
}
