/* device.c -- moving a model to a GPU: loading the CUDA backend, adapter residency, packed runs.
 *
 * The CUDA backend (model/cuda/, bin/libceleriac-cuda.so) is dlopen'ed here on
 * the first cel_model_set_device that asks for a GPU, never before, so a
 * process that stays on the CPU maps no CUDA library. "auto" first looks for
 * the driver's device files without loading anything. Adapters get a device
 * copy on first use; the device copy is then the current one (host_stale)
 * until it is synced back for a save or evicted: past the model's GPU budget
 * the least recently used adapters are downloaded to their host blocks and
 * freed on the device, and come back on their next use. One thread per model.
 */
#include "internal.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu.h"

#define CUDA_LIB_NAME "libceleriac-cuda.so"

/* dlopen handle and table, process-wide (one backend per process). */
static void *lib_handle;
static const cel_gpu_api_t *lib_api;

/* Loads the backend: $CELERIAC_CUDA_LIB, else beside this executable (bin/),
 * else the dynamic linker's search path. */
static int load_backend(cel_err_t *err) {
    if (lib_api) return CEL_OK;
    char path[PATH_MAX + 64];
    const char *env = getenv("CELERIAC_CUDA_LIB");
    char tried[3 * 256] = "";
    const char *cands[3];
    int nc = 0;
    if (env && *env) cands[nc++] = env;
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (k > 0) {
        exe[k] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(path, sizeof(path), "%s/%s", exe, CUDA_LIB_NAME);
            cands[nc++] = path;
        }
    }
    cands[nc++] = CUDA_LIB_NAME;
    for (int i = 0; i < nc; i++) {
        void *h = dlopen(cands[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            size_t used = strlen(tried);
            snprintf(tried + used, sizeof(tried) - used, "%s%.200s", used ? "; " : "", dlerror());
            continue;
        }
        cel_gpu_api_fn fn = (cel_gpu_api_fn)dlsym(h, "cel_gpu_api");
        const cel_gpu_api_t *api = fn ? fn() : NULL;
        if (!api || api->abi != CEL_GPU_ABI) {
            dlclose(h);
            return cel_err_set(err, CEL_ENOTFOUND,
                               "%s is not a CUDA backend of this build "
                               "(abi %d, want %d)",
                               cands[i], api ? api->abi : -1, CEL_GPU_ABI);
        }
        lib_handle = h;
        lib_api = api;
        return CEL_OK;
    }
    return cel_err_set(err, CEL_ENOTFOUND, "CUDA backend not available (%s)", tried);
}

/* Could a GPU be visible? The driver's files, checked without loading CUDA. */
static int gpu_files_present(void) {
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (vis && (vis[0] == '\0' || strcmp(vis, "-1") == 0)) return 0;
    return access("/dev/nvidiactl", F_OK) == 0 || access("/dev/nvidia0", F_OK) == 0 ||
           access("/proc/driver/nvidia/gpus", F_OK) == 0;
}

/* Parses "cuda" / "cuda:N" into N (0 by default). */
static int parse_cuda(const char *spec, int *index) {
    *index = 0;
    if (strcmp(spec, "cuda") == 0) return 1;
    if (strncmp(spec, "cuda:", 5) != 0 || !spec[5]) return 0;
    char *end;
    long v = strtol(spec + 5, &end, 10);
    if (*end || v < 0 || v > 255) return 0;
    *index = (int)v;
    return 1;
}

/* Opens the model on GPU index with the loaded backend. */
static int open_gpu(cel_model_t *m, int index, char *chosen, size_t len, cel_err_t *err) {
    int n = lib_api->device_count(err);
    if (n <= 0)
        return err && err->code ? err->code : cel_err_set(err, CEL_ENOTFOUND, "no CUDA device");
    if (index >= n)
        return cel_err_set(err, CEL_ENOTFOUND, "cuda:%d asked for, %d CUDA device%s visible", index,
                           n, n == 1 ? "" : "s");
    const cel_params_t *p = &m->p;
    cel_gpu_model_src_t src = { .cfg = &m->cfg,
                                .maxT = m->maxT,
                                .wte = p->wte,
                                .ln1 = p->ln1,
                                .wq = p->wq,
                                .wk = p->wk,
                                .wv = p->wv,
                                .wo = p->wo,
                                .ln2 = p->ln2,
                                .wg = p->wg,
                                .wu = p->wu,
                                .wd = p->wd,
                                .lnf = p->lnf,
                                .lm = p->lm,
                                .rope_cos = m->rope_cos,
                                .rope_sin = m->rope_sin };
    cel_gpu_info_t info;
    memset(&info, 0, sizeof(info));
    int rc = lib_api->open(index, &src, &m->gpu, &info, err);
    if (rc != CEL_OK) return rc;
    m->gpu_api = lib_api;
    m->gpu_mem_total = info.mem_total;
    /* the workspace was sized for CPU passes; GPU passes use it for host copies only */
    cel_train_ws_free(&m->ws);
    if (chosen)
        snprintf(chosen, len, "cuda:%d (%s, %.1f GiB, compute %d.%d)", info.index, info.name,
                 info.mem_total / 1073741824.0, info.cc_major, info.cc_minor);
    return CEL_OK;
}

