/* test_tokenizer.c -- unit tests for model/tokenizer.c (cmocka, run under ASan+UBSan).
 *
 * Builds small tokenizer.json documents with jansson (the 256 byte tokens of GPT-2's
 * alphabet plus a few merges) and checks encoding with hand-worked ids, both merge formats,
 * added/special tokens, the Llama 3 style (Split + ByteLevel, ignore_merges, template bos),
 * decoding with U+FFFD for cut characters, and every load error and limit. Exactness against
 * a reference BPE on many strings is tests/integration/test_tokenizer_ref.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "../../model/tokenizer.h"

static const char LLAMA3_RE[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
    " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* GPT-2's byte -> code point table. */
static uint32_t byte_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return (uint32_t)b;
    int n = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF)))
            n++;
    return 256u + (uint32_t)n;
}

static void byte_str(int b, char out[3]) {
    uint32_t cp = byte_cp(b);
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

/* Merges of the test vocabulary; their tokens get ids 256.. in this order. */
static const char *const MERGES[][2] = {
    { "h", "e" }, { "l", "l" },   { "he", "ll" }, { "hell", "o" },  { "Ġ", "w" },
    { "o", "r" }, { "Ġw", "or" }, { "l", "d" },   { "Ġwor", "ld" }, { "Ġ", "Ġ" },
};
#define N_MERGES (sizeof(MERGES) / sizeof(MERGES[0]))

/* A GPT-2 style document: bytes 0..255 as ids 0..255, MERGES as 256.., <|endoftext|> at
 * 300 (a gap in the ids between). pairs: merges as [a, b] instead of "a b". */
static json_t *base_doc(int pairs) {
    json_t *vocab = json_object(), *merges = json_array();
    char s[3], buf[64];
    for (int b = 0; b < 256; b++) {
        byte_str(b, s);
        json_object_set_new(vocab, s, json_integer(b));
    }
    for (size_t i = 0; i < N_MERGES; i++) {
        snprintf(buf, sizeof(buf), "%s%s", MERGES[i][0], MERGES[i][1]);
        json_object_set_new(vocab, buf, json_integer(256 + (json_int_t)i));
        if (pairs) {
            json_array_append_new(merges, json_pack("[ss]", MERGES[i][0], MERGES[i][1]));
        } else {
            snprintf(buf, sizeof(buf), "%s %s", MERGES[i][0], MERGES[i][1]);
            json_array_append_new(merges, json_string(buf));
        }
    }
    json_object_set_new(vocab, "<|endoftext|>", json_integer(300));
    return json_pack(
        "{s:s, s:[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}, {s:i, s:s, s:b, s:b, s:b, s:b, s:b}],"
        " s:n, s:{s:s, s:b, s:b, s:b}, s:n, s:{s:s, s:b, s:b, s:b},"
        " s:{s:s, s:n, s:n, s:b, s:b, s:o, s:o}}",
        "version", "1.0", "added_tokens", "id", 300, "content", "<|endoftext|>", "single_word", 0,
        "lstrip", 0, "rstrip", 0, "normalized", 1, "special", 1, "id", 301, "content", "<tool>",
        "single_word", 0, "lstrip", 1, "rstrip", 1, "normalized", 0, "special", 0, "normalizer",
        "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex",
        1, "post_processor", "decoder", "type", "ByteLevel", "add_prefix_space", 1, "trim_offsets",
        1, "use_regex", 1, "model", "type", "BPE", "dropout", "unk_token", "fuse_unk", 0,
        "byte_fallback", 0, "vocab", vocab, "merges", merges);
}

/* Loads doc (taken) and returns the code; *out gets the tokenizer on success. */
static int load_doc(json_t *doc, cel_tokenizer_t **out, cel_err_t *err) {
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    assert_non_null(s);
    int rc = cel_tokenizer_load_buf(s, strlen(s), out, err);
    free(s);
    return rc;
}

static cel_tokenizer_t *load_ok(json_t *doc) {
    cel_tokenizer_t *t = NULL;
    cel_err_t err = { 0 };
    int rc = load_doc(doc, &t, &err);
    if (rc != CEL_OK) fail_msg("load: %d %s", rc, err.msg);
    return t;
}

/* Encodes text and compares with the n expected ids. */
static void check_encode(cel_tokenizer_t *t, const char *text, int add_bos, const int32_t *want,
                         size_t n) {
    int32_t *ids = NULL;
    size_t got = 0;
    cel_err_t err = { 0 };
    assert_int_equal(cel_tokenizer_encode(t, text, strlen(text), add_bos, &ids, &got, &err),
                     CEL_OK);
    assert_non_null(ids);
    if (got != n) fail_msg("%s: %zu ids, want %zu", text, got, n);
    for (size_t i = 0; i < n; i++)
        if (ids[i] != want[i]) fail_msg("%s: id %zu is %d, want %d", text, i, ids[i], want[i]);
    char *back = NULL;
    size_t blen = 0;
    assert_int_equal(cel_tokenizer_decode(t, ids, got, &back, &blen, &err), CEL_OK);
    free(ids);
    free(back);
}

#define ENC(t, text, bos, ...)                                      \
    do {                                                            \
        const int32_t w_[] = { __VA_ARGS__ };                       \
        check_encode(t, text, bos, w_, sizeof(w_) / sizeof(w_[0])); \
    } while (0)

/* Decodes ids and compares with want (NUL-terminated, or wlen bytes). */
static void check_decode(cel_tokenizer_t *t, const int32_t *ids, size_t n, const char *want,
                         size_t wlen) {
    char *text = NULL;
    size_t len = 0;
    cel_err_t err = { 0 };
    assert_int_equal(cel_tokenizer_decode(t, ids, n, &text, &len, &err), CEL_OK);
    assert_int_equal(len, wlen);
    assert_memory_equal(text, want, wlen);
    assert_int_equal(text[len], '\0');
    free(text);
}

static void test_encode_gpt2(void **state) {
    (void)state;
    for (int pairs = 0; pairs < 2; pairs++) {
        cel_tokenizer_t *t = load_ok(base_doc(pairs));
        ENC(t, "hello world", 0, 259, 264);
        ENC(t, "hello  world", 0, 259, 32, 264);   /* "  world" -> " ", " world" */
        ENC(t, "hello   world", 0, 259, 265, 264); /* "ĠĠ" merged */
        ENC(t, "hello\n", 0, 259, 10);
        ENC(t, "he's", 0, 256, '\'', 's'); /* contraction split */
        ENC(t, "ll<|endoftext|>ll", 0, 257, 300, 257);
        ENC(t, "a <tool>  b", 0, 'a', 301, 'b'); /* lstrip and rstrip eat spaces */
        ENC(t, "hello", 1, 259);                 /* no bos known */
        ENC(t, "é", 0, 0xC3, 0xA9);
        ENC(t, "x1234", 0, 'x', '1', '2', '3', '4');
        int32_t *ids = NULL;
        size_t n = 5;
        assert_int_equal(cel_tokenizer_encode(t, "", 0, 0, &ids, &n, NULL), CEL_OK);
        assert_non_null(ids);
        assert_int_equal(n, 0);
        free(ids);
        cel_tokenizer_free(t);
    }
}

static void test_lookups(void **state) {
    (void)state;
    cel_tokenizer_t *t = load_ok(base_doc(0));
    assert_int_equal(cel_tokenizer_vocab_size(t), 302);
    assert_string_equal(cel_tokenizer_token_str(t, 264), "Ġworld");
    assert_string_equal(cel_tokenizer_token_str(t, 300), "<|endoftext|>");
    assert_null(cel_tokenizer_token_str(t, 280)); /* a gap */
    assert_null(cel_tokenizer_token_str(t, 302));
    assert_null(cel_tokenizer_token_str(t, -1));
    assert_int_equal(cel_tokenizer_find(t, "Ġworld"), 264);
    assert_int_equal(cel_tokenizer_find(t, "<tool>"), 301);
    assert_int_equal(cel_tokenizer_find(t, "<too"), -1);
    assert_int_equal(cel_tokenizer_find(t, "nope"), -1);
    assert_int_equal(cel_tokenizer_is_special(t, 300), 1);
    assert_int_equal(cel_tokenizer_is_special(t, 301), 0);
    assert_int_equal(cel_tokenizer_is_special(t, 5), 0);
    assert_int_equal(cel_tokenizer_bos(t), -1);
    assert_int_equal(cel_tokenizer_eos(t), 300);
    cel_err_t err = { 0 };
    assert_int_equal(cel_tokenizer_set_bos(t, 280, &err), CEL_EINVAL);
    assert_int_equal(cel_tokenizer_set_bos(t, 302, &err), CEL_EINVAL);
    assert_int_equal(cel_tokenizer_set_bos(t, -2, &err), CEL_EINVAL);
    assert_int_equal(cel_tokenizer_set_bos(t, 300, &err), CEL_OK);
    assert_int_equal(cel_tokenizer_set_eos(t, 1, &err), CEL_OK);
    assert_int_equal(cel_tokenizer_bos(t), 300);
    assert_int_equal(cel_tokenizer_eos(t), 1);
    ENC(t, "hello", 1, 300, 259);
    assert_int_equal(cel_tokenizer_set_bos(t, -1, &err), CEL_OK);
    ENC(t, "hello", 1, 259);
    cel_tokenizer_free(t);
    cel_tokenizer_free(NULL);
    assert_int_equal(cel_tokenizer_vocab_size(NULL), 0);
}

static void test_decode(void **state) {
    (void)state;
    cel_tokenizer_t *t = load_ok(base_doc(0));
    const int32_t hw[] = { 259, 32, 264, 300 };
    check_decode(t, hw, 4, "hello  world<|endoftext|>", 25);
    const int32_t cut[] = { 0xE6, 'a' }; /* first byte of a 3-byte character, then 'a' */
    check_decode(t, cut, 2,
                 "\xEF\xBF\xBD"
                 "a",
                 4);
    const int32_t cut2[] = { 0xE6, 0x97 }; /* two of three bytes: one U+FFFD */
    check_decode(t, cut2, 2, "\xEF\xBF\xBD", 3);
    const int32_t sur[] = { 0xED, 0xA0, 0x80 }; /* surrogate: three U+FFFD */
    check_decode(t, sur, 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD", 9);
    const int32_t nul[] = { 0, 'x' };
    check_decode(t, nul, 2, "\0x", 2);
    check_decode(t, NULL, 0, "", 0);
    char *text = (char *)1;
    cel_err_t err = { 0 };
    const int32_t bad[] = { 'a', 302 };
    assert_int_equal(cel_tokenizer_decode(t, bad, 2, &text, NULL, &err), CEL_EINVAL);
    assert_null(text);
    const int32_t gap[] = { 280 };
    assert_int_equal(cel_tokenizer_decode(t, gap, 1, &text, NULL, &err), CEL_EINVAL);
    const int32_t neg[] = { -1 };
    assert_int_equal(cel_tokenizer_decode(t, neg, 1, &text, NULL, &err), CEL_EINVAL);
    assert_int_equal(
        cel_tokenizer_decode(t, hw, (size_t)CEL_TOKENIZER_MAX_DECODE_IDS + 1, &text, NULL, &err),
        CEL_ELIMIT);
    cel_tokenizer_free(t);
}

static void test_encode_errors(void **state) {
    (void)state;
    cel_tokenizer_t *t = load_ok(base_doc(0));
    int32_t *ids = (int32_t *)1;
    size_t n = 7;
    cel_err_t err = { 0 };
    static const char *const bad[] = { "\xff",     "ab\xc3",           "\xed\xa0\x80",
                                       "\xc0\xaf", "\xf4\x90\x80\x80", "\xe0\x80\x80" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(cel_tokenizer_encode(t, bad[i], strlen(bad[i]), 0, &ids, &n, &err),
                         CEL_EINVAL);
        assert_null(ids);
        assert_int_equal(n, 0);
    }
    /* the length is checked before the text is read */
    assert_int_equal(
        cel_tokenizer_encode(t, "x", (size_t)CEL_TOKENIZER_MAX_INPUT_BYTES + 1, 0, &ids, &n, &err),
        CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    assert_int_equal(cel_tokenizer_encode(t, NULL, 3, 0, &ids, &n, &err), CEL_EINVAL);
    /* NUL is a character like any other */
    ENC(t, "a\0b" /* strlen stops at the NUL */, 0, 'a');
    assert_int_equal(cel_tokenizer_encode(t, "a\0b", 3, 0, &ids, &n, &err), CEL_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], 0);
    free(ids);
    cel_tokenizer_free(t);
}

/* Llama 3 style: Split + ByteLevel(use_regex false), ignore_merges, TemplateProcessing bos
 * inside a Sequence post-processor. */
static json_t *llama_doc(int ignore_merges) {
    json_t *doc = base_doc(1);
    json_t *model = json_object_get(doc, "model");
    json_object_set_new(model, "ignore_merges", json_boolean(ignore_merges));
    /* "Ġhe" is in the vocab but no merge makes it: only ignore_merges finds it */
    json_object_set_new(json_object_get(model, "vocab"), "Ġhe", json_integer(266));
    json_object_set_new(doc, "pre_tokenizer",
                        json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}",
                                  "type", "Sequence", "pretokenizers", "type", "Split", "pattern",
                                  "Regex", LLAMA3_RE, "behavior", "Isolated", "invert", 0, "type",
                                  "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
                                  "use_regex", 0));
    json_object_set_new(doc, "post_processor",
                        json_pack("{s:s, s:[{s:s}, {s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], "
                                  "s:{s:{s:s, s:[i], s:[s]}}}]}",
                                  "type", "Sequence", "processors", "type", "ByteLevel", "type",
                                  "TemplateProcessing", "single", "SpecialToken", "id",
                                  "<|endoftext|>", "type_id", 0, "Sequence", "id", "A", "type_id",
                                  0, "special_tokens", "<|endoftext|>", "id", "<|endoftext|>",
                                  "ids", 300, "tokens", "<|endoftext|>"));
    return doc;
}

