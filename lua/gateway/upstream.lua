-- gateway.upstream: gw.upstream(NAME, spec) and the upstream object's
-- methods: up:request{...}, up:get, up:post, up:proxy.
--
-- Runtime failures return nil and a short, stable error string:
--   "connection refused", "connect failed", "connect timed out", "timeout",
--   "send timed out", "no healthy server", "upstream closed the connection",
--   "upstream response too large", "upstream certificate verify failed",
--   "upstream TLS handshake failed", "TLS handshake timed out", or a protocol
--   error message.
-- gateway.runtime maps them to 502/503/504 when a handler returns them.
-- Misuse (a bad spec or option) raises at the caller's line.
local base = require "gateway.base"
local sched = require "gateway.sched"
local cjson = require "cjson.safe"
local mwutil = require "gateway.mwutil"
local header_line, header_lines = mwutil.header_line, mwutil.header_lines

local ffi, C = base.ffi, base.C
local ffi_string = ffi.string
local OK, AGAIN, BAD_CONTEXT = base.OK, base.AGAIN, base.BAD_CONTEXT
local type, error, pairs, ipairs, tostring, tonumber, setmetatable, rawget, concat =
  type, error, pairs, ipairs, tostring, tonumber, setmetatable, rawget, table.concat
local lower, find, byte, format, gsub = string.lower, string.find, string.byte, string.format, string.gsub

ffi.cdef [[
typedef struct gw_upstream_s gw_upstream_t;
gw_upstream_t *gw_ffi_upstream_declare(const char *name, const char **addrs, const int *weights,
    int n, int balance, int keepalive_idle, double keepalive_timeout, double t_connect,
    double t_send, double t_read, int retries, int passive_failures, double passive_cooldown,
    double max_body, int breaker_failures, double breaker_window, double breaker_cooldown,
    const char *check_path, double check_interval, double check_timeout, int check_healthy,
    int check_unhealthy, int tls_verify, const char *tls_sni, const char *tls_ca, char *err,
    size_t errlen);
int gw_ffi_upstream_fetch(gw_task_t *t, uint32_t ts, gw_upstream_t *up, const char *method,
    size_t mlen, const char *target, size_t tlen, const char *lines, size_t llen,
    const char *body, size_t blen, int has_body, const char *key, size_t klen, double timeout,
    uint32_t *wait_id, const char **err);
int gw_ffi_upstream_proxy(gw_task_t *t, uint32_t ts, gw_req_t *r, uint32_t rs, gw_upstream_t *up,
    const char *target, size_t tlen, const char *lines, size_t llen, const char *key, size_t klen,
    uint32_t *wait_id, const char **err);
int gw_ffi_upstream_proxy_direct(gw_req_t *r, uint32_t rs, gw_upstream_t *up, const char *key,
    size_t klen, int answer, const char **err);
int gw_ffi_proxy_await(gw_task_t *t, uint32_t ts, gw_req_t *r, uint32_t rs, uint32_t *wait_id,
    int *status, const char **err);
int gw_ffi_proxy_commit(gw_req_t *r, uint32_t rs, const char *lines, size_t llen, const char **err);
int gw_ffi_proxy_read_body(gw_task_t *t, uint32_t ts, gw_req_t *r, uint32_t rs, uint32_t *wait_id,
    const char **body, size_t *blen, const char **err);
int gw_ffi_resp_proxy(gw_req_t *r, uint32_t rs, int status, const char *lines, size_t llen,
    int upstream_headers, const char **err);
int gw_ffi_proxy_header_at(gw_req_t *r, uint32_t rs, int i, const char **name, size_t *nlen,
    const char **value, size_t *vlen);
int64_t gw_ffi_req_body_length(gw_req_t *r, uint32_t rs);
]]

local _M = {}
local EMPTY = {}
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

