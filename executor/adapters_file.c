/* adapters_file.c -- an adapter's checkpoints in one file, rewritten in place (issue 17).
 *
 * <state>/adapters/<id>/checkpoint holds the adapter's current checkpoint and
 * room for the next one:
 *   [0, 512)                 record 0
 *   [4096, 4608)             record 1 (each record in a block of its own)
 *   [8192, 8192 + cap)       slot 0
 *   [8192 + cap, 8192 + 2cap) slot 1
 *   [8192 + 2cap, + klog*ecap) the step log: klog entries of ecap bytes
 * A record (little-endian): "CELCKPT1", version u32 (2; 1 in files written
 * before the log), slot u32, seq u64, cap u64, len u64, name[64] (NUL-padded:
 * "ckpt-<step>-<nonce>"); version 2 then nlog u32, klog u32, ecap u64, lhash
 * u64; then the crc32 of everything before it. The valid record (crc matches,
 * fields in range) with the higher seq is the current checkpoint: the archive
 * in the first len bytes of its slot, then the first nlog entries of the log
 * replayed over it; `name` names the result. A slot or log entry is an
 * archive of files: per file name[32] (NUL-padded), u64 length, u64 XXH3-64 of
 * name, length and data (xxhash: a crc32 of the 2 MB of a small adapter cost
 * 0.4 ms a step, XXH3 0.13), then the data; a name of zeros ends it (meta.json
 * first, so a reader of the metadata alone reads a few kB). lhash chains the
 * log's entry heads (each entry's XXH3-64 of its heads, seeded with the
 * previous entry's; 0 for the first), so a record accepts only the entries
 * written for it.
 *
 * Why a log (issue 17): a step changes every byte of the adapter (weights and
 * both AdamW moments, 3x the weights), so a durable full checkpoint per step
 * flushes 1.8 MB for a small adapter; an entry holds the new meta.json, the
 * step's hyper-parameters and the gradient it applied (1x the weights), from
 * which the step is replayed bit for bit (cel_lora_replay_image). After klog
 * entries the next step writes a full checkpoint again. An entry's files are
 * applied.safetensors, step.json, meta.json, in that order: the gradient's
 * place does not depend on the metadata's length, so an idle executor can
 * write it ahead after the forward_backward (cel_ckpt_file_prewrite, into the
 * entry no record names yet), and the step, when its gradient is that one,
 * writes only the rest. klog is 8
 * (CELERIAC_CKPT_LOG_STEPS), fewer when 8 entries would pass 64 MB (a reader
 * holds the entries it replays), 0 for adapters whose weights pass that.
 *
 * Writing checkpoint n+1 over n, full: its archive goes to the slot the
 * current record does not name, fdatasync; then the new record (seq + 1,
 * nlog 0) over the older record, fdatasync. Logged: the entry goes to log
 * entry nlog (which the current record does not name), fdatasync; then the
 * new record (seq + 1, nlog + 1). Until the second fdatasync returns, the
 * current record and what it names are untouched, so a crash leaves
 * checkpoint n (a torn record fails its crc); after it, n+1 is durable.
 * Overwriting blocks that are already written needs no new name and no
 * journal commit: each fdatasync is a data write and one cache flush. When
 * the file is missing, has no log room (a file from before the log) or the
 * archive outgrows cap, a new file is written whole under a temp name,
 * fsync'ed, renamed over `checkpoint` and the directory fsync'ed.
 * A reader takes the current record, reads its slot and entries, checks every
 * hash, and reads the records again: a writer may overwrite only what no
 * current record names, so an unchanged seq means what it read was whole;
 * otherwise it tries again.
 * Executor processes only; blocking I/O.
 */
#include "adapters_internal.h"

#include "../common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>
#include <zlib.h>

#define MAGIC        "CELCKPT1"
#define RECORD_BYTES 512
#define RECORD_AT(i) ((off_t)(i) * 4096)
#define SLOT0_AT     8192
#define CAP_MAX      (64ULL << 30) /* sanity bound on a record's cap */
#define ENTRY_NAME   32
#define ENTRY_HEAD   (ENTRY_NAME + 16)
#define READ_TRIES   8 /* a reader racing writers gives up after this many changes */
#define V1_CRC_AT    (40 + CKPT_NAME_MAX)
#define V2_CRC_AT    (V1_CRC_AT + 24)
#define LOG_STEPS    8 /* entries after a full checkpoint (CELERIAC_CKPT_LOG_STEPS) */
#define LOG_BYTES    (64ULL << 20) /* at most this much log: fewer entries for big adapters */

