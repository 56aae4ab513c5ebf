/*
 * test_mem.c: the arena of src/mem.c and the growable buffer of src/buf.c.
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/mem.c"
#include "../../src/buf.c"

#include <errno.h>
#include <stdint.h>

#include "runner.h"

/* Under ASan an impossible malloc must return NULL (as it does in production)
 * instead of stopping the program: try_reserve is tested on that path. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* ---- arena ---- */

static size_t chunk_count(const gw_arena_t *a) {
  size_t n = 0;
  for (const gw_arena_chunk_t *c = a->head; c; c = c->next) n++;
  return n;
}

static const gw_arena_chunk_t *oldest_chunk(const gw_arena_t *a) {
  const gw_arena_chunk_t *c = a->head;
  while (c && c->next) c = c->next;
  return c;
}

/* 1 if [p, p+n) lies inside one of the arena's chunks. */
static int inside_arena(const gw_arena_t *a, const void *p, size_t n) {
  for (const gw_arena_chunk_t *c = a->head; c; c = c->next) {
    const char *lo = c->data, *hi = c->data + c->size;
    if ((const char *)p >= lo && (const char *)p + n <= hi) return 1;
  }
  return 0;
}

TEST(arena_init_is_empty) {
  gw_arena_t a;
  memset(&a, 0x5a, sizeof a);
  gw_arena_init(&a);
  CHECK_PTR_EQ(a.head, NULL);
  CHECK_EQ(a.used, 0);
  gw_arena_reset(&a); /* resetting an arena that never allocated is fine */
  CHECK_PTR_EQ(a.head, NULL);
  gw_arena_free(&a);
  CHECK_PTR_EQ(a.head, NULL);
}

TEST(arena_alignment) {
  gw_arena_t a;
  gw_arena_init(&a);
  static const size_t sizes[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 100, 255, 1000, 4095, 4096, 5000};
  char *prev = NULL;
  size_t prev_n = 0;
  for (int round = 0; round < 20; round++) {
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
      size_t n = sizes[i];
      char *p = gw_arena_alloc(&a, n);
      REQUIRE(p != NULL);
      CHECK_MSG(((uintptr_t)p & 15) == 0, "alloc(%zu) = %p is not 16-aligned", n, (void *)p);
      CHECK_MSG(inside_arena(&a, p, n), "alloc(%zu) is not inside a chunk", n);
      /* Consecutive allocations in one chunk do not overlap. */
      if (prev && p > prev && p < prev + prev_n)
        CHECK_MSG(0, "alloc(%zu) at %p overlaps the previous one", n, (void *)p);
      memset(p, (int)(i + 1), n);
      prev = p;
      prev_n = n;
    }
  }
  gw_arena_free(&a);
}

TEST(arena_allocations_keep_their_bytes) {
  /* Many small blocks across several chunks: each keeps its own pattern. */
  gw_arena_t a;
  gw_arena_init(&a);
  enum { N = 2000 };
  unsigned char *blocks[N];
  size_t lens[N];
  for (int i = 0; i < N; i++) {
    lens[i] = (size_t)(i % 37) + 1;
    blocks[i] = gw_arena_alloc(&a, lens[i]);
    memset(blocks[i], i & 0xff, lens[i]);
  }
  CHECK(chunk_count(&a) > 1);
  int bad = 0;
  for (int i = 0; i < N; i++)
    for (size_t k = 0; k < lens[i]; k++)
      if (blocks[i][k] != (unsigned char)(i & 0xff)) bad++;
  CHECK_EQ(bad, 0);
  gw_arena_free(&a);
}

