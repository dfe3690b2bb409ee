/* safetensors.c -- validating reader and F32 writer for safetensors files.
 *
 * Format: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {..}},
 * then the data area; offsets are relative to the data area. Every check the
 * Rust reference does is done here before a byte of tensor data is trusted:
 * header length against the file and CEL_ST_MAX_HEADER, JSON types, known
 * dtypes, shape products without overflow, byte lengths that match the shape,
 * and tensors that tile the data area exactly. Files are mmap'd read-only.
 *
 * No threads; the caller owns the returned set. Little-endian hosts only.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <jansson.h>

typedef struct st_file {
    uint8_t *base; /* whole file image */
    size_t len;
    int mapped;   /* munmap (1) or free (0) */
    json_t *meta; /* __metadata__ object or NULL */
} st_file_t;

struct cel_safetensors {
    st_file_t *files;
    int nfiles;
    cel_st_tensor_t *t;
    int n;
    int *order; /* indices of t sorted by name, for cel_safetensors_find */
};

static const struct {
    const char *name;
    size_t size;
} dtypes[CEL_ST_NDTYPES] = {
    [CEL_ST_BOOL] = { "BOOL", 1 },       [CEL_ST_U8] = { "U8", 1 },
    [CEL_ST_I8] = { "I8", 1 },           [CEL_ST_F8_E4M3] = { "F8_E4M3", 1 },
    [CEL_ST_F8_E5M2] = { "F8_E5M2", 1 }, [CEL_ST_I16] = { "I16", 2 },
    [CEL_ST_U16] = { "U16", 2 },         [CEL_ST_F16] = { "F16", 2 },
    [CEL_ST_BF16] = { "BF16", 2 },       [CEL_ST_I32] = { "I32", 4 },
    [CEL_ST_U32] = { "U32", 4 },         [CEL_ST_F32] = { "F32", 4 },
    [CEL_ST_I64] = { "I64", 8 },         [CEL_ST_U64] = { "U64", 8 },
    [CEL_ST_F64] = { "F64", 8 },
};

const char *cel_safetensors_dtype_name(cel_st_dtype_t dt) {
    return (unsigned)dt < CEL_ST_NDTYPES ? dtypes[dt].name : "?";
}

size_t cel_safetensors_dtype_size(cel_st_dtype_t dt) {
    return (unsigned)dt < CEL_ST_NDTYPES ? dtypes[dt].size : 0;
}

static int dtype_parse(const char *s) {
    for (int i = 0; i < CEL_ST_NDTYPES; i++)
        if (strcmp(s, dtypes[i].name) == 0) return i;
    return -1;
}

static void file_close(st_file_t *f) {
    if (f->base) {
        if (f->mapped) munmap(f->base, f->len);
        else free(f->base);
    }
    json_decref(f->meta);
    memset(f, 0, sizeof(*f));
}

void cel_safetensors_free(cel_safetensors_t *st) {
    if (!st) return;
    for (int i = 0; i < st->nfiles; i++) file_close(&st->files[i]);
    for (int i = 0; i < st->n; i++) free((char *)st->t[i].name);
    free(st->files);
    free(st->t);
    free(st->order);
    free(st);
}

/* Reads a JSON integer that must be in [0, INT64_MAX]. */
static int json_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

typedef struct span {
    uint64_t begin, end;
    int idx;
} span_t;

