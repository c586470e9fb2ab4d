/* vae_ops.h: the operators of the SD-VAE decoder (engine-internal).
 *
 * llm.c style, one image at a time, activations channel-major (C, H, W) as
 * PyTorch stores them. Convolutions are GEMMs (cblas_sgemm) over an im2col
 * buffer built a band of output rows at a time, so the scratch stays a few
 * MiB whatever the image size. The gather that builds that buffer also
 * applies what precedes every convolution in the decoder, so none of it
 * costs a pass over memory of its own: a GroupNorm folded into a per-channel
 * affine, SiLU, nearest x2 upsampling and zero padding. The bias and any
 * residual are in the output before the GEMMs, which then accumulate.
 */
#ifndef DIT_VAE_OPS_H
#define DIT_VAE_OPS_H

#include <stddef.h>

/* A convolution's shape and what its input gather applies. */
typedef struct vae_conv_dims {
    int cin, cout;
    int k;               /* kernel size: 1 (no padding) or 3 (padding 1) */
    int h, w;            /* input height and width */
    int up;              /* 1, or 2 for nearest x2 upsampling before the conv */
    const float *scale;  /* (cin) per-channel affine of the input, or NULL */
    const float *shift;  /* (cin) */
    int silu;            /* SiLU after the affine */
    int accumulate;      /* out already holds a term to add (a residual) */
} vae_conv_dims;

/* Floats of scratch vae_conv2d_forward needs for dims d. */
size_t vae_conv2d_col_floats(const vae_conv_dims *d);

/* out (cout, h*up, w*up) [+]= conv(f(in)) + b, where in is (cin, h, w),
 * f the affine/SiLU/upsampling of d, w (cout, cin, k, k) in PyTorch layout
 * and b (cout). col holds vae_conv2d_col_floats(d) floats. out must not
 * overlap in. */
void vae_conv2d_forward(float *out, const float *in, const float *w,
                        const float *b, const vae_conv_dims *d, float *col);

/* GroupNorm (G groups, eps) of x (C, HW) folded into a per-channel affine:
 * GN(x)[c] = x[c] * scale[c] + shift[c]. gamma, beta (C); scale, shift (C).
 * Statistics are accumulated in double, mean first, then the variance. */
void vae_groupnorm_coef_forward(float *scale, float *shift, const float *x,
                                const float *gamma, const float *beta, int C,
                                int HW, int G, double eps);

/* out (C, HW) = in * scale[c] + shift[c]; out may equal in. */
void vae_affine_forward(float *out, const float *in, const float *scale,
                        const float *shift, int C, int HW);

/* Row-wise softmax(x * alpha) of x (M, N) in place. */
void vae_softmax_forward(float *x, float alpha, int M, int N);

/* Single-head attention of the decoder's mid block, the residual included:
 *   x (C, T) += Wo softmax((Wq xn + bq)^T (Wk xn + bk) / sqrt(C))-weighted
 *               (Wv xn + bv) + bo,   xn = GroupNorm(x)
 * w[0..3] (C, C) and b[0..3] (C) are q, k, v, out. Scratch: xn, q, k, v
 * (C, T) each, s (tq, T): queries are done tq at a time. scale, shift (C)
 * hold the norm's folded affine (vae_groupnorm_coef_forward). */
typedef struct vae_attn_scratch {
    float *xn, *q, *k, *v, *s;
    int tq;
} vae_attn_scratch;
void vae_attention_forward(float *x, const float *const w[4],
                           const float *const b[4], const float *scale,
                           const float *shift, int C, int T,
                           const vae_attn_scratch *sc);

/* Query rows per score tile for T positions (so scores stay a few MiB). */
int vae_attention_tile(int T);

#endif
