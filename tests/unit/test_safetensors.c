/* test_safetensors.c -- unit tests for model/safetensors.c (reader, writer, shards).
 *
 * Round trips through the writer (atomic and not, metadata, scalars, empty
 * tensors), a file written by independent Python code (tests/unit/st_pywrite.py:
 * F32, F16 with subnormals and infinities, BF16) read back bit for bit, sharded
 * sets through an index, and every malformed-file rule: short files, header
 * lengths past the file or the limit, bad JSON, wrong types, unknown dtypes,
 * shape/byte-length mismatch, overflow, overlap, gaps, trailing bytes.
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

#include "../../model/safetensors.h"

static char tmpdir[256];

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cel_st_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A file image: 8-byte length, the header text, data_len bytes of 0x11. */
static uint8_t *image(const char *hdr, uint64_t hlen_override, size_t data_len, size_t *len) {
    size_t h = strlen(hdr);
    *len = 8 + h + data_len;
    uint8_t *b = malloc(*len);
    assert_non_null(b);
    uint64_t hl = hlen_override ? hlen_override : h;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(hl >> (8 * i));
    memcpy(b + 8, hdr, h);
    memset(b + 8 + h, 0x11, data_len);
    return b;
}

/* Parses hdr+data and expects failure with code and a message containing want. */
static void expect_bad(const char *hdr, uint64_t hlen_override, size_t data_len, int code,
                       const char *want) {
    size_t len;
    uint8_t *b = image(hdr, hlen_override, data_len, &len);
    cel_safetensors_t *st = (cel_safetensors_t *)1;
    cel_err_t err;
    int rc = cel_safetensors_parse(b, len, &st, &err);
    free(b);
    if (rc != code || !strstr(err.msg, want))
        fail_msg("header %s: rc %d (%s), want %d with '%s'", hdr, rc, err.msg, code, want);
    assert_null(st);
}

static void test_good_minimal(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = image("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"__metadata__\":{\"format\":\"pt\"}}  ",
                       0, 8, &len);
    cel_safetensors_t *st;
    cel_err_t err;
    assert_int_equal(cel_safetensors_parse(b, len, &st, &err), CEL_OK);
    free(b);
    assert_int_equal(cel_safetensors_count(st), 1);
    const cel_st_tensor_t *t = cel_safetensors_find(st, "x");
    assert_non_null(t);
    assert_int_equal(t->numel, 2);
    assert_string_equal(cel_safetensors_meta(st, "format"), "pt");
    assert_null(cel_safetensors_meta(st, "nope"));
    assert_null(cel_safetensors_find(st, "y"));
    cel_safetensors_free(st);
    cel_safetensors_free(NULL);
}

