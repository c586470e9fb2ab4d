/* solvers.c: fast ODE solvers as rows of the sampler table: DPM-Solver++
 * (2M) for epsilon and velocity models, Heun for velocity models.
 *
 * Both integrate the probability-flow ODE on a grid of steps + 1 points
 * g_0 (pure noise) .. g_N, each with the model's time input, alpha, sigma
 * and lambda = log(alpha / sigma) (log-SNR / 2):
 *   epsilon models: the discrete 1000-step DDPM process made continuous as
 *     DPM-Solver does (NoiseScheduleVP 'discrete'): log alpha is linear
 *     between the integer timesteps; the model sees the (fractional)
 *     timestep tau in [0, 999]; g_0 is tau = 999, g_N is tau = 0
 *     (sigma 0.01: the sample is returned there, as DPM-Solver does).
 *   velocity (rectified flow, x_t = (1 - t) x0 + t noise): alpha = 1 - t,
 *     sigma = t, the model sees t; g_0 is t = 1, g_N is t = 0 (clean).
 * Spacing: UNIFORM is equal steps in tau (epsilon: DPM-Solver's
 * 'time_uniform') or in t (velocity: then dpm++2m's first order is exactly
 * upstream's Euler grid). LOGSNR: epsilon models equal steps in lambda
 * between tau 999 and 0 (DPM-Solver's 'logSNR'); velocity models, whose
 * lambda is infinite at both ends, keep g_0 = 1 and g_N = 0 and space the
 * points between equally in lambda from t = 1 - 1/N to t = 1/N.
 *
 * dpm++2m (Lu et al. 2022, multistep second order, data prediction, the
 * 'dpmsolver' form of LuChengTHU/dpm-solver): each step evaluates the
 * model once at g_i, turns it into x0 (epsilon: (x - sigma eps) / alpha;
 * velocity: x - t v, guided first), and moves to g_{i+1} with
 *   x <- (sigma_t / sigma_s) x - alpha_t expm1(-h) (D0 + D1 / 2),
 *   h = lambda_t - lambda_s, D0 = x0_i, D1 = (x0_i - x0_{i-1}) h / h_prev;
 * first order (D1 = 0, DDIM) on the first step, when h_prev is infinite
 * (the step after rectified flow's t = 1), on the last step of runs under
 * 10 steps (DPM-Solver's lower_order_final) and into sigma 0, where the
 * step is x0 itself. Evaluations: steps.
 * heun (velocity): x_e = x + dt v(x, t_i), x <- x + dt (v(x, t_i) +
 * v(x_e, t_{i+1})) / 2; the last step, into t = 0, is Euler as in Karras
 * et al. (EDM). Evaluations: 2 steps - 1.
 * Coefficients are computed in double and applied in float32, the order
 * tools/ref/samplers_ref.py follows.
 */
#include "samp.h"

#include <math.h>
#include <stdlib.h>

enum { G_TIME, G_ALPHA, G_SIGMA, G_LAMBDA, G_N };
#define G(s, i, f) ((s)->grid[(size_t)(i) * G_N + (f)])

/* ---- grids ------------------------------------------------------------ */

/* log alpha of the discrete process at fractional timestep tau in [0, 999]. */
static double vp_log_alpha(const double *la, double tau)
{
    int k = (int)floor(tau);
    if (k >= SAMP_BASE_STEPS - 1)
        return la[SAMP_BASE_STEPS - 1];
    if (k < 0)
        return la[0];
    return la[k] + (tau - k) * (la[k + 1] - la[k]);
}

static double vp_lambda(double log_alpha)
{
    return log_alpha - 0.5 * log(-expm1(2.0 * log_alpha));
}

/* The timestep whose lambda is lam: la is decreasing in the timestep. */
static double vp_inverse_lambda(const double *la, double lam)
{
    double target = -0.5 * log1p(exp(-2.0 * lam)); /* log alpha */
    int lo = 0, hi = SAMP_BASE_STEPS - 1;
    if (target >= la[0])
        return 0.0;
    if (target <= la[hi])
        return (double)hi;
    while (hi - lo > 1) { /* la[lo] > target >= la[hi] */
        int mid = (lo + hi) / 2;
        if (la[mid] > target)
            lo = mid;
        else
            hi = mid;
    }
    return lo + (la[lo] - target) / (la[lo] - la[hi]);
}

