/* file.c: whole-file writes and the error formatter of ditmoe_io.
 *
 * Writers encode into memory first and then write the file in one go, so a
 * failed encoding never leaves a half-written file behind; a failed write
 * (disk full) removes what it wrote.
 */
#include "dio.h"
#include "dio_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int io_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

int io_write_file(const char *path, const void *buf, size_t len, char *err,
                  size_t errlen)
{
    if (!path || (!buf && len))
        return io_errf(err, errlen, DIT_E_INVAL, "io_write_file: no path or data");
    FILE *f = fopen(path, "wb");
    if (!f)
        return io_errf(err, errlen, DIT_E_IO, "%s: cannot create: %s", path,
                       strerror(errno));
    size_t n = len ? fwrite(buf, 1, len, f) : 0;
    int e = n == len ? 0 : errno;
    if (fclose(f) && !e)
        e = errno ? errno : EIO;
    if (n != len || e) {
        unlink(path);
        return io_errf(err, errlen, DIT_E_IO, "%s: cannot write: %s", path,
                       strerror(e ? e : EIO));
    }
    return DIT_OK;
}

int io_write_owned(const char *path, void *buf, size_t len, char *err, size_t errlen)
{
    int rc = io_write_file(path, buf, len, err, errlen);
    free(buf);
    return rc;
}