static void test_encode_llama3(void **state) {
    (void)state;
    cel_tokenizer_t *t = load_ok(llama_doc(1));
    assert_int_equal(cel_tokenizer_bos(t), 300);
    ENC(t, "hello world", 1, 300, 259, 264);
    ENC(t, " he", 0, 266); /* whole piece found in the vocab */
    ENC(t, "x12345", 0, 'x', '1', '2', '3', '4', '5');
    ENC(t, "HE'S", 0, 'H', 'E', '\'', 'S'); /* (?i:'s) */
    cel_tokenizer_free(t);
    t = load_ok(llama_doc(0));
    ENC(t, " he", 0, 32, 256); /* merged: Ġ + he */
    cel_tokenizer_free(t);
}

/* Applies one edit to a fresh base document and expects load to fail with code. */
typedef void (*edit_fn)(json_t *doc);

static void expect_load_error(edit_fn edit, int code) {
    json_t *doc = base_doc(0);
    edit(doc);
    cel_tokenizer_t *t = (cel_tokenizer_t *)1;
    cel_err_t err = { 0 };
    int rc = load_doc(doc, &t, &err);
    if (rc != code) fail_msg("load gave %d (%s), want %d", rc, err.msg, code);
    assert_null(t);
    assert_int_equal(err.code, code);
    assert_true(strlen(err.msg) > 0);
}

