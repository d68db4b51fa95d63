/* tls.c - TLS under hiredis 0.14 (design in tls.h), and bl_ctx_open.
 *
 * A relay, per connection:
 *   hiredis <-unix-> pfd [relay: out buffer ->, <- in buffer] SSL on tfd <-TCP-> Redis
 * States: CONNECTING (TCP), HANDSHAKE, OPEN, DRAIN (TLS side gone: the unix
 * socket is half-closed, and what hiredis still writes is read and dropped
 * until it closes), DEAD (all closed). Every SSL call runs from an io
 * watch callback on the host loop; none blocks. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "ids.h"
#include "tls.h"
#include "url.h"

#define RELAY_BUF 32768 /* per direction; a TLS record is at most 16 KB */
#define PUMP_ROUNDS 64  /* bound one callback's work; the loop comes back */

struct bl_tls_ctx {
    SSL_CTX *ssl;
    int insecure;
};

enum relay_state { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DRAIN, ST_DEAD };
enum { W_NONE = 0, W_READ = 1, W_WRITE = 2 }; /* what an SSL call waits for */

struct bl_tls {
    bl_loop loop;
    enum relay_state state;
    int owned, busy, ready;
    int pfd, tfd;
    bl_io *pio, *tio;
    SSL *ssl;
    int hs_want, r_want, w_want; /* W_* per SSL call kind */
    int t_rd, t_wr, p_rd;        /* readiness seen since the last EAGAIN */
    int plain_eof, tls_eof;
    int cert_asked; /* the server asked for a client certificate we do not have */
    size_t out_len, in_len;
    void (*ready_cb)(void *);
    void *ready_arg;
    void (*log)(void *, const char *);
    void *log_arg;
    char peer[INET6_ADDRSTRLEN + 8];
    char name[256];
    char err[BL_ERRMSG_MAX];
    unsigned char out[RELAY_BUF]; /* hiredis -> server, plaintext */
    unsigned char in[RELAY_BUF];  /* server -> hiredis, plaintext */
};

/* ---- configuration ------------------------------------------------------------ */

int bl_tls_wanted(const bl_config *c)
{
    return c->tls || (c->url && strncasecmp(c->url, "rediss://", 9) == 0);
}

static int readable(const char *what, const char *path, int dir, char *why, size_t len)
{
    struct stat st;
    if (!*path)
        return bl_einval(why, len, "%s is empty", what);
    if (stat(path, &st) != 0)
        return bl_einval(why, len, "%s '%s': %s", what, path, strerror(errno));
    if (dir ? !S_ISDIR(st.st_mode) : S_ISDIR(st.st_mode))
        return bl_einval(why, len, "%s '%s' is %sa directory", what, path, dir ? "not " : "");
    if (access(path, dir ? (R_OK | X_OK) : R_OK) != 0)
        return bl_einval(why, len, "%s '%s' is not readable: %s", what, path, strerror(errno));
    return BL_OK;
}

