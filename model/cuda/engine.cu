/* engine.cu -- the CUDA backend: model upload, adapters, packed LoRA forward/backward.
 *
 * model/train.c's twin on the GPU (llm.c's train_gpt2.cu next to train_gpt2.c):
 * the same layer walk, the same saved activations, the ops of model/cuda/ops.h
 * in place of model/cpu/ops.h. A pass runs over a packed batch whose segments
 * of sequences each apply their own adapter: the base GEMMs run once over all
 * rows, then each segment's rows get their LoRA (a segmented LoRA matmul as
 * Punica/S-LoRA do; here one pair of small GEMMs per segment). The head and
 * the cross-entropy run in chunks of rows, so no more than chunk x V logits
 * exist. Exported through cel_gpu_api() (model/gpu.h); every entry point is
 * synchronous. Full-parameter training stays on the CPU.
 */
#include "engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* f32 logits of one head chunk, and the host->device weight staging in f32. The CUDA
 * emulator's build (tests/cuda-emu) makes both small, so its small models still run the
 * head in many chunks and upload weights in several pieces, a partial one last. */
#ifndef CEL_GPU_HEAD_CHUNK_BYTES
#define CEL_GPU_HEAD_CHUNK_BYTES (256u << 20)
#endif
#ifndef CEL_GPU_STAGE_FLOATS
#define CEL_GPU_STAGE_FLOATS (16u << 20)
#endif
#define HEAD_CHUNK_BYTES ((size_t)CEL_GPU_HEAD_CHUNK_BYTES)
#define STAGE_FLOATS     ((size_t)CEL_GPU_STAGE_FLOATS)

/* ------------------------------------------------------------------ memory */

void *cel_gpu_dmalloc(cel_gpu_t *g, size_t bytes, const char *what, cel_err_t *err) {
    void *p = NULL;
    if (bytes == 0) bytes = 16;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free error state */
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        cel_err_set(err, CEL_ENOMEM, "GPU out of memory for %s: %zu MiB asked, %zu MiB free (%s)",
                    what, bytes >> 20, fr >> 20, cudaGetErrorString(e));
        return NULL;
    }
    g->used += bytes;
    if (g->used > g->peak) g->peak = g->used;
    return p;
}

void cel_gpu_dfree(cel_gpu_t *g, void *p, size_t bytes) {
    if (!p) return;
    cudaFree(p);
    g->used -= bytes ? bytes : 16;
}

int cel_gpu_check(cel_gpu_t *g, const char *what, cel_err_t *err) {
    cudaError_t e = cudaStreamSynchronize(g->st);
    if (e == cudaSuccess) e = cudaGetLastError();
    char gemm[160];
    cublasStatus_t bs = cel_cuda_gemm_take_error(gemm, sizeof(gemm)); /* always cleared */
    if (e != cudaSuccess)
        return cel_err_set(err, CEL_EIO, "CUDA error in %s: %s", what, cudaGetErrorString(e));
    if (bs != CUBLAS_STATUS_SUCCESS)
        return cel_err_set(err, CEL_EIO, "cuBLAS error in %s: %s (%s)", what,
                           cublasGetStatusString(bs), gemm);
    return CEL_OK;
}

/* ------------------------------------------------------------------ model */

static int device_count(cel_err_t *err) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cel_err_set(err, CEL_ENOTFOUND, "no CUDA device: %s", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0) cel_err_set(err, CEL_ENOTFOUND, "no CUDA device visible");
    return n;
}

/* Bytes of the base weights in bf16 (params.h's count; config.c is not linked
 * here: it would bring jansson into the backend). */
static size_t weight_bytes(const cel_config_t *c) {
    return cel_params_count(c) * sizeof(cel_bf16_t);
}

/* Points p's views into the bf16 block x, in params.h's order. */
static void params_views(const cel_config_t *c, cel_bf16_t *x, gpu_params_t *p) {
    CEL_PARAMS_SIZES(c);
#define VIEW(name, count) p->name = x, x += (count);
    CEL_PARAMS_LAYOUT(VIEW)
#undef VIEW
    p->lm = c->tied ? p->wte : x;
}

/* Uploads n host floats to dst as bf16 through a device staging buffer. */
static int upload_bf16(cel_gpu_t *g, cel_bf16_t *dst, const float *src, size_t n, float *stage,
                       cel_err_t *err) {
    for (size_t off = 0; off < n; off += STAGE_FLOATS) {
        size_t k = n - off < STAGE_FLOATS ? n - off : STAGE_FLOATS;
        if (cudaMemcpyAsync(stage, src + off, k * sizeof(float), cudaMemcpyHostToDevice, g->st) !=
            cudaSuccess)
            return cel_gpu_check(g, "weight upload", err);
        cel_cuda_cast_f32_bf16(dst + off, stage, k, g->st);
        /* the stage is reused: wait before the next chunk overwrites it */
        int rc = cel_gpu_check(g, "weight upload", err);
        if (rc != CEL_OK) return rc;
    }
    return CEL_OK;
}

