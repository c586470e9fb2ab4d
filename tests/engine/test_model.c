/* test_model.c: config parsing, weight binding and the forward pass's
 * contracts on a tiny model built in memory (no files): argument checks at
 * the API boundary, routing counts, batch invariance, binding errors that
 * name the tensor. Numerical parity with PyTorch is tests/parity's job. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"
#include "model.h"
#include "rng.h"

#include "check.h"

static const char *CONFIG =
    "{\"input_size\": 8, \"patch_size\": 2, \"in_channels\": 2, \"hidden_size\": 24,"
    " \"depth\": 2, \"num_heads\": 3, \"mlp_ratio\": 2, \"num_classes\": 5,"
    " \"num_experts\": 4, \"num_experts_per_tok\": 2, \"learn_sigma\": true,"
    " \"class_dropout_prob\": 0.1, \"prediction\": \"epsilon\","
    " \"class_names\": [\"ant\", \"bee\", \"cat, kitty\", \"dog\", \"eel\"]}";

typedef struct arena { float *mem; size_t used, cap; rng_default rng; } arena;

static void add(st_table *t, arena *a, const char *name, int ndim, int64_t d0,
                int64_t d1, int64_t d2, int64_t d3)
{
    int64_t shape[4] = { d0, d1, d2, d3 };
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    float *p = a->mem + a->used;
    a->used += n;
    rng_default_randn(&a->rng, p, n);
    for (size_t i = 0; i < n; i++)
        p[i] *= 0.3f;
    st_table_add(t, name, ST_F32, ndim, shape, p);
}

/* Every tensor of the tiny model, leaving out `skip` and adding `extra`. */
static st_table *tiny_weights(arena *a, const char *skip, const char *extra)
{
    st_table *t = st_table_new("tiny.safetensors", NULL, 0, NULL);
    char n[128];
    int D = 24, E = 4, He = 48, Hs = 48;
#define ADD(name, nd, a0, a1, a2, a3) \
    if (!skip || strcmp(skip, name)) add(t, a, name, nd, a0, a1, a2, a3)
    ADD("x_embedder.proj.weight", 4, D, 2, 2, 2);
    ADD("x_embedder.proj.bias", 1, D, 0, 0, 0);
    ADD("pos_embed", 3, 1, 16, D, 0);
    ADD("t_embedder.mlp.0.weight", 2, D, 256, 0, 0);
    ADD("t_embedder.mlp.0.bias", 1, D, 0, 0, 0);
    ADD("t_embedder.mlp.2.weight", 2, D, D, 0, 0);
    ADD("t_embedder.mlp.2.bias", 1, D, 0, 0, 0);
    ADD("y_embedder.embedding_table.weight", 2, 6, D, 0, 0);
    for (int l = 0; l < 2; l++) {
        struct { const char *fmt; int nd; int64_t a0, a1; } ts[] = {
            { "blocks.%d.adaLN_modulation.1.weight", 2, 6 * D, D },
            { "blocks.%d.adaLN_modulation.1.bias", 1, 6 * D, 0 },
            { "blocks.%d.attn.qkv.weight", 2, 3 * D, D }, { "blocks.%d.attn.qkv.bias", 1, 3 * D, 0 },
            { "blocks.%d.attn.proj.weight", 2, D, D }, { "blocks.%d.attn.proj.bias", 1, D, 0 },
            { "blocks.%d.moe.gate.weight", 2, E, D },
            { "blocks.%d.moe.shared_experts.gate_proj.weight", 2, Hs, D },
            { "blocks.%d.moe.shared_experts.up_proj.weight", 2, Hs, D },
            { "blocks.%d.moe.shared_experts.down_proj.weight", 2, D, Hs },
        };
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
            snprintf(n, sizeof n, ts[i].fmt, l);
            ADD(n, ts[i].nd, ts[i].a0, ts[i].a1, 0, 0);
        }
        for (int e = 0; e < E; e++) {
            snprintf(n, sizeof n, "blocks.%d.moe.experts.%d.gate_proj.weight", l, e);
            ADD(n, 2, He, D, 0, 0);
            snprintf(n, sizeof n, "blocks.%d.moe.experts.%d.up_proj.weight", l, e);
            ADD(n, 2, He, D, 0, 0);
            snprintf(n, sizeof n, "blocks.%d.moe.experts.%d.down_proj.weight", l, e);
            ADD(n, 2, D, He, 0, 0);
        }
    }
    ADD("final_layer.adaLN_modulation.1.weight", 2, 2 * D, D, 0, 0);
    ADD("final_layer.adaLN_modulation.1.bias", 1, 2 * D, 0, 0, 0);
    ADD("final_layer.linear.weight", 2, 16, D, 0, 0);
    ADD("final_layer.linear.bias", 1, 16, 0, 0, 0);
