/* pool.c: a fixed set of engine worker threads for one context.
 *
 * The forward pass hands the pool a batch of independent tasks (row blocks
 * of a matmul, (row, head) pairs of attention, experts of a MoE layer) and
 * waits for all of them: a fork-join barrier. The calling thread works too,
 * so a pool of n runs n tasks at once with n - 1 extra threads. Tasks are
 * claimed from a shared counter under the mutex; the work per task is large
 * (a GEMM) so the lock is not contended. Nothing is allocated per run.
 *
 * A forward pass of a small model is ~80 short runs, so waking a sleeping
 * thread each time (tens of microseconds) would cost more than the work:
 * threads first poll the run counter for a few microseconds, and sleep on
 * the condition variable only when no run comes.
 */
#include <pthread.h>
#include <stdlib.h>

#include "pool.h"

struct op_pool {
    int n;                 /* threads including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t work;   /* a new run or shutdown */
    pthread_cond_t idle;   /* the last task of a run finished */
    op_task_fn fn;
    void *arg;
    int ntasks, next, pending;
    unsigned long generation;
    int stop;
};

typedef struct pool_worker { struct op_pool *p; int id; } pool_worker;

#define POOL_SPIN 4000 /* polls (a pause each) before sleeping, ~10-20 us */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Polls until *v != old or the spin budget is spent. */
static void spin_while_equal(const unsigned long *v, unsigned long old)
{
    for (int i = 0; i < POOL_SPIN && __atomic_load_n(v, __ATOMIC_ACQUIRE) == old; i++)
        cpu_relax();
}

/* Polls until *v is 0 or the spin budget is spent. */
static void spin_while_nonzero(const int *v)
{
    for (int i = 0; i < POOL_SPIN && __atomic_load_n(v, __ATOMIC_ACQUIRE) != 0; i++)
        cpu_relax();
}

/* Claims and runs tasks until none are left. Called with mu held. */
static void pool_drain(struct op_pool *p, int id)
{
    while (p->next < p->ntasks) {
        int i = p->next++;
        pthread_mutex_unlock(&p->mu);
        p->fn(p->arg, i, id);
        pthread_mutex_lock(&p->mu);
        if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_ACQ_REL) == 0)
            pthread_cond_broadcast(&p->idle);
    }
}

static void *pool_main(void *arg)
{
    pool_worker w = *(pool_worker *)arg;
    struct op_pool *p = w.p;
    free(arg);
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (!p->stop && __atomic_load_n(&p->generation, __ATOMIC_RELAXED) == seen) {
            pthread_mutex_unlock(&p->mu);
            spin_while_equal(&p->generation, seen);
            pthread_mutex_lock(&p->mu);
        }
        while (!p->stop && p->generation == seen)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->stop)
            break;
        seen = p->generation;
        pool_drain(p, w.id);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

struct op_pool *op_pool_new(int n)
{
    if (n < 2)
        return NULL;
    struct op_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->threads = calloc((size_t)n, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->idle, NULL);
    p->n = 1;
    for (int i = 1; i < n; i++) {
        pool_worker *w = malloc(sizeof *w);
        if (!w)
            break;
        w->p = p;
        w->id = i;
        if (pthread_create(&p->threads[i], NULL, pool_main, w) != 0) {
            free(w);
            break;
        }
        p->n++;
    }
    if (p->n < 2) {
        op_pool_free(p);
        return NULL;
    }
    return p;
}

void op_pool_free(struct op_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->idle);
    free(p->threads);
    free(p);
}

int op_pool_threads(const struct op_pool *p)
{
    return p ? p->n : 1;
}

void op_pool_run(struct op_pool *p, int ntasks, op_task_fn fn, void *arg)
{
    if (!p || ntasks <= 1) {
        for (int i = 0; i < ntasks; i++)
            fn(arg, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->ntasks = ntasks;
    p->next = 0;
    __atomic_store_n(&p->pending, ntasks, __ATOMIC_RELAXED);
    __atomic_store_n(&p->generation, p->generation + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->work);
    pool_drain(p, 0);
    if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0) {
        pthread_mutex_unlock(&p->mu);
        spin_while_nonzero(&p->pending);
        pthread_mutex_lock(&p->mu);
    }
    while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_wait(&p->idle, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
