/* model.c: loading a DiT-MoE model and binding its weights.
 *
 * A model is a directory with config.json and model.safetensors (or a .pt
 * checkpoint), or a weight file alone, in which case config.json beside it
 * is used, or failing that a preset matched on the tensor shapes (the
 * published checkpoints come without a config). Binding walks the upstream
 * state_dict names the config implies, checks every tensor's presence,
 * dtype and shape, and refuses leftovers, so a config that disagrees with
 * its weights is an error naming the tensor, never a garbage image.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "preset.h"
#include "names.h"

#define ERR(...) (snprintf(err, errlen, __VA_ARGS__), DIT_E_FORMAT)

/* ---- binding ------------------------------------------------------------ */

typedef struct binder {
    dit_model *m;
    char *used;       /* (st_count) which tensors were bound */
    char *err;
    size_t errlen;
} binder;

static const st_tensor *bind_find(binder *b, const char *name, int ndim,
                                  const int64_t *shape, const char *why)
{
    char *err = b->err;
    size_t errlen = b->errlen;
    const st_table *t = b->m->weights;
    const st_tensor *x = st_find(t, name);
    if (!x) {
        (void)ERR("%s: tensor '%s' is missing (%s)", st_path(t), name, why);
        return NULL;
    }
    if (!dtype_get(x->dtype)) {
        (void)ERR("%s: tensor '%s' has dtype %s; weights must be F32, F16 or BF16",
            st_path(t), name, st_dtype_name(x->dtype));
        return NULL;
    }
    int ok = x->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = x->shape[i] == shape[i];
    if (!ok) {
        char got[96] = "", want[96] = "";
        for (int i = 0; i < x->ndim && i < 6; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "",
                     (long long)x->shape[i]);
        for (int i = 0; i < ndim; i++)
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "",
                     (long long)shape[i]);
        (void)ERR("%s: tensor '%s' has shape [%s] but the config needs [%s] (%s)", st_path(t),
            name, got, want, why);
        return NULL;
    }
    b->used[x - st_at(t, 0)] = 1;
    return x;
}

/* Binds one tensor of the list: a matrix as a view into the table (rows =
 * shape[0], the other dimensions flattened), a vector widened to F32 into
 * model memory. */
static int bind_one(void *user, const tensor_ref *r)
{
    binder *b = user;
    dit_model *m = b->m;
    const st_tensor *x = bind_find(b, r->name, r->ndim, r->shape, r->why);
    if (!x)
        return DIT_E_FORMAT;
    uint64_t n = st_numel(x);
    if (r->kind == TENSOR_MAT) {
        int rows = (int)r->shape[0], cols = (int)(n / (uint64_t)rows);
        *r->mat = (kmat){ x->dtype, x->data, rows, cols, NULL, 0 };
        if (x->dtype != ST_F32 && rows * cols > m->max_mat_elems)
            m->max_mat_elems = rows * cols;
        return DIT_OK;
    }
    if (m->f32_used + n > m->f32_len)
        return DIT_E_NOMEM;
    float *dst = m->f32 + m->f32_used;
    m->f32_used += n;
    dtype_get(x->dtype)->to_f32(dst, x->data, (size_t)n);
    *r->vec = dst;
    return DIT_OK;
}

static void model_count(dit_model *m)
{
    const dit_config *g = &m->cfg;
    dit_model_info *in = &m->info;
    int dtypes = 0;
    for (int i = 0; i < st_count(m->weights); i++) {
        const st_tensor *x = st_at(m->weights, i);
        in->params_total += st_numel(x);
        in->weight_bytes += x->nbytes;
        dtypes |= 1 << x->dtype;
    }
    uint64_t expert = 3ull * (uint64_t)g->hidden_size * (uint64_t)g->expert_hidden;
    in->params_active = in->params_total -
        (uint64_t)(g->num_experts - g->num_experts_per_tok) * expert * (uint64_t)g->depth;
    in->weight_dtype = dtypes == 1 << ST_F32 ? "F32" : dtypes == 1 << ST_F16 ? "F16"
                     : dtypes == 1 << ST_BF16 ? "BF16" : "mixed";
}

int model_bind(dit_model *m, char *err, size_t errlen)
{
    const dit_config *g = &m->cfg;
    int n = st_count(m->weights), rc = DIT_OK;
    binder b = { m, calloc((size_t)n + 1, 1), err, errlen };
    /* widened copies: every bias, the label table and pos_embed */
    uint64_t small = (uint64_t)(g->num_classes + 1) * g->hidden_size +
                     (uint64_t)g->num_tokens * g->hidden_size;
    for (int i = 0; i < n; i++)
        if (st_at(m->weights, i)->ndim == 1)
            small += st_numel(st_at(m->weights, i));
    m->f32_len = small;
    m->f32 = malloc(sizeof(float) * (size_t)small);
    m->blocks = calloc((size_t)g->depth, sizeof *m->blocks);
    int experts_ok = m->blocks != NULL;
    for (int l = 0; experts_ok && l < g->depth; l++)
        experts_ok = !!(m->blocks[l].experts = calloc((size_t)g->num_experts,
                                                      sizeof(model_expert)));
    if (!b.used || !m->f32 || !experts_ok) {
        rc = DIT_E_NOMEM;
        goto out;
    }
    m->has_null = g->class_dropout_prob > 0;
    if ((rc = names_each(m, g, m->has_null, bind_one, &b)))
        goto out;
    for (int i = 0; rc == DIT_OK && i < n; i++)
        if (!b.used[i])
            rc = ERR("%s: tensor '%s' is not part of a model with this config "
                     "(depth %d, num_experts %d): config and weights disagree",
                     st_path(m->weights), st_at(m->weights, i)->name, g->depth, g->num_experts);
    if (rc == DIT_OK)
        model_count(m);
out:
    free(b.used);
    return rc;
}

