/* base64.c -- standard base64 (RFC 4648, padded), as kombu's body_encoding.
 *
 * The Redis envelope carries the task body base64-encoded. Decoding is strict:
 * length a multiple of 4, only the standard alphabet, '=' only as the last one
 * or two characters. No I/O; any process.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int sextet(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes in[0..len). On success *out is malloc'd (NUL-terminated, NUL not
 * counted in *out_len). CEL_EPROTO on bad input, CEL_ELIMIT past
 * CEL_MSG_MAX_BYTES, CEL_ENOMEM. Outputs are NULL/0 on failure. */
int cel_base64_decode(const char *in, size_t len, uint8_t **out, size_t *out_len, cel_err_t *err) {
    *out = NULL;
    *out_len = 0;
    if (len > CEL_MSG_MAX_BYTES)
        return cel_err_set(err, CEL_ELIMIT, "base64 text of %zu bytes is over the limit", len);
    if (len % 4 != 0)
        return cel_err_set(err, CEL_EPROTO, "bad base64: length %zu is not a multiple of 4", len);
    size_t pad = 0;
    if (len >= 1 && in[len - 1] == '=') pad++;
    if (len >= 2 && in[len - 2] == '=') pad++;
    size_t n = len / 4 * 3 - pad;
    uint8_t *o = malloc(n + 1);
    if (!o) return cel_err_set(err, CEL_ENOMEM, "out of memory decoding base64");
    size_t w = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int last = (i + 4 == len);
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + k];
            if (c == '=' && last && (size_t)k >= 4 - pad) {
                v[k] = 0;
                continue;
            }
            v[k] = sextet(c);
            if (v[k] < 0) {
                free(o);
                return cel_err_set(err, CEL_EPROTO, "bad base64: invalid character at offset %zu",
                                   i + (size_t)k);
            }
        }
        uint32_t q =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        o[w++] = (uint8_t)(q >> 16);
        if (!last || pad < 2) o[w++] = (uint8_t)(q >> 8);
        if (!last || pad < 1) o[w++] = (uint8_t)q;
    }
    o[w] = '\0';
    *out = o;
    *out_len = w;
    return CEL_OK;
}

/* Encodes in[0..len) with padding. Returns a malloc'd NUL-terminated string
 * or NULL on allocation failure (or a length that cannot be encoded). */
char *cel_base64_encode(const uint8_t *in, size_t len) {
    if (len > (SIZE_MAX - 1) / 4 * 3 - 3) return NULL;
    size_t n = (len + 2) / 3 * 4;
    char *o = malloc(n + 1);
    if (!o) return NULL;
    size_t w = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t q = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        o[w++] = alphabet[q >> 18];
        o[w++] = alphabet[(q >> 12) & 63];
        o[w++] = alphabet[(q >> 6) & 63];
        o[w++] = alphabet[q & 63];
    }
    if (i < len) {
        uint32_t q = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        o[w++] = alphabet[q >> 18];
        o[w++] = alphabet[(q >> 12) & 63];
        o[w++] = i + 1 < len ? alphabet[(q >> 6) & 63] : '=';
        o[w++] = '=';
    }
    o[w] = '\0';
    return o;
}