static void test_malformed(void **state) {
    (void)state;
    const char *ok_t = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    /* shorter than the length prefix */
    cel_safetensors_t *st;
    cel_err_t err;
    assert_int_equal(cel_safetensors_parse((const uint8_t *)"abc", 3, &st, &err), CEL_EPROTO);
    assert_non_null(strstr(err.msg, "shorter"));
    assert_int_equal(cel_safetensors_parse((const uint8_t *)"", 0, &st, &err), CEL_EPROTO);
    /* header length past the file, and past the limit */
    expect_bad(ok_t, strlen(ok_t) + 9, 8, CEL_EPROTO, "past the end");
    expect_bad(ok_t, UINT64_MAX, 8, CEL_ELIMIT, "exceeds the limit");
    expect_bad(ok_t, (uint64_t)CEL_ST_MAX_HEADER + 1, 8, CEL_ELIMIT, "limit");
    /* truncated data: last tensor runs past the end */
    expect_bad(ok_t, 0, 7, CEL_EPROTO, "out of the 7-byte data area");
    /* trailing bytes after the last tensor */
    expect_bad(ok_t, 0, 9, CEL_EPROTO, "1 bytes after the last tensor");
    /* not JSON, not an object, wrong member types */
    expect_bad("{\"x\":{\"dtype\":\"F32\",", 0, 0, CEL_EPROTO, "not valid JSON");
    expect_bad("[1,2,3]", 0, 0, CEL_EPROTO, "not a JSON object");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]} xx", 0, 8,
               CEL_EPROTO, "not valid JSON");
    expect_bad("{\"x\":[1]}", 0, 0, CEL_EPROTO, "needs dtype");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 0, 8, CEL_EPROTO,
               "needs dtype");
    expect_bad("{\"x\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, CEL_EPROTO,
               "unknown dtype");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 8,
               CEL_EPROTO, "shape[0]");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 0, 8,
               CEL_EPROTO, "shape[0]");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[1,2,3,4,5,6,7,8,9],\"data_offsets\":[0,8]}}",
               0, 8, CEL_ELIMIT, "rank 9");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,8]}}",
               0, 8, CEL_EPROTO, "overflows");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],"
               "\"data_offsets\":[0,8]}}",
               0, 8, CEL_EPROTO, "byte size overflows");
    /* shape x dtype does not match the byte length */
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 0, 8,
               CEL_EPROTO, "needs 16");
    expect_bad("{\"x\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8,
               CEL_EPROTO, "needs 4");
    /* offsets: reversed, wrong arity, overlapping, with a gap, out of range */
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 0, 8, CEL_EPROTO,
               "data_offsets");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 0, 8,
               CEL_EPROTO, "data_offsets");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               0, 12, CEL_EPROTO, "overlaps");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
               0, 8, CEL_EPROTO, "overlaps");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 0, 12,
               CEL_EPROTO, "unused bytes");
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1099511627776,"
               "1099511627784]}}",
               0, 8, CEL_EPROTO, "out of the");
    /* duplicate keys, bad metadata, empty name */
    expect_bad("{\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
               "\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
               0, 0, CEL_EPROTO, "duplicate");
    expect_bad("{\"__metadata__\":{\"a\":1}}", 0, 0, CEL_EPROTO, "not a string");
    expect_bad("{\"__metadata__\":[]}", 0, 0, CEL_EPROTO, "not an object");
    expect_bad("{\"\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, 0, CEL_EPROTO,
               "name of 0 bytes");
}

