/* adapters.c -- the executor's LoRA adapter store: memory copies and checkpoints.
 *
 * An adapter's checkpoints live in <state>/adapters/<id>/checkpoint, one file
 * rewritten in place (adapters_file.c: two records, two slots; a crash leaves
 * the old or the new checkpoint whole). A checkpoint is named
 * "ckpt-<step>-<nonce>" (a fresh nonce each time: a name is never reused) and
 * holds meta.json (owner, step, the recent steps' results for redelivery),
 * adapter_model.safetensors, adapter_config.json, optimizer.safetensors and, on
 * a hand-back, gradients.safetensors: the bytes cel_lora_save would write.
 * Only the process allowed to write the adapter (the holder of its lock, see
 * adapters_hold.c; or its creator) writes it, and checks before writing and
 * again just before the switch that the file still names the checkpoint it
 * started from, so a writer that lost the adapter never overwrites a newer one.
 * A reader trusts only the current record, whose name it checks before use.
 * A store from before the file (<id>/current naming a ckpt-* directory of those
 * files) is read as it is; the adapter's next checkpoint goes into the file,
 * then `current` and the directories are removed (prune: in the background,
 * with temp names (*.tmp.<node>.<pid>) older than STALE_TMP_S: a writer killed
 * midway; after a copy's first checkpoint and every full one, not after logged
 * steps, which leave nothing to remove). A logged step builds only its log
 * entry; the full image only when the log has no room. Deleting renames the
 * adapter's directory out of the way first, so a half-removed adapter is never
 * seen as one.
 * Executor processes only; blocking I/O; one thread.
 */
#include "adapters_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../model/safetensors.h"

#define LOAD_RETRIES      3   /* reloads when another executor switched checkpoints meanwhile */
#define STALE_TMP_S       600 /* a temp name this old belongs to a dead writer */
#define META_FORMAT       "celeriac-adapter-1"
#define IMPORT_CONFIG_MAX (1 << 20)  /* bytes of an imported adapter_config.json */
#define IMPORT_HEADER_MAX (16 << 20) /* a safetensors file's header and metadata, past its data */
#define IMPORT_FILE_MAX   (64ULL << 30) /* any imported file, when the model's sizes are unknown */

/* PEFT's module names in CEL_LORA_* bit order. */
static const char *const mod_names[] = { "q_proj",    "k_proj",  "v_proj",   "o_proj",
                                         "gate_proj", "up_proj", "down_proj" };

/* ---- small file helpers ---- */

/* Fills buf with n random bytes written as 2n lowercase hex digits + NUL. */
static int random_hex(char *buf, size_t n, cel_err_t *err) {
    unsigned char raw[32];
    if (n > sizeof(raw)) return cel_err_set(err, CEL_EINVAL, "random_hex: too long");
    size_t got = 0; /* (the urandom source: one syscall, no file to open per checkpoint) */
    while (got < n) {
        ssize_t r = getrandom(raw + got, n - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return cel_err_set(err, CEL_EIO, "getrandom: %s", strerror(errno));
        got += (size_t)r;
    }
    for (size_t i = 0; i < n; i++) snprintf(buf + 2 * i, 3, "%02x", raw[i]);
    return CEL_OK;
}

/* fsync of what path names, opened with flags (O_RDONLY | O_DIRECTORY for a directory's
 * names). Returns fsync's 0 or -1 with errno set, as open's -1 when it cannot open. */
static int fsync_path(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* Creates path (truncating a leftover of the same name) with len bytes of data; not synced. */
static int write_plain(const char *path, const char *data, size_t len, cel_err_t *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            int e = errno;
            close(fd);
            return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(e));
        }
        off += (size_t)w;
    }
    if (close(fd) != 0) return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    return CEL_OK;
}

char cel_adapters_tmp_tag[300] = "";

int cel_adapters_write_file(const char *dir, const char *name, const char *data, size_t len,
                            int nosync, cel_err_t *err) {
    char tmp[CEL_ADAPTERS_PATH_MAX + 512], path[CEL_ADAPTERS_PATH_MAX + 128];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s/%s.tmp.%s%s%ld", dir, name, cel_adapters_tmp_tag,
             cel_adapters_tmp_tag[0] ? "." : "", (long)getpid());
    int rc = write_plain(tmp, data, len, err);
    if (rc != CEL_OK) {
        unlink(tmp);
        return rc;
    }
    /* a fresh descriptor is enough: fsync flushes the file, not what one fd wrote */
    if (!nosync && fsync_path(tmp, O_RDONLY) != 0) {
        int e = errno;
        unlink(tmp);
        return cel_err_set(err, CEL_EIO, "%s: fsync: %s", tmp, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(e));
    }
    if (!nosync && fsync_path(dir, O_RDONLY | O_DIRECTORY) != 0)
        return cel_err_set(err, CEL_EIO, "%s: fsync: %s", dir, strerror(errno));
    return CEL_OK;
}

int cel_adapters_read_file(const char *path, size_t max, char **buf, size_t *len, cel_err_t *err) {
    *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return cel_err_set(err, CEL_ENOTFOUND, "%s: not found", path);
        return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    }
    char *b = malloc(max + 1);
    size_t n = 0;
    int rc = b ? CEL_OK : cel_err_set(err, CEL_ENOMEM, "out of memory");
    while (rc == CEL_OK) {
        ssize_t r = read(fd, b + n, max + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rc = cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
        if (r <= 0) break;
        n += (size_t)r;
        if (n > max) rc = cel_err_set(err, CEL_ELIMIT, "%s: larger than %zu bytes", path, max);
    }
    close(fd);
    if (rc != CEL_OK) {
        free(b);
        return rc;
    }
    b[n] = '\0';
    *buf = b;
    if (len) *len = n;
    return CEL_OK;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)ftw;
    if (flag == FTW_DP) rmdir(path);
    else unlink(path);
    return 0;
}

/* rm -rf path, not following symlinks. */
static void rm_tree(const char *path) { nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

/* ---- removal of replaced checkpoints off the step's path (issue 17) ----
 * Unlinking a checkpoint's files costs a step as much as writing them on a
 * busy disk, and nothing waits on it: prune picks the names under the
 * adapter's lock (checkpoint directories of a store from before the checkpoint
 * file, once the file supersedes them) and a thread
 * of its own removes them after the step's result is on its way. Removals a
 * process dies with are left to the next prune. The thread blocks every signal
 * (the executor's stay with its main thread). */
#define REMOVER_QUEUE 64

static struct {
    pthread_mutex_t mu;
    pthread_cond_t work; /* queued, or stop */
    pthread_cond_t idle; /* queue empty, nothing being removed */
    char *q[REMOVER_QUEUE];
    int n, busy, started;
    pthread_t t;
} remover = { .mu = PTHREAD_MUTEX_INITIALIZER,
              .work = PTHREAD_COND_INITIALIZER,
              .idle = PTHREAD_COND_INITIALIZER };

static void *remover_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&remover.mu);
    for (;;) {
        while (remover.n == 0) pthread_cond_wait(&remover.work, &remover.mu);
        char *p = remover.q[0];
        remover.n--;
        memmove(remover.q, remover.q + 1, (size_t)remover.n * sizeof(remover.q[0]));
        remover.busy = 1;
        pthread_mutex_unlock(&remover.mu);
        rm_tree(p);
        free(p);
        pthread_mutex_lock(&remover.mu);
        remover.busy = 0;
        if (remover.n == 0) pthread_cond_broadcast(&remover.idle);
    }
    return NULL;
}

/* fork: the child has no remover thread; it starts its own if it needs one
 * (what was queued is the parent's to remove). */
static void remover_prepare(void) { pthread_mutex_lock(&remover.mu); }
static void remover_parent(void) { pthread_mutex_unlock(&remover.mu); }
static void remover_child(void) {
    for (int i = 0; i < remover.n; i++) free(remover.q[i]);
    remover.n = remover.busy = remover.started = 0;
    pthread_mutex_unlock(&remover.mu); /* (locked by remover_prepare) */
    /* the condition variables may record the parent's thread as a waiter */
    pthread_mutex_init(&remover.mu, NULL);
    pthread_cond_init(&remover.work, NULL);
    pthread_cond_init(&remover.idle, NULL);
}

/* Removes the tree at path in the background; inline when the thread cannot
 * start or its queue is full. */
