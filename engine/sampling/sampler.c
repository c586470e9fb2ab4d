/* sampler.c: denoising loops as steppable state, and dit_generate, which
 * batches the rows of many samplers.
 *
 * A dit_sampler holds one request: n images of one class, their current
 * sample x (n, C, H, W), the schedule and the RNG state. Each evaluation
 * the caller (dit_generate, or the server's scheduler) asks for the model
 * inputs of its rows, runs the model on them, possibly together with the
 * rows of other samplers, and hands the output back to dit_sampler_update.
 * A step takes one evaluation, or two for a second-order single-step
 * solver (heun). Everything is allocated in dit_sampler_new; stepping
 * allocates nothing. What each kind computes lives in its row of the
 * sampler table (table.c; upstream.c and solvers.c hold the rows).
 *
 * Guidance (cfg_scale != 1): the rows are [n conditional, n null-class],
 * both fed the same x, as upstream forward_with_cfg. The guided value is
 * u + g (c - u); other channels come from the conditional rows. Channels
 * guided: velocity models every velocity channel (as RectifiedFlow.sample);
 * epsilon models the first min(3, Cout) output channels in UPSTREAM mode
 * (literally forward_with_cfg's eps[:, :3], which for a 1-channel
 * learn_sigma model includes the variance channel, and for 4 channels
 * leaves one out), the C prediction channels in ALL mode. cfg_scale 1 adds
 * no null rows at all, and neither does an evaluation whose noise level is
 * outside cfg_interval: its rows are the n conditional ones, unguided, so
 * the row count of a sampler may change between evaluations.
 *
 * Prediction types: each kind lists the predictions it supports; other
 * pairs are refused by name.
 *
 * Random numbers:
 *   DEFAULT  rng_default stream i for image i (so an image never depends on
 *            its batch): its initial noise (C*H*W values), then for ddpm
 *            each step but the last its step noise. The other kinds draw
 *            nothing after the initial noise.
 *   TORCH    one rng_torch seeded with the seed, drawing what upstream
 *            sample.py draws after torch.manual_seed(seed), in its order:
 *            epsilon models: randn(n, C, H, W) as the initial noise, then
 *            for ddpm and ddim every step (the last included: p_sample and
 *            ddim_sample both call randn_like) randn(rows, C, H, W) for the
 *            whole model batch, of which the first n images are used.
 *            Velocity models (sample.py's rf path): randn(n, ...) drawn and
 *            discarded (sample.py's z), then randn(n, ...) as the initial
 *            noise. dpm++2m and heun draw nothing per step. (sample.py
 *            builds the model after manual_seed, and its initialisation
 *            draws from the same generator first; to reproduce a sample.py
 *            run, reseed after building the model.)
 * With params.noise the initial noise is copied instead, but the generator
 * still advances past it, so the per-step noise is the same either way.
 *
 * Step cache (params.cache): each row owns a dit_cache (model.h) with room
 * for its residual (T, D) and, adaptive, block 0's last modulated input.
 * Before each evaluation dit_sampler_caches tells the fixed schedule's rows
 * whether to run the blocks; dit_forward_cached decides the adaptive ones.
 */
#include "samp.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SAMP_MAX_STEPS 1000
#define SAMP_MAX_IMAGES 64
#define SAMP_MAX_CFG 50.0

static void samp_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- parameters ------------------------------------------------------- */

void dit_sample_params_default(const dit_model *m, dit_sample_params *p)
{
    const dit_config *cfg = dit_model_config(m);
    memset(p, 0, sizeof *p);
    p->class_label = 0;
    p->num_images = 1;
    p->seed = 0;
    p->steps = cfg->default_steps;
    p->cfg_scale = cfg->default_cfg_scale;
    p->sampler = cfg->default_sampler;
    p->cfg_mode = DIT_CFG_UPSTREAM;
    p->rng = DIT_RNG_DEFAULT;
    p->noise = NULL;
    p->spacing = cfg->default_spacing;
    p->cfg_interval[0] = cfg->default_cfg_interval[0];
    p->cfg_interval[1] = cfg->default_cfg_interval[1];
    p->cache = cfg->default_cache;
}

