/* crossentropy.c -- token cross-entropy with per-token weights, forward and backward.
 *
 * The Tinker datum loss: -sum_n w[n] * log_softmax(logits[n])[target[n]], not
 * averaged (callers put any normalisation into the weights). Forward saves the
 * row log-sum-exp (in f32, from a double accumulation); backward writes
 * dlogits, possibly over the logits themselves to save a (N,V) buffer.
 */
#include "ops.h"

#include <math.h>

double cel_cpu_crossentropy_forward(float *logp /* (N) */, float *lse /* (N) saved */,
                                    const float *logits /* (N,V) */,
                                    const int32_t *targets /* (N) */,
                                    const float *weights /* (N) or NULL */, int N, int V) {
    double loss = 0.0;
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float mx = x[0];
        for (int i = 1; i < V; i++) mx = x[i] > mx ? x[i] : mx;
        double s = 0.0;
        for (int i = 0; i < V; i++) s += exp((double)(x[i] - mx));
        float l = mx + (float)log(s);
        lse[n] = l;
        logp[n] = x[targets[n]] - l;
        float w = weights ? weights[n] : 1.0f;
        if (w != 0.0f) loss -= (double)w * logp[n];
    }
    return loss;
}

void cel_cpu_crossentropy_backward(float *dlogits /* (N,V) = */, const float *logits /* (N,V) */,
                                   const float *lse /* (N) */, const int32_t *targets /* (N) */,
                                   const float *weights /* (N) or NULL */, float dloss, int N,
                                   int V) {
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        float w = (weights ? weights[n] : 1.0f) * dloss;
        if (w == 0.0f) {
            for (int i = 0; i < V; i++) d[i] = 0.0f;
            continue;
        }
        float l = lse[n];
        for (int i = 0; i < V; i++) d[i] = w * expf(x[i] - l);
        d[targets[n]] -= w;
    }
}
