/* tls.h - TLS under hiredis 0.14, and the one function that opens every
 * hiredis context (lock, subscriber, Sentinel, probe connections).
 *
 * hiredis 0.14.1 reads and writes ac->c.fd itself and has no I/O hooks, so
 * TLS sits under a plaintext fd: the context is a unix-socket connection to
 * a relay that bidlock runs on the host loop (bl_loop io hooks). The relay
 * makes the TCP connection, does the TLS handshake (non-blocking,
 * WANT_READ/WANT_WRITE driven by the io watches) and shuttles bytes both
 * ways with bounded buffers: when one side cannot take more, the relay stops
 * reading the other (back-pressure). Nothing hiredis writes reaches the
 * network before the handshake and the certificate checks have passed.
 *
 * Getting the unix pair with public hiredis API only: a listening socket in
 * a fresh 0700 mkdtemp directory, redisAsyncConnectUnix(path) (a unix
 * connect completes at once), accept() the other end at once (its
 * SO_PEERCRED pid must be ours), then the listener, the path and the
 * directory go. hiredis never knows.
 *
 * Failures end the relay's TLS side and half-close the unix socket, so
 * hiredis sees an orderly EOF (no SIGPIPE on its side) and fails its
 * callbacks as for a lost connection; bl_tls_error() has the reason
 * ("certificate verify failed: ...", "host name mismatch ...") for the
 * message. */
#ifndef BIDLOCK_TLS_H
#define BIDLOCK_TLS_H

#include <stddef.h>

#include <hiredis/async.h>

#include "common.h"

/* The TLS settings of one manager: an SSL_CTX (refcounted by OpenSSL, so
 * relays still alive keep it) with the trust anchors, the client
 * certificate and the verification mode. */
typedef struct bl_tls_ctx bl_tls_ctx;

/* 1 if cfg asks for TLS (tls = 1 or a rediss:// url). */
int bl_tls_wanted(const bl_config *cfg);
/* The combinations bl_config_validate refuses, and the files it cannot
 * use: BL_OK or BL_EINVAL with a sentence. Loads them (an SSL_CTX made
 * and freed), so a key that does not match the certificate is found here. */
int bl_tls_validate(const bl_config *cfg, char *why, size_t why_len);
/* BL_OK and *out, or BL_EINVAL (a file that cannot be loaded; why says
 * which) or BL_ENOMEM. */
int bl_tls_ctx_new(const bl_config *cfg, bl_tls_ctx **out, char *why, size_t why_len);
void bl_tls_ctx_free(bl_tls_ctx *ctx);

/* One relayed connection. */
typedef struct bl_tls bl_tls;

/* How to open a context. tls NULL: plain (redisAsyncConnect/Unix). With
 * tls: host must be a numeric address; name is what the certificate must
 * be for (a DNS name, also sent as SNI, or an IP literal: IP SANs) - NULL
 * for host itself. */
typedef struct bl_ctx_spec {
    const bl_loop *loop;
    const char *host; /* numeric address or name (plain only) */
    int port;
    const char *unix_path; /* plain only; wins over host */
    bl_tls_ctx *tls;
    const char *name;
    void *data; /* ac->data */
    redisConnectCallback *on_connect;
    redisDisconnectCallback *on_disconnect;
    /* TLS: called once from the loop when the handshake and the checks
     * have passed (may come before or after hiredis's connect callback),
     * unless the relay was released first. NULL: not told. */
    void (*ready)(void *arg);
    void *ready_arg;
    /* TLS: a failure is also logged here (one line, no secrets); may be NULL. */
    void (*log)(void *arg, const char *msg);
    void *log_arg;
} bl_ctx_spec;

/* Create the context, attach it to the loop, set its data and callbacks.
 * With TLS, *relay (if relay is not NULL) is the relay, owned by the
 * caller until bl_tls_release; with relay NULL it frees itself once
 * hiredis lets go of the context. NULL with why set on failure (nothing
 * left behind). */
redisAsyncContext *bl_ctx_open(const bl_ctx_spec *spec, bl_tls **relay, char *why, size_t len);

/* 1 once the handshake and the checks have passed. */
int bl_tls_ready(const bl_tls *t);
/* Why the TLS side ended, "" while it has not. */
const char *bl_tls_error(const bl_tls *t);
/* 1 while the TCP connect or the handshake is under way. */
int bl_tls_handshaking(const bl_tls *t);
/* The owner lets go: a close_notify when the session was up, fds closed,
 * SSL freed (now, or when the relay's own callback returns). NULL ok. */
void bl_tls_release(bl_tls *t);

#endif
