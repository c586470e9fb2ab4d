/* zip.h: the index of a zip archive held in memory (engine-internal).
 *
 * Just what reading a torch.save checkpoint needs: the central directory
 * (ZIP64 included) of an archive of stored (uncompressed) entries, each
 * entry's data located through its local header and checked to lie inside
 * the archive. Nothing is copied or decompressed.
 */
#ifndef DIT_ZIP_H
#define DIT_ZIP_H

#include <stddef.h>
#include <stdint.h>

typedef struct zip_entry {
    const char *name;   /* inside the archive, not NUL-terminated */
    size_t name_len;
    const unsigned char *data;
    uint64_t size;
    uint32_t crc;       /* CRC-32 the archive claims for the data */
} zip_entry;

typedef struct zip_archive {
    zip_entry *entries; /* in central-directory order */
    size_t n;
    const zip_entry **sorted; /* entries sorted by name, for zip_find */
} zip_archive;

/* Indexes the zip archive data[0..size). `what` names it in messages.
 * Refuses (DIT_E_FORMAT, or DIT_E_UNSUPPORTED for valid features this
 * reader lacks) a missing or inconsistent end record, more entries than the
 * central directory can hold, multi-disk archives, encrypted or compressed
 * entries, duplicate names and data outside the archive. On success z owns
 * its index (free with zip_close); entries point into data. */
int zip_open_mem(zip_archive *z, const void *data, size_t size, const char *what,
                 char *err, size_t errlen);

/* The entry named name[0..len), or NULL. */
const zip_entry *zip_find(const zip_archive *z, const char *name, size_t len);

/* Frees the index (not the data); a zeroed archive is a no-op. */
void zip_close(zip_archive *z);

/* CRC-32 (the zip/PNG polynomial) of data[0..n). */
uint32_t zip_crc32(const void *data, size_t n);

#endif
