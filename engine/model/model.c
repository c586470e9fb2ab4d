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
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "preset.h"
#include "int8.h"
#include "names.h"

#define ERR(...) (snprintf(err, errlen, __VA_ARGS__), DIT_E_FORMAT)

/* ---- binding ------------------------------------------------------------ */

typedef struct binder {
    dit_model *m;
    char *used;       /* (st_count) which tensors were bound */
    char *err;
    size_t errlen;
} binder;

/* "2, 3" into buf (at most 6 dimensions). */
static void fmt_shape(char *buf, size_t len, int ndim, const int64_t *shape)
{
    buf[0] = 0;
    for (int i = 0; i < ndim && i < 6; i++)
        snprintf(buf + strlen(buf), len - strlen(buf), "%s%lld", i ? ", " : "",
                 (long long)shape[i]);
}

/* The tensor `name` of the given shape in a float dtype (or I8 when
 * matrix: a Q8 matrix's values), marked used; NULL after an error. */
static const st_tensor *bind_find(binder *b, const char *name, int ndim,
                                  const int64_t *shape, int matrix, const char *why)
{
    char *err = b->err;
    size_t errlen = b->errlen;
    const st_table *t = b->m->weights;
    const st_tensor *x = st_find(t, name);
    if (!x) {
        (void)ERR("%s: tensor '%s' is missing (%s)", st_path(t), name, why);
        return NULL;
    }
    if (x->dtype != ST_F32 && x->dtype != ST_F16 && x->dtype != ST_BF16 &&
        !(matrix && x->dtype == ST_I8)) {
        (void)ERR("%s: tensor '%s' has dtype %s; weights must be F32, F16 or BF16%s",
            st_path(t), name, st_dtype_name(x->dtype),
            matrix ? ", or I8 with an F16 scale tensor (Q8)" : " (I8 only for 2-D weight matrices)");
        return NULL;
    }
    int ok = x->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = x->shape[i] == shape[i];
    if (!ok) {
        char got[96], want[96];
        fmt_shape(got, sizeof got, x->ndim, x->shape);
        fmt_shape(want, sizeof want, ndim, shape);
        (void)ERR("%s: tensor '%s' has shape [%s] but the config needs [%s] (%s)", st_path(t),
            name, got, want, why);
        return NULL;
    }
    b->used[x - st_at(t, 0)] = 1;
    return x;
}

/* The F16 scales of the I8 matrix x (rows, cols), checked, marked used. */
static const st_tensor *bind_q8_scale(binder *b, const st_tensor *x, int rows, int cols)
{
    char *err = b->err, sname[200];
    size_t errlen = b->errlen;
    const st_table *t = b->m->weights;
    snprintf(sname, sizeof sname, "%s_scale", x->name);
    const st_tensor *s = st_find(t, sname);
    if (cols % Q8_BLOCK) {
        (void)ERR("%s: tensor '%s' is I8 (Q8) but its %d columns are not a multiple of %d, "
                  "the Q8 block", st_path(t), x->name, cols, Q8_BLOCK);
        return NULL;
    }
    if (!s) {
        (void)ERR("%s: tensor '%s' is I8 (Q8 values) but its scale tensor '%s' is missing",
                  st_path(t), x->name, sname);
        return NULL;
    }
    if (s->dtype != ST_F16) {
        (void)ERR("%s: tensor '%s' has dtype %s; Q8 scales must be F16", st_path(t), sname,
                  st_dtype_name(s->dtype));
        return NULL;
    }
    if (s->ndim != 2 || s->shape[0] != rows || s->shape[1] != cols / Q8_BLOCK) {
        char got[96];
        fmt_shape(got, sizeof got, s->ndim, s->shape);
        (void)ERR("%s: tensor '%s' has shape [%s] but the Q8 weight '%s' [%d, %d] needs "
                  "scales [%d, %d] (one per %d columns)", st_path(t), sname, got, x->name,
                  rows, cols, rows, cols / Q8_BLOCK, Q8_BLOCK);
        return NULL;
    }
    const uint16_t *d = s->data;
    for (uint64_t i = 0; i < st_numel(s); i++)
        if ((d[i] & 0x7c00) == 0x7c00) {
            (void)ERR("%s: tensor '%s': scale %g of block %llu is not finite", st_path(t),
                      sname, (double)f16_to_f32(d[i]), (unsigned long long)i);
            return NULL;
        }
    b->used[s - st_at(t, 0)] = 1;
    return s;
}

