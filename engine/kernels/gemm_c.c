/* gemm_c.c: the plain C entry of the GEMM kernel table, the reference the
 * ISA entries are tested against and the kernel of every CPU without one.
 *
 * Same contract and same (K, nr) panel layout as the others (gemm.h), with
 * a tile of C_MR rows by C_NR columns kept in a local array the compiler
 * may vectorise. Each panel row is widened to F32 through the dtype table
 * once per k and then used by every row of the tile, so a 16-bit pack
 * costs one conversion per C_MR multiply-adds; a Q8 panel's values are
 * widened alone and the tile rescaled once per block (gemm.h). It is written for being
 * obviously right, not fast: no blocking beyond the shared L2 panel block.
 */
#include "gemm.h"
#include "ops.h"

#define C_MR 4
#define C_NR 16

static int c_supported(void)
{
    return 1;
}

/* out (mr, cols) of the tile at rows m.., panel p, from acc (mr, C_NR):
 * bias, accumulation or the GLU epilogue; `left` output columns remain
 * from the panel's first one. */
static void epilogue(const gemm_args *a, float acc[C_MR][C_NR], int m, int mr, int p)
{
    int cols = a->glu ? C_NR / 2 : C_NR, c0 = p * cols;
    int n = a->N - c0 < cols ? a->N - c0 : cols;
    for (int i = 0; i < mr; i++) {
        float *o = a->out + (size_t)(m + i) * a->ldo + c0;
        for (int j = 0; j < n; j++) {
            if (a->glu) {
                float g = acc[i][j];
                o[j] = g / (1.0f + op_exp(-g)) * acc[i][j + C_NR / 2];
                continue;
            }
            float v = acc[i][j] + (a->bias ? a->bias[c0 + j] : 0.0f);
            o[j] = a->acc ? o[j] + v : v;
        }
    }
}

/* acc (mr, C_NR) += in (mr rows of stride ldi, k0..k0+kn) x rows
 * [k0, k0 + kn) of the panel, each widened to F32 first (Q8: the values
 * only, unscaled; row k0 of the block starts at q). */
static void micro_rows(const gemm_args *a, float acc[C_MR][C_NR], const float *in, int mr,
                       const char *panel, const int8_t *q, int k0, int kn)
{
    float w[C_NR];
    for (int k = k0; k < k0 + kn; k++) {
        if (q)
            for (int j = 0; j < C_NR; j++)
                w[j] = (float)q[(size_t)(k - k0) * C_NR + j];
        else
            dtype_get(a->wdtype)->to_f32(w, panel + (size_t)k * dtype_bytes(a->wdtype, C_NR),
                                         C_NR);
        for (int i = 0; i < mr; i++) {
            float x = in[(size_t)i * a->ldi + k];
            for (int j = 0; j < C_NR; j++)
                acc[i][j] += x * w[j];
        }
    }
}

/* acc (mr, C_NR) *= s (C_NR) column by column. */
static void scale_acc(float acc[C_MR][C_NR], int mr, const float *s)
{
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < C_NR; j++)
            acc[i][j] *= s[j];
}

/* Rows [m, m + mr) against panel p; a Q8 panel block by block, the
 * accumulators rescaled by each block's ratios and the last scale
 * (gemm.h's layout). */
static void micro(const gemm_args *a, int m, int mr, int p)
{
    float acc[C_MR][C_NR] = { { 0 } };
    const char *panel = (const char *)a->w + (size_t)p * gemm_panel_bytes(&gemm_kernel_c, a->K,
                                                                          a->wdtype);
    const float *in = a->in + (size_t)m * a->ldi;
    if (a->wdtype != ST_Q8) {
        micro_rows(a, acc, in, mr, panel, NULL, 0, a->K);
        epilogue(a, acc, m, mr, p);
        return;
    }
    size_t bytes = C_NR * (sizeof(float) + Q8_BLOCK);
    int nb = a->K / Q8_BLOCK;
    for (int b = 0; b < nb; b++) {
        const float *ratio = (const float *)(panel + (size_t)b * bytes);
        scale_acc(acc, mr, ratio);
        micro_rows(a, acc, in, mr, panel, (const int8_t *)(ratio + C_NR), b * Q8_BLOCK, Q8_BLOCK);
    }
    scale_acc(acc, mr, (const float *)(panel + (size_t)nb * bytes));
    epilogue(a, acc, m, mr, p);
}

/* Rows [m, m + mr) against panels [p0, p1), any dtype of the table. */
static void row_tile(const gemm_args *a, int m, int mr, int p0, int p1)
{
    for (int p = p0; p < p1; p++)
        micro(a, m, mr, p);
}

static void c_tile(const gemm_args *a, int m0, int m1, int p0, int p1)
{
    static const gemm_row_fn rows[GEMM_DTYPES] = {
        [ST_F32] = row_tile, [ST_F16] = row_tile, [ST_BF16] = row_tile, [ST_Q8] = row_tile,
    };
    gemm_tile_blocks(&gemm_kernel_c, rows, a, m0, m1, p0, p1);
}

/* 16 independent multiply-add chains in plain C: what the compiler makes
 * of them for this build's target is the C entry's peak. */
static double c_fma_loop(long reps)
{
    float c[16], s = 0;
    for (int i = 0; i < 16; i++)
        c[i] = (float)i;
    for (long r = 0; r < reps; r++)
        for (int i = 0; i < 16; i++)
            c[i] = c[i] * 0.999999f + 1e-6f;
    for (int i = 0; i < 16; i++)
        s += c[i];
    return (double)reps * 16 * 2 + (s != s); /* the sum keeps the loop alive */
}

const gemm_kernel gemm_kernel_c = {
    "c", c_supported, C_MR, C_NR, gemm_pack_bytes_panels, gemm_pack_panels,
    gemm_pack_glu_panels, gemm_pack_f32_panels, c_tile, c_fma_loop,
};