int dit_model_default_spacing(const dit_model *m, int sampler)
{
    const dit_config *cfg = dit_model_config(m);
    return sampler == cfg->default_sampler ? cfg->default_spacing : DIT_SPACING_DEFAULT;
}

/* "euler, heun" (the kinds that support prediction) into buf. */
static void samp_fitting(int prediction, char *buf, size_t len)
{
    buf[0] = 0;
    for (int k = 0; k < dit_sampler_count(); k++)
        if (dit_sampler_supports(k, prediction)) {
            size_t l = strlen(buf);
            snprintf(buf + l, len - l, "%s%s", l ? ", " : "", dit_sampler_name(k));
        }
}

/* The sampler, its spacing and the model's prediction; DIT_OK or an error. */
static int samp_check_kind(const dit_config *cfg, const dit_sample_params *p, char *err,
                           size_t errlen)
{
    const dit_sampler_desc *d = dit_sampler_info(p->sampler);
    char fit[128];
    if (!d) {
        samp_err(err, errlen, "sampler: %d is not a sampler (0..%d)", p->sampler,
                 dit_sampler_count() - 1);
        return DIT_E_INVAL;
    }
    if (!dit_sampler_supports(p->sampler, cfg->prediction)) {
        samp_fitting(cfg->prediction, fit, sizeof fit);
        samp_err(err, errlen, "sampler: %s does not support this model's prediction (%s); "
                 "use one of %s", d->name,
                 cfg->prediction == DIT_PRED_VELOCITY ? "velocity, rectified flow" : "epsilon",
                 fit);
        return DIT_E_INVAL;
    }
    if (p->spacing < DIT_SPACING_DEFAULT || p->spacing > DIT_SPACING_LOGSNR) {
        samp_err(err, errlen, "spacing: %d is not one of default (0), uniform (1), logsnr (2)",
                 p->spacing);
        return DIT_E_INVAL;
    }
    if (p->spacing != DIT_SPACING_DEFAULT && !d->spacing) {
        samp_err(err, errlen, "spacing: %s keeps upstream's schedule; only \"default\" fits it",
                 d->name);
        return DIT_E_INVAL;
    }
    return DIT_OK;
}

/* Guidance interval and cache settings. */
static int samp_check_extras(const dit_sample_params *p, char *err, size_t errlen)
{
    double lo = p->cfg_interval[0], hi = p->cfg_interval[1];
    const dit_cache_params *c = &p->cache;
    if (!isfinite(lo) || !isfinite(hi) || lo < 0 || hi > 1 || lo > hi) {
        samp_err(err, errlen, "cfg_interval: [%g, %g] must satisfy 0 <= lo <= hi <= 1 "
                 "(noise levels)", lo, hi);
        return DIT_E_INVAL;
    }
    if (c->mode < DIT_CACHE_OFF || c->mode > DIT_CACHE_ADAPTIVE) {
        samp_err(err, errlen, "cache: mode %d is not one of off (0), fixed (1), adaptive (2)",
                 c->mode);
        return DIT_E_INVAL;
    }
    if (c->mode == DIT_CACHE_FIXED && (c->interval < 2 || c->interval > 100)) {
        samp_err(err, errlen, "cache: interval %d is out of range 2..100", c->interval);
        return DIT_E_INVAL;
    }
    if (c->mode == DIT_CACHE_ADAPTIVE &&
        (!isfinite(c->threshold) || c->threshold <= 0 || c->threshold > 10)) {
        samp_err(err, errlen, "cache: threshold %g is out of range (0, 10]", c->threshold);
        return DIT_E_INVAL;
    }
    return DIT_OK;
}

