/* vae_ops.c: the SD-VAE decoder's operators (see vae_ops.h for contracts).
 *
 * Where the time goes: the 3x3 convolutions are nearly all of the decoder's
 * work, so they are single large GEMMs (M = cout, K = 9 cin, N = a band of
 * output rows) over an im2col band small enough to stay in cache. Building
 * the band costs one pass over the input per band: each input row is read
 * once, put through the GroupNorm affine and SiLU once (op_exp, which the
 * compiler vectorises), widened for upsampling, and then only
 * copied nine times. The bias (or the bias plus the residual) is written
 * into the output first and the GEMMs accumulate into it.
 *
 * Nothing here allocates; the caller passes every scratch buffer.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ops.h"
#include "vae_ops.h"

/* Floats of im2col band per convolution (16 MiB): bands of a few rows. */
#define VAE_COL_BUDGET ((size_t)4 << 20)
/* Floats of attention scores per query tile (4 MiB). */
#define VAE_ATT_BUDGET ((size_t)1 << 20)

/* ---- elementwise ------------------------------------------------------- */

/* out (n) = silu(in * s + t) or in * s + t */
static void affine_row(float *out, const float *in, float s, float t, int n,
                       int silu)
{
    if (silu) {
        for (int i = 0; i < n; i++) {
            float v = in[i] * s + t;
            out[i] = v / (1.0f + op_exp(-v));
        }
    } else {
        for (int i = 0; i < n; i++)
            out[i] = in[i] * s + t;
    }
}

void vae_affine_forward(float *out, const float *in, const float *scale,
                        const float *shift, int C, int HW)
{
    for (int c = 0; c < C; c++)
        affine_row(out + (size_t)c * HW, in + (size_t)c * HW, scale[c],
                   shift[c], HW, 0);
}

/* Sum of x[0..n) (minus `center`, squared when sq), in double. Float lanes
 * the compiler vectorises, flushed into the double every 1024 elements. */
static double sum_span(const float *x, size_t n, float center, int sq)
{
    double total = 0.0;
    for (size_t i0 = 0; i0 < n; i0 += 1024) {
        size_t m = n - i0 < 1024 ? n - i0 : 1024, j = 0;
        float lane[16] = {0};
        for (; j + 16 <= m; j += 16)
            for (int l = 0; l < 16; l++) {
                float v = x[i0 + j + l] - center;
                lane[l] += sq ? v * v : v;
            }
        for (; j < m; j++) {
            float v = x[i0 + j] - center;
            total += sq ? (double)v * v : v;
        }
        for (int l = 0; l < 16; l++)
            total += lane[l];
    }
    return total;
}

void vae_groupnorm_coef_forward(float *scale, float *shift, const float *x,
                                const float *gamma, const float *beta, int C,
                                int HW, int G, double eps)
{
    int cpg = C / G;
    size_t n = (size_t)cpg * (size_t)HW; /* a group's channels are contiguous */
    for (int g = 0; g < G; g++) {
        const float *xg = x + (size_t)g * n;
        double mean = sum_span(xg, n, 0.0f, 0) / (double)n;
        /* second pass around the float mean: the variance without the
         * cancellation of E[x^2] - mean^2; the shift's rounding is undone */
        float mf = (float)mean;
        double d = mean - mf;
        double var = sum_span(xg, n, mf, 1) / (double)n - d * d;
        double rstd = 1.0 / sqrt((var > 0 ? var : 0) + eps);
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            scale[c] = (float)(gamma[c] * rstd);
            shift[c] = (float)(beta[c] - mean * gamma[c] * rstd);
        }
    }
}

void vae_softmax_forward(float *x, float alpha, int M, int N)
{
    for (int i = 0; i < M; i++) {
        float *r = x + (size_t)i * N;
        float mx = r[0], lmax[16];
        int j = 0;
        for (int l = 0; l < 16; l++)
            lmax[l] = r[0];
        for (; j + 16 <= N; j += 16)
            for (int l = 0; l < 16; l++)
                lmax[l] = r[j + l] > lmax[l] ? r[j + l] : lmax[l];
        for (; j < N; j++)
            mx = r[j] > mx ? r[j] : mx;
        for (int l = 0; l < 16; l++)
            mx = lmax[l] > mx ? lmax[l] : mx;
        float lane[16] = {0};
        j = 0;
        for (; j + 16 <= N; j += 16)
            for (int l = 0; l < 16; l++) {
                float e = op_exp((r[j + l] - mx) * alpha);
                r[j + l] = e;
                lane[l] += e;
            }
        double sum = 0.0;
        for (; j < N; j++) {
            r[j] = op_exp((r[j] - mx) * alpha);
            sum += r[j];
        }
        for (int l = 0; l < 16; l++)
            sum += lane[l];
        float inv = (float)(1.0 / sum);
        for (j = 0; j < N; j++)
            r[j] *= inv;
    }
}

/* ---- convolution ------------------------------------------------------- */

/* Output rows per im2col band. */
static int band_rows(const vae_conv_dims *d)
{
    size_t kc = (size_t)d->cin * d->k * d->k, wo = (size_t)d->w * d->up;
    size_t ho = (size_t)d->h * d->up, r = VAE_COL_BUDGET / (kc * wo);
    return (int)(r < 1 ? 1 : r > ho ? ho : r);
}

