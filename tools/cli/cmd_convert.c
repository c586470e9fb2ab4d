/* cmd_convert.c: `ditmoe convert`: a PyTorch checkpoint into a model directory.
 *
 * Reads a .pt (or .safetensors) weight file with the engine's own readers,
 * infers the DiT-MoE config from the tensor shapes, and writes DIR/config.json
 * and DIR/model.safetensors (tensors as stored, or every floating-point one
 * converted with --dtype: F16 or BF16 halve the memory a model needs, and
 * the engine's kernel runs them at F32 speed). Shapes fix
 * everything but the attention head count, top-k, the class-dropout
 * convention and the training objective: those come from the published
 * preset the shapes match, else from options (--num-heads is then required;
 * prediction defaults to epsilon, top-k to 2, class_dropout_prob to 0.1, as
 * upstream). Models with 1000 classes get the ImageNet class names embedded
 * when config/imagenet_classes.txt is found (or --class-names FILE). When a
 * config.json sits beside the input (a model directory), its choices,
 * class names and VAE carry over instead, so `--dtype` converts a model
 * directory whole.
 * The result is read back with st_open and compared tensor by tensor, then
 * loaded as a model; on any failure the written files are removed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "preset.h"
#include "st.h"
#include "st_write.h"

#ifndef DITMOE_SOURCE_DIR
#define DITMOE_SOURCE_DIR "."
#endif
#ifndef DITMOE_DATADIR
#define DITMOE_DATADIR "/usr/local/share/ditmoe"
#endif

static const char convert_usage[] =
    "usage: ditmoe convert --in CHECKPOINT.pt --out DIR [--num-heads H]\n"
    "                      [--prediction epsilon|velocity] [--top-k K]\n"
    "                      [--class-dropout-prob P] [--class-names FILE] [--vae PATH]\n"
    "                      [--dtype f32|f16|bf16]\n"
    "  --in FILE          torch.save checkpoint (state_dict, or {\"ema\"|\"model\": ...})\n"
    "  --out DIR          writes DIR/config.json and DIR/model.safetensors (DIR may\n"
    "                     exist, but not those files)\n"
    "  --num-heads H      attention heads (required unless the shapes match a preset)\n"
    "  --prediction P     epsilon (DDPM-trained) or velocity (rectified flow)\n"
    "  --top-k K          experts per token (default: preset's, else 2)\n"
    "  --class-dropout-prob P  > 0 when the label table has a null-class row (default 0.1)\n"
    "  --class-names FILE one class name per line (default for 1000 classes: ImageNet's)\n"
    "  --vae PATH         VAE directory for latent models, written as config \"vae\"\n"
    "  --dtype D          convert every float tensor to f32, f16 or bf16, rounding to\n"
    "                     nearest even as torch's .half()/.bfloat16() (default: as stored)\n";

typedef struct conv_opts {
    const char *in, *out, *heads, *pred, *topk, *dropout, *names, *vae, *dtype;
} conv_opts;

/* The tensor `name` with ndim dimensions, or NULL after printing why. */
static const st_tensor *conv_need(const st_table *t, const char *name, int ndim)
{
    const st_tensor *x = st_find(t, name);
    if (!x)
        cli_fail("%s: no tensor '%s': not a DiT-MoE state_dict", st_path(t), name);
    else if (x->ndim != ndim)
        cli_fail("%s: tensor '%s' has %d dimensions, not %d", st_path(t), name, x->ndim, ndim);
    else if (x->shape[0] < 1 || x->shape[0] > 1 << 24 || (ndim > 1 && x->shape[1] > 1 << 24))
        cli_fail("%s: tensor '%s' has an implausible shape", st_path(t), name);
    else
        return x;
    return NULL;
}

/* Blocks 0, 1, ... as long as each has its router. */
static int conv_depth(const st_table *t)
{
    char name[64];
    int depth = 0;
    while (depth < 100000) {
        snprintf(name, sizeof name, "blocks.%d.moe.gate.weight", depth);
        if (!st_find(t, name))
            break;
        depth++;
    }
    return depth;
}

