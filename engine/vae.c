/* vae.c: loading and running the SD-VAE decoder (see vae.h).
 *
 * Loading reads config.json with the engine's JSON reader, derives every
 * decoder tensor's name and shape from it and binds them: F32 tensors are
 * used in place in the safetensors mapping, F16/BF16 ones are widened once
 * into one array the model owns. Names follow diffusers' AutoencoderKL
 * (post_quant_conv.*, decoder.*); the mid block's attention is found under
 * either of the two namings published files use. Any decoder tensor left
 * over after binding means config and weights disagree, and is an error.
 *
 * Decoding runs one image at a time through three activation buffers: the
 * current activation and a spare (each as large as the largest activation)
 * and the inside of a ResNet (its first conv's output). A ResNet with an
 * identity shortcut adds its second conv onto its input in place; one with
 * a 1x1 shortcut, and each upsampling conv, writes into the spare, which
 * then becomes current. Every size comes from one walk over the layers
 * (plan), shared by vae_workspace_bytes and vae_decode.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dit.h"
#include "json.h"
#include "ops.h"
#include "st.h"
#include "vae.h"
#include "vae_ops.h"

#define VAE_MAX_BLOCKS 8  /* up blocks: upscale up to 128 */
#define VAE_MAX_RES 8     /* ResNets per up block (layers_per_block + 1) */
#define VAE_MAX_SIDE 1024 /* latent height/width vae_decode accepts */
#define VAE_GN_EPS 1e-6

typedef struct vae_cfg {
    int nblocks;
    int ch[VAE_MAX_BLOCKS]; /* block_out_channels */
    int layers;             /* layers_per_block */
    int latent, out, groups;
    int mid_attn, post_quant;
} vae_cfg;

typedef struct vae_conv {
    const float *w; /* (cout, cin, k, k) */
    const float *b; /* (cout) */
    int cin, cout, k;
} vae_conv;

typedef struct vae_norm {
    const float *g, *b; /* (C) */
    int c;
} vae_norm;

typedef struct vae_resnet {
    vae_norm n1, n2;
    vae_conv c1, c2;
    vae_conv sc; /* 1x1 shortcut when cin != cout (sc.w NULL otherwise) */
} vae_resnet;

typedef struct vae_attn {
    vae_norm n;
    const float *w[4], *b[4]; /* q, k, v, out: (C, C), (C) */
} vae_attn;

typedef struct vae_up {
    vae_resnet res[VAE_MAX_RES];
    vae_conv up; /* 3x3 after nearest x2; up.w NULL in the last block */
} vae_up;

struct vae_model {
    vae_cfg cfg;
    st_table *st;
    float *wide; /* widened F16/BF16 tensors */
    size_t wide_len, wide_used;
    size_t weight_bytes;
    vae_conv post_quant, conv_in, conv_out;
    vae_resnet mid[2];
    vae_attn attn;
    vae_up up[VAE_MAX_BLOCKS];
    vae_norm norm_out;
};

#define ERR(code, ...) (snprintf(err, errlen, __VA_ARGS__), (code))

/* ---- config.json ------------------------------------------------------- */

static int cfg_int(const js_value *root, const char *key, int def, int lo,
                   int hi, int *out, const char *path, char *err, size_t errlen)
{
    const js_value *v = js_get(root, key);
    int64_t x = def;
    if (v && !js_int(v, &x))
        return ERR(DIT_E_FORMAT, "%s: \"%s\" must be an integer, found %s", path,
                   key, js_type_name(js_type(v)));
    if (x < lo || x > hi)
        return ERR(DIT_E_FORMAT, "%s: \"%s\" is %lld, must be %d..%d", path, key,
                   (long long)x, lo, hi);
    *out = (int)x;
    return DIT_OK;
}

static int cfg_bool(const js_value *root, const char *key, int *out,
                    const char *path, char *err, size_t errlen)
{
    const js_value *v = js_get(root, key);
    *out = 1;
    if (v && (*out = js_bool(v)) < 0)
        return ERR(DIT_E_FORMAT, "%s: \"%s\" must be true or false", path, key);
    return DIT_OK;
}

/* Refuses what this decoder does not compute rather than computing
 * something else: another class, activation or up block type. */
