/* test_compress.c -- unit tests for protocol/compress.c.
 *
 * kombu's names and aliases; bodies kombu 5.2 compressed (captured from
 * kombu.compression.compress) decode, and our encoders write the same bytes;
 * round trips of every method; the size cap at, below and past the limit
 * (a 64 MiB run of zeros against an 8 MiB cap: CEL_ELIMIT); truncated,
 * corrupt and concatenated streams. Then the two users: a task whose body
 * is compressed decodes (over its cap: CEL_EBODY with err.code CEL_ELIMIT),
 * and cel_message_apply compresses as send_task_message does.
 */
#include "testutil.h"

#include "../../protocol/compress.h"
#include "../../protocol/message.h"
#include "../../protocol/protocol.h"

static const char body[] = "[[2, 3], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": "
                           "null, \"chord\": null}]";

/* kombu.compression.compress(body, ctype) for each method, as captured. */
static const struct {
    cel_compress_t m;
    const char *ctype;
    const char *bytes;
    size_t len;
} captured[] = {
    { CEL_COMPRESS_ZLIB, "application/x-gzip",
      "\x78\x9c\x8b\x8e\x36\xd2\x51\x30\x8e\xd5\x51\xa8\xae\x05\x62\xa5\xe4\xc4\x9c\x9c\xa4\xc4"
      "\xe4\xec\x62\x25\x2b\x85\xbc\xd2\x9c\x1c\x1d\x05\xa5\xd4\xa2\x22\x34\x91\xe4\x8c\xc4\xcc"
      "\x3c\x64\x6e\x7e\x51\x0a\x94\x5b\x1b\x0b\x00\x0a\x6c\x19\xf2",
      59 },
    { CEL_COMPRESS_BZ2, "application/x-bz2",
      "\x42\x5a\x68\x39\x31\x41\x59\x26\x53\x59\xa4\x53\x35\x2e\x00\x00\x0f\x9b\x80\x50\x04\x18"
      "\x10\x00\x0a\x3e\x6d\x9a\x0a\x20\x00\x54\x35\x00\x68\x00\x34\xd0\x4a\x98\x9a\x86\x87\xa8"
      "\x3d\x43\x22\x83\x82\x1e\xca\x45\xf2\xa7\x94\xb6\x22\x1f\x70\x56\x87\xe4\x9e\xef\xb5\xa9"
      "\x23\x2d\x46\x42\xa1\x85\x35\x6c\x3b\x00\x44\x9e\x40\x60\x40\x72\x5f\x17\x72\x45\x38\x50"
      "\x90\xa4\x53\x35\x2e",
      93 },
    { CEL_COMPRESS_LZMA, "application/x-lzma",
      "\xfd\x37\x7a\x58\x5a\x00\x00\x04\xe6\xd6\xb4\x46\x02\x00\x21\x01\x16\x00\x00\x00\x74\x2f"
      "\xe5\xa3\xe0\x00\x50\x00\x36\x5d\x00\x2d\xe0\xc4\x58\x21\x16\x66\x1a\x2c\x4f\x75\x10\x46"
      "\x50\x97\x8e\x4f\xf8\x95\xf3\xec\x40\x61\x73\x07\x16\xdd\xc1\x76\x14\x94\xb8\xbf\xe2\xb2"
      "\x13\xc1\x25\xbc\x2c\x6c\x4d\x42\x27\xe9\x3f\xe6\xd9\x99\x14\xa2\xa7\x3c\x00\x00\x00\x00"
      "\xbf\x96\xe6\x1f\x35\xd7\x73\xd6\x00\x01\x52\x51\x9f\xeb\x67\xb4\x1f\xb6\xf3\x7d\x01\x00"
      "\x00\x00\x00\x04\x59\x5a",
      116 },
    { CEL_COMPRESS_ZSTD, "application/zstd",
      "\x28\xb5\x2f\xfd\x20\x51\xf5\x01\x00\x14\x03\x5b\x5b\x32\x2c\x20\x33\x5d\x2c\x20\x7b\x7d"
      "\x2c\x20\x7b\x22\x63\x61\x6c\x6c\x62\x61\x63\x6b\x73\x22\x3a\x20\x6e\x75\x6c\x6c\x2c\x20"
      "\x22\x65\x72\x72\x63\x68\x61\x69\x6e\x63\x68\x6f\x72\x64\x7d\x5d\x03\x00\x32\xb3\x26\x6a"
      "\xd3\xad\x6e\x3e\x01",
      71 },
    { CEL_COMPRESS_BROTLI, "application/x-brotli",
      "\x1b\x50\x00\xe0\xc5\xce\x96\xaa\x5d\x96\x68\x52\x35\x8d\x6c\xbb\x8f\x3f\x4e\x39\xe0\xe6"
      "\x81\x07\xe0\x79\x90\x66\x74\xd2\xc3\x06\x1c\x44\x12\x06\xcb\x9a\x69\x2a\x5e\xf8\x17\x94"
      "\xf6\x10\x97\xee\xc3\x90\xf2\x4a\x07\x2e\xbb\x57",
      56 },
};
#define NCAPTURED (sizeof(captured) / sizeof(captured[0]))

