/* The scanner's /metrics endpoint (examples/metrics_http.c), scraped with a
 * real HTTP client: the scanner runs as a process (--metrics-port 0
 * --linger) against a private redis-server, curl scrapes it, and the
 * exposition text is parsed line by line - HELP/TYPE, samples, histograms
 * (_bucket{le=...} increasing and cumulative, +Inf == _count, _sum) - and
 * checked against the counts the scanner printed. Waits are for the event
 * (a line in a file, a process exit, a reply) with generous bounds. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "harness.h"

#ifndef BIDLOCK_SCANNER_PATH
#error "meson passes -DBIDLOCK_SCANNER_PATH"
#endif

#define MAX_CLIENTS 16 /* MH_MAX_CLIENTS in examples/metrics_http.h */
#define BOUND_MS 60000 /* generous: CI shares 2 busy cores */

TestSuite(metrics_http, .init = fx_redis_init, .fini = fx_redis_fini, .timeout = 240);

/* ---- the scanner process --------------------------------------------------------- */

typedef struct scanner {
    pid_t pid;
    char out[64], err[64];
    int port; /* of /metrics, read from its stderr */
} scanner;

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert(f, "open %s", path);
    char *buf = NULL;
    size_t cap = 0, n = 0, got;
    do {
        if (n + 4097 > cap) {
            cap = 2 * cap + 8192;
            buf = realloc(buf, cap);
            cr_assert(buf);
        }
        got = fread(buf + n, 1, 4096, f);
        n += got;
    } while (got > 0);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Wait until `path` contains `needle` (at most BOUND_MS); the file's text. */
static char *wait_for_text(const scanner *s, const char *path, const char *needle)
{
    uint64_t end = mono_ms() + BOUND_MS;
    for (;;) {
        char *t = slurp(path);
        if (strstr(t, needle))
            return t;
        int st;
        if (mono_ms() > end || waitpid(s->pid, &st, WNOHANG) == s->pid) {
            char *err = slurp(s->err);
            cr_assert_fail("no '%s' in %s; scanner stderr: %s", needle, path, err);
        }
        free(t);
        usleep(10000);
    }
}

/* Start the scanner with args (NULL-terminated) plus --metrics-port 0, and
 * wait for the address it prints. */
static scanner start_scanner(const char *arg, ...)
{
    const char *argv[48] = {BIDLOCK_SCANNER_PATH};
    int n = 1;
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a && n < 44; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n++] = "--metrics-port";
    argv[n++] = "0";
    argv[n] = NULL;
    scanner s;
    snprintf(s.out, sizeof s.out, "/tmp/bidlock-mh-out-XXXXXX");
    snprintf(s.err, sizeof s.err, "/tmp/bidlock-mh-err-XXXXXX");
    int fo = mkstemp(s.out), fe = mkstemp(s.err);
    cr_assert(fo >= 0 && fe >= 0);
    s.pid = fork();
    cr_assert(s.pid >= 0);
    if (s.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int dn = open("/dev/null", O_RDONLY);
        dup2(dn, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        execv(argv[0], (char *const *)argv);
        _exit(126);
    }
    close(fo);
    close(fe);
    char *err = wait_for_text(&s, s.err, "/metrics\n");
    const char *p = strstr(err, "scanner: metrics on http://");
    cr_assert(p, "stderr: %s", err);
    const char *slash = strstr(p, "/metrics\n"); /* ...:PORT/metrics on that line */
    const char *colon = slash;
    while (colon > p && *colon != ':')
        colon--;
    s.port = atoi(colon + 1);
    cr_assert(s.port > 0, "no port in: %s", p);
    free(err);
    return s;
}

/* SIGTERM it (the end of --linger) and expect exit 0; remove its files. */
static void stop_scanner(scanner *s)
{
    kill(s->pid, SIGTERM);
    uint64_t end = mono_ms() + BOUND_MS;
    int st = 0;
    while (waitpid(s->pid, &st, WNOHANG) != s->pid) {
        if (mono_ms() > end) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
            cr_assert_fail("the scanner did not exit after SIGTERM");
        }
        usleep(10000);
    }
    char *err = slurp(s->err);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "scanner status %d; stderr: %s", st, err);
    free(err);
    unlink(s->out);
    unlink(s->err);
}

/* ---- curl ---------------------------------------------------------------------------- */

