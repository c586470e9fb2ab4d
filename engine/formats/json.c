/* json.c: a small strict JSON reader into an arena-held, immutable tree.
 *
 * A recursive-descent parser over a byte buffer that need not end in NUL.
 * Children of an array or object are first pushed on a scratch stack of
 * values; when the container closes they are copied into one contiguous
 * run in the arena, so the finished tree holds no growable arrays and every
 * pointer into it is stable. Object members are stored as key, value pairs
 * (items[2i], items[2i+1]); objects with more than SMALL_OBJECT members get
 * a hash index (also in the arena) that serves dit_json_get and the duplicate-key
 * check, so neither is quadratic on a large safetensors header.
 *
 * Whether a number is an exact integer is decided from its literal's digits
 * and exponent, not from the rounded double. Doubles come from strtod on a
 * NUL-terminated copy; the engine never calls setlocale, so '.' is the
 * decimal point.
 */
#include <ditmoe/dit_json.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SMALL_OBJECT 8

struct dit_json {
    unsigned char type;    /* enum dit_json_kind */
    unsigned char exact;   /* number: ival holds the value exactly */
    unsigned char boolean; /* DIT_JSON_BOOL */
    size_t len;            /* string bytes, array elements, object members */
    double num;
    int64_t ival;
    union {
        const char *str;       /* DIT_JSON_STRING, NUL-terminated */
        const dit_json *items; /* DIT_JSON_ARRAY: len values; DIT_JSON_OBJECT: 2 * len */
    } u;
    const uint32_t *index;     /* DIT_JSON_OBJECT with a hash index: slot -> member + 1 */
    size_t index_mask;
};

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} chunk;

struct dit_json_doc {
    chunk *chunks;
    size_t next_cap;
    dit_json root;
};

typedef struct parser {
    const unsigned char *p, *end, *start;
    dit_json_doc *doc;
    int flags;
    int depth;
    int nomem;
    dit_json *stack; /* children of the open containers */
    size_t top, cap;
    char *num;       /* scratch copy of a number literal for strtod */
    size_t num_cap;
    char *err;
    size_t errlen;
} parser;

/* ---- arena ------------------------------------------------------------- */

static void *arena_alloc(dit_json_doc *d, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    chunk *c = d->chunks;
    if (!c || c->cap - c->used < size) {
        size_t cap = d->next_cap;
        if (cap < size)
            cap = size;
        c = malloc(sizeof(chunk) + cap);
        if (!c)
            return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = d->chunks;
        d->chunks = c;
        if (d->next_cap < ((size_t)1 << 20))
            d->next_cap *= 2;
    }
    void *r = c->data + c->used;
    c->used += size;
    return r;
}

void dit_json_free(dit_json_doc *d)
{
    if (!d)
        return;
    chunk *c = d->chunks;
    while (c) {
        chunk *n = c->next;
        free(c);
        c = n;
    }
    free(d);
}

/* ---- errors ------------------------------------------------------------ */

static void describe(const parser *ps, char *buf, size_t n)
{
    if (ps->p >= ps->end)
        snprintf(buf, n, "end of input");
    else if (*ps->p >= 0x20 && *ps->p < 0x7f)
        snprintf(buf, n, "'%c'", *ps->p);
    else
        snprintf(buf, n, "byte 0x%02x", *ps->p);
}

/* Sets the error (the first one wins) and returns -1. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static int fail(parser *ps, const char *fmt, ...)
{
    if (ps->err && ps->errlen && !ps->err[0]) {
        int k = snprintf(ps->err, ps->errlen, "byte %zu: ",
                         (size_t)(ps->p - ps->start));
        if (k >= 0 && (size_t)k < ps->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(ps->err + k, ps->errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

static int fail_expected(parser *ps, const char *what)
{
    char found[32];
    describe(ps, found, sizeof found);
    return fail(ps, "expected %s, found %s", what, found);
}

static int oom(parser *ps)
{
    ps->nomem = 1;
    return fail(ps, "out of memory");
}

/* ---- scalars ----------------------------------------------------------- */

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' ||
                               *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Reads 4 hex digits after "\u" at p; -1 if they are not there. */
