/* train.c -- forward and backward passes of the whole model over a batch, and scoring.
 *
 * llm.c's gpt2_forward/gpt2_backward for a Llama: embedding, then per layer
 * rmsnorm -> q/k/v (+LoRA) -> rope -> attention -> o (+LoRA) -> residual ->
 * rmsnorm -> gate/up (+LoRA) -> swiglu -> down (+LoRA) -> residual, then the
 * final norm, the head and the weighted cross-entropy. Backward walks the
 * layers in reverse with the same pointer setup (layer_acts). With a LoRA the
 * base weights get no gradients (their dW GEMMs are skipped); without one,
 * every weight's gradient accumulates into the model's grad block.
 *
 * The workspace (cel_ws_t) belongs to the model; it is sized before a pass and
 * only grows, so a training step itself never allocates. It is one anonymous
 * mapping that grows with mremap: the pages a pass has touched stay mapped
 * when a later pass needs more (a fresh malloc of tens of MB each time the
 * shape grew made every pass fault in its activations again: scoring texts
 * sorted by length spent a third of its CPU in page faults on this VM).
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cpu/ops.h"

void cel_train_ws_free(cel_ws_t *ws) {
    if (ws->mem) munmap(ws->mem, ws->mem_bytes);
    free(ws->imem);
    memset(ws, 0, sizeof(*ws));
}

/* Makes ws->mem at least `bytes` long, keeping the pages it has (contents
 * need not survive: a pass writes before it reads). 0 on failure, and the
 * old mapping is kept. */
static int ws_map(cel_ws_t *ws, size_t bytes) {
    if (bytes <= ws->mem_bytes) return 1;
    void *p = ws->mem ? mremap(ws->mem, ws->mem_bytes, bytes, MREMAP_MAYMOVE)
                      : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 0;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE); /* a hint: fewer faults where THP is on for madvise */
#endif
    ws->mem = p;
    ws->mem_bytes = bytes;
    return 1;
}

/* Makes the workspace hold N = B*T rows, sequences of T, Ls stored layers and
 * LoRA rank R; keeps the current buffers when they are big enough. */
static int ws_ensure(cel_model_t *m, int B, int T, int Ls, int R, cel_err_t *err) {
    cel_ws_t *ws = &m->ws;
    size_t N = (size_t)B * T;
    if (ws->mem && ws->cap >= N && ws->capT >= T && ws->capL >= Ls && ws->capR >= R) return CEL_OK;
    /* grow to cover both the old and the new request */
    if (ws->mem) {
        N = N > ws->cap ? N : ws->cap;
        T = T > ws->capT ? T : ws->capT;
        Ls = Ls > ws->capL ? Ls : ws->capL;
        R = R > ws->capR ? R : ws->capR;
    }
    const cel_config_t *c = &m->cfg;
    size_t C = c->C, I = c->I, V = c->V, QD = (size_t)c->NH * c->HS, KD = (size_t)c->NKV * c->HS;
    size_t L = Ls;
    size_t sizes[] = {
        (L + 1) * N * C,
        L * N * C,
        L * N * C,
        L * N * C,
        L * N,
        L * N, /* res res2 ln1 ln2 r1 r2 */
        L * N * QD,
        L * N * KD,
        L * N * KD,
        L * N * c->NH,
        L * N * QD, /* q k v lse atty */
        L * N * I,
        L * N * I,
        L * N * I, /* gate up h */
        N * C,
        N,
        N * V,
        N,
        N,
        N, /* lnf rstdf logits lse logp w */
        N * C,
        N * C,
        N * C,
        N * QD,
        N * QD,
        N * KD,
        N * KD, /* dres dln tmp dq datty dk dv */
        N * I,
        N * I,
        N * I,
        N * R,
        2 * (size_t)T * T, /* dgate dup dh du att */
    };
    float **ptrs[] = { &ws->res,   &ws->res2,    &ws->ln1,  &ws->ln2,   &ws->rstd1,  &ws->rstd2,
                       &ws->q,     &ws->k,       &ws->v,    &ws->lse,   &ws->atty,   &ws->gate,
                       &ws->up,    &ws->h,       &ws->lnf,  &ws->rstdf, &ws->logits, &ws->lse_ce,
                       &ws->logp,  &ws->weights, &ws->dres, &ws->dln,   &ws->tmp,    &ws->dq,
                       &ws->datty, &ws->dk,      &ws->dv,   &ws->dgate, &ws->dup,    &ws->dh,
                       &ws->du,    &ws->att };
    size_t np = sizeof(ptrs) / sizeof(ptrs[0]), total = 0;
    if (m->gpu) /* GPU passes keep activations on the device: only the batch and log-probs here */
        for (size_t i = 0; i < np; i++)
            if (ptrs[i] != &ws->weights && ptrs[i] != &ws->logp) sizes[i] = 0;
    for (size_t i = 0; i < np; i++) total += sizes[i];
    size_t usz = R > 0 && !m->gpu ? L * N * R : 0;
    total += CEL_NMOD * usz;
    int32_t *im = realloc(ws->imem, 4 * N * sizeof(int32_t));
    if (im) ws->imem = im;
    if (!im || !ws_map(ws, total * sizeof(float))) {
        cel_train_ws_free(ws);
        return cel_err_set(err, CEL_ENOMEM,
                           "out of memory for activations of %zu tokens "
                           "(%zu MiB)",
                           N, total * 4 >> 20);
    }
    float *x = ws->mem;
    for (size_t i = 0; i < np; i++) {
        *ptrs[i] = x;
        x += sizes[i];
    }
    for (int mod = 0; mod < CEL_NMOD; mod++) {
        ws->u[mod] = usz ? x : NULL;
        x += usz;
    }
    ws->tokens = ws->imem;
    ws->targets = ws->imem + N;
    ws->pos = ws->imem + 2 * N;
    ws->lens = ws->imem + 3 * N;
    ws->cap = N;
    ws->capT = T;
    ws->capL = (int)L;
    ws->capR = R;
    return CEL_OK;
}

