/* cmd_generate.c: `ditmoe generate`: the whole sampling loop on one class.
 *
 * Parameters left out come from the model (config.json "sampling"; its
 * spacing only when the sampler is the model's: dit_model_default_spacing); the
 * samples go to a PNG (one image, or a grid of several, through dit_decode)
 * and/or to a .npy of the final samples (N, C, H, W), written first so a
 * latent model whose decoder is missing still yields its latents.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "dio.h"

static const char generate_usage[] =
    "usage: ditmoe generate [--model DIR] [--class N|NAME] [--seed S] [--steps K]\n"
    "         [--cfg-scale G] [--sampler NAME] [--spacing uniform|logsnr]\n"
    "         [--cfg-interval LO,HI] [--cache off|fixed:N|adaptive:T]\n"
    "         [--cfg-mode upstream|all] [--rng default|torch] [--num-images K]\n"
    "         [--noise Z.npy] [--threads T] [--out FILE.png] [--out-npy X.npy]\n"
    "         [--no-pack] [--stats] [--compute f32|int8]\n"
    "  --model DIR       or a bundled model's name, e.g. fashion-mnist-ddpm\n"
    "                    (default: the embedded model, fashion-mnist)\n"
    "  --class N|NAME    label or class name, 'null' for unconditional (default 0)\n"
    "  --seed S          (default 0)\n"
    "  --steps, --cfg-scale, --sampler, --cfg-interval, --cache: default from the\n"
    "                    model (config.json \"sampling\"; `ditmoe inspect` shows them)\n"
    "  --spacing         where dpm++2m/heun put their steps (default: the model's\n"
    "                    with the model's sampler; with another --sampler, uniform)\n"
    "  --cfg-interval    guidance only at noise levels in [LO, HI] (0,1: always)\n"
    "  --cache           reuse the blocks' residual: every N-th evaluation runs\n"
    "                    them (fixed:N) or when the input moved by T (adaptive:T);\n"
    "                    off: run them every time\n"
    "  --cfg-mode        guidance on upstream's first 3 channels or all (default upstream)\n"
    "  --rng             default (per-image streams) or torch (as upstream sample.py)\n"
    "  --num-images K    1..64 images of the class, a grid in the PNG (default 1)\n"
    "  --noise Z.npy     float32 (K, C, H, W) initial noise instead of drawing it\n"
    "  --out FILE.png    the image(s); --out-npy X.npy the final samples (N, C, H, W)\n"
    "  --threads T       engine threads (default: one per core)\n"
    "  --no-pack         keep weights as stored and use BLAS (default: packed kernel)\n"
    "  --stats           print evaluations, rows and block computations to stderr\n"
    "  --compute M       f32 (default), or int8: 8-bit products, needs a VNNI CPU\n"
    "                    (refused elsewhere; see docs/quantization.md)\n";

/* The usage text followed by the sampler table, into buf. */
static const char *gen_usage(char *buf, size_t len)
{
    size_t l = (size_t)snprintf(buf, len, "%ssamplers (predictions; evaluations per step):\n",
                                generate_usage);
    for (int k = 0; k < dit_sampler_count() && l < len; k++) {
        const dit_sampler_desc *d = dit_sampler_info(k);
        l += (size_t)snprintf(buf + l, len - l, "  %-9s %s%s%s; %d  %s\n", d->name,
                              d->predictions & (1u << DIT_PRED_EPSILON) ? "epsilon" : "",
                              d->predictions == 3u ? ", " : "",
                              d->predictions & (1u << DIT_PRED_VELOCITY) ? "velocity" : "",
                              d->evals_per_step, d->summary);
    }
    return buf;
}

typedef struct gen_args {
    const char *model, *label, *seed, *steps, *cfg, *sampler, *mode, *rng, *num, *noise;
    const char *out, *out_npy, *threads, *spacing, *interval, *cache;
    int no_pack, stats;
    const char *compute;
} gen_args;

static int gen_label(const dit_model *m, const char *s, int *label)
{
    const dit_config *c = dit_model_config(m);
    char *end;
    long v = strtol(s, &end, 10);
    if (end != s && !*end) {
        if (v < -1000000000L || v > 1000000000L)
            return cli_fail("--class: %s is out of range 0..%d", s, c->num_classes);
        *label = (int)v; /* the sampler checks the range */
        return 0;
    }
    if (!strcmp(s, "null") || !strcmp(s, "none")) {
        *label = c->num_classes;
        return 0;
    }
    *label = dit_model_find_class(m, s);
    if (*label < 0)
        return cli_fail("--class: '%s' is neither a label 0..%d nor a class name of this model",
                        s, c->num_classes - 1);
    return 0;
}

