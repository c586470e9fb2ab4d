/* cmd_decode.c: `ditmoe decode`: latents through an SD-VAE decoder to a PNG.
 *
 * What upstream sample.py does after sampling a latent model,
 * save_image(vae.decode(z / 0.18215).sample, normalize=True,
 * value_range=(-1, 1)), on latents saved by `ditmoe generate --out-npy` (or
 * by PyTorch): the VAE directory is a diffusers AutoencoderKL
 * (config.json + diffusion_pytorch_model.safetensors) read by engine/vae.c;
 * several latents make a grid. The decoder's float output can be kept too
 * (--out-npy), for comparing with PyTorch.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "dio.h"

static const char decode_usage[] =
    "usage: ditmoe decode --vae DIR --latents Z.npy --out X.png [--latent-scale S]\n"
    "                     [--out-npy RGB.npy] [--threads T]\n"
    "  --vae DIR          diffusers AutoencoderKL directory (e.g. sd-vae-ft-mse)\n"
    "  --latents Z.npy    float32 (N, C, h, w) or (C, h, w) latents, as sampled\n"
    "  --latent-scale S   latents are divided by S first (default 0.18215, upstream's;\n"
    "                     1 for latents already divided)\n"
    "  --out X.png        the picture, a grid for N > 1\n"
    "  --out-npy RGB.npy  also the decoder's float32 output (N, 3, 8h, 8w), about [-1, 1]\n"
    "  --threads T        threads (default: one per core)\n";

typedef struct dec_args {
    const char *vae, *latents, *out, *out_npy;
    double scale;
    int threads;
} dec_args;

/* Checks the latents against the decoder; returns N or -1 after printing. */
static int dec_check(int lat, const io_npy *z, const char *path, int *h, int *w)
{
    int four = z->ndim == 4;
    int64_t n = four ? z->shape[0] : 1;
    if (z->dtype != IO_NPY_F32 || (z->ndim != 3 && !four) || n < 1 || n > 1024 ||
        z->shape[four] != lat || z->shape[four + 1] < 1 || z->shape[four + 1] > 1024 ||
        z->shape[four + 2] < 1 || z->shape[four + 2] > 1024) {
        cli_fail("%s: latents must be float32 (N, %d, h, w) or (%d, h, w) with N 1..1024 "
                 "and h, w 1..1024", path, lat, lat);
        return -1;
    }
    *h = (int)z->shape[four + 1];
    *w = (int)z->shape[four + 2];
    return (int)n;
}

/* PNG of the n images (a grid when n > 1) and the optional .npy. */
static int dec_write(const dec_args *a, const float *rgb, int n, int C, int H, int W)
{
    int gw = W, gh = H, rc = CLI_EFAIL;
    size_t hw = (size_t)H * W;
    char err[512] = "";
    int64_t shape[4] = { n, C, H, W };
    if (n > 1 && io_grid_size(n, W, H, 0, 2, &gw, &gh))
        return cli_fail("cannot lay out %d images of %d x %d", n, W, H);
    uint8_t *px = malloc((size_t)n * hw * C), *grid = malloc((size_t)gw * gh * C);
    if (!px || !grid) {
        cli_fail("out of memory for %d images of %d x %d", n, W, H);
        goto done;
    }
    dit_to_pixels(rgb, n, C, hw, px);
    if (n > 1)
        io_grid_compose(grid, px, n, W, H, C, 0, 2, 0);
    rc = io_png_write(a->out, n > 1 ? grid : px, gw, gh, C, err, sizeof err);
    if (rc == DIT_OK && a->out_npy)
        rc = io_npy_write(a->out_npy, IO_NPY_F32, 4, shape, rgb, err, sizeof err);
    if (rc != DIT_OK)
        rc = cli_fail("%s", err[0] ? err : dit_strerror(rc));
done:
    free(px);
    free(grid);
    return rc;
}

static int dec_run(const dec_args *a, dit_vae *v, const io_npy *z)
{
    int lat, C, up, h, w;
    dit_vae_shape(v, &lat, &C, &up);
    int n = dec_check(lat, z, a->latents, &h, &w);
    if (n < 0)
        return CLI_EFAIL;
    if (C != 1 && C != 3)
        return cli_fail("%s: the VAE makes %d channels; a PNG needs 1 or 3", a->vae, C);
    size_t zn = io_npy_numel(z);
    float *zs = malloc(zn * sizeof *zs);
    float *rgb = malloc((size_t)n * C * h * up * w * up * sizeof *rgb);
    int rc = CLI_EFAIL;
    char err[512] = "";
    if (!zs || !rgb) {
        cli_fail("out of memory decoding %d latents of %d x %d", n, h, w);
        goto done;
    }
    for (size_t i = 0; i < zn; i++)
        zs[i] = (float)(((const float *)z->data)[i] / a->scale);
    double t = cli_now();
    rc = dit_vae_decode(v, n, h, w, zs, rgb, err, sizeof err);
    if (rc != DIT_OK) {
        rc = cli_fail("%s: decoding failed: %s", a->latents, err[0] ? err : dit_strerror(rc));
        goto done;
    }
    fprintf(stderr, "decoded %d x %dx%d latents in %.2f s (%d threads)\n", n, h, w,
            cli_now() - t, a->threads);
    rc = dec_write(a, rgb, n, C, h * up, w * up);
done:
    free(zs);
    free(rgb);
    return rc;
}

int cmd_decode(int argc, char **argv)
{
    dec_args a = { 0 };
    const char *scale_s = "0.18215", *threads_s = NULL;
    const cli_opt opts[] = {
        { "vae", &a.vae, NULL }, { "latents", &a.latents, NULL }, { "out", &a.out, NULL },
        { "out-npy", &a.out_npy, NULL }, { "latent-scale", &scale_s, NULL },
        { "threads", &threads_s, NULL },
    };
    int rc = cli_parse(argc, argv, opts, 6, decode_usage);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (!a.vae || !a.latents || !a.out) {
        cli_fail("decode needs --vae, --latents and --out");
        return CLI_EUSAGE;
    }
    if ((rc = cli_double("latent-scale", scale_s, 1e-6, 1e6, &a.scale)) ||
        (threads_s && (rc = cli_int("threads", threads_s, 1, 256, &a.threads))))
        return rc;
    if (!threads_s)
        a.threads = cli_cores();
    /* the engine's pool with single-threaded BLAS, as the server decodes:
     * it beats BLAS's own threads here (bench/vae_bench.py) */
    cli_engine_setup();
    dit_vae *v = NULL;
    io_npy z = { 0 };
    char err[1024] = "";
    if ((rc = dit_vae_load(&v, a.vae, a.threads, err, sizeof err)) != DIT_OK)
        rc = cli_fail("%s", err[0] ? err : dit_strerror(rc));
    else if ((rc = io_npy_read(a.latents, &z, err, sizeof err)) != DIT_OK)
        rc = cli_fail("%s", err[0] ? err : dit_strerror(rc));
    else
        rc = dec_run(&a, v, &z);
    io_npy_free(&z);
    dit_vae_free(v);
    return rc;
}
