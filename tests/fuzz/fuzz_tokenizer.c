/* fuzz_tokenizer.c -- libFuzzer harness for model/tokenizer.c.
 *
 * The first input byte picks a mode: 0 loads the rest as a tokenizer.json (and, when it
 * loads, encodes and decodes with it); 1 and 2 encode the rest with a GPT-2 style or a
 * Llama 3 style tokenizer built at start-up, and valid UTF-8 must decode back to itself;
 * 3 decodes the rest as int32 ids, and the text must be valid UTF-8 that encodes again.
 *
 * Guard-page mode (guard.h): each input ends right before an unreadable page.
 * `make fuzz` runs it over tests/fuzz/corpus/tokenizer/; `make test` replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "guard.h"
#include "../../model/tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cel_tokenizer_t *toks[2];

static const char LLAMA3_RE[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static void byte_str(int b, char out[3]) {
    int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    uint32_t cp = (uint32_t)b;
    if (!printable) {
        cp = 256;
        for (int x = 0; x < b; x++)
            if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE)) cp++;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

/* A byte vocabulary, merges of every pair of a few frequent bytes (and of those results),
 * two added tokens; llama: the Llama 3 pre-tokenizer with ignore_merges. */
static cel_tokenizer_t *build(int llama) {
    json_t *vocab = json_object(), *merges = json_array();
    char a[3], b[3], ab[8];
    int id = 0;
    for (int x = 0; x < 256; x++) {
        byte_str(x, a);
        json_object_set_new(vocab, a, json_integer(id++));
    }
    static const char common[] = " etaoin\n'\xc3\xa9";
    for (size_t i = 0; common[i]; i++)
        for (size_t k = 0; common[k]; k++) {
            byte_str((uint8_t)common[i], a);
            byte_str((uint8_t)common[k], b);
            snprintf(ab, sizeof(ab), "%s%s", a, b);
            if (json_object_get(vocab, ab)) continue;
            json_object_set_new(vocab, ab, json_integer(id++));
            json_array_append_new(merges, json_pack("[ss]", a, b));
        }
    json_t *pre = llama ? json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b}]}", "type",
                                    "Sequence", "pretokenizers", "type", "Split", "pattern",
                                    "Regex", LLAMA3_RE, "behavior", "Isolated", "invert", 0, "type",
                                    "ByteLevel", "add_prefix_space", 0, "use_regex", 0)
                        : json_pack("{s:s, s:b}", "type", "ByteLevel", "add_prefix_space", 0);
    json_t *doc = json_pack("{s:[{s:i, s:s, s:b}, {s:i, s:s, s:b}], s:o, s:{s:s},"
                            " s:{s:s, s:b, s:o, s:o}}",
                            "added_tokens", "id", id, "content", "<|endoftext|>", "special", 1,
                            "id", id + 1, "content", "<x>", "special", 0, "pre_tokenizer", pre,
                            "decoder", "type", "ByteLevel", "model", "type", "BPE", "ignore_merges",
                            llama, "vocab", vocab, "merges", merges);
    char *s = json_dumps(doc, 0);
    json_decref(doc);
    cel_tokenizer_t *t = NULL;
    cel_err_t err;
    if (!s || cel_tokenizer_load_buf(s, strlen(s), &t, &err) != CEL_OK) {
        fprintf(stderr, "fuzz_tokenizer: cannot build tokenizer: %s\n", err.msg);
        abort();
    }
    free(s);
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    toks[0] = build(0);
    toks[1] = build(1);
    return 0;
}

/* Encodes data with t; valid UTF-8 must decode back to exactly itself. */
static void round_trip(cel_tokenizer_t *t, const uint8_t *data, size_t size) {
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = cel_tokenizer_encode(t, (const char *)data, size, 1, &ids, &n, NULL);
    if (rc != CEL_OK) {
        if (rc != CEL_EINVAL || ids || n) __builtin_trap();
        return;
    }
    char *text = NULL;
    size_t len = 0;
    if (cel_tokenizer_decode(t, ids, n, &text, &len, NULL) != CEL_OK) __builtin_trap();
    /* a template bos (none here) would be the only extra text */
    if (cel_tokenizer_bos(t) < 0 && (len != size || memcmp(text, data, size) != 0))
        __builtin_trap();
    free(ids);
    free(text);
}

static int fuzz_one(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int mode = data[0] % 4;
    data++;
    size--;
    if (mode == 0) {
        cel_tokenizer_t *t = NULL;
        cel_err_t err;
        if (cel_tokenizer_load_buf((const char *)data, size, &t, &err) != CEL_OK) {
            if (t || err.code >= 0) __builtin_trap();
            return 0;
        }
        static const char sample[] = "Hello, world! It's 2024\n\n  <|endoftext|> caf\xc3\xa9";
        int32_t *ids = NULL;
        size_t n = 0;
        if (cel_tokenizer_encode(t, sample, sizeof(sample) - 1, 1, &ids, &n, NULL) == CEL_OK) {
            char *text = NULL;
            if (cel_tokenizer_decode(t, ids, n, &text, NULL, NULL) != CEL_OK) __builtin_trap();
            free(text);
            free(ids);
        }
        for (int32_t id = 0; id < 64; id++) {
            const char *s = cel_tokenizer_token_str(t, id);
            if (s && cel_tokenizer_find(t, s) < 0) __builtin_trap();
        }
        cel_tokenizer_free(t);
    } else if (mode < 3) {
        round_trip(toks[mode - 1], data, size);
    } else {
        size_t n = size / 4;
        int32_t *ids = malloc(n * 4 + 1);
        memcpy(ids, data, n * 4);
        size_t vs = cel_tokenizer_vocab_size(toks[0]);
        for (size_t i = 0; i < n; i++)
            ids[i] = (int32_t)((uint32_t)ids[i] % (vs + 2)) - 1; /* mostly valid, some not */
        char *text = NULL;
        size_t len = 0;
        if (cel_tokenizer_decode(toks[0], ids, n, &text, &len, NULL) == CEL_OK) {
            int32_t *again = NULL;
            size_t m = 0;
            if (cel_tokenizer_encode(toks[0], text, len, 0, &again, &m, NULL) != CEL_OK)
                __builtin_trap(); /* decode output is always valid UTF-8 */
            free(again);
            free(text);
        }
        free(ids);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
