/* int8.c: activation quantisation and the exact integer GEMM reference of
 * the int8 compute mode (see int8.h). Plain C: correctness first, for a
 * VNNI kernel to be checked against; nothing here is meant to be fast. */
#include <math.h>

#include "int8.h"

int int8_cpu_has_vnni(void)
{
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") || __builtin_cpu_supports("avxvnni");
#elif defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

void int8_quantize_rows(int8_t *xq, float *xs, const float *x, int M, int K)
{
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * K;
        float amax = 0;
        for (int k = 0; k < K; k++)
            amax = fabsf(r[k]) > amax || isnan(r[k]) ? fabsf(r[k]) : amax;
        float s = amax / 127.0f;
        xs[m] = s;
        for (int k = 0; k < K; k++) {
            float q = s > 0 && isfinite(s) ? nearbyintf(r[k] / s) : 0.0f;
            xq[(size_t)m * K + k] = (int8_t)(q > 127.0f ? 127 : q < -127.0f ? -127 : q);
        }
    }
}

/* sum_k a[k] * b[k] over one block, exactly: |sum| <= 32 * 128 * 128. */
static int32_t block_dot(const int8_t *a, const int8_t *b)
{
    int32_t s = 0;
    for (int k = 0; k < Q8_BLOCK; k++)
        s += (int32_t)a[k] * (int32_t)b[k];
    return s;
}

void int8_block_sums(int32_t *acc, const int8_t *xq, const q8_block *w, int M, int N, int K)
{
    int nb = K / Q8_BLOCK;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++)
            for (int b = 0; b < nb; b++)
                acc[((size_t)m * N + n) * nb + b] =
                    block_dot(xq + (size_t)m * K + (size_t)b * Q8_BLOCK, w[(size_t)n * nb + b].q);
}

void int8_gemm_ref(float *out, const int8_t *xq, const float *xs, const q8_block *w,
                   const float *bias, int M, int N, int K)
{
    int nb = K / Q8_BLOCK;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            const q8_block *row = w + (size_t)n * nb;
            float s = 0;
            for (int b = 0; b < nb; b++)
                s += f16_to_f32(row[b].d) *
                     (float)block_dot(xq + (size_t)m * K + (size_t)b * Q8_BLOCK, row[b].q);
            out[(size_t)m * N + n] = xs[m] * s + (bias ? bias[n] : 0.0f);
        }
}
