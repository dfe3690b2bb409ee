/* model.c -- the base model object: load, initialise, save, full-parameter training state.
 *
 * Parameters live in one f32 block with llm.c-style views (cel_params_t); the
 * layer-stacked arrays hold layer l's matrix at offset l * size. Loading reads
 * HF's tensor names (model.embed_tokens.weight, model.layers.N.self_attn.q_proj.weight,
 * ..., model.norm.weight, lm_head.weight) and refuses missing, misshapen or
 * unknown tensors. Full-parameter training adds grads and AdamW moments in
 * blocks of the same layout. Forward/backward are in train.c.
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cblas.h>
#undef I /* OpenBLAS pulls in <complex.h>; we use I for the MLP width */

#include "cpu/ops.h"
#include "safetensors.h"

const char *const cel_model_mod_names[CEL_NMOD] = { "q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                    "gate_proj", "up_proj", "down_proj" };
const char *const cel_model_mod_paths[CEL_NMOD] = { "self_attn.q_proj", "self_attn.k_proj",
                                                    "self_attn.v_proj", "self_attn.o_proj",
                                                    "mlp.gate_proj",    "mlp.up_proj",
                                                    "mlp.down_proj" };

void cel_model_mod_dims(const cel_config_t *c, int mod, int *in, int *out) {
    int q = c->NH * c->HS, kv = c->NKV * c->HS;
    switch (mod) {
    case CEL_MOD_Q: *in = c->C, *out = q; break;
    case CEL_MOD_K:
    case CEL_MOD_V: *in = c->C, *out = kv; break;
    case CEL_MOD_O: *in = q, *out = c->C; break;
    case CEL_MOD_GATE:
    case CEL_MOD_UP: *in = c->C, *out = c->I; break;
    default: *in = c->I, *out = c->C; break;
    }
}

void cel_model_mod_weight_name(char *buf, size_t len, int l, int mod) {
    snprintf(buf, len, "model.layers.%d.%s.weight", l, cel_model_mod_paths[mod]);
}

void cel_model_params_views(const cel_config_t *c, float *block, cel_params_t *p) {
    CEL_PARAMS_SIZES(c);
    float *x = block;
#define VIEW(name, count) p->name = x, x += (count);
    CEL_PARAMS_LAYOUT(VIEW)
#undef VIEW
    p->lm = c->tied ? p->wte : x;
}

/* One named tensor of the model: its name, shape and place in a block. */
typedef struct ptensor {
    char name[96];
    int ndim;
    int64_t shape[2];
    float *data;
} ptensor_t;

/* Lists every tensor of the model with pointers into the block viewed by p.
 * Returns the count; list must hold 3 + 9L entries. */
static int list_tensors(const cel_config_t *c, const cel_params_t *p, ptensor_t *list) {
    int n = 0, q = c->NH * c->HS, kv = c->NKV * c->HS;
    size_t C = c->C;
#define PT(nm, d0, d1, ptr)                                                     \
    do {                                                                        \
        snprintf(list[n].name, sizeof(list[n].name), "%s", nm);                 \
        list[n].ndim = (d1) ? 2 : 1;                                            \
        list[n].shape[0] = (d0), list[n].shape[1] = (d1), list[n].data = (ptr); \
        n++;                                                                    \
    } while (0)
    PT("model.embed_tokens.weight", c->V, c->C, p->wte);
    for (int l = 0; l < c->L; l++) {
        char nm[96];
        snprintf(nm, sizeof(nm), "model.layers.%d.input_layernorm.weight", l);
        PT(nm, c->C, 0, p->ln1 + l * C);
        snprintf(nm, sizeof(nm), "model.layers.%d.post_attention_layernorm.weight", l);
        PT(nm, c->C, 0, p->ln2 + l * C);
        float *w[CEL_NMOD] = { p->wq + l * (size_t)q * C,    p->wk + l * (size_t)kv * C,
                               p->wv + l * (size_t)kv * C,   p->wo + l * C * q,
                               p->wg + l * (size_t)c->I * C, p->wu + l * (size_t)c->I * C,
                               p->wd + l * C * c->I };
        for (int mod = 0; mod < CEL_NMOD; mod++) {
            int in, out;
            cel_model_mod_dims(c, mod, &in, &out);
            cel_model_mod_weight_name(nm, sizeof(nm), l, mod);
            PT(nm, out, in, w[mod]);
        }
    }
    PT("model.norm.weight", c->C, 0, p->lnf);
    if (!c->tied) PT("lm_head.weight", c->V, c->C, p->lm);
#undef PT
    return n;
}

/* Is name a tensor this engine reads (or may ignore)? */
static int known_name(const cel_config_t *c, const char *name) {
    int l, off = 0;
    if (strcmp(name, "model.embed_tokens.weight") == 0 || strcmp(name, "model.norm.weight") == 0)
        return 1;
    if (strcmp(name, "lm_head.weight") == 0) return 1; /* ignored when tied */
    if (sscanf(name, "model.layers.%d.%n", &l, &off) != 1 || off == 0 || l < 0 || l >= c->L)
        return 0;
    const char *rest = name + off;
    if (strcmp(rest, "input_layernorm.weight") == 0 ||
        strcmp(rest, "post_attention_layernorm.weight") == 0 ||
        strcmp(rest, "self_attn.rotary_emb.inv_freq") == 0)
        return 1;
    for (int mod = 0; mod < CEL_NMOD; mod++) {
        size_t k = strlen(cel_model_mod_paths[mod]);
        if (strncmp(rest, cel_model_mod_paths[mod], k) == 0 && strcmp(rest + k, ".weight") == 0)
            return 1;
    }
    return 0;
}

/* Allocates the model with the shape cfg, weights uninitialised. */
static int model_alloc(const cel_config_t *cfg, cel_model_t **out, cel_err_t *err) {
    cel_model_t *m = calloc(1, sizeof(*m));
    if (!m) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    m->cfg = *cfg;
    m->n = cel_config_param_count(cfg);
    m->maxT = cfg->maxT < CEL_MODEL_MAX_SEQ ? cfg->maxT : CEL_MODEL_MAX_SEQ;
    size_t h = cfg->HS / 2;
    m->w = malloc(m->n * sizeof(float));
    m->rope_cos = malloc((size_t)m->maxT * h * sizeof(float));
    m->rope_sin = malloc((size_t)m->maxT * h * sizeof(float));
    if (!m->w || !m->rope_cos || !m->rope_sin) {
        cel_model_free(m);
        return cel_err_set(err, CEL_ENOMEM, "out of memory for %zu parameters", m->n);
    }
    cel_model_params_views(cfg, m->w, &m->p);
    cel_cpu_rope_init(m->rope_cos, m->rope_sin, m->maxT, cfg->HS, cfg->rope_theta, cfg->rope_kind,
                      cfg->rope_factor, cfg->rope_low_freq, cfg->rope_high_freq,
                      cfg->rope_orig_max);
    *out = m;
    return CEL_OK;
}

int cel_model_load(const char *dir, cel_model_t **out, cel_err_t *err) {
    *out = NULL;
    char path[4096];
    cel_config_t cfg;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    int rc = cel_config_load(path, &cfg, err);
    if (rc != CEL_OK) return rc;
    cel_safetensors_t *st = NULL;
    struct stat sb;
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if (stat(path, &sb) == 0) {
        rc = cel_safetensors_open(path, &st, err);
    } else {
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        if (stat(path, &sb) != 0)
            return cel_err_set(err, CEL_ENOTFOUND,
                               "%s: no model.safetensors or "
                               "model.safetensors.index.json",
                               dir);
        rc = cel_safetensors_open_index(path, &st, err);
    }
    if (rc != CEL_OK) return rc;
    cel_model_t *m = NULL;
    ptensor_t *list = NULL;
    if ((rc = model_alloc(&cfg, &m, err)) != CEL_OK) goto fail;
    list = malloc((3 + 9 * (size_t)cfg.L) * sizeof(*list));
    if (!list) {
        rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
        goto fail;
    }
    int n = list_tensors(&cfg, &m->p, list);
    for (int i = 0; i < n; i++) {
        rc = cel_safetensors_read_f32(st, list[i].name, list[i].ndim, list[i].shape, list[i].data,
                                      err);
        if (rc != CEL_OK) goto fail;
    }
    for (int i = 0; i < cel_safetensors_count(st); i++) {
        const char *name = cel_safetensors_at(st, i)->name;
        if (!known_name(&cfg, name)) {
            rc = cel_err_set(err, CEL_EINVAL,
                             "%s: tensor %.96s is not part of a Llama model "
                             "of this config",
                             dir, name);
            goto fail;
        }
    }
    free(list);
    cel_safetensors_free(st);
    *out = m;
    return CEL_OK;
fail:
    free(list);
    cel_safetensors_free(st);
    cel_model_free(m);
    return rc;
}

int cel_model_init(const char *config_json, uint64_t seed, cel_model_t **out, cel_err_t *err) {
    *out = NULL;
    cel_config_t cfg;
    int rc = cel_config_parse(config_json, strlen(config_json), &cfg, err);
    if (rc != CEL_OK) return rc;
    cel_model_t *m;
    if ((rc = model_alloc(&cfg, &m, err)) != CEL_OK) return rc;
    cel_rng_t rng;
    cel_rng_seed(&rng, seed, 0);
    for (size_t i = 0; i < m->n; i++) m->w[i] = (float)(0.02 * cel_rng_normal(&rng));
    for (size_t i = 0; i < (size_t)cfg.L * cfg.C; i++) m->p.ln1[i] = m->p.ln2[i] = 1.0f;
    for (int i = 0; i < cfg.C; i++) m->p.lnf[i] = 1.0f;
    *out = m;
    return CEL_OK;
}

int cel_model_write(const cel_model_t *m, const char *path, int which, cel_err_t *err) {
    float *block = which == CEL_BLOCK_WEIGHTS   ? m->w
                   : which == CEL_BLOCK_GRADS   ? m->g
                   : which == CEL_BLOCK_EXP_AVG ? m->m
                                                : m->v;
    if (!block) return cel_err_set(err, CEL_ESTATE, "model has no such block (full training off)");
    cel_params_t p;
    cel_model_params_views(&m->cfg, block, &p);
    size_t cnt = 3 + 9 * (size_t)m->cfg.L;
    ptensor_t *list = malloc(cnt * sizeof(*list));
    cel_st_entry_t *e = malloc(cnt * sizeof(*e));
    if (!list || !e) {
        free(list);
        free(e);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    int n = list_tensors(&m->cfg, &p, list);
    for (int i = 0; i < n; i++) {
        memset(&e[i], 0, sizeof(e[i]));
        e[i].name = list[i].name;
        e[i].ndim = list[i].ndim;
        e[i].shape[0] = list[i].shape[0];
        e[i].shape[1] = list[i].shape[1];
        e[i].data = list[i].data;
    }
    const char *meta[] = { "format", "pt" };
    int rc = cel_safetensors_write(path, e, n, meta, 1, CEL_ST_ATOMIC, err);
    free(list);
    free(e);
    return rc;
}

int cel_model_save(const cel_model_t *m, const char *dir, cel_err_t *err) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    int rc = cel_model_write(m, path, CEL_BLOCK_WEIGHTS, err);
    if (rc != CEL_OK) return rc;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    return cel_config_save(&m->cfg, path, err);
}

/* The bf16 copies of the frozen weights: (l, mod) forward and backward, then the head's. */
static int bf16_count(const cel_model_t *m) { return (m->cfg.L * CEL_NMOD + 1) * 2; }

static void bf16_drop(cel_model_t *m) {
    if (!m->bf16) return;
    for (int i = 0; i < bf16_count(m); i++) cel_cpu_bf16_free(&m->bf16[i]);
    free(m->bf16);
    m->bf16 = NULL;
}

int cel_model_set_precision(cel_model_t *m, const char *spec, cel_err_t *err) {
    if (!spec || strcmp(spec, "fp32") == 0) {
        bf16_drop(m);
        return CEL_OK;
    }
    if (strcmp(spec, "bf16") != 0)
        return cel_err_set(err, CEL_EINVAL, "precision must be fp32 or bf16, not \"%s\"", spec);
    if (m->bf16) return CEL_OK;
    if (m->gpu)
        return cel_err_set(err, CEL_ESTATE,
                           "precision bf16 is for the CPU (a GPU computes in bf16)");
    if (m->g)
        return cel_err_set(err, CEL_ESTATE,
                           "precision bf16 needs frozen weights (full training is enabled)");
    if (!cel_cpu_bf16_supported())
        return cel_err_set(err, CEL_ENOTFOUND, "precision bf16 needs a CPU with AVX512-BF16");
    const cel_config_t *c = &m->cfg;
    m->bf16 = calloc(bf16_count(m), sizeof(*m->bf16));
    if (!m->bf16) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    float *base[CEL_NMOD] = { m->p.wq, m->p.wk, m->p.wv, m->p.wo, m->p.wg, m->p.wu, m->p.wd };
    int bad = 0;
    for (int l = 0; l < c->L && !bad; l++)
        for (int mod = 0; mod < CEL_NMOD && !bad; mod++) {
            int in, out;
            cel_model_mod_dims(c, mod, &in, &out);
            const float *W = base[mod] + (size_t)l * in * out; /* (out, in) */
            cel_cpu_bf16w_t *b = &m->bf16[(l * CEL_NMOD + mod) * 2];
            bad = cel_cpu_bf16_pack(&b[0], W, in, in, out, 1) || /* x W^T: B = W^T (in, out) */
                  cel_cpu_bf16_pack(&b[1], W, in, out, in, 0);   /* dout W: B = W (out, in) */
        }
    cel_cpu_bf16w_t *h = &m->bf16[c->L * CEL_NMOD * 2];
    bad = bad || cel_cpu_bf16_pack(&h[0], m->p.lm, c->C, c->C, c->V, 1) ||
          cel_cpu_bf16_pack(&h[1], m->p.lm, c->C, c->V, c->C, 0);
    if (bad) {
        bf16_drop(m);
        return cel_err_set(err, CEL_ENOMEM, "out of memory for the bf16 weights");
    }
    return CEL_OK;
}

void cel_model_free(cel_model_t *m) {
    if (!m) return;
    bf16_drop(m);
    cel_device_close(m);
    cel_train_ws_free(&m->ws);
    free(m->w);
    free(m->g);
    free(m->m);
    free(m->v);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m);
}

