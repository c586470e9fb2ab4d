/* request.c: parsing and checking a generation request body.
 *
 * The body is one JSON object; every field is checked for type and range
 * here, before a job exists, so a bad request costs the server nothing but
 * this parse and the client gets a message naming the field and the range
 * it must lie in. Unknown fields are refused rather than ignored: a typo
 * such as "step" would otherwise silently run with the default.
 */
#include "request.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ditmoe/dit.h>

/* Every field either dialect knows: its JSON name, what it sets, and the
 * dialects (bit 1 << enum srv_dialect) that accept it. */
enum field_id {
    F_CLASS, F_SEED, F_STEPS, F_CFG, F_SAMPLER, F_IMAGES, F_CFG_MODE, F_RNG, F_SIZE, F_FORMAT,
    F_SPACING, F_INTERVAL, F_CACHE, F_IGNORED,
};
#define N_ (1 << SRV_NATIVE)
#define O_ (1 << SRV_OPENAI)
static const struct field {
    const char *name;
    enum field_id id;
    int dialects;
} FIELDS[] = {
    {"class_label", F_CLASS, N_}, {"prompt", F_CLASS, O_},
    {"seed", F_SEED, N_ | O_}, {"steps", F_STEPS, N_ | O_}, {"cfg_scale", F_CFG, N_ | O_},
    {"sampler", F_SAMPLER, N_ | O_},
    {"num_images", F_IMAGES, N_}, {"n", F_IMAGES, O_},
    {"cfg_mode", F_CFG_MODE, N_ | O_}, {"rng", F_RNG, N_ | O_},
    {"spacing", F_SPACING, N_ | O_}, {"cfg_interval", F_INTERVAL, N_ | O_},
    {"cache", F_CACHE, N_ | O_},
    {"size", F_SIZE, O_}, {"response_format", F_FORMAT, O_},
    {"model", F_IGNORED, O_}, {"user", F_IGNORED, O_}, {"quality", F_IGNORED, O_},
    {"style", F_IGNORED, O_},
};
#undef N_
#undef O_
#define NFIELDS (int)(sizeof FIELDS / sizeof FIELDS[0])

/* "a, b, c": the fields the dialect accepts, for messages. */
static void allowed_fields(int dialect, char *buf, size_t len)
{
    buf[0] = 0;
    for (int k = 0; k < NFIELDS; k++)
        if (FIELDS[k].dialects & (1 << dialect)) {
            size_t l = strlen(buf);
            snprintf(buf + l, len - l, "%s%s", l ? ", " : "", FIELDS[k].name);
        }
}

static const char *type_of(const cJSON *v)
{
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    return "an object";
}

/* An integral JSON number in [lo, hi], else a message naming the field. */
static int get_int(const cJSON *v, const char *name, double lo, double hi, double *out,
                   char *err, size_t errlen)
{
    if (!cJSON_IsNumber(v)) {
        snprintf(err, errlen, "%s: must be an integer in [%.0f, %.0f], got %s", name, lo, hi,
                 type_of(v));
        return -1;
    }
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < lo || d > hi) {
        snprintf(err, errlen, "%s: %.17g is out of range: must be an integer in [%.0f, %.0f]",
                 name, d, lo, hi);
        return -1;
    }
    *out = d;
    return 0;
}

static int get_class(const cJSON *v, const char *name, const srv_limits *lim, int *out,
                     char *err, size_t errlen)
{
    double d;
    if (cJSON_IsString(v)) {
        int k = lim->find_class ? lim->find_class(lim->user, v->valuestring) : -1;
        if (k >= 0 && k < lim->num_classes) {
            *out = k;
            return 0;
        }
        char *end;
        long n = strtol(v->valuestring, &end, 10);
        if (v->valuestring[0] && !*end && n >= 0 && n < lim->num_classes) {
            *out = (int)n;
            return 0;
        }
        snprintf(err, errlen, "%s: unknown class '%.64s': must be an integer in [0, %d] "
                 "or a class name (GET /v1/model lists them)", name, v->valuestring,
                 lim->num_classes - 1);
        return -1;
    }
    if (cJSON_IsNumber(v)) {
        if (get_int(v, name, 0, lim->num_classes - 1, &d, err, errlen))
            return -1;
        *out = (int)d;
        return 0;
    }
    snprintf(err, errlen, "%s: must be an integer in [0, %d] or a class name, got %s", name,
             lim->num_classes - 1, type_of(v));
    return -1;
}

