/* cmd_forward.c: `ditmoe forward`: one forward pass on .npy inputs, for
 * parity tests against PyTorch and for poking at a model by hand.
 *   x (N, C, H, W) float32, t (N) float32, y (N) int32 or int64
 *   -> out (N, Cout, H, W) float32
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "dio.h"

static const char forward_usage[] =
    "usage: ditmoe forward --x X.npy --t T.npy --y Y.npy --out OUT.npy [--model DIR]\n"
    "                      [--threads T] [--no-pack] [--compute f32|int8]\n"
    "  --x X.npy      float32 (N, C, H, W) inputs\n"
    "  --t T.npy      float32 (N) timesteps: DDPM index 0..999 or flow time 0..1\n"
    "  --y Y.npy      int32 or int64 (N) labels, num_classes for the null class\n"
    "  --out OUT.npy  float32 (N, Cout, H, W) model output\n"
    "  --model DIR    (default: the embedded model)   --threads T  (default 1)\n"
    "  --no-pack      keep weights as stored and use BLAS (default: packed kernel)\n"
    "  --compute M    f32 (default), or int8: 8-bit products, needs a VNNI CPU (refused\n"
    "                 elsewhere; see docs/quantization.md)\n";

/* "float32 (2, 4, 32, 32)" into buf. */
static const char *fwd_desc(const io_npy *a, char *buf, size_t len)
{
    size_t at = (size_t)snprintf(buf, len, "%s (", a->dtype == IO_NPY_F32 ? "float32"
                                 : a->dtype == IO_NPY_I32 ? "int32" : "int64");
    for (int i = 0; i < a->ndim && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s%lld", i ? ", " : "",
                               (long long)a->shape[i]);
    if (at < len)
        snprintf(buf + at, len - at, ")");
    return buf;
}

/* Checks x, t, y against the model; returns N or -1 after printing. */
static int fwd_check(const dit_config *c, const io_npy *x, const io_npy *t,
                     const io_npy *y, const char *xp, const char *tp, const char *yp)
{
    int64_t want[4] = { 0, c->in_channels, c->input_size, c->input_size };
    int64_t n = x->ndim == 4 ? x->shape[0] : -1;
    int max_label = c->num_classes - 1 + (c->class_dropout_prob > 0);
    char d[128];
    if (x->dtype != IO_NPY_F32 || x->ndim != 4 || x->shape[1] != want[1] ||
        x->shape[2] != want[2] || x->shape[3] != want[3] || n < 1 || n > 4096) {
        cli_fail("%s: x must be float32 (N, %d, %d, %d) with N in 1..4096, not %s", xp,
                 c->in_channels, c->input_size, c->input_size, fwd_desc(x, d, sizeof d));
        return -1;
    }
    if (t->dtype != IO_NPY_F32 || t->ndim != 1 || t->shape[0] != n) {
        cli_fail("%s: t must be float32 (%lld), matching x, not %s", tp, (long long)n,
                 fwd_desc(t, d, sizeof d));
        return -1;
    }
    if ((y->dtype != IO_NPY_I32 && y->dtype != IO_NPY_I64) || y->ndim != 1 || y->shape[0] != n) {
        cli_fail("%s: y must be int32 or int64 (%lld), matching x, not %s", yp, (long long)n,
                 fwd_desc(y, d, sizeof d));
        return -1;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t v = y->dtype == IO_NPY_I32 ? ((const int32_t *)y->data)[i]
                                           : ((const int64_t *)y->data)[i];
        if (v < 0 || v > max_label) {
            cli_fail("%s: y[%lld] = %lld is out of range 0..%d", yp, (long long)i,
                     (long long)v, max_label);
            return -1;
        }
    }
    return (int)n;
}

/* Runs the forward and writes out; 0 or CLI_EFAIL after printing. */
static int fwd_run(const dit_model *m, int n, int threads, const io_npy *x, const io_npy *t,
                   const io_npy *y, const char *outp)
{
    const dit_config *c = dit_model_config(m);
    size_t hw = (size_t)c->input_size * c->input_size;
    dit_ctx_settings set;
    dit_ctx *ctx = NULL;
    int32_t *labels = malloc((size_t)n * sizeof *labels);
    float *out = malloc((size_t)n * c->out_channels * hw * sizeof *out);
    int64_t shape[4] = { n, c->out_channels, c->input_size, c->input_size };
    char err[512] = "";
    int rc = CLI_EFAIL;
    dit_ctx_settings_default(&set);
    set.max_rows = n;
    set.n_threads = threads;
    if (!labels || !out) {
        cli_fail("out of memory for %d rows", n);
        goto done;
    }
    for (int i = 0; i < n; i++)
        labels[i] = y->dtype == IO_NPY_I32 ? ((const int32_t *)y->data)[i]
                                           : (int32_t)((const int64_t *)y->data)[i];
    if ((rc = dit_ctx_new(&ctx, m, &set)) != DIT_OK) {
        rc = cli_fail("cannot make a context for %d rows: %s", n, dit_strerror(rc));
        goto done;
    }
    if ((rc = dit_forward(ctx, n, x->data, t->data, labels, out)) != DIT_OK) {
        rc = cli_fail("forward failed: %s", dit_strerror(rc));
        goto done;
    }
    if ((rc = io_npy_write(outp, IO_NPY_F32, 4, shape, out, err, sizeof err)) != DIT_OK)
        rc = cli_fail("%s", err[0] ? err : dit_strerror(rc));
done:
    dit_ctx_free(ctx);
    free(labels);
    free(out);
    return rc;
}

int cmd_forward(int argc, char **argv)
{
    const char *path = NULL, *xp = NULL, *tp = NULL, *yp = NULL, *outp = NULL, *name;
    const char *threads_s = "1", *compute = NULL;
    int no_pack = 0;
    const cli_opt opts[] = {
        { "model", &path, NULL }, { "x", &xp, NULL }, { "t", &tp, NULL },
        { "y", &yp, NULL }, { "out", &outp, NULL }, { "threads", &threads_s, NULL },
        { "no-pack", NULL, &no_pack }, { "compute", &compute, NULL },
    };
    io_npy x = { 0 }, t = { 0 }, y = { 0 };
    dit_model *m = NULL;
    char err[512] = "";
    int threads, n, rc = cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]),
                                   forward_usage);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (!xp || !tp || !yp || !outp) {
        cli_fail("forward needs --x, --t, --y and --out");
        return CLI_EUSAGE;
    }
    if ((rc = cli_int("threads", threads_s, 1, 256, &threads)))
        return rc;
    if (io_npy_read(xp, &x, err, sizeof err) || io_npy_read(tp, &t, err, sizeof err) ||
        io_npy_read(yp, &y, err, sizeof err)) {
        rc = cli_fail("%s", err);
        goto done;
    }
    if ((rc = cli_load_model(path, no_pack, compute, &m, &name)))
        goto done;
    n = fwd_check(dit_model_config(m), &x, &t, &y, xp, tp, yp);
    rc = n < 0 ? CLI_EFAIL : fwd_run(m, n, threads, &x, &t, &y, outp);
done:
    io_npy_free(&x);
    io_npy_free(&t);
    io_npy_free(&y);
    dit_model_free(m);
    return rc;
}
