/* request.h: the body of POST /generate and POST /jobs, parsed and checked.
 *
 * Kept apart from HTTP and from the engine (limits and class names come in
 * through srv_limits) so the libFuzzer target can drive it alone.
 */
#ifndef SRV_REQUEST_H
#define SRV_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include <ditmoe/dit.h>

/* Largest seed accepted: JSON numbers are doubles, exact up to 2^53 - 1. */
#define SRV_SEED_MAX 9007199254740991.0

typedef struct srv_limits {
    int num_classes;
    int max_steps;
    int max_images;
    int max_rows;            /* num_images, doubled with guidance, must fit */
    double max_cfg;
    /* the model's defaults (dit_config's), for the fields a body leaves out */
    int default_steps;
    int default_sampler;     /* enum dit_sampler_kind */
    double default_cfg;
    int default_spacing;     /* enum dit_spacing, default_sampler's: a body that
                              * names another sampler and no spacing gets
                              * DIT_SPACING_DEFAULT (dit_model_default_spacing) */
    double default_cfg_interval[2];
    dit_cache_params default_cache;
    int image_w, image_h;    /* the size an OpenAI-style "size" must name */
    /* class name -> label or -1 (may be NULL: names are refused) */
    int (*find_class)(void *user, const char *name);
    void *user;
} srv_limits;

typedef struct srv_gen_req {
    int class_label;
    uint64_t seed;
    int seed_given;          /* 0: the caller picks one */
    int steps;
    double cfg_scale;
    int sampler;             /* enum dit_sampler_kind */
    int num_images;
    int cfg_mode;            /* enum dit_cfg_mode */
    int rng;                 /* enum dit_rng_kind */
    int spacing;             /* enum dit_spacing (resolved: never "the model's") */
    double cfg_interval[2];  /* noise levels [lo, hi] where guidance runs */
    dit_cache_params cache;
} srv_gen_req;

enum { SRV_PARSE_OK = 0, SRV_PARSE_JSON = -1, SRV_PARSE_FIELD = -2 };

/* The two shapes of a request body:
 *   NATIVE  POST /generate, /jobs: class_label (required), seed, steps,
 *           cfg_scale, sampler, num_images, cfg_mode, rng, spacing,
 *           cfg_interval ([lo, hi]), cache ("off" or {"mode": "fixed",
 *           "interval": N} / {"mode": "adaptive", "threshold": T});
 *   OPENAI  POST /v1/images/generations, OpenAI's image API: prompt (the
 *           class, required), n, size ("WxH", the model's), response_format
 *           ("b64_json"), model, user, quality, style (accepted, no
 *           effect), plus seed, steps, cfg_scale, sampler, cfg_mode, rng,
 *           spacing, cfg_interval, cache (extensions). */
enum srv_dialect { SRV_NATIVE = 0, SRV_OPENAI = 1 };

/* Parses body[0..len) (not necessarily NUL-terminated): one JSON object
 * with the dialect's fields. Unknown and repeated fields are refused.
 * Returns SRV_PARSE_OK and fills *out, or SRV_PARSE_JSON (not a JSON
 * object) / SRV_PARSE_FIELD (a field is wrong) with err naming the field
 * and the allowed values: a message about one field opens with its name
 * and ": " (what OpenAI's error calls "param"). A NUL anywhere (raw, or
 * \u0000 in a name or value) is SRV_PARSE_FIELD. Allocates nothing that
 * outlives the call. */
int srv_parse_generate(const char *body, size_t len, const srv_limits *lim, int dialect,
                       srv_gen_req *out, char *err, size_t errlen);

/* What a body that names only its class gets: the model's defaults from
 * lim (spacing: default_spacing, which goes with default_sampler), one
 * image, cfg_mode upstream, rng default; class 0, no seed. */
void srv_req_defaults(const srv_limits *lim, srv_gen_req *r);

/* The engine's sampling parameters of a parsed request (over the model's
 * defaults, which dit_sample_params_default put in p first). */
void srv_req_params(const srv_gen_req *r, dit_sample_params *p);

#endif
