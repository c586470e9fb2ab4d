/* gate.c: the accept gate in front of libmicrohttpd.
 *
 * libmicrohttpd (0.9.75) gives a connection one of its max_connections
 * slots as soon as it is accepted and bounds only idle time, so clients
 * that send their headers a byte a second hold every slot for as long as
 * they like (a slow-header attack); and it answers some malformed requests
 * itself, writing its response headers twice. So this thread owns the
 * listening socket. It accepts, and holds each new connection, peeking
 * (MSG_PEEK: nothing is consumed) until the request's head, and a body that
 * Content-Length declares up to GATE_BODY_MAX, are in the socket's buffer;
 * only then does libmicrohttpd get the connection (MHD_add_connection) and
 * read the request from its first byte. So a slot is only ever taken by a
 * complete request, read at once.
 *
 * Held connections are bounded in time and number: one that has not
 * delivered within header_timeout_s gets 408; when max_connections are
 * held (or max_per_ip from one address) the one held longest is dropped
 * to make room. A normal client completes its head within milliseconds,
 * so it is never the one held longest; an attacker's slow connections
 * cycle out while everyone else is served.
 *
 * The framing is checked here as RFC 9112 asks, and refused with the
 * server's JSON 400: Content-Length must be digits, and given once; not
 * together with Transfer-Encoding (section 6.3: request smuggling); an
 * HTTP/1.1 request needs exactly one Host. Every response says
 * "Connection: close" (http.c), so each connection carries one request
 * and every request passes through here.
 *
 * Thread: one, the gate's own; it touches the daemon only through
 * MHD_add_connection (thread-safe), and its own state only itself.
 */
#include "gate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "routes.h"

typedef struct held {
    int fd;
    double t0;                      /* srv_now() at accept */
    struct sockaddr_storage sa;
    socklen_t salen;
    char addr[64];                  /* the peer address, for max_per_ip and the log */
} held;

struct gate {
    srv *s;
    struct MHD_Daemon *d;
    int lfd;                        /* the listening socket; -1 once quiesced */
    int wake[2];                    /* a byte here wakes the thread's poll */
    atomic_int quiesce, quit;
    pthread_t thread;
    held *h;                        /* (cap) held connections, oldest first */
    int n, cap;
    struct pollfd *pfd;             /* (cap + 2) */
    char *buf;                      /* (GATE_HEAD_MAX + GATE_BODY_MAX) peek buffer */
};

/* What examine() found. */
enum { G_WAIT, G_READY, G_REPLY, G_DROP };

typedef struct verdict {
    int status;
    const char *type;
    char msg[200];
    char method[16], path[256];     /* for the log, when the request line was read */
} verdict;

static void drop(gate *g, int i)
{
    close(g->h[i].fd);
    memmove(g->h + i, g->h + i + 1, (size_t)(g->n - i - 1) * sizeof *g->h);
    g->n--;
}

/* Writes an error answer, reads what the client sent (so that closing
 * does not reset the connection before the answer is read), closes. */
static void reply(gate *g, int i, const verdict *v)
{
    held *c = &g->h[i];
    int openai = srv_openai_path(v->path);
    char *body = srv_error_json(v->status, v->type, v->msg, NULL, openai);
    char head[512];
    const char *reason = v->status == 408 ? "Request Timeout" : v->status == 431 ?
                         "Request Header Fields Too Large" : "Bad Request";
    int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\nX-Ditmoe-Instance: %s\r\n\r\n",
                     v->status, reason, body ? strlen(body) : 0, g->s->instance);
    if (send(c->fd, head, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) == n && body)
        (void)send(c->fd, body, strlen(body), MSG_NOSIGNAL | MSG_DONTWAIT);
    free(body);
    shutdown(c->fd, SHUT_WR);
    for (int k = 0; k < 64 && recv(c->fd, g->buf, GATE_HEAD_MAX, MSG_DONTWAIT) > 0; k++)
        ;
    http_access_log(g->s, c->addr, v->method[0] ? v->method : "-", v->path[0] ? v->path : "-",
                    v->status, (srv_now() - c->t0) * 1e3, " (refused by the gate)");
    drop(g, i);
}

/* The value of header `name` in the head's lines, its count in *count. */
static const char *find_header(const char *head, const char *name, int *count, size_t *vlen)
{
    const char *found = NULL;
    size_t nl = strlen(name);
    *count = 0;
    for (const char *p = strchr(head, '\n'); p && p[1]; p = strchr(p + 1, '\n')) {
        const char *line = p + 1;
        if (strncasecmp(line, name, nl) || line[nl] != ':')
            continue;
        const char *v = line + nl + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t len = strcspn(v, "\r\n");
        while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
            len--;
        if (!(*count)++) {
            found = v;
            *vlen = len;
        }
    }
    return found;
}

/* Checks the head (NUL-terminated, head_len bytes with its blank line)
 * against RFC 9112's framing rules; sets *body to the bytes of body the
 * gate should wait for. Returns G_READY or G_REPLY with v filled. */