/* Run curl with args (NULL-terminated); its stdout, NUL-terminated. */
static char *curl(const char *arg, ...)
{
    const char *argv[32] = {"curl", "-sS", "--max-time", "60"};
    int n = 4;
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a && n < 31; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    int fds[2];
    cr_assert(pipe(fds) == 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fds[1], 1);
        close(fds[0]);
        execvp("curl", (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    cr_assert(buf);
    for (;;) {
        if (len + 4097 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert(buf);
        }
        ssize_t r = read(fds[0], buf + len, 4096);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    close(fds[0]);
    int st;
    waitpid(pid, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 127, "curl is not installed");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "curl exited %d: %s", st, buf);
    return buf;
}

static char *url_of(const scanner *s, const char *path)
{
    static char u[4][128];
    static int k;
    char *b = u[k++ % 4];
    snprintf(b, sizeof u[0], "http://127.0.0.1:%d%s", s->port, path);
    return b;
}

/* The status code curl saw for one request (extra curl args, NULL-terminated). */
static int status_of(const scanner *s, const char *path, const char *arg, ...)
{
    const char *argv[16];
    int n = 0;
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a && n < 10; a = va_arg(ap, const char *))
        argv[n++] = a;
    va_end(ap);
    while (n < 10)
        argv[n++] = NULL;
    char *out = curl("-o", "/dev/null", "-w", "%{http_code}", url_of(s, path), argv[0], argv[1],
                     argv[2], argv[3], argv[4], argv[5], argv[6], argv[7], argv[8], argv[9],
                     (const char *)NULL);
    int code = atoi(out);
    free(out);
    return code;
}

/* ---- the exposition format ------------------------------------------------------------- */

typedef struct family {
    char name[96], type[16];
    int samples;
    /* histograms */
    double last_le, last_bucket, inf_bucket, sum, count;
    int buckets, has_inf, has_sum, has_count;
} family;

typedef struct expo {
    family f[64];
    int n;
} expo;

static family *find(expo *e, const char *name)
{
    for (int i = 0; i < e->n; i++)
        if (!strcmp(e->f[i].name, name))
            return &e->f[i];
    return NULL;
}

static int ends_with(const char *s, const char *suffix, size_t *stem)
{
    size_t n = strlen(s), m = strlen(suffix);
    if (n <= m || strcmp(s + n - m, suffix) != 0)
        return 0;
    *stem = n - m;
    return 1;
}

static double parse_value(const char *v, const char *line)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    cr_assert(end != v && *end == '\0' && errno == 0, "bad sample value in [%s]", line);
    return d;
}

/* Parse and check the whole text; families in e. */
static void parse_exposition(char *text, expo *e)
{
    memset(e, 0, sizeof *e);
    cr_assert(strlen(text) > 0 && text[strlen(text) - 1] == '\n', "text ends with a newline");
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') {
            char kw[8], name[96], rest[256];
            int k = sscanf(line, "# %7s %95s %255[^\n]", kw, name, rest);
            cr_assert(k == 3, "bad comment line [%s]", line);
            if (!strcmp(kw, "HELP"))
                continue;
            cr_assert(!strcmp(kw, "TYPE"), "unknown comment [%s]", line);
            cr_assert(!find(e, name), "TYPE twice for %s", name);
            cr_assert(!strcmp(rest, "counter") || !strcmp(rest, "gauge") ||
                          !strcmp(rest, "histogram"),
                      "bad type [%s]", line);
            cr_assert(e->n < 64);
            family *f = &e->f[e->n++];
            snprintf(f->name, sizeof f->name, "%s", name);
            snprintf(f->type, sizeof f->type, "%.15s", rest);
            f->last_le = -INFINITY;
            continue;
        }
        /* name{labels} value | name value */
        char name[128], labels[128] = "", value[64];
        const char *brace = strchr(line, '{');
        if (brace) {
            cr_assert(sscanf(line, "%127[a-zA-Z0-9_:]{%127[^}]} %63s", name, labels, value) == 3,
                      "bad sample [%s]", line);
        } else {
            cr_assert(sscanf(line, "%127[a-zA-Z0-9_:] %63s", name, value) == 2,
                      "bad sample [%s]", line);
        }
        double v = parse_value(value, line);
        size_t stem;
        family *f = find(e, name);
        if (!f && ends_with(name, "_bucket", &stem)) {
            name[stem] = '\0';
            f = find(e, name);
            cr_assert(f && !strcmp(f->type, "histogram"), "_bucket of no histogram [%s]", line);
            cr_assert(!f->has_inf, "a bucket after +Inf [%s]", line);
            char le[32];
            cr_assert(sscanf(labels, "le=\"%31[^\"]\"", le) == 1, "bucket without le [%s]", line);
            if (!strcmp(le, "+Inf")) {
                f->has_inf = 1;
                f->inf_bucket = v;
            } else {
                double b = parse_value(le, line);
                cr_assert(b > f->last_le, "le not increasing [%s]", line);
                f->last_le = b;
            }
            cr_assert(v >= f->last_bucket, "buckets must not decrease [%s]", line);
            f->last_bucket = v;
            f->buckets++;
        } else if (!f && ends_with(name, "_sum", &stem)) {
            name[stem] = '\0';
            f = find(e, name);
            cr_assert(f && !strcmp(f->type, "histogram"), "_sum of no histogram [%s]", line);
            cr_assert(v >= 0);
            f->sum = v;
            f->has_sum = 1;
        } else if (!f && ends_with(name, "_count", &stem)) {
            name[stem] = '\0';
            f = find(e, name);
            cr_assert(f && !strcmp(f->type, "histogram"), "_count of no histogram [%s]", line);
            f->count = v;
            f->has_count = 1;
        } else {
            cr_assert(f, "sample with no TYPE before it [%s]", line);
            cr_assert(strcmp(f->type, "histogram") != 0, "bare histogram sample [%s]", line);
            cr_assert(!labels[0], "unexpected labels [%s]", line);
            cr_assert(v >= 0 && v == floor(v), "counters and gauges here are whole [%s]", line);
            f->sum = v; /* the value */
        }
        f->samples++;
    }
    for (int i = 0; i < e->n; i++) {
        family *f = &e->f[i];
        cr_assert(f->samples > 0, "%s has a TYPE but no sample", f->name);
        if (strcmp(f->type, "histogram") != 0)
            continue;
        cr_assert(f->buckets >= 2 && f->has_inf && f->has_sum && f->has_count,
                  "%s: buckets, +Inf, _sum and _count", f->name);
        cr_assert(f->inf_bucket == f->count, "%s: +Inf bucket %g != _count %g", f->name,
                  f->inf_bucket, f->count);
        cr_assert(f->count > 0 || f->sum == 0, "%s: a sum without samples", f->name);
    }
}

