/* sampler.cu -- the CUDA backend's KV-cache sampling: prefill, one-token steps, picks.
 *
 * model/sampler.c's forward_cached on the GPU. Each prompt is prefilled alone
 * through the flash attention kernel (positions 0..len-1) and its keys and
 * values land in its slot of a (L, n, Tmax, NKV*HS) cache; each step feeds
 * one token for each live sequence in one batched pass whose rows may use
 * different adapters (segments of consecutive rows with the same adapter),
 * attends with the decode kernel and leaves each sequence's next-token logits
 * in its row of an (n, V) buffer. Picking runs on the device
 * (cel_cuda_sample) with uniforms the host drew from each sequence's stream.
 * The host (model/sampler.c) keeps statuses, stop ids and the RNG.
 */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cel_gpu_sampler {
    cel_gpu_t *g;
    int n, Tmax, rows, R;
    cel_gpu_lora_t **loras; /* (n) host */
    int *len;               /* (n) host: cached tokens */
    float *kc, *vc;         /* (L,n,Tmax,KD) */
    size_t cache_bytes;
    float *logits; /* (n,V) */
    void *block;   /* scratch for `rows` rows */
    size_t bytes;
    float *x, *q, *k, *v, *tmp, *gate, *up, *rstd, *lse, *sel, *draws;
    cel_bf16_t *ln, *atty, *h, *u, *lnf;
    int32_t *toks, *pos, *slot, *out;
    int32_t *htoks, *hpos, *hslot; /* (rows) host staging */
    cel_gpu_seg_t *segs;           /* (rows) host */
};

void cel_gpu_sampler_free(cel_gpu_sampler_t *s) {
    if (!s) return;
    cel_gpu_t *g = s->g;
    cudaSetDevice(g->dev);
    cudaStreamSynchronize(g->st);
    cel_gpu_dfree(g, s->kc, s->cache_bytes);
    cel_gpu_dfree(g, s->vc, s->cache_bytes);
    cel_gpu_dfree(g, s->logits, (size_t)s->n * g->cfg.V * sizeof(float));
    cel_gpu_dfree(g, s->block, s->bytes);
    free(s->loras);
    free(s->len);
    free(s->htoks);
    free(s->segs);
    free(s);
}

/* Allocates the scratch block for s->rows rows. */
static int scratch_alloc(cel_gpu_sampler_t *s, cel_err_t *err) {
    cel_gpu_t *g = s->g;
    const cel_config_t *c = &g->cfg;
    size_t N = s->rows, C = c->C, QD = (size_t)c->NH * c->HS, KD = (size_t)c->NKV * c->HS, I = c->I,
           V = c->V, R = s->R ? s->R : 1, n = s->n;
    struct {
        void **ptr;
        size_t esz, cnt;
    } sl[] = {
        { (void **)&s->x, 4, N * C },       { (void **)&s->q, 4, N * QD },
        { (void **)&s->k, 4, N * KD },      { (void **)&s->v, 4, N * KD },
        { (void **)&s->tmp, 4, N * C },     { (void **)&s->gate, 4, N * I },
        { (void **)&s->up, 4, N * I },      { (void **)&s->rstd, 4, N },
        { (void **)&s->lse, 4, N * c->NH }, { (void **)&s->sel, 4, n * V },
        { (void **)&s->draws, 4, n },       { (void **)&s->ln, 2, N * C },
        { (void **)&s->atty, 2, N * QD },   { (void **)&s->h, 2, N * I },
        { (void **)&s->u, 2, N * R },       { (void **)&s->lnf, 2, N * C },
        { (void **)&s->toks, 4, N },        { (void **)&s->pos, 4, N },
        { (void **)&s->slot, 4, N },        { (void **)&s->out, 4, n },
    };
    size_t ns = sizeof(sl) / sizeof(sl[0]), bytes = 0;
    for (size_t i = 0; i < ns; i++) bytes += (sl[i].esz * sl[i].cnt + 255) & ~(size_t)255;
    s->block = cel_gpu_dmalloc(g, bytes, "sampling scratch", err);
    if (!s->block) return err ? err->code : CEL_ENOMEM;
    s->bytes = bytes;
    char *x = (char *)s->block;
    for (size_t i = 0; i < ns; i++) {
        *sl[i].ptr = x;
        x += (sl[i].esz * sl[i].cnt + 255) & ~(size_t)255;
    }
    return CEL_OK;
}

/* Uploads the staged tokens, positions and slots of cnt rows. */
static int upload_rows(cel_gpu_sampler_t *s, int cnt, cel_err_t *err) {
    cel_gpu_t *g = s->g;
    size_t b = (size_t)cnt * sizeof(int32_t);
    if (cudaMemcpyAsync(s->toks, s->htoks, b, cudaMemcpyHostToDevice, g->st) ||
        cudaMemcpyAsync(s->pos, s->hpos, b, cudaMemcpyHostToDevice, g->st) ||
        cudaMemcpyAsync(s->slot, s->hslot, b, cudaMemcpyHostToDevice, g->st))
        return cel_gpu_check(g, "sampling upload", err);
    /* the staging buffers are rewritten by the next call: wait for the copies */
    return cel_gpu_check(g, "sampling upload", err);
}

