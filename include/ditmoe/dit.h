/* dit.h: the public API of the ditmoe engine.
 *
 * The engine runs DiT-MoE (a Diffusion Transformer whose every block has a
 * sparse Mixture-of-Experts layer instead of its MLP) on the CPU, computing
 * what upstream PyTorch (feizc/DiT-MoE models.py) computes.
 *
 * Handles, all opaque:
 *   dit_model    config + weights. Read-only once loaded: any number of
 *                threads and contexts may share one model.
 *   dit_ctx      scratch arenas for forward passes of up to max_rows rows and
 *                the routing counts of the last forward. One per worker; a
 *                ctx is never used by two threads at once.
 *   dit_sampler  the denoising state of one request (n images, their RNG).
 *                It is advanced one step at a time so a scheduler can put the
 *                rows of many samplers into one dit_forward.
 *
 * Conventions: functions return DIT_OK (0) or a negative dit_status, named by
 * dit_strerror(). Functions that read user input (files, parameters) also
 * write a message naming the file, field or value and what is wrong into the
 * caller's err buffer (may be NULL). Every _new/_load has a _free, and
 * _free(NULL) is a no-op. No function here calls exit() or prints.
 *
 * Shapes use these letters: N rows (samples in a batch), C channels,
 * H = W = input_size, T tokens (grid^2), D hidden size, L depth, E experts.
 */
#ifndef DIT_H
#define DIT_H

#include <stddef.h>
#include <stdint.h>

#include "dit_export.h"
#include "dit_status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum dit_prediction { DIT_PRED_EPSILON = 0, DIT_PRED_VELOCITY = 1 };
/* A sampler is its row in the sampler table (engine/sampling/table.c); the
 * kind is the row's index. These names are the rows there today; any kind
 * 0 .. dit_sampler_count() - 1 is valid. */
enum dit_sampler_kind {
    DIT_SAMPLER_EULER = 0, DIT_SAMPLER_DDPM = 1, DIT_SAMPLER_DDIM = 2,
    DIT_SAMPLER_DPMPP_2M = 3, DIT_SAMPLER_HEUN = 4,
};
/* UPSTREAM: guidance on the first 3 output channels, as upstream
 * forward_with_cfg does for DDPM/DDIM. ALL: on every predicted channel.
 * Rectified flow (euler) always guides every velocity channel, as upstream. */
enum dit_cfg_mode { DIT_CFG_UPSTREAM = 0, DIT_CFG_ALL = 1 };

/* One row of the sampler table, for listing samplers (CLI help, the
 * server's /v1/model, the demo page). */
typedef struct dit_sampler_desc {
    const char *name;        /* "dpm++2m" */
    const char *aliases;     /* other accepted names, comma-separated ("" if none) */
    unsigned predictions;    /* bit (1u << enum dit_prediction) per supported model type */
    int evals_per_step;      /* model evaluations per step (heun: 2) */
    int order;               /* the solver's order of accuracy */
    int spacing;             /* 1: takes a timestep spacing (enum dit_spacing) */
    const char *summary;     /* one line for help texts */
} dit_sampler_desc;

/* Rows in the sampler table. */
DIT_API int dit_sampler_count(void);
/* Row `kind` (0 .. count-1), or NULL. Valid for the life of the program. */
DIT_API const dit_sampler_desc *dit_sampler_info(int kind);
/* A name or alias (ASCII case-insensitive) -> its kind, or -1. */
DIT_API int dit_sampler_parse(const char *name);
/* kind -> its name ("?" otherwise). */
DIT_API const char *dit_sampler_name(int kind);
/* 1 when sampler `kind` can sample a model of `prediction`. */
DIT_API int dit_sampler_supports(int kind, int prediction);

/* Where the steps of a solver that takes a spacing (dpm++2m, heun) lie.
 * UNIFORM: equal steps in time (t for rectified flow, the DDPM timestep
 * for epsilon models); LOGSNR: equal steps in log(alpha / sigma). DEFAULT
 * is the solver's own choice (uniform). Samplers with a fixed upstream
 * schedule (euler, ddpm, ddim) take DEFAULT only. */
