/* rng_torch.c: torch.manual_seed(seed); torch.randn(n) on the CPU, bit for bit.
 *
 * What PyTorch (1.13, the CPU default generator) does, re-derived and
 * checked against Debian's python3-torch on this machine (tests/pt):
 *
 *   manual_seed  MT19937 seeded with the low 32 bits of the seed (the usual
 *                1812433253 init), both cached normals dropped.
 *   uniform f32  (next32() & (2^24-1)) * 2^-24.
 *   uniform f64  ((next32() << 32 | next32()) & (2^53-1)) * 2^-53.
 *   randn(n), n < 16 (element by element): Box-Muller in double,
 *                u1, u2 = two f64 uniforms; r = sqrt(-2 log(1 - u2));
 *                a = 2 pi u1; returns r cos a and caches r sin a for the
 *                next scalar draw (the generator's "next double normal"),
 *                each rounded to float.
 *   randn(n), n >= 16 (a contiguous float tensor): first n f32 uniforms
 *                into the output, then each whole chunk of 16 is turned
 *                into normals in place (u1 = 1 - d[j], u2 = d[j+8] for
 *                j < 8; d[j] = r cos a, d[j+8] = r sin a); if n % 16 != 0
 *                the last 16 slots get 16 fresh uniforms and are
 *                transformed again (so the tail overlaps the last chunk).
 *                This path neither reads nor writes the cached normal.
 *   randn(a, b, c, d) is randn(a*b*c*d) reshaped: only the count matters.
 *
 * The chunk transform depends on the CPU capability PyTorch dispatched to:
 *   AVX2 or AVX512 (any x86-64 CPU with AVX2, e.g. this one): an 8-lane
 *     Cephes-style logf and sincosf (the "avx_mathfun" polynomials) whose
 *     multiply-adds GCC fused into FMAs when it built libtorch. fill_avx2
 *     reproduces those float operations lane by lane, fused where the
 *     binary is fused, so the result is exact on any CPU (fmaf is exact
 *     even without FMA hardware, just slower).
 *   default (no AVX2, or ATEN_CPU_CAPABILITY=default): libm logf, cosf and
 *     sinf per element (fill_libm). Build with -DRNG_TORCH_LIBM_FILL to
 *     match such a PyTorch; tests/pt checks both against torch.
 * The scalar path and fill_libm call glibc's log/sin/cos (and their float
 * versions), which PyTorch also calls, so they are exact when both run
 * on the same glibc (checked here: glibc 2.36 on x86-64).
 *
 * No floating-point contraction: every fused multiply-add below is an
 * explicit fmaf, and every other product is rounded on its own.
 */
#include "rng.h"

#include <math.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define MT_N 624
#define MT_M 397

void rng_torch_seed(rng_torch *r, uint64_t seed)
{
    r->mt[0] = (uint32_t)seed;
    for (int i = 1; i < MT_N; i++)
        r->mt[i] = 1812433253u * (r->mt[i - 1] ^ (r->mt[i - 1] >> 30)) + (uint32_t)i;
    r->mti = MT_N; /* twist before the first draw */
    r->has_next_double = 0;
    r->next_double = 0.0;
    r->has_next_float = 0;
    r->next_float = 0.0f;
}

