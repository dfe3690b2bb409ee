/* crossentropy.c -- token cross-entropy with per-token weights, forward and backward.
 *
 * The Tinker datum loss: -sum_n w[n] * log_softmax(logits[n])[target[n]], not
 * averaged (callers put any normalisation into the weights). Forward saves the
 * row log-sum-exp (in f32, from a double accumulation of f32 exps); backward
 * writes dlogits, possibly over the logits themselves to save a (N,V) buffer.
 * Rows are split across the pool's threads (par.c) and the exps vectorised
 * (simd.h); the loss is summed afterwards in row order.
 */
#include "ops.h"

#include <math.h>

#include "simd.h"

#define CE_GRAIN 4 /* rows per chunk, at least */
#define CE_BLOCK 256

typedef struct ce_job {
    float *logp, *lse, *dlogits;
    const float *logits, *weights;
    const int32_t *targets;
    float dloss;
    int V;
} ce_job_t;

/* max of x[0..n), four running maxima (the max does not depend on order) */
CEL_CPU_VEC static float row_max(const float *x, int n) {
    float m[4] = { x[0], x[0], x[0], x[0] };
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
    for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
    float a = m[0] > m[1] ? m[0] : m[1], b = m[2] > m[3] ? m[2] : m[3];
    return a > b ? a : b;
}

CEL_CPU_VEC static void fwd_rows(void *p, int n0, int n1) {
    const ce_job_t *j = p;
    int V = j->V;
    float e[CE_BLOCK];
    for (int n = n0; n < n1; n++) {
        const float *x = j->logits + (size_t)n * V;
        float mx = row_max(x, V);
        double s[4] = { 0, 0, 0, 0 };
        for (int b = 0; b < V; b += CE_BLOCK) {
            int m = V - b < CE_BLOCK ? V - b : CE_BLOCK;
            for (int i = 0; i < m; i++) e[i] = cel_cpu_expf(x[b + i] - mx);
            int i = 0;
            for (; i + 4 <= m; i += 4)
                for (int k = 0; k < 4; k++) s[k] += e[i + k];
            for (; i < m; i++) s[0] += e[i];
        }
        float l = mx + (float)log((s[0] + s[1]) + (s[2] + s[3]));
        j->lse[n] = l;
        j->logp[n] = x[j->targets[n]] - l;
    }
}

double cel_cpu_crossentropy_forward(float *logp /* (N) */, float *lse /* (N) saved */,
                                    const float *logits /* (N,V) */,
                                    const int32_t *targets /* (N) */,
                                    const float *weights /* (N) or NULL */, int N, int V) {
    ce_job_t j = { .logp = logp, .lse = lse, .logits = logits, .targets = targets, .V = V };
    cel_cpu_par_for(N, CE_GRAIN, fwd_rows, &j);
    double loss = 0.0;
    for (int n = 0; n < N; n++) {
        float w = weights ? weights[n] : 1.0f;
        if (w != 0.0f) loss -= (double)w * logp[n];
    }
    return loss;
}

CEL_CPU_VEC static void bwd_rows(void *p, int n0, int n1) {
    const ce_job_t *j = p;
    int V = j->V;
    for (int n = n0; n < n1; n++) {
        const float *x = j->logits + (size_t)n * V;
        float *d = j->dlogits + (size_t)n * V; /* may be x: element-wise */
        float w = (j->weights ? j->weights[n] : 1.0f) * j->dloss;
        if (w == 0.0f) {
            for (int i = 0; i < V; i++) d[i] = 0.0f;
            continue;
        }
        float l = j->lse[n];
        for (int i = 0; i < V; i++) d[i] = w * cel_cpu_expf(x[i] - l);
        d[j->targets[n]] -= w;
    }
}

void cel_cpu_crossentropy_backward(float *dlogits /* (N,V) = */, const float *logits /* (N,V) */,
                                   const float *lse /* (N) */, const int32_t *targets /* (N) */,
                                   const float *weights /* (N) or NULL */, float dloss, int N,
                                   int V) {
    ce_job_t j = { .dlogits = dlogits,
                   .logits = logits,
                   .lse = (float *)lse,
                   .targets = targets,
                   .weights = weights,
                   .dloss = dloss,
                   .V = V };
    cel_cpu_par_for(N, CE_GRAIN, bwd_rows, &j);
}
