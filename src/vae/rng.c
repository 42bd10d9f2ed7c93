/* Seeded normal noise: xoshiro256** seeded through splitmix64, Box–Muller.
 * The same seed gives the same stream on every machine. */
#include "vae_internal.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(ld_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* uniform in (0, 1]: never 0, so log() is finite */
static double next_unit(ld_rng *r)
{
    return ((double)(next_u64(r) >> 11) + 1.0) * 0x1.0p-53;
}

void ld_rng_seed(ld_rng *r, uint64_t seed)
{
    uint64_t state = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&state);
    r->has_spare = false;
}

double ld_rng_normal(ld_rng *r)
{
    if (r->has_spare) {
        r->has_spare = false;
        return r->spare;
    }
    const double radius = sqrt(-2.0 * log(next_unit(r)));
    const double angle = 2.0 * M_PI * next_unit(r);
    r->spare = radius * sin(angle);
    r->has_spare = true;
    return radius * cos(angle);
}