/* Checks p against the model; DIT_OK or DIT_E_INVAL with a message. */
static int samp_check(const dit_config *cfg, const dit_sample_params *p,
                      char *err, size_t errlen)
{
    int has_null = cfg->class_dropout_prob > 0;
    int max_label = cfg->num_classes - 1 + has_null;
    int rc = samp_check_kind(cfg, p, err, errlen);
    if (rc == DIT_OK)
        rc = samp_check_extras(p, err, errlen);
    if (rc != DIT_OK)
        return rc;
    if (p->cfg_mode != DIT_CFG_UPSTREAM && p->cfg_mode != DIT_CFG_ALL) {
        samp_err(err, errlen, "cfg_mode: %d is not one of upstream (0), all (1)", p->cfg_mode);
        return DIT_E_INVAL;
    }
    if (p->rng != DIT_RNG_DEFAULT && p->rng != DIT_RNG_TORCH) {
        samp_err(err, errlen, "rng: %d is not one of default (0), torch (1)", p->rng);
        return DIT_E_INVAL;
    }
    if (p->num_images < 1 || p->num_images > SAMP_MAX_IMAGES) {
        samp_err(err, errlen, "num_images: %d is out of range 1..%d", p->num_images,
                 SAMP_MAX_IMAGES);
        return DIT_E_INVAL;
    }
    if (p->steps < 1 || p->steps > SAMP_MAX_STEPS) {
        samp_err(err, errlen, "steps: %d is out of range 1..%d", p->steps, SAMP_MAX_STEPS);
        return DIT_E_INVAL;
    }
    if (!isfinite(p->cfg_scale) || p->cfg_scale < 0 || p->cfg_scale > SAMP_MAX_CFG) {
        samp_err(err, errlen, "cfg_scale: %g is out of range 0..%g", p->cfg_scale,
                 SAMP_MAX_CFG);
        return DIT_E_INVAL;
    }
    if (p->cfg_scale != 1.0 && !has_null) {
        samp_err(err, errlen, "cfg_scale: %g needs a null-class embedding, but this model "
                 "has none (class_dropout_prob 0); use cfg_scale 1", p->cfg_scale);
        return DIT_E_INVAL;
    }
    if (p->class_label < 0 || p->class_label > max_label) {
        if (has_null)
            samp_err(err, errlen, "class_label: %d is out of range 0..%d (%d = unconditional)",
                     p->class_label, max_label, cfg->num_classes);
        else
            samp_err(err, errlen, "class_label: %d is out of range 0..%d (this model has "
                     "no unconditional class)", p->class_label, max_label);
        return DIT_E_INVAL;
    }
    return DIT_OK;
}

/* ---- sampler ---------------------------------------------------------- */

/* Draws (or copies) the initial noise into s->x, as the header says. */
static void samp_initial_noise(dit_sampler *s, uint64_t seed, const float *noise)
{
    size_t nx = (size_t)s->n * s->chw;
    if (s->rng_kind == DIT_RNG_DEFAULT) {
        for (int i = 0; i < s->n; i++) {
            rng_default_init(&s->rd[i], seed, (uint64_t)i);
            if (noise)
                s->rd[i].counter = s->chw; /* as if drawn */
            else
                rng_default_randn(&s->rd[i], s->x + i * s->chw, s->chw);
        }
    } else {
        rng_torch_seed(&s->rt, seed);
        if (s->prediction == DIT_PRED_VELOCITY) /* sample.py's unused z */
            rng_torch_randn(&s->rt, s->x, nx);
        rng_torch_randn(&s->rt, s->x, nx);
    }
    if (noise)
        memcpy(s->x, noise, nx * sizeof(float));
}