static int gen_enum(const char *name, const char *s, const char *const *names, int n, int *out)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return 0;
        }
    cli_fail("--%s: '%s' is not one of %s%s%s%s%s", name, s, names[0], n > 1 ? ", " : "",
             n > 1 ? names[1] : "", n > 2 ? ", " : "", n > 2 ? names[2] : "");
    return CLI_EUSAGE;
}

static int gen_unknown_sampler(const char *name)
{
    char names[160] = "";
    for (int k = 0; k < dit_sampler_count(); k++) {
        size_t l = strlen(names);
        snprintf(names + l, sizeof names - l, "%s%s", k ? ", " : "", dit_sampler_name(k));
    }
    return cli_fail("--sampler: '%s' is not one of %s", name, names);
}

/* "LO,HI" noise levels; the sampler checks the range. */
static int gen_interval(const char *s, double iv[2])
{
    char lo[64], *comma = strchr(s, ',');
    if (!comma || (size_t)(comma - s) >= sizeof lo)
        return cli_fail("--cfg-interval: '%s' is not LO,HI (noise levels in 0..1)", s);
    memcpy(lo, s, (size_t)(comma - s));
    lo[comma - s] = 0;
    if (cli_double("cfg-interval", lo, 0.0, 1.0, &iv[0]) ||
        cli_double("cfg-interval", comma + 1, 0.0, 1.0, &iv[1]))
        return CLI_EUSAGE;
    if (iv[0] > iv[1])
        return cli_fail("--cfg-interval: %g > %g: LO must not exceed HI", iv[0], iv[1]);
    return 0;
}

/* "off", "fixed:N" or "adaptive:T". */
static int gen_cache(const char *s, dit_cache_params *c)
{
    char mode[16], *colon = strchr(s, ':');
    size_t len = colon ? (size_t)(colon - s) : strlen(s);
    if (len >= sizeof mode)
        return cli_fail("--cache: '%s' is not off, fixed:N or adaptive:T", s);
    memcpy(mode, s, len);
    mode[len] = 0;
    c->mode = dit_cache_mode_parse(mode);
    if (c->mode == DIT_CACHE_OFF && !colon)
        return 0;
    if (c->mode == DIT_CACHE_FIXED && colon)
        return cli_int("cache", colon + 1, 2, 100, &c->interval);
    if (c->mode == DIT_CACHE_ADAPTIVE && colon)
        return cli_double("cache", colon + 1, 1e-6, 10.0, &c->threshold);
    return cli_fail("--cache: '%s' is not off, fixed:N (2..100) or adaptive:T (0..10]", s);
}

/* Fills p from the options over the model's defaults. */
static int gen_params(const dit_model *m, const gen_args *a, dit_sample_params *p)
{
    static const char *const modes[] = { "upstream", "all" };
    static const char *const rngs[] = { "default", "torch" };
    int rc = 0;
    dit_sample_params_default(m, p);
    if (a->label)
        rc = gen_label(m, a->label, &p->class_label);
    if (!rc && a->seed)
        rc = cli_u64("seed", a->seed, &p->seed);
    if (!rc && a->steps)
        rc = cli_int("steps", a->steps, 1, 1000, &p->steps);
    if (!rc && a->cfg)
        rc = cli_double("cfg-scale", a->cfg, 0.0, 50.0, &p->cfg_scale);
    if (!rc && a->sampler && (p->sampler = dit_sampler_parse(a->sampler)) < 0)
        rc = gen_unknown_sampler(a->sampler);
    if (!rc) /* the model's spacing goes with its own sampler only */
        p->spacing = dit_model_default_spacing(m, p->sampler);
    if (!rc && a->spacing && (p->spacing = dit_spacing_parse(a->spacing)) < 0)
        rc = cli_fail("--spacing: '%s' is not one of default, uniform, logsnr", a->spacing);
    if (!rc && a->interval)
        rc = gen_interval(a->interval, p->cfg_interval);
    if (!rc && a->cache)
        rc = gen_cache(a->cache, &p->cache);
    if (!rc && a->mode)
        rc = gen_enum("cfg-mode", a->mode, modes, 2, &p->cfg_mode);
    if (!rc && a->rng)
        rc = gen_enum("rng", a->rng, rngs, 2, &p->rng);
    if (!rc && a->num)
        rc = cli_int("num-images", a->num, 1, 64, &p->num_images);
    return rc;
}

