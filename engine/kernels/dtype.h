/* dtype.h: the weight dtypes the kernels compute with (ggml's type_traits).
 *
 * One row per dtype of enum st_dtype (formats/st.h names them as files
 * store them): how many elements form a block, how many bytes a block
 * takes, whether blocks carry scales, and the conversions of a run of
 * elements to and from F32. Every conversion in the engine goes through
 * this table, so a new weight dtype is one row here plus its kernels
 * (gemm_*.c), and no code guesses a dtype from what it is not.
 *
 * Q8 (ST_Q8) is ggml's q8_0: blocks of 32 consecutive weights of a row
 * (along the input dimension), each 32 signed bytes and one F16 scale,
 * w = d * q. Files hold it as two standard tensors, NAME (I8, the q) and
 * NAME_scale (F16, one d per block); the model binds them into blocks
 * (q8_join) at load. Measured choices are in docs/quantization.md.
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
    /* dst (n elements of this dtype) = src (n) rounded as PyTorch rounds
     * (Q8: quantised, q = round-half-even(w / d) with the F16-rounded d);
     * returns the index of the first value that does not fit (F16: a
     * finite one beyond 65504, stored as infinity; Q8: a non-finite one,
     * or one whose block scale would overflow F16), or -1 when all fit */
    int64_t (*from_f32)(void *dst, const float *src, size_t n);
} dtype_traits;

#define Q8_BLOCK 32

/* One Q8 block: 34 bytes, 2-byte aligned. */
typedef struct q8_block {
    uint16_t d;          /* scale, F16: max|w| / 127, rounded */
    int8_t q[Q8_BLOCK];  /* -127..127 */
} q8_block;
_Static_assert(sizeof(q8_block) == 34, "q8_block is 34 packed bytes");

/* dst (n / 32 blocks) from n quantised values q and their n / 32 F16
 * scales, as a file stores them; q8_split is the inverse. */
void q8_join(q8_block *dst, const int8_t *q, const uint16_t *d, size_t n);
void q8_split(int8_t *q, uint16_t *d, const q8_block *src, size_t n);

/* The row of a weight dtype, or NULL for one the kernels do not compute
 * with (integer tensors). */
const dtype_traits *dtype_get(int dtype);

/* The weight dtype named name ("f32", "F16", "bf16", "q8": any case), or
 * -1: how options and files name the table's rows. */
int dtype_parse(const char *name);

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