TEST(arena_chunk_fills_then_grows) {
  gw_arena_t a;
  gw_arena_init(&a);
  char *first = gw_arena_alloc(&a, 16);
  CHECK_EQ(chunk_count(&a), 1);
  CHECK_EQ(a.head->size, ARENA_CHUNK);
  CHECK_PTR_EQ(first, a.head->data);
  /* Exactly the rest of the chunk still fits in it. */
  char *rest = gw_arena_alloc(&a, ARENA_CHUNK - 16);
  CHECK_EQ(chunk_count(&a), 1);
  CHECK_PTR_EQ(rest, first + 16);
  CHECK_EQ(a.used, ARENA_CHUNK);
  /* One more byte needs a new chunk, which becomes the head. */
  char *more = gw_arena_alloc(&a, 1);
  CHECK_EQ(chunk_count(&a), 2);
  CHECK_PTR_EQ(more, a.head->data);
  CHECK_EQ(a.used, 16);
  CHECK_PTR_EQ(oldest_chunk(&a)->data, first);
  gw_arena_free(&a);
}

TEST(arena_reset_keeps_one_chunk) {
  gw_arena_t a;
  gw_arena_init(&a);
  char *first = gw_arena_alloc(&a, 100);
  const gw_arena_chunk_t *oldest = a.head;
  for (int i = 0; i < 100; i++) gw_arena_alloc(&a, 1000);
  CHECK(chunk_count(&a) >= 20);
  gw_arena_reset(&a);
  CHECK_EQ(chunk_count(&a), 1);
  CHECK_PTR_EQ(a.head, oldest);
  CHECK_EQ(a.used, 0);
  /* The kept chunk is reused from its start. */
  char *again = gw_arena_alloc(&a, 10);
  CHECK_PTR_EQ(again, first);
  CHECK_EQ(chunk_count(&a), 1);
  /* Resetting twice is harmless. */
  gw_arena_reset(&a);
  gw_arena_reset(&a);
  CHECK_EQ(chunk_count(&a), 1);
  CHECK_EQ(a.used, 0);
  gw_arena_free(&a);
  CHECK_PTR_EQ(a.head, NULL);
  CHECK_EQ(a.used, 0);
}

TEST(arena_big_allocations) {
  gw_arena_t a;
  gw_arena_init(&a);
  char *small = gw_arena_alloc(&a, 32);
  memset(small, 's', 32);
  /* Larger than a chunk: a chunk of its own, of at least that size. */
  size_t big_n = 10 * ARENA_CHUNK + 3;
  char *big = gw_arena_alloc(&a, big_n);
  REQUIRE(big != NULL);
  CHECK(((uintptr_t)big & 15) == 0);
  CHECK_EQ(chunk_count(&a), 2);
  CHECK(a.head->size >= big_n);
  CHECK_MSG(inside_arena(&a, big, big_n), "big block not inside its chunk");
  memset(big, 'b', big_n); /* all of it is writable (ASan checks) */
  /* Small allocations go on working and do not overlap the big block. */
  char *after = gw_arena_alloc(&a, 64);
  memset(after, 'a', 64);
  CHECK(after + 64 <= big || after >= big + big_n);
  CHECK_EQ(small[31], 's');
  CHECK_EQ(big[big_n - 1], 'b');
  /* A reset drops the big chunk and keeps the ordinary first one. */
  const gw_arena_chunk_t *oldest = oldest_chunk(&a);
  gw_arena_reset(&a);
  CHECK_EQ(chunk_count(&a), 1);
  CHECK_PTR_EQ(a.head, oldest);
  CHECK_EQ(a.head->size, ARENA_CHUNK);
  /* A big allocation as the very first one. */
  gw_arena_t b;
  gw_arena_init(&b);
  char *p = gw_arena_alloc(&b, 1 << 20);
  memset(p, 1, 1 << 20);
  CHECK(b.head->size >= (size_t)1 << 20);
  gw_arena_free(&b);
  gw_arena_free(&a);
}

TEST(arena_zero_size_and_strndup) {
  gw_arena_t a;
  gw_arena_init(&a);
  void *z = gw_arena_alloc(&a, 0);
  CHECK(z != NULL);
  char *s = gw_arena_strndup(&a, "hello world", 5);
  CHECK_STR_EQ(s, "hello");
  CHECK(((uintptr_t)s & 15) == 0);
  char *e = gw_arena_strndup(&a, "", 0);
  CHECK_STR_EQ(e, "");
  /* Bytes after n are not read: a slice of a larger buffer. */
  const char src[] = {'a', 'b', 'c'};
  char *t = gw_arena_strndup(&a, src, sizeof src);
  CHECK_STR_EQ(t, "abc");
  CHECK_STR_EQ(s, "hello");
  gw_arena_free(&a);
}

