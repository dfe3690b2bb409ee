/* adamw.c -- the AdamW update, as torch.optim.AdamW's single-tensor path (torch 1.13).
 *
 * p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). The scalars are formed
 * in double and applied in f32, as torch does with Python floats. Also the
 * helpers for the global gradient norm and clipping.
 */
#include "ops.h"

#include <math.h>

void cel_cpu_adamw_update(float *params /* (n) */, float *m /* (n) */, float *v /* (n) */,
                          const float *grads /* (n) */, size_t n, float lr, float beta1,
                          float beta2, float eps, float weight_decay, int step) {
    float decay = (float)(1.0 - (double)lr * weight_decay);
    float omb1 = (float)(1.0 - beta1), omb2 = (float)(1.0 - beta2);
    double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    float step_size = (float)(lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        float p = params[i] * decay;
        float mi = m[i] * beta1 + g * omb1;
        float vi = v[i] * beta2 + omb2 * (g * g);
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        params[i] = p - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

double cel_cpu_adamw_sumsq(const float *g, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return s;
}

void cel_cpu_adamw_scale(float *g, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) g[i] *= scale;
}
