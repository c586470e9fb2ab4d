/* test_batch.c: dit_generate batching several samplers, and the sampler
 * API's contracts, on a small model directory given as argv[1] (a velocity
 * model with a null class; test_generate.py's "batch" case writes one).
 *
 * Checks: samplers run together in one dit_generate give what each gives
 * alone (the default RNG is per image, so batching must not matter beyond
 * float rounding), image 0 of a 3-image request equals a 1-image request
 * with the same seed, progress and cancellation, the max_rows limit,
 * samplers of another model refused, and parameter errors naming the field.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include <ditmoe/dit.h>

static dit_sampler *make(const dit_model *m, int n, uint64_t seed, int steps, double cfg)
{
    dit_sample_params p;
    dit_sampler *s = NULL;
    char err[256] = "";
    dit_sample_params_default(m, &p);
    p.num_images = n;
    p.seed = seed;
    p.steps = steps;
    p.cfg_scale = cfg;
    p.class_label = 1;
    p.sampler = DIT_SAMPLER_EULER;
    int rc = dit_sampler_new(&s, m, &p, err, sizeof err);
    CHECK(rc == DIT_OK, "dit_sampler_new: %s", err);
    return s;
}

static double max_rel_diff(const float *a, const float *b, size_t n)
{
    double d = 0, mag = 1;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        mag = fmax(mag, fabs((double)b[i]));
    }
    return d / mag;
}

static int count_progress(void *user, int step, int num_steps)
{
    int *calls = user;
    CHECK(step == calls[0] + 1 && num_steps == 5, "progress %d/%d", step, num_steps);
    calls[0]++;
    return 0;
}

static int cancel_at_2(void *user, int step, int num_steps)
{
    (void)user;
    (void)num_steps;
    return step == 2;
}

/* Three samplers together versus each alone. */
static void test_together(const dit_model *m, dit_ctx *ctx, size_t chw)
{
    dit_sampler *s[3] = { make(m, 2, 11, 5, 4.0), make(m, 1, 22, 3, 1.0),
                          make(m, 1, 33, 4, 2.0) };
    dit_sampler *alone;
    int calls[1] = { 0 };
    if (!s[0] || !s[1] || !s[2])
        goto done;
    CHECK(dit_sampler_rows(s[0]) == 4 && dit_sampler_rows(s[1]) == 1, "rows");
    CHECK(dit_sampler_noise_level(s[0]) == 1.0, "noise level starts at 1");
    CHECK(dit_generate(ctx, s, 3, count_progress, calls) == DIT_OK, "generate 3 samplers");
    CHECK(calls[0] == 5, "progress called %d times, want 5", calls[0]);
    for (int i = 0; i < 3; i++) {
        static const int n[3] = { 2, 1, 1 }, steps[3] = { 5, 3, 4 };
        static const uint64_t seed[3] = { 11, 22, 33 };
        static const double cfg[3] = { 4.0, 1.0, 2.0 };
        CHECK(dit_sampler_done(s[i]) && dit_sampler_step(s[i]) == steps[i], "sampler %d done", i);
        CHECK(dit_sampler_noise_level(s[i]) == 0.0, "noise level ends at 0");
        alone = make(m, n[i], seed[i], steps[i], cfg[i]);
        if (!alone)
            continue;
        CHECK(dit_generate(ctx, &alone, 1, NULL, NULL) == DIT_OK, "generate alone");
        double d = max_rel_diff(dit_sampler_result(s[i]), dit_sampler_result(alone),
                                n[i] * chw);
        CHECK(d < 1e-5, "sampler %d batched differs from alone by %g", i, d);
        dit_sampler_free(alone);
    }
    CHECK(dit_generate(ctx, s, 3, NULL, NULL) == DIT_OK, "generate on finished samplers");
done:
    for (int i = 0; i < 3; i++)
        dit_sampler_free(s[i]);
}

/* A sampler of kind k with a guidance interval and a cache mode. */
static dit_sampler *make_solver(const dit_model *m, int kind, uint64_t seed, int steps,
                                double lo, double hi, int cache)
{
    dit_sample_params p;
    dit_sampler *s = NULL;
    char err[256] = "";
    dit_sample_params_default(m, &p);
    p.seed = seed, p.steps = steps, p.cfg_scale = 3.0, p.class_label = 2, p.sampler = kind;
    p.cfg_interval[0] = lo, p.cfg_interval[1] = hi;
    p.cache.mode = cache, p.cache.interval = 2, p.cache.threshold = 0.2;
    CHECK(dit_sampler_new(&s, m, &p, err, sizeof err) == DIT_OK, "dit_sampler_new: %s", err);
    return s;
}

