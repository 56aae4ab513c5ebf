-- gw.mw.request_id([opts]): gives every request an id.
--
-- Keeps a valid incoming X-Request-Id (1-128 characters, each an ASCII letter
-- or digit or one of - _ . :) or makes one, sets req.id (which error answers
-- and the access log use), sends it upstream in the same header and back to
-- the client as X-Request-Id. The narrow set is deliberate: the id is copied
-- into logs and JSON written by other programs too, and an id is an opaque
-- token (UUIDs, hex, ULIDs, "1-5759e988-bd86" style ids all fit), so a quote,
-- a backslash or a space in one is never needed and only good for injection.
--
-- Parameters: opts.header: the header name (default "x-request-id").
-- Returns: a middleware function(req, next).
-- Errors: raises at configuration time if opts.header is not a string.
local find = string.find
local util = require "gateway.mwutil"

return function(opts)
  opts = opts or {}
  local header = opts.header or "x-request-id"
  if type(header) ~= "string" then error("request_id: header must be a string", 2) end
  return function(req, next)
    local id = req.headers[header]
    if id and #id > 0 and #id <= 128 and not find(id, "[^A-Za-z0-9_.:%-]") then
      req.id = id
    else
      id = req.id
      req.headers[header] = id
    end
    local res = next()
    -- Every spelling replaced: an upstream's "x-request-id" went out too.
    util.header_set(res.headers, "X-Request-Id", id)
    return res
  end
end