static double metric(expo *e, const char *name)
{
    family *f = find(e, name);
    cr_assert(f, "no %s", name);
    return strcmp(f->type, "histogram") ? f->sum : f->count;
}

static long json_num(const char *text, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = strstr(text, key);
    cr_assert(p, "no %s in %s", name, text);
    return strtol(p + strlen(key), NULL, 10);
}

/* ---- tests ----------------------------------------------------------------------------- */

Test(metrics_http, a_scrape_parses_and_matches_what_the_scanner_did)
{
    char port[16];
    snprintf(port, sizeof port, "%d", srv.port);
    scanner s = start_scanner("--port", port, "--postings", "60", "--inflight", "4",
                              "--think-ms", "2", "--quiet", "--linger", "--name", "mh",
                              (const char *)NULL);
    /* While it scans: a scrape answers and parses (the figures move). */
    char *live = curl(url_of(&s, "/metrics"), (const char *)NULL);
    expo e;
    parse_exposition(live, &e);
    free(live);

    char *out = wait_for_text(&s, s.out, "\"locked\":true}\n"); /* the feed is done */
    char *hdr = curl("-D", "-", "-o", "/dev/null", url_of(&s, "/metrics"), (const char *)NULL);
    cr_assert(strncmp(hdr, "HTTP/1.1 200 OK\r\n", 17) == 0, "status line: %s", hdr);
    cr_assert(strstr(hdr, "\r\nContent-Type: text/plain; version=0.0.4\r\n"), "%s", hdr);
    cr_assert(strstr(hdr, "\r\nConnection: close\r\n"), "%s", hdr);
    cr_assert(strstr(hdr, "\r\nContent-Length: "), "%s", hdr);
    free(hdr);

    char *body = curl(url_of(&s, "/metrics?x=1"), (const char *)NULL);
    parse_exposition(body, &e);
    long seen = json_num(out, "seen"), bids = json_num(out, "bids"),
         passed = json_num(out, "passed"), already = json_num(out, "already_bid"),
         done = json_num(out, "done");
    cr_assert_eq(seen, 60);
    cr_assert_eq(metric(&e, "bidlock_acquire_requests_total"), (double)seen);
    cr_assert_eq(metric(&e, "bidlock_acquired_total"), (double)(bids + passed + already));
    cr_assert_eq(metric(&e, "bidlock_done_total"), (double)done);
    cr_assert_eq(json_num(out, "errors"), 0, "%s", out);
    /* Every lock was given back: released, or found expired (not held). */
    double given_back =
        metric(&e, "bidlock_releases_total") + metric(&e, "bidlock_not_held_total");
    cr_assert_eq(given_back, (double)(bids + passed + already));
    cr_assert_eq(metric(&e, "bidlock_locks_held"), 0);
    cr_assert_eq(metric(&e, "bidlock_acquire_seconds"), metric(&e, "bidlock_acquired_total"),
                 "one acquire latency sample per lock acquired");
    cr_assert_eq(metric(&e, "bidlock_release_seconds"), given_back,
                 "one release latency sample per release answered");
    cr_assert(find(&e, "bidlock_acquire_seconds")->sum > 0);
    free(body);
    free(out);
    stop_scanner(&s);
}

