/* amqp_acks.h -- which delivery tags of an AMQP channel are settled, for acks with multiple=1.
 *
 * AMQP's basic.ack with multiple=1 acks every unacked delivery up to its tag
 * on the channel. Tasks finish out of order, so it may only cover a run of
 * tags that are all settled: acked by the worker, rejected, or delivered to
 * a no-ack consumer. This tracker keeps the floor (every tag at or below it
 * is settled) and a bitmap of the settled tags above it; the connection
 * thread (amqp_thread.c) marks each tag as it settles, then moves the floor
 * and sends one multiple ack up to it, and single acks for what lies above
 * a gap. Pure bookkeeping: no I/O, no locks; one per connection, used by
 * its thread only.
 */
#ifndef CEL_AMQP_ACKS_H
#define CEL_AMQP_ACKS_H

#include <stddef.h>
#include <stdint.h>

/* Tags tracked above the floor; one further up is acked singly and keeps
 * the floor below it for the rest of the connection (a delivery that was
 * never settled, a million deliveries back). */
#define CEL_AMQP_ACKS_MAX_SPAN ((uint64_t)1 << 20)

typedef struct cel_amqp_acks {
    uint64_t floor; /* every tag <= floor is settled (tags start at 1) */
    uint8_t *bits;  /* tag t, floor < t <= floor + cap: bit (t & (cap - 1)) */
    uint64_t cap;   /* bits; a power of two, 0 before the first mark */
} cel_amqp_acks_t;

/* A new connection: nothing delivered, nothing settled. Keeps the memory. */
void cel_amqp_acks_reset(cel_amqp_acks_t *k);

void cel_amqp_acks_free(cel_amqp_acks_t *k);

/* Marks tag settled: 1 when marked; 0 when it was settled already (at or
 * below the floor, or marked); -1 when it cannot be tracked (past
 * CEL_AMQP_ACKS_MAX_SPAN above the floor, or out of memory): then it must
 * be acked on its own, and the floor never passes it. */
int cel_amqp_acks_mark(cel_amqp_acks_t *k, uint64_t tag);

/* Moves the floor past every settled tag right above it; returns it. */
uint64_t cel_amqp_acks_advance(cel_amqp_acks_t *k);

#endif