int cel_model_vocab_size(const cel_model_t *m) { return m->cfg.V; }
int cel_model_max_seq(const cel_model_t *m) { return m->maxT; }
int cel_model_bos(const cel_model_t *m) { return m->cfg.bos_id; }
uint64_t cel_model_param_count(const cel_model_t *m) { return m->n; }
int cel_model_step_count(const cel_model_t *m) { return m->step; }

int cel_model_eos(const cel_model_t *m, int32_t *ids, int max) {
    for (int i = 0; i < m->cfg.n_eos && i < max; i++) ids[i] = m->cfg.eos_ids[i];
    return m->cfg.n_eos;
}

/* With gemm.c (AVX-512F) the big products run on par.c's threads and what is
 * left to OpenBLAS (LoRA's rank-r products, the attention's blocks, a few
 * rows split by gemm.c) runs on one thread: OpenBLAS's idle threads spin
 * (sched_yield) after each of its calls and took a core from par.c's next
 * job (LoRA training 20-25 % slower). */
void cel_model_set_threads(int n) {
    if (n < 1) n = cel_cpu_par_threads(); /* the default: OpenBLAS's (the cores) */
    cel_cpu_par_set_threads(n);
    openblas_set_num_threads(cel_cpu_gemm_supported() ? 1 : n);
}