/* --instances K: one scrape target, the K managers' figures added up. */
Test(metrics_http, the_instances_of_one_process_are_summed)
{
    scanner s = start_scanner("--memory", "--instances", "3", "--postings", "40", "--quiet",
                              "--linger", (const char *)NULL);
    char *out = wait_for_text(&s, s.out, "{\"store\":\"memory\"");
    long seen = 0, decided = 0;
    int lines = 0;
    for (const char *p = strstr(out, "{\"instance\""); p; p = strstr(p + 1, "{\"instance\"")) {
        seen += json_num(p, "seen");
        decided += json_num(p, "bids") + json_num(p, "passed") + json_num(p, "already_bid");
        cr_assert_eq(json_num(p, "errors"), 0, "%s", out);
        lines++;
    }
    cr_assert_eq(lines, 3, "%s", out);
    cr_assert_eq(decided, 40, "each posting decided once: %s", out);
    char *body = curl(url_of(&s, "/metrics"), (const char *)NULL);
    expo e;
    parse_exposition(body, &e);
    cr_assert_eq(metric(&e, "bidlock_acquire_requests_total"), (double)seen);
    cr_assert_eq(metric(&e, "bidlock_acquired_total"), (double)decided);
    cr_assert_eq(metric(&e, "bidlock_acquire_seconds"), (double)decided);
    double given_back =
        metric(&e, "bidlock_releases_total") + metric(&e, "bidlock_not_held_total");
    cr_assert_eq(given_back, (double)decided);
    cr_assert_eq(metric(&e, "bidlock_release_seconds"), given_back);
    /* Every histogram is summed, also one a later version adds (hold time). */
    if (find(&e, "bidlock_hold_seconds"))
        cr_assert_eq(metric(&e, "bidlock_hold_seconds"), given_back);
    free(body);
    free(out);
    stop_scanner(&s);
}

Test(metrics_http, other_paths_methods_and_bad_requests)
{
    scanner s = start_scanner("--memory", "--postings", "5", "--quiet", "--linger",
                              (const char *)NULL);
    cr_assert_eq(status_of(&s, "/metrics", (const char *)NULL), 200);
    cr_assert_eq(status_of(&s, "/", (const char *)NULL), 404);
    cr_assert_eq(status_of(&s, "/metricsx", (const char *)NULL), 404);
    cr_assert_eq(status_of(&s, "/metrics", "-X", "POST", "-d", "x=1", (const char *)NULL), 405);
    cr_assert_eq(status_of(&s, "/metrics", "-X", "DELETE", (const char *)NULL), 405);
    char *h = curl("-D", "-", "-o", "/dev/null", "-X", "PUT", url_of(&s, "/metrics"),
                   (const char *)NULL);
    cr_assert(strstr(h, "405 Method Not Allowed\r\n") && strstr(h, "\r\nAllow: GET, HEAD\r\n"),
              "%s", h);
    free(h);
    /* HEAD: the headers of a GET, no body. */
    h = curl("-I", url_of(&s, "/metrics"), (const char *)NULL);
    cr_assert(strncmp(h, "HTTP/1.1 200 OK\r\n", 17) == 0 && strstr(h, "version=0.0.4"), "%s", h);
    cr_assert(strstr(h, "\r\n\r\n") && strstr(h, "\r\n\r\n")[4] == '\0', "HEAD has a body: %s",
              h);
    free(h);
    /* A request head over the bound (8 KiB). */
    char big[9100] = "X-Big: ";
    memset(big + 7, 'a', 9000);
    big[9007] = '\0';
    cr_assert_eq(status_of(&s, "/metrics", "-H", big, (const char *)NULL), 431);
    stop_scanner(&s);
}

/* A raw client on 127.0.0.1:port. */
static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect: %s", strerror(errno));
    return fd;
}

