/* pt.c: PyTorch .pt checkpoints (torch.save's zip format) as an st_table.
 *
 * The published DiT-MoE weights are torch.save files: a zip (zip.c) of
 * stored entries under one top folder whose name is the archive's, not
 * fixed: <top>/data.pkl, a pickle of the checkpoint object, and one record
 * <top>/data/<key> per storage, raw little-endian elements. pt_open maps the
 * file, reads the pickle as data only (pickle.c: no code ever runs), picks
 * the state_dict as upstream download.py's find_model does ("ema" first,
 * then "model", else the object itself; "opt", "args", "steps" and other
 * keys are ignored) and adds every tensor to a table, pointing into the
 * mapping.
 *
 * Each tensor is checked against its storage and record: a dtype the engine
 * reads (F32, F16, BF16, I64, I32), a record of exactly the storage's
 * numel * element size bytes, and a view (offset, size, stride) whose every
 * element lies inside the storage, with no arithmetic overflow. Contiguous
 * views point into the record; strided ones (a saved transpose, say) and
 * misaligned ones are copied into memory the table owns.
 *
 * The CRC of data.pkl is checked; weight records are not (that would read
 * gigabytes at every load), but their sizes and bounds are. A file written
 * on a big-endian machine says so in <top>/byteorder and is refused.
 * The legacy format (a bare pickle, which torch.save still writes with
 * _use_new_zipfile_serialization=False, or an old tar) is refused by name;
 * DataParallel's "module." key prefixes are stripped.
 */
#include "pt.h"

#include <ditmoe/dit_status.h>
#include "pickle.h"
#include "zip.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PT_ALIGN 64
#define PT_MAX_NAME 1024

/* What a table made here owns besides its tensors' names: the mapping and
 * the copies of strided or misaligned tensors. */
typedef struct pt_owned {
    void *map;
    size_t map_len;
    void **blocks;
    size_t n, cap;
} pt_owned;

static void owned_release(void *p, size_t len)
{
    (void)len;
    pt_owned *o = p;
    if (!o)
        return;
    for (size_t i = 0; i < o->n; i++)
        free(o->blocks[i]);
    free(o->blocks);
    if (o->map)
        munmap(o->map, o->map_len);
    free(o);
}

static void *owned_alloc(pt_owned *o, size_t n)
{
    if (o->n == o->cap) {
        size_t nc = o->cap ? o->cap * 2 : 16;
        void **nb = realloc(o->blocks, nc * sizeof *nb);
        if (!nb)
            return NULL;
        o->blocks = nb;
        o->cap = nc;
    }
    void *p = aligned_alloc(PT_ALIGN, (n + PT_ALIGN - 1) / PT_ALIGN * PT_ALIGN);
    if (p)
        o->blocks[o->n++] = p;
    return p;
}

typedef struct loader {
    const char *path;
    char *err;
    size_t errlen;
    pt_record_fn rec;
    void *user;
    pt_owned *owned;
    st_table *t;
} loader;

/* Writes "path: [tensor 'name': ]message" and returns code. */
#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static int pfail(const loader *l, int code, const char *tensor, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = st_vfail(l->err, l->errlen, code, l->path, tensor, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- one tensor ------------------------------------------------------------ */

/* Elements of the view, or -1 past 2^62 (no real tensor is that large). */
static int64_t view_numel(const pt_val *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->u.t.ndim; i++) {
        if (t->u.t.shape[i] == 0)
            return 0;
        if (n > ((int64_t)1 << 62) / t->u.t.shape[i])
            n = -1;
        else if (n >= 0)
            n *= t->u.t.shape[i];
    }
    return n;
}

/* The last element the view touches: offset + sum (size - 1) * stride,
 * or -1 past 2^62. */
static int64_t view_last(const pt_val *t)
{
    int64_t last = t->u.t.offset;
    for (int i = 0; i < t->u.t.ndim; i++) {
        int64_t s = t->u.t.shape[i] - 1, st = t->u.t.stride[i];
        if (s && st > (((int64_t)1 << 62) - last) / s)
            return -1;
        last += s * st;
    }
    return last;
}

static int is_contiguous(const pt_val *t)
{
    int64_t expect = 1;
    for (int i = t->u.t.ndim - 1; i >= 0; i--) {
        if (t->u.t.shape[i] != 1 && t->u.t.stride[i] != expect)
            return 0;
        expect *= t->u.t.shape[i];
    }
    return 1;
}

