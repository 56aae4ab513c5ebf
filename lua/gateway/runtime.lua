-- gateway.runtime: what the C core calls. load_config runs the configuration
-- script; request_entry and timer_entry are the bodies of the coroutines C
-- resumes (see src/lua_vm.h for the protocol); start runs in a worker once
-- the configuration has loaded.
--
-- One request: make the req, find the route, build the middleware chain
-- (global, then prefix, then route), run it, turn what it returned into a
-- response and send it. A script error becomes a 500 JSON answer with the
-- request id; the traceback goes to the error log, never to the client.
local base = require "gateway.base"
local sched = require "gateway.sched"
local request = require "gateway.request"
local gw = require "gateway"
local cjson = require "cjson"
local bad_response_header = require("gateway.mwutil").bad_response_header

local ffi, C = base.ffi, base.C
local OK, BAD_CONTEXT = base.OK, base.BAD_CONTEXT
local yield = coroutine.yield
local type, pairs, ipairs, error, tostring, xpcall, setmetatable, rawset, rawget, next =
  type, pairs, ipairs, error, tostring, xpcall, setmetatable, rawset, rawget, next
local sub, lower, byte, format = string.sub, string.lower, string.byte, string.format
local traceback = debug.traceback
local encode = cjson.encode

local state = gw._state
local router = state.router
local DONE = sched.DONE

local _M = {}

-- ---- loading ----

local function config_traceback(err)
  if type(err) ~= "string" then err = tostring(err) end
  return traceback(err, 2)
end

-- The Lua files this load reads, the configuration first (see
-- track_files); the worker watches them for hot reload.
_M.files = {}

-- Records every file the configuration loads: modules found in its folder
-- by require (a loader placed before the standard one, with the same
-- search templates lua_vm.c put first on package.path), and files given to
-- loadfile or dofile. C keeps those inside the configuration's folder.
local function track_files(path)
  local files, seen = _M.files, {}
  local function note(file)
    if type(file) == "string" and not seen[file] then
      seen[file] = true
      files[#files + 1] = file
    end
  end
  note(path)
  local dir = path:match("^(.*)/[^/]*$") or "."
  local templates = dir .. "/?.lua;" .. dir .. "/?/init.lua"
  local raw_loadfile, raw_dofile = loadfile, dofile
  table.insert(package.loaders, 2, function(name)
    local file = package.searchpath(name, templates)
    if not file then return nil end
    note(file)
    local chunk, err = raw_loadfile(file)
    -- The message starts with file:line, which /status and the log show.
    if not chunk then error(err, 0) end
    return chunk
  end)
  loadfile = function(file, ...)
    note(file)
    return raw_loadfile(file, ...)
  end
  dofile = function(file, ...)
    note(file)
    return raw_dofile(file, ...)
  end
  return raw_loadfile
end

-- Runs the configuration at `path` in this state. Returns the merged
-- gw.config table; raises the error text (file:line first) on failure.
-- Set once the configuration has loaded: no global or prefix middleware, so
-- a route without its own (route.bare) can answer without a chain.
local no_middleware = false
-- Set with it: no prefix middleware, so a route's chain does not depend on
-- the path (build_chain).
local no_prefix_middleware = false

-- The load runs with LuaJIT's engine off (C keeps the load's CPU budget
-- with a hook, which compiled code would escape): jit.on() and jit.off()
-- without a function are noted here instead of obeyed, and C applies the
-- configuration's last word once the load is over (lua_vm.c).
local function hold_jit_engine()
  local on, off = jit.on, jit.off
  _M.jit_engine = nil
  jit.on = function(f, ...)
    if f == nil then _M.jit_engine = true return end
    return on(f, ...)
  end
  jit.off = function(f, ...)
    if f == nil then _M.jit_engine = false return end
    return off(f, ...)
  end
  return function() jit.on, jit.off = on, off end
end

