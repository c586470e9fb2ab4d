/* gemm_bench.c: the engine's packed GEMM kernel against OpenBLAS sgemm, one
 * thread, at the shapes a forward pass runs.
 *
 *   gemm_bench [--rounds R]
 *
 * For each M x N x K (M tokens, N outputs, K inputs: out = in W^T) it
 * times cblas_sgemm on W as stored and gemm_tile on W packed once, back to
 * back in every round so machine load falls on both alike, and prints the
 * best round of each in GFLOP/s with their ratio, and the largest
 * difference between the two results. A GLU row times the fused gate/up
 * pass against the two sgemm calls it replaces (SwiGLU sweep not counted
 * on the BLAS side). Needs AVX-512F (else it says so and exits 77).
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gemm.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef struct shape {
    int M, N, K, glu;
    const char *what;
} shape;

static const shape SHAPES[] = {
    { 512, 1536, 384, 1, "S/2 batch 8: one expert's gate+up (GLU)" },
    { 512, 384, 1536, 0, "S/2 batch 8: one expert's down" },
    { 2048, 1152, 384, 0, "S/2 batch 8: qkv" },
    { 2048, 384, 384, 0, "S/2 batch 8: attention proj" },
    { 392, 256, 128, 1, "default model, 32 rows: expert gate+up (GLU)" },
    { 392, 128, 256, 0, "default model, 32 rows: expert down" },
    { 25, 256, 128, 1, "default model, 2 rows: expert gate+up (GLU)" },
    { 98, 384, 128, 0, "default model, 2 rows: qkv" },
    { 1024, 1024, 1024, 0, "square" },
};

static float *randv(size_t n, unsigned seed)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    return v;
}

static int run(const shape *s, int rounds)
{
    int M = s->M, N = s->N, K = s->K, W = s->glu ? 2 * N : N;
    float *in = randv((size_t)M * K, 1), *w = randv((size_t)W * K, 2);
    float *ref = malloc(sizeof(float) * (size_t)M * W), *out = malloc(sizeof(float) * (size_t)M * N);
    float *pk = aligned_alloc(64, gemm_pack_floats(N, K, s->glu) * sizeof(float));
    if (!in || !w || !ref || !out || !pk)
        return 1;
    dit_mat g = { 0, w, N, K, NULL }, u = { 0, w + (size_t)N * K, N, K, NULL };
    if (s->glu)
        gemm_pack_glu(pk, &g, &u);
    else
        gemm_pack(pk, &g);
    gemm_args a = { out, in, pk, NULL, N, K, N, K, s->glu };
    double flops = 2.0 * M * W * K, tb = 1e30, tp = 1e30;
    int iters = (int)(2e9 / flops) + 1;
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        for (int i = 0; i < iters; i++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, W, K, 1.0f, in, K, w, K,
                        0.0f, ref, W);
        double t1 = now();
        for (int i = 0; i < iters; i++)
            gemm_tile(&a, 0, M, 0, gemm_panels(N, s->glu));
        double t2 = now();
        tb = fmin(tb, (t1 - t0) / iters);
        tp = fmin(tp, (t2 - t1) / iters);
    }
    double err = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double want = ref[(size_t)i * W + j];
            if (s->glu)
                want = want / (1 + exp(-want)) * ref[(size_t)i * W + N + j];
            err = fmax(err, fabs(out[(size_t)i * N + j] - want));
        }
    printf("| %d x %d x %d%s | %.1f | %.1f | %.2fx | %.1e | %s |\n", M, N, K,
           s->glu ? " GLU" : "", flops / tb * 1e-9, flops / tp * 1e-9, tb / tp, err, s->what);
    free(in), free(w), free(ref), free(out), free(pk);
    return 0;
}

int main(int argc, char **argv)
{
    int rounds = 5;
    if (argc == 3 && !strcmp(argv[1], "--rounds"))
        rounds = atoi(argv[2]);
    if (rounds < 1 || (argc != 1 && argc != 3)) {
        fprintf(stderr, "usage: gemm_bench [--rounds R]\n");
        return 2;
    }
    if (!gemm_available()) {
        printf("gemm_bench: this CPU has no AVX-512F; the engine uses BLAS here\n");
        return 77;
    }
    openblas_set_num_threads(1);
    printf("| M x N x K | OpenBLAS GFLOP/s | packed GFLOP/s | packed / OpenBLAS | max diff | what |\n");
    printf("|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof SHAPES / sizeof *SHAPES; i++)
        if (run(&SHAPES[i], rounds))
            return 1;
    return 0;
}
