/* jobs.h: the job table and the FIFO queue (one mutex, one condition).
 *
 * A job is one generation request. It is queued by an HTTP thread, taken
 * into the running batch by the scheduler (batcher.c) at a step boundary,
 * and ends done, failed or cancelled; finished jobs stay in the table for
 * job_retention_s / job_retention_count so their image can be fetched.
 * Jobs are reference counted: the table holds one reference while the job
 * is listed, each HTTP request and the scheduler hold their own.
 *
 * Locking: every field marked (T) is guarded by the table's mutex. Fields
 * marked (S) belong to the scheduler thread while the job runs, and are
 * read by others only once the job has finished (the state change under
 * the mutex orders the accesses). Watchers are called with the mutex held,
 * so they must be quick and must not call back into this module.
 */
#ifndef SRV_JOBS_H
#define SRV_JOBS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include <ditmoe/dit.h>
#include "request.h"
#include "srv.h"

typedef enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLED } job_state;

/* "queued", "running", "done", "failed", "cancelled" */
const char *job_state_name(job_state s);

typedef struct job_watch {
    void (*fn)(void *arg);     /* called under the table lock on any change */
    void *arg;
    struct job_watch *next;
} job_watch;

typedef struct job {
    /* immutable once submitted */
    char id[SRV_JOB_ID_MAX];
    char client[64];           /* who submitted it, for max_jobs_per_client */
    srv_gen_req req;
    int rows;                  /* rows per step: images, doubled with guidance */
    double t_submit, deadline; /* srv_now() */
    /* (T) */
    int refs;
    job_state state;
    int cancel;                /* cancellation asked while running */
    int steps;                 /* the sampler's step count, once running */
    int step;                  /* steps done */
    float *step_ms;            /* (steps) ms since start at the end of each step */
    double t_start, t_end;
    int err_status;            /* HTTP status of a failure (504, 503, 500) */
    char err[256];
    job_watch *watchers;
    struct job *qnext;         /* queue link */
    struct job *tprev, *tnext; /* table list, submission order */
    int listed;
    /* (S), readable by anyone once finished */
    dit_sampler *sampler;
    double t_denoised;         /* srv_now() after the last step; 0 if none */
    double decode_s, encode_s; /* dit_decode, PNG encoding (grid and images) */
    uint64_t *experts;         /* (L, E) tokens this job's rows sent to each expert */
    uint8_t *png;              /* the image, or the grid of all images */
    size_t png_len;
    uint8_t **pngs;            /* (num_images) one PNG per image when num_images > 1 */
    size_t *png_lens;
} job;

typedef struct job_table {
    pthread_mutex_t mu;
    pthread_cond_t work;       /* the scheduler waits here for jobs */
    const srv_config *cfg;
    char instance[SRV_INSTANCE_MAX + 1]; /* the job id prefix */
    int L, E;                  /* layers and experts, for job->experts */
    job *q_head, *q_tail;      /* (T) FIFO of queued jobs */
    int q_len;
    job *t_head, *t_tail;      /* (T) every listed job */
    int n_listed, n_finished;
    int running;               /* (T) jobs in the running batch */
    int accepting;             /* (T) 0 once shutting down */
    int quit;                  /* (T) the scheduler should exit */
    double step_s;             /* (T) running average of a step's seconds, for Retry-After */
    /* called under the lock whenever a job ends (for metrics); may be NULL */
    void (*on_end)(void *arg, const job *j);
    void *on_end_arg;
} job_table;

enum { JOB_OK = 0, JOB_E_FULL = -1, JOB_E_STOPPING = -2, JOB_E_NOMEM = -3, JOB_E_CLIENT = -4 };

/* A table whose job ids start with `instance` (copied). */
int job_table_new(job_table **out, const srv_config *cfg, const char *instance, int layers,
                  int experts);
/* Frees the table and every listed job. The scheduler must have stopped. */
void job_table_free(job_table *t);

