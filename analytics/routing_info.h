/* routing_info.h: what the MoE router's expert choice depends on, measured
 * from routing counts. Shared by the server (GET /stats/routing, /metrics)
 * and `ditmoe routing`, so both count and measure the same way.
 *
 * The unit of counting is one routing assignment: with top-k routing a
 * token counts once for each of its k experts, so a layer's counts sum to
 * tokens x k. "E" below is the expert of one assignment.
 *
 * Counts (counts.c) are kept per (class, layer, expert) and per (noise
 * bucket, layer, expert). The rows of the null class (the unconditional
 * rows classifier-free guidance adds) are counted apart from the
 * conditional rows everywhere: they have no class, and mixing them in would
 * read guidance as class information.
 *
 * Measures (measures.c) are plain functions on raw count arrays: entropy
 * H(E), mutual information I(E; K) with a condition K (the class or the
 * noise bucket), in bits, and the smallest set of experts holding a given
 * share of a row's assignments (what a per-class expert cache must hold).
 * Plug-in estimates from the counts: with few tokens they overstate I
 * (by about (rows - 1)(E - 1) / (2 N ln 2) bits for N assignments).
 *
 * The report (report.c) is the JSON document of one count table.
 */
#ifndef ROUTING_INFO_H
#define ROUTING_INFO_H

#include <stddef.h>
#include <stdint.h>

#include <ditmoe/dit.h>

#define RT_BUCKETS 10 /* noise-level buckets: b holds levels in [b/10, (b+1)/10), 1 in the last */
#define RT_COVER 0.9  /* the share of a class's tokens a per-class expert set must hold */

/* ---- counts (counts.c) --------------------------------------------------- */

/* One count table. All arrays live in one allocation, `data` (len values),
 * so tables of equal shape add and clear as flat arrays. */
typedef struct rt_counts {
    int L, E, K;          /* layers, experts, classes (the null class is label K) */
    size_t len;           /* values in data */
    uint64_t *data;       /* owns: by_class then by_noise */
    uint64_t *by_class;   /* (K + 1, L, E): row k = class k's rows, row K = unconditional rows */
    uint64_t *by_noise;   /* (2, RT_BUCKETS, L, E): [0] conditional rows, [1] unconditional */
} rt_counts;

/* Allocates a zeroed table. Returns DIT_OK, DIT_E_INVAL (a size < 1) or
 * DIT_E_NOMEM; *out is NULL on failure. Free with rt_counts_free. */
int rt_counts_new(rt_counts **out, int layers, int experts, int num_classes);
void rt_counts_free(rt_counts *c); /* NULL is a no-op */
void rt_counts_clear(rt_counts *c);
/* dst += src; both of the same shape. */
void rt_counts_add_table(rt_counts *dst, const rt_counts *src);

/* The bucket of a noise level (clamped to [0, 1]; NaN counts as 0). A level
 * within 1e-6 below a bucket edge counts in the upper bucket, so levels
 * such as 0.9 stored as float land where they are meant to. */
int rt_noise_bucket(double noise);

/* Adds one forward of n rows: routing (N, L, E) as dit_ctx_routing gives
 * it, row_class (N) each row's label (K or anything outside 0..K-1: an
 * unconditional row), row_noise (N) each row's noise level in [0, 1]. */
void rt_counts_add(rt_counts *c, int n, const uint32_t *routing, const int32_t *row_class,
                   const float *row_noise);

/* Assignments of layer l in the table: conditional rows, unconditional rows. */
uint64_t rt_counts_layer_tokens(const rt_counts *c, int l, int unconditional);

/* ---- measures (measures.c) --------------------------------------------- */

/* Entropy in bits of the distribution proportional to counts p[0..n); 0
 * when all are 0. */
double rt_entropy(const uint64_t *p, int n);

typedef struct rt_info {
    double tokens;    /* assignments in the table */
    double h_expert;  /* H(E), bits */
    double h_cond;    /* H(K) of the condition over its rows, bits */
    double mi;        /* I(E; K), bits, in [0, min(H(E), H(K))] */
    double share;     /* mi / h_expert; 0 when h_expert is 0 */
} rt_info;

/* Measures a joint table of `rows` condition values by E experts:
 *   joint  (rows, E) counts, row r at joint + r * stride
 * Rows of zeros are conditions never seen; they change nothing. */
void rt_mutual_info(const uint64_t *joint, int rows, size_t stride, int E, rt_info *out);

/* The smallest set of experts holding at least frac of the row's counts:
 *   row  (E) counts;  out (E) the experts, most used first (ties: lower index)
 * Returns how many (0 when the row is all zeros). */
int rt_cover_set(const uint64_t *row, int E, double frac, int *out);

/* ---- report (report.c) --------------------------------------------------- */

/* Layer l of a table: I(E; class) over the conditional rows' classes, I(E;
 * noise) over their noise buckets, and I(E; noise) of the unconditional
 * rows. Any of the three may be NULL. */
void rt_layer_info(const rt_counts *c, int l, rt_info *cls, rt_info *noise, rt_info *uncond);

struct cJSON;

/* The JSON report of a table (docs/routing.md describes every field): per
 * layer the measures and the class-by-expert and noise-by-expert counts,
 * per class seen its 90% expert sets, and what per-class caches would
 * hold. m (may be NULL) names the classes. Returns a new cJSON object the
 * caller deletes, or NULL when out of memory. */
struct cJSON *rt_report_json(const rt_counts *c, const dit_model *m);

#endif
