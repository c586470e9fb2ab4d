/* routes_jobs.c: generation endpoints.
 *
 *   POST /generate        waits for the job (the connection is suspended,
 *                         never blocking an HTTP thread) and answers the PNG,
 *                         or JSON with Accept: application/json
 *   POST /jobs            queues the job and answers 202 at once
 *   POST /v1/images/generations
 *                         OpenAI's image API over the same jobs: the prompt
 *                         names the class; waits like /generate, answers
 *                         {"created", "data": [{"b64_json"}...]} (+ ours)
 *   GET/DELETE /jobs/{id}, GET /jobs/{id}/image, GET /jobs/{id}/events (SSE)
 *
 * A request is checked twice before it is queued: by request.c (types and
 * the server's limits) and by the engine itself (dit_sampler_new, freed at
 * once: a sampler is small and the model is not run), so everything the
 * engine would refuse is a 400 here rather than a failed job later.
 * Waiting requests register a job_watch whose callback wakes their
 * connection; the watch is removed when the request ends.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "jobs.h"
#include "routes.h"

typedef struct gen_state {
    srv_req *req;
    srv *s;
    job *j;
    job_watch w;
    int watching;
    int sync;                   /* a waiting /generate: its job dies with it */
    int openai;                 /* answer in OpenAI's shape */
    long long created;          /* its "created": Unix time of the request */
    /* server-sent events */
    double last_out;            /* srv_now() of the last bytes written */
    int sent_state;             /* -1: nothing yet */
    int sent_pos, sent_step, ended;
    char *buf;
    size_t len, off, cap;
} gen_state;

static void gen_state_free(void *p)
{
    gen_state *g = p;
    if (!g)
        return;
    if (g->watching)
        job_watch_del(g->s->jobs, g->j, &g->w);
    /* the connection ended (answered, or the client left even before we
     * saw it): an unfinished job of a waiting /generate has no one to go to */
    if (g->sync)
        job_cancel(g->s->jobs, g->j);
    job_unref(g->s->jobs, g->j);
    free(g->buf);
    free(g);
}

/* Attaches a state holding job j (a reference the state now owns) to req
 * and registers the request's wake-up with the job. */
static gen_state *attach(srv_req *req, job *j)
{
    gen_state *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->req = req;
    g->s = req->s;
    g->j = j;
    g->sent_state = -1;
    g->w.fn = req->wake;
    g->w.arg = req->wake_arg;
    req->state = g;
    req->state_free = gen_state_free;
    job_watch_add(req->s->jobs, j, &g->w);
    g->watching = 1;
    return g;
}

static int find_class_cb(void *user, const char *name)
{
    return dit_model_find_class(user, name);
}

void routes_limits(const srv *s, srv_limits *lim)
{
    const srv_config *c = s->cfg;
    const dit_config *m = s->mc;
    *lim = (srv_limits){
        .num_classes = m->num_classes, .max_steps = c->max_steps,
        .max_images = c->max_images, .max_rows = c->max_rows, .max_cfg = c->max_cfg_scale,
        .default_steps = m->default_steps, .default_sampler = m->default_sampler,
        .default_cfg = m->default_cfg_scale, .default_spacing = m->default_spacing,
        .default_cfg_interval = {m->default_cfg_interval[0], m->default_cfg_interval[1]},
        .default_cache = m->default_cache, .image_w = s->img_w, .image_h = s->img_h,
        .find_class = find_class_cb, .user = s->model,
    };
}

/* Parses and checks the body (enum srv_dialect); on failure fills out
 * with a 400. */
