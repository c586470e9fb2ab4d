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
 * The mid block's attention (one head over every position) runs token-major
 * like the transformer's: q, k and v come out of one packed product on the
 * transposed normalised input, K and V^T are packed once into shared
 * scratch (split over the pool), and tasks of a few dozen queries each run
 * the two products and the softmax in between on their thread's scores.
 *
 * Nothing here allocates; the caller passes every scratch buffer.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ops.h"
#include "vae_ops.h"

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

#define VAE_ATT_BUDGET ((size_t)1 << 18) /* score floats of a task: 1 MiB at most */
#define VAE_ATT_ROWS 12  /* tiles of queries: a multiple of every entry's mr */
#define VAE_ATT_MIN 48   /* queries per task at least: each pass over K's and
                          * V's packs does 2 * 48 flops per packed float */

int vae_attention_tile(int T, int threads)
{
    size_t hi = VAE_ATT_BUDGET / (size_t)T, lo = VAE_ATT_MIN;
    size_t tq = ((size_t)T + 4 * (size_t)threads - 1) / (4 * (size_t)threads);
    tq = (tq + VAE_ATT_ROWS - 1) / VAE_ATT_ROWS * VAE_ATT_ROWS;
    hi = hi < 1 ? 1 : hi;
    lo = lo < hi ? lo : hi;
    tq = tq < lo ? lo : tq > hi ? hi : tq;
    return (int)(tq < (size_t)T ? tq : (size_t)T);
}

size_t vae_attention_pack_floats(const gemm_kernel *gk, int C, int T)
{
    return (gk->pack_bytes(gk, T, C, 0, ST_F32) + gk->pack_bytes(gk, C, T, 0, ST_F32)) /
           sizeof(float);
}

/* The attention's passes as tasks over the pool (see vae_attention_forward). */
typedef struct att_job {
    const gemm_kernel *gk;
    const vae_attn_scratch *sc;
    float *x, *vp;
    const float *scale, *shift;
    int C, H, W, pitch, T, tasks;
} att_job;

/* Image rows of task i of `tasks` over n. */
static void task_range(int i, int tasks, int n, int *a, int *b)
{
    *a = (int)((long)n * i / tasks);
    *b = (int)((long)n * (i + 1) / tasks);
}

/* xt (T, C) = GN(x)^T over a band of image rows */
static void att_in_task(void *arg, int task, int thread)
{
    const att_job *j = arg;
    int y0, y1, C = j->C, W = j->W;
    (void)thread;
    task_range(task, j->tasks, j->H, &y0, &y1);
    for (int c = 0; c < C; c++)
        for (int y = y0; y < y1; y++) {
            const float *r = j->x + ((size_t)c * j->H + y) * j->pitch;
            float *o = j->sc->xt + (size_t)y * W * C + c, s = j->scale[c], t = j->shift[c];
            for (int i = 0; i < W; i++)
                o[(size_t)i * C] = r[i] * s + t;
        }
}

/* Tasks [0, tasks): rows of K's pack (channels); [tasks, 2 tasks): rows of
 * V^T's (positions). K (T, C) and V^T (C, T) are read in place from qkv. */
static void att_pack_task(void *arg, int task, int thread)
{
    const att_job *j = arg;
    int C = j->C, T = j->T, a, b, v = task >= j->tasks;
    const float *qkv = j->sc->qkv;
    (void)thread;
    task_range(task % j->tasks, j->tasks, v ? T : C, &a, &b);
    if (v) // V^T[c][t] = qkv[t][2C + c]
        j->gk->pack_f32(j->gk, j->vp, C, T, a, b - a, qkv + (size_t)a * 3 * C + 2 * C, 1,
                        3 * C, 1.0f);
    else   // K[t][c] = qkv[t][C + c] / sqrt(C)
        j->gk->pack_f32(j->gk, j->sc->kv, T, C, a, b - a, qkv + C + a, 3 * C, 1,
                        (float)(1.0 / sqrt((double)C)));
}

/* Queries [t0, t0 + tq): s = q K^T / sqrt(C), softmax, xt rows = s V */
static void att_query_task(void *arg, int task, int thread)
{
    const att_job *j = arg;
    const vae_attn_scratch *sc = j->sc;
    int C = j->C, T = j->T, t0 = task * sc->tq, nq = T - t0 < sc->tq ? T - t0 : sc->tq;
    float *s = sc->s + (size_t)thread * sc->tq * T;
    gemm_args qk = { s, sc->qkv + (size_t)t0 * 3 * C, NULL, sc->kv, ST_F32, T, 3 * C, T, C,
                     0, 0 };
    gemm_run(j->gk, &qk, nq);                                // s (nq, T)
    op_softmax_forward(s, nq, T);
    gemm_args sv = { sc->xt + (size_t)t0 * C, s, NULL, j->vp, ST_F32, C, T, C, T, 0, 0 };
    gemm_run(j->gk, &sv, nq);                                // xt rows (nq, C)
}

/* x (C, H, pitch) += y^T over a block of channels, y (T, C) in qkv */
static void att_out_task(void *arg, int task, int thread)
{
    const att_job *j = arg;
    int c0, c1, C = j->C, W = j->W;
    (void)thread;
    task_range(task, j->tasks, C, &c0, &c1);
    for (int c = c0; c < c1; c++)
        for (int y = 0; y < j->H; y++) {
            float *r = j->x + ((size_t)c * j->H + y) * j->pitch;
            const float *i0 = j->sc->qkv + (size_t)y * W * C + c;
            for (int i = 0; i < W; i++)
                r[i] += i0[(size_t)i * C];
        }
}

void vae_attention_forward(const vae_env *e, float *x, const klinear *qkv,
                           const klinear *out, const float *scale, const float *shift,
                           int C, int H, int W, int pitch, const vae_attn_scratch *sc)
{
    int T = H * W;
    op_env oe = { e->pool, NULL, 0, e->gk };
    att_job j = { e->gk, sc, x, sc->kv + e->gk->pack_bytes(e->gk, T, C, 0, ST_F32) / sizeof(float),
                  scale, shift, C, H, W, pitch, T, split(e->pool, H) };
    op_pool_run(e->pool, j.tasks, att_in_task, &j);          // xt (T, C)
    op_linear_forward(&oe, sc->qkv, sc->xt, qkv, T);          // qkv (T, 3C)
    j.tasks = split(e->pool, C < T ? C : T);
    op_pool_run(e->pool, 2 * j.tasks, att_pack_task, &j);    // K, V^T packed
    op_pool_run(e->pool, (T + sc->tq - 1) / sc->tq, att_query_task, &j); // xt (T, C)
    op_linear_forward(&oe, sc->qkv, sc->xt, out, T);          // y (T, C) in qkv
    j.tasks = split(e->pool, C);
    op_pool_run(e->pool, j.tasks, att_out_task, &j);         // x += y^T
}
