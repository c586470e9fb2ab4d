/* batcher.h: the step scheduler, the one thread that runs the model.
 */
#ifndef SRV_BATCHER_H
#define SRV_BATCHER_H

#include <stddef.h>

#include "srv.h"

typedef struct batcher batcher;

/* Makes the scheduler's context and buffers for s->model and s->cfg (every
 * arena sized once for max_rows rows). Returns 0 or -1 with err. */
int batcher_new(batcher **out, srv *s, char *err, size_t errlen);
/* Starts the scheduler thread. Returns 0 or -1. */
int batcher_start(batcher *b);
/* Waits for the thread to exit (call job_table_quit first). */
void batcher_join(batcher *b);
/* Frees a stopped (or never started) batcher. NULL is a no-op. */
void batcher_free(batcher *b);
/* Bytes of the engine context (for /v1/model). */
size_t batcher_ctx_bytes(const batcher *b);

#endif
