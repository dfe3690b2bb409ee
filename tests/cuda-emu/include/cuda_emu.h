/* cuda_emu.h -- the CUDA subset celeriac's backend uses, for the host C++ compiler.
 *
 * Test code only (tests/cuda-emu/): with cu2cpp.py's three rewrites, model/cuda's and
 * tests/gpu's .cu files compile with g++ or clang++ against this header and run on the CPU in
 * tests/cuda-emu/emu_*.cpp. Here: the qualifiers, the index variables (calls into the
 * runtime: each CUDA thread is a fiber of the one host thread that runs a block), dim3 and
 * the vector types, __syncthreads/__syncwarp, the warp shuffles and votes, atomics,
 * __nv_bfloat16 with the hardware's conversions, the intrinsics the kernels use, the launch
 * template that cu2cpp's ::cel_emu::launch calls go to, and the runtime API's types and
 * functions (cuda_runtime.h, cuda_bf16.h, cublas_v2.h and library_types.h include this).
 * Every memory access of code compiled with -fsanitize=kernel-address reaches the runtime's
 * checker (emu_check.cpp); nothing here touches device memory itself.
 */
#ifndef CEL_CUDA_EMU_H
#define CEL_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

#define CEL_CUDA_EMU   1
#define CUDART_VERSION 13000

/* ---------------------------------------------------------------- qualifiers */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__    __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __restrict__ __restrict
/* cu2cpp.py rewrites every __shared__ declaration; one left over fails to compile. */
#define __shared__   __shared___was_not_rewritten_by_cu2cpp
#define __constant__ __constant___is_not_emulated

static constexpr int warpSize = 32;

/* ---------------------------------------------------------------- vector types */

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};
static inline float2 make_float2(float x, float y) { return { x, y }; }
static inline float4 make_float4(float x, float y, float z, float w) { return { x, y, z, w }; }
static inline int2 make_int2(int x, int y) { return { x, y }; }
static inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return { x, y, z }; }

/* ---------------------------------------------------------------- runtime API types */

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchFailure = 719,
    cudaErrorUnknown = 999
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};

enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9
};

#define cudaStreamDefault      0x00u
#define cudaStreamNonBlocking  0x01u
#define cudaEventDefault       0x00u
#define cudaEventBlockingSync  0x01u
#define cudaEventDisableTiming 0x02u
#define cudaStreamLegacy       ((cudaStream_t)0x1)

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int major, minor;
    int multiProcessorCount;
    int maxThreadsPerMultiProcessor;
    size_t sharedMemPerMultiprocessor;
};

extern "C" {
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaDeviceReset(void);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind,
                            cudaStream_t st);
cudaError_t cudaMemset(void *p, int value, size_t n);
cudaError_t cudaMemsetAsync(void *p, int value, size_t n, cudaStream_t st);
cudaError_t cudaStreamCreate(cudaStream_t *st);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t st);
cudaError_t cudaStreamSynchronize(cudaStream_t st);
cudaError_t cudaStreamQuery(cudaStream_t st);
cudaError_t cudaStreamWaitEvent(cudaStream_t st, cudaEvent_t ev, unsigned int flags);
cudaError_t cudaEventCreate(cudaEvent_t *ev);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t ev);
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st);
cudaError_t cudaEventSynchronize(cudaEvent_t ev);
cudaError_t cudaEventQuery(cudaEvent_t ev);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value);
}

/* The C++ overload CUDA's headers give for kernels passed by name. */
template <typename T>
static inline cudaError_t cudaFuncSetAttribute(T *func, enum cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute(reinterpret_cast<const void *>(func), attr, value);
}

/* ---------------------------------------------------------------- the emulator's runtime */

