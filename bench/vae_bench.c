/* vae_bench.c: SD-VAE decoder speed against the BLAS it runs on.
 *
 *   vae_bench DIR [--size S] [--threads T] [--pool 0|1] [--rounds R] [--batch B]
 *
 * Loads the VAE in DIR (bench/vae_bench.py makes one at the sd-vae-ft-mse
 * shape with random weights), then runs R rounds, each of: sgemm at the
 * shapes the decoder's convolutions have, one S x S latent decoded, and a
 * batch of B decoded. Interleaving keeps the ratios fair on a shared,
 * noisy machine; the best of the rounds is reported, one "key value" line
 * each, for vae_bench.py to read. Every time is taken on two clocks: wall
 * time, and the process's CPU time, which time-slicing with other jobs on
 * a shared machine does not inflate (it is wall time * threads when the
 * process has the cores to itself and its threads never wait). --pool 1
 * decodes on an engine worker pool of T threads with BLAS at 1 thread (as
 * in the server), --pool 0 with BLAS's own T threads.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ditmoe/dit.h>
#include "ops.h"
#include "vae.h"

typedef struct stamp {
    double wall, cpu;
} stamp;

static stamp now(void)
{
    struct timespec w, c;
    clock_gettime(CLOCK_MONOTONIC, &w);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c);
    return (stamp){(double)w.tv_sec + 1e-9 * (double)w.tv_nsec,
                   (double)c.tv_sec + 1e-9 * (double)c.tv_nsec};
}

static stamp since(stamp t0)
{
    stamp t = now();
    return (stamp){t.wall - t0.wall, t.cpu - t0.cpu};
}

static void keep_best(stamp *best, stamp t)
{
    best->wall = t.wall < best->wall ? t.wall : best->wall;
    best->cpu = t.cpu < best->cpu ? t.cpu : best->cpu;
}

static void fill(float *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)(seed >> 8) / 16777216.0f * 2.0f - 1.0f;
    }
}

/* Best GFLOP/s (wall, CPU) of C (M, N) = A (M, K) B (K, N) over shapes of
 * the decoder's convolutions: M = cout, K = 9 cin, N = output positions. */
static stamp sgemm_gflops(float *a, float *b, float *c)
{
    static const int shapes[][3] = {{512, 2048, 4608}, {256, 4096, 2304}, {128, 8192, 1152}};
    stamp best = {0, 0};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        stamp t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K,
                    b, N, 0.0f, c, N);
        stamp t = since(t0);
        double f = 2.0 * M * N * K * 1e-9;
        best.wall = f / t.wall > best.wall ? f / t.wall : best.wall;
        best.cpu = f / t.cpu > best.cpu ? f / t.cpu : best.cpu;
    }
    return best;
}

static stamp decode_seconds(const vae_model *m, struct op_pool *pool, void *ws,
                            size_t wsb, int n, int s, const float *z, float *rgb)
{
    stamp t0 = now();
    int rc = vae_decode(m, pool, ws, wsb, n, s, s, z, rgb);
    stamp t = since(t0);
    if (rc != DIT_OK) {
        fprintf(stderr, "vae_decode: %s\n", dit_strerror(rc));
        exit(1);
    }
    return t;
}

int main(int argc, char **argv)
{
    int size = 32, threads = 1, rounds = 3, batch = 4, use_pool = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: vae_bench DIR [--size S] [--threads T] [--rounds R] [--batch B]\n");
        return 2;
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--size")) size = v;
        else if (!strcmp(argv[i], "--threads")) threads = v;
        else if (!strcmp(argv[i], "--rounds")) rounds = v;
        else if (!strcmp(argv[i], "--batch")) batch = v;
        else if (!strcmp(argv[i], "--pool")) use_pool = v;
    }
    openblas_set_num_threads(threads);
    char err[512];
    vae_model *m;
    stamp t0 = now();
    const gemm_kernel *gk = NULL;
    if (gemm_kernel_choose(&gk, err, sizeof err) != DIT_OK ||
        vae_load(&m, argv[1], gk, err, sizeof err) != DIT_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("load_seconds %.3f\n", since(t0).wall);
    int up = vae_upscale(m);
    size_t zn = (size_t)batch * vae_latent_channels(m) * size * size;
    size_t on = (size_t)batch * vae_out_channels(m) * size * up * size * up;
    size_t wsb = vae_workspace_bytes(m, use_pool && threads > 1 ? threads : 1, batch, size, size);
    float *z = malloc(zn * sizeof *z), *rgb = malloc(on * sizeof *rgb);
    float *a = malloc(sizeof(float) << 22), *b = malloc(sizeof(float) << 24);
    float *c = malloc(sizeof(float) << 22);
    void *ws = malloc(wsb);
    struct op_pool *pool = use_pool && threads > 1 ? op_pool_new(threads) : NULL;
    if (!z || !rgb || !a || !b || !c || !ws || (use_pool && threads > 1 && !pool)) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    fill(z, zn, 1), fill(a, (size_t)1 << 22, 2), fill(b, (size_t)1 << 24, 3);
    double flops = vae_decode_flops(m, size, size) * 1e-9;
    stamp g = {0, 0}, t1 = {1e30, 1e30}, tb = {1e30, 1e30};
    for (int r = 0; r < rounds; r++) {
        stamp x = sgemm_gflops(a, b, c);
        g.wall = x.wall > g.wall ? x.wall : g.wall;
        g.cpu = x.cpu > g.cpu ? x.cpu : g.cpu;
        openblas_set_num_threads(pool ? 1 : threads);
        keep_best(&t1, decode_seconds(m, pool, ws, wsb, 1, size, z, rgb));
        keep_best(&tb, decode_seconds(m, pool, ws, wsb, batch, size, z, rgb));
        openblas_set_num_threads(threads); /* the yardstick: BLAS's threads */
    }
    printf("pool %d\nthreads %d\nlatent_side %d\nimage_side %d\nbatch %d\n",
           pool != NULL, threads, size, size * up, batch);
    printf("workspace_mib %.1f\nweights_mib %.1f\n", wsb / 1048576.0,
           vae_weight_bytes(m) / 1048576.0);
    printf("gflop_per_image %.2f\n", flops);
    printf("sgemm_gflops %.1f\nsgemm_cpu_gflops %.1f\n", g.wall, g.cpu);
    printf("decode1_seconds %.3f\ndecode1_cpu_seconds %.3f\n", t1.wall, t1.cpu);
    printf("decodeB_seconds %.3f\ndecodeB_cpu_seconds %.3f\n", tb.wall, tb.cpu);
    printf("decode1_gflops %.1f\ndecodeB_gflops %.1f\n", flops / t1.wall,
           batch * flops / tb.wall);
    printf("decode1_of_sgemm %.2f\ndecodeB_of_sgemm %.2f\n", flops / t1.wall / g.wall,
           batch * flops / tb.wall / g.wall);
    printf("decode1_cpu_of_sgemm %.2f\ndecodeB_cpu_of_sgemm %.2f\n", flops / t1.cpu / g.cpu,
           batch * flops / tb.cpu / g.cpu);
    free(z), free(rgb), free(a), free(b), free(c), free(ws);
    op_pool_free(pool);
    vae_free(m);
    return 0;
}
