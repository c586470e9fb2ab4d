/* test_st.c: st_open on crafted .safetensors files, and the table builder.
 *
 * Each malformed file must be refused with DIT_E_FORMAT (DIT_E_IO for files
 * that cannot be read at all), *out NULL, and a message naming the file,
 * the tensor where there is one, and the problem. Valid files must come
 * back with every name, dtype, shape and byte intact.
 */
#include "check.h"
#include <ditmoe/dit.h>
#include "st.h"

#include <stdint.h>
#include <sys/stat.h>

/* Writes name: the 8-byte length (hlen_override if not ~0), the header,
 * then data_len bytes counting up from 0. Returns the path (static). */
static const char *make_file(const char *name, const char *header, size_t data_len,
                             uint64_t hlen_override)
{
    size_t hl = strlen(header);
    uint64_t n = hlen_override != ~(uint64_t)0 ? hlen_override : hl;
    unsigned char *buf = malloc(8 + hl + data_len + 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + hl + i] = (unsigned char)i;
    const char *path = check_path(name);
    check_write(path, buf, 8 + hl + data_len);
    free(buf);
    return path;
}

/* st_open must fail with code and a message holding every want[] string
 * (and the path). */
static void expect_fail(const char *path, int code, const char *const *want)
{
    st_table *t = (st_table *)1;
    char err[512] = "";
    int rc = st_open(&t, path, err, sizeof err);
    CHECK(rc == code, "%s: rc %d (%s), want %d: %s", path, rc, dit_strerror(rc),
          code, err);
    CHECK(t == NULL, "%s: table not NULL on failure", path);
    CHECK(strstr(err, path) == err, "%s: message '%s' does not start with the path",
          path, err);
    for (; *want; want++)
        CHECK(strstr(err, *want), "%s: message '%s' lacks '%s'", path, err, *want);
    if (!rc)
        st_close(t);
}

#define FAIL(name, header, data_len, ...)                                      \
    expect_fail(make_file(name, header, data_len, ~(uint64_t)0), DIT_E_FORMAT, \
                (const char *const[]){__VA_ARGS__, NULL})

static void test_valid(void)
{
    /* 48 bytes of F32 (3, 4), 16 of I64 (2), a zero-size F16 (0, 4), a
     * BF16 scalar, 3 bytes of I8, listed out of offset order, header
     * padded with spaces as writers do */
    const char *h = "{\"__metadata__\": {\"format\": \"pt\"}, "
                    "\"b\": {\"dtype\": \"I64\", \"shape\": [2], \"data_offsets\": [48, 64]}, "
                    "\"a.weight\": {\"dtype\": \"F32\", \"shape\": [3, 4], "
                    "\"data_offsets\": [0, 48], \"extra\": 1}, "
                    "\"z\": {\"dtype\": \"F16\", \"shape\": [0, 4], \"data_offsets\": [64, 64]}, "
                    "\"s\": {\"dtype\": \"BF16\", \"shape\": [], \"data_offsets\": [64, 66]}, "
                    "\"i\": {\"dtype\": \"I8\", \"shape\": [3], \"data_offsets\": [66, 69]}}"
                    "        ";
    const char *path = make_file("ok.safetensors", h, 69, ~(uint64_t)0);
    st_table *t = NULL;
    char err[512] = "";
    int rc = st_open(&t, path, err, sizeof err);
    CHECK(rc == DIT_OK && t, "valid file: %s", err);
    if (!t)
        return;
    CHECK(st_count(t) == 5, "count %d", st_count(t));
    CHECK(!strcmp(st_path(t), path), "path %s", st_path(t));
    const char *order[] = {"b", "a.weight", "z", "s", "i"};
    for (int i = 0; i < 5; i++)
        CHECK(st_at(t, i) && !strcmp(st_at(t, i)->name, order[i]), "order %d", i);
    CHECK(st_at(t, 5) == NULL && st_at(t, -1) == NULL, "st_at out of range");
    const st_tensor *a = st_find(t, "a.weight"), *b = st_find(t, "b");
    CHECK(a && a->dtype == ST_F32 && a->ndim == 2 && a->shape[0] == 3 &&
              a->shape[1] == 4 && a->nbytes == 48 && st_numel(a) == 12, "a.weight");
    CHECK(a && ((const unsigned char *)a->data)[5] == 5, "a.weight data");
    CHECK(b && b->dtype == ST_I64 && b->nbytes == 16 &&
              ((const unsigned char *)b->data)[0] == 48, "b data");
    const st_tensor *z = st_find(t, "z"), *s = st_find(t, "s");
    CHECK(z && z->nbytes == 0 && st_numel(z) == 0, "zero-size tensor");
    CHECK(s && s->ndim == 0 && st_numel(s) == 1 && s->nbytes == 2, "scalar");
    const st_tensor *i8 = st_find(t, "i");
    CHECK(i8 && i8->dtype == ST_I8 && i8->nbytes == 3 &&
              ((const unsigned char *)i8->data)[2] == 68, "I8 tensor");
    CHECK(st_find(t, "missing") == NULL && st_find(t, "__metadata__") == NULL,
          "absent names");
    for (int i = 0; i < st_count(t); i++) {
        const st_tensor *x = st_at(t, i);
        CHECK((uintptr_t)x->data % st_dtype_size(x->dtype) == 0, "%s misaligned",
              x->name);
    }
    st_close(t);

    /* an odd header length leaves the data misaligned: it must be copied */
    const char *h2 = "{\"w\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,20]}}";
    CHECK(strlen(h2) % 4, "test header should be misaligned");
    path = make_file("odd.safetensors", h2, 20, ~(uint64_t)0);
    rc = st_open(&t, path, err, sizeof err);
    CHECK(rc == DIT_OK, "odd header: %s", err);
    if (!rc) {
        const st_tensor *w = st_find(t, "w");
        CHECK(w && (uintptr_t)w->data % 4 == 0, "misaligned data not copied");
        CHECK(w && ((const unsigned char *)w->data)[19] == 19, "copied data wrong");
        st_close(t);
    }

    /* no tensors at all is a valid (empty) file */
    path = make_file("empty-table.safetensors", "{}", 0, ~(uint64_t)0);
    rc = st_open(&t, path, err, sizeof err);
    CHECK(rc == DIT_OK && st_count(t) == 0, "empty table: %s", err);
    st_close(t);
}

