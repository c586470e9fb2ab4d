/* test_npy.c: .npy round trips and malformed .npy headers.
 *
 * Without arguments: writes and reads back every supported dtype and rank,
 * and checks that each malformed file is refused with DIT_E_FORMAT and a
 * message naming the file and the field.
 *
 * `test_io_npy compat DIR` is driven by npy_numpy.py: it reads the files
 * NumPy wrote into DIR (each holds arange(n) in its shape), checks them,
 * and writes its own copies (c_*.npy) for NumPy to check in turn.
 */
#include "check.h"
#include "dio.h"

#include <stdint.h>

static void test_round_trip(int dtype, int ndim, const int64_t *dims)
{
    io_npy a = {0}, b = {0};
    int64_t shape[IO_NPY_MAX_DIMS] = {0};
    for (int i = 0; i < ndim; i++)
        shape[i] = a.shape[i] = dims[i];
    a.dtype = dtype;
    a.ndim = ndim;
    uint64_t n = io_npy_numel(&a);
    size_t es = io_npy_dtype_size(dtype);
    unsigned char *data = malloc(n * es + 1);
    for (size_t i = 0; i < n * es; i++)
        data[i] = (unsigned char)(i * 7 + 3);
    char err[256] = "";
    const char *path = check_path("rt.npy");
    int rc = io_npy_write(path, dtype, ndim, shape, data, err, sizeof err);
    CHECK(rc == DIT_OK, "write %s ndim %d: %s", io_npy_descr(dtype), ndim, err);
    /* the preamble is padded to 64 bytes, as NumPy pads it */
    uint8_t *enc = NULL;
    size_t len = 0;
    rc = io_npy_encode(dtype, ndim, shape, data, &enc, &len, err, sizeof err);
    CHECK(rc == DIT_OK && (len - n * es) % 64 == 0 && enc[len - n * es - 1] == '\n',
          "preamble of %zu bytes", len - n * es);
    free(enc);
    rc = io_npy_read(path, &b, err, sizeof err);
    CHECK(rc == DIT_OK, "read %s ndim %d: %s", io_npy_descr(dtype), ndim, err);
    CHECK(b.dtype == dtype && b.ndim == ndim && b.nbytes == n * es &&
              !memcmp(b.shape, shape, sizeof(int64_t) * (size_t)ndim) &&
              (!n || !memcmp(b.data, data, n * es)), "round trip %s ndim %d differs",
          io_npy_descr(dtype), ndim);
    CHECK(io_npy_numel(&b) == n, "numel %llu", (unsigned long long)io_npy_numel(&b));
    io_npy_free(&b);
    CHECK(b.data == NULL && b.ndim == 0, "io_npy_free did not zero");
    free(data);
}

/* A file of `header` (the dict, padded to a 64-byte preamble unless raw)
 * behind the magic of version major, followed by data_len zero bytes. */
static void write_npy(const char *path, int major, const char *dict, size_t data_len)
{
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64, hlen = total - pre;
    unsigned char *b = calloc(1, total + data_len);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (unsigned char)major;
    for (size_t i = 0; i < pre - 8; i++)
        b[8 + i] = (unsigned char)(hlen >> (8 * i));
    memcpy(b + pre, dict, dl);
    memset(b + pre + dl, ' ', hlen - dl - 1);
    b[total - 1] = '\n';
    check_write(path, b, total + data_len);
    free(b);
}

static void expect_bad(const char *path, const char *want)
{
    io_npy a;
    char err[256] = "";
    int rc = io_npy_read(path, &a, err, sizeof err);
    CHECK(rc == DIT_E_FORMAT, "%s: rc %d, want DIT_E_FORMAT (%s)", path, rc, err);
    CHECK(a.data == NULL, "%s: data set on failure", path);
    CHECK(strstr(err, path) == err, "%s: '%s' does not start with the file", path, err);
    CHECK(strstr(err, want), "%s: '%s' lacks '%s'", path, err, want);
}

#define BAD(dict, data_len, want)                                   \
    do {                                                            \
        const char *p_ = check_path("bad.npy");                     \
        write_npy(p_, 1, dict, data_len);                           \
        expect_bad(p_, want);                                       \
    } while (0)

