/* ops.c: the DiT-MoE operators (see ops.h for the contracts).
 *
 * Elementwise ops are plain loops the compiler vectorises. Matmuls run on
 * the kernel entry over packed weights, split over the pool by panels or
 * row tiles; unpacked (--no-pack), they are cblas_sgemm calls split into
 * row blocks over the pool, each block one single-threaded sgemm.
 * Softmax and attention are in attention.c (no BLAS: the cross-compiled
 * kernel test links them).
 */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "gemm.h"
#include "lanes.h"
#include "ops.h"

/* w as F32: in place, or widened into thread th's scratch. */
static const float *mat_f32(const op_env *e, int th, const kmat *w)
{
    if (w->dtype == ST_F32)
        return w->data;
    float *dst = e->wide + (size_t)th * e->wide_elems;
    dtype_get(w->dtype)->to_f32(dst, w->data, (size_t)w->rows * (size_t)w->cols);
    return dst;
}

/* out (M, R) = in (M, K) w^T + b through BLAS (w as F32). */
static void gemm_nt(float *out, const float *in, const float *w, const float *b,
                    int M, int R, int K)
{
    if (M <= 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, R, K, 1.0f, in, K,
                w, K, 0.0f, out, R);
    if (b)
        for (int i = 0; i < M; i++) {
            float *o = out + (size_t)i * R;
            for (int j = 0; j < R; j++)
                o[j] += b[j];
        }
}

/* The packed-kernel arguments of out (M, w.rows) = in w^T + b. */
static gemm_args packed_args(float *out, const float *in, const kmat *w, const float *b)
{
    return (gemm_args){ out, in, b, w->pk, w->pk_dtype, w->rows, w->cols, w->rows, w->cols, 0, 0 };
}

void op_matmul_task(const op_env *e, int th, float *out, const float *in,
                    const kmat *w, int M)
{
    if (w->pk) {
        gemm_args a = packed_args(out, in, w, NULL);
        gemm_run(e->gk, &a, M);
        return;
    }
    gemm_nt(out, in, mat_f32(e, th, w), NULL, M, w->rows, w->cols);
}

void op_swiglu_task(const op_env *e, int th, float *h, float *hu, const float *in,
                    const kglu *x, int M)
{
    if (x->pk) {
        gemm_args a = { h, in, NULL, x->pk, x->pk_dtype, x->gate.rows, x->gate.cols,
                        x->gate.rows, x->gate.cols, 1, 0 };
        gemm_run(e->gk, &a, M);
        return;
    }
    op_matmul_task(e, th, h, in, &x->gate, M);
    op_matmul_task(e, th, hu, in, &x->up, M);
    op_swiglu_forward(h, hu, (size_t)M * x->gate.rows);
}

typedef struct rows_job {
    op_rows_fn fn;
    void *arg;
    int M, block;
} rows_job;

static void rows_task(void *arg, int task, int thread)
{
    rows_job *j = arg;
    int r0 = task * j->block, r1 = r0 + j->block < j->M ? r0 + j->block : j->M;
    j->fn(j->arg, r0, r1, thread);
}

void op_rows_run(struct op_pool *p, int M, op_rows_fn fn, void *arg)
{
    int nt = op_pool_threads(p);
    /* split only when each block still makes a reasonably sized GEMM */
    rows_job j = { fn, arg, M, nt > 1 && M >= 16 * nt ? (M + nt - 1) / nt : M };
    if (M <= 0)
        return;
    op_pool_run(p, (M + j.block - 1) / j.block, rows_task, &j);
}

typedef struct linear_job {
    float *out;
    const float *in, *w, *b;
    int R, K;
} linear_job;

static void linear_rows(void *arg, int r0, int r1, int thread)
{
    (void)thread;
    linear_job *j = arg;
    gemm_nt(j->out + (size_t)r0 * j->R, j->in + (size_t)r0 * j->K, j->w, j->b,
            r1 - r0, j->R, j->K);
}

/* A packed product split into `tasks` slices of panels (by_panels) or of
 * row tiles. */
typedef struct packed_job {
    const gemm_kernel *gk;
    gemm_args a;
    int M, panels, tasks, by_panels;
} packed_job;

static void packed_task(void *arg, int i, int thread)
{
    (void)thread;
    packed_job *j = arg;
    if (j->by_panels) {
        j->gk->tile(&j->a, 0, j->M, j->panels * i / j->tasks, j->panels * (i + 1) / j->tasks);
        return;
    }
    int mr = j->gk->mr, tiles = (j->M + mr - 1) / mr;
    int r0 = tiles * i / j->tasks * mr, r1 = tiles * (i + 1) / j->tasks * mr;
    j->gk->tile(&j->a, r0, r1 < j->M ? r1 : j->M, 0, j->panels);
}

