/* sampler.c -- batched sampling over a KV cache: greedy, temperature, top-k, top-p, seed.
 *
 * A sampler prefills each prompt (in chunks of PREFILL_CHUNK tokens) into its
 * own slice of a (L, n_seqs, Tmax, NKV*HS) key/value cache, then each step
 * feeds every live sequence's last token in one batched forward: the linear
 * layers see all live rows at once, attention runs per sequence against its
 * cache at its own position. Token choice follows HF's order: temperature,
 * top-k, top-p, then a draw from sequence i's own RNG stream (seed, i).
 * Stop strings are found here (cel_sampler_cut_stops, on text the caller
 * decodes from the tokens each step returns); the caller then calls
 * cel_sampler_stop. One thread uses a sampler at a time.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "gpu.h"

#define PREFILL_CHUNK 256

enum { ST_LIVE = 0, ST_STOP_ID = 1, ST_LENGTH = 2, ST_CALLER = 3 };

struct cel_sampler {
    cel_model_t *m;
    const cel_lora_t *lora;
    int n, Tmax, rows; /* sequences, cache rows per sequence, scratch rows */
    cel_sample_params_t p;
    int32_t *stop; /* stop ids */
    int n_stop;
    float *kc, *vc;          /* (L,n,Tmax,NKV*HS) */
    int *len, *gen, *status; /* (n) cached tokens, generated tokens, ST_* */
    int32_t *pending;        /* (n) last sampled token, fed next step; -1 none */
    cel_rng_t *rng;          /* (n) */
    float *logits;           /* (n,V) next-token logits of each sequence */
    float *mem;              /* scratch block: */
    float *x, *ln, *rstd, *q, *k, *v, *atty, *tmp, *gate, *up, *h, *u, *att, *lnf, *probs;
    int32_t *toks, *pos, *rowseq, *idx;
    struct cel_gpu_sampler *gs; /* on a GPU model: the device's KV cache; CPU buffers unused */
    float *draws;               /* (n) uniform draws handed to the GPU pick */
};

void cel_sampler_free(cel_sampler_t *s) {
    if (!s) return;
    if (s->gs) s->m->gpu_api->sampler_free(s->gs);
    if (s->lora && s->m->gpu) ((cel_lora_t *)s->lora)->dev_pins--;
    free(s->draws);
    free(s->stop);
    free(s->kc);
    free(s->vc);
    free(s->len);
    free(s->gen);
    free(s->status);
    free(s->pending);
    free(s->rng);
    free(s->logits);
    free(s->mem);
    free(s->toks);
    free(s);
}

static void linear(const cel_sampler_t *s, int l, int mod, float *out, const float *inp, int N) {
    const cel_model_t *m = s->m;
    const cel_lora_t *lora = s->lora;
    int in, o;
    cel_model_mod_dims(&m->cfg, mod, &in, &o);
    float *base[CEL_NMOD] = { m->p.wq, m->p.wk, m->p.wv, m->p.wo, m->p.wg, m->p.wu, m->p.wd };
    cel_cpu_matmul_forward(out, inp, base[mod] + (size_t)l * in * o, N, in, o);
    if (lora && (lora->targets & (1u << mod)))
        cel_cpu_lora_forward(out, s->u, inp, lora->w + lora->offA[mod] + (size_t)l * lora->R * in,
                             lora->w + lora->offB[mod] + (size_t)l * o * lora->R, lora->scaling, N,
                             in, o, lora->R);
}

/* Feeds n tokens to each of the cnt sequences in seqs (rows grouped by
 * sequence), appends their k/v to the cache and leaves each sequence's
 * next-token logits in s->logits. */
