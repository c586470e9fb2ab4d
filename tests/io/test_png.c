/* test_png.c: PNG encoding round trips and the grid composer.
 *
 * Images are encoded with ditmoe_io and decoded with libpng's own reader
 * (the simplified png_image API, independent of the encoder's code path);
 * the pixels, size and colour type must come back exactly.
 */
#include "check.h"
#include "dio.h"

#include <png.h>
#include <stdint.h>

static uint8_t *pattern(int w, int h, int ch, unsigned seed)
{
    uint8_t *p = malloc((size_t)w * (size_t)h * (size_t)ch);
    for (size_t i = 0; i < (size_t)w * (size_t)h * (size_t)ch; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
    return p;
}

/* Decodes a PNG (from memory, or from path when buf is NULL) and compares
 * it with want. */
static void expect_image(const void *buf, size_t len, const char *path,
                         const uint8_t *want, int w, int h, int ch)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    int ok = buf ? png_image_begin_read_from_memory(&img, buf, len)
                 : png_image_begin_read_from_file(&img, path);
    CHECK(ok, "libpng cannot read it: %s", img.message);
    if (!ok)
        return;
    CHECK((int)img.width == w && (int)img.height == h, "size %ux%u, want %dx%d",
          img.width, img.height, w, h);
    png_uint_32 want_format = ch == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    CHECK(img.format == want_format, "format %u, want %u", img.format, want_format);
    img.format = want_format;
    uint8_t *got = malloc(PNG_IMAGE_SIZE(img));
    ok = png_image_finish_read(&img, NULL, got, 0, NULL);
    CHECK(ok, "libpng decode failed: %s", img.message);
    CHECK(ok && !memcmp(got, want, (size_t)w * (size_t)h * (size_t)ch),
          "%dx%dx%d pixels differ", w, h, ch);
    free(got);
    png_image_free(&img);
}

static void test_round_trips(void)
{
    static const int sizes[][3] = {{1, 1, 1}, {28, 28, 1}, {32, 32, 3}, {7, 3, 3},
                                   {300, 2, 1}, {2, 300, 3}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int w = sizes[i][0], h = sizes[i][1], ch = sizes[i][2];
        uint8_t *px = pattern(w, h, ch, (unsigned)i), *png = NULL;
        size_t len = 0;
        char err[256] = "";
        int rc = io_png_encode(px, w, h, ch, &png, &len, err, sizeof err);
        CHECK(rc == DIT_OK && png && len > 8 && !memcmp(png, "\x89PNG\r\n\x1a\n", 8),
              "encode %dx%dx%d: %s", w, h, ch, err);
        if (!rc)
            expect_image(png, len, NULL, px, w, h, ch);
        free(png);
        const char *path = check_path("img.png");
        rc = io_png_write(path, px, w, h, ch, err, sizeof err);
        CHECK(rc == DIT_OK, "write: %s", err);
        if (!rc)
            expect_image(NULL, 0, path, px, w, h, ch);
        free(px);
    }
}

static void test_bad_args(void)
{
    uint8_t px[12] = {0}, *png = (uint8_t *)1;
    size_t len = 1;
    char err[256];
    CHECK(io_png_encode(px, 2, 2, 2, &png, &len, err, sizeof err) == DIT_E_INVAL &&
              png == NULL && len == 0 && strstr(err, "2 channels"), "2 channels: %s", err);
    CHECK(io_png_encode(px, 0, 2, 1, &png, &len, err, sizeof err) == DIT_E_INVAL &&
              strstr(err, "0x2"), "zero width: %s", err);
    CHECK(io_png_encode(NULL, 2, 2, 1, &png, &len, err, sizeof err) == DIT_E_INVAL,
          "NULL pixels");
    CHECK(io_png_write(check_path("no/such/dir.png"), px, 2, 2, 3, err,
                       sizeof err) == DIT_E_IO && strstr(err, "no/such/dir.png"),
          "unwritable: %s", err);
}

static void test_grid(void)
{
    int gw = 0, gh = 0;
    CHECK(io_grid_size(5, 2, 3, 3, 1, &gw, &gh) == DIT_OK && gw == 8 && gh == 7,
          "5 in 3 cols: %dx%d", gw, gh);
    CHECK(io_grid_size(5, 2, 3, 0, 1, &gw, &gh) == DIT_OK && gw == 8 && gh == 7,
          "5 auto cols: %dx%d", gw, gh);
    CHECK(io_grid_size(4, 2, 2, 0, 0, &gw, &gh) == DIT_OK && gw == 4 && gh == 4,
          "4 auto cols: %dx%d", gw, gh);
    CHECK(io_grid_size(2, 2, 2, 10, 1, &gw, &gh) == DIT_OK && gw == 5 && gh == 2,
          "cols clamped to n: %dx%d", gw, gh);
    CHECK(io_grid_size(1, 5, 5, 1, 9, &gw, &gh) == DIT_OK && gw == 5 && gh == 5,
          "one image has no gap: %dx%d", gw, gh);
    CHECK(io_grid_size(0, 2, 2, 1, 1, &gw, &gh) == DIT_E_INVAL, "n = 0");
    CHECK(io_grid_size(4, 2, 2, 2, -1, &gw, &gh) == DIT_E_INVAL, "negative gap");
    CHECK(io_grid_size(4, 1 << 30, 1 << 30, 2, 0, &gw, &gh) == DIT_E_INVAL, "overflow");

    /* 5 RGB images of 2x3 (w x h), each filled with its index + 1, 3 cols,
     * gap 1: check every pixel of the 8x7 grid */
    enum { W = 2, H = 3, CH = 3, N = 5 };
    uint8_t imgs[N * H * W * CH], out[8 * 7 * CH];
    for (int i = 0; i < N; i++)
        memset(imgs + i * H * W * CH, i + 1, H * W * CH);
    imgs[(1 * H * W + 2 * W + 1) * CH + 2] = 99; /* image 1, y 2, x 1, blue */
    CHECK(io_grid_compose(out, imgs, N, W, H, CH, 3, 1, 200) == DIT_OK, "compose");
    for (int y = 0; y < 7; y++)
        for (int x = 0; x < 8; x++) {
            int col = x / (W + 1), row = y / (H + 1), i = row * 3 + col;
            int in = x % (W + 1) < W && y % (H + 1) < H && i < N;
            for (int c = 0; c < CH; c++) {
                int want = in ? i + 1 : 200;
                if (i == 1 && y == 2 && x == 4 && c == 2)
                    want = 99;
                CHECK(out[(y * 8 + x) * CH + c] == want, "grid (%d, %d, %d) = %d, "
                      "want %d", x, y, c, out[(y * 8 + x) * CH + c], want);
            }
        }
    CHECK(io_grid_compose(out, imgs, N, W, H, 0, 3, 1, 0) == DIT_E_INVAL, "0 channels");
}

int main(void)
{
    check_tmpdir();
    test_round_trips();
    test_bad_args();
    test_grid();
    return check_exit();
}
