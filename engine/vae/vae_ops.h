/* vae_ops.h: the operators of the SD-VAE decoder (engine-internal).
 *
 * llm.c style, one image at a time, channel-major like PyTorch, but with a
 * row pitch: an activation of C channels, H rows and W columns is stored
 * (C, H, W + 2), each row followed by two columns of don't-care values.
 * That is the layout a 3x3 convolution over a zero-padded (C, H + 2, W + 2)
 * input produces when computed as nine GEMMs straight on shifted views of
 * the padded input (no im2col): output position y * (W + 2) + x reads padded
 * positions (y + ky) * (W + 2) + x + kx, a constant offset per tap, and the
 * two extra columns per row are where the shifted rows wrap. Every op reads
 * only columns 0..W-1 of a pitched row; the spare columns hold finite junk.
 *
 * The GEMMs run on the engine's kernel entry (gemm.h) with the input as
 * the packed operand: out (cout, positions) = W (cout, taps * cin) X,
 * where W is the conv kernel, reordered once at load to rows of
 * (tap, cin) that the kernel reads in place, and X^T (positions, taps *
 * cin) is the im2col of a band of positions, packed into a thread's
 * scratch (a few hundred KiB, kept in L2) straight from the shifted views:
 * each tap's cin rows of the pack are contiguous runs of one padded row.
 *
 * What precedes every 3x3 conv in the decoder (a GroupNorm folded into a
 * per-channel affine, SiLU, nearest x2 upsampling) is applied while the
 * padded input is written, the one pass over memory a conv needs besides
 * its GEMMs. Bias and residual are in the output before the GEMMs, which
 * accumulate onto them.
 *
 * Threads: ops taking a pool (ops.h; NULL runs inline) split their work
 * into tasks over it: convolutions into bands of positions, each packed
 * and multiplied by one thread, GroupNorm by group, padding by channel,
 * attention by tiles of queries.
 */
#ifndef DIT_VAE_OPS_H
#define DIT_VAE_OPS_H

#include <stddef.h>

#include "gemm.h"

struct op_pool;

/* What the convolutions run on: the pool (NULL: inline), the kernel entry,
 * and per-thread scratch for im2col packs, pack_floats floats per thread
 * (vae_pack_floats), 64-byte aligned. */
typedef struct vae_env {
    struct op_pool *pool;
    const gemm_kernel *gk;
    float *pack;        /* (threads, pack_floats) */
    size_t pack_floats;
} vae_env;

/* Per-thread pack scratch for convolutions with up to kmax = taps * cin
 * inputs per output: one panel at least, else about 256 KiB. */
size_t vae_pack_floats(const gemm_kernel *gk, int kmax);

/* Pitch (floats per row) of a pitched activation W wide. */
#define VAE_PITCH(w) ((w) + 2)

/* pad (C, h*up + 2, w*up + 2) = zero-padded f(in), in (C, h, in_pitch):
 * f is x * scale[c] + shift[c] (scale NULL: identity), then SiLU when
 * silu, then nearest x`up` upsampling (up 1 or 2). */
void vae_pad_forward(struct op_pool *pool, float *pad, const float *in, int C,
                     int h, int w, int in_pitch, int up, const float *scale,
                     const float *shift, int silu);

/* out (cout, h, w + 2) [+]= conv3x3(pad) + b: pad (cin, h + 2, w + 2) from
 * vae_pad_forward, w9 (cout, 9, cin) the kernel reordered (vae_conv3x3_
 * reorder), b (cout). With accumulate, out already holds a residual. */
void vae_conv3x3_forward(const vae_env *e, float *out, const float *pad,
                         const float *w9, const float *b, int cin, int cout,
                         int h, int w, int accumulate);

/* w9 (cout, 9, cin) from a PyTorch kernel w (cout, cin, 3, 3). */
void vae_conv3x3_reorder(float *w9, const float *w, int cin, int cout);

/* out (cout, n) = w (cout, cin) in (cin, n) + b: a 1x1 conv over n
 * positions, pitched or not (spare columns give spare columns). */
void vae_conv1x1_forward(const vae_env *e, float *out, const float *in,
                         const float *w, const float *b, int cin, int cout, int n);

/* GroupNorm (G groups, eps) of x (C, H, pitch) folded into a per-channel
 * affine: GN(x)[c] = x[c] * scale[c] + shift[c]; gamma, beta, scale, shift
 * (C). Statistics in double: the mean, then squares around it. */
void vae_groupnorm_coef_forward(struct op_pool *pool, float *scale, float *shift,
                                const float *x, const float *gamma,
                                const float *beta, int C, int H, int W,
                                int pitch, int G, double eps);

/* out (C, H*W) = in (C, H, pitch) without the spare columns. */
void vae_unpitch_forward(float *out, const float *in, int C, int H, int W,
                         int pitch);

/* Single-head attention of the decoder's mid block, the residual included:
 *   x += Wo softmax((Wq xn + bq)^T (Wk xn + bk) / sqrt(C)) (Wv xn + bv) + bo
 * over all T = H * W positions, with x (C, H, pitch) and xn = GroupNorm(x)
 * (its folded affine in scale, shift), token-major like the transformer's
 * attention: qkv (3C rows: q, k, v stacked, bias 3C) and out (C, C) are
 * packed for e->gk (vae.c does it at load). Scratch from
 * vae_attention_floats, 64-byte aligned. */
typedef struct vae_attn_scratch {
    float *xt;    /* (T, C) GroupNorm(x) transposed, then the heads' output */
    float *qkv;   /* (T, 3C) q, k, v per position, then the projection's */
    float *kv;    /* K (T, C) packed, 1/sqrt(C) folded in, then V^T (C, T)
                   * packed: vae_attention_pack_floats */
    float *s;     /* (threads, tq, T) scores of tq queries per task */
    int tq;       /* queries per task (vae_attention_tile) */
} vae_attn_scratch;
void vae_attention_forward(const vae_env *e, float *x, const klinear *qkv,
                           const klinear *out, const float *scale, const float *shift,
                           int C, int H, int W, int pitch, const vae_attn_scratch *sc);

/* Queries per task for T positions on `threads` threads: a few tasks per
 * thread, each a whole number of row tiles of any kernel entry. */
int vae_attention_tile(int T, int threads);

/* Floats of the K and V^T packs of vae_attn_scratch together (a multiple
 * of 16). */
size_t vae_attention_pack_floats(const gemm_kernel *gk, int C, int T);

#endif
