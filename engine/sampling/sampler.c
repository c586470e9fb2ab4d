/* sampler.c: denoising loops (rectified-flow Euler, DDPM, DDIM) as steppable
 * state, and dit_generate, which batches the rows of many samplers.
 *
 * A dit_sampler holds one request: n images of one class, their current
 * sample x (n, C, H, W), the schedule and the RNG state. Each step the
 * caller (dit_generate, or the server's scheduler) asks for the model
 * inputs of its rows, runs the model on them, possibly together with the
 * rows of other samplers, and hands the output back to dit_sampler_update.
 * Everything is allocated in dit_sampler_new; stepping allocates nothing.
 *
 * Semantics, all as upstream feizc/DiT-MoE:
 *   euler  RectifiedFlow.sample: for i = N..1 the model sees t = i/N (float
 *          in [0, 1]) and z <- z - v/N, v the first C output channels.
 *   ddpm   create_diffusion(str(N)) + p_sample_loop, clip_denoised=False as
 *          sample.py: 1000 linear betas respaced by space_timesteps, the
 *          model fed the original timestep (timestep_map), learned-range
 *          variance when learn_sigma (channels C..2C), fixed-large variance
 *          otherwise, no noise on the last step.
 *   ddim   ddim_sample_loop with eta 0 on the same respaced schedule.
 * The update arithmetic is float32 with float32 coefficients, in upstream's
 * order of operations, so results match a float32 PyTorch run closely.
 *
 * Guidance (cfg_scale != 1): the rows are [n conditional, n null-class],
 * both fed the same x, as upstream forward_with_cfg. The guided value is
 * u + g (c - u); other channels come from the conditional rows. Channels
 * guided: euler every velocity channel (as RectifiedFlow.sample); ddpm and
 * ddim the first min(3, Cout) output channels in UPSTREAM mode (literally
 * forward_with_cfg's eps[:, :3], which for a 1-channel learn_sigma model
 * includes the variance channel, and for 4 channels leaves one out), the C
 * prediction channels in ALL mode. cfg_scale 1 adds no null rows at all.
 *
 * Prediction types: a velocity (rectified-flow) model samples with euler
 * only, an epsilon model with ddpm or ddim only; other pairs are refused.
 *
 * Random numbers:
 *   DEFAULT  rng_default stream i for image i (so an image never depends on
 *            its batch): its initial noise (C*H*W values), then for ddpm
 *            each step but the last its step noise. ddim (eta 0) and euler
 *            draw nothing after the initial noise.
 *   TORCH    one rng_torch seeded with the seed, drawing what upstream
 *            sample.py draws after torch.manual_seed(seed), in its order:
 *            ddpm/ddim: randn(n, C, H, W) as the initial noise, then every
 *            step (the last included, and ddim too: p_sample and ddim_sample
 *            both call randn_like) randn(rows, C, H, W) for the whole model
 *            batch, of which the first n images are used (rows = 2n with
 *            guidance, n without). euler (sample.py's rf path): randn(n, ...)
 *            drawn and discarded (sample.py's z), then randn(n, ...) as the
 *            initial noise. (sample.py builds the model after manual_seed,
 *            and its initialisation draws from the same generator first; to
 *            reproduce a sample.py run, reseed after building the model.)
 * With params.noise the initial noise is copied instead, but the generator
 * still advances past it, so the per-step noise is the same either way.
 */
#include <ditmoe/dit.h>
#include "model.h"
#include "rng.h"
#include "sampler.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SAMP_MAX_STEPS 1000
#define SAMP_MAX_IMAGES 64
#define SAMP_MAX_CFG 50.0

struct dit_sampler {
    const dit_model *m;
    int n;              /* images */
    int rows;           /* model rows per step: n, or 2n with guidance */
    int guided;         /* cfg_scale != 1 */
    float g;            /* cfg_scale */
    int gch;            /* output channels guidance applies to */
    int c, cout, hw;    /* C, Cout, H*W */
    size_t chw;         /* C*H*W */
    int kind, rng_kind, learn_sigma;
    int label, null_label;
    int steps, step;
    samp_coef *sched;   /* (steps), index = respaced step i; NULL for euler */
    float *x;           /* (n, C, H, W) the current sample */
    float *noise;       /* (rows, C, H, W) one step's noise */
    rng_default *rd;    /* (n) DEFAULT: stream i for image i */
    rng_torch rt;       /* TORCH */
};

static void samp_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- schedules -------------------------------------------------------- */

