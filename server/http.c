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
 * suspended connections every SWEEP_MS: when the client has gone it marks
 * the request gone and resumes it, and the route cancels the job (freeing
 * its place). End-of-file alone does not say gone: HTTP lets a client shut
 * down its sending side after a complete request and wait for the answer.
 * So on end-of-file the sweeper writes an interim "100 Continue" (HTTP/1.1
 * clients must accept 1xx answers at any time, RFC 9110 section 15.2): a
 * client that closed entirely answers it with a reset, and is gone; one
 * that half-closed reads it and keeps waiting. An event stream has begun
 * its response, so its writer is asked to write something instead (a
 * keep-alive comment: srv_req.ping), the same probe. (HTTP/1.0 has no 1xx:
 * there end-of-file is gone.)
 * libmicrohttpd itself would abort a waiting request on reading that
 * end-of-file when resumed, so a request is put behind the relay (relay.c)
 * before it first waits: the daemon then writes into a socketpair, and the
 * sweeper peeks at the client's socket, which the relay keeps (client_fd).
 * The sweeper also resumes a suspended stream whose writer asked to be
 * called again at a time (srv_req.resume_at: the events' keep-alive
 * comments).
 *
 * Connections come from the accept gate (gate.c), which hands over only
 * those whose request has arrived; every response says Connection: close,
 * so each connection carries one request and each request passes the
 * gate. A body the gate did not wait for (chunked, or over GATE_BODY_MAX)
 * must arrive within body_timeout_s of its head. A body over max_body_bytes
 * is read and dropped (up to DRAIN_MAX) before the 413 goes out, as
 * nginx's lingering close does: closing a socket with unread data resets
 * the connection, and the client would never see the 413; a client that
 * sent "Expect: 100-continue" is answered at once instead.
 *
 * Every response carries X-Ditmoe-Instance (the instance id that prefixes
 * job ids), so a client or proxy can tell which replica answered. The
 * access log escapes every byte outside printable ASCII (and space and
 * backslash) as \xHH, so a request cannot forge or split log lines.
 *
 * Lock order: the job table's mutex, then h->mu (wakes come from job
 * watchers). Nothing here calls into jobs while holding h->mu.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client_ip.h"
#include "gate.h"
#include "metrics.h"
#include "relay.h"
#include "routes.h"

#define SWEEP_MS 100
/* An over-the-limit body is read and dropped up to this many bytes. */
#define DRAIN_MAX (16u << 20)

typedef struct http_req http_req;

struct http_server {
    srv *s;
    struct MHD_Daemon *d;
    gate *gate;
    relay *relay;
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
    int http11;                /* an HTTP/1.1 request (1xx answers allowed) */
    int fd;                    /* the daemon's socket */
    int client_fd;             /* the client's, for the sweeper's peek: fd until relayed */
    int relayed;               /* relay_take was tried */
    double t0;
    int status;                /* sent, for the log; 0: none */
    /* (h->mu) */
    int is_suspended, wake_pending, gone;
    int probed;                /* the sweeper sent its 100 Continue, or asked for a ping */
    int ping;                  /* a stream's writer is to write something now */
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

/* TCP state of a socket (TCP_CLOSE once reset), or -1. */
static int tcp_state(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) ? -1 : ti.tcpi_state;
}

/* What the sweeper finds at a suspended request's client. */
enum { CLIENT_HERE, CLIENT_GONE, CLIENT_PING };

/* Looks at a suspended request's client (see the opening comment):
 * CLIENT_PING asks a stream to write something, the probe there. */
