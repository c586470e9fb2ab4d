/* pickle.h: a data-only reader for the pickles torch.save writes (engine-internal).
 *
 * pt_unpickle turns the bytes of a checkpoint's data.pkl into a tree of
 * plain values: numbers, strings, tuples, lists, dicts, and the few torch
 * objects a state_dict is made of (storages and tensor views of them). It
 * runs nothing: the only names a pickle may mention are an allow-list of
 * inert constructors it knows the meaning of, and anything else is refused
 * by name. pt.c (pt_open) turns the tree into an st_table.
 */
#ifndef DIT_PICKLE_H
#define DIT_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "st.h"

enum pt_kind {
    PT_NONE, PT_BOOL, PT_INT, PT_FLOAT, PT_STR, PT_BYTES,
    PT_TUPLE, PT_LIST, PT_DICT,
    PT_GLOBAL,  /* an allowed name (enum pt_global), not yet applied */
    PT_STORAGE, /* a persistent-id storage record reference */
    PT_TENSOR,  /* a strided view of a storage */
    PT_OBJECT,  /* an inert object (argparse.Namespace); its state ignored */
};

enum pt_global {
    PT_G_ORDERED_DICT,      /* collections.OrderedDict */
    PT_G_REBUILD_TENSOR,    /* torch._utils._rebuild_tensor_v2 */
    PT_G_REBUILD_PARAMETER, /* torch._utils._rebuild_parameter(_with_state) */
    PT_G_STORAGE_TYPE,      /* torch.FloatStorage and the other typed storages */
    PT_G_NAMESPACE,         /* argparse.Namespace (train.py's "args") */
};

typedef struct pt_val pt_val;

struct pt_val {
    int kind; /* enum pt_kind */
    union {
        int64_t i;  /* BOOL, INT */
        double f;   /* FLOAT */
        struct {    /* STR, BYTES: not NUL-terminated, inside the pickle */
            const char *p;
            size_t n;
        } s;
        struct {    /* TUPLE, LIST (sets are read as lists) */
            pt_val **v;
            size_t n, cap;
        } seq;
        struct {    /* DICT: kv[2i] is a key, kv[2i + 1] its value */
            pt_val **kv;
            size_t n, cap;
        } dict;
        struct {    /* GLOBAL */
            int what;          /* enum pt_global */
            int dtype;         /* STORAGE_TYPE: enum st_dtype, or -1 */
            const char *name;  /* static, e.g. "torch.HalfStorage" */
        } g;
        struct {    /* STORAGE */
            int dtype;         /* enum st_dtype, or -1 (a dtype not read) */
            const char *type;  /* static storage type name */
            const char *key;   /* record name, inside the pickle */
            size_t key_len;
            int64_t numel;
        } st;
        struct {    /* TENSOR */
            const pt_val *storage;
            int64_t offset;    /* in elements */
            int ndim;
            int64_t shape[ST_MAX_DIMS], stride[ST_MAX_DIMS];
        } t;
        const char *obj;       /* OBJECT: its class name, static */
    } u;
};

typedef struct pt_pickle pt_pickle;

/* Reads pickle bytes data[0..len) (protocols 2 to 5, binary opcodes) into a
 * value tree. On success *out owns every value; strings point into data,
 * which must outlive it. On failure *out is NULL and err names the opcode,
 * its offset and the problem (what: a file name for messages). */
int pt_unpickle(const void *data, size_t len, const char *what, pt_pickle **out,
                char *err, size_t errlen);

/* The value the pickle returns (its STOP). */
const pt_val *pt_pickle_root(const pt_pickle *p);

/* Frees every value; NULL is a no-op. */
void pt_pickle_free(pt_pickle *p);

/* "an int", "a tensor", ... for messages. */
const char *pt_kind_name(int kind);

/* The value stored under string key `key` in a DICT, or NULL. */
const pt_val *pt_dict_get(const pt_val *d, const char *key);

#endif