int samp_respace(int n, int *map)
{
    /* one section of 1000 steps: stride (1000-1)/(n-1), Python round()
     * (half to even, as nearbyint), kept as a set in increasing order */
    unsigned char keep[SAMP_BASE_STEPS] = {0};
    double stride = n <= 1 ? 1.0 : (double)(SAMP_BASE_STEPS - 1) / (double)(n - 1);
    double cur = 0.0;
    int count = 0;
    if (n < 1 || n > SAMP_BASE_STEPS)
        return -1;
    for (int k = 0; k < n; k++) {
        double r = nearbyint(cur);
        if (r >= 0 && r < SAMP_BASE_STEPS)
            keep[(int)r] = 1;
        cur += stride;
    }
    for (int i = 0; i < SAMP_BASE_STEPS; i++)
        if (keep[i])
            map[count++] = i;
    return count;
}

/* np.linspace(1e-4, 0.02, 1000) and its cumulative product of 1 - beta. */
static void samp_base_alphas_cumprod(double *ac)
{
    const double start = 0.0001, stop = 0.02;
    const double step = (stop - start) / (double)(SAMP_BASE_STEPS - 1);
    double prod = 1.0;
    for (int i = 0; i < SAMP_BASE_STEPS; i++) {
        double beta = i == SAMP_BASE_STEPS - 1 ? stop : (double)i * step + start;
        prod *= 1.0 - beta;
        ac[i] = prod;
    }
}

int samp_schedule(int n, samp_coef *out)
{
    double base[SAMP_BASE_STEPS], beta[SAMP_BASE_STEPS], ac[SAMP_BASE_STEPS];
    int map[SAMP_BASE_STEPS];
    int count = samp_respace(n, map);
    double last = 1.0, prod = 1.0;
    if (count < 1)
        return -1;
    samp_base_alphas_cumprod(base);
    for (int i = 0; i < count; i++) { /* SpacedDiffusion: the new betas */
        beta[i] = 1.0 - base[map[i]] / last;
        last = base[map[i]];
    }
    for (int i = 0; i < count; i++) { /* GaussianDiffusion on them */
        prod *= 1.0 - beta[i];
        ac[i] = prod;
    }
    for (int i = 0; i < count; i++) {
        double acp = i == 0 ? 1.0 : ac[i - 1];
        double pv = beta[i] * (1.0 - acp) / (1.0 - ac[i]);
        double pv1 = count > 1 ? beta[1] * (1.0 - ac[0]) / (1.0 - ac[1]) : 0.0;
        samp_coef *s = &out[i];
        s->timestep = map[i];
        s->noise_level = sqrt(1.0 - ac[i]);
        s->recip = (float)sqrt(1.0 / ac[i]);
        s->recipm1 = (float)sqrt(1.0 / ac[i] - 1.0);
        s->coef1 = (float)(beta[i] * sqrt(acp) / (1.0 - ac[i]));
        s->coef2 = (float)((1.0 - acp) * sqrt(1.0 - beta[i]) / (1.0 - ac[i]));
        s->abar_prev = (float)acp;
        s->log_max = (float)log(beta[i]);
        if (count > 1) {
            s->log_min = (float)log(i == 0 ? pv1 : pv);
            s->log_fixed = (float)log(i == 0 ? pv1 : beta[i]);
        } else {
            s->log_min = s->log_fixed = 0.0f;
        }
    }
    return count;
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
}

/* Checks p against the model; DIT_OK or DIT_E_INVAL with a message. */
static int samp_check(const dit_config *cfg, const dit_sample_params *p,
                      char *err, size_t errlen)
{
    int has_null = cfg->class_dropout_prob > 0;
    int max_label = cfg->num_classes - 1 + has_null;
    if (p->sampler < DIT_SAMPLER_EULER || p->sampler > DIT_SAMPLER_DDIM) {
        samp_err(err, errlen, "sampler: %d is not one of euler (0), ddpm (1), ddim (2)",
                 p->sampler);
        return DIT_E_INVAL;
    }
    if (cfg->prediction == DIT_PRED_VELOCITY && p->sampler != DIT_SAMPLER_EULER) {
        samp_err(err, errlen, "sampler: %s needs an epsilon-prediction model; this model "
                 "predicts velocity (rectified flow), so only euler fits",
                 dit_sampler_name(p->sampler));
        return DIT_E_INVAL;
    }
    if (cfg->prediction != DIT_PRED_VELOCITY && p->sampler == DIT_SAMPLER_EULER) {
        samp_err(err, errlen, "sampler: euler needs a velocity-prediction (rectified flow) "
                 "model; this model predicts epsilon, so use ddpm or ddim");
        return DIT_E_INVAL;
    }
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
        if (s->kind == DIT_SAMPLER_EULER) /* sample.py's unused z */
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
    s->n = p->num_images;
    s->guided = p->cfg_scale != 1.0;
    s->rows = s->guided ? 2 * s->n : s->n;
    s->g = (float)p->cfg_scale;
    s->c = cfg->in_channels;
    s->cout = cfg->out_channels;
    s->hw = cfg->input_size * cfg->input_size;
    s->chw = (size_t)s->c * s->hw;
    s->kind = p->sampler;
    s->rng_kind = p->rng;
    s->learn_sigma = cfg->learn_sigma;
    s->label = p->class_label;
    s->null_label = cfg->num_classes;
    if (s->kind == DIT_SAMPLER_EULER || p->cfg_mode == DIT_CFG_ALL)
        s->gch = s->c;
    else
        s->gch = s->cout < 3 ? s->cout : 3;
}

