/* test_acl.c - the least-privilege ACL of `bidlock acl` (src/acl.c), on a
 * real server (redis-server, or valkey-server with BIDLOCK_TEST_SERVER):
 *   - a user with exactly those rules, made by piping the command's line to
 *     redis-cli/valkey-cli, passes the engine scenarios (acquire, wait and
 *     wake-up, hand-off, release, done, extend, fencing, inspect, cleanup,
 *     health, replica acknowledgement, SELECT);
 *   - a user missing any one rule gets "NOPERM ..." naming what is missing,
 *     in a request's message or in the log;
 *   - a user confined to one prefix cannot touch a key or channel outside
 *     it, through bidlock's own scripts or otherwise;
 *   - the --readonly user runs status and health, and cannot acquire.
 * libev only: the ACL is the server's business, not the loop's. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "acl.h"
#include "harness.h"
#include "helpers.h"
#include "keyspace.h"
#include "scripts.h"

#ifndef BIDLOCK_CLI_PATH
#error "meson passes -DBIDLOCK_CLI_PATH"
#endif

/* WAIT_MS: how long a waiting request may wait; BOUND_MS: how long the
 * test waits for any one callback (longer, so the request's own deadline
 * is what ends it). */
enum { WAIT_MS = 20000, BOUND_MS = 30000, NOTES = 96 };

#define PW "s3cret-pw"

/* ---- what the scenario and the log said ------------------------------------- */

static char notes[NOTES][400];
static int nnotes;     /* every log line and every message of a step that went wrong */
static int nfailed;    /* steps that did not end as with every permission */

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    if (nnotes >= NOTES)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(notes[nnotes++], sizeof notes[0], fmt, ap);
    va_end(ap);
}

static void log_hook(int level, const char *msg, void *data)
{
    (void)data;
    if (level >= BL_LOG_WARN)
        note("log: %s", msg);
}

/* A step ended otherwise than it does with every permission. */
static void step_failed(const char *step, int status, const char *msg)
{
    nfailed++;
    note("%s: %s %s", step, bl_status_name(status), msg ? msg : "");
}

static int noperm_seen(void)
{
    for (int i = 0; i < nnotes; i++)
        if (strstr(notes[i], "NOPERM"))
            return 1;
    return 0;
}

/* word occurs in s, case aside, as a whole name ("subscribe" is not in
 * "unsubscribe"; "script|load" is one name). */
static int names(const char *s, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = s; *p; p++) {
        if (strncasecmp(p, word, n) != 0)
            continue;
        int before = p > s && (isalnum((unsigned char)p[-1]) || p[-1] == '|' || p[-1] == '_');
        int after = isalnum((unsigned char)p[n]) || p[n] == '|' || p[n] == '_';
        if (!before && !after)
            return 1;
    }
    return 0;
}

static void dump_notes(void)
{
    for (int i = 0; i < nnotes; i++)
        fprintf(stderr, "  note: %s\n", notes[i]);
}

/* ---- server side -------------------------------------------------------------- */

/* ACL SETUSER name on >PW <rules, space-separated> (on the default user's
 * connection: it may do anything). */
static void set_user(const char *name, const char *rules)
{
    redisContext *c = rs_connect(&srv);
    const char *argv[80];
    size_t lens[80];
    int argc = 0;
    char copy[2048];
    snprintf(copy, sizeof copy, "%s", rules);
    argv[argc++] = "ACL";
    argv[argc++] = "SETUSER";
    argv[argc++] = name;
    argv[argc++] = "reset";
    argv[argc++] = "on";
    argv[argc++] = ">" PW;
    for (char *t = strtok(copy, " "); t && argc < 80; t = strtok(NULL, " "))
        argv[argc++] = t;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    cr_assert(r && r->type == REDIS_REPLY_STATUS, "ACL SETUSER %s: %s", name,
              r && r->str ? r->str : c->errstr);
    freeReplyObject(r);
    redisFree(c);
}

static int pubsub_channels(void)
{
    redisReply *r = rs_cmd(&srv, "PUBSUB CHANNELS *");
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    int n = (int)r->elements;
    freeReplyObject(r);
    return n;
}

/* ---- the scenario ---------------------------------------------------------------- */

