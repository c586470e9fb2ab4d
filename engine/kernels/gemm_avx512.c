/* gemm_avx512.c: the AVX-512 entry of the GEMM kernel table.
 *
 * See gemm.h for the layout. The kernel keeps a tile of Z_MR rows by 32
 * columns of the output in 24 zmm registers; each step over k loads two
 * vectors of the packed panel and broadcasts one input value per row, so
 * it does 2 x Z_MR FMAs per 2 + Z_MR loads and is bound by the FMA
 * ports. The input is read in place (no packing of activations): a tile's
 * Z_MR rows are Z_MR sequential streams the prefetchers follow.
 * Panels are visited in blocks sized to stay in L2 while every row tile of
 * the call passes over them. A 16-bit pack is widened as it is loaded
 * (vcvtph2ps, or a shift for BF16): two more uops per 24 FMAs, hidden.
 *
 * The kernel is compiled for AVX-512F by function attributes, so the rest
 * of the engine stays portable; supported() checks the CPU at run time
 * before a model packs anything.
 */
#include "gemm.h"

#define Z_MR 12
#define Z_NR 32

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define GEMM_TARGET __attribute__((target("avx512f,fma")))
#define GEMM_INLINE static inline __attribute__((always_inline)) GEMM_TARGET

static int z_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

/* e^x, the polynomial of op_exp in vector form (same range reduction,
 * same coefficients, 2^n applied by scalef). It does not flush below -87
 * as op_exp does: its one use is 1 + e^-g, where e^-87 vanishes anyway. */
GEMM_INLINE __m512 v_exp(__m512 x)
{
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* silu(g) * u */
GEMM_INLINE __m512 v_swiglu(__m512 g, __m512 u)
{
    __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), v_exp(_mm512_sub_ps(_mm512_setzero_ps(), g)));
    /* 1/d: 14-bit estimate and one Newton step (~1 ulp), cheaper than a divide */
    __m512 r = _mm512_rcp14_ps(d);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
    return _mm512_mul_ps(_mm512_mul_ps(g, r), u);
}

static inline __mmask16 cols_mask(int n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* 16 weights of a panel row as floats: F16 and BF16 widen in registers,
 * Q8 (16 values of a block's row) sign-extends them to F32 unscaled (the
 * kernel rescales its accumulators per block, gemm.h). */
GEMM_INLINE __m512 load_w(const void *panel, size_t at, int dtype)
{
    if (dtype == ST_Q8)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
            _mm_loadu_si128((const __m128i *)((const int8_t *)panel + at))));
    if (dtype == ST_F32)
        return _mm512_load_ps((const float *)panel + at);
    __m256i h = _mm256_load_si256((const __m256i *)((const uint16_t *)panel + at));
    if (dtype == ST_F16)
        return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* out (mr, 32) tile = in (mr, K) x panel (K, 32), then the epilogue;
 * `left` output columns remain from this panel's first one. mr and dtype
 * are constants in every caller, so the accumulators stay in registers. */
GEMM_INLINE void kernel(int mr, int dtype, const gemm_args *a, const float *in,
                        const void *panel, float *out, int left, const float *bias)
{
    __m512 c0[Z_MR], c1[Z_MR];
    int K = a->K, ldi = a->ldi, ldo = a->ldo;
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++)
        c0[i] = c1[i] = _mm512_setzero_ps();
    /* Q8: blocks of 32 k, the accumulators first multiplied by the block's
     * ratios (gemm.h); any other dtype: one run over K */
    int kb = dtype == ST_Q8 ? Q8_BLOCK : K;
    const char *blk = panel;
    for (int k0 = 0; k0 < K; k0 += kb) {
        const void *rows = panel;
        if (dtype == ST_Q8) {
            __m512 r0 = _mm512_loadu_ps((const float *)blk);
            __m512 r1 = _mm512_loadu_ps((const float *)blk + 16);
#pragma GCC unroll 12
            for (int i = 0; i < mr; i++) {
                c0[i] = _mm512_mul_ps(c0[i], r0);
                c1[i] = _mm512_mul_ps(c1[i], r1);
            }
            rows = blk + Z_NR * sizeof(float); /* the block's row k0 */
            blk += Z_NR * (sizeof(float) + Q8_BLOCK);
        }
        for (int k = k0; k < k0 + kb; k++) {
            size_t at = (size_t)(dtype == ST_Q8 ? k - k0 : k) * Z_NR;
            __m512 b0 = load_w(rows, at, dtype);
            __m512 b1 = load_w(rows, at + 16, dtype);
#pragma GCC unroll 12
            for (int i = 0; i < mr; i++) {
                __m512 x = _mm512_set1_ps(in[(size_t)i * ldi + k]);
                c0[i] = _mm512_fmadd_ps(x, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(x, b1, c1[i]);
            }
        }
    }
    if (dtype == ST_Q8) { /* the last block's scales */
        __m512 s0 = _mm512_loadu_ps((const float *)blk), s1 = _mm512_loadu_ps((const float *)blk + 16);
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            c0[i] = _mm512_mul_ps(c0[i], s0);
            c1[i] = _mm512_mul_ps(c1[i], s1);
        }
    }
    __mmask16 m0 = cols_mask(left), m1 = cols_mask(left - 16);
    if (a->glu) {
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++)
            _mm512_mask_storeu_ps(out + (size_t)i * ldo, m0, v_swiglu(c0[i], c1[i]));
        return;
    }
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    if (bias) {
        b0 = _mm512_maskz_loadu_ps(m0, bias);
        b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
    }
    if (a->acc) { /* out += product: the residual or bias is there already */
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            float *o = out + (size_t)i * ldo;
            c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, o));
            c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, o + 16));
        }
    }
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
        _mm512_mask_storeu_ps(out + (size_t)i * ldo, m0, _mm512_add_ps(c0[i], b0));
        _mm512_mask_storeu_ps(out + (size_t)i * ldo + 16, m1, _mm512_add_ps(c1[i], b1));
    }
}

