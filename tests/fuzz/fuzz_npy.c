/* fuzz_npy.c: libFuzzer target for ditmoe_io's .npy reader.
 *
 * An accepted buffer must describe exactly the data it carries; a refused
 * one must leave the array empty and say why.
 */
#include "dio.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    io_npy a;
    char err[256];
    if (io_npy_parse(data, size, "fuzz.npy", &a, err, sizeof err) == DIT_OK) {
        if (a.nbytes != io_npy_numel(&a) * io_npy_dtype_size(a.dtype) || a.nbytes > size)
            __builtin_trap();
        unsigned sum = 0;
        for (size_t i = 0; i < a.nbytes; i++)
            sum += ((const unsigned char *)a.data)[i];
        (void)sum;
    } else if (a.data || !strstr(err, "fuzz.npy")) {
        __builtin_trap();
    }
    io_npy_free(&a);
    return 0;
}
