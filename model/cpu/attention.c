/* attention.c -- causal grouped-query self-attention, forward and backward, plus cached inference.
 *
 * out_h = softmax(q_h k_g^T / sqrt(HS) + causal mask) v_g with g = h / (NH/NKV),
 * as HF's LlamaAttention with repeat_kv. q and k arrive already rotated (rope).
 * The forward keeps only the log-sum-exp of each score row; the backward
 * recomputes each (b, h)'s probabilities from q, k and lse, a block of rows at
 * a time, so memory stays at a block of scores per thread, never (B,NH,T,T).
 * Rows go in blocks of ATT_BLOCK queries: block [i0, i1) only ever needs keys
 * [0, i1), so the score GEMMs skip most of the masked upper triangle (about
 * 3/8 of the square at T = 128), and rows past a sequence's valid length
 * (padding of a packed batch, which no valid row attends to) are not computed
 * at all: their outputs and gradients are 0. The heads split across par.c's
 * threads (see "threads" below); results do not depend on how many.
 */
#include "ops.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#undef I /* OpenBLAS pulls in <complex.h>; we use I for the MLP width */

#include "simd.h"

#define ATT_BLOCK 32 /* query rows per score block */

/* Masked softmax of row i of S (n_valid = i+1 entries) in place; returns its lse. */
CEL_CPU_VEC static float softmax_row(float *s, int n_valid, int n_total) {
    float mx = s[0];
    for (int j = 1; j < n_valid; j++) mx = s[j] > mx ? s[j] : mx;
    for (int j = 0; j < n_valid; j++) s[j] = cel_cpu_expf(s[j] - mx);
    float sum = 0.0f;
    for (int j = 0; j < n_valid; j++) sum += s[j];
    float inv = 1.0f / sum;
    for (int j = 0; j < n_valid; j++) s[j] *= inv;
    for (int j = n_valid; j < n_total; j++) s[j] = 0.0f;
    return mx + logf(sum);
}

/* Backward's probabilities of rows [i0, i0 + m) of a block (stride ld): exp(s - lse) under
 * the mask. */
CEL_CPU_VEC static void probs_rows(float *P, int ld, int i0, int m, const float *l) {
    for (int i = 0; i < m; i++) {
        float *p = P + (size_t)i * ld, li = l[i0 + i];
        int nv = i0 + i + 1;
        for (int j = 0; j < nv; j++) p[j] = cel_cpu_expf(p[j] - li);
        for (int j = nv; j < ld; j++) p[j] = 0.0f;
    }
}

/* dS = P (dP - rowsum(P dP)) * scale over the block's rows, in place over dP. */
CEL_CPU_VEC static void dscore_rows(float *dP, const float *P, int ld, int i0, int m, float scale) {
    for (int i = 0; i < m; i++) {
        const float *p = P + (size_t)i * ld;
        float *d = dP + (size_t)i * ld;
        int nv = i0 + i + 1;
        float dot = 0.0f;
        for (int j = 0; j < nv; j++) dot += p[j] * d[j];
        for (int j = 0; j < nv; j++) d[j] = p[j] * (d[j] - dot) * scale;
        for (int j = nv; j < ld; j++) d[j] = 0.0f;
    }
}

void cel_cpu_attention_forward(float *out /* (B,T,NH*HS) */, float *lse /* (B,NH,T) saved */,
                               float *scratch /* (T,T) */, const float *q /* (B,T,NH*HS) */,
                               const float *k /* (B,T,NKV*HS) */, const float *v /* (B,T,NKV*HS) */,
                               int B, int T, int NH, int NKV, int HS) {
    cel_cpu_attention_forward_lens(out, lse, scratch, q, k, v, NULL, B, T, NH, NKV, HS);
}

/* ---- threads: one (b, h) (forward) or one (b, kv head) (backward) an item ----
 *
 * The heads are independent, so they split across par.c's threads; each
 * item's products and sums run in the same order on whichever thread takes
 * it, so results do not depend on the thread count. The caller's thread uses
 * the scratch it was given; each worker has a buffer of its own here (grown by
 * the caller before the job, kept for later passes). OpenBLAS runs on one
 * thread meanwhile: the blocks' products are small, and two threads of ours
 * each calling a threaded OpenBLAS would fight over its workers. */

typedef struct att_job {
    float *out, *lse, *dq, *dk, *dv, *scratch;
    const float *q, *k, *v, *dout, *lse_in;
    const int32_t *lens;
    int B, T, NH, NKV, HS;
    size_t per; /* scratch floats an item needs: (blk, T) or (2, blk, T) */
} att_job_t;

/* Rows of a score block: within the caller's (2, T, T) scratch for any T. */
static int att_rows(int T) { return T < ATT_BLOCK ? T : ATT_BLOCK; }

