/* metrics.h: counters and histograms exported at GET /metrics in the
 * Prometheus text format (version 0.0.4).
 */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct srv_metrics srv_metrics;

int srv_metrics_new(srv_metrics **out);
void srv_metrics_free(srv_metrics *m);

/* One HTTP request answered with `status` after `seconds`. Thread-safe. */
void srv_metrics_request(srv_metrics *m, int status, double seconds);
/* One denoising step of `rows` rows and `jobs` jobs that took `seconds`. */
void srv_metrics_step(srv_metrics *m, int rows, int jobs, double seconds);
/* One job's images decoded (dit_decode) in decode_s and PNG-encoded in
 * encode_s (< 0: the encoding failed, not counted). */
void srv_metrics_decode(srv_metrics *m, double decode_s, double encode_s);
/* One job ended ("done", "failed", "cancelled") `seconds` after submission
 * with `images` images. */
void srv_metrics_job(srv_metrics *m, const char *outcome, double seconds, int images);

/* What /metrics says about routing, read from stats.c at scrape time. */
typedef struct srv_metrics_routing {
    int layers, experts;
    const uint64_t *expert_tokens;     /* (L, E) tokens since start */
    const double *mi_class, *mi_noise; /* (2, L) bits: since start, then the window; NaN: none */
} srv_metrics_routing;

/* The exposition text (malloc'd; *len its length), with the gauges and the
 * routing figures passed in. NULL when out of memory. */
char *srv_metrics_text(srv_metrics *m, int queued, int running, int queue_capacity,
                       const srv_metrics_routing *r, size_t *len);

#endif
