/* npy.c: reading and writing NumPy .npy files.
 *
 * A .npy file is "\x93NUMPY", a major and minor version byte, a header
 * length (2 bytes little-endian in format 1.0, 4 bytes in 2.0 and 3.0), a
 * header that is a Python dict literal padded with spaces and ending in a
 * newline, then the raw array data. Only what ditmoe exchanges is accepted:
 * little-endian float32, int32 and int64 in C order. The dict is parsed by a
 * small tokenizer for exactly the literal forms NumPy writes (quoted
 * strings, True/False, tuples of integers), not evaluated; a dict that
 * holds anything else, misses a key or has an extra one is refused with the
 * field named. The data must be exactly as long as the shape says.
 *
 * Multi-byte values are copied as they are: this assumes a little-endian
 * host, which the build checks.
 */
#include "dio.h"
#include "dio_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c assumes a little-endian host"
#endif

static const char magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

static const struct {
    const char *descr;
    size_t size;
} npy_types[] = {
    [IO_NPY_F32] = {"<f4", 4}, [IO_NPY_I32] = {"<i4", 4}, [IO_NPY_I64] = {"<i8", 8},
};
#define N_TYPES ((int)(sizeof npy_types / sizeof npy_types[0]))

size_t io_npy_dtype_size(int dtype)
{
    return dtype >= 0 && dtype < N_TYPES ? npy_types[dtype].size : 0;
}

const char *io_npy_descr(int dtype)
{
    return dtype >= 0 && dtype < N_TYPES ? npy_types[dtype].descr : NULL;
}

/* Element count, or -1 for a negative dimension or when the byte size (at
 * esize bytes an element) would exceed 2^62. */
static int64_t count(int ndim, const int64_t *shape, size_t esize)
{
    const uint64_t lim = (uint64_t)1 << 62;
    uint64_t n = 1;
    int zero = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return -1;
        if (shape[i] == 0)
            zero = 1;
        else if (n > lim / (uint64_t)shape[i])
            n = lim + 1; /* too large unless a dimension is 0 */
        else
            n *= (uint64_t)shape[i];
    }
    if (zero)
        return 0;
    return n > lim / (esize ? esize : 1) ? -1 : (int64_t)n;
}

uint64_t io_npy_numel(const io_npy *a)
{
    if (!a)
        return 0;
    int64_t n = count(a->ndim, a->shape, 1);
    return n < 0 ? 0 : (uint64_t)n;
}

void io_npy_free(io_npy *a)
{
    if (!a)
        return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

/* ---- header dict ------------------------------------------------------- */

typedef struct dict_parser {
    const char *p, *end;
    const char *name; /* file name for messages */
    char *err;
    size_t errlen;
} dict_parser;

static void skip_space(dict_parser *d)
{
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' ||
                             *d->p == '\r'))
        d->p++;
}

static int dict_fail(dict_parser *d, const char *what)
{
    char found[24];
    if (d->p >= d->end)
        snprintf(found, sizeof found, "the end of the header");
    else if ((unsigned char)*d->p >= 0x20 && (unsigned char)*d->p < 0x7f)
        snprintf(found, sizeof found, "'%c'", *d->p);
    else
        snprintf(found, sizeof found, "byte 0x%02x", (unsigned char)*d->p);
    return io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: header dict: expected %s, "
                   "found %s", d->name, what, found);
}

/* A quoted string (' or ") without escapes, copied into buf. */
static int dict_string(dict_parser *d, char *buf, size_t n)
{
    if (d->p >= d->end || (*d->p != '\'' && *d->p != '"'))
        return dict_fail(d, "a quoted string");
    char q = *d->p++;
    size_t k = 0;
    while (d->p < d->end && *d->p != q) {
        if (*d->p == '\\' || k + 1 >= n)
            return dict_fail(d, "a short string without escapes");
        buf[k++] = *d->p++;
    }
    if (d->p >= d->end)
        return dict_fail(d, "a closing quote");
    d->p++;
    buf[k] = 0;
    return 0;
}

