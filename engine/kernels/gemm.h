/* gemm.h: the engine's own matrix product over pre-packed weights, one
 * kernel record per instruction set (engine-internal).
 *
 * Every weight GEMM of a forward pass is out (M, N) = in (M, K) W^T with
 * W fixed for the life of the model, so W is rearranged once, at load,
 * into panels of nr output columns, each panel (K, nr) row-major: the
 * layout the micro-kernel streams. BLAS instead re-packs W on every call,
 * which for the many small GEMMs of a MoE layer (a few hundred tokens per
 * expert) costs as much as the product itself.
 *
 * The kernels form a table in the style of dav1d's per-ISA DSP contexts:
 * one gemm_kernel record per instruction set (avx512, avx2, neon, and a
 * plain C reference that runs anywhere), each with its CPU check, its tile
 * (mr rows by nr columns), the packed layout it reads (pack size and pack
 * functions) and its tile function. A model picks one record at load
 * (gemm_kernel_choose: the best the CPU runs, or DITMOE_ISA) and keeps a
 * pointer to it; nothing outside the record knows mr or nr at compile time.
 * A pack made by one record is read only by that record.
 *
 * A GLU pack interleaves two matrices of the same shape (an expert's gate
 * and up projections): panel p holds gate rows [p nr/2, (p+1) nr/2) in
 * its first nr/2 columns and the same up rows in the last nr/2, and the
 * kernel's epilogue writes silu(gate) * up, so a SwiGLU hidden layer is
 * one pass.
 *
 * A pack keeps the weights' precision: F32 stays F32, F16 and BF16 stay
 * 16-bit (the kernel widens each panel row in registers, which costs a
 * little time and saves half the memory), Q8 stays 8-bit: a Q8 panel is
 * K/32 blocks, each nr F32 ratios followed by 32 rows of nr int8 values
 * (36 nr bytes, so 64-byte aligned for nr 16 and 32), then nr F32
 * scales. The kernel keeps its accumulators in units of the current
 * block's scale: before block b it multiplies them by d(b-1) / d(b) (the
 * block's ratios), after the last by that block's scale d, so the 8-bit
 * values are only widened, never scaled, per k. Q8 packs need K a
 * multiple of 32 (every Q8 matrix has it). A new weight dtype is a case in
 * gemm_pack_dtype / pack_cols (gemm.c) and one more tile instance per
 * entry (the row_tile_<dtype> functions of each gemm_*.c).
 */
#ifndef DIT_GEMM_H
#define DIT_GEMM_H

#include <stddef.h>

#include "dtype.h"

struct gemm_kernel;

/* A weight matrix (rows, cols) in PyTorch Linear layout, y = x W^T, as
 * stored (data, in dtype) and, once packed, in its kernel's layout. */
typedef struct kmat {
    int dtype;          /* enum st_dtype with a dtype_get() row */
    const void *data;   /* rows * cols elements, or NULL once packed */
    int rows, cols;
    const void *pk;     /* the same matrix packed (gemm_kernel.pack), or NULL */
    int pk_dtype;       /* the pack's dtype (gemm_pack_dtype) */
} kmat;

/* A linear layer: weights and an optional bias (rows floats). */
typedef struct klinear {
    kmat w;
    const float *b;
} klinear;

/* A GLU pair (an expert's gate and up projections, same shape) and their
 * interleaved pack (gemm_kernel.pack_glu), or pk NULL. */
typedef struct kglu {
    kmat gate, up;
    const void *pk;
    int pk_dtype;
} kglu;

/* One GEMM over packed weights, single-threaded:
 *   out (M, ldo) columns [0, N) = in (M, K) (row stride ldi) W^T (+ bias)
 * restricted to rows [m0, m1) and panels [p0, p1), so callers can split
 * one product over threads. glu: out = silu(in G^T) * (in U^T), N hidden
 * units. acc: out += in W^T (+ bias) instead (not with glu). bias (N) or
 * NULL (not with glu). w is a pack in wdtype made by the same kernel. */
typedef struct gemm_args {
    float *out;
    const float *in, *bias;
    const void *w;
    int wdtype;
    int ldo, ldi, N, K, glu, acc;
} gemm_args;

