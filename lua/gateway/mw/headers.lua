-- gw.mw.headers{ request = { set = {...}, remove = {...} },
--                response = { set = {...}, remove = {...} } }: fixed header edits.
--
-- On the way in, the request's headers named in request.remove are dropped
-- and those in request.set are set (replacing any value the client sent),
-- so what goes upstream through up:proxy, and what later middleware and the
-- handler read in req.headers, is the edited set. On the way out, the same
-- is done to the answer of next(), whatever produced it (a handler, an
-- upstream, an error such as a 401 from later middleware). Names are
-- case-insensitive; removals happen before sets.
--
-- Parameters:
--   request.set, response.set        table: header name -> value (a string
--                                    or a number)
--   request.remove, response.remove  a header name or a list of them
-- Returns: a middleware function(req, next).
-- Errors: raises at configuration time (the caller's file:line) on an
--   unknown option, a name that is not a header name, a value with CR, LF
--   or NUL, or Content-Length / Transfer-Encoding, which the gateway alone
--   decides.
local util = require "gateway.mwutil"

local type, pairs, ipairs, error, tostring, format = type, pairs, ipairs, error, tostring, string.format
local lower = string.lower

local KNOWN = { request = true, response = true }
local KNOWN_SIDE = { set = true, remove = true }
local FRAMING = { ["content-length"] = true, ["transfer-encoding"] = true }

local function check_name(name, where)
  if not util.is_token(name) then return nil, format("headers: %s: %q is not a header name", where, tostring(name)) end
  if FRAMING[lower(name)] then
    return nil, format("headers: %s: %s is set by the gateway, not by configuration", where, name)
  end
  return name
end

-- { set = { {name, value}... }, remove = { name... } } for one side, or nil, err.
local function side(opts, what)
  local err
  opts, err = util.check_options(opts, KNOWN_SIDE, "headers: " .. what)
  if not opts then return nil, err end
  local out = { set = {}, remove = {} }
  if opts.set ~= nil then
    if type(opts.set) ~= "table" then return nil, "headers: " .. what .. ".set must be a table" end
    for name, value in pairs(opts.set) do
      local ok
      ok, err = check_name(name, what .. ".set")
      if not ok then return nil, err end
      if type(value) == "number" then value = tostring(value) end
      if not util.is_header_value(value) then
        return nil, format("headers: %s.set[%q]: the value must be a string without CR, LF or NUL", what, name)
      end
      out.set[#out.set + 1] = { name, value }
    end
  end
  if opts.remove ~= nil then
    local list
    list, err = util.string_list(opts.remove, "headers: " .. what .. ".remove")
    if not list then return nil, err end
    for _, name in ipairs(list) do
      local ok
      ok, err = check_name(name, what .. ".remove")
      if not ok then return nil, err end
      out.remove[#out.remove + 1] = name
    end
  end
  return out
end

local function configure(opts)
  local err
  opts, err = util.check_options(opts, KNOWN, "headers")
  if not opts then return nil, err end
  local c = {}
  for _, what in ipairs { "request", "response" } do
    if opts[what] ~= nil then
      local s
      s, err = side(opts[what], what)
      if not s then return nil, err end
      if #s.set > 0 or #s.remove > 0 then c[what] = s end
    end
  end
  return c
end

return function(opts)
  local c, err = configure(opts)
  if not c then error(err, 2) end
  local rq, rs = c.request, c.response
  local header_set, header_remove = util.header_set, util.header_remove

  return function(req, next)
    if rq then
      local h = req.headers
      for i = 1, #rq.remove do h[rq.remove[i]] = nil end
      for i = 1, #rq.set do
        local kv = rq.set[i]
        h[kv[1]] = kv[2]
      end
    end
    local res = next()
    if rs then
      local h = res.headers
      for i = 1, #rs.remove do header_remove(h, rs.remove[i]) end
      for i = 1, #rs.set do
        local kv = rs.set[i]
        header_set(h, kv[1], kv[2])
      end
    end
    return res
  end
end
