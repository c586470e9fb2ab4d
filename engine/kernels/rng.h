/* rng.h: the engine's random number generators (engine-internal).
 *
 * Two generators, both fully determined by a seed:
 *   rng_default  counter-based (a keyed hash of seed, stream and position),
 *                so each image of a request draws from its own stream and
 *                the draws do not depend on what the image was batched with.
 *   rng_torch    bit-exact with torch.manual_seed(seed); torch.randn(...) on
 *                the CPU (MT19937 and PyTorch's CPU normal sampling), so a
 *                run with --rng torch reproduces upstream sample.py.
 * Neither allocates; the state lives inside the sampler that owns it.
 */
#ifndef DIT_RNG_H
#define DIT_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct rng_default {
    uint64_t seed;
    uint64_t stream;
    uint64_t counter; /* position: advances by the number of values drawn */
} rng_default;

/* Starts stream `stream` of `seed` at position 0. */
void rng_default_init(rng_default *r, uint64_t seed, uint64_t stream);
/* Fills out[0..n) with standard normal floats and advances the stream. */
void rng_default_randn(rng_default *r, float *out, size_t n);

typedef struct rng_torch {
    uint32_t mt[624];
    int mti;
    /* PyTorch's CPU generator caches the second value of a Box-Muller pair
     * for scalar normal draws; kept here so draw sequences stay exact. */
    int has_next_double;
    double next_double;
    int has_next_float;
    float next_float;
} rng_torch;

/* Equals torch.manual_seed(seed) on the CPU default generator. */
void rng_torch_seed(rng_torch *r, uint64_t seed);
/* Equals torch.randn(n) (float32) drawn from r: bit for bit. */
void rng_torch_randn(rng_torch *r, float *out, size_t n);

#endif
