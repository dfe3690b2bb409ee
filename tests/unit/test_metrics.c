/* test_metrics.c -- unit tests for the worker's metrics (worker/metrics.c) and
 * their HTTP responder (worker/metrics_http.c): counts and histograms as the
 * text format shows them, label escaping and caps, executor stats, the
 * request-head parser at and past its limits, and the responder on a real
 * loop (a client on the same loop; the loop closes with nothing left open).
 */
#include "testutil.h"

#include <math.h>

#include <uv.h>

#include "../../worker/metrics.h"
#include "../../worker/metrics_http.h"

/* ---- helpers ---- */

static char *render(void) {
    char *page;
    size_t len;
    cel_err_t err;
    if (cel_metrics_render(&page, &len, &err) != CEL_OK) fail_msg("render: %s", err.msg);
    assert_int_equal(strlen(page), len);
    return page;
}

/* The value of the sample whose line starts with `series` + ' ' (exact
 * labels), or NAN when there is none. */
static double sample(const char *page, const char *series) {
    size_t n = strlen(series);
    for (const char *p = page; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}

static void expect(const char *page, const char *series, double want) {
    double got = sample(page, series);
    if (!(got == want)) fail_msg("%s: want %g, got %g\n%s", series, want, got, page);
}

/* Every line is a comment or `name{labels} value` with a parseable value. */
static void check_format(const char *page) {
    int families = 0;
    for (const char *p = page; *p;) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl); /* the page ends with a newline */
        if (strncmp(p, "# TYPE ", 7) == 0) families++;
        if (*p != '#') {
            const char *brace = memchr(p, '{', (size_t)(nl - p));
            const char *sp = NULL;
            for (const char *q = nl - 1; q > p; q--)
                if (*q == ' ') {
                    sp = q;
                    break;
                }
            if (!brace || !sp || sp < brace || sp[-1] != '}')
                fail_msg("bad line: %.*s", (int)(nl - p), p);
            char *end;
            strtod(sp + 1, &end);
            if (end != nl) fail_msg("bad value: %.*s", (int)(nl - p), p);
        }
        p = nl + 1;
    }
    assert_true(families > 10);
}

static cel_task_t task_named(const char *name, const char *queue) {
    cel_task_t t;
    memset(&t, 0, sizeof(t));
    t.id = "id";
    t.name = name;
    t.routing_key = queue;
    return t;
}

#define H "hostname=\"w@h\""

/* ---- the registry ---- */

static void test_off(void **state) {
    (void)state;
    assert_false(cel_metrics_enabled());
    cel_task_t t = task_named("diag.add", "celery");
    cel_metrics_task_received(&t); /* no-ops */
    cel_metrics_task_started(&t, 1);
    cel_metrics_task_done(&t, "SUCCESS", 1);
    cel_metrics_broker_state(1);
    cel_metrics_executor_ready(0);
    char *page;
    size_t len;
    assert_int_equal(cel_metrics_render(&page, &len, NULL), CEL_ESTATE);
    assert_null(page);
    cel_metrics_shutdown();
    assert_int_equal(cel_metrics_init("w@h", NULL), CEL_OK);
    assert_int_equal(cel_metrics_init("w@h", NULL), CEL_ESTATE);
    assert_true(cel_metrics_enabled());
    cel_metrics_shutdown();
    cel_metrics_shutdown();
    assert_false(cel_metrics_enabled());
}