/* Everything the shapes say: sizes, depth, experts and widths. */
static int conv_shapes(const st_table *t, dit_config *c)
{
    const st_tensor *xe = conv_need(t, "x_embedder.proj.weight", 4);
    const st_tensor *pos = xe ? conv_need(t, "pos_embed", 3) : NULL;
    const st_tensor *yt = pos ? conv_need(t, "y_embedder.embedding_table.weight", 2) : NULL;
    const st_tensor *gate = yt ? conv_need(t, "blocks.0.moe.gate.weight", 2) : NULL;
    const st_tensor *ex = gate ? conv_need(t, "blocks.0.moe.experts.0.gate_proj.weight", 2) : NULL;
    const st_tensor *fl = ex ? conv_need(t, "final_layer.linear.weight", 2) : NULL;
    if (!fl)
        return CLI_EFAIL;
    const st_tensor *sh = st_find(t, "blocks.0.moe.shared_experts.gate_proj.weight");
    int D = (int)xe->shape[0], P = (int)xe->shape[2], T = (int)pos->shape[1];
    int grid = 1;
    while (grid * grid < T)
        grid++;
    if (xe->shape[3] != P || grid * grid != T || pos->shape[2] != D)
        return cli_fail("%s: x_embedder.proj.weight %dx%d patches and pos_embed of %d tokens "
                        "do not make a square grid", st_path(t), P, (int)xe->shape[3], T);
    c->hidden_size = D;
    c->in_channels = (int)xe->shape[1];
    c->patch_size = P;
    c->input_size = grid * P;
    c->depth = conv_depth(t);
    c->num_experts = (int)gate->shape[0];
    c->mlp_ratio = (double)ex->shape[0] / D;
    c->n_shared_experts = sh && sh->ndim == 2 ? (int)(sh->shape[0] / D) : 0;
    if (sh && sh->ndim == 2 && sh->shape[0] % D)
        return cli_fail("%s: shared experts of width %lld are not a multiple of hidden size %d",
                        st_path(t), (long long)sh->shape[0], D);
    int cout = (int)(fl->shape[0] / ((int64_t)P * P));
    c->learn_sigma = cout == 2 * c->in_channels;
    if (fl->shape[0] % ((int64_t)P * P) || (cout != c->in_channels && !c->learn_sigma))
        return cli_fail("%s: final_layer.linear.weight has %lld rows, not %d x %d x C or "
                        "2C output channels", st_path(t), (long long)fl->shape[0], P, P);
    c->num_classes = (int)yt->shape[0]; /* the null row is taken off below */
    return 0;
}

/* The choices shapes do not fix, from the config.json beside the input:
 * what that model directory already said. */
static void conv_from_base(const dit_config *b, dit_config *c)
{
    c->num_heads = b->num_heads;
    c->num_experts_per_tok = b->num_experts_per_tok;
    c->class_dropout_prob = b->class_dropout_prob;
    c->prediction = b->prediction;
    c->default_sampler = b->default_sampler;
    c->default_steps = b->default_steps;
    c->default_cfg_scale = b->default_cfg_scale;
    if (b->vae_dir) /* a pixel model's config has no use for one */
        c->latent_scale = b->latent_scale;
}

/* Fills what the shapes do not say: preset, then the input directory's
 * config.json (base, may be NULL), then options. */
static int conv_choices(const conv_opts *o, const st_table *t, const dit_model *base,
                        dit_config *c)
{
    const dit_preset *p = dit_preset_match(c->depth, c->hidden_size, c->num_experts);
    c->num_experts_per_tok = 2;
    c->class_dropout_prob = 0.1;
    c->prediction = DIT_PRED_EPSILON;
    c->default_sampler = DIT_SAMPLER_DDPM;
    c->default_steps = 250;
    c->default_cfg_scale = 4.0;
    c->latent_scale = c->in_channels == 4 ? 0.18215 : 0;
    if (p) {
        c->num_heads = p->heads;
        c->prediction = p->prediction;
        c->default_sampler = p->sampler;
        c->default_steps = p->steps;
        c->default_cfg_scale = p->cfg;
        c->preset = p->name;
    }
    if (base)
        conv_from_base(dit_model_config(base), c);
    int rc = 0;
    if (o->heads)
        rc = cli_int("num-heads", o->heads, 1, c->hidden_size, &c->num_heads);
    else if (!p && !base)
        return cli_fail("%s: the shapes (depth %d, hidden %d, %d experts) match no published "
                        "preset, so the head count is unknown: pass --num-heads",
                        st_path(t), c->depth, c->hidden_size, c->num_experts);
    if (!rc && o->topk)
        rc = cli_int("top-k", o->topk, 1, c->num_experts, &c->num_experts_per_tok);
    if (!rc && o->dropout)
        rc = cli_double("class-dropout-prob", o->dropout, 0, 0.999, &c->class_dropout_prob);
    if (!rc && o->pred) {
        if (!strcmp(o->pred, "epsilon") || !strcmp(o->pred, "velocity"))
            c->prediction = o->pred[0] == 'v' ? DIT_PRED_VELOCITY : DIT_PRED_EPSILON;
        else
            return cli_fail("--prediction: '%s' is not epsilon or velocity", o->pred);
        if (!p) {
            c->default_sampler = c->prediction ? DIT_SAMPLER_EULER : DIT_SAMPLER_DDPM;
            c->default_steps = c->prediction ? 50 : 250;
        }
    } else if (!rc && !p && !base) {
        fprintf(stderr, "ditmoe: note: no preset matches; assuming prediction epsilon "
                "(DDPM, as upstream train.py; --prediction velocity for rectified flow)\n");
    }
    if (!rc && c->class_dropout_prob > 0)
        c->num_classes--; /* the table's last row is the null class */
    if (!rc && (c->num_classes < 1 || c->hidden_size % c->num_heads))
        return cli_fail("%s: %d classes and %d heads for hidden size %d do not fit",
                        st_path(t), c->num_classes, c->num_heads, c->hidden_size);
    return rc;
}