enum dit_spacing { DIT_SPACING_DEFAULT = 0, DIT_SPACING_UNIFORM = 1, DIT_SPACING_LOGSNR = 2 };
/* "default", "uniform", "logsnr" -> enum dit_spacing, or -1; and back. */
DIT_API int dit_spacing_parse(const char *name);
DIT_API const char *dit_spacing_name(int spacing);

/* Step caching (dit_sample_params.cache). Every row keeps the sum of the
 * transformer blocks' residual contributions from the last evaluation that
 * ran them; a reusing evaluation adds that sum instead of running the
 * blocks. FIXED runs the blocks on every `interval`-th evaluation of the
 * sampler; ADAPTIVE (TeaCache-like) runs them when the relative L1 change
 * of block 0's modulated input, summed over the evaluations since they last
 * ran, reaches `threshold`. The first evaluation always runs them. */
enum dit_cache_mode { DIT_CACHE_OFF = 0, DIT_CACHE_FIXED = 1, DIT_CACHE_ADAPTIVE = 2 };
typedef struct dit_cache_params {
    int mode;            /* enum dit_cache_mode */
    int interval;        /* FIXED: 2..100 */
    double threshold;    /* ADAPTIVE: (0, 10] */
} dit_cache_params;
/* "off", "fixed", "adaptive" -> enum dit_cache_mode, or -1. */
DIT_API int dit_cache_mode_parse(const char *name);

/* The JSON spellings of the sampling options a model's config.json
 * "sampling" and the server's request bodies share (one reader, so both
 * accept the same values). Each reads value v (a dit_json, dit_json.h),
 * writes what it says and returns DIT_OK, or returns DIT_E_INVAL and
 * leaves the output alone, with err opening with the field's name
 * ("cache.interval: ...") and saying what is allowed.
 *   spacing       "default", "uniform", "logsnr" (case-insensitive)
 *   cfg_interval  [lo, hi], two numbers with 0 <= lo <= hi <= 1
 *   cache         "off", "fixed", "adaptive" (interval 2, threshold 0.1),
 *                 or {"mode": ..., "interval": 2..100, "threshold": (0, 10]}
 *                 ("mode" required); fills every member of *c. */
struct dit_json;
DIT_API int dit_spacing_from_json(const struct dit_json *v, int *spacing, char *err,
                                  size_t errlen);
DIT_API int dit_cfg_interval_from_json(const struct dit_json *v, double iv[2], char *err,
                                       size_t errlen);
DIT_API int dit_cache_from_json(const struct dit_json *v, dit_cache_params *c, char *err,
                                size_t errlen);

/* DEFAULT: a fast counter-based generator, one stream per image, so an
 * image does not depend on what it was batched with. TORCH: draws exactly
 * what torch.manual_seed(seed); torch.randn(...) draws on the CPU, in the
 * order upstream sample.py draws. */
enum dit_rng_kind { DIT_RNG_DEFAULT = 0, DIT_RNG_TORCH = 1 };

/* Model hyper-parameters, named like the upstream DiT constructor. Filled by
 * dit_model_load from config.json (or a preset); read-only for callers. */