#define MODEL(doc) json_object_get(doc, "model")
#define VOCAB(doc) json_object_get(MODEL(doc), "vocab")
static void e_no_model(json_t *d) { json_object_del(d, "model"); }
static void e_model_array(json_t *d) { json_object_set_new(d, "model", json_array()); }
static void e_wordpiece(json_t *d) {
    json_object_set_new(MODEL(d), "type", json_string("WordPiece"));
}
static void e_type_int(json_t *d) { json_object_set_new(MODEL(d), "type", json_integer(3)); }
static void e_vocab_array(json_t *d) { json_object_set_new(MODEL(d), "vocab", json_array()); }
static void e_vocab_empty(json_t *d) { json_object_set_new(MODEL(d), "vocab", json_object()); }
static void e_vocab_str(json_t *d) { json_object_set_new(VOCAB(d), "zz", json_string("1")); }
static void e_vocab_neg(json_t *d) { json_object_set_new(VOCAB(d), "zz", json_integer(-1)); }
static void e_vocab_float(json_t *d) { json_object_set_new(VOCAB(d), "zz", json_real(1.5)); }
static void e_vocab_dup(json_t *d) { json_object_set_new(VOCAB(d), "zz", json_integer(7)); }
static void e_vocab_limit(json_t *d) {
    json_object_set_new(VOCAB(d), "zz", json_integer(CEL_TOKENIZER_MAX_VOCAB));
}
static void e_merges_obj(json_t *d) { json_object_set_new(MODEL(d), "merges", json_object()); }
static void e_no_merges(json_t *d) { json_object_del(MODEL(d), "merges"); }
static void e_merge_unknown(json_t *d) {
    json_array_append_new(json_object_get(MODEL(d), "merges"), json_string("Ġwor zz"));
}
static void e_merge_result_unknown(json_t *d) { /* "o" + "Ġ" -> "oĠ" is no token */
    json_array_append_new(json_object_get(MODEL(d), "merges"), json_string("o Ġ"));
}
static void e_merge_one(json_t *d) {
    json_array_append_new(json_object_get(MODEL(d), "merges"), json_string("he"));
}
static void e_merge_three(json_t *d) {
    json_array_append_new(json_object_get(MODEL(d), "merges"), json_string("h e l"));
}
static void e_merge_pair1(json_t *d) {
    json_array_append_new(json_object_get(MODEL(d), "merges"), json_pack("[s]", "h"));
}
static void e_merge_int(json_t *d) {
    json_array_append_new(json_object_get(MODEL(d), "merges"), json_integer(4));
}
static void e_added_obj(json_t *d) { json_object_set_new(d, "added_tokens", json_object()); }
static void e_added_nocontent(json_t *d) {
    json_object_del(json_array_get(json_object_get(d, "added_tokens"), 0), "content");
}
static void e_added_empty(json_t *d) {
    json_object_set_new(json_array_get(json_object_get(d, "added_tokens"), 0), "content",
                        json_string(""));
}
static void e_added_id(json_t *d) {
    json_object_set_new(json_array_get(json_object_get(d, "added_tokens"), 0), "id",
                        json_integer(CEL_TOKENIZER_MAX_VOCAB));
}
static void e_added_notobj(json_t *d) {
    json_array_append_new(json_object_get(d, "added_tokens"), json_integer(1));
}
static void e_added_bool(json_t *d) {
    json_object_set_new(json_array_get(json_object_get(d, "added_tokens"), 0), "special",
                        json_string("yes"));
}
static void e_added_long(json_t *d) {
    char *s = malloc(CEL_TOKENIZER_MAX_TOKEN_BYTES + 2);
    memset(s, 'q', CEL_TOKENIZER_MAX_TOKEN_BYTES + 1);
    s[CEL_TOKENIZER_MAX_TOKEN_BYTES + 1] = 0;
    json_object_set_new(json_array_get(json_object_get(d, "added_tokens"), 0), "content",
                        json_string(s));
    free(s);
}
static void e_token_long(json_t *d) {
    char *s = malloc(CEL_TOKENIZER_MAX_TOKEN_BYTES + 2);
    memset(s, 'q', CEL_TOKENIZER_MAX_TOKEN_BYTES + 1);
    s[CEL_TOKENIZER_MAX_TOKEN_BYTES + 1] = 0;
    json_object_set_new(VOCAB(d), s, json_integer(290));
    free(s);
}
static void e_no_pre(json_t *d) { json_object_set_new(d, "pre_tokenizer", json_null()); }
static void e_pre_ws(json_t *d) {
    json_object_set_new(d, "pre_tokenizer", json_pack("{s:s}", "type", "Whitespace"));
}
static void e_pre_notype(json_t *d) { json_object_set_new(d, "pre_tokenizer", json_object()); }
static void e_split_regex(json_t *d) {
    json_object_set_new(d, "pre_tokenizer",
                        json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b}]}", "type",
                                  "Sequence", "pretokenizers", "type", "Split", "pattern", "Regex",
                                  "\\w+", "behavior", "Isolated", "invert", 0, "type", "ByteLevel",
                                  "use_regex", 0));
}
static void e_split_removed(json_t *d) {
    json_object_set_new(d, "pre_tokenizer",
                        json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s}]}", "type", "Sequence",
                                  "pretokenizers", "type", "Split", "pattern", "Regex", LLAMA3_RE,
                                  "behavior", "Removed", "invert", 0, "type", "ByteLevel"));
}
static void e_bytelevel_first(json_t *d) {
    json_object_set_new(d, "pre_tokenizer",
                        json_pack("{s:s, s:[{s:s}, {s:s, s:b}]}", "type", "Sequence",
                                  "pretokenizers", "type", "ByteLevel", "type", "Digits",
                                  "individual_digits", 1));
}
static void e_pre_deep(json_t *d) {
    json_t *p = json_pack("{s:s}", "type", "ByteLevel");
    for (int i = 0; i < 8; i++)
        p = json_pack("{s:s, s:[o]}", "type", "Sequence", "pretokenizers", p);
    json_object_set_new(d, "pre_tokenizer", p);
}
static void e_pre_steps(json_t *d) {
    json_t *a = json_array();
    for (int i = 0; i < 12; i++) json_array_append_new(a, json_pack("{s:s}", "type", "Digits"));
    json_array_append_new(a, json_pack("{s:s}", "type", "ByteLevel"));
    json_object_set_new(d, "pre_tokenizer",
                        json_pack("{s:s, s:o}", "type", "Sequence", "pretokenizers", a));
}
static void e_normalizer(json_t *d) {
    json_object_set_new(d, "normalizer", json_pack("{s:s}", "type", "NFC"));
}
static void e_decoder(json_t *d) {
    json_object_set_new(d, "decoder", json_pack("{s:s}", "type", "WordPiece"));
}
static void e_byte_fallback(json_t *d) {
    json_object_set_new(MODEL(d), "byte_fallback", json_true());
}
static void e_prefix(json_t *d) {
    json_object_set_new(MODEL(d), "continuing_subword_prefix", json_string("##"));
}
static void e_unk(json_t *d) { json_object_set_new(MODEL(d), "unk_token", json_string("<unk>")); }
static void e_post_bad(json_t *d) {
    json_object_set_new(d, "post_processor",
                        json_pack("{s:s, s:[{s:{s:s}}], s:{}}", "type", "TemplateProcessing",
                                  "single", "SpecialToken", "id", "<s>", "special_tokens"));
}
static void e_post_gap(json_t *d) {
    json_object_set_new(d, "post_processor",
                        json_pack("{s:s, s:[{s:{s:s}}], s:{s:{s:[i]}}}", "type",
                                  "TemplateProcessing", "single", "SpecialToken", "id", "<s>",
                                  "special_tokens", "<s>", "ids", 280));
}
static void e_bool_type(json_t *d) {
    json_object_set_new(json_object_get(d, "pre_tokenizer"), "use_regex", json_integer(1));
}

