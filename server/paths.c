/* paths.c: the data roots, for the default model and the default web root.
 *
 * The same lookup the command-line tool does for its default model: a
 * binary running from the build tree uses the source tree it was built
 * from, an installed one PREFIX/share/ditmoe (what `meson install` fills:
 * web/, models/fashion-mnist, imagenet_classes.txt). PREFIX is taken from
 * where the binary is (BINDIR/..) before the configured prefix, so a staged
 * install (`meson install --destdir`, a container's build stage) works
 * from wherever it is unpacked. The roots are set by server/meson.build.
 * A bundled model can also be named (model = "fashion-mnist-ddpm"): a
 * bare name that is no path in the working directory is looked up as
 * models/NAME under the same roots.
 */
#include "paths.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if !defined(DITMOE_SOURCE_DIR) || !defined(DITMOE_BUILD_DIR) || !defined(DITMOE_DATADIR) || \
    !defined(DITMOE_BINDIR_REL) || !defined(DITMOE_DATADIR_REL)
#error "server/meson.build defines the data roots (DITMOE_SOURCE_DIR and the rest)"
#endif

/* The running binary's folder, or "" when /proc/self/exe is unreadable. */
static void exe_dir(char *out, size_t n)
{
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    out[0] = 0;
    if (len <= 0)
        return;
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (slash && slash != exe) {
        *slash = 0;
        snprintf(out, n, "%s", exe);
    }
}

/* 1 when dir is the build tree or inside it. */
static int in_build_tree(const char *dir)
{
    char build[PATH_MAX];
    if (!dir[0] || !realpath(DITMOE_BUILD_DIR, build))
        return 0;
    size_t bl = strlen(build);
    return !strncmp(dir, build, bl) && (dir[bl] == '/' || !dir[bl]);
}

/* PREFIX/share/ditmoe for a binary in PREFIX/bin, else "". */
static void exe_datadir(const char *dir, char *out, size_t n)
{
    size_t dl = strlen(dir), bl = strlen(DITMOE_BINDIR_REL);
    out[0] = 0;
    if (DITMOE_BINDIR_REL[0] == '/' || DITMOE_DATADIR_REL[0] == '/' || dl <= bl + 1 ||
        strcmp(dir + dl - bl, DITMOE_BINDIR_REL) || dir[dl - bl - 1] != '/')
        return;
    snprintf(out, n, "%.*s%s", (int)(dl - bl), dir, DITMOE_DATADIR_REL);
}

int srv_is_model_name(const char *model)
{
    return model[0] && model[0] != '.' && !strchr(model, '/') && access(model, F_OK) != 0;
}

int srv_find_data(const char *rel, const char *probe, char *out, size_t n, char *tried,
                  size_t tried_len)
{
    char dir[PATH_MAX], rel_data[PATH_MAX], cand[PATH_MAX], file[PATH_MAX + 64];
    exe_dir(dir, sizeof dir);
    exe_datadir(dir, rel_data, sizeof rel_data);
    int build = in_build_tree(dir);
    const char *roots[4] = {build ? DITMOE_SOURCE_DIR : NULL, rel_data, DITMOE_DATADIR,
                            build ? NULL : DITMOE_SOURCE_DIR};
    size_t tl = 0;
    out[0] = 0;
    if (tried && tried_len)
        tried[0] = 0;
    for (int i = 0; i < 4; i++) {
        if (!roots[i] || !roots[i][0] || (i == 2 && !strcmp(roots[1], roots[2])))
            continue;
        snprintf(cand, sizeof cand, "%s/%s", roots[i], rel);
        if (tried && tl + 1 < tried_len) {
            int k = snprintf(tried + tl, tried_len - tl, "%s%s", tl ? ", " : "", cand);
            tl = k > 0 ? tl + (size_t)k : tl;
            tl = tl < tried_len ? tl : tried_len - 1;
        }
        snprintf(file, sizeof file, "%s/%s", cand, probe);
        if (access(file, R_OK) == 0) {
            snprintf(out, n, "%s", cand);
            return 0;
        }
    }
    return -1;
}