/* on_cleanup, plus the message bl_manager_errmsg holds inside the callback. */
static char cleanup_msg[256];
static void on_cleanup_msg(bl_manager *m, int status, uint64_t removed, void *crec_)
{
    on_cleanup(m, status, removed, crec_);
    snprintf(cleanup_msg, sizeof cleanup_msg, "%s", status != BL_OK ? bl_manager_errmsg(m) : "");
}

typedef struct who {
    const char *user, *prefix;
} who;

static bl_manager *manager_as(const who *w, int min_replicas)
{
    bl_config c = quick_cfg(srv.port);
    c.username = w->user;
    c.password = PW;
    c.key_prefix = w->prefix;
    c.db = 1; /* so SELECT is sent, as for a user with a database of its own */
    c.log = log_hook;
    if (min_replicas)
        c.min_replicas = min_replicas;
    return mk_manager(T, srv.port, &c);
}

static int wait_rec(rec *r)
{
    return tl_wait(T, &r->n, 1, BOUND_MS);
}

/* Start an acquire; 0 if bl_acquire refused it (noted). */
static int start(bl_manager *m, const char *posting, int64_t wait_ms, int renew, rec *r,
                 rec *lost)
{
    bl_acquire_opts o = acq_opts(wait_ms, renew ? 3000 : 30000);
    o.auto_extend = renew;
    o.on_lost = lost ? on_lost : NULL;
    o.on_lost_data = lost;
    int rc = bl_acquire(m, "ebay", posting, &o, on_acq, r, NULL);
    if (rc != BL_OK)
        step_failed("bl_acquire", rc, bl_manager_errmsg(m));
    return rc == BL_OK;
}

/* Acquire and wait; the status (noted when it is not `want`). */
static int acquire(bl_manager *m, const char *step, const char *posting, int want, rec *r)
{
    if (!start(m, posting, 0, 0, r, NULL))
        return -1;
    cr_assert(wait_rec(r), "%s never completed", step);
    if (r->status != want)
        step_failed(step, r->status, r->errmsg);
    return r->status;
}

static int release(bl_lock *lock, int done, const char *step, int want)
{
    rec r = {0};
    int rc = (done ? bl_release_done : bl_release)(lock, on_rel, &r);
    cr_assert_eq(rc, BL_OK, "%s: %s", step, bl_strerror(rc));
    cr_assert(wait_rec(&r), "%s never completed", step);
    if (r.status != want)
        step_failed(step, r.status, r.errmsg);
    return r.status;
}

/* The waiter r is queued and subscribed (a channel is listened on), or it
 * ended, or a refusal was reported: what a waiter reaches, either way. */
static int parked(void *arg)
{
    rec *r = arg;
    return r->n > 0 || pubsub_channels() > 0 || noperm_seen();
}

static int unsubscribed(void *arg)
{
    (void)arg;
    return pubsub_channels() == 0 || noperm_seen();
}

typedef struct renewal {
    bl_manager *m;
    rec *lost;
} renewal;

static int renewed(void *arg)
{
    renewal *x = arg;
    bl_metrics mt;
    bl_manager_metrics(x->m, &mt);
    return mt.stats.extends > 0 || x->lost->n > 0 || noperm_seen();
}

/* Everything bidlock does on a server, as user w. Never asserts on what
 * the server refused (the missing-rule tests run it too): every step that
 * ends otherwise than with all permissions is counted in nfailed, and the
 * scenario stops at the first refusal reported (only one rule is missing:
 * that refusal is the one that must name it). */
#define STOP_IF_REFUSED                                                                       \
    do {                                                                                      \
        if (noperm_seen())                                                                    \
            goto out;                                                                         \
    } while (0)