int bl_tls_validate(const bl_config *c, char *why, size_t len)
{
    int on = bl_tls_wanted(c);
    int any = c->tls_ca_file || c->tls_ca_dir || c->tls_cert_file || c->tls_key_file ||
              c->tls_server_name || c->tls_insecure_skip_verify;
    if (c->tls != 0 && c->tls != 1)
        return bl_einval(why, len, "tls must be 0 or 1");
    if (!on && any)
        return bl_einval(why, len, "tls_* settings are given but TLS is off (set tls = 1 or use "
                                   "a rediss:// url)");
    if (!on)
        return BL_OK;
    if (c->tls_insecure_skip_verify != 0 && c->tls_insecure_skip_verify != 1)
        return bl_einval(why, len, "tls_insecure_skip_verify must be 0 or 1");
    int kind = bl_url_kind(c->url);
    if ((c->url && kind == BL_URL_UNIX) || (!c->url && c->unix_path))
        return bl_einval(why, len, "TLS is on but Redis is a unix socket (TLS is for TCP; "
                                   "drop tls or use a rediss:// url)");
    if (c->url && kind == BL_URL_CLUSTER)
        return bl_einval(why, len, "TLS is on, but the Redis Cluster backend does not take it "
                                   "yet (its node connections would be plaintext): drop tls for "
                                   "redis-cluster://");
    if (c->tls_insecure_skip_verify && (c->tls_ca_file || c->tls_ca_dir))
        return bl_einval(why, len, "tls_insecure_skip_verify turns verification off, so "
                                   "tls_ca_file/tls_ca_dir would be unused: give one or the other");
    if (c->tls_key_file && !c->tls_cert_file)
        return bl_einval(why, len, "tls_key_file is set but tls_cert_file is not (a client "
                                   "certificate needs both)");
    if (c->tls_cert_file && !c->tls_key_file)
        return bl_einval(why, len, "tls_cert_file is set but tls_key_file is not (a client "
                                   "certificate needs both)");
    if (c->tls_server_name &&
        (!bl_host_ok(c->tls_server_name, strlen(c->tls_server_name)) ||
         strlen(c->tls_server_name) >= 256))
        return bl_einval(why, len, "tls_server_name is not a host name or IP address");
    if ((c->tls_ca_file && readable("tls_ca_file", c->tls_ca_file, 0, why, len)) ||
        (c->tls_ca_dir && readable("tls_ca_dir", c->tls_ca_dir, 1, why, len)) ||
        (c->tls_cert_file && readable("tls_cert_file", c->tls_cert_file, 0, why, len)) ||
        (c->tls_key_file && readable("tls_key_file", c->tls_key_file, 0, why, len)))
        return BL_EINVAL;
    bl_tls_ctx *ctx = NULL;
    int rc = bl_tls_ctx_new(c, &ctx, why, len);
    bl_tls_ctx_free(ctx);
    return rc == BL_ENOMEM ? BL_OK : rc; /* out of memory now says nothing about the config */
}

/* OpenSSL's reason for the last failure, "" if it left none. */
static const char *ssl_reason(char *buf, size_t len)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    buf[0] = '\0';
    if (last) {
        const char *r = ERR_reason_error_string(last);
        if (r)
            snprintf(buf, len, "%s", r);
        else
            ERR_error_string_n(last, buf, len);
    }
    return buf;
}

/* Without a client certificate configured, OpenSSL asks this when the
 * server requests one: note it (a server with tls-auth-clients yes then
 * drops the connection, in TLS 1.3 after the handshake, often with a reset
 * that loses its alert) and go on without. */
static int no_client_cert(SSL *ssl, X509 **x509, EVP_PKEY **pkey)
{
    (void)x509;
    (void)pkey;
    bl_tls *t = SSL_get_app_data(ssl);
    if (t)
        t->cert_asked = 1;
    return 0;
}

