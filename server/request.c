/* request.c: parsing and checking a generation request body.
 *
 * The body is one JSON object; every field is checked for type and range
 * here, before a job exists, so a bad request costs the server nothing but
 * this parse and the client gets a message naming the field and the range
 * it must lie in. Unknown fields are refused rather than ignored: a typo
 * such as "step" would otherwise silently run with the default. The body
 * is read by the project's one strict JSON reader (dit_json: duplicate
 * keys, trailing data and invalid UTF-8 are refused; it keeps no global
 * state, so requests parse concurrently without a lock). A NUL in the body
 * is refused before parsing: C strings would cut a key such as
 * "class_label\u0000junk" at it and take it for another. Quoted client
 * text is cut on a UTF-8 character boundary (dit_json_quote_len).
 */
#include "request.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ditmoe/dit.h>
#include <ditmoe/dit_json.h>

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

/* Offset of a NUL in body[0..len): a raw byte, or \u0000 inside a string
 * (which C strings would silently cut a key or value at); -1 when none. */
static long find_nul(const char *b, size_t len)
{
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        if (!b[i])
            return (long)i;
        if (!in_str) {
            in_str = b[i] == '"';
        } else if (b[i] == '"') {
            in_str = 0;
        } else if (b[i] == '\\' && i + 1 < len) {
            if (b[i + 1] == 'u' && i + 5 < len && !memcmp(b + i + 2, "0000", 4))
                return (long)i;
            i++; /* the escaped character */
        }
    }
    return -1;
}

static const char *type_of(const dit_json *v)
{
    switch (dit_json_type(v)) {
    case DIT_JSON_NUMBER: return "a number";
    case DIT_JSON_STRING: return "a string";
    case DIT_JSON_BOOL: return "a boolean";
    case DIT_JSON_NULL: return "null";
    case DIT_JSON_ARRAY: return "an array";
    default: return "an object";
    }
}

static int is_num(const dit_json *v) { return dit_json_type(v) == DIT_JSON_NUMBER; }

/* An integral JSON number in [lo, hi], else a message naming the field. */
static int get_int(const dit_json *v, const char *name, double lo, double hi, double *out,
                   char *err, size_t errlen)
{
    if (!is_num(v)) {
        snprintf(err, errlen, "%s: must be an integer in [%.0f, %.0f], got %s", name, lo, hi,
                 type_of(v));
        return -1;
    }
    double d = dit_json_num(v);
    if (!isfinite(d) || d != floor(d) || d < lo || d > hi) {
        snprintf(err, errlen, "%s: %.17g is out of range: must be an integer in [%.0f, %.0f]",
                 name, d, lo, hi);
        return -1;
    }
    *out = d;
    return 0;
}

static int get_class(const dit_json *v, const char *name, const srv_limits *lim, int *out,
                     char *err, size_t errlen)
{
    double d;
    const char *str = dit_json_str(v);
    if (str) {
        int k = lim->find_class ? lim->find_class(lim->user, str) : -1;
        if (k >= 0 && k < lim->num_classes) {
            *out = k;
            return 0;
        }
        char *end;
        long n = strtol(str, &end, 10);
        if (str[0] && !*end && n >= 0 && n < lim->num_classes) {
            *out = (int)n;
            return 0;
        }
        snprintf(err, errlen, "%s: unknown class '%.*s': must be an integer in [0, %d] "
                 "or a class name (GET /v1/model lists them)", name,
                 dit_json_quote_len(str, 64), str, lim->num_classes - 1);
        return -1;
    }
    if (is_num(v)) {
        if (get_int(v, name, 0, lim->num_classes - 1, &d, err, errlen))
            return -1;
        *out = (int)d;
        return 0;
    }
    snprintf(err, errlen, "%s: must be an integer in [0, %d] or a class name, got %s", name,
             lim->num_classes - 1, type_of(v));
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

static int get_sampler(const dit_json *v, int *out, char *err, size_t errlen)
{
    const char *str = dit_json_str(v);
    int k = str ? dit_sampler_parse(str) : -1;
    if (k < 0) {
        char names[192];
        sampler_names(names, sizeof names);
        if (str)
            snprintf(err, errlen, "sampler: unknown sampler '%.*s': must be one of %s "
                     "(GET /v1/model lists them)", dit_json_quote_len(str, 32), str, names);
        else
            snprintf(err, errlen, "sampler: must be one of %s, got %s", names, type_of(v));
        return -1;
    }
    *out = k;
    return 0;
}

/* "size": "WxH", the one size the model makes. */
static int get_size(const dit_json *v, const srv_limits *lim, char *err, size_t errlen)
{
    char want[32];
    const char *str = dit_json_str(v);
    snprintf(want, sizeof want, "%dx%d", lim->image_w, lim->image_h);
    if (str && !strcmp(str, want))
        return 0;
    if (str)
        snprintf(err, errlen, "size: '%.*s' is not a size this model makes: must be \"%s\"",
                 dit_json_quote_len(str, 32), str, want);
    else
        snprintf(err, errlen, "size: must be the string \"%s\", got %s", want, type_of(v));
    return -1;
}

static int get_cfg(const dit_json *v, const srv_limits *lim, double *out, char *err,
                   size_t errlen)
{
    double d = dit_json_num(v);
    if (!is_num(v) || !isfinite(d) || d < 1.0 || d > lim->max_cfg) {
        if (is_num(v))
            snprintf(err, errlen, "cfg_scale: %.17g is out of range: must be a number in "
                     "[1, %g] (1 = no guidance)", d, lim->max_cfg);
        else
            snprintf(err, errlen, "cfg_scale: must be a number in [1, %g], got %s",
                     lim->max_cfg, type_of(v));
        return -1;
    }
    *out = d;
    return 0;
}

static int apply_field(const struct field *f, const dit_json *v, const srv_limits *lim,
                       srv_gen_req *r, char *err, size_t errlen)
{
    static const char *const CFG_MODES[] = {"upstream", "all", NULL};
    static const char *const RNGS[] = {"default", "torch", NULL};
    static const char *const FORMATS[] = {"b64_json", NULL}; /* no URLs: nothing is stored */
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
    case F_CFG_MODE: return dit_json_enum(v, "cfg_mode", CFG_MODES, &r->cfg_mode, err, errlen);
    case F_RNG: return dit_json_enum(v, "rng", RNGS, &r->rng, err, errlen);
    case F_SIZE: return get_size(v, lim, err, errlen);
    case F_FORMAT: return dit_json_enum(v, "response_format", FORMATS, &ignored, err, errlen);
    /* the readers config.json's "sampling" shares (engine/sampling/params_json.c) */
    case F_SPACING: return dit_spacing_from_json(v, &r->spacing, err, errlen) ? -1 : 0;
    case F_INTERVAL: return dit_cfg_interval_from_json(v, r->cfg_interval, err, errlen) ? -1 : 0;
    case F_CACHE: return dit_cache_from_json(v, &r->cache, err, errlen) ? -1 : 0;
    default:
        if (dit_json_type(v) == DIT_JSON_STRING || dit_json_type(v) == DIT_JSON_NULL)
            return 0;
        snprintf(err, errlen, "%s: must be a string (it has no effect here), got %s", f->name,
                 type_of(v));
        return -1;
    }
}