cel_adamw_t cel_model_adamw_defaults(void) {
    cel_adamw_t a = { .lr = 1e-3f,
                      .beta1 = 0.9f,
                      .beta2 = 0.999f,
                      .eps = 1e-8f,
                      .weight_decay = 0.01f,
                      .grad_clip = 0.0f };
    return a;
}

int cel_model_train_full(cel_model_t *m, cel_err_t *err) {
    if (m->g) return CEL_OK;
    if (m->gpu) return cel_err_set(err, CEL_ESTATE, "full-parameter training runs on the CPU only");
    if (m->bf16)
        return cel_err_set(err, CEL_ESTATE, "full-parameter training needs precision fp32");
    m->g = calloc(m->n, sizeof(float));
    m->m = calloc(m->n, sizeof(float));
    m->v = calloc(m->n, sizeof(float));
    if (!m->g || !m->m || !m->v) {
        free(m->g);
        free(m->m);
        free(m->v);
        m->g = m->m = m->v = NULL;
        return cel_err_set(err, CEL_ENOMEM, "out of memory for full-parameter training");
    }
    cel_model_params_views(&m->cfg, m->g, &m->gp);
    return CEL_OK;
}

int cel_model_adamw_check(const cel_adamw_t *o, cel_err_t *err) {
    if (!(o->lr >= 0) || !(o->eps >= 0) || !(o->beta1 >= 0 && o->beta1 < 1) ||
        !(o->beta2 >= 0 && o->beta2 < 1) || !(o->weight_decay >= 0) || !(o->grad_clip >= 0))
        return cel_err_set(err, CEL_EINVAL,
                           "AdamW: need lr >= 0, eps >= 0, betas in [0, 1), "
                           "weight_decay >= 0, grad_clip >= 0");
    return CEL_OK;
}

