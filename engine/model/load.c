/* load.c: finding a model's files, building synthetic models, accessors.
 *
 * dit_model_load accepts a model directory (config.json plus
 * model.safetensors or a single .pt/.pth) or a weight file. Without a
 * config.json the tensor shapes must match a preset of a published
 * checkpoint; its ImageNet class names come from imagenet_classes.txt
 * beside the weights or in the installed data folder. dit_model_synthetic
 * makes a preset with random weights in memory for benchmarks, its
 * matrices in any weight dtype (q8: as `convert --dtype q8` makes them).
 */
#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "model.h"
#include "preset.h"
#include "names.h"
#include "rng.h"
#include "vae.h"

#define ERR(...) (snprintf(err, errlen, __VA_ARGS__), DIT_E_FORMAT)

#ifndef DITMOE_DATADIRS
#define DITMOE_DATADIRS "config"
#endif

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

/* Reads a whole small file (at most max bytes) into a NUL-terminated buffer. */
static char *slurp(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    fclose(f);
    if (!buf || n > max) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Finds the weight file in a directory: model.safetensors, else the one
 * .pt/.pth/.safetensors file there. */
static int find_weights(const char *dir, char *out, size_t outlen, char *err, size_t errlen)
{
    snprintf(out, outlen, "%s/model.safetensors", dir);
    struct stat st;
    if (stat(out, &st) == 0)
        return DIT_OK;
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "%s: cannot open the model directory", dir);
        return DIT_E_IO;
    }
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!has_suffix(e->d_name, ".pt") && !has_suffix(e->d_name, ".pth") &&
            !has_suffix(e->d_name, ".safetensors"))
            continue;
        if (found++ == 0)
            snprintf(out, outlen, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    if (found == 1)
        return DIT_OK;
    snprintf(err, errlen, found ? "%s: %d weight files; keep one, or name it model.safetensors"
                                : "%s: no model.safetensors or .pt checkpoint in the directory",
             dir, found);
    return DIT_E_IO;
}

static int open_weights(dit_model *m, const char *file, char *err, size_t errlen)
{
    if (has_suffix(file, ".pt") || has_suffix(file, ".pth") || has_suffix(file, ".ckpt"))
        return pt_open(&m->weights, file, err, errlen);
    return st_open(&m->weights, file, err, errlen);
}

static int count_blocks(const st_table *t)
{
    int depth = 0;
    for (int i = 0; i < st_count(t); i++) {
        int l;
        if (sscanf(st_at(t, i)->name, "blocks.%d.", &l) == 1 && l >= depth && l < 100000)
            depth = l + 1;
    }
    return depth;
}

/* Reads one class name per line from the first data file found. */
static int load_names_file(dit_model *m, const char *dir)
{
    char path[4096];
    const char *dirs = DITMOE_DATADIRS; /* ':'-separated, set by meson */
    size_t len = 0;
    char *text = NULL;
    snprintf(path, sizeof path, "%s/imagenet_classes.txt", dir);
    text = slurp(path, 1 << 20, &len);
    while (!text && *dirs) {
        size_t n = strcspn(dirs, ":");
        snprintf(path, sizeof path, "%.*s/imagenet_classes.txt", (int)n, dirs);
        text = slurp(path, 1 << 20, &len);
        dirs += n + (dirs[n] == ':');
    }
    if (!text)
        return DIT_OK; /* names are optional: labels still work */
    char **names = calloc((size_t)m->cfg.num_classes, sizeof *names);
    int i = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); names && line &&
         i < m->cfg.num_classes; line = strtok_r(NULL, "\n", &save))
        if ((names[i] = strdup(line)))
            i++;
    free(text);
    if (names && i == m->cfg.num_classes) {
        m->class_names = names;
        return DIT_OK;
    }
    for (int k = 0; names && k < i; k++)
        free(names[k]);
    free(names);
    return DIT_OK;
}

