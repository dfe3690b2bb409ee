/* err.h -- the project-wide error codes and the error struct.
 *
 * Every fallible function in celeriac returns CEL_OK (0) or a negative CEL_E*
 * code and, when given a non-NULL cel_err_t, fills it with the code and a
 * bounded human-readable message. Used by protocol/, worker/ and model/.
 */
#ifndef CEL_ERR_H
#define CEL_ERR_H

#include <stddef.h>

enum {
    CEL_OK = 0,
    CEL_ENOMEM = -1, /* allocation failed */
    CEL_EINVAL = -2, /* bad argument from our own code or the command line */
    CEL_EPROTO = -3, /* malformed message: not JSON, wrong shape, bad base64 */
    CEL_ELIMIT = -4, /* a size, count or depth passed a named limit */
    CEL_EAGAIN = -5, /* need more input (incremental parsers) */
    CEL_EIO = -6,    /* an I/O call failed (connection, pipe, file) */
    CEL_ETYPE = -7,  /* a value has the wrong type (task arguments) */
    CEL_EBODY = -8,  /* envelope fine, body undecodable: the task is known, its args are not */
    CEL_ENOTFOUND = -9,
    CEL_ESTATE = -10, /* operation not valid in the object's current state */
};

#define CEL_ERR_MSG_MAX 256

typedef struct cel_err {
    int code;
    char msg[CEL_ERR_MSG_MAX];
} cel_err_t;

/* Stores code and a printf-style message in err (if not NULL), truncating the
 * message to CEL_ERR_MSG_MAX-1 bytes. Returns code, so callers can
 * `return cel_err_set(err, CEL_EPROTO, "...")`. */
int cel_err_set(cel_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Clears err to CEL_OK with an empty message. err may be NULL. */
void cel_err_clear(cel_err_t *err);

/* A short constant name for a code ("EPROTO"), for logs. */
const char *cel_err_name(int code);

#endif
