-- gateway.aggregate: gw.aggregate(PATTERN, parts), a KrakenD-style endpoint
-- that fans out to several upstreams in parallel and merges their JSON.
--
-- parts = { name = { upstream = up_or_name, path = "/users/{id}", optional = bool,
--                    timeout = seconds } }
-- {param} in a path is replaced by the route parameter of that name (URL-
-- escaped, keeping the client's own %XX escapes); a path may carry a query.
-- The answer nests each part's JSON under its name, as the upstream sent
-- it: each body is checked to be one JSON value (src/json_check.c: RFC
-- 8259 and UTF-8), then spliced in, never re-encoded, so numbers keep every
-- digit and [] stays an array (lua-cjson would write 1.2345678901235e+15
-- and {}, and its decoder lets raw control bytes, "1." and NaN pass). A failed
-- part (error, non-2xx status, or a body that is not JSON) that is optional
-- is left out and the answer carries X-Partial: true; a failed required
-- part makes the answer 502 with the errors of every failed part.
local base = require "gateway.base"
local sched = require "gateway.sched"
local cjson = require "cjson"

local type, error, pairs, ipairs, tostring, tonumber, format = type, error, pairs, ipairs, tostring, tonumber, string.format
local gsub, byte, sort, concat = string.gsub, string.byte, table.sort, table.concat
local sub, match, find, upper = string.sub, string.match, string.find, string.upper

local _M = {}

-- Escapes the upstream may decode into path structure ("/", "\\", ".", NUL):
-- they stay literal there ("..%2F..%2Fadmin" must not become a traversal).
local STRUCTURAL = { ["2F"] = true, ["5C"] = true, ["2E"] = true, ["00"] = true }

-- Percent-encodes every byte but the unreserved ones. A "%XX" already in
-- the value (route parameters are the client's raw path) stays as it is,
-- where encoding it again sent "john%2520doe" for "john%20doe", unless it
-- names a structural byte. A value of only dots (".", "..") would be a
-- dot-segment at the upstream: its dots are sent as literal "%2E".
local function escape(s)
  s = tostring(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = sub(s, i, i)
    local h = c == "%" and match(s, "^%x%x", i + 1)
    if h and not STRUCTURAL[upper(h)] then
      out[#out + 1] = "%" .. h -- the client's own escape
      i = i + 3
    else
      -- A byte the upstream could misread ("%" included: a structural or a
      -- broken escape stays literal), encoded here once.
      out[#out + 1] = find(c, "^[%w%-%._~]$") and c or format("%%%02X", byte(c))
      i = i + 1
    end
  end
  s = concat(out)
  if s == "." or s == ".." then s = gsub(s, "%.", "%%252E") end
  return s
end

local function fill(path, params)
  return (gsub(path, "{([%w_]+)}", function(name)
    local v = params[name]
    if v == nil then return "" end
    return escape(v)
  end))
end

-- Checks the parts at configuration time; `upstreams` maps names to objects.
local function resolve_parts(parts, upstreams, level)
  if type(parts) ~= "table" then error("gw.aggregate: a table of parts is required", level + 1) end
  local list = {}
  for name, p in pairs(parts) do
    if type(p) ~= "table" then error("gw.aggregate: part '" .. tostring(name) .. "' must be a table", level + 1) end
    local up = p.upstream
    if type(up) == "string" then up = upstreams[up] end
    if type(up) ~= "table" or not up.get then
      error("gw.aggregate: part '" .. tostring(name) .. "': unknown upstream " .. tostring(p.upstream), level + 1)
    end
    if type(p.path) ~= "string" or byte(p.path, 1) ~= 47 then
      error("gw.aggregate: part '" .. tostring(name) .. "': path must start with '/'", level + 1)
    end
    list[name] = { up = up, path = p.path, optional = p.optional and true or false, timeout = p.timeout }
  end
  if next(list) == nil then error("gw.aggregate: at least one part is required", level + 1) end
  return list
end

-- Returns the route handler for `parts`.
function _M.handler(parts, upstreams, level)
  local list = resolve_parts(parts, upstreams, level + 1)
  return function(req)
    local fns = {}
    for name, p in pairs(list) do
      local path = fill(p.path, req.params)
      fns[name] = function()
        local res, err = p.up:get(path, { timeout = p.timeout, headers = { ["X-Request-Id"] = req.id } })
        if not res then return nil, err end
        if res.status < 200 or res.status > 299 then return nil, "status " .. res.status end
        local body, berr = res:body()
        if body == nil then return nil, berr end
        local bad = base.C.gw_ffi_json_check(body, #body)
        if bad >= 0 then return nil, "invalid JSON at byte " .. tonumber(bad) end
        return body
      end
    end
    local results, errors = sched.all(fns)
    local failed, partial = nil, false
    for name, e in pairs(errors) do
      if list[name].optional then
        partial = true
      else
        failed = failed or {}
        failed[name] = tostring(e)
      end
    end
    if failed then
      return { status = 502, headers = { ["X-Request-Id"] = req.id },
               json = { error = "a required part failed", parts = failed, request_id = req.id } }
    end
    -- {"name":BODY,...} in name order, each name encoded as a JSON string.
    local names = {}
    for name in pairs(results) do names[#names + 1] = tostring(name) end
    sort(names)
    local out = {}
    for i, name in ipairs(names) do
      out[i] = cjson.encode(name) .. ":" .. (results[name] or results[tonumber(name)])
    end
    local headers = { ["Content-Type"] = "application/json" }
    if partial then headers["X-Partial"] = "true" end
    return { status = 200, headers = headers, body = "{" .. concat(out, ",") .. "}" }
  end
end

return _M
