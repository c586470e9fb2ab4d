/* dio_internal.h: helpers shared by the files of ditmoe_io (not installed). */
#ifndef DIT_IO_INTERNAL_H
#define DIT_IO_INTERNAL_H

#include <stddef.h>

#if defined(__GNUC__)
#define IO_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define IO_PRINTF(f, a)
#endif

/* Formats a message into err (may be NULL) and returns code. */
int io_errf(char *err, size_t errlen, int code, const char *fmt, ...) IO_PRINTF(4, 5);

/* io_write_file, then frees buf (which an encoder malloc'd). */
int io_write_owned(const char *path, void *buf, size_t len, char *err, size_t errlen);

#endif
