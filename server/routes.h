/* routes.h: what a request asks for and what the server answers, without
 * libmicrohttpd types, and the dispatcher that maps one to the other.
 *
 * http.c fills an srv_req per request, calls routes_handle, and turns the
 * srv_reply into a libmicrohttpd response. A route that must wait for a job
 * (POST /generate) returns ROUTE_PENDING after registering req->wake with
 * the job: http.c then suspends the connection, and calls routes_handle
 * again once woken (by the job, a client disconnect or shutdown). A
 * streaming route (server-sent events) answers a reply with `stream` set;
 * http.c calls req->stream for the body and suspends when it has nothing.
 */
#ifndef SRV_ROUTES_H
#define SRV_ROUTES_H

#include <stddef.h>
#include <stdint.h>

#include "request.h"
#include "srv.h"

#define SRV_MAX_HEADERS 12

typedef struct srv_reply {
    int status;
    const char *ctype;                 /* static string */
    char *body;                        /* malloc'd, owned by the reply; NULL: empty */
    size_t len;
    int fd;                            /* >= 0: the body is this file (owned) */
    uint64_t fd_size;
    int stream;                        /* 1: the body comes from req->stream */
    int nhdr;
    char hdr_name[SRV_MAX_HEADERS][32];
    char hdr_value[SRV_MAX_HEADERS][256];
    /* an error reply's parts (srv_reply_error), so that it can be rendered
     * again in OpenAI's shape on the OpenAI routes (srv_reply_openai) */
    int is_error;
    char err_type[32];
    char err_param[48];                /* the request field at fault; "" = none */
    char err_msg[512];                 /* valid UTF-8 */
} srv_reply;

typedef struct srv_req srv_req;
struct srv_req {
    srv *s;
    const char *method;                /* GET, HEAD, POST, DELETE, ... */
    const char *path;                  /* decoded path, no query */
    const char *body;                  /* request body, body_len bytes */
    size_t body_len;
    char client[64];                   /* client address (proxy header if trusted) */
    /* header lookup, case-insensitive; NULL when absent */
    const char *(*header)(const srv_req *r, const char *name);
    void *http;                        /* http.c's own request state */
    /* set by http.c before re-entering routes_handle */
    int gone;                          /* the client disconnected */
    int stopping;                      /* the server is shutting down: answer now */
    /* a waiting route registers wake(wake_arg) with its job; thread-safe */
    void (*wake)(void *arg);
    void *wake_arg;
    /* route-owned state, freed by state_free when the request ends */
    void *state;
    void (*state_free)(void *state);
    /* body writer of a streaming reply: bytes written (> 0), 0 when there
     * is nothing yet (http.c suspends until woken), -1 at the end */
    long (*stream)(void *state, char *buf, size_t max);
    /* a stream with nothing to send is suspended until woken, or until this
     * srv_now() time if set (for keep-alive comments); set by the writer */
    double resume_at;
    /* set by http.c before calling stream: write something now, even with
     * nothing new (a keep-alive comment): the client's end-of-input came,
     * and only a write tells one that left from one that half-closed */
    int ping;
    /* for the access log: the job this request made or read, if any */
    char job_id[SRV_JOB_ID_MAX];
};

enum { ROUTE_DONE = 0, ROUTE_PENDING = 1, ROUTE_CLOSE = 2 };

/* Handles a request: ROUTE_DONE with *out filled (the caller owns it and
 * frees it with srv_reply_free), ROUTE_PENDING (wait for req->wake), or
 * ROUTE_CLOSE (drop the connection: the client is gone). */
int routes_handle(srv_req *req, srv_reply *out);

/* ---- replies (json_err.c) ---------------------------------------------- */

/* Zeroes a reply (fd -1). */
void srv_reply_init(srv_reply *r);
/* Frees the body and closes the fd; leaves r initialized. */
void srv_reply_free(srv_reply *r);
/* Adds a header (name and value truncated to fit). */
void srv_reply_header(srv_reply *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Takes ownership of a malloc'd body. */
void srv_reply_body(srv_reply *r, int status, const char *ctype, char *body, size_t len);
/* Takes a malloc'd NUL-terminated body; NULL (an allocation failed on the
 * way) becomes a 503 error instead. Returns ROUTE_DONE. */
int srv_reply_text(srv_reply *r, int status, const char *ctype, char *text);
/* A JSON body printed from text (copied). */
void srv_reply_json(srv_reply *r, int status, const char *json);
/* {"error": {"code": status, "type": type, "message": ...}}. The message
 * is made valid UTF-8 (a byte that starts no valid character becomes
 * U+FFFD) whatever client input it quotes. */
void srv_reply_error(srv_reply *r, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Names the request field an error reply is about (OpenAI's "param"). */
void srv_reply_error_param(srv_reply *r, const char *param);
/* Renders an error reply again in OpenAI's shape, {"error": {"message",
 * "type", "param", "code"}} with OpenAI's type for the status and ours as
 * the code; other replies are left alone. */
void srv_reply_openai(srv_reply *r);
/* 1 for the paths OpenAI's SDKs call (/v1/images/..., /v1/models[/...]),
 * whose errors take OpenAI's shape; our own /v1/model keeps ours. */
int srv_openai_path(const char *path);
/* The error body alone (for answers written outside a route): malloc'd
 * JSON, NULL when out of memory. */
char *srv_error_json(int status, const char *type, const char *msg, const char *param, int openai);
/* Copies in to out (n bytes with the NUL), valid UTF-8: invalid bytes
 * become U+FFFD and the text is cut on a character boundary to fit. */
void srv_utf8_copy(const char *in, char *out, size_t n);

/* ---- route groups ------------------------------------------------------ */

/* routes_jobs.c: POST /generate, POST /jobs, POST /v1/images/generations,
 * /jobs/{id}[/image|/events]. how: one of enum route_gen. */
enum route_gen {
    ROUTE_GEN_WAIT = 0,   /* /generate: wait, answer PNG (or JSON by Accept) */
    ROUTE_GEN_ASYNC = 1,  /* /jobs: 202 at once */
    ROUTE_GEN_OPENAI = 2, /* /v1/images/generations: OpenAI's body, wait, JSON */
};
int routes_generate(srv_req *req, srv_reply *out, int how);
int routes_job(srv_req *req, srv_reply *out, const char *id, const char *sub);
/* The limits and model defaults request bodies are parsed against. */
void routes_limits(const srv *s, srv_limits *lim);
struct cJSON;
/* Adds r's sampling settings (steps, cfg_scale, sampler, num_images,
 * cfg_mode, rng, spacing, cfg_interval, cache) to the JSON object o, in
 * the request's own spelling: a job's "params" and /v1/model's
 * "sampling_defaults" both say them this way. */
void routes_sampling_json(struct cJSON *o, const srv_gen_req *r);

/* static.c: GET/HEAD of files under the web root. */
int routes_static(srv_req *req, srv_reply *out);

/* introspect.c: /v1/model, /v1/models[/{id}] (OpenAI's list and model
 * object; id NULL for the list), /stats, /stats/routing, /metrics. */
int routes_model(srv_req *req, srv_reply *out);
int routes_models(srv_req *req, srv_reply *out, const char *id);
int routes_stats(srv_req *req, srv_reply *out);
int routes_stats_routing(srv_req *req, srv_reply *out);
int routes_metrics(srv_req *req, srv_reply *out);

#endif