/* Checks one job's batch (and its adapter) against the model; 0 or an error. */
static int check_job(const cel_model_t *m, const cel_lora_t *lora, const cel_batch_t *b,
                     cel_err_t *err) {
    const cel_config_t *c = &m->cfg;
    if (!b || b->B < 1 || b->T < 1 || !b->tokens)
        return cel_err_set(err, CEL_EINVAL, "batch needs B >= 1, T >= 1 and tokens");
    if (b->T > m->maxT)
        return cel_err_set(err, CEL_ELIMIT, "sequence length %d exceeds the model's %d", b->T,
                           m->maxT);
    if ((int64_t)b->B * b->T > CEL_MODEL_MAX_BATCH_TOKENS)
        return cel_err_set(err, CEL_ELIMIT, "batch of %lld tokens exceeds the limit %d",
                           (long long)b->B * b->T, CEL_MODEL_MAX_BATCH_TOKENS);
    if (lora && (lora->cfg.C != c->C || lora->cfg.L != c->L || lora->cfg.NH != c->NH ||
                 lora->cfg.NKV != c->NKV || lora->cfg.HS != c->HS || lora->cfg.I != c->I))
        return cel_err_set(err, CEL_EINVAL, "adapter was made for a model of another shape");
    for (int i = 0; i < b->B; i++) {
        int len = b->lens ? b->lens[i] : b->T;
        if (len < 1 || len > b->T)
            return cel_err_set(err, CEL_EINVAL, "sequence %d has length %d, not in [1, %d]", i, len,
                               b->T);
        for (int t = 0; t < len; t++) {
            size_t n = (size_t)i * b->T + t;
            int32_t tok = b->tokens[n], tgt = b->targets ? b->targets[n] : 0;
            if (tok < 0 || tok >= c->V)
                return cel_err_set(err, CEL_EINVAL,
                                   "token id %d at [%d,%d] is outside the "
                                   "vocabulary of %d",
                                   tok, i, t, c->V);
            if (tgt < 0 || tgt >= c->V)
                return cel_err_set(err, CEL_EINVAL,
                                   "target id %d at [%d,%d] is outside the "
                                   "vocabulary of %d",
                                   tgt, i, t, c->V);
            if (b->weights && !isfinite(b->weights[n]))
                return cel_err_set(err, CEL_EINVAL, "weight at [%d,%d] is not finite", i, t);
        }
    }
    return CEL_OK;
}

