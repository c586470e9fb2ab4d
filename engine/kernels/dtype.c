/* dtype.c: the weight dtype table and its conversions (see dtype.h). */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "dtype.h"

float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax > 0x7f800000) /* NaN: quiet, top payload bits kept */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000) /* from halfway above 65504 up: infinity */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000) { /* below 2^-14: a subnormal half, units of 2^-24 */
        float a;
        memcpy(&a, &ax, sizeof a);
        return (uint16_t)(sign | (uint32_t)nearbyintf(a * 16777216.0f));
    }
    uint32_t h = ((ax >> 23) - 112) << 10 | (ax >> 13 & 0x3ff), rem = ax & 0x1fff;
    h += rem > 0x1000 || (rem == 0x1000 && (h & 1)); /* a carry may bump the exponent */
    return (uint16_t)(sign | h);
}

uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)(x >> 16 | 0x40); /* NaN: quiet */
    return (uint16_t)((x + 0x7fff + (x >> 16 & 1)) >> 16);
}

static void f32_to_f32_run(float *dst, const void *src, size_t n)
{
    memcpy(dst, src, n * sizeof(float));
}

static void f16_to_f32_run(float *dst, const void *src, size_t n)
{
    const uint16_t *h = src;
    for (size_t i = 0; i < n; i++)
        dst[i] = f16_to_f32(h[i]);
}

static void bf16_to_f32_run(float *dst, const void *src, size_t n)
{
    const uint16_t *h = src;
    for (size_t i = 0; i < n; i++)
        dst[i] = bf16_to_f32(h[i]);
}

static int64_t f32_from_f32_run(void *dst, const float *src, size_t n)
{
    memcpy(dst, src, n * sizeof(float));
    return -1;
}

static int64_t f16_from_f32_run(void *dst, const float *src, size_t n)
{
    uint16_t *h = dst;
    int64_t bad = -1;
    for (size_t i = 0; i < n; i++) {
        h[i] = f32_to_f16(src[i]);
        if (bad < 0 && (h[i] & 0x7fff) == 0x7c00 && isfinite(src[i]))
            bad = (int64_t)i;
    }
    return bad;
}

static int64_t bf16_from_f32_run(void *dst, const float *src, size_t n)
{
    uint16_t *h = dst;
    for (size_t i = 0; i < n; i++)
        h[i] = f32_to_bf16(src[i]);
    return -1; /* BF16 keeps F32's range */
}

static void q8_to_f32_run(float *dst, const void *src, size_t n)
{
    const q8_block *b = src;
    for (size_t i = 0; i < n / Q8_BLOCK; i++) {
        float d = f16_to_f32(b[i].d);
        for (int k = 0; k < Q8_BLOCK; k++)
            dst[i * Q8_BLOCK + (size_t)k] = d * (float)b[i].q[k];
    }
}

/* One block: the scale rounded to F16 first, then every value divided by
 * the scale it will be multiplied by again (clamped: a scale rounded down
 * would give 128). Returns the offending index in the block, or -1. */
static int q8_quantize(q8_block *b, const float *x)
{
    float amax = 0;
    for (int k = 0; k < Q8_BLOCK; k++) {
        if (!isfinite(x[k]))
            return k;
        amax = fabsf(x[k]) > amax ? fabsf(x[k]) : amax;
    }
    b->d = f32_to_f16(amax / 127.0f);
    if ((b->d & 0x7c00) == 0x7c00) {
        for (int k = 0; k < Q8_BLOCK; k++)
            if (fabsf(x[k]) == amax)
                return k;
    }
    float d = f16_to_f32(b->d);
    for (int k = 0; k < Q8_BLOCK; k++) {
        float q = d > 0 ? nearbyintf(x[k] / d) : 0.0f;
        b->q[k] = (int8_t)(q > 127.0f ? 127 : q < -127.0f ? -127 : q);
    }
    return -1;
}

static int64_t q8_from_f32_run(void *dst, const float *src, size_t n)
{
    q8_block *b = dst;
    for (size_t i = 0; i < n / Q8_BLOCK; i++) {
        int bad = q8_quantize(&b[i], src + i * Q8_BLOCK);
        if (bad >= 0)
            return (int64_t)(i * Q8_BLOCK) + bad;
    }
    return -1;
}

void q8_join(q8_block *dst, const int8_t *q, const uint16_t *d, size_t n)
{
    for (size_t i = 0; i < n / Q8_BLOCK; i++) {
        dst[i].d = d[i];
        memcpy(dst[i].q, q + i * Q8_BLOCK, Q8_BLOCK);
    }
}

void q8_split(int8_t *q, uint16_t *d, const q8_block *src, size_t n)
{
    for (size_t i = 0; i < n / Q8_BLOCK; i++) {
        d[i] = src[i].d;
        memcpy(q + i * Q8_BLOCK, src[i].q, Q8_BLOCK);
    }
}

static const dtype_traits traits[] = {
    [ST_F32] = { "F32", 1, 4, 0, f32_to_f32_run, f32_from_f32_run },
    [ST_F16] = { "F16", 1, 2, 0, f16_to_f32_run, f16_from_f32_run },
    [ST_BF16] = { "BF16", 1, 2, 0, bf16_to_f32_run, bf16_from_f32_run },
    [ST_Q8] = { "Q8", Q8_BLOCK, sizeof(q8_block), 1, q8_to_f32_run, q8_from_f32_run },
};

const dtype_traits *dtype_get(int dtype)
{
    if (dtype < 0 || dtype >= (int)(sizeof traits / sizeof traits[0]) || !traits[dtype].name)
        return NULL;
    return &traits[dtype];
}

int dtype_parse(const char *name)
{
    for (int d = 0; name && d < (int)(sizeof traits / sizeof traits[0]); d++)
        if (traits[d].name && !strcasecmp(name, traits[d].name))
            return d;
    return -1;
}

size_t dtype_bytes(int dtype, size_t n)
{
    const dtype_traits *t = dtype_get(dtype);
    return t ? n / (size_t)t->block * t->block_bytes : 0;
}