static int cfg_supported(const js_value *root, int nblocks, const char *path,
                         char *err, size_t errlen)
{
    const char *cls = js_str(js_get(root, "_class_name"));
    if (cls && strcmp(cls, "AutoencoderKL"))
        return ERR(DIT_E_UNSUPPORTED, "%s: _class_name \"%s\": only AutoencoderKL is supported",
                   path, cls);
    const js_value *act = js_get(root, "act_fn");
    if (act && (!js_str(act) || (strcmp(js_str(act), "silu") && strcmp(js_str(act), "swish"))))
        return ERR(DIT_E_UNSUPPORTED, "%s: act_fn must be \"silu\"", path);
    const js_value *ub = js_get(root, "up_block_types");
    if (ub && (js_type(ub) != JS_ARRAY || (int)js_len(ub) != nblocks))
        return ERR(DIT_E_FORMAT, "%s: up_block_types must list %d block types, as "
                   "block_out_channels does", path, nblocks);
    for (int i = 0; ub && i < nblocks; i++) {
        const char *t = js_str(js_at(ub, (size_t)i));
        if (!t || strcmp(t, "UpDecoderBlock2D"))
            return ERR(DIT_E_UNSUPPORTED, "%s: up_block_types[%d] must be \"UpDecoderBlock2D\"",
                       path, i);
    }
    return DIT_OK;
}

static int cfg_read(vae_cfg *c, const js_value *root, const char *path,
                    char *err, size_t errlen)
{
    if (js_type(root) != JS_OBJECT)
        return ERR(DIT_E_FORMAT, "%s: must hold a JSON object", path);
    const js_value *boc = js_get(root, "block_out_channels");
    c->nblocks = boc ? (int)js_len(boc) : 1;
    if (boc && (js_type(boc) != JS_ARRAY || c->nblocks < 1 || c->nblocks > VAE_MAX_BLOCKS))
        return ERR(DIT_E_FORMAT, "%s: block_out_channels must be an array of 1..%d integers",
                   path, VAE_MAX_BLOCKS);
    int rc = cfg_supported(root, c->nblocks, path, err, errlen);
    if (rc == DIT_OK)
        rc = cfg_int(root, "layers_per_block", 1, 0, VAE_MAX_RES - 1, &c->layers, path, err, errlen);
    if (rc == DIT_OK)
        rc = cfg_int(root, "latent_channels", 4, 1, 1024, &c->latent, path, err, errlen);
    if (rc == DIT_OK)
        rc = cfg_int(root, "out_channels", 3, 1, 64, &c->out, path, err, errlen);
    if (rc == DIT_OK)
        rc = cfg_int(root, "norm_num_groups", 32, 1, 1024, &c->groups, path, err, errlen);
    if (rc == DIT_OK)
        rc = cfg_bool(root, "mid_block_add_attention", &c->mid_attn, path, err, errlen);
    if (rc == DIT_OK)
        rc = cfg_bool(root, "use_post_quant_conv", &c->post_quant, path, err, errlen);
    for (int i = 0; rc == DIT_OK && i < c->nblocks; i++) {
        int64_t v = 64; /* diffusers' default: (64,) */
        if (boc && (!js_int(js_at(boc, (size_t)i), &v) || v < 1 || v > 16384))
            return ERR(DIT_E_FORMAT, "%s: block_out_channels[%d] must be an integer 1..16384",
                       path, i);
        if (v % c->groups)
            return ERR(DIT_E_FORMAT, "%s: block_out_channels[%d] = %lld is not a multiple "
                       "of norm_num_groups %d", path, i, (long long)v, c->groups);
        c->ch[i] = (int)v;
    }
    return rc;
}

static int cfg_load(vae_cfg *c, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, VAE_CONFIG_FILE);
    FILE *f = fopen(path, "rb");
    if (!f)
        return ERR(DIT_E_IO, "%s: cannot open the VAE config", path);
    char *text = malloc((1 << 20) + 1);
    size_t len = text ? fread(text, 1, (1 << 20) + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!text)
        return ERR(DIT_E_NOMEM, "%s: out of memory", path);
    js_doc *doc = NULL;
    char jerr[160];
    int rc = DIT_OK;
    if (bad || len > (1 << 20))
        rc = ERR(bad ? DIT_E_IO : DIT_E_FORMAT, "%s: %s", path,
                 bad ? "read error" : "larger than 1 MiB");
    else if (js_parse(text, len, &doc, jerr, sizeof jerr))
        rc = ERR(DIT_E_FORMAT, "%s: not valid JSON: %s", path, jerr);
    else
        rc = cfg_read(c, js_root(doc), path, err, errlen);
    js_free(doc);
    free(text);
    return rc;
}

