/* model.h -- celeriac's model engine: the public header.
 *
 * A Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU, tied
 * or untied head) loaded from a Hugging Face folder, with LoRA adapters in
 * PEFT's layout, token cross-entropy with per-token weights (Tinker's datum:
 * input tokens, target tokens, weights), gradient accumulation, AdamW as
 * torch.optim.AdamW, scoring, and sampling over a KV cache. fp32 on the CPU
 * (OpenBLAS). Pure compute plus file I/O: no network, no Celery.
 *
 * Threads: a model, adapter or sampler is used by one thread at a time (the
 * model owns the activation workspace its forward passes write). OpenBLAS
 * uses cel_model_set_threads() threads inside each call. Token ids come from
 * the caller (model/tokenizer.h turns text into ids).
 */
#ifndef CEL_MODEL_H
#define CEL_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "../common/err.h"

/* Limits checked before anything is sized from a request. */
#define CEL_MODEL_MAX_SEQ          32768     /* tokens in one sequence (and rope table rows) */
#define CEL_MODEL_MAX_BATCH_TOKENS (1 << 22) /* B*T of one forward */
#define CEL_LORA_MAX_RANK          1024
#define CEL_SAMPLE_MAX_SEQS        1024

typedef struct cel_model cel_model_t;
typedef struct cel_lora cel_lora_t;
typedef struct cel_sampler cel_sampler_t;

/* ---- base model ---- */

/* Loads dir/config.json and dir/model.safetensors (or the shards of
 * dir/model.safetensors.index.json); F32, F16 and BF16 become f32. Every
 * tensor's presence and shape is checked. OUT: *out (cel_model_free). */
int cel_model_load(const char *dir, cel_model_t **out, cel_err_t *err);

/* A fresh model with the shape of config_json (text of a config.json),
 * initialised as HF's LlamaPreTrainedModel (normal(0, 0.02) weights, norms 1)
 * from seed. For training a base model from scratch. */
int cel_model_init(const char *config_json, uint64_t seed, cel_model_t **out, cel_err_t *err);

/* Writes dir/config.json and dir/model.safetensors (F32), each atomically.
 * dir must exist. */
int cel_model_save(const cel_model_t *m, const char *dir, cel_err_t *err);

/* Frees the model and its workspace; NULL is a no-op. Adapters and samplers
 * made from it must be freed first. */
void cel_model_free(cel_model_t *m);

int cel_model_vocab_size(const cel_model_t *m);
int cel_model_max_seq(const cel_model_t *m); /* min(max_position_embeddings, MAX_SEQ) */
int cel_model_bos(const cel_model_t *m);     /* -1 when config.json names none */
/* Copies up to max eos ids into ids; returns how many config.json names. */
int cel_model_eos(const cel_model_t *m, int32_t *ids, int max);
uint64_t cel_model_param_count(const cel_model_t *m);

/* Sets the number of threads OpenBLAS uses (process-wide); n <= 0 keeps it. */
void cel_model_set_threads(int n);

/* Compute precision of the CPU passes: "fp32" (the default) or "bf16" (CPUs
 * with AVX512-BF16): the linear layers' and the head's products with the
 * frozen base weights -- x W^T forward and dout W backward -- take bf16
 * inputs with fp32 accumulation, as the GPU backend's do; adapters, norms,
 * attention, softmax and losses stay fp32. Packs a bf16 copy of the weights
 * (half the model's fp32 size, twice: one per product). Scoring, forward and
 * LoRA training only; the sampler stays fp32. Errors: CEL_ENOTFOUND the CPU
 * lacks AVX512-BF16; CEL_ESTATE on a GPU or with full training enabled;
 * CEL_EINVAL another spec; CEL_ENOMEM. */
int cel_model_set_precision(cel_model_t *m, const char *spec, cel_err_t *err);

/* ---- devices ---- */

