/* test_cuda_attention.cu -- CUDA attention, decode, KV append and sampling against CPU twins.
 *
 * Each check runs one op of model/cuda/ops.h on random inputs whose sizes are not multiples
 * of the kernels' tiles and compares it with model/cpu/ops.h (attention) or with a host
 * reimplementation of ops.h's rule (sampling), printing "ok   name max_abs_err=.. tol=.." or
 * "FAIL ...", then "N passed, N failed"; exit status 1 on any failure. Tolerances: bf16
 * outputs may differ by one bf16 rounding (2^-8 of the largest reference magnitude, twice
 * the worst rounding error; under tests/cuda-emu's CPU emulation the shapes are smaller and
 * the 2^20-token rows get one check); fp32 outputs by summation order (lse 1e-4, dV 1e-3 of the
 * largest magnitude); dQ and dK by 1e-2, as the GPU takes D = rowsum(dO * O) from the bf16
 * out where the CPU sums P * dP in fp32. Sampling must match exactly: logits are built
 * without near-ties. Without a usable GPU it prints "skipped: ..." and exits 0.
 * CELERIAC_GPU_TEST_ONLY runs only the checks whose name contains its value.
 */
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "../../model/cuda/ops.h"
extern "C" {
#include "../../model/cpu/ops.h"
}

static int g_pass, g_fail;

/* CELERIAC_GPU_TEST_ONLY=text: only the checks whose name contains it. */
static bool wanted(const char *name) {
    const char *only = getenv("CELERIAC_GPU_TEST_ONLY");
    return !only || !*only || strstr(name, only);
}

/* xorshift64*: the test's own generator, so runs are reproducible. */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double urand(void) {
    g_rng ^= g_rng >> 12, g_rng ^= g_rng << 25, g_rng ^= g_rng >> 27;
    return (double)((g_rng * 0x2545f4914f6cdd1dull) >> 11) * 0x1p-53;
}
static void fill(std::vector<float> &x, double lo, double hi) {
    for (float &f : x) f = (float)(lo + (hi - lo) * urand());
}

static float bf16_to_float(cel_bf16_t h) {
    uint16_t bits;
    memcpy(&bits, &h, 2);
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void result(int ok, const char *name, const char *what, double err, double tol) {
    printf("%s %s %s=%.3g tol=%.3g\n", ok ? "ok  " : "FAIL", name, what, err, tol);
    ok ? g_pass++ : g_fail++;
}

/* Returns 1 when the launches since the last call and their execution were clean; otherwise
 * prints the CUDA error and counts a failure. */
static int cuda_ok(const char *name) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    if (e == cudaSuccess) return 1;
    printf("FAIL %s: CUDA error: %s\n", name, cudaGetErrorString(e));
    g_fail++;
    return 0;
}

/* Device buffers of one check, freed together. */
struct dev_bufs {
    std::vector<void *> p;
    int bad = 0;
    template <typename T> T *alloc(size_t n) {
        void *d = NULL;
        if (cudaMalloc(&d, n * sizeof(T)) != cudaSuccess) {
            bad = 1;
            return NULL;
        }
        p.push_back(d);
        return (T *)d;
    }
    template <typename T> T *upload(const std::vector<T> &h) {
        T *d = alloc<T>(h.size());
        if (d && cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice)) bad = 1;
        return d;
    }
    ~dev_bufs() {
        for (void *d : p) cudaFree(d);
    }
};

template <typename T> static int download(std::vector<T> &h, const T *d) {
    return cudaMemcpy(h.data(), d, h.size() * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess;
}

/* Largest |a - ref| (infinite if any a is NaN or missing) and largest |ref|. */
static double max_err(const float *a, const float *ref, size_t n, double *ref_max) {
    double e = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]);
        if (!(d <= e)) e = d == d ? d : INFINITY;
        m = fmax(m, fabs((double)ref[i]));
    }
    *ref_max = m;
    return e;
}