static void gpu_close(cel_gpu_t *g);

static int gpu_open(int index, const cel_gpu_model_src_t *src, cel_gpu_t **out,
                    cel_gpu_info_t *info, cel_err_t *err) {
    *out = NULL;
    cudaError_t e = cudaSetDevice(index);
    if (e != cudaSuccess)
        return cel_err_set(err, CEL_ENOTFOUND, "cuda:%d: %s", index, cudaGetErrorString(e));
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, index) != cudaSuccess)
        return cel_err_set(err, CEL_ENOTFOUND, "cuda:%d: no properties", index);
    const cel_config_t *c = src->cfg;
    if (c->HS > 256 || c->HS % 2)
        return cel_err_set(err, CEL_EINVAL,
                           "head_dim %d: the CUDA attention kernels take even "
                           "head sizes up to 256",
                           c->HS);
    cel_gpu_t *g = (cel_gpu_t *)calloc(1, sizeof(*g));
    if (!g) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    g->dev = index;
    g->cfg = *c;
    g->maxT = src->maxT;
    int rc = CEL_OK;
    float *stage = NULL;
    if (cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking) != cudaSuccess ||
        cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(g->blas, g->st) != CUBLAS_STATUS_SUCCESS) {
        rc = cel_err_set(err, CEL_EIO, "cuda:%d: cannot create a stream or cuBLAS handle", index);
        goto fail;
    }
    {
        CEL_PARAMS_SIZES(c);
        g->wblock = (cel_bf16_t *)cel_gpu_dmalloc(g, weight_bytes(c), "base weights", err);
        stage = (float *)cel_gpu_dmalloc(g, STAGE_FLOATS * sizeof(float), "staging", err);
        size_t rope = (size_t)src->maxT * (c->HS / 2) * sizeof(float);
        g->rope_cos = (float *)cel_gpu_dmalloc(g, rope, "rope table", err);
        g->rope_sin = (float *)cel_gpu_dmalloc(g, rope, "rope table", err);
        if (!g->wblock || !stage || !g->rope_cos || !g->rope_sin) {
            rc = err ? err->code : CEL_ENOMEM;
            goto fail;
        }
        params_views(c, g->wblock, &g->p);
#define UPLOAD(name, count) \
    if (rc == CEL_OK) rc = upload_bf16(g, g->p.name, src->name, (count), stage, err);
        CEL_PARAMS_LAYOUT(UPLOAD)
#undef UPLOAD
        if (rc == CEL_OK && !c->tied) rc = upload_bf16(g, g->p.lm, src->lm, V * C, stage, err);
        if (rc != CEL_OK) goto fail;
        if (cudaMemcpy(g->rope_cos, src->rope_cos, rope, cudaMemcpyHostToDevice) != cudaSuccess ||
            cudaMemcpy(g->rope_sin, src->rope_sin, rope, cudaMemcpyHostToDevice) != cudaSuccess) {
            rc = cel_gpu_check(g, "rope upload", err);
            goto fail;
        }
        cel_gpu_dfree(g, stage, STAGE_FLOATS * sizeof(float));
        stage = NULL;
        size_t chunk = HEAD_CHUNK_BYTES / (V * sizeof(float));
        g->chunk = chunk < 1 ? 1 : chunk > 65536 ? 65536 : (int)chunk;
    }
    if (info) {
        memset(info, 0, sizeof(*info));
        info->index = index;
        snprintf(info->name, sizeof(info->name), "%.127s", prop.name);
        info->cc_major = prop.major;
        info->cc_minor = prop.minor;
        cudaMemGetInfo(&info->mem_free, &info->mem_total);
    }
    *out = g;
    return CEL_OK;
fail:
    if (stage) cel_gpu_dfree(g, stage, STAGE_FLOATS * sizeof(float));
    gpu_close(g);
    return rc ? rc : CEL_EIO;
}

static void ws_free(cel_gpu_t *g) {
    cel_gpu_dfree(g, g->ws.block, g->ws.bytes);
    memset(&g->ws, 0, sizeof(g->ws));
}

