/* names.c: the one list of upstream tensor names (see names.h).
 *
 * Written as code rather than data: block and expert names carry indices,
 * and each entry also says where the model keeps the tensor. Shapes follow
 * upstream models.py: Linear weights are (out, in), the patch embedding is
 * a conv kernel (D, C, P, P) used as a (D, C*P*P) matrix.
 */
#include <stdio.h>

#include "names.h"

typedef struct walk {
    tensor_fn fn;
    void *user;
    char name[160];
} walk;

static int emit(walk *w, int kind, int ndim, const int64_t *shape, int fan_in, kmat *mat,
                const float **vec, const char *why)
{
    tensor_ref r = { w->name, ndim, { 0 }, fan_in, kind, mat, vec, why };
    for (int i = 0; i < ndim; i++)
        r.shape[i] = shape[i];
    return w->fn(w->user, &r);
}

/* PREFIX.weight (rows, cols) and, with bias, PREFIX.bias (rows) */
static int linear(walk *w, const char *prefix, int rows, int cols, klinear *l, int bias,
                  const char *why)
{
    int64_t ws[2] = { rows, cols }, bs[1] = { rows };
    snprintf(w->name, sizeof w->name, "%s.weight", prefix);
    int rc = emit(w, TENSOR_MAT, 2, ws, cols, l ? &l->w : NULL, NULL, why);
    if (rc || !bias)
        return rc;
    snprintf(w->name, sizeof w->name, "%s.bias", prefix);
    return emit(w, TENSOR_VEC, 1, bs, cols, NULL, l ? &l->b : NULL, why);
}

static int expert(walk *w, const char *prefix, int D, int H, model_expert *e, const char *why)
{
    static const char *const part[] = { "gate_proj", "up_proj", "down_proj" };
    kmat *slot[3] = { e ? &e->gu.gate : NULL, e ? &e->gu.up : NULL, e ? &e->down : NULL };
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++) {
        int64_t shape[2] = { i < 2 ? H : D, i < 2 ? D : H };
        snprintf(w->name, sizeof w->name, "%s.%s.weight", prefix, part[i]);
        rc = emit(w, TENSOR_MAT, 2, shape, (int)shape[1], slot[i], NULL, why);
    }
    return rc;
}

static int block(walk *w, dit_model *m, const dit_config *g, int l)
{
    int D = g->hidden_size, E = g->num_experts, rc;
    model_block *k = m ? &m->blocks[l] : NULL;
    char p[128];
    snprintf(p, sizeof p, "blocks.%d.adaLN_modulation.1", l);
    if ((rc = linear(w, p, 6 * D, D, k ? &k->ada : NULL, 1, "6 x hidden_size, hidden_size")))
        return rc;
    snprintf(p, sizeof p, "blocks.%d.attn.qkv", l);
    if ((rc = linear(w, p, 3 * D, D, k ? &k->qkv : NULL, 1, "3 x hidden_size, hidden_size")))
        return rc;
    snprintf(p, sizeof p, "blocks.%d.attn.proj", l);
    if ((rc = linear(w, p, D, D, k ? &k->proj : NULL, 1, "hidden_size, hidden_size")))
        return rc;
    int64_t rs[2] = { E, D };
    snprintf(w->name, sizeof w->name, "blocks.%d.moe.gate.weight", l);
    if ((rc = emit(w, TENSOR_MAT, 2, rs, D, k ? &k->router : NULL, NULL,
                   "num_experts, hidden_size")))
        return rc;
    for (int e = 0; e < E; e++) {
        snprintf(p, sizeof p, "blocks.%d.moe.experts.%d", l, e);
        if ((rc = expert(w, p, D, g->expert_hidden, k ? &k->experts[e] : NULL,
                         "expert width mlp_ratio x hidden_size")))
            return rc;
    }
    snprintf(p, sizeof p, "blocks.%d.moe.shared_experts", l);
    return expert(w, p, D, g->shared_hidden, k ? &k->shared : NULL,
                  "shared width n_shared_experts x hidden_size");
}

int names_each(dit_model *m, const dit_config *g, int has_null, tensor_fn fn, void *user)
{
    walk w = { fn, user, "" };
    int D = g->hidden_size, P = g->patch_size, C = g->in_channels, rc;
    int64_t pw[4] = { D, C, P, P }, pb[1] = { D }, pos[3] = { 1, g->num_tokens, D };
    int64_t yt[2] = { g->num_classes + has_null, D };
    snprintf(w.name, sizeof w.name, "x_embedder.proj.weight");
    if ((rc = emit(&w, TENSOR_MAT, 4, pw, C * P * P, m ? &m->patch.w : NULL, NULL,
                   "hidden_size, in_channels, patch_size, patch_size")))
        return rc;
    snprintf(w.name, sizeof w.name, "x_embedder.proj.bias");
    if ((rc = emit(&w, TENSOR_VEC, 1, pb, C * P * P, NULL, m ? &m->patch.b : NULL,
                   "hidden_size")))
        return rc;
    snprintf(w.name, sizeof w.name, "pos_embed");
    if ((rc = emit(&w, TENSOR_VEC, 3, pos, 1, NULL, m ? &m->pos_embed : NULL,
                   "1, tokens, hidden_size")))
        return rc;
    if ((rc = linear(&w, "t_embedder.mlp.0", D, 256, m ? &m->t_mlp0 : NULL, 1,
                     "hidden_size, 256")) ||
        (rc = linear(&w, "t_embedder.mlp.2", D, D, m ? &m->t_mlp2 : NULL, 1,
                     "hidden_size, hidden_size")))
        return rc;
    snprintf(w.name, sizeof w.name, "y_embedder.embedding_table.weight");
    if ((rc = emit(&w, TENSOR_VEC, 2, yt, 1, NULL, m ? &m->y_table : NULL,
                   has_null ? "num_classes + 1 (null class), hidden_size"
                            : "num_classes (class_dropout_prob 0: no null class), hidden_size")))
        return rc;
    for (int l = 0; l < g->depth; l++)
        if ((rc = block(&w, m, g, l)))
            return rc;
    if ((rc = linear(&w, "final_layer.adaLN_modulation.1", 2 * D, D, m ? &m->final_ada : NULL,
                     1, "2 x hidden_size, hidden_size")))
        return rc;
    return linear(&w, "final_layer.linear", P * P * g->out_channels, D,
                  m ? &m->final_lin : NULL, 1, "patch_size^2 x out_channels, hidden_size");
}
