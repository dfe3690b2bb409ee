/* data.c -- training data for celeriac-lm train: a file tokenized once into one stream.
 *
 * A .jsonl file holds one {"text": "..."} object per line (blank lines skipped);
 * any other file is UTF-8 text taken as one document. Each document becomes
 * bos + ids + eos (each when the model has one), all concatenated; training
 * windows are random slices of the stream (they may span documents, which the
 * bos/eos marks separate). Reads the file; no threads.
 */
#include "cli.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define DATA_MAX_BYTES (1ull << 30)

static int read_all(const char *path, char **buf, size_t *len, cel_err_t *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return cel_err_set(err, CEL_EIO, "cannot open data file %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    int rc = CEL_OK;
    while (b) {
        if (n == cap) {
            if (cap >= DATA_MAX_BYTES) {
                rc = cel_err_set(err, CEL_ELIMIT, "%s: larger than %llu bytes", path,
                                 DATA_MAX_BYTES);
                break;
            }
            char *nb = realloc(b, cap * 2 + 1);
            if (!nb) break;
            b = nb;
            cap *= 2;
        }
        size_t k = fread(b + n, 1, cap - n, f);
        n += k;
        if (k == 0) break;
    }
    if (!b) rc = cel_err_set(err, CEL_ENOMEM, "out of memory reading %s", path);
    else if (rc == CEL_OK && ferror(f)) rc = cel_err_set(err, CEL_EIO, "read %s failed", path);
    fclose(f);
    if (rc != CEL_OK) {
        free(b);
        return rc;
    }
    b[n] = '\0';
    *buf = b;
    *len = n;
    return CEL_OK;
}

/* Appends bos + encode(text) + eos to d. */
static int add_doc(const cel_cli_lm_t *lm, cel_cli_data_t *d, size_t *cap, const char *text,
                   size_t len, cel_err_t *err) {
    int32_t *ids;
    size_t n;
    int rc = cel_tokenizer_encode(lm->tok, text, len, 0, &ids, &n, err);
    if (rc != CEL_OK) return rc;
    int32_t bos = cel_tokenizer_bos(lm->tok), eos = cel_tokenizer_eos(lm->tok);
    size_t need = d->n + n + 2;
    if (need > *cap) {
        size_t nc = *cap ? *cap : 1 << 16;
        while (nc < need) nc *= 2;
        int32_t *p = realloc(d->ids, nc * sizeof(*p));
        if (!p) {
            free(ids);
            return cel_err_set(err, CEL_ENOMEM, "out of memory tokenizing data");
        }
        d->ids = p;
        *cap = nc;
    }
    if (bos >= 0) d->ids[d->n++] = bos;
    memcpy(d->ids + d->n, ids, n * sizeof(*ids));
    d->n += n;
    if (eos >= 0) d->ids[d->n++] = eos;
    d->docs++;
    free(ids);
    return CEL_OK;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int cel_cli_data_load(const cel_cli_lm_t *lm, const char *path, cel_cli_data_t *out,
                      cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = read_all(path, &buf, &len, err);
    if (rc != CEL_OK) return rc;
    if (ends_with(path, ".jsonl")) {
        char *line = buf;
        for (size_t lineno = 1; rc == CEL_OK && line < buf + len; lineno++) {
            char *nl = memchr(line, '\n', (size_t)(buf + len - line));
            size_t ll = nl ? (size_t)(nl - line) : (size_t)(buf + len - line);
            size_t i = 0;
            while (i < ll && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) i++;
            if (i < ll) {
                json_error_t je;
                json_t *o = json_loadb(line, ll, 0, &je);
                json_t *t = o ? json_object_get(o, "text") : NULL;
                if (!o)
                    rc =
                        cel_err_set(err, CEL_EPROTO, "%s:%zu: not JSON: %s", path, lineno, je.text);
                else if (!json_is_string(t))
                    rc = cel_err_set(err, CEL_EPROTO, "%s:%zu: no \"text\" string", path, lineno);
                else rc = add_doc(lm, out, &cap, json_string_value(t), json_string_length(t), err);
                if (rc != CEL_OK && err && err->code != CEL_EPROTO && err->msg[0]) {
                    char m[CEL_ERR_MSG_MAX];
                    snprintf(m, sizeof(m), "%s", err->msg);
                    cel_err_set(err, rc, "%s:%zu: %s", path, lineno, m);
                }
                json_decref(o);
            }
            line = nl ? nl + 1 : buf + len;
        }
    } else {
        rc = add_doc(lm, out, &cap, buf, len, err);
        if (rc != CEL_OK && err) {
            char m[CEL_ERR_MSG_MAX];
            snprintf(m, sizeof(m), "%s", err->msg);
            cel_err_set(err, rc, "%s: %s", path, m);
        }
    }
    free(buf);
    if (rc == CEL_OK && out->n < 2)
        rc = cel_err_set(err, CEL_EINVAL, "%s: fewer than 2 tokens of data", path);
    if (rc != CEL_OK) cel_cli_data_free(out);
    return rc;
}

void cel_cli_data_free(cel_cli_data_t *d) {
    free(d->ids);
    memset(d, 0, sizeof(*d));
}

/* splitmix64 */
static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void cel_cli_data_batch(const cel_cli_data_t *d, int B, int T, uint64_t *rng, int32_t *tokens,
                        int32_t *targets) {
    size_t span = d->n - (size_t)T; /* offsets in [0, n - T - 1] */
    for (int b = 0; b < B; b++) {
        size_t off = (size_t)(next_u64(rng) % span);
        memcpy(tokens + (size_t)b * T, d->ids + off, (size_t)T * sizeof(int32_t));
        memcpy(targets + (size_t)b * T, d->ids + off + 1, (size_t)T * sizeof(int32_t));
    }
}
