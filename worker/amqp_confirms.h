/* amqp_confirms.h -- publishes of an AMQP channel in confirm mode that await the broker's answer.
 *
 * In confirm mode the broker answers every basic.publish with a basic.ack
 * (or basic.nack) carrying the publish's sequence number, or with
 * multiple=1 settling every one up to it. The answers need not come in
 * publish order: RabbitMQ confirms a transient message, or one its queue's
 * consumer has already acked, before an older persistent one that waits for
 * the disk ("acknowledgements can arrive in a different order compared to
 * their respective messages", RabbitMQ's confirms guide). So a single ack
 * settles exactly its sequence number, wherever it lies, and says nothing
 * about older ones. Pure bookkeeping: no I/O, no locks; one per connection,
 * used by its thread only (amqp_thread.c).
 */
#ifndef CEL_AMQP_CONFIRMS_H
#define CEL_AMQP_CONFIRMS_H

#include <stddef.h>
#include <stdint.h>

typedef struct cel_amqp_confirm {
    uint64_t seq;
    void *op;    /* what the caller completes; may be NULL */
    int settled; /* answered, still in the ring behind an older unanswered one */
} cel_amqp_confirm_t;

typedef struct cel_amqp_confirms {
    cel_amqp_confirm_t *ring;
    size_t n, cap, head; /* n entries from head, sequence numbers increasing */
} cel_amqp_confirms_t;

/* Called once per settled publish: ok=1 for basic.ack, 0 for basic.nack
 * or a connection that went away. */
typedef void (*cel_amqp_confirm_fn)(void *ctx, void *op, int ok);

/* Records a publish; seq must be above every recorded one. CEL_ENOMEM (nothing recorded) or CEL_OK. */
int cel_amqp_confirms_push(cel_amqp_confirms_t *k, uint64_t seq, void *op);

/* The broker's answer for tag (multiple: every sequence number <= tag).
 * Calls fn for each publish it settles, in sequence order; answers for
 * unknown or already settled numbers are ignored. Returns how many it settled. */
size_t cel_amqp_confirms_settle(cel_amqp_confirms_t *k, uint64_t tag, int multiple, int ok,
                                cel_amqp_confirm_fn fn, void *ctx);

/* Every publish not yet answered fails (fn with ok=0): the connection is gone. */
void cel_amqp_confirms_fail_all(cel_amqp_confirms_t *k, cel_amqp_confirm_fn fn, void *ctx);

/* Publishes awaiting an answer. */
size_t cel_amqp_confirms_pending(const cel_amqp_confirms_t *k);

void cel_amqp_confirms_free(cel_amqp_confirms_t *k);

#endif
