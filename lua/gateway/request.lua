-- gateway.request: the `req` object handlers and middleware receive.
--
-- A req is a plain table holding the C request handle (_r, _s) plus the
-- fields routing needed at once (method, path). Everything else is computed
-- on first use by __index and, where it cannot change, cached in the table:
-- headers, query and body cost nothing unless a script touches them.
--
-- Fields: method, path, uri, query, headers, params, ip, scheme, host, id,
-- route, ctx, consumer, client_cert. Methods: req:body(), req:json(), req:header_list().
-- Errors: using a req after its request finished raises
-- "request already finished".
local base = require "gateway.base"
local router = require "gateway.router"
local sched = require "gateway.sched"
local cjson = require "cjson.safe"

local ffi, C = base.ffi, base.C
local ffi_string = ffi.string
local OK, AGAIN, BAD_CONTEXT, DECLINED = base.OK, base.AGAIN, base.BAD_CONTEXT, base.DECLINED
local out_str, out_len, out_str2, out_len2 = base.out_str, base.out_len, base.out_str2, base.out_len2
local error, type, rawget, rawset, setmetatable, tonumber =
  error, type, rawget, rawset, setmetatable, tonumber
local gsub, char, find, sub, lower = string.gsub, string.char, string.find, string.sub, string.lower

local _M = {}
local methods = {}
local getters = {}

local function finished() error(base.FINISHED, 3) end

-- ---- headers: a proxy table, reads and writes go to C ----

local Headers = {}
-- The key the proxy keeps its req under: a table no script can name, so
-- every string key and every other key reaches __index and __newindex
-- (in slot 1, req.headers[1] read the req and a write replaced it).
local REQ = {}

