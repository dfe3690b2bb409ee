/* test_frame.c -- unit tests for protocol/frame.c (frame reader, header, typed frames).
 *
 * The reader: whole frames, byte-by-byte feeding, several frames per feed,
 * empty payloads, lengths at the limit and one past it (sticky CEL_ELIMIT),
 * buffer growth and payload validity rules. The typed frames: a round trip
 * of every kind with every field, frames as Python's msgpack writes them,
 * every required field missing and every field of a wrong type (CEL_EPROTO),
 * the run frame's id kept for the executor's FAILURE, string length and
 * nesting at the limit and one past it, every truncation in an exact-size
 * buffer, failing allocations, and the encoders' own errors. Run under
 * `make asan`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "../../protocol/frame.h"
#include "../../protocol/protocol.h"

/* Appends one frame (header + payload) to out; returns bytes written. */
static size_t put_frame(uint8_t *out, const void *payload, size_t len) {
    assert_int_equal(cel_frame_header(len, out, NULL), CEL_OK);
    if (len) memcpy(out + CEL_FRAME_HDR, payload, len);
    return CEL_FRAME_HDR + len;
}

static void expect_frame(cel_frame_reader_t *r, const void *want, size_t want_len) {
    const uint8_t *p;
    size_t n;
    cel_err_t err;
    assert_int_equal(cel_frame_reader_next(r, &p, &n, &err), CEL_OK);
    assert_int_equal(n, want_len);
    if (want_len) assert_memory_equal(p, want, want_len);
}

static void expect_again(cel_frame_reader_t *r) {
    const uint8_t *p = (const uint8_t *)"x";
    size_t n = 99;
    assert_int_equal(cel_frame_reader_next(r, &p, &n, NULL), CEL_EAGAIN);
    assert_null(p);
    assert_int_equal(n, 0);
}

