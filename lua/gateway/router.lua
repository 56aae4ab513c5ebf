--- gateway.router -- HTTP request router (method + host + path -> route data).
--
-- This module maps a request (method, Host header, path) to the data that was
-- registered for the best matching route, together with the captured path
-- parameters. It is pure Lua (LuaJIT 2.1 / Lua 5.1 semantics), uses no FFI and
-- defines no globals.
--
-- Structure: one segment tree ("radix tree" keyed per path segment) per host
-- key: exact hosts live in a hash keyed by lowercase name, wildcard hosts
-- ("*.example.com") in a hash keyed by their suffix (".example.com"), and
-- hostless routes in a default tree. Every tree node has
--   static  : hash  segment string -> child node     (may be nil)
--   param   : child node for ":name" segments         (may be nil)
--   pname   : the parameter name of that child
--   catch   : leaf node for a "*name" catch-all        (may be nil)
--   cname   : the catch-all name
--   handlers: hash  method -> route record, "*" for any method (may be nil)
--
-- Invariants:
--   * A node at depth d is only ever visited with segment index d + 1, so one
--     match visits every node at most once; with only static routes the cost
--     is O(length of path) and never depends on the number of routes.
--   * At a given position of a given tree there is at most one parameter name
--     and one catch-all name (conflicts are rejected by add()), so the names a
--     route record stores are exactly those of the tree position it sits at.
--   * add() validates everything before it mutates anything: a failed add()
--     leaves the router unchanged.
--   * match(), find() and params_of() never call user code and never yield,
--     so the module-level scratch buffers used to split the path (SEG/START,
--     filled by params_of and split) cannot be observed in an inconsistent
--     state, even when routers are used from coroutines.
--   * Values are never url-decoded and paths are never normalised: "/a" and
--     "/a/" are different paths, "//" contains an empty segment.

local type, error, pairs, ipairs = type, error, pairs, ipairs
local setmetatable = setmetatable
local find, sub, byte, lower = string.find, string.sub, string.byte, string.lower
local sort, concat = table.sort, table.concat

local SLASH, COLON, STAR, LBRACKET = 47, 58, 42, 91

local _M = { _VERSION = "1.0" }

--- Shared, read-only empty params table returned by match() for routes that
-- declare no parameters (saves one allocation per request). Do not modify it:
-- assignments raise an error (rawset would bypass that; do not use rawset).
local EMPTY = setmetatable({}, {
    __newindex = function() error("router.EMPTY is read-only", 2) end,
    __metatable = false,
})
_M.EMPTY = EMPTY

-- Scratch buffers, filled by params_of and split: SEG[i] is the i-th path segment,
-- START[i] the byte offset where it starts in the path (used by catch-alls).
-- Entries beyond the current segment count are stale and never read.
local SEG, START = {}, {}

local function new_node()
    return { static = nil, param = nil, pname = nil, catch = nil,
             cname = nil, handlers = nil }
end

---------------------------------------------------------------------------
-- Pattern parsing (add time, not performance critical)
---------------------------------------------------------------------------