/* Moves the model's passes to a device: "cpu", "cuda", "cuda:N" or "auto"
 * (the first CUDA device when one is visible, else the CPU). CUDA lives in
 * bin/libceleriac-cuda.so (or $CELERIAC_CUDA_LIB), loaded here and only here.
 * On a GPU the base weights are bf16 and the matrix products bf16 with fp32
 * accumulation; adapters stay fp32. OUT: chosen (may be NULL) gets a line
 * naming the device, e.g. "cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)" or
 * "cpu (auto: no CUDA device: ...)". Errors: CEL_ENOTFOUND "cuda" without a
 * usable GPU or backend; CEL_EINVAL a bad spec; CEL_ESTATE full-parameter
 * training enabled (CPU only). Call before making adapters or samplers. */
int cel_model_set_device(cel_model_t *m, const char *spec, char *chosen, size_t len,
                         cel_err_t *err);

/* 1 when the model runs on a GPU. */
int cel_model_on_gpu(const cel_model_t *m);

/* GPU memory adapters may hold (weights, grads, moments) before the least
 * recently used ones are moved back to host memory; 0 = no limit. An evicted
 * adapter comes back on its next use, unchanged. */
void cel_model_set_gpu_budget(cel_model_t *m, size_t bytes);

typedef struct cel_device_stats {
    size_t mem_used, mem_peak; /* GPU bytes of this model (0 on the CPU) */
    size_t mem_total;          /* the GPU's memory (0 on the CPU) */
    int resident;              /* adapters on the GPU now */
    long evictions;
} cel_device_stats_t;
void cel_model_device_stats(const cel_model_t *m, cel_device_stats_t *out);

/* ---- batches, loss, gradients ---- */

/* B right-padded sequences of T slots. Row b is valid in [0, lens[b]); padded
 * slots are ignored (their token ids are not read). Loss is the Tinker
 * cross-entropy -sum over valid slots of weights * log p(targets | tokens[<=t]),
 * not averaged. All arrays are borrowed for the call. */
typedef struct cel_batch {
    int B, T;
    const int32_t *tokens;  /* (B,T) input ids */
    const int32_t *targets; /* (B,T) target ids, or NULL (no loss) */
    const float *weights;   /* (B,T) loss weights, or NULL for 1 on every valid slot */
    const int32_t *lens;    /* (B) valid lengths in [1, T], or NULL for all T */
} cel_batch_t;

/* Runs the model (with lora unless NULL) over batch. Any OUT may be NULL:
 * logits (B,T,V), logprobs (B,T) of the targets (0 in padded slots), loss.
 * logprobs and loss need targets. Errors: CEL_EINVAL bad shape, id out of
 * range, lora of another model; CEL_ELIMIT over a limit; CEL_ENOMEM. */
int cel_model_forward(cel_model_t *m, const cel_lora_t *lora, const cel_batch_t *batch,
                      float *logits, float *logprobs, double *loss, cel_err_t *err);

/* Forward and backward of the batch loss. With lora: adds the LoRA gradients
 * into lora (base frozen). With lora NULL: adds gradients of every base weight
 * (needs cel_model_train_full first). Gradients accumulate across calls until
 * a step. OUT (may be NULL): logprobs (B,T), loss. */
int cel_model_forward_backward(cel_model_t *m, cel_lora_t *lora, const cel_batch_t *batch,
                               float *logprobs, double *loss, cel_err_t *err);

/* AdamW hyper-parameters, as torch.optim.AdamW's arguments; grad_clip > 0
 * scales gradients to that global L2 norm first (clip_grad_norm_). */
typedef struct cel_adamw {
    float lr, beta1, beta2, eps, weight_decay, grad_clip;
} cel_adamw_t;

/* torch.optim.AdamW's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0.01. */
cel_adamw_t cel_model_adamw_defaults(void);

/* Enables full-parameter training: allocates gradients and AdamW moments for
 * every base weight (3x the model's memory). Idempotent. */
int cel_model_train_full(cel_model_t *m, cel_err_t *err);

/* One AdamW step over every base weight with the accumulated gradients, then
 * zeroes them. OUT: *grad_norm (may be NULL), the global L2 norm before
 * clipping. CEL_ESTATE without cel_model_train_full. */
