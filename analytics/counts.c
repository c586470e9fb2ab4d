/* counts.c: routing count tables by class and by noise level.
 *
 * A table is one flat array of uint64 (see routing_info.h for the layout),
 * so a sliding window of tables is cleared with one memset and summed with
 * one loop. Adding a forward touches 2 x L x E counters per row (its class
 * row and its noise-bucket row): a few hundred additions per row, next to
 * the millions of multiply-adds of the row's forward (docs/routing.md has
 * the measured cost). Nothing here allocates after rt_counts_new.
 */
#include "routing_info.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int rt_counts_new(rt_counts **out, int layers, int experts, int num_classes)
{
    *out = NULL;
    if (layers < 1 || experts < 1 || num_classes < 1)
        return DIT_E_INVAL;
    rt_counts *c = calloc(1, sizeof *c);
    size_t le = (size_t)layers * (size_t)experts;
    size_t n_class = ((size_t)num_classes + 1) * le, n_noise = 2 * (size_t)RT_BUCKETS * le;
    if (!c)
        return DIT_E_NOMEM;
    c->L = layers, c->E = experts, c->K = num_classes;
    c->len = n_class + n_noise;
    c->data = calloc(c->len, sizeof *c->data);
    if (!c->data) {
        free(c);
        return DIT_E_NOMEM;
    }
    c->by_class = c->data;
    c->by_noise = c->data + n_class;
    *out = c;
    return DIT_OK;
}

void rt_counts_free(rt_counts *c)
{
    if (!c)
        return;
    free(c->data);
    free(c);
}

void rt_counts_clear(rt_counts *c)
{
    memset(c->data, 0, c->len * sizeof *c->data);
}

void rt_counts_add_table(rt_counts *dst, const rt_counts *src)
{
    for (size_t i = 0; i < dst->len; i++)
        dst->data[i] += src->data[i];
}

int rt_noise_bucket(double noise)
{
    if (!(noise > 0)) /* also NaN */
        return 0;
    int b = (int)floor(fmin(noise, 1.0) * RT_BUCKETS + 1e-6);
    return b >= RT_BUCKETS ? RT_BUCKETS - 1 : b;
}

void rt_counts_add(rt_counts *c, int n, const uint32_t *routing, const int32_t *row_class,
                   const float *row_noise)
{
    size_t le = (size_t)c->L * (size_t)c->E;
    for (int r = 0; r < n; r++) {
        const uint32_t *src = routing + (size_t)r * le; /* (L, E) of row r */
        int cls = row_class[r] >= 0 && row_class[r] < c->K ? row_class[r] : c->K;
        int uncond = cls == c->K;
        uint64_t *by_class = c->by_class + (size_t)cls * le;
        uint64_t *by_noise = c->by_noise +
                             ((size_t)uncond * RT_BUCKETS + (size_t)rt_noise_bucket(row_noise[r])) * le;
        for (size_t i = 0; i < le; i++) {
            by_class[i] += src[i];
            by_noise[i] += src[i];
        }
    }
}

uint64_t rt_counts_layer_tokens(const rt_counts *c, int l, int unconditional)
{
    size_t le = (size_t)c->L * (size_t)c->E;
    const uint64_t *p = c->by_noise + (size_t)(unconditional ? RT_BUCKETS : 0) * le + (size_t)l * c->E;
    uint64_t sum = 0;
    for (int b = 0; b < RT_BUCKETS; b++)
        for (int e = 0; e < c->E; e++)
            sum += p[(size_t)b * le + e];
    return sum;
}
