/* metrics_http.h -- a small HTTP responder for /metrics on the worker's libuv loop.
 *
 * Listens on a TCP address (--metrics-bind, --metrics-port) and answers
 * GET/HEAD /metrics with cel_metrics_render's page, then closes the
 * connection (HTTP/1.1 with Connection: close: Prometheus opens one per
 * scrape). Everything runs on the main process's loop and nothing blocks:
 * a scrape renders from memory, so a busy executor never delays it and a
 * slow client only holds its own connection (bounded: CEL_METRICS_HTTP_CONNS
 * at once, CEL_METRICS_HTTP_TIMEOUT_MS each). The request-head parser is
 * pure and exported for its tests and fuzz harness.
 */
#ifndef CEL_METRICS_HTTP_H
#define CEL_METRICS_HTTP_H

#include <stddef.h>

#include <uv.h>

#include "../common/err.h"

#define CEL_METRICS_HTTP_HEAD_MAX   8192  /* bytes of a request line and headers */
#define CEL_METRICS_HTTP_CONNS      64    /* connections served at once; more are closed */
#define CEL_METRICS_HTTP_TIMEOUT_MS 10000 /* a connection's whole life */
#define CEL_METRICS_HTTP_METHOD_MAX 16
#define CEL_METRICS_HTTP_PATH_MAX   1024

typedef struct cel_metrics_http cel_metrics_http_t;

/* Parses the head of an HTTP/1.x request in buf[0..len) (what has arrived so
 * far). CEL_OK when the head is complete (CRLF CRLF, or LF LF): OUT method
 * and path (the target without its query string), NUL-terminated.
 * CEL_EAGAIN: incomplete, read more. CEL_ELIMIT: the head is longer than
 * CEL_METRICS_HTTP_HEAD_MAX, or the method or path than their maxima.
 * CEL_EPROTO: not an HTTP/1.x request line. Pure. */
int cel_metrics_http_parse(const char *buf, size_t len, char method[CEL_METRICS_HTTP_METHOD_MAX],
                           char path[CEL_METRICS_HTTP_PATH_MAX], cel_err_t *err);

/* Starts listening on addr (an IPv4 or IPv6 literal) and port (0: any free
 * port, see cel_metrics_http_port). OUT: *out. CEL_EINVAL for a bad address,
 * CEL_EIO when it cannot bind or listen (err says why), CEL_ENOMEM. */
int cel_metrics_http_new(uv_loop_t *loop, const char *addr, int port, cel_metrics_http_t **out,
                         cel_err_t *err);

/* The port it listens on. */
int cel_metrics_http_port(const cel_metrics_http_t *s);

/* Stops listening and closes every connection; on_closed(priv) (may be NULL)
 * runs once every handle is closed, and s is freed then. NULL is a no-op. */
void cel_metrics_http_close(cel_metrics_http_t *s, void (*on_closed)(void *), void *priv);

#endif
