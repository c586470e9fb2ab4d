/* forward.c: contexts and the DiT-MoE forward pass.
 *
 * A context owns one arena holding every buffer a forward of up to
 * max_rows rows needs, carved up once in dit_ctx_new; dit_forward itself
 * allocates nothing, so the denoising loop never touches the allocator.
 * The forward pass is a straight list of op calls mirroring upstream
 * DiT.forward: patch embedding + pos_embed, timestep and label embeddings,
 * L blocks of (adaLN, attention, adaLN, sparse MoE), final layer,
 * unpatchify.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "ops.h"

#define FREQ_DIM 256

void dit_ctx_settings_default(dit_ctx_settings *s)
{
    if (!s)
        return;
    s->max_rows = 16;
    s->n_threads = 1;
    s->max_decode = 0; /* 0: same as max_rows */
}

/* Carves `n` elements of `size` bytes out of the arena at *pos (64-byte
 * aligned), or only counts when base is NULL. */
static void *carve(char *base, size_t *pos, size_t n, size_t size)
{
    size_t at = (*pos + 63) & ~(size_t)63;
    *pos = at + n * size;
    return base ? base + at : NULL;
}

/* Lays out every buffer; with base NULL returns the bytes needed. */
static size_t ctx_layout(dit_ctx *c, char *base)
{
    const dit_config *g = &c->m->cfg;
    size_t N = (size_t)c->set.max_rows, T = (size_t)g->num_tokens;
    size_t D = (size_t)g->hidden_size, E = (size_t)g->num_experts;
    size_t K = (size_t)g->num_experts_per_tok, M = N * T;
    size_t He = (size_t)g->expert_hidden, Hs = (size_t)g->shared_hidden;
    size_t P2 = (size_t)g->patch_size * (size_t)g->patch_size;
    size_t th = (size_t)c->set.n_threads, pos = 0;
    c->x = carve(base, &pos, M * D, sizeof(float));
    c->xn = carve(base, &pos, M * D, sizeof(float));
    c->qkv = carve(base, &pos, M * 3 * D, sizeof(float));
    c->att = carve(base, &pos, M * D, sizeof(float));
    size_t hd = D / (size_t)g->num_heads;
    c->attn = carve(base, &pos, th * op_attention_floats(c->m->gk, (int)T, (int)hd), sizeof(float));
    c->sub = carve(base, &pos, M * D, sizeof(float));
    c->tfreq = carve(base, &pos, N * FREQ_DIM, sizeof(float));
    c->temb = carve(base, &pos, N * D, sizeof(float));
    c->c = carve(base, &pos, N * D, sizeof(float));
    c->silu_c = carve(base, &pos, N * D, sizeof(float));
    c->mod = carve(base, &pos, N * 6 * D, sizeof(float));
    c->logits = carve(base, &pos, M * E, sizeof(float));
    c->topw = carve(base, &pos, M * K, sizeof(float));
    c->topi = carve(base, &pos, M * K, sizeof(int));
    c->disp = carve(base, &pos, M * K, sizeof(int));
    c->disp_off = carve(base, &pos, E + 1, sizeof(int));
    c->disp_fill = carve(base, &pos, E, sizeof(int));
    c->slot_row = carve(base, &pos, M * K, sizeof(int));
    c->etasks = carve(base, &pos, 3 * (E + M * K / 64 + M / 64 + 2), sizeof(int));
    c->xe = carve(base, &pos, M * K * D, sizeof(float));
    c->hg = carve(base, &pos, M * K * He, sizeof(float));
    c->hu = carve(base, &pos, c->m->packed ? 0 : M * K * He, sizeof(float)); /* BLAS path only */
    c->hs = carve(base, &pos, M * Hs, sizeof(float));
    c->hsu = carve(base, &pos, c->m->packed ? 0 : M * Hs, sizeof(float));   /* BLAS path only */
    c->ye = carve(base, &pos, M * K * D, sizeof(float));
    c->patches = carve(base, &pos, M * (size_t)g->in_channels * P2, sizeof(float));
    c->fout = carve(base, &pos, M * (size_t)g->out_channels * P2, sizeof(float));
    c->wide = carve(base, &pos, th * (size_t)c->m->max_mat_elems, sizeof(float));
    c->routing = carve(base, &pos, N * (size_t)g->depth * E, sizeof(uint32_t));
    c->routing2 = carve(base, &pos, N * (size_t)g->depth * E, sizeof(uint32_t));
    c->perm = carve(base, &pos, N, sizeof(int));
    return pos + 64;
}

