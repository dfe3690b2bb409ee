/* tokenizer_encode.c -- byte-level BPE tokenizer: pre-tokenize, merge, encode, decode.
 *
 * Follows Hugging Face `tokenizers` (added_vocabulary, pre_tokenizers/{byte_level,split,
 * digits}, models/bpe/word.rs, decoders/byte_level): added tokens are cut out first
 * (leftmost-longest), each remaining segment goes through the pre-tokenizer steps
 * (ByteLevel's prefix space, the GPT-2 or Llama 3 split pattern, Digits), each piece is mapped
 * to GPT-2's byte alphabet and merged by rank with a heap (O(n log n) per piece). The split
 * patterns are hand-written matchers with the regex engine's leftmost-first, backtracking
 * semantics; character classes come from unicode_tables.c. No I/O; all scratch memory is per
 * call, so any number of threads may use one tokenizer at once.
 */
#include "tokenizer_internal.h"

#include <stdlib.h>

#include "unicode_tables.h"

/* How many bytes one U+FFFD replaces at s (Rust's from_utf8_lossy / Unicode "maximal
 * subpart"): the longest prefix of a valid sequence, at least 1. */
static size_t utf8_bad_len(const uint8_t *s, size_t n) {
    uint8_t b = s[0];
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) len = 2;
    else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        lo = b == 0xE0 ? 0xA0 : 0x80;
        hi = b == 0xED ? 0x9F : 0xBF;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        lo = b == 0xF0 ? 0x90 : 0x80;
        hi = b == 0xF4 ? 0x8F : 0xBF;
    } else return 1;
    size_t k = 1;
    while (k < len && k < n && s[k] >= lo && s[k] <= hi) {
        lo = 0x80;
        hi = 0xBF;
        k++;
    }
    return k;
}

/* ---- pre-tokenizer patterns ---- */

/* Class and length of the character at s[i]. The text was validated as UTF-8 and pieces
 * are cut at character boundaries; a bad byte would still count as one OTHER character. */
static int class_at(const uint8_t *s, size_t n, size_t i, size_t *len) {
    uint32_t cp = 0;
    *len = utf8_get(s + i, n - i, &cp);
    if (*len == 0) {
        *len = 1;
        return CEL_UC_OTHER;
    }
    return cel_unicode_class(cp);
}

/* End of the run of class c starting at i; at most max characters. */
static size_t run_end(const uint8_t *s, size_t n, size_t i, int c, size_t max) {
    size_t l, count = 0;
    while (i < n && count < max && class_at(s, n, i, &l) == c) {
        i += l;
        count++;
    }
    return i;
}

/* The whitespace alternatives shared by both patterns, from i where a space character is:
 * \s+(?!\S) (the run, less its last character when a non-space follows and the run has
 * two or more), else \s+ (the whole run). */
static size_t space_tail(size_t n, size_t i, size_t j, size_t last) {
    if (j == n) return j;      /* nothing follows: (?!\S) holds at the end */
    if (last > i) return last; /* give back the last space so it can lead the next word */
    return j;
}

/* End of the contraction 's|'t|'re|'ve|'m|'ll|'d at i, or i. With fold, case-insensitive
 * as (?i:...) is, where U+017F (long s) folds to s. */
