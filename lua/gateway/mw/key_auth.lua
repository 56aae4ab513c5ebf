-- gw.mw.key_auth{ keys = { [key] = consumer }, header = "x-api-key", query = "apikey" }:
-- API-key authentication.
--
-- The key is read from the request header `header`, else from the query
-- parameter `query`. A known key sets req.consumer = { name = consumer }
-- and the request goes on; a missing or unknown key ends it with 401, the
-- gateway's JSON error and `WWW-Authenticate: Key`.
--
-- Keys are never compared as strings: each configured key is stored under
-- its HMAC-SHA256 with a random per-process secret, and a presented key is
-- looked up by its own HMAC. How long the look-up takes therefore tells an
-- attacker nothing about the configured keys (which bytes match, how long
-- they are), and the configured keys are not kept in the clear.
--
-- Parameters:
--   keys    table, required, non-empty: API key (non-empty string) -> consumer
--           name (non-empty string)
--   header  string, default "x-api-key"; false to ignore headers
--   query   string, default "apikey"; false to ignore the query string
-- Returns: a middleware function(req, next).
-- Errors: raises at configuration time (error(msg, 2): the caller's
--   file:line) on an unknown option, bad keys, or header and query both false.
local crypto = require "gateway.crypto"
local util = require "gateway.mwutil"

local type, pairs, error = type, pairs, error
local hmac = crypto.hmac

local KNOWN = { keys = true, header = true, query = true }

local function configure(opts)
  local err
  opts, err = util.check_options(opts, KNOWN, "key_auth")
  if not opts then return nil, err end
  local keys = opts.keys
  if type(keys) ~= "table" or next(keys) == nil then
    return nil, "key_auth: keys must be a non-empty table { [key] = consumer_name }"
  end
  local header, query = opts.header, opts.query
  if header == nil then header = "x-api-key" end
  if query == nil then query = "apikey" end
  if header ~= false and not util.is_token(header) then
    return nil, "key_auth: header must be a header name or false"
  end
  if query ~= false and (type(query) ~= "string" or query == "") then
    return nil, "key_auth: query must be a parameter name or false"
  end
  if header == false and query == false then
    return nil, "key_auth: header and query cannot both be false"
  end
  local secret = crypto.random(32)
  local by_mac = {}
  for key, name in pairs(keys) do
    if type(key) ~= "string" or key == "" then
      return nil, "key_auth: every key must be a non-empty string"
    end
    if type(name) ~= "string" or name == "" then
      return nil, "key_auth: the consumer of every key must be a non-empty name"
    end
    by_mac[hmac("sha256", secret, key)] = name
  end
  return { secret = secret, by_mac = by_mac, header = header, query = query }
end

return function(opts)
  local conf, err = configure(opts)
  if not conf then error(err, 2) end
  local secret, by_mac, header, query = conf.secret, conf.by_mac, conf.header, conf.query

  return function(req, next)
    local key
    if header then key = req.headers[header] end
    if key == nil and query then
      key = req.query[query]
      if type(key) ~= "string" then key = nil end -- absent, valueless or repeated
    end
    if key == nil or key == "" then
      return util.unauthorized(req, "missing API key", "Key")
    end
    local name = by_mac[hmac("sha256", secret, key)]
    if name == nil then
      return util.unauthorized(req, "invalid API key", "Key")
    end
    req.consumer = { name = name }
    return next()
  end
end