static void scenario(const who *w)
{
    bl_manager *m1 = manager_as(w, 0), *m2 = manager_as(w, 0), *m3 = NULL;
    hrec h = {0};
    rec a1 = {0}, a2 = {0}, a3 = {0}, lost3 = {0}, a4 = {0}, a5 = {0}, a6 = {0};
    irec i = {0};
    crec c = {0};

    /* health: PING (and ROLE just before it) */
    cr_assert_eq(bl_health_check(m1, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, BOUND_MS), "health never completed");
    if (h.status != BL_OK)
        step_failed("health", h.status, h.errmsg);
    STOP_IF_REFUSED;

    /* acquire, then a second manager waits for it (queue, subscription) */
    acquire(m1, "acquire", "p1", BL_OK, &a1);
    STOP_IF_REFUSED;
    if (start(m2, "p1", WAIT_MS, 0, &a2, NULL)) {
        cr_assert(tl_wait_for(T, parked, &a2, BOUND_MS), "the waiter neither waited nor ended");
        if (a2.n)
            step_failed("wait", a2.status, a2.errmsg);
    }
    STOP_IF_REFUSED;
    /* release hands it over (ZPOPMIN, PUBLISH): the waiter is woken */
    if (a1.status == BL_OK)
        release(a1.lock, 0, "release with a waiter", BL_OK);
    STOP_IF_REFUSED;
    if (!a2.n)
        cr_assert(wait_rec(&a2), "the waiter never completed");
    if (a2.status != BL_OK)
        step_failed("woken waiter", a2.status, a2.errmsg);
    else if (a1.status == BL_OK && a2.token <= a1.token)
        step_failed("fencing token", BL_OK, "did not increase");
    STOP_IF_REFUSED;

    /* a renewed lease (compare-and-pexpire), then its plain release */
    if (start(m1, "p2", 0, 1, &a3, &lost3)) {
        cr_assert(wait_rec(&a3), "renewed acquire never completed");
        if (a3.status == BL_OK) {
            renewal x = {m1, &lost3};
            cr_assert(tl_wait_for(T, renewed, &x, BOUND_MS), "no renewal, no loss, no refusal");
            bl_metrics mt;
            bl_manager_metrics(m1, &mt);
            if (mt.stats.extends == 0)
                step_failed("renewal", lost3.n ? lost3.status : BL_OK, "the lease was not renewed");
            release(a3.lock, 0, "release", lost3.n ? BL_ENOTHELD : BL_OK);
        } else {
            step_failed("renewed acquire", a3.status, a3.errmsg);
        }
    }
    STOP_IF_REFUSED;

    /* inspect: holder, TTL, done, last token */
    cr_assert_eq(bl_inspect(m1, "ebay", "p1", on_inspect, &i), BL_OK);
    cr_assert(tl_wait(T, &i.n, 1, BOUND_MS), "inspect never completed");
    if (i.status != BL_OK)
        step_failed("inspect", i.status, i.errmsg);
    else if (a2.status == BL_OK && (!i.held || i.token != a2.token))
        step_failed("inspect", BL_OK, "does not show the holder's lock and token");
    STOP_IF_REFUSED;

    /* done: a waiter learns it at once (ZRANGE, PUBLISH to every waiter) */
    if (a2.status == BL_OK && start(m1, "p1", WAIT_MS, 0, &a4, NULL)) {
        cr_assert(tl_wait_for(T, parked, &a4, BOUND_MS), "the waiter neither waited nor ended");
        STOP_IF_REFUSED;
        release(a2.lock, 1, "release done", BL_OK);
        STOP_IF_REFUSED;
        if (!a4.n)
            cr_assert(wait_rec(&a4), "the waiter of a done posting never completed");
        if (a4.status != BL_EDONE)
            step_failed("waiter of a done posting", a4.status, a4.errmsg);
    }
    STOP_IF_REFUSED;

    /* cleanup: SCAN, then the cleanup script (UNLINK) */
    acquire(m1, "acquire", "p3", BL_OK, &a5);
    STOP_IF_REFUSED;
    cr_assert_eq(bl_cleanup(m1, 0, on_cleanup_msg, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, BOUND_MS), "cleanup never completed");
    if (c.status != BL_OK || (a5.status == BL_OK && c.removed == 0))
        step_failed("cleanup", c.status, cleanup_msg);
    if (a5.status == BL_OK)
        release(a5.lock, 0, "release after cleanup", c.status == BL_OK ? BL_ENOTHELD : BL_OK);
    STOP_IF_REFUSED;

    /* replica acknowledgement: WAIT (no replica here: the grant is given back) */
    m3 = manager_as(w, 1);
    acquire(m3, "acquire with min_replicas 1", "p4", BL_ENOREPL, &a6);
    if (a6.status == BL_OK)
        release(a6.lock, 0, "release", BL_OK);
    STOP_IF_REFUSED;

    /* the last waiter is gone: the subscription ends (UNSUBSCRIBE) */
    cr_assert(tl_wait_for(T, unsubscribed, NULL, BOUND_MS), "still subscribed");

out:
    /* Requests still pending end BL_ECANCELED here, while their recs live. */
    if (m3)
        close_manager(T, m3);
    close_manager(T, m2);
    close_manager(T, m1);
}

