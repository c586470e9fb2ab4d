/* cmd_routing.c: `ditmoe routing`: which experts each class and each noise
 * level uses, for a checkpoint, without the server.
 *
 * Runs N images of every class through the sampler with the model's
 * default settings (sampler, steps, spacing, guidance and its interval)
 * but no step cache (an evaluation that reuses the blocks routes no
 * tokens, which would leave holes in the table by noise level), stepping
 * as dit_generate does: the rows of several samplers share each forward, and after each
 * forward the routing counts of its rows (dit_ctx_routing) are added to
 * one table by class and noise level, exactly as the server's scheduler
 * adds them (analytics/routing_info.h). Prints the report the server gives
 * at GET /stats/routing: a table per layer, the per-class 90% expert sets,
 * or with --json the same JSON. The time spent counting is reported next
 * to the forward time, so the cost of the statistics is measured on every
 * run (docs/routing.md).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli.h"
#include "routing_info.h"

static const char routing_usage[] =
    "usage: ditmoe routing [--model DIR] --images N [--json] [--seed S] [--batch B]\n"
    "                      [--threads T] [--no-pack]\n"
    "  --model DIR   (default: the embedded model)\n"
    "  --images N    images of every class, 1..1000000, with the model's default sampling\n"
    "  --json        the report as JSON (a period of GET /stats/routing, with the run)\n"
    "  --seed S      seed of the first sampler; the next ones count up (default 0)\n"
    "  --batch B     most rows per forward, 2..1024 (default 32)\n"
    "  --threads T   engine threads (default 1)\n"
    "  --no-pack     keep weights as stored and use BLAS (default: packed kernel)\n";

/* One run's buffers, sized once for `batch` rows. */
typedef struct rt_run {
    const dit_model *m;
    dit_ctx *ctx;
    rt_counts *counts;
    int batch, rows_per_image, images, num_classes;
    uint64_t seed;
    float *x, *t, *out, *noise;     /* (B, C, H, W), (B), (B, Cout, H, W), (B) */
    int32_t *y;                     /* (B) */
    dit_sampler **smp;              /* (B) the samplers of one group */
    double forward_s, count_s;
    long forwards;
} rt_run;

static int run_init(rt_run *r, int threads)
{
    const dit_config *c = dit_model_config(r->m);
    size_t hw = (size_t)c->input_size * c->input_size, b = (size_t)r->batch;
    dit_ctx_settings set;
    dit_ctx_settings_default(&set);
    set.max_rows = r->batch;
    set.n_threads = threads;
    int rc = dit_ctx_new(&r->ctx, r->m, &set);
    if (rc)
        return cli_fail("cannot make a context for %d rows: %s", r->batch, dit_strerror(rc));
    if (rt_counts_new(&r->counts, c->depth, c->num_experts, c->num_classes))
        return cli_fail("out of memory for the routing counts");
    r->x = malloc(b * c->in_channels * hw * sizeof *r->x);
    r->t = malloc(b * sizeof *r->t);
    r->out = malloc(b * c->out_channels * hw * sizeof *r->out);
    r->noise = malloc(b * sizeof *r->noise);
    r->y = malloc(b * sizeof *r->y);
    r->smp = calloc(b, sizeof *r->smp);
    if (!r->x || !r->t || !r->out || !r->noise || !r->y || !r->smp)
        return cli_fail("out of memory for a batch of %d rows", r->batch);
    return 0;
}

static void run_free(rt_run *r)
{
    dit_ctx_free(r->ctx);
    rt_counts_free(r->counts);
    free(r->x), free(r->t), free(r->out), free(r->noise), free(r->y), free(r->smp);
}

/* Steps the n samplers of one group to the end (they share the defaults,
 * so they finish together), counting each forward's routing. */
