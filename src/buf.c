/* buf.c: the growable buffer of buf.h. */
#include "buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"

void gw_buf_init(gw_buf_t *b) {
  b->base = NULL;
  b->len = b->cap = 0;
}

void gw_buf_free(gw_buf_t *b) {
  free(b->base);
  gw_buf_init(b);
}

/* The capacity for `extra` more bytes, doubling; 0 if that overflows size_t
 * (a client-sized request that no allocation could satisfy anyway). */
static size_t grown_cap(const gw_buf_t *b, size_t extra) {
  if (extra > SIZE_MAX - b->len) return 0;
  size_t want = b->len + extra;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < want) cap = cap > SIZE_MAX / 2 ? want : cap * 2;
  return cap;
}

/* Only called by gw_buf_reserve, which has checked that `extra` does not fit. */
void gw_buf_grow(gw_buf_t *b, size_t extra) {
  size_t cap = grown_cap(b, extra);
  if (cap == 0) {
    fprintf(stderr, "gateway: buffer size overflow\n");
    abort();
  }
  b->base = gw_xrealloc(b->base, cap);
  b->cap = cap;
}

int gw_buf_try_reserve(gw_buf_t *b, size_t extra) {
  if (extra <= SIZE_MAX - b->len && b->len + extra <= b->cap) return 0;
  size_t cap = grown_cap(b, extra);
  if (cap == 0) return -ENOMEM;
  char *p = realloc(b->base, cap);
  if (!p) return -ENOMEM;
  b->base = p;
  b->cap = cap;
  return 0;
}

void gw_buf_append_str(gw_buf_t *b, const char *s) { gw_buf_append(b, s, strlen(s)); }

void gw_buf_consume(gw_buf_t *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->base, b->base + n, b->len - n);
  b->len -= n;
}

void gw_buf_printf(gw_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n <= 0) return;
  gw_buf_reserve(b, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

size_t gw_utf8_seq_len(const char *p, size_t n) {
  const unsigned char *s = (const unsigned char *)p;
  unsigned char lo = 0x80, hi = 0xbf; /* the second byte's range */
  size_t len;
  if (s[0] < 0x80) return 1;
  if (s[0] >= 0xc2 && s[0] <= 0xdf) {
    len = 2;
  } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
    len = 3;
    if (s[0] == 0xe0) lo = 0xa0; /* shorter forms are overlong */
    if (s[0] == 0xed) hi = 0x9f; /* U+D800..DFFF are surrogates */
  } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
    len = 4;
    if (s[0] == 0xf0) lo = 0x90; /* overlong */
    if (s[0] == 0xf4) hi = 0x8f; /* past U+10FFFF */
  } else {
    return 0; /* a continuation byte, 0xc0/0xc1 (overlong) or 0xf5.. */
  }
  if (n < len || s[1] < lo || s[1] > hi) return 0;
  for (size_t k = 2; k < len; k++)
    if ((s[k] & 0xc0) != 0x80) return 0;
  return len;
}

size_t gw_utf8_cut(const char *s, size_t n, size_t max) {
  size_t i = 0;
  while (i < n) {
    size_t len = gw_utf8_seq_len(s + i, n - i);
    if (len == 0) len = 1; /* a stray byte is cut like one character */
    if (i + len > max) break;
    i += len;
  }
  return i;
}

/* Appends the non-ASCII sequence at s[*i] and moves *i to its last byte.
 * JSON must be valid UTF-8, and what C writes (error texts from scripts,
 * paths) may not be: each byte of an invalid sequence becomes \ufffd. */
static void append_json_utf8(gw_buf_t *b, const char *s, size_t n, size_t *i) {
  size_t len = gw_utf8_seq_len(s + *i, n - *i);
  if (len == 0) {
    gw_buf_append(b, "\\ufffd", 6);
    return;
  }
  gw_buf_append(b, s + *i, len);
  *i += len - 1;
}

void gw_buf_append_json(gw_buf_t *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  gw_buf_reserve(b, n + 2);
  b->base[b->len++] = '"';
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') {
      char e[2] = {'\\', (char)ch};
      gw_buf_append(b, e, 2);
    } else if (ch < 0x20 || ch == 0x7f) {
      char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
      gw_buf_append(b, e, 6);
    } else if (ch < 0x80) {
      gw_buf_append(b, &s[i], 1);
    } else {
      append_json_utf8(b, s, n, &i);
    }
  }
  gw_buf_append(b, "\"", 1);
}
