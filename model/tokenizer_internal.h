/* tokenizer_internal.h -- the tokenizer's state, shared by tokenizer.c and tokenizer_encode.c.
 *
 * Not part of the public API (model/tokenizer.h). Holds the struct, the hash maps' layout and
 * the small lookups both files need (UTF-8 reading, vocab and merge lookups, the added-token
 * trie walk) as static inline functions. A loaded tokenizer is never written again.
 */
#ifndef CEL_TOKENIZER_INTERNAL_H
#define CEL_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tokenizer.h"

#define MAX_STEPS 8 /* primitive pre-tokenizer steps */
#define NO_ID     UINT32_MAX

enum { STEP_PREFIX_SPACE, STEP_SPLIT_GPT2, STEP_SPLIT_LLAMA3, STEP_DIGITS };

typedef struct {
    int kind;
    int arg; /* LLAMA3: most digits per piece; DIGITS: 1 for individual_digits */
} step_t;

/* uint64 key -> two uint32 values, open addressing; UINT64_MAX marks an empty slot. */
typedef struct {
    uint64_t key;
    uint32_t a, b;
} pslot_t;

typedef struct {
    pslot_t *slots;
    size_t mask;
} pmap_t;

typedef struct {
    uint32_t id, off, len; /* content at tok->arena + off */
    uint8_t special, lstrip, rstrip, single_word;
} added_t;

struct cel_tokenizer {
    size_t n_ids; /* largest id + 1 */
    char *arena;  /* NUL-terminated strings and decoded bytes */
    size_t arena_len, arena_cap;
    uint32_t *voff;    /* [n_ids] model.vocab string of each id, NO_ID if none */
    uint32_t *vlen;    /* [n_ids] */
    uint32_t *doff;    /* [n_ids] decoded bytes of each id (added content wins) */
    uint32_t *dlen;    /* [n_ids] */
    int32_t *added_of; /* [n_ids] index into added, -1 if none */
    uint32_t *vslots;  /* model.vocab hash: id + 1, 0 empty */
    size_t vmask;
    pmap_t merges;       /* (left id << 32 | right id) -> (rank, new id) */
    pmap_t trie;         /* (node << 8 | byte) -> child node, over added contents */
    uint32_t *trie_term; /* [trie_nodes] added index + 1 ending here, 0 if none */
    size_t trie_nodes;
    added_t *added;
    size_t n_added;
    int32_t byte_id[256]; /* id of each byte's one-character token, -1 if absent */
    uint8_t bmap[256][2]; /* UTF-8 of each byte's alphabet character */
    uint8_t bmap_len[256];
    step_t steps[MAX_STEPS];
    int n_steps;
    int ignore_merges, fuse_unk;
    int32_t unk_id, bos, eos;
};

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one (overlong,
 * surrogate, past U+10FFFF, truncated). *cp gets the code point. */
static inline size_t utf8_get(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        len = 2;
        *cp = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        *cp = b & 0x0F;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        *cp = b & 0x07;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    for (size_t k = 1; k < len; k++) {
        if (k >= n || s[k] < lo || s[k] > hi) return 0;
        lo = 0x80;
        hi = 0xBF;
        *cp = (*cp << 6) | (s[k] & 0x3F);
    }
    return len;
}

static inline uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static inline uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* Finds key's slot: the one holding it, or the empty one where it belongs. */
static inline pslot_t *pmap_slot(const pmap_t *m, uint64_t key) {
    size_t i = hash_u64(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) i = (i + 1) & m->mask;
    return &m->slots[i];
}

static inline const pslot_t *pmap_get(const pmap_t *m, uint64_t key) {
    const pslot_t *s = pmap_slot(m, key);
    return s->key == key ? s : NULL;
}

/* The model.vocab id of the n-byte token string s, or -1. */
static inline int32_t vocab_get(const cel_tokenizer_t *t, const char *s, size_t n) {
    size_t i = hash_bytes(s, n) & t->vmask;
    for (;;) {
        uint32_t v = t->vslots[i];
        if (v == 0) return -1;
        uint32_t id = v - 1;
        if (t->vlen[id] == n && memcmp(t->arena + t->voff[id], s, n) == 0) return (int32_t)id;
        i = (i + 1) & t->vmask;
    }
}

/* The longest added token starting at s[i], as an index into tok->added, or -1. */
static inline int added_at(const cel_tokenizer_t *t, const uint8_t *s, size_t n, size_t i,
                           size_t *end) {
    uint32_t node = 0;
    int best = -1;
    for (size_t k = i; k < n; k++) {
        const pslot_t *sl = pmap_get(&t->trie, (uint64_t)node << 8 | s[k]);
        if (!sl) break;
        node = sl->a;
        if (t->trie_term[node]) {
            best = (int)t->trie_term[node] - 1;
            *end = k + 1;
        }
    }
    return best;
}

#endif
