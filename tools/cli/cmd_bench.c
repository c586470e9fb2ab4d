/* cmd_bench.c: `ditmoe bench`: forward latency, tokens/s and achieved
 * GFLOP/s, as a fraction of two yardsticks measured in the same run: the
 * FP32 FMA peak of the kernel entry the model runs (dit_kernel_peak_gflops:
 * a register-only FMA loop on every thread, summed, which no library can
 * cripple) and OpenBLAS sgemm (which runs generic kernels on CPUs it does
 * not know, see dit_blas_warning).
 *
 * Both are shown on two clocks: wall time, and the process's CPU time (all
 * threads), which other jobs time-slicing a shared machine do not inflate:
 * GFLOP per CPU-second against one thread's share of the peak.
 *
 * FLOPs are the multiply-adds (2 each) of the forward's matrix products:
 * patch embedding, timestep MLP, per block adaLN, qkv, attention (QK^T and
 * AV), proj, router, the routed experts with the token counts the router
 * actually chose (dit_ctx_routing), the shared expert, and the final
 * layer's adaLN and linear. Elementwise work (norms, softmax, SiLU, gates)
 * is left out, so the figure is what the GEMMs achieve end to end.
 *
 * Also timed: what routing analytics add to a step (analytics/
 * routing_info.h): the server adds each forward's routing counts to two
 * tables by class and noise level (since start and the window's slot).
 * One forward's counts are added many times over to time it against the
 * forward's own time (docs/routing.md).
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "routing_info.h"

static const char bench_usage[] =
    "usage: ditmoe bench [--model DIR | --synthetic NAME] --batch B [--iters K]\n"
    "                    [--threads T] [--gemm N] [--no-pack] [--dtype D]\n"
    "                    [--compute f32|int8]\n"
    "  --batch B       rows per forward, 1..1024\n"
    "  --iters K       timed forwards after one warm-up (default 5)\n"
    "  --threads T     engine threads, and BLAS threads for the sgemm\n"
    "                  (default: one per core)\n"
    "  --synthetic NAME  random weights of a preset (e.g. s2) instead of a model\n"
    "  --dtype D       synthetic weight matrices in f32 (default), f16, bf16, or q8\n"
    "                  (8-bit experts, the rest F16: fits G/2 in 24 GB)\n"
    "  --compute M     f32 (default), or int8 (needs a VNNI CPU; refused elsewhere)\n"
    "  --gemm N        size of the square sgemm yardstick (default 1024)\n"
    "  --no-pack       keep weights as stored and use BLAS (default: packed kernel)\n";

/* FLOPs of one forward of n rows, less the routed experts. */
static double bench_dense_flops(const dit_config *c, int n)
{
    double N = n, T = c->num_tokens, D = c->hidden_size, L = c->depth;
    double P2 = (double)c->patch_size * c->patch_size;
    double f = 2 * N * T * D * c->in_channels * P2;            /* patch embed */
    f += 2 * N * (256 * D + D * D);                             /* t MLP */
    f += L * 2 * N * D * 6 * D;                                 /* adaLN */
    f += L * 2 * N * T * D * 3 * D;                             /* qkv */
    f += L * 4 * N * T * T * D;                                 /* QK^T, AV */
    f += L * 2 * N * T * D * D;                                 /* proj */
    f += L * 2 * N * T * D * c->num_experts;                    /* router */
    f += L * 6 * N * T * D * c->shared_hidden;                  /* shared */
    f += 2 * N * D * 2 * D + 2 * N * T * D * P2 * c->out_channels; /* final */
    return f;
}

/* Tokens the last forward sent to routed experts, all rows and layers. */
static double bench_routed(const dit_ctx *ctx, const dit_config *c, int n)
{
    const uint32_t *r = dit_ctx_routing(ctx);
    double sum = 0;
    for (size_t i = 0; r && i < (size_t)n * c->depth * c->num_experts; i++)
        sum += r[i];
    return sum;
}

/* GFLOP/s of an n x n x n sgemm with the current BLAS threads. */
static double bench_sgemm(int n)
{
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b);
    float *c = malloc((size_t)n * n * sizeof *c);
    double t0, t, best = 1e30;
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return 0;
    }
    for (size_t i = 0; i < (size_t)n * n; i++) {
        a[i] = (float)((i * 7919u) % 1000) * 1e-3f - 0.5f;
        b[i] = (float)((i * 104729u) % 1000) * 1e-3f - 0.5f;
    }
    for (int rep = 0; rep < 5; rep++) { /* the first is a warm-up */
        t0 = cli_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                    0.0f, c, n);
        t = cli_now() - t0;
        if (rep > 0 && t < best)
            best = t;
    }
    free(a), free(b), free(c);
    return 2.0 * n * (double)n * n / best * 1e-9;
}

