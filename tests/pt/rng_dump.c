/* rng_dump.c: rng_torch draws for test_pt.py to compare with torch.
 *
 *   rng_dump SEED N1 [N2 ...]   seeds once, then draws N1, N2, ... values
 *                               in consecutive calls; writes them all to
 *                               stdout as raw float32 (native order).
 * Built twice: against the engine (torch's AVX2 fill) and with
 * -DRNG_TORCH_LIBM_FILL (torch's fill without AVX2).
 */
#include <stdio.h>
#include <stdlib.h>

#include "rng.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: rng_dump SEED N1 [N2 ...]\n");
        return 2;
    }
    rng_torch r;
    rng_torch_seed(&r, strtoull(argv[1], NULL, 10));
    for (int i = 2; i < argc; i++) {
        size_t n = strtoull(argv[i], NULL, 10);
        float *buf = malloc((n ? n : 1) * sizeof *buf);
        if (!buf)
            return 1;
        rng_torch_randn(&r, buf, n);
        if (fwrite(buf, sizeof *buf, n, stdout) != n) {
            free(buf);
            return 1;
        }
        free(buf);
    }
    return 0;
}
