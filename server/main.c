/* main.c: ditmoe-server, start and shutdown.
 *
 * `ditmoe-server --healthcheck [URL]` only checks a running server
 * (healthcheck.c) and exits.
 *
 * Start: settings (config.c), the instance id (the job id prefix) and the
 * web root, then the HTTP front end at once (so /health answers and /ready
 * says "loading"), then the model with every expert resident, the job
 * table, the scheduler thread, and readiness. Engine threads x BLAS
 * threads are kept within the cores.
 *
 * Shutdown on SIGTERM or SIGINT: stop accepting connections and jobs, let
 * queued and running jobs finish for up to drain_timeout_s, cancel what is
 * left (waiting clients get 503), answer in-flight requests, exit 0. A
 * second signal during the drain ends it at once: the remaining jobs are
 * cancelled, their clients still answered 503, exit 0. The signals are
 * caught by a handler that writes the signal's number into a pipe, which
 * this thread reads; blocking them and calling sigwait is not enough,
 * because a thread made before main() (OpenBLAS's pool, at load) does not
 * have them blocked, and the default action there would kill the process.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "batcher.h"
#include "healthcheck.h"
#include "http.h"
#include "jobs.h"
#include "metrics.h"
#include "paths.h"
#include "srv.h"
#include "stats.h"

/* The model to load: the configured path; a bundled model named by
 * model = NAME (models/NAME); else the bundled models/fashion-mnist
 * (paths.c: the source tree for a build-tree binary, else the install
 * data dir). Returns 0, or -1 with err. */
static int resolve_model(const srv_config *c, char *out, size_t n, char *err, size_t errlen)
{
    char tried[2048], rel[320];
    if (c->model[0] && !srv_is_model_name(c->model)) {
        snprintf(out, n, "%s", c->model);
        return 0;
    }
    snprintf(rel, sizeof rel, "models/%.300s", c->model[0] ? c->model : "fashion-mnist");
    if (srv_find_data(rel, "config.json", out, n, tried, sizeof tried) == 0)
        return 0;
    if (c->model[0])
        snprintf(err, errlen, "model \"%s\" is no path and no bundled model: %s is in none "
                 "of: %s", c->model, rel, tried);
    else
        snprintf(err, errlen, "no model given (--model, DITMOE_MODEL) and the bundled "
                 "models/fashion-mnist is in none of: %s", tried);
    return -1;
}

/* The web root: the configured one, else the bundled web/ (as the model).
 * None found is no error: the API works without the demo page. */
static void resolve_web_root(srv *s)
{
    char tried[2048];
    struct stat st;
    if (s->cfg->web_root[0]) {
        snprintf(s->web_root, sizeof s->web_root, "%s", s->cfg->web_root);
        if (stat(s->web_root, &st) || !S_ISDIR(st.st_mode))
            fprintf(stderr, "ditmoe-server: web_root %s is not a folder: / will be 404\n",
                    s->web_root);
    } else if (srv_find_data("web", "index.html", s->web_root, sizeof s->web_root, tried,
                             sizeof tried)) {
        fprintf(stderr, "ditmoe-server: no web root (web_root unset and no web/index.html in "
                "%s): / will be 404\n", tried);
    }
}

/* instance_id, else 8 random hex digits: the prefix of every job id. */
static void resolve_instance(srv *s)
{
    if (s->cfg->instance_id[0]) {
        snprintf(s->instance, sizeof s->instance, "%s", s->cfg->instance_id);
        return;
    }
    uint32_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
        v = (uint32_t)(srv_now() * 1e9) ^ (uint32_t)getpid();
    snprintf(s->instance, sizeof s->instance, "%08x", v);
}

/* Engine threads x BLAS threads <= cores (auto when 0). */
static void size_threads(srv *s)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1)
        cores = 1;
    int nt = s->cfg->threads ? s->cfg->threads : (int)cores;
    int bt = s->cfg->blas_threads ? s->cfg->blas_threads : (int)(cores / nt > 0 ? cores / nt : 1);
    if ((long)nt * bt > cores && bt > 1) {
        int fit = (int)(cores / nt > 0 ? cores / nt : 1);
        fprintf(stderr, "ditmoe-server: threads %d x blas_threads %d > %ld cores: "
                "using blas_threads %d\n", nt, bt, cores, fit);
        bt = fit;
    }
    s->n_threads = nt;
    s->blas_threads = bt;
    dit_set_blas_threads(bt);
}

