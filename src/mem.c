/*
 * mem.c: aborting allocators and the bump arena of mem.h.
 */
#include "mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARENA_CHUNK 4096

struct gw_arena_chunk_s {
  gw_arena_chunk_t *next; /* older chunk */
  size_t size;            /* usable bytes in data */
  _Alignas(16) char data[];
};

static void out_of_memory(size_t n) {
  fprintf(stderr, "gateway: out of memory allocating %zu bytes\n", n);
  abort();
}

void *gw_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) out_of_memory(n);
  return p;
}

void *gw_xcalloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (!p) out_of_memory(count * size);
  return p;
}

void *gw_xzalloc_aligned(size_t align, size_t n) {
  size_t rounded = n ? (n + align - 1) / align * align : align; /* aligned_alloc wants a multiple */
  void *p = aligned_alloc(align, rounded);
  if (!p) out_of_memory(n);
  memset(p, 0, rounded);
  return p;
}

void *gw_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) out_of_memory(n);
  return q;
}

char *gw_xstrndup(const char *s, size_t n) {
  char *p = gw_xmalloc(n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

void gw_arena_init(gw_arena_t *a) {
  a->head = NULL;
  a->used = 0;
}

static gw_arena_chunk_t *new_chunk(size_t at_least) {
  size_t size = at_least > ARENA_CHUNK ? at_least : ARENA_CHUNK;
  gw_arena_chunk_t *c = gw_xmalloc(sizeof *c + size);
  c->size = size;
  c->next = NULL;
  return c;
}

void *gw_arena_alloc(gw_arena_t *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (!a->head || a->used + n > a->head->size) {
    gw_arena_chunk_t *c = new_chunk(n);
    c->next = a->head;
    a->head = c;
    a->used = 0;
  }
  void *p = a->head->data + a->used;
  a->used += n;
  return p;
}

char *gw_arena_strndup(gw_arena_t *a, const char *s, size_t n) {
  char *p = gw_arena_alloc(a, n + 1);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

void gw_arena_reset(gw_arena_t *a) {
  if (!a->head) return;
  /* Keep only the oldest chunk: it is the one of ordinary size. */
  gw_arena_chunk_t *c = a->head;
  while (c->next) {
    gw_arena_chunk_t *next = c->next;
    free(c);
    c = next;
  }
  a->head = c;
  a->used = 0;
}

void gw_arena_free(gw_arena_t *a) {
  gw_arena_chunk_t *c = a->head;
  while (c) {
    gw_arena_chunk_t *next = c->next;
    free(c);
    c = next;
  }
  a->head = NULL;
  a->used = 0;
}