/* ---- the rules, as `bidlock acl` prints them ---------------------------------------- */

static void rules_for(char *dst, size_t cap, const char *prefix, int readonly)
{
    cr_assert(bl_acl_rules(dst, cap, prefix, readonly) > 0);
}

/* The line `bidlock acl ARGS` prints, sent to the test's server with the
 * CLI of the same server (valkey-cli beside valkey-server): the server's
 * reply. */
static char *cli_setuser(const char *args, char *out, size_t cap)
{
    const char *bin = rsrv_server_bin();
    char cli[512];
    size_t n = strlen(bin);
    if (n > 7 && strcmp(bin + n - 7, "-server") == 0)
        snprintf(cli, sizeof cli, "%.*s-cli", (int)(n - 7), bin);
    else
        snprintf(cli, sizeof cli, "redis-cli");
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s acl %s 2>/dev/null | %s -p %d 2>&1", BIDLOCK_CLI_PATH, args,
             cli, srv.port);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    size_t got = fread(out, 1, cap - 1, p);
    out[got] = '\0';
    cr_assert_eq(pclose(p), 0, "%s: %s", cmd, out);
    return out;
}

static int uses_braces(void)
{
    bl_keys *k = bl_keys_new("p", "m", "x");
    cr_assert(k);
    int b = 0;
    for (int i = 0; i < BL_KEY_COUNT; i++)
        b |= k->k[i][0] == '{';
    free(k);
    return b;
}

TestSuite(acl, .init = fx_redis_loop_init, .fini = fx_redis_loop_fini, .timeout = 240);

Test(acl, exactly_the_rules_pass_the_engine_scenarios)
{
    char out[512];
    cli_setuser("--user bl", out, sizeof out);
    cr_assert(strstr(out, "OK"), "the server refused the line: %s", out);
    /* A new user has no password: nobody logs in as it until one is added. */
    redisContext *c = rsrv_connect(srv.port, NULL, 2000);
    cr_assert(c);
    redisReply *r = redisCommand(c, "AUTH bl anything");
    cr_assert(r && r->type == REDIS_REPLY_ERROR, "AUTH as a user without password worked");
    freeReplyObject(r);
    redisFree(c);
    freeReplyObject(rs_cmd(&srv, "ACL SETUSER bl >" PW));

    who w = {"bl", "bid_lock"};
    scenario(&w);
    dump_notes();
    cr_assert_eq(nfailed, 0, "%d steps failed with exactly the rules (see the log above)",
                 nfailed);
    cr_assert_not(noperm_seen(), "a refusal with exactly the rules (see the log above)");
    /* It ran in database 1, under the prefix. */
    redisReply *keys = rs_cmd(&srv, "KEYS *");
    cr_assert_eq(keys->elements, 0, "database 0 got keys");
    freeReplyObject(keys);
    assert_no_leaks();
}

/* Each rule but -@all, one test each: that user misses only it. */
static int nrules(void)
{
    char rules[2048];
    bl_acl_rules(rules, sizeof rules, "bid_lock", 0);
    int n = 0;
    for (char *t = strtok(rules, " "); t; t = strtok(NULL, " "))
        n++;
    return n - 1;
}

static int rule_index[64];

ParameterizedTestParameters(acl, one_rule_missing_is_named)
{
    int n = nrules();
    for (int i = 0; i < n && i < 64; i++)
        rule_index[i] = i + 1;
    return cr_make_param_array(int, rule_index, (size_t)(n < 64 ? n : 64));
}