int bl_tls_ctx_new(const bl_config *c, bl_tls_ctx **out, char *why, size_t len)
{
    char r[160];
    *out = NULL;
    bl_tls_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return BL_ENOMEM;
    ERR_clear_error();
    ctx->ssl = SSL_CTX_new(TLS_client_method());
    if (!ctx->ssl) {
        free(ctx);
        return BL_ENOMEM;
    }
    SSL_CTX_set_min_proto_version(ctx->ssl, TLS1_2_VERSION);
    /* The relay may hand SSL_write a buffer that moved (memmove after a
     * partial write) and takes partial writes. */
    SSL_CTX_set_mode(ctx->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Read what the socket has, not one record header and body at a time:
     * one read() for a burst of replies instead of two per record (the
     * relay asks SSL_has_pending before it waits for the socket again). */
    SSL_CTX_set_read_ahead(ctx->ssl, 1);
    ctx->insecure = c->tls_insecure_skip_verify;
    SSL_CTX_set_verify(ctx->ssl, ctx->insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    int bad = 0;
    if (!ctx->insecure) {
        if (c->tls_ca_file || c->tls_ca_dir) {
            if (SSL_CTX_load_verify_locations(ctx->ssl, c->tls_ca_file, c->tls_ca_dir) != 1)
                bad = bl_einval(why, len, "cannot load the CA %s '%s': %s",
                                c->tls_ca_file ? "file" : "dir",
                                c->tls_ca_file ? c->tls_ca_file : c->tls_ca_dir,
                                ssl_reason(r, sizeof r));
        } else if (SSL_CTX_set_default_verify_paths(ctx->ssl) != 1) {
            bad = bl_einval(why, len, "cannot use the system trust store: %s",
                            ssl_reason(r, sizeof r));
        }
    }
    if (!bad && c->tls_cert_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx->ssl, c->tls_cert_file) != 1)
            bad = bl_einval(why, len, "cannot load tls_cert_file '%s': %s", c->tls_cert_file,
                            ssl_reason(r, sizeof r));
        else if (SSL_CTX_use_PrivateKey_file(ctx->ssl, c->tls_key_file, SSL_FILETYPE_PEM) != 1)
            bad = strstr(ssl_reason(r, sizeof r), "mismatch")
                      ? bl_einval(why, len, "tls_key_file '%s' does not match tls_cert_file '%s'",
                                  c->tls_key_file, c->tls_cert_file)
                      : bl_einval(why, len, "cannot load tls_key_file '%s': %s", c->tls_key_file, r);
        else if (SSL_CTX_check_private_key(ctx->ssl) != 1)
            bad = bl_einval(why, len, "tls_key_file '%s' does not match tls_cert_file '%s'",
                            c->tls_key_file, c->tls_cert_file);
    }
    if (!c->tls_cert_file)
        SSL_CTX_set_client_cert_cb(ctx->ssl, no_client_cert);
    ERR_clear_error();
    if (bad) {
        bl_tls_ctx_free(ctx);
        return BL_EINVAL;
    }
    *out = ctx;
    return BL_OK;
}

void bl_tls_ctx_free(bl_tls_ctx *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl); /* relays still alive hold their own reference */
    free(ctx);
}

/* ---- the relay ---------------------------------------------------------------- */

static void relay_cb(void *data, int events);

