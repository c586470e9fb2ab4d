/* vae_check.c: drives engine/vae.c for the vae suite (test_vae.py).
 *
 *   vae_check load DIR
 *       loads the VAE; prints "ok" or the error ("E<status> <message>") and
 *       exits 0 on success, 1 on a load error, 2 on a crash-free misuse.
 *   vae_check decode DIR N H W Z.f32 OUT.f32 [THREADS]
 *       decodes N latents (N, latent, H, W) of raw little-endian float32
 *       into OUT.f32 (N, out, H*up, W*up), first checking the API's argument
 *       checks (a workspace one byte short, n = 0) refuse rather than run;
 *       with THREADS > 1, on an engine worker pool of that many threads.
 *
 * Raw float files keep this driver free of any file-format code; the
 * Python side writes and compares them with NumPy.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ditmoe/dit.h>
#include "ops.h"
#include "vae.h"

static float *read_f32(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    float *p = malloc(n * sizeof *p);
    size_t got = f && p ? fread(p, sizeof *p, n, f) : 0;
    int extra = f ? fgetc(f) != EOF : 1;
    if (f)
        fclose(f);
    if (got != n || extra) {
        fprintf(stderr, "%s: expected exactly %zu floats\n", path, n);
        free(p);
        return NULL;
    }
    return p;
}

static int decode(vae_model *m, struct op_pool *pool, int n, int h, int w,
                  const char *zpath, const char *opath)
{
    int lat = vae_latent_channels(m), up = vae_upscale(m);
    size_t zn = (size_t)n * lat * h * w;
    size_t on = (size_t)n * vae_out_channels(m) * h * up * w * up;
    int threads = pool ? op_pool_threads(pool) : 1;
    size_t wsb = vae_workspace_bytes(m, threads, n, h, w);
    float *z = read_f32(zpath, zn), *out = malloc(on * sizeof *out);
    void *ws = malloc(wsb);
    int rc = 1;
    if (!z || !out || !ws || !wsb)
        goto done;
    if (vae_decode(m, pool, ws, wsb - 1, n, h, w, z, out) != DIT_E_INVAL ||
        vae_decode(m, pool, ws, wsb, 0, h, w, z, out) != DIT_E_INVAL ||
        vae_workspace_bytes(m, threads, n, 0, w) != 0) {
        fprintf(stderr, "argument checks did not refuse\n");
        goto done;
    }
    int st = vae_decode(m, pool, ws, wsb, n, h, w, z, out);
    if (st != DIT_OK) {
        fprintf(stderr, "vae_decode: %s\n", dit_strerror(st));
        goto done;
    }
    FILE *f = fopen(opath, "wb");
    rc = !f || fwrite(out, sizeof *out, on, f) != on;
    if (f && fclose(f))
        rc = 1;
    if (!rc)
        printf("ok workspace %zu bytes\n", wsb);
done:
    free(z);
    free(out);
    free(ws);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: vae_check load DIR | decode DIR N H W Z.f32 OUT.f32\n");
        return 2;
    }
    char err[1024] = "";
    vae_model *m = (vae_model *)1;
    const gemm_kernel *gk = NULL;
    int st = gemm_kernel_choose(&gk, err, sizeof err); /* DITMOE_ISA or the best */
    if (st != DIT_OK) {
        printf("E%d %s\n", st, err);
        return 2;
    }
    st = vae_load(&m, argv[2], gk, err, sizeof err);
    if (st != DIT_OK) {
        printf("E%d %s\n", st, err);
        return m == NULL && err[0] ? 1 : 2; /* failure must leave *out NULL */
    }
    int rc = 0;
    if (!strcmp(argv[1], "load"))
        printf("ok\n");
    else if (!strcmp(argv[1], "decode") && (argc == 8 || argc == 9)) {
        struct op_pool *pool = argc == 9 ? op_pool_new(atoi(argv[8])) : NULL;
        rc = decode(m, pool, atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), argv[6], argv[7]);
        op_pool_free(pool);
    } else
        rc = 2;
    vae_free(m);
    vae_free(NULL);
    return rc;
}