/* Copies job j's batch into rows [b0, b0 + B) of the packed (Bp, T) batch in
 * the workspace: padded slots get token 0, target 0, weight 0; positions are
 * 0..T-1 per row. */
static void pack_job(cel_model_t *m, const cel_batch_t *b, int b0, int T) {
    cel_ws_t *ws = &m->ws;
    for (int i = 0; i < b->B; i++) {
        int len = b->lens ? b->lens[i] : b->T;
        ws->lens[b0 + i] = len;
        for (int t = 0; t < T; t++) {
            size_t src = (size_t)i * b->T + t, n = (size_t)(b0 + i) * T + t;
            int valid = t < len;
            ws->tokens[n] = valid ? b->tokens[src] : 0;
            ws->targets[n] = valid && b->targets ? b->targets[src] : 0;
            ws->weights[n] = !valid ? 0.0f : b->weights ? b->weights[src] : 1.0f;
            ws->pos[n] = t;
        }
    }
}

/* The activations of layer l (slot l in training, slot 0 in inference). */
typedef struct layer_acts {
    float *resin, *res2, *resout, *ln1, *ln2, *rstd1, *rstd2, *q, *k, *v, *lse, *atty;
    float *gate, *up, *h;
    float *u[CEL_NMOD];
} layer_acts_t;

static layer_acts_t layer_acts(const cel_model_t *m, int l, int train, size_t N, int R) {
    const cel_config_t *c = &m->cfg;
    const cel_ws_t *ws = &m->ws;
    size_t s = train ? (size_t)l : 0, C = c->C, QD = (size_t)c->NH * c->HS,
           KD = (size_t)c->NKV * c->HS, I = c->I;
    layer_acts_t a;
    a.resin = ws->res + s * N * C;
    a.resout = train ? ws->res + (s + 1) * N * C : ws->res; /* in place when not kept */
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
    for (int mod = 0; mod < CEL_NMOD; mod++) a.u[mod] = ws->u[mod] ? ws->u[mod] + s * N * R : NULL;
    return a;
}

/* Base weight of module mod in layer l, within the block viewed by p. */
static float *mod_weight(const cel_config_t *c, const cel_params_t *p, int l, int mod) {
    int in, out;
    cel_model_mod_dims(c, mod, &in, &out);
    size_t sz = (size_t)in * out;
    float *base[CEL_NMOD] = { p->wq, p->wk, p->wv, p->wo, p->wg, p->wu, p->wd };
    return base[mod] + l * sz;
}

/* A packed pass: its segments, the padded length T and the LoRA stride R
 * (the largest rank; segment rows start at row * R in u and du). */
typedef struct pass {
    const cel_seg_t *segs;
    int nseg, B, T, R;
} pass_t;

/* out = inp W^T, then each segment's rows add their adapter's LoRA of mod. */
static void linear_forward(const cel_model_t *m, const pass_t *ps, int l, int mod, float *out,
                           float *u, const float *inp) {
    int in, outd, N = ps->B * ps->T;
    cel_model_mod_dims(&m->cfg, mod, &in, &outd);
    if (m->bf16) cel_cpu_bf16_gemm(out, outd, inp, in, N, &m->bf16[(l * CEL_NMOD + mod) * 2], 0);
    else cel_cpu_matmul_forward(out, inp, mod_weight(&m->cfg, &m->p, l, mod), N, in, outd);
    for (int s = 0; s < ps->nseg; s++) {
        const cel_lora_t *lora = ps->segs[s].lora;
        if (!lora || !(lora->targets & (1u << mod))) continue;
        size_t r0 = (size_t)ps->segs[s].b0 * ps->T;
        int rows = ps->segs[s].nb * ps->T;
        const float *A = lora->w + lora->offA[mod] + (size_t)l * lora->R * in;
        const float *Bw = lora->w + lora->offB[mod] + (size_t)l * outd * lora->R;
        cel_cpu_lora_forward(out + r0 * outd, u + r0 * ps->R, inp + r0 * in, A, Bw, lora->scaling,
                             rows, in, outd, lora->R);
    }
}

/* dinp += dout W (and each segment's LoRA branch); dW += (full training) or
 * each segment's adapter's dA, dB +=. */