TEST(xalloc_helpers) {
  char *p = gw_xmalloc(0);
  CHECK(p != NULL);
  free(p);
  int *z = gw_xcalloc(10, sizeof *z);
  int sum = 0;
  for (int i = 0; i < 10; i++) sum += z[i];
  CHECK_EQ(sum, 0);
  z = gw_xrealloc(z, 1000 * sizeof *z);
  CHECK_EQ(z[9], 0);
  free(z);
  char *s = gw_xstrndup("abcdef", 3);
  CHECK_STR_EQ(s, "abc");
  free(s);
}

/* ---- gw_buf ---- */

TEST(buf_init_and_free) {
  gw_buf_t b;
  memset(&b, 0x7f, sizeof b);
  gw_buf_init(&b);
  CHECK_PTR_EQ(b.base, NULL);
  CHECK_EQ(b.len, 0);
  CHECK_EQ(b.cap, 0);
  gw_buf_free(&b); /* free of an empty buffer */
  gw_buf_append(&b, "x", 1);
  gw_buf_free(&b);
  CHECK_PTR_EQ(b.base, NULL);
  CHECK_EQ(b.len, 0);
  CHECK_EQ(b.cap, 0);
}

TEST(buf_append) {
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_append(&b, NULL, 0); /* nothing to copy: no allocation, no crash */
  CHECK_PTR_EQ(b.base, NULL);
  CHECK_EQ(b.len, 0);
  gw_buf_append(&b, "hello", 5);
  CHECK_EQ(b.len, 5);
  CHECK(b.cap >= 5);
  CHECK_MEM_EQ(b.base, b.len, "hello");
  gw_buf_append_str(&b, ", world");
  CHECK_MEM_EQ(b.base, b.len, "hello, world");
  gw_buf_append_str(&b, "");
  CHECK_EQ(b.len, 12);
  /* Growth: 100 000 bytes in uneven pieces arrive in order. */
  gw_buf_t g;
  gw_buf_init(&g);
  size_t total = 0;
  for (int i = 0; total < 100000; i++) {
    char piece[97];
    size_t n = (size_t)(i % 97) + 1;
    for (size_t k = 0; k < n; k++) piece[k] = (char)((total + k) % 251);
    gw_buf_append(&g, piece, n);
    total += n;
    CHECK(g.cap >= g.len);
  }
  CHECK_EQ(g.len, total);
  int bad = 0;
  for (size_t k = 0; k < total; k++)
    if ((unsigned char)g.base[k] != (unsigned char)(k % 251)) bad++;
  CHECK_EQ(bad, 0);
  /* Capacity doubles from 256, so it stays a power of two here. */
  CHECK_EQ(g.cap & (g.cap - 1), 0);
  CHECK(g.cap < 2 * total);
  gw_buf_free(&g);
  gw_buf_free(&b);
}

TEST(buf_consume) {
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_append_str(&b, "0123456789");
  gw_buf_consume(&b, 0);
  CHECK_MEM_EQ(b.base, b.len, "0123456789");
  gw_buf_consume(&b, 3);
  CHECK_MEM_EQ(b.base, b.len, "3456789");
  size_t cap = b.cap;
  gw_buf_consume(&b, 6);
  CHECK_MEM_EQ(b.base, b.len, "9");
  CHECK_EQ(b.cap, cap); /* consuming never shrinks */
  gw_buf_consume(&b, 1);
  CHECK_EQ(b.len, 0);
  gw_buf_append_str(&b, "abc");
  gw_buf_consume(&b, 1000); /* more than there is: empty */
  CHECK_EQ(b.len, 0);
  gw_buf_append_str(&b, "xyz");
  CHECK_MEM_EQ(b.base, b.len, "xyz");
  /* A large consume with overlapping move. */
  gw_buf_t g;
  gw_buf_init(&g);
  for (int i = 0; i < 10000; i++) {
    char ch = (char)('a' + i % 26);
    gw_buf_append(&g, &ch, 1);
  }
  gw_buf_consume(&g, 26 * 100 + 1);
  CHECK_EQ(g.len, 10000 - 2601);
  int bad = 0;
  for (size_t k = 0; k < g.len; k++)
    if (g.base[k] != (char)('a' + (k + 1) % 26)) bad++;
  CHECK_EQ(bad, 0);
  gw_buf_free(&g);
  gw_buf_free(&b);
}

