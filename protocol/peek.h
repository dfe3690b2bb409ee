/* peek.h -- the ids of a kombu JSON envelope, read without parsing the document.
 *
 * For a message the worker refuses before decoding it (bigger than
 * --max-message-size): a scan that walks the envelope's top-level object,
 * reads the few string fields a FAILURE needs from "headers" and
 * "properties", skips everything else (the body string with memchr) and stops
 * as soon as both objects have been read. It never allocates, never reads past
 * len (the buffer need not be NUL-terminated), and bounds nesting at
 * CEL_MSG_MAX_DEPTH. Pure; no I/O; main process.
 */
#ifndef CEL_PEEK_H
#define CEL_PEEK_H

#include <stddef.h>

#include "../common/err.h"

#define CEL_PEEK_STR_MAX 255 /* longest field value kept, in bytes of UTF-8 */

/* What the scan found. Each field is a NUL-terminated UTF-8 string, "" when
 * the field is absent, not a string, longer than CEL_PEEK_STR_MAX, or holds
 * what a C string cannot carry (\u0000, a lone surrogate, invalid UTF-8). */
typedef struct cel_peek {
    char id[CEL_PEEK_STR_MAX + 1];             /* headers.id */
    char task[CEL_PEEK_STR_MAX + 1];           /* headers.task */
    char root_id[CEL_PEEK_STR_MAX + 1];        /* headers.root_id */
    char parent_id[CEL_PEEK_STR_MAX + 1];      /* headers.parent_id */
    char group[CEL_PEEK_STR_MAX + 1];          /* headers.group */
    char correlation_id[CEL_PEEK_STR_MAX + 1]; /* properties.correlation_id */
    char reply_to[CEL_PEEK_STR_MAX + 1];       /* properties.reply_to */
} cel_peek_t;

/* Scans buf[0..len) (borrowed; not NUL-terminated) as a kombu envelope
 * {"body": ..., "headers": {...}, "properties": {...}, ...}. The first
 * "headers" and "properties" objects count; the scan stops when both were
 * read, or at the end of the envelope object (what follows it is not looked
 * at). Returns CEL_OK (fields that were not found are ""), CEL_EPROTO when the
 * text is not a JSON object or ends before the scan could finish, CEL_ELIMIT
 * when it nests deeper than CEL_MSG_MAX_DEPTH before that. On error every
 * field of *out is "". */
int cel_peek_envelope(const char *buf, size_t len, cel_peek_t *out, cel_err_t *err);

#endif