int cel_model_step(cel_model_t *m, const cel_adamw_t *opt, float *grad_norm, cel_err_t *err);
int cel_model_step_count(const cel_model_t *m);

/* One job of a packed pass: an adapter (NULL: the base model) and its batch. */
typedef struct cel_model_job {
    cel_lora_t *lora;
    cel_batch_t batch; /* needs targets */
    float *logprobs;   /* OUT (B,T) or NULL */
    double loss;       /* OUT: the job's own loss, as if it ran alone */
    int rc;            /* OUT: CEL_OK, or why this job was refused */
    cel_err_t err;     /* OUT */
} cel_model_job_t;

/* Runs n jobs as one batch: their sequences are packed (right-padded to the
 * longest), the base model's matrix products run once over all rows, and each
 * job's rows apply its own adapter (a segmented LoRA). With backward, each
 * adapter accumulates exactly the gradients its own batch gives (an adapter in
 * two jobs gets both). Results equal running the jobs one at a time up to
 * floating-point summation order. A job that fails validation gets its own rc
 * and the others still run. A base-model job in a backward pass needs full
 * training and must be the only job. Returns CEL_OK, or an error that failed
 * the whole pass (every job's rc is then that error). */
int cel_model_run_jobs(cel_model_t *m, cel_model_job_t *jobs, int n, int backward, cel_err_t *err);

/* ---- scoring ---- */

typedef struct cel_score {
    int n;               /* scored tokens: n_tokens - 1 */
    double logprob;      /* sum of log p(tokens[i] | tokens[<i]), i >= 1 */
    double mean_logprob; /* logprob / n */
    double perplexity;   /* exp(-mean_logprob) */
} cel_score_t;

/* Scores tokens[0..n): every token after the first given its prefix (put bos
 * first to score the first word). OUT: token_logprobs (n-1 floats, may be
 * NULL), *out. n must be in [2, max_seq]. */
int cel_model_score(cel_model_t *m, const cel_lora_t *lora, const int32_t *tokens, int n,
                    float *token_logprobs, cel_score_t *out, cel_err_t *err);

/* ---- LoRA adapters ---- */

enum {
    CEL_LORA_Q = 1 << 0,
    CEL_LORA_K = 1 << 1,
    CEL_LORA_V = 1 << 2,
    CEL_LORA_O = 1 << 3,
    CEL_LORA_GATE = 1 << 4,
    CEL_LORA_UP = 1 << 5,
    CEL_LORA_DOWN = 1 << 6,
    CEL_LORA_ALL = 0x7f,
};

