-- jwt.lua: JWT bearer authentication with gw.mw.jwt, and a demo token issuer
-- built on gw.crypto (a real deployment gets its tokens from an identity
-- provider: drop /demo/token).
--   bin/gateway -c scripts/examples/jwt.lua
--   curl -i localhost:8085/public                                   -> 200, no token needed
--   curl -i localhost:8085/api/me                                   -> 401, WWW-Authenticate: Bearer realm="demo"
--   TOKEN=$(curl -s 'localhost:8085/demo/token?sub=alice')
--   curl -i localhost:8085/api/me -H "Authorization: Bearer $TOKEN" -> 200 {"name":"alice",...}
--   curl -i localhost:8085/api/me -H "Authorization: Bearer ${TOKEN}x"   -> 401 error="invalid_token", bad signature
--   TOKEN=$(curl -s 'localhost:8085/demo/token?sub=bob&ttl=-5')
--   curl -i localhost:8085/api/me -H "Authorization: Bearer $TOKEN" -> 401 token expired
--
-- With an RSA or EC key pair instead of a shared secret:
--   openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out private.pem
--   openssl pkey -in private.pem -pubout -out public.pem
-- and gw.mw.jwt { key = "public.pem" } (the path is relative to this file's
-- folder) accepts ES256 tokens signed with private.pem, and nothing else.
local gw = require "gateway"

gw.config { workers = 1, listen = { "127.0.0.1:8085" } }

local SECRET = "demo-secret-change-me-0123456789abcdef" -- HS256 wants 32 bytes or more
local ISSUER = "http://localhost:8085/demo"

gw.use(gw.mw.request_id())
gw.use("/api", gw.mw.jwt { secret = SECRET, iss = ISSUER, aud = "demo-api", leeway = 5,
                           require_exp = true, realm = "demo" })

gw.get("/public", function() return { json = { ok = true } } end)

-- Behind the middleware: who is calling, from the verified claims.
gw.get("/api/me", function(req)
  local c = req.consumer
  return { json = { name = c.name, scope = c.claims.scope, expires = c.claims.exp } }
end)

-- Demo only: mints an HS256 token (RFC 7519) for ?sub=, valid ?ttl= seconds.
local b64url, json = gw.base64.encode_url, gw.json
gw.get("/demo/token", function(req)
  local now = math.floor(gw.now())
  local header = b64url(json.encode { alg = "HS256", typ = "JWT" })
  local payload = b64url(json.encode {
    sub = type(req.query.sub) == "string" and req.query.sub or "alice", iss = ISSUER, aud = "demo-api", scope = "read",
    iat = now, exp = now + (tonumber(req.query.ttl) or 300),
    jti = gw.crypto.hex(gw.crypto.random(8)),
  })
  local signing_input = header .. "." .. payload
  return signing_input .. "." .. b64url(gw.crypto.hmac("sha256", SECRET, signing_input))
end)
