/* vae.h: the SD-VAE decoder of latent DiT-MoE models (engine-internal).
 *
 * Upstream sample.py turns latents into pictures with
 * vae.decode(latents / 0.18215), a diffusers AutoencoderKL (sd-vae-ft-mse).
 * This is that decoder in C: post_quant_conv, the Decoder (conv_in, a mid
 * block of ResNet, single-head attention, ResNet, up blocks of ResNets and
 * nearest x2 upsampling, GroupNorm + SiLU, conv_out), read from a diffusers
 * model directory: config.json and diffusion_pytorch_model.safetensors
 * (F32, F16 or BF16). Every weight is copied to F32 once, at load, in the
 * layout the convolutions want (they run on the GEMM kernel entry given at
 * load, gemm.h), and the file is closed: the decoder computes
 * in F32 whatever the file's dtype, and holds 4 bytes per weight (189 MiB
 * for sd-vae-ft-mse). Only the decoder's tensors are read; the encoder's may
 * be present or not.
 *
 * A vae_model is read-only once loaded and may be shared by threads; each
 * decoding thread passes its own workspace. Functions return DIT_OK or a
 * negative dit_status (dit.h); loaders write the file, tensor or field at
 * fault into err.
 */
#ifndef DIT_VAE_H
#define DIT_VAE_H

#include <stddef.h>

typedef struct vae_model vae_model;
struct op_pool;
struct gemm_kernel;

/* The config.json file and weights file names inside a VAE directory. */
#define VAE_CONFIG_FILE "config.json"
#define VAE_WEIGHTS_FILE "diffusion_pytorch_model.safetensors"

/* Loads the decoder from directory `dir`. Keys read from config.json
 * (diffusers' defaults when absent): block_out_channels, layers_per_block,
 * latent_channels, norm_num_groups, out_channels, act_fn ("silu" only),
 * up_block_types (UpDecoderBlock2D only), mid_block_add_attention and
 * use_post_quant_conv. Every decoder tensor must be present with the shape
 * the config implies (attention under either naming: to_q/to_k/to_v/to_out.0
 * or query/key/value/proj_attn), and the file must hold no decoder tensor
 * the config does not explain. On success *out owns the model (and the
 * file is closed again); on failure *out is NULL and err names what is
 * wrong. gk: the GEMM kernel entry the convolutions run on (the model's;
 * it must outlive the decoder). */
int vae_load(vae_model **out, const char *dir, const struct gemm_kernel *gk, char *err,
             size_t errlen);

/* Frees a model; NULL is a no-op. */
void vae_free(vae_model *m);

int vae_latent_channels(const vae_model *m);
int vae_out_channels(const vae_model *m);
/* Output pixels per latent along each side: 2^(number of up blocks - 1). */
int vae_upscale(const vae_model *m);
/* Bytes of decoder weights the model holds. */
size_t vae_weight_bytes(const vae_model *m);

/* Workspace bytes vae_decode needs for latents of h x w on a pool of
 * `threads` (each has its own im2col pack scratch). Images are decoded
 * one after another, so this does not grow with n (kept in the signature
 * so callers size for what they decode). 0 if h or w is out of range: the
 * output may be at most 16384 pixels a side. */
size_t vae_workspace_bytes(const vae_model *m, int threads, int n, int h, int w);

/* Floating-point operations of decoding one h x w latent (multiply-adds of
 * convolutions and attention count 2), for benchmarks. */
double vae_decode_flops(const vae_model *m, int h, int w);

/* Decodes n latents z (N, latent_channels, h, w), already divided by the
 * latent scale, into rgb (N, out_channels, h * up, w * up) in about [-1, 1]
 * (up = vae_upscale). `ws` holds ws_bytes >= vae_workspace_bytes(m, n, h, w)
 * bytes of scratch the caller owns (any alignment; threads =
 * op_pool_threads(pool)); nothing is allocated. With a pool (ops.h; the
 * engine context's), the convolutions and the mid block's attention (by
 * query tiles) are split over its threads.
 * Returns DIT_E_INVAL for bad arguments or a workspace too small. */
int vae_decode(const vae_model *m, struct op_pool *pool, void *ws,
               size_t ws_bytes, int n, int h, int w, const float *z, float *rgb);

#endif
