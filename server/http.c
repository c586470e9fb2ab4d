/* http.c: libmicrohttpd glue.
 *
 * libmicrohttpd runs its own polling threads (MHD_USE_INTERNAL_POLLING_THREAD,
 * a pool of http_threads); they parse requests and call routes.c, and never
 * run the model. Per-request state (http_req) is allocated on the first
 * handler call and freed in the completed callback. The body is gathered
 * here up to max_body_bytes (413 beyond, checked on Content-Length first).
 *
 * Waiting without a thread: a request whose route says ROUTE_PENDING, or a
 * server-sent-events body with nothing to send, is suspended
 * (MHD_suspend_connection); the job's watcher calls http_wake, which
 * resumes it (any thread may resume). A wake that arrives before the
 * suspension is remembered in wake_pending, so none is lost.
 *
 * A suspended connection is invisible to libmicrohttpd, which then cannot
 * see the client leave. A sweeper thread therefore peeks at the sockets of
 * suspended connections every SWEEP_MS: on end-of-file it marks the request
 * gone and resumes it, and the route cancels the job (freeing its place).
 * It also resumes a suspended stream whose writer asked to be called again
 * at a time (srv_req.resume_at: the events' keep-alive comments).
 *
 * Every response carries X-Ditmoe-Instance (the instance id that prefixes
 * job ids), so a client or proxy can tell which replica answered.
 *
 * Lock order: the job table's mutex, then h->mu (wakes come from job
 * watchers). Nothing here calls into jobs while holding h->mu.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client_ip.h"
#include "metrics.h"
#include "routes.h"

#define SWEEP_MS 100

typedef struct http_req http_req;

struct http_server {
    srv *s;
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    pthread_t sweeper;
    int sweeper_started;
    int stopping;              /* (mu) no more suspensions */
    int quit;                  /* (mu) the sweeper exits */
    http_req *suspended;       /* (mu) list of suspended requests */
    int n_open;                /* (mu) requests not yet completed */
};

struct http_req {
    srv_req r;
    http_server *h;
    struct MHD_Connection *conn;
    char *path;
    char method[16];
    char *body;
    size_t len, cap;
    size_t seen;               /* body bytes received, kept or not */
    int too_large;
    int fd;                    /* the socket, for the sweeper's peek */
    double t0;
    int status;                /* sent, for the log; 0: none */
    /* (h->mu) */
    int is_suspended, wake_pending, gone;
    double resume_at;          /* the sweeper resumes a suspended stream then */
    http_req *prev, *next;
};

/* ---- suspend / resume ---------------------------------------------------- */

static void unlink_locked(http_server *h, http_req *q)
{
    if (q->prev) q->prev->next = q->next; else h->suspended = q->next;
    if (q->next) q->next->prev = q->prev;
    q->prev = q->next = NULL;
    q->is_suspended = 0;
}

static void resume_locked(http_server *h, http_req *q)
{
    unlink_locked(h, q);
    MHD_resume_connection(q->conn);
}

/* The job watcher: wakes a request's connection. Any thread. */
static void http_wake(void *arg)
{
    http_req *q = arg;
    http_server *h = q->h;
    pthread_mutex_lock(&h->mu);
    if (q->is_suspended)
        resume_locked(h, q);
    else
        q->wake_pending = 1;
    pthread_mutex_unlock(&h->mu);
}

/* Suspends q's connection unless a wake already came (or the server is
 * stopping, or the client left). Returns 1 if suspended. MHD thread only. */
static int http_suspend(http_req *q)
{
    http_server *h = q->h;
    pthread_mutex_lock(&h->mu);
    if (q->wake_pending || q->gone || h->stopping) {
        q->wake_pending = 0;
        pthread_mutex_unlock(&h->mu);
        return 0;
    }
    MHD_suspend_connection(q->conn);
    q->is_suspended = 1;
    q->resume_at = q->r.resume_at;
    q->next = h->suspended;
    if (q->next)
        q->next->prev = q;
    q->prev = NULL;
    h->suspended = q;
    pthread_mutex_unlock(&h->mu);
    return 1;
}

/* Resumes suspended requests whose client hung up, and streams whose
 * resume_at has come. */
static void sweep_locked(http_server *h)
{
    http_req *q = h->suspended;
    double now = srv_now();
    while (q) {
        http_req *next = q->next;
        char c;
        ssize_t n = recv(q->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            q->gone = 1;
            resume_locked(h, q);
        } else if (q->resume_at > 0 && now >= q->resume_at) {
            resume_locked(h, q);
        }
        q = next;
    }
}

static void *sweeper_main(void *arg)
{
    http_server *h = arg;
    pthread_mutex_lock(&h->mu);
    while (!h->quit) {
        sweep_locked(h);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += SWEEP_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->cond, &h->mu, &ts);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* ---- requests ------------------------------------------------------------- */

static const char *req_header(const srv_req *r, const char *name)
{
    const http_req *q = r->http;
    return MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND, name);
}

