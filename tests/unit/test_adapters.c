/* test_adapters.c -- the adapter store shared by several workers (executor/adapters.c, issue 15).
 *
 * Two or more stores opened on one state directory stand for workers on one
 * machine or NFS: flock locks taken through separate open() calls conflict even
 * within this one process, and freeing a store closes its descriptors as a
 * process that dies does. Checks: a live holder makes others refuse
 * (CEL_ESTATE naming its node), a dead one's gradients are reported lost once,
 * a warm shutdown's hand-back carries the gradients to the next holder (and a
 * later loss of them is reported, then voided), a writer whose adapter moved
 * on never overwrites nor prunes the newer checkpoint, temp names carry the
 * node, and a checkpoint (one sync pass, issue 17) is complete, leaves no temp
 * file, survives the leftovers of a writer killed midway and keeps each step's
 * result for a redelivery, and a file written atomically replaces the old one
 * whole or leaves no temp file. A tiny random model; no executor, no broker.
 */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../common/log.h"
#include "../../executor/adapters_internal.h"
#include "../../model/internal.h"
#include "../../model/model.h"
#include "tiny_model.h"

typedef struct fixture {
    char dir[64];
    cel_model_t *m;
} fixture_t;

static int setup(void **state) {
    fixture_t *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/celeriac-test-adapters-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    f->m = tiny_model_new();
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture_t *f = *state;
    unsetenv("CELERIAC_CKPT_LOG_STEPS");
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    if (system(cmd) != 0) return -1;
    cel_model_free(f->m);
    free(f);
    return 0;
}

/* A store on the fixture's directory for node. */
static cel_adapters_t *open_store(fixture_t *f, const char *node) {
    cel_adapters_t *s;
    cel_err_t err;
    if (cel_adapters_open(f->m, f->dir, "base", NULL, 0, &s, &err) != CEL_OK)
        fail_msg("open: %s", err.msg);
    cel_adapters_set_node(s, node);
    return s;
}

static cel_adapter_t *create(cel_adapters_t *s) {
    cel_lora_config_t lc = { .rank = 2, .alpha = 4, .targets = CEL_LORA_ALL, .seed = 3 };
    cel_adapter_t *a;
    cel_err_t err;
    if (cel_adapters_create(s, &lc, NULL, &a, &err) != CEL_OK) fail_msg("create: %s", err.msg);
    return a;
}

/* create(s), its id copied into id (the adapter object may be evicted later). */
static cel_adapter_t *create_id(cel_adapters_t *s, char id[CEL_ADAPTERS_ID_LEN + 1]) {
    cel_adapter_t *a = create(s);
    snprintf(id, CEL_ADAPTERS_ID_LEN + 1, "%s", cel_adapters_id(a));
    return a;
}

static cel_adapter_t *get(cel_adapters_t *s, const char *id) {
    cel_adapter_t *a;
    cel_err_t err;
    if (cel_adapters_get(s, id, &a, &err) != CEL_OK) fail_msg("get %s: %s", id, err.msg);
    return a;
}

/* Holds a, expecting no loss. */
static void hold(cel_adapters_t *s, cel_adapter_t *a) {
    cel_adapters_lost_t lost;
    cel_err_t err;
    if (cel_adapters_hold(s, a, NULL, &lost, &err) != CEL_OK) fail_msg("hold: %s", err.msg);
    assert_int_equal(lost.count, 0);
}

/* Holds a, expecting the loss of count forward_backward calls made on node; returns the report. */
static cel_adapters_lost_t hold_lost(cel_adapters_t *s, cel_adapter_t *a, int count,
                                     const char *node) {
    cel_adapters_lost_t lost;
    cel_err_t err;
    if (cel_adapters_hold(s, a, NULL, &lost, &err) != CEL_OK) fail_msg("hold: %s", err.msg);
    assert_int_equal(lost.count, count);
    assert_string_equal(lost.node, node);
    return lost;
}

/* Gives a's gradient block recognisable values, as forward_backward would. */
static void fake_grads(cel_adapter_t *a, float base) {
    cel_lora_t *l = cel_adapters_lora(a);
    for (size_t i = 0; i < l->n; i++) l->g[i] = base + (float)i * 1e-3f;
}

/* The commit of the step a just made, as a worker's: task-<n> with the result
 * {"step": n}, n the step it reached. */
static void commit_step(cel_adapters_t *s, cel_adapter_t *a) {
    cel_err_t err;
    int step = cel_lora_step_count(cel_adapters_lora(a));
    char task[32];
    snprintf(task, sizeof(task), "task-%d", step);
    json_t *res = json_pack("{s:i}", "step", step);
    assert_int_equal(cel_adapters_commit(s, a, task, res, &err), CEL_OK);
    json_decref(res);
}

/* One training step of a as a worker runs it: hold, a forward_backward's
 * gradients (fake_grads(base)), an AdamW step, then the commit of task-<n>
 * with the result {"step": n}, n the step it reached. */
static void train_step(cel_adapters_t *s, cel_adapter_t *a, float base) {
    cel_err_t err;
    cel_adamw_t opt = { .lr = 1e-2f };
    hold(s, a);
    fake_grads(a, base);
    assert_int_equal(cel_adapters_note_grads(s, a, NULL, &err), CEL_OK);
    assert_int_equal(cel_lora_step(cel_adapters_lora(a), &opt, NULL, &err), CEL_OK);
    commit_step(s, a);
}

/* a keeps task-<step>'s result for a redelivery: done at step, {"step": step}. */
static void assert_step_result(cel_adapter_t *a, int step) {
    char task[32];
    int done = 0;
    snprintf(task, sizeof(task), "task-%d", step);
    json_t *r = cel_adapters_step_result(a, task, &done);
    if (!r) fail_msg("no result kept for %s", task);
    assert_int_equal(done, step);
    assert_int_equal(json_integer_value(json_object_get(r, "step")), step);
}

/* Checkpoints of adapter id on disk: the checkpoint file (one), plus any
 * checkpoint directory of a store from before it. */
static int count_ckpts(fixture_t *f, const char *id) {
    cel_adapters_settle(); /* prune removes in the background */
    char p[256];
    snprintf(p, sizeof(p), "%s/adapters/%s", f->dir, id);
    DIR *d = opendir(p);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "ckpt-", 5) == 0 || strcmp(e->d_name, CKPT_FILE) == 0) n++;
    closedir(d);
    return n;
}

/* The names in dir (sorted, comma-joined, "." entries left out) into out. */
static void list_dir(const char *dir, char *out, size_t len) {
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, alphasort);
    assert_true(n >= 0);
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (ents[i]->d_name[0] != '.') {
            size_t used = strlen(out);
            snprintf(out + used, len - used, "%s%s", used ? "," : "", ents[i]->d_name);
        }
        free(ents[i]);
    }
    free(ents);
}