#undef ADD
    if (extra)
        add(t, a, extra, 1, 4, 0, 0, 0);
    return t;
}

static dit_model *tiny_model(arena *a, const char *skip, const char *extra, char *err,
                             size_t errlen, int *rc)
{
    dit_model *m = calloc(1, sizeof *m);
    *rc = config_parse(m, CONFIG, strlen(CONFIG), "tiny/config.json", err, errlen);
    if (*rc == DIT_OK) {
        m->weights = tiny_weights(a, skip, extra);
        *rc = model_bind(m, err, errlen);
    }
    dit_model_settings unpacked = { .pack_weights = 0 }; /* picks the kernel only */
    if (*rc == DIT_OK)
        *rc = model_pack(m, &unpacked, "tiny", err, errlen);
    if (*rc != DIT_OK) {
        dit_model_free(m);
        return NULL;
    }
    return m;
}

static void test_bind_errors(arena *a)
{
    char err[512];
    int rc;
    a->used = 0;
    CHECK(!tiny_model(a, "blocks.1.moe.experts.3.up_proj.weight", NULL, err, sizeof err, &rc) &&
              rc == DIT_E_FORMAT && strstr(err, "blocks.1.moe.experts.3.up_proj.weight") &&
              strstr(err, "missing"),
          "missing tensor named: %s", err);
    a->used = 0;
    CHECK(!tiny_model(a, NULL, "blocks.2.attn.qkv.bias", err, sizeof err, &rc) &&
              strstr(err, "blocks.2.attn.qkv.bias") && strstr(err, "disagree"),
          "extra tensor named: %s", err);
    dit_model *m = calloc(1, sizeof *m);
    const char *bad = "{\"input_size\": 8, \"patch_size\": 3}";
    rc = config_parse(m, bad, strlen(bad), "c.json", err, sizeof err);
    CHECK(rc == DIT_E_FORMAT && strstr(err, "c.json") && strstr(err, "in_channels"),
          "missing config key named: %s", err);
    const char *typo = "{\"input_size\": 8, \"patch_sise\": 2}";
    rc = config_parse(m, typo, strlen(typo), "c.json", err, sizeof err);
    CHECK(rc == DIT_E_FORMAT && strstr(err, "patch_sise"), "unknown key named: %s", err);
    dit_model_free(m);
    dit_model_free(NULL);
}

/* A model (config only) from CONFIG with `sampling` (an object's text,
 * NULL: none) added; free it with dit_model_free. */
static dit_model *with_sampling(const char *sampling, int *rc, char *err, size_t errlen)
{
    char text[1024];
    dit_model *m = calloc(1, sizeof *m);
    int n = (int)strlen(CONFIG) - 1; /* without the closing brace */
    if (sampling)
        snprintf(text, sizeof text, "%.*s, \"sampling\": %s}", n, CONFIG, sampling);
    else
        snprintf(text, sizeof text, "%s", CONFIG);
    err[0] = 0;
    *rc = config_parse(m, text, strlen(text), "c.json", err, errlen);
    return m;
}