static void test_lookup(void **state) {
    static const struct {
        const char *name;
        cel_compress_t m;
    } names[] = {
        { "application/x-gzip", CEL_COMPRESS_ZLIB },
        { "gzip", CEL_COMPRESS_ZLIB },
        { "zlib", CEL_COMPRESS_ZLIB },
        { "application/x-bz2", CEL_COMPRESS_BZ2 },
        { "bzip2", CEL_COMPRESS_BZ2 },
        { "bzip", CEL_COMPRESS_BZ2 },
        { "application/x-lzma", CEL_COMPRESS_LZMA },
        { "lzma", CEL_COMPRESS_LZMA },
        { "xz", CEL_COMPRESS_LZMA },
        { "application/zstd", CEL_COMPRESS_ZSTD },
        { "zstd", CEL_COMPRESS_ZSTD },
        { "zstandard", CEL_COMPRESS_ZSTD },
        { "application/x-brotli", CEL_COMPRESS_BROTLI },
        { "brotli", CEL_COMPRESS_BROTLI },
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        cel_compress_t m = CEL_COMPRESS_NONE;
        assert_int_equal(cel_compress_lookup(names[i].name, &m, NULL), CEL_OK);
        assert_int_equal(m, names[i].m);
    }
    cel_err_t err;
    cel_compress_t m = CEL_COMPRESS_ZLIB;
    const char *bad[] = { "", "GZIP", "application/gzip", "snappy", NULL };
    for (int i = 0; i < 5; i++) {
        assert_int_equal(cel_compress_lookup(bad[i], &m, &err), CEL_EINVAL);
        assert_int_equal(m, CEL_COMPRESS_NONE);
    }
    assert_non_null(strstr(err.msg, "unsupported compression"));
    for (size_t i = 0; i < NCAPTURED; i++)
        assert_string_equal(cel_compress_content_type(captured[i].m), captured[i].ctype);
    assert_null(cel_compress_content_type(CEL_COMPRESS_NONE));
}

static void test_kombu_bodies(void **state) {
    for (size_t i = 0; i < NCAPTURED; i++) {
        uint8_t *out;
        size_t n;
        cel_err_t err;
        int rc = cel_compress_decode(captured[i].m, (const uint8_t *)captured[i].bytes,
                                     captured[i].len, 1 << 20, &out, &n, &err);
        if (rc) fail_msg("%s: %s", captured[i].ctype, err.msg);
        assert_int_equal(n, strlen(body));
        assert_memory_equal(out, body, n);
        assert_int_equal(out[n], 0);
        free(out);
        /* what kombu's encoder writes, byte for byte */
        assert_int_equal(
            cel_compress_encode(captured[i].m, (const uint8_t *)body, strlen(body), &out, &n, &err),
            CEL_OK);
        assert_int_equal(n, captured[i].len);
        assert_memory_equal(out, captured[i].bytes, n);
        free(out);
    }
}

/* Bytes that compress some but not trivially. */
static uint8_t *sample(size_t len) {
    uint8_t *p = malloc(len ? len : 1);
    uint32_t x = 12345;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (uint8_t)("abcdefgh{}[]\", 0123"[(x >> 16) % 19]);
    }
    return p;
}

static void test_round_trip(void **state) {
    const size_t lens[] = { 0, 1, 100, 65536, 65537, 300000 };
    for (size_t i = 0; i < NCAPTURED; i++) {
        for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
            uint8_t *in = sample(lens[j]), *z, *out;
            size_t zn, n;
            assert_int_equal(cel_compress_encode(captured[i].m, in, lens[j], &z, &zn, NULL),
                             CEL_OK);
            assert_int_equal(cel_compress_decode(captured[i].m, z, zn, lens[j], &out, &n, NULL),
                             CEL_OK);
            assert_int_equal(n, lens[j]);
            if (n) assert_memory_equal(out, in, n);
            free(out);
            free(z);
            free(in);
        }
    }
    uint8_t *out = (uint8_t *)1;
    size_t n = 5;
    assert_int_equal(
        cel_compress_encode(CEL_COMPRESS_NONE, (const uint8_t *)"x", 1, &out, &n, NULL),
        CEL_EINVAL);
    assert_null(out);
    assert_int_equal(
        cel_compress_decode(CEL_COMPRESS_NONE, (const uint8_t *)"x", 1, 10, &out, &n, NULL),
        CEL_EINVAL);
    assert_null(out);
}