static void test_container(void)
{
    const char *path = check_path("zero.safetensors");
    check_write(path, "", 0);
    expect_fail(path, DIT_E_FORMAT, (const char *const[]){"0 bytes", "too short", NULL});
    path = check_path("five.safetensors");
    check_write(path, "\x10\0\0\0\0", 5);
    expect_fail(path, DIT_E_FORMAT, (const char *const[]){"5 bytes", NULL});
    expect_fail(make_file("past.safetensors", "{}", 0, 1000), DIT_E_FORMAT,
                (const char *const[]){"header length 1000 runs past the end", NULL});
    expect_fail(make_file("huge.safetensors", "{}", 0, ~(uint64_t)0 - 5), DIT_E_FORMAT,
                (const char *const[]){"exceeds the limit", NULL});
    expect_fail(make_file("cap.safetensors", "{}", 0, 100000001), DIT_E_FORMAT,
                (const char *const[]){"header length 100000001 exceeds", NULL});
    expect_fail(make_file("short.safetensors", "{}", 0, 1), DIT_E_FORMAT,
                (const char *const[]){"not valid JSON", "expected a string key", NULL});
    expect_fail(check_path("does-not-exist.safetensors"), DIT_E_IO,
                (const char *const[]){"cannot open", NULL});
    mkdir(check_path("dir.safetensors"), 0700);
    expect_fail(check_path("dir.safetensors"), DIT_E_IO,
                (const char *const[]){"not a regular file", NULL});
    FAIL("notjson.safetensors", "hello", 0, "header is not valid JSON", "byte 0");
    FAIL("array.safetensors", "[1, 2]", 0, "header is a JSON array, not an object");
    FAIL("trailing.safetensors", "{} {}", 0, "not valid JSON", "expected end of input");
    FAIL("dup.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
         "duplicate key \"a\"");
    FAIL("meta.safetensors", "{\"__metadata__\": {\"n\": 3}}", 0,
         "__metadata__ value 'n' is number, not a string");
    FAIL("meta2.safetensors", "{\"__metadata__\": [1]}", 0, "__metadata__ is array");
}

