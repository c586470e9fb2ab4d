/* gemm_neon.c: the AArch64 NEON entry of the GEMM kernel table.
 *
 * A tile is 6 rows by 16 columns: 24 of the 32 q registers accumulate, four
 * hold the packed panel row and one the broadcast input value (ld1r), so
 * each k does 24 FMAs for 4 panel loads and 6 broadcasts. A GLU panel is
 * two vectors of gate and two of up. F16 packs widen with fcvtl (base
 * ARMv8, no extension needed), BF16 with a 16-bit left shift (shll). The
 * input is read in place and panels are visited in L2-sized blocks, as in
 * the x86 entries. Tested under qemu-aarch64 (scripts/test); no speed is
 * claimed for it without an ARM machine to measure on.
 */
#include <string.h>

#include "gemm.h"

#define N_MR 6
#define N_NR 16

#if defined(__aarch64__)
#include <arm_neon.h>

#include "ops.h"

static int n_supported(void)
{
    return 1; /* Advanced SIMD is part of every AArch64 CPU */
}

/* 4 weights of a panel row as floats: Q8 (4 values of a block's row)
 * widens them to F32 unscaled (the kernel rescales its accumulators per
 * block, gemm.h). A new pack dtype is a case here. */
static inline __attribute__((always_inline)) float32x4_t load_w(const void *panel, size_t at,
                                                                 int dtype)
{
    if (dtype == ST_Q8) {
        int32_t b4;
        memcpy(&b4, (const int8_t *)panel + at, 4);
        int16x8_t h = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(b4)));
        return vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
    }
    if (dtype == ST_F32)
        return vld1q_f32((const float *)panel + at);
    uint16x4_t h = vld1_u16((const uint16_t *)panel + at);
    if (dtype == ST_F16)
        return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

/* silu(g) * u, lane by lane through op_exp (the epilogue is a small share
 * of the work). */
static inline float32x4_t v_swiglu(float32x4_t g, float32x4_t u)
{
    float gs[4], us[4];
    vst1q_f32(gs, g);
    vst1q_f32(us, u);
    for (int l = 0; l < 4; l++)
        gs[l] = gs[l] / (1.0f + op_exp(-gs[l])) * us[l];
    return vld1q_f32(gs);
}

/* o[0..n) = v (+ o with acc), n <= 4. */
static inline void put(float *o, int n, float32x4_t v, int acc)
{
    if (n >= 4) {
        vst1q_f32(o, acc ? vaddq_f32(vld1q_f32(o), v) : v);
        return;
    }
    float t[4];
    vst1q_f32(t, v);
    for (int l = 0; l < n; l++)
        o[l] = acc ? o[l] + t[l] : t[l];
}

/* out (mr, 16) tile = in (mr, K) x panel (K, 16), then the epilogue;
 * `left` output columns remain from this panel's first one. */
/* c (mr, 16) *= s (16) column by column: a Q8 block's ratios or scales. */
static inline __attribute__((always_inline)) void rescale(float32x4_t c[][4], int mr,
                                                          const float *s)
{
    for (int v = 0; v < 4; v++) {
        float32x4_t sv = vld1q_f32(s + 4 * v);
        for (int i = 0; i < mr; i++)
            c[i][v] = vmulq_f32(c[i][v], sv);
    }
}

static inline __attribute__((always_inline)) void kernel(int mr, int dtype, const gemm_args *a,
                                                         const float *in, const void *panel,
                                                         float *out, int left, const float *bias)
{
    float32x4_t c[N_MR][4];
    int K = a->K, ldi = a->ldi, ldo = a->ldo;
#pragma GCC unroll 6
    for (int i = 0; i < mr; i++)
        c[i][0] = c[i][1] = c[i][2] = c[i][3] = vdupq_n_f32(0.0f);
    /* Q8: blocks of 32 k, the accumulators first multiplied by the block's
     * ratios (gemm.h); any other dtype: one run over K */
    int kb = dtype == ST_Q8 ? Q8_BLOCK : K;
    const char *blk = panel;
    for (int k0 = 0; k0 < K; k0 += kb) {
        const void *rows = panel;
        if (dtype == ST_Q8) {
            rescale(c, mr, (const float *)blk);
            rows = blk + N_NR * sizeof(float); /* the block's row k0 */
            blk += N_NR * (sizeof(float) + Q8_BLOCK);
        }
        for (int k = k0; k < k0 + kb; k++) {
            size_t at = (size_t)(dtype == ST_Q8 ? k - k0 : k) * N_NR;
            float32x4_t b[4];
            for (int v = 0; v < 4; v++)
                b[v] = load_w(rows, at + 4 * (size_t)v, dtype);
#pragma GCC unroll 6
            for (int i = 0; i < mr; i++) {
                float32x4_t x = vld1q_dup_f32(in + (size_t)i * ldi + k);
                for (int v = 0; v < 4; v++)
                    c[i][v] = vfmaq_f32(c[i][v], x, b[v]);
            }
        }
    }
    if (dtype == ST_Q8) /* the last block's scales */
        rescale(c, mr, (const float *)blk);
    for (int i = 0; i < mr; i++) {
        float *o = out + (size_t)i * ldo;
        for (int v = 0; v < (a->glu ? 2 : 4); v++) {
            int n = left - 4 * v;
            if (n <= 0)
                break;
            if (a->glu) {
                put(o + 4 * v, n, v_swiglu(c[i][v], c[i][v + 2]), 0);
                continue;
            }
            float32x4_t bv = vdupq_n_f32(0.0f);
            if (bias) {
                float t[4] = { 0 };
                for (int l = 0; l < 4 && l < n; l++)
                    t[l] = bias[4 * v + l];
                bv = vld1q_f32(t);
            }
            put(o + 4 * v, n, vaddq_f32(c[i][v], bv), a->acc);
        }
    }
}