ParameterizedTest(int *idx, acl, one_rule_missing_is_named, .timeout = 240)
{
    char rules[2048], without[2048] = "", missing[128] = "";
    rules_for(rules, sizeof rules, "bid_lock", 0);
    int k = 0;
    for (char *t = strtok(rules, " "); t; t = strtok(NULL, " "), k++) {
        if (k == *idx) {
            snprintf(missing, sizeof missing, "%s", t);
            continue;
        }
        strcat(without, without[0] ? " " : "");
        strcat(without, t);
    }
    cr_assert(missing[0]);
    set_user("bl", without);
    who w = {"bl", "bid_lock"};
    scenario(&w);

    /* What the message must name: the command, or the pattern. */
    const char *name = missing[0] == '+' ? missing + 1 : missing;
    if (missing[1] == '{' && !uses_braces()) {
        /* This key layout has no {...} names: the rule is for the next. */
        dump_notes();
        cr_assert_eq(nfailed, 0, "without %s (unused by this layout) a step failed", missing);
        return;
    }
    int named = -1;
    for (int i = 0; i < nnotes && named < 0; i++)
        if (strstr(notes[i], "NOPERM") && names(notes[i], name) &&
            (missing[0] != '+' || strstr(notes[i], " run ")))
            named = i;
    if (named < 0)
        dump_notes();
    else /* in the log, to read what a user would see */
        fprintf(stderr, "without %s: %s\n", missing, notes[named]);
    cr_assert(named >= 0, "without %s nothing said NOPERM naming %s (%d steps failed)", missing, name,
              nfailed);
}

/* Every name bidlock uses for a posting is inside the rules, and the same
 * names under another prefix are not (ACL DRYRUN: the server's own check). */
Test(acl, every_name_of_the_layout_is_covered)
{
    char rules[2048];
    rules_for(rules, sizeof rules, "team_a", 0);
    set_user("a", rules);
    const char *prefixes[] = {"team_a", "team_b", "team_a_x"};
    for (int p = 0; p < 3; p++) {
        bl_keys *k = bl_keys_new(prefixes[p], "ebay", "42");
        cr_assert(k);
        for (int i = 0; i < BL_KEY_COUNT; i++) {
            redisReply *r = rs_cmd(&srv, "ACL DRYRUN a SET %s x", k->k[i]);
            int ok = r->type == REDIS_REPLY_STATUS;
            cr_assert_eq(ok, p == 0, "%s: SET %s: %s", prefixes[p], k->k[i],
                         r->str ? r->str : "?");
            freeReplyObject(r);
        }
        char ch[512];
        cr_assert(bl_keys_channel(ch, sizeof ch, k->k[BL_KEY_LOCK], k->len[BL_KEY_LOCK], "h:1:u",
                                  5));
        redisReply *r = rs_cmd(&srv, "ACL DRYRUN a PUBLISH %s x", ch);
        cr_assert_eq(r->type == REDIS_REPLY_STATUS, p == 0, "%s: PUBLISH %s: %s", prefixes[p], ch,
                     r->str ? r->str : "?");
        freeReplyObject(r);
        free(k);
    }
}

/* A glob character in the prefix matches only itself. */
Test(acl, a_glob_prefix_is_escaped)
{
    char out[512];
    cli_setuser("--user g --prefix 'a*[x]'", out, sizeof out);
    cr_assert(strstr(out, "OK"), "%s", out);
    const char *inside[] = {"a*[x]:ebay:1", "{a*[x]:ebay:1}:q"};
    const char *outside[] = {"abc:ebay:1", "ax:ebay:1", "{ab[x]:ebay:1}:q", "a*x:ebay:1"};
    for (int i = 0; i < 2; i++) {
        redisReply *r = rs_cmd(&srv, "ACL DRYRUN g GET %s", inside[i]);
        cr_assert_eq(r->type, REDIS_REPLY_STATUS, "GET %s: %s", inside[i], r->str);
        freeReplyObject(r);
    }
    for (int i = 0; i < 4; i++) {
        redisReply *r = rs_cmd(&srv, "ACL DRYRUN g GET %s", outside[i]);
        cr_assert_neq(r->type, REDIS_REPLY_STATUS, "GET %s was allowed", outside[i]);
        freeReplyObject(r);
    }
}

/* ---- confinement: no key outside the prefix, even through bidlock's scripts ------- */

static redisContext *login(const char *user)
{
    redisContext *c = rsrv_connect(srv.port, NULL, 2000);
    cr_assert(c);
    redisReply *r = redisCommand(c, "AUTH %s %s", user, PW);
    cr_assert(r && r->type == REDIS_REPLY_STATUS, "AUTH %s", user);
    freeReplyObject(r);
    return c;
}

static void assert_refused(redisReply *r, const char *what)
{
    cr_assert(r, "%s: no reply", what);
    cr_assert_eq(r->type, REDIS_REPLY_ERROR, "%s was allowed", what);
    cr_assert(bl_acl_denied(r->str), "%s: not an ACL refusal: %s", what, r->str);
    freeReplyObject(r);
}

