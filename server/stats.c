/* stats.c: per-expert utilization, the figures behind GET /stats.
 *
 * Counts are tokens routed to (layer, expert): with top-k routing a token
 * counts once for each of its k experts, so an expert's "share" is its
 * fraction of the layer's routing assignments (shares of a layer sum to 1).
 * The recent window is a ring of STATS_SLOTS time slots: a slot is
 * cleared when the clock reaches it again, so the window covers between
 * window_s - window_s / STATS_SLOTS and window_s seconds. Everything is
 * allocated at start; a step only adds under the mutex.
 *
 * The counts by class and by noise level (analytics/routing_info.h: the
 * unconditional guidance rows apart) have a ring of their own alongside,
 * cleared with the same slots. They feed GET /stats/routing and the mutual
 * information gauges of /metrics, and the by_class / by_noise_level
 * breakdowns of GET /stats. A request copies the tables under the mutex
 * and measures them after letting it go, so a report never holds up a step.
 */
#include "stats.h"

#include "routing_info.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define STATS_SLOTS 12

struct srv_stats {
    pthread_mutex_t mu;
    int L, E, C, max_rows;        /* C: classes + 1 (the null class) */
    double slot_s;
    int window_s;
    uint64_t steps, rows;
    uint64_t *total;              /* (L, E) */
    uint64_t *slots;              /* (STATS_SLOTS, L, E) */
    int64_t slot_epoch[STATS_SLOTS];
    rt_counts *routing;           /* by class and noise level, since start */
    rt_counts *routing_slots[STATS_SLOTS]; /* the same, per slot of the ring */
    uint64_t *rows_hist;          /* (max_rows + 1) steps with that many rows */
    uint64_t *jobs_hist;          /* (max_rows + 1) steps with that many jobs */
};

int srv_stats_new(srv_stats **out, int layers, int experts, int num_classes, int max_rows,
                  int window_s)
{
    srv_stats *s = calloc(1, sizeof *s);
    size_t le = (size_t)layers * (size_t)experts;
    *out = NULL;
    if (!s)
        return -1;
    s->L = layers, s->E = experts, s->C = num_classes + 1, s->max_rows = max_rows;
    s->window_s = window_s;
    s->slot_s = (double)window_s / STATS_SLOTS;
    s->total = calloc(le, sizeof *s->total);
    s->slots = calloc(le * STATS_SLOTS, sizeof *s->slots);
    int bad = rt_counts_new(&s->routing, layers, experts, num_classes);
    for (int i = 0; i < STATS_SLOTS; i++)
        bad |= rt_counts_new(&s->routing_slots[i], layers, experts, num_classes);
    s->rows_hist = calloc((size_t)max_rows + 1, sizeof *s->rows_hist);
    s->jobs_hist = calloc((size_t)max_rows + 1, sizeof *s->jobs_hist);
    for (int i = 0; i < STATS_SLOTS; i++)
        s->slot_epoch[i] = -1;
    pthread_mutex_init(&s->mu, NULL);
    if (bad || !s->total || !s->slots || !s->rows_hist || !s->jobs_hist) {
        srv_stats_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void srv_stats_free(srv_stats *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->mu);
    free(s->total);
    free(s->slots);
    rt_counts_free(s->routing);
    for (int i = 0; i < STATS_SLOTS; i++)
        rt_counts_free(s->routing_slots[i]);
    free(s->rows_hist);
    free(s->jobs_hist);
    free(s);
}

/* The ring slot for time now, cleared if it last held an older period. */
static int slot_locked(srv_stats *s, double now)
{
    int64_t epoch = (int64_t)floor(now / s->slot_s);
    int k = (int)(epoch % STATS_SLOTS);
    size_t le = (size_t)s->L * (size_t)s->E;
    if (s->slot_epoch[k] != epoch) {
        memset(s->slots + (size_t)k * le, 0, le * sizeof *s->slots);
        rt_counts_clear(s->routing_slots[k]);
        s->slot_epoch[k] = epoch;
    }
    return k;
}

/* Whether ring slot k is inside the window ending now. */
static int slot_live(const srv_stats *s, int k, double now)
{
    return s->slot_epoch[k] > (int64_t)floor(now / s->slot_s) - STATS_SLOTS;
}

void srv_stats_step(srv_stats *s, int n, int n_jobs, const uint32_t *routing,
                    const int32_t *row_class, const float *row_noise, double now)
{
    size_t le = (size_t)s->L * (size_t)s->E;
    pthread_mutex_lock(&s->mu);
    int k = slot_locked(s, now);
    uint64_t *slot = s->slots + (size_t)k * le;
    for (int r = 0; r < n; r++) {
        const uint32_t *c = routing + (size_t)r * le;
        for (size_t i = 0; i < le; i++) {
            s->total[i] += c[i];
            slot[i] += c[i];
        }
    }
    rt_counts_add(s->routing, n, routing, row_class, row_noise);
    rt_counts_add(s->routing_slots[k], n, routing, row_class, row_noise);
    s->steps++;
    s->rows += (uint64_t)n;
    s->rows_hist[n <= s->max_rows ? n : s->max_rows]++;
    s->jobs_hist[n_jobs <= s->max_rows ? n_jobs : s->max_rows]++;
    pthread_mutex_unlock(&s->mu);
}

void srv_stats_totals(srv_stats *s, uint64_t *out)
{
    pthread_mutex_lock(&s->mu);
    memcpy(out, s->total, (size_t)s->L * (size_t)s->E * sizeof *out);
    pthread_mutex_unlock(&s->mu);
}

/* ---- the JSON document ---------------------------------------------------- */

/* Load balance of one layer's E counts: max/mean, coefficient of
 * variation and the experts never used. */
static cJSON *balance_json(const uint64_t *c, int E)
{
    double sum = 0, max = 0, sq = 0;
    for (int e = 0; e < E; e++) {
        sum += (double)c[e];
        max = fmax(max, (double)c[e]);
    }
    double mean = sum / E;
    for (int e = 0; e < E; e++)
        sq += ((double)c[e] - mean) * ((double)c[e] - mean);
    cJSON *b = cJSON_CreateObject(), *unused = cJSON_CreateArray();
    cJSON_AddNumberToObject(b, "tokens", sum);
    if (sum > 0) {
        cJSON_AddNumberToObject(b, "max_over_mean", max / mean);
        cJSON_AddNumberToObject(b, "cv", sqrt(sq / E) / mean);
    } else {
        cJSON_AddNullToObject(b, "max_over_mean");
        cJSON_AddNullToObject(b, "cv");
    }
    for (int e = 0; e < E; e++)
        if (!c[e])
            cJSON_AddItemToArray(unused, cJSON_CreateNumber(e));
    cJSON_AddNumberToObject(b, "unused_count", cJSON_GetArraySize(unused));
    cJSON_AddItemToObject(b, "unused", unused);
    return b;
}

static cJSON *counts_json(const uint64_t *c, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)c[i]));
    return a;
}