static const struct { const char *sampling, *want1, *want2; } BAD_SAMPLING[] = {
    { "{\"spacin\": \"logsnr\"}", "sampling.spacin", "known:" },
    { "{\"sampler\": \"dpm++9m\"}", "sampling.sampler must be one of", "dpm++2m" },
    { "{\"spacing\": 2}", "sampling.spacing", "number" },
    { "{\"spacing\": \"cosine\"}", "sampling.spacing", "cosine" },
    { "{\"spacing\": \"logsnr\"}", "sampling.spacing \"logsnr\"", "\"ddpm\"" },
    { "{\"sampler\": \"ddim\", \"spacing\": \"uniform\"}", "sampling.spacing", "ddim" },
    { "{\"cfg_interval\": 0.5}", "sampling.cfg_interval", "[lo, hi]" },
    { "{\"cfg_interval\": [0, 0.5, 1]}", "sampling.cfg_interval", "[lo, hi]" },
    { "{\"cfg_interval\": [\"0\", 1]}", "sampling.cfg_interval", "[lo, hi]" },
    { "{\"cfg_interval\": [0.8, 0.2]}", "sampling.cfg_interval", "0 <= lo <= hi <= 1" },
    { "{\"cfg_interval\": [-0.1, 0.5]}", "sampling.cfg_interval", "out of range" },
    { "{\"cfg_interval\": [0.2, 1.5]}", "sampling.cfg_interval", "out of range" },
    { "{\"cache\": 2}", "sampling.cache", "\"mode\"" },
    { "{\"cache\": \"sometimes\"}", "sampling.cache", "sometimes" },
    { "{\"cache\": {\"interval\": 3}}", "sampling.cache", "\"mode\"" },
    { "{\"cache\": {\"mode\": \"often\"}}", "sampling.cache.mode", "often" },
    { "{\"cache\": {\"mode\": \"fixed\", \"interval\": 1}}", "sampling.cache.interval",
      "[2, 100]" },
    { "{\"cache\": {\"mode\": \"fixed\", \"interval\": 2.5}}", "sampling.cache.interval",
      "[2, 100]" },
    { "{\"cache\": {\"mode\": \"adaptive\", \"threshold\": 0}}", "sampling.cache.threshold",
      "(0, 10]" },
    { "{\"cache\": {\"mode\": \"fixed\", \"every\": 2}}", "sampling.cache", "every" },
};

/* config.json "sampling" refuses a wrong key, type or value of every
 * option, naming the file and the field. */
static void test_config_sampling_refused(void)
{
    char err[512];
    int rc;
    for (size_t i = 0; i < sizeof BAD_SAMPLING / sizeof BAD_SAMPLING[0]; i++) {
        dit_model_free(with_sampling(BAD_SAMPLING[i].sampling, &rc, err, sizeof err));
        CHECK(rc == DIT_E_FORMAT && !strncmp(err, "c.json: ", 8) &&
                  strstr(err, BAD_SAMPLING[i].want1) && strstr(err, BAD_SAMPLING[i].want2),
              "sampling %s refused naming the file and %s: %s", BAD_SAMPLING[i].sampling,
              BAD_SAMPLING[i].want1, err);
    }
}

/* config.json "sampling" carries every option a request sets; what it says
 * lands in the config and in dit_sample_params_default. */
