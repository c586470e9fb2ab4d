/* st_write.c: the .safetensors writer (see st_write.h).
 *
 * Layout: u64 little-endian header length N, N bytes of JSON (an object of
 * {"dtype", "shape", "data_offsets"} per tensor plus "__metadata__"),
 * spaces up to a multiple of 8 from the file start, then the data region.
 * Tensors are laid out by descending element size (stable within a size),
 * which with an 8-aligned data region aligns each to its element size, and
 * back to back, because the reader refuses gaps. The header is built in
 * memory first (its length must come first), then everything is written
 * to path.tmp, flushed, and renamed over path.
 */
#include "st_write.h"

#include <ditmoe/dit_status.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Length of the UTF-8 sequence at s (1..4), or 0 if it is malformed. */
static int utf8_len(const unsigned char *s)
{
    if (s[0] < 0x80)
        return 1;
    int n = s[0] > 0xf4 ? 0 : s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (!n)
        return 0;
    uint32_t cp = s[0] & (0x7f >> n);
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

int st_write_json_string(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; p[i];) {
        int n = utf8_len(p + i);
        if (!n)
            return -1;
        i += (size_t)n;
    }
    fputc('"', f);
    for (; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
    return 0;
}

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int wfail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Tensor indices in write order: descending element size, stable. */
static int *write_order(const st_table *t)
{
    int n = st_count(t), k = 0;
    int *order = malloc((size_t)(n ? n : 1) * sizeof *order);
    if (!order)
        return NULL;
    for (size_t es = 8; es >= 1; es /= 2)
        for (int i = 0; i < n; i++)
            if (st_dtype_size(st_at(t, i)->dtype) == es)
                order[k++] = i;
    if (k != n) { /* an element size not a power of two: cannot happen */
        free(order);
        return NULL;
    }
    return order;
}

/* Builds the header JSON in a memory stream; *hlen includes the padding. */
static int build_header(const st_table *t, const int *order, const char *const *meta,
                        char **buf, size_t *hlen, char *err, size_t errlen)
{
    size_t len = 0;
    FILE *f = open_memstream(buf, &len);
    if (!f)
        return wfail(err, errlen, DIT_E_NOMEM, "out of memory for a safetensors header");
    uint64_t at = 0;
    int rc = DIT_OK;
    fputc('{', f);
    for (int k = 0; k < st_count(t) && !rc; k++) {
        const st_tensor *x = st_at(t, order[k]);
        if (st_write_json_string(f, x->name)) {
            rc = wfail(err, errlen, DIT_E_FORMAT, "tensor name '%.200s' is not valid UTF-8",
                       x->name);
            break;
        }
        fprintf(f, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(x->dtype));
        for (int d = 0; d < x->ndim; d++)
            fprintf(f, "%s%" PRId64, d ? "," : "", x->shape[d]);
        fprintf(f, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]},", at, at + x->nbytes);
        at += x->nbytes;
    }
    fputs("\"__metadata__\":{", f);
    for (int i = 0; meta && meta[i] && meta[i + 1] && !rc; i += 2) {
        fputs(i ? "," : "", f);
        if (st_write_json_string(f, meta[i]) || (fputc(':', f), st_write_json_string(f, meta[i + 1])))
            rc = wfail(err, errlen, DIT_E_INVAL, "metadata '%.100s' is not valid UTF-8", meta[i]);
    }
    fputs("}}", f);
    while (!rc && (8 + ftell(f)) % 8)
        fputc(' ', f);
    if (fclose(f) && !rc)
        rc = wfail(err, errlen, DIT_E_NOMEM, "out of memory for a safetensors header");
    *hlen = len;
    return rc;
}

static int write_all(FILE *f, const st_table *t, const int *order, const char *hdr,
                     size_t hlen)
{
    unsigned char n8[8];
    for (int i = 0; i < 8; i++)
        n8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if (fwrite(n8, 1, 8, f) != 8 || fwrite(hdr, 1, hlen, f) != hlen)
        return -1;
    for (int k = 0; k < st_count(t); k++) {
        const st_tensor *x = st_at(t, order[k]);
        if (x->nbytes && fwrite(x->data, 1, (size_t)x->nbytes, f) != x->nbytes)
            return -1;
    }
    return fflush(f);
}

int st_write(const char *path, const st_table *t, const char *const *meta,
             char *err, size_t errlen)
{
    if (!path || !t)
        return wfail(err, errlen, DIT_E_INVAL, "st_write: NULL argument");
    int *order = write_order(t);
    if (!order)
        return wfail(err, errlen, DIT_E_NOMEM, "out of memory");
    char *hdr = NULL;
    size_t hlen = 0;
    int rc = build_header(t, order, meta, &hdr, &hlen, err, errlen);
    size_t plen = strlen(path);
    char *tmp = rc ? NULL : malloc(plen + 5);
    if (!rc && !tmp)
        rc = wfail(err, errlen, DIT_E_NOMEM, "out of memory");
    if (!rc) {
        memcpy(tmp, path, plen);
        memcpy(tmp + plen, ".tmp", 5);
        FILE *f = fopen(tmp, "wb");
        if (!f) {
            rc = wfail(err, errlen, DIT_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
        } else {
            int bad = write_all(f, t, order, hdr, hlen);
            int e = errno;
            if (fclose(f) || bad)
                rc = wfail(err, errlen, DIT_E_IO, "%s: write failed: %s", tmp, strerror(e ? e : errno));
            else if (rename(tmp, path))
                rc = wfail(err, errlen, DIT_E_IO, "%s: cannot rename to %s: %s", tmp, path,
                           strerror(errno));
            if (rc)
                remove(tmp);
        }
    }
    free(tmp);
    free(hdr);
    free(order);
    return rc;
}