int dit_ctx_new(dit_ctx **out, const dit_model *m, const dit_ctx_settings *s)
{
    if (!out)
        return DIT_E_INVAL;
    *out = NULL;
    if (!m)
        return DIT_E_INVAL;
    dit_ctx_settings set;
    dit_ctx_settings_default(&set);
    if (s)
        set = *s;
    if (set.max_rows < 1 || set.max_rows > 4096 || set.n_threads < 1 ||
        set.n_threads > 256 || set.max_decode < 0 || set.max_decode > 4096)
        return DIT_E_INVAL;
    if (set.max_decode == 0)
        set.max_decode = set.max_rows;
    dit_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return DIT_E_NOMEM;
    c->m = m;
    c->set = set;
    size_t bytes = ctx_layout(c, NULL);
    c->arena = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!c->arena)
        goto nomem;
    c->arena_floats = bytes / sizeof(float);
    ctx_layout(c, (char *)(((uintptr_t)c->arena + 63) & ~(uintptr_t)63));
    if (set.n_threads > 1 && !(c->pool = op_pool_new(set.n_threads)))
        goto nomem;
    c->env = (op_env){ c->pool, c->wide, (size_t)m->max_mat_elems, m->gk };
    c->vae_ws_bytes = decode_ws_bytes(m, set.n_threads, set.max_decode);
    if (c->vae_ws_bytes && !(c->vae_ws = malloc(c->vae_ws_bytes)))
        goto nomem;
    *out = c;
    return DIT_OK;
nomem:
    dit_ctx_free(c);
    return DIT_E_NOMEM;
}

void dit_ctx_free(dit_ctx *c)
{
    if (!c)
        return;
    op_pool_free(c->pool);
    free(c->arena);
    free(c->vae_ws);
    free(c);
}

size_t dit_ctx_bytes(const dit_ctx *c)
{
    return c ? c->arena_floats * sizeof(float) + c->vae_ws_bytes : 0;
}

const uint32_t *dit_ctx_routing(const dit_ctx *c)
{
    return c ? c->routing : NULL;
}

/* x_out = modulate(LayerNorm(x), shift, scale) and x += gate * sub, over
 * token rows [r0, r1) so the pool shares them; rows of one sample use
 * that sample's modulation. */
typedef struct rowwise_job {
    float *dst;
    const float *src;
    const float *a, *b; /* shift, scale (norm) or gate (residual) */
    int stride, T, D;
} rowwise_job;

static void norm_rows(void *arg, int r0, int r1, int th)
{
    (void)th;
    rowwise_job *j = arg;
    for (int r = r0; r < r1; r++) {
        size_t o = (size_t)r * j->D, n = (size_t)(r / j->T) * j->stride;
        op_layernorm_forward(j->dst + o, j->src + o, 1, j->D);
        op_modulate_forward(j->dst + o, j->a + n, j->b + n, 0, 1, 1, j->D);
    }
}

static void residual_rows(void *arg, int r0, int r1, int th)
{
    (void)th;
    rowwise_job *j = arg;
    for (int r = r0; r < r1; r++) {
        size_t o = (size_t)r * j->D, n = (size_t)(r / j->T) * j->stride;
        op_gate_residual_forward(j->dst + o, j->src + o, j->a + n, 0, 1, 1, j->D);
    }
}

/* xn (N, T, D) = LayerNorm(x) * (1 + scale[n]) + shift[n] */
static void norm_modulate(dit_ctx *c, float *xn, const float *x, const float *shift,
                          const float *scale, int stride, int N)
{
    const dit_config *g = &c->m->cfg;
    rowwise_job j = { xn, x, shift, scale, stride, g->num_tokens, g->hidden_size };
    op_rows_run(c->pool, N * g->num_tokens, norm_rows, &j);
}

/* x (N, T, D) += gate[n] * sub */
static void gate_residual(dit_ctx *c, float *x, const float *sub, const float *gate,
                          int stride, int N)
{
    const dit_config *g = &c->m->cfg;
    rowwise_job j = { x, sub, gate, NULL, stride, g->num_tokens, g->hidden_size };
    op_rows_run(c->pool, N * g->num_tokens, residual_rows, &j);
}

