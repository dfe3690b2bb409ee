/* respcut.h -- a RESP stream filter that cuts bulk strings over a size limit.
 *
 * Bytes read from a Redis connection go in (cel_respcut_feed), the same bytes
 * come out to a sink (hiredis's reader), except that a bulk string longer than
 * the limit comes out as a short one in the "cut" form below, built from its
 * first CEL_RESPCUT_HEAD and last CEL_RESPCUT_TAIL bytes as they stream past.
 * So a huge value (a 200 MB message) costs O(CEL_RESPCUT_TAIL) memory, not
 * O(value). Replies are RESP2 (+ - : * $); a stream that is not is passed on
 * untouched from there on. Pure and incremental: no I/O, any split of the
 * input gives the same output. Main process.
 *
 * The cut form (also written by the broker's POP script for messages it cuts
 * server-side, with no head):
 *   CEL_RESPCUT_MAGIC "<original length> <head length>\n" <head bytes> <tail bytes>
 */
#ifndef CEL_RESPCUT_H
#define CEL_RESPCUT_H

#include <stddef.h>

#include "../common/err.h"

#define CEL_RESPCUT_MAGIC     "\0celeriac-cut "
#define CEL_RESPCUT_MAGIC_LEN 14
#define CEL_RESPCUT_HEAD      64
#define CEL_RESPCUT_TAIL      (256 * 1024)

typedef struct cel_respcut cel_respcut_t;

/* Where output goes: CEL_OK, or an error that stops the feed (returned). */
typedef int (*cel_respcut_sink)(void *priv, const char *p, size_t n);

/* A filter cutting bulk strings longer than limit bytes (at least
 * 2 * CEL_RESPCUT_HEAD + 2: a smaller limit is raised to that). NULL on ENOMEM. */
cel_respcut_t *cel_respcut_new(size_t limit);

/* Frees the filter; NULL is a no-op. */
void cel_respcut_free(cel_respcut_t *f);

/* Forgets a partly read reply: the next byte starts a new stream. */
void cel_respcut_reset(cel_respcut_t *f);

/* Filters buf[0..n) into sink. CEL_OK, CEL_ENOMEM (a cut needs its tail buffer),
 * or the sink's error. After an error the filter must be reset. */
int cel_respcut_feed(cel_respcut_t *f, const char *buf, size_t n, cel_respcut_sink sink,
                     void *priv);

/* Reads a value in the cut form. Returns 1 and fills the parts (pointers into
 * s) when s is one, else 0. */
int cel_respcut_parse(const char *s, size_t n, size_t *orig_len, const char **head,
                      size_t *head_len, const char **tail, size_t *tail_len);

#endif