static void forward_cached(cel_sampler_t *s, const int *seqs, int cnt, const int32_t *tok, int n) {
    cel_model_t *m = s->m;
    const cel_config_t *c = &m->cfg;
    int N = cnt * n, C = c->C, QD = c->NH * c->HS, KD = c->NKV * c->HS;
    for (int si = 0; si < cnt; si++)
        for (int i = 0; i < n; i++) {
            s->pos[si * n + i] = s->len[seqs[si]] + i;
            s->toks[si * n + i] = tok[si * n + i];
        }
    cel_cpu_embedding_forward(s->x, s->toks, m->p.wte, N, C);
    for (int l = 0; l < c->L; l++) {
        cel_cpu_rmsnorm_forward(s->ln, s->rstd, s->x, m->p.ln1 + (size_t)l * C, N, C, c->eps);
        linear(s, l, CEL_MOD_Q, s->q, s->ln, N);
        linear(s, l, CEL_MOD_K, s->k, s->ln, N);
        linear(s, l, CEL_MOD_V, s->v, s->ln, N);
        cel_cpu_rope_forward(s->q, s->q, s->pos, m->rope_cos, m->rope_sin, N, c->NH, c->HS);
        cel_cpu_rope_forward(s->k, s->k, s->pos, m->rope_cos, m->rope_sin, N, c->NKV, c->HS);
        for (int si = 0; si < cnt; si++) {
            int seq = seqs[si], p0 = s->len[seq];
            size_t slice = ((size_t)l * s->n + seq) * s->Tmax * KD;
            float *kc = s->kc + slice, *vc = s->vc + slice;
            memcpy(kc + (size_t)p0 * KD, s->k + (size_t)si * n * KD,
                   (size_t)n * KD * sizeof(float));
            memcpy(vc + (size_t)p0 * KD, s->v + (size_t)si * n * KD,
                   (size_t)n * KD * sizeof(float));
            cel_cpu_attention_cached(s->atty + (size_t)si * n * QD, s->att,
                                     s->q + (size_t)si * n * QD, kc, vc, n, p0, c->NH, c->NKV,
                                     c->HS);
        }
        linear(s, l, CEL_MOD_O, s->tmp, s->atty, N);
        cel_cpu_residual_forward(s->x, s->x, s->tmp, (size_t)N * C);
        cel_cpu_rmsnorm_forward(s->ln, s->rstd, s->x, m->p.ln2 + (size_t)l * C, N, C, c->eps);
        linear(s, l, CEL_MOD_GATE, s->gate, s->ln, N);
        linear(s, l, CEL_MOD_UP, s->up, s->ln, N);
        cel_cpu_swiglu_forward(s->h, s->gate, s->up, N, c->I);
        linear(s, l, CEL_MOD_DOWN, s->tmp, s->h, N);
        cel_cpu_residual_forward(s->x, s->x, s->tmp, (size_t)N * C);
    }
    /* only each sequence's last row needs logits */
    for (int si = 0; si < cnt; si++)
        memmove(s->tmp + (size_t)si * C, s->x + ((size_t)si * n + n - 1) * C, C * sizeof(float));
    cel_cpu_rmsnorm_forward(s->lnf, s->rstd, s->tmp, m->p.lnf, cnt, C, c->eps);
    cel_cpu_matmul_forward(s->probs, s->lnf, m->p.lm, cnt, C, c->V);
    for (int si = 0; si < cnt; si++) {
        memcpy(s->logits + (size_t)seqs[si] * c->V, s->probs + (size_t)si * c->V,
               (size_t)c->V * sizeof(float));
        s->len[seqs[si]] += n;
    }
}

