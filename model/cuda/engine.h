/* engine.h -- the CUDA backend's model, adapter and workspace structs (internal to model/cuda/).
 *
 * engine.cu (open, adapters, packed forward/backward: model/train.c's twin)
 * and sampler.cu (KV-cache sampling: model/sampler.c's twin) share these.
 * Device memory is allocated through dmalloc/dfree so the model can report
 * the bytes it holds and their peak. One host thread drives a model.
 */
#ifndef CEL_CUDA_ENGINE_H
#define CEL_CUDA_ENGINE_H

/* C headers: their functions (cel_err_set) have C linkage in this C++ file */
extern "C" {
#include "../../common/err.h"
#include "../config.h"
#include "../params.h"
}
#include "../gpu.h"
#include "ops.h"

/* Base weights in bf16, views into one block in params.h's order (as cel_params_t). */
typedef struct gpu_params {
    cel_bf16_t *wte, *ln1, *wq, *wk, *wv, *wo, *ln2, *wg, *wu, *wd, *lnf, *lm;
} gpu_params_t;

/* Activations of a packed pass, sized for cap rows, capB sequences, capL
 * stored layers (L when training, 1 for inference) and LoRA stride capR. */
typedef struct gpu_ws {
    size_t cap;
    int capB, capL, capR, train;
    void *block;
    size_t bytes;
    int32_t *tokens, *targets, *pos; /* (N) */
    float *weights, *logp;           /* (N) */
    float *res;                      /* (L+1,N,C) or (1,N,C) in place */
    float *res2;                     /* (L,N,C) */
    cel_bf16_t *ln1, *ln2;           /* (L,N,C) */
    float *rstd1, *rstd2;            /* (L,N) */
    float *q, *k, *v;                /* (L,N,QD), (L,N,KD) */
    float *lse;                      /* (L,N*NH) */
    cel_bf16_t *atty;                /* (L,N,QD) */
    float *gate, *up;                /* (L,N,I) */
    cel_bf16_t *h;                   /* (L,N,I) */
    cel_bf16_t *u[CEL_GPU_NMOD];     /* (L,N,R) */
    cel_bf16_t *lnf;                 /* (N,C) */
    float *rstdf;                    /* (N) */
    float *logits;                   /* (chunk,V) */
    cel_bf16_t *dlogits;             /* (chunk,V) */
    /* backward only */
    float *dres, *dln, *tmp; /* (N,C); tmp also forward */
    cel_bf16_t *d16;         /* (N,max(C,QD,I)) a gradient cast for a GEMM */
    float *datty, *dq;       /* (N,QD) */
    float *dk, *dv;          /* (N,KD) */
    cel_bf16_t *dk16, *dv16; /* (N,KD) */
    float *dgate, *dup, *dh; /* (N,I) */
    cel_bf16_t *dup16;       /* (N,I) */
    cel_bf16_t *du;          /* (N,R) */
} gpu_ws_t;

struct cel_gpu {
    int dev;
    cudaStream_t st;
    cublasHandle_t blas;
    cel_config_t cfg;
    int maxT;
    cel_bf16_t *wblock;
    gpu_params_t p;
    float *rope_cos, *rope_sin;
    gpu_ws_t ws;
    int chunk;         /* rows of logits per head chunk */
    size_t used, peak; /* bytes through dmalloc */
    int32_t *host_pos; /* (cap) positions staged for upload */
    size_t host_pos_cap;
};

struct cel_gpu_lora {
    cel_gpu_t *g;
    cel_gpu_lora_shape_t sh;
    float *w, *grad, *m, *v; /* (n) each, one allocation */
    cel_bf16_t *w16;         /* (n) bf16 shadow of w for the GEMMs */
    double *sumsq;           /* device scalar for the gradient norm */
    size_t bytes;
};

/* Device allocation counted in g->used/peak; NULL with err set on failure. */
void *cel_gpu_dmalloc(cel_gpu_t *g, size_t bytes, const char *what, cel_err_t *err);
void cel_gpu_dfree(cel_gpu_t *g, void *p, size_t bytes);

/* Waits for the stream and turns a pending CUDA error, or a GEMM cuBLAS refused
 * since the last check, into CEL_EIO. */
int cel_gpu_check(cel_gpu_t *g, const char *what, cel_err_t *err);

/* Base weight of module mod in layer l, and its (in, out) widths. */
const cel_bf16_t *cel_gpu_mod_weight(const cel_gpu_t *g, int l, int mod, int *in, int *out);

/* out = inp W^T over N rows, then segment rows add their adapter's LoRA
 * (u gets each segment's x A^T at row * R). rows_of(seg) = nb * T. */
void cel_gpu_linear_forward(cel_gpu_t *g, int l, int mod, float *out, cel_bf16_t *u,
                            const cel_bf16_t *inp, int N, int T, int R, int nseg,
                            const cel_gpu_seg_t *segs);

/* Sampler entry points (sampler.cu). */
int cel_gpu_sampler_new(cel_gpu_t *g, int n, cel_gpu_lora_t *const *loras,
                        const int32_t *const *prompts, const int32_t *lens, int Tmax,
                        cel_gpu_sampler_t **out, cel_err_t *err);
int cel_gpu_sampler_feed(cel_gpu_sampler_t *s, int cnt, const int *seqs, const int32_t *tokens,
                         cel_err_t *err);
int cel_gpu_sampler_pick(cel_gpu_sampler_t *s, int cnt, const int *seqs, const float *u,
                         float temperature, int top_k, float top_p, int32_t *out, cel_err_t *err);
void cel_gpu_sampler_free(cel_gpu_sampler_t *s);

#endif
