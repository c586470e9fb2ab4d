/* dit_json.h: the project's one strict JSON reader (public).
 *
 * Everything ditmoe parses goes through it: safetensors headers, a model's
 * config.json, the server's config and request bodies. It holds no global
 * state (unlike cJSON's error position), so any number of threads parse at
 * once without a lock. It is strict: RFC 8259 and nothing more (no comments,
 * no trailing commas, no NaN, no leading zeros or '+', valid UTF-8 only, no
 * raw control characters in strings, nothing but whitespace after the
 * value), a depth limit, and duplicate object keys refused by default.
 *
 * dit_json_parse turns a buffer into an immutable tree held in one arena owned by
 * the dit_json_doc; every dit_json pointer stays valid until dit_json_free. Objects keep
 * their keys in document order. The tree may be read by many threads.
 *
 * Accessors take NULL and wrong-typed values quietly (returning NULL, 0 or
 * "not exact"), so lookups chain: dit_json_int(dit_json_get(dit_json_get(root, "a"), "b"), &v)
 * is false whether "a" is missing, "b" is missing or "b" is not an integer.
 */
#ifndef DIT_JSON_H
#define DIT_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "dit_export.h"

#ifdef __cplusplus
extern "C" {
#endif

enum dit_json_kind {
    DIT_JSON_NONE = 0, /* what dit_json_type says of NULL */
    DIT_JSON_NULL,
    DIT_JSON_BOOL,
    DIT_JSON_NUMBER,
    DIT_JSON_STRING,
    DIT_JSON_ARRAY,
    DIT_JSON_OBJECT,
};

/* dit_json_parse_ex flags */
enum {
    DIT_JSON_ALLOW_DUPLICATES = 1, /* keep duplicate keys; dit_json_get finds the first */
};

#define DIT_JSON_MAX_DEPTH 64 /* nesting of arrays and objects */

typedef struct dit_json_doc dit_json_doc;
typedef struct dit_json dit_json;

/* Parses buf[0..len) (need not be NUL-terminated) as one JSON value.
 * On success returns 0 and *out owns the tree (free with dit_json_free). On
 * failure returns -1 (malformed, message in err: "byte N: expected ...,
 * found ...") or -2 (no memory), and *out is NULL. err may be NULL. */
DIT_API int dit_json_parse(const char *buf, size_t len, dit_json_doc **out, char *err, size_t errlen);
/* dit_json_parse with flags (DIT_JSON_ALLOW_DUPLICATES). */
DIT_API int dit_json_parse_ex(const char *buf, size_t len, int flags, dit_json_doc **out,
                char *err, size_t errlen);
/* Frees a document and every value in it. NULL is a no-op. */
DIT_API void dit_json_free(dit_json_doc *d);

/* The top-level value (never NULL for a parsed document). */
DIT_API const dit_json *dit_json_root(const dit_json_doc *d);

/* enum dit_json_kind of v; DIT_JSON_NONE for NULL. */
DIT_API int dit_json_type(const dit_json *v);
/* "null", "boolean", "number", "string", "array", "object" ("nothing"). */
DIT_API const char *dit_json_type_name(int type);

/* Arrays and objects: the number of elements or members. Strings: the
 * length in bytes (a string may hold U+0000). Anything else: 0. */
DIT_API size_t dit_json_len(const dit_json *v);
/* Array element i, or object member i's value; NULL if out of range. */
DIT_API const dit_json *dit_json_at(const dit_json *v, size_t i);
/* Object member i's key as a string value (dit_json_str, dit_json_len); NULL if v is
 * not an object or i is out of range. */
DIT_API const dit_json *dit_json_key(const dit_json *v, size_t i);
/* The value of member `key` (NUL-terminated) of object v, or NULL. */
DIT_API const dit_json *dit_json_get(const dit_json *v, const char *key);

/* A number's value (an integer literal beyond double range is rounded);
 * NaN when v is not a number. */
DIT_API double dit_json_num(const dit_json *v);
/* Stores v as an int64 and returns 1 when v is a number whose value is an
 * integer that int64 holds exactly (from its literal: "9007199254740993",
 * "1e3", "-0" and "2.0" all count); returns 0 and leaves *out alone
 * otherwise. */
DIT_API int dit_json_int(const dit_json *v, int64_t *out);
/* A string's bytes, NUL-terminated (see dit_json_len for embedded NULs); NULL
 * when v is not a string. */
DIT_API const char *dit_json_str(const dit_json *v);
/* 1 for true, 0 for false, -1 when v is not a boolean. */
DIT_API int dit_json_bool(const dit_json *v);

/* For messages that quote text from a document: the bytes of s to show so
 * that at most max are shown and no UTF-8 character is cut in two; use as
 * "%.*s", dit_json_quote_len(s, max), s. */
DIT_API int dit_json_quote_len(const char *s, int max);
/* v, a string naming one of `names` (NULL-terminated, ASCII
 * case-insensitive): stores its index in *out and returns 0. Otherwise
 * returns -1, leaves *out alone and writes to err "FIELD: unknown value
 * '...': must be one of "a", "b"" (or "..., got TYPE" for a non-string). */
DIT_API int dit_json_enum(const dit_json *v, const char *field, const char *const *names,
                          int *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
