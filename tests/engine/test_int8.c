/* test_int8.c: the int8 compute mode's pieces (kernels/int8.c) and its
 * refusal.
 *
 * Per-token activation quantisation: a zero row, the round-trip bound
 * |x - s q| <= s / 2, and values that must land on +-127. The block sums of
 * the integer GEMM against a plain int64 reference computed element by
 * element over the whole row (equal exactly, including all-extreme
 * operands); the rescaled GEMM against double precision from the same
 * integers; its error against the F32 product of the unquantised inputs.
 * And compute int8 at load: refused with DIT_E_UNSUPPORTED and a message
 * (naming VNNI on CPUs without it) rather than run in F32.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ditmoe/dit.h>
#include "int8.h"
#include "rng.h"

#include "check.h"

static void test_quantize(void)
{
    enum { M = 3, K = 64 };
    float x[M * K], xs[M];
    int8_t q[M * K];
    rng_default r;
    rng_default_init(&r, 7, 0);
    rng_default_randn(&r, x, M * K);
    for (int k = 0; k < K; k++)
        x[K + k] = 0.0f; /* row 1: zeros */
    x[2 * K + 5] = -3.0f, x[2 * K + 6] = 3.0f; /* row 2: max |x| = 3 at both signs */
    for (int k = 0; k < K; k++)
        if (k != 5 && k != 6)
            x[2 * K + k] = fmaxf(fminf(x[2 * K + k], 2.9f), -2.9f);
    int8_quantize_rows(q, xs, x, M, K);
    CHECK(xs[1] == 0.0f, "zero row scale %g", xs[1]);
    CHECK(xs[2] == 3.0f / 127.0f && q[2 * K + 5] == -127 && q[2 * K + 6] == 127,
          "extremes: scale %g, q %d %d", xs[2], q[2 * K + 5], q[2 * K + 6]);
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) {
            float e = fabsf(x[m * K + k] - xs[m] * q[m * K + k]);
            CHECK(e <= xs[m] * 0.5f * (1 + 1e-6f) && (m != 1 || q[m * K + k] == 0),
                  "row %d col %d: |x - s q| = %g, s = %g", m, k, e, xs[m]);
        }
}

/* A Q8 matrix (N, K) of random values, or all +-127 when extreme. */
static void random_q8(q8_block *w, int N, int K, uint64_t seed, int extreme)
{
    uint64_t s = seed;
    for (int i = 0; i < N * K / Q8_BLOCK; i++) {
        w[i].d = f32_to_f16(0.01f + 0.001f * (float)(i % 7));
        for (int k = 0; k < Q8_BLOCK; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            int v = (int)(s >> 56) - 128;
            w[i].q[k] = (int8_t)(extreme ? (v < 0 ? -127 : 127) : v < -127 ? -127 : v);
        }
    }
}

static void test_gemm(int M, int N, int K, int extreme)
{
    int nb = K / Q8_BLOCK;
    float *x = malloc(sizeof(float) * (size_t)M * K), *xs = malloc(sizeof(float) * (size_t)M);
    float *out = malloc(sizeof(float) * (size_t)M * N), *bias = malloc(sizeof(float) * (size_t)N);
    int8_t *xq = malloc((size_t)M * K);
    q8_block *w = malloc(sizeof *w * (size_t)N * nb);
    int32_t *acc = malloc(sizeof *acc * (size_t)M * N * nb);
    rng_default r;
    rng_default_init(&r, (uint64_t)(M * 1000 + N), 0);
    rng_default_randn(&r, x, (size_t)M * K);
    rng_default_randn(&r, bias, (size_t)N);
    random_q8(w, N, K, (uint64_t)K, extreme);
    int8_quantize_rows(xq, xs, x, M, K);
    if (extreme)
        for (int i = 0; i < M * K; i++)
            xq[i] = (int8_t)(i % 3 ? -127 : 127);
    int8_block_sums(acc, xq, w, M, N, K);
    int8_gemm_ref(out, xq, xs, w, bias, M, N, K);
    int bad = 0;
    double worst = 0, num = 0, den = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            /* exact: int64 over the row, element by element */
            int64_t blk[64] = { 0 };
            for (int k = 0; k < K; k++)
                blk[k / Q8_BLOCK] += (int64_t)xq[m * K + k] * w[n * nb + k / Q8_BLOCK].q[k % Q8_BLOCK];
            double ref = 0, f32 = bias[n];
            for (int b = 0; b < nb; b++) {
                bad += acc[((size_t)m * N + n) * nb + b] != blk[b];
                ref += (double)f16_to_f32(w[n * nb + b].d) * (double)blk[b];
                for (int k = 0; k < Q8_BLOCK; k++)
                    f32 += (double)x[m * K + b * Q8_BLOCK + k] * f16_to_f32(w[n * nb + b].d) *
                           w[n * nb + b].q[k];
            }
            ref = ref * xs[m] + bias[n];
            double o = out[(size_t)m * N + n];
            double e = fabs(o - ref) / (fabs(ref) + 1e-3);
            worst = e > worst ? e : worst;
            num += fabs(o - f32), den += fabs(f32);
        }
    CHECK(bad == 0, "%dx%dx%d: %d block sums differ from the int64 reference", M, N, K, bad);
    CHECK(worst < 1e-5, "%dx%dx%d: rescaled sums off by %g (relative)", M, N, K, worst);
    if (!extreme) /* activation quantisation costs about 1/127 of a row's max */
        CHECK(num / den < 1.5e-2, "%dx%dx%d: int8 vs F32 mean relative error %g", M, N, K,
              num / den);
    printf("int8 GEMM %dx%dx%d%s: block sums exact, rescaled within %.1e", M, N, K,
           extreme ? " (all +-127)" : "", worst);
    printf(extreme ? "\n" : ", vs F32 %.2e\n", num / den);
    free(x), free(xs), free(out), free(bias), free(xq), free(w), free(acc);
}

static void test_refusal(void)
{
    dit_model_settings set;
    dit_model_settings_default(&set);
    CHECK(set.compute == DIT_COMPUTE_F32, "default compute %d", set.compute);
    CHECK(dit_compute_parse("int8") == DIT_COMPUTE_INT8 && dit_compute_parse("f32") == 0 &&
              dit_compute_parse("int4") == -1 && dit_compute_parse(NULL) == -1, "parse");
    set.compute = DIT_COMPUTE_INT8;
    dit_model *m = (dit_model *)1;
    char err[512] = "";
    int rc = dit_model_synthetic(&m, "s2", "q8", 1, &set, err, sizeof err);
    CHECK(rc == DIT_E_UNSUPPORTED && m == NULL && strstr(err, "compute int8"),
          "compute int8 not refused: rc %d, %s", rc, err);
    if (!int8_cpu_has_vnni())
        CHECK(strstr(err, "VNNI") && strstr(err, "no int8 dot-product"),
              "refusal without VNNI does not say why: %s", err);
    printf("compute int8 refused (this CPU %s VNNI): %s\n", int8_cpu_has_vnni() ? "has" : "lacks",
           err);
}

int main(void)
{
    test_quantize();
    test_gemm(5, 7, 64, 0);
    test_gemm(13, 33, 384, 0);
    test_gemm(3, 4, 2048, 1);
    test_refusal();
    return check_failures ? 1 : 0;
}