static void test_read_f32_errors(void **state) {
    (void)state;
    size_t len;
    uint8_t *b =
        image("{\"i\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, &len);
    cel_safetensors_t *st;
    cel_err_t err;
    assert_int_equal(cel_safetensors_parse(b, len, &st, &err), CEL_OK);
    free(b);
    float dst[4];
    int64_t s2[] = { 2 }, s3[] = { 3 }, s22[] = { 1, 2 };
    assert_int_equal(cel_safetensors_read_f32(st, "i", 1, s2, dst, &err), CEL_EPROTO);
    assert_non_null(strstr(err.msg, "not a float"));
    assert_int_equal(cel_safetensors_read_f32(st, "i", 1, s3, dst, &err), CEL_EPROTO);
    assert_non_null(strstr(err.msg, "shape [2], expected [3]"));
    assert_int_equal(cel_safetensors_read_f32(st, "i", 2, s22, dst, &err), CEL_EPROTO);
    assert_int_equal(cel_safetensors_read_f32(st, "zz", 1, s2, dst, &err), CEL_ENOTFOUND);
    assert_non_null(strstr(err.msg, "missing"));
    cel_safetensors_free(st);
}

static void test_round_trip(void **state) {
    (void)state;
    float a[6] = { 1, -2, 3.5f, 1e-30f, -0.0f, 7 }, s = 42.0f, dummy = 0;
    cel_st_entry_t e[3] = {
        { .name = "layer.a", .ndim = 2, .shape = { 2, 3 }, .data = a },
        { .name = "scalar", .ndim = 0, .data = &s },
        { .name = "empty", .ndim = 2, .shape = { 0, 5 }, .data = &dummy },
    };
    const char *meta[] = { "step", "3", "format", "celeriac" };
    char path[512];
    for (int atomic = 0; atomic < 2; atomic++) {
        snprintf(path, sizeof(path), "%s/rt%d.safetensors", tmpdir, atomic);
        cel_err_t err;
        assert_int_equal(
            cel_safetensors_write(path, e, 3, meta, 2, atomic ? CEL_ST_ATOMIC : 0, &err), CEL_OK);
        cel_safetensors_t *st;
        assert_int_equal(cel_safetensors_open(path, &st, &err), CEL_OK);
        assert_int_equal(cel_safetensors_count(st), 3);
        assert_string_equal(cel_safetensors_at(st, 0)->name, "layer.a");
        assert_string_equal(cel_safetensors_meta(st, "step"), "3");
        float got[6];
        int64_t sh[] = { 2, 3 };
        assert_int_equal(cel_safetensors_read_f32(st, "layer.a", 2, sh, got, &err), CEL_OK);
        assert_memory_equal(got, a, sizeof(a));
        assert_int_equal(cel_safetensors_read_f32(st, "scalar", 0, NULL, got, &err), CEL_OK);
        assert_true(got[0] == 42.0f);
        const cel_st_tensor_t *t = cel_safetensors_find(st, "empty");
        assert_int_equal(t->numel, 0);
        assert_int_equal(t->nbytes, 0);
        cel_safetensors_free(st);
    }
    /* duplicate names are refused by the writer */
    cel_st_entry_t dup[2] = { e[0], e[0] };
    cel_err_t err;
    assert_int_equal(cel_safetensors_write(path, dup, 2, NULL, 0, 0, &err), CEL_EINVAL);
    /* a missing file and a directory are clear errors */
    cel_safetensors_t *st;
    assert_int_equal(cel_safetensors_open("/nonexistent/x.safetensors", &st, &err), CEL_ENOTFOUND);
    assert_int_equal(cel_safetensors_open(tmpdir, &st, &err), CEL_EIO);
    /* a truncated copy of a good file on disk */
    char cmd[1200], tpath[520];
    snprintf(tpath, sizeof(tpath), "%s/trunc.safetensors", tmpdir);
    snprintf(cmd, sizeof(cmd), "head -c 40 '%s' > '%s'", path, tpath);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(cel_safetensors_open(tpath, &st, &err), CEL_EPROTO);
    assert_null(st);
}

/* The header jansson writes for entries and metadata (the writer's reference:
 * a tree in insertion order, dumped compact), padded with spaces to 8 bytes. */
static char *jansson_header(const cel_st_entry_t *e, int n, const char *const *meta, int n_meta) {
    json_t *root = json_object();
    if (n_meta > 0) {
        json_t *m = json_object();
        for (int i = 0; i < n_meta; i++)
            json_object_set_new(m, meta[2 * i], json_string(meta[2 * i + 1]));
        json_object_set_new(root, "__metadata__", m);
    }
    json_int_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        json_int_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            json_array_append_new(shape, json_integer(e[i].shape[d]));
            numel *= e[i].shape[d];
        }
        json_object_set_new(root, e[i].name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", "F32", "shape", shape,
                                      "data_offsets", off, off + 4 * numel));
        off += 4 * numel;
    }
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    size_t len = strlen(s), padded = (len + 7) & ~(size_t)7;
    s = realloc(s, padded + 1);
    memset(s + len, ' ', padded - len);
    s[padded] = '\0';
    return s;
}

/* The writer's header (written directly for plain strings, issue 17) has the
 * bytes jansson writes: random names, shapes and metadata, with and without
 * strings that need escaping (quotes, backslashes, control and non-ASCII
 * characters), no metadata, no tensors, scalars and zero dimensions. */
