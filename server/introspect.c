/* introspect.c: GET /v1/model, GET /v1/models[/{id}], GET /stats,
 * GET /stats/routing and GET /metrics.
 *
 * Read-only views of the model and of the server's counters; each builds
 * its document on request (they are small next to an image). Paths are
 * reported by their last component only ("fashion-mnist"): where the
 * server's files lie is none of a client's business.
 */
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batcher.h"
#include "jobs.h"
#include "metrics.h"
#include "routes.h"
#include "stats.h"

/* Integer fields copied into a JSON object: name and offset in the struct. */
typedef struct int_field {
    const char *name;
    size_t off;
} int_field;

static void add_ints(cJSON *o, const void *base, const int_field *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cJSON_AddNumberToObject(o, f[i].name, *(const int *)((const char *)base + f[i].off));
}

#define F(s, name) {#name, offsetof(s, name)}
static const int_field CONFIG_INTS[] = {
    F(dit_config, input_size), F(dit_config, patch_size), F(dit_config, in_channels),
    F(dit_config, hidden_size), F(dit_config, depth), F(dit_config, num_heads),
    F(dit_config, num_classes), F(dit_config, num_experts), F(dit_config, num_experts_per_tok),
    F(dit_config, n_shared_experts), F(dit_config, num_tokens),
};
static const int_field LIMIT_INTS[] = {
    F(srv_config, max_steps), F(srv_config, max_images),
    {"max_rows_per_step", offsetof(srv_config, max_rows)}, F(srv_config, queue_capacity),
    F(srv_config, max_body_bytes), F(srv_config, request_timeout_s),
    F(srv_config, job_retention_s), F(srv_config, job_retention_count),
    F(srv_config, max_jobs_per_client),
};
#undef F

/* The last component of path ("a/b/" -> "b"), into out. */
static const char *base_name(const char *path, char *out, size_t n)
{
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/')
        start--;
    snprintf(out, n, "%.*s", (int)(len - start), path + start);
    return out;
}

static void add_config(cJSON *root, const dit_config *c)
{
    cJSON *o = cJSON_AddObjectToObject(root, "config");
    add_ints(o, c, CONFIG_INTS, sizeof CONFIG_INTS / sizeof CONFIG_INTS[0]);
    cJSON_AddNumberToObject(o, "mlp_ratio", c->mlp_ratio);
    cJSON_AddBoolToObject(o, "learn_sigma", c->learn_sigma);
    cJSON_AddStringToObject(o, "prediction",
                            c->prediction == DIT_PRED_VELOCITY ? "velocity" : "epsilon");
    if (c->preset)
        cJSON_AddStringToObject(o, "preset", c->preset);
    char name[256];
    if (c->vae_dir)
        cJSON_AddStringToObject(o, "vae", base_name(c->vae_dir, name, sizeof name));
}

static void add_limits(cJSON *root, const srv *s)
{
    const srv_config *c = s->cfg;
    cJSON *o = cJSON_AddObjectToObject(root, "limits");
    add_ints(o, c, LIMIT_INTS, sizeof LIMIT_INTS / sizeof LIMIT_INTS[0]);
    cJSON_AddNumberToObject(o, "cfg_scale_min", 1.0);
    cJSON_AddNumberToObject(o, "cfg_scale_max", c->max_cfg_scale);
    cJSON *srvj = cJSON_AddObjectToObject(root, "server");
    cJSON_AddStringToObject(srvj, "instance_id", s->instance);
    cJSON_AddBoolToObject(srvj, "batching", c->batching);
    cJSON_AddNumberToObject(srvj, "threads", s->n_threads);
    cJSON_AddNumberToObject(srvj, "blas_threads", s->blas_threads);
    cJSON_AddNumberToObject(srvj, "ctx_bytes", (double)batcher_ctx_bytes(s->batcher));
}

/* "samplers": the engine's sampler table, each with the predictions it
 * supports and whether this model's prediction is one of them. */
static void add_samplers(cJSON *root, int prediction)
{
    static const char *const PRED[] = {"epsilon", "velocity"};
    cJSON *a = cJSON_AddArrayToObject(root, "samplers");
    for (int k = 0; k < dit_sampler_count(); k++) {
        const dit_sampler_desc *d = dit_sampler_info(k);
        cJSON *o = cJSON_CreateObject(), *al = cJSON_CreateArray(), *pr = cJSON_CreateArray();
        cJSON_AddStringToObject(o, "name", d->name);
        for (const char *p = d->aliases; *p;) { /* comma-separated */
            size_t l = strcspn(p, ",");
            char one[32];
            snprintf(one, sizeof one, "%.*s", (int)l, p);
            cJSON_AddItemToArray(al, cJSON_CreateString(one));
            p += l + (p[l] == ',');
        }
        cJSON_AddItemToObject(o, "aliases", al);
        for (int i = 0; i < 2; i++)
            if (d->predictions >> i & 1u)
                cJSON_AddItemToArray(pr, cJSON_CreateString(PRED[i]));
        cJSON_AddItemToObject(o, "predictions", pr);
        cJSON_AddBoolToObject(o, "supported", dit_sampler_supports(k, prediction));
        cJSON_AddNumberToObject(o, "evals_per_step", d->evals_per_step);
        cJSON_AddNumberToObject(o, "order", d->order);
        cJSON_AddBoolToObject(o, "spacing", d->spacing);
        cJSON_AddStringToObject(o, "summary", d->summary);
        cJSON_AddItemToArray(a, o);
    }
}

