/* jobs.c: the job table and the bounded FIFO queue.
 *
 * One mutex guards the queue, the table list and every job's progress; one
 * condition variable wakes the scheduler when work arrives (the bio.c
 * pattern: a list, a lock, a condvar). The table is a plain list in
 * submission order: it holds at most queue_capacity + max_rows +
 * job_retention_count jobs, and lookups by id are rare next to a
 * denoising step. Finished jobs are evicted oldest first, lazily, whenever
 * the table is touched.
 *
 * Progress is pushed to watchers (waiting HTTP connections) under the lock
 * on every change: a step, a state change, a queue position change.
 */
#include "jobs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "srv.h"

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

const char *job_state_name(job_state s)
{
    static const char *const names[] = {"queued", "running", "done", "failed", "cancelled"};
    return (unsigned)s < 5 ? names[s] : "?";
}

static int finished(const job *j)
{
    return j->state >= JOB_DONE;
}

static void notify_locked(job *j)
{
    for (job_watch *w = j->watchers; w; w = w->next)
        w->fn(w->arg);
}

/* Every queued job's position changed. */
static void notify_queue_locked(job_table *t)
{
    for (job *q = t->q_head; q; q = q->qnext)
        notify_locked(q);
}

int job_table_new(job_table **out, const srv_config *cfg, const char *instance, int layers,
                  int experts)
{
    job_table *t = calloc(1, sizeof *t);
    *out = NULL;
    if (!t)
        return JOB_E_NOMEM;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->work, NULL);
    t->cfg = cfg;
    snprintf(t->instance, sizeof t->instance, "%s", instance);
    t->L = layers;
    t->E = experts;
    t->accepting = 1;
    *out = t;
    return JOB_OK;
}

static void job_free(job *j)
{
    dit_sampler_free(j->sampler);
    free(j->experts);
    free(j->step_ms);
    free(j->png);
    if (j->pngs)
        for (int i = 0; i < j->req.num_images; i++)
            free(j->pngs[i]);
    free(j->pngs);
    free(j->png_lens);
    free(j);
}

static void unref_locked(job *j)
{
    if (j && --j->refs == 0)
        job_free(j);
}

static void unlist_locked(job_table *t, job *j)
{
    if (!j->listed)
        return;
    if (j->tprev) j->tprev->tnext = j->tnext; else t->t_head = j->tnext;
    if (j->tnext) j->tnext->tprev = j->tprev; else t->t_tail = j->tprev;
    j->listed = 0;
    t->n_listed--;
    if (finished(j))
        t->n_finished--;
    unref_locked(j);
}

void job_table_free(job_table *t)
{
    if (!t)
        return;
    while (t->t_head)
        unlist_locked(t, t->t_head);
    pthread_cond_destroy(&t->work);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* Drops finished jobs beyond the retention time or count, oldest first. */
static void evict_locked(job_table *t, double now)
{
    const srv_config *c = t->cfg;
    job *j = t->t_head;
    while (j && t->n_finished > 0) {
        job *next = j->tnext;
        if (finished(j) && (t->n_finished > c->job_retention_count ||
                            now - j->t_end > c->job_retention_s))
            unlist_locked(t, j);
        j = next;
    }
}

static int id_taken_locked(job_table *t, const char *id)
{
    for (job *j = t->t_head; j; j = j->tnext)
        if (!strcmp(j->id, id))
            return 1;
    return 0;
}

/* "INSTANCE-" and 16 random hex digits, unique in the table. */
static void new_id_locked(job_table *t, char *id, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    do {
        uint8_t b[8] = {0};
        if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
            /* no entropy source: a clock-derived id is still unique here */
            uint64_t v = (uint64_t)(srv_now() * 1e9) ^ (uint64_t)(uintptr_t)t;
            memcpy(b, &v, sizeof b);
        }
        char digits[17];
        for (size_t i = 0; i < 8; i++) {
            digits[2 * i] = hex[b[i] >> 4];
            digits[2 * i + 1] = hex[b[i] & 15];
        }
        digits[16] = 0;
        snprintf(id, n, "%s-%s", t->instance, digits);
    } while (id_taken_locked(t, id));
}