/* A string naming one of `names` (NULL-terminated); its index in *out. */
static int get_enum(const cJSON *v, const char *name, const char *const *names, int *out,
                    char *err, size_t errlen)
{
    char allowed[128] = "";
    for (int i = 0; names[i]; i++) {
        if (cJSON_IsString(v) && !strcasecmp(v->valuestring, names[i])) {
            *out = i;
            return 0;
        }
        size_t l = strlen(allowed);
        snprintf(allowed + l, sizeof allowed - l, "%s\"%s\"", i ? ", " : "", names[i]);
    }
    if (cJSON_IsString(v))
        snprintf(err, errlen, "%s: unknown value '%.32s': must be one of %s", name, v->valuestring,
                 allowed);
    else
        snprintf(err, errlen, "%s: must be one of %s, got %s", name, allowed, type_of(v));
    return -1;
}

/* "a", "b", ...: every sampler's name, for messages. */
static void sampler_names(char *buf, size_t len)
{
    buf[0] = 0;
    for (int k = 0; k < dit_sampler_count(); k++) {
        size_t l = strlen(buf);
        snprintf(buf + l, len - l, "%s\"%s\"", k ? ", " : "", dit_sampler_name(k));
    }
}

static int get_sampler(const cJSON *v, int *out, char *err, size_t errlen)
{
    int k = cJSON_IsString(v) ? dit_sampler_parse(v->valuestring) : -1;
    if (k < 0) {
        char names[192];
        sampler_names(names, sizeof names);
        if (cJSON_IsString(v))
            snprintf(err, errlen, "sampler: unknown sampler '%.32s': must be one of %s "
                     "(GET /v1/model lists them)", v->valuestring, names);
        else
            snprintf(err, errlen, "sampler: must be one of %s, got %s", names, type_of(v));
        return -1;
    }
    *out = k;
    return 0;
}

/* "cfg_interval": [lo, hi], noise levels with 0 <= lo <= hi <= 1. */
static int get_interval(const cJSON *v, double *iv, char *err, size_t errlen)
{
    const cJSON *lo = cJSON_GetArrayItem(v, 0), *hi = cJSON_GetArrayItem(v, 1);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 || !cJSON_IsNumber(lo) ||
        !cJSON_IsNumber(hi)) {
        snprintf(err, errlen, "cfg_interval: must be [lo, hi], two numbers (noise levels in "
                 "[0, 1]), got %s", type_of(v));
        return -1;
    }
    if (!(lo->valuedouble >= 0 && lo->valuedouble <= hi->valuedouble && hi->valuedouble <= 1)) {
        snprintf(err, errlen, "cfg_interval: [%.17g, %.17g] is out of range: must satisfy "
                 "0 <= lo <= hi <= 1", lo->valuedouble, hi->valuedouble);
        return -1;
    }
    iv[0] = lo->valuedouble;
    iv[1] = hi->valuedouble;
    return 0;
}

/* The members of a "cache" object: mode (required), interval, threshold. */
static int get_cache_fields(const cJSON *v, dit_cache_params *c, char *err, size_t errlen)
{
    static const char *const MODES[] = {"off", "fixed", "adaptive", NULL};
    const cJSON *it;
    double d;
    cJSON_ArrayForEach(it, v) {
        const char *k = it->string ? it->string : "";
        int rc;
        if (!strcmp(k, "mode"))
            rc = get_enum(it, "cache.mode", MODES, &c->mode, err, errlen);
        else if (!strcmp(k, "interval")) {
            rc = get_int(it, "cache.interval", 2, 100, &d, err, errlen);
            if (!rc)
                c->interval = (int)d;
        }
        else if (!strcmp(k, "threshold")) {
            rc = !cJSON_IsNumber(it) || !(it->valuedouble > 0 && it->valuedouble <= 10);
            if (rc)
                snprintf(err, errlen, "cache.threshold: must be a number in (0, 10]");
            else
                c->threshold = it->valuedouble;
        } else {
            snprintf(err, errlen, "cache: unknown member '%.32s': allowed are mode, interval, "
                     "threshold", k);
            rc = -1;
        }
        if (rc)
            return -1;
    }
    return 0;
}

/* "cache": "off" | "fixed" | "adaptive" (default interval 2, threshold
 * 0.1) or {"mode": ..., "interval": N, "threshold": T}. */
