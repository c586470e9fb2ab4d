/* gemm_avx2.c: the AVX2+FMA entry of the GEMM kernel table (Intel Haswell
 * and later, AMD Zen).
 *
 * A tile is 6 rows by 16 columns: 12 ymm accumulators, two ymm of the
 * packed panel row and one broadcast input value, 15 of the 16 registers
 * (the BLIS Haswell shape). Each k does 12 FMAs for 2 panel loads and 6
 * broadcasts, under the 2 FMA + 2-3 load ports of these cores, so it is
 * bound by the FMA ports: 0.84-0.95 of one Zen 3 core's FMA peak at the
 * forward's shapes (bench/gemm_bench, docs/benchmarks.md). 4x24 holds the
 * same 12 accumulators but needs all 16 registers and would split a GLU
 * panel 12/12 across 8-lane vectors; with 6x16 a GLU panel is one vector
 * of gate and one of up. (4x24 was not built to compare; unrolling k by 4
 * measured no gain for F32 and F16 packs, and is what lets Q8's blocks of
 * 32 k keep F16 speed.) F16 packs widen with F16C's vcvtph2ps, BF16 with
 * a shift, Q8 with a sign extension and a conversion (the scales rescale
 * the accumulators once per block, gemm.h); the input is read in place, as in the
 * AVX-512 entry, and panels are visited in L2-sized blocks.
 *
 * Compiled for AVX2, FMA and F16C by function attributes, so a portable
 * build carries it and picks it at run time.
 */
#include "gemm.h"

#define A2_MR 6
#define A2_NR 16

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>

#define A2_TARGET __attribute__((target("avx2,fma,f16c")))
#define A2_INLINE static inline __attribute__((always_inline)) A2_TARGET

static int a2_supported(void)
{
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    /* F16C from CPUID leaf 1, ECX bit 29: clang's builtin does not know it */
    int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx >> 29 & 1);
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
}

/* e^x, op_exp's polynomial in vector form (same range reduction and
 * coefficients, 2^n built in the exponent bits). */
A2_INLINE __m256 v_exp(__m256 x)
{
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* silu(g) * u */
A2_INLINE __m256 v_swiglu(__m256 g, __m256 u)
{
    __m256 d = _mm256_add_ps(_mm256_set1_ps(1.0f), v_exp(_mm256_sub_ps(_mm256_setzero_ps(), g)));
    return _mm256_mul_ps(_mm256_div_ps(g, d), u);
}

/* Lanes [0, n) of a vector (n clamped to 0..8) as a maskload/store mask. */
A2_INLINE __m256i cols_mask(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* 8 weights of a panel row as floats: F16 and BF16 widen in registers,
 * Q8 (q: 8 values of a block's row) sign-extends them to F32 unscaled
 * (the kernel rescales its accumulators per block, gemm.h). A new pack
 * dtype is a case here. */
A2_INLINE __m256 load_w(const void *panel, size_t at, int dtype)
{
    if (dtype == ST_Q8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
            _mm_loadl_epi64((const __m128i *)((const int8_t *)panel + at))));
    if (dtype == ST_F32)
        return _mm256_loadu_ps((const float *)panel + at);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)panel + at));
    if (dtype == ST_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* o[0..8) (masked by m) = v, or += v with acc. */
A2_INLINE void put(float *o, __m256i m, int full, __m256 v, int acc)
{
    if (full) {
        _mm256_storeu_ps(o, acc ? _mm256_add_ps(_mm256_loadu_ps(o), v) : v);
        return;
    }
    if (acc)
        v = _mm256_add_ps(_mm256_maskload_ps(o, m), v);
    _mm256_maskstore_ps(o, m, v);
}

/* out (mr, 16) tile = in (mr, K) x panel (K, 16), then the epilogue;
 * `left` output columns remain from this panel's first one. mr and dtype
 * are constants in every caller, so the accumulators stay in registers. */
A2_INLINE void kernel(int mr, int dtype, const gemm_args *a, const float *in,
                      const void *panel, float *out, int left, const float *bias)
{
    __m256 c0[A2_MR], c1[A2_MR];
    int K = a->K, ldi = a->ldi, ldo = a->ldo;
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++)
        c0[i] = c1[i] = _mm256_setzero_ps();
    /* Q8: blocks of 32 k, the accumulators first multiplied by the block's
     * ratios (gemm.h); any other dtype: one run over K */
    int kb = dtype == ST_Q8 ? Q8_BLOCK : K;
    const char *blk = panel;
    for (int k0 = 0; k0 < K; k0 += kb) {
        const void *rows = panel;
        if (dtype == ST_Q8) {
            __m256 r0 = _mm256_loadu_ps((const float *)blk);
            __m256 r1 = _mm256_loadu_ps((const float *)blk + 8);
#pragma GCC unroll 6
            for (int i = 0; i < mr; i++) {
                c0[i] = _mm256_mul_ps(c0[i], r0);
                c1[i] = _mm256_mul_ps(c1[i], r1);
            }
            rows = blk + A2_NR * sizeof(float); /* the block's row k0 */
            blk += A2_NR * (sizeof(float) + Q8_BLOCK);
        }
#pragma GCC unroll 4
        for (int k = k0; k < k0 + kb; k++) {
            size_t at = (size_t)(dtype == ST_Q8 ? k - k0 : k) * A2_NR;
            __m256 b0 = load_w(rows, at, dtype);
            __m256 b1 = load_w(rows, at + 8, dtype);
#pragma GCC unroll 6
            for (int i = 0; i < mr; i++) {
                __m256 x = _mm256_broadcast_ss(in + (size_t)i * ldi + k);
                c0[i] = _mm256_fmadd_ps(x, b0, c0[i]);
                c1[i] = _mm256_fmadd_ps(x, b1, c1[i]);
            }
        }
    }
    if (dtype == ST_Q8) { /* the last block's scales */
        __m256 s0 = _mm256_loadu_ps((const float *)blk), s1 = _mm256_loadu_ps((const float *)blk + 8);
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++) {
            c0[i] = _mm256_mul_ps(c0[i], s0);
            c1[i] = _mm256_mul_ps(c1[i], s1);
        }
    }
    __m256i m0 = cols_mask(left), m1 = cols_mask(left - 8);
    if (a->glu) {
#pragma GCC unroll 6
        for (int i = 0; i < mr; i++)
            put(out + (size_t)i * ldo, m0, left >= 8, v_swiglu(c0[i], c1[i]), 0);
        return;
    }
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    if (bias) {
        b0 = _mm256_maskload_ps(bias, m0);
        b1 = _mm256_maskload_ps(bias + 8, m1);
    }
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++) {
        put(out + (size_t)i * ldo, m0, left >= 16, _mm256_add_ps(c0[i], b0), a->acc);
        put(out + (size_t)i * ldo + 8, m1, left >= 16, _mm256_add_ps(c1[i], b1), a->acc);
    }
}