/* Reads up to n lines of a class-name file; returns how many, or -1. */
static int conv_read_names(const char *path, char **names, int n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[1024];
    int k = 0;
    while (k <= n && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (k < n && !(names[k] = strdup(line)))
            break;
        k++;
    }
    fclose(f);
    return k;
}

/* Class names into *out (NULL-terminated, or NULL for none): --class-names,
 * else the input directory's config.json's, else ImageNet's for 1000
 * classes when the data file is found. */
static int conv_names(const conv_opts *o, const dit_model *base, int n, char ***out)
{
    static const char *const found[] = { DITMOE_SOURCE_DIR "/config/imagenet_classes.txt",
                                         DITMOE_DATADIR "/imagenet_classes.txt" };
    char **names = calloc((size_t)n + 1, sizeof *names);
    int k = -1, rc = 0;
    *out = NULL;
    if (!names)
        return cli_fail("out of memory");
    if (o->names) {
        if ((k = conv_read_names(o->names, names, n)) != n)
            rc = cli_fail("--class-names %s: %s %d names for %d classes", o->names,
                          k < 0 ? "cannot read it, or it has no" : "has", k < 0 ? 0 : k, n);
    } else if (base && dit_model_class_name(base, 0)) {
        for (k = 0; k < n && dit_model_class_name(base, k); k++)
            if (!(names[k] = strdup(dit_model_class_name(base, k))))
                break;
    } else if (n == 1000) {
        for (int i = 0; i < 2 && k != n; i++)
            k = conv_read_names(found[i], names, n);
    }
    if (k == n) {
        *out = names;
        return 0;
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static void conv_free_names(char **names)
{
    for (int i = 0; names && names[i]; i++)
        free(names[i]);
    free(names);
}

static int conv_write_config(const char *path, const dit_config *c, char **names,
                             const char *vae)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return cli_fail("%s: cannot create: %s", path, strerror(errno));
    fprintf(f, "{\n  \"input_size\": %d,\n  \"patch_size\": %d,\n  \"in_channels\": %d,\n"
            "  \"hidden_size\": %d,\n  \"depth\": %d,\n  \"num_heads\": %d,\n"
            "  \"mlp_ratio\": %.17g,\n  \"num_classes\": %d,\n  \"num_experts\": %d,\n"
            "  \"num_experts_per_tok\": %d,\n  \"n_shared_experts\": %d,\n"
            "  \"learn_sigma\": %s,\n  \"class_dropout_prob\": %.17g,\n"
            "  \"prediction\": \"%s\",\n  \"sampling\": {\"sampler\": \"%s\", \"steps\": %d, "
            "\"cfg_scale\": %.17g}", c->input_size, c->patch_size, c->in_channels,
            c->hidden_size, c->depth, c->num_heads, c->mlp_ratio, c->num_classes,
            c->num_experts, c->num_experts_per_tok, c->n_shared_experts,
            c->learn_sigma ? "true" : "false", c->class_dropout_prob,
            c->prediction == DIT_PRED_VELOCITY ? "velocity" : "epsilon",
            dit_sampler_name(c->default_sampler), c->default_steps, c->default_cfg_scale);
    int bad = 0;
    if (c->latent_scale > 0)
        fprintf(f, ",\n  \"latent_scale\": %.17g", c->latent_scale);
    if (vae) {
        fputs(",\n  \"vae\": ", f);
        bad |= st_write_json_string(f, vae);
    }
    if (names) {
        fputs(",\n  \"class_names\": [", f);
        for (int i = 0; names[i] && !bad; i++) {
            fputs(i ? ",\n    " : "\n    ", f);
            bad |= st_write_json_string(f, names[i]);
        }
        fputs("\n  ]", f);
    }
    fputs("\n}\n", f);
    if (fclose(f) || bad)
        return cli_fail("%s: write failed%s", path, bad ? " (a name is not valid UTF-8)" : "");
    return 0;
}

/* Reads the written file back: same names, dtypes, shapes and bytes. */
static int conv_verify(const char *path, const st_table *src)
{
    char err[512] = "";
    st_table *t = NULL;
    int rc = st_open(&t, path, err, sizeof err);
    if (rc)
        return cli_fail("reading back %s: %s", path, err);
    int bad = st_count(t) != st_count(src);
    for (int i = 0; i < st_count(src) && !bad; i++) {
        const st_tensor *a = st_at(src, i), *b = st_find(t, a->name);
        bad = !b || a->dtype != b->dtype || a->ndim != b->ndim || a->nbytes != b->nbytes ||
              memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof a->shape[0]) ||
              memcmp(a->data, b->data, (size_t)a->nbytes);
        if (bad)
            cli_fail("reading back %s: tensor '%s' differs from the checkpoint's", path, a->name);
    }
    st_close(t);
    return bad ? CLI_EFAIL : 0;
}

