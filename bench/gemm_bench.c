/* gemm_bench.c: the engine's packed GEMM kernel against OpenBLAS sgemm, one
 * thread, at the shapes a forward pass runs.
 *
 *   gemm_bench [--rounds R]
 *
 * For each M x N x K (M tokens, N outputs, K inputs: out = in W^T) it
 * times cblas_sgemm on W as stored and the kernel entry on W packed once,
 * back to back in every round (on the process's CPU clock) so machine load falls on both alike, and prints the
 * best round of each in GFLOP/s with their ratio, and the largest
 * difference between the two results. A GLU row times the fused gate/up
 * pass against the two sgemm calls it replaces (SwiGLU sweep not counted
 * on the BLAS side). Rows marked F16/BF16 run the same product on a
 * 16-bit pack, Q8 rows on an 8-bit pack (the kernel widens in registers;
 * BLAS gets the widened values as F32). The kernel entry is the one a model would choose
 * (the best this CPU runs, or DITMOE_ISA=avx512|avx2|neon|c).
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ditmoe/dit.h>

#include "gemm.h"
#include "ops.h"

/* The process's CPU time: one thread runs, and other jobs time-slicing a
 * shared machine do not inflate it as they do wall time. */
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef struct shape {
    int M, N, K, glu, dtype;
    const char *what;
} shape;