/* ---- weights ----------------------------------------------------------- */

typedef struct binder {
    vae_model *m;
    const st_tensor **used; /* tensors bound so far */
    int nused, cap;
    char *err;
    size_t errlen;
} binder;

static void shape_str(char *buf, size_t n, int ndim, const int64_t *s)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/* The tensor `name` as F32, checked to have shape s[0..ndim). A (C, C)
 * matrix may also be stored as a (C, C, 1, 1) 1x1 convolution. */
static int bind(binder *b, const float **out, const char *name, int ndim,
                int64_t s0, int64_t s1, int64_t s2, int64_t s3)
{
    char *err = b->err;
    size_t errlen = b->errlen;
    const char *path = st_path(b->m->st);
    const st_tensor *t = st_find(b->m->st, name);
    int64_t want[4] = {s0, s1, s2, s3};
    if (!t)
        return ERR(DIT_E_FORMAT, "%s: tensor \"%s\" is missing", path, name);
    int ok = t->ndim == ndim || (ndim == 2 && t->ndim == 4 && t->shape[2] == 1 && t->shape[3] == 1);
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == want[i];
    if (!ok) {
        char got[128], exp[128];
        shape_str(got, sizeof got, t->ndim, t->shape);
        shape_str(exp, sizeof exp, ndim, want);
        return ERR(DIT_E_FORMAT, "%s: tensor \"%s\" has shape %s, but the VAE's "
                   VAE_CONFIG_FILE " implies %s", path, name, got, exp);
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return ERR(DIT_E_FORMAT, "%s: tensor \"%s\" has dtype %s, expected F32, F16 or BF16",
                   path, name, st_dtype_name(t->dtype));
    size_t n = (size_t)st_numel(t);
    if (t->dtype == ST_F32) {
        *out = t->data;
    } else { /* room was counted by count_wide */
        float *dst = b->m->wide + b->m->wide_used;
        const uint16_t *src = t->data;
        for (size_t i = 0; i < n; i++)
            dst[i] = t->dtype == ST_F16 ? op_f16_to_f32(src[i]) : op_bf16_to_f32(src[i]);
        b->m->wide_used += n;
        *out = dst;
    }
    b->m->weight_bytes += n * sizeof(float);
    b->used[b->nused++] = t;
    return DIT_OK;
}

static int is_decoder_name(const char *s)
{
    return !strncmp(s, "decoder.", 8) || !strncmp(s, "post_quant_conv.", 16);
}

/* "prefix.leaf" in buf */
static const char *join(char *buf, size_t n, const char *prefix, const char *leaf)
{
    snprintf(buf, n, "%s.%s", prefix, leaf);
    return buf;
}

static int bind_conv(binder *b, vae_conv *c, const char *prefix, int cin,
                     int cout, int k)
{
    char name[256];
    c->cin = cin, c->cout = cout, c->k = k;
    int rc = bind(b, &c->w, join(name, sizeof name, prefix, "weight"), 4, cout, cin, k, k);
    return rc ? rc : bind(b, &c->b, join(name, sizeof name, prefix, "bias"), 1, cout, 0, 0, 0);
}

static int bind_norm(binder *b, vae_norm *n, const char *prefix, int c)
{
    char name[256];
    n->c = c;
    int rc = bind(b, &n->g, join(name, sizeof name, prefix, "weight"), 1, c, 0, 0, 0);
    return rc ? rc : bind(b, &n->b, join(name, sizeof name, prefix, "bias"), 1, c, 0, 0, 0);
}

static int bind_resnet(binder *b, vae_resnet *r, const char *prefix, int cin,
                       int cout)
{
    char p[224];
    int rc = bind_norm(b, &r->n1, join(p, sizeof p, prefix, "norm1"), cin);
    if (rc == DIT_OK)
        rc = bind_conv(b, &r->c1, join(p, sizeof p, prefix, "conv1"), cin, cout, 3);
    if (rc == DIT_OK)
        rc = bind_norm(b, &r->n2, join(p, sizeof p, prefix, "norm2"), cout);
    if (rc == DIT_OK)
        rc = bind_conv(b, &r->c2, join(p, sizeof p, prefix, "conv2"), cout, cout, 3);
    if (rc == DIT_OK && cin != cout)
        rc = bind_conv(b, &r->sc, join(p, sizeof p, prefix, "conv_shortcut"), cin, cout, 1);
    return rc;
}

static int bind_attn(binder *b, vae_attn *a, int C)
{
    static const char *const names[2][4] = {
        {"to_q", "to_k", "to_v", "to_out.0"},  /* diffusers >= 0.14 */
        {"query", "key", "value", "proj_attn"}, /* older files, sd-vae-ft-mse */
    };
    const char *pre = "decoder.mid_block.attentions.0";
    char name[256];
    snprintf(name, sizeof name, "%s.to_q.weight", pre);
    int scheme = st_find(b->m->st, name) ? 0 : 1;
    snprintf(name, sizeof name, "%s.query.weight", pre);
    if (scheme == 1 && !st_find(b->m->st, name)) {
        char *err = b->err;
        size_t errlen = b->errlen;
        return ERR(DIT_E_FORMAT, "%s: tensor \"%s.to_q.weight\" (or \"%s\") is missing",
                   st_path(b->m->st), pre, name);
    }
    snprintf(name, sizeof name, "%s.group_norm", pre);
    int rc = bind_norm(b, &a->n, name, C);
    for (int i = 0; rc == DIT_OK && i < 4; i++) {
        snprintf(name, sizeof name, "%s.%s.weight", pre, names[scheme][i]);
        rc = bind(b, &a->w[i], name, 2, C, C, 0, 0);
        snprintf(name, sizeof name, "%s.%s.bias", pre, names[scheme][i]);
        if (rc == DIT_OK)
            rc = bind(b, &a->b[i], name, 1, C, 0, 0, 0);
    }
    return rc;
}

static int bind_up_blocks(binder *b)
{
    vae_model *m = b->m;
    const vae_cfg *c = &m->cfg;
    char p[192];
    int rc = DIT_OK, prev = c->ch[c->nblocks - 1];
    for (int i = 0; rc == DIT_OK && i < c->nblocks; i++) {
        int cout = c->ch[c->nblocks - 1 - i]; /* channels run reversed */
        for (int j = 0; rc == DIT_OK && j <= c->layers; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
            rc = bind_resnet(b, &m->up[i].res[j], p, j ? cout : prev, cout);
        }
        snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0.conv", i);
        if (rc == DIT_OK && i < c->nblocks - 1)
            rc = bind_conv(b, &m->up[i].up, p, cout, cout, 3);
        prev = cout;
    }
    return rc;
}

static int bind_all(binder *b)
{
    vae_model *m = b->m;
    const vae_cfg *c = &m->cfg;
    int top = c->ch[c->nblocks - 1], rc = DIT_OK;
    if (c->post_quant)
        rc = bind_conv(b, &m->post_quant, "post_quant_conv", c->latent, c->latent, 1);
    if (rc == DIT_OK)
        rc = bind_conv(b, &m->conv_in, "decoder.conv_in", c->latent, top, 3);
    if (rc == DIT_OK)
        rc = bind_resnet(b, &m->mid[0], "decoder.mid_block.resnets.0", top, top);
    if (rc == DIT_OK && c->mid_attn)
        rc = bind_attn(b, &m->attn, top);
    if (rc == DIT_OK)
        rc = bind_resnet(b, &m->mid[1], "decoder.mid_block.resnets.1", top, top);
    if (rc == DIT_OK)
        rc = bind_up_blocks(b);
    if (rc == DIT_OK)
        rc = bind_norm(b, &m->norm_out, "decoder.conv_norm_out", c->ch[0]);
    if (rc == DIT_OK)
        rc = bind_conv(b, &m->conv_out, "decoder.conv_out", c->ch[0], c->out, 3);
    return rc;
}

/* A decoder tensor nothing bound: the config describes another decoder. */
static int check_leftovers(binder *b)
{
    const st_table *t = b->m->st;
    for (int i = 0; i < st_count(t); i++) {
        const st_tensor *x = st_at(t, i);
        int used = !is_decoder_name(x->name);
        for (int j = 0; !used && j < b->nused; j++)
            used = b->used[j] == x;
        if (!used) {
            char *err = b->err;
            size_t errlen = b->errlen;
            return ERR(DIT_E_FORMAT, "%s: tensor \"%s\" is not part of the decoder the VAE's "
                       VAE_CONFIG_FILE " describes (%d up blocks, layers_per_block %d%s)",
                       st_path(t), x->name, b->m->cfg.nblocks, b->m->cfg.layers,
                       b->m->cfg.mid_attn ? "" : ", no mid-block attention");
        }
    }
    return DIT_OK;
}

/* Floats needed to widen the decoder's half-precision tensors. */
static size_t count_wide(const st_table *t, int *ndec)
{
    size_t n = 0;
    *ndec = 0;
    for (int i = 0; i < st_count(t); i++) {
        const st_tensor *x = st_at(t, i);
        if (!is_decoder_name(x->name))
            continue;
        ++*ndec;
        if (x->dtype == ST_F16 || x->dtype == ST_BF16)
            n += (size_t)st_numel(x);
    }
    return n;
}

int vae_load(vae_model **out, const char *dir, char *err, size_t errlen)
{
    char dummy[1], path[4096];
    if (!err)
        err = dummy, errlen = sizeof dummy;
    if (!out || !dir)
        return ERR(DIT_E_INVAL, "vae_load: NULL argument");
    *out = NULL;
    vae_model *m = calloc(1, sizeof *m);
    binder b = {.m = m, .err = err, .errlen = errlen};
    if (!m)
        return ERR(DIT_E_NOMEM, "%s: out of memory", dir);
    int rc = cfg_load(&m->cfg, dir, err, errlen);
    snprintf(path, sizeof path, "%s/%s", dir, VAE_WEIGHTS_FILE);
    if (rc == DIT_OK)
        rc = st_open(&m->st, path, err, errlen);
    if (rc == DIT_OK) {
        m->wide_len = count_wide(m->st, &b.cap);
        m->wide = malloc((m->wide_len ? m->wide_len : 1) * sizeof(float));
        b.used = malloc((size_t)(b.cap ? b.cap : 1) * sizeof *b.used);
        if (!m->wide || !b.used)
            rc = ERR(DIT_E_NOMEM, "%s: out of memory widening the weights", path);
    }
    if (rc == DIT_OK)
        rc = bind_all(&b);
    if (rc == DIT_OK)
        rc = check_leftovers(&b);
    free(b.used);
    if (rc != DIT_OK) {
        vae_free(m);
        return rc;
    }
    *out = m;
    return DIT_OK;
}

void vae_free(vae_model *m)
{
    if (!m)
        return;
    st_close(m->st);
    free(m->wide);
    free(m);
}

int vae_latent_channels(const vae_model *m) { return m->cfg.latent; }
int vae_out_channels(const vae_model *m) { return m->cfg.out; }
int vae_upscale(const vae_model *m) { return 1 << (m->cfg.nblocks - 1); }
size_t vae_weight_bytes(const vae_model *m) { return m->weight_bytes; }

/* ---- plan: buffer sizes and FLOPs of one image ------------------------- */

typedef struct vae_plan {
    size_t act;   /* floats of the current and the spare activation, each */
    size_t inner; /* floats of a ResNet's inside */
    size_t col;   /* im2col scratch */
    size_t att;   /* (C, T) attention buffers, four of them */
    size_t score; /* (tq, T) */
    int tq;
    double flops;
} vae_plan;

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

static vae_conv_dims conv_dims(const vae_conv *c, int h, int w, int up)
{
    vae_conv_dims d = {.cin = c->cin, .cout = c->cout, .k = c->k, .h = h, .w = w, .up = up};
    return d;
}

/* Accounts for conv c on an h x w input (output written to a buffer of
 * the plan's `act` kind when to_act). */
static void plan_conv(vae_plan *p, const vae_conv *c, int h, int w, int up)
{
    vae_conv_dims d = conv_dims(c, h, w, up);
    size_t hw = (size_t)h * w * up * up;
    p->col = zmax(p->col, vae_conv2d_col_floats(&d));
    p->act = zmax(p->act, (size_t)c->cout * hw);
    p->flops += 2.0 * c->cout * c->cin * c->k * c->k * (double)hw;
}

static void plan_resnet(vae_plan *p, const vae_resnet *r, int h, int w)
{
    plan_conv(p, &r->c1, h, w, 1);
    plan_conv(p, &r->c2, h, w, 1);
    if (r->sc.w)
        plan_conv(p, &r->sc, h, w, 1);
    p->inner = zmax(p->inner, (size_t)r->c1.cout * h * w);
}

static void plan_walk(const vae_model *m, int h, int w, vae_plan *p)
{
    const vae_cfg *c = &m->cfg;
    memset(p, 0, sizeof *p);
    if (c->post_quant)
        plan_conv(p, &m->post_quant, h, w, 1);
    plan_conv(p, &m->conv_in, h, w, 1);
    plan_resnet(p, &m->mid[0], h, w);
    plan_resnet(p, &m->mid[1], h, w);
    if (c->mid_attn) {
        size_t C = (size_t)c->ch[c->nblocks - 1], T = (size_t)h * w;
        p->tq = vae_attention_tile((int)T);
        p->att = C * T;
        p->score = (size_t)p->tq * T;
        p->flops += 8.0 * C * C * T + 4.0 * C * T * T;
    }
    for (int i = 0; i < c->nblocks; i++) {
        for (int j = 0; j <= c->layers; j++)
            plan_resnet(p, &m->up[i].res[j], h, w);
        if (m->up[i].up.w) {
            plan_conv(p, &m->up[i].up, h, w, 2);
            h *= 2, w *= 2;
        }
    }
    plan_conv(p, &m->conv_out, h, w, 1);
}

/* Floats, rounded up to whole 64-byte lines. */
static size_t lines(size_t floats) { return (floats + 15) / 16 * 16; }

static size_t plan_bytes(const vae_model *m, const vae_plan *p)
{
    size_t maxc = (size_t)m->cfg.ch[0];
    for (int i = 1; i < m->cfg.nblocks; i++)
        maxc = zmax(maxc, (size_t)m->cfg.ch[i]);
    size_t f = 2 * lines(p->act) + lines(p->inner) + lines(p->col) +
               4 * lines(p->att) + lines(p->score) + 2 * lines(maxc);
    return f * sizeof(float) + 64; /* + 64: aligning the caller's pointer */
}

size_t vae_workspace_bytes(const vae_model *m, int n, int h, int w)
{
    if (!m || n < 1 || h < 1 || w < 1 || h > VAE_MAX_SIDE || w > VAE_MAX_SIDE)
        return 0;
    vae_plan p;
    plan_walk(m, h, w, &p);
    return plan_bytes(m, &p);
}

double vae_decode_flops(const vae_model *m, int h, int w)
{
    vae_plan p;
    plan_walk(m, h, w, &p);
    return p.flops;
}

/* ---- decode ------------------------------------------------------------ */

typedef struct vae_ws {
    float *cur, *spare; /* (C, H, W) activations */
    float *inner;       /* a ResNet's conv1 output */
    float *col;
    float *scale, *shift; /* (C) a GroupNorm's folded affine */
    vae_attn_scratch att;
} vae_ws;

static float *carve(char **at, size_t floats)
{
    float *p = (float *)(void *)*at;
    *at += lines(floats) * sizeof(float);
    return p;
}

static void ws_carve(vae_ws *s, const vae_model *m, const vae_plan *p, void *ws)
{
    size_t maxc = (size_t)m->cfg.ch[0];
    for (int i = 1; i < m->cfg.nblocks; i++)
        maxc = zmax(maxc, (size_t)m->cfg.ch[i]);
    char *at = (char *)ws + (64 - (uintptr_t)ws % 64) % 64;
    s->cur = carve(&at, p->act);
    s->spare = carve(&at, p->act);
    s->inner = carve(&at, p->inner);
    s->col = carve(&at, p->col);
    s->scale = carve(&at, maxc);
    s->shift = carve(&at, maxc);
    s->att.xn = carve(&at, p->att);
    s->att.q = carve(&at, p->att);
    s->att.k = carve(&at, p->att);
    s->att.v = carve(&at, p->att);
    s->att.s = carve(&at, p->score);
    s->att.tq = p->tq;
}

static void groupnorm_coef(vae_ws *s, const vae_norm *n, const float *x,
                           int groups, int hw)
{
    vae_groupnorm_coef_forward(s->scale, s->shift, x, n->g, n->b, n->c, hw,
                               groups, VAE_GN_EPS);
}

static void swap(vae_ws *s)
{
    float *t = s->cur;
    s->cur = s->spare;
    s->spare = t;
}

/* cur (cout, h, w) = shortcut(cur) + conv2(silu(gn2(conv1(silu(gn1(cur)))))) */
static void resnet_forward(vae_ws *s, const vae_resnet *r, int groups, int h, int w)
{
    vae_conv_dims d1 = conv_dims(&r->c1, h, w, 1), d2 = conv_dims(&r->c2, h, w, 1);
    groupnorm_coef(s, &r->n1, s->cur, groups, h * w);
    d1.scale = s->scale, d1.shift = s->shift, d1.silu = 1;
    vae_conv2d_forward(s->inner, s->cur, r->c1.w, r->c1.b, &d1, s->col);   // (cout, h, w)
    groupnorm_coef(s, &r->n2, s->inner, groups, h * w);
    if (r->sc.w) {
        vae_conv_dims ds = conv_dims(&r->sc, h, w, 1);
        vae_conv2d_forward(s->spare, s->cur, r->sc.w, r->sc.b, &ds, NULL); // (cout, h, w)
        swap(s);
    }
    d2.scale = s->scale, d2.shift = s->shift, d2.silu = 1, d2.accumulate = 1;
    vae_conv2d_forward(s->cur, s->inner, r->c2.w, r->c2.b, &d2, s->col);   // += (cout, h, w)
}

/* One latent z (latent, h, w) to rgb (out, h*up, w*up). */
static void decode_one(const vae_model *m, vae_ws *s, int h, int w,
                       const float *z, float *rgb)
{
    const vae_cfg *c = &m->cfg;
    const float *x = z;
    if (c->post_quant) {
        vae_conv_dims d = conv_dims(&m->post_quant, h, w, 1);
        vae_conv2d_forward(s->spare, z, m->post_quant.w, m->post_quant.b, &d, NULL);
        x = s->spare;                                                      // (latent, h, w)
    }
    vae_conv_dims d = conv_dims(&m->conv_in, h, w, 1);
    vae_conv2d_forward(s->cur, x, m->conv_in.w, m->conv_in.b, &d, s->col); // (top, h, w)
    resnet_forward(s, &m->mid[0], c->groups, h, w);
    if (c->mid_attn) {
        groupnorm_coef(s, &m->attn.n, s->cur, c->groups, h * w);
        vae_attention_forward(s->cur, m->attn.w, m->attn.b, s->scale, s->shift,
                              m->attn.n.c, h * w, &s->att);               // (top, h, w)
    }
    resnet_forward(s, &m->mid[1], c->groups, h, w);
    for (int i = 0; i < c->nblocks; i++) {
        for (int j = 0; j <= c->layers; j++)
            resnet_forward(s, &m->up[i].res[j], c->groups, h, w);
        if (m->up[i].up.w) {
            d = conv_dims(&m->up[i].up, h, w, 2);
            vae_conv2d_forward(s->spare, s->cur, m->up[i].up.w, m->up[i].up.b, &d, s->col);
            swap(s);                                                       // (C, 2h, 2w)
            h *= 2, w *= 2;
        }
    }
    groupnorm_coef(s, &m->norm_out, s->cur, c->groups, h * w);
    d = conv_dims(&m->conv_out, h, w, 1);
    d.scale = s->scale, d.shift = s->shift, d.silu = 1;
    vae_conv2d_forward(rgb, s->cur, m->conv_out.w, m->conv_out.b, &d, s->col); // (out, H, W)
}

int vae_decode(const vae_model *m, void *ws, size_t ws_bytes, int n, int h,
               int w, const float *z, float *rgb)
{
    size_t need = vae_workspace_bytes(m, n, h, w);
    if (!need || !ws || ws_bytes < need || !z || !rgb)
        return DIT_E_INVAL;
    vae_plan p;
    vae_ws s;
    plan_walk(m, h, w, &p);
    ws_carve(&s, m, &p, ws);
    int up = vae_upscale(m);
    size_t zin = (size_t)m->cfg.latent * h * w;
    size_t zout = (size_t)m->cfg.out * h * up * w * up;
    for (int i = 0; i < n; i++)
        decode_one(m, &s, h, w, z + (size_t)i * zin, rgb + (size_t)i * zout);
    return DIT_OK;
}
