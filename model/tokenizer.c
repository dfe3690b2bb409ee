/* tokenizer.c -- byte-level BPE tokenizer: loads tokenizer.json; token lookups.
 *
 * Follows Hugging Face `tokenizers` (models/bpe/serialization, pre_tokenizers, decoders,
 * added_vocabulary, processors/template): reads model.vocab and model.merges (both "a b" and
 * [a, b] forms) into hash maps, the added tokens into a byte trie, the pre_tokenizer into a
 * short list of steps (tokenizer_encode.c runs them), a TemplateProcessing's bos, and each
 * token's decoded bytes. Everything that is not the byte-level BPE of GPT-2, Llama 3 and
 * SmolLM is refused with CEL_EINVAL rather than approximated. The only I/O is reading the
 * file; the tokenizer is immutable afterwards (bos/eos setters aside) and shared by threads.
 */
#include "tokenizer_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#define MAX_PRE_DEPTH 4 /* nesting of Sequence pre-tokenizers/post-processors */

/* Split patterns we implement, as they appear in tokenizer.json. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char LLAMA3_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_PATTERN[] = /* Llama 3's with single digits */
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ---- GPT-2's byte <-> unicode alphabet ---- */

/* The code point GPT-2's bytes_to_unicode gives byte b: printable Latin-1 maps to itself,
 * the other 68 bytes to U+0100.. in byte order. */
static uint32_t byte_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
            n++;
    return 256u + (uint32_t)n;
}

/* Writes cp as UTF-8 into out (4 bytes room); returns the length. */
static size_t utf8_put(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- hash maps ---- */

/* Slot count: a power of two at least twice n. */
static size_t table_size(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    return cap;
}

static int pmap_init(pmap_t *m, size_t n) {
    size_t cap = table_size(n);
    m->slots = malloc(cap * sizeof(pslot_t));
    if (!m->slots) return CEL_ENOMEM;
    for (size_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    return CEL_OK;
}

/* ---- loading ---- */

/* Copies n bytes (plus a NUL) into the arena; *off gets their offset. */
static int arena_put(cel_tokenizer_t *t, const void *p, size_t n, uint32_t *off) {
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 4096;
        while (cap < t->arena_len + n + 1) cap *= 2;
        if (cap > UINT32_MAX) return CEL_ELIMIT;
        char *a = realloc(t->arena, cap);
        if (!a) return CEL_ENOMEM;
        t->arena = a;
        t->arena_cap = cap;
    }
    *off = (uint32_t)t->arena_len;
    if (n) memcpy(t->arena + t->arena_len, p, n);
    t->arena[t->arena_len + n] = '\0';
    t->arena_len += n + 1;
    return CEL_OK;
}

/* Reads an optional boolean member; absent or null gives def. */
static int get_bool(json_t *o, const char *key, int def, int *out, cel_err_t *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) *out = def;
    else if (json_is_boolean(v)) *out = json_is_true(v);
    else return cel_err_set(err, CEL_EPROTO, "tokenizer.json: \"%s\" is not a boolean", key);
    return CEL_OK;
}

/* Reads a token id: an integer in [0, CEL_TOKENIZER_MAX_VOCAB). */
static int get_id(json_t *v, const char *what, uint32_t *out, cel_err_t *err) {
    if (!json_is_integer(v))
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: %s id is not an integer", what);
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= (json_int_t)CEL_TOKENIZER_MAX_VOCAB)
        return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: %s id %lld outside [0, %u)", what,
                           (long long)x, CEL_TOKENIZER_MAX_VOCAB);
    *out = (uint32_t)x;
    return CEL_OK;
}

static int add_step(cel_tokenizer_t *t, int kind, int arg, cel_err_t *err) {
    if (t->n_steps >= MAX_STEPS)
        return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: more than %d pre-tokenizer steps",
                           MAX_STEPS);
    t->steps[t->n_steps].kind = kind;
    t->steps[t->n_steps].arg = arg;
    t->n_steps++;
    return CEL_OK;
}

/* Turns the pre_tokenizer p into steps; *byte_level is set once ByteLevel is seen, and it
 * must come last (later steps would see byte-mapped text). */
