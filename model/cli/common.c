/* common.c -- helpers shared by celeriac-lm's subcommands.
 *
 * Flag value parsing with range checks, finding the model folder (--model,
 * $CELERIAC_MODEL, or the bundled model next to the binary), loading a model +
 * tokenizer (+ adapter), JSON string output, mkdir -p and file copy. Errors are
 * returned as cel_err_t or printed to stderr with the subcommand's name;
 * nothing here exits.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

double cel_cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void cel_cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "celeriac-lm %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cel_cli_bad_flag(const char *cmd, char **argv) {
    /* getopt_long leaves the offending word just before optind */
    const char *word = optind > 0 ? argv[optind - 1] : "?";
    if (optopt && strchr(word, '=') == NULL && word[0] == '-' && word[1] != '-')
        cel_cli_error(cmd, "bad flag '-%c' (see celeriac-lm %s --help)", optopt, cmd);
    else
        cel_cli_error(cmd, "unknown flag or missing value: '%s' (see celeriac-lm %s --help)", word,
                      cmd);
    return CEL_CLI_USAGE;
}

int cel_cli_parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi,
                       long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end) {
        cel_cli_error(cmd, "%s: '%s' is not an integer", flag, s);
        return CEL_EINVAL;
    }
    if (v < lo || v > hi) {
        cel_cli_error(cmd, "%s: %ld is outside [%ld, %ld]", flag, v, lo, hi);
        return CEL_EINVAL;
    }
    *out = v;
    return CEL_OK;
}

int cel_cli_parse_double(const char *cmd, const char *flag, const char *s, double lo, double hi,
                         double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        cel_cli_error(cmd, "%s: '%s' is not a number", flag, s);
        return CEL_EINVAL;
    }
    if (v < lo || v > hi) {
        cel_cli_error(cmd, "%s: %g is outside [%g, %g]", flag, v, lo, hi);
        return CEL_EINVAL;
    }
    *out = v;
    return CEL_OK;
}

int cel_cli_parse_u64(const char *cmd, const char *flag, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        cel_cli_error(cmd, "%s: '%s' is not a non-negative integer", flag, s);
        return CEL_EINVAL;
    }
    *out = v;
    return CEL_OK;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int cel_cli_model_dir(const char *arg, char *out, size_t cap, cel_err_t *err) {
    const char *src = arg ? arg : getenv("CELERIAC_MODEL");
    if (src && *src) {
        if ((size_t)snprintf(out, cap, "%s", src) >= cap)
            return cel_err_set(err, CEL_ELIMIT, "model path too long");
        if (!is_dir(out))
            return cel_err_set(err, CEL_ENOTFOUND, "model directory '%s' not found%s", out,
                               arg ? "" : " (from $CELERIAC_MODEL)");
        return CEL_OK;
    }
    char exe[CEL_CLI_PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return cel_err_set(err, CEL_EIO, "cannot find the binary's folder; pass --model DIR");
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    static const char *const rel[] = { "/../model/tiny", "/../../../model/tiny" };
    for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
        char p[CEL_CLI_PATH_MAX + 32];
        snprintf(p, sizeof(p), "%s%s", exe, rel[i]);
        if (is_dir(p) && realpath(p, out) && strlen(out) < cap) return CEL_OK;
    }
    return cel_err_set(err, CEL_ENOTFOUND,
                       "no bundled model at %s/../model/tiny; pass --model DIR or set "
                       "CELERIAC_MODEL",
                       exe);
}