namespace cel_emu {

/* Index variables of the calling CUDA thread (a fiber). */
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();

/* Barriers; the call site is taken from the return address. */
void syncthreads();
void syncwarp(unsigned mask);

enum { W_SHFL_IDX, W_SHFL_UP, W_SHFL_DOWN, W_SHFL_XOR, W_BALLOT, W_ANY, W_ALL, W_SYNC };
/* One warp collective: blocks until every lane of mask has arrived at it. */
uint64_t warp_op(int op, unsigned mask, uint64_t bits, int arg, int width);

/* The block's shared memory: the dynamic part, and one static variable (key: the address
 * of a static char unique to the declaration). */
void *shared_dynamic();
void *shared_static(const void *key, size_t size, size_t align);

/* Atomics on device or shared memory (checked like any access). */
float atomic_add_f32(float *p, float v);
double atomic_add_f64(double *p, double v);
uint32_t atomic_op_u32(uint32_t *p, int op, uint32_t v, uint32_t cmp);
uint64_t atomic_op_u64(uint64_t *p, int op, uint64_t v, uint64_t cmp);
int32_t atomic_op_i32(int32_t *p, int op, int32_t v, int32_t cmp);
enum { A_ADD, A_MIN, A_MAX, A_EXCH, A_CAS, A_AND, A_OR, A_XOR };

/* A launch's configuration, as written between <<< and >>>. */
struct launch_cfg {
    dim3 grid, block;
    size_t smem;
    cudaStream_t st;
};
static inline launch_cfg cfg(dim3 g, dim3 b, size_t smem = 0, cudaStream_t st = 0) {
    return launch_cfg{ g, b, smem, st };
}

/* A launched kernel with its arguments; run() runs the calling fiber's thread. The
 * arguments live in this object: kernels may read it (the checker allows its range). */
struct kernel_job {
    virtual ~kernel_job() {}
    virtual void run() = 0;
    virtual size_t size() const = 0;
};

/* Validates the configuration (errors go to cudaGetLastError) and queues the job on the
 * stream; takes ownership of job. */
void enqueue_launch(const char *name, const void *fn, const launch_cfg &c, kernel_job *job);

template <typename... P> struct kernel_job_of : kernel_job {
    void (*fn)(P...);
    std::tuple<typename std::decay<P>::type...> args;
    template <typename... A>
    kernel_job_of(void (*f)(P...), A &&...a) : fn(f), args(std::forward<A>(a)...) {}
    void run() override { std::apply(fn, args); }
    size_t size() const override { return sizeof(*this); }
};

/* kernel<<<c>>>(a...): the arguments are converted to the kernel's parameter types now. */
template <typename... P, typename... A>
void launch(const char *name, void (*fn)(P...), const launch_cfg &c, A &&...a) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong argument count");
    enqueue_launch(name, reinterpret_cast<const void *>(fn), c,
                   new kernel_job_of<P...>(fn, static_cast<P>(std::forward<A>(a))...));
}

/* Kinds of errors the checker reports. */
enum {
    E_OOB_GLOBAL,
    E_FREED,
    E_UNINIT_GLOBAL,
    E_OOB_SHARED,
    E_UNINIT_SHARED,
    E_RACE,
    E_HOST_FROM_KERNEL,
    E_DEVICE_FROM_HOST,
    E_UNSYNCED_HOST,
    E_SYNC,
    E_DEADLOCK,
    E_LIMIT,
    E_KINDS
};
/* For the emulator's own tests (tests/cuda-emu/test_emu_runtime.cu): the errors reported
 * since the last call, with their kinds as bits (1 << E_*) in *kinds, then forgotten along
 * with a sticky error; quiet(true) stops printing reports. */
uint64_t test_take_errors(unsigned *kinds);
void test_quiet(bool quiet);

template <typename T> static inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle type");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T> static inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

} /* namespace cel_emu */

#define threadIdx (::cel_emu::thread_idx())
#define blockIdx  (::cel_emu::block_idx())
#define blockDim  (::cel_emu::block_dim())
#define gridDim   (::cel_emu::grid_dim())