static float *slot_buf[CEL_CPU_PAR_MAX];
static size_t slot_cap[CEL_CPU_PAR_MAX];

static float *scratch_of(const att_job_t *j) {
    int s = cel_cpu_par_slot();
    return s == 0 ? j->scratch : slot_buf[s];
}

/* Runs fn over n items on as many threads as have scratch of `per` floats.
 * One caller at a time grows and lends the workers' buffers; another thread
 * calling meanwhile (another model) runs its items alone, as par.c does. */
static pthread_mutex_t slot_mu = PTHREAD_MUTEX_INITIALIZER;

static void run_items(int n, cel_cpu_par_fn fn, att_job_t *j) {
    int nt = cel_cpu_par_threads(), slots = 1;
    if (nt > CEL_CPU_PAR_MAX) nt = CEL_CPU_PAR_MAX;
    if (nt < 2 || n < 2 || pthread_mutex_trylock(&slot_mu) != 0) {
        fn(j, 0, n);
        return;
    }
    for (; slots < nt; slots++) {
        if (slot_cap[slots] >= j->per) continue;
        float *p = malloc(j->per * sizeof(float));
        if (!p) break; /* fewer threads, same results */
        free(slot_buf[slots]);
        slot_buf[slots] = p;
        slot_cap[slots] = j->per;
    }
    if (slots < 2) {
        fn(j, 0, n);
    } else {
        int blas = openblas_get_num_threads();
        if (blas > 1) openblas_set_num_threads(1);
        cel_cpu_par_for_slots(n, 1, fn, j, slots);
        if (blas > 1) openblas_set_num_threads(blas);
    }
    pthread_mutex_unlock(&slot_mu);
}

static void fwd_items(void *ctx, int i0, int i1) {
    const att_job_t *j = ctx;
    int T = j->T, HS = j->HS, ldq = j->NH * HS, ldk = j->NKV * HS, group = j->NH / j->NKV;
    float scale = 1.0f / sqrtf((float)HS), *scratch = scratch_of(j);
    for (int it = i0; it < i1; it++) {
        int b = it / j->NH, h = it % j->NH, len = j->lens ? j->lens[b] : T;
        const float *qh = j->q + (size_t)b * T * ldq + h * HS;
        const float *kg = j->k + (size_t)b * T * ldk + (h / group) * HS;
        const float *vg = j->v + (size_t)b * T * ldk + (h / group) * HS;
        float *oh = j->out + (size_t)b * T * ldq + h * HS;
        float *l = j->lse + ((size_t)b * j->NH + h) * T;
        for (int i0b = 0; i0b < len; i0b += ATT_BLOCK) {
            int i1b = i0b + ATT_BLOCK < len ? i0b + ATT_BLOCK : len, m = i1b - i0b;
            /* S = q[i0b:i1b] k[0:i1b]^T, row stride i1b */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, i1b, HS, scale,
                        qh + (size_t)i0b * ldq, ldq, kg, ldk, 0.0f, scratch, i1b);
            for (int i = 0; i < m; i++)
                l[i0b + i] = softmax_row(scratch + (size_t)i * i1b, i0b + i + 1, i1b);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, HS, i1b, 1.0f, scratch, i1b,
                        vg, ldk, 0.0f, oh + (size_t)i0b * ldq, ldq);
        }
    }
}

void cel_cpu_attention_forward_lens(float *out, float *lse, float *scratch, const float *q,
                                    const float *k, const float *v, const int32_t *lens, int B,
                                    int T, int NH, int NKV, int HS) {
    int ldq = NH * HS;
    for (int b = 0; b < B; b++) {
        int len = lens ? lens[b] : T;
        if (len < T) { /* padded rows: zero output, lse 0 */
            for (int t = len; t < T; t++)
                memset(out + ((size_t)b * T + t) * ldq, 0, (size_t)ldq * sizeof(float));
            for (int h = 0; h < NH; h++)
                memset(lse + ((size_t)b * NH + h) * T + len, 0, (size_t)(T - len) * sizeof(float));
        }
    }
    att_job_t j = { .out = out, .lse = lse, .scratch = scratch, .q = q, .k = k, .v = v,
                    .lens = lens, .B = B, .T = T, .NH = NH, .NKV = NKV, .HS = HS,
                    .per = (size_t)att_rows(T) * T };
    run_items(B * NH, fwd_items, &j);
}

void cel_cpu_attention_backward(float *dq /* (B,T,NH*HS) = */, float *dk /* (B,T,NKV*HS) = */,
                                float *dv /* (B,T,NKV*HS) = */, float *scratch /* (2,T,T) */,
                                const float *dout /* (B,T,NH*HS) */,
                                const float *lse /* (B,NH,T) */, const float *q, const float *k,
                                const float *v, int B, int T, int NH, int NKV, int HS) {
    cel_cpu_attention_backward_lens(dq, dk, dv, scratch, dout, lse, q, k, v, NULL, B, T, NH, NKV,
                                    HS);
}

