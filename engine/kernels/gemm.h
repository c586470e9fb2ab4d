/* gemm.h: the engine's own matrix product over pre-packed weights
 * (engine-internal).
 *
 * Every weight GEMM of a forward pass is out (M, N) = in (M, K) W^T with
 * W fixed for the life of the model, so W is rearranged once, at load,
 * into panels of GEMM_NR output columns, each panel (K, GEMM_NR) row-major:
 * the layout the micro-kernel streams. BLAS instead re-packs W on every
 * call, which for the many small GEMMs of a MoE layer (a few hundred
 * tokens per expert) costs as much as the product itself.
 *
 * A GLU pack interleaves two matrices of the same shape (an expert's gate
 * and up projections): panel p holds gate rows [16p, 16p+16) in its first
 * 16 columns and the same up rows in the last 16, and the kernel's epilogue
 * writes silu(gate) * up, so a SwiGLU hidden layer is one pass.
 *
 * A pack keeps the weights' precision: F32 stays F32, F16 and BF16 stay
 * 16-bit (the kernel widens each panel row in registers, which costs a
 * little time and saves half the memory). The kernel needs AVX-512F;
 * gemm_available() says whether this CPU has it. Without it the model
 * keeps its weights as stored and the ops use BLAS.
 */
#ifndef DIT_GEMM_H
#define DIT_GEMM_H

#include <stddef.h>

#include "dtype.h"

/* A weight matrix (rows, cols) in PyTorch Linear layout, y = x W^T, as
 * stored (data, in dtype) and, once packed, in this kernel's layout. */
typedef struct kmat {
    int dtype;          /* enum st_dtype with a dtype_get() row */
    const void *data;   /* rows * cols elements, or NULL once packed */
    int rows, cols;
    const void *pk;     /* the same matrix packed (gemm_pack), or NULL */
    int pk_dtype;       /* the pack's dtype (gemm_pack_dtype) */
} kmat;

/* A linear layer: weights and an optional bias (rows floats). */
typedef struct klinear {
    kmat w;
    const float *b;
} klinear;

/* A GLU pair (an expert's gate and up projections, same shape) and their
 * interleaved pack (gemm_pack_glu), or pk NULL. */
typedef struct kglu {
    kmat gate, up;
    const void *pk;
    int pk_dtype;
} kglu;

#define GEMM_NR 32 /* output columns of a panel */
#define GEMM_MR 12 /* rows of the kernel's tile: splits of a product's rows
                    * fall on multiples of it */

/* 1 when this CPU (and OS) runs the packed kernel, else 0. */
int gemm_available(void);

/* The dtype (enum st_dtype) a pack of w, or of the GLU pair w and up
 * (up may be NULL), is stored in: theirs when they agree, else F32. */
int gemm_pack_dtype(const kmat *w, const kmat *up);

/* Bytes a pack of a (rows N, cols K) matrix takes in dtype; glu: of a
 * gate/up pair. A multiple of 64. */
size_t gemm_pack_bytes(int N, int K, int glu, int dtype);

/* Packs w into dst (gemm_pack_bytes(w->rows, w->cols, 0, dtype) bytes,
 * 64-byte aligned) as dtype (gemm_pack_dtype(w, NULL)); panel columns
 * past N are zero. row: scratch of w->cols floats. */
void gemm_pack(void *dst, int dtype, const kmat *w, float *row);

/* Packs gate and up (same shape) interleaved into dst
 * (gemm_pack_bytes(rows, cols, 1, dtype) bytes, dtype from
 * gemm_pack_dtype(gate, up)). row: scratch of gate->cols floats. */
void gemm_pack_glu(void *dst, int dtype, const kmat *gate, const kmat *up, float *row);

/* Output columns one panel covers: 32, or 16 for a GLU pack. */
static inline int gemm_panel_cols(int glu)
{
    return glu ? GEMM_NR / 2 : GEMM_NR;
}

/* One GEMM over packed weights, single-threaded:
 *   out (M, ldo) columns [0, N) = in (M, K) (row stride ldi) W^T (+ bias)
 * restricted to rows [m0, m1) and panels [p0, p1), so callers can split
 * one product over threads. glu: out = silu(in G^T) * (in U^T), N hidden
 * units. bias (N) or NULL (not with glu). w is a pack in wdtype. */
typedef struct gemm_args {
    float *out;
    const float *in, *bias;
    const void *w;
    int wdtype;
    int ldo, ldi, N, K, glu;
} gemm_args;
void gemm_tile(const gemm_args *a, int m0, int m1, int p0, int p1);

/* Panels of a product with N output columns. */
static inline int gemm_panels(int N, int glu)
{
    return (N + gemm_panel_cols(glu) - 1) / gemm_panel_cols(glu);
}

#endif