int dit_sampler_new(dit_sampler **out, const dit_model *m, const dit_sample_params *p,
                    char *err, size_t errlen)
{
    const dit_config *cfg;
    dit_sampler *s;
    int rc;
    if (!out)
        return DIT_E_INVAL;
    *out = NULL;
    if (!m || !p) {
        samp_err(err, errlen, "dit_sampler_new: model and params must not be NULL");
        return DIT_E_INVAL;
    }
    cfg = dit_model_config(m);
    rc = samp_check(cfg, p, err, errlen);
    if (rc != DIT_OK)
        return rc;
    s = calloc(1, sizeof *s);
    if (!s)
        goto nomem;
    samp_init(s, m, p);
    s->steps = p->steps;
    if (s->kind != DIT_SAMPLER_EULER) {
        s->sched = malloc((size_t)p->steps * sizeof *s->sched);
        if (!s->sched)
            goto nomem;
        s->steps = samp_schedule(p->steps, s->sched);
        if (s->steps < 1) {
            samp_err(err, errlen, "steps: %d cannot respace 1000 diffusion steps", p->steps);
            dit_sampler_free(s);
            return DIT_E_INVAL;
        }
    }
    s->x = malloc((size_t)s->n * s->chw * sizeof(float));
    s->noise = malloc((size_t)s->rows * s->chw * sizeof(float));
    s->rd = calloc((size_t)s->n, sizeof *s->rd);
    if (!s->x || !s->noise || !s->rd)
        goto nomem;
    samp_initial_noise(s, p->seed, p->noise);
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
    free(s->x);
    free(s->noise);
    free(s->rd);
    free(s);
}

int dit_sampler_rows(const dit_sampler *s) { return s->rows; }
int dit_sampler_num_images(const dit_sampler *s) { return s->n; }
int dit_sampler_step(const dit_sampler *s) { return s->step; }
int dit_sampler_num_steps(const dit_sampler *s) { return s->steps; }
int dit_sampler_done(const dit_sampler *s) { return s->step >= s->steps; }
const float *dit_sampler_result(const dit_sampler *s) { return s->x; }

/* Respaced index of the current step: steps-1 down to 0. */
static int samp_index(const dit_sampler *s) { return s->steps - 1 - s->step; }

double dit_sampler_noise_level(const dit_sampler *s)
{
    if (dit_sampler_done(s))
        return 0.0;
    if (s->kind == DIT_SAMPLER_EULER)
        return (double)(s->steps - s->step) / (double)s->steps;
    return s->sched[samp_index(s)].noise_level;
}

void dit_sampler_inputs(const dit_sampler *s, float *x, float *t, int32_t *y)
{
    size_t nx = (size_t)s->n * s->chw;
    float tv;
    if (dit_sampler_done(s))
        return;
    if (s->kind == DIT_SAMPLER_EULER) /* as upstream: a Python float i/N */
        tv = (float)((double)(s->steps - s->step) / (double)s->steps);
    else
        tv = (float)s->sched[samp_index(s)].timestep;
    memcpy(x, s->x, nx * sizeof(float)); // (n, C, H, W) conditional rows
    if (s->guided)                        // (n, C, H, W) null rows: same x
        memcpy(x + nx, s->x, nx * sizeof(float));
    for (int r = 0; r < s->rows; r++) {
        t[r] = tv;
        y[r] = r < s->n ? s->label : s->null_label;
    }
}

/* Output channel ch at pixel p of image i, guided when it should be. */
static inline float samp_pred(const dit_sampler *s, const float *out, int i, int ch,
                              int p)
{
    float c = out[((size_t)i * s->cout + ch) * s->hw + p];
    float u;
    if (!s->guided || ch >= s->gch)
        return c;
    u = out[((size_t)(i + s->n) * s->cout + ch) * s->hw + p];
    return u + s->g * (c - u);
}

static void samp_update_euler(dit_sampler *s, const float *out)
{
    const float dt = (float)(1.0 / (double)s->steps);
    for (int i = 0; i < s->n; i++) {
        float *x = s->x + i * s->chw; // (C, H, W)
        for (int ch = 0; ch < s->c; ch++)
            for (int p = 0; p < s->hw; p++)
                x[ch * s->hw + p] -= dt * samp_pred(s, out, i, ch, p);
    }
}