/* No config.json: match the shapes against the presets. */
static int config_from_preset(dit_model *m, const char *dir, char *err, size_t errlen)
{
    const st_tensor *x = st_find(m->weights, "x_embedder.proj.weight");
    const st_tensor *g = st_find(m->weights, "blocks.0.moe.gate.weight");
    int depth = count_blocks(m->weights);
    if (!x || x->ndim != 4 || !g || g->ndim != 2)
        return ERR("%s: no config.json, and the weights are not a DiT-MoE state_dict "
                   "(x_embedder.proj.weight or blocks.0.moe.gate.weight missing)", st_path(m->weights));
    const model_preset *p = preset_match(depth, (int)x->shape[0], (int)g->shape[0]);
    if (!p)
        return ERR("%s: no config.json, and the shapes (depth %d, hidden %lld, %lld experts) "
                   "match no published preset: write a config.json", st_path(m->weights),
                   depth, (long long)x->shape[0], (long long)g->shape[0]);
    preset_config(p, &m->cfg);
    const st_tensor *pos = st_find(m->weights, "pos_embed");
    if (pos && pos->ndim == 3) { /* 512x512 checkpoints have 64x64 latents */
        int grid = 1;
        while ((int64_t)grid * grid < pos->shape[1])
            grid++;
        m->cfg.input_size = grid * m->cfg.patch_size;
    }
    int rc = config_finish(&m->cfg, st_path(m->weights), err, errlen);
    return rc ? rc : load_names_file(m, dir);
}

/* Parses the config.json file at path into m. */
static int read_config_file(dit_model *m, const char *path, char *err, size_t errlen)
{
    size_t len = 0;
    char *text = slurp(path, 1 << 24, &len);
    if (!text) {
        snprintf(err, errlen, "%s: cannot read (or larger than 16 MiB)", path);
        return DIT_E_IO;
    }
    int rc = config_parse(m, text, len, path, err, errlen);
    free(text);
    return rc;
}

static int read_config(dit_model *m, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    struct stat st;
    if (stat(path, &st) != 0)
        return config_from_preset(m, dir, err, errlen);
    return read_config_file(m, path, err, errlen);
}

int dit_model_load(dit_model **out, const char *path, const dit_model_settings *set,
                   char *err, size_t errlen)
{
    char dummy[8], dir[4096], file[4096];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (!out || !path) {
        snprintf(err, errlen, "dit_model_load: NULL argument");
        return DIT_E_INVAL;
    }
    *out = NULL;
    dit_model *m = calloc(1, sizeof *m);
    if (!m)
        return DIT_E_NOMEM;
    int rc;
    snprintf(dir, sizeof dir, "%s", path);
    if (is_dir(path)) {
        rc = find_weights(path, file, sizeof file, err, errlen);
    } else {
        snprintf(file, sizeof file, "%s", path);
        char *slash = strrchr(dir, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - dir) : 1, slash ? path : ".");
        rc = DIT_OK;
    }
    if (rc == DIT_OK)
        rc = open_weights(m, file, err, errlen);
    if (rc == DIT_OK)
        rc = read_config(m, dir, err, errlen);
    if (rc == DIT_OK)
        rc = model_bind(m, err, errlen);
    if (rc == DIT_OK)
        rc = model_check_compute(m, set, err, errlen);
    if (rc == DIT_OK)
        rc = model_pack(m, set, file, err, errlen);
    if (rc == DIT_OK)
        rc = model_open_vae(m, dir, err, errlen);
    if (rc != DIT_OK) {
        dit_model_free(m);
        return rc;
    }
    *out = m;
    return DIT_OK;
}

void dit_model_free(dit_model *m)
{
    if (!m)
        return;
    for (int l = 0; m->blocks && l < m->cfg.depth; l++)
        free(m->blocks[l].experts);
    free(m->blocks);
    if (m->class_names)
        for (int i = 0; i < m->cfg.num_classes; i++)
            free(m->class_names[i]);
    free(m->class_names);
    model_close_vae(m);
    free(m->vae_dir);
    free(m->f32);
    if (m->q8)
        munmap(m->q8, m->q8_len * sizeof *m->q8);
    free(m->packed);
    st_close(m->weights);
    free(m);
}

const dit_config *dit_model_config(const dit_model *m)
{
    return m ? &m->cfg : NULL;
}

void dit_model_get_info(const dit_model *m, dit_model_info *info)
{
    if (m && info) {
        *info = m->info;
        info->resident_bytes = m->info.weight_bytes + (m->vae ? vae_weight_bytes(m->vae) : 0);
    }
}

const char *dit_model_class_name(const dit_model *m, int label)
{
    if (!m || !m->class_names || label < 0 || label >= m->cfg.num_classes)
        return NULL;
    return m->class_names[label];
}

