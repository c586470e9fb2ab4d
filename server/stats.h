/* stats.h: expert utilization and batching statistics for GET /stats, and
 * routing analytics for GET /stats/routing.
 *
 * Fed once per denoising step by the scheduler with the step's per-row
 * routing counts (dit_ctx_routing), it keeps tokens per layer and expert
 * since start, over a recent window, per noise-level bucket and per class
 * (both since start and over the window), and histograms of rows and jobs
 * per step.
 */
#ifndef SRV_STATS_H
#define SRV_STATS_H

#include <stdint.h>

#include <ditmoe/dit.h>

typedef struct srv_stats srv_stats;

/* Allocates everything once. Returns 0 or -1 (out of memory). */
int srv_stats_new(srv_stats **out, int layers, int experts, int num_classes, int max_rows,
                  int window_s);
void srv_stats_free(srv_stats *s);

/* One step over n rows from n_jobs jobs: routing (N, L, E), the class of
 * each row (num_classes for the unconditional CFG rows) and each row's
 * noise level in [0, 1]. Thread-safe. */
void srv_stats_step(srv_stats *s, int n, int n_jobs, const uint32_t *routing,
                    const int32_t *row_class, const float *row_noise, double now);

/* The /stats document (malloc'd JSON text, NULL when out of memory). */
char *srv_stats_json(srv_stats *s, const dit_model *m, int queued, int running,
                     int queue_capacity, double now, double uptime_s);

/* Copies the all-time tokens per (layer, expert) into out (L * E). */
void srv_stats_totals(srv_stats *s, uint64_t *out);

/* The /stats/routing document: the routing report (analytics/
 * routing_info.h) since start and over the window (malloc'd JSON text,
 * NULL when out of memory). */
char *srv_stats_routing_json(srv_stats *s, const dit_model *m, double now);

/* I(E; class) and I(E; noise level) of each layer, in bits, into mi_class
 * and mi_noise, each (2, L): since start, then over the window; NaN for a
 * period without tokens. Returns 0, or -1 when out of memory. */
int srv_stats_routing_mi(srv_stats *s, double now, double *mi_class, double *mi_noise);

#endif
