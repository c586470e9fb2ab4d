/* check.h: the one assertion helper of every C test (tests/NAME/test_NAME.c).
 *
 * CHECK records a failure and goes on, so one run reports every broken
 * case; a test's main returns check_exit(). Files are made in a fresh
 * mkdtemp directory that check_cleanup removes.
 */
#ifndef DIT_TEST_CHECK_H
#define DIT_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int check_failures;
static char check_dir[256];

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            check_failures++;                                                   \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__,    \
                    #cond);                                                     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

/* Makes the scratch directory; returns its path. */
static inline const char *check_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(check_dir, sizeof check_dir, "%s/ditmoe-test-XXXXXX",
             base && *base ? base : "/tmp");
    if (!mkdtemp(check_dir)) {
        perror("mkdtemp");
        exit(2);
    }
    return check_dir;
}

/* path = scratch dir + "/" + name, in a static buffer (one at a time). */
static inline const char *check_path(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", check_dir, name);
    return p;
}

static inline void check_write(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(buf, 1, len, f) != len) || fclose(f)) {
        perror(path);
        exit(2);
    }
}

static inline void check_cleanup(void)
{
    char cmd[600];
    if (check_dir[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", check_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", check_dir);
    }
}

static inline int check_exit(void)
{
    check_cleanup();
    if (check_failures)
        fprintf(stderr, "%d check(s) failed\n", check_failures);
    return check_failures ? 1 : 0;
}

#endif
