/*
 * json_check.c: a strict RFC 8259 syntax check (see json_check.h).
 *
 * One pass, no allocation: an explicit stack of the open containers, so
 * that a deep text cannot exhaust the C stack.
 */
#include "json_check.h"

#include "buf.h"
#include "ffi.h"

/* The text being checked and the position reached. */
typedef struct {
  const unsigned char *s;
  size_t n;
  size_t i;
} cursor_t;

static int at(const cursor_t *c, unsigned char ch) { return c->i < c->n && c->s[c->i] == ch; }

static int digit_at(const cursor_t *c) { return c->i < c->n && c->s[c->i] >= '0' && c->s[c->i] <= '9'; }

static void skip_digits(cursor_t *c) {
  while (digit_at(c)) c->i++;
}

static void skip_space(cursor_t *c) {
  while (c->i < c->n) {
    unsigned char ch = c->s[c->i];
    if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') return;
    c->i++;
  }
}

static int hex(unsigned char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static unsigned hex_value(unsigned char ch) {
  return ch <= '9' ? (unsigned)(ch - '0') : (unsigned)((ch | 0x20) - 'a' + 10);
}

/* The code unit of "\uXXXX" at s (6 bytes there), or -1 if it is not one. */
static long unicode_escape(const unsigned char *s, size_t left) {
  if (left < 6 || s[0] != '\\' || s[1] != 'u') return -1;
  unsigned v = 0;
  for (size_t k = 2; k < 6; k++) {
    if (!hex(s[k])) return -1;
    v = v * 16 + hex_value(s[k]);
  }
  return (long)v;
}

/* A string, the cursor on its opening quote: escapes as the RFC lists them,
 * no control byte, valid UTF-8. */
static int string(cursor_t *c) {
  c->i++;
  while (c->i < c->n) {
    unsigned char ch = c->s[c->i];
    if (ch == '"') {
      c->i++;
      return 1;
    }
    if (ch < 0x20) return 0;
    if (ch == '\\') {
      if (c->i + 1 >= c->n) return 0;
      unsigned char e = c->s[c->i + 1];
      if (e == 'u') {
        /* A surrogate only as a pair, high then low: a lone one is no
         * character, and strict parsers refuse the whole text (RFC 7493). */
        long u = unicode_escape(c->s + c->i, c->n - c->i);
        if (u < 0 || (u >= 0xDC00 && u <= 0xDFFF)) return 0;
        c->i += 6;
        if (u >= 0xD800 && u <= 0xDBFF) {
          long low = unicode_escape(c->s + c->i, c->n - c->i);
          if (low < 0xDC00 || low > 0xDFFF) return 0;
          c->i += 6;
        }
      } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' ||
                 e == 't') {
        c->i += 2;
      } else {
        return 0;
      }
      continue;
    }
    size_t len = ch < 0x80 ? 1 : gw_utf8_seq_len((const char *)c->s + c->i, c->n - c->i);
    if (len == 0) return 0;
    c->i += len;
  }
  return 0;
}

/* -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static int number(cursor_t *c) {
  if (at(c, '-')) c->i++;
  if (at(c, '0')) {
    c->i++;
  } else if (digit_at(c)) {
    skip_digits(c);
  } else {
    return 0;
  }
  if (at(c, '.')) {
    c->i++;
    if (!digit_at(c)) return 0;
    skip_digits(c);
  }
  if (at(c, 'e') || at(c, 'E')) {
    c->i++;
    if (at(c, '+') || at(c, '-')) c->i++;
    if (!digit_at(c)) return 0;
    skip_digits(c);
  }
  return 1;
}

static int word(cursor_t *c, const char *w, size_t len) {
  if (c->n - c->i < len) return 0;
  for (size_t k = 0; k < len; k++)
    if (c->s[c->i + k] != (unsigned char)w[k]) return 0;
  c->i += len;
  return 1;
}

/* A member's name and its colon, the cursor on the name. */
static int member_name(cursor_t *c) {
  if (!at(c, '"') || !string(c)) return 0;
  skip_space(c);
  if (!at(c, ':')) return 0;
  c->i++;
  return 1;
}

/* A scalar value (string, number, literal), the cursor on its first byte. */
static int scalar(cursor_t *c) {
  if (c->i >= c->n) return 0;
  unsigned char ch = c->s[c->i];
  if (ch == '"') return string(c);
  if (ch == '-' || (ch >= '0' && ch <= '9')) return number(c);
  if (ch == 't') return word(c, "true", 4);
  if (ch == 'f') return word(c, "false", 5);
  if (ch == 'n') return word(c, "null", 4);
  return 0;
}

long gw_json_check(const char *text, size_t n) {
  cursor_t c = {(const unsigned char *)text, n, 0};
  unsigned char open[GW_JSON_MAX_DEPTH]; /* '{' or '[' of each container open */
  size_t depth = 0;
  int want_value = 1;
  for (;;) {
    skip_space(&c);
    if (want_value) {
      if (at(&c, '{') || at(&c, '[')) {
        if (depth == GW_JSON_MAX_DEPTH) return (long)c.i;
        unsigned char kind = c.s[c.i++];
        open[depth++] = kind;
        skip_space(&c);
        if (at(&c, kind == '{' ? '}' : ']')) {
          c.i++;
          depth--;
          want_value = 0;
        } else if (kind == '{' && !member_name(&c)) {
          return (long)c.i;
        }
        continue;
      }
      if (!scalar(&c)) return (long)c.i;
      want_value = 0;
      continue;
    }
    if (depth == 0) return c.i == c.n ? -1 : (long)c.i;
    unsigned char kind = open[depth - 1];
    if (at(&c, ',')) {
      c.i++;
      if (kind == '{') {
        skip_space(&c);
        if (!member_name(&c)) return (long)c.i;
      }
      want_value = 1;
    } else if (at(&c, kind == '{' ? '}' : ']')) {
      c.i++;
      depth--;
    } else {
      return (long)c.i;
    }
  }
}

/* For lua/gateway/aggregate.lua. */
GW_FFI_EXPORT long gw_ffi_json_check(const char *s, size_t n) { return gw_json_check(s, n); }
