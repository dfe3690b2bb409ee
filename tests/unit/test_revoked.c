/* test_revoked.c -- unit tests for the bounded, expiring revoked set (worker/revoked.c).
 *
 * The set reads the wall clock (no injectable clock): expiry is exercised by
 * merging entries stamped in the past. Persistence uses a mkdtemp directory.
 */
#include "testutil.h"

#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "../../common/log.h"
#include "../../worker/revoked.h"

static double now_unix(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

typedef struct tmpdir {
    char dir[64];
    char file[128];
} tmpdir_t;

static int setup_dir(void **state) {
    tmpdir_t *t = calloc(1, sizeof(*t));
    snprintf(t->dir, sizeof(t->dir), "/tmp/celeriac-revoked-XXXXXX");
    if (!mkdtemp(t->dir)) return -1;
    snprintf(t->file, sizeof(t->file), "%s/revoked.json", t->dir);
    *state = t;
    return 0;
}

static int teardown_dir(void **state) {
    tmpdir_t *t = *state;
    char p[160];
    remove(t->file);
    rmdir(t->file); /* when a test made it a directory */
    snprintf(p, sizeof(p), "%s.tmp", t->file);
    remove(p);
    rmdir(t->dir);
    free(t);
    return 0;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_add_has(void **state) {
    cel_revoked_t *rv = cel_revoked_new(NULL);
    assert_non_null(rv);
    assert_int_equal(cel_revoked_has(rv, "a"), 0);
    assert_int_equal(cel_revoked_has(rv, NULL), 0);
    cel_revoked_add(rv, "a");
    cel_revoked_add(rv, "b");
    cel_revoked_add(rv, NULL);
    assert_int_equal(cel_revoked_has(rv, "a"), 1);
    assert_int_equal(cel_revoked_has(rv, "b"), 1);
    assert_int_equal(cel_revoked_has(rv, "c"), 0);
    /* re-adding moves an id to the end (newest) */
    cel_revoked_add(rv, "a");
    json_t *l = cel_revoked_list(rv);
    assert_int_equal(json_array_size(l), 2);
    assert_string_equal(json_string_value(json_array_get(l, 0)), "b");
    assert_string_equal(json_string_value(json_array_get(l, 1)), "a");
    json_decref(l);
    json_t *d = cel_revoked_dict(rv);
    assert_int_equal(json_object_size(d), 2);
    double t = json_number_value(json_object_get(d, "a"));
    assert_true(t > now_unix() - 60 && t <= now_unix());
    json_decref(d);
    /* saving without a state dir is a no-op */
    cel_err_t err;
    assert_int_equal(cel_revoked_save(rv, &err), CEL_OK);
    assert_int_equal(cel_revoked_save(NULL, &err), CEL_OK);
    cel_revoked_free(rv);
    cel_revoked_free(NULL);
    rv = cel_revoked_new("");
    assert_non_null(rv);
    assert_int_equal(cel_revoked_save(rv, &err), CEL_OK);
    cel_revoked_free(rv);
}

static void test_id_limit(void **state) {
    cel_revoked_t *rv = cel_revoked_new(NULL);
    char id[CEL_REVOKED_ID_MAX + 2];
    memset(id, 'i', CEL_REVOKED_ID_MAX);
    id[CEL_REVOKED_ID_MAX] = '\0';
    cel_revoked_add(rv, id);
    assert_int_equal(cel_revoked_has(rv, id), 1);
    id[CEL_REVOKED_ID_MAX] = 'i';
    id[CEL_REVOKED_ID_MAX + 1] = '\0';
    cel_revoked_add(rv, id);
    assert_int_equal(cel_revoked_has(rv, id), 0);
    json_t *l = cel_revoked_list(rv);
    assert_int_equal(json_array_size(l), 1);
    json_decref(l);
    /* merge skips them too */
    json_t *m = json_object();
    json_object_set_new(m, id, json_real(now_unix()));
    cel_revoked_merge(rv, m);
    json_decref(m);
    assert_int_equal(cel_revoked_has(rv, id), 0);
    cel_revoked_free(rv);
}

static void test_expiry_and_merge(void **state) {
    cel_revoked_t *rv = cel_revoked_new(NULL);
    double now = now_unix();
    json_t *m = json_object();
    json_object_set_new(m, "fresh", json_real(now - 10));
    json_object_set_new(m, "int", json_integer((json_int_t)now));
    json_object_set_new(m, "almost", json_real(now - CEL_REVOKED_EXPIRES + 60));
    json_object_set_new(m, "expired", json_real(now - CEL_REVOKED_EXPIRES - 1));
    json_object_set_new(m, "str", json_string("x"));
    json_object_set_new(m, "null", json_null());
    json_object_set_new(m, "", json_real(now));
    cel_revoked_merge(rv, m);
    json_decref(m);
    assert_int_equal(cel_revoked_has(rv, "fresh"), 1);
    assert_int_equal(cel_revoked_has(rv, "int"), 1);
    assert_int_equal(cel_revoked_has(rv, "almost"), 1);
    assert_int_equal(cel_revoked_has(rv, "expired"), 0);
    assert_int_equal(cel_revoked_has(rv, "str"), 0);
    assert_int_equal(cel_revoked_has(rv, "null"), 0);
    assert_int_equal(cel_revoked_has(rv, ""), 1);
    json_t *d = cel_revoked_dict(rv);
    assert_int_equal(json_object_size(d), 4);
    assert_null(json_object_get(d, "expired"));
    json_decref(d);
    /* merge keeps our own time for ids we already hold */
    cel_revoked_add(rv, "mine");
    m = json_object();
    json_object_set_new(m, "mine", json_real(now - CEL_REVOKED_EXPIRES - 100));
    cel_revoked_merge(rv, m);
    json_decref(m);
    assert_int_equal(cel_revoked_has(rv, "mine"), 1);
    /* an empty or non-object merge changes nothing */
    m = json_object();
    cel_revoked_merge(rv, m);
    json_decref(m);
    m = json_array();
    cel_revoked_merge(rv, m);
    json_decref(m);
    cel_revoked_merge(rv, NULL);
    d = cel_revoked_dict(rv);
    assert_int_equal(json_object_size(d), 5);
    json_decref(d);
    cel_revoked_free(rv);
}

static json_t *many(size_t n, const char *prefix, double t) {
    json_t *m = json_object();
    char id[64];
    for (size_t i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "%s%zu", prefix, i);
        json_object_set_new(m, id, json_real(t));
    }
    return m;
}

static void test_count_limit(void **state) {
    cel_revoked_t *rv = cel_revoked_new(NULL);
    double now = now_unix();
    /* at the limit: all kept */
    json_t *m = many(CEL_REVOKED_MAX, "id", now);
    cel_revoked_merge(rv, m);
    json_decref(m);
    json_t *l = cel_revoked_list(rv);
    assert_int_equal(json_array_size(l), CEL_REVOKED_MAX);
    json_decref(l);
    assert_int_equal(cel_revoked_has(rv, "id0"), 1);
    /* limit + 1: the oldest goes */
    cel_revoked_add(rv, "newest");
    l = cel_revoked_list(rv);
    assert_int_equal(json_array_size(l), CEL_REVOKED_MAX);
    assert_string_equal(json_string_value(json_array_get(l, 0)), "id1");
    assert_string_equal(json_string_value(json_array_get(l, CEL_REVOKED_MAX - 1)), "newest");
    json_decref(l);
    assert_int_equal(cel_revoked_has(rv, "id0"), 0);
    assert_int_equal(cel_revoked_has(rv, "id1"), 1);
    assert_int_equal(cel_revoked_has(rv, "newest"), 1);
    cel_revoked_free(rv);

    /* a merge reads at most CEL_REVOKED_MAX entries of a bigger dict */
    rv = cel_revoked_new(NULL);
    m = many(CEL_REVOKED_MAX + 1, "x", now);
    cel_revoked_merge(rv, m);
    json_decref(m);
    json_t *d = cel_revoked_dict(rv);
    assert_int_equal(json_object_size(d), CEL_REVOKED_MAX);
    json_decref(d);
    cel_revoked_free(rv);
}

static void test_save_load(void **state) {
    tmpdir_t *t = *state;
    cel_err_t err;
    /* a missing file starts empty */
    cel_revoked_t *rv = cel_revoked_new(t->dir);
    assert_non_null(rv);
    json_t *l = cel_revoked_list(rv);
    assert_int_equal(json_array_size(l), 0);
    json_decref(l);
    cel_revoked_add(rv, "a");
    cel_revoked_add(rv, "b");
    cel_revoked_add(rv, "c");
    json_t *before = cel_revoked_dict(rv);
    assert_int_equal(cel_revoked_save(rv, &err), CEL_OK);
    cel_revoked_free(rv);
    struct stat st;
    char tmp[160];
    snprintf(tmp, sizeof(tmp), "%s.tmp", t->file);
    assert_int_equal(stat(tmp, &st), -1); /* renamed away */

    rv = cel_revoked_new(t->dir);
    json_t *after = cel_revoked_dict(rv);
    assert_true(json_equal(before, after));
    l = cel_revoked_list(rv);
    assert_int_equal(json_array_size(l), 3);
    assert_string_equal(json_string_value(json_array_get(l, 0)), "a");
    assert_string_equal(json_string_value(json_array_get(l, 2)), "c");
    json_decref(l);
    json_decref(before);
    json_decref(after);
    assert_int_equal(cel_revoked_has(rv, "b"), 1);
    cel_revoked_free(rv);

    /* expired and malformed entries in the file are dropped on load */
    char text[256];
    snprintf(text, sizeof(text), "{\"old\": %.6f, \"ok\": %.6f, \"bad\": \"x\"}",
             now_unix() - CEL_REVOKED_EXPIRES - 5, now_unix());
    write_text(t->file, text);
    rv = cel_revoked_new(t->dir);
    assert_int_equal(cel_revoked_has(rv, "ok"), 1);
    assert_int_equal(cel_revoked_has(rv, "old"), 0);
    assert_int_equal(cel_revoked_has(rv, "bad"), 0);
    json_t *d = cel_revoked_dict(rv);
    assert_int_equal(json_object_size(d), 1);
    json_decref(d);
    cel_revoked_free(rv);
}

static void expect_empty(const char *dir) {
    cel_revoked_t *rv = cel_revoked_new(dir);
    assert_non_null(rv);
    json_t *l = cel_revoked_list(rv);
    assert_int_equal(json_array_size(l), 0);
    json_decref(l);
    cel_revoked_free(rv);
}

static void test_corrupt(void **state) {
    tmpdir_t *t = *state;
    static const char *const bad[] = {
        "", "{", "not json", "[1, 2]", "\"str\"", "42", "{\"a\": 1} trailing", "null"
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_text(t->file, bad[i]);
        expect_empty(t->dir);
    }
    /* a state dir that does not exist: empty set, save fails with CEL_EIO */
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/nope", t->dir);
    cel_revoked_t *rv = cel_revoked_new(missing);
    cel_revoked_add(rv, "a");
    cel_err_t err = { 0 };
    assert_int_equal(cel_revoked_save(rv, &err), CEL_EIO);
    assert_int_equal(err.code, CEL_EIO);
    assert_non_null(strstr(err.msg, "revoked.json"));
    assert_int_equal(cel_revoked_save(rv, NULL), CEL_EIO);
    cel_revoked_free(rv);
    /* revoked.json is a directory: unreadable, and the rename onto it fails */
    remove(t->file);
    assert_int_equal(mkdir(t->file, 0700), 0);
    rv = cel_revoked_new(t->dir);
    json_t *l = cel_revoked_list(rv);
    assert_int_equal(json_array_size(l), 0);
    json_decref(l);
    cel_revoked_add(rv, "a");
    assert_int_equal(cel_revoked_save(rv, &err), CEL_EIO);
    char tmp[160];
    struct stat st;
    snprintf(tmp, sizeof(tmp), "%s.tmp", t->file);
    assert_int_equal(stat(tmp, &st), -1); /* temp file cleaned up */
    cel_revoked_free(rv);
    assert_int_equal(rmdir(t->file), 0);
}

/* a file of exactly CEL_REVOKED_FILE_MAX bytes is read; one byte more is not */
static void test_file_size_limit(void **state) {
    tmpdir_t *t = *state;
    char head[128];
    int n = snprintf(head, sizeof(head), "{\"big\": %.6f}", now_unix());
    for (int extra = 0; extra <= 1; extra++) {
        FILE *f = fopen(t->file, "wb");
        assert_non_null(f);
        fputs(head, f);
        size_t pad = (size_t)CEL_REVOKED_FILE_MAX - (size_t)n + (size_t)extra;
        char *spaces = malloc(pad);
        memset(spaces, ' ', pad);
        assert_int_equal(fwrite(spaces, 1, pad, f), pad);
        free(spaces);
        fclose(f);
        struct stat st;
        assert_int_equal(stat(t->file, &st), 0);
        assert_int_equal(st.st_size, CEL_REVOKED_FILE_MAX + extra);
        cel_revoked_t *rv = cel_revoked_new(t->dir);
        assert_int_equal(cel_revoked_has(rv, "big"), extra ? 0 : 1);
        cel_revoked_free(rv);
    }
}

int main(void) {
    cel_log_init("test", CEL_LOG_CRITICAL + 10, -1); /* corrupt-file warnings are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_has),
        cmocka_unit_test(test_id_limit),
        cmocka_unit_test(test_expiry_and_merge),
        cmocka_unit_test(test_count_limit),
        cmocka_unit_test_setup_teardown(test_save_load, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_corrupt, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_file_size_limit, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