typedef struct dit_config {
    int input_size;          /* H = W of the model's input (pixels or latents) */
    int patch_size;          /* P */
    int in_channels;         /* C */
    int hidden_size;         /* D */
    int depth;               /* L */
    int num_heads;
    double mlp_ratio;        /* routed expert width = mlp_ratio * D */
    int num_classes;         /* the null class (for guidance) is num_classes */
    int num_experts;         /* E */
    int num_experts_per_tok; /* top-k */
    int n_shared_experts;    /* shared expert width = n_shared_experts * D */
    int learn_sigma;         /* output has 2C channels: prediction, variance */
    double class_dropout_prob;
    int prediction;          /* enum dit_prediction */
    /* derived */
    int out_channels;        /* C * (learn_sigma ? 2 : 1) */
    int grid;                /* input_size / patch_size */
    int num_tokens;          /* T = grid * grid */
    int expert_hidden;       /* mlp_ratio * D */
    int shared_hidden;       /* n_shared_experts * D */
    /* sampling defaults: config.json "sampling" or the preset's upstream
     * ones; dit_sample_params_default hands them out */
    int default_sampler;     /* enum dit_sampler_kind */
    int default_steps;
    double default_cfg_scale;
    int default_spacing;     /* enum dit_spacing, of default_sampler only: a run
                              * of another sampler takes DEFAULT (see
                              * dit_model_default_spacing); DEFAULT unless the
                              * sampler takes a spacing */
    double default_cfg_interval[2]; /* noise levels [lo, hi] where guidance runs;
                              * {0, 1} when config.json says none */
    dit_cache_params default_cache; /* mode OFF when config.json says none */
    /* latent models: the VAE that decodes them (NULL for pixel models) */
    const char *vae_dir;
    double latent_scale;     /* latents are divided by this before decoding */
    const char *preset;      /* preset name when chosen from shapes, else NULL */
} dit_config;

typedef struct dit_model dit_model;
typedef struct dit_ctx dit_ctx;
typedef struct dit_sampler dit_sampler;
/* One row's step-cache state, owned by its sampler (see dit_sample_params). */
typedef struct dit_cache dit_cache;

/* ---- model ------------------------------------------------------------- */

/* F32: every product in F32 (8-bit weights widened in registers). INT8:
 * products with 8-bit (Q8) weights on integers, activations quantised per
 * token (needs AVX-512 VNNI or AVX-VNNI; see docs/quantization.md). */
enum dit_compute { DIT_COMPUTE_F32 = 0, DIT_COMPUTE_INT8 = 1 };
/* "f32", "int8" -> enum dit_compute, or -1. */
DIT_API int dit_compute_parse(const char *name);

typedef struct dit_model_settings {
    /* 1 (default): at load, copy every weight matrix, in its stored
     * precision, into the layout of the engine's own GEMM kernel (the
     * entry for this CPU: AVX-512, AVX2, NEON or plain C; the environment
     * variable DITMOE_ISA=auto|avx512|avx2|neon|c picks another) and give
     * the mapped file pages back, so the weights stay resident once.
     * 0: keep matrices as stored in the mapping and run them through BLAS
     * (F16/BF16 widened per use), the slower path, kept for comparison. */
    int pack_weights;
    /* enum dit_compute; default F32. INT8 is refused at load with
     * DIT_E_UNSUPPORTED and a message saying why: on CPUs without VNNI,
     * and (no int8 kernel yet) everywhere; never a silent F32 fallback. */
    int compute;
} dit_model_settings;

/* Fills s with the documented defaults. */
DIT_API void dit_model_settings_default(dit_model_settings *s);

/* Loads a model from `path`: a directory holding config.json and
 * model.safetensors (or a .pt checkpoint), or a .pt/.safetensors file.
 * Weights are mapped, validated against the config and kept resident.
 * s may be NULL for the defaults. On success *out owns the model; free it
 * with dit_model_free. On failure *out is NULL and err says which file,
 * tensor or field is wrong. */
DIT_API int dit_model_load(dit_model **out, const char *path, const dit_model_settings *s,
                   char *err, size_t errlen);

/* Builds a model with random weights in memory from a preset name (see
 * dit_preset_names) or the path of a config.json (or of a directory
 * holding one), for benchmarks and tests. dtype (NULL: "f32"): the
 * weight matrices' dtype, "f32", "f16", "bf16", or "q8" (the expert
 * matrices 8-bit, the other matrices F16: what `ditmoe convert --dtype q8`
 * makes of a half-precision checkpoint), drawn one matrix at a time, so
 * a model too large in F32 can be built in 8 bits. Same ownership and
 * settings as load. */
