/* internal.h -- declarations shared between the files of model/, not public.
 *
 * The model and adapter structs (parameters as views into single blocks), the
 * activation workspace of train.c, the PEFT module table, the RNG, and
 * writers the tests use to export gradients and optimizer moments. Nothing
 * here is thread-safe beyond what model.h promises.
 */
#ifndef CEL_MODEL_INTERNAL_H
#define CEL_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config.h"
#include "model.h"
#include "params.h"

/* The seven linear layers a LoRA can target, in PEFT's naming. */
enum {
    CEL_MOD_Q,
    CEL_MOD_K,
    CEL_MOD_V,
    CEL_MOD_O,
    CEL_MOD_GATE,
    CEL_MOD_UP,
    CEL_MOD_DOWN,
    CEL_NMOD
};

/* "q_proj", ... and the HF submodule path "self_attn.q_proj", "mlp.down_proj". */
extern const char *const cel_model_mod_names[CEL_NMOD];
extern const char *const cel_model_mod_paths[CEL_NMOD];

/* Input and output width of module mod. */
void cel_model_mod_dims(const cel_config_t *c, int mod, int *in, int *out);

/* Views into one parameter-shaped block (weights, grads, or AdamW moments),
 * in params.h's order (CEL_PARAMS_LAYOUT, shared with the CUDA backend). lm
 * aliases wte when the head is tied. */
typedef struct cel_params {
    float *wte; /* (V,C) */
    float *ln1; /* (L,C) */
    float *wq;  /* (L,NH*HS,C) */
    float *wk;  /* (L,NKV*HS,C) */
    float *wv;  /* (L,NKV*HS,C) */
    float *wo;  /* (L,C,NH*HS) */
    float *ln2; /* (L,C) */
    float *wg;  /* (L,I,C) */
    float *wu;  /* (L,I,C) */
    float *wd;  /* (L,C,I) */
    float *lnf; /* (C) */
    float *lm;  /* (V,C) */
} cel_params_t;

/* Points p's views into block (cel_config_param_count floats). */
void cel_model_params_views(const cel_config_t *c, float *block, cel_params_t *p);

/* Activations of one forward (sized for `cap` rows of B*T, T <= capT), and
 * the backward's scratch. Per-layer arrays have L slices in training mode and
 * one reused slice for inference. Grown between steps, never inside one. */
typedef struct cel_ws {
    size_t cap;           /* B*T rows the buffers hold */
    int capT, capL, capR; /* T, layers stored, LoRA rank (u buffers) */
    float *mem;           /* one anonymous mapping of mem_bytes (ws_ensure) */
    size_t mem_bytes;
    int32_t *imem;
    int32_t *tokens, *targets, *pos; /* (B,T) sanitised copies, positions */
    int32_t *lens;                   /* (B) valid lengths */
    float *weights;                  /* (B,T) 0 on padded slots */
    float *res;           /* (L+1,B,T,C) residual stream entering each layer; [L] the last */
    float *res2;          /* (L,B,T,C) after attention */
    float *ln1, *ln2;     /* (L,B,T,C) */
    float *rstd1, *rstd2; /* (L,B,T) */
    float *q;             /* (L,B,T,NH*HS) after rope */
    float *k, *v;         /* (L,B,T,NKV*HS), k after rope */
    float *lse;           /* (L,B,NH,T) attention row log-sum-exp */
    float *atty;          /* (L,B,T,NH*HS) attention output */
    float *gate, *up, *h; /* (L,B,T,I) */
    float *u[CEL_NMOD];   /* (L,B,T,R) LoRA x A^T of each module */
    float *lnf;           /* (B,T,C) */
    float *rstdf;         /* (B,T) */
    float *logits;        /* (B,T,V), dlogits in backward */
    float *lse_ce, *logp; /* (B,T) */
    /* backward scratch */
    float *dres, *dln, *tmp; /* (B,T,C) */
    float *dq, *datty;       /* (B,T,NH*HS) */
    float *dk, *dv;          /* (B,T,NKV*HS) */
    float *dgate, *dup, *dh; /* (B,T,I) */
    float *du;               /* (B,T,R) */
    float *att;              /* (2,T,T) attention scratch */
} cel_ws_t;

void cel_train_ws_free(cel_ws_t *ws);

/* One segment of a packed batch (train.c): sequences [b0, b0 + nb) run with
 * lora (NULL: the base model; in a backward pass, full-parameter training). */
typedef struct cel_seg {
    cel_lora_t *lora;
    int b0, nb;
} cel_seg_t;

struct cel_gpu;
struct cel_gpu_api;
struct cel_gpu_lora;