int routes_model(srv_req *req, srv_reply *out)
{
    srv *s = req->s;
    const dit_config *c = s->mc;
    dit_model_info info;
    dit_model_get_info(s->model, &info);
    cJSON *root = cJSON_CreateObject();
    char name[256];
    cJSON_AddStringToObject(root, "model", base_name(s->model_path, name, sizeof name));
    add_config(root, c);
    cJSON *img = cJSON_AddObjectToObject(root, "image");
    cJSON_AddNumberToObject(img, "width", s->img_w);
    cJSON_AddNumberToObject(img, "height", s->img_h);
    cJSON_AddNumberToObject(img, "channels", s->img_ch);
    cJSON *cls = cJSON_AddArrayToObject(root, "classes");
    for (int k = 0; k < c->num_classes; k++) {
        const char *name = dit_model_class_name(s->model, k);
        cJSON_AddItemToArray(cls, name ? cJSON_CreateString(name) : cJSON_CreateNull());
    }
    cJSON *p = cJSON_AddObjectToObject(root, "parameters");
    cJSON_AddNumberToObject(p, "total", (double)info.params_total);
    cJSON_AddNumberToObject(p, "active_per_token", (double)info.params_active);
    cJSON_AddNumberToObject(p, "weight_bytes", (double)info.weight_bytes);
    cJSON_AddStringToObject(p, "weight_dtype", info.weight_dtype ? info.weight_dtype : "?");
    cJSON_AddBoolToObject(p, "weights_packed", info.packed);
    cJSON *held = cJSON_AddObjectToObject(p, "weight_bytes_by_dtype");
    for (int i = 0; i < info.n_dtypes; i++)
        cJSON_AddNumberToObject(held, info.held[i].dtype, (double)info.held[i].bytes);
    cJSON_AddNumberToObject(p, "resident_bytes", (double)info.resident_bytes);
    cJSON_AddStringToObject(p, "kernel", info.kernel ? info.kernel : "?");
    /* what a body naming only its class runs with, from the same source
     * the request parser starts from */
    srv_limits lim;
    srv_gen_req dflt;
    routes_limits(s, &lim);
    srv_req_defaults(&lim, &dflt);
    routes_sampling_json(cJSON_AddObjectToObject(root, "sampling_defaults"), &dflt);
    add_samplers(root, c->prediction);
    add_limits(root, s);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return srv_reply_text(out, 200, "application/json", text);
}

/* OpenAI's model object for the one model served. */
static cJSON *openai_model(const srv *s)
{
    char name[256];
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", base_name(s->model_path, name, sizeof name));
    cJSON_AddStringToObject(m, "object", "model");
    /* the server's start, as Unix time (the model has no other date) */
    cJSON_AddNumberToObject(m, "created", (double)(long long)(time(NULL) - (srv_now() - s->t_start)));
    cJSON_AddStringToObject(m, "owned_by", "ditmoe");
    return m;
}

int routes_models(srv_req *req, srv_reply *out, const char *id)
{
    srv *s = req->s;
    char name[256];
    base_name(s->model_path, name, sizeof name);
    if (id && strcmp(id, name)) {
        srv_reply_error(out, 404, "model_not_found", "the model '%.64s' does not exist: this "
                        "server has '%s' (GET /v1/models)", id, name);
        srv_reply_error_param(out, "model");
        return ROUTE_DONE;
    }
    cJSON *root;
    if (id) {
        root = openai_model(s);
    } else {
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "object", "list");
        cJSON *data = cJSON_AddArrayToObject(root, "data");
        cJSON_AddItemToArray(data, openai_model(s));
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return srv_reply_text(out, 200, "application/json", text);
}

int routes_stats(srv_req *req, srv_reply *out)
{
    srv *s = req->s;
    int queued, running;
    job_counts(s->jobs, &queued, &running);
    double now = srv_now();
    char *text = srv_stats_json(s->stats, s->model, queued, running, s->cfg->queue_capacity, now,
                                now - s->t_start);
    return srv_reply_text(out, 200, "application/json", text);
}

int routes_stats_routing(srv_req *req, srv_reply *out)
{
    srv *s = req->s;
    return srv_reply_text(out, 200, "application/json",
                          srv_stats_routing_json(s->stats, s->model, srv_now()));
}

int routes_metrics(srv_req *req, srv_reply *out)
{
    srv *s = req->s;
    int queued, running, L = s->mc->depth, E = s->mc->num_experts;
    job_counts(s->jobs, &queued, &running);
    uint64_t *tokens = calloc((size_t)L * (size_t)E, sizeof *tokens);   /* (L, E) */
    double *mi = calloc(4 * (size_t)L, sizeof *mi);                     /* (2, 2, L) */
    size_t len = 0;
    char *text = NULL;
    if (tokens && mi && !srv_stats_routing_mi(s->stats, srv_now(), mi, mi + 2 * L)) {
        srv_stats_totals(s->stats, tokens);
        srv_metrics_routing r = {L, E, tokens, mi, mi + 2 * L};
        text = srv_metrics_text(s->metrics, queued, running, s->cfg->queue_capacity, &r, &len);
    }
    free(tokens);
    free(mi);
    (void)len;
    return srv_reply_text(out, 200, "text/plain; version=0.0.4; charset=utf-8", text);
}