DIT_API int dit_model_synthetic(dit_model **out, const char *preset, const char *dtype,
                                uint64_t seed, const dit_model_settings *s, char *err,
                                size_t errlen);

/* Writes m as a model directory dir (created if missing): config.json and
 * model.safetensors with the weights as the model holds them. With
 * dit_model_synthetic this makes test models without PyTorch. */
DIT_API int dit_model_save(const dit_model *m, const char *dir, char *err, size_t errlen);

/* Frees a model. The caller must have freed every ctx and sampler made
 * from it. NULL is a no-op. */
DIT_API void dit_model_free(dit_model *m);

/* The model's config; valid as long as the model. */
DIT_API const dit_config *dit_model_config(const dit_model *m);

/* Weights held in one dtype: "F32", "F16", "BF16" or "Q8" (8-bit values
 * with an F16 scale per 32: 34 bytes per 32 weights). */
typedef struct dit_info_dtype {
    const char *dtype;
    uint64_t params;
    uint64_t bytes;
} dit_info_dtype;

#define DIT_INFO_DTYPES 8

typedef struct dit_model_info {
    uint64_t params_total;   /* every weight */
    uint64_t params_active;  /* weights one token touches (top-k experts) */
    uint64_t weight_bytes;   /* resident weight memory: the sum of held[] */
    const char *weight_dtype;/* the weight matrices' dtype as stored, "F32",
                              * "F16", "BF16", "Q8", or "mixed" */
    int packed;              /* matrices run on the packed kernel */
    /* weight memory by the dtype it is held in (packs, or matrices as
     * stored; biases, embeddings and pos_embed are held as F32) */
    dit_info_dtype held[DIT_INFO_DTYPES];
    int n_dtypes;            /* rows of held[] in use */
    /* expected resident set of the loaded model: weight_bytes plus the VAE
     * decoder's weights; each context adds dit_ctx_bytes */
    uint64_t resident_bytes;
    const char *kernel;      /* the GEMM kernel entry chosen at load: "avx512",
                              * "avx2", "neon" or "c" (DITMOE_ISA overrides) */
} dit_model_info;
DIT_API void dit_model_get_info(const dit_model *m, dit_model_info *info);

/* The name of class `label`, or NULL when the model has no class names or
 * the label is out of range. Valid as long as the model. */
DIT_API const char *dit_model_class_name(const dit_model *m, int label);

/* The label whose name equals `name` (ASCII case-insensitive, also matching
 * any comma-separated alias), or -1. */
DIT_API int dit_model_find_class(const dit_model *m, const char *name);

/* Output image size: width, height and channels (1 or 3) of a decoded
 * image. Pixel models: input_size and in_channels; latent models: the VAE's. */
DIT_API void dit_model_image_size(const dit_model *m, int *w, int *h, int *channels);

/* NULL-terminated list of preset names, e.g. "s2" ... */
DIT_API const char *const *dit_preset_names(void);

/* ---- context ----------------------------------------------------------- */

typedef struct dit_ctx_settings {
    int max_rows;   /* most rows (images + their CFG rows) per forward; default 16 */
    int n_threads;  /* engine worker threads (experts, heads); default 1 */
    int max_decode; /* most images per dit_decode; default max_rows */
} dit_ctx_settings;

/* Fills s with the documented defaults. */
DIT_API void dit_ctx_settings_default(dit_ctx_settings *s);

/* Makes a context for model m, allocating every arena once. m must outlive
 * the ctx. s may be NULL for the defaults. */
DIT_API int dit_ctx_new(dit_ctx **out, const dit_model *m, const dit_ctx_settings *s);
DIT_API void dit_ctx_free(dit_ctx *c);

/* Bytes of scratch memory the context holds. */
DIT_API size_t dit_ctx_bytes(const dit_ctx *c);