static void compare(const char *name, const float *a, const float *ref, size_t n, double rel) {
    double m, e = max_err(a, ref, n, &m), tol = rel * fmax(1.0, m);
    result(e <= tol, name, "max_abs_err", e, tol);
}

/* Forward (out, lse) and backward (dq, dk, dv; each written in full, and bitwise the same
 * on a second run) for one shape. */
static void check_attention(int B, int T, int NH, int NKV, int HS) {
    char name[128];
    snprintf(name, sizeof name, "attention B=%d T=%d NH=%d NKV=%d HS=%d", B, T, NH, NKV, HS);
    if (!wanted(name)) return;
    size_t nq = (size_t)B * T * NH * HS, nk = (size_t)B * T * NKV * HS, nl = (size_t)B * NH * T;
    std::vector<float> q(nq), k(nk), v(nk), dout(nq);
    fill(q, -2, 2), fill(k, -2, 2), fill(v, -1, 1), fill(dout, -1, 1);
    std::vector<float> out(nq), lse(nl), scratch(2 * (size_t)T * T);
    cel_cpu_attention_forward(out.data(), lse.data(), scratch.data(), q.data(), k.data(), v.data(),
                              B, T, NH, NKV, HS);
    std::vector<float> dq(nq), dk(nk), dv(nk);
    cel_cpu_attention_backward(dq.data(), dk.data(), dv.data(), scratch.data(), dout.data(),
                               lse.data(), q.data(), k.data(), v.data(), B, T, NH, NKV, HS);

    dev_bufs d;
    float *d_q = d.upload(q), *d_k = d.upload(k), *d_v = d.upload(v), *d_do = d.upload(dout);
    cel_bf16_t *d_out = d.alloc<cel_bf16_t>(nq);
    float *d_lse = d.alloc<float>(nl), *d_dq = d.alloc<float>(nq);
    float *d_dk = d.alloc<float>(nk), *d_dv = d.alloc<float>(nk);
    if (d.bad) {
        printf("FAIL %s: device allocation or copy\n", name);
        g_fail++;
        return;
    }
    /* NaN everywhere first: an element a kernel forgets to write fails the comparison */
    cudaMemset(d_out, 0xff, nq * sizeof(cel_bf16_t));
    cudaMemset(d_lse, 0xff, nl * sizeof(float));
    cudaMemset(d_dq, 0xff, nq * sizeof(float));
    cudaMemset(d_dk, 0xff, nk * sizeof(float));
    cudaMemset(d_dv, 0xff, nk * sizeof(float));
    cel_cuda_attention_forward(d_out, d_lse, d_q, d_k, d_v, B, T, NH, NKV, HS, 0);
    char sub[160];
    snprintf(sub, sizeof sub, "%s forward", name);
    if (!cuda_ok(sub)) return;
    std::vector<cel_bf16_t> g_out16(nq);
    std::vector<float> g_out(nq), g_lse(nl);
    if (!download(g_out16, d_out) || !download(g_lse, d_lse)) {
        printf("FAIL %s: download\n", sub);
        g_fail++;
        return;
    }
    for (size_t i = 0; i < nq; i++) g_out[i] = bf16_to_float(g_out16[i]);
    snprintf(sub, sizeof sub, "%s forward out", name);
    compare(sub, g_out.data(), out.data(), nq, 0x1p-8);
    snprintf(sub, sizeof sub, "%s forward lse", name);
    compare(sub, g_lse.data(), lse.data(), nl, 1e-4);

    cel_cuda_attention_backward(d_dq, d_dk, d_dv, d_do, d_out, d_lse, d_q, d_k, d_v, B, T, NH, NKV,
                                HS, 0);
    snprintf(sub, sizeof sub, "%s backward", name);
    if (!cuda_ok(sub)) return;
    std::vector<float> g_dq(nq), g_dk(nk), g_dv(nk);
    if (!download(g_dq, d_dq) || !download(g_dk, d_dk) || !download(g_dv, d_dv)) {
        printf("FAIL %s: download\n", sub);
        g_fail++;
        return;
    }
    snprintf(sub, sizeof sub, "%s backward dq", name);
    compare(sub, g_dq.data(), dq.data(), nq, 1e-2);
    snprintf(sub, sizeof sub, "%s backward dk", name);
    compare(sub, g_dk.data(), dk.data(), nk, 1e-2);
    snprintf(sub, sizeof sub, "%s backward dv", name);
    compare(sub, g_dv.data(), dv.data(), nk, 1e-3);

    cel_cuda_attention_backward(d_dq, d_dk, d_dv, d_do, d_out, d_lse, d_q, d_k, d_v, B, T, NH, NKV,
                                HS, 0);
    snprintf(sub, sizeof sub, "%s backward rerun", name);
    if (!cuda_ok(sub)) return;
    std::vector<float> r_dq(nq), r_dk(nk), r_dv(nk);
    if (!download(r_dq, d_dq) || !download(r_dk, d_dk) || !download(r_dv, d_dv)) {
        printf("FAIL %s: download\n", sub);
        g_fail++;
        return;
    }
    size_t diff = 0;
    for (size_t i = 0; i < nq; i++) diff += memcmp(&r_dq[i], &g_dq[i], 4) != 0;
    for (size_t i = 0; i < nk; i++)
        diff += (memcmp(&r_dk[i], &g_dk[i], 4) != 0) + (memcmp(&r_dv[i], &g_dv[i], 4) != 0);
    snprintf(sub, sizeof sub, "%s backward deterministic", name);
    result(diff == 0, sub, "differing_elements", (double)diff, 0);
}

