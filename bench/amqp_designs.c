/* amqp_designs.c -- the two ways to put librabbitmq-c under a libuv loop, measured side by side.
 *
 * Design A: the connection lives on the loop thread; a uv_poll on its socket reads frames
 * with amqp_simple_wait_frame_noblock (zero timeout) while amqp_data_in_buffer or
 * amqp_frames_enqueued, and acks/publishes are written from the loop (librabbitmq's
 * writes wait for the socket when it is full). Connect and login are librabbitmq's
 * blocking calls. Design B: worker/amqp_conn.c, the connection on a thread of its own,
 * commands and events through queues, an eventfd and a uv_async_t.
 *
 * For each design, on one RabbitMQ (a private node bench/rabbitmq.py starts):
 *   connect  -- the longest loop stall while connecting, logging in, declaring, consuming;
 *   drain    -- N small messages already queued: consumed and acked one by one, prefetch
 *               500; messages/s, and the longest loop stall meanwhile;
 *   rtt      -- M messages published one at a time by a plain connection in another thread,
 *               each awaited on the loop: p50/p99 publish-to-delivery latency;
 *   blocked  -- the broker blocks publishers (BLOCK_CMD, e.g. a memory watermark of 0) for
 *               ~3 s while the loop publishes 200 messages of 64 KB: the longest loop stall.
 * A 1 ms repeating uv timer measures stalls: the longest gap between its callbacks, minus 1 ms.
 * Prints one line per figure. Test/bench code, not part of the worker; blocking here is
 * deliberate (that is what design A does).
 *
 *   build/bench/amqp_designs HOST PORT VHOST [N] [M]
 *   (BLOCK_CMD / UNBLOCK_CMD in the environment: shell commands; the blocked test is skipped
 *   without them)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <uv.h>

#include "../common/log.h"
#include "../worker/amqp_conn.h"

#define QUEUE    "designs"
#define PREFETCH 500
#define BIG      (64 * 1024)
#define NBIG     200

static const char *host, *vhost;
static int port;

/* ---- the stall meter ----------------------------------------------------- */

static uv_timer_t meter;
static uint64_t last_tick, worst_ns;

static void on_tick(uv_timer_t *t) {
    uint64_t now = uv_hrtime();
    if (last_tick && now - last_tick > 1000000 && now - last_tick - 1000000 > worst_ns)
        worst_ns = now - last_tick - 1000000;
    last_tick = now;
}

static void meter_reset(void) {
    worst_ns = 0;
    last_tick = uv_hrtime();
}

/* ---- plain blocking helpers (setup, the rtt publisher) ------------------- */

static amqp_connection_state_t sync_open(void) {
    amqp_connection_state_t st = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(st);
    if (!s || amqp_socket_open(s, host, port) != AMQP_STATUS_OK) {
        fprintf(stderr, "designs: cannot connect to %s:%d\n", host, port);
        exit(2);
    }
    amqp_rpc_reply_t r =
        amqp_login(st, vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "designs: login failed\n");
        exit(2);
    }
    amqp_channel_open(st, 1);
    amqp_get_rpc_reply(st);
    return st;
}

