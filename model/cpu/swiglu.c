/* swiglu.c -- the SwiGLU gate of the Llama MLP, silu(gate) * up, forward and backward.
 *
 * The three projections around it (gate, up, down) are matmul/lora ops run by
 * the model, so LoRA can attach to each. Backward reads gate and up. The
 * sigmoid uses simd.h's vectorisable expf; elements are split across the
 * pool's threads (par.c).
 */
#include "ops.h"

#include "simd.h"

#define SWIGLU_GRAIN 16384 /* elements per chunk, at least */

typedef struct swiglu_job {
    float *out, *dgate, *dup;
    const float *gate, *up, *dout;
} swiglu_job_t;

CEL_CPU_VEC static void fwd_range(void *p, int i0, int i1) {
    const swiglu_job_t *j = p;
    float *restrict out = j->out;
    const float *restrict gate = j->gate, *restrict up = j->up;
    for (int i = i0; i < i1; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + cel_cpu_expf(-g)) * up[i];
    }
}

CEL_CPU_VEC static void bwd_range(void *p, int i0, int i1) {
    const swiglu_job_t *j = p;
    float *restrict dgate = j->dgate, *restrict dup = j->dup;
    const float *restrict gate = j->gate, *restrict up = j->up, *restrict dout = j->dout;
    for (int i = i0; i < i1; i++) {
        float g = gate[i], s = 1.0f / (1.0f + cel_cpu_expf(-g)), d = dout[i];
        dup[i] = d * g * s;
        dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

/* Element counts fit an int: callers cap a pass at CEL_MODEL_MAX_BATCH_TOKENS
 * rows, so runs of more than INT_MAX elements go in slices. */
static void run(cel_cpu_par_fn fn, swiglu_job_t *j, size_t n) {
    const size_t slice = (size_t)1 << 30;
    for (size_t o = 0; o < n; o += slice) {
        swiglu_job_t s = *j;
        s.out = j->out ? j->out + o : NULL;
        s.dgate = j->dgate ? j->dgate + o : NULL;
        s.dup = j->dup ? j->dup + o : NULL;
        s.gate = j->gate + o;
        s.up = j->up + o;
        s.dout = j->dout ? j->dout + o : NULL;
        cel_cpu_par_for((int)(n - o < slice ? n - o : slice), SWIGLU_GRAIN, fn, &s);
    }
}

void cel_cpu_swiglu_forward(float *out /* (N,I) */, const float *gate /* (N,I) */,
                            const float *up /* (N,I) */, int N, int I) {
    swiglu_job_t j = { .out = out, .gate = gate, .up = up };
    run(fwd_range, &j, (size_t)N * I);
}

void cel_cpu_swiglu_backward(float *dgate /* (N,I) = */, float *dup /* (N,I) = */,
                             const float *dout /* (N,I) */, const float *gate /* (N,I) */,
                             const float *up /* (N,I) */, int N, int I) {
    swiglu_job_t j = { .dgate = dgate, .dup = dup, .dout = dout, .gate = gate, .up = up };
    run(bwd_range, &j, (size_t)N * I);
}