static void test_task_counts(void **state) {
    (void)state;
    assert_int_equal(cel_metrics_init("w@h", NULL), CEL_OK);
    cel_task_t add = task_named("diag.add", "celery"), fail = task_named("diag.fail", "celery");
    cel_task_t other_q = task_named("diag.add", "hipri");
    for (int i = 0; i < 5; i++) {
        cel_metrics_task_received(&add);
        cel_metrics_task_started(&add, 0.002);
        cel_metrics_task_done(&add, "SUCCESS", 0.003);
    }
    cel_metrics_task_received(&fail);
    cel_metrics_task_started(&fail, 0);
    cel_metrics_task_done(&fail, "FAILURE", 2);
    cel_metrics_task_done(&fail, "REVOKED", -1); /* never ran: no runtime sample */
    cel_metrics_task_done(&fail, "RETRY", 0.5);
    cel_metrics_task_done(&fail, "PENDING", 0.5); /* counts nowhere */
    cel_metrics_task_done(&fail, NULL, 0.5);
    cel_metrics_task_received(&other_q);
    char *page = render();
    check_format(page);
    expect(page, "celeriac_task_received_total{" H ",name=\"diag.add\",queue_name=\"celery\"}", 5);
    expect(page, "celeriac_task_received_total{" H ",name=\"diag.add\",queue_name=\"hipri\"}", 1);
    expect(page, "celeriac_task_started_total{" H ",name=\"diag.add\",queue_name=\"celery\"}", 5);
    expect(page, "celeriac_task_succeeded_total{" H ",name=\"diag.add\",queue_name=\"celery\"}", 5);
    expect(page, "celeriac_task_failed_total{" H ",name=\"diag.add\",queue_name=\"celery\"}", 0);
    expect(page, "celeriac_task_failed_total{" H ",name=\"diag.fail\",queue_name=\"celery\"}", 1);
    expect(page, "celeriac_task_revoked_total{" H ",name=\"diag.fail\",queue_name=\"celery\"}", 1);
    expect(page, "celeriac_task_retried_total{" H ",name=\"diag.fail\",queue_name=\"celery\"}", 1);
    /* histograms: cumulative buckets, +Inf == count, the sum */
    const char *rt =
        "celeriac_task_runtime_seconds_bucket{" H ",name=\"diag.add\",queue_name=\"celery\",";
    char key[300];
    snprintf(key, sizeof(key), "%sle=\"0.0025\"}", rt);
    expect(page, key, 0);
    snprintf(key, sizeof(key), "%sle=\"0.005\"}", rt);
    expect(page, key, 5);
    snprintf(key, sizeof(key), "%sle=\"+Inf\"}", rt);
    expect(page, key, 5);
    expect(page,
           "celeriac_task_runtime_seconds_count{" H ",name=\"diag.add\",queue_name=\"celery\"}", 5);
    double sum = sample(page, "celeriac_task_runtime_seconds_sum{" H
                              ",name=\"diag.add\",queue_name=\"celery\"}");
    assert_true(fabs(sum - 0.015) < 1e-12);
    /* FAILURE at 2 s and RETRY at 0.5 s ran; REVOKED did not */
    expect(page,
           "celeriac_task_runtime_seconds_count{" H ",name=\"diag.fail\",queue_name=\"celery\"}",
           2);
    expect(page,
           "celeriac_task_runtime_seconds_bucket{" H
           ",name=\"diag.fail\",queue_name=\"celery\",le=\"1\"}",
           1);
    expect(page,
           "celeriac_task_queue_wait_seconds_count{" H ",name=\"diag.add\",queue_name=\"celery\"}",
           5);
    expect(page,
           "celeriac_task_queue_wait_seconds_bucket{" H
           ",name=\"diag.fail\",queue_name=\"celery\",le=\"0.001\"}",
           1);
    /* "other" is not shown until used */
    assert_null(strstr(page, "name=\"other\""));
    free(page);
    cel_metrics_shutdown();
}

/* Names from the network: escaped, cut to valid UTF-8 and to the label
 * limit, and past CEL_METRICS_MAX_SERIES pairs folded into "other". */