static void sync_close(amqp_connection_state_t st) {
    amqp_channel_close(st, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(st, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(st);
}

/* Empties and fills the queue with n messages of 100 bytes. */
static void fill(int n) {
    amqp_connection_state_t st = sync_open();
    amqp_queue_declare(st, 1, amqp_cstring_bytes(QUEUE), 0, 0, 0, 0, amqp_empty_table);
    amqp_queue_purge(st, 1, amqp_cstring_bytes(QUEUE));
    char body[100];
    memset(body, 'x', sizeof(body));
    amqp_bytes_t b = { sizeof(body), body };
    for (int i = 0; i < n; i++)
        amqp_basic_publish(st, 1, amqp_cstring_bytes(""), amqp_cstring_bytes(QUEUE), 0, 0, NULL, b);
    for (;;) { /* until the broker has them all */
        amqp_queue_declare_ok_t *ok =
            amqp_queue_declare(st, 1, amqp_cstring_bytes(QUEUE), 1, 0, 0, 0, amqp_empty_table);
        if (ok && (int)ok->message_count >= n) break;
        usleep(10000);
    }
    sync_close(st);
}

/* ---- the consumer side, common to both designs --------------------------- */

typedef struct run {
    uv_loop_t *loop;
    int want, got;
    uint64_t t_first, t_last;
    uint64_t sent_at; /* rtt: when the awaited message was published */
    uint64_t *rtts;
    int nrtt;
    int rtt_mode;
} run_t;

static run_t R;

static void got_one(void) {
    uint64_t now = uv_hrtime();
    if (!R.got) R.t_first = now;
    R.got++;
    R.t_last = now;
    uint64_t sent = __atomic_load_n(&R.sent_at, __ATOMIC_SEQ_CST);
    if (R.rtt_mode && sent) {
        R.rtts[R.nrtt++] = now - sent;
        __atomic_store_n(&R.sent_at, 0, __ATOMIC_SEQ_CST);
    }
    if (R.got >= R.want) uv_stop(R.loop);
}

/* The rtt publisher: one message at a time, the next once the last arrived. */
static pthread_t pub_thread;

static void *rtt_publisher(void *arg) {
    int m = *(int *)arg;
    amqp_connection_state_t st = sync_open();
    amqp_bytes_t b = { 5, "hello" };
    for (int i = 0; i < m; i++) {
        while (__atomic_load_n(&R.sent_at, __ATOMIC_SEQ_CST)) usleep(50); /* last one not in */
        usleep(200);
        __atomic_store_n(&R.sent_at, uv_hrtime(), __ATOMIC_SEQ_CST);
        amqp_basic_publish(st, 1, amqp_cstring_bytes(""), amqp_cstring_bytes(QUEUE), 0, 0, NULL, b);
    }
    sync_close(st);
    return NULL;
}

/* ---- design A: uv_poll + noblock reads on the loop ----------------------- */

static amqp_connection_state_t a_st;
static uv_poll_t a_poll;

static void a_read(uv_poll_t *p, int status, int events) {
    /* every frame that is ready: librabbitmq's buffer, its queued frames, the socket */
    for (;;) {
        amqp_frame_t f;
        struct timeval zero = { 0, 0 };
        int rc = amqp_simple_wait_frame_noblock(a_st, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT) break;
        if (rc != AMQP_STATUS_OK) {
            fprintf(stderr, "designs A: %s\n", amqp_error_string2(rc));
            uv_stop(R.loop);
            return;
        }
        if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_DELIVER_METHOD) {
            amqp_basic_deliver_t *d = f.payload.method.decoded;
            amqp_basic_ack(a_st, 1, d->delivery_tag, 0); /* written from the loop */
            got_one();
        }
    }
    if (!amqp_frames_enqueued(a_st) && !amqp_data_in_buffer(a_st)) amqp_maybe_release_buffers(a_st);
}

static void a_start(uv_loop_t *loop) {
    a_st = sync_open(); /* DNS, connect, login, channel: on the loop */
    amqp_basic_qos(a_st, 1, 0, PREFETCH, 1);
    amqp_basic_consume(a_st, 1, amqp_cstring_bytes(QUEUE), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    amqp_get_rpc_reply(a_st);
    uv_poll_init(loop, &a_poll, amqp_get_sockfd(a_st));
    uv_poll_start(&a_poll, UV_READABLE, a_read);
}

static void a_stop(void) {
    uv_poll_stop(&a_poll);
    uv_close((uv_handle_t *)&a_poll, NULL);
    sync_close(a_st);
}

/* ---- design B: worker/amqp_conn.c ---------------------------------------- */

static cel_amqp_t *b_conn;
static int b_up;

static void b_state(void *priv, int up) { b_up = up; }

static void b_delivery(void *priv, cel_amqp_delivery_t *d) {
    cel_amqp_ack(b_conn, d->gen, d->tag, NULL, NULL);
    cel_amqp_delivery_free(d);
    got_one();
}

static cel_amqp_url_t b_url;

static void b_start(uv_loop_t *loop) {
    memset(&b_url, 0, sizeof(b_url));
    snprintf(b_url.host, sizeof(b_url.host), "%s", host);
    snprintf(b_url.vhost, sizeof(b_url.vhost), "%s", vhost);
    snprintf(b_url.user, sizeof(b_url.user), "guest");
    snprintf(b_url.password, sizeof(b_url.password), "guest");
    b_url.port = port;
    cel_amqp_conf_t conf = { .url = &b_url, .name = "bench", .max_body = 1 << 20 };
    cel_amqp_cbs_t cbs = { b_state, b_delivery };
    b_conn = cel_amqp_new(loop, &conf, &cbs, NULL, NULL);
    cel_amqp_qos(b_conn, PREFETCH);
    cel_amqp_declare_queue(b_conn, QUEUE, 0, 0, NULL);
    cel_amqp_consume(b_conn, QUEUE, 0);
}

static void on_b_closed(void *priv) {}

static void b_stop(void) { cel_amqp_close(b_conn, on_b_closed, NULL); }

/* ---- phases --------------------------------------------------------------- */

static void *blocker(void *arg) {
    system(getenv("BLOCK_CMD"));
    sleep(3);
    system(getenv("UNBLOCK_CMD"));
    return NULL;
}

static void on_pub_done(void *priv, int ok) {
    if (++*(int *)priv == NBIG) uv_stop(R.loop);
}

static void run_design(char d, int n, int m) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    R = (run_t){ .loop = &loop };
    uv_timer_init(&loop, &meter);
    uv_timer_start(&meter, on_tick, 1, 1);
    fill(n);
    R.want = n;
    /* connect + drain: the meter runs from before the connection */
    meter_reset();
    uv_run(&loop, UV_RUN_NOWAIT);
    uint64_t c0 = uv_hrtime();
    if (d == 'A') a_start(&loop);
    else b_start(&loop);
    uv_run(&loop, UV_RUN_DEFAULT);
    double stall = worst_ns / 1e6;
    double rate = R.got > 1 ? (R.got - 1) / ((R.t_last - R.t_first) / 1e9) : 0;
    printf("%c connect+drain: %d messages in %.3f s, %.0f msg/s (first to last), "
           "longest loop stall %.2f ms\n",
           d, R.got, (R.t_last - c0) / 1e9, rate, stall);
    /* rtt */
    R.got = 0;
    R.want = m;
    R.rtt_mode = 1;
    R.rtts = calloc((size_t)m, sizeof(uint64_t));
    R.nrtt = 0;
    meter_reset();
    pthread_create(&pub_thread, NULL, rtt_publisher, &m);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(pub_thread, NULL);
    for (int i = 1; i < R.nrtt; i++) /* insertion sort: m is small */
        for (int j = i; j > 0 && R.rtts[j] < R.rtts[j - 1]; j--) {
            uint64_t t = R.rtts[j];
            R.rtts[j] = R.rtts[j - 1];
            R.rtts[j - 1] = t;
        }
    if (R.nrtt)
        printf("%c rtt: %d round trips, p50 %.3f ms, p99 %.3f ms, longest loop stall %.2f ms\n", d,
               R.nrtt, R.rtts[R.nrtt / 2] / 1e6, R.rtts[R.nrtt * 99 / 100] / 1e6, worst_ns / 1e6);
    free(R.rtts);
    R.rtt_mode = 0;
    /* blocked broker */
    if (getenv("BLOCK_CMD") && getenv("UNBLOCK_CMD")) {
        pthread_t t;
        system(getenv("BLOCK_CMD")); /* blocked before the first publish */
        pthread_create(&t, NULL, blocker, NULL);
        meter_reset();
        uint64_t t0 = uv_hrtime();
        static char big[BIG];
        int done = 0;
        if (d == 'A') {
            for (int i = 0; i < NBIG; i++) {
                amqp_bytes_t b = { BIG, big };
                amqp_basic_publish(a_st, 1, amqp_cstring_bytes(""), amqp_cstring_bytes("sink"), 0,
                                   0, NULL, b);
                uv_run(&loop, UV_RUN_NOWAIT);
            }
            printf("%c blocked broker: %d x 64 KB published from the loop in %.2f s, longest "
                   "loop stall %.1f ms\n",
                   d, NBIG, (uv_hrtime() - t0) / 1e9, worst_ns / 1e6);
        } else {
            for (int i = 0; i < NBIG; i++) {
                cel_broker_out_t o = { .exchange = "",
                                       .routing_key = "sink",
                                       .body = big,
                                       .body_len = BIG,
                                       .priority = -1 };
                cel_amqp_publish(b_conn, &o, on_pub_done, &done);
            }
            uv_run(&loop, UV_RUN_DEFAULT);
            printf("%c blocked broker: %d x 64 KB handed to the thread, all written after %.2f "
                   "s, longest loop stall %.1f ms\n",
                   d, NBIG, (uv_hrtime() - t0) / 1e9, worst_ns / 1e6);
        }
        pthread_join(t, NULL);
    }
    if (d == 'A') a_stop();
    else b_stop();
    uv_timer_stop(&meter);
    uv_close((uv_handle_t *)&meter, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s HOST PORT VHOST [N] [M]\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = atoi(argv[2]);
    vhost = argv[3];
    int n = argc > 4 ? atoi(argv[4]) : 50000;
    int m = argc > 5 ? atoi(argv[5]) : 1000;
    cel_log_init("designs", CEL_LOG_WARNING, 2);
    run_design('A', n, m);
    run_design('B', n, m);
    return 0;
}
