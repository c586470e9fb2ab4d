/* pickle.c: the data-only unpickler behind pt_open (see pickle.h).
 *
 * A pickle is a program for a small stack machine; Python's unpickler runs
 * it and, through GLOBAL + REDUCE, can be made to call any function (which
 * is why loading an untrusted .pt with plain torch.load runs code). This
 * machine implements the binary opcodes of protocols 2 to 5 over a stack of
 * plain values and gives meaning to only these names:
 *
 *   collections.OrderedDict                     a dict
 *   torch._utils._rebuild_tensor_v2             a tensor view (storage,
 *                                               offset, size, stride, ...)
 *   torch._utils._rebuild_parameter(_with_state) the tensor it wraps
 *   torch.<Type>Storage                         a storage type, only as the
 *                                               second field of a persistent id
 *   argparse.Namespace                          an inert object (train.py
 *                                               saves its args in checkpoints)
 *
 * Any other GLOBAL is refused where it appears, naming it, before anything
 * else happens; REDUCE, NEWOBJ and BUILD are refused unless applied to the
 * names above the way torch.save uses them. Persistent ids must be torch's
 * ('storage', type, key, location, numel). Text (protocol 0) opcodes, EXT
 * registry lookups, INST/OBJ and out-of-band buffers are refused too.
 *
 * Every read is bounds-checked; memo indices, the stack and every value are
 * bounded by the pickle's length, and all values live in one arena freed at
 * once, so reference cycles a pickle can build are harmless.
 */
#include "pickle.h"

#include <ditmoe/dit_status.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PK_CHUNK (64 * 1024)
#define PK_MAX_NAME 256 /* module or attribute name in a GLOBAL */

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
} chunk;

struct pt_pickle {
    chunk *chunks;
    size_t bytes, max_bytes;
    const pt_val *root;
};

typedef struct vm {
    pt_pickle *p;
    const unsigned char *b;
    size_t len, pos, op_pos;
    const char *what;
    char *err;
    size_t errlen;
    pt_val **stack;
    size_t sp, stack_cap;
    size_t *marks;
    size_t nmarks, marks_cap;
    pt_val **memo;
    size_t memo_cap, memo_count; /* array size; entries set (MEMOIZE's next) */
    int op;
} vm;

/* ---- errors and memory --------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int fail(vm *m, int code, const char *fmt, ...)
{
    if (!m->err || !m->errlen)
        return code;
    int k = snprintf(m->err, m->errlen, "%s: data.pkl: opcode 0x%02x at byte %zu: ",
                     m->what, m->op, m->op_pos);
    if (k >= 0 && (size_t)k < m->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m->err + k, m->errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void *arena_alloc(pt_pickle *p, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n > p->max_bytes - p->bytes)
        return NULL;
    chunk *c = p->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > PK_CHUNK ? n : PK_CHUNK;
        c = malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->next = p->chunks;
        c->used = 0;
        c->cap = cap;
        p->chunks = c;
    }
    void *r = (char *)c->data + c->used;
    c->used += n;
    p->bytes += n;
    memset(r, 0, n);
    return r;
}

static pt_val *new_val(vm *m, int kind)
{
    pt_val *v = arena_alloc(m->p, sizeof *v);
    if (v)
        v->kind = kind;
    return v;
}

/* Grows an arena array of pointers to hold at least `need` (old copied). */
static int grow_ptrs(vm *m, pt_val ***a, size_t *cap, size_t n, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 4;
    while (nc < need)
        nc *= 2;
    pt_val **na = arena_alloc(m->p, nc * sizeof *na);
    if (!na)
        return -1;
    if (n)
        memcpy(na, *a, n * sizeof *na);
    *a = na;
    *cap = nc;
    return 0;
}

/* Grows heap array *a of elem-byte items to hold `need`, zeroing the new
 * part (the stack, the marks and the memo). */
static int grow_heap(void **a, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need)
        nc *= 2;
    unsigned char *na = realloc(*a, nc * elem);
    if (!na)
        return -1;
    memset(na + *cap * elem, 0, (nc - *cap) * elem);
    *a = na;
    *cap = nc;
    return 0;
}

static int oom(vm *m)
{
    return fail(m, DIT_E_NOMEM, "out of memory (or the pickle needs more than %zu MiB)",
                m->p->max_bytes >> 20);
}

