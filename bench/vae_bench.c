/* vae_bench.c: SD-VAE decoder speed against the FP32 FMA peak of the cores.
 *
 *   vae_bench DIR [--size S] [--threads T] [--rounds R]
 *
 * Loads the VAE in DIR (bench/vae_bench.py makes one at the sd-vae-ft-mse
 * shape with random weights) on the GEMM kernel entry a model would choose
 * (the best this CPU runs, or DITMOE_ISA), then runs R rounds of one S x S
 * latent decoded on an engine pool of T threads, and reports the best, one
 * "key value" line each, for vae_bench.py to read. Every time is taken on
 * two clocks: wall time, and the process's CPU time, which time-slicing
 * with other jobs on a shared machine does not inflate (it is wall time *
 * threads when the process has the cores to itself and its threads never
 * wait). The yardstick is dit_kernel_peak_gflops on the same threads: a
 * register-only FMA loop, which no BLAS can cripple.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ditmoe/dit.h>
#include "gemm.h"
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

static void fill(float *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)(seed >> 8) / 16777216.0f * 2.0f - 1.0f;
    }
}

/* Best decode time of R rounds; exits on a decode failure. */
static stamp best_decode(const vae_model *m, struct op_pool *pool, void *ws, size_t wsb,
                         int s, const float *z, float *rgb, int rounds)
{
    stamp best = {1e30, 1e30};
    for (int r = 0; r < rounds; r++) {
        stamp t0 = now();
        int rc = vae_decode(m, pool, ws, wsb, 1, s, s, z, rgb);
        stamp t = since(t0);
        if (rc != DIT_OK) {
            fprintf(stderr, "vae_decode: %s\n", dit_strerror(rc));
            exit(1);
        }
        best.wall = t.wall < best.wall ? t.wall : best.wall;
        best.cpu = t.cpu < best.cpu ? t.cpu : best.cpu;
    }
    return best;
}

int main(int argc, char **argv)
{
    int size = 32, threads = 2, rounds = 2;
    if (argc < 2) {
        fprintf(stderr, "usage: vae_bench DIR [--size S] [--threads T] [--rounds R]\n");
        return 2;
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        int v = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--size")) size = v;
        else if (!strcmp(argv[i], "--threads")) threads = v;
        else if (!strcmp(argv[i], "--rounds")) rounds = v;
    }
    openblas_set_num_threads(1); /* the mid block's attention, inside the pool's budget */
    char err[512];
    vae_model *m;
    const gemm_kernel *gk = NULL;
    if (threads < 1 || rounds < 1 || gemm_kernel_choose(&gk, err, sizeof err) != DIT_OK ||
        vae_load(&m, argv[1], gk, err, sizeof err) != DIT_OK) {
        fprintf(stderr, "%s\n", threads < 1 || rounds < 1 ? "bad --threads or --rounds" : err);
        return 1;
    }
    int up = vae_upscale(m);
    size_t zn = (size_t)vae_latent_channels(m) * size * size;
    size_t on = (size_t)vae_out_channels(m) * size * up * size * up;
    size_t wsb = vae_workspace_bytes(m, threads, 1, size, size);
    float *z = malloc(zn * sizeof *z), *rgb = malloc(on * sizeof *rgb);
    void *ws = malloc(wsb);
    struct op_pool *pool = threads > 1 ? op_pool_new(threads) : NULL;
    if (!z || !rgb || !ws || (threads > 1 && !pool)) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    fill(z, zn, 1);
    double gflop = vae_decode_flops(m, size, size) * 1e-9;
    double peak = dit_kernel_peak_gflops(gk->name, threads);
    stamp t = best_decode(m, pool, ws, wsb, size, z, rgb, rounds);
    printf("kernel %s\nthreads %d\nlatent_side %d\nimage_side %d\n", gk->name, threads, size,
           size * up);
    printf("gflop_per_image %.2f\npeak_gflops %.1f\n", gflop, peak);
    printf("decode_seconds %.3f\ndecode_cpu_seconds %.3f\n", t.wall, t.cpu);
    printf("decode_gflops %.1f\ndecode_cpu_gflops %.1f\n", gflop / t.wall, gflop / t.cpu);
    printf("of_peak %.3f\ncpu_of_peak %.3f\n", gflop / t.wall / peak,
           gflop / t.cpu / (peak / threads));
    free(z), free(rgb), free(ws);
    op_pool_free(pool);
    vae_free(m);
    return 0;
}
