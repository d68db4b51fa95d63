/* admin.c - `bidlock status`, `health`, `cleanup` and `locks`: one request each,
 * printed on stdout. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sysexits.h>

#include "tool.h"

/* JSON string: quotes, backslashes and control characters escaped; valid
 * UTF-8 passes through; any other byte becomes \u00XX so the output stays
 * valid JSON whatever Redis holds. */
static void json_string(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    while (*p) {
        unsigned char c = *p;
        int n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                : (c & 0xf8) == 0xf0 ? 4 : 0;
        for (int i = 1; i < n; i++)
            if ((p[i] & 0xc0) != 0x80)
                n = 0;
        if (n > 1 && c >= 0xc2 && c <= 0xf4) { /* no overlong leads, <= U+10FFFF */
            fwrite(p, 1, (size_t)n, f);
            p += n;
            continue;
        }
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20 || c >= 0x80)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
        p++;
    }
    fputc('"', f);
}

/* ---- status, health, cleanup ------------------------------------------------ */

static void on_inspected(bl_manager *m, const bl_lock_info *info, void *data)
{
    (void)m;
    app *a = data;
    if (a->finishing)
        return;
    if (info->status != BL_OK) {
        say("%s", detail(info->status, info->errmsg));
        finish(a, connection_code(info->status));
        return;
    }
    char *key = malloc(strlen(a->prefix) + strlen(a->mp) + strlen(a->posting) + 3);
    if (!key) {
        say("out of memory");
        finish(a, EX_OSERR);
        return;
    }
    sprintf(key, "%s:%s:%s", a->prefix, a->mp, a->posting);
    fputs("{\"key\":", stdout);
    json_string(stdout, key);
    printf(",\"held\":%s,\"holder\":", info->held ? "true" : "false");
    if (info->held && info->holder)
        json_string(stdout, info->holder);
    else
        fputs("null", stdout);
    if (info->held && info->pttl_ms >= 0)
        printf(",\"pttl_ms\":%" PRId64, info->pttl_ms);
    else
        fputs(",\"pttl_ms\":null", stdout);
    printf(",\"done\":%s}\n", info->done ? "true" : "false");
    free(key);
    finish(a, 0);
}

static void on_health(bl_manager *m, const bl_health *h, void *data)
{
    (void)m;
    app *a = data;
    if (a->finishing)
        return;
    /* Redis Cluster: one line per master (address, slots, state, RTT). */
    for (int i = 0; i < h->nodes; i++) {
        const bl_node_health *n = &h->node[i];
        if (n->status == BL_OK)
            printf("master %s: ok, %d slots, round trip %.3f ms", n->server, n->slots,
                   n->latency_ms);
        else
            printf("master %s: %s, %d slots (%s)", n->server, bl_status_name(n->status),
                   n->slots, n->errmsg ? n->errmsg : bl_strerror(n->status));
        if (n->replicas >= 0)
            printf(", %d replica%s connected", n->replicas, n->replicas == 1 ? "" : "s");
        printf("\n");
    }
    if (h->status != BL_OK) {
        say("%s", detail(h->status, h->errmsg));
        finish(a, connection_code(h->status));
        return;
    }
    printf("%s: ok, round trip %.3f ms", h->backend, h->latency_ms);
    if (h->server)
        printf(", %s %s", h->role ? h->role : "server", h->server);
    if (h->replicas >= 0)
        printf(", %d replica%s connected", h->replicas, h->replicas == 1 ? "" : "s");
    printf("\n");
    finish(a, 0);
}

static void on_cleaned(bl_manager *m, int status, uint64_t removed, void *data)
{
    app *a = data;
    if (a->finishing)
        return;
    if (status != BL_OK) {
        say("cleanup stopped after removing %" PRIu64 " locks: %s", removed,
            detail(status, bl_manager_errmsg(m)));
        finish(a, connection_code(status));
        return;
    }
    printf("removed %" PRIu64 " lock%s under prefix %s\n", removed, removed == 1 ? "" : "s",
           a->prefix);
    finish(a, 0);
}

static void on_locks(bl_manager *m, int status, const bl_held_lock *l, size_t n, size_t total,
                     void *data)
{
    app *a = data;
    if (a->finishing)
        return;
    if (status != BL_OK) {
        say("cannot list the locks: %s", detail(status, bl_manager_errmsg(m)));
        finish(a, connection_code(status));
        return;
    }
    if (a->json) {
        printf("{\"prefix\":");
        json_string(stdout, a->prefix);
        printf(",\"total\":%zu,\"locks\":[", total);
        for (size_t i = 0; i < n; i++) {
            printf(i ? ",{\"key\":" : "{\"key\":");
            json_string(stdout, l[i].key);
            printf(",\"holder\":");
            json_string(stdout, l[i].holder);
            if (l[i].token)
                printf(",\"held_ms\":%" PRIu64, l[i].held_ms);
            else
                printf(",\"held_ms\":null");
            printf(",\"pttl_ms\":%" PRId64 ",\"token\":%" PRIu64 "}", l[i].pttl_ms, l[i].token);
        }
        printf("]}\n");
    } else {
        printf("%10s %10s %-17s %-40s %s\n", "HELD", "TTL LEFT", "TOKEN", "HOLDER", "KEY");
        for (size_t i = 0; i < n; i++) {
            if (l[i].token)
                printf("%8.1f s", (double)l[i].held_ms / 1000.0);
            else
                printf("%8s  ", "?"); /* no token: not taken by this bidlock */
            printf(" %8.1f s %-17" PRIu64 " %-40s %s\n", (double)l[i].pttl_ms / 1000.0,
                   l[i].token, l[i].holder, l[i].key);
        }
        printf("%zu lock%s held under prefix %s", total, total == 1 ? "" : "s", a->prefix);
        if (n < total)
            printf(" (the %zu longest held shown)", n);
        printf("\n");
    }
    finish(a, 0);
}

int start_admin(app *a)
{
    int rc;
    switch (a->sub) {
    case SUB_STATUS: rc = bl_inspect(a->m, a->mp, a->posting, on_inspected, a); break;
    case SUB_HEALTH: rc = bl_health_check(a->m, on_health, a); break;
    case SUB_LOCKS: rc = bl_list_locks(a->m, (size_t)a->longest, on_locks, a); break;
    default: rc = bl_cleanup(a->m, 0, on_cleaned, a); break;
    }
    if (rc != BL_OK) {
        say("%s", rc == BL_EINVAL ? bl_manager_errmsg(a->m) : bl_strerror(rc));
        return connection_code(rc);
    }
    start_watchdog(a, 0);
    return 0;
}