static long hex4(const unsigned char *p, const unsigned char *end)
{
    if (end - p < 4)
        return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

static size_t put_utf8(char *o, unsigned long cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), or 0:
 * overlong forms, UTF-16 surrogates and code points past U+10FFFF are
 * invalid. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    return n;
}

/* Decodes the escape at ps->p (just after the backslash) into o. Returns
 * the bytes written, or 0 after setting an error. */
static size_t parse_escape(parser *ps, char *o)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *e = ps->p < ps->end ? memchr(from, *ps->p, sizeof from - 1) : NULL;
    if (e) {
        *o = to[e - from];
        ps->p++;
        return 1;
    }
    if (ps->p >= ps->end || *ps->p != 'u') {
        fail_expected(ps, "one of \"\\/bfnrtu after '\\'");
        return 0;
    }
    long cp = hex4(ps->p + 1, ps->end), lo = -1;
    if (cp < 0) {
        fail(ps, "expected 4 hex digits after '\\u'");
        return 0;
    }
    if (cp >= 0xdc00 && cp <= 0xdfff) {
        fail(ps, "lone low surrogate \\u%04lx", cp);
        return 0;
    }
    if (cp >= 0xd800 && cp <= 0xdbff) {
        const unsigned char *q = ps->p + 5;
        if (ps->end - q >= 2 && q[0] == '\\' && q[1] == 'u')
            lo = hex4(q + 2, ps->end);
        if (lo < 0xdc00 || lo > 0xdfff) {
            fail(ps, "high surrogate \\u%04lx not followed by a low surrogate", cp);
            return 0;
        }
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        ps->p += 6;
    }
    ps->p += 5;
    return put_utf8(o, (unsigned long)cp);
}

/* Parses a string at ps->p (on the opening quote) into v. */
static int parse_string(parser *ps, dit_json *v)
{
    const unsigned char *q = ++ps->p;
    /* find the closing quote to size the copy: decoding never grows it */
    while (q < ps->end && *q != '"')
        q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
    if (q >= ps->end) {
        ps->p--; /* report the opening quote */
        return fail(ps, "unterminated string");
    }
    char *o = arena_alloc(ps->doc, (size_t)(q - ps->p) + 1);
    if (!o)
        return oom(ps);
    size_t n = 0;
    while (*ps->p != '"') {
        unsigned c = *ps->p;
        if (c == '\\') {
            ps->p++;
            size_t k = parse_escape(ps, o + n);
            if (!k)
                return -1;
            n += k;
        } else if (c < 0x20) {
            return fail(ps, "control character 0x%02x in a string (escape it)", c);
        } else if (c < 0x80) {
            o[n++] = (char)c;
            ps->p++;
        } else {
            size_t k = utf8_len(ps->p, ps->end);
            if (!k)
                return fail(ps, "invalid UTF-8 in a string");
            memcpy(o + n, ps->p, k);
            n += k;
            ps->p += k;
        }
    }
    ps->p++;
    o[n] = 0;
    v->type = DIT_JSON_STRING;
    v->len = n;
    v->u.str = o;
    return 0;
}

/* Decides exactness from the literal: significant digits d (without leading
 * or trailing zeros) times 10^e10 is an int64 when e10 >= 0 and it fits. */
static void exact_int(dit_json *v, int neg, const unsigned char *digits,
                      const unsigned char *dend, long e10)
{
    const unsigned char *a = digits, *b = dend;
    while (a < b && (*a == '0' || *a == '.'))
        a++;
    while (b > a && (b[-1] == '0' || b[-1] == '.')) {
        if (b[-1] == '0')
            e10++;
        b--;
    }
    if (a == b) { /* zero */
        v->exact = 1;
        v->ival = 0;
        return;
    }
    if (e10 < 0 || e10 > 19)
        return;
    uint64_t m = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (const unsigned char *p = a; p < b; p++) {
        if (*p == '.')
            continue;
        if (m > (lim - (uint64_t)(*p - '0')) / 10)
            return;
        m = m * 10 + (uint64_t)(*p - '0');
    }
    for (long i = 0; i < e10; i++) {
        if (m > lim / 10)
            return;
        m *= 10;
    }
    v->exact = 1;
    v->ival = neg ? (m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m)
                  : (int64_t)m;
}