const char *pt_kind_name(int kind)
{
    static const char *const names[] = {
        "None", "a bool", "an int", "a float", "a str", "bytes", "a tuple", "a list",
        "a dict", "a global", "a storage", "a tensor", "an object",
    };
    return kind >= 0 && kind <= PT_OBJECT ? names[kind] : "?";
}

/* ---- reading the opcode stream ------------------------------------------- */

static int need(vm *m, size_t n)
{
    if (n > m->len - m->pos)
        return fail(m, DIT_E_FORMAT, "needs %zu bytes of argument, %zu left (truncated pickle)",
                    n, m->len - m->pos);
    return 0;
}

static uint64_t read_le(vm *m, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)m->b[m->pos + (size_t)i] << (8 * i);
    m->pos += (size_t)n;
    return v;
}

/* A length-prefixed argument: n little-endian bytes of length, then data. */
static int read_blob(vm *m, int n, const char **p, size_t *len)
{
    if (need(m, (size_t)n))
        return DIT_E_FORMAT;
    uint64_t l = read_le(m, n);
    if (l > m->len - m->pos)
        return fail(m, DIT_E_FORMAT, "a %llu-byte string runs past the end of the pickle "
                    "(%zu bytes left)", (unsigned long long)l, m->len - m->pos);
    *p = (const char *)m->b + m->pos;
    *len = (size_t)l;
    m->pos += (size_t)l;
    return 0;
}

/* ---- the stack ------------------------------------------------------------ */

static int push(vm *m, pt_val *v)
{
    if (!v)
        return oom(m);
    void *a = m->stack;
    if (grow_heap(&a, &m->stack_cap, m->sp + 1, sizeof *m->stack))
        return oom(m);
    m->stack = a;
    m->stack[m->sp++] = v;
    return 0;
}

/* Bottom of the current mark's frame: the stack may not be popped below. */
static size_t floor_of(const vm *m)
{
    return m->nmarks ? m->marks[m->nmarks - 1] : 0;
}

static pt_val *pop(vm *m)
{
    if (m->sp <= floor_of(m)) {
        fail(m, DIT_E_FORMAT, "pops an empty stack");
        return NULL;
    }
    return m->stack[--m->sp];
}

static pt_val *top(vm *m)
{
    if (m->sp <= floor_of(m)) {
        fail(m, DIT_E_FORMAT, "reads an empty stack");
        return NULL;
    }
    return m->stack[m->sp - 1];
}

/* Pops the mark; *start is where the items above it begin. */
static int pop_mark(vm *m, size_t *start)
{
    if (!m->nmarks)
        return fail(m, DIT_E_FORMAT, "needs a MARK, and there is none");
    *start = m->marks[--m->nmarks];
    return 0;
}

static int make_seq(vm *m, int kind, pt_val **items, size_t n)
{
    pt_val *v = new_val(m, kind);
    if (!v || grow_ptrs(m, &v->u.seq.v, &v->u.seq.cap, 0, n))
        return oom(m);
    if (n)
        memcpy(v->u.seq.v, items, n * sizeof *items);
    v->u.seq.n = n;
    return push(m, v);
}

static int seq_append(vm *m, pt_val *list, pt_val **items, size_t n)
{
    if (list->kind != PT_LIST)
        return fail(m, DIT_E_FORMAT, "appends to %s, not a list", pt_kind_name(list->kind));
    if (grow_ptrs(m, &list->u.seq.v, &list->u.seq.cap, list->u.seq.n, list->u.seq.n + n))
        return oom(m);
    if (n)
        memcpy(list->u.seq.v + list->u.seq.n, items, n * sizeof *items);
    list->u.seq.n += n;
    return 0;
}

/* Adds key/value pairs items[0..2n) to dict d (a later key wins later). */
static int dict_set(vm *m, pt_val *d, pt_val **items, size_t n)
{
    if (d->kind != PT_DICT)
        return fail(m, DIT_E_FORMAT, "sets an item of %s, not a dict", pt_kind_name(d->kind));
    size_t have = d->u.dict.n * 2;
    if (grow_ptrs(m, &d->u.dict.kv, &d->u.dict.cap, have, have + 2 * n))
        return oom(m);
    if (n)
        memcpy(d->u.dict.kv + have, items, 2 * n * sizeof *items);
    d->u.dict.n += n;
    return 0;
}

