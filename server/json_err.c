/* json_err.c: building replies, above all the JSON error body.
 *
 * Every error the server sends has one shape,
 *   {"error": {"code": 400, "type": "invalid_request", "message": "..."}}
 * with code the HTTP status, type a stable machine-readable word and
 * message a sentence naming the field and what is allowed. Messages may
 * quote client input, so they go through cJSON's string escaping, after
 * srv_utf8_copy has made them valid UTF-8 (cJSON passes bytes >= 0x80
 * through as they are, and a message cut to fit may end mid-character).
 * On the OpenAI routes the same error goes out in OpenAI's shape,
 *   {"error": {"message": "...", "type": "invalid_request_error",
 *              "param": "prompt", "code": "invalid_request"}}
 * so its SDKs surface type and param as they do for OpenAI.
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

/* Bytes in a valid UTF-8 character at p (n available), or 0. */
static size_t utf8_char(const unsigned char *p, size_t n)
{
    size_t len = p[0] < 0x80 ? 1 : p[0] >= 0xc2 && p[0] < 0xe0 ? 2 : p[0] >= 0xe0 && p[0] < 0xf0 ? 3
               : p[0] >= 0xf0 && p[0] < 0xf5 ? 4 : 0;
    if (!len || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    /* overlong 3- and 4-byte forms, surrogates, beyond U+10FFFF */
    if ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] >= 0xa0) ||
        (p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] >= 0x90))
        return 0;
    return len;
}

void srv_utf8_copy(const char *in, char *out, size_t n)
{
    static const char FFFD[] = "\xef\xbf\xbd";
    const unsigned char *p = (const unsigned char *)in;
    size_t len = strlen(in), o = 0;
    if (!n)
        return;
    for (size_t i = 0; i < len;) {
        size_t c = utf8_char(p + i, len - i);
        const char *src = c ? in + i : FFFD;
        size_t k = c ? c : 3;
        if (o + k + 1 > n)
            break;
        memcpy(out + o, src, k);
        o += k;
        i += c ? c : 1;
    }
    out[o] = 0;
}

/* OpenAI's error type for an HTTP status. */
static const char *openai_type(int status)
{
    return status == 401 ? "authentication_error" : status == 403 ? "permission_error"
         : status == 429 ? "rate_limit_error" : status >= 500 ? "server_error"
         : "invalid_request_error";
}

char *srv_error_json(int status, const char *type, const char *msg, const char *param, int openai)
{
    char clean[512];
    srv_utf8_copy(msg, clean, sizeof clean);
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    char *text = NULL;
    int ok = e != NULL;
    if (ok && openai) {
        ok = cJSON_AddStringToObject(e, "message", clean) &&
             cJSON_AddStringToObject(e, "type", openai_type(status)) &&
             (param && param[0] ? cJSON_AddStringToObject(e, "param", param)
                                : cJSON_AddNullToObject(e, "param")) &&
             cJSON_AddStringToObject(e, "code", type);
    } else if (ok) {
        ok = cJSON_AddNumberToObject(e, "code", status) && cJSON_AddStringToObject(e, "type", type) &&
             cJSON_AddStringToObject(e, "message", clean);
    }
    if (ok)
        text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

void srv_reply_error(srv_reply *r, int status, const char *type, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->is_error = 1;
    snprintf(r->err_type, sizeof r->err_type, "%s", type);
    r->err_param[0] = 0;
    srv_utf8_copy(msg, r->err_msg, sizeof r->err_msg);
    char *text = srv_error_json(status, type, r->err_msg, NULL, 0);
    srv_reply_body(r, status, "application/json", text, text ? strlen(text) : 0);
}

void srv_reply_error_param(srv_reply *r, const char *param)
{
    snprintf(r->err_param, sizeof r->err_param, "%s", param);
}

int srv_openai_path(const char *path)
{
    return !strncmp(path, "/v1/images/", 11) || !strcmp(path, "/v1/models") ||
           !strncmp(path, "/v1/models/", 11);
}

void srv_reply_openai(srv_reply *r)
{
    if (!r->is_error)
        return;
    char *text = srv_error_json(r->status, r->err_type, r->err_msg, r->err_param, 1);
    if (text)
        srv_reply_body(r, r->status, "application/json", text, strlen(text));
}
