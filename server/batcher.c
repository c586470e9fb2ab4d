/* batcher.c: the step scheduler.
 *
 * One thread owns the engine context and runs every denoising step of
 * every job. Each step is ONE dit_forward over the rows of all running
 * jobs: each sampler writes its inputs into its slice of one buffer, the
 * forward runs (so each expert's GEMM sees the tokens of all jobs at once),
 * and each sampler takes its slice of the output. Jobs join at the next
 * step boundary while their rows fit (FIFO: the head of the queue is never
 * overtaken), and leave as soon as they finish, are cancelled or time out.
 * Jobs with different step counts, samplers and guidance scales share
 * steps: a sampler only sees its own rows. A job reserves its largest row
 * count (dit_sampler_max_rows) at admission, but puts in each forward only
 * the rows of that evaluation (a guidance interval drops the null rows
 * outside it), each with its step cache (dit_forward_cached: rows of
 * different jobs may reuse or run their blocks in the same forward). A
 * job's step counter counts evaluations (heun takes two a step). With
 * batching off, a job runs alone (the benchmark's baseline).
 *
 * Finished jobs are decoded (dit_decode: the VAE of a latent model, run on
 * the engine's worker pool, or the pixel mapping) and PNG-encoded here,
 * between two steps, so no HTTP thread ever does heavy work; both are timed
 * (the job's decode_ms / encode_ms, /metrics ditmoe_decode_seconds and
 * ditmoe_encode_seconds). All buffers are sized once at start.
 */
#include "batcher.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dio.h"
#include "jobs.h"
#include "metrics.h"
#include "stats.h"

#define GRID_GAP 2

struct batcher {
    srv *s;
    dit_ctx *ctx;
    pthread_t thread;
    int started;
    int max_rows;
    size_t in_sz, out_sz, le;       /* floats per input row, per output row; L * E */
    float *x, *t, *out, *noise;     /* (N, C, H, W), (N), (N, Cout, H, W), (N) */
    int32_t *y;                     /* (N) */
    uint8_t *pixels;                /* (max_images, h, w, ch) */
    uint8_t *grid;                  /* the largest grid */
    job **act;                      /* running jobs, in admission order */
    int *cur;                       /* (max_rows) rows of each running job this step */
    dit_cache **cache;              /* (N) the row caches of this step */
    int n, rows;
};

int batcher_new(batcher **out, srv *s, char *err, size_t errlen)
{
    const dit_config *mc = s->mc;
    const srv_config *c = s->cfg;
    batcher *b = calloc(1, sizeof *b);
    *out = NULL;
    if (!b)
        goto nomem;
    b->s = s;
    b->max_rows = c->max_rows;
    int max_images = c->max_images < c->max_rows ? c->max_images : c->max_rows;
    dit_ctx_settings cs;
    dit_ctx_settings_default(&cs);
    cs.max_rows = c->max_rows;
    cs.n_threads = s->n_threads;
    cs.max_decode = max_images;
    int rc = dit_ctx_new(&b->ctx, s->model, &cs);
    if (rc) {
        snprintf(err, errlen, "engine context for %d rows: %s", c->max_rows, dit_strerror(rc));
        batcher_free(b);
        return -1;
    }
    size_t hw = (size_t)mc->input_size * (size_t)mc->input_size, n = (size_t)c->max_rows;
    b->in_sz = (size_t)mc->in_channels * hw;
    b->out_sz = (size_t)mc->out_channels * hw;
    b->le = (size_t)mc->depth * (size_t)mc->num_experts;
    size_t img = (size_t)s->img_w * (size_t)s->img_h * (size_t)s->img_ch;
    int gw = 0, gh = 0;
    if (io_grid_size(max_images, s->img_w, s->img_h, 0, GRID_GAP, &gw, &gh)) {
        snprintf(err, errlen, "max_images %d: the image grid would be too large", max_images);
        batcher_free(b);
        return -1;
    }
    b->x = malloc(n * b->in_sz * sizeof *b->x);
    b->t = malloc(n * sizeof *b->t);
    b->out = malloc(n * b->out_sz * sizeof *b->out);
    b->noise = malloc(n * sizeof *b->noise);
    b->y = malloc(n * sizeof *b->y);
    b->pixels = malloc((size_t)max_images * img);
    b->grid = malloc((size_t)gw * (size_t)gh * (size_t)s->img_ch);
    b->act = calloc(n, sizeof *b->act);
    b->cur = calloc(n, sizeof *b->cur);
    b->cache = calloc(n, sizeof *b->cache);
    if (!b->x || !b->t || !b->out || !b->noise || !b->y || !b->pixels || !b->grid || !b->act ||
        !b->cur || !b->cache) {
        batcher_free(b);
        goto nomem;
    }
    *out = b;
    return 0;
nomem:
    snprintf(err, errlen, "out of memory for the scheduler's buffers");
    return -1;
}