static int client_check(http_req *q)
{
    static const char probe[] = "HTTP/1.1 100 Continue\r\n\r\n";
    char c;
    ssize_t n = recv(q->client_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
        return CLIENT_HERE;
    if (n < 0)
        return CLIENT_GONE;
    if (q->probed) /* end-of-input: a reset since the probe is a client that left */
        return tcp_state(q->client_fd) == TCP_CLOSE ? CLIENT_GONE : CLIENT_HERE;
    q->probed = 1;
    if (q->status) /* a stream: no 1xx once a response has begun */
        return CLIENT_PING;
    if (!q->http11)
        return CLIENT_GONE;
    return send(q->client_fd, probe, sizeof probe - 1, MSG_NOSIGNAL | MSG_DONTWAIT) ==
           (ssize_t)(sizeof probe - 1) ? CLIENT_HERE : CLIENT_GONE;
}

/* Resumes suspended requests whose client has gone or is to be pinged,
 * and streams whose resume_at has come. */
static void sweep_locked(http_server *h)
{
    http_req *q = h->suspended;
    double now = srv_now();
    while (q) {
        http_req *next = q->next;
        int c = client_check(q);
        if (c == CLIENT_GONE)
            q->gone = 1;
        else if (c == CLIENT_PING)
            q->ping = 1;
        if (c != CLIENT_HERE || (q->resume_at > 0 && now >= q->resume_at))
            resume_locked(h, q);
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
                         const char *method, const char *version)
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
    q->http11 = version && !strcmp(version, MHD_HTTP_VERSION_1_1);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci)
        q->fd = ci->connect_fd;
    q->client_fd = q->fd;
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
    q->r.ping = q->ping;
    q->ping = 0;
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
    if (srv_openai_path(q->path))
        srv_reply_openai(rep); /* OpenAI's error shape where its SDKs call */
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
    /* one request per connection: every request passes the gate (gate.c) */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
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
        if (!q->relayed && q->fd >= 0) { /* see relay.c */
            int c = relay_take(h->relay, q->fd);
            q->client_fd = c >= 0 ? c : q->fd;
            q->relayed = 1;
        }
        if (http_suspend(q))
            return MHD_YES;
        /* woken before we could suspend: look again */
    }
}

/* The first call for a request: its head is in. Refuses a declared body
 * over the limit at once only if the client waits for 100-continue (or
 * the body is too large to drain); otherwise it is drained first. */
static enum MHD_Result on_head(http_req *q)
{
    const srv_config *c = q->h->s->cfg;
    const char *cl = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *ex = MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
    unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
    if (len <= (unsigned long long)c->max_body_bytes)
        return MHD_YES;
    if ((ex && !strcasecmp(ex, "100-continue")) || len > DRAIN_MAX) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body of %llu bytes is over the limit of %d bytes",
                 len, c->max_body_bytes);
        return send_error(q, 413, "payload_too_large", msg);
    }
    q->too_large = 1; /* read and dropped, then 413 */
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    http_server *h = cls;
    http_req *q = *con_cls;
    if (!q) {
        q = req_new(h, conn, url, method, version);
        if (!q)
            return MHD_NO;
        *con_cls = q;
        return on_head(q);
    }
    if (*upload_data_size) {
        q->seen += *upload_data_size;
        /* a body dribbled in is cut off at body_timeout_s; over the cap the
         * rest is read and dropped so that the client can be told 413 at
         * the end (no answer may be queued mid-upload), but only so far */
        if (srv_now() - q->t0 > h->s->cfg->body_timeout_s || q->seen > DRAIN_MAX ||
            append_body(q, upload_data, *upload_data_size))
            return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (q->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body of %zu bytes is over the limit of %d bytes",
                 q->seen, h->s->cfg->max_body_bytes);
        return send_error(q, 413, "payload_too_large", msg);
    }
    if (!q->r.body) {
        q->r.body = q->body ? q->body : "";
        q->r.body_len = q->len;
    }
    return dispatch(q);
}

/* Copies in to out (n bytes with the NUL), every byte outside '!'..'~'
 * and the backslash as \xHH: one request, one log line. */
static void log_escape(const char *in, char *out, size_t n)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 5 < n; p++) {
        if (*p > ' ' && *p < 0x7f && *p != '\\')
            out[o++] = (char)*p;
        else
            o += (size_t)snprintf(out + o, n - o, "\\x%02x", *p);
    }
    out[o] = 0;
}