static void test_load_errors(void **state) {
    (void)state;
    expect_load_error(e_no_model, CEL_EPROTO);
    expect_load_error(e_model_array, CEL_EPROTO);
    expect_load_error(e_wordpiece, CEL_EINVAL);
    expect_load_error(e_type_int, CEL_EINVAL);
    expect_load_error(e_vocab_array, CEL_EPROTO);
    expect_load_error(e_vocab_empty, CEL_ELIMIT);
    expect_load_error(e_vocab_str, CEL_EPROTO);
    expect_load_error(e_vocab_neg, CEL_ELIMIT);
    expect_load_error(e_vocab_float, CEL_EPROTO);
    expect_load_error(e_vocab_dup, CEL_EPROTO);
    expect_load_error(e_vocab_limit, CEL_ELIMIT);
    expect_load_error(e_merges_obj, CEL_EPROTO);
    expect_load_error(e_no_merges, CEL_EPROTO);
    expect_load_error(e_merge_unknown, CEL_EPROTO);
    expect_load_error(e_merge_result_unknown, CEL_EPROTO);
    expect_load_error(e_merge_one, CEL_EPROTO);
    expect_load_error(e_merge_three, CEL_EPROTO);
    expect_load_error(e_merge_pair1, CEL_EPROTO);
    expect_load_error(e_merge_int, CEL_EPROTO);
    expect_load_error(e_added_obj, CEL_EPROTO);
    expect_load_error(e_added_nocontent, CEL_EPROTO);
    expect_load_error(e_added_empty, CEL_EPROTO);
    expect_load_error(e_added_id, CEL_ELIMIT);
    expect_load_error(e_added_notobj, CEL_EPROTO);
    expect_load_error(e_added_bool, CEL_EPROTO);
    expect_load_error(e_added_long, CEL_ELIMIT);
    expect_load_error(e_token_long, CEL_ELIMIT);
    expect_load_error(e_no_pre, CEL_EINVAL);
    expect_load_error(e_pre_ws, CEL_EINVAL);
    expect_load_error(e_pre_notype, CEL_EPROTO);
    expect_load_error(e_split_regex, CEL_EINVAL);
    expect_load_error(e_split_removed, CEL_EINVAL);
    expect_load_error(e_bytelevel_first, CEL_EINVAL);
    expect_load_error(e_pre_deep, CEL_ELIMIT);
    expect_load_error(e_pre_steps, CEL_ELIMIT);
    expect_load_error(e_normalizer, CEL_EINVAL);
    expect_load_error(e_decoder, CEL_EINVAL);
    expect_load_error(e_byte_fallback, CEL_EINVAL);
    expect_load_error(e_prefix, CEL_EINVAL);
    expect_load_error(e_unk, CEL_EPROTO);
    expect_load_error(e_post_bad, CEL_EPROTO);
    expect_load_error(e_post_gap, CEL_EPROTO);
    expect_load_error(e_bool_type, CEL_EPROTO);
}