static void remove_later(const char *path) {
    char *p = strdup(path);
    pthread_mutex_lock(&remover.mu);
    static int atfork;
    if (!atfork) atfork = pthread_atfork(remover_prepare, remover_parent, remover_child) == 0;
    if (p && !remover.started && atfork) {
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        remover.started = pthread_create(&remover.t, NULL, remover_main, NULL) == 0;
        if (remover.started) pthread_detach(remover.t);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (p && remover.started && remover.n < REMOVER_QUEUE) {
        remover.q[remover.n++] = p;
        p = NULL;
        pthread_cond_signal(&remover.work);
        pthread_mutex_unlock(&remover.mu);
        return;
    }
    pthread_mutex_unlock(&remover.mu);
    rm_tree(path);
    free(p);
}

void cel_adapters_settle(void) {
    pthread_mutex_lock(&remover.mu);
    while (remover.n > 0 || remover.busy) pthread_cond_wait(&remover.idle, &remover.mu);
    pthread_mutex_unlock(&remover.mu);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int mkdir_if_missing(const char *p, cel_err_t *err) {
    if (mkdir(p, 0700) == 0 || (errno == EEXIST && is_dir(p))) return CEL_OK;
    return cel_err_set(err, CEL_EIO, "cannot create %s: %s", p, strerror(errno));
}

/* 1 when path (absolute, normalized) is root or below it. */
static int path_inside(const char *path, const char *root) {
    size_t n = strlen(root);
    if (n == 1 && root[0] == '/') return path[0] == '/';
    return strncmp(path, root, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* 1 when name is "ckpt-<digits>-<hex>" (what a checkpoint may be called). */
static int valid_ckpt_name(const char *name) {
    if (strncmp(name, "ckpt-", 5) != 0) return 0;
    const char *p = name + 5;
    size_t d = strspn(p, "0123456789");
    if (d == 0 || d > 10 || p[d] != '-') return 0;
    p += d + 1;
    size_t h = strspn(p, "0123456789abcdef");
    return h >= 8 && h <= 32 && p[h] == '\0';
}

static void iso_now(char *buf, size_t len) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *targets_json(unsigned targets) {
    json_t *a = json_array();
    for (int i = 0; a && i < 7; i++)
        if (targets & (1u << i)) json_array_append_new(a, json_string(mod_names[i]));
    return a;
}

static json_t *alpha_json(float alpha) {
    if (alpha == (float)(long long)alpha && alpha < 1e9f) return json_integer((json_int_t)alpha);
    return json_real(alpha);
}

/* ---- the store ---- */

int cel_adapters_valid_id(const char *id) {
    if (!id || strncmp(id, "lora_", 5) != 0) return 0;
    for (int i = 5; i < CEL_ADAPTERS_ID_LEN; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f'))) return 0;
    return id[CEL_ADAPTERS_ID_LEN] == '\0';
}

int cel_adapters_open(cel_model_t *m, const char *state_dir, const char *base_model,
                      const char *const *roots, int n_roots, cel_adapters_t **out, cel_err_t *err) {
    *out = NULL;
    if (n_roots < 0 || n_roots > CEL_ADAPTERS_MAX_ROOTS)
        return cel_err_set(err, CEL_ELIMIT, "at most %d import roots", CEL_ADAPTERS_MAX_ROOTS);
    cel_adapters_t *s = calloc(1, sizeof(*s));
    if (!s) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    s->m = m;
    char real[PATH_MAX];
    int rc = mkdir_if_missing(state_dir, err);
    if (rc == CEL_OK && !realpath(state_dir, real))
        rc = cel_err_set(err, CEL_EIO, "state directory %s: %s", state_dir, strerror(errno));
    if (rc == CEL_OK && strlen(real) >= sizeof(s->state))
        rc = cel_err_set(err, CEL_ELIMIT, "state directory path longer than %d bytes",
                         STATE_MAX - 1);
    if (rc == CEL_OK) memcpy(s->state, real, strlen(real) + 1);
    if (rc == CEL_OK) {
        snprintf(s->adir, sizeof(s->adir), "%s/adapters", s->state);
        snprintf(s->edir, sizeof(s->edir), "%s/exports", s->state);
        snprintf(s->base, sizeof(s->base), "%s", base_model ? base_model : "");
        rc = mkdir_if_missing(s->adir, err);
    }
    if (rc == CEL_OK) rc = mkdir_if_missing(s->edir, err);
    for (int i = 0; rc == CEL_OK && i < n_roots; i++) {
        if (!realpath(roots[i], s->roots[i]) || !is_dir(s->roots[i]))
            rc = cel_err_set(err, CEL_EINVAL, "import root %s: %s", roots[i],
                             errno ? strerror(errno) : "not a directory");
        s->n_roots++;
    }
    if (rc != CEL_OK) {
        free(s);
        return rc;
    }
    *out = s;
    return CEL_OK;
}

static void adapter_free(cel_adapter_t *a) {
    if (!a) return;
    if (a->hold_fd >= 0) close(a->hold_fd); /* drops the lock: the gradients are gone */
    if (a->marker_fd >= 0) close(a->marker_fd);
    cel_lora_free(a->lora);
    free(a->owner);
    json_decref(a->recent);
    free(a);
}

void cel_adapters_free(cel_adapters_t *s) {
    if (!s) return;
    cel_adapters_settle();
    for (int i = 0; i < s->n_loaded; i++) adapter_free(s->loaded[i]);
    free(s);
}

const char *cel_adapters_state_dir(const cel_adapters_t *s) { return s->state; }

int cel_adapters_loaded(const cel_adapters_t *s) { return s->n_loaded; }

long cel_adapters_evictions(const cel_adapters_t *s) { return s->evictions; }

static int find_loaded(const cel_adapters_t *s, const char *id) {
    for (int i = 0; i < s->n_loaded; i++)
        if (strcmp(s->loaded[i]->id, id) == 0) return i;
    return -1;
}

static void drop_at(cel_adapters_t *s, int i) {
    adapter_free(s->loaded[i]);
    s->loaded[i] = s->loaded[--s->n_loaded];
}

void cel_adapters_evict(cel_adapters_t *s, cel_adapter_t *a) {
    for (int i = 0; i < s->n_loaded; i++)
        if (s->loaded[i] == a) {
            drop_at(s, i);
            return;
        }
}

/* The least recently used adapter in memory without accumulated gradients (it
 * can be dropped: its checkpoint is all of it), or -1. */
static int evictable(const cel_adapters_t *s) {
    int lru = -1;
    for (int i = 0; i < s->n_loaded; i++)
        if (!s->loaded[i]->has_grads && (lru < 0 || s->loaded[i]->used < s->loaded[lru]->used))
            lru = i;
    return lru;
}

/* Room for one more adapter in memory, made by dropping the least recently used
 * one without gradients: gradients are never dropped to make room.
 * CEL_ELIMIT when every adapter in memory has them. */
static int make_room(cel_adapters_t *s, cel_err_t *err) {
    if (s->n_loaded < CEL_ADAPTERS_MAX_LOADED) return CEL_OK;
    int lru = evictable(s);
    if (lru < 0)
        return cel_err_set(err, CEL_EAGAIN,
                           "this executor holds %d adapters with accumulated gradients (not yet "
                           "applied by lora.optim_step); run optim_step on some of them first",
                           CEL_ADAPTERS_MAX_LOADED);
    drop_at(s, lru);
    s->evictions++;
    return CEL_OK;
}

/* Takes a into the memory set (make_room first). */
static void insert(cel_adapters_t *s, cel_adapter_t *a) {
    cel_lora_keep_applied(a->lora); /* its steps go to the checkpoint's log */
    a->used = ++s->clock;
    s->loaded[s->n_loaded++] = a;
}

/* Reads the `current` pointer of a store from before the checkpoint file. */
static int read_legacy_current(cel_adapters_t *s, const char *id, char *name, cel_err_t *err) {
    char path[CEL_ADAPTERS_PATH_MAX + 64], *buf;
    size_t len;
    snprintf(path, sizeof(path), "%s/%s/current", s->adir, id);
    int rc = cel_adapters_read_file(path, CKPT_NAME_MAX, &buf, &len, err);
    if (rc != CEL_OK) return rc;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' ')) buf[--len] = '\0';
    if (!valid_ckpt_name(buf)) {
        free(buf);
        return cel_err_set(err, CEL_EPROTO, "%s: not a checkpoint name", path);
    }
    snprintf(name, CKPT_NAME_MAX, "%s", buf);
    free(buf);
    return CEL_OK;
}

/* cel_adapters_read_current; *in_file (unless NULL): whether the name came
 * from the checkpoint file (not from a store from before it). */
static int read_current(cel_adapters_t *s, const char *id, char *name, int *in_file,
                        cel_err_t *err) {
    char dir[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(dir, sizeof(dir), "%s/%s", s->adir, id);
    int rc = cel_ckpt_file_read(dir, NULL, NULL, name, NULL, NULL, NULL, err), file = 1;
    if (rc == CEL_ENOTFOUND) {
        /* a store from before the file: its `current`, unless a writer moved it to
         * the file meanwhile (the file is renamed in before `current` goes) */
        rc = read_legacy_current(s, id, name, err);
        file = 0;
        if (rc == CEL_ENOTFOUND) {
            rc = cel_ckpt_file_read(dir, NULL, NULL, name, NULL, NULL, NULL, err);
            file = 1;
        }
    }
    if (rc == CEL_OK && file && !valid_ckpt_name(name))
        rc = cel_err_set(err, CEL_EPROTO, "%s/" CKPT_FILE ": not a checkpoint name", dir);
    if (in_file) *in_file = rc == CEL_OK && file;
    return rc;
}

int cel_adapters_read_current(cel_adapters_t *s, const char *id, char *name, cel_err_t *err) {
    return read_current(s, id, name, NULL, err);
}

/* Parses meta.json's text (what: for messages). OUT: *meta. */
static int parse_meta(const char *buf, size_t len, const char *what, json_t **meta,
                      cel_err_t *err) {
    json_error_t jerr;
    *meta = json_loadb(buf, len, JSON_ALLOW_NUL, &jerr);
    if (!json_is_object(*meta)) {
        json_decref(*meta);
        *meta = NULL;
        return cel_err_set(err, CEL_EPROTO, "%s: not a JSON object", what);
    }
    return CEL_OK;
}

/* Reads the meta.json of adapter id's current checkpoint from its checkpoint
 * file (whichever is current when read: info and lists want the latest), or
 * of checkpoint name in a store from before the file. OUT: *meta. */
static int read_meta(cel_adapters_t *s, const char *id, const char *name, json_t **meta,
                     cel_err_t *err) {
    char path[CEL_ADAPTERS_PATH_MAX + 128], *buf;
    size_t len;
    cel_lora_image_t img = { 0 };
    snprintf(path, sizeof(path), "%s/%s", s->adir, id);
    int rc = cel_ckpt_file_read(path, NULL, "meta.json", NULL, &img, NULL, NULL, err);
    if (rc == CEL_OK) {
        const unsigned char *m = cel_lora_image_get(&img, "meta.json", &len);
        rc = m && len <= CEL_ADAPTERS_MAX_META
                 ? parse_meta((const char *)m, len, path, meta, err)
                 : cel_err_set(err, CEL_EPROTO, "%s: checkpoint %s has no meta.json", path, name);
        cel_lora_image_free(&img);
        return rc;
    }
    if (rc != CEL_ENOTFOUND) return rc;
    snprintf(path, sizeof(path), "%s/%s/%s/meta.json", s->adir, id, name);
    rc = cel_adapters_read_file(path, CEL_ADAPTERS_MAX_META, &buf, &len, err);
    if (rc != CEL_OK) return rc;
    rc = parse_meta(buf, len, path, meta, err);
    free(buf);
    return rc;
}

/* Fills a's bookkeeping fields from a checkpoint's meta (borrowed). */
static int adopt_meta(cel_adapter_t *a, json_t *meta) {
    const char *owner = json_string_value(json_object_get(meta, "owner"));
    const char *created = json_string_value(json_object_get(meta, "created"));
    json_t *recent = json_object_get(meta, "recent_steps");
    free(a->owner);
    json_decref(a->recent);
    a->owner = owner ? strdup(owner) : NULL;
    a->recent = json_is_array(recent) ? json_deep_copy(recent) : json_array();
    snprintf(a->created, sizeof(a->created), "%s", created ? created : "");
    return (owner && !a->owner) || !a->recent ? CEL_ENOMEM : CEL_OK;
}

/* Loads adapter id's current checkpoint into a new memory copy: name, or the one
 * after it when a writer switched meanwhile (a->ckpt says which). */
static int load_ckpt(cel_adapters_t *s, const char *id, const char *name, cel_adapter_t **out,
                     cel_err_t *err) {
    *out = NULL;
    char dir[CEL_ADAPTERS_PATH_MAX + 128];
    snprintf(dir, sizeof(dir), "%s/%s/%s", s->adir, id, name);
    cel_adapter_t *a = calloc(1, sizeof(*a));
    if (!a) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    a->hold_fd = a->marker_fd = -1;
    snprintf(a->id, sizeof(a->id), "%s", id);
    snprintf(a->ckpt, sizeof(a->ckpt), "%s", name);
    json_t *meta = NULL;
    cel_lora_image_t img = { 0 };
    cel_ckpt_log_t *log = calloc(1, sizeof(*log));
    if (!log) {
        adapter_free(a);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    char adir[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(adir, sizeof(adir), "%s/%s", s->adir, id);
    /* whichever checkpoint is current by the time it is read (name or a later one),
     * named as read: a fast writer (logged steps take a few ms) does not make it fail */
    char got[CKPT_NAME_MAX];
    int rc = cel_ckpt_file_read(adir, NULL, NULL, got, &img, log, NULL, err),
        in_file = rc == CEL_OK;
    if (rc == CEL_OK) {
        snprintf(a->ckpt, sizeof(a->ckpt), "%s", got);
        name = a->ckpt;
        /* the metadata after the last logged step, or the slot's */
        const cel_lora_image_t *newest = log->n ? &log->e[log->n - 1] : &img;
        size_t len = 0;
        const unsigned char *m = cel_lora_image_get(newest, "meta.json", &len);
        rc = m ? parse_meta((const char *)m, len, adir, &meta, err)
               : cel_err_set(err, CEL_EPROTO, "%s: checkpoint %s has no meta.json", adir, name);
        if (rc == CEL_OK) rc = cel_lora_load_image(s->m, &img, &a->lora, err);
        for (int i = 0; rc == CEL_OK && i < log->n; i++)
            rc = cel_lora_replay_image(a->lora, &log->e[i], err);
    } else if (rc == CEL_ENOTFOUND) { /* a store from before the checkpoint file */
        rc = read_meta(s, id, name, &meta, err);
        if (rc == CEL_OK) rc = cel_lora_load(s->m, dir, &a->lora, err);
    }
    if (rc == CEL_OK && adopt_meta(a, meta) != CEL_OK)
        rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
    /* a checkpoint a warm shutdown wrote carries its gradients: read now (the
     * host block, before any device copy), counted as the adapter's only once
     * this process holds them (cel_adapters_hold) */
    json_t *pg = json_object_get(json_object_get(meta, "pending_grads"), "count");
    if (rc == CEL_OK && json_is_integer(pg) && json_integer_value(pg) > 0 &&
        json_integer_value(pg) < 1000000000) {
        rc = in_file ? cel_lora_load_grads_image(a->lora, &img, err)
                     : cel_lora_load_grads(a->lora, dir, err);
        if (rc == CEL_OK) a->ckpt_grads = (int)json_integer_value(pg);
    }
    cel_lora_image_free(&img);
    cel_ckpt_log_free(log);
    free(log);
    json_decref(meta);
    if (rc != CEL_OK) {
        adapter_free(a);
        return rc;
    }
    *out = a;
    return CEL_OK;
}

int cel_adapters_get(cel_adapters_t *s, const char *id, cel_adapter_t **out, cel_err_t *err) {
    *out = NULL;
    if (!cel_adapters_valid_id(id)) return cel_err_set(err, CEL_ENOTFOUND, "malformed id");
    int rc = CEL_OK;
    for (int attempt = 0; attempt < LOAD_RETRIES; attempt++) {
        char name[CKPT_NAME_MAX];
        rc = cel_adapters_read_current(s, id, name, err);
        int i = find_loaded(s, id);
        if (rc != CEL_OK) {
            if (i >= 0) drop_at(s, i); /* deleted by another executor */
            return rc;
        }
        if (i >= 0 && strcmp(s->loaded[i]->ckpt, name) == 0) {
            s->loaded[i]->used = ++s->clock;
            *out = s->loaded[i];
            return CEL_OK;
        }
        if (i >= 0) {
            cel_info("Adapter %s changed on disk (%s -> %s); reloading%s", id, s->loaded[i]->ckpt,
                     name, s->loaded[i]->has_grads ? ", dropping its accumulated gradients" : "");
            drop_at(s, i);
        }
        cel_adapter_t *a;
        if ((rc = make_room(s, err)) != CEL_OK) return rc;
        rc = load_ckpt(s, id, name, &a, err);
        if (rc == CEL_OK) {
            insert(s, a);
            *out = a;
            return CEL_OK;
        }
        if (rc == CEL_ENOMEM) return rc;
        /* another executor may have switched checkpoints meanwhile: look again */
        char again[CKPT_NAME_MAX];
        cel_err_t e2;
        if (cel_adapters_read_current(s, id, again, &e2) != CEL_OK || strcmp(again, name) == 0)
            break;
    }
    return rc;
}

/* a->recent with the step just made by task appended (and the oldest dropped past
 * CEL_ADAPTERS_MAX_RECENT): a new array. */
static json_t *recent_with(const cel_adapter_t *a, const char *task, json_t *result) {
    json_t *r = json_array();
    if (!r || json_array_extend(r, a->recent)) goto fail;
    if (task && result) {
        json_t *e = json_pack("{s:s, s:i, s:O}", "task_id", task, "step",
                              cel_lora_step_count(a->lora), "result", result);
        if (!e || json_array_append_new(r, e)) goto fail;
    }
    while (json_array_size(r) > CEL_ADAPTERS_MAX_RECENT) json_array_remove(r, 0);
    return r;
fail:
    json_decref(r);
    return NULL;
}

/* Builds the meta.json object of a's state now (recent: the new step history). */
static json_t *make_meta(cel_adapters_t *s, cel_adapter_t *a, const char *task, json_t *result,
                         json_t *recent) {
    return json_pack("{s:s, s:s, s:i, s:s?, s:O?, s:O, s:s?, s:s, s:i, s:o, s:o, s:s}", "format",
                     META_FORMAT, "adapter_id", a->id, "step", cel_lora_step_count(a->lora),
                     "last_task_id", task, "last_result", result, "recent_steps", recent, "owner",
                     a->owner, "created", a->created, "rank", cel_lora_rank(a->lora), "alpha",
                     alpha_json(cel_lora_alpha(a->lora)), "target_modules",
                     targets_json(cel_lora_targets(a->lora)), "base_model", s->base);
}

/* Run after this process's checkpoint went into id's checkpoint file: removes
 * what that file supersedes, the checkpoint directories and `current` of a
 * store from before it, and temp names of writers that died (in the
 * background: remove_later). */
static void prune(cel_adapters_t *s, const char *id) {
    char dir[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(dir, sizeof(dir), "%s/%s", s->adir, id);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    time_t now = time(NULL);
    while ((e = readdir(d))) {
        char p[CEL_ADAPTERS_PATH_MAX + 384];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (strstr(e->d_name, ".tmp.")) {
            struct stat st;
            if (lstat(p, &st) == 0 && S_ISREG(st.st_mode) && now - st.st_mtime > STALE_TMP_S)
                remove_later(p);
        } else if (strcmp(e->d_name, "current") == 0) {
            unlink(p);
        } else if (strncmp(e->d_name, "ckpt-", 5) == 0) {
            remove_later(p);
        }
    }
    closedir(d);
}

static int write_ckpt_files(cel_adapters_t *s, cel_adapter_t *a, const char *task, json_t *result,
                            json_t *recent, int with_grads, cel_err_t *err);

int cel_adapters_write_ckpt(cel_adapters_t *s, cel_adapter_t *a, const char *task, json_t *result,
                            int with_grads, cel_err_t *err) {
    json_t *recent = recent_with(a, task, result);
    if (!recent) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    int rc = write_ckpt_files(s, a, task, result, recent, with_grads, err);
    if (rc == CEL_OK) {
        json_decref(a->recent);
        a->recent = recent;
    } else {
        json_decref(recent);
    }
    return rc;
}

/* Compare-and-swap guard of a checkpoint write (issue 15): the adapter's current
 * checkpoint must still be the one a was loaded from (or last wrote). Otherwise another
 * process took the adapter over (or deleted it) and a must not overwrite it:
 * CEL_ESTATE (CEL_ENOTFOUND when deleted). A new adapter (no ckpt yet) passes.
 * *in_file: whether the checkpoint file names it (0: a new adapter, or a store
 * from before the file). */
static int still_current(cel_adapters_t *s, cel_adapter_t *a, int *in_file, cel_err_t *err) {
    *in_file = 0;
    if (!a->ckpt[0]) return CEL_OK;
    char cur[CKPT_NAME_MAX];
    cel_err_t e2;
    int rc = read_current(s, a->id, cur, in_file, &e2);
    if (rc == CEL_ENOTFOUND) return cel_err_set(err, rc, "adapter %s was deleted", a->id);
    if (rc != CEL_OK) return cel_err_set(err, rc, "%s", e2.msg);
    if (strcmp(cur, a->ckpt) != 0)
        return cel_err_set(err, CEL_ESTATE,
                           "adapter %s changed on disk (%s, this copy is of %s): another worker "
                           "took it over",
                           a->id, cur, a->ckpt);
    return CEL_OK;
}

/* ---- phase timing: CELERIAC_PHASE_TIMES=1 logs each checkpoint's phases (bench/users.py) ---- */

int cel_adapters_phase_times(void) {
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("CELERIAC_PHASE_TIMES");
        on = v && *v && strcmp(v, "0") != 0;
    }
    return on;
}

double cel_adapters_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* write_ckpt with the new step history: meta.json and the adapter's files as
 * one image, written into the checkpoint file (adapters_file.c: in place, two
 * fdatasyncs, when it fits) after the `current` check; the checkpoint
 * directories and `current` of a store from before the file are pruned once
 * the file names a checkpoint. */
static int write_ckpt_files(cel_adapters_t *s, cel_adapter_t *a, const char *task, json_t *result,
                            json_t *recent, int with_grads, cel_err_t *err) {
    char nonce[17], name[CKPT_NAME_MAX], adir[CEL_ADAPTERS_PATH_MAX + 64];
    double t0 = cel_adapters_now_ms();
    int in_file;
    int rc = still_current(s, a, &in_file, err);
    if (rc == CEL_OK) rc = random_hex(nonce, 8, err);
    if (rc != CEL_OK) return rc;
    snprintf(name, sizeof(name), "ckpt-%06d-%s", cel_lora_step_count(a->lora), nonce);
    snprintf(adir, sizeof(adir), "%s/%s", s->adir, a->id);
    if (!in_file && (rc = mkdir_if_missing(adir, err)) != CEL_OK) return rc;
    json_t *meta = make_meta(s, a, task, result, recent);
    if (meta && with_grads)
        json_object_set_new(meta, "pending_grads",
                            json_pack("{s:i, s:s, s:i}", "count", a->grad_count, "node", s->node,
                                      "step", cel_lora_step_count(a->lora)));
    char *text = meta ? json_dumps(meta, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(meta);
    cel_lora_image_t img = { 0 }, entry = { 0 };
    if (!text) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    /* the step's log entry, when the step left its applied gradient (a CPU step just
     * made; not a hand-over's gradients, which go in full checkpoints) */
    int logged = 0;
    char *text2 = with_grads ? NULL : strdup(text);
    if (!text2 || cel_lora_applied_image(a->lora, &entry, NULL) != CEL_OK) free(text2);
    else /* (the image takes text2, also when it cannot add it) */
        logged = cel_lora_image_add(&entry, "meta.json", (unsigned char *)text2, strlen(text2),
                                    NULL) == CEL_OK;
    double t1 = cel_adapters_now_ms(), build = t1 - t0;
    cel_ckpt_times_t t = { 0 };
    /* a new adapter, or a store from before the file (its `current` checked above):
     * no file may have appeared since */
    const char *expect = in_file ? a->ckpt : "";
    /* a logged step first, without the full image (CEL_ELIMIT: no room, nothing written) */
    rc = logged ? cel_ckpt_file_write(adir, expect, name, NULL, &entry, &a->pre, &t, err)
                : CEL_ELIMIT;
    if (rc == CEL_ELIMIT) {
        /* meta.json first: a reader of the metadata alone stops there */
        double t2 = cel_adapters_now_ms();
        rc = cel_lora_image_add(&img, "meta.json", (unsigned char *)text, strlen(text), err);
        text = NULL; /* (the image took it) */
        const char *kv[] = { "adapter_id", a->id };
        if (rc == CEL_OK) rc = cel_lora_save_image(a->lora, s->base, kv, 1, with_grads, &img, err);
        build += cel_adapters_now_ms() - t2;
        if (rc == CEL_OK)
            rc = cel_ckpt_file_write(adir, expect, name, &img, logged ? &entry : NULL, &a->pre, &t,
                                     err);
    }
    free(text);
    a->pre.valid = 0; /* used, or of no use any more */
    if (rc == CEL_OK && t.logged == 2) s->ahead_used++;
    cel_lora_image_free(&img);
    cel_lora_image_free(&entry);
    if (rc != CEL_OK) {
        if (rc == CEL_ESTATE) /* the file's own check, as still_current words it */
            cel_err_set(err, rc, "adapter %s changed on disk: another worker took it over",
                        a->id);
        return rc;
    }
    double t3 = cel_adapters_now_ms();
    snprintf(a->ckpt, sizeof(a->ckpt), "%s", name);
    a->ckpt_grads = with_grads ? a->grad_count : 0;
    if (!t.logged || !a->pruned) { /* (what it removes is left by full checkpoints, or old) */
        prune(s, a->id);
        a->pruned = 1;
    }
    if (cel_adapters_phase_times())
        cel_info("Phase times adapter %s checkpoint %s: ckpt_write=%.3f ckpt_sync=%.3f "
                 "ckpt_switch=%.3f ckpt_prune=%.3f%s",
                 a->id, name, build, t.sync, t.sw, cel_adapters_now_ms() - t3,
                 t.whole         ? " (new file)"
                 : t.logged == 2 ? " (logged, gradient written ahead)"
                 : t.logged      ? " (logged)"
                                 : "");
    return CEL_OK;
}

int cel_adapters_commit(cel_adapters_t *s, cel_adapter_t *a, const char *task_id, json_t *result,
                        cel_err_t *err) {
    int rc = cel_adapters_write_ckpt(s, a, task_id, result, 0, err);
    if (rc != CEL_OK) {
        cel_error("Checkpoint of adapter %s failed: %s", a->id, err ? err->msg : "?");
        cel_adapters_evict(s, a);
        return rc;
    }
    /* the step is in the checkpoint: no gradients are pending any more */
    if (a->hold_fd >= 0) cel_adapters_release(s, a);
    return CEL_OK;
}

void cel_adapters_prewrite(cel_adapters_t *s, const char *id) {
    int i = find_loaded(s, id);
    if (i < 0) return;
    cel_adapter_t *a = s->loaded[i];
    a->pre.valid = 0;
    if (!a->has_grads || a->hold_fd < 0 || !a->ckpt[0]) return;
    char adir[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(adir, sizeof(adir), "%s/%s", s->adir, a->id);
    cel_lora_image_t part = { 0 };
    if (cel_lora_pending_image(a->lora, &part, NULL) == CEL_OK)
        cel_ckpt_file_prewrite(adir, a->ckpt, &part, &a->pre, NULL); /* a hint: errors skip it */
    cel_lora_image_free(&part);
}

/* ---- quotas per owner ---- */

void cel_adapters_set_limits(cel_adapters_t *s, const cel_adapters_limits_t *lim) { s->lim = *lim; }

/* Bytes of the regular files directly in dir (checkpoints and exports are flat). */
static long long dir_bytes(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    long long n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
            n += st.st_size;
    }
    closedir(d);
    return n;
}

static int same_owner(const char *a, const char *b) {
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* What owner (NULL: adapters without one) has on disk: adapters, and bytes of
 * their checkpoint files (blocks allocated) and their exports. */
static int owner_usage(cel_adapters_t *s, const char *owner, long *count, long long *bytes,
                       cel_err_t *err) {
    *count = 0;
    *bytes = 0;
    DIR *d = opendir(s->adir);
    if (!d) return cel_err_set(err, CEL_EIO, "%s: %s", s->adir, strerror(errno));
    json_t *ids = json_object();
    struct dirent *e;
    while (ids && (e = readdir(d))) {
        if (!cel_adapters_valid_id(e->d_name)) continue;
        char name[CKPT_NAME_MAX];
        json_t *meta = NULL;
        if (cel_adapters_read_current(s, e->d_name, name, NULL) != CEL_OK ||
            read_meta(s, e->d_name, name, &meta, NULL) != CEL_OK)
            continue; /* being created or deleted */
        const char *o = json_string_value(json_object_get(meta, "owner"));
        if (same_owner(o, owner)) {
            char dir[CEL_ADAPTERS_PATH_MAX + 128];
            long long n = 0;
            struct stat st;
            /* the checkpoint file's blocks on disk: once trained, two checkpoints
             * (the current one and the slot the next step overwrites) */
            snprintf(dir, sizeof(dir), "%s/%s/" CKPT_FILE, s->adir, e->d_name);
            if (lstat(dir, &st) == 0 && S_ISREG(st.st_mode)) {
                n = (long long)st.st_blocks * 512;
            } else {
                snprintf(dir, sizeof(dir), "%s/%s/%s", s->adir, e->d_name, name);
                n = dir_bytes(dir); /* a checkpoint directory of a store from before the file */
            }
            (*count)++;
            *bytes += n;
            json_object_set_new(ids, e->d_name, json_true());
        }
        json_decref(meta);
    }
    closedir(d);
    if (!ids) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    /* exports: <id>-step<N> */
    if ((d = opendir(s->edir))) {
        while ((e = readdir(d))) {
            char id[CEL_ADAPTERS_ID_LEN + 1];
            if (strlen(e->d_name) <= CEL_ADAPTERS_ID_LEN || e->d_name[CEL_ADAPTERS_ID_LEN] != '-')
                continue;
            memcpy(id, e->d_name, CEL_ADAPTERS_ID_LEN);
            id[CEL_ADAPTERS_ID_LEN] = '\0';
            if (!json_object_get(ids, id)) continue;
            char dir[CEL_ADAPTERS_PATH_MAX + 300];
            snprintf(dir, sizeof(dir), "%s/%s", s->edir, e->d_name);
            *bytes += dir_bytes(dir);
        }
        closedir(d);
    }
    json_decref(ids);
    return CEL_OK;
}

/* Takes the store's quota lock (shared by every executor of this state
 * directory), so that two creations of one owner cannot both pass a check. */
static int quota_lock(cel_adapters_t *s, int *fd, cel_err_t *err) {
    *fd = -1;
    if (!s->lim.max_per_owner && !s->lim.max_bytes_per_owner) return CEL_OK;
    char path[CEL_ADAPTERS_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/.quota.lock", s->adir);
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (f < 0) return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    while (flock(f, LOCK_EX) != 0)
        if (errno != EINTR) {
            int e = errno;
            close(f);
            return cel_err_set(err, CEL_EIO, "%s: lock: %s", path, strerror(e));
        }
    *fd = f;
    return CEL_OK;
}

static void quota_unlock(int fd) {
    if (fd >= 0) close(fd); /* drops the lock */
}

/* CEL_ELIMIT when owner, with more_count more adapters and more_bytes more
 * bytes, would pass a limit. */
static int quota_check(cel_adapters_t *s, const char *owner, long more_count, long long more_bytes,
                       cel_err_t *err) {
    if (!s->lim.max_per_owner && !s->lim.max_bytes_per_owner) return CEL_OK;
    long count;
    long long bytes;
    int rc = owner_usage(s, owner, &count, &bytes, err);
    if (rc != CEL_OK) return rc;
    char who[CEL_ERR_MSG_MAX / 2];
    if (owner) snprintf(who, sizeof(who), "owner '%.60s'", owner);
    else snprintf(who, sizeof(who), "adapters without an owner");
    if (s->lim.max_per_owner && count + more_count > s->lim.max_per_owner)
        return cel_err_set(err, CEL_ELIMIT,
                           "%s: %ld adapters already, the limit is %ld "
                           "(--max-adapters-per-owner); delete one first",
                           who, count, s->lim.max_per_owner);
    if (s->lim.max_bytes_per_owner && bytes + more_bytes > s->lim.max_bytes_per_owner)
        return cel_err_set(err, CEL_ELIMIT,
                           "%s: adapters would use %lld bytes on disk, the limit is %lld "
                           "(--max-adapter-bytes-per-owner); delete some first",
                           who, bytes + more_bytes, s->lim.max_bytes_per_owner);
    return CEL_OK;
}

/* A new adapter object with a fresh id around lora (taken), checkpointed and in
 * memory, within the owner's quota (checked under the quota lock before and,
 * for bytes, after its checkpoint is written). */
static int new_adapter(cel_adapters_t *s, cel_lora_t *lora, const char *owner, cel_adapter_t **out,
                       cel_err_t *err) {
    *out = NULL;
    cel_adapter_t *a = calloc(1, sizeof(*a));
    if (a) a->hold_fd = a->marker_fd = -1;
    if (!a || !(a->recent = json_array()) || (owner && !(a->owner = strdup(owner)))) {
        if (a) json_decref(a->recent);
        free(a);
        cel_lora_free(lora);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    a->lora = lora;
    iso_now(a->created, sizeof(a->created));
    char hex[17], dir[CEL_ADAPTERS_PATH_MAX + 64];
    int lock = -1, made = 0;
    int rc = make_room(s, err);
    if (rc == CEL_OK) rc = quota_lock(s, &lock, err);
    if (rc == CEL_OK) rc = quota_check(s, owner, 1, 0, err);
    /* 64 random bits: a clash is astronomically unlikely, but mkdir makes it safe */
    for (int tries = 0; rc == CEL_OK && tries < 4; tries++) {
        if ((rc = random_hex(hex, 8, err)) != CEL_OK) break;
        snprintf(a->id, sizeof(a->id), "lora_%s", hex);
        snprintf(dir, sizeof(dir), "%s/%s", s->adir, a->id);
        if (mkdir(dir, 0700) == 0) {
            made = 1;
            break;
        }
        rc = cel_err_set(err, CEL_EIO, "%s: %s", dir, strerror(errno));
        if (errno != EEXIST) break;
    }
    if (rc == CEL_OK) rc = cel_adapters_write_ckpt(s, a, NULL, NULL, 0, err);
    if (rc == CEL_OK) rc = quota_check(s, owner, 0, 0, err); /* its bytes now on disk */
    if (rc != CEL_OK && made) rm_tree(dir);
    quota_unlock(lock);
    if (rc != CEL_OK) {
        adapter_free(a);
        return rc;
    }
    insert(s, a);
    *out = a;
    return CEL_OK;
}

int cel_adapters_create(cel_adapters_t *s, const cel_lora_config_t *cfg, const char *owner,
                        cel_adapter_t **out, cel_err_t *err) {
    *out = NULL;
    cel_lora_t *lora;
    int rc = cel_lora_new(s->m, cfg, &lora, err);
    if (rc != CEL_OK) return rc;
    return new_adapter(s, lora, owner, out, err);
}

int cel_adapters_delete(cel_adapters_t *s, const char *id_arg, cel_err_t *err) {
    if (!cel_adapters_valid_id(id_arg)) return cel_err_set(err, CEL_ENOTFOUND, "malformed id");
    char id[CEL_ADAPTERS_ID_LEN + 1]; /* id_arg may be the loaded copy's own, freed below */
    snprintf(id, sizeof(id), "%s", id_arg);
    int i = find_loaded(s, id);
    if (i >= 0) drop_at(s, i);
    char name[CKPT_NAME_MAX], dir[CEL_ADAPTERS_PATH_MAX + 64], gone[CEL_ADAPTERS_PATH_MAX + 96];
    int rc = cel_adapters_read_current(s, id, name, err);
    if (rc != CEL_OK) return rc;
    char nonce[17];
    if ((rc = random_hex(nonce, 8, err)) != CEL_OK) return rc;
    snprintf(dir, sizeof(dir), "%s/%s", s->adir, id);
    snprintf(gone, sizeof(gone), "%s/.deleted-%s-%s", s->adir, id, nonce);
    if (rename(dir, gone) != 0) {
        if (errno == ENOENT) return cel_err_set(err, CEL_ENOTFOUND, "%s: not found", dir);
        return cel_err_set(err, CEL_EIO, "%s: %s", dir, strerror(errno));
    }
    fsync_path(s->adir, O_RDONLY | O_DIRECTORY);
    rm_tree(gone);
    return CEL_OK;
}

static int export_locked(cel_adapters_t *s, cel_adapter_t *a, const char *path, cel_err_t *err);

int cel_adapters_export(cel_adapters_t *s, cel_adapter_t *a, char *path, cel_err_t *err) {
    int step = cel_lora_step_count(a->lora);
    snprintf(path, CEL_ADAPTERS_PATH_MAX, "%s/%s-step%d", s->edir, a->id, step);
    /* the weights of a step never change, so an existing export is that step's */
    char probe[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(probe, sizeof(probe), "%s/adapter_model.safetensors", path);
    if (access(probe, F_OK) == 0) return CEL_OK;
    /* the export is about the size of the checkpoint's weights: a third of the
     * checkpoint (weights and the optimizer's two moments) */
    char adir[CEL_ADAPTERS_PATH_MAX + 160];
    long long ck = 0;
    snprintf(adir, sizeof(adir), "%s/%s", s->adir, a->id);
    if (cel_ckpt_file_read(adir, NULL, NULL, NULL, NULL, NULL, &ck, NULL) != CEL_OK) ck = 0;
    long long more = ck ? ck / 3 + 4096 : 0;
    int lock;
    int rc = quota_lock(s, &lock, err);
    if (rc == CEL_OK) rc = quota_check(s, a->owner, 0, more, err);
    if (rc == CEL_OK) rc = export_locked(s, a, path, err);
    quota_unlock(lock);
    return rc;
}

/* cel_adapters_export's writing, under the quota lock. */
static int export_locked(cel_adapters_t *s, cel_adapter_t *a, const char *path, cel_err_t *err) {
    char tmp[CEL_ADAPTERS_PATH_MAX + 128], nonce[17];
    int rc = random_hex(nonce, 8, err);
    if (rc != CEL_OK) return rc;
    snprintf(tmp, sizeof(tmp), "%s/.tmp-%s-%s", s->edir, a->id, nonce);
    if (mkdir(tmp, 0700) != 0) return cel_err_set(err, CEL_EIO, "%s: %s", tmp, strerror(errno));
    const char *kv[] = { "adapter_id", a->id };
    rc = cel_lora_save(a->lora, tmp, s->base, kv, 1, err);
    if (rc == CEL_OK && fsync_path(tmp, O_RDONLY | O_DIRECTORY) != 0)
        rc = cel_err_set(err, CEL_EIO, "%s: fsync: %s", tmp, strerror(errno));
    if (rc == CEL_OK && rename(tmp, path) != 0 && errno != EEXIST && errno != ENOTEMPTY)
        rc = cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    if (rc != CEL_OK || access(tmp, F_OK) == 0) rm_tree(tmp);
    if (rc == CEL_OK) fsync_path(s->edir, O_RDONLY | O_DIRECTORY);
    return rc;
}

/* Normalizes an absolute path lexically ("." and ".." and repeated slashes),
 * following no symlinks. out has CEL_ADAPTERS_PATH_MAX bytes. */
static int lexical_norm(const char *abs, char *out) {
    size_t n = 0;
    const char *p = abs;
    out[0] = '\0';
    while (*p) {
        while (*p == '/') p++;
        size_t len = strcspn(p, "/");
        if (len == 0) break;
        if (len == 1 && p[0] == '.') {
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--;
            if (n > 0) n--;
            out[n] = '\0';
        } else {
            if (n + 1 + len + 1 > CEL_ADAPTERS_PATH_MAX) return -1;
            out[n++] = '/';
            memcpy(out + n, p, len);
            n += len;
            out[n] = '\0';
        }
        p += len;
    }
    if (n == 0) snprintf(out, CEL_ADAPTERS_PATH_MAX, "/");
    return 0;
}

static int inside_roots(const cel_adapters_t *s, const char *path) {
    if (path_inside(path, s->state)) return 1;
    for (int i = 0; i < s->n_roots; i++)
        if (path_inside(path, s->roots[i])) return 1;
    return 0;
}

/* ---- lora.load: a user's folder, read as hostile ---- */

static const char *const import_files[] = { "adapter_config.json", "adapter_model.safetensors",
                                            "optimizer.safetensors" };

/* Opens name in the directory dfd as a regular file of at most max bytes:
 * without following a symbolic link, without blocking on a FIFO or device,
 * checked with fstat before anything is read. CEL_ENOTFOUND when it is missing;
 * CEL_ELIMIT when larger; CEL_EINVAL when not a regular file. OUT: *fd, *size. */
static int open_checked(int dfd, const char *name, unsigned long long max, int *fd,
                        unsigned long long *size, cel_err_t *err) {
    *fd = -1;
    int f = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (f < 0) {
        if (errno == ENOENT) return cel_err_set(err, CEL_ENOTFOUND, "has no %s", name);
        if (errno == ELOOP)
            return cel_err_set(err, CEL_EINVAL, "has a %s that is a symbolic link (not followed)",
                               name);
        return cel_err_set(err, CEL_EIO, "cannot open its %s: %s", name, strerror(errno));
    }
    struct stat st;
    if (fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(f);
        return cel_err_set(err, CEL_EINVAL, "has a %s that is not a regular file", name);
    }
    if ((unsigned long long)st.st_size > max) {
        close(f);
        return cel_err_set(err, CEL_EINVAL,
                           "has a %s of %lld bytes, more than an adapter of its rank can be "
                           "(%llu)",
                           name, (long long)st.st_size, max);
    }
    *fd = f;
    *size = (unsigned long long)st.st_size;
    return CEL_OK;
}

/* Copies at most size bytes of fd (a file that may change meanwhile) into the
 * new file name of the directory sfd. */
static int copy_into(int fd, unsigned long long size, int sfd, const char *name, cel_err_t *err) {
    int out = openat(sfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0) return cel_err_set(err, CEL_EIO, "staging %s: %s", name, strerror(errno));
    char buf[1 << 16];
    unsigned long long left = size;
    int rc = CEL_OK;
    while (rc == CEL_OK && left > 0) {
        ssize_t r = read(fd, buf, left < sizeof(buf) ? (size_t)left : sizeof(buf));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rc = cel_err_set(err, CEL_EIO, "reading its %s: %s", name, strerror(errno));
        if (r <= 0) break; /* shorter than fstat said: what is there is what we have */
        for (ssize_t o = 0; rc == CEL_OK && o < r;) {
            ssize_t w = write(out, buf + o, (size_t)(r - o));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) rc = cel_err_set(err, CEL_EIO, "staging %s: %s", name, strerror(errno));
            else o += w;
        }
        left -= (unsigned long long)r;
    }
    close(out);
    return rc;
}

/* The staged adapter_config.json: r and lora_alpha within the limits, and the
 * floats its adapter holds (0 when the model's sizes are not known). */
static int check_config(cel_adapters_t *s, int sfd, unsigned long long *floats, cel_err_t *err) {
    *floats = 0;
    int fd = openat(sfd, import_files[0], O_RDONLY | O_CLOEXEC);
    char *buf = fd >= 0 ? malloc(IMPORT_CONFIG_MAX + 1) : NULL;
    ssize_t n = buf ? read(fd, buf, IMPORT_CONFIG_MAX) : -1;
    if (fd >= 0) close(fd);
    if (n < 0) {
        free(buf);
        return cel_err_set(err, CEL_EIO, "cannot read its staged adapter_config.json");
    }
    json_t *o = json_loadb(buf, (size_t)n, 0, NULL);
    free(buf);
    json_t *r = json_object_get(o, "r"), *alpha = json_object_get(o, "lora_alpha");
    int rc = CEL_OK;
    int max_rank = s->lim.max_rank ? s->lim.max_rank : CEL_LORA_MAX_RANK;
    if (!json_is_object(o)) {
        rc = cel_err_set(err, CEL_EPROTO, "has an adapter_config.json that is not a JSON object");
    } else if (!json_is_integer(r) || json_integer_value(r) < 1 ||
               json_integer_value(r) > max_rank) {
        rc = cel_err_set(err, CEL_EINVAL, "has a rank r that is not an integer in [1, %d]",
                         max_rank);
    } else if (!json_is_number(alpha) || !isfinite(json_number_value(alpha)) ||
               !(json_number_value(alpha) > 0) ||
               (s->lim.max_alpha > 0 && json_number_value(alpha) > s->lim.max_alpha)) {
        rc = cel_err_set(err, CEL_EINVAL, "has a lora_alpha that is not a number in (0, %g]",
                         s->lim.max_alpha > 0 ? s->lim.max_alpha : 1e38);
    } else {
        unsigned targets = 0;
        json_t *tm = json_object_get(o, "target_modules"), *v;
        size_t i;
        if (json_is_string(tm)) cel_lora_parse_targets(json_string_value(tm), &targets, NULL);
        json_array_foreach(tm, i, v) {
            unsigned bit = 0;
            if (json_is_string(v) &&
                cel_lora_parse_targets(json_string_value(v), &bit, NULL) == CEL_OK)
                targets |= bit;
        }
        if (!targets) targets = CEL_LORA_ALL; /* the loader says what is wrong with it */
        for (int m = 0; m < 7; m++)
            if (targets & (1u << m))
                *floats += s->lim.floats_per_rank[m] * (unsigned long long)json_integer_value(r);
    }
    json_decref(o);
    return rc;
}

/* 1 when every float of every tensor of the staged file name is finite. */
static int all_finite(const char *stage, const char *name, cel_err_t *err) {
    char path[CEL_ADAPTERS_PATH_MAX + 128];
    snprintf(path, sizeof(path), "%s/%s", stage, name);
    cel_safetensors_t *st;
    if (cel_safetensors_open(path, &st, err) != CEL_OK) return 1; /* the loader reports it */
    int ok = 1;
    for (int i = 0; ok && i < cel_safetensors_count(st); i++) {
        const cel_st_tensor_t *t = cel_safetensors_at(st, i);
        const uint8_t *d = t->data;
        for (uint64_t j = 0; ok && j < t->numel; j++) {
            if (t->dtype == CEL_ST_F32) {
                float f;
                memcpy(&f, d + 4 * j, 4);
                ok = isfinite(f);
            } else if (t->dtype == CEL_ST_F64) {
                double x;
                memcpy(&x, d + 8 * j, 8);
                ok = isfinite(x);
            } else if (t->dtype == CEL_ST_F16 || t->dtype == CEL_ST_BF16) {
                uint16_t h;
                memcpy(&h, d + 2 * j, 2);
                uint16_t expo = t->dtype == CEL_ST_F16 ? 0x7c00 : 0x7f80;
                ok = (h & expo) != expo;
            } else {
                break;
            }
        }
    }
    cel_safetensors_free(st);
    return ok;
}

/* Copies the adapter folder open as dfd into the new private folder stage (inside
 * the state directory): each file opened with open_checked, bounded by what an
 * adapter of the rank its config names can hold. */
static int stage_import(cel_adapters_t *s, int dfd, const char *stage, cel_err_t *err) {
    if (mkdir(stage, 0700) != 0)
        return cel_err_set(err, CEL_EIO, "staging folder %s: %s", stage, strerror(errno));
    int sfd = open(stage, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sfd < 0) return cel_err_set(err, CEL_EIO, "staging folder %s: %s", stage, strerror(errno));
    unsigned long long floats = 0;
    int rc = CEL_OK;
    for (int i = 0; rc == CEL_OK && i < 3; i++) {
        unsigned long long max = i == 0 ? IMPORT_CONFIG_MAX : IMPORT_FILE_MAX;
        if (i > 0 && floats) max = (unsigned long long)i * floats * 4 + IMPORT_HEADER_MAX;
        int fd = -1;
        unsigned long long size = 0;
        rc = open_checked(dfd, import_files[i], max, &fd, &size, err);
        if (rc == CEL_ENOTFOUND && i == 2) {
            rc = CEL_OK; /* the optimizer state is optional */
            continue;
        }
        if (rc == CEL_OK) rc = copy_into(fd, size, sfd, import_files[i], err);
        if (fd >= 0) close(fd);
        if (rc == CEL_OK && i == 0) rc = check_config(s, sfd, &floats, err);
    }
    for (int i = 1; rc == CEL_OK && i < 3; i++) {
        char p[CEL_ADAPTERS_PATH_MAX + 128];
        snprintf(p, sizeof(p), "%s/%s", stage, import_files[i]);
        if (access(p, F_OK) == 0 && !all_finite(stage, import_files[i], err))
            rc = cel_err_set(err, CEL_EINVAL, "has NaN or infinite values in %s", import_files[i]);
    }
    close(sfd);
    return rc;
}

int cel_adapters_import(cel_adapters_t *s, const char *path, const char *owner, cel_adapter_t **out,
                        cel_err_t *err) {
    *out = NULL;
    char abs[CEL_ADAPTERS_PATH_MAX * 2 + 2], norm[CEL_ADAPTERS_PATH_MAX];
    char real[PATH_MAX];
    if (!*path) return cel_err_set(err, CEL_ENOTFOUND, "is empty");
    if (path[0] == '/') snprintf(abs, sizeof(abs), "%s", path);
    else snprintf(abs, sizeof(abs), "%s/%s", s->state, path);
    if (strlen(abs) >= CEL_ADAPTERS_PATH_MAX || lexical_norm(abs, norm) != 0)
        return cel_err_set(err, CEL_ELIMIT, "is longer than %d bytes", CEL_ADAPTERS_PATH_MAX - 1);
    if (!realpath(abs, real)) {
        /* say "missing" only for paths that would be allowed, so the answer tells
         * nothing about what exists outside the roots */
        if (!inside_roots(s, norm))
            return cel_err_set(err, CEL_ESTATE,
                               "is outside the state directory and the "
                               "import roots");
        return cel_err_set(err, CEL_ENOTFOUND, "does not exist");
    }
    if (!inside_roots(s, real))
        return cel_err_set(err, CEL_ESTATE, "is outside the state directory and the import roots");
    if (!is_dir(real)) return cel_err_set(err, CEL_EINVAL, "is not a directory");
    for (size_t i = 0; i < sizeof(import_files) / sizeof(import_files[0]); i++) {
        char f[PATH_MAX + 64], fr[PATH_MAX];
        struct stat st;
        snprintf(f, sizeof(f), "%s/%s", real, import_files[i]);
        if (lstat(f, &st) != 0) {
            if (i < 2) return cel_err_set(err, CEL_EINVAL, "has no %s", import_files[i]);
            continue;
        }
        if (!realpath(f, fr) || !inside_roots(s, fr))
            return cel_err_set(err, CEL_ESTATE,
                               "has a %s that leads outside the state "
                               "directory and the import roots",
                               import_files[i]);
    }
    /* From here on the folder is read only through this fd: a symlink swapped in
     * after the checks above cannot redirect the reads. */
    int dfd = open(real, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return cel_err_set(err, errno == ENOENT ? CEL_ENOTFOUND : CEL_EINVAL,
                           "changed while being read (%s)", strerror(errno));
    char fdpath[64], where[PATH_MAX];
    snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", dfd);
    ssize_t wl = readlink(fdpath, where, sizeof(where) - 1);
    if (wl > 0) {
        where[wl] = '\0';
        if (!inside_roots(s, where)) {
            close(dfd);
            return cel_err_set(err, CEL_ESTATE,
                               "is outside the state directory and the import roots");
        }
    }
    char nonce[17], stage[CEL_ADAPTERS_PATH_MAX + 64];
    int rc = random_hex(nonce, 8, err);
    snprintf(stage, sizeof(stage), "%s/.import-%s", s->state, nonce);
    if (rc == CEL_OK) rc = stage_import(s, dfd, stage, err);
    close(dfd);
    cel_lora_t *lora = NULL;
    if (rc == CEL_OK) {
        cel_err_t lerr;
        rc = cel_lora_load(s->m, stage, &lora, &lerr);
        if (rc == CEL_ENOMEM) {
            cel_err_set(err, rc, "out of memory");
        } else if (rc != CEL_OK) {
            /* the engine's message names the staged file path; keep only its tail */
            const char *msg = lerr.msg;
            size_t sl = strlen(stage);
            if (strncmp(msg, stage, sl) == 0) msg += sl + (msg[sl] == '/');
            rc = cel_err_set(err, CEL_EINVAL, "is not a loadable adapter: %s", msg);
        }
    }
    rm_tree(stage);
    if (rc != CEL_OK) return rc;
    return new_adapter(s, lora, owner, out, err);
}

static json_t *or_null(json_t *v) { return v ? v : json_null(); }

/* The info dict from a checkpoint's meta (borrowed). */
static json_t *info_from_meta(const char *id, json_t *meta) {
    return json_pack(
        "{s:s, s:O, s:O, s:O, s:O, s:O, s:O}", "adapter_id", id, "rank",
        or_null(json_object_get(meta, "rank")), "alpha", or_null(json_object_get(meta, "alpha")),
        "target_modules", or_null(json_object_get(meta, "target_modules")), "step",
        or_null(json_object_get(meta, "step")), "owner", or_null(json_object_get(meta, "owner")),
        "created", or_null(json_object_get(meta, "created")));
}

int cel_adapters_info(cel_adapters_t *s, const char *id, json_t **out, cel_err_t *err) {
    *out = NULL;
    if (!cel_adapters_valid_id(id)) return cel_err_set(err, CEL_ENOTFOUND, "malformed id");
    char name[CKPT_NAME_MAX];
    json_t *meta = NULL;
    int rc = cel_adapters_read_current(s, id, name, err);
    if (rc == CEL_OK) rc = read_meta(s, id, name, &meta, err);
    if (rc != CEL_OK) return rc;
    *out = info_from_meta(id, meta);
    json_decref(meta);
    return *out ? CEL_OK : cel_err_set(err, CEL_ENOMEM, "out of memory");
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int cel_adapters_list(cel_adapters_t *s, const char *owner, json_t **out, cel_err_t *err) {
    *out = NULL;
    DIR *d = opendir(s->adir);
    if (!d) return cel_err_set(err, CEL_EIO, "%s: %s", s->adir, strerror(errno));
    char **ids = NULL;
    size_t n = 0, cap = 0;
    int rc = CEL_OK;
    struct dirent *e;
    while (rc == CEL_OK && (e = readdir(d))) {
        if (!cel_adapters_valid_id(e->d_name)) continue;
        if (n == CEL_ADAPTERS_MAX_LIST) break;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            char **ni = realloc(ids, nc * sizeof(*ids));
            if (!ni) {
                rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
                break;
            }
            ids = ni, cap = nc;
        }
        if (!(ids[n] = strdup(e->d_name))) rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
        else n++;
    }
    closedir(d);
    if (n) qsort(ids, n, sizeof(*ids), cmp_str);
    json_t *list = rc == CEL_OK ? json_array() : NULL;
    if (rc == CEL_OK && !list) rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
    for (size_t i = 0; rc == CEL_OK && i < n; i++) {
        json_t *info;
        cel_err_t e2;
        int r = cel_adapters_info(s, ids[i], &info, &e2);
        if (r == CEL_ENOMEM) rc = cel_err_set(err, r, "out of memory");
        if (r != CEL_OK) continue; /* being created or deleted, or unreadable: skip */
        const char *o = json_string_value(json_object_get(info, "owner"));
        if (!owner || (o && strcmp(o, owner) == 0)) json_array_append(list, info);
        json_decref(info);
    }
    for (size_t i = 0; i < n; i++) free(ids[i]);
    free(ids);
    if (rc != CEL_OK) {
        json_decref(list);
        return rc;
    }
    *out = list;
    return CEL_OK;
}

const char *cel_adapters_id(const cel_adapter_t *a) { return a->id; }
cel_lora_t *cel_adapters_lora(cel_adapter_t *a) { return a->lora; }
int cel_adapters_has_grads(const cel_adapter_t *a) { return a->has_grads; }
json_t *cel_adapters_step_result(const cel_adapter_t *a, const char *task_id, int *step) {
    size_t i;
    json_t *e;
    if (!task_id) return NULL;
    json_array_foreach(a->recent, i, e) {
        const char *t = json_string_value(json_object_get(e, "task_id"));
        if (t && strcmp(t, task_id) == 0) {
            if (step) *step = (int)json_integer_value(json_object_get(e, "step"));
            return json_object_get(e, "result");
        }
    }
    return NULL;
}

json_t *cel_adapters_describe(const cel_adapter_t *a) {
    return json_pack("{s:s, s:i, s:o, s:o, s:i, s:s?, s:s}", "adapter_id", a->id, "rank",
                     cel_lora_rank(a->lora), "alpha", alpha_json(cel_lora_alpha(a->lora)),
                     "target_modules", targets_json(cel_lora_targets(a->lora)), "step",
                     cel_lora_step_count(a->lora), "owner", a->owner, "created", a->created);
}