static int dict_bool(dict_parser *d, int *out)
{
    size_t left = (size_t)(d->end - d->p);
    if (left >= 4 && !memcmp(d->p, "True", 4)) {
        *out = 1;
        d->p += 4;
    } else if (left >= 5 && !memcmp(d->p, "False", 5)) {
        *out = 0;
        d->p += 5;
    } else
        return dict_fail(d, "True or False for 'fortran_order'");
    return 0;
}

/* A tuple of non-negative integers: "()", "(3,)", "(2, 3)" (a trailing
 * comma allowed, and Python 2's "3L"). */
static int dict_shape(dict_parser *d, int *ndim, int64_t *shape)
{
    if (d->p >= d->end || *d->p != '(')
        return dict_fail(d, "'(' starting the shape tuple");
    d->p++;
    *ndim = 0;
    for (;;) {
        skip_space(d);
        if (d->p < d->end && *d->p == ')')
            break;
        if (d->p >= d->end || *d->p < '0' || *d->p > '9')
            return dict_fail(d, "a non-negative integer in the shape");
        int64_t v = 0;
        while (d->p < d->end && *d->p >= '0' && *d->p <= '9') {
            if (v > (INT64_MAX - 9) / 10)
                return io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: header dict: "
                               "shape dimension too large", d->name);
            v = v * 10 + (*d->p++ - '0');
        }
        if (d->p < d->end && *d->p == 'L')
            d->p++;
        if (*ndim == IO_NPY_MAX_DIMS)
            return io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: header dict: "
                           "shape has more than %d dimensions", d->name,
                           IO_NPY_MAX_DIMS);
        shape[(*ndim)++] = v;
        skip_space(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == ')')
            break;
        return dict_fail(d, "',' or ')' in the shape tuple");
    }
    d->p++;
    return 0;
}

static int set_descr(dict_parser *d, const char *descr, int *dtype)
{
    for (int i = 0; i < N_TYPES; i++)
        if (!strcmp(descr, npy_types[i].descr)) {
            *dtype = i;
            return 0;
        }
    if (descr[0] == '>')
        return io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: descr '%s' is "
                       "big-endian; only little-endian <f4, <i4, <i8 are supported",
                       d->name, descr);
    return io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: descr '%s' is not "
                   "supported (<f4, <i4, <i8 are)", d->name, descr);
}

/* Parses one "key: value" of the dict; seen has bit 0 descr, 1 fortran_order,
 * 2 shape. */
static int dict_member(dict_parser *d, io_npy *a, unsigned *seen)
{
    char key[32], descr[32];
    static const char *const keys[] = {"descr", "fortran_order", "shape"};
    int rc = dict_string(d, key, sizeof key);
    if (rc)
        return rc;
    int k = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(key, keys[i]))
            k = i;
    if (k < 0)
        return io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: header dict: unknown "
                       "key '%s' (descr, fortran_order, shape expected)", d->name, key);
    if (*seen & (1u << k))
        return io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: header dict: key '%s' "
                       "appears twice", d->name, key);
    *seen |= 1u << k;
    skip_space(d);
    if (d->p >= d->end || *d->p != ':')
        return dict_fail(d, "':' after a key");
    d->p++;
    skip_space(d);
    int fortran = 0;
    switch (k) {
    case 0:
        if (d->p < d->end && (*d->p == '[' || *d->p == '{'))
            return io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: descr is a "
                           "structured dtype; only <f4, <i4, <i8 are supported", d->name);
        rc = dict_string(d, descr, sizeof descr);
        return rc ? rc : set_descr(d, descr, &a->dtype);
    case 1:
        rc = dict_bool(d, &fortran);
        if (!rc && fortran)
            rc = io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: fortran_order is True; "
                         "only C-order arrays are supported", d->name);
        return rc;
    default:
        return dict_shape(d, &a->ndim, a->shape);
    }
}

