/* ops.h -- the CUDA backend's layer ops, mirroring model/cpu/ops.h (internal to model/cuda/).
 *
 * One file per op under model/cuda/, each op next to its CPU twin's name and
 * argument order: outputs, saved-for-backward, inputs, weights, sizes. Shapes
 * as in cpu/ops.h (N = B*T rows, C hidden, NH/NKV heads, HS head size, I MLP
 * width, V vocab, R LoRA rank, OC/IC a linear's output/input width).
 *
 * Precision (as PyTorch autocast to bf16): every matrix product takes bf16
 * inputs and accumulates in fp32 (cuBLAS GemmEx, CUBLAS_COMPUTE_32F); base
 * weights are bf16; the residual stream, attention q/k/v, MLP gate/up,
 * log-sum-exps and every activation gradient are fp32; tensors that feed a
 * GEMM (normed activations, attention output, SwiGLU output, gradients passed
 * to a GEMM) are bf16. LoRA weights, gradients and AdamW moments are fp32,
 * with bf16 shadows of A and B made by the engine for the GEMMs.
 *
 * All pointers are device pointers unless named host_. Every op is enqueued on
 * `st` (cuBLAS ops on the handle's stream, which the engine sets to st) and
 * returns without synchronising; none allocates, and none fails: callers
 * validate sizes first. Launch errors surface at the engine's next check.
 * Weight gradients accumulate (+=); comments say whether activation gradients
 * are = or +=.
 */
#ifndef CEL_CUDA_OPS_H
#define CEL_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

typedef __nv_bfloat16 cel_bf16_t;

/* cast.cu: out[i] = (bf16)inp[i] (round to nearest even); and back. */
void cel_cuda_cast_f32_bf16(cel_bf16_t *out, const float *inp, size_t n, cudaStream_t st);
void cel_cuda_cast_bf16_f32(float *out, const cel_bf16_t *inp, size_t n, cudaStream_t st);
/* out[i] = scale * inp[i] in bf16 (a gradient scaled and cast for a GEMM). */
void cel_cuda_scale_cast_bf16(cel_bf16_t *out, const float *inp, float scale, size_t n,
                              cudaStream_t st);

/* matmul.cu: row-major GEMM on cuBLAS: C (M,N) = alpha * op(A) @ op(B) + beta * C,
 * A is (M,K) or, when ta, (K,M); B is (K,N) or, when tb, (N,K); leading
 * dimensions are the row strides. A, B bf16; C fp32 (c_bf16 NULL) or bf16
 * (c NULL, c_bf16 set). fp32 accumulation. */
void cel_cuda_gemm(cublasHandle_t h, int ta, int tb, int M, int N, int K, float alpha,
                   const cel_bf16_t *A, int lda, const cel_bf16_t *B, int ldb, float beta, float *c,
                   cel_bf16_t *c_bf16, int ldc);

/* The first status other than success a GEMM got from cuBLAS since the last
 * call (which clears it), its shape in what; CUBLAS_STATUS_SUCCESS when none.
 * The engine's check turns it into an error, as it does a pending CUDA error. */
cublasStatus_t cel_cuda_gemm_take_error(char *what, size_t len);

/* out = inp @ weight^T (+ beta * out): a bias-free nn.Linear. */
void cel_cuda_matmul_forward(cublasHandle_t h, float *out /* (N,OC) */,
                             const cel_bf16_t *inp /* (N,IC) */,
                             const cel_bf16_t *weight /* (OC,IC) */, int N, int IC, int OC,
                             float beta);
/* dinp = dout @ weight (+ beta_dinp * dinp) when dinp; dweight += dout^T @ inp when dweight. */
void cel_cuda_matmul_backward(cublasHandle_t h, float *dinp /* (N,IC) or NULL */, float beta_dinp,
                              float *dweight /* (OC,IC) += or NULL */,
                              const cel_bf16_t *dout /* (N,OC) */,
                              const cel_bf16_t *inp /* (N,IC) */,
                              const cel_bf16_t *weight /* (OC,IC) */, int N, int IC, int OC);

/* lora.cu: u = inp @ A^T (bf16, saved); out += scaling * u @ B^T. PEFT's LoRA
 * Linear with dropout 0; A16/B16 are bf16 shadows of the fp32 weights. */