int cel_cli_lm_open(const char *dir, const char *adapter_dir, int weights, cel_cli_lm_t *lm,
                    cel_err_t *err) {
    memset(lm, 0, sizeof(*lm));
    int rc = cel_cli_model_dir(dir, lm->dir, sizeof(lm->dir), err);
    if (rc != CEL_OK) return rc;
    char path[CEL_CLI_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/tokenizer.json", lm->dir);
    rc = cel_tokenizer_load(path, &lm->tok, err);
    if (rc != CEL_OK) goto fail;
    if (weights) {
        rc = cel_model_load(lm->dir, &lm->model, err);
        if (rc != CEL_OK) goto fail;
        if (cel_tokenizer_vocab_size(lm->tok) > (size_t)cel_model_vocab_size(lm->model)) {
            rc = cel_err_set(err, CEL_EINVAL, "%s: tokenizer has %zu ids, model only %d", lm->dir,
                             cel_tokenizer_vocab_size(lm->tok), cel_model_vocab_size(lm->model));
            goto fail;
        }
        /* config.json's ids win over the tokenizer's guesses */
        int32_t eos[8];
        int neos = cel_model_eos(lm->model, eos, 8);
        if (cel_model_bos(lm->model) >= 0 &&
            (rc = cel_tokenizer_set_bos(lm->tok, cel_model_bos(lm->model), err)) != CEL_OK)
            goto fail;
        if (neos > 0 && (rc = cel_tokenizer_set_eos(lm->tok, eos[0], err)) != CEL_OK) goto fail;
    }
    if (adapter_dir) {
        if (!lm->model) {
            rc = cel_err_set(err, CEL_EINVAL, "an adapter needs the model's weights");
            goto fail;
        }
        if (!is_dir(adapter_dir)) {
            rc = cel_err_set(err, CEL_ENOTFOUND, "adapter directory '%s' not found", adapter_dir);
            goto fail;
        }
        rc = cel_lora_load(lm->model, adapter_dir, &lm->lora, err);
        if (rc != CEL_OK) goto fail;
    }
    return CEL_OK;
fail:
    cel_cli_lm_close(lm);
    return rc;
}

int cel_cli_lm_device(cel_cli_lm_t *lm, const char *cmd, const char *spec, cel_err_t *err) {
    char chosen[256];
    int rc = cel_model_set_device(lm->model, spec ? spec : "auto", chosen, sizeof(chosen), err);
    if (rc == CEL_OK) fprintf(stderr, "celeriac-lm %s: device: %s\n", cmd, chosen);
    return rc;
}

void cel_cli_lm_close(cel_cli_lm_t *lm) {
    cel_lora_free(lm->lora);
    cel_model_free(lm->model);
    cel_tokenizer_free(lm->tok);
    lm->lora = NULL;
    lm->model = NULL;
    lm->tok = NULL;
}

int cel_cli_encode(const cel_cli_lm_t *lm, const char *text, int add_bos, int32_t **ids, size_t *n,
                   cel_err_t *err) {
    return cel_tokenizer_encode(lm->tok, text, strlen(text), add_bos, ids, n, err);
}

void cel_cli_json_str(FILE *f, const char *s, size_t len) {
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
            else fputc(c, f);
        }
    }
    fputc('"', f);
}

int cel_cli_mkdirs(const char *dir, cel_err_t *err) {
    char p[CEL_CLI_PATH_MAX];
    if ((size_t)snprintf(p, sizeof(p), "%s", dir) >= sizeof(p))
        return cel_err_set(err, CEL_ELIMIT, "path too long: %s", dir);
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                return cel_err_set(err, CEL_EIO, "mkdir %s: %s", p, strerror(errno));
            *s = c;
            if (!c) break;
        }
    }
    if (!is_dir(dir)) return cel_err_set(err, CEL_EIO, "%s is not a directory", dir);
    return CEL_OK;
}

int cel_cli_copy_file(const char *src, const char *dst, cel_err_t *err) {
    FILE *in = fopen(src, "rb");
    if (!in) return cel_err_set(err, CEL_EIO, "open %s: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return cel_err_set(err, CEL_EIO, "create %s: %s", dst, strerror(errno));
    }
    char buf[65536];
    size_t k;
    int rc = CEL_OK;
    while ((k = fread(buf, 1, sizeof(buf), in)) > 0)
        if (fwrite(buf, 1, k, out) != k) {
            rc = cel_err_set(err, CEL_EIO, "write %s: %s", dst, strerror(errno));
            break;
        }
    if (rc == CEL_OK && ferror(in)) rc = cel_err_set(err, CEL_EIO, "read %s", src);
    fclose(in);
    if (fclose(out) != 0 && rc == CEL_OK)
        rc = cel_err_set(err, CEL_EIO, "write %s: %s", dst, strerror(errno));
    return rc;
}
