/* relay.c: the answer to a waiting request, copied to a client that may
 * have half-closed.
 *
 * HTTP lets a client shut down its sending side after a complete request
 * and wait for the answer. libmicrohttpd 0.9.75 cannot: a connection
 * resumed before its answer is queued reads its socket again, and on the
 * client's end-of-input it aborts the request (the client gets nothing;
 * its job is cancelled). A TCP socket's end-of-input cannot be hidden, so
 * a request about to wait (ROUTE_PENDING, http.c) is moved behind this
 * relay first: a socketpair end takes the connection's descriptor number
 * (dup3, in the daemon's thread, inside its request callback: nothing else
 * uses that number then), and the relay keeps the client's socket, copying
 * what the daemon writes into the pair to the client. A route runs only
 * once the whole request is read, so only answers flow; the daemon never
 * sees the client's end-of-input, and the sweeper (http.c) watches the
 * client's socket itself to tell a client that left from one that
 * half-closed. Requests answered at once never wait, so they and their
 * throughput do not pass through here.
 *
 * When the daemon closes its end the relay sends what is left, shuts its
 * sending side and closes, reading what the client sent first (closing a
 * socket with unread data resets the connection, as gate.c says). A send
 * that fails (the client reset) closes both ends: the daemon's next write
 * fails, as it would have on the client's socket. Either comes after the
 * daemon has begun the answer, when the request no longer waits, so the
 * sweeper (which looks only at waiting requests) never uses the client's
 * socket once the relay has closed it. The daemon writes its
 * answer into the pair's buffer (about 200 KiB) and moves on; a slow
 * client holds up only its own copy, RELAY_BUF at a time.
 *
 * Thread: one, the relay's, polls every pair end and client socket;
 * relay_take (any daemon thread) passes it new connections under mu.
 * libmicrohttpd sets TCP options on the pair end it now has, which fail
 * there; http.c leaves those messages out of the log.
 */
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "srv.h"

#define RELAY_BUF 16384
/* Reads of the client's leftover input before closing its socket. */
#define DRAIN_READS 64

typedef struct pump {
    int client;                /* the client's socket */
    int end;                   /* the relay's end of the pair */
    int eof;                   /* the daemon closed its end */
    size_t off, len;           /* buf[off..len) is still to send */
    struct pump *next;
    char buf[RELAY_BUF];
} pump;

struct relay {
    pthread_mutex_t mu;
    pump *incoming;            /* (mu) taken, not yet seen by the thread */
    int quit;                  /* (mu) */
    double deadline;           /* (mu) after quit: close what is left then */
    int wake[2];               /* a byte here wakes the thread's poll */
    pthread_t thread;
    pump *p;                   /* (thread) the pumps */
    struct pollfd *pfd;        /* (thread) (pfd_cap) */
    int pfd_cap;
};

static void pump_close(pump *p, int clean)
{
    if (clean) {
        shutdown(p->client, SHUT_WR);
        for (int k = 0; k < DRAIN_READS && recv(p->client, p->buf, RELAY_BUF, MSG_DONTWAIT) > 0; k++)
            ;
    }
    close(p->client);
    close(p->end);
    free(p);
}

