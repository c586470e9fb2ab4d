/* vae.c: loading and running the SD-VAE decoder (see vae.h).
 *
 * Loading reads config.json with the engine's JSON reader, derives every
 * decoder tensor's name and shape from it and copies them, as F32 (F16 and
 * BF16 widened) into one array the model owns, 3x3 kernels reordered to
 * rows of (tap, cin) for vae_conv3x3_forward, the attention's matrices
 * packed for the kernel entry; the file is closed after. Names follow
 * diffusers' AutoencoderKL (post_quant_conv.*, decoder.*); the mid block's
 * attention is found under either of the two namings published files use.
 * Any decoder tensor left over after binding means config and weights
 * disagree, and is an error.
 *
 * Decoding runs one image at a time in the pitched layout of vae_ops.h
 * through three buffers: the current activation (cur), the other one
 * (alt; a ResNet's inside, a shortcut's output), each as large as the
 * largest activation, and the zero-padded input of the next 3x3 conv
 * (pad). A ResNet with an identity shortcut adds its second conv onto its
 * input in place; one with a 1x1 shortcut writes the shortcut into alt once
 * its inside is consumed, and alt becomes current. Every size comes from
 * one walk over the layers (plan), shared by vae_workspace_bytes and
 * vae_decode.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ditmoe/dit.h>
#include <ditmoe/dit_json.h>
#include "dtype.h"
#include "ops.h"
#include "st.h"
#include "vae.h"
#include "vae_ops.h"

#define VAE_MAX_BLOCKS 8  /* up blocks: upscale up to 128 */
#define VAE_MAX_RES 8     /* ResNets per up block (layers_per_block + 1) */
#define VAE_MAX_SIDE 16384 /* output height/width: h * (w + 2) fits an int */
#define VAE_GN_EPS 1e-6

typedef struct vae_cfg {
    int nblocks;
    int ch[VAE_MAX_BLOCKS]; /* block_out_channels */
    int layers;             /* layers_per_block */
    int latent, out, groups;
    int mid_attn, post_quant;
} vae_cfg;

typedef struct vae_conv {
    const float *w; /* 3x3: (cout, 9, cin); 1x1: (cout, cin) */
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
    klinear qkv, out;         /* packed for the kernel entry (attn_pack) */
} vae_attn;

typedef struct vae_up {
    vae_resnet res[VAE_MAX_RES];
    vae_conv up; /* 3x3 after nearest x2; up.w NULL in the last block */
} vae_up;

struct vae_model {
    vae_cfg cfg;
    const gemm_kernel *gk; /* the convolutions' kernel entry */
    st_table *st;  /* open while loading */
    float *w;      /* every weight, F32 */
    size_t w_len, w_used;
    void *attn_pk; /* the attention's packs and q, k, v's stacked bias */
    size_t attn_pk_bytes;
    vae_conv post_quant, conv_in, conv_out;
    vae_resnet mid[2];
    vae_attn attn;
    vae_up up[VAE_MAX_BLOCKS];
    vae_norm norm_out;
};

#define ERR(code, ...) (snprintf(err, errlen, __VA_ARGS__), (code))

/* ---- config.json ------------------------------------------------------- */

static int cfg_int(const dit_json *root, const char *key, int def, int lo,
                   int hi, int *out, const char *path, char *err, size_t errlen)
{
    const dit_json *v = dit_json_get(root, key);
    int64_t x = def;
    if (v && !dit_json_int(v, &x))
        return ERR(DIT_E_FORMAT, "%s: \"%s\" must be an integer, found %s", path,
                   key, dit_json_type_name(dit_json_type(v)));
    if (x < lo || x > hi)
        return ERR(DIT_E_FORMAT, "%s: \"%s\" is %lld, must be %d..%d", path, key,
                   (long long)x, lo, hi);
    *out = (int)x;
    return DIT_OK;
}