/* The cap: exactly max_out decodes, one byte less is over; a 64 MiB run of
 * zeros (a few KiB compressed) stops at an 8 MiB cap. */
static void test_cap(void **state) {
    const size_t len = 200000, big = 64u << 20;
    uint8_t *in = sample(len), *zeros = calloc(1, big);
    for (size_t i = 0; i < NCAPTURED; i++) {
        cel_compress_t m = captured[i].m;
        uint8_t *z, *out;
        size_t zn, n;
        cel_err_t err;
        assert_int_equal(cel_compress_encode(m, in, len, &z, &zn, NULL), CEL_OK);
        assert_int_equal(cel_compress_decode(m, z, zn, len, &out, &n, NULL), CEL_OK);
        free(out);
        out = (uint8_t *)1;
        assert_int_equal(cel_compress_decode(m, z, zn, len - 1, &out, &n, &err), CEL_ELIMIT);
        assert_null(out);
        assert_int_equal(n, 0);
        assert_non_null(strstr(err.msg, "more than the 199999 byte limit"));
        free(z);
        if (m == CEL_COMPRESS_BROTLI) continue; /* quality 11 over 64 MiB is slow */
        assert_int_equal(cel_compress_encode(m, zeros, big, &z, &zn, NULL), CEL_OK);
        assert_true(zn < big / 100);
        assert_int_equal(cel_compress_decode(m, z, zn, 8u << 20, &out, &n, &err), CEL_ELIMIT);
        assert_null(out);
        free(z);
    }
    free(zeros);
    free(in);
}

static void test_corrupt(void **state) {
    for (size_t i = 0; i < NCAPTURED; i++) {
        const uint8_t *b = (const uint8_t *)captured[i].bytes;
        size_t len = captured[i].len;
        uint8_t *out = (uint8_t *)1, *copy = malloc(len);
        size_t n;
        cel_err_t err;
        /* every truncation, the empty one included */
        for (size_t cut = 0; cut < len; cut++) {
            int rc = cel_compress_decode(captured[i].m, b, cut, 1 << 20, &out, &n, &err);
            if (rc != CEL_EPROTO)
                fail_msg("%s cut at %zu: %d (%s)", captured[i].ctype, cut, rc, err.msg);
            assert_null(out);
        }
        /* a flipped byte in the middle: an error, never a crash (brotli and
         * zstd without checksums may still decode it to something else) */
        memcpy(copy, b, len);
        copy[len / 2] ^= 0x55;
        int rc = cel_compress_decode(captured[i].m, copy, len, 1 << 20, &out, &n, &err);
        if (rc == CEL_OK) free(out);
        else assert_int_equal(rc, CEL_EPROTO);
        free(copy);
    }
    uint8_t *out;
    size_t n;
    assert_int_equal(
        cel_compress_decode(CEL_COMPRESS_ZLIB, (const uint8_t *)"not zlib", 8, 100, &out, &n, NULL),
        CEL_EPROTO);
}

/* bz2.decompress, lzma.decompress and zstandard read concatenated streams. */
static void test_concatenated(void **state) {
    cel_compress_t ms[] = { CEL_COMPRESS_BZ2, CEL_COMPRESS_LZMA, CEL_COMPRESS_ZSTD };
    for (int i = 0; i < 3; i++) {
        uint8_t *a, *b, *out;
        size_t an, bn, n;
        assert_int_equal(cel_compress_encode(ms[i], (const uint8_t *)"hello ", 6, &a, &an, NULL),
                         CEL_OK);
        assert_int_equal(cel_compress_encode(ms[i], (const uint8_t *)"world", 5, &b, &bn, NULL),
                         CEL_OK);
        uint8_t *both = malloc(an + bn);
        memcpy(both, a, an);
        memcpy(both + an, b, bn);
        assert_int_equal(cel_compress_decode(ms[i], both, an + bn, 100, &out, &n, NULL), CEL_OK);
        assert_int_equal(n, 11);
        assert_memory_equal(out, "hello world", 11);
        free(out);
        free(both);
        free(a);
        free(b);
    }
}

/* A kombu Redis envelope around a body compressed with ctype. */
static char *envelope(const uint8_t *raw, size_t len, const char *ctype) {
    char *b64 = cel_base64_encode(raw, len);
    json_t *env =
        json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:s?}, s:{s:s}}", "body", b64, "content-type",
                  "application/json", "content-encoding", "utf-8", "headers", "task", "diag.add",
                  "id", "tid-1", "compression", ctype, "properties", "body_encoding", "base64");
    char *s = json_dumps(env, 0);
    json_decref(env);
    free(b64);
    return s;
}