static int parse_pre(cel_tokenizer_t *t, json_t *p, int depth, int *byte_level, cel_err_t *err) {
    if (!json_is_object(p))
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: pre_tokenizer is not an object");
    if (depth > MAX_PRE_DEPTH)
        return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: pre_tokenizer nested too deep");
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) return cel_err_set(err, CEL_EPROTO, "tokenizer.json: pre_tokenizer without a type");
    if (*byte_level)
        return cel_err_set(err, CEL_EINVAL,
                           "tokenizer.json: pre_tokenizer %s after ByteLevel is not supported",
                           type);
    int rc;
    if (strcmp(type, "Sequence") == 0) {
        json_t *a = json_object_get(p, "pretokenizers");
        if (!json_is_array(a))
            return cel_err_set(err, CEL_EPROTO, "tokenizer.json: Sequence without pretokenizers");
        for (size_t i = 0; i < json_array_size(a); i++)
            if ((rc = parse_pre(t, json_array_get(a, i), depth + 1, byte_level, err)) != CEL_OK)
                return rc;
        return CEL_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        int prefix = 1, regex = 1;
        if ((rc = get_bool(p, "add_prefix_space", 1, &prefix, err)) != CEL_OK ||
            (rc = get_bool(p, "use_regex", 1, &regex, err)) != CEL_OK)
            return rc;
        if (prefix && (rc = add_step(t, STEP_PREFIX_SPACE, 0, err)) != CEL_OK) return rc;
        if (regex && (rc = add_step(t, STEP_SPLIT_GPT2, 0, err)) != CEL_OK) return rc;
        *byte_level = 1;
        return CEL_OK;
    }
    if (strcmp(type, "Digits") == 0) {
        int individual = 0;
        if ((rc = get_bool(p, "individual_digits", 0, &individual, err)) != CEL_OK) return rc;
        return add_step(t, STEP_DIGITS, individual, err);
    }
    if (strcmp(type, "Split") == 0) {
        const char *behavior = json_string_value(json_object_get(p, "behavior"));
        int invert = 0;
        if ((rc = get_bool(p, "invert", 0, &invert, err)) != CEL_OK) return rc;
        if (!behavior || strcmp(behavior, "Isolated") != 0 || invert)
            return cel_err_set(err, CEL_EINVAL,
                               "tokenizer.json: Split is supported only with behavior Isolated");
        const char *re = json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
        if (!re)
            return cel_err_set(err, CEL_EINVAL, "tokenizer.json: Split without a Regex pattern");
        if (strcmp(re, GPT2_PATTERN) == 0) return add_step(t, STEP_SPLIT_GPT2, 0, err);
        if (strcmp(re, LLAMA3_PATTERN) == 0) return add_step(t, STEP_SPLIT_LLAMA3, 3, err);
        if (strcmp(re, QWEN2_PATTERN) == 0) return add_step(t, STEP_SPLIT_LLAMA3, 1, err);
        return cel_err_set(err, CEL_EINVAL,
                           "tokenizer.json: Split pattern is not the GPT-2 or Llama 3 one");
    }
    return cel_err_set(err, CEL_EINVAL, "tokenizer.json: pre_tokenizer %s is not supported", type);
}

/* Takes bos from a TemplateProcessing (possibly inside a Sequence): the first special token
 * before $A in "single". Other post-processors add nothing we model. */