static int check_request(srv_req *req, int dialect, srv_gen_req *r, srv_reply *out)
{
    srv *s = req->s;
    srv_limits lim;
    routes_limits(s, &lim);
    char err[512];
    int rc = srv_parse_generate(req->body, req->body_len, &lim, dialect, r, err, sizeof err);
    if (rc) {
        srv_reply_error(out, 400, rc == SRV_PARSE_JSON ? "invalid_json" : "invalid_request", "%s", err);
        /* request.h: a message about one field opens with "name: " */
        size_t n = strspn(err, "abcdefghijklmnopqrstuvwxyz_0123456789");
        if (rc == SRV_PARSE_FIELD && n > 0 && n < sizeof out->err_param && !strncmp(err + n, ": ", 2)) {
            err[n] = 0;
            srv_reply_error_param(out, err);
        }
        return -1;
    }
    if (!r->seed_given) {
        uint32_t v = 0;
        if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
            v = (uint32_t)(srv_now() * 1e6);
        r->seed = v;
    }
    dit_sample_params p;
    dit_sample_params_default(s->model, &p);
    srv_req_params(r, &p);
    dit_sampler *smp = NULL;
    rc = dit_sampler_new(&smp, s->model, &p, err, sizeof err);
    dit_sampler_free(smp);
    if (rc == DIT_E_NOMEM) {
        srv_reply_error(out, 503, "out_of_memory", "out of memory checking the request");
        return -1;
    }
    if (rc) {
        srv_reply_error(out, 400, "invalid_request", "%s", err);
        return -1;
    }
    return 0;
}

/* Milliseconds to the microsecond: more digits would be noise. */
static double ms3(double ms)
{
    return round(ms * 1e3) / 1e3;
}

static cJSON *timings_json(const job_info *in)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "queue_ms", ms3(in->queue_ms));
    cJSON_AddNumberToObject(t, "compute_ms", ms3(in->compute_ms));
    cJSON_AddNumberToObject(t, "decode_ms", ms3(in->decode_ms));
    cJSON_AddNumberToObject(t, "encode_ms", ms3(in->encode_ms));
    cJSON_AddNumberToObject(t, "total_ms", ms3(in->total_ms));
    return t;
}

void routes_sampling_json(cJSON *o, const srv_gen_req *r)
{
    static const char *const CACHE[] = {"off", "fixed", "adaptive"};
    cJSON_AddNumberToObject(o, "steps", r->steps);
    cJSON_AddNumberToObject(o, "cfg_scale", r->cfg_scale);
    cJSON_AddStringToObject(o, "sampler", dit_sampler_name(r->sampler));
    cJSON_AddNumberToObject(o, "num_images", r->num_images);
    cJSON_AddStringToObject(o, "cfg_mode", r->cfg_mode == DIT_CFG_ALL ? "all" : "upstream");
    cJSON_AddStringToObject(o, "rng", r->rng == DIT_RNG_TORCH ? "torch" : "default");
    cJSON_AddStringToObject(o, "spacing", dit_spacing_name(r->spacing));
    cJSON *iv = cJSON_AddArrayToObject(o, "cfg_interval");
    cJSON_AddItemToArray(iv, cJSON_CreateNumber(r->cfg_interval[0]));
    cJSON_AddItemToArray(iv, cJSON_CreateNumber(r->cfg_interval[1]));
    cJSON *c = cJSON_AddObjectToObject(o, "cache");
    cJSON_AddStringToObject(c, "mode", CACHE[r->cache.mode]);
    if (r->cache.mode == DIT_CACHE_FIXED)
        cJSON_AddNumberToObject(c, "interval", r->cache.interval);
    if (r->cache.mode == DIT_CACHE_ADAPTIVE)
        cJSON_AddNumberToObject(c, "threshold", r->cache.threshold);
}

static cJSON *params_json(const srv *s, const job *j)
{
    const srv_gen_req *r = &j->req;
    const char *name = dit_model_class_name(s->model, r->class_label);
    cJSON *p = cJSON_CreateObject();
    cJSON_AddNumberToObject(p, "class_label", r->class_label);
    if (name)
        cJSON_AddStringToObject(p, "class_name", name);
    cJSON_AddNumberToObject(p, "seed", (double)r->seed);
    routes_sampling_json(p, r);
    return p;
}

static cJSON *experts_json(const srv *s, const job *j)
{
    int L = s->mc->depth, E = s->mc->num_experts;
    cJSON *a = cJSON_CreateArray();
    for (int l = 0; l < L; l++) {
        cJSON *row = cJSON_CreateArray();
        for (int e = 0; e < E; e++)
            cJSON_AddItemToArray(row, cJSON_CreateNumber((double)j->experts[(size_t)l * E + e]));
        cJSON_AddItemToArray(a, row);
    }
    return a;
}

