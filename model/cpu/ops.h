/* ops.h -- the CPU backend's layer ops, forward above backward (internal to model/).
 *
 * One file per op under model/cpu/. Arguments run: outputs, saved-for-backward,
 * inputs, weights, sizes. Shapes in comments use B batch, T tokens, N = B*T
 * rows, C hidden, NH/NKV heads, HS head size, I MLP width, V vocab, R LoRA
 * rank, OC/IC a linear's output/input width. Weight gradients always
 * accumulate (+=); each comment says whether activation gradients are = or +=.
 * Plain loops and OpenBLAS sgemm; a `_ref` twin keeps the plain loop where a
 * faster variant exists. model/cuda/ops.h mirrors each op as
 * cel_cuda_<op>_* (GPU arguments: bf16 weights, a cuBLAS handle and a stream).
 * None of these allocate, take locks or fail: callers validate sizes first.
 */
#ifndef CEL_CPU_OPS_H
#define CEL_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

/* embedding.c: out[n] = wte[tokens[n]]. */
void cel_cpu_embedding_forward(float *out /* (N,C) */, const int32_t *tokens /* (N) */,
                               const float *wte /* (V,C) */, int N, int C);
/* dwte[tokens[n]] += dout[n]. */
void cel_cpu_embedding_backward(float *dwte /* (V,C) += */, const float *dout /* (N,C) */,
                                const int32_t *tokens /* (N) */, int N, int C);

/* rmsnorm.c: out = weight * x / sqrt(mean(x^2) + eps), as HF's LlamaRMSNorm. */
void cel_cpu_rmsnorm_forward(float *out /* (N,C) */, float *rstd /* (N) saved */,
                             const float *inp /* (N,C) */, const float *weight /* (C) */, int N,
                             int C, float eps);
/* dinp +=; dweight += (skipped when NULL). */
void cel_cpu_rmsnorm_backward(float *dinp /* (N,C) += */, float *dweight /* (C) += or NULL */,
                              const float *dout /* (N,C) */, const float *inp /* (N,C) */,
                              const float *weight /* (C) */, const float *rstd /* (N) */, int N,
                              int C);

/* matmul.c: out = inp @ weight^T (a bias-free nn.Linear), via cblas_sgemm. */
void cel_cpu_matmul_forward(float *out /* (N,OC) */, const float *inp /* (N,IC) */,
                            const float *weight /* (OC,IC) */, int N, int IC, int OC);
/* dinp += dout @ weight (skipped when NULL); dweight += dout^T @ inp (skipped when NULL). */
void cel_cpu_matmul_backward(float *dinp /* (N,IC) += or NULL */,
                             float *dweight /* (OC,IC) += or NULL */,
                             const float *dout /* (N,OC) */, const float *inp /* (N,IC) */,
                             const float *weight /* (OC,IC) */, int N, int IC, int OC);
void cel_cpu_matmul_forward_ref(float *out, const float *inp, const float *weight, int N, int IC,
                                int OC);
void cel_cpu_matmul_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp,
                                 const float *weight, int N, int IC, int OC);

/* lora.c: u = inp @ A^T; out += scaling * u @ B^T (PEFT's LoRA Linear, dropout 0). */
void cel_cpu_lora_forward(float *out /* (N,OC) += */, float *u /* (N,R) saved */,
                          const float *inp /* (N,IC) */, const float *A /* (R,IC) */,
                          const float *Bw /* (OC,R) */, float scaling, int N, int IC, int OC,
                          int R);
/* dA +=, dB +=, dinp += (skipped when NULL); du is (N,R) scratch. */
void cel_cpu_lora_backward(float *dinp /* (N,IC) += or NULL */, float *dA /* (R,IC) += */,
                           float *dB /* (OC,R) += */, float *du /* (N,R) scratch */,
                           const float *dout /* (N,OC) */, const float *inp /* (N,IC) */,
                           const float *u /* (N,R) */, const float *A /* (R,IC) */,
                           const float *Bw /* (OC,R) */, float scaling, int N, int IC, int OC,
                           int R);

/* rope.c: cos/sin tables for positions [0, maxT) and frequency i < HS/2, with
 * HF's inv_freq = theta^(-2i/HS) and the rope_scaling variants of config.h. */
void cel_cpu_rope_init(float *cos_t /* (maxT,HS/2) */, float *sin_t /* (maxT,HS/2) */, int maxT,
                       int HS, float theta, int kind, float factor, float low_freq, float high_freq,
                       int orig_max);
/* Rotates every head of row n by position pos[n] (HF rotate_half: the two
 * halves of a head pair up). out may equal inp. */
