/* fuzz_st.c: libFuzzer target for the JSON reader and st_open.
 *
 * Each input is parsed as a JSON text (both duplicate-key modes, every
 * value walked through the accessors) and opened as a .safetensors file
 * through a memfd, since st_open takes a path. An accepted file must hold
 * what st.h promises: spans that tile the data region exactly, aligned
 * data, names st_find returns; any breach traps, as does a crash or a
 * sanitizer report.
 */
#include <ditmoe/dit_json.h>
#include "st.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void walk(const dit_json *v, int depth)
{
    int64_t i64;
    switch (dit_json_type(v)) {
    case DIT_JSON_ARRAY:
    case DIT_JSON_OBJECT:
        if (depth > DIT_JSON_MAX_DEPTH)
            __builtin_trap();
        for (size_t i = 0; i < dit_json_len(v); i++) {
            walk(dit_json_at(v, i), depth + 1);
            const dit_json *k = dit_json_key(v, i);
            if (k && dit_json_str(k) && dit_json_get(v, dit_json_str(k)) == NULL)
                __builtin_trap(); /* a key must find a value */
        }
        break;
    case DIT_JSON_STRING:
        if (dit_json_str(v)[dit_json_len(v)] != 0)
            __builtin_trap();
        break;
    case DIT_JSON_NUMBER:
        (void)dit_json_num(v);
        (void)dit_json_int(v, &i64);
        break;
    default:
        break;
    }
}

static void check_table(const st_table *t, size_t size)
{
    uint64_t total = 0;
    for (int i = 0; i < st_count(t); i++) {
        const st_tensor *x = st_at(t, i);
        if (st_find(t, x->name) != x || x->nbytes != st_numel(x) * st_dtype_size(x->dtype) ||
            (uintptr_t)x->data % st_dtype_size(x->dtype))
            __builtin_trap();
        const unsigned char *p = x->data;
        unsigned sum = 0;
        for (uint64_t k = 0; k < x->nbytes; k++) /* every byte must be readable */
            sum += p[k];
        (void)sum;
        total += x->nbytes;
    }
    if (total > size)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    dit_json_doc *d = NULL;
    for (int flags = 0; flags <= DIT_JSON_ALLOW_DUPLICATES; flags++) {
        if (dit_json_parse_ex((const char *)data, size, flags, &d, err, sizeof err) == 0) {
            walk(dit_json_root(d), 0);
            dit_json_free(d);
        } else if (d || !err[0])
            __builtin_trap(); /* failure must leave *out NULL and say why */
    }

    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz.safetensors", 0);
        if (fd < 0)
            return 0;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        return 0;
    st_table *t = NULL;
    int rc = st_open(&t, path, err, sizeof err);
    if (rc == 0)
        check_table(t, size);
    else if (t || !strstr(err, path))
        __builtin_trap(); /* a refusal names the file */
    st_close(t);
    return 0;
}
