/* routes.c: the route table, authentication, and the small endpoints.
 *
 * Paths are matched exactly, '*' standing for one non-empty segment (a job
 * id). A known path with a wrong method is 405 with an Allow header; an
 * unknown path falls through to the static files (404 when there is no
 * such file). With an API key configured, every route but /health, /ready
 * and the static files needs it, compared in constant time.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "jobs.h"
#include "routes.h"

typedef int (*route_fn)(srv_req *req, srv_reply *out, const char *id, const char *sub);

static int r_health(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)req, (void)id, (void)sub;
    srv_reply_json(out, 200, "{\"status\":\"ok\"}");
    return ROUTE_DONE;
}

static int r_ready(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)id, (void)sub;
    if (atomic_load(&req->s->stopping))
        srv_reply_json(out, 503, "{\"status\":\"stopping\"}");
    else if (!atomic_load(&req->s->ready))
        srv_reply_json(out, 503, "{\"status\":\"loading\"}");
    else
        srv_reply_json(out, 200, "{\"status\":\"ready\"}");
    return ROUTE_DONE;
}

static int r_model(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)id, (void)sub;
    return routes_model(req, out);
}

static int r_models(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)sub;
    return routes_models(req, out, id[0] ? id : NULL);
}

static int r_stats(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)id, (void)sub;
    return routes_stats(req, out);
}

static int r_stats_routing(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)id, (void)sub;
    return routes_stats_routing(req, out);
}

static int r_metrics(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)id, (void)sub;
    return routes_metrics(req, out);
}

static int r_generate(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)id, (void)sub;
    return routes_generate(req, out, ROUTE_GEN_WAIT);
}

static int r_jobs(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)id, (void)sub;
    return routes_generate(req, out, ROUTE_GEN_ASYNC);
}

static int r_openai(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    (void)id, (void)sub;
    return routes_generate(req, out, ROUTE_GEN_OPENAI);
}

static int r_job(srv_req *req, srv_reply *out, const char *id, const char *sub)
{
    return routes_job(req, out, id, sub);
}

static const struct route {
    const char *pattern;
    const char *allow;  /* methods, as sent in Allow */
    int open;           /* 1: no API key needed */
    route_fn fn;
} ROUTES[] = {
    {"/health", "GET, HEAD", 1, r_health},
    {"/ready", "GET, HEAD", 1, r_ready},
    {"/v1/model", "GET, HEAD", 0, r_model},
    {"/v1/models", "GET, HEAD", 0, r_models},
    {"/v1/models/*", "GET, HEAD", 0, r_models},
    {"/stats", "GET, HEAD", 0, r_stats},
    {"/stats/routing", "GET, HEAD", 0, r_stats_routing},
    {"/metrics", "GET, HEAD", 0, r_metrics},
    {"/generate", "POST", 0, r_generate},
    {"/v1/images/generations", "POST", 0, r_openai},
    {"/jobs", "POST", 0, r_jobs},
    {"/jobs/*", "GET, HEAD, DELETE", 0, r_job},
    {"/jobs/*/image", "GET, HEAD", 0, r_job},
    {"/jobs/*/events", "GET, HEAD", 0, r_job},
};
#define NROUTES (sizeof ROUTES / sizeof ROUTES[0])

/* Matches path against pattern; the '*' segment is copied into id and the
 * segment after it (if any) into sub. */
static int match(const char *pattern, const char *path, char *id, size_t idlen, char *sub,
                 size_t sublen)
{
    id[0] = sub[0] = 0;
    while (*pattern && *path) {
        if (*pattern == '*') {
            size_t n = strcspn(path, "/");
            if (n == 0 || n >= idlen)
                return 0;
            memcpy(id, path, n);
            id[n] = 0;
            path += n;
            pattern++;
            if (*pattern == '/' && *path == '/' && pattern[1] && strlen(pattern + 1) < sublen)
                strcpy(sub, pattern + 1);
            continue;
        }
        if (*pattern++ != *path++)
            return 0;
    }
    return !*pattern && !*path;
}

static int method_allowed(const char *allow, const char *method)
{
    size_t n = strlen(method);
    for (const char *p = allow; (p = strstr(p, method)); p += n)
        if ((p == allow || p[-1] == ' ') && (p[n] == ',' || !p[n]))
            return 1;
    return 0;
}

/* Constant-time comparison: the time taken depends only on the lengths. */
static int key_equal(const char *given, const char *key)
{
    size_t gl = strlen(given), kl = strlen(key);
    unsigned diff = (unsigned)(gl ^ kl);
    for (size_t i = 0; i < kl; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)(i < gl ? given[i] : 0);
    return diff == 0;
}

static int authorized(srv_req *req)
{
    const char *key = req->s->cfg->api_key;
    if (!key[0])
        return 1;
    const char *h = req->header(req, "X-Api-Key");
    if (h && key_equal(h, key))
        return 1;
    h = req->header(req, "Authorization");
    if (h && !strncasecmp(h, "Bearer ", 7)) {
        h += 7;
        while (*h == ' ')
            h++;
        return key_equal(h, key);
    }
    return 0;
}

int routes_handle(srv_req *req, srv_reply *out)
{
    char id[64], sub[16];
    const char *method = !strcmp(req->method, "HEAD") ? "GET" : req->method;
    for (size_t i = 0; i < NROUTES; i++) {
        const struct route *r = &ROUTES[i];
        if (!match(r->pattern, req->path, id, sizeof id, sub, sizeof sub))
            continue;
        if (!method_allowed(r->allow, method)) {
            srv_reply_error(out, 405, "method_not_allowed", "%s %s: method not allowed: use %s",
                            req->method, req->path, r->allow);
            srv_reply_header(out, "Allow", "%s", r->allow);
            return ROUTE_DONE;
        }
        if (!r->open && !authorized(req)) {
            srv_reply_error(out, 401, "unauthorized", "%s: a valid API key is required "
                            "('Authorization: Bearer KEY' or 'X-Api-Key: KEY')", req->path);
            srv_reply_header(out, "WWW-Authenticate", "Bearer");
            return ROUTE_DONE;
        }
        if (!r->open && !atomic_load(&req->s->ready)) {
            srv_reply_error(out, 503, "loading", "the model is still loading: retry shortly");
            srv_reply_header(out, "Retry-After", "1");
            return ROUTE_DONE;
        }
        return r->fn(req, out, id, sub[0] ? sub : NULL);
    }
    return routes_static(req, out);
}