static http_req *req_new(http_server *h, struct MHD_Connection *conn, const char *url,
                         const char *method)
{
    http_req *q = calloc(1, sizeof *q);
    if (!q || !(q->path = strdup(url))) {
        free(q);
        return NULL;
    }
    const srv_config *c = h->s->cfg;
    q->h = h;
    q->conn = conn;
    q->t0 = srv_now();
    q->fd = -1;
    snprintf(q->method, sizeof q->method, "%s", method);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci)
        q->fd = ci->connect_fd;
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const char *fwd = c->client_ip_header[0] ?
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, c->client_ip_header) : NULL;
    srv_client_ip(ci ? ci->client_addr : NULL, c->client_ip_header, fwd, c->trusted_proxies,
                  q->r.client, sizeof q->r.client);
    q->r.s = h->s;
    q->r.method = q->method;
    q->r.path = q->path;
    q->r.header = req_header;
    q->r.http = q;
    q->r.wake = http_wake;
    q->r.wake_arg = q;
    pthread_mutex_lock(&h->mu);
    h->n_open++;
    pthread_mutex_unlock(&h->mu);
    return q;
}

static void req_free(http_req *q)
{
    if (q->r.state_free)
        q->r.state_free(q->r.state);
    pthread_mutex_lock(&q->h->mu);
    q->h->n_open--;
    pthread_cond_broadcast(&q->h->cond);
    pthread_mutex_unlock(&q->h->mu);
    free(q->body);
    free(q->path);
    free(q);
}

static int append_body(http_req *q, const char *data, size_t n)
{
    size_t max = (size_t)q->h->s->cfg->max_body_bytes;
    if (q->too_large || q->len + n > max) {
        q->too_large = 1;
        return 0;
    }
    if (q->len + n + 1 > q->cap) {
        size_t cap = q->len + n + 1 < 1024 ? 1024 : (q->len + n + 1) * 2;
        if (cap > max + 1)
            cap = max + 1;
        char *b = realloc(q->body, cap);
        if (!b)
            return -1;
        q->body = b;
        q->cap = cap;
    }
    memcpy(q->body + q->len, data, n);
    q->len += n;
    q->body[q->len] = 0;
    return 0;
}

/* ---- responses ------------------------------------------------------------ */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    http_req *q = cls;
    (void)pos;
    pthread_mutex_lock(&q->h->mu);
    int gone = q->gone, stopping = q->h->stopping;
    pthread_mutex_unlock(&q->h->mu);
    if (gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    q->r.stopping = stopping;
    long n = q->r.stream(q->r.state, buf, max);
    if (n == 0 && !http_suspend(q)) {
        pthread_mutex_lock(&q->h->mu);
        q->r.stopping = q->h->stopping;
        pthread_mutex_unlock(&q->h->mu);
        n = q->r.stream(q->r.state, buf, max);
    }
    return n < 0 ? MHD_CONTENT_READER_END_OF_STREAM : (ssize_t)n;
}

static enum MHD_Result send_reply(http_req *q, srv_reply *rep)
{
    struct MHD_Response *resp;
    if (rep->stream) {
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, q, NULL);
    } else if (rep->fd >= 0) {
        resp = MHD_create_response_from_fd64(rep->fd_size, rep->fd);
        if (resp)
            rep->fd = -1; /* libmicrohttpd closes it */
    } else if (rep->body) {
        resp = MHD_create_response_from_buffer(rep->len, rep->body, MHD_RESPMEM_MUST_FREE);
        if (resp)
            rep->body = NULL;
    } else {
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (!resp) {
        srv_reply_free(rep);
        return MHD_NO;
    }
    if (rep->ctype)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, rep->ctype);
    MHD_add_response_header(resp, "X-Ditmoe-Instance", q->h->s->instance);
    for (int i = 0; i < rep->nhdr; i++)
        MHD_add_response_header(resp, rep->hdr_name[i], rep->hdr_value[i]);
    q->status = rep->status;
    enum MHD_Result rc = MHD_queue_response(q->conn, (unsigned)rep->status, resp);
    MHD_destroy_response(resp);
    srv_reply_free(rep);
    return rc;
}

static enum MHD_Result send_error(http_req *q, int status, const char *type, const char *msg)
{
    srv_reply rep;
    srv_reply_init(&rep);
    srv_reply_error(&rep, status, type, "%s", msg);
    return send_reply(q, &rep);
}

