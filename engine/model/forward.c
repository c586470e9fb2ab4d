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
    size_t H = (size_t)(g->expert_hidden > g->shared_hidden ? g->expert_hidden : g->shared_hidden);
    size_t P2 = (size_t)g->patch_size * (size_t)g->patch_size;
    size_t th = (size_t)c->set.n_threads, pos = 0;
    size_t rows = M * K > M ? M * K : M; /* the shared expert uses M rows */
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
    c->etasks = carve(base, &pos, 3 * (E + M * K / 64 + 1), sizeof(int));
    c->xe = carve(base, &pos, M * K * D, sizeof(float));
    c->hg = carve(base, &pos, rows * H, sizeof(float));
    c->hu = carve(base, &pos, c->m->packed ? 0 : rows * H, sizeof(float)); /* BLAS path only */
    c->ye = carve(base, &pos, M * K * D, sizeof(float));
    c->patches = carve(base, &pos, M * (size_t)g->in_channels * P2, sizeof(float));
    c->fout = carve(base, &pos, M * (size_t)g->out_channels * P2, sizeof(float));
    c->wide = carve(base, &pos, th * (size_t)c->m->max_mat_elems, sizeof(float));
    c->routing = carve(base, &pos, N * (size_t)g->depth * E, sizeof(uint32_t));
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

int dit_forward(dit_ctx *c, int n, const float *x, const float *t,
                const int32_t *y, float *out)
{
    if (!c || !x || !t || !y || !out || n < 1 || n > c->set.max_rows)
        return DIT_E_INVAL;
    const dit_model *m = c->m;
    const dit_config *g = &m->cfg;
    int N = n, T = g->num_tokens, D = g->hidden_size, P = g->patch_size;
    int C = g->in_channels, H = g->input_size, M = N * T;
    int nlabels = g->num_classes + m->has_null;
    for (int i = 0; i < N; i++)
        if (y[i] < 0 || y[i] >= nlabels)
            return DIT_E_INVAL;
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