static void test_entries(void)
{
    FAIL("span.safetensors",
         "{\"blocks.0.attn.qkv.weight\":{\"dtype\":\"F32\",\"shape\":[3,4],"
         "\"data_offsets\":[0,100]}}", 100,
         "tensor 'blocks.0.attn.qkv.weight': data_offsets [0, 100) span 100 bytes "
         "but shape [3, 4] of F32 needs 48");
    FAIL("dtype.safetensors", "{\"w\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, "tensor 'w': unknown dtype 'Q7'");
    FAIL("f64.safetensors", "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}",
         8, "tensor 'w': dtype F64 is not supported");
    FAIL("dtype-num.safetensors", "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, "tensor 'w': dtype is number, not a string");
    FAIL("nodtype.safetensors", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'w': dtype is nothing");
    FAIL("noshape.safetensors", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
         "tensor 'w': shape is nothing, not an array");
    FAIL("nooff.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
         "tensor 'w': data_offsets is not an array");
    FAIL("off3.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}",
         4, "tensor 'w': data_offsets is not an array [begin, end]");
    FAIL("entry.safetensors", "{\"w\": 5}", 0, "tensor 'w': entry is number, not an object");
    FAIL("neg.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
         4, "tensor 'w': shape[0] is -1, not a non-negative integer");
    FAIL("frac.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,4]}}",
         4, "tensor 'w': shape[0] is 2.5");
    FAIL("str.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}",
         8, "tensor 'w': shape[0] is string");
    FAIL("ndim.safetensors",
         "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
         4, "tensor 'w': shape has 9 dimensions, more than 8");
    FAIL("overflow.safetensors",
         "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,4]}}",
         4, "tensor 'w': shape [4294967296, 4294967296, 4] of F32 is too large");
    FAIL("overflow2.safetensors",
         "{\"w\":{\"dtype\":\"I64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,8]}}",
         8, "tensor 'w'", "is too large");
    FAIL("bigoff.safetensors",
         "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}",
         4, "tensor 'w': data_offsets[1] is", "not a non-negative integer");
    FAIL("backwards.safetensors",
         "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8,
         "tensor 'w': data_offsets [8, 4) end before they begin");
    FAIL("outside.safetensors",
         "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
         "tensor 'w': data_offsets [0, 16) run past the end of the 8-byte data region");
    FAIL("nul.safetensors",
         "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'a': name contains a NUL character");
}

static void test_layout(void)
{
    FAIL("overlap.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24,
         "tensor 'b': data_offsets [8, 24) overlap tensor 'a' [0, 16)");
    FAIL("same.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
         "\"b\":{\"dtype\":\"I32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16,
         "overlap tensor '");
    FAIL("gap.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[20,36]}}", 36,
         "tensor 'b': data_offsets begin at 20, leaving a gap of 4 bytes after "
         "tensor 'a' (ends at 16)");
    FAIL("start.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[4,20]}}", 20,
         "tensor 'a': data_offsets begin at 4, leaving 4 unused bytes at the start");
    FAIL("tail.safetensors",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 20,
         "4 bytes after the last tensor's data");
    FAIL("tail0.safetensors", "{}", 3, "3 bytes after the last tensor's data");
}

static void release_count(void *p, size_t n)
{
    (*(int *)p) += (int)n;
}

static void test_builder(void)
{
    int released = 0;
    st_table *t = st_table_new("synthetic", &released, 7, release_count);
    CHECK(t != NULL, "st_table_new");
    if (!t)
        return;
    static const float data[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "blocks.%d.weight", i);
        CHECK(st_table_add(t, name, ST_F32, 2, shape, data) == 0, "add %s", name);
    }
    CHECK(st_count(t) == 1000, "count %d", st_count(t));
    for (int i = 0; i < 1000; i += 37) {
        snprintf(name, sizeof name, "blocks.%d.weight", i);
        const st_tensor *x = st_find(t, name);
        CHECK(x && x == st_at(t, i) && !strcmp(x->name, name) && x->nbytes == 24 &&
                  x->data == data, "find %s", name);
    }
    int64_t bad[2] = {2, -3}, huge[3] = {INT64_MAX, 2, 1};
    CHECK(st_table_add(t, "x", 99, 2, shape, data) == -1, "unknown dtype accepted");
    /* Q8 is an in-memory dtype: no table holds one */
    CHECK(st_table_add(t, "x", ST_Q8, 2, shape, data) == -1, "Q8 tensor accepted");
    CHECK(st_table_add(t, "x", ST_F32, 9, shape, data) == -1, "ndim 9 accepted");
    CHECK(st_table_add(t, "x", ST_F32, 2, bad, data) == -1, "negative dim accepted");
    CHECK(st_table_add(t, "x", ST_F32, 3, huge, data) == -1, "overflow accepted");
    CHECK(st_table_add(t, NULL, ST_F32, 2, shape, data) == -1, "NULL name accepted");
    CHECK(st_count(t) == 1000 && st_find(t, "x") == NULL, "refused adds changed the table");
    st_close(t);
    CHECK(released == 7, "release called with %d", released);
    st_close(NULL);
    CHECK(st_count(NULL) == 0 && st_find(NULL, "a") == NULL && st_at(NULL, 0) == NULL,
          "NULL table");
    CHECK(st_dtype_size(ST_BF16) == 2 && st_dtype_size(ST_I64) == 8 &&
              st_dtype_size(ST_I8) == 1 && st_dtype_size(-1) == 0 && st_dtype_size(ST_Q8) == 0,
          "dtype sizes");
    CHECK(!strcmp(st_dtype_name(ST_BF16), "BF16") && !strcmp(st_dtype_name(ST_I8), "I8") &&
              !strcmp(st_dtype_name(ST_Q8), "Q8") && !strcmp(st_dtype_name(7), "unknown"),
          "dtype names");
    st_table *o = (st_table *)1;
    CHECK(st_open(&o, NULL, NULL, 0) == DIT_E_INVAL && o == NULL, "NULL path");
    CHECK(st_open(NULL, "x", NULL, 0) == DIT_E_INVAL, "NULL out");
}

int main(void)
{
    check_tmpdir();
    test_valid();
    test_container();
    test_entries();
    test_layout();
    test_builder();
    return check_exit();
}