static double share(uint64_t part, const uint64_t *row, int E)
{
    uint64_t sum = 0;
    for (int e = 0; e < E; e++)
        sum += row[e];
    return sum ? (double)part / (double)sum : 0.0;
}

/* One entry per layer: per-expert totals, window and shares, balance. */
static cJSON *layers_json(srv_stats *s, const uint64_t *window)
{
    cJSON *layers = cJSON_CreateArray();
    for (int l = 0; l < s->L; l++) {
        const uint64_t *tot = s->total + (size_t)l * s->E, *win = window + (size_t)l * s->E;
        cJSON *lj = cJSON_CreateObject(), *ex = cJSON_CreateArray();
        cJSON_AddNumberToObject(lj, "layer", l);
        for (int e = 0; e < s->E; e++) {
            cJSON *ej = cJSON_CreateObject();
            cJSON_AddNumberToObject(ej, "expert", e);
            cJSON_AddNumberToObject(ej, "tokens", (double)tot[e]);
            cJSON_AddNumberToObject(ej, "tokens_window", (double)win[e]);
            cJSON_AddNumberToObject(ej, "share", share(tot[e], tot, s->E));
            cJSON_AddNumberToObject(ej, "share_window", share(win[e], win, s->E));
            cJSON_AddItemToArray(ex, ej);
        }
        cJSON_AddItemToObject(lj, "experts", ex);
        cJSON_AddItemToObject(lj, "balance", balance_json(tot, s->E));
        cJSON_AddItemToObject(lj, "balance_window", balance_json(win, s->E));
        cJSON_AddItemToArray(layers, lj);
    }
    return layers;
}

/* A breakdown entry: tokens (L, E) and each layer's balance. */
static cJSON *matrix_json(srv_stats *s, const uint64_t *m)
{
    cJSON *o = cJSON_CreateObject(), *tok = cJSON_CreateArray(), *bal = cJSON_CreateArray();
    for (int l = 0; l < s->L; l++) {
        cJSON_AddItemToArray(tok, counts_json(m + (size_t)l * s->E, s->E));
        cJSON_AddItemToArray(bal, balance_json(m + (size_t)l * s->E, s->E));
    }
    cJSON_AddItemToObject(o, "tokens", tok);
    cJSON_AddItemToObject(o, "balance", bal);
    return o;
}

static int any(const uint64_t *m, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (m[i])
            return 1;
    return 0;
}

/* by_noise_level (every row: conditional and unconditional together) and
 * by_class, since start. tmp (L, E) scratch. */
