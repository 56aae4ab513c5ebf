-- gw.mw.cache{ dict = NAME, ttl = seconds, key = function(req), methods = { "GET", "HEAD" } }:
-- a response cache in a shared dict, so every worker serves what any worker
-- stored.
--
-- A GET whose answer is a cacheable 200 is stored (status, end-to-end
-- headers, body) for `ttl` seconds, or for the response's own
-- Cache-Control s-maxage / max-age. Later GET and HEAD requests with the
-- same key are answered from the dict without running what follows. A HEAD
-- is answered from a stored GET but never stores anything itself (its
-- answer has no body). Answers carry `X-Cache: MISS` or `X-Cache: HIT` (a
-- hit also `Age`).
--
-- An answer with Vary (other than `*`) is stored per value of the headers
-- it names (RFC 9111 4.1): a request is served only the answer stored for
-- its own values of those headers.
--
-- Not stored: statuses other than 200; a response with Set-Cookie, with
-- Cache-Control no-store, private or no-cache, with max-age=0, or with
-- `Vary: *`; the answer to a request carrying Authorization (unless the
-- response says public, s-maxage or must-revalidate, RFC 9111 3.5) or
-- Cache-Control: no-store. A request with Cache-Control: no-cache (or
-- Pragma: no-cache and no Cache-Control) skips the look-up and stores the
-- fresh answer.
--
-- Cost: a proxied response is streamed to the client when not cached, but
-- one that will be stored is first read whole into memory (res:body(),
-- bounded by the upstream's max_body) and sent buffered.
--
-- Parameters:
--   dict     name of a dict declared with gw.shared_dict before this call (required)
--   ttl      seconds > 0 (required): how long an answer is kept when the
--            response does not say
--   key      function(req) -> string, or nil/false to neither look up nor
--            store; default: the host and the request target (path and query)
--   methods  the request methods served from the cache, a subset of
--            { "GET", "HEAD" } (default both)
-- Returns: a middleware function(req, next).
-- Errors: raises at configuration time (error(msg, 2)) on an unknown or bad
--   option or an undeclared dict. A key function that raises or returns
--   another type is a script error (500).
local util = require "gateway.mwutil"
local shared = require "gateway.shared"
local cjson = require "cjson"

local type, error, tostring, pairs, ipairs, tonumber, floor = type, error, tostring, pairs, ipairs, tonumber, math.floor
local lower, find, match, sub, format, gmatch = string.lower, string.find, string.match, string.sub, string.format,
  string.gmatch
local concat = table.concat
local encode = cjson.encode

local KNOWN = { dict = true, ttl = true, key = true, methods = true }

-- Headers never stored: per connection, per answer, or re-made on a hit.
local SKIP = { connection = true, ["keep-alive"] = true, te = true, trailer = true,
               ["transfer-encoding"] = true, upgrade = true, ["proxy-connection"] = true,
               ["content-length"] = true, date = true, ["x-request-id"] = true, ["x-cache"] = true,
               age = true, ["set-cookie"] = true, ["retry-after"] = true, ["ratelimit-limit"] = true,
               ["ratelimit-remaining"] = true, ["ratelimit-reset"] = true }

local gw_mod -- gateway, for gw.now and the configuration state

local function gw_()
  gw_mod = gw_mod or require "gateway"
  return gw_mod
end

local function configure(opts)
  local err
  opts, err = util.check_options(opts, KNOWN, "cache")
  if not opts then return nil, err end
  local state = gw_()._state
  local name = opts.dict
  if type(name) ~= "string" then
    return nil, "cache: dict (the name of a gw.shared_dict) is required"
  end
  if not state.dict_sizes[name] then
    return nil, "cache: dict '" .. name .. "' is not declared (gw.shared_dict(NAME, SIZE) must come before this)"
  end
  local ttl = opts.ttl
  if type(ttl) ~= "number" or not (ttl > 0) or ttl == math.huge then
    return nil, "cache: ttl must be a number of seconds > 0"
  end
  if opts.key ~= nil and type(opts.key) ~= "function" then
    return nil, "cache: key must be a function(req)"
  end
  local methods = { GET = true, HEAD = true }
  if opts.methods ~= nil then
    local list
    list, err = util.string_list(opts.methods, "cache: methods")
    if not list then return nil, err end
    methods = {}
    for _, m in ipairs(list) do
      m = m:upper()
      if m ~= "GET" and m ~= "HEAD" then
        return nil, "cache: methods may only be GET and HEAD (got " .. m .. ")"
      end
      methods[m] = true
    end
  end
  return { dict = name, ttl = ttl, key = opts.key, methods = methods }
end

-- The header value as one string (a list is joined), or nil.
local function header_text(h, name)
  local v = util.header_get(h, name)
  if type(v) == "table" then return concat(v, ", ") end
  return v
end

-- Cache-Control directives of a value: name (lower case) -> value or true.
local function directives(v)
  local d = {}
  if not v then return d end
  for item in gmatch(v, "[^,]+") do
    local k, val = match(item, "^%s*([%w%-]+)%s*=%s*\"?([^\"]*)\"?%s*$")
    if k then
      d[lower(k)] = val
    else
      k = match(item, "^%s*([%w%-]+)%s*$")
      if k then d[lower(k)] = true end
    end
  end
  return d
end

-- How long the answer may be kept (seconds), or nil when it must not be.
local function freshness(req, res, default_ttl)
  if res.status ~= 200 then return nil end
  local h = res.headers
  if util.header_get(h, "set-cookie") ~= nil then return nil end
  local vary = header_text(h, "vary")
  if vary and find(vary, "*", 1, true) then return nil end
  local cc = directives(header_text(h, "cache-control"))
  if cc["no-store"] or cc["private"] or cc["no-cache"] then return nil end
  if req.headers["authorization"] and not (cc["public"] or cc["s-maxage"] or cc["must-revalidate"]) then
    return nil
  end
  local age = tonumber(cc["s-maxage"]) or tonumber(cc["max-age"])
  if cc["s-maxage"] or cc["max-age"] then
    if not age or age <= 0 then return nil end
    return age
  end
  return default_ttl
end

-- The body of an answer as it will be sent, buffering a proxied one; nil
-- (and the error) when a proxied body cannot be read.
local function body_of(res)
  if rawget(res, "_proxy") then return res:body() end
  local b = rawget(res, "body")
  if b == nil then b = rawget(res, "_body") end
  local json = rawget(res, "json")
  if json ~= nil then
    if util.header_get(res.headers, "content-type") == nil then res.headers["content-type"] = "application/json" end
    return encode(json)
  end
  if b == nil then return "" end
  if type(b) ~= "string" then return tostring(b) end
  return b
end

-- ---- the stored form ----
-- "<status> <stored_at> <header bytes>\n" .. "name: value\r\n"... .. body

-- Returns nil for headers that cannot be sent (a name that is not a token,
-- a value with CR, LF or NUL): such an answer fails when it is sent, and
-- stored it would come back split into lines of its own making.
local function serialize(status, headers, body, now)
  -- The names the answer's Connection header lists are hop-by-hop too.
  local conn = util.header_get(headers, "connection")
  if type(conn) == "table" then conn = concat(conn, ",") end
  local named = util.connection_names(conn)
  local kept = {}
  for k, v in pairs(headers) do
    if type(k) == "string" and not SKIP[lower(k)] and not named[lower(k)] then kept[k] = v end
  end
  local lines = {}
  local n = util.header_lines(kept, lines, 0)
  if not n then return nil end
  local hb = concat(lines, "", 1, n)
  return format("%d %.3f %d\n", status, now, #hb) .. hb .. body
end

local function deserialize(s)
  local status, stored, hlen, pos = match(s, "^(%d+) ([%d%.]+) (%d+)\n()")
  if not status then return nil end
  hlen = tonumber(hlen)
  local hb = sub(s, pos, pos + hlen - 1)
  local headers = {}
  for k, v in gmatch(hb, "([^:\r\n]+): ([^\r\n]*)\r\n") do
    local old = headers[k]
    if old == nil then
      headers[k] = v
    elseif type(old) == "table" then
      old[#old + 1] = v
    else
      headers[k] = { old, v }
    end
  end
  return tonumber(status), tonumber(stored), headers, sub(s, pos + hlen)
end

local function default_key(req)
  return req.host .. " " .. req.uri
end

-- ---- Vary (RFC 9111 4.1) ----
-- An answer with `Vary: a, b` is stored under the key plus the request's
-- values of a and b (a variant), and the key itself holds "VARY a,b" (the
-- index), so that a later request finds its own variant, or none.

local INDEX = "VARY "

-- The lower-case header names of a Vary value, sorted, without repeats;
-- nil when there are none.
local function vary_names(v)
  if not v then return nil end
  local set, list = {}, {}
  for name in gmatch(v, "[^,%s]+") do
    name = lower(name)
    if not set[name] then
      set[name] = true
      list[#list + 1] = name
    end
  end
  if #list == 0 then return nil end
  table.sort(list)
  return list
end

-- The request's values of `names`, normalised (lists joined, blanks
-- collapsed), as a key suffix; an absent header differs from an empty one.
local function variant_suffix(req, names)
  local parts = {}
  for i, name in ipairs(names) do
    local v = req.headers[name]
    if type(v) == "table" then v = concat(v, ", ") end
    if v == nil then
      parts[i] = name .. "\1"
    else
      v = string.gsub(string.gsub(v, "%s+", " "), "^ ?(.-) ?$", "%1")
      parts[i] = name .. "=" .. v
    end
  end
  return "\0vary\0" .. concat(parts, "\0")
end

return function(opts)
  local conf, err = configure(opts)
  if not conf then error(err, 2) end
  local name, default_ttl, methods = conf.dict, conf.ttl, conf.methods
  local key_fn = conf.key or default_key
  local state = gw_()._state
  local dict -- opened on first use: only a worker has the shared memory

  return function(req, next)
    local method = req.method
    if not methods[method] then return next() end
    local k = key_fn(req)
    if k == nil or k == false then return next() end
    if type(k) ~= "string" then error("cache: the key function returned a " .. type(k) .. ", not a string", 0) end
    k = "cache:" .. k
    if not dict then dict = shared.open(state, name) end

    local rcc = req.headers["cache-control"]
    local rd = directives(rcc)
    local refresh = rd["no-cache"] or (rcc == nil and req.headers["pragma"] == "no-cache")
    if not refresh then
      local s = dict:get(k)
      if type(s) == "string" and sub(s, 1, #INDEX) == INDEX then
        local names = {}
        for name in gmatch(sub(s, #INDEX + 1), "[^,]+") do names[#names + 1] = name end
        s = dict:get(k .. variant_suffix(req, names))
      end
      if type(s) == "string" then
        local status, stored, headers, body = deserialize(s)
        if status then
          headers["X-Cache"] = "HIT"
          local age = floor(gw_mod.now() - stored)
          headers["Age"] = format("%d", age < 0 and 0 or age)
          return { status = status, headers = headers, body = body }
        end
      end
    end

    local res = next()
    if method == "GET" and not rd["no-store"] then
      local ttl = freshness(req, res, default_ttl)
      if ttl then
        local body, berr = body_of(res)
        if body ~= nil then
          local stored = serialize(res.status, res.headers, body, gw_mod.now())
          local names = stored and vary_names(header_text(res.headers, "vary"))
          if not stored then
            gw_mod.log.warn("cache: an answer with an invalid header is not stored")
          elseif names then
            dict:set(k, INDEX .. concat(names, ","), ttl)
            dict:set(k .. variant_suffix(req, names), stored, ttl)
          else
            dict:set(k, stored, ttl)
          end
        else
          gw_mod.log.warn("cache: reading the upstream's body failed: " .. tostring(berr))
        end
      end
    end
    util.header_set(res.headers, "X-Cache", "MISS")
    return res
  end
end