static int parse_dict(dict_parser *d, io_npy *a)
{
    unsigned seen = 0;
    skip_space(d);
    if (d->p >= d->end || *d->p != '{')
        return dict_fail(d, "'{' starting the header dict");
    d->p++;
    for (;;) {
        skip_space(d);
        if (d->p < d->end && *d->p == '}')
            break;
        int rc = dict_member(d, a, &seen);
        if (rc)
            return rc;
        skip_space(d);
        if (d->p < d->end && *d->p == ',') {
            d->p++;
            continue;
        }
        if (d->p < d->end && *d->p == '}')
            break;
        return dict_fail(d, "',' or '}' after a dict member");
    }
    d->p++;
    skip_space(d);
    if (d->p != d->end)
        return dict_fail(d, "only spaces and a newline after the dict");
    static const char *const keys[] = {"descr", "fortran_order", "shape"};
    for (int i = 0; i < 3; i++)
        if (!(seen & (1u << i)))
            return io_errf(d->err, d->errlen, DIT_E_FORMAT, "%s: header dict has "
                           "no '%s'", d->name, keys[i]);
    return 0;
}

/* ---- reading ----------------------------------------------------------- */

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "",
                              (long long)shape[i]);
    if (k < n)
        snprintf(buf + k, n - k, ndim == 1 ? ",)" : ")");
}

int io_npy_parse(const void *buf, size_t len, const char *name, io_npy *out,
                 char *err, size_t errlen)
{
    const unsigned char *b = buf;
    if (!name)
        name = "(npy)";
    if (!out)
        return io_errf(err, errlen, DIT_E_INVAL, "%s: no output", name);
    memset(out, 0, sizeof *out);
    if (!buf && len)
        return io_errf(err, errlen, DIT_E_INVAL, "%s: no buffer", name);
    if (len < 10 || memcmp(b, magic, sizeof magic))
        return io_errf(err, errlen, DIT_E_FORMAT, "%s: not a .npy file (no "
                       "\\x93NUMPY magic)", name);
    int major = b[6], minor = b[7];
    if (major < 1 || major > 3 || minor != 0)
        return io_errf(err, errlen, DIT_E_FORMAT, "%s: .npy format version %d.%d "
                       "(1.0, 2.0 and 3.0 are supported)", name, major, minor);
    size_t pre = major == 1 ? 10 : 12;
    if (len < pre)
        return io_errf(err, errlen, DIT_E_FORMAT, "%s: file ends inside the header "
                       "length", name);
    size_t hlen = major == 1 ? (size_t)b[8] | (size_t)b[9] << 8
                             : (size_t)b[8] | (size_t)b[9] << 8 |
                               (size_t)b[10] << 16 | (size_t)b[11] << 24;
    if (hlen > len - pre)
        return io_errf(err, errlen, DIT_E_FORMAT, "%s: header length %zu runs past "
                       "the end of the file (%zu bytes)", name, hlen, len);
    dict_parser d = {(const char *)b + pre, (const char *)b + pre + hlen, name, err,
                     errlen};
    int rc = parse_dict(&d, out);
    if (rc) {
        memset(out, 0, sizeof *out);
        return rc;
    }
    size_t es = npy_types[out->dtype].size, have = len - pre - hlen;
    int64_t n = count(out->ndim, out->shape, es);
    char dims[200];
    shape_str(dims, sizeof dims, out->ndim, out->shape);
    if (n < 0 || (uint64_t)n * es != have) {
        rc = io_errf(err, errlen, DIT_E_FORMAT, "%s: data is %zu bytes but shape %s "
                     "of %s needs %s%llu", name, have, dims, npy_types[out->dtype].descr,
                     n < 0 ? "more than " : "",
                     n < 0 ? 1ull << 62 : (unsigned long long)n * es);
        memset(out, 0, sizeof *out);
        return rc;
    }
    out->nbytes = have;
    out->data = malloc(have ? have : 1);
    if (!out->data) {
        memset(out, 0, sizeof *out);
        return io_errf(err, errlen, DIT_E_NOMEM, "%s: out of memory", name);
    }
    if (have)
        memcpy(out->data, b + pre + hlen, have);
    return DIT_OK;
}

