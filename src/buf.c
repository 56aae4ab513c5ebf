/* buf.c: the growable buffer of buf.h. */
#include "buf.h"

#include <errno.h>
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

static size_t grown_cap(const gw_buf_t *b, size_t extra) {
  size_t want = b->len + extra;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < want) cap *= 2;
  return cap;
}

void gw_buf_reserve(gw_buf_t *b, size_t extra) {
  if (b->len + extra <= b->cap) return;
  size_t cap = grown_cap(b, extra);
  b->base = gw_xrealloc(b->base, cap);
  b->cap = cap;
}

int gw_buf_try_reserve(gw_buf_t *b, size_t extra) {
  if (b->len + extra <= b->cap) return 0;
  size_t cap = grown_cap(b, extra);
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