static void test_config_sampling(void)
{
    char err[512];
    int rc;
    dit_sample_params p;
    dit_model *m = with_sampling(NULL, &rc, err, sizeof err);
    const dit_config *c = &m->cfg;
    CHECK(rc == DIT_OK && c->default_sampler == DIT_SAMPLER_DDPM &&
              c->default_spacing == DIT_SPACING_DEFAULT && c->default_cfg_interval[0] == 0 &&
              c->default_cfg_interval[1] == 1 && c->default_cache.mode == DIT_CACHE_OFF,
          "no sampling: ddpm, default spacing, interval [0, 1], no cache: %s", err);
    dit_model_free(m);
    m = with_sampling("{\"sampler\": \"dpm++2m\", \"steps\": 10, \"spacing\": \"logsnr\", "
                      "\"cfg_scale\": 4, \"cfg_interval\": [0.2, 0.65], \"cache\": \"off\"}",
                      &rc, err, sizeof err);
    c = &m->cfg;
    CHECK(rc == DIT_OK && c->default_sampler == DIT_SAMPLER_DPMPP_2M &&
              c->default_steps == 10 && c->default_spacing == DIT_SPACING_LOGSNR &&
              c->default_cfg_scale == 4 && c->default_cfg_interval[0] == 0.2 &&
              c->default_cfg_interval[1] == 0.65 && c->default_cache.mode == DIT_CACHE_OFF,
          "every sampling key: %s", err);
    dit_sample_params_default(m, &p);
    CHECK(p.sampler == DIT_SAMPLER_DPMPP_2M && p.steps == 10 && p.cfg_scale == 4 &&
              p.spacing == DIT_SPACING_LOGSNR && p.cfg_interval[0] == 0.2 &&
              p.cfg_interval[1] == 0.65 && p.cache.mode == DIT_CACHE_OFF,
          "dit_sample_params_default hands out the config's defaults");
    CHECK(dit_model_default_spacing(m, DIT_SAMPLER_DPMPP_2M) == DIT_SPACING_LOGSNR &&
              dit_model_default_spacing(m, DIT_SAMPLER_DDIM) == DIT_SPACING_DEFAULT,
          "the default spacing is the default sampler's only");
    dit_model_free(m);
    m = with_sampling("{\"sampler\": \"dpm++\", \"spacing\": \"LogSNR\", \"cfg_interval\": "
                      "[0.3, 0.3], \"cache\": {\"mode\": \"fixed\", \"interval\": 3}}",
                      &rc, err, sizeof err);
    c = &m->cfg;
    CHECK(rc == DIT_OK && c->default_spacing == DIT_SPACING_LOGSNR &&
              c->default_cfg_interval[0] == 0.3 && c->default_cfg_interval[1] == 0.3 &&
              c->default_cache.mode == DIT_CACHE_FIXED && c->default_cache.interval == 3,
          "alias, case, lo == hi, a fixed cache: %s", err);
    dit_model_free(m);
    m = with_sampling("{\"sampler\": \"ddim\", \"spacing\": \"default\", \"cache\": "
                      "{\"mode\": \"adaptive\", \"threshold\": 0.25}}", &rc, err, sizeof err);
    c = &m->cfg;
    CHECK(rc == DIT_OK && c->default_sampler == DIT_SAMPLER_DDIM &&
              c->default_cache.mode == DIT_CACHE_ADAPTIVE &&
              c->default_cache.threshold == 0.25 && c->default_cache.interval == 2,
          "spacing default on ddim, an adaptive cache: %s", err);
    dit_model_free(m);
    m = with_sampling("{\"cache\": \"fixed\"}", &rc, err, sizeof err);
    CHECK(rc == DIT_OK && m->cfg.default_cache.mode == DIT_CACHE_FIXED &&
              m->cfg.default_cache.interval == 2, "cache \"fixed\": every 2nd: %s", err);
    dit_model_free(m);
    test_config_sampling_refused();
}

/* A packed model's forward against the BLAS one (out, routing rt), on 1
 * and 3 threads. */