/* The end of the run of digits at p (p itself when there is none). */
static const unsigned char *skip_digits(const unsigned char *p, const unsigned char *e)
{
    while (p < e && *p >= '0' && *p <= '9')
        p++;
    return p;
}

/* strtod on a NUL-terminated copy of s[0..n) (the buffer has no NUL). */
static int to_double(parser *ps, const unsigned char *s, size_t n, double *out)
{
    if (n + 1 > ps->num_cap) {
        char *b = realloc(ps->num, n + 64);
        if (!b)
            return oom(ps);
        ps->num = b;
        ps->num_cap = n + 64;
    }
    memcpy(ps->num, s, n);
    ps->num[n] = 0;
    *out = strtod(ps->num, NULL); /* overflow gives +-HUGE_VAL: kept */
    return 0;
}

static int parse_number(parser *ps, dit_json *v)
{
    const unsigned char *s = ps->p, *e = ps->end;
    int neg = s < e && *s == '-';
    const unsigned char *digits = s + neg, *p = digits, *f;
    if (p < e && *p == '0')
        p++;
    else if (p < e && *p >= '1' && *p <= '9')
        p = skip_digits(p, e);
    else {
        ps->p = p;
        return fail_expected(ps, "a digit");
    }
    long frac = 0, ex = 0;
    if (p < e && *p == '.') {
        f = ++p;
        p = skip_digits(p, e);
        if (p == f) {
            ps->p = p;
            return fail_expected(ps, "a digit after '.'");
        }
        frac = (long)(p - f);
    }
    const unsigned char *dend = p;
    if (p < e && (*p == 'e' || *p == 'E')) {
        int eneg = 0;
        if (++p < e && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        for (f = p; p < e && *p >= '0' && *p <= '9'; p++)
            if (ex < 1000000) /* saturate: the value is 0 or infinite anyway */
                ex = ex * 10 + (*p - '0');
        if (p == f) {
            ps->p = p;
            return fail_expected(ps, "a digit in the exponent");
        }
        ex = eneg ? -ex : ex;
    }
    v->type = DIT_JSON_NUMBER;
    if (to_double(ps, s, (size_t)(p - s), &v->num))
        return -1;
    exact_int(v, neg, digits, dend, ex - frac);
    ps->p = p;
    return 0;
}

static int parse_literal(parser *ps, dit_json *v)
{
    static const struct { const char *word; int type, b; } lit[] = {
        {"true", DIT_JSON_BOOL, 1}, {"false", DIT_JSON_BOOL, 0}, {"null", DIT_JSON_NULL, 0}};
    for (size_t i = 0; i < sizeof lit / sizeof lit[0]; i++) {
        size_t n = strlen(lit[i].word);
        if ((size_t)(ps->end - ps->p) >= n && !memcmp(ps->p, lit[i].word, n)) {
            v->type = (unsigned char)lit[i].type;
            v->boolean = (unsigned char)lit[i].b;
            ps->p += n;
            return 0;
        }
    }
    return fail_expected(ps, "a value");
}

/* ---- containers -------------------------------------------------------- */

static int push(parser *ps, const dit_json *v)
{
    if (ps->top == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        dit_json *s = realloc(ps->stack, cap * sizeof *s);
        if (!s)
            return oom(ps);
        ps->stack = s;
        ps->cap = cap;
    }
    ps->stack[ps->top++] = *v;
    return 0;
}

/* Moves stack[base..top) into the arena as v's items. */
static int pop_items(parser *ps, size_t base, dit_json *v)
{
    size_t n = ps->top - base;
    if (n) {
        dit_json *items = arena_alloc(ps->doc, n * sizeof *items);
        if (!items)
            return oom(ps);
        memcpy(items, ps->stack + base, n * sizeof *items);
        v->u.items = items;
    }
    ps->top = base;
    return 0;
}

static uint64_t hash_key(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int same_key(const dit_json *k, const char *s, size_t n)
{
    return k->len == n && !memcmp(k->u.str, s, n);
}

/* Finds member `key` of object v: its index, or -1. */
static long find_member(const dit_json *v, const char *key, size_t n)
{
    const dit_json *it = v->u.items;
    if (!v->index) {
        for (size_t i = 0; i < v->len; i++)
            if (same_key(&it[2 * i], key, n))
                return (long)i;
        return -1;
    }
    for (size_t s = hash_key(key, n) & v->index_mask;; s = (s + 1) & v->index_mask) {
        uint32_t m = v->index[s];
        if (!m)
            return -1;
        if (same_key(&it[2 * (m - 1)], key, n))
            return (long)(m - 1);
    }
}

/* Builds the hash index of a large object and/or checks it for duplicate
 * keys (unless allowed). `at` is the object's opening byte. */
static int index_object(parser *ps, dit_json *v, size_t at)
{
    const dit_json *it = v->u.items;
    uint32_t *index = NULL;
    size_t mask = 0;
    if (v->len > SMALL_OBJECT) {
        if (v->len >= UINT32_MAX / 4)
            return fail(ps, "object starting at byte %zu has too many members", at);
        size_t slots = 16;
        while (slots < v->len * 2)
            slots *= 2;
        index = arena_alloc(ps->doc, slots * sizeof *index);
        if (!index)
            return oom(ps);
        memset(index, 0, slots * sizeof *index);
        mask = slots - 1;
    }
    for (size_t i = 0; i < v->len; i++) {
        const dit_json *k = &it[2 * i];
        dit_json probe = *v;
        probe.len = i; /* search the members before i */
        probe.index = index;
        probe.index_mask = mask;
        long dup = find_member(&probe, k->u.str, k->len);
        if (dup >= 0 && !(ps->flags & DIT_JSON_ALLOW_DUPLICATES))
            return fail(ps, "duplicate key \"%.80s\" in the object starting at byte %zu",
                        k->u.str, at);
        if (index && dup < 0) {
            size_t s = hash_key(k->u.str, k->len) & mask;
            while (index[s])
                s = (s + 1) & mask;
            index[s] = (uint32_t)(i + 1);
        }
    }
    v->index = index;
    v->index_mask = mask;
    return 0;
}

static int parse_value(parser *ps, dit_json *v);

/* Parses the members or elements of a container after its opening byte. */
static int parse_container(parser *ps, dit_json *v, int object)
{
    size_t at = (size_t)(ps->p - ps->start), base = ps->top;
    const char close = object ? '}' : ']';
    if (++ps->depth > DIT_JSON_MAX_DEPTH)
        return fail(ps, "nesting deeper than %d", DIT_JSON_MAX_DEPTH);
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close)
        ps->p++;
    else
        for (;;) {
            dit_json item = {0};
            if (object) {
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != '"')
                    return fail_expected(ps, "a string key");
                if (parse_string(ps, &item) || push(ps, &item))
                    return -1;
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != ':')
                    return fail_expected(ps, "':' after an object key");
                ps->p++;
                memset(&item, 0, sizeof item);
            }
            if (parse_value(ps, &item) || push(ps, &item))
                return -1;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == close) {
                ps->p++;
                break;
            }
            return fail_expected(ps, object ? "',' or '}' after an object member"
                                            : "',' or ']' after an array element");
        }
    ps->depth--;
    v->type = object ? DIT_JSON_OBJECT : DIT_JSON_ARRAY;
    v->len = object ? (ps->top - base) / 2 : ps->top - base;
    if (pop_items(ps, base, v))
        return -1;
    return object ? index_object(ps, v, at) : 0;
}