static int parse_post(cel_tokenizer_t *t, json_t *p, int depth, cel_err_t *err) {
    if (!p || json_is_null(p)) return CEL_OK;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type || depth > MAX_PRE_DEPTH)
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: bad post_processor");
    if (strcmp(type, "Sequence") == 0) {
        json_t *a = json_object_get(p, "processors");
        if (!json_is_array(a))
            return cel_err_set(err, CEL_EPROTO, "tokenizer.json: Sequence without processors");
        for (size_t i = 0; i < json_array_size(a); i++) {
            int rc = parse_post(t, json_array_get(a, i), depth + 1, err);
            if (rc != CEL_OK) return rc;
        }
        return CEL_OK;
    }
    if (strcmp(type, "TemplateProcessing") != 0) return CEL_OK;
    json_t *single = json_object_get(p, "single");
    json_t *specials = json_object_get(p, "special_tokens");
    if (!json_is_array(single) || !json_is_object(specials))
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: bad TemplateProcessing");
    json_t *first = json_array_get(single, 0);
    const char *name =
        json_string_value(json_object_get(json_object_get(first, "SpecialToken"), "id"));
    if (!name) return CEL_OK;
    json_t *ids = json_object_get(json_object_get(specials, name), "ids");
    uint32_t id;
    int rc;
    if (!json_is_array(ids) || json_array_size(ids) < 1)
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: template token %s has no ids", name);
    if ((rc = get_id(json_array_get(ids, 0), "template", &id, err)) != CEL_OK) return rc;
    t->bos = (int32_t)id;
    return CEL_OK;
}

/* Reads model.vocab into voff/vlen and the hash. */
static int load_vocab(cel_tokenizer_t *t, json_t *vocab, cel_err_t *err) {
    const char *key;
    size_t klen;
    json_t *v;
    int rc;
    t->vslots = calloc(table_size(json_object_size(vocab)), sizeof(uint32_t));
    if (!t->vslots) return CEL_ENOMEM;
    t->vmask = table_size(json_object_size(vocab)) - 1;
    json_object_keylen_foreach(vocab, key, klen, v) {
        uint32_t id;
        if ((rc = get_id(v, "vocab", &id, err)) != CEL_OK) return rc;
        if (klen == 0 || klen > CEL_TOKENIZER_MAX_TOKEN_BYTES)
            return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: vocab token %u is %zu bytes", id,
                               klen);
        if (t->voff[id] != NO_ID)
            return cel_err_set(err, CEL_EPROTO, "tokenizer.json: vocab id %u used twice", id);
        if ((rc = arena_put(t, key, klen, &t->voff[id])) != CEL_OK)
            return cel_err_set(err, rc, "tokenizer.json: out of memory");
        t->vlen[id] = (uint32_t)klen;
        size_t i = hash_bytes(key, klen) & t->vmask;
        while (t->vslots[i]) i = (i + 1) & t->vmask;
        t->vslots[i] = id + 1;
    }
    return CEL_OK;
}

/* Reads model.merges ("a b" strings or [a, b] pairs) into the pair map; a later duplicate
 * pair replaces the earlier rank, as HF's HashMap collect does. */
static int load_merges(cel_tokenizer_t *t, json_t *merges, cel_err_t *err) {
    size_t n = json_array_size(merges);
    char buf[2 * CEL_TOKENIZER_MAX_TOKEN_BYTES];
    if (pmap_init(&t->merges, n) != CEL_OK)
        return cel_err_set(err, CEL_ENOMEM, "tokenizer.json: out of memory");
    for (size_t r = 0; r < n; r++) {
        json_t *m = json_array_get(merges, r);
        const char *a, *b;
        size_t alen, blen;
        if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return cel_err_set(err, CEL_EPROTO, "tokenizer.json: merge %zu is not two tokens",
                                   r);
            alen = (size_t)(sp - a);
            b = sp + 1;
            blen = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 &&
                   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
            a = json_string_value(json_array_get(m, 0));
            alen = json_string_length(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            blen = json_string_length(json_array_get(m, 1));
        } else {
            return cel_err_set(err, CEL_EPROTO,
                               "tokenizer.json: merge %zu is neither \"a b\" nor [a, b]", r);
        }
        if (alen + blen > sizeof(buf))
            return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: merge %zu too long", r);
        int32_t ia = vocab_get(t, a, alen), ib = vocab_get(t, b, blen);
        memcpy(buf, a, alen);
        memcpy(buf + alen, b, blen);
        int32_t in = vocab_get(t, buf, alen + blen);
        if (ia < 0 || ib < 0 || in < 0)
            return cel_err_set(err, CEL_EPROTO,
                               "tokenizer.json: merge %zu (%.*s %.*s) uses a token not in the "
                               "vocab",
                               r, (int)(alen > 40 ? 40 : alen), a, (int)(blen > 40 ? 40 : blen), b);
        pslot_t *s = pmap_slot(&t->merges, (uint64_t)ia << 32 | (uint32_t)ib);
        s->key = (uint64_t)ia << 32 | (uint32_t)ib;
        s->a = (uint32_t)r;
        s->b = (uint32_t)in;
    }
    return CEL_OK;
}

