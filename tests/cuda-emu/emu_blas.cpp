/* emu_blas.cpp -- the cuBLAS subset of the CUDA emulator: a reference GEMM behind cuBLAS's checks.
 *
 * Test code (tests/cuda-emu/). cuBLAS is column-major: C (m,n, ldc) = alpha op(A) op(B) +
 * beta C with op(A) (m,k) stored as A (lda, k) or, transposed, A (lda, m). Each call first
 * checks what cuBLAS checks and returns its status on a violation (nothing is queued):
 * NOT_INITIALIZED for a bad handle, INVALID_VALUE for a bad operation code, a negative size
 * or batch count, lda < max(1, rows of A as stored), ldb likewise, ldc < max(1, m), a NULL
 * alpha or beta, an unknown algorithm; NOT_SUPPORTED for type combinations cuBLAS has no
 * kernel for. Then the GEMM is queued on the handle's stream. When it runs, every operand
 * column it reads must lie inside one allocation and be initialised (C only when beta != 0;
 * beta == 0 never reads C, NaN or not), as compute-sanitizer would see cuBLAS's kernels.
 * Products are exact in fp32 (bf16 x bf16 always is), sums fp32 in 8 interleaved partial
 * sums (another order than cuBLAS's, as any two GEMMs differ), alpha and beta in fp32,
 * then the output rounded to bf16 (nearest even) or kept in fp32.
 */
#include "emu_internal.h"
#include "include/cublas_v2.h"
#include "include/cuda_bf16.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

using namespace cel_emu;

enum : uint32_t { HANDLE_MAGIC = 0x424c4153u };

struct cublasContext {
    uint32_t magic;
    cudaStream_t st;
    cublasPointerMode_t pmode;
    cublasMath_t math;
};

static bool handle_ok(cublasHandle_t h) { return h && h->magic == HANDLE_MAGIC; }

static size_t type_size(cudaDataType t) {
    switch (t) {
    case CUDA_R_16BF:
    case CUDA_R_16F: return 2;
    case CUDA_R_32F: return 4;
    case CUDA_R_64F: return 8;
    default: return 0;
    }
}

static float load(const void *p, cudaDataType t, size_t i) {
    if (t == CUDA_R_32F) return ((const float *)p)[i];
    unsigned short b = ((const unsigned short *)p)[i];
    return cel_emu_bf2f(b); /* CUDA_R_16BF; 16F is refused before */
}

static void store(void *p, cudaDataType t, size_t i, float v) {
    if (t == CUDA_R_32F) ((float *)p)[i] = v;
    else ((unsigned short *)p)[i] = cel_emu_f2bf(v, 0);
}

namespace {

struct op_gemm : op_t {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc, batch;
    long long sa, sb, sc;
    float alpha, beta;
    const void *alpha_dev, *beta_dev; /* CUBLAS_POINTER_MODE_DEVICE */
    const void *A, *B;
    void *C;
    cudaDataType at, bt, ct;

    /* Every column of a (rows, cols) column-major operand with leading dimension ld. */
    bool check_operand(const void *p, cudaDataType t, int rows, int cols, int ld, int kind,
                       const char *what) {
        size_t es = type_size(t);
        char label[96];
        snprintf(label, sizeof label, "%s operand %s (%d x %d, ld %d)", name, what, rows, cols, ld);
        for (int j = 0; j < cols; j++)
            if (!dev_check((const char *)p + (size_t)j * ld * es, (size_t)rows * es, kind, label))
                return false;
        return true;
    }