static int parse_value(parser *ps, dit_json *v)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return fail_expected(ps, "a value");
    switch (*ps->p) {
    case '{': return parse_container(ps, v, 1);
    case '[': return parse_container(ps, v, 0);
    case '"': return parse_string(ps, v);
    case 't': case 'f': case 'n': return parse_literal(ps, v);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps, v);
        return fail_expected(ps, "a value");
    }
}

int dit_json_parse_ex(const char *buf, size_t len, int flags, dit_json_doc **out,
                char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    if (!out)
        return -1;
    *out = NULL;
    if (!buf && len) {
        if (err && errlen)
            snprintf(err, errlen, "byte 0: no buffer");
        return -1;
    }
    if (!buf)
        buf = ""; /* NULL + 0 is undefined: parse the empty text instead */
    dit_json_doc *d = calloc(1, sizeof *d);
    parser ps = {.p = (const unsigned char *)buf, .start = (const unsigned char *)buf,
                 .end = (const unsigned char *)buf + len, .doc = d, .flags = flags,
                 .err = err, .errlen = errlen};
    if (!d)
        return oom(&ps), -2;
    d->next_cap = 4096;
    int r = parse_value(&ps, &d->root);
    if (!r) {
        skip_ws(&ps);
        if (ps.p < ps.end)
            r = fail_expected(&ps, "end of input after the value");
    }
    free(ps.stack);
    free(ps.num);
    if (r) {
        dit_json_free(d);
        return ps.nomem ? -2 : -1;
    }
    *out = d;
    return 0;
}