static int get_cache(const cJSON *v, dit_cache_params *c, char *err, size_t errlen)
{
    static const char *const MODES[] = {"off", "fixed", "adaptive", NULL};
    if (cJSON_IsString(v))
        return get_enum(v, "cache", MODES, &c->mode, err, errlen);
    if (!cJSON_IsObject(v) || !cJSON_GetObjectItemCaseSensitive(v, "mode")) {
        snprintf(err, errlen, "cache: must be \"off\", \"fixed\", \"adaptive\" or an object "
                 "with \"mode\" (and \"interval\" 2..100 or \"threshold\" (0, 10]), got %s",
                 type_of(v));
        return -1;
    }
    return get_cache_fields(v, c, err, errlen);
}

/* "size": "WxH", the one size the model makes. */
static int get_size(const cJSON *v, const srv_limits *lim, char *err, size_t errlen)
{
    char want[32];
    snprintf(want, sizeof want, "%dx%d", lim->image_w, lim->image_h);
    if (cJSON_IsString(v) && !strcmp(v->valuestring, want))
        return 0;
    if (cJSON_IsString(v))
        snprintf(err, errlen, "size: '%.32s' is not a size this model makes: must be \"%s\"",
                 v->valuestring, want);
    else
        snprintf(err, errlen, "size: must be the string \"%s\", got %s", want, type_of(v));
    return -1;
}

static int get_cfg(const cJSON *v, const srv_limits *lim, double *out, char *err, size_t errlen)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 1.0 ||
        v->valuedouble > lim->max_cfg) {
        if (cJSON_IsNumber(v))
            snprintf(err, errlen, "cfg_scale: %.17g is out of range: must be a number in "
                     "[1, %g] (1 = no guidance)", v->valuedouble, lim->max_cfg);
        else
            snprintf(err, errlen, "cfg_scale: must be a number in [1, %g], got %s",
                     lim->max_cfg, type_of(v));
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

static int apply_field(const struct field *f, const cJSON *v, const srv_limits *lim,
                       srv_gen_req *r, char *err, size_t errlen)
{
    static const char *const CFG_MODES[] = {"upstream", "all", NULL};
    static const char *const RNGS[] = {"default", "torch", NULL};
    static const char *const FORMATS[] = {"b64_json", NULL}; /* no URLs: nothing is stored */
    static const char *const SPACINGS[] = {"default", "uniform", "logsnr", NULL};
    int ignored;
    double d;
    switch (f->id) {
    case F_CLASS: return get_class(v, f->name, lim, &r->class_label, err, errlen);
    case F_SEED:
        if (get_int(v, "seed", 0, SRV_SEED_MAX, &d, err, errlen)) return -1;
        r->seed = (uint64_t)d;
        r->seed_given = 1;
        return 0;
    case F_STEPS:
        if (get_int(v, "steps", 1, lim->max_steps, &d, err, errlen)) return -1;
        r->steps = (int)d;
        return 0;
    case F_CFG: return get_cfg(v, lim, &r->cfg_scale, err, errlen);
    case F_SAMPLER: return get_sampler(v, &r->sampler, err, errlen);
    case F_IMAGES:
        if (get_int(v, f->name, 1, lim->max_images, &d, err, errlen)) return -1;
        r->num_images = (int)d;
        return 0;
    case F_CFG_MODE: return get_enum(v, "cfg_mode", CFG_MODES, &r->cfg_mode, err, errlen);
    case F_RNG: return get_enum(v, "rng", RNGS, &r->rng, err, errlen);
    case F_SIZE: return get_size(v, lim, err, errlen);
    case F_FORMAT: return get_enum(v, "response_format", FORMATS, &ignored, err, errlen);
    case F_SPACING: return get_enum(v, "spacing", SPACINGS, &r->spacing, err, errlen);
    case F_INTERVAL: return get_interval(v, r->cfg_interval, err, errlen);
    case F_CACHE: return get_cache(v, &r->cache, err, errlen);
    default:
        if (cJSON_IsString(v) || cJSON_IsNull(v))
            return 0;
        snprintf(err, errlen, "%s: must be a string (it has no effect here), got %s", f->name,
                 type_of(v));
        return -1;
    }
}

static int parse_fields(const cJSON *root, const srv_limits *lim, int dialect, srv_gen_req *r,
                        char *err, size_t errlen)
{
    int seen[NFIELDS] = {0}, have_class = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        int k = 0;
        while (k < NFIELDS && (!(FIELDS[k].dialects & (1 << dialect)) ||
                               strcmp(FIELDS[k].name, it->string ? it->string : "")))
            k++;
        if (k == NFIELDS) {
            char allowed[256];
            allowed_fields(dialect, allowed, sizeof allowed);
            snprintf(err, errlen, "unknown field '%.48s': allowed fields are %s",
                     it->string ? it->string : "", allowed);
            return -1;
        }
        if (seen[k]++) {
            snprintf(err, errlen, "%s: given more than once", FIELDS[k].name);
            return -1;
        }
        if (apply_field(&FIELDS[k], it, lim, r, err, errlen))
            return -1;
        have_class |= FIELDS[k].id == F_CLASS;
    }
    if (!have_class) {
        snprintf(err, errlen, "%s: required: an integer in [0, %d] or a class name",
                 dialect == SRV_OPENAI ? "prompt" : "class_label", lim->num_classes - 1);
        return -1;
    }
    int rows = r->num_images * (r->cfg_scale > 1.0 ? 2 : 1);
    if (rows > lim->max_rows) {
        snprintf(err, errlen, "%s: %d images%s need %d rows per step, more than the "
                 "server's %d: must be at most %d", dialect == SRV_OPENAI ? "n" : "num_images",
                 r->num_images,
                 r->cfg_scale > 1.0 ? " with guidance (cfg_scale > 1)" : "", rows, lim->max_rows,
                 r->cfg_scale > 1.0 ? lim->max_rows / 2 : lim->max_rows);
        return -1;
    }
    return 0;
}

