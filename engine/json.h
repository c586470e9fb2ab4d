/* json.h: a small strict JSON reader (engine-internal).
 *
 * The engine reads two JSON texts: safetensors headers and a model's
 * config.json. House rule keeps client JSON libraries out of engine/, so
 * this is the engine's own reader: RFC 8259 and nothing more (no comments,
 * no trailing commas, no NaN, no leading zeros or '+', valid UTF-8 only, no
 * raw control characters in strings, nothing but whitespace after the
 * value), a depth limit, and duplicate object keys refused by default.
 *
 * js_parse turns a buffer into an immutable tree held in one arena owned by
 * the js_doc; every js_value pointer stays valid until js_free. Objects keep
 * their keys in document order. The tree may be read by many threads.
 *
 * Accessors take NULL and wrong-typed values quietly (returning NULL, 0 or
 * "not exact"), so lookups chain: js_int(js_get(js_get(root, "a"), "b"), &v)
 * is false whether "a" is missing, "b" is missing or "b" is not an integer.
 */
#ifndef DIT_JSON_H
#define DIT_JSON_H

#include <stddef.h>
#include <stdint.h>

enum js_type {
    JS_NONE = 0, /* what js_type says of NULL */
    JS_NULL,
    JS_BOOL,
    JS_NUMBER,
    JS_STRING,
    JS_ARRAY,
    JS_OBJECT,
};

/* js_parse_ex flags */
enum {
    JS_ALLOW_DUPLICATES = 1, /* keep duplicate keys; js_get finds the first */
};

#define JS_MAX_DEPTH 64 /* nesting of arrays and objects */

typedef struct js_doc js_doc;
typedef struct js_value js_value;

/* Parses buf[0..len) (need not be NUL-terminated) as one JSON value.
 * On success returns 0 and *out owns the tree (free with js_free). On
 * failure returns -1 (malformed, message in err: "byte N: expected ...,
 * found ...") or -2 (no memory), and *out is NULL. err may be NULL. */
int js_parse(const char *buf, size_t len, js_doc **out, char *err, size_t errlen);
/* js_parse with flags (JS_ALLOW_DUPLICATES). */
int js_parse_ex(const char *buf, size_t len, int flags, js_doc **out,
                char *err, size_t errlen);
/* Frees a document and every value in it. NULL is a no-op. */
void js_free(js_doc *d);

/* The top-level value (never NULL for a parsed document). */
const js_value *js_root(const js_doc *d);

/* enum js_type of v; JS_NONE for NULL. */
int js_type(const js_value *v);
/* "null", "boolean", "number", "string", "array", "object" ("nothing"). */
const char *js_type_name(int type);

/* Arrays and objects: the number of elements or members. Strings: the
 * length in bytes (a string may hold U+0000). Anything else: 0. */
size_t js_len(const js_value *v);
/* Array element i, or object member i's value; NULL if out of range. */
const js_value *js_at(const js_value *v, size_t i);
/* Object member i's key as a string value (js_str, js_len); NULL if v is
 * not an object or i is out of range. */
const js_value *js_key(const js_value *v, size_t i);
/* The value of member `key` (NUL-terminated) of object v, or NULL. */
const js_value *js_get(const js_value *v, const char *key);

/* A number's value (an integer literal beyond double range is rounded);
 * NaN when v is not a number. */
double js_num(const js_value *v);
/* Stores v as an int64 and returns 1 when v is a number whose value is an
 * integer that int64 holds exactly (from its literal: "9007199254740993",
 * "1e3", "-0" and "2.0" all count); returns 0 and leaves *out alone
 * otherwise. */
int js_int(const js_value *v, int64_t *out);
/* A string's bytes, NUL-terminated (see js_len for embedded NULs); NULL
 * when v is not a string. */
const char *js_str(const js_value *v);
/* 1 for true, 0 for false, -1 when v is not a boolean. */
int js_bool(const js_value *v);

#endif
