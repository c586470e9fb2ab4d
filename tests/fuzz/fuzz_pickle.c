/* fuzz_pickle.c: libFuzzer target for the .pt reader (pickle.c, pt.c, zip.c).
 *
 * Each input is fed twice:
 *   - as data.pkl to pt_load_pickle, with made-up storage records: a key
 *     spelled in decimal names a record of that many bytes (at most 64 KiB;
 *     a leading 'm' makes it misaligned), any other key has no record;
 *   - as a whole file to pt_open through a memfd (zip index, top folder,
 *     CRC, then the same pickle path).
 * An accepted table must hold what st.h promises: names st_find returns,
 * nbytes = numel * dtype size, aligned data, every byte readable; a refusal
 * leaves *out NULL and names the file. Anything else traps.
 */
#include "pt.h"
#include "st.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define REC_MAX 65536

static unsigned char records[REC_MAX + 8];

static int fake_record(void *user, const char *key, size_t len, const unsigned char **data,
                       uint64_t *size)
{
    (void)user;
    size_t skew = len && key[0] == 'm', n = 0;
    if (len == skew || len - skew > 6)
        return -1;
    for (size_t i = skew; i < len; i++) {
        if (key[i] < '0' || key[i] > '9')
            return -1;
        n = n * 10 + (size_t)(key[i] - '0');
    }
    if (n > REC_MAX)
        return -1;
    *data = records + 8 + skew;
    *size = n;
    return 0;
}

static void check_table(const st_table *t)
{
    for (int i = 0; i < st_count(t); i++) {
        const st_tensor *x = st_at(t, i);
        if (st_find(t, x->name) != x || x->nbytes != st_numel(x) * st_dtype_size(x->dtype) ||
            (uintptr_t)x->data % st_dtype_size(x->dtype))
            __builtin_trap();
        const volatile unsigned char *p = x->data;
        for (uint64_t k = 0; k < x->nbytes; k++) /* every byte must be readable */
            (void)p[k];
    }
}

static void check_result(int rc, st_table *t, const char *err, const char *path)
{
    if (rc == 0)
        check_table(t);
    else if (t || !strstr(err, path))
        __builtin_trap();
    st_close(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512] = "";
    st_table *t = NULL;
    for (size_t i = 0; i < sizeof records; i++)
        records[i] = (unsigned char)(i * 37);
    int rc = pt_load_pickle(&t, "fuzz.pkl", data, size, fake_record, NULL, NULL, 0, err,
                            sizeof err);
    check_result(rc, t, err, "fuzz.pkl");

    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz.pt", 0);
        if (fd < 0)
            return 0;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        return 0;
    t = NULL;
    err[0] = 0;
    rc = pt_open(&t, path, err, sizeof err);
    check_result(rc, t, err, path);
    return 0;
}
