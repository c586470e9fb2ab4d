/* int8.h: the int8 compute mode's reference (engine-internal).
 *
 * In compute mode int8 a product out = in W^T with Q8 weights W runs on
 * integers: each input row (a token) is quantised to int8 with one scale
 * (dynamic, symmetric), every block of 32 products is summed exactly in
 * int32, and each block sum is rescaled to F32 by the token's scale times
 * the weight block's scale:
 *
 *   out[m][n] = sum_b  xs[m] * d[n][b] * sum_{k in block b} xq[m][k] * q[n][k]
 *
 * A VNNI kernel (vpdpbusd: unsigned by signed bytes) computes the same
 * block sums from xq + 128 and subtracts 128 * sum_k q[n][k], which it
 * can keep per weight block; this file is the exact reference such a
 * kernel is tested against. No kernel exists yet: the mode is refused at
 * load (int8_available says why), never silently run in F32.
 */
#ifndef KERNELS_INT8_H
#define KERNELS_INT8_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

/* 1 when this CPU has an int8 dot-product instruction the mode needs
 * (AVX-512 VNNI or AVX-VNNI), else 0. */
int int8_cpu_has_vnni(void);

/* xq (M, K) int8 and xs (M) scales of x (M, K): xs = max|x row| / 127 (0
 * for a zero row), xq = round-half-even(x / xs). Non-finite inputs give
 * a non-finite scale, which the caller's output shows. */
void int8_quantize_rows(int8_t *xq, float *xs, const float *x, int M, int K);

/* acc (M, N, K/32) = the exact int32 block sums of xq (M, K) against the Q8
 * matrix w (N rows of K/32 blocks); K a multiple of 32. */
void int8_block_sums(int32_t *acc, const int8_t *xq, const q8_block *w, int M, int N, int K);

/* out (M, N) = the rescaled block sums, summed in block order, + bias (N,
 * or NULL). Allocates nothing: the sums are formed one block at a time. */
void int8_gemm_ref(float *out, const int8_t *xq, const float *xs, const q8_block *w,
                   const float *bias, int M, int N, int K);

#endif
