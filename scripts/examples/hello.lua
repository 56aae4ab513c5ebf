-- hello.lua: the smallest useful gateway.
--   bin/gateway -c scripts/examples/hello.lua
--   curl localhost:8081/                 -> hello, world
--   curl localhost:8081/hello/ada        -> {"hello":"ada"}
--   curl -i localhost:8081/nope          -> 404 {"error":"no route","request_id":"..."}
local gw = require "gateway"

gw.config { workers = 1, listen = { "127.0.0.1:8081" } }

gw.get("/", function() return "hello, world\n" end)

gw.get("/hello/:name", function(req)
  return { json = { hello = req.params.name } }
end)