static const shape SHAPES[] = {
    { 512, 1536, 384, 1, ST_F32, "S/2 batch 8: one expert's gate+up (GLU)" },
    { 512, 384, 1536, 0, ST_F32, "S/2 batch 8: one expert's down" },
    { 2048, 1152, 384, 0, ST_F32, "S/2 batch 8: qkv" },
    { 2048, 384, 384, 0, ST_F32, "S/2 batch 8: attention proj" },
    { 392, 256, 128, 1, ST_F32, "default model, 32 rows: expert gate+up (GLU)" },
    { 392, 128, 256, 0, ST_F32, "default model, 32 rows: expert down" },
    { 25, 256, 128, 1, ST_F32, "default model, 2 rows: expert gate+up (GLU)" },
    { 98, 384, 128, 0, ST_F32, "default model, 2 rows: qkv" },
    { 1024, 1024, 1024, 0, ST_F32, "square" },
    { 512, 1536, 384, 1, ST_F16, "S/2 batch 8: gate+up (GLU), F16 pack" },
    { 512, 384, 1536, 0, ST_F16, "S/2 batch 8: down, F16 pack" },
    { 512, 1536, 384, 1, ST_BF16, "S/2 batch 8: gate+up (GLU), BF16 pack" },
    { 512, 384, 1536, 0, ST_BF16, "S/2 batch 8: down, BF16 pack" },
    { 512, 1536, 384, 1, ST_Q8, "S/2 batch 8: gate+up (GLU), Q8 pack" },
    { 512, 384, 1536, 0, ST_Q8, "S/2 batch 8: down, Q8 pack" },
    { 64, 5632, 1408, 1, ST_F16, "G/2 batch 2 (64 rows an expert): gate+up (GLU), F16" },
    { 64, 5632, 1408, 1, ST_Q8, "G/2 batch 2 (64 rows an expert): gate+up (GLU), Q8" },
    { 64, 1408, 5632, 0, ST_F16, "G/2 batch 2 (64 rows an expert): down, F16" },
    { 64, 1408, 5632, 0, ST_Q8, "G/2 batch 2 (64 rows an expert): down, Q8" },
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

/* Rounds w to 16 bits in place (truncation: the values only need to be
 * the same on both sides) and returns the 16-bit copy, or NULL for F32. */
static uint16_t *to_half(float *w, size_t n, int dtype)
{
    uint16_t *h = dtype == ST_F32 ? NULL : malloc(n * sizeof *h);
    for (size_t i = 0; h && i < n; i++) {
        uint32_t b;
        memcpy(&b, &w[i], 4);
        if (dtype == ST_BF16) {
            h[i] = (uint16_t)(b >> 16);
            w[i] = bf16_to_f32(h[i]);
        } else { /* |w| < 0.5: normal or flushed */
            uint32_t e = (b >> 23) & 0xff;
            h[i] = (uint16_t)(((b >> 16) & 0x8000) |
                              (e < 113 ? 0 : ((e - 112) << 10) | ((b >> 13) & 0x3ff)));
            w[i] = f16_to_f32(h[i]);
        }
    }
    return h;
}

static int run(const gemm_kernel *gk, const shape *s, int rounds)
{
    int M = s->M, N = s->N, K = s->K, W = s->glu ? 2 * N : N;
    float *in = randv((size_t)M * K, 1), *w = randv((size_t)W * K, 2);
    size_t nw = (size_t)W * K;
    /* 16-bit: rounded in place; Q8: quantised, then w dequantised, so BLAS
     * multiplies the values the pack holds */
    void *h = s->dtype == ST_Q8 ? malloc(dtype_bytes(ST_Q8, nw))
                                : w ? to_half(w, nw, s->dtype) : NULL;
    if (s->dtype == ST_Q8 && h && w) {
        dtype_get(ST_Q8)->from_f32(h, w, nw);
        dtype_get(ST_Q8)->to_f32(w, h, nw);
    }
    const void *wd = h ? (const void *)h : (const void *)w;
    float *ref = malloc(sizeof(float) * (size_t)M * W), *out = malloc(sizeof(float) * (size_t)M * N);
    void *pk = aligned_alloc(64, gk->pack_bytes(gk, N, K, s->glu, s->dtype));
    if (!in || !w || !ref || !out || !pk || (s->dtype != ST_F32 && !h))
        return 1;
    kmat g = { s->dtype, wd, N, K, NULL, 0 };
    kmat u = { s->dtype, (const char *)wd + dtype_bytes(s->dtype, (size_t)N * K), N, K, NULL, 0 };
    float *row = malloc(sizeof(float) * (size_t)K);
    if (!row)
        return 1;
    if (s->glu)
        gk->pack_glu(gk, pk, s->dtype, &g, &u, row);
    else
        gk->pack(gk, pk, s->dtype, &g, row);
    free(row);
    gemm_args a = { out, in, NULL, pk, s->dtype, N, K, N, K, s->glu, 0 };
    double flops = 2.0 * M * W * K, tb = 1e30, tp = 1e30;
    int iters = (int)(2e9 / flops) + 1;
    for (int r = 0; r < rounds; r++) {
        double t0 = now();
        for (int i = 0; i < iters; i++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, W, K, 1.0f, in, K, w, K,
                        0.0f, ref, W);
        double t1 = now();
        for (int i = 0; i < iters; i++)
            gemm_run(gk, &a, M);
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
    printf("| %d x %d x %d%s %s | %.1f | %.1f | %.2fx | %.1e | %s |\n", M, N, K,
           s->glu ? " GLU" : "", st_dtype_name(s->dtype), flops / tb * 1e-9, flops / tp * 1e-9,
           tb / tp, err, s->what);
    free(in), free(w), free(h), free(ref), free(out), free(pk);
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
    const gemm_kernel *gk;
    char err[256];
    if (gemm_kernel_choose(&gk, err, sizeof err)) {
        fprintf(stderr, "gemm_bench: %s\n", err);
        return 1;
    }
    openblas_set_num_threads(1);
    double peak = dit_kernel_peak_gflops(gk->name, 1);
    printf("kernel %s (tile %d x %d), FMA peak %.1f GFLOP/s (one thread), OpenBLAS core %s\n\n",
           gk->name, gk->mr, gk->nr, peak, openblas_get_corename());
    printf("| M x N x K | OpenBLAS GFLOP/s | packed GFLOP/s | packed / OpenBLAS | max diff | what |\n");
    printf("|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof SHAPES / sizeof *SHAPES; i++)
        if (run(gk, &SHAPES[i], rounds))
            return 1;
    return 0;
}
