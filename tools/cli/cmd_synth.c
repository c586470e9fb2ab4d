/* cmd_synth.c: `ditmoe synth`: a model directory with random weights.
 *
 * Tests and benchmarks need models of given shapes without PyTorch or a
 * download: this builds one from a preset or a config.json (class names,
 * sampling defaults and all) with the engine's seeded random weights, and
 * writes it as a model directory any ditmoe tool (or safetensors reader)
 * loads. The same seed gives the same bytes.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

static const char synth_usage[] =
    "usage: ditmoe synth (--preset NAME | --config FILE) --out DIR [--seed N] [--dtype D]\n"
    "  --preset NAME   a published shape (s2, b2, xl2, g2, ...)\n"
    "  --config FILE   a config.json (or a directory holding one) for custom shapes\n"
    "  --out DIR       writes DIR/config.json and DIR/model.safetensors\n"
    "  --seed N        seed of the random weights (default 0)\n"
    "  --dtype D       f32 (default), f16, bf16, or q8 (8-bit experts, other matrices f16)\n";

int cmd_synth(int argc, char **argv)
{
    const char *preset = NULL, *config = NULL, *out = NULL, *seed_s = "0", *dtype = NULL;
    const cli_opt opts[] = {
        { "preset", &preset, NULL }, { "config", &config, NULL }, { "out", &out, NULL },
        { "seed", &seed_s, NULL }, { "dtype", &dtype, NULL },
    };
    int rc = cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), synth_usage);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (!out || !preset == !config) {
        fprintf(stderr, "ditmoe: synth needs --out and one of --preset, --config\n%s",
                synth_usage);
        return CLI_EUSAGE;
    }
    uint64_t seed;
    if ((rc = cli_u64("seed", seed_s, &seed)))
        return rc;
    dit_model_settings set;
    dit_model_settings_default(&set);
    set.pack_weights = 0; /* written as built, never run */
    dit_model *m = NULL;
    char err[1024] = "";
    rc = dit_model_synthetic(&m, preset ? preset : config, dtype, seed, &set, err,
                             sizeof err);
    if (rc == DIT_OK)
        rc = dit_model_save(m, out, err, sizeof err);
    if (rc == DIT_OK)
        printf("%s: random %s model (seed %llu)\n", out, preset ? preset : config,
               (unsigned long long)seed);
    dit_model_free(m);
    return rc ? cli_fail("%s", err[0] ? err : dit_strerror(rc)) : 0;
}