static void test_load_bad_bytes(void **state) {
    (void)state;
    cel_tokenizer_t *t = (cel_tokenizer_t *)1;
    cel_err_t err = { 0 };
    static const char *const bad[] = { "",
                                       "{",
                                       "[]",
                                       "null",
                                       "{\"model\":",
                                       "\xff\xfe",
                                       "{\"model\":{\"vocab\":{\"a\":0,\"a\":1},\"merges\":[]}}" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(cel_tokenizer_load_buf(bad[i], strlen(bad[i]), &t, &err), CEL_EPROTO);
        assert_null(t);
    }
    assert_int_equal(
        cel_tokenizer_load_buf("{}", (size_t)CEL_TOKENIZER_MAX_FILE_BYTES + 1, &t, &err),
        CEL_ELIMIT);
    /* a truncated real document */
    json_t *doc = base_doc(0);
    char *s = json_dumps(doc, 0);
    json_decref(doc);
    for (size_t cut = 1; cut < strlen(s); cut += strlen(s) / 50 + 1)
        assert_int_equal(cel_tokenizer_load_buf(s, cut, &t, &err), CEL_EPROTO);
    free(s);
    assert_int_equal(cel_tokenizer_load("/nonexistent/tokenizer.json", &t, &err), CEL_EIO);
    assert_null(t);
}

