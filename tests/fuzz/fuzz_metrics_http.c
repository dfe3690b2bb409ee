/* fuzz_metrics_http.c -- libFuzzer harness for the /metrics request-head parser
 * (worker/metrics_http.c's cel_metrics_http_parse), what every scrape connection runs.
 *
 * The input is the bytes a client sent. Each prefix is parsed as the responder parses
 * what has arrived so far, and the answers must agree with the whole input's: EAGAIN only
 * under CEL_METRICS_HTTP_HEAD_MAX bytes, and once a prefix is a complete head (OK) or a
 * bad request line (EPROTO), every longer prefix says the same, with the same method and
 * path. An accepted head has an upper-case method, a path that starts with '/' and holds
 * no space, control byte or '?', both NUL-terminated within their limits. Guard-page
 * mode (guard.h). `make fuzz FUZZ=metrics_http` runs it over
 * tests/fuzz/corpus/metrics_http/; `make test` replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "guard.h"
#include "../../worker/metrics_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_ok(const char *m, const char *p) {
    size_t ml = strlen(m), pl = strlen(p);
    if (ml == 0 || ml >= CEL_METRICS_HTTP_METHOD_MAX || pl == 0 || pl >= CEL_METRICS_HTTP_PATH_MAX)
        __builtin_trap();
    for (size_t i = 0; i < ml; i++)
        if (m[i] < 'A' || m[i] > 'Z') __builtin_trap();
    if (p[0] != '/') __builtin_trap();
    for (size_t i = 0; i < pl; i++)
        if ((unsigned char)p[i] <= ' ' || (unsigned char)p[i] >= 0x7f || p[i] == '?')
            __builtin_trap();
}

static int fuzz_one(const uint8_t *data, size_t size) {
    const char *buf = (const char *)data;
    char m[CEL_METRICS_HTTP_METHOD_MAX], p[CEL_METRICS_HTTP_PATH_MAX];
    char m0[CEL_METRICS_HTTP_METHOD_MAX], p0[CEL_METRICS_HTTP_PATH_MAX];
    int first = CEL_EAGAIN; /* the first final answer over the prefixes */
    /* every prefix would be slow for long inputs: all up to 512 bytes, then a stride */
    for (size_t n = 0; n <= size; n += n < 512 ? 1 : 61) {
        int rc = cel_metrics_http_parse(buf, n, m, p, NULL);
        if (rc == CEL_EAGAIN) {
            if (n >= CEL_METRICS_HTTP_HEAD_MAX || first != CEL_EAGAIN) __builtin_trap();
            continue;
        }
        if (rc != CEL_OK && rc != CEL_EPROTO && rc != CEL_ELIMIT) __builtin_trap();
        if (rc == CEL_OK) check_ok(m, p);
        else if (m[0] || p[0]) __builtin_trap();
        if (first == CEL_EAGAIN) {
            first = rc;
            memcpy(m0, m, sizeof(m));
            memcpy(p0, p, sizeof(p));
        } else if (rc != first || (rc == CEL_OK && (strcmp(m, m0) || strcmp(p, p0)))) {
            __builtin_trap();
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
