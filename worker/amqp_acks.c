/* amqp_acks.c -- settled delivery tags of an AMQP channel: a floor and a bitmap above it.
 *
 * See amqp_acks.h. The bitmap is a ring indexed by tag modulo its size, so
 * moving the floor only clears the bits it passes; it doubles when a tag
 * lands past its end, up to CEL_AMQP_ACKS_MAX_SPAN bits (128 KiB). Runs on
 * a connection thread; no I/O.
 */
#include "amqp_acks.h"

#include <stdlib.h>
#include <string.h>

#define FIRST_CAP 1024 /* bits */

static int bit_get(const cel_amqp_acks_t *k, uint64_t tag) {
    uint64_t i = tag & (k->cap - 1);
    return (k->bits[i >> 3] >> (i & 7)) & 1;
}

static void bit_set(cel_amqp_acks_t *k, uint64_t tag, int on) {
    uint64_t i = tag & (k->cap - 1);
    if (on) k->bits[i >> 3] |= (uint8_t)(1u << (i & 7));
    else k->bits[i >> 3] &= (uint8_t) ~(1u << (i & 7));
}

void cel_amqp_acks_reset(cel_amqp_acks_t *k) {
    k->floor = 0;
    if (k->bits) memset(k->bits, 0, (size_t)(k->cap / 8));
}

void cel_amqp_acks_free(cel_amqp_acks_t *k) {
    free(k->bits);
    k->bits = NULL;
    k->cap = 0;
    k->floor = 0;
}

/* Room for tags up to floor + span: 0, or -1 out of memory (the old map stays). */
static int grow(cel_amqp_acks_t *k, uint64_t span) {
    uint64_t cap = k->cap ? k->cap : FIRST_CAP;
    while (cap < span) cap *= 2;
    if (cap == k->cap) return 0;
    uint8_t *bits = calloc((size_t)(cap / 8), 1);
    if (!bits) return -1;
    cel_amqp_acks_t n = { k->floor, bits, cap };
    for (uint64_t t = k->floor + 1; k->cap && t <= k->floor + k->cap; t++)
        if (bit_get(k, t)) bit_set(&n, t, 1);
    free(k->bits);
    *k = n;
    return 0;
}

int cel_amqp_acks_mark(cel_amqp_acks_t *k, uint64_t tag) {
    if (tag <= k->floor) return 0;
    uint64_t span = tag - k->floor;
    if (span > CEL_AMQP_ACKS_MAX_SPAN) return -1;
    if (span > k->cap && grow(k, span) != 0) return -1;
    if (bit_get(k, tag)) return 0;
    bit_set(k, tag, 1);
    return 1;
}

uint64_t cel_amqp_acks_advance(cel_amqp_acks_t *k) {
    while (k->cap && bit_get(k, k->floor + 1)) {
        bit_set(k, k->floor + 1, 0);
        k->floor++;
    }
    return k->floor;
}