static int run_group(rt_run *r, int n)
{
    const dit_config *c = dit_model_config(r->m);
    size_t in = (size_t)c->in_channels * c->input_size * c->input_size;
    size_t out = (size_t)c->out_channels * c->input_size * c->input_size;
    while (!dit_sampler_done(r->smp[0])) {
        int rows = 0;
        for (int i = 0; i < n; i++) {
            int k = dit_sampler_rows(r->smp[i]);
            float level = (float)dit_sampler_noise_level(r->smp[i]);
            dit_sampler_inputs(r->smp[i], r->x + rows * in, r->t + rows, r->y + rows);
            for (int j = 0; j < k; j++)
                r->noise[rows + j] = level;
            rows += k;
        }
        double t0 = cli_now();
        int rc = dit_forward(r->ctx, rows, r->x, r->t, r->y, r->out);
        double t1 = cli_now();
        if (rc)
            return cli_fail("forward failed: %s", dit_strerror(rc));
        rt_counts_add(r->counts, rows, dit_ctx_routing(r->ctx), r->y, r->noise);
        r->count_s += cli_now() - t1;
        r->forward_s += t1 - t0;
        r->forwards++;
        rows = 0;
        for (int i = 0; i < n; i++) { /* rows before the update: the next may differ */
            int k = dit_sampler_rows(r->smp[i]);
            dit_sampler_update(r->smp[i], r->out + rows * out);
            rows += k;
        }
    }
    return 0;
}

/* Makes a sampler of `images` images of class k with the next seed. */
static int run_sampler(rt_run *r, int k, int images, dit_sampler **s)
{
    dit_sample_params p;
    char err[512] = "";
    dit_sample_params_default(r->m, &p);
    p.class_label = k;
    p.num_images = images;
    p.seed = r->seed++;
    p.cache.mode = DIT_CACHE_OFF; /* every evaluation routes its tokens */
    int rc = dit_sampler_new(s, r->m, &p, err, sizeof err);
    return rc ? cli_fail("%s", err[0] ? err : dit_strerror(rc)) : 0;
}

/* Every class, `images` each: samplers of as many images as fit, grouped
 * so that each group's rows fit one forward. */
static int run_all(rt_run *r)
{
    int k = 0, left = r->images, rc = 0;
    int tty = isatty(STDERR_FILENO);
    while (k < r->num_classes && !rc) {
        int n = 0, rows = 0;
        while (k < r->num_classes && rows + r->rows_per_image <= r->batch && !rc) {
            int room = (r->batch - rows) / r->rows_per_image;
            int take = left < room ? left : room;
            rc = run_sampler(r, k, take, &r->smp[n]);
            rows += rc ? 0 : dit_sampler_max_rows(r->smp[n++]);
            if ((left -= take) == 0)
                k++, left = r->images;
        }
        if (!rc)
            rc = run_group(r, n);
        for (int i = 0; i < n; i++)
            dit_sampler_free(r->smp[i]), r->smp[i] = NULL;
        if (tty)
            fprintf(stderr, "\rditmoe routing: %d of %d classes", k, r->num_classes);
    }
    if (tty)
        fputc('\n', stderr);
    return rc;
}

/* ---- the report ------------------------------------------------------------ */

/* sizes (K + 1, L): the size of each class row's 90% expert set per layer
 * (row K: the unconditional rows). Returns 0 or -1 (out of memory). */
static int cover_sizes(const rt_counts *t, int *sizes)
{
    int *set = malloc((size_t)t->E * sizeof *set); /* (E) */
    if (!set)
        return -1;
    for (int k = 0; k <= t->K; k++)
        for (int l = 0; l < t->L; l++)
            sizes[k * t->L + l] = rt_cover_set(t->by_class + ((size_t)k * t->L + l) * t->E, t->E,
                                               RT_COVER, set);
    free(set);
    return 0;
}

/* One line per layer: H(E), both informations and their shares, and the
 * mean size of the classes' 90% sets. Returns the layer where the class
 * tells most about the expert. */
