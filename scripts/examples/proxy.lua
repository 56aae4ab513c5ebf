-- proxy.lua: a reverse proxy with two backends (weighted round robin, one
-- retry to the other server for idempotent requests), a request header
-- added by a script, and a response header added on the way out.
--   bin/gateway -c scripts/examples/proxy.lua
--   curl -s localhost:8084/api/headers          -> what the backend saw (X-Forwarded-*, X-Api-Version)
--   curl -i localhost:8084/api/headers          -> X-Served-By: gateway on the answer
--   curl -i -X POST localhost:8084/api/echo -d 'hello'   -> the body, streamed there and back
--   curl -s localhost:8084/api/big | wc -c      -> 5000000 bytes streamed through
local gw = require "gateway"

gw.config { workers = 1, listen = { "127.0.0.1:8084", "127.0.0.1:9301", "127.0.0.1:9302" } }

-- The "backends" (this gateway again, on :9301 and :9302).
gw.get("/headers", function(req)
  local seen = {}
  for _, h in ipairs(req:header_list()) do seen[h[1]:lower()] = h[2] end
  return { json = seen }
end)
gw.post("/echo", function(req) return req:body() end)
gw.get("/big", function(req) return string.rep("x", 5000000) end)

local api = gw.upstream("api", {
  servers = { { addr = "127.0.0.1:9301", weight = 1 }, { addr = "127.0.0.1:9302", weight = 2 } },
  retries = 1,
  timeouts = { connect = 1, read = 5 },
})

gw.use("/api", function(req, next)
  local res = next()
  res.headers["X-Served-By"] = "gateway"
  return res
end)

gw.route("*", "/api/*rest", function(req)
  req.headers["X-Api-Version"] = "2"
  return api:proxy(req, { path = "/" .. req.params.rest })
end)
