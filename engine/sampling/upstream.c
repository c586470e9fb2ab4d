/* upstream.c: upstream's samplers (rectified-flow Euler, DDPM, DDIM) as
 * rows of the sampler table, and the respaced diffusion schedule they run.
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
 * These rows keep upstream's schedules: they take no spacing.
 */
#include "samp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
void samp_base_alphas_cumprod(double *ac)
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

/* ---- rows ------------------------------------------------------------ */

/* Respaced index of the current step: steps-1 down to 0. */
static int samp_index(const dit_sampler *s) { return s->steps - 1 - s->step; }

static int samp_init_euler(dit_sampler *s, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    s->num_evals = s->steps;
    return DIT_OK;
}

/* as upstream: a Python float i/N */
static double samp_time_euler(const dit_sampler *s)
{
    return (float)((double)(s->steps - s->step) / (double)s->steps);
}

static double samp_level_euler(const dit_sampler *s)
{
    return (double)(s->steps - s->step) / (double)s->steps;
}

static int samp_init_gauss(dit_sampler *s, char *err, size_t errlen)
{
    int want = s->steps;
    s->sched = malloc((size_t)want * sizeof *s->sched);
    if (!s->sched)
        return DIT_E_NOMEM;
    s->steps = s->num_evals = samp_schedule(want, s->sched);
    if (s->steps < 1) {
        snprintf(err, errlen, "steps: %d cannot respace 1000 diffusion steps", want);
        return DIT_E_INVAL;
    }
    return DIT_OK;
}

static double samp_time_gauss(const dit_sampler *s)
{
    return (float)s->sched[samp_index(s)].timestep;
}

static double samp_level_gauss(const dit_sampler *s)
{
    return s->sched[samp_index(s)].noise_level;
}

static const float *samp_input_x(const dit_sampler *s)
{
    return s->x;
}

static int samp_update_euler(dit_sampler *s, const float *out)
{
    const float dt = (float)(1.0 / (double)s->steps);
    for (int i = 0; i < s->n; i++) {
        float *x = s->x + i * s->chw; // (C, H, W)
        for (int ch = 0; ch < s->c; ch++)
            for (int p = 0; p < s->hw; p++)
                x[ch * s->hw + p] -= dt * samp_pred(s, out, i, ch, p);
    }
    return 1;
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

static int samp_update_ddpm(dit_sampler *s, const float *out)
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
    return 1;
}

static int samp_update_ddim(dit_sampler *s, const float *out)
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
    return 1;
}

#define EPS_BIT (1u << DIT_PRED_EPSILON)
#define VEL_BIT (1u << DIT_PRED_VELOCITY)

const samp_ops samp_euler_ops = {
    { "euler", "rf", VEL_BIT, 1, 1, 0,
      "rectified-flow Euler, upstream's sampler for flow models (t = i/N)" },
    samp_init_euler, samp_time_euler, samp_level_euler, samp_input_x, samp_update_euler,
};
const samp_ops samp_ddpm_ops = {
    { "ddpm", "", EPS_BIT, 1, 1, 0,
      "ancestral DDPM on upstream's respaced 1000-step schedule" },
    samp_init_gauss, samp_time_gauss, samp_level_gauss, samp_input_x, samp_update_ddpm,
};
const samp_ops samp_ddim_ops = {
    { "ddim", "", EPS_BIT, 1, 1, 0, "DDIM (eta 0) on upstream's respaced schedule" },
    samp_init_gauss, samp_time_gauss, samp_level_gauss, samp_input_x, samp_update_ddim,
};