static size_t contraction(const uint8_t *s, size_t n, size_t i, int fold) {
    if (s[i] != '\'' || i + 1 >= n) return i;
    uint8_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
    if (fold) {
        if (a == 0xC5 && b == 0xBF) return i + 3;
        a = (uint8_t)(a >= 'A' && a <= 'Z' ? a + 32 : a);
        b = (uint8_t)(b >= 'A' && b <= 'Z' ? b + 32 : b);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return i;
}

/* End of the GPT-2 pattern's match at i:
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const uint8_t *s, size_t n, size_t i) {
    size_t j = contraction(s, n, i, 0), l, l1;
    if (j > i) return j;
    int c = class_at(s, n, i, &l);
    if (s[i] == ' ' && i + 1 < n) {
        int c1 = class_at(s, n, i + 1, &l1);
        if (c1 != CEL_UC_SPACE) return run_end(s, n, i + 1, c1, SIZE_MAX);
    }
    if (c != CEL_UC_SPACE) return run_end(s, n, i, c, SIZE_MAX);
    size_t last = i;
    j = i;
    while (j < n && class_at(s, n, j, &l) == CEL_UC_SPACE) {
        last = j;
        j += l;
    }
    return space_tail(n, i, j, last);
}

/* End of the Llama 3 pattern's match at i (maxdig 3; Qwen2's has 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 * ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t match_llama3(const uint8_t *s, size_t n, size_t i, int maxdig) {
    size_t j = contraction(s, n, i, 1), l, l1;
    if (j > i) return j;
    int c = class_at(s, n, i, &l);
    if (c == CEL_UC_LETTER) return run_end(s, n, i, CEL_UC_LETTER, SIZE_MAX);
    if (c != CEL_UC_NUMBER && s[i] != '\r' && s[i] != '\n' && i + l < n &&
        class_at(s, n, i + l, &l1) == CEL_UC_LETTER)
        return run_end(s, n, i + l, CEL_UC_LETTER, SIZE_MAX);
    if (c == CEL_UC_NUMBER) return run_end(s, n, i, CEL_UC_NUMBER, (size_t)maxdig);
    j = i;
    if (s[i] == ' ' && i + 1 < n && class_at(s, n, i + 1, &l1) == CEL_UC_OTHER) j = i + 1;
    if (class_at(s, n, j, &l1) == CEL_UC_OTHER) {
        j = run_end(s, n, j, CEL_UC_OTHER, SIZE_MAX);
        while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    /* c is a space: \s*[\r\n]+ ends after the run's last \r or \n */
    size_t last = i, nl = SIZE_MAX;
    j = i;
    while (j < n && class_at(s, n, j, &l) == CEL_UC_SPACE) {
        if (s[j] == '\r' || s[j] == '\n') nl = j;
        last = j;
        j += l;
    }
    if (nl != SIZE_MAX) return nl + 1;
    return space_tail(n, i, j, last);
}

/* ---- encoding ---- */

typedef struct {
    uint32_t rank, pos, id;
} merge_t;

typedef struct {
    const cel_tokenizer_t *tok;
    int32_t *ids;
    size_t n, cap;
    int32_t *sym, *prev, *next; /* BPE symbols of one piece */
    merge_t *heap;
    size_t scap, hn;
    char *map; /* byte-mapped piece for ignore_merges */
    size_t mcap;
    uint8_t *pre[MAX_STEPS]; /* prefix-space copies, one per step */
    size_t precap[MAX_STEPS];
} enc_t;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return CEL_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return CEL_ENOMEM;
    *p = q;
    *cap = c;
    return CEL_OK;
}

static int push_id(enc_t *e, int32_t id) {
    if (e->n == e->cap && grow((void **)&e->ids, &e->cap, e->n + 1, sizeof(int32_t)) != CEL_OK)
        return CEL_ENOMEM;
    e->ids[e->n++] = id;
    return CEL_OK;
}

