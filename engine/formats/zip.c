/* zip.c: indexing the stored zip archives torch.save writes (see zip.h).
 *
 * torch.save (PyTorch >= 1.6) writes a zip of stored entries, data padded
 * to 64-byte boundaries through the local headers' extra fields, and ZIP64
 * records once the archive or an entry passes 4 GiB. The central directory
 * is the authority: found through the end record (searched backwards over
 * at most the 64 KiB a comment can take), its entry count is checked
 * against its byte size before anything is allocated, every entry is read
 * with bounds checks, ZIP64 extra fields replace the 32-bit sizes and
 * offsets they stand for, and each entry's local header is checked to name
 * the same file and method. Data must lie between its local header and the
 * central directory. Entries must be stored (method 0) and not encrypted:
 * anything else is refused by name rather than misread.
 */
#include "st.h"
#include "zip.h"

#include <ditmoe/dit_status.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_END 0x06054b50u
#define SIG_END64 0x06064b50u
#define SIG_LOC64 0x07064b50u
#define END_SIZE 22
#define LOC64_SIZE 20
#define END64_SIZE 56
#define CENTRAL_SIZE 46
#define LOCAL_SIZE 30

typedef struct zreader {
    const unsigned char *b;
    size_t size;
    const char *what;
    char *err;
    size_t errlen;
} zreader;

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int zfail(const zreader *r, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = st_vfail(r->err, r->errlen, code, r->what, NULL, fmt, ap);
    va_end(ap);
    return rc;
}

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint32_t zip_crc32(const void *data, size_t n)
{
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    const unsigned char *p = data;
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

typedef struct cdir {
    uint64_t count, offset, size; /* entries, where and how long */
    uint64_t end;                 /* where the end records start */
} cdir;

/* The end record: the last signature whose comment reaches the end. */
static int find_end(const zreader *r, size_t *at)
{
    if (r->size < END_SIZE)
        return zfail(r, DIT_E_FORMAT, "%zu bytes: too short for a zip archive", r->size);
    size_t lo = r->size > END_SIZE + 65535 ? r->size - END_SIZE - 65535 : 0;
    for (size_t p = r->size - END_SIZE + 1; p-- > lo;)
        if (le(r->b + p, 4) == SIG_END && p + END_SIZE + le(r->b + p + 20, 2) == r->size) {
            *at = p;
            return 0;
        }
    if (le(r->b, 4) == SIG_LOCAL)
        return zfail(r, DIT_E_FORMAT, "a zip archive without its end record (truncated?)");
    return zfail(r, DIT_E_FORMAT, "not a zip archive (no end-of-central-directory record)");
}

/* The ZIP64 end record that a locator just before the end record names. */
static int read_end64(const zreader *r, size_t loc, cdir *d)
{
    uint64_t off = le(r->b + loc + 8, 8);
    if (le(r->b + loc + 4, 4) != 0 || le(r->b + loc + 16, 4) > 1)
        return zfail(r, DIT_E_UNSUPPORTED, "multi-disk zip archives are not supported");
    if (off > loc || loc - off < END64_SIZE || le(r->b + off, 4) != SIG_END64)
        return zfail(r, DIT_E_FORMAT, "ZIP64 locator points to %llu, where there is no "
                     "ZIP64 end record", (unsigned long long)off);
    const unsigned char *e = r->b + off;
    if (le(e + 16, 4) != 0 || le(e + 20, 4) != 0 || le(e + 24, 8) != le(e + 32, 8))
        return zfail(r, DIT_E_UNSUPPORTED, "multi-disk zip archives are not supported");
    d->count = le(e + 32, 8);
    d->size = le(e + 40, 8);
    d->offset = le(e + 48, 8);
    d->end = off;
    return 0;
}

static int read_cdir(const zreader *r, cdir *d)
{
    size_t at = 0;
    int rc = find_end(r, &at);
    if (rc)
        return rc;
    const unsigned char *e = r->b + at;
    if (le(e + 4, 2) != 0 || le(e + 6, 2) != 0 || le(e + 8, 2) != le(e + 10, 2))
        return zfail(r, DIT_E_UNSUPPORTED, "multi-disk zip archives are not supported");
    d->count = le(e + 10, 2);
    d->size = le(e + 12, 4);
    d->offset = le(e + 16, 4);
    d->end = at;
    if (at >= LOC64_SIZE && le(r->b + at - LOC64_SIZE, 4) == SIG_LOC64) {
        if ((rc = read_end64(r, at - LOC64_SIZE, d)))
            return rc;
    } else if (d->count == 0xffff || d->size == 0xffffffffu || d->offset == 0xffffffffu) {
        return zfail(r, DIT_E_FORMAT, "the end record asks for ZIP64 but there is no "
                     "ZIP64 locator");
    }
    if (d->offset > d->end || d->size > d->end - d->offset)
        return zfail(r, DIT_E_FORMAT, "central directory [%llu, +%llu) does not fit before "
                     "its end record at %llu", (unsigned long long)d->offset,
                     (unsigned long long)d->size, (unsigned long long)d->end);
    if (d->count > d->size / CENTRAL_SIZE)
        return zfail(r, DIT_E_FORMAT, "end record claims %llu entries, but a %llu-byte "
                     "central directory holds at most %llu", (unsigned long long)d->count,
                     (unsigned long long)d->size,
                     (unsigned long long)(d->size / CENTRAL_SIZE));
    return 0;
}

/* Applies a ZIP64 extended-information extra field: each 32-bit field
 * that is all ones is replaced, in order: size, compressed size, offset. */
static int apply_zip64(const zreader *r, const unsigned char *x, size_t xlen,
                       uint64_t *usize, uint64_t *csize, uint64_t *off)
{
    while (xlen >= 4) {
        size_t id = (size_t)le(x, 2), n = (size_t)le(x + 2, 2);
        if (n > xlen - 4)
            return zfail(r, DIT_E_FORMAT, "an extra field runs past its entry");
        if (id == 1) {
            uint64_t *f[3] = { usize, csize, off };
            size_t k = 0;
            for (int i = 0; i < 3; i++) {
                if (*f[i] != 0xffffffffu)
                    continue;
                if (k + 8 > n)
                    return zfail(r, DIT_E_FORMAT, "ZIP64 extra field too short");
                *f[i] = le(x + 4 + k, 8);
                k += 8;
            }
        }
        x += 4 + n;
        xlen -= 4 + n;
    }
    return 0;
}

/* Reads the central entry at *pos into e and advances *pos. */
static int read_entry(const zreader *r, const cdir *d, uint64_t *pos, size_t i, zip_entry *e)
{
    uint64_t end = d->offset + d->size;
    if (end - *pos < CENTRAL_SIZE || le(r->b + *pos, 4) != SIG_CENTRAL)
        return zfail(r, DIT_E_FORMAT, "central directory entry %zu is missing or corrupt", i);
    const unsigned char *c = r->b + *pos;
    size_t nlen = (size_t)le(c + 28, 2), xlen = (size_t)le(c + 30, 2), clen = (size_t)le(c + 32, 2);
    if (end - *pos - CENTRAL_SIZE < (uint64_t)nlen + xlen + clen)
        return zfail(r, DIT_E_FORMAT, "central directory entry %zu runs past the directory", i);
    unsigned flags = (unsigned)le(c + 8, 2), method = (unsigned)le(c + 10, 2);
    uint64_t csize = le(c + 20, 4), usize = le(c + 24, 4), off = le(c + 42, 4);
    e->name = (const char *)c + CENTRAL_SIZE;
    e->name_len = nlen;
    e->crc = (uint32_t)le(c + 16, 4);
    int nl = nlen > 200 ? 200 : (int)nlen;
    if (flags & 0x41)
        return zfail(r, DIT_E_UNSUPPORTED, "entry '%.*s' is encrypted", nl, e->name);
    if (method != 0)
        return zfail(r, DIT_E_UNSUPPORTED, "entry '%.*s' is compressed (method %u%s); "
                     "torch.save stores entries uncompressed", nl, e->name, method,
                     method == 8 ? ", deflate" : "");
    int rc = apply_zip64(r, c + CENTRAL_SIZE + nlen, xlen, &usize, &csize, &off);
    if (rc)
        return rc;
    if (csize != usize)
        return zfail(r, DIT_E_FORMAT, "stored entry '%.*s' has size %llu but %llu stored "
                     "bytes", nl, e->name, (unsigned long long)usize, (unsigned long long)csize);
    if (off > d->offset || d->offset - off < LOCAL_SIZE || le(r->b + off, 4) != SIG_LOCAL)
        return zfail(r, DIT_E_FORMAT, "entry '%.*s': no local header at %llu", nl, e->name,
                     (unsigned long long)off);
    const unsigned char *l = r->b + off;
    uint64_t data = off + LOCAL_SIZE + le(l + 26, 2) + le(l + 28, 2);
    if (le(l + 26, 2) != nlen || memcmp(l + LOCAL_SIZE, e->name, nlen) || le(l + 8, 2) != 0)
        return zfail(r, DIT_E_FORMAT, "entry '%.*s': its local header disagrees with the "
                     "central directory", nl, e->name);
    if (data > d->offset || usize > d->offset - data)
        return zfail(r, DIT_E_FORMAT, "entry '%.*s': %llu bytes at %llu run past the end of "
                     "the data (truncated?)", nl, e->name, (unsigned long long)usize,
                     (unsigned long long)data);
    e->data = r->b + data;
    e->size = usize;
    *pos += CENTRAL_SIZE + nlen + xlen + clen;
    return 0;
}

static int name_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an > bn) - (an < bn);
}

