/* rng.c -- a small seedable RNG: xoshiro256** seeded through splitmix64.
 *
 * Used for LoRA initialisation, base-model initialisation and sampling. Not
 * torch's generator: same seed gives the same numbers here, not in torch.
 */
#include "internal.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void cel_rng_seed(cel_rng_t *r, uint64_t seed, uint64_t stream) {
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ull + 0x632be59bd9b4e019ull);
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t cel_rng_next(cel_rng_t *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float cel_rng_uniform(cel_rng_t *r) { return (float)(cel_rng_next(r) >> 40) / 16777216.0f; }

double cel_rng_normal(cel_rng_t *r) {
    double u1 = ((cel_rng_next(r) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    double u2 = (cel_rng_next(r) >> 11) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