static int conv_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Writes, verifies and loads DIR; removes what it wrote on failure. */
static int conv_write(const conv_opts *o, const st_table *t, const dit_config *c, char **names,
                      const char *vae)
{
    char cfg_path[4096], st_path_[4096], err[512] = "";
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", o->out);
    snprintf(st_path_, sizeof st_path_, "%s/model.safetensors", o->out);
    if (conv_exists(cfg_path) || conv_exists(st_path_))
        return cli_fail("%s: config.json or model.safetensors already exists there", o->out);
    if (mkdir(o->out, 0777) && errno != EEXIST)
        return cli_fail("%s: cannot create the directory: %s", o->out, strerror(errno));
    const char *meta[] = { "format", "pt", "converted_from", o->in, NULL };
    int rc = st_write(st_path_, t, meta, err, sizeof err);
    if (rc)
        return cli_fail("%s", err);
    rc = conv_verify(st_path_, t);
    if (!rc)
        rc = conv_write_config(cfg_path, c, names, vae);
    if (!rc) {
        dit_model *m = NULL;
        dit_model_settings set;
        dit_model_settings_default(&set);
        set.pack_weights = 0; /* only a check: no need to copy a G/2 once more */
        if (dit_model_load(&m, o->out, &set, err, sizeof err) != DIT_OK)
            rc = cli_fail("the converted model does not load: %s", err);
        dit_model_free(m);
    }
    if (rc) {
        remove(st_path_);
        remove(cfg_path);
    }
    return rc;
}

/* The VAE of a preset (latent) model: --vae, else a "vae" or
 * "sd-vae-ft-mse" folder beside the checkpoint, as the engine looks for one
 * beside a bare .pt (written as an absolute path, since the converted model
 * lives elsewhere). NULL, after a note, when there is none. */
static const char *conv_vae(const conv_opts *o, const dit_model *base, const dit_config *c,
                            char *buf, size_t len)
{
    const char *slash = strrchr(o->in, '/');
    char path[4096];
    if (!o->vae && base && dit_model_config(base)->vae_dir) {
        /* the input directory's own VAE, as a path that works from anywhere */
        const char *v = dit_model_config(base)->vae_dir;
        snprintf(path, sizeof path, "%.*s%s", v[0] != '/' && slash ? (int)(slash - o->in + 1) : 0,
                 o->in, v);
        return realpath(path, buf) && strlen(buf) < len ? buf : v;
    }
    if (o->vae || !c->preset)
        return o->vae;
    static const char *const guess[] = { "vae", "sd-vae-ft-mse" };
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%.*s%s", slash ? (int)(slash - o->in + 1) : 0, o->in,
                 guess[i]);
        if (realpath(path, buf) && strlen(buf) < len && conv_exists(buf)) {
            fprintf(stderr, "ditmoe: note: latents decoded by %s\n", buf);
            return buf;
        }
    }
    fprintf(stderr, "ditmoe: note: no VAE beside %s: add \"vae\" to %s/config.json (or "
            "convert with --vae PATH) to decode pictures; latents (--out-npy) work as is\n",
            o->in, o->out);
    return NULL;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The model the input already belongs to: when a config.json sits beside
 * it, the input loads as that model directory would (weights not packed),
 * and its choices (heads, top-k, prediction, sampling, class names, VAE)
 * carry over unless options say otherwise. *base is NULL without one. */
