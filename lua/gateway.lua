-- gateway: the module configuration scripts require (`local gw = require "gateway"`).
--
-- It is built into the binary, so a configuration file named gateway.lua
-- never shadows it. Calls made while the configuration runs declare the
-- gateway: gw.config, gw.route and its shorthands, gw.use. Functions for
-- handlers (gw.sleep, gw.spawn, gw.all, gw.now, gw.timer, gw.log, gw.json)
-- work at any time they make sense; see docs/lua-api.md.
--
-- Misuse (a wrong type, a bad pattern, an unknown option) raises an error
-- at the caller's line, so `gateway -t` reports it with file:line.
local base = require "gateway.base"
local sched = require "gateway.sched"
local router_mod = require "gateway.router"
local shared = require "gateway.shared"
local cjson = require "cjson"

local C = base.C
local ffi = base.ffi
local type, error, pairs, ipairs, tostring, select = type, error, pairs, ipairs, tostring, select
local upper, sub = string.upper, string.sub

local gw = {}

-- What the configuration declared; read by gateway.runtime.
local state = {
  config = {
    workers = "auto",
    listen = { "127.0.0.1:8080" },
    admin = false,
    access_log = "stdout",
    error_log = "stderr",
    limits = { header_bytes = 16384, headers = 100, body_bytes = 8 * 1024 * 1024 },
    timeouts = { header = 10, body = 30, idle = 60, drain = 30, script = 5 },
    tls = { ticket_rotate = 3600, session_tickets = true },
  },
  router = router_mod.new(),
  global_mw = {},   -- list of middleware functions
  prefix_mw = {},   -- list of { prefix, fn }
  timers = {},      -- id -> { fn, every }
  next_timer = 0,
  pending_timers = {}, -- ids declared while loading, started by runtime.start
  upstreams = {},   -- name -> upstream object
  dicts = {},       -- gw.shared_dict declarations in order: { name =, size = }
  dict_sizes = {},  -- name -> bytes
  mode = nil,       -- "check", "master" or "worker", set by runtime.load_config
  loading = true,
}
gw._state = state

-- ---- gw.config ----

local config_schema = {
  workers = "workers", listen = "listen", admin = "addr_or_false",
  access_log = "string_or_false", error_log = "string",
  limits = { header_bytes = "posint", headers = "posint", body_bytes = "posint" },
  timeouts = { header = "posnum", body = "posnum", idle = "posnum", drain = "posnum", script = "posnum" },
  tls = { ticket_rotate = "posnum", session_tickets = "boolean" },
}

-- Bounds of the numbers C turns into integers: past them a conversion is
-- undefined behaviour in C (src/config.h gw_seconds_to_ms). Sizes and counts
-- stay exact in a double up to 2^53; times are clamped in C to a year.
local MAX_WHOLE = 2 ^ 53
local MAX_WORKERS = 1024

local function bad(key, want, got, level)
  error(("gw.config: %s must be %s (got %s)"):format(key, want, tostring(got)), level + 1)
end

-- A listener's `tls` table: { cert =, key = } or { certs = { { cert =, key = }, ... } },
-- plus client_ca = PATH and verify_client = "on" | "optional" (default "on"
-- when client_ca is set). Relative paths are read from the configuration's
-- folder. Every file is loaded now (tls.c, through gw_ffi_tls_check and
-- gw_ffi_tls_check_ca), so a missing or bad file is an error at the
-- caller's line. Returns { certs = { { cert =, key = }, ... }, client_ca =,
-- verify_client = } with resolved paths.
local tls_err = ffi.new("char[?]", 512)
local TLS_OPTIONS = { cert = true, key = true, certs = true, client_ca = true, verify_client = true }

local function resolve(path)
  if sub(path, 1, 1) == "/" then return path end
  return (state.config_dir or ".") .. "/" .. path
end

