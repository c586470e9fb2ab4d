/* vae_bench.c: SD-VAE decoder speed against the BLAS it runs on.
 *
 *   vae_bench DIR [--size S] [--threads T] [--rounds R] [--batch B]
 *
 * Loads the VAE in DIR (bench/vae_bench.py makes one at the sd-vae-ft-mse
 * shape with random weights), then runs R rounds, each of: sgemm at the
 * shapes the decoder's convolutions have, one S x S latent decoded, and a
 * batch of B decoded. Interleaving keeps the ratios fair on a shared,
 * noisy machine; the best of the rounds is reported, one "key value" line
 * each, for vae_bench.py to read.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dit.h"
#include "vae.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void fill(float *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)(seed >> 8) / 16777216.0f * 2.0f - 1.0f;
    }
}

/* Best GFLOP/s of C (M, N) = A (M, K) B (K, N) over the decoder's conv
 * shapes: M = cout, K = 9 cin, N = a band of output positions. */
static double sgemm_gflops(float *a, float *b, float *c)
{
    static const int shapes[][3] = {{512, 2048, 4608}, {256, 4096, 2304}, {128, 8192, 1152}};
    double best = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        double t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K,
                    b, N, 0.0f, c, N);
        t = now() - t;
        double g = 2.0 * M * N * K / t * 1e-9;
        best = g > best ? g : best;
    }
    return best;
}

static double decode_seconds(const vae_model *m, void *ws, size_t wsb, int n,
                             int s, const float *z, float *rgb)
{
    double t = now();
    int rc = vae_decode(m, ws, wsb, n, s, s, z, rgb);
    t = now() - t;
    if (rc != DIT_OK) {
        fprintf(stderr, "vae_decode: %s\n", dit_strerror(rc));
        exit(1);
    }
    return t;
}

int main(int argc, char **argv)
{
    int size = 32, threads = 1, rounds = 3, batch = 4;
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
    }
    openblas_set_num_threads(threads);
    char err[512];
    vae_model *m;
    double t0 = now();
    if (vae_load(&m, argv[1], err, sizeof err) != DIT_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("load_seconds %.3f\n", now() - t0);
    int up = vae_upscale(m);
    size_t zn = (size_t)batch * vae_latent_channels(m) * size * size;
    size_t on = (size_t)batch * vae_out_channels(m) * size * up * size * up;
    size_t wsb = vae_workspace_bytes(m, batch, size, size);
    float *z = malloc(zn * sizeof *z), *rgb = malloc(on * sizeof *rgb);
    float *a = malloc(sizeof(float) << 22), *b = malloc(sizeof(float) << 24);
    float *c = malloc(sizeof(float) << 22);
    void *ws = malloc(wsb);
    if (!z || !rgb || !a || !b || !c || !ws) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    fill(z, zn, 1), fill(a, (size_t)1 << 22, 2), fill(b, (size_t)1 << 24, 3);
    double flops = vae_decode_flops(m, size, size), g = 0, t1 = 1e30, tb = 1e30;
    for (int r = 0; r < rounds; r++) {
        double x = sgemm_gflops(a, b, c);
        g = x > g ? x : g;
        x = decode_seconds(m, ws, wsb, 1, size, z, rgb);
        t1 = x < t1 ? x : t1;
        x = decode_seconds(m, ws, wsb, batch, size, z, rgb);
        tb = x < tb ? x : tb;
    }
    printf("threads %d\nlatent %dx%d\nimage %dx%d\nbatch %d\n", threads, size, size,
           size * up, size * up, batch);
    printf("workspace_mib %.1f\nweights_mib %.1f\n", wsb / 1048576.0,
           vae_weight_bytes(m) / 1048576.0);
    printf("gflop_per_image %.2f\n", flops * 1e-9);
    printf("sgemm_gflops %.1f\n", g);
    printf("decode1_seconds %.3f\ndecode1_gflops %.1f\n", t1, flops / t1 * 1e-9);
    printf("decodeB_seconds %.3f\ndecodeB_gflops %.1f\n", tb, batch * flops / tb * 1e-9);
    printf("decode1_of_sgemm %.2f\ndecodeB_of_sgemm %.2f\n", flops / t1 * 1e-9 / g,
           batch * flops / tb * 1e-9 / g);
    free(z), free(rgb), free(a), free(b), free(c), free(ws);
    vae_free(m);
    return 0;
}