void http_access_log(srv *s, const char *client, const char *method, const char *path,
                     int status, double ms, const char *note)
{
    srv_metrics_request(s->metrics, status, ms / 1e3);
    if (!s->cfg->access_log)
        return;
    char c[256], m[80], p[4100];
    log_escape(client, c, sizeof c);
    log_escape(method, m, sizeof m);
    log_escape(path, p, sizeof p);
    fprintf(stderr, "access %s %s %s %d %.1fms%s\n", c, m, p, status, ms, note);
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
    char note[128];
    snprintf(note, sizeof note, "%s%s%s", q->r.job_id[0] ? " job=" : "", q->r.job_id,
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    http_access_log(h->s, q->r.client, q->method, q->path, status, ms, note);
    req_free(q);
}

/* ---- daemon ---------------------------------------------------------------- */

/* libmicrohttpd's messages, to stderr as its own logger writes them, less
 * those about TCP options (Nagle, corking) and pushing data out: it tries
 * them on every socket, and on a relayed connection's socketpair end
 * (relay.c) they fail, meaning nothing. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    static const char *const quiet[] = {"Setting %s option to %s state failed",
                                        "Failed to push the data", "Zero-send failed"};
    (void)cls;
    for (size_t i = 0; i < sizeof quiet / sizeof *quiet; i++)
        if (!strncmp(fmt, quiet[i], strlen(quiet[i])))
            return;
    vfprintf(stderr, fmt, ap);
}

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

/* The listening socket, bound: a port in use is an error naming it
 * (reuse_port asks for SO_REUSEPORT, to share it on purpose). Returns the
 * socket, or -1 with err. */
static int listen_socket(const srv_config *c, int *port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int v6, one = 1;
    if (bind_address(c->listen, c->port, &ss, &v6, err, errlen))
        return -1;
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    /* SO_REUSEADDR only lets a restart bind past old TIME_WAIT connections */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (v6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (c->reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one)) {
        snprintf(err, errlen, "reuse_port: SO_REUSEPORT: %s", strerror(errno));
        close(fd);
        return -1;
    }
    socklen_t len = v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 511)) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s port %d: %s%s", c->listen, c->port,
                 strerror(e), e == EADDRINUSE ? " (another server is on it; reuse_port true "
                 "shares a port on purpose)" : "");
        close(fd);
        return -1;
    }
    len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    *port = ntohs(v6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

int http_start(http_server **out, srv *s, char *err, size_t errlen)
{
    const srv_config *c = s->cfg;
    *out = NULL;
    http_server *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->s = s;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cond, NULL);
    int lfd = listen_socket(c, &h->port, err, errlen);
    if (lfd < 0)
        goto fail;
    /* poll(), not epoll: libmicrohttpd 0.9.75's MHD_quiesce_daemon races a
     * worker thread over the listen socket in its epoll set and aborts
     * ("Failed to remove listen FD from epoll set"); poll() is ample for
     * max_connections. The daemon listens on nothing: the gate (gate.c)
     * accepts, and adds connections whose request has arrived. */
    unsigned flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first, as it asks */
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)c->http_threads,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)c->max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)c->max_per_ip,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->conn_timeout_s,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "cannot start libmicrohttpd's threads");
        close(lfd);
        goto fail;
    }
    if (relay_start(&h->relay, err, errlen)) {
        close(lfd);
        goto fail;
    }
    if (gate_start(&h->gate, s, h->d, lfd, err, errlen)) /* owns lfd now */
        goto fail;
    if (pthread_create(&h->sweeper, NULL, sweeper_main, h)) {
        snprintf(err, errlen, "cannot start the sweeper thread");
        goto fail;
    }
    h->sweeper_started = 1;
    *out = h;
    return 0;
fail:
    gate_free(h->gate);
    if (h->d)
        MHD_stop_daemon(h->d);
    relay_free(h->relay, 0);
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
    gate_quiesce(h->gate);
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
    gate_free(h->gate); /* no more MHD_add_connection */
    MHD_stop_daemon(h->d);
    relay_free(h->relay, grace_s); /* after the daemon: no more relay_take */
    pthread_cond_destroy(&h->cond);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
