/* args.c - the command line of the `bidlock` command, and its --help. */
#include <stdio.h>
#include <string.h>
#include <sysexits.h>

#include "tool.h"

static const char usage_text[] =
    "Usage:\n"
    "  bidlock run [--url URL] [--wait SECONDS] [--ttl MS] [--prefix P]\n"
    "              [--min-replicas N|auto] [--done] [TLS]\n"
    "              MARKETPLACE POSTING [MARKETPLACE POSTING...] -- COMMAND [ARG...]\n"
    "  bidlock status  [--url URL] [--prefix P] [TLS] MARKETPLACE POSTING\n"
    "  bidlock health  [--url URL] [TLS]\n"
    "  bidlock cleanup [--url URL] [--prefix P] [TLS]\n"
    "  bidlock locks   [--url URL] [--prefix P] [--longest N] [--json] [TLS]\n"
    "  bidlock acl     [--prefix P] [--user NAME] [--readonly]\n"
    "  bidlock --help | --version\n"
    "  TLS: [--tls] [--cacert FILE] [--cacertdir DIR] [--cert FILE --key FILE]\n"
    "       [--sni NAME] [--insecure]\n";

static const char help_text[] =
    "\n"
    "Distributed locks on Redis, one per (MARKETPLACE, POSTING): like flock(1),\n"
    "but across machines. The lock is the Redis key PREFIX:MARKETPLACE:POSTING.\n"
    "\n"
    "Commands\n"
    "  run      Acquire the lock, waiting up to --wait seconds; run COMMAND while\n"
    "           holding it (the lease is renewed every TTL/3 while it runs);\n"
    "           release it when COMMAND exits; exit with COMMAND's status.\n"
    "           COMMAND's environment gets:\n"
    "             BIDLOCK_KEY     the lock's key\n"
    "             BIDLOCK_HOLDER  this holder's id, HOSTNAME:PID:UUID\n"
    "             BIDLOCK_TOKEN   the fencing token (decimal): it grows with every\n"
    "                             acquisition of this lock, so a store that rejects\n"
    "                             a token lower than the last one it saw stops a\n"
    "                             holder that was paused past its TTL\n"
    "             BIDLOCK_KEYS, BIDLOCK_TOKENS  every posting's key and token,\n"
    "                             space-separated, in the order given\n"
    "           Several MARKETPLACE POSTING pairs (up to 32) are locked all or\n"
    "           none (a bundle bid): COMMAND runs once every one is held; --done\n"
    "           marks them all. With more than one pair, \"--\" before COMMAND is\n"
    "           required.\n"
    "           SIGINT, SIGTERM and SIGHUP sent to bidlock are passed on to COMMAND;\n"
    "           the lock is released once COMMAND has exited. If the lock is lost\n"
    "           while COMMAND runs (renewal refused, or Redis unreachable until the\n"
    "           TTL ran out), COMMAND gets SIGTERM (SIGKILL 10 s later) and bidlock\n"
    "           exits 70. A release Redis does not answer is given up after the\n"
    "           connect timeout + 5 s (the lock then expires with its TTL).\n"
    "  status   Print the lock's state as one JSON object:\n"
    "           {\"key\":\"...\",\"held\":true|false,\"holder\":\"...\"|null,\n"
    "            \"pttl_ms\":N|null,\"done\":true|false}\n"
    "  health   PING Redis; print the round-trip time (on a cluster: every\n"
    "           master, with its slots).\n"
    "  cleanup  Delete every lock under the prefix, whoever holds it (done\n"
    "           markers and fencing counters stay); print how many.\n"
    "  locks    List the locks held under the prefix, by every holder (every\n"
    "           master of a cluster), the longest held first: how long held,\n"
    "           the TTL left, the token, the holder, the key; --longest N shows\n"
    "           the N longest (default 20, 0 = all), --json one JSON object.\n"
    "           Read with SCAN, never KEYS; held time comes from the fencing\n"
    "           token (the server's time at the grant).\n"
    "  acl      Print the ACL SETUSER line (for redis-cli or valkey-cli) that\n"
    "           grants user NAME (--user, default bidlock, or bidlock-readonly)\n"
    "           exactly what bidlock needs under the prefix: its commands, keys\n"
    "           PREFIX:* and {PREFIX:*, wake-up channels likewise. --readonly:\n"
    "           only what status and health need. It sets permissions and keeps\n"
    "           passwords: add one to a new user (ACL SETUSER NAME >PASSWORD).\n"
    "           Connects nowhere.\n"
    "\n"
    "Options\n"
    "  --url URL       redis://[[USER]:PASSWORD@]HOST[:PORT][/DB],\n"
    "                  rediss://... (the same, over TLS),\n"
    "                  unix:///PATH/TO/SOCKET[?db=N] or\n"
    "                  redis-sentinel://[[USER]:PASSWORD@]HOST[:PORT]\n"
    "                                   [,HOST[:PORT]...][/DB]#NAME or\n"
    "                  redis-cluster://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]\n"
    "                  (seed nodes of a Redis Cluster; any one that answers will do)\n"
    "                  (Sentinels, port 26379 by default, asked for the master NAME;\n"
    "                  USER/PASSWORD are the master's, the Sentinels' own come from\n"
    "                  REDIS_SENTINEL_USERNAME/REDIS_SENTINEL_PASSWORD). HOST must be\n"
    "                  an IP address or localhost. Without --url the connection comes\n"
    "                  from the environment, exactly as the library reads it:\n"
    "                  REDIS_URL, else REDIS_HOST, REDIS_PORT, REDIS_DB,\n"
    "                  REDIS_USERNAME, REDIS_PASSWORD; REDIS_SENTINEL_*,\n"
    "                  BIDLOCK_MIN_REPLICAS and BIDLOCK_REPLICA_TIMEOUT_MS;\n"
    "                  USE_REDIS_LOCKS and BIDLOCK_ENV/ENV choose the backend\n"
    "                  (default: Redis on 127.0.0.1:6379).\n"
    "  --wait SECONDS  How long run waits for a busy lock; decimals allowed\n"
    "                  (0.5). 0 = try once. Default 10.\n"
    "  --ttl MS        Lease length in milliseconds (3 .. 30 days). Default 30000.\n"
    "                  Renewed while COMMAND runs; if bidlock dies, others wait at\n"
    "                  most this long.\n"
    "  --prefix P      Key prefix. Default bid_lock.\n"
    "  --user NAME     acl: the ACL user name.   --readonly  acl: status/health only.\n"
    "  --min-replicas N|auto\n"
    "                  The lock counts only once N replicas (auto: those connected)\n"
    "                  acknowledge it (WAIT). Default: auto with a redis-sentinel://\n"
    "                  or redis-cluster:// URL, else 0 (off). A grant they did not acknowledge in\n"
    "                  time is given back (exit 69 if the wait runs out so).\n"
    "  --tls           Talk TLS to Redis (and to the Sentinels); a rediss:// URL\n"
    "                  does so by itself. The server's certificate chain and host\n"
    "                  name (IP address SANs for an IP) are verified. Also from\n"
    "                  the environment: REDIS_TLS, REDIS_TLS_CA_FILE, ...\n"
    "  --cacert FILE   Trust the CA certificates in FILE (PEM) instead of the\n"
    "                  system trust store.\n"
    "  --cacertdir DIR Trust the CA certificates in DIR (hashed, c_rehash).\n"
    "  --cert FILE     Client certificate (PEM), for tls-auth-clients yes; with\n"
    "  --key FILE      its private key (PEM).\n"
    "  --sni NAME      The name the certificate must be for, also sent as SNI\n"
    "                  (default: the URL's host).\n"
    "  --insecure      Do not verify the server's certificate at all (still\n"
    "                  encrypted, but anyone in the path can pose as the server):\n"
    "                  for testing only; not with --cacert/--cacertdir.\n"
    "  --done          When COMMAND exits 0, mark the posting done (in the same\n"
    "                  atomic step as the release): later runs on it, from any\n"
    "                  machine, do not run COMMAND; they say so and exit 0.\n"
    "                  Markers last 7 days.\n"
    "  -h, --help      This text.   --version  The version.\n"
    "\n"
    "Exit status\n"
    "  0..   COMMAND's own status (128+N if a signal N ended it); 0 when the\n"
    "        posting was already done and COMMAND was not run\n"
    "  64    bad usage or invalid input (empty id, ':' in MARKETPLACE, whitespace,\n"
    "        malformed URL or environment, bad number)\n"
    "  69    Redis unavailable (unreachable, refused, or it did not answer), or\n"
    "        too few replicas acknowledged the lock (--min-replicas)\n"
    "  70    the lock was lost while COMMAND ran, or was gone when it exited\n"
    "  71    out of memory, or COMMAND could not be started (fork failed)\n"
    "  75    lock not acquired within --wait (held by someone else)\n"
    "  126/127  COMMAND not executable / not found\n"
    "Errors are one line on stderr, starting with \"bidlock: \".\n"
    "\n"
    "Examples\n"
    "  bidlock run --wait 30 ebay 42 -- ./place-bid 42\n"
    "  bidlock run --done --wait 0 ebay 42 -- ./place-bid 42   # once, ever\n"
    "  REDIS_URL=redis://bidlock-readonly:PASSWORD@10.0.0.5:6379/2 bidlock status ebay 42\n"
    "  bidlock acl --prefix bid_lock | redis-cli -h 10.0.0.5   # then add a password\n";