/* Decode over a 3-slot cache against cel_cpu_attention_cached, and kv_append exactness. */
static void check_decode(int NH, int NKV, int HS) {
    const int n_slots = 3, Tmax = 150, S = 3;
    const int32_t slot[S] = { 2, 0, 1 }, pos[S] = { 0, 69, Tmax - 1 };
    int KD = NKV * HS, QD = NH * HS;
    char name[128], sub[160];
    snprintf(name, sizeof name, "decode NH=%d NKV=%d HS=%d", NH, NKV, HS);
    if (!wanted(name)) return;
    size_t nc = (size_t)n_slots * Tmax * KD;
    std::vector<float> kc(nc), vc(nc), q((size_t)S * QD), out((size_t)S * QD);
    fill(kc, -2, 2), fill(vc, -1, 1), fill(q, -2, 2);
    std::vector<float> scratch(Tmax);
    for (int s = 0; s < S; s++)
        cel_cpu_attention_cached(out.data() + (size_t)s * QD, scratch.data(),
                                 q.data() + (size_t)s * QD, kc.data() + (size_t)slot[s] * Tmax * KD,
                                 vc.data() + (size_t)slot[s] * Tmax * KD, 1, pos[s], NH, NKV, HS);
    dev_bufs d;
    float *d_kc = d.upload(kc), *d_vc = d.upload(vc), *d_q = d.upload(q);
    int32_t *d_slot = d.upload(std::vector<int32_t>(slot, slot + S));
    int32_t *d_pos = d.upload(std::vector<int32_t>(pos, pos + S));
    cel_bf16_t *d_out = d.alloc<cel_bf16_t>((size_t)S * QD);
    if (d.bad) {
        printf("FAIL %s: device allocation or copy\n", name);
        g_fail++;
        return;
    }
    cudaMemset(d_out, 0xff, (size_t)S * QD * sizeof(cel_bf16_t));
    cel_cuda_attention_decode(d_out, d_q, d_kc, d_vc, d_slot, d_pos, S, Tmax, NH, NKV, HS, 0);
    if (!cuda_ok(name)) return;
    std::vector<cel_bf16_t> g16((size_t)S * QD);
    std::vector<float> g((size_t)S * QD);
    if (!download(g16, d_out)) {
        printf("FAIL %s: download\n", name);
        g_fail++;
        return;
    }
    for (size_t i = 0; i < g.size(); i++) g[i] = bf16_to_float(g16[i]);
    compare(name, g.data(), out.data(), g.size(), 0x1p-8);

    /* kv_append: three new rows land exactly at (slot, pos); nothing else changes */
    const int32_t aslot[S] = { 2, 0, 1 }, apos[S] = { 5, 0, Tmax - 1 };
    std::vector<float> nk((size_t)S * KD), nv((size_t)S * KD);
    fill(nk, -3, 3), fill(nv, -3, 3);
    float *d_nk = d.upload(nk), *d_nv = d.upload(nv);
    int32_t *d_as = d.upload(std::vector<int32_t>(aslot, aslot + S));
    int32_t *d_ap = d.upload(std::vector<int32_t>(apos, apos + S));
    snprintf(sub, sizeof sub, "kv_append S=%d KD=%d", S, KD);
    if (d.bad) {
        printf("FAIL %s: device allocation or copy\n", sub);
        g_fail++;
        return;
    }
    cel_cuda_kv_append(d_kc, d_vc, d_nk, d_nv, d_as, d_ap, S, Tmax, KD, 0);
    if (!cuda_ok(sub)) return;
    for (int s = 0; s < S; s++) {
        size_t o = ((size_t)aslot[s] * Tmax + apos[s]) * KD;
        memcpy(&kc[o], &nk[(size_t)s * KD], KD * sizeof(float));
        memcpy(&vc[o], &nv[(size_t)s * KD], KD * sizeof(float));
    }
    std::vector<float> gk(nc), gv(nc);
    if (!download(gk, d_kc) || !download(gv, d_vc)) {
        printf("FAIL %s: download\n", sub);
        g_fail++;
        return;
    }
    size_t diff = 0;
    for (size_t i = 0; i < nc; i++)
        diff += (memcmp(&gk[i], &kc[i], 4) != 0) + (memcmp(&gv[i], &vc[i], 4) != 0);
    result(diff == 0, sub, "mismatches", (double)diff, 0);
}