static void grid_vp(dit_sampler *s)
{
    double ac[SAMP_BASE_STEPS], la[SAMP_BASE_STEPS];
    int n = s->steps;
    samp_base_alphas_cumprod(ac);
    for (int k = 0; k < SAMP_BASE_STEPS; k++)
        la[k] = 0.5 * log(ac[k]);
    double lam_hi = vp_lambda(la[SAMP_BASE_STEPS - 1]), lam_lo = vp_lambda(la[0]);
    for (int i = 0; i <= n; i++) {
        double tau = 999.0 * (double)(n - i) / (double)n;
        if (s->spacing == DIT_SPACING_LOGSNR && i > 0 && i < n)
            tau = vp_inverse_lambda(la, lam_hi + (lam_lo - lam_hi) * (double)i / (double)n);
        double l = vp_log_alpha(la, tau);
        G(s, i, G_TIME) = tau;
        G(s, i, G_ALPHA) = exp(l);
        G(s, i, G_SIGMA) = sqrt(-expm1(2.0 * l));
        G(s, i, G_LAMBDA) = vp_lambda(l);
    }
}

static void grid_flow(dit_sampler *s)
{
    int n = s->steps;
    double lam_b = n > 2 ? log((double)(n - 1)) : 0.0, lam_a = -lam_b; /* lambda(1/N), (1 - 1/N) */
    for (int i = 0; i <= n; i++) {
        double t = (double)(n - i) / (double)n;
        if (s->spacing == DIT_SPACING_LOGSNR && n > 2 && i > 0 && i < n)
            t = 1.0 / (1.0 + exp(lam_a + (lam_b - lam_a) * (double)(i - 1) / (double)(n - 2)));
        G(s, i, G_TIME) = t;
        G(s, i, G_ALPHA) = 1.0 - t;
        G(s, i, G_SIGMA) = t;
        G(s, i, G_LAMBDA) = log(1.0 - t) - log(t); /* -inf at t = 1, +inf at 0 */
    }
}

static int grid_init(dit_sampler *s)
{
    s->grid = malloc((size_t)(s->steps + 1) * G_N * sizeof *s->grid);
    if (!s->grid)
        return DIT_E_NOMEM;
    if (s->prediction == DIT_PRED_VELOCITY)
        grid_flow(s);
    else
        grid_vp(s);
    return DIT_OK;
}

/* Grid point of the next evaluation: heun's second one sees g_{i+1}. */
static int grid_at(const dit_sampler *s)
{
    return s->step + s->stage;
}

static double solver_time(const dit_sampler *s)
{
    return G(s, grid_at(s), G_TIME);
}

static double solver_level(const dit_sampler *s)
{
    return G(s, grid_at(s), G_SIGMA);
}

/* ---- dpm++2m ---------------------------------------------------------- */

static int dpm_init(dit_sampler *s, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    s->num_evals = s->steps;
    return grid_init(s);
}

static const float *dpm_input(const dit_sampler *s)
{
    return s->x;
}

/* s->pred (the guided prediction at g_i) into x0, in place. */
static void dpm_x0(dit_sampler *s, int i)
{
    size_t nx = (size_t)s->n * s->chw;
    if (s->prediction == DIT_PRED_VELOCITY) {
        const float t = (float)G(s, i, G_TIME);
        for (size_t k = 0; k < nx; k++)
            s->pred[k] = s->x[k] - t * s->pred[k];
    } else {
        const float k1 = (float)(1.0 / G(s, i, G_ALPHA));
        const float k2 = (float)(G(s, i, G_SIGMA) / G(s, i, G_ALPHA));
        for (size_t k = 0; k < nx; k++)
            s->pred[k] = k1 * s->x[k] - k2 * s->pred[k];
    }
}

/* The step's coefficients: x <- a x + b x0_i + c x0_{i-1}; returns whether
 * the second-order term is used. */
