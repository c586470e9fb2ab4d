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
        .max_cfg = 20.0, .default_steps = 50, .default_sampler = DIT_SAMPLER_EULER,
        .default_cfg = 1.5, .image_w = 28, .image_h = 28, .find_class = find_class,
        .user = NULL,
    };
    for (int dialect = SRV_NATIVE; dialect <= SRV_OPENAI; dialect++) /* both body shapes */
        check_one(data, size, &lim, dialect);
    return 0;
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
            r.sampler < 0 || r.sampler > 2 || r.cfg_mode < 0 || r.cfg_mode > 1 || r.rng < 0 ||
            r.rng > 1 || (r.seed_given && r.seed > (uint64_t)SRV_SEED_MAX))
            __builtin_trap();
    } else if ((rc != SRV_PARSE_JSON && rc != SRV_PARSE_FIELD) || !err[0] ||
               strlen(err) >= sizeof err) {
        __builtin_trap();
    }
}
