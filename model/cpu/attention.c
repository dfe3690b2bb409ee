/* attention.c -- causal grouped-query self-attention, forward and backward, plus cached inference.
 *
 * out_h = softmax(q_h k_g^T / sqrt(HS) + causal mask) v_g with g = h / (NH/NKV),
 * as HF's LlamaAttention with repeat_kv. q and k arrive already rotated (rope).
 * The forward keeps only the log-sum-exp of each score row; the backward
 * recomputes each (b, h)'s probabilities from q, k and lse into a (T,T)
 * scratch, so memory stays at one score matrix per head, never (B,NH,T,T).
 * The score GEMMs compute the full square and the mask zeroes the upper part.
 */
#include "ops.h"

#include <math.h>
#include <string.h>

#include <cblas.h>
#undef I /* OpenBLAS pulls in <complex.h>; we use I for the MLP width */

/* Masked softmax of row i of S (n_valid = i+1 entries) in place; returns its lse. */
static float softmax_row(float *s, int n_valid, int n_total) {
    float mx = s[0];
    for (int j = 1; j < n_valid; j++) mx = s[j] > mx ? s[j] : mx;
    float sum = 0.0f;
    for (int j = 0; j < n_valid; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < n_valid; j++) s[j] *= inv;
    for (int j = n_valid; j < n_total; j++) s[j] = 0.0f;
    return mx + logf(sum);
}

void cel_cpu_attention_forward(float *out /* (B,T,NH*HS) */, float *lse /* (B,NH,T) saved */,
                               float *scratch /* (T,T) */, const float *q /* (B,T,NH*HS) */,
                               const float *k /* (B,T,NKV*HS) */, const float *v /* (B,T,NKV*HS) */,
                               int B, int T, int NH, int NKV, int HS) {
    int ldq = NH * HS, ldk = NKV * HS, group = NH / NKV;
    float scale = 1.0f / sqrtf((float)HS);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *qh = q + (size_t)b * T * ldq + h * HS;
            const float *kg = k + (size_t)b * T * ldk + (h / group) * HS;
            const float *vg = v + (size_t)b * T * ldk + (h / group) * HS;
            float *oh = out + (size_t)b * T * ldq + h * HS;
            float *l = lse + ((size_t)b * NH + h) * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, scale, qh, ldq, kg, ldk,
                        0.0f, scratch, T);
            for (int i = 0; i < T; i++) l[i] = softmax_row(scratch + (size_t)i * T, i + 1, T);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, 1.0f, scratch, T, vg,
                        ldk, 0.0f, oh, ldq);
        }
}

void cel_cpu_attention_backward(float *dq /* (B,T,NH*HS) = */, float *dk /* (B,T,NKV*HS) = */,
                                float *dv /* (B,T,NKV*HS) = */, float *scratch /* (2,T,T) */,
                                const float *dout /* (B,T,NH*HS) */,
                                const float *lse /* (B,NH,T) */, const float *q, const float *k,
                                const float *v, int B, int T, int NH, int NKV, int HS) {
    int ldq = NH * HS, ldk = NKV * HS, group = NH / NKV;
    float scale = 1.0f / sqrtf((float)HS);
    float *P = scratch, *dP = scratch + (size_t)T * T;
    memset(dk, 0, (size_t)B * T * ldk * sizeof(float));
    memset(dv, 0, (size_t)B * T * ldk * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t qo = (size_t)b * T * ldq + h * HS, ko = (size_t)b * T * ldk + (h / group) * HS;
            const float *l = lse + ((size_t)b * NH + h) * T;
            /* P from the saved lse: exp(s - lse) under the mask */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, scale, q + qo, ldq,
                        k + ko, ldk, 0.0f, P, T);
            for (int i = 0; i < T; i++) {
                float *p = P + (size_t)i * T;
                for (int j = 0; j <= i; j++) p[j] = expf(p[j] - l[i]);
                for (int j = i + 1; j < T; j++) p[j] = 0.0f;
            }
            /* dP = dO v^T; dv += P^T dO */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, 1.0f, dout + qo, ldq,
                        v + ko, ldk, 0.0f, dP, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, 1.0f, P, T, dout + qo,
                        ldq, 1.0f, dv + ko, ldk);
            /* dS = P (dP - rowsum(P dP)) * scale, in place over dP */
            for (int i = 0; i < T; i++) {
                float *p = P + (size_t)i * T, *d = dP + (size_t)i * T;
                float dot = 0.0f;
                for (int j = 0; j <= i; j++) dot += p[j] * d[j];
                for (int j = 0; j <= i; j++) d[j] = p[j] * (d[j] - dot) * scale;
                for (int j = i + 1; j < T; j++) d[j] = 0.0f;
            }
            /* dq = dS k; dk += dS^T q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, 1.0f, dP, T, k + ko,
                        ldk, 0.0f, dq + qo, ldq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, 1.0f, dP, T, q + qo, ldq,
                        1.0f, dk + ko, ldk);
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