/* Reads added_tokens (already range-checked) and builds their byte trie. */
static int load_added(cel_tokenizer_t *t, json_t *arr, cel_err_t *err) {
    size_t total = 1;
    int rc;
    t->n_added = json_array_size(arr);
    t->added = calloc(t->n_added ? t->n_added : 1, sizeof(added_t));
    if (!t->added) return CEL_ENOMEM;
    for (size_t i = 0; i < t->n_added; i++) {
        json_t *o = json_array_get(arr, i);
        json_t *c = json_object_get(o, "content");
        added_t *a = &t->added[i];
        int sp = 0, ls = 0, rs = 0, sw = 0;
        if ((rc = get_id(json_object_get(o, "id"), "added token", &a->id, err)) != CEL_OK)
            return rc;
        if (!json_is_string(c) || json_string_length(c) == 0)
            return cel_err_set(err, CEL_EPROTO, "tokenizer.json: added token %zu has no content",
                               i);
        if (json_string_length(c) > CEL_TOKENIZER_MAX_TOKEN_BYTES)
            return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: added token %zu too long", i);
        if ((rc = get_bool(o, "special", 0, &sp, err)) != CEL_OK ||
            (rc = get_bool(o, "lstrip", 0, &ls, err)) != CEL_OK ||
            (rc = get_bool(o, "rstrip", 0, &rs, err)) != CEL_OK ||
            (rc = get_bool(o, "single_word", 0, &sw, err)) != CEL_OK)
            return rc;
        a->special = (uint8_t)sp;
        a->lstrip = (uint8_t)ls;
        a->rstrip = (uint8_t)rs;
        a->single_word = (uint8_t)sw;
        a->len = (uint32_t)json_string_length(c);
        if ((rc = arena_put(t, json_string_value(c), a->len, &a->off)) != CEL_OK)
            return cel_err_set(err, rc, "tokenizer.json: out of memory");
        total += a->len;
    }
    t->trie_term = calloc(total, sizeof(uint32_t));
    if (!t->trie_term || pmap_init(&t->trie, total) != CEL_OK) return CEL_ENOMEM;
    t->trie_nodes = 1;
    for (size_t i = 0; i < t->n_added; i++) {
        const added_t *a = &t->added[i];
        const uint8_t *s = (const uint8_t *)t->arena + a->off;
        uint32_t node = 0;
        for (uint32_t k = 0; k < a->len; k++) {
            uint64_t key = (uint64_t)node << 8 | s[k];
            pslot_t *sl = pmap_slot(&t->trie, key);
            if (sl->key != key) {
                sl->key = key;
                sl->a = (uint32_t)t->trie_nodes++;
            }
            node = sl->a;
        }
        t->trie_term[node] = (uint32_t)i + 1; /* a later duplicate content wins */
        t->added_of[t->added[i].id] = (int32_t)i;
    }
    return CEL_OK;
}

/* Fills doff/dlen: HF's ByteLevel decoder maps every character of a token back to its byte,
 * or, when some character is outside the byte alphabet, keeps the token's UTF-8 as is. */