static void mt_twist(uint32_t *mt)
{
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (mt[i] & 0x80000000u) | (mt[(i + 1) % MT_N] & 0x7fffffffu);
        mt[i] = mt[(i + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
}

static uint32_t mt_next(rng_torch *r)
{
    if (r->mti >= MT_N) {
        mt_twist(r->mt);
        r->mti = 0;
    }
    uint32_t y = r->mt[r->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

static float uniform_f32(rng_torch *r)
{
    return (float)(mt_next(r) & 0xffffffu) * 0x1.0p-24f;
}

static double uniform_f64(rng_torch *r)
{
    uint64_t hi = mt_next(r);
    uint64_t lo = mt_next(r);
    return (double)(((hi << 32) | lo) & ((1ULL << 53) - 1)) * 0x1.0p-53;
}

/* One element of the scalar path (normal_distribution<double>). */
static float normal_scalar(rng_torch *r)
{
    const double two_pi = 2.0 * 3.14159265358979323846;
    if (r->has_next_double) {
        r->has_next_double = 0;
        return (float)r->next_double;
    }
    double u1 = uniform_f64(r);
    double u2 = uniform_f64(r);
    double rad = sqrt(-2.0 * log(1.0 - u2));
    double a = two_pi * u1;
    r->next_double = rad * sin(a);
    r->has_next_double = 1;
    return (float)(rad * cos(a));
}

#ifndef RNG_TORCH_LIBM_FILL
static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ln(x) for x in [2^-24, 1] as the AVX2 kernel computes it: x = m 2^e with
 * m in [sqrt(1/2), sqrt(2)), a degree-8 polynomial in m - 1, and ln 2 split
 * in two parts (the e * 0.693359375 product is exact). */
static float log_avx2(float x)
{
    uint32_t b = f2u(x);
    float e = (float)((int)(b >> 23) - 0x7f) + 1.0f;
    float m = u2f((b & ~0x7f800000u) | 0x3f000000u); /* [0.5, 1) */
    float lo = 0.0f;
    if (m < 0.707106781186547524f) {
        e = e - 1.0f;
        lo = m;
    }
    m = (m - 1.0f) + lo; /* m - 1, or 2m - 1 for the low half */
    float z = m * m;
    float y = 7.0376836292e-2f;
    y = fmaf(y, m, -1.1514610310e-1f);
    y = fmaf(y, m, 1.1676998740e-1f);
    y = fmaf(y, m, -1.2420140846e-1f);
    y = fmaf(y, m, 1.4249322787e-1f);
    y = fmaf(y, m, -1.6668057665e-1f);
    y = fmaf(y, m, 2.0000714765e-1f);
    y = fmaf(y, m, -2.4999993993e-1f);
    y = fmaf(y, m, 3.3333331174e-1f);
    y = y * m;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    m = m + y;
    return fmaf(e, 0.693359375f, m);
}

/* sin and cos of x >= 0 (x < 2 pi here) as the AVX2 kernel computes them:
 * octant j (rounded up to even), x reduced by j pi/4 in three exact parts,
 * then the cosine or sine polynomial per octant and the octant's signs. */
static void sincos_avx2(float x, float *s, float *c)
{
    int32_t j = (int32_t)(x * 1.27323954473516f); /* 4 / pi, truncated */
    j = (j + 1) & ~1;
    float y = (float)j;
    uint32_t sign_sin = ((uint32_t)j & 4u) << 29;
    uint32_t sign_cos = ((uint32_t)~(j - 2) & 4u) << 29;
    int swap = (j & 2) != 0;
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float pc = 2.443315711809948e-5f;
    pc = fmaf(pc, z, -1.388731625493765e-3f);
    pc = fmaf(pc, z, 4.166664568298827e-2f);
    pc = pc * z;
    pc = fmaf(pc, z, -(z * 0.5f));
    pc = pc + 1.0f;
    float ps = -1.9515295891e-4f;
    ps = fmaf(ps, z, 8.3321608736e-3f);
    ps = fmaf(ps, z, -1.6666654611e-1f);
    ps = ps * z;
    ps = fmaf(ps, x, x);
    *s = u2f(f2u(swap ? pc : ps) ^ sign_sin);
    *c = u2f(f2u(swap ? ps : pc) ^ sign_cos);
}

/* 16 uniforms in d -> 16 normals, as PyTorch's AVX2 chunk transform. The
 * final n * std + mean is an FMA with std 1, mean 0: it only turns -0 to +0. */
static void fill_avx2(float *d)
{
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float rad = sqrtf(-2.0f * log_avx2(1.0f - d[j]));
        float s, c;
        sincos_avx2(two_pi * d[j + 8], &s, &c);
        d[j] = fmaf(rad * c, 1.0f, 0.0f);
        d[j + 8] = fmaf(rad * s, 1.0f, 0.0f);
    }
}

#define fill16 fill_avx2
#else
/* The same transform without AVX2: libm per element, the angle formed in
 * double and rounded to float. */
static void fill_libm(float *d)
{
    const double two_pi = 2.0 * 3.14159265358979323846;
    for (int j = 0; j < 8; j++) {
        float rad = sqrtf(-2.0f * logf(1.0f - d[j]));
        float a = (float)(two_pi * (double)d[j + 8]);
        d[j] = rad * cosf(a) + 0.0f;
        d[j + 8] = rad * sinf(a) + 0.0f;
    }
}

#define fill16 fill_libm
#endif

void rng_torch_randn(rng_torch *r, float *out, size_t n)
{
    if (n < 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = normal_scalar(r);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = uniform_f32(r);
    for (size_t i = 0; i + 16 <= n; i += 16)
        fill16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++)
            tail[i] = uniform_f32(r);
        fill16(tail);
    }
}