/* Queued and running jobs of one client. */
static int client_jobs_locked(job_table *t, const char *client)
{
    int n = 0;
    for (job *j = t->t_head; j; j = j->tnext)
        n += !finished(j) && !strcmp(j->client, client);
    return n;
}

int job_submit(job_table *t, const srv_gen_req *r, const char *client, job **out)
{
    *out = NULL;
    job *j = calloc(1, sizeof *j);
    if (!j)
        return JOB_E_NOMEM;
    j->req = *r;
    snprintf(j->client, sizeof j->client, "%s", client ? client : "");
    j->rows = r->num_images * (r->cfg_scale > 1.0 ? 2 : 1);
    j->t_submit = srv_now();
    j->deadline = j->t_submit + t->cfg->request_timeout_s;
    j->state = JOB_QUEUED;
    j->steps = r->steps;
    pthread_mutex_lock(&t->mu);
    evict_locked(t, j->t_submit);
    int per = t->cfg->max_jobs_per_client;
    int rc = !t->accepting ? JOB_E_STOPPING : t->q_len >= t->cfg->queue_capacity ? JOB_E_FULL
           : per > 0 && client_jobs_locked(t, j->client) >= per ? JOB_E_CLIENT : 0;
    if (rc) {
        pthread_mutex_unlock(&t->mu);
        free(j);
        return rc;
    }
    new_id_locked(t, j->id, sizeof j->id);
    j->refs = 2; /* the table's and the caller's */
    j->listed = 1;
    j->tprev = t->t_tail;
    if (t->t_tail) t->t_tail->tnext = j; else t->t_head = j;
    t->t_tail = j;
    t->n_listed++;
    if (t->q_tail) t->q_tail->qnext = j; else t->q_head = j;
    t->q_tail = j;
    t->q_len++;
    pthread_cond_signal(&t->work);
    pthread_mutex_unlock(&t->mu);
    *out = j;
    return JOB_OK;
}

job *job_find(job_table *t, const char *id)
{
    job *found = NULL;
    pthread_mutex_lock(&t->mu);
    evict_locked(t, srv_now());
    for (job *j = t->t_head; j; j = j->tnext)
        if (!strcmp(j->id, id)) {
            found = j;
            j->refs++;
            break;
        }
    pthread_mutex_unlock(&t->mu);
    return found;
}

void job_ref(job_table *t, job *j)
{
    pthread_mutex_lock(&t->mu);
    j->refs++;
    pthread_mutex_unlock(&t->mu);
}

void job_unref(job_table *t, job *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&t->mu);
    unref_locked(j);
    pthread_mutex_unlock(&t->mu);
}

static void dequeue_locked(job_table *t, job *j)
{
    job **pp = &t->q_head, *prev = NULL;
    while (*pp && *pp != j) {
        prev = *pp;
        pp = &(*pp)->qnext;
    }
    if (!*pp)
        return;
    *pp = j->qnext;
    if (t->q_tail == j)
        t->q_tail = prev;
    j->qnext = NULL;
    t->q_len--;
}

/* A job that never ran, or ran and stopped, enters a final state. */
static void end_locked(job_table *t, job *j, job_state state, int status, const char *msg,
                       double now)
{
    if (j->state == JOB_RUNNING)
        t->running--;
    j->state = state;
    j->t_end = now;
    if (!j->t_start)
        j->t_start = now;
    j->err_status = status;
    snprintf(j->err, sizeof j->err, "%s", msg ? msg : "");
    if (j->listed)
        t->n_finished++;
    if (t->on_end)
        t->on_end(t->on_end_arg, j);
    notify_locked(j);
}

int job_cancel(job_table *t, job *j)
{
    int took = 0;
    pthread_mutex_lock(&t->mu);
    if (j->state == JOB_QUEUED) {
        dequeue_locked(t, j);
        end_locked(t, j, JOB_CANCELLED, 0, "cancelled while queued", srv_now());
        notify_queue_locked(t);
        took = 1;
    } else if (j->state == JOB_RUNNING && !j->cancel) {
        j->cancel = 1;
        took = 1;
    }
    pthread_mutex_unlock(&t->mu);
    return took;
}