static int cfg_bool(const dit_json *root, const char *key, int *out,
                    const char *path, char *err, size_t errlen)
{
    const dit_json *v = dit_json_get(root, key);
    *out = 1;
    if (v && (*out = dit_json_bool(v)) < 0)
        return ERR(DIT_E_FORMAT, "%s: \"%s\" must be true or false", path, key);
    return DIT_OK;
}

/* Refuses what this decoder does not compute rather than computing
 * something else: another class, activation or up block type. */
static int cfg_supported(const dit_json *root, int nblocks, const char *path,
                         char *err, size_t errlen)
{
    const char *cls = dit_json_str(dit_json_get(root, "_class_name"));
    if (cls && strcmp(cls, "AutoencoderKL"))
        return ERR(DIT_E_UNSUPPORTED, "%s: _class_name \"%s\": only AutoencoderKL is supported",
                   path, cls);
    const dit_json *act = dit_json_get(root, "act_fn");
    if (act && (!dit_json_str(act) || (strcmp(dit_json_str(act), "silu") && strcmp(dit_json_str(act), "swish"))))
        return ERR(DIT_E_UNSUPPORTED, "%s: act_fn must be \"silu\"", path);
    const dit_json *ub = dit_json_get(root, "up_block_types");
    if (ub && (dit_json_type(ub) != DIT_JSON_ARRAY || (int)dit_json_len(ub) != nblocks))
        return ERR(DIT_E_FORMAT, "%s: up_block_types must list %d block types, as "
                   "block_out_channels does", path, nblocks);
    for (int i = 0; ub && i < nblocks; i++) {
        const char *t = dit_json_str(dit_json_at(ub, (size_t)i));
        if (!t || strcmp(t, "UpDecoderBlock2D"))
            return ERR(DIT_E_UNSUPPORTED, "%s: up_block_types[%d] must be \"UpDecoderBlock2D\"",
                       path, i);
    }
    return DIT_OK;
}

static int cfg_read(vae_cfg *c, const dit_json *root, const char *path,
                    char *err, size_t errlen)
{
    if (dit_json_type(root) != DIT_JSON_OBJECT)
        return ERR(DIT_E_FORMAT, "%s: must hold a JSON object", path);
    const dit_json *boc = dit_json_get(root, "block_out_channels");
    c->nblocks = boc ? (int)dit_json_len(boc) : 1;
    if (boc && (dit_json_type(boc) != DIT_JSON_ARRAY || c->nblocks < 1 || c->nblocks > VAE_MAX_BLOCKS))
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
        if (boc && (!dit_json_int(dit_json_at(boc, (size_t)i), &v) || v < 1 || v > 16384))
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
    dit_json_doc *doc = NULL;
    char jerr[160];
    int rc = DIT_OK;
    if (bad || len > (1 << 20))
        rc = ERR(bad ? DIT_E_IO : DIT_E_FORMAT, "%s: %s", path,
                 bad ? "read error" : "larger than 1 MiB");
    else if (dit_json_parse(text, len, &doc, jerr, sizeof jerr))
        rc = ERR(DIT_E_FORMAT, "%s: not valid JSON: %s", path, jerr);
    else
        rc = cfg_read(c, dit_json_root(doc), path, err, errlen);
    dit_json_free(doc);
    free(text);
    return rc;
}

/* ---- weights ----------------------------------------------------------- */

