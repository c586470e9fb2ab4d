/* metrics.c: Prometheus metrics.
 *
 * Fixed histograms (cumulative buckets written out at scrape time) and
 * counters under one mutex; nothing is allocated after start except the
 * scrape text itself. Names follow Prometheus conventions: base units
 * (seconds), _total for counters.
 */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BUCKETS 16

typedef struct histo {
    int n;
    double le[MAX_BUCKETS];
    uint64_t count[MAX_BUCKETS + 1]; /* last: +Inf */
    double sum;
    uint64_t total;
} histo;

enum { OUT_DONE, OUT_FAILED, OUT_CANCELLED, N_OUTCOMES };
static const char *const OUTCOMES[N_OUTCOMES] = {"done", "failed", "cancelled"};

struct srv_metrics {
    pthread_mutex_t mu;
    uint64_t by_status[600];
    uint64_t jobs[N_OUTCOMES];
    uint64_t images;
    histo http_s, step_s, job_s, decode_s, encode_s, rows, jobs_per_step;
};

static void histo_init(histo *h, const double *le, int n)
{
    memset(h, 0, sizeof *h);
    h->n = n;
    memcpy(h->le, le, (size_t)n * sizeof *le);
}

static void histo_add(histo *h, double v)
{
    int i = 0;
    while (i < h->n && v > h->le[i])
        i++;
    h->count[i]++;
    h->sum += v;
    h->total++;
}

