/* test_gemm.c: every GEMM kernel entry (engine/kernels/gemm_*.c) this CPU
 * runs, checkasm style: the C reference against a plain double-precision
 * product, every other entry against the C reference's output on the same
 * pack, on shapes that exercise every edge: row counts that are not
 * multiples of a tile, column counts that are not multiples of a panel,
 * K of 1, F16/BF16 packs widened by the kernel, Q8 packs (8-bit values and
 * block scales widened in registers), GLU pairs of mixed dtypes,
 * bias, accumulation, the GLU epilogue, F32 packs of strided activations
 * (pack_f32), and products split into row and panel tiles the way the
 * pool splits them. It prints which entries ran and which this CPU lacks;
 * it fails, not skips, when an entry the CPU has goes wrong. */
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
    if (dtype == ST_Q8) { /* quantised and dequantised through the dtype table */
        for (size_t i = 0; i < n; i++)
            wide[i] = rnd();
        *store = malloc(dtype_bytes(ST_Q8, n));
        CHECK(dtype_get(ST_Q8)->from_f32(*store, wide, n) < 0, "Q8 quantisation refused");
        dtype_get(ST_Q8)->to_f32(wide, *store, n);
        return (kmat){ dtype, *store, rows, cols, NULL, 0 };
    }
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

static const gemm_kernel *kern;  /* the entry under test */
static const gemm_kernel *ref;   /* the C reference */
static int cases;

/* Largest difference of out from want (M, N), relative to want's largest
 * value (the entries round apart: FMA or not, their own exp). */
static double check_against(const float *out, const float *want, int M, int N)
{
    double worst = 0, big = 0;
    for (size_t i = 0; i < (size_t)M * N; i++) {
        double e = fabs((double)out[i] - want[i]);
        worst = e > worst || e != e ? e : worst;
        big = fmax(big, fabs((double)want[i]));
    }
    return worst / (big + 1);
}

/* The same product on the C reference (its own pack of g, u), for the
 * entries to match: want (M, N). */
static void reference(float *want, const float *a, const float *bias, const kmat *g,
                      const kmat *u, int M, int N, int K, int glu, int pd, int acc)
{
    void *pk = aligned_alloc(64, ref->pack_bytes(ref, N, K, glu, pd));
    float *row = malloc(sizeof(float) * (size_t)K);
    if (glu)
        ref->pack_glu(ref, pk, pd, g, u, row);
    else
        ref->pack(ref, pk, pd, g, row);
    gemm_args args = { want, a, bias, pk, pd, N, K, N, K, glu, acc };
    gemm_run(ref, &args, M);
    free(row), free(pk);
}

/* dtype: of the weights; up_dtype: of the GLU's up matrix (a pair that
 * disagrees packs as F32). */