/* The job's status document (GET /jobs/{id}, 202 of POST /jobs). */
static cJSON *status_json(const srv *s, job *j, const job_info *in)
{
    char url[64];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "status", job_state_name(in->state));
    cJSON_AddNumberToObject(o, "step", in->step);
    cJSON_AddNumberToObject(o, "steps", in->steps);
    if (in->state == JOB_QUEUED)
        cJSON_AddNumberToObject(o, "queue_position", in->queue_position);
    else
        cJSON_AddNullToObject(o, "queue_position");
    cJSON_AddItemToObject(o, "timings", timings_json(in));
    cJSON_AddItemToObject(o, "params", params_json(s, j));
    if (in->state == JOB_DONE) {
        snprintf(url, sizeof url, "/jobs/%s/image", j->id);
        cJSON_AddStringToObject(o, "image", url);
        cJSON_AddItemToObject(o, "experts", experts_json(s, j)); /* (L, E) routing counts */
    }
    if (in->state == JOB_FAILED || in->state == JOB_CANCELLED)
        cJSON_AddStringToObject(o, "error", in->err);
    return o;
}

static int reply_cjson(srv_reply *out, int status, cJSON *root)
{
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return srv_reply_text(out, status, "application/json", text);
}

static char *base64(const uint8_t *p, size_t n)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = malloc(4 * ((n + 2) / 3) + 1), *q = o;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *q++ = A[v >> 18 & 63];
        *q++ = A[v >> 12 & 63];
        *q++ = i + 1 < n ? A[v >> 6 & 63] : '=';
        *q++ = i + 2 < n ? A[v & 63] : '=';
    }
    *q = 0;
    return o;
}

static void timing_headers(srv_reply *out, const job *j, const job_info *in)
{
    srv_reply_header(out, "X-Job-Id", "%s", j->id);
    srv_reply_header(out, "X-Seed", "%llu", (unsigned long long)j->req.seed);
    srv_reply_header(out, "X-Queue-Ms", "%.1f", in->queue_ms);
    srv_reply_header(out, "X-Compute-Ms", "%.1f", in->compute_ms);
    srv_reply_header(out, "X-Decode-Ms", "%.3f", in->decode_ms);
    srv_reply_header(out, "X-Encode-Ms", "%.3f", in->encode_ms);
    srv_reply_header(out, "X-Total-Ms", "%.1f", in->total_ms);
    srv_reply_header(out, "X-Steps", "%d", in->steps);
}

/* The PNG of a done job (a copy: the reply owns its body). */
static int reply_png(srv_reply *out, const job *j, const job_info *in)
{
    char *body = malloc(j->png_len);
    if (!body) {
        srv_reply_error(out, 503, "out_of_memory", "out of memory");
        return ROUTE_DONE;
    }
    memcpy(body, j->png, j->png_len);
    srv_reply_body(out, 200, "image/png", body, j->png_len);
    timing_headers(out, j, in);
    return ROUTE_DONE;
}

/* The JSON answer of a done job; g (may be NULL) says whether it goes out
 * in OpenAI's shape ("created" first, each image's class as its
 * revised_prompt); our fields follow either way. */