/* ---- memo ----------------------------------------------------------------- */

static int memo_put(vm *m, uint64_t idx)
{
    pt_val *v = top(m);
    if (!v)
        return DIT_E_FORMAT;
    /* Python numbers memo entries 0, 1, 2...; anything far beyond the
     * pickle's own size is no real writer's and would only cost memory. */
    if (idx > m->len + 1024)
        return fail(m, DIT_E_FORMAT, "memo index %llu is out of range for a %zu-byte pickle",
                    (unsigned long long)idx, m->len);
    void *a = m->memo;
    if (grow_heap(&a, &m->memo_cap, (size_t)idx + 1, sizeof *m->memo))
        return oom(m);
    m->memo = a;
    m->memo_count += !m->memo[idx];
    m->memo[idx] = v;
    return 0;
}

static int memo_get(vm *m, uint64_t idx)
{
    if (idx >= m->memo_cap || !m->memo[idx])
        return fail(m, DIT_E_FORMAT, "memo entry %llu was never stored", (unsigned long long)idx);
    return push(m, m->memo[idx]);
}

/* ---- names ---------------------------------------------------------------- */

static const struct {
    const char *module, *name;
    int what, dtype;
} allowed[] = {
    { "collections", "OrderedDict", PT_G_ORDERED_DICT, -1 },
    { "torch._utils", "_rebuild_tensor_v2", PT_G_REBUILD_TENSOR, -1 },
    { "torch._utils", "_rebuild_parameter", PT_G_REBUILD_PARAMETER, -1 },
    { "torch._utils", "_rebuild_parameter_with_state", PT_G_REBUILD_PARAMETER, -1 },
    { "argparse", "Namespace", PT_G_NAMESPACE, -1 },
    { "torch", "FloatStorage", PT_G_STORAGE_TYPE, ST_F32 },
    { "torch", "HalfStorage", PT_G_STORAGE_TYPE, ST_F16 },
    { "torch", "BFloat16Storage", PT_G_STORAGE_TYPE, ST_BF16 },
    { "torch", "LongStorage", PT_G_STORAGE_TYPE, ST_I64 },
    { "torch", "IntStorage", PT_G_STORAGE_TYPE, ST_I32 },
    /* storages of dtypes the engine does not read: fine in the parts of a
     * checkpoint that are ignored (optimizer state), refused in weights */
    { "torch", "DoubleStorage", PT_G_STORAGE_TYPE, -1 },
    { "torch", "ShortStorage", PT_G_STORAGE_TYPE, -1 },
    { "torch", "CharStorage", PT_G_STORAGE_TYPE, -1 },
    { "torch", "ByteStorage", PT_G_STORAGE_TYPE, -1 },
    { "torch", "BoolStorage", PT_G_STORAGE_TYPE, -1 },
};

static const char *const global_names[] = {
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "argparse.Namespace", "torch.FloatStorage", "torch.HalfStorage",
    "torch.BFloat16Storage", "torch.LongStorage", "torch.IntStorage",
    "torch.DoubleStorage", "torch.ShortStorage", "torch.CharStorage",
    "torch.ByteStorage", "torch.BoolStorage",
};

static int is_printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

static int push_global(vm *m, const char *mod, size_t ml, const char *name, size_t nl)
{
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        if (strlen(allowed[i].module) == ml && !memcmp(allowed[i].module, mod, ml) &&
            strlen(allowed[i].name) == nl && !memcmp(allowed[i].name, name, nl)) {
            pt_val *v = new_val(m, PT_GLOBAL);
            if (!v)
                return oom(m);
            v->u.g.what = allowed[i].what;
            v->u.g.dtype = allowed[i].dtype;
            v->u.g.name = global_names[i];
            return push(m, v);
        }
    if (ml > 80 || nl > 80 || !is_printable(mod, ml) || !is_printable(name, nl))
        return fail(m, DIT_E_FORMAT, "refers to a name that is not an identifier "
                    "(a checkpoint is read as data, never run)");
    return fail(m, DIT_E_FORMAT, "refers to '%.*s.%.*s', which is not allowed: a checkpoint "
                "is read as data, never run, and may only name collections.OrderedDict, "
                "torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, "
                "torch.*Storage and argparse.Namespace", (int)ml, mod, (int)nl, name);
}