static void test_labels_and_caps(void **state) {
    (void)state;
    assert_int_equal(cel_metrics_init("w\"@h\\", NULL), CEL_OK);
    cel_task_t q = task_named("a\"b\\c\nd", NULL);
    cel_metrics_task_received(&q);
    cel_task_t bad = task_named("ok\xff\xfe", "q\xc3"); /* invalid, truncated UTF-8 */
    cel_metrics_task_received(&bad);
    cel_task_t utf = task_named("caf\xc3\xa9", "celery");
    cel_metrics_task_received(&utf);
    char long1[600], long2[600];
    memset(long1, 'x', sizeof(long1) - 1);
    long1[sizeof(long1) - 1] = '\0';
    memcpy(long2, long1, sizeof(long1));
    long2[500] = 'y'; /* differs past the cut: the same series */
    cel_task_t l1 = task_named(long1, "celery"), l2 = task_named(long2, "celery");
    cel_metrics_task_received(&l1);
    cel_metrics_task_received(&l2);
    char *page = render();
    check_format(page);
    expect(page,
           "celeriac_task_received_total{hostname=\"w\\\"@h\\\\\",name=\"a\\\"b\\\\c\\nd\","
           "queue_name=\"\"}",
           1);
    expect(page,
           "celeriac_task_received_total{hostname=\"w\\\"@h\\\\\",name=\"ok\",queue_name=\"q\"}",
           1);
    expect(page,
           "celeriac_task_received_total{hostname=\"w\\\"@h\\\\\",name=\"caf\xc3\xa9\","
           "queue_name=\"celery\"}",
           1);
    char key[400];
    snprintf(key, sizeof(key),
             "celeriac_task_received_total{hostname=\"w\\\"@h\\\\\",name=\"%.*s\",queue_name="
             "\"celery\"}",
             CEL_METRICS_LABEL_MAX, long1);
    expect(page, key, 2);
    free(page);
    cel_metrics_shutdown();

    assert_int_equal(cel_metrics_init("w@h", NULL), CEL_OK);
    char name[32];
    for (int i = 0; i < CEL_METRICS_MAX_SERIES + 44; i++) {
        snprintf(name, sizeof(name), "t.%d", i);
        cel_task_t t = task_named(name, "celery");
        cel_metrics_task_received(&t);
        cel_metrics_task_done(&t, "SUCCESS", 0.1);
    }
    cel_task_t again = task_named("t.0", "celery"); /* an early one keeps its own */
    cel_metrics_task_received(&again);
    page = render();
    expect(page, "celeriac_task_received_total{" H ",name=\"t.0\",queue_name=\"celery\"}", 2);
    snprintf(key, sizeof(key),
             "celeriac_task_received_total{" H ",name=\"t.%d\",queue_name=\"celery\"}",
             CEL_METRICS_MAX_SERIES - 1);
    expect(page, key, 1);
    snprintf(key, sizeof(key),
             "celeriac_task_received_total{" H ",name=\"t.%d\",queue_name=\"celery\"}",
             CEL_METRICS_MAX_SERIES);
    assert_true(isnan(sample(page, key)));
    expect(page, "celeriac_task_received_total{" H ",name=\"other\",queue_name=\"other\"}", 44);
    expect(page, "celeriac_task_runtime_seconds_count{" H ",name=\"other\",queue_name=\"other\"}",
           44);
    free(page);
    cel_metrics_shutdown();
}

static void test_executor_stats(void **state) {
    (void)state;
    assert_int_equal(cel_metrics_init("w@h", NULL), CEL_OK);
    cel_frame_result_t r;
    memset(&r, 0, sizeof(r));
    cel_metrics_executor_result(0, &r); /* no stats: nothing */
    r.stats = (cel_frame_stats_t){ .present = 1,
                                   .tokens_trained = 100,
                                   .pass_tasks = 3,
                                   .pass_s = 0.2,
                                   .adapters = 4,
                                   .adapters_gpu = 2,
                                   .evicted = 1,
                                   .evicted_gpu = 5,
                                   .gpu_used = 1e9,
                                   .gpu_total = 8e10 };
    cel_metrics_executor_result(1, &r);
    r.stats =
        (cel_frame_stats_t){ .present = 1, .tokens_scored = 7, .adapters = 1, .adapters_gpu = -1 };
    cel_metrics_executor_result(0, &r);
    cel_metrics_executor_result(-1, &r); /* counted; no slot to show it on */
    cel_metrics_executor_result(CEL_METRICS_MAX_SLOTS, &r);
    char *page = render();
    check_format(page);
    expect(page, "celeriac_tokens_trained_total{" H "}", 100);
    expect(page, "celeriac_tokens_scored_total{" H "}", 21);
    expect(page, "celeriac_adapter_evictions_total{" H ",tier=\"memory\"}", 1);
    expect(page, "celeriac_adapter_evictions_total{" H ",tier=\"gpu\"}", 5);
    expect(page, "celeriac_batch_tasks_count{" H "}", 1);
    expect(page, "celeriac_batch_tasks_bucket{" H ",le=\"2\"}", 0);
    expect(page, "celeriac_batch_tasks_bucket{" H ",le=\"4\"}", 1);
    expect(page, "celeriac_batch_duration_seconds_count{" H "}", 1);
    /* per-executor gauges only for the slots the collector reports (none yet) */
    assert_true(
        isnan(sample(page, "celeriac_adapters_resident{" H ",executor=\"2\",tier=\"memory\"}")));
    free(page);
    cel_metrics_shutdown();
}