int cel_model_set_device(cel_model_t *m, const char *spec, char *chosen, size_t len,
                         cel_err_t *err) {
    if (!spec || !*spec) spec = "auto";
    int index = 0, is_cuda = parse_cuda(spec, &index);
    if (strcmp(spec, "cpu") != 0 && strcmp(spec, "auto") != 0 && !is_cuda)
        return cel_err_set(err, CEL_EINVAL,
                           "device '%.40s': expected auto, cpu, cuda or "
                           "cuda:N",
                           spec);
    if (m->gpu) {
        if (chosen) snprintf(chosen, len, "unchanged (already on a GPU)");
        return is_cuda || !strcmp(spec, "auto")
                   ? CEL_OK
                   : cel_err_set(err, CEL_ESTATE, "the model is already on a GPU");
    }
    if (strcmp(spec, "cpu") == 0) {
        if (chosen) snprintf(chosen, len, "cpu");
        return CEL_OK;
    }
    if (m->g) return cel_err_set(err, CEL_ESTATE, "full-parameter training runs on the CPU only");
    if (m->bf16) { /* cel_model_set_precision "bf16": a CPU mode */
        if (is_cuda) return cel_err_set(err, CEL_ESTATE, "precision bf16 is for the CPU");
        if (chosen) snprintf(chosen, len, "cpu (auto: precision bf16)");
        return CEL_OK;
    }
    if (!is_cuda && !gpu_files_present()) {
        if (chosen) snprintf(chosen, len, "cpu (auto: no NVIDIA device files)");
        return CEL_OK;
    }
    cel_err_t e;
    cel_err_clear(&e);
    int rc = load_backend(&e);
    if (rc == CEL_OK) rc = open_gpu(m, index, chosen, len, &e);
    if (rc == CEL_OK) return CEL_OK;
    if (is_cuda) {
        if (err) *err = e;
        return rc;
    }
    if (chosen) snprintf(chosen, len, "cpu (auto: %s)", e.msg);
    return CEL_OK;
}

int cel_model_on_gpu(const cel_model_t *m) { return m->gpu != NULL; }

void cel_model_set_gpu_budget(cel_model_t *m, size_t bytes) { m->gpu_budget = bytes; }

void cel_model_device_stats(const cel_model_t *m, cel_device_stats_t *out) {
    memset(out, 0, sizeof(*out));
    if (!m->gpu) return;
    m->gpu_api->mem(m->gpu, &out->mem_used, &out->mem_peak);
    out->resident = m->n_resident;
    out->evictions = m->evictions;
    out->mem_total = m->gpu_mem_total;
}

/* Removes l from its model's resident list. */
static void unlist(cel_model_t *m, cel_lora_t *l) {
    for (int i = 0; i < m->n_resident; i++)
        if (m->resident[i] == l) {
            m->resident[i] = m->resident[--m->n_resident];
            return;
        }
}

int cel_device_lora_sync(cel_lora_t *l, cel_err_t *err) {
    if (!l->dev || !l->host_stale) return CEL_OK;
    int rc = l->dev_model->gpu_api->lora_download(l->dev, l->w, l->g, l->m, l->v, err);
    if (rc == CEL_OK) l->host_stale = 0;
    return rc;
}

int cel_device_lora_evict(cel_lora_t *l, int save, cel_err_t *err) {
    if (!l->dev) return CEL_OK;
    if (save) {
        int rc = cel_device_lora_sync(l, err);
        if (rc != CEL_OK) return rc;
    }
    cel_model_t *m = l->dev_model;
    m->gpu_api->lora_free(l->dev);
    unlist(m, l);
    l->dev = NULL;
    l->dev_model = NULL;
    l->host_stale = 0;
    return CEL_OK;
}

/* Bytes held on the device by resident adapters. */
static size_t resident_bytes(const cel_model_t *m) {
    size_t total = 0;
    for (int i = 0; i < m->n_resident; i++) total += m->gpu_api->lora_bytes(m->resident[i]->dev);
    return total;
}

/* Evicts least recently used adapters (never `keep`) until `need` more bytes
 * fit in the budget. */
