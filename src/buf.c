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

void gw_buf_reserve(gw_buf_t *b, size_t extra) {
  if (b->len + extra <= b->cap && extra <= SIZE_MAX - b->len) return;
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

void gw_buf_append(gw_buf_t *b, const void *p, size_t n) {
  if (n == 0) return; /* p may be NULL then; memcpy must not see it */
  gw_buf_reserve(b, n);
  memcpy(b->base + b->len, p, n);
  b->len += n;
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
    } else {
      gw_buf_append(b, &s[i], 1);
    }
  }
  gw_buf_append(b, "\"", 1);
}