static int span_cmp(const void *a, const void *b) {
    const span_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Parses and validates the image in f, appending its tensors to st. what names
 * the file in messages. */
static int file_validate(cel_safetensors_t *st, st_file_t *f, const char *what, cel_err_t *err) {
    if (f->len < 8)
        return cel_err_set(err, CEL_EPROTO,
                           "%s: %zu bytes, shorter than the 8-byte header "
                           "length",
                           what, f->len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->base[i];
    if (hlen > CEL_ST_MAX_HEADER)
        return cel_err_set(err, CEL_ELIMIT, "%s: header length %llu exceeds the limit %u", what,
                           (unsigned long long)hlen, CEL_ST_MAX_HEADER);
    if (hlen > f->len - 8)
        return cel_err_set(err, CEL_EPROTO,
                           "%s: header length %llu runs past the end of "
                           "the %zu-byte file",
                           what, (unsigned long long)hlen, f->len);
    if (hlen < 2 || f->base[8] != '{')
        return cel_err_set(err, CEL_EPROTO, "%s: header is not a JSON object", what);
    const uint8_t *data = f->base + 8 + hlen;
    uint64_t data_len = f->len - 8 - hlen;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->base + 8, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return cel_err_set(err, CEL_EPROTO, "%s: header is not valid JSON: %s (at byte %d)", what,
                           jerr.text, jerr.position);
    int rc = CEL_OK;
    span_t *spans = NULL;
    if (!json_is_object(root)) {
        rc = cel_err_set(err, CEL_EPROTO, "%s: header is not a JSON object", what);
        goto done;
    }
    size_t count = json_object_size(root);
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta) count--;
    if (count > CEL_ST_MAX_TENSORS || st->n + count > (size_t)CEL_ST_MAX_TENSORS) {
        rc = cel_err_set(err, CEL_ELIMIT, "%s: %zu tensors exceed the limit %d", what, count,
                         CEL_ST_MAX_TENSORS);
        goto done;
    }
    if (meta) {
        const char *k;
        json_t *v;
        if (!json_is_object(meta)) {
            rc = cel_err_set(err, CEL_EPROTO, "%s: __metadata__ is not an object", what);
            goto done;
        }
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v)) {
                rc = cel_err_set(err, CEL_EPROTO, "%s: __metadata__[%.64s] is not a string", what,
                                 k);
                goto done;
            }
        }
        f->meta = json_incref(meta);
    }
    cel_st_tensor_t *nt = realloc(st->t, (st->n + count + 1) * sizeof(*nt));
    spans = malloc((count + 1) * sizeof(*spans));
    if (!nt || !spans) {
        if (nt) st->t = nt;
        rc = cel_err_set(err, CEL_ENOMEM, "%s: out of memory for %zu tensors", what, count);
        goto done;
    }
    st->t = nt;
    int ns = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        size_t klen = strlen(key);
        if (klen == 0 || klen > CEL_ST_MAX_NAME) {
            rc = cel_err_set(err, CEL_EPROTO, "%s: tensor name of %zu bytes (1..%d allowed)", what,
                             klen, CEL_ST_MAX_NAME);
            goto done;
        }
        json_t *jd = json_object_get(val, "dtype");
        json_t *js = json_object_get(val, "shape");
        json_t *jo = json_object_get(val, "data_offsets");
        if (!json_is_object(val) || !json_is_string(jd) || !json_is_array(js) ||
            !json_is_array(jo)) {
            rc = cel_err_set(err, CEL_EPROTO,
                             "%s: tensor %.64s needs dtype, shape and "
                             "data_offsets",
                             what, key);
            goto done;
        }
        int dt = dtype_parse(json_string_value(jd));
        if (dt < 0) {
            rc = cel_err_set(err, CEL_EPROTO, "%s: tensor %.64s has unknown dtype %.16s", what, key,
                             json_string_value(jd));
            goto done;
        }
        cel_st_tensor_t *t = &st->t[st->n];
        memset(t, 0, sizeof(*t));
        t->dtype = (cel_st_dtype_t)dt;
        size_t nd = json_array_size(js);
        if (nd > CEL_ST_MAX_DIMS) {
            rc = cel_err_set(err, CEL_ELIMIT, "%s: tensor %.64s has rank %zu (max %d)", what, key,
                             nd, CEL_ST_MAX_DIMS);
            goto done;
        }
        t->ndim = (int)nd;
        uint64_t numel = 1;
        for (size_t d = 0; d < nd; d++) {
            uint64_t dim;
            if (json_u64(json_array_get(js, d), &dim) != 0) {
                rc = cel_err_set(err, CEL_EPROTO,
                                 "%s: tensor %.64s: shape[%zu] is not a "
                                 "non-negative integer",
                                 what, key, d);
                goto done;
            }
            t->shape[d] = (int64_t)dim;
            if (__builtin_mul_overflow(numel, dim, &numel)) {
                rc = cel_err_set(err, CEL_EPROTO, "%s: tensor %.64s: shape product overflows", what,
                                 key);
                goto done;
            }
        }
        uint64_t nbytes, begin, end;
        if (__builtin_mul_overflow(numel, (uint64_t)dtypes[dt].size, &nbytes)) {
            rc = cel_err_set(err, CEL_EPROTO, "%s: tensor %.64s: byte size overflows", what, key);
            goto done;
        }
        if (json_array_size(jo) != 2 || json_u64(json_array_get(jo, 0), &begin) != 0 ||
            json_u64(json_array_get(jo, 1), &end) != 0 || begin > end) {
            rc = cel_err_set(err, CEL_EPROTO,
                             "%s: tensor %.64s: data_offsets must be "
                             "[begin, end] with 0 <= begin <= end",
                             what, key);
            goto done;
        }
        if (end > data_len) {
            rc = cel_err_set(err, CEL_EPROTO,
                             "%s: tensor %.64s: data_offsets [%llu, %llu] "
                             "out of the %llu-byte data area",
                             what, key, (unsigned long long)begin, (unsigned long long)end,
                             (unsigned long long)data_len);
            goto done;
        }
        if (end - begin != nbytes) {
            rc = cel_err_set(err, CEL_EPROTO,
                             "%s: tensor %.64s: %llu bytes but dtype %s x "
                             "shape needs %llu",
                             what, key, (unsigned long long)(end - begin), dtypes[dt].name,
                             (unsigned long long)nbytes);
            goto done;
        }
        t->numel = numel;
        t->nbytes = nbytes;
        t->data = data + begin;
        t->name = strdup(key);
        if (!t->name) {
            rc = cel_err_set(err, CEL_ENOMEM, "%s: out of memory", what);
            goto done;
        }
        spans[ns].begin = begin;
        spans[ns].end = end;
        spans[ns].idx = st->n;
        ns++;
        st->n++;
    }
    /* The tensors must tile the data area: sorted by offset, each starts where
     * the previous ended, and the last ends at the end of the file. */
    qsort(spans, ns, sizeof(*spans), span_cmp);
    uint64_t pos = 0;
    for (int i = 0; i < ns; i++) {
        if (spans[i].begin < pos) {
            rc = cel_err_set(err, CEL_EPROTO,
                             "%s: tensor %.64s overlaps the tensor before it "
                             "(offset %llu < %llu)",
                             what, st->t[spans[i].idx].name, (unsigned long long)spans[i].begin,
                             (unsigned long long)pos);
            goto done;
        }
        if (spans[i].begin > pos) {
            rc = cel_err_set(err, CEL_EPROTO, "%s: %llu unused bytes before tensor %.64s", what,
                             (unsigned long long)(spans[i].begin - pos), st->t[spans[i].idx].name);
            goto done;
        }
        pos = spans[i].end;
    }
    if (pos != data_len)
        rc = cel_err_set(err, CEL_EPROTO, "%s: %llu bytes after the last tensor", what,
                         (unsigned long long)(data_len - pos));
