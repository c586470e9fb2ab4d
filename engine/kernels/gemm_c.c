/* gemm_c.c: the plain C entry of the GEMM kernel table, the reference the
 * ISA entries are tested against and the kernel of every CPU without one.
 *
 * Same contract and same (K, nr) panel layout as the others (gemm.h), with
 * a tile of C_MR rows by C_NR columns kept in a local array the compiler
 * may vectorise. Each panel row is widened to F32 through the dtype table
 * once per k and then used by every row of the tile, so a 16-bit pack
 * costs one conversion per C_MR multiply-adds. It is written for being
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

/* w (C_NR) = row k of a panel in dtype, widened to F32 (Q8: the row's
 * values times their columns' scales for its block of 32 rows). */
static void panel_row(float *w, const char *panel, int k, int dtype)
{
    if (dtype == ST_Q8) {
        const float *scale = (const float *)(panel + (size_t)(k / Q8_BLOCK) * C_NR *
                                                         (sizeof(float) + Q8_BLOCK));
        const int8_t *q = (const int8_t *)(scale + C_NR) + (size_t)(k % Q8_BLOCK) * C_NR;
        for (int j = 0; j < C_NR; j++)
            w[j] = scale[j] * (float)q[j];
        return;
    }
    dtype_get(dtype)->to_f32(w, panel + (size_t)k * dtype_bytes(dtype, C_NR), C_NR);
}

/* Rows [m, m + mr) against panel p. */
static void micro(const gemm_args *a, int m, int mr, int p)
{
    float acc[C_MR][C_NR] = { { 0 } }, w[C_NR];
    const char *panel = (const char *)a->w + (size_t)p * gemm_panel_bytes(&gemm_kernel_c, a->K,
                                                                          a->wdtype);
    const float *in = a->in + (size_t)m * a->ldi;
    for (int k = 0; k < a->K; k++) {
        panel_row(w, panel, k, a->wdtype);
        for (int i = 0; i < mr; i++) {
            float x = in[(size_t)i * a->ldi + k];
            for (int j = 0; j < C_NR; j++)
                acc[i][j] += x * w[j];
        }
    }
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
