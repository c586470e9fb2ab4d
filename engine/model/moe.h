/* moe.h: the sparse MoE layer (engine-internal; see moe.c). */
#ifndef DIT_MOE_H
#define DIT_MOE_H

#include "model.h"

/* out (N, T, D) = MoE(xn (N, T, D)) for block b at index `layer`; adds the
 * routing counts of every row to c->routing. */
void moe_forward(dit_ctx *c, float *out, const float *xn, const model_block *b,
                 int layer, int N);

#endif