void cel_cpu_rope_forward(float *out /* (N,NHX,HS) */, const float *inp /* (N,NHX,HS) */,
                          const int32_t *pos /* (N) */, const float *cos_t, const float *sin_t,
                          int N, int NHX, int HS);
/* dinp = the inverse rotation of dout; dinp may equal dout. */
void cel_cpu_rope_backward(float *dinp /* (N,NHX,HS) = */, const float *dout /* (N,NHX,HS) */,
                           const int32_t *pos /* (N) */, const float *cos_t, const float *sin_t,
                           int N, int NHX, int HS);

/* attention.c: causal grouped-query attention, softmax(q k^T / sqrt(HS)) v;
 * query head h reads kv head h / (NH/NKV). Saves the row log-sum-exp only;
 * backward recomputes the probabilities one (b, h) at a time, so memory beyond
 * q, k, v is one (T,T) scratch pair. */
void cel_cpu_attention_forward(float *out /* (B,T,NH*HS) */, float *lse /* (B,NH,T) saved */,
                               float *scratch /* (T,T) */, const float *q /* (B,T,NH*HS) */,
                               const float *k /* (B,T,NKV*HS) */, const float *v /* (B,T,NKV*HS) */,
                               int B, int T, int NH, int NKV, int HS);
/* dq =, dk =, dv =. */
void cel_cpu_attention_backward(float *dq /* (B,T,NH*HS) = */, float *dk /* (B,T,NKV*HS) = */,
                                float *dv /* (B,T,NKV*HS) = */, float *scratch /* (2,T,T) */,
                                const float *dout /* (B,T,NH*HS) */,
                                const float *lse /* (B,NH,T) */, const float *q, const float *k,
                                const float *v, int B, int T, int NH, int NKV, int HS);
/* The same with per-sequence valid lengths (NULL: all T): rows t >= lens[b]
 * are padding no valid row attends to; their out/lse (forward) and dq
 * (backward) are 0 and they cost nothing. */
void cel_cpu_attention_forward_lens(float *out, float *lse, float *scratch, const float *q,
                                    const float *k, const float *v, const int32_t *lens, int B,
                                    int T, int NH, int NKV, int HS);
void cel_cpu_attention_backward_lens(float *dq, float *dk, float *dv, float *scratch,
                                     const float *dout, const float *lse, const float *q,
                                     const float *k, const float *v, const int32_t *lens, int B,
                                     int T, int NH, int NKV, int HS);
/* Inference over a KV cache: n new query rows at positions p0..p0+n-1 attend
 * to cache rows [0, p0+i]; the cache already holds the new rows' k and v. */
void cel_cpu_attention_cached(float *out /* (n,NH*HS) */, float *scratch /* (n,p0+n) */,
                              const float *q /* (n,NH*HS) */, const float *kc /* (>=p0+n,NKV*HS) */,
                              const float *vc /* (>=p0+n,NKV*HS) */, int n, int p0, int NH, int NKV,
                              int HS);

/* swiglu.c: out = silu(gate) * up. */
void cel_cpu_swiglu_forward(float *out /* (N,I) */, const float *gate /* (N,I) */,
                            const float *up /* (N,I) */, int N, int I);
/* dgate =, dup =. */
void cel_cpu_swiglu_backward(float *dgate /* (N,I) = */, float *dup /* (N,I) = */,
                             const float *dout /* (N,I) */, const float *gate /* (N,I) */,
                             const float *up /* (N,I) */, int N, int I);

/* residual.c: out = a + b. */
void cel_cpu_residual_forward(float *out /* (N,C) */, const float *a /* (N,C) */,
                              const float *b /* (N,C) */, size_t n);
/* da +=, db += (the model folds this into its running dresidual). */
void cel_cpu_residual_backward(float *da /* += */, float *db /* += */, const float *dout, size_t n);

/* crossentropy.c: logp[n] = log_softmax(logits[n])[targets[n]]; returns the
 * weighted loss -sum_n weights[n] * logp[n] (weights NULL = all 1). Rows with
 * weight 0 still get logp. */
double cel_cpu_crossentropy_forward(float *logp /* (N) */, float *lse /* (N) saved */,
                                    const float *logits /* (N,V) */,
                                    const int32_t *targets /* (N) */,
                                    const float *weights /* (N) or NULL */, int N, int V);
/* dlogits = dloss * w * (softmax - onehot); dlogits may equal logits. */
void cel_cpu_crossentropy_backward(float *dlogits /* (N,V) = */, const float *logits /* (N,V) */,
                                   const float *lse /* (N) */, const int32_t *targets /* (N) */,
                                   const float *weights /* (N) or NULL */, float dloss, int N,
                                   int V);

