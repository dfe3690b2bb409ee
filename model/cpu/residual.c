/* residual.c -- the residual add, forward and backward.
 *
 * The model folds the backward into its running d(residual) buffer (rmsnorm's
 * backward accumulates into it); the op is kept for the one-for-one CUDA mirror.
 * The forward is split across the pool's threads (par.c).
 */
#include "ops.h"

#include "simd.h"

typedef struct res_job {
    float *out;
    const float *a, *b;
} res_job_t;

CEL_CPU_VEC static void fwd_range(void *p, int i0, int i1) {
    const res_job_t *j = p;
    float *restrict out = j->out;
    const float *restrict a = j->a, *restrict b = j->b;
    for (int i = i0; i < i1; i++) out[i] = a[i] + b[i];
}

void cel_cpu_residual_forward(float *out /* (N,C) */, const float *a /* (N,C) */,
                              const float *b /* (N,C) */, size_t n) {
    const size_t slice = (size_t)1 << 30; /* par_for counts in int */
    for (size_t o = 0; o < n; o += slice) {
        res_job_t j = { out + o, a + o, b + o };
        cel_cpu_par_for((int)(n - o < slice ? n - o : slice), 32768, fwd_range, &j);
    }
}

void cel_cpu_residual_backward(float *da /* += */, float *db /* += */, const float *dout,
                               size_t n) {
    for (size_t i = 0; i < n; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}