static void test_bad(void)
{
    const char *p = check_path("raw.npy");
    check_write(p, "NUMPY", 5);
    expect_bad(p, "not a .npy file");
    check_write(p, "\x93NUMPY\x04\x00\x10\x00", 10);
    expect_bad(p, "format version 4.0");
    check_write(p, "\x93NUMPY\x01\x01\x10\x00", 10);
    expect_bad(p, "format version 1.1");
    check_write(p, "\x93NUMPY\x01\x00\xff\x00{}", 12);
    expect_bad(p, "header length 255 runs past the end");
    check_write(p, "\x93NUMPY\x02\x00\x01\x00", 10);
    expect_bad(p, "file ends inside the header length");

    const char *ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    BAD(ok, 20, "data is 20 bytes but shape (2, 3) of <f4 needs 24");
    BAD(ok, 28, "data is 28 bytes but shape (2, 3) of <f4 needs 24");
    BAD("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8, "big-endian");
    BAD("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16,
        "descr '<f8' is not supported");
    BAD("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8,
        "structured dtype");
    BAD("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", 8,
        "fortran_order is True");
    BAD("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", 8, "True or False");
    BAD("{'descr': '<f4', 'shape': (2,), }", 8, "header dict has no 'fortran_order'");
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8,
        "unknown key 'x'");
    BAD("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8,
        "key 'descr' appears twice");
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", 8,
        "a non-negative integer in the shape");
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': [2], }", 8, "'(' starting");
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (2 3), }", 24,
        "',' or ')' in the shape");
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 4,
        "more than 8 dimensions");
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 4,
        "too large");
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }", 4,
        "needs more than");
    BAD("{'descr': '<f4', 'fortran_order': False, 'shape': (2,) } x", 8,
        "only spaces and a newline after the dict");
    BAD("['descr']", 0, "'{' starting the header dict");
    BAD("{'descr' '<f4'}", 0, "':' after a key");
    BAD("{'descr': '<f4'", 0, "',' or '}'");

    io_npy a;
    char err[256];
    CHECK(io_npy_read(check_path("missing.npy"), &a, err, sizeof err) == DIT_E_IO &&
              strstr(err, "missing.npy: cannot open"), "missing file: %s", err);
    CHECK(io_npy_write(check_path("x.npy"), 7, 1, (int64_t[]){1}, "", err,
                       sizeof err) == DIT_E_INVAL, "unknown dtype written");
    CHECK(io_npy_write(check_path("x.npy"), IO_NPY_F32, 1, (int64_t[]){-1}, "", err,
                       sizeof err) == DIT_E_INVAL, "negative shape written");
    CHECK(io_npy_write(check_path("no/such/dir.npy"), IO_NPY_F32, 0, NULL,
                       (float[]){1}, err, sizeof err) == DIT_E_IO &&
              strstr(err, "cannot create"), "unwritable path: %s", err);
    io_npy_free(NULL);
}

static void test_versions(void)
{
    /* formats 2.0 and 3.0 carry a 4-byte header length; Python 2 wrote 3L */
    const char *p = check_path("v.npy");
    for (int major = 2; major <= 3; major++) {
        write_npy(p, major, "{\"descr\": \"<i8\", \"fortran_order\": False, "
                  "\"shape\": (3L,)}", 24);
        io_npy a;
        char err[256] = "";
        int rc = io_npy_read(p, &a, err, sizeof err);
        CHECK(rc == DIT_OK && a.dtype == IO_NPY_I64 && a.ndim == 1 && a.shape[0] == 3,
              "version %d.0: %s", major, err);
        io_npy_free(&a);
    }
}

/* ---- NumPy compatibility (driven by npy_numpy.py) ---------------------- */

static const struct {
    const char *name;
    int dtype, ndim;
    int64_t shape[3];
} compat[] = {
    {"f32", IO_NPY_F32, 3, {2, 3, 4}}, {"i32", IO_NPY_I32, 1, {5}},
    {"i64", IO_NPY_I64, 2, {3, 2}},    {"v2", IO_NPY_F32, 2, {2, 2}},
    {"v3", IO_NPY_I32, 1, {3}},        {"scalar", IO_NPY_F32, 0, {0}},
    {"empty", IO_NPY_F32, 2, {0, 3}},
};

static double element(const io_npy *a, uint64_t i)
{
    if (a->dtype == IO_NPY_F32)
        return ((const float *)a->data)[i];
    if (a->dtype == IO_NPY_I32)
        return ((const int32_t *)a->data)[i];
    return (double)((const int64_t *)a->data)[i];
}

static int run_compat(const char *dir)
{
    for (size_t k = 0; k < sizeof compat / sizeof compat[0]; k++) {
        char path[600], err[256] = "";
        snprintf(path, sizeof path, "%s/%s.npy", dir, compat[k].name);
        io_npy a;
        int rc = io_npy_read(path, &a, err, sizeof err);
        CHECK(rc == DIT_OK, "%s", err);
        if (rc)
            continue;
        CHECK(a.dtype == compat[k].dtype && a.ndim == compat[k].ndim &&
                  !memcmp(a.shape, compat[k].shape, sizeof(int64_t) * (size_t)a.ndim),
              "%s: dtype/shape", path);
        for (uint64_t i = 0; i < io_npy_numel(&a); i++)
            CHECK(element(&a, i) == (double)i, "%s[%llu] = %g", path,
                  (unsigned long long)i, element(&a, i));
        snprintf(path, sizeof path, "%s/c_%s.npy", dir, compat[k].name);
        CHECK(io_npy_write(path, a.dtype, a.ndim, a.shape, a.data, err,
                           sizeof err) == DIT_OK, "%s", err);
        io_npy_free(&a);
    }
    return check_failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "compat"))
        return run_compat(argv[2]);
    check_tmpdir();
    for (int dt = IO_NPY_F32; dt <= IO_NPY_I64; dt++) {
        test_round_trip(dt, 0, NULL);
        test_round_trip(dt, 1, (int64_t[]){7});
        test_round_trip(dt, 4, (int64_t[]){2, 1, 3, 5});
        test_round_trip(dt, 2, (int64_t[]){0, 5});
        test_round_trip(dt, 8, (int64_t[]){1, 2, 1, 2, 1, 2, 1, 2});
    }
    test_bad();
    test_versions();
    return check_exit();
}
