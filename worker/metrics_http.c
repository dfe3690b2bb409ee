/* metrics_http.c -- the /metrics responder: uv_tcp listener, one request per connection.
 *
 * A connection reads its request head into a fixed buffer (parsed by
 * cel_metrics_http_parse as bytes arrive), writes one response, shuts its
 * write side down and reads (discarding) until the peer's EOF or its timer,
 * then closes: closing with unread bytes would reset the connection and
 * could lose the response. Each connection owns two handles (tcp, timer)
 * and is freed after both close callbacks; the server is freed after its
 * listener and every connection closed. A render failure is a 500, never a
 * dropped connection. Main process, libuv loop.
 */
#include "metrics_http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "metrics.h"

#define DISCARD_CHUNK 4096

typedef struct conn conn_t;

struct cel_metrics_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int listener_open;
    conn_t *conns; /* live connections */
    int nconns;
    int closing;
    void (*on_closed)(void *);
    void *closed_priv;
    char discard[DISCARD_CHUNK]; /* where bytes after a request head go */
};

struct conn {
    conn_t *prev, *next;
    cel_metrics_http_t *srv;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    int handles;   /* open handles (tcp, timer) */
    int responded; /* a response was queued: later bytes are discarded */
    int closing;
    char *resp;
    size_t len;
    char head[CEL_METRICS_HTTP_HEAD_MAX];
};

/* ---- the request head --------------------------------------------------- */

/* Offset just past the blank line ending the head, or 0 when not there yet. */
static size_t head_end(const char *buf, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != '\n') continue;
        if (i + 1 < len && buf[i + 1] == '\n') return i + 2;
        if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n') return i + 3;
    }
    return 0;
}

int cel_metrics_http_parse(const char *buf, size_t len, char method[CEL_METRICS_HTTP_METHOD_MAX],
                           char path[CEL_METRICS_HTTP_PATH_MAX], cel_err_t *err) {
    method[0] = path[0] = '\0';
    size_t scan = len < CEL_METRICS_HTTP_HEAD_MAX ? len : CEL_METRICS_HTTP_HEAD_MAX;
    const char *nl = memchr(buf, '\n', scan);
    if (!nl) {
        if (len >= CEL_METRICS_HTTP_HEAD_MAX)
            return cel_err_set(err, CEL_ELIMIT, "request line over %d bytes",
                               CEL_METRICS_HTTP_HEAD_MAX);
        return CEL_EAGAIN;
    }
    /* METHOD SP request-target SP HTTP/1.x (CR) LF, checked as soon as it is whole */
    size_t line = (size_t)(nl - buf);
    if (line > 0 && buf[line - 1] == '\r') line--;
    size_t i = 0;
    while (i < line && buf[i] >= 'A' && buf[i] <= 'Z') i++;
    if (i == 0 || i >= line || buf[i] != ' ')
        return cel_err_set(err, CEL_EPROTO, "not an HTTP request line");
    if (i >= CEL_METRICS_HTTP_METHOD_MAX) return cel_err_set(err, CEL_ELIMIT, "method too long");
    size_t m = i++;
    size_t t0 = i;
    while (i < line && buf[i] > ' ' && buf[i] < 0x7f) i++;
    size_t t1 = i;
    if (t1 == t0 || buf[t0] != '/' || i >= line || buf[i] != ' ')
        return cel_err_set(err, CEL_EPROTO, "bad request target");
    i++;
    if (line - i != 8 || memcmp(buf + i, "HTTP/1.", 7) != 0 || buf[i + 7] < '0' || buf[i + 7] > '9')
        return cel_err_set(err, CEL_EPROTO, "not HTTP/1.x");
    const char *q = memchr(buf + t0, '?', t1 - t0);
    size_t plen = q ? (size_t)(q - (buf + t0)) : t1 - t0;
    if (plen >= CEL_METRICS_HTTP_PATH_MAX)
        return cel_err_set(err, CEL_ELIMIT, "request target over %d bytes",
                           CEL_METRICS_HTTP_PATH_MAX - 1);
    if (!head_end(buf, scan)) {
        if (len >= CEL_METRICS_HTTP_HEAD_MAX)
            return cel_err_set(err, CEL_ELIMIT, "request head over %d bytes",
                               CEL_METRICS_HTTP_HEAD_MAX);
        return CEL_EAGAIN;
    }
    memcpy(method, buf, m);
    method[m] = '\0';
    memcpy(path, buf + t0, plen);
    path[plen] = '\0';
    return CEL_OK;
}

/* ---- connections --------------------------------------------------------- */

static void maybe_server_closed(cel_metrics_http_t *s) {
    if (!s->closing || s->listener_open || s->nconns > 0) return;
    void (*cb)(void *) = s->on_closed;
    void *priv = s->closed_priv;
    free(s);
    if (cb) cb(priv);
}

static void on_conn_handle_closed(uv_handle_t *h) {
    conn_t *c = h->data;
    if (--c->handles > 0) return;
    cel_metrics_http_t *s = c->srv;
    free(c->resp);
    free(c);
    s->nconns--;
    maybe_server_closed(s);
}

