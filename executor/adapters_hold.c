/* adapters_hold.c -- who holds an adapter's gradients when many workers share the state dir.
 *
 * Checkpoints are what every worker shares; accumulated gradients live in one
 * process's memory. The process that holds an adapter's gradients holds an
 * exclusive flock on <id>/lock from its first forward_backward until they are
 * applied (optim_step's checkpoint), dropped, or handed back (a warm
 * shutdown's checkpoint with gradients); only that process writes the
 * adapter's checkpoints (creation aside), so pruning under it cannot remove a
 * checkpoint another process is writing, and the checkpoint writer checks
 * the checkpoint file before writing in case the lock was lost (NFS lease expiry). The
 * kernel (or the NFS server, when a client's lease ends) drops the lock of a
 * process that dies, so a worker that takes it knows the old holder is gone.
 * <id>/grads.json, the marker, says what the holder has: {"node", "pid",
 * "count" (forward_backward calls), "step", "ckpt" (the checkpoint they follow),
 * "last" (the task id of the latest call, when known)};
 * rewritten in place when a process takes the lock, at every forward_backward
 * and when it lets go (count 0 once the gradients are checkpointed or
 * dropped): one pwrite each, not fsynced (it must survive the process, not the
 * machine); removed only when a warm shutdown's checkpoint carries them. A process that takes
 * the lock and finds a marker for the current checkpoint with more calls than
 * the checkpoint carries knows that many calls' gradients died with their
 * holder: it reports them once (AdapterStateLost) and leaves a marker of 0 so
 * gradients a checkpoint carries are not taken as valid after that -- unless
 * the one call lost is the forward_backward it is about to run: a holder that
 * died between noting a call's gradients and the ack of its message (its
 * result may already be stored) gets that message delivered again, and
 * running it again makes exactly what was lost. A warm
 * shutdown writes a checkpoint with the gradients (cel_adapters_handback).
 * Executor processes only; blocking file I/O; one thread. (issue 15)
 */
#include "adapters_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/log.h"

/* File names inside the tag: [A-Za-z0-9@._-], others as '_'. */
void cel_adapters_set_node(cel_adapters_t *s, const char *node) {
    snprintf(s->node, sizeof(s->node), "%s", node && *node ? node : "celeriac");
    size_t n = 0;
    for (const char *p = s->node; *p && n < sizeof(cel_adapters_tmp_tag) - 1; p++, n++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '@' || c == '.' || c == '_' || c == '-';
        cel_adapters_tmp_tag[n] = ok ? c : '_';
    }
    cel_adapters_tmp_tag[n] = '\0';
}

const char *cel_adapters_node(const cel_adapters_t *s) { return s->node; }

/* The marker of adapter id, or NULL when there is none (or it is unreadable). */
static json_t *read_marker(cel_adapters_t *s, const char *id) {
    char path[CEL_ADAPTERS_PATH_MAX + 64], *buf;
    size_t len;
    snprintf(path, sizeof(path), "%s/%s/grads.json", s->adir, id);
    if (cel_adapters_read_file(path, CEL_ADAPTERS_MAX_META, &buf, &len, NULL) != CEL_OK)
        return NULL;
    json_t *m = json_loadb(buf, len, 0, NULL);
    free(buf);
    if (!json_is_object(m)) {
        json_decref(m);
        return NULL;
    }
    return m;
}

/* The marker is rewritten in place, MARKER_BYTES at offset 0 through one fd
 * kept open while this process holds the adapter: one pwrite per
 * forward_backward, no temp file or rename. A write of less than a page from
 * offset 0 is all or nothing for a process killed during it (the kernel checks
 * for a fatal signal between page-sized chunks only), and every marker is the
 * same size (JSON padded with spaces, which a JSON reader skips), so what a
 * killed holder leaves is always one whole marker. */
#define MARKER_BYTES 1024

static void close_marker(cel_adapter_t *a) {
    if (a->marker_fd >= 0) close(a->marker_fd);
    a->marker_fd = -1;
}