static int check_head(const char *head, size_t *body, verdict *v)
{
    int n_cl, n_te, n_host, n_ex;
    size_t cl_len = 0, te_len = 0, host_len = 0, ex_len = 0;
    sscanf(head, "%15s %255s", v->method, v->path);
    const char *line_end = head + strcspn(head, "\r\n");
    int http11 = line_end - head >= 8 && !strncmp(line_end - 8, "HTTP/1.1", 8);
    const char *cl = find_header(head, "Content-Length", &n_cl, &cl_len);
    find_header(head, "Transfer-Encoding", &n_te, &te_len);
    find_header(head, "Host", &n_host, &host_len);
    const char *ex = find_header(head, "Expect", &n_ex, &ex_len);
    v->status = 400;
    v->type = "bad_request";
    *body = 0;
    if (n_cl > 1) {
        snprintf(v->msg, sizeof v->msg, "Content-Length given %d times", n_cl);
        return G_REPLY;
    }
    if (cl && (cl_len == 0 || cl_len > 18 || strspn(cl, "0123456789") != cl_len)) {
        snprintf(v->msg, sizeof v->msg, "Content-Length '%.*s' is not a number of bytes",
                 (int)(cl_len < 32 ? cl_len : 32), cl);
        return G_REPLY;
    }
    if (cl && n_te) {
        snprintf(v->msg, sizeof v->msg, "both Content-Length and Transfer-Encoding: the body's "
                 "length is ambiguous (RFC 9112 section 6.3)");
        return G_REPLY;
    }
    if (http11 && n_host != 1) {
        snprintf(v->msg, sizeof v->msg, "an HTTP/1.1 request needs exactly one Host header "
                 "(RFC 9112 section 3.2), this one has %d", n_host);
        return G_REPLY;
    }
    unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
    /* a client that asked for 100-continue sends its body only once told to */
    int expects = ex && ex_len == 12 && !strncasecmp(ex, "100-continue", 12);
    if (len <= GATE_BODY_MAX && !expects)
        *body = (size_t)len;
    return G_READY;
}

/* Peeks at connection i: has its request arrived? */
static int examine(gate *g, int i, verdict *v)
{
    size_t cap = GATE_HEAD_MAX + GATE_BODY_MAX;
    ssize_t n = recv(g->h[i].fd, g->buf, cap - 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        return G_DROP; /* left (or failed) before sending a request */
    if (n < 0)
        return G_WAIT;
    g->buf[n] = 0;
    char *end = strstr(g->buf, "\r\n\r\n");
    size_t head_len = end ? (size_t)(end - g->buf) + 4 : 0;
    char *lf = strstr(g->buf, "\n\n"); /* bare LF line ends (RFC 9112 section 2.2) */
    if (lf && (!end || lf < end)) {
        end = lf;
        head_len = (size_t)(lf - g->buf) + 2;
    }
    if (!end || head_len > GATE_HEAD_MAX) {
        if ((size_t)n < GATE_HEAD_MAX && memchr(g->buf, 0, (size_t)n) == NULL)
            return G_WAIT;
        v->status = memchr(g->buf, 0, (size_t)n) ? 400 : 431;
        v->type = v->status == 400 ? "bad_request" : "header_too_large";
        snprintf(v->msg, sizeof v->msg, v->status == 400 ? "a NUL byte in the request head"
                 : "the request head is over %d bytes", GATE_HEAD_MAX);
        return G_REPLY;
    }
    char save = g->buf[head_len];
    g->buf[head_len] = 0;
    size_t body;
    int rc = check_head(g->buf, &body, v);
    g->buf[head_len] = save;
    if (rc != G_READY)
        return rc;
    return (size_t)n >= head_len + body ? G_READY : G_WAIT;
}

/* Makes room for one more connection from addr, dropping the longest held. */
static void make_room(gate *g, const char *addr)
{
    const srv_config *c = g->s->cfg;
    if (c->max_per_ip > 0) {
        int same = 0, oldest = -1;
        for (int i = 0; i < g->n; i++)
            if (!strcmp(g->h[i].addr, addr) && (same++, oldest < 0))
                oldest = i;
        if (same >= c->max_per_ip)
            drop(g, oldest);
    }
    if (g->n >= g->cap)
        drop(g, 0);
}

static void accept_all(gate *g)
{
    for (;;) {
        held c = {.salen = sizeof c.sa};
        c.fd = accept4(g->lfd, (struct sockaddr *)&c.sa, &c.salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c.fd < 0)
            return; /* EAGAIN: all taken; anything else: try at the next wake */
        c.t0 = srv_now();
        const void *a = c.sa.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&c.sa)->sin6_addr
                                                    : (const void *)&((struct sockaddr_in *)&c.sa)->sin_addr;
        if (!inet_ntop(c.sa.ss_family, a, c.addr, sizeof c.addr))
            snprintf(c.addr, sizeof c.addr, "?");
        make_room(g, c.addr);
        g->h[g->n++] = c;
    }
}