float cel_model_adamw_apply(float *w, float *g, float *mo, float *vo, size_t n,
                            const cel_adamw_t *o, int step, float *applied) {
    float norm = (float)sqrt(cel_cpu_adamw_sumsq(g, n));
    if (!isfinite(norm)) return norm; /* a NaN/Inf gradient never reaches the weights */
    if (o->grad_clip > 0 && norm > o->grad_clip)
        cel_cpu_adamw_scale(g, n, o->grad_clip / (norm + 1e-6f));
    if (applied) memcpy(applied, g, n * sizeof(float));
    cel_cpu_adamw_update(w, mo, vo, g, n, o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, step);
    memset(g, 0, n * sizeof(float));
    return norm;
}

int cel_model_step(cel_model_t *m, const cel_adamw_t *opt, float *grad_norm, cel_err_t *err) {
    if (!m->g) return cel_err_set(err, CEL_ESTATE, "full-parameter training is not enabled");
    int rc = cel_model_adamw_check(opt, err);
    if (rc != CEL_OK) return rc;
    float norm = cel_model_adamw_apply(m->w, m->g, m->m, m->v, m->n, opt, m->step + 1, NULL);
    if (grad_norm) *grad_norm = norm;
    if (!isfinite(norm))
        return cel_err_set(err, CEL_EINVAL, "gradient norm is %s: step not applied",
                           isnan(norm) ? "nan" : "inf");
    m->step++;
    return CEL_OK;
}
