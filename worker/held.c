/* held.c -- tag -> held message copies: a chained hash table that doubles as it fills.
 *
 * One allocation per entry (the struct, the tag, the key and the message in
 * one block), FNV-1a over the tag, buckets a power of two, grown when the
 * count passes the bucket count. Pure; no I/O; main process.
 */
#include "held.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../common/err.h"

typedef struct entry entry_t;
struct entry {
    entry_t *next;
    uint32_t hash;
    cel_held_msg_t m; /* its strings point into the same block, after the struct */
};

struct cel_held {
    entry_t **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
};

static uint32_t fnv1a(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

cel_held_t *cel_held_new(void) {
    cel_held_t *h = calloc(1, sizeof(*h));
    if (!h) return NULL;
    h->nbuckets = 64;
    if (!(h->buckets = calloc(h->nbuckets, sizeof(*h->buckets)))) {
        free(h);
        return NULL;
    }
    return h;
}

void cel_held_free(cel_held_t *h) {
    if (!h) return;
    for (size_t i = 0; i < h->nbuckets; i++)
        for (entry_t *e = h->buckets[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    free(h->buckets);
    free(h);
}

static entry_t **find(const cel_held_t *h, const char *tag, uint32_t hash) {
    entry_t **p = &h->buckets[hash & (h->nbuckets - 1)];
    for (; *p; p = &(*p)->next)
        if ((*p)->hash == hash && strcmp((*p)->m.tag, tag) == 0) return p;
    return p;
}

/* Doubles the buckets; on allocation failure the table stays as it is. */
static void grow(cel_held_t *h) {
    size_t n = h->nbuckets * 2;
    entry_t **nb = calloc(n, sizeof(*nb));
    if (!nb) return;
    for (size_t i = 0; i < h->nbuckets; i++)
        for (entry_t *e = h->buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
        }
    free(h->buckets);
    h->buckets = nb;
    h->nbuckets = n;
}

int cel_held_put(cel_held_t *h, const char *tag, const char *raw, size_t len, const char *key) {
    size_t tl = strlen(tag) + 1, kl = strlen(key) + 1;
    if (len > SIZE_MAX - sizeof(entry_t) - tl - kl - 1) return CEL_ENOMEM;
    entry_t *e = malloc(sizeof(*e) + tl + kl + len + 1);
    if (!e) return CEL_ENOMEM;
    char *p = (char *)(e + 1);
    memcpy(p, tag, tl);
    e->m.tag = p, p += tl;
    memcpy(p, key, kl);
    e->m.key = p, p += kl;
    memcpy(p, raw, len);
    p[len] = '\0';
    e->m.raw = p;
    e->m.len = len;
    e->m.acking = 0;
    e->hash = fnv1a(tag);
    entry_t **slot = find(h, tag, e->hash);
    if (*slot) {
        e->next = (*slot)->next;
        free(*slot);
        *slot = e;
        return CEL_OK;
    }
    e->next = NULL;
    *slot = e;
    if (++h->count > h->nbuckets) grow(h);
    return CEL_OK;
}

const cel_held_msg_t *cel_held_get(const cel_held_t *h, const char *tag) {
    entry_t **slot = find(h, tag, fnv1a(tag));
    return *slot ? &(*slot)->m : NULL;
}

void cel_held_set_acking(cel_held_t *h, const char *tag) {
    entry_t **slot = find(h, tag, fnv1a(tag));
    if (*slot) (*slot)->m.acking = 1;
}

void cel_held_del(cel_held_t *h, const char *tag) {
    entry_t **slot = find(h, tag, fnv1a(tag));
    if (!*slot) return;
    entry_t *e = *slot;
    *slot = e->next;
    free(e);
    h->count--;
}

size_t cel_held_count(const cel_held_t *h) { return h->count; }

void cel_held_each(const cel_held_t *h, void (*fn)(void *priv, const cel_held_msg_t *m),
                   void *priv) {
    for (size_t i = 0; i < h->nbuckets; i++)
        for (const entry_t *e = h->buckets[i]; e; e = e->next) fn(priv, &e->m);
}