#define __syncthreads() ::cel_emu::syncthreads()
static inline void __syncwarp(unsigned mask = 0xffffffffu) { ::cel_emu::syncwarp(mask); }

/* ---------------------------------------------------------------- warp shuffles and votes */

template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return cel_emu::from_bits<T>(
        cel_emu::warp_op(cel_emu::W_SHFL_IDX, mask, cel_emu::to_bits(v), src, width));
}
template <typename T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return cel_emu::from_bits<T>(
        cel_emu::warp_op(cel_emu::W_SHFL_UP, mask, cel_emu::to_bits(v), (int)delta, width));
}
template <typename T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return cel_emu::from_bits<T>(
        cel_emu::warp_op(cel_emu::W_SHFL_DOWN, mask, cel_emu::to_bits(v), (int)delta, width));
}
template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return cel_emu::from_bits<T>(
        cel_emu::warp_op(cel_emu::W_SHFL_XOR, mask, cel_emu::to_bits(v), lane_mask, width));
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    return (unsigned)cel_emu::warp_op(cel_emu::W_BALLOT, mask, pred != 0, 0, 32);
}
static inline int __any_sync(unsigned mask, int pred) {
    return (int)cel_emu::warp_op(cel_emu::W_ANY, mask, pred != 0, 0, 32);
}
static inline int __all_sync(unsigned mask, int pred) {
    return (int)cel_emu::warp_op(cel_emu::W_ALL, mask, pred != 0, 0, 32);
}

/* ---------------------------------------------------------------- atomics */

static inline float atomicAdd(float *p, float v) { return cel_emu::atomic_add_f32(p, v); }
static inline double atomicAdd(double *p, double v) { return cel_emu::atomic_add_f64(p, v); }
static inline int atomicAdd(int *p, int v) {
    return cel_emu::atomic_op_i32(p, cel_emu::A_ADD, v, 0);
}
static inline unsigned atomicAdd(unsigned *p, unsigned v) {
    return cel_emu::atomic_op_u32(p, cel_emu::A_ADD, v, 0);
}
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    return cel_emu::atomic_op_u64(reinterpret_cast<uint64_t *>(p), cel_emu::A_ADD, v, 0);
}
static inline int atomicMax(int *p, int v) {
    return cel_emu::atomic_op_i32(p, cel_emu::A_MAX, v, 0);
}
static inline int atomicMin(int *p, int v) {
    return cel_emu::atomic_op_i32(p, cel_emu::A_MIN, v, 0);
}
static inline unsigned atomicMax(unsigned *p, unsigned v) {
    return cel_emu::atomic_op_u32(p, cel_emu::A_MAX, v, 0);
}
static inline unsigned atomicMin(unsigned *p, unsigned v) {
    return cel_emu::atomic_op_u32(p, cel_emu::A_MIN, v, 0);
}
static inline int atomicExch(int *p, int v) {
    return cel_emu::atomic_op_i32(p, cel_emu::A_EXCH, v, 0);
}
static inline unsigned atomicExch(unsigned *p, unsigned v) {
    return cel_emu::atomic_op_u32(p, cel_emu::A_EXCH, v, 0);
}
static inline int atomicCAS(int *p, int cmp, int v) {
    return cel_emu::atomic_op_i32(p, cel_emu::A_CAS, v, cmp);
}
static inline unsigned atomicCAS(unsigned *p, unsigned cmp, unsigned v) {
    return cel_emu::atomic_op_u32(p, cel_emu::A_CAS, v, cmp);
}
static inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long cmp,
                                           unsigned long long v) {
    return cel_emu::atomic_op_u64(reinterpret_cast<uint64_t *>(p), cel_emu::A_CAS, v, cmp);
}

/* ---------------------------------------------------------------- integer and float intrinsics */

template <typename A, typename B>
static inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a < (C)b ? (C)a : (C)b;
}
template <typename A, typename B>
static inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type C;
    return (C)a > (C)b ? (C)a : (C)b;
}

