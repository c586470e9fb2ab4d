/* gemm.c: the table of GEMM kernel entries, the choice among them, and the
 * packing shared by every entry whose layout is plain (K, nr) panels.
 *
 * The table is ordered best first; gemm_kernel_choose takes the first entry
 * whose supported() says yes, unless DITMOE_ISA names one (for tests and
 * benchmarks: run the AVX2 kernel on an AVX-512 machine, or the C
 * reference anywhere). The choice is made once per model load; asking for
 * an ISA the CPU lacks is an error, never a silent fallback, so a test
 * that asks for a kernel is known to have run it.
 *
 * Packing writes the layout every entry reads: panel p of a pack holds the
 * weight rows [p nr, (p+1) nr) as its columns, K rows of nr values. It
 * runs once per weight at load (or per call for activations, pack_f32),
 * so it is plain C; 16-bit weights are copied as they are stored and
 * widened by the tile function in registers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ditmoe/dit_status.h>

#include "gemm.h"

#define GEMM_L2_BYTES (512 * 1024) /* the panel block the row tiles share */

static const gemm_kernel *const table[] = {
    &gemm_kernel_avx512, &gemm_kernel_avx2, &gemm_kernel_neon, &gemm_kernel_c, NULL,
};

const gemm_kernel *const *gemm_kernels(void)
{
    return table;
}

const gemm_kernel *gemm_kernel_find(const char *name)
{
    for (int i = 0; table[i]; i++)
        if (!strcmp(table[i]->name, name))
            return table[i];
    return NULL;
}

int gemm_kernel_choose(const gemm_kernel **out, char *err, size_t errlen)
{
    const char *want = getenv("DITMOE_ISA");
    *out = NULL;
    if (!want || !*want || !strcmp(want, "auto")) {
        for (int i = 0; table[i]; i++)
            if (table[i]->supported()) {
                *out = table[i];
                return DIT_OK;
            }
        snprintf(err, errlen, "no GEMM kernel runs on this CPU"); /* the C one always does */
        return DIT_E_INVAL;
    }
    const gemm_kernel *k = gemm_kernel_find(want);
    if (!k) {
        snprintf(err, errlen, "DITMOE_ISA=%s: unknown kernel (auto, avx512, avx2, neon or c)", want);
        return DIT_E_INVAL;
    }
    if (!k->supported()) {
        snprintf(err, errlen, "DITMOE_ISA=%s: this CPU lacks %s (unset DITMOE_ISA or use auto "
                 "to take the best kernel it runs)", want, want);
        return DIT_E_INVAL;
    }
    *out = k;
    return DIT_OK;
}

int gemm_pack_dtype(const kmat *w, const kmat *up)
{
    return !up || up->dtype == w->dtype ? w->dtype : ST_F32;
}

size_t gemm_pack_bytes_panels(const gemm_kernel *k, int N, int K, int glu, int dtype)
{
    size_t b = (size_t)gemm_panels(k, N, glu) * gemm_panel_bytes(k, K, dtype);
    return (b + 63) & ~(size_t)63;
}

int gemm_panel_block(const gemm_kernel *k, int K, int dtype)
{
    size_t panel = gemm_panel_bytes(k, K, dtype);
    int block = (int)(GEMM_L2_BYTES / (panel ? panel : 1));
    return block < 1 ? 1 : block;
}

void gemm_tile_blocks(const gemm_kernel *k, const gemm_row_fn row[GEMM_DTYPES],
                      const gemm_args *a, int m0, int m1, int p0, int p1)
{
    gemm_row_fn f = a->wdtype >= 0 && a->wdtype < GEMM_DTYPES ? row[a->wdtype] : NULL;
    if (!f)
        return; /* no pack of this kernel has that dtype */
    int block = gemm_panel_block(k, a->K, a->wdtype);
    for (int pb = p0; pb < p1; pb += block) {
        int pe = pb + block < p1 ? pb + block : p1;
        for (int m = m0; m < m1; m += k->mr)
            f(a, m, m1 - m < k->mr ? m1 - m : k->mr, pb, pe);
    }
}

/* Column j of Q8 panel p (gemm.h's layout) takes the K / 32 blocks of a
 * row (NULL: a column past the matrix's last row, all zeros): the values,
 * before block b the ratio d(b-1) / d(b) of the scales (1 before the
 * first), after the last block its scale. A zero block's scale is taken
 * as 1 (its values are 0), so no ratio divides by 0. */
