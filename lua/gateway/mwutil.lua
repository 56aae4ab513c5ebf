-- gateway.mwutil: what the built-in middleware (lua/gateway/mw/*.lua) share:
-- option checking at configuration time, 401 answers with their challenge,
-- case-insensitive edits of a response's headers table, and the checked
-- "name: value\r\n" header blocks that upstream.lua and the cache build.
--
-- Option checkers return nil and a message rather than raising, so that
-- each middleware factory raises once, with error(msg, 2), at the line of
-- the configuration that called it.
--
-- A response's `headers` is a plain table whose names may come in any case
-- (a handler's "content-type", an upstream's lower-cased names): the
-- helpers here find every spelling of a name, so a header is never sent
-- twice under two spellings.
local type, pairs, ipairs, tostring, next = type, pairs, ipairs, tostring, next
local lower, find, gsub, format, gmatch = string.lower, string.find, string.gsub, string.format, string.gmatch
local concat = table.concat

local _M = {}

-- ---- configuration checks ----

-- RFC 9110 5.6.2 token: what header names and auth schemes are made of.
function _M.is_token(s)
  return type(s) == "string" and s ~= "" and not find(s, "[^%w!#$%%&'*+.^_`|~-]")
end

-- A header value a script may send: no CR, LF or NUL.
function _M.is_header_value(s)
  return type(s) == "string" and not find(s, "[\r\n%z]")
end

-- "name: value\r\n" for a header block, or nil when the name is not an
-- HTTP token or the value holds CR, LF or NUL. Every block made here goes to
-- C as one string that C splits on CRLF again, so a CRLF inside a value
-- would otherwise come out as a header line of the script's caller's
-- choosing (header injection, response splitting).
function _M.header_line(name, value)
  value = tostring(value)
  if not (_M.is_token(name) and _M.is_header_value(value)) then return nil end
  return name .. ": " .. value .. "\r\n"
end

-- The error message for a response header a script set that cannot go out
-- (runtime.lua and upstream.lua raise it, each at its own level).
function _M.bad_response_header(name)
  return format("response header %q is invalid (CR/LF or a bad name)", tostring(name))
end

-- out[n + 1] = the line of name k, value x; returns n + 1, or nil.
local function append_line(out, n, k, x)
  local line = _M.header_line(k, x)
  if not line then return nil end
  out[n + 1] = line
  return n + 1
end

-- Appends the lines of `headers` (name -> value or list of values) to out
-- from out[n + 1]; returns the new n, or nil and the first invalid name.
function _M.header_lines(headers, out, n)
  if headers then
    for k, v in pairs(headers) do
      if type(v) == "table" then
        for _, x in ipairs(v) do
          n = append_line(out, n, k, x)
          if not n then return nil, k end
        end
      else
        n = append_line(out, n, k, v)
        if not n then return nil, k end
      end
    end
  end
  return n
end

-- The names a Connection header's value lists (lower-cased, as a set; empty
-- unless `value` is a string): they are hop-by-hop headers of that one hop
-- (RFC 9110 7.6.1).
function _M.connection_names(value)
  local named = {}
  if type(value) == "string" then
    for tok in gmatch(value, "[^%s,]+") do named[lower(tok)] = true end
  end
  return named
end

-- Raises nothing: returns nil, "who: unknown option 'x'" for a key of opts
-- not in `known` (a set), or opts (a table) when all is well.
function _M.check_options(opts, known, who)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then return nil, who .. ": options must be a table" end
  for k in pairs(opts) do
    if not known[k] then return nil, format("%s: unknown option '%s'", who, tostring(k)) end
  end
  return opts
end

-- A list of strings (or one string), each passing ok(s); returns the list.
function _M.string_list(v, what, ok)
  if type(v) == "string" then v = { v } end
  if type(v) ~= "table" then return nil, what .. " must be a string or a list of strings" end
  local out = {}
  for i, s in ipairs(v) do
    if type(s) ~= "string" or (ok and not ok(s)) then
      return nil, format("%s[%d] is not valid (%s)", what, i, tostring(s))
    end
    out[i] = s
  end
  if next(v) ~= nil and #out == 0 then return nil, what .. " must be a list" end
  return out
end

-- A realm for a challenge: printable ASCII without '"' or '\', so it can
-- be sent as a quoted-string as it is.
function _M.check_realm(v, who)
  if type(v) ~= "string" or v == "" or find(v, '[%c"\\\128-\255]') then
    return nil, who .. ': realm must be printable ASCII without " or \\'
  end
  return v
end

-- ---- answers ----

local runtime -- gateway.runtime, loaded before any request runs

-- A 401 with the gateway's JSON error shape and the WWW-Authenticate
-- challenge `challenge`.
function _M.unauthorized(req, message, challenge)
  runtime = runtime or require "gateway.runtime"
  return runtime.error_response(req, 401, message, { ["WWW-Authenticate"] = challenge })
end

-- A quoted-string (RFC 9110 5.6.4) for an auth-param value.
function _M.quote(s)
  return '"' .. gsub(s, '["\\]', "\\%0") .. '"'
end

-- ---- response headers ----

-- The value of header `name` (any case) and the key it is stored under.
function _M.header_get(h, name)
  local lname = lower(name)
  for k, v in pairs(h) do
    if type(k) == "string" and lower(k) == lname then return v, k end
  end
  return nil
end

-- Removes every header whose lower-cased name `keep_out(lname)` accepts.
-- (Keys are collected first: a table must not change while pairs walks it.)
function _M.header_remove_if(h, keep_out)
  local found
  for k in pairs(h) do
    if type(k) == "string" and keep_out(lower(k)) then
      found = found or {}
      found[#found + 1] = k
    end
  end
  if found then
    for i = 1, #found do h[found[i]] = nil end
  end
end

-- Removes header `name` in every spelling.
function _M.header_remove(h, name)
  local lname = lower(name)
  _M.header_remove_if(h, function(lk) return lk == lname end)
end

-- Sets header `name` to value, replacing it in every spelling.
function _M.header_set(h, name, value)
  _M.header_remove(h, name)
  h[name] = value
end

-- Adds `token` to the response's Vary header unless it is there or Vary is "*".
function _M.add_vary(h, token)
  local v = _M.header_get(h, "vary")
  if type(v) == "table" then v = concat(v, ", ") end
  if v == nil or v == "" then
    _M.header_set(h, "Vary", token)
    return
  end
  local ltoken = lower(token)
  for t in v:gmatch("[^%s,]+") do
    local lt = lower(t)
    if lt == ltoken or lt == "*" then return end
  end
  _M.header_set(h, "Vary", v .. ", " .. token)
end

return _M