int dit_json_parse(const char *buf, size_t len, dit_json_doc **out, char *err, size_t errlen)
{
    return dit_json_parse_ex(buf, len, 0, out, err, errlen);
}

/* ---- accessors --------------------------------------------------------- */

const dit_json *dit_json_root(const dit_json_doc *d)
{
    return d ? &d->root : NULL;
}

int dit_json_type(const dit_json *v)
{
    return v ? v->type : DIT_JSON_NONE;
}

const char *dit_json_type_name(int type)
{
    static const char *const names[] = {"nothing", "null", "boolean", "number",
                                        "string", "array", "object"};
    return type >= 0 && type <= DIT_JSON_OBJECT ? names[type] : "nothing";
}

size_t dit_json_len(const dit_json *v)
{
    return v && v->type >= DIT_JSON_STRING ? v->len : 0;
}

const dit_json *dit_json_at(const dit_json *v, size_t i)
{
    if (!v || i >= v->len)
        return NULL;
    if (v->type == DIT_JSON_ARRAY)
        return &v->u.items[i];
    if (v->type == DIT_JSON_OBJECT)
        return &v->u.items[2 * i + 1];
    return NULL;
}

const dit_json *dit_json_key(const dit_json *v, size_t i)
{
    return v && v->type == DIT_JSON_OBJECT && i < v->len ? &v->u.items[2 * i] : NULL;
}

const dit_json *dit_json_get(const dit_json *v, const char *key)
{
    if (!v || v->type != DIT_JSON_OBJECT || !key)
        return NULL;
    long i = find_member(v, key, strlen(key));
    return i < 0 ? NULL : &v->u.items[2 * i + 1];
}

double dit_json_num(const dit_json *v)
{
    return v && v->type == DIT_JSON_NUMBER ? v->num : NAN;
}

int dit_json_int(const dit_json *v, int64_t *out)
{
    if (!v || v->type != DIT_JSON_NUMBER || !v->exact)
        return 0;
    if (out)
        *out = v->ival;
    return 1;
}

const char *dit_json_str(const dit_json *v)
{
    return v && v->type == DIT_JSON_STRING ? v->u.str : NULL;
}

int dit_json_bool(const dit_json *v)
{
    return v && v->type == DIT_JSON_BOOL ? v->boolean : -1;
}

int dit_json_quote_len(const char *s, int max)
{
    int n = (int)strnlen(s, (size_t)max);
    while (n == max && n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return n;
}

int dit_json_enum(const dit_json *v, const char *field, const char *const *names, int *out,
                  char *err, size_t errlen)
{
    char allowed[128] = "";
    const char *str = dit_json_str(v);
    for (int i = 0; names[i]; i++) {
        if (str && !strcasecmp(str, names[i])) {
            *out = i;
            return 0;
        }
        size_t l = strlen(allowed);
        snprintf(allowed + l, sizeof allowed - l, "%s\"%s\"", i ? ", " : "", names[i]);
    }
    if (str)
        snprintf(err, errlen, "%s: unknown value '%.*s': must be one of %s", field,
                 dit_json_quote_len(str, 32), str, allowed);
    else
        snprintf(err, errlen, "%s: must be one of %s, got %s", field, allowed,
                 dit_json_type_name(dit_json_type(v)));
    return -1;
}
