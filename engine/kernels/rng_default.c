/* rng_default.c: the engine's default normal generator, counter-based.
 *
 * Value j of stream s of seed is a pure function of (seed, s, j), so a
 * stream can start anywhere, images of one request draw from separate
 * streams (stream = image index) and nothing depends on batching or
 * on how a fill is split into calls.
 *
 * Construction (the reference tools/ref/samplers_ref.py re-implements it):
 *   mix(z)      the splitmix64 finaliser of z + 0x9e3779b97f4a7c15
 *   key         mix(seed ^ mix(stream))
 *   bits(i)     mix(key + i * 0x9e3779b97f4a7c15)     (64-bit wrap-around)
 *   pair p      u1 = ((bits(2p) >> 11) + 1) * 2^-53   in (0, 1]
 *               u2 =  (bits(2p+1) >> 11)   * 2^-53    in [0, 1)
 *               r = sqrt(-2 ln u1), a = 2 pi u2
 *   value j     pair j/2: r cos a for even j, r sin a for odd j (double,
 *               then rounded to float).
 * splitmix64 passes BigCrush as a counter-based generator; Box-Muller in
 * double makes the normals exact to float precision, tails included.
 */
#include "rng.h"

#include <math.h>

#define RNG_GAMMA 0x9e3779b97f4a7c15ULL

static uint64_t rng_mix(uint64_t z)
{
    z += RNG_GAMMA;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void rng_default_init(rng_default *r, uint64_t seed, uint64_t stream)
{
    r->seed = seed;
    r->stream = stream;
    r->counter = 0;
}

/* The two normals of pair p of the stream keyed by key. */
static void rng_pair(uint64_t key, uint64_t p, double *z0, double *z1)
{
    const double two_pi = 6.283185307179586476925286766559;
    uint64_t b1 = rng_mix(key + (2 * p) * RNG_GAMMA);
    uint64_t b2 = rng_mix(key + (2 * p + 1) * RNG_GAMMA);
    double u1 = (double)((b1 >> 11) + 1) * 0x1.0p-53;
    double u2 = (double)(b2 >> 11) * 0x1.0p-53;
    double rad = sqrt(-2.0 * log(u1));
    *z0 = rad * cos(two_pi * u2);
    *z1 = rad * sin(two_pi * u2);
}

void rng_default_randn(rng_default *r, float *out, size_t n)
{
    uint64_t key = rng_mix(r->seed ^ rng_mix(r->stream));
    uint64_t j = r->counter;
    size_t i = 0;
    double z0, z1;
    if (n == 0)
        return;
    if (j & 1) { /* starting mid-pair: the sine half */
        rng_pair(key, j / 2, &z0, &z1);
        out[i++] = (float)z1;
        j++;
    }
    for (; i + 1 < n; i += 2, j += 2) {
        rng_pair(key, j / 2, &z0, &z1);
        out[i] = (float)z0;
        out[i + 1] = (float)z1;
    }
    if (i < n) {
        rng_pair(key, j / 2, &z0, &z1);
        out[i] = (float)z0;
    }
    r->counter += n;
}
