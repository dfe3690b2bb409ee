/* rope.c -- rotary position embedding, HF Llama's rotate_half convention, forward and backward.
 *
 * For frequency i < HS/2 the pair (x[i], x[i+HS/2]) of each head is rotated by
 * pos * inv_freq[i]: out[i] = x[i] cos - x[i+h] sin, out[i+h] = x[i+h] cos +
 * x[i] sin. The tables are built in f32 the way HF builds them
 * (inv_freq = 1/theta^(2i/HS), freqs = pos * inv_freq, then cos/sin), with the
 * "linear" and "llama3" rope_scaling variants. Positions come per row, so a
 * batch may mix sequences at different offsets (the sampler's KV cache).
 * Rows are split across the pool's threads (par.c).
 */
#include "ops.h"

#include <math.h>
#include <string.h>

#include "../config.h"
#include "simd.h"

void cel_cpu_rope_init(float *cos_t /* (maxT,HS/2) */, float *sin_t /* (maxT,HS/2) */, int maxT,
                       int HS, float theta, int kind, float factor, float low_freq, float high_freq,
                       int orig_max) {
    int h = HS / 2;
    for (int i = 0; i < h; i++) {
        float inv = 1.0f / powf(theta, (float)(2 * i) / (float)HS);
        if (kind == CEL_ROPE_LINEAR) {
            inv /= factor;
        } else if (kind == CEL_ROPE_LLAMA3) {
            float wavelen = 2.0f * (float)M_PI / inv;
            float low_wl = orig_max / low_freq, high_wl = orig_max / high_freq;
            if (wavelen > low_wl) {
                inv = inv / factor;
            } else if (wavelen >= high_wl) {
                float smooth = (orig_max / wavelen - low_freq) / (high_freq - low_freq);
                inv = (1.0f - smooth) * inv / factor + smooth * inv;
            }
        }
        for (int p = 0; p < maxT; p++) {
            float f = (float)p * inv;
            cos_t[(size_t)p * h + i] = cosf(f);
            sin_t[(size_t)p * h + i] = sinf(f);
        }
    }
}

typedef struct rope_job {
    float *out;
    const float *inp;
    const int32_t *pos;
    const float *cos_t, *sin_t;
    int NHX, HS;
} rope_job_t;

CEL_CPU_VEC static void fwd_rows(void *p, int n0, int n1) {
    const rope_job_t *j = p;
    int h = j->HS / 2, NHX = j->NHX, HS = j->HS;
    for (int n = n0; n < n1; n++) {
        const float *c = j->cos_t + (size_t)j->pos[n] * h, *s = j->sin_t + (size_t)j->pos[n] * h;
        for (int hd = 0; hd < NHX; hd++) {
            float *o = j->out + ((size_t)n * NHX + hd) * HS;
            float x[CEL_CONFIG_MAX_HEAD_DIM]; /* a copy: out may be inp */
            memcpy(x, j->inp + ((size_t)n * NHX + hd) * HS, (size_t)HS * sizeof(float));
            for (int i = 0; i < h; i++) {
                float x1 = x[i], x2 = x[i + h];
                o[i] = x1 * c[i] - x2 * s[i];
                o[i + h] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/* the inverse rotation (out is dinp, inp is dout) */
CEL_CPU_VEC static void bwd_rows(void *p, int n0, int n1) {
    const rope_job_t *j = p;
    int h = j->HS / 2, NHX = j->NHX, HS = j->HS;
    for (int n = n0; n < n1; n++) {
        const float *c = j->cos_t + (size_t)j->pos[n] * h, *s = j->sin_t + (size_t)j->pos[n] * h;
        for (int hd = 0; hd < NHX; hd++) {
            float *dx = j->out + ((size_t)n * NHX + hd) * HS;
            float d[CEL_CONFIG_MAX_HEAD_DIM]; /* a copy: dinp may be dout */
            memcpy(d, j->inp + ((size_t)n * NHX + hd) * HS, (size_t)HS * sizeof(float));
            for (int i = 0; i < h; i++) {
                float d1 = d[i], d2 = d[i + h];
                dx[i] = d1 * c[i] + d2 * s[i];
                dx[i + h] = d2 * c[i] - d1 * s[i];
            }
        }
    }
}

void cel_cpu_rope_forward(float *out /* (N,NHX,HS) */, const float *inp /* (N,NHX,HS) */,
                          const int32_t *pos /* (N) */, const float *cos_t, const float *sin_t,
                          int N, int NHX, int HS) {
    rope_job_t j = { out, inp, pos, cos_t, sin_t, NHX, HS };
    cel_cpu_par_for(N, 1 + 8192 / (NHX * HS > 0 ? NHX * HS : 1), fwd_rows, &j);
}

void cel_cpu_rope_backward(float *dinp /* (N,NHX,HS) = */, const float *dout /* (N,NHX,HS) */,
                           const int32_t *pos /* (N) */, const float *cos_t, const float *sin_t,
                           int N, int NHX, int HS) {
    rope_job_t j = { dinp, dout, pos, cos_t, sin_t, NHX, HS };
    cel_cpu_par_for(N, 1 + 8192 / (NHX * HS > 0 ? NHX * HS : 1), bwd_rows, &j);
}
