/* check.h: the engine unit tests' assertion: CHECK(cond, fmt, ...) counts a
 * failure and prints where and why, without stopping the test. */
#ifndef DIT_TEST_CHECK_H
#define DIT_TEST_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        if (!(cond)) {                                          \
            failures++;                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);         \
            printf(__VA_ARGS__);                                \
            printf("\n");                                       \
        }                                                       \
    } while (0)

#endif
