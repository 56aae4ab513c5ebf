-- gateway.shared: shared dicts, gw.shared_dict(NAME, SIZE) and gw.shared.NAME.
--
-- A dict lives in the shared memory zone the master makes before it forks
-- (src/shm.c, src/shdict.c), so every worker sees the same keys, and the
-- keys survive reloads. The master loads the configuration once to collect
-- the declarations; a worker (at start or on reload) only checks that the
-- dict it declares exists, so a dict that a reload adds needs a restart.
--
-- Methods (called with a colon): get(k), set(k, v, ttl), add(k, v, ttl),
-- incr(k, by, init, ttl), delete(k), gcra(k, rate, per, burst). Misuse (a key that is not a non-empty
-- string, a value of another type, a bad ttl) raises; runtime failures
-- ("exists", "not found", "not a number", "no memory") come back as
-- `false`/`nil` and the message. See docs/shared-dict.md.
local base = require "gateway.base"

local ffi, C = base.ffi, base.C
local ffi_string = ffi.string
local OK = base.OK
local type, error, tostring, setmetatable, tonumber = type, error, tostring, setmetatable, tonumber
local match, lower = string.match, string.lower
local HUGE = math.huge

local T_NIL, T_BOOL, T_NUM, T_STR = 0, 1, 2, 3
local KEY_MAX = 65535

local val = ffi.new("gw_ffi_shval_t")
local out_num = ffi.new("double[1]")
local out_size = ffi.new("size_t[1]")
local out_err = base.out_err
local gcra_out = ffi.new("gw_ffi_gcra_t")

local _M = {}

-- ---- sizes ----

local UNITS = { [""] = 1, k = 1024, m = 1024 * 1024, g = 1024 * 1024 * 1024 }

-- "10m", "512k", "1g" or a number of bytes -> bytes, or nil.
local function parse_size(size)
  local bytes
  if type(size) == "number" then
    bytes = size
  elseif type(size) == "string" then
    local n, unit = match(lower(size), "^%s*(%d+)%s*([kmg]?)b?%s*$")
    bytes = n and tonumber(n) * UNITS[unit]
  end
  -- Whole and at most 2^53 bytes: C keeps it as a size_t (lua_vm.c).
  if bytes and bytes % 1 == 0 and bytes <= 2 ^ 53 then return bytes end
  return nil
end
_M.parse_size = parse_size

-- ---- declaration ----

