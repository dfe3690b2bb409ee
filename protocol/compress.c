/* compress.c -- kombu's body compressions over zlib, libbz2, liblzma, libzstd, libbrotli.
 *
 * Each decoder streams into one output buffer that grows geometrically but
 * never past max_out + 1 bytes: reaching that size means the body is over the
 * cap (CEL_ELIMIT), so a gzip'd gigabyte of zeros costs max_out bytes, not a
 * gigabyte. Encoders are one-shot with kombu's default levels. Names and
 * content types follow kombu/compression.py. No I/O; see compress.h.
 */
#include "compress.h"

#include <stdlib.h>
#include <string.h>

#include <brotli/decode.h>
#include <brotli/encode.h>
#include <bzlib.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include "protocol.h"

/* kombu's registrations: content type, then its aliases. */
static const struct {
    cel_compress_t m;
    const char *ctype;
    const char *alias[2];
} methods[] = {
    { CEL_COMPRESS_ZLIB, "application/x-gzip", { "gzip", "zlib" } },
    { CEL_COMPRESS_BZ2, "application/x-bz2", { "bzip2", "bzip" } },
    { CEL_COMPRESS_LZMA, "application/x-lzma", { "lzma", "xz" } },
    { CEL_COMPRESS_ZSTD, "application/zstd", { "zstd", "zstandard" } },
    { CEL_COMPRESS_BROTLI, "application/x-brotli", { "brotli", NULL } },
};
#define NMETHODS (sizeof(methods) / sizeof(methods[0]))

int cel_compress_lookup(const char *name, cel_compress_t *out, cel_err_t *err) {
    *out = CEL_COMPRESS_NONE;
    for (size_t i = 0; name && i < NMETHODS; i++) {
        if (strcmp(name, methods[i].ctype) == 0 ||
            (methods[i].alias[0] && strcmp(name, methods[i].alias[0]) == 0) ||
            (methods[i].alias[1] && strcmp(name, methods[i].alias[1]) == 0)) {
            *out = methods[i].m;
            return CEL_OK;
        }
    }
    return cel_err_set(err, CEL_EINVAL, "unsupported compression '%.64s'", name ? name : "");
}

const char *cel_compress_content_type(cel_compress_t m) {
    for (size_t i = 0; i < NMETHODS; i++)
        if (methods[i].m == m) return methods[i].ctype;
    return NULL;
}

/* ---- the output buffer ------------------------------------------------ */

typedef struct outbuf {
    uint8_t *p;
    size_t len, cap;
    size_t hard; /* max_out + 1: holding this many bytes means over the cap */
} outbuf_t;

/* Makes room after len: CEL_OK, CEL_ELIMIT when already at the hard size,
 * CEL_ENOMEM. One byte is kept spare past cap for the closing NUL. */
static int outbuf_grow(outbuf_t *o) {
    if (o->len < o->cap) return CEL_OK;
    if (o->cap >= o->hard) return CEL_ELIMIT;
    size_t want = o->cap ? o->cap * 2 : 64 * 1024;
    if (want > o->hard) want = o->hard;
    uint8_t *p = realloc(o->p, want + 1);
    if (!p) return CEL_ENOMEM;
    o->p = p;
    o->cap = want;
    return CEL_OK;
}

/* Space left to write into. */
static size_t outbuf_room(const outbuf_t *o) { return o->cap - o->len; }

/* ---- decoders: each fills o and returns CEL_OK, CEL_ELIMIT, CEL_EPROTO
 * (with err's message) or CEL_ENOMEM ---- */

static int inflate_all(const uint8_t *in, size_t len, outbuf_t *o, cel_err_t *err) {
    z_stream s;
    memset(&s, 0, sizeof(s));
    /* 15 + 32: zlib (what zlib.compress writes) or gzip framing, detected */
    if (inflateInit2(&s, 15 + 32) != Z_OK) return CEL_ENOMEM;
    s.next_in = (Bytef *)in;
    s.avail_in = (uInt)len;
    int rc = CEL_OK;
    for (;;) {
        if ((rc = outbuf_grow(o))) break;
        s.next_out = o->p + o->len;
        s.avail_out = (uInt)outbuf_room(o);
        int zr = inflate(&s, Z_NO_FLUSH);
        o->len = o->cap - s.avail_out;
        if (zr == Z_STREAM_END) break;
        if (zr == Z_MEM_ERROR) {
            rc = CEL_ENOMEM;
            break;
        }
        if (zr == Z_OK) continue;
        if (zr == Z_BUF_ERROR && s.avail_out == 0) continue;
        rc = cel_err_set(err, CEL_EPROTO, "%s",
                         zr == Z_BUF_ERROR ? "incomplete or truncated stream"
                                           : (s.msg ? s.msg : "invalid data"));
        break;
    }
    inflateEnd(&s);
    return rc;
}