static void test_limits(void **state) {
    (void)state;
    /* the largest id and the longest token are accepted */
    json_t *doc = base_doc(0);
    json_object_set_new(VOCAB(doc), "zz", json_integer(CEL_TOKENIZER_MAX_VOCAB - 1));
    char *s = malloc(CEL_TOKENIZER_MAX_TOKEN_BYTES + 1);
    memset(s, 'q', CEL_TOKENIZER_MAX_TOKEN_BYTES);
    s[CEL_TOKENIZER_MAX_TOKEN_BYTES] = 0;
    json_object_set_new(VOCAB(doc), s, json_integer(290));
    cel_tokenizer_t *t = load_ok(doc);
    assert_int_equal(cel_tokenizer_vocab_size(t), CEL_TOKENIZER_MAX_VOCAB);
    assert_int_equal(cel_tokenizer_find(t, s), 290);
    const int32_t ids[] = { CEL_TOKENIZER_MAX_VOCAB - 1 };
    check_decode(t, ids, 1, "zz", 2);
    cel_tokenizer_free(t);
    free(s);
    /* too many added tokens */
    doc = base_doc(0);
    json_t *added = json_object_get(doc, "added_tokens");
    for (unsigned i = 0; i < CEL_TOKENIZER_MAX_ADDED - 2; i++) /* base has 2 */
        json_array_append_new(added, json_pack("{s:i, s:s}", "id", 300, "content", "x"));
    cel_err_t err = { 0 };
    t = load_ok(json_deep_copy(doc)); /* exactly at the limit */
    cel_tokenizer_free(t);
    json_array_append_new(added, json_pack("{s:i, s:s}", "id", 300, "content", "x"));
    assert_int_equal(load_doc(doc, &t, &err), CEL_ELIMIT);
}

