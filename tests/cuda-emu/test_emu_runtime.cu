/* test_emu_runtime.cu -- the CUDA emulator's own tests: semantics, and that every check fires.
 *
 * Built only against the emulator (build/cuda-emu/test_emu_runtime, checked like the
 * backend). Semantics: bf16 conversions against an independent formula (every float whose
 * low half is one of 16 patterns, for every high half, plus a strided sweep of all 2^32),
 * in a kernel too; warp shuffles (idx, up, down, xor; widths 32, 16, 8) and votes against
 * PTX's lane rules; __syncthreads ordering a block; atomics; blocks out of index order;
 * dynamic shared memory; launch configuration limits; stream order, events, the legacy
 * stream; cuBLAS GEMMs (every transpose, leading dimensions, batches, bf16 and fp32
 * outputs) against a double loop, and the argument checks cuBLAS makes. Checks: each kind
 * of error the emulator reports is provoked once by a small kernel (out of bounds, use
 * after free, a double cudaFree, uninitialised reads, shared-memory races across warps and
 * within one, a host pointer in a kernel, a host dereference of device memory, a host read
 * before the stream is synchronised, a warp collective some lanes never reach) and must be
 * reported, with the launch failing where a device would fail it; the correct twin of each
 * must report nothing. Prints one line per check and "N passed, N failed"; exit 1 on a
 * failure.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

static int g_pass, g_fail;

static void result(bool ok, const char *name, const char *detail = "") {
    printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", name, *detail ? ": " : "", detail);
    ok ? g_pass++ : g_fail++;
}

/* Errors reported since the last call: must be exactly the kinds in want (0: none). */
static void expect_errors(const char *name, unsigned want) {
    unsigned kinds = 0;
    uint64_t n = cel_emu::test_take_errors(&kinds);
    char d[96];
    snprintf(d, sizeof d, "%llu errors, kinds 0x%x, want 0x%x", (unsigned long long)n, kinds, want);
    result(want ? (n > 0 && kinds == want) : n == 0, name, d);
}

#define BIT(k) (1u << cel_emu::k)

/* ---------------------------------------------------------------- bf16 */

/* Nearest bf16 by comparing distances in double; ties to the even mantissa. */
static uint16_t ref_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    if ((u & 0xffffu) == 0) return (uint16_t)(u >> 16);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1); /* magnitude down / up */
    uint32_t lu = (uint32_t)lo << 16, hu = (uint32_t)hi << 16;
    float lf, hf;
    memcpy(&lf, &lu, 4);
    memcpy(&hf, &hu, 4);
    double dl = fabs((double)f - (double)lf);
    double dh = (hu & 0x7fffffffu) >= 0x7f800000u
                    ? fabs(ldexp(1.0, 128) * (f < 0 ? -1 : 1) - (double)f) /* past the max: inf */
                    : fabs((double)hf - (double)f);
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1) ? hi : lo;
}

static __global__ void bf16_kernel(__nv_bfloat16 *out, const float *in, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(in[i]);
}

