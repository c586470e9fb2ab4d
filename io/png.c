/* png.c: PNG encoding into memory (libpng) and the image grid composer.
 *
 * libpng reports errors by longjmp, so every libpng call of an encoding is
 * made inside one function under one setjmp; anything that must survive the
 * jump (the output buffer) lives in a struct reached through libpng's
 * io pointer, never in a local modified after setjmp. Rows are written one
 * at a time straight from the caller's pixels, so nothing but the output
 * grows. libpng's own messages end up in err.
 */
#include "dio.h"
#include "dio_internal.h"

#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

typedef struct png_out {
    uint8_t *buf;
    size_t len, cap;
    char msg[160]; /* libpng's last error */
} png_out;

static void on_error(png_structp png, png_const_charp msg)
{
    png_out *o = png_get_error_ptr(png);
    snprintf(o->msg, sizeof o->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg; /* warnings do not stop an encoding; nothing to report */
}

static void on_write(png_structp png, png_bytep data, png_size_t n)
{
    png_out *o = png_get_io_ptr(png);
    if (n > o->cap - o->len) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap - o->len < n) {
            if (cap > SIZE_MAX / 2)
                png_error(png, "output too large");
            cap *= 2;
        }
        uint8_t *b = realloc(o->buf, cap);
        if (!b)
            png_error(png, "out of memory");
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, data, n);
    o->len += n;
}

static void on_flush(png_structp png)
{
    (void)png;
}

/* All libpng calls of one encoding; returns 0, or -1 with o->msg set. */
static int encode(png_out *o, const uint8_t *pixels, int w, int h, int channels)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, o, on_error,
                                              on_warning);
    if (!png) {
        snprintf(o->msg, sizeof o->msg, "out of memory");
        return -1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        snprintf(o->msg, sizeof o->msg, "out of memory");
        png_destroy_write_struct(&png, NULL);
        return -1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_set_write_fn(png, o, on_write, on_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8,
                 channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++)
        png_write_row(png, pixels + (size_t)y * (size_t)w * (size_t)channels);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

int io_png_encode(const uint8_t *pixels, int w, int h, int channels,
                  uint8_t **out, size_t *out_len, char *err, size_t errlen)
{
    if (out)
        *out = NULL;
    if (out_len)
        *out_len = 0;
    if (!pixels || !out || !out_len)
        return io_errf(err, errlen, DIT_E_INVAL, "png: no pixels or output");
    if (w <= 0 || h <= 0 || w > 1 << 24 || h > 1 << 24)
        return io_errf(err, errlen, DIT_E_INVAL, "png: image size %dx%d out of "
                       "range (1..16777216 a side)", w, h);
    if (channels != 1 && channels != 3)
        return io_errf(err, errlen, DIT_E_INVAL, "png: %d channels (1 gray or "
                       "3 RGB supported)", channels);
    png_out o = {0};
    if (encode(&o, pixels, w, h, channels)) {
        free(o.buf);
        return io_errf(err, errlen, !strcmp(o.msg, "out of memory") ? DIT_E_NOMEM
                       : DIT_E_INVAL, "png: %s", o.msg);
    }
    *out = o.buf;
    *out_len = o.len;
    return DIT_OK;
}

int io_png_write(const char *path, const uint8_t *pixels, int w, int h,
                 int channels, char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    if (!path)
        return io_errf(err, errlen, DIT_E_INVAL, "png: no path");
    int rc = io_png_encode(pixels, w, h, channels, &buf, &len, err, errlen);
    return rc ? rc : io_write_owned(path, buf, len, err, errlen);
}

/* ---- grid -------------------------------------------------------------- */

static int grid_cols(int n, int cols)
{
    if (cols <= 0)
        for (cols = 1; cols * cols < n; cols++)
            ;
    return cols > n ? n : cols;
}

int io_grid_size(int n, int w, int h, int cols, int gap, int *grid_w, int *grid_h)
{
    if (n <= 0 || w <= 0 || h <= 0 || gap < 0 || n > 1 << 20 || !grid_w || !grid_h)
        return DIT_E_INVAL;
    cols = grid_cols(n, cols);
    int rows = (n + cols - 1) / cols;
    int64_t gw = (int64_t)cols * w + (int64_t)(cols - 1) * gap;
    int64_t gh = (int64_t)rows * h + (int64_t)(rows - 1) * gap;
    if (gw > INT32_MAX || gh > INT32_MAX || gw * gh > INT32_MAX / 4)
        return DIT_E_INVAL;
    *grid_w = (int)gw;
    *grid_h = (int)gh;
    return DIT_OK;
}

int io_grid_compose(uint8_t *out, const uint8_t *images, int n, int w, int h,
                    int channels, int cols, int gap, uint8_t background)
{
    int gw, gh;
    if (!out || !images || channels < 1 || channels > 4 ||
        io_grid_size(n, w, h, cols, gap, &gw, &gh))
        return DIT_E_INVAL;
    cols = grid_cols(n, cols);
    size_t row_bytes = (size_t)gw * (size_t)channels;
    size_t img_row = (size_t)w * (size_t)channels;
    memset(out, background, row_bytes * (size_t)gh);
    for (int i = 0; i < n; i++) {
        size_t x0 = (size_t)(i % cols) * (size_t)(w + gap);
        size_t y0 = (size_t)(i / cols) * (size_t)(h + gap);
        const uint8_t *src = images + (size_t)i * img_row * (size_t)h;
        for (int y = 0; y < h; y++)
            memcpy(out + (y0 + (size_t)y) * row_bytes + x0 * (size_t)channels,
                   src + (size_t)y * img_row, img_row);
    }
    return DIT_OK;
}
