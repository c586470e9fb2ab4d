/* pt.h: the parts of pt.c below pt_open (engine-internal; st.h has pt_open).
 *
 * pt_load_pickle is pt_open without the zip: it reads a checkpoint's
 * data.pkl and resolves storage keys through a callback. The fuzz target
 * (tests/fuzz) and the tests use it to reach the pickle reader directly.
 */
#ifndef DIT_PT_H
#define DIT_PT_H

#include <stddef.h>
#include <stdint.h>

#include "st.h"

/* Finds storage record `key` (key_len bytes): sets *data and *size and
 * returns 0, or returns -1 when there is no such record. */
typedef int (*pt_record_fn)(void *user, const char *key, size_t key_len,
                            const unsigned char **data, uint64_t *size);

/* Reads pickle pkl[0..len) as a torch.save checkpoint and builds a table of
 * its state_dict (after unwrapping "ema", else "model"). Tensors point into
 * the records `rec` returns (or into copies the table owns). On success the
 * table also owns `map` (munmap'ed with it; NULL for none), which must hold
 * pkl and every record. On failure *out is NULL, the caller still owns map,
 * and err names the path, tensor and problem. */
int pt_load_pickle(st_table **out, const char *path, const void *pkl, size_t len,
                   pt_record_fn rec, void *user, void *map, size_t map_len,
                   char *err, size_t errlen);

#endif