-- res:body(): the whole body. For a proxied response it is read (and
-- buffered, bounded by max_body) on this first call: the response then goes
-- to the client as a buffered answer instead of being streamed.
-- res:set_header(name, value): sets a response header, replacing it in
-- every spelling (for a proxied answer without reading the others).
function Response:set_header(name, value)
  local h = self.headers
  local lname = lower(name)
  for k in pairs(h) do
    if type(k) == "string" and k ~= name and lower(k) == lname then h[k] = nil end
  end
  h[name] = value
end

function Response:body()
  local b = self._body
  if b then return b end
  local req = self._req
  if not req then return "" end
  local ctx = sched.current()
  local rc = C.gw_ffi_proxy_read_body(ctx.task, ctx.ts, req._r, req._s, base.out_wait,
    base.out_str, base.out_len, base.out_err)
  if rc == BAD_CONTEXT then error(base.FINISHED, 2) end
  local body, err
  if rc == AGAIN then
    body, err = sched.wait(ctx, base.out_wait[0])
    if body == nil then return nil, err end
  elseif rc == base.OK then -- the exchange had already ended: the body is here
    body = ffi_string(base.out_str[0], base.out_len[0])
  else
    return nil, ffi_string(base.out_err[0])
  end
  local _ = self.headers -- read them from C while the request still holds them
  self._body = body
  self._req = nil
  return body
end

function Response:json()
  local body, err0 = self:body()
  if body == nil then return nil, err0 end
  local v, err = cjson.decode(body)
  if v == nil then return nil, "invalid JSON: " .. tostring(err) end
  return v
end

local bad_response_header = mwutil.bad_response_header

