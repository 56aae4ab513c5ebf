/*
 * request.c: allocation, header lookup and edits, and request ids.
 *
 * Header lookup is a linear, case-insensitive scan of the parsed slices: a
 * request has a dozen headers, and a scan over contiguous slices beats
 * building a hash table that most requests would never use.
 */
#include "request.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "errors.h"

static gw_req_t *free_list;
static uint32_t serial_counter = 1;

gw_req_t *gw_req_new(gw_conn_t *conn) {
  gw_req_t *r = free_list;
  if (r) {
    free_list = r->next_free;
  } else {
    r = gw_xcalloc(1, sizeof *r);
    gw_arena_init(&r->pool);
  }
  uint32_t serial = ++serial_counter;
  gw_arena_t pool = r->pool;
  gw_buf_t body = r->body, head = r->resp_head;
  memset(r, 0, sizeof *r);
  r->serial = serial;
  r->pool = pool;
  r->body = body;
  r->body.len = 0;
  r->resp_head = head;
  r->resp_head.len = 0;
  r->conn = conn;
  return r;
}

void gw_req_free(gw_req_t *r) {
  r->serial = ++serial_counter;
  r->conn = NULL;
  gw_arena_reset(&r->pool);
  /* Keep small buffers for the next request; give big bodies back. */
  if (r->body.cap > 65536) gw_buf_free(&r->body);
  if (r->resp_head.cap > 65536) gw_buf_free(&r->resp_head);
  r->next_free = free_list;
  free_list = r;
}

const char *gw_req_buffer(const gw_req_t *r) { return r->conn->rbuf.base; }

const gw_header_edit_t *gw_req_header_edit(const gw_req_t *r, const char *name, size_t len) {
  for (const gw_header_edit_t *e = r->edits; e; e = e->next)
    if (e->name_len == len && strncasecmp(e->name, name, len) == 0) return e;
  return NULL;
}

const char *gw_req_header(gw_req_t *r, const char *name, size_t name_len, size_t *len) {
  const gw_header_edit_t *e = gw_req_header_edit(r, name, name_len);
  if (e) {
    *len = e->value_len;
    return e->value;
  }
  return gw_req_header_client(r, name, name_len, len);
}

const char *gw_req_header_client(gw_req_t *r, const char *name, size_t name_len, size_t *len) {
  const char *buf = gw_req_buffer(r);
  const gw_header_t *first = NULL;
  size_t total = 0, count = 0;
  for (uint32_t i = 0; i < r->nheaders; i++) {
    const gw_header_t *h = &r->headers[i];
    if (h->name_len != name_len || strncasecmp(buf + h->name_off, name, name_len) != 0) continue;
    if (!first) first = h;
    total += h->value_len + 2;
    count++;
  }
  if (!first) return NULL;
  if (count == 1) {
    *len = first->value_len;
    return buf + first->value_off;
  }
  /* Several fields of one name are one field joined by commas (RFC 9110 5.3). */
  char *out = gw_arena_alloc(&r->pool, total), *p = out;
  for (uint32_t i = 0; i < r->nheaders; i++) {
    const gw_header_t *h = &r->headers[i];
    if (h->name_len != name_len || strncasecmp(buf + h->name_off, name, name_len) != 0) continue;
    if (p != out) {
      memcpy(p, ", ", 2);
      p += 2;
    }
    memcpy(p, buf + h->value_off, h->value_len);
    p += h->value_len;
  }
  *len = (size_t)(p - out);
  return out;
}

/* RFC 9110 5.6.2 token characters, as a table: this runs for every byte of
 * every header name a script sets. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1, ['-'] = 1,
    ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,  ['0'] = 1, ['1'] = 1, ['2'] = 1,
    ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1,  ['9'] = 1, ['A'] = 1, ['B'] = 1,
    ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,  ['I'] = 1, ['J'] = 1, ['K'] = 1,
    ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1,  ['R'] = 1, ['S'] = 1, ['T'] = 1,
    ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,  ['a'] = 1, ['b'] = 1, ['c'] = 1,
    ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,  ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,  ['s'] = 1, ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static int is_tchar(unsigned char c) { return tchar[c]; }

int gw_header_valid(const char *name, size_t name_len, const char *value, size_t value_len) {
  if (name_len == 0) return 0;
  for (size_t i = 0; i < name_len; i++)
    if (!is_tchar((unsigned char)name[i])) return 0;
  /* CR, LF and NUL are the only bytes a value may not hold here; memchr
   * (vectorised) beats a byte loop even for short values. */
  if (value && value_len &&
      (memchr(value, '\r', value_len) || memchr(value, '\n', value_len) || memchr(value, 0, value_len)))
    return 0;
  return 1;
}

int gw_req_set_header(gw_req_t *r, const char *name, size_t name_len, const char *value, size_t value_len) {
  if (!gw_header_valid(name, name_len, value, value_len)) return GW_EHEADER;
  gw_header_edit_t *e = gw_arena_alloc(&r->pool, sizeof *e);
  e->name = gw_arena_strndup(&r->pool, name, name_len);
  for (size_t i = 0; i < name_len; i++)
    if (e->name[i] >= 'A' && e->name[i] <= 'Z') e->name[i] = (char)(e->name[i] + 32);
  e->name_len = name_len;
  e->value = value ? gw_arena_strndup(&r->pool, value, value_len) : NULL;
  e->value_len = value ? value_len : 0;
  e->next = r->edits;
  r->edits = e;
  return 0;
}

/* splitmix64: a fast, well-mixed 64-bit sequence; ids need to be unique, not secret. */
static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

const char *gw_req_id(gw_req_t *r) {
  static uint64_t seed, counter;
  if (r->id[0]) return r->id;
  if (seed == 0) {
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
      seed = (uint64_t)time(NULL) ^ (uint64_t)getpid() << 32;
    seed |= 1;
  }
  counter++;
  uint64_t a = mix64(seed ^ counter), b = mix64(a ^ seed);
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 16; i++) {
    r->id[i] = hex[(a >> (60 - 4 * i)) & 15];
    r->id[16 + i] = hex[(b >> (60 - 4 * i)) & 15];
  }
  r->id[32] = '\0';
  return r->id;
}