done:
    free(spans);
    json_decref(root);
    return rc;
}

static int order_cmp(const void *a, const void *b, void *arg) {
    const cel_st_tensor_t *t = arg;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

/* Builds the by-name index and rejects duplicate names (across shards). */
static int build_order(cel_safetensors_t *st, cel_err_t *err) {
    st->order = malloc((st->n + 1) * sizeof(int));
    if (!st->order) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    for (int i = 0; i < st->n; i++) st->order[i] = i;
    qsort_r(st->order, st->n, sizeof(int), order_cmp, st->t);
    for (int i = 1; i < st->n; i++)
        if (strcmp(st->t[st->order[i]].name, st->t[st->order[i - 1]].name) == 0)
            return cel_err_set(err, CEL_EPROTO, "tensor %.64s appears in two shards",
                               st->t[st->order[i]].name);
    return CEL_OK;
}

static cel_safetensors_t *set_new(int nfiles) {
    cel_safetensors_t *st = calloc(1, sizeof(*st));
    if (!st) return NULL;
    st->files = calloc(nfiles, sizeof(*st->files));
    if (!st->files) {
        free(st);
        return NULL;
    }
    return st;
}

/* Maps path into f. */
static int file_map(st_file_t *f, const char *path, cel_err_t *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cel_err_set(err, errno == ENOENT ? CEL_ENOTFOUND : CEL_EIO, "%s: %s", path,
                           strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return cel_err_set(err, CEL_EIO, "%s: not a regular file", path);
    }
    f->len = (size_t)sb.st_size;
    if (f->len == 0) {
        close(fd);
        return cel_err_set(err, CEL_EPROTO, "%s: empty file", path);
    }
    void *p = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return cel_err_set(err, CEL_EIO, "%s: mmap: %s", path, strerror(errno));
    f->base = p;
    f->mapped = 1;
    return CEL_OK;
}

int cel_safetensors_open(const char *path, cel_safetensors_t **out, cel_err_t *err) {
    *out = NULL;
    cel_safetensors_t *st = set_new(1);
    if (!st) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    st->nfiles = 1;
    int rc = file_map(&st->files[0], path, err);
    if (rc == CEL_OK) rc = file_validate(st, &st->files[0], path, err);
    if (rc == CEL_OK) rc = build_order(st, err);
    if (rc != CEL_OK) {
        cel_safetensors_free(st);
        return rc;
    }
    *out = st;
    return CEL_OK;
}

int cel_safetensors_parse(const uint8_t *buf, size_t len, cel_safetensors_t **out, cel_err_t *err) {
    *out = NULL;
    cel_safetensors_t *st = set_new(1);
    if (!st) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    st->nfiles = 1;
    st->files[0].base = malloc(len ? len : 1);
    int rc;
    if (!st->files[0].base) {
        rc = cel_err_set(err, CEL_ENOMEM, "out of memory for %zu bytes", len);
    } else {
        if (len) memcpy(st->files[0].base, buf, len);
        st->files[0].len = len;
        rc = file_validate(st, &st->files[0], "safetensors", err);
        if (rc == CEL_OK) rc = build_order(st, err);
    }
    if (rc != CEL_OK) {
        cel_safetensors_free(st);
        return rc;
    }
    *out = st;
    return CEL_OK;
}

int cel_safetensors_open_index(const char *index_path, cel_safetensors_t **out, cel_err_t *err) {
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return cel_err_set(err, CEL_EPROTO, "%s: %s (line %d)", index_path, jerr.text, jerr.line);
    int rc = CEL_OK;
    cel_safetensors_t *st = NULL;
    json_t *names = json_array(); /* distinct shard file names, in first-seen order */
    json_t *map = json_object_get(root, "weight_map");
    if (!names) {
        rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
        goto done;
    }
    if (!json_is_object(map)) {
        rc = cel_err_set(err, CEL_EPROTO, "%s: no weight_map object", index_path);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val) {
        const char *fn = json_string_value(val);
        if (!fn || !*fn || strchr(fn, '/') || strcmp(fn, "..") == 0 || strlen(fn) > 255) {
            rc = cel_err_set(err, CEL_EPROTO, "%s: weight_map[%.64s] is not a plain file name",
                             index_path, key);
            goto done;
        }
        size_t i;
        json_t *e;
        int seen = 0;
        json_array_foreach(names, i, e) if (strcmp(json_string_value(e), fn) == 0) seen = 1;
        if (!seen) {
            if (json_array_size(names) >= CEL_ST_MAX_SHARDS) {
                rc = cel_err_set(err, CEL_ELIMIT, "%s: more than %d shards", index_path,
                                 CEL_ST_MAX_SHARDS);
                goto done;
            }
            json_array_append_new(names, json_string(fn));
        }
    }
    int nf = (int)json_array_size(names);
    if (nf == 0) {
        rc = cel_err_set(err, CEL_EPROTO, "%s: empty weight_map", index_path);
        goto done;
    }
    st = set_new(nf);
    if (!st) {
        rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
        goto done;
    }
    const char *slash = strrchr(index_path, '/');
    int dirlen = slash ? (int)(slash - index_path) : 1;
    const char *dir = slash ? index_path : ".";
    for (int i = 0; i < nf; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%.*s/%s", dirlen, dir,
                 json_string_value(json_array_get(names, i)));
        st->nfiles = i + 1;
        rc = file_map(&st->files[i], path, err);
        if (rc == CEL_OK) rc = file_validate(st, &st->files[i], path, err);
        if (rc != CEL_OK) goto done;
    }
    rc = build_order(st, err);
    if (rc != CEL_OK) goto done;
    /* Every mapped name must be in the shard the map names. */
    json_object_foreach(map, key, val) {
        const cel_st_tensor_t *t = cel_safetensors_find(st, key);
        int fi = -1;
        if (t)
            for (int i = 0; i < st->nfiles; i++)
                if (t->data >= st->files[i].base && t->data <= st->files[i].base + st->files[i].len)
                    fi = i;
        if (!t || fi < 0 ||
            strcmp(json_string_value(json_array_get(names, fi)), json_string_value(val)) != 0) {
            rc = cel_err_set(err, CEL_EPROTO, "%s: tensor %.64s is not in shard %.64s", index_path,
                             key, json_string_value(val));
            goto done;
        }
    }
done:
    json_decref(names);
    json_decref(root);
    if (rc != CEL_OK) {
        cel_safetensors_free(st);
        return rc;
    }
    *out = st;
    return CEL_OK;
}

