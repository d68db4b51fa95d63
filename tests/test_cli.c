/* The `bidlock` command's contract, and the scanner processes of the demo,
 * against a private redis-server per test. Each test runs the built binaries
 * (paths from meson) as child processes with bounded waits; COMMANDs talk to
 * Redis through redis-cli. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"
#include "url.h" /* BL_HAVE_SENTINEL_BACKEND, BL_HAVE_REPLICA_WAIT */

#ifndef BIDLOCK_CLI_PATH
#error "meson passes -DBIDLOCK_CLI_PATH"
#endif

static char url[64], port_s[16];

static void setup(void)
{
    fx_redis_init();
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", srv.port);
    snprintf(port_s, sizeof port_s, "%d", srv.port);
}

TestSuite(cli, .init = setup, .fini = fx_redis_fini, .timeout = 90);

/* ---- running processes ------------------------------------------------------ */

typedef struct proc {
    pid_t pid;
    char out[64], err[64]; /* temp files for stdout / stderr */
} proc;

typedef struct result {
    int code; /* exit status, or 128+signal */
    char *out, *err;
    uint64_t ms;
} result;

/* Variables the library reads: unset in children unless a test sets them. */
static const char *const env_vars[] = {"REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB",
                                       "REDIS_USERNAME", "REDIS_PASSWORD", "USE_REDIS_LOCKS",
                                       "BIDLOCK_ENV", "ENV", "REDIS_SENTINEL_USERNAME",
                                       "REDIS_SENTINEL_PASSWORD", "BIDLOCK_MIN_REPLICAS",
                                       "BIDLOCK_REPLICA_TIMEOUT_MS", NULL};

/* Start argv[0] (a path) with env ("NAME=value" strings, may be NULL). */
static proc start(const char *const *argv, const char *const *env)
{
    proc p;
    snprintf(p.out, sizeof p.out, "/tmp/bidlock-cli-out-XXXXXX");
    snprintf(p.err, sizeof p.err, "/tmp/bidlock-cli-err-XXXXXX");
    int fo = mkstemp(p.out), fe = mkstemp(p.err);
    cr_assert(fo >= 0 && fe >= 0, "mkstemp: %s", strerror(errno));
    p.pid = fork();
    cr_assert(p.pid >= 0);
    if (p.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        int dn = open("/dev/null", O_RDONLY);
        dup2(dn, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        for (int i = 0; env_vars[i]; i++)
            unsetenv(env_vars[i]);
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        execv(argv[0], (char *const *)argv);
        _exit(126);
    }
    close(fo);
    close(fe);
    return p;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert(f, "open %s", path);
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = 2 * cap + 8192;
            buf = realloc(buf, cap);
            cr_assert(buf);
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got == 0)
            break;
    }
    buf[n] = '\0';
    fclose(f);
    unlink(path);
    return buf;
}

/* Wait for p, at most timeout_ms (then kill it and fail). */
static result finish(proc *p, int timeout_ms)
{
    uint64_t t0 = mono_ms(), end = t0 + (uint64_t)timeout_ms;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid)
            break;
        if (mono_ms() > end) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
            char *err = slurp(p->err);
            cr_assert_fail("process %d still running after %d ms; stderr: %s", (int)p->pid,
                           timeout_ms, err);
        }
        usleep(2000);
    }
    result res;
    res.ms = mono_ms() - t0;
    res.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    res.out = slurp(p->out);
    res.err = slurp(p->err);
    return res;
}

static void result_free(result *r)
{
    free(r->out);
    free(r->err);
}

static proc vstart_cli(const char *const *env, const char *arg, va_list ap)
{
    const char *argv[64] = {BIDLOCK_CLI_PATH};
    int n = 1;
    for (const char *a = arg; a && n < 63; a = va_arg(ap, const char *))
        argv[n++] = a;
    argv[n] = NULL;
    return start(argv, env);
}

/* Start `bidlock ARGS...` (NULL-terminated). */
static proc start_cli(const char *const *env, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    proc p = vstart_cli(env, arg, ap);
    va_end(ap);
    return p;
}

/* Run `bidlock ARGS...` (NULL-terminated) to the end, at most 20 s. */
static result cli_run(const char *const *env, const char *arg, ...)
{
    va_list ap;
    va_start(ap, arg);
    proc p = vstart_cli(env, arg, ap);
    va_end(ap);
    return finish(&p, 20000);
}

#define CLI(env, ...) cli_run(env, __VA_ARGS__, (const char *)NULL)

/* stderr is exactly one line "bidlock: ..." */
static void assert_one_error_line(const result *r)
{
    const char *e = r->err;
    cr_assert(strncmp(e, "bidlock: ", 9) == 0, "stderr does not start with 'bidlock: ': [%s]", e);
    const char *nl = strchr(e, '\n');
    cr_assert(nl && nl[1] == '\0', "stderr is not exactly one line: [%s]", e);
}

static char *sh_cmd(const char *fmt, ...)
{
    static char buf[4][1024];
    static int k;
    char *b = buf[k++ % 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof buf[0], fmt, ap);
    va_end(ap);
    return b;
}