static void check_packed(const dit_model *m, const dit_ctx_settings *s3, const float *x,
                         const float *t, const int32_t *y, const float *out,
                         const uint32_t *rt, float big)
{
    enum { N = 4, O = 4 * 64 };
    float outp[N * O], out3[N * O];
    dit_ctx_settings s1 = *s3;
    s1.n_threads = 1;
    dit_ctx *c = NULL, *c3 = NULL;
    CHECK(dit_ctx_new(&c, m, &s1) == DIT_OK && dit_forward(c, N, x, t, y, outp) == DIT_OK,
          "packed forward");
    CHECK(c && !memcmp(dit_ctx_routing(c), rt, sizeof(uint32_t) * N * 2 * 4),
          "packed: same routing");
    CHECK(dit_ctx_new(&c3, m, s3) == DIT_OK, "packed ctx with 3 threads");
    CHECK(c3 && dit_forward(c3, N, x, t, y, out3) == DIT_OK, "packed forward on 3 threads");
    float mp = 0, m3 = 0;
    for (int i = 0; c && c3 && i < N * O; i++) {
        mp = fmaxf(mp, fabsf(outp[i] - out[i]));
        m3 = fmaxf(m3, fabsf(out3[i] - outp[i]));
    }
    /* different summation orders through a deliberately ill-scaled
     * model (weights 0.3 randn, no 1/sqrt(fan-in)): the parity bound */
    CHECK(mp <= 1e-4f * big, "packed equals BLAS (max diff %g of max %g)", mp, big);
    CHECK(m3 <= 1e-6f * big, "packed: 3 threads equal 1 (max diff %g)", m3);
    dit_ctx_free(c);
    dit_ctx_free(c3);
}

