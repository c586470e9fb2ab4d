/* table.c: the sampler table, and the names of samplers, spacings and
 * cache modes.
 *
 * Every consumer of sampler names reads this one table: the parsers of the
 * CLI, of config.json "sampling.sampler" and of the server's requests, the
 * server's /v1/model and through it the demo page's menu. A row's index is
 * its enum dit_sampler_kind. Adding a sampler: write its samp_ops (init,
 * time, level, input, update; see samp.h) and add one line here.
 */
#include "samp.h"

#include <strings.h>
#include <string.h>

static const samp_ops *const samp_table[] = {
    &samp_euler_ops,      /* DIT_SAMPLER_EULER */
    &samp_ddpm_ops,       /* DIT_SAMPLER_DDPM */
    &samp_ddim_ops,       /* DIT_SAMPLER_DDIM */
    &samp_dpmpp_2m_ops,   /* DIT_SAMPLER_DPMPP_2M */
    &samp_heun_ops,       /* DIT_SAMPLER_HEUN */
};
#define SAMP_KINDS (int)(sizeof samp_table / sizeof samp_table[0])

const samp_ops *samp_ops_get(int kind)
{
    return kind >= 0 && kind < SAMP_KINDS ? samp_table[kind] : NULL;
}

int dit_sampler_count(void)
{
    return SAMP_KINDS;
}

const dit_sampler_desc *dit_sampler_info(int kind)
{
    const samp_ops *o = samp_ops_get(kind);
    return o ? &o->d : NULL;
}

/* 1 when `name` is one of the comma-separated `list` (case-insensitive). */
static int samp_in_list(const char *name, const char *list)
{
    size_t n = strlen(name);
    while (*list) {
        size_t l = strcspn(list, ",");
        if (l == n && !strncasecmp(list, name, n))
            return 1;
        list += l + (list[l] == ',');
    }
    return 0;
}

int dit_sampler_parse(const char *name)
{
    if (!name || !*name)
        return -1;
    for (int k = 0; k < SAMP_KINDS; k++)
        if (!strcasecmp(name, samp_table[k]->d.name) || samp_in_list(name, samp_table[k]->d.aliases))
            return k;
    return -1;
}

const char *dit_sampler_name(int kind)
{
    const samp_ops *o = samp_ops_get(kind);
    return o ? o->d.name : "?";
}

int dit_sampler_supports(int kind, int prediction)
{
    const samp_ops *o = samp_ops_get(kind);
    return o && prediction >= 0 && prediction < 32 && (o->d.predictions >> prediction & 1u);
}

/* Index of name in the NULL-terminated names (case-insensitive), or -1. */
static int samp_lookup(const char *const *names, const char *name)
{
    for (int i = 0; name && names[i]; i++)
        if (!strcasecmp(name, names[i]))
            return i;
    return -1;
}

static const char *const spacing_names[] = { "default", "uniform", "logsnr", NULL };

int dit_spacing_parse(const char *name)
{
    return samp_lookup(spacing_names, name);
}

const char *dit_spacing_name(int spacing)
{
    return spacing >= 0 && spacing < 3 ? spacing_names[spacing] : "?";
}

int dit_cache_mode_parse(const char *name)
{
    static const char *const names[] = { "off", "fixed", "adaptive", NULL };
    return samp_lookup(names, name);
}