static void linear_backward(cel_model_t *m, const pass_t *ps, int full, int l, int mod, float *dinp,
                            const float *dout, const float *inp, const float *u) {
    int in, outd, N = ps->B * ps->T;
    cel_model_mod_dims(&m->cfg, mod, &in, &outd);
    float *dW = full ? mod_weight(&m->cfg, &m->gp, l, mod) : NULL;
    if (m->bf16) /* frozen weights only (cel_model_set_precision) */
        cel_cpu_bf16_gemm(dinp, in, dout, outd, N, &m->bf16[(l * CEL_NMOD + mod) * 2 + 1], 1);
    else
        cel_cpu_matmul_backward(dinp, dW, dout, inp, mod_weight(&m->cfg, &m->p, l, mod), N, in,
                                outd);
    for (int s = 0; s < ps->nseg; s++) {
        cel_lora_t *lora = ps->segs[s].lora;
        if (!lora || !(lora->targets & (1u << mod))) continue;
        size_t r0 = (size_t)ps->segs[s].b0 * ps->T;
        int rows = ps->segs[s].nb * ps->T;
        size_t oa = lora->offA[mod] + (size_t)l * lora->R * in;
        size_t ob = lora->offB[mod] + (size_t)l * outd * lora->R;
        cel_cpu_lora_backward(dinp + r0 * in, lora->g + oa, lora->g + ob, m->ws.du + r0 * ps->R,
                              dout + r0 * outd, inp + r0 * in, u + r0 * ps->R, lora->w + oa,
                              lora->w + ob, lora->scaling, rows, in, outd, lora->R);
    }
}

/* Runs embedding .. logits over the batch already in the workspace. */
static void model_forward(cel_model_t *m, const pass_t *ps, int train) {
    const cel_config_t *c = &m->cfg;
    cel_ws_t *ws = &m->ws;
    int B = ps->B, T = ps->T, N = B * T, C = c->C, R = ps->R;
    cel_cpu_embedding_forward(ws->res, ws->tokens, m->p.wte, N, C);
    layer_acts_t a = { 0 };
    for (int l = 0; l < c->L; l++) {
        a = layer_acts(m, l, train, N, R);
        cel_cpu_rmsnorm_forward(a.ln1, a.rstd1, a.resin, m->p.ln1 + (size_t)l * C, N, C, c->eps);
        linear_forward(m, ps, l, CEL_MOD_Q, a.q, a.u[CEL_MOD_Q], a.ln1);
        linear_forward(m, ps, l, CEL_MOD_K, a.k, a.u[CEL_MOD_K], a.ln1);
        linear_forward(m, ps, l, CEL_MOD_V, a.v, a.u[CEL_MOD_V], a.ln1);
        cel_cpu_rope_forward(a.q, a.q, ws->pos, m->rope_cos, m->rope_sin, N, c->NH, c->HS);
        cel_cpu_rope_forward(a.k, a.k, ws->pos, m->rope_cos, m->rope_sin, N, c->NKV, c->HS);
        cel_cpu_attention_forward_lens(a.atty, a.lse, ws->att, a.q, a.k, a.v, ws->lens, B, T, c->NH,
                                       c->NKV, c->HS);
        linear_forward(m, ps, l, CEL_MOD_O, ws->tmp, a.u[CEL_MOD_O], a.atty);
        cel_cpu_residual_forward(a.res2, a.resin, ws->tmp, (size_t)N * C);
        cel_cpu_rmsnorm_forward(a.ln2, a.rstd2, a.res2, m->p.ln2 + (size_t)l * C, N, C, c->eps);
        linear_forward(m, ps, l, CEL_MOD_GATE, a.gate, a.u[CEL_MOD_GATE], a.ln2);
        linear_forward(m, ps, l, CEL_MOD_UP, a.up, a.u[CEL_MOD_UP], a.ln2);
        cel_cpu_swiglu_forward(a.h, a.gate, a.up, N, c->I);
        linear_forward(m, ps, l, CEL_MOD_DOWN, ws->tmp, a.u[CEL_MOD_DOWN], a.h);
        cel_cpu_residual_forward(a.resout, a.res2, ws->tmp, (size_t)N * C);
    }
    cel_cpu_rmsnorm_forward(ws->lnf, ws->rstdf, a.resout, m->p.lnf, N, C, c->eps);
    if (m->bf16)
        cel_cpu_bf16_gemm(ws->logits, c->V, ws->lnf, C, N, &m->bf16[c->L * CEL_NMOD * 2], 0);
    else cel_cpu_matmul_forward(ws->logits, ws->lnf, m->p.lm, N, C, c->V);
}

