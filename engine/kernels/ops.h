/* ops.h: the DiT-MoE operators, one function per op (engine-internal).
 *
 * llm.c style: op_NAME_forward(out, in, weights, dims). Shapes use the
 * letters of dit.h: N rows, T tokens, D hidden, M = N*T token rows.
 * Weight matmuls run on the model's GEMM kernel entry (gemm.h) when the
 * model is packed, else on cblas_sgemm; attention's two products always
 * run on the kernel entry, their operands packed per task. When the
 * context has a worker pool a matmul is split over its threads (by weight
 * panels or by rows), as are the (row, head) pairs of attention (BLAS,
 * where still called, runs single-threaded inside each task).
 */
#ifndef DIT_OPS_H
#define DIT_OPS_H

#include <string.h>

#include "gemm.h"
#include "pool.h"

/* What the matmul ops need besides their operands: the pool to split over,
 * for unpacked non-F32 weights per-thread scratch to widen them into
 * (wide_elems floats per thread; NULL when every weight is F32 or packed),
 * and the GEMM kernel entry the packs were made by. */
typedef struct op_env {
    struct op_pool *pool;
    float *wide;        /* (threads, wide_elems) */
    size_t wide_elems;
    const gemm_kernel *gk;
} op_env;

/* out (M, w.rows) = in (M, w.cols) W^T + b. Widens non-F32 weights. */
void op_linear_forward(const op_env *e, float *out, const float *in,
                       const klinear *l, int M);
/* Same without bias on a plain matrix, single-threaded, on thread `th`'s
 * widen scratch: used inside pool tasks (the experts). */
void op_matmul_task(const op_env *e, int th, float *out, const float *in,
                    const kmat *w, int M);

/* h (M, He) = silu(in x->gate^T) * (in x->up^T): an expert's hidden layer,
 * single-threaded on thread `th` (one packed pass, or two BLAS products
 * with hu (M, He) as scratch). */
void op_swiglu_task(const op_env *e, int th, float *h, float *hu, const float *in,
                    const kglu *x, int M);

/* out (M, D) = LayerNorm(in) with eps 1e-6, no affine. out may equal in. */
void op_layernorm_forward(float *out, const float *in, int M, int D);

/* x (N, T, D) = x * (1 + scale[n]) + shift[n]; shift/scale rows of
 * `stride` floats (they live inside the (N, 6D) modulation). */
void op_modulate_forward(float *x, const float *shift, const float *scale,
                         int stride, int N, int T, int D);

/* x (N, T, D) += gate[n] * sub (N, T, D); gate rows of `stride` floats. */
void op_gate_residual_forward(float *x, const float *sub, const float *gate,
                              int stride, int N, int T, int D);

/* exp(x) for float, branch-free so loops over it vectorise: x = n ln2 + r
 * with |r| <= ln2/2, a degree-6 polynomial for e^r (relative error about
 * 2e-7, below float rounding of the callers' sums), 2^n put in the
 * exponent bits. Inputs are clamped to [-87, 88]; below -87 the result
 * flushes to 0 (the true value is under 2^-125).  */
static inline float op_exp(float x)
{
    float under = x < -87.0f ? 0.0f : 1.0f; /* e^x < 2^-125: flush to 0 */
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    /* round to nearest by the 1.5 * 2^23 trick (no libm call, vectorises) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale * under;
}

/* out (n) = silu(in); out may equal in. */
void op_silu_forward(float *out, const float *in, size_t n);

/* g (M, H) = silu(g) * u (M, H). */
void op_swiglu_forward(float *g, const float *u, size_t n);

/* out (N, 256): [cos(t f), sin(t f)], f_i = 10000^(-i/128), as upstream. */
void op_timestep_embedding_forward(float *out, const float *t, int N, int dim);

/* out (N, D) = table[y[n]] (rows already validated). */
void op_embedding_forward(float *out, const float *table, const int32_t *y,
                          int N, int D);

/* out (N, T, C*P*P): each token's P x P patch of every channel, in the
 * conv kernel's (C, P, P) order; x (N, C, H, W). */
void op_patchify_forward(float *out, const float *x, int N, int C, int H, int P);

/* out (N, Co, H, W) from tok (N, T, P*P*Co) laid out (p, q, c) per token. */
void op_unpatchify_forward(float *out, const float *tok, int N, int Co, int H, int P);

/* att (N, T, D) = softmax(Q K^T / sqrt(hd)) V per row and head, Q, K, V
 * read in place from qkv (N, T, 3D), over e's pool on e's kernel entry;
 * scratch: (threads, op_attention_floats(e->gk, T, hd)) floats, 64-byte
 * aligned. */
void op_attention_forward(const op_env *e, float *scratch, float *att, const float *qkv,
                          int N, int T, int D, int heads);
/* Per-thread scratch floats of op_attention_forward (a multiple of 16):
 * the scores (T, T) and the packs of K and V^T. */
size_t op_attention_floats(const gemm_kernel *k, int T, int hd);

/* Row-wise softmax of x (M, E) in place. */
void op_softmax_forward(float *x, int M, int E);

#endif
