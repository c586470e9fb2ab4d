/* measures.c: entropy, mutual information and cover sets on raw counts.
 *
 * With n(k, e) the assignments of condition k to expert e, N their sum and
 * n(k), n(e) the margins, everything is a plug-in estimate in bits:
 *   H(E)    = -sum_e n(e)/N log2(n(e)/N)
 *   I(E; K) =  sum_{k,e} n(k,e)/N log2(n(k,e) N / (n(k) n(e)))
 * I is summed directly (not as H(E) - H(E|K)) so that a table with no
 * dependence gives exactly 0 term by term, and clamped to [0, min(H(E),
 * H(K))] against rounding. Sums run in double: counts stay exact up to
 * 2^53, far beyond a server's lifetime of tokens.
 */
#include "routing_info.h"

#include <math.h>

static double row_sum(const uint64_t *row, int E)
{
    double s = 0;
    for (int e = 0; e < E; e++)
        s += (double)row[e];
    return s;
}

double rt_entropy(const uint64_t *p, int n)
{
    double sum = row_sum(p, n), h = 0;
    if (sum <= 0)
        return 0;
    for (int i = 0; i < n; i++)
        if (p[i])
            h -= (double)p[i] / sum * log2((double)p[i] / sum);
    return h > 0 ? h : 0;
}

void rt_mutual_info(const uint64_t *joint, int rows, size_t stride, int E, rt_info *out)
{
    double n = 0, h_expert = 0, h_cond = 0, mi = 0;
    for (int r = 0; r < rows; r++)
        n += row_sum(joint + (size_t)r * stride, E);
    *out = (rt_info){ 0 };
    if (n <= 0)
        return;
    for (int r = 0; r < rows; r++) {
        double nk = row_sum(joint + (size_t)r * stride, E);
        h_cond -= nk > 0 ? nk / n * log2(nk / n) : 0;
    }
    for (int e = 0; e < E; e++) {
        double ne = 0; /* the expert margin, one column at a time (E is small) */
        for (int r = 0; r < rows; r++)
            ne += (double)joint[(size_t)r * stride + e];
        if (ne <= 0)
            continue;
        h_expert -= ne / n * log2(ne / n);
        for (int r = 0; r < rows; r++) {
            const uint64_t *row = joint + (size_t)r * stride;
            if (row[e])
                mi += (double)row[e] / n * log2((double)row[e] * n / (row_sum(row, E) * ne));
        }
    }
    h_expert = fmax(h_expert, 0), h_cond = fmax(h_cond, 0);
    out->tokens = n;
    out->h_expert = h_expert;
    out->h_cond = h_cond;
    out->mi = fmin(fmax(mi, 0), fmin(h_expert, h_cond));
    out->share = h_expert > 0 ? out->mi / h_expert : 0;
}

int rt_cover_set(const uint64_t *row, int E, double frac, int *out)
{
    double total = 0, held = 0;
    for (int e = 0; e < E; e++) {
        total += (double)row[e];
        /* insertion sort, most used first; ties keep the lower index first */
        int i = e;
        while (i > 0 && row[out[i - 1]] < row[e]) {
            out[i] = out[i - 1];
            i--;
        }
        out[i] = e;
    }
    if (total <= 0)
        return 0;
    for (int m = 0; m < E; m++) {
        held += (double)row[out[m]];
        if (held >= frac * total)
            return m + 1;
    }
    return E;
}
