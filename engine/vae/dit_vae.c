/* dit_vae.c: the public dit_vae handle, a decoder with its own workers.
 *
 * A latent model owns its decoder (model/decode.c); this handle serves
 * callers that decode latents saved earlier (`ditmoe decode`, benchmarks)
 * without a DiT model. Decoding is not in a denoising loop, so the
 * workspace is allocated per call, sized for the latents given.
 */
#include <stdio.h>
#include <stdlib.h>

#include <ditmoe/dit.h>

#include "gemm.h"
#include "pool.h"
#include "vae.h"

struct dit_vae {
    vae_model *m;
    struct op_pool *pool; /* NULL for one thread */
};

int dit_vae_load(dit_vae **out, const char *dir, int n_threads, char *err, size_t errlen)
{
    dit_vae *v = calloc(1, sizeof *v);
    *out = NULL;
    if (!v)
        return DIT_E_NOMEM;
    const gemm_kernel *gk = NULL;
    int rc = gemm_kernel_choose(&gk, err, errlen);
    if (rc == DIT_OK)
        rc = vae_load(&v->m, dir, gk, err, errlen);
    if (rc == DIT_OK && n_threads > 1 && !(v->pool = op_pool_new(n_threads)))
        rc = DIT_E_NOMEM;
    if (rc != DIT_OK) {
        dit_vae_free(v);
        return rc;
    }
    *out = v;
    return DIT_OK;
}

void dit_vae_free(dit_vae *v)
{
    if (!v)
        return;
    vae_free(v->m);
    op_pool_free(v->pool);
    free(v);
}

void dit_vae_shape(const dit_vae *v, int *latent_channels, int *out_channels, int *upscale)
{
    *latent_channels = vae_latent_channels(v->m);
    *out_channels = vae_out_channels(v->m);
    *upscale = vae_upscale(v->m);
}

double dit_vae_flops(const dit_vae *v, int h, int w)
{
    return vae_decode_flops(v->m, h, w);
}

int dit_vae_decode(dit_vae *v, int n, int h, int w, const float *z, float *rgb, char *err,
                   size_t errlen)
{
    size_t wsb = vae_workspace_bytes(v->m, op_pool_threads(v->pool), n, h, w);
    if (!wsb) {
        snprintf(err, errlen, "%d x %d latents make a picture over 16384 pixels a side", h, w);
        return DIT_E_INVAL;
    }
    void *ws = malloc(wsb);
    if (!ws) {
        snprintf(err, errlen, "out of memory decoding %d latents of %d x %d (%zu MiB of "
                 "workspace)", n, h, w, wsb >> 20);
        return DIT_E_NOMEM;
    }
    int rc = vae_decode(v->m, v->pool, ws, wsb, n, h, w, z, rgb);
    free(ws);
    return rc;
}
