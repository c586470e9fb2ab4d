/* dtype.h: the weight dtypes the kernels compute with (ggml's type_traits).
 *
 * One row per dtype of enum st_dtype (formats/st.h names them as files
 * store them): how many elements form a block, how many bytes a block
 * takes, whether blocks carry scales, and the conversions of a run of
 * elements to and from F32. Every conversion in the engine goes through
 * this table, so a new weight dtype is one row here plus its kernels
 * (gemm_*.c), and no code guesses a dtype from what it is not.
 */
#ifndef KERNELS_DTYPE_H
#define KERNELS_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "st.h"

typedef struct dtype_traits {
    const char *name;    /* as in safetensors headers: "F32", "F16", "BF16" */
    int block;           /* elements per block (1: plain elements) */
    size_t block_bytes;  /* bytes per block */
    int has_scales;      /* blocks carry their own scale */
    /* dst (n) = src (n elements of this dtype) widened to F32; n a
     * multiple of block */
    void (*to_f32)(float *dst, const void *src, size_t n);
    /* dst (n elements of this dtype) = src (n) rounded as PyTorch rounds;
     * returns the index of the first finite value that does not fit (it
     * is stored as infinity), or -1 when all fit */
    int64_t (*from_f32)(void *dst, const float *src, size_t n);
} dtype_traits;

/* The row of a weight dtype, or NULL for one the kernels do not compute
 * with (integer tensors). */
const dtype_traits *dtype_get(int dtype);

/* Bytes of n elements of a weight dtype (n a multiple of its block). */
size_t dtype_bytes(int dtype, size_t n);

/* Scalar conversions, for code that touches single values. half and
 * bfloat16 to float exactly; float to half and bfloat16 rounding to
 * nearest even as PyTorch's .half() and .bfloat16() do (half overflows to
 * infinity, NaN stays NaN). */
float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
uint16_t f32_to_bf16(float f);

#endif
