/* config.c: a model's config.json and the presets of the published models.
 *
 * config.json uses the upstream DiT constructor's names (input_size,
 * patch_size, ...) plus ditmoe's own keys: "prediction" (epsilon for
 * DDPM-trained models, velocity for rectified flow), "class_names",
 * "sampling" (the model's default request: sampler, steps, guidance, and
 * the spacing, guidance interval and step cache, spelt as a request spells
 * them), "vae" and "latent_scale" for latent models. Unknown keys are
 * refused by name, so a typo never silently becomes a default. Presets describe the published
 * checkpoints, which come without a config: they are matched on tensor
 * shapes by model.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ditmoe/dit_json.h>
#include "model.h"
#include "preset.h"

#define ERR(...) (snprintf(err, errlen, __VA_ARGS__), DIT_E_FORMAT)

static const model_preset presets[] = {
    /* name      depth hidden heads E  pred               sampler            steps cfg */
    { "s2-8e2a",   12,  384,   6,  8, DIT_PRED_EPSILON,  DIT_SAMPLER_DDPM,  250, 4.0 },
    { "s2-16e2a",  12,  384,   6, 16, DIT_PRED_EPSILON,  DIT_SAMPLER_DDPM,  250, 4.0 },
    { "b2-8e2a",   12,  768,  12,  8, DIT_PRED_EPSILON,  DIT_SAMPLER_DDPM,  250, 4.0 },
    { "xl2-8e2a",  28, 1152,  16,  8, DIT_PRED_VELOCITY, DIT_SAMPLER_EULER,  50, 7.0 },
    { "g2-16e2a",  40, 1408,  16, 16, DIT_PRED_VELOCITY, DIT_SAMPLER_EULER,  50, 7.0 },
};
static const char *const preset_names[] = {
    "s2-8e2a", "s2-16e2a", "b2-8e2a", "xl2-8e2a", "g2-16e2a", NULL
};

const char *const *dit_preset_names(void)
{
    return preset_names;
}

const model_preset *preset_find(const char *name)
{
    static const struct { const char *alias, *name; } aliases[] = {
        { "s2", "s2-8e2a" }, { "b2", "b2-8e2a" }, { "xl2", "xl2-8e2a" }, { "g2", "g2-16e2a" },
    };
    if (!name)
        return NULL;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcmp(name, aliases[i].alias))
            name = aliases[i].name;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(name, presets[i].name))
            return &presets[i];
    return NULL;
}

const model_preset *preset_match(int depth, int hidden, int experts)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (presets[i].depth == depth && presets[i].hidden == hidden &&
            presets[i].experts == experts)
            return &presets[i];
    return NULL;
}

void config_default_sampling(dit_config *c, int sampler, int steps, double cfg_scale)
{
    c->default_sampler = sampler;
    c->default_steps = steps;
    c->default_cfg_scale = cfg_scale;
    c->default_spacing = DIT_SPACING_DEFAULT;
    c->default_cfg_interval[0] = 0.0;
    c->default_cfg_interval[1] = 1.0;
    c->default_cache = (dit_cache_params){ DIT_CACHE_OFF, 2, 0.1 };
}

void preset_config(const model_preset *p, dit_config *c)
{
    memset(c, 0, sizeof *c);
    c->input_size = 32;   /* 256x256 images, SD-VAE latents */
    c->patch_size = 2;
    c->in_channels = 4;
    c->hidden_size = p->hidden;
    c->depth = p->depth;
    c->num_heads = p->heads;
    c->mlp_ratio = 4;
    c->num_classes = 1000;
    c->num_experts = p->experts;
    c->num_experts_per_tok = 2;
    c->n_shared_experts = 2;
    c->learn_sigma = 1;
    c->class_dropout_prob = 0.1;
    c->prediction = p->prediction;
    config_default_sampling(c, p->sampler, p->steps, p->cfg);
    c->latent_scale = 0.18215;
    c->preset = p->name;
}