static int bunzip_all(const uint8_t *in, size_t len, outbuf_t *o, cel_err_t *err) {
    bz_stream s;
    size_t done = 0;
    int rc = CEL_OK;
    do { /* one stream per pass: bz2.decompress reads concatenated streams */
        memset(&s, 0, sizeof(s));
        if (BZ2_bzDecompressInit(&s, 0, 0) != BZ_OK) return CEL_ENOMEM;
        s.next_in = (char *)in + done;
        s.avail_in = (unsigned)(len - done);
        for (;;) {
            if ((rc = outbuf_grow(o))) break;
            s.next_out = (char *)o->p + o->len;
            s.avail_out = (unsigned)outbuf_room(o);
            int br = BZ2_bzDecompress(&s);
            o->len = o->cap - s.avail_out;
            if (br == BZ_STREAM_END) break;
            if (br == BZ_MEM_ERROR) {
                rc = CEL_ENOMEM;
                break;
            }
            if (br != BZ_OK) {
                rc = cel_err_set(err, CEL_EPROTO, "invalid bzip2 data");
                break;
            }
            if (s.avail_in == 0 && s.avail_out > 0) {
                rc = cel_err_set(err, CEL_EPROTO, "compressed data ended before the end-of-stream");
                break;
            }
        }
        done = len - s.avail_in;
        BZ2_bzDecompressEnd(&s);
    } while (rc == CEL_OK && done < len);
    return rc;
}

static int unxz_all(const uint8_t *in, size_t len, outbuf_t *o, cel_err_t *err) {
    lzma_stream s = LZMA_STREAM_INIT;
    /* lzma.decompress's FORMAT_AUTO: .xz or legacy .lzma, streams concatenated */
    if (lzma_auto_decoder(&s, CEL_COMPRESS_LZMA_MEMLIMIT, LZMA_CONCATENATED) != LZMA_OK)
        return CEL_ENOMEM;
    s.next_in = in;
    s.avail_in = len;
    int rc = CEL_OK;
    for (;;) {
        if ((rc = outbuf_grow(o))) break;
        s.next_out = o->p + o->len;
        s.avail_out = outbuf_room(o);
        lzma_ret lr = lzma_code(&s, LZMA_FINISH);
        o->len = o->cap - s.avail_out;
        if (lr == LZMA_STREAM_END) break;
        if (lr == LZMA_OK) continue;
        if (lr == LZMA_MEM_ERROR) {
            rc = CEL_ENOMEM;
            break;
        }
        rc = cel_err_set(err, CEL_EPROTO, "%s",
                         lr == LZMA_MEMLIMIT_ERROR ? "xz dictionary over the memory limit"
                         : lr == LZMA_BUF_ERROR ? "compressed data ended before the end-of-stream"
                                                : "invalid xz/lzma data");
        break;
    }
    lzma_end(&s);
    return rc;
}

static int unzstd_all(const uint8_t *in, size_t len, outbuf_t *o, cel_err_t *err) {
    ZSTD_DCtx *d = ZSTD_createDCtx();
    if (!d) return CEL_ENOMEM;
    ZSTD_inBuffer ib = { in, len, 0 };
    int rc = CEL_OK;
    size_t zr = 1;
    for (;;) {
        if ((rc = outbuf_grow(o))) break;
        ZSTD_outBuffer ob = { o->p, o->cap, o->len };
        zr = ZSTD_decompressStream(d, &ob, &ib);
        o->len = ob.pos;
        if (ZSTD_isError(zr)) {
            rc = cel_err_set(err, CEL_EPROTO, "invalid zstd data: %s", ZSTD_getErrorName(zr));
            break;
        }
        if (ib.pos == ib.size && (zr == 0 || ob.pos < ob.size)) break;
    }
    if (rc == CEL_OK && zr != 0)
        rc = cel_err_set(err, CEL_EPROTO, "zstd frame ended before its end");
    ZSTD_freeDCtx(d);
    return rc;
}

static int unbrotli_all(const uint8_t *in, size_t len, outbuf_t *o, cel_err_t *err) {
    BrotliDecoderState *s = BrotliDecoderCreateInstance(NULL, NULL, NULL);
    if (!s) return CEL_ENOMEM;
    const uint8_t *next_in = in;
    size_t avail_in = len;
    int rc = CEL_OK;
    for (;;) {
        if ((rc = outbuf_grow(o))) break;
        uint8_t *next_out = o->p + o->len;
        size_t avail_out = outbuf_room(o);
        BrotliDecoderResult br =
            BrotliDecoderDecompressStream(s, &avail_in, &next_in, &avail_out, &next_out, NULL);
        o->len = o->cap - avail_out;
        if (br == BROTLI_DECODER_RESULT_SUCCESS) break;
        if (br == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT) continue;
        if (br == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT) {
            rc = cel_err_set(err, CEL_EPROTO, "brotli stream ended before its end");
            break;
        }
        rc = cel_err_set(err, CEL_EPROTO, "invalid brotli data: %s",
                         BrotliDecoderErrorString(BrotliDecoderGetErrorCode(s)));
        break;
    }
    BrotliDecoderDestroyInstance(s);
    return rc;
}