static void test_bf16() {
    const uint16_t lows[] = { 0x0000, 0x0001, 0x3fff, 0x4000, 0x7ffe, 0x7fff, 0x8000, 0x8001,
                              0x8002, 0xbfff, 0xc000, 0xfffe, 0xffff, 0x1234, 0x9abc, 0x7f00 };
    uint64_t bad = 0, n = 0, rt_bad = 0;
    for (uint32_t hi = 0; hi < 0x10000; hi++)
        for (uint16_t lo : lows) {
            uint32_t u = hi << 16 | lo;
            float f;
            memcpy(&f, &u, 4);
            n++;
            if (__bfloat16_as_ushort(__float2bfloat16_rn(f)) != ref_bf16(f)) bad++;
            if (lo == 0 && !isnan(f) && __bfloat162float(__float2bfloat16_rn(f)) != f) rt_bad++;
        }
    for (uint64_t u = 0; u < (1ull << 32); u += 65521) {
        uint32_t v = (uint32_t)u;
        float f;
        memcpy(&f, &v, 4);
        n++;
        if (__bfloat16_as_ushort(__float2bfloat16_rn(f)) != ref_bf16(f)) bad++;
    }
    char d[96];
    snprintf(d, sizeof d, "%llu of %llu differ, %llu round trips", (unsigned long long)bad,
             (unsigned long long)n, (unsigned long long)rt_bad);
    result(bad == 0 && rt_bad == 0, "bf16 round to nearest even (host)", d);
    /* the special cases by value */
    result(__bfloat16_as_ushort(__float2bfloat16_rn(3.4028235e38f)) == 0x7f80 &&
               __bfloat16_as_ushort(__float2bfloat16_rn(NAN)) == 0x7fff &&
               __bfloat16_as_ushort(__float2bfloat16_rn(-0.0f)) == 0x8000 &&
               __bfloat16_as_ushort(__float2bfloat16_rn(1e-40f)) == ref_bf16(1e-40f) &&
               __bfloat16_as_ushort(__float2bfloat16_rz(1.0f + 0x1p-8f * 1.5f)) == 0x3f80 &&
               __bfloat16_as_ushort(__float2bfloat16_rn(1.0f + 0x1p-8f * 1.5f)) == 0x3f81,
           "bf16 overflow to inf, canonical NaN, -0, subnormal, rz vs rn");
    /* the same conversion inside a kernel */
    int N = 4099;
    std::vector<float> x(N);
    for (int i = 0; i < N; i++) {
        uint32_t u = 0x3f800000u + (uint32_t)i * 0x8000u + (i % 3 ? 0x8000u : 0x7fffu);
        memcpy(&x[i], &u, 4);
    }
    float *dx;
    __nv_bfloat16 *dy;
    cudaMalloc((void **)&dx, N * 4);
    cudaMalloc((void **)&dy, N * 2);
    cudaMemcpy(dx, x.data(), N * 4, cudaMemcpyHostToDevice);
    bf16_kernel<<<(N + 255) / 256, 256>>>(dy, dx, N);
    std::vector<uint16_t> y(N);
    cudaMemcpy(y.data(), dy, N * 2, cudaMemcpyDeviceToHost);
    int kbad = 0;
    for (int i = 0; i < N; i++) kbad += y[i] != ref_bf16(x[i]);
    result(kbad == 0 && cudaGetLastError() == cudaSuccess, "bf16 conversion in a kernel");
    cudaFree(dx);
    cudaFree(dy);
    expect_errors("bf16: no checker reports", 0);
}

/* ---------------------------------------------------------------- warps, barriers, atomics */

/* out[op][tid]: each lane's result of op with argument arg (lanes own tid * 10 + 1). */
static __global__ void shfl_kernel(int *out, int arg, int width) {
    int t = threadIdx.x, v = t * 10 + 1, n = blockDim.x;
    out[0 * n + t] = __shfl_sync(0xffffffffu, v, arg, width);
    out[1 * n + t] = __shfl_up_sync(0xffffffffu, v, arg, width);
    out[2 * n + t] = __shfl_down_sync(0xffffffffu, v, arg, width);
    out[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, arg, width);
    out[4 * n + t] = (int)__ballot_sync(0xffffffffu, (t * 7) % 5 == 1);
    out[5 * n + t] = __any_sync(0xffffffffu, t == 37) * 2 + __all_sync(0xffffffffu, t < 1000);
}