/* The whole request is in: run the route (again, after a wake). */
static enum MHD_Result dispatch(http_req *q)
{
    http_server *h = q->h;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        q->r.gone = q->gone;
        q->r.stopping = h->stopping;
        q->wake_pending = 0;
        pthread_mutex_unlock(&h->mu);
        srv_reply rep;
        srv_reply_init(&rep);
        int rc = routes_handle(&q->r, &rep);
        if (rc == ROUTE_DONE)
            return send_reply(q, &rep);
        if (rc == ROUTE_CLOSE) { /* the client left: whatever we queue goes nowhere */
            srv_reply_free(&rep);
            srv_reply_error(&rep, 499, "client_closed", "the client closed the connection");
            return send_reply(q, &rep); /* 499: nginx's "client closed request" */
        }
        srv_reply_free(&rep);
        if (http_suspend(q))
            return MHD_YES;
        /* woken before we could suspend: look again */
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    http_server *h = cls;
    http_req *q = *con_cls;
    (void)version;
    if (!q) {
        q = req_new(h, conn, url, method);
        if (!q)
            return MHD_NO;
        *con_cls = q;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)h->s->cfg->max_body_bytes) {
            char msg[128];
            snprintf(msg, sizeof msg, "request body of %s bytes is over the limit of %d bytes",
                     cl, h->s->cfg->max_body_bytes);
            return send_error(q, 413, "payload_too_large", msg);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        q->seen += *upload_data_size;
        /* over the cap the rest is read and dropped so that the client can be
         * told 413 at the end (no answer may be queued mid-upload), but only
         * so far: an endless chunked body just gets the connection closed */
        if (append_body(q, upload_data, *upload_data_size) ||
            q->seen > (size_t)h->s->cfg->max_body_bytes + 65536)
            return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (q->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body is over the limit of %d bytes",
                 h->s->cfg->max_body_bytes);
        return send_error(q, 413, "payload_too_large", msg);
    }
    if (!q->r.body) {
        q->r.body = q->body ? q->body : "";
        q->r.body_len = q->len;
    }
    return dispatch(q);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    http_server *h = cls;
    http_req *q = *con_cls;
    (void)conn;
    if (!q)
        return;
    *con_cls = NULL;
    double ms = (srv_now() - q->t0) * 1e3;
    /* no answer sent: the client closed first (nginx's 499) */
    int status = q->status ? q->status : 499;
    srv_metrics_request(h->s->metrics, status, ms / 1e3);
    if (h->s->cfg->access_log)
        fprintf(stderr, "access %s %s %s %d %.1fms%s%s%s\n", q->r.client, q->method, q->path,
                status, ms, q->r.job_id[0] ? " job=" : "", q->r.job_id,
                toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    req_free(q);
}

/* ---- daemon ---------------------------------------------------------------- */

static int bind_address(const char *listen, int port, struct sockaddr_storage *ss, int *v6,
                        char *err, size_t errlen)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, listen, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *v6 = 0;
        return 0;
    }
    if (inet_pton(AF_INET6, listen, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *v6 = 1;
        return 0;
    }
    snprintf(err, errlen, "listen: '%s' is not an IPv4 or IPv6 address", listen);
    return -1;
}

int http_start(http_server **out, srv *s, char *err, size_t errlen)
{
    const srv_config *c = s->cfg;
    struct sockaddr_storage ss;
    int v6;
    *out = NULL;
    if (bind_address(c->listen, c->port, &ss, &v6, err, errlen))
        return -1;
    http_server *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->s = s;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cond, NULL);
    /* poll(), not epoll: libmicrohttpd 0.9.75's MHD_quiesce_daemon races a
     * worker thread over the listen socket in its epoll set and aborts
     * ("Failed to remove listen FD from epoll set"); with poll() quiescing
     * is a message to each worker. poll() is ample for max_connections. */
    unsigned flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     (v6 ? MHD_USE_IPv6 : 0);
    h->d = MHD_start_daemon(flags, (uint16_t)c->port, NULL, NULL, on_request, h,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)c->http_threads,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)c->max_per_ip,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->conn_timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u,
                            MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "cannot listen on %s port %d (address in use or not available)",
                 c->listen, c->port);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : c->port;
    if (pthread_create(&h->sweeper, NULL, sweeper_main, h)) {
        snprintf(err, errlen, "cannot start the sweeper thread");
        goto fail;
    }
    h->sweeper_started = 1;
    *out = h;
    return 0;
fail:
    if (h->d)
        MHD_stop_daemon(h->d);
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->mu);
    free(h);
    return -1;
}

int http_port(const http_server *h)
{
    return h->port;
}

void http_quiesce(http_server *h)
{
    MHD_socket fd = MHD_quiesce_daemon(h->d);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void http_stop(http_server *h, double grace_s)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->stopping = 1;
    while (h->suspended)
        resume_locked(h, h->suspended);
    /* let woken requests answer, bounded */
    double end = srv_now() + grace_s;
    while (h->n_open > 0 && srv_now() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&h->cond, &h->mu, &ts);
        while (h->suspended) /* a wake raced with stopping */
            resume_locked(h, h->suspended);
    }
    h->quit = 1;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->mu);
    if (h->sweeper_started)
        pthread_join(h->sweeper, NULL);
    MHD_stop_daemon(h->d);
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