static void gpu_close(cel_gpu_t *g) {
    if (!g) return;
    cudaSetDevice(g->dev);
    if (g->st) cudaStreamSynchronize(g->st);
    ws_free(g);
    const cel_config_t *c = &g->cfg;
    if (g->wblock) cel_gpu_dfree(g, g->wblock, weight_bytes(c));
    size_t rope = (size_t)g->maxT * (c->HS / 2) * sizeof(float);
    cel_gpu_dfree(g, g->rope_cos, rope);
    cel_gpu_dfree(g, g->rope_sin, rope);
    if (g->blas) cublasDestroy(g->blas);
    if (g->st) cudaStreamDestroy(g->st);
    free(g->host_pos);
    free(g);
}

static void gpu_mem(cel_gpu_t *g, size_t *used, size_t *peak) {
    if (used) *used = g->used;
    if (peak) *peak = g->peak;
}

/* ------------------------------------------------------------------ workspace */

/* Sizes the workspace for B sequences of T, training or not, LoRA stride R;
 * keeps it when big enough. */
static int ws_ensure(cel_gpu_t *g, int B, int T, int train, int R, cel_err_t *err) {
    gpu_ws_t *ws = &g->ws;
    size_t N = (size_t)B * T;
    int Ls = train ? g->cfg.L : 1;
    if (ws->block && ws->cap >= N && ws->capB >= B && ws->capL >= Ls && ws->capR >= R &&
        (ws->train || !train))
        return CEL_OK;
    if (ws->block) {
        N = N > ws->cap ? N : ws->cap;
        B = B > ws->capB ? B : ws->capB;
        Ls = Ls > ws->capL ? Ls : ws->capL;
        R = R > ws->capR ? R : ws->capR;
        train = train || ws->train;
    }
    cudaStreamSynchronize(g->st);
    ws_free(g);
    const cel_config_t *c = &g->cfg;
    size_t C = c->C, I = c->I, V = c->V, QD = (size_t)c->NH * c->HS, KD = (size_t)c->NKV * c->HS,
           L = Ls, NH = c->NH;
    size_t chunk = (size_t)g->chunk < N ? (size_t)g->chunk : N;
    size_t wide = C > QD ? C : QD;
    wide = wide > I ? wide : I;
    size_t tb = train ? 1 : 0; /* backward buffers only when training */
    /* name, element size, count; the order is the layout */
    struct {
        void **ptr;
        size_t esz, cnt;
    } sl[] = {
        { (void **)&ws->tokens, 4, N },
        { (void **)&ws->targets, 4, N },
        { (void **)&ws->pos, 4, N },
        { (void **)&ws->weights, 4, N },
        { (void **)&ws->logp, 4, N },
        { (void **)&ws->res, 4, (L + (train ? 1 : 0)) * N * C },
        { (void **)&ws->res2, 4, L * N * C },
        { (void **)&ws->ln1, 2, L * N * C },
        { (void **)&ws->ln2, 2, L * N * C },
        { (void **)&ws->rstd1, 4, L * N },
        { (void **)&ws->rstd2, 4, L * N },
        { (void **)&ws->q, 4, L * N * QD },
        { (void **)&ws->k, 4, L * N * KD },
        { (void **)&ws->v, 4, L * N * KD },
        { (void **)&ws->lse, 4, L * N * NH },
        { (void **)&ws->atty, 2, L * N * QD },
        { (void **)&ws->gate, 4, L * N * I },
        { (void **)&ws->up, 4, L * N * I },
        { (void **)&ws->h, 2, L * N * I },
        { (void **)&ws->lnf, 2, N * C },
        { (void **)&ws->rstdf, 4, N },
        { (void **)&ws->logits, 4, chunk * V },
        { (void **)&ws->dlogits, 2, tb * chunk * V },
        { (void **)&ws->tmp, 4, N * C },
        { (void **)&ws->dres, 4, tb * N * C },
        { (void **)&ws->dln, 4, tb * N * C },
        { (void **)&ws->d16, 2, tb * N * wide },
        { (void **)&ws->datty, 4, tb * N * QD },
        { (void **)&ws->dq, 4, tb * N * QD },
        { (void **)&ws->dk, 4, tb * N * KD },
        { (void **)&ws->dv, 4, tb * N * KD },
        { (void **)&ws->dk16, 2, tb * N * KD },
        { (void **)&ws->dv16, 2, tb * N * KD },
        { (void **)&ws->dgate, 4, tb * N * I },
        { (void **)&ws->dup, 4, tb * N * I },
        { (void **)&ws->dh, 4, tb * N * I },
        { (void **)&ws->dup16, 2, tb * N * I },
        { (void **)&ws->du, 2, tb * N * (size_t)R },
        { (void **)&ws->u[0], 2, L * N * R },
        { (void **)&ws->u[1], 2, L * N * R },
        { (void **)&ws->u[2], 2, L * N * R },
        { (void **)&ws->u[3], 2, L * N * R },
        { (void **)&ws->u[4], 2, L * N * R },
        { (void **)&ws->u[5], 2, L * N * R },
        { (void **)&ws->u[6], 2, L * N * R },
    };
    size_t ns = sizeof(sl) / sizeof(sl[0]), bytes = 0;
    for (size_t i = 0; i < ns; i++) bytes += (sl[i].esz * sl[i].cnt + 255) & ~(size_t)255;
    char what[96];
    snprintf(what, sizeof(what), "activations of %zu tokens (%s)", N,
             train ? "training" : "inference");
    ws->block = cel_gpu_dmalloc(g, bytes, what, err);
    if (!ws->block) return err ? err->code : CEL_ENOMEM;
    ws->bytes = bytes;
    char *x = (char *)ws->block;
    for (size_t i = 0; i < ns; i++) {
        *sl[i].ptr = sl[i].cnt ? (void *)x : NULL;
        x += (sl[i].esz * sl[i].cnt + 255) & ~(size_t)255;
    }
    ws->cap = N;
    ws->capB = B;
    ws->capL = (int)L;
    ws->capR = R;
    ws->train = (int)train;
    if (g->host_pos_cap < N) {
        free(g->host_pos);
        g->host_pos = (int32_t *)malloc(N * sizeof(int32_t));
        g->host_pos_cap = g->host_pos ? N : 0;
        if (!g->host_pos) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    return CEL_OK;
}

/* ------------------------------------------------------------------ layers */

const cel_bf16_t *cel_gpu_mod_weight(const cel_gpu_t *g, int l, int mod, int *in, int *out) {
    const cel_config_t *c = &g->cfg;
    int q = c->NH * c->HS, kv = c->NKV * c->HS;
    const cel_bf16_t *base[CEL_GPU_NMOD] = { g->p.wq, g->p.wk, g->p.wv, g->p.wo,
                                             g->p.wg, g->p.wu, g->p.wd };
    int ins[CEL_GPU_NMOD] = { c->C, c->C, c->C, q, c->C, c->C, c->I };
    int outs[CEL_GPU_NMOD] = { q, kv, kv, c->C, c->I, c->I, c->C };
    *in = ins[mod];
    *out = outs[mod];
    return base[mod] + (size_t)l * ins[mod] * outs[mod];
}

/* The adapter's A and B of module mod in layer l (fp32 block or bf16 shadow). */
static size_t lora_off_a(const cel_gpu_lora_t *lo, int l, int mod, int in) {
    return lo->sh.offA[mod] + (size_t)l * lo->sh.R * in;
}
static size_t lora_off_b(const cel_gpu_lora_t *lo, int l, int mod, int out) {
    return lo->sh.offB[mod] + (size_t)l * out * lo->sh.R;
}

void cel_gpu_linear_forward(cel_gpu_t *g, int l, int mod, float *out, cel_bf16_t *u,
                            const cel_bf16_t *inp, int N, int T, int R, int nseg,
                            const cel_gpu_seg_t *segs) {
    int in, od;
    const cel_bf16_t *W = cel_gpu_mod_weight(g, l, mod, &in, &od);
    cel_cuda_matmul_forward(g->blas, out, inp, W, N, in, od, 0.0f);
    for (int s = 0; s < nseg; s++) {
        const cel_gpu_lora_t *lo = segs[s].lora;
        if (!lo || !(lo->sh.targets & (1u << mod))) continue;
        size_t r0 = (size_t)segs[s].b0 * T;
        cel_cuda_lora_forward(
            g->blas, out + r0 * od, u + r0 * R, inp + r0 * in, lo->w16 + lora_off_a(lo, l, mod, in),
            lo->w16 + lora_off_b(lo, l, mod, od), lo->sh.scaling, segs[s].nb * T, in, od, lo->sh.R);
    }
}

/* dinp = dout W (+ beta * dinp), then each segment's LoRA adds its dinp and
 * accumulates its adapter's dA, dB. */
static void linear_backward(cel_gpu_t *g, int l, int mod, float *dinp, float beta,
                            const cel_bf16_t *dout, const cel_bf16_t *inp, const cel_bf16_t *u,
                            int N, int T, int R, int nseg, const cel_gpu_seg_t *segs) {
    int in, od;
    const cel_bf16_t *W = cel_gpu_mod_weight(g, l, mod, &in, &od);
    cel_cuda_matmul_backward(g->blas, dinp, beta, NULL, dout, inp, W, N, in, od);
    for (int s = 0; s < nseg; s++) {
        cel_gpu_lora_t *lo = segs[s].lora;
        if (!lo || !(lo->sh.targets & (1u << mod))) continue;
        size_t r0 = (size_t)segs[s].b0 * T, oa = lora_off_a(lo, l, mod, in),
               ob = lora_off_b(lo, l, mod, od);
        cel_cuda_lora_backward(g->blas, dinp + r0 * in, lo->grad + oa, lo->grad + ob,
                               g->ws.du + r0 * R, dout + r0 * od, inp + r0 * in, u + r0 * R,
                               lo->w16 + oa, lo->w16 + ob, lo->sh.scaling, segs[s].nb * T, in, od,
                               lo->sh.R);
    }
}

/* Saved activations of layer l (slot l when training, 0 otherwise). */
typedef struct acts {
    float *resin, *res2, *resout, *rstd1, *rstd2, *q, *k, *v, *lse, *gate, *up;
    cel_bf16_t *ln1, *ln2, *atty, *h;
    cel_bf16_t *u[CEL_GPU_NMOD];
} acts_t;

static acts_t layer_acts(const cel_gpu_t *g, int l, int train, size_t N, int R) {
    const cel_config_t *c = &g->cfg;
    const gpu_ws_t *ws = &g->ws;
    size_t s = train ? (size_t)l : 0, C = c->C, QD = (size_t)c->NH * c->HS,
           KD = (size_t)c->NKV * c->HS, I = c->I;
    acts_t a;
    a.resin = ws->res + s * N * C;
    a.resout = train ? ws->res + (s + 1) * N * C : ws->res;
    a.res2 = ws->res2 + s * N * C;
    a.ln1 = ws->ln1 + s * N * C;
    a.ln2 = ws->ln2 + s * N * C;
    a.rstd1 = ws->rstd1 + s * N;
    a.rstd2 = ws->rstd2 + s * N;
    a.q = ws->q + s * N * QD;
    a.k = ws->k + s * N * KD;
    a.v = ws->v + s * N * KD;
    a.lse = ws->lse + s * N * c->NH;
    a.atty = ws->atty + s * N * QD;
    a.gate = ws->gate + s * N * I;
    a.up = ws->up + s * N * I;
    a.h = ws->h + s * N * I;
    for (int m = 0; m < CEL_GPU_NMOD; m++) a.u[m] = ws->u[m] ? ws->u[m] + s * N * R : NULL;
    return a;
}

/* Embedding .. final norm over the packed batch already on the device. */
static void forward(cel_gpu_t *g, int B, int T, int R, int train, int nseg,
                    const cel_gpu_seg_t *segs) {
    const cel_config_t *c = &g->cfg;
    gpu_ws_t *ws = &g->ws;
    int N = B * T, C = c->C;
    cudaStream_t st = g->st;
    cel_cuda_embedding_forward(ws->res, ws->tokens, g->p.wte, N, C, st);
    acts_t a = layer_acts(g, 0, train, N, R);
    for (int l = 0; l < c->L; l++) {
        a = layer_acts(g, l, train, N, R);
        cel_cuda_rmsnorm_forward(a.ln1, a.rstd1, a.resin, g->p.ln1 + (size_t)l * C, N, C, c->eps,
                                 st);
        cel_gpu_linear_forward(g, l, 0, a.q, a.u[0], a.ln1, N, T, R, nseg, segs);
        cel_gpu_linear_forward(g, l, 1, a.k, a.u[1], a.ln1, N, T, R, nseg, segs);
        cel_gpu_linear_forward(g, l, 2, a.v, a.u[2], a.ln1, N, T, R, nseg, segs);
        cel_cuda_rope_forward(a.q, a.q, ws->pos, g->rope_cos, g->rope_sin, N, c->NH, c->HS, st);
        cel_cuda_rope_forward(a.k, a.k, ws->pos, g->rope_cos, g->rope_sin, N, c->NKV, c->HS, st);
        cel_cuda_attention_forward(a.atty, a.lse, a.q, a.k, a.v, B, T, c->NH, c->NKV, c->HS, st);
        cel_gpu_linear_forward(g, l, 3, ws->tmp, a.u[3], a.atty, N, T, R, nseg, segs);
        cel_cuda_residual_forward(a.res2, a.resin, ws->tmp, (size_t)N * C, st);
        cel_cuda_rmsnorm_forward(a.ln2, a.rstd2, a.res2, g->p.ln2 + (size_t)l * C, N, C, c->eps,
                                 st);
        cel_gpu_linear_forward(g, l, 4, a.gate, a.u[4], a.ln2, N, T, R, nseg, segs);
        cel_gpu_linear_forward(g, l, 5, a.up, a.u[5], a.ln2, N, T, R, nseg, segs);
        cel_cuda_swiglu_forward(a.h, a.gate, a.up, (size_t)N * c->I, st);
        cel_gpu_linear_forward(g, l, 6, ws->tmp, a.u[6], a.h, N, T, R, nseg, segs);
        cel_cuda_residual_forward(a.resout, a.res2, ws->tmp, (size_t)N * C, st);
    }
    cel_cuda_rmsnorm_forward(ws->lnf, ws->rstdf, a.resout, g->p.lnf, N, C, c->eps, st);
}

/* The head in chunks: logits, log-probs, and with backward dlnf into ws->dln.
 * logits_host (B*T,V) gets every chunk's logits when not NULL. */
static int head(cel_gpu_t *g, int N, int has_targets, int backward, float *logits_host,
                cel_err_t *err) {
    const cel_config_t *c = &g->cfg;
    gpu_ws_t *ws = &g->ws;
    int C = c->C, V = c->V;
    for (int r0 = 0; r0 < N; r0 += g->chunk) {
        int rows = N - r0 < g->chunk ? N - r0 : g->chunk;
        cel_cuda_matmul_forward(g->blas, ws->logits, ws->lnf + (size_t)r0 * C, g->p.lm, rows, C, V,
                                0.0f);
        if (logits_host && cudaMemcpyAsync(logits_host + (size_t)r0 * V, ws->logits,
                                           (size_t)rows * V * sizeof(float), cudaMemcpyDeviceToHost,
                                           g->st) != cudaSuccess)
            return cel_gpu_check(g, "logits copy", err);
        if (has_targets)
            cel_cuda_crossentropy_forward_backward(ws->logp + r0, backward ? ws->dlogits : NULL,
                                                   ws->logits, ws->targets + r0, ws->weights + r0,
                                                   1.0f, rows, V, g->st);
        if (backward)
            cel_cuda_matmul_backward(g->blas, ws->dln + (size_t)r0 * C, 0.0f, NULL, ws->dlogits,
                                     ws->lnf + (size_t)r0 * C, g->p.lm, rows, C, V);
        /* the next chunk reuses logits/dlogits: stream order keeps that safe */
    }
    return CEL_OK;
}

/* Backward from dlnf (ws->dln) to every segment's LoRA gradients. */
static void backward(cel_gpu_t *g, int B, int T, int R, int nseg, const cel_gpu_seg_t *segs) {
    const cel_config_t *c = &g->cfg;
    gpu_ws_t *ws = &g->ws;
    cudaStream_t st = g->st;
    int N = B * T, C = c->C, I = c->I, QD = c->NH * c->HS, KD = c->NKV * c->HS;
    size_t NC = (size_t)N * C;
    cudaMemsetAsync(ws->dres, 0, NC * sizeof(float), st);
    acts_t last = layer_acts(g, c->L - 1, 1, N, R);
    cel_cuda_rmsnorm_backward(ws->dres, ws->dln, last.resout, g->p.lnf, ws->rstdf, N, C, st);
    for (int l = c->L - 1; l >= 0; l--) {
        acts_t a = layer_acts(g, l, 1, N, R);
        /* MLP: resout = res2 + down(h) */
        cel_cuda_cast_f32_bf16(ws->d16, ws->dres, NC, st);
        linear_backward(g, l, 6, ws->dh, 0.0f, ws->d16, a.h, a.u[6], N, T, R, nseg, segs);
        cel_cuda_swiglu_backward(ws->dgate, ws->dup, ws->dh, a.gate, a.up, (size_t)N * I, st);
        cel_cuda_cast_f32_bf16(ws->d16, ws->dgate, (size_t)N * I, st);
        cel_cuda_cast_f32_bf16(ws->dup16, ws->dup, (size_t)N * I, st);
        linear_backward(g, l, 4, ws->dln, 0.0f, ws->d16, a.ln2, a.u[4], N, T, R, nseg, segs);
        linear_backward(g, l, 5, ws->dln, 1.0f, ws->dup16, a.ln2, a.u[5], N, T, R, nseg, segs);
        cel_cuda_rmsnorm_backward(ws->dres, ws->dln, a.res2, g->p.ln2 + (size_t)l * C, a.rstd2, N,
                                  C, st);
        /* attention: res2 = resin + o(atty) */
        cel_cuda_cast_f32_bf16(ws->d16, ws->dres, NC, st);
        linear_backward(g, l, 3, ws->datty, 0.0f, ws->d16, a.atty, a.u[3], N, T, R, nseg, segs);
        cel_cuda_attention_backward(ws->dq, ws->dk, ws->dv, ws->datty, a.atty, a.lse, a.q, a.k, a.v,
                                    B, T, c->NH, c->NKV, c->HS, st);
        cel_cuda_rope_backward(ws->dq, ws->dq, ws->pos, g->rope_cos, g->rope_sin, N, c->NH, c->HS,
                               st);
        cel_cuda_rope_backward(ws->dk, ws->dk, ws->pos, g->rope_cos, g->rope_sin, N, c->NKV, c->HS,
                               st);
        cel_cuda_cast_f32_bf16(ws->d16, ws->dq, (size_t)N * QD, st);
        cel_cuda_cast_f32_bf16(ws->dk16, ws->dk, (size_t)N * KD, st);
        cel_cuda_cast_f32_bf16(ws->dv16, ws->dv, (size_t)N * KD, st);
        linear_backward(g, l, 0, ws->dln, 0.0f, ws->d16, a.ln1, a.u[0], N, T, R, nseg, segs);
        linear_backward(g, l, 1, ws->dln, 1.0f, ws->dk16, a.ln1, a.u[1], N, T, R, nseg, segs);
        linear_backward(g, l, 2, ws->dln, 1.0f, ws->dv16, a.ln1, a.u[2], N, T, R, nseg, segs);
        if (l > 0) /* below layer 0 only the frozen embedding remains */
            cel_cuda_rmsnorm_backward(ws->dres, ws->dln, a.resin, g->p.ln1 + (size_t)l * C, a.rstd1,
                                      N, C, st);
    }
}

static int gpu_run(cel_gpu_t *g, const cel_gpu_batch_t *b, int nseg, const cel_gpu_seg_t *segs,
                   int do_backward, float *logits, float *logp, cel_err_t *err) {
    cudaSetDevice(g->dev);
    int B = b->B, T = b->T, N = B * T, R = 0;
    if (do_backward && !b->targets)
        return cel_err_set(err, CEL_EINVAL, "a backward pass needs targets");
    for (int s = 0; s < nseg; s++) {
        if (do_backward && !segs[s].lora)
            return cel_err_set(err, CEL_EINVAL,
                               "every segment of a backward pass needs an "
                               "adapter");
        if (segs[s].lora && segs[s].lora->g != g)
            return cel_err_set(err, CEL_EINVAL, "adapter belongs to another GPU model");
        if (segs[s].lora && segs[s].lora->sh.R > R) R = segs[s].lora->sh.R;
    }
    int rc = ws_ensure(g, B, T, do_backward, R, err);
    if (rc != CEL_OK) return rc;
    gpu_ws_t *ws = &g->ws;
    for (int i = 0; i < N; i++) g->host_pos[i] = i % T;
    size_t n4 = (size_t)N * 4;
    if (cudaMemcpyAsync(ws->tokens, b->tokens, n4, cudaMemcpyHostToDevice, g->st) ||
        cudaMemcpyAsync(ws->pos, g->host_pos, n4, cudaMemcpyHostToDevice, g->st) ||
        (b->targets &&
         (cudaMemcpyAsync(ws->targets, b->targets, n4, cudaMemcpyHostToDevice, g->st) ||
          cudaMemcpyAsync(ws->weights, b->weights, n4, cudaMemcpyHostToDevice, g->st))))
        return cel_gpu_check(g, "batch upload", err);
    forward(g, B, T, R, do_backward, nseg, segs);
    rc = head(g, N, b->targets != NULL, do_backward, logits, err);
    if (rc != CEL_OK) return rc;
    if (do_backward) backward(g, B, T, R, nseg, segs);
    if (logp && b->targets &&
        cudaMemcpyAsync(logp, ws->logp, n4, cudaMemcpyDeviceToHost, g->st) != cudaSuccess)
        return cel_gpu_check(g, "log-prob copy", err);
    return cel_gpu_check(g, do_backward ? "forward_backward" : "forward", err);
}

/* ------------------------------------------------------------------ adapters */

static void lora_free(cel_gpu_lora_t *l) {
    if (!l) return;
    cel_gpu_t *g = l->g;
    cudaSetDevice(g->dev);
    cudaStreamSynchronize(g->st);
    cel_gpu_dfree(g, l->w, l->bytes);
    free(l);
}

static int lora_new(cel_gpu_t *g, const cel_gpu_lora_shape_t *sh, const float *w, const float *grad,
                    const float *m, const float *v, cel_gpu_lora_t **out, cel_err_t *err) {
    *out = NULL;
    cudaSetDevice(g->dev);
    cel_gpu_lora_t *l = (cel_gpu_lora_t *)calloc(1, sizeof(*l));
    if (!l) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    l->g = g;
    l->sh = *sh;
    size_t n = sh->n, fb = (n * sizeof(float) + 255) & ~(size_t)255;
    size_t hb = (n * sizeof(cel_bf16_t) + 255) & ~(size_t)255;
    l->bytes = 4 * fb + hb + 256;
    char *x = (char *)cel_gpu_dmalloc(g, l->bytes, "an adapter", err);
    if (!x) {
        free(l);
        return err ? err->code : CEL_ENOMEM;
    }
    l->w = (float *)x;
    l->grad = (float *)(x + fb);
    l->m = (float *)(x + 2 * fb);
    l->v = (float *)(x + 3 * fb);
    l->w16 = (cel_bf16_t *)(x + 4 * fb);
    l->sumsq = (double *)(x + 4 * fb + hb);
    const float *src[4] = { w, grad, m, v };
    float *dst[4] = { l->w, l->grad, l->m, l->v };
    for (int i = 0; i < 4; i++) {
        cudaError_t e = src[i] ? cudaMemcpyAsync(dst[i], src[i], n * sizeof(float),
                                                 cudaMemcpyHostToDevice, g->st)
                               : cudaMemsetAsync(dst[i], 0, n * sizeof(float), g->st);
        if (e != cudaSuccess) break;
    }
    cel_cuda_cast_f32_bf16(l->w16, l->w, n, g->st);
    int rc = cel_gpu_check(g, "adapter upload", err);
    if (rc != CEL_OK) {
        lora_free(l);
        return rc;
    }
    *out = l;
    return CEL_OK;
}

static int lora_download(cel_gpu_lora_t *l, float *w, float *grad, float *m, float *v,
                         cel_err_t *err) {
    cel_gpu_t *g = l->g;
    cudaSetDevice(g->dev);
    float *dst[4] = { w, grad, m, v };
    const float *src[4] = { l->w, l->grad, l->m, l->v };
    for (int i = 0; i < 4; i++)
        if (dst[i] && cudaMemcpyAsync(dst[i], src[i], l->sh.n * sizeof(float),
                                      cudaMemcpyDeviceToHost, g->st) != cudaSuccess)
            break;
    return cel_gpu_check(g, "adapter download", err);
}

static size_t lora_bytes(const cel_gpu_lora_t *l) { return l->bytes; }

static int lora_step(cel_gpu_lora_t *l, float lr, float beta1, float beta2, float eps, float wd,
                     float clip, int step, float *norm, cel_err_t *err) {
    cel_gpu_t *g = l->g;
    cudaSetDevice(g->dev);
    size_t n = l->sh.n;
    double ss = 0.0;
    cudaMemsetAsync(l->sumsq, 0, sizeof(double), g->st);
    cel_cuda_adamw_sumsq(l->sumsq, l->grad, n, g->st);
    cudaMemcpyAsync(&ss, l->sumsq, sizeof(double), cudaMemcpyDeviceToHost, g->st);
    int rc = cel_gpu_check(g, "gradient norm", err);
    if (rc != CEL_OK) return rc;
    float nrm = (float)sqrt(ss);
    if (norm) *norm = nrm;
    if (!isfinite(nrm)) /* a NaN/Inf gradient never reaches the weights */
        return cel_err_set(err, CEL_EINVAL, "gradient norm is %s: step not applied",
                           isnan(nrm) ? "nan" : "inf");
    if (clip > 0 && nrm > clip) cel_cuda_adamw_scale(l->grad, n, clip / (nrm + 1e-6f), g->st);
    cel_cuda_adamw_update(l->w, l->m, l->v, l->grad, n, lr, beta1, beta2, eps, wd, step, g->st);
    cudaMemsetAsync(l->grad, 0, n * sizeof(float), g->st);
    cel_cuda_cast_f32_bf16(l->w16, l->w, n, g->st);
    if (norm) *norm = nrm;
    return cel_gpu_check(g, "AdamW step", err);
}

static int lora_zero_grad(cel_gpu_lora_t *l, cel_err_t *err) {
    cel_gpu_t *g = l->g;
    cudaSetDevice(g->dev);
    cudaMemsetAsync(l->grad, 0, l->sh.n * sizeof(float), g->st);
    return cel_gpu_check(g, "zero_grad", err);
}

/* ------------------------------------------------------------------ export */

static const cel_gpu_api_t api = {
    CEL_GPU_ABI,
    device_count,
    gpu_open,
    gpu_close,
    gpu_mem,
    lora_new,
    lora_download,
    lora_free,
    lora_bytes,
    lora_step,
    lora_zero_grad,
    gpu_run,
    cel_gpu_sampler_new,
    cel_gpu_sampler_feed,
    cel_gpu_sampler_pick,
    cel_gpu_sampler_free,
};

extern "C" __attribute__((visibility("default"))) const cel_gpu_api_t *cel_gpu_api(void) {
    return &api;
}
