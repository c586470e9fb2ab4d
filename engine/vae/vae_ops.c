/* vae_ops.c: the SD-VAE decoder's operators (see vae_ops.h for contracts).
 *
 * Where the time goes: the 3x3 convolutions are nearly all of the decoder's
 * work. Each is one GEMM on the engine's kernel entry (M = cout, K = 9 cin,
 * N = h * (w + 2)) over shifted views of one zero-padded input, which is
 * written once, with the GroupNorm affine, SiLU (op_exp, which the
 * compiler vectorises) and upsampling applied on the way. The two spare
 * columns per row cost 2 / (w + 2) of the multiply-adds: 6% at 32 wide,
 * under 1% at 256. A task takes a band of positions: it writes the bias
 * (or adds it to the residual) into its band of the output, packs the
 * band's im2col into its thread's scratch (each tap's rows copied from the
 * padded input: O(K N) copies against O(cout K N) multiply-adds), and
 * runs the kernel over every output channel with acc set. Bands are sized
 * so the pack stays in L2 while every row tile of weights streams past.
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

typedef struct gn_job {
    float *scale, *shift;
    const float *x, *gamma, *beta;
    int C, H, W, pitch, G;
    double eps;
} gn_job;

/* group `task` of vae_groupnorm_coef_forward */
static void gn_task(void *arg, int task, int thread)
{
    const gn_job *j = arg;
    int cpg = j->C / j->G, c0 = task * cpg, c1 = c0 + cpg;
    double n = (double)cpg * j->H * j->W;
    (void)thread;
    double mean = sum_rows(j->x, c0, c1, j->H, j->W, j->pitch, 0.0f, 0) / n;
    /* second pass around the float mean: the variance without the
     * cancellation of E[x^2] - mean^2; the shift's rounding is undone */
    float mf = (float)mean;
    double d = mean - mf;
    double var = sum_rows(j->x, c0, c1, j->H, j->W, j->pitch, mf, 1) / n - d * d;
    double rstd = 1.0 / sqrt((var > 0 ? var : 0) + j->eps);
    for (int c = c0; c < c1; c++) {
        j->scale[c] = (float)(j->gamma[c] * rstd);
        j->shift[c] = (float)(j->beta[c] - mean * j->gamma[c] * rstd);
    }
}

