/* lora.c -- LoRA adapters: create, load and save in HF PEFT's layout, AdamW step.
 *
 * An adapter's weights, gradients and AdamW moments are four blocks of one
 * layout: for each targeted module, A (L,R,in) then B (L,out,R). Files match
 * what PEFT's save_pretrained writes for a LlamaForCausalLM: tensors named
 * base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight (R,in) and
 * ...lora_B.weight (out,R), and adapter_config.json; PEFT's from_pretrained
 * loads them. The AdamW state (exp_avg, exp_avg_sq, step, caller metadata)
 * goes in optimizer.safetensors beside them. Every file is written atomically.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpu/ops.h"
#include "gpu.h"
#include "safetensors.h"

int cel_lora_parse_targets(const char *csv, unsigned *out, cel_err_t *err) {
    *out = 0;
    if (!csv) return cel_err_set(err, CEL_EINVAL, "no target modules");
    if (strcmp(csv, "all") == 0 || strcmp(csv, "all-linear") == 0) {
        *out = CEL_LORA_ALL;
        return CEL_OK;
    }
    const char *p = csv;
    while (*p) {
        size_t len = strcspn(p, ",");
        int found = 0;
        for (int mod = 0; mod < CEL_NMOD; mod++)
            if (len == strlen(cel_model_mod_names[mod]) &&
                strncmp(p, cel_model_mod_names[mod], len) == 0) {
                *out |= 1u << mod;
                found = 1;
            }
        if (!found)
            return cel_err_set(err, CEL_EINVAL,
                               "unknown target module '%.*s' (q_proj, k_proj, "
                               "v_proj, o_proj, gate_proj, up_proj, down_proj)",
                               (int)(len > 40 ? 40 : len), p);
        p += len;
        if (*p == ',') p++;
    }
    if (!*out) return cel_err_set(err, CEL_EINVAL, "no target modules");
    return CEL_OK;
}

void cel_lora_free(cel_lora_t *l) {
    if (!l) return;
    cel_device_lora_evict(l, 0, NULL);
    free(l->w);
    free(l->g);
    free(l->m);
    free(l->v);
    free(l->ga);
    json_decref(l->meta);
    free(l);
}

/* Allocates an adapter of the given shape with zeroed blocks. */
static int lora_alloc(const cel_config_t *cfg, int R, float alpha, unsigned targets, int rslora,
                      cel_lora_t **out, cel_err_t *err) {
    *out = NULL;
    if (R < 1 || R > CEL_LORA_MAX_RANK)
        return cel_err_set(err, CEL_EINVAL, "LoRA rank %d is not in [1, %d]", R, CEL_LORA_MAX_RANK);
    if (!(alpha > 0) || !isfinite(alpha))
        return cel_err_set(err, CEL_EINVAL, "LoRA alpha must be a positive number");
    if (!targets || (targets & ~(unsigned)CEL_LORA_ALL))
        return cel_err_set(err, CEL_EINVAL,
                           "LoRA target modules must be a non-empty subset of "
                           "the seven projections");
    cel_lora_t *l = calloc(1, sizeof(*l));
    if (!l) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    l->cfg = *cfg;
    l->R = R;
    l->alpha = alpha;
    l->use_rslora = rslora;
    l->scaling = rslora ? alpha / sqrtf((float)R) : alpha / R;
    l->targets = targets;
    size_t n = 0;
    for (int mod = 0; mod < CEL_NMOD; mod++) {
        if (!(targets & (1u << mod))) continue;
        int in, o;
        cel_model_mod_dims(cfg, mod, &in, &o);
        l->offA[mod] = n;
        n += (size_t)cfg->L * R * in;
        l->offB[mod] = n;
        n += (size_t)cfg->L * o * R;
    }
    l->n = n;
    l->w = calloc(n, sizeof(float));
    l->g = calloc(n, sizeof(float));
    l->m = calloc(n, sizeof(float));
    l->v = calloc(n, sizeof(float));
    l->meta = json_object();
    if (!l->w || !l->g || !l->m || !l->v || !l->meta) {
        cel_lora_free(l);
        return cel_err_set(err, CEL_ENOMEM, "out of memory for a rank-%d adapter", R);
    }
    *out = l;
    return CEL_OK;
}

