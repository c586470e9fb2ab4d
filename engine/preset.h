/* preset.h: the published DiT-MoE shapes (engine-internal; see config.c). */
#ifndef DIT_PRESET_H
#define DIT_PRESET_H

#include "dit.h"

typedef struct dit_preset {
    const char *name;
    int depth, hidden, heads, experts;
    int prediction;   /* enum dit_prediction */
    int sampler;      /* upstream sample.py's default for this model */
    int steps;
    double cfg;
} dit_preset;

/* A preset by name or alias ("s2" = "s2-8e2a"), or NULL. */
const dit_preset *dit_preset_find(const char *name);
/* The preset with these shapes, or NULL. */
const dit_preset *dit_preset_match(int depth, int hidden, int experts);
/* Fills c (derived fields not yet) with a preset's upstream config. */
void dit_preset_config(const dit_preset *p, dit_config *c);

#endif