local function check_tls(key, t, level)
  if type(t) ~= "table" then bad(key, "a table { cert =, key = } or { certs = {...} }", t, level) end
  local list
  if t.certs ~= nil then
    if t.cert ~= nil or t.key ~= nil then
      error("gw.config: " .. key .. ": either cert and key, or certs, not both", level)
    end
    if type(t.certs) ~= "table" or #t.certs == 0 then bad(key .. ".certs", "a non-empty list", t.certs, level) end
    list = t.certs
  else
    list = { t }
  end
  for k in pairs(t) do
    if not TLS_OPTIONS[k] then
      error("gw.config: " .. key .. ": unknown option '" .. tostring(k) .. "'", level)
    end
  end
  local out = {}
  for i, c in ipairs(list) do
    local where = t.certs and (key .. ".certs[" .. i .. "]") or key
    if type(c) ~= "table" or type(c.cert) ~= "string" or type(c.key) ~= "string" then
      bad(where, "{ cert = PATH, key = PATH }", c, level)
    end
    local cert, pkey = resolve(c.cert), resolve(c.key)
    if C.gw_ffi_tls_check(cert, pkey, tls_err, 512) ~= base.OK then
      error("gw.config: " .. where .. ": " .. ffi.string(tls_err), level)
    end
    out[i] = { cert = cert, key = pkey }
  end
  local verify, ca = t.verify_client, nil
  if verify ~= nil and verify ~= "on" and verify ~= "optional" then
    bad(key .. ".verify_client", '"on" or "optional"', verify, level)
  end
  if t.client_ca ~= nil then
    if type(t.client_ca) ~= "string" then bad(key .. ".client_ca", "a path (string)", t.client_ca, level) end
    ca = resolve(t.client_ca)
    if C.gw_ffi_tls_check_ca(ca, tls_err, 512) ~= base.OK then
      error("gw.config: " .. key .. ": " .. ffi.string(tls_err), level)
    end
    verify = verify or "on"
  elseif verify ~= nil then
    error("gw.config: " .. key .. ": verify_client needs client_ca (the CAs client certificates must chain to)", level)
  end
  return { certs = out, client_ca = ca, verify_client = verify }
end

-- The host and port of a numeric address: "IPv4:port", "[IPv6]:port" or
-- ":port" (every interface), or nil. Ports and IPv4 bytes are range-checked
-- here, so that -t refuses what the gateway could not listen on.
local function split_addr(a)
  local host, port
  if type(a) == "string" then host, port = a:match("^(.*):(%d+)$") end
  port = tonumber(port)
  if not (host and port and port >= 1 and port <= 65535) then return nil end
  local b1, b2, b3, b4 = host:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if b1 then
    for _, b in ipairs { b1, b2, b3, b4 } do
      if tonumber(b) > 255 then return nil end
    end
  elseif host ~= "" and not host:match("^%[[%x:.]+%]$") then
    return nil
  end
  return host, port
end

