-- cached_aggregation.lua: an aggregation endpoint whose merged answer is cached
-- in a shared dict (gw.mw.cache + gw.aggregate). The "services" are this
-- gateway on two more ports, slow on purpose, so the cache shows.
--   bin/gateway -c scripts/examples/cached_aggregation.lua
--   time curl -si localhost:8089/profile/7 | grep -i x-cache     -> X-Cache: MISS, about 0.2 s
--   time curl -si localhost:8089/profile/7 | grep -i x-cache     -> X-Cache: HIT, at once (for 10 s)
--   curl -si localhost:8089/profile/7 -H 'Cache-Control: no-cache' | grep -i x-cache -> MISS (fresh)
local gw = require "gateway"

gw.config { workers = 2, listen = { "127.0.0.1:8089", "127.0.0.1:9401", "127.0.0.1:9402" } }

gw.shared_dict("pages", "10m")

-- The slow services.
gw.get("/svc/users/:id", function(req)
  gw.sleep(0.2)
  return { json = { id = tonumber(req.params.id), name = "user-" .. req.params.id } }
end)
gw.get("/svc/orders", function(req)
  gw.sleep(0.2)
  return { json = { { id = 1, total = 9.5 }, { id = 2, total = 20 } } }
end)

local users = gw.upstream("users", { servers = { "127.0.0.1:9401" } })
local orders = gw.upstream("orders", { servers = { "127.0.0.1:9402" } })

-- The merged document, cached for 10 s (both calls run in parallel on a miss).
gw.use("/profile", gw.mw.cache { dict = "pages", ttl = 10 })
gw.aggregate("/profile/:id", {
  user = { upstream = users, path = "/svc/users/{id}" },
  orders = { upstream = orders, path = "/svc/orders?user={id}", optional = true },
})