static void test_shuffles() {
    const int n = 64, args[][2] = { { 3, 32 }, { 1, 32 }, { 16, 32 }, { 5, 16 },
                                    { 2, 8 },  { 8, 8 },  { 0, 32 } };
    int *d;
    cudaMalloc((void **)&d, 6 * n * sizeof(int));
    int bad = 0;
    for (const auto &a : args) {
        shfl_kernel<<<1, n>>>(d, a[0], a[1]);
        std::vector<int> h(6 * n);
        cudaMemcpy(h.data(), d, h.size() * sizeof(int), cudaMemcpyDeviceToHost);
        int arg = a[0], w = a[1];
        for (int t = 0; t < n; t++) {
            int lane = t % 32, seg = lane & ~(w - 1), base = t - lane;
            int idx = seg + (arg & (w - 1));
            int up = lane - arg >= seg ? lane - arg : lane;
            int dn = lane + arg < seg + w ? lane + arg : lane;
            int x = lane ^ arg, xr = x < seg + w ? x : lane; /* earlier groups reachable */
            unsigned ballot = 0;
            for (int l = 0; l < 32; l++) ballot |= (unsigned)(((base + l) * 7) % 5 == 1) << l;
            int anyall = (base <= 37 && 37 < base + 32) * 2 + 1;
            int want[6] = { (base + idx) * 10 + 1, (base + up) * 10 + 1, (base + dn) * 10 + 1,
                            (base + xr) * 10 + 1,  (int)ballot,          anyall };
            for (int o = 0; o < 6; o++) bad += h[o * n + t] != want[o];
        }
    }
    cudaFree(d);
    char det[64];
    snprintf(det, sizeof det, "%d wrong lanes", bad);
    result(bad == 0, "warp shuffles and votes follow the lane rules", det);
    expect_errors("shuffles: no checker reports", 0);
}

/* Each thread writes its slot, waits, reads its neighbour's: only a real barrier works. */
static __global__ void barrier_kernel(int *out) {
    __shared__ int s[256];
    int t = threadIdx.x, n = blockDim.x;
    for (int round = 0; round < 3; round++) {
        s[t] = t * 100 + round;
        __syncthreads();
        out[round * n + t] = s[(t + 33) % n];
        __syncthreads();
    }
}

/* Each block appends its index: the order blocks ran in. */
static __global__ void order_kernel(unsigned *next, unsigned *order) {
    if (threadIdx.x == 0) order[atomicAdd(next, 1u)] = blockIdx.x;
}

static __global__ void atomic_kernel(unsigned *count, float *sum, double *dsum) {
    atomicAdd(count, 1u);
    atomicAdd(sum, 0.5f);
    atomicAdd(dsum, 0.25);
}

static __global__ void dyn_kernel(float *out, int n) {
    extern __shared__ float buf[];
    int t = threadIdx.x;
    for (int i = t; i < n; i += blockDim.x) buf[i] = (float)i;
    __syncthreads();
    if (t == 0) out[blockIdx.x] = buf[n - 1] + buf[n / 2];
}

