/* test_frame.c -- unit tests for protocol/frame.c (incremental frame reader, header).
 *
 * Whole frames, byte-by-byte feeding, several frames per feed, empty payloads,
 * lengths at the limit and one past it (sticky CEL_ELIMIT), buffer growth and
 * payload validity rules. Run under `make asan`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../protocol/frame.h"

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
    memcpy(buf + n, "\0\0\0\x05" "pa", 6);  /* header + 2 of 5 bytes */
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
    const uint8_t hdr[4] = {0, 0, 0, 0};
    assert_int_equal(cel_frame_reader_feed(r, hdr, 4), CEL_OK);
    assert_int_equal(cel_frame_reader_feed(r, hdr, 4), CEL_OK);
    expect_frame(r, NULL, 0);
    expect_frame(r, NULL, 0);
    expect_again(r);
    /* limit 0: a 1-byte frame is over it */
    const uint8_t one[4] = {0, 0, 0, 1};
    assert_int_equal(cel_frame_reader_feed(r, one, 4), CEL_OK);
    assert_int_equal(cel_frame_reader_next(r, &(const uint8_t *){0}, &(size_t){0}, NULL),
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
    const uint8_t hdr[4] = {0xff, 0xff, 0xff, 0xff}; /* 4 GiB - 1 > CEL_FRAME_MAX */
    assert_int_equal(cel_frame_reader_feed(r, hdr, 4), CEL_OK);
    assert_int_equal(cel_frame_reader_next(r, &(const uint8_t *){0}, &(size_t){0}, NULL),
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