static void close_fd(const bl_loop *loop, bl_io **io, int *fd)
{
    if (*io)
        loop->io_free(*io);
    *io = NULL;
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* The TLS side goes: a close_notify first when the session was up and the
 * end is ours (best effort, one non-blocking try). */
static void close_tls(bl_tls *t, int notify)
{
    if (t->ssl) {
        if (notify && t->state == ST_OPEN && !t->tls_eof) {
            ERR_clear_error();
            SSL_shutdown(t->ssl);
        }
        SSL_free(t->ssl);
        t->ssl = NULL;
    }
    ERR_clear_error();
    close_fd(&t->loop, &t->tio, &t->tfd);
}

static void kill_all(bl_tls *t, int notify)
{
    if (t->state == ST_DEAD)
        return;
    close_tls(t, notify);
    close_fd(&t->loop, &t->pio, &t->pfd);
    t->state = ST_DEAD;
}

static void maybe_free(bl_tls *t)
{
    if (!t->busy && !t->owned && t->state == ST_DEAD)
        free(t);
}

/* The TLS side failed or ended: keep the reason, half-close the unix
 * socket so that hiredis reads EOF, and drop what it still writes. */
static void fail(bl_tls *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(bl_tls *t, const char *fmt, ...)
{
    if (!t->err[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->err, sizeof t->err, fmt, ap);
        va_end(ap);
        if (t->log)
            t->log(t->log_arg, t->err);
    }
    close_tls(t, 0);
    if (t->state == ST_DEAD)
        return;
    t->state = ST_DRAIN;
    if (t->pfd >= 0)
        shutdown(t->pfd, SHUT_WR);
}

/* Why a handshake failed, in words a person can act on. */
static void handshake_failed(bl_tls *t, int err)
{
    char r[160];
    long v = t->ssl ? SSL_get_verify_result(t->ssl) : X509_V_OK;
    int sys = errno;
    ssl_reason(r, sizeof r);
    if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
        fail(t, "TLS handshake with %s failed: host name mismatch (the certificate is not for "
                "'%s')", t->peer, t->name);
    else if (v != X509_V_OK)
        fail(t, "TLS handshake with %s failed: certificate verify failed: %s", t->peer,
             X509_verify_cert_error_string(v));
    else if (t->cert_asked)
        fail(t, "TLS handshake with %s failed: %s (the server asked for a client certificate "
                "and none is configured: set tls_cert_file and tls_key_file)", t->peer,
             r[0] ? r : "closed by the server");
    else if (r[0])
        fail(t, "TLS handshake with %s failed: %s%s", t->peer, r,
             strstr(r, "wrong version number") ? " (is that port a TLS port?)" : "");
    else if (err == SSL_ERROR_SYSCALL && sys)
        fail(t, "TLS handshake with %s failed: %s", t->peer, strerror(sys));
    else
        fail(t, "TLS handshake with %s failed: the server closed the connection (is that port "
                "a TLS port?)", t->peer);
}

static void session_failed(bl_tls *t, int err)
{
    char r[160];
    int sys = errno;
    ssl_reason(r, sizeof r);
    if (t->cert_asked)
        fail(t, "TLS connection to %s failed: %s (the server asked for a client certificate "
                "and none is configured: set tls_cert_file and tls_key_file)", t->peer,
             r[0] ? r : sys ? strerror(sys) : "closed by the server");
    else if (r[0])
        fail(t, "TLS connection to %s failed: %s%s", t->peer, r,
             strstr(r, "certificate required")
                 ? " (the server wants a client certificate: tls_cert_file and tls_key_file)"
                 : "");
    else if (err == SSL_ERROR_SYSCALL && sys)
        fail(t, "TLS connection to %s failed: %s", t->peer, strerror(sys));
    else
        fail(t, "TLS connection to %s closed by the server without close_notify", t->peer);
}

static int want_of(int e)
{
    return e == SSL_ERROR_WANT_READ ? W_READ : e == SSL_ERROR_WANT_WRITE ? W_WRITE : W_NONE;
}

static void clear_ready(bl_tls *t, int w)
{
    if (w == W_READ)
        t->t_rd = 0;
    else if (w == W_WRITE)
        t->t_wr = 0;
}

static void start_handshake(bl_tls *t)
{
    int soerr = 0;
    socklen_t l = sizeof soerr;
    if (getsockopt(t->tfd, SOL_SOCKET, SO_ERROR, &soerr, &l) != 0)
        soerr = errno;
    if (soerr) {
        fail(t, "%s", strerror(soerr));
        return;
    }
    t->state = ST_HANDSHAKE;
    t->hs_want = W_NONE;
}

/* One SSL_connect step. */
static void handshake(bl_tls *t)
{
    ERR_clear_error();
    errno = 0;
    int rc = SSL_connect(t->ssl);
    if (rc == 1) {
        t->state = ST_OPEN;
        t->ready = 1;
        t->r_want = t->w_want = W_NONE;
        if (t->ready_cb)
            t->ready_cb(t->ready_arg); /* may release t: busy keeps it */
        return;
    }
    int e = SSL_get_error(t->ssl, rc);
    t->hs_want = want_of(e);
    if (t->hs_want)
        clear_ready(t, t->hs_want);
    else
        handshake_failed(t, e);
}

static int can(const bl_tls *t, int w)
{
    return w == W_NONE || (w == W_READ && t->t_rd) || (w == W_WRITE && t->t_wr);
}

/* Move bytes both ways until nothing moves (or PUMP_ROUNDS). */
static void pump(bl_tls *t)
{
    for (int round = 0; round < PUMP_ROUNDS; round++) {
        int moved = 0;
        /* hiredis -> out */
        if (t->pfd >= 0 && t->p_rd && !t->plain_eof &&
            (t->state == ST_DRAIN || t->out_len < RELAY_BUF)) {
            size_t room = RELAY_BUF - (t->state == ST_DRAIN ? 0 : t->out_len);
            ssize_t n = read(t->pfd, t->out + (t->state == ST_DRAIN ? 0 : t->out_len), room);
            if (n > 0) {
                if (t->state != ST_DRAIN)
                    t->out_len += (size_t)n;
                moved = 1;
                if ((size_t)n < room)
                    t->p_rd = 0; /* level-triggered: the loop says when there is more */
            } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                t->plain_eof = 1; /* hiredis let go */
            } else {
                t->p_rd = 0;
            }
        }
        if (t->plain_eof) {
            kill_all(t, 1);
            return;
        }
        if (t->state == ST_CONNECTING && t->t_wr)
            start_handshake(t);
        if (t->state == ST_HANDSHAKE && can(t, t->hs_want)) {
            handshake(t);
            moved |= t->state != ST_HANDSHAKE;
        }
        if (t->state != ST_OPEN) {
            if (!moved)
                break;
            continue;
        }
        /* out -> server */
        if (t->out_len && can(t, t->w_want)) {
            ERR_clear_error();
            errno = 0;
            int n = SSL_write(t->ssl, t->out, (int)t->out_len);
            if (n > 0) {
                t->out_len -= (size_t)n;
                memmove(t->out, t->out + n, t->out_len);
                t->w_want = W_NONE;
                moved = 1;
            } else {
                int e = SSL_get_error(t->ssl, n);
                t->w_want = want_of(e);
                if (!t->w_want) {
                    session_failed(t, e);
                    continue;
                }
                clear_ready(t, t->w_want);
            }
        }
        /* server -> in */
        if (!t->tls_eof && t->in_len < RELAY_BUF && (can(t, t->r_want) || SSL_has_pending(t->ssl))) {
            ERR_clear_error();
            errno = 0;
            int n = SSL_read(t->ssl, t->in + t->in_len, (int)(RELAY_BUF - t->in_len));
            if (n > 0) {
                size_t asked = RELAY_BUF - t->in_len;
                t->in_len += (size_t)n;
                t->r_want = W_NONE;
                moved = 1;
                if ((size_t)n < asked && !SSL_has_pending(t->ssl)) {
                    /* all it had: the (level-triggered) loop says when there is more,
                     * which saves a read() that would only say EAGAIN */
                    t->r_want = W_READ;
                    t->t_rd = 0;
                }
            } else {
                int e = SSL_get_error(t->ssl, n);
                if (e == SSL_ERROR_ZERO_RETURN) {
                    t->tls_eof = 1; /* close_notify: hand over what came before it */
                    snprintf(t->err, sizeof t->err, "TLS connection to %s closed by the server",
                             t->peer);
                } else if (!(t->r_want = want_of(e))) {
                    session_failed(t, e);
                    continue;
                } else {
                    clear_ready(t, t->r_want);
                }
            }
        }
        /* in -> hiredis */
        if (t->in_len) {
            ssize_t n = write(t->pfd, t->in, t->in_len);
            if (n > 0) {
                t->in_len -= (size_t)n;
                memmove(t->in, t->in + n, t->in_len);
                moved = 1;
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                t->plain_eof = 1;
                continue;
            }
        }
        if (t->tls_eof && !t->in_len) {
            char why[BL_ERRMSG_MAX];
            snprintf(why, sizeof why, "%s", t->err);
            t->err[0] = '\0';
            fail(t, "%s", why);
            continue;
        }
        if (!moved)
            break;
    }
}

static void arm(bl_tls *t)
{
    if (t->state == ST_DEAD)
        return;
    int p = 0, q = 0;
    if (t->state == ST_DRAIN || t->out_len < RELAY_BUF)
        p |= BL_IO_READ;
    if (t->state == ST_OPEN && t->in_len)
        p |= BL_IO_WRITE;
    if (t->state == ST_CONNECTING) {
        q = BL_IO_WRITE;
    } else if (t->state == ST_HANDSHAKE) {
        q = t->hs_want == W_WRITE ? BL_IO_WRITE : BL_IO_READ;
    } else if (t->state == ST_OPEN) {
        if ((!t->tls_eof && t->in_len < RELAY_BUF && t->r_want != W_WRITE) ||
            (t->out_len && t->w_want == W_READ))
            q |= BL_IO_READ;
        if (t->r_want == W_WRITE || (t->out_len && t->w_want == W_WRITE))
            q |= BL_IO_WRITE;
    }
    if (t->pio)
        t->loop.io_set(t->pio, p);
    if (t->tio)
        t->loop.io_set(t->tio, q);
}

/* Both watches share this; data is the relay with the fd's tag in bit 0. */
static void relay_cb(void *data, int events)
{
    bl_tls *t = (bl_tls *)((uintptr_t)data & ~(uintptr_t)1);
    int tls_side = (uintptr_t)data & 1;
    if (t->state == ST_DEAD)
        return;
    t->busy++;
    if (tls_side) {
        t->t_rd |= (events & BL_IO_READ) != 0;
        t->t_wr |= (events & BL_IO_WRITE) != 0;
    } else {
        t->p_rd |= (events & BL_IO_READ) != 0;
    }
    pump(t);
    arm(t);
    t->busy--;
    maybe_free(t);
}

/* The unix pair: see tls.h. Returns the context (not attached) and our end. */
static redisAsyncContext *unix_pair(int *pfd, char *why, size_t len)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp || strlen(tmp) > 60)
        tmp = "/tmp";
    char dir[80], path[96];
    snprintf(dir, sizeof dir, "%s/bidlock-relay-XXXXXX", tmp);
    if (!mkdtemp(dir)) { /* 0700 */
        snprintf(why, len, "TLS relay: mkdtemp in %s: %s", tmp, strerror(errno));
        return NULL;
    }
    snprintf(path, sizeof path, "%s/s", dir);
    redisAsyncContext *ac = NULL;
    int fd = -1;
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 1) != 0) {
        snprintf(why, len, "TLS relay: unix socket: %s", strerror(errno));
        goto out;
    }
    ac = redisAsyncConnectUnix(path);
    if (!ac || ac->err) {
        snprintf(why, len, "TLS relay: %s", ac && ac->errstr[0] ? ac->errstr : "out of memory");
        goto out;
    }
    fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 || cr.pid != getpid()) {
        snprintf(why, len, "TLS relay: the unix pair did not connect (%s)",
                 fd < 0 ? strerror(errno) : "another process");
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
out:
    if (fd < 0 && ac) {
        redisAsyncFree(ac);
        ac = NULL;
    }
    if (lfd >= 0)
        close(lfd);
    unlink(path);
    rmdir(dir);
    *pfd = fd;
    return ac;
}