Headers.__index = function(h, name)
  local req = rawget(h, REQ)
  if type(name) ~= "string" then return nil end
  local rc = C.gw_ffi_req_header(req._r, req._s, name, #name, out_str, out_len)
  -- Not `return ffi_string(...)`: see request.new.
  if rc == OK then
    local v = ffi_string(out_str[0], out_len[0])
    return v
  end
  if rc == BAD_CONTEXT then finished() end
  return nil
end

Headers.__newindex = function(h, name, value)
  local req = rawget(h, REQ)
  if type(name) ~= "string" then error("header names are strings", 2) end
  if value ~= nil and type(value) ~= "string" then value = tostring(value) end
  local rc = C.gw_ffi_req_set_header(req._r, req._s, name, #name, value, value and #value or 0)
  if rc == BAD_CONTEXT then finished() end
  if rc ~= OK then error("invalid request header " .. name .. " (CR, LF or a bad name)", 2) end
end

-- ---- query string ----

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end
_M.unescape = unescape

local function parse_query(qs)
  local t = {}
  local pos, len = 1, #qs
  while pos <= len do
    local amp = find(qs, "&", pos, true) or len + 1
    local pair = sub(qs, pos, amp - 1)
    if pair ~= "" then
      local eq = find(pair, "=", 1, true)
      local k, v
      if eq then
        k, v = unescape(sub(pair, 1, eq - 1)), unescape(sub(pair, eq + 1))
      else
        k, v = unescape(pair), true
      end
      local old = t[k]
      if old == nil then
        t[k] = v
      elseif type(old) == "table" then
        old[#old + 1] = v
      else
        t[k] = { old, v }
      end
    end
    pos = amp + 1
  end
  return t
end
_M.parse_query = parse_query

-- ---- lazily computed fields ----

local function head(req)
  local h = base.head
  if C.gw_ffi_req_head(req._r, req._s, h) ~= OK then finished() end
  return h
end

function getters.headers(req)
  local h = setmetatable({ [REQ] = req }, Headers)
  rawset(req, "headers", h)
  return h
end

function getters.uri(req)
  local h = head(req)
  local v = ffi_string(h.uri, h.uri_len)
  rawset(req, "uri", v)
  return v
end

function getters.query(req)
  local h = head(req)
  local q = {}
  if h.uri_len > h.path_len + 1 then
    q = parse_query(ffi_string(h.uri + h.path_len + 1, h.uri_len - h.path_len - 1))
  end
  rawset(req, "query", q)
  return q
end

function getters.host(req)
  local h = head(req)
  local v = lower(ffi_string(h.host, h.host_len))
  if sub(v, 1, 1) == "[" then
    v = sub(v, 1, (find(v, "]", 1, true) or #v))
  else
    local colon = find(v, ":", 1, true)
    if colon then v = sub(v, 1, colon - 1) end
  end
  rawset(req, "host", v)
  return v
end

function getters.ip(req)
  local p = C.gw_ffi_req_ip(req._r, req._s, out_len)
  if p == nil then finished() end
  local v = ffi_string(p, out_len[0])
  rawset(req, "ip", v)
  return v
end

function getters.scheme(req)
  local v = head(req).tls ~= 0 and "https" or "http"
  rawset(req, "scheme", v)
  return v
end

-- req.client_cert: nil when the client sent no certificate (or on plain
-- HTTP), else { subject =, issuer =, serial =, fingerprint =, verified =,
-- error = } (docs/request.md). A table is cached per request; a script may change its
-- copy without touching anyone else's.
local cert_out = ffi.new("gw_ffi_cert_t")
function getters.client_cert(req)
  local rc = C.gw_ffi_req_client_cert(req._r, req._s, cert_out)
  if rc == BAD_CONTEXT then finished() end
  if rc ~= OK then return nil end -- not cached: req.client_cert must read nil, not false
  local o = cert_out
  local v = {
    subject = ffi_string(o.subject), issuer = ffi_string(o.issuer),
    serial = ffi_string(o.serial), fingerprint = ffi_string(o.fingerprint),
    verified = o.verified ~= 0, error = o.error ~= nil and ffi_string(o.error) or nil,
  }
  rawset(req, "client_cert", v)
  return v
end

-- The id is never cached: request_id middleware may replace it.
function getters.id(req)
  local p = C.gw_ffi_req_id(req._r, req._s, out_len)
  if p == nil then finished() end
  local v = ffi_string(p, out_len[0])
  return v
end

function getters.ctx(req)
  local t = {}
  rawset(req, "ctx", t)
  return t
end

-- The path as it came, kept in _rp: req.path reads it until a script sets
-- its own (a raw field from then on), and params are cut from it whatever
-- req.path became.
function getters.path(req) return rawget(req, "_rp") end

-- params and route come from the route record routing found (runtime.lua
-- keeps it in _rt), on first read: most handlers never read their params,
-- and a table made per request costs its allocation and its sweep. {} when
-- no route matched; router.EMPTY (read-only) for a route without
-- parameters.
-- req.route: a script's own value once it set one (a raw field), else the
-- matched route's pattern. Also what C labels the request's metrics and
-- log line with (runtime.lua).
local function route_of(req)
  local route = rawget(req, "route")
  if route == nil then
    local rt = rawget(req, "_rt")
    if rt then route = rt.data.pattern end
  end
  return route
end
getters.route = route_of
_M.route_of = route_of

function getters.params(req)
  local rt = rawget(req, "_rt")
  local t
  if rt then
    t = router.params_of(rt, rawget(req, "_rp"))
  else
    t = {}
  end
  rawset(req, "params", t)
  return t
end

local Req = {}
Req.__index = function(req, k)
  local m = methods[k]
  if m then return m end
  local g = getters[k]
  if g then return g(req) end
  return nil
end
Req.__newindex = function(req, k, v)
  if k == "route" and v == nil then
    -- No route label from now on (metrics, access log); the params stay
    -- those of the route that was matched.
    if rawget(req, "params") == nil then getters.params(req) end
    rawset(req, "_rt", nil)
    return
  end
  if k == "id" then
    if type(v) ~= "string" then error("req.id must be a string", 2) end
    local rc = C.gw_ffi_req_set_id(req._r, req._s, v, #v)
    if rc == BAD_CONTEXT then finished() end
    if rc ~= OK then error("req.id: invalid id (empty, too long, or CR/LF)", 2) end
    return
  end
  rawset(req, k, v)
end

-- ---- methods ----

-- req:body(): the whole body as a string (read on demand, bounded by
-- limits.body_bytes). A body over the limit ends the request with 413.
function methods.body(req)
  local cached = rawget(req, "_body")
  if cached then return cached end
  local ctx = sched.current()
  local rc = C.gw_ffi_req_body(ctx.task, ctx.ts, req._r, req._s, out_str, out_len, base.out_err,
                               base.out_wait)
  if rc == AGAIN then
    sched.wait(ctx, base.out_wait[0])
    rc = C.gw_ffi_req_body(ctx.task, ctx.ts, req._r, req._s, out_str, out_len, base.out_err,
                           base.out_wait)
  end
  if rc == BAD_CONTEXT then finished() end
  if rc ~= OK then
    local msg = ffi_string(base.out_err[0])
    if msg == "body too large" then
      error({ status = 413, message = msg }, 0)
    end
    -- The script's mistake (two threads reading at once), not the client's.
    if msg == "the body is already being read by another thread of this request" then error(msg, 2) end
    error({ status = 400, message = msg }, 0)
  end
  local body = ffi_string(out_str[0], out_len[0])
  rawset(req, "_body", body)
  return body
end

-- req:json(): the decoded body, or nil and an error message.
function methods.json(req)
  local body = methods.body(req)
  local v, err = cjson.decode(body)
  if v == nil then return nil, "invalid JSON body: " .. tostring(err) end
  return v
end

-- req:header_list(): every request header as a list of { name, value }.
function methods.header_list(req)
  local list, i = {}, 0
  while true do
    local rc = C.gw_ffi_req_header_at(req._r, req._s, i, out_str, out_len, out_str2, out_len2)
    if rc == BAD_CONTEXT then finished() end
    if rc ~= OK then break end
    i = i + 1
    list[i] = { ffi_string(out_str[0], out_len[0]), ffi_string(out_str2[0], out_len2[0]) }
  end
  return list
end

-- Makes the req of a new request; method and path are read at once (the
-- router needs them), the rest on demand.
-- Requests come from a free list in C, so the same few addresses recur:
-- their pointer cdata are made once and kept (the serial, not the pointer,
-- says whether a request is alive).
local ptr_cache = setmetatable({}, { __mode = "v" })
local cast, req_ptr = ffi.cast, base.req_ptr

function _M.new(r_addr, serial, method, path)
  local r = ptr_cache[r_addr]
  if r == nil then
    r = cast(req_ptr, r_addr)
    ptr_cache[r_addr] = r
  end
  -- params and _rt (the route record, for req.params and req.route) are
  -- named (nil) so that the table's template has their slots: setting them
  -- later needs no rehash (a table grows its hash part past 8 keys, and
  -- scripts add fields: headers, ctx, consumer). The path is in _rp (see
  -- getters.path).
  -- Here and in other hot functions, a builtin's result is returned through
  -- a local: LuaJIT cannot compile `return builtin(...)` (a tail call of a
  -- builtin with side effects) when it returns to a frame below the trace's
  -- start ("NYI: return to lower frame"); the trace would stop there.
  local req = setmetatable({ _r = r, _s = serial, method = method, _rp = path,
                             params = nil, _rt = nil }, Req)
  return req
end

_M.Req = Req
return _M