void cel_cuda_lora_forward(cublasHandle_t h, float *out /* (N,OC) += */,
                           cel_bf16_t *u /* (N,R) saved */, const cel_bf16_t *inp /* (N,IC) */,
                           const cel_bf16_t *A16 /* (R,IC) */, const cel_bf16_t *B16 /* (OC,R) */,
                           float scaling, int N, int IC, int OC, int R);
/* du = scaling * dout @ B (bf16 scratch); dA += du^T @ inp; dB += scaling * dout^T @ u;
 * dinp += du @ A when dinp. dA, dB fp32. */
void cel_cuda_lora_backward(cublasHandle_t h, float *dinp /* (N,IC) += or NULL */,
                            float *dA /* (R,IC) += */, float *dB /* (OC,R) += */,
                            cel_bf16_t *du /* (N,R) scratch */, const cel_bf16_t *dout /* (N,OC) */,
                            const cel_bf16_t *inp /* (N,IC) */, const cel_bf16_t *u /* (N,R) */,
                            const cel_bf16_t *A16 /* (R,IC) */, const cel_bf16_t *B16 /* (OC,R) */,
                            float scaling, int N, int IC, int OC, int R);

/* embedding.cu: out[n] = wte[tokens[n]]. */
void cel_cuda_embedding_forward(float *out /* (N,C) */, const int32_t *tokens /* (N) */,
                                const cel_bf16_t *wte /* (V,C) */, int N, int C, cudaStream_t st);

/* rmsnorm.cu: out = weight * x / sqrt(mean(x^2) + eps), HF's LlamaRMSNorm
 * (normalised in fp32, multiplied by the weight, then rounded to bf16). */
void cel_cuda_rmsnorm_forward(cel_bf16_t *out /* (N,C) */, float *rstd /* (N) saved */,
                              const float *inp /* (N,C) */, const cel_bf16_t *weight /* (C) */,
                              int N, int C, float eps, cudaStream_t st);
/* dinp += (no weight gradient: the base is frozen). */
void cel_cuda_rmsnorm_backward(float *dinp /* (N,C) += */, const float *dout /* (N,C) */,
                               const float *inp /* (N,C) */, const cel_bf16_t *weight /* (C) */,
                               const float *rstd /* (N) */, int N, int C, cudaStream_t st);

/* rope.cu: rotates every head of row n by position pos[n] with the tables of
 * cel_cpu_rope_init (copied to the device); in place allowed. */
void cel_cuda_rope_forward(float *out /* (N,NHX,HS) */, const float *inp /* (N,NHX,HS) */,
                           const int32_t *pos /* (N) */, const float *cos_t /* (maxT,HS/2) */,
                           const float *sin_t /* (maxT,HS/2) */, int N, int NHX, int HS,
                           cudaStream_t st);
/* dinp = the inverse rotation of dout; in place allowed. */
void cel_cuda_rope_backward(float *dinp /* (N,NHX,HS) = */, const float *dout,
                            const int32_t *pos /* (N) */, const float *cos_t, const float *sin_t,
                            int N, int NHX, int HS, cudaStream_t st);

/* attention.cu: causal grouped-query attention, flash-style (tiled, online
 * softmax, no (T,T) matrix in memory); query head h reads kv head h/(NH/NKV).
 * Rows of sequence b at or past lens[b] (lens NULL: all T valid) are padding:
 * their outputs are unspecified but finite, and they never influence valid
 * rows (causality already guarantees that for right padding). HS <= 256, even. */
void cel_cuda_attention_forward(cel_bf16_t *out /* (B,T,NH*HS) */, float *lse /* (B,NH,T) saved */,
                                const float *q /* (B,T,NH*HS) */, const float *k /* (B,T,NKV*HS) */,
                                const float *v /* (B,T,NKV*HS) */, int B, int T, int NH, int NKV,
                                int HS, cudaStream_t st);