static int collects;
static void collect(void *priv, cel_metrics_live_t *out) {
    collects++;
    out->slots = 2;
    out->executors = 2;
    out->busy = 1;
    out->scheduled = 3;
    out->reserved = 4;
    out->active = 1;
    out->prefetch_count = 8;
    out->eta_limit = 100;
    out->gpu_adapter_limit = 1 << 20;
    out->nqueues = 2;
    out->queues[0] = "celery";
    out->queues[1] = priv;
}

static void test_live_gauges(void **state) {
    (void)state;
    assert_int_equal(cel_metrics_init("w@h", NULL), CEL_OK);
    cel_metrics_set_collector(collect, "hi\"pri");
    cel_frame_result_t r;
    memset(&r, 0, sizeof(r));
    r.stats = (cel_frame_stats_t){
        .present = 1, .adapters = 3, .adapters_gpu = 1, .gpu_used = 2e9, .gpu_total = 8e10
    };
    cel_metrics_executor_result(1, &r);
    char *page = render();
    check_format(page);
    assert_int_equal(collects, 1);
    expect(page, "celeriac_worker_up{" H "}", 1);
    expect(page, "celeriac_worker_tasks_active{" H "}", 1);
    expect(page, "celeriac_executors{" H ",state=\"busy\"}", 1);
    expect(page, "celeriac_executors{" H ",state=\"idle\"}", 1);
    expect(page, "celeriac_executor_slots{" H "}", 2);
    expect(page, "celeriac_requests{" H ",state=\"scheduled\"}", 3);
    expect(page, "celeriac_requests{" H ",state=\"reserved\"}", 4);
    expect(page, "celeriac_prefetch_limit{" H "}", 8);
    expect(page, "celeriac_eta_task_limit{" H "}", 100);
    expect(page, "celeriac_queue_consumed{" H ",queue_name=\"celery\"}", 1);
    expect(page, "celeriac_queue_consumed{" H ",queue_name=\"hi\\\"pri\"}", 1);
    expect(page, "celeriac_adapters_resident{" H ",executor=\"2\",tier=\"memory\"}", 3);
    expect(page, "celeriac_adapters_resident{" H ",executor=\"2\",tier=\"gpu\"}", 1);
    expect(page, "celeriac_gpu_memory_used_bytes{" H ",executor=\"2\"}", 2e9);
    expect(page, "celeriac_gpu_memory_total_bytes{" H ",executor=\"2\"}", 8e10);
    expect(page, "celeriac_gpu_adapter_memory_limit_bytes{" H "}", 1 << 20);
    assert_true(
        isnan(sample(page, "celeriac_adapters_resident{" H ",executor=\"1\",tier=\"memory\"}")));
    free(page);
    /* a new executor in the slot: its gauges start again */
    cel_metrics_executor_ready(1);
    cel_metrics_executor_ready(-1);
    cel_metrics_executor_ready(CEL_METRICS_MAX_SLOTS);
    page = render();
    assert_true(
        isnan(sample(page, "celeriac_adapters_resident{" H ",executor=\"2\",tier=\"memory\"}")));
    assert_true(isnan(sample(page, "celeriac_gpu_memory_used_bytes{" H ",executor=\"2\"}")));
    free(page);
    cel_metrics_shutdown();
}

