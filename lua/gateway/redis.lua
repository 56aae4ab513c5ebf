-- gateway.redis: gw.redis(URL [, opts]) and the client's methods
-- r:call(CMD, ...) and r:evalsha(sha, script, keys, args). See docs/redis.md.
--
-- A client is a small table naming a pool of connections kept in C per
-- worker (src/redis.c), so clients made by reloads share their pool.
-- Misuse (a bad URL or option, a wrong argument type, calling outside a
-- request or timer) raises at the caller's line. Runtime failures return
-- nil and a short string: "connection refused", "connect failed",
-- "timeout", "connection lost", "authentication failed", "select failed",
-- or Redis' own error reply ("ERR ...", "WRONGTYPE ...", "NOSCRIPT ...").
local base = require "gateway.base"
local sched = require "gateway.sched"

local ffi, C = base.ffi, base.C
local ffi_string, ffi_new = ffi.string, ffi.new
local AGAIN, BAD_CONTEXT = base.AGAIN, base.BAD_CONTEXT
local type, error, select, setmetatable, unpack, sub, format =
  type, error, select, setmetatable, unpack, string.sub, string.format

ffi.cdef [[
typedef struct gw_redis_pool_s gw_redis_pool_t;
gw_redis_pool_t *gw_ffi_redis_pool(const char *url, size_t len, int idle_max, char *err,
    size_t errlen);
void gw_ffi_redis_pool_stats(gw_redis_pool_t *p, int *open, int *idle);
int gw_ffi_redis_call(gw_task_t *t, uint32_t ts, gw_redis_pool_t *p, int argc, const char **argv,
    const size_t *lens, double timeout, uint32_t *wait_id, const char **err);
]]

local _M = {}
local Redis = {}
Redis.__index = Redis

-- A nil inside an array reply (lightuserdata NULL, the same value as cjson.null).
_M.null = ffi.cast("void *", nil)
do
  local ok, cjson = pcall(require, "cjson")
  if ok then _M.null = cjson.null end
end

local DEFAULT_TIMEOUT, DEFAULT_POOL = 1, 10

-- Scratch argument arrays, grown on demand; filled and used with no yield
-- in between, so one set serves every call.
local cap = 16
local argv = ffi_new("const char *[?]", cap)
local lens = ffi_new("size_t[?]", cap)
local errbuf = ffi_new("char[256]")
local stats = ffi_new("int[2]")

-- gw.redis(url [, { timeout = seconds, pool = idle connections }])
function _M.new(url, opts, level)
  level = (level or 1) + 1
  if type(url) ~= "string" then error("gw.redis: the URL must be a string", level) end
  opts = opts or {}
  if type(opts) ~= "table" then error("gw.redis: options must be a table", level) end
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  if type(timeout) ~= "number" or not (timeout > 0) then
    error("gw.redis: timeout must be a number of seconds > 0", level)
  end
  local pool = opts.pool or DEFAULT_POOL
  if type(pool) ~= "number" or pool < 0 or pool > 2147483647 or pool % 1 ~= 0 then
    error("gw.redis: pool must be an integer from 0 to 2^31-1", level)
  end
  local p = C.gw_ffi_redis_pool(url, #url, pool, errbuf, 256)
  if p == nil then error("gw.redis: " .. ffi_string(errbuf) .. ": " .. url, level) end
  return setmetatable({ _p = p, timeout = timeout, url = url }, Redis)
end

-- Numbers as Redis reads them: tostring keeps 14 digits, so a large
-- integer would go as "9.007199254741e+15", which INCRBY or EXPIRE refuse.
local function num2str(x)
  if x % 1 == 0 and x > -2 ^ 53 and x < 2 ^ 53 then return format("%d", x) end
  return format("%.17g", x)
end

-- r:call(cmd, ...): sends one command; waits for and returns its reply.
function Redis:call(...)
  local n = select("#", ...)
  if n == 0 then error("r:call: a command name is required", 2) end
  local ctx = sched.current()
  if not ctx then error("r:call: only inside a request or a timer", 2) end
  local args = { ... }
  if n > cap then
    while cap < n do cap = cap * 2 end
    argv = ffi_new("const char *[?]", cap)
    lens = ffi_new("size_t[?]", cap)
  end
  for i = 1, n do
    local a = args[i]
    local ta = type(a)
    if ta == "number" then
      a = num2str(a)
      args[i] = a -- anchored until the call returns
    elseif ta ~= "string" then
      error("r:call: argument #" .. i .. " must be a string or a number, not " .. ta, 2)
    end
    argv[i - 1] = a
    lens[i - 1] = #a
  end
  local rc = C.gw_ffi_redis_call(ctx.task, ctx.ts, self._p, n, argv, lens, self.timeout,
    base.out_wait, base.out_err)
  if rc == BAD_CONTEXT then error(base.FINISHED, 2) end
  if rc ~= AGAIN then return nil, ffi_string(base.out_err[0]) end
  local v, err = sched.wait(ctx, base.out_wait[0])
  return v, err
end

local function push_all(t, list, what)
  if list == nil then return end
  if type(list) ~= "table" then error("r:evalsha: " .. what .. " must be a list", 3) end
  for i = 1, #list do t[#t + 1] = list[i] end
end

-- r:evalsha(sha, script, keys, args): EVALSHA sha, falling back to EVAL
-- script when Redis does not know the script yet (which also caches it).
function Redis:evalsha(sha, script, keys, args)
  if type(script) ~= "string" then error("r:evalsha: the script must be a string", 2) end
  if sha ~= nil and type(sha) ~= "string" then error("r:evalsha: sha must be a string or nil", 2) end
  local rest = { #(keys or {}) }
  push_all(rest, keys, "keys")
  push_all(rest, args, "args")
  if sha then
    local v, err = self:call("EVALSHA", sha, unpack(rest))
    if err == nil or sub(err, 1, 8) ~= "NOSCRIPT" then return v, err end
  end
  return self:call("EVAL", script, unpack(rest))
end

-- r:pool_stats(): connections to this URL in this worker: open, idle.
function Redis:pool_stats()
  C.gw_ffi_redis_pool_stats(self._p, stats, stats + 1)
  return stats[0], stats[1]
end

return _M
