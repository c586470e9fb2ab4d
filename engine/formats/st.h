/* st.h: weight files as a validated table of named tensors (engine-internal).
 *
 * Both weight readers produce an st_table: safetensors.c (st_open) for
 * .safetensors files and pt.c (pt_open) for PyTorch .pt zip checkpoints.
 * A table owns the file's memory mapping; every tensor's data points into it
 * (or into memory the table owns), so tensors live exactly as long as their
 * table. Everything is validated before a table is returned: the model code
 * may trust names, dtypes, shapes, and that data spans nbytes inside the map.
 */
#ifndef DIT_ST_H
#define DIT_ST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* The dtypes of tensors in files, and after them ST_Q8, which no file
 * holds: the engine's in-memory 8-bit weights (an I8 tensor and its
 * F16 scales bound together; kernels/dtype.h). st_dtype_size(ST_Q8) is 0,
 * so a table never holds one. */
enum st_dtype { ST_F32 = 0, ST_F16 = 1, ST_BF16 = 2, ST_I64 = 3, ST_I32 = 4, ST_I8 = 5,
                ST_Q8 = 6 };

#define ST_MAX_DIMS 8

typedef struct st_tensor {
    const char *name;   /* owned by the table */
    int dtype;          /* enum st_dtype */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;   /* nbytes, inside memory the table owns */
    uint64_t nbytes;    /* numel * st_dtype_size(dtype) */
} st_tensor;

typedef struct st_table st_table;

/* Bytes per element of a dtype (0 for an unknown one). */
size_t st_dtype_size(int dtype);
/* "F32", "F16", ..., "Q8" */
const char *st_dtype_name(int dtype);
/* Elements in a tensor. */
uint64_t st_numel(const st_tensor *t);

/* Opens and validates a .safetensors file: header length cap, valid JSON,
 * known dtypes, numel * dtype size == byte span, offsets inside the file,
 * spans contiguous and non-overlapping. On success *out owns the mapping;
 * on failure err names the file, the tensor and the problem. */
int st_open(st_table **out, const char *path, char *err, size_t errlen);

/* Opens a PyTorch .pt zip checkpoint (pt.c): the pickle is read as data,
 * never run; {"ema": ...} and {"model": ...} are unwrapped, ema first. */
int pt_open(st_table **out, const char *path, char *err, size_t errlen);

/* Frees a table and its mapping; NULL is a no-op. */
void st_close(st_table *t);

int st_count(const st_table *t);
const st_tensor *st_at(const st_table *t, int i);
/* The tensor named `name`, or NULL. */
const st_tensor *st_find(const st_table *t, const char *name);
/* The file the table was read from (for error messages). */
const char *st_path(const st_table *t);

/* Writes "<where>: [tensor '<tensor>': ]<message>" into err (may be NULL)
 * and returns code: the one error format of every weight-file reader. */
int st_vfail(char *err, size_t errlen, int code, const char *where,
             const char *tensor, const char *fmt, va_list ap);

/* Builder used by the readers (and by synthetic models): a table whose
 * tensors are added one by one. `backing` (may be NULL) is freed with the
 * table by `release(backing, backing_len)`. Returns NULL on no memory. */
st_table *st_table_new(const char *path, void *backing, size_t backing_len,
                       void (*release)(void *, size_t));
/* Records that tensors may point into `map` (len bytes), a read-only
 * private file mapping the table owns (set by the readers). */
void st_table_set_map(st_table *t, const void *map, size_t len);

/* The caller will not read [data, data + nbytes) again: when it lies in
 * the table's file mapping its whole pages are handed back to the OS (they
 * would be re-read from the file if touched). Otherwise a no-op. */
void st_drop(const st_table *t, const void *data, size_t nbytes);

/* Adds a tensor (name copied). Returns 0, or -1 on no memory. */
int st_table_add(st_table *t, const char *name, int dtype, int ndim,
                 const int64_t *shape, const void *data);

#endif
