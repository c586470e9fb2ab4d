/* cli_util.c: option parsing, value converters, messages and model
 * loading shared by the ditmoe subcommands (see cli.h).
 */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef DITMOE_SOURCE_DIR
#define DITMOE_SOURCE_DIR "."
#endif
#ifndef DITMOE_BUILD_DIR
#define DITMOE_BUILD_DIR "."
#endif
#ifndef DITMOE_DATADIR
#define DITMOE_DATADIR "/usr/local/share/ditmoe"
#endif
#define CLI_DEFAULT_MODEL "fashion-mnist"

int cli_fail(const char *fmt, ...)
{
    va_list ap;
    fputs("ditmoe: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return CLI_EFAIL;
}

static const cli_opt *cli_find(const cli_opt *opts, int n, const char *name, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(opts[i].name) == len && !strncmp(opts[i].name, name, len))
            return &opts[i];
    return NULL;
}

static int cli_usage_error(const char *usage, const char *fmt, const char *arg)
{
    fputs("ditmoe: ", stderr);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n%s", usage);
    return CLI_EUSAGE;
}

int cli_parse(int argc, char **argv, const cli_opt *opts, int n, const char *usage)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *eq;
        const cli_opt *o;
        size_t len;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return -1;
        }
        if (strncmp(a, "--", 2) != 0)
            return cli_usage_error(usage, "unexpected argument '%s'", a);
        a += 2;
        eq = strchr(a, '=');
        len = eq ? (size_t)(eq - a) : strlen(a);
        o = cli_find(opts, n, a, len);
        if (!o)
            return cli_usage_error(usage, "unknown option '%s'", argv[i]);
        if (!o->value) {
            if (eq)
                return cli_usage_error(usage, "option '%s' takes no value", argv[i]);
            *o->flag = 1;
        } else if (eq) {
            *o->value = eq + 1;
        } else if (i + 1 < argc) {
            *o->value = argv[++i];
        } else {
            return cli_usage_error(usage, "option '%s' needs a value", argv[i]);
        }
    }
    return 0;
}

int cli_int(const char *name, const char *s, long lo, long hi, int *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (end == s || *end || errno) {
        cli_fail("--%s: '%s' is not an integer", name, s);
        return CLI_EUSAGE;
    }
    if (v < lo || v > hi) {
        cli_fail("--%s: %ld is out of range %ld..%ld", name, v, lo, hi);
        return CLI_EUSAGE;
    }
    *out = (int)v;
    return 0;
}

int cli_u64(const char *name, const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    errno = 0;
    while (*s == ' ')
        s++;
    v = strtoull(s, &end, 10);
    if (end == s || *end || errno || *s == '-') {
        cli_fail("--%s: '%s' is not an integer in 0..18446744073709551615", name, s);
        return CLI_EUSAGE;
    }
    *out = (uint64_t)v;
    return 0;
}

int cli_double(const char *name, const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v)) {
        cli_fail("--%s: '%s' is not a finite number", name, s);
        return CLI_EUSAGE;
    }
    if (v < lo || v > hi) {
        cli_fail("--%s: %g is out of range %g..%g", name, v, lo, hi);
        return CLI_EUSAGE;
    }
    *out = v;
    return 0;
}

static int cli_is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Whether this executable lives below the meson build tree. */
static int cli_in_build_tree(void)
{
    char exe[PATH_MAX], build[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    size_t bl;
    if (n <= 0 || !realpath(DITMOE_BUILD_DIR, build))
        return 0;
    exe[n] = '\0';
    bl = strlen(build);
    return !strncmp(exe, build, bl) && exe[bl] == '/';
}

/* Whether `s` names a bundled model rather than a path: no '/', no
 * leading '.', and nothing of that name in the working directory (the
 * path the user means wins). */
static int cli_is_model_name(const char *s)
{
    return s[0] && s[0] != '.' && !strchr(s, '/') && access(s, F_OK) != 0;
}

const char *cli_bundled_model(const char *name)
{
    static char path[PATH_MAX];
    const char *roots[2];
    int in_build = cli_in_build_tree();
    roots[0] = in_build ? DITMOE_SOURCE_DIR : DITMOE_DATADIR;
    roots[1] = in_build ? DITMOE_DATADIR : DITMOE_SOURCE_DIR;
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/models/%s", roots[i], name);
        if (cli_is_dir(path))
            return path;
    }
    return NULL;
}

const char *cli_default_model(void)
{
    return cli_bundled_model(CLI_DEFAULT_MODEL);
}

int cli_model_settings(dit_model_settings *set, int no_pack, const char *compute)
{
    dit_model_settings_default(set);
    set->pack_weights = !no_pack;
    set->compute = compute ? dit_compute_parse(compute) : DIT_COMPUTE_F32;
    if (set->compute < 0) {
        cli_fail("--compute: '%s' is not f32 or int8", compute);
        return CLI_EUSAGE;
    }
    return 0;
}

int cli_load_model(const char *path, int no_pack, const char *compute, dit_model **m,
                   const char **name)
{
    char err[512] = "";
    dit_model_settings set;
    int rc;
    *m = NULL;
    if ((rc = cli_model_settings(&set, no_pack, compute)))
        return rc;
    if (!path) {
        path = cli_default_model();
        if (!path)
            return cli_fail("no --model given and the default model (models/%s) is not "
                            "installed under %s or %s", CLI_DEFAULT_MODEL, DITMOE_DATADIR,
                            DITMOE_SOURCE_DIR);
    } else if (cli_is_model_name(path)) {
        const char *bundled = cli_bundled_model(path);
        if (!bundled)
            return cli_fail("--model %s: no such file, and no bundled model models/%s under "
                            "%s or %s", path, path, DITMOE_DATADIR, DITMOE_SOURCE_DIR);
        path = bundled;
    }
    *name = path;
    rc = dit_model_load(m, path, &set, err, sizeof err);
    if (rc != DIT_OK)
        return cli_fail("%s", err[0] ? err : dit_strerror(rc));
    return 0;
}

int cli_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

void cli_engine_setup(void)
{
    char warn[512];
    dit_set_blas_threads(1);
    if (dit_blas_warning(warn, sizeof warn))
        fprintf(stderr, "ditmoe: warning: %s\n", warn);
}

double cli_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
