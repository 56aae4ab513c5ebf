/*
 * lua_heap.c: per-size free lists for a Lua state's small blocks (see
 * lua_heap.h for why).
 */
#include "lua_heap.h"

#include <stdlib.h>
#include <string.h>

#include "mem.h"

#define STEP 16
#define SMALL_MAX 512
#define CLASSES (SMALL_MAX / STEP) /* class c holds blocks of (c + 1) * STEP bytes */

typedef struct block_s {
  struct block_s *next;
} block_t;

struct gw_lua_heap_s {
  block_t *free[CLASSES];
  size_t cached; /* bytes on the lists */
};

static size_t class_of(size_t n) { return (n - 1) / STEP; } /* 1 <= n <= SMALL_MAX */

gw_lua_heap_t *gw_lua_heap_new(void) { return gw_xcalloc(1, sizeof(gw_lua_heap_t)); }

/* A block of at least n bytes, or NULL (Lua raises "not enough memory"). */
static void *take(gw_lua_heap_t *h, size_t n) {
  if (n > SMALL_MAX) return malloc(n);
  size_t c = class_of(n);
  block_t *b = h->free[c];
  if (!b) return malloc((c + 1) * STEP);
  h->free[c] = b->next;
  h->cached -= (c + 1) * STEP;
  return b;
}

/* Takes back a block that was asked for with size n. */
static void give(gw_lua_heap_t *h, void *p, size_t n) {
  if (n == 0 || n > SMALL_MAX) {
    free(p);
    return;
  }
  size_t c = class_of(n), size = (c + 1) * STEP;
  if (h->cached + size > GW_LUA_HEAP_CACHE) {
    free(p);
    return;
  }
  block_t *b = p;
  b->next = h->free[c];
  h->free[c] = b;
  h->cached += size;
}

void *gw_lua_heap_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  gw_lua_heap_t *h = ud;
  if (nsize == 0) {
    if (ptr) give(h, ptr, osize);
    return NULL;
  }
  if (!ptr) return take(h, nsize);
  if (osize > SMALL_MAX && nsize > SMALL_MAX) return realloc(ptr, nsize);
  /* A small block's room is its class's size: it may grow or shrink in it. */
  if (osize >= 1 && osize <= SMALL_MAX && nsize <= SMALL_MAX && class_of(osize) == class_of(nsize))
    return ptr;
  void *q = take(h, nsize);
  if (!q) return NULL; /* LuaJIT keeps the old block */
  memcpy(q, ptr, osize < nsize ? osize : nsize);
  give(h, ptr, osize);
  return q;
}

void gw_lua_heap_free(gw_lua_heap_t *h) {
  if (!h) return;
  for (int c = 0; c < CLASSES; c++) {
    block_t *b = h->free[c];
    while (b) {
      block_t *next = b->next;
      free(b);
      b = next;
    }
  }
  free(h);
}

size_t gw_lua_heap_cached(const gw_lua_heap_t *h) { return h->cached; }
