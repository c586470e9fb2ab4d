/* test_rng.c: rng_default, the engine's counter-based normal generator.
 *
 * Known values come from tools/ref/samplers_ref.py's independent numpy port
 * of the construction documented in engine/rng_default.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "rng.h"

static void test_known(void)
{
    static const float want0[6] = { 1.9549744129180908f, -0.35891959071159363f,
                                    1.3099995851516724f, -0.919441282749176f,
                                    -0.3639916777610779f, 0.8398290276527405f };
    static const float want1[4] = { 0.012733744457364082f, -1.2499593496322632f,
                                    1.120570421218872f, -2.1208336353302f };
    float v[6];
    rng_default r;
    rng_default_init(&r, 0, 0);
    rng_default_randn(&r, v, 6);
    for (int i = 0; i < 6; i++)
        CHECK(fabsf(v[i] - want0[i]) < 1e-6f, "seed 0 stream 0 value %d: %.9g, want %.9g", i,
              v[i], want0[i]);
    rng_default_init(&r, 12345, 3);
    r.counter = 5; /* positions 5..8: starts mid-pair */
    rng_default_randn(&r, v, 4);
    for (int i = 0; i < 4; i++)
        CHECK(fabsf(v[i] - want1[i]) < 1e-6f, "seed 12345 stream 3 value %d: %.9g, want %.9g",
              5 + i, v[i], want1[i]);
    CHECK(r.counter == 9, "counter advances by the values drawn");
}

/* Any split of a fill into calls gives the same values as one call. */
static void test_split(void)
{
    float one[37], parts[37];
    rng_default r;
    rng_default_init(&r, 99, 7);
    rng_default_randn(&r, one, 37);
    rng_default_init(&r, 99, 7);
    rng_default_randn(&r, parts, 3);
    rng_default_randn(&r, parts + 3, 0);
    rng_default_randn(&r, parts + 3, 1);
    rng_default_randn(&r, parts + 4, 10);
    rng_default_randn(&r, parts + 14, 23);
    CHECK(!memcmp(one, parts, sizeof one), "split fills equal one fill");
}

static double corr(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s / (double)n;
}

static void test_moments_and_streams(void)
{
    const size_t n = 1 << 20;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
    double mean = 0, var = 0, tail = 0, lag = 0;
    rng_default r;
    if (!a || !b || !c) {
        CHECK(0, "out of memory");
        free(a), free(b), free(c);
        return;
    }
    rng_default_init(&r, 2024, 0);
    rng_default_randn(&r, a, n);
    for (size_t i = 0; i < n; i++) {
        CHECK(isfinite(a[i]), "value %zu not finite", i);
        mean += a[i];
        var += (double)a[i] * a[i];
        tail += fabsf(a[i]) > 3.0f;
        if (i)
            lag += (double)a[i] * a[i - 1];
    }
    mean /= (double)n;
    var = var / (double)n - mean * mean;
    tail /= (double)n;
    lag /= (double)(n - 1);
    /* bounds at about 5 standard errors for 2^20 samples */
    CHECK(fabs(mean) < 0.005, "mean %g", mean);
    CHECK(fabs(var - 1.0) < 0.007, "variance %g", var);
    CHECK(fabs(tail - 0.0026998) < 0.0003, "P(|z| > 3) = %g", tail);
    CHECK(fabs(lag) < 0.005, "lag-1 correlation %g", lag);
    rng_default_init(&r, 2024, 1);
    rng_default_randn(&r, b, n);
    rng_default_init(&r, 2025, 0);
    rng_default_randn(&r, c, n);
    CHECK(fabs(corr(a, b, n)) < 0.005, "streams 0 and 1 correlate: %g", corr(a, b, n));
    CHECK(fabs(corr(a, c, n)) < 0.005, "seeds 2024 and 2025 correlate: %g", corr(a, c, n));
    CHECK(memcmp(a, b, 64 * sizeof *a) != 0, "streams differ");
    rng_default_init(&r, 2024, 0);
    rng_default_randn(&r, b, n);
    CHECK(!memcmp(a, b, n * sizeof *a), "same seed and stream repeat exactly");
    free(a), free(b), free(c);
}

int main(void)
{
    test_known();
    test_split();
    test_moments_and_streams();
    return check_exit();
}