/* Joins an I8 matrix and its scales into Q8 blocks the model owns and
 * gives the mapped pages of both back. */
static int bind_q8(binder *b, const st_tensor *x, int rows, int cols, kmat *out)
{
    const st_tensor *s = bind_q8_scale(b, x, rows, cols);
    if (!s)
        return DIT_E_FORMAT;
    dit_model *m = b->m;
    size_t n = (size_t)rows * (size_t)cols, nb = n / Q8_BLOCK;
    if (m->q8_used + nb > m->q8_len)
        return DIT_E_NOMEM;
    q8_block *dst = m->q8 + m->q8_used;
    m->q8_used += nb;
    q8_join(dst, x->data, s->data, n);
    st_drop(m->weights, x->data, (size_t)x->nbytes);
    st_drop(m->weights, s->data, (size_t)s->nbytes);
    *out = (kmat){ ST_Q8, dst, rows, cols, NULL, 0 };
    return DIT_OK;
}

/* Binds one tensor of the list: a matrix as a view into the table (rows =
 * shape[0], the other dimensions flattened; an I8 matrix joined with its
 * scales into Q8 blocks), a vector widened to F32 into model memory. */
static int bind_one(void *user, const tensor_ref *r)
{
    binder *b = user;
    dit_model *m = b->m;
    int matrix = r->kind == TENSOR_MAT && r->ndim == 2;
    const st_tensor *x = bind_find(b, r->name, r->ndim, r->shape, matrix, r->why);
    if (!x)
        return DIT_E_FORMAT;
    uint64_t n = st_numel(x);
    if (r->kind == TENSOR_MAT) {
        int rows = (int)r->shape[0], cols = (int)(n / (uint64_t)rows);
        char sname[200];
        snprintf(sname, sizeof sname, "%s_scale", r->name);
        if (x->dtype == ST_I8) {
            int rc = bind_q8(b, x, rows, cols, r->mat);
            if (rc)
                return rc;
        } else if (st_find(m->weights, sname)) {
            char *err = b->err;
            size_t errlen = b->errlen;
            return ERR("%s: tensor '%s' is a Q8 scale, but '%s' is %s, not I8",
                       st_path(m->weights), sname, r->name, st_dtype_name(x->dtype));
        } else {
            *r->mat = (kmat){ x->dtype, x->data, rows, cols, NULL, 0 };
        }
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

/* Calls fn once for every weight matrix of the model: an expert's gate and
 * up as their pair (w NULL), every other matrix alone (g NULL). */
typedef void (*mat_fn)(void *arg, kmat *w, kglu *g);

static void each_mat(dit_model *m, mat_fn fn, void *arg)
{
    fn(arg, &m->patch.w, NULL);
    fn(arg, &m->t_mlp0.w, NULL);
    fn(arg, &m->t_mlp2.w, NULL);
    for (int l = 0; l < m->cfg.depth; l++) {
        model_block *b = &m->blocks[l];
        fn(arg, &b->ada.w, NULL);
        fn(arg, &b->qkv.w, NULL);
        fn(arg, &b->proj.w, NULL);
        fn(arg, &b->router, NULL);
        for (int e = 0; e <= m->cfg.num_experts; e++) { /* the last: shared */
            model_expert *x = e < m->cfg.num_experts ? &b->experts[e] : &b->shared;
            fn(arg, NULL, &x->gu);
            fn(arg, &x->down, NULL);
        }
    }
    fn(arg, &m->final_ada.w, NULL);
    fn(arg, &m->final_lin.w, NULL);
}

/* Weight memory by dtype (indexed by enum st_dtype) as count_mat sums it. */
typedef struct counter {
    const gemm_kernel *gk;  /* the packs' kernel entry, or NULL: unpacked */
    dit_info_dtype held[ST_Q8 + 1];
} counter;

/* Adds a matrix's parameters and held bytes to the row of its dtype. */
static void count_mat(void *arg, kmat *w, kglu *g)
{
    counter *c = arg;
    if (g && !g->pk) {
        count_mat(arg, &g->gate, NULL);
        count_mat(arg, &g->up, NULL);
        return;
    }
    const kmat *x = g ? &g->gate : w;
    int dtype = g ? g->pk_dtype : x->pk ? x->pk_dtype : x->dtype;
    uint64_t n = (uint64_t)x->rows * (uint64_t)x->cols * (g ? 2 : 1);
    c->held[dtype].params += n;
    c->held[dtype].bytes += x->pk || g ? c->gk->pack_bytes(c->gk, x->rows, x->cols, g != NULL, dtype)
                                       : dtype_bytes(dtype, (size_t)n);
}

/* The info of a bound (and maybe packed) model: parameters, and the
 * weight memory by the dtype it is held in (small tensors are F32). */
static void model_count(dit_model *m)
{
    const dit_config *g = &m->cfg;
    dit_model_info *in = &m->info;
    counter c;
    memset(&c, 0, sizeof c);
    c.gk = m->gk;
    each_mat(m, count_mat, &c);
    dit_info_dtype *held = c.held;
    held[ST_F32].params += m->f32_len;
    held[ST_F32].bytes += m->f32_len * sizeof(float);
    in->params_total = in->weight_bytes = 0;
    in->n_dtypes = 0;
    int stored = -1; /* the matrices' dtype when they all agree, else -2 */
    for (int d = 0; d <= ST_Q8; d++) {
        if (!held[d].params)
            continue;
        held[d].dtype = st_dtype_name(d);
        in->held[in->n_dtypes++] = held[d];
        in->params_total += held[d].params;
        in->weight_bytes += held[d].bytes;
    }
    for (int i = 0; i < st_count(m->weights); i++) {
        const st_tensor *x = st_at(m->weights, i);
        int d = x->dtype == ST_I8 ? ST_Q8 : x->dtype;
        if (x->ndim == 2 && !strstr(x->name, "_scale") && !strstr(x->name, "embedding_table"))
            stored = stored == -1 || stored == d ? d : -2;
    }
    uint64_t expert = 3ull * (uint64_t)g->hidden_size * (uint64_t)g->expert_hidden;
    in->params_active = in->params_total -
        (uint64_t)(g->num_experts - g->num_experts_per_tok) * expert * (uint64_t)g->depth;
    in->weight_dtype = stored >= 0 ? st_dtype_name(stored) : "mixed";
}

int model_q8_tensor(const char *name, int ndim, const int64_t *shape)
{
    static const char *const kinds[] = { ".gate_proj.weight", ".up_proj.weight",
                                         ".down_proj.weight" };
    size_t len = strlen(name);
    if (ndim != 2 || shape[1] % Q8_BLOCK || strncmp(name, "blocks.", 7) ||
        (!strstr(name, ".moe.experts.") && !strstr(name, ".moe.shared_experts.")))
        return 0;
    for (int i = 0; i < 3; i++)
        if (len > strlen(kinds[i]) && !strcmp(name + len - strlen(kinds[i]), kinds[i]))
            return 1;
    return 0;
}

int model_bind(dit_model *m, char *err, size_t errlen)
{
    const dit_config *g = &m->cfg;
    int n = st_count(m->weights), rc = DIT_OK;
    binder b = { m, calloc((size_t)n + 1, 1), err, errlen };
    /* widened copies: every bias, the label table and pos_embed */
    uint64_t small = (uint64_t)(g->num_classes + 1) * g->hidden_size +
                     (uint64_t)g->num_tokens * g->hidden_size;
    size_t q8 = 0; /* blocks of every I8 matrix (whole rows only) */
    for (int i = 0; i < n; i++) {
        const st_tensor *x = st_at(m->weights, i);
        if (x->ndim == 1)
            small += st_numel(x);
        if (x->dtype == ST_I8 && x->ndim == 2)
            q8 += (size_t)x->shape[0] * (size_t)(x->shape[1] / Q8_BLOCK);
    }
    m->f32_len = small;
    m->f32 = malloc(sizeof(float) * (size_t)small);
    m->q8_len = q8;
    m->q8 = NULL;
    if (q8) { /* a mapping, so packing can give its pages back (q8_drop) */
        void *p = mmap(NULL, q8 * sizeof *m->q8, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        m->q8 = p == MAP_FAILED ? NULL : p;
    }
    m->blocks = calloc((size_t)g->depth, sizeof *m->blocks);
    int experts_ok = m->blocks != NULL;
    for (int l = 0; experts_ok && l < g->depth; l++)
        experts_ok = !!(m->blocks[l].experts = calloc((size_t)g->num_experts,
                                                      sizeof(model_expert)));
    if (!b.used || !m->f32 || (q8 && !m->q8) || !experts_ok) {
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
    if (s) {
        s->pack_weights = 1;
        s->compute = DIT_COMPUTE_F32;
    }
}

int dit_compute_parse(const char *name)
{
    return !name ? -1 : !strcmp(name, "f32") ? DIT_COMPUTE_F32
         : !strcmp(name, "int8") ? DIT_COMPUTE_INT8 : -1;
}

int model_check_compute(const dit_model *m, const dit_model_settings *s, char *err,
                        size_t errlen)
{
    if (!s || s->compute == DIT_COMPUTE_F32)
        return DIT_OK;
    if (s->compute != DIT_COMPUTE_INT8) {
        snprintf(err, errlen, "compute: %d is not f32 (0) or int8 (1)", s->compute);
        return DIT_E_INVAL;
    }
    if (!int8_cpu_has_vnni())
        snprintf(err, errlen, "compute int8: this CPU has no int8 dot-product instructions "
                 "(AVX-512 VNNI or AVX-VNNI), so it is refused rather than run in F32; use "
                 "compute f32 (8-bit weights still halve the memory against F16)");
    else if (!m->q8_len)
        snprintf(err, errlen, "compute int8: the model has no 8-bit weights (convert it with "
                 "ditmoe convert --dtype q8)");
    else
        snprintf(err, errlen, "compute int8: this build has no VNNI kernel yet (only the "
                 "integer reference, engine/kernels/int8.c); use compute f32");
    return DIT_E_UNSUPPORTED;
}

/* Where the packs go: base (NULL: only count) + pos; row: widening
 * scratch as long as the widest matrix row. */
typedef struct packer {
    dit_model *m;
    char *base;
    size_t pos;
    float *row;
} packer;

/* The model will not read the Q8 blocks at p (n bytes) again: the whole
 * pages of m->q8 they cover are freed (packing a G/2 would otherwise hold
 * its 8-bit experts twice). Not Q8 memory: a no-op. */
static void q8_drop(const dit_model *m, const void *p, size_t n)
{
    const char *base = (const char *)m->q8, *c = p;
    size_t len = m->q8_len * sizeof *m->q8, page = (size_t)sysconf(_SC_PAGESIZE);
    if (!base || c < base || n > len || (size_t)(c - base) > len - n)
        return;
    uintptr_t a = ((uintptr_t)c + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t b = ((uintptr_t)c + n) & ~(uintptr_t)(page - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

/* Packs a matrix, or an expert's gate and up as one GLU pack, at the
 * packer's position (each_mat's callback). */
static void pack_one(void *arg, kmat *w, kglu *g)
{
    packer *k = arg;
    const kmat *x = g ? &g->gate : w;
    const gemm_kernel *gk = k->m->gk;
    int dtype = gemm_pack_dtype(x, g ? &g->up : NULL);
    if (k->base) {
        void *dst = k->base + k->pos;
        size_t n = (size_t)x->rows * x->cols;
        if (g) {
            gk->pack_glu(gk, dst, dtype, &g->gate, &g->up, k->row);
            g->pk = dst;
            g->pk_dtype = dtype;
            st_drop(k->m->weights, g->up.data, dtype_bytes(g->up.dtype, n));
            q8_drop(k->m, g->up.data, dtype_bytes(g->up.dtype, n));
        } else {
            gk->pack(gk, dst, dtype, w, k->row);
            w->pk = dst;
            w->pk_dtype = dtype;
        }
        st_drop(k->m->weights, x->data, dtype_bytes(x->dtype, n));
        q8_drop(k->m, x->data, dtype_bytes(x->dtype, n));
    }
    k->pos += gk->pack_bytes(gk, x->rows, x->cols, g != NULL, dtype);
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
        each_mat(m, pack_one, &k); /* counts */
    size_t n = k.pos;
    m->packed = k.row ? aligned_alloc(64, n) : NULL;
    if (!m->packed) {
        free(k.row);
        snprintf(err, errlen, "%s: out of memory packing the weights", name);
        return DIT_E_NOMEM;
    }
    k.base = m->packed;
    k.pos = 0;
    each_mat(m, pack_one, &k);
    free(k.row);
    m->max_mat_elems = 0; /* nothing is widened per use any more */
    m->info.packed = 1;
    model_count(m); /* resident: the packs plus the small tensors widened at bind */
    return DIT_OK;
}
