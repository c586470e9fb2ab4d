/* decode.c: turning final samples into 8-bit pictures.
 *
 * Pixel-space models (such as the default Fashion-MNIST model) produce
 * images directly: values in [-1, 1] map to 0..255, as upstream's
 * save_image(normalize=True, value_range=(-1, 1)) does. Latent models
 * (the published ImageNet ones, 32x32x4 SD-VAE latents) need the VAE
 * decoder, which the model opens at load from config.json's "vae"; a
 * latent model without one is refused with DIT_E_UNSUPPORTED.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "vae.h"

int model_is_latent(const dit_model *m)
{
    return m->cfg.vae_dir != NULL || m->cfg.preset != NULL;
}

/* The VAE directory: config.json's "vae" (relative to the model
 * directory unless absolute), else for presets a "vae" or "sd-vae-ft-mse"
 * folder beside the checkpoint. Empty when there is none. */
static void vae_path(const dit_model *m, const char *dir, char *out, size_t len)
{
    const char *v = m->cfg.vae_dir;
    struct stat st;
    out[0] = 0;
    if (v) {
        snprintf(out, len, v[0] == '/' ? "%s" : "%s/%s", v[0] == '/' ? v : dir, v);
        return;
    }
    const char *guess[] = { "vae", "sd-vae-ft-mse" };
    for (int i = 0; i < 2 && m->cfg.preset; i++) {
        snprintf(out, len, "%s/%s/" VAE_CONFIG_FILE, dir, guess[i]);
        if (stat(out, &st) == 0) {
            snprintf(out, len, "%s/%s", dir, guess[i]);
            return;
        }
    }
    out[0] = 0;
}

int model_open_vae(dit_model *m, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    vae_path(m, dir, path, sizeof path);
    if (!path[0])
        return DIT_OK; /* pixel model, or a preset whose pictures need --vae */
    int rc = vae_load(&m->vae, path, m->gk, err, errlen);
    if (rc != DIT_OK)
        return rc;
    if (vae_latent_channels(m->vae) != m->cfg.in_channels) {
        snprintf(err, errlen, "%s: the VAE takes %d latent channels but the model makes %d "
                 "(in_channels)", path, vae_latent_channels(m->vae), m->cfg.in_channels);
        return DIT_E_FORMAT;
    }
    return DIT_OK;
}

void model_close_vae(dit_model *m)
{
    vae_free(m->vae);
    m->vae = NULL;
}

/* Per image: the scaled latent and the decoder's float RGB output. */
static size_t decode_floats(const dit_model *m)
{
    int s = m->cfg.input_size, up = vae_upscale(m->vae);
    return (size_t)m->cfg.in_channels * s * s + (size_t)vae_out_channels(m->vae) * s * up * s * up;
}

size_t decode_ws_bytes(const dit_model *m, int threads, int n)
{
    (void)n; /* images are decoded one after another */
    if (!m->vae)
        return 0;
    int s = m->cfg.input_size;
    return vae_workspace_bytes(m->vae, threads, 1, s, s) + decode_floats(m) * sizeof(float);
}

void dit_model_image_size(const dit_model *m, int *w, int *h, int *channels)
{
    int s = m ? m->cfg.input_size : 0, ch = m ? m->cfg.in_channels : 0;
    if (m && model_is_latent(m)) {
        s *= m->vae ? vae_upscale(m->vae) : 8;
        ch = m->vae ? vae_out_channels(m->vae) : 3;
    }
    if (w)
        *w = s;
    if (h)
        *h = s;
    if (channels)
        *channels = ch;
}

static uint8_t to_u8(float v)
{
    /* upstream: clamp((x + 1) / 2, 0, 1) * 255 + 0.5, truncated */
    float u = (v + 1.0f) * 0.5f;
    u = u < 0 ? 0 : u > 1 ? 1 : u;
    return (uint8_t)(u * 255.0f + 0.5f);
}

void dit_to_pixels(const float *x, int n, int C, size_t hw, uint8_t *px)
{
    for (size_t i = 0; x && px && i < (size_t)n; i++)
        for (size_t p = 0; p < hw; p++)
            for (int ch = 0; ch < C; ch++)
                px[(i * hw + p) * C + ch] = to_u8(x[(i * C + ch) * hw + p]);
}

/* Latent model: z / latent_scale through the VAE, one image at a time. */
static int decode_latents(dit_ctx *c, int n, const float *x, uint8_t *pixels)
{
    const dit_model *m = c->m;
    int C = m->cfg.in_channels, s = m->cfg.input_size, up = vae_upscale(m->vae);
    int oc = vae_out_channels(m->vae);
    size_t zn = (size_t)C * s * s, hw = (size_t)s * up * s * up;
    size_t vae_bytes = vae_workspace_bytes(m->vae, op_pool_threads(c->pool), 1, s, s);
    float *z = (float *)((char *)c->vae_ws + vae_bytes), *rgb = z + zn; // (C, s, s), (oc, S, S)
    float inv = (float)(1.0 / m->cfg.latent_scale);
    for (int i = 0; i < n; i++) {
        for (size_t k = 0; k < zn; k++)
            z[k] = x[(size_t)i * zn + k] * inv;
        int rc = vae_decode(m->vae, c->pool, c->vae_ws, vae_bytes, 1, s, s, z, rgb);
        if (rc != DIT_OK)
            return rc;
        dit_to_pixels(rgb, 1, oc, hw, pixels + (size_t)i * hw * oc);
    }
    return DIT_OK;
}

int dit_decode(dit_ctx *c, int n, const float *x, uint8_t *pixels)
{
    if (!c || !x || !pixels || n < 1 || n > c->set.max_decode)
        return DIT_E_INVAL;
    const dit_config *g = &c->m->cfg;
    if (model_is_latent(c->m))
        return c->m->vae ? decode_latents(c, n, x, pixels) : DIT_E_UNSUPPORTED;
    int C = g->in_channels, H = g->input_size;
    if (C != 1 && C != 3)
        return DIT_E_UNSUPPORTED;
    dit_to_pixels(x, n, C, (size_t)H * H, pixels);
    return DIT_OK;
}