/* GLOBAL: "module\nname\n". */
static int op_global(vm *m)
{
    const char *mod = (const char *)m->b + m->pos;
    size_t left = m->len - m->pos;
    const char *nl1 = memchr(mod, '\n', left < PK_MAX_NAME ? left : PK_MAX_NAME);
    if (!nl1)
        return fail(m, DIT_E_FORMAT, "module name has no end (or is over %d bytes)", PK_MAX_NAME);
    const char *name = nl1 + 1;
    left -= (size_t)(name - mod);
    const char *nl2 = memchr(name, '\n', left < PK_MAX_NAME ? left : PK_MAX_NAME);
    if (!nl2)
        return fail(m, DIT_E_FORMAT, "attribute name has no end (or is over %d bytes)", PK_MAX_NAME);
    m->pos += (size_t)(nl2 + 1 - mod);
    return push_global(m, mod, (size_t)(nl1 - mod), name, (size_t)(nl2 - name));
}

static int op_stack_global(vm *m)
{
    pt_val *name = pop(m), *mod = name ? pop(m) : NULL;
    if (!mod)
        return DIT_E_FORMAT;
    if (mod->kind != PT_STR || name->kind != PT_STR)
        return fail(m, DIT_E_FORMAT, "STACK_GLOBAL needs two strings, found %s and %s",
                    pt_kind_name(mod->kind), pt_kind_name(name->kind));
    return push_global(m, mod->u.s.p, mod->u.s.n, name->u.s.p, name->u.s.n);
}

/* ---- applying the allowed names ------------------------------------------- */

static int int_of(const pt_val *v, int64_t *out)
{
    if (!v || (v->kind != PT_INT && v->kind != PT_BOOL))
        return 0;
    *out = v->u.i;
    return 1;
}

/* A tuple of ints as a shape or stride (non-negative, at most ST_MAX_DIMS). */
static int read_dims(vm *m, const pt_val *v, const char *what, int64_t *out, int *ndim)
{
    if (v->kind != PT_TUPLE && v->kind != PT_LIST)
        return fail(m, DIT_E_FORMAT, "tensor %s is %s, not a tuple", what, pt_kind_name(v->kind));
    if (v->u.seq.n > ST_MAX_DIMS)
        return fail(m, DIT_E_FORMAT, "tensor %s has %zu dimensions, more than %d", what,
                    v->u.seq.n, ST_MAX_DIMS);
    for (size_t i = 0; i < v->u.seq.n; i++)
        if (!int_of(v->u.seq.v[i], &out[i]) || out[i] < 0)
            return fail(m, DIT_E_FORMAT, "tensor %s[%zu] is not a non-negative integer", what, i);
    *ndim = (int)v->u.seq.n;
    return 0;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 * backward_hooks[, metadata]) */
static int rebuild_tensor(vm *m, const pt_val *args)
{
    if (args->u.seq.n < 6 || args->u.seq.n > 7)
        return fail(m, DIT_E_FORMAT, "_rebuild_tensor_v2 takes 6 or 7 arguments, not %zu",
                    args->u.seq.n);
    pt_val **a = args->u.seq.v;
    if (a[0]->kind != PT_STORAGE)
        return fail(m, DIT_E_FORMAT, "_rebuild_tensor_v2 of %s, not a storage",
                    pt_kind_name(a[0]->kind));
    pt_val *t = new_val(m, PT_TENSOR);
    if (!t)
        return oom(m);
    t->u.t.storage = a[0];
    if (!int_of(a[1], &t->u.t.offset) || t->u.t.offset < 0)
        return fail(m, DIT_E_FORMAT, "tensor storage offset is not a non-negative integer");
    int nd2 = 0;
    if (read_dims(m, a[2], "size", t->u.t.shape, &t->u.t.ndim) ||
        read_dims(m, a[3], "stride", t->u.t.stride, &nd2))
        return DIT_E_FORMAT;
    if (nd2 != t->u.t.ndim)
        return fail(m, DIT_E_FORMAT, "tensor has %d sizes but %d strides", t->u.t.ndim, nd2);
    return push(m, t);
}

