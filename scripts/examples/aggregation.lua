-- aggregation.lua: one client call fans out to two services in parallel and
-- the answers are merged; the "services" are this same gateway on two more
-- loopback ports, so nothing else needs to run.
--   bin/gateway -c scripts/examples/aggregation.lua
--   curl localhost:8083/profile/7          -> user and orders merged (gw.all, by hand)
--   curl -i localhost:8083/summary/7       -> the same with gw.aggregate
--   curl -i localhost:8083/summary/0       -> orders fail (optional): X-Partial: true
local gw = require "gateway"

gw.config { workers = 1, listen = { "127.0.0.1:8083", "127.0.0.1:9201", "127.0.0.1:9202" } }

-- The services.
gw.get("/svc/users/:id", function(req)
  gw.sleep(0.1)
  return { json = { id = tonumber(req.params.id), name = "user-" .. req.params.id } }
end)
gw.get("/svc/orders", function(req)
  gw.sleep(0.1)
  if req.query.user == "0" then return { status = 500, json = { error = "no orders for 0" } } end
  return { json = { { id = 1, total = 9.5 }, { id = 2, total = 20 } } }
end)

local users = gw.upstream("users", { servers = { "127.0.0.1:9201" } })
local orders = gw.upstream("orders", { servers = { "127.0.0.1:9202" }, timeouts = { read = 1 } })

gw.get("/profile/:id", function(req)
  local t0 = gw.now()
  local r, errs = gw.all {
    user = function() return users:get("/svc/users/" .. req.params.id) end,
    orders = function() return orders:get("/svc/orders", { query = { user = req.params.id } }) end,
  }
  if not r.user then return { status = 502, json = { error = errs.user } } end
  return { json = { user = r.user:json(), orders = r.orders and r.orders:json() or {},
                    took_ms = math.floor((gw.now() - t0) * 1000) } }
end)

gw.aggregate("/summary/:id", {
  user = { upstream = users, path = "/svc/users/{id}" },
  orders = { upstream = "orders", path = "/svc/orders?user={id}", optional = true },
})
