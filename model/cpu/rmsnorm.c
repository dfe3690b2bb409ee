/* rmsnorm.c -- RMSNorm as HF's LlamaRMSNorm, forward and backward.
 *
 * out = weight * (x * rstd), rstd = 1/sqrt(mean(x^2) + eps), all in f32 with
 * the mean accumulated in f32 like torch. Forward saves rstd per row; backward
 * reads inp, weight and rstd. Rows are split across the pool's threads (par.c).
 */
#include "ops.h"

#include <math.h>

#include "simd.h"

typedef struct rms_job {
    float *out, *rstd, *dinp, *dweight;
    const float *inp, *weight, *dout;
    int C;
    float eps;
} rms_job_t;

CEL_CPU_VEC static void fwd_rows(void *p, int n0, int n1) {
    const rms_job_t *j = p;
    int C = j->C;
    const float *restrict w = j->weight;
    for (int n = n0; n < n1; n++) {
        const float *restrict x = j->inp + (size_t)n * C;
        float *restrict o = j->out + (size_t)n * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / C + j->eps);
        for (int c = 0; c < C; c++) o[c] = w[c] * (x[c] * r);
        j->rstd[n] = r;
    }
}

void cel_cpu_rmsnorm_forward(float *out /* (N,C) */, float *rstd /* (N) saved */,
                             const float *inp /* (N,C) */, const float *weight /* (C) */, int N,
                             int C, float eps) {
    rms_job_t j = { .out = out, .rstd = rstd, .inp = inp, .weight = weight, .C = C, .eps = eps };
    cel_cpu_par_for(N, 1 + 8192 / (C > 0 ? C : 1), fwd_rows, &j);
}

/* dinp rows [n0, n1) (dweight is summed over rows: the caller's thread only). */
CEL_CPU_VEC static void bwd_rows(void *p, int n0, int n1) {
    const rms_job_t *j = p;
    int C = j->C;
    const float *restrict w = j->weight;
    float *restrict dw = j->dweight;
    for (int n = n0; n < n1; n++) {
        const float *restrict x = j->inp + (size_t)n * C;
        const float *restrict d = j->dout + (size_t)n * C;
        float *restrict dx = j->dinp + (size_t)n * C;
        float r = j->rstd[n];
        /* xhat = x r; dxhat = d w; dx = r (dxhat - xhat mean(dxhat xhat)) */
        float dot = 0.0f;
        for (int c = 0; c < C; c++) dot += d[c] * w[c] * x[c] * r;
        dot /= C;
        for (int c = 0; c < C; c++) dx[c] += r * (d[c] * w[c] - x[c] * r * dot);
        if (dw)
            for (int c = 0; c < C; c++) dw[c] += d[c] * (x[c] * r);
    }
}

void cel_cpu_rmsnorm_backward(float *dinp /* (N,C) += */, float *dweight /* (C) += or NULL */,
                              const float *dout /* (N,C) */, const float *inp /* (N,C) */,
                              const float *weight /* (C) */, const float *rstd /* (N) */, int N,
                              int C) {
    rms_job_t j = { .dinp = dinp,
                    .dweight = dweight,
                    .dout = dout,
                    .inp = inp,
                    .weight = weight,
                    .rstd = (float *)rstd,
                    .C = C };
    if (dweight) /* one thread: dweight's sum keeps the row order */
        bwd_rows(&j, 0, N);
    else cel_cpu_par_for(N, 1 + 8192 / (C > 0 ? C : 1), bwd_rows, &j);
}
