/* pool.h: the engine's worker threads (pool.c).
 *
 * One pool per context owns the cores: matmuls, attention heads, experts
 * and VAE convolutions are all split into tasks on it, so no second thread
 * pool (BLAS runs single-threaded inside tasks) spins against it.
 */
#ifndef KERNELS_POOL_H
#define KERNELS_POOL_H

typedef void (*op_task_fn)(void *arg, int task, int thread);
struct op_pool;
/* Starts n - 1 worker threads (the caller is the n-th). NULL on failure. */
struct op_pool *op_pool_new(int n);
void op_pool_free(struct op_pool *p);
/* Runs fn(arg, i, thread) for i in [0, ntasks) over the pool (or inline when
 * p is NULL) and returns when all are done. */
void op_pool_run(struct op_pool *p, int ntasks, op_task_fn fn, void *arg);
int op_pool_threads(const struct op_pool *p);

/* Runs fn(arg, r0, r1) over row blocks covering [0, M): one block per pool
 * thread when M is large enough to be worth splitting, else one block. */
typedef void (*op_rows_fn)(void *arg, int r0, int r1, int thread);
void op_rows_run(struct op_pool *p, int M, op_rows_fn fn, void *arg);


#endif
