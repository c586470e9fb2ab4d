/* report.c: the JSON routing report of one count table.
 *
 * The same document is a period of GET /stats/routing and the output of
 * `ditmoe routing --json`; docs/routing.md describes its fields. Classes
 * never seen are left out of "classes" (and of the class-by-expert rows),
 * so a report after three requests lists three classes. A measure with no
 * tokens behind it is null, not 0: "no data" is not "no information".
 */
#include "routing_info.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>

static cJSON *counts_row(const uint64_t *c, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)c[i]));
    return a;
}

static void add_measure(cJSON *o, const char *name, double v, int valid)
{
    if (valid)
        cJSON_AddNumberToObject(o, name, v);
    else
        cJSON_AddNullToObject(o, name);
}

/* Tokens of class row k (K: unconditional) at layer l. */
static uint64_t class_tokens(const rt_counts *c, int k, int l)
{
    const uint64_t *p = c->by_class + ((size_t)k * c->L + (size_t)l) * c->E;
    uint64_t sum = 0;
    for (int e = 0; e < c->E; e++)
        sum += p[e];
    return sum;
}

/* The noise table of layer l: (RT_BUCKETS, E) rows, stride L * E. */
static const uint64_t *noise_table(const rt_counts *c, int l, int uncond)
{
    return c->by_noise + (size_t)uncond * RT_BUCKETS * c->L * c->E + (size_t)l * c->E;
}

static cJSON *noise_rows(const rt_counts *c, int l, int uncond)
{
    const uint64_t *p = noise_table(c, l, uncond);
    cJSON *a = cJSON_CreateArray();
    for (int b = 0; b < RT_BUCKETS; b++)
        cJSON_AddItemToArray(a, counts_row(p + (size_t)b * c->L * c->E, c->E));
    return a;
}

void rt_layer_info(const rt_counts *c, int l, rt_info *cls, rt_info *noise, rt_info *uncond)
{
    size_t le = (size_t)c->L * c->E;
    if (cls)
        rt_mutual_info(c->by_class + (size_t)l * c->E, c->K, le, c->E, cls);
    if (noise)
        rt_mutual_info(noise_table(c, l, 0), RT_BUCKETS, le, c->E, noise);
    if (uncond)
        rt_mutual_info(noise_table(c, l, 1), RT_BUCKETS, le, c->E, uncond);
}

/* The unconditional rows of layer l: their entropy and I(E; noise). */
static cJSON *layer_uncond(const rt_counts *c, int l)
{
    rt_info noise;
    size_t le = (size_t)c->L * c->E;
    const uint64_t *row = c->by_class + (size_t)c->K * le + (size_t)l * c->E;
    rt_layer_info(c, l, NULL, NULL, &noise);
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "tokens", noise.tokens);
    add_measure(u, "entropy_bits", noise.h_expert, noise.tokens > 0);
    add_measure(u, "mi_noise_bits", noise.mi, noise.tokens > 0);
    add_measure(u, "noise_share", noise.share, noise.tokens > 0);
    cJSON_AddItemToObject(u, "counts", counts_row(row, c->E));
    cJSON_AddItemToObject(u, "noise_counts", noise_rows(c, l, 1));
    return u;
}

/* Layer l: measures of the conditional rows, their class-by-expert rows
 * (the seen classes, in order) and noise-by-expert rows. */
static cJSON *layer_json(const rt_counts *c, int l)
{
    rt_info cls, noise;
    size_t le = (size_t)c->L * c->E;
    const uint64_t *by_class = c->by_class + (size_t)l * c->E;
    rt_layer_info(c, l, &cls, &noise, NULL);
    cJSON *o = cJSON_CreateObject(), *rows = cJSON_CreateArray();
    int ok = cls.tokens > 0;
    cJSON_AddNumberToObject(o, "layer", l);
    cJSON_AddNumberToObject(o, "tokens", cls.tokens);
    add_measure(o, "entropy_bits", cls.h_expert, ok);
    add_measure(o, "mi_class_bits", cls.mi, ok);
    add_measure(o, "class_share", cls.share, ok);
    add_measure(o, "mi_noise_bits", noise.mi, ok);
    add_measure(o, "noise_share", noise.share, ok);
    for (int k = 0; k < c->K; k++)
        if (class_tokens(c, k, 0))
            cJSON_AddItemToArray(rows, counts_row(by_class + (size_t)k * le, c->E));
    cJSON_AddItemToObject(o, "class_counts", rows);
    cJSON_AddItemToObject(o, "noise_counts", noise_rows(c, l, 0));
    cJSON_AddItemToObject(o, "unconditional", layer_uncond(c, l));
    return o;
}