TEST(buf_reserve) {
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_reserve(&b, 10);
  REQUIRE(b.base != NULL);
  CHECK_EQ(b.len, 0);
  CHECK_EQ(b.cap, 256);
  char *base = b.base;
  gw_buf_reserve(&b, 256); /* fits: no move */
  CHECK_PTR_EQ(b.base, base);
  CHECK_EQ(b.cap, 256);
  gw_buf_append(&b, "abc", 3);
  gw_buf_reserve(&b, 1000);
  CHECK(b.cap >= 1003);
  CHECK_MEM_EQ(b.base, b.len, "abc");
  memset(b.base + b.len, 'z', 1000); /* the reserved room is writable */
  gw_buf_free(&b);
}

TEST(buf_try_reserve) {
  gw_buf_t b;
  gw_buf_init(&b);
  CHECK_EQ(gw_buf_try_reserve(&b, 0), 0);
  CHECK_EQ(gw_buf_try_reserve(&b, 5000), 0);
  CHECK(b.cap >= 5000);
  REQUIRE(b.base != NULL);
  memset(b.base, 'q', 5000);
  gw_buf_append(&b, "xy", 2);
  size_t cap = b.cap;
  char *base = b.base;
  CHECK_EQ(gw_buf_try_reserve(&b, cap - 2), 0); /* fits exactly */
  CHECK_PTR_EQ(b.base, base);
  CHECK_EQ(b.cap, cap);
  /* A size no allocator can give: -ENOMEM, and the buffer is untouched. */
  CHECK_EQ(gw_buf_try_reserve(&b, SIZE_MAX / 4), -ENOMEM);
  CHECK_PTR_EQ(b.base, base);
  CHECK_EQ(b.cap, cap);
  CHECK_EQ(b.len, 2);
  CHECK_MEM_EQ(b.base, b.len, "xy");
  gw_buf_free(&b);
}

/* buf.h: try_reserve "returns -ENOMEM instead of aborting" for sizes that
 * cannot be had. len + extra past SIZE_MAX must not wrap into a small size
 * (which reports room that is not there), and a size above SIZE_MAX / 2
 * must not spin doubling a capacity that overflows to 0. */
TEST(buf_try_reserve_overflow) {
  alarm(3); /* a spinning doubling loop fails fast instead of at RT_TIMEOUT */
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_append(&b, "0123456789", 10);
  size_t cap = b.cap;
  CHECK_EQ(gw_buf_try_reserve(&b, SIZE_MAX - 5), -ENOMEM); /* 10 + extra wraps to 4 */
  CHECK_EQ(b.cap, cap);
  CHECK_EQ(gw_buf_try_reserve(&b, SIZE_MAX / 2 + 2), -ENOMEM); /* doubling past 2^63 */
  CHECK_EQ(b.cap, cap);
  gw_buf_free(&b);
}

static void reserve_past_size_max(void) {
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_append(&b, "abc", 3);
  gw_buf_reserve(&b, SIZE_MAX - 1); /* must abort, not wrap into a small size */
}

TEST(buf_reserve_overflow_aborts) {
  /* gw_buf_reserve aborts on what it cannot have (buf.h): it never returns
   * with less room than asked for. */
  CHECK_DIES(reserve_past_size_max(), SIGABRT);
}