typedef struct gemm_kernel {
    const char *name;       /* "avx512", "avx2", "neon", "c": DITMOE_ISA */
    int (*supported)(void); /* 1 when this CPU (and OS) run the entry */
    int mr;                 /* rows of a tile: row splits fall on multiples */
    int nr;                 /* output columns of a panel (a GLU panel: nr/2) */
    /* Bytes a pack of a (rows N, cols K) matrix takes in dtype; glu: of a
     * gate/up pair. A multiple of 64. */
    size_t (*pack_bytes)(const struct gemm_kernel *k, int N, int K, int glu, int dtype);
    /* Packs w into dst (pack_bytes(w->rows, w->cols, 0, dtype) bytes,
     * 64-byte aligned) as dtype (gemm_pack_dtype(w, NULL)); panel columns
     * past N are zero. row: scratch of w->cols floats. */
    void (*pack)(const struct gemm_kernel *k, void *dst, int dtype, const kmat *w, float *row);
    /* Packs gate and up (same shape) interleaved into dst (pack_bytes(rows,
     * cols, 1, dtype) bytes, dtype from gemm_pack_dtype(gate, up)). row:
     * scratch of gate->cols floats. */
    void (*pack_glu)(const struct gemm_kernel *k, void *dst, int dtype, const kmat *gate,
                     const kmat *up, float *row);
    /* Rows [k0, k0 + kn) of an F32 pack of a (N, K) matrix W read from
     * anywhere: W[j][k0 + i] = scale * src[j * rs + i * cs], columns past N
     * zero. For activations packed per call (attention's K and V, the
     * VAE's im2col); dst holds pack_bytes(N, K, 0, ST_F32) bytes. */
    void (*pack_f32)(const struct gemm_kernel *k, float *dst, int N, int K, int k0, int kn,
                     const float *src, ptrdiff_t rs, ptrdiff_t cs, float scale);
    /* The product of gemm_args, rows [m0, m1), panels [p0, p1). */
    void (*tile)(const gemm_args *a, int m0, int m1, int p0, int p1);
    /* The yardstick: reps rounds of independent FMAs on registers only
     * (enough chains to fill every FMA port), in this entry's widest
     * vectors; returns the floating-point operations done (2 per lane per
     * FMA). Timed by dit_kernel_peak_gflops. */
    double (*fma_loop)(long reps);
} gemm_kernel;

/* The entries built into this binary, best first, NULL-terminated; the C
 * reference is always the last. */
const gemm_kernel *const *gemm_kernels(void);

/* The entry called name, or NULL when this build has none by that name. */
const gemm_kernel *gemm_kernel_find(const char *name);

/* The entry to use: the best this CPU runs, or the one the environment
 * variable DITMOE_ISA names (auto, avx512, avx2, neon, c). DIT_OK, or
 * DIT_E_INVAL with err naming DITMOE_ISA and its value when the name is
 * unknown or the CPU lacks that ISA. */
int gemm_kernel_choose(const gemm_kernel **out, char *err, size_t errlen);

/* The dtype (enum st_dtype) a pack of w, or of the GLU pair w and up
 * (up may be NULL), is stored in: theirs when they agree, else F32. */
int gemm_pack_dtype(const kmat *w, const kmat *up);

/* Bytes of one panel (K rows of nr columns) of a pack in dtype. */
static inline size_t gemm_panel_bytes(const gemm_kernel *k, int K, int dtype)
{
    if (dtype == ST_Q8) /* per 32 rows: nr F32 ratios, 32 x nr int8; nr F32 scales */
        return (size_t)(K / Q8_BLOCK) * (size_t)k->nr * (sizeof(float) + Q8_BLOCK) +
               (size_t)k->nr * sizeof(float);
    return (size_t)K * (size_t)k->nr * (dtype == ST_F32 ? 4 : 2);
}

/* Output columns one panel covers: nr, or nr/2 for a GLU pack. */
static inline int gemm_panel_cols(const gemm_kernel *k, int glu)
{
    return glu ? k->nr / 2 : k->nr;
}

/* Panels of a product with N output columns. */
static inline int gemm_panels(const gemm_kernel *k, int N, int glu)
{
    return (N + gemm_panel_cols(k, glu) - 1) / gemm_panel_cols(k, glu);
}

/* The whole product of a on one thread. */
static inline void gemm_run(const gemm_kernel *k, const gemm_args *a, int M)
{
    k->tile(a, 0, M, 0, gemm_panels(k, a->N, a->glu));
}

/* Shared by the entries whose layout is plain (K, nr) panels (all of
 * today's): the pack record fields point here, reading k->nr. */
size_t gemm_pack_bytes_panels(const gemm_kernel *k, int N, int K, int glu, int dtype);
void gemm_pack_panels(const gemm_kernel *k, void *dst, int dtype, const kmat *w, float *row);
void gemm_pack_glu_panels(const gemm_kernel *k, void *dst, int dtype, const kmat *gate,
                          const kmat *up, float *row);
void gemm_pack_f32_panels(const gemm_kernel *k, float *dst, int N, int K, int k0, int kn,
                          const float *src, ptrdiff_t rs, ptrdiff_t cs, float scale);

/* Panels of the (K, nr) pack visited together by a tile function: as many
 * as fit the L2 share every row tile of a call passes over. */
int gemm_panel_block(const gemm_kernel *k, int K, int dtype);

/* Size of a per-dtype table of row tiles: enum st_dtype values below it. */
#define GEMM_DTYPES 8

/* An entry's row tile for one pack dtype: rows [m, m + mr) (mr <= k->mr)
 * against panels [p0, p1). */
typedef void (*gemm_row_fn)(const gemm_args *a, int m, int mr, int p0, int p1);

/* The loop every entry's tile function runs: panels [p0, p1) in L2 blocks,
 * each block passed over by the row tiles of [m0, m1) through row[dtype]
 * (one function per pack dtype, indexed by enum st_dtype; a new dtype is
 * one more index). */
void gemm_tile_blocks(const gemm_kernel *k, const gemm_row_fn row[GEMM_DTYPES],
                      const gemm_args *a, int m0, int m1, int p0, int p1);

/* The entries (gemm_<name>.c). An entry's file compiles everywhere; on
 * another architecture its supported() says 0. */
extern const gemm_kernel gemm_kernel_avx512, gemm_kernel_avx2, gemm_kernel_neon, gemm_kernel_c;

#endif