/* The write end of the signal pipe: the one global, as a handler can
 * reach nothing else. Set once before the handlers are installed. */
static int sig_pipe_w = -1;

static void on_signal(int sig)
{
    int e = errno;
    unsigned char b = (unsigned char)sig;
    (void)!write(sig_pipe_w, &b, 1);
    errno = e;
}

/* Installs the handlers; *rd is the pipe's read end. Returns 0 or -1. */
static int catch_signals(int *rd)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK))
        return -1;
    sig_pipe_w = p[1];
    *rd = p[0];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigfillset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    return sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL) ? -1 : 0;
}

/* Waits up to ms (-1: for ever) for a signal; returns it, or 0. */
static int next_signal(int rd, int ms)
{
    struct pollfd pfd = {.fd = rd, .events = POLLIN};
    unsigned char b;
    while (poll(&pfd, 1, ms) < 0 && errno == EINTR)
        ;
    return read(rd, &b, 1) == 1 ? b : 0;
}

static const char *signal_name(int sig)
{
    return sig == SIGINT ? "SIGINT" : "SIGTERM";
}

static void on_job_end(void *arg, const job *j)
{
    srv *s = arg;
    srv_metrics_job(s->metrics, job_state_name(j->state), j->t_end - j->t_submit, j->req.num_images);
}

