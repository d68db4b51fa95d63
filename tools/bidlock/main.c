/* main.c - the `bidlock` command: flock(1) across machines, on Redis.
 *
 *   bidlock run [--url URL] [--wait SECONDS] [--ttl MS] [--prefix P]
 *               [--min-replicas N|auto] [--done] MARKETPLACE POSTING -- COMMAND [ARG...]
 *   bidlock status  [--url URL] [--prefix P] MARKETPLACE POSTING
 *   bidlock health  [--url URL]
 *   bidlock cleanup [--url URL] [--prefix P]
 *   bidlock acl     [--prefix P] [--user NAME] [--readonly]   (acl.c: no connection)
 *
 * A program on a libev loop like any other bidlock user: `run` acquires with
 * auto-extension, fork/execs COMMAND, learns that it exited from ev_child
 * (libev reaps on SIGCHLD; nothing here blocks in waitpid), releases, and
 * exits with COMMAND's status. Every exit goes through finish(): close the
 * manager, stop our watchers, let ev_run return, free the loop.
 *
 * Exit codes (sysexits.h): 64 usage / invalid input, 69 Redis unavailable,
 * 70 lock lost while COMMAND ran, 75 lock not acquired within --wait, 71 out
 * of memory or fork failed, else COMMAND's status (128+N if killed by N).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>

#include <bidlock/libev.h>

#include "tool.h"

/* --tls and friends win over the environment's REDIS_TLS_*. 1 if any was given. */
static int tls_options(const app *a, bl_config *cfg)
{
    const char *const *v[] = {&a->cacert, &a->cacertdir, &a->cert, &a->key, &a->sni};
    const char **f[] = {&cfg->tls_ca_file, &cfg->tls_ca_dir, &cfg->tls_cert_file,
                        &cfg->tls_key_file, &cfg->tls_server_name};
    int any = a->tls || a->insecure;
    for (int i = 0; i < 5; i++)
        if (*v[i]) {
            *f[i] = *v[i];
            any = 1;
        }
    if (a->tls)
        cfg->tls = 1;
    if (a->insecure)
        cfg->tls_insecure_skip_verify = 1;
    return any;
}

/* The library's message, with its field names spelled as our flags. */
static const char *flag_names(const char *why)
{
    static const char *const map[][2] = {
        {"tls_insecure_skip_verify", "--insecure"}, {"tls_ca_file/tls_ca_dir", "--cacert/--cacertdir"},
        {"tls_ca_file", "--cacert"}, {"tls_ca_dir", "--cacertdir"}, {"tls_cert_file", "--cert"},
        {"tls_key_file", "--key"}, {"tls_server_name", "--sni"},
        {"tls_* settings", "TLS options"}, {"set tls = 1 or use", "give --tls or"},
        {"drop tls", "drop --tls"}};
    static char out[640];
    size_t o = 0;
    for (const char *p = why; *p && o + 40 < sizeof out;) {
        size_t k = 0;
        for (; k < sizeof map / sizeof map[0]; k++)
            if (!strncmp(p, map[k][0], strlen(map[k][0])))
                break;
        if (k < sizeof map / sizeof map[0]) {
            o += (size_t)snprintf(out + o, sizeof out - o, "%s", map[k][1]);
            p += strlen(map[k][0]);
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    return out;
}

/* --url, else the environment; then the prefix; then the library's check. */
static int make_config(app *a, bl_config *cfg)
{
    char why[512];
    bl_config_init(cfg);
    if (a->url) {
        cfg->url = a->url;
        cfg->backend = BL_BACKEND_REDIS;
        /* A password has no place on a command line: with a Sentinel
         * --url, the Sentinels' credentials still come from the
         * environment (with any other --url it is not read at all). */
        int sentinel = strncasecmp(a->url, "redis-sentinel://", 17) == 0;
        const char *su = sentinel ? getenv("REDIS_SENTINEL_USERNAME") : NULL;
        const char *sp = sentinel ? getenv("REDIS_SENTINEL_PASSWORD") : NULL;
        if ((su && !*su) || (sp && !*sp)) {
            say("environment: REDIS_SENTINEL_%s is set but empty", su && !*su ? "USERNAME"
                                                                             : "PASSWORD");
            return EX_USAGE;
        }
        if (su || sp) {
            cfg->sentinel_username = su;
            cfg->sentinel_password = sp;
        }
    } else if (bl_config_from_env(cfg, why, sizeof why) != BL_OK) {
        say("environment: %s", why);
        return EX_USAGE;
    }
    if (a->prefix)
        cfg->key_prefix = a->prefix;
    a->prefix = cfg->key_prefix;
    if (a->min_replicas != BL_REPLICAS_DEFAULT)
        cfg->min_replicas = a->min_replicas;
    int tls_flags = tls_options(a, cfg);
    if (bl_config_validate(cfg, why, sizeof why) != BL_OK) {
        if (tls_flags && (strstr(why, "tls") || strstr(why, "TLS")))
            say("%s", flag_names(why));
        else if (a->url && !strncmp(why, "url: ", 5))
            say("--url: %s", why + 5);
        else if (a->min_replicas != BL_REPLICAS_DEFAULT && !strncmp(why, "min_replicas", 12))
            say("--min-replicas: %s", why);
        else if (a->prefix && strstr(why, "key_prefix"))
            say("--prefix: %s", why);
        else
            say("%s", why);
        return EX_USAGE;
    }
    if (cfg->backend == BL_BACKEND_MEMORY)
        say("warning: the environment selects the in-memory backend (USE_REDIS_LOCKS / "
            "BIDLOCK_ENV / ENV): this lock excludes nothing outside this process");
    a->connect_timeout_ms = cfg->connect_timeout_ms;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "acl"))
        return acl_main(argc, argv);
    record_inherited_fds();
    app a;
    memset(&a, 0, sizeof a);
    a.sigfd = -1;
    int rc = parse_args(&a, argc, argv);
    if (rc >= 0)
        return rc;
    bl_config cfg;
    if ((rc = make_config(&a, &cfg)) != 0)
        return rc;
    /* A write to a dropped connection must be an error, not our death. */
    signal(SIGPIPE, SIG_IGN);

    a.loop = EV_DEFAULT; /* the default loop: ev_child needs it */
    bl_loop bl;
    bl_libev_loop(&bl, a.loop);
    rc = bl_manager_new(&bl, &cfg, &a.m);
    if (rc != BL_OK) {
        say("cannot start: %s", bl_strerror(rc));
        ev_loop_destroy(a.loop);
        return connection_code(rc);
    }
    if (watch_signals(&a) != 0) {
        say("cannot watch signals: signalfd: %s", strerror(errno));
        rc = EX_OSERR;
    } else {
        rc = a.sub == SUB_RUN ? start_run(&a) : start_admin(&a);
    }
    if (rc != 0)
        finish(&a, rc);
    ev_run(a.loop, 0);
    ev_loop_destroy(a.loop);
    fflush(stdout);
    return a.exit_code;
}
