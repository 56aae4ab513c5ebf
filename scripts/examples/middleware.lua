-- middleware.lua: global, prefix and per-route middleware, and changing an
-- answer on its way out.
--   bin/gateway -c scripts/examples/middleware.lua
--   curl -i localhost:8082/public                        -> 200, X-Request-Id, X-Time-Ms
--   curl -i localhost:8082/admin/stats                   -> 401 (no token)
--   curl -i localhost:8082/admin/stats -H 'Authorization: Bearer letmein'   -> 200
--   curl -i -X POST localhost:8082/items -d '{"name":"x"}'                  -> 201 (route middleware)
--   curl -i -X POST localhost:8082/items -d 'not json'                      -> 400
local gw = require "gateway"

gw.config { workers = 1, listen = { "127.0.0.1:8082" } }

-- Global: an id on every request and a timing header on every answer.
gw.use(gw.mw.request_id())
gw.use(function(req, next)
  local t0 = gw.now()
  local res = next()
  res.headers["X-Time-Ms"] = string.format("%.3f", (gw.now() - t0) * 1000)
  return res
end)

-- Prefix: a bearer token for everything under /admin.
gw.use("/admin", function(req, next)
  if req.headers["authorization"] ~= "Bearer letmein" then
    return { status = 401, headers = { ["WWW-Authenticate"] = 'Bearer realm="admin"' },
             json = { error = "unauthorized", request_id = req.id } }
  end
  return next()
end)

-- Per route: parse a JSON body once and hand it on in req.ctx.
local function json_body(req, next)
  local doc, err = req:json()
  if not doc then return { status = 400, json = { error = err, request_id = req.id } } end
  req.ctx.doc = doc
  return next()
end

gw.get("/public", function() return { json = { ok = true } } end)
gw.get("/admin/stats", function() return { json = { workers = 1, uptime = "long" } } end)
gw.post("/items", json_body, function(req)
  return { status = 201, json = { created = req.ctx.doc.name } }
end)
