/* metrics_http.c - GET /metrics over HTTP/1.1 on a libev loop (see metrics_http.h).
 *
 * One client's life: READ (collect the request head, up to MH_MAX_REQUEST
 * bytes) -> WRITE (the whole response, as the socket takes it) -> DRAIN
 * (shut our side down and read until the client closes, so that request
 * bytes we never read cannot turn our close into a reset that loses the
 * response) -> closed. Each state runs from the client's one ev_io; one
 * ev_timer drops a client that stops making progress. */
#include "metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { C_READ, C_WRITE, C_DRAIN };

typedef struct client {
    mh_server *s;
    struct client *prev, *next;
    int fd, state;
    ev_io io;
    ev_timer idle;
    char req[MH_MAX_REQUEST];
    size_t got;
    char *resp; /* the whole response, malloc'ed */
    size_t resp_len, sent;
} client;

struct mh_server {
    struct ev_loop *loop;
    int fd, port, nclients;
    ev_io accept_io;
    ev_timer accept_retry; /* after EMFILE & co.: accept again later, not spin */
    client *clients;
    mh_render_fn render;
    void *data;
};

/* ---- clients ----------------------------------------------------------------- */

static void client_close(client *c)
{
    mh_server *s = c->s;
    ev_io_stop(s->loop, &c->io);
    ev_timer_stop(s->loop, &c->idle);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->resp);
    free(c);
    /* A slot is free again: take the next connection from the backlog. */
    if (s->nclients-- == MH_MAX_CLIENTS && s->fd >= 0)
        ev_io_start(s->loop, &s->accept_io);
}

static void client_watch(client *c, int events)
{
    ev_io_stop(c->s->loop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(c->s->loop, &c->io);
}

/* Build the response (head + body; HEAD gets the head only) and start writing. */
static void respond(client *c, int head_only, const char *status, const char *extra,
                    const char *ctype, const char *body, size_t body_len)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                     "Connection: close\r\n\r\n",
                     status, ctype, body_len, extra);
    size_t hlen = (size_t)n, blen = head_only ? 0 : body_len;
    c->resp = malloc(hlen + blen);
    if (!c->resp) {
        client_close(c);
        return;
    }
    memcpy(c->resp, head, hlen);
    if (blen)
        memcpy(c->resp + hlen, body, blen);
    c->resp_len = hlen + blen;
    c->sent = 0;
    c->state = C_WRITE;
    client_watch(c, EV_WRITE);
}

static void respond_text(client *c, int head_only, const char *status, const char *extra,
                         const char *body)
{
    respond(c, head_only, status, extra, "text/plain; charset=utf-8", body, strlen(body));
}

static void respond_metrics(client *c, int head_only)
{
    size_t cap = 16384;
    for (;;) {
        char *buf = malloc(cap);
        if (!buf) {
            respond_text(c, head_only, "500 Internal Server Error", "", "out of memory\n");
            return;
        }
        size_t n = c->s->render(buf, cap, c->s->data);
        if (n < cap) {
            respond(c, head_only, "200 OK", "", "text/plain; version=0.0.4", buf, n);
            free(buf);
            return;
        }
        free(buf);
        cap = n + 1; /* it said how much it needs */
    }
}

/* The head is complete (NUL-terminated in c->req): route it. */
static void handle_request(client *c)
{
    char method[16], target[1024], version[16];
    char *line_end = strpbrk(c->req, "\r\n");
    if (line_end)
        *line_end = '\0';
    if (sscanf(c->req, "%15s %1023s %15s", method, target, version) != 3 ||
        strncmp(version, "HTTP/1.", 7) != 0) {
        respond_text(c, 0, "400 Bad Request", "", "bad request\n");
        return;
    }
    int head_only = strcmp(method, "HEAD") == 0;
    char *q = strchr(target, '?');
    if (q)
        *q = '\0';
    if (strcmp(target, "/metrics") != 0)
        respond_text(c, head_only, "404 Not Found", "", "not found: try /metrics\n");
    else if (strcmp(method, "GET") != 0 && !head_only)
        respond_text(c, 0, "405 Method Not Allowed", "Allow: GET, HEAD\r\n",
                     "method not allowed\n");
    else
        respond_metrics(c, head_only);
}

static void on_read(client *c)
{
    for (;;) {
        size_t room = sizeof c->req - 1 - c->got;
        if (room == 0) {
            respond_text(c, 0, "431 Request Header Fields Too Large", "", "request too large\n");
            return;
        }
        ssize_t n = read(c->fd, c->req + c->got, room);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            client_close(c); /* gone before asking */
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* EAGAIN: wait for more */
        }
        c->got += (size_t)n;
        c->req[c->got] = '\0';
        ev_timer_again(c->s->loop, &c->idle);
        if (strstr(c->req, "\r\n\r\n") || strstr(c->req, "\n\n")) {
            handle_request(c);
            return;
        }
    }
}

