/* dio.h: ditmoe_io, the file helpers shared by the CLI, the server and tests.
 *
 *   PNG    8-bit gray or RGB images encoded into memory or written to a file
 *   grid   N same-sized images composed into one, rows x cols with a gap
 *   .npy   NumPy arrays (format 1.0, 2.0, 3.0; little-endian float32, int32,
 *          int64; C order) read and written, headers strictly validated
 *
 * These live outside engine/ because the engine has no PNG or file-format
 * types. Functions return DIT_OK (0) or a negative dit_status from ditmoe/dit_status.h
 * (DIT_E_INVAL, DIT_E_NOMEM, DIT_E_IO, DIT_E_FORMAT) and, where a caller's
 * file or data is at fault, write a message naming the file and the field
 * into err (may be NULL). Nothing here prints, exits or keeps global state.
 * Pixels are interleaved rows: (h, w, ch) bytes, top row first.
 */
#ifndef DIT_IO_H
#define DIT_IO_H

#include <stddef.h>
#include <stdint.h>

#include <ditmoe/dit_status.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- PNG --------------------------------------------------------------- */

/* Encodes a w x h image of `channels` (1 gray, 3 RGB) 8-bit samples as PNG.
 * On success *out is a malloc'd buffer of *out_len bytes (free with free()).
 * On failure *out is NULL. */
int io_png_encode(const uint8_t *pixels, int w, int h, int channels,
                  uint8_t **out, size_t *out_len, char *err, size_t errlen);

/* Encodes as io_png_encode and writes the PNG to `path` (replacing it). */
int io_png_write(const char *path, const uint8_t *pixels, int w, int h,
                 int channels, char *err, size_t errlen);

/* ---- grid -------------------------------------------------------------- */

/* Size of a grid of n images of w x h laid out in `cols` columns (<= 0:
 * the smallest cols with cols * cols >= n; more than n: n) with `gap`
 * pixels between neighbours and no outer border. Returns DIT_E_INVAL when
 * an argument is out of range or the grid would exceed 2^31 pixels a side
 * or 2^31 bytes at 4 channels. */
int io_grid_size(int n, int w, int h, int cols, int gap, int *grid_w, int *grid_h);

/* Composes images (n, h, w, channels) into out, which must hold grid_w *
 * grid_h * channels bytes as io_grid_size says; image i goes to row
 * i / cols, column i % cols; gaps and empty cells are `background`. */
int io_grid_compose(uint8_t *out, const uint8_t *images, int n, int w, int h,
                    int channels, int cols, int gap, uint8_t background);

/* ---- .npy -------------------------------------------------------------- */

enum io_npy_dtype { IO_NPY_F32 = 0, IO_NPY_I32 = 1, IO_NPY_I64 = 2 };

#define IO_NPY_MAX_DIMS 8

typedef struct io_npy {
    int dtype;                      /* enum io_npy_dtype */
    int ndim;                       /* 0 for a scalar */
    int64_t shape[IO_NPY_MAX_DIMS];
    void *data;                     /* numel elements, C order, owned */
    size_t nbytes;
} io_npy;

/* Bytes per element of an io_npy_dtype (0 if unknown), and its descr
 * ("<f4", "<i4", "<i8"; NULL if unknown). */
size_t io_npy_dtype_size(int dtype);
const char *io_npy_descr(int dtype);
/* Elements of a (product of the shape; 1 for a scalar). */
uint64_t io_npy_numel(const io_npy *a);

/* Reads a .npy file into *out (which owns the data; io_npy_free). Checks
 * the magic and version, the header dict (exactly the keys descr,
 * fortran_order, shape; a supported little-endian descr; fortran_order
 * False; non-negative dimensions) and that the data is exactly as long as
 * the shape needs. On failure *out is zeroed and err names the file. */
int io_npy_read(const char *path, io_npy *out, char *err, size_t errlen);

/* io_npy_read on a buffer already in memory; `name` is used in messages.
 * The data is copied: buf may be freed afterwards. */
int io_npy_parse(const void *buf, size_t len, const char *name, io_npy *out,
                 char *err, size_t errlen);

/* Frees a's data and zeroes it; NULL is a no-op. */
void io_npy_free(io_npy *a);

/* Encodes an array as .npy (format 1.0: IO_NPY_MAX_DIMS dimensions always
 * fit; header padded to 64 bytes as NumPy does) into a malloc'd buffer. */
int io_npy_encode(int dtype, int ndim, const int64_t *shape, const void *data,
                  uint8_t **out, size_t *out_len, char *err, size_t errlen);

/* Encodes as io_npy_encode and writes the result to `path`. */
int io_npy_write(const char *path, int dtype, int ndim, const int64_t *shape,
                 const void *data, char *err, size_t errlen);

/* Writes len bytes to path (replacing it), for the writers above and for
 * callers that already hold an encoded file. */
int io_write_file(const char *path, const void *buf, size_t len, char *err,
                  size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
