/* healthcheck.h: `ditmoe-server --healthcheck [URL]`, a container
 * HEALTHCHECK that needs neither curl nor a shell.
 */
#ifndef SRV_HEALTHCHECK_H
#define SRV_HEALTHCHECK_H

#include <stdio.h>

#include "config.h"

#define SRV_HEALTHCHECK_S 2.0 /* the whole check: connect, ask, read the status line */

/* GET /health on url (http://HOST[:PORT][/PATH]; PATH defaults to
 * /health) or, when url is NULL, on c's listen address and port (0.0.0.0
 * and :: are asked on loopback). Returns 0 when the answer's status is 200
 * within SRV_HEALTHCHECK_S seconds, else 1 with the reason on err. */
int srv_healthcheck(const srv_config *c, const char *url, FILE *err);

/* Takes --healthcheck, --healthcheck=URL or --healthcheck URL out of argv
 * (shifting the rest down, *argc updated). Returns 1 if it was there, with
 * *url the URL or NULL; 0 otherwise. */
int srv_healthcheck_arg(int *argc, char **argv, const char **url);

#endif