/* Solvers with one or two evaluations a step, guidance intervals (row
 * counts changing between forwards) and caches of every mode in one
 * dit_generate equal each alone; rows and evaluation counts as documented. */
static void test_mixed(const dit_model *m, dit_ctx *ctx, size_t chw)
{
    static const int kind[3] = { DIT_SAMPLER_HEUN, DIT_SAMPLER_DPMPP_2M, DIT_SAMPLER_EULER };
    static const int steps[3] = { 4, 6, 5 }, cache[3] = { DIT_CACHE_FIXED, DIT_CACHE_ADAPTIVE,
                                                          DIT_CACHE_OFF };
    static const double lo[3] = { 0.3, 0.0, 0.5 }, hi[3] = { 0.9, 0.5, 1.0 };
    dit_sampler *s[3], *alone;
    for (int i = 0; i < 3; i++)
        s[i] = make_solver(m, kind[i], 40 + i, steps[i], lo[i], hi[i], cache[i]);
    if (!s[0] || !s[1] || !s[2])
        goto done;
    CHECK(dit_sampler_num_evals(s[0]) == 7 && dit_sampler_num_evals(s[1]) == 6, "evals");
    CHECK(dit_sampler_rows(s[0]) == 1 && dit_sampler_max_rows(s[0]) == 2,
          "heun at level 1 is outside [0.3, 0.9]: 1 row");
    CHECK(dit_generate(ctx, s, 3, NULL, NULL) == DIT_OK, "generate mixed");
    for (int i = 0; i < 3; i++) {
        uint64_t run = 0, reused = 0;
        CHECK(dit_sampler_done(s[i]) && dit_sampler_rows(s[i]) == 0, "mixed %d done", i);
        dit_sampler_cache_stats(s[i], &run, &reused);
        CHECK(cache[i] == DIT_CACHE_OFF ? reused == 0 : reused > 0,
              "sampler %d: %llu block computations reused", i, (unsigned long long)reused);
        alone = make_solver(m, kind[i], 40 + i, steps[i], lo[i], hi[i], cache[i]);
        if (!alone)
            continue;
        CHECK(dit_generate(ctx, &alone, 1, NULL, NULL) == DIT_OK, "generate alone");
        double d = max_rel_diff(dit_sampler_result(s[i]), dit_sampler_result(alone), chw);
        CHECK(d < 1e-5, "mixed sampler %d batched differs from alone by %g", i, d);
        dit_sampler_free(alone);
    }
done:
    for (int i = 0; i < 3; i++)
        dit_sampler_free(s[i]);
}

/* Image 0 of a 3-image request is the 1-image request of the same seed. */
static void test_streams(const dit_model *m, dit_ctx *ctx, size_t chw)
{
    dit_sampler *three = make(m, 3, 5, 4, 1.0), *one = make(m, 1, 5, 4, 1.0);
    if (three && one) {
        const float *r3, *r1;
        CHECK(dit_generate(ctx, &three, 1, NULL, NULL) == DIT_OK, "3 images");
        CHECK(dit_generate(ctx, &one, 1, NULL, NULL) == DIT_OK, "1 image");
        r3 = dit_sampler_result(three);
        r1 = dit_sampler_result(one);
        CHECK(max_rel_diff(r3, r1, chw) < 1e-5, "image 0 depends on the batch");
        CHECK(max_rel_diff(r3 + chw, r3, chw) > 1e-3, "images 0 and 1 are alike");
    }
    dit_sampler_free(three);
    dit_sampler_free(one);
}

static void test_limits(const dit_model *m, const dit_model *other, dit_ctx *ctx)
{
    dit_sampler *big = make(m, 4, 1, 2, 4.0); /* 8 rows > max_rows 7 */
    dit_sampler *s = make(m, 1, 1, 5, 4.0);
    dit_sampler *foreign = make(other, 1, 1, 2, 1.0);
    if (big)
        CHECK(dit_generate(ctx, &big, 1, NULL, NULL) == DIT_E_INVAL, "rows over max_rows");
    if (foreign)
        CHECK(dit_generate(ctx, &foreign, 1, NULL, NULL) == DIT_E_INVAL, "another model");
    if (s) {
        CHECK(dit_generate(ctx, &s, 1, cancel_at_2, NULL) == DIT_E_CANCELLED, "cancel");
        CHECK(dit_sampler_step(s) == 2 && !dit_sampler_done(s), "stopped after 2 steps");
        CHECK(dit_generate(ctx, &s, 1, NULL, NULL) == DIT_OK && dit_sampler_done(s),
              "a cancelled sampler can be resumed");
    }
    CHECK(dit_generate(ctx, NULL, 0, NULL, NULL) == DIT_OK, "no samplers");
    dit_sampler_free(big);
    dit_sampler_free(s);
    dit_sampler_free(foreign);
    dit_sampler_free(NULL);
}

