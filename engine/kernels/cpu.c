/* cpu.c: what this CPU runs, for users of the public API: the GEMM kernel
 * entries it supports, the FP32 FMA peak of one of them, and whether
 * OpenBLAS recognised the CPU.
 *
 * The peak is the yardstick `ditmoe bench` divides achieved GFLOP/s by: a
 * register-only loop of independent FMAs (the entry's fma_loop) timed on
 * each thread of a pool at once and summed. Each thread times itself on
 * its own CPU clock, so other jobs time-slicing a shared machine do not
 * lower the figure: it is what the cores can do (on SMT siblings, which
 * share one core's FMA ports, it would count that core twice). Unlike an sgemm it cannot be
 * crippled by a BLAS that does not know the CPU: OpenBLAS 0.3.21 runs its
 * generic Prescott kernels on recent Xeons, 5x slower, and then "a fraction
 * of sgemm" flatters everything. dit_blas_warning names that case and its
 * fix (OPENBLAS_CORETYPE) for programs to print; the library prints nothing.
 */
#include <cblas.h>
#include <stdio.h>
#include <strings.h>
#include <time.h>

#include <ditmoe/dit.h>

#include "gemm.h"
#include "pool.h"

int dit_kernels_available(const char **names, int max)
{
    int n = 0;
    for (const gemm_kernel *const *k = gemm_kernels(); *k; k++)
        if ((*k)->supported()) {
            if (names && n < max)
                names[n] = (*k)->name;
            n++;
        }
    return n;
}

static double thread_cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef struct peak_job {
    const gemm_kernel *k;
    double *rate; /* (tasks) GFLOP/s each */
} peak_job;

/* One thread's peak: reps doubled until a run takes 50 ms of the thread's
 * CPU time, then the best of three runs of that length. */
static void peak_task(void *arg, int task, int thread)
{
    peak_job *j = arg;
    long reps = 1 << 14;
    double best = 0;
    (void)thread;
    for (int runs = 0; runs < 3;) {
        double t0 = thread_cpu_now(), f = j->k->fma_loop(reps), dt = thread_cpu_now() - t0;
        if (dt < 0.05) {
            reps *= 2;
            continue;
        }
        best = f / dt > best ? f / dt : best;
        runs++;
    }
    j->rate[task] = best * 1e-9;
}

double dit_kernel_peak_gflops(const char *name, int threads)
{
    const gemm_kernel *k = name ? gemm_kernel_find(name) : NULL;
    double rate[256] = { 0 }, sum = 0;
    if (!k || !k->supported() || threads < 1 || threads > 256)
        return 0;
    struct op_pool *pool = threads > 1 ? op_pool_new(threads) : NULL;
    if (threads > 1 && !pool)
        return 0;
    peak_job j = { k, rate };
    op_pool_run(pool, threads, peak_task, &j);
    op_pool_free(pool);
    for (int i = 0; i < threads; i++)
        sum += rate[i];
    return sum;
}

const char *dit_blas_warning(char *buf, size_t len)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const char *const known[] = { "Haswell", "Zen", "SkylakeX", "CooperLake",
                                         "SapphireRapids", NULL };
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f");
    if (!buf || !len || !__builtin_cpu_supports("avx2"))
        return NULL;
    const char *core = openblas_get_corename();
    for (int i = 0; core && known[i]; i++)
        if (!strcasecmp(core, known[i]))
            return NULL;
    snprintf(buf, len, "OpenBLAS runs its generic '%s' kernels on this %s CPU (it does not "
             "know the model): everything still on BLAS (--no-pack) "
             "runs several times slower; set OPENBLAS_CORETYPE=%s", core ? core : "?",
             avx512 ? "AVX-512" : "AVX2", avx512 ? "SkylakeX" : "Haswell");
    return buf;
#else
    (void)buf, (void)len;
    return NULL;
#endif
}