/* ---- packing ------------------------------------------------------------ */

void dit_model_settings_default(dit_model_settings *s)
{
    if (s)
        s->pack_weights = 1;
}

/* Where the packs go: base (NULL: only count) + pos; row: widening
 * scratch as long as the widest matrix row. */
typedef struct packer {
    dit_model *m;
    char *base;
    size_t pos;
    float *row;
} packer;

/* Packs w at the packer's position. */
static void pack_mat(packer *k, kmat *w)
{
    int dtype = gemm_pack_dtype(w, NULL);
    const gemm_kernel *gk = k->m->gk;
    if (k->base) {
        gk->pack(gk, k->base + k->pos, dtype, w, k->row);
        w->pk = k->base + k->pos;
        w->pk_dtype = dtype;
        st_drop(k->m->weights, w->data, (size_t)w->rows * w->cols * st_dtype_size(w->dtype));
    }
    k->pos += gk->pack_bytes(gk, w->rows, w->cols, 0, dtype);
}

/* An expert: gate and up as one GLU pack, down alone. */
static void pack_expert(packer *k, model_expert *e)
{
    int dtype = gemm_pack_dtype(&e->gu.gate, &e->gu.up);
    const gemm_kernel *gk = k->m->gk;
    if (k->base) {
        gk->pack_glu(gk, k->base + k->pos, dtype, &e->gu.gate, &e->gu.up, k->row);
        e->gu.pk = k->base + k->pos;
        e->gu.pk_dtype = dtype;
        size_t n = (size_t)e->gu.gate.rows * e->gu.gate.cols;
        st_drop(k->m->weights, e->gu.gate.data, n * st_dtype_size(e->gu.gate.dtype));
        st_drop(k->m->weights, e->gu.up.data, n * st_dtype_size(e->gu.up.dtype));
    }
    k->pos += gk->pack_bytes(gk, e->gu.gate.rows, e->gu.gate.cols, 1, dtype);
    pack_mat(k, &e->down);
}

/* Walks every matrix of the model; k->pos ends at the bytes the packs take. */
static void pack_all(packer *k)
{
    dit_model *m = k->m;
    pack_mat(k, &m->patch.w);
    pack_mat(k, &m->t_mlp0.w);
    pack_mat(k, &m->t_mlp2.w);
    for (int l = 0; l < m->cfg.depth; l++) {
        model_block *b = &m->blocks[l];
        pack_mat(k, &b->ada.w);
        pack_mat(k, &b->qkv.w);
        pack_mat(k, &b->proj.w);
        pack_mat(k, &b->router);
        for (int e = 0; e < m->cfg.num_experts; e++)
            pack_expert(k, &b->experts[e]);
        pack_expert(k, &b->shared);
    }
    pack_mat(k, &m->final_ada.w);
    pack_mat(k, &m->final_lin.w);
}

int model_pack(dit_model *m, const dit_model_settings *s, const char *name, char *err,
               size_t errlen)
{
    dit_model_settings set;
    dit_model_settings_default(&set);
    if (s)
        set = *s;
    int rc = gemm_kernel_choose(&m->gk, err, errlen);
    if (rc)
        return rc;
    m->info.kernel = m->gk->name;
    if (!set.pack_weights)
        return DIT_OK;
    const dit_config *g = &m->cfg;
    int widest = g->hidden_size > 256 ? g->hidden_size : 256; /* t_mlp0 reads 256 */
    widest = g->expert_hidden > widest ? g->expert_hidden : widest;
    widest = g->shared_hidden > widest ? g->shared_hidden : widest;
    widest = g->in_channels * g->patch_size * g->patch_size > widest
                 ? g->in_channels * g->patch_size * g->patch_size : widest;
    packer k = { m, NULL, 0, malloc(sizeof(float) * (size_t)widest) };
    if (k.row)
        pack_all(&k); /* counts */
    size_t n = k.pos;
    m->packed = k.row ? aligned_alloc(64, n) : NULL;
    if (!m->packed) {
        free(k.row);
        snprintf(err, errlen, "%s: out of memory packing the weights", name);
        return DIT_E_NOMEM;
    }
    k.base = m->packed;
    k.pos = 0;
    pack_all(&k);
    free(k.row);
    m->max_mat_elems = 0; /* nothing is widened per use any more */
    m->info.packed = 1;
    /* resident: the packs plus the small tensors widened at bind */
    m->info.weight_bytes = n + m->f32_len * sizeof(float);
    return DIT_OK;
}
