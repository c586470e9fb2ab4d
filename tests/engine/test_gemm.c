/* test_gemm.c: the packed GEMM kernel (engine/gemm.c) against a plain
 * double-precision product, on shapes that exercise every edge: row
 * counts that are not multiples of the kernel's 12-row tile, column counts
 * that are not multiples of a panel, K of 1, F16/BF16 packs widened by
 * the kernel, a GLU pair of mixed dtypes, bias, the GLU epilogue, and products split into row and
 * panel tiles the way the pool splits them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "ops.h"

#include "check.h"

static uint64_t state = 88172645463325252ull;

static float rnd(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (float)((state >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

/* bf16 and f16 encodings of small values (|v| < 2) by truncation: the
 * test compares against the widened value, so rounding does not matter */
static uint16_t to_bf16(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    return (uint16_t)(b >> 16);
}

static uint16_t to_f16(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    uint32_t sign = (b >> 16) & 0x8000, e = (b >> 23) & 0xff;
    if (e < 127 - 14)
        return (uint16_t)sign; /* flush tiny values: fine for the test */
    return (uint16_t)(sign | ((e - 127 + 15) << 10) | ((b >> 13) & 0x3ff));
}

/* A matrix (rows, cols) in dtype, with its widened values in wide. */
static kmat make_mat(int dtype, int rows, int cols, void **store, float *wide)
{
    size_t n = (size_t)rows * cols;
    *store = malloc(n * (dtype == ST_F32 ? 4 : 2));
    for (size_t i = 0; i < n; i++) {
        float v = rnd();
        if (dtype == ST_F32) {
            ((float *)*store)[i] = v;
        } else {
            uint16_t h = dtype == ST_F16 ? to_f16(v) : to_bf16(v);
            ((uint16_t *)*store)[i] = h;
            v = dtype == ST_F16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
        wide[i] = v;
    }
    return (kmat){ dtype, *store, rows, cols, NULL, 0 };
}

static double silu(double v)
{
    return v / (1.0 + exp(-v));
}

/* Largest relative error of out against the double product. */
static double check_product(const float *out, const float *a, const float *w, const float *u,
                            const float *bias, int M, int N, int K)
{
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0, t = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                s += (double)a[(size_t)i * K + k] * w[(size_t)j * K + k];
                mag += fabs((double)a[(size_t)i * K + k] * w[(size_t)j * K + k]);
                if (u)
                    t += (double)a[(size_t)i * K + k] * u[(size_t)j * K + k];
            }
            double want = u ? silu(s) * t : s + (bias ? bias[j] : 0);
            double scale = u ? (mag + 1) * (fabs(t) + 1) : mag + 1;
            double e = fabs(out[(size_t)i * N + j] - want) / scale;
            worst = e > worst ? e : worst;
        }
    return worst;
}

/* dtype: of the weights; up_dtype: of the GLU's up matrix (a pair that
 * disagrees packs as F32). */
static void run_case2(int dtype, int up_dtype, int M, int N, int K, int glu, int with_bias)
{
    float *a = malloc(sizeof(float) * (size_t)M * K);
    float *wg = malloc(sizeof(float) * (size_t)N * K), *wu = malloc(sizeof(float) * (size_t)N * K);
    float *bias = malloc(sizeof(float) * (size_t)N);
    float *out = malloc(sizeof(float) * ((size_t)M * N + 1));
    void *sg, *su = NULL;
    for (size_t i = 0; i < (size_t)M * K; i++)
        a[i] = rnd();
    for (int j = 0; j < N; j++)
        bias[j] = rnd();
    kmat g = make_mat(dtype, N, K, &sg, wg), u = { 0 };
    if (glu)
        u = make_mat(up_dtype, N, K, &su, wu);
    int pd = gemm_pack_dtype(&g, glu ? &u : NULL);
    CHECK(pd == (dtype == up_dtype ? dtype : ST_F32), "pack dtype %d for %d/%d", pd, dtype, up_dtype);
    size_t bytes = gemm_pack_bytes(N, K, glu, pd);
    CHECK(bytes % 64 == 0, "pack size a multiple of 64: %zu", bytes);
    void *pk = aligned_alloc(64, bytes);
    float *row = malloc(sizeof(float) * (size_t)K);
    if (glu)
        gemm_pack_glu(pk, pd, &g, &u, row);
    else
        gemm_pack(pk, pd, &g, row);
    free(row);
    gemm_args args = { out, a, with_bias ? bias : NULL, pk, pd, N, K, N, K, glu };
    int np = gemm_panels(N, glu);
    out[(size_t)M * N] = 12345.0f; /* guard: nothing may be written past the end */
    /* whole product, then the same split into 2 x 2 tiles at odd places */
    for (int split = 0; split < 2; split++) {
        memset(out, 0xff, sizeof(float) * (size_t)M * N); /* NaN everywhere */
        if (!split) {
            gemm_tile(&args, 0, M, 0, np);
        } else {
            int mh = M / 2 + (M > 2), ph = np / 2;
            gemm_tile(&args, 0, mh, 0, ph);
            gemm_tile(&args, 0, mh, ph, np);
            gemm_tile(&args, mh, M, 0, ph);
            gemm_tile(&args, mh, M, ph, np);
        }
        double e = check_product(out, a, wg, glu ? wu : NULL, with_bias ? bias : NULL, M, N, K);
        CHECK(e < 1e-5, "%s M %d N %d K %d glu %d bias %d split %d: error %g",
              st_dtype_name(dtype), M, N, K, glu, with_bias, split, e);
    }
    CHECK(out[(size_t)M * N] == 12345.0f, "wrote past the output (M %d N %d)", M, N);
    free(a), free(wg), free(wu), free(bias), free(out), free(sg), free(su), free(pk);
}

static void run_case(int dtype, int M, int N, int K, int glu, int with_bias)
{
    run_case2(dtype, dtype, M, N, K, glu, with_bias);
}

int main(void)
{
    if (!gemm_available()) {
        printf("SKIP: this CPU has no AVX-512F, the packed kernel is never used here\n");
        return 77;
    }
    static const int Ms[] = { 1, 2, 11, 12, 13, 25, 49 };
    static const int Ns[] = { 1, 8, 15, 16, 17, 32, 33, 70, 128 };
    static const int Ks[] = { 1, 3, 16, 67 };
    for (size_t i = 0; i < sizeof Ms / sizeof *Ms; i++)
        for (size_t j = 0; j < sizeof Ns / sizeof *Ns; j++)
            for (size_t k = 0; k < sizeof Ks / sizeof *Ks; k++)
                for (int d = ST_F32; d <= ST_BF16; d++) { /* packs keep 16-bit weights */
                    run_case(d, Ms[i], Ns[j], Ks[k], 0, (int)(i + j) % 2);
                    run_case(d, Ms[i], Ns[j], Ks[k], 1, 0);
                }
    run_case2(ST_F16, ST_BF16, 25, 33, 16, 1, 0); /* a mixed GLU pair packs as F32 */
    run_case(ST_F16, 30, 40, 200, 1, 0);
    run_case(ST_F32, 200, 300, 600, 0, 1); /* several panel blocks */
    run_case(ST_BF16, 40, 300, 1200, 0, 1);
    printf("%s\n", check_failures ? "test_gemm: FAILED" : "test_gemm: ok");
    return check_failures ? 1 : 0;
}