static int reply_generated_json(srv_reply *out, const srv *s, const job *j, const job_info *in,
                                const gen_state *g)
{
    cJSON *root = cJSON_CreateObject();
    if (g && g->openai)
        cJSON_AddNumberToObject(root, "created", (double)g->created);
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    const char *name = dit_model_class_name(s->model, j->req.class_label);
    cJSON_AddStringToObject(root, "id", j->id);
    for (int i = 0; i < j->req.num_images; i++) {
        const uint8_t *png = j->pngs ? j->pngs[i] : j->png;
        char *b64 = base64(png, j->pngs ? j->png_lens[i] : j->png_len);
        cJSON *item = cJSON_CreateObject();
        if (!b64 || !cJSON_AddStringToObject(item, "b64_json", b64)) {
            free(b64);
            cJSON_Delete(item);
            cJSON_Delete(root);
            srv_reply_error(out, 503, "out_of_memory", "out of memory");
            return ROUTE_DONE;
        }
        free(b64);
        if (g && g->openai && name)
            cJSON_AddStringToObject(item, "revised_prompt", name);
        cJSON_AddItemToArray(data, item);
    }
    cJSON_AddNumberToObject(root, "seed", (double)j->req.seed);
    cJSON_AddItemToObject(root, "params", params_json(s, j));
    cJSON_AddItemToObject(root, "timings", timings_json(in));
    cJSON_AddItemToObject(root, "experts", experts_json(s, j));
    reply_cjson(out, 200, root);
    timing_headers(out, j, in);
    return ROUTE_DONE;
}

static int wants_json(srv_req *req)
{
    const char *a = req->header(req, "Accept");
    return a && strstr(a, "application/json") && !strstr(a, "image/png");
}

/* The answer to a finished job's waiting /generate. */
static int reply_finished(srv_req *req, srv_reply *out, job *j, const job_info *in)
{
    const gen_state *g = req->state;
    if (in->state == JOB_DONE)
        return (g && g->openai) || wants_json(req) ? reply_generated_json(out, req->s, j, in, g)
                                                   : reply_png(out, j, in);
    if (in->state == JOB_CANCELLED)
        srv_reply_error(out, 409, "cancelled", "job %s was cancelled (DELETE /jobs/%s)", j->id, j->id);
    else
        srv_reply_error(out, in->err_status ? in->err_status : 500,
                        in->err_status == 504 ? "timeout" : in->err_status == 503 ? "unavailable"
                        : in->err_status == 400 ? "invalid_request" : "internal",
                        "job %s failed: %s", j->id, in->err);
    srv_reply_header(out, "X-Job-Id", "%s", j->id);
    return ROUTE_DONE;
}

/* Re-entry of a waiting /generate: answer if finished, else keep waiting. */
static int generate_wait(srv_req *req, srv_reply *out)
{
    gen_state *g = req->state;
    job_info in;
    if (req->gone) {
        job_cancel(g->s->jobs, g->j); /* frees its place in the queue or batch */
        return ROUTE_CLOSE;
    }
    job_get_info(g->s->jobs, g->j, &in);
    if (in.state >= JOB_DONE)
        return reply_finished(req, out, g->j, &in);
    if (req->stopping) {
        job_cancel(g->s->jobs, g->j);
        srv_reply_error(out, 503, "unavailable", "the server is shutting down");
        return ROUTE_DONE;
    }
    return ROUTE_PENDING;
}

int routes_generate(srv_req *req, srv_reply *out, int how)
{
    if (req->state)
        return generate_wait(req, out);
    srv *s = req->s;
    srv_gen_req r;
    if (check_request(req, how == ROUTE_GEN_OPENAI ? SRV_OPENAI : SRV_NATIVE, &r, out))
        return ROUTE_DONE;
    job *j = NULL;
    int rc = job_submit(s->jobs, &r, req->client, &j);
    if (rc == JOB_E_FULL || rc == JOB_E_CLIENT) {
        int wait = job_retry_after(s->jobs, rc == JOB_E_CLIENT ? req->client : NULL);
        if (rc == JOB_E_FULL)
            srv_reply_error(out, 429, "queue_full", "the queue is full (%d jobs): retry in about "
                            "%d s", s->cfg->queue_capacity, wait);
        else
            srv_reply_error(out, 429, "client_limit", "%s already has %d jobs queued or running "
                            "(max_jobs_per_client): retry in about %d s", req->client,
                            s->cfg->max_jobs_per_client, wait);
        srv_reply_header(out, "Retry-After", "%d", wait);
        return ROUTE_DONE;
    }
    if (rc) {
        srv_reply_error(out, 503, "unavailable", "%s", rc == JOB_E_STOPPING ?
                        "the server is shutting down" : "out of memory queueing the job");
        return ROUTE_DONE;
    }
    snprintf(req->job_id, sizeof req->job_id, "%s", j->id);
    if (how == ROUTE_GEN_ASYNC) {
        job_info in;
        job_get_info(s->jobs, j, &in);
        srv_reply_header(out, "Location", "/jobs/%s", j->id);
        cJSON *o = status_json(s, j, &in);
        job_unref(s->jobs, j);
        return reply_cjson(out, 202, o);
    }
    gen_state *g = attach(req, j);
    if (!g) {
        job_cancel(s->jobs, j);
        job_unref(s->jobs, j);
        srv_reply_error(out, 503, "out_of_memory", "out of memory");
        return ROUTE_DONE;
    }
    g->sync = 1;
    g->openai = how == ROUTE_GEN_OPENAI;
    g->created = (long long)time(NULL);
    /* the job may have ended before the watch was registered */
    return generate_wait(req, out);
}