int cel_safetensors_count(const cel_safetensors_t *st) { return st->n; }

const cel_st_tensor_t *cel_safetensors_at(const cel_safetensors_t *st, int i) {
    return (i >= 0 && i < st->n) ? &st->t[i] : NULL;
}

const cel_st_tensor_t *cel_safetensors_find(const cel_safetensors_t *st, const char *name) {
    int lo = 0, hi = st->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->t[st->order[mid]].name);
        if (c == 0) return &st->t[st->order[mid]];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

const char *cel_safetensors_meta(const cel_safetensors_t *st, const char *key) {
    if (st->nfiles < 1 || !st->files[0].meta) return NULL;
    return json_string_value(json_object_get(st->files[0].meta, key));
}

int cel_safetensors_meta_at(const cel_safetensors_t *st, int i, const char **key,
                            const char **value) {
    if (st->nfiles < 1 || !st->files[0].meta || i < 0) return CEL_ENOTFOUND;
    void *it = json_object_iter(st->files[0].meta);
    while (it && i-- > 0) it = json_object_iter_next(st->files[0].meta, it);
    if (!it) return CEL_ENOTFOUND;
    *key = json_object_iter_key(it);
    *value = json_string_value(json_object_iter_value(it));
    return CEL_OK;
}

/* IEEE half to float, subnormals, infinities and NaN included. */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int cel_safetensors_read_f32(const cel_safetensors_t *st, const char *name, int ndim,
                             const int64_t *shape, float *dst, cel_err_t *err) {
    const cel_st_tensor_t *t = cel_safetensors_find(st, name);
    if (!t) return cel_err_set(err, CEL_ENOTFOUND, "tensor %.128s is missing", name);
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char want[128], got[128];
        int w = 0, g = 0;
        for (int d = 0; d < ndim && w < 100; d++)
            w += snprintf(want + w, sizeof(want) - w, "%s%lld", d ? "," : "", (long long)shape[d]);
        for (int d = 0; d < t->ndim && g < 100; d++)
            g += snprintf(got + g, sizeof(got) - g, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        want[w] = got[g] = '\0';
        return cel_err_set(err, CEL_EPROTO, "tensor %.96s has shape [%s], expected [%s]", name, got,
                           want);
    }
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case CEL_ST_F32: memcpy(dst, p, t->nbytes); break;
    case CEL_ST_F16:
        for (uint64_t i = 0; i < t->numel; i++) dst[i] = f16_to_f32(p[2 * i] | p[2 * i + 1] << 8);
        break;
    case CEL_ST_BF16:
        for (uint64_t i = 0; i < t->numel; i++) {
            uint32_t bits = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
            memcpy(&dst[i], &bits, 4);
        }
        break;
    case CEL_ST_F64:
        for (uint64_t i = 0; i < t->numel; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        break;
    default:
        return cel_err_set(err, CEL_EPROTO, "tensor %.128s has dtype %s, not a float type", name,
                           dtypes[t->dtype].name);
    }
    return CEL_OK;
}