/* Hands a connection whose request is in to the daemon. */
static void hand_over(gate *g, int i)
{
    held c = g->h[i];
    memmove(g->h + i, g->h + i + 1, (size_t)(g->n - i - 1) * sizeof *g->h);
    g->n--;
    /* MHD_NO: over a limit (max_connections, max_per_ip); the daemon has
     * closed the socket then */
    (void)MHD_add_connection(g->d, c.fd, (struct sockaddr *)&c.sa, c.salen);
}

/* One pass over the held connections after a poll. */
static void service(gate *g, const struct pollfd *pfd, int npfd)
{
    double now = srv_now(), limit = g->s->cfg->header_timeout_s;
    /* newest first, so that removals do not move the ones still to visit;
     * pfd[2 + i] is h[i] as it was when polled */
    for (int i = g->n - 1; i >= 0; i--) {
        verdict v = {0};
        int rc = G_WAIT;
        if (2 + i < npfd && pfd[2 + i].revents && pfd[2 + i].fd == g->h[i].fd)
            rc = examine(g, i, &v);
        if (rc == G_WAIT && now - g->h[i].t0 >= limit) {
            rc = G_REPLY;
            v.status = 408;
            v.type = "request_timeout";
            snprintf(v.msg, sizeof v.msg, "the request did not arrive within %d s "
                     "(header_timeout_s)", g->s->cfg->header_timeout_s);
        }
        if (rc == G_READY)
            hand_over(g, i);
        else if (rc == G_REPLY)
            reply(g, i, &v);
        else if (rc == G_DROP)
            drop(g, i);
    }
}

static void *gate_main(void *arg)
{
    gate *g = arg;
    while (!atomic_load(&g->quit)) {
        if (atomic_load(&g->quiesce) && g->lfd >= 0) {
            close(g->lfd);
            g->lfd = -1;
            while (g->n)
                drop(g, g->n - 1);
        }
        g->pfd[0] = (struct pollfd){.fd = g->wake[0], .events = POLLIN};
        g->pfd[1] = (struct pollfd){.fd = g->lfd, .events = POLLIN}; /* -1: ignored */
        for (int i = 0; i < g->n; i++)
            g->pfd[2 + i] = (struct pollfd){.fd = g->h[i].fd, .events = POLLIN};
        int npfd = 2 + g->n;
        /* wake for the next header deadline (at most a second away) */
        int ms = 1000;
        if (g->n) {
            double left = g->h[0].t0 + g->s->cfg->header_timeout_s - srv_now();
            ms = left <= 0 ? 0 : left < 1 ? (int)(left * 1e3) + 1 : 1000;
        }
        if (poll(g->pfd, (nfds_t)npfd, ms) < 0 && errno != EINTR)
            continue;
        if (g->pfd[0].revents) {
            char b[16];
            while (read(g->wake[0], b, sizeof b) > 0)
                ;
        }
        service(g, g->pfd, npfd);
        if (g->lfd >= 0 && g->pfd[1].revents)
            accept_all(g);
    }
    return NULL;
}

int gate_start(gate **out, srv *s, struct MHD_Daemon *d, int lfd, char *err, size_t errlen)
{
    *out = NULL;
    gate *g = calloc(1, sizeof *g);
    int cap = s->cfg->max_connections;
    if (!g || !(g->h = calloc((size_t)cap, sizeof *g->h)) ||
        !(g->pfd = calloc((size_t)cap + 2, sizeof *g->pfd)) ||
        !(g->buf = malloc(GATE_HEAD_MAX + GATE_BODY_MAX))) {
        snprintf(err, errlen, "out of memory for the accept gate");
        goto fail;
    }
    g->s = s;
    g->d = d;
    g->lfd = lfd;
    g->cap = cap;
    g->wake[0] = g->wake[1] = -1;
    if (pipe2(g->wake, O_NONBLOCK | O_CLOEXEC)) {
        snprintf(err, errlen, "accept gate: pipe: %s", strerror(errno));
        goto fail;
    }
    if (pthread_create(&g->thread, NULL, gate_main, g)) {
        snprintf(err, errlen, "cannot start the accept gate's thread");
        goto fail;
    }
    *out = g;
    return 0;
fail:
    close(lfd);
    if (g) {
        if (g->wake[0] >= 0) {
            close(g->wake[0]);
            close(g->wake[1]);
        }
        free(g->h);
        free(g->pfd);
        free(g->buf);
        free(g);
    }
    return -1;
}

static void poke(gate *g)
{
    (void)!write(g->wake[1], "x", 1);
}

void gate_quiesce(gate *g)
{
    if (!g)
        return;
    atomic_store(&g->quiesce, 1);
    poke(g);
}

void gate_free(gate *g)
{
    if (!g)
        return;
    atomic_store(&g->quit, 1);
    poke(g);
    pthread_join(g->thread, NULL);
    while (g->n)
        drop(g, g->n - 1);
    if (g->lfd >= 0)
        close(g->lfd);
    close(g->wake[0]);
    close(g->wake[1]);
    free(g->h);
    free(g->pfd);
    free(g->buf);
    free(g);
}