int print_help(void)
{
    printf("%s%s", usage_text, help_text);
    return 0;
}

/* SECONDS: digits with an optional fraction ("10", "2.5", ".5", "0"); no
 * sign or exponent. Rounded up to whole ms, so 0.0001 still waits. */
static int parse_seconds(const char *s, int64_t *ms)
{
    int64_t whole = 0, frac = 0;
    int digits = 0, scale = 100, rest = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++, digits++)
        if ((whole = whole * 10 + (*p - '0')) > MAX_WAIT_MS / 1000)
            return -2;
    if (*p == '.')
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (scale)
                frac += (*p - '0') * scale, scale /= 10;
            else
                rest |= *p != '0';
        }
    if (*p || digits == 0)
        return -1;
    *ms = whole * 1000 + frac + (rest ? 1 : 0);
    return *ms > MAX_WAIT_MS ? -2 : 0;
}

static int parse_ms(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    int64_t v = 0;
    if (!*s)
        return -1;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if ((v = v * 10 + (*p - '0')) > hi)
            return -2;
    }
    if (v < lo)
        return -2;
    *out = v;
    return 0;
}

/* Returns -1 to go on, or the exit code (0 after --help/--version). */
int parse_args(app *a, int argc, char **argv)
{
    if (argc < 2)
        return usage_error("no command given: run, status, health, cleanup, locks or acl");
    const char *s = argv[1];
    if (!strcmp(s, "--help") || !strcmp(s, "-h") || !strcmp(s, "help")) {
        printf("%s%s", usage_text, help_text);
        return 0;
    }
    if (!strcmp(s, "--version")) {
        printf("bidlock %s\n", BIDLOCK_VERSION);
        return 0;
    }
    int npos;
    if (!strcmp(s, "run"))
        a->sub = SUB_RUN, npos = 2;
    else if (!strcmp(s, "status"))
        a->sub = SUB_STATUS, npos = 2;
    else if (!strcmp(s, "health"))
        a->sub = SUB_HEALTH, npos = 0;
    else if (!strcmp(s, "cleanup"))
        a->sub = SUB_CLEANUP, npos = 0;
    else if (!strcmp(s, "locks"))
        a->sub = SUB_LOCKS, npos = 0;
    else
        return usage_error(
            "unknown command '%s': expected run, status, health, cleanup, locks or acl", s);

    /* run takes several MARKETPLACE POSTING pairs (a group, all or
     * nothing) when "--" ends them; without "--", COMMAND starts after the
     * first pair. */
    int dashes = 0;
    for (int k = 2; k < argc && !dashes; k++)
        dashes = !strcmp(argv[k], "--");
    if (a->sub == SUB_RUN && dashes)
        npos = 2 * BL_GROUP_MAX;
    const char *pos[2 * BL_GROUP_MAX] = {NULL}, *wait = NULL, *ttl = NULL, *replicas = NULL,
               *longest = NULL;
    int n = 0, i = 2;
    for (; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--")) {
            i++;
            break;
        }
        if (arg[0] == '-' && arg[1]) {
            if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
                printf("%s%s", usage_text, help_text);
                return 0;
            }
            if (!strcmp(arg, "--done") && a->sub == SUB_RUN) {
                a->done_flag = 1;
                continue;
            }
            if (!strcmp(arg, "--tls") || !strcmp(arg, "--insecure")) {
                *(arg[2] == 't' ? &a->tls : &a->insecure) = 1;
                continue;
            }
            if (!strcmp(arg, "--json") && a->sub == SUB_LOCKS) {
                a->json = 1;
                continue;
            }
            /* --name VALUE or --name=VALUE */
            static const char *const names[] = {"--url", "--prefix", "--wait", "--ttl",
                                                "--min-replicas", "--longest", "--cacert",
                                                "--cacertdir", "--cert", "--key", "--sni"};
            enum { NNAMES = sizeof names / sizeof names[0] };
            const char *val = NULL;
            int which = -1;
            for (int k = 0; k < NNAMES; k++) {
                size_t len = strlen(names[k]);
                if (!strncmp(arg, names[k], len) && (arg[len] == '\0' || arg[len] == '=')) {
                    which = k;
                    val = arg[len] == '=' ? arg + len + 1 : NULL;
                }
            }
            int allowed = which == 0 || (which == 1 && a->sub != SUB_HEALTH) ||
                          (which >= 2 && which <= 4 && a->sub == SUB_RUN) ||
                          (which == 5 && a->sub == SUB_LOCKS) || which >= 6;
            if (which < 0 || !allowed)
                return usage_error("unknown option '%s' for '%s'", arg, s);
            if (!val) {
                if (i + 1 >= argc)
                    return usage_error("%s needs a value", names[which]);
                val = argv[++i];
            }
            const char **slot[] = {&a->url,    &a->prefix,    &wait,    &ttl,    &replicas, &longest,
                                   &a->cacert, &a->cacertdir, &a->cert, &a->key, &a->sni};
            *slot[which] = val;
            continue;
        }
        if (n == npos) {
            if (dashes && a->sub == SUB_RUN)
                return usage_error("at most %d MARKETPLACE POSTING pairs", BL_GROUP_MAX);
            break; /* run: COMMAND without "--" */
        }
        pos[n++] = arg;
    }
    if (n < (npos > 2 ? 2 : npos))
        return usage_error("'%s' needs MARKETPLACE and POSTING", s);
    if (n % 2)
        return usage_error("'%s' needs MARKETPLACE POSTING pairs: '%s' has no POSTING", s,
                           pos[n - 1]);
    if (a->sub == SUB_RUN) {
        if (i >= argc)
            return usage_error("no COMMAND: bidlock run MARKETPLACE POSTING -- COMMAND [ARG...]");
        a->command = argv + i;
    } else if (i < argc) {
        return usage_error("unexpected argument '%s' for '%s'", argv[i], s);
    }
    a->mp = pos[0];
    a->posting = pos[1];
    a->npairs = (size_t)n / 2;
    for (size_t k = 0; k < a->npairs; k++)
        a->pairs[k] = (bl_posting){pos[2 * k], pos[2 * k + 1]};
    a->wait_ms = 10000;
    a->ttl_ms = DEFAULT_TTL_MS;
    int rc;
    if (wait && (rc = parse_seconds(wait, &a->wait_ms)) != 0)
        return usage_error("--wait '%s' is %s", wait,
                           rc == -1 ? "not a number of seconds (like 10, 2.5 or 0)"
                                    : "more than 30 days");
    if (ttl && (rc = parse_ms(ttl, 3, MAX_WAIT_MS, &a->ttl_ms)) != 0)
        return usage_error("--ttl '%s' is %s", ttl,
                           rc == -1 ? "not a whole number of milliseconds"
                                    : "out of range (3 ms .. 30 days)");
    a->longest = 20;
    if (longest && (rc = parse_ms(longest, 0, 1000000, &a->longest)) != 0)
        return usage_error("--longest '%s' is %s", longest,
                           rc == -1 ? "not a whole number" : "out of range (0 .. 1000000)");
    a->min_replicas = BL_REPLICAS_DEFAULT;
    int64_t nrep;
    if (replicas && !strcmp(replicas, "auto"))
        a->min_replicas = BL_REPLICAS_AUTO;
    else if (replicas && (rc = parse_ms(replicas, 0, 64, &nrep)) != 0)
        return usage_error("--min-replicas '%s' is %s", replicas,
                           rc == -1 ? "not a number or 'auto'" : "out of range (0 .. 64)");
    else if (replicas)
        a->min_replicas = (int)nrep;
    return -1;
}