static int would_block(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

/* Moves bytes from the daemon's end to the client until either would
 * block. Returns 1 when p is done (closed and freed). */
static int pump_step(pump *p)
{
    for (;;) {
        if (p->off < p->len) {
            ssize_t n = send(p->client, p->buf + p->off, p->len - p->off,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && would_block())
                return 0;
            if (n < 0)
                break; /* the client reset */
            p->off += (size_t)n;
            continue;
        }
        if (p->eof) {
            pump_close(p, 1);
            return 1;
        }
        ssize_t n = recv(p->end, p->buf, RELAY_BUF, MSG_DONTWAIT);
        if (n < 0 && would_block())
            return 0;
        if (n < 0)
            break;
        p->off = 0;
        p->len = (size_t)n;
        p->eof = n == 0;
    }
    pump_close(p, 0);
    return 1;
}

/* Polls the pumps (and the wake pipe) once; returns how many pumps are
 * left, or -1 out of memory. */
static int poll_once(relay *r, int ms)
{
    int n = 0;
    for (pump *p = r->p; p; p = p->next)
        n++;
    if (n + 1 > r->pfd_cap) {
        struct pollfd *q = realloc(r->pfd, (size_t)(n + 1) * 2 * sizeof *q);
        if (!q)
            return -1;
        r->pfd = q;
        r->pfd_cap = (n + 1) * 2;
    }
    r->pfd[0] = (struct pollfd){.fd = r->wake[0], .events = POLLIN};
    int i = 1;
    for (pump *p = r->p; p; p = p->next, i++)
        r->pfd[i] = p->off < p->len ? (struct pollfd){.fd = p->client, .events = POLLOUT}
                                    : (struct pollfd){.fd = p->end, .events = POLLIN};
    if (poll(r->pfd, (nfds_t)n + 1, ms) < 0)
        return n; /* EINTR: again */
    if (r->pfd[0].revents) {
        char b[64];
        while (read(r->wake[0], b, sizeof b) > 0)
            ;
    }
    i = 1;
    for (pump **pp = &r->p; *pp; i++) {
        pump *p = *pp, *next = p->next;
        if (r->pfd[i].revents && pump_step(p)) { /* p is freed */
            *pp = next;
            n--;
        } else {
            pp = &p->next;
        }
    }
    return n;
}

static void *relay_main(void *arg)
{
    relay *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        while (r->incoming) {
            pump *p = r->incoming;
            r->incoming = p->next;
            p->next = r->p;
            r->p = p;
        }
        int quit = r->quit;
        double deadline = r->deadline;
        pthread_mutex_unlock(&r->mu);
        if (quit && (!r->p || srv_now() >= deadline))
            break;
        if (poll_once(r, quit ? 20 : -1) < 0)
            break; /* out of memory: the connections close below */
    }
    while (r->p) {
        pump *p = r->p;
        r->p = p->next;
        pump_close(p, 0);
    }
    return NULL;
}

int relay_start(relay **out, char *err, size_t errlen)
{
    *out = NULL;
    relay *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory for the relay");
        return -1;
    }
    pthread_mutex_init(&r->mu, NULL);
    if (pipe2(r->wake, O_NONBLOCK | O_CLOEXEC)) {
        snprintf(err, errlen, "relay: pipe: %s", strerror(errno));
        goto fail;
    }
    if (pthread_create(&r->thread, NULL, relay_main, r)) {
        snprintf(err, errlen, "cannot start the relay thread");
        close(r->wake[0]);
        close(r->wake[1]);
        goto fail;
    }
    *out = r;
    return 0;
fail:
    pthread_mutex_destroy(&r->mu);
    free(r);
    return -1;
}

int relay_take(relay *r, int fd)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv))
        return -1;
    pump *p = calloc(1, sizeof *p);
    int client = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    /* dup3 replaces the daemon's socket at fd (kept open by client) */
    if (!p || client < 0 || dup3(sv[0], fd, O_CLOEXEC) < 0) {
        if (client >= 0)
            close(client);
        close(sv[0]);
        close(sv[1]);
        free(p);
        return -1;
    }
    close(sv[0]);
    p->client = client;
    p->end = sv[1];
    pthread_mutex_lock(&r->mu);
    p->next = r->incoming;
    r->incoming = p;
    pthread_mutex_unlock(&r->mu);
    (void)!write(r->wake[1], "x", 1);
    return client;
}

void relay_free(relay *r, double grace_s)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->quit = 1;
    r->deadline = srv_now() + grace_s;
    pthread_mutex_unlock(&r->mu);
    (void)!write(r->wake[1], "x", 1);
    pthread_join(r->thread, NULL);
    close(r->wake[0]);
    close(r->wake[1]);
    pthread_mutex_destroy(&r->mu);
    free(r->pfd);
    free(r);
}