/* Rows [m, m + mr) against panels [p0, p1): one kernel instance per mr. */
GEMM_INLINE void row_tile(int dtype, const gemm_args *a, int m, int mr, int p0, int p1)
{
    int cols = a->glu ? Z_NR / 2 : Z_NR;
    size_t panel_bytes = gemm_panel_bytes(&gemm_kernel_avx512, a->K, dtype);
    const float *in = a->in + (size_t)m * a->ldi;
    for (int p = p0; p < p1; p++) {
        const void *panel = (const char *)a->w + (size_t)p * panel_bytes;
        float *out = a->out + (size_t)m * a->ldo + (size_t)p * cols;
        const float *bias = a->bias ? a->bias + (size_t)p * cols : NULL;
        int left = a->N - p * cols;
        switch (mr) {
#define GEMM_CASE(n) case n: kernel(n, dtype, a, in, panel, out, left, bias); break;
        GEMM_CASE(1) GEMM_CASE(2) GEMM_CASE(3) GEMM_CASE(4) GEMM_CASE(5) GEMM_CASE(6)
        GEMM_CASE(7) GEMM_CASE(8) GEMM_CASE(9) GEMM_CASE(10) GEMM_CASE(11) GEMM_CASE(12)
#undef GEMM_CASE
        default: break;
        }
    }
}

/* One function per pack dtype, each with its 12 kernel instances; a new
 * dtype is one more of these and a row in z_tile's table. */
GEMM_TARGET static void row_tile_f32(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_F32, a, m, mr, p0, p1);
}

GEMM_TARGET static void row_tile_f16(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_F16, a, m, mr, p0, p1);
}

GEMM_TARGET static void row_tile_bf16(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_BF16, a, m, mr, p0, p1);
}

GEMM_TARGET static void row_tile_q8(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_Q8, a, m, mr, p0, p1);
}

static void z_tile(const gemm_args *a, int m0, int m1, int p0, int p1)
{
    static const gemm_row_fn rows[GEMM_DTYPES] = {
        [ST_F32] = row_tile_f32, [ST_F16] = row_tile_f16, [ST_BF16] = row_tile_bf16,
        [ST_Q8] = row_tile_q8,
    };
    gemm_tile_blocks(&gemm_kernel_avx512, rows, a, m0, m1, p0, p1);
}

/* 12 chains of zmm FMAs: 2 ports x latency 4 need 8 in flight. */
GEMM_TARGET static double z_fma_loop(long reps)
{
    __m512 c[12], b = _mm512_set1_ps(0.999999f), x = _mm512_set1_ps(1e-6f);
    for (int i = 0; i < 12; i++)
        c[i] = _mm512_set1_ps((float)i);
    for (long r = 0; r < reps; r++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++)
            c[i] = _mm512_fmadd_ps(c[i], b, x);
    for (int i = 1; i < 12; i++)
        c[0] = _mm512_add_ps(c[0], c[i]);
    float s = _mm512_reduce_add_ps(c[0]);
    return (double)reps * 12 * 16 * 2 + (s != s); /* the sum keeps the loop alive */
}

#else /* not x86-64: the entry exists but never runs */

static int z_supported(void)
{
    return 0;
}

static void z_tile(const gemm_args *a, int m0, int m1, int p0, int p1)
{
    (void)a, (void)m0, (void)m1, (void)p0, (void)p1;
}

static double z_fma_loop(long reps)
{
    (void)reps;
    return 0;
}

#endif

const gemm_kernel gemm_kernel_avx512 = {
    "avx512", z_supported, Z_MR, Z_NR, gemm_pack_bytes_panels, gemm_pack_panels,
    gemm_pack_glu_panels, gemm_pack_f32_panels, z_tile, z_fma_loop,
};