struct cel_model {
    cel_config_t cfg;
    int maxT; /* rope table rows, min(cfg.maxT, CEL_MODEL_MAX_SEQ) */
    size_t n; /* parameter floats */
    float *w; /* the parameters */
    cel_params_t p;
    float *g, *m, *v; /* full training: grads and AdamW moments, else NULL */
    cel_params_t gp;
    int step;
    float *rope_cos, *rope_sin; /* (maxT,HS/2) */
    cel_ws_t ws;
    /* device.c: the GPU this model runs on (NULL: the CPU) */
    const struct cel_gpu_api *gpu_api;
    struct cel_gpu *gpu;
    size_t gpu_budget;     /* bytes adapters may hold on the GPU, 0 = no limit */
    uint64_t gpu_clock;    /* LRU clock */
    cel_lora_t **resident; /* adapters with a device copy */
    int n_resident, cap_resident;
    long evictions;
    size_t gpu_mem_total; /* the GPU's memory when opened (bytes) */
    /* cel_model_set_precision "bf16" (CPU): the frozen weights packed in bf16,
     * for x W^T (fwd) and dout W (bwd); NULL in fp32 (the default) */
    struct cel_cpu_bf16w *bf16; /* (L, CEL_NMOD, 2) then the head's 2 */
};

struct cel_lora {
    cel_config_t cfg; /* the base model's shape */
    int R;
    float alpha, scaling;
    unsigned targets;
    int use_rslora;
    size_t n;              /* floats in each block */
    float *w, *g, *m, *v;  /* weights, grads, AdamW moments: same layout */
    size_t offA[CEL_NMOD]; /* A of module mod: (L,R,in) at block + offA */
    size_t offB[CEL_NMOD]; /* B of module mod: (L,out,R) at block + offB */
    int step;
    json_t *meta; /* optimizer-file metadata (strings) */
    /* device.c: the adapter's copy on its model's GPU, when resident */
    struct cel_gpu_lora *dev;
    cel_model_t *dev_model;
    uint64_t dev_used; /* LRU clock of its last use */
    int host_stale;    /* the device copy is newer than w, g, m, v */
    int dev_pins;      /* GPU samplers using the device copy: not evicted */
    /* the checkpoint's step log (cel_lora_keep_applied) */
    int keep_applied;
    float *ga;          /* the gradient the last CPU step applied (after clipping) */
    int ga_step;        /* the step ga made, 0: none (a device step, or none since load) */
    cel_adamw_t ga_opt; /* and its hyper-parameters */
};

/* Which block cel_lora_write / cel_model_write exports. */
enum { CEL_BLOCK_WEIGHTS, CEL_BLOCK_GRADS, CEL_BLOCK_EXP_AVG, CEL_BLOCK_EXP_AVG_SQ };

/* Writes one block of the adapter as F32 safetensors under PEFT's tensor names
 * (suffix appended to each name when not NULL). */
int cel_lora_write(const cel_lora_t *l, const char *path, int which, const char *suffix,
                   const char *const *meta, int n_meta, cel_err_t *err);

/* Writes one block of the model under HF's tensor names (lm_head only when untied). */
int cel_model_write(const cel_model_t *m, const char *path, int which, cel_err_t *err);

/* The HF name of layer l's module mod weight, e.g.
 * "model.layers.3.self_attn.q_proj.weight". */
void cel_model_mod_weight_name(char *buf, size_t len, int l, int mod);

/* Validates AdamW arguments as torch.optim.AdamW's constructor does. */
int cel_model_adamw_check(const cel_adamw_t *o, cel_err_t *err);

/* One optimizer step over a block (cel_model_step, cel_lora_step): global
 * norm, optional clipping, AdamW update, zeroed grads; applied (may be NULL)
 * gets a copy of the gradient the update used (after clipping). Returns the
 * norm; a non-finite one is returned with nothing changed. */
float cel_model_adamw_apply(float *w, float *g, float *m, float *v, size_t n, const cel_adamw_t *o,
                            int step, float *applied);

/* device.c: adapters on a GPU model. Makes l's device copy current (uploads
 * it, evicting least recently used adapters past the budget) and marks it
 * used now. */
int cel_device_lora_ready(cel_model_t *m, cel_lora_t *l, cel_err_t *err);
/* Copies a newer device state back into l's host blocks (no-op on the CPU). */
int cel_device_lora_sync(cel_lora_t *l, cel_err_t *err);
/* Frees l's device copy, saving it to the host blocks first when save. */
int cel_device_lora_evict(cel_lora_t *l, int save, cel_err_t *err);
/* Runs a packed batch on the GPU (train.c's twin): ws->logp gets the
 * log-probs when the batch has targets; logits (host, may be NULL) too. */
int cel_device_run(cel_model_t *m, const cel_seg_t *segs, int nseg, int B, int T, int backward,
                   float *logits, cel_err_t *err);
/* Releases the model's GPU state (adapters' device copies are evicted). */
void cel_device_close(cel_model_t *m);

/* xoshiro256** seeded through splitmix64 from (seed, stream). */
typedef struct cel_rng {
    uint64_t s[4];
} cel_rng_t;
void cel_rng_seed(cel_rng_t *r, uint64_t seed, uint64_t stream);
uint64_t cel_rng_next(cel_rng_t *r);
/* Uniform in [0, 1) with 24 random bits. */
float cel_rng_uniform(cel_rng_t *r);
/* Standard normal (Box-Muller, double precision). */
double cel_rng_normal(cel_rng_t *r);

#endif
