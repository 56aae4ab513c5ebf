-- cors.lua: an API for a browser app on another origin (gw.mw.cors,
-- docs/middleware.md), with a key on the API itself.
--   bin/gateway -c scripts/examples/cors.lua
--   curl -i -X OPTIONS localhost:8088/api/notes -H 'Origin: https://app.example.com' \
--        -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: content-type, x-api-key'
--                          -> 204 with Access-Control-Allow-Origin/-Methods/-Headers/-Max-Age (no key needed)
--   curl -i localhost:8088/api/notes -H 'Origin: https://app.example.com' -H 'x-api-key: k1'
--                          -> 200, Access-Control-Allow-Origin: https://app.example.com, Vary: Origin
--   curl -i localhost:8088/api/notes -H 'Origin: https://evil.example' -H 'x-api-key: k1'
--                          -> 200 for curl, but no Access-Control-* header: a browser keeps the answer from the page
local gw = require "gateway"

gw.config { workers = 1, listen = { "127.0.0.1:8088" } }

-- CORS first, so that preflights are answered before the key check.
gw.use(gw.mw.cors {
  origins = { "https://app.example.com", "http://localhost:3000" },
  methods = { "GET", "POST", "DELETE" },
  headers = { "content-type", "x-api-key" },
  max_age = 600,
  credentials = true,
})
gw.use("/api", gw.mw.key_auth { keys = { k1 = "app" } })

local notes = {}
gw.get("/api/notes", function(req) return { json = { notes = notes } } end)
gw.post("/api/notes", function(req)
  local doc, err = req:json()
  if not doc then return { status = 400, json = { error = err } } end
  notes[#notes + 1] = doc
  return { status = 201, json = doc }
end)