static int build_decoded(cel_tokenizer_t *t) {
    uint8_t buf[CEL_TOKENIZER_MAX_TOKEN_BYTES];
    int16_t cp_byte[324];
    for (int i = 0; i < 324; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) cp_byte[byte_cp(b)] = (int16_t)b;
    for (size_t id = 0; id < t->n_ids; id++) {
        t->doff[id] = NO_ID;
        t->dlen[id] = 0;
        uint32_t off, len;
        if (t->added_of[id] >= 0) {
            off = t->added[t->added_of[id]].off;
            len = t->added[t->added_of[id]].len;
        } else if (t->voff[id] != NO_ID) {
            off = t->voff[id];
            len = t->vlen[id];
        } else {
            continue;
        }
        const uint8_t *s = (const uint8_t *)t->arena + off;
        size_t n = 0;
        for (size_t i = 0; i < len;) {
            uint32_t cp;
            size_t l = utf8_get(s + i, len - i, &cp);
            if (l == 0 || cp >= 324 || cp_byte[cp] < 0) {
                n = SIZE_MAX;
                break;
            }
            buf[n++] = (uint8_t)cp_byte[cp];
            i += l;
        }
        if (n == SIZE_MAX) { /* the token's own UTF-8, already in the arena */
            t->doff[id] = off;
            t->dlen[id] = len;
            continue;
        }
        int rc = arena_put(t, buf, n, &t->doff[id]); /* may move the arena, and s */
        if (rc != CEL_OK) return rc;
        t->dlen[id] = (uint32_t)n;
    }
    return CEL_OK;
}

