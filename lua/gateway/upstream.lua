-- gateway.upstream: gw.upstream(NAME, spec) and the upstream object's
-- methods: up:request{...}, up:get, up:post, up:proxy.
--
-- Runtime failures return nil and a short, stable error string:
--   "connection refused", "connect failed", "connect timed out", "timeout",
--   "send timed out", "no healthy server", "upstream closed the connection",
--   "upstream response too large", or a protocol error message.
-- gateway.runtime maps them to 502/503/504 when a handler returns them.
-- Misuse (a bad spec or option) raises at the caller's line.
local base = require "gateway.base"
local sched = require "gateway.sched"
local cjson = require "cjson.safe"

local ffi, C = base.ffi, base.C
local ffi_string = ffi.string
local AGAIN, BAD_CONTEXT = base.AGAIN, base.BAD_CONTEXT
local type, error, pairs, ipairs, tostring, setmetatable, rawget, concat =
  type, error, pairs, ipairs, tostring, setmetatable, rawget, table.concat
local lower, find, byte, format, gsub = string.lower, string.find, string.byte, string.format, string.gsub

ffi.cdef [[
typedef struct gw_upstream_s gw_upstream_t;
gw_upstream_t *gw_ffi_upstream_declare(const char *name, const char **addrs, const int *weights,
    int n, int balance, int keepalive_idle, double keepalive_timeout, double t_connect,
    double t_send, double t_read, int retries, int passive_failures, double passive_cooldown,
    double max_body, char *err, size_t errlen);
int gw_ffi_upstream_fetch(gw_task_t *t, uint32_t ts, gw_upstream_t *up, const char *method,
    size_t mlen, const char *target, size_t tlen, const char *lines, size_t llen,
    const char *body, size_t blen, int has_body, const char *key, size_t klen, double timeout,
    uint32_t *wait_id, const char **err);
]]

local _M = {}
local Upstream = {}
Upstream.__index = Upstream

local BALANCE = { round_robin = 0, least_conn = 1, hash = 2, ewma = 3 }

-- ---- the response object ----

local Headers = {
  __index = function(t, k)
    if type(k) ~= "string" then return nil end
    local lk = lower(k)
    if lk == k then return nil end
    return rawget(t, lk)
  end,
}

local Response = {}
Response.__index = Response

function Response:body() return self._body or "" end

function Response:json()
  local v, err = cjson.decode(self._body or "")
  if v == nil then return nil, "invalid JSON: " .. tostring(err) end
  return v
end

local function new_response(status, headers, body)
  return setmetatable({ status = status, headers = setmetatable(headers, Headers), _body = body },
                      Response)
end
_M.new_response = new_response
_M.Response = Response

-- ---- declaring ----

local function num(spec, key, default, level)
  local v = spec[key]
  if v == nil then return default end
  if type(v) ~= "number" or v < 0 then error(format("gw.upstream: %s must be a number >= 0", key), level + 1) end
  return v
end

local function sub_num(spec, tkey, key, default, level)
  local t = spec[tkey]
  if t == nil then return default end
  if type(t) ~= "table" then error("gw.upstream: " .. tkey .. " must be a table", level + 1) end
  return num(t, key, default, level + 1)
end

function _M.declare(name, spec)
  if type(name) ~= "string" or name == "" then error("gw.upstream: a name is required", 3) end
  if type(spec) ~= "table" then error("gw.upstream: a spec table is required", 3) end
  local servers = spec.servers
  if type(servers) == "string" then servers = { servers } end
  if type(servers) ~= "table" or #servers == 0 then
    error("gw.upstream: servers must be a non-empty list", 3)
  end
  local n = #servers
  local addrs = ffi.new("const char *[?]", n)
  local weights = ffi.new("int[?]", n)
  local keep = {} -- anchors the address strings during the call
  for i, s in ipairs(servers) do
    local addr, weight = s, 1
    if type(s) == "table" then addr, weight = s.addr, s.weight or 1 end
    if type(addr) ~= "string" then error("gw.upstream: server #" .. i .. " has no address", 3) end
    if type(weight) ~= "number" or weight < 1 then error("gw.upstream: server #" .. i .. ": weight must be >= 1", 3) end
    keep[i] = addr
    addrs[i - 1] = addr
    weights[i - 1] = weight
  end
  local balance = BALANCE[spec.balance or "round_robin"]
  if not balance then error("gw.upstream: unknown balance '" .. tostring(spec.balance) .. "'", 3) end
  if spec.balance == "hash" and type(spec.hash_key) ~= "function" then
    error("gw.upstream: balance = \"hash\" needs hash_key = function(req) ... end", 3)
  end
  if spec.health and spec.health.active then
    error("gw.upstream: active health checks are not supported by this build yet", 3)
  end
  if spec.breaker then error("gw.upstream: the circuit breaker is not supported by this build yet", 3) end
  local passive = spec.health and spec.health.passive or {}
  local errbuf = ffi.new("char[256]")
  local up = C.gw_ffi_upstream_declare(name, addrs, weights, n, balance,
    sub_num(spec, "keepalive", "idle", 32, 2), sub_num(spec, "keepalive", "timeout", 60, 2),
    sub_num(spec, "timeouts", "connect", 5, 2), sub_num(spec, "timeouts", "send", 30, 2),
    sub_num(spec, "timeouts", "read", 30, 2), num(spec, "retries", 1, 2),
    num(passive, "failures", 0, 2), num(passive, "cooldown", 10, 2),
    num(spec, "max_body", 8 * 1024 * 1024, 2), errbuf, 256)
  if up == nil then error("gw.upstream " .. name .. ": " .. ffi_string(errbuf), 3) end
  keep = nil
  return setmetatable({ name = name, _up = up, hash_key = spec.hash_key }, Upstream)