static int apply(vm *m, pt_val *f, pt_val *args, const char *how)
{
    if (args->kind != PT_TUPLE)
        return fail(m, DIT_E_FORMAT, "%s with %s as arguments, not a tuple", how,
                    pt_kind_name(args->kind));
    if (f->kind != PT_GLOBAL)
        return fail(m, DIT_E_FORMAT, "%s of %s: only allowed names may be called", how,
                    pt_kind_name(f->kind));
    size_t n = args->u.seq.n;
    switch (f->u.g.what) {
    case PT_G_ORDERED_DICT: { /* OrderedDict() or OrderedDict([(k, v), ...]) */
        pt_val *d = new_val(m, PT_DICT);
        if (!d)
            return oom(m);
        if (n == 1 && args->u.seq.v[0]->kind == PT_LIST) {
            const pt_val *l = args->u.seq.v[0];
            for (size_t i = 0; i < l->u.seq.n; i++) {
                const pt_val *kv = l->u.seq.v[i];
                if (kv->kind != PT_TUPLE || kv->u.seq.n != 2)
                    return fail(m, DIT_E_FORMAT, "OrderedDict item %zu is not a pair", i);
                if (dict_set(m, d, kv->u.seq.v, 1))
                    return DIT_E_FORMAT;
            }
        } else if (n) {
            return fail(m, DIT_E_FORMAT, "OrderedDict with %zu arguments", n);
        }
        return push(m, d);
    }
    case PT_G_REBUILD_TENSOR:
        if (!strcmp(how, "REDUCE"))
            return rebuild_tensor(m, args);
        break;
    case PT_G_REBUILD_PARAMETER: /* (data, requires_grad, hooks[, state]) */
        if (strcmp(how, "REDUCE"))
            break;
        if (n < 1 || args->u.seq.v[0]->kind != PT_TENSOR)
            return fail(m, DIT_E_FORMAT, "%s needs a tensor first", f->u.g.name);
        return push(m, args->u.seq.v[0]);
    case PT_G_NAMESPACE: {
        pt_val *o = new_val(m, PT_OBJECT);
        if (!o)
            return oom(m);
        o->u.obj = f->u.g.name;
        return push(m, o);
    }
    default:
        break;
    }
    return fail(m, DIT_E_FORMAT, "%s of %s is not allowed (a checkpoint is read as data)",
                how, f->u.g.name);
}

static int op_reduce(vm *m, const char *how)
{
    pt_val *args = pop(m), *f = args ? pop(m) : NULL;
    return f ? apply(m, f, args, how) : DIT_E_FORMAT;
}

/* NEWOBJ_EX: cls, args, kwargs (which must be empty). */
static int op_newobj_ex(vm *m)
{
    pt_val *kw = pop(m);
    if (!kw)
        return DIT_E_FORMAT;
    if (kw->kind != PT_DICT || kw->u.dict.n)
        return fail(m, DIT_E_FORMAT, "NEWOBJ_EX with keyword arguments");
    return op_reduce(m, "NEWOBJ");
}

/* BUILD: sets an object's state; only dicts (an OrderedDict's attributes,
 * e.g. a state_dict's _metadata) and inert objects take it, ignored. */
static int op_build(vm *m)
{
    pt_val *state = pop(m), *obj = state ? top(m) : NULL;
    if (!obj)
        return DIT_E_FORMAT;
    if (obj->kind != PT_DICT && obj->kind != PT_OBJECT)
        return fail(m, DIT_E_FORMAT, "BUILD on %s is not allowed", pt_kind_name(obj->kind));
    if (state->kind != PT_DICT && state->kind != PT_TUPLE && state->kind != PT_NONE)
        return fail(m, DIT_E_FORMAT, "BUILD with %s as state", pt_kind_name(state->kind));
    return 0;
}