Test(acl, a_confined_user_cannot_touch_other_keys)
{
    char rules[2048];
    rules_for(rules, sizeof rules, "team_a", 0);
    set_user("a", rules);
    freeReplyObject(rs_cmd(&srv, "SET victim precious"));
    freeReplyObject(rs_cmd(&srv, "SET team_b:ebay:1 theirs"));
    /* ...and in database 1, where the managers below work. */
    redisContext *d1 = rs_connect(&srv);
    freeReplyObject(redisCommand(d1, "SELECT 1"));
    freeReplyObject(redisCommand(d1, "SET team_b:ebay:2 theirs"));
    redisContext *c = login("a");

    /* Each script of bidlock, given keys outside the prefix. */
    const char *k[] = {"victim", "team_b:ebay:1", "{team_b:ebay:1}:q", "team_b::q:ebay:1"};
    for (int s = 0; s < BL_SCRIPT_COUNT; s++) {
        const char *argv[] = {"EVAL", bl_scripts[s].body, "4", k[0], k[1], k[2], k[3], "",
                              "1000", "1000", "1000", "0", "0", "0"};
        size_t lens[14];
        for (int i = 0; i < 14; i++)
            lens[i] = strlen(argv[i]);
        char what[64];
        snprintf(what, sizeof what, "the %s script on other keys", bl_scripts[s].name);
        assert_refused(redisCommandArgv(c, 14, argv, lens), what);
    }
    /* ...and plain commands. */
    assert_refused(redisCommand(c, "GET victim"), "GET victim");
    assert_refused(redisCommand(c, "UNLINK victim"), "UNLINK victim");
    assert_refused(redisCommand(c, "SET team_b:ebay:1 mine"), "SET team_b:ebay:1");
    assert_refused(redisCommand(c, "EVAL %s 0", "return redis.call('DEL', 'victim')"),
                   "a script naming no key");
    assert_refused(redisCommand(c, "FLUSHALL"), "FLUSHALL");
    assert_refused(redisCommand(c, "KEYS *"), "KEYS");
    assert_refused(redisCommand(c, "SUBSCRIBE team_b:ebay:1|h"), "SUBSCRIBE to another prefix");
    redisFree(c);
    redisReply *v = rs_cmd(&srv, "GET victim");
    cr_assert(v->type == REDIS_REPLY_STRING && strcmp(v->str, "precious") == 0);
    freeReplyObject(v);
    v = rs_cmd(&srv, "GET team_b:ebay:1");
    cr_assert(v->type == REDIS_REPLY_STRING && strcmp(v->str, "theirs") == 0);
    freeReplyObject(v);

    /* bidlock itself, told another prefix: refused, named, nothing written. */
    who w = {"a", "team_b"};
    bl_manager *m = manager_as(&w, 0);
    rec r = {0};
    acquire(m, "acquire under another prefix", "1", BL_EREDIS, &r);
    cr_assert_eq(r.status, BL_EREDIS, "%s", bl_status_name(r.status));
    cr_assert(strncmp(r.errmsg, "NOPERM", 6) == 0 && strstr(r.errmsg, "~team_b:*"), "%s",
              r.errmsg);
    crec cl = {0};
    cr_assert_eq(bl_cleanup(m, 0, on_cleanup_msg, &cl), BL_OK);
    cr_assert(tl_wait(T, &cl.n, 1, WAIT_MS));
    cr_assert_eq(cl.status, BL_EREDIS, "cleanup of another prefix: %s", bl_status_name(cl.status));
    cr_assert(strstr(cleanup_msg, "NOPERM the ACL user may not access a key of ") &&
                  strstr(cleanup_msg, "~team_b:*"),
              "%s", cleanup_msg);
    close_manager(T, m);
    v = redisCommand(d1, "GET team_b:ebay:2");
    cr_assert(v && v->type == REDIS_REPLY_STRING && strcmp(v->str, "theirs") == 0);
    freeReplyObject(v);
    redisFree(d1);
}

/* ---- --readonly: status and health, nothing that writes ------------------------------ */

