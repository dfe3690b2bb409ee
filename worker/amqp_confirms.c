/* amqp_confirms.c -- publishes awaiting the broker's confirm, answered in any order.
 *
 * See amqp_confirms.h. A ring of entries in sequence order; an answer
 * finds its entry by binary search, marks it settled and calls back; the
 * head moves past settled entries, so one old persistent publish waiting
 * for the disk holds memory for the newer ones behind it, nothing more.
 * Runs on a connection thread; no I/O.
 */
#include "amqp_confirms.h"

#include <stdlib.h>

#include "../common/err.h"

#define FIRST_CAP 64

static cel_amqp_confirm_t *at(const cel_amqp_confirms_t *k, size_t i) {
    return &k->ring[(k->head + i) % k->cap];
}

int cel_amqp_confirms_push(cel_amqp_confirms_t *k, uint64_t seq, void *op) {
    if (k->n == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : FIRST_CAP;
        cel_amqp_confirm_t *r = malloc(cap * sizeof(*r));
        if (!r) return CEL_ENOMEM;
        for (size_t i = 0; i < k->n; i++) r[i] = *at(k, i);
        free(k->ring);
        k->ring = r;
        k->cap = cap;
        k->head = 0;
    }
    *at(k, k->n++) = (cel_amqp_confirm_t){ seq, op, 0 };
    return CEL_OK;
}

/* Index of the first entry with seq >= tag (n when none). */
static size_t lower_bound(const cel_amqp_confirms_t *k, uint64_t tag) {
    size_t lo = 0, hi = k->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (at(k, mid)->seq < tag) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int settle_one(cel_amqp_confirm_t *e, int ok, cel_amqp_confirm_fn fn, void *ctx) {
    if (e->settled) return 0;
    e->settled = 1;
    fn(ctx, e->op, ok);
    return 1;
}

size_t cel_amqp_confirms_settle(cel_amqp_confirms_t *k, uint64_t tag, int multiple, int ok,
                                cel_amqp_confirm_fn fn, void *ctx) {
    size_t done = 0;
    if (multiple) {
        for (size_t i = 0; i < k->n && at(k, i)->seq <= tag; i++)
            done += settle_one(at(k, i), ok, fn, ctx);
    } else {
        size_t i = lower_bound(k, tag);
        if (i < k->n && at(k, i)->seq == tag) done += settle_one(at(k, i), ok, fn, ctx);
    }
    while (k->n && at(k, 0)->settled) {
        k->head = (k->head + 1) % k->cap;
        k->n--;
    }
    return done;
}

void cel_amqp_confirms_fail_all(cel_amqp_confirms_t *k, cel_amqp_confirm_fn fn, void *ctx) {
    while (k->n) {
        settle_one(at(k, 0), 0, fn, ctx);
        k->head = (k->head + 1) % k->cap;
        k->n--;
    }
}

size_t cel_amqp_confirms_pending(const cel_amqp_confirms_t *k) {
    size_t n = 0;
    for (size_t i = 0; i < k->n; i++) n += !at(k, i)->settled;
    return n;
}

void cel_amqp_confirms_free(cel_amqp_confirms_t *k) {
    free(k->ring);
    k->ring = NULL;
    k->n = k->cap = k->head = 0;
}
