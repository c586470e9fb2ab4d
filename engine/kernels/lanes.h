/* lanes.h: reductions over a float row in 16 independent lanes
 * (engine-internal, header-only). A single running sum is one long
 * dependency chain; 16 lanes let the loop vectorise without reassociation
 * flags, and the lanes are combined at the end (sums in double).
 */
#ifndef KERNELS_LANES_H
#define KERNELS_LANES_H

/* Sum of x[0..n). */
#define OP_LANES 16
static inline double lane_sum(const float *x, int n)
{
    float acc[OP_LANES] = { 0 };
    int i = 0;
    for (; i + OP_LANES <= n; i += OP_LANES)
        for (int l = 0; l < OP_LANES; l++)
            acc[l] += x[i + l];
    double s = 0;
    for (; i < n; i++)
        s += x[i];
    for (int l = 0; l < OP_LANES; l++)
        s += acc[l];
    return s;
}

/* Sum of (x - mu)^2, lanes as lane_sum. */
static inline double lane_sq_dev(const float *x, float mu, int n)
{
    float acc[OP_LANES] = { 0 };
    int i = 0;
    for (; i + OP_LANES <= n; i += OP_LANES)
        for (int l = 0; l < OP_LANES; l++)
            acc[l] += (x[i + l] - mu) * (x[i + l] - mu);
    double s = 0;
    for (; i < n; i++)
        s += (double)(x[i] - mu) * (x[i] - mu);
    for (int l = 0; l < OP_LANES; l++)
        s += acc[l];
    return s;
}

/* Largest of x[0..n) (n >= 1), lanes as lane_sum. */
static inline float lane_max(const float *x, int n)
{
    float acc[OP_LANES];
    for (int l = 0; l < OP_LANES; l++)
        acc[l] = x[0];
    int i = 0;
    for (; i + OP_LANES <= n; i += OP_LANES)
        for (int l = 0; l < OP_LANES; l++)
            acc[l] = x[i + l] > acc[l] ? x[i + l] : acc[l];
    float mx = x[0];
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int l = 0; l < OP_LANES; l++)
        mx = acc[l] > mx ? acc[l] : mx;
    return mx;
}

#endif