end

-- ---- requests ----

local function encode_query(q)
  if type(q) == "string" then return q end
  local parts, n = {}, 0
  for k, v in pairs(q) do
    local function esc(s)
      return (gsub(tostring(s), "[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
    end
    if type(v) == "table" then
      for _, x in ipairs(v) do
        n = n + 1
        parts[n] = esc(k) .. "=" .. esc(x)
      end
    elseif v == true then
      n = n + 1
      parts[n] = esc(k)
    else
      n = n + 1
      parts[n] = esc(k) .. "=" .. esc(v)
    end
  end
  return concat(parts, "&")
end
_M.encode_query = encode_query

local function header_lines(headers, out, n)
  if headers then
    for k, v in pairs(headers) do
      if type(v) == "table" then
        for _, x in ipairs(v) do
          n = n + 1
          out[n] = k .. ": " .. tostring(x) .. "\r\n"
        end
      else
        n = n + 1
        out[n] = k .. ": " .. tostring(v) .. "\r\n"
      end
    end
  end
  return n
end

local function target_of(path, query)
  if type(path) ~= "string" or byte(path, 1) ~= 47 then
    error("upstream request: path must start with '/'", 3)
  end
  if query ~= nil then
    local qs = encode_query(query)
    if qs ~= "" then path = path .. (find(path, "?", 1, true) and "&" or "?") .. qs end
  end
  return path
end

-- up:request{ method=, path=, query=, headers=, body=, json=, timeout= }
function Upstream:request(opts)
  if type(opts) ~= "table" then error("up:request: an options table is required", 2) end
  local ctx = sched.current()
  if not ctx then error("up:request: only inside a request or a timer", 2) end
  local method = opts.method or "GET"
  local target = target_of(opts.path or "/", opts.query)
  local lines, n = {}, 0
  local body, has_body = opts.body, 0
  if opts.json ~= nil then
    body = cjson.encode(opts.json)
    n = n + 1
    lines[n] = "Content-Type: application/json\r\n"
  end
  n = header_lines(opts.headers, lines, n)
  if body ~= nil then
    body = tostring(body)
    has_body = 1
  elseif method == "POST" or method == "PUT" or method == "PATCH" then
    has_body = 1
  end
  local blob = concat(lines, "", 1, n)
  local key = ""
  local rc = C.gw_ffi_upstream_fetch(ctx.task, ctx.ts, self._up, method, #method, target, #target,
    blob, #blob, body, body and #body or 0, has_body, key, #key, opts.timeout or 0,
    base.out_wait, base.out_err)
  if rc == BAD_CONTEXT then error(base.FINISHED, 2) end
  if rc ~= AGAIN then error("up:request: " .. ffi_string(base.out_err[0]), 2) end
  local status, headers, resp_body = sched.wait(ctx, base.out_wait[0])
  if status == nil then return nil, headers end
  return new_response(status, headers, resp_body)
end

-- up:get(path [, opts])
function Upstream:get(path, opts)
  opts = opts or {}
  return self:request { method = "GET", path = path, query = opts.query, headers = opts.headers,
                        timeout = opts.timeout }
end

-- up:post(path, body [, opts])
function Upstream:post(path, body, opts)
  opts = opts or {}
  return self:request { method = "POST", path = path, body = body, query = opts.query,
                        headers = opts.headers, timeout = opts.timeout, json = opts.json }
end

_M.Upstream = Upstream
return _M