static void test_forward(arena *a)
{
    char err[512] = "";
    int rc;
    a->used = 0;
    rng_default weights_rng = a->rng; /* the packed models below get the same weights */
    dit_model *m = tiny_model(a, NULL, NULL, err, sizeof err, &rc);
    CHECK(m != NULL, "tiny model binds: %s", err);
    if (!m)
        return;
    CHECK(dit_model_find_class(m, "KITTY") == 2 && dit_model_find_class(m, "eel") == 4 &&
              dit_model_find_class(m, "cow") == -1, "class names and aliases");
    dit_model_info info;
    dit_model_get_info(m, &info);
    CHECK(info.params_active < info.params_total, "active < total params");
    CHECK(info.params_total - info.params_active == 2ull * 2 * 3 * 24 * 48,
          "inactive = (E-k) experts per layer");

    dit_ctx_settings s;
    dit_ctx_settings_default(&s);
    s.max_rows = 4;
    s.max_rows = 0;
    dit_ctx *c = NULL;
    CHECK(dit_ctx_new(&c, m, &s) == DIT_E_INVAL && !c, "max_rows 0 refused");
    s.max_rows = 4;
    CHECK(dit_ctx_new(&c, m, &s) == DIT_OK, "ctx");
    enum { N = 4, X = 2 * 64, O = 4 * 64 };
    float x[N * X], t[N] = { 0, 10, 500.5f, 999 }, out[N * O], one[O];
    int32_t y[N] = { 0, 3, 5, 1 }; /* 5 = the null class */
    rng_default r;
    rng_default_init(&r, 7, 0);
    rng_default_randn(&r, x, N * X);
    CHECK(dit_forward(c, N + 1, x, t, y, out) == DIT_E_INVAL, "n > max_rows refused");
    int32_t bad[N] = { 0, 6, 0, 0 };
    CHECK(dit_forward(c, N, x, t, bad, out) == DIT_E_INVAL, "label beyond null refused");
    CHECK(dit_forward(c, N, x, t, y, out) == DIT_OK, "forward");
    uint32_t rt[N * 2 * 4]; /* the batch's routing, before later forwards reuse c */
    memcpy(rt, dit_ctx_routing(c), sizeof rt);
    for (int l = 0; l < 2; l++) {
        uint32_t sum = 0;
        for (int n = 0; n < N; n++)
            for (int e = 0; e < 4; e++)
                sum += rt[(n * 2 + l) * 4 + e];
        CHECK(sum == N * 16 * 2, "layer %d routes T*k tokens per row: %u", l, sum);
    }
    int finite = 1;
    for (int i = 0; i < N * O; i++)
        finite &= isfinite(out[i]);
    CHECK(finite, "finite output");
    /* batch invariance: row 2 alone equals row 2 in the batch */
    CHECK(dit_forward(c, 1, x + 2 * X, t + 2, y + 2, one) == DIT_OK, "single row");
    float md = 0, big1 = 1;
    for (int i = 0; i < O; i++) {
        md = fmaxf(md, fabsf(one[i] - out[2 * O + i]));
        big1 = fmaxf(big1, fabsf(out[2 * O + i]));
    }
    /* on the BLAS path one row and four take different sgemm kernels
     * (measured up to 8e-6 of the largest output under clang -O2) */
    CHECK(md <= 2e-5f * big1, "row alone equals row in batch (max diff %g of max %g)", md,
          big1);
    /* the pool splits rows, heads and experts: results must not change */
    dit_ctx *c3 = NULL;
    s.n_threads = 3;
    CHECK(dit_ctx_new(&c3, m, &s) == DIT_OK, "ctx with 3 threads");
    float out3[N * O];
    CHECK(c3 && dit_forward(c3, N, x, t, y, out3) == DIT_OK, "forward on 3 threads");
    md = 0;
    float big = 0;
    for (int i = 0; c3 && i < N * O; i++) {
        md = fmaxf(md, fabsf(out3[i] - out[i]));
        big = fmaxf(big, fabsf(out[i]));
    }
    /* BLAS picks kernels (and their K blocking) by matrix size, so row
     * blocks may round apart: measured up to 5e-6 of the largest output
     * with OpenBLAS's Haswell kernels; the packed kernel splits exactly */
    CHECK(md <= 2e-5f * big, "3 threads equal 1 thread (max diff %g of max %g)", md, big);
    CHECK(c3 && !memcmp(dit_ctx_routing(c3), rt, sizeof(uint32_t) * N * 2 * 4),
          "same routing on 3 threads");
    dit_ctx_free(c3);
    c3 = NULL;
    /* the same weights packed for every kernel entry this CPU runs, chosen
     * through DITMOE_ISA: the same outputs, on 1 or 3 threads */
    for (const gemm_kernel *const *k = gemm_kernels(); *k; k++) {
        if (!(*k)->supported()) {
            printf("test_model: kernel %s: this CPU lacks it, not run\n", (*k)->name);
            continue;
        }
        setenv("DITMOE_ISA", (*k)->name, 1);
        a->rng = weights_rng;
        dit_model *mk = tiny_model(a, NULL, NULL, err, sizeof err, &rc);
        CHECK(mk && mk->gk == *k, "DITMOE_ISA=%s chooses it: %s", (*k)->name, err);
        if (!mk)
            continue;
        CHECK(model_pack(mk, NULL, "tiny", err, sizeof err) == DIT_OK && mk->packed &&
                  mk->blocks[1].experts[2].gu.pk, "pack the bound model for %s", (*k)->name);
        check_packed(mk, &s, x, t, y, out, rt, big);
        dit_model_free(mk);
        printf("test_model: kernel %s: packed forward checked\n", (*k)->name);
    }
    /* an unknown ISA, and one this CPU lacks, are errors naming the variable */
    const char *lacking = NULL;
    for (const gemm_kernel *const *k = gemm_kernels(); *k; k++)
        if (!(*k)->supported())
            lacking = (*k)->name;
    const char *bad_isa[] = { "sse9", lacking };
    for (int i = 0; i < 2 && bad_isa[i]; i++) {
        setenv("DITMOE_ISA", bad_isa[i], 1);
        char want[64];
        snprintf(want, sizeof want, "DITMOE_ISA=%s", bad_isa[i]);
        CHECK(!tiny_model(a, NULL, NULL, err, sizeof err, &rc) && rc == DIT_E_INVAL &&
                  strstr(err, want), "DITMOE_ISA=%s refused: %s", bad_isa[i], err);
    }
    unsetenv("DITMOE_ISA");
    dit_ctx_free(c);
    dit_ctx_free(NULL);
    dit_model_free(m);
}

int main(void)
{
    arena a = { 0 };
    a.cap = 1 << 20;
    a.mem = malloc(a.cap * sizeof(float));
    rng_default_init(&a.rng, 1, 0);
    test_bind_errors(&a);
    test_config_sampling();
    test_forward(&a);
    free(a.mem);
    printf("%s\n", check_failures ? "FAILED" : "all model tests passed");
    return check_failures != 0;
}