static void on_write(client *c)
{
    while (c->sent < c->resp_len) {
        ssize_t n = send(c->fd, c->resp + c->sent, c->resp_len - c->sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return; /* the socket is full: wait until it drains */
        if (n <= 0) {
            client_close(c);
            return;
        }
        c->sent += (size_t)n;
        ev_timer_again(c->s->loop, &c->idle);
    }
    shutdown(c->fd, SHUT_WR); /* the client sees the end of the response */
    c->state = C_DRAIN;
    client_watch(c, EV_READ);
}

static void on_drain(client *c)
{
    char sink[4096];
    for (;;) {
        ssize_t n = read(c->fd, sink, sizeof sink);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        client_close(c); /* the client closed (or failed): done */
        return;
    }
}

static void on_client_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    client *c = w->data;
    if (c->state == C_READ)
        on_read(c);
    else if (c->state == C_WRITE)
        on_write(c);
    else
        on_drain(c);
}

static void on_client_idle(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    client_close(w->data); /* no progress for MH_IDLE_S: free the slot */
}

/* ---- the listener ------------------------------------------------------------- */

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    mh_server *s = w->data;
    while (s->nclients < MH_MAX_CLIENTS) {
        int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                       errno == ENOMEM)) {
            /* The connection stays queued and the listener readable:
             * pause instead of waking up for it again at once. */
            ev_io_stop(loop, &s->accept_io);
            ev_timer_set(&s->accept_retry, 0.5, 0.); /* a fired timer keeps no "after" */
            ev_timer_start(loop, &s->accept_retry);
            return;
        }
        if (fd < 0)
            return; /* EAGAIN, or a connection that went away meanwhile */
        client *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            return;
        }
        c->s = s;
        c->fd = fd;
        c->state = C_READ;
        c->next = s->clients;
        if (c->next)
            c->next->prev = c;
        s->clients = c;
        s->nclients++;
        ev_io_init(&c->io, on_client_io, fd, EV_READ);
        c->io.data = c;
        ev_io_start(loop, &c->io);
        ev_init(&c->idle, on_client_idle);
        c->idle.repeat = MH_IDLE_S;
        c->idle.data = c;
        ev_timer_again(loop, &c->idle);
    }
    /* Full: stop accepting; client_close starts again when a slot frees. */
    ev_io_stop(loop, &s->accept_io);
}

static void on_accept_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    mh_server *s = w->data;
    if (s->nclients < MH_MAX_CLIENTS)
        ev_io_start(loop, &s->accept_io);
}

static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
}

mh_server *mh_start(struct ev_loop *loop, const char *addr, int port, mh_render_fn render,
                    void *data, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (port < 0 || port > 65535) {
        snprintf(err, errlen, "port %d is not 0..65535", port);
        return NULL;
    }
    if (inet_pton(AF_INET, addr, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        sslen = sizeof *in;
    } else if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        sslen = sizeof *in6;
    } else {
        snprintf(err, errlen, "'%s' is not a numeric IPv4 or IPv6 address", addr);
        return NULL;
    }
    if (!is_loopback(&ss)) {
        snprintf(err, errlen, "'%s' is not a loopback address (127.0.0.0/8 or ::1)", addr);
        return NULL;
    }
    mh_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (s->fd < 0 || setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(s->fd, (struct sockaddr *)&ss, sslen) < 0 || listen(s->fd, 64) < 0 ||
        getsockname(s->fd, (struct sockaddr *)&ss, &sslen) < 0) {
        snprintf(err, errlen, "listen on %s port %d: %s", addr, port, strerror(errno));
        if (s->fd >= 0)
            close(s->fd);
        free(s);
        return NULL;
    }
    s->port = ntohs(ss.ss_family == AF_INET ? in->sin_port : in6->sin6_port);
    s->loop = loop;
    s->render = render;
    s->data = data;
    ev_io_init(&s->accept_io, on_accept, s->fd, EV_READ);
    s->accept_io.data = s;
    ev_init(&s->accept_retry, on_accept_retry);
    s->accept_retry.data = s;
    ev_io_start(loop, &s->accept_io);
    return s;
}

int mh_port(const mh_server *s)
{
    return s->port;
}

void mh_stop(mh_server *s)
{
    if (!s)
        return;
    ev_io_stop(s->loop, &s->accept_io);
    ev_timer_stop(s->loop, &s->accept_retry);
    close(s->fd);
    s->fd = -1; /* client_close must not restart the listener */
    while (s->clients)
        client_close(s->clients);
    free(s);
}