TEST(buf_printf) {
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_printf(&b, "%s=%d", "x", 42);
  CHECK_MEM_EQ(b.base, b.len, "x=42");
  gw_buf_printf(&b, "%s", ""); /* nothing to add */
  CHECK_EQ(b.len, 4);
  gw_buf_printf(&b, ";%05.1f;%c", 3.14159, 'z');
  CHECK_MEM_EQ(b.base, b.len, "x=42;003.1;z");
  /* Longer than the first capacity: formatted whole, in one piece. */
  char big[1000];
  memset(big, 'k', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  gw_buf_printf(&b, "[%s]", big);
  CHECK_EQ(b.len, 12 + 2 + 999);
  CHECK_EQ(b.base[12], '[');
  CHECK_EQ(b.base[b.len - 1], ']');
  CHECK_EQ(b.base[500], 'k');
  CHECK(b.cap >= b.len);
  gw_buf_free(&b);
}

TEST(buf_append_json) {
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_append_json(&b, "plain", 5);
  CHECK_MEM_EQ(b.base, b.len, "\"plain\"");
  b.len = 0;
  gw_buf_append_json(&b, "", 0);
  CHECK_MEM_EQ(b.base, b.len, "\"\"");
  b.len = 0;
  gw_buf_append_json(&b, "a\"b\\c", 5);
  CHECK_MEM_EQ(b.base, b.len, "\"a\\\"b\\\\c\"");
  b.len = 0;
  const char ctl[] = {'\n', '\t', '\0', 0x1f, 0x7f, 'x'};
  gw_buf_append_json(&b, ctl, sizeof ctl);
  CHECK_MEM_EQ(b.base, b.len, "\"\\u000a\\u0009\\u0000\\u001f\\u007fx\"");
  b.len = 0;
  /* Valid UTF-8 passes as it is. */
  gw_buf_append_json(&b, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14);
  CHECK_MEM_EQ(b.base, b.len, "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
  /* Each byte of an invalid sequence becomes \ufffd: a stray byte, a cut
   * sequence, an overlong form, a surrogate. */
  b.len = 0;
  gw_buf_append_json(&b, "a\xff" "b\xe2\x82" "c\xc0\xaf" "d\xed\xa0\x80", 12);
  CHECK_MEM_EQ(b.base, b.len,
               "\"a\\ufffdb\\ufffd\\ufffdc\\ufffd\\ufffdd\\ufffd\\ufffd\\ufffd\"");
  b.len = 0;
  gw_buf_append_json(&b, "\xc3", 1); /* cut at the end of the input */
  CHECK_MEM_EQ(b.base, b.len, "\"\\ufffd\"");
  /* Appends after what is there. */
  b.len = 0;
  gw_buf_append_str(&b, "{\"k\":");
  gw_buf_append_json(&b, "v", 1);
  gw_buf_append_str(&b, "}");
  CHECK_MEM_EQ(b.base, b.len, "{\"k\":\"v\"}");
  gw_buf_free(&b);
}

TEST(utf8_cut) {
  const char *s = "ab\xc3\xa9\xe2\x82\xac"; /* a b é € */
  CHECK(gw_utf8_cut(s, 7, 7) == 7);
  CHECK(gw_utf8_cut(s, 7, 6) == 4); /* not inside the € */
  CHECK(gw_utf8_cut(s, 7, 3) == 2); /* not inside the é */
  CHECK(gw_utf8_cut(s, 7, 0) == 0);
  CHECK(gw_utf8_cut("a\xff" "b", 3, 2) == 2); /* a stray byte counts as one */
}

TEST_LIST(T(arena_init_is_empty), T(arena_alignment), T(arena_allocations_keep_their_bytes),
          T(arena_chunk_fills_then_grows), T(arena_reset_keeps_one_chunk),
          T(arena_big_allocations), T(arena_zero_size_and_strndup), T(xalloc_helpers),
          T(buf_init_and_free), T(buf_append), T(buf_consume), T(buf_reserve),
          T(buf_try_reserve), T(buf_try_reserve_overflow), T(buf_reserve_overflow_aborts),
          T(buf_printf), T(buf_append_json), T(utf8_cut))