/* Read until EOF, at most BOUND_MS; the text. */
static char *raw_read_all(int fd)
{
    static char buf[65536];
    size_t n = 0;
    uint64_t end = mono_ms() + BOUND_MS;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)(end - mono_ms());
        cr_assert(left > 0 && poll(&p, 1, left) == 1, "no answer in %d ms", BOUND_MS);
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        cr_assert(r >= 0, "read: %s", strerror(errno));
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return buf;
}

Test(metrics_http, stalled_clients_do_not_block_the_loop_and_clients_are_bounded)
{
    scanner s = start_scanner("--memory", "--postings", "5", "--quiet", "--linger",
                              (const char *)NULL);
    /* MAX_CLIENTS clients that send half a request and stall. */
    int idle[MAX_CLIENTS];
    for (int i = 0; i < MAX_CLIENTS - 1; i++) {
        idle[i] = raw_connect(s.port);
        cr_assert(write(idle[i], "GET /metr", 9) == 9);
    }
    /* One slot left: a scrape still gets through while they stall. */
    char *body = curl(url_of(&s, "/metrics"), (const char *)NULL);
    cr_assert(strstr(body, "# TYPE bidlock_acquired_total counter\n"));
    free(body);
    idle[MAX_CLIENTS - 1] = raw_connect(s.port);
    cr_assert(write(idle[MAX_CLIENTS - 1], "GET /metr", 9) == 9);
    /* All slots taken: a further client waits in the backlog, unanswered.
     * (A busy machine only makes this pass more slowly. The one way a
     * correct server answers it is having dropped a stalled client after
     * MH_IDLE_S: then one of them is at EOF, and that is accepted.) */
    int extra = raw_connect(s.port);
    const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    cr_assert(write(extra, req, strlen(req)) == (ssize_t)strlen(req));
    struct pollfd p = {.fd = extra, .events = POLLIN};
    if (poll(&p, 1, 300) != 0) {
        int dropped = 0;
        for (int i = 0; i < MAX_CLIENTS && !dropped; i++) {
            struct pollfd q = {.fd = idle[i], .events = POLLIN};
            char c;
            dropped = poll(&q, 1, 0) == 1 && read(idle[i], &c, 1) <= 0;
        }
        cr_assert(dropped, "answered beyond %d clients", MAX_CLIENTS);
    }
    /* A stalled client leaves: its slot frees, and the waiting client is answered. */
    close(idle[0]);
    char *got = raw_read_all(extra);
    cr_assert(strncmp(got, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", got);
    cr_assert(strstr(got, "\r\n\r\n# HELP bidlock_"), "%s", got);
    close(extra);
    /* A request that comes in pieces is answered once its head is complete. */
    int slow = raw_connect(s.port);
    const char *parts[] = {"GET /met", "rics HTTP/1.1\r\n", "Host: x\r\n", "\r\n"};
    for (int i = 0; i < 4; i++)
        cr_assert(write(slow, parts[i], strlen(parts[i])) == (ssize_t)strlen(parts[i]));
    cr_assert(strncmp(raw_read_all(slow), "HTTP/1.1 200 OK\r\n", 17) == 0);
    close(slow);
    /* Garbage is a 400, not a hang. */
    int bad = raw_connect(s.port);
    cr_assert(write(bad, "hello\r\n\r\n", 9) == 9);
    cr_assert(strncmp(raw_read_all(bad), "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
    close(bad);
    for (int i = 1; i < MAX_CLIENTS; i++)
        close(idle[i]);
    stop_scanner(&s);
}

Test(metrics_http, loopback_addresses_only)
{
    const char *bad[] = {"0.0.0.0", "::", "192.0.2.1", "localhost", NULL};
    for (int i = 0; bad[i]; i++) {
        const char *argv[] = {BIDLOCK_SCANNER_PATH, "--memory", "--postings", "1",
                              "--metrics-port", "0", "--metrics-addr", bad[i], NULL};
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            int dn = open("/dev/null", O_RDWR);
            dup2(dn, 1);
            dup2(dn, 2);
            execv(argv[0], (char *const *)argv);
            _exit(126);
        }
        int st;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 64, "--metrics-addr %s: status %d", bad[i],
                  st);
    }
    /* 127.0.0.2 is loopback too (127.0.0.0/8). */
    scanner s = start_scanner("--memory", "--postings", "3", "--quiet", "--linger",
                              "--metrics-addr", "127.0.0.2", (const char *)NULL);
    char u[64];
    snprintf(u, sizeof u, "http://127.0.0.2:%d/metrics", s.port);
    char *body = curl(u, (const char *)NULL);
    cr_assert(strstr(body, "bidlock_acquired_total 3\n"), "%s", body);
    free(body);
    stop_scanner(&s);
}
