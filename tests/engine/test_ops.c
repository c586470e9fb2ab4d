/* test_ops.c: unit tests of the engine's operators on small cases with
 * answers known by hand (no reference implementation needed). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

#include "check.h"

static int near(float a, float b, float tol)
{
    return fabsf(a - b) <= tol * (1.0f + fabsf(b));
}

static void test_halfs(void)
{
    CHECK(f16_to_f32(0x3c00) == 1.0f, "f16 1.0");
    CHECK(f16_to_f32(0xc000) == -2.0f, "f16 -2.0");
    CHECK(f16_to_f32(0x7bff) == 65504.0f, "f16 max");
    CHECK(f16_to_f32(0x0001) == ldexpf(1.0f, -24), "f16 smallest subnormal");
    CHECK(f16_to_f32(0x0200) == ldexpf(1.0f, -15), "f16 subnormal");
    CHECK(isinf(f16_to_f32(0x7c00)), "f16 inf");
    CHECK(f16_to_f32(0x8000) == 0.0f && signbit(f16_to_f32(0x8000)), "f16 -0");
    CHECK(bf16_to_f32(0x3f80) == 1.0f, "bf16 1.0");
    CHECK(bf16_to_f32(0xc040) == -3.0f, "bf16 -3.0");
}

static void test_narrowing(void)
{
    int roundtrip = 1;
    for (uint32_t h = 0; h < 0x10000; h++) { /* every half and bfloat16 back and forth */
        float f = f16_to_f32((uint16_t)h), b = bf16_to_f32((uint16_t)h);
        if (!isnan(f))
            roundtrip &= f32_to_f16(f) == h;
        if (!isnan(b))
            roundtrip &= f32_to_bf16(b) == h;
    }
    CHECK(roundtrip, "f16/bf16 -> f32 -> f16/bf16 is the identity");
    CHECK(f32_to_f16(65504.0f) == 0x7bff && f32_to_f16(65519.0f) == 0x7bff,
          "f16 max and just below halfway keep max");
    CHECK(f32_to_f16(65520.0f) == 0x7c00 && f32_to_f16(-1e9f) == 0xfc00, "f16 overflow: inf");
    CHECK(f32_to_f16(ldexpf(1, -25)) == 0 && f32_to_f16(ldexpf(3, -25)) == 2,
          "f16 subnormal ties to even");
    CHECK(f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3c00 &&
              f32_to_f16(1.0f + ldexpf(3, -11)) == 0x3c02, "f16 normal ties to even");
    CHECK(f32_to_f16(ldexpf(1023, -24) + ldexpf(1, -25) * 1.5f) == 0x0400,
          "f16 rounding up from the largest subnormal gives the smallest normal");
    CHECK(isnan(f16_to_f32(f32_to_f16(NAN))) && isnan(bf16_to_f32(f32_to_bf16(NAN))),
          "NaN stays NaN");
    CHECK(f32_to_bf16(1.0f + ldexpf(1, -8)) == 0x3f80 &&
              f32_to_bf16(1.0f + ldexpf(3, -8)) == 0x3f82, "bf16 ties to even");
    CHECK(f32_to_bf16(3e38f) == 0x7f62 && f32_to_bf16(-0.0f) == 0x8000, "bf16 range, -0");
}

static void test_layernorm(void)
{
    float x[8] = { 1, 2, 3, 4, 10, 10, 10, 10 }, y[8];
    op_layernorm_forward(y, x, 2, 4);
    /* mean 2.5, var 1.25 */
    float r = 1.0f / sqrtf(1.25f + 1e-6f);
    CHECK(near(y[0], -1.5f * r, 1e-6f) && near(y[3], 1.5f * r, 1e-6f), "layernorm row 0: %g %g", y[0], y[3]);
    CHECK(y[4] == 0 && y[7] == 0, "constant row normalises to 0");
}

static void test_softmax_silu(void)
{
    float x[6] = { 0, 0, 0, 1000, 0, -1000 };
    op_softmax_forward(x, 2, 3);
    CHECK(near(x[0], 1.0f / 3, 1e-6f), "uniform softmax %g", x[0]);
    CHECK(x[3] == 1.0f && x[4] == 0.0f && x[5] == 0.0f, "large logits do not overflow");
    float s[3] = { 0, 1, -1 }, o[3];
    op_silu_forward(o, s, 3);
    CHECK(o[0] == 0 && near(o[1], 1.0f / (1.0f + expf(-1.0f)), 1e-6f), "silu");
    float g[2] = { 1, 2 }, u[2] = { 3, 0.5f };
    op_swiglu_forward(g, u, 2);
    CHECK(near(g[0], 3.0f / (1.0f + expf(-1.0f)), 1e-6f), "swiglu");
}

