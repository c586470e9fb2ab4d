/* samp.h: the sampler's state and the sampler table's row (engine-internal).
 *
 * A sampler kind is one row of the table in table.c: its public description
 * (name, aliases, predictions, evaluations per step) and five functions.
 * sampler.c owns everything the kinds share: parameters, noise, guidance
 * and its interval, the step cache and the stepping through evaluations;
 * a row only knows its schedule and its update. Adding a sampler is one
 * row plus its functions (docs/architecture.md).
 */
#ifndef DIT_SAMP_H
#define DIT_SAMP_H

#include <ditmoe/dit.h>
#include "model.h"
#include "rng.h"
#include "sampler.h"

typedef struct samp_ops {
    dit_sampler_desc d;
    /* Builds the schedule (allocating it now) from s->steps and
     * s->spacing and sets s->num_evals. DIT_OK or DIT_E_INVAL/NOMEM with
     * err naming the field. */
    int (*init)(dit_sampler *s, char *err, size_t errlen);
    /* The model's timestep input and the noise level of the next evaluation. */
    double (*time)(const dit_sampler *s);
    double (*level)(const dit_sampler *s);
    /* The sample the next evaluation sees, (n, C, H, W). */
    const float *(*input)(const dit_sampler *s);
    /* Takes one evaluation's output (rows, Cout, H, W); returns 1 when that
     * ended the step, 0 when the step needs another evaluation. */
    int (*update)(dit_sampler *s, const float *out);
} samp_ops;

/* The table row of kind k, or NULL. */
const samp_ops *samp_ops_get(int kind);

struct dit_sampler {
    const dit_model *m;
    const samp_ops *ops;
    int n;              /* images */
    int rows;           /* rows of the next evaluation: n, or 2n when guided then */
    int max_rows;       /* n, or 2n with guidance */
    int guided;         /* cfg_scale != 1: null rows exist at all */
    int g_now;          /* the next evaluation runs the null rows */
    double cfg_lo, cfg_hi; /* guidance interval in noise level */
    float g;            /* cfg_scale */
    int gch;            /* output channels guidance applies to */
    int c, cout, hw;    /* C, Cout, H*W */
    size_t chw;         /* C*H*W */
    int kind, rng_kind, learn_sigma, prediction, spacing;
    int label, null_label;
    int steps, step;    /* steps in all, taken */
    int num_evals, evals, stage; /* evaluations in all, taken; evaluation within the step */
    samp_coef *sched;   /* (steps) ddpm/ddim, index = respaced step i */
    double *grid;       /* (steps + 1, 4) dpm++2m/heun: model time, alpha, sigma, lambda */
    float *x;           /* (n, C, H, W) the current sample */
    float *noise;       /* (max_rows, C, H, W) one step's noise */
    float *pred;        /* (n, C, H, W) solvers: this evaluation's guided prediction */
    float *prev;        /* (n, C, H, W) dpm++2m: the previous x0; heun: the first slope */
    float *xe;          /* (n, C, H, W) heun: the Euler point the second evaluation sees */
    rng_default *rd;    /* (n) DEFAULT: stream i for image i */
    rng_torch rt;       /* TORCH */
    dit_cache_params cache_p;
    dit_cache *cache;   /* (max_rows) row caches: conditional rows, then null rows */
    float *cache_mem;   /* their buffers */
    uint64_t blk_run, blk_reused;
};

/* Channel ch at pixel p of image i of this evaluation's output, guided
 * when the evaluation is. */
static inline float samp_pred(const dit_sampler *s, const float *out, int i, int ch, int p)
{
    float c = out[((size_t)i * s->cout + ch) * s->hw + p];
    float u;
    if (!s->g_now || ch >= s->gch)
        return c;
    u = out[((size_t)(i + s->n) * s->cout + ch) * s->hw + p];
    return u + s->g * (c - u);
}

/* The guided prediction channels 0..C-1 of every image into s->pred. */
void samp_guided(dit_sampler *s, const float *out);

/* The rows shared by every kind (sampler.c). */
extern const samp_ops samp_euler_ops, samp_ddpm_ops, samp_ddim_ops;
/* The solvers (solvers.c). */
extern const samp_ops samp_dpmpp_2m_ops, samp_heun_ops;

#endif
