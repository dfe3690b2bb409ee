/* gpu.h -- the interface between model/ and its CUDA backend (bin/libceleriac-cuda.so).
 *
 * The backend is a shared library that model/device.c dlopens only when a
 * model is moved to a CUDA device, so nothing that stays on the CPU (and
 * never the worker's main process, which links no model code at all) maps
 * libcuda, libcudart or cuBLAS. The library exports one symbol,
 * cel_gpu_api(), returning a table of the functions below; model/device.c
 * checks its abi number. Host-side state (which adapters are resident, LRU
 * eviction, RNG draws, stop conditions, per-job losses) stays in model/;
 * the backend holds device memory and runs passes. Every function runs on the
 * calling thread, synchronously (results are on the host when it returns).
 * C and C++ (nvcc) both include this header.
 */
#ifndef CEL_GPU_H
#define CEL_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"
#include "config.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CEL_GPU_ABI  1
#define CEL_GPU_NMOD 7 /* q k v o gate up down, internal.h's CEL_MOD_* order */

typedef struct cel_gpu cel_gpu_t;                 /* a base model on one GPU */
typedef struct cel_gpu_lora cel_gpu_lora_t;       /* an adapter's state on that GPU */
typedef struct cel_gpu_sampler cel_gpu_sampler_t; /* a KV cache and its sequences */

typedef struct cel_gpu_info {
    int index;      /* CUDA device ordinal */
    char name[128]; /* "NVIDIA H100 80GB HBM3" */
    int cc_major, cc_minor;
    size_t mem_total, mem_free; /* bytes, when opened */
} cel_gpu_info_t;

/* The host's view of the base model: config, f32 weights in cel_params_t's
 * order (model/internal.h) and the rope tables. The backend converts the
 * weights to bf16 once when it opens the model. */
typedef struct cel_gpu_model_src {
    const cel_config_t *cfg;
    int maxT;
    const float *wte, *ln1, *wq, *wk, *wv, *wo, *ln2, *wg, *wu, *wd, *lnf, *lm;
    const float *rope_cos, *rope_sin; /* (maxT, HS/2) */
} cel_gpu_model_src_t;

/* An adapter's layout: the same as cel_lora_t's blocks (n floats; module
 * mod's A (L,R,in) at offA[mod], B (L,out,R) at offB[mod]). */
typedef struct cel_gpu_lora_shape {
    int R;
    float scaling;
    unsigned targets; /* 1 << mod bits */
    size_t n;
    size_t offA[CEL_GPU_NMOD], offB[CEL_GPU_NMOD];
} cel_gpu_lora_shape_t;

/* One segment of a packed batch: sequences [b0, b0 + nb) use lora (NULL =
 * the base model alone). Segments are disjoint and cover the batch. */
typedef struct cel_gpu_seg {
    cel_gpu_lora_t *lora;
    int b0, nb;
} cel_gpu_seg_t;

/* A packed batch of B right-padded sequences of T slots, already validated by
 * the host: padded slots hold token 0, target 0, weight 0. */
typedef struct cel_gpu_batch {
    int B, T;
    const int32_t *tokens, *targets; /* (B,T) host; targets NULL: no loss */
    const float *weights;            /* (B,T) host */
    const int32_t *lens;             /* (B) host */
} cel_gpu_batch_t;

typedef struct cel_gpu_api {
    int abi; /* CEL_GPU_ABI */
    /* Number of visible CUDA devices; 0 with err set when none (the driver's
     * reason in the message). */
    int (*device_count)(cel_err_t *err);
    /* Uploads the model to device `index` as bf16. OUT: *out, *info. */
    int (*open)(int index, const cel_gpu_model_src_t *src, cel_gpu_t **out, cel_gpu_info_t *info,
                cel_err_t *err);
    void (*close)(cel_gpu_t *g);
    /* Bytes of device memory in use by this model (weights, workspace,
     * adapters, samplers) and the peak since open. */
    void (*mem)(cel_gpu_t *g, size_t *used, size_t *peak);

    /* Allocates an adapter's weights, grads and AdamW moments on the device
     * and uploads the host blocks (any NULL block uploads zeros). */
    int (*lora_new)(cel_gpu_t *g, const cel_gpu_lora_shape_t *shape, const float *w,
                    const float *grad, const float *m, const float *v, cel_gpu_lora_t **out,
                    cel_err_t *err);
    /* Copies the device blocks back to the host (NULL blocks are skipped). */
    int (*lora_download)(cel_gpu_lora_t *l, float *w, float *grad, float *m, float *v,
                         cel_err_t *err);
    void (*lora_free)(cel_gpu_lora_t *l);
    /* Bytes the adapter holds on the device (blocks and bf16 shadows). */
    size_t (*lora_bytes)(const cel_gpu_lora_t *l);
    /* One AdamW step with the accumulated gradients (global-norm clipping when
     * grad_clip > 0), then zeroed gradients. step counts from 1. OUT: *norm. */
    int (*lora_step)(cel_gpu_lora_t *l, float lr, float beta1, float beta2, float eps,
                     float weight_decay, float grad_clip, int step, float *norm, cel_err_t *err);
    int (*lora_zero_grad)(cel_gpu_lora_t *l, cel_err_t *err);

    /* Runs the packed batch: forward, and with backward the LoRA gradients of
     * every segment's adapter (+=; each segment's rows only reach its own
     * adapter; every segment needs an adapter). OUT (host, may be NULL):
     * logits (B,T,V), logp (B,T) log-probs of the targets. */
    int (*run)(cel_gpu_t *g, const cel_gpu_batch_t *b, int nseg, const cel_gpu_seg_t *segs,
               int backward, float *logits, float *logp, cel_err_t *err);

    /* A KV cache for n sequences of up to Tmax tokens; sequence i uses
     * loras[i] (NULL = base). Prefills the prompts and keeps each sequence's
     * next-token logits on the device. */
    int (*sampler_new)(cel_gpu_t *g, int n, cel_gpu_lora_t *const *loras,
                       const int32_t *const *prompts, const int32_t *lens, int Tmax,
                       cel_gpu_sampler_t **out, cel_err_t *err);
    /* Appends one token to each of the cnt sequences seqs[] and refreshes
     * their next-token logits. */
    int (*sampler_feed)(cel_gpu_sampler_t *s, int cnt, const int *seqs, const int32_t *tokens,
                        cel_err_t *err);
    /* Picks the next token of each of the cnt sequences from its logits
     * (model/cuda/ops.h cel_cuda_sample; u[j] the uniform draw of seqs[j]). */
    int (*sampler_pick)(cel_gpu_sampler_t *s, int cnt, const int *seqs, const float *u,
                        float temperature, int top_k, float top_p, int32_t *out, cel_err_t *err);
    void (*sampler_free)(cel_gpu_sampler_t *s);
} cel_gpu_api_t;

/* The library's only export. */
const cel_gpu_api_t *cel_gpu_api(void);
typedef const cel_gpu_api_t *(*cel_gpu_api_fn)(void);

#ifdef __cplusplus
}
#endif

#endif