void batcher_free(batcher *b)
{
    if (!b)
        return;
    for (int i = 0; i < b->n; i++)
        job_unref(b->s->jobs, b->act[i]);
    dit_ctx_free(b->ctx);
    free(b->x);
    free(b->t);
    free(b->out);
    free(b->noise);
    free(b->y);
    free(b->pixels);
    free(b->grid);
    free(b->act);
    free(b->cur);
    free(b->cache);
    free(b);
}

size_t batcher_ctx_bytes(const batcher *b)
{
    return dit_ctx_bytes(b->ctx);
}

/* Takes queued jobs while their rows fit (with batching off: one job). */
static void admit(batcher *b)
{
    srv *s = b->s;
    char err[256];
    while (b->n < b->max_rows && (s->cfg->batching || b->n == 0)) {
        job *j = job_admit(s->jobs, b->max_rows - b->rows);
        if (!j)
            return;
        dit_sample_params p;
        dit_sample_params_default(s->model, &p);
        srv_req_params(&j->req, &p);
        dit_sampler *smp = NULL;
        int rc = dit_sampler_new(&smp, s->model, &p, err, sizeof err);
        if (!rc && dit_sampler_max_rows(smp) != j->rows) {
            snprintf(err, sizeof err, "the engine wants %d rows per step, not %d",
                     dit_sampler_max_rows(smp), j->rows);
            dit_sampler_free(smp);
            rc = DIT_E_UNSUPPORTED;
        }
        if (rc) {
            job_finish(s->jobs, j, JOB_FAILED, rc == DIT_E_NOMEM ? 503 : 500, err, srv_now());
            job_unref(s->jobs, j);
            continue;
        }
        if (job_start(s->jobs, j, smp)) {
            job_unref(s->jobs, j);
            continue;
        }
        b->act[b->n++] = j;
        b->rows += j->rows;
    }
}

/* PNG-encodes the decoded images of j: one PNG (or grid), and one PNG per
 * image when there are several. Returns 0 or a message. */
static const char *encode_pngs(batcher *b, job *j)
{
    srv *s = b->s;
    int n = j->req.num_images, w = s->img_w, h = s->img_h, ch = s->img_ch;
    size_t img = (size_t)w * (size_t)h * (size_t)ch;
    if (n == 1)
        return io_png_encode(b->pixels, w, h, ch, &j->png, &j->png_len, NULL, 0)
                   ? "PNG encoding failed" : NULL;
    int gw, gh;
    if (io_grid_size(n, w, h, 0, GRID_GAP, &gw, &gh) ||
        io_grid_compose(b->grid, b->pixels, n, w, h, ch, 0, GRID_GAP, 0) ||
        io_png_encode(b->grid, gw, gh, ch, &j->png, &j->png_len, NULL, 0))
        return "PNG encoding of the grid failed";
    j->pngs = calloc((size_t)n, sizeof *j->pngs);
    j->png_lens = calloc((size_t)n, sizeof *j->png_lens);
    if (!j->pngs || !j->png_lens)
        return "out of memory encoding the images";
    for (int i = 0; i < n; i++)
        if (io_png_encode(b->pixels + (size_t)i * img, w, h, ch, &j->pngs[i], &j->png_lens[i],
                          NULL, 0))
            return "PNG encoding failed";
    return NULL;
}

/* Decodes (the VAE for latent models, pixel mapping otherwise) and
 * encodes a finished job's images, here on the scheduler thread (the VAE
 * on the engine's workers), timing each part for the job and /metrics.
 * Returns 0 or a message. */