/* Random inputs: x ~ U(-1, 1), t a mid-range timestep, labels cycling. */
static void bench_inputs(const dit_config *c, int n, float *x, float *t, int32_t *y)
{
    uint64_t s = 0x2545f4914f6cdd1dULL;
    size_t nx = (size_t)n * c->in_channels * c->input_size * c->input_size;
    for (size_t i = 0; i < nx; i++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)(s >> 40) * (2.0f / 16777216.0f) - 1.0f;
    }
    for (int i = 0; i < n; i++) {
        t[i] = c->prediction == DIT_PRED_VELOCITY ? 0.5f : 500.0f;
        y[i] = i % c->num_classes;
    }
}

/* Seconds the server's routing analytics add to one forward of n rows: two
 * rt_counts_add of its routing counts (since start, window slot), timed
 * over many repetitions. Negative when out of memory. */
static double bench_counting(const dit_ctx *ctx, const dit_config *c, int n, const int32_t *y)
{
    enum { REPS = 2000 };
    rt_counts *a = NULL, *b = NULL;
    float *noise = malloc((size_t)n * sizeof *noise); /* (N) */
    double t0, t = -1;
    if (noise && !rt_counts_new(&a, c->depth, c->num_experts, c->num_classes) &&
        !rt_counts_new(&b, c->depth, c->num_experts, c->num_classes)) {
        for (int i = 0; i < n; i++)
            noise[i] = (float)i / (float)n;
        t0 = cli_now();
        for (int rep = 0; rep < REPS; rep++) {
            rt_counts_add(a, n, dit_ctx_routing(ctx), y, noise);
            rt_counts_add(b, n, dit_ctx_routing(ctx), y, noise);
        }
        t = (cli_now() - t0) / REPS;
    }
    rt_counts_free(a);
    rt_counts_free(b);
    free(noise);
    return t;
}

typedef struct bench_opts {
    int batch, iters, threads, gemm_n;
    double gemm; /* measured sgemm GFLOP/s */
} bench_opts;

/* The yardsticks beside the forward's GFLOP/s (wall clock; per_cpu: GFLOP
 * per CPU-second): the FMA peak of the model's kernel entry on the threads
 * used, and sgemm. */
static void bench_yardsticks(const dit_model *m, const bench_opts *o, double achieved,
                             double per_cpu)
{
    dit_model_info info;
    dit_model_get_info(m, &info);
    double peak = dit_kernel_peak_gflops(info.kernel, o->threads);
    printf("kernel      %s%s\n", info.kernel ? info.kernel : "?",
           info.packed ? "" : " (weights unpacked: their products on BLAS)");
    printf("fma peak    %.2f GFLOP/s (%s FP32 FMA loop, %d threads summed)\n", peak,
           info.kernel ? info.kernel : "?", o->threads);
    printf("sgemm       %.2f GFLOP/s (%d x %d x %d, %d BLAS threads)\n", o->gemm, o->gemm_n,
           o->gemm_n, o->gemm_n, o->threads);
    printf("ratio       %.3f of the FMA peak, %.3f of sgemm\n", peak > 0 ? achieved / peak : 0,
           achieved / o->gemm);
    printf("cpu clock   %.2f GFLOP per CPU-second: %.3f of one thread's FMA peak\n", per_cpu,
           peak > 0 ? per_cpu / (peak / o->threads) : 0);
}