static int by_name(const void *x, const void *y)
{
    const zip_entry *a = *(const zip_entry *const *)x, *b = *(const zip_entry *const *)y;
    return name_cmp(a->name, a->name_len, b->name, b->name_len);
}

int zip_open_mem(zip_archive *z, const void *data, size_t size, const char *what,
                 char *err, size_t errlen)
{
    zreader r = { data, size, what ? what : "zip", err, errlen };
    memset(z, 0, sizeof *z);
    cdir d = { 0 };
    int rc = read_cdir(&r, &d);
    if (rc)
        return rc;
    size_t n = (size_t)d.count;
    z->entries = calloc(n ? n : 1, sizeof *z->entries);
    z->sorted = calloc(n ? n : 1, sizeof *z->sorted);
    if (!z->entries || !z->sorted) {
        zip_close(z);
        return zfail(&r, DIT_E_NOMEM, "out of memory for %zu zip entries", n);
    }
    uint64_t pos = d.offset;
    for (size_t i = 0; i < n; i++) {
        if ((rc = read_entry(&r, &d, &pos, i, &z->entries[i]))) {
            zip_close(z);
            return rc;
        }
        z->sorted[i] = &z->entries[i];
    }
    z->n = n;
    qsort(z->sorted, n, sizeof *z->sorted, by_name);
    for (size_t i = 1; i < n; i++)
        if (!by_name(&z->sorted[i - 1], &z->sorted[i])) {
            const zip_entry *e = z->sorted[i];
            rc = zfail(&r, DIT_E_FORMAT, "entry '%.*s' appears twice",
                       e->name_len > 200 ? 200 : (int)e->name_len, e->name);
            zip_close(z);
            return rc;
        }
    return DIT_OK;
}

const zip_entry *zip_find(const zip_archive *z, const char *name, size_t len)
{
    size_t lo = 0, hi = z->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const zip_entry *e = z->sorted[mid];
        int c = name_cmp(e->name, e->name_len, name, len);
        if (!c)
            return e;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

void zip_close(zip_archive *z)
{
    if (!z)
        return;
    free(z->entries);
    free(z->sorted);
    memset(z, 0, sizeof *z);
}