int srv_parse_generate(const char *body, size_t len, const srv_limits *lim, int dialect,
                       srv_gen_req *out, char *err, size_t errlen)
{
    srv_gen_req r = {
        .steps = lim->default_steps, .cfg_scale = lim->default_cfg,
        .sampler = lim->default_sampler, .num_images = 1,
        .cfg_interval = {0.0, 1.0}, .cache = {DIT_CACHE_OFF, 2, 0.1},
    };
    if (dialect != SRV_NATIVE && dialect != SRV_OPENAI) {
        snprintf(err, errlen, "srv_parse_generate: unknown dialect %d", dialect);
        return SRV_PARSE_JSON;
    }
    if (!body || len == 0) {
        char allowed[256];
        allowed_fields(dialect, allowed, sizeof allowed);
        snprintf(err, errlen, "empty body: expected a JSON object with fields %s", allowed);
        return SRV_PARSE_JSON;
    }
    /* cJSON's parser writes a process-wide error position: one at a time. */
    static pthread_mutex_t parse_mu = PTHREAD_MUTEX_INITIALIZER;
    const char *end = NULL;
    pthread_mutex_lock(&parse_mu);
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    pthread_mutex_unlock(&parse_mu);
    if (root && end) {
        size_t pos = (size_t)(end - body);
        while (pos < len && strchr(" \t\r\n", body[pos]) && body[pos])
            pos++;
        if (pos < len) {
            cJSON_Delete(root);
            snprintf(err, errlen, "malformed JSON: unexpected data at byte %zu after the object",
                     pos);
            return SRV_PARSE_JSON;
        }
    }
    if (!root) {
        size_t pos = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        snprintf(err, errlen, "malformed JSON near byte %zu", pos);
        return SRV_PARSE_JSON;
    }
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "body must be a JSON object, got %s", type_of(root));
        cJSON_Delete(root);
        return SRV_PARSE_JSON;
    }
    int rc = parse_fields(root, lim, dialect, &r, err, errlen);
    cJSON_Delete(root);
    if (rc)
        return SRV_PARSE_FIELD;
    *out = r;
    return SRV_PARSE_OK;
}

void srv_req_params(const srv_gen_req *r, dit_sample_params *p)
{
    p->class_label = r->class_label;
    p->num_images = r->num_images;
    p->seed = r->seed;
    p->steps = r->steps;
    p->cfg_scale = r->cfg_scale;
    p->sampler = r->sampler;
    p->cfg_mode = r->cfg_mode;
    p->rng = r->rng;
    p->spacing = r->spacing;
    p->cfg_interval[0] = r->cfg_interval[0];
    p->cfg_interval[1] = r->cfg_interval[1];
    p->cache = r->cache;
}