/* dq =, dk =, dv = (fp32); out is the forward's output (for rowsum(dout * out)). */
void cel_cuda_attention_backward(float *dq /* (B,T,NH*HS) = */, float *dk /* (B,T,NKV*HS) = */,
                                 float *dv /* (B,T,NKV*HS) = */,
                                 const float *dout /* (B,T,NH*HS) */,
                                 const cel_bf16_t *out /* (B,T,NH*HS) */,
                                 const float *lse /* (B,NH,T) */, const float *q, const float *k,
                                 const float *v, int B, int T, int NH, int NKV, int HS,
                                 cudaStream_t st);
/* attention_decode.cu: one new query row per sequence s at position pos[s],
 * attending to rows [0, pos[s]] of its cache slot slot[s]; the cache already
 * holds the new row's k and v. Cache of one layer: (n_slots, Tmax, NKV*HS). */
void cel_cuda_attention_decode(cel_bf16_t *out /* (S,NH*HS) */, const float *q /* (S,NH*HS) */,
                               const float *kc, const float *vc, const int32_t *slot /* (S) */,
                               const int32_t *pos /* (S) */, int S, int Tmax, int NH, int NKV,
                               int HS, cudaStream_t st);
/* Copies the S new rows' k, v (S,NKV*HS) into the cache at (slot[s], pos[s]). */
void cel_cuda_kv_append(float *kc, float *vc, const float *k, const float *v,
                        const int32_t *slot /* (S) */, const int32_t *pos /* (S) */, int S,
                        int Tmax, int KD, cudaStream_t st);

/* swiglu.cu: out = silu(gate) * up, rounded to bf16. */
void cel_cuda_swiglu_forward(cel_bf16_t *out /* (N,I) */, const float *gate /* (N,I) */,
                             const float *up /* (N,I) */, size_t n, cudaStream_t st);
/* dgate =, dup =. */
void cel_cuda_swiglu_backward(float *dgate /* (N,I) = */, float *dup /* (N,I) = */,
                              const float *dout /* (N,I) */, const float *gate, const float *up,
                              size_t n, cudaStream_t st);

/* residual.cu: out = a + b (out may alias a or b). */
void cel_cuda_residual_forward(float *out, const float *a, const float *b, size_t n,
                               cudaStream_t st);

/* crossentropy.cu: for n rows of logits (one chunk of the head's output, so
 * no more than chunk x V logits ever exist): logp[i] = log_softmax(logits[i])
 * [targets[i]]; when dlogits is not NULL also dlogits = dloss * w_i *
 * (softmax - onehot) in bf16 (weights NULL = all 1; rows of weight 0 get 0). */
void cel_cuda_crossentropy_forward_backward(float *logp /* (n) */,
                                            cel_bf16_t *dlogits /* (n,V) or NULL */,
                                            const float *logits /* (n,V) */,
                                            const int32_t *targets /* (n) */,
                                            const float *weights /* (n) or NULL */, float dloss,
                                            int n, int V, cudaStream_t st);

/* adamw.cu: one torch.optim.AdamW step over n fp32 parameters (step from 1). */
void cel_cuda_adamw_update(float *params, float *m, float *v, const float *grads, size_t n,
                           float lr, float beta1, float beta2, float eps, float weight_decay,
                           int step, cudaStream_t st);
/* *out (device double) += sum of g^2. */
void cel_cuda_adamw_sumsq(double *out, const float *g, size_t n, cudaStream_t st);
/* g *= scale. */
void cel_cuda_adamw_scale(float *g, size_t n, float scale, cudaStream_t st);

/* sample.cu: picks one token per row of logits. temperature 0 = argmax (lowest
 * id on ties); else x = logits / temperature, the kept set is the top_k
 * largest x (0 = all; ties broken by lower id), then of those the smallest
 * largest-first prefix whose softmax mass reaches top_p (at least one token;
 * 1 = all), and the token is the first, walking the kept set in token-id
 * order, where the cumulative exp(x - max) passes u[s] * (kept total). With
 * no filter that is model/sampler.c's choose() exactly; with a filter the
 * CPU walks largest-first, so the same u may pick another kept token. u is
 * drawn on the host from each sequence's own RNG stream, so a sequence
 * samples the same alone or in a batch. One block per row; V up to 2^20. */
void cel_cuda_sample(int32_t *out /* (S) */, const float *logits /* (S,V) */,
                     const float *u /* (S) */, float temperature, int top_k, float top_p, int S,
                     int V, cudaStream_t st);

#endif
