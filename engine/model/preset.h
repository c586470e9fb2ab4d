/* preset.h: the published DiT-MoE shapes (engine-internal; see config.c). */
#ifndef DIT_PRESET_H
#define DIT_PRESET_H

#include <ditmoe/dit.h>

typedef struct model_preset {
    const char *name;
    int depth, hidden, heads, experts;
    int prediction;   /* enum dit_prediction */
    int sampler;      /* upstream sample.py's default for this model */
    int steps;
    double cfg;
} model_preset;

/* A preset by name or alias ("s2" = "s2-8e2a"), or NULL. */
const model_preset *preset_find(const char *name);
/* The preset with these shapes, or NULL. */
const model_preset *preset_match(int depth, int hidden, int experts);
/* Fills c (derived fields not yet) with a preset's upstream config. */
void preset_config(const model_preset *p, dit_config *c);

#endif
