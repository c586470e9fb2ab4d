/* relay.h: a waiting request's answer copied to its client through a
 * socketpair, so that libmicrohttpd never reads the client's end-of-input
 * (see relay.c).
 */
#ifndef SRV_RELAY_H
#define SRV_RELAY_H

#include <stddef.h>

typedef struct relay relay;

/* Starts the relay's thread. Returns 0, or -1 with err. */
int relay_start(relay **out, char *err, size_t errlen);
/* Puts connection socket fd (libmicrohttpd's) behind the relay: fd keeps
 * its number but becomes one end of a socketpair, whose other end the
 * relay copies to the client socket. Returns the client socket (the relay
 * closes it once the connection's end is closed and its bytes are out),
 * or -1 when nothing changed (out of descriptors or memory). */
int relay_take(relay *r, int fd);
/* Copies what is left for up to grace_s, closes every connection, stops
 * the thread and frees r (after the daemon has stopped). NULL: no-op. */
void relay_free(relay *r, double grace_s);

#endif