/* The sampler's fixed fields from the model and (checked) parameters. */
static void samp_init(dit_sampler *s, const dit_model *m, const dit_sample_params *p)
{
    const dit_config *cfg = dit_model_config(m);
    s->m = m;
    s->ops = samp_ops_get(p->sampler);
    s->n = p->num_images;
    s->guided = p->cfg_scale != 1.0;
    s->max_rows = s->guided ? 2 * s->n : s->n;
    s->cfg_lo = p->cfg_interval[0];
    s->cfg_hi = p->cfg_interval[1];
    s->g = (float)p->cfg_scale;
    s->c = cfg->in_channels;
    s->cout = cfg->out_channels;
    s->hw = cfg->input_size * cfg->input_size;
    s->chw = (size_t)s->c * s->hw;
    s->kind = p->sampler;
    s->rng_kind = p->rng;
    s->learn_sigma = cfg->learn_sigma;
    s->prediction = cfg->prediction;
    s->spacing = p->spacing == DIT_SPACING_DEFAULT ? DIT_SPACING_UNIFORM : p->spacing;
    s->label = p->class_label;
    s->null_label = cfg->num_classes;
    s->steps = p->steps;
    s->cache_p = p->cache;
    if (s->prediction == DIT_PRED_VELOCITY || p->cfg_mode == DIT_CFG_ALL)
        s->gch = s->c;
    else
        s->gch = s->cout < 3 ? s->cout : 3;
}

/* Rows and guidance of the next evaluation. */
static void samp_next(dit_sampler *s)
{
    double level;
    if (dit_sampler_done(s)) {
        s->rows = 0;
        return;
    }
    level = s->ops->level(s);
    s->g_now = s->guided && level >= s->cfg_lo && level <= s->cfg_hi;
    s->rows = s->g_now ? 2 * s->n : s->n;
}

/* The row caches and their buffers (one allocation), per the header. */
static int samp_cache_new(dit_sampler *s)
{
    const dit_config *cfg = dit_model_config(s->m);
    size_t td = (size_t)cfg->num_tokens * cfg->hidden_size;
    int adaptive = s->cache_p.mode == DIT_CACHE_ADAPTIVE;
    size_t per = adaptive ? 2 * td : td;
    if (s->cache_p.mode == DIT_CACHE_OFF)
        return DIT_OK;
    s->cache = calloc((size_t)s->max_rows, sizeof *s->cache);
    s->cache_mem = malloc((size_t)s->max_rows * per * sizeof(float));
    if (!s->cache || !s->cache_mem)
        return DIT_E_NOMEM;
    for (int r = 0; r < s->max_rows; r++) {
        dit_cache *c = &s->cache[r];
        c->mode = s->cache_p.mode;
        c->threshold = s->cache_p.threshold;
        c->resid = s->cache_mem + (size_t)r * per;      // (T, D)
        c->ref = adaptive ? c->resid + td : NULL;        // (T, D)
    }
    return DIT_OK;
}

/* Buffers every kind needs, and the solvers' extra state. */
static int samp_alloc(dit_sampler *s)
{
    size_t nx = (size_t)s->n * s->chw;
    s->x = malloc(nx * sizeof(float));
    s->noise = malloc((size_t)s->max_rows * s->chw * sizeof(float));
    s->rd = calloc((size_t)s->n, sizeof *s->rd);
    if (!s->x || !s->noise || !s->rd)
        return DIT_E_NOMEM;
    if (s->ops->d.spacing) { /* the solvers: prediction, history, Euler point */
        s->pred = malloc(nx * sizeof(float));
        s->prev = malloc(nx * sizeof(float));
        s->xe = malloc(nx * sizeof(float));
        if (!s->pred || !s->prev || !s->xe)
            return DIT_E_NOMEM;
    }
    return samp_cache_new(s);
}