static void test_header_big_endian(void **state) {
    (void)state;
    uint8_t h[CEL_FRAME_HDR];
    assert_int_equal(cel_frame_header(0x01020304, h, NULL), CEL_OK);
    assert_int_equal(h[0], 1);
    assert_int_equal(h[1], 2);
    assert_int_equal(h[2], 3);
    assert_int_equal(h[3], 4);
    assert_int_equal(cel_frame_header(CEL_FRAME_MAX, h, NULL), CEL_OK);
    cel_err_t err;
    assert_int_equal(cel_frame_header((size_t)CEL_FRAME_MAX + 1, h, &err), CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    assert_non_null(strstr(err.msg, "limit"));
}

static void test_whole_frame(void **state) {
    (void)state;
    cel_frame_reader_t *r = cel_frame_reader_new(1024);
    assert_non_null(r);
    uint8_t buf[64];
    size_t n = put_frame(buf, "\x81\xa2op\xa5ready", 10);
    expect_again(r);
    assert_int_equal(cel_frame_reader_feed(r, buf, n), CEL_OK);
    expect_frame(r, "\x81\xa2op\xa5ready", 10);
    expect_again(r);
    cel_frame_reader_free(r);
}

static void test_byte_by_byte(void **state) {
    (void)state;
    cel_frame_reader_t *r = cel_frame_reader_new(1024);
    uint8_t buf[512], payload[300];
    for (size_t i = 0; i < sizeof(payload); i++) payload[i] = (uint8_t)(i * 7);
    size_t n = put_frame(buf, payload, sizeof(payload));
    for (size_t i = 0; i < n - 1; i++) {
        assert_int_equal(cel_frame_reader_feed(r, buf + i, 1), CEL_OK);
        expect_again(r);
    }
    assert_int_equal(cel_frame_reader_feed(r, buf + n - 1, 1), CEL_OK);
    expect_frame(r, payload, sizeof(payload));
    expect_again(r);
    cel_frame_reader_free(r);
}

static void test_several_frames_one_feed(void **state) {
    (void)state;
    cel_frame_reader_t *r = cel_frame_reader_new(1024);
    uint8_t buf[256];
    size_t n = 0;
    n += put_frame(buf + n, "one", 3);
    n += put_frame(buf + n, "", 0);
    n += put_frame(buf + n, "three", 5);
    n += put_frame(buf + n, "fo", 2); /* complete */
    memcpy(buf + n,
           "\0\0\0\x05"
           "pa",
           6); /* header + 2 of 5 bytes */
    n += 6;
    assert_int_equal(cel_frame_reader_feed(r, buf, n), CEL_OK);
    expect_frame(r, "one", 3);
    expect_frame(r, "", 0);
    expect_frame(r, "three", 5);
    expect_frame(r, "fo", 2);
    expect_again(r);
    assert_int_equal(cel_frame_reader_feed(r, "rtX", 3), CEL_OK); /* completes the 5 bytes */
    expect_frame(r, "partX", 5);
    expect_again(r);
    cel_frame_reader_free(r);
}

static void test_zero_length_payload(void **state) {
    (void)state;
    cel_frame_reader_t *r = cel_frame_reader_new(0);
    const uint8_t hdr[4] = { 0, 0, 0, 0 };
    assert_int_equal(cel_frame_reader_feed(r, hdr, 4), CEL_OK);
    assert_int_equal(cel_frame_reader_feed(r, hdr, 4), CEL_OK);
    expect_frame(r, NULL, 0);
    expect_frame(r, NULL, 0);
    expect_again(r);
    /* limit 0: a 1-byte frame is over it */
    const uint8_t one[4] = { 0, 0, 0, 1 };
    assert_int_equal(cel_frame_reader_feed(r, one, 4), CEL_OK);
    assert_int_equal(cel_frame_reader_next(r, &(const uint8_t *){ 0 }, &(size_t){ 0 }, NULL),
                     CEL_ELIMIT);
    cel_frame_reader_free(r);
}

static void test_at_limit(void **state) {
    (void)state;
    enum { LIM = 100000 };
    cel_frame_reader_t *r = cel_frame_reader_new(LIM);
    uint8_t *buf = malloc(CEL_FRAME_HDR + LIM);
    assert_non_null(buf);
    for (size_t i = 0; i < LIM; i++) buf[CEL_FRAME_HDR + i] = (uint8_t)i;
    put_frame(buf, buf + CEL_FRAME_HDR, LIM);
    assert_int_equal(cel_frame_reader_feed(r, buf, CEL_FRAME_HDR + LIM), CEL_OK);
    expect_frame(r, buf + CEL_FRAME_HDR, LIM);
    expect_again(r);
    free(buf);
    cel_frame_reader_free(r);
}

static void test_limit_plus_one_is_sticky(void **state) {
    (void)state;
    enum { LIM = 100000 };
    cel_frame_reader_t *r = cel_frame_reader_new(LIM);
    uint8_t good[16], hdr[CEL_FRAME_HDR];
    size_t n = put_frame(good, "ok", 2);
    assert_int_equal(cel_frame_header(LIM + 1, hdr, NULL), CEL_OK);
    assert_int_equal(cel_frame_reader_feed(r, good, n), CEL_OK);
    assert_int_equal(cel_frame_reader_feed(r, hdr, sizeof(hdr)), CEL_OK);
    expect_frame(r, "ok", 2); /* frames before the bad prefix still come out */
    const uint8_t *p;
    size_t len;
    cel_err_t err;
    cel_err_clear(&err);
    assert_int_equal(cel_frame_reader_next(r, &p, &len, &err), CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    assert_non_null(strstr(err.msg, "100001"));
    assert_null(p);
    /* sticky: feeding and reading keep failing the same way */
    assert_int_equal(cel_frame_reader_feed(r, good, n), CEL_ELIMIT);
    cel_err_clear(&err);
    assert_int_equal(cel_frame_reader_next(r, &p, &len, &err), CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    cel_frame_reader_free(r);
}

static void test_max_clamped_to_frame_max(void **state) {
    (void)state;
    cel_frame_reader_t *r = cel_frame_reader_new(SIZE_MAX);
    const uint8_t hdr[4] = { 0xff, 0xff, 0xff, 0xff }; /* 4 GiB - 1 > CEL_FRAME_MAX */
    assert_int_equal(cel_frame_reader_feed(r, hdr, 4), CEL_OK);
    assert_int_equal(cel_frame_reader_next(r, &(const uint8_t *){ 0 }, &(size_t){ 0 }, NULL),
                     CEL_ELIMIT);
    cel_frame_reader_free(r);
    /* CEL_FRAME_MAX itself is accepted as a length (waits for the payload) */
    r = cel_frame_reader_new(CEL_FRAME_MAX);
    uint8_t h[4];
    cel_frame_header(CEL_FRAME_MAX, h, NULL);
    assert_int_equal(cel_frame_reader_feed(r, h, 4), CEL_OK);
    expect_again(r);
    cel_frame_reader_free(r);
}

static void test_growth_in_pieces(void **state) {
    (void)state;
    /* A 1 MiB frame fed in uneven pieces, then a small one: the buffer grows
     * from its first allocation and keeps earlier bytes intact. */
    enum { BIG = 1 << 20 };
    cel_frame_reader_t *r = cel_frame_reader_new(BIG);
    uint8_t *buf = malloc(CEL_FRAME_HDR + BIG + 16);
    assert_non_null(buf);
    for (size_t i = 0; i < BIG; i++) buf[CEL_FRAME_HDR + i] = (uint8_t)(i % 251);
    size_t n = put_frame(buf, buf + CEL_FRAME_HDR, BIG);
    n += put_frame(buf + n, "tail", 4);
    size_t off = 0, step = 1;
    while (off < n) {
        size_t k = n - off < step ? n - off : step;
        assert_int_equal(cel_frame_reader_feed(r, buf + off, k), CEL_OK);
        off += k;
        step = step * 3 + 1;
    }
    uint8_t *want = malloc(BIG);
    for (size_t i = 0; i < BIG; i++) want[i] = (uint8_t)(i % 251);
    expect_frame(r, want, BIG);
    expect_frame(r, "tail", 4);
    expect_again(r);
    free(want);
    free(buf);
    cel_frame_reader_free(r);
}

static void test_consumed_bytes_are_reused(void **state) {
    (void)state;
    /* Many small frames through one reader: memory stays bounded (ASan would
     * not catch growth, but a wrong compaction corrupts payloads). */
    cel_frame_reader_t *r = cel_frame_reader_new(64);
    uint8_t buf[64];
    for (int i = 0; i < 10000; i++) {
        char msg[16];
        int len = snprintf(msg, sizeof(msg), "m%d", i);
        size_t n = put_frame(buf, msg, (size_t)len);
        /* split each frame across two feeds at a moving point */
        size_t cut = (size_t)i % n;
        assert_int_equal(cel_frame_reader_feed(r, buf, cut), CEL_OK);
        assert_int_equal(cel_frame_reader_feed(r, buf + cut, n - cut), CEL_OK);
        expect_frame(r, msg, (size_t)len);
    }
    expect_again(r);
    cel_frame_reader_free(r);
}

static void test_free_null(void **state) {
    (void)state;
    cel_frame_reader_free(NULL);
    cel_frame_reader_t *r = cel_frame_reader_new(16);
    assert_int_equal(cel_frame_reader_feed(r, NULL, 0), CEL_OK);
    expect_again(r);
    cel_frame_reader_free(r);
}

/* ---- typed frames ----------------------------------------------------- */

/* Encodes a json object as a msgpack payload (a frame written by hand). */
static uint8_t *pack(json_t *obj, size_t *len) {
    uint8_t *buf = NULL;
    size_t cap = 0;
    *len = 0;
    assert_int_equal(cel_json_to_msgpack(obj, &buf, len, &cap, NULL), CEL_OK);
    json_decref(obj);
    /* an exact-size copy: ASan sees any read past the payload */
    uint8_t *exact = malloc(*len ? *len : 1);
    memcpy(exact, buf, *len);
    free(buf);
    return exact;
}

static json_t *parse(const char *text) {
    json_t *v = json_loads(text, 0, NULL);
    assert_non_null(v);
    return v;
}

static void test_ready_round_trip(void **state) {
    (void)state;
    cel_frame_ready_t in = { .pid = 4242, .device = "cuda:0" }, out;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(cel_frame_ready_encode(&in, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_op(buf, len, NULL), CEL_FRAME_READY);
    assert_int_equal(cel_frame_ready_decode(buf, len, &out, NULL), CEL_OK);
    assert_int_equal(out.pid, 4242);
    assert_string_equal(out.device, "cuda:0");
    cel_frame_ready_clear(&out);
    assert_null(out.device);
    cel_frame_ready_clear(&out); /* a cleared frame clears again */
    /* it is a plain map: the generic decoder sees exactly its three keys */
    json_t *v;
    assert_int_equal(cel_msgpack_to_json(buf, len, &v, NULL), CEL_OK);
    json_t *want = parse("{\"op\": \"ready\", \"pid\": 4242, \"device\": \"cuda:0\"}");
    assert_true(json_equal(v, want));
    json_decref(v);
    json_decref(want);
    free(buf);
}

static void test_run_round_trip(void **state) {
    (void)state;
    json_t *args = parse("[1, -2, 2.5, \"\\u00e9\", null, true, [[]], {\"a\": {}}]");
    json_t *kwargs = parse("{\"k\": [1, {\"x\": \"y\"}], \"z\": -9223372036854775808}");
    cel_frame_run_t in = { .id = "id-1",
                           .task = "diag.echo",
                           .args = args,
                           .kwargs = kwargs,
                           .soft_time_limit = 1.5,
                           .retries = 3 },
                    out;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(cel_frame_run_encode(&in, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_op(buf, len, NULL), CEL_FRAME_RUN);
    cel_err_t err;
    assert_int_equal(cel_frame_run_decode(buf, len, &out, &err), CEL_OK);
    assert_string_equal(out.id, "id-1");
    assert_string_equal(out.task, "diag.echo");
    assert_true(json_equal(out.args, args));
    assert_true(json_equal(out.kwargs, kwargs));
    assert_true(out.soft_time_limit == 1.5);
    assert_int_equal(out.retries, 3);
    cel_frame_run_clear(&out);
    /* appending: a second frame after the first in the same buffer */
    size_t first = len;
    in.soft_time_limit = 0;
    assert_int_equal(cel_frame_run_encode(&in, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_run_decode(buf + first, len - first, &out, NULL), CEL_OK);
    assert_true(out.soft_time_limit == 0);
    cel_frame_run_clear(&out);
    free(buf);
    json_decref(args);
    json_decref(kwargs);
}

static void test_result_round_trip(void **state) {
    (void)state;
    json_t *value = parse("{\"loss\": 0.25, \"steps\": [1, 2], \"s\": \"\\u2603\"}");
    cel_frame_result_t ok = { .id = "r-1", .result = value, .runtime = 0.125 }, out;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(cel_frame_result_encode(&ok, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_op(buf, len, NULL), CEL_FRAME_RESULT);
    assert_int_equal(cel_frame_result_decode(buf, len, &out, NULL), CEL_OK);
    assert_string_equal(out.id, "r-1");
    assert_int_equal(out.failed, 0);
    assert_true(json_equal(out.result, value));
    assert_true(out.runtime == 0.125);
    assert_null(out.exc_type);
    assert_null(out.exc_message);
    assert_null(out.traceback);
    cel_frame_result_clear(&out);
    /* None is json null, not absent */
    ok.result = json_null();
    len = 0;
    assert_int_equal(cel_frame_result_encode(&ok, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_result_decode(buf, len, &out, NULL), CEL_OK);
    assert_true(json_is_null(out.result));
    cel_frame_result_clear(&out);

    json_t *exc_args = parse("[\"boom\", 1]");
    cel_frame_result_t bad = { .id = "r-2",
                               .failed = 1,
                               .exc_type = "ValueError",
                               .exc_module = "builtins",
                               .exc_message = exc_args,
                               .traceback = "Traceback (most recent call last):\nValueError\n",
                               .runtime = 2 };
    len = 0;
    assert_int_equal(cel_frame_result_encode(&bad, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_result_decode(buf, len, &out, NULL), CEL_OK);
    assert_int_equal(out.failed, 1);
    assert_string_equal(out.id, "r-2");
    assert_string_equal(out.exc_type, "ValueError");
    assert_string_equal(out.exc_module, "builtins");
    assert_true(json_equal(out.exc_message, exc_args));
    assert_string_equal(out.traceback, "Traceback (most recent call last):\nValueError\n");
    assert_true(out.runtime == 2);
    assert_null(out.result);
    cel_frame_result_clear(&out);
    /* a nil traceback: the key is there (Celery stores null), decoded as NULL */
    bad.traceback = NULL;
    len = 0;
    assert_int_equal(cel_frame_result_encode(&bad, &buf, &len, &cap, NULL), CEL_OK);
    json_t *v;
    assert_int_equal(cel_msgpack_to_json(buf, len, &v, NULL), CEL_OK);
    assert_true(json_is_null(json_object_get(v, "traceback")));
    assert_int_equal(json_object_size(v), 8);
    json_decref(v);
    assert_int_equal(cel_frame_result_decode(buf, len, &out, NULL), CEL_OK);
    assert_null(out.traceback);
    cel_frame_result_clear(&out);
    free(buf);
    json_decref(value);
    json_decref(exc_args);
}

static void test_progress_round_trip(void **state) {
    (void)state;
    json_t *meta = parse("{\"done\": 3, \"total\": 10}");
    cel_frame_progress_t in = { .id = "p-1", .state = "PROGRESS", .meta = meta }, out;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(cel_frame_progress_encode(&in, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_op(buf, len, NULL), CEL_FRAME_PROGRESS);
    assert_int_equal(cel_frame_progress_decode(buf, len, &out, NULL), CEL_OK);
    assert_string_equal(out.id, "p-1");
    assert_string_equal(out.state, "PROGRESS");
    assert_true(json_equal(out.meta, meta));
    cel_frame_progress_clear(&out);
    free(buf);
    json_decref(meta);
}

/* Run frames exactly as Python's msgpack.packb(..., use_bin_type=True) wrote
 * them (tests/integration/test_executor.py's client): other key order, a
 * bin id, an int where a float is expected, args/kwargs absent. */
static void test_run_from_python(void **state) {
    (void)state;
    static const uint8_t a[] =
        "\x87\xa2\x6f\x70\xa3\x72\x75\x6e\xa2\x69\x64\xa3\x74\x2d\x31\xa4\x74\x61\x73\x6b\xa8"
        "\x64\x69\x61\x67\x2e\x61\x64\x64\xa4\x61\x72\x67\x73\x95\x01\xcb\x40\x04\x00\x00\x00"
        "\x00\x00\x00\xa1\x78\xc0\xc3\xa6\x6b\x77\x61\x72\x67\x73\x81\xa1\x6b\x91\x01\xaf\x73"
        "\x6f\x66\x74\x5f\x74\x69\x6d\x65\x5f\x6c\x69\x6d\x69\x74\xcb\x00\x00\x00\x00\x00\x00"
        "\x00\x00\xa7\x72\x65\x74\x72\x69\x65\x73\x03";
    static const uint8_t b[] =
        "\x86\xa7\x72\x65\x74\x72\x69\x65\x73\x03\xa6\x6b\x77\x61\x72\x67\x73\x80\xa2\x69\x64"
        "\xc4\x03\x74\x2d\x32\xa4\x74\x61\x73\x6b\xa9\x64\x69\x61\x67\x2e\x6e\x6f\x6f\x70\xa2"
        "\x6f\x70\xa3\x72\x75\x6e\xaf\x73\x6f\x66\x74\x5f\x74\x69\x6d\x65\x5f\x6c\x69\x6d\x69"
        "\x74\x02";
    cel_frame_run_t f;
    assert_int_equal(cel_frame_run_decode(a, sizeof(a) - 1, &f, NULL), CEL_OK);
    assert_string_equal(f.id, "t-1");
    assert_string_equal(f.task, "diag.add");
    json_t *want = parse("[1, 2.5, \"x\", null, true]");
    assert_true(json_equal(f.args, want));
    json_decref(want);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(f.kwargs, "k"), 0)), 1);
    assert_int_equal(f.retries, 3);
    cel_frame_run_clear(&f);
    assert_int_equal(cel_frame_run_decode(b, sizeof(b) - 1, &f, NULL), CEL_OK);
    assert_string_equal(f.id, "t-2");
    assert_true(f.soft_time_limit == 2.0);
    assert_true(json_is_array(f.args) && json_array_size(f.args) == 0); /* absent: [] */
    cel_frame_run_clear(&f);
    /* a map with only the required keys */
    size_t len;
    uint8_t *p = pack(parse("{\"id\": \"d\", \"op\": \"run\", \"task\": \"diag.noop\"}"), &len);
    assert_int_equal(cel_frame_run_decode(p, len, &f, NULL), CEL_OK);
    assert_true(json_is_array(f.args) && json_is_object(f.kwargs));
    assert_true(f.soft_time_limit == 0 && f.retries == 0);
    cel_frame_run_clear(&f);
    free(p);
}

/* A result's stats (what an executor reports for the worker's metrics) round-trip;
 * only set fields go on the wire; absent stats read as not present. */
static void test_result_stats(void **state) {
    (void)state;
    cel_frame_result_t in = { .id = "s-1", .result = json_null(), .runtime = 0.5 }, out;
    in.stats = (cel_frame_stats_t){ .present = 1,
                                    .tokens_trained = 123,
                                    .pass_tasks = 3,
                                    .pass_s = 0.25,
                                    .adapters = 0,
                                    .adapters_gpu = -1,
                                    .evicted = 2,
                                    .gpu_used = 5e9,
                                    .gpu_total = 8.5e10 };
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(cel_frame_result_encode(&in, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_result_decode(buf, len, &out, NULL), CEL_OK);
    assert_true(out.stats.present);
    assert_int_equal(out.stats.tokens_trained, 123);
    assert_int_equal(out.stats.tokens_scored, 0);
    assert_int_equal(out.stats.pass_tasks, 3);
    assert_true(out.stats.pass_s == 0.25);
    assert_int_equal(out.stats.adapters, 0);      /* 0 is a count, sent */
    assert_int_equal(out.stats.adapters_gpu, -1); /* unknown, not sent */
    assert_int_equal(out.stats.evicted, 2);
    assert_int_equal(out.stats.evicted_gpu, 0);
    assert_true(out.stats.gpu_used == 5e9 && out.stats.gpu_total == 8.5e10);
    cel_frame_result_clear(&out);
    json_t *v;
    assert_int_equal(cel_msgpack_to_json(buf, len, &v, NULL), CEL_OK);
    json_t *st = json_object_get(v, "stats");
    assert_int_equal(json_object_size(st), 7);
    assert_null(json_object_get(st, "adapters_gpu"));
    json_decref(v);
    free(buf);
    /* a frame without stats (an old executor, a diag task) */
    in.stats.present = 0;
    buf = NULL;
    len = cap = 0;
    assert_int_equal(cel_frame_result_encode(&in, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_result_decode(buf, len, &out, NULL), CEL_OK);
    assert_false(out.stats.present);
    cel_frame_result_clear(&out);
    free(buf);
    /* bad stats: each refused naming the field; unknown keys inside are ignored */
    static const char *const bad[] = {
        "[]",
        "{\"tokens_trained\": -1}",
        "{\"tokens_scored\": 1.5}",
        "{\"pass_tasks\": \"2\"}",
        "{\"pass_s\": -0.5}",
        "{\"gpu_used\": null}",
        "{\"adapters\": 9999999999}",
        "{\"evicted_gpu\": true}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *f = parse("{\"op\": \"result\", \"id\": \"i\", \"status\": \"SUCCESS\", "
                          "\"result\": 1, \"runtime\": 0.5}");
        json_object_set_new(f, "stats", parse(bad[i]));
        uint8_t *p = pack(f, &len);
        cel_err_t err;
        if (cel_frame_result_decode(p, len, &out, &err) != CEL_EPROTO)
            fail_msg("stats %s: want EPROTO", bad[i]);
        assert_true(!out.id && !out.result && !out.stats.present);
        assert_non_null(strstr(err.msg, "stats"));
        free(p);
    }
    json_t *f = parse("{\"op\": \"result\", \"id\": \"i\", \"status\": \"SUCCESS\", "
                      "\"result\": 1, \"runtime\": 0.5, \"stats\": {\"later\": [1], "
                      "\"tokens_scored\": 9}}");
    uint8_t *p = pack(f, &len);
    assert_int_equal(cel_frame_result_decode(p, len, &out, NULL), CEL_OK);
    assert_int_equal(out.stats.tokens_scored, 9);
    assert_int_equal(out.stats.adapters, -1);
    cel_frame_result_clear(&out);
    free(p);
}

/* Decodes payload as the given kind; returns rc and clears what it got. */
static int decode_kind(int kind, const uint8_t *p, size_t len, cel_err_t *err) {
    int rc;
    if (kind == CEL_FRAME_READY) {
        cel_frame_ready_t f;
        rc = cel_frame_ready_decode(p, len, &f, err);
        if (rc != CEL_OK) assert_null(f.device);
        cel_frame_ready_clear(&f);
    } else if (kind == CEL_FRAME_RUN) {
        cel_frame_run_t f;
        rc = cel_frame_run_decode(p, len, &f, err);
        if (rc != CEL_OK) assert_null(f.args);
        cel_frame_run_clear(&f);
    } else if (kind == CEL_FRAME_RESULT) {
        cel_frame_result_t f;
        rc = cel_frame_result_decode(p, len, &f, err);
        if (rc != CEL_OK) assert_true(!f.id && !f.result && !f.exc_message && !f.mem_);
        cel_frame_result_clear(&f);
    } else {
        cel_frame_progress_t f;
        rc = cel_frame_progress_decode(p, len, &f, err);
        if (rc != CEL_OK) assert_true(!f.id && !f.meta && !f.mem_);
        cel_frame_progress_clear(&f);
    }
    return rc;
}

/* For each kind: a valid frame, its required keys, and for each key values
 * of wrong types. Removing a required key or giving a wrong type must be
 * CEL_EPROTO; the untouched frame must decode. */
static void test_missing_and_wrong_types(void **state) {
    (void)state;
    static const struct {
        int kind;
        const char *frame;
        const char *required[8];
        const char *wrong[8]; /* "key": json value of a wrong type */
    } cases[] = {
        { CEL_FRAME_READY,
          "{\"op\": \"ready\", \"pid\": 7, \"device\": \"cpu\"}",
          { "op", "pid", "device" },
          { "{\"pid\": \"7\"}", "{\"pid\": 1.5}", "{\"pid\": 0}", "{\"device\": 5}",
            "{\"op\": \"run\"}", "{\"device\": null}", "{\"pid\": 9999999999}" } },
        { CEL_FRAME_RUN,
          "{\"op\": \"run\", \"id\": \"i\", \"task\": \"t\"}",
          { "op", "id", "task" },
          { "{\"id\": 5}", "{\"task\": [\"t\"]}", "{\"args\": {}}", "{\"kwargs\": []}",
            "{\"soft_time_limit\": \"1\"}", "{\"retries\": 1.5}", "{\"op\": \"result\"}",
            "{\"args\": \"x\"}" } },
        { CEL_FRAME_RESULT,
          "{\"op\": \"result\", \"id\": \"i\", \"status\": \"SUCCESS\", \"result\": 1, "
          "\"runtime\": 0.5}",
          { "op", "id", "status", "result", "runtime" },
          { "{\"status\": \"RETRY\"}", "{\"runtime\": \"0.5\"}", "{\"runtime\": -1}",
            "{\"id\": null}", "{\"status\": 1}", "{\"op\": \"progress\"}" } },
        { CEL_FRAME_RESULT,
          "{\"op\": \"result\", \"id\": \"i\", \"status\": \"FAILURE\", \"exc_type\": \"E\", "
          "\"exc_module\": \"m\", \"exc_message\": [], \"traceback\": null, \"runtime\": 0}",
          { "op", "id", "status", "exc_type", "exc_module", "exc_message", "traceback", "runtime" },
          { "{\"exc_type\": 1}", "{\"exc_module\": []}", "{\"exc_message\": \"x\"}",
            "{\"exc_message\": {}}", "{\"traceback\": 5}", "{\"traceback\": []}" } },
        { CEL_FRAME_PROGRESS,
          "{\"op\": \"progress\", \"id\": \"i\", \"state\": \"S\", \"meta\": 1}",
          { "op", "id", "state", "meta" },
          { "{\"state\": 1}", "{\"id\": 1}", "{\"op\": \"ready\"}" } },
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        size_t len;
        uint8_t *p = pack(parse(cases[c].frame), &len);
        if (decode_kind(cases[c].kind, p, len, NULL) != CEL_OK)
            fail_msg("case %zu: valid frame refused", c);
        free(p);
        for (int k = 0; k < 8 && cases[c].required[k]; k++) {
            json_t *f = parse(cases[c].frame);
            json_object_del(f, cases[c].required[k]);
            p = pack(f, &len);
            cel_err_t err;
            int rc = decode_kind(cases[c].kind, p, len, &err);
            if (rc != CEL_EPROTO)
                fail_msg("case %zu without %s: want EPROTO, got %s", c, cases[c].required[k],
                         cel_err_name(rc));
            assert_int_equal(err.code, CEL_EPROTO);
            free(p);
        }
        for (int k = 0; k < 8 && cases[c].wrong[k]; k++) {
            json_t *f = parse(cases[c].frame), *w = parse(cases[c].wrong[k]);
            json_object_update(f, w);
            json_decref(w);
            p = pack(f, &len);
            int rc = decode_kind(cases[c].kind, p, len, NULL);
            if (rc != CEL_EPROTO)
                fail_msg("case %zu with %s: want EPROTO, got %s", c, cases[c].wrong[k],
                         cel_err_name(rc));
            free(p);
        }
    }
}

/* A run frame with a readable id keeps it when another field is wrong, with
 * the words the executor puts in its DecodeError; without one it keeps none. */
static void test_run_errors_keep_id(void **state) {
    (void)state;
    static const struct {
        const char *frame, *why;
    } cases[] = {
        { "{\"op\": \"run\", \"id\": \"x\"}", "no task name" },
        { "{\"op\": \"run\", \"id\": \"x\", \"task\": 5}", "no task name" },
        { "{\"op\": \"run\", \"id\": \"x\", \"task\": \"t\", \"args\": {}}",
          "args is not an array" },
        { "{\"op\": \"run\", \"id\": \"x\", \"task\": \"t\", \"kwargs\": []}",
          "kwargs is not a map" },
        { "{\"op\": \"bogus\", \"id\": \"x\"}", "unknown op" },
        { "{\"op\": 7, \"id\": \"x\"}", "unknown op" },
        { "{\"id\": \"x\", \"task\": \"t\"}", "no op" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len;
        uint8_t *p = pack(parse(cases[i].frame), &len);
        cel_frame_run_t f;
        cel_err_t err;
        assert_int_equal(cel_frame_run_decode(p, len, &f, &err), CEL_EPROTO);
        assert_non_null(f.id);
        assert_string_equal(f.id, "x");
        assert_null(f.args);
        assert_null(f.kwargs);
        assert_string_equal(err.msg, cases[i].why);
        cel_frame_run_clear(&f);
        free(p);
    }
    const char *no_id[] = { "{\"op\": \"run\", \"task\": \"t\"}", "{\"op\": \"run\", \"id\": 5}",
                            "[1, 2]", "\"run\"" };
    for (size_t i = 0; i < sizeof(no_id) / sizeof(no_id[0]); i++) {
        size_t len;
        uint8_t *p = pack(json_loads(no_id[i], JSON_DECODE_ANY, NULL), &len);
        cel_frame_run_t f;
        assert_int_equal(cel_frame_run_decode(p, len, &f, NULL), CEL_EPROTO);
        assert_null(f.id);
        assert_null(f.mem_);
        free(p);
    }
}

/* Strings: NUL inside and invalid UTF-8 are refused; bin is taken as str;
 * unknown keys are ignored; of repeated keys the last counts. */
static void test_strings_and_keys(void **state) {
    (void)state;
    cel_frame_progress_t f;
    /* {"op":"progress","id":"a\0b","state":"S","meta":1} */
    static const uint8_t nul[] = "\x84\xa2op\xa8progress\xa2id\xa3"
                                 "a\x00"
                                 "b\xa5state\xa1S\xa4meta\x01";
    assert_int_equal(cel_frame_progress_decode(nul, sizeof(nul) - 1, &f, NULL), CEL_EPROTO);
    static const uint8_t utf[] =
        "\x84\xa2op\xa8progress\xa2id\xa2\xc3\x28\xa5state\xa1S\xa4meta\x01";
    assert_int_equal(cel_frame_progress_decode(utf, sizeof(utf) - 1, &f, NULL), CEL_EPROTO);
    static const uint8_t bin[] =
        "\x84\xa2op\xa8progress\xa2id\xc4\x02\xc3\xa9\xa5state\xa1S\xa4meta\x01";
    assert_int_equal(cel_frame_progress_decode(bin, sizeof(bin) - 1, &f, NULL), CEL_OK);
    assert_string_equal(f.id, "\xc3\xa9");
    cel_frame_progress_clear(&f);
    /* unknown keys (of any type, nested) are skipped; repeated: last wins */
    static const uint8_t extra[] =
        "\x87\xa1x\x92\x81\xa1k\xc0\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\xa2op\xa8progress"
        "\xa2id\xa1"
        "a\xa2id\xa1"
        "b\xa5state\xa1S\xa4meta\x01\xa1y\xd4\x01\x02";
    assert_int_equal(cel_frame_progress_decode(extra, sizeof(extra) - 1, &f, NULL), CEL_OK);
    assert_string_equal(f.id, "b");
    cel_frame_progress_clear(&f);
    /* a map key that is not a string */
    static const uint8_t intkey[] = "\x81\x01\x02";
    assert_int_equal(cel_frame_op(intkey, 3, NULL), CEL_EPROTO);
    /* ops */
    cel_err_t err;
    size_t len;
    uint8_t *p = pack(parse("{\"op\": \"bogus\"}"), &len);
    assert_int_equal(cel_frame_op(p, len, &err), CEL_ENOTFOUND);
    assert_string_equal(err.msg, "bogus");
    free(p);
    p = pack(parse("{\"opx\": \"run\"}"), &len);
    assert_int_equal(cel_frame_op(p, len, NULL), CEL_EPROTO);
    free(p);
    assert_int_equal(cel_frame_op((const uint8_t *)"\x91\x01", 2, NULL), CEL_EPROTO);
    assert_int_equal(cel_frame_op((const uint8_t *)"", 0, NULL), CEL_EPROTO);
    assert_int_equal(cel_frame_op((const uint8_t *)"\xc1", 1, NULL), CEL_EPROTO);
}

/* Short strings at CEL_FRAME_NAME_MAX and one past it, both ways. */
static void test_name_limit(void **state) {
    (void)state;
    char *id = malloc(CEL_FRAME_NAME_MAX + 2);
    memset(id, 'i', CEL_FRAME_NAME_MAX + 1);
    id[CEL_FRAME_NAME_MAX] = '\0';
    json_t *args = json_array(), *kwargs = json_object();
    cel_frame_run_t in = { .id = id, .task = "t", .args = args, .kwargs = kwargs }, out;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(cel_frame_run_encode(&in, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_run_decode(buf, len, &out, NULL), CEL_OK);
    assert_int_equal(strlen(out.id), CEL_FRAME_NAME_MAX);
    cel_frame_run_clear(&out);
    id[CEL_FRAME_NAME_MAX] = 'i';
    id[CEL_FRAME_NAME_MAX + 1] = '\0';
    size_t before = len;
    cel_err_t err;
    assert_int_equal(cel_frame_run_encode(&in, &buf, &len, &cap, &err), CEL_ELIMIT);
    assert_int_equal(len, before); /* nothing appended */
    /* a payload written by someone else with a longer id */
    json_t *f = json_pack("{s:s, s:s, s:s}", "op", "run", "id", id, "task", "t");
    size_t plen;
    uint8_t *p = pack(f, &plen);
    assert_int_equal(cel_frame_run_decode(p, plen, &out, &err), CEL_ELIMIT);
    assert_null(out.id);
    free(p);
    /* the traceback is not a short string */
    cel_frame_result_t r = { .id = "r",
                             .failed = 1,
                             .exc_type = "E",
                             .exc_module = "m",
                             .exc_message = args,
                             .traceback = id },
                       rout;
    len = 0;
    assert_int_equal(cel_frame_result_encode(&r, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_frame_result_decode(buf, len, &rout, NULL), CEL_OK);
    assert_string_equal(rout.traceback, id);
    cel_frame_result_clear(&rout);
    free(buf);
    free(id);
    json_decref(args);
    json_decref(kwargs);
}

/* args nested to the limit (the frame map is one level) and one past it. */
static void test_depth_limit(void **state) {
    (void)state;
    for (int depth = CEL_MSG_MAX_DEPTH - 2; depth <= CEL_MSG_MAX_DEPTH; depth++) {
        json_t *args = json_array();
        for (int i = 1; i < depth; i++) {
            json_t *outer = json_array();
            json_array_append_new(outer, args);
            args = outer;
        }
        json_t *f =
            json_pack("{s:s, s:s, s:s, s:o}", "op", "run", "id", "d", "task", "t", "args", args);
        size_t len;
        uint8_t *p = pack(f, &len);
        cel_frame_run_t out;
        int rc = cel_frame_run_decode(p, len, &out, NULL);
        /* args at depth levels 2..depth+1 */
        if (depth + 1 <= CEL_MSG_MAX_DEPTH) assert_int_equal(rc, CEL_OK);
        else assert_int_equal(rc, CEL_ELIMIT);
        cel_frame_run_clear(&out);
        free(p);
    }
    /* a container claiming more entries than the limit, or than the bytes left */
    static const uint8_t huge[] = "\xdf\xff\xff\xff\xff";
    assert_int_equal(cel_frame_op(huge, 5, NULL), CEL_ELIMIT);
    static const uint8_t lying[] = "\x82\xa2op\xa3run\xa1"
                                   "a\xdd\x00\x10\x00\x00\x01";
    assert_int_equal(cel_frame_op(lying, sizeof(lying) - 1, NULL), CEL_EPROTO);
    /* a payload over CEL_FRAME_MAX is refused before a byte is read */
    assert_int_equal(cel_frame_op(lying, (size_t)CEL_FRAME_MAX + 1, NULL), CEL_ELIMIT);
}

/* Every prefix of a valid frame, and the frame with a byte after it. */
static void test_truncation_and_trailing(void **state) {
    (void)state;
    json_t *exc_args = parse("[\"boom\", {\"k\": [1.5, null]}]");
    cel_frame_result_t r = { .id = "r-3",
                             .failed = 1,
                             .exc_type = "ValueError",
                             .exc_module = "builtins",
                             .exc_message = exc_args,
                             .traceback = "tb",
                             .runtime = 1 };
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(cel_frame_result_encode(&r, &buf, &len, &cap, NULL), CEL_OK);
    for (size_t n = 0; n < len; n++) {
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, buf, n);
        int rc = decode_kind(CEL_FRAME_RESULT, p, n, NULL);
        if (rc != CEL_EPROTO) fail_msg("prefix %zu: want EPROTO, got %s", n, cel_err_name(rc));
        free(p);
    }
    uint8_t *p = malloc(len + 1);
    memcpy(p, buf, len);
    p[len] = 0xc0;
    assert_int_equal(decode_kind(CEL_FRAME_RESULT, p, len + 1, NULL), CEL_EPROTO);
    assert_int_equal(decode_kind(CEL_FRAME_RESULT, p, len, NULL), CEL_OK);
    free(p);
    free(buf);
    json_decref(exc_args);
}

static int fail_after = -1; /* jansson allocations left before one fails */

static void *failing_malloc(size_t n) {
    if (fail_after == 0) return NULL;
    if (fail_after > 0) fail_after--;
    return malloc(n);
}

/* Every jansson allocation of a decode failing in turn: an error and
 * nothing leaked (ASan), until one succeeds. (A failed string allocation
 * inside cel_msgpack_to_json reads as invalid UTF-8, so that one is
 * CEL_EPROTO; the others are CEL_ENOMEM.) */
static void test_failing_allocations(void **state) {
    (void)state;
    size_t len;
    uint8_t *p = pack(parse("{\"op\": \"run\", \"id\": \"i\", \"task\": \"t\", \"args\": [1, "
                            "[\"x\", {\"y\": 2}]], \"kwargs\": {\"k\": \"v\"}}"),
                      &len);
    json_set_alloc_funcs(failing_malloc, free);
    int ok = 0;
    for (int n = 0; n < 200 && !ok; n++) {
        fail_after = n;
        cel_frame_run_t f;
        int rc = cel_frame_run_decode(p, len, &f, NULL);
        if (rc == CEL_OK) {
            ok = 1;
            assert_int_equal(json_array_size(f.args), 2);
        } else {
            if (rc != CEL_ENOMEM && rc != CEL_EPROTO) fail_msg("%d: %s", n, cel_err_name(rc));
            assert_null(f.args);
        }
        cel_frame_run_clear(&f);
    }
    fail_after = -1;
    json_set_alloc_funcs(malloc, free);
    assert_true(ok);
    free(p);
}

static void test_encode_errors(void **state) {
    (void)state;
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    cel_err_t err;
    json_t *a = json_array();
    cel_frame_run_t run = { .id = "i", .task = NULL, .args = a, .kwargs = a };
    assert_int_equal(cel_frame_run_encode(&run, &buf, &len, &cap, &err), CEL_EINVAL);
    run.task = "t";
    run.kwargs = NULL;
    assert_int_equal(cel_frame_run_encode(&run, &buf, &len, &cap, &err), CEL_EINVAL);
    cel_frame_result_t res = {
        .id = "i", .failed = 1, .exc_type = "E", .exc_module = "m", .exc_message = json_object()
    };
    assert_int_equal(cel_frame_result_encode(&res, &buf, &len, &cap, &err), CEL_EINVAL);
    json_decref(res.exc_message);
    res.failed = 0;
    res.result = NULL;
    assert_int_equal(cel_frame_result_encode(&res, &buf, &len, &cap, &err), CEL_EINVAL);
    cel_frame_ready_t rd = { .pid = 1, .device = NULL };
    assert_int_equal(cel_frame_ready_encode(&rd, &buf, &len, &cap, &err), CEL_EINVAL);
    cel_frame_progress_t pr = { .id = "i", .state = "S", .meta = NULL };
    assert_int_equal(cel_frame_progress_encode(&pr, &buf, &len, &cap, &err), CEL_EINVAL);
    assert_int_equal(len, 0); /* every failed encode left nothing behind */
    free(buf);
    json_decref(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_big_endian),
        cmocka_unit_test(test_whole_frame),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_several_frames_one_feed),
        cmocka_unit_test(test_zero_length_payload),
        cmocka_unit_test(test_at_limit),
        cmocka_unit_test(test_limit_plus_one_is_sticky),
        cmocka_unit_test(test_max_clamped_to_frame_max),
        cmocka_unit_test(test_growth_in_pieces),
        cmocka_unit_test(test_consumed_bytes_are_reused),
        cmocka_unit_test(test_free_null),
        cmocka_unit_test(test_ready_round_trip),
        cmocka_unit_test(test_run_round_trip),
        cmocka_unit_test(test_result_round_trip),
        cmocka_unit_test(test_progress_round_trip),
        cmocka_unit_test(test_result_stats),
        cmocka_unit_test(test_run_from_python),
        cmocka_unit_test(test_missing_and_wrong_types),
        cmocka_unit_test(test_run_errors_keep_id),
        cmocka_unit_test(test_strings_and_keys),
        cmocka_unit_test(test_name_limit),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_truncation_and_trailing),
        cmocka_unit_test(test_failing_allocations),
        cmocka_unit_test(test_encode_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