static void conn_close(conn_t *c) {
    if (c->closing) return;
    c->closing = 1;
    cel_metrics_http_t *s = c->srv;
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_timeout(uv_timer_t *t) { conn_close(t->data); }

static void on_shutdown(uv_shutdown_t *req, int status) {
    conn_t *c = req->data;
    if (status < 0) conn_close(c); /* else the peer's EOF (or the timer) closes it */
}

static void on_written(uv_write_t *req, int status) {
    conn_t *c = req->data;
    if (c->closing) return;
    if (status < 0 || uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c);
}

/* Queues one response: status line, headers, and body (unless head_only). */
static void respond(conn_t *c, int status, const char *reason, const char *type, const char *body,
                    size_t blen, int head_only, const char *extra) {
    c->responded = 1;
    char hdr[512];
    int n = snprintf(hdr, sizeof(hdr),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                     "Connection: close\r\n\r\n",
                     status, reason, type, blen, extra ? extra : "");
    size_t total = (size_t)n + (head_only ? 0 : blen);
    if (!(c->resp = malloc(total))) {
        conn_close(c);
        return;
    }
    memcpy(c->resp, hdr, (size_t)n);
    if (!head_only) memcpy(c->resp + n, body, blen);
    c->len = total;
    uv_buf_t buf = uv_buf_init(c->resp, (unsigned)total);
    c->wreq.data = c;
    c->sreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &buf, 1, on_written) != 0) conn_close(c);
}

static void respond_text(conn_t *c, int status, const char *reason, const char *text, int head_only,
                         const char *extra) {
    respond(c, status, reason, "text/plain; charset=utf-8", text, strlen(text), head_only, extra);
}

/* Answers a complete request head. */
static void serve(conn_t *c, const char *method, const char *path) {
    int head = strcmp(method, "HEAD") == 0;
    int known = strcmp(path, "/metrics") == 0 || strcmp(path, "/") == 0;
    if (!known) {
        respond_text(c, 404, "Not Found", "not found; metrics are at /metrics\n", head, NULL);
        return;
    }
    if (!head && strcmp(method, "GET") != 0) {
        respond_text(c, 405, "Method Not Allowed", "only GET and HEAD\n", 0,
                     "Allow: GET, HEAD\r\n");
        return;
    }
    if (strcmp(path, "/") == 0) {
        respond_text(c, 200, "OK", "celeriac worker: Prometheus metrics at /metrics\n", head, NULL);
        return;
    }
    char *page;
    size_t len;
    cel_err_t err;
    if (cel_metrics_render(&page, &len, &err) != CEL_OK) {
        cel_error("metrics: %s", err.msg);
        respond_text(c, 500, "Internal Server Error", "cannot render the metrics\n", head, NULL);
        return;
    }
    respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", page, len, head, NULL);
    free(page);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    conn_t *c = h->data;
    if (c->responded || c->len >= sizeof(c->head)) {
        buf->base = c->srv->discard;
        buf->len = sizeof(c->srv->discard);
    } else {
        buf->base = c->head + c->len;
        buf->len = sizeof(c->head) - c->len;
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = st->data;
    if (c->closing) return;
    if (nread < 0) {
        conn_close(c); /* EOF (after our response, or a client that gave up) or an error */
        return;
    }
    if (nread == 0 || c->responded) return;
    if (buf->base != c->head + c->len) return; /* discarded overflow; the parse below says */
    c->len += (size_t)nread;
    char method[CEL_METRICS_HTTP_METHOD_MAX], path[CEL_METRICS_HTTP_PATH_MAX];
    cel_err_t err;
    int rc = cel_metrics_http_parse(c->head, c->len, method, path, &err);
    if (rc == CEL_EAGAIN) return;
    if (rc == CEL_OK) serve(c, method, path);
    else if (rc == CEL_ELIMIT)
        respond_text(c, 431, "Request Header Fields Too Large", "request head too large\n", 0,
                     NULL);
    else respond_text(c, 400, "Bad Request", "bad request\n", 0, NULL);
}

static void on_connection(uv_stream_t *listener, int status) {
    cel_metrics_http_t *s = listener->data;
    if (status < 0 || s->closing) return;
    conn_t *c = calloc(1, sizeof(*c));
    if (!c) return; /* the kernel keeps it queued until a later accept */
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    s->nconns++;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 || s->nconns > CEL_METRICS_HTTP_CONNS) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_timer_start(&c->timer, on_timeout, CEL_METRICS_HTTP_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) conn_close(c);
}

/* ---- the server ---------------------------------------------------------- */

static void on_listener_closed(uv_handle_t *h) {
    cel_metrics_http_t *s = h->data;
    s->listener_open = 0;
    maybe_server_closed(s);
}

int cel_metrics_http_new(uv_loop_t *loop, const char *addr, int port, cel_metrics_http_t **out,
                         cel_err_t *err) {
    *out = NULL;
    struct sockaddr_storage sa;
    if (port < 0 || port > 65535) return cel_err_set(err, CEL_EINVAL, "bad port %d", port);
    if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&sa) != 0 &&
        uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&sa) != 0)
        return cel_err_set(err, CEL_EINVAL, "'%.64s' is not an IPv4 or IPv6 address", addr);
    cel_metrics_http_t *s = calloc(1, sizeof(*s));
    if (!s) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    s->loop = loop;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->listener_open = 1;
    int rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
    if (rc != 0) {
        cel_err_set(err, CEL_EIO, "cannot listen on %.64s:%d: %s", addr, port, uv_strerror(rc));
        s->closing = 1;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return CEL_EIO;
    }
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    s->port = port;
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen) == 0)
        s->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                              : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = s;
    return CEL_OK;
}

int cel_metrics_http_port(const cel_metrics_http_t *s) { return s->port; }

void cel_metrics_http_close(cel_metrics_http_t *s, void (*on_closed)(void *), void *priv) {
    if (!s || s->closing) return;
    s->closing = 1;
    s->on_closed = on_closed;
    s->closed_priv = priv;
    while (s->conns) conn_close(s->conns);
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}