static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}

static inline unsigned __float_as_uint(float f) {
    return cel_emu::from_bits<unsigned>(cel_emu::to_bits(f));
}
static inline float __uint_as_float(unsigned u) { return cel_emu::from_bits<float>(u); }
static inline int __float_as_int(float f) { return cel_emu::from_bits<int>(cel_emu::to_bits(f)); }
static inline float __int_as_float(int i) { return cel_emu::from_bits<float>((uint32_t)i); }
static inline long long __double_as_longlong(double d) {
    return cel_emu::from_bits<long long>(cel_emu::to_bits(d));
}
static inline double __longlong_as_double(long long v) {
    return cel_emu::from_bits<double>((uint64_t)v);
}

/* Explicitly rounded arithmetic: the host never contracts (-ffp-contract=off), so each of
 * these is one IEEE operation, round to nearest even, as on the device. */
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __frsqrt_rn(float a) { return (float)(1.0 / sqrt((double)a)); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline float __saturatef(float x) { return x > 1.0f ? 1.0f : x >= 0.0f ? x : 0.0f; }

/* The fast-math intrinsics: the device computes them through the SFU's ex2/lg2/rcp
 * approximations (about 2 ulp); the host's correctly rounded exp2f/log2f around the same
 * base change give the same error class. __fdividef returns 0 for |b| > 2^126, as the
 * hardware's reciprocal does. */
static inline float cel_emu_expf(float x) { return exp2f(x * 1.44269504088896340736f); }
static inline float cel_emu_exp10f(float x) { return exp2f(x * 3.32192809488736234787f); }
static inline float cel_emu_logf(float x) { return log2f(x) * 0.69314718055994530942f; }
static inline float cel_emu_log10f(float x) { return log2f(x) * 0.30102999566398119521f; }
static inline float cel_emu_powf(float x, float y) { return exp2f(y * log2f(x)); }
/* glibc declares functions of these names: macros keep the device meaning */
#define __expf(x)    cel_emu_expf(x)
#define __exp10f(x)  cel_emu_exp10f(x)
#define __logf(x)    cel_emu_logf(x)
#define __log2f(x)   log2f(x)
#define __log10f(x)  cel_emu_log10f(x)
#define __powf(x, y) cel_emu_powf(x, y)
#define __sinf(x)    sinf(x)
#define __cosf(x)    cosf(x)
#define __tanf(x)    tanf(x)
static inline float __fdividef(float a, float b) {
    return fabsf(b) > 0x1p126f && isfinite(b) ? 0.0f * a : a / b;
}
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }

/* Float to integer, round to nearest even, saturating as cvt.rni does (NaN -> 0). */
static inline unsigned long long __float2ull_rn(float x) {
    if (!(x > 0.0f)) return 0;
    if (x >= 0x1p64f) return ~0ull;
    return (unsigned long long)nearbyintf(x);
}
static inline long long __float2ll_rn(float x) {
    if (x != x) return 0;
    if (x >= 0x1p63f) return 0x7fffffffffffffffll;
    if (x < -0x1p63f) return (long long)0x8000000000000000ull;
    return (long long)nearbyintf(x);
}
static inline int __float2int_rn(float x) {
    if (x != x) return 0;
    if (x >= 0x1p31f) return 0x7fffffff;
    if (x < -0x1p31f) return (int)0x80000000u;
    return (int)nearbyintf(x);
}
static inline int __float2int_rz(float x) {
    if (x != x) return 0;
    if (x >= 0x1p31f) return 0x7fffffff;
    if (x < -0x1p31f) return (int)0x80000000u;
    return (int)x;
}
static inline unsigned __float2uint_rn(float x) {
    if (!(x > 0.0f)) return 0;
    if (x >= 0x1p32f) return 0xffffffffu;
    return (unsigned)nearbyintf(x);
}

#endif
