/* attention.c -- causal grouped-query self-attention, forward and backward, plus cached inference.
 *
 * out_h = softmax(q_h k_g^T / sqrt(HS) + causal mask) v_g with g = h / (NH/NKV),
 * as HF's LlamaAttention with repeat_kv. q and k arrive already rotated (rope).
 * The forward keeps only the log-sum-exp of each score row; the backward
 * recomputes each (b, h)'s probabilities from q, k and lse into a (T,T)
 * scratch, so memory stays at one score matrix per head, never (B,NH,T,T).
 * Rows go in blocks of ATT_BLOCK queries: block [i0, i1) only ever needs keys
 * [0, i1), so the score GEMMs skip most of the masked upper triangle (about
 * 3/8 of the square at T = 128), and rows past a sequence's valid length
 * (padding of a packed batch, which no valid row attends to) are not computed
 * at all: their outputs and gradients are 0.
 */
#include "ops.h"

#include <math.h>
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

void cel_cpu_attention_forward_lens(float *out, float *lse, float *scratch, const float *q,
                                    const float *k, const float *v, const int32_t *lens, int B,
                                    int T, int NH, int NKV, int HS) {
    int ldq = NH * HS, ldk = NKV * HS, group = NH / NKV;
    float scale = 1.0f / sqrtf((float)HS);
    for (int b = 0; b < B; b++) {
        int len = lens ? lens[b] : T;
        if (len < T) { /* padded rows: zero output, lse 0 */
            for (int t = len; t < T; t++)
                memset(out + ((size_t)b * T + t) * ldq, 0, (size_t)ldq * sizeof(float));
            for (int h = 0; h < NH; h++)
                memset(lse + ((size_t)b * NH + h) * T + len, 0, (size_t)(T - len) * sizeof(float));
        }
        for (int h = 0; h < NH; h++) {
            const float *qh = q + (size_t)b * T * ldq + h * HS;
            const float *kg = k + (size_t)b * T * ldk + (h / group) * HS;
            const float *vg = v + (size_t)b * T * ldk + (h / group) * HS;
            float *oh = out + (size_t)b * T * ldq + h * HS;
            float *l = lse + ((size_t)b * NH + h) * T;
            for (int i0 = 0; i0 < len; i0 += ATT_BLOCK) {
                int i1 = i0 + ATT_BLOCK < len ? i0 + ATT_BLOCK : len, m = i1 - i0;
                /* S = q[i0:i1] k[0:i1]^T, row stride i1 */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, i1, HS, scale,
                            qh + (size_t)i0 * ldq, ldq, kg, ldk, 0.0f, scratch, i1);
                for (int i = 0; i < m; i++)
                    l[i0 + i] = softmax_row(scratch + (size_t)i * i1, i0 + i + 1, i1);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, HS, i1, 1.0f, scratch, i1,
                            vg, ldk, 0.0f, oh + (size_t)i0 * ldq, ldq);
            }
        }
    }
}

void cel_cpu_attention_backward(float *dq /* (B,T,NH*HS) = */, float *dk /* (B,T,NKV*HS) = */,
                                float *dv /* (B,T,NKV*HS) = */, float *scratch /* (2,T,T) */,
                                const float *dout /* (B,T,NH*HS) */,
                                const float *lse /* (B,NH,T) */, const float *q, const float *k,
                                const float *v, int B, int T, int NH, int NKV, int HS) {
    cel_cpu_attention_backward_lens(dq, dk, dv, scratch, dout, lse, q, k, v, NULL, B, T, NH, NKV,
                                    HS);
}

void cel_cpu_attention_backward_lens(float *dq, float *dk, float *dv, float *scratch,
                                     const float *dout, const float *lse, const float *q,
                                     const float *k, const float *v, const int32_t *lens, int B,
                                     int T, int NH, int NKV, int HS) {
    int ldq = NH * HS, ldk = NKV * HS, group = NH / NKV;
    float scale = 1.0f / sqrtf((float)HS);
    float *P = scratch, *dP = scratch + (size_t)T * T;
    memset(dk, 0, (size_t)B * T * ldk * sizeof(float));
    memset(dv, 0, (size_t)B * T * ldk * sizeof(float));
    for (int b = 0; b < B; b++) {
        int len = lens ? lens[b] : T;
        for (int t = len; t < T; t++)
            memset(dq + ((size_t)b * T + t) * ldq, 0, (size_t)ldq * sizeof(float));
        for (int h = 0; h < NH; h++) {
            size_t qo = (size_t)b * T * ldq + h * HS, ko = (size_t)b * T * ldk + (h / group) * HS;
            const float *l = lse + ((size_t)b * NH + h) * T;
            for (int i0 = 0; i0 < len; i0 += ATT_BLOCK) {
                int i1 = i0 + ATT_BLOCK < len ? i0 + ATT_BLOCK : len, m = i1 - i0;
                size_t qi = qo + (size_t)i0 * ldq;
                /* P from the saved lse: exp(s - lse) under the mask */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, i1, HS, scale, q + qi, ldq,
                            k + ko, ldk, 0.0f, P, i1);
                probs_rows(P, i1, i0, m, l);
                /* dP = dO v^T; dv += P^T dO */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, i1, HS, 1.0f, dout + qi,
                            ldq, v + ko, ldk, 0.0f, dP, i1);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1, HS, m, 1.0f, P, i1,
                            dout + qi, ldq, 1.0f, dv + ko, ldk);
                dscore_rows(dP, P, i1, i0, m, scale);
                /* dq = dS k; dk += dS^T q */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, HS, i1, 1.0f, dP, i1,
                            k + ko, ldk, 0.0f, dq + qi, ldq);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1, HS, m, 1.0f, dP, i1,
                            q + qi, ldq, 1.0f, dk + ko, ldk);
            }
        }
    }
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