/* One forward pass over n rows (1 <= n <= max_rows):
 *   x   (N, C, H, W)     noisy input
 *   t   (N)              timestep: DDPM index (0..999) or flow time in [0,1]
 *   y   (N)              class label, num_classes for the null class
 *   out (N, Cout, H, W)  model output
 * The MoE layers gather the tokens of all rows routed to each expert into
 * one GEMM. Allocates nothing. */
DIT_API int dit_forward(dit_ctx *c, int n, const float *x, const float *t,
                const int32_t *y, float *out);

/* dit_forward with per-row step caches (cache[i] for row i, NULL: no
 * cache; cache itself may be NULL). A row whose cache says so skips every
 * transformer block and adds the blocks' residual contribution stored at
 * its last computed evaluation; the others run the blocks (storing their
 * contribution when they have a cache). Rows of one call may be in any mix
 * of states. Reused rows route no tokens (their routing counts are 0). */
DIT_API int dit_forward_cached(dit_ctx *c, int n, const float *x, const float *t,
                               const int32_t *y, dit_cache *const *cache, float *out);

/* Routing counts of the last forward: (N, L, E) tokens of row n that layer
 * l sent to expert e. Valid until the next forward on c. */
DIT_API const uint32_t *dit_ctx_routing(const dit_ctx *c);

/* Decodes n final samples (N, C, H, W) into 8-bit pixels (N, h, w, ch), ch
 * interleaved, as dit_model_image_size says. Pixel models map [-1, 1] to
 * 0..255; latent models run the VAE decoder. n <= max_decode. */
DIT_API int dit_decode(dit_ctx *c, int n, const float *x, uint8_t *pixels);

/* Maps n images (N, C, H*W) of floats in [-1, 1] to 8-bit (N, H*W, C) as
 * upstream's save_image(normalize=True, value_range=(-1, 1)) does:
 * clamp((x + 1) / 2, 0, 1) * 255 + 0.5, truncated. */
DIT_API void dit_to_pixels(const float *x, int n, int channels, size_t hw, uint8_t *pixels);

/* ---- sampling ---------------------------------------------------------- */

typedef struct dit_sample_params {
    int class_label;    /* 0..num_classes-1, or num_classes for unconditional */
    int num_images;     /* images sharing the label; default 1 */
    uint64_t seed;      /* fully determines the noise */
    int steps;          /* default: the model's default_steps */
    double cfg_scale;   /* 1 = no guidance (no uncond rows); default: model's */
    int sampler;        /* enum dit_sampler_kind; default: model's */
    int cfg_mode;       /* enum dit_cfg_mode; default UPSTREAM */
    int rng;            /* enum dit_rng_kind; default DEFAULT */
    const float *noise; /* optional initial noise (num_images, C, H, W), copied */
    int spacing;        /* enum dit_spacing; default: the model's (DEFAULT, the
                         * solver's own, unless config.json says one) */
    /* Guidance runs only on evaluations whose noise level (as
     * dit_sampler_noise_level reports it: t for rectified flow,
     * sqrt(1 - alpha_bar) for epsilon models) lies in [lo, hi]; outside, the
     * null-class rows are not run at all and the conditional prediction is
     * used as is. Default: the model's ({0, 1}, every evaluation, unless
     * config.json says otherwise). */
    double cfg_interval[2];
    dit_cache_params cache; /* default: the model's (off unless config.json
                             * says otherwise) */
} dit_sample_params;

/* Fills p with the model's defaults (class 0, one image, seed 0; sampler,
 * steps, cfg_scale, spacing, cfg_interval and cache from its dit_config). */
DIT_API void dit_sample_params_default(const dit_model *m, dit_sample_params *p);

/* The spacing a run of `sampler` on m takes when its caller names none:
 * the model's default_spacing when sampler is its default_sampler, else
 * DIT_SPACING_DEFAULT (the solver's own). A spacing is chosen for one
 * solver (and euler, ddpm, ddim take none), so a caller that changes the
 * sampler in dit_sample_params_default's p sets p.spacing from this. The
 * guidance interval and the cache mean the same for every sampler, so
 * they stay the model's. */