static int parse_fields(const dit_json *root, const srv_limits *lim, int dialect,
                        srv_gen_req *r, char *err, size_t errlen)
{
    int have_class = 0; /* (a key given twice is refused by the parser) */
    for (size_t i = 0; i < dit_json_len(root); i++) {
        const dit_json *it = dit_json_at(root, i);
        const char *key = dit_json_str(dit_json_key(root, i));
        int k = 0;
        while (k < NFIELDS && (!(FIELDS[k].dialects & (1 << dialect)) ||
                               strcmp(FIELDS[k].name, key)))
            k++;
        if (k == NFIELDS) {
            char allowed[256];
            allowed_fields(dialect, allowed, sizeof allowed);
            snprintf(err, errlen, "%.*s: unknown field: allowed fields are %s",
                     dit_json_quote_len(key, 48), key, allowed);
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

void srv_req_defaults(const srv_limits *lim, srv_gen_req *r)
{
    *r = (srv_gen_req){
        .steps = lim->default_steps, .cfg_scale = lim->default_cfg,
        .sampler = lim->default_sampler, .num_images = 1, .spacing = lim->default_spacing,
        .cfg_interval = {lim->default_cfg_interval[0], lim->default_cfg_interval[1]},
        .cache = lim->default_cache,
    };
}

int srv_parse_generate(const char *body, size_t len, const srv_limits *lim, int dialect,
                       srv_gen_req *out, char *err, size_t errlen)
{
    srv_gen_req r;
    srv_req_defaults(lim, &r);
    r.spacing = -1; /* until the body names one: resolved once the sampler is known */
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
    long nul = find_nul(body, len);
    if (nul >= 0) {
        snprintf(err, errlen, "a NUL character (raw or \\u0000) at byte %ld: not allowed in "
                 "field names or values", nul);
        return SRV_PARSE_FIELD;
    }
    dit_json_doc *doc = NULL;
    char jerr[200];
    if (dit_json_parse(body, len, &doc, jerr, sizeof jerr)) {
        snprintf(err, errlen, "malformed JSON: %s", jerr);
        return SRV_PARSE_JSON;
    }
    const dit_json *root = dit_json_root(doc);
    if (dit_json_type(root) != DIT_JSON_OBJECT) {
        snprintf(err, errlen, "body must be a JSON object, got %s", type_of(root));
        dit_json_free(doc);
        return SRV_PARSE_JSON;
    }
    int rc = parse_fields(root, lim, dialect, &r, err, errlen);
    dit_json_free(doc);
    if (rc)
        return SRV_PARSE_FIELD;
    /* no spacing given: the model's goes with the model's sampler only, as
     * dit_model_default_spacing says (another solver gets its own) */
    if (r.spacing < 0)
        r.spacing = r.sampler == lim->default_sampler ? lim->default_spacing
                                                      : DIT_SPACING_DEFAULT;
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