/* Class row k's 90% expert sets, one per layer; *held: their total size.
 * scratch (E) ints. */
static cJSON *class_json(const rt_counts *c, const dit_model *m, int k, int *scratch, int *held)
{
    cJSON *o = cJSON_CreateObject(), *sets = cJSON_CreateArray(), *sizes = cJSON_CreateArray();
    const char *name = k == c->K ? "unconditional (guidance rows)"
                       : m ? dit_model_class_name(m, k) : NULL;
    *held = 0;
    cJSON_AddNumberToObject(o, "class", k);
    if (name)
        cJSON_AddStringToObject(o, "name", name);
    else
        cJSON_AddNullToObject(o, "name");
    cJSON_AddNumberToObject(o, "tokens", (double)class_tokens(c, k, 0));
    for (int l = 0; l < c->L; l++) {
        const uint64_t *row = c->by_class + ((size_t)k * c->L + (size_t)l) * c->E;
        int n = rt_cover_set(row, c->E, RT_COVER, scratch);
        cJSON_AddItemToArray(sets, cJSON_CreateIntArray(scratch, n));
        cJSON_AddItemToArray(sizes, cJSON_CreateNumber(n));
        *held += n;
    }
    cJSON_AddItemToObject(o, "cover90", sets);
    cJSON_AddItemToObject(o, "cover90_size", sizes);
    cJSON_AddNumberToObject(o, "cover90_experts", *held);
    return o;
}

/* "classes" (seen conditional classes), "unconditional" and "cache": what
 * a per-class expert cache covering 90% of each class's tokens holds. */
static int classes_json(cJSON *root, const rt_counts *c, const dit_model *m)
{
    int *scratch = malloc((size_t)c->E * sizeof *scratch), held, n = 0, lo = 0, hi = 0;
    double sum = 0;
    if (!scratch)
        return -1;
    cJSON *classes = cJSON_AddArrayToObject(root, "classes");
    for (int k = 0; k < c->K; k++) {
        if (!class_tokens(c, k, 0))
            continue;
        cJSON_AddItemToArray(classes, class_json(c, m, k, scratch, &held));
        sum += held;
        lo = n == 0 || held < lo ? held : lo;
        hi = held > hi ? held : hi;
        n++;
    }
    if (class_tokens(c, c->K, 0))
        cJSON_AddItemToObject(root, "unconditional", class_json(c, m, c->K, scratch, &held));
    else
        cJSON_AddNullToObject(root, "unconditional");
    free(scratch);
    cJSON *cache = cJSON_AddObjectToObject(root, "cache");
    cJSON_AddNumberToObject(cache, "experts_total", (double)c->L * c->E);
    add_measure(cache, "per_class_mean", n ? sum / n : 0, n > 0);
    add_measure(cache, "per_class_min", lo, n > 0);
    add_measure(cache, "per_class_max", hi, n > 0);
    add_measure(cache, "per_class_share", n ? sum / n / ((double)c->L * c->E) : 0, n > 0);
    return 0;
}

cJSON *rt_report_json(const rt_counts *c, const dit_model *m)
{
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    cJSON_AddNumberToObject(root, "num_layers", c->L);
    cJSON_AddNumberToObject(root, "num_experts", c->E);
    cJSON_AddNumberToObject(root, "num_classes", c->K);
    cJSON_AddNumberToObject(root, "entropy_max_bits", log2((double)c->E));
    cJSON_AddNumberToObject(root, "noise_buckets", RT_BUCKETS);
    cJSON_AddNumberToObject(root, "cover_fraction", RT_COVER);
    cJSON_AddNumberToObject(root, "tokens", (double)rt_counts_layer_tokens(c, 0, 0));
    cJSON_AddNumberToObject(root, "tokens_unconditional", (double)rt_counts_layer_tokens(c, 0, 1));
    cJSON *layers = cJSON_AddArrayToObject(root, "layers");
    for (int l = 0; l < c->L; l++)
        cJSON_AddItemToArray(layers, layer_json(c, l));
    if (classes_json(root, c, m)) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}