    void exec() override {
        if (alpha_dev) {
            if (!dev_check(alpha_dev, 4, ACC_READ, "cuBLAS alpha") ||
                !dev_check(beta_dev, 4, ACC_READ, "cuBLAS beta")) {
                g.sticky = cudaErrorIllegalAddress;
                return;
            }
            memcpy(&alpha, alpha_dev, 4);
            memcpy(&beta, beta_dev, 4);
        }
        int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
        int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
        size_t aes = type_size(at), bes = type_size(bt), ces = type_size(ct);
        std::vector<float> Ar((size_t)m * k), Br((size_t)n * k);
        g.n_gemms++;
        for (int b = 0; b < batch; b++) {
            const char *Ab = (const char *)A + (size_t)(b * sa) * aes;
            const char *Bb = (const char *)B + (size_t)(b * sb) * bes;
            char *Cb = (char *)C + (size_t)(b * sc) * ces;
            if ((k > 0 && (!check_operand(Ab, at, ar, ac, lda, ACC_READ, "A") ||
                           !check_operand(Bb, bt, br, bc, ldb, ACC_READ, "B"))) ||
                !check_operand(Cb, ct, m, n, ldc, beta != 0.0f ? ACC_READ : ACC_WRITE, "C")) {
                g.sticky = cudaErrorIllegalAddress;
                return;
            }
            /* op(A) row i and op(B) column j as contiguous k-vectors */
            for (int i = 0; i < m; i++)
                for (int p = 0; p < k; p++)
                    Ar[(size_t)i * k + p] = load(Ab, at,
                                                 ta == CUBLAS_OP_N ? (size_t)i + (size_t)p * lda
                                                                   : (size_t)p + (size_t)i * lda);
            for (int j = 0; j < n; j++)
                for (int p = 0; p < k; p++)
                    Br[(size_t)j * k + p] = load(Bb, bt,
                                                 tb == CUBLAS_OP_N ? (size_t)p + (size_t)j * ldb
                                                                   : (size_t)j + (size_t)p * ldb);
            for (int j = 0; j < n; j++) {
                const float *bj = &Br[(size_t)j * k];
                for (int i = 0; i < m; i++) {
                    const float *ai = &Ar[(size_t)i * k];
                    float acc[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
                    int p = 0;
                    for (; p + 8 <= k; p += 8)
                        for (int u = 0; u < 8; u++) acc[u] += ai[p + u] * bj[p + u];
                    for (; p < k; p++) acc[p & 7] += ai[p] * bj[p];
                    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                              ((acc[4] + acc[5]) + (acc[6] + acc[7]));
                    size_t ci = (size_t)i + (size_t)j * ldc;
                    float v = alpha * s;
                    if (beta != 0.0f) v += beta * load(Cb, ct, ci);
                    store(Cb, ct, ci, v);
                }
            }
        }
    }
};

} /* namespace */

/* The checks cuBLAS makes before it launches anything. */
static cublasStatus_t validate(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                               int n, int k, const void *alpha, cudaDataType at, int lda,
                               cudaDataType bt, int ldb, const void *beta, cudaDataType ct, int ldc,
                               int batch, int compute, int algo) {
    if (!handle_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T && ta != CUBLAS_OP_C) ||
        (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T && tb != CUBLAS_OP_C))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m < 0 || n < 0 || k < 0 || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    int arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
    if (lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (!(algo == CUBLAS_GEMM_DEFAULT || (algo >= 0 && algo <= 23) || (algo >= 99 && algo <= 115)))
        return CUBLAS_STATUS_INVALID_VALUE;
    bool f32 = compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC ||
               compute == CUBLAS_COMPUTE_32F_FAST_16BF || compute == CUBLAS_COMPUTE_32F_FAST_TF32 ||
               compute == CUBLAS_COMPUTE_32F_FAST_16F;
    bool ok =
        f32 &&
        ((at == CUDA_R_16BF && bt == CUDA_R_16BF && (ct == CUDA_R_16BF || ct == CUDA_R_32F)) ||
         (at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F));
    return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

static cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const void *alpha, const void *A, cudaDataType at, int lda,
                           long long sa, const void *B, cudaDataType bt, int ldb, long long sb,
                           const void *beta, void *C, cudaDataType ct, int ldc, long long sc,
                           int batch, int compute, int algo, const char *name) {
    cublasStatus_t s =
        validate(h, ta, tb, m, n, k, alpha, at, lda, bt, ldb, beta, ct, ldc, batch, compute, algo);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    if (g.sticky != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
    op_gemm *op = new op_gemm();
    op->name = name;
    op->ta = ta == CUBLAS_OP_C ? CUBLAS_OP_T : ta;
    op->tb = tb == CUBLAS_OP_C ? CUBLAS_OP_T : tb;
    op->m = m, op->n = n, op->k = k, op->lda = lda, op->ldb = ldb, op->ldc = ldc;
    op->sa = sa, op->sb = sb, op->sc = sc, op->batch = batch;
    op->A = A, op->B = B, op->C = C, op->at = at, op->bt = bt, op->ct = ct;
    op->alpha_dev = op->beta_dev = NULL;
    if (h->pmode == CUBLAS_POINTER_MODE_HOST) {
        memcpy(&op->alpha, alpha, 4);
        memcpy(&op->beta, beta, 4);
    } else {
        op->alpha_dev = alpha;
        op->beta_dev = beta;
    }
    return enqueue(h->st, op, false) == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                                    : CUBLAS_STATUS_EXECUTION_FAILED;
}

extern "C" {

CEL_EMU_API cublasStatus_t cublasCreate(cublasHandle_t *handle) {
    mem_init();
    if (g.sticky != cudaSuccess) return CUBLAS_STATUS_NOT_INITIALIZED;
    *handle = new cublasContext{ HANDLE_MAGIC, 0, CUBLAS_POINTER_MODE_HOST, CUBLAS_DEFAULT_MATH };
    return CUBLAS_STATUS_SUCCESS;
}

CEL_EMU_API cublasStatus_t cublasDestroy(cublasHandle_t h) {
    if (!handle_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    cudaStreamSynchronize(h->st);
    h->magic = 0;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

CEL_EMU_API cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t st) {
    if (!handle_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream_ok(st)) return CUBLAS_STATUS_INVALID_VALUE;
    h->st = st;
    return CUBLAS_STATUS_SUCCESS;
}

CEL_EMU_API cublasStatus_t cublasGetStream(cublasHandle_t h, cudaStream_t *st) {
    if (!handle_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    *st = h->st;
    return CUBLAS_STATUS_SUCCESS;
}

CEL_EMU_API cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t mode) {
    if (!handle_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE)
        return CUBLAS_STATUS_INVALID_VALUE;
    h->pmode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

CEL_EMU_API cublasStatus_t cublasGetPointerMode(cublasHandle_t h, cublasPointerMode_t *mode) {
    if (!handle_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    *mode = h->pmode;
    return CUBLAS_STATUS_SUCCESS;
}

CEL_EMU_API cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
    if (!handle_ok(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

CEL_EMU_API const char *cublasGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

CEL_EMU_API const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown error";
    }
}

CEL_EMU_API cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta,
                                        cublasOperation_t tb, int m, int n, int k,
                                        const void *alpha, const void *A, cudaDataType at, int lda,
                                        const void *B, cudaDataType bt, int ldb, const void *beta,
                                        void *C, cudaDataType ct, int ldc,
                                        cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    return gemm(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0, 1,
                compute, algo, "cublasGemmEx");
}

CEL_EMU_API cublasStatus_t cublasGemmStridedBatchedEx(
    cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
    const void *alpha, const void *A, cudaDataType at, int lda, long long sa, const void *B,
    cudaDataType bt, int ldb, long long sb, const void *beta, void *C, cudaDataType ct, int ldc,
    long long sc, int batch, cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    return gemm(h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc,
                batch, compute, algo, "cublasGemmStridedBatchedEx");
}

CEL_EMU_API cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                       int m, int n, int k, const float *alpha, const float *A,
                                       int lda, const float *B, int ldb, const float *beta,
                                       float *C, int ldc) {
    return gemm(h, ta, tb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb, 0, beta, C,
                CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT, "cublasSgemm");
}

} /* extern "C" */
