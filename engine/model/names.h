/* names.h: upstream's state_dict as one list (engine-internal; names.c).
 *
 * Every tensor of a DiT-MoE with a given config, in state_dict order, with
 * its upstream name, shape, init fan-in and the model slot that holds it.
 * Binding a weight file (model.c) and building random weights (load.c's
 * synthetic models, which `ditmoe synth` writes out) both walk this one
 * list, so a name is spelled in one place.
 */
#ifndef MODEL_NAMES_H
#define MODEL_NAMES_H

#include "model.h"

enum { TENSOR_MAT = 0, TENSOR_VEC = 1 };

typedef struct tensor_ref {
    const char *name;       /* upstream name (valid during the callback) */
    int ndim;
    int64_t shape[4];
    int fan_in;             /* inputs per output: scale of a random init */
    int kind;               /* TENSOR_MAT: kept as a kmat (rows = shape[0]);
                             * TENSOR_VEC: widened to F32 into model memory */
    kmat *mat;              /* MAT: the model's slot (NULL without a model) */
    const float **vec;      /* VEC: the model's slot (NULL without a model) */
    const char *why;        /* the config fields the shape follows */
} tensor_ref;

typedef int (*tensor_fn)(void *user, const tensor_ref *r);

/* Calls fn for every tensor of a model with config g, in order; slots
 * point into m (whose blocks and experts must be allocated) or are NULL
 * when m is NULL. has_null: the label table has the null-class row. Stops
 * at the first non-zero return and returns it. */
int names_each(dit_model *m, const dit_config *g, int has_null, tensor_fn fn, void *user);

#endif