/* The name of adapter id's current checkpoint (its checkpoint file's current record). */
static void read_current(fixture_t *f, const char *id, char *name, size_t len) {
    char adir[256];
    cel_err_t err;
    assert_true(len >= CKPT_NAME_MAX);
    snprintf(adir, sizeof(adir), "%s/adapters/%s", f->dir, id);
    if (cel_ckpt_file_read(adir, NULL, NULL, name, NULL, NULL, NULL, &err) != CEL_OK)
        fail_msg("read %s: %s", adir, err.msg);
}

/* cel_adapters_write_file, synced or not: the file appears whole under its
 * name, replacing an older one; a rename that fails (onto a directory) or a
 * temp file that cannot be created (no such directory) is CEL_EIO naming the
 * path, and no temp file is left. */
static void test_write_file(void **state) {
    fixture_t *f = *state;
    char path[256], names[256];
    char *buf;
    size_t len;
    cel_err_t err;
    snprintf(path, sizeof(path), "%s/f.json", f->dir);
    for (int nosync = 0; nosync <= 1; nosync++) {
        const char *text = nosync ? "second" : "first, and longer";
        assert_int_equal(
            cel_adapters_write_file(f->dir, "f.json", text, strlen(text), nosync, &err), CEL_OK);
        assert_int_equal(cel_adapters_read_file(path, 64, &buf, &len, &err), CEL_OK);
        assert_string_equal(buf, text);
        assert_int_equal(len, strlen(text));
        free(buf);
        list_dir(f->dir, names, sizeof(names));
        assert_string_equal(names, "f.json");
    }
    snprintf(path, sizeof(path), "%s/d", f->dir);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(cel_adapters_write_file(f->dir, "d", "x", 1, 0, &err), CEL_EIO);
    assert_non_null(strstr(err.msg, "/d: "));
    list_dir(f->dir, names, sizeof(names));
    assert_string_equal(names, "d,f.json");
    snprintf(path, sizeof(path), "%s/missing", f->dir);
    assert_int_equal(cel_adapters_write_file(path, "f.json", "x", 1, 0, &err), CEL_EIO);
    assert_non_null(strstr(err.msg, "/missing/f.json.tmp."));
    list_dir(f->dir, names, sizeof(names));
    assert_string_equal(names, "d,f.json");
}

/* Fills [off, end) of the file at path with garbage (a writer killed midway). */
static void scribble(const char *path, off_t off, off_t end) {
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    char junk[4096];
    memset(junk, 0xa5, sizeof(junk));
    for (off_t at = off; at < end; at += (off_t)sizeof(junk)) {
        size_t n = end - at < (off_t)sizeof(junk) ? (size_t)(end - at) : sizeof(junk);
        assert_int_equal(pwrite(fd, junk, n, at), (ssize_t)n);
    }
    close(fd);
}

/* Checkpoints live in the adapter's checkpoint file (issue 17): after two steps
 * its directory holds the file, the marker and the lock, no temp name; the
 * steps rewrote the file in place (same inode); a fresh store (another
 * process) reads the weights, moments, step and each step's result back. The
 * leftovers of writers killed midway -- garbage over the free slot and the
 * older record (an in-place write torn), the temp file of a whole-file write
 * an hour old -- change nothing a reader sees, and the next step lands and
 * clears the old temp file. */
static void test_checkpoint_one_pass(void **state) {
    fixture_t *f = *state;
    setenv("CELERIAC_CKPT_LOG_STEPS", "0", 1); /* full checkpoints: the slots */
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1], adir[256], path[512], names[1024], name[64], want[512];
    cel_adapter_t *a = create_id(sa, id);
    snprintf(adir, sizeof(adir), "%s/adapters/%s", f->dir, id);
    snprintf(path, sizeof(path), "%s/" CKPT_FILE, adir);
    struct stat st0, st1;
    assert_int_equal(stat(path, &st0), 0);
    for (int step = 1; step <= 2; step++) train_step(sa, a, 0.5f * (float)step);
    assert_int_equal(stat(path, &st1), 0);
    assert_int_equal(st0.st_ino, st1.st_ino);
    read_current(f, id, name, sizeof(name));
    assert_int_equal(strncmp(name, "ckpt-000002-", 12), 0);
    cel_adapters_settle();
    list_dir(adir, names, sizeof(names));
    assert_string_equal(names, "checkpoint,grads.json,lock"); /* (a marker of 0) */
    cel_lora_t *la = cel_adapters_lora(a);

    /* three writes so far (create, two steps): the current record is record 1
     * (at 4096) naming slot 0 from 8192; record 0 and slot 1 are free */
    long long len = 0;
    cel_err_t err;
    assert_int_equal(cel_ckpt_file_read(adir, NULL, NULL, NULL, NULL, NULL, &len, &err), CEL_OK);
    scribble(path, 0, 512);
    scribble(path, 8192 + len, st1.st_size);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd),
             "echo x > '%s/checkpoint.tmp.dead@host.99999' && "
             "touch -d '-1 hour' '%s/checkpoint.tmp.dead@host.99999' && "
             "echo x > '%s/grads.json.tmp.live@host.1'",
             adir, adir, adir);
    assert_int_equal(system(cmd), 0);
    cel_adapters_t *sb = open_store(f, "b@host");
    cel_adapter_t *b = get(sb, id);
    cel_lora_t *lb = cel_adapters_lora(b);
    assert_int_equal(cel_lora_step_count(lb), 2);
    assert_int_equal(memcmp(la->w, lb->w, la->n * sizeof(float)), 0);
    assert_int_equal(memcmp(la->m, lb->m, la->n * sizeof(float)), 0);
    assert_int_equal(memcmp(la->v, lb->v, la->n * sizeof(float)), 0);
    for (int step = 1; step <= 2; step++) assert_step_result(b, step);
    /* the next step (here on b, the new holder) lands in place, over the garbage */
    train_step(sb, b, 0.25f);
    read_current(f, id, name, sizeof(name));
    assert_int_equal(strncmp(name, "ckpt-000003-", 12), 0);
    assert_int_equal(count_ckpts(f, id), 1);
    assert_int_equal(stat(path, &st0), 0);
    assert_int_equal(st0.st_ino, st1.st_ino);
    /* and the dead writer's temp, an hour old, is gone; a fresh temp name stays */
    cel_adapters_settle();
    list_dir(adir, names, sizeof(names));
    snprintf(want, sizeof(want), "checkpoint,grads.json,grads.json.tmp.live@host.1,lock");
    assert_string_equal(names, want);
    cel_adapters_t *sc = open_store(f, "c@host");
    cel_adapter_t *c = get(sc, id);
    assert_int_equal(cel_lora_step_count(cel_adapters_lora(c)), 3);
    for (int step = 1; step <= 3; step++) assert_step_result(c, step);
    cel_adapters_free(sc);
    cel_adapters_free(sb);
    cel_adapters_free(sa);
}