void job_watch_add(job_table *t, job *j, job_watch *w)
{
    pthread_mutex_lock(&t->mu);
    w->next = j->watchers;
    j->watchers = w;
    pthread_mutex_unlock(&t->mu);
}

void job_watch_del(job_table *t, job *j, job_watch *w)
{
    pthread_mutex_lock(&t->mu);
    for (job_watch **pp = &j->watchers; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    pthread_mutex_unlock(&t->mu);
}

void job_get_info(job_table *t, job *j, job_info *info)
{
    double now = srv_now();
    memset(info, 0, sizeof *info);
    pthread_mutex_lock(&t->mu);
    info->state = j->state;
    info->step = j->step;
    info->steps = j->steps;
    if (j->state == JOB_QUEUED) {
        int pos = 1;
        for (job *q = t->q_head; q && q != j; q = q->qnext)
            pos++;
        info->queue_position = pos;
    }
    double start = j->t_start ? j->t_start : now, end = j->t_end ? j->t_end : now;
    if (j->state == JOB_DONE && j->t_denoised) { /* (S) fields: the job has finished */
        end = j->t_denoised;
        info->decode_ms = j->decode_s * 1e3;
        info->encode_ms = j->encode_s * 1e3;
    }
    info->queue_ms = (start - j->t_submit) * 1e3;
    info->compute_ms = j->state == JOB_QUEUED ? 0 : (end - start) * 1e3;
    info->total_ms = ((j->t_end ? j->t_end : now) - j->t_submit) * 1e3;
    info->err_status = j->err_status;
    snprintf(info->err, sizeof info->err, "%s", j->err);
    pthread_mutex_unlock(&t->mu);
}

double job_step_ms(job_table *t, job *j, int k)
{
    double ms = 0;
    pthread_mutex_lock(&t->mu);
    if (j->step_ms && k >= 0 && k < j->step)
        ms = j->step_ms[k];
    pthread_mutex_unlock(&t->mu);
    return ms;
}

void job_counts(job_table *t, int *queued, int *running)
{
    pthread_mutex_lock(&t->mu);
    *queued = t->q_len;
    *running = t->running;
    pthread_mutex_unlock(&t->mu);
}

/* Steps until the first running job (of client, if given) ends; -1 if none. */
static int first_end_steps_locked(job_table *t, const char *client)
{
    int best = -1;
    for (job *j = t->t_head; j; j = j->tnext)
        if (j->state == JOB_RUNNING && (!client || !strcmp(j->client, client)) &&
            (best < 0 || j->steps - j->step < best))
            best = j->steps - j->step;
    return best;
}

int job_retry_after(job_table *t, const char *client)
{
    pthread_mutex_lock(&t->mu);
    double step_s = t->step_s > 0 ? t->step_s : 0.05;
    int steps = first_end_steps_locked(t, client);
    if (steps < 0 && client) {
        /* all the client's jobs wait: the batch ahead ends, then the queued
         * work up to its first job runs, max_rows rows a step */
        double rowsteps = 0;
        for (job *q = t->q_head; q; q = q->qnext) {
            rowsteps += (double)q->rows * q->steps;
            if (!strcmp(q->client, client))
                break;
        }
        int run = first_end_steps_locked(t, NULL);
        steps = (run > 0 ? run : 0) + (int)ceil(rowsteps / t->cfg->max_rows);
    }
    int limit = t->cfg->request_timeout_s;
    pthread_mutex_unlock(&t->mu);
    double s = ceil((steps > 0 ? steps : 1) * step_s);
    return s < 1 ? 1 : s > limit ? limit : (int)s;
}

void job_table_close(job_table *t)
{
    pthread_mutex_lock(&t->mu);
    t->accepting = 0;
    pthread_mutex_unlock(&t->mu);
}

void job_cancel_all(job_table *t)
{
    double now = srv_now();
    pthread_mutex_lock(&t->mu);
    while (t->q_head) {
        job *j = t->q_head;
        dequeue_locked(t, j);
        end_locked(t, j, JOB_FAILED, 503, "the server is shutting down", now);
    }
    for (job *j = t->t_head; j; j = j->tnext)
        if (j->state == JOB_RUNNING)
            j->cancel = 2; /* a shutdown, not a client's DELETE */
    pthread_mutex_unlock(&t->mu);
}

int job_table_idle(job_table *t)
{
    pthread_mutex_lock(&t->mu);
    int idle = t->q_len == 0 && t->running == 0;
    pthread_mutex_unlock(&t->mu);
    return idle;
}

void job_table_quit(job_table *t)
{
    pthread_mutex_lock(&t->mu);
    t->quit = 1;
    pthread_cond_broadcast(&t->work);
    pthread_mutex_unlock(&t->mu);
}

/* ---- scheduler side ------------------------------------------------------ */

int job_wait_work(job_table *t)
{
    pthread_mutex_lock(&t->mu);
    while (!t->q_head && !t->quit)
        pthread_cond_wait(&t->work, &t->mu);
    int go = t->q_head != NULL || !t->quit;
    pthread_mutex_unlock(&t->mu);
    return go;
}

job *job_admit(job_table *t, int rows_free)
{
    double now = srv_now();
    job *j = NULL;
    pthread_mutex_lock(&t->mu);
    int moved = 0;
    while (t->q_head && t->q_head->deadline <= now) {
        job *late = t->q_head;
        dequeue_locked(t, late);
        end_locked(t, late, JOB_FAILED, 504, "timed out in the queue (request_timeout_s)", now);
        moved = 1;
    }
    if (t->q_head && t->q_head->rows <= rows_free) {
        j = t->q_head;
        dequeue_locked(t, j);
        j->refs++;
        j->state = JOB_RUNNING; /* from here a DELETE sets j->cancel */
        j->t_start = now;
        t->running++;
        moved = 1;
    }
    if (moved)
        notify_queue_locked(t);
    pthread_mutex_unlock(&t->mu);
    return j;
}

int job_start(job_table *t, job *j, dit_sampler *s)
{
    int steps = dit_sampler_num_evals(s); /* progress counts forwards */
    float *ms = calloc((size_t)steps, sizeof *ms);
    uint64_t *ex = calloc((size_t)t->L * (size_t)t->E, sizeof *ex);
    pthread_mutex_lock(&t->mu);
    j->sampler = s;
    if (!ms || !ex) {
        free(ms);
        free(ex);
        end_locked(t, j, JOB_FAILED, 503, "out of memory starting the job", srv_now());
        pthread_mutex_unlock(&t->mu);
        return -1;
    }
    j->step_ms = ms;
    j->experts = ex;
    j->steps = steps;
    notify_locked(j);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

void job_steps_done(job_table *t, job **js, int n, double now, double step_s)
{
    pthread_mutex_lock(&t->mu);
    t->step_s = t->step_s > 0 ? 0.9 * t->step_s + 0.1 * step_s : step_s;
    for (int i = 0; i < n; i++) {
        job *j = js[i];
        if (j->step < j->steps)
            j->step_ms[j->step] = (float)((now - j->t_start) * 1e3);
        j->step++;
        notify_locked(j);
    }
    pthread_mutex_unlock(&t->mu);
}

int job_should_stop(job_table *t, job *j, double now)
{
    pthread_mutex_lock(&t->mu);
    int stop = j->cancel || now >= j->deadline;
    pthread_mutex_unlock(&t->mu);
    return stop;
}

void job_finish(job_table *t, job *j, job_state state, int status, const char *msg, double now)
{
    pthread_mutex_lock(&t->mu);
    if (state == JOB_RUNNING) { /* the stop job_should_stop saw */
        if (j->cancel == 1) {
            state = JOB_CANCELLED, status = 0, msg = "cancelled while running";
        } else if (j->cancel == 2) {
            state = JOB_FAILED, status = 503, msg = "cancelled: the server is shutting down";
        } else {
            state = JOB_FAILED, status = 504, msg = "timed out while running (request_timeout_s)";
        }
    }
    end_locked(t, j, state, status, msg, now);
    evict_locked(t, now);
    pthread_mutex_unlock(&t->mu);
}