int cel_lora_new(const cel_model_t *m, const cel_lora_config_t *cfg, cel_lora_t **out,
                 cel_err_t *err) {
    cel_lora_t *l;
    int rc = lora_alloc(&m->cfg, cfg->rank, cfg->alpha, cfg->targets, cfg->use_rslora, &l, err);
    if (rc != CEL_OK) return rc;
    /* PEFT: nn.init.kaiming_uniform_(A, a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
    cel_rng_t rng;
    cel_rng_seed(&rng, cfg->seed, 1);
    for (int mod = 0; mod < CEL_NMOD; mod++) {
        if (!(l->targets & (1u << mod))) continue;
        int in, o;
        cel_model_mod_dims(&m->cfg, mod, &in, &o);
        float bound = 1.0f / sqrtf((float)in);
        float *A = l->w + l->offA[mod];
        for (size_t i = 0; i < (size_t)m->cfg.L * l->R * in; i++)
            A[i] = bound * (2.0f * cel_rng_uniform(&rng) - 1.0f);
    }
    *out = l;
    return CEL_OK;
}

/* PEFT's name of layer l, module mod, A (ab 0) or B (ab 1), with suffix. */
static void peft_name(char *buf, size_t len, int l, int mod, int ab, const char *suffix) {
    snprintf(buf, len, "base_model.model.model.layers.%d.%s.lora_%c.weight%s", l,
             cel_model_mod_paths[mod], ab ? 'B' : 'A', suffix ? suffix : "");
}

#define NAME_MAX_LEN 128

/* Fills entries for the given blocks (each with its name suffix). Returns the
 * count; names go in names (count * NAME_MAX_LEN bytes). */
static int build_entries(const cel_lora_t *l, float *const *blocks, const char *const *suffixes,
                         int nblocks, cel_st_entry_t *e, char *names) {
    int n = 0;
    for (int b = 0; b < nblocks; b++)
        for (int mod = 0; mod < CEL_NMOD; mod++) {
            if (!(l->targets & (1u << mod))) continue;
            int in, o;
            cel_model_mod_dims(&l->cfg, mod, &in, &o);
            for (int layer = 0; layer < l->cfg.L; layer++)
                for (int ab = 0; ab < 2; ab++) {
                    char *nm = names + (size_t)n * NAME_MAX_LEN;
                    peft_name(nm, NAME_MAX_LEN, layer, mod, ab, suffixes[b]);
                    memset(&e[n], 0, sizeof(e[n]));
                    e[n].name = nm;
                    e[n].ndim = 2;
                    e[n].shape[0] = ab ? o : l->R;
                    e[n].shape[1] = ab ? l->R : in;
                    e[n].data = blocks[b] + (ab ? l->offB[mod] + (size_t)layer * o * l->R
                                                : l->offA[mod] + (size_t)layer * l->R * in);
                    n++;
                }
        }
    return n;
}

static int count_tensors(const cel_lora_t *l) {
    int k = 0;
    for (int mod = 0; mod < CEL_NMOD; mod++) k += (l->targets >> mod) & 1;
    return 2 * k * l->cfg.L;
}

/* build_entries in one allocation (the names after the entries; one free).
 * OUT: *n. NULL when out of memory. */
static cel_st_entry_t *new_entries(const cel_lora_t *l, float *const *blocks,
                                   const char *const *suffixes, int nblocks, int *n) {
    size_t cnt = (size_t)count_tensors(l) * (size_t)nblocks;
    cel_st_entry_t *e = malloc(cnt * (sizeof(*e) + NAME_MAX_LEN));
    if (e) *n = build_entries(l, blocks, suffixes, nblocks, e, (char *)(e + cnt));
    return e;
}

static int write_blocks(const cel_lora_t *l, const char *path, float *const *blocks,
                        const char *const *suffixes, int nblocks, const char *const *meta,
                        int n_meta, int st_flags, cel_err_t *err) {
    int n;
    cel_st_entry_t *e = new_entries(l, blocks, suffixes, nblocks, &n);
    if (!e) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    int rc = cel_safetensors_write(path, e, n, meta, n_meta, st_flags, err);
    free(e);
    return rc;
}

/* Adds the file name to img as parts: its safetensors head (owned), then the
 * tensors straight from the blocks (borrowed). */
static int add_blocks(cel_lora_image_t *img, const char *name, const cel_lora_t *l,
                      float *const *blocks, const char *const *suffixes, int nblocks,
                      const char *const *meta, int n_meta, cel_err_t *err) {
    if (img->n == CEL_LORA_IMAGE_MAX)
        return cel_err_set(err, CEL_ELIMIT, "checkpoint image: no room for %s", name);
    int n = 0, rc = CEL_OK;
    cel_st_entry_t *e = new_entries(l, blocks, suffixes, nblocks, &n);
    struct iovec *iov = e ? malloc((size_t)(n + 1) * sizeof(*iov)) : NULL;
    unsigned char *head = NULL;
    size_t hlen = 0, total = 0;
    if (!iov) rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
    if (rc == CEL_OK) rc = cel_safetensors_head(e, n, meta, n_meta, &head, &hlen, &total, err);
    if (rc == CEL_OK) {
        iov[0] = (struct iovec){ head, hlen };
        for (int i = 0; i < n; i++)
            iov[1 + i] = (struct iovec){ (void *)e[i].data,
                                         (size_t)e[i].shape[0] * (size_t)e[i].shape[1] * 4 };
        int k = img->n++;
        snprintf(img->f[k].name, CEL_LORA_IMAGE_NAME, "%s", name);
        img->f[k].data = head;
        img->f[k].len = total;
        img->f[k].iov = iov;
        img->f[k].niov = 1 + n;
        iov = NULL;
    }
    free(iov);
    free(e);
    return rc;
}

int cel_lora_write(const cel_lora_t *l, const char *path, int which, const char *suffix,
                   const char *const *meta, int n_meta, cel_err_t *err) {
    /* the host blocks are a cache of the device copy: refreshing them is no change */
    int rc = cel_device_lora_sync((cel_lora_t *)l, err);
    if (rc != CEL_OK) return rc;
    float *block = which == CEL_BLOCK_WEIGHTS   ? l->w
                   : which == CEL_BLOCK_GRADS   ? l->g
                   : which == CEL_BLOCK_EXP_AVG ? l->m
                                                : l->v;
    const char *suffixes[1] = { suffix };
    return write_blocks(l, path, &block, suffixes, 1, meta, n_meta, CEL_ST_ATOMIC, err);
}

/* adapter_config.json as PEFT's LoraConfig.save_pretrained writes it (NULL: no memory). */
static json_t *config_json(const cel_lora_t *l, const char *base) {
    json_t *mods = json_array();
    for (int mod = 0; mod < CEL_NMOD; mod++)
        if (l->targets & (1u << mod))
            json_array_append_new(mods, json_string(cel_model_mod_names[mod]));
    json_t *alpha = l->alpha == floorf(l->alpha) && l->alpha < 1e9f
                        ? json_integer((json_int_t)l->alpha)
                        : json_real(l->alpha);
    json_t *o = json_pack(
        "{s:{}, s:n, s:s, s:s, s:b, s:b, s:b, s:n, s:n, s:n, s:{}, s:o, s:f, s:n, s:s, s:n, s:s,"
        " s:i, s:{}, s:n, s:o, s:s, s:b, s:b}",
        "alpha_pattern", "auto_mapping", "base_model_name_or_path", base ? base : "", "bias",
        "none", "fan_in_fan_out", 0, "inference_mode", 1, "init_lora_weights", 1,
        "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha",
        alpha, "lora_dropout", 0.0, "megatron_config", "megatron_core", "megatron.core",
        "modules_to_save", "peft_type", "LORA", "r", l->R, "rank_pattern", "revision",
        "target_modules", mods, "task_type", "CAUSAL_LM", "use_dora", 0, "use_rslora",
        l->use_rslora);
    return o;
}

/* Writes adapter_config.json as PEFT's LoraConfig.save_pretrained does. */
static int write_config(const cel_lora_t *l, const char *path, const char *base, int nosync,
                        cel_err_t *err) {
    json_t *o = config_json(l, base);
    if (!o) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    int rc = CEL_OK;
    if (!nosync) rc = cel_config_write_json(o, path, JSON_INDENT(2) | JSON_SORT_KEYS, err);
    else if (json_dump_file(o, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
        rc = cel_err_set(err, CEL_EIO, "%s: cannot write", path);
    json_decref(o);
    return rc;
}

int cel_lora_save(cel_lora_t *l, const char *dir, const char *base_model, const char *const *meta,
                  int n_meta, cel_err_t *err) {
    return cel_lora_save_ex(l, dir, base_model, meta, n_meta, 0, err);
}

/* What optimizer.safetensors holds: the two moment blocks (OPT_SUFFIXES) and
 * its metadata (format, step, the caller's pairs; kv points into step). */
typedef struct optimizer_parts {
    float *blocks[2];
    const char *kv[2 * 66];
    int n_kv; /* pairs */
    char step[32];
} optimizer_parts_t;

static const char *const OPT_SUFFIXES[2] = { ".exp_avg", ".exp_avg_sq" };

static int optimizer_parts(const cel_lora_t *l, const char *const *meta, int n_meta,
                           optimizer_parts_t *o, cel_err_t *err) {
    if (n_meta < 0 || n_meta > 64) return cel_err_set(err, CEL_EINVAL, "too much metadata");
    o->blocks[0] = l->m;
    o->blocks[1] = l->v;
    snprintf(o->step, sizeof(o->step), "%d", l->step);
    int n = 0;
    o->kv[n++] = "format", o->kv[n++] = "celeriac-adamw-1";
    o->kv[n++] = "step", o->kv[n++] = o->step;
    for (int i = 0; i < n_meta; i++) {
        if (strcmp(meta[2 * i], "format") == 0 || strcmp(meta[2 * i], "step") == 0)
            return cel_err_set(err, CEL_EINVAL, "metadata key %s is reserved", meta[2 * i]);
        o->kv[n++] = meta[2 * i], o->kv[n++] = meta[2 * i + 1];
    }
    o->n_kv = n / 2;
    return CEL_OK;
}

/* After a save: l's metadata is the caller's pairs. */
static void keep_meta(cel_lora_t *l, const char *const *meta, int n_meta) {
    json_t *nm = json_object();
    for (int i = 0; nm && i < n_meta; i++)
        json_object_set_new(nm, meta[2 * i], json_string(meta[2 * i + 1]));
    if (nm) {
        json_decref(l->meta);
        l->meta = nm;
    }
}

int cel_lora_save_ex(cel_lora_t *l, const char *dir, const char *base_model,
                     const char *const *meta, int n_meta, int flags, cel_err_t *err) {
    char path[4096];
    const char *fmt[] = { "format", "pt" };
    int nosync = flags & CEL_LORA_SAVE_NOSYNC, st_flags = nosync ? 0 : CEL_ST_ATOMIC;
    int rc = cel_device_lora_sync(l, err);
    if (rc != CEL_OK) return rc;
    float *wblock[1] = { l->w };
    const char *wsuffix[1] = { NULL };
    snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
    rc = write_blocks(l, path, wblock, wsuffix, 1, fmt, 1, st_flags, err);
    if (rc != CEL_OK) return rc;
    snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
    if ((rc = write_config(l, path, base_model, nosync, err)) != CEL_OK) return rc;
    /* optimizer state: the moments, the step and the caller's metadata */
    optimizer_parts_t o;
    if ((rc = optimizer_parts(l, meta, n_meta, &o, err)) != CEL_OK) return rc;
    snprintf(path, sizeof(path), "%s/optimizer.safetensors", dir);
    rc = write_blocks(l, path, o.blocks, OPT_SUFFIXES, 2, o.kv, o.n_kv, st_flags, err);
    if (rc != CEL_OK) return rc;
    keep_meta(l, meta, n_meta);
    return CEL_OK;
}

/* ---- the same files in memory ---- */

int cel_lora_image_add(cel_lora_image_t *img, const char *name, unsigned char *data, size_t len,
                       cel_err_t *err) {
    if (img->n == CEL_LORA_IMAGE_MAX || strlen(name) >= CEL_LORA_IMAGE_NAME) {
        free(data);
        return cel_err_set(err, CEL_ELIMIT, "checkpoint image: no room for %.40s", name);
    }
    snprintf(img->f[img->n].name, CEL_LORA_IMAGE_NAME, "%s", name);
    img->f[img->n].data = data;
    img->f[img->n].len = len;
    img->f[img->n].iov = NULL;
    img->f[img->n].niov = 0;
    img->n++;
    return CEL_OK;
}

const unsigned char *cel_lora_image_get(const cel_lora_image_t *img, const char *name,
                                        size_t *len) {
    for (int i = 0; i < img->n; i++)
        if (strcmp(img->f[i].name, name) == 0 && !img->f[i].iov) {
            *len = img->f[i].len;
            return img->f[i].data;
        }
    return NULL;
}

void cel_lora_image_free(cel_lora_image_t *img) {
    for (int i = 0; i < img->n; i++) {
        free(img->f[i].data);
        free(img->f[i].iov);
    }
    img->n = 0;
}

int cel_lora_save_image(cel_lora_t *l, const char *base_model, const char *const *meta,
                        int n_meta, int with_grads, cel_lora_image_t *img, cel_err_t *err) {
    const char *fmt[] = { "format", "pt" };
    int rc = cel_device_lora_sync(l, err);
    if (rc != CEL_OK) return rc;
    float *wblock[1] = { l->w };
    const char *wsuffix[1] = { NULL };
    rc = add_blocks(img, "adapter_model.safetensors", l, wblock, wsuffix, 1, fmt, 1, err);
    if (rc != CEL_OK) return rc;
    json_t *cfg = config_json(l, base_model);
    char *text = cfg ? json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(cfg);
    if (!text) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    size_t tlen = strlen(text);
    if ((rc = cel_lora_image_add(img, "adapter_config.json", (unsigned char *)text, tlen, err)))
        return rc;
    optimizer_parts_t o;
    if ((rc = optimizer_parts(l, meta, n_meta, &o, err)) != CEL_OK) return rc;
    rc = add_blocks(img, "optimizer.safetensors", l, o.blocks, OPT_SUFFIXES, 2, o.kv, o.n_kv, err);
    if (rc == CEL_OK && with_grads) {
        float *gb[1] = { l->g };
        const char *gs[1] = { ".grad" };
        const char *gkv[2] = { "format", "celeriac-grad-1" };
        rc = add_blocks(img, "gradients.safetensors", l, gb, gs, 1, gkv, 1, err);
    }
    if (rc == CEL_OK) keep_meta(l, meta, n_meta);
    return rc;
}

/* Reads the blocks named by suffixes from st, checking that st holds exactly
 * those tensors. */
static int read_blocks(cel_lora_t *l, const cel_safetensors_t *st, float *const *blocks,
                       const char *const *suffixes, int nblocks, const char *what, cel_err_t *err) {
    int n, rc = CEL_OK;
    cel_st_entry_t *e = new_entries(l, blocks, suffixes, nblocks, &n);
    if (!e) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    for (int i = 0; i < n && rc == CEL_OK; i++)
        rc = cel_safetensors_read_f32(st, e[i].name, 2, e[i].shape, (float *)e[i].data, err);
    if (rc == CEL_OK && cel_safetensors_count(st) != n) {
        /* something we do not read: find it for the message */
        for (int i = 0; i < cel_safetensors_count(st); i++) {
            const char *nm = cel_safetensors_at(st, i)->name;
            int found = 0;
            for (int j = 0; j < n && !found; j++) found = strcmp(nm, e[j].name) == 0;
            if (!found) {
                rc = cel_err_set(err, CEL_EINVAL,
                                 "%s: tensor %.96s is not part of this "
                                 "adapter",
                                 what, nm);
                break;
            }
        }
    }
    free(e);
    return rc;
}

/* Parses adapter_config.json into (R, alpha, targets, rslora), refusing what
 * the engine cannot run. */
static int parse_config(json_t *o, const char *path, int *R, float *alpha, unsigned *targets,
                        int *rslora, cel_err_t *err) {
    int rc = CEL_OK;
    const char *pt = json_string_value(json_object_get(o, "peft_type"));
    json_t *r = json_object_get(o, "r"), *a = json_object_get(o, "lora_alpha");
    json_t *tm = json_object_get(o, "target_modules");
    const char *bias = json_string_value(json_object_get(o, "bias"));
    if (!json_is_object(o) || (pt && strcmp(pt, "LORA") != 0)) {
        rc = cel_err_set(err, CEL_EINVAL, "%s: not a LoRA adapter config", path);
    } else if (!json_is_integer(r) || json_integer_value(r) < 1 ||
               json_integer_value(r) > CEL_LORA_MAX_RANK) {
        rc = cel_err_set(err, CEL_EPROTO, "%s: r must be an integer in [1, %d]", path,
                         CEL_LORA_MAX_RANK);
    } else if (!json_is_number(a) || !(json_number_value(a) > 0)) {
        rc = cel_err_set(err, CEL_EPROTO, "%s: lora_alpha must be a positive number", path);
    } else if (json_is_true(json_object_get(o, "use_dora")) ||
               json_is_true(json_object_get(o, "fan_in_fan_out")) ||
               (bias && strcmp(bias, "none") != 0) ||
               json_object_size(json_object_get(o, "rank_pattern")) > 0 ||
               json_object_size(json_object_get(o, "alpha_pattern")) > 0 ||
               json_array_size(json_object_get(o, "modules_to_save")) > 0 ||
               (json_object_get(o, "layers_to_transform") &&
                !json_is_null(json_object_get(o, "layers_to_transform")))) {
        rc = cel_err_set(err, CEL_EINVAL,
                         "%s: uses a PEFT feature this engine lacks (DoRA, "
                         "fan_in_fan_out, bias, rank/alpha patterns, modules_to_save, "
                         "layers_to_transform)",
                         path);
    } else {
        *R = (int)json_integer_value(r);
        *alpha = (float)json_number_value(a);
        *rslora = json_is_true(json_object_get(o, "use_rslora"));
        *targets = 0;
        if (json_is_string(tm)) {
            rc = cel_lora_parse_targets(json_string_value(tm), targets, err);
        } else if (json_is_array(tm) && json_array_size(tm) > 0) {
            size_t i;
            json_t *v;
            json_array_foreach(tm, i, v) {
                unsigned bit;
                if (!json_is_string(v) ||
                    (rc = cel_lora_parse_targets(json_string_value(v), &bit, err)) != CEL_OK) {
                    if (rc == CEL_OK)
                        rc = cel_err_set(err, CEL_EPROTO, "%s: target_modules must hold strings",
                                         path);
                    break;
                }
                *targets |= bit;
            }
        } else {
            rc = cel_err_set(err, CEL_EPROTO, "%s: target_modules must be a non-empty list", path);
        }
    }
    return rc;
}

/* An adapter from its parsed config, weights and (NULL: none) optimizer state;
 * the what* name them in messages. */
static int load_parts(const cel_model_t *m, json_t *cfg, const char *cfg_what,
                      const cel_safetensors_t *sw, const char *w_what,
                      const cel_safetensors_t *so, const char *o_what, cel_lora_t **out,
                      cel_err_t *err) {
    *out = NULL;
    int R = 0, rslora = 0;
    float alpha = 0;
    unsigned targets = 0;
    int rc = parse_config(cfg, cfg_what, &R, &alpha, &targets, &rslora, err);
    if (rc != CEL_OK) return rc;
    cel_lora_t *l;
    if ((rc = lora_alloc(&m->cfg, R, alpha, targets, rslora, &l, err)) != CEL_OK) return rc;
    float *wb[1] = { l->w };
    const char *none[1] = { NULL };
    if ((rc = read_blocks(l, sw, wb, none, 1, w_what, err)) != CEL_OK) goto fail;
    if (so) {
        float *ob[2] = { l->m, l->v };
        if ((rc = read_blocks(l, so, ob, OPT_SUFFIXES, 2, o_what, err)) != CEL_OK) goto fail;
        const char *step = cel_safetensors_meta(so, "step");
        char *end = NULL;
        long s = step ? strtol(step, &end, 10) : -1;
        if (!step || *end || s < 0 || s > 1000000000) {
            rc = cel_err_set(err, CEL_EPROTO, "%s: missing or bad step metadata", o_what);
            goto fail;
        }
        l->step = (int)s;
        /* keep the caller's metadata: everything but our own keys */
        const char *k, *v;
        for (int i = 0; cel_safetensors_meta_at(so, i, &k, &v) == CEL_OK; i++)
            if (strcmp(k, "format") != 0 && strcmp(k, "step") != 0)
                json_object_set_new(l->meta, k, json_string(v));
    }
    *out = l;
    return CEL_OK;
fail:
    cel_lora_free(l);
    return rc;
}

int cel_lora_load(const cel_model_t *m, const char *dir, cel_lora_t **out, cel_err_t *err) {
    *out = NULL;
    char cpath[4096], wpath[4096], opath[4096];
    snprintf(cpath, sizeof(cpath), "%s/adapter_config.json", dir);
    snprintf(wpath, sizeof(wpath), "%s/adapter_model.safetensors", dir);
    snprintf(opath, sizeof(opath), "%s/optimizer.safetensors", dir);
    json_error_t je;
    json_t *cfg = json_load_file(cpath, JSON_REJECT_DUPLICATES, &je);
    if (!cfg) return cel_err_set(err, CEL_EPROTO, "%s: %s (line %d)", cpath, je.text, je.line);
    cel_safetensors_t *sw = NULL, *so = NULL;
    struct stat sb;
    int rc = cel_safetensors_open(wpath, &sw, err);
    if (rc == CEL_OK && stat(opath, &sb) == 0) rc = cel_safetensors_open(opath, &so, err);
    if (rc == CEL_OK) rc = load_parts(m, cfg, cpath, sw, wpath, so, opath, out, err);
    cel_safetensors_free(sw);
    cel_safetensors_free(so);
    json_decref(cfg);
    return rc;
}

int cel_lora_load_image(const cel_model_t *m, const cel_lora_image_t *img, cel_lora_t **out,
                        cel_err_t *err) {
    *out = NULL;
    size_t clen = 0, wlen = 0, olen = 0;
    const unsigned char *c = cel_lora_image_get(img, "adapter_config.json", &clen);
    const unsigned char *w = cel_lora_image_get(img, "adapter_model.safetensors", &wlen);
    const unsigned char *o = cel_lora_image_get(img, "optimizer.safetensors", &olen);
    if (!c || !w) return cel_err_set(err, CEL_EPROTO, "checkpoint: no adapter config or weights");
    json_error_t je;
    json_t *cfg = json_loadb((const char *)c, clen, JSON_REJECT_DUPLICATES, &je);
    if (!cfg)
        return cel_err_set(err, CEL_EPROTO, "checkpoint adapter_config.json: %s (line %d)",
                           je.text, je.line);
    cel_safetensors_t *sw = NULL, *so = NULL;
    int rc = cel_safetensors_parse(w, wlen, &sw, err);
    if (rc == CEL_OK && o) rc = cel_safetensors_parse(o, olen, &so, err);
    if (rc == CEL_OK)
        rc = load_parts(m, cfg, "checkpoint adapter_config.json", sw,
                        "checkpoint adapter_model.safetensors", so,
                        "checkpoint optimizer.safetensors", out, err);
    cel_safetensors_free(sw);
    cel_safetensors_free(so);
    json_decref(cfg);
    return rc;
}

const char *cel_lora_meta(const cel_lora_t *l, const char *key) {
    return json_string_value(json_object_get(l->meta, key));
}

int cel_lora_step(cel_lora_t *l, const cel_adamw_t *opt, float *grad_norm, cel_err_t *err) {
    int rc = cel_model_adamw_check(opt, err);
    if (rc != CEL_OK) return rc;
    if (l->dev) {
        float norm = 0.0f;
        rc = l->dev_model->gpu_api->lora_step(l->dev, opt->lr, opt->beta1, opt->beta2, opt->eps,
                                              opt->weight_decay, opt->grad_clip, l->step + 1, &norm,
                                              err);
        if (grad_norm) *grad_norm = norm;
        if (rc != CEL_OK) return rc;
        l->step++;
        l->host_stale = 1;
        l->ga_step = 0; /* the device's gradient is not kept: no log entry */
        return CEL_OK;
    }
    l->ga_step = 0;
    if (l->keep_applied && !l->ga) l->ga = malloc(l->n * sizeof(float)); /* NULL: no log */
    float norm = cel_model_adamw_apply(l->w, l->g, l->m, l->v, l->n, opt, l->step + 1,
                                       l->keep_applied ? l->ga : NULL);
    if (grad_norm) *grad_norm = norm;
    if (!isfinite(norm))
        return cel_err_set(err, CEL_EINVAL, "gradient norm is %s: step not applied",
                           isnan(norm) ? "nan" : "inf");
    l->step++;
    if (l->keep_applied && l->ga) {
        l->ga_step = l->step;
        l->ga_opt = *opt;
    }
    return CEL_OK;
}

/* ---- the checkpoint's step log (issue 17) ---- */

void cel_lora_keep_applied(cel_lora_t *l) { l->keep_applied = 1; }

/* Adds block b (the applied or the pending gradient) as applied.safetensors. */
static int add_applied(cel_lora_t *l, float *b, cel_lora_image_t *img, cel_err_t *err) {
    float *gb[1] = { b };
    const char *gs[1] = { ".grad" };
    const char *gkv[2] = { "format", "celeriac-applied-1" };
    return add_blocks(img, "applied.safetensors", l, gb, gs, 1, gkv, 1, err);
}

int cel_lora_applied_image(cel_lora_t *l, cel_lora_image_t *img, cel_err_t *err) {
    if (!l->ga || l->ga_step == 0 || l->ga_step != l->step)
        return cel_err_set(err, CEL_ENOTFOUND, "no applied gradient of step %d kept", l->step);
    const cel_adamw_t *o = &l->ga_opt;
    l->ga_step = 0; /* one entry per step: a later write without a new step is a full one */
    json_t *j =
        json_pack("{s:s, s:i, s:f, s:f, s:f, s:f, s:f}", "format", "celeriac-step-1", "step",
                  l->step, "lr", (double)o->lr, "beta1", (double)o->beta1, "beta2",
                  (double)o->beta2, "eps", (double)o->eps, "weight_decay", (double)o->weight_decay);
    /* 17 digits: each float comes back exactly */
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    if (!text) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    /* the gradient first: it may be in place already (cel_lora_pending_image) */
    int rc = add_applied(l, l->ga, img, err);
    if (rc != CEL_OK) {
        free(text);
        return rc;
    }
    return cel_lora_image_add(img, "step.json", (unsigned char *)text, strlen(text), err);
}

int cel_lora_pending_image(cel_lora_t *l, cel_lora_image_t *img, cel_err_t *err) {
    if (l->dev) return cel_err_set(err, CEL_ESTATE, "adapter is on the device");
    return add_applied(l, l->g, img, err);
}

/* A float of step.json (finite, as written). */
static int step_float(json_t *j, const char *key, float *out) {
    json_t *v = json_object_get(j, key);
    if (!json_is_number(v) || !isfinite(json_number_value(v))) return 0;
    *out = (float)json_number_value(v);
    return 1;
}

int cel_lora_replay_image(cel_lora_t *l, const cel_lora_image_t *img, cel_err_t *err) {
    if (l->dev) return cel_err_set(err, CEL_ESTATE, "adapter is on the device");
    size_t slen = 0, glen = 0;
    const unsigned char *sj = cel_lora_image_get(img, "step.json", &slen);
    const unsigned char *g = cel_lora_image_get(img, "applied.safetensors", &glen);
    if (!sj || !g) return cel_err_set(err, CEL_EPROTO, "logged step: no step.json or gradient");
    json_t *j = json_loadb((const char *)sj, slen, JSON_REJECT_DUPLICATES, NULL);
    cel_adamw_t o = { 0 };
    json_t *step = json_object_get(j, "step");
    int ok = j && json_is_integer(step) && step_float(j, "lr", &o.lr) &&
             step_float(j, "beta1", &o.beta1) && step_float(j, "beta2", &o.beta2) &&
             step_float(j, "eps", &o.eps) && step_float(j, "weight_decay", &o.weight_decay);
    long long at = ok ? json_integer_value(step) : 0;
    json_decref(j);
    if (!ok) return cel_err_set(err, CEL_EPROTO, "logged step: step.json unreadable");
    if (at != (long long)l->step + 1)
        return cel_err_set(err, CEL_EPROTO, "logged step %lld follows step %d", at, l->step);
    cel_safetensors_t *st = NULL;
    int rc = cel_safetensors_parse(g, glen, &st, err);
    float *blocks[1] = { l->g };
    const char *suffixes[1] = { ".grad" };
    if (rc == CEL_OK) rc = read_blocks(l, st, blocks, suffixes, 1, "logged step gradient", err);
    cel_safetensors_free(st);
    if (rc == CEL_OK) {
        /* what cel_model_adamw_apply did after clipping: the same update, the same bits */
        cel_cpu_adamw_update(l->w, l->m, l->v, l->g, l->n, o.lr, o.beta1, o.beta2, o.eps,
                             o.weight_decay, l->step + 1);
        l->step++;
    }
    memset(l->g, 0, l->n * sizeof(float));
    return rc;
}

void cel_lora_zero_grad(cel_lora_t *l) {
    if (l->dev && l->dev_model->gpu_api->lora_zero_grad(l->dev, NULL) == CEL_OK) {
        /* the host grads are stale only if the device ones were newer */
        if (!l->host_stale) memset(l->g, 0, l->n * sizeof(float));
        return;
    }
    memset(l->g, 0, l->n * sizeof(float));
}
/* ---- many workers (issue 15): gradients handed over by checkpoint ---- */

int cel_lora_save_grads(cel_lora_t *l, const char *dir, int flags, cel_err_t *err) {
    char path[4096];
    int rc = cel_device_lora_sync(l, err);
    if (rc != CEL_OK) return rc;
    float *blocks[1] = { l->g };
    const char *suffixes[1] = { ".grad" };
    const char *kv[2] = { "format", "celeriac-grad-1" };
    snprintf(path, sizeof(path), "%s/gradients.safetensors", dir);
    return write_blocks(l, path, blocks, suffixes, 1, kv, 1,
                        flags & CEL_LORA_SAVE_NOSYNC ? 0 : CEL_ST_ATOMIC, err);
}

int cel_lora_load_grads(cel_lora_t *l, const char *dir, cel_err_t *err) {
    if (l->dev) return cel_err_set(err, CEL_ESTATE, "adapter is on the device");
    char path[4096];
    struct stat sb;
    snprintf(path, sizeof(path), "%s/gradients.safetensors", dir);
    if (stat(path, &sb) != 0) return cel_err_set(err, CEL_ENOTFOUND, "%s: not found", path);
    cel_safetensors_t *st = NULL;
    int rc = cel_safetensors_open(path, &st, err);
    float *blocks[1] = { l->g };
    const char *suffixes[1] = { ".grad" };
    if (rc == CEL_OK) rc = read_blocks(l, st, blocks, suffixes, 1, path, err);
    cel_safetensors_free(st);
    if (rc != CEL_OK) memset(l->g, 0, l->n * sizeof(float));
    return rc;
}

int cel_lora_load_grads_image(cel_lora_t *l, const cel_lora_image_t *img, cel_err_t *err) {
    if (l->dev) return cel_err_set(err, CEL_ESTATE, "adapter is on the device");
    size_t len = 0;
    const unsigned char *g = cel_lora_image_get(img, "gradients.safetensors", &len);
    if (!g) return cel_err_set(err, CEL_ENOTFOUND, "checkpoint: no gradients.safetensors");
    cel_safetensors_t *st = NULL;
    int rc = cel_safetensors_parse(g, len, &st, err);
    float *blocks[1] = { l->g };
    const char *suffixes[1] = { ".grad" };
    if (rc == CEL_OK)
        rc = read_blocks(l, st, blocks, suffixes, 1, "checkpoint gradients.safetensors", err);
    cel_safetensors_free(st);
    if (rc != CEL_OK) memset(l->g, 0, l->n * sizeof(float));
    return rc;
}

int cel_lora_step_count(const cel_lora_t *l) { return l->step; }
int cel_lora_rank(const cel_lora_t *l) { return l->R; }
float cel_lora_alpha(const cel_lora_t *l) { return l->alpha; }
unsigned cel_lora_targets(const cel_lora_t *l) { return l->targets; }
