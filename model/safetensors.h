/* safetensors.h -- read and write Hugging Face safetensors files (internal to model/).
 *
 * A reader that validates everything before use: the 8-byte little-endian
 * header length, the JSON header (types, dtypes, shapes, offsets), and that the
 * tensors tile the data area exactly (no gap, no overlap, nothing past the end),
 * as the reference Rust implementation requires. F32, F16 and BF16 tensors
 * convert to f32 on read. A set may span the shards named by a
 * model.safetensors.index.json. The writer emits F32 tensors and optional
 * __metadata__ strings; it can write atomically (temp file, fsync, rename).
 *
 * Pure file I/O, no threads; runs in whichever process loads a model.
 */
#ifndef CEL_SAFETENSORS_H
#define CEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

/* Limits checked before anything is sized from a file. */
#define CEL_ST_MAX_HEADER  (100u * 1000 * 1000) /* JSON header bytes (Rust's limit) */
#define CEL_ST_MAX_DIMS    8                    /* rank of one tensor */
#define CEL_ST_MAX_TENSORS (1 << 20)            /* tensors in one file */
#define CEL_ST_MAX_NAME    1024                 /* bytes of one tensor name */
#define CEL_ST_MAX_SHARDS  1024                 /* files in one index */

typedef enum cel_st_dtype {
    CEL_ST_BOOL,
    CEL_ST_U8,
    CEL_ST_I8,
    CEL_ST_F8_E4M3,
    CEL_ST_F8_E5M2,
    CEL_ST_I16,
    CEL_ST_U16,
    CEL_ST_F16,
    CEL_ST_BF16,
    CEL_ST_I32,
    CEL_ST_U32,
    CEL_ST_F32,
    CEL_ST_I64,
    CEL_ST_U64,
    CEL_ST_F64,
    CEL_ST_NDTYPES
} cel_st_dtype_t;

/* One tensor of an open set. Read-only for callers; dies with the set. */
typedef struct cel_st_tensor {
    const char *name;
    cel_st_dtype_t dtype;
    int ndim;
    int64_t shape[CEL_ST_MAX_DIMS];
    uint64_t numel;      /* product of shape */
    uint64_t nbytes;     /* numel * dtype size */
    const uint8_t *data; /* nbytes bytes inside the file's mapping, maybe unaligned */
} cel_st_tensor_t;

typedef struct cel_safetensors cel_safetensors_t;

/* Opens one .safetensors file (mmap, read-only) and validates it whole. On
 * success *out owns the mapping (cel_safetensors_free). */
int cel_safetensors_open(const char *path, cel_safetensors_t **out, cel_err_t *err);

/* Opens the shards listed in a model.safetensors.index.json (weight_map), each
 * validated, and checks that every name in the map lives in the shard it names
 * and that no name appears in two shards. */
int cel_safetensors_open_index(const char *index_path, cel_safetensors_t **out, cel_err_t *err);

/* Validates a file image held in memory (copied; buf may be freed after).
 * Used by tests and the fuzz harness. */
int cel_safetensors_parse(const uint8_t *buf, size_t len, cel_safetensors_t **out, cel_err_t *err);

/* Frees the set and its mappings. NULL is a no-op. */
void cel_safetensors_free(cel_safetensors_t *st);

/* Number of tensors in the set, and the i-th (file order, then header order). */
int cel_safetensors_count(const cel_safetensors_t *st);
const cel_st_tensor_t *cel_safetensors_at(const cel_safetensors_t *st, int i);

/* The tensor called name, or NULL. */
const cel_st_tensor_t *cel_safetensors_find(const cel_safetensors_t *st, const char *name);

/* A __metadata__ string of the first file, or NULL. Borrowed from the set. */
const char *cel_safetensors_meta(const cel_safetensors_t *st, const char *key);

/* The i-th __metadata__ pair of the first file: CEL_OK, or CEL_ENOTFOUND past
 * the end. Borrowed from the set. */
int cel_safetensors_meta_at(const cel_safetensors_t *st, int i, const char **key,
                            const char **value);

/* Copies tensor name into dst (n floats), converting F32/F16/BF16 to f32.
 * Checks that the tensor exists, that its shape equals shape[0..ndim) and that
 * its dtype is convertible; CEL_ENOTFOUND / CEL_EPROTO otherwise. */
int cel_safetensors_read_f32(const cel_safetensors_t *st, const char *name, int ndim,
                             const int64_t *shape, float *dst, cel_err_t *err);

/* Name and size in bytes of a dtype ("F32", 4). */
const char *cel_safetensors_dtype_name(cel_st_dtype_t dt);
size_t cel_safetensors_dtype_size(cel_st_dtype_t dt);

/* One F32 tensor to write: data holds the product of shape floats. */
typedef struct cel_st_entry {
    const char *name;
    int ndim;
    int64_t shape[CEL_ST_MAX_DIMS];
    const float *data;
} cel_st_entry_t;

#define CEL_ST_ATOMIC 1 /* write path.tmp.<pid>, fsync, rename over path, fsync dir */

/* Writes n F32 tensors to path in the given order, with __metadata__ from the
 * NULL-or-n_meta key/value string pairs meta[2*i], meta[2*i+1]. Flags:
 * CEL_ST_ATOMIC. Names must be distinct. CEL_EIO on a failed write (the temp
 * file is removed). */
int cel_safetensors_write(const char *path, const cel_st_entry_t *entries, int n,
                          const char *const *meta, int n_meta, int flags, cel_err_t *err);

/* The first bytes cel_safetensors_write would write (the header's length and
 * the header), which the entries' data then follow in order. OUT: *out
 * (malloc'd), *len; *total: the whole file's length. */
int cel_safetensors_head(const cel_st_entry_t *entries, int n, const char *const *meta,
                         int n_meta, uint8_t **out, size_t *len, size_t *total, cel_err_t *err);

#endif