static void test_header_bytes_as_jansson(void **state) {
    (void)state;
    static const char *odd[] = { "a\"b", "back\\slash", "tab\there", "caf\xc3\xa9", "del\x7f" };
    unsigned seed = 7;
    float dummy = 0;
    for (int round = 0; round < 300; round++) {
        int n = (int)(rand_r(&seed) % 40), n_meta = (int)(rand_r(&seed) % 4);
        cel_st_entry_t e[40];
        char names[40][48], keys[4][16], vals[4][32];
        const char *meta[8];
        for (int i = 0; i < n; i++) {
            snprintf(names[i], sizeof(names[i]), "layers.%d.q_proj.lora_%c.weight%s", i,
                     'A' + (int)(rand_r(&seed) % 2),
                     rand_r(&seed) % 25 == 0 ? odd[rand_r(&seed) % 5] : "");
            e[i] = (cel_st_entry_t){ .name = names[i],
                                     .ndim = (int)(rand_r(&seed) % 3),
                                     .data = &dummy };
            for (int d = 0; d < e[i].ndim; d++)
                e[i].shape[d] = (int64_t)(rand_r(&seed) % 5 ? rand_r(&seed) % 100000 : 0);
        }
        for (int i = 0; i < n_meta; i++) {
            snprintf(keys[i], sizeof(keys[i]), "key%d", i);
            snprintf(vals[i], sizeof(vals[i]), "%s%u",
                     rand_r(&seed) % 10 == 0 ? odd[rand_r(&seed) % 5] : "v", rand_r(&seed));
            meta[2 * i] = keys[i];
            meta[2 * i + 1] = vals[i];
        }
        uint8_t *head = NULL;
        size_t len = 0, total = 0;
        cel_err_t err;
        assert_int_equal(cel_safetensors_head(e, n, meta, n_meta, &head, &len, &total, &err),
                         CEL_OK);
        char *want = jansson_header(e, n, meta, n_meta);
        assert_int_equal(len, 8 + strlen(want));
        assert_memory_equal(head + 8, want, strlen(want));
        free(want);
        free(head);
    }
}

static void test_python_written(void **state) {
    (void)state;
    char st_path[512], js_path[512], cmd[1400];
    snprintf(st_path, sizeof(st_path), "%s/py.safetensors", tmpdir);
    snprintf(js_path, sizeof(js_path), "%s/py.json", tmpdir);
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 tests/unit/st_pywrite.py '%s' '%s' 2>&1", st_path,
             js_path);
    /* python3-torch is a build dependency (scripts/install-deps): a generator that does
     * not run is a failure, not a reason to skip */
    if (access("/usr/bin/python3", X_OK) != 0 || access("tests/unit/st_pywrite.py", R_OK) != 0)
        fail_msg("needs /usr/bin/python3 and the repo root as the working directory");
    int rc = system(cmd);
    if (rc != 0) fail_msg("%s failed (status %d; its output is above)", cmd, rc);
    cel_safetensors_t *st;
    cel_err_t err;
    assert_int_equal(cel_safetensors_open(st_path, &st, &err), CEL_OK);
    assert_string_equal(cel_safetensors_meta(st, "who"), "st_pywrite");
    json_error_t je;
    json_t *exp = json_load_file(js_path, 0, &je);
    assert_non_null(exp);
    assert_int_equal(json_object_size(exp), cel_safetensors_count(st));
    const char *name;
    json_t *v;
    json_object_foreach(exp, name, v) {
        json_t *shape = json_object_get(v, "shape"), *bits = json_object_get(v, "bits");
        int64_t sh[CEL_ST_MAX_DIMS];
        int nd = (int)json_array_size(shape);
        for (int d = 0; d < nd; d++) sh[d] = json_integer_value(json_array_get(shape, d));
        size_t n = json_array_size(bits);
        float *got = malloc(n * sizeof(float));
        assert_int_equal(cel_safetensors_read_f32(st, name, nd, sh, got, &err), CEL_OK);
        for (size_t i = 0; i < n; i++) {
            uint32_t g;
            memcpy(&g, &got[i], 4);
            if (g != (uint32_t)json_integer_value(json_array_get(bits, i)))
                fail_msg("%s[%zu]: bits %08x, torch says %08x", name, i, g,
                         (uint32_t)json_integer_value(json_array_get(bits, i)));
        }
        free(got);
    }
    json_decref(exp);
    cel_safetensors_free(st);
}

