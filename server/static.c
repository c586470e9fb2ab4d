/* static.c: the demo page and its files, from the web root (configured,
 * or found by paths.c at start: srv.web_root).
 *
 * Safe against path traversal twice over: a path segment may not be empty,
 * "." or "..", start with a dot or hold a backslash or control character,
 * and the file's resolved path (symlinks followed) must still lie inside
 * the resolved web root. Only regular files are served (checked with
 * fstat on the file opened without blocking: a FIFO is a 404, not a hung
 * thread), with a content type from their extension; the body is the
 * open file (no copy).
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "routes.h"

static const char *content_type(const char *path)
{
    static const char *const TYPES[][2] = {
        {".html", "text/html; charset=utf-8"}, {".htm", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"}, {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"}, {".json", "application/json"},
        {".map", "application/json"}, {".txt", "text/plain; charset=utf-8"},
        {".svg", "image/svg+xml"}, {".png", "image/png"}, {".jpg", "image/jpeg"},
        {".jpeg", "image/jpeg"}, {".gif", "image/gif"}, {".webp", "image/webp"},
        {".ico", "image/x-icon"}, {".wasm", "application/wasm"}, {".woff2", "font/woff2"},
        {".woff", "font/woff"}, {".webmanifest", "application/manifest+json"},
    };
    const char *dot = strrchr(path, '.');
    if (dot && !strchr(dot, '/'))
        for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
            if (!strcasecmp(dot, TYPES[i][0]))
                return TYPES[i][1];
    return "application/octet-stream";
}

/* 1 when every segment of rel (no leading '/') is a plain name. */
static int safe_relative(const char *rel)
{
    const char *seg = rel;
    for (;;) {
        size_t n = strcspn(seg, "/");
        if (n == 0 && seg[n] == '/')
            return 0; /* "//" */
        if (n > 0 && seg[0] == '.')
            return 0; /* ".", "..", hidden files */
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)seg[i] < 0x20 || seg[i] == 0x7f || seg[i] == '\\')
                return 0;
        if (!seg[n])
            return 1;
        seg += n + 1;
    }
}

static int not_found(srv_req *req, srv_reply *out)
{
    srv_reply_error(out, 404, "not_found", "%s: no such endpoint or file", req->path);
    return ROUTE_DONE;
}

int routes_static(srv_req *req, srv_reply *out)
{
    const char *path = req->path;
    char rel[PATH_MAX], full[PATH_MAX], real[PATH_MAX], root[PATH_MAX];
    if (path[0] != '/' || strlen(path) >= 1024 || !safe_relative(path + 1))
        return not_found(req, out);
    int n = snprintf(rel, sizeof rel, "%s%s", path + 1,
                     !path[1] || path[strlen(path) - 1] == '/' ? "index.html" : "");
    if (n < 0 || (size_t)n >= sizeof rel || !req->s->web_root[0] ||
        !realpath(req->s->web_root, root))
        return not_found(req, out);
    n = snprintf(full, sizeof full, "%s/%s", root, rel);
    if (n < 0 || (size_t)n >= sizeof full || !realpath(full, real))
        return not_found(req, out);
    size_t rl = strlen(root);
    if (strncmp(real, root, rl) || real[rl] != '/')
        return not_found(req, out);
    /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer
     * in an HTTP thread; the file type is checked on the open file */
    int fd = open(real, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return not_found(req, out);
    }
    if (strcmp(req->method, "GET") && strcmp(req->method, "HEAD")) {
        close(fd);
        srv_reply_error(out, 405, "method_not_allowed", "%s %s: method not allowed: use GET, HEAD",
                        req->method, path);
        srv_reply_header(out, "Allow", "GET, HEAD");
        return ROUTE_DONE;
    }
    out->status = 200;
    out->ctype = content_type(real);
    out->fd = fd;
    out->fd_size = (uint64_t)st.st_size;
    srv_reply_header(out, "Cache-Control", "no-cache");
    srv_reply_header(out, "X-Content-Type-Options", "nosniff");
    return ROUTE_DONE;
}