-- The same address always in the same spelling, "*" for every interface
-- (0.0.0.0, [::], ":port"), so that two spellings of one socket compare equal.
local function host_key(host)
  if host == "" then return "*" end
  local b1, b2, b3, b4 = host:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if b1 then
    local key = ("%d.%d.%d.%d"):format(tonumber(b1), tonumber(b2), tonumber(b3), tonumber(b4))
    return key == "0.0.0.0" and "*" or key
  end
  local v6 = host:sub(2, -2):lower()
  if v6:find(".", 1, true) then return v6 end -- an IPv4 tail: kept as written
  local head, tail = v6:match("^(.-)::(.*)$")
  local groups = {}
  for g in (head or v6):gmatch("[^:]+") do groups[#groups + 1] = tonumber(g, 16) end
  if head then
    local rest = {}
    for g in tail:gmatch("[^:]+") do rest[#rest + 1] = tonumber(g, 16) end
    for _ = 1, 8 - #groups - #rest do groups[#groups + 1] = 0 end
    for _, g in ipairs(rest) do groups[#groups + 1] = g end
  end
  local key = ("%x:"):rep(#groups):format(unpack(groups))
  return key:find("^[0:]*$") and "*" or key
end

local function check_value(key, kind, v, level)
  if kind == "workers" then
    if v ~= "auto" and (type(v) ~= "number" or v < 1 or v > MAX_WORKERS or v % 1 ~= 0) then
      bad(key, '"auto" or a whole number from 1 to ' .. MAX_WORKERS, v, level)
    end
  elseif kind == "posint" then
    if type(v) ~= "number" or v < 1 or v > MAX_WHOLE or v % 1 ~= 0 then
      bad(key, "a whole number from 1 to 2^53", v, level)
    end
  elseif kind == "posnum" then
    -- `not (v > 0)` refuses NaN too. A huge value (math.huge) is allowed:
    -- it means "a year", the longest C waits (src/config.h GW_MAX_SECONDS).
    if type(v) ~= "number" or not (v > 0) then bad(key, "a number > 0", v, level) end
  elseif kind == "string" then
    if type(v) ~= "string" then bad(key, "a string", v, level) end
  elseif kind == "boolean" then
    if type(v) ~= "boolean" then bad(key, "true or false", v, level) end
  elseif kind == "string_or_false" then
    if v ~= false and type(v) ~= "string" then bad(key, "a string or false", v, level) end
  elseif kind == "addr_or_false" then
    if v ~= false and not split_addr(v) then
      bad(key, '"IPv4:port" or "[IPv6]:port" (a numeric address) or false', v, level)
    end
  elseif kind == "listen" then
    if type(v) == "string" then v = { v } end
    if type(v) ~= "table" or #v == 0 then bad(key, "an address or a list of addresses", v, level) end
    local out = {}
    for i, a in ipairs(v) do
      local tls
      if type(a) == "table" then
        for k in pairs(a) do
          if k ~= "addr" and k ~= "tls" then
            error("gw.config: listen[" .. i .. "]: unknown option '" .. tostring(k) .. "'", level)
          end
        end
        if a.tls ~= nil then tls = check_tls(key .. "[" .. i .. "].tls", a.tls, level + 1) end
        a = a.addr
      end
      if not split_addr(a) then
        bad(key .. "[" .. i .. "]", '"IPv4:port" or "[IPv6]:port" (a numeric address)', a, level)
      end
      -- A TLS listener stays a table for C (lua_vm.c); a plain one a string.
      out[#out + 1] = tls and { addr = a, certs = tls.certs, client_ca = tls.client_ca,
                                verify_client = tls.verify_client } or a
    end
    return out
  end
  return v
end

function gw.config(t)
  if type(t) ~= "table" then error("gw.config: a table is required", 2) end
  local cfg = state.config
  for k, v in pairs(t) do
    local kind = config_schema[k]
    if kind == nil then error("gw.config: unknown option '" .. tostring(k) .. "'", 2) end
    if type(kind) == "table" then
      if type(v) ~= "table" then bad(k, "a table", v, 2) end
      for k2, v2 in pairs(v) do
        local kind2 = kind[k2]
        if kind2 == nil then error("gw.config: unknown option '" .. k .. "." .. tostring(k2) .. "'", 2) end
        cfg[k][k2] = check_value(k .. "." .. k2, kind2, v2, 3)
      end
    else
      cfg[k] = check_value(k, kind, v, 3)
    end
  end
  -- The file's own CPU budget holds for the rest of its load (lua_vm.c).
  if state.loading and type(t.timeouts) == "table" and t.timeouts.script ~= nil then
    C.gw_ffi_load_budget(cfg.timeouts.script)
  end
  -- The admin endpoints must never be reachable on a public listener: not
  -- the same socket under another spelling (127.0.0.1:080, 0.0.0.0 and
  -- ":port"), nor one port on every interface and one address, which the
  -- kernel would share (SO_REUSEPORT) between the admin and a listener.
  if cfg.admin then
    local ahost, aport = split_addr(cfg.admin)
    local akey = host_key(ahost)
    for _, a in ipairs(cfg.listen) do
      if type(a) == "table" then a = a.addr end
      local host, port = split_addr(a)
      local key = host_key(host)
      if port == aport and (key == akey or key == "*" or akey == "*") then
        error("gw.config: admin (" .. cfg.admin .. ") must not share a port with the listen address " .. a, 2)
      end
    end
  end
end

-- ---- routes and middleware ----

local HTTP_METHODS = { GET = true, HEAD = true, POST = true, PUT = true, PATCH = true,
                       DELETE = true, OPTIONS = true, CONNECT = true, TRACE = true }

local function check_loading(what)
  if not state.loading then error(what .. ": only while the configuration loads", 3) end
end

local function normalize_methods(m, level)
  if m == "*" then return "*" end
  if type(m) == "string" then m = { m } end
  if type(m) ~= "table" or #m == 0 then
    error("gw.route: method must be a string, a list of strings, or \"*\"", level + 1)
  end
  local out = {}
  for i, x in ipairs(m) do
    if type(x) ~= "string" then error("gw.route: method must be a string", level + 1) end
    x = upper(x)
    if not HTTP_METHODS[x] then error("gw.route: unknown method '" .. x .. "'", level + 1) end
    out[i] = x
  end
  return out
end

local function add_route(methods, pattern, host, mws, handler, level)
  check_loading("gw.route")
  if type(handler) ~= "function" then error("gw.route: the handler must be a function", level + 1) end
  for i, mw in ipairs(mws) do
    if type(mw) ~= "function" then
      error("gw.route: middleware #" .. i .. " is not a function", level + 1)
    end
  end
  methods = normalize_methods(methods, level + 1)
  if host ~= nil then state.host_routes = true end
  local route = { handler = handler, mws = mws, pattern = pattern, bare = #mws == 0 }
  local ok, err = pcall(state.router.add, state.router, methods, pattern, host, route)
  if not ok then error("gw.route: " .. tostring(err):gsub("^.-:%d+: ", ""), level + 1) end
end

-- gw.route(METHOD, PATTERN, [mw...,] handler) or gw.route{ method=, path=, host=, use=, handler= }
function gw.route(method, pattern, ...)
  if type(method) == "table" and pattern == nil then
    local t = method
    local mws = t.use or {}
    if type(mws) == "function" then mws = { mws } end
    if type(mws) ~= "table" then error("gw.route: use must be a function or a list of functions", 2) end
    add_route(t.method or "*", t.path, t.host, mws, t.handler, 2)
    return
  end
  local n = select("#", ...)
  if n == 0 then error("gw.route: a handler is required", 2) end
  local handler = select(n, ...)
  local mws = { ... }
  mws[n] = nil
  add_route(method, pattern, nil, mws, handler, 2) -- not a tail call: levels count frames
end

for _, m in ipairs { "get", "post", "put", "patch", "delete", "head", "options" } do
  local M = upper(m)
  gw[m] = function(pattern, ...)
    local n = select("#", ...)
    if n == 0 then error("gw." .. m .. ": a handler is required", 2) end
    local handler = select(n, ...)
    local mws = { ... }
    mws[n] = nil
    add_route(M, pattern, nil, mws, handler, 2)
  end
end

-- gw.use([prefix,] mw)
function gw.use(prefix, mw)
  check_loading("gw.use")
  if mw == nil then
    mw, prefix = prefix, nil
  end
  if type(mw) ~= "function" then error("gw.use: middleware must be a function(req, next)", 2) end
  if prefix == nil or prefix == "/" then
    state.global_mw[#state.global_mw + 1] = mw
    return
  end
  if type(prefix) ~= "string" or sub(prefix, 1, 1) ~= "/" then
    error("gw.use: the prefix must be a path starting with '/'", 2)
  end
  if #prefix > 1 and sub(prefix, -1) == "/" then prefix = sub(prefix, 1, -2) end
  state.prefix_mw[#state.prefix_mw + 1] = { prefix, mw }
end

-- ---- shared dicts ----

-- gw.shared_dict(NAME, SIZE): declares a dict shared by all workers.
function gw.shared_dict(name, size)
  check_loading("gw.shared_dict")
  shared.declare(state, name, size, 2)
end

-- gw.shared.NAME: the dict object (methods with a colon; see gateway.shared).
gw.shared = setmetatable({}, {
  __index = function(t, name)
    local d = shared.open(state, name)
    rawset(t, name, d)
    return d
  end,
})

-- ---- helpers for handlers ----

gw.json = cjson
gw.sleep = sched.sleep
gw.spawn = sched.spawn
gw.all = sched.all

function gw.now() return C.gw_ffi_now() end

local function log_at(level)
  return function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    local msg = table.concat(parts, " ")
    C.gw_ffi_log(level, msg, #msg, 1) -- one line: LF escaped too
  end
end
gw.log = { debug = log_at(0), info = log_at(1), warn = log_at(2), error = log_at(3) }

local function add_timer(name, after, every, fn)
  if type(after) ~= "number" or not (after >= 0) then
    error("gw.timer." .. name .. ": seconds must be >= 0", 3) -- NaN too
  end
  if type(fn) ~= "function" then error("gw.timer." .. name .. ": a function is required", 3) end
  state.next_timer = state.next_timer + 1
  local id = state.next_timer
  state.timers[id] = { fn = fn, every = every, after = after }
  if state.loading then
    state.pending_timers[#state.pending_timers + 1] = id
    return id
  end
  local rc = C.gw_ffi_timer_start(id, after, every or 0)
  if rc == base.OK then return id end
  state.timers[id] = nil
  if rc == base.DECLINED then error("gw.timer." .. name .. ": timers run only in a worker", 3) end
  -- This configuration was replaced by a reload: it finishes what it has
  -- begun but starts nothing new.
  return nil, "reloaded"
end

-- Not tail calls: add_timer's errors name the line of the call (level 3).
gw.timer = {
  after = function(s, fn)
    local id, err = add_timer("after", s, nil, fn)
    return id, err
  end,
  every = function(s, fn)
    if type(s) ~= "number" or not (s > 0) then error("gw.timer.every: seconds must be > 0", 2) end
    local id, err = add_timer("every", s, s, fn)
    return id, err
  end,
}

function gw.worker_id() return C.gw_ffi_worker_index() end

-- gw.aggregate(PATTERN, parts): a GET route merging several upstream JSON
-- answers; see lua/gateway/aggregate.lua.
function gw.aggregate(pattern, parts)
  local handler = require("gateway.aggregate").handler(parts, state.upstreams, 2)
  add_route("GET", pattern, nil, {}, handler, 2)
end

-- gw.upstream(NAME, spec): see lua/gateway/upstream.lua and docs/upstreams.md.
function gw.upstream(name, spec)
  local up = require("gateway.upstream").declare(name, spec)
  state.upstreams[name] = up
  return up
end

-- gw.mw.NAME: built-in middleware factories, one module each under
-- lua/gateway/mw/, loaded on first use.
gw.mw = setmetatable({}, {
  __index = function(t, name)
    local modname = "gateway.mw." .. tostring(name)
    if not package.preload[modname] then error("gw.mw." .. tostring(name) .. ": no such middleware", 2) end
    local m = require(modname)
    rawset(t, name, m)
    return m
  end,
})

gw.crypto = require "gateway.crypto" -- sha256, hmac, random, equal, keys: docs/crypto.md
gw.base64 = require "gateway.base64"
-- gw.redis(URL [, opts]): a pooled, non-blocking Redis client; docs/redis.md.
function gw.redis(url, opts)
  -- Not a tail call: the error level of new() counts this frame.
  local r = require("gateway.redis").new(url, opts, 2)
  return r
end

return gw
