/* sampler.h: the diffusion schedules behind dit_sampler (engine-internal).
 *
 * Exposed so that tests can check the schedules against known values
 * without a model. Everything is computed in double, as upstream's numpy
 * code does, and rounded to float per coefficient, as upstream's
 * _extract_into_tensor does before the float32 update arithmetic.
 */
#ifndef DIT_SAMPLER_H
#define DIT_SAMPLER_H

/* The base process: 1000 linear betas 1e-4 .. 0.02 (upstream's "linear"). */
#define SAMP_BASE_STEPS 1000

/* Coefficients of respaced step i (i = 0 is the last one taken). */
typedef struct samp_coef {
    int timestep;         /* original index fed to the model (timestep_map) */
    double noise_level;   /* sqrt(1 - alphas_cumprod[i]) in [0, 1] */
    float recip;          /* sqrt(1 / alphas_cumprod) */
    float recipm1;        /* sqrt(1 / alphas_cumprod - 1) */
    float coef1, coef2;   /* posterior mean: coef1 * x0 + coef2 * x_t */
    float log_min;        /* posterior_log_variance_clipped */
    float log_max;        /* log(beta) */
    float log_fixed;      /* fixed-large: log(posterior_variance[1] or beta) */
    float abar_prev;      /* alphas_cumprod_prev (DDIM) */
} samp_coef;

/* np.linspace(1e-4, 0.02, 1000)'s cumulative product of 1 - beta into
 * ac[0..1000). */
void samp_base_alphas_cumprod(double *ac);

/* Upstream space_timesteps(1000, [n]): writes the kept original timesteps,
 * increasing, to map (room for n) and returns how many there are, or -1
 * when n is outside 1..1000. */
int samp_respace(int n, int *map);

/* The respaced schedule of create_diffusion(str(n)) into out[0..count),
 * where count is samp_respace's result (returned; -1 if n is invalid).
 * With a single step, posterior_variance[1] does not exist (upstream fails
 * there); that step adds no noise, so the variance fields are set to 0. */
int samp_schedule(int n, samp_coef *out);

#endif