typedef struct record {
    uint32_t slot, nlog, klog;
    uint64_t seq, cap, len, ecap, lhash;
    char name[CKPT_NAME_MAX];
} record_t;

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static off_t slot_at(const record_t *r, uint32_t slot) {
    return (off_t)(SLOT0_AT + (uint64_t)slot * r->cap);
}

/* Where log entry i of r's file begins. */
static off_t log_at(const record_t *r, uint32_t i) {
    return (off_t)(SLOT0_AT + 2 * r->cap + (uint64_t)i * r->ecap);
}

/* Log entries a full checkpoint makes room for: CELERIAC_CKPT_LOG_STEPS (0: none,
 * every step a full checkpoint), LOG_STEPS by default. */
static uint32_t log_steps(void) {
    const char *v = getenv("CELERIAC_CKPT_LOG_STEPS");
    if (!v || !*v) return LOG_STEPS;
    long k = strtol(v, NULL, 10);
    return k <= 0 ? 0 : k > CKPT_LOG_MAX ? CKPT_LOG_MAX : (uint32_t)k;
}

static void encode_record(const record_t *r, unsigned char *b) {
    memset(b, 0, RECORD_BYTES);
    memcpy(b, MAGIC, 8);
    put32(b + 8, 2);
    put32(b + 12, r->slot);
    put64(b + 16, r->seq);
    put64(b + 24, r->cap);
    put64(b + 32, r->len);
    memcpy(b + 40, r->name, strnlen(r->name, CKPT_NAME_MAX - 1));
    put32(b + V1_CRC_AT, r->nlog);
    put32(b + V1_CRC_AT + 4, r->klog);
    put64(b + V1_CRC_AT + 8, r->ecap);
    put64(b + V1_CRC_AT + 16, r->lhash);
    put32(b + V2_CRC_AT, (uint32_t)crc32(0L, b, V2_CRC_AT));
}

/* 1 when b holds a whole record of a file of size bytes (version 1: no log). */
static int decode_record(const unsigned char *b, off_t size, record_t *r) {
    uint32_t version = get32(b + 8);
    if (memcmp(b, MAGIC, 8) != 0 || (version != 1 && version != 2)) return 0;
    int crc_at = version == 1 ? V1_CRC_AT : V2_CRC_AT;
    if (get32(b + crc_at) != (uint32_t)crc32(0L, b, (uInt)crc_at)) return 0;
    r->slot = get32(b + 12);
    r->seq = get64(b + 16);
    r->cap = get64(b + 24);
    r->len = get64(b + 32);
    memcpy(r->name, b + 40, CKPT_NAME_MAX);
    r->name[CKPT_NAME_MAX - 1] = '\0';
    r->nlog = r->klog = 0;
    r->ecap = r->lhash = 0;
    if (version == 2) {
        r->nlog = get32(b + V1_CRC_AT);
        r->klog = get32(b + V1_CRC_AT + 4);
        r->ecap = get64(b + V1_CRC_AT + 8);
        r->lhash = get64(b + V1_CRC_AT + 16);
    }
    return r->slot <= 1 && r->seq > 0 && r->cap > 0 && r->cap <= CAP_MAX && r->len <= r->cap &&
           r->klog <= CKPT_LOG_MAX && r->nlog <= r->klog && r->ecap <= CAP_MAX &&
           (r->klog == 0 || r->ecap > 0) &&
           (uint64_t)size >= SLOT0_AT + 2 * r->cap + (uint64_t)r->klog * r->ecap;
}

