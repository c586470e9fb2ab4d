/* pt_dump.c: prints what pt_open (or st_open) reads from a weight file, for
 * the tests in this folder to compare against torch.load.
 *
 *   pt_dump FILE                 one line per tensor: name dtype shape crc32
 *                                (of its bytes, in table order); exit 0
 *   pt_dump --fail TEXT FILE     expects the open to fail with a message
 *                                containing TEXT: prints it, exits 0 if so
 */
#include <stdio.h>
#include <string.h>

#include <ditmoe/dit.h>
#include "st.h"
#include "zip.h"

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

int main(int argc, char **argv)
{
    const char *expect = NULL, *path;
    if (argc == 4 && !strcmp(argv[1], "--fail")) {
        expect = argv[2];
        path = argv[3];
    } else if (argc == 2) {
        path = argv[1];
    } else {
        fprintf(stderr, "usage: pt_dump [--fail TEXT] FILE\n");
        return 2;
    }
    char err[1024] = "";
    st_table *t = NULL;
    int rc = ends_with(path, ".safetensors") ? st_open(&t, path, err, sizeof err)
                                             : pt_open(&t, path, err, sizeof err);
    if (expect) {
        printf("%s (%s)\n", err, dit_strerror(rc));
        st_close(t);
        if (rc == DIT_OK) {
            fprintf(stderr, "pt_dump: %s opened, but should have failed\n", path);
            return 1;
        }
        if (!strstr(err, expect)) {
            fprintf(stderr, "pt_dump: message lacks '%s'\n", expect);
            return 1;
        }
        return 0;
    }
    if (rc) {
        fprintf(stderr, "pt_dump: %s (%s)\n", err, dit_strerror(rc));
        return 1;
    }
    for (int i = 0; i < st_count(t); i++) {
        const st_tensor *x = st_at(t, i);
        printf("%s %s [", x->name, st_dtype_name(x->dtype));
        for (int d = 0; d < x->ndim; d++)
            printf("%s%lld", d ? "," : "", (long long)x->shape[d]);
        printf("] %08x\n", zip_crc32(x->data, (size_t)x->nbytes));
    }
    st_close(t);
    return 0;
}