static const char *encode(batcher *b, job *j)
{
    srv *s = b->s;
    double t0 = srv_now();
    j->t_denoised = t0;
    if (dit_decode(b->ctx, j->req.num_images, dit_sampler_result(j->sampler), b->pixels))
        return "decoding the images failed";
    double t1 = srv_now();
    const char *msg = encode_pngs(b, j);
    double t2 = srv_now();
    j->decode_s = t1 - t0;
    j->encode_s = t2 - t1;
    srv_metrics_decode(s->metrics, j->decode_s, msg ? -1 : j->encode_s);
    return msg;
}

/* Removes finished, cancelled and timed-out jobs from the batch. */
static void retire(batcher *b)
{
    job_table *t = b->s->jobs;
    int k = 0;
    for (int i = 0; i < b->n; i++) {
        job *j = b->act[i];
        double now = srv_now();
        if (dit_sampler_done(j->sampler)) {
            const char *msg = encode(b, j);
            dit_sampler_free(j->sampler);
            j->sampler = NULL;
            job_finish(t, j, msg ? JOB_FAILED : JOB_DONE, msg ? 500 : 0, msg, srv_now());
        } else if (job_should_stop(t, j, now)) {
            dit_sampler_free(j->sampler);
            j->sampler = NULL;
            job_finish(t, j, JOB_RUNNING, 0, NULL, now);
        } else {
            b->act[k++] = j;
            continue;
        }
        b->rows -= j->rows;
        job_unref(t, j);
    }
    b->n = k;
}

/* Adds this step's routing counts of each job's rows to the job. */
static void count_routing(batcher *b, const uint32_t *routing)
{
    size_t off = 0;
    for (int i = 0; i < b->n; i++) {
        job *j = b->act[i];
        for (int r = 0; r < b->cur[i]; r++, off++)
            for (size_t e = 0; e < b->le; e++)
                j->experts[e] += routing[off * b->le + e];
    }
}

/* One denoising step of every running job: one forward over all rows. */
static void step(batcher *b)
{
    srv *s = b->s;
    double t0 = srv_now();
    int off = 0;
    for (int i = 0; i < b->n; i++) {
        dit_sampler *smp = b->act[i]->sampler;
        float level = (float)dit_sampler_noise_level(smp);
        int rows = b->cur[i] = dit_sampler_rows(smp); /* may change between steps */
        dit_sampler_inputs(smp, b->x + (size_t)off * b->in_sz, b->t + off, b->y + off);
        dit_sampler_caches(smp, b->cache + off);
        for (int r = 0; r < rows; r++)
            b->noise[off + r] = level;
        off += rows;
    }
    int rc = dit_forward_cached(b->ctx, off, b->x, b->t, b->y, b->cache, b->out);
    if (rc) {
        char msg[128];
        snprintf(msg, sizeof msg, "the model's forward pass failed: %s", dit_strerror(rc));
        for (int i = 0; i < b->n; i++) {
            dit_sampler_free(b->act[i]->sampler);
            b->act[i]->sampler = NULL;
            job_finish(s->jobs, b->act[i], JOB_FAILED, 500, msg, srv_now());
            job_unref(s->jobs, b->act[i]);
        }
        b->n = b->rows = 0;
        return;
    }
    const uint32_t *routing = dit_ctx_routing(b->ctx);
    count_routing(b, routing);
    off = 0;
    for (int i = 0; i < b->n; i++) {
        dit_sampler_update(b->act[i]->sampler, b->out + (size_t)off * b->out_sz);
        off += b->cur[i];
    }
    double t1 = srv_now();
    srv_stats_step(s->stats, off, b->n, routing, b->y, b->noise, t1);
    srv_metrics_step(s->metrics, off, b->n, t1 - t0);
    job_steps_done(s->jobs, b->act, b->n, t1, t1 - t0);
}

static void *batcher_main(void *arg)
{
    batcher *b = arg;
    for (;;) {
        retire(b);
        if (b->n == 0 && !job_wait_work(b->s->jobs))
            break;
        admit(b);
        if (b->n > 0)
            step(b);
    }
    return NULL;
}

int batcher_start(batcher *b)
{
    if (pthread_create(&b->thread, NULL, batcher_main, b))
        return -1;
    b->started = 1;
    return 0;
}

void batcher_join(batcher *b)
{
    if (b && b->started) {
        pthread_join(b->thread, NULL);
        b->started = 0;
    }
}