static void run_case2(int dtype, int up_dtype, int M, int N, int K, int glu, int with_bias)
{
    float *a = malloc(sizeof(float) * (size_t)M * K);
    float *wg = malloc(sizeof(float) * (size_t)N * K), *wu = malloc(sizeof(float) * (size_t)N * K);
    float *bias = malloc(sizeof(float) * (size_t)N);
    float *out = malloc(sizeof(float) * ((size_t)M * N + 1));
    float *want = malloc(sizeof(float) * (size_t)M * N), *base = malloc(sizeof(float) * (size_t)M * N);
    int acc = !glu && (M + N) % 3 == 0; /* out += product on a third of the cases */
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
    size_t bytes = kern->pack_bytes(kern, N, K, glu, pd);
    CHECK(bytes % 64 == 0, "pack size a multiple of 64: %zu", bytes);
    void *pk = aligned_alloc(64, bytes);
    float *row = malloc(sizeof(float) * (size_t)K);
    if (glu)
        kern->pack_glu(kern, pk, pd, &g, &u, row);
    else
        kern->pack(kern, pk, pd, &g, row);
    free(row);
    for (size_t i = 0; i < (size_t)M * N; i++)
        base[i] = acc ? rnd() : 0.0f;
    if (kern != ref) {
        memcpy(want, base, sizeof(float) * (size_t)M * N);
        reference(want, a, with_bias ? bias : NULL, &g, &u, M, N, K, glu, pd, acc);
    }
    gemm_args args = { out, a, with_bias ? bias : NULL, pk, pd, N, K, N, K, glu, acc };
    int np = gemm_panels(kern, N, glu);
    out[(size_t)M * N] = 12345.0f; /* guard: nothing may be written past the end */
    /* whole product, then the same split into 2 x 2 tiles at odd places */
    for (int split = 0; split < 2; split++) {
        if (acc)
            memcpy(out, base, sizeof(float) * (size_t)M * N);
        else
            memset(out, 0xff, sizeof(float) * (size_t)M * N); /* NaN everywhere */
        if (!split) {
            kern->tile(&args, 0, M, 0, np);
        } else { /* an odd row split, off the tile size */
            int mh = M / 2 + (M > 2), ph = np / 2;
            kern->tile(&args, 0, mh, 0, ph);
            kern->tile(&args, 0, mh, ph, np);
            kern->tile(&args, mh, M, 0, ph);
            kern->tile(&args, mh, M, ph, np);
        }
        if (acc) /* the double product sees what was added */
            for (size_t i = 0; i < (size_t)M * N; i++)
                out[i] -= base[i];
        double e = check_product(out, a, wg, glu ? wu : NULL, with_bias ? bias : NULL, M, N, K);
        CHECK(e < 1e-5, "%s: %s M %d N %d K %d glu %d bias %d acc %d split %d: error %g",
              kern->name, st_dtype_name(dtype), M, N, K, glu, with_bias, acc, split, e);
        if (acc)
            for (size_t i = 0; i < (size_t)M * N; i++)
                out[i] += base[i];
        if (kern != ref) {
            e = check_against(out, want, M, N);
            CHECK(e < 1e-5, "%s against c: %s M %d N %d K %d glu %d acc %d split %d: %g",
                  kern->name, st_dtype_name(dtype), M, N, K, glu, acc, split, e);
        }
    }
    CHECK(out[(size_t)M * N] == 12345.0f, "%s wrote past the output (M %d N %d)", kern->name, M, N);
    cases++;
    free(a), free(wg), free(wu), free(bias), free(out), free(sg), free(su), free(pk);
    free(want), free(base);
}

static void run_case(int dtype, int M, int N, int K, int glu, int with_bias)
{
    run_case2(dtype, dtype, M, N, K, glu, with_bias);
}

/* pack_f32 of strided activations (as attention packs K and V^T, and
 * the VAE its im2col rows in pieces) equals pack of the same matrix. */
static void run_pack_f32(int N, int K)
{
    int ld = K + 3;
    float *src = malloc(sizeof(float) * (size_t)N * ld), *tr = malloc(sizeof(float) * (size_t)K * N);
    float *dense = malloc(sizeof(float) * (size_t)N * K), row[256];
    for (int j = 0; j < N; j++)
        for (int k = 0; k < ld; k++) {
            src[(size_t)j * ld + k] = rnd();
            if (k < K)
                dense[(size_t)j * K + k] = 0.5f * src[(size_t)j * ld + k],
                tr[(size_t)k * N + j] = src[(size_t)j * ld + k];
        }
    size_t bytes = kern->pack_bytes(kern, N, K, 0, ST_F32);
    float *p1 = aligned_alloc(64, bytes), *p2 = aligned_alloc(64, bytes), *p3 = aligned_alloc(64, bytes);
    kmat w = { ST_F32, dense, N, K, NULL, 0 };
    kern->pack(kern, p1, ST_F32, &w, row);
    memset(p2, 0x55, bytes), memset(p3, 0x55, bytes);
    kern->pack_f32(kern, p2, N, K, 0, K, src, ld, 1, 0.5f);  /* rows strided, scaled */
    int half = K / 2;                                          /* transposed, two pieces */
    kern->pack_f32(kern, p3, N, K, 0, half, tr, 1, N, 1.0f);
    kern->pack_f32(kern, p3, N, K, half, K - half, tr + (size_t)half * N, 1, N, 1.0f);
    size_t used = (size_t)gemm_panels(kern, N, 0) * K * kern->nr * sizeof(float);
    CHECK(!memcmp(p1, p2, used), "%s pack_f32 strided N %d K %d", kern->name, N, K);
    for (size_t i = 0; i < used / sizeof(float); i++)
        p3[i] *= 0.5f;
    CHECK(!memcmp(p1, p3, used), "%s pack_f32 transposed N %d K %d", kern->name, N, K);
    free(src), free(tr), free(dense), free(p1), free(p2), free(p3);
}