/* ---- server-sent events -------------------------------------------------- */

/* Room for `more` bytes after g->len (the buffer only grows). */
static int sse_reserve(gen_state *g, size_t more)
{
    size_t need = g->len + more;
    if (need <= g->cap)
        return 0;
    char *b = realloc(g->buf, need * 2);
    if (!b)
        return -1;
    g->buf = b;
    g->cap = need * 2;
    return 0;
}

static void sse_put(gen_state *g, const char *event, cJSON *data)
{
    char *text = cJSON_PrintUnformatted(data);
    cJSON_Delete(data);
    if (text && !sse_reserve(g, strlen(event) + strlen(text) + 32))
        g->len += (size_t)sprintf(g->buf + g->len, "event: %s\ndata: %s\n\n", event, text);
    free(text);
}

static cJSON *event_base(gen_state *g, const job_info *in)
{
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "id", g->j->id);
    cJSON_AddStringToObject(d, "status", job_state_name(in->state));
    return d;
}

/* Appends the events for everything that happened since the last call. */
static void sse_collect(gen_state *g)
{
    job_info in;
    job_get_info(g->s->jobs, g->j, &in);
    if (in.state == JOB_QUEUED && (g->sent_state != JOB_QUEUED || in.queue_position != g->sent_pos)) {
        cJSON *d = event_base(g, &in);
        cJSON_AddNumberToObject(d, "queue_position", in.queue_position);
        sse_put(g, "queued", d);
        g->sent_pos = in.queue_position;
    }
    if (g->sent_state < (int)JOB_RUNNING && (in.state == JOB_RUNNING || in.step > 0)) {
        cJSON *d = event_base(g, &in);
        cJSON_ReplaceItemInObject(d, "status", cJSON_CreateString("running"));
        sse_put(g, "running", d);
    }
    for (; g->sent_step < in.step; g->sent_step++) {
        cJSON *d = event_base(g, &in);
        cJSON_ReplaceItemInObject(d, "status", cJSON_CreateString("running"));
        cJSON_AddNumberToObject(d, "step", g->sent_step + 1);
        cJSON_AddNumberToObject(d, "steps", in.steps);
        double ms = job_step_ms(g->s->jobs, g->j, g->sent_step);
        cJSON_AddNumberToObject(d, "elapsed_ms", ms3(ms));
        sse_put(g, "step", d);
    }
    g->sent_state = (int)in.state;
    if (in.state >= JOB_DONE) {
        cJSON *d = status_json(g->s, g->j, &in);
        sse_put(g, job_state_name(in.state), d);
        g->ended = 1;
    }
}

/* A ": keep-alive" comment line when the stream has been silent for
 * sse_keepalive_s, so proxies with read timeouts keep it open while the
 * job waits in the queue or between slow steps, or when http.c asks for a
 * ping (srv_req.ping). EventSource ignores it. */
static void sse_keepalive(gen_state *g, double now)
{
    static const char line[] = ": keep-alive\n\n";
    int ka = g->s->cfg->sse_keepalive_s;
    if ((g->req->ping || (ka && now >= g->last_out + ka)) && !sse_reserve(g, sizeof line)) {
        memcpy(g->buf + g->len, line, sizeof line - 1);
        g->len += sizeof line - 1;
    }
}

