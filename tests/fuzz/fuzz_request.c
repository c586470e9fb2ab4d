/* fuzz_request.c: libFuzzer target for the server's request-body parser
 * (server/request.c, the body of POST /generate and POST /jobs, and the
 * OpenAI-shaped body of POST /v1/images/generations: each input is parsed
 * both ways).
 *
 * An accepted body must give values inside every limit the parser was
 * handed (so the server never queues an out-of-range job); a refused one
 * must say why, naming a field or the JSON position. Class names resolve
 * through a stand-in for the model's lookup.
 */
#include "request.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <ditmoe/dit.h>

static int find_class(void *user, const char *name)
{
    static const char *const names[] = {"t-shirt/top", "trouser", "ankle boot"};
    (void)user;
    for (int i = 0; i < 3; i++)
        if (!strcasecmp(name, names[i]))
            return i;
    return -1;
}

static void check_one(const uint8_t *data, size_t size, const srv_limits *l, int dialect);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const srv_limits lim = {
        .num_classes = 10, .max_steps = 1000, .max_images = 16, .max_rows = 24,
        .max_cfg = 20.0, .default_steps = 50, .default_sampler = DIT_SAMPLER_DPMPP_2M,
        .default_cfg = 1.5, .default_spacing = DIT_SPACING_LOGSNR,
        .default_cfg_interval = {0.2, 0.65}, .default_cache = {DIT_CACHE_FIXED, 3, 0.1},
        .image_w = 28, .image_h = 28, .find_class = find_class, .user = NULL,
    };
    for (int dialect = SRV_NATIVE; dialect <= SRV_OPENAI; dialect++) /* both body shapes */
        check_one(data, size, &lim, dialect);
    return 0;
}

/* An accepted body's sampler, spacing, interval and cache are ones the
 * engine takes. */
static int bad_sampling(const srv_gen_req *r)
{
    const dit_cache_params *c = &r->cache;
    return r->sampler < 0 || r->sampler >= dit_sampler_count() ||
           r->spacing < DIT_SPACING_DEFAULT || r->spacing > DIT_SPACING_LOGSNR ||
           !(r->cfg_interval[0] >= 0 && r->cfg_interval[0] <= r->cfg_interval[1] &&
             r->cfg_interval[1] <= 1) ||
           c->mode < DIT_CACHE_OFF || c->mode > DIT_CACHE_ADAPTIVE || c->interval < 2 ||
           c->interval > 100 || !(c->threshold > 0 && c->threshold <= 10);
}

/* Every accepted body is within the limits; every refusal says why. */
static void check_one(const uint8_t *data, size_t size, const srv_limits *l, int dialect)
{
    const srv_limits lim = *l;
    srv_gen_req r;
    char err[512] = "";
    int rc = srv_parse_generate((const char *)data, size, &lim, dialect, &r, err, sizeof err);
    if (rc == SRV_PARSE_OK) {
        int rows = r.num_images * (r.cfg_scale > 1.0 ? 2 : 1);
        if (r.class_label < 0 || r.class_label >= lim.num_classes || r.steps < 1 ||
            r.steps > lim.max_steps || r.num_images < 1 || r.num_images > lim.max_images ||
            rows > lim.max_rows || !(r.cfg_scale >= 1.0 && r.cfg_scale <= lim.max_cfg) ||
            bad_sampling(&r) || r.cfg_mode < 0 || r.cfg_mode > 1 || r.rng < 0 ||
            r.rng > 1 || (r.seed_given && r.seed > (uint64_t)SRV_SEED_MAX))
            __builtin_trap();
    } else if ((rc != SRV_PARSE_JSON && rc != SRV_PARSE_FIELD) || !err[0] ||
               strlen(err) >= sizeof err) {
        __builtin_trap();
    }
}