/* One pass over cnt rows already uploaded: prefill (one sequence, rows at
 * positions 0..cnt-1, flash attention) or decode (one row per sequence,
 * decode attention). Leaves the final hidden state of every row in s->x. */
static void layers(cel_gpu_sampler_t *s, int cnt, int prefill, int nseg) {
    cel_gpu_t *g = s->g;
    const cel_config_t *c = &g->cfg;
    cudaStream_t st = g->st;
    int C = c->C, KD = c->NKV * c->HS;
    /* a prefill is one sequence of cnt tokens; a decode is cnt sequences of 1 */
    int T = prefill ? cnt : 1;
    size_t slice = (size_t)s->n * s->Tmax * KD;
    cel_cuda_embedding_forward(s->x, s->toks, g->p.wte, cnt, C, st);
    for (int l = 0; l < c->L; l++) {
        cel_cuda_rmsnorm_forward(s->ln, s->rstd, s->x, g->p.ln1 + (size_t)l * C, cnt, C, c->eps,
                                 st);
        cel_gpu_linear_forward(g, l, 0, s->q, s->u, s->ln, cnt, T, s->R, nseg, s->segs);
        cel_gpu_linear_forward(g, l, 1, s->k, s->u, s->ln, cnt, T, s->R, nseg, s->segs);
        cel_gpu_linear_forward(g, l, 2, s->v, s->u, s->ln, cnt, T, s->R, nseg, s->segs);
        cel_cuda_rope_forward(s->q, s->q, s->pos, g->rope_cos, g->rope_sin, cnt, c->NH, c->HS, st);
        cel_cuda_rope_forward(s->k, s->k, s->pos, g->rope_cos, g->rope_sin, cnt, c->NKV, c->HS, st);
        float *kc = s->kc + l * slice, *vc = s->vc + l * slice;
        cel_cuda_kv_append(kc, vc, s->k, s->v, s->slot, s->pos, cnt, s->Tmax, KD, st);
        if (prefill)
            cel_cuda_attention_forward(s->atty, s->lse, s->q, s->k, s->v, 1, cnt, c->NH, c->NKV,
                                       c->HS, st);
        else
            cel_cuda_attention_decode(s->atty, s->q, kc, vc, s->slot, s->pos, cnt, s->Tmax, c->NH,
                                      c->NKV, c->HS, st);
        cel_gpu_linear_forward(g, l, 3, s->tmp, s->u, s->atty, cnt, T, s->R, nseg, s->segs);
        cel_cuda_residual_forward(s->x, s->x, s->tmp, (size_t)cnt * C, st);
        cel_cuda_rmsnorm_forward(s->ln, s->rstd, s->x, g->p.ln2 + (size_t)l * C, cnt, C, c->eps,
                                 st);
        cel_gpu_linear_forward(g, l, 4, s->gate, s->u, s->ln, cnt, T, s->R, nseg, s->segs);
        cel_gpu_linear_forward(g, l, 5, s->up, s->u, s->ln, cnt, T, s->R, nseg, s->segs);
        cel_cuda_swiglu_forward(s->h, s->gate, s->up, (size_t)cnt * c->I, st);
        cel_gpu_linear_forward(g, l, 6, s->tmp, s->u, s->h, cnt, T, s->R, nseg, s->segs);
        cel_cuda_residual_forward(s->x, s->x, s->tmp, (size_t)cnt * C, st);
    }
}

/* Next-token logits of `rows` hidden rows at x (row stride C) into the
 * logits rows of seqs[]. */
static void head(cel_gpu_sampler_t *s, const float *x, int rows, const int *seqs) {
    cel_gpu_t *g = s->g;
    const cel_config_t *c = &g->cfg;
    cel_cuda_rmsnorm_forward(s->lnf, s->rstd, x, g->p.lnf, rows, c->C, c->eps, g->st);
    cel_cuda_matmul_forward(g->blas, s->sel, s->lnf, g->p.lm, rows, c->C, c->V, 0.0f);
    size_t vb = (size_t)c->V * sizeof(float);
    for (int j = 0; j < rows; j++)
        cudaMemcpyAsync(s->logits + (size_t)seqs[j] * c->V, s->sel + (size_t)j * c->V, vb,
                        cudaMemcpyDeviceToDevice, g->st);
}

