-- gw.mw.jwt{ secret = S | key = "pub.pem" | jwks = "jwks.json", aud =, iss =,
--            leeway =, algorithms =, require_exp =, realm = }: JSON Web Token
-- (RFC 7519) bearer authentication.
--
-- The token comes in `Authorization: Bearer <token>` (RFC 6750) as a
-- compact JWS (RFC 7515). It is accepted only if its algorithm is one the
-- configured key can verify (and the `algorithms` list allows), its
-- signature verifies, and its claims pass: exp and nbf (with `leeway`
-- seconds of clock skew), iss and aud when configured. Then
-- req.consumer = { name = claims.sub, claims = claims }.
--
-- The algorithm a token names never chooses the kind of key: a shared
-- secret only verifies HS256/384/512, an RSA key only RS256, a P-256 key
-- only ES256. So `alg: none` is always refused, and so is the classic
-- confusion attack (an HS256 token whose HMAC key is the RSA public key's
-- PEM text): a configuration with a public key never computes an HMAC.
--
-- Refusals are 401 with the gateway's JSON error and a challenge per RFC
-- 6750 section 3: `Bearer realm="api"` when no bearer token was sent,
-- `Bearer realm="api", error="invalid_token", error_description="..."`
-- when one was sent and refused.
--
-- Parameters (exactly one of secret, key, jwks):
--   secret       string: the HMAC key for HS256/HS384/HS512 tokens
--   key          path of a PEM public key (RSA >= 2048 bits for RS256, or
--                EC P-256 for ES256); relative paths start at the
--                configuration's folder
--   jwks         path of a JWK Set file (RFC 7517 section 5); the key is
--                chosen by the token's `kid`
--   algorithms   optional list restricting the algorithms accepted
--   aud          string or list: the token's aud must name one of them
--   iss          string or list: the token's iss must be one of them
--   leeway       seconds of clock skew allowed on exp and nbf (default 0)
--   require_exp  refuse tokens without exp (default false)
--   realm        the challenge's realm (default "api")
-- Returns: a middleware function(req, next).
-- Errors: raises at configuration time (the caller's file:line) on an
--   unknown or invalid option, an unreadable or unusable key file, or an
--   algorithms list that the key cannot serve.
local crypto = require "gateway.crypto"
local b64 = require "gateway.base64"
local util = require "gateway.mwutil"
local cjson = require "cjson.safe"

local type, pairs, ipairs, error, tostring, next = type, pairs, ipairs, error, tostring, next
local lower, sub, match, format, concat = string.lower, string.sub, string.match, string.format, table.concat
local byte, find = string.byte, string.find
local decode_url, decode_json = b64.decode_url, cjson.decode
local hmac, equal = crypto.hmac, crypto.equal

local KNOWN = { secret = true, key = true, jwks = true, algorithms = true, aud = true, iss = true,
                leeway = true, require_exp = true, realm = true }

local HS = { HS256 = "sha256", HS384 = "sha384", HS512 = "sha512" }
local SUPPORTED = { HS256 = true, HS384 = true, HS512 = true, RS256 = true, ES256 = true }

-- ---- configuration ----

local function read_file(path, what)
  if sub(path, 1, 1) ~= "/" then
    local state = require("gateway")._state
    path = (state.config_dir or ".") .. "/" .. path
  end
  local f, err = io.open(path, "rb")
  if not f then return nil, format("jwt: cannot read %s: %s", what, tostring(err)) end
  local text = f:read("*a")
  f:close()
  if not text then return nil, format("jwt: cannot read %s %s", what, path) end
  return text, path
end

-- The algorithms a parsed public key can verify, or nil and why not.
local function algs_of(key)
  if key.kind == "RSA" then
    if key.bits < 2048 then return nil, format("RSA key of %d bits (2048 at least)", key.bits) end
    return { RS256 = true }
  end
  if key.kind == "EC" then
    if key.curve ~= "prime256v1" then return nil, "EC key on " .. tostring(key.curve) .. " (ES256 needs P-256)" end
    return { ES256 = true }
  end
  return nil, "unsupported key type"
end

local function load_pem(path)
  local text, full = read_file(path, "key file '" .. path .. "'")
  if not text then return nil, full end
  local key, err = crypto.public_key(text)
  if not key then return nil, format("jwt: key file %s: %s", full, err) end
  local algs
  algs, err = algs_of(key)
  if not algs then return nil, format("jwt: key file %s: %s", full, err) end
  return { key = key, algs = algs }
end

-- Reads a JWK Set. Keys meant for encryption, of types or curves this
-- gateway does not verify, or restricted to another algorithm, are skipped
-- (an identity provider's set may hold them); a key that claims to be
-- usable but is broken is an error. Returns by_kid and the only key (when
-- the set holds just one), or nil and an error.
local function load_jwks(path)
  local text, full = read_file(path, "JWKS file '" .. path .. "'")
  if not text then return nil, full end
  local set = decode_json(text)
  if type(set) ~= "table" or type(set.keys) ~= "table" then
    return nil, format("jwt: JWKS file %s: not a JSON object with a \"keys\" list", full)
  end
  local by_kid, count, only = {}, 0, nil
  for i, jwk in ipairs(set.keys) do
    local label = format("jwt: JWKS file %s: key #%d", full, i)
    if type(jwk) ~= "table" then return nil, label .. " is not an object" end
    local usable = (jwk.use == nil or jwk.use == "sig")
      and (jwk.kty == "RSA" or (jwk.kty == "EC" and jwk.crv == "P-256"))
      and (jwk.alg == nil or jwk.alg == "RS256" or jwk.alg == "ES256")
    if usable then
      local key, err = crypto.public_key_jwk(jwk)
      if not key then return nil, label .. ": " .. err end
      local algs
      algs, err = algs_of(key)
      if not algs then return nil, label .. ": " .. err end
      if jwk.alg and not algs[jwk.alg] then return nil, label .. ": alg " .. jwk.alg .. " does not fit the key" end
      if jwk.alg then algs = { [jwk.alg] = true } end
      local kid = jwk.kid
      local entry = { key = key, algs = algs, kid = kid }
      if kid ~= nil then
        if type(kid) ~= "string" then return nil, label .. ": kid must be a string" end
        if by_kid[kid] then return nil, label .. ": duplicate kid " .. kid end
        by_kid[kid] = entry
      end
      count = count + 1
      only = entry
    end
  end
  if count == 0 then return nil, format("jwt: JWKS file %s: no RS256 or ES256 signing key", full) end
  return by_kid, count == 1 and only or nil
end

local function string_set(v, what)
  if v == nil then return nil end
  local list, err = util.string_list(v, "jwt: " .. what, function(s) return s ~= "" end)
  if not list then return nil, err end
  if #list == 0 then return nil, "jwt: " .. what .. " must not be empty" end
  local set = {}
  for _, s in ipairs(list) do set[s] = true end
  return set
end

local function configure(opts)
  local err
  opts, err = util.check_options(opts, KNOWN, "jwt")
  if not opts then return nil, err end
  local c = {}
  local sources = (opts.secret ~= nil and 1 or 0) + (opts.key ~= nil and 1 or 0) + (opts.jwks ~= nil and 1 or 0)
  if sources ~= 1 then return nil, "jwt: give exactly one of secret, key or jwks" end

  local offered = {} -- what the key material can verify
  if opts.secret ~= nil then
    if type(opts.secret) ~= "string" or opts.secret == "" then
      return nil, "jwt: secret must be a non-empty string"
    end
    c.secret = opts.secret
    offered = { HS256 = true, HS384 = true, HS512 = true }
  elseif opts.key ~= nil then
    if type(opts.key) ~= "string" or opts.key == "" then return nil, "jwt: key must be a file path" end
    local entry
    entry, err = load_pem(opts.key)
    if not entry then return nil, err end
    c.single = entry
    offered = entry.algs
  else
    if type(opts.jwks) ~= "string" or opts.jwks == "" then return nil, "jwt: jwks must be a file path" end
    local by_kid, only = load_jwks(opts.jwks)
    if not by_kid then return nil, only end
    c.by_kid, c.single = by_kid, only
    for _, e in pairs(by_kid) do
      for a in pairs(e.algs) do offered[a] = true end
    end
    if only then
      for a in pairs(only.algs) do offered[a] = true end
    end
  end

  -- The accepted algorithms: what the key offers, narrowed by `algorithms`.
  local allowed = offered
  if opts.algorithms ~= nil then
    local list
    list, err = util.string_list(opts.algorithms, "jwt: algorithms")
    if not list then return nil, err end
    allowed = {}
    for _, a in ipairs(list) do
      if not SUPPORTED[a] then return nil, "jwt: unsupported algorithm " .. a .. " (HS256, HS384, HS512, RS256, ES256)" end
      if not offered[a] then return nil, "jwt: algorithm " .. a .. " does not fit the configured key" end
      allowed[a] = true
    end
    if next(allowed) == nil then return nil, "jwt: algorithms must not be empty" end
  end
  c.allowed = allowed

  c.aud, err = string_set(opts.aud, "aud")
  if err then return nil, err end
  c.iss, err = string_set(opts.iss, "iss")
  if err then return nil, err end
  local leeway = opts.leeway or 0
  if type(leeway) ~= "number" or leeway < 0 or leeway ~= leeway then
    return nil, "jwt: leeway must be a number of seconds >= 0"
  end
  c.leeway = leeway
  if opts.require_exp ~= nil and type(opts.require_exp) ~= "boolean" then
    return nil, "jwt: require_exp must be true or false"
  end
  c.require_exp = opts.require_exp == true
  local realm = opts.realm
  if realm == nil then realm = "api" end
  c.realm, err = util.check_realm(realm, "jwt")
  if not c.realm then return nil, err end
  return c
end

-- ---- verification ----

-- The JSON object in `text` (decoded), or nil. lua-cjson decodes "[]" and
-- "{}" alike, to an empty table, so the text itself must open with a brace.
local function decode_object(text)
  if not text or not find(text, "^[ \t\r\n]*{") then return nil end
  local v = decode_json(text)
  if type(v) ~= "table" then return nil end
  return v
end

-- A time claim is a finite number: lua-cjson reads NaN and Infinity (not
-- JSON), and NaN compares false with everything, so `now >= exp` would
-- never find such a token expired.
local HUGE = math.huge
local function is_time(v)
  return type(v) == "number" and v == v and v ~= HUGE and v ~= -HUGE
end

-- Checks the claims against the configuration; nil or the reason.
local function check_claims(c, claims, now)
  local exp, nbf, leeway = claims.exp, claims.nbf, c.leeway
  if exp ~= nil then
    if not is_time(exp) then return "malformed exp claim" end
    if now >= exp + leeway then return "token expired" end
  elseif c.require_exp then
    return "token has no exp claim"
  end
  if nbf ~= nil then
    if not is_time(nbf) then return "malformed nbf claim" end
    if now + leeway < nbf then return "token not yet valid" end
  end
  if c.iss then
    local iss = claims.iss
    if type(iss) ~= "string" or not c.iss[iss] then return "wrong issuer" end
  end
  if c.aud then
    local aud, ok = claims.aud, false
    if type(aud) == "string" then
      ok = c.aud[aud] == true
    elseif type(aud) == "table" then
      for _, a in ipairs(aud) do
        if type(a) == "string" and c.aud[a] then
          ok = true
          break
        end
      end
    end
    if not ok then return "wrong audience" end
  end
  if claims.sub ~= nil and type(claims.sub) ~= "string" then return "malformed sub claim" end
  return nil
end

-- The verified claims of token, or nil and why it is refused.
local function verify(c, token, now)
  local h64, p64, s64 = match(token, "^([%w_-]+)%.([%w_-]+)%.([%w_-]*)$")
  if not h64 then return nil, "malformed token" end
  local header = decode_object(decode_url(h64))
  if not header or type(header.alg) ~= "string" then return nil, "malformed token" end
  if header.crit ~= nil then return nil, "unsupported crit header" end
  local alg = header.alg
  if not c.allowed[alg] then return nil, "algorithm not allowed" end
  local sig = decode_url(s64)
  if not sig then return nil, "malformed token" end
  local signing_input = sub(token, 1, #h64 + 1 + #p64)

  local mdname = HS[alg]
  if mdname then
    -- Only a secret configuration allows HS algorithms (configure): the
    -- check on c.secret is a second lock on that door.
    if not c.secret then return nil, "algorithm not allowed" end
    if not equal(hmac(mdname, c.secret, signing_input), sig) then return nil, "bad signature" end
  else
    -- A kid names a key of the set; a key without kid (the PEM key, or the
    -- only key of a set) serves any token.
    local entry
    local kid = header.kid
    if kid ~= nil then
      if type(kid) ~= "string" then return nil, "malformed token" end
      entry = c.by_kid and c.by_kid[kid]
      if entry == nil and c.single and c.single.kid == nil then entry = c.single end
      if entry == nil then return nil, "unknown key id" end
    else
      entry = c.single
      if entry == nil then return nil, "token has no kid" end
    end
    if not entry.algs[alg] then return nil, "algorithm not allowed" end
    if not entry.key:verify(alg, signing_input, sig) then return nil, "bad signature" end
  end

  local claims = decode_object(decode_url(p64))
  if not claims then return nil, "malformed claims" end
  local why = check_claims(c, claims, now)
  if why then return nil, why end
  return claims
end

local function is_space(b) return b == 32 or (b ~= nil and b >= 9 and b <= 13) end

-- The token of an Authorization value "Bearer" 1*SP token (RFC 6750 2.1),
-- without its surrounding blanks; nil for another scheme or none after it.
-- Byte by byte: a pattern with a lazy capture costs a step per character of
-- the token (hundreds of them), on every request.
local function bearer_token(auth)
  if not auth or lower(sub(auth, 1, 6)) ~= "bearer" or not is_space(byte(auth, 7)) then return nil end
  local first, last = 8, #auth
  while is_space(byte(auth, first)) do first = first + 1 end
  while last >= first and is_space(byte(auth, last)) do last = last - 1 end
  return sub(auth, first, last)
end

local CACHE_MAX, CACHE_TTL = 1024, 60

-- A shallow copy: each request gets its own claims table, so a script that
-- changes req.consumer.claims cannot change what the next request sees.
local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

return function(opts)
  local c, err = configure(opts)
  if not c then error(err, 2) end
  local now = require("gateway").now
  local realm = "Bearer realm=" .. util.quote(c.realm)
  -- Tokens that passed, so that a client repeating its token (the usual
  -- case) is not verified again: token -> { claims, until_t }. An entry
  -- lasts until the token expires (with the leeway) and at most CACHE_TTL
  -- seconds; only verified tokens enter, and the table is emptied when it
  -- holds CACHE_MAX of them. Per worker and per middleware.
  local verified, nverified = {}, 0
  local function remember(token, claims, t)
    if nverified >= CACHE_MAX then
      verified, nverified = {}, 0
    end
    local until_t = t + CACHE_TTL
    local exp = claims.exp
    if type(exp) == "number" and exp + c.leeway < until_t then until_t = exp + c.leeway end
    verified[token] = { claims = copy(claims), until_t = until_t }
    nverified = nverified + 1
  end
  local challenges = {} -- reason -> challenge text, made once per reason
  local function invalid(req, why)
    local ch = challenges[why]
    if ch == nil then
      ch = concat({ realm, 'error="invalid_token"', "error_description=" .. util.quote(why) }, ", ")
      challenges[why] = ch
    end
    return util.unauthorized(req, "invalid token: " .. why, ch)
  end

  return function(req, next_mw)
    -- RFC 6750 2.1: "Bearer" 1*SP token; another scheme, or the scheme
    -- alone, is no bearer token at all (the bare challenge, section 3).
    local token = bearer_token(req.headers["authorization"])
    if not token or token == "" then
      return util.unauthorized(req, "missing bearer token", realm)
    end
    local t = now()
    local hit = verified[token]
    local claims, why
    if hit and t < hit.until_t then
      claims = copy(hit.claims)
    else
      claims, why = verify(c, token, t)
      if claims == nil then return invalid(req, why) end
      remember(token, claims, t)
    end
    req.consumer = { name = claims.sub, claims = claims }
    return next_mw()
  end
end