/* Multi-head attention on kern (op_attention_forward: scores and P.V on
 * the entry, K and V^T packed into per-thread scratch) against a double
 * reference, for token counts whose T*T is not a multiple of 16 (the
 * default model's 49 tokens): the packs after the scores must stay
 * 64-byte aligned for the entries' aligned panel loads. */
static void run_attention(int N, int T, int D, int heads, int threads)
{
    int hd = D / heads;
    size_t per = op_attention_floats(kern, T, hd);
    float *qkv = malloc(sizeof(float) * (size_t)N * T * 3 * D);  // (N, T, 3D)
    float *att = malloc(sizeof(float) * (size_t)N * T * D);      // (N, T, D)
    float *scratch = aligned_alloc(64, sizeof(float) * per * threads);
    double *p = malloc(sizeof(double) * T);
    for (size_t i = 0; i < (size_t)N * T * 3 * D; i++)
        qkv[i] = rnd();
    op_env e = { op_pool_new(threads), NULL, 0, kern };
    op_attention_forward(&e, scratch, att, qkv, N, T, D, heads);
    double worst = 0;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < T; i++) {
                const float *q = qkv + ((size_t)n * T + i) * 3 * D + h * hd;
                double mx = -1e300, sum = 0;
                for (int j = 0; j < T; j++) {
                    const float *k = qkv + ((size_t)n * T + j) * 3 * D + D + h * hd;
                    double d = 0;
                    for (int c = 0; c < hd; c++)
                        d += (double)q[c] * k[c];
                    p[j] = d / sqrt((double)hd);
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j < T; j++)
                    sum += p[j] = exp(p[j] - mx);
                for (int c = 0; c < hd; c++) {
                    double o = 0;
                    for (int j = 0; j < T; j++)
                        o += p[j] / sum * qkv[((size_t)n * T + j) * 3 * D + 2 * D + h * hd + c];
                    double d = fabs(o - att[((size_t)n * T + i) * D + h * hd + c]);
                    worst = d > worst ? d : worst;
                }
            }
    CHECK(worst < 1e-4, "%s attention N %d T %d D %d heads %d threads %d: max error %g",
          kern->name, N, T, D, heads, threads, worst);
    cases++;
    op_pool_free(e.pool);
    free(qkv), free(att), free(scratch), free(p);
}

