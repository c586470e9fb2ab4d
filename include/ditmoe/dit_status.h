/* dit_status.h: the status codes every ditmoe function returns.
 *
 * Functions return DIT_OK (0) or a negative dit_status. The file-format
 * readers below the model use the same codes, so they include only this
 * header, not the model API.
 */
#ifndef DIT_STATUS_H
#define DIT_STATUS_H

#include "dit_export.h"

#ifdef __cplusplus
extern "C" {
#endif

enum dit_status {
    DIT_OK = 0,
    DIT_E_INVAL = -1,       /* an argument or parameter is out of range */
    DIT_E_NOMEM = -2,       /* allocation failed */
    DIT_E_IO = -3,          /* a file could not be opened, read or mapped */
    DIT_E_FORMAT = -4,      /* a file is malformed or disagrees with its config */
    DIT_E_UNSUPPORTED = -5, /* valid, but not something this build can run */
    DIT_E_CANCELLED = -6,   /* a progress callback asked to stop */
};

/* Returns a static, human-readable name for a dit_status. Never NULL. */
DIT_API const char *dit_strerror(int status);

#ifdef __cplusplus
}
#endif
#endif
