/* crossentropy.cu -- token cross-entropy with per-token weights on the GPU, fused fwd+bwd.
 *
 * One block per row of logits: max, then sum of exp(x - max), both in fp32,
 * give the log-sum-exp; logp = x[target] - lse. With dlogits the same block
 * writes dloss * w * (softmax - onehot) in bf16 (it feeds the head's backward
 * GEMMs), zeros for rows of weight 0. The loss sum -sum w logp is left to the
 * caller (it has logp and the weights). Mirrors model/cpu/crossentropy.c, whose
 * row sum runs in double; the targets are validated by the caller.
 */
#include "ops.h"

#include "common.h"

/* CE rows are long (V up to ~256k), so a wider block than the other row ops. */
#define CE_THREADS 512

static __global__ void crossentropy_kernel(float *logp, cel_bf16_t *dlogits, const float *logits,
                                           const int32_t *targets, const float *weights,
                                           float dloss, int V) {
    size_t row = blockIdx.x;
    const float *x = logits + row * V;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
    mx = block_max(mx);
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(x[i] - mx);
    s = block_sum(s);
    float lse = mx + logf(s);
    int t = targets[row];
    if (threadIdx.x == 0) logp[row] = x[t] - lse;
    if (!dlogits) return;
    cel_bf16_t *d = dlogits + row * V;
    float w = (weights ? weights[row] : 1.0f) * dloss;
    if (w == 0.0f) {
        for (int i = threadIdx.x; i < V; i += blockDim.x) d[i] = __float2bfloat16_rn(0.0f);
        return;
    }
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float g = w * expf(x[i] - lse);
        if (i == t) g -= w;
        d[i] = __float2bfloat16_rn(g);
    }
}

/* logp (n) = log_softmax(logits)[targets]; dlogits (n,V) = bf16(dloss * w * (softmax -
 * onehot)) when not NULL (weights NULL = all 1; weight-0 rows get 0). dlogits
 * must not overlap logits. */
void cel_cuda_crossentropy_forward_backward(float *logp /* (n) */,
                                            cel_bf16_t *dlogits /* (n,V) or NULL */,
                                            const float *logits /* (n,V) */,
                                            const int32_t *targets /* (n) */,
                                            const float *weights /* (n) or NULL */, float dloss,
                                            int n, int V, cudaStream_t st) {
    if (n <= 0 || V <= 0) return;
    crossentropy_kernel<<<n, CE_THREADS, 0, st>>>(logp, dlogits, logits, targets, weights, dloss,
                                                  V);
}
