/* admin.c - health, inspection and cleanup: the engine's side of the
 * admin operations. The backend runs a bl_aop (backend.h) and finishes it
 * through its deliver/release hooks; the user's typed callback lives here,
 * next to the op, never cast through void *. */
#include <stdlib.h>
#include <string.h>

#include "engine.h"

typedef struct admin_req {
    bl_aop op; /* first: the backend sees only this */
    bl_manager *m;
    union {
        bl_health_cb health;
        bl_inspect_cb inspect;
        bl_cleanup_cb cleanup;
        bl_locks_cb locks;
    } cb;
    size_t max; /* locks: how many to report */
    void *data;
} admin_req;

static int longest_first(const void *a, const void *b)
{
    const bl_aop_lock *x = a, *y = b;
    if (x->held_ms != y->held_ms)
        return x->held_ms < y->held_ms ? 1 : -1;
    return strcmp(x->key, y->key);
}

static void deliver_locks(admin_req *r)
{
    bl_aop *op = &r->op;
    bl_manager *m = r->m;
    size_t n = op->status == BL_OK ? op->nlocks : 0;
    if (n > 1)
        qsort(op->locks, n, sizeof op->locks[0], longest_first);
    size_t show = r->max && r->max < n ? r->max : n;
    bl_held_lock *out = show ? calloc(show, sizeof *out) : NULL;
    int status = op->status;
    if (show && !out) {
        status = BL_ENOMEM, show = n = 0;
        snprintf(m->errmsg, sizeof m->errmsg, "out of memory");
    } else if (status != BL_OK) {
        snprintf(m->errmsg, sizeof m->errmsg, "%s", op->errmsg);
        bl_log(m, BL_LOG_WARN, "bidlock: listing locks failed: %s", op->errmsg);
    }
    for (size_t i = 0; i < show; i++)
        out[i] = (bl_held_lock){op->locks[i].key, op->locks[i].holder, op->locks[i].held_ms,
                                op->locks[i].pttl_ms, op->locks[i].token};
    r->cb.locks(m, status, out, show, n, r->data);
    free(out);
}

static void deliver(bl_aop *op)
{
    admin_req *r = (admin_req *)op;
    bl_manager *m = r->m;
    m->admin_inflight--;
    switch (op->kind) {
    case BL_AOP_PING: {
        bl_health h = {op->status, m->be->vt->conn_state(m->be), op->latency_ms,
                       m->be->vt->name, op->errmsg, op->role[0] ? op->role : NULL,
                       op->replicas, op->server[0] ? op->server : NULL,
                       op->nnodes, op->nodes};
        r->cb.health(m, &h, r->data);
        break;
    }
    case BL_AOP_INSPECT:
        op->info.status = op->status;
        op->info.errmsg = op->errmsg;
        r->cb.inspect(m, &op->info, r->data);
        break;
    case BL_AOP_CLEANUP:
        /* The callback has no message argument: say why through
         * bl_manager_errmsg (valid inside the callback) and the log. */
        if (op->status != BL_OK) {
            snprintf(m->errmsg, sizeof m->errmsg, "%s", op->errmsg);
            bl_log(m, BL_LOG_WARN, "bidlock: cleanup failed: %s", op->errmsg);
        }
        r->cb.cleanup(m, op->status, op->removed, r->data);
        break;
    case BL_AOP_LOCKS:
        deliver_locks(r);
        break;
    }
    bl_mgr_check_close(m);
}

static void release(bl_aop *op)
{
    admin_req *r = (admin_req *)op;
    if (op->timer)
        r->m->loop.timer_free(op->timer);
    free(op->keys);
    free(op->holder_buf);
    bl_aop_locks_free(op);
    free(r);
}

static admin_req *req_new(bl_manager *m, enum bl_aop_kind kind, void *data)
{
    admin_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->op.kind = kind;
    r->op.started_us = bl_now_us();
    r->op.deliver = deliver;
    r->op.release = release;
    r->op.replicas = -1;
    r->m = m;
    r->data = data;
    return r;
}

static int req_start(bl_manager *m, admin_req *r)
{
    int rc = m->be->vt->admin(m->be, &r->op);
    if (rc < 0) {
        release(&r->op);
        return bl_mgr_fail(m, rc, rc == BL_ENOMEM ? "out of memory"
                                                  : "the backend cannot take the request");
    }
    m->admin_inflight++;
    return BL_OK;
}

/* The checks every admin call shares; 0 if it may go on. */
static int refuse(bl_manager *m, int cb_missing)
{
    if (!m)
        return BL_EINVAL;
    if (cb_missing)
        return bl_mgr_fail(m, BL_EINVAL, "callback is NULL");
    if (m->closing)
        return bl_mgr_fail(m, BL_ECLOSED, "the manager is closing");
    return 0;
}

int bl_health_check(bl_manager *m, bl_health_cb cb, void *data)
{
    int rc = refuse(m, !cb);
    if (rc)
        return rc;
    admin_req *r = req_new(m, BL_AOP_PING, data);
    if (!r)
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    r->cb.health = cb;
    return req_start(m, r);
}

int bl_inspect(bl_manager *m, const char *marketplace, const char *posting, bl_inspect_cb cb,
               void *data)
{
    int rc = refuse(m, !cb);
    if (rc)
        return rc;
    char why[BL_ERRMSG_MAX];
    if (bl_validate_id(marketplace, 1, why, sizeof why) ||
        bl_validate_id(posting, 0, why, sizeof why))
        return bl_mgr_fail(m, BL_EINVAL, why);
    admin_req *r = req_new(m, BL_AOP_INSPECT, data);
    if (!r || !(r->op.keys = bl_keys_new(m->prefix, marketplace, posting))) {
        free(r);
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    }
    r->cb.inspect = cb;
    r->op.info.pttl_ms = -1;
    return req_start(m, r);
}

int bl_cleanup(bl_manager *m, int mine_only, bl_cleanup_cb cb, void *data)
{
    int rc = refuse(m, !cb);
    if (rc)
        return rc;
    admin_req *r = req_new(m, BL_AOP_CLEANUP, data);
    if (!r)
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    r->cb.cleanup = cb;
    r->op.mine_only = mine_only != 0;
    return req_start(m, r);
}

int bl_list_locks(bl_manager *m, size_t max, bl_locks_cb cb, void *data)
{
    int rc = refuse(m, !cb);
    if (rc)
        return rc;
    admin_req *r = req_new(m, BL_AOP_LOCKS, data);
    if (!r)
        return bl_mgr_fail(m, BL_ENOMEM, "out of memory");
    r->cb.locks = cb;
    r->max = max;
    return req_start(m, r);
}