size_t vae_conv2d_col_floats(const vae_conv_dims *d)
{
    if (d->k == 1)
        return 0; /* read in place */
    size_t kc = (size_t)d->cin * 9, wo = (size_t)d->w * d->up;
    size_t rows = (size_t)band_rows(d);
    return kc * rows * wo + (rows + 2) * (wo + 2);
}

/* row[0..wo) = f(input row sy of channel ci), upsampled by d->up */
static void gather_row(float *row, const float *in, const vae_conv_dims *d,
                       int ci, int sy)
{
    const float *src = in + ((size_t)ci * d->h + sy) * d->w;
    if (d->scale)
        affine_row(row, src, d->scale[ci], d->shift[ci], d->w, d->silu);
    else
        memcpy(row, src, sizeof(float) * (size_t)d->w);
    if (d->up == 2) /* widen in place, right to left */
        for (int x = d->w - 1; x >= 0; x--)
            row[2 * x + 1] = row[2 * x] = row[x];
}

/* col (cin*9, nr*wo): the 3x3 neighbourhoods of output rows y0..y0+nr of
 * f(in), zero-padded; rb (nr+2, wo+2) holds one channel's padded rows. */
static void im2col_band(float *col, float *rb, const float *in,
                        const vae_conv_dims *d, int y0, int nr)
{
    int wo = d->w * d->up, ho = d->h * d->up, stride = wo + 2;
    size_t P = (size_t)nr * wo;
    for (int ci = 0; ci < d->cin; ci++) {
        for (int r = 0; r < nr + 2; r++) {
            int yy = y0 - 1 + r; /* output-resolution row */
            float *row = rb + (size_t)r * stride;
            row[0] = row[wo + 1] = 0.0f;
            if (yy < 0 || yy >= ho)
                memset(row + 1, 0, sizeof(float) * (size_t)wo);
            else if (d->up == 2 && r > 0 && yy > 0 && (yy >> 1) == ((yy - 1) >> 1))
                memcpy(row + 1, row + 1 - stride, sizeof(float) * (size_t)wo);
            else
                gather_row(row + 1, in, d, ci, yy / d->up);
        }
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                float *dst = col + ((size_t)ci * 9 + (size_t)ky * 3 + kx) * P;
                for (int t = 0; t < nr; t++)
                    memcpy(dst + (size_t)t * wo, rb + (size_t)(t + ky) * stride + kx,
                           sizeof(float) * (size_t)wo);
            }
    }
}

void vae_conv2d_forward(float *out, const float *in, const float *w,
                        const float *b, const vae_conv_dims *d, float *col)
{
    int ho = d->h * d->up, wo = d->w * d->up;
    size_t hw = (size_t)ho * wo;
    for (int co = 0; co < d->cout; co++) { // out (cout, ho, wo) = b [+ out]
        float *o = out + (size_t)co * hw, bv = b[co];
        if (d->accumulate)
            for (size_t i = 0; i < hw; i++)
                o[i] += bv;
        else
            for (size_t i = 0; i < hw; i++)
                o[i] = bv;
    }
    if (d->k == 1) { /* 1x1 without transform: the input is the matrix */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d->cout, (int)hw,
                    d->cin, 1.0f, w, d->cin, in, (int)hw, 1.0f, out, (int)hw);
        return;
    }
    int kc = d->cin * 9, rows = band_rows(d);
    for (int y0 = 0; y0 < ho; y0 += rows) {
        int nr = ho - y0 < rows ? ho - y0 : rows, P = nr * wo;
        float *rb = col + (size_t)kc * (size_t)P;
        im2col_band(col, rb, in, d, y0, nr);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d->cout, P, kc,
                    1.0f, w, kc, col, P, 1.0f, out + (size_t)y0 * wo, (int)hw);
    }
}

/* ---- attention --------------------------------------------------------- */

int vae_attention_tile(int T)
{
    size_t r = VAE_ATT_BUDGET / (size_t)T;
    return (int)(r < 1 ? 1 : r > (size_t)T ? (size_t)T : r);
}

void vae_attention_forward(float *x, const float *const w[4],
                           const float *const b[4], const float *scale,
                           const float *shift, int C, int T,
                           const vae_attn_scratch *sc)
{
    vae_conv_dims p = {.cin = C, .cout = C, .k = 1, .h = 1, .w = T, .up = 1};
    vae_affine_forward(sc->xn, x, scale, shift, C, T);          // (C, T)
    vae_conv2d_forward(sc->q, sc->xn, w[0], b[0], &p, NULL);    // (C, T)
    vae_conv2d_forward(sc->k, sc->xn, w[1], b[1], &p, NULL);    // (C, T)
    vae_conv2d_forward(sc->v, sc->xn, w[2], b[2], &p, NULL);    // (C, T)
    float *o = sc->xn; /* xn is spent: the heads' output goes there */
    for (int t0 = 0; t0 < T; t0 += sc->tq) {
        int nq = T - t0 < sc->tq ? T - t0 : sc->tq;
        // s (nq, T) = q[:, t0:t0+nq]^T k
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nq, T, C, 1.0f,
                    sc->q + t0, T, sc->k, T, 0.0f, sc->s, T);
        vae_softmax_forward(sc->s, (float)(1.0 / sqrt((double)C)), nq, T);
        // o[:, t0:t0+nq] (C, nq) = v (C, T) s^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, C, nq, T, 1.0f,
                    sc->v, T, sc->s, T, 0.0f, o + t0, T);
    }
    p.accumulate = 1;
    vae_conv2d_forward(x, o, w[3], b[3], &p, NULL);             // x += Wo o + bo
}
