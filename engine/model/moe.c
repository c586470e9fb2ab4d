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
 * own slice of the gathered buffers, in one run with the shared expert's
 * token rows (largest tasks first, so the run ends evenly), and the
 * combine step adds every token's k results, read back in expert order,
 * to the shared expert's output. Counts per (row, layer, expert)
 * land in the context's routing table.
 */
#include <string.h>

#include "moe.h"
#include "ops.h"

/* Rows per expert task: large enough for an efficient GEMM, small enough
 * to balance experts of uneven load over the pool. */
#define MOE_CHUNK 512

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
    const model_block *b;
    const float *xn; /* (M, D) */
    float *out;      /* (M, D) */
    int D, He, Hs, K, E;
} expert_job;

/* out rows [r0, r0 + rows) = the shared expert of xn's */
static void shared_rows(expert_job *j, int r0, int rows, int th)
{
    dit_ctx *c = j->c;
    float *hs = c->hs + (size_t)r0 * j->Hs, *hsu = c->hsu + (size_t)r0 * j->Hs;
    const model_expert *x = &j->b->shared;
    op_swiglu_task(&c->env, th, hs, hsu, j->xn + (size_t)r0 * j->D, &x->gu, rows); // (rows, Hs)
    op_matmul_task(&c->env, th, j->out + (size_t)r0 * j->D, hs, &x->down, rows);   // (rows, D)
}

/* Task i: rows [r0, r1) of expert e as laid out by moe_plan; e == E: token
 * rows of the shared expert. */
static void expert_task(void *arg, int i, int th)
{
    expert_job *j = arg;
    dit_ctx *c = j->c;
    const int *t = c->etasks + 3 * i;
    int e = t[0], r0 = t[1], rows = t[2] - t[1];
    if (e == j->E) {
        shared_rows(j, r0, rows, th);
        return;
    }
    float *xe = c->xe + (size_t)r0 * j->D;           // (rows, D)
    float *hg = c->hg + (size_t)r0 * j->He;          // (rows, He)
    float *hu = c->hu + (size_t)r0 * j->He;          // (rows, He)
    float *ye = c->ye + (size_t)r0 * j->D;           // (rows, D)
    for (int r = 0; r < rows; r++)
        memcpy(xe + (size_t)r * j->D, j->xn + (size_t)(c->disp[r0 + r] / j->K) * j->D,
               sizeof(float) * (size_t)j->D);
    const model_expert *x = &j->b->experts[e];
    op_swiglu_task(&c->env, th, hg, hu, xe, &x->gu, rows);                      // (rows, He)
    op_matmul_task(&c->env, th, ye, hg, &x->down, rows);                   // (rows, D)
}

/* Appends tasks of about `chunk` rows covering [r0, r1) for expert e. */
static int plan_split(int *t, int n, int e, int r0, int r1, int chunk)
{
    int parts = (r1 - r0 + chunk - 1) / chunk;
    for (int p = 0; p < parts; p++, n++) {
        t[3 * n] = e;
        t[3 * n + 1] = r0 + (int)((int64_t)(r1 - r0) * p / parts);
        t[3 * n + 2] = r0 + (int)((int64_t)(r1 - r0) * (p + 1) / parts);
    }
    return n;
}

/* Multiply-adds of task t (expert, r0, r1), up to a constant factor. */
static int64_t task_work(const int *t, int E, int He, int Hs)
{
    return (int64_t)(t[2] - t[1]) * (t[0] == E ? Hs : He);
}

/* The tasks of one MoE layer: each expert's rows in tasks of about `chunk`
 * rows, so a busy expert does not leave the other threads idle, and the
 * shared expert's M token rows likewise (it needs no routing, so it fills
 * the same run), ordered by work, largest first, so the run ends on small
 * tasks. Returns the task count. */
static int moe_plan(dit_ctx *c, int E, int M, int He, int Hs, int chunk)
{
    int n = 0, *t = c->etasks;
    for (int e = 0; e < E; e++)
        n = plan_split(t, n, e, c->disp_off[e], c->disp_off[e + 1], chunk);
    n = plan_split(t, n, E, 0, M, chunk);
    for (int i = 1; i < n; i++) { /* insertion sort, tens of tasks */
        int x[3] = { t[3 * i], t[3 * i + 1], t[3 * i + 2] }, k = i;
        for (; k > 0 && task_work(t + 3 * (k - 1), E, He, Hs) < task_work(x, E, He, Hs); k--)
            memcpy(t + 3 * k, t + 3 * (k - 1), 3 * sizeof(int));
        memcpy(t + 3 * k, x, sizeof x);
    }
    return n;
}

typedef struct route_job {
    dit_ctx *c;
    int E, K;
} route_job;

/* Router probabilities to top-k choices for rows [r0, r1). */
static void route_rows(void *arg, int r0, int r1, int th)
{
    (void)th;
    route_job *j = arg;
    float *p = j->c->logits + (size_t)r0 * j->E;
    op_softmax_forward(p, r1 - r0, j->E);
    for (int i = r0; i < r1; i++)
        moe_topk(j->c->logits + (size_t)i * j->E, j->E, j->K, j->c->topi + (size_t)i * j->K,
                 j->c->topw + (size_t)i * j->K);
}

/* out += sum_k w_k * expert_k(xn) for token rows [r0, r1), out holding
 * the shared expert's output. */
typedef struct combine_job {
    dit_ctx *c;
    float *out;
    int D, K;
} combine_job;

static void combine_rows(void *arg, int r0, int r1, int th)
{
    (void)th;
    combine_job *j = arg;
    dit_ctx *c = j->c;
    int D = j->D;
    for (int i = r0; i < r1; i++) {
        float *o = j->out + (size_t)i * D;
        for (int k = 0; k < j->K; k++) {
            int s = i * j->K + k;
            const float *y = c->ye + (size_t)c->slot_row[s] * D;
            float w = c->topw[s];
            for (int d = 0; d < D; d++)
                o[d] += w * y[d];
        }
    }
}

void moe_forward(dit_ctx *c, float *out, const float *xn, const model_block *b,
                 int layer, int N)
{
    const dit_config *cfg = &c->m->cfg;
    int T = cfg->num_tokens, D = cfg->hidden_size, M = N * T;
    int E = cfg->num_experts, K = cfg->num_experts_per_tok;

    // router: (M, E) probabilities, then (M, K) choices
    klinear router = { b->router, NULL };
    op_linear_forward(&c->env, c->logits, xn, &router, M);
    route_job rj = { c, E, K };
    op_rows_run(c->pool, M, route_rows, &rj);
    moe_dispatch(c, M, E, K, layer, T);

    // routed experts over the gathered tokens of the whole batch, and the
    // shared expert over every token into out, in one run
    int He = cfg->expert_hidden, Hs = cfg->shared_hidden;
    expert_job ej = { c, b, xn, out, D, He, Hs, K, E };
    op_pool_run(c->pool, moe_plan(c, E, M, He, Hs, MOE_CHUNK), expert_task, &ej);

    // out += weighted sum of each token's k expert outputs
    combine_job cj = { c, out, D, K };
    op_rows_run(c->pool, M, combine_rows, &cj);
}