/* Copies a strided view element by element into dst (contiguous). */
static void gather(unsigned char *dst, const unsigned char *src, const pt_val *t,
                   size_t es, int64_t numel)
{
    int64_t idx[ST_MAX_DIMS] = { 0 };
    int nd = t->u.t.ndim;
    for (int64_t k = 0; k < numel; k++) {
        int64_t off = t->u.t.offset;
        for (int i = 0; i < nd; i++)
            off += idx[i] * t->u.t.stride[i];
        memcpy(dst + (size_t)k * es, src + (size_t)off * es, es);
        for (int i = nd - 1; i >= 0; i--) {
            if (++idx[i] < t->u.t.shape[i])
                break;
            idx[i] = 0;
        }
    }
}

/* The storage's record, checked to hold exactly numel * es bytes. */
static int storage_record(const loader *l, const char *name, const pt_val *s,
                          const unsigned char **data)
{
    size_t es = st_dtype_size(s->u.st.dtype);
    int kl = (int)s->u.st.key_len;
    uint64_t size;
    if (l->rec(l->user, s->u.st.key, s->u.st.key_len, data, &size))
        return pfail(l, DIT_E_FORMAT, name, "its storage '%.*s' has no record data/%.*s in "
                     "the archive", kl, s->u.st.key, kl, s->u.st.key);
    if ((uint64_t)s->u.st.numel > UINT64_MAX / es || size != (uint64_t)s->u.st.numel * es)
        return pfail(l, DIT_E_FORMAT, name, "storage '%.*s' holds %lld %s elements but its "
                     "record has %llu bytes", kl, s->u.st.key, (long long)s->u.st.numel,
                     st_dtype_name(s->u.st.dtype), (unsigned long long)size);
    return 0;
}

static int add_tensor(const loader *l, const char *name, const pt_val *t)
{
    const pt_val *s = t->u.t.storage;
    if (s->u.st.dtype < 0)
        return pfail(l, DIT_E_UNSUPPORTED, name, "stored as %s; weights must be float32, "
                     "float16 or bfloat16 (or int32/int64)", s->u.st.type);
    size_t es = st_dtype_size(s->u.st.dtype);
    const unsigned char *rec;
    int rc = storage_record(l, name, s, &rec);
    if (rc)
        return rc;
    int64_t numel = view_numel(t), last = numel > 0 ? view_last(t) : t->u.t.offset - 1;
    if (numel < 0 || (numel > 0 && last < 0))
        return pfail(l, DIT_E_FORMAT, name, "view size or strides overflow");
    if (t->u.t.offset > s->u.st.numel || last >= s->u.st.numel)
        return pfail(l, DIT_E_FORMAT, name, "view (offset %lld, last element %lld) lies "
                     "outside its storage of %lld elements", (long long)t->u.t.offset,
                     (long long)last, (long long)s->u.st.numel);
    const unsigned char *data = rec + (size_t)t->u.t.offset * es;
    if (numel > 0 && (!is_contiguous(t) || (uintptr_t)data % es)) {
        unsigned char *copy = owned_alloc(l->owned, (size_t)numel * es);
        if (!copy)
            return pfail(l, DIT_E_NOMEM, name, "out of memory copying a strided tensor");
        if (is_contiguous(t))
            memcpy(copy, data, (size_t)numel * es);
        else
            gather(copy, rec, t, es, numel);
        data = copy;
    }
    if (st_find(l->t, name))
        return pfail(l, DIT_E_FORMAT, name, "appears twice in the state_dict");
    if (st_table_add(l->t, name, s->u.st.dtype, t->u.t.ndim, t->u.t.shape, data))
        return pfail(l, DIT_E_NOMEM, name, "out of memory");
    return 0;
}

/* ---- the state_dict ---------------------------------------------------------- */

/* The state_dict, as find_model picks it: checkpoint["ema"], else
 * checkpoint["model"], else the checkpoint itself. */
static int pick_state_dict(const loader *l, const pt_val *root, const pt_val **sd)
{
    if (root->kind != PT_DICT)
        return pfail(l, DIT_E_FORMAT, NULL, "the checkpoint is %s, not a dict "
                     "(state_dict)", pt_kind_name(root->kind));
    const char *keys[] = { "ema", "model" };
    *sd = root;
    for (int i = 0; i < 2; i++) {
        const pt_val *v = pt_dict_get(root, keys[i]);
        if (!v)
            continue;
        if (v->kind != PT_DICT)
            return pfail(l, DIT_E_FORMAT, NULL, "checkpoint[\"%s\"] is %s, not a "
                         "state_dict", keys[i], pt_kind_name(v->kind));
        *sd = v;
        break;
    }
    if (!(*sd)->u.dict.n)
        return pfail(l, DIT_E_FORMAT, NULL, "the state_dict is empty");
    return 0;
}