/* name equals s, or one of s's comma-separated aliases, ignoring case and
 * surrounding spaces. */
static int name_matches(const char *s, const char *name)
{
    size_t n = strlen(name);
    while (*s) {
        while (*s == ' ')
            s++;
        size_t len = strcspn(s, ",");
        size_t t = len;
        while (t && s[t - 1] == ' ')
            t--;
        if (t == n && !strncasecmp(s, name, n))
            return 1;
        s += len + (s[len] == ',');
    }
    return 0;
}

int dit_model_find_class(const dit_model *m, const char *name)
{
    if (!m || !name || !m->class_names || !*name)
        return -1;
    for (int i = 0; i < m->cfg.num_classes; i++)
        if (name_matches(m->class_names[i], name))
            return i;
    return -1;
}

/* ---- synthetic models --------------------------------------------------- */

/* Builds a model's tensors in two walks of names_each: the first (mem
 * NULL) only sums their bytes, the second draws them into one anonymous
 * mapping the table owns. Matrices are drawn in F32 one at a time into
 * scratch and stored in their dtype (Q8 drawn directly as the I8 values
 * and F16 scales a converted file holds), so no F32 copy of the model ever
 * exists; the mapping is registered as the table's map, so the pages
 * binding and packing give back (st_drop) are freed. */
typedef struct synth {
    st_table *t;
    char *mem;
    size_t used, cap;
    float *scratch;     /* (most) one tensor in F32 */
    size_t most;
    int mat_dtype;      /* weight matrices' dtype (enum st_dtype) */
    rng_default rng;
    uint64_t bits;      /* xorshift64 state of the 8-bit draws */
    int fail;
} synth;

/* A Q8 matrix (rows, cols) drawn directly in 8 bits into p, as a file
 * holds it: I8 values uniform in -127..127 and one F16 scale for all
 * blocks giving a fan_in-initialised layer's spread (127 / sqrt(3) is the
 * values' standard deviation). Drawing bytes is some 20x faster than
 * drawing normals and quantising them: G/2 has 15.6 B expert weights. */
static void synth_q8(synth *s, const char *name, const int64_t *shape, char *p, size_t n)
{
    char sname[200];
    int64_t sshape[2] = { shape[0], shape[1] / Q8_BLOCK };
    int8_t *q = (int8_t *)p;
    uint16_t *d = (uint16_t *)(p + ((n + 63) & ~(size_t)63));
    uint16_t d0 = f32_to_f16(sqrtf(3.0f / (float)shape[1]) / 127.0f);
    for (size_t i = 0; i < n; i++) {
        s->bits ^= s->bits << 13, s->bits ^= s->bits >> 7, s->bits ^= s->bits << 17;
        q[i] = (int8_t)((int)((s->bits >> 32) % 255) - 127);
    }
    for (size_t i = 0; i < n / Q8_BLOCK; i++)
        d[i] = d0;
    snprintf(sname, sizeof sname, "%s_scale", name);
    s->fail |= st_table_add(s->t, name, ST_I8, 2, shape, q) != 0 ||
               st_table_add(s->t, sname, ST_F16, 2, sshape, d) != 0;
}

/* One tensor of the list, scaled like a fan_in-initialised layer: weight
 * matrices in the model's dtype (Q8 only where `convert --dtype q8` puts
 * it, the other matrices F16 as it leaves a half-precision model), the
 * rest (biases, embeddings, the patch kernel) F32. */