/* Everything after json parsing; t is freed by the caller on error. */
static int load_json(cel_tokenizer_t *t, json_t *root, cel_err_t *err) {
    int rc;
    if (!json_is_object(root))
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: not a JSON object");
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: no \"model\" object");
    json_t *type = json_object_get(model, "type");
    if (type && (!json_is_string(type) || strcmp(json_string_value(type), "BPE") != 0))
        return cel_err_set(err, CEL_EINVAL, "tokenizer.json: model type %s is not BPE",
                           json_is_string(type) ? json_string_value(type) : "(not a string)");
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab))
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: model.vocab is not an object");
    if (!json_is_array(merges))
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: model.merges is not an array");
    if (added && !json_is_null(added) && !json_is_array(added))
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: added_tokens is not an array");
    if (json_object_size(vocab) == 0 || json_object_size(vocab) > CEL_TOKENIZER_MAX_VOCAB)
        return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: vocab has %zu tokens (1..%u)",
                           json_object_size(vocab), CEL_TOKENIZER_MAX_VOCAB);
    if (json_array_size(merges) > CEL_TOKENIZER_MAX_MERGES)
        return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: %zu merges (max %u)",
                           json_array_size(merges), CEL_TOKENIZER_MAX_MERGES);
    if (json_array_size(added) > CEL_TOKENIZER_MAX_ADDED)
        return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: %zu added tokens (max %u)",
                           json_array_size(added), CEL_TOKENIZER_MAX_ADDED);
    int bf = 0, ignore = 0, fuse = 0;
    json_t *dropout = json_object_get(model, "dropout");
    const char *cp = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *ew = json_string_value(json_object_get(model, "end_of_word_suffix"));
    if ((rc = get_bool(model, "byte_fallback", 0, &bf, err)) != CEL_OK ||
        (rc = get_bool(model, "ignore_merges", 0, &ignore, err)) != CEL_OK ||
        (rc = get_bool(model, "fuse_unk", 0, &fuse, err)) != CEL_OK)
        return rc;
    if (bf || (cp && *cp) || (ew && *ew) || (dropout && !json_is_null(dropout)))
        return cel_err_set(err, CEL_EINVAL,
                           "tokenizer.json: byte_fallback, dropout and "
                           "subword prefixes/suffixes are not supported");
    t->ignore_merges = ignore;
    t->fuse_unk = fuse;

    /* ids: the vocabulary and the added tokens together */
    uint32_t max_id = 0, id;
    json_t *v;
    const char *key;
    json_object_foreach(vocab, key, v) {
        if ((rc = get_id(v, "vocab", &id, err)) != CEL_OK) return rc;
        max_id = id > max_id ? id : max_id;
    }
    for (size_t i = 0; i < json_array_size(added); i++) {
        if (!json_is_object(json_array_get(added, i)))
            return cel_err_set(err, CEL_EPROTO,
                               "tokenizer.json: added token %zu is not an "
                               "object",
                               i);
        if ((rc = get_id(json_object_get(json_array_get(added, i), "id"), "added token", &id,
                         err)) != CEL_OK)
            return rc;
        max_id = id > max_id ? id : max_id;
    }
    t->n_ids = (size_t)max_id + 1;
    t->voff = malloc(t->n_ids * sizeof(uint32_t));
    t->vlen = calloc(t->n_ids, sizeof(uint32_t));
    t->doff = malloc(t->n_ids * sizeof(uint32_t));
    t->dlen = calloc(t->n_ids, sizeof(uint32_t));
    t->added_of = malloc(t->n_ids * sizeof(int32_t));
    if (!t->voff || !t->vlen || !t->doff || !t->dlen || !t->added_of)
        return cel_err_set(err, CEL_ENOMEM, "tokenizer.json: out of memory");
    for (size_t i = 0; i < t->n_ids; i++) {
        t->voff[i] = NO_ID;
        t->added_of[i] = -1;
    }
    if ((rc = load_vocab(t, vocab, err)) != CEL_OK || (rc = load_merges(t, merges, err)) != CEL_OK)
        return rc;
    if ((rc = load_added(t, added, err)) != CEL_OK)
        return rc == CEL_ENOMEM ? cel_err_set(err, rc, "tokenizer.json: out of memory") : rc;

    t->unk_id = -1;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk && (t->unk_id = vocab_get(t, unk, strlen(unk))) < 0)
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: unk_token is not in the vocab");
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        size_t l = utf8_put(byte_cp(b), u);
        memcpy(t->bmap[b], u, 2);
        t->bmap_len[b] = (uint8_t)l;
        t->byte_id[b] = vocab_get(t, (const char *)u, l);
    }

    json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm) &&
        !(json_is_object(norm) && json_string_value(json_object_get(norm, "type")) &&
          strcmp(json_string_value(json_object_get(norm, "type")), "Sequence") == 0 &&
          json_array_size(json_object_get(norm, "normalizers")) == 0))
        return cel_err_set(err, CEL_EINVAL, "tokenizer.json: normalizers are not supported");
    int byte_level = 0;
    json_t *pre = json_object_get(root, "pre_tokenizer");
    if (!pre || json_is_null(pre))
        return cel_err_set(err, CEL_EINVAL, "tokenizer.json: no pre_tokenizer (not byte-level)");
    if ((rc = parse_pre(t, pre, 0, &byte_level, err)) != CEL_OK) return rc;
    if (!byte_level)
        return cel_err_set(err, CEL_EINVAL, "tokenizer.json: no ByteLevel pre_tokenizer");
    json_t *dec = json_object_get(root, "decoder");
    const char *dtype = json_string_value(json_object_get(dec, "type"));
    if (dec && !json_is_null(dec) && (!dtype || strcmp(dtype, "ByteLevel") != 0))
        return cel_err_set(err, CEL_EINVAL, "tokenizer.json: decoder %s is not ByteLevel",
                           dtype ? dtype : "(no type)");

    t->bos = t->eos = -1;
    if ((rc = parse_post(t, json_object_get(root, "post_processor"), 0, err)) != CEL_OK) return rc;
    static const char *const eos_names[] = { "<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>" };
    for (size_t i = 0; i < sizeof(eos_names) / sizeof(eos_names[0]) && t->eos < 0; i++)
        for (size_t k = 0; k < t->n_added && t->eos < 0; k++)
            if (strcmp(t->arena + t->added[k].off, eos_names[i]) == 0)
                t->eos = (int32_t)t->added[k].id;
    if ((rc = build_decoded(t)) != CEL_OK)
        return cel_err_set(err, rc, "tokenizer.json: out of memory");
    if (t->bos >= 0 && ((size_t)t->bos >= t->n_ids || t->doff[t->bos] == NO_ID))
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: template bos id %d is no token",
                           t->bos);
    return CEL_OK;
}

