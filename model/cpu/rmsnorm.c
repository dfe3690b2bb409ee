/* rmsnorm.c -- RMSNorm as HF's LlamaRMSNorm, forward and backward.
 *
 * out = weight * (x * rstd), rstd = 1/sqrt(mean(x^2) + eps), all in f32 with
 * the mean accumulated in f32 like torch. Forward saves rstd per row; backward
 * reads inp, weight and rstd.
 */
#include "ops.h"

#include <math.h>

void cel_cpu_rmsnorm_forward(float *out /* (N,C) */, float *rstd /* (N) saved */,
                             const float *inp /* (N,C) */, const float *weight /* (C) */, int N,
                             int C, float eps) {
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / C + eps);
        for (int c = 0; c < C; c++) o[c] = weight[c] * (x[c] * r);
        rstd[n] = r;
    }
}

void cel_cpu_rmsnorm_backward(float *dinp /* (N,C) += */, float *dweight /* (C) += or NULL */,
                              const float *dout /* (N,C) */, const float *inp /* (N,C) */,
                              const float *weight /* (C) */, const float *rstd /* (N) */, int N,
                              int C) {
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        const float *d = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        float r = rstd[n];
        /* xhat = x r; dxhat = d w; dx = r (dxhat - xhat mean(dxhat xhat)) */
        float dot = 0.0f;
        for (int c = 0; c < C; c++) dot += d[c] * weight[c] * x[c] * r;
        dot /= C;
        for (int c = 0; c < C; c++) {
            float xhat = x[c] * r;
            dx[c] += r * (d[c] * weight[c] - xhat * dot);
            if (dweight) dweight[c] += d[c] * xhat;
        }
    }
}