/* Reads --noise into *z and sets p->noise (and num_images if not given). */
static int gen_noise(const dit_model *m, const gen_args *a, io_npy *z, dit_sample_params *p)
{
    const dit_config *c = dit_model_config(m);
    char err[512] = "";
    int64_t k;
    if (!a->noise)
        return 0;
    if (io_npy_read(a->noise, z, err, sizeof err))
        return cli_fail("%s", err);
    k = z->ndim == 4 ? z->shape[0] : 1;
    if (z->dtype != IO_NPY_F32 || (z->ndim != 4 && z->ndim != 3) ||
        z->shape[z->ndim - 3] != c->in_channels || z->shape[z->ndim - 2] != c->input_size ||
        z->shape[z->ndim - 1] != c->input_size)
        return cli_fail("%s: noise must be float32 (K, %d, %d, %d)", a->noise,
                        c->in_channels, c->input_size, c->input_size);
    if (!a->num)
        p->num_images = k < 1 || k > 64 ? 0 : (int)k;
    if (k != p->num_images)
        return cli_fail("%s: noise holds %lld images but --num-images is %d (1..64)",
                        a->noise, (long long)k, p->num_images);
    p->noise = z->data;
    return 0;
}

static int gen_progress(void *user, int step, int num_steps)
{
    (void)user;
    fprintf(stderr, "\rstep %d/%d", step, num_steps);
    if (step == num_steps)
        fputc('\n', stderr);
    return 0;
}

/* Refuses a PNG of a latent model that has no decoder; returns CLI_EFAIL. */
static int gen_no_decoder(const dit_model *m, const char *model_name, const char *path)
{
    const dit_config *c = dit_model_config(m);
    return cli_fail("%s: a latent model (%d-channel samples) whose VAE decoder is not "
                    "available (vae: %s); cannot write %s, use --out-npy for the latents",
                    model_name, c->in_channels, c->vae_dir ? c->vae_dir : "none", path);
}

/* Decodes the samples and writes the PNG (grid for several images). */
static int gen_png(dit_ctx *ctx, const dit_model *m, const dit_sampler *s, const char *path,
                   const char *model_name)
{
    int n = dit_sampler_num_images(s), w, h, ch, gw, gh, rc;
    uint8_t *pix = NULL, *grid = NULL;
    char err[512] = "";
    dit_model_image_size(m, &w, &h, &ch);
    if (io_grid_size(n, w, h, 0, 2, &gw, &gh))
        return cli_fail("%s: cannot lay out %d images of %d x %d", model_name, n, w, h);
    pix = malloc((size_t)n * w * h * ch);
    grid = n > 1 ? malloc((size_t)gw * gh * ch) : NULL;
    if (!pix || (n > 1 && !grid)) {
        rc = cli_fail("out of memory for %d images of %d x %d", n, w, h);
        goto done;
    }
    rc = dit_decode(ctx, n, dit_sampler_result(s), pix);
    if (rc == DIT_E_UNSUPPORTED) {
        rc = gen_no_decoder(m, model_name, path);
        goto done;
    }
    if (rc != DIT_OK) {
        rc = cli_fail("decoding failed: %s", dit_strerror(rc));
        goto done;
    }
    if (n > 1)
        io_grid_compose(grid, pix, n, w, h, ch, 0, 2, 0);
    rc = io_png_write(path, n > 1 ? grid : pix, n > 1 ? gw : w, n > 1 ? gh : h, ch, err,
                      sizeof err);
    if (rc != DIT_OK)
        rc = cli_fail("%s", err[0] ? err : dit_strerror(rc));
done:
    free(pix);
    free(grid);
    return rc;
}

/* One line for scripts (bench/solvers.py): what the sampling cost, and the
 * wall seconds of the denoising loop and of decoding + writing the PNG. */
static void gen_stats(const dit_model *m, const dit_sampler *s, double loop_s, double png_s)
{
    uint64_t run, reused;
    int L = dit_model_config(m)->depth;
    dit_sampler_cache_stats(s, &run, &reused);
    fprintf(stderr, "stats: evals %d rows %llu blocks_run %llu blocks_reused %llu "
            "loop_s %.3f png_s %.3f\n", dit_sampler_evals(s),
            (unsigned long long)((run + reused) / (uint64_t)L), (unsigned long long)run,
            (unsigned long long)reused, loop_s, png_s);
}