static int conv_base(const conv_opts *o, dit_model **base)
{
    const char *slash = strrchr(o->in, '/');
    char cfg[4096], err[512] = "";
    *base = NULL;
    snprintf(cfg, sizeof cfg, "%.*sconfig.json", slash ? (int)(slash - o->in + 1) : 0, o->in);
    if (!conv_exists(cfg))
        return 0;
    dit_model_settings set;
    dit_model_settings_default(&set);
    set.pack_weights = 0;
    if (dit_model_load(base, o->in, &set, err, sizeof err))
        return cli_fail("%s is beside the input but does not describe it: %s", cfg, err);
    fprintf(stderr, "ditmoe: note: choices from %s (options override them)\n", cfg);
    return 0;
}

/* *cast = t with every float tensor in --dtype's type. */
static int conv_cast(const conv_opts *o, const st_table *t, st_table **cast)
{
    static const char *const names[] = { "f32", "f16", "bf16" };
    static const int dtypes[] = { ST_F32, ST_F16, ST_BF16 };
    char err[512] = "";
    for (int i = 0; i < 3; i++)
        if (!strcmp(o->dtype, names[i])) {
            int rc = st_cast(t, dtypes[i], cast, err, sizeof err);
            return rc ? cli_fail("--dtype %s: %s", o->dtype, err) : 0;
        }
    cli_fail("--dtype: '%s' is not one of f32, f16, bf16", o->dtype);
    return CLI_EUSAGE;
}

int cmd_convert(int argc, char **argv)
{
    conv_opts o = { 0 };
    const cli_opt opts[] = {
        { "in", &o.in, NULL }, { "out", &o.out, NULL }, { "num-heads", &o.heads, NULL },
        { "prediction", &o.pred, NULL }, { "top-k", &o.topk, NULL },
        { "class-dropout-prob", &o.dropout, NULL }, { "class-names", &o.names, NULL },
        { "vae", &o.vae, NULL }, { "dtype", &o.dtype, NULL },
    };
    int rc = cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), convert_usage);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (!o.in || !o.out) {
        fprintf(stderr, "ditmoe: convert needs --in and --out\n%s", convert_usage);
        return CLI_EUSAGE;
    }
    char err[512] = "";
    st_table *t = NULL, *src = NULL;
    rc = has_suffix(o.in, ".safetensors") ? st_open(&t, o.in, err, sizeof err)
                                          : pt_open(&t, o.in, err, sizeof err);
    if (rc)
        return cli_fail("%s", err[0] ? err : dit_strerror(rc));
    if (o.dtype) {
        st_table *cast = NULL;
        if ((rc = conv_cast(&o, t, &cast))) {
            st_close(t);
            return rc;
        }
        src = t; /* the converted tensors that did not change point into it */
        t = cast;
    }
    dit_config c;
    memset(&c, 0, sizeof c);
    char **names = NULL, vae_buf[4096];
    dit_model *base = NULL;
    rc = conv_base(&o, &base);
    if (!rc)
        rc = conv_shapes(t, &c);
    if (!rc)
        rc = conv_choices(&o, t, base, &c);
    if (!rc)
        rc = conv_names(&o, base, c.num_classes, &names);
    if (!rc)
        rc = conv_write(&o, t, &c, names, conv_vae(&o, base, &c, vae_buf, sizeof vae_buf));
    if (!rc)
        printf("%s -> %s: %d tensors, %s%s, %d classes%s\n", o.in, o.out, st_count(t),
               c.preset ? "preset " : "custom shapes", c.preset ? c.preset : "", c.num_classes,
               names ? " (named)" : "");
    conv_free_names(names);
    dit_model_free(base);
    st_close(t);
    st_close(src);
    return rc;
}
