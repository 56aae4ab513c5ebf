/*
 * buf.h: a growable byte buffer. The owner embeds it and calls gw_buf_free.
 * Growth aborts on out-of-memory except through gw_buf_try_reserve, which is
 * used for client-sized data (bodies) so that a huge body fails one request
 * instead of the process.
 */
#ifndef GW_BUF_H
#define GW_BUF_H

#include <stddef.h>
#include <string.h>

typedef struct gw_buf_s {
  char *base; /* heap memory, NULL until first growth */
  size_t len; /* bytes in use */
  size_t cap; /* bytes allocated */
} gw_buf_t;

void gw_buf_init(gw_buf_t *b);
void gw_buf_free(gw_buf_t *b);
/* The growing half of gw_buf_reserve, out of line. */
void gw_buf_grow(gw_buf_t *b, size_t extra);
/* Ensures room for `extra` more bytes; aborts on OOM. Inline with append:
 * every answer's head is built from a handful of appends that almost never
 * grow the buffer, and a call each cost more than the copy. */
static inline void gw_buf_reserve(gw_buf_t *b, size_t extra) {
  if (extra > b->cap - b->len) gw_buf_grow(b, extra);
}
/* Same, but returns -ENOMEM instead of aborting. */
int gw_buf_try_reserve(gw_buf_t *b, size_t extra);
static inline void gw_buf_append(gw_buf_t *b, const void *p, size_t n) {
  if (n == 0) return; /* p may be NULL then; memcpy must not see it */
  gw_buf_reserve(b, n);
  memcpy(b->base + b->len, p, n);
  b->len += n;
}
void gw_buf_append_str(gw_buf_t *b, const char *s);
/* Drops the first `n` bytes, moving the rest to the front. */
void gw_buf_consume(gw_buf_t *b, size_t n);
/* Appends printf-style formatted text. */
void gw_buf_printf(gw_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends `s` (n bytes) as a JSON string, quotes included: '"' and '\' are
 * escaped, control bytes become \u00XX, valid UTF-8 sequences pass as they
 * are, and each byte of an invalid sequence (a stray byte >= 0x80, a cut,
 * overlong or surrogate form) becomes \ufffd, so the output is always
 * valid JSON. */
void gw_buf_append_json(gw_buf_t *b, const char *s, size_t n);
/* The length of the valid UTF-8 sequence that starts `s` (n > 0 bytes
 * left), or 0 when it is not one (RFC 3629: no overlong forms, surrogates
 * or code points past U+10FFFF). */
size_t gw_utf8_seq_len(const char *s, size_t n);
/* The longest prefix of `s` (n bytes), at most `max` bytes, that does not
 * split a UTF-8 sequence. */
size_t gw_utf8_cut(const char *s, size_t n, size_t max);

#endif
