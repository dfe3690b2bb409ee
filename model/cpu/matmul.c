/* matmul.c -- a bias-free linear layer, out = inp @ weight^T, forward and backward.
 *
 * Row-major throughout; weight is (OC, IC) as nn.Linear stores it. The
 * products go through gemm.c on CPUs with AVX-512F (twice OpenBLAS's AVX2
 * kernel there; OpenBLAS then runs on one thread, par.c's threads split the
 * work), else OpenBLAS's sgemm; the _ref twins are plain loops kept for
 * tests (and as the spec the CUDA kernels are checked against).
 */
#include "ops.h"

#include <cblas.h>
#undef I /* OpenBLAS pulls in <complex.h>; we use I for the MLP width */

void cel_cpu_matmul_forward(float *out /* (N,OC) */, const float *inp /* (N,IC) */,
                            const float *weight /* (OC,IC) */, int N, int IC, int OC) {
    if (cel_cpu_gemm_use(N)) {
        cel_cpu_gemm_wt(out, OC, inp, IC, weight, IC, N, OC, IC);
        return;
    }
    if (cel_cpu_gemm_supported()) { /* OpenBLAS runs on one thread then (cel_model_set_threads) */
        cel_cpu_gemm_wt_small(out, OC, inp, IC, weight, IC, N, OC, IC);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f,
                out, OC);
}

void cel_cpu_matmul_backward(float *dinp /* (N,IC) += or NULL */,
                             float *dweight /* (OC,IC) += or NULL */,
                             const float *dout /* (N,OC) */, const float *inp /* (N,IC) */,
                             const float *weight /* (OC,IC) */, int N, int IC, int OC) {
    if (dinp && cel_cpu_gemm_use(N)) cel_cpu_gemm_acc(dinp, IC, dout, OC, weight, IC, N, IC, OC);
    else if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, weight,
                    IC, 1.0f, dinp, IC);
    if (dweight && cel_cpu_gemm_use(OC))
        cel_cpu_gemm_acc_at(dweight, IC, dout, OC, inp, IC, OC, IC, N);
    else if (dweight)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC,
                    1.0f, dweight, IC);
}

void cel_cpu_matmul_forward_ref(float *out, const float *inp, const float *weight, int N, int IC,
                                int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            const float *x = inp + (size_t)n * IC, *w = weight + (size_t)o * IC;
            float acc = 0.0f;
            for (int i = 0; i < IC; i++) acc += x[i] * w[i];
            out[(size_t)n * OC + o] = acc;
        }
}

void cel_cpu_matmul_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp,
                                 const float *weight, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            float d = dout[(size_t)n * OC + o];
            const float *w = weight + (size_t)o * IC, *x = inp + (size_t)n * IC;
            if (dinp)
                for (int i = 0; i < IC; i++) dinp[(size_t)n * IC + i] += d * w[i];
            if (dweight)
                for (int i = 0; i < IC; i++) dweight[(size_t)o * IC + i] += d * x[i];
        }
}
