/* residual.c -- the residual add, forward and backward.
 *
 * The model folds the backward into its running d(residual) buffer (rmsnorm's
 * backward accumulates into it); the op is kept for the one-for-one CUDA mirror.
 */
#include "ops.h"

void cel_cpu_residual_forward(float *out /* (N,C) */, const float *a /* (N,C) */,
                              const float *b /* (N,C) */, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void cel_cpu_residual_backward(float *da /* += */, float *db /* += */, const float *dout,
                               size_t n) {
    for (size_t i = 0; i < n; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}
