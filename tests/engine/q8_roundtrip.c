/* q8_roundtrip.c: the Q8 row of the dtype table on a file of floats, for
 * test_q8.py to compare against its NumPy reference bit for bit.
 *
 *   q8_roundtrip IN OUT   IN: n float32 (n a multiple of 32), raw; OUT:
 *                         n int8 values, n/32 F16 scales, n float32
 *                         dequantised, raw, in that order. Exit 0, or 1
 *                         (with the index) when from_f32 refuses a value.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: q8_roundtrip IN OUT\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f || fseek(f, 0, SEEK_END) || ftell(f) <= 0 || ftell(f) % (4 * Q8_BLOCK)) {
        fprintf(stderr, "q8_roundtrip: %s: not a whole number of 32-float blocks\n", argv[1]);
        return 2;
    }
    size_t n = (size_t)ftell(f) / 4;
    rewind(f);
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    q8_block *b = malloc(n / Q8_BLOCK * sizeof *b);
    int8_t *q = malloc(n);
    uint16_t *d = malloc(n / Q8_BLOCK * sizeof *d);
    if (!x || !y || !b || !q || !d || fread(x, 4, n, f) != n)
        return 2;
    fclose(f);
    const dtype_traits *t = dtype_get(ST_Q8);
    int64_t bad = t->from_f32(b, x, n);
    if (bad >= 0) {
        printf("refused %lld\n", (long long)bad);
        free(x), free(y), free(b), free(q), free(d);
        return 1;
    }
    t->to_f32(y, b, n);
    q8_split(q, d, b, n);
    q8_block *back = malloc(n / Q8_BLOCK * sizeof *back);
    q8_join(back, q, d, n); /* join inverts split */
    int differs = -1;
    for (size_t i = 0; back && i < n / Q8_BLOCK && differs < 0; i++)
        if (back[i].d != b[i].d || memcmp(back[i].q, b[i].q, Q8_BLOCK))
            differs = (int)i;
    if (differs >= 0)
        fprintf(stderr, "q8_roundtrip: join(split) differs at block %d\n", differs);
    FILE *o = differs < 0 ? fopen(argv[2], "wb") : NULL;
    int rc = differs >= 0 ? 3 : !o || fwrite(q, 1, n, o) != n ||
             fwrite(d, 2, n / Q8_BLOCK, o) != n / Q8_BLOCK || fwrite(y, 4, n, o) != n ||
             fclose(o) ? 2 : 0;
    free(x), free(y), free(b), free(q), free(d), free(back);
    return rc;
}