/* Rows [m, m + mr) against panels [p0, p1): one kernel instance per mr. */
static inline __attribute__((always_inline)) void row_tile(int dtype, const gemm_args *a, int m,
                                                           int mr, int p0, int p1)
{
    int cols = a->glu ? N_NR / 2 : N_NR;
    size_t panel_bytes = gemm_panel_bytes(&gemm_kernel_neon, a->K, dtype);
    const float *in = a->in + (size_t)m * a->ldi;
    for (int p = p0; p < p1; p++) {
        const void *panel = (const char *)a->w + (size_t)p * panel_bytes;
        float *out = a->out + (size_t)m * a->ldo + (size_t)p * cols;
        const float *bias = a->bias ? a->bias + (size_t)p * cols : NULL;
        int left = a->N - p * cols;
        switch (mr) {
#define N_CASE(n) case n: kernel(n, dtype, a, in, panel, out, left, bias); break;
        N_CASE(1) N_CASE(2) N_CASE(3) N_CASE(4) N_CASE(5) N_CASE(6)
#undef N_CASE
        default: break;
        }
    }
}

/* One function per pack dtype; a new dtype is one more and a row in
 * n_tile's table. */
static void row_tile_f32(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_F32, a, m, mr, p0, p1);
}

static void row_tile_f16(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_F16, a, m, mr, p0, p1);
}

static void row_tile_bf16(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_BF16, a, m, mr, p0, p1);
}

static void row_tile_q8(const gemm_args *a, int m, int mr, int p0, int p1)
{
    row_tile(ST_Q8, a, m, mr, p0, p1);
}

static void n_tile(const gemm_args *a, int m0, int m1, int p0, int p1)
{
    static const gemm_row_fn rows[GEMM_DTYPES] = {
        [ST_F32] = row_tile_f32, [ST_F16] = row_tile_f16, [ST_BF16] = row_tile_bf16,
        [ST_Q8] = row_tile_q8,
    };
    gemm_tile_blocks(&gemm_kernel_neon, rows, a, m0, m1, p0, p1);
}

/* 16 chains of q-register FMAs: up to 4 pipes x latency 4. */
static double n_fma_loop(long reps)
{
    float32x4_t c[16], b = vdupq_n_f32(0.999999f), x = vdupq_n_f32(1e-6f);
    for (int i = 0; i < 16; i++)
        c[i] = vdupq_n_f32((float)i);
    for (long r = 0; r < reps; r++)
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            c[i] = vfmaq_f32(x, c[i], b);
    for (int i = 1; i < 16; i++)
        c[0] = vaddq_f32(c[0], c[i]);
    float s = vaddvq_f32(c[0]);
    return (double)reps * 16 * 4 * 2 + (s != s); /* the sum keeps the loop alive */
}

#else /* not AArch64: the entry exists but never runs */

static int n_supported(void)
{
    return 0;
}

static void n_tile(const gemm_args *a, int m0, int m1, int p0, int p1)
{
    (void)a, (void)m0, (void)m1, (void)p0, (void)p1;
}

static double n_fma_loop(long reps)
{
    (void)reps;
    return 0;
}

#endif

const gemm_kernel gemm_kernel_neon = {
    "neon", n_supported, N_MR, N_NR, gemm_pack_bytes_panels, gemm_pack_panels,
    gemm_pack_glu_panels, gemm_pack_f32_panels, n_tile, n_fma_loop,
};