int dit_sampler_new(dit_sampler **out, const dit_model *m, const dit_sample_params *p,
                    char *err, size_t errlen)
{
    dit_sampler *s;
    int rc;
    if (!out)
        return DIT_E_INVAL;
    *out = NULL;
    if (!m || !p) {
        samp_err(err, errlen, "dit_sampler_new: model and params must not be NULL");
        return DIT_E_INVAL;
    }
    rc = samp_check(dit_model_config(m), p, err, errlen);
    if (rc != DIT_OK)
        return rc;
    s = calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    samp_init(s, m, p);
    rc = s->ops->init(s, err, errlen);
    if (rc == DIT_E_NOMEM || (rc == DIT_OK && samp_alloc(s) != DIT_OK))
        goto nomem;
    if (rc != DIT_OK) {
        dit_sampler_free(s);
        return rc;
    }
    samp_initial_noise(s, p->seed, p->noise);
    samp_next(s);
    *out = s;
    return DIT_OK;
nomem:
    dit_sampler_free(s);
    samp_err(err, errlen, "out of memory making a sampler of %d images", p->num_images);
    return DIT_E_NOMEM;
}

void dit_sampler_free(dit_sampler *s)
{
    if (!s)
        return;
    free(s->sched);
    free(s->grid);
    free(s->x);
    free(s->noise);
    free(s->pred);
    free(s->prev);
    free(s->xe);
    free(s->rd);
    free(s->cache);
    free(s->cache_mem);
    free(s);
}

int dit_sampler_rows(const dit_sampler *s) { return s->rows; }
int dit_sampler_max_rows(const dit_sampler *s) { return s->max_rows; }
int dit_sampler_num_images(const dit_sampler *s) { return s->n; }
int dit_sampler_step(const dit_sampler *s) { return s->step; }
int dit_sampler_num_steps(const dit_sampler *s) { return s->steps; }
int dit_sampler_evals(const dit_sampler *s) { return s->evals; }
int dit_sampler_num_evals(const dit_sampler *s) { return s->num_evals; }
int dit_sampler_done(const dit_sampler *s) { return s->step >= s->steps; }
const float *dit_sampler_result(const dit_sampler *s) { return s->x; }

void dit_sampler_cache_stats(const dit_sampler *s, uint64_t *computed, uint64_t *reused)
{
    if (computed)
        *computed = s->blk_run;
    if (reused)
        *reused = s->blk_reused;
}

double dit_sampler_noise_level(const dit_sampler *s)
{
    return dit_sampler_done(s) ? 0.0 : s->ops->level(s);
}

void dit_sampler_inputs(const dit_sampler *s, float *x, float *t, int32_t *y)
{
    size_t nx = (size_t)s->n * s->chw;
    const float *in;
    float tv;
    if (dit_sampler_done(s))
        return;
    tv = (float)s->ops->time(s);
    in = s->ops->input(s);
    memcpy(x, in, nx * sizeof(float)); // (n, C, H, W) conditional rows
    if (s->g_now)                      // (n, C, H, W) null rows: same x
        memcpy(x + nx, in, nx * sizeof(float));
    for (int r = 0; r < s->rows; r++) {
        t[r] = tv;
        y[r] = r < s->n ? s->label : s->null_label;
    }
}

void dit_sampler_caches(dit_sampler *s, dit_cache **cache)
{
    int fixed_run = s->cache_p.mode == DIT_CACHE_FIXED &&
                    s->evals % s->cache_p.interval == 0;
    for (int r = 0; r < s->rows; r++) {
        /* null rows keep their own caches (rows n..2n) */
        dit_cache *c = s->cache ? &s->cache[r] : NULL;
        if (c && c->mode == DIT_CACHE_FIXED)
            c->run = fixed_run || !c->valid;
        cache[r] = c;
    }
}

void samp_guided(dit_sampler *s, const float *out)
{
    for (int i = 0; i < s->n; i++) {
        float *d = s->pred + i * s->chw; // (C, H, W)
        for (int ch = 0; ch < s->c; ch++)
            for (int p = 0; p < s->hw; p++)
                d[ch * s->hw + p] = samp_pred(s, out, i, ch, p);
    }
}

/* Counts the block computations of the evaluation just taken. */
static void samp_count_cache(dit_sampler *s)
{
    int L = dit_model_config(s->m)->depth;
    if (!s->cache) {
        s->blk_run += (uint64_t)s->rows * L;
        return;
    }
    for (int r = 0; r < s->rows; r++) {
        if (s->cache[r].computed)
            s->blk_run += (uint64_t)L;
        else
            s->blk_reused += (uint64_t)L;
    }
}

