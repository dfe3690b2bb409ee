/* held.h -- the messages a transport holds for the consumer, by delivery tag.
 *
 * A copy of each message taken from the broker and not yet acked or given
 * back, with the queue key it came from: what lets the Redis transport put a
 * message back in `unacked` (or in its queue) when the server lost it (a
 * FLUSHALL, a restart without persistence). A hash table of tag -> entry;
 * every string is copied in and owned here. Pure; no I/O; main process.
 */
#ifndef CEL_HELD_H
#define CEL_HELD_H

#include <stddef.h>

typedef struct cel_held cel_held_t;

/* One held message; borrowed from the table until it changes. */
typedef struct cel_held_msg {
    const char *tag;
    const char *raw; /* the message as taken (not NUL-terminated as far as callers know) */
    size_t len;
    const char *key; /* the queue key it was taken from */
    int acking;      /* its ack is on its way by other means (cel_held_set_acking) */
} cel_held_msg_t;

/* An empty table; NULL when out of memory. */
cel_held_t *cel_held_new(void);

/* Frees the table and every copy; NULL is a no-op. */
void cel_held_free(cel_held_t *h);

/* Keeps a copy of raw[0..len) and key under tag (replacing what tag held).
 * CEL_OK or CEL_ENOMEM (the table is unchanged then). */
int cel_held_put(cel_held_t *h, const char *tag, const char *raw, size_t len, const char *key);

/* The message held under tag, or NULL. */
const cel_held_msg_t *cel_held_get(const cel_held_t *h, const char *tag);

/* Marks the message held under tag as being acked by other means (the result
 * backend's store_ack): once that may have run, the server not having it is no
 * longer a loss to repair. Nothing when tag holds nothing. */
void cel_held_set_acking(cel_held_t *h, const char *tag);

/* Drops what tag holds (nothing when it holds nothing). */
void cel_held_del(cel_held_t *h, const char *tag);

/* Messages held now. */
size_t cel_held_count(const cel_held_t *h);

/* Calls fn for every held message, in no particular order; fn must not change
 * the table. */
void cel_held_each(const cel_held_t *h, void (*fn)(void *priv, const cel_held_msg_t *m),
                   void *priv);

#endif