int cel_gpu_sampler_new(cel_gpu_t *g, int n, cel_gpu_lora_t *const *loras,
                        const int32_t *const *prompts, const int32_t *lens, int Tmax,
                        cel_gpu_sampler_t **out, cel_err_t *err) {
    *out = NULL;
    cudaSetDevice(g->dev);
    const cel_config_t *c = &g->cfg;
    cel_gpu_sampler_t *s = (cel_gpu_sampler_t *)calloc(1, sizeof(*s));
    if (!s) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    s->g = g;
    s->n = n;
    s->Tmax = Tmax;
    int maxp = 0;
    for (int i = 0; i < n; i++) {
        maxp = lens[i] > maxp ? lens[i] : maxp;
        if (loras[i] && loras[i]->sh.R > s->R) s->R = loras[i]->sh.R;
    }
    s->rows = maxp > n ? maxp : n;
    s->loras = (cel_gpu_lora_t **)malloc(n * sizeof(*s->loras));
    s->len = (int *)calloc(n, sizeof(int));
    s->htoks = (int32_t *)malloc(3 * (size_t)s->rows * sizeof(int32_t));
    s->segs = (cel_gpu_seg_t *)malloc((size_t)s->rows * sizeof(cel_gpu_seg_t));
    if (!s->loras || !s->len || !s->htoks || !s->segs) {
        cel_gpu_sampler_free(s);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    s->hpos = s->htoks + s->rows;
    s->hslot = s->htoks + 2 * s->rows;
    memcpy(s->loras, loras, n * sizeof(*s->loras));
    size_t KD = (size_t)c->NKV * c->HS;
    s->cache_bytes = (size_t)c->L * n * Tmax * KD * sizeof(float);
    char what[96];
    snprintf(what, sizeof(what), "a KV cache of %d x %d tokens", n, Tmax);
    s->kc = (float *)cel_gpu_dmalloc(g, s->cache_bytes, what, err);
    s->vc = s->kc ? (float *)cel_gpu_dmalloc(g, s->cache_bytes, what, err) : NULL;
    s->logits = s->vc ? (float *)cel_gpu_dmalloc(g, (size_t)n * c->V * sizeof(float),
                                                 "sampling logits", err)
                      : NULL;
    int rc = s->logits ? scratch_alloc(s, err) : (err ? err->code : CEL_ENOMEM);
    for (int i = 0; rc == CEL_OK && i < n; i++) {
        int len = lens[i];
        for (int t = 0; t < len; t++) {
            s->htoks[t] = prompts[i][t];
            s->hpos[t] = t;
            s->hslot[t] = i;
        }
        s->segs[0] = (cel_gpu_seg_t){ loras[i], 0, 1 };
        rc = upload_rows(s, len, err);
        if (rc != CEL_OK) break;
        layers(s, len, 1, 1);
        head(s, s->x + (size_t)(len - 1) * c->C, 1, &i);
        s->len[i] = len;
        rc = cel_gpu_check(g, "prefill", err);
    }
    if (rc != CEL_OK) {
        cel_gpu_sampler_free(s);
        return rc;
    }
    *out = s;
    return CEL_OK;
}

int cel_gpu_sampler_feed(cel_gpu_sampler_t *s, int cnt, const int *seqs, const int32_t *tokens,
                         cel_err_t *err) {
    cel_gpu_t *g = s->g;
    cudaSetDevice(g->dev);
    if (cnt < 1 || cnt > s->n) return cel_err_set(err, CEL_EINVAL, "bad sequence count %d", cnt);
    int nseg = 0;
    for (int j = 0; j < cnt; j++) {
        int q = seqs[j];
        if (q < 0 || q >= s->n || s->len[q] >= s->Tmax)
            return cel_err_set(err, CEL_EINVAL, "sequence %d cannot take another token", q);
        s->htoks[j] = tokens[j];
        s->hpos[j] = s->len[q];
        s->hslot[j] = q;
        if (nseg > 0 && s->segs[nseg - 1].lora == s->loras[q]) s->segs[nseg - 1].nb++;
        else s->segs[nseg++] = (cel_gpu_seg_t){ s->loras[q], j, 1 };
    }
    int rc = upload_rows(s, cnt, err);
    if (rc != CEL_OK) return rc;
    layers(s, cnt, 0, nseg);
    head(s, s->x, cnt, seqs);
    for (int j = 0; j < cnt; j++) s->len[seqs[j]]++;
    return cel_gpu_check(g, "sampling step", err);
}

int cel_gpu_sampler_pick(cel_gpu_sampler_t *s, int cnt, const int *seqs, const float *u,
                         float temperature, int top_k, float top_p, int32_t *out, cel_err_t *err) {
    cel_gpu_t *g = s->g;
    cudaSetDevice(g->dev);
    int V = g->cfg.V;
    if (cnt < 1 || cnt > s->n) return cel_err_set(err, CEL_EINVAL, "bad sequence count %d", cnt);
    size_t vb = (size_t)V * sizeof(float);
    for (int j = 0; j < cnt; j++) {
        if (seqs[j] < 0 || seqs[j] >= s->n)
            return cel_err_set(err, CEL_EINVAL, "no sequence %d", seqs[j]);
        cudaMemcpyAsync(s->sel + (size_t)j * V, s->logits + (size_t)seqs[j] * V, vb,
                        cudaMemcpyDeviceToDevice, g->st);
    }
    cudaMemcpyAsync(s->draws, u, cnt * sizeof(float), cudaMemcpyHostToDevice, g->st);
    cel_cuda_sample(s->out, s->sel, s->draws, temperature, top_k, top_p, cnt, V, g->st);
    cudaMemcpyAsync(out, s->out, cnt * sizeof(int32_t), cudaMemcpyDeviceToHost, g->st);
    return cel_gpu_check(g, "sampling pick", err);
}