DIT_API int dit_model_default_spacing(const dit_model *m, int sampler);

/* Checks p against the model and makes a sampler: allocates all its state
 * now, nothing later. On error err names the field and the allowed range. */
DIT_API int dit_sampler_new(dit_sampler **out, const dit_model *m,
                    const dit_sample_params *p, char *err, size_t errlen);
DIT_API void dit_sampler_free(dit_sampler *s);

/* Rows this sampler puts in its next forward: num_images, doubled when
 * guidance runs on that evaluation (see cfg_interval); 0 once done. */
DIT_API int dit_sampler_rows(const dit_sampler *s);
/* The most rows any of its forwards has: what a batch must reserve. */
DIT_API int dit_sampler_max_rows(const dit_sampler *s);
DIT_API int dit_sampler_num_images(const dit_sampler *s);
/* Steps taken so far and in all; done when they are equal. */
DIT_API int dit_sampler_step(const dit_sampler *s);
DIT_API int dit_sampler_num_steps(const dit_sampler *s);
/* Model evaluations (forwards) taken so far and in all: a step of a
 * second-order single-step solver (heun) takes two. */
DIT_API int dit_sampler_evals(const dit_sampler *s);
DIT_API int dit_sampler_num_evals(const dit_sampler *s);
DIT_API int dit_sampler_done(const dit_sampler *s);
/* Noise level of the next evaluation in [0, 1] (1 = pure noise): t for
 * rectified flow, sqrt(1 - alpha_bar) for epsilon models. */
DIT_API double dit_sampler_noise_level(const dit_sampler *s);
/* Block computations (rows x depth) run and reused from the step cache so
 * far; either pointer may be NULL. */
DIT_API void dit_sampler_cache_stats(const dit_sampler *s, uint64_t *computed,
                                     uint64_t *reused);

/* Writes the next evaluation's model inputs for its rows: x (rows, C, H,
 * W), t (rows), y (rows). Must not be called once done. */
DIT_API void dit_sampler_inputs(const dit_sampler *s, float *x, float *t, int32_t *y);

/* Writes the cache of each of the next evaluation's rows to cache[0..rows),
 * NULL for rows without one (caching off). Pass them to dit_forward_cached
 * in the same order as the inputs. */
DIT_API void dit_sampler_caches(dit_sampler *s, dit_cache **cache);

/* Takes the model output for its rows (rows, Cout, H, W) of one
 * evaluation, advancing the step when it was the step's last evaluation
 * (drawing this step's noise, if the sampler needs any). */
DIT_API void dit_sampler_update(dit_sampler *s, const float *out);

/* The current sample (num_images, C, H, W): the final one once done. */
DIT_API const float *dit_sampler_result(const dit_sampler *s);

/* Called after every step of dit_generate; a non-zero return cancels. */
typedef int (*dit_progress_fn)(void *user, int step, int num_steps);

/* Runs samplers s[0..n) to completion on c, one forward per evaluation
 * holding the rows of every unfinished sampler (their max_rows must fit the
 * ctx's max_rows). progress counts forwards. Returns DIT_E_CANCELLED if
 * progress asked to stop. */
DIT_API int dit_generate(dit_ctx *c, dit_sampler **s, int n, dit_progress_fn progress,
                 void *user);

/* ---- conversion -------------------------------------------------------- */

/* Called with each note (an assumption made, a file found); may be NULL. */
typedef void (*dit_note_fn)(void *user, const char *note);

typedef struct dit_convert_params {
    const char *in;            /* torch.save checkpoint (.pt) or .safetensors */
    const char *out;           /* directory for config.json + model.safetensors
                                * (may exist, but not those files) */
    int num_heads;             /* 0: the preset's or the input directory's */
    int top_k;                 /* 0: likewise, else 2 */
    int prediction;            /* enum dit_prediction; -1: likewise, else epsilon */
    double class_dropout_prob; /* < 0: likewise, else 0.1 */
    const char *class_names;   /* file of one name per line, or NULL */
    const char *vae;           /* VAE directory written as config "vae", or NULL */
    const char *dtype;         /* "f32", "f16", "bf16"; "q8": the experts'
                                * matrices 8-bit, the rest as stored; NULL:
                                * as stored */
} dit_convert_params;