/* Queues a job for r from client (an address, copied). On JOB_OK *out is
 * a new reference (job_unref it). JOB_E_FULL: the queue is at capacity;
 * JOB_E_CLIENT: the client has max_jobs_per_client queued or running;
 * JOB_E_STOPPING: shutting down. */
int job_submit(job_table *t, const srv_gen_req *r, const char *client, job **out);

/* The listed job with this id, as a new reference, or NULL. */
job *job_find(job_table *t, const char *id);
void job_ref(job_table *t, job *j);
/* Drops a reference; the last one frees the job. NULL is a no-op. */
void job_unref(job_table *t, job *j);

/* Cancels j: a queued job leaves the queue at once, a running one at the
 * scheduler's next step boundary. Returns 1 if this took effect, 0 if j
 * had already finished. */
int job_cancel(job_table *t, job *j);

/* Registers / removes a watcher (w is owned by the caller and must stay
 * valid until removed). */
void job_watch_add(job_table *t, job *j, job_watch *w);
void job_watch_del(job_table *t, job *j, job_watch *w);

typedef struct job_info {
    job_state state;
    int step, steps;
    int queue_position;        /* 1 = next to run; 0 when not queued */
    /* queued; denoising (so far, while running); the decode (VAE or pixel
     * mapping) and PNG encoding of a done job (0 otherwise); submission to
     * the end (so far). total >= the others' sum: the rest is the wait for
     * other jobs decoded in the same pass. */
    double queue_ms, compute_ms, decode_ms, encode_ms, total_ms;
    int err_status;
    char err[256];
} job_info;

/* A consistent snapshot of j's progress. */
void job_get_info(job_table *t, job *j, job_info *info);
/* Elapsed ms at the end of step k (0-based) of a running or finished job. */
double job_step_ms(job_table *t, job *j, int k);

/* Queue depth and running jobs. */
void job_counts(job_table *t, int *queued, int *running);
/* Seconds a client refused with JOB_E_FULL (client NULL) or JOB_E_CLIENT
 * should wait: estimated from the work itself (remaining steps times the
 * measured step time) until the first running job ends, or until the
 * client's own first job does; within [1, request_timeout_s]. */
int job_retry_after(job_table *t, const char *client);

/* ---- shutdown ------------------------------------------------------------ */

/* Stops accepting jobs (JOB_E_STOPPING from then on). */
void job_table_close(job_table *t);
/* Cancels every queued and running job (shutdown after the drain time). */
void job_cancel_all(job_table *t);
/* 1 when nothing is queued or running. */
int job_table_idle(job_table *t);
/* Tells the scheduler to exit once its batch is empty. */
void job_table_quit(job_table *t);

/* ---- scheduler side (batcher.c) ------------------------------------------ */

/* Waits until a job is queued or quit was asked (only when the scheduler
 * has no running jobs). Returns 0 when the scheduler should exit. */
int job_wait_work(job_table *t);
/* Fails queued jobs past their deadline, then takes the head of the queue
 * if it needs at most rows_free rows: the job becomes RUNNING. Returns a
 * reference owned by the caller, or NULL. */
job *job_admit(job_table *t, int rows_free);
/* Gives an admitted job its sampler s (made by the scheduler; the job owns
 * it from now on) and allocates its progress and routing arrays. Returns
 * -1 when out of memory: the job is then failed. */
int job_start(job_table *t, job *j, dit_sampler *s);
/* Records one finished step of each of js[0..n) at time now; the step
 * took step_s seconds. */
void job_steps_done(job_table *t, job **js, int n, double now, double step_s);
/* 1 when j was cancelled or passed its deadline: the scheduler ends it. */
int job_should_stop(job_table *t, job *j, double now);
/* Ends j: state DONE, FAILED (status, msg) or CANCELLED, or, for a stop
 * that job_should_stop asked, whichever it asked for (pass JOB_RUNNING). */
void job_finish(job_table *t, job *j, job_state state, int status, const char *msg, double now);

#endif