/* BINPERSID: ('storage', <Type>Storage, key, location, numel). */
static int op_persid(vm *m)
{
    pt_val *pid = pop(m);
    if (!pid)
        return DIT_E_FORMAT;
    pt_val **a = pid->u.seq.v;
    if (pid->kind != PT_TUPLE || pid->u.seq.n != 5 || a[0]->kind != PT_STR ||
        a[0]->u.s.n != 7 || memcmp(a[0]->u.s.p, "storage", 7))
        return fail(m, DIT_E_FORMAT, "persistent id is not ('storage', type, key, "
                    "location, numel)");
    if (a[1]->kind != PT_GLOBAL || a[1]->u.g.what != PT_G_STORAGE_TYPE)
        return fail(m, DIT_E_FORMAT, "persistent id names %s%s%s, not a torch storage type",
                    pt_kind_name(a[1]->kind), a[1]->kind == PT_GLOBAL ? " " : "",
                    a[1]->kind == PT_GLOBAL ? a[1]->u.g.name : "");
    if (a[2]->kind != PT_STR || !a[2]->u.s.n || a[2]->u.s.n > 64)
        return fail(m, DIT_E_FORMAT, "storage key is not a short string");
    if (a[3]->kind != PT_STR)
        return fail(m, DIT_E_FORMAT, "storage location is not a string");
    int64_t numel;
    if (!int_of(a[4], &numel) || numel < 0)
        return fail(m, DIT_E_FORMAT, "storage size is not a non-negative integer");
    pt_val *s = new_val(m, PT_STORAGE);
    if (!s)
        return oom(m);
    s->u.st.dtype = a[1]->u.g.dtype;
    s->u.st.type = a[1]->u.g.name;
    s->u.st.key = a[2]->u.s.p;
    s->u.st.key_len = a[2]->u.s.n;
    s->u.st.numel = numel;
    return push(m, s);
}

/* ---- the opcodes ------------------------------------------------------------ */

static int op_int(vm *m, int n, int is_signed)
{
    if (need(m, (size_t)n))
        return DIT_E_FORMAT;
    uint64_t u = read_le(m, n);
    pt_val *v = new_val(m, PT_INT);
    if (!v)
        return oom(m);
    if (is_signed && n < 8 && (u >> (8 * n - 1)) & 1)
        u |= ~0ULL << (8 * n);
    v->u.i = (int64_t)u;
    return push(m, v);
}

/* LONG1/LONG4: a little-endian two's-complement integer of any length;
 * only those that fit in 64 bits are read. */
static int op_long(vm *m, int lenbytes)
{
    const char *p = NULL;
    size_t n = 0;
    if (read_blob(m, lenbytes, &p, &n))
        return DIT_E_FORMAT;
    if (n > 8)
        return fail(m, DIT_E_FORMAT, "a %zu-byte integer does not fit in 64 bits", n);
    uint64_t u = 0;
    for (size_t i = 0; i < n; i++)
        u |= (uint64_t)(unsigned char)p[i] << (8 * i);
    if (n && n < 8 && ((unsigned char)p[n - 1] & 0x80))
        u |= ~0ULL << (8 * n);
    pt_val *v = new_val(m, PT_INT);
    if (!v)
        return oom(m);
    v->u.i = (int64_t)u;
    return push(m, v);
}

static int op_string(vm *m, int kind, int lenbytes)
{
    pt_val *v = new_val(m, kind);
    if (!v)
        return oom(m);
    if (read_blob(m, lenbytes, &v->u.s.p, &v->u.s.n))
        return DIT_E_FORMAT;
    return push(m, v);
}

static int op_float(vm *m)
{
    if (need(m, 8))
        return DIT_E_FORMAT;
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) /* big-endian */
        u = u << 8 | m->b[m->pos + (size_t)i];
    m->pos += 8;
    pt_val *v = new_val(m, PT_FLOAT);
    if (!v)
        return oom(m);
    memcpy(&v->u.f, &u, 8);
    return push(m, v);
}

static int op_simple(vm *m, int kind, int64_t i)
{
    pt_val *v = new_val(m, kind);
    if (!v)
        return oom(m);
    v->u.i = i;
    return push(m, v);
}

