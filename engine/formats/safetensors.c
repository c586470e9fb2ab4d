/* safetensors.c: the tensor table (st.h) and the .safetensors reader.
 *
 * The table is a growable array of st_tensor plus an open-addressing hash
 * index over the names, so st_find is O(1) for models with thousands of
 * tensors. Once a reader returns it, a table is never changed again, so it
 * can be shared by threads without locks.
 *
 * st_open maps the file read-only and checks everything before building a
 * table: an 8-byte little-endian header length, at most ST_MAX_HEADER and
 * inside the file; a strict JSON object (json.c) whose members are tensors
 * or "__metadata__" (string values only); per tensor a supported dtype, a
 * shape of non-negative integers with an element count that does not
 * overflow, and data_offsets [begin, end) relative to the data region that
 * span exactly numel * dtype size bytes. Sorted by offset, the spans must
 * tile the data region exactly: start at 0, no gaps, no overlaps, no bytes
 * after the last one (as the reference Rust reader requires). Unknown keys
 * inside a tensor entry are ignored, as the reference does.
 *
 * The format does not align tensor data. Where a tensor's bytes are not
 * aligned to its element size (an odd header length, say), it is copied
 * into an aligned buffer the table owns, so the engine may read elements
 * directly without undefined behaviour.
 *
 * A file that shrinks while mapped can still raise SIGBUS; nothing portable
 * avoids that for a mapping.
 */
#include "st.h"

#include <ditmoe/dit_status.h>
#include <ditmoe/dit_json.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER 100000000u /* bytes, as the reference reader */
#define ST_ALIGN 64

struct st_table {
    char *path;
    void *backing;
    size_t backing_len;
    void (*release)(void *, size_t);
    st_tensor *tensors;
    int n, cap;
    int *index;          /* slot -> tensor + 1, 0 = empty; size index_mask + 1 */
    size_t index_mask;
    void *copies;        /* aligned copies of misaligned tensors */
    const char *map;     /* the read-only file mapping tensors point into */
    size_t map_len;
};

/* ---- dtypes ------------------------------------------------------------ */

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4}, [ST_I8] = {"I8", 1},
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

/* safetensors dtypes this engine does not read, so a file using one is
 * refused by name rather than called unknown */
static const char *const other_dtypes[] = {
    "F64", "U8", "I16", "U16", "U32", "U64", "BOOL", "F8_E4M3",
    "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", NULL};

size_t st_dtype_size(int dtype)
{
    return dtype >= 0 && dtype < N_DTYPES ? dtypes[dtype].size : 0;
}

const char *st_dtype_name(int dtype)
{
    if (dtype == ST_Q8)
        return "Q8";
    return dtype >= 0 && dtype < N_DTYPES ? dtypes[dtype].name : "unknown";
}

/* Element count of shape[0..ndim), or -1 when it exceeds 2^63. */
static int64_t shape_numel(int ndim, const int64_t *shape)
{
    uint64_t n = 1;
    int zero = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0)
            zero = 1;
        else if (n > (uint64_t)INT64_MAX / (uint64_t)shape[i])
            n = (uint64_t)INT64_MAX + 1; /* saturate; a later 0 still wins */
        else
            n *= (uint64_t)shape[i];
    }
    if (zero)
        return 0;
    return n > (uint64_t)INT64_MAX ? -1 : (int64_t)n;
}

uint64_t st_numel(const st_tensor *t)
{
    if (!t)
        return 0;
    int64_t n = shape_numel(t->ndim, t->shape);
    return n < 0 ? 0 : (uint64_t)n;
}

/* ---- table ------------------------------------------------------------- */

st_table *st_table_new(const char *path, void *backing, size_t backing_len,
                       void (*release)(void *, size_t))
{
    st_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->path = strdup(path ? path : "");
    if (!t->path) {
        free(t);
        return NULL;
    }
    t->backing = backing;
    t->backing_len = backing_len;
    t->release = release;
    return t;
}

void st_table_set_map(st_table *t, const void *map, size_t len)
{
    t->map = map;
    t->map_len = len;
}

void st_drop(const st_table *t, const void *data, size_t nbytes)
{
    const char *p = data;
    if (!t || !t->map || p < t->map || nbytes > t->map_len ||
        (size_t)(p - t->map) > t->map_len - nbytes)
        return;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t b = ((uintptr_t)p + nbytes) & ~(uintptr_t)(page - 1);
    if (b > a) /* private read-only file pages: re-read from the file if touched */
        madvise((void *)a, b - a, MADV_DONTNEED);
}

