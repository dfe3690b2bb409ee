/* compress.h -- kombu's message compressions: names, decode with a size cap, encode.
 *
 * kombu 5.2 (kombu/compression.py) compresses a serialized body and names the
 * method in the message's `compression` header by content type:
 * application/x-gzip (zlib.compress; aliases gzip, zlib), application/x-bz2
 * (bzip2, bzip), application/x-lzma (lzma.compress, an .xz stream; lzma, xz),
 * application/zstd (zstandard; zstd, zstandard) and application/x-brotli
 * (brotli). The codecs are Debian's libraries: zlib, libbz2, liblzma, libzstd,
 * libbrotli. Pure functions, no I/O; main process (task decode, canvas
 * publish) and unit tests.
 */
#ifndef CEL_COMPRESS_H
#define CEL_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

typedef enum cel_compress {
    CEL_COMPRESS_NONE = 0,
    CEL_COMPRESS_ZLIB,
    CEL_COMPRESS_BZ2,
    CEL_COMPRESS_LZMA,
    CEL_COMPRESS_ZSTD,
    CEL_COMPRESS_BROTLI,
} cel_compress_t;

/* Memory liblzma may use while decoding (its dictionary): enough for any
 * preset Python's lzma.compress writes (preset 9: 64 MiB). */
#define CEL_COMPRESS_LZMA_MEMLIMIT (128u * 1024 * 1024)

/* Looks a method up by kombu content type or alias (as kombu's get_decoder
 * and get_encoder: "application/x-gzip", "gzip", "zlib", ...), case as
 * written. CEL_OK and *out, or CEL_EINVAL naming the unknown method. */
int cel_compress_lookup(const char *name, cel_compress_t *out, cel_err_t *err);

/* The content type kombu writes in the `compression` header for m
 * ("application/x-gzip"), NULL for CEL_COMPRESS_NONE. Static storage. */
const char *cel_compress_content_type(cel_compress_t m);

/* Decompresses in[0..len) (all of it: a truncated stream is an error;
 * concatenated bzip2, xz and zstd streams are read as Python's decoders read
 * them). Output is never larger than max_out bytes: past it decoding stops
 * with CEL_ELIMIT, having held at most max_out + 1 bytes of output (plus the
 * codec's own window), so a decompression bomb costs no more than the cap.
 * CEL_OK with *out malloc'd (caller frees; a NUL follows the *out_len
 * bytes), or CEL_ELIMIT, CEL_EPROTO (corrupt or truncated data), CEL_EINVAL
 * (m is NONE), CEL_ENOMEM; *out NULL on error. */
int cel_compress_decode(cel_compress_t m, const uint8_t *in, size_t len, size_t max_out,
                        uint8_t **out, size_t *out_len, cel_err_t *err);

/* Compresses in[0..len) as kombu's encoder for m does with its defaults
 * (zlib level 6, bzip2 level 9, xz preset 6 with CRC64, zstd level 3 with the
 * content size, brotli quality 11), so Python's decoder reads it back.
 * CEL_OK with *out malloc'd (caller frees), else CEL_EINVAL (m NONE),
 * CEL_ELIMIT (len over CEL_MSG_MAX_BYTES), CEL_ENOMEM; *out NULL on error. */
int cel_compress_encode(cel_compress_t m, const uint8_t *in, size_t len, uint8_t **out,
                        size_t *out_len, cel_err_t *err);

#endif
