/* ltimer.c - the requests' timers: one loop timer per manager in front of
 * a heap of the requests' due times (bl_lock.lt).
 *
 * A loop adapter's timer is an allocation per request of 80 bytes (libev)
 * to ~170 (libuv), plus a slot in the loop's own heap, and a manager with
 * 100,000 pending requests keeps 100,000 of them armed. Here a request's
 * timer is 16 bytes inside its handle and a pointer in the manager's heap,
 * reserved when the request is made, so arming one never allocates. The
 * loop sees one timer, armed for the earliest due time.
 *
 * The adapters' promise holds: a timer fires from the loop, never inside
 * the call that armed it. One that is armed while the heap is being run
 * (by a callback) waits for the next run, even when it is due at once:
 * a request re-arming itself for 0 ms cannot spin inside one loop pass.
 * Timers due at the same ms fire in the order they were armed. */
#include <stdlib.h>

#include "engine.h"

/* a before b: earlier due, then armed earlier (seq, modulo 2^32) */
static int before(const bl_lock *a, const bl_lock *b)
{
    if (a->lt.due != b->lt.due)
        return a->lt.due < b->lt.due;
    return (int32_t)(a->lt.seq - b->lt.seq) < 0;
}

static void place(bl_manager *m, bl_lock *l, size_t i)
{
    m->lt_heap[i] = l;
    l->lt.slot = (uint32_t)i + 1;
}

static void sift_up(bl_manager *m, size_t i)
{
    bl_lock *l = m->lt_heap[i];
    while (i > 0 && before(l, m->lt_heap[(i - 1) / 2])) {
        place(m, m->lt_heap[(i - 1) / 2], i);
        i = (i - 1) / 2;
    }
    place(m, l, i);
}

static void sift_down(bl_manager *m, size_t i)
{
    bl_lock *l = m->lt_heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m->lt_n)
            break;
        if (c + 1 < m->lt_n && before(m->lt_heap[c + 1], m->lt_heap[c]))
            c++;
        if (!before(m->lt_heap[c], l))
            break;
        place(m, m->lt_heap[c], i);
        i = c;
    }
    place(m, l, i);
}

static void take_out(bl_manager *m, bl_lock *l)
{
    size_t i = l->lt.slot - 1;
    l->lt.slot = 0;
    bl_lock *last = m->lt_heap[--m->lt_n];
    if (last == l)
        return;
    place(m, last, i);
    sift_up(m, i);
    sift_down(m, last->lt.slot - 1);
}

/* Arm the loop's timer for the earliest due time, unless it already fires
 * by then. One that fires early (the top was stopped) finds nothing due
 * and comes here again. */
static void sync_tick(bl_manager *m)
{
    if (m->lt_firing || m->lt_n == 0)
        return;
    uint64_t due = m->lt_heap[0]->lt.due;
    if (due >= m->lt_tick_due)
        return;
    uint64_t now = bl_mgr_now(m);
    m->lt_tick_due = due;
    m->loop.timer_start(m->lt_tick, due > now ? due - now : 0);
}

static void tick_cb(void *data)
{
    bl_manager *m = data;
    m->lt_tick_due = UINT64_MAX;
    uint64_t now = bl_mgr_now(m);
    uint32_t limit = m->lt_seq; /* armed from here on: the next run */
    m->lt_firing = 1;
    while (m->lt_n) {
        bl_lock *l = m->lt_heap[0];
        if (l->lt.due > now || (int32_t)(l->lt.seq - limit) >= 0)
            break;
        take_out(m, l);
        bl_lock_timer_cb(l);
    }
    m->lt_firing = 0;
    sync_tick(m);
}

int bl_lt_init(bl_manager *m)
{
    m->lt_tick_due = UINT64_MAX;
    m->lt_tick = m->loop.timer_new(m->loop.impl, tick_cb, m);
    return m->lt_tick ? 0 : -1;
}

void bl_lt_free_all(bl_manager *m)
{
    if (m->lt_tick)
        m->loop.timer_free(m->lt_tick);
    m->lt_tick = NULL;
    free(m->lt_heap);
    m->lt_heap = NULL;
}

int bl_lt_reserve(bl_manager *m)
{
    if (m->lt_count == m->lt_cap) {
        size_t cap = m->lt_cap ? 2 * m->lt_cap : 64;
        bl_lock **h = realloc(m->lt_heap, cap * sizeof *h);
        if (!h)
            return -1;
        m->lt_heap = h;
        m->lt_cap = cap;
    }
    m->lt_count++;
    return 0;
}

void bl_lt_release(bl_lock *lock)
{
    bl_lt_stop(lock);
    lock->m->lt_count--;
}

void bl_lt_start(bl_lock *lock, uint64_t after_ms)
{
    bl_manager *m = lock->m;
    if (lock->lt.slot)
        take_out(m, lock);
    lock->lt.due = bl_mgr_now(m) + after_ms;
    lock->lt.seq = m->lt_seq++;
    m->lt_heap[m->lt_n++] = lock; /* room reserved by bl_lt_reserve */
    sift_up(m, m->lt_n - 1);
    sync_tick(m);
}

void bl_lt_stop(bl_lock *lock)
{
    if (lock->lt.slot)
        take_out(lock->m, lock);
}
