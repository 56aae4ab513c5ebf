-- The benchmark's scenarios for our gateway, written in its public Lua API
-- (`require "gateway"`, see the project README).
--
-- One scenario per process, chosen by GW_BENCH_SCENARIO, so that each target's
-- CPU is measured alone; it listens on 127.0.0.1:GW_BENCH_PORT with one worker
-- and no access log.  bench/run.sh starts one process per target:
--
--   hello     : a Lua route GET /users/:id answering "hello"
--               (compare: the origin's nginx `return 200`)
--   routes10  : the same hello route plus 9 other routes of realistic shapes
--   routes10k : the same hello route plus 9,999 other routes (router cost at
--               10,000 routes; compare with routes10)
--   routesN / routesNk : any other count, e.g. routes1000 or routes100k
--   proxy     : plain proxy to the users origin (compare: anchor (a))
--   lua       : x-api-key checked against a Lua table, then proxy (compare: (b))
--   agg       : two parallel upstream calls, JSON merge (compare: (c))
--   tls       : the hello route on a TLS listener (certificate and key from
--               GW_BENCH_TLS_DIR, which run.sh fills; compare: nginx-tls)
--   tlsfull   : the same without session resumption (tls.session_tickets =
--               false), so that every new connection is a full handshake
--               (compare: nginx-tls-new, ssl_session_tickets off)
--
-- proxy, lua and agg need the gateway's upstreams (gw.upstream); they are not
-- in run.sh's default run (add them with --add gw-proxy,gw-lua,gw-agg).
local gw = require "gateway"

local scenario = os.getenv("GW_BENCH_SCENARIO") or "hello"
local port = os.getenv("GW_BENCH_PORT") or "8090"

local listen = "127.0.0.1:" .. port
if scenario == "tls" or scenario == "tlsfull" then
  local dir = assert(os.getenv("GW_BENCH_TLS_DIR"), "the tls scenarios need GW_BENCH_TLS_DIR")
  listen = { addr = listen, tls = { cert = dir .. "/bench.pem", key = dir .. "/bench.key" } }
end
gw.config { workers = 1, listen = { listen }, access_log = false,
            tls = { session_tickets = scenario ~= "tlsfull" } }

-- Upstreams are declared only by the scenarios that use them.
local function origins()
  return gw.upstream("users",  { servers = { "127.0.0.1:9001" }, keepalive = { idle = 64 } }),
         gw.upstream("orders", { servers = { "127.0.0.1:9002" }, keepalive = { idle = 64 } })
end

local function hello() return "hello" end

-- Shapes of the filler routes: one "service" svc<j> has 8 endpoints, so N
-- routes are ceil((N - 1) / 8) services sharing the first segment "svc<j>"
-- (static children of the root, found by hash) plus the /api/v1 subtree.
-- Route k (k = 1 .. N-1) has shape ((k - 1) % 8) + 1 and service
-- j = floor((k - 1) / 8) + 1.  Each answers its own pattern, which run.sh's
-- checks use to prove that the last route of the table was loaded.
local SHAPES = {
  { "GET",    "/svc%d/static" },
  { "GET",    "/svc%d/items/:id" },
  { "POST",   "/svc%d/items" },
  { "GET",    "/svc%d/items/:id/reviews/:rid" },
  { "GET",    "/api/v1/svc%d/status" },
  { "GET",    "/svc%d/files/*path" },
  { "DELETE", "/svc%d/items/:id" },
  { "GET",    "/svc%d" },
}

local function filler_routes(n)
  for k = 1, n - 1 do
    local shape = SHAPES[(k - 1) % #SHAPES + 1]
    local pattern = string.format(shape[2], math.floor((k - 1) / #SHAPES) + 1)
    gw.route(shape[1], pattern, function() return pattern end)
  end
end

local nroutes, kilo = scenario:match("^routes(%d+)(k?)$")

if scenario == "hello" or scenario == "tls" or scenario == "tlsfull" then
  gw.get("/users/:id", hello)

elseif nroutes then
  local n = tonumber(nroutes) * (kilo == "k" and 1000 or 1)
  assert(n >= 1, "routesN: N must be at least 1")
  gw.get("/users/:id", hello)        -- the route the load hits, registered first
  filler_routes(n)

elseif scenario == "proxy" then
  local users = origins()
  gw.get("/users/:id", function(req) return users:proxy(req) end)

elseif scenario == "lua" then
  local users, orders = origins()
  local keys = { ["bench-key-1"] = "alice", ["bench-key-2"] = "bob" }
  gw.use(function(req, next)
    local key = req.headers["x-api-key"]
    if key == nil or keys[key] == nil then
      return { status = 401, json = { error = "unauthorized" } }
    end
    return next()
  end)
  gw.get("/users/:id", function(req) return users:proxy(req) end)
  gw.get("/orders", function(req) return orders:proxy(req) end)

elseif scenario == "jwt" then
  -- An HS256-protected proxied route (issue 5: at most 1.2x gw-lua's CPU).
  -- run.sh sends a token signed with this secret, valid until 2100.
  local users = origins()
  gw.use(gw.mw.jwt { secret = "bench-secret-0123456789abcdef-0123456789" })
  gw.get("/users/:id", function(req) return users:proxy(req) end)

elseif scenario == "ratelimit" then
  -- A locally rate-limited proxied route; the limit is never reached, so
  -- every request pays for one GCRA decision in the shared dict.
  local users = origins()
  gw.use(gw.mw.rate_limit { rate = 1e9, per = 1 })
  gw.get("/users/:id", function(req) return users:proxy(req) end)

elseif scenario == "agg" then
  local users, orders = origins()
  gw.get("/dashboard/:id", function(req)
    local id = req.params.id
    local r = gw.all {
      user   = function() return users:get("/users/" .. id) end,
      orders = function() return orders:get("/orders", { query = { user = id } }) end,
    }
    local u, o = r.user, r.orders
    if not (u and o and u.status == 200 and o.status == 200) then
      return { status = 502, json = { error = "upstream failed" } }
    end
    local user, ord = u:json(), o:json()
    if not (user and ord) then
      return { status = 502, json = { error = "bad upstream json" } }
    end
    return { json = { user = user, orders = ord.orders, order_count = ord.count } }
  end)

else
  error("unknown GW_BENCH_SCENARIO '" .. scenario .. "' (hello, routesN, routesNk, proxy, lua, jwt, ratelimit, agg, tls, tlsfull)")
end
