/* client_ip.c: which address a request comes from, for the access log.
 *
 * Behind a reverse proxy the peer is the proxy, and the client's address
 * is in X-Forwarded-For or X-Real-IP. Those headers are believed only when
 * the peer is one of the configured trusted proxies (an address or a CIDR
 * prefix): anyone else could write anything there. X-Forwarded-For is read
 * from the right, skipping trusted proxies, so a client cannot slip in an
 * address of its choosing at the left.
 */
#include "client_ip.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* An address as 16 bytes (IPv4 as IPv4-mapped IPv6). */
typedef struct addr16 {
    unsigned char b[16];
} addr16;

static int parse_addr(const char *text, addr16 *a)
{
    struct in_addr v4;
    memset(a, 0, sizeof *a);
    if (inet_pton(AF_INET, text, &v4) == 1) {
        a->b[10] = a->b[11] = 0xff;
        memcpy(a->b + 12, &v4, 4);
        return 1;
    }
    return inet_pton(AF_INET6, text, a->b) == 1;
}

static int is_v4(const addr16 *a)
{
    static const unsigned char prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return !memcmp(a->b, prefix, 12);
}

static void format_addr(const addr16 *a, char *out, size_t n)
{
    if (!inet_ntop(is_v4(a) ? AF_INET : AF_INET6, is_v4(a) ? a->b + 12 : a->b, out, (socklen_t)n))
        snprintf(out, n, "?");
}

/* Does a lie in the prefix `entry` ("10.0.0.0/8", "::1", "192.168.1.2")? */
static int in_prefix(const addr16 *a, const char *entry)
{
    char host[64];
    const char *slash = strchr(entry, '/');
    size_t hl = slash ? (size_t)(slash - entry) : strlen(entry);
    if (hl == 0 || hl >= sizeof host)
        return 0;
    memcpy(host, entry, hl);
    host[hl] = 0;
    addr16 p;
    if (!parse_addr(host, &p))
        return 0;
    int bits = 128;
    if (slash) {
        char *end;
        long v = strtol(slash + 1, &end, 10);
        if (*end || v < 0 || v > (is_v4(&p) ? 32 : 128))
            return 0;
        bits = (int)v + (is_v4(&p) ? 96 : 0);
    }
    for (int i = 0; i < bits; i++) {
        int m = 0x80 >> (i % 8);
        if ((a->b[i / 8] & m) != (p.b[i / 8] & m))
            return 0;
    }
    return 1;
}

static int trusted(const addr16 *a, const char *list)
{
    char entry[80];
    while (*list) {
        size_t n = strcspn(list, ",");
        const char *e = list;
        list += n + (list[n] == ',');
        while (n && (*e == ' ' || *e == '\t'))
            e++, n--;
        while (n && (e[n - 1] == ' ' || e[n - 1] == '\t'))
            n--;
        if (n == 0 || n >= sizeof entry)
            continue;
        memcpy(entry, e, n);
        entry[n] = 0;
        if (in_prefix(a, entry))
            return 1;
    }
    return 0;
}

/* The rightmost untrusted address of an X-Forwarded-For list; 0 when an
 * entry is not an address. */
static int from_forwarded_for(const char *value, const char *list, addr16 *out)
{
    char item[64];
    const char *end = value + strlen(value);
    int found = 0;
    while (end > value) {
        const char *start = end;
        while (start > value && start[-1] != ',')
            start--;
        const char *s = start, *e = end;
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - s) >= sizeof item)
            return found;
        memcpy(item, s, (size_t)(e - s));
        item[e - s] = 0;
        addr16 a;
        if (!parse_addr(item, &a))
            return found;
        *out = a;
        found = 1;
        if (!trusted(&a, list))
            return 1;
        end = start > value ? start - 1 : value;
    }
    return found; /* every hop trusted: the leftmost */
}

void srv_client_ip(const struct sockaddr *peer, const char *header_name,
                   const char *header_value, const char *trusted_list, char *out, size_t n)
{
    addr16 a;
    memset(&a, 0, sizeof a);
    if (peer && peer->sa_family == AF_INET) {
        a.b[10] = a.b[11] = 0xff;
        memcpy(a.b + 12, &((const struct sockaddr_in *)peer)->sin_addr, 4);
    } else if (peer && peer->sa_family == AF_INET6) {
        memcpy(a.b, &((const struct sockaddr_in6 *)peer)->sin6_addr, 16);
    } else {
        snprintf(out, n, "-");
        return;
    }
    if (header_name && header_name[0] && header_value && trusted_list && trusted(&a, trusted_list)) {
        addr16 c;
        if (!strcasecmp(header_name, "X-Forwarded-For")) {
            if (from_forwarded_for(header_value, trusted_list, &c))
                a = c;
        } else if (parse_addr(header_value, &c)) {
            a = c;
        }
    }
    format_addr(&a, out, n);
}