/* Opcodes that take the items above the last MARK. */
static int op_marked(vm *m, int op)
{
    size_t start = 0;
    if (pop_mark(m, &start))
        return DIT_E_FORMAT;
    pt_val **items = m->stack ? m->stack + start : NULL; /* NULL: nothing pushed yet */
    size_t n = m->sp - start;
    m->sp = start;
    switch (op) {
    case 't': return make_seq(m, PT_TUPLE, items, n);
    case 'l': return make_seq(m, PT_LIST, items, n);
    case '1': return 0; /* POP_MARK */
    case 'e': case 0x90: { /* APPENDS, ADDITEMS */
        pt_val *l = top(m);
        return l ? seq_append(m, l, items, n) : DIT_E_FORMAT;
    }
    case 0x91: return make_seq(m, PT_LIST, items, n); /* FROZENSET */
    }
    /* DICT, SETITEMS: key/value pairs */
    if (n % 2)
        return fail(m, DIT_E_FORMAT, "an odd number of items (%zu) for key/value pairs", n);
    if (op == 'd') {
        pt_val *d = new_val(m, PT_DICT);
        if (!d)
            return oom(m);
        return dict_set(m, d, items, n / 2) ? DIT_E_FORMAT : push(m, d);
    }
    pt_val *d = top(m);
    return d ? dict_set(m, d, items, n / 2) : DIT_E_FORMAT;
}

static int op_mark(vm *m)
{
    void *a = m->marks;
    if (grow_heap(&a, &m->marks_cap, m->nmarks + 1, sizeof *m->marks))
        return oom(m);
    m->marks = a;
    m->marks[m->nmarks++] = m->sp;
    return 0;
}

static int op_tuple_n(vm *m, size_t n)
{
    if (m->sp < floor_of(m) + n)
        return fail(m, DIT_E_FORMAT, "needs %zu items on the stack", n);
    m->sp -= n;
    return make_seq(m, PT_TUPLE, m->stack + m->sp, n);
}

static int op_setitem(vm *m)
{
    if (m->sp < floor_of(m) + 3)
        return fail(m, DIT_E_FORMAT, "needs a dict, a key and a value on the stack");
    m->sp -= 2;
    return dict_set(m, m->stack[m->sp - 1], m->stack + m->sp, 1);
}

static int op_append(vm *m)
{
    pt_val *v = pop(m), *l = v ? top(m) : NULL;
    return l ? seq_append(m, l, &v, 1) : DIT_E_FORMAT;
}

/* Opcodes that push a constant (None, bools, numbers, strings, bytes):
 * returns 1 and sets *rc when op is one of them. */
static int step_literal(vm *m, int op, int *rc)
{
    switch (op) {
    case 'N': *rc = op_simple(m, PT_NONE, 0); return 1;
    case 0x88: *rc = op_simple(m, PT_BOOL, 1); return 1;
    case 0x89: *rc = op_simple(m, PT_BOOL, 0); return 1;
    case 'J': *rc = op_int(m, 4, 1); return 1;
    case 'K': *rc = op_int(m, 1, 0); return 1;
    case 'M': *rc = op_int(m, 2, 0); return 1;
    case 0x8a: *rc = op_long(m, 1); return 1;
    case 0x8b: *rc = op_long(m, 4); return 1;
    case 'G': *rc = op_float(m); return 1;
    case 'X': case 'T': *rc = op_string(m, PT_STR, 4); return 1;
    case 0x8c: case 'U': *rc = op_string(m, PT_STR, 1); return 1;
    case 0x8d: *rc = op_string(m, PT_STR, 8); return 1;
    case 'C': *rc = op_string(m, PT_BYTES, 1); return 1;
    case 'B': *rc = op_string(m, PT_BYTES, 4); return 1;
    case 0x8e: case 0x96: *rc = op_string(m, PT_BYTES, 8); return 1;
    }
    return 0;
}

/* PROTO (2 to 5) and FRAME (a length hint, skipped). */
static int op_header(vm *m, int op)
{
    if (need(m, op == 0x80 ? 1 : 8))
        return DIT_E_FORMAT;
    if (op == 0x95) {
        m->pos += 8;
        return 0;
    }
    int proto = m->b[m->pos++];
    if (proto < 2 || proto > 5)
        return fail(m, DIT_E_UNSUPPORTED, "pickle protocol %d (2 to 5 are read)", proto);
    return 0;
}