static int is_ip(const char *s)
{
    unsigned char b[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

/* The TCP socket, connecting. -1 with why. */
static int tcp_start(const char *host, int port, char *why, size_t len)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = SOCK_STREAM;
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0 || !res) {
        snprintf(why, len, "TLS: '%s' is not a numeric address", host);
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, len, "socket: %s", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as hiredis does */
    int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc != 0 && errno != EINPROGRESS) {
        snprintf(why, len, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static bl_tls *relay_new(const bl_ctx_spec *s, int pfd, char *why, size_t len)
{
    bl_tls *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(why, len, "out of memory");
        return NULL;
    }
    t->loop = *s->loop;
    t->pfd = pfd;
    t->tfd = -1;
    t->p_rd = 1;
    t->ready_cb = s->ready;
    t->ready_arg = s->ready_arg;
    t->log = s->log;
    t->log_arg = s->log_arg;
    snprintf(t->peer, sizeof t->peer, strchr(s->host, ':') ? "[%s]:%d" : "%s:%d", s->host,
             s->port);
    snprintf(t->name, sizeof t->name, "%s", s->name ? s->name : s->host);
    t->tfd = tcp_start(s->host, s->port, why, len);
    if (t->tfd < 0)
        goto bad;
    ERR_clear_error();
    t->ssl = SSL_new(s->tls->ssl);
    if (!t->ssl || SSL_set_fd(t->ssl, t->tfd) != 1 || SSL_set_app_data(t->ssl, t) != 1) {
        snprintf(why, len, "out of memory");
        goto bad;
    }
    if (!s->tls->insecure) {
        int ok = is_ip(t->name)
                     ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), t->name) == 1
                     : SSL_set1_host(t->ssl, t->name) == 1;
        if (!ok) {
            snprintf(why, len, "TLS: cannot check the certificate for '%s'", t->name);
            goto bad;
        }
    }
    /* SNI carries names only, never an address (RFC 6066). */
    if (!is_ip(t->name) && SSL_set_tlsext_host_name(t->ssl, t->name) != 1) {
        snprintf(why, len, "TLS: cannot send the server name '%s'", t->name);
        goto bad;
    }
    t->pio = t->loop.io_new(t->loop.impl, t->pfd, relay_cb, t);
    t->tio = t->loop.io_new(t->loop.impl, t->tfd, relay_cb, (void *)((uintptr_t)t | 1));
    if (!t->pio || !t->tio) {
        snprintf(why, len, "out of memory");
        goto bad;
    }
    t->state = ST_CONNECTING;
    arm(t);
    return t;
bad:
    ERR_clear_error();
    t->pfd = -1; /* the caller closes it */
    kill_all(t, 0);
    free(t);
    return NULL;
}