static void test_block() {
    int n = 256, *d;
    cudaMalloc((void **)&d, 3 * n * sizeof(int));
    barrier_kernel<<<2, n>>>(d);
    std::vector<int> h(3 * n);
    cudaMemcpy(h.data(), d, h.size() * 4, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int r = 0; r < 3; r++)
        for (int t = 0; t < n; t++) bad += h[r * n + t] != ((t + 33) % n) * 100 + r;
    result(bad == 0, "__syncthreads orders a block's shared-memory writes and reads");
    cudaFree(d);

    unsigned *cnt;
    float *sum;
    double *dsum;
    cudaMalloc((void **)&cnt, 4);
    cudaMalloc((void **)&sum, 4);
    cudaMalloc((void **)&dsum, 8);
    cudaMemset(cnt, 0, 4);
    cudaMemset(sum, 0, 4);
    cudaMemset(dsum, 0, 8);
    atomic_kernel<<<dim3(3, 2), dim3(32, 3)>>>(cnt, sum, dsum);
    unsigned hc = 0;
    float hs = 0;
    double hd = 0;
    cudaMemcpy(&hc, cnt, 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(&hs, sum, 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(&hd, dsum, 8, cudaMemcpyDeviceToHost);
    result(hc == 576 && hs == 288.0f && hd == 144.0, "atomics over a 2-d grid of 2-d blocks");
    const unsigned nb = 50;
    unsigned *order;
    cudaMalloc((void **)&order, nb * 4);
    cudaMemset(cnt, 0, 4);
    order_kernel<<<nb, 32>>>(cnt, order);
    std::vector<unsigned> ran(nb);
    cudaMemcpy(ran.data(), order, nb * 4, cudaMemcpyDeviceToHost);
    std::vector<int> seen(nb, 0);
    int sorted = 1, each_once = 1;
    for (unsigned i = 0; i < nb; i++) {
        each_once &= ran[i] < nb && !seen[ran[i]]++;
        sorted &= ran[i] == i;
    }
    result(each_once && !sorted, "every block runs once, not in index order");
    cudaFree(order);
    cudaFree(cnt);
    cudaFree(sum);
    cudaFree(dsum);

    float *o;
    cudaMalloc((void **)&o, 2 * 4);
    int big = 60 * 1024 / 4;
    dyn_kernel<<<2, 128, big * 4>>>(o, big);
    bool refused = cudaGetLastError() == cudaErrorInvalidValue;
    cudaFuncSetAttribute(dyn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, big * 4);
    dyn_kernel<<<2, 128, big * 4>>>(o, big);
    float ho[2] = { 0, 0 };
    cudaMemcpy(ho, o, 8, cudaMemcpyDeviceToHost);
    float want = (float)(big - 1) + (float)(big / 2);
    result(refused && ho[0] == want && ho[1] == want,
           "60 KB of dynamic shared memory: refused, then allowed after cudaFuncSetAttribute");
    dyn_kernel<<<1, 128, 100 * 1024>>>(o, 16);
    result(cudaGetLastError() == cudaErrorInvalidValue, "100 KB of shared memory is refused");
    dyn_kernel<<<1, 2048, 0>>>(o, 16);
    cudaError_t e1 = cudaGetLastError();
    dyn_kernel<<<dim3(1, 70000), 32, 0>>>(o, 16);
    cudaError_t e2 = cudaGetLastError();
    dyn_kernel<<<0, 32, 0>>>(o, 16);
    cudaError_t e3 = cudaGetLastError();
    result(e1 == cudaErrorInvalidConfiguration && e2 == cudaErrorInvalidConfiguration &&
               e3 == cudaErrorInvalidConfiguration,
           "2048 threads, gridDim.y 70000 and an empty grid are invalid configurations");
    cudaFree(o);
    expect_errors("block tests: no checker reports", 0);
}

/* ---------------------------------------------------------------- streams */

static __global__ void add_kernel(float *x, float v, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        x[i] = x[i] * 2.0f + v;
}

static void test_streams() {
    int n = 1000;
    float *d;
    cudaMalloc((void **)&d, n * 4);
    cudaStream_t a, b;
    cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
    cudaEvent_t ev;
    cudaEventCreate(&ev);
    cudaMemsetAsync(d, 0, n * 4, a);
    add_kernel<<<4, 64, 0, a>>>(d, 1.0f, n);
    cudaEventRecord(ev, a);
    cudaStreamWaitEvent(b, ev, 0);
    add_kernel<<<4, 64, 0, b>>>(d, 3.0f, n); /* after a's: (0*2+1)*2+3 = 5 */
    float *h = (float *)malloc(n * 4);
    cudaMemcpyAsync(h, d, n * 4, cudaMemcpyDeviceToHost, b);
    cudaStreamSynchronize(b);
    int bad = 0;
    for (int i = 0; i < n; i++) bad += h[i] != 5.0f;
    result(bad == 0, "an event orders two non-blocking streams");
    /* the legacy stream does not wait for a non-blocking stream's queued work */
    add_kernel<<<4, 64, 0, a>>>(d, 1.0f, n);
    float first = -1;
    cudaMemcpy(&first, d, 4, cudaMemcpyDeviceToHost);
    cudaStreamSynchronize(a);
    float after = -1;
    cudaMemcpy(&after, d, 4, cudaMemcpyDeviceToHost);
    result(first == 5.0f && after == 11.0f,
           "a synchronous cudaMemcpy does not wait for a non-blocking stream");
    cudaEventDestroy(ev);
    cudaStreamDestroy(a);
    cudaStreamDestroy(b);
    free(h);
    cudaFree(d);
    expect_errors("streams: no checker reports", 0);
}

/* ---------------------------------------------------------------- the checks fire */

static __global__ void read_kernel(float *out, const float *in, int i) { out[0] = in[i]; }
static __global__ void write_kernel(float *p, int i) { p[i] = 1.0f; }

static __global__ void shared_oob_kernel(float *out, int i) {
    __shared__ float part[32];
    part[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = part[i];
}

static __global__ void dyn_oob_kernel(float *out, int i) {
    extern __shared__ float buf[];
    buf[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = buf[i];
}

static __global__ void shared_uninit_kernel(float *out) {
    __shared__ float s[64];
    if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x]; /* threads 32..63 read what nobody wrote */
}

/* sync 1: with the barrier; 0: without it (threads read another warp's slot) */
static __global__ void race_kernel(float *out, int sync) {
    __shared__ float s[64];
    s[threadIdx.x] = 0.0f;
    __syncthreads();
    s[threadIdx.x] = (float)threadIdx.x;
    if (sync) __syncthreads();
    out[threadIdx.x] = s[threadIdx.x ^ 32];
}

/* sync 1: __syncwarp between a lane's write and its neighbour's read; 0: none */
static __global__ void warp_race_kernel(float *out, int sync) {
    __shared__ float s[32];
    s[threadIdx.x] = 0.0f;
    __syncthreads();
    s[threadIdx.x] = (float)threadIdx.x;
    if (sync) __syncwarp();
    out[threadIdx.x] = s[(threadIdx.x + 1) & 31];
}

/* Lanes 0..15 call a full-mask shuffle the other lanes never reach. */
static __global__ void deadlock_kernel(float *out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

static void test_checks() {
    cel_emu::test_quiet(true);
    float *out, *in;
    cudaMalloc((void **)&out, 64 * 4);
    cudaMalloc((void **)&in, 37 * 4);
    cudaMemset(in, 0, 37 * 4);
    cudaMemset(out, 0, 64 * 4);

    read_kernel<<<1, 1>>>(out, in, 36);
    result(cudaDeviceSynchronize() == cudaSuccess, "in-bounds read runs");
    expect_errors("in-bounds read: nothing reported", 0);

    read_kernel<<<1, 1>>>(out, in, 37);
    result(cudaDeviceSynchronize() == cudaErrorIllegalAddress,
           "reading one float past an allocation fails the launch");
    expect_errors("... and is reported out of bounds", BIT(E_OOB_GLOBAL));

    write_kernel<<<1, 1>>>(in, -1);
    result(cudaDeviceSynchronize() == cudaErrorIllegalAddress,
           "writing before an allocation fails");
    expect_errors("... reported out of bounds", BIT(E_OOB_GLOBAL));

    float *fresh;
    cudaMalloc((void **)&fresh, 8 * 4);
    read_kernel<<<1, 1>>>(out, fresh, 3);
    result(cudaDeviceSynchronize() == cudaSuccess, "reading fresh memory runs (as on a device)");
    expect_errors("... and is reported uninitialised", BIT(E_UNINIT_GLOBAL));
    cudaFree(fresh);
    read_kernel<<<1, 1>>>(out, fresh, 3);
    cudaDeviceSynchronize();
    expect_errors("reading freed memory is a use after free", BIT(E_FREED));
    result(cudaFree(fresh) == cudaErrorInvalidValue, "freeing it again is refused");
    expect_errors("... and reported", BIT(E_FREED));

    shared_oob_kernel<<<1, 32>>>(out, 31);
    cudaDeviceSynchronize();
    expect_errors("static shared memory in bounds: nothing reported", 0);
    shared_oob_kernel<<<1, 32>>>(out, 32);
    result(cudaDeviceSynchronize() == cudaErrorIllegalAddress,
           "static shared memory one past the end fails the launch");
    expect_errors("... reported as a shared out-of-bounds access", BIT(E_OOB_SHARED));
    dyn_oob_kernel<<<1, 32, 32 * 4>>>(out, 32);
    cudaDeviceSynchronize();
    expect_errors("dynamic shared memory one past its size is out of bounds", BIT(E_OOB_SHARED));

    shared_uninit_kernel<<<1, 64>>>(out);
    cudaDeviceSynchronize();
    expect_errors("a shared word nobody wrote is an uninitialised read", BIT(E_UNINIT_SHARED));

    race_kernel<<<1, 64>>>(out, 1);
    cudaDeviceSynchronize();
    expect_errors("write, __syncthreads, read across warps: no race", 0);
    race_kernel<<<1, 64>>>(out, 0);
    cudaDeviceSynchronize();
    expect_errors("the same without __syncthreads is a race", BIT(E_RACE));
    warp_race_kernel<<<1, 32>>>(out, 1);
    cudaDeviceSynchronize();
    expect_errors("write, __syncwarp, read within a warp: no race", 0);
    warp_race_kernel<<<1, 32>>>(out, 0);
    cudaDeviceSynchronize();
    expect_errors("the same without __syncwarp is a race", BIT(E_RACE));

    float host_buf[4] = { 1, 2, 3, 4 };
    read_kernel<<<1, 1>>>(out, host_buf, 0);
    result(cudaDeviceSynchronize() == cudaErrorIllegalAddress, "a host pointer in a kernel fails");
    expect_errors("... reported as host memory read by a kernel", BIT(E_HOST_FROM_KERNEL));

    deadlock_kernel<<<1, 32>>>(out);
    result(cudaDeviceSynchronize() == cudaErrorLaunchFailure,
           "a shuffle half the warp never reaches fails the launch");
    expect_errors("... reported as a deadlock", BIT(E_DEADLOCK));

    /* host code (this file is checked too) */
    volatile float peek = ((volatile float *)in)[0];
    (void)peek;
    expect_errors("host code dereferencing device memory is reported", BIT(E_DEVICE_FROM_HOST));

    cudaStream_t st;
    cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    cudaMemsetAsync(in, 0, 4, st);
    add_kernel<<<1, 32, 0, st>>>(in, 7.0f, 1);
    float *h = (float *)malloc(4);
    cudaMemcpyAsync(h, in, 4, cudaMemcpyDeviceToHost, st);
    float early = ((volatile float *)h)[0];
    cudaStreamSynchronize(st);
    float late = ((volatile float *)h)[0];
    result(isnan(early) && late == 7.0f, "before the stream sync the copy's destination is poison");
    expect_errors("... and reading it then is reported", BIT(E_UNSYNCED_HOST));
    free(h);
    cudaStreamDestroy(st);

    result(cudaMemcpy(out, in, 65 * 4, cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue &&
               cudaMemcpy(host_buf, in, 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue &&
               cudaMemset(in, 0, 38 * 4) == cudaErrorInvalidValue,
           "copies and memsets past an allocation, or the wrong direction, are refused");
    cudaGetLastError();
    cudaFree(out);
    cudaFree(in);
    expect_errors("refused copies report nothing", 0);
    cel_emu::test_quiet(false);
}

/* ---------------------------------------------------------------- cuBLAS */

static void test_blas() {
    cublasHandle_t h;
    result(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
    const int m = 13, n = 9, k = 21, batch = 3;
    float alpha = 0.5f, beta = -2.0f, zero = 0.0f;
    int bad = 0, cases = 0;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int out16 = 0; out16 < 2; out16++) {
                int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
                int lda = ar + 2, ldb = br + 3, ldc = m + 1;
                long long sa = (long long)lda * ac + 5, sb = (long long)ldb * bc + 7,
                          sc = (long long)ldc * n + 3;
                std::vector<uint16_t> A(sa * batch), B(sb * batch);
                std::vector<float> Cf(sc * batch);
                for (size_t i = 0; i < A.size(); i++)
                    A[i] = __bfloat16_as_ushort(__float2bfloat16_rn(sinf((float)i * 0.37f)));
                for (size_t i = 0; i < B.size(); i++)
                    B[i] = __bfloat16_as_ushort(__float2bfloat16_rn(cosf((float)i * 0.21f)));
                for (size_t i = 0; i < Cf.size(); i++)
                    Cf[i] = out16 ? __bfloat162float(__float2bfloat16_rn((float)(i % 7) - 3.0f))
                                  : (float)(i % 7) - 3.0f;
                void *dA, *dB, *dC;
                size_t ces = out16 ? 2 : 4;
                cudaMalloc(&dA, A.size() * 2);
                cudaMalloc(&dB, B.size() * 2);
                cudaMalloc(&dC, Cf.size() * ces);
                cudaMemcpy(dA, A.data(), A.size() * 2, cudaMemcpyHostToDevice);
                cudaMemcpy(dB, B.data(), B.size() * 2, cudaMemcpyHostToDevice);
                std::vector<uint16_t> C16(Cf.size());
                for (size_t i = 0; i < Cf.size(); i++)
                    C16[i] = __bfloat16_as_ushort(__float2bfloat16_rn(Cf[i]));
                cudaMemcpy(dC, out16 ? (void *)C16.data() : (void *)Cf.data(), Cf.size() * ces,
                           cudaMemcpyHostToDevice);
                cublasStatus_t s = cublasGemmStridedBatchedEx(
                    h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                    &alpha, dA, CUDA_R_16BF, lda, sa, dB, CUDA_R_16BF, ldb, sb, &beta, dC,
                    out16 ? CUDA_R_16BF : CUDA_R_32F, ldc, sc, batch, CUBLAS_COMPUTE_32F,
                    CUBLAS_GEMM_DEFAULT);
                std::vector<float> got(Cf.size());
                std::vector<uint16_t> got16(Cf.size());
                cudaMemcpy(out16 ? (void *)got16.data() : (void *)got.data(), dC, Cf.size() * ces,
                           cudaMemcpyDeviceToHost);
                if (out16)
                    for (size_t i = 0; i < got.size(); i++) {
                        uint32_t u = (uint32_t)got16[i] << 16;
                        memcpy(&got[i], &u, 4);
                    }
                bad += s != CUBLAS_STATUS_SUCCESS;
                for (int bi = 0; bi < batch; bi++)
                    for (int j = 0; j < n; j++)
                        for (int i = 0; i < m; i++) {
                            double acc = 0;
                            for (int p = 0; p < k; p++) {
                                size_t ai =
                                    bi * sa + (ta ? p + (size_t)i * lda : i + (size_t)p * lda);
                                size_t bj =
                                    bi * sb + (tb ? j + (size_t)p * ldb : p + (size_t)j * ldb);
                                uint32_t ua = (uint32_t)A[ai] << 16, ub = (uint32_t)B[bj] << 16;
                                float fa, fb;
                                memcpy(&fa, &ua, 4);
                                memcpy(&fb, &ub, 4);
                                acc += (double)fa * fb;
                            }
                            size_t ci = bi * sc + i + (size_t)j * ldc;
                            double want =
                                alpha * acc +
                                beta * (out16 ? __bfloat162float(__ushort_as_bfloat16(C16[ci]))
                                              : Cf[ci]);
                            double tol =
                                out16 ? 0x1p-8 * fabs(want) + 1e-5 : 1e-5 * (1 + fabs(want));
                            bad += fabs(got[ci] - want) > tol;
                            cases++;
                        }
                /* padding between columns and batches untouched */
                for (int bi = 0; bi < batch; bi++)
                    for (int j = 0; j < n; j++) {
                        size_t ci = bi * sc + m + (size_t)j * ldc;
                        float want =
                            out16 ? __bfloat162float(__ushort_as_bfloat16(C16[ci])) : Cf[ci];
                        bad += got[ci] != want;
                    }
                cudaFree(dA);
                cudaFree(dB);
                cudaFree(dC);
            }
    char d[64];
    snprintf(d, sizeof d, "%d of %d elements off", bad, cases);
    result(bad == 0, "cublasGemmStridedBatchedEx: every transpose, bf16 and fp32 C", d);

    /* beta 0 never reads C: NaN (and never-written) C is fine */
    void *dA, *dC;
    cudaMalloc(&dA, 64 * 2);
    cudaMalloc(&dC, 64 * 4);
    cudaMemset(dA, 0, 64 * 2);
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &alpha, dA, CUDA_R_16BF, 4, dA, CUDA_R_16BF,
                 4, &zero, dC, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    float c0 = -1;
    cudaMemcpy(&c0, dC, 4, cudaMemcpyDeviceToHost);
    result(c0 == 0.0f, "beta 0 over uninitialised C");
    expect_errors("... reads nothing uninitialised", 0);
    cel_emu::test_quiet(true);
    void *dC2;
    cudaMalloc(&dC2, 64 * 4);
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &alpha, dA, CUDA_R_16BF, 4, dA, CUDA_R_16BF,
                 4, &beta, dC2, CUDA_R_32F, 4, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    cudaDeviceSynchronize();
    expect_errors("beta != 0 over uninitialised C is reported", BIT(E_UNINIT_GLOBAL));
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 16, 4, 4, &alpha, dA, CUDA_R_16BF, 32, dA,
                 CUDA_R_16BF, 4, &zero, dC2, CUDA_R_32F, 16, CUBLAS_COMPUTE_32F,
                 CUBLAS_GEMM_DEFAULT);
    result(cudaDeviceSynchronize() == cudaErrorIllegalAddress, "a GEMM reading past A fails");
    expect_errors("... reported out of bounds", BIT(E_OOB_GLOBAL));
    cel_emu::test_quiet(false);

    /* the statuses cuBLAS returns for bad arguments */
    struct {
        const char *what;
        cublasOperation_t ta, tb;
        int m, n, k, lda, ldb, ldc;
        cudaDataType at, ct;
        cublasStatus_t want;
    } cases_[] = {
        { "lda < m (no transpose)", CUBLAS_OP_N, CUBLAS_OP_N, 8, 4, 4, 7, 4, 8, CUDA_R_16BF,
          CUDA_R_32F, CUBLAS_STATUS_INVALID_VALUE },
        { "lda < k (A transposed)", CUBLAS_OP_T, CUBLAS_OP_N, 8, 4, 6, 5, 6, 8, CUDA_R_16BF,
          CUDA_R_32F, CUBLAS_STATUS_INVALID_VALUE },
        { "ldb < n (B transposed)", CUBLAS_OP_N, CUBLAS_OP_T, 8, 4, 4, 8, 3, 8, CUDA_R_16BF,
          CUDA_R_32F, CUBLAS_STATUS_INVALID_VALUE },
        { "ldc < m", CUBLAS_OP_N, CUBLAS_OP_N, 8, 4, 4, 8, 4, 7, CUDA_R_16BF, CUDA_R_32F,
          CUBLAS_STATUS_INVALID_VALUE },
        { "negative k", CUBLAS_OP_N, CUBLAS_OP_N, 8, 4, -1, 8, 4, 8, CUDA_R_16BF, CUDA_R_32F,
          CUBLAS_STATUS_INVALID_VALUE },
        { "bad operation", (cublasOperation_t)7, CUBLAS_OP_N, 8, 4, 4, 8, 4, 8, CUDA_R_16BF,
          CUDA_R_32F, CUBLAS_STATUS_INVALID_VALUE },
        { "bf16 A with fp64 C", CUBLAS_OP_N, CUBLAS_OP_N, 8, 4, 4, 8, 4, 8, CUDA_R_16BF, CUDA_R_64F,
          CUBLAS_STATUS_NOT_SUPPORTED },
        { "m = 0 is a no-op", CUBLAS_OP_N, CUBLAS_OP_N, 0, 4, 4, 1, 4, 1, CUDA_R_16BF, CUDA_R_32F,
          CUBLAS_STATUS_SUCCESS },
    };
    for (const auto &c : cases_) {
        cublasStatus_t s =
            cublasGemmEx(h, c.ta, c.tb, c.m, c.n, c.k, &alpha, dA, c.at, c.lda, dA, CUDA_R_16BF,
                         c.ldb, &beta, dC, c.ct, c.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        char name[96];
        snprintf(name, sizeof name, "cublasGemmEx refuses: %s", c.what);
        result(s == c.want, name, cublasGetStatusName(s));
    }
    result(cublasGemmEx(NULL, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &alpha, dA, CUDA_R_16BF, 1, dA,
                        CUDA_R_16BF, 1, &beta, dC, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_INITIALIZED,
           "cublasGemmEx refuses a NULL handle");
    cudaDeviceSynchronize();
    cudaFree(dA);
    cudaFree(dC);
    cudaFree(dC2);
    cublasDestroy(h);
    expect_errors("refused GEMMs run nothing and report nothing", 0);
}

int main(void) {
    test_bf16();
    test_shuffles();
    test_block();
    test_streams();
    test_checks();
    test_blas();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
