/* attention.c: softmax and multi-head self-attention (see ops.h).
 *
 * The two products of attention run on the kernel entry, one (row, head)
 * per pool task: K and V^T are packed into the task's scratch (O(T hd),
 * against the O(T^2 hd) products), the 1/sqrt(hd) scale folded into K's
 * pack. No BLAS here, so the cross-compiled kernel test (kernels_only)
 * links this file and runs attention on every entry.
 */
#include <math.h>
#include <stddef.h>

#include "gemm.h"
#include "lanes.h"
#include "ops.h"

void op_softmax_forward(float *x, int M, int E)
{
    for (int i = 0; i < M; i++) {
        float *r = x + (size_t)i * E, mx = lane_max(r, E);
        for (int e = 0; e < E; e++) /* separate from the sum: vectorises */
            r[e] = op_exp(r[e] - mx);
        float inv = (float)(1.0 / lane_sum(r, E));
        for (int e = 0; e < E; e++)
            r[e] *= inv;
    }
}

/* The scores' floats rounded up to 64 bytes: the packs after them must
 * start on a cache line, as kernels load panels with aligned loads (an
 * odd T, as the default model's 49 tokens, would misalign them). */
static size_t scores_floats(int T)
{
    return ((size_t)T * T + 15) & ~(size_t)15;
}

size_t op_attention_floats(const gemm_kernel *k, int T, int hd)
{
    return scores_floats(T) + (k->pack_bytes(k, T, hd, 0, ST_F32) +
                               k->pack_bytes(k, hd, T, 0, ST_F32)) / sizeof(float);
}

typedef struct attn_job {
    const gemm_kernel *gk;
    float *scratch;
    size_t per_thread;
    float *att;
    const float *qkv;
    int T, D, heads;
} attn_job;

/* One (row, head): S = Q K^T * scale, softmax, O = S V, all strided views
 * into qkv (N, T, 3, heads, hd) and att (N, T, heads, hd). */
static void attn_task(void *arg, int task, int thread)
{
    attn_job *j = arg;
    const gemm_kernel *gk = j->gk;
    int n = task / j->heads, h = task % j->heads, T = j->T, D = j->D;
    int hd = D / j->heads;
    const float *q = j->qkv + (size_t)n * T * 3 * D + (size_t)h * hd;
    const float *k = q + D, *v = q + 2 * D;
    float *s = j->scratch + (size_t)thread * j->per_thread;          // (T, T)
    float *kp = s + scores_floats(T);                                 // K (T, hd) packed
    float *vp = kp + gk->pack_bytes(gk, T, hd, 0, ST_F32) / sizeof(float); // V^T (hd, T)
    float *o = j->att + (size_t)n * T * D + (size_t)h * hd;
    gk->pack_f32(gk, kp, T, hd, 0, hd, k, 3 * D, 1, 1.0f / sqrtf((float)hd));
    gemm_args qk = { s, q, NULL, kp, ST_F32, T, 3 * D, T, hd, 0, 0 }; // s = q (T, hd) K^T
    gemm_run(gk, &qk, T);
    op_softmax_forward(s, T, T);
    gk->pack_f32(gk, vp, hd, T, 0, T, v, 1, 3 * D, 1.0f);
    gemm_args sv = { o, s, NULL, vp, ST_F32, D, T, hd, T, 0, 0 };    // o = s (T, T) V
    gemm_run(gk, &sv, T);
}

void op_attention_forward(const op_env *e, float *scratch, float *att, const float *qkv,
                          int N, int T, int D, int heads)
{
    attn_job j = { e->gk, scratch, op_attention_floats(e->gk, T, D / heads), att, qkv, T, D,
                   heads };
    op_pool_run(e->pool, N * heads, attn_task, &j);
}
