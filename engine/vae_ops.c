/* vae_ops.c: the SD-VAE decoder's operators (see vae_ops.h for contracts).
 *
 * Where the time goes: the 3x3 convolutions are nearly all of the decoder's
 * work. Each is nine GEMMs (M = cout, K = cin, N = h * (w + 2)) reading
 * shifted views of one zero-padded input, so there is no im2col buffer and
 * no copy of the input besides the padded one, which is written once, with
 * the GroupNorm affine, SiLU (op_exp, which the compiler vectorises) and
 * upsampling applied on the way. The two spare columns per row cost
 * 2 / (w + 2) of the multiply-adds: 6% at 32 wide, under 1% at 256. The
 * bias (or the bias plus the residual) is written into the output first
 * and the GEMMs accumulate into it. The nine GEMMs run band by band of
 * 8 * cout positions (at least 1024), so that BLAS packs each tap's view
 * of the input from cache rather than memory: this matters where cout is
 * small and packing is a large share of the work (15% faster at 128).
 *
 * Nothing here allocates; the caller passes every scratch buffer.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ops.h"
#include "vae_ops.h"

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

/* Adds x[0..n) (minus `center`, squared when sq) into 16 float lanes the
 * compiler vectorises; the caller flushes them into a double. */
static void add_lanes(float lane[16], const float *x, int n, float center, int sq)
{
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) {
            float v = x[j + l] - center;
            lane[l] += sq ? v * v : v;
        }
    for (int l = 0; j + l < n; l++) {
        float v = x[j + l] - center;
        lane[l] += sq ? v * v : v;
    }
}

/* Sum over the rows of channels c0..c1 of x (C, H, pitch), W columns each,
 * in double: float lanes flushed about every 1024 elements. */
static double sum_rows(const float *x, int c0, int c1, int H, int W, int pitch,
                       float center, int sq)
{
    double total = 0.0;
    float lane[16] = {0};
    int pending = 0;
    for (int c = c0; c < c1; c++)
        for (int y = 0; y < H; y++) {
            add_lanes(lane, x + ((size_t)c * H + y) * pitch, W, center, sq);
            if ((pending += W) >= 1024 || (c == c1 - 1 && y == H - 1)) {
                for (int l = 0; l < 16; l++)
                    total += lane[l], lane[l] = 0.0f;
                pending = 0;
            }
        }
    return total;
}

void vae_groupnorm_coef_forward(float *scale, float *shift, const float *x,
                                const float *gamma, const float *beta, int C,
                                int H, int W, int pitch, int G, double eps)
{
    int cpg = C / G;
    double n = (double)cpg * H * W;
    for (int g = 0; g < G; g++) {
        int c0 = g * cpg, c1 = c0 + cpg;
        double mean = sum_rows(x, c0, c1, H, W, pitch, 0.0f, 0) / n;
        /* second pass around the float mean: the variance without the
         * cancellation of E[x^2] - mean^2; the shift's rounding is undone */
        float mf = (float)mean;
        double d = mean - mf;
        double var = sum_rows(x, c0, c1, H, W, pitch, mf, 1) / n - d * d;
        double rstd = 1.0 / sqrt((var > 0 ? var : 0) + eps);
        for (int c = c0; c < c1; c++) {
            scale[c] = (float)(gamma[c] * rstd);
            shift[c] = (float)(beta[c] - mean * gamma[c] * rstd);
        }
    }
}

