/* convert.c: writing model directories: dit_convert (a PyTorch checkpoint
 * into a model directory) and dit_model_save (a loaded or synthetic model).
 *
 * Reads a .pt (or .safetensors) weight file with the formats layer's
 * readers, infers the DiT-MoE config from the tensor shapes, and writes
 * DIR/config.json and DIR/model.safetensors (tensors as stored, or every
 * floating-point one converted to one dtype through the kernels' dtype
 * table, rounding as torch does; or, for Q8, the experts' matrices
 * quantised to I8 values plus F16 NAME_scale tensors, the rest as stored). Shapes fix everything but the attention
 * head count, top-k, the class-dropout convention and the training
 * objective: those come from the published preset the shapes match, else
 * from the parameters (num_heads is then required; prediction defaults to
 * epsilon, top-k to 2, class_dropout_prob to 0.1, as upstream). Models
 * with 1000 classes get the ImageNet class names embedded when
 * imagenet_classes.txt is found. When a config.json sits beside the input
 * (a model directory), its choices, class names and VAE carry over
 * instead, so a dtype conversion converts a model directory whole.
 * The result is read back and compared tensor by tensor, then loaded as a
 * model; on any failure the written files are removed. Notes (assumptions
 * made) go to the caller's callback; nothing is printed.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "preset.h"
#include "st_write.h"

#ifndef DITMOE_DATADIRS
#define DITMOE_DATADIRS "config"
#endif

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* One conversion: the caller's parameters and where messages go. */
typedef struct conv {
    const dit_convert_params *p;
    dit_note_fn note;
    void *user;
    char *err;
    size_t errlen;
} conv;

/* Writes the message into v->err and returns DIT_E_... code. */
static int cfail(const conv *v, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (v->err && v->errlen)
        vsnprintf(v->err, v->errlen, fmt, ap);
    va_end(ap);
    return code;
}

static void cnote(const conv *v, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (v->note)
        v->note(v->user, msg);
}