/* ops.h's sampling rule on the host, the plain way: sort, cut, walk in id order (doubles). */
static int host_sample(const float *lg, int V, float temp, int top_k, float top_p, float u) {
    if (temp <= 0.0f) {
        int best = 0;
        for (int i = 1; i < V; i++)
            if (lg[i] > lg[best]) best = i;
        return best;
    }
    std::vector<float> x(V);
    std::vector<int> idx(V);
    for (int i = 0; i < V; i++) x[i] = lg[i] / temp, idx[i] = i;
    std::sort(idx.begin(), idx.end(),
              [&](int a, int b) { return x[a] != x[b] ? x[a] > x[b] : a < b; });
    int K = top_k > 0 && top_k < V ? top_k : V;
    double mx = x[idx[0]];
    std::vector<double> pr(K);
    double total = 0.0;
    for (int i = 0; i < K; i++) total += pr[i] = exp((double)x[idx[i]] - mx);
    if (top_p < 1.0f) {
        double cum = 0.0;
        int keep = K;
        for (int i = 0; i < K; i++) {
            cum += pr[i];
            if (cum >= (double)top_p * total) {
                keep = i + 1;
                break;
            }
        }
        K = keep;
    }
    std::vector<double> w(V, -1.0); /* -1: not kept */
    total = 0.0;
    for (int i = 0; i < K; i++) w[idx[i]] = pr[i], total += pr[i];
    double r = (double)u * total, cum = 0.0;
    int last = 0;
    for (int i = 0; i < V; i++) {
        if (w[i] < 0) continue;
        cum += w[i], last = i;
        if (cum > r) return i;
    }
    return last;
}