void vae_unpitch_forward(float *out, const float *in, int C, int H, int W,
                         int pitch)
{
    for (size_t r = 0; r < (size_t)C * H; r++)
        memcpy(out + r * W, in + r * pitch, sizeof(float) * (size_t)W);
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

void vae_pad_forward(float *pad, const float *in, int C, int h, int w,
                     int in_pitch, int up, const float *scale,
                     const float *shift, int silu)
{
    int ho = h * up, wo = w * up, P = wo + 2;
    for (int c = 0; c < C; c++) {
        float *pc = pad + (size_t)c * (ho + 2) * P;
        memset(pc, 0, sizeof(float) * (size_t)P);                   // top row
        memset(pc + (size_t)(ho + 1) * P, 0, sizeof(float) * (size_t)P); // bottom
        for (int y = 0; y < ho; y++) {
            float *row = pc + (size_t)(y + 1) * P;
            row[0] = row[wo + 1] = 0.0f;
            if (y % up) { /* the same source row as the row above */
                memcpy(row + 1, row + 1 - P, sizeof(float) * (size_t)wo);
                continue;
            }
            const float *src = in + ((size_t)c * h + y / up) * in_pitch;
            if (scale)
                affine_row(row + 1, src, scale[c], shift[c], w, silu);
            else
                memcpy(row + 1, src, sizeof(float) * (size_t)w);
            if (up == 2) /* widen in place, right to left */
                for (int x = w - 1; x >= 0; x--)
                    row[1 + 2 * x + 1] = row[1 + 2 * x] = row[1 + x];
        }
    }
}

/* out (cout, n) = b, or += b when accumulate */
static void bias_forward(float *out, const float *b, int cout, size_t n,
                         int accumulate)
{
    for (int co = 0; co < cout; co++) {
        float *o = out + (size_t)co * n, bv = b[co];
        if (accumulate)
            for (size_t i = 0; i < n; i++)
                o[i] += bv;
        else
            for (size_t i = 0; i < n; i++)
                o[i] = bv;
    }
}

void vae_conv3x3_reorder(float *w9, const float *w, int cin, int cout)
{
    for (int k = 0; k < 9; k++)
        for (int co = 0; co < cout; co++)
            for (int ci = 0; ci < cin; ci++)
                w9[((size_t)k * cout + co) * cin + ci] = w[((size_t)co * cin + ci) * 9 + k];
}

void vae_conv3x3_forward(float *out, const float *pad, const float *w9,
                         const float *b, int cin, int cout, int h, int w,
                         int accumulate)
{
    int P = w + 2, n = h * P, band = 8 * cout > 1024 ? 8 * cout : 1024;
    bias_forward(out, b, cout, (size_t)n, accumulate);
    for (int p0 = 0; p0 < n - 2; p0 += band) {
        int nb = n - 2 - p0 < band ? n - 2 - p0 : band;
        for (int k = 0; k < 9; k++) // out (cout, nb) += w9[k] (cout, cin) pad@k (cin, nb)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, nb, cin,
                        1.0f, w9 + (size_t)k * cout * cin, cin,
                        pad + p0 + (k / 3) * P + k % 3, (h + 2) * P, 1.0f, out + p0, n);
    }
}

void vae_conv1x1_forward(float *out, const float *in, const float *w,
                         const float *b, int cin, int cout, int n)
{
    bias_forward(out, b, cout, (size_t)n, 0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, n, cin, 1.0f,
                w, cin, in, n, 1.0f, out, n);
}

/* ---- attention --------------------------------------------------------- */

int vae_attention_tile(int T)
{
    size_t r = VAE_ATT_BUDGET / (size_t)T;
    return (int)(r < 1 ? 1 : r > (size_t)T ? (size_t)T : r);
}

void vae_attention_forward(float *x, const float *const w[4],
                           const float *const b[4], const float *scale,
                           const float *shift, int C, int H, int W, int pitch,
                           const vae_attn_scratch *sc)
{
    int T = H * W;
    for (size_t r = 0; r < (size_t)C * H; r++) // xn (C, T) = GN(x)
        affine_row(sc->xn + r * W, x + r * pitch, scale[r / H], shift[r / H], W, 0);
    vae_conv1x1_forward(sc->q, sc->xn, w[0], b[0], C, C, T);       // (C, T)
    vae_conv1x1_forward(sc->k, sc->xn, w[1], b[1], C, C, T);       // (C, T)
    vae_conv1x1_forward(sc->v, sc->xn, w[2], b[2], C, C, T);       // (C, T)
    float *o = sc->xn; /* xn is spent: the head's output goes there */
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
    float *y = sc->q; /* q is spent too */
    vae_conv1x1_forward(y, o, w[3], b[3], C, C, T);                // (C, T)
    for (size_t r = 0; r < (size_t)C * H; r++) // x += y, pitched
        for (int i = 0; i < W; i++)
            x[r * pitch + i] += y[r * W + i];
}