static int dpm_coefs(const dit_sampler *s, int i, double *a, double *b, double *c)
{
    double al_t = G(s, i + 1, G_ALPHA), sg_t = G(s, i + 1, G_SIGMA);
    double h = G(s, i + 1, G_LAMBDA) - G(s, i, G_LAMBDA), phi = expm1(-h);
    int second = i >= 1 && isfinite(G(s, i - 1, G_LAMBDA)) &&
                 !(s->steps < 10 && i == s->steps - 1);
    *c = 0.0;
    if (sg_t == 0.0) { /* into sigma 0: the data prediction itself */
        *a = 0.0;
        *b = al_t;
        return 0;
    }
    *a = sg_t / G(s, i, G_SIGMA);
    *b = -al_t * phi;
    if (second) {
        double r0 = (G(s, i, G_LAMBDA) - G(s, i - 1, G_LAMBDA)) / h;
        *b = -al_t * phi * (1.0 + 0.5 / r0);
        *c = al_t * phi * 0.5 / r0;
    }
    return second;
}

static int dpm_update(dit_sampler *s, const float *out)
{
    size_t nx = (size_t)s->n * s->chw;
    int i = s->step;
    double a, b, c;
    float *t;
    samp_guided(s, out);
    dpm_x0(s, i);
    if (dpm_coefs(s, i, &a, &b, &c)) {
        const float fa = (float)a, fb = (float)b, fc = (float)c;
        for (size_t k = 0; k < nx; k++)
            s->x[k] = fa * s->x[k] + fb * s->pred[k] + fc * s->prev[k];
    } else {
        const float fa = (float)a, fb = (float)b;
        for (size_t k = 0; k < nx; k++)
            s->x[k] = fa * s->x[k] + fb * s->pred[k];
    }
    t = s->prev; /* this x0 is the next step's previous one */
    s->prev = s->pred;
    s->pred = t;
    return 1;
}

/* ---- heun ------------------------------------------------------------- */

static int heun_init(dit_sampler *s, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    s->num_evals = 2 * s->steps - 1;
    return grid_init(s);
}

static const float *heun_input(const dit_sampler *s)
{
    return s->stage ? s->xe : s->x;
}

static int heun_update(dit_sampler *s, const float *out)
{
    size_t nx = (size_t)s->n * s->chw;
    int i = s->step;
    const float dt = (float)(G(s, i + 1, G_TIME) - G(s, i, G_TIME));
    const float half = (float)(0.5 * (G(s, i + 1, G_TIME) - G(s, i, G_TIME)));
    float *t;
    samp_guided(s, out);
    if (s->stage == 1) { /* the slope at the Euler point: average the two */
        for (size_t k = 0; k < nx; k++)
            s->x[k] = s->x[k] + half * (s->prev[k] + s->pred[k]);
        return 1;
    }
    if (i == s->steps - 1) { /* into t = 0: Euler */
        for (size_t k = 0; k < nx; k++)
            s->x[k] = s->x[k] + dt * s->pred[k];
        return 1;
    }
    for (size_t k = 0; k < nx; k++)
        s->xe[k] = s->x[k] + dt * s->pred[k];
    t = s->prev; /* keep the first slope */
    s->prev = s->pred;
    s->pred = t;
    return 0;
}

#define EPS_BIT (1u << DIT_PRED_EPSILON)
#define VEL_BIT (1u << DIT_PRED_VELOCITY)

const samp_ops samp_dpmpp_2m_ops = {
    { "dpm++2m", "dpmpp_2m,dpm++", EPS_BIT | VEL_BIT, 1, 2, 1,
      "DPM-Solver++ multistep, 2nd order, data prediction; good in 10-25 steps" },
    dpm_init, solver_time, solver_level, dpm_input, dpm_update,
};
const samp_ops samp_heun_ops = {
    { "heun", "", VEL_BIT, 2, 2, 1,
      "Heun's 2nd-order method, 2 evaluations a step (the last step 1)" },
    heun_init, solver_time, solver_level, heun_input, heun_update,
};