void dit_sampler_update(dit_sampler *s, const float *out)
{
    if (dit_sampler_done(s))
        return;
    samp_count_cache(s);
    if (s->ops->update(s, out)) {
        s->step++;
        s->stage = 0;
    } else {
        s->stage++;
    }
    s->evals++;
    samp_next(s);
}

/* ---- batching --------------------------------------------------------- */

/* One forward over the rows of every unfinished sampler, packed in order
 * into x/t/y, and the outputs handed back to the same samplers. */
static int samp_generate_step(dit_ctx *c, dit_sampler **s, int n, size_t chw, size_t couthw,
                              float *x, float *t, int32_t *y, dit_cache **cache, float *out)
{
    int r = 0, rc;
    for (int i = 0; i < n; i++) {
        if (dit_sampler_done(s[i]))
            continue;
        dit_sampler_inputs(s[i], x + r * chw, t + r, y + r);
        dit_sampler_caches(s[i], cache + r);
        r += s[i]->rows;
    }
    if (r == 0)
        return DIT_OK;
    rc = dit_forward_cached(c, r, x, t, y, cache, out);
    if (rc != DIT_OK)
        return rc;
    r = 0;
    for (int i = 0; i < n; i++) { /* done-ness is unchanged since packing */
        int rows = s[i]->rows;
        if (dit_sampler_done(s[i]))
            continue;
        dit_sampler_update(s[i], out + r * couthw);
        r += rows;
    }
    return DIT_OK;
}

/* The packed buffers are allocated once per call, for the rows of the
 * samplers still running, and none per step. */
int dit_generate(dit_ctx *c, dit_sampler **s, int n, dit_progress_fn progress, void *user)
{
    const dit_config *cfg;
    float *x = NULL, *t = NULL, *out = NULL;
    int32_t *y = NULL;
    dit_cache **cache = NULL;
    int rows = 0, iters = 0, rc = DIT_OK;
    size_t chw, couthw;
    if (!c || n < 0 || (n > 0 && !s))
        return DIT_E_INVAL;
    cfg = dit_model_config(c->m);
    for (int i = 0; i < n; i++) {
        if (!s[i] || s[i]->m != c->m)
            return DIT_E_INVAL; /* missing, or made from another model */
        if (dit_sampler_done(s[i]))
            continue;
        rows += s[i]->max_rows;
        if (s[i]->num_evals - s[i]->evals > iters)
            iters = s[i]->num_evals - s[i]->evals;
    }
    if (rows > c->set.max_rows)
        return DIT_E_INVAL;
    if (rows == 0)
        return DIT_OK;
    chw = (size_t)cfg->in_channels * cfg->input_size * cfg->input_size;
    couthw = (size_t)cfg->out_channels * cfg->input_size * cfg->input_size;
    x = malloc((size_t)rows * chw * sizeof *x);       // (R, C, H, W)
    t = malloc((size_t)rows * sizeof *t);             // (R)
    y = malloc((size_t)rows * sizeof *y);             // (R)
    cache = malloc((size_t)rows * sizeof *cache);     // (R)
    out = malloc((size_t)rows * couthw * sizeof *out); // (R, Cout, H, W)
    if (!x || !t || !y || !cache || !out) {
        rc = DIT_E_NOMEM;
        goto done;
    }
    for (int it = 0; it < iters; it++) {
        rc = samp_generate_step(c, s, n, chw, couthw, x, t, y, cache, out);
        if (rc != DIT_OK)
            goto done;
        if (progress && progress(user, it + 1, iters)) {
            rc = DIT_E_CANCELLED;
            goto done;
        }
    }
done:
    free(x);
    free(t);
    free(y);
    free(cache);
    free(out);
    return rc;
}