static void test_timestep(void)
{
    float t[2] = { 0, 1 }, e[2 * 256];
    op_timestep_embedding_forward(e, t, 2, 256);
    CHECK(e[0] == 1 && e[127] == 1 && e[128] == 0 && e[255] == 0, "t=0: cos half 1, sin half 0");
    /* frequency 0 is 1: cos(1), sin(1) */
    CHECK(near(e[256], cosf(1), 1e-6f) && near(e[256 + 128], sinf(1), 1e-6f), "t=1 first pair");
    /* last frequency is 10000^(-127/128) */
    float f = expf(-logf(10000.0f) * 127.0f / 128.0f);
    CHECK(near(e[256 + 127], cosf(f), 1e-5f), "t=1 last cos %g vs %g", e[256 + 127], cosf(f));
}

static void test_patchify(void)
{
    enum { N = 2, C = 3, H = 4, P = 2 };
    float x[N * C * H * H], tok[N * 4 * C * P * P], back[N * C * H * H];
    for (int i = 0; i < N * C * H * H; i++)
        x[i] = (float)i;
    op_patchify_forward(tok, x, N, C, H, P);
    /* token 1 of row 0 is grid (0, 1): channel 0 rows 0..1, cols 2..3 */
    CHECK(tok[1 * 12 + 0] == 2 && tok[1 * 12 + 1] == 3 && tok[1 * 12 + 2] == 6, "patch order (c, p, q)");
    CHECK(tok[1 * 12 + 4] == 16 + 2, "second channel of a patch");
    /* unpatchify reads (p, q, c); re-order tokens into that layout */
    float tq[N * 4 * C * P * P];
    for (int n = 0; n < N * 4; n++)
        for (int c = 0; c < C; c++)
            for (int pq = 0; pq < P * P; pq++)
                tq[n * 12 + pq * C + c] = tok[n * 12 + c * P * P + pq];
    op_unpatchify_forward(back, tq, N, C, H, P);
    CHECK(!memcmp(back, x, sizeof x), "unpatchify inverts patchify");
}

static void test_modulate_gate(void)
{
    float x[2 * 2 * 2] = { 1, 1, 1, 1, 2, 2, 2, 2 };
    float mod[2 * 4] = { /* row 0: shift, scale */ 1, 2, 0.5f, 0, /* row 1 */ 0, 0, 1, 1 };
    op_modulate_forward(x, mod, mod + 2, 4, 2, 2, 2);
    CHECK(x[0] == 2.5f && x[1] == 3.0f && x[4] == 4.0f, "modulate x(1+scale)+shift");
    float sub[8] = { 1, 1, 1, 1, 1, 1, 1, 1 };
    op_gate_residual_forward(x, sub, mod, 4, 2, 2, 2);
    CHECK(x[0] == 3.5f && x[1] == 5.0f && x[4] == 4.0f, "gated residual");
}

static void count_task(void *arg, int task, int thread)
{
    (void)thread;
    __atomic_fetch_add(&((int *)arg)[task], 1, __ATOMIC_RELAXED);
}

static void test_pool(void)
{
    struct op_pool *p = op_pool_new(3);
    CHECK(p && op_pool_threads(p) == 3, "pool of 3");
    int hits[100] = { 0 };
    for (int round = 0; round < 50; round++)
        op_pool_run(p, 100, count_task, hits);
    int ok = 1;
    for (int i = 0; i < 100; i++)
        ok &= hits[i] == 50;
    CHECK(ok, "every task ran exactly once per run");
    op_pool_free(p);
    op_pool_free(NULL);
    CHECK(op_pool_new(1) == NULL, "a pool of one is no pool");
}

int main(void)
{
    test_halfs();
    test_narrowing();
    test_layernorm();
    test_softmax_silu();
    test_timestep();
    test_patchify();
    test_modulate_gate();
    test_pool();
    printf("%s\n", check_failures ? "FAILED" : "all op tests passed");
    return check_failures != 0;
}
