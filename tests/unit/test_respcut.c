/* test_respcut.c -- the RESP bulk cutter (worker/respcut.c) and the held table (worker/held.c).
 *
 * respcut: replies within the limit come out byte for byte; a bulk over the limit comes out
 * as the cut form with its real length, its first and last bytes; the same output whatever
 * the split of the input (byte by byte, random chunks); at the limit and one past it;
 * nested arrays, nil bulks, error lines; a stream that is not RESP passes through.
 * held: put/get/del/replace, growth past the first buckets, iteration.
 */
#include "testutil.h"

#include "../../worker/held.h"
#include "../../worker/respcut.h"

typedef struct out {
    char *buf;
    size_t len, cap;
    int fail_after; /* sink fails after this many calls (< 0: never) */
    int calls;
} out_t;

static int sink(void *priv, const char *p, size_t n) {
    out_t *o = priv;
    if (o->fail_after >= 0 && o->calls++ >= o->fail_after) return CEL_EIO;
    if (o->len + n > o->cap) {
        o->cap = (o->len + n) * 2 + 64;
        o->buf = realloc(o->buf, o->cap);
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
    return CEL_OK;
}

/* Feeds in in chunks of `step` bytes (0: random 1..97) through a fresh filter. */
static out_t run(const char *in, size_t n, size_t limit, size_t step) {
    out_t o = { NULL, 0, 0, -1, 0 };
    cel_respcut_t *f = cel_respcut_new(limit);
    assert_non_null(f);
    srand(7);
    for (size_t i = 0; i < n;) {
        size_t k = step ? step : (size_t)(rand() % 97) + 1;
        if (k > n - i) k = n - i;
        assert_int_equal(cel_respcut_feed(f, in + i, k, sink, &o), CEL_OK);
        i += k;
    }
    cel_respcut_free(f);
    return o;
}

static void check_all_splits(const char *in, size_t n, size_t limit, const char *want,
                             size_t want_len) {
    size_t steps[] = { 1, 2, 3, 7, 64, 4096, 0, n ? n : 1 };
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        out_t o = run(in, n, limit, steps[s]);
        if (o.len != want_len || memcmp(o.buf, want, want_len) != 0)
            fail_msg("step %zu: got %zu bytes, want %zu", steps[s], o.len, want_len);
        free(o.buf);
    }
}

static void test_small_replies_pass_through(void **state) {
    const char in[] = "+OK\r\n-ERR no\r\n:42\r\n$-1\r\n*-1\r\n$0\r\n\r\n"
                      "*2\r\n$5\r\nqueue\r\n$3\r\nmsg\r\n*3\r\n*1\r\n:1\r\n$2\r\nab\r\n+x\r\n";
    check_all_splits(in, sizeof(in) - 1, 300, in, sizeof(in) - 1);
}

/* A reply of a key and a bulk of `len` bytes (its content: 'a' then base64-like
 * letters, the last byte 'z'). */
static char *brpop_reply(size_t len, size_t *n) {
    char *b = malloc(len + 64);
    int h = sprintf(b, "*2\r\n$6\r\ncelery\r\n$%zu\r\n", len);
    for (size_t i = 0; i < len; i++) b[h + i] = (char)('A' + i % 26);
    b[h] = 'a';
    b[h + len - 1] = 'z';
    memcpy(b + h + len, "\r\n", 2);
    *n = (size_t)h + len + 2;
    return b;
}

static void test_at_the_limit_and_past_it(void **state) {
    size_t limit = 1000, n;
    char *in = brpop_reply(limit, &n);
    check_all_splits(in, n, limit, in, n); /* at the limit: untouched */
    free(in);
    in = brpop_reply(limit + 1, &n);
    out_t o = run(in, n, limit, 1);
    /* "*2\r\n$6\r\ncelery\r\n" then a short bulk in the cut form */
    const char *pre = "*2\r\n$6\r\ncelery\r\n$";
    assert_memory_equal(o.buf, pre, strlen(pre));
    char *p = o.buf + strlen(pre);
    size_t blen = strtoul(p, &p, 10);
    assert_memory_equal(p, "\r\n", 2);
    p += 2;
    assert_int_equal((size_t)(o.buf + o.len - p), blen + 2);
    size_t orig, hl, tl;
    const char *head, *tail;
    assert_int_equal(cel_respcut_parse(p, blen, &orig, &head, &hl, &tail, &tl), 1);
    assert_int_equal(orig, limit + 1);
    assert_int_equal(hl, CEL_RESPCUT_HEAD);
    assert_int_equal(head[0], 'a');
    assert_int_equal(tl, limit + 1); /* shorter than the ring: all of it */
    assert_int_equal(tail[tl - 1], 'z');
    assert_memory_equal(p + blen, "\r\n", 2);
    /* the same bytes whatever the split */
    check_all_splits(in, n, limit, o.buf, o.len);
    free(o.buf);
    free(in);
}

