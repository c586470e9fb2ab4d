/* paths.h: where the server finds its bundled data (the default model, the
 * demo page) when the settings do not name them.
 */
#ifndef SRV_PATHS_H
#define SRV_PATHS_H

#include <stddef.h>

/* Looks for the folder `rel` (e.g. "web", "models/fashion-mnist") holding
 * the file `probe` under the data roots, in order: the source tree (first
 * for a binary in the build tree, last otherwise), PREFIX/share/ditmoe
 * with PREFIX where the binary is installed (its bin/..), and the
 * configured install prefix's share/ditmoe. Returns 0 with the folder in
 * out, or -1 with out empty; `tried` (may be NULL) lists the candidates
 * looked at, ", "-separated, for an error message. */
int srv_find_data(const char *rel, const char *probe, char *out, size_t n, char *tried,
                  size_t tried_len);

/* Whether `model` is a bundled model's name ("fashion-mnist",
 * "fashion-mnist-ddpm") rather than a path: no '/', no leading '.', and
 * nothing of that name in the working directory (a path the user means
 * wins). */
int srv_is_model_name(const char *model);

#endif
