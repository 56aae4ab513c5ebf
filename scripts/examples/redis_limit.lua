-- redis_limit.lua: one rate limit shared by several gateways through Redis
-- (gw.mw.rate_limit with policy = "redis", docs/middleware.md).
-- It needs a Redis server on 127.0.0.1:6379:
--   redis-server --port 6379 --save '' --appendonly no &
--   bin/gateway -c scripts/examples/redis_limit.lua          (serves :8087)
--   sed 's/8087/8097/' scripts/examples/redis_limit.lua > /tmp/second.lua && bin/gateway -c /tmp/second.lua
--   for p in 8087 8097 8087 8097 8087 8097 8087; do curl -s -o /dev/null -w "$p %{http_code}\n" localhost:$p/api/data; done
--                          -> 200 five times across both gateways, then 429: one limit for the two
--   curl -i localhost:8087/api/data        -> 429, Retry-After, RateLimit-Remaining: 0
--   (stop redis-server)    curl -i localhost:8087/api/data   -> 200 (on_error = "allow"), a warning in the log
--   curl -i localhost:8087/strict          -> 503 {"error":"rate limiter unavailable"} (on_error = "deny")
local gw = require "gateway"

gw.config { workers = 2, listen = { "127.0.0.1:8087" } }

gw.use(gw.mw.request_id())

-- 5 requests per 10 seconds per client IP, counted in Redis.
gw.use("/api", gw.mw.rate_limit {
  rate = 5, per = 10, policy = "redis", redis = "redis://127.0.0.1:6379", on_error = "allow",
})
gw.get("/api/data", function(req) return { json = { data = "shared limit", worker = gw.worker_id() } } end)

-- The same, but closed when Redis cannot be asked.
gw.get("/strict", gw.mw.rate_limit {
  rate = 5, per = 10, policy = "redis", redis = "redis://127.0.0.1:6379", on_error = "deny",
}, function(req) return "ok\n" end)

-- gw.redis directly: a counter every gateway shares.
local redis = gw.redis("redis://127.0.0.1:6379", { timeout = 0.5 })
gw.get("/hits", function(req)
  local n, err = redis:call("INCR", "demo:hits")
  if not n then return { status = 503, json = { error = err } } end
  return { json = { hits = n } }
end)