#define WRITEV_MAX 64 /* iovecs per writev (IOV_MAX is 1024 on Linux) */

/* writev of all n iovecs, resuming after short writes (iov is consumed). 0 or -1. */
static int writev_all(int fd, struct iovec *iov, int n) {
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* ---- the header written directly (every checkpoint writes three: jansson's
 * tree and dump of a few hundred tensors cost ~0.3 ms a step, issue 17) ---- */

typedef struct hbuf {
    char *p;
    size_t len, cap;
    int bad; /* out of memory */
} hbuf_t;

static void hb_put(hbuf_t *b, const char *s, size_t n) {
    if (b->bad) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->len + n + 1 > cap) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->bad = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void hb_str(hbuf_t *b, const char *s) { hb_put(b, s, strlen(s)); }

static void hb_u64(hbuf_t *b, uint64_t v) {
    char d[24];
    int i = (int)sizeof(d);
    do d[--i] = (char)('0' + v % 10), v /= 10;
    while (v);
    hb_put(b, d + i, sizeof(d) - (size_t)i);
}

/* 1 when s goes into JSON as it is, as jansson writes it: printable ASCII
 * without '"' or '\\'. */
static int plain_str(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f || *s == '"' || *s == '\\')
            return 0;
    return 1;
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The header's text as build_header's jansson path writes it (the same
 * bytes; test_safetensors compares them), or NULL: strings that need escaping,
 * a bad or duplicate entry, no memory (then that path writes it, or says what
 * is wrong). */
static char *plain_header(const cel_st_entry_t *e, int n, const char *const *meta, int n_meta,
                          size_t *len) {
    for (int i = 0; i < n_meta; i++) {
        if (!meta[2 * i] || !meta[2 * i + 1] || !plain_str(meta[2 * i]) ||
            !plain_str(meta[2 * i + 1]))
            return NULL;
        for (int j = 0; j < i; j++)
            if (strcmp(meta[2 * i], meta[2 * j]) == 0) return NULL;
    }
    size_t slots = 16;
    while (slots < 2 * (size_t)n) slots *= 2;
    int *seen = malloc(slots * sizeof(int)), ok = seen != NULL;
    if (seen) memset(seen, -1, slots * sizeof(int));
    hbuf_t b = { 0 };
    hb_put(&b, "{", 1);
    if (n_meta > 0) {
        hb_str(&b, "\"__metadata__\":{");
        for (int i = 0; i < n_meta; i++) {
            hb_str(&b, i ? ",\"" : "\"");
            hb_str(&b, meta[2 * i]);
            hb_str(&b, "\":\"");
            hb_str(&b, meta[2 * i + 1]);
            hb_put(&b, "\"", 1);
        }
        hb_put(&b, "}", 1);
    }
    uint64_t off = 0;
    for (int i = 0; i < n && ok; i++) {
        if (!e[i].name || !*e[i].name || strcmp(e[i].name, "__metadata__") == 0 || e[i].ndim < 0 ||
            e[i].ndim > CEL_ST_MAX_DIMS || !plain_str(e[i].name)) {
            ok = 0;
            break;
        }
        size_t at = (size_t)name_hash(e[i].name) & (slots - 1);
        while (seen[at] >= 0 && strcmp(e[seen[at]].name, e[i].name) != 0)
            at = (at + 1) & (slots - 1);
        if (seen[at] >= 0) { /* a duplicate */
            ok = 0;
            break;
        }
        seen[at] = i;
        hb_str(&b, i || n_meta > 0 ? ",\"" : "\"");
        hb_str(&b, e[i].name);
        hb_str(&b, "\":{\"dtype\":\"F32\",\"shape\":[");
        uint64_t numel = 1;
        for (int d = 0; d < e[i].ndim && ok; d++) {
            if (e[i].shape[d] < 0) ok = 0;
            if (d) hb_put(&b, ",", 1);
            hb_u64(&b, (uint64_t)e[i].shape[d]);
            numel *= (uint64_t)e[i].shape[d];
        }
        hb_str(&b, "],\"data_offsets\":[");
        hb_u64(&b, off);
        hb_put(&b, ",", 1);
        hb_u64(&b, off + 4 * numel);
        hb_str(&b, "]}");
        off += 4 * numel;
    }
    hb_put(&b, "}", 1);
    free(seen);
    if (!ok || b.bad) {
        free(b.p);
        return NULL;
    }
    b.p[b.len] = '\0';
    *len = b.len;
    return b.p;
}

/* The header text s (malloc'd, len bytes; taken) padded with spaces to a
 * multiple of 8, which keeps the data area 8-byte aligned; *hlen gets its
 * length. */
static char *pad_header(char *s, size_t len, size_t *hlen, cel_err_t *err) {
    size_t padded = (len + 7) & ~(size_t)7;
    char *h = realloc(s, padded + 1);
    if (!h) {
        free(s);
        cel_err_set(err, CEL_ENOMEM, "out of memory for the header");
        return NULL;
    }
    memset(h + len, ' ', padded - len);
    h[padded] = '\0';
    *hlen = padded;
    return h;
}

/* Builds the padded header text for the entries; *hlen gets its length. */
static char *build_header(const cel_st_entry_t *e, int n, const char *const *meta, int n_meta,
                          size_t *hlen, cel_err_t *err) {
    size_t plen = 0;
    char *fast = plain_header(e, n, meta, n_meta, &plen);
    if (fast) return pad_header(fast, plen, hlen, err);
    /* (a bad entry, or strings to escape: jansson's path says which and writes it) */
    json_t *root = json_object();
    if (!root) return NULL;
    if (n_meta > 0) {
        json_t *m = json_object();
        for (int i = 0; i < n_meta; i++)
            json_object_set_new(m, meta[2 * i], json_string(meta[2 * i + 1]));
        json_object_set_new(root, "__metadata__", m);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (!e[i].name || !*e[i].name || strcmp(e[i].name, "__metadata__") == 0 ||
            json_object_get(root, e[i].name) || e[i].ndim < 0 || e[i].ndim > CEL_ST_MAX_DIMS) {
            cel_err_set(err, CEL_EINVAL, "bad or duplicate tensor entry %.64s",
                        e[i].name ? e[i].name : "(null)");
            json_decref(root);
            return NULL;
        }
        json_t *shape = json_array();
        uint64_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            if (e[i].shape[d] < 0) {
                cel_err_set(err, CEL_EINVAL, "tensor %.64s has a negative dimension", e[i].name);
                json_decref(shape);
                json_decref(root);
                return NULL;
            }
            json_array_append_new(shape, json_integer(e[i].shape[d]));
            numel *= (uint64_t)e[i].shape[d];
        }
        json_t *t = json_pack("{s:s, s:o, s:[I,I]}", "dtype", "F32", "shape", shape, "data_offsets",
                              (json_int_t)off, (json_int_t)(off + 4 * numel));
        off += 4 * numel;
        json_object_set_new(root, e[i].name, t);
    }
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!s) {
        cel_err_set(err, CEL_ENOMEM, "out of memory for the header");
        return NULL;
    }
    return pad_header(s, strlen(s), hlen, err);
}