static int print_layers(const rt_counts *t, const int *sizes)
{
    int best = 0;
    double best_mi = -1;
    printf("\nlayer  H(E) bits  I(E; class)      I(E; noise)      90%% set per class\n"
           "       of %4.2f    bits  of H(E)    bits  of H(E)    mean of %d experts\n",
           log2((double)t->E), t->E);
    for (int l = 0; l < t->L; l++) {
        rt_info cls, noise;
        double sum = 0;
        int n = 0;
        rt_layer_info(t, l, &cls, &noise, NULL);
        for (int k = 0; k < t->K; k++)
            if (sizes[k * t->L + l])
                sum += sizes[k * t->L + l], n++;
        printf("%-6d %-10.3f %5.3f %6.1f%%    %5.3f %6.1f%%    %.1f\n", l, cls.h_expert, cls.mi,
               100 * cls.share, noise.mi, 100 * noise.share, n ? sum / n : 0.0);
        if (cls.mi > best_mi)
            best = l, best_mi = cls.mi;
    }
    return best;
}

/* Per class: the experts, over all layers, a cache covering 90% of the
 * class's tokens in every layer must hold, against all of them. */
static void print_cache(const rt_counts *t, const dit_model *m, const int *sizes)
{
    int all = t->L * t->E, n = 0;
    double sum = 0;
    printf("\nper-class expert cache: experts holding 90%% of the class's tokens in each layer\n");
    for (int k = 0; k <= t->K; k++) {
        int held = 0;
        for (int l = 0; l < t->L; l++)
            held += sizes[k * t->L + l];
        if (!held)
            continue;
        const char *name = k == t->K ? "(unconditional rows)" : dit_model_class_name(m, k);
        char label[16] = "";
        if (k < t->K)
            snprintf(label, sizeof label, "%d", k);
        printf("  %4s %-22s %4d of %d\n", label, name ? name : "", held, all);
        if (k < t->K)
            sum += held, n++;
    }
    if (n)
        printf("  mean over the %d classes: %.1f of %d experts (%.0f%%)\n", n, sum / n, all,
               100 * sum / n / all);
}

static void print_text(const rt_run *r, const char *name, const int *sizes)
{
    const dit_config *c = dit_model_config(r->m);
    const rt_counts *t = r->counts;
    dit_sample_params p;
    rt_info cls, noise;
    dit_sample_params_default(r->m, &p);
    printf("model       %s: %d MoE layers x %d experts (top-%d), %d classes\n", name, c->depth,
           c->num_experts, c->num_experts_per_tok, c->num_classes);
    printf("sampling    %s, %d steps, %s spacing, guidance %g at noise levels %g..%g (the "
           "model's defaults, no step cache); %d images per class\n",
           dit_sampler_name(p.sampler), p.steps, dit_spacing_name(p.spacing), p.cfg_scale,
           p.cfg_interval[0], p.cfg_interval[1], r->images);
    printf("counted     %llu routing assignments per layer (tokens x top-%d) from conditional "
           "rows, %llu from unconditional rows\n",
           (unsigned long long)rt_counts_layer_tokens(t, 0, 0), c->num_experts_per_tok,
           (unsigned long long)rt_counts_layer_tokens(t, 0, 1));
    int best = print_layers(t, sizes);
    print_cache(t, r->m, sizes);
    rt_layer_info(t, best, &cls, &noise, NULL);
    printf("\nIn layer %d, where it tells most, knowing the class tells %.2f of the expert "
           "choice's %.2f bits (%.1f%%); knowing the noise level tells %.2f bits (%.1f%%).\n",
           best, cls.mi, cls.h_expert, 100 * cls.share, noise.mi, 100 * noise.share);
    printf("cost        counting %.3f ms for %ld forwards of %.3f s: %.2g%% of the forward time\n",
           1e3 * r->count_s, r->forwards, r->forward_s, 100 * r->count_s / r->forward_s);
}