/* Item (b, g): every query head of kv head g, in order, so dk and dv of (b, g)
 * are summed by one thread in the order a single thread sums them. */
static void bwd_items(void *ctx, int i0, int i1) {
    const att_job_t *j = ctx;
    int T = j->T, HS = j->HS, ldq = j->NH * HS, ldk = j->NKV * HS, group = j->NH / j->NKV;
    float scale = 1.0f / sqrtf((float)HS);
    float *P = scratch_of(j), *dP = P + (size_t)att_rows(T) * T;
    const float *q = j->q, *k = j->k, *v = j->v, *dout = j->dout;
    for (int it = i0; it < i1; it++) {
        int b = it / j->NKV, g = it % j->NKV, len = j->lens ? j->lens[b] : T;
        for (int h = g * group; h < (g + 1) * group; h++) {
            size_t qo = (size_t)b * T * ldq + h * HS, ko = (size_t)b * T * ldk + g * HS;
            const float *l = j->lse_in + ((size_t)b * j->NH + h) * T;
            for (int i0b = 0; i0b < len; i0b += ATT_BLOCK) {
                int i1b = i0b + ATT_BLOCK < len ? i0b + ATT_BLOCK : len, m = i1b - i0b;
                size_t qi = qo + (size_t)i0b * ldq;
                /* P from the saved lse: exp(s - lse) under the mask */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, i1b, HS, scale, q + qi, ldq,
                            k + ko, ldk, 0.0f, P, i1b);
                probs_rows(P, i1b, i0b, m, l);
                /* dP = dO v^T; dv += P^T dO */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, i1b, HS, 1.0f, dout + qi,
                            ldq, v + ko, ldk, 0.0f, dP, i1b);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1b, HS, m, 1.0f, P, i1b,
                            dout + qi, ldq, 1.0f, j->dv + ko, ldk);
                dscore_rows(dP, P, i1b, i0b, m, scale);
                /* dq = dS k; dk += dS^T q */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, HS, i1b, 1.0f, dP, i1b,
                            k + ko, ldk, 0.0f, j->dq + qi, ldq);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1b, HS, m, 1.0f, dP, i1b,
                            q + qi, ldq, 1.0f, j->dk + ko, ldk);
            }
        }
    }
}

void cel_cpu_attention_backward_lens(float *dq, float *dk, float *dv, float *scratch,
                                     const float *dout, const float *lse, const float *q,
                                     const float *k, const float *v, const int32_t *lens, int B,
                                     int T, int NH, int NKV, int HS) {
    int ldq = NH * HS, ldk = NKV * HS;
    memset(dk, 0, (size_t)B * T * ldk * sizeof(float));
    memset(dv, 0, (size_t)B * T * ldk * sizeof(float));
    for (int b = 0; b < B; b++) {
        int len = lens ? lens[b] : T;
        for (int t = len; t < T; t++)
            memset(dq + ((size_t)b * T + t) * ldq, 0, (size_t)ldq * sizeof(float));
    }
    att_job_t j = { .dq = dq, .dk = dk, .dv = dv, .scratch = scratch, .q = q, .k = k, .v = v,
                    .dout = dout, .lse_in = lse, .lens = lens, .B = B, .T = T, .NH = NH,
                    .NKV = NKV, .HS = HS, .per = 2 * (size_t)att_rows(T) * T };
    run_items(B * NKV, bwd_items, &j);
}

void cel_cpu_attention_cached(float *out /* (n,NH*HS) */, float *scratch /* (n,p0+n) */,
                              const float *q /* (n,NH*HS) */, const float *kc /* (>=p0+n,NKV*HS) */,
                              const float *vc /* (>=p0+n,NKV*HS) */, int n, int p0, int NH, int NKV,
                              int HS) {
    int ldq = NH * HS, ldk = NKV * HS, group = NH / NKV, Tk = p0 + n;
    float scale = 1.0f / sqrtf((float)HS);
    for (int h = 0; h < NH; h++) {
        const float *kg = kc + (h / group) * HS, *vg = vc + (h / group) * HS;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, Tk, HS, scale, q + h * HS, ldq, kg,
                    ldk, 0.0f, scratch, Tk);
        for (int i = 0; i < n; i++) softmax_row(scratch + (size_t)i * Tk, p0 + i + 1, Tk);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, HS, Tk, 1.0f, scratch, Tk, vg,
                    ldk, 0.0f, out + h * HS, ldq);
    }
}