Test(acl, the_readonly_user_runs_status_and_health_only)
{
    char out[512];
    cli_setuser("--readonly", out, sizeof out);
    cr_assert(strstr(out, "OK"), "%s", out);
    freeReplyObject(rs_cmd(&srv, "ACL SETUSER bidlock-readonly >" PW));
    /* A lock to look at, taken by the default user. */
    bl_manager *owner = mk_manager(T, srv.port, NULL);
    rec held = acq(owner, "p1", 0, 30000);
    cr_assert_eq(held.status, BL_OK);

    bl_config cfg = quick_cfg(srv.port);
    cfg.username = "bidlock-readonly";
    cfg.password = PW;
    bl_manager *m = mk_manager(T, srv.port, &cfg);
    hrec h = {0};
    cr_assert_eq(bl_health_check(m, on_health, &h), BL_OK);
    cr_assert(tl_wait(T, &h.n, 1, WAIT_MS));
    cr_assert_eq(h.status, BL_OK, "health: %s", h.errmsg);
    irec i = inspect(m, "p1");
    cr_assert(i.held && i.token == held.token, "inspect: held %d token %llu", i.held,
              (unsigned long long)i.token);

    rec a = acq(m, "p2", 0, 30000);
    cr_assert_eq(a.status, BL_EREDIS, "acquire as the readonly user: %s", bl_status_name(a.status));
    cr_assert(strncmp(a.errmsg, "NOPERM", 6) == 0 && names(a.errmsg, "SET"), "%s", a.errmsg);
    crec c = {0};
    cr_assert_eq(bl_cleanup(m, 0, on_cleanup, &c), BL_OK);
    cr_assert(tl_wait(T, &c.n, 1, WAIT_MS));
    cr_assert_eq(c.status, BL_EREDIS);
    cr_assert(!rs_exists(&srv, "bid_lock:ebay:p2"), "the readonly user wrote a lock");
    cr_assert(rs_exists(&srv, "bid_lock:ebay:p1"), "the readonly user's cleanup removed a lock");
    close_manager(T, m);
    cr_assert_eq(rel(held.lock), BL_OK);
    close_manager(T, owner);
}

/* ---- the messages, from each server's own words ----------------------------------------- */

Test(acl_msg, script_refusals_are_named)
{
    char buf[256];
    /* Redis 7.0 does not name the command inside a script: the line does. */
    const char *redis = "ERR The user executing the script can't run this command or subcommand "
                        "script: 104ae65debf45156ded1e8e613705534c8e62c17, on @user_script:1.";
    cr_assert(bl_acl_denied(redis));
    bl_acl_explain(buf, sizeof buf, redis, "EVALSHA", "extend", bl_scripts[BL_SCRIPT_EXTEND].body,
                   "bid_lock");
    cr_assert_str_eq(buf, "NOPERM the ACL user may not run GET (bidlock's extend script, line 1); "
                          "`bidlock acl` prints the rules bidlock needs");
    /* Valkey 8 names it. */
    const char *valkey = "ERR ACL failure in script: User u has no permissions to run the 'time' "
                         "command script: 104ae65d, on @user_script:1.";
    bl_acl_explain(buf, sizeof buf, valkey, "EVALSHA", "acquire",
                   bl_scripts[BL_SCRIPT_ACQUIRE].body, "bid_lock");
    cr_assert(strstr(buf, "may not run TIME (bidlock's acquire script, line 1)"), "%s", buf);
    const char *key = "ERR The user executing the script can't access at least one of the keys "
                      "mentioned in the command arguments script: fe46, on @user_script:1.";
    bl_acl_explain(buf, sizeof buf, key, "EVALSHA", "acquire", bl_scripts[BL_SCRIPT_ACQUIRE].body,
                   "a*b");
    cr_assert(strstr(buf, "NOPERM the ACL user may not access a key of SET (bidlock's acquire "
                          "script, line 1); it needs ~a\\*b:* ~{a\\*b:*"),
              "%s", buf);
    const char *ch = "ERR ACL failure in script: No permissions to access a channel script: 7992, "
                     "on @user_script:7.";
    bl_acl_explain(buf, sizeof buf, ch, "EVALSHA", "release", bl_scripts[BL_SCRIPT_RELEASE].body,
                   "p");
    cr_assert(strstr(buf, "wake-up channel in PUBLISH (bidlock's release script, line 7); it "
                          "needs &{p:*"),
              "%s", buf);
    const char *vpub = "ERR ACL failure in script: User u has no permissions to run the 'publish' "
                       "command script: 7992, on @user_script:15.";
    bl_acl_explain(buf, sizeof buf, vpub, "EVALSHA", "release", bl_scripts[BL_SCRIPT_RELEASE].body,
                   "p");
    cr_assert(strstr(buf, "NOPERM the ACL user may not run PUBLISH (bidlock's release script, "
                          "line 15)"),
              "%s", buf);
    const char *direct = "NOPERM this user has no permissions to run the 'scan' command";
    bl_acl_explain(buf, sizeof buf, direct, "SCAN", NULL, NULL, "p");
    cr_assert(strstr(buf, "NOPERM the ACL user may not run SCAN (sent by bidlock)"), "%s", buf);
    cr_assert_not(bl_acl_denied("ERR unknown command"));
    cr_assert_not(bl_acl_denied("NOSCRIPT No matching script"));
}