static void block_forward(dit_ctx *c, const model_block *b, int l, int N)
{
    const dit_config *g = &c->m->cfg;
    int T = g->num_tokens, D = g->hidden_size, M = N * T, S = 6 * D;
    float *mod = c->mod; // (N, 6D): shift, scale, gate (msa), shift, scale, gate (moe)

    op_linear_forward(&c->env, mod, c->silu_c, &b->ada, N);
    norm_modulate(c, c->xn, c->x, mod + 0 * D, mod + 1 * D, S, N);
    op_linear_forward(&c->env, c->qkv, c->xn, &b->qkv, M);                 // (N, T, 3D)
    op_attention_forward(&c->env, c->attn, c->att, c->qkv, N, T, D, g->num_heads);    // (N, T, D)
    op_linear_forward(&c->env, c->sub, c->att, &b->proj, M);                // (N, T, D)
    gate_residual(c, c->x, c->sub, mod + 2 * D, S, N);

    norm_modulate(c, c->xn, c->x, mod + 3 * D, mod + 4 * D, S, N);
    moe_forward(c, c->sub, c->xn, b, l, N);                           // (N, T, D)
    gate_residual(c, c->x, c->sub, mod + 5 * D, S, N);
}

/* ---- step caching ----------------------------------------------------- */

/* ADAPTIVE: adds the relative L1 change of block 0's modulated input xm
 * (T, D) to acc and says whether the blocks must run; keeps xm as ref. */
static int cache_adaptive(dit_cache *r, const float *xm, size_t td)
{
    if (r->has_ref) {
        double num = 0, den = 0;
        for (size_t k = 0; k < td; k++) {
            num += fabsf(xm[k] - r->ref[k]);
            den += fabsf(r->ref[k]);
        }
        r->acc += den > 0 ? num / den : 0.0;
    }
    memcpy(r->ref, xm, td * sizeof(float));
    r->has_ref = 1;
    if (r->valid && r->acc < r->threshold)
        return 0;
    r->acc = 0;
    return 1;
}

/* A row runs the blocks: it has no cache or its cache says so. */
static int row_runs(dit_cache *const *cache, int i)
{
    return !cache[i] || cache[i]->computed;
}

/* Decides which rows run the blocks and orders them first in c->perm
 * (batch position -> row), the reusing rows after; returns how many run. */
static int cache_plan(dit_ctx *c, int N, dit_cache *const *cache)
{
    const dit_config *g = &c->m->cfg;
    size_t td = (size_t)g->num_tokens * g->hidden_size;
    int D = g->hidden_size, adaptive = 0, k = 0, nrun;
    for (int i = 0; i < N; i++)
        adaptive |= cache[i] && cache[i]->mode == DIT_CACHE_ADAPTIVE;
    if (adaptive) { /* block 0's modulated input, as block_forward makes it */
        op_linear_forward(&c->env, c->mod, c->silu_c, &c->m->blocks[0].ada, N);
        norm_modulate(c, c->xn, c->x, c->mod, c->mod + D, 6 * D, N);
    }
    for (int i = 0; i < N; i++) {
        dit_cache *r = cache[i];
        if (r && r->mode == DIT_CACHE_ADAPTIVE)
            r->computed = cache_adaptive(r, c->xn + (size_t)i * td, td);
        else if (r)
            r->computed = r->run || !r->valid;
    }
    for (int i = 0; i < N; i++)
        if (row_runs(cache, i))
            c->perm[k++] = i;
    nrun = k;
    for (int i = 0; i < N; i++)
        if (!row_runs(cache, i))
            c->perm[k++] = i;
    return nrun;
}

/* buf (N, len) reordered by c->perm through scratch: forward puts row
 * perm[k] at position k, back undoes it. */
static void rows_permute(const dit_ctx *c, float *buf, float *scratch, int N, size_t len,
                         int back)
{
    for (int k = 0; k < N; k++) {
        size_t row = (size_t)c->perm[k] * len, at = (size_t)k * len;
        memcpy(scratch + (back ? row : at), buf + (back ? at : row), len * sizeof(float));
    }
    memcpy(buf, scratch, (size_t)N * len * sizeof(float));
}

/* The routing counts of positions back to their rows (reusing rows: 0). */
static void routing_back(dit_ctx *c, int N)
{
    size_t le = (size_t)c->m->cfg.depth * c->m->cfg.num_experts;
    for (int k = 0; k < N; k++)
        memcpy(c->routing2 + (size_t)c->perm[k] * le, c->routing + (size_t)k * le,
               le * sizeof(uint32_t));
    memcpy(c->routing, c->routing2, (size_t)N * le * sizeof(uint32_t));
}

/* The transformer blocks over the rows of c->x: the running ones (first
 * nrun positions) run them and store their residual when cached; the
 * others add their stored one. */