static int pread_all(int fd, void *buf, size_t len, off_t off) {
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = EIO; /* short file */
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

static int pwrite_all(int fd, const void *buf, size_t len, off_t off) {
    size_t put = 0;
    while (put < len) {
        ssize_t w = pwrite(fd, (const char *)buf + put, len - put, off + (off_t)put);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        put += (size_t)w;
    }
    return 0;
}

/* The current record of the open file. OUT: *r; *damaged (may be NULL): 1
 * when a record block holds a record that fails its checks (a write that did
 * not finish, or the disk), not only zeros. 0, or -1 with no valid record
 * (errno EPROTO) or a failed read. */
static int current_record(int fd, record_t *r, int *damaged) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    unsigned char b[RECORD_BYTES];
    record_t rec[2];
    int ok[2];
    if (damaged) *damaged = 0;
    for (int i = 0; i < 2; i++) {
        int got = st.st_size >= RECORD_AT(i) + RECORD_BYTES &&
                  pread_all(fd, b, sizeof(b), RECORD_AT(i)) == 0;
        ok[i] = got && decode_record(b, st.st_size, &rec[i]);
        if (got && !ok[i] && damaged)
            for (int k = 0; k < RECORD_BYTES && !*damaged; k++) *damaged = b[k] != 0;
    }
    if (!ok[0] && !ok[1]) {
        errno = EPROTO;
        return -1;
    }
    *r = rec[!ok[0] || (ok[1] && rec[1].seq > rec[0].seq)];
    return 0;
}

/* XXH3-64 of an entry's head (name and length) and its parts; 0 when the
 * hash state cannot be had (then no entry verifies: a damaged archive). */
static uint64_t entry_hash(const unsigned char *head, const struct iovec *parts, int n) {
    XXH3_state_t *st = XXH3_createState();
    if (!st || XXH3_64bits_reset(st) != XXH_OK) {
        XXH3_freeState(st);
        return 0;
    }
    XXH3_64bits_update(st, head, ENTRY_NAME + 8);
    for (int i = 0; i < n; i++) XXH3_64bits_update(st, parts[i].iov_base, parts[i].iov_len);
    uint64_t h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return h;
}

/* Parses the archive of len bytes at buf into img (copies); stop_after: the
 * file to end with (NULL: all); chain (may be NULL) takes each file's head.
 * CEL_EAGAIN on a hash or shape mismatch. */
static int parse_archive(const unsigned char *buf, size_t len, const char *stop_after,
                         XXH3_state_t *chain, cel_lora_image_t *img, cel_err_t *err) {
    size_t off = 0;
    for (;;) {
        if (len - off < ENTRY_HEAD) break;
        const unsigned char *h = buf + off;
        if (h[0] == '\0') return CEL_OK; /* the end */
        char name[ENTRY_NAME + 1];
        memcpy(name, h, ENTRY_NAME);
        name[ENTRY_NAME] = '\0';
        uint64_t n = get64(h + ENTRY_NAME);
        if (n > len - off - ENTRY_HEAD) break;
        struct iovec data = { (void *)(h + ENTRY_HEAD), (size_t)n };
        if (entry_hash(h, &data, 1) != get64(h + ENTRY_NAME + 8)) break;
        if (chain) XXH3_64bits_update(chain, h, ENTRY_HEAD);
        unsigned char *copy = malloc(n ? n : 1);
        if (!copy) return cel_err_set(err, CEL_ENOMEM, "out of memory for %llu bytes",
                                      (unsigned long long)n);
        memcpy(copy, h + ENTRY_HEAD, n);
        int rc = cel_lora_image_add(img, name, copy, n, err);
        if (rc != CEL_OK) return rc;
        off += ENTRY_HEAD + n;
        if (stop_after && strcmp(name, stop_after) == 0) return CEL_OK;
    }
    return cel_err_set(err, CEL_EAGAIN, "checkpoint archive damaged or being rewritten");
}

/* An archive to write: iovecs over the entry heads and img's files (their
 * data, or their parts), copying none of them. */
typedef struct archive {
    struct iovec *iov;
    int n;
    size_t len;
    unsigned char *heads; /* ENTRY_HEAD bytes per file, plus the end */
} archive_t;

static void archive_free(archive_t *ar) {
    free(ar->iov);
    free(ar->heads);
}

/* img as an archive (per file its entry head, the hash of name, length and
 * bytes included, then the file; a head of zeros ends it). */
