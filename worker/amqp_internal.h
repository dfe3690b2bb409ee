/* amqp_internal.h -- what amqp_conn.c (loop side) and amqp_thread.c (its thread) share.
 *
 * The command list (loop -> thread), the event list (thread -> loop), the
 * remembered topology and the connection object itself. Fields named t_
 * belong to the thread; the lists are guarded by `mu`; everything else is
 * the loop's, or written before the thread starts. Not a public header.
 */
#ifndef CEL_AMQP_INTERNAL_H
#define CEL_AMQP_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>

#include <amqp.h>
#include <jansson.h>
#include <uv.h>

#include "amqp_acks.h"
#include "amqp_confirms.h"
#include "amqp_conn.h"

#define CHANNEL 1 /* the one channel of a connection */

/* ---- commands (loop -> thread) and events (thread -> loop) ----------------- */

enum {
    C_EXCHANGE,
    C_QUEUE,
    C_BIND,
    C_CONSUME,
    C_CANCEL,
    C_QOS,
    C_PUBLISH,
    C_ACK,
    C_REJECT,
    C_CLOSE,
};

struct op;

enum { E_UP, E_DOWN, E_DELIVERY, E_DONE, E_CLOSED };

typedef struct evt {
    struct evt *next;
    int kind;
    uint64_t gen;
    cel_amqp_delivery_t *d;
    struct op *op;
    int ok;
} evt_t;

/* A loop-side completion: done(priv, ok) when the thread is through with it.
 * Its event is part of it, so reporting a completion never allocates. */
typedef struct op {
    cel_broker_done_fn done;
    void *priv;
    evt_t ev;
} op_t;

typedef struct cmd {
    struct cmd *next;
    int kind;
    char *a, *b, *c; /* names: exchange/queue, type/exchange, routing key */
    int flag1, flag2;
    int count;
    json_t *args;  /* queue arguments or message headers (owned) */
    json_t *props; /* publish: the remaining properties (owned) */
    uint8_t *body; /* publish */
    size_t len;
    uint64_t gen, tag;
    op_t *op;      /* NULL when no one waits */
    char ctag[32]; /* consume: its consumer tag */
} cmd_t;

/* A remembered declaration (thread side). */
typedef struct topo {
    int kind; /* C_EXCHANGE, C_QUEUE, C_BIND, C_CONSUME */
    char *a, *b, *c;
    int flag1, flag2;
    json_t *args;
    char ctag[32];
} topo_t;

struct cel_amqp {
    /* loop side */
    uv_loop_t *loop;
    uv_async_t async;
    uv_timer_t grace;
    uv_check_t flush_check; /* hands the commands of a loop turn over at its end ... */
    uv_idle_t flush_idle;   /* ... or before the next poll, whichever comes first */
    cmd_t *l_head, *l_tail; /* acks, rejects and publishes not yet handed over */
    cel_amqp_cbs_t cbs;
    void *priv;
    int up;
    uint64_t gen;
    int pending;
    int closing;
    int thread_done;
    int ctag_next;
    void (*on_closed)(void *);
    void *closed_priv;
    int handles_left;
    /* configuration (read by both, never written after new) */
    cel_amqp_url_t url;
    char name[32];
    char ssl_ca[1024], ssl_cert[1024], ssl_key[1024];
    int ssl_verify, heartbeat, confirm, quiet;
    size_t max_body;
    /* shared */
    uv_mutex_t mu;
    cmd_t *cmd_head, *cmd_tail;
    evt_t *evt_head, *evt_tail;
    int efd;
    atomic_int sockfd; /* the thread's socket, for the close grace cut-off */
    uv_thread_t thread;
    int thread_started;
    /* thread side */
    amqp_connection_state_t t_st;
    int t_connected;
    uint64_t t_gen;
    atomic_int
        t_closing;   /* set by the thread, or by the loop when a close command cannot be made */
    int t_announced; /* E_UP sent for this connection */
    int t_wake;      /* the eventfd was readable: drain it before taking commands */
    topo_t *t_topo;
    int t_ntopo;
    int t_qos;
    uint64_t t_seq; /* last publish sequence number on this connection */
    cel_amqp_confirms_t t_confirms; /* publishes awaiting the broker's confirm */
    double t_last_rx;
    /* a delivery being assembled */
    cel_amqp_delivery_t *t_cur;
    size_t t_got;
    int t_skip; /* a basic.return's content: read and dropped */
    size_t t_skip_left;
    evt_t *t_out_head, *t_out_tail; /* events not yet handed over */
    /* acks: settled tags of this connection, and the acks of the command batch being
     * carried out (sent together at its end, a run of them as one multiple ack) */
    cel_amqp_acks_t t_acks;
    uint64_t *t_ackq_tag;
    op_t **t_ackq_op;
    size_t t_nackq, t_capackq;
};

/* A delivery's basic properties copied out of librabbitmq's frame pool by
 * the thread (one pool page, not one allocation per header), turned into
 * JSON by the loop (cel_amqp_raw_props_convert) before on_delivery. */
typedef struct raw_props {
    amqp_pool_t pool;
    amqp_basic_properties_t p;
} raw_props_t;

/* Fills d->props and d->headers (or d->bad_headers) from d->raw_ and frees it. */
void cel_amqp_raw_props_convert(cel_amqp_delivery_t *d);

/* Frees a command and what it owns (not its op). */
void cel_amqp_cmd_free(cmd_t *c);

/* The connection thread (uv_thread_create's entry): connects, serves, and
 * reconnects until a close command; posts E_CLOSED last. */
void cel_amqp_thread_main(void *arg);

#endif