/* Backward from dlogits (in ws->logits) to every LoRA or base gradient.
 * full: the pass is one base-model segment with full training on. */
static void model_backward(cel_model_t *m, const pass_t *ps, int full) {
    const cel_config_t *c = &m->cfg;
    cel_ws_t *ws = &m->ws;
    int B = ps->B, T = ps->T, N = B * T, C = c->C, R = ps->R;
    size_t NC = (size_t)N * C;
    const cel_params_t *gp = &m->gp;
    /* head and final norm */
    memset(ws->dln, 0, NC * sizeof(float));
    if (m->bf16)
        cel_cpu_bf16_gemm(ws->dln, C, ws->logits, c->V, N, &m->bf16[c->L * CEL_NMOD * 2 + 1], 1);
    else
        cel_cpu_matmul_backward(ws->dln, full ? gp->lm : NULL, ws->logits, ws->lnf, m->p.lm, N, C,
                                c->V);
    memset(ws->dres, 0, NC * sizeof(float));
    layer_acts_t last = layer_acts(m, c->L - 1, 1, N, R);
    cel_cpu_rmsnorm_backward(ws->dres, full ? gp->lnf : NULL, ws->dln, last.resout, m->p.lnf,
                             ws->rstdf, N, C);
    /* ws->dres is d(resout) of the layer below; residual adds pass it through */
    for (int l = c->L - 1; l >= 0; l--) {
        layer_acts_t a = layer_acts(m, l, 1, N, R);
        size_t NI = (size_t)N * c->I;
        /* MLP: resout = res2 + down(h) */
        memset(ws->dh, 0, NI * sizeof(float));
        linear_backward(m, ps, full, l, CEL_MOD_DOWN, ws->dh, ws->dres, a.h, a.u[CEL_MOD_DOWN]);
        cel_cpu_swiglu_backward(ws->dgate, ws->dup, ws->dh, a.gate, a.up, N, c->I);
        memset(ws->dln, 0, NC * sizeof(float));
        linear_backward(m, ps, full, l, CEL_MOD_GATE, ws->dln, ws->dgate, a.ln2, a.u[CEL_MOD_GATE]);
        linear_backward(m, ps, full, l, CEL_MOD_UP, ws->dln, ws->dup, a.ln2, a.u[CEL_MOD_UP]);
        cel_cpu_rmsnorm_backward(ws->dres, full ? gp->ln2 + (size_t)l * C : NULL, ws->dln, a.res2,
                                 m->p.ln2 + (size_t)l * C, a.rstd2, N, C);
        /* attention: res2 = resin + o(atty) */
        size_t NQ = (size_t)N * c->NH * c->HS;
        memset(ws->datty, 0, NQ * sizeof(float));
        linear_backward(m, ps, full, l, CEL_MOD_O, ws->datty, ws->dres, a.atty, a.u[CEL_MOD_O]);
        cel_cpu_attention_backward_lens(ws->dq, ws->dk, ws->dv, ws->att, ws->datty, a.lse, a.q, a.k,
                                        a.v, ws->lens, B, T, c->NH, c->NKV, c->HS);
        cel_cpu_rope_backward(ws->dq, ws->dq, ws->pos, m->rope_cos, m->rope_sin, N, c->NH, c->HS);
        cel_cpu_rope_backward(ws->dk, ws->dk, ws->pos, m->rope_cos, m->rope_sin, N, c->NKV, c->HS);
        memset(ws->dln, 0, NC * sizeof(float));
        linear_backward(m, ps, full, l, CEL_MOD_Q, ws->dln, ws->dq, a.ln1, a.u[CEL_MOD_Q]);
        linear_backward(m, ps, full, l, CEL_MOD_K, ws->dln, ws->dk, a.ln1, a.u[CEL_MOD_K]);
        linear_backward(m, ps, full, l, CEL_MOD_V, ws->dln, ws->dv, a.ln1, a.u[CEL_MOD_V]);
        if (l > 0 || full) /* below layer 0 only the frozen-or-not embedding remains */
            cel_cpu_rmsnorm_backward(ws->dres, full ? gp->ln1 + (size_t)l * C : NULL, ws->dln,
                                     a.resin, m->p.ln1 + (size_t)l * C, a.rstd1, N, C);
    }
    if (full) cel_cpu_embedding_backward(gp->wte, ws->dres, ws->tokens, N, C);
}

