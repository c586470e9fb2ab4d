/* healthcheck.c: `ditmoe-server --healthcheck [URL]`.
 *
 * For container HEALTHCHECKs (docker/Dockerfile) without curl or bash: the
 * same binary reads the same settings (file, environment, command line)
 * as the server it checks, so the port it asks is the port the server
 * listens on, however that was set. One GET over a plain socket with one
 * deadline for everything; a name is resolved with getaddrinfo, which the
 * deadline cannot bound, so give an address where DNS may be slow. Exit
 * status 0 (healthy) or 1 (unhealthy, the reason on stderr), as Docker
 * expects.
 */
#include "healthcheck.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "srv.h"

typedef struct target {
    char host[256];   /* without brackets */
    char port[8];
    char path[512];
} target;

static int parse_url(const char *url, target *t, char *err, size_t errlen)
{
    if (strncasecmp(url, "http://", 7)) {
        snprintf(err, errlen, "'%s' is not an http:// URL", url);
        return -1;
    }
    const char *p = url + 7, *end;
    if (*p == '[') {
        end = strchr(p, ']');
        if (!end)
            goto bad;
        snprintf(t->host, sizeof t->host, "%.*s", (int)(end - p - 1), p + 1);
        p = end + 1;
    } else {
        size_t n = strcspn(p, ":/");
        snprintf(t->host, sizeof t->host, "%.*s", (int)n, p);
        p += n;
    }
    snprintf(t->port, sizeof t->port, "80");
    if (*p == ':') {
        size_t n = strspn(p + 1, "0123456789");
        if (n == 0 || n > 5 || atoi(p + 1) > 65535)
            goto bad;
        snprintf(t->port, sizeof t->port, "%.*s", (int)n, p + 1);
        p += 1 + n;
    }
    if (*p && *p != '/')
        goto bad;
    snprintf(t->path, sizeof t->path, "%s", *p ? p : "/health");
    if (t->host[0] && strlen(t->path) < sizeof t->path - 1 && !strpbrk(t->path, " \r\n"))
        return 0;
bad:
    snprintf(err, errlen, "'%s' is not a URL of the form http://HOST[:PORT][/PATH]", url);
    return -1;
}

/* Waits for fd to be ready for events until the deadline. 1 ready, 0 not. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - srv_now();
        if (left <= 0)
            return 0;
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, (int)(left * 1000) + 1);
        if (n > 0)
            return 1;
        if (n < 0 && errno != EINTR)
            return 0;
    }
}

/* A connected non-blocking socket to one of t's addresses, or -1. */
static int dial(const target *t, double deadline, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    int rc = getaddrinfo(t->host, t->port, &hints, &res);
    if (rc) {
        snprintf(err, errlen, "%s: %s", t->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    snprintf(err, errlen, "no address");
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (connect(fd, a->ai_addr, a->ai_addrlen) && errno != EINPROGRESS)
            soerr = errno;
        else if (!wait_fd(fd, POLLOUT, deadline))
            soerr = ETIMEDOUT;
        else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl))
            soerr = errno;
        if (soerr) {
            snprintf(err, errlen, "connect: %s", strerror(soerr));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

/* Sends the request and reads the status line. 0 when it says 200. */
static int ask(int fd, const target *t, double deadline, char *err, size_t errlen)
{
    char req[1024], line[256];
    int v6 = strchr(t->host, ':') != NULL;
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s%s%s:%s\r\n"
                     "User-Agent: ditmoe-healthcheck\r\nConnection: close\r\n\r\n", t->path,
                     v6 ? "[" : "", t->host, v6 ? "]" : "", t->port);
    for (int off = 0; off < n;) {
        if (!wait_fd(fd, POLLOUT, deadline)) {
            snprintf(err, errlen, "timed out sending the request");
            return -1;
        }
        ssize_t k = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (k < 0 && errno != EAGAIN && errno != EINTR) {
            snprintf(err, errlen, "send: %s", strerror(errno));
            return -1;
        }
        off += k > 0 ? (int)k : 0;
    }
    size_t len = 0;
    while (len < sizeof line - 1 && !memchr(line, '\n', len)) {
        if (!wait_fd(fd, POLLIN, deadline)) {
            snprintf(err, errlen, "no answer within %.0f s", SRV_HEALTHCHECK_S);
            return -1;
        }
        ssize_t k = recv(fd, line + len, sizeof line - 1 - len, 0);
        if (k == 0)
            break;
        if (k < 0 && errno != EAGAIN && errno != EINTR) {
            snprintf(err, errlen, "recv: %s", strerror(errno));
            return -1;
        }
        len += k > 0 ? (size_t)k : 0;
    }
    line[len] = 0;
    line[strcspn(line, "\r\n")] = 0;
    if (!strncmp(line, "HTTP/1.", 7) && line[7] && !strncmp(line + 8, " 200", 4) &&
        (line[12] == ' ' || !line[12]))
        return 0;
    snprintf(err, errlen, "answered '%.100s'", len ? line : "(nothing)");
    return -1;
}

int srv_healthcheck(const srv_config *c, const char *url, FILE *out)
{
    double deadline = srv_now() + SRV_HEALTHCHECK_S;
    char err[512], shown[320];
    target t;
    snprintf(shown, sizeof shown, "%s", url ? url : "");
    if (url && parse_url(url, &t, err, sizeof err))
        goto fail;
    if (!url) {
        if (!c->port) {
            snprintf(err, sizeof err, "the configured port is 0 (any free port): give the "
                     "address, --healthcheck http://HOST:PORT");
            goto fail;
        }
        const char *host = !strcmp(c->listen, "0.0.0.0") ? "127.0.0.1"
                           : !strcmp(c->listen, "::") ? "::1" : c->listen;
        int v6 = strchr(host, ':') != NULL;
        snprintf(t.host, sizeof t.host, "%s", host);
        snprintf(t.port, sizeof t.port, "%d", c->port);
        snprintf(t.path, sizeof t.path, "/health");
        snprintf(shown, sizeof shown, "http://%s%s%s:%s/health", v6 ? "[" : "", host,
                 v6 ? "]" : "", t.port);
    }
    int fd = dial(&t, deadline, err, sizeof err);
    if (fd < 0)
        goto fail;
    int rc = ask(fd, &t, deadline, err, sizeof err);
    close(fd);
    if (rc == 0)
        return 0;
fail:
    fprintf(out, "ditmoe-server --healthcheck: %s%s%s\n", shown, shown[0] ? ": " : "", err);
    return 1;
}

int srv_healthcheck_arg(int *argc, char **argv, const char **url)
{
    for (int i = 1; i < *argc; i++) {
        int take = 0;
        if (!strcmp(argv[i], "--healthcheck")) {
            *url = i + 1 < *argc && strncmp(argv[i + 1], "--", 2) ? argv[i + 1] : NULL;
            take = *url ? 2 : 1;
        } else if (!strncmp(argv[i], "--healthcheck=", 14)) {
            *url = argv[i] + 14;
            take = 1;
        }
        if (take) {
            for (int k = i; k + take <= *argc; k++)
                argv[k] = argv[k + take];
            *argc -= take;
            return 1;
        }
    }
    return 0;
}
