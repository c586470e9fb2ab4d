/* gate.h: the accept gate in front of libmicrohttpd (see gate.c).
 */
#ifndef SRV_GATE_H
#define SRV_GATE_H

#include <stddef.h>

#include "srv.h"

struct MHD_Daemon;
typedef struct gate gate;

/* A request head larger than this is refused (431). */
#define GATE_HEAD_MAX 16384
/* A body declared by Content-Length up to this is awaited by the gate too. */
#define GATE_BODY_MAX 65536

/* Starts the gate's thread on the listening socket lfd (bound and
 * listening; the gate owns it from now on, even on failure). Connections
 * whose request has arrived go to d with MHD_add_connection. Returns 0, or
 * -1 with err. */
int gate_start(gate **out, srv *s, struct MHD_Daemon *d, int lfd, char *err, size_t errlen);
/* Stops accepting: closes the listening socket and drops the connections
 * still waiting for their request. */
void gate_quiesce(gate *g);
/* Stops the thread and frees g (before the daemon stops). NULL: no-op. */
void gate_free(gate *g);

#endif