static void test_broker_reconnects(void **state) {
    (void)state;
    assert_int_equal(cel_metrics_init("w@h", NULL), CEL_OK);
    char *page = render();
    expect(page, "celeriac_broker_up{" H "}", 0);
    free(page);
    cel_metrics_broker_state(1); /* the first connect is not a reconnect */
    cel_metrics_broker_state(1);
    cel_metrics_broker_state(0);
    cel_metrics_broker_state(0);
    cel_metrics_broker_state(1);
    cel_metrics_broker_state(0);
    cel_metrics_broker_state(1);
    page = render();
    expect(page, "celeriac_broker_up{" H "}", 1);
    expect(page, "celeriac_broker_reconnects_total{" H "}", 2);
    free(page);
    cel_metrics_shutdown();
}

/* ---- the request-head parser ---- */

static int parse(const char *s, size_t len, char *method, char *path) {
    return cel_metrics_http_parse(s, len, method, path, NULL);
}

static void test_parse(void **state) {
    (void)state;
    char m[CEL_METRICS_HTTP_METHOD_MAX], p[CEL_METRICS_HTTP_PATH_MAX];
    const char *req = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
    assert_int_equal(parse(req, strlen(req), m, p), CEL_OK);
    assert_string_equal(m, "GET");
    assert_string_equal(p, "/metrics");
    /* byte by byte: EAGAIN until the blank line */
    for (size_t n = 0; n < strlen(req); n++)
        if (parse(req, n, m, p) != CEL_EAGAIN) fail_msg("prefix of %zu bytes", n);
    const char *lf = "HEAD / HTTP/1.0\n\n";
    assert_int_equal(parse(lf, strlen(lf), m, p), CEL_OK);
    assert_string_equal(m, "HEAD");
    assert_string_equal(p, "/");
    /* a bad request line is refused as soon as it is whole */
    static const char *const bad[] = {
        "get /metrics HTTP/1.1\r\n",  "GET metrics HTTP/1.1\r\n",   "GET /metrics HTTP/2.0\r\n",
        "GET /metrics\r\n",           " GET /metrics HTTP/1.1\r\n", "GET  /metrics HTTP/1.1\r\n",
        "GET /met rics HTTP/1.1\r\n", "GET /metrics HTTP/1.1x\r\n", "\r\n",
        "GET /\x01 HTTP/1.1\r\n",     "GET /metrics HTTP/1.a\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cel_err_t err;
        if (cel_metrics_http_parse(bad[i], strlen(bad[i]), m, p, &err) != CEL_EPROTO)
            fail_msg("accepted: %s", bad[i]);
        assert_true(err.msg[0] != '\0');
    }
    /* method at its limit and one past */
    char line[CEL_METRICS_HTTP_HEAD_MAX + 64];
    snprintf(line, sizeof(line), "%.*s / HTTP/1.1\r\n\r\n", CEL_METRICS_HTTP_METHOD_MAX - 1,
             "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    assert_int_equal(parse(line, strlen(line), m, p), CEL_OK);
    snprintf(line, sizeof(line), "%.*s / HTTP/1.1\r\n\r\n", CEL_METRICS_HTTP_METHOD_MAX,
             "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    assert_int_equal(parse(line, strlen(line), m, p), CEL_ELIMIT);
    /* path at its limit and one past (the query string does not count) */
    char path[CEL_METRICS_HTTP_PATH_MAX + 1];
    memset(path, 'a', sizeof(path));
    path[0] = '/';
    snprintf(line, sizeof(line), "GET %.*s?q HTTP/1.1\r\n\r\n", CEL_METRICS_HTTP_PATH_MAX - 1,
             path);
    assert_int_equal(parse(line, strlen(line), m, p), CEL_OK);
    assert_int_equal(strlen(p), CEL_METRICS_HTTP_PATH_MAX - 1);
    snprintf(line, sizeof(line), "GET %.*s HTTP/1.1\r\n\r\n", CEL_METRICS_HTTP_PATH_MAX, path);
    assert_int_equal(parse(line, strlen(line), m, p), CEL_ELIMIT);
    /* a head of exactly the limit, and one byte more */
    const char *start = "GET / HTTP/1.1\r\nX: ";
    size_t fill = CEL_METRICS_HTTP_HEAD_MAX - strlen(start) - 4;
    char *v = calloc(1, fill + 1);
    memset(v, 'v', fill);
    snprintf(line, sizeof(line), "%s%s\r\n\r\n", start, v);
    free(v);
    assert_int_equal(strlen(line), CEL_METRICS_HTTP_HEAD_MAX);
    assert_int_equal(parse(line, strlen(line), m, p), CEL_OK);
    char *more = malloc(CEL_METRICS_HTTP_HEAD_MAX + 1);
    memcpy(more, line, strlen(start));
    memset(more + strlen(start), 'v', CEL_METRICS_HTTP_HEAD_MAX + 1 - strlen(start));
    assert_int_equal(parse(more, CEL_METRICS_HTTP_HEAD_MAX + 1, m, p), CEL_ELIMIT);
    assert_int_equal(parse(more, CEL_METRICS_HTTP_HEAD_MAX - 1, m, p), CEL_EAGAIN);
    /* a request line that never ends */
    memset(more, 'A', CEL_METRICS_HTTP_HEAD_MAX + 1);
    assert_int_equal(parse(more, CEL_METRICS_HTTP_HEAD_MAX, m, p), CEL_ELIMIT);
    free(more);
}

/* ---- the responder on a loop ---- */

typedef struct client {
    uv_tcp_t tcp;
    uv_connect_t conn;
    uv_write_t w;
    const char *request;
    char resp[1 << 18];
    size_t len;
    int done;
    int closes;
} client_t;

static void on_client_closed(uv_handle_t *h) { ((client_t *)h->data)->closes++; }

static void client_alloc(uv_handle_t *h, size_t sug, uv_buf_t *b) {
    client_t *c = h->data;
    b->base = c->resp + c->len;
    b->len = sizeof(c->resp) - 1 - c->len;
}

static void client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
    client_t *c = s->data;
    if (n > 0) c->len += (size_t)n;
    if (n < 0) {
        c->resp[c->len] = '\0';
        c->done = 1;
        uv_close((uv_handle_t *)&c->tcp, on_client_closed);
    }
}

static void client_written(uv_write_t *w, int status) { assert_int_equal(status, 0); }

static void client_connected(uv_connect_t *req, int status) {
    client_t *c = req->data;
    assert_int_equal(status, 0);
    uv_buf_t b = uv_buf_init((char *)c->request, (unsigned)strlen(c->request));
    assert_int_equal(uv_write(&c->w, (uv_stream_t *)&c->tcp, &b, 1, client_written), 0);
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, client_alloc, client_read), 0);
}