/* The noise of this step into s->noise (n images used), per the header. */
static void samp_step_noise(dit_sampler *s, int last)
{
    if (s->rng_kind == DIT_RNG_TORCH) {
        rng_torch_randn(&s->rt, s->noise, (size_t)s->rows * s->chw);
    } else if (s->kind == DIT_SAMPLER_DDPM && !last) {
        for (int i = 0; i < s->n; i++)
            rng_default_randn(&s->rd[i], s->noise + i * s->chw, s->chw);
    }
}

static void samp_update_ddpm(dit_sampler *s, const float *out)
{
    const samp_coef *k = &s->sched[samp_index(s)];
    int last = samp_index(s) == 0;
    samp_step_noise(s, last);
    for (int i = 0; i < s->n; i++) {
        float *x = s->x + i * s->chw;           // (C, H, W)
        const float *z = s->noise + i * s->chw; // (C, H, W)
        for (int ch = 0; ch < s->c; ch++) {
            for (int p = 0; p < s->hw; p++) {
                float xt = x[ch * s->hw + p];
                float eps = samp_pred(s, out, i, ch, p);
                float x0 = k->recip * xt - k->recipm1 * eps;
                float mean = k->coef1 * x0 + k->coef2 * xt;
                float logvar = k->log_fixed;
                if (last) {
                    x[ch * s->hw + p] = mean;
                    continue;
                }
                if (s->learn_sigma) {
                    float frac = (samp_pred(s, out, i, s->c + ch, p) + 1.0f) / 2.0f;
                    logvar = frac * k->log_max + (1.0f - frac) * k->log_min;
                }
                x[ch * s->hw + p] = mean + expf(0.5f * logvar) * z[ch * s->hw + p];
            }
        }
    }
}

static void samp_update_ddim(dit_sampler *s, const float *out)
{
    const samp_coef *k = &s->sched[samp_index(s)];
    const float a_prev = sqrtf(k->abar_prev);
    const float s_prev = sqrtf(1.0f - k->abar_prev);
    samp_step_noise(s, samp_index(s) == 0); /* only TORCH draws (unused) */
    for (int i = 0; i < s->n; i++) {
        float *x = s->x + i * s->chw; // (C, H, W)
        for (int ch = 0; ch < s->c; ch++) {
            for (int p = 0; p < s->hw; p++) {
                float xt = x[ch * s->hw + p];
                float x0 = k->recip * xt - k->recipm1 * samp_pred(s, out, i, ch, p);
                float eps = (k->recip * xt - x0) / k->recipm1; /* re-derived */
                x[ch * s->hw + p] = x0 * a_prev + s_prev * eps;
            }
        }
    }
}

void dit_sampler_update(dit_sampler *s, const float *out)
{
    if (dit_sampler_done(s))
        return;
    if (s->kind == DIT_SAMPLER_EULER)
        samp_update_euler(s, out);
    else if (s->kind == DIT_SAMPLER_DDPM)
        samp_update_ddpm(s, out);
    else
        samp_update_ddim(s, out);
    s->step++;
}

/* ---- batching --------------------------------------------------------- */

/* One forward over the rows of every unfinished sampler, packed in order
 * into x/t/y, and the outputs handed back to the same samplers. */
static int samp_generate_step(dit_ctx *c, dit_sampler **s, int n, size_t chw, size_t couthw,
                              float *x, float *t, int32_t *y, float *out)
{
    int r = 0, rc;
    for (int i = 0; i < n; i++) {
        if (dit_sampler_done(s[i]))
            continue;
        dit_sampler_inputs(s[i], x + r * chw, t + r, y + r);
        r += s[i]->rows;
    }
    rc = dit_forward(c, r, x, t, y, out);
    if (rc != DIT_OK)
        return rc;
    r = 0;
    for (int i = 0; i < n; i++) { /* done-ness is unchanged since packing */
        if (dit_sampler_done(s[i]))
            continue;
        dit_sampler_update(s[i], out + r * couthw);
        r += s[i]->rows;
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
        rows += s[i]->rows;
        if (s[i]->steps - s[i]->step > iters)
            iters = s[i]->steps - s[i]->step;
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
    out = malloc((size_t)rows * couthw * sizeof *out); // (R, Cout, H, W)
    if (!x || !t || !y || !out) {
        rc = DIT_E_NOMEM;
        goto done;
    }
    for (int it = 0; it < iters; it++) {
        rc = samp_generate_step(c, s, n, chw, couthw, x, t, y, out);
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
    free(out);
    return rc;
}
