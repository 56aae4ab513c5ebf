-- Unit tests for lua/gateway/router.lua
-- Run: cd /work/main && luajit spec/lua/test_router.lua
package.path = "lua/?.lua;" .. package.path
-- Taken before the module loads: no globals may be created by loading it.
local before = {}
for k in pairs(_G) do before[k] = true end
local router = require "gateway.router"

local passed, failed = 0, 0

local function show(v)
    if type(v) == "string" then return string.format("%q", v) end
    return tostring(v)
end

-- check(cond, label): counts one check, prints a line when it fails.
local function check(cond, label)
    if cond then
        passed = passed + 1
    else
        failed = failed + 1
        print("FAIL: " .. label)
    end
end

local function eq(got, want, label)
    check(got == want, label .. ": got " .. show(got) .. ", want " .. show(want))
end

-- Compares a params table with an expected table (same keys and values).
local function same_params(got, want, label)
    if type(got) ~= "table" then
        check(false, label .. ": params is not a table (" .. show(got) .. ")")
        return
    end
    local ok = true
    for k, v in pairs(want) do if got[k] ~= v then ok = false end end
    for k in pairs(got) do if want[k] == nil then ok = false end end
    local parts = {}
    for k, v in pairs(got) do parts[#parts + 1] = k .. "=" .. show(v) end
    check(ok, label .. ": params {" .. table.concat(parts, ",") .. "}")
end

-- expect(r, method, host, path, data, params, pattern)
local function expect(r, method, host, path, data, params, pattern)
    local label = method .. " " .. tostring(host) .. " " .. path
    local d, p, pat = r:match(method, host, path)
    eq(d, data, label .. " data")
    if params then same_params(p, params, label) end
    if pattern then eq(pat, pattern, label .. " pattern") end
    -- The lazy path req.params takes: find, and params_of later, after
    -- another match has reused the router's scratch buffers.
    local rt = r:find(method, host, path)
    eq(rt and rt.data, data, label .. " find data")
    if rt and pattern then eq(rt.pattern, pattern, label .. " find pattern") end
    if rt and params then
        r:match("GET", nil, "/other/scratch/segments/than/this/one/x/y/z")
        same_params(router.params_of(rt, path), params, label .. " params_of")
    end
end

local function expect404(r, method, host, path)
    local d, code, allow = r:match(method, host, path)
    local label = method .. " " .. tostring(host) .. " " .. path
    eq(d, nil, label .. " data (404)")
    eq(code, 404, label .. " code")
    eq(allow, nil, label .. " no allow on 404")
end

local function expect405(r, method, host, path, allow)
    local d, code, a = r:match(method, host, path)
    local label = method .. " " .. tostring(host) .. " " .. path
    eq(d, nil, label .. " data (405)")
    eq(code, 405, label .. " code")
    eq(a, allow, label .. " allow")
end

local function raises(fn, label, needle)
    local ok, err = pcall(fn)
    check(not ok, label .. ": expected an error")
    if not ok and needle then
        check(type(err) == "string" and err:find(needle, 1, true) ~= nil,
              label .. ": error message " .. show(err) .. " lacks " .. show(needle))
    end
    if not ok then
        -- error(msg, 2) must blame the caller (this file), not router.lua
        check(type(err) == "string" and err:find("test_router.lua", 1, true) ~= nil,
              label .. ": error not attributed to caller: " .. show(err))
    end
end

-- No globals may be created by loading the module (`before` is from the top).
for k in pairs(_G) do
    check(before[k], "module created global " .. tostring(k))
end
check(type(router.new) == "function", "router.new exists")
check(type(router.EMPTY) == "table", "router.EMPTY exists")

---------------------------------------------------------------------------
-- static routes, root, trailing slash, empty segments
---------------------------------------------------------------------------
do
    local r = router.new()
    r:add("GET", "/", nil, "root")
    r:add("GET", "/users", nil, "users")
    r:add("GET", "/users/", nil, "users-slash")
    r:add("GET", "/a//b", nil, "double")
    expect(r, "GET", nil, "/", "root", {}, "/")
    expect(r, "GET", nil, "/users", "users", {}, "/users")
    expect(r, "GET", nil, "/users/", "users-slash", {}, "/users/")
    expect(r, "GET", nil, "/a//b", "double", {}, "/a//b")
    expect404(r, "GET", nil, "/a/b")
    expect404(r, "GET", nil, "/users/x")
    expect404(r, "GET", nil, "")
    expect404(r, "GET", nil, "users")
    expect404(r, "GET", nil, "//")
    local _, p = r:match("GET", nil, "/users")
    check(p == router.EMPTY, "param-less match returns router.EMPTY")
    check(not pcall(function() router.EMPTY.x = 1 end), "router.EMPTY is read-only")
    check(next(router.EMPTY) == nil, "router.EMPTY is still empty")
end

---------------------------------------------------------------------------
-- params, priority, backtracking
---------------------------------------------------------------------------
do
    local r = router.new()
    r:add("GET", "/users/:id", nil, "user")
    r:add("GET", "/users/me", nil, "me")
    r:add("GET", "/users/:id/posts/:post", nil, "post")
    r:add("GET", "/users/*rest", nil, "users-catch")
    expect(r, "GET", nil, "/users/42", "user", { id = "42" }, "/users/:id")
    expect(r, "GET", nil, "/users/me", "me", {}, "/users/me")
    expect(r, "GET", nil, "/users/7/posts/x%20y", "post",
           { id = "7", post = "x%20y" }, "/users/:id/posts/:post")
    -- param must be non-empty: "/users/" falls to the catch-all with ""
    expect(r, "GET", nil, "/users/", "users-catch", { rest = "" }, "/users/*rest")
    -- too deep for the param routes -> catch-all
    expect(r, "GET", nil, "/users/7/other", "users-catch", { rest = "7/other" })
    expect(r, "GET", nil, "/users/7/posts/", "users-catch", { rest = "7/posts/" })
    expect404(r, "GET", nil, "/users")
    -- params are not url-decoded
    expect(r, "GET", nil, "/users/a%2Fb", "user", { id = "a%2Fb" })
    -- a param matches an unusual but non-empty segment
    expect(r, "GET", nil, "/users/:id", "user", { id = ":id" })
end

do
    local r = router.new()
    r:add("GET", "/a/b/c", nil, "abc")
    r:add("GET", "/a/:x/d", nil, "axd")
    r:add("GET", "/a/*rest", nil, "arest")
    expect(r, "GET", nil, "/a/b/c", "abc", {})
    expect(r, "GET", nil, "/a/b/d", "axd", { x = "b" }, "/a/:x/d")
    expect(r, "GET", nil, "/a/z/d", "axd", { x = "z" })
    expect(r, "GET", nil, "/a/b/e", "arest", { rest = "b/e" }, "/a/*rest")
    expect(r, "GET", nil, "/a/b", "arest", { rest = "b" })
    expect(r, "GET", nil, "/a/", "arest", { rest = "" })
    expect(r, "GET", nil, "/a/b/c/", "arest", { rest = "b/c/" })
    expect404(r, "GET", nil, "/a")
end

do -- deeper backtracking: static branch dead-ends two levels down
    local r = router.new()
    r:add("GET", "/x/y/z/1", nil, "static")
    r:add("GET", "/x/:p/z/2", nil, "param")
    r:add("GET", "/:q/y/z/3", nil, "rootparam")
    expect(r, "GET", nil, "/x/y/z/1", "static")
    expect(r, "GET", nil, "/x/y/z/2", "param", { p = "y" })
    expect(r, "GET", nil, "/x/y/z/3", "rootparam", { q = "x" })
    expect404(r, "GET", nil, "/x/y/z/4")
end

do -- backtracking also applies when the better leaf lacks the method
    local r = router.new()
    r:add("GET", "/a/b", nil, "static-get")
    r:add("POST", "/a/:x", nil, "param-post")
    expect(r, "POST", nil, "/a/b", "param-post", { x = "b" })
    expect(r, "GET", nil, "/a/b", "static-get", {})
    expect405(r, "PUT", nil, "/a/b", "GET, HEAD, POST")
    expect405(r, "GET", nil, "/a/c", "POST")
end

---------------------------------------------------------------------------
-- catch-all
---------------------------------------------------------------------------
do
    local r = router.new()
    r:add("GET", "/static/*path", nil, "static")
    r:add("GET", "/files/*", nil, "files")
    r:add("GET", "/*all", nil, "everything")
    expect(r, "GET", nil, "/static/css/site.css", "static",
           { path = "css/site.css" }, "/static/*path")
    expect(r, "GET", nil, "/static/", "static", { path = "" })
    expect(r, "GET", nil, "/static//x", "static", { path = "/x" })
    expect(r, "GET", nil, "/files/a/b/", "files", { ["*"] = "a/b/" }, "/files/*")
    expect(r, "GET", nil, "/files/", "files", { ["*"] = "" })
    -- "/static" has no trailing slash: only the root catch-all applies
    expect(r, "GET", nil, "/static", "everything", { all = "static" })
    expect(r, "GET", nil, "/", "everything", { all = "" })
    expect(r, "GET", nil, "/x/y/z", "everything", { all = "x/y/z" })
    -- a very deep path is handled (split stops at the deepest route)
    local deep = "/static" .. string.rep("/seg", 1000)
    expect(r, "GET", nil, deep, "static", { path = string.sub(deep, 9) })
end

---------------------------------------------------------------------------
-- methods: 405/Allow, HEAD via GET, "*", lists
---------------------------------------------------------------------------
do
    local r = router.new()
    r:add("GET", "/items", nil, "list")
    r:add({ "POST", "PUT" }, "/items", nil, "write")
    r:add("DELETE", "/items/:id", nil, "del")
    r:add("GET", "/items/:id", nil, "get")
    r:add("HEAD", "/items/:id", nil, "head")
    r:add("*", "/any", nil, "any")
    r:add("GET", "/any", nil, "any-get")
    expect(r, "GET", nil, "/items", "list")
    expect(r, "HEAD", nil, "/items", "list", {}, "/items")
    expect(r, "POST", nil, "/items", "write")
    expect(r, "PUT", nil, "/items", "write")
    expect405(r, "DELETE", nil, "/items", "GET, HEAD, POST, PUT")
    expect405(r, "get", nil, "/items", "GET, HEAD, POST, PUT") -- case-sensitive
    expect(r, "HEAD", nil, "/items/1", "head", { id = "1" })  -- explicit HEAD wins
    expect(r, "DELETE", nil, "/items/1", "del", { id = "1" })
    expect405(r, "PATCH", nil, "/items/1", "DELETE, GET, HEAD")
    expect(r, "GET", nil, "/any", "any-get")
    expect(r, "PATCH", nil, "/any", "any")
    expect(r, "BREW", nil, "/any", "any")
    expect(r, "HEAD", nil, "/any", "any-get")  -- HEAD -> GET before "*"
    expect404(r, "GET", nil, "/nothing")

    local r2 = router.new()
    r2:add("POST", "/p", nil, "p")
    expect405(r2, "GET", nil, "/p", "POST")
    expect405(r2, "HEAD", nil, "/p", "POST")
    r2:add("OPTIONS", "/p", nil, "o")
    expect405(r2, "GET", nil, "/p", "OPTIONS, POST")
end

---------------------------------------------------------------------------
-- hosts
---------------------------------------------------------------------------
do
    local r = router.new()
    r:add("GET", "/x", nil, "default")
    r:add("GET", "/x", "api.example.com", "exact")
    r:add("GET", "/x", "*.example.com", "wild")
    r:add("GET", "/x", "*.eu.example.com", "wild-eu")
    r:add("GET", "/only-host", "API.Example.com", "only-host")
    r:add("POST", "/y", "api.example.com", "y-post-host")
    r:add("GET", "/y", nil, "y-get-default")
    r:add("PUT", "/z", "*.example.com", "z-put-wild")

    expect(r, "GET", "api.example.com", "/x", "exact", {}, "/x")
    expect(r, "GET", "API.EXAMPLE.COM", "/x", "exact")
    expect(r, "GET", "api.example.com:8443", "/x", "exact")
    expect(r, "GET", "Api.Example.Com:80", "/x", "exact")
    expect(r, "GET", "www.example.com", "/x", "wild")
    expect(r, "GET", "a.b.example.com", "/x", "wild")
    expect(r, "GET", "WWW.Example.Com:8080", "/x", "wild")
    expect(r, "GET", "x.eu.example.com", "/x", "wild-eu")  -- longest suffix first
    expect(r, "GET", "a.b.eu.example.com", "/x", "wild-eu")
    expect(r, "GET", "eu.example.com", "/x", "wild")
    expect(r, "GET", "example.com", "/x", "default")    -- not the apex
    expect(r, "GET", ".example.com", "/x", "default")   -- needs a label
    expect(r, "GET", "other.org", "/x", "default")
    expect(r, "GET", nil, "/x", "default")
    expect(r, "GET", "api.example.com", "/only-host", "only-host")
    expect404(r, "GET", "other.example.com", "/only-host")
    expect404(r, "GET", nil, "/only-host")
    -- host tree first; falls through to the default tree by method
    expect(r, "POST", "api.example.com", "/y", "y-post-host")
    expect(r, "GET", "api.example.com", "/y", "y-get-default")
    expect405(r, "DELETE", "api.example.com", "/y", "GET, HEAD, POST")
    expect405(r, "DELETE", "other.org", "/y", "GET, HEAD")
    expect(r, "PUT", "a.example.com", "/z", "z-put-wild")
    expect405(r, "GET", "a.example.com", "/z", "PUT")
    expect404(r, "PUT", "example.com", "/z")
    -- IPv6 literal hosts
    local r6 = router.new()
    r6:add("GET", "/v6", "[::1]", "v6")
    expect(r6, "GET", "[::1]:8080", "/v6", "v6")
    expect(r6, "GET", "[::1]", "/v6", "v6")
end

---------------------------------------------------------------------------
-- errors
---------------------------------------------------------------------------
do
    local r = router.new()
    r:add("GET", "/a/:id", nil, 1)
    r:add("GET", "/s/*rest", nil, 1)
    r:add({ "GET", "POST" }, "/dup", "h.example.com", 1)
    raises(function() r:add("GET", "a/b", nil, 1) end, "no leading slash", "start with '/'")
    raises(function() r:add("GET", "", nil, 1) end, "empty pattern", "start with '/'")
    raises(function() r:add("GET", 42, nil, 1) end, "non-string pattern", "pattern")
    raises(function() r:add("GET", "/b/:", nil, 1) end, "empty param name", "empty parameter name")
    raises(function() r:add("GET", "/q?x=1", nil, 1) end, "a query in a pattern", "must not contain")
    raises(function() r:add("GET", "/a#frag", nil, 1) end, "a fragment in a pattern", "must not contain")
    raises(function() r:add("GET", "/b/*x/c", nil, 1) end, "catch-all not last", "last segment")
    raises(function() r:add("GET", "/b/*/c", nil, 1) end, "anonymous catch-all not last", "last segment")
    raises(function() r:add("GET", "/a/:name", nil, 1) end, "conflicting param names", "conflicting")
    raises(function() r:add("POST", "/a/:name/x", nil, 1) end, "conflicting param names deeper", "conflicting")
    raises(function() r:add("GET", "/s/*other", nil, 1) end, "conflicting catch-all names", "conflicting")
    raises(function() r:add("GET", "/c/:id/:id", nil, 1) end, "duplicate name in pattern", "duplicate parameter")
    raises(function() r:add("GET", "/a/:id", nil, 2) end, "duplicate route", "duplicate route")
    raises(function() r:add({ "PUT", "POST" }, "/dup", "H.Example.com", 2) end, "duplicate in list + host case", "duplicate route")
    raises(function() r:add({}, "/m", nil, 1) end, "empty method list", "methods")
    raises(function() r:add({ "GET", 5 }, "/m", nil, 1) end, "non-string method", "methods")
    raises(function() r:add({ "GET", "GET" }, "/m", nil, 1) end, "method twice", "twice")
    raises(function() r:add("GET", "/m", "", 1) end, "empty host", "host")
    raises(function() r:add("GET", "/m", "a.*.com", 1) end, "bad wildcard", "wildcard")
    raises(function() r:add("GET", "/m", "*example.com", 1) end, "bad wildcard 2", "wildcard")
    raises(function() r:add("GET", "/m", "api.example.com:80", 1) end, "host with port", "port")

    -- a failed add leaves the router unchanged
    expect405(r, "PUT", "h.example.com", "/dup", "GET, HEAD, POST")
    expect404(r, "GET", nil, "/a/x/x")
    expect(r, "GET", nil, "/a/7", 1, { id = "7" }, "/a/:id")
    -- same pattern on another method / host, or same name is fine
    r:add("POST", "/a/:id", nil, 3)
    r:add("GET", "/a/:id", "other.example.com", 4)
    r:add("GET", "/a/:id/more", nil, 5)
    expect(r, "POST", nil, "/a/7", 3)
    expect(r, "GET", "other.example.com", "/a/7", 4)
    expect(r, "GET", nil, "/a/7/more", 5, { id = "7" })
    -- different param names at the same position in different host trees are fine
    r:add("GET", "/a/:name/x", "third.example.com", 6)
    expect(r, "GET", "third.example.com", "/a/q/x", 6, { name = "q" })
    -- add returns the router for chaining
    check(r:add("GET", "/chain", nil, 7) == r, "add returns the router")
end

---------------------------------------------------------------------------
-- data values: false, tables
---------------------------------------------------------------------------
do
    local r = router.new()
    local t = {}
    r:add("GET", "/t", nil, t)
    r:add("GET", "/f", nil, false)
    expect(r, "GET", nil, "/t", t)
    local d, p = r:match("GET", nil, "/f")
    check(d == false and type(p) == "table", "false data is returned as is")
end

---------------------------------------------------------------------------
-- scale: 10,000 routes
---------------------------------------------------------------------------
do
    local r = router.new()
    for i = 1, 10000 do
        r:add("GET", "/r" .. i .. "/items/:id", nil, i)
    end
    r:add("POST", "/r5000/items/:id", nil, "post5000")
    for _, i in ipairs({ 1, 2, 999, 5000, 9999, 10000 }) do
        expect(r, "GET", nil, "/r" .. i .. "/items/abc" .. i, i,
               { id = "abc" .. i }, "/r" .. i .. "/items/:id")
    end
    expect(r, "POST", nil, "/r5000/items/1", "post5000", { id = "1" })
    expect405(r, "POST", nil, "/r5001/items/1", "GET, HEAD")
    expect404(r, "GET", nil, "/r10001/items/1")
    expect404(r, "GET", nil, "/r1/items/")
    expect404(r, "GET", nil, "/r1/items")
end

print(passed .. " passed, " .. failed .. " failed")
os.exit(failed == 0 and 0 or 1)