/* A damaged checkpoint file (random bytes overwritten anywhere: the records,
 * the archive heads, the data) is read as one of the two checkpoints it holds,
 * whole, or refused with an error; never a mix, never a crash (ASan). */
static void test_damaged_file_is_refused_or_whole(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1], path[512];
    cel_adapter_t *a = create_id(sa, id);
    train_step(sa, a, 0.5f);
    cel_lora_t *la = cel_adapters_lora(a);
    size_t nw = la->n;
    float *w1 = malloc(nw * sizeof(float));
    memcpy(w1, la->w, nw * sizeof(float));
    train_step(sa, a, 0.25f);
    float *w2 = malloc(nw * sizeof(float));
    memcpy(w2, la->w, nw * sizeof(float));
    cel_adapters_free(sa);
    snprintf(path, sizeof(path), "%s/adapters/%s/" CKPT_FILE, f->dir, id);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    unsigned char *orig = malloc((size_t)size);
    fseek(fp, 0, SEEK_SET);
    assert_int_equal(fread(orig, 1, (size_t)size, fp), (size_t)size);
    fclose(fp);
    long long len = 0;
    char adir[256];
    snprintf(adir, sizeof(adir), "%s/adapters/%s", f->dir, id);
    unsigned seed = 12345;
    int loaded = 0, refused = 0;
    for (int round = 0; round < 300; round++) {
        unsigned char *img = malloc((size_t)size);
        memcpy(img, orig, (size_t)size);
        int hits = 1 + (int)(rand_r(&seed) % 4);
        for (int h = 0; h < hits; h++) {
            /* half the hits on the records and the first archive heads, half anywhere */
            long at = rand_r(&seed) % 2 ? (long)(rand_r(&seed) % 9000)
                                        : (long)(rand_r(&seed) % (unsigned)size);
            img[at] ^= (unsigned char)(1 + rand_r(&seed) % 255);
        }
        int fd = open(path, O_WRONLY | O_TRUNC);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, img, (size_t)size), size);
        close(fd);
        free(img);
        cel_adapters_t *rs = open_store(f, "reader@host");
        cel_adapter_t *b;
        cel_err_t err;
        int rc = cel_adapters_get(rs, id, &b, &err);
        if (rc == CEL_OK) {
            cel_lora_t *lb = cel_adapters_lora(b);
            int step = cel_lora_step_count(lb);
            assert_true(step == 1 || step == 2);
            assert_int_equal(memcmp(step == 1 ? w1 : w2, lb->w, nw * sizeof(float)), 0);
            loaded++;
        } else {
            assert_true(rc == CEL_EPROTO || rc == CEL_EAGAIN || rc == CEL_ESTATE ||
                        rc == CEL_EIO || rc == CEL_ENOTFOUND || rc == CEL_EINVAL);
            refused++;
        }
        json_t *info = NULL;
        if (cel_adapters_info(rs, id, &info, &err) == CEL_OK) json_decref(info);
        len = -1; /* the records alone: a length inside the file, or an error */
        if (cel_ckpt_file_read(adir, NULL, NULL, NULL, NULL, NULL, &len, NULL) == CEL_OK)
            assert_true(len > 0 && len < size);
        cel_adapters_free(rs);
    }
    assert_true(loaded > 0 && refused > 0);
    free(orig);
    free(w1);
    free(w2);
}

/* The per-owner byte quota counts a checkpoint file's blocks on disk: after a
 * step it holds two checkpoints, so a second adapter that fits beside a new
 * one no longer fits beside a trained one. */
static void test_quota_counts_both_slots(void **state) {
    fixture_t *f = *state;
    setenv("CELERIAC_CKPT_LOG_STEPS", "0", 1); /* full checkpoints: the slots */
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1], adir[256];
    cel_adapter_t *a = create_id(sa, id);
    snprintf(adir, sizeof(adir), "%s/adapters/%s", f->dir, id);
    long long len = 0;
    cel_err_t err;
    assert_int_equal(cel_ckpt_file_read(adir, NULL, NULL, NULL, NULL, NULL, &len, &err), CEL_OK);
    cel_adapters_limits_t lim = { .max_bytes_per_owner = len * 5 / 2 + 16384 };
    cel_adapters_set_limits(sa, &lim);
    cel_adapter_t *b;
    assert_int_equal(cel_adapters_create(sa, &(cel_lora_config_t){ .rank = 2, .alpha = 4,
                                                                  .targets = CEL_LORA_ALL,
                                                                  .seed = 4 },
                                         NULL, &b, &err),
                     CEL_OK);
    assert_int_equal(cel_adapters_delete(sa, cel_adapters_id(b), &err), CEL_OK); /* frees b */
    a = get(sa, id);
    train_step(sa, a, 0.5f);
    assert_int_equal(cel_adapters_create(sa, &(cel_lora_config_t){ .rank = 2, .alpha = 4,
                                                                  .targets = CEL_LORA_ALL,
                                                                  .seed = 5 },
                                         NULL, &b, &err),
                     CEL_ELIMIT);
    assert_non_null(strstr(err.msg, "--max-adapter-bytes-per-owner"));
    cel_adapters_free(sa);
}

/* A step whose checkpoint no longer fits the file's slots (a 300 kB result
 * kept for redelivery) writes a new file whole (a new inode, renamed in); the
 * steps after it are in place again; a fresh store reads it all back. */
static void test_checkpoint_outgrows_its_file(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1], path[512];
    cel_adapter_t *a = create_id(sa, id);
    snprintf(path, sizeof(path), "%s/adapters/%s/" CKPT_FILE, f->dir, id);
    struct stat st0, st1, st2;
    assert_int_equal(stat(path, &st0), 0);
    cel_err_t err;
    cel_adamw_t opt = { .lr = 1e-2f };
    hold(sa, a);
    fake_grads(a, 0.5f);
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    assert_int_equal(cel_lora_step(cel_adapters_lora(a), &opt, NULL, &err), CEL_OK);
    char *blob = malloc(300001);
    memset(blob, 'x', 300000);
    blob[300000] = '\0';
    json_t *res = json_pack("{s:i, s:s}", "step", 1, "blob", blob);
    assert_int_equal(cel_adapters_commit(sa, a, "task-1", res, &err), CEL_OK);
    json_decref(res);
    free(blob);
    assert_int_equal(stat(path, &st1), 0);
    assert_int_not_equal(st0.st_ino, st1.st_ino);
    train_step(sa, a, 0.25f);
    assert_int_equal(stat(path, &st2), 0);
    assert_int_equal(st1.st_ino, st2.st_ino);
    assert_int_equal(count_ckpts(f, id), 1);
    cel_adapters_t *sb = open_store(f, "b@host");
    cel_adapter_t *b = get(sb, id);
    assert_int_equal(cel_lora_step_count(cel_adapters_lora(b)), 2);
    assert_step_result(b, 2);
    int done = 0;
    json_t *r = cel_adapters_step_result(b, "task-1", &done);
    assert_non_null(r);
    assert_int_equal(strlen(json_string_value(json_object_get(r, "blob"))), 300000);
    cel_adapters_free(sb);
    cel_adapters_free(sa);
}

