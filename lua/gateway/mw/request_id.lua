-- gw.mw.request_id([opts]): gives every request an id.
--
-- Keeps a valid incoming X-Request-Id (1-128 visible ASCII characters) or
-- makes one, sets req.id (which error answers and the access log use), sends
-- it upstream in the same header and back to the client as X-Request-Id.
--
-- Parameters: opts.header: the header name (default "x-request-id").
-- Returns: a middleware function(req, next).
-- Errors: raises at configuration time if opts.header is not a string.
local find = string.find

return function(opts)
  opts = opts or {}
  local header = opts.header or "x-request-id"
  if type(header) ~= "string" then error("request_id: header must be a string", 2) end
  return function(req, next)
    local id = req.headers[header]
    if id and #id <= 128 and not find(id, "[^\33-\126]") then
      req.id = id
    else
      id = req.id
      req.headers[header] = id
    end
    local res = next()
    res.headers["X-Request-Id"] = id
    return res
  end
end