function _M.load_config(path, mode)
  _M.mode = mode
  state.mode = mode
  local loadfile = track_files(path)
  state.config_dir = path:match("^(.*)/[^/]*$") or "." -- relative key files are read from here
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  local release_jit = hold_jit_engine()
  local ok, e = xpcall(chunk, config_traceback)
  release_jit()
  if not ok then error(e, 0) end
  state.loading = false
  no_prefix_middleware = #state.prefix_mw == 0
  no_middleware = no_prefix_middleware and #state.global_mw == 0
  local cfg = state.config
  -- C reads plain values: "auto" and false become absent.
  return {
    workers = cfg.workers ~= "auto" and cfg.workers or nil,
    listen = cfg.listen,
    admin = cfg.admin or nil,
    access_log = cfg.access_log or nil,
    error_log = cfg.error_log,
    limits = cfg.limits,
    timeouts = cfg.timeouts,
    tls = cfg.tls,
    dicts = state.dicts,
  }
end

-- In a worker, after loading: start the timers the configuration declared.
function _M.start()
  for _, id in ipairs(state.pending_timers) do
    local t = state.timers[id]
    C.gw_ffi_timer_start(id, t.after, t.every or 0)
  end
  state.pending_timers = {}
end

-- ---- responses ----

-- Tracebacks keep their lines (C indents every line after the first).
local function log_error(msg)
  C.gw_ffi_log(3, msg, #msg, 0)
end

local function send_error(req, status, message, extra_headers)
  local id = req.id
  local body = encode({ error = message, request_id = id })
  local r, s = req._r, req._s
  if C.gw_ffi_resp_start(r, s, status) ~= OK then return end
  C.gw_ffi_resp_header(r, s, "Content-Type", 12, "application/json", 16)
  C.gw_ffi_resp_header(r, s, "X-Request-Id", 12, id, #id)
  if extra_headers then
    for k, v in pairs(extra_headers) do C.gw_ffi_resp_header(r, s, k, #k, v, #v) end
  end
  C.gw_ffi_resp_send(r, s, body, #body)
end
_M.send_error = send_error

local TEXT = "text/plain; charset=utf-8"
local JSON = "application/json"

-- Turns what a handler returned into a response table { status, headers, body|json }.
local function normalize(res)
  local t = type(res)
  if t == "table" then
    -- A proxied answer keeps its lazy headers (upstream.lua ProxyResponse).
    if rawget(res, "_proxy") then return res end
    if res.status == nil then res.status = 200 end
    if res.headers == nil then res.headers = {} end
    return res
  elseif t == "string" then
    return { status = 200, headers = { ["content-type"] = TEXT }, body = res }
  elseif t == "number" then
    return { status = res, headers = {}, body = "" }
  elseif res == nil then
    error("the handler returned no response", 0)
  end
  error("the handler returned a " .. t .. ", not a response", 0)
end
_M.normalize = normalize

local function has_header(headers, name)
  for k in pairs(headers) do
    if lower(k) == name then return true end
  end
  return false
end

local function send_header(r, s, k, v)
  if type(v) == "table" then
    for i = 1, #v do send_header(r, s, k, v[i]) end
    return
  end
  if type(v) ~= "string" then v = tostring(v) end
  if type(k) ~= "string" or C.gw_ffi_resp_header(r, s, k, #k, v, #v) ~= OK then
    error(bad_response_header(k), 0)
  end
end

local upstream_mod -- loaded on first use (a proxied response, a direct route)

-- What a deferred proxy response becomes when its exchange failed.
local function deferred_failure(req, err) return _M.handler_result(req, nil, err) end

-- (No closure made in here: LuaJIT would not compile the callers' traces.)
local function upstream()
  if not upstream_mod then
    upstream_mod = require "gateway.upstream"
    upstream_mod.deferred_failure = deferred_failure
  end
  return upstream_mod
end

-- For a route whose handler is `return UP:proxy(req)`: a function returning
-- the current UP (upstream.lua direct_proxy_upvalue); else false.
local function direct_of(route)
  local direct = route.direct
  if direct == nil then
    direct = upstream().direct_proxy_upvalue(route.handler)
    route.direct = direct
  end
  return direct
end

-- Is `status` one a final answer may have? A whole number 200-599 (RFC 9110
-- 15: 1xx are interim). Sent as the answer, a 1xx makes the client wait for
-- the real one and take the next request's answer for it. 101 passes only
-- for a proxied upgrade (`tunnel`): C checks that the client asked for one
-- and turns the connection into a tunnel.
local function final_status(status, tunnel)
  if type(status) ~= "number" or status % 1 ~= 0 then return false end
  return (status >= 200 and status <= 599) or (tunnel and status == 101)
end

local function bad_status(status)
  error("response status must be a whole number 200-599, not " .. tostring(status), 0)
end

local function send(req, res)
  if rawget(res, "_deferred") then
    -- A deferred proxy response nobody looked at: C answers it.
    return upstream().commit_deferred(req, res)
  end
  local r, s = req._r, req._s
  local status = res.status
  if res._proxy and res._req == req then
    if not final_status(status, true) then bad_status(status) end
    return upstream().send_proxied(req, res)
  end
  if res._proxy then
    -- A proxied response whose body a script read goes out buffered.
    local b, err = res:body()
    if b == nil then error("reading the proxied body failed: " .. tostring(err), 0) end
    res.body = b
  elseif rawget(res, "body") == nil and rawget(res, "_body") ~= nil then
    res.body = res._body -- an upstream response returned as it is
  end
  local head_length -- a HEAD an upstream answered: the length it announced
  if rawget(res, "_body") ~= nil then
    if req.method == "HEAD" and rawget(res, "json") == nil and (res.body == nil or res.body == "") then
      local cl = res.headers["content-length"]
      head_length = type(cl) == "string" and cl:match("^%d+$") and tonumber(cl) or -1
    end
    -- An upstream's answer goes out buffered: its hop-by-hop headers and
    -- its Date stay behind (ours is added).
    res.headers = upstream().end_to_end(res.headers)
  end
  if not final_status(status, false) then bad_status(status) end
  local headers, body = res.headers, res.body
  -- rawget: an upstream response object has json (and body) methods.
  local json = rawget(res, "json")
  if json ~= nil then
    body = encode(json)
    -- Status, type and body only: C sends it (no FFI call per header).
    if next(headers) == nil then return status, JSON, body end
    if not has_header(headers, "content-type") then headers["content-type"] = JSON end
  elseif body == nil then
    body = ""
  elseif type(body) ~= "string" then
    body = tostring(body)
  end
  local rc = C.gw_ffi_resp_start(r, s, status)
  if rc == BAD_CONTEXT then error(base.FINISHED, 0) end
  if rc ~= OK then error("a response was already sent", 0) end
  for k, v in pairs(headers) do send_header(r, s, k, v) end
  -- A HEAD an upstream answered has no body here to measure: its length
  -- is the upstream's (none if it gave none), not 0.
  if head_length then C.gw_ffi_resp_send_head_of(r, s, head_length) return end
  C.gw_ffi_resp_send(r, s, body, #body)
end

-- ---- the middleware chain ----

-- chain[1..n-1] are middleware, chain[n] the terminal handler. `next` for
-- step i runs step i+1 and returns its normalized response.
local function error_response(req, status, message, headers)
  local id = req.id
  headers = headers or {}
  headers["X-Request-Id"] = id
  return { status = status, headers = headers, json = { error = message, request_id = id } }
end
_M.error_response = error_response

-- A handler that returns nil and an upstream error answers 502, 503 or 504
-- (src/proxy.c gw_ffi_upstream_error_status, which C's own answers use too).
local function handler_result(req, res, err)
  if res == nil and err ~= nil then
    -- A table's or function's tostring is a heap address: not for clients.
    local t = type(err)
    local msg = (t == "string" or t == "number") and tostring(err) or "upstream error"
    return error_response(req, C.gw_ffi_upstream_error_status(msg), msg)
  end
  return normalize(res)
end
_M.handler_result = handler_result

-- The `next` given to the middleware at step i is NEXT[i], made once for
-- all requests (a closure per step and request would cost allocations, and
-- LuaJIT does not compile closure creation). It finds its request through
-- the scheduler, the chain in req._chain, and checks req._step, the step
-- that started last: steps run in order, so a step's next() is its second
-- call when a later step has already started, and one kept and called by
-- another request finds that request elsewhere in its chain.
local NEXT = {}
local run_step

local function next_for(i)
  local f = NEXT[i]
  if f then return f end
  f = function()
    local req = sched.request()
    local step = req and rawget(req, "_step")
    if step and step > i then error("next() called twice", 2) end
    if step ~= i or i >= req._chain.n then error("next() called outside its middleware", 2) end
    return run_step(req, req._chain, i + 1)
  end
  NEXT[i] = f
  return f
end

run_step = function(req, chain, i)
  local f = chain[i]
  rawset(req, "_step", i)
  if i == chain.n then
    -- A `return UP:proxy(req)` handler inside middleware: deferred (upstream.lua).
    local route = chain.route
    local direct = route and direct_of(route)
    if direct then
      local d = upstream_mod.proxy_direct(req, direct, false)
      if d then return d end
    end
    return handler_result(req, f(req))
  end
  return normalize(f(req, NEXT[i] or next_for(i)))
end

local function path_has_prefix(path, prefix)
  local n = #prefix
  return sub(path, 1, n) == prefix and (#path == n or byte(path, n + 1) == 47)
end

local function not_found(req) return error_response(req, 404, "no route") end

-- Apart from build_chain, so that it makes no closure (LuaJIT compiles
-- neither making one nor closing its upvalues).
local function method_not_allowed(allow)
  return function(r) return error_response(r, 405, "method not allowed", { Allow = allow }) end
end

local function make_chain(req, route, allow)
  local chain, n = {}, 0
  local g = state.global_mw
  for i = 1, #g do
    n = n + 1
    chain[n] = g[i]
  end
  local p = state.prefix_mw
  if #p > 0 then
    local path = req.path
    for i = 1, #p do
      if path_has_prefix(path, p[i][1]) then
        n = n + 1
        chain[n] = p[i][2]
      end
    end
  end
  if route then
    local m = route.mws
    for i = 1, #m do
      n = n + 1
      chain[n] = m[i]
    end
    n = n + 1
    chain[n] = route.handler
  elseif allow then
    n = n + 1
    chain[n] = method_not_allowed(allow)
  else
    n = n + 1
    chain[n] = not_found
  end
  chain.n = n
  chain.route = route
  return chain
end

-- The request's chain, in req._chain. Chains are only read, so a route's is
-- made once when no prefix middleware can make it depend on the path.
local function build_chain(req, route, allow)
  local chain
  if route and no_prefix_middleware then
    chain = route.chain
    if chain == nil then
      chain = make_chain(req, route)
      route.chain = chain
    end
  else
    chain = make_chain(req, route, allow)
  end
  rawset(req, "_chain", chain)
  return chain
end

-- ---- one request ----

local function on_handler_error(err)
  if type(err) == "table" and err.status then return err end
  -- On an overflowed stack a traceback has no room left and would fail this
  -- handler too (xpcall then gives only "error in error handling").
  if type(err) == "string" and sub(err, -14) == "stack overflow" then
    return { trace = err .. " (runaway recursion? no traceback: the stack is full)" }
  end
  return { trace = traceback(tostring(err), 2) }
end

local function finish_error(req, e)
  -- Not a table when the error handler itself failed.
  if type(e) ~= "table" then e = { trace = tostring(e) } end
  local trace = e.trace
  if e.status then
    if final_status(e.status, false) then
      -- Only text goes into the JSON body: a table or function as message
      -- would fail the encoder here, outside any protection.
      local msg = e.message
      if type(msg) == "number" then msg = tostring(msg) end
      send_error(req, e.status, type(msg) == "string" and msg or "error")
      return
    end
    trace = "error({ status = " .. tostring(e.status) .. " }): the status must be a whole number 200-599"
  end
  log_error(format("request %s %s (id %s) failed: %s", req.method, req.path, req.id, trace))
  send_error(req, 500, "internal error")
end

-- Returns nothing when the answer went out through the FFI, or
-- (status, content type, body) for request_entry to yield to C.
local function dispatch(req, method, path)
  local rt, status, allow = router:find(method, state.host_routes and req.host or nil, path)
  local res
  if rt then
    local route = rt.data
    -- req.route and req.params come from it when a script reads them
    -- (request.lua): most handlers never read their params.
    rawset(req, "_rt", rt)
    if route.bare and no_middleware then
      -- No middleware can look at the answer: a string goes out as it is,
      -- and a `return UP:proxy(req)` handler is run by C (upstream.lua).
      local direct = direct_of(route)
      if direct and upstream_mod.proxy_direct(req, direct, true) then return end
      local err
      res, err = route.handler(req)
      if type(res) == "string" then return 200, TEXT, res end
      return send(req, handler_result(req, res, err))
    end
    res = run_step(req, build_chain(req, route), 1)
  else
    res = run_step(req, build_chain(req, nil, status == 405 and allow or nil), 1)
  end
  return send(req, res)
end

-- The pattern C labels the request's metrics and log line with.
local route_of = request.route_of

-- The requests a coroutine serves, one after another, inside one protected
-- call that lasts until a script error: LuaJIT cannot compile a return into
-- a pcall frame from a trace that began below it, so with one xpcall per
-- request every trace that started inside a request (after an inner loop or
-- an uncompiled call) stopped at the handler's return, and the rest of the
-- request ran in the interpreter. `box.req` is the request being served, for
-- request_entry to answer when an error ends the loop.
local function serve(box, task_addr, task_serial, req_addr, req_serial, method, path)
  while true do
    box.req = nil
    sched.begin(task_addr, task_serial)
    local req = request.new(req_addr, req_serial, method, path)
    box.req = req
    sched.set_request(req)
    local status, ctype, body = dispatch(req, method, path)
    local route = route_of(req)
    sched.finish()
    task_addr, task_serial, req_addr, req_serial, method, path = yield(DONE, route, status, ctype, body)
  end
end

-- The body of request coroutines; reused across requests (see lua_vm.c).
-- C resumes it with the task and request handles and the method and path;
-- it yields DONE with the route and, for a plain answer, status, content
-- type and body, which C sends (conn.c task_result). serve returns only
-- through an error, which is answered here before the next request.
function _M.request_entry(...)
  local box = {}
  local _, e = xpcall(serve, on_handler_error, box, ...)
  while true do
    local req = box.req
    local route
    if req then
      if C.gw_ffi_resp_sent(req._r, req._s) == 0 then finish_error(req, e) end
      route = route_of(req)
    else
      log_error("request failed before it began: " .. tostring(e.trace or e.message))
    end
    sched.finish()
    _, e = xpcall(serve, on_handler_error, box, yield(DONE, route))
  end
end

-- The body of timer coroutines.
function _M.timer_entry(task_addr, task_serial, id)
  while true do
    local t = state.timers[id]
    if t then
      if not t.every then state.timers[id] = nil end
      sched.begin(task_addr, task_serial)
      local ok, err = xpcall(t.fn, traceback)
      sched.finish()
      if not ok then log_error("timer failed: " .. tostring(err)) end
    end
    task_addr, task_serial, id = yield(DONE)
  end
end

return _M