static void write_index(const char *body) {
    char path[512];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(body, f);
    fclose(f);
}

static void test_sharded(void **state) {
    (void)state;
    float a[2] = { 1, 2 }, b[3] = { 3, 4, 5 };
    cel_st_entry_t e1 = { .name = "a", .ndim = 1, .shape = { 2 }, .data = a };
    cel_st_entry_t e2 = { .name = "b", .ndim = 1, .shape = { 3 }, .data = b };
    char p1[512], p2[512], idx[512];
    snprintf(p1, sizeof(p1), "%s/m-00001.safetensors", tmpdir);
    snprintf(p2, sizeof(p2), "%s/m-00002.safetensors", tmpdir);
    snprintf(idx, sizeof(idx), "%s/model.safetensors.index.json", tmpdir);
    cel_err_t err;
    assert_int_equal(cel_safetensors_write(p1, &e1, 1, NULL, 0, 0, &err), CEL_OK);
    assert_int_equal(cel_safetensors_write(p2, &e2, 1, NULL, 0, 0, &err), CEL_OK);
    write_index("{\"metadata\":{\"total_size\":20},\"weight_map\":{\"a\":\"m-00001.safetensors\","
                "\"b\":\"m-00002.safetensors\"}}");
    cel_safetensors_t *st;
    assert_int_equal(cel_safetensors_open_index(idx, &st, &err), CEL_OK);
    assert_int_equal(cel_safetensors_count(st), 2);
    float got[3];
    int64_t s3[] = { 3 };
    assert_int_equal(cel_safetensors_read_f32(st, "b", 1, s3, got, &err), CEL_OK);
    assert_true(got[2] == 5.0f);
    cel_safetensors_free(st);
    /* a name mapped to the wrong shard */
    write_index("{\"weight_map\":{\"a\":\"m-00002.safetensors\",\"b\":\"m-00002.safetensors\"}}");
    assert_int_equal(cel_safetensors_open_index(idx, &st, &err), CEL_EPROTO);
    assert_non_null(strstr(err.msg, "not in shard"));
    /* the same tensor in two shards */
    assert_int_equal(cel_safetensors_write(p2, &e1, 1, NULL, 0, 0, &err), CEL_OK);
    write_index("{\"weight_map\":{\"a\":\"m-00001.safetensors\",\"b\":\"m-00002.safetensors\"}}");
    assert_int_equal(cel_safetensors_open_index(idx, &st, &err), CEL_EPROTO);
    assert_non_null(strstr(err.msg, "two shards"));
    /* path traversal, missing shard, no weight_map, bad JSON */
    write_index("{\"weight_map\":{\"a\":\"../etc/passwd\"}}");
    assert_int_equal(cel_safetensors_open_index(idx, &st, &err), CEL_EPROTO);
    assert_non_null(strstr(err.msg, "plain file name"));
    write_index("{\"weight_map\":{\"a\":\"nothere.safetensors\"}}");
    assert_int_equal(cel_safetensors_open_index(idx, &st, &err), CEL_ENOTFOUND);
    write_index("{\"metadata\":{}}");
    assert_int_equal(cel_safetensors_open_index(idx, &st, &err), CEL_EPROTO);
    write_index("{\"weight_map\":");
    assert_int_equal(cel_safetensors_open_index(idx, &st, &err), CEL_EPROTO);
    assert_null(st);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_minimal),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_read_f32_errors),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_python_written),
        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_header_bytes_as_jansson),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
