/* client_ip.h: the client address of a request, proxy headers included.
 */
#ifndef SRV_CLIENT_IP_H
#define SRV_CLIENT_IP_H

#include <stddef.h>
#include <sys/socket.h>

/* Writes the client's address into out: the peer's, or, when the peer is
 * in trusted_list (comma-separated addresses and CIDR prefixes) and
 * header_name ("X-Forwarded-For" or "X-Real-IP") has a valid value, the
 * address that header names. header_value may be NULL. */
void srv_client_ip(const struct sockaddr *peer, const char *header_name,
                   const char *header_value, const char *trusted_list, char *out, size_t n);

#endif