/* adamw.c: one torch.optim.AdamW step (decoupled decay, bias correction) over
 * n parameters; step counts from 1. */
void cel_cpu_adamw_update(float *params /* (n) */, float *m /* (n) */, float *v /* (n) */,
                          const float *grads /* (n) */, size_t n, float lr, float beta1,
                          float beta2, float eps, float weight_decay, int step);
/* The plain loop (the update gives its bits, 16 at a time with AVX-512F). */
void cel_cpu_adamw_update_ref(float *params, float *m, float *v, const float *grads, size_t n,
                              float lr, float beta1, float beta2, float eps, float weight_decay,
                              int step);
/* Sum of squares of g, accumulated in double (for the global grad norm). */
double cel_cpu_adamw_sumsq(const float *g, size_t n);
/* g *= scale (gradient clipping). */
void cel_cpu_adamw_scale(float *g, size_t n, float scale);

/* bf16.c: C (M,Nc) = A (M,K) @ B, or C += with accumulate, where B (K,Nc) is a
 * frozen weight packed once in bf16 and A is rounded to bf16 on the fly
 * (AVX512-BF16, fp32 accumulation; threads from par.c). pack: B[k][n] is
 * src[k*ld + n], or src[n*ld + k] with trans (W^T of an (Nc, K) weight). */
typedef struct cel_cpu_bf16w {
    uint16_t *p;
    int K, Nc, kp, np; /* K pairs, 32-column panels */
} cel_cpu_bf16w_t;
int cel_cpu_bf16_supported(void); /* the CPU has AVX512-BF16 */
int cel_cpu_bf16_pack(cel_cpu_bf16w_t *w, const float *src, int ld, int K, int Nc,
                      int trans); /* 0, or -1 out of memory */
void cel_cpu_bf16_free(cel_cpu_bf16w_t *w);
void cel_cpu_bf16_gemm(float *C, int ldc, const float *A, int lda, int M, const cel_cpu_bf16w_t *w,
                       int accumulate);

/* gemm.c: fp32 products with a weight on CPUs with AVX-512F (see gemm.c).
 * cel_cpu_gemm_use(M): whether an M-row product goes through it. The
 * products below return 1 when some block had to be computed by OpenBLAS
 * (no memory for the panels), else 0. */
int cel_cpu_gemm_supported(void);
int cel_cpu_gemm_use(int M);
/* C (M, N) = A (M, K) W^T, W (N, K) with row stride ldw. */
int cel_cpu_gemm_wt(float *C, int ldc, const float *A, int lda, const float *W, int ldw, int M,
                    int N, int K);
/* C (M, N) += A (M, K) B, B (K, N) with row stride ldb. */
int cel_cpu_gemm_acc(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                     int N, int K);
/* C (M, N) += A^T B, A stored (K, M) with row stride lda (a weight's gradient). */
int cel_cpu_gemm_acc_at(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                        int N, int K);
/* C (M, N) = A (M, K) W^T for a few rows (below cel_cpu_gemm_use's): OpenBLAS on one
 * thread per block of W's rows, the blocks over par.c's threads. */
void cel_cpu_gemm_wt_small(float *C, int ldc, const float *A, int lda, const float *W, int ldw,
                           int M, int N, int K);

/* par.c: runs fn(ctx, i0, i1) over [0, n) split across the pool's threads
 * (the caller's among them; see par.c), in chunks of at least grain items;
 * returns when every chunk is done. Runs fn(ctx, 0, n) on the calling
 * thread when n < 2 * grain, with one thread, or while another job runs. */
typedef void (*cel_cpu_par_fn)(void *ctx, int i0, int i1);
void cel_cpu_par_for(int n, int grain, cel_cpu_par_fn fn, void *ctx);
/* As cel_cpu_par_for, but only threads whose slot is below max_slots take
 * chunks (the caller always does), so fn may index per-slot buffers. */
void cel_cpu_par_for_slots(int n, int grain, cel_cpu_par_fn fn, void *ctx, int max_slots);
/* The calling thread's slot: 0 outside the pool's workers (the caller of a
 * job), 1.. for each worker, below CEL_CPU_PAR_MAX. */
#define CEL_CPU_PAR_MAX 64
int cel_cpu_par_slot(void);
/* Threads the pool uses, the caller included (n < 1 keeps the count). */
void cel_cpu_par_set_threads(int n);
int cel_cpu_par_threads(void);

#endif