static int load(srv *s, char *err, size_t errlen)
{
    char msg[512];
    const srv_config *c = s->cfg;
    double t0 = srv_now();
    if (resolve_model(c, s->model_path, sizeof s->model_path, err, errlen))
        return -1;
    dit_model_settings ms;
    dit_model_settings_default(&ms);
    ms.pack_weights = c->pack_weights;
    ms.compute = dit_compute_parse(c->compute); /* checked by srv_config_check */
    int rc = dit_model_load(&s->model, s->model_path, &ms, msg, sizeof msg);
    if (rc) {
        snprintf(err, errlen, "model %s: %s", s->model_path, msg[0] ? msg : dit_strerror(rc));
        return -1;
    }
    s->mc = dit_model_config(s->model);
    dit_model_image_size(s->model, &s->img_w, &s->img_h, &s->img_ch);
    if (s->img_w < 1 || s->img_h < 1 || (s->img_ch != 1 && s->img_ch != 3)) {
        /* the CLI's words (ditmoe generate): every request would run all its
         * steps and then fail, while /ready said 200 */
        snprintf(err, errlen, "%s: a latent model (%d-channel samples) whose VAE decoder is not "
                 "available (vae: %s); the server makes images only: give the model a \"vae\" "
                 "in config.json, or put the VAE in a \"vae\" folder beside the checkpoint",
                 s->model_path, s->mc->in_channels, s->mc->vae_dir ? s->mc->vae_dir : "none");
        return -1;
    }
    if (srv_stats_new(&s->stats, s->mc->depth, s->mc->num_experts, s->mc->num_classes, c->max_rows,
                      c->stats_window_s) ||
        job_table_new(&s->jobs, c, s->instance, s->mc->depth, s->mc->num_experts)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->jobs->on_end = on_job_end;
    s->jobs->on_end_arg = s;
    if (batcher_new(&s->batcher, s, err, errlen))
        return -1;
    if (batcher_start(s->batcher)) {
        snprintf(err, errlen, "cannot start the scheduler thread");
        return -1;
    }
    dit_model_info info;
    dit_model_get_info(s->model, &info);
    fprintf(stderr, "ditmoe-server: instance %s; web root %s\n", s->instance,
            s->web_root[0] ? s->web_root : "(none)");
    fprintf(stderr, "ditmoe-server: model %s: %llu parameters (%llu active per token), %.1f MB "
            "of weights%s, loaded in %.2f s; kernel %s; %d threads x %d BLAS threads, %d rows "
            "per step, batching %s\n", s->model_path, (unsigned long long)info.params_total,
            (unsigned long long)info.params_active, info.weight_bytes / 1e6,
            info.packed ? " (packed)" : "", srv_now() - t0, info.kernel ? info.kernel : "?",
            s->n_threads, s->blas_threads, c->max_rows, c->batching ? "on" : "off");
    if (dit_blas_warning(msg, sizeof msg))
        fprintf(stderr, "ditmoe-server: warning: %s\n", msg);
    return 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Drains the job table: finish for up to drain_s (or until another
 * signal comes on sig_rd), then cancel the rest. */
static void drain(srv *s, double drain_s, int sig_rd)
{
    job_table_close(s->jobs);
    double end = srv_now() + drain_s;
    int sig = 0;
    while (!job_table_idle(s->jobs) && srv_now() < end && !sig)
        sig = next_signal(sig_rd, 20);
    if (!job_table_idle(s->jobs)) {
        if (sig)
            fprintf(stderr, "ditmoe-server: second %s: cancelling the remaining jobs now\n",
                    signal_name(sig));
        else
            fprintf(stderr, "ditmoe-server: drain time over: cancelling the remaining jobs\n");
        job_cancel_all(s->jobs);
    }
    end = srv_now() + 60; /* a running step must end; bounded all the same */
    while (!job_table_idle(s->jobs) && srv_now() < end)
        sleep_ms(20);
}

static void teardown(srv *s)
{
    if (s->jobs) {
        job_table_quit(s->jobs);
        batcher_join(s->batcher);
    }
    batcher_free(s->batcher);
    job_table_free(s->jobs);
    srv_stats_free(s->stats);
    srv_metrics_free(s->metrics);
    dit_model_free(s->model);
}

int main(int argc, char **argv)
{
    static srv_config cfg;
    char err[3000];
    const char *hc_url = NULL;
    int hc = srv_healthcheck_arg(&argc, argv, &hc_url);
    int rc = srv_config_from_args(&cfg, argc, argv, stdout, err, sizeof err);
    if (rc) {
        if (rc < 0)
            fprintf(stderr, "ditmoe-server: %s\n", err);
        /* a health check exits 0 or 1 only (Docker reserves 2) */
        return rc < 0 ? (hc ? 1 : 2) : 0;
    }
    if (hc)
        return srv_healthcheck(&cfg, hc_url, stderr);
    int sig_rd = -1;
    if (catch_signals(&sig_rd)) {
        fprintf(stderr, "ditmoe-server: cannot catch SIGTERM/SIGINT: %s\n", strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    static srv s;
    s.cfg = &cfg;
    s.t_start = srv_now();
    resolve_instance(&s);
    resolve_web_root(&s);
    http_server *h = NULL;
    if (srv_metrics_new(&s.metrics) || http_start(&h, &s, err, sizeof err)) {
        fprintf(stderr, "ditmoe-server: %s\n", s.metrics ? err : "out of memory");
        srv_metrics_free(s.metrics);
        return 1;
    }
    printf("ditmoe-server: listening on http://%s%s%s:%d\n", strchr(cfg.listen, ':') ? "[" : "",
           cfg.listen, strchr(cfg.listen, ':') ? "]" : "", http_port(h));
    fflush(stdout);
    size_threads(&s);
    /* From here this thread makes the scheduler and the engine's workers,
     * which inherit its nice value (per thread on Linux); the HTTP threads,
     * already running, keep theirs and so win the CPU when a request comes. */
    if (cfg.compute_nice && setpriority(PRIO_PROCESS, 0, cfg.compute_nice))
        fprintf(stderr, "ditmoe-server: compute_nice %d: %s\n", cfg.compute_nice, strerror(errno));
    if (load(&s, err, sizeof err)) {
        fprintf(stderr, "ditmoe-server: %s\n", err);
        http_stop(h, 0);
        teardown(&s);
        return 1;
    }
    atomic_store(&s.ready, 1);
    fprintf(stderr, "ditmoe-server: ready\n");

    int sig = 0;
    while (!sig)
        sig = next_signal(sig_rd, -1);
    atomic_store(&s.stopping, 1);
    fprintf(stderr, "ditmoe-server: %s: stopping (drain up to %d s; a second signal cancels "
            "the remaining jobs at once)\n", signal_name(sig), cfg.drain_timeout_s);
    http_quiesce(h);
    drain(&s, cfg.drain_timeout_s, sig_rd);
    http_stop(h, 2.0);
    teardown(&s);
    fprintf(stderr, "ditmoe-server: stopped\n");
    return 0;
}