static int add_all(const loader *l, const pt_val *sd)
{
    char name[PT_MAX_NAME + 1];
    for (size_t i = 0; i < sd->u.dict.n; i++) {
        const pt_val *k = sd->u.dict.kv[2 * i], *v = sd->u.dict.kv[2 * i + 1];
        if (k->kind != PT_STR)
            return pfail(l, DIT_E_FORMAT, NULL, "state_dict key %zu is %s, not a string",
                         i, pt_kind_name(k->kind));
        if (!k->u.s.n || k->u.s.n > PT_MAX_NAME || memchr(k->u.s.p, 0, k->u.s.n))
            return pfail(l, DIT_E_FORMAT, NULL, "state_dict key %zu is empty, longer than "
                         "%d bytes or holds a NUL", i, PT_MAX_NAME);
        /* DataParallel / DistributedDataParallel save their wrapped model's
         * keys as "module.<name>": the name is what follows */
        size_t skip = k->u.s.n > 7 && !memcmp(k->u.s.p, "module.", 7) ? 7 : 0;
        memcpy(name, k->u.s.p + skip, k->u.s.n - skip);
        name[k->u.s.n - skip] = 0;
        if (v->kind != PT_TENSOR)
            return pfail(l, DIT_E_FORMAT, name, "is %s, not a tensor%s", pt_kind_name(v->kind),
                         v->kind == PT_DICT ? " (a nested checkpoint? only \"ema\" and "
                         "\"model\" are unwrapped)" : "");
        int rc = add_tensor(l, name, v);
        if (rc)
            return rc;
    }
    return 0;
}

int pt_load_pickle(st_table **out, const char *path, const void *pkl, size_t len,
                   pt_record_fn rec, void *user, void *map, size_t map_len,
                   char *err, size_t errlen)
{
    *out = NULL;
    loader l = { .path = path, .err = err, .errlen = errlen, .rec = rec, .user = user };
    pt_pickle *p = NULL;
    int rc = pt_unpickle(pkl, len, path, &p, err, errlen);
    if (rc)
        return rc;
    const pt_val *sd = NULL;
    if ((rc = pick_state_dict(&l, pt_pickle_root(p), &sd)))
        goto done;
    l.owned = calloc(1, sizeof *l.owned);
    l.t = l.owned ? st_table_new(path, l.owned, sizeof *l.owned, owned_release) : NULL;
    if (!l.t) {
        owned_release(l.owned, 0);
        rc = pfail(&l, DIT_E_NOMEM, NULL, "out of memory");
        goto done;
    }
    if ((rc = add_all(&l, sd))) {
        st_close(l.t); /* frees the copies; the map is still the caller's */
        goto done;
    }
    l.owned->map = map;
    l.owned->map_len = map_len;
    st_table_set_map(l.t, map, map_len);
    *out = l.t;
done:
    pt_pickle_free(p);
    return rc;
}

/* ---- the archive -------------------------------------------------------------- */

typedef struct archive {
    const zip_archive *z;
    const char *top;
    size_t top_len;
} archive;

/* pt_record_fn over the zip: key -> <top>/data/<key>. */
static int zip_record(void *user, const char *key, size_t key_len,
                      const unsigned char **data, uint64_t *size)
{
    const archive *a = user;
    char name[512];
    if (a->top_len + key_len + 7 > sizeof name)
        return -1;
    memcpy(name, a->top, a->top_len);
    memcpy(name + a->top_len, "/data/", 6);
    memcpy(name + a->top_len + 6, key, key_len);
    const zip_entry *e = zip_find(a->z, name, a->top_len + 6 + key_len);
    if (!e)
        return -1;
    *data = e->data;
    *size = e->size;
    return 0;
}

/* A small member <top>/<what>, or NULL. */
static const zip_entry *member(const archive *a, const char *what)
{
    char name[512];
    size_t n = strlen(what);
    if (a->top_len + n + 2 > sizeof name)
        return NULL;
    memcpy(name, a->top, a->top_len);
    name[a->top_len] = '/';
    memcpy(name + a->top_len + 1, what, n);
    return zip_find(a->z, name, a->top_len + 1 + n);
}

