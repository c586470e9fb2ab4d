/* status.c: dit_strerror, the names of the status codes every layer
 * returns (ditmoe/dit_status.h). It lives in the lowest layer so the
 * format readers' callers can name their errors without the model. */
#include <ditmoe/dit_status.h>

const char *dit_strerror(int status)
{
    switch (status) {
    case DIT_OK: return "ok";
    case DIT_E_INVAL: return "invalid argument";
    case DIT_E_NOMEM: return "out of memory";
    case DIT_E_IO: return "I/O error";
    case DIT_E_FORMAT: return "malformed or inconsistent file";
    case DIT_E_UNSUPPORTED: return "unsupported";
    case DIT_E_CANCELLED: return "cancelled";
    default: return "unknown status";
    }
}
