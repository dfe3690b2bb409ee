/* params.h -- the layout of the parameter block, one list for the CPU engine and the CUDA backend.
 *
 * The base model's parameters live in one block of floats (model/, cel_params_t views) and,
 * on a GPU, in one block of bf16 (model/cuda/engine.cu, gpu_params_t views). Both, the
 * parameter count (config.c) and the GPU upload walk this list, so the two layouts cannot
 * drift apart. X(name, count) per tensor, in block order; count is an expression of the
 * sizes V, C, L, I, QD (= NH*HS) and KD (= NKV*HS), which the expanding code declares as
 * size_t (cel_params_sizes does). The untied head lm (V,C) follows the list; a tied head
 * has no storage of its own (lm aliases wte). C and C++ (nvcc, the CUDA emulator) include it.
 */
#ifndef CEL_MODEL_PARAMS_H
#define CEL_MODEL_PARAMS_H

#include <stddef.h>

#include "config.h"

#define CEL_PARAMS_LAYOUT(X)           \
    X(wte, V *C)    /* (V,C) */        \
    X(ln1, L *C)    /* (L,C) */        \
    X(wq, L *QD *C) /* (L,NH*HS,C) */  \
    X(wk, L *KD *C) /* (L,NKV*HS,C) */ \
    X(wv, L *KD *C) /* (L,NKV*HS,C) */ \
    X(wo, L *C *QD) /* (L,C,NH*HS) */  \
    X(ln2, L *C)    /* (L,C) */        \
    X(wg, L *I *C)  /* (L,I,C) */      \
    X(wu, L *I *C)  /* (L,I,C) */      \
    X(wd, L *C *I)  /* (L,C,I) */      \
    X(lnf, C)       /* (C) */

/* Declares the size_t locals CEL_PARAMS_LAYOUT's counts use, from config c. */
#define CEL_PARAMS_SIZES(c)                                                                \
    size_t V = (size_t)(c)->V, C = (size_t)(c)->C, L = (size_t)(c)->L, I = (size_t)(c)->I, \
           QD = (size_t)(c)->NH * (size_t)(c)->HS, KD = (size_t)(c)->NKV * (size_t)(c)->HS

/* Elements of the block (the head counted only when untied). */
static inline size_t cel_params_count(const cel_config_t *c) {
    CEL_PARAMS_SIZES(c);
    size_t n = 0;
#define CEL_PARAMS_ADD_(name, count) n += (count);
    CEL_PARAMS_LAYOUT(CEL_PARAMS_ADD_)
#undef CEL_PARAMS_ADD_
    return n + (c->tied ? 0 : V * C);
}

#endif