-- Parses a pattern into a list of { kind = "static"|"param"|"catch",
-- value = segment or name }. Returns list or nil, errmsg.
local function parse_pattern(pattern)
    if type(pattern) ~= "string" then
        return nil, "pattern must be a string"
    end
    if byte(pattern, 1) ~= SLASH then
        return nil, "pattern must start with '/': " .. pattern
    end
    -- Routes match the path alone: a pattern with a query or a fragment
    -- could never match anything.
    if find(pattern, "[?#]") then
        return nil, "pattern must not contain '?' or '#' (routes match the path, not the query): " .. pattern
    end
    local segs, seen, pos = {}, {}, 2
    while true do
        local j = find(pattern, "/", pos, true)
        local s = j and sub(pattern, pos, j - 1) or sub(pattern, pos)
        local c = byte(s, 1)
        local seg
        if c == COLON then
            local name = sub(s, 2)
            if name == "" then
                return nil, "empty parameter name in pattern: " .. pattern
            end
            seg = { kind = "param", value = name }
        elseif c == STAR then
            local name = sub(s, 2)
            if name == "" then name = "*" end
            if j then
                return nil, "catch-all must be the last segment: " .. pattern
            end
            seg = { kind = "catch", value = name }
        else
            seg = { kind = "static", value = s }
        end
        if seg.kind ~= "static" then
            if seen[seg.value] then
                return nil, "duplicate parameter name '" .. seg.value
                    .. "' in pattern: " .. pattern
            end
            seen[seg.value] = true
        end
        segs[#segs + 1] = seg
        if not j then break end
        pos = j + 1
    end
    return segs
end

-- Normalises a route host. Returns kind ("exact"|"wild"), key; or nil, err.
local function parse_host(host)
    if type(host) ~= "string" or host == "" then
        return nil, "host must be nil or a non-empty string"
    end
    host = lower(host)
    if byte(host, 1) == STAR then
        local suffix = sub(host, 2)
        if byte(suffix, 1) ~= 46 or #suffix < 2 then  -- 46 = '.'
            return nil, "wildcard host must look like '*.example.com': " .. host
        end
        if find(suffix, "*", 1, true) then
            return nil, "only a leading '*.' wildcard is allowed: " .. host
        end
        return "wild", suffix
    end
    if find(host, "*", 1, true) then
        return nil, "only a leading '*.' wildcard is allowed: " .. host
    end
    if byte(host, 1) ~= LBRACKET and find(host, ":", 1, true) then
        return nil, "route host must not contain a port: " .. host
    end
    return "exact", host
end

-- Normalises the methods argument into a list. Returns list or nil, err.
local function parse_methods(methods)
    if type(methods) == "string" then
        if methods == "" then return nil, "method must be a non-empty string" end
        return { methods }
    end
    if type(methods) ~= "table" or #methods == 0 then
        return nil, "methods must be a string or a non-empty list of strings"
    end
    local list, seen = {}, {}
    for i = 1, #methods do
        local m = methods[i]
        if type(m) ~= "string" or m == "" then
            return nil, "methods must be a string or a non-empty list of strings"
        end
        if seen[m] then
            return nil, "method listed twice: " .. m
        end
        seen[m] = true
        list[i] = m
    end
    return list
end

---------------------------------------------------------------------------
-- Matching (hot path)
---------------------------------------------------------------------------

-- Splits path (known to start with '/') into SEG/START. Stops after `limit`
-- segments (the deepest route); if more follow, one placeholder segment is
-- recorded so the count exceeds every route depth. Nodes at depth `limit`
-- have no children, so the placeholder's value is never looked up.
-- Returns the segment count.
local function split(path, limit)
    local n, pos = 0, 2
    while true do
        n = n + 1
        START[n] = pos
        local j = find(path, "/", pos, true)
        if not j then
            SEG[n] = sub(path, pos)
            return n
        end
        SEG[n] = sub(path, pos, j - 1)
        if n >= limit then
            n = n + 1
            START[n] = j + 1
            SEG[n] = ""
            return n
        end
        pos = j + 1
    end
end

-- Depth-first search with backtracking: static child, then parameter child,
-- then catch-all. Segments are found in the path as the search descends
-- (no split loop: the request path stays loop-free for the JIT's sake):
-- `pos` is where the next segment starts, `plen` the path length;
-- pos == plen + 2 means every segment is consumed. Returns the route record
-- for the first leaf (in priority order) that accepts `method`; otherwise
-- nil, hit where hit is true when some leaf matched the path under other
-- methods.
local function search(node, path, pos, plen, method)
    if pos > plen + 1 then
        local h = node.handlers
        if h then
            local rt = h[method]
            if rt then return rt end
            if method == "HEAD" then
                rt = h.GET
                if rt then return rt end
            end
            rt = h["*"]
            if rt then return rt end
            return nil, true
        end
        return nil, false
    end
    local st, child, catch = node.static, node.param, node.catch
    if not (st or child or catch) then return nil, false end
    local j = find(path, "/", pos, true)
    local nextpos = j and j + 1 or plen + 2
    local hit = false
    -- The segment is made a string only for a static lookup: a parameter's
    -- value is cut when someone asks for it (params_of).
    if st then
        local c = st[sub(path, pos, nextpos - 2)]
        if c then
            local rt, h = search(c, path, nextpos, plen, method)
            if rt then return rt end
            if h then hit = true end
        end
    end
    if child and nextpos - 2 >= pos then -- a parameter takes a non-empty segment
        local rt, h = search(child, path, nextpos, plen, method)
        if rt then return rt end
        if h then hit = true end
    end
    if catch then
        -- A catch-all leaf consumes every remaining segment (possibly "").
        local hd = catch.handlers
        local rt = hd[method]
        if not rt and method == "HEAD" then rt = hd.GET end
        if not rt then rt = hd["*"] end
        if rt then return rt end
        hit = true
    end
    return nil, hit
end

-- Adds to `set` the methods of every leaf matching the path (405 path only).
local function collect(node, i, n, set)
    if i > n then
        local h = node.handlers
        if h then
            for m in pairs(h) do set[m] = true end
        end
        return
    end
    local seg = SEG[i]
    local st = node.static
    if st and st[seg] then collect(st[seg], i + 1, n, set) end
    if node.param and seg ~= "" then collect(node.param, i + 1, n, set) end
    if node.catch then
        for m in pairs(node.catch.handlers) do set[m] = true end
    end
end

-- Builds the params table for a matched route from the scratch buffers.
local function build_params(rt, path)
    local names = rt.pnames
    local np = #names
    if np == 0 and not rt.cname then return EMPTY end
    local idx = rt.pidx
    -- One or two parameters (the common shapes) without a loop, which
    -- keeps the request path a single compiled trace; the constructors size
    -- the table for them at once.
    local params
    if np == 1 then
        params = { [names[1]] = SEG[idx[1]] }
    elseif np == 2 then
        params = { [names[1]] = SEG[idx[1]], [names[2]] = SEG[idx[2]] }
    else
        params = {}
        for k = 1, np do
            params[names[k]] = SEG[idx[k]]
        end
    end
    if rt.cname then
        params[rt.cname] = sub(path, START[rt.cidx])
    end
    return params
end

-- Request host -> lowercase name without ":port" (IPv6 "[..]:port" aware).
local function normalize_host(host)
    if byte(host, 1) == LBRACKET then
        local e = find(host, "]", 2, true)
        if e then host = sub(host, 1, e) end
    else
        local c = find(host, ":", 1, true)
        if c then host = sub(host, 1, c - 1) end
    end
    return lower(host)
end

-- Computes the Allow header value for a path that matched no route under the
-- requested method: union over the exact, wildcard and default trees.
local function allow_header(self, host, n)
    local set = {}
    if host then
        local t = self.hosts[host]
        if t then collect(t, 1, n, set) end
        if self.nwild > 0 then
            local p = find(host, ".", 2, true)
            while p do
                t = self.wild[sub(host, p)]
                if t then collect(t, 1, n, set) end
                p = find(host, ".", p + 1, true)
            end
        end
    end
    collect(self.default, 1, n, set)
    set["*"] = nil  -- cannot occur (a "*" leaf always matches); defensive
    if set.GET then set.HEAD = true end
    local list = {}
    for m in pairs(set) do list[#list + 1] = m end
    sort(list)
    return concat(list, ", ")
end

---------------------------------------------------------------------------
-- Public API
---------------------------------------------------------------------------

local Router = {}
Router.__index = Router

--- Creates an empty router.
function _M.new()
    return setmetatable({
        default = new_node(),   -- hostless routes
        hosts = {},             -- lowercase exact host -> tree
        wild = {},              -- ".example.com" -> tree (for "*.example.com")
        nhosts = 0,             -- number of exact host trees
        nwild = 0,              -- number of wildcard host trees
        maxdepth = 0,           -- segment count of the deepest pattern
    }, Router)
end

--- Registers a route. See docs/router.md. Raises error(msg, 2) on a bad
-- argument, bad pattern, parameter-name conflict or duplicate route.
-- Returns the router (for chaining).
function Router:add(methods, pattern, host, data)
    local list, err = parse_methods(methods)
    if not list then error(err, 2) end
    local segs
    segs, err = parse_pattern(pattern)
    if not segs then error(err, 2) end

    local kind, key, tree
    if host ~= nil then
        kind, key = parse_host(host)
        if not kind then error(key, 2) end
        tree = (kind == "exact" and self.hosts or self.wild)[key]
    else
        tree = self.default
    end

    -- Phase 1: read-only walk, checking name conflicts and duplicates.
    local node = tree
    for k = 1, #segs do
        if not node then break end
        local s = segs[k]
        if s.kind == "static" then
            node = node.static and node.static[s.value]
        elseif s.kind == "param" then
            if node.param and node.pname ~= s.value then
                error("conflicting parameter names ':" .. node.pname
                      .. "' and ':" .. s.value .. "' at the same position in "
                      .. pattern, 2)
            end
            node = node.param
        else
            if node.catch and node.cname ~= s.value then
                error("conflicting catch-all names '*" .. node.cname
                      .. "' and '*" .. s.value .. "' at the same position in "
                      .. pattern, 2)
            end
            node = node.catch
        end
    end
    if node and node.handlers then
        for _, m in ipairs(list) do
            if node.handlers[m] then
                error("duplicate route: " .. m .. " " .. pattern
                      .. (host and (" host " .. host) or ""), 2)
            end
        end
    end

    -- Phase 2: nothing can fail any more; create nodes and register.
    if not tree then
        tree = new_node()
        if kind == "exact" then
            self.hosts[key] = tree
            self.nhosts = self.nhosts + 1
        else
            self.wild[key] = tree
            self.nwild = self.nwild + 1
        end
    end
    local rt = { data = data, pattern = pattern, pnames = {}, pidx = {},
                 cname = nil, cidx = nil, depth = 0 }
    node = tree
    for k = 1, #segs do
        local s = segs[k]
        local child
        if s.kind == "static" then
            local st = node.static
            if not st then st = {}; node.static = st end
            child = st[s.value]
            if not child then child = new_node(); st[s.value] = child end
        elseif s.kind == "param" then
            child = node.param
            if not child then
                child = new_node()
                node.param, node.pname = child, s.value
            end
            rt.pnames[#rt.pnames + 1] = s.value
            rt.pidx[#rt.pidx + 1] = k
            rt.depth = k
        else
            child = node.catch
            if not child then
                child = new_node()
                child.handlers = {}   -- catch leaves always have a handler map
                node.catch, node.cname = child, s.value
            end
            rt.cname, rt.cidx, rt.depth = s.value, k, k
        end
        node = child
    end
    local h = node.handlers
    if not h then h = {}; node.handlers = h end
    for _, m in ipairs(list) do h[m] = rt end
    if #segs > self.maxdepth then self.maxdepth = #segs end
    return self
end

--- Finds the route record for a request: the record (fields data, pattern)
-- on success; nil, 404 when no route matches the path; nil, 405, allow when
-- the path matches under other methods only. The params are not built:
-- _M.params_of makes them when someone asks (req.params).
function Router:find(method, host, path)
    if type(path) ~= "string" or byte(path, 1) ~= SLASH then
        return nil, 404
    end
    local plen = #path
    local hit = false
    local rt, h
    if host and (self.nhosts > 0 or self.nwild > 0) then
        host = normalize_host(host)
        local t = self.hosts[host]
        if t then
            rt, h = search(t, path, 2, plen, method)
            if rt then return rt end
            if h then hit = true end
        end
        if self.nwild > 0 then
            -- Try the suffixes after each '.', leftmost (longest) first; the
            -- search starts at byte 2 so at least one label precedes it.
            local p = find(host, ".", 2, true)
            while p do
                t = self.wild[sub(host, p)]
                if t then
                    rt, h = search(t, path, 2, plen, method)
                    if rt then return rt end
                    if h then hit = true end
                end
                p = find(host, ".", p + 1, true)
            end
        end
    else
        host = nil
    end
    rt, h = search(self.default, path, 2, plen, method)
    if rt then return rt end
    if h or hit then
        -- Rare: only now is the whole path split, for collect().
        return nil, 405, allow_header(self, host, split(path, self.maxdepth))
    end
    return nil, 404
end

--- Finds the route for a request.
-- Returns data, params, pattern on success; nil, 404 when no route matches
-- the path; nil, 405, allow when the path matches under other methods only.
function Router:match(method, host, path)
    local rt, status, allow = self:find(method, host, path)
    if not rt then return nil, status, allow end
    return rt.data, _M.params_of(rt, path), rt.pattern
end

--- The params of `rt`, a record Router:find returned for `path`: the
-- path is split again up to the route's depth, one segment per depth as
-- search took them (a parameter takes one whole segment, a catch-all the
-- rest from its segment's start), so they are the ones the match saw.
-- EMPTY for a route without any.
function _M.params_of(rt, path)
    local depth = rt.depth
    if depth == 0 then return EMPTY end
    split(path, depth)
    return build_params(rt, path)
end

return _M