/* Runs cel_cuda_sample on S rows and counts rows that differ from host_sample. */
static void check_sample(const char *what, const std::vector<float> &lg, int S, int V,
                         const std::vector<float> &u, float temp, int top_k, float top_p) {
    char name[160];
    snprintf(name, sizeof name, "sample %s S=%d V=%d t=%g k=%d p=%g", what, S, V, temp, top_k,
             top_p);
    if (!wanted(name)) return;
    dev_bufs d;
    float *d_lg = d.upload(lg), *d_u = d.upload(u);
    int32_t *d_out = d.alloc<int32_t>(S);
    if (d.bad) {
        printf("FAIL %s: device allocation or copy\n", name);
        g_fail++;
        return;
    }
    cudaMemset(d_out, 0xff, S * sizeof(int32_t));
    cel_cuda_sample(d_out, d_lg, d_u, temp, top_k, top_p, S, V, 0);
    if (!cuda_ok(name)) return;
    std::vector<int32_t> g(S);
    if (!download(g, d_out)) {
        printf("FAIL %s: download\n", name);
        g_fail++;
        return;
    }
    int bad = 0;
    for (int s = 0; s < S; s++) {
        int want = host_sample(lg.data() + (size_t)s * V, V, temp, top_k, top_p, u[s]);
        if (g[s] != want) {
            if (bad < 3) printf("     row %d: gpu %d, host %d\n", s, g[s], want);
            bad++;
        }
    }
    result(bad == 0, name, "mismatches", bad, 0);
}

/* S rows of V distinct logits: a random permutation of evenly spaced values in [-6, 6]. */
static std::vector<float> separated_logits(int S, int V) {
    std::vector<float> lg((size_t)S * V);
    std::vector<int> perm(V);
    for (int s = 0; s < S; s++) {
        for (int i = 0; i < V; i++) perm[i] = i;
        for (int i = V - 1; i > 0; i--) std::swap(perm[i], perm[(int)(urand() * (i + 1))]);
        for (int i = 0; i < V; i++)
            lg[(size_t)s * V + perm[i]] = V > 1 ? -6.0f + 12.0f * (float)i / (float)(V - 1) : 0.f;
    }
    return lg;
}

