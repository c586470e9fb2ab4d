/* st_write.h: writing .safetensors files (engine-internal; st_write.c).
 *
 * The reader (safetensors.c) is strict, so the writer produces exactly what
 * it accepts: an 8-byte header length, a JSON header padded with spaces so
 * the data starts 8-byte aligned, and tensor data spans that tile the data
 * region with no gaps, largest element size first so every tensor is
 * aligned to its element size in the file.
 */
#ifndef DIT_ST_WRITE_H
#define DIT_ST_WRITE_H

#include <stdio.h>

#include "st.h"

/* Writes every tensor of t (names, dtypes, shapes and bytes as they are) to
 * path as .safetensors, with __metadata__ from meta: NULL-terminated
 * key, value, key, value... (may be NULL). Writes path.tmp and renames it
 * over path, so a failed write never leaves a partial file at path. Names
 * must be valid UTF-8. Returns DIT_OK or an error with err naming the path
 * or tensor. */
int st_write(const char *path, const st_table *t, const char *const *meta,
             char *err, size_t errlen);

/* Writes s as a JSON string (quoted, escaped) to f. Returns 0, or -1 when
 * s is not valid UTF-8 (nothing written then). */
int st_write_json_string(FILE *f, const char *s);

#endif