int cel_safetensors_head(const cel_st_entry_t *entries, int n, const char *const *meta,
                         int n_meta, uint8_t **out, size_t *len, size_t *total, cel_err_t *err) {
    cel_err_clear(err);
    *out = NULL;
    size_t hlen = 0;
    char *h = build_header(entries, n, meta, n_meta, &hlen, err);
    if (!h) return err && err->code ? err->code : CEL_ENOMEM;
    uint8_t *b = malloc(8 + hlen);
    if (!b) {
        free(h);
        return cel_err_set(err, CEL_ENOMEM, "out of memory for the header");
    }
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, h, hlen);
    free(h);
    size_t t = 8 + hlen;
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < entries[i].ndim; d++) numel *= (size_t)entries[i].shape[d];
        t += numel * 4;
    }
    *out = b;
    *len = 8 + hlen;
    *total = t;
    return CEL_OK;
}

int cel_safetensors_write(const char *path, const cel_st_entry_t *entries, int n,
                          const char *const *meta, int n_meta, int flags, cel_err_t *err) {
    cel_err_clear(err);
    size_t hlen = 0;
    char *h = build_header(entries, n, meta, n_meta, &hlen, err);
    if (!h) return err && err->code ? err->code : CEL_ENOMEM;
    char tmp[4160];
    int atomic = flags & CEL_ST_ATOMIC;
    if (atomic) snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    else snprintf(tmp, sizeof(tmp), "%s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(h);
        return cel_err_set(err, CEL_EIO, "%s: %s", tmp, strerror(errno));
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    /* the length, header and tensors in as few writev calls as IOV_MAX allows
     * (an adapter is a hundred small tensors: one write each cost more than the data) */
    struct iovec iov[WRITEV_MAX];
    int k = 0, bad = 0;
    iov[k++] = (struct iovec){ len8, 8 };
    iov[k++] = (struct iovec){ h, hlen };
    for (int i = 0; i <= n && !bad; i++) {
        if (i < n) {
            size_t numel = 1;
            for (int d = 0; d < entries[i].ndim; d++) numel *= (size_t)entries[i].shape[d];
            if (numel > 0) iov[k++] = (struct iovec){ (void *)entries[i].data, numel * 4 };
        }
        if (k == WRITEV_MAX || (i == n && k > 0)) {
            bad = writev_all(fd, iov, k);
            k = 0;
        }
    }
    free(h);
    if (!bad && atomic) bad = fsync(fd);
    int e = errno;
    if (close(fd) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (!bad && atomic && rename(tmp, path) != 0) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        unlink(tmp);
        return cel_err_set(err, CEL_EIO, "writing %s: %s", path, strerror(e));
    }
    if (atomic) { /* make the rename itself durable */
        char dir[4096];
        const char *slash = strrchr(path, '/');
        snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return CEL_OK;
}
