/* amqp_ceiling.c -- the broker's own ceiling: a consumer that does nothing but ack.
 *
 * bench/rabbitmq.py queues N diag.noop tasks with the Celery client (durable `celery`
 * queue, persistent messages, as for every worker in the race), then runs this instead of
 * a worker: basic.qos PREFETCH, basic.consume on the queue, and one basic.ack with
 * multiple=1 for everything delivered whenever the socket has nothing more buffered (the
 * fewest acks a consumer can send without acking ahead of delivery). No decoding, no task,
 * no result: what a worker could reach at most on this broker and this machine, measured
 * in the same run as the workers. Prints "ceiling <msgs/s> <cpu s per 1000>" on stdout.
 * Bench code, not part of the worker; blocking I/O on purpose.
 *
 *   build/bench/amqp_ceiling HOST PORT VHOST QUEUE N [PREFETCH]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void die_on(amqp_rpc_reply_t r, const char *what) {
    if (r.reply_type == AMQP_RESPONSE_NORMAL) return;
    fprintf(stderr, "amqp_ceiling: %s failed (reply type %d)\n", what, (int)r.reply_type);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT VHOST QUEUE N [PREFETCH]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *vhost = argv[3], *queue = argv[4];
    int port = atoi(argv[2]);
    long want = atol(argv[5]);
    int prefetch = argc > 6 ? atoi(argv[6]) : 8;

    amqp_connection_state_t st = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(st);
    if (!sock || amqp_socket_open(sock, host, port) != AMQP_STATUS_OK) {
        fprintf(stderr, "amqp_ceiling: cannot connect to %s:%d\n", host, port);
        return 1;
    }
    die_on(amqp_login(st, vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"), "login");
    amqp_channel_open(st, 1);
    die_on(amqp_get_rpc_reply(st), "channel.open");
    amqp_basic_qos(st, 1, 0, (uint16_t)prefetch, 0);
    die_on(amqp_get_rpc_reply(st), "basic.qos");
    amqp_basic_consume(st, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    die_on(amqp_get_rpc_reply(st), "basic.consume");

    long got = 0;
    uint64_t last_tag = 0, acked = 0;
    double t0 = 0, t1 = 0, c0 = 0;
    while (got < want) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(st);
        amqp_rpc_reply_t r = amqp_consume_message(st, &env, NULL, 0);
        die_on(r, "consume");
        if (!got) {
            t0 = now_s();
            c0 = cpu_s();
        }
        got++;
        last_tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (!amqp_data_in_buffer(st) && !amqp_frames_enqueued(st) && last_tag > acked) {
            amqp_basic_ack(st, 1, last_tag, 1);
            acked = last_tag;
        }
    }
    t1 = now_s();
    double c1 = cpu_s();
    if (last_tag > acked) amqp_basic_ack(st, 1, last_tag, 1);
    amqp_channel_close(st, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(st, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(st);
    double span = t1 - t0;
    printf("ceiling %.0f %.4f\n", span > 0 ? (double)(got - 1) / span : 0.0,
           (c1 - c0) / (double)got * 1000.0);
    return 0;
}
