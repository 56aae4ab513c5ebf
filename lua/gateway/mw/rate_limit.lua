-- gw.mw.rate_limit{ rate =, per = 1, burst = rate, key = "ip", dict =, policy = "local" }:
-- limits how often one client (an IP, a consumer, or any key a function
-- derives from the request) may call.
--
-- The limit is the generic cell rate algorithm (GCRA): `rate` requests per
-- `per` seconds at a steady pace, and up to `burst` of them back to back
-- after a quiet spell. With the local policy each decision is one atomic
-- operation on a shared dict (dict:gcra, under the dict's lock, on the
-- machine's monotonic clock), so the limit is exact across all workers.
--
-- Every answer carries RateLimit-Limit (= rate), RateLimit-Remaining and
-- RateLimit-Reset (whole seconds until a full burst is available again). A
-- refused request is answered 429 by the gateway, without running what
-- follows, with Retry-After (whole seconds, at least 1), RateLimit-Remaining: 0
-- and the JSON error {"error":"rate limit exceeded","request_id":...}.
--
-- Parameters:
--   rate    number > 0, required: requests per `per` seconds
--   per     number > 0, default 1 (seconds)
--   burst   whole number >= 1, default rate (rounded down, at least 1)
--   key     "ip" (default), "consumer" (req.consumer.name, set by an auth
--           middleware that runs before this one; the IP when there is no
--           consumer), or function(req) -> string or number; a nil or false
--           result leaves the request unlimited (no headers)
--   dict    name of a dict declared with gw.shared_dict before this call;
--           without it the middleware declares its own, DEFAULT_DICT (1 MB,
--           shared by every rate_limit that has no `dict`)
--   policy  "local" (default) or "redis": the same GCRA in a Redis server
--           (one EVALSHA per request), so several gateways share one limit
--   redis   with policy = "redis": "redis://host:port" (a gw.redis URL)
--   on_error with policy = "redis": "allow" (default: a request goes through
--           when Redis cannot be asked) or "deny" (503)
--   redis_timeout  seconds to wait for Redis (default 0.25), so a dead
--           Redis never holds a request longer
-- Returns: a middleware function(req, next).
-- Errors: raises at configuration time (error(msg, 2): the caller's
--   file:line) on an unknown or bad option or an undeclared dict. At
--   request time, a failing dict operation (the key holds a value of another
--   kind, no memory) lets the request through and logs a warning: the local
--   limiter fails open; the redis one does what on_error says.
local util = require "gateway.mwutil"
local shared = require "gateway.shared"

local type, error, tostring, floor, ceil = type, error, tostring, math.floor, math.ceil
local format, find = string.format, string.find

local KNOWN = { rate = true, per = true, burst = true, key = true, dict = true, policy = true,
                redis = true, on_error = true, redis_timeout = true }

local DEFAULT_DICT = "gw.rate_limit"
local DEFAULT_DICT_SIZE = 1024 * 1024

local gw_mod, runtime -- gateway, gateway.runtime: loaded on first use

local function gw_state()
  gw_mod = gw_mod or require "gateway"
  return gw_mod._state
end

-- Number of rate_limit instances made by this configuration: part of each
-- instance's key prefix, so two limiters sharing a dict count apart.
local instances = 0

local function number_text(n)
  if n % 1 == 0 then return format("%d", n) end
  return format("%.6g", n)
end

-- Whole seconds, rounded up, ignoring float noise just above a whole number.
local function whole_seconds(s)
  return ceil(s - 1e-6)
end

-- ---- the redis policy ----

-- ---- the redis policy ----

-- The same GCRA as dict:gcra, run inside Redis so that every gateway sharing
-- the server shares the limit: one atomic round trip per request (EVALSHA,
-- EVAL the first time a server sees it). The clock is Redis' own (TIME), so
-- the gateways' clocks need not agree. The TAT is stored in ms and expires
-- when it stops mattering.
-- ARGV: emission interval (ms), burst tolerance (ms).
-- Returns { allowed (0/1), remaining, reset_ms, retry_after_ms }.
local GCRA_SCRIPT = [[
local emission, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance + emission * 1e-9 then
  return { 0, 0, ahead, ahead - tolerance }
end
local new_tat = tat + emission
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
local remaining = math.floor((tolerance + emission - (new_tat - now)) / emission + 1e-9)
if remaining < 0 then remaining = 0 end
return { 1, remaining, math.ceil(new_tat - now), 0 }
]]

-- Returns function(key) -> allowed, remaining, reset, retry_after (seconds),
-- or nil, err when Redis cannot be asked.
local function redis_limiter(conf)
  if type(conf.redis) ~= "string" then
    return nil, "rate_limit: policy = \"redis\" needs redis = \"redis://host:port\""
  end
  if conf.on_error ~= nil and conf.on_error ~= "allow" and conf.on_error ~= "deny" then
    return nil, "rate_limit: on_error must be \"allow\" or \"deny\""
  end
  local t = conf.redis_timeout
  if t ~= nil and (type(t) ~= "number" or not (t > 0)) then
    return nil, "rate_limit: redis_timeout must be a number of seconds > 0"
  end
  gw_mod = gw_mod or require "gateway"
  local ok, client = pcall(gw_mod.redis, conf.redis, { timeout = t or 0.25 })
  if not ok then return nil, "rate_limit: " .. tostring(client):gsub("^.-:%d+: ", "") end
  local emission = conf.per * 1000 / conf.rate
  local args = { format("%.6f", emission), format("%.6f", emission * (conf.burst - 1)) }
  local sha -- learnt from the first EVAL's SCRIPT LOAD, per worker
  return function(key)
    if not sha then
      local got, err = client:call("SCRIPT", "LOAD", GCRA_SCRIPT)
      -- Only a SHA1 in hex is kept: anything else (a server that is not
      -- Redis, a proxy in the way) would be reused for every request.
      if type(got) ~= "string" or not find(got, "^%x+$") or #got ~= 40 then
        return nil, "redis: " .. (got == nil and tostring(err) or "SCRIPT LOAD did not return a SHA1")
      end
      sha = got
    end
    local r, err = client:evalsha(sha, GCRA_SCRIPT, { key }, args)
    if type(r) ~= "table" then return nil, "redis: " .. tostring(err) end
    -- The script returns four integers; another shape is a failure to
    -- ask, not a decision (on_error applies).
    local allowed, remaining, reset, retry = r[1], r[2], r[3], r[4]
    if type(allowed) ~= "number" or type(remaining) ~= "number" or type(reset) ~= "number"
       or type(retry) ~= "number" then
      return nil, "redis: the rate limit script returned an unexpected reply"
    end
    return allowed == 1, remaining, reset / 1000, retry / 1000
  end
end

-- ---- the local policy ----

-- Declares or checks the dict while the configuration loads; returns a
-- function(key) -> allowed, remaining, reset, retry_after | nil, err.
local function local_limiter(conf)
  local state = gw_state()
  local name = conf.dict
  if name ~= nil then
    if type(name) ~= "string" or not state.dict_sizes[name] then
      return nil, "rate_limit: dict '" .. tostring(name)
                  .. "' is not declared (gw.shared_dict(NAME, SIZE) must come before this)"
    end
  else
    name = DEFAULT_DICT
    if not state.dict_sizes[name] then
      -- The same path as gw.shared_dict: the master learns the dict (and
      -- sizes the shared memory zone) from this declaration before it forks.
      if not state.loading then
        return nil, "rate_limit: without `dict` it must be made while the configuration loads"
      end
      local ok, err = pcall(shared.declare, state, name, DEFAULT_DICT_SIZE, 1)
      if not ok then return nil, "rate_limit: " .. tostring(err) end
    end
  end
  local rate, per, burst = conf.rate, conf.per, conf.burst
  local dict -- opened on first use: only a worker has the shared memory
  return function(key)
    if not dict then dict = shared.open(state, name) end
    return dict:gcra(key, rate, per, burst)
  end
end

-- ---- configuration ----

local function configure(opts)
  local err
  opts, err = util.check_options(opts, KNOWN, "rate_limit")
  if not opts then return nil, err end
  local rate, per, burst = opts.rate, opts.per, opts.burst
  if type(rate) ~= "number" or not (rate > 0) or rate == math.huge then
    return nil, "rate_limit: rate must be a number > 0 (requests per `per` seconds)"
  end
  if per == nil then per = 1 end
  if type(per) ~= "number" or not (per > 0) or per == math.huge then
    return nil, "rate_limit: per must be a number of seconds > 0"
  end
  if burst == nil then burst = floor(rate) < 1 and 1 or floor(rate) end
  if type(burst) ~= "number" or burst < 1 or burst % 1 ~= 0 or burst == math.huge then
    return nil, "rate_limit: burst must be a whole number >= 1"
  end
  local key = opts.key
  if key == nil then key = "ip" end
  if key ~= "ip" and key ~= "consumer" and type(key) ~= "function" then
    return nil, "rate_limit: key must be \"ip\", \"consumer\" or a function(req)"
  end
  local policy = opts.policy
  if policy == nil then policy = "local" end
  local conf = { rate = rate, per = per, burst = burst, key = key, dict = opts.dict,
                 redis = opts.redis, on_error = opts.on_error, redis_timeout = opts.redis_timeout }
  local limiter
  if policy == "local" then
    if opts.redis ~= nil or opts.on_error ~= nil or opts.redis_timeout ~= nil then
      return nil, "rate_limit: redis and on_error apply only to policy = \"redis\""
    end
    limiter, err = local_limiter(conf)
  elseif policy == "redis" then
    limiter, err = redis_limiter(conf)
  else
    return nil, "rate_limit: policy must be \"local\" or \"redis\""
  end
  if not limiter then return nil, err end
  conf.limiter = limiter
  return conf
end

-- The counter key of a request, or nil when it is not limited.
local function key_of(key, req)
  if key == "ip" then return "ip:" .. (req.ip or "") end
  if key == "consumer" then
    local c = req.consumer
    local name = type(c) == "table" and c.name
    if type(name) == "string" and name ~= "" then return "c:" .. name end
    return "ip:" .. (req.ip or "")
  end
  local k = key(req)
  if k == nil or k == false then return nil end
  local t = type(k)
  if t == "number" then return "k:" .. tostring(k) end
  if t ~= "string" then error("rate_limit: the key function returned a " .. t .. ", not a string", 0) end
  return "k:" .. k
end

return function(opts)
  local conf, err = configure(opts)
  if not conf then error(err, 2) end
  instances = instances + 1
  local prefix = format("rl%d:%s/%s/%d:", instances, number_text(conf.rate), number_text(conf.per), conf.burst)
  local key, limiter = conf.key, conf.limiter
  local limit_text = number_text(conf.rate)
  local deny_on_error = conf.on_error == "deny"

  return function(req, next)
    local k = key_of(key, req)
    if k == nil then return next() end
    local allowed, remaining, reset, retry_after = limiter(prefix .. k)
    if allowed == nil then
      gw_mod = gw_mod or require "gateway"
      if deny_on_error then
        gw_mod.log.warn("rate_limit: " .. tostring(remaining) .. "; the request is refused (on_error = deny)")
        runtime = runtime or require "gateway.runtime"
        return runtime.error_response(req, 503, "rate limiter unavailable")
      end
      gw_mod.log.warn("rate_limit: " .. tostring(remaining) .. "; the request goes through unlimited")
      return next()
    end
    if not allowed then
      runtime = runtime or require "gateway.runtime"
      return runtime.error_response(req, 429, "rate limit exceeded", {
        ["Retry-After"] = format("%d", retry_after < 1 and 1 or whole_seconds(retry_after)),
        ["RateLimit-Limit"] = limit_text,
        ["RateLimit-Remaining"] = "0",
        ["RateLimit-Reset"] = format("%d", whole_seconds(reset)),
      })
    end
    local res = next()
    local set = res.set_header -- an upstream's answer: no need to read its headers
    if set then
      set(res, "RateLimit-Limit", limit_text)
      set(res, "RateLimit-Remaining", format("%d", remaining))
      set(res, "RateLimit-Reset", format("%d", whole_seconds(reset)))
      return res
    end
    local h = res.headers
    util.header_set(h, "RateLimit-Limit", limit_text)
    util.header_set(h, "RateLimit-Remaining", format("%d", remaining))
    util.header_set(h, "RateLimit-Reset", format("%d", whole_seconds(reset)))
    return res
  end
end
