/*
 * lua_heap.h: the memory allocator behind each Lua state (the lua_Alloc
 * given to lua_newstate).
 *
 * Why: every request makes and drops a few small blocks (its req and
 * params tables, a string or two). LuaJIT's built-in allocator, derived
 * from dlmalloc, spends about 45 instructions to hand one out and 100 to
 * take it back (callgrind, keep-alive hello: four blocks a request), and
 * glibc's malloc is slower still here, as the garbage collector frees
 * hundreds of blocks at once and glibc's per-size cache holds seven. So
 * blocks of up to 512 bytes come from free lists kept per size (16-byte
 * steps), filled from malloc: taking or returning one is a few
 * instructions. Larger blocks are malloc's.
 *
 * Memory: a freed small block stays on its list for reuse, up to
 * GW_LUA_HEAP_CACHE bytes per state; beyond that it goes back to free().
 * Every block is one malloc'd block, so free() is always right for it.
 *
 * LuaJIT takes a custom allocator in its GC64 mode (the default on x86-64
 * and arm64); lua_vm.c falls back to the built-in one when it refuses.
 */
#ifndef GW_LUA_HEAP_H
#define GW_LUA_HEAP_H

#include <stddef.h>

#define GW_LUA_HEAP_CACHE (8u << 20) /* bytes of freed small blocks kept per state */

/* One per Lua state, made before it and freed after lua_close. */
typedef struct gw_lua_heap_s gw_lua_heap_t;

gw_lua_heap_t *gw_lua_heap_new(void);

/* The lua_Alloc: `ud` is the heap; osize is the block's size when ptr is
 * not NULL (LuaJIT always passes it). */
void *gw_lua_heap_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* Frees the cached blocks and the heap (after lua_close). */
void gw_lua_heap_free(gw_lua_heap_t *h);

/* Bytes of freed blocks kept for reuse (for tests). */
size_t gw_lua_heap_cached(const gw_lua_heap_t *h);

#endif
