/* metrics_http.h - a tiny HTTP/1.1 server for GET /metrics on a libev loop.
 *
 * What a program needs to let Prometheus scrape bl_metrics_prometheus():
 * a listening socket on a loopback address, one ev_io per client, and
 * nothing that blocks the loop. Copy it, or use it as the plan for your own
 * loop (README: "Serving metrics from your loop").
 *
 *   - Loopback only: the address must be 127.0.0.0/8 or ::1. Metrics tell
 *     who holds what; put a proxy in front to publish them.
 *   - Non-blocking: the listener and every client are O_NONBLOCK and run
 *     from the loop's watchers; a slow or idle client holds only its own
 *     slot, and is dropped after MH_IDLE_S seconds.
 *   - Bounded: at most MH_MAX_CLIENTS connections (further ones wait in the
 *     kernel's backlog until one ends) and MH_MAX_REQUEST bytes of request
 *     head (more: 431).
 *   - GET or HEAD /metrics (a query string is ignored): 200 with
 *     "Content-Type: text/plain; version=0.0.4"; any other path 404; another
 *     method on /metrics 405 (with Allow); a malformed request 400. Every
 *     response is HTTP/1.1 with Content-Length and "Connection: close".
 */
#ifndef METRICS_HTTP_H
#define METRICS_HTTP_H

#include <stddef.h>

#include <ev.h>

#define MH_MAX_CLIENTS 16
#define MH_MAX_REQUEST 8192
#define MH_IDLE_S 10.0

/* Writes the exposition text into buf like snprintf: at most len bytes with
 * the NUL, returns the full length (bl_metrics_prometheus has this shape). */
typedef size_t (*mh_render_fn)(char *buf, size_t len, void *data);

typedef struct mh_server mh_server;

/* Listen on addr ("127.0.0.1", "::1" or another numeric loopback address)
 * and port (0: any free port, see mh_port) and serve from `loop`. Returns
 * NULL with a sentence in err (errlen bytes) for a bad or non-loopback
 * address or a failed bind. render(data) runs on each scrape, on the loop. */
mh_server *mh_start(struct ev_loop *loop, const char *addr, int port, mh_render_fn render,
                    void *data, char *err, size_t errlen);

/* The port it listens on. */
int mh_port(const mh_server *s);

/* Close the listener and every client connection, and free s. NULL is
 * ignored. */
void mh_stop(mh_server *s);

#endif