static int archive_of(const cel_lora_image_t *img, archive_t *ar, cel_err_t *err) {
    int n = 1;
    for (int i = 0; i < img->n; i++) n += 1 + (img->f[i].iov ? img->f[i].niov : 1);
    ar->iov = malloc((size_t)n * sizeof(*ar->iov));
    ar->heads = calloc((size_t)img->n + 1, ENTRY_HEAD);
    ar->n = 0;
    ar->len = 0;
    if (!ar->iov || !ar->heads) {
        archive_free(ar);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    for (int i = 0; i < img->n; i++) {
        unsigned char *h = ar->heads + (size_t)i * ENTRY_HEAD;
        memcpy(h, img->f[i].name, strnlen(img->f[i].name, ENTRY_NAME - 1));
        put64(h + ENTRY_NAME, img->f[i].len);
        ar->iov[ar->n++] = (struct iovec){ h, ENTRY_HEAD };
        struct iovec *parts = ar->iov + ar->n;
        int np = img->f[i].iov ? img->f[i].niov : 1;
        if (img->f[i].iov) memcpy(parts, img->f[i].iov, (size_t)np * sizeof(*parts));
        else parts[0] = (struct iovec){ img->f[i].data, img->f[i].len };
        size_t got = 0;
        for (int k = 0; k < np; k++) got += parts[k].iov_len;
        if (got != img->f[i].len) {
            archive_free(ar);
            return cel_err_set(err, CEL_EINVAL, "checkpoint image: %s parts do not add up",
                               img->f[i].name);
        }
        put64(h + ENTRY_NAME + 8, entry_hash(h, parts, np));
        ar->n += np;
        ar->len += ENTRY_HEAD + got;
    }
    ar->iov[ar->n++] = (struct iovec){ ar->heads + (size_t)img->n * ENTRY_HEAD, ENTRY_HEAD };
    ar->len += ENTRY_HEAD;
    return CEL_OK;
}

/* Writes the archive at off (pwritev, IOV_MAX at a time; ar->iov is used up). */
static int write_archive(int fd, archive_t *ar, off_t off) {
    struct iovec *iov = ar->iov;
    int n = ar->n;
    while (n > 0) {
        if (iov->iov_len == 0) {
            iov++, n--;
            continue;
        }
        ssize_t w = pwritev(fd, iov, n < IOV_MAX ? n : IOV_MAX, off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO;
            return -1;
        }
        off += w;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++, n--;
        }
        if (n > 0 && w > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* Reads the file want of the archive at `at` (cap bytes at most) into img,
 * stepping over the files before it by their heads (a log entry's meta.json
 * comes after its gradient). CEL_EAGAIN when it is not there whole (damaged,
 * or being rewritten). */
static int read_named(int fd, off_t at, uint64_t cap, const char *want, cel_lora_image_t *img,
                      cel_err_t *err) {
    unsigned char h[ENTRY_HEAD];
    for (uint64_t off = 0; off + ENTRY_HEAD <= cap;) {
        if (pread_all(fd, h, ENTRY_HEAD, at + (off_t)off) != 0)
            return cel_err_set(err, CEL_EIO, "checkpoint: %s", strerror(errno));
        uint64_t n = get64(h + ENTRY_NAME);
        if (h[0] == '\0' || n > cap - off - ENTRY_HEAD) break;
        if (strncmp((const char *)h, want, ENTRY_NAME) != 0) {
            off += ENTRY_HEAD + n;
            continue;
        }
        unsigned char *data = malloc(n ? n : 1);
        if (!data)
            return cel_err_set(err, CEL_ENOMEM, "out of memory for %llu bytes",
                               (unsigned long long)n);
        struct iovec iv = { data, (size_t)n };
        if (pread_all(fd, data, (size_t)n, at + (off_t)(off + ENTRY_HEAD)) != 0 ||
            entry_hash(h, &iv, 1) != get64(h + ENTRY_NAME + 8)) {
            free(data);
            break;
        }
        return cel_lora_image_add(img, want, data, (size_t)n, err);
    }
    return cel_err_set(err, CEL_EAGAIN, "checkpoint archive damaged or being rewritten");
}

void cel_ckpt_log_free(cel_ckpt_log_t *log) {
    for (int i = 0; i < log->n; i++) cel_lora_image_free(&log->e[i]);
    log->n = 0;
}

/* Reads r's log (its nlog entries) from fd into log, checking the chain
 * against r's lhash. CEL_EAGAIN on a mismatch (damaged, or being rewritten). */
static int read_log(int fd, const record_t *r, cel_ckpt_log_t *log, cel_err_t *err) {
    unsigned char *buf = malloc((size_t)r->ecap); /* one entry at a time */
    XXH3_state_t *chain = XXH3_createState();
    int rc = CEL_OK;
    if (!buf || !chain) rc = cel_err_set(err, CEL_ENOMEM, "out of memory for the step log");
    uint64_t h = 0;
    for (uint32_t i = 0; rc == CEL_OK && i < r->nlog; i++) {
        if (pread_all(fd, buf, (size_t)r->ecap, log_at(r, i)) != 0) {
            rc = cel_err_set(err, CEL_EIO, "step log: %s", strerror(errno));
            break;
        }
        if (XXH3_64bits_reset_withSeed(chain, h) != XXH_OK) {
            rc = cel_err_set(err, CEL_ENOMEM, "out of memory for the step log");
            break;
        }
        log->n = (int)i + 1;
        rc = parse_archive(buf, (size_t)r->ecap, NULL, chain, &log->e[i], err);
        h = XXH3_64bits_digest(chain);
    }
    if (rc == CEL_OK && h != r->lhash)
        rc = cel_err_set(err, CEL_EAGAIN, "step log does not match its record");
    XXH3_freeState(chain);
    free(buf);
    if (rc != CEL_OK) cel_ckpt_log_free(log);
    return rc;
}

/* Reads r's slot archive (with stop_after: enough of it for that file, its
 * first: a prefix, and more if the file is longer) into img; *buf is the
 * caller's to free. CEL_EAGAIN on a mismatch (damaged, or being rewritten). */
static int read_slot(int fd, const record_t *r, const char *stop_after, unsigned char **buf,
                     cel_lora_image_t *img, cel_err_t *err) {
    size_t len = (size_t)r->len, want_len = stop_after && len > 65536 ? 65536 : len;
    free(*buf);
    if (!(*buf = malloc(len ? len : 1)))
        return cel_err_set(err, CEL_ENOMEM, "out of memory for %zu bytes", len);
    if (pread_all(fd, *buf, want_len, slot_at(r, r->slot)) != 0)
        return cel_err_set(err, CEL_EIO, "checkpoint: %s", strerror(errno));
    cel_lora_image_free(img);
    int rc = parse_archive(*buf, want_len, stop_after, NULL, img, err);
    if (rc == CEL_EAGAIN && want_len < len) { /* a first file longer than the prefix */
        if (pread_all(fd, *buf, len, slot_at(r, r->slot)) != 0)
            return cel_err_set(err, CEL_EIO, "checkpoint: %s", strerror(errno));
        cel_lora_image_free(img);
        rc = parse_archive(*buf, len, stop_after, NULL, img, err);
    }
    return rc;
}

int cel_ckpt_file_read(const char *dir, const char *want, const char *stop_after, char *name,
                       cel_lora_image_t *img, cel_ckpt_log_t *log, long long *bytes,
                       cel_err_t *err) {
    char path[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/" CKPT_FILE, dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT) return cel_err_set(err, CEL_ENOTFOUND, "%s: not found", path);
        return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    }
    if (log) log->n = 0;
    int rc = CEL_OK;
    unsigned char *buf = NULL;
    for (int attempt = 0; attempt < READ_TRIES; attempt++) {
        record_t r, again;
        int damaged = 0;
        if (current_record(fd, &r, img && attempt == 0 ? &damaged : NULL) != 0) {
            rc = errno == EPROTO ? cel_err_set(err, CEL_EPROTO, "%s: no valid record", path)
                                 : cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
            break;
        }
        if (damaged) /* a checkpoint lost, if that record was the newer one (not known) */
            cel_warn("%s: one of its two records is damaged (a write that did not finish, or "
                     "the disk); reading the other one, %s; the adapter's next step rewrites it",
                     path, r.name);
        if (name) snprintf(name, CKPT_NAME_MAX, "%s", r.name);
        if (bytes) *bytes = (long long)r.len;
        if (want && strcmp(want, r.name) != 0) {
            rc = cel_err_set(err, CEL_ESTATE, "%s: names %s, not %s", path, r.name, want);
            break;
        }
        if (!img) break;
        if (!stop_after && r.nlog > 0 && !log) {
            rc = cel_err_set(err, CEL_ESTATE, "%s: %s has logged steps to replay", path, r.name);
            break;
        }
        if (stop_after && r.nlog > 0) { /* the metadata alone, after the last logged step */
            cel_lora_image_free(img);
            rc = read_named(fd, log_at(&r, r.nlog - 1), r.ecap, stop_after, img, err);
        } else {
            rc = read_slot(fd, &r, stop_after, &buf, img, err);
            if (rc == CEL_OK && !stop_after && r.nlog > 0) {
                cel_ckpt_log_free(log);
                rc = read_log(fd, &r, log, err);
            }
        }
        if (rc != CEL_OK && rc != CEL_EAGAIN) break;
        if (current_record(fd, &again, NULL) == 0 && again.seq == r.seq) {
            if (rc == CEL_EAGAIN) /* not a writer's doing: the slot or log is damaged */
                rc = cel_err_set(err, CEL_EPROTO, "%s: checkpoint %s is damaged", path, r.name);
            break;
        }
        rc = cel_err_set(err, CEL_EAGAIN, "%s: rewritten while read", path);
        if (want) { /* the checkpoint asked for is gone */
            rc = cel_err_set(err, CEL_ESTATE, "%s: names %s, not %s", path, again.name, want);
            break;
        }
    }
    free(buf);
    close(fd);
    if (rc != CEL_OK && img) cel_lora_image_free(img);
    if (rc != CEL_OK && log) cel_ckpt_log_free(log);
    return rc;
}

/* Writes a fresh file holding one checkpoint (record seq, slot 0) and renames
 * it over dir/checkpoint: temp, fsync, rename, fsync of dir. */
static int write_whole(const char *dir, const char *path, record_t *r, archive_t *ar,
                       cel_err_t *err) {
    char tmp[CEL_ADAPTERS_PATH_MAX + 512];
    snprintf(tmp, sizeof(tmp), "%s/" CKPT_FILE ".tmp.%s%s%ld", dir, cel_adapters_tmp_tag,
             cel_adapters_tmp_tag[0] ? "." : "", (long)getpid());
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return cel_err_set(err, CEL_EIO, "%s: %s", tmp, strerror(errno));
    unsigned char rb[RECORD_BYTES];
    encode_record(r, rb);
    /* the other slot and the log are left a hole: their first writes allocate them */
    int bad = ftruncate(fd, (off_t)(SLOT0_AT + 2 * r->cap + (uint64_t)r->klog * r->ecap)) != 0 ||
              pwrite_all(fd, rb, sizeof(rb), RECORD_AT(r->seq & 1)) != 0 ||
              write_archive(fd, ar, slot_at(r, r->slot)) != 0 || fsync(fd) != 0;
    int e = errno;
    if (close(fd) != 0 && !bad) bad = 1, e = errno;
    if (!bad && rename(tmp, path) != 0) bad = 1, e = errno;
    if (bad) {
        unlink(tmp);
        return cel_err_set(err, CEL_EIO, "%s: %s", tmp, strerror(e));
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        e = errno;
        if (dfd >= 0) close(dfd);
        return cel_err_set(err, CEL_EIO, "%s: fsync: %s", dir, strerror(e));
    }
    close(dfd);
    return CEL_OK;
}

/* The step log a new file for img gets: up to k entries (OUT: *ecap each, its
 * weights' size, as the applied gradient has their shape, and 64 kB for
 * meta.json, step.json and the heads, rounded up to a block), no more than
 * LOG_BYTES in all (a reader holds the entries it replays). 0: none. */
static uint32_t log_room(const cel_lora_image_t *img, uint32_t k, uint64_t *ecap) {
    *ecap = 0;
    for (int i = 0; i < img->n; i++)
        if (strcmp(img->f[i].name, "adapter_model.safetensors") == 0)
            *ecap = ((uint64_t)img->f[i].len + 65536 + 4095) & ~(uint64_t)4095;
    while (k > 0 && (!*ecap || k * *ecap > LOG_BYTES)) k--;
    if (!k) *ecap = 0;
    return k;
}

/* The switch to next once what it names is durable: the `current` check (cur
 * must still be the current record: no other worker took the adapter over),
 * next over the older record, fdatasync. */
static int switch_record(int fd, const char *path, const record_t *cur, const record_t *next,
                         cel_err_t *err) {
    record_t again;
    if (current_record(fd, &again, NULL) != 0 || again.seq != cur->seq)
        return cel_err_set(err, CEL_ESTATE,
                           "adapter changed on disk (%s): another worker took it over", path);
    unsigned char rb[RECORD_BYTES];
    encode_record(next, rb);
    if (pwrite_all(fd, rb, sizeof(rb), RECORD_AT(next->seq & 1)) != 0 || fdatasync(fd) != 0)
        return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    return CEL_OK;
}

/* Drops the first skip bytes of ar's iovecs (what is already in place). */
static void archive_skip(archive_t *ar, size_t skip) {
    while (ar->n > 0 && skip >= ar->iov->iov_len) {
        skip -= ar->iov->iov_len;
        ar->iov++, ar->n--;
    }
    if (ar->n > 0) {
        ar->iov->iov_base = (char *)ar->iov->iov_base + skip;
        ar->iov->iov_len -= skip;
    }
}

/* Appends entry as log entry cur->nlog of the open file: the entry (less its
 * first file when pre wrote that very file there), fdatasync, the `current`
 * check, the new record (next), fdatasync. */
static int append_entry(int fd, const char *path, const record_t *cur, record_t *next,
                        const cel_lora_image_t *entry, const cel_ckpt_pre_t *pre,
                        cel_ckpt_times_t *t, cel_err_t *err) {
    archive_t ea;
    int rc = archive_of(entry, &ea, err);
    if (rc != CEL_OK) return rc;
    if (ea.len > cur->ecap) {
        archive_free(&ea);
        return CEL_ELIMIT; /* (the caller writes a full checkpoint instead) */
    }
    next->nlog = cur->nlog + 1;
    next->lhash =
        XXH3_64bits_withSeed(ea.heads, (size_t)entry->n * ENTRY_HEAD, cur->nlog ? cur->lhash : 0);
    size_t skip = 0;
    if (pre && pre->valid && pre->seq == cur->seq && pre->nlog == cur->nlog && entry->n > 0 &&
        entry->f[0].len == pre->len && get64(ea.heads + ENTRY_NAME + 8) == pre->hash)
        skip = ENTRY_HEAD + (size_t)pre->len;
    struct iovec *iov0 = ea.iov; /* (archive_skip moves ea.iov) */
    archive_skip(&ea, skip);
    double t0 = cel_adapters_now_ms();
    rc = write_archive(fd, &ea, log_at(cur, cur->nlog) + (off_t)skip);
    ea.iov = iov0;
    if (rc != 0 || fdatasync(fd) != 0) {
        rc = cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    double t1 = cel_adapters_now_ms();
    if ((rc = switch_record(fd, path, cur, next, err)) != CEL_OK) goto out;
    if (t) t->sync = t1 - t0, t->sw = cel_adapters_now_ms() - t1, t->logged = 1 + (skip > 0);
out:
    archive_free(&ea);
    return rc;
}

int cel_ckpt_file_prewrite(const char *dir, const char *expect, const cel_lora_image_t *part,
                           cel_ckpt_pre_t *pre, cel_err_t *err) {
    char path[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/" CKPT_FILE, dir);
    pre->valid = 0;
    if (part->n < 1 || log_steps() == 0) return CEL_ELIMIT;
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    record_t cur;
    archive_t ar = { 0 };
    int rc = CEL_OK;
    if (current_record(fd, &cur, NULL) != 0 || strcmp(cur.name, expect) != 0) {
        rc = cel_err_set(err, CEL_ESTATE, "%s: no longer %s", path, expect);
        goto out;
    }
    if (cur.nlog >= cur.klog) {
        rc = CEL_ELIMIT; /* the next step is a full checkpoint */
        goto out;
    }
    if ((rc = archive_of(part, &ar, err)) != CEL_OK) goto out;
    size_t len = ENTRY_HEAD + part->f[0].len;
    if (len > cur.ecap) {
        rc = CEL_ELIMIT;
        goto out;
    }
    uint64_t hash = get64(ar.heads + ENTRY_NAME + 8);
    off_t at = log_at(&cur, cur.nlog);
    ar.n--; /* the first file alone, without the end: the rest is the step's */
    if (write_archive(fd, &ar, at) != 0) {
        rc = cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    sync_file_range(fd, at, (off_t)len, SYNC_FILE_RANGE_WRITE); /* a hint: the flush waits */
    *pre = (cel_ckpt_pre_t){
        .valid = 1, .seq = cur.seq, .nlog = cur.nlog, .hash = hash, .len = part->f[0].len
    };
out:
    close(fd);
    if (ar.iov || ar.heads) archive_free(&ar);
    return rc;
}

int cel_ckpt_file_write(const char *dir, const char *expect, const char *name,
                        const cel_lora_image_t *img, const cel_lora_image_t *entry,
                        const cel_ckpt_pre_t *pre, cel_ckpt_times_t *t, cel_err_t *err) {
    char path[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/" CKPT_FILE, dir);
    if (t) t->whole = t->logged = 0, t->sync = t->sw = 0;
    record_t cur = { 0 }, next = { 0 };
    int rc = CEL_OK;
    archive_t ar = { 0 };
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW), have = fd >= 0;
    if (fd < 0 && errno != ENOENT) {
        rc = cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (have && current_record(fd, &cur, NULL) != 0) {
        /* no valid record: a file no reader can use; replace it whole */
        close(fd);
        fd = -1;
        have = 0;
    }
    if (have && strcmp(cur.name, expect) != 0) {
        rc = cel_err_set(err, CEL_ESTATE,
                         "adapter changed on disk (%s, this copy is of %s): another worker "
                         "took it over",
                         cur.name, expect[0] ? expect : "none");
        goto out;
    }
    next = cur;
    next.seq = cur.seq + 1;
    snprintf(next.name, sizeof(next.name), "%s", name);
    uint32_t k = log_steps();
    if (have && entry && k > 0 && cur.nlog < cur.klog) {
        rc = append_entry(fd, path, &cur, &next, entry, pre, t, err);
        if (rc != CEL_ELIMIT) goto out; /* done, or failed; an entry too big: a full one */
        rc = CEL_OK;
    }
    if (!img) {
        rc = CEL_ELIMIT; /* the caller builds the full image and calls again */
        goto out;
    }
    if ((rc = archive_of(img, &ar, err)) != CEL_OK) goto out;
    size_t len = ar.len;
    next.len = len;
    next.nlog = 0;
    next.lhash = 0;
    double t0 = cel_adapters_now_ms();
    uint64_t ecap;
    if (!have || len > cur.cap || (entry && cur.klog == 0 && log_room(img, k, &ecap) > 0)) {
        /* a new file: room for growth (the recent-steps history and the like) and,
         * unless it is off, for the step log */
        uint64_t cap = ((uint64_t)len + len / 4 + 65536 + 4095) & ~(uint64_t)4095;
        next.cap = cap;
        next.slot = 0;
        next.klog = log_room(img, k, &next.ecap);
        rc = write_whole(dir, path, &next, &ar, err);
        if (t) t->whole = 1, t->sync = cel_adapters_now_ms() - t0;
        goto out;
    }
    next.slot = 1 - cur.slot;
    if (write_archive(fd, &ar, slot_at(&next, next.slot)) != 0 || fdatasync(fd) != 0) {
        rc = cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    double t1 = cel_adapters_now_ms();
    if ((rc = switch_record(fd, path, &cur, &next, err)) != CEL_OK) goto out;
    if (t) t->sync = t1 - t0, t->sw = cel_adapters_now_ms() - t1;
out:
    if (fd >= 0) close(fd);
    if (ar.iov || ar.heads) archive_free(&ar);
    return rc;
}