static int make_room(cel_model_t *m, const cel_lora_t *keep, size_t need, cel_err_t *err) {
    if (!m->gpu_budget) return CEL_OK;
    while (resident_bytes(m) + need > m->gpu_budget) {
        cel_lora_t *victim = NULL;
        for (int i = 0; i < m->n_resident; i++) {
            cel_lora_t *c = m->resident[i];
            if (c != keep && !c->dev_pins && (!victim || c->dev_used < victim->dev_used))
                victim = c;
        }
        if (!victim) return CEL_OK; /* a single adapter larger than the budget still runs */
        int rc = cel_device_lora_evict(victim, 1, err);
        if (rc != CEL_OK) return rc;
        m->evictions++;
    }
    return CEL_OK;
}

/* The adapter's shape as the backend sees it. */
static void lora_shape(const cel_lora_t *l, cel_gpu_lora_shape_t *s) {
    memset(s, 0, sizeof(*s));
    s->R = l->R;
    s->scaling = l->scaling;
    s->targets = l->targets;
    s->n = l->n;
    for (int i = 0; i < CEL_NMOD; i++) {
        s->offA[i] = l->offA[i];
        s->offB[i] = l->offB[i];
    }
}

int cel_device_lora_ready(cel_model_t *m, cel_lora_t *l, cel_err_t *err) {
    if (l->dev && l->dev_model != m)
        return cel_err_set(err, CEL_EINVAL, "adapter is resident on another model's GPU");
    l->dev_used = ++m->gpu_clock;
    if (l->dev) return CEL_OK;
    /* weights + grads + two moments in fp32, two bf16 shadows */
    size_t need = l->n * (4 * sizeof(float) + 2 * 2);
    int rc = make_room(m, l, need, err);
    if (rc != CEL_OK) return rc;
    if (m->n_resident == m->cap_resident) {
        int cap = m->cap_resident ? 2 * m->cap_resident : 16;
        cel_lora_t **r = realloc(m->resident, cap * sizeof(*r));
        if (!r) return cel_err_set(err, CEL_ENOMEM, "out of memory");
        m->resident = r;
        m->cap_resident = cap;
    }
    cel_gpu_lora_shape_t shape;
    lora_shape(l, &shape);
    rc = m->gpu_api->lora_new(m->gpu, &shape, l->w, l->g, l->m, l->v, &l->dev, err);
    if (rc != CEL_OK) {
        l->dev = NULL;
        return rc;
    }
    l->dev_model = m;
    l->host_stale = 0;
    m->resident[m->n_resident++] = l;
    return CEL_OK;
}

int cel_device_run(cel_model_t *m, const cel_seg_t *segs, int nseg, int B, int T, int backward,
                   float *logits, cel_err_t *err) {
    cel_gpu_seg_t small[16];
    cel_gpu_seg_t *gs = nseg <= 16 ? small : malloc(nseg * sizeof(*gs));
    if (!gs) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    int rc = CEL_OK;
    for (int i = 0; i < nseg && rc == CEL_OK; i++) {
        cel_lora_t *l = segs[i].lora;
        if (backward && !l) {
            rc = cel_err_set(err, CEL_ESTATE, "full-parameter training runs on the CPU only");
            break;
        }
        if (l) rc = cel_device_lora_ready(m, l, err);
        gs[i] = (cel_gpu_seg_t){ l ? l->dev : NULL, segs[i].b0, segs[i].nb };
    }
    /* every adapter of the pass must still be resident after the others came in */
    for (int i = 0; i < nseg && rc == CEL_OK; i++)
        if (segs[i].lora && segs[i].lora->dev != gs[i].lora)
            rc = cel_err_set(err, CEL_ELIMIT,
                             "the adapters of one pass do not fit the GPU "
                             "budget together");
    if (rc == CEL_OK) {
        cel_ws_t *ws = &m->ws;
        cel_gpu_batch_t b = { B, T, ws->tokens, ws->targets, ws->weights, ws->lens };
        rc = m->gpu_api->run(m->gpu, &b, nseg, gs, backward, logits, ws->logp, err);
        if (rc == CEL_OK && backward)
            for (int i = 0; i < nseg; i++) segs[i].lora->host_stale = 1;
    }
    if (gs != small) free(gs);
    return rc;
}

void cel_device_close(cel_model_t *m) {
    if (!m->gpu) return;
    while (m->n_resident > 0) cel_device_lora_evict(m->resident[0], 1, NULL);
    free(m->resident);
    m->resident = NULL;
    m->n_resident = m->cap_resident = 0;
    m->gpu_api->close(m->gpu);
    m->gpu = NULL;
}
