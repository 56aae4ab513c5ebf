-- gw.mw.cors{ origins = { "https://app.example.com" } | "*", methods =, headers =,
--             expose =, max_age =, credentials = }: Cross-Origin Resource Sharing
-- (the Fetch standard's CORS protocol).
--
-- A preflight (OPTIONS with Origin and Access-Control-Request-Method) from
-- an allowed origin is answered here with 204 and the
-- Access-Control-Allow-* headers; it never reaches the route. Any other
-- request goes on, and its answer from an allowed origin gets
-- Access-Control-Allow-Origin (the origin itself when credentials = true or
-- origins is a list, "*" otherwise), Access-Control-Allow-Credentials and
-- Access-Control-Expose-Headers as configured.
--
-- The middleware owns CORS for what it wraps: Access-Control-* headers a
-- handler or an upstream set are replaced, and a disallowed origin (or a
-- request without Origin) gets no Access-Control-* header at all. Every
-- answer that passes through carries `Vary: Origin`, so that a cache never
-- gives one origin's answer to another.
--
-- Parameters:
--   origins      "*" (default) or a list of origins ("https://a.example",
--                "http://localhost:3000"; scheme://host[:port], no path),
--                compared case-insensitively
--   methods      list, default { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE" }
--   headers      list of request headers a preflight may ask for; default:
--                whatever the preflight asks for (reflected)
--   expose       list of response headers scripts may read (default none)
--   max_age      seconds a browser may cache a preflight (default: not sent)
--   credentials  true to allow cookies and Authorization (default false);
--                needs a list of origins, never "*"
-- Returns: a middleware function(req, next).
-- Errors: raises at configuration time (the caller's file:line) on an
--   unknown or invalid option, or credentials = true with origins = "*".
local util = require "gateway.mwutil"

local type, pairs, ipairs, error, tostring, concat = type, pairs, ipairs, error, tostring, table.concat
local lower, upper, find, sub = string.lower, string.upper, string.find, string.sub

local KNOWN = { origins = true, methods = true, headers = true, expose = true, max_age = true,
                credentials = true }
local DEFAULT_METHODS = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE" }

local function is_origin(s)
  return s == "null" or (find(s, "^%a[%w+.-]*://[^/?#%s]+$") ~= nil)
end

local function configure(opts)
  local err
  opts, err = util.check_options(opts, KNOWN, "cors")
  if not opts then return nil, err end
  local c = {}
  local origins = opts.origins
  if origins == nil or origins == "*" then
    c.any = true
  else
    local list
    list, err = util.string_list(origins, "cors: origins", is_origin)
    if not list then return nil, err .. ' (an origin is "scheme://host[:port]", without a path)' end
    if #list == 0 then return nil, "cors: origins must not be empty" end
    c.origins = {}
    for _, o in ipairs(list) do c.origins[lower(o)] = true end
  end
  if opts.credentials ~= nil and type(opts.credentials) ~= "boolean" then
    return nil, "cors: credentials must be true or false"
  end
  c.credentials = opts.credentials == true
  if c.credentials and c.any then
    return nil, 'cors: credentials = true needs a list of origins, not "*"'
  end
  local methods
  methods, err = util.string_list(opts.methods or DEFAULT_METHODS, "cors: methods", util.is_token)
  if not methods then return nil, err end
  if #methods == 0 then return nil, "cors: methods must not be empty" end
  for i, m in ipairs(methods) do methods[i] = upper(m) end
  c.methods = concat(methods, ", ")
  if opts.headers ~= nil then
    local list
    list, err = util.string_list(opts.headers, "cors: headers", util.is_token)
    if not list then return nil, err end
    c.headers = concat(list, ", ")
  end
  if opts.expose ~= nil then
    local list
    list, err = util.string_list(opts.expose, "cors: expose", util.is_token)
    if not list then return nil, err end
    if #list > 0 then c.expose = concat(list, ", ") end
  end
  local max_age = opts.max_age
  if max_age ~= nil then
    if type(max_age) ~= "number" or max_age < 0 or max_age % 1 ~= 0 then
      return nil, "cors: max_age must be a whole number of seconds >= 0"
    end
    c.max_age = tostring(max_age)
  end
  return c
end

-- Removes every Access-Control-* header from a response's headers.
local function is_cors_header(lname) return sub(lname, 1, 15) == "access-control-" end

local function strip(h) util.header_remove_if(h, is_cors_header) end

-- A header list as a preflight's Access-Control-Request-Headers sends it.
local function is_token_list(s)
  return not find(s, "[^%w!#$%%&'*+.^_`|~%-, \t]")
end

return function(opts)
  local c, err = configure(opts)
  if not c then error(err, 2) end
  local any, allowed, credentials = c.any, c.origins, c.credentials
  local methods, headers, expose, max_age = c.methods, c.headers, c.expose, c.max_age
  local set, add_vary = util.header_set, util.add_vary

  return function(req, next)
    local origin = req.headers["origin"]
    local ok = origin ~= nil and (any or allowed[lower(origin)] == true)
    local allow_origin = ok and ((any and not credentials) and "*" or origin)

    if ok and req.method == "OPTIONS" and req.headers["access-control-request-method"] then
      local h = {
        ["Access-Control-Allow-Origin"] = allow_origin,
        ["Access-Control-Allow-Methods"] = methods,
        Vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
      }
      local want = headers
      if want == nil then
        local asked = req.headers["access-control-request-headers"]
        if asked and asked ~= "" and is_token_list(asked) then want = asked end
      end
      if want then h["Access-Control-Allow-Headers"] = want end
      if max_age then h["Access-Control-Max-Age"] = max_age end
      if credentials then h["Access-Control-Allow-Credentials"] = "true" end
      return { status = 204, headers = h, body = "" }
    end

    local res = next()
    local h = res.headers
    strip(h)
    add_vary(h, "Origin")
    if ok then
      set(h, "Access-Control-Allow-Origin", allow_origin)
      if credentials then h["Access-Control-Allow-Credentials"] = "true" end
      if expose then h["Access-Control-Expose-Headers"] = expose end
    end
    return res
  end
end
