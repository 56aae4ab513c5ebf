/*
 * ffi_redis.c: Redis commands for Lua (gw.redis, r:call).
 *
 * A call (call_t) is owned by the waiting task: it holds the waiter and
 * the command. When the reply comes, the task is woken with the reply
 * converted to Lua values (push_reply) and the call is freed. If the task
 * ends first, its cancel hook cancels the command (redis.c then ignores the
 * reply when it comes, and frees its own record) and frees the call.
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "ffi.h"
#include "lua_vm.h"
#include "mem.h"
#include "redis.h"

GW_FFI_EXPORT gw_redis_pool_t *gw_ffi_redis_pool(const char *url, size_t len, int idle_max, char *err,
                                                 size_t errlen) {
  return gw_redis_pool_get(url, len, idle_max, err, errlen);
}

GW_FFI_EXPORT void gw_ffi_redis_pool_stats(gw_redis_pool_t *p, int *open, int *idle) {
  gw_redis_pool_stats(p, open, idle);
}

/* Owned by the waiting task until woken or cancelled; then freed. */
typedef struct {
  gw_waiter_t w;       /* first */
  gw_redis_cmd_t *cmd; /* NULL once the reply came */
} call_t;

/* Arrays nest; deeper than this is refused rather than risking the C stack. */
#define MAX_DEPTH 32

/* Pushes one reply as one Lua value; a nil inside an array is
 * lightuserdata NULL (cjson.null), so arrays keep their length. Returns 0,
 * or -1 (nothing pushed) when the reply nests too deep. */
static int push_value(lua_State *L, const redisReply *r, int depth, int top) {
  if (depth > MAX_DEPTH || !lua_checkstack(L, 4)) return -1;
  switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR: lua_pushlstring(L, r->str, r->len); return 0;
    case REDIS_REPLY_INTEGER: lua_pushnumber(L, (lua_Number)r->integer); return 0;
    case REDIS_REPLY_ARRAY:
      lua_createtable(L, (int)r->elements, 0);
      for (size_t i = 0; i < r->elements; i++) {
        if (push_value(L, r->element[i], depth + 1, 0) != 0) {
          lua_pop(L, 1);
          return -1;
        }
        lua_rawseti(L, -2, (int)i + 1);
      }
      return 0;
    case REDIS_REPLY_NIL:
    default:
      if (top) lua_pushnil(L);
      else lua_pushlightuserdata(L, NULL);
      return 0;
  }
}

typedef struct {
  const redisReply *reply;
  const char *err;
} result_t;

/* Results for the Lua wrapper: (value) or (nil, error). */
static int push_reply(lua_State *L, void *arg) {
  result_t *res = arg;
  const redisReply *r = res->reply;
  if (!r) {
    lua_pushnil(L);
    lua_pushstring(L, res->err);
    return 2;
  }
  if (r->type == REDIS_REPLY_ERROR) {
    lua_pushnil(L);
    lua_pushlstring(L, r->str, r->len);
    return 2;
  }
  if (push_value(L, r, 0, 1) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "reply nested too deep");
    return 2;
  }
  return 1;
}

static void on_call_reply(void *data, const redisReply *reply, const char *err) {
  call_t *c = data;
  result_t res = {reply, err};
  c->cmd = NULL;
  gw_waiter_wake(&c->w, push_reply, &res);
  free(c);
}

static void cancel_call(gw_waiter_t *w) {
  call_t *c = (call_t *)w;
  if (c->cmd) gw_redis_cmd_cancel(c->cmd);
  free(c);
}

/* Sends argv (argc strings with their lengths, binary-safe) to `p`.
 * Returns AGAIN with *wait_id (the task is woken with the results), or
 * ERROR with *err when nothing could be sent, or BAD_CONTEXT. */
GW_FFI_EXPORT int gw_ffi_redis_call(gw_task_t *t, uint32_t ts, gw_redis_pool_t *p, int argc,
                                    const char **argv, const size_t *lens, double timeout, uint32_t *wait_id,
                                    const char **err) {
  if (!gw_task_check(t, ts)) return GW_FFI_BAD_CONTEXT;
  call_t *c = gw_xcalloc(1, sizeof *c);
  c->cmd = gw_redis_command(p, argc, argv, lens, timeout, on_call_reply, c, err);
  if (!c->cmd) {
    free(c);
    return GW_FFI_ERROR;
  }
  c->w.cancel = cancel_call;
  gw_waiter_add(t, &c->w);
  *wait_id = c->w.id;
  return GW_FFI_AGAIN;
}