/* Tells a legacy torch.save file (the pre-zip format, still written with
 * _use_new_zipfile_serialization=False) from an unreadable one. */
static int not_zip(const loader *l, const unsigned char *b, size_t size)
{
    if (size >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5)
        return pfail(l, DIT_E_UNSUPPORTED, NULL, "a legacy torch.save file (a bare pickle, as "
                     "torch.save(..., _use_new_zipfile_serialization=False) writes): save it "
                     "again with torch.save's default (zip) format");
    if (size >= 262 && !memcmp(b + 257, "ustar", 5))
        return pfail(l, DIT_E_UNSUPPORTED, NULL, "a legacy torch.save tar archive (PyTorch "
                     "0.x): load and save it again with torch.save's default (zip) format");
    return 0;
}

/* Indexes the archive and finds <top>/data.pkl, checking its CRC. */
static int open_archive(const loader *l, archive *a, const zip_entry **pkl)
{
    const zip_archive *z = a->z;
    if (!z->n)
        return pfail(l, DIT_E_FORMAT, NULL, "an empty zip archive, not a torch.save checkpoint");
    const zip_entry *first = &z->entries[0];
    const char *slash = memchr(first->name, '/', first->name_len);
    if (!slash || slash == first->name)
        return pfail(l, DIT_E_FORMAT, NULL, "zip entry '%.*s' is not inside a top folder: not "
                     "a torch.save checkpoint", (int)(first->name_len > 200 ? 200 : first->name_len),
                     first->name);
    a->top = first->name;
    a->top_len = (size_t)(slash - first->name);
    int tl = (int)(a->top_len > 200 ? 200 : a->top_len);
    if (!(*pkl = member(a, "data.pkl")))
        return pfail(l, DIT_E_FORMAT, NULL, "no %.*s/data.pkl in the archive: not a "
                     "torch.save checkpoint", tl, a->top);
    if (zip_crc32((*pkl)->data, (*pkl)->size) != (*pkl)->crc)
        return pfail(l, DIT_E_FORMAT, NULL, "%.*s/data.pkl fails its CRC check (corrupt file)",
                     tl, a->top);
    const zip_entry *bo = member(a, "byteorder");
    if (bo && !(bo->size == 6 && !memcmp(bo->data, "little", 6)))
        return pfail(l, DIT_E_UNSUPPORTED, NULL, "%.*s/byteorder says '%.*s': only "
                     "little-endian checkpoints are read", tl, a->top,
                     (int)(bo->size > 16 ? 16 : bo->size), (const char *)bo->data);
    return 0;
}

static int map_path(const loader *l, void **map, size_t *size)
{
    *map = NULL;
    *size = 0;
    int fd = open(l->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pfail(l, DIT_E_IO, NULL, "cannot open: %s", strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st))
        rc = pfail(l, DIT_E_IO, NULL, "cannot stat: %s", strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = pfail(l, DIT_E_IO, NULL, "not a regular file");
    else if (st.st_size == 0)
        rc = pfail(l, DIT_E_FORMAT, NULL, "empty file");
    else if ((uint64_t)st.st_size > SIZE_MAX)
        rc = pfail(l, DIT_E_IO, NULL, "too large to map");
    else if ((*map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED) {
        *map = NULL;
        rc = pfail(l, DIT_E_IO, NULL, "cannot map: %s", strerror(errno));
    } else {
        *size = (size_t)st.st_size;
    }
    close(fd);
    return rc;
}

int pt_open(st_table **out, const char *path, char *err, size_t errlen)
{
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (!out || !path) {
        snprintf(err, errlen, "pt_open: NULL argument");
        return DIT_E_INVAL;
    }
    *out = NULL;
    loader l = { .path = path, .err = err, .errlen = errlen };
    void *map;
    size_t size;
    int rc = map_path(&l, &map, &size);
    if (rc)
        return rc;
    zip_archive z;
    archive a = { .z = &z };
    const zip_entry *pkl = NULL;
    if ((rc = not_zip(&l, map, size)) ||
        (rc = zip_open_mem(&z, map, size, path, err, errlen))) {
        munmap(map, size);
        return rc;
    }
    rc = open_archive(&l, &a, &pkl);
    if (!rc)
        rc = pt_load_pickle(out, path, pkl->data, (size_t)pkl->size, zip_record, &a, map,
                            size, err, errlen);
    zip_close(&z);
    if (rc)
        munmap(map, size);
    return rc;
}