static long sse_read(void *state, char *buf, size_t max)
{
    gen_state *g = state;
    double now = srv_now();
    if (g->off == g->len) {
        g->off = g->len = 0;
        if (g->ended || g->req->stopping)
            return -1;
        sse_collect(g);
        if (g->len == 0)
            sse_keepalive(g, now);
        if (g->len == 0)
            return 0;
    }
    size_t n = g->len - g->off < max ? g->len - g->off : max;
    memcpy(buf, g->buf + g->off, n);
    g->off += n;
    g->last_out = now;
    /* http.c resumes the suspended stream then, even if the job is quiet */
    g->req->resume_at = g->s->cfg->sse_keepalive_s ? now + g->s->cfg->sse_keepalive_s : 0;
    return (long)n;
}

/* ---- /jobs/{id} ------------------------------------------------------------ */

static int job_events(srv_req *req, srv_reply *out, job *j)
{
    if (!strcmp(req->method, "HEAD")) { /* the headers a GET would get, no stream */
        job_unref(req->s->jobs, j);
        out->status = 200;
        out->ctype = "text/event-stream";
        srv_reply_header(out, "Cache-Control", "no-cache");
        return ROUTE_DONE;
    }
    gen_state *g = attach(req, j);
    if (!g) {
        job_unref(req->s->jobs, j);
        srv_reply_error(out, 503, "out_of_memory", "out of memory");
        return ROUTE_DONE;
    }
    req->stream = sse_read;
    g->last_out = srv_now();
    req->resume_at = req->s->cfg->sse_keepalive_s ? g->last_out + req->s->cfg->sse_keepalive_s : 0;
    out->status = 200;
    out->ctype = "text/event-stream";
    out->stream = 1;
    srv_reply_header(out, "Cache-Control", "no-cache");
    srv_reply_header(out, "X-Accel-Buffering", "no");
    return ROUTE_DONE;
}

static int job_image(srv_reply *out, job *j, const job_info *in)
{
    if (in->state == JOB_DONE)
        return reply_png(out, j, in);
    if (in->state == JOB_QUEUED || in->state == JOB_RUNNING)
        srv_reply_error(out, 409, "not_ready", "job %s is %s (step %d of %d): the image is not "
                        "ready yet", j->id, job_state_name(in->state), in->step, in->steps);
    else
        srv_reply_error(out, 409, "no_image", "job %s %s: %s", j->id, job_state_name(in->state), in->err);
    return ROUTE_DONE;
}

int routes_job(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    srv *s = req->s;
    if (req->state) { /* an answered events stream is never re-entered */
        srv_reply_error(out, 500, "internal", "%s: request handled twice", req->path);
        return ROUTE_DONE;
    }
    job *j = job_find(s->jobs, id);
    if (!j) {
        srv_reply_error(out, 404, "not_found", "no job '%.64s' (finished jobs are kept %d s, "
                        "at most %d of them)", id, s->cfg->job_retention_s, s->cfg->job_retention_count);
        return ROUTE_DONE;
    }
    snprintf(req->job_id, sizeof req->job_id, "%s", j->id);
    if (sub && !strcmp(sub, "events"))
        return job_events(req, out, j); /* the stream owns the reference */
    job_info in;
    int del = !strcmp(req->method, "DELETE"), took = del && job_cancel(s->jobs, j), rc;
    job_get_info(s->jobs, j, &in);
    if (sub) {
        rc = job_image(out, j, &in);
    } else if (del && !took) {
        srv_reply_error(out, 409, "finished", "job %s already ended (%s): nothing to cancel",
                        j->id, job_state_name(in.state));
        rc = ROUTE_DONE;
    } else {
        cJSON *o = status_json(s, j, &in);
        if (del) /* a running job stops at the next step boundary */
            cJSON_AddBoolToObject(o, "cancel_requested", 1);
        rc = reply_cjson(out, 200, o);
    }
    job_unref(s->jobs, j);
    return rc;
}