/* Rows [m, m + mr) against panels [p0, p1): one kernel instance per mr. */
A2_INLINE void row_tile(int dtype, const gemm_args *a, int m, int mr, int p0, int p1)
{
    int cols = a->glu ? A2_NR / 2 : A2_NR;
    size_t panel_bytes = gemm_panel_bytes(&gemm_kernel_avx2, a->K, dtype);
    const float *in = a->in + (size_t)m * a->ldi;
    for (int p = p0; p < p1; p++) {
        const void *panel = (const char *)a->w + (size_t)p * panel_bytes;
        float *out = a->out + (size_t)m * a->ldo + (size_t)p * cols;
        const float *bias = a->bias ? a->bias + (size_t)p * cols : NULL;
        int left = a->N - p * cols;
        switch (mr) {
#define A2_CASE(n) case n: kernel(n, dtype, a, in, panel, out, left, bias); break;
        A2_CASE(1) A2_CASE(2) A2_CASE(3) A2_CASE(4) A2_CASE(5) A2_CASE(6)
#undef A2_CASE
        default: break;
        }
    }
}

/* One function per pack dtype, each with its 6 kernel instances; a new
 * dtype is one more of these and a row in a2_tile's table. */
A2_TARGET static void row_tile_f32(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_F32, a, m, mr, p0, p1);
}

A2_TARGET static void row_tile_f16(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_F16, a, m, mr, p0, p1);
}

A2_TARGET static void row_tile_bf16(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_BF16, a, m, mr, p0, p1);
}

A2_TARGET static void row_tile_q8(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_Q8, a, m, mr, p0, p1);
}

static void a2_tile(const gemm_args *a, int m0, int m1, int p0, int p1)
{
    static const gemm_row_fn rows[GEMM_DTYPES] = {
        [ST_F32] = row_tile_f32, [ST_F16] = row_tile_f16, [ST_BF16] = row_tile_bf16,
        [ST_Q8] = row_tile_q8,
    };
    gemm_tile_blocks(&gemm_kernel_avx2, rows, a, m0, m1, p0, p1);
}

/* 10 chains of ymm FMAs: 2 ports x latency 4 (Haswell to Zen 3) need 8
 * in flight; c converges to x / (1 - b), so nothing overflows. */
A2_TARGET static double a2_fma_loop(long reps)
{
    __m256 c[10], b = _mm256_set1_ps(0.999999f), x = _mm256_set1_ps(1e-6f);
    for (int i = 0; i < 10; i++)
        c[i] = _mm256_set1_ps((float)i);
    for (long r = 0; r < reps; r++)
#pragma GCC unroll 10
        for (int i = 0; i < 10; i++)
            c[i] = _mm256_fmadd_ps(c[i], b, x);
    float sum[8];
    for (int i = 1; i < 10; i++)
        c[0] = _mm256_add_ps(c[0], c[i]);
    _mm256_storeu_ps(sum, c[0]);
    return (double)reps * 10 * 8 * 2 + (sum[0] != sum[0]); /* the sum keeps the loop alive */
}

#else /* not x86-64: the entry exists but never runs */

static int a2_supported(void)
{
    return 0;
}

static void a2_tile(const gemm_args *a, int m0, int m1, int p0, int p1)
{
    (void)a, (void)m0, (void)m1, (void)p0, (void)p1;
}

static double a2_fma_loop(long reps)
{
    (void)reps;
    return 0;
}

#endif

const gemm_kernel gemm_kernel_avx2 = {
    "avx2", a2_supported, A2_MR, A2_NR, gemm_pack_bytes_panels, gemm_pack_panels,
    gemm_pack_glu_panels, gemm_pack_f32_panels, a2_tile, a2_fma_loop,
};
