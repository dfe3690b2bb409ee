/* swiglu.c -- the SwiGLU gate of the Llama MLP, silu(gate) * up, forward and backward.
 *
 * The three projections around it (gate, up, down) are matmul/lora ops run by
 * the model, so LoRA can attach to each. Backward reads gate and up.
 */
#include "ops.h"

#include <math.h>

void cel_cpu_swiglu_forward(float *out /* (N,I) */, const float *gate /* (N,I) */,
                            const float *up /* (N,I) */, int N, int I) {
    size_t n = (size_t)N * I;
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void cel_cpu_swiglu_backward(float *dgate /* (N,I) = */, float *dup /* (N,I) = */,
                             const float *dout /* (N,I) */, const float *gate /* (N,I) */,
                             const float *up /* (N,I) */, int N, int I) {
    size_t n = (size_t)N * I;
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], s = 1.0f / (1.0f + expf(-g)), d = dout[i];
        dup[i] = d * g * s;
        dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
    }
}
