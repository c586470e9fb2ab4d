/* cmd_inspect.c: `ditmoe inspect`: what a model is, how big, how it samples.
 */
#include <stdio.h>

#include "cli.h"

static const char inspect_usage[] =
    "usage: ditmoe inspect [--model DIR] [--no-pack] [--kernels]\n"
    "  --model DIR   model directory or weight file, or a bundled model's name\n"
    "                (fashion-mnist-ddpm; default: the embedded model)\n"
    "  --no-pack     weights as stored, BLAS path (default: packed for the kernel)\n"
    "  --kernels     only list the GEMM kernels this CPU runs, best first\n";


/* The model's default sampling, as the options of `ditmoe generate` say it. */
static void print_sampling(const dit_config *c)
{
    const dit_cache_params *k = &c->default_cache;
    printf("sampling        %s, %d steps", dit_sampler_name(c->default_sampler),
           c->default_steps);
    if (c->default_spacing != DIT_SPACING_DEFAULT)
        printf(", %s spacing", dit_spacing_name(c->default_spacing));
    printf(", cfg scale %g", c->default_cfg_scale);
    if (c->default_cfg_interval[0] != 0.0 || c->default_cfg_interval[1] != 1.0)
        printf(" at noise levels %g..%g", c->default_cfg_interval[0], c->default_cfg_interval[1]);
    if (k->mode == DIT_CACHE_FIXED)
        printf(", cache fixed:%d", k->interval);
    else if (k->mode == DIT_CACHE_ADAPTIVE)
        printf(", cache adaptive:%g", k->threshold);
    putchar('\n');
}

static void inspect_print(const char *name, const dit_model *m)
{
    const dit_config *c = dit_model_config(m);
    dit_model_info info;
    int named = 0, w, h, ch;
    dit_model_get_info(m, &info);
    dit_model_image_size(m, &w, &h, &ch);
    for (int i = 0; i < c->num_classes; i++)
        named += dit_model_class_name(m, i) != NULL;
    printf("model           %s%s%s\n", name, c->preset ? "  preset " : "",
           c->preset ? c->preset : "");
    printf("input           %d x %d x %d (C x H x W), patch %d, %d tokens\n",
           c->in_channels, c->input_size, c->input_size, c->patch_size, c->num_tokens);
    printf("output          %d channels%s\n", c->out_channels,
           c->learn_sigma ? " (prediction + learned variance)" : "");
    printf("prediction      %s\n", c->prediction == DIT_PRED_VELOCITY
                                       ? "velocity (rectified flow)" : "epsilon");
    printf("transformer     depth %d, hidden %d, heads %d\n", c->depth, c->hidden_size,
           c->num_heads);
    printf("experts         %d routed (top-%d, width %d), shared width %d\n",
           c->num_experts, c->num_experts_per_tok, c->expert_hidden, c->shared_hidden);
    printf("classes         %d (%d named), null class %s (class_dropout_prob %g)\n",
           c->num_classes, named, c->class_dropout_prob > 0 ? "yes" : "no",
           c->class_dropout_prob);
    printf("parameters      %llu total, %llu active per token\n",
           (unsigned long long)info.params_total, (unsigned long long)info.params_active);
    printf("weights         %.1f MiB resident, stored %s%s\n",
           (double)info.weight_bytes / (1024.0 * 1024.0),
           info.weight_dtype ? info.weight_dtype : "?",
           info.packed ? ", packed for the GEMM kernel" : ", run through BLAS");
    for (int i = 0; i < info.n_dtypes; i++)
        printf("  held as %-6s %.1f MiB, %llu parameters\n", info.held[i].dtype,
               (double)info.held[i].bytes / (1024.0 * 1024.0),
               (unsigned long long)info.held[i].params);
    printf("kernel          %s%s\n", info.kernel ? info.kernel : "?",
           info.packed ? "" : " (attention and VAE; weight products on BLAS)");
    if (c->vae_dir)
        printf("latents         decoded by %s (latents / %g)\n", c->vae_dir, c->latent_scale);
    printf("image           %d x %d, %d channel%s\n", w, h, ch, ch == 1 ? "" : "s");
    print_sampling(c);
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL, *name = NULL;
    int no_pack = 0, kernels = 0;
    const cli_opt opts[] = { { "model", &path, NULL }, { "no-pack", NULL, &no_pack },
                             { "kernels", NULL, &kernels } };
    dit_model *m = NULL;
    int rc = cli_parse(argc, argv, opts, 3, inspect_usage);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (kernels) {
        const char *names[16];
        int n = dit_kernels_available(names, 16);
        for (int i = 0; i < n && i < 16; i++)
            printf("%s\n", names[i]);
        return 0;
    }
    if ((rc = cli_load_model(path, no_pack, NULL, &m, &name)))
        return rc;
    inspect_print(name, m);
    /* the working set one worker adds to the weights, at the server's default */
    dit_ctx_settings set;
    dit_ctx_settings_default(&set);
    dit_ctx *ctx = NULL;
    if (dit_ctx_new(&ctx, m, &set) == DIT_OK) {
        dit_model_info info;
        dit_model_get_info(m, &info);
        printf("context         %.1f MiB for %d rows per forward\n",
               (double)dit_ctx_bytes(ctx) / (1024.0 * 1024.0), set.max_rows);
        printf("resident set    %.1f MiB expected: weights%s + one context\n",
               (double)(info.resident_bytes + dit_ctx_bytes(ctx)) / (1024.0 * 1024.0),
               info.resident_bytes > info.weight_bytes ? " + VAE decoder" : "");
    }
    dit_ctx_free(ctx);
    dit_model_free(m);
    return 0;
}