void op_linear_forward(const op_env *e, float *out, const float *in,
                       const klinear *l, int M)
{
    int nt = op_pool_threads(e->pool);
    if (l->w.pk) {
        /* slicing the weights keeps each thread's panels in its own cache;
         * few-panel products (the router, the final layer) slice rows */
        const gemm_kernel *gk = e->gk;
        packed_job j = { gk, packed_args(out, in, &l->w, l->b), M, gemm_panels(gk, l->w.rows, 0),
                         1, 0 };
        j.by_panels = j.panels >= 4 * nt || (M < 2 * gk->mr * nt && j.panels >= nt);
        int most = j.by_panels ? j.panels : (M + gk->mr - 1) / gk->mr;
        j.tasks = nt < most ? nt : most;
        op_pool_run(e->pool, j.tasks, packed_task, &j);
        return;
    }
    linear_job j = { out, in, mat_f32(e, 0, &l->w), l->b, l->w.rows, l->w.cols };
    op_rows_run(e->pool, M, linear_rows, &j);
}

void op_layernorm_forward(float *out, const float *in, int M, int D)
{
    for (int i = 0; i < M; i++) {
        const float *x = in + (size_t)i * D;
        float *o = out + (size_t)i * D;
        float mu = (float)(lane_sum(x, D) / D); /* two passes: no cancellation */
        float rstd = (float)(1.0 / sqrt(lane_sq_dev(x, mu, D) / D + 1e-6));
        for (int d = 0; d < D; d++)
            o[d] = (x[d] - mu) * rstd;
    }
}

void op_modulate_forward(float *x, const float *shift, const float *scale,
                         int stride, int N, int T, int D)
{
    for (int n = 0; n < N; n++) {
        const float *sh = shift + (size_t)n * stride;
        const float *sc = scale + (size_t)n * stride;
        for (int t = 0; t < T; t++) {
            float *r = x + ((size_t)n * T + t) * D;
            for (int d = 0; d < D; d++)
                r[d] = r[d] * (1.0f + sc[d]) + sh[d];
        }
    }
}

void op_gate_residual_forward(float *x, const float *sub, const float *gate,
                              int stride, int N, int T, int D)
{
    for (int n = 0; n < N; n++) {
        const float *g = gate + (size_t)n * stride;
        for (int t = 0; t < T; t++) {
            size_t o = ((size_t)n * T + t) * D;
            for (int d = 0; d < D; d++)
                x[o + d] += g[d] * sub[o + d];
        }
    }
}

static inline float silu(float v)
{
    return v / (1.0f + op_exp(-v));
}

void op_silu_forward(float *out, const float *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = silu(in[i]);
}

void op_swiglu_forward(float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        g[i] = silu(g[i]) * u[i];
}

void op_timestep_embedding_forward(float *out, const float *t, int N, int dim)
{
    int half = dim / 2;
    /* float32 arithmetic in upstream's order, so arguments round alike */
    const float neg_log = (float)-log(10000.0);
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * dim;
        for (int i = 0; i < half; i++) {
            float f = expf(neg_log * (float)i / (float)half);
            float a = t[n] * f;
            o[i] = (float)cos((double)a);
            o[half + i] = (float)sin((double)a);
        }
        if (dim % 2)
            o[dim - 1] = 0.0f;
    }
}

void op_embedding_forward(float *out, const float *table, const int32_t *y,
                          int N, int D)
{
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * D, table + (size_t)y[n] * D, sizeof(float) * (size_t)D);
}

void op_patchify_forward(float *out, const float *x, int N, int C, int H, int P)
{
    int g = H / P, K = C * P * P;
    for (int n = 0; n < N; n++)
        for (int gy = 0; gy < g; gy++)
            for (int gx = 0; gx < g; gx++) {
                float *o = out + (((size_t)n * g + gy) * g + gx) * K;
                for (int ch = 0; ch < C; ch++)
                    for (int p = 0; p < P; p++) {
                        const float *row = x + (((size_t)n * C + ch) * H + gy * P + p) * H + gx * P;
                        memcpy(o + (ch * P + p) * P, row, sizeof(float) * (size_t)P);
                    }
            }
}

void op_unpatchify_forward(float *out, const float *tok, int N, int Co, int H, int P)
{
    int g = H / P;
    for (int n = 0; n < N; n++)
        for (int gy = 0; gy < g; gy++)
            for (int gx = 0; gx < g; gx++) {
                const float *t = tok + (((size_t)n * g + gy) * g + gx) * P * P * Co;
                for (int p = 0; p < P; p++)
                    for (int q = 0; q < P; q++)
                        for (int ch = 0; ch < Co; ch++)
                            out[(((size_t)n * Co + ch) * H + gy * P + p) * H + gx * P + q] =
                                t[(p * P + q) * Co + ch];
            }
}