static void test_huge_bulk_keeps_only_its_ends(void **state) {
    size_t len = 3 * CEL_RESPCUT_TAIL + 12345, n;
    char *in = brpop_reply(len, &n);
    /* and a reply after it, passed through */
    in = realloc(in, n + 5);
    memcpy(in + n, "+OK\r\n", 5);
    n += 5;
    out_t o = run(in, n, 4096, 0);
    assert_true(o.len < CEL_RESPCUT_TAIL + 200);
    assert_memory_equal(o.buf + o.len - 5, "+OK\r\n", 5);
    const char *p = strstr(o.buf + 4, "$");
    p = strstr(p + 1, "$");
    char *e;
    size_t blen = strtoul(p + 1, &e, 10);
    const char *v = e + 2;
    size_t orig, hl, tl;
    const char *head, *tail;
    assert_int_equal(cel_respcut_parse(v, blen, &orig, &head, &hl, &tail, &tl), 1);
    assert_int_equal(orig, len);
    assert_int_equal(tl, CEL_RESPCUT_TAIL);
    /* the tail is the last bytes of the value, in order */
    const char *src = in + (n - 5 - 2 - CEL_RESPCUT_TAIL);
    assert_memory_equal(tail, src, CEL_RESPCUT_TAIL);
    check_all_splits(in, n, 4096, o.buf, o.len);
    free(o.buf);
    free(in);
}

static void test_not_resp_passes_through(void **state) {
    char in[100];
    memset(in, '9', sizeof(in));
    in[0] = '$';
    check_all_splits(in, sizeof(in), 300, in, sizeof(in));
}

static void test_sink_error_stops(void **state) {
    size_t n;
    char *in = brpop_reply(5000, &n);
    /* 8 sink calls in all: 3 passed items, then header, prefix, head, tail, CRLF */
    for (int after = 0; after <= 8; after++) {
        out_t o = { NULL, 0, 0, after, 0 };
        cel_respcut_t *f = cel_respcut_new(300);
        int rc = cel_respcut_feed(f, in, n, sink, &o);
        assert_int_equal(rc, after < 8 ? CEL_EIO : CEL_OK);
        cel_respcut_reset(f); /* frees a ring that was being filled */
        cel_respcut_free(f);
        free(o.buf);
    }
    free(in);
}

static void test_parse_rejects(void **state) {
    size_t orig, hl, tl;
    const char *head, *tail;
    static const char *const bad[] = { "",
                                       "celeriac-cut 1 0\n",
                                       "\0celeriac-cut x 0\n",
                                       "\0celeriac-cut 10 5\nab",
                                       "\0celeriac-cut 10 0",
                                       "\0celeriac-cut 10  0\n" };
    size_t lens[] = { 0, 17, 18, 22, 18, 20 };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cel_respcut_parse(bad[i], lens[i], &orig, &head, &hl, &tail, &tl), 0);
    const char ok[] = "\0celeriac-cut 99 2\nab{}";
    assert_int_equal(cel_respcut_parse(ok, sizeof(ok) - 1, &orig, &head, &hl, &tail, &tl), 1);
    assert_int_equal(orig, 99);
    assert_int_equal(hl, 2);
    assert_int_equal(tl, 2);
    assert_memory_equal(tail, "{}", 2);
}

/* ---- held.c ---- */

static void count_one(void *priv, const cel_held_msg_t *m) {
    (*(int *)priv)++;
    assert_int_equal(strlen(m->raw), m->len);
}

static void test_held(void **state) {
    cel_held_t *h = cel_held_new();
    assert_non_null(h);
    assert_null(cel_held_get(h, "x"));
    assert_int_equal(cel_held_put(h, "t1", "abc", 3, "celery"), CEL_OK);
    const cel_held_msg_t *m = cel_held_get(h, "t1");
    assert_non_null(m);
    assert_string_equal(m->raw, "abc");
    assert_string_equal(m->key, "celery");
    assert_int_equal(m->len, 3);
    assert_int_equal(m->acking, 0);
    cel_held_set_acking(h, "t1");
    assert_int_equal(cel_held_get(h, "t1")->acking, 1);
    cel_held_set_acking(h, "no-such"); /* nothing */
    assert_int_equal(cel_held_put(h, "t1", "defg", 4, "q2"), CEL_OK); /* replaces */
    assert_int_equal(cel_held_get(h, "t1")->acking, 0);           /* a new copy: not acking */
    assert_int_equal(cel_held_count(h), 1);
    assert_string_equal(cel_held_get(h, "t1")->raw, "defg");
    char tag[32], raw[64];
    for (int i = 0; i < 5000; i++) {
        snprintf(tag, sizeof(tag), "tag-%d", i);
        snprintf(raw, sizeof(raw), "{\"n\": %d}", i);
        assert_int_equal(cel_held_put(h, tag, raw, strlen(raw), "k"), CEL_OK);
    }
    assert_int_equal(cel_held_count(h), 5001);
    for (int i = 0; i < 5000; i += 2) {
        snprintf(tag, sizeof(tag), "tag-%d", i);
        cel_held_del(h, tag);
    }
    cel_held_del(h, "no-such");
    assert_int_equal(cel_held_count(h), 2501);
    assert_null(cel_held_get(h, "tag-10"));
    assert_string_equal(cel_held_get(h, "tag-11")->raw, "{\"n\": 11}");
    int seen = 0;
    cel_held_each(h, count_one, &seen);
    assert_int_equal(seen, 2501);
    cel_held_free(h);
    cel_held_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_replies_pass_through),
        cmocka_unit_test(test_at_the_limit_and_past_it),
        cmocka_unit_test(test_huge_bulk_keeps_only_its_ends),
        cmocka_unit_test(test_not_resp_passes_through),
        cmocka_unit_test(test_sink_error_stops),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_held),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
