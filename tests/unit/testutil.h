/* testutil.h -- helpers shared by the protocol unit tests (header-only).
 *
 * Finds the generated test data (CEL_TESTDATA, written by gen_messages.py),
 * reads files whole, loads JSON fixtures. Tests that need the data skip with
 * a message when CEL_TESTDATA is unset.
 */
#ifndef CEL_TESTUTIL_H
#define CEL_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

/* Returns the test data directory, or NULL (and prints why) when unset. */
static inline const char *testdata_dir(void) {
    const char *d = getenv("CEL_TESTDATA");
    if (!d || !*d) {
        fprintf(stderr, "CEL_TESTDATA is not set: run tests/unit/gen_messages.py OUTDIR and "
                        "export CEL_TESTDATA=OUTDIR\n");
        return NULL;
    }
    return d;
}

/* Reads dir/name whole into a malloc'd buffer (NUL added, not counted). */
static inline char *read_file(const char *dir, const char *name, size_t *len) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail_msg("cannot open %s", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

/* Loads a JSON fixture from the test data directory; skips when unset. */
static inline json_t *load_fixture(const char *name) {
    const char *dir = testdata_dir();
    if (!dir) skip();
    json_error_t je;
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    json_t *v = json_load_file(path, JSON_ALLOW_NUL, &je);
    if (!v) fail_msg("%s: %s (line %d)", path, je.text, je.line);
    return v;
}

#endif