/* Every case on the entry kern. */
static void run_entry(void)
{
    static const int Ms[] = { 1, 2, 5, 6, 7, 11, 12, 13, 25, 49 };
    static const int Ns[] = { 1, 8, 15, 16, 17, 32, 33, 70, 128 };
    static const int Ks[] = { 1, 3, 16, 67 };
    for (size_t i = 0; i < sizeof Ms / sizeof *Ms; i++)
        for (size_t j = 0; j < sizeof Ns / sizeof *Ns; j++)
            for (size_t k = 0; k < sizeof Ks / sizeof *Ks; k++)
                for (int d = ST_F32; d <= ST_BF16; d++) { /* packs keep 16-bit weights */
                    run_case(d, Ms[i], Ns[j], Ks[k], 0, (int)(i + j) % 2);
                    run_case(d, Ms[i], Ns[j], Ks[k], 1, 0);
                }
    for (size_t i = 0; i < sizeof Ms / sizeof *Ms; i++) /* 8-bit packs: K of whole blocks */
        for (size_t j = 0; j < sizeof Ns / sizeof *Ns; j++)
            for (int K = 32; K <= 96; K += 64) {
                run_case(ST_Q8, Ms[i], Ns[j], K, 0, (int)(i + j) % 2);
                run_case(ST_Q8, Ms[i], Ns[j], K, 1, 0);
            }
    run_case2(ST_Q8, ST_F16, 13, 33, 64, 1, 0); /* Q8 gate, F16 up: an F32 pack */
    run_case(ST_Q8, 40, 300, 1216, 0, 1);       /* several panel blocks */
    run_case2(ST_F16, ST_BF16, 25, 33, 16, 1, 0); /* a mixed GLU pair packs as F32 */
    run_case(ST_F16, 30, 40, 200, 1, 0);
    run_case(ST_F32, 200, 300, 600, 0, 1); /* several panel blocks */
    run_case(ST_BF16, 40, 300, 1200, 0, 1);
    for (size_t j = 0; j < sizeof Ns / sizeof *Ns; j++)
        run_pack_f32(Ns[j], 67);
    run_attention(2, 49, 128, 4, 2); /* the default model's shape */
    run_attention(1, 7, 24, 3, 1);
    run_attention(3, 64, 64, 2, 2);
}

/* The choice: auto takes a supported entry; unknown names and entries
 * the CPU lacks are errors naming DITMOE_ISA and the value. */
static void test_choose(void)
{
    char err[256] = "";
    const gemm_kernel *k = NULL;
    unsetenv("DITMOE_ISA");
    CHECK(gemm_kernel_choose(&k, err, sizeof err) == 0 && k && k->supported(), "auto: %s", err);
    setenv("DITMOE_ISA", "c", 1);
    CHECK(gemm_kernel_choose(&k, err, sizeof err) == 0 && k == ref, "DITMOE_ISA=c");
    setenv("DITMOE_ISA", "mmx", 1);
    CHECK(gemm_kernel_choose(&k, err, sizeof err) < 0 && !k && strstr(err, "DITMOE_ISA=mmx"),
          "unknown ISA refused: %s", err);
    for (const gemm_kernel *const *e = gemm_kernels(); *e; e++)
        if (!(*e)->supported()) {
            setenv("DITMOE_ISA", (*e)->name, 1);
            CHECK(gemm_kernel_choose(&k, err, sizeof err) < 0 && strstr(err, "lacks"),
                  "missing ISA %s refused: %s", (*e)->name, err);
        }
    unsetenv("DITMOE_ISA");
}

int main(void)
{
    ref = gemm_kernel_find("c");
    CHECK(ref && ref->supported(), "the C reference entry exists and runs");
    if (!ref)
        return 1;
    test_choose();
    int ran = 0;
    /* the reference first: the others are compared with it */
    kern = ref;
    run_entry();
    printf("test_gemm: c: %d cases against the double product\n", cases);
    for (const gemm_kernel *const *e = gemm_kernels(); *e; e++) {
        if (*e == ref)
            continue;
        if (!(*e)->supported()) {
            printf("test_gemm: %s: this CPU lacks it, not run\n", (*e)->name);
            continue;
        }
        kern = *e, cases = 0, ran++;
        run_entry();
        printf("test_gemm: %s (tile %dx%d): %d cases against c and the double product\n",
               kern->name, kern->mr, kern->nr, cases);
    }
    printf("test_gemm: %d entries besides c ran\n", ran);
    printf("%s\n", check_failures ? "test_gemm: FAILED" : "test_gemm: ok");
    return check_failures ? 1 : 0;
}