int srv_metrics_new(srv_metrics **out)
{
    static const double http_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                     0.5, 1, 2.5, 5, 10, 30, 60};
    static const double step_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                     2.5, 5, 10};
    static const double job_le[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
    /* pixel mapping takes microseconds, a VAE tens of ms to seconds an image */
    static const double decode_le[] = {0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05,
                                       0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    static const double rows_le[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
    srv_metrics *m = calloc(1, sizeof *m);
    *out = m;
    if (!m)
        return -1;
    pthread_mutex_init(&m->mu, NULL);
    histo_init(&m->http_s, http_le, 16);
    histo_init(&m->step_s, step_le, 13);
    histo_init(&m->job_s, job_le, 13);
    histo_init(&m->decode_s, decode_le, 16);
    histo_init(&m->encode_s, decode_le, 16);
    histo_init(&m->rows, rows_le, 11);
    histo_init(&m->jobs_per_step, rows_le, 11);
    return 0;
}

void srv_metrics_free(srv_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void srv_metrics_request(srv_metrics *m, int status, double seconds)
{
    pthread_mutex_lock(&m->mu);
    m->by_status[status >= 100 && status < 600 ? status : 0]++;
    histo_add(&m->http_s, seconds);
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_step(srv_metrics *m, int rows, int jobs, double seconds)
{
    pthread_mutex_lock(&m->mu);
    histo_add(&m->step_s, seconds);
    histo_add(&m->rows, rows);
    histo_add(&m->jobs_per_step, jobs);
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_decode(srv_metrics *m, double decode_s, double encode_s)
{
    pthread_mutex_lock(&m->mu);
    histo_add(&m->decode_s, decode_s);
    if (encode_s >= 0)
        histo_add(&m->encode_s, encode_s);
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_job(srv_metrics *m, const char *outcome, double seconds, int images)
{
    int k = 0;
    while (k < N_OUTCOMES - 1 && strcmp(OUTCOMES[k], outcome))
        k++;
    pthread_mutex_lock(&m->mu);
    m->jobs[k]++;
    if (k == OUT_DONE) {
        m->images += (uint64_t)images;
        histo_add(&m->job_s, seconds);
    }
    pthread_mutex_unlock(&m->mu);
}

/* A growing text buffer; on allocation failure it stays failed. */
typedef struct buf {
    char *p;
    size_t len, cap;
    int failed;
} buf;

static void put(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(buf *b, const char *fmt, ...)
{
    for (int tries = 0; tries < 2 && !b->failed; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

static void put_histo(buf *b, const char *name, const char *help, const histo *h)
{
    put(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->count[i];
        put(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
    }
    put(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name,
        (unsigned long long)h->total, name, h->sum, name, (unsigned long long)h->total);
}

static void put_counters(buf *b, srv_metrics *m)
{
    put(b, "# HELP ditmoe_http_requests_total HTTP requests answered, by status code.\n"
           "# TYPE ditmoe_http_requests_total counter\n");
    for (int s = 0; s < 600; s++)
        if (m->by_status[s])
            put(b, "ditmoe_http_requests_total{code=\"%d\"} %llu\n", s,
                (unsigned long long)m->by_status[s]);
    put(b, "# HELP ditmoe_jobs_total Generation jobs ended, by outcome.\n"
           "# TYPE ditmoe_jobs_total counter\n");
    for (int k = 0; k < N_OUTCOMES; k++)
        put(b, "ditmoe_jobs_total{outcome=\"%s\"} %llu\n", OUTCOMES[k],
            (unsigned long long)m->jobs[k]);
    put(b, "# HELP ditmoe_images_total Images generated.\n# TYPE ditmoe_images_total counter\n"
           "ditmoe_images_total %llu\n", (unsigned long long)m->images);
}

/* One gauge per layer and period: values (2, L), since start then window. */
static void put_layer_gauge(buf *b, const char *name, const char *help, const double *values,
                            int layers)
{
    static const char *const period[2] = {"since_start", "window"};
    put(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
    for (int p = 0; p < 2; p++)
        for (int l = 0; l < layers; l++) {
            double v = values[p * layers + l];
            char num[32]; /* the exposition format spells it NaN; printf says nan */
            if (isnan(v))
                snprintf(num, sizeof num, "NaN");
            else
                snprintf(num, sizeof num, "%.6g", v);
            put(b, "%s{layer=\"%d\",period=\"%s\"} %s\n", name, l, period[p], num);
        }
}

/* The expert token counters and, per layer and period, the two mutual
 * informations (stats.c measures them; NaN until a period has tokens). */
static void put_routing(buf *b, const srv_metrics_routing *r)
{
    put(b, "# HELP ditmoe_expert_tokens_total Tokens routed to each expert of each MoE layer.\n"
           "# TYPE ditmoe_expert_tokens_total counter\n");
    for (int l = 0; l < r->layers; l++)
        for (int e = 0; e < r->experts; e++)
            put(b, "ditmoe_expert_tokens_total{layer=\"%d\",expert=\"%d\"} %llu\n", l, e,
                (unsigned long long)r->expert_tokens[(size_t)l * r->experts + e]);
    put_layer_gauge(b, "ditmoe_routing_class_information_bits", "I(expert; class) of each MoE "
                    "layer in bits, over the conditional rows (GET /stats/routing).",
                    r->mi_class, r->layers);
    put_layer_gauge(b, "ditmoe_routing_noise_information_bits", "I(expert; noise level) of each "
                    "MoE layer in bits, over the conditional rows (GET /stats/routing).",
                    r->mi_noise, r->layers);
}

char *srv_metrics_text(srv_metrics *m, int queued, int running, int queue_capacity,
                       const srv_metrics_routing *r, size_t *len)
{
    buf b = {0};
    pthread_mutex_lock(&m->mu);
    put_counters(&b, m);
    put_histo(&b, "ditmoe_http_request_duration_seconds",
              "Time from request to response, every HTTP request.", &m->http_s);
    put_histo(&b, "ditmoe_request_duration_seconds",
              "Generation requests: submission to finished images (queue + compute).", &m->job_s);
    put_histo(&b, "ditmoe_step_duration_seconds", "One batched denoising step (one forward).",
              &m->step_s);
    put_histo(&b, "ditmoe_decode_seconds", "Decoding one job's final samples into pixels "
              "(dit_decode: the VAE for latent models, pixel mapping otherwise), on the "
              "scheduler thread.", &m->decode_s);
    put_histo(&b, "ditmoe_encode_seconds", "PNG-encoding one job's images (and their grid).",
              &m->encode_s);
    put_histo(&b, "ditmoe_batch_rows", "Rows (images and guidance rows) per denoising step.",
              &m->rows);
    put_histo(&b, "ditmoe_batch_jobs", "Jobs sharing one denoising step.", &m->jobs_per_step);
    pthread_mutex_unlock(&m->mu);
    put(&b, "# HELP ditmoe_queue_depth Jobs waiting in the queue.\n# TYPE ditmoe_queue_depth gauge\n"
            "ditmoe_queue_depth %d\n", queued);
    put(&b, "# HELP ditmoe_queue_capacity Queue capacity.\n# TYPE ditmoe_queue_capacity gauge\n"
            "ditmoe_queue_capacity %d\n", queue_capacity);
    put(&b, "# HELP ditmoe_jobs_running Jobs in the running batch.\n"
            "# TYPE ditmoe_jobs_running gauge\nditmoe_jobs_running %d\n", running);
    put_routing(&b, r);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
