/* waitq.c - the engine's wait queues: which requests of this manager wait
 * on which key, oldest first. The engine alone owns them; a backend only
 * hears "first waiter on key" / "last waiter gone" (watch) and reports
 * releases (host wake), which land in bl_wq_wake. */
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static uint32_t hash_key(const char *k, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    return h;
}

static bl_wq **chain(bl_manager *m, const char *key, size_t n)
{
    return &m->wq[hash_key(key, n) & (m->nbuckets - 1)];
}

bl_wq *bl_wq_find(bl_manager *m, const char *key, size_t n)
{
    if (!m->wq)
        return NULL;
    for (bl_wq *w = *chain(m, key, n); w; w = w->hnext)
        if (w->names.len[BL_KEY_LOCK] == n && memcmp(w->names.k[BL_KEY_LOCK], key, n) == 0)
            return w;
    return NULL;
}

/* Every live request's key has an entry now, not only a waited-on one:
 * keep the chains short as keys pile up (100,000 held locks on distinct
 * keys would make chains of 400 at a fixed 256). Doubling fails softly: the
 * chains just grow longer. */
static int grow(bl_manager *m)
{
    size_t nb = m->nbuckets ? 2 * m->nbuckets : BL_WQ_BUCKETS;
    bl_wq **t = calloc(nb, sizeof *t);
    if (!t)
        return m->wq ? 0 : -1;
    for (size_t i = 0; i < m->nbuckets; i++)
        for (bl_wq *w = m->wq[i], *next; w; w = next) {
            next = w->hnext;
            bl_wq **pp = &t[hash_key(w->names.k[BL_KEY_LOCK], w->names.len[BL_KEY_LOCK]) &
                            (nb - 1)];
            w->hnext = *pp;
            *pp = w;
        }
    free(m->wq);
    m->wq = t;
    m->nbuckets = nb;
    return 0;
}

bl_wq *bl_wq_ref(bl_manager *m, const char *mp, const char *posting)
{
    size_t plen = strlen(m->prefix), mlen = strlen(mp), xlen = strlen(posting);
    /* The key alone first, to look it up: most requests find their key's
     * entry already there (every waiter after the first). */
    char key[BL_PREFIX_MAX + 2 * BL_ID_MAX + 3];
    size_t n = plen + 1 + mlen + 1 + xlen;
    if (n >= sizeof key)
        return NULL; /* ids.c refuses longer ids before this */
    memcpy(key, m->prefix, plen);
    key[plen] = ':';
    memcpy(key + plen + 1, mp, mlen);
    key[plen + 1 + mlen] = ':';
    memcpy(key + plen + 2 + mlen, posting, xlen);
    bl_wq *w = bl_wq_find(m, key, n);
    if (w) {
        w->refs++;
        return w;
    }
    if (m->nkq >= 2 * m->nbuckets && grow(m) != 0)
        return NULL;
    w = calloc(1, sizeof *w + bl_keys_size(plen, mlen, xlen));
    if (!w)
        return NULL;
    bl_keys_build(&w->names, w->block, m->prefix, plen, mp, mlen, posting, xlen);
    w->refs = 1;
    bl_wq **pp = chain(m, key, n);
    w->hnext = *pp;
    *pp = w;
    m->nkq++;
    return w;
}

static void drop(bl_manager *m, bl_wq *w)
{
    bl_wq **pp = chain(m, w->names.k[BL_KEY_LOCK], w->names.len[BL_KEY_LOCK]);
    while (*pp != w)
        pp = &(*pp)->hnext;
    *pp = w->hnext;
    m->nkq--;
    free(w);
}

void bl_wq_unref(bl_manager *m, bl_wq *w)
{
    if (w && --w->refs == 0)
        drop(m, w);
}

void bl_wq_join(bl_lock *lock)
{
    bl_manager *m = lock->m;
    bl_wq *w = lock->kq;
    if (!w)
        return; /* a group: it retries on its timer */
    lock->wq = w;
    lock->wnext = NULL;
    lock->wprev = w->tail;
    if (w->tail)
        w->tail->wnext = lock;
    else
        w->head = lock;
    w->tail = lock;
    if (++w->nwait == 1)
        m->be->vt->watch(m->be, w->names.k[BL_KEY_LOCK], w->names.len[BL_KEY_LOCK], 1);
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
    if (--w->nwait == 0)
        m->be->vt->watch(m->be, w->names.k[BL_KEY_LOCK], w->names.len[BL_KEY_LOCK], 0);
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

/* Manager free: every request is gone, and with it every reference, so
 * the table is empty already; this only frees it. */
void bl_wq_free_all(bl_manager *m)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        while (m->wq[i])
            drop(m, m->wq[i]);
    free(m->wq);
    m->wq = NULL;
    m->nbuckets = 0;
}