static void blocks_cached(dit_ctx *c, int N, int nrun, dit_cache *const *cache)
{
    const dit_config *g = &c->m->cfg;
    size_t td = (size_t)g->num_tokens * g->hidden_size;
    for (int k = 0; k < nrun; k++) /* the input, to subtract afterwards */
        if (cache[c->perm[k]])
            memcpy(cache[c->perm[k]]->resid, c->x + k * td, td * sizeof(float));
    for (int l = 0; nrun > 0 && l < g->depth; l++)
        block_forward(c, &c->m->blocks[l], l, nrun);
    for (int k = 0; k < N; k++) {
        dit_cache *r = cache[c->perm[k]];
        float *x = c->x + k * td; // (T, D)
        if (!r)
            continue;
        if (k < nrun) {
            for (size_t j = 0; j < td; j++)
                r->resid[j] = x[j] - r->resid[j];
            r->valid = 1;
        } else {
            for (size_t j = 0; j < td; j++)
                x[j] += r->resid[j];
        }
    }
}

/* The blocks of a forward with caches: rows reordered so the running ones
 * form one batch, and put back. */
static void forward_blocks_cached(dit_ctx *c, int N, dit_cache *const *cache)
{
    const dit_config *g = &c->m->cfg;
    size_t td = (size_t)g->num_tokens * g->hidden_size, D = (size_t)g->hidden_size;
    int nrun = cache_plan(c, N, cache), same = 1;
    for (int k = 0; k < N; k++)
        same &= c->perm[k] == k;
    if (!same) { /* xn and temb are free here */
        rows_permute(c, c->x, c->xn, N, td, 0);
        rows_permute(c, c->silu_c, c->temb, N, D, 0);
    }
    blocks_cached(c, N, nrun, cache);
    if (!same) {
        rows_permute(c, c->x, c->xn, N, td, 1);
        rows_permute(c, c->silu_c, c->temb, N, D, 1);
        routing_back(c, N);
    }
}

int dit_forward(dit_ctx *c, int n, const float *x, const float *t,
                const int32_t *y, float *out)
{
    return dit_forward_cached(c, n, x, t, y, NULL, out);
}

int dit_forward_cached(dit_ctx *c, int n, const float *x, const float *t,
                       const int32_t *y, dit_cache *const *cache, float *out)
{
    if (!c || !x || !t || !y || !out || n < 1 || n > c->set.max_rows)
        return DIT_E_INVAL;
    const dit_model *m = c->m;
    const dit_config *g = &m->cfg;
    int N = n, T = g->num_tokens, D = g->hidden_size, P = g->patch_size;
    int C = g->in_channels, H = g->input_size, M = N * T, any = 0;
    int nlabels = g->num_classes + m->has_null;
    for (int i = 0; i < N; i++) {
        if (y[i] < 0 || y[i] >= nlabels)
            return DIT_E_INVAL;
        any |= cache && cache[i];
    }
    memset(c->routing, 0, sizeof(uint32_t) * (size_t)N * g->depth * g->num_experts);
    c->last_n = N;

    // embeddings: x (N, C, H, W) -> tokens (N, T, D); c (N, D) = t_emb + y_emb
    op_patchify_forward(c->patches, x, N, C, H, P);                   // (N, T, C*P*P)
    op_linear_forward(&c->env, c->x, c->patches, &m->patch, M);             // (N, T, D)
    for (int i = 0; i < N; i++)
        for (int k = 0; k < T * D; k++)
            c->x[(size_t)i * T * D + k] += m->pos_embed[k];
    op_timestep_embedding_forward(c->tfreq, t, N, FREQ_DIM);          // (N, 256)
    op_linear_forward(&c->env, c->c, c->tfreq, &m->t_mlp0, N);              // (N, D)
    op_silu_forward(c->c, c->c, (size_t)N * D);
    op_linear_forward(&c->env, c->temb, c->c, &m->t_mlp2, N);               // (N, D)
    op_embedding_forward(c->c, m->y_table, y, N, D);                  // (N, D)
    for (size_t k = 0; k < (size_t)N * D; k++)
        c->c[k] += c->temb[k];
    op_silu_forward(c->silu_c, c->c, (size_t)N * D);

    if (any)
        forward_blocks_cached(c, N, cache);
    else
        for (int l = 0; l < g->depth; l++)
            block_forward(c, &m->blocks[l], l, N);

    // final layer: adaLN (shift, scale), LayerNorm, linear, unpatchify
    op_linear_forward(&c->env, c->mod, c->silu_c, &m->final_ada, N);        // (N, 2D)
    norm_modulate(c, c->xn, c->x, c->mod, c->mod + D, 2 * D, N);
    op_linear_forward(&c->env, c->fout, c->xn, &m->final_lin, M);           // (N, T, P*P*Cout)
    op_unpatchify_forward(out, c->fout, N, g->out_channels, H, P);    // (N, Cout, H, W)
    return DIT_OK;
}

void dit_set_blas_threads(int n)
{
    if (n >= 1)
        openblas_set_num_threads(n);
}