/* A store from before the checkpoint file (`current` naming a checkpoint
 * directory of the four files) is read as it is; the adapter's next step
 * moves it into the file, and `current` and the directory go. */
static void test_legacy_store_moves_to_the_file(void **state) {
    fixture_t *f = *state;
    setenv("CELERIAC_CKPT_LOG_STEPS", "0", 1); /* full checkpoints: the slots */
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1], adir[256], dir[512], p[640], names[1024], name[64];
    cel_adapter_t *a = create_id(sa, id);
    train_step(sa, a, 0.5f);
    cel_lora_t *la = cel_adapters_lora(a);
    float *w1 = malloc(la->n * sizeof(float));
    memcpy(w1, la->w, la->n * sizeof(float));
    size_t nw = la->n;
    snprintf(adir, sizeof(adir), "%s/adapters/%s", f->dir, id);
    snprintf(dir, sizeof(dir), "%s/ckpt-000001-00000000cafebabe", adir);
    cel_lora_image_t img = { 0 };
    cel_err_t err;
    assert_int_equal(cel_ckpt_file_read(adir, NULL, NULL, NULL, &img, NULL, NULL, &err), CEL_OK);
    assert_int_equal(img.n, 4);
    assert_int_equal(mkdir(dir, 0700), 0);
    for (int i = 0; i < img.n; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, img.f[i].name);
        FILE *fp = fopen(p, "wb");
        assert_non_null(fp);
        assert_int_equal(fwrite(img.f[i].data, 1, img.f[i].len, fp), img.f[i].len);
        fclose(fp);
    }
    cel_lora_image_free(&img);
    snprintf(p, sizeof(p), "%s/" CKPT_FILE, adir);
    assert_int_equal(unlink(p), 0);
    snprintf(p, sizeof(p), "%s/current", adir);
    FILE *fp = fopen(p, "w");
    fputs("ckpt-000001-00000000cafebabe\n", fp);
    fclose(fp);
    cel_adapters_free(sa);

    cel_adapters_t *sb = open_store(f, "b@host");
    assert_int_equal(cel_adapters_read_current(sb, id, name, &err), CEL_OK);
    assert_string_equal(name, "ckpt-000001-00000000cafebabe");
    cel_adapter_t *b = get(sb, id);
    cel_lora_t *lb = cel_adapters_lora(b);
    assert_int_equal(cel_lora_step_count(lb), 1);
    assert_int_equal(lb->n, nw);
    assert_int_equal(memcmp(w1, lb->w, nw * sizeof(float)), 0);
    free(w1);
    assert_step_result(b, 1);
    json_t *info = NULL;
    assert_int_equal(cel_adapters_info(sb, id, &info, &err), CEL_OK);
    json_decref(info);
    train_step(sb, b, 0.25f);
    cel_adapters_settle();
    list_dir(adir, names, sizeof(names));
    assert_string_equal(names, "checkpoint,grads.json,lock");
    read_current(f, id, name, sizeof(name));
    assert_int_equal(strncmp(name, "ckpt-000002-", 12), 0);
    cel_adapters_t *sc = open_store(f, "c@host");
    cel_adapter_t *c = get(sc, id);
    assert_int_equal(cel_lora_step_count(cel_adapters_lora(c)), 2);
    for (int step = 1; step <= 2; step++) assert_step_result(c, step);
    cel_adapters_free(sc);
    cel_adapters_free(sb);
}

/* Readers never see a half-written checkpoint: a child process steps an
 * adapter as fast as it can while this one loads it afresh again and again;
 * every load succeeds (a read that raced a write is read again), and the
 * step in the optimizer state always matches the checkpoint's name. */
static void test_readers_race_a_writer(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *s = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1];
    create_id(s, id);
    cel_adapters_free(s);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        cel_adapters_t *cs = open_store(f, "child@host");
        cel_adapter_t *a = get(cs, id);
        for (int i = 0; i < 400; i++) train_step(cs, a, 0.01f * (float)i);
        cel_adapters_free(cs);
        _exit(0);
    }
    int loads = 0, last = -1, status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        cel_adapters_t *rs = open_store(f, "reader@host");
        cel_adapter_t *a;
        cel_err_t err;
        int rc = cel_adapters_get(rs, id, &a, &err);
        if (rc != CEL_OK) fail_msg("load %d: %s", loads, err.msg);
        int step = cel_lora_step_count(cel_adapters_lora(a));
        assert_int_equal(atoi(a->ckpt + 5), step);
        assert_true(step >= last);
        last = step;
        loads++;
        cel_adapters_free(rs);
    }
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(loads > 10);
}

/* kill -9 at any point of a step: a child process steps an adapter and reports
 * each step once its commit returned (the result the worker would send); it is
 * killed at a varying point of a later step. Another store then loads a
 * complete checkpoint at the last reported step or the one after, and every
 * reported step's result is there for a redelivery. */