int cel_compress_decode(cel_compress_t m, const uint8_t *in, size_t len, size_t max_out,
                        uint8_t **out, size_t *out_len, cel_err_t *err) {
    *out = NULL;
    *out_len = 0;
    if (len > CEL_MSG_MAX_BYTES)
        return cel_err_set(err, CEL_ELIMIT, "compressed body of %zu bytes is over the limit", len);
    if (max_out > CEL_MSG_MAX_BYTES) max_out = CEL_MSG_MAX_BYTES;
    outbuf_t o = { NULL, 0, 0, max_out + 1 };
    int rc;
    switch (m) {
    case CEL_COMPRESS_ZLIB: rc = inflate_all(in, len, &o, err); break;
    case CEL_COMPRESS_BZ2: rc = bunzip_all(in, len, &o, err); break;
    case CEL_COMPRESS_LZMA: rc = unxz_all(in, len, &o, err); break;
    case CEL_COMPRESS_ZSTD: rc = unzstd_all(in, len, &o, err); break;
    case CEL_COMPRESS_BROTLI: rc = unbrotli_all(in, len, &o, err); break;
    default: return cel_err_set(err, CEL_EINVAL, "no compression method to decode with");
    }
    /* a decoder may stop right at the hard size with its stream complete */
    if (rc == CEL_OK && o.len > max_out) rc = CEL_ELIMIT;
    if (rc == CEL_ELIMIT)
        cel_err_set(err, rc, "body decompresses to more than the %zu byte limit", max_out);
    else if (rc == CEL_ENOMEM) cel_err_set(err, rc, "out of memory decompressing a body");
    if (rc != CEL_OK) {
        free(o.p);
        return rc;
    }
    if (!o.p && !(o.p = malloc(1))) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    o.p[o.len] = 0;
    *out = o.p;
    *out_len = o.len;
    return CEL_OK;
}

/* ---- encoders --------------------------------------------------------- */

int cel_compress_encode(cel_compress_t m, const uint8_t *in, size_t len, uint8_t **out,
                        size_t *out_len, cel_err_t *err) {
    *out = NULL;
    *out_len = 0;
    if (len > CEL_MSG_MAX_BYTES)
        return cel_err_set(err, CEL_ELIMIT, "body of %zu bytes is over the limit", len);
    if (!in) in = (const uint8_t *)"";
    size_t cap;
    switch (m) {
    case CEL_COMPRESS_ZLIB: cap = compressBound((uLong)len); break;
    case CEL_COMPRESS_BZ2: cap = len + len / 100 + 601; break;
    case CEL_COMPRESS_LZMA: cap = lzma_stream_buffer_bound(len); break;
    case CEL_COMPRESS_ZSTD: cap = ZSTD_compressBound(len); break;
    case CEL_COMPRESS_BROTLI: cap = BrotliEncoderMaxCompressedSize(len); break;
    default: return cel_err_set(err, CEL_EINVAL, "no compression method to encode with");
    }
    if (cap == 0) cap = len + 1024; /* brotli answers 0 when it cannot bound */
    uint8_t *p = malloc(cap);
    if (!p) return cel_err_set(err, CEL_ENOMEM, "out of memory compressing a body");
    int ok = 0;
    size_t n = cap;
    if (m == CEL_COMPRESS_ZLIB) {
        uLongf zn = (uLongf)cap;
        ok = compress2(p, &zn, in, (uLong)len, Z_DEFAULT_COMPRESSION) == Z_OK;
        n = zn;
    } else if (m == CEL_COMPRESS_BZ2) {
        unsigned bn = (unsigned)cap;
        ok = BZ2_bzBuffToBuffCompress((char *)p, &bn, (char *)in, (unsigned)len, 9, 0, 0) == BZ_OK;
        n = bn;
    } else if (m == CEL_COMPRESS_LZMA) {
        /* the streaming encoder, as Python's lzma.compress: its block header
         * carries no sizes (lzma_easy_buffer_encode's does) */
        lzma_stream s = LZMA_STREAM_INIT;
        if (lzma_easy_encoder(&s, 6, LZMA_CHECK_CRC64) == LZMA_OK) {
            s.next_in = in;
            s.avail_in = len;
            s.next_out = p;
            s.avail_out = cap;
            ok = lzma_code(&s, LZMA_FINISH) == LZMA_STREAM_END;
            n = cap - s.avail_out;
        }
        lzma_end(&s);
    } else if (m == CEL_COMPRESS_ZSTD) {
        n = ZSTD_compress(p, cap, in, len, 3);
        ok = !ZSTD_isError(n);
    } else {
        ok = BrotliEncoderCompress(BROTLI_DEFAULT_QUALITY, BROTLI_DEFAULT_WINDOW,
                                   BROTLI_DEFAULT_MODE, len, in, &n, p) == BROTLI_TRUE;
    }
    if (!ok) {
        free(p);
        return cel_err_set(err, CEL_ENOMEM, "compressing a body of %zu bytes failed", len);
    }
    *out = p;
    *out_len = n;
    return CEL_OK;
}