static void breakdowns_json(srv_stats *s, cJSON *root, const dit_model *m, uint64_t *tmp)
{
    size_t le = (size_t)s->L * (size_t)s->E;
    const uint64_t *cond = s->routing->by_noise, *uncond = cond + (size_t)RT_BUCKETS * le;
    cJSON *bt = cJSON_AddArrayToObject(root, "by_noise_level");
    for (int b = 0; b < RT_BUCKETS; b++) {
        for (size_t i = 0; i < le; i++)
            tmp[i] = cond[(size_t)b * le + i] + uncond[(size_t)b * le + i];
        cJSON *o = matrix_json(s, tmp);
        cJSON_AddNumberToObject(o, "noise_from", (double)b / RT_BUCKETS);
        cJSON_AddNumberToObject(o, "noise_to", (double)(b + 1) / RT_BUCKETS);
        cJSON_AddItemToArray(bt, o);
    }
    cJSON *bc = cJSON_AddArrayToObject(root, "by_class");
    for (int c = 0; c < s->C; c++) {
        const uint64_t *mc = s->routing->by_class + (size_t)c * le;
        if (!any(mc, le))
            continue; /* classes never asked for are left out */
        cJSON *o = matrix_json(s, mc);
        const char *name = c == s->C - 1 ? "unconditional (guidance rows)" : dit_model_class_name(m, c);
        cJSON_AddNumberToObject(o, "class", c);
        if (name)
            cJSON_AddStringToObject(o, "name", name);
        else
            cJSON_AddNullToObject(o, "name");
        cJSON_AddItemToArray(bc, o);
    }
}

char *srv_stats_json(srv_stats *s, const dit_model *m, int queued, int running,
                     int queue_capacity, double now, double uptime_s)
{
    size_t le = (size_t)s->L * (size_t)s->E;
    uint64_t *window = calloc(2 * le, sizeof *window); /* (L, E), then (L, E) scratch */
    if (!window)
        return NULL;
    cJSON *root = cJSON_CreateObject();
    pthread_mutex_lock(&s->mu);
    for (int k = 0; k < STATS_SLOTS; k++)
        if (slot_live(s, k, now))
            for (size_t i = 0; i < le; i++)
                window[i] += s->slots[(size_t)k * le + i];
    cJSON_AddNumberToObject(root, "uptime_s", uptime_s);
    cJSON_AddNumberToObject(root, "window_s", s->window_s);
    cJSON_AddNumberToObject(root, "steps", (double)s->steps);
    cJSON_AddNumberToObject(root, "rows", (double)s->rows);
    cJSON *q = cJSON_AddObjectToObject(root, "queue");
    cJSON_AddNumberToObject(q, "depth", queued);
    cJSON_AddNumberToObject(q, "capacity", queue_capacity);
    cJSON_AddNumberToObject(q, "running", running);
    cJSON *h = cJSON_AddObjectToObject(root, "batch_size_histogram");
    cJSON_AddStringToObject(h, "note", "index i: steps that ran i rows (resp. i jobs); the last "
                            "index also counts anything larger");
    cJSON_AddItemToObject(h, "rows", counts_json(s->rows_hist, s->max_rows + 1));
    cJSON_AddItemToObject(h, "jobs", counts_json(s->jobs_hist, s->max_rows + 1));
    cJSON_AddItemToObject(root, "layers", layers_json(s, window));
    breakdowns_json(s, root, m, window + le);
    pthread_mutex_unlock(&s->mu);
    free(window);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

/* ---- GET /stats/routing and the /metrics gauges ----------------------------- */

/* New tables holding the since-start counts and the window's sum (copied
 * under the mutex, to be measured without it). Returns 0 or -1. */
static int routing_tables(srv_stats *s, double now, rt_counts **total, rt_counts **window)
{
    *window = NULL;
    if (rt_counts_new(total, s->L, s->E, s->C - 1) ||
        rt_counts_new(window, s->L, s->E, s->C - 1)) {
        rt_counts_free(*total);
        *total = NULL;
        return -1;
    }
    pthread_mutex_lock(&s->mu);
    memcpy((*total)->data, s->routing->data, s->routing->len * sizeof *s->routing->data);
    for (int k = 0; k < STATS_SLOTS; k++)
        if (slot_live(s, k, now))
            rt_counts_add_table(*window, s->routing_slots[k]);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

char *srv_stats_routing_json(srv_stats *s, const dit_model *m, double now)
{
    rt_counts *total, *window;
    if (routing_tables(s, now, &total, &window))
        return NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "window_s", s->window_s);
    cJSON_AddItemToObject(root, "since_start", rt_report_json(total, m));
    cJSON_AddItemToObject(root, "window", rt_report_json(window, m));
    rt_counts_free(total);
    rt_counts_free(window);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

int srv_stats_routing_mi(srv_stats *s, double now, double *mi_class, double *mi_noise)
{
    rt_counts *t[2];
    if (routing_tables(s, now, &t[0], &t[1]))
        return -1;
    for (int p = 0; p < 2; p++)
        for (int l = 0; l < s->L; l++) {
            rt_info cls, noise;
            rt_layer_info(t[p], l, &cls, &noise, NULL);
            mi_class[p * s->L + l] = cls.tokens > 0 ? cls.mi : NAN;
            mi_noise[p * s->L + l] = cls.tokens > 0 ? noise.mi : NAN;
        }
    rt_counts_free(t[0]);
    rt_counts_free(t[1]);
    return 0;
}
