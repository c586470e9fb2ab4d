/* model.h: the in-memory DiT-MoE model and context (engine-internal).
 *
 * A dit_model binds every weight of the upstream state_dict to a typed view
 * into the weight file's mapping. Matrices keep their stored dtype (F32, F16
 * or BF16) so a half-precision checkpoint needs half the memory; an 8-bit
 * matrix (an I8 tensor NAME plus its F16 scales NAME_scale) is joined into
 * Q8 blocks (kernels/dtype.h) in memory the model owns, and its mapped
 * pages are given back. Packed (the default), each matrix also gets a copy
 * in the panel layout of the GEMM kernel entry chosen at load (gemm.h), in
 * the same precision, and its mapped pages are given back; unpacked, the
 * matmul op widens a non-F32 weight into the
 * context's scratch per use and calls BLAS. Small tensors (biases,
 * embeddings, pos_embed) are widened to F32 once, at load, into memory the
 * model owns. After loading nothing in a model changes.
 */
#ifndef DIT_MODEL_H
#define DIT_MODEL_H

#include <ditmoe/dit.h>
#include "st.h"
#include "gemm.h"
#include "ops.h"

struct vae_model;
struct op_pool;

/* One SwiGLU expert: down(silu(gate(x)) * up(x)), no biases. */
typedef struct model_expert {
    kglu gu;            /* gate, up (He, D) */
    kmat down;          /* (D, He) */
} model_expert;

typedef struct model_block {
    klinear ada;     /* (6D, D): shift/scale/gate for attention and MoE */
    klinear qkv;     /* (3D, D) */
    klinear proj;    /* (D, D) */
    kmat router;     /* (E, D) */
    model_expert *experts;/* E routed experts */
    model_expert shared;  /* width n_shared_experts * D */
} model_block;

struct dit_model {
    dit_config cfg;
    st_table *weights;      /* owns the mapping every kmat points into */
    klinear patch;       /* (D, C*P*P) conv kernel = stride = P as a matmul */
    const float *pos_embed; /* (T, D) */
    klinear t_mlp0;      /* (D, 256) */
    klinear t_mlp2;      /* (D, D) */
    const float *y_table;   /* (num_classes + has_null, D) */
    int has_null;           /* the table has the null-class row */
    model_block *blocks;      /* L */
    klinear final_ada;   /* (2D, D) */
    klinear final_lin;   /* (P*P*Cout, D) */
    float *f32;             /* owned: widened small tensors */
    size_t f32_len, f32_used;
    q8_block *q8;           /* owned: Q8 matrices, I8 values joined with scales */
    size_t q8_len, q8_used; /* in blocks */
    char **class_names;     /* num_classes strings or NULL */
    char *vae_dir;          /* owned copy behind cfg.vae_dir */
    struct vae_model *vae;  /* loaded decoder for latent models, or NULL */
    int max_mat_elems;      /* largest non-F32 matrix: sizes the widen scratch */
    const gemm_kernel *gk;  /* the GEMM kernel entry chosen at load */
    void *packed;           /* owned: every matrix in gk's layout, or NULL */
    dit_model_info info;
};

/* One row's step cache (dit.h dit_forward_cached), owned by a sampler
 * that allocates the buffers once. FIXED rows are told by their sampler
 * (run); ADAPTIVE rows are decided in the forward from block 0's modulated
 * input: the relative L1 change since the previous evaluation is added to
 * acc, and the blocks run when acc reaches threshold (acc then restarts). */
struct dit_cache {
    int mode;           /* enum dit_cache_mode */
    int run;            /* FIXED: set before each forward: 1 run the blocks, 0 reuse */
    float threshold;    /* ADAPTIVE */
    double acc;         /* ADAPTIVE: summed relative change since the blocks last ran */
    int valid;          /* resid holds a computed evaluation */
    int has_ref;        /* ref holds the previous evaluation's input */
    int computed;       /* out: the last forward ran the blocks for this row */
    float *resid;       /* (T, D) the blocks' summed residual contribution then */
    float *ref;         /* (T, D) ADAPTIVE: block 0's modulated input last time */
};

