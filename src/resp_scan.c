/*
 * resp_scan.c: counting RESP2 replies as bytes arrive (see resp_scan.h).
 *
 * RESP2: a reply is a line "+text", "-error", ":integer", a bulk string
 * "$len" followed by len bytes and CRLF ("$-1" is nil), or an array
 * "*count" followed by count replies ("*-1" is nil). Lines end in CRLF.
 */
#include "resp_scan.h"

#include <string.h>

/* One element ended: it may end the arrays around it, and the outermost
 * one ending is a whole reply. */
static void element_done(gw_resp_scan_t *s, uint64_t *replies) {
  while (s->depth > 0) {
    if (--s->remain[s->depth - 1] > 0) return;
    s->depth--;
  }
  (*replies)++;
}

/* A "*" or "$" line (`type`) ended with the length in s->num. */
static int length_line_done(gw_resp_scan_t *s, char type, uint64_t *replies) {
  if (s->digits == 0 || (s->negative && s->num != 1)) {
    s->broken = 1; /* only -1 (nil) may be negative */
    return GW_RESP_OK;
  }
  if (s->negative) {
    element_done(s, replies);
    return GW_RESP_OK;
  }
  if (type == '$') {
    s->bulk_left = (uint64_t)s->num + 2;
    return GW_RESP_OK;
  }
  if (s->num == 0) {
    element_done(s, replies);
  } else if (s->depth == GW_RESP_MAX_DEPTH) {
    s->broken = 1;
  } else {
    s->remain[s->depth++] = s->num;
  }
  return GW_RESP_OK;
}

/* One byte of a line after its type byte. Returns GW_RESP_TOO_BIG as soon
 * as a length passes its cap, before the rest of it arrives. */
static int line_byte(gw_resp_scan_t *s, char ch, uint64_t *replies) {
  int counted = s->type == '$' || s->type == '*';
  if (ch == '\n') {
    char type = s->type;
    s->type = 0;
    if (type == '$' || type == '*') return length_line_done(s, type, replies);
    element_done(s, replies);
    return GW_RESP_OK;
  }
  if (!counted || ch == '\r') return GW_RESP_OK;
  if (ch == '-' && s->digits == 0 && !s->negative) {
    s->negative = 1;
    return GW_RESP_OK;
  }
  if (ch < '0' || ch > '9') {
    s->broken = 1;
    return GW_RESP_OK;
  }
  s->num = s->num * 10 + (ch - '0');
  s->digits++;
  int64_t cap = s->type == '$' ? GW_RESP_MAX_BULK : GW_RESP_MAX_ELEMENTS;
  if (!s->negative && s->num > cap) return GW_RESP_TOO_BIG;
  if (s->num > cap) s->broken = 1; /* a long negative length: not -1 */
  return GW_RESP_OK;
}

int gw_resp_scan(gw_resp_scan_t *s, const char *p, size_t n, uint64_t *replies) {
  const char *end = p + n;
  while (p < end && !s->broken) {
    if (s->bulk_left > 0) {
      size_t k = (size_t)(end - p) < s->bulk_left ? (size_t)(end - p) : (size_t)s->bulk_left;
      p += k;
      s->bulk_left -= k;
      if (s->bulk_left == 0) element_done(s, replies);
      continue;
    }
    if (s->type == 0) {
      char t = *p++;
      if (!memchr("+-:$*", t, 5)) {
        s->broken = 1;
        break;
      }
      s->type = t;
      s->num = 0;
      s->negative = 0;
      s->digits = 0;
      continue;
    }
    if (s->type != '$' && s->type != '*') {
      /* A text line: skip to its end at once. */
      const char *nl = memchr(p, '\n', (size_t)(end - p));
      if (!nl) break;
      p = nl;
    }
    if (line_byte(s, *p++, replies) != GW_RESP_OK) return GW_RESP_TOO_BIG;
  }
  return GW_RESP_OK;
}
