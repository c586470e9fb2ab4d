/* http.h: the HTTP front end on libmicrohttpd.
 */
#ifndef SRV_HTTP_H
#define SRV_HTTP_H

#include <stddef.h>

#include "srv.h"

typedef struct http_server http_server;

/* Binds s->cfg->listen:port and starts serving (the accept gate, gate.c,
 * in front of libmicrohttpd). Returns 0 or -1 with err (a port in use is
 * an error unless reuse_port). */
int http_start(http_server **out, srv *s, char *err, size_t errlen);
/* The bound port (useful with port 0). */
int http_port(const http_server *h);
/* Stops accepting new connections; open ones carry on (those still
 * sending their request are dropped). */
void http_quiesce(http_server *h);
/* Wakes every waiting connection to answer now (503 for unfinished jobs),
 * gives in-flight responses up to grace_s seconds, then stops the daemon
 * and frees h. NULL is a no-op. */
void http_stop(http_server *h, double grace_s);

/* Logs one answered request (access_log, with every byte outside
 * printable ASCII escaped) and counts it in /metrics; note is appended. */
void http_access_log(srv *s, const char *client, const char *method, const char *path,
                     int status, double ms, const char *note);

#endif