static void check_sampling(void) {
    /* argmax: random rows, a flat row (id 0), a tied max (lower id), a row of -inf but one */
    {
        int S = 4, V = 70001;
        std::vector<float> lg((size_t)S * V), u(S, 0.5f);
        fill(lg, -5, 5);
        for (int i = 0; i < V; i++) lg[(size_t)V + i] = 0.5f;
        lg[2 * (size_t)V + 60000] = 9.0f, lg[2 * (size_t)V + 17] = 9.0f;
        for (int i = 0; i < V; i++) lg[3 * (size_t)V + i] = -INFINITY;
        lg[3 * (size_t)V + V - 1] = -100.0f;
        check_sample("argmax", lg, S, V, u, 0.0f, 0, 1.0f);
        check_sample("argmax+filters", lg, S, V, u, 0.0f, 5, 0.5f);
    }
    {
        std::vector<float> lg(1, 3.0f), u(1, 0.7f);
        check_sample("argmax", lg, 1, 1, u, 0.0f, 0, 1.0f);
        check_sample("one-token", lg, 1, 1, u, 1.0f, 3, 0.5f);
    }
    /* filters on well-separated logits, u spanning [0, 1) */
    struct cfg {
        float t;
        int k;
        float p;
    };
    const cfg cfgs[] = { { 1.0f, 0, 1.0f },     { 0.7f, 0, 1.0f },     { 1.0f, 50, 1.0f },
                         { 1.0f, 0, 0.9f },     { 0.8f, 40, 0.37f },   { 1.3f, 1, 1.0f },
                         { 1.0f, 0, 1e-4f },    { 0.5f, 1000, 0.95f }, { 2.0f, 7, 0.999f },
                         { 1.0f, 100000, 0.3f } };
    const int Vs[] = { 1000, 50257 };
    for (int V : Vs) {
        int S = 7;
        std::vector<float> lg = separated_logits(S, V);
        std::vector<float> u = { 0.0f, 0.1234f, 0.25f, 0.5f, 0.77f, 0.9f, 0.999999f };
        for (const cfg &c : cfgs) check_sample("separated", lg, S, V, u, c.t, c.k, c.p);
    }
    {
        int S = 3, V = 1 << 20;
        std::vector<float> lg = separated_logits(S, V);
        std::vector<float> u = { 0.05f, 0.5f, 0.95f };
#ifndef CEL_CUDA_EMU
        check_sample("separated", lg, S, V, u, 1.0f, 0, 1.0f);
        check_sample("separated", lg, S, V, u, 0.9f, 200, 0.8f);
        check_sample("argmax", lg, S, V, u, 0.0f, 0, 1.0f);
#endif
        check_sample("separated", lg, S, V, u, 1.0f, 0, 0.61f); /* the largest V: fixed point */
    }
    /* exact ties: a few levels, so top_k cuts through a tie group (lower ids kept) */
    {
        int S = 6, V = 3001;
        const float levels[] = { -2.0f, -0.9f, 0.0f, 0.45f, 1.3f, 1.7f };
        std::vector<float> lg((size_t)S * V), u = { 0.0f, 0.2f, 0.41f, 0.63f, 0.85f, 0.97f };
        for (float &f : lg) f = levels[(int)(urand() * 6)];
        check_sample("ties", lg, S, V, u, 1.0f, 10, 1.0f);
        check_sample("ties", lg, S, V, u, 1.0f, 777, 1.0f);
        check_sample("ties", lg, S, V, u, 1.0f, 0, 0.13f);
        check_sample("ties", lg, S, V, u, 0.6f, 1500, 0.42f);
        check_sample("ties", lg, S, V, u, 1.0f, 1, 1.0f);
        check_sample("ties", lg, S, V, u, 1.0f, 10, 0.55f); /* top_p cuts top_k's tie group */
        check_sample("ties", lg, S, V, u, 1.0f, 10, 0.99f); /* ... or keeps all of it */
        check_sample("ties", lg, S, V, u, 1.0f, V - 1, 1.0f);
        check_sample("ties-argmax", lg, S, V, u, 0.0f, 0, 1.0f);
    }
}

int main(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        printf("skipped: no CUDA device (%s)\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
        printf("0 passed, 0 failed\n");
        return 0;
    }
    const int HSs[] = { 64, 128, 32, 96 };
    const int heads[][2] = { { 4, 2 }, { 4, 4 } };
#ifndef CEL_CUDA_EMU
    const int Ts[] = { 1, 7, 70, 130 };
    for (int HS : HSs)
        for (const auto &hd : heads)
            for (int T : Ts) check_attention(2, T, hd[0], hd[1], HS);
    check_attention(1, 300, 8, 2, 64);  /* many tiles, groups of 4 */
    check_attention(1, 200, 4, 1, 128); /* one kv head */
#else
    /* tests/cuda-emu runs every thread on the CPU: each shape still spans several tiles */
    const int Ts[] = { 1, 7, 70 };
    for (int HS : HSs)
        for (const auto &hd : heads)
            for (int T : Ts) check_attention(2, T, hd[0], hd[1], HS);
    check_attention(1, 130, 8, 2, 64); /* three query tiles, groups of 4 */
    check_attention(1, 97, 4, 1, 128); /* one kv head */
#endif
    check_attention(2, 45, 2, 1, 80);  /* HS not a multiple of 32 */
    check_attention(1, 33, 2, 2, 256); /* the largest head */
    check_attention(1, 9, 3, 3, 2);    /* the smallest head */
    for (int HS : HSs)
        for (const auto &hd : heads) check_decode(hd[0], hd[1], HS);
    check_decode(8, 2, 80);
    check_decode(2, 1, 256);
    check_sampling();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