static void expect_refusal(const dit_model *m, const dit_sample_params *p, const char *field)
{
    dit_sampler *s = (dit_sampler *)1;
    char err[256] = "";
    CHECK(dit_sampler_new(&s, m, p, err, sizeof err) == DIT_E_INVAL && s == NULL,
          "%s accepted", field);
    CHECK(!strncmp(err, field, strlen(field)), "message '%s' does not name %s", err, field);
}

static void test_params(const dit_model *m)
{
    dit_sample_params p, q;
    dit_sample_params_default(m, &p);
    q = p, q.num_images = 0, expect_refusal(m, &q, "num_images");
    q = p, q.num_images = 65, expect_refusal(m, &q, "num_images");
    q = p, q.steps = 0, expect_refusal(m, &q, "steps");
    q = p, q.cfg_scale = NAN, expect_refusal(m, &q, "cfg_scale");
    q = p, q.cfg_scale = -1, expect_refusal(m, &q, "cfg_scale");
    q = p, q.sampler = 7, expect_refusal(m, &q, "sampler");
    q = p, q.sampler = DIT_SAMPLER_DDPM, expect_refusal(m, &q, "sampler");
    q = p, q.cfg_mode = 2, expect_refusal(m, &q, "cfg_mode");
    q = p, q.rng = -1, expect_refusal(m, &q, "rng");
    q = p, q.class_label = -1, expect_refusal(m, &q, "class_label");
    q = p, q.class_label = dit_model_config(m)->num_classes + 1,
    expect_refusal(m, &q, "class_label");
    q = p, q.sampler = DIT_SAMPLER_EULER, q.spacing = DIT_SPACING_LOGSNR;
    expect_refusal(m, &q, "spacing");
    q = p, q.sampler = DIT_SAMPLER_HEUN, q.spacing = 3, expect_refusal(m, &q, "spacing");
    q = p, q.cfg_interval[0] = 0.6, q.cfg_interval[1] = 0.4;
    expect_refusal(m, &q, "cfg_interval");
    q = p, q.cfg_interval[1] = NAN, expect_refusal(m, &q, "cfg_interval");
    q = p, q.cache.mode = 3, expect_refusal(m, &q, "cache");
    q = p, q.cache.mode = DIT_CACHE_FIXED, q.cache.interval = 1, expect_refusal(m, &q, "cache");
    q = p, q.cache.mode = DIT_CACHE_ADAPTIVE, q.cache.threshold = 0;
    expect_refusal(m, &q, "cache");
    CHECK(dit_sampler_parse("DPM++2M") == DIT_SAMPLER_DPMPP_2M &&
          dit_sampler_parse("dpmpp_2m") == DIT_SAMPLER_DPMPP_2M &&
          dit_sampler_parse("rf") == DIT_SAMPLER_EULER && dit_sampler_parse("r") < 0 &&
          dit_sampler_parse("") < 0 && dit_sampler_parse(NULL) < 0, "sampler names");
    CHECK(dit_sampler_count() == 5 && !dit_sampler_info(5) && !dit_sampler_info(-1) &&
          !strcmp(dit_sampler_name(DIT_SAMPLER_HEUN), "heun"), "sampler table");
}

int main(int argc, char **argv)
{
    dit_model *m = NULL, *other = NULL;
    dit_ctx *ctx = NULL;
    dit_ctx_settings set;
    char err[512] = "";
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
        return 2;
    }
    if (dit_model_load(&m, argv[1], NULL, err, sizeof err) ||
        dit_model_load(&other, argv[1], NULL, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        dit_model_free(m);
        return 2;
    }
    const dit_config *c = dit_model_config(m);
    size_t chw = (size_t)c->in_channels * c->input_size * c->input_size;
    dit_ctx_settings_default(&set);
    set.max_rows = 7;
    CHECK(dit_ctx_new(&ctx, m, &set) == DIT_OK, "ctx");
    if (ctx) {
        test_together(m, ctx, chw);
        test_streams(m, ctx, chw);
        test_limits(m, other, ctx);
        test_mixed(m, ctx, chw);
    }
    test_params(m);
    dit_ctx_free(ctx);
    dit_model_free(other);
    dit_model_free(m);
    return check_exit();
}