static int merge_less(const merge_t *a, const merge_t *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

/* Pushes the merge of the pair at pos (symbol pos and its next), if the pair has one. */
static void heap_push_pair(enc_t *e, uint32_t pos) {
    const pslot_t *m = pmap_get(&e->tok->merges, (uint64_t)(uint32_t)e->sym[pos] << 32 |
                                                     (uint32_t)e->sym[e->next[pos]]);
    if (!m) return;
    size_t i = e->hn++;
    e->heap[i] = (merge_t){ m->a, pos, m->b };
    while (i > 0 && merge_less(&e->heap[i], &e->heap[(i - 1) / 2])) {
        merge_t t = e->heap[i];
        e->heap[i] = e->heap[(i - 1) / 2];
        e->heap[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static merge_t heap_pop(enc_t *e) {
    merge_t top = e->heap[0];
    e->heap[0] = e->heap[--e->hn];
    for (size_t i = 0;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < e->hn && merge_less(&e->heap[l], &e->heap[m])) m = l;
        if (r < e->hn && merge_less(&e->heap[r], &e->heap[m])) m = r;
        if (m == i) break;
        merge_t t = e->heap[i];
        e->heap[i] = e->heap[m];
        e->heap[m] = t;
        i = m;
    }
    return top;
}

/* Encodes one pre-token: its bytes become their alphabet tokens, then the lowest-ranked
 * mergeable pair (leftmost on ties) merges until none is left -- HF's Word::merge_all. */
static int bpe_piece(enc_t *e, const uint8_t *s, size_t n) {
    const cel_tokenizer_t *t = e->tok;
    if (t->ignore_merges) {
        if (grow((void **)&e->map, &e->mcap, 2 * n, 1) != CEL_OK) return CEL_ENOMEM;
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(e->map + m, t->bmap[s[i]], t->bmap_len[s[i]]);
            m += t->bmap_len[s[i]];
        }
        int32_t id = vocab_get(t, e->map, m);
        if (id >= 0) return push_id(e, id);
    }
    if (n > e->scap) {
        /* sym/prev/next hold n symbols; the heap at most 3n entries: n-1 first pairs,
         * then two per merge */
        size_t c = e->scap ? e->scap : 64;
        while (c < n) c *= 2;
        int32_t *p;
        if (!(p = realloc(e->sym, c * sizeof(int32_t)))) return CEL_ENOMEM;
        e->sym = p;
        if (!(p = realloc(e->prev, c * sizeof(int32_t)))) return CEL_ENOMEM;
        e->prev = p;
        if (!(p = realloc(e->next, c * sizeof(int32_t)))) return CEL_ENOMEM;
        e->next = p;
        merge_t *h = realloc(e->heap, 3 * c * sizeof(merge_t));
        if (!h) return CEL_ENOMEM;
        e->heap = h;
        e->scap = c;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        if (id < 0) {
            if (t->unk_id < 0) continue; /* HF drops characters it cannot represent */
            if (t->fuse_unk && m > 0 && e->sym[m - 1] == t->unk_id) continue;
            id = t->unk_id;
        }
        e->sym[m++] = id;
    }
    if (m == 0) return CEL_OK;
    for (size_t i = 0; i < m; i++) {
        e->prev[i] = (int32_t)i - 1;
        e->next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    e->hn = 0;
    for (size_t i = 0; i + 1 < m; i++) heap_push_pair(e, (uint32_t)i);
    while (e->hn > 0) {
        merge_t top = heap_pop(e);
        int32_t nx = e->next[top.pos];
        if (e->sym[top.pos] < 0 || nx < 0) continue;
        const pslot_t *cur =
            pmap_get(&t->merges, (uint64_t)(uint32_t)e->sym[top.pos] << 32 | (uint32_t)e->sym[nx]);
        if (!cur || cur->b != top.id)
            continue; /* stale: a neighbour merged since this was queued */
        e->sym[top.pos] = (int32_t)top.id;
        e->sym[nx] = -1;
        e->next[top.pos] = e->next[nx];
        if (e->next[nx] >= 0) e->prev[e->next[nx]] = (int32_t)top.pos;
        /* each merge queues at most two pairs, so the heap stays under 3m */
        if (e->prev[top.pos] >= 0) heap_push_pair(e, (uint32_t)e->prev[top.pos]);
        if (e->next[top.pos] >= 0) heap_push_pair(e, top.pos);
    }
    for (int32_t i = 0; i >= 0; i = e->next[i])
        if (push_id(e, e->sym[i]) != CEL_OK) return CEL_ENOMEM;
    return CEL_OK;
}

/* Applies pre-tokenizer steps k.. to the piece s[0..n), then BPE to each final piece. */
static int run_steps(enc_t *e, int k, const uint8_t *s, size_t n) {
    const cel_tokenizer_t *t = e->tok;
    if (n == 0) return CEL_OK; /* HF drops empty splits */
    if (k == t->n_steps) return bpe_piece(e, s, n);
    const step_t *st = &t->steps[k];
    int rc = CEL_OK;
    size_t i = 0, j, l;
    switch (st->kind) {
    case STEP_PREFIX_SPACE:
        if (s[0] == ' ') return run_steps(e, k + 1, s, n);
        if (grow((void **)&e->pre[k], &e->precap[k], n + 1, 1) != CEL_OK) return CEL_ENOMEM;
        e->pre[k][0] = ' ';
        memcpy(e->pre[k] + 1, s, n);
        return run_steps(e, k + 1, e->pre[k], n + 1);
    case STEP_SPLIT_GPT2:
    case STEP_SPLIT_LLAMA3:
        while (i < n && rc == CEL_OK) {
            j = st->kind == STEP_SPLIT_GPT2 ? match_gpt2(s, n, i) : match_llama3(s, n, i, st->arg);
            rc = run_steps(e, k + 1, s + i, j - i);
            i = j;
        }
        return rc;
    default: /* STEP_DIGITS: digits isolated, one each or as runs */
        while (i < n && rc == CEL_OK) {
            if (class_at(s, n, i, &l) == CEL_UC_NUMBER)
                j = st->arg ? i + l : run_end(s, n, i, CEL_UC_NUMBER, SIZE_MAX);
            else {
                j = i;
                while (j < n && class_at(s, n, j, &l) != CEL_UC_NUMBER) j += l;
            }
            rc = run_steps(e, k + 1, s + i, j - i);
            i = j;
        }
        return rc;
    }
}

/* True when the character ending at s[i) (before) or starting at s[i] is a word character
 * (letter, number or '_'); used by single_word added tokens. */
static int word_char_before(const uint8_t *s, size_t i) {
    if (i == 0) return 0;
    size_t b = i - 1;
    while (b > 0 && (s[b] & 0xC0) == 0x80) b--;
    size_t l;
    int c = class_at(s, i, b, &l);
    return c == CEL_UC_LETTER || c == CEL_UC_NUMBER || s[b] == '_';
}

static int word_char_at(const uint8_t *s, size_t n, size_t i) {
    if (i >= n) return 0;
    size_t l;
    int c = class_at(s, n, i, &l);
    return c == CEL_UC_LETTER || c == CEL_UC_NUMBER || s[i] == '_';
}

static int encode(enc_t *e, const uint8_t *s, size_t n, int add_bos) {
    const cel_tokenizer_t *t = e->tok;
    int rc;
    if (add_bos && t->bos >= 0 && (rc = push_id(e, t->bos)) != CEL_OK) return rc;
    size_t seg = 0; /* start of the text not yet encoded */
    for (size_t i = 0; i < n && t->n_added > 0; i++) {
        size_t end = 0, l;
        int a = added_at(t, s, n, i, &end);
        if (a < 0) continue;
        const added_t *ad = &t->added[a];
        if (ad->single_word && (word_char_before(s, i) || word_char_at(s, n, end))) continue;
        size_t start = i;
        if (ad->lstrip)
            while (start > seg) {
                size_t b = start - 1;
                while (b > seg && (s[b] & 0xC0) == 0x80) b--;
                if (class_at(s, n, b, &l) != CEL_UC_SPACE) break;
                start = b;
            }
        if (ad->rstrip)
            while (end < n && class_at(s, n, end, &l) == CEL_UC_SPACE) end += l;
        if ((rc = run_steps(e, 0, s + seg, start - seg)) != CEL_OK ||
            (rc = push_id(e, (int32_t)ad->id)) != CEL_OK)
            return rc;
        seg = end;
        i = end - 1;
    }
    return run_steps(e, 0, s + seg, n - seg);
}

int cel_tokenizer_encode(const cel_tokenizer_t *tok, const char *text, size_t len, int add_bos,
                         int32_t **ids, size_t *n, cel_err_t *err) {
    *ids = NULL;
    *n = 0;
    if (!tok || (!text && len))
        return cel_err_set(err, CEL_EINVAL, "tokenizer: no tokenizer or text");
    if (len > CEL_TOKENIZER_MAX_INPUT_BYTES)
        return cel_err_set(err, CEL_ELIMIT, "tokenizer: text of %zu bytes (max %u)", len,
                           CEL_TOKENIZER_MAX_INPUT_BYTES);
    const uint8_t *s = (const uint8_t *)text;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t l = utf8_get(s + i, len - i, &cp);
        if (l == 0)
            return cel_err_set(err, CEL_EINVAL, "tokenizer: text is not UTF-8 at byte %zu", i);
        i += l;
    }
    enc_t e = { .tok = tok };
    int rc = grow((void **)&e.ids, &e.cap, len / 3 + 2, sizeof(int32_t));
    if (rc == CEL_OK) rc = encode(&e, s, len, add_bos);
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    free(e.map);
    for (int k = 0; k < MAX_STEPS; k++) free(e.pre[k]);
    if (rc != CEL_OK) {
        free(e.ids);
        return cel_err_set(err, rc, "tokenizer: out of memory");
    }
    *ids = e.ids;
    *n = e.n;
    return CEL_OK;
}

/* ---- decoding and lookups ---- */

int cel_tokenizer_decode(const cel_tokenizer_t *tok, const int32_t *ids, size_t n, char **text,
                         size_t *text_len, cel_err_t *err) {
    *text = NULL;
    if (text_len) *text_len = 0;
    if (!tok || (!ids && n)) return cel_err_set(err, CEL_EINVAL, "tokenizer: no tokenizer or ids");
    if (n > CEL_TOKENIZER_MAX_DECODE_IDS)
        return cel_err_set(err, CEL_ELIMIT, "tokenizer: %zu ids to decode (max %u)", n,
                           CEL_TOKENIZER_MAX_DECODE_IDS);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= tok->n_ids || tok->doff[ids[i]] == NO_ID)
            return cel_err_set(err, CEL_EINVAL,
                               "tokenizer: id %d at %zu is not in the "
                               "vocabulary",
                               ids[i], i);
        total += tok->dlen[ids[i]];
    }
    if (total > CEL_TOKENIZER_MAX_INPUT_BYTES) /* the text must be encodable again */
        return cel_err_set(err, CEL_ELIMIT, "tokenizer: decoded text of %zu bytes (max %u)", total,
                           CEL_TOKENIZER_MAX_INPUT_BYTES);
    uint8_t *raw = malloc(total + 1);
    char *out = malloc(3 * total + 1); /* each bad byte may become a 3-byte U+FFFD */
    if (!raw || !out) {
        free(raw);
        free(out);
        return cel_err_set(err, CEL_ENOMEM, "tokenizer: out of memory");
    }
    size_t r = 0, o = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(raw + r, tok->arena + tok->doff[ids[i]], tok->dlen[ids[i]]);
        r += tok->dlen[ids[i]];
    }
    for (size_t i = 0; i < r;) {
        uint32_t cp;
        size_t l = utf8_get(raw + i, r - i, &cp);
        if (l > 0) {
            memcpy(out + o, raw + i, l);
            o += l;
            i += l;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += utf8_bad_len(raw + i, r - i);
        }
    }
    out[o] = '\0';
    free(raw);
    *text = out;
    if (text_len) *text_len = o;
    return CEL_OK;
}