static int gen_run(const dit_model *m, const dit_sample_params *p, const gen_args *a,
                   int threads, const char *model_name)
{
    const dit_config *c = dit_model_config(m);
    dit_sampler *s = NULL;
    dit_ctx *ctx = NULL;
    dit_ctx_settings set;
    char err[512] = "";
    int w, h, ch, rc;
    double t0, t1;
    dit_model_image_size(m, &w, &h, &ch);
    if (a->out && (w < 1 || h < 1 || (ch != 1 && ch != 3))) /* refuse before sampling */
        return gen_no_decoder(m, model_name, a->out);
    rc = dit_sampler_new(&s, m, p, err, sizeof err);
    if (rc != DIT_OK)
        return cli_fail("%s", err[0] ? err : dit_strerror(rc));
    dit_ctx_settings_default(&set);
    set.max_rows = dit_sampler_max_rows(s);
    set.max_decode = p->num_images;
    set.n_threads = threads;
    if ((rc = dit_ctx_new(&ctx, m, &set)) != DIT_OK) {
        rc = cli_fail("cannot make a context for %d rows: %s", set.max_rows, dit_strerror(rc));
        goto done;
    }
    t0 = cli_now();
    rc = dit_generate(ctx, &s, 1, isatty(2) ? gen_progress : NULL, NULL);
    t1 = cli_now();
    if (rc != DIT_OK) {
        rc = cli_fail("sampling failed: %s", dit_strerror(rc));
        goto done;
    }
    dit_model_info info;
    dit_model_get_info(m, &info);
    fprintf(stderr, "sampled %d image%s in %.2f s (%d steps, %d threads, kernel %s)\n",
            p->num_images, p->num_images == 1 ? "" : "s", cli_now() - t0, p->steps, threads,
            info.kernel ? info.kernel : "?");
    if (a->out_npy) {
        int64_t shape[4] = { p->num_images, c->in_channels, c->input_size, c->input_size };
        rc = io_npy_write(a->out_npy, IO_NPY_F32, 4, shape, dit_sampler_result(s), err,
                          sizeof err);
        if (rc != DIT_OK) {
            rc = cli_fail("%s", err[0] ? err : dit_strerror(rc));
            goto done;
        }
    }
    rc = a->out ? gen_png(ctx, m, s, a->out, model_name) : 0;
    if (!rc && a->stats)
        gen_stats(m, s, t1 - t0, a->out ? cli_now() - t1 : 0.0);
done:
    dit_ctx_free(ctx);
    dit_sampler_free(s);
    return rc;
}

int cmd_generate(int argc, char **argv)
{
    gen_args a = { 0 };
    const cli_opt opts[] = {
        { "model", &a.model, NULL }, { "class", &a.label, NULL }, { "seed", &a.seed, NULL },
        { "steps", &a.steps, NULL }, { "cfg-scale", &a.cfg, NULL },
        { "sampler", &a.sampler, NULL }, { "cfg-mode", &a.mode, NULL },
        { "rng", &a.rng, NULL }, { "num-images", &a.num, NULL }, { "noise", &a.noise, NULL },
        { "out", &a.out, NULL }, { "out-npy", &a.out_npy, NULL },
        { "threads", &a.threads, NULL }, { "no-pack", NULL, &a.no_pack },
        { "spacing", &a.spacing, NULL }, { "cfg-interval", &a.interval, NULL },
        { "cache", &a.cache, NULL }, { "stats", NULL, &a.stats },
        { "compute", &a.compute, NULL },
    };
    char usage[4096];
    dit_sample_params p;
    dit_model *m = NULL;
    io_npy z = { 0 };
    const char *name = NULL;
    int threads = cli_cores();
    int rc = cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]),
                       gen_usage(usage, sizeof usage));
    if (rc)
        return rc < 0 ? 0 : rc;
    if (!a.out && !a.out_npy) {
        cli_fail("generate needs --out FILE.png and/or --out-npy X.npy");
        return CLI_EUSAGE;
    }
    if (a.threads && (rc = cli_int("threads", a.threads, 1, 256, &threads)))
        return rc;
    cli_engine_setup();
    if ((rc = cli_load_model(a.model, a.no_pack, a.compute, &m, &name)))
        return rc;
    if (!(rc = gen_params(m, &a, &p)) && !(rc = gen_noise(m, &a, &z, &p)))
        rc = gen_run(m, &p, &a, threads, name);
    io_npy_free(&z);
    dit_model_free(m);
    return rc;
}
