/* test_amqp_conn.c -- worker/amqp_conn.c without a broker: the contract of its calls.
 *
 * Points a connection at a loopback port nothing listens on, so the thread
 * keeps failing to connect and backing off, and checks what the loop sees:
 * no up state, every publish/ack/reject ends in exactly one done(ok=0),
 * never from inside the call, pending counts them, topology calls are
 * accepted while down, and close runs on_closed once and leaves the loop
 * closable (uv_loop_close == 0). The broker-facing paths are covered by
 * tests/integration/test_amqp*.py against a real rabbitmq-server.
 * Run under `make asan`.
 */
#include "testutil.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "../../common/log.h"
#include "../../worker/amqp_conn.h"

#define DEADLINE_MS 10000

typedef struct st {
    int dones, oks, ups, downs, closed, in_call;
    int timed_out;
} st_t;

static void on_state(void *priv, int up) {
    st_t *s = priv;
    if (up) s->ups++;
    else s->downs++;
}

static void on_delivery(void *priv, cel_amqp_delivery_t *d) { cel_amqp_delivery_free(d); }

static void on_done(void *priv, int ok) {
    st_t *s = priv;
    assert_int_equal(s->in_call, 0); /* never from inside the call */
    s->dones++;
    s->oks += ok;
}

static void on_closed(void *priv) { ((st_t *)priv)->closed++; }

static void on_deadline(uv_timer_t *t) {
    st_t *s = t->data;
    s->timed_out = 1;
    uv_stop(t->loop);
}

/* Runs the loop until *counter reaches want (or the deadline fails the test). */
static void run_until(uv_loop_t *loop, st_t *s, int *counter, int want) {
    uv_timer_t deadline;
    uv_timer_init(loop, &deadline);
    deadline.data = s;
    uv_timer_start(&deadline, on_deadline, DEADLINE_MS, 0);
    while (*counter < want && !s->timed_out) uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    assert_int_equal(s->timed_out, 0);
}

static int closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t n = sizeof(a);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    close(fd); /* bound, never listened: connections are refused */
    return ntohs(a.sin_port);
}

static cel_amqp_t *open_conn(uv_loop_t *loop, st_t *s, cel_amqp_url_t *url) {
    memset(url, 0, sizeof(*url));
    snprintf(url->host, sizeof(url->host), "127.0.0.1");
    url->port = closed_port();
    snprintf(url->vhost, sizeof(url->vhost), "/");
    snprintf(url->user, sizeof(url->user), "guest");
    snprintf(url->password, sizeof(url->password), "guest");
    cel_amqp_conf_t conf = { .url = url,
                             .name = "test",
                             .heartbeat = 10,
                             .confirm = 1,
                             .max_body = 1024,
                             .quiet_refusals = 1 };
    cel_amqp_cbs_t cbs = { on_state, on_delivery };
    cel_err_t err;
    cel_amqp_t *a = cel_amqp_new(loop, &conf, &cbs, s, &err);
    assert_non_null(a);
    return a;
}

static void test_down_calls_fail_once(void **state) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    st_t s = { 0 };
    cel_amqp_url_t url;
    cel_amqp_t *a = open_conn(&loop, &s, &url);
    assert_int_equal(cel_amqp_up(a), 0);
    assert_int_equal(cel_amqp_declare_exchange(a, "celery", "direct", 1, 0), CEL_OK);
    json_t *args = json_pack("{s:i}", "x-max-priority", 10);
    assert_int_equal(cel_amqp_declare_queue(a, "celery", 1, 0, args), CEL_OK);
    json_decref(args);
    assert_int_equal(cel_amqp_bind(a, "celery", "celery", "celery"), CEL_OK);
    assert_int_equal(cel_amqp_consume(a, "celery", 0), CEL_OK);
    cel_amqp_qos(a, 8);
    json_t *h = json_pack("{s:s}", "hostname", "x");
    cel_broker_out_t m = { .exchange = "",
                           .routing_key = "q",
                           .headers = h,
                           .content_type = "application/json",
                           .content_encoding = "utf-8",
                           .body = "{}",
                           .body_len = 2,
                           .priority = 0 };
    s.in_call = 1;
    cel_amqp_publish(a, &m, on_done, &s);
    cel_amqp_ack(a, 1, 1, on_done, &s);
    cel_amqp_reject(a, 1, 2, 1, on_done, &s);
    cel_amqp_publish(a, &m, NULL, NULL); /* no one waits: still counted until done */
    s.in_call = 0;
    json_decref(h);
    assert_int_equal(s.dones, 0);
    assert_int_equal(cel_amqp_pending(a), 4);
    run_until(&loop, &s, &s.dones, 3);
    assert_int_equal(s.oks, 0);
    assert_int_equal(cel_amqp_cancel(a, "celery"), CEL_OK);
    assert_int_equal(cel_amqp_cancel(a, "never-consumed"), CEL_OK);
    /* the last publish had no callback: pending drains to 0 all the same */
    while (cel_amqp_pending(a) > 0 && !s.timed_out) uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(cel_amqp_pending(a), 0);
    cel_amqp_close(a, on_closed, &s);
    run_until(&loop, &s, &s.closed, 1);
    assert_int_equal(s.closed, 1);
    assert_int_equal(s.ups, 0);
    assert_int_equal(s.downs, 0); /* never up, so never down */
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A close right away, with commands still queued: they all end, once. */
static void test_close_with_queued_commands(void **state) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    st_t s = { 0 };
    cel_amqp_url_t url;
    cel_amqp_t *a = open_conn(&loop, &s, &url);
    for (int i = 0; i < 100; i++) cel_amqp_ack(a, 1, (uint64_t)i, on_done, &s);
    cel_amqp_close(a, on_closed, &s);
    run_until(&loop, &s, &s.closed, 1);
    assert_int_equal(s.dones, 100);
    assert_int_equal(s.oks, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    cel_log_init("test", CEL_LOG_CRITICAL, 2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_down_calls_fail_once),
        cmocka_unit_test(test_close_with_queued_commands),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
