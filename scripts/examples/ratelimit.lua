-- ratelimit.lua: rate limits by IP, by consumer and by a key of your own,
-- exact across workers (gw.mw.rate_limit, docs/middleware.md).
--   bin/gateway -c scripts/examples/ratelimit.lua
--   curl -i localhost:8086/hello                  -> 200, RateLimit-Limit: 5, RateLimit-Remaining: 4
--   for i in $(seq 7); do curl -s -o /dev/null -w '%{http_code}\n' localhost:8086/hello; done
--                                                 -> 200 until the burst of 5 is used, then 429
--   curl -i localhost:8086/hello                  -> 429, Retry-After: 1, RateLimit-Remaining: 0,
--                                                    {"error":"rate limit exceeded","request_id":"..."}
--   curl -i localhost:8086/api/orders -H 'X-Api-Key: k-alice'   -> 200 (alice: 2 per minute)
--   curl -i localhost:8086/api/orders -H 'X-Api-Key: k-bob'     -> 200 (bob counts apart)
--   curl -i localhost:8086/search -H 'X-Tenant: acme'           -> 200 (per tenant: 1 per second)
--   curl -i localhost:8086/search                               -> 200, no RateLimit-* (no tenant: unlimited)
local gw = require "gateway"

gw.config { workers = 2, listen = { "127.0.0.1:8086" } }

gw.use(gw.mw.request_id())

-- By client IP: 5 per second on average, 5 back to back. Counted in the
-- gateway's own dict ("gw.rate_limit", declared by the middleware).
gw.get("/hello", gw.mw.rate_limit { rate = 5 }, function(req)
  return { json = { hello = "world", worker = gw.worker_id() } }
end)

-- By consumer: key_auth runs first and sets req.consumer; 2 per minute each,
-- counted in a dict declared here.
gw.shared_dict("limits", "1m")
gw.use("/api", gw.mw.key_auth { keys = { ["k-alice"] = "alice", ["k-bob"] = "bob" } })
gw.use("/api", gw.mw.rate_limit { rate = 2, per = 60, key = "consumer", dict = "limits" })
gw.get("/api/orders", function(req)
  return { json = { consumer = req.consumer.name, orders = {} } }
end)

-- By a key of your own: the X-Tenant header; a request without one is not limited.
gw.get("/search", gw.mw.rate_limit {
  rate = 1, burst = 1, dict = "limits",
  key = function(req) return req.headers["x-tenant"] end,
}, function(req)
  return { json = { results = {} } }
end)
