/* err.c -- cel_err_t helpers: set, clear, name a code.
 *
 * No I/O, no allocation; safe to call from any process or thread.
 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

int cel_err_set(cel_err_t *err, int code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void cel_err_clear(cel_err_t *err) {
    if (err) {
        err->code = CEL_OK;
        err->msg[0] = '\0';
    }
}

const char *cel_err_name(int code) {
    switch (code) {
    case CEL_OK: return "OK";
    case CEL_ENOMEM: return "ENOMEM";
    case CEL_EINVAL: return "EINVAL";
    case CEL_EPROTO: return "EPROTO";
    case CEL_ELIMIT: return "ELIMIT";
    case CEL_EAGAIN: return "EAGAIN";
    case CEL_EIO: return "EIO";
    case CEL_ETYPE: return "ETYPE";
    case CEL_EBODY: return "EBODY";
    case CEL_ENOTFOUND: return "ENOTFOUND";
    case CEL_ESTATE: return "ESTATE";
    }
    return "E?";
}