static void test_kill9_during_checkpoint(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *s = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1];
    create_id(s, id);
    cel_adapters_free(s);
    int reported = 0;
    for (int round = 0; round < 12; round++) {
        int pfd[2];
        assert_int_equal(pipe(pfd), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(pfd[0]);
            cel_adapters_t *cs = open_store(f, "child@host");
            cel_err_t err;
            cel_adapter_t *a;
            cel_adamw_t opt = { .lr = 1e-2f };
            for (;;) {
                if (cel_adapters_get(cs, id, &a, &err) != CEL_OK) _exit(2);
                cel_adapters_lost_t lost;
                if (cel_adapters_hold(cs, a, NULL, &lost, &err) != CEL_OK) _exit(3);
                fake_grads(a, 0.1f);
                if (cel_adapters_note_grads(cs, a, NULL, &err) != CEL_OK) _exit(4);
                if (cel_lora_step(cel_adapters_lora(a), &opt, NULL, &err) != CEL_OK) _exit(5);
                int step = cel_lora_step_count(cel_adapters_lora(a));
                char task[32];
                snprintf(task, sizeof(task), "task-%d", step);
                json_t *res = json_pack("{s:i}", "step", step);
                if (cel_adapters_commit(cs, a, task, res, &err) != CEL_OK) _exit(6);
                json_decref(res);
                if (write(pfd[1], &step, sizeof(step)) != sizeof(step)) _exit(7);
            }
        }
        close(pfd[1]);
        int step = 0, want = 1 + round % 3;
        for (int got = 0; got < want; got++)
            assert_int_equal(read(pfd[0], &step, sizeof(step)), sizeof(step));
        /* vary the point of the next step the kill lands in (not a wait for anything) */
        usleep((useconds_t)(round * 700));
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        int more;
        while (read(pfd[0], &more, sizeof(more)) == sizeof(more)) step = more;
        close(pfd[0]);
        reported = step;
        cel_adapters_t *rs = open_store(f, "reader@host");
        cel_adapter_t *a = get(rs, id);
        int now = cel_lora_step_count(cel_adapters_lora(a));
        assert_true(now == reported || now == reported + 1);
        for (int k = reported; k > 0 && k > reported - 8; k--) assert_step_result(a, k);
        cel_adapters_free(rs);
    }
    assert_true(reported >= 12);
}

/* The adapter's state read back by a fresh store equals the live one bit for
 * bit (weights, both moments, the step), and keeps every step's result. */
static void assert_same_on_disk(fixture_t *f, const char *id, cel_adapter_t *live) {
    cel_adapters_t *rs = open_store(f, "reader@host");
    cel_adapter_t *b = get(rs, id);
    cel_lora_t *la = cel_adapters_lora(live), *lb = cel_adapters_lora(b);
    assert_int_equal(cel_lora_step_count(lb), cel_lora_step_count(la));
    assert_int_equal(memcmp(la->w, lb->w, la->n * sizeof(float)), 0);
    assert_int_equal(memcmp(la->m, lb->m, la->n * sizeof(float)), 0);
    assert_int_equal(memcmp(la->v, lb->v, la->n * sizeof(float)), 0);
    for (int k = cel_lora_step_count(la); k > 0 && k > cel_lora_step_count(la) - 8; k--)
        assert_step_result(b, k);
    cel_adapters_free(rs);
}

/* Logged steps in adapter id's checkpoint now (the current record's nlog). */
static int logged_steps(fixture_t *f, const char *id) {
    char adir[256];
    cel_err_t err;
    snprintf(adir, sizeof(adir), "%s/adapters/%s", f->dir, id);
    cel_lora_image_t img = { 0 };
    cel_ckpt_log_t *log = calloc(1, sizeof(*log));
    assert_non_null(log);
    if (cel_ckpt_file_read(adir, NULL, NULL, NULL, &img, log, NULL, &err) != CEL_OK)
        fail_msg("read %s: %s", adir, err.msg);
    int n = log->n;
    cel_lora_image_free(&img);
    cel_ckpt_log_free(log);
    free(log);
    return n;
}

/* The step log (issue 17): with room for 3 entries, steps 1-3 go to the log
 * (the file's inode unchanged), step 4 is a full checkpoint, 5-7 logged again,
 * 8 full; after every step a fresh store replays the log to the live state bit
 * for bit, gradient clipping and changing hyper-parameters included. A write
 * without a new step (the hand-over's, with gradients) is a full checkpoint. */
static void test_step_log_replays_bit_for_bit(void **state) {
    fixture_t *f = *state;
    setenv("CELERIAC_CKPT_LOG_STEPS", "3", 1);
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1], path[512];
    cel_adapter_t *a = create_id(sa, id);
    snprintf(path, sizeof(path), "%s/adapters/%s/" CKPT_FILE, f->dir, id);
    struct stat st0, st1;
    assert_int_equal(stat(path, &st0), 0);
    assert_int_equal(logged_steps(f, id), 0);
    cel_err_t err;
    for (int step = 1; step <= 8; step++) {
        /* lr and clipping change from step to step; step 2 and 6 clip */
        cel_adamw_t opt = { .lr = 1e-2f / (float)step,
                            .beta1 = 0.9f,
                            .beta2 = 0.999f,
                            .eps = 1e-8f,
                            .weight_decay = 0.01f * (float)(step % 3),
                            .grad_clip = step % 4 == 2 ? 0.05f : 0.0f };
        hold(sa, a);
        fake_grads(a, 0.3f * (float)step - 1.0f);
        assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
        assert_int_equal(cel_lora_step(cel_adapters_lora(a), &opt, NULL, &err), CEL_OK);
        commit_step(sa, a);
        assert_int_equal(logged_steps(f, id), step % 4);
        assert_same_on_disk(f, id, a);
    }
    assert_int_equal(stat(path, &st1), 0);
    assert_int_equal(st0.st_ino, st1.st_ino); /* no new file after the first */
    /* a hand-over (gradients pending, no new step) is a full checkpoint */
    hold(sa, a);
    fake_grads(a, 0.7f);
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    assert_int_equal(cel_adapters_write_ckpt(sa, a, NULL, NULL, 1, &err), CEL_OK);
    assert_int_equal(logged_steps(f, id), 0);
    cel_adapters_free(sa);
}

/* One training step with the gradients written ahead after the forward_backward
 * (as the executor does when idle): fake_grads(base), then opt (clip: grad_clip). */
static void step_ahead(cel_adapters_t *s, cel_adapter_t *a, float base, float again,
                       float clip) {
    cel_err_t err;
    cel_adamw_t opt = { .lr = 1e-2f,
                        .beta1 = 0.9f,
                        .beta2 = 0.999f,
                        .eps = 1e-8f,
                        .weight_decay = 0.01f,
                        .grad_clip = clip };
    hold(s, a);
    fake_grads(a, base);
    assert_int_equal(cel_adapters_note_grads(s, a, NULL, &err), CEL_OK);
    cel_adapters_prewrite(s, cel_adapters_id(a));
    if (again != 0.0f) { /* another forward_backward after the write ahead */
        cel_lora_t *l = cel_adapters_lora(a);
        for (size_t i = 0; i < l->n; i++) l->g[i] += again;
    }
    assert_int_equal(cel_lora_step(cel_adapters_lora(a), &opt, NULL, &err), CEL_OK);
    commit_step(s, a);
}

/* The gradients written ahead (issue 17): a step that applies exactly them
 * writes the rest of its log entry only; one whose gradient changed since
 * (another forward_backward, clipping) writes it all; either way a fresh store
 * reads the live state bit for bit, and a gradient written ahead of a step
 * that never came (a crash) changes nothing. */