/* The tensor `name` with ndim dimensions, or NULL after printing why. */
static const st_tensor *conv_need(const conv *v, const st_table *t, const char *name, int ndim)
{
    const st_tensor *x = st_find(t, name);
    if (!x)
        cfail(v, DIT_E_FORMAT, "%s: no tensor '%s': not a DiT-MoE state_dict", st_path(t), name);
    else if (x->ndim != ndim)
        cfail(v, DIT_E_FORMAT, "%s: tensor '%s' has %d dimensions, not %d", st_path(t), name, x->ndim, ndim);
    else if (x->shape[0] < 1 || x->shape[0] > 1 << 24 || (ndim > 1 && x->shape[1] > 1 << 24))
        cfail(v, DIT_E_FORMAT, "%s: tensor '%s' has an implausible shape", st_path(t), name);
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
static int conv_shapes(const conv *v, const st_table *t, dit_config *c)
{
    const st_tensor *xe = conv_need(v, t, "x_embedder.proj.weight", 4);
    const st_tensor *pos = xe ? conv_need(v, t, "pos_embed", 3) : NULL;
    const st_tensor *yt = pos ? conv_need(v, t, "y_embedder.embedding_table.weight", 2) : NULL;
    const st_tensor *gate = yt ? conv_need(v, t, "blocks.0.moe.gate.weight", 2) : NULL;
    const st_tensor *ex = gate ? conv_need(v, t, "blocks.0.moe.experts.0.gate_proj.weight", 2) : NULL;
    const st_tensor *fl = ex ? conv_need(v, t, "final_layer.linear.weight", 2) : NULL;
    if (!fl)
        return DIT_E_FORMAT;
    const st_tensor *sh = st_find(t, "blocks.0.moe.shared_experts.gate_proj.weight");
    int D = (int)xe->shape[0], P = (int)xe->shape[2], T = (int)pos->shape[1];
    int grid = 1;
    while (grid * grid < T)
        grid++;
    if (xe->shape[3] != P || grid * grid != T || pos->shape[2] != D)
        return cfail(v, DIT_E_FORMAT, "%s: x_embedder.proj.weight %dx%d patches and pos_embed of %d tokens "
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
        return cfail(v, DIT_E_FORMAT, "%s: shared experts of width %lld are not a multiple of hidden size %d",
                        st_path(t), (long long)sh->shape[0], D);
    int cout = (int)(fl->shape[0] / ((int64_t)P * P));
    c->learn_sigma = cout == 2 * c->in_channels;
    if (fl->shape[0] % ((int64_t)P * P) || (cout != c->in_channels && !c->learn_sigma))
        return cfail(v, DIT_E_FORMAT, "%s: final_layer.linear.weight has %lld rows, not %d x %d x C or "
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
    c->default_spacing = b->default_spacing;
    c->default_cfg_interval[0] = b->default_cfg_interval[0];
    c->default_cfg_interval[1] = b->default_cfg_interval[1];
    c->default_cache = b->default_cache;
    if (b->vae_dir) /* a pixel model's config has no use for one */
        c->latent_scale = b->latent_scale;
}

/* Fills what the shapes do not say: preset, then the input directory's
 * config.json (base, may be NULL), then options. */
static int conv_choices(const conv *v, const st_table *t, const dit_model *base,
                        dit_config *c)
{
    const model_preset *p = preset_match(c->depth, c->hidden_size, c->num_experts);
    c->num_experts_per_tok = 2;
    c->class_dropout_prob = 0.1;
    c->prediction = DIT_PRED_EPSILON;
    config_default_sampling(c, DIT_SAMPLER_DDPM, 250, 4.0);
    c->latent_scale = c->in_channels == 4 ? 0.18215 : 0;
    if (p) {
        c->num_heads = p->heads;
        c->prediction = p->prediction;
        config_default_sampling(c, p->sampler, p->steps, p->cfg);
        c->preset = p->name;
    }
    if (base)
        conv_from_base(dit_model_config(base), c);
    const dit_convert_params *o = v->p;
    if (o->num_heads) {
        if (o->num_heads < 1 || o->num_heads > c->hidden_size)
            return cfail(v, DIT_E_INVAL, "num_heads (--num-heads): %d is out of range 1..%d",
                         o->num_heads, c->hidden_size);
        c->num_heads = o->num_heads;
    } else if (!p && !base) {
        return cfail(v, DIT_E_INVAL, "%s: the shapes (depth %d, hidden %d, %d experts) match "
                     "no published preset, so the head count is unknown: pass --num-heads",
                     st_path(t), c->depth, c->hidden_size, c->num_experts);
    }
    if (o->top_k) {
        if (o->top_k < 1 || o->top_k > c->num_experts)
            return cfail(v, DIT_E_INVAL, "top_k (--top-k): %d is out of range 1..%d", o->top_k,
                         c->num_experts);
        c->num_experts_per_tok = o->top_k;
    }
    if (o->class_dropout_prob >= 0)
        c->class_dropout_prob = o->class_dropout_prob;
    if (o->prediction >= 0) {
        c->prediction = o->prediction;
        if (!p) /* a base config's spacing and interval were for its prediction */
            config_default_sampling(c, c->prediction ? DIT_SAMPLER_EULER : DIT_SAMPLER_DDPM,
                                    c->prediction ? 50 : 250, c->default_cfg_scale);
    } else if (!p && !base) {
        cnote(v, "no preset matches; assuming prediction epsilon (DDPM, as upstream "
              "train.py; --prediction velocity for rectified flow)");
    }
    if (c->class_dropout_prob > 0)
        c->num_classes--; /* the table's last row is the null class */
    if (c->num_classes < 1 || c->hidden_size % c->num_heads)
        return cfail(v, DIT_E_INVAL, "%s: %d classes and %d heads for hidden size %d do not fit",
                     st_path(t), c->num_classes, c->num_heads, c->hidden_size);
    return DIT_OK;
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
static int conv_names(const conv *v, const dit_model *base, int n, char ***out)
{
    char **names = calloc((size_t)n + 1, sizeof *names);
    int k = -1, rc = 0;
    *out = NULL;
    if (!names)
        return cfail(v, DIT_E_NOMEM, "out of memory");
    if (v->p->class_names) {
        if ((k = conv_read_names(v->p->class_names, names, n)) != n)
            rc = cfail(v, DIT_E_INVAL, "class_names (--class-names) %s: %s %d names for %d "
                       "classes", v->p->class_names,
                       k < 0 ? "cannot read it, or it has no" : "has", k < 0 ? 0 : k, n);
    } else if (base && dit_model_class_name(base, 0)) {
        for (k = 0; k < n && dit_model_class_name(base, k); k++)
            if (!(names[k] = strdup(dit_model_class_name(base, k))))
                break;
    } else if (n == 1000) {
        char path[4096];
        for (const char *d = DITMOE_DATADIRS; *d && k != n;) { /* ':'-separated, by meson */
            size_t len = strcspn(d, ":");
            snprintf(path, sizeof path, "%.*s/imagenet_classes.txt", (int)len, d);
            k = conv_read_names(path, names, n);
            d += len + (d[len] == ':');
        }
    }
    if (k == n) {
        *out = names;
        return DIT_OK;
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

/* The "sampling" member: sampler, steps and scale always, the spacing,
 * guidance interval and cache where they differ from what their absence
 * means, spelt as config.c (and a request) reads them. */
static void write_sampling(FILE *f, const dit_config *c)
{
    const dit_cache_params *k = &c->default_cache;
    fprintf(f, ",\n  \"sampling\": {\"sampler\": \"%s\", \"steps\": %d, \"cfg_scale\": %.17g",
            dit_sampler_name(c->default_sampler), c->default_steps, c->default_cfg_scale);
    if (c->default_spacing != DIT_SPACING_DEFAULT)
        fprintf(f, ", \"spacing\": \"%s\"", dit_spacing_name(c->default_spacing));
    if (c->default_cfg_interval[0] != 0.0 || c->default_cfg_interval[1] != 1.0)
        fprintf(f, ", \"cfg_interval\": [%.17g, %.17g]", c->default_cfg_interval[0],
                c->default_cfg_interval[1]);
    if (k->mode == DIT_CACHE_FIXED)
        fprintf(f, ", \"cache\": {\"mode\": \"fixed\", \"interval\": %d}", k->interval);
    else if (k->mode == DIT_CACHE_ADAPTIVE)
        fprintf(f, ", \"cache\": {\"mode\": \"adaptive\", \"threshold\": %.17g}", k->threshold);
    fputc('}', f);
}

/* Writes cfg as config.json at path, with class names (cfg->num_classes
 * of them, or NULL) and the VAE directory (or NULL). DIT_E_IO when the file
 * cannot be written, DIT_E_INVAL when a string is not valid UTF-8. */
static int config_write(const char *path, const dit_config *c, const char *const *names,
                 const char *vae)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return DIT_E_IO;
    fprintf(f, "{\n  \"input_size\": %d,\n  \"patch_size\": %d,\n  \"in_channels\": %d,\n"
            "  \"hidden_size\": %d,\n  \"depth\": %d,\n  \"num_heads\": %d,\n"
            "  \"mlp_ratio\": %.17g,\n  \"num_classes\": %d,\n  \"num_experts\": %d,\n"
            "  \"num_experts_per_tok\": %d,\n  \"n_shared_experts\": %d,\n"
            "  \"learn_sigma\": %s,\n  \"class_dropout_prob\": %.17g,\n"
            "  \"prediction\": \"%s\"", c->input_size, c->patch_size, c->in_channels,
            c->hidden_size, c->depth, c->num_heads, c->mlp_ratio, c->num_classes,
            c->num_experts, c->num_experts_per_tok, c->n_shared_experts,
            c->learn_sigma ? "true" : "false", c->class_dropout_prob,
            c->prediction == DIT_PRED_VELOCITY ? "velocity" : "epsilon");
    write_sampling(f, c);
    int bad = 0;
    if (c->latent_scale > 0)
        fprintf(f, ",\n  \"latent_scale\": %.17g", c->latent_scale);
    if (vae) {
        fputs(",\n  \"vae\": ", f);
        bad |= st_write_json_string(f, vae);
    }
    if (names) {
        fputs(",\n  \"class_names\": [", f);
        for (int i = 0; i < c->num_classes && !bad; i++) {
            fputs(i ? ",\n    " : "\n    ", f);
            bad |= st_write_json_string(f, names[i]);
        }
        fputs("\n  ]", f);
    }
    fputs("\n}\n", f);
    if (fclose(f))
        return DIT_E_IO;
    return bad ? DIT_E_INVAL : DIT_OK;
}

/* Reads the written file back: same names, dtypes, shapes and bytes. */
static int conv_verify(const conv *v, const char *path, const st_table *src)
{
    char err[512] = "";
    st_table *t = NULL;
    int rc = st_open(&t, path, err, sizeof err);
    if (rc)
        return cfail(v, rc, "reading back %s: %s", path, err);
    int bad = st_count(t) != st_count(src);
    for (int i = 0; i < st_count(src) && !bad; i++) {
        const st_tensor *a = st_at(src, i), *b = st_find(t, a->name);
        bad = !b || a->dtype != b->dtype || a->ndim != b->ndim || a->nbytes != b->nbytes ||
              memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof a->shape[0]) ||
              memcmp(a->data, b->data, (size_t)a->nbytes);
        if (bad)
            cfail(v, DIT_E_IO, "reading back %s: tensor '%s' differs from the checkpoint's",
                  path, a->name);
    }
    st_close(t);
    return bad ? DIT_E_IO : DIT_OK;
}

static int conv_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Writes, verifies and loads DIR; removes what it wrote on failure. */
static int conv_write(const conv *v, const st_table *t, const dit_config *c, char **names,
                      const char *vae)
{
    const dit_convert_params *o = v->p;
    char cfg_path[4096], st_path_[4096], err[512] = "";
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", o->out);
    snprintf(st_path_, sizeof st_path_, "%s/model.safetensors", o->out);
    if (conv_exists(cfg_path) || conv_exists(st_path_))
        return cfail(v, DIT_E_INVAL, "%s: config.json or model.safetensors already exists "
                     "there", o->out);
    if (mkdir(o->out, 0777) && errno != EEXIST)
        return cfail(v, DIT_E_IO, "%s: cannot create the directory: %s", o->out,
                     strerror(errno));
    const char *meta[] = { "format", "pt", "converted_from", o->in, NULL };
    int rc = st_write(st_path_, t, meta, err, sizeof err);
    if (rc)
        return cfail(v, rc, "%s", err);
    rc = conv_verify(v, st_path_, t);
    if (!rc)
        if ((rc = config_write(cfg_path, c, (const char *const *)names, vae)))
            cfail(v, rc, "%s: write failed%s", cfg_path,
                  rc == DIT_E_INVAL ? " (a name is not valid UTF-8)" : "");
    if (!rc) {
        dit_model *m = NULL;
        dit_model_settings set;
        dit_model_settings_default(&set);
        set.pack_weights = 0; /* only a check: no need to copy a G/2 once more */
        if ((rc = dit_model_load(&m, o->out, &set, err, sizeof err)) != DIT_OK)
            cfail(v, rc, "the converted model does not load: %s", err);
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
static const char *conv_vae(const conv *v, const dit_model *base, const dit_config *c,
                            char *buf, size_t len)
{
    const dit_convert_params *o = v->p;
    const char *slash = strrchr(o->in, '/');
    char path[4096];
    if (!o->vae && base && dit_model_config(base)->vae_dir) {
        /* the input directory's own VAE, as a path that works from anywhere */
        const char *dir = dit_model_config(base)->vae_dir;
        snprintf(path, sizeof path, "%.*s%s",
                 dir[0] != '/' && slash ? (int)(slash - o->in + 1) : 0, o->in, dir);
        return realpath(path, buf) && strlen(buf) < len ? buf : dir;
    }
    if (o->vae || !c->preset)
        return o->vae;
    static const char *const guess[] = { "vae", "sd-vae-ft-mse" };
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%.*s%s", slash ? (int)(slash - o->in + 1) : 0, o->in,
                 guess[i]);
        if (realpath(path, buf) && strlen(buf) < len && conv_exists(buf)) {
            cnote(v, "latents decoded by %s", buf);
            return buf;
        }
    }
    cnote(v, "no VAE beside %s: add \"vae\" to %s/config.json (or convert with --vae "
          "PATH) to decode pictures; latents (--out-npy) work as is", o->in, o->out);
    return NULL;
}


/* The model the input already belongs to: when a config.json sits beside
 * it, the input loads as that model directory would (weights not packed),
 * and its choices (heads, top-k, prediction, sampling, class names, VAE)
 * carry over unless options say otherwise. *base is NULL without one. */
static int conv_base(const conv *v, dit_model **base)
{
    const dit_convert_params *o = v->p;
    const char *slash = strrchr(o->in, '/');
    char cfg[4096], err[512] = "";
    *base = NULL;
    snprintf(cfg, sizeof cfg, "%.*sconfig.json", slash ? (int)(slash - o->in + 1) : 0, o->in);
    if (!conv_exists(cfg))
        return DIT_OK;
    dit_model_settings set;
    dit_model_settings_default(&set);
    set.pack_weights = 0;
    int rc = dit_model_load(base, o->in, &set, err, sizeof err);
    if (rc)
        return cfail(v, rc, "%s is beside the input but does not describe it: %s", cfg, err);
    cnote(v, "choices from %s (options override them)", cfg);
    return DIT_OK;
}

/* ---- dtype conversion ---------------------------------------------------- */

/* Converts tensor x into dst (numel elements of dtype) through F32. */
static int cast_one(const conv *v, const st_tensor *x, int dtype, void *dst, const char *path)
{
    const dtype_traits *from = dtype_get(x->dtype), *to = dtype_get(dtype);
    float buf[1024];
    uint64_t n = st_numel(x);
    for (uint64_t i = 0; i < n; i += 1024) {
        size_t k = n - i < 1024 ? (size_t)(n - i) : 1024;
        from->to_f32(buf, (const char *)x->data + dtype_bytes(x->dtype, (size_t)i), k);
        int64_t bad = to->from_f32((char *)dst + dtype_bytes(dtype, (size_t)i), buf, k);
        if (bad >= 0)
            return cfail(v, DIT_E_INVAL, "%s: tensor '%s': value %g at element %" PRIu64
                         " does not fit %s (%s)", path, x->name, (double)buf[bad],
                         i + (uint64_t)bad, to->name, dtype == ST_Q8
                         ? "not finite, or a block scale beyond F16's 65504"
                         : "largest 65504; BF16 keeps F32's range");
    }
    return DIT_OK;
}

/* Quantises the matrix x (rows, cols) into its file form: q (numel int8)
 * and d (numel / 32 F16 scales), a block at a time. */
static int quant_one(const conv *v, const st_tensor *x, int8_t *q, uint16_t *d, const char *path)
{
    q8_block b[32];
    uint64_t n = st_numel(x);
    for (uint64_t i = 0; i < n; i += 32 * Q8_BLOCK) {
        size_t k = n - i < 32 * Q8_BLOCK ? (size_t)(n - i) : 32 * Q8_BLOCK;
        int rc = cast_one(v, &(st_tensor){ .name = x->name, .dtype = x->dtype, .ndim = 1,
                                           .shape = { (int64_t)k },
                                           .data = (const char *)x->data + dtype_bytes(x->dtype, (size_t)i) },
                          ST_Q8, b, path);
        if (rc)
            return rc;
        q8_split(q + i, d + i / Q8_BLOCK, b, k);
    }
    return DIT_OK;
}

static void cast_release(void *p, size_t n)
{
    (void)n;
    free(p);
}

/* What conv_cast does with tensor x of t for target dtype: 0 keep it,
 * 1 convert it, 2 quantise it (Q8: values and scales). I8 tensors and
 * their scales (a model already 8-bit) are kept. */
static int cast_kind(const st_table *t, const st_tensor *x, int dtype)
{
    char name[200];
    if (has_suffix(x->name, "_scale")) {
        snprintf(name, sizeof name, "%.*s", (int)(strlen(x->name) - 6), x->name);
        const st_tensor *w = st_find(t, name);
        if (w && w->dtype == ST_I8)
            return 0;
    }
    if (!dtype_get(x->dtype) || x->dtype == dtype)
        return 0;
    if (dtype == ST_Q8)
        return model_q8_tensor(x->name, x->ndim, x->shape) ? 2 : 0;
    return 1;
}

/* Bytes conv_cast needs for x, 64-byte aligned pieces. */
static size_t cast_bytes(const st_tensor *x, int kind, int dtype)
{
    size_t n = (size_t)st_numel(x);
    if (kind == 2)
        return ((n + 63) & ~(size_t)63) + ((n / Q8_BLOCK * 2 + 63) & ~(size_t)63);
    return kind ? (dtype_bytes(dtype, n) + 63) & ~(size_t)63 : 0;
}

/* Adds x to c converted as cast_kind says, its data at buf. */
static int cast_add(const conv *v, st_table *c, const st_tensor *x, int kind, int dtype,
                    char *buf, const char *path)
{
    size_t n = (size_t)st_numel(x);
    if (kind == 0)
        return st_table_add(c, x->name, x->dtype, x->ndim, x->shape, x->data) ? DIT_E_NOMEM : 0;
    if (kind == 1) {
        int rc = cast_one(v, x, dtype, buf, path);
        return rc ? rc : st_table_add(c, x->name, dtype, x->ndim, x->shape, buf) ? DIT_E_NOMEM : 0;
    }
    uint16_t *d = (uint16_t *)(buf + ((n + 63) & ~(size_t)63));
    char sname[200];
    int64_t sshape[2] = { x->shape[0], x->shape[1] / Q8_BLOCK };
    int rc = quant_one(v, x, (int8_t *)buf, d, path);
    if (rc)
        return rc;
    snprintf(sname, sizeof sname, "%s_scale", x->name);
    return st_table_add(c, x->name, ST_I8, 2, x->shape, buf) ||
           st_table_add(c, sname, ST_F16, 2, sshape, d) ? DIT_E_NOMEM : 0;
}

/* *out = t with every floating-point tensor in dtype, or for Q8 the expert
 * matrices as I8 values plus F16 NAME_scale tensors (the others, and those
 * already in dtype, point into t, which must outlive *out). */
static int conv_cast(const conv *v, const st_table *t, int dtype, st_table **out)
{
    size_t total = 0;
    *out = NULL;
    for (int i = 0; i < st_count(t); i++)
        total += cast_bytes(st_at(t, i), cast_kind(t, st_at(t, i), dtype), dtype);
    char *buf = malloc(total ? total : 1);
    st_table *c = buf ? st_table_new(st_path(t), buf, total, cast_release) : NULL;
    if (!c) {
        free(buf);
        return cfail(v, DIT_E_NOMEM, "%s: out of memory converting to %s", st_path(t),
                     st_dtype_name(dtype));
    }
    int rc = DIT_OK, quantised = 0;
    size_t pos = 0;
    for (int i = 0; i < st_count(t) && rc == DIT_OK; i++) {
        const st_tensor *x = st_at(t, i);
        int kind = cast_kind(t, x, dtype);
        rc = cast_add(v, c, x, kind, dtype, buf + pos, st_path(t));
        if (rc == DIT_E_NOMEM)
            rc = cfail(v, DIT_E_NOMEM, "%s: out of memory", st_path(t));
        pos += cast_bytes(x, kind, dtype);
        quantised += kind == 2;
    }
    if (rc == DIT_OK && dtype == ST_Q8)
        cnote(v, "%d expert matrices 8-bit (Q8: I8 values + F16 NAME_scale per 32 "
              "columns); the other tensors keep their dtype", quantised);
    if (rc != DIT_OK) {
        st_close(c);
        return rc;
    }
    *out = c;
    return DIT_OK;
}

/* The dtype named by params (NULL: as stored, -1). */
static int conv_dtype(const conv *v, int *dtype)
{
    *dtype = -1;
    if (!v->p->dtype)
        return DIT_OK;
    if ((*dtype = dtype_parse(v->p->dtype)) >= 0)
        return DIT_OK;
    return cfail(v, DIT_E_INVAL, "dtype (--dtype): '%s' is not one of f32, f16, bf16, q8",
                 v->p->dtype);
}

int dit_convert_check(const dit_convert_params *p, char *err, size_t errlen)
{
    conv v = { p, NULL, NULL, err, errlen };
    int dtype;
    if (!p->in || !p->out)
        return cfail(&v, DIT_E_INVAL, "convert needs an input checkpoint (--in) and an output "
                     "directory (--out)");
    if (p->prediction >= 0 && p->prediction != DIT_PRED_EPSILON &&
        p->prediction != DIT_PRED_VELOCITY)
        return cfail(&v, DIT_E_INVAL, "prediction (--prediction): %d is not epsilon or "
                     "velocity", p->prediction);
    if (p->class_dropout_prob > 0.999)
        return cfail(&v, DIT_E_INVAL, "class_dropout_prob (--class-dropout-prob): %g is out "
                     "of range 0..0.999", p->class_dropout_prob);
    return conv_dtype(&v, &dtype);
}

void dit_convert_params_default(dit_convert_params *p)
{
    memset(p, 0, sizeof *p);
    p->prediction = -1;
    p->class_dropout_prob = -1;
}

/* Opens the input and converts its dtype: *t the table to write, *src the
 * original it may point into (NULL when no conversion). */
static int conv_open(const conv *v, st_table **t, st_table **src)
{
    char err[512] = "";
    int dtype, rc = conv_dtype(v, &dtype);
    const char *in = v->p->in;
    *t = *src = NULL;
    if (rc)
        return rc;
    rc = has_suffix(in, ".safetensors") ? st_open(t, in, err, sizeof err)
                                        : pt_open(t, in, err, sizeof err);
    if (rc)
        return cfail(v, rc, "%s", err[0] ? err : dit_strerror(rc));
    if (dtype < 0)
        return DIT_OK;
    *src = *t; /* the converted tensors that did not change point into it */
    return conv_cast(v, *src, dtype, t);
}

int dit_convert(const dit_convert_params *p, dit_note_fn note, void *user,
                dit_convert_result *res, char *err, size_t errlen)
{
    conv v = { p, note, user, err, errlen };
    if (res)
        memset(res, 0, sizeof *res);
    int rc = dit_convert_check(p, err, errlen);
    if (rc)
        return rc;
    st_table *t = NULL, *src = NULL;
    rc = conv_open(&v, &t, &src);
    dit_config c;
    memset(&c, 0, sizeof c);
    char **names = NULL, vae_buf[4096];
    dit_model *base = NULL;
    if (!rc)
        rc = conv_base(&v, &base);
    if (!rc)
        rc = conv_shapes(&v, t, &c);
    if (!rc)
        rc = conv_choices(&v, t, base, &c);
    if (!rc)
        rc = conv_names(&v, base, c.num_classes, &names);
    if (!rc)
        rc = conv_write(&v, t, &c, names, conv_vae(&v, base, &c, vae_buf, sizeof vae_buf));
    if (!rc && res) {
        res->tensors = st_count(t);
        res->num_classes = c.num_classes;
        res->named = names != NULL;
        res->preset = c.preset; /* static preset names */
    }
    conv_free_names(names);
    dit_model_free(base);
    st_close(t);
    st_close(src);
    return rc;
}

int dit_model_save(const dit_model *m, const char *dir, char *err, size_t errlen)
{
    char cfg_path[4096], st_path_[4096];
    conv v = { NULL, NULL, NULL, err, errlen };
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    snprintf(st_path_, sizeof st_path_, "%s/model.safetensors", dir);
    if (mkdir(dir, 0777) && errno != EEXIST)
        return cfail(&v, DIT_E_IO, "%s: cannot create the directory: %s", dir, strerror(errno));
    const char *meta[] = { "format", "pt", NULL };
    int rc = st_write(st_path_, m->weights, meta, err, errlen);
    if (rc == DIT_OK &&
        (rc = config_write(cfg_path, &m->cfg, (const char *const *)m->class_names,
                           m->cfg.vae_dir)))
        cfail(&v, rc, "%s: write failed", cfg_path);
    return rc;
}