int io_npy_read(const char *path, io_npy *out, char *err, size_t errlen)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!path || !out)
        return io_errf(err, errlen, DIT_E_INVAL, "npy: no path or output");
    FILE *f = fopen(path, "rb");
    if (!f)
        return io_errf(err, errlen, DIT_E_IO, "%s: cannot open: %s", path,
                       strerror(errno));
    struct stat st;
    unsigned char *buf = NULL;
    int rc = DIT_OK;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode))
        rc = io_errf(err, errlen, DIT_E_IO, "%s: not a regular file", path);
    else if (!(buf = malloc(st.st_size ? (size_t)st.st_size : 1)))
        rc = io_errf(err, errlen, DIT_E_NOMEM, "%s: out of memory", path);
    else if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
        rc = io_errf(err, errlen, DIT_E_IO, "%s: cannot read: %s", path,
                     ferror(f) ? strerror(errno) : "file shrank while reading");
    fclose(f);
    if (!rc)
        rc = io_npy_parse(buf, (size_t)st.st_size, path, out, err, errlen);
    free(buf);
    return rc;
}

/* ---- writing ----------------------------------------------------------- */

int io_npy_encode(int dtype, int ndim, const int64_t *shape, const void *data,
                  uint8_t **out, size_t *out_len, char *err, size_t errlen)
{
    if (out)
        *out = NULL;
    if (out_len)
        *out_len = 0;
    size_t es = io_npy_dtype_size(dtype);
    if (!out || !out_len || !es || ndim < 0 || ndim > IO_NPY_MAX_DIMS ||
        (ndim && !shape))
        return io_errf(err, errlen, DIT_E_INVAL, "npy: bad dtype %d or ndim %d",
                       dtype, ndim);
    int64_t n = count(ndim, shape, es);
    if (n < 0)
        return io_errf(err, errlen, DIT_E_INVAL, "npy: shape too large or negative");
    size_t nbytes = (size_t)n * es;
    if (nbytes && !data)
        return io_errf(err, errlen, DIT_E_INVAL, "npy: no data");
    char dims[200], dict[300];
    shape_str(dims, sizeof dims, ndim, shape);
    int hl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, "
                      "'shape': %s, }", npy_types[dtype].descr, dims);
    /* pad magic + version + length + dict + '\n' to a multiple of 64 */
    size_t pre = 10, total = (pre + (size_t)hl + 1 + 63) / 64 * 64;
    size_t hlen = total - pre;
    uint8_t *b = malloc(total + nbytes);
    if (!b)
        return io_errf(err, errlen, DIT_E_NOMEM, "npy: out of memory");
    memcpy(b, magic, sizeof magic);
    b[6] = 1; /* dims are at most 8, so the dict always fits format 1.0 */
    b[7] = 0;
    b[8] = (uint8_t)(hlen & 0xff);
    b[9] = (uint8_t)(hlen >> 8);
    memcpy(b + pre, dict, (size_t)hl);
    memset(b + pre + hl, ' ', hlen - (size_t)hl - 1);
    b[total - 1] = '\n';
    if (nbytes)
        memcpy(b + total, data, nbytes);
    *out = b;
    *out_len = total + nbytes;
    return DIT_OK;
}

int io_npy_write(const char *path, int dtype, int ndim, const int64_t *shape,
                 const void *data, char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    if (!path)
        return io_errf(err, errlen, DIT_E_INVAL, "npy: no path");
    int rc = io_npy_encode(dtype, ndim, shape, data, &buf, &len, err, errlen);
    return rc ? rc : io_write_owned(path, buf, len, err, errlen);
}