static void test_step_log_written_ahead(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1];
    cel_adapter_t *a = create_id(sa, id);
    step_ahead(sa, a, 0.5f, 0.0f, 0.0f);
    assert_int_equal(sa->ahead_used, 1);
    assert_same_on_disk(f, id, a);
    step_ahead(sa, a, 0.25f, 0.125f, 0.0f); /* changed after the write ahead */
    assert_int_equal(sa->ahead_used, 1);
    assert_same_on_disk(f, id, a);
    step_ahead(sa, a, 0.75f, 0.0f, 0.01f); /* clipped: not the gradient written */
    assert_int_equal(sa->ahead_used, 1);
    assert_same_on_disk(f, id, a);
    step_ahead(sa, a, -0.5f, 0.0f, 0.0f);
    assert_int_equal(sa->ahead_used, 2);
    assert_same_on_disk(f, id, a);
    assert_int_equal(logged_steps(f, id), 4);
    /* written ahead, then the process dies before its step */
    hold(sa, a);
    fake_grads(a, 0.3f);
    cel_err_t err;
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    cel_adapters_prewrite(sa, cel_adapters_id(a));
    cel_adapters_t *rs = open_store(f, "reader@host");
    cel_adapter_t *b;
    assert_int_equal(cel_adapters_get(rs, id, &b, &err), CEL_OK);
    assert_int_equal(cel_lora_step_count(cel_adapters_lora(b)), 4);
    assert_int_equal(memcmp(cel_adapters_lora(a)->w, cel_adapters_lora(b)->w,
                            cel_adapters_lora(a)->n * sizeof(float)),
                     0);
    cel_adapters_free(rs);
    cel_adapters_free(sa);
}

/* klog of the current record of the checkpoint file in dir (version 2, at 108). */
static unsigned record_klog(const char *dir) {
    char path[512];
    snprintf(path, sizeof(path), "%s/" CKPT_FILE, dir);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    unsigned char rec[4096 + 512];
    assert_int_equal(fread(rec, 1, sizeof(rec), fp), sizeof(rec));
    fclose(fp);
    /* a file just written whole: its one record is at 4096 (seq 1) */
    unsigned char *r = rec + 4096;
    assert_int_equal(memcmp(r, "CELCKPT1", 8), 0);
    return (unsigned)r[108] | (unsigned)r[109] << 8 | (unsigned)r[110] << 16 |
           (unsigned)r[111] << 24;
}

/* The step log is bounded (a reader holds the entries it replays): an adapter
 * whose weights are 9 MB gets 7 entries (8 would pass 64 MB), one of 65 MB
 * none, a small one the default 8. Images written straight to the file layer. */
static void test_step_log_bounded_for_big_adapters(void **state) {
    fixture_t *f = *state;
    static const size_t sizes[] = { 4096, 9u << 20, 65u << 20 };
    static const unsigned want[] = { 8, 7, 0 };
    for (int i = 0; i < 3; i++) {
        char dir[256];
        snprintf(dir, sizeof(dir), "%s/big%d", f->dir, i);
        assert_int_equal(mkdir(dir, 0700), 0);
        cel_lora_image_t img = { 0 };
        cel_err_t err;
        unsigned char *meta = (unsigned char *)strdup("{}");
        unsigned char *w = calloc(1, sizes[i]);
        assert_non_null(w);
        assert_int_equal(cel_lora_image_add(&img, "meta.json", meta, 2, &err), CEL_OK);
        assert_int_equal(cel_lora_image_add(&img, "adapter_model.safetensors", w, sizes[i], &err),
                         CEL_OK);
        assert_int_equal(
            cel_ckpt_file_write(dir, "", "ckpt-000000-0000000000000000", &img, NULL, NULL, NULL,
                                &err),
            CEL_OK);
        cel_lora_image_free(&img);
        assert_int_equal(record_klog(dir), want[i]);
    }
}

/* The executor's log goes to a temp file until log_captured() returns what
 * it holds (malloc'd) and sends it back to stderr. */
static int log_capture(void) {
    FILE *fp = tmpfile();
    assert_non_null(fp);
    int fd = dup(fileno(fp));
    fclose(fp);
    assert_true(fd >= 0);
    cel_log_init("MainProcess", CEL_LOG_WARNING, fd);
    return fd;
}

static char *log_captured(int fd) {
    cel_log_init("MainProcess", CEL_LOG_WARNING, -1);
    off_t n = lseek(fd, 0, SEEK_END);
    char *text = calloc(1, (size_t)n + 1);
    assert_non_null(text);
    assert_int_equal(pread(fd, text, (size_t)n, 0), n);
    close(fd);
    return text;
}

/* A log entry that a writer wrote but never named (a crash before its
 * record) does not count; a damaged newest record leaves the step before it,
 * whole; a damaged entry that the record names is refused, never half read. */
static void test_step_log_torn(void **state) {
    fixture_t *f = *state;
    setenv("CELERIAC_CKPT_LOG_STEPS", "4", 1);
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1], path[512];
    cel_adapter_t *a = create_id(sa, id);
    snprintf(path, sizeof(path), "%s/adapters/%s/" CKPT_FILE, f->dir, id);
    train_step(sa, a, 0.5f);
    cel_lora_t *la = cel_adapters_lora(a);
    size_t nw = la->n;
    float *w1 = malloc(nw * sizeof(float));
    memcpy(w1, la->w, nw * sizeof(float));
    char name1[CKPT_NAME_MAX];
    read_current(f, id, name1, sizeof(name1));
    train_step(sa, a, 0.25f);
    assert_int_equal(logged_steps(f, id), 2);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    /* the entries are at the end: 4 of equal size; garbage in the third (unnamed) */
    long ecap = 0;
    {
        /* ecap from the records: version 2, at 112 */
        FILE *fp = fopen(path, "rb");
        unsigned char rec[512];
        assert_int_equal(fread(rec, 1, sizeof(rec), fp), sizeof(rec));
        fclose(fp);
        for (int i = 7; i >= 0; i--) ecap = (ecap << 8) | rec[112 + i];
    }
    assert_true(ecap > 0 && 4 * ecap < st.st_size);
    long log0 = st.st_size - 4 * ecap;
    scribble(path, log0 + 2 * ecap, log0 + 3 * ecap);
    assert_same_on_disk(f, id, a);
    /* the newest record (seq 3, at 4096: create was seq 1) damaged: step 1, whole,
     * and the executor's log says so, naming the checkpoint read */
    scribble(path, 4096 + 16, 4096 + 24);
    int lfd = log_capture();
    cel_adapters_t *rs = open_store(f, "reader@host");
    cel_adapter_t *b = get(rs, id);
    char *said = log_captured(lfd);
    assert_non_null(strstr(said, "one of its two records is damaged"));
    assert_non_null(strstr(said, name1));
    free(said);
    assert_int_equal(cel_lora_step_count(cel_adapters_lora(b)), 1);
    assert_int_equal(memcmp(w1, cel_adapters_lora(b)->w, nw * sizeof(float)), 0);
    assert_step_result(b, 1);
    cel_adapters_free(rs);
    /* the first entry, which every record now names, damaged: refused */
    scribble(path, log0 + 100, log0 + 108);
    rs = open_store(f, "reader@host");
    cel_adapter_t *c;
    cel_err_t err;
    assert_int_equal(cel_adapters_get(rs, id, &c, &err), CEL_EPROTO);
    assert_non_null(strstr(err.msg, "damaged"));
    cel_adapters_free(rs);
    free(w1);
    cel_adapters_free(sa);
}