redisAsyncContext *bl_ctx_open(const bl_ctx_spec *s, bl_tls **relay, char *why, size_t len)
{
    redisAsyncContext *ac;
    bl_tls *t = NULL;
    if (relay)
        *relay = NULL;
    if (s->tls) {
        if (!s->loop->io_new || !s->loop->io_set || !s->loop->io_free) {
            snprintf(why, len, "TLS needs a bl_loop with io_new/io_set/io_free");
            return NULL;
        }
        int pfd;
        ac = unix_pair(&pfd, why, len);
        if (!ac)
            return NULL;
        t = relay_new(s, pfd, why, len);
        if (!t) {
            close(pfd);
            redisAsyncFree(ac);
            return NULL;
        }
    } else {
        ac = s->unix_path ? redisAsyncConnectUnix(s->unix_path) : redisAsyncConnect(s->host, s->port);
        if (!ac || ac->err) {
            snprintf(why, len, "%s", ac && ac->errstr[0] ? ac->errstr : "cannot create a connection");
            if (ac)
                redisAsyncFree(ac);
            return NULL;
        }
    }
    if (s->loop->attach(s->loop->impl, ac) != 0) {
        snprintf(why, len, "cannot attach the connection to the loop");
        redisAsyncFree(ac);
        bl_tls_release(t);
        return NULL;
    }
    ac->data = s->data;
    redisAsyncSetConnectCallback(ac, s->on_connect);
    redisAsyncSetDisconnectCallback(ac, s->on_disconnect);
    if (t) {
        t->owned = relay != NULL;
        if (relay)
            *relay = t;
    }
    return ac;
}

int bl_tls_ready(const bl_tls *t)
{
    return t && t->ready && t->state == ST_OPEN;
}

const char *bl_tls_error(const bl_tls *t)
{
    return t && t->state != ST_OPEN ? t->err : "";
}

int bl_tls_handshaking(const bl_tls *t)
{
    return t && (t->state == ST_CONNECTING || t->state == ST_HANDSHAKE);
}

void bl_tls_release(bl_tls *t)
{
    if (!t)
        return;
    t->owned = 0;
    t->ready_cb = NULL;
    kill_all(t, 1);
    maybe_free(t);
}
