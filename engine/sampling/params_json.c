/* params_json.c: the JSON spellings of the sampling options that a model's
 * config.json "sampling" and the server's request bodies share.
 *
 * One reader for both, so a default a model ships and a value a client
 * sends are the same words checked by the same rules. Messages open with
 * the field's name ("cache.interval: ..."): the server passes them on as
 * they are, config.c puts the file and "sampling." in front. Text quoted
 * from the document is cut short on a UTF-8 character boundary, since the
 * server's clients choose it.
 */
#include <stdio.h>
#include <string.h>

#include <ditmoe/dit.h>
#include <ditmoe/dit_json.h>

/* What v is, for "got %s" ("array"; as config.c's messages say it). */
static const char *pj_type(const dit_json *v)
{
    return dit_json_type_name(dit_json_type(v));
}

int dit_spacing_from_json(const struct dit_json *v, int *spacing, char *err, size_t errlen)
{
    static const char *const names[] = { "default", "uniform", "logsnr", NULL };
    return dit_json_enum(v, "spacing", names, spacing, err, errlen) ? DIT_E_INVAL : DIT_OK;
}

int dit_cfg_interval_from_json(const struct dit_json *v, double iv[2], char *err,
                               size_t errlen)
{
    const dit_json *lo = dit_json_at(v, 0), *hi = dit_json_at(v, 1);
    if (dit_json_type(v) != DIT_JSON_ARRAY || dit_json_len(v) != 2 ||
        dit_json_type(lo) != DIT_JSON_NUMBER || dit_json_type(hi) != DIT_JSON_NUMBER) {
        snprintf(err, errlen, "cfg_interval: must be [lo, hi], two numbers (noise levels in "
                 "[0, 1]), got %s", pj_type(v));
        return DIT_E_INVAL;
    }
    double l = dit_json_num(lo), h = dit_json_num(hi);
    if (!(l >= 0 && l <= h && h <= 1)) {
        snprintf(err, errlen, "cfg_interval: [%.17g, %.17g] is out of range: must satisfy "
                 "0 <= lo <= hi <= 1", l, h);
        return DIT_E_INVAL;
    }
    iv[0] = l;
    iv[1] = h;
    return DIT_OK;
}

static const char *const cache_modes[] = { "off", "fixed", "adaptive", NULL };

/* One member of a "cache" object into c. */
static int pj_cache_member(const char *k, const dit_json *v, dit_cache_params *c, char *err,
                           size_t errlen)
{
    int64_t i;
    double d = dit_json_num(v);
    if (!strcmp(k, "mode"))
        return dit_json_enum(v, "cache.mode", cache_modes, &c->mode, err, errlen)
                   ? DIT_E_INVAL : DIT_OK;
    if (!strcmp(k, "interval")) {
        if (dit_json_int(v, &i) && i >= 2 && i <= 100) {
            c->interval = (int)i;
            return DIT_OK;
        }
        if (dit_json_type(v) == DIT_JSON_NUMBER)
            snprintf(err, errlen, "cache.interval: %.17g is out of range: must be an integer "
                     "in [2, 100]", d);
        else
            snprintf(err, errlen, "cache.interval: must be an integer in [2, 100], got %s",
                     pj_type(v));
        return DIT_E_INVAL;
    }
    if (!strcmp(k, "threshold")) {
        if (dit_json_type(v) == DIT_JSON_NUMBER && d > 0 && d <= 10) {
            c->threshold = d;
            return DIT_OK;
        }
        snprintf(err, errlen, "cache.threshold: must be a number in (0, 10]");
        return DIT_E_INVAL;
    }
    snprintf(err, errlen, "cache: unknown member '%.*s': allowed are mode, interval, "
             "threshold", dit_json_quote_len(k, 32), k);
    return DIT_E_INVAL;
}

int dit_cache_from_json(const struct dit_json *v, dit_cache_params *c, char *err,
                        size_t errlen)
{
    dit_cache_params p = { DIT_CACHE_OFF, 2, 0.1 }; /* what a bare mode name means */
    int rc = DIT_OK;
    if (dit_json_type(v) == DIT_JSON_STRING) {
        rc = dit_json_enum(v, "cache", cache_modes, &p.mode, err, errlen) ? DIT_E_INVAL
                                                                            : DIT_OK;
    } else if (dit_json_type(v) != DIT_JSON_OBJECT || !dit_json_get(v, "mode")) {
        snprintf(err, errlen, "cache: must be \"off\", \"fixed\", \"adaptive\" or an object "
                 "with \"mode\" (and \"interval\" 2..100 or \"threshold\" (0, 10]), got %s",
                 pj_type(v));
        return DIT_E_INVAL;
    } else {
        for (size_t i = 0; rc == DIT_OK && i < dit_json_len(v); i++)
            rc = pj_cache_member(dit_json_str(dit_json_key(v, i)), dit_json_at(v, i), &p, err,
                                 errlen);
    }
    if (rc == DIT_OK)
        *c = p;
    return rc;
}