/* A live holder makes another store refuse; once it is gone its gradients are
 * reported lost, once, naming it. */
static void test_busy_then_lost_once(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host"), *sb = open_store(f, "b@host");
    char id[CEL_ADAPTERS_ID_LEN + 1];
    cel_adapter_t *a = create_id(sa, id);
    hold(sa, a);
    hold(sa, a); /* held already: a no-op */
    cel_err_t err;
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    assert_int_equal(cel_adapters_grad_count(a), 2);

    cel_adapter_t *b = get(sb, id);
    cel_adapters_lost_t lost;
    assert_int_equal(cel_adapters_hold(sb, b, NULL, &lost, &err), CEL_ESTATE);
    assert_non_null(strstr(err.msg, "held by node a@host"));
    assert_non_null(strstr(err.msg, "a@host.dq2"));

    cel_adapters_free(sa); /* the home dies: its lock goes with it */
    lost = hold_lost(sb, b, 2, "a@host");
    assert_int_equal(lost.step, 0);
    assert_int_equal(lost.pid, (long)getpid());
    assert_int_equal(cel_adapters_has_grads(b), 0);
    cel_adapters_release(sb, b);
    hold(sb, b); /* reported once */
    assert_int_equal(cel_adapters_has_grads(b), 0);
    cel_adapters_release(sb, b);
    cel_adapters_free(sb);
}

/* A warm shutdown's checkpoint carries the gradients to the next holder; the
 * next holder's death with more of them is reported, and after that report
 * the gradients the checkpoint carries count no more. */
static void test_handback(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1];
    cel_adapter_t *a = create_id(sa, id);
    cel_err_t err;
    hold(sa, a);
    fake_grads(a, 0.5f);
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    assert_int_equal(cel_adapters_handback(sa), 1);
    assert_int_equal(count_ckpts(f, id), 1); /* the step-0 checkpoint pruned */
    cel_adapters_free(sa);

    /* b takes them over: same values, same count, no error */
    cel_adapters_t *sb = open_store(f, "b@host");
    cel_adapter_t *b = get(sb, id);
    hold(sb, b);
    assert_int_equal(cel_adapters_grad_count(b), 2);
    cel_lora_t *l = cel_adapters_lora(b);
    for (size_t i = 0; i < l->n; i++) assert_true(l->g[i] == 0.5f + (float)i * 1e-3f);
    assert_int_equal(cel_adapters_note_grads(sb, b, NULL, &err), CEL_OK); /* a third call */
    cel_adapters_free(sb);                                          /* b dies holding 3 */

    cel_adapters_t *sc = open_store(f, "c@host");
    cel_adapter_t *c = get(sc, id);
    hold_lost(sc, c, 3, "b@host");
    l = cel_adapters_lora(c);
    for (size_t i = 0; i < l->n; i++) assert_true(l->g[i] == 0.0f);
    cel_adapters_release(sc, c);
    cel_adapters_free(sc);

    /* the checkpoint still holds the handed-back gradients: void now */
    cel_adapters_t *sd = open_store(f, "d@host");
    cel_adapter_t *d = get(sd, id);
    hold(sd, d);
    assert_int_equal(cel_adapters_has_grads(d), 0);
    l = cel_adapters_lora(d);
    for (size_t i = 0; i < l->n; i++) assert_true(l->g[i] == 0.0f);
    cel_adapters_release(sd, d);
    cel_adapters_free(sd);
}

/* b adopts a's handed-back gradients and dies without adding any: c still
 * takes them with no error. */
static void test_handback_survives_an_idle_holder(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1];
    cel_adapter_t *a = create_id(sa, id);
    cel_err_t err;
    hold(sa, a);
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    assert_int_equal(cel_adapters_handback(sa), 1);
    cel_adapters_free(sa);
    cel_adapters_t *sb = open_store(f, "b@host");
    hold(sb, get(sb, id));
    cel_adapters_free(sb);
    cel_adapters_t *sc = open_store(f, "c@host");
    cel_adapter_t *c = get(sc, id);
    hold(sc, c);
    assert_int_equal(cel_adapters_grad_count(c), 1);
    /* the step: committed, nothing pending after */
    assert_int_equal(cel_adapters_commit(sc, c, "task-1", NULL, &err), CEL_OK);
    assert_int_equal(cel_adapters_has_grads(c), 0);
    cel_adapters_free(sc);
    cel_adapters_t *sd = open_store(f, "d@host");
    cel_adapter_t *d = get(sd, id);
    hold(sd, d);
    assert_int_equal(cel_adapters_has_grads(d), 0);
    cel_adapters_free(sd);
}

/* A holder whose adapter moved on (its lock lost, as with an expired NFS
 * lease: simulated by switching `current` behind it) does not overwrite or
 * prune the newer checkpoint; a deleted adapter is not written back. */
static void test_stale_writer_never_overwrites(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1];
    cel_adapter_t *a = create_id(sa, id);
    cel_err_t err;
    hold(sa, a);
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    /* another writer's checkpoint (a process that took the adapter over) */
    char name[64], other[64];
    cel_adapters_t *sb = open_store(f, "b@host");
    cel_adapter_t *b = get(sb, id);
    assert_int_equal(cel_adapters_write_ckpt(sb, b, "task-b", NULL, 0, &err), CEL_OK);
    read_current(f, id, other, sizeof(other));
    assert_int_equal(cel_adapters_commit(sa, a, "task-1", NULL, &err), CEL_ESTATE);
    assert_non_null(strstr(err.msg, "another worker took it over"));
    read_current(f, id, name, sizeof(name));
    assert_string_equal(name, other);
    assert_int_equal(count_ckpts(f, id), 1);

    /* deleted while held: the holder's step is not written back */
    cel_adapter_t *a2 = create_id(sa, id);
    hold(sa, a2);
    assert_int_equal(cel_adapters_note_grads(sa, a2, NULL, &err), CEL_OK);
    assert_int_equal(cel_adapters_delete(sb, id, &err), CEL_OK);
    assert_int_equal(cel_adapters_commit(sa, a2, "task-2", NULL, &err), CEL_ENOTFOUND);
    char p[256];
    struct stat st;
    snprintf(p, sizeof(p), "%s/adapters/%s", f->dir, id);
    assert_int_not_equal(stat(p, &st), 0);
    cel_adapters_free(sb);
    cel_adapters_free(sa);
}

