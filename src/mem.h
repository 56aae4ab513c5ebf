/*
 * mem.h: allocation helpers and the per-request arena.
 *
 * Small allocations use gw_xmalloc and friends, which abort on out-of-memory:
 * a gateway that cannot allocate 64 bytes cannot do anything useful, and
 * checking every call hides the real error paths. Client-sized allocations
 * (bodies) use plain malloc and fail gracefully; `limits` bounds them.
 *
 * gw_arena_t is a bump allocator for whatever dies with one request (header
 * copies, small strings). It is reset, not freed, between requests on the same
 * connection, so a keep-alive connection reuses its first chunk.
 */
#ifndef GW_MEM_H
#define GW_MEM_H

#include <stddef.h>

void *gw_xmalloc(size_t n);
void *gw_xcalloc(size_t count, size_t size);
void *gw_xrealloc(void *p, size_t n);
/* `n` zeroed bytes aligned to `align` (a power of two, at most 4096); freed
 * with free(). For structs whose alignment exceeds what malloc promises
 * under every allocator (sanitizers' included). */
void *gw_xzalloc_aligned(size_t align, size_t n);
char *gw_xstrndup(const char *s, size_t n);

typedef struct gw_arena_chunk_s gw_arena_chunk_t;

/* Owned by whoever embeds it (a connection); gw_arena_free releases every chunk. */
typedef struct gw_arena_s {
  gw_arena_chunk_t *head; /* newest chunk first; the last one is the first made */
  size_t used;            /* bytes used in head */
} gw_arena_t;

void gw_arena_init(gw_arena_t *a);
/* Returns `n` bytes aligned to 16, valid until gw_arena_reset or gw_arena_free. */
void *gw_arena_alloc(gw_arena_t *a, size_t n);
char *gw_arena_strndup(gw_arena_t *a, const char *s, size_t n);
/* Forgets every allocation but keeps the first chunk for reuse. */
void gw_arena_reset(gw_arena_t *a);
void gw_arena_free(gw_arena_t *a);

#endif
