/*
 * test_lua_heap.c: the allocator behind the gateway's Lua states
 * (src/lua_heap.c), directly and under a real LuaJIT state.
 *
 * What it proves: a freed small block is handed out again for a request of
 * the same size class; a block grows and shrinks in its class without
 * moving and keeps its bytes when it moves to another class or to or from
 * malloc's large blocks; the cache of freed blocks never passes its bound;
 * and a LuaJIT state on this allocator runs a workload of tables, strings
 * and closures of every size, collects, and closes with nothing leaked
 * (this program is built with ASan, whose leak check runs at exit).
 *
 * spec-ldflags: -fsanitize=address,undefined -fno-sanitize-recover=undefined
 */
#include "../../src/lua_heap.c"
#include "../../src/mem.c"

#include <lauxlib.h>
#include <lualib.h>

#include "runner.h"

TEST(freed_small_blocks_are_reused_by_size_class) {
  gw_lua_heap_t *h = gw_lua_heap_new();
  void *a = gw_lua_heap_alloc(h, NULL, 0, 40);
  REQUIRE(a != NULL);
  gw_lua_heap_alloc(h, a, 40, 0);
  CHECK_EQ(gw_lua_heap_cached(h), (size_t)48);
  void *b = gw_lua_heap_alloc(h, NULL, 0, 33); /* same class (33..48 bytes) */
  CHECK(b == a);
  CHECK_EQ(gw_lua_heap_cached(h), (size_t)0);
  void *c = gw_lua_heap_alloc(h, NULL, 0, 49); /* the next class: a new block */
  CHECK(c != a);
  gw_lua_heap_alloc(h, b, 33, 0);
  gw_lua_heap_alloc(h, c, 49, 0);
  gw_lua_heap_free(h);
}

TEST(realloc_keeps_bytes_across_classes_and_sizes) {
  gw_lua_heap_t *h = gw_lua_heap_new();
  unsigned char *p = gw_lua_heap_alloc(h, NULL, 0, 20);
  for (int i = 0; i < 20; i++) p[i] = (unsigned char)i;
  unsigned char *q = gw_lua_heap_alloc(h, p, 20, 30); /* same class: stays */
  CHECK(q == p);
  size_t sizes[] = {100, 512, 513, 5000, 600, 300, 7, 1};
  size_t old = 30;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    q = gw_lua_heap_alloc(h, q, old, sizes[k]);
    REQUIRE(q != NULL);
    size_t keep = old < sizes[k] ? old : sizes[k];
    for (size_t i = 0; i < keep && i < 20; i++) CHECK_EQ(q[i], (unsigned char)i);
    for (size_t i = 20; i < sizes[k]; i++) q[i] = (unsigned char)i; /* the whole new size is writable */
    old = sizes[k];
  }
  gw_lua_heap_alloc(h, q, old, 0);
  gw_lua_heap_free(h);
}

TEST(cache_stays_under_its_bound) {
  gw_lua_heap_t *h = gw_lua_heap_new();
  size_t n = GW_LUA_HEAP_CACHE / 512 + 100;
  void **blocks = calloc(n, sizeof *blocks);
  for (size_t i = 0; i < n; i++) blocks[i] = gw_lua_heap_alloc(h, NULL, 0, 512);
  for (size_t i = 0; i < n; i++) gw_lua_heap_alloc(h, blocks[i], 512, 0);
  CHECK(gw_lua_heap_cached(h) <= GW_LUA_HEAP_CACHE);
  CHECK(gw_lua_heap_cached(h) > GW_LUA_HEAP_CACHE - 512);
  free(blocks);
  gw_lua_heap_free(h);
}

static const char *workload =
    "local keep = {}\n"
    "for round = 1, 30 do\n"
    "  local t = {}\n"
    "  for i = 1, 2000 do\n"
    "    t[i] = { i, tostring(i), string.rep('x', i % 700), f = function() return i end }\n"
    "    if i % 97 == 0 then keep[#keep + 1] = t[i] end\n"
    "  end\n"
    "  local big = {}\n"
    "  for i = 1, 5000 do big['k' .. i] = i end\n"
    "  collectgarbage()\n"
    "end\n"
    "local sum = 0\n"
    "for _, v in ipairs(keep) do sum = sum + v.f() + #v[3] end\n"
    "return sum\n";

TEST(a_luajit_state_runs_collects_and_closes_on_it) {
  gw_lua_heap_t *h = gw_lua_heap_new();
  lua_State *L = lua_newstate(gw_lua_heap_alloc, h);
  REQUIRE(L != NULL); /* GC64 LuaJIT (Debian 12's) takes a custom allocator */
  luaL_openlibs(L);
  REQUIRE_EQ(luaL_loadstring(L, workload), 0);
  REQUIRE_EQ(lua_pcall(L, 0, 1, 0), 0);
  /* the kept tables: i = 97k for k = 1..20, #v[3] = i % 700; 30 rounds */
  lua_Number expect = 0;
  for (int i = 97; i <= 2000; i += 97) expect += i + i % 700;
  CHECK_EQ(lua_tonumber(L, -1), expect * 30);
  CHECK(gw_lua_heap_cached(h) > 0); /* collected blocks were kept for reuse */
  CHECK(gw_lua_heap_cached(h) <= GW_LUA_HEAP_CACHE);
  lua_close(L);
  gw_lua_heap_free(h);
}

TEST_LIST(T(freed_small_blocks_are_reused_by_size_class), T(realloc_keeps_bytes_across_classes_and_sizes),
          T(cache_stays_under_its_bound), T(a_luajit_state_runs_collects_and_closes_on_it))