static int step(vm *m, int op)
{
    int rc;
    if (step_literal(m, op, &rc))
        return rc;
    switch (op) {
    case 0x80: case 0x95: return op_header(m, op);
    case '(': return op_mark(m);
    case '0': return pop(m) ? 0 : DIT_E_FORMAT;
    case '2': { pt_val *v = top(m); return v ? push(m, v) : DIT_E_FORMAT; }
    case ')': return make_seq(m, PT_TUPLE, NULL, 0);
    case 0x85: return op_tuple_n(m, 1);
    case 0x86: return op_tuple_n(m, 2);
    case 0x87: return op_tuple_n(m, 3);
    case ']': case 0x8f: return make_seq(m, PT_LIST, NULL, 0); /* EMPTY_LIST, EMPTY_SET */
    case '}': return op_simple(m, PT_DICT, 0);
    case 't': case 'l': case 'd': case 'e': case 'u': case '1': case 0x90: case 0x91:
        return op_marked(m, op);
    case 'a': return op_append(m);
    case 's': return op_setitem(m);
    case 'q': return need(m, 1) ? DIT_E_FORMAT : memo_put(m, read_le(m, 1));
    case 'r': return need(m, 4) ? DIT_E_FORMAT : memo_put(m, read_le(m, 4));
    case 0x94: return memo_put(m, m->memo_count); /* MEMOIZE: the next index */
    case 'h': return need(m, 1) ? DIT_E_FORMAT : memo_get(m, read_le(m, 1));
    case 'j': return need(m, 4) ? DIT_E_FORMAT : memo_get(m, read_le(m, 4));
    case 'c': return op_global(m);
    case 0x93: return op_stack_global(m);
    case 'R': return op_reduce(m, "REDUCE");
    case 0x81: return op_reduce(m, "NEWOBJ");
    case 0x92: return op_newobj_ex(m);
    case 'b': return op_build(m);
    case 'Q': return op_persid(m);
    case 'P': case 'i': case 'o': case 0x82: case 0x83: case 0x84: case 0x97: case 0x98:
        return fail(m, DIT_E_FORMAT, "PERSID, INST, OBJ, EXT and out-of-band buffers are "
                    "not allowed in a checkpoint");
    }
    return fail(m, DIT_E_UNSUPPORTED, "unknown or text-protocol opcode (torch.save writes "
                "binary protocol 2)");
}

static int run(vm *m)
{
    while (m->pos < m->len) {
        m->op_pos = m->pos;
        m->op = m->b[m->pos++];
        if (m->op == '.') { /* STOP */
            pt_val *v = pop(m);
            if (!v)
                return DIT_E_FORMAT;
            m->p->root = v;
            return 0;
        }
        int rc = step(m, m->op);
        if (rc)
            return rc;
    }
    m->op_pos = m->pos;
    m->op = 0;
    return fail(m, DIT_E_FORMAT, "the pickle ends without STOP (truncated)");
}

int pt_unpickle(const void *data, size_t len, const char *what, pt_pickle **out,
                char *err, size_t errlen)
{
    *out = NULL;
    pt_pickle *p = calloc(1, sizeof *p);
    if (!p)
        return DIT_E_NOMEM;
    /* values are bounded by the pickle's length; this only stops a
     * pathological one from taking the machine's memory */
    p->max_bytes = len < ((size_t)1 << 26) ? 64 * len + ((size_t)16 << 20) : (size_t)1 << 32;
    vm m = { .p = p, .b = data, .len = len, .what = what ? what : "pickle",
             .err = err, .errlen = errlen };
    int rc = run(&m);
    free(m.stack);
    free(m.marks);
    free(m.memo);
    if (rc) {
        pt_pickle_free(p);
        return rc;
    }
    *out = p;
    return DIT_OK;
}

const pt_val *pt_pickle_root(const pt_pickle *p)
{
    return p ? p->root : NULL;
}

void pt_pickle_free(pt_pickle *p)
{
    if (!p)
        return;
    for (chunk *c = p->chunks, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(p);
}

const pt_val *pt_dict_get(const pt_val *d, const char *key)
{
    if (!d || d->kind != PT_DICT)
        return NULL;
    size_t n = strlen(key);
    const pt_val *found = NULL; /* the last one wins, as in Python */
    for (size_t i = 0; i < d->u.dict.n; i++) {
        const pt_val *k = d->u.dict.kv[2 * i];
        if (k->kind == PT_STR && k->u.s.n == n && !memcmp(k->u.s.p, key, n))
            found = d->u.dict.kv[2 * i + 1];
    }
    return found;
}