void st_close(st_table *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n; i++)
        free((char *)t->tensors[i].name);
    free(t->tensors);
    free(t->index);
    free(t->copies);
    if (t->release)
        t->release(t->backing, t->backing_len);
    free(t->path);
    free(t);
}

static size_t hash_name(const char *s)
{
    size_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void index_insert(int *index, size_t mask, const char *name, int i)
{
    size_t s = hash_name(name) & mask;
    while (index[s])
        s = (s + 1) & mask;
    index[s] = i + 1;
}

/* Makes room for one more tensor: array and index (kept at most half full). */
static int table_grow(st_table *t)
{
    if (t->n == t->cap) {
        if (t->cap > (1 << 28))
            return -1;
        int cap = t->cap ? t->cap * 2 : 64;
        st_tensor *a = realloc(t->tensors, (size_t)cap * sizeof *a);
        if (!a)
            return -1;
        t->tensors = a;
        t->cap = cap;
    }
    size_t slots = t->index ? t->index_mask + 1 : 0;
    if ((size_t)(t->n + 1) * 2 > slots) {
        size_t ns = slots ? slots * 2 : 128;
        int *index = calloc(ns, sizeof *index);
        if (!index)
            return -1;
        for (int i = 0; i < t->n; i++)
            index_insert(index, ns - 1, t->tensors[i].name, i);
        free(t->index);
        t->index = index;
        t->index_mask = ns - 1;
    }
    return 0;
}

/* Also refuses (-1) an unknown dtype, ndim outside 0..ST_MAX_DIMS, a
 * negative dimension or a byte size beyond 2^63: a table never holds a
 * tensor the engine could mis-size. */
int st_table_add(st_table *t, const char *name, int dtype, int ndim,
                 const int64_t *shape, const void *data)
{
    if (!t || !name || !st_dtype_size(dtype) || ndim < 0 || ndim > ST_MAX_DIMS ||
        (ndim && !shape))
        return -1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return -1;
    int64_t numel = shape_numel(ndim, shape);
    if (numel < 0 || (uint64_t)numel > (uint64_t)INT64_MAX / st_dtype_size(dtype))
        return -1;
    if (table_grow(t))
        return -1;
    char *copy = strdup(name);
    if (!copy)
        return -1;
    st_tensor *x = &t->tensors[t->n];
    memset(x, 0, sizeof *x);
    x->name = copy;
    x->dtype = dtype;
    x->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        x->shape[i] = shape[i];
    x->data = data;
    x->nbytes = (uint64_t)numel * st_dtype_size(dtype);
    index_insert(t->index, t->index_mask, copy, t->n);
    t->n++;
    return 0;
}

int st_count(const st_table *t)
{
    return t ? t->n : 0;
}

const st_tensor *st_at(const st_table *t, int i)
{
    return t && i >= 0 && i < t->n ? &t->tensors[i] : NULL;
}

const st_tensor *st_find(const st_table *t, const char *name)
{
    if (!t || !name || !t->index)
        return NULL;
    for (size_t s = hash_name(name) & t->index_mask;; s = (s + 1) & t->index_mask) {
        int i = t->index[s];
        if (!i)
            return NULL;
        if (!strcmp(t->tensors[i - 1].name, name))
            return &t->tensors[i - 1];
    }
}

const char *st_path(const st_table *t)
{
    return t ? t->path : NULL;
}

/* ---- st_open ----------------------------------------------------------- */

typedef struct entry {
    const char *name;
    int dtype, ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;
} entry;

typedef struct reader {
    const char *path;
    char *err;
    size_t errlen;
} reader;

int st_vfail(char *err, size_t errlen, int code, const char *where,
             const char *tensor, const char *fmt, va_list ap)
{
    if (!err || !errlen)
        return code;
    int k = tensor ? snprintf(err, errlen, "%s: tensor '%.200s': ", where, tensor)
                   : snprintf(err, errlen, "%s: ", where);
    if (k >= 0 && (size_t)k < errlen)
        vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
    return code;
}

/* Writes "path: [tensor 'name': ]message" and returns code. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int rfail(const reader *r, int code, const char *tensor, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = st_vfail(r->err, r->errlen, code, r->path, tensor, fmt, ap);
    va_end(ap);
    return rc;
}

static void format_shape(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "",
                              (long long)shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, "]");
}

static int check_metadata(const reader *r, const dit_json *m)
{
    if (dit_json_type(m) != DIT_JSON_OBJECT)
        return rfail(r, DIT_E_FORMAT, NULL, "__metadata__ is %s, not an object",
                     dit_json_type_name(dit_json_type(m)));
    for (size_t i = 0; i < dit_json_len(m); i++)
        if (dit_json_type(dit_json_at(m, i)) != DIT_JSON_STRING)
            return rfail(r, DIT_E_FORMAT, NULL, "__metadata__ value '%.100s' is %s, "
                         "not a string", dit_json_str(dit_json_key(m, i)),
                         dit_json_type_name(dit_json_type(dit_json_at(m, i))));
    return DIT_OK;
}

static int parse_dtype(const reader *r, const char *name, const dit_json *v, int *out)
{
    const char *s = dit_json_str(v);
    if (!s)
        return rfail(r, DIT_E_FORMAT, name, "dtype is %s, not a string",
                     dit_json_type_name(dit_json_type(v)));
    for (int i = 0; i < N_DTYPES; i++)
        if (!strcmp(s, dtypes[i].name)) {
            *out = i;
            return DIT_OK;
        }
    for (int i = 0; other_dtypes[i]; i++)
        if (!strcmp(s, other_dtypes[i]))
            return rfail(r, DIT_E_FORMAT, name, "dtype %s is not supported "
                         "(F32, F16, BF16, I64, I32 and I8 are)", s);
    return rfail(r, DIT_E_FORMAT, name, "unknown dtype '%.40s'", s);
}

/* Reads element i of array v as a non-negative int64 named what[i]. */
static int read_count(const reader *r, const char *name, const char *what,
                      const dit_json *v, size_t i, int64_t *out)
{
    const dit_json *x = dit_json_at(v, i);
    if (!dit_json_int(x, out) || *out < 0) {
        if (dit_json_type(x) == DIT_JSON_NUMBER)
            return rfail(r, DIT_E_FORMAT, name, "%s[%zu] is %.17g, not a "
                         "non-negative integer below 2^63", what, i, dit_json_num(x));
        return rfail(r, DIT_E_FORMAT, name, "%s[%zu] is %s, not a non-negative "
                     "integer", what, i, dit_json_type_name(dit_json_type(x)));
    }
    return DIT_OK;
}

static int parse_entry(const reader *r, const dit_json *key, const dit_json *v,
                       uint64_t data_len, entry *e)
{
    const char *name = dit_json_str(key);
    if (strlen(name) != dit_json_len(key))
        return rfail(r, DIT_E_FORMAT, name, "name contains a NUL character");
    e->name = name;
    if (dit_json_type(v) != DIT_JSON_OBJECT)
        return rfail(r, DIT_E_FORMAT, name, "entry is %s, not an object",
                     dit_json_type_name(dit_json_type(v)));
    int rc = parse_dtype(r, name, dit_json_get(v, "dtype"), &e->dtype);
    if (rc)
        return rc;
    const dit_json *shape = dit_json_get(v, "shape"), *off = dit_json_get(v, "data_offsets");
    if (dit_json_type(shape) != DIT_JSON_ARRAY)
        return rfail(r, DIT_E_FORMAT, name, "shape is %s, not an array",
                     dit_json_type_name(dit_json_type(shape)));
    if (dit_json_len(shape) > ST_MAX_DIMS)
        return rfail(r, DIT_E_FORMAT, name, "shape has %zu dimensions, more than %d",
                     dit_json_len(shape), ST_MAX_DIMS);
    e->ndim = (int)dit_json_len(shape);
    for (int i = 0; i < e->ndim; i++)
        if ((rc = read_count(r, name, "shape", shape, (size_t)i, &e->shape[i])))
            return rc;
    if (dit_json_type(off) != DIT_JSON_ARRAY || dit_json_len(off) != 2)
        return rfail(r, DIT_E_FORMAT, name, "data_offsets is not an array [begin, end]");
    int64_t b, en;
    if ((rc = read_count(r, name, "data_offsets", off, 0, &b)) ||
        (rc = read_count(r, name, "data_offsets", off, 1, &en)))
        return rc;
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    char dims[256];
    format_shape(dims, sizeof dims, e->ndim, e->shape);
    int64_t numel = shape_numel(e->ndim, e->shape);
    size_t es = st_dtype_size(e->dtype);
    if (numel < 0 || (uint64_t)numel > (uint64_t)INT64_MAX / es)
        return rfail(r, DIT_E_FORMAT, name, "shape %s of %s is too large (2^63 bytes "
                     "or more)", dims, dtypes[e->dtype].name);
    if (e->end < e->begin)
        return rfail(r, DIT_E_FORMAT, name, "data_offsets [%llu, %llu) end before "
                     "they begin", (unsigned long long)e->begin,
                     (unsigned long long)e->end);
    if (e->end > data_len)
        return rfail(r, DIT_E_FORMAT, name, "data_offsets [%llu, %llu) run past the "
                     "end of the %llu-byte data region", (unsigned long long)e->begin,
                     (unsigned long long)e->end, (unsigned long long)data_len);
    if (e->end - e->begin != (uint64_t)numel * es)
        return rfail(r, DIT_E_FORMAT, name, "data_offsets [%llu, %llu) span %llu bytes "
                     "but shape %s of %s needs %llu", (unsigned long long)e->begin,
                     (unsigned long long)e->end,
                     (unsigned long long)(e->end - e->begin), dims,
                     dtypes[e->dtype].name, (unsigned long long)numel * es);
    return DIT_OK;
}

static int by_offset(const void *a, const void *b)
{
    const entry *x = *(const entry *const *)a, *y = *(const entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* Checks that the spans tile [0, data_len) exactly. */
static int check_layout(const reader *r, entry *e, size_t n, uint64_t data_len)
{
    entry **s = malloc((n ? n : 1) * sizeof *s);
    if (!s)
        return rfail(r, DIT_E_NOMEM, NULL, "out of memory");
    for (size_t i = 0; i < n; i++)
        s[i] = &e[i];
    qsort(s, n, sizeof *s, by_offset);
    uint64_t at = 0;
    int rc = DIT_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        if (s[i]->begin > at)
            rc = i ? rfail(r, DIT_E_FORMAT, s[i]->name, "data_offsets begin at %llu, "
                           "leaving a gap of %llu bytes after tensor '%.200s' (ends at %llu)",
                           (unsigned long long)s[i]->begin,
                           (unsigned long long)(s[i]->begin - at), s[i - 1]->name,
                           (unsigned long long)at)
                   : rfail(r, DIT_E_FORMAT, s[i]->name, "data_offsets begin at %llu, "
                           "leaving %llu unused bytes at the start of the data region",
                           (unsigned long long)s[i]->begin,
                           (unsigned long long)s[i]->begin);
        else if (s[i]->begin < at)
            rc = rfail(r, DIT_E_FORMAT, s[i]->name, "data_offsets [%llu, %llu) overlap "
                       "tensor '%.200s' [%llu, %llu)", (unsigned long long)s[i]->begin,
                       (unsigned long long)s[i]->end, s[i - 1]->name,
                       (unsigned long long)s[i - 1]->begin,
                       (unsigned long long)s[i - 1]->end);
        at = s[i]->end;
    }
    if (!rc && at != data_len)
        rc = rfail(r, DIT_E_FORMAT, NULL, "%llu bytes after the last tensor's data "
                   "(data region is %llu bytes, tensors cover %llu)",
                   (unsigned long long)(data_len - at), (unsigned long long)data_len,
                   (unsigned long long)at);
    free(s);
    return rc;
}

/* Copies tensors whose data is not aligned to their element size into one
 * aligned buffer owned by the table. */
static int align_tensors(st_table *t)
{
    size_t total = 0;
    for (int i = 0; i < t->n; i++)
        if ((uintptr_t)t->tensors[i].data % st_dtype_size(t->tensors[i].dtype))
            total += (t->tensors[i].nbytes + ST_ALIGN - 1) & ~(size_t)(ST_ALIGN - 1);
    if (!total)
        return 0;
    unsigned char *buf = aligned_alloc(ST_ALIGN, total);
    if (!buf)
        return -1;
    t->copies = buf;
    for (int i = 0; i < t->n; i++) {
        st_tensor *x = &t->tensors[i];
        if ((uintptr_t)x->data % st_dtype_size(x->dtype)) {
            memcpy(buf, x->data, x->nbytes);
            x->data = buf;
            buf += (x->nbytes + ST_ALIGN - 1) & ~(size_t)(ST_ALIGN - 1);
        }
    }
    return 0;
}

static void unmap(void *p, size_t n)
{
    if (p)
        munmap(p, n);
}

/* Maps path read-only: *map is NULL for an empty file. */
static int map_file(const reader *r, void **map, size_t *size)
{
    *map = NULL;
    *size = 0;
    int fd = open(r->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rfail(r, DIT_E_IO, NULL, "cannot open: %s", strerror(errno));
    struct stat st;
    int rc = DIT_OK;
    if (fstat(fd, &st))
        rc = rfail(r, DIT_E_IO, NULL, "cannot stat: %s", strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = rfail(r, DIT_E_IO, NULL, "not a regular file");
    else if ((uint64_t)st.st_size > SIZE_MAX)
        rc = rfail(r, DIT_E_IO, NULL, "file too large to map");
    else if (st.st_size > 0) {
        *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (*map == MAP_FAILED) {
            *map = NULL;
            rc = rfail(r, DIT_E_IO, NULL, "cannot map: %s", strerror(errno));
        }
    }
    *size = rc ? 0 : (size_t)st.st_size;
    close(fd);
    return rc;
}

/* Validates the header (already parsed into root) and builds the table. */
static int build_table(const reader *r, const dit_json *root, void *map, size_t size,
                       uint64_t hlen, st_table **out)
{
    const unsigned char *data = (const unsigned char *)map + 8 + hlen;
    uint64_t data_len = size - 8 - hlen;
    size_t n = dit_json_len(root), nt = 0;
    entry *e = calloc(n ? n : 1, sizeof *e);
    if (!e)
        return rfail(r, DIT_E_NOMEM, NULL, "out of memory");
    int rc = DIT_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        const dit_json *key = dit_json_key(root, i);
        if (!strcmp(dit_json_str(key), "__metadata__") && dit_json_len(key) == 12)
            rc = check_metadata(r, dit_json_at(root, i));
        else
            rc = parse_entry(r, key, dit_json_at(root, i), data_len, &e[nt++]);
    }
    if (!rc)
        rc = check_layout(r, e, nt, data_len);
    st_table *t = NULL;
    if (!rc && !(t = st_table_new(r->path, map, size, unmap)))
        rc = rfail(r, DIT_E_NOMEM, NULL, "out of memory");
    if (t)
        st_table_set_map(t, map, size);
    for (size_t i = 0; i < nt && !rc; i++)
        if (st_table_add(t, e[i].name, e[i].dtype, e[i].ndim, e[i].shape,
                         data + e[i].begin))
            rc = rfail(r, DIT_E_NOMEM, NULL, "out of memory");
    if (!rc && align_tensors(t))
        rc = rfail(r, DIT_E_NOMEM, NULL, "out of memory");
    free(e);
    if (rc && t) {
        t->release = NULL; /* the caller unmaps */
        st_close(t);
        t = NULL;
    }
    *out = t;
    return rc;
}

int st_open(st_table **out, const char *path, char *err, size_t errlen)
{
    reader r = {path ? path : "(null)", err, errlen};
    if (err && errlen)
        err[0] = 0;
    if (!out)
        return rfail(&r, DIT_E_INVAL, NULL, "no output pointer");
    *out = NULL;
    if (!path)
        return rfail(&r, DIT_E_INVAL, NULL, "no path");
    void *map;
    size_t size;
    int rc = map_file(&r, &map, &size);
    if (rc)
        return rc;
    const unsigned char *b = map;
    uint64_t hlen = 0;
    dit_json_doc *doc = NULL;
    char jerr[256];
    if (size < 8) {
        rc = rfail(&r, DIT_E_FORMAT, NULL, "file is %zu bytes, too short for the "
                   "8-byte header length", size);
        goto done;
    }
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | b[i];
    if (hlen > ST_MAX_HEADER) {
        rc = rfail(&r, DIT_E_FORMAT, NULL, "header length %llu exceeds the limit of "
                   "%u bytes", (unsigned long long)hlen, ST_MAX_HEADER);
        goto done;
    }
    if (hlen > size - 8) {
        rc = rfail(&r, DIT_E_FORMAT, NULL, "header length %llu runs past the end of "
                   "the file (%zu bytes after the length)", (unsigned long long)hlen,
                   size - 8);
        goto done;
    }
    int jr = dit_json_parse((const char *)b + 8, (size_t)hlen, &doc, jerr, sizeof jerr);
    if (jr) {
        rc = jr == -2 ? rfail(&r, DIT_E_NOMEM, NULL, "out of memory")
                      : rfail(&r, DIT_E_FORMAT, NULL, "header is not valid JSON: %s "
                              "(header starts at file byte 8)", jerr);
        goto done;
    }
    if (dit_json_type(dit_json_root(doc)) != DIT_JSON_OBJECT) {
        rc = rfail(&r, DIT_E_FORMAT, NULL, "header is a JSON %s, not an object",
                   dit_json_type_name(dit_json_type(dit_json_root(doc))));
        goto done;
    }
    rc = build_table(&r, dit_json_root(doc), map, size, hlen, out);
done:
    dit_json_free(doc);
    if (rc)
        unmap(map, size);
    return rc;
}
