/* moe.c: the sparse Mixture-of-Experts layer of a DiT-MoE block.
 *
 * Upstream SparseMoeBlock in eval mode: a softmax router over E experts,
 * each token goes to its top-k experts, weighted by the router
 * probabilities WITHOUT renormalising, plus a shared SwiGLU expert that
 * every token passes through.
 *
 * Design: the tokens of the WHOLE batch (every row of every request in the
 * forward) are grouped by expert, so each expert runs one GEMM over all the
 * tokens routed to it; this is what makes step-level batching of requests
 * pay off. The dispatch is a counting sort of (token, k) slots by expert;
 * experts are independent tasks on the context's pool, each writing its
 * own slice of the gathered buffers, and the combine step reads every
 * token's k results back in expert order. Counts per (row, layer, expert)
 * land in the context's routing table.
 */
#include <string.h>

#include "moe.h"
#include "ops.h"

/* Top-k of one probability row: largest first, lower index on ties. */
static void moe_topk(const float *p, int E, int K, int *idx, float *w)
{
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < k; j++)
                taken |= idx[j] == e;
            if (!taken && (best < 0 || p[e] > p[best]))
                best = e;
        }
        idx[k] = best;
        w[k] = p[best];
    }
}

/* Groups slots (token * K + k) by expert: disp[disp_off[e] ..
 * disp_off[e+1]) are expert e's slots in token order. */
static void moe_dispatch(dit_ctx *c, int M, int E, int K, int layer, int T)
{
    int *off = c->disp_off;
    memset(off, 0, sizeof(int) * (size_t)(E + 1));
    for (int s = 0; s < M * K; s++)
        off[c->topi[s] + 1]++;
    for (int e = 0; e < E; e++)
        off[e + 1] += off[e];
    int *fill = c->disp_fill;
    memcpy(fill, off, sizeof(int) * (size_t)E);
    int L = c->m->cfg.depth;
    for (int s = 0; s < M * K; s++) {
        int e = c->topi[s];
        c->slot_row[s] = fill[e];
        c->disp[fill[e]++] = s;
        c->routing[((size_t)(s / K / T) * L + layer) * E + e]++;
    }
}

typedef struct expert_job {
    dit_ctx *c;
    const dit_block *b;
    const float *xn; /* (M, D) */
    int D, H, K;
} expert_job;

/* Expert e over its rows [off[e], off[e+1]) of the gathered buffers. */
static void expert_task(void *arg, int e, int th)
{
    expert_job *j = arg;
    dit_ctx *c = j->c;
    int r0 = c->disp_off[e], rows = c->disp_off[e + 1] - r0;
    if (rows == 0)
        return;
    float *xe = c->xe + (size_t)r0 * j->D;           // (rows, D)
    float *hg = c->hg + (size_t)r0 * j->H;           // (rows, He)
    float *hu = c->hu + (size_t)r0 * j->H;           // (rows, He)
    float *ye = c->ye + (size_t)r0 * j->D;           // (rows, D)
    for (int r = 0; r < rows; r++)
        memcpy(xe + (size_t)r * j->D, j->xn + (size_t)(c->disp[r0 + r] / j->K) * j->D,
               sizeof(float) * (size_t)j->D);
    const dit_expert *x = &j->b->experts[e];
    op_matmul_task(c, th, hg, xe, &x->gate, rows);
    op_matmul_task(c, th, hu, xe, &x->up, rows);
    op_swiglu_forward(hg, hu, (size_t)rows * j->H);
    op_matmul_task(c, th, ye, hg, &x->down, rows);
}

/* The shared expert over all M tokens into out (M, D), in row blocks. */
typedef struct shared_job {
    dit_ctx *c;
    const dit_expert *x;
    const float *xn;
    float *out;
    int M, D, H, block;
} shared_job;

static void shared_task(void *arg, int task, int th)
{
    shared_job *j = arg;
    int r0 = task * j->block;
    int rows = j->M - r0 < j->block ? j->M - r0 : j->block;
    float *hg = j->c->hg + (size_t)r0 * j->H;
    float *hu = j->c->hu + (size_t)r0 * j->H;
    op_matmul_task(j->c, th, hg, j->xn + (size_t)r0 * j->D, &j->x->gate, rows);
    op_matmul_task(j->c, th, hu, j->xn + (size_t)r0 * j->D, &j->x->up, rows);
    op_swiglu_forward(hg, hu, (size_t)rows * j->H);
    op_matmul_task(j->c, th, j->out + (size_t)r0 * j->D, hg, &j->x->down, rows);
}

void moe_forward(dit_ctx *c, float *out, const float *xn, const dit_block *b,
                 int layer, int N)
{
    const dit_config *cfg = &c->m->cfg;
    int T = cfg->num_tokens, D = cfg->hidden_size, M = N * T;
    int E = cfg->num_experts, K = cfg->num_experts_per_tok;

    // router: (M, E) probabilities, then (M, K) choices
    op_matmul_task(c, 0, c->logits, xn, &b->router, M);
    op_softmax_forward(c->logits, M, E);
    for (int i = 0; i < M; i++)
        moe_topk(c->logits + (size_t)i * E, E, K, c->topi + (size_t)i * K,
                 c->topw + (size_t)i * K);
    moe_dispatch(c, M, E, K, layer, T);

    expert_job ej = { c, b, xn, D, cfg->expert_hidden, K };
    op_pool_run(c->pool, E, expert_task, &ej);

    // combine: out = shared(xn) + sum_k w_k * expert_k(xn)
    int nt = op_pool_threads(c->pool);
    shared_job sj = { c, &b->shared, xn, out, M, D, cfg->shared_hidden, M };
    if (nt > 1 && M >= 16 * nt)
        sj.block = (M + nt - 1) / nt;
    op_pool_run(c->pool, (M + sj.block - 1) / sj.block, shared_task, &sj);
    for (int i = 0; i < M; i++) {
        float *o = out + (size_t)i * D;
        for (int k = 0; k < K; k++) {
            int s = i * K + k;
            const float *y = c->ye + (size_t)c->slot_row[s] * D;
            float w = c->topw[s];
            for (int d = 0; d < D; d++)
                o[d] += w * y[d];
        }
    }
}