/* Copies job rows [b0, b0 + B) of the packed log-probs out, in the job's own
 * (B, T) layout, zero on padded slots. */
static void copy_logprobs(const cel_model_t *m, const cel_batch_t *b, int b0, int T, float *out) {
    for (int i = 0; i < b->B; i++) {
        int len = b->lens ? b->lens[i] : b->T;
        for (int t = 0; t < b->T; t++)
            out[(size_t)i * b->T + t] = t < len ? m->ws.logp[(size_t)(b0 + i) * T + t] : 0.0f;
    }
}

/* The job's loss from the packed log-probs: -sum of weight * logp over its
 * rows, in double, in row order (as the CPU cross-entropy sums). */
static double job_loss(const cel_model_t *m, int b0, int nb, int T) {
    double loss = 0.0;
    size_t r0 = (size_t)b0 * T, r1 = (size_t)(b0 + nb) * T;
    for (size_t n = r0; n < r1; n++)
        if (m->ws.weights[n] != 0.0f) loss -= (double)m->ws.weights[n] * m->ws.logp[n];
    return loss;
}

/* Runs the valid jobs as one packed pass; logits (B,T,V) of the packed batch
 * are copied out when not NULL (single-job callers only). */
static int run_packed(cel_model_t *m, cel_model_job_t *jobs, int n, int backward, float *logits,
                      cel_err_t *err) {
    cel_seg_t segs_small[16];
    cel_seg_t *segs = n <= 16 ? segs_small : malloc(n * sizeof(*segs));
    int *b0s = malloc(n * sizeof(int));
    if (!segs || !b0s) {
        if (segs != segs_small) free(segs);
        free(b0s);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    int B = 0, T = 0, R = 0, nseg = 0, has_targets = 1, full = 0;
    for (int j = 0; j < n; j++) {
        b0s[j] = -1;
        if (jobs[j].rc != CEL_OK) continue;
        const cel_batch_t *b = &jobs[j].batch;
        b0s[j] = B;
        segs[nseg++] = (cel_seg_t){ jobs[j].lora, B, b->B };
        B += b->B;
        T = b->T > T ? b->T : T;
        if (jobs[j].lora && jobs[j].lora->R > R) R = jobs[j].lora->R;
        if (!b->targets) has_targets = 0;
        if (backward && !jobs[j].lora) full = 1;
    }
    int rc = CEL_OK;
    if (nseg == 0) goto done;
    if ((int64_t)B * T > CEL_MODEL_MAX_BATCH_TOKENS) {
        rc = cel_err_set(err, CEL_ELIMIT, "packed batch of %lld tokens exceeds the limit %d",
                         (long long)B * T, CEL_MODEL_MAX_BATCH_TOKENS);
        goto done;
    }
    rc = ws_ensure(m, B, T, backward && !m->gpu ? m->cfg.L : 1, R, err);
    if (rc != CEL_OK) goto done;
    for (int j = 0; j < n; j++)
        if (b0s[j] >= 0) pack_job(m, &jobs[j].batch, b0s[j], T);
    int N = B * T;
    cel_ws_t *ws = &m->ws;
    if (m->gpu) {
        rc = cel_device_run(m, segs, nseg, B, T, backward, logits, err);
        if (rc != CEL_OK) goto done;
    } else {
        pass_t ps = { segs, nseg, B, T, R };
        model_forward(m, &ps, backward);
        if (logits) memcpy(logits, ws->logits, (size_t)N * m->cfg.V * sizeof(float));
        if (has_targets) {
            cel_cpu_crossentropy_forward(ws->logp, ws->lse_ce, ws->logits, ws->targets, ws->weights,
                                         N, m->cfg.V);
            if (backward) {
                cel_cpu_crossentropy_backward(ws->logits, ws->logits, ws->lse_ce, ws->targets,
                                              ws->weights, 1.0f, N, m->cfg.V);
                model_backward(m, &ps, full);
            }
        }
    }
    if (has_targets)
        for (int j = 0; j < n; j++) {
            if (b0s[j] < 0) continue;
            jobs[j].loss = job_loss(m, b0s[j], jobs[j].batch.B, T);
            if (jobs[j].logprobs) copy_logprobs(m, &jobs[j].batch, b0s[j], T, jobs[j].logprobs);
        }
done:
    if (segs != segs_small) free(segs);
    free(b0s);
    return rc;
}

int cel_model_run_jobs(cel_model_t *m, cel_model_job_t *jobs, int n, int backward, cel_err_t *err) {
    if (n < 1 || !jobs) return cel_err_set(err, CEL_EINVAL, "no jobs");
    for (int j = 0; j < n; j++) {
        cel_model_job_t *jb = &jobs[j];
        cel_err_clear(&jb->err);
        jb->loss = 0.0;
        jb->rc = check_job(m, jb->lora, &jb->batch, &jb->err);
        if (jb->rc == CEL_OK && !jb->batch.targets)
            jb->rc = cel_err_set(&jb->err, CEL_EINVAL, "a job needs target tokens");
        if (jb->rc == CEL_OK && backward && !jb->lora) {
            if (!m->g)
                jb->rc = cel_err_set(&jb->err, CEL_ESTATE,
                                     "no adapter given and "
                                     "full-parameter training is not enabled");
            else if (n > 1)
                jb->rc = cel_err_set(&jb->err, CEL_EINVAL,
                                     "a full-parameter training job "
                                     "cannot be packed with others");
        }
    }
    int rc = run_packed(m, jobs, n, backward, NULL, err);
    if (rc != CEL_OK)
        for (int j = 0; j < n; j++)
            if (jobs[j].rc == CEL_OK) {
                jobs[j].rc = rc;
                jobs[j].err = *err;
            }
    return rc;
}

/* One job through run_packed, its error reported through err. */
static int run_one(cel_model_t *m, cel_lora_t *lora, const cel_batch_t *batch, int backward,
                   float *logits, float *logprobs, double *loss, cel_err_t *err) {
    int rc = check_job(m, lora, batch, err);
    if (rc != CEL_OK) return rc;
    cel_model_job_t job = { .lora = lora, .batch = *batch, .logprobs = logprobs };
    rc = run_packed(m, &job, 1, backward, logits, err);
    if (rc == CEL_OK && loss) *loss = job.loss;
    return rc;
}

int cel_model_forward(cel_model_t *m, const cel_lora_t *lora, const cel_batch_t *batch,
                      float *logits, float *logprobs, double *loss, cel_err_t *err) {
    if ((logprobs || loss) && (!batch || !batch->targets))
        return cel_err_set(err, CEL_EINVAL, "log-probs and loss need target tokens");
    /* forward only reads the adapter */
    return run_one(m, (cel_lora_t *)lora, batch, 0, logits, logprobs, loss, err);
}

int cel_model_forward_backward(cel_model_t *m, cel_lora_t *lora, const cel_batch_t *batch,
                               float *logprobs, double *loss, cel_err_t *err) {
    if (!lora && !m->g)
        return cel_err_set(err, CEL_ESTATE,
                           "no adapter given and full-parameter training is "
                           "not enabled");
    if (!batch || !batch->targets)
        return cel_err_set(err, CEL_EINVAL, "forward_backward needs target tokens");
    return run_one(m, lora, batch, 1, NULL, logprobs, loss, err);
}

int cel_model_score(cel_model_t *m, const cel_lora_t *lora, const int32_t *tokens, int n,
                    float *token_logprobs, cel_score_t *out, cel_err_t *err) {
    if (!tokens || n < 2)
        return cel_err_set(err, CEL_EINVAL, "scoring needs at least 2 tokens, got %d", n);
    if (n - 1 > m->maxT)
        return cel_err_set(err, CEL_ELIMIT, "%d tokens exceed the model's %d", n, m->maxT + 1);
    cel_batch_t b = { .B = 1, .T = n - 1, .tokens = tokens, .targets = tokens + 1 };
    double loss;
    int rc = cel_model_forward(m, lora, &b, NULL, token_logprobs, &loss, err);
    if (rc != CEL_OK) return rc;
    out->n = n - 1;
    out->logprob = -loss;
    out->mean_logprob = -loss / (n - 1);
    out->perplexity = exp(loss / (n - 1));
    return CEL_OK;
}