int cel_tokenizer_load_buf(const char *json, size_t len, cel_tokenizer_t **out, cel_err_t *err) {
    *out = NULL;
    if (!json) return cel_err_set(err, CEL_EINVAL, "tokenizer: no buffer");
    if (len > CEL_TOKENIZER_MAX_FILE_BYTES)
        return cel_err_set(err, CEL_ELIMIT, "tokenizer.json: %zu bytes (max %u)", len,
                           CEL_TOKENIZER_MAX_FILE_BYTES);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return cel_err_set(err, CEL_EPROTO, "tokenizer.json: line %d: %s", jerr.line, jerr.text);
    cel_tokenizer_t *t = calloc(1, sizeof(*t));
    if (!t) {
        json_decref(root);
        return cel_err_set(err, CEL_ENOMEM, "tokenizer: out of memory");
    }
    int rc = load_json(t, root, err);
    json_decref(root);
    if (rc != CEL_OK) {
        cel_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return CEL_OK;
}

int cel_tokenizer_load(const char *path, cel_tokenizer_t **out, cel_err_t *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = CEL_OK;
    for (;;) {
        if (len == cap) {
            if (cap > CEL_TOKENIZER_MAX_FILE_BYTES) {
                rc = cel_err_set(err, CEL_ELIMIT, "%s: larger than %u bytes", path,
                                 CEL_TOKENIZER_MAX_FILE_BYTES);
                break;
            }
            cap = cap ? cap * 2 : 1 << 16;
            char *b = realloc(buf, cap);
            if (!b) {
                rc = cel_err_set(err, CEL_ENOMEM, "%s: out of memory", path);
                break;
            }
            buf = b;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) rc = cel_err_set(err, CEL_EIO, "%s: read failed", path);
            break;
        }
    }
    fclose(f);
    if (rc == CEL_OK) rc = cel_tokenizer_load_buf(buf, len, out, err);
    free(buf);
    return rc;
}

void cel_tokenizer_free(cel_tokenizer_t *t) {
    if (!t) return;
    free(t->arena);
    free(t->voff);
    free(t->vlen);
    free(t->doff);
    free(t->dlen);
    free(t->added_of);
    free(t->vslots);
    free(t->merges.slots);
    free(t->trie.slots);
    free(t->trie_term);
    free(t->added);
    free(t);
}

size_t cel_tokenizer_vocab_size(const cel_tokenizer_t *tok) { return tok ? tok->n_ids : 0; }

const char *cel_tokenizer_token_str(const cel_tokenizer_t *tok, int32_t id) {
    if (!tok || id < 0 || (size_t)id >= tok->n_ids) return NULL;
    if (tok->added_of[id] >= 0) return tok->arena + tok->added[tok->added_of[id]].off;
    return tok->voff[id] == NO_ID ? NULL : tok->arena + tok->voff[id];
}

int32_t cel_tokenizer_find(const cel_tokenizer_t *tok, const char *token) {
    if (!tok || !token) return -1;
    size_t n = strlen(token), end = 0;
    int a = added_at(tok, (const uint8_t *)token, n, 0, &end);
    if (a >= 0 && end == n) return (int32_t)tok->added[a].id;
    return vocab_get(tok, token, n);
}

int cel_tokenizer_is_special(const cel_tokenizer_t *tok, int32_t id) {
    if (!tok || id < 0 || (size_t)id >= tok->n_ids || tok->added_of[id] < 0) return 0;
    return tok->added[tok->added_of[id]].special;
}

int32_t cel_tokenizer_bos(const cel_tokenizer_t *tok) { return tok ? tok->bos : -1; }

int32_t cel_tokenizer_eos(const cel_tokenizer_t *tok) { return tok ? tok->eos : -1; }

static int set_special(cel_tokenizer_t *tok, int32_t id, int32_t *slot, cel_err_t *err) {
    if (!tok) return cel_err_set(err, CEL_EINVAL, "tokenizer: no tokenizer");
    if (id < -1 || (id >= 0 && ((size_t)id >= tok->n_ids || tok->doff[id] == NO_ID)))
        return cel_err_set(err, CEL_EINVAL, "tokenizer: id %d is not in the vocabulary", id);
    *slot = id;
    return CEL_OK;
}

int cel_tokenizer_set_bos(cel_tokenizer_t *tok, int32_t id, cel_err_t *err) {
    return set_special(tok, id, tok ? &tok->bos : NULL, err);
}

int cel_tokenizer_set_eos(cel_tokenizer_t *tok, int32_t id, cel_err_t *err) {
    return set_special(tok, id, tok ? &tok->eos : NULL, err);
}
