/* embedding.c -- token embedding lookup (nn.Embedding), forward and backward.
 *
 * Token ids are validated by the caller (model.c) before they index wte.
 */
#include "ops.h"

#include <string.h>

void cel_cpu_embedding_forward(float *out /* (N,C) */, const int32_t *tokens /* (N) */,
                               const float *wte /* (V,C) */, int N, int C) {
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, wte + (size_t)tokens[n] * C, (size_t)C * sizeof(float));
}

void cel_cpu_embedding_backward(float *dwte /* (V,C) += */, const float *dout /* (N,C) */,
                                const int32_t *tokens /* (N) */, int N, int C) {
    for (int n = 0; n < N; n++) {
        float *dw = dwte + (size_t)tokens[n] * C;
        const float *d = dout + (size_t)n * C;
        for (int c = 0; c < C; c++) dw[c] += d[c];
    }
}