static void pack_q8_col(const gemm_kernel *g, void *dst, size_t p, const q8_block *src,
                        size_t K, size_t j)
{
    size_t nr = (size_t)g->nr, bytes = nr * (sizeof(float) + Q8_BLOCK), nb = K / Q8_BLOCK;
    char *panel = (char *)dst + p * gemm_panel_bytes(g, (int)K, ST_Q8);
    float prev = 1.0f;
    for (size_t b = 0; b < nb; b++) {
        float *ratio = (float *)(panel + b * bytes);
        int8_t *q = (int8_t *)(ratio + nr);
        float d = src ? f16_to_f32(src[b].d) : 0.0f;
        d = d > 0 ? d : 1.0f;
        ratio[j] = b ? prev / d : 1.0f;
        prev = d;
        for (size_t k = 0; k < Q8_BLOCK; k++)
            q[k * nr + j] = src ? src[b].q[k] : 0;
    }
    ((float *)(panel + nb * bytes))[j] = src ? prev : 0.0f;
}

/* Columns [j0, j0 + n) of panel p (K rows of nr) of a pack in dtype take
 * rows r0.. of w (zeros past its last row). The pack's dtype is w's or
 * F32: 16-bit values are copied as they are, Q8 blocks are spread into
 * the panel's scales and int8 rows, anything else is widened to F32
 * through the dtype table (into `row`, K floats of scratch). A new pack
 * dtype is a case here. */
static void pack_cols(const gemm_kernel *g, void *dst, int dtype, size_t p, const kmat *w,
                      int r0, int j0, int n, float *row)
{
    size_t K = (size_t)w->cols, nr = (size_t)g->nr, base = p * K * nr;
    for (int j = 0; j < n; j++) {
        int r = r0 + j;
        size_t col = base + (size_t)(j0 + j);
        const char *src = r < w->rows ? (const char *)w->data + dtype_bytes(w->dtype, (size_t)r * K)
                                      : NULL;
        switch (dtype) {
        case ST_F32: {
            float *d = (float *)dst + col;
            if (src)
                dtype_get(w->dtype)->to_f32(row, src, K);
            for (size_t k = 0; k < K; k++)
                d[k * nr] = src ? row[k] : 0.0f;
            break;
        }
        case ST_F16:
        case ST_BF16: {
            uint16_t *d = (uint16_t *)dst + col;
            const uint16_t *h = (const uint16_t *)src;
            for (size_t k = 0; k < K; k++)
                d[k * nr] = h ? h[k] : 0;
            break;
        }
        case ST_Q8:
            pack_q8_col(g, dst, p, (const q8_block *)src, K, (size_t)(j0 + j));
            break;
        default:
            break;
        }
    }
}

void gemm_pack_panels(const gemm_kernel *k, void *dst, int dtype, const kmat *w, float *row)
{
    int np = gemm_panels(k, w->rows, 0);
    for (int p = 0; p < np; p++)
        pack_cols(k, dst, dtype, (size_t)p, w, p * k->nr, 0, k->nr, row);
}

void gemm_pack_glu_panels(const gemm_kernel *k, void *dst, int dtype, const kmat *gate,
                          const kmat *up, float *row)
{
    int np = gemm_panels(k, gate->rows, 1), h = k->nr / 2;
    for (int p = 0; p < np; p++) {
        pack_cols(k, dst, dtype, (size_t)p, gate, p * h, 0, h, row);
        pack_cols(k, dst, dtype, (size_t)p, up, p * h, h, h, row);
    }
}

void gemm_pack_f32_panels(const gemm_kernel *k, float *dst, int N, int K, int k0, int kn,
                          const float *src, ptrdiff_t rs, ptrdiff_t cs, float scale)
{
    int nr = k->nr, np = gemm_panels(k, N, 0);
    for (int p = 0; p < np; p++) {
        float *panel = dst + (size_t)p * K * nr;
        int n = N - p * nr < nr ? N - p * nr : nr;
        const float *s0 = src + (ptrdiff_t)p * nr * rs;
        for (int i = 0; i < kn; i++) {
            float *d = panel + (size_t)(k0 + i) * nr;
            const float *s = s0 + (ptrdiff_t)i * cs;
            if (rs == 1 && scale == 1.0f) { /* contiguous: the im2col case */
                memcpy(d, s, sizeof(float) * (size_t)n);
            } else {
                for (int j = 0; j < n; j++)
                    d[j] = scale * s[(ptrdiff_t)j * rs];
            }
            for (int j = n; j < nr; j++)
                d[j] = 0.0f;
        }
    }
}