Test(acl_msg, the_rules_are_what_the_scripts_call)
{
    /* Every command a script calls is granted (a script edited without
     * the rules would fail here, not in production). */
    char rules[2048];
    cr_assert(bl_acl_rules(rules, sizeof rules, "p", 0) > 0);
    for (int s = 0; s < BL_SCRIPT_COUNT; s++)
        for (const char *p = bl_scripts[s].body; (p = strstr(p, "call('")); p++) {
            char name[32], grant[40];
            size_t n = strcspn(p + 6, "'");
            cr_assert(n < sizeof name);
            for (size_t i = 0; i < n; i++)
                name[i] = (char)tolower((unsigned char)p[6 + i]);
            name[n] = '\0';
            snprintf(grant, sizeof grant, "+%s", name);
            cr_assert(names(rules, grant + 1) && strstr(rules, grant), "%s script calls %s",
                      bl_scripts[s].name, name);
        }
    char small[16];
    cr_assert_eq(bl_acl_rules(small, sizeof small, "p", 0), 0, "cut rules were returned");
}

/* ---- the command line ------------------------------------------------------------- */

/* Run `bidlock ARGS`; its exit code, stdout in out. */
static int cli(const char *args, char *out, size_t cap)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", BIDLOCK_CLI_PATH, args);
    FILE *p = popen(cmd, "r");
    cr_assert(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(acl_cli, prints_the_rules_and_refuses_bad_input)
{
    char out[16384], want[2200], rules[2048];
    cr_assert_eq(cli("acl --readonly", out, sizeof out), 0, "%s", out);
    rules_for(rules, sizeof rules, "bid_lock", 1);
    snprintf(want, sizeof want,
             "ACL SETUSER bidlock-readonly on resetkeys resetchannels clearselectors %s\n", rules);
    cr_assert(strncmp(out, want, strlen(want)) == 0, "the line is not the rules:\n%s", out);
    cr_assert_eq(cli("acl --user=app1 --prefix=team_a", out, sizeof out), 0, "%s", out);
    cr_assert(strncmp(out, "ACL SETUSER app1 on ", 20) == 0 && strstr(out, " ~team_a:* "), "%s",
              out);
    cr_assert(strstr(out, "bidlock: this keeps the passwords"), "no word about passwords: %s", out);

    struct {
        const char *args, *says;
    } bad[] = {
        {"acl --prefix 'a::b'", "--prefix: key_prefix may not end with ':' or contain '::'"},
        {"acl --prefix ''", "--prefix: key_prefix is empty"},
        {"acl --user 'a b'", "--user 'a b' is not an ACL user name"},
        {"acl --user", "--user needs a value"},
        {"acl --url redis://x", "unknown option '--url' for 'acl'"},
        {"acl extra", "unexpected argument 'extra' for 'acl'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(cli(bad[i].args, out, sizeof out), 64, "%s: %s", bad[i].args, out);
        cr_assert(strstr(out, bad[i].says) && !strstr(out, "ACL SETUSER"), "%s: %s", bad[i].args,
                  out);
    }
    cr_assert_eq(cli("--help", out, sizeof out), 0);
    cr_assert(strstr(out, "bidlock acl     [--prefix P] [--user NAME] [--readonly]"), "%s", out);
    cr_assert_eq(cli("acl --help", out, sizeof out), 0);
    cr_assert(strstr(out, "  acl      Print the ACL SETUSER line"), "%s", out);
}