static int bench_run(const dit_model *m, const char *name, const bench_opts *o)
{
    int batch = o->batch, iters = o->iters, threads = o->threads;
    const dit_config *c = dit_model_config(m);
    size_t hw = (size_t)c->input_size * c->input_size;
    float *x = malloc((size_t)batch * c->in_channels * hw * sizeof *x);
    float *t = malloc((size_t)batch * sizeof *t);
    int32_t *y = malloc((size_t)batch * sizeof *y);
    float *out = malloc((size_t)batch * c->out_channels * hw * sizeof *out);
    dit_ctx_settings set;
    dit_ctx *ctx = NULL;
    double total = 0, best = 1e30, routed = 0, flops, cpu = 0, counting;
    int rc = CLI_EFAIL;
    dit_ctx_settings_default(&set);
    set.max_rows = batch;
    set.n_threads = threads;
    if (!x || !t || !y || !out) {
        cli_fail("out of memory for a batch of %d", batch);
        goto done;
    }
    bench_inputs(c, batch, x, t, y);
    if ((rc = dit_ctx_new(&ctx, m, &set)) != DIT_OK) {
        rc = cli_fail("cannot make a context for %d rows: %s", batch, dit_strerror(rc));
        goto done;
    }
    for (int it = 0; it <= iters; it++) { /* iteration 0 warms up */
        double t0 = cli_now(), c0 = cli_cpu_now(), dt;
        if ((rc = dit_forward(ctx, batch, x, t, y, out)) != DIT_OK) {
            rc = cli_fail("forward failed: %s", dit_strerror(rc));
            goto done;
        }
        dt = cli_now() - t0;
        if (it == 0)
            continue;
        cpu += cli_cpu_now() - c0;
        total += dt;
        best = dt < best ? dt : best;
        routed += bench_routed(ctx, c, batch);
    }
    flops = bench_dense_flops(c, batch) + routed / iters * 6.0 * c->hidden_size *
                                              c->expert_hidden;
    counting = bench_counting(ctx, c, batch, y);
    printf("model       %s: depth %d, hidden %d, %d experts top-%d, %d tokens\n", name,
           c->depth, c->hidden_size, c->num_experts, c->num_experts_per_tok, c->num_tokens);
    printf("batch       %d rows, %d threads, %d iterations after 1 warm-up\n", batch, threads,
           iters);
    printf("forward     %.3f ms mean, %.3f ms best\n", 1e3 * total / iters, 1e3 * best);
    printf("tokens/s    %.0f\n", (double)batch * c->num_tokens * iters / total);
    printf("work        %.5g GFLOP per forward (%.0f token-expert pairs routed per layer: "
           "%d tokens x top-%d)\n",
           flops * 1e-9, routed / iters / c->depth, batch * c->num_tokens,
           c->num_experts_per_tok);
    printf("achieved    %.2f GFLOP/s\n", flops / (total / iters) * 1e-9);
    bench_yardsticks(m, o, flops / (total / iters) * 1e-9, flops / (cpu / iters) * 1e-9);
    if (counting >= 0)
        printf("counting    %.2f us per forward: routing analytics by class and noise level "
               "(2 tables), %.2g%% of the mean forward\n", 1e6 * counting,
               100 * counting / (total / iters));
    rc = 0;
done:
    dit_ctx_free(ctx);
    free(x), free(t), free(y), free(out);
    return rc;
}

int cmd_bench(int argc, char **argv)
{
    const char *path = NULL, *synth = NULL, *batch_s = NULL, *iters_s = "5", *threads_s = NULL;
    const char *gemm_s = "1024", *name = NULL, *dtype = NULL, *compute = NULL;
    int no_pack = 0;
    const cli_opt opts[] = {
        { "model", &path, NULL }, { "synthetic", &synth, NULL }, { "batch", &batch_s, NULL },
        { "iters", &iters_s, NULL }, { "threads", &threads_s, NULL }, { "gemm", &gemm_s, NULL },
        { "no-pack", NULL, &no_pack }, { "dtype", &dtype, NULL },
        { "compute", &compute, NULL },
    };
    dit_model_settings set;
    dit_model *m = NULL;
    char err[512] = "";
    bench_opts o;
    int rc = cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), bench_usage);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (!batch_s) {
        cli_fail("bench needs --batch B");
        return CLI_EUSAGE;
    }
    if (path && synth) {
        cli_fail("give --model or --synthetic, not both");
        return CLI_EUSAGE;
    }
    if (dtype && !synth) {
        cli_fail("--dtype is for --synthetic models (convert a model with ditmoe convert --dtype)");
        return CLI_EUSAGE;
    }
    if ((rc = cli_int("batch", batch_s, 1, 1024, &o.batch)) ||
        (rc = cli_int("iters", iters_s, 1, 100000, &o.iters)) ||
        (threads_s && (rc = cli_int("threads", threads_s, 1, 256, &o.threads))) ||
        (rc = cli_int("gemm", gemm_s, 64, 8192, &o.gemm_n)))
        return rc;
    if (!threads_s)
        o.threads = cli_cores();
    dit_set_blas_threads(o.threads); /* the yardstick uses BLAS's own threads */
    o.gemm = bench_sgemm(o.gemm_n);
    cli_engine_setup();              /* the engine runs single-threaded sgemms on its pool */
    if (o.gemm <= 0)
        return cli_fail("out of memory for the %d x %d sgemm", o.gemm_n, o.gemm_n);
    if (synth) {
        name = synth;
        if ((rc = cli_model_settings(&set, no_pack, compute)))
            return rc;
        rc = dit_model_synthetic(&m, synth, dtype, 1, &set, err, sizeof err);
        if (rc != DIT_OK)
            return cli_fail("%s", err[0] ? err : dit_strerror(rc));
    } else if ((rc = cli_load_model(path, no_pack, compute, &m, &name))) {
        return rc;
    }
    rc = bench_run(m, name, &o);
    dit_model_free(m);
    return rc;
}
