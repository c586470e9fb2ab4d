/* http.h: the HTTP front end on libmicrohttpd.
 */
#ifndef SRV_HTTP_H
#define SRV_HTTP_H

#include <stddef.h>

#include "srv.h"

typedef struct http_server http_server;

/* Binds s->cfg->listen:port and starts serving. Returns 0 or -1 with err. */
int http_start(http_server **out, srv *s, char *err, size_t errlen);
/* The bound port (useful with port 0). */
int http_port(const http_server *h);
/* Stops accepting new connections; open ones carry on. */
void http_quiesce(http_server *h);
/* Wakes every waiting connection to answer now (503 for unfinished jobs),
 * gives in-flight responses up to grace_s seconds, then stops the daemon
 * and frees h. NULL is a no-op. */
void http_stop(http_server *h, double grace_s);

#endif