static void test_file_load(void **state) {
    (void)state;
    char path[] = "/tmp/test_tokenizer_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    json_t *doc = llama_doc(1);
    assert_int_equal(json_dumpfd(doc, fd, 0), 0);
    json_decref(doc);
    close(fd);
    cel_tokenizer_t *t = NULL;
    cel_err_t err = { 0 };
    assert_int_equal(cel_tokenizer_load(path, &t, &err), CEL_OK);
    ENC(t, "hello world", 1, 300, 259, 264);
    cel_tokenizer_free(t);
    unlink(path);
}

/* Many pieces, long pieces and long inputs: bounded work and the heap sizing. */
static void test_long_inputs(void **state) {
    (void)state;
    cel_tokenizer_t *t = load_ok(base_doc(0));
    size_t n = 200000;
    char *s = malloc(n);
    for (size_t i = 0; i < n; i++) s[i] = "hello world  \n\t"[i % 16];
    int32_t *ids;
    size_t got;
    char *back;
    size_t blen;
    assert_int_equal(cel_tokenizer_encode(t, s, n, 0, &ids, &got, NULL), CEL_OK);
    assert_int_equal(cel_tokenizer_decode(t, ids, got, &back, &blen, NULL), CEL_OK);
    assert_int_equal(blen, n);
    assert_memory_equal(back, s, n);
    free(ids);
    free(back);
    memset(s, 'l', n); /* one piece of 200000 letters: "ll" merges */
    assert_int_equal(cel_tokenizer_encode(t, s, n, 0, &ids, &got, NULL), CEL_OK);
    assert_int_equal(got, n / 2);
    assert_int_equal(ids[0], 257);
    free(ids);
    memset(s, ' ', n); /* spaces: "ĠĠ" merges */
    assert_int_equal(cel_tokenizer_encode(t, s, n, 0, &ids, &got, NULL), CEL_OK);
    assert_int_equal(got, n / 2);
    free(ids);
    free(s);
    cel_tokenizer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_gpt2),    cmocka_unit_test(test_lookups),
        cmocka_unit_test(test_decode),         cmocka_unit_test(test_encode_errors),
        cmocka_unit_test(test_encode_llama3),  cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_load_bad_bytes), cmocka_unit_test(test_limits),
        cmocka_unit_test(test_file_load),      cmocka_unit_test(test_long_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