static void test_task_decode(void **state) {
    cel_task_t *t;
    cel_err_t err;
    for (size_t i = 0; i < NCAPTURED; i++) {
        char *e = envelope((const uint8_t *)captured[i].bytes, captured[i].len, captured[i].ctype);
        assert_int_equal(cel_task_decode_envelope(e, strlen(e), &t, &err), CEL_OK);
        assert_int_equal(json_integer_value(json_array_get(t->args, 1)), 3);
        cel_task_free(t);
        /* the body is 81 bytes: a cap of 80 refuses it, as LimitExceeded */
        assert_int_equal(cel_task_decode_envelope_max(e, strlen(e), 80, &t, &err), CEL_EBODY);
        assert_int_equal(err.code, CEL_ELIMIT);
        assert_string_equal(t->id, "tid-1");
        cel_task_free(t);
        assert_int_equal(cel_task_decode_envelope_max(e, strlen(e), 81, &t, &err), CEL_OK);
        cel_task_free(t);
        free(e);
    }
    /* not compressed as it says, or a method kombu does not know: DecodeError */
    const char *cases[][2] = { { "application/x-bz2", "not valid application/x-bz2" },
                               { "snappy", "unsupported compression 'snappy'" } };
    for (int i = 0; i < 2; i++) {
        char *e = envelope((const uint8_t *)body, strlen(body), cases[i][0]);
        assert_int_equal(cel_task_decode_envelope(e, strlen(e), &t, &err), CEL_EBODY);
        assert_int_equal(err.code, CEL_EBODY);
        if (!strstr(err.msg, cases[i][1])) fail_msg("%s", err.msg);
        cel_task_free(t);
        free(e);
    }
}

static void fixed_id(void *priv, char out[37]) { snprintf(out, 37, "fixed-id"); }

static void test_message_apply(void **state) {
    cel_send_ctx_t ctx = { .now = 1e9,
                           .origin = "gen1@h",
                           .reply_to = "oid",
                           .default_queue = "celery",
                           .new_id = fixed_id };
    json_t *sig = json_pack("{s:s, s:[i,i], s:{}, s:{}}", "task", "diag.add", "args", 2, 3,
                            "kwargs", "options");
    json_t *xz = json_pack("{s:s}", "compression", "xz");
    struct {
        json_t *options;
        const char *dflt, *ctype;
    } cases[] = { { NULL, NULL, NULL },
                  { NULL, "gzip", "application/x-gzip" },
                  { xz, "gzip", "application/x-lzma" } };
    for (int i = 0; i < 3; i++) {
        cel_msg_t *m;
        ctx.compression = cases[i].dflt;
        assert_int_equal(cel_message_apply(sig, NULL, NULL, cases[i].options, 0, &ctx, &m, NULL),
                         CEL_OK);
        json_t *h = json_object_get(m->headers, "compression");
        const char *plain = "[[2, 3], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": "
                            "null, \"chord\": null}]";
        if (!cases[i].ctype) {
            assert_null(h);
            assert_int_equal(m->body_len, strlen(plain));
            assert_memory_equal(m->body, plain, m->body_len);
        } else {
            cel_compress_t method;
            uint8_t *out;
            size_t n;
            assert_string_equal(json_string_value(h), cases[i].ctype);
            /* kombu's _prepare adds it after every other header */
            const char *last = NULL, *k;
            json_t *v;
            json_object_foreach(m->headers, k, v) last = k;
            assert_string_equal(last, "compression");
            assert_int_equal(cel_compress_lookup(cases[i].ctype, &method, NULL), CEL_OK);
            assert_int_equal(cel_compress_decode(method, (const uint8_t *)m->body, m->body_len,
                                                 1000, &out, &n, NULL),
                             CEL_OK);
            assert_string_equal((char *)out, plain);
            free(out);
        }
        cel_msg_free(m);
    }
    json_t *bad = json_pack("{s:s}", "compression", "snappy");
    cel_msg_t *m;
    cel_err_t err;
    assert_int_equal(cel_message_apply(sig, NULL, NULL, bad, 0, &ctx, &m, &err), CEL_EINVAL);
    assert_null(m);
    assert_non_null(strstr(err.msg, "compression snappy is not supported"));
    json_decref(bad);
    json_decref(xz);
    json_decref(sig);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup),      cmocka_unit_test(test_kombu_bodies),
        cmocka_unit_test(test_round_trip),  cmocka_unit_test(test_cap),
        cmocka_unit_test(test_corrupt),     cmocka_unit_test(test_concatenated),
        cmocka_unit_test(test_task_decode), cmocka_unit_test(test_message_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