static char *get_str(const char *key)
{
    redisReply *r = rs_cmd(&srv, "GET %s", key);
    char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

static void set_key(const char *key, const char *value, int px)
{
    redisReply *r = rs_cmd(&srv, "SET %s %s PX %d", key, value, px);
    cr_assert_eq(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
}

/* ---- usage, help, exit codes --------------------------------------------------- */

Test(cli, help_and_version)
{
    result r = CLI(NULL, "--help");
    cr_assert_eq(r.code, 0);
    cr_assert(strstr(r.out, "bidlock run") && strstr(r.out, "Exit status") &&
                  strstr(r.out, "BIDLOCK_TOKEN") && strstr(r.out, "REDIS_URL"),
              "help is thorough: %s", r.out);
    result_free(&r);
    r = CLI(NULL, "run", "--help");
    cr_assert_eq(r.code, 0);
    result_free(&r);
    r = CLI(NULL, "--version");
    cr_assert_eq(r.code, 0);
    cr_assert_str_eq(r.out, "bidlock " BIDLOCK_VERSION "\n");
    result_free(&r);
}

Test(cli, bad_usage_and_invalid_input_exit_64_with_one_line)
{
    static const char *const cases[][12] = {
        {NULL},
        {"bogus", NULL},
        {"run", "--url", "U", NULL},                                  /* no ids */
        {"run", "--url", "U", "ebay", "1", NULL},                     /* no COMMAND */
        {"run", "--url", "U", "--wait", "abc", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--wait", "-1", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--wait", "1e3", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--wait", "", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--ttl", "0", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--ttl", "5s", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--wait", NULL},                        /* missing value */
        {"run", "--url", "U", "", "1", "--", "true", NULL},           /* empty id */
        {"run", "--url", "U", "ebay", "", "--", "true", NULL},
        {"run", "--url", "U", "eb:ay", "1", "--", "true", NULL},      /* ':' */
        {"run", "--url", "U", "ebay", "a b", "--", "true", NULL},     /* whitespace */
        {"run", "--url", "http://127.0.0.1:6379", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "redis://127.0.0.1:99999", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--prefix", "a b", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--bogus", "ebay", "1", "--", "true", NULL},
        {"status", "--url", "U", "ebay", NULL},
        {"status", "--url", "U", "ebay", "1", "extra", NULL},
        {"status", "--url", "U", "--done", "ebay", "1", NULL},
        {"health", "--url", "U", "--prefix", "p", NULL},
        {"cleanup", "--url", "U", "stray", NULL},
        {"run", "--url", "U", "--min-replicas", "x", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--min-replicas", "65", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "U", "--min-replicas", "-1", "ebay", "1", "--", "true", NULL},
        {"status", "--url", "U", "--min-replicas", "1", "ebay", "1", NULL},
        {"run", "--url", "redis-sentinel://127.0.0.1", "ebay", "1", "--", "true", NULL},
        {"run", "--url", "redis-sentinel://127.0.0.1,,127.0.0.2#m", "ebay", "1", "--", "true",
         NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *argv[16] = {BIDLOCK_CLI_PATH};
        int n = 1;
        for (int k = 0; cases[i][k]; k++)
            argv[n++] = strcmp(cases[i][k], "U") == 0 ? url : cases[i][k];
        argv[n] = NULL;
        proc p = start(argv, NULL);
        result r = finish(&p, 10000);
        cr_assert_eq(r.code, 64, "case %zu (%s %s ...): exit %d, stderr %s", i,
                     cases[i][0] ? cases[i][0] : "", cases[i][0] && cases[i][1] ? cases[i][1] : "",
                     r.code, r.err);
        assert_one_error_line(&r);
        cr_assert_str_eq(r.out, "", "case %zu printed on stdout", i);
        result_free(&r);
    }
    /* The messages say what was wrong. */
    result r = CLI(NULL, "run", "--url", url, "eb:ay", "1", "--", "true");
    cr_assert(strstr(r.err, "':'"), "%s", r.err);
    result_free(&r);
    r = CLI(NULL, "run", "--url", "http://x", "ebay", "1", "--", "true");
    cr_assert(strstr(r.err, "--url") && strstr(r.err, "http"), "%s", r.err);
    result_free(&r);
    r = CLI(NULL, "run", "--url", url, "--wait", "soon", "ebay", "1", "--", "true");
    cr_assert(strstr(r.err, "--wait") && strstr(r.err, "soon"), "%s", r.err);
    result_free(&r);
    cr_assert_eq(rs_lock_count(&srv), 0, "nothing was locked");
}

/* Issue 13's configuration side: a Sentinel URL and --min-replicas reach
 * the library (which refuses them until it can serve them: BL_HAVE_* in
 * src/internal.h), and 0 replicas is an ordinary run. */
Test(cli, sentinel_url_and_min_replicas_pass_through)
{
    result r = CLI(NULL, "run", "--url", "redis-sentinel://127.0.0.1:1,[::1]:2/3#my%40master",
                   "--wait", "0", "ebay", "1", "--", "true");
    if (!BL_HAVE_SENTINEL_BACKEND) {
        cr_assert_eq(r.code, 64, "exit %d: %s", r.code, r.err);
        assert_one_error_line(&r);
        cr_assert(strstr(r.err, "--url: redis-sentinel:// is understood"), "%s", r.err);
    }
    result_free(&r);
    r = CLI(NULL, "run", "--url", "redis-sentinel://127.0.0.1,127.0.0.1#m", "ebay", "1", "--",
            "true");
    cr_assert_eq(r.code, 64);
    cr_assert(strstr(r.err, "--url: sentinel 2:") && strstr(r.err, "same as sentinel 1"), "%s",
              r.err);
    result_free(&r);
    r = CLI(NULL, "run", "--url", url, "--min-replicas", "2", "ebay", "1", "--", "true");
    if (!BL_HAVE_REPLICA_WAIT) {
        cr_assert_eq(r.code, 64, "exit %d: %s", r.code, r.err);
        cr_assert(strstr(r.err, "--min-replicas: "), "%s", r.err);
    }
    result_free(&r);
    r = CLI(NULL, "run", "--url", url, "--min-replicas=0", "ebay", "1", "--", "true");
    cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
    result_free(&r);
    /* The Sentinels' password comes from the environment, never argv. */
    const char *const env[] = {"REDIS_SENTINEL_PASSWORD=", NULL};
    proc p = start_cli(env, "health", "--url", "redis-sentinel://127.0.0.1#m", (const char *)NULL);
    r = finish(&p, 10000);
    cr_assert_eq(r.code, 64);
    cr_assert(strstr(r.err, "REDIS_SENTINEL_PASSWORD is set but empty"), "%s", r.err);
    result_free(&r);
    const char *const env2[] = {"REDIS_SENTINEL_PASSWORD=pw", NULL};
    p = start_cli(env2, "run", "--url", url, "ebay", "1", "--", "true", (const char *)NULL);
    r = finish(&p, 10000);
    cr_assert_eq(r.code, 0, "not read with a redis:// --url: exit %d: %s", r.code, r.err);
    result_free(&r);
    const char *const env3[] = {"REDIS_URL=redis-sentinel://127.0.0.1:1#m",
                                "BIDLOCK_MIN_REPLICAS=auto", NULL};
    p = start_cli(env3, "health", (const char *)NULL);
    r = finish(&p, 10000);
    cr_assert_eq(r.code, BL_HAVE_SENTINEL_BACKEND ? 69 : 64, "exit %d: %s", r.code, r.err);
    result_free(&r);
}

Test(cli, a_bad_environment_exits_64_and_names_the_variable)
{
    const char *const env[] = {"REDIS_PORT=abc", NULL};
    proc p = start_cli(env, "health", (const char *)NULL);
    result r = finish(&p, 10000);
    cr_assert_eq(r.code, 64);
    assert_one_error_line(&r);
    cr_assert(strstr(r.err, "REDIS_PORT"), "%s", r.err);
    result_free(&r);
    const char *const env2[] = {"REDIS_URL=redis://127.0.0.1:1:2", NULL};
    p = start_cli(env2, "status", "ebay", "1", (const char *)NULL);
    r = finish(&p, 10000);
    cr_assert_eq(r.code, 64);
    assert_one_error_line(&r);
    cr_assert(strstr(r.err, "REDIS_URL"), "%s", r.err);
    result_free(&r);
}

Test(cli, connection_comes_from_the_environment_without_url)
{
    char u[96], port[32];
    snprintf(u, sizeof u, "REDIS_URL=%s", url);
    const char *const env[] = {u, NULL};
    proc p = start_cli(env, "run", "ebay", "env", "--", "/bin/sh", "-c",
                       sh_cmd("redis-cli -p %d SET ran yes >/dev/null", srv.port),
                       (const char *)NULL);
    result r = finish(&p, 20000);
    cr_assert_eq(r.code, 0, "stderr: %s", r.err);
    char *v = get_str("ran");
    cr_assert(v && strcmp(v, "yes") == 0);
    free(v);
    result_free(&r);
    snprintf(port, sizeof port, "REDIS_PORT=%d", srv.port);
    const char *const env2[] = {"REDIS_HOST=127.0.0.1", port, NULL};
    p = start_cli(env2, "health", (const char *)NULL);
    r = finish(&p, 20000);
    cr_assert_eq(r.code, 0, "stderr: %s", r.err);
    result_free(&r);
}

Test(cli, unreachable_redis_exits_69)
{
    char bad[64];
    snprintf(bad, sizeof bad, "redis://127.0.0.1:%d", unused_port());
    result r[4] = {
        CLI(NULL, "run", "--url", bad, "ebay", "1", "--", "/bin/sh", "-c", "exit 5"),
        CLI(NULL, "status", "--url", bad, "ebay", "1"),
        CLI(NULL, "health", "--url", bad),
        CLI(NULL, "cleanup", "--url", bad),
    };
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(r[i].code, 69, "command %d: exit %d (%s)", i, r[i].code, r[i].err);
        assert_one_error_line(&r[i]);
        cr_assert(strstr(r[i].err, "Redis unavailable"), "%s", r[i].err);
        cr_assert_str_eq(r[i].out, "");
        cr_assert(r[i].ms < 8000, "bounded: %llu ms", (unsigned long long)r[i].ms);
        result_free(&r[i]);
    }
    /* A unix socket that does not exist: the same. */
    result u = CLI(NULL, "health", "--url", "unix:///nonexistent/redis.sock");
    cr_assert_eq(u.code, 69, "%s", u.err);
    result_free(&u);
}

Test(cli, a_hung_redis_exits_69_in_bounded_time)
{
    kill(srv.pid, SIGSTOP); /* accepts connections, answers nothing */
    proc h = start_cli(NULL, "health", "--url", url, (const char *)NULL);
    proc r = start_cli(NULL, "run", "--url", url, "--wait", "0", "ebay", "hung", "--", "/bin/true",
                       (const char *)NULL);
    result rh = finish(&h, 30000), rr = finish(&r, 30000);
    kill(srv.pid, SIGCONT);
    cr_assert_eq(rh.code, 69, "health: %d %s", rh.code, rh.err);
    cr_assert_eq(rr.code, 69, "run: %d %s", rr.code, rr.err);
    assert_one_error_line(&rh);
    assert_one_error_line(&rr);
    cr_assert(strstr(rr.err, "no answer") || strstr(rr.err, "did not answer"), "%s", rr.err);
    result_free(&rh);
    result_free(&rr);
}

Test(cli, a_release_redis_never_answers_ends_in_bounded_time)
{
    /* COMMAND freezes the server, then exits 5: the release gets no answer. */
    char cmd[64];
    snprintf(cmd, sizeof cmd, "kill -STOP %d; exit 5", (int)srv.pid);
    proc p = start_cli(NULL, "run", "--url", url, "ebay", "frozen", "--", "/bin/sh", "-c", cmd,
                       (const char *)NULL);
    result r = finish(&p, 30000);
    kill(srv.pid, SIGCONT);
    cr_assert_eq(r.code, 5, "COMMAND's status still: %d (%s)", r.code, r.err);
    assert_one_error_line(&r);
    cr_assert(strstr(r.err, "release"), "%s", r.err);
    result_free(&r);
}

Test(cli, a_busy_lock_exits_75_without_running_command)
{
    set_key("bid_lock:ebay:busy", "someone-else", 20000);
    const char *cmd = sh_cmd("redis-cli -p %d SET ran yes", srv.port);
    result r = CLI(NULL, "run", "--url", url, "--wait", "0", "ebay", "busy", "--", "/bin/sh", "-c",
                   cmd);
    cr_assert_eq(r.code, 75, "exit %d: %s", r.code, r.err);
    assert_one_error_line(&r);
    cr_assert(r.ms < 3000);
    result_free(&r);
    r = CLI(NULL, "run", "--url", url, "--wait", "0.4", "ebay", "busy", "--", "/bin/sh", "-c", cmd);
    cr_assert_eq(r.code, 75, "exit %d: %s", r.code, r.err);
    assert_one_error_line(&r);
    cr_assert(r.ms >= 400 && r.ms < 4000, "waited %llu ms", (unsigned long long)r.ms);
    result_free(&r);
    cr_assert_eq(rs_exists(&srv, "ran"), 0, "COMMAND never ran");
    char *holder = get_str("bid_lock:ebay:busy");
    cr_assert_str_eq(holder, "someone-else", "the other holder's lock is untouched");
    free(holder);
}

Test(cli, waiting_run_gets_the_lock_when_it_is_freed)
{
    set_key("bid_lock:ebay:soon", "someone-else", 1500); /* still there when the run starts */
    result r = CLI(NULL, "run", "--url", url, "--wait", "5", "ebay", "soon", "--", "/bin/true");
    cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
    cr_assert(r.ms >= 300, "it waited (%llu ms)", (unsigned long long)r.ms);
    cr_assert_str_eq(r.err, "");
    result_free(&r);
}

Test(cli, exit_status_is_commands_own)
{
    result r = CLI(NULL, "run", "--url", url, "ebay", "st", "--", "/bin/sh", "-c", "exit 3");
    cr_assert_eq(r.code, 3);
    cr_assert_str_eq(r.err, "");
    result_free(&r);
    r = CLI(NULL, "run", "--url", url, "ebay", "st", "--", "/bin/sh", "-c", "exit 0");
    cr_assert_eq(r.code, 0);
    result_free(&r);
    r = CLI(NULL, "run", "--url", url, "ebay", "st", "--", "/bin/sh", "-c", "kill -TERM $$");
    cr_assert_eq(r.code, 128 + SIGTERM, "killed by a signal: 128+N, got %d", r.code);
    result_free(&r);
    r = CLI(NULL, "run", "--url", url, "ebay", "st", "--", "/nonexistent/command");
    cr_assert_eq(r.code, 127);
    assert_one_error_line(&r);
    result_free(&r);
    /* COMMAND without "--" works too; its output is its own. */
    r = CLI(NULL, "run", "--url", url, "ebay", "st", "/bin/echo", "hello");
    cr_assert_eq(r.code, 0);
    cr_assert_str_eq(r.out, "hello\n");
    result_free(&r);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:st"), 0, "released after each run");
}

Test(cli, command_sees_key_holder_and_token)
{
    const char *cmd = sh_cmd("printf '%%s|%%s|%%s|' \"$BIDLOCK_KEY\" \"$BIDLOCK_HOLDER\" "
                             "\"$BIDLOCK_TOKEN\"; redis-cli -p %d GET \"$BIDLOCK_KEY\"",
                             srv.port);
    proc p = start_cli(NULL, "run", "--url", url, "ebay", "42", "--", "/bin/sh", "-c", cmd,
                       (const char *)NULL);
    result r = finish(&p, 20000);
    cr_assert_eq(r.code, 0, "%s", r.err);
    char key[64], holder[400], token[64], in_redis[400];
    cr_assert_eq(sscanf(r.out, "%63[^|]|%399[^|]|%63[^|]|%399s", key, holder, token, in_redis), 4,
                 "output: %s", r.out);
    cr_assert_str_eq(key, "bid_lock:ebay:42");
    char pid[32];
    snprintf(pid, sizeof pid, ":%d:", (int)p.pid);
    cr_assert(strstr(holder, pid), "holder %s names bidlock's pid %d", holder, (int)p.pid);
    cr_assert_str_eq(in_redis, holder, "the lock's value is BIDLOCK_HOLDER");
    for (const char *c = token; *c; c++)
        cr_assert(isdigit((unsigned char)*c), "token %s is decimal", token);
    cr_assert(strtoull(token, NULL, 10) > 0);
    result_free(&r);
}

/* Several pairs: all or none, one COMMAND, every key and token in its
 * environment; a busy posting keeps the whole group (and COMMAND) out. */
Test(cli, a_group_run_locks_every_posting_or_none)
{
    const char *cmd = sh_cmd("printf '%%s|%%s' \"$BIDLOCK_KEYS\" \"$BIDLOCK_TOKENS\"; "
                             "redis-cli -p %d GET bid_lock:etsy:g2 >/dev/null",
                             srv.port);
    result r = CLI(NULL, "run", "--url", url, "ebay", "g1", "etsy", "g2", "--", "/bin/sh", "-c",
                   cmd);
    cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
    char keys[256], tokens[128];
    cr_assert_eq(sscanf(r.out, "%255[^|]|%127[^\n]", keys, tokens), 2, "output: %s", r.out);
    cr_assert_str_eq(keys, "bid_lock:ebay:g1 bid_lock:etsy:g2");
    unsigned long long t1 = 0, t2 = 0;
    cr_assert_eq(sscanf(tokens, "%llu %llu", &t1, &t2), 2, "tokens: %s", tokens);
    cr_assert(t1 > 0 && t2 > 0);
    result_free(&r);
    cr_assert(!rs_exists(&srv, "bid_lock:ebay:g1") && !rs_exists(&srv, "bid_lock:etsy:g2"),
              "both released");

    set_key("bid_lock:etsy:g2", "someone-else", 20000);
    const char *ran = sh_cmd("redis-cli -p %d SET ran yes", srv.port);
    r = CLI(NULL, "run", "--url", url, "--wait", "0", "ebay", "g1", "etsy", "g2", "--", "/bin/sh",
            "-c", ran);
    cr_assert_eq(r.code, 75, "exit %d: %s", r.code, r.err);
    assert_one_error_line(&r);
    cr_assert(strstr(r.err, "one of bid_lock:ebay:g1 and 1 more"), "%s", r.err);
    result_free(&r);
    cr_assert(!rs_exists(&srv, "ran"), "COMMAND never ran");
    cr_assert(!rs_exists(&srv, "bid_lock:ebay:g1"), "the free posting was not taken");
    freeReplyObject(rs_cmd(&srv, "DEL bid_lock:etsy:g2"));

    /* --done marks both; a later group run on either says which is done. */
    r = CLI(NULL, "run", "--url", url, "--done", "ebay", "g1", "etsy", "g2", "--", "/bin/true");
    cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
    result_free(&r);
    r = CLI(NULL, "run", "--url", url, "ebay", "g0", "etsy", "g2", "--", "/bin/sh", "-c", ran);
    cr_assert_eq(r.code, 0, "done: exit 0 without COMMAND (%s)", r.err);
    cr_assert(strstr(r.err, "bid_lock:etsy:g2 is done"), "%s", r.err);
    result_free(&r);
    cr_assert(!rs_exists(&srv, "ran"));

    /* Bad pairs: exit 64, one line, nothing sent. */
    r = CLI(NULL, "run", "--url", url, "ebay", "g1", "etsy", "--", "/bin/true");
    cr_assert_eq(r.code, 64);
    assert_one_error_line(&r);
    cr_assert(strstr(r.err, "'etsy' has no POSTING"), "%s", r.err);
    result_free(&r);
    r = CLI(NULL, "run", "--url", url, "ebay", "g1", "ebay", "g1", "--", "/bin/true");
    cr_assert_eq(r.code, 64, "exit %d: %s", r.code, r.err);
    assert_one_error_line(&r);
    cr_assert(strstr(r.err, "the same"), "%s", r.err);
    result_free(&r);
}

Test(cli, token_increases_across_runs)
{
    unsigned long long last = 0;
    for (int i = 0; i < 4; i++) {
        result r = CLI(NULL, "run", "--url", url, "ebay", "tok", "--", "/bin/sh", "-c",
                       "echo $BIDLOCK_TOKEN");
        cr_assert_eq(r.code, 0, "%s", r.err);
        unsigned long long t = strtoull(r.out, NULL, 10);
        cr_assert(t > last, "run %d: token %llu after %llu", i, t, last);
        last = t;
        result_free(&r);
    }
}

Test(cli, losing_the_lock_stops_command_and_exits_70)
{
    /* COMMAND deletes its own lock, so the next renewal (ttl/3 = 100 ms) is
     * refused. It records the SIGTERM and exits 0: bidlock still says 70. */
    const char *cmd = sh_cmd("trap 'redis-cli -p %d SET got_term 1 >/dev/null; exit 0' TERM; "
                             "redis-cli -p %d DEL \"$BIDLOCK_KEY\" >/dev/null; "
                             "i=0; while [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done",
                             srv.port, srv.port);
    result r = CLI(NULL, "run", "--url", url, "--ttl", "300", "ebay", "lost", "--", "/bin/sh", "-c",
                   cmd);
    cr_assert_eq(r.code, 70, "exit %d: %s", r.code, r.err);
    assert_one_error_line(&r);
    cr_assert(strstr(r.err, "lost"), "%s", r.err);
    cr_assert(r.ms < 4000, "COMMAND was stopped, not waited out (%llu ms)",
              (unsigned long long)r.ms);
    char *v = get_str("got_term");
    cr_assert(v && strcmp(v, "1") == 0, "COMMAND got SIGTERM");
    free(v);
    result_free(&r);
}

Test(cli, a_long_command_keeps_its_lease)
{
    /* TTL 500 ms, COMMAND runs 1.8 s: renewals keep the lock, nobody else gets it. */
    const char *cmd = sh_cmd("sleep 1.8; redis-cli -p %d GET \"$BIDLOCK_KEY\"", srv.port);
    proc p = start_cli(NULL, "run", "--url", url, "--ttl", "500", "ebay", "long", "--", "/bin/sh",
                       "-c", cmd, (const char *)NULL);
    /* Counted from when it holds the lock, however long the start took. */
    uint64_t end = mono_ms() + 10000;
    while (!rs_exists(&srv, "bid_lock:ebay:long") && mono_ms() < end)
        usleep(5000);
    cr_assert(rs_exists(&srv, "bid_lock:ebay:long"), "the run took the lock");
    usleep(1200000);
    result other = CLI(NULL, "run", "--url", url, "--wait", "0", "ebay", "long", "--", "/bin/true");
    cr_assert_eq(other.code, 75, "still held after twice its TTL: %s", other.err);
    result_free(&other);
    result r = finish(&p, 20000);
    cr_assert_eq(r.code, 0, "%s", r.err);
    cr_assert(strlen(r.out) > 10, "the lock was still ours at the end: %s", r.out);
    result_free(&r);
}

Test(cli, signals_go_to_command_and_the_lock_is_released)
{
    const char *cmd = sh_cmd("trap 'exit 42' TERM; redis-cli -p %d SET started 1 >/dev/null; "
                             "while :; do sleep 0.05; done",
                             srv.port);
    proc p = start_cli(NULL, "run", "--url", url, "ebay", "sig", "--", "/bin/sh", "-c", cmd,
                       (const char *)NULL);
    uint64_t end = mono_ms() + 10000;
    while (!rs_exists(&srv, "started") && mono_ms() < end)
        usleep(10000);
    cr_assert(rs_exists(&srv, "started"), "COMMAND started");
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:sig"), 1);
    kill(p.pid, SIGTERM);
    result r = finish(&p, 10000);
    cr_assert_eq(r.code, 42, "COMMAND's status after its TERM trap: %d (%s)", r.code, r.err);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:sig"), 0, "released after COMMAND exited");
    result_free(&r);
}

/* Ctrl-C on a terminal goes to the whole foreground process group, COMMAND
 * included; bidlock does not pass it on a second time (two SIGINTs that
 * close together coalesce anyway, so this pins the outcome, not the count
 * of kill calls: COMMAND is interrupted, its status comes back, the lock
 * is released). */
Test(cli, ctrl_c_on_a_terminal_interrupts_command_and_releases)
{
    const char *cmd = sh_cmd("n=0; trap 'n=$((n+1))' INT; redis-cli -p %d SET started 1 >/dev/null; "
                             "sleep 1; redis-cli -p %d SET ints $n >/dev/null; exit 7",
                             srv.port, srv.port);
    int master;
    pid_t pid = forkpty(&master, NULL, NULL, NULL);
    cr_assert(pid >= 0, "forkpty: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        const char *argv[] = {BIDLOCK_CLI_PATH, "run", "--url", url, "ebay", "tty", "--",
                              "/bin/sh", "-c", cmd, NULL};
        execv(argv[0], (char *const *)argv);
        _exit(126);
    }
    fcntl(master, F_SETFL, O_NONBLOCK);
    char buf[256];
    uint64_t end = mono_ms() + 10000;
    while (!rs_exists(&srv, "started") && mono_ms() < end)
        usleep(10000);
    cr_assert(rs_exists(&srv, "started"), "COMMAND started");
    cr_assert_eq(write(master, "\x03", 1), 1); /* the terminal's interrupt character */
    int st = 0;
    for (;;) {
        while (read(master, buf, sizeof buf) > 0) /* keep the terminal drained */
            ;
        if (waitpid(pid, &st, WNOHANG) == pid)
            break;
        if (mono_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            cr_assert_fail("bidlock did not end");
        }
        usleep(5000);
    }
    close(master);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 7, "COMMAND's own status, got 0x%x", st);
    char *n = get_str("ints");
    cr_assert(n && strcmp(n, "1") == 0, "COMMAND saw %s SIGINTs, not 1", n ? n : "no");
    free(n);
    cr_assert_eq(rs_exists(&srv, "bid_lock:ebay:tty"), 0);
}

Test(cli, a_signal_while_waiting_gives_up_without_running_command)
{
    set_key("bid_lock:ebay:wait", "someone-else", 20000);
    proc p = start_cli(NULL, "run", "--url", url, "--wait", "30", "ebay", "wait", "--", "/bin/sh",
                       "-c", sh_cmd("redis-cli -p %d SET ran 1", srv.port), (const char *)NULL);
    /* Interrupt it once it waits in the queue (its first attempt has
     * answered), not while that attempt is still in flight. */
    uint64_t end = mono_ms() + 10000;
    while (!rs_exists(&srv, "{bid_lock:ebay:wait}:q") && mono_ms() < end)
        usleep(5000);
    cr_assert(rs_exists(&srv, "{bid_lock:ebay:wait}:q"), "it queued");
    usleep(100000);
    kill(p.pid, SIGINT);
    result r = finish(&p, 10000);
    cr_assert_eq(r.code, 128 + SIGINT, "exit %d: %s", r.code, r.err);
    assert_one_error_line(&r);
    cr_assert_eq(rs_exists(&srv, "ran"), 0);
    cr_assert_eq(rs_exists(&srv, "{bid_lock:ebay:wait}:q"), 0, "it left the wait queue");
    result_free(&r);
}

/* ---- concurrency ---------------------------------------------------------------- */

Test(cli, concurrent_runs_exclude_each_other)
{
    enum { N = 6 };
    /* A read-modify-write with a pause in the middle: without mutual
     * exclusion, updates are lost. */
    const char *cmd = sh_cmd("v=$(redis-cli -p %d GET counter); sleep 0.1; "
                             "redis-cli -p %d SET counter $(( ${v:-0} + 1 )) >/dev/null",
                             srv.port, srv.port);
    proc p[N];
    for (int i = 0; i < N; i++)
        p[i] = start_cli(NULL, "run", "--url", url, "--wait", "30", "ebay", "counter", "--",
                         "/bin/sh", "-c", cmd, (const char *)NULL);
    for (int i = 0; i < N; i++) {
        result r = finish(&p[i], 40000);
        cr_assert_eq(r.code, 0, "run %d: exit %d (%s)", i, r.code, r.err);
        result_free(&r);
    }
    cr_assert_eq(rs_int(&srv, "INCRBY counter 0"), N, "no update was lost");
    cr_assert_eq(rs_lock_count(&srv), 0);
}

Test(cli, done_lets_exactly_one_of_many_runs_execute)
{
    enum { N = 6 };
    const char *cmd = sh_cmd("redis-cli -p %d INCR ran >/dev/null; sleep 0.1", srv.port);
    proc p[N];
    for (int i = 0; i < N; i++)
        p[i] = start_cli(NULL, "run", "--url", url, "--wait", "30", "--done", "ebay", "once",
                         "--", "/bin/sh", "-c", cmd, (const char *)NULL);
    int said_done = 0;
    for (int i = 0; i < N; i++) {
        result r = finish(&p[i], 40000);
        cr_assert_eq(r.code, 0, "run %d: exit %d (%s)", i, r.code, r.err);
        if (r.err[0]) {
            assert_one_error_line(&r);
            cr_assert(strstr(r.err, "done"), "%s", r.err);
            said_done++;
        }
        result_free(&r);
    }
    cr_assert_eq(rs_int(&srv, "INCRBY ran 0"), 1, "COMMAND ran exactly once");
    cr_assert_eq(said_done, N - 1);
    /* Later runs, too, skip it. */
    result r = CLI(NULL, "run", "--url", url, "--done", "ebay", "once", "--", "/bin/sh", "-c", cmd);
    cr_assert_eq(r.code, 0);
    cr_assert_eq(rs_int(&srv, "INCRBY ran 0"), 1);
    result_free(&r);
}

Test(cli, done_is_not_marked_when_command_fails)
{
    result r = CLI(NULL, "run", "--url", url, "--done", "ebay", "retry", "--", "/bin/false");
    cr_assert_eq(r.code, 1);
    result_free(&r);
    cr_assert_eq(rs_exists(&srv, "{bid_lock:ebay:retry}:done"), 0);
    r = CLI(NULL, "run", "--url", url, "--done", "ebay", "retry", "--", "/bin/true");
    cr_assert_eq(r.code, 0);
    result_free(&r);
    cr_assert_eq(rs_exists(&srv, "{bid_lock:ebay:retry}:done"), 1);
}

/* ---- status, cleanup, health --------------------------------------------------------- */

Test(cli, status_prints_one_json_object)
{
    result r = CLI(NULL, "status", "--url", url, "ebay", "s1");
    cr_assert_eq(r.code, 0, "%s", r.err);
    cr_assert_str_eq(r.out, "{\"key\":\"bid_lock:ebay:s1\",\"held\":false,\"holder\":null,"
                            "\"pttl_ms\":null,\"done\":false}\n");
    result_free(&r);

    set_key("bid_lock:ebay:s1", "host:1:abc", 60000);
    r = CLI(NULL, "status", "--url", url, "ebay", "s1");
    cr_assert_eq(r.code, 0);
    long long pttl = -1;
    cr_assert_eq(sscanf(r.out,
                        "{\"key\":\"bid_lock:ebay:s1\",\"held\":true,\"holder\":\"host:1:abc\","
                        "\"pttl_ms\":%lld,\"done\":false}",
                        &pttl),
                 1, "%s", r.out);
    cr_assert(pttl > 50000 && pttl <= 60000, "pttl %lld", pttl);
    result_free(&r);

    /* Strings are JSON-escaped: a posting with a quote and a backslash, a
     * holder value with a newline and a tab. */
    redisReply *x = rs_cmd(&srv, "SET %s %s", "bid_lock:ebay:a\"b\\c", "x\ny\tz\x01");
    freeReplyObject(x);
    r = CLI(NULL, "status", "--url", url, "ebay", "a\"b\\c");
    cr_assert_eq(r.code, 0, "%s", r.err);
    cr_assert_str_eq(r.out, "{\"key\":\"bid_lock:ebay:a\\\"b\\\\c\",\"held\":true,"
                            "\"holder\":\"x\\ny\\tz\\u0001\",\"pttl_ms\":null,\"done\":false}\n");
    result_free(&r);

    r = CLI(NULL, "run", "--url", url, "--done", "ebay", "s2", "--", "/bin/true");
    cr_assert_eq(r.code, 0);
    result_free(&r);
    r = CLI(NULL, "status", "--url", url, "--prefix", "bid_lock", "ebay", "s2");
    cr_assert_str_eq(r.out, "{\"key\":\"bid_lock:ebay:s2\",\"held\":false,\"holder\":null,"
                            "\"pttl_ms\":null,\"done\":true}\n");
    result_free(&r);
}

Test(cli, cleanup_removes_every_lock_under_the_prefix)
{
    set_key("bid_lock:ebay:1", "a", 60000);
    set_key("bid_lock:ebay:2", "b", 60000);
    set_key("bid_lock:etsy:3", "c", 60000);
    set_key("{bid_lock:ebay:1}:fence", "7", 60000);
    set_key("other:ebay:1", "d", 60000);
    set_key("unrelated", "e", 60000);
    result r = CLI(NULL, "cleanup", "--url", url);
    cr_assert_eq(r.code, 0, "%s", r.err);
    cr_assert_str_eq(r.out, "removed 3 locks under prefix bid_lock\n");
    result_free(&r);
    cr_assert_eq(rs_lock_count(&srv), 0);
    cr_assert_eq(rs_exists(&srv, "{bid_lock:ebay:1}:fence"), 1, "fencing counters stay");
    cr_assert_eq(rs_exists(&srv, "other:ebay:1"), 1);
    cr_assert_eq(rs_exists(&srv, "unrelated"), 1);
    r = CLI(NULL, "cleanup", "--url", url, "--prefix", "other");
    cr_assert_str_eq(r.out, "removed 1 lock under prefix other\n");
    result_free(&r);
    r = CLI(NULL, "cleanup", "--url", url);
    cr_assert_str_eq(r.out, "removed 0 locks under prefix bid_lock\n");
    result_free(&r);
}

Test(cli, locks_lists_every_held_lock_longest_first)
{
    set_key("bid_lock:ebay:old", "someone-else", 60000);
    /* the held time comes from the fencing token: the server's microseconds */
    redisReply *t = rs_cmd(&srv, "TIME");
    cr_assert(t && t->type == REDIS_REPLY_ARRAY && t->elements == 2);
    unsigned long long now_us = strtoull(t->element[0]->str, NULL, 10) * 1000000ULL +
                                strtoull(t->element[1]->str, NULL, 10);
    freeReplyObject(t);
    char tok[32];
    snprintf(tok, sizeof tok, "%llu", now_us - 5000000ULL); /* granted 5 s ago */
    freeReplyObject(rs_cmd(&srv, "SET {bid_lock:ebay:old}:fence %s", tok));
    set_key("bid_lock:etsy:new", "another-one", 30000);
    result r = CLI(NULL, "locks", "--url", url);
    cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
    char *first = strstr(r.out, "bid_lock:ebay:old"), *second = strstr(r.out, "bid_lock:etsy:new");
    cr_assert(first && second && first < second, "longest held first:\n%s", r.out);
    cr_assert(strstr(r.out, "someone-else") && strstr(r.out, "another-one"), "%s", r.out);
    cr_assert(strstr(r.out, "2 locks held under prefix bid_lock"), "%s", r.out);
    result_free(&r);
    r = CLI(NULL, "locks", "--url", url, "--json", "--longest", "1");
    cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
    cr_assert(strstr(r.out, "{\"prefix\":\"bid_lock\",\"total\":2,\"locks\":[{\"key\":"
                            "\"bid_lock:ebay:old\",\"holder\":\"someone-else\",\"held_ms\":"),
              "%s", r.out);
    const char *held = strstr(r.out, "\"held_ms\":");
    cr_assert(held);
    long ms = atol(held + 10);
    cr_assert(ms >= 5000, "held about 5 s by the server's clock: %ld ms", ms);
    cr_assert_null(strstr(r.out, "etsy"), "--longest 1: one lock");
    result_free(&r);
    r = CLI(NULL, "locks", "--url", url, "--longest", "many");
    cr_assert_eq(r.code, 64);
    assert_one_error_line(&r);
    result_free(&r);
}

Test(cli, health_prints_the_round_trip)
{
    result r = CLI(NULL, "health", "--url", url);
    cr_assert_eq(r.code, 0, "%s", r.err);
    double ms = -1;
    cr_assert_eq(sscanf(r.out, "redis: ok, round trip %lf ms", &ms), 1, "%s", r.out);
    cr_assert(ms >= 0 && ms < 1000);
    cr_assert(strstr(r.out, ", master 127.0.0.1:"), "role and address: %s", r.out);
    cr_assert(strstr(r.out, ", 0 replicas connected\n"), "replicas: %s", r.out);
    cr_assert_str_eq(r.err, "");
    result_free(&r);
}

/* TLS flags as redis-cli spells them (issue 12), against a TLS redis-server. */
Test(cli, health_over_tls_with_cacert_and_the_tls_flags_checked)
{
    char dir[96], err[256], ca[160], cert[160], key[160], u[96];
    cr_assert_eq(rsrv_tmpdir(dir, sizeof dir, "clitls"), 0);
    cr_assert_eq(rsrv_tls_certs(dir, err, sizeof err), 0, "%s", err);
    static const char *const extra[] = {"--tls-auth-clients", "optional", NULL};
    rsrv s;
    cr_assert_eq(rsrv_start_tls(&s, extra, dir), 0, "%s", s.err);
    snprintf(ca, sizeof ca, "%s/ca.crt", dir);
    snprintf(cert, sizeof cert, "%s/client.crt", dir);
    snprintf(key, sizeof key, "%s/client.key", dir);
    snprintf(u, sizeof u, "rediss://127.0.0.1:%d", s.tls_port);
    result r = CLI(NULL, "health", "--tls", "--cacert", ca, "--url", u);
    cr_assert_eq(r.code, 0, "%s", r.err);
    double ms = -1;
    cr_assert_eq(sscanf(r.out, "redis: ok, round trip %lf ms", &ms), 1, "%s", r.out);
    result_free(&r);
    r = CLI(NULL, "health", "--cacert", ca, "--cert", cert, "--key", key, "--sni", "localhost",
            "--url", u);
    cr_assert_eq(r.code, 0, "mTLS + --sni: %s", r.err);
    result_free(&r);
    /* no CA given: the system store does not know the test CA */
    r = CLI(NULL, "health", "--url", u);
    cr_assert_eq(r.code, 69, "%s", r.err);
    cr_assert(strstr(r.err, "certificate verify failed"), "%s", r.err);
    result_free(&r);
    r = CLI(NULL, "health", "--insecure", "--url", u);
    cr_assert_eq(r.code, 0, "--insecure: %s", r.err);
    result_free(&r);
    r = CLI(NULL, "health", "--insecure", "--cacert", ca, "--url", u);
    cr_assert_eq(r.code, 64);
    cr_assert(strstr(r.err, "--insecure") && strstr(r.err, "--cacert"), "%s", r.err);
    result_free(&r);
    r = CLI(NULL, "health", "--key", key, "--url", u);
    cr_assert_eq(r.code, 64);
    cr_assert(strstr(r.err, "--key is set but --cert is not"), "%s", r.err);
    result_free(&r);
    r = CLI(NULL, "health", "--tls", "--cacert", "/nonexistent/ca.pem", "--url", u);
    cr_assert_eq(r.code, 64);
    cr_assert(strstr(r.err, "--cacert '/nonexistent/ca.pem'"), "%s", r.err);
    result_free(&r);
    r = CLI(NULL, "--help");
    const char *flags[] = {"--tls", "--cacert", "--cacertdir", "--cert", "--key", "--sni",
                           "--insecure", "rediss://"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        cr_assert(strstr(r.out, flags[i]), "--help lists %s", flags[i]);
    result_free(&r);
    rsrv_stop(&s);
    rsrv_rmdir(dir);
}

/* ---- the demo's scanners ------------------------------------------------------------ */

static long json_num(const char *line, const char *name)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", name);
    const char *p = strstr(line, pat);
    cr_assert(p, "no %s in %s", name, line);
    return strtol(p + strlen(pat), NULL, 10);
}

Test(cli, scanner_processes_place_no_duplicate_bids)
{
    enum { N = 4, POSTINGS = 80 };
    proc p[N];
    char name[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(name[i], sizeof name[i], "s%d", i + 1);
        const char *argv[] = {BIDLOCK_SCANNER_PATH, "--port", port_s, "--name", name[i],
                              "--postings", "80", "--think-ms", "5", "--poll-ms", "5",
                              "--quiet", NULL};
        p[i] = start(argv, NULL);
    }
    long claimed = 0, passed = 0, seen = 0;
    for (int i = 0; i < N; i++) {
        result r = finish(&p[i], 60000);
        cr_assert_eq(r.code, 0, "scanner %d: exit %d (%s)", i, r.code, r.err);
        claimed += json_num(r.out, "bids");
        passed += json_num(r.out, "passed");
        seen += json_num(r.out, "seen");
        cr_assert_eq(json_num(r.out, "errors"), 0);
        result_free(&r);
    }
    cr_assert_eq(seen, N * POSTINGS, "every instance saw the whole feed");
    /* The audit reads the bid store, not the scanners' claims. */
    redisReply *keys = rs_cmd(&srv, "KEYS bids:demo:*");
    long bids = 0;
    for (size_t i = 0; i < keys->elements; i++) {
        long long n = rs_int(&srv, "LLEN %s", keys->element[i]->str);
        cr_assert_eq(n, 1, "%s has %lld bids", keys->element[i]->str, n);
        bids += n;
    }
    cr_assert_eq(bids, claimed, "the scanners' claims match the store");
    cr_assert_eq((long)keys->elements + passed, POSTINGS, "each posting decided exactly once");
    freeReplyObject(keys);
    cr_assert_eq(rs_lock_count(&srv), 0, "no lock left behind");
}

/* The demo's fallback without redis-server: K instances in one process on
 * the memory backend, auditing their in-process bid store. */
Test(cli, scanner_memory_mode_audits_zero_duplicates)
{
    const char *argv[] = {BIDLOCK_SCANNER_PATH, "--memory", "--instances", "4", "--postings", "80",
                          "--think-ms", "5", "--poll-ms", "5", "--quiet", NULL};
    proc p = start(argv, NULL);
    result r = finish(&p, 60000);
    cr_assert_eq(r.code, 0, "exit %d: %s", r.code, r.err);
    const char *audit = strstr(r.out, "{\"store\":\"memory\"");
    cr_assert(audit, "no audit line: %s", r.out);
    cr_assert_eq(json_num(audit, "duplicates"), 0, "%s", audit);
    long bids = json_num(audit, "bids"), claimed = 0;
    for (const char *l = r.out; (l = strstr(l, "{\"instance\"")); l++)
        claimed += json_num(l, "bids");
    cr_assert_eq(bids, claimed);
    cr_assert(bids > 0 && bids <= 80);
    cr_assert(strstr(r.err, "in-memory backend"), "it says what it runs on: %s", r.err);
    result_free(&r);
}
