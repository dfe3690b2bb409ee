/* simd.h -- what the CPU ops share to vectorise their element-wise loops (internal to model/cpu).
 *
 * CEL_CPU_VEC marks a loop-heavy function to be compiled at -O3 in two
 * clones, AVX-512 and the baseline, picked at load time (GCC's
 * target_clones; other compilers get the plain function). cel_cpu_expf is
 * a branch-free expf that such loops can vectorise (libm's expf is a call):
 * Cody-Waite reduction x = k ln2 + r and Cephes' degree-6 polynomial,
 * within 1e-7 relative of exp over [-87.3, 88]; arguments are clamped to
 * that range (below: ~1.2e-38 instead of a denormal or 0, above: exp(88)).
 * -O3 does not reorder floating-point sums, so a clone adds in the same
 * order as the plain loop.
 */
#ifndef CEL_CPU_SIMD_H
#define CEL_CPU_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CEL_CPU_VEC __attribute__((target_clones("avx512f", "default"), optimize("O3")))
#else
#define CEL_CPU_VEC
#endif

static inline float cel_cpu_expf(float x) {
    x = x < -87.3f ? -87.3f : x > 88.0f ? 88.0f : x;
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)k + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof(s));
    return p * s;
}

#endif