-- gw.shared_dict(name, size) while the configuration loads. `state` is the
-- configuration state of gateway.lua; `level` the caller's error level.
function _M.declare(state, name, size, level)
  if type(name) ~= "string" or not match(name, "^[%w_%.%-]+$") or #name > 63 then
    error("gw.shared_dict: the name must be 1-63 letters, digits, '_', '.' or '-' (got "
          .. tostring(name) .. ")", level + 1)
  end
  local bytes = parse_size(size)
  local min = tonumber(C.gw_ffi_shdict_min_size())
  if not bytes then
    error("gw.shared_dict: size must be bytes or a string like \"512k\", \"10m\", \"1g\" (got "
          .. tostring(size) .. ")", level + 1)
  end
  if bytes < min then
    error(("gw.shared_dict: '%s' is too small: %d bytes, the minimum is %d (\"16k\")")
          :format(name, bytes, min), level + 1)
  end
  local known = state.dict_sizes[name]
  if known then
    if known ~= bytes then
      error("gw.shared_dict: '" .. name .. "' declared twice with different sizes", level + 1)
    end
    return
  end
  if state.mode == "worker" and C.gw_ffi_shdict_find(name, #name, out_size) == nil then
    error("gw.shared_dict: '" .. name .. "' did not exist when the gateway started: "
          .. "a shared dict added by a reload needs a restart", level + 1)
  end
  state.dict_sizes[name] = bytes
  state.dicts[#state.dicts + 1] = { name = name, size = bytes }
end

-- ---- dict objects ----

local Dict = {}
Dict.__index = Dict

local function check(self, key, what)
  local d = type(self) == "table" and self._d
  if not d then error("gw.shared: " .. what .. " must be called with a colon: dict:" .. what .. "(...)", 3) end
  if type(key) ~= "string" or #key == 0 or #key > KEY_MAX then
    error("gw.shared." .. self.name .. ":" .. what .. ": the key must be a non-empty string (got "
          .. tostring(key) .. ")", 3)
  end
  return d
end

local function check_ttl(self, ttl, what)
  if ttl == nil then return 0 end
  if type(ttl) ~= "number" or ttl < 0 then
    error("gw.shared." .. self.name .. ":" .. what .. ": ttl must be a number of seconds >= 0", 3)
  end
  return ttl
end

-- d:get(key) -> value, or nil when missing or expired.
function Dict:get(key)
  local d = check(self, key, "get")
  if C.gw_ffi_shdict_get(d, key, #key, val) ~= OK then return nil end
  local t = val.type
  if t == T_STR then
    local s = ffi_string(val.str, val.len)
    return s -- not a tail call: see request.lua's request.new
  end
  if t == T_NUM then return val.num end
  return val.num ~= 0
end

local function store(self, key, value, ttl, add, what)
  local d = check(self, key, what)
  ttl = check_ttl(self, ttl, what)
  local t, rc = type(value), nil
  if t == "string" then
    rc = C.gw_ffi_shdict_set(d, key, #key, T_STR, 0, value, #value, ttl, add, out_err)
  elseif t == "number" then
    rc = C.gw_ffi_shdict_set(d, key, #key, T_NUM, value, nil, 0, ttl, add, out_err)
  elseif t == "boolean" then
    rc = C.gw_ffi_shdict_set(d, key, #key, T_BOOL, value and 1 or 0, nil, 0, ttl, add, out_err)
  elseif value == nil and add == 0 then
    rc = C.gw_ffi_shdict_set(d, key, #key, T_NIL, 0, nil, 0, 0, 0, out_err)
  else
    error("gw.shared." .. self.name .. ":" .. what .. ": values are strings, numbers or booleans (got "
          .. t .. ")", 3)
  end
  if rc == OK then return true end
  return false, ffi_string(out_err[0])
end

-- d:set(key, value, ttl) -> true, or false and "no memory". A nil value deletes.
function Dict:set(key, value, ttl) return store(self, key, value, ttl, 0, "set") end

-- d:add(key, value, ttl) -> true, or false and "exists" (or "no memory").
function Dict:add(key, value, ttl) return store(self, key, value, ttl, 1, "add") end

-- d:incr(key, by, init, ttl) -> the new value, or nil and "not found" /
-- "not a number". `init` and `ttl` apply only when the key is created.
function Dict:incr(key, by, init, ttl)
  local d = check(self, key, "incr")
  if by == nil then by = 1 end
  if type(by) ~= "number" then error("gw.shared." .. self.name .. ":incr: by must be a number", 2) end
  if init ~= nil and type(init) ~= "number" then
    error("gw.shared." .. self.name .. ":incr: init must be a number", 2)
  end
  ttl = check_ttl(self, ttl, "incr")
  local rc = C.gw_ffi_shdict_incr(d, key, #key, by, init ~= nil and 1 or 0, init or 0, ttl, out_num, out_err)
  if rc == OK then return out_num[0] end
  return nil, ffi_string(out_err[0])
end

-- d:gcra(key, rate, per, burst) -> allowed, remaining, reset, retry_after:
-- one exact rate-limit decision (the generic cell rate algorithm), atomic
-- across workers: `rate` requests per `per` seconds (default 1), up to
-- `burst` (default `rate`) back to back. `allowed` is true when the request
-- conforms (it is then counted); `remaining` is how many more could go
-- back to back now, `reset` the seconds until a full burst is available
-- again, `retry_after` the seconds until a refused request would conform
-- (0 when allowed). The key holds a number (the theoretical arrival time,
-- ms on the shared monotonic clock) that expires by itself. Runtime errors
-- ("not a number": the key holds something else) return nil, err.
function Dict:gcra(key, rate, per, burst)
  local d = check(self, key, "gcra")
  if per == nil then per = 1 end
  if burst == nil then burst = rate end
  -- `not (x > 0)` refuses NaN too; an infinite rate or per has no interval.
  if type(rate) ~= "number" or not (rate > 0) or rate == HUGE
     or type(per) ~= "number" or not (per > 0) or per == HUGE then
    error("gw.shared." .. self.name .. ":gcra: rate and per must be finite numbers > 0", 2)
  end
  if type(burst) ~= "number" or burst < 1 or burst % 1 ~= 0 then
    error("gw.shared." .. self.name .. ":gcra: burst must be a whole number >= 1", 2)
  end
  local interval = per * 1000 / rate
  local tolerance = (burst - 1) * interval
  if interval == HUGE or tolerance == HUGE then
    -- (1e-320 per second, or a huge burst of a slow rate: no whole interval)
    error("gw.shared." .. self.name .. ":gcra: rate, per and burst give no finite interval", 2)
  end
  local rc = C.gw_ffi_shdict_gcra(d, key, #key, interval, tolerance, -1, gcra_out, out_err)
  if rc ~= OK then return nil, ffi_string(out_err[0]) end
  local o = gcra_out
  return o.allowed ~= 0, tonumber(o.remaining), o.reset_ms / 1000, o.retry_after_ms / 1000
end

-- d:delete(key) -> true (also when the key was not there).
function Dict:delete(key)
  local d = check(self, key, "delete")
  C.gw_ffi_shdict_delete(d, key, #key)
  return true
end

-- In the master and in `gateway -t` there is no shared memory: a declared
-- dict is a stand-in whose methods say so.
local Stub = {}
Stub.__index = function(self, k)
  return function() error("gw.shared." .. self.name .. ":" .. tostring(k) .. ": shared dicts work only in a worker", 2) end
end

-- The object behind gw.shared.NAME.
function _M.open(state, name)
  if type(name) ~= "string" then return nil end
  local d = C.gw_ffi_shdict_find(name, #name, out_size)
  if d ~= nil then return setmetatable({ _d = d, name = name }, Dict) end
  if state.mode ~= "worker" and state.dict_sizes[name] then
    return setmetatable({ name = name }, Stub)
  end
  error("gw.shared." .. name .. ": no such shared dict (declare it with gw.shared_dict)", 3)
end

return _M