static int print_json(const rt_run *r, const char *name)
{
    dit_sample_params p;
    dit_sample_params_default(r->m, &p);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", name);
    cJSON *smp = cJSON_AddObjectToObject(o, "sampling");
    cJSON_AddStringToObject(smp, "sampler", dit_sampler_name(p.sampler));
    cJSON_AddNumberToObject(smp, "steps", p.steps);
    cJSON_AddNumberToObject(smp, "cfg_scale", p.cfg_scale);
    cJSON_AddStringToObject(smp, "spacing", dit_spacing_name(p.spacing));
    cJSON *iv = cJSON_AddArrayToObject(smp, "cfg_interval");
    cJSON_AddItemToArray(iv, cJSON_CreateNumber(p.cfg_interval[0]));
    cJSON_AddItemToArray(iv, cJSON_CreateNumber(p.cfg_interval[1]));
    cJSON_AddStringToObject(smp, "cache", "off");
    cJSON_AddNumberToObject(o, "images_per_class", r->images);
    cJSON *cost = cJSON_AddObjectToObject(o, "cost");
    cJSON_AddNumberToObject(cost, "forwards", (double)r->forwards);
    cJSON_AddNumberToObject(cost, "forward_s", r->forward_s);
    cJSON_AddNumberToObject(cost, "counting_s", r->count_s);
    cJSON_AddItemToObject(o, "routing", rt_report_json(r->counts, r->m));
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    if (!text)
        return cli_fail("out of memory printing the report");
    printf("%s\n", text);
    free(text);
    return 0;
}

static int routing_run(rt_run *r, const char *name, int threads, int json)
{
    int rc = run_init(r, threads);
    int *sizes = NULL;
    if (!rc && (rc = run_sampler(r, 0, 1, &r->smp[0])) == 0) {
        /* the most rows: a guidance interval leaves the null rows out of some */
        r->rows_per_image = dit_sampler_max_rows(r->smp[0]);
        r->seed--; /* the probe's seed is used again by the first real sampler */
        dit_sampler_free(r->smp[0]);
        r->smp[0] = NULL;
        if (r->rows_per_image > r->batch)
            rc = cli_fail("--batch %d: one image takes %d rows", r->batch, r->rows_per_image);
    }
    if (!rc)
        rc = run_all(r);
    if (!rc && json)
        rc = print_json(r, name);
    else if (!rc) {
        sizes = malloc(((size_t)r->counts->K + 1) * r->counts->L * sizeof *sizes);
        if (!sizes || cover_sizes(r->counts, sizes))
            rc = cli_fail("out of memory for the report");
        else
            print_text(r, name, sizes);
    }
    free(sizes);
    run_free(r);
    return rc;
}

int cmd_routing(int argc, char **argv)
{
    const char *path = NULL, *images_s = NULL, *seed_s = "0", *batch_s = "32", *threads_s = "1";
    const char *name = NULL;
    int json = 0, no_pack = 0, threads;
    const cli_opt opts[] = {
        { "model", &path, NULL }, { "images", &images_s, NULL }, { "json", NULL, &json },
        { "seed", &seed_s, NULL }, { "batch", &batch_s, NULL }, { "threads", &threads_s, NULL },
        { "no-pack", NULL, &no_pack },
    };
    rt_run r = { 0 };
    dit_model *m = NULL;
    int rc = cli_parse(argc, argv, opts, 7, routing_usage);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (!images_s) {
        cli_fail("routing needs --images N (images of every class)");
        return CLI_EUSAGE;
    }
    if ((rc = cli_int("images", images_s, 1, 1000000, &r.images)) ||
        (rc = cli_u64("seed", seed_s, &r.seed)) ||
        (rc = cli_int("batch", batch_s, 2, 1024, &r.batch)) ||
        (rc = cli_int("threads", threads_s, 1, 256, &threads)))
        return rc;
    dit_set_blas_threads(1); /* the engine runs single-threaded sgemms on its pool */
    if ((rc = cli_load_model(path, no_pack, NULL, &m, &name)))
        return rc;
    r.m = m;
    r.num_classes = dit_model_config(m)->num_classes;
    rc = routing_run(&r, name, threads, json);
    dit_model_free(m);
    return rc;
}