typedef struct cel_lora_config {
    int rank;         /* r, in [1, CEL_LORA_MAX_RANK] */
    float alpha;      /* lora_alpha; scaling = alpha / r (alpha / sqrt(r) with use_rslora) */
    unsigned targets; /* CEL_LORA_* bits, not 0 */
    uint64_t seed;    /* A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
    int use_rslora;
} cel_lora_config_t;

/* Parses "q_proj,v_proj" (or "all") into CEL_LORA_* bits. */
int cel_lora_parse_targets(const char *csv, unsigned *out, cel_err_t *err);

/* A new adapter for m, initialised from cfg->seed. */
int cel_lora_new(const cel_model_t *m, const cel_lora_config_t *cfg, cel_lora_t **out,
                 cel_err_t *err);

/* Loads dir/adapter_config.json + dir/adapter_model.safetensors (PEFT's
 * layout) for m, and dir/optimizer.safetensors (AdamW moments, step, metadata)
 * when present. Refuses PEFT features the engine lacks (DoRA, rank/alpha
 * patterns, biases, fan_in_fan_out, other modules). */
int cel_lora_load(const cel_model_t *m, const char *dir, cel_lora_t **out, cel_err_t *err);

/* Writes dir/adapter_model.safetensors, dir/adapter_config.json (as PEFT
 * writes it, naming base_model) and dir/optimizer.safetensors (exp_avg,
 * exp_avg_sq, step, plus the n_meta key/value string pairs in meta), each
 * atomically (temp, fsync, rename). dir must exist. */
int cel_lora_save(cel_lora_t *l, const char *dir, const char *base_model, const char *const *meta,
                  int n_meta, cel_err_t *err);

/* cel_lora_save with flags. CEL_LORA_SAVE_NOSYNC writes each file straight to
 * its name, not synced: for a fresh directory that nothing names yet, whose
 * writer syncs the files and the directory itself before publishing it (the
 * adapter store: one sync pass per checkpoint instead of one per file). */
#define CEL_LORA_SAVE_NOSYNC 1
int cel_lora_save_ex(cel_lora_t *l, const char *dir, const char *base_model,
                     const char *const *meta, int n_meta, int flags, cel_err_t *err);

/* A checkpoint's files held in memory (the adapter store keeps them in one file
 * of its own, executor/adapters_file.c): up to CEL_LORA_IMAGE_MAX named files.
 * A file read back is its bytes (data, len); a file to write may instead be
 * parts (iov, niov: its header in data, then the adapter's own blocks,
 * borrowed: valid until the adapter changes), so a save copies nothing. */
#define CEL_LORA_IMAGE_MAX  8
#define CEL_LORA_IMAGE_NAME 32
typedef struct cel_lora_image {
    int n;
    struct {
        char name[CEL_LORA_IMAGE_NAME];
        unsigned char *data; /* malloc'd: the file, or with iov the head of it */
        size_t len;          /* the file's length */
        struct iovec *iov;   /* malloc'd, or NULL: the file is data */
        int niov;
    } f[CEL_LORA_IMAGE_MAX];
} cel_lora_image_t;

/* Adds the file name with data (taken: freed here when it cannot be added). */
int cel_lora_image_add(cel_lora_image_t *img, const char *name, unsigned char *data, size_t len,
                       cel_err_t *err);
/* The bytes of the file name in img (*len set), or NULL (also for a file of parts). */
const unsigned char *cel_lora_image_get(const cel_lora_image_t *img, const char *name,
                                        size_t *len);
void cel_lora_image_free(cel_lora_image_t *img);

/* The files cel_lora_save writes (adapter_model.safetensors, adapter_config.json,
 * optimizer.safetensors; and with with_grads gradients.safetensors as
 * cel_lora_save_grads writes it), added to img instead of written. */
int cel_lora_save_image(cel_lora_t *l, const char *base_model, const char *const *meta,
                        int n_meta, int with_grads, cel_lora_image_t *img, cel_err_t *err);
/* cel_lora_load and cel_lora_load_grads, from img's files. */
int cel_lora_load_image(const cel_model_t *m, const cel_lora_image_t *img, cel_lora_t **out,
                        cel_err_t *err);
int cel_lora_load_grads_image(cel_lora_t *l, const cel_lora_image_t *img, cel_err_t *err);

/* A metadata string stored with the optimizer state (after load or save), or NULL. */
const char *cel_lora_meta(const cel_lora_t *l, const char *key);

void cel_lora_free(cel_lora_t *l);

/* One AdamW step over the adapter's weights with its accumulated gradients,
 * then zeroes them. OUT: *grad_norm (may be NULL) before clipping. A gradient
 * norm that is NaN or infinite applies nothing: CEL_EINVAL, the weights, moments,
 * step and gradients as they were (cel_model_step alike). */
int cel_lora_step(cel_lora_t *l, const cel_adamw_t *opt, float *grad_norm, cel_err_t *err);

/* Drops accumulated gradients without stepping. */
void cel_lora_zero_grad(cel_lora_t *l);

/* The checkpoint's step log (issue 17). With keep on, each CPU step keeps a
 * copy of the gradient it applied (after clipping) and its hyper-parameters;
 * cel_lora_applied_image adds them to img as applied.safetensors and step.json
 * (CEL_ENOTFOUND when the adapter's last change was not such a step: a device
 * step, a load); cel_lora_pending_image adds the accumulated gradient as the
 * same applied.safetensors (what the next step applies unless it clips), to
 * be written ahead. cel_lora_replay_image applies such a pair to an adapter
 * at the step before it (not on a device) as the step did: the same bits. */
void cel_lora_keep_applied(cel_lora_t *l);
int cel_lora_applied_image(cel_lora_t *l, cel_lora_image_t *img, cel_err_t *err);
int cel_lora_pending_image(cel_lora_t *l, cel_lora_image_t *img, cel_err_t *err);
int cel_lora_replay_image(cel_lora_t *l, const cel_lora_image_t *img, cel_err_t *err);

/* Many workers (issue 15): a warm shutdown hands accumulated gradients to the
 * next holder through the checkpoint. save writes dir/gradients.safetensors
 * (tensors named as the weights + ".grad", atomically; flags as cel_lora_save_ex); load reads it into the
 * gradient block of an adapter just loaded (not yet on a device: CEL_ESTATE),
 * CEL_ENOTFOUND when the file is absent. */
int cel_lora_save_grads(cel_lora_t *l, const char *dir, int flags, cel_err_t *err);
int cel_lora_load_grads(cel_lora_t *l, const char *dir, cel_err_t *err);

int cel_lora_step_count(const cel_lora_t *l);
int cel_lora_rank(const cel_lora_t *l);
float cel_lora_alpha(const cel_lora_t *l);
unsigned cel_lora_targets(const cel_lora_t *l);

/* ---- sampling ---- */

typedef struct cel_sample_params {
    int max_tokens;          /* new tokens per sequence, >= 1 */
    float temperature;       /* 0 = greedy (argmax) */
    int top_k;               /* 0 = off */
    float top_p;             /* in (0, 1]; 1 = off */
    uint64_t seed;           /* same seed, same prompts: same tokens */
    const int32_t *stop_ids; /* a sequence ends after sampling one of these; */
    int n_stop_ids;          /* NULL/0: config.json's eos ids */
} cel_sample_params_t;

/* Prefills n_seqs prompts (prompts[i] has lens[i] >= 1 ids) into a KV cache
 * sized for prompt + max_tokens. Sequence i draws from its own RNG stream
 * derived from (seed, i), so a prompt samples the same alone or in a batch. */
int cel_sampler_new(cel_model_t *m, const cel_lora_t *lora, int n_seqs,
                    const int32_t *const *prompts, const int32_t *lens,
                    const cel_sample_params_t *p, cel_sampler_t **out, cel_err_t *err);

/* Samples the next token of every live sequence, all in one batched step.
 * OUT: tokens[n_seqs], -1 for sequences already finished. A sequence finishes
 * on a stop id (which is returned), at max_tokens, or at the model's max_seq.
 * Returns the number still live (0: all done) or a negative CEL_E*. The
 * caller decodes as it goes and calls cel_sampler_stop on a stop string. */
int cel_sampler_step(cel_sampler_t *s, int32_t *tokens, cel_err_t *err);

/* Ends sequence seq now (a stop string matched, or the client left). */
void cel_sampler_stop(cel_sampler_t *s, int seq);

/* Why sequence seq ended: 0 live, 1 stop id, 2 max_tokens/length, 3 stopped by caller. */
int cel_sampler_status(const cel_sampler_t *s, int seq);

/* Cuts a sample's decoded text at the earliest occurrence of any of n_stops stop
 * strings (stops[i] of stop_lens[i] bytes; stop_lens NULL: C strings; an empty
 * one never matches) in text (*len bytes).
 * Returns 1 when a stop string occurs: *len becomes the offset of the first
 * one and a NUL is written there; 0 when none does (text untouched). Callers
 * decode a sequence's tokens after every step and cut the whole text again, so
 * a stop string split across tokens is found as soon as it is complete. */
int cel_sampler_cut_stops(char *text, size_t *len, const char *const *stops,
                          const size_t *stop_lens, int n_stops);

void cel_sampler_free(cel_sampler_t *s);

#endif