static int cmp_desc(const void *a, const void *b, void *arg) {
    const float *x = arg;
    float u = x[*(const int32_t *)a], w = x[*(const int32_t *)b];
    if (u != w) return u > w ? -1 : 1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

/* Picks the next token of sequence seq from its logits. */
static int32_t choose(cel_sampler_t *s, int seq) {
    int V = s->m->cfg.V;
    const float *lg = s->logits + (size_t)seq * V;
    if (s->p.temperature <= 0.0f) {
        int best = 0;
        for (int i = 1; i < V; i++)
            if (lg[i] > lg[best]) best = i;
        return best;
    }
    float *x = s->probs; /* temperature-scaled logits */
    for (int i = 0; i < V; i++) x[i] = lg[i] / s->p.temperature;
    int K = V;
    int32_t *idx = s->idx;
    for (int i = 0; i < V; i++) idx[i] = i;
    int need_sort = (s->p.top_k > 0 && s->p.top_k < V) || s->p.top_p < 1.0f;
    if (need_sort) {
        qsort_r(idx, V, sizeof(int32_t), cmp_desc, x);
        if (s->p.top_k > 0 && s->p.top_k < V) K = s->p.top_k;
    }
    float mx = x[idx[0]];
    for (int i = 1; i < K; i++) mx = x[idx[i]] > mx ? x[idx[i]] : mx;
    double total = 0.0;
    double *pr = (double *)(void *)s->att; /* K doubles of scratch (att holds >= 2V floats) */
    for (int i = 0; i < K; i++) total += pr[i] = exp((double)(x[idx[i]] - mx));
    if (s->p.top_p < 1.0f) { /* smallest prefix reaching top_p, at least one token */
        double cum = 0.0;
        int keep = K;
        for (int i = 0; i < K; i++) {
            cum += pr[i] / total;
            if (cum >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
        K = keep;
        total = 0.0;
        for (int i = 0; i < K; i++) total += pr[i];
    }
    double r = cel_rng_uniform(&s->rng[seq]) * total;
    for (int i = 0; i < K; i++) {
        r -= pr[i];
        if (r < 0) return idx[i];
    }
    return idx[K - 1];
}

/* Applies the step's picks (tokens[i], -1 for finished sequences): stop ids,
 * max_tokens and cache length end a sequence, the rest feed the next step.
 * Returns the number still live. */
static int finish_step(cel_sampler_t *s, const int32_t *tokens) {
    int live = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->status[i] != ST_LIVE) continue;
        int32_t t = tokens[i];
        s->gen[i]++;
        int stop = 0;
        for (int j = 0; j < s->n_stop; j++) stop |= s->stop[j] == t;
        if (stop) s->status[i] = ST_STOP_ID;
        else if (s->gen[i] >= s->p.max_tokens || s->len[i] >= s->Tmax) s->status[i] = ST_LENGTH;
        else s->pending[i] = t;
        live += s->status[i] == ST_LIVE;
    }
    return live;
}

/* cel_sampler_new on a GPU model: the host keeps stop ids, RNG streams and
 * statuses; the KV cache, the forward passes and the picks run on the device. */
static int gpu_sampler_new(cel_model_t *m, const cel_lora_t *lora, int n_seqs,
                           const int32_t *const *prompts, const int32_t *lens,
                           const cel_sample_params_t *p, int maxp, cel_sampler_t **out,
                           cel_err_t *err) {
    cel_sampler_t *s = calloc(1, sizeof(*s));
    if (!s) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    s->m = m;
    s->n = n_seqs;
    s->p = *p;
    s->Tmax = (int64_t)maxp + p->max_tokens < m->maxT ? maxp + p->max_tokens : m->maxT;
    int32_t eos[CEL_CONFIG_MAX_EOS];
    const int32_t *stop = p->n_stop_ids ? p->stop_ids : eos;
    s->n_stop = p->n_stop_ids ? p->n_stop_ids : cel_model_eos(m, eos, CEL_CONFIG_MAX_EOS);
    s->stop = malloc((s->n_stop + 1) * sizeof(int32_t));
    s->len = calloc(n_seqs, sizeof(int));
    s->gen = calloc(n_seqs, sizeof(int));
    s->status = calloc(n_seqs, sizeof(int));
    s->pending = malloc(n_seqs * sizeof(int32_t));
    s->rng = malloc(n_seqs * sizeof(cel_rng_t));
    s->draws = malloc(n_seqs * sizeof(float));
    s->toks = malloc(2 * (size_t)n_seqs * sizeof(int32_t));
    struct cel_gpu_lora **loras = calloc(n_seqs, sizeof(*loras));
    if (!s->stop || !s->len || !s->gen || !s->status || !s->pending || !s->rng || !s->draws ||
        !s->toks || !loras) {
        free(loras);
        cel_sampler_free(s);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    if (s->n_stop) memcpy(s->stop, stop, s->n_stop * sizeof(int32_t));
    s->rowseq = s->toks;
    s->pos = s->toks + n_seqs;
    int rc = CEL_OK;
    if (lora) {
        rc = cel_device_lora_ready(m, (cel_lora_t *)lora, err);
        if (rc == CEL_OK) {
            s->lora = lora;
            ((cel_lora_t *)lora)->dev_pins++;
        }
    }
    for (int i = 0; rc == CEL_OK && i < n_seqs; i++) {
        loras[i] = lora ? lora->dev : NULL;
        cel_rng_seed(&s->rng[i], p->seed, (uint64_t)i + 1);
        s->pending[i] = -1;
        s->len[i] = lens[i];
    }
    if (rc == CEL_OK)
        rc = m->gpu_api->sampler_new(m->gpu, n_seqs, loras, prompts, lens, s->Tmax, &s->gs, err);
    free(loras);
    if (rc != CEL_OK) {
        cel_sampler_free(s);
        return rc;
    }
    *out = s;
    return CEL_OK;
}

/* cel_sampler_step on a GPU model. */
static int gpu_sampler_step(cel_sampler_t *s, int32_t *tokens, cel_err_t *err) {
    const cel_gpu_api_t *api = s->m->gpu_api;
    int cnt = 0;
    int *seqs = (int *)s->rowseq;
    int32_t *feed = s->pos;
    for (int i = 0; i < s->n; i++)
        if (s->status[i] == ST_LIVE && s->pending[i] >= 0) {
            seqs[cnt] = i;
            feed[cnt++] = s->pending[i];
            s->pending[i] = -1;
            s->len[i]++;
        }
    int rc = cnt ? api->sampler_feed(s->gs, cnt, seqs, feed, err) : CEL_OK;
    if (rc != CEL_OK) return rc;
    cnt = 0;
    for (int i = 0; i < s->n; i++) {
        tokens[i] = -1;
        if (s->status[i] != ST_LIVE) continue;
        s->draws[cnt] = s->p.temperature > 0.0f ? cel_rng_uniform(&s->rng[i]) : 0.0f;
        seqs[cnt++] = i;
    }
    if (cnt == 0) return 0;
    rc = api->sampler_pick(s->gs, cnt, seqs, s->draws, s->p.temperature, s->p.top_k, s->p.top_p,
                           feed, err);
    if (rc != CEL_OK) return rc;
    for (int j = 0; j < cnt; j++) tokens[seqs[j]] = feed[j];
    return CEL_OK;
}

int cel_sampler_new(cel_model_t *m, const cel_lora_t *lora, int n_seqs,
                    const int32_t *const *prompts, const int32_t *lens,
                    const cel_sample_params_t *p, cel_sampler_t **out, cel_err_t *err) {
    *out = NULL;
    const cel_config_t *c = &m->cfg;
    if (n_seqs < 1 || n_seqs > CEL_SAMPLE_MAX_SEQS)
        return cel_err_set(err, CEL_ELIMIT, "%d prompts, not in [1, %d]", n_seqs,
                           CEL_SAMPLE_MAX_SEQS);
    if (p->max_tokens < 1 || !(p->temperature >= 0) || p->top_k < 0 ||
        !(p->top_p > 0 && p->top_p <= 1) || p->n_stop_ids < 0 || p->n_stop_ids > 1024)
        return cel_err_set(err, CEL_EINVAL,
                           "sampling needs max_tokens >= 1, temperature >= 0, "
                           "top_k >= 0, top_p in (0, 1]");
    if (lora && (lora->cfg.C != c->C || lora->cfg.L != c->L || lora->cfg.I != c->I ||
                 lora->cfg.NH != c->NH || lora->cfg.NKV != c->NKV || lora->cfg.HS != c->HS))
        return cel_err_set(err, CEL_EINVAL, "adapter was made for a model of another shape");
    int maxp = 0;
    for (int i = 0; i < n_seqs; i++) {
        if (lens[i] < 1 || lens[i] >= m->maxT)
            return cel_err_set(err, CEL_ELIMIT, "prompt %d has %d tokens, not in [1, %d)", i,
                               lens[i], m->maxT);
        for (int t = 0; t < lens[i]; t++)
            if (prompts[i][t] < 0 || prompts[i][t] >= c->V)
                return cel_err_set(err, CEL_EINVAL,
                                   "prompt %d: token id %d outside the "
                                   "vocabulary of %d",
                                   i, prompts[i][t], c->V);
        maxp = lens[i] > maxp ? lens[i] : maxp;
    }
    if (m->gpu) return gpu_sampler_new(m, lora, n_seqs, prompts, lens, p, maxp, out, err);
    cel_sampler_t *s = calloc(1, sizeof(*s));
    if (!s) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    s->m = m;
    s->lora = lora;
    s->n = n_seqs;
    s->p = *p;
    s->Tmax = (int64_t)maxp + p->max_tokens < m->maxT ? maxp + p->max_tokens : m->maxT;
    int chunk = maxp < PREFILL_CHUNK ? maxp : PREFILL_CHUNK;
    s->rows = chunk > n_seqs ? chunk : n_seqs;
    const int32_t *stop = p->n_stop_ids ? p->stop_ids : NULL;
    int32_t eos[CEL_CONFIG_MAX_EOS];
    s->n_stop = p->n_stop_ids ? p->n_stop_ids : cel_model_eos(m, eos, CEL_CONFIG_MAX_EOS);
    if (!stop) stop = eos;
    size_t N = s->rows, C = c->C, QD = (size_t)c->NH * c->HS, KD = (size_t)c->NKV * c->HS, I = c->I,
           V = c->V, R = lora ? lora->R : 1;
    size_t cache = (size_t)c->L * n_seqs * s->Tmax * KD;
    size_t attn = (size_t)chunk * s->Tmax;
    if (attn < 2 * V) attn = 2 * V; /* doubles for choose() */
    size_t total =
        N * C * 3 + N + N * QD * 2 + N * KD * 2 + N * I * 3 + N * R + attn + N * C + N * V;
    s->stop = malloc((s->n_stop + 1) * sizeof(int32_t));
    s->kc = malloc(cache * sizeof(float));
    s->vc = malloc(cache * sizeof(float));
    s->len = calloc(n_seqs, sizeof(int));
    s->gen = calloc(n_seqs, sizeof(int));
    s->status = calloc(n_seqs, sizeof(int));
    s->pending = malloc(n_seqs * sizeof(int32_t));
    s->rng = malloc(n_seqs * sizeof(cel_rng_t));
    s->logits = malloc((size_t)n_seqs * V * sizeof(float));
    s->mem = malloc(total * sizeof(float));
    s->toks = malloc((3 * N + V) * sizeof(int32_t));
    if (!s->stop || !s->kc || !s->vc || !s->len || !s->gen || !s->status || !s->pending ||
        !s->rng || !s->logits || !s->mem || !s->toks) {
        cel_sampler_free(s);
        return cel_err_set(err, CEL_ENOMEM, "out of memory for a KV cache of %d x %d tokens",
                           n_seqs, s->Tmax);
    }
    if (s->n_stop) memcpy(s->stop, stop, s->n_stop * sizeof(int32_t));
    float *x = s->mem;
    s->x = x, x += N * C;
    s->ln = x, x += N * C;
    s->tmp = x, x += N * C;
    s->rstd = x, x += N;
    s->q = x, x += N * QD;
    s->atty = x, x += N * QD;
    s->k = x, x += N * KD;
    s->v = x, x += N * KD;
    s->gate = x, x += N * I;
    s->up = x, x += N * I;
    s->h = x, x += N * I;
    s->u = x, x += N * R;
    s->att = x, x += attn;
    s->lnf = x, x += N * C;
    s->probs = x; /* (N,V): logits of the last rows, and choose()'s scratch */
    s->pos = s->toks + N;
    s->rowseq = s->toks + 2 * N;
    s->idx = s->toks + 3 * N;
    for (int i = 0; i < n_seqs; i++) {
        cel_rng_seed(&s->rng[i], p->seed, (uint64_t)i + 1);
        s->pending[i] = -1;
        for (int t0 = 0; t0 < lens[i]; t0 += chunk) {
            int nn = lens[i] - t0 < chunk ? lens[i] - t0 : chunk;
            forward_cached(s, &i, 1, prompts[i] + t0, nn);
        }
    }
    *out = s;
    return CEL_OK;
}

int cel_sampler_step(cel_sampler_t *s, int32_t *tokens, cel_err_t *err) {
    if (s->gs) {
        int rc = gpu_sampler_step(s, tokens, err);
        if (rc != CEL_OK) return rc;
        return finish_step(s, tokens);
    }
    int cnt = 0;
    for (int i = 0; i < s->n; i++)
        if (s->status[i] == ST_LIVE && s->pending[i] >= 0) {
            s->rowseq[cnt++] = i;
        }
    if (cnt > 0) {
        /* feed last step's tokens in one batch; rowseq doubles as the seq list */
        int32_t feed[CEL_SAMPLE_MAX_SEQS];
        int seqs[CEL_SAMPLE_MAX_SEQS];
        for (int j = 0; j < cnt; j++) {
            seqs[j] = s->rowseq[j];
            feed[j] = s->pending[seqs[j]];
            s->pending[seqs[j]] = -1;
        }
        forward_cached(s, seqs, cnt, feed, 1);
    }
    for (int i = 0; i < s->n; i++) tokens[i] = s->status[i] == ST_LIVE ? choose(s, i) : -1;
    (void)err;
    return finish_step(s, tokens);
}

void cel_sampler_stop(cel_sampler_t *s, int seq) {
    if (seq >= 0 && seq < s->n && s->status[seq] == ST_LIVE) {
        s->status[seq] = ST_CALLER;
        s->pending[seq] = -1;
    }
}

int cel_sampler_status(const cel_sampler_t *s, int seq) {
    return seq >= 0 && seq < s->n ? s->status[seq] : -1;
}

int cel_sampler_cut_stops(char *text, size_t *len, const char *const *stops,
                          const size_t *stop_lens, int n_stops) {
    size_t cut = *len;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = stop_lens ? stop_lens[i] : strlen(stops[i]);
        if (sl == 0) continue;
        /* only a match that starts before the best so far can win */
        size_t room = cut + sl - 1 < *len ? cut + sl - 1 : *len;
        const char *hit = memmem(text, room, stops[i], sl);
        if (hit && (size_t)(hit - text) < cut) cut = (size_t)(hit - text);
    }
    if (cut == *len) return 0;
    *len = cut;
    text[cut] = '\0';
    return 1;
}