-- Puts a header into a lower-case table: repeated names are joined with
-- ", ", except Set-Cookie, which becomes a list.
local function add_header(h, name, value)
  local old = h[name]
  if old == nil then
    h[name] = name == "set-cookie" and { value } or value
  elseif type(old) == "table" then
    old[#old + 1] = value
  else
    h[name] = old .. ", " .. value
  end
end

-- A proxied response reads its headers from C on first use of res.headers
-- (and keeps them); one whose headers no script touched is sent with the
-- upstream's headers copied in C, never turned into Lua strings at all.
local ProxyResponse = {}
-- res:set_header(name, value) on a proxied answer whose headers no script
-- read: the header is kept aside and C adds it to the upstream's own
-- (replacing one of the same name), so the headers stay unread in Lua.
--
-- The lines are kept as a list (name, value, ...) for a later read of
-- res.headers, an index by lower-case name, and the header block C takes,
-- grown line by line: no loop runs on the usual path (LuaJIT aborts a trace
-- on a loop inside a function called from the request's root trace).
local function proxy_set_header(res, name, value)
  local h = rawget(res, "headers")
  if h then return Response.set_header(res, name, value) end
  local line = header_line(name, value)
  if not line then error(bad_response_header(name), 2) end
  value = tostring(value)
  local extra, idx = rawget(res, "_extra"), rawget(res, "_xidx")
  if not extra then
    extra, idx = {}, {}
    rawset(res, "_extra", extra)
    rawset(res, "_xidx", idx)
  end
  local lname = lower(name)
  local i = idx[lname]
  if i then
    extra[i + 1] = value
    rawset(res, "_xblob", false) -- a replaced line: rebuilt when sent
    return
  end
  local n = #extra
  extra[n + 1] = name
  extra[n + 2] = value
  idx[lname] = n + 1
  local blob = rawget(res, "_xblob")
  if blob ~= false then rawset(res, "_xblob", (blob or "") .. line) end
end

local function rebuild_blob(extra)
  local lines, n = {}, 0
  for i = 1, #extra, 2 do
    n = n + 1
    lines[n] = extra[i] .. ": " .. extra[i + 1] .. "\r\n"
  end
  return concat(lines, "", 1, n)
end

-- The header block of the lines set on an unread proxied answer ("" if none).
local function extra_blob(res)
  local blob = rawget(res, "_xblob")
  if blob then return blob end
  local extra = rawget(res, "_extra")
  if not extra then return "" end
  return rebuild_blob(extra)
end

ProxyResponse.__index = function(res, k)
  if k == "set_header" then return proxy_set_header end
  if k ~= "headers" then return Response[k] end
  local req = rawget(res, "_req")
  local h = {}
  local out_str, out_len, out_str2, out_len2 = base.out_str, base.out_len, base.out_str2, base.out_len2
  local i = 0
  while req do
    local rc = C.gw_ffi_proxy_header_at(req._r, req._s, i, out_str, out_len, out_str2, out_len2)
    if rc ~= base.OK then break end
    i = i + 1
    add_header(h, lower(ffi_string(out_str[0], out_len[0])), ffi_string(out_str2[0], out_len2[0]))
  end
  local extra = rawget(res, "_extra") -- set before the headers were read
  if extra then
    for j = 1, #extra, 2 do h[lower(extra[j])] = extra[j + 1] end
    rawset(res, "_extra", nil)
    rawset(res, "_xidx", nil)
    rawset(res, "_xblob", nil)
  end
  setmetatable(h, Headers)
  rawset(res, "headers", h)
  return h
end

-- A buffered response keeps its header lines as one string (from C) and
-- parses them on first use of res.headers.
local BufferedResponse = {}
BufferedResponse.__index = function(res, k)
  if k ~= "headers" then return Response[k] end
  local h = {}
  local raw = rawget(res, "_rawh") or ""
  local pos, len = 1, #raw
  while pos <= len do
    local eol = find(raw, "\r\n", pos, true) or len + 1
    local colon = find(raw, ":", pos, true)
    if colon and colon < eol then
      local value = raw:sub(colon + 1, eol - 1):match("^[ \t]*(.-)[ \t]*$")
      add_header(h, lower(raw:sub(pos, colon - 1)), value)
    end
    pos = eol + 2
  end
  setmetatable(h, Headers)
  rawset(res, "headers", h)
  return h
end

local function new_response(status, rawh, body)
  local res = setmetatable({ status = status, _rawh = rawh, _body = body }, BufferedResponse)
  return res -- not a tail call: see request.new
end
_M.new_response = new_response
_M.Response = Response

-- ---- declaring ----

-- Option readers; errors point at the line that called gw.upstream, four
-- frames up from num (num, declare, gw.upstream, that line).
local USER = 4

-- The largest value of each kind C takes: counts go to C ints, sizes to a
-- size_t (exact in a double up to 2^53); times (seconds) have no bound here,
-- C clamps them to a year (src/config.h GW_MAX_SECONDS). NaN is never valid.
local MAX = { time = math.huge, count = 2147483647, size = 2 ^ 53 }
local MAX_TEXT = { time = "", count = " and <= 2^31-1", size = " and <= 2^53" }

local function checked(v, kind, name)
  if type(v) ~= "number" or not (v >= 0 and v <= MAX[kind]) then
    error(format("gw.upstream: %s must be a number >= 0%s", name, MAX_TEXT[kind]), USER + 1)
  end
  return v
end

local function num(spec, key, default, kind)
  local v = spec[key]
  if v == nil then return default end
  v = checked(v, kind, key) -- not a tail call: USER counts this frame
  return v
end

local function sub_num(spec, tkey, key, default, kind)
  local t = spec[tkey]
  if t == nil then return default end
  if type(t) ~= "table" then error("gw.upstream: " .. tkey .. " must be a table", USER) end
  local v = t[key]
  if v == nil then return default end
  v = checked(v, kind, tkey .. "." .. key) -- not a tail call: USER counts this frame
  return v
end

-- spec.tls: { verify = true, sni = NAME, ca = PATH } (each optional).
-- Returns verify (-1 without a tls table: C's default, on), sni, ca (a
-- relative path is read from the configuration's folder).
local TLS_KEYS = { verify = true, sni = true, ca = true }
local function tls_opts(t)
  if t == nil then return -1, nil, nil end
  if type(t) ~= "table" then error("gw.upstream: tls must be a table { verify =, sni =, ca = }", USER) end
  for k in pairs(t) do
    if not TLS_KEYS[k] then error("gw.upstream: tls: unknown option '" .. tostring(k) .. "'", USER) end
  end
  local verify = t.verify
  if verify ~= nil and type(verify) ~= "boolean" then
    error("gw.upstream: tls.verify must be true or false", USER)
  end
  local sni = t.sni
  if sni ~= nil and (type(sni) ~= "string" or not find(sni, "^[%w][%w%.%-]*$")) then
    error("gw.upstream: tls.sni must be a host name", USER)
  end
  local ca = t.ca
  if ca ~= nil then
    if type(ca) ~= "string" or ca == "" then error("gw.upstream: tls.ca must be a file path", USER) end
    if byte(ca, 1) ~= 47 then
      local state = require("gateway")._state
      ca = (state.config_dir or ".") .. "/" .. ca
    end
  end
  return verify == false and 0 or 1, sni, ca
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
    if type(weight) ~= "number" or not (weight >= 1 and weight <= MAX.count) then
      error("gw.upstream: server #" .. i .. ": weight must be >= 1 and <= 2^31-1", 3)
    end
    keep[i] = addr
    addrs[i - 1] = addr
    weights[i - 1] = weight
  end
  local balance = BALANCE[spec.balance or "round_robin"]
  if not balance then error("gw.upstream: unknown balance '" .. tostring(spec.balance) .. "'", 3) end
  if spec.balance == "hash" and type(spec.hash_key) ~= "function" then
    error("gw.upstream: balance = \"hash\" needs hash_key = function(req) ... end", 3)
  end
  local active = spec.health and spec.health.active
  if active ~= nil then
    if type(active) ~= "table" or type(active.path) ~= "string" or active.path:sub(1, 1) ~= "/"
        or find(active.path, "[%z\1-\32\127]") then
      error("gw.upstream: health.active.path must be a path starting with '/', without spaces or control bytes", 3)
    end
  end
  active = active or {}
  local breaker = spec.breaker or {}
  if type(breaker) ~= "table" then error("gw.upstream: breaker must be a table", 3) end
  if spec.breaker and (type(breaker.failures) ~= "number" or breaker.failures < 1) then
    error("gw.upstream: breaker.failures must be a number >= 1", 3)
  end
  local passive = spec.health and spec.health.passive or {}
  local tls_verify, tls_sni, tls_ca = tls_opts(spec.tls)
  local errbuf = ffi.new("char[512]")
  local up = C.gw_ffi_upstream_declare(name, addrs, weights, n, balance,
    sub_num(spec, "keepalive", "idle", 32, "count"), sub_num(spec, "keepalive", "timeout", 60, "time"),
    sub_num(spec, "timeouts", "connect", 5, "time"), sub_num(spec, "timeouts", "send", 30, "time"),
    sub_num(spec, "timeouts", "read", 30, "time"), num(spec, "retries", 1, "count"),
    num(passive, "failures", 0, "count"), num(passive, "cooldown", 10, "time"),
    num(spec, "max_body", 8 * 1024 * 1024, "size"), num(breaker, "failures", 0, "count"),
    num(breaker, "window", 10, "time"), num(breaker, "cooldown", 30, "time"),
    active.path, num(active, "interval", 10, "time"), num(active, "timeout", 2, "time"),
    num(active, "healthy", 2, "count"), num(active, "unhealthy", 2, "count"), tls_verify, tls_sni, tls_ca,
    errbuf, 512)
  if up == nil then error("gw.upstream " .. name .. ": " .. ffi_string(errbuf), 3) end
  keep = nil
  return setmetatable({ name = name, _up = up, hash_key = spec.hash_key }, Upstream)
end

-- ---- requests ----

-- Percent-encoding for query keys and values: everything but RFC 3986's
-- unreserved characters. The table is built once; a value with nothing to
-- escape (the common case) skips gsub.
local ESCAPE = {}
for c = 0, 255 do ESCAPE[string.char(c)] = format("%%%02X", c) end
local UNSAFE = "[^%w%-%._~]"

local function esc(s)
  if type(s) ~= "string" then s = tostring(s) end
  if not find(s, UNSAFE) then return s end
  return (gsub(s, UNSAFE, ESCAPE))
end

local function encode_query(q)
  if type(q) == "string" then return q end
  local parts, n = {}, 0
  for k, v in pairs(q) do
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
  if type(method) ~= "string" then error("up:request: method must be a string", 2) end
  local timeout = opts.timeout or 0
  if type(timeout) ~= "number" or not (timeout >= 0) then -- NaN too
    error("up:request: timeout must be a number of seconds >= 0", 2)
  end
  local target = target_of(opts.path or "/", opts.query)
  local lines, n = {}, 0
  local body, has_body = opts.body, 0
  if opts.json ~= nil then
    local jerr
    body, jerr = cjson.encode(opts.json)
    if body == nil then error("up:request: json cannot be encoded: " .. tostring(jerr), 2) end
    n = n + 1
    lines[n] = "Content-Type: application/json\r\n"
  end
  n = header_lines(opts.headers, lines, n)
  if not n then error("up:request: invalid request header (CR, LF or a bad name)", 2) end
  if body ~= nil then
    body = tostring(body)
    has_body = 1
  elseif method == "POST" or method == "PUT" or method == "PATCH" then
    has_body = 1
  end
  local blob = concat(lines, "", 1, n)
  local key = opts.hash_key
  if key == nil and self.hash_key then
    local req = sched.request()
    key = req and self.hash_key(req)
  end
  key = key ~= nil and tostring(key) or ""
  local rc = C.gw_ffi_upstream_fetch(ctx.task, ctx.ts, self._up, method, #method, target, #target,
    blob, #blob, body, body and #body or 0, has_body, key, #key, timeout,
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
                        timeout = opts.timeout, hash_key = opts.hash_key }
end

-- up:post(path, body [, opts])
function Upstream:post(path, body, opts)
  opts = opts or {}
  return self:request { method = "POST", path = path, body = body, query = opts.query,
                        headers = opts.headers, timeout = opts.timeout, json = opts.json,
                        hash_key = opts.hash_key }
end

-- up:proxy(req [, { path=, query=, headers= }]): forwards the client's
-- request (method, path, query, headers, body) and returns the response
-- (status and headers now; the body streams to the client when the handler
-- returns it), or nil and an error.
function Upstream:proxy(req, opts)
  if type(req) ~= "table" or req._r == nil then error("up:proxy: the request is required", 2) end
  local ctx = sched.current()
  opts = opts or EMPTY
  -- A small body is read first so that a retry can send it again; a larger
  -- or chunked one (that no script has read) streams through C as it comes,
  -- with backpressure, and is not bounded by limits.body_bytes.
  local cl = C.gw_ffi_req_body_length(req._r, req._s)
  if cl > 0 and cl <= 65536 then req:body() end
  local target
  if opts.path or opts.query then
    local path = opts.path or req.path
    if opts.query ~= nil then
      target = target_of(path, opts.query)
    else
      local uri = req.uri
      local q = find(uri, "?", 1, true)
      target = q and (path .. uri:sub(q)) or path
      if byte(target, 1) ~= 47 then error("up:proxy: path must start with '/'", 2) end
    end
  end
  -- No target: C sends the client's own, as it came.
  local blob = ""
  if opts.headers then
    local lines = {}
    local n = header_lines(opts.headers, lines, 0)
    if not n then error("up:proxy: invalid request header (CR, LF or a bad name)", 2) end
    blob = concat(lines, "", 1, n)
  end
  local key = ""
  if self.hash_key then key = tostring(self.hash_key(req) or "") end
  local rc = C.gw_ffi_upstream_proxy(ctx.task, ctx.ts, req._r, req._s, self._up, target,
    target and #target or 0, blob, #blob, key, #key, base.out_wait, base.out_err)
  if rc == BAD_CONTEXT then error(base.FINISHED, 2) end
  -- OK: it failed at once (the client's buffered body was broken).
  if rc == OK then return nil, ffi_string(base.out_err[0]) end
  if rc ~= AGAIN then error("up:proxy: " .. ffi_string(base.out_err[0]), 2) end
  local status, err = sched.wait(ctx, base.out_wait[0])
  if status == nil then return nil, err end
  local res = setmetatable({ status = status, _req = req, _proxy = true }, ProxyResponse)
  return res -- not a tail call: see request.new
end

-- ---- direct proxies ----
--
-- A route handler that is exactly `function(req) return UP:proxy(req) end`
-- (UP an upvalue), on a route no middleware wraps, hands its answer to the
-- client unseen: C can send it itself when the head comes, and the request's
-- coroutine ends at once instead of being resumed for the head
-- (gw_ffi_upstream_proxy_direct). Recognised by comparing the handler's
-- bytecode with a reference compiled here, so it follows LuaJIT's own
-- encoding; anything else (another shape, a global UP, a replaced proxy
-- method, a request with a body) takes the ordinary path with the same result.
local jutil = require "jit.util"
local funcbc, funcinfo, funck = jutil.funcbc, jutil.funcinfo, jutil.funck
local upvaluejoin, getmetatable = debug.upvaluejoin, getmetatable
local DIRECT_REF = loadstring("local u; return function(req) return u:proxy(req) end")()

-- A function returning the current value of `fn`'s upvalue `uv`: its own
-- upvalue is joined to that very variable (debug.upvaluejoin), so it sees
-- every later assignment, and reading it is a plain upvalue load the JIT
-- compiles. debug.getupvalue on every request would not compile: the trace
-- would stop there and, inside the handler's xpcall, the rest of the request
-- would run in the interpreter.
local function upvalue_reader(fn, uv)
  local value
  local function read() return value end
  upvaluejoin(read, 1, fn, uv)
  return read
end

-- If `fn` has the reference's shape: a function returning the current UP
-- (see upvalue_reader); else false.
function _M.direct_proxy_upvalue(fn)
  if type(fn) ~= "function" then return false end
  local info, ref = funcinfo(fn), funcinfo(DIRECT_REF)
  if info.addr or info.params ~= 1 or info.is_vararg or info.bytecodes ~= ref.bytecodes
     or funck(fn, -1) ~= "proxy" then
    return false
  end
  local uv
  for pc = 1, ref.bytecodes - 1 do
    local ins, want = funcbc(fn, pc), funcbc(DIRECT_REF, pc)
    if pc == 1 then
      -- UGET slot, upvalue: the slot must match, the upvalue may differ.
      if ins % 65536 ~= want % 65536 then return false end
      uv = (ins - ins % 65536) / 65536
    elseif ins ~= want then
      return false
    end
  end
  return upvalue_reader(fn, uv + 1)
end

-- Starts the proxy of a recognised handler (`upstream_of` returns its UP)
-- without waiting for the head.
-- `answer`: C answers the client itself (a route without middleware);
-- returns true, or false when the ordinary path must run the handler.
-- Without `answer`: returns a deferred response for the middleware around
-- (see Deferred below), or false.
local Deferred = {}
function _M.proxy_direct(req, upstream_of, answer)
  local up = upstream_of()
  if getmetatable(up) ~= Upstream or rawget(up, "proxy") ~= nil then return false end
  local key = ""
  if up.hash_key then key = tostring(up.hash_key(req) or "") end
  local rc = C.gw_ffi_upstream_proxy_direct(req._r, req._s, up._up, key, #key, answer and 1 or 0,
    base.out_err)
  if rc == base.OK then
    if answer then return true end
    -- Not a tail call: see request.new.
    local d = setmetatable({ _req = req, _proxy = true, _deferred = true }, Deferred)
    return d
  end
  if rc == base.DECLINED then return false end
  if rc == BAD_CONTEXT then error(base.FINISHED, 2) end
  error("up:proxy: " .. ffi_string(base.out_err[0]), 2)
end

-- A deferred response stands for what `return UP:proxy(req)` would have
-- returned while the exchange runs. Returned unseen by every middleware,
-- it is handed to C (commit_deferred), which answers without resuming Lua
-- for the head. The first use of any field waits for the head and turns it
-- into that very answer: a proxied response, or the error response a
-- failed proxy gives (_M.deferred_failure, set by the runtime).
local out_status = ffi.new("int[1]")

local function materialize(d)
  local req = rawget(d, "_req")
  local ctx = sched.current()
  rawset(d, "_deferred", nil)
  local rc = C.gw_ffi_proxy_await(ctx.task, ctx.ts, req._r, req._s, base.out_wait, out_status,
    base.out_err)
  local status, err
  if rc == AGAIN then
    status, err = sched.wait(ctx, base.out_wait[0])
  elseif rc == base.OK then
    status = out_status[0]
  elseif rc == BAD_CONTEXT then
    error(base.FINISHED, 3)
  else
    err = ffi_string(base.out_err[0])
  end
  if status ~= nil then
    rawset(d, "status", status)
    return setmetatable(d, ProxyResponse)
  end
  rawset(d, "_req", nil)
  rawset(d, "_proxy", nil)
  for k, v in pairs(_M.deferred_failure(req, err)) do rawset(d, k, v) end
  return setmetatable(d, nil)
end

-- res:set_header on a deferred response keeps it deferred: the header is
-- noted (as on an unread proxied response) and C adds it when it answers.
local function deferred_set_header(d, name, value)
  if rawget(d, "_deferred") == nil then return d:set_header(name, value) end
  return proxy_set_header(d, name, value)
end

Deferred.__index = function(d, k)
  if k == "set_header" then return deferred_set_header end
  materialize(d)
  return d[k]
end
Deferred.__newindex = function(d, k, v)
  materialize(d)
  d[k] = v
end

-- Hands an unseen deferred response to C, which answers the client.
function _M.commit_deferred(req, res)
  local blob = extra_blob(res)
  local rc = C.gw_ffi_proxy_commit(req._r, req._s, blob, #blob, base.out_err)
  if rc == BAD_CONTEXT then error(base.FINISHED, 0) end
  if rc ~= base.OK then error(ffi_string(base.out_err[0]), 0) end
end

-- Hop-by-hop headers of a proxied answer stay on the upstream hop; Date is
-- the gateway's own (as nginx does), so the upstream's is not repeated.
local HOP = { connection = true, ["keep-alive"] = true, te = true, trailer = true,
              ["transfer-encoding"] = true, upgrade = true, ["proxy-connection"] = true,
              ["content-length"] = true, date = true }

-- A copy of `headers` without hop-by-hop headers (and those the upstream
-- named in its Connection header) and without Date.
function _M.end_to_end(headers)
  local named = mwutil.connection_names(headers.connection)
  local out = {}
  for k, v in pairs(headers) do
    local lk = lower(k)
    if not HOP[lk] and not named[lk] then out[k] = v end
  end
  return out
end

-- Sends a proxied response whose body has not been read: the head as the
-- response object now says, then the body streamed by C.
function _M.send_proxied(req, res)
  local headers = rawget(res, "headers")
  if headers == nil then
    -- Unread: C copies the upstream's end-to-end headers itself, after the
    -- ones set with res:set_header (which replace theirs).
    local blob = extra_blob(res)
    local rc = C.gw_ffi_resp_proxy(req._r, req._s, res.status, blob, #blob, 1, base.out_err)
    if rc == BAD_CONTEXT then error(base.FINISHED, 0) end
    if rc ~= base.OK then error(ffi_string(base.out_err[0]), 0) end
    return
  end
  local lines = {}
  local n, bad = header_lines(_M.end_to_end(headers), lines, 0)
  if not n then error(bad_response_header(bad), 0) end
  local blob = concat(lines, "", 1, n)
  local rc = C.gw_ffi_resp_proxy(req._r, req._s, res.status, blob, #blob, 0, base.out_err)
  if rc == BAD_CONTEXT then error(base.FINISHED, 0) end
  if rc ~= base.OK then error(ffi_string(base.out_err[0]), 0) end
end

_M.Upstream = Upstream
return _M
