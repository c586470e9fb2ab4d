/* srv.h: the server's shared state, one instance made by main.c.
 *
 * The model is loaded once with every expert resident and shared read-only;
 * only the batcher thread runs it (through its own dit_ctx). HTTP threads
 * read the model's config and class names and touch jobs through jobs.h.
 */
#ifndef SRV_H
#define SRV_H

#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include <ditmoe/dit.h>

/* Job ids are "INSTANCE-" and 16 hex digits, so the id says which replica
 * made the job (docs/server.md: routing /jobs/{id} by it). With the NUL: */
#define SRV_JOB_ID_MAX (SRV_INSTANCE_MAX + 18)

struct job_table;
struct batcher;
struct srv_stats;
struct srv_metrics;

typedef struct srv {
    const srv_config *cfg;
    dit_model *model;
    const dit_config *mc;
    char model_path[1024];
    char web_root[1024];           /* the configured or found web root; "" = none */
    char instance[SRV_INSTANCE_MAX + 1]; /* instance_id, or the random one */
    int img_w, img_h, img_ch;      /* decoded image size */
    int n_threads, blas_threads;   /* as resolved from the config */
    struct job_table *jobs;
    struct batcher *batcher;
    struct srv_stats *stats;
    struct srv_metrics *metrics;
    double t_start;                /* srv_now() at start */
    atomic_int ready;              /* model loaded, scheduler running */
    atomic_int stopping;           /* SIGTERM seen: no new jobs */
} srv;

/* Monotonic clock in seconds. */
double srv_now(void);

#endif
