/* cuda_bf16.h -- __nv_bfloat16 for the CUDA emulator (test code, tests/cuda-emu/).
 *
 * The storage is the upper half of an IEEE binary32. Conversions follow the hardware's
 * cvt instructions bit for bit: _rn rounds to nearest even (carry into the exponent, so
 * values past the largest bf16 become infinity), _rz truncates, _rd/_ru round toward -inf
 * and +inf; every NaN becomes the canonical 0x7fff, subnormals are kept (no flush to zero).
 * bf16 to float is exact. tests/cuda-emu/test_emu_runtime.cpp checks these against an
 * independent formula over every float of many exponents and every float in a strided sweep.
 */
#ifndef CEL_CUDA_EMU_BF16_H
#define CEL_CUDA_EMU_BF16_H

#include "cuda_emu.h"

struct __nv_bfloat16_raw {
    unsigned short x;
};

static inline unsigned short cel_emu_f2bf(float f, int mode) {
    uint32_t u = cel_emu::from_bits<uint32_t>(cel_emu::to_bits(f));
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu; /* canonical NaN */
    uint32_t low = u & 0xffffu, sign = u >> 31;
    switch (mode) {
    case 0: /* nearest even */ return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    case 1: /* toward zero */ return (unsigned short)(u >> 16);
    case 2: /* down */
        return (unsigned short)((u >> 16) + (sign && low && (u & 0x7fffffffu) != 0x7f800000u));
    default: /* up */
        return (unsigned short)((u >> 16) + (!sign && low && (u & 0x7fffffffu) != 0x7f800000u));
    }
}

static inline float cel_emu_bf2f(unsigned short b) {
    return cel_emu::from_bits<float>((uint32_t)b << 16);
}

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(const __nv_bfloat16_raw &r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(cel_emu_f2bf(f, 0)) {}
    __nv_bfloat16(double d) : __x(cel_emu_f2bf((float)d, 0)) {}
    operator float() const { return cel_emu_bf2f(__x); }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{ __x }; }
};
typedef struct __nv_bfloat16 nv_bfloat16;

static inline __nv_bfloat16 cel_emu_bf_of(unsigned short b) {
    return __nv_bfloat16(__nv_bfloat16_raw{ b });
}
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    return cel_emu_bf_of(cel_emu_f2bf(f, 0));
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return cel_emu_bf_of(cel_emu_f2bf(f, 0)); }
static inline __nv_bfloat16 __float2bfloat16_rz(float f) {
    return cel_emu_bf_of(cel_emu_f2bf(f, 1));
}
static inline __nv_bfloat16 __float2bfloat16_rd(float f) {
    return cel_emu_bf_of(cel_emu_f2bf(f, 2));
}
static inline __nv_bfloat16 __float2bfloat16_ru(float f) {
    return cel_emu_bf_of(cel_emu_f2bf(f, 3));
}
static inline float __bfloat162float(__nv_bfloat16 b) { return cel_emu_bf2f(b.__x); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return cel_emu_bf_of(u); }

#endif