void vae_groupnorm_coef_forward(struct op_pool *pool, float *scale, float *shift,
                                const float *x, const float *gamma,
                                const float *beta, int C, int H, int W,
                                int pitch, int G, double eps)
{
    gn_job j = {scale, shift, x, gamma, beta, C, H, W, pitch, G, eps};
    op_pool_run(pool, G, gn_task, &j);
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

typedef struct pad_job {
    float *pad;
    const float *in, *scale, *shift;
    int C, h, w, in_pitch, up, silu, chunk;
} pad_job;

/* channels [task * chunk, ...) of vae_pad_forward */
static void pad_task(void *arg, int task, int thread)
{
    const pad_job *j = arg;
    int ho = j->h * j->up, wo = j->w * j->up, P = wo + 2, c1 = (task + 1) * j->chunk;
    (void)thread;
    for (int c = task * j->chunk; c < c1 && c < j->C; c++) {
        float *pc = j->pad + (size_t)c * (ho + 2) * P;
        memset(pc, 0, sizeof(float) * (size_t)P);                        // top row
        memset(pc + (size_t)(ho + 1) * P, 0, sizeof(float) * (size_t)P); // bottom
        for (int y = 0; y < ho; y++) {
            float *row = pc + (size_t)(y + 1) * P;
            row[0] = row[wo + 1] = 0.0f;
            if (y % j->up) { /* the same source row as the row above */
                memcpy(row + 1, row + 1 - P, sizeof(float) * (size_t)wo);
                continue;
            }
            const float *src = j->in + ((size_t)c * j->h + y / j->up) * j->in_pitch;
            if (j->scale)
                affine_row(row + 1, src, j->scale[c], j->shift[c], j->w, j->silu);
            else
                memcpy(row + 1, src, sizeof(float) * (size_t)j->w);
            if (j->up == 2) /* widen in place, right to left */
                for (int x = j->w - 1; x >= 0; x--)
                    row[1 + 2 * x + 1] = row[1 + 2 * x] = row[1 + x];
        }
    }
}

/* Tasks for `units` independent pieces of work: a few per thread, for
 * balance when the threads do not all get a core. */
static int split(struct op_pool *pool, int units)
{
    int t = 4 * op_pool_threads(pool);
    return pool ? (units < t ? units : t) : 1;
}

void vae_pad_forward(struct op_pool *pool, float *pad, const float *in, int C,
                     int h, int w, int in_pitch, int up, const float *scale,
                     const float *shift, int silu)
{
    int tasks = split(pool, C);
    pad_job j = {pad, in, scale, shift, C, h, w, in_pitch, up, silu, (C + tasks - 1) / tasks};
    op_pool_run(pool, tasks, pad_task, &j);
}

void vae_conv3x3_reorder(float *w9, const float *w, int cin, int cout)
{
    for (int co = 0; co < cout; co++)
        for (int k = 0; k < 9; k++)
            for (int ci = 0; ci < cin; ci++)
                w9[((size_t)co * 9 + k) * cin + ci] = w[((size_t)co * cin + ci) * 9 + k];
}

#define VAE_PACK_BYTES (256 * 1024) /* a band's im2col pack: in L2 with room */

size_t vae_pack_floats(const gemm_kernel *gk, int kmax)
{
    size_t panel = (size_t)kmax * (size_t)gk->nr, f = VAE_PACK_BYTES / sizeof(float);
    return (f > panel ? f : panel) + 16;
}

/* A convolution as tasks, one band of positions each (see the top of the
 * file). */
typedef struct conv_job {
    const vae_env *e;
    float *out;
    const float *in, *w, *b;
    int cin, cout, taps, P; /* taps 9 (pitch P) or 1 */
    int n;                  /* output floats per channel */
    int gemm_n;             /* of which the GEMMs compute the first gemm_n */
    int ldb, accumulate;    /* ldb: floats per input channel */
    int band, nbands;
} conv_job;

static void conv_task(void *arg, int task, int thread)
{
    const conv_job *j = arg;
    const gemm_kernel *gk = j->e->gk;
    int p0 = task * j->band, nb = j->gemm_n - p0 < j->band ? j->gemm_n - p0 : j->band;
    int p1 = task == j->nbands - 1 ? j->n : p0 + nb; /* the last band: the tail too */
    int K = j->taps * j->cin;
    for (int co = 0; co < j->cout; co++) { // out[co, p0:p1] = b [+ out]
        float *o = j->out + (size_t)co * j->n, bv = j->b[co];
        if (j->accumulate)
            for (int i = p0; i < p1; i++)
                o[i] += bv;
        else
            for (int i = p0; i < p1; i++)
                o[i] = bv;
    }
    float *pk = j->e->pack + (size_t)thread * j->e->pack_floats;
    pk = (float *)(((uintptr_t)pk + 63) & ~(uintptr_t)63);
    for (int k = 0; k < j->taps; k++) // pack rows [k cin, (k+1) cin): in@k (cin, nb)
        gk->pack_f32(gk, pk, nb, K, k * j->cin, j->cin, j->in + p0 + (k / 3) * j->P + k % 3,
                     1, j->ldb, 1.0f);
    // out (cout, nb) += w (cout, K) im2col (K, nb)
    gemm_args a = { j->out + p0, j->w, NULL, pk, ST_F32, j->n, K, nb, K, 0, 1 };
    gemm_run(gk, &a, j->cout);
}

/* Bands of whole panels whose pack fits the thread's scratch; with a pool,
 * smaller bands until there are a few per thread. */
static void conv_run(const vae_env *e, conv_job *j)
{
    int nr = e->gk->nr, K = j->taps * j->cin;
    size_t panel = (size_t)K * nr;
    int panels = (int)((e->pack_floats - 16) / panel), want = 4 * op_pool_threads(e->pool);
    int need = (j->gemm_n + nr - 1) / nr;
    panels = panels < 1 ? 1 : panels;
    if (e->pool && (need + panels - 1) / panels < want)
        panels = (need + want - 1) / want > 1 ? (need + want - 1) / want : 1;
    j->band = panels * nr;
    j->nbands = (j->gemm_n + j->band - 1) / j->band;
    op_pool_run(e->pool, j->nbands, conv_task, j);
}

void vae_conv3x3_forward(const vae_env *e, float *out, const float *pad,
                         const float *w9, const float *b, int cin, int cout,
                         int h, int w, int accumulate)
{
    int P = w + 2;
    conv_job j = {.e = e, .out = out, .in = pad, .w = w9, .b = b, .cin = cin, .cout = cout,
                  .taps = 9, .P = P, .n = h * P, .gemm_n = h * P - 2, .ldb = (h + 2) * P,
                  .accumulate = accumulate};
    conv_run(e, &j);
}

void vae_conv1x1_forward(const vae_env *e, float *out, const float *in,
                         const float *w, const float *b, int cin, int cout, int n)
{
    conv_job j = {.e = e, .out = out, .in = in, .w = w, .b = b, .cin = cin, .cout = cout,
                  .taps = 1, .n = n, .gemm_n = n, .ldb = n};
    conv_run(e, &j);
}

/* ---- attention --------------------------------------------------------- */

int vae_attention_tile(int T)
{
    size_t r = VAE_ATT_BUDGET / (size_t)T;
    return (int)(r < 1 ? 1 : r > (size_t)T ? (size_t)T : r);
}

void vae_attention_forward(const vae_env *e, float *x,
                           const float *const w[4], const float *const b[4],
                           const float *scale, const float *shift, int C, int H,
                           int W, int pitch, const vae_attn_scratch *sc)
{
    int T = H * W;
    for (size_t r = 0; r < (size_t)C * H; r++) // xn (C, T) = GN(x)
        affine_row(sc->xn + r * W, x + r * pitch, scale[r / H], shift[r / H], W, 0);
    vae_conv1x1_forward(e, sc->q, sc->xn, w[0], b[0], C, C, T); // (C, T)
    vae_conv1x1_forward(e, sc->k, sc->xn, w[1], b[1], C, C, T); // (C, T)
    vae_conv1x1_forward(e, sc->v, sc->xn, w[2], b[2], C, C, T); // (C, T)
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
    vae_conv1x1_forward(e, y, o, w[3], b[3], C, C, T);          // (C, T)
    for (size_t r = 0; r < (size_t)C * H; r++) // x += y, pitched
        for (int i = 0; i < W; i++)
            x[r * pitch + i] += y[r * W + i];
}
