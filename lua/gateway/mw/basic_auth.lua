-- gw.mw.basic_auth{ users = { [user] = password }, realm = "api" }: HTTP Basic
-- authentication (RFC 7617).
--
-- A password is given in clear or as a crypt(3) hash: a value of the form
-- "$id$..." ("$y$", "$2b$", "$6$", ...) is a hash, anything else a clear
-- password. Clear passwords are compared in constant time (the
-- HMACs of both, under a random per-process secret, through CRYPTO_memcmp).
-- Hashes are checked by libcrypt on libuv's thread pool, so a slow hash
-- never stalls the worker; a user and password that passed once are
-- remembered (as an HMAC, never in clear) so that a client sending the same
-- Authorization header on every request pays for the hash once.
--
-- A request without valid credentials gets 401, the gateway's JSON error
-- and `WWW-Authenticate: Basic realm="<realm>"`; any
-- malformed Authorization header is a 401 too. Success sets
-- req.consumer = { name = user }.
--
-- Parameters:
--   users  table, required, non-empty: user name (non-empty, no ":") ->
--          password (non-empty string: clear, or a crypt(3) hash that
--          libcrypt rates strong: $y$, $gy$, $7$, $2b$/$2a$/$2y$, $6$)
--   realm  string, default "api": printable ASCII without '"' or '\'
-- Returns: a middleware function(req, next).
-- Errors: raises at configuration time (the caller's file:line) on an
--   unknown option, a bad user or password, or a hash that is malformed or
--   uses a legacy method ($1$, $5$, DES): such a value is never silently
--   taken as a clear password.
local crypto = require "gateway.crypto"
local b64 = require "gateway.base64"
local util = require "gateway.mwutil"

local type, pairs, error, next = type, pairs, error, next
local find, sub, lower, match = string.find, string.sub, string.lower, string.match
local hmac, equal, crypt_verify = crypto.hmac, crypto.equal, crypto.crypt_verify

local KNOWN = { users = true, realm = true }
local CACHE_MAX = 1024 -- remembered successful hash checks, per middleware

local function configure(opts)
  local err
  opts, err = util.check_options(opts, KNOWN, "basic_auth")
  if not opts then return nil, err end
  local realm = opts.realm
  if realm == nil then realm = "api" end
  realm, err = util.check_realm(realm, "basic_auth")
  if not realm then return nil, err end
  local users = opts.users
  if type(users) ~= "table" or next(users) == nil then
    return nil, "basic_auth: users must be a non-empty table { [user] = password }"
  end
  local secret = crypto.random(32)
  local entries = {}
  for user, pw in pairs(users) do
    -- No control character (RFC 7617 2): so "user\0password" below is unambiguous.
    if type(user) ~= "string" or user == "" or find(user, "[:%c]") then
      return nil, "basic_auth: user names must be non-empty strings without ':' or control characters"
    end
    if type(pw) ~= "string" or pw == "" then
      return nil, "basic_auth: the password of user '" .. user .. "' must be a non-empty string"
    end
    if match(pw, "^%$[^$]*%$") then
      local ok, why = crypto.crypt_supported(pw)
      if not ok then return nil, "basic_auth: the password hash of user '" .. user .. "': " .. why end
      entries[user] = { hash = pw }
    else
      entries[user] = { mac = hmac("sha256", secret, pw) }
    end
  end
  return { realm = realm, secret = secret, entries = entries }
end

-- user, password from an Authorization header value, or nil.
local function parse(auth)
  if type(auth) ~= "string" or lower(sub(auth, 1, 6)) ~= "basic " then return nil end
  local token = match(auth, "^ *([%w+/=]+) *$", 7)
  if not token then return nil end
  local decoded = b64.decode(token)
  if not decoded then return nil end
  local colon = find(decoded, ":", 1, true)
  if not colon then return nil end
  return sub(decoded, 1, colon - 1), sub(decoded, colon + 1)
end

return function(opts)
  local conf, err = configure(opts)
  if not conf then error(err, 2) end
  local secret, entries = conf.secret, conf.entries
  local challenge = "Basic realm=" .. util.quote(conf.realm)
  -- HMAC(user \0 password) -> true, for hashed users: user names hold no
  -- NUL, and only a configured user's name gets here.
  local passed, npassed = {}, 0

  return function(req, next)
    local auth = req.headers["authorization"]
    if auth == nil then return util.unauthorized(req, "missing credentials", challenge) end
    local user, pw = parse(auth)
    if user == nil then return util.unauthorized(req, "malformed credentials", challenge) end
    local entry = entries[user]
    local ok = false
    if entry == nil then
      ok = false
    elseif entry.mac then
      ok = equal(hmac("sha256", secret, pw), entry.mac)
    else
      local memo = hmac("sha256", secret, user .. "\0" .. pw)
      if passed[memo] then
        ok = true
      elseif crypt_verify(pw, entry.hash) then
        ok = true
        if npassed >= CACHE_MAX then passed, npassed = {}, 0 end
        passed[memo] = true
        npassed = npassed + 1
      end
    end
    if not ok then return util.unauthorized(req, "invalid credentials", challenge) end
    req.consumer = { name = user }
    return next()
  end
end