/* A context: every scratch buffer of a forward pass, sized once. */
struct dit_ctx {
    const dit_model *m;
    dit_ctx_settings set;
    struct op_pool *pool;   /* engine worker threads, NULL when n_threads == 1 */
    op_env env;             /* pool and widen scratch, for the matmul ops */
    float *arena;           /* every buffer below points into it */
    size_t arena_floats;
    float *x;         /* (N, T, D) residual stream */
    float *xn;        /* (N, T, D) normed + modulated input of a sublayer */
    float *qkv;       /* (N, T, 3D) */
    float *att;       /* (N, T, D) attention heads, concatenated */
    float *attn;      /* (n_threads, op_attention_floats) scores and packs */
    float *sub;       /* (N, T, D) sublayer output before its gate */
    float *tfreq;     /* (N, 256) timestep frequencies */
    float *temb;      /* (N, D) */
    float *c;         /* (N, D) conditioning t_emb + y_emb */
    float *silu_c;    /* (N, D) */
    float *mod;       /* (N, 6D) adaLN modulation of the current block */
    float *logits;    /* (N*T, E) router scores */
    float *topw;      /* (N*T, K) router weights of the chosen experts */
    int *topi;        /* (N*T, K) chosen experts */
    int *disp;        /* (N*T*K) dispatch: slots grouped by expert */
    int *disp_off;    /* (E + 1) */
    int *disp_fill;   /* (E) fill cursors of the dispatch */
    int *slot_row;    /* (N*T*K) where each slot's result sits in ye */
    int *etasks;      /* (E + N*T*K/64 + N*T/64 + 2, 3) tasks: expert, r0, r1: expert, r0, r1 */
    float *xe;        /* (N*T*K, D) tokens gathered, grouped by expert */
    float *hg;        /* (N*T*K, He) gate activations */
    float *hu;        /* (N*T*K, He) up activations (BLAS path) */
    float *hs;        /* (N*T, Hs) the shared expert's gate activations */
    float *hsu;       /* (N*T, Hs) its up activations (BLAS path) */
    float *ye;        /* (N*T*K, D) expert outputs, grouped by expert */
    float *patches;   /* (N, T, C*P*P) */
    float *fout;      /* (N, T, P*P*Cout) */
    float *wide;      /* (n_threads, max_mat_elems) non-F32 weights widened */
    uint32_t *routing;/* (N, L, E) */
    uint32_t *routing2;/* (N, L, E) scratch for reordering rows (caching) */
    int *perm;        /* (N) cached forward: batch position -> row, running rows first */
    int last_n;
    void *vae_ws;     /* VAE workspace for max_decode images, or NULL */
    size_t vae_ws_bytes;
};

/* Workspace bytes dit_decode needs for n images on a pool of `threads`
 * (0 for pixel models). */
size_t decode_ws_bytes(const dit_model *m, int threads, int n);

/* Latent models: opens the VAE named by cfg.vae_dir (relative to the model
 * directory `dir`) into m->vae; pixel models: nothing. */
int model_open_vae(dit_model *m, const char *dir, char *err, size_t errlen);
void model_close_vae(dit_model *m);
/* A latent model (it needs a VAE to make pictures). */
int model_is_latent(const dit_model *m);

/* Parses config.json text into cfg (derived fields too). `path` only names
 * the file in messages. Owned strings go to m (class names, vae dir). */
int config_parse(dit_model *m, const char *text, size_t len,
                     const char *path, char *err, size_t errlen);

/* Sets the sampling defaults: sampler, steps and guidance scale as given;
 * spacing DEFAULT, guidance on every evaluation, no step cache. */
void config_default_sampling(dit_config *c, int sampler, int steps, double cfg_scale);

/* Fills the derived config fields and checks ranges. */
int config_finish(dit_config *cfg, const char *path, char *err, size_t errlen);

/* 1 when `ditmoe convert --dtype q8` stores tensor `name` (ndim, shape)
 * as Q8: the routed and shared experts' matrices (gate, up, down), whose
 * input width is a multiple of the block; the rest keeps its precision
 * (docs/quantization.md measures why). */
int model_q8_tensor(const char *name, int ndim, const int64_t *shape);

/* Binds and checks every tensor of m->weights against m->cfg. */
int model_bind(dit_model *m, char *err, size_t errlen);

/* DIT_OK when settings s ask for a compute mode this CPU and model can
 * run, else DIT_E_UNSUPPORTED (or DIT_E_INVAL) with the reason in err. */
int model_check_compute(const dit_model *m, const dit_model_settings *s, char *err,
                        size_t errlen);

/* Chooses the GEMM kernel entry (gemm_kernel_choose: DITMOE_ISA or the
 * best the CPU runs) and, when settings ask for it (the default), packs
 * every weight matrix of a bound model into its layout (one allocation the
 * model owns); the stored matrices are then not read again and their
 * mapped pages are given back. err names `name` (the weights file or
 * preset) or DITMOE_ISA. */
int model_pack(dit_model *m, const dit_model_settings *s, const char *name, char *err,
               size_t errlen);

#endif