int config_finish(dit_config *c, const char *path, char *err, size_t errlen)
{
    struct { const char *name; int v, lo, hi; } r[] = {
        { "input_size", c->input_size, 1, 4096 },
        { "patch_size", c->patch_size, 1, 64 },
        { "in_channels", c->in_channels, 1, 64 },
        { "hidden_size", c->hidden_size, 2, 65536 },
        { "depth", c->depth, 1, 1024 },
        { "num_heads", c->num_heads, 1, 1024 },
        { "num_classes", c->num_classes, 1, 1000000 },
        { "num_experts", c->num_experts, 1, 4096 },
        { "num_experts_per_tok", c->num_experts_per_tok, 1, c->num_experts },
        { "n_shared_experts", c->n_shared_experts, 0, 64 },
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
        if (r[i].v < r[i].lo || r[i].v > r[i].hi)
            return ERR("%s: %s is %d, must be %d..%d", path, r[i].name, r[i].v, r[i].lo, r[i].hi);
    if (c->input_size % c->patch_size)
        return ERR("%s: input_size %d is not a multiple of patch_size %d", path,
                   c->input_size, c->patch_size);
    if (c->hidden_size % c->num_heads)
        return ERR("%s: hidden_size %d is not a multiple of num_heads %d", path,
                   c->hidden_size, c->num_heads);
    double eh = c->mlp_ratio * c->hidden_size;
    if (!(c->mlp_ratio > 0) || eh != floor(eh) || eh > 1 << 20)
        return ERR("%s: mlp_ratio %g times hidden_size %d must be a whole expert width",
                   path, c->mlp_ratio, c->hidden_size);
    if (!(c->class_dropout_prob >= 0 && c->class_dropout_prob < 1))
        return ERR("%s: class_dropout_prob %g must be in [0, 1)", path, c->class_dropout_prob);
    if (c->default_steps < 1 || c->default_steps > 1000)
        return ERR("%s: sampling.steps %d must be 1..1000", path, c->default_steps);
    if (!(c->default_cfg_scale >= 0 && c->default_cfg_scale <= 100))
        return ERR("%s: sampling.cfg_scale %g must be 0..100", path, c->default_cfg_scale);
    c->out_channels = c->in_channels * (c->learn_sigma ? 2 : 1);
    c->grid = c->input_size / c->patch_size;
    c->num_tokens = c->grid * c->grid;
    c->expert_hidden = (int)eh;
    c->shared_hidden = c->n_shared_experts * c->hidden_size;
    return DIT_OK;
}

/* Reads an int member; a missing optional one keeps *out. */
static int get_int(const dit_json *o, const char *key, int required, int *out,
                   const char *path, char *err, size_t errlen)
{
    const dit_json *v = dit_json_get(o, key);
    int64_t i;
    if (!v)
        return required ? ERR("%s: missing key \"%s\" (an integer)", path, key) : DIT_OK;
    if (dit_json_type(v) == DIT_JSON_BOOL) {
        *out = dit_json_bool(v);
        return DIT_OK;
    }
    if (!dit_json_int(v, &i) || i < -2147483647 || i > 2147483647)
        return ERR("%s: \"%s\" must be an integer, found %s", path, key, dit_json_type_name(dit_json_type(v)));
    *out = (int)i;
    return DIT_OK;
}

static int get_num(const dit_json *o, const char *key, double *out,
                   const char *path, char *err, size_t errlen)
{
    const dit_json *v = dit_json_get(o, key);
    if (!v)
        return DIT_OK;
    if (dit_json_type(v) != DIT_JSON_NUMBER)
        return ERR("%s: \"%s\" must be a number, found %s", path, key, dit_json_type_name(dit_json_type(v)));
    *out = dit_json_num(v);
    return DIT_OK;
}

/* "a", "b", ...: the samplers (those that take a spacing, if spacing). */
static void sampler_list(char *buf, size_t len, int spacing)
{
    buf[0] = 0;
    for (int k = 0; k < dit_sampler_count(); k++)
        if (!spacing || dit_sampler_info(k)->spacing) {
            size_t l = strlen(buf);
            snprintf(buf + l, len - l, "%s\"%s\"", l ? ", " : "", dit_sampler_name(k));
        }
}

/* spacing, cfg_interval and cache: read as the server reads a request's
 * (engine/sampling/params_json.c), so a default is spelt as a request. */
static int parse_sampling_extras(dit_config *c, const dit_json *s, const char *path,
                                 char *err, size_t errlen)
{
    char why[256];
    const dit_json *v;
    int rc = DIT_OK;
    if ((v = dit_json_get(s, "spacing")))
        rc = dit_spacing_from_json(v, &c->default_spacing, why, sizeof why);
    if (rc == DIT_OK && (v = dit_json_get(s, "cfg_interval")))
        rc = dit_cfg_interval_from_json(v, c->default_cfg_interval, why, sizeof why);
    if (rc == DIT_OK && (v = dit_json_get(s, "cache")))
        rc = dit_cache_from_json(v, &c->default_cache, why, sizeof why);
    return rc == DIT_OK ? DIT_OK : ERR("%s: sampling.%s", path, why);
}

static int parse_sampling(dit_config *c, const dit_json *s, const char *path,
                          char *err, size_t errlen)
{
    static const char *const keys[] = {
        "sampler", "steps", "cfg_scale", "spacing", "cfg_interval", "cache", NULL
    };
    char names[192];
    if (!s)
        return DIT_OK;
    if (dit_json_type(s) != DIT_JSON_OBJECT)
        return ERR("%s: \"sampling\" must be an object", path);
    for (size_t i = 0; i < dit_json_len(s); i++) {
        const char *k = dit_json_str(dit_json_key(s, i));
        int j = 0;
        while (keys[j] && strcmp(k, keys[j]))
            j++;
        if (!keys[j])
            return ERR("%s: unknown key \"sampling.%s\" (known: sampler, steps, cfg_scale, "
                       "spacing, cfg_interval, cache)", path, k);
    }
    const dit_json *v = dit_json_get(s, "sampler");
    if (v && (c->default_sampler = dit_sampler_parse(dit_json_str(v))) < 0) {
        sampler_list(names, sizeof names, 0);
        return ERR("%s: sampling.sampler must be one of %s", path, names);
    }
    int rc = get_int(s, "steps", 0, &c->default_steps, path, err, errlen);
    if (rc == DIT_OK)
        rc = get_num(s, "cfg_scale", &c->default_cfg_scale, path, err, errlen);
    if (rc == DIT_OK)
        rc = parse_sampling_extras(c, s, path, err, errlen);
    return rc;
}

/* The model's sampling defaults: by prediction, then config.json's. */
static int config_sampling(dit_config *c, const dit_json *s, const char *path, char *err,
                           size_t errlen)
{
    int rf = c->prediction == DIT_PRED_VELOCITY;
    char names[192];
    config_default_sampling(c, rf ? DIT_SAMPLER_EULER : DIT_SAMPLER_DDPM, rf ? 50 : 250, 4.0);
    int rc = parse_sampling(c, s, path, err, errlen);
    if (rc != DIT_OK)
        return rc;
    if (!dit_sampler_supports(c->default_sampler, c->prediction))
        return ERR("%s: sampling.sampler \"%s\" does not support this model's prediction (%s)",
                   path, dit_sampler_name(c->default_sampler), rf ? "velocity" : "epsilon");
    if (c->default_spacing != DIT_SPACING_DEFAULT &&
        !dit_sampler_info(c->default_sampler)->spacing) {
        sampler_list(names, sizeof names, 1);
        return ERR("%s: sampling.spacing \"%s\" does not fit sampling.sampler \"%s\", which "
                   "keeps upstream's schedule (only \"default\"; a spacing needs one of %s)",
                   path, dit_spacing_name(c->default_spacing),
                   dit_sampler_name(c->default_sampler), names);
    }
    return DIT_OK;
}

static int parse_names(dit_model *m, const dit_json *v, const char *path,
                       char *err, size_t errlen)
{
    if (!v)
        return DIT_OK;
    if (dit_json_type(v) != DIT_JSON_ARRAY || (int)dit_json_len(v) != m->cfg.num_classes)
        return ERR("%s: \"class_names\" must be an array of num_classes (%d) strings",
                   path, m->cfg.num_classes);
    if (!(m->class_names = calloc(dit_json_len(v), sizeof(char *))))
        return DIT_E_NOMEM;
    for (size_t i = 0; i < dit_json_len(v); i++) {
        const char *s = dit_json_str(dit_json_at(v, i));
        if (!s)
            return ERR("%s: class_names[%zu] is not a string", path, i);
        if (!(m->class_names[i] = strdup(s)))
            return DIT_E_NOMEM;
    }
    return DIT_OK;
}

static const char *const known_keys[] = {
    "input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads",
    "mlp_ratio", "num_classes", "num_experts", "num_experts_per_tok", "n_shared_experts",
    "learn_sigma", "class_dropout_prob", "prediction", "class_names", "sampling", "vae",
    "latent_scale", "model", "pretraining_tp", "use_flash_attn", NULL
};

static int check_keys(const dit_json *root, const char *path, char *err, size_t errlen)
{
    for (size_t i = 0; i < dit_json_len(root); i++) {
        const char *k = dit_json_str(dit_json_key(root, i));
        int known = 0;
        for (int j = 0; known_keys[j]; j++)
            known |= !strcmp(k, known_keys[j]);
        if (!known)
            return ERR("%s: unknown key \"%s\"", path, k);
    }
    return DIT_OK;
}

static int parse_fields(dit_model *m, const dit_json *root, const char *path,
                        char *err, size_t errlen)
{
    dit_config *c = &m->cfg;
    struct { const char *key; int *dst; int required; } ints[] = {
        { "input_size", &c->input_size, 1 }, { "patch_size", &c->patch_size, 1 },
        { "in_channels", &c->in_channels, 1 }, { "hidden_size", &c->hidden_size, 1 },
        { "depth", &c->depth, 1 }, { "num_heads", &c->num_heads, 1 },
        { "num_classes", &c->num_classes, 1 }, { "num_experts", &c->num_experts, 1 },
        { "num_experts_per_tok", &c->num_experts_per_tok, 1 },
        { "n_shared_experts", &c->n_shared_experts, 0 }, { "learn_sigma", &c->learn_sigma, 0 },
    };
    int rc = check_keys(root, path, err, errlen);
    for (size_t i = 0; rc == DIT_OK && i < sizeof ints / sizeof ints[0]; i++)
        rc = get_int(root, ints[i].key, ints[i].required, ints[i].dst, path, err, errlen);
    if (rc == DIT_OK)
        rc = get_num(root, "mlp_ratio", &c->mlp_ratio, path, err, errlen);
    if (rc == DIT_OK)
        rc = get_num(root, "class_dropout_prob", &c->class_dropout_prob, path, err, errlen);
    if (rc == DIT_OK)
        rc = get_num(root, "latent_scale", &c->latent_scale, path, err, errlen);
    return rc;
}

int config_parse(dit_model *m, const char *text, size_t len, const char *path,
                     char *err, size_t errlen)
{
    dit_config *c = &m->cfg;
    dit_json_doc *doc = NULL;
    char jerr[160];
    if (dit_json_parse(text, len, &doc, jerr, sizeof jerr) != 0)
        return ERR("%s: not valid JSON: %s", path, jerr);
    const dit_json *root = dit_json_root(doc);
    int rc = DIT_OK;
    if (dit_json_type(root) != DIT_JSON_OBJECT) {
        rc = ERR("%s: must hold a JSON object", path);
        goto out;
    }
    memset(c, 0, sizeof *c);
    c->mlp_ratio = 4;
    c->n_shared_experts = 2;
    c->learn_sigma = 1;
    c->class_dropout_prob = 0.1;
    c->latent_scale = 0.18215;
    if ((rc = parse_fields(m, root, path, err, errlen)) != DIT_OK)
        goto out;
    const dit_json *p = dit_json_get(root, "prediction");
    const char *ps = p ? dit_json_str(p) : "epsilon";
    if (ps && !strcmp(ps, "epsilon"))
        c->prediction = DIT_PRED_EPSILON;
    else if (ps && !strcmp(ps, "velocity"))
        c->prediction = DIT_PRED_VELOCITY;
    else {
        rc = ERR("%s: \"prediction\" must be \"epsilon\" or \"velocity\"", path);
        goto out;
    }
    if ((rc = config_sampling(c, dit_json_get(root, "sampling"), path, err, errlen)) != DIT_OK)
        goto out;
    const dit_json *vae = dit_json_get(root, "vae");
    if (vae && !dit_json_str(vae)) {
        rc = ERR("%s: \"vae\" must be a path (string)", path);
        goto out;
    }
    if (vae && !(m->vae_dir = strdup(dit_json_str(vae)))) {
        rc = DIT_E_NOMEM;
        goto out;
    }
    c->vae_dir = m->vae_dir;
    if ((rc = config_finish(c, path, err, errlen)) != DIT_OK)
        goto out;
    rc = parse_names(m, dit_json_get(root, "class_names"), path, err, errlen);
out:
    dit_json_free(doc);
    return rc;
}