typedef struct binder {
    vae_model *m;
    const st_tensor **used; /* tensors bound so far */
    int nused, cap;
    float *tmp; /* (largest tensor) for reordering kernels */
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

/* The tensor `name` copied as F32 into the model's array, checked to have
 * shape s[0..ndim). A (C, C) matrix may also be stored as a (C, C, 1, 1)
 * 1x1 convolution. */
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
    if (!dtype_get(t->dtype))
        return ERR(DIT_E_FORMAT, "%s: tensor \"%s\" has dtype %s, expected F32, F16 or BF16",
                   path, name, st_dtype_name(t->dtype));
    size_t n = (size_t)st_numel(t);
    float *dst = b->m->w + b->m->w_used; /* room was counted by count_floats */
    dtype_get(t->dtype)->to_f32(dst, t->data, n);
    b->m->w_used += n;
    *out = dst;
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
    if (rc == DIT_OK && k == 3) {
        size_t n = (size_t)cout * cin * 9;
        memcpy(b->tmp, c->w, n * sizeof(float));
        vae_conv3x3_reorder((float *)c->w, b->tmp, cin, cout);
    }
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

/* The attention's q, k, v stacked into one (3C, C) matrix (one product
 * makes every position's q, k and v) and its output projection, packed for
 * the kernel entry, as the transformer's linear layers are. */
static int attn_pack(vae_model *m, char *err, size_t errlen)
{
    const gemm_kernel *gk = m->gk;
    vae_attn *a = &m->attn;
    int C = a->n.c;
    size_t cc = (size_t)C * C, bq = gk->pack_bytes(gk, 3 * C, C, 0, ST_F32);
    size_t bo = gk->pack_bytes(gk, C, C, 0, ST_F32);
    m->attn_pk_bytes = bq + bo + (3 * (size_t)C * sizeof(float) + 63) / 64 * 64;
    m->attn_pk = aligned_alloc(64, m->attn_pk_bytes);
    float *stack = malloc(3 * cc * sizeof(float)), *row = malloc((size_t)C * sizeof(float));
    if (!m->attn_pk || !stack || !row) {
        free(stack);
        free(row);
        return ERR(DIT_E_NOMEM, "out of memory packing the VAE's attention (%zu bytes)",
                   m->attn_pk_bytes);
    }
    char *pk = m->attn_pk;
    float *bias = (float *)(void *)(pk + bq + bo);
    for (int i = 0; i < 3; i++) {
        memcpy(stack + i * cc, a->w[i], cc * sizeof(float));
        memcpy(bias + (size_t)i * C, a->b[i], (size_t)C * sizeof(float));
    }
    a->qkv = (klinear){ { ST_F32, stack, 3 * C, C, pk, ST_F32 }, bias };
    a->out = (klinear){ { ST_F32, a->w[3], C, C, pk + bq, ST_F32 }, a->b[3] };
    gk->pack(gk, pk, ST_F32, &a->qkv.w, row);
    gk->pack(gk, pk + bq, ST_F32, &a->out.w, row);
    a->qkv.w.data = a->out.w.data = NULL; /* packed: the kernel reads only pk */
    free(stack);
    free(row);
    return DIT_OK;
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

/* Floats of the decoder's tensors (all of them, *total; the largest,
 * *largest) and how many there are. */
static int count_floats(const st_table *t, size_t *total, size_t *largest)
{
    int n = 0;
    *total = *largest = 0;
    for (int i = 0; i < st_count(t); i++) {
        const st_tensor *x = st_at(t, i);
        if (!is_decoder_name(x->name))
            continue;
        n++;
        *total += (size_t)st_numel(x);
        *largest = (size_t)st_numel(x) > *largest ? (size_t)st_numel(x) : *largest;
    }
    return n;
}

int vae_load(vae_model **out, const char *dir, const gemm_kernel *gk, char *err,
             size_t errlen)
{
    char dummy[1], path[4096];
    if (!err)
        err = dummy, errlen = sizeof dummy;
    if (!out || !dir || !gk)
        return ERR(DIT_E_INVAL, "vae_load: NULL argument");
    *out = NULL;
    vae_model *m = calloc(1, sizeof *m);
    binder b = {.m = m, .err = err, .errlen = errlen};
    if (!m)
        return ERR(DIT_E_NOMEM, "%s: out of memory", dir);
    m->gk = gk;
    int rc = cfg_load(&m->cfg, dir, err, errlen);
    snprintf(path, sizeof path, "%s/%s", dir, VAE_WEIGHTS_FILE);
    if (rc == DIT_OK)
        rc = st_open(&m->st, path, err, errlen);
    if (rc == DIT_OK) {
        size_t largest;
        b.cap = count_floats(m->st, &m->w_len, &largest);
        m->w = malloc((m->w_len ? m->w_len : 1) * sizeof(float));
        b.tmp = malloc((largest ? largest : 1) * sizeof(float));
        b.used = malloc((size_t)(b.cap ? b.cap : 1) * sizeof *b.used);
        if (!m->w || !b.tmp || !b.used)
            rc = ERR(DIT_E_NOMEM, "%s: out of memory for the weights", path);
    }
    if (rc == DIT_OK)
        rc = bind_all(&b);
    if (rc == DIT_OK)
        rc = check_leftovers(&b);
    if (rc == DIT_OK && m->cfg.mid_attn)
        rc = attn_pack(m, err, errlen);
    free(b.used);
    free(b.tmp);
    st_close(m->st); /* everything needed is copied */
    m->st = NULL;
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
    free(m->w);
    free(m->attn_pk);
    free(m);
}

int vae_latent_channels(const vae_model *m) { return m->cfg.latent; }
int vae_out_channels(const vae_model *m) { return m->cfg.out; }
int vae_upscale(const vae_model *m) { return 1 << (m->cfg.nblocks - 1); }
size_t vae_weight_bytes(const vae_model *m)
{
    return m->w_used * sizeof(float) + m->attn_pk_bytes;
}

/* ---- plan: buffer sizes and FLOPs of one image ------------------------- */

typedef struct vae_plan {
    size_t act;   /* floats of cur and of alt, each: pitched activations */
    size_t pad;   /* the padded input of a 3x3 conv */
    size_t att;   /* (T, C): attention's xt, and its qkv is three of them */
    size_t kv;    /* attention's K and V^T packs */
    size_t score; /* (tq, T) per thread */
    size_t maxc;  /* widest layer: the GroupNorm coefficients */
    int kmax;     /* most inputs per output of a conv: taps * cin */
    int tq;
    double flops; /* of the convolutions at their true size, and attention */
} vae_plan;

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

/* Accounts for conv c writing an h x w output. */
static void plan_conv(vae_plan *p, const vae_conv *c, int h, int w)
{
    size_t P = (size_t)VAE_PITCH(w);
    if (c->k == 3)
        p->pad = zmax(p->pad, (size_t)c->cin * (h + 2) * P);
    p->act = zmax(p->act, (size_t)c->cout * h * P);
    p->maxc = zmax(p->maxc, (size_t)zmax((size_t)c->cin, (size_t)c->cout));
    p->kmax = c->k * c->k * c->cin > p->kmax ? c->k * c->k * c->cin : p->kmax;
    p->flops += 2.0 * c->cout * c->cin * c->k * c->k * (double)h * w;
}

static void plan_resnet(vae_plan *p, const vae_resnet *r, int h, int w)
{
    plan_conv(p, &r->c1, h, w);
    plan_conv(p, &r->c2, h, w);
    if (r->sc.w)
        plan_conv(p, &r->sc, h, w);
}

/* Sizes for decoding an h x w latent on `threads` threads. */
static void plan_walk(const vae_model *m, int h, int w, int threads, vae_plan *p)
{
    const vae_cfg *c = &m->cfg;
    memset(p, 0, sizeof *p);
    if (c->post_quant)
        plan_conv(p, &m->post_quant, h, w);
    plan_conv(p, &m->conv_in, h, w);
    plan_resnet(p, &m->mid[0], h, w);
    plan_resnet(p, &m->mid[1], h, w);
    if (c->mid_attn) {
        size_t C = (size_t)c->ch[c->nblocks - 1], T = (size_t)h * w;
        p->tq = vae_attention_tile((int)T, threads);
        p->att = C * T;
        p->kv = vae_attention_pack_floats(m->gk, (int)C, (int)T);
        p->score = (size_t)p->tq * T;
        p->flops += 8.0 * C * C * T + 4.0 * C * T * T;
    }
    for (int i = 0; i < c->nblocks; i++) {
        for (int j = 0; j <= c->layers; j++)
            plan_resnet(p, &m->up[i].res[j], h, w);
        if (m->up[i].up.w) {
            h *= 2, w *= 2;
            plan_conv(p, &m->up[i].up, h, w);
        }
    }
    plan_conv(p, &m->conv_out, h, w);
}

/* Floats, rounded up to whole 64-byte lines. */
static size_t lines(size_t floats) { return (floats + 15) / 16 * 16; }

size_t vae_workspace_bytes(const vae_model *m, int threads, int n, int h, int w)
{
    if (!m || threads < 1 || n < 1 || h < 1 || w < 1 || h > VAE_MAX_SIDE / vae_upscale(m) ||
        w > VAE_MAX_SIDE / vae_upscale(m))
        return 0;
    vae_plan p;
    plan_walk(m, h, w, threads, &p);
    size_t f = 2 * lines(p.act) + lines(p.pad) + lines(p.att) + lines(3 * p.att) +
               lines(p.kv) + (size_t)threads * lines(p.score) + 2 * lines(p.maxc) +
               (size_t)threads * lines(vae_pack_floats(m->gk, p.kmax));
    return f * sizeof(float) + 64; /* + 64: aligning the caller's pointer */
}

double vae_decode_flops(const vae_model *m, int h, int w)
{
    vae_plan p;
    plan_walk(m, h, w, 1, &p);
    return p.flops;
}

/* ---- decode ------------------------------------------------------------ */

typedef struct vae_ws {
    struct op_pool *pool; /* or NULL */
    vae_env env;          /* the pool, kernel entry and pack scratch of the convs */
    float *cur, *alt;     /* (C, H, W + 2) activations */
    float *pad;           /* (C, H + 2, W + 2) a 3x3 conv's input */
    float *scale, *shift; /* (C) a GroupNorm's folded affine */
    vae_attn_scratch att;
    int groups;
} vae_ws;

static float *carve(char **at, size_t floats)
{
    float *p = (float *)(void *)*at;
    *at += lines(floats) * sizeof(float);
    return p;
}

static void ws_carve(vae_ws *s, const vae_model *m, const vae_plan *p, void *ws,
                     struct op_pool *pool)
{
    char *at = (char *)ws + (64 - (uintptr_t)ws % 64) % 64;
    size_t pf = lines(vae_pack_floats(m->gk, p->kmax));
    s->pool = pool;
    s->env = (vae_env){ pool, m->gk, NULL, pf };
    s->env.pack = carve(&at, pf * (size_t)op_pool_threads(pool));
    s->cur = carve(&at, p->act);
    s->alt = carve(&at, p->act);
    s->pad = carve(&at, p->pad);
    s->scale = carve(&at, p->maxc);
    s->shift = carve(&at, p->maxc);
    s->att.xt = carve(&at, p->att);
    s->att.qkv = carve(&at, 3 * p->att);
    s->att.kv = carve(&at, p->kv);
    s->att.s = carve(&at, lines(p->score) * (size_t)op_pool_threads(pool));
    s->att.tq = p->tq;
    s->groups = m->cfg.groups;
}

/* scale, shift = GroupNorm n of x (C, h, w + 2) as a per-channel affine */
static void norm_coef(vae_ws *s, const vae_norm *n, const float *x, int h, int w)
{
    vae_groupnorm_coef_forward(s->pool, s->scale, s->shift, x, n->g, n->b, n->c, h, w,
                               VAE_PITCH(w), s->groups, VAE_GN_EPS);
}

/* pad = zero-padded silu(GroupNorm n of x (C, h, w + 2)) */
static void norm_silu_pad(vae_ws *s, const vae_norm *n, const float *x, int h, int w)
{
    norm_coef(s, n, x, h, w);
    vae_pad_forward(s->pool, s->pad, x, n->c, h, w, VAE_PITCH(w), 1, s->scale, s->shift, 1);
}

/* out (cout, h, w + 2) [+]= conv c of the padded input */
static void conv3(vae_ws *s, float *out, const vae_conv *c, int h, int w, int accumulate)
{
    vae_conv3x3_forward(&s->env, out, s->pad, c->w, c->b, c->cin, c->cout, h, w, accumulate);
}

static void swap(vae_ws *s)
{
    float *t = s->cur;
    s->cur = s->alt;
    s->alt = t;
}

/* cur (cout, h, w+2) = shortcut(cur) + conv2(silu(gn2(conv1(silu(gn1(cur)))))) */
static void resnet_forward(vae_ws *s, const vae_resnet *r, int h, int w)
{
    norm_silu_pad(s, &r->n1, s->cur, h, w);               // pad (cin, h+2, w+2)
    conv3(s, s->alt, &r->c1, h, w, 0);                    // alt (cout, h, w+2)
    norm_silu_pad(s, &r->n2, s->alt, h, w);               // pad (cout, h+2, w+2)
    if (r->sc.w) { /* alt's inside is in pad now: alt takes the shortcut */
        vae_conv1x1_forward(&s->env, s->alt, s->cur, r->sc.w, r->sc.b, r->sc.cin,
                            r->sc.cout, h * VAE_PITCH(w)); // alt (cout, h, w+2)
        swap(s);
    }
    conv3(s, s->cur, &r->c2, h, w, 1);                    // cur (cout, h, w+2) +=
}

/* One latent z (latent, h, w) to rgb (out, h*up, w*up). */
static void decode_one(const vae_model *m, vae_ws *s, int h, int w,
                       const float *z, float *rgb)
{
    const vae_cfg *c = &m->cfg;
    const float *x = z;
    if (c->post_quant) {
        vae_conv1x1_forward(&s->env, s->alt, z, m->post_quant.w, m->post_quant.b,
                            c->latent, c->latent, h * w);  // alt (latent, h, w)
        x = s->alt;
    }
    vae_pad_forward(s->pool, s->pad, x, c->latent, h, w, w, 1, NULL, NULL, 0);
    conv3(s, s->cur, &m->conv_in, h, w, 0);               // cur (top, h, w+2)
    resnet_forward(s, &m->mid[0], h, w);
    if (c->mid_attn) {
        norm_coef(s, &m->attn.n, s->cur, h, w);
        vae_attention_forward(&s->env, s->cur, &m->attn.qkv, &m->attn.out, s->scale,
                              s->shift, m->attn.n.c, h, w, VAE_PITCH(w), &s->att);
    }
    resnet_forward(s, &m->mid[1], h, w);
    for (int i = 0; i < c->nblocks; i++) {
        const vae_conv *u = &m->up[i].up;
        for (int j = 0; j <= c->layers; j++)
            resnet_forward(s, &m->up[i].res[j], h, w);
        if (u->w) {
            vae_pad_forward(s->pool, s->pad, s->cur, u->cin, h, w, VAE_PITCH(w), 2, NULL,
                            NULL, 0);                     // pad (C, 2h+2, 2w+2)
            h *= 2, w *= 2;
            conv3(s, s->cur, u, h, w, 0);                 // cur (C, h, w+2)
        }
    }
    norm_silu_pad(s, &m->norm_out, s->cur, h, w);         // pad (C0, H+2, W+2)
    conv3(s, s->alt, &m->conv_out, h, w, 0);              // alt (out, H, W+2)
    vae_unpitch_forward(rgb, s->alt, c->out, h, w, VAE_PITCH(w)); // rgb (out, H, W)
}

int vae_decode(const vae_model *m, struct op_pool *pool, void *ws,
               size_t ws_bytes, int n, int h, int w, const float *z, float *rgb)
{
    size_t need = vae_workspace_bytes(m, op_pool_threads(pool), n, h, w);
    if (!need || !ws || ws_bytes < need || !z || !rgb)
        return DIT_E_INVAL;
    vae_plan p;
    vae_ws s;
    plan_walk(m, h, w, op_pool_threads(pool), &p);
    ws_carve(&s, m, &p, ws, pool);
    int up = vae_upscale(m);
    size_t zin = (size_t)m->cfg.latent * h * w;
    size_t zout = (size_t)m->cfg.out * h * up * w * up;
    for (int i = 0; i < n; i++)
        decode_one(m, &s, h, w, z + (size_t)i * zin, rgb + (size_t)i * zout);
    return DIT_OK;
}
