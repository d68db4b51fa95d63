/* metrics.c - latency histograms, metrics snapshots and their Prometheus
 * text exposition. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "engine.h"

typedef struct out {
    char *buf;
    size_t len, used; /* used may pass len: we report what was needed */
} out;

static void put(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->used < o->len ? o->len - o->used : 0;
    int n = vsnprintf(room ? o->buf + o->used : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->used += (size_t)n;
}

static void counter(out *o, const char *name, const char *help, uint64_t v)
{
    put(o, "# HELP bidlock_%s %s\n# TYPE bidlock_%s counter\nbidlock_%s %llu\n", name, help, name,
        name, (unsigned long long)v);
}

static void gauge(out *o, const char *name, const char *help, uint64_t v)
{
    put(o, "# HELP bidlock_%s %s\n# TYPE bidlock_%s gauge\nbidlock_%s %llu\n", name, help, name,
        name, (unsigned long long)v);
}

static void histogram(out *o, const char *name, const char *help, const bl_histogram *h,
                      const double *bounds)
{
    put(o, "# HELP bidlock_%s %s\n# TYPE bidlock_%s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < BL_HIST_BUCKETS; i++) {
        cum += h->counts[i];
        put(o, "bidlock_%s_bucket{le=\"%g\"} %llu\n", name, bounds[i] / 1000.0,
            (unsigned long long)cum);
    }
    cum += h->counts[BL_HIST_BUCKETS];
    put(o, "bidlock_%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    put(o, "bidlock_%s_sum %.6f\nbidlock_%s_count %llu\n", name, h->sum_ms / 1000.0, name,
        (unsigned long long)h->count);
}

size_t bl_metrics_prometheus(const bl_metrics *mt, char *buf, size_t len)
{
    out o = {buf, len, 0};
    if (buf && len)
        buf[0] = '\0';
    const bl_stats *s = &mt->stats;
    counter(&o, "acquire_requests_total", "Acquire requests started.", s->requests);
    counter(&o, "acquire_attempts_total", "Acquire scripts sent to the backend.", s->attempts);
    counter(&o, "acquired_total", "Locks acquired.", s->acquired);
    counter(&o, "conflicts_total", "Acquire attempts that found the lock taken.", s->conflicts);
    counter(&o, "busy_total", "Try-once requests that found the lock taken.", s->busy);
    counter(&o, "timeouts_total", "Requests that hit their wait deadline.", s->timeouts);
    counter(&o, "cancelled_total", "Requests cancelled.", s->cancelled);
    counter(&o, "failed_total", "Requests ended by a connection or Redis error.", s->failed);
    counter(&o, "done_total", "Requests that found their posting marked done.", s->done);
    counter(&o, "releases_total", "Releases that gave our lock back.", s->releases);
    counter(&o, "handoffs_total", "Releases that handed the lock to a waiter.", s->handoffs);
    counter(&o, "not_held_total", "Releases that found the lock expired or taken.", s->not_held);
    counter(&o, "extends_total", "Lease renewals that succeeded.", s->extends);
    counter(&o, "lost_total", "Held locks lost while held.", s->lost);
    counter(&o, "wakeups_total", "Waiting requests woken by a release.", s->wakeups);
    counter(&o, "direct_handoffs_total",
            "Waiting requests the release handed the lock to directly.", s->direct_handoffs);
    counter(&o, "redis_errors_total", "Error replies from Redis.", s->redis_errors);
    counter(&o, "connection_errors_total", "Operations failed by the connection.",
            s->conn_errors);
    counter(&o, "reconnects_total", "Connections re-established after a loss.", s->reconnects);
    counter(&o, "replica_shortfalls_total",
            "Grants or renewals fewer than min_replicas replicas acknowledged in time.",
            s->replica_shortfalls);
    counter(&o, "failovers_total", "Master changes followed.", s->failovers);
    counter(&o, "redirects_total", "Redis Cluster MOVED/ASK answers followed.", s->redirects);
    counter(&o, "map_refreshes_total", "Redis Cluster slot maps read.", s->map_refreshes);
    counter(&o, "reverified_total", "Held leases re-checked at once after a failover.",
            s->reverified);
    counter(&o, "reclaims_total", "Locks taken back from a grant whose reply was lost.",
            s->reclaims);
    counter(&o, "transfers_total", "Held locks handed to another holder.", s->transfers);
    counter(&o, "group_requests_total", "bl_acquire_many requests started.", s->groups);
    gauge(&o, "locks_held", "Locks held right now.", s->held);
    gauge(&o, "requests_waiting", "Requests waiting between attempts right now.", s->waiting);
    gauge(&o, "connection_up", "1 if the Redis connection is up.",
          mt->conn_state == BL_CONN_UP ? 1 : 0);
    histogram(&o, "acquire_seconds", "Time from bl_acquire to the lock being held.",
              &mt->acquire_ms, bl_hist_bounds_ms);
    histogram(&o, "release_seconds", "Time from bl_release to its answer.", &mt->release_ms,
              bl_hist_bounds_ms);
    histogram(&o, "hold_seconds", "How long locks were held (until released or lost).",
              &mt->hold_ms, bl_hold_bounds_ms);
    return o.used;
}

/* ---- snapshots ------------------------------------------------------------ */

const double bl_hist_bounds_ms[BL_HIST_BUCKETS] = {0.1, 0.25, 0.5, 1,   2.5,  5,    10,
                                                   25,  50,   100, 250, 500, 1000, 2500};

const double bl_hold_bounds_ms[BL_HIST_BUCKETS] = {
    1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 30000, 60000, 300000, 600000, 1800000};

void bl_hist_add(bl_histogram *h, double ms) { bl_hist_add_to(h, bl_hist_bounds_ms, ms); }

void bl_hist_add_to(bl_histogram *h, const double *bounds, double ms)
{
    int i = 0;
    while (i < BL_HIST_BUCKETS && ms > bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum_ms += ms;
}

void bl_manager_metrics(const bl_manager *m, bl_metrics *out)
{
    memset(out, 0, sizeof *out);
    bl_manager_stats(m, &out->stats);
    out->conn_state = m->be->vt->conn_state(m->be);
    out->acquire_ms = m->acquire_hist;
    out->release_ms = m->release_hist;
    out->hold_ms = m->hold_hist;
}