static int synth_put(void *user, const tensor_ref *r)
{
    synth *s = user;
    size_t n = 1;
    for (int i = 0; i < r->ndim; i++)
        n *= (size_t)r->shape[i];
    int dtype = r->kind == TENSOR_MAT && r->ndim == 2 ? s->mat_dtype : ST_F32;
    if (dtype == ST_Q8 && !model_q8_tensor(r->name, 2, r->shape))
        dtype = ST_F16;
    size_t bytes = (dtype_bytes(dtype, n) + 63) & ~(size_t)63;
    size_t scales = dtype == ST_Q8 ? n / Q8_BLOCK * sizeof(uint16_t) : 0;
    bytes = dtype == ST_Q8 ? ((n + 63) & ~(size_t)63) + ((scales + 63) & ~(size_t)63) : bytes;
    if (!s->mem) { /* counting pass */
        s->used += bytes;
        s->most = n > s->most && dtype != ST_Q8 ? n : s->most;
        return 0;
    }
    if (s->fail || s->used + bytes > s->cap)
        return DIT_E_NOMEM;
    char *p = s->mem + s->used;
    s->used += bytes;
    if (dtype == ST_Q8) {
        synth_q8(s, r->name, r->shape, p, n);
    } else {
        rng_default_randn(&s->rng, s->scratch, n);
        float scale = 1.0f / sqrtf((float)r->fan_in);
        for (size_t i = 0; i < n; i++)
            s->scratch[i] *= scale;
        dtype_get(dtype)->from_f32(p, s->scratch, n);
        s->fail |= st_table_add(s->t, r->name, dtype, r->ndim, r->shape, p) != 0;
    }
    return s->fail ? DIT_E_NOMEM : 0;
}

static void synth_unmap(void *p, size_t n)
{
    if (p)
        munmap(p, n);
}

/* Draws the tensors of m->cfg into a new table m->weights named `what`. */
static int synth_build(dit_model *m, const char *what, int dtype, uint64_t seed)
{
    synth s = { 0 };
    int has_null = m->cfg.class_dropout_prob > 0;
    s.mat_dtype = dtype;
    names_each(NULL, &m->cfg, has_null, synth_put, &s); /* counts */
    s.cap = s.used;
    s.used = 0;
    s.mem = mmap(NULL, s.cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s.mem == MAP_FAILED)
        return DIT_E_NOMEM;
    s.scratch = malloc(s.most * sizeof(float));
    m->weights = s.scratch ? st_table_new(what, s.mem, s.cap, synth_unmap) : NULL;
    if (!m->weights) {
        free(s.scratch);
        munmap(s.mem, s.cap);
        return DIT_E_NOMEM;
    }
    st_table_set_map(m->weights, s.mem, s.cap); /* so st_drop frees pages */
    s.t = m->weights;
    rng_default_init(&s.rng, seed, 0);
    s.bits = seed * 0x9e3779b97f4a7c15ull | 1;
    int rc = names_each(NULL, &m->cfg, has_null, synth_put, &s);
    free(s.scratch);
    return rc;
}

/* The config of a synthetic model: a preset's, or a config.json file (or a
 * directory holding one) for custom shapes. */
static int synth_config(dit_model *m, const char *what, char *err, size_t errlen)
{
    const model_preset *p = what ? preset_find(what) : NULL;
    if (p) {
        preset_config(p, &m->cfg);
        return config_finish(&m->cfg, p->name, err, errlen);
    }
    struct stat st;
    if (!what || stat(what, &st) != 0) {
        snprintf(err, errlen, "'%s' is neither a preset (s2, b2, xl2, g2, s2-16e2a, ...) nor a "
                 "config.json", what ? what : "(null)");
        return DIT_E_INVAL;
    }
    return S_ISDIR(st.st_mode) ? read_config(m, what, err, errlen)
                               : read_config_file(m, what, err, errlen);
}

int dit_model_synthetic(dit_model **out, const char *preset, const char *dtype, uint64_t seed,
                        const dit_model_settings *set, char *err, size_t errlen)
{
    char dummy[8];
    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (!out)
        return DIT_E_INVAL;
    *out = NULL;
    int dt = dtype_parse(dtype ? dtype : "f32");
    if (dt < 0) {
        snprintf(err, errlen, "dtype '%s' is not one of f32, f16, bf16, q8", dtype);
        return DIT_E_INVAL;
    }
    dit_model *m = calloc(1, sizeof *m);
    if (!m)
        return DIT_E_NOMEM;
    int rc = synth_config(m, preset, err, errlen);
    if (!rc && (rc = synth_build(m, preset, dt, seed)))
        snprintf(err, errlen, "%s: out of memory for the weights", preset);
    if (!rc)
        rc = model_bind(m, err, errlen);
    if (!rc)
        rc = model_check_compute(m, set, err, errlen);
    if (rc == DIT_OK)
        rc = model_pack(m, set, preset, err, errlen);
    if (rc) {
        dit_model_free(m);
        return rc;
    }
    *out = m;
    return DIT_OK;
}
