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

#include "dit.h"

static const char *const FIELDS[] = {
    "class_label", "seed", "steps", "cfg_scale", "sampler", "num_images", "cfg_mode", "rng",
};
#define NFIELDS (int)(sizeof FIELDS / sizeof FIELDS[0])
#define ALLOWED "class_label, seed, steps, cfg_scale, sampler, num_images, cfg_mode, rng"

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

static int get_class(const cJSON *v, const srv_limits *lim, int *out, char *err, size_t errlen)
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
        snprintf(err, errlen, "class_label: unknown class '%.64s': must be an integer in [0, %d] "
                 "or a class name (GET /v1/model lists them)", v->valuestring, lim->num_classes - 1);
        return -1;
    }
    if (cJSON_IsNumber(v)) {
        if (get_int(v, "class_label", 0, lim->num_classes - 1, &d, err, errlen))
            return -1;
        *out = (int)d;
        return 0;
    }
    snprintf(err, errlen, "class_label: must be an integer in [0, %d] or a class name, got %s",
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

static int get_sampler(const cJSON *v, int *out, char *err, size_t errlen)
{
    int k = cJSON_IsString(v) ? dit_sampler_parse(v->valuestring) : -1;
    if (k < 0) {
        if (cJSON_IsString(v))
            snprintf(err, errlen, "sampler: unknown sampler '%.32s': must be \"euler\", \"ddpm\" "
                     "or \"ddim\"", v->valuestring);
        else
            snprintf(err, errlen, "sampler: must be \"euler\", \"ddpm\" or \"ddim\", got %s",
                     type_of(v));
        return -1;
    }
    *out = k;
    return 0;
}

static int apply_field(int k, const cJSON *v, const srv_limits *lim, srv_gen_req *r, char *err,
                       size_t errlen)
{
    static const char *const CFG_MODES[] = {"upstream", "all", NULL};
    static const char *const RNGS[] = {"default", "torch", NULL};
    double d;
    switch (k) {
    case 0: return get_class(v, lim, &r->class_label, err, errlen);
    case 1:
        if (get_int(v, "seed", 0, SRV_SEED_MAX, &d, err, errlen)) return -1;
        r->seed = (uint64_t)d;
        r->seed_given = 1;
        return 0;
    case 2:
        if (get_int(v, "steps", 1, lim->max_steps, &d, err, errlen)) return -1;
        r->steps = (int)d;
        return 0;
    case 3:
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
        r->cfg_scale = v->valuedouble;
        return 0;
    case 4: return get_sampler(v, &r->sampler, err, errlen);
    case 5:
        if (get_int(v, "num_images", 1, lim->max_images, &d, err, errlen)) return -1;
        r->num_images = (int)d;
        return 0;
    case 6: return get_enum(v, "cfg_mode", CFG_MODES, &r->cfg_mode, err, errlen);
    default: return get_enum(v, "rng", RNGS, &r->rng, err, errlen);
    }
}

static int parse_fields(const cJSON *root, const srv_limits *lim, srv_gen_req *r, char *err,
                        size_t errlen)
{
    int seen[NFIELDS] = {0};
    const cJSON *it;
    cJSON_ArrayForEach(it, root) {
        int k = 0;
        while (k < NFIELDS && strcmp(FIELDS[k], it->string ? it->string : ""))
            k++;
        if (k == NFIELDS) {
            snprintf(err, errlen, "unknown field '%.48s': allowed fields are " ALLOWED,
                     it->string ? it->string : "");
            return -1;
        }
        if (seen[k]++) {
            snprintf(err, errlen, "%s: given more than once", FIELDS[k]);
            return -1;
        }
        if (apply_field(k, it, lim, r, err, errlen))
            return -1;
    }
    if (!seen[0]) {
        snprintf(err, errlen, "class_label: required: an integer in [0, %d] or a class name",
                 lim->num_classes - 1);
        return -1;
    }
    int rows = r->num_images * (r->cfg_scale > 1.0 ? 2 : 1);
    if (rows > lim->max_rows) {
        snprintf(err, errlen, "num_images: %d images%s need %d rows per step, more than the "
                 "server's %d: must be at most %d", r->num_images,
                 r->cfg_scale > 1.0 ? " with guidance (cfg_scale > 1)" : "", rows, lim->max_rows,
                 r->cfg_scale > 1.0 ? lim->max_rows / 2 : lim->max_rows);
        return -1;
    }
    return 0;
}

int srv_parse_generate(const char *body, size_t len, const srv_limits *lim, srv_gen_req *out,
                       char *err, size_t errlen)
{
    srv_gen_req r = {
        .steps = lim->default_steps, .cfg_scale = lim->default_cfg,
        .sampler = lim->default_sampler, .num_images = 1,
    };
    if (!body || len == 0) {
        snprintf(err, errlen, "empty body: expected a JSON object with fields " ALLOWED);
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
    int rc = parse_fields(root, lim, &r, err, errlen);
    cJSON_Delete(root);
    if (rc)
        return SRV_PARSE_FIELD;
    *out = r;
    return SRV_PARSE_OK;
}