static void unlink_marker(cel_adapters_t *s, cel_adapter_t *a) {
    char path[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s/grads.json", s->adir, a->id);
    unlink(path);
    close_marker(a);
}

/* Writes a's marker saying this process holds count calls' gradients. */
static int write_marker(cel_adapters_t *s, cel_adapter_t *a, int count, cel_err_t *err) {
    char path[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s/grads.json", s->adir, a->id);
    json_t *m = json_pack("{s:s, s:I, s:i, s:i, s:s}", "node", s->node, "pid", (json_int_t)getpid(),
                          "count", count, "step", cel_lora_step_count(a->lora), "ckpt", a->ckpt);
    if (m && count > 0 && a->last_fb[0] &&
        json_object_set_new(m, "last", json_string(a->last_fb)) != 0) {
        json_decref(m);
        m = NULL;
    }
    char buf[MARKER_BYTES];
    size_t n = m ? json_dumpb(m, buf, sizeof(buf) - 1, JSON_SORT_KEYS) : 0;
    json_decref(m);
    if (n == 0 || n > sizeof(buf) - 1)
        return cel_err_set(err, CEL_ENOMEM, "%s: the marker does not fit in %d bytes", path,
                           MARKER_BYTES);
    memset(buf + n, ' ', sizeof(buf) - 1 - n);
    buf[sizeof(buf) - 1] = '\n';
    if (a->marker_fd < 0) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
        struct stat st; /* one written otherwise (an older worker): only ours from now on */
        if (fstat(fd, &st) == 0 && st.st_size > MARKER_BYTES && ftruncate(fd, 0) != 0) {
            int e = errno;
            close(fd);
            return cel_err_set(err, CEL_EIO, "%s: truncate: %s", path, strerror(e));
        }
        a->marker_fd = fd;
    }
    ssize_t w;
    while ((w = pwrite(a->marker_fd, buf, sizeof(buf), 0)) < 0 && errno == EINTR)
        ;
    if (w != (ssize_t)sizeof(buf))
        return cel_err_set(err, CEL_EIO, "%s: write: %s", path,
                           w < 0 ? strerror(errno) : "short write");
    return CEL_OK;
}

int cel_adapters_hold(cel_adapters_t *s, cel_adapter_t *a, const char *redo_task,
                      cel_adapters_lost_t *lost, cel_err_t *err) {
    memset(lost, 0, sizeof(*lost));
    if (a->hold_fd >= 0) return CEL_OK;
    char path[CEL_ADAPTERS_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s/lock", s->adir, a->id);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        if (errno == ENOENT)
            return cel_err_set(err, CEL_ENOTFOUND, "adapter %s was deleted", a->id);
        return cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    }
    int r;
    while ((r = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
        ;
    if (r != 0) {
        int e = errno;
        close(fd);
        if (e != EWOULDBLOCK) return cel_err_set(err, CEL_EIO, "%s: lock: %s", path, strerror(e));
        json_t *m = read_marker(s, a->id);
        const char *node = json_string_value(json_object_get(m, "node"));
        json_int_t pid = json_integer_value(json_object_get(m, "pid"));
        if (node)
            cel_err_set(err, CEL_ESTATE,
                        "adapter %s: its accumulated gradients are held by node %.80s (pid "
                        "%lld), which is still running; send the adapter's jobs to that node "
                        "(its direct queue %.80s.dq2)",
                        a->id, node, (long long)pid, node);
        else
            cel_err_set(err, CEL_ESTATE,
                        "adapter %s: its accumulated gradients are held by another running "
                        "worker process; send the adapter's jobs to its home node",
                        a->id);
        json_decref(m);
        return CEL_ESTATE;
    }
    /* the lock is ours: whoever held it before is gone (or let go) */
    char cur[CKPT_NAME_MAX];
    int rc = cel_adapters_read_current(s, a->id, cur, err);
    if (rc == CEL_OK && strcmp(cur, a->ckpt) != 0)
        rc = cel_err_set(err, CEL_EAGAIN, "adapter %s changed on disk; load it again", a->id);
    if (rc != CEL_OK) {
        close(fd);
        return rc;
    }
    a->hold_fd = fd;
    a->last_fb[0] = '\0';
    json_t *m = read_marker(s, a->id);
    const char *mckpt = json_string_value(json_object_get(m, "ckpt"));
    if (m && (!mckpt || strcmp(mckpt, a->ckpt) != 0)) {
        json_decref(m); /* of an older checkpoint: that step was made (rewritten below) */
        m = NULL;
    }
    int base = a->ckpt_grads, count = base;
    if (m) {
        json_t *c = json_object_get(m, "count");
        int had =
            json_is_integer(c) && json_integer_value(c) > 0 && json_integer_value(c) < 1000000000
                ? (int)json_integer_value(c)
                : 0;
        const char *last = json_string_value(json_object_get(m, "last"));
        if (had == base + 1 && redo_task && last && strcmp(last, redo_task) == 0) {
            /* the one call lost is the one about to run again: nothing is lost */
            const char *node = json_string_value(json_object_get(m, "node"));
            cel_info("Adapter %s: task %s runs again (its gradients died with node %s "
                     "before its message was acked)",
                     a->id, redo_task, node ? node : "?");
            count = base;
        } else if (had > base) {
            const char *node = json_string_value(json_object_get(m, "node"));
            snprintf(lost->node, sizeof(lost->node), "%s", node ? node : "?");
            lost->pid = (long)json_integer_value(json_object_get(m, "pid"));
            lost->count = had;
            lost->step = cel_lora_step_count(a->lora);
            count = 0;
        } else if (had < base) {
            count = 0; /* reported lost before: what the checkpoint carries is void */
        }
    }
    json_decref(m);
    if (count == 0 && base > 0) cel_lora_zero_grad(a->lora);
    a->grad_count = count;
    a->has_grads = count > 0;
    if (lost->count) {
        cel_warn("Adapter %s: gradients of %d forward_backward call(s) since step %d were lost "
                 "with node %s (pid %ld)",
                 a->id, lost->count, lost->step, lost->node, lost->pid);
    } else if (count > 0) {
        cel_info("Adapter %s: took over gradients of %d forward_backward call(s) at step %d", a->id,
                 count, cel_lora_step_count(a->lora));
    }
    /* the marker names this process from now on (for anyone refused meanwhile) and what it
     * holds: a loss is reported once, and a count of 0 voids what the checkpoint carries */
    write_marker(s, a, count, NULL);
    return CEL_OK;
}

void cel_adapters_release(cel_adapters_t *s, cel_adapter_t *a) {
    if (a->has_grads || a->ckpt_grads) cel_lora_zero_grad(a->lora);
    a->has_grads = 0;
    a->grad_count = 0;
    if (a->hold_fd < 0) return;
    /* none pending (and a checkpoint that still carries gradients needs a marker of 0 to
     * void them); the file stays, to be rewritten in place by the next holder */
    write_marker(s, a, 0, NULL);
    close(a->hold_fd);
    a->hold_fd = -1;
    close_marker(a);
}

void cel_adapters_forfeit(cel_adapters_t *s, cel_adapter_t *a) {
    (void)s;
    cel_lora_zero_grad(a->lora);
    a->has_grads = 0;
    a->grad_count = 0;
    if (a->hold_fd < 0) return;
    cel_warn("Adapter %s: its accumulated gradients were dropped; the next call that needs them "
             "reports them lost",
             a->id);
    close(a->hold_fd); /* the marker stays: it counts what was dropped */
    a->hold_fd = -1;
    close_marker(a);
}

int cel_adapters_note_grads(cel_adapters_t *s, cel_adapter_t *a, const char *task_id,
                            cel_err_t *err) {
    a->has_grads = 1;
    a->grad_count++;
    size_t n = task_id ? strlen(task_id) : 0;
    if (n > CEL_ADAPTERS_TASK_ID_MAX) n = 0; /* not named: a loss of it is reported */
    memcpy(a->last_fb, task_id ? task_id : "", n);
    a->last_fb[n] = '\0';
    double t0 = cel_adapters_now_ms();
    int rc = write_marker(s, a, a->grad_count, err);
    if (cel_adapters_phase_times())
        cel_info("Phase times adapter %s forward_backward: marker=%.3f", a->id,
                 cel_adapters_now_ms() - t0);
    return rc;
}

int cel_adapters_grad_count(const cel_adapter_t *a) { return a->has_grads ? a->grad_count : 0; }

int cel_adapters_handback(cel_adapters_t *s) {
    int n = 0;
    for (int i = 0; i < s->n_loaded; i++) {
        cel_adapter_t *a = s->loaded[i];
        if (!a->has_grads || a->hold_fd < 0) continue;
        cel_err_t err;
        int rc = cel_adapters_write_ckpt(s, a, NULL, NULL, 1, &err);
        if (rc != CEL_OK) {
            cel_error("Adapter %s: could not hand back its gradients of %d forward_backward "
                      "call(s): %s",
                      a->id, a->grad_count, err.msg);
            continue; /* the marker stays: the next holder reports them lost */
        }
        cel_info("Adapter %s: handed back with gradients of %d forward_backward call(s) (%s)",
                 a->id, a->grad_count, a->ckpt);
        unlink_marker(s, a);
        close(a->hold_fd);
        a->hold_fd = -1;
        a->has_grads = 0;
        n++;
    }
    return n;
}