/* A forward_backward that fails midway forfeits the earlier calls' gradients:
 * the next holder, here the same process, reports them once. */
static void test_forfeit_is_reported(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host");
    cel_adapter_t *a = create(sa);
    cel_err_t err;
    hold(sa, a);
    fake_grads(a, 1.0f);
    assert_int_equal(cel_adapters_note_grads(sa, a, NULL, &err), CEL_OK);
    cel_adapters_forfeit(sa, a);
    assert_int_equal(cel_adapters_has_grads(a), 0);
    hold_lost(sa, a, 1, "a@host");
    cel_adapters_release(sa, a);
    hold(sa, a); /* once */
    cel_adapters_release(sa, a);
    cel_adapters_free(sa);
}

/* A holder dies after noting a forward_backward's gradients and before its
 * message is acked: the broker delivers that task again, and the next holder
 * runs it again with no loss reported. Any other call (or a second lost one)
 * still gets the report, once. */
static void test_redelivered_forward_backward(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1];
    cel_adapter_t *a = create_id(sa, id);
    cel_adapters_lost_t lost;
    cel_err_t err;
    hold(sa, a);
    assert_int_equal(cel_adapters_note_grads(sa, a, "fb-1", &err), CEL_OK);
    cel_adapters_free(sa); /* a dies holding fb-1's gradients */

    /* another task first: the loss is reported (and fb-1 is no redelivery after that) */
    cel_adapters_t *sb = open_store(f, "b@host");
    cel_adapter_t *b = get(sb, id);
    assert_int_equal(cel_adapters_hold(sb, b, "fb-2", &lost, &err), CEL_OK);
    assert_int_equal(lost.count, 1);
    cel_adapters_release(sb, b);
    hold(sb, b);
    assert_int_equal(cel_adapters_note_grads(sb, b, "fb-3", &err), CEL_OK);
    cel_adapters_free(sb); /* b dies holding fb-3's */

    /* fb-3 delivered again: it runs again, nothing reported; the marker names c, holding
     * nothing until fb-3 notes its gradients anew */
    cel_adapters_t *sc = open_store(f, "c@host");
    cel_adapter_t *c = get(sc, id);
    assert_int_equal(cel_adapters_hold(sc, c, "fb-3", &lost, &err), CEL_OK);
    assert_int_equal(lost.count, 0);
    assert_int_equal(cel_adapters_has_grads(c), 0);
    char marker[512];
    snprintf(marker, sizeof(marker), "%s/adapters/%s/grads.json", f->dir, id);
    json_t *m = json_load_file(marker, 0, NULL);
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "node")), "c@host");
    assert_int_equal(json_integer_value(json_object_get(m, "count")), 0);
    json_decref(m);
    assert_int_equal(cel_adapters_note_grads(sc, c, "fb-3", &err), CEL_OK);
    assert_int_equal(cel_adapters_note_grads(sc, c, "fb-4", &err), CEL_OK);
    cel_adapters_free(sc); /* c dies holding two calls' */

    /* two calls lost: the redelivered last one cannot bring back the first */
    cel_adapters_t *sd = open_store(f, "d@host");
    cel_adapter_t *d = get(sd, id);
    assert_int_equal(cel_adapters_hold(sd, d, "fb-4", &lost, &err), CEL_OK);
    assert_int_equal(lost.count, 2);
    assert_string_equal(lost.node, "c@host");
    cel_adapters_release(sd, d);
    cel_adapters_free(sd);
}

/* A marker an older worker wrote (short, by rename, no "last") is read as
 * before: its calls are reported lost once; after that the marker is this
 * version's, rewritten in place at its fixed size. */
static void test_older_marker(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host");
    char id[CEL_ADAPTERS_ID_LEN + 1], name[64], path[512];
    create_id(sa, id);
    read_current(f, id, name, sizeof(name));
    cel_adapters_free(sa);
    snprintf(path, sizeof(path), "%s/adapters/%s/grads.json", f->dir, id);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp, "{\"ckpt\": \"%s\", \"count\": 2, \"node\": \"old@host\", \"pid\": 7, "
                "\"step\": 0}", name);
    fclose(fp);
    cel_adapters_t *sb = open_store(f, "b@host");
    cel_adapter_t *b = get(sb, id);
    cel_adapters_lost_t lost = hold_lost(sb, b, 2, "old@host");
    assert_int_equal(lost.pid, 7);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 1024);
    json_t *m = json_load_file(path, 0, NULL);
    assert_non_null(m);
    assert_int_equal(json_integer_value(json_object_get(m, "count")), 0);
    assert_string_equal(json_string_value(json_object_get(m, "node")), "b@host");
    json_decref(m);
    cel_adapters_release(sb, b);
    hold(sb, b); /* once */
    cel_adapters_free(sb);
}

/* Both stores list every adapter; the node name is kept. */
static void test_list_and_node(void **state) {
    fixture_t *f = *state;
    cel_adapters_t *sa = open_store(f, "a@host"), *sb = open_store(f, "b@host");
    create(sa);
    create(sb);
    create(sa);
    json_t *la, *lb;
    cel_err_t err;
    assert_int_equal(cel_adapters_list(sa, NULL, &la, &err), CEL_OK);
    assert_int_equal(cel_adapters_list(sb, NULL, &lb, &err), CEL_OK);
    assert_int_equal(json_array_size(la), 3);
    assert_true(json_equal(la, lb));
    json_decref(la);
    json_decref(lb);
    assert_string_equal(cel_adapters_node(sa), "a@host");
    cel_adapters_free(sa);
    cel_adapters_free(sb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_busy_then_lost_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handback_survives_an_idle_holder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_writer_never_overwrites, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forfeit_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redelivered_forward_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_older_marker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_and_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_log_replays_bit_for_bit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_log_torn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_log_written_ahead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_log_bounded_for_big_adapters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_one_pass, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_outgrows_its_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quota_counts_both_slots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_file_is_refused_or_whole, setup, teardown),
        cmocka_unit_test_setup_teardown(test_legacy_store_moves_to_the_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readers_race_a_writer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill9_during_checkpoint, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
