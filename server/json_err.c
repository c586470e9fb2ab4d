/* json_err.c: building replies, above all the JSON error body.
 *
 * Every error the server sends has one shape,
 *   {"error": {"code": 400, "type": "invalid_request", "message": "..."}}
 * with code the HTTP status, type a stable machine-readable word and
 * message a sentence naming the field and what is allowed. Messages may
 * quote client input, so they go through cJSON's string escaping.
 */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "routes.h"

void srv_reply_init(srv_reply *r)
{
    memset(r, 0, sizeof *r);
    r->fd = -1;
}

void srv_reply_free(srv_reply *r)
{
    free(r->body);
    if (r->fd >= 0)
        close(r->fd);
    srv_reply_init(r);
}

void srv_reply_header(srv_reply *r, const char *name, const char *fmt, ...)
{
    if (r->nhdr >= SRV_MAX_HEADERS)
        return;
    snprintf(r->hdr_name[r->nhdr], sizeof r->hdr_name[0], "%s", name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->hdr_value[r->nhdr], sizeof r->hdr_value[0], fmt, ap);
    va_end(ap);
    r->nhdr++;
}

void srv_reply_body(srv_reply *r, int status, const char *ctype, char *body, size_t len)
{
    free(r->body);
    r->status = status;
    r->ctype = ctype;
    r->body = body;
    r->len = len;
}

int srv_reply_text(srv_reply *r, int status, const char *ctype, char *text)
{
    if (text)
        srv_reply_body(r, status, ctype, text, strlen(text));
    else
        srv_reply_error(r, 503, "out_of_memory", "out of memory");
    return ROUTE_DONE;
}

void srv_reply_json(srv_reply *r, int status, const char *json)
{
    size_t n = strlen(json);
    char *b = malloc(n + 1);
    if (b)
        memcpy(b, json, n + 1);
    srv_reply_body(r, status, "application/json", b, b ? n : 0);
}

void srv_reply_error(srv_reply *r, int status, const char *type, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    char *text = NULL;
    if (e && cJSON_AddNumberToObject(e, "code", status) && cJSON_AddStringToObject(e, "type", type) &&
        cJSON_AddStringToObject(e, "message", msg))
        text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    srv_reply_body(r, status, "application/json", text, text ? strlen(text) : 0);
}