/* Sends request to port and runs the loop until the server closed the
 * connection; returns the whole response (in c). */
static void exchange(uv_loop_t *loop, int port, client_t *c, const char *request) {
    memset(c, 0, sizeof(*c));
    c->request = request;
    c->tcp.data = c;
    c->conn.data = c;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", port, &sa);
    assert_int_equal(uv_tcp_init(loop, &c->tcp), 0);
    assert_int_equal(uv_tcp_connect(&c->conn, &c->tcp, (struct sockaddr *)&sa, client_connected),
                     0);
    while (!c->done || !c->closes) uv_run(loop, UV_RUN_ONCE);
}

static int closed_calls;
static void on_server_closed(void *priv) { closed_calls += priv == &closed_calls; }

static void test_server(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(cel_metrics_init("w@h", NULL), CEL_OK);
    cel_task_t t = task_named("diag.noop", "celery");
    cel_metrics_task_received(&t);
    cel_metrics_http_t *srv;
    cel_err_t err;
    assert_int_equal(cel_metrics_http_new(&loop, "127.0.0.1", 0, &srv, &err), CEL_OK);
    int port = cel_metrics_http_port(srv);
    assert_true(port > 0);
    static client_t c;
    exchange(&loop, port, &c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_non_null(strstr(c.resp, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(c.resp, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    const char *body = strstr(c.resp, "\r\n\r\n");
    assert_non_null(body);
    body += 4;
    long clen = strtol(strstr(c.resp, "Content-Length: ") + 16, NULL, 10);
    assert_int_equal(clen, strlen(body));
    expect(body, "celeriac_task_received_total{" H ",name=\"diag.noop\",queue_name=\"celery\"}", 1);
    exchange(&loop, port, &c, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(c.resp, "HTTP/1.1 200 OK\r\n"));
    assert_string_equal(strstr(c.resp, "\r\n\r\n"), "\r\n\r\n"); /* no body */
    exchange(&loop, port, &c, "GET /other HTTP/1.1\r\n\r\n");
    assert_non_null(strstr(c.resp, "HTTP/1.1 404 "));
    exchange(&loop, port, &c, "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    assert_non_null(strstr(c.resp, "HTTP/1.1 405 "));
    assert_non_null(strstr(c.resp, "Allow: GET, HEAD\r\n"));
    exchange(&loop, port, &c, "nonsense\r\n");
    assert_non_null(strstr(c.resp, "HTTP/1.1 400 "));
    static char huge[CEL_METRICS_HTTP_HEAD_MAX + 100];
    memset(huge, 'h', sizeof(huge) - 1);
    memcpy(huge, "GET / HTTP/1.1\r\nX: ", 19);
    exchange(&loop, port, &c, huge);
    assert_non_null(strstr(c.resp, "HTTP/1.1 431 "));
    /* off: a 500, the connection still answered */
    cel_metrics_shutdown();
    exchange(&loop, port, &c, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_non_null(strstr(c.resp, "HTTP/1.1 500 "));
    cel_metrics_http_close(srv, on_server_closed, &closed_calls);
    cel_metrics_http_close(NULL, NULL, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(closed_calls, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A connection that sends nothing is closed by the server when it shuts
 * down; bad addresses and a port in use are errors, and the loop still
 * closes cleanly. */
static void test_server_errors(void **state) {
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    cel_metrics_http_t *srv, *again;
    cel_err_t err;
    assert_int_equal(cel_metrics_http_new(&loop, "not-an-ip", 0, &srv, &err), CEL_EINVAL);
    assert_null(srv);
    assert_int_equal(cel_metrics_http_new(&loop, "127.0.0.1", 70000, &srv, &err), CEL_EINVAL);
    assert_int_equal(cel_metrics_http_new(&loop, "::1", 0, &srv, &err), CEL_OK);
    cel_metrics_http_close(srv, NULL, NULL);
    assert_int_equal(cel_metrics_http_new(&loop, "127.0.0.1", 0, &srv, &err), CEL_OK);
    int port = cel_metrics_http_port(srv);
    assert_int_equal(cel_metrics_http_new(&loop, "127.0.0.1", port, &again, &err), CEL_EIO);
    assert_non_null(strstr(err.msg, "cannot listen"));
    uv_tcp_t idle;
    uv_connect_t req;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", port, &sa);
    uv_tcp_init(&loop, &idle);
    assert_int_equal(uv_tcp_connect(&req, &idle, (struct sockaddr *)&sa, NULL), 0);
    for (int i = 0; i < 20; i++) uv_run(&loop, UV_RUN_NOWAIT);
    closed_calls = 0;
    cel_metrics_http_close(srv, on_server_closed, &closed_calls);
    uv_close((uv_handle_t *)&idle, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(closed_calls, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_off),
        cmocka_unit_test(test_task_counts),
        cmocka_unit_test(test_labels_and_caps),
        cmocka_unit_test(test_executor_stats),
        cmocka_unit_test(test_live_gauges),
        cmocka_unit_test(test_broker_reconnects),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_server),
        cmocka_unit_test(test_server_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