typedef struct dit_convert_result {
    int tensors;               /* tensors written */
    int num_classes;
    int named;                 /* class names were embedded */
    const char *preset;        /* the preset the shapes match, or NULL */
} dit_convert_result;

/* Fills p with the defaults (everything from the checkpoint and presets). */
DIT_API void dit_convert_params_default(dit_convert_params *p);

/* Checks what can be checked without reading the checkpoint (paths given,
 * dtype name, prediction, dropout range); dit_convert does this first. */
DIT_API int dit_convert_check(const dit_convert_params *p, char *err, size_t errlen);

/* Converts a checkpoint into a model directory, verifies what it wrote by
 * reading it back and loading it, and removes it on failure. res may be
 * NULL. err names the file, tensor or parameter that is wrong. */
DIT_API int dit_convert(const dit_convert_params *p, dit_note_fn note, void *user,
                        dit_convert_result *res, char *err, size_t errlen);

/* ---- VAE decoder ------------------------------------------------------- */

/* An SD-VAE decoder on its own (the one a latent model loads), for
 * decoding latents saved earlier. */
typedef struct dit_vae dit_vae;

/* Loads the decoder from a diffusers VAE directory (config.json and
 * diffusion_pytorch_model.safetensors); n_threads workers decode. */
DIT_API int dit_vae_load(dit_vae **out, const char *dir, int n_threads, char *err,
                         size_t errlen);
DIT_API void dit_vae_free(dit_vae *v);

/* Latent channels in, image channels out, pixels per latent along a side. */
DIT_API void dit_vae_shape(const dit_vae *v, int *latent_channels, int *out_channels,
                           int *upscale);

/* Decodes n latents z (N, latent_channels, h, w), already divided by the
 * model's latent scale, into rgb (N, out_channels, h * upscale,
 * w * upscale) in about [-1, 1]. Allocates its workspace per call; err
 * says why when the latents are too large or memory runs out. */
DIT_API int dit_vae_decode(dit_vae *v, int n, int h, int w, const float *z, float *rgb,
                           char *err, size_t errlen);

/* Floating-point operations of decoding one h x w latent. */
DIT_API double dit_vae_flops(const dit_vae *v, int h, int w);

/* Sets the BLAS library's thread count (process-wide: call once at start).
 * The engine's own pool owns the cores: BLAS, where it is still called
 * (--no-pack), should run 1 thread inside it. */
DIT_API void dit_set_blas_threads(int n);

/* ---- CPU --------------------------------------------------------------- */

/* The GEMM kernel entries this CPU runs, best first, the plain C one last
 * ("avx512", "avx2", "neon", "c"): up to max names into names (may be
 * NULL); returns how many there are. A model uses the first unless the
 * environment variable DITMOE_ISA names another. */
DIT_API int dit_kernels_available(const char **names, int max);

/* The FP32 FMA peak in GFLOP/s of kernel entry `name` on `threads` threads
 * (1..256): a register-only loop of independent FMAs in that entry's
 * vectors, run on every thread at once (about 0.2 s of CPU each), each
 * timed on its thread's CPU clock (so load from other processes does not
 * lower it), summed. 0 for an entry this CPU lacks. */
DIT_API double dit_kernel_peak_gflops(const char *name, int threads);

/* When OpenBLAS does not recognise this CPU (a generic core such as
 * Prescott on a CPU with AVX2 or AVX-512), writes a warning naming the
 * OPENBLAS_CORETYPE fix into buf and returns buf; else NULL. */
DIT_API const char *dit_blas_warning(char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
