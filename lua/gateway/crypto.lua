-- gateway.crypto: gw.crypto, hashing, MACs, random bytes, signature checks
-- and password hashes. Nothing here is implemented by hand: digests, HMAC,
-- random bytes, constant-time comparison and public-key verification are
-- OpenSSL's libcrypto (EVP), reached through the FFI (the binary links
-- libcrypto, so ffi.C resolves its symbols); password hashes are libcrypt's
-- crypt_rn, run off the event loop by src/ffi_crypto.c.
--
--   sha256(data), digest(alg, data)     raw digest bytes
--   hmac(alg, key, data)                raw MAC bytes (alg sha256|sha384|sha512)
--   random(n)                           n bytes from RAND_bytes
--   equal(a, b)                         constant-time string comparison
--   hex(s)                              lower-case hex of bytes
--   public_key(pem), public_key_jwk(t)  a key object (parsed once, cached)
--   key:verify(alg, data, sig)          RS256 / ES256 signature check
--   crypt_verify(password, hash)        crypt(3) check; waits off the loop
--   crypt_supported(hash)               whether libcrypt rates the hash usable
--
-- Misuse (a wrong type, an unknown algorithm) raises error(msg, 2). Runtime
-- failures return nil (or false) and a short, stable message.
local base = require "gateway.base"
local sched = require "gateway.sched"
local b64 = require "gateway.base64"

local ffi, C = base.ffi, base.C
local ffi_string, ffi_new, ffi_gc, cast = ffi.string, ffi.new, ffi.gc, ffi.cast
local OK, AGAIN, BAD_CONTEXT = base.OK, base.AGAIN, base.BAD_CONTEXT
local type, error, setmetatable, tostring = type, error, setmetatable, tostring
local format, gsub, char = string.format, string.gsub, string.char

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
typedef struct evp_md_ctx_st EVP_MD_CTX;
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_pkey_ctx_st EVP_PKEY_CTX;
typedef struct bio_st BIO;
typedef struct engine_st ENGINE;
typedef struct bignum_st BIGNUM;
typedef struct ECDSA_SIG_st ECDSA_SIG;
typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;
typedef struct ossl_param_bld_st OSSL_PARAM_BLD;
typedef struct ossl_param_st {
  const char *key; unsigned int data_type; void *data; size_t data_size; size_t return_size;
} OSSL_PARAM;

const EVP_MD *EVP_sha256(void);
const EVP_MD *EVP_sha384(void);
const EVP_MD *EVP_sha512(void);
int EVP_Digest(const void *data, size_t count, unsigned char *md, unsigned int *size,
               const EVP_MD *type, ENGINE *impl);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *data, size_t data_len, unsigned char *md,
                    unsigned int *md_len);
int RAND_bytes(unsigned char *buf, int num);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
void ERR_clear_error(void);

BIO *BIO_new_mem_buf(const void *buf, int len);
int BIO_free(BIO *a);
EVP_PKEY *PEM_read_bio_PUBKEY(BIO *bp, EVP_PKEY **x, void *cb, void *u);
void EVP_PKEY_free(EVP_PKEY *pkey);
int EVP_PKEY_get_base_id(const EVP_PKEY *pkey);
int EVP_PKEY_get_bits(const EVP_PKEY *pkey);
int EVP_PKEY_get_group_name(const EVP_PKEY *pkey, char *name, size_t name_sz, size_t *gname_len);
EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_name(OSSL_LIB_CTX *libctx, const char *name,
                                         const char *propquery);
EVP_PKEY_CTX *EVP_PKEY_CTX_new_from_pkey(OSSL_LIB_CTX *libctx, EVP_PKEY *pkey,
                                         const char *propquery);
void EVP_PKEY_CTX_free(EVP_PKEY_CTX *ctx);
int EVP_PKEY_fromdata_init(EVP_PKEY_CTX *ctx);
int EVP_PKEY_fromdata(EVP_PKEY_CTX *ctx, EVP_PKEY **ppkey, int selection, OSSL_PARAM params[]);
int EVP_PKEY_public_check(EVP_PKEY_CTX *ctx);
OSSL_PARAM_BLD *OSSL_PARAM_BLD_new(void);
void OSSL_PARAM_BLD_free(OSSL_PARAM_BLD *bld);
int OSSL_PARAM_BLD_push_BN(OSSL_PARAM_BLD *bld, const char *key, const BIGNUM *bn);
int OSSL_PARAM_BLD_push_utf8_string(OSSL_PARAM_BLD *bld, const char *key, const char *buf,
                                    size_t bsize);
int OSSL_PARAM_BLD_push_octet_string(OSSL_PARAM_BLD *bld, const char *key, const void *buf,
                                     size_t bsize);
OSSL_PARAM *OSSL_PARAM_BLD_to_param(OSSL_PARAM_BLD *bld);
void OSSL_PARAM_free(OSSL_PARAM *p);
BIGNUM *BN_bin2bn(const unsigned char *s, int len, BIGNUM *ret);
void BN_free(BIGNUM *a);

EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
int EVP_MD_CTX_reset(EVP_MD_CTX *ctx);
int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *type, ENGINE *e,
                         EVP_PKEY *pkey);
int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                     const unsigned char *tbs, size_t tbslen);
ECDSA_SIG *ECDSA_SIG_new(void);
void ECDSA_SIG_free(ECDSA_SIG *sig);
int ECDSA_SIG_set0(ECDSA_SIG *sig, BIGNUM *r, BIGNUM *s);
int i2d_ECDSA_SIG(const ECDSA_SIG *sig, unsigned char **pp);

int gw_ffi_crypt_check(gw_task_t *t, uint32_t ts, const char *phrase, size_t plen,
                       const char *hash, size_t hlen, uint32_t *wait_id);
int gw_ffi_crypt_checksalt(const char *hash);
]]

local _M = {}

local EVP_PKEY_RSA, EVP_PKEY_EC = 6, 408 -- NID_rsaEncryption, NID_X9_62_id_ecPublicKey
local EVP_PKEY_PUBLIC_KEY = 0x86           -- all parameters plus the public key

local MD = { sha256 = C.EVP_sha256(), sha384 = C.EVP_sha384(), sha512 = C.EVP_sha512() }

local md_out = ffi_new("unsigned char[64]")
local md_len = ffi_new("unsigned int[1]")

local function check_str(v, fname, what)
  if type(v) ~= "string" then error(format("gw.crypto.%s: %s must be a string", fname, what), 3) end
end

local function get_md(alg, fname)
  local md = MD[alg]
  if md == nil then
    error(format("gw.crypto.%s: unknown algorithm %s (sha256, sha384 or sha512)", fname, tostring(alg)), 3)
  end
  return md
end

-- ---- digests, MACs, random bytes, comparison ----

local function digest(md, data)
  if C.EVP_Digest(data, #data, md_out, md_len, md, nil) ~= 1 then
    C.ERR_clear_error()
    return nil, "digest failed"
  end
  return ffi_string(md_out, md_len[0])
end

-- sha256(data): the 32-byte SHA-256 digest of data.
function _M.sha256(data)
  check_str(data, "sha256", "data")
  return digest(MD.sha256, data)
end

-- digest(alg, data): the raw digest, alg "sha256", "sha384" or "sha512".
function _M.digest(alg, data)
  local md = get_md(alg, "digest")
  check_str(data, "digest", "data")
  return digest(md, data)
end

-- hmac(alg, key, data): the raw HMAC, alg "sha256", "sha384" or "sha512".
function _M.hmac(alg, key, data)
  local md = get_md(alg, "hmac")
  check_str(key, "hmac", "key")
  check_str(data, "hmac", "data")
  if C.HMAC(md, key, #key, data, #data, md_out, md_len) == nil then
    C.ERR_clear_error()
    return nil, "hmac failed"
  end
  return ffi_string(md_out, md_len[0])
end

-- random(n): n bytes from OpenSSL's CSPRNG (0 <= n <= 65536).
function _M.random(n)
  if type(n) ~= "number" or n < 0 or n > 65536 or n % 1 ~= 0 then
    error("gw.crypto.random: n must be a whole number from 0 to 65536", 2)
  end
  if n == 0 then return "" end
  local out = ffi_new("unsigned char[?]", n)
  if C.RAND_bytes(out, n) ~= 1 then
    C.ERR_clear_error()
    return nil, "random bytes unavailable"
  end
  return ffi_string(out, n)
end

-- equal(a, b): true when a and b are the same bytes. The time taken depends
-- on the lengths only, never on where the strings differ.
function _M.equal(a, b)
  check_str(a, "equal", "a")
  check_str(b, "equal", "b")
  local n = #a
  if n ~= #b then return false end
  return C.CRYPTO_memcmp(a, b, n) == 0
end

local HEX = {}
for i = 0, 255 do HEX[char(i)] = format("%02x", i) end

-- hex(s): s as lower-case hexadecimal.
function _M.hex(s)
  check_str(s, "hex", "s")
  return (gsub(s, ".", HEX))
end

-- ---- public keys and signatures ----

local Key = {}
Key.__index = Key

-- Algorithms key:verify knows: the key type, the digest, and for ECDSA the
-- curve and the size of r and s in the raw (JWS) signature.
local ALGS = {
  RS256 = { kind = "RSA", md = MD.sha256 },
  ES256 = { kind = "EC", md = MD.sha256, curve = "prime256v1", half = 32 },
}

local group_buf = ffi_new("char[80]")
local group_len = ffi_new("size_t[1]")

-- Takes ownership of pkey (freed by the garbage collector) and describes it.
local function wrap_pkey(pkey)
  pkey = ffi_gc(pkey, C.EVP_PKEY_free)
  local pctx = C.EVP_PKEY_CTX_new_from_pkey(nil, pkey, nil)
  local ok = pctx ~= nil and C.EVP_PKEY_public_check(pctx) == 1
  if pctx ~= nil then C.EVP_PKEY_CTX_free(pctx) end
  if not ok then
    C.ERR_clear_error()
    return nil, "invalid public key"
  end
  local id = C.EVP_PKEY_get_base_id(pkey)
  local key = setmetatable({ _pkey = pkey, bits = C.EVP_PKEY_get_bits(pkey) }, Key)
  if id == EVP_PKEY_RSA then
    key.kind = "RSA"
  elseif id == EVP_PKEY_EC then
    key.kind = "EC"
    if C.EVP_PKEY_get_group_name(pkey, group_buf, 80, group_len) ~= 1 then
      C.ERR_clear_error()
      return nil, "EC key without a named curve"
    end
    key.curve = ffi_string(group_buf, group_len[0])
  else
    return nil, "unsupported key type (RSA or EC keys only)"
  end
  return key
end

local pem_cache = setmetatable({}, { __mode = "v" })

-- public_key(pem): the key of a PEM "PUBLIC KEY" block (RSA or EC), or nil
-- and an error. Keys are cached by their PEM text.
function _M.public_key(pem)
  check_str(pem, "public_key", "pem")
  local key = pem_cache[pem]
  if key then return key end
  local bio = C.BIO_new_mem_buf(pem, #pem)
  if bio == nil then return nil, "out of memory" end
  local pkey = C.PEM_read_bio_PUBKEY(bio, nil, nil, nil)
  C.BIO_free(bio)
  if pkey == nil then
    C.ERR_clear_error()
    return nil, "not a PEM public key (-----BEGIN PUBLIC KEY-----)"
  end
  local err
  key, err = wrap_pkey(pkey)
  if key then pem_cache[pem] = key end
  return key, err
end

local function b64url_field(t, name)
  local v = t[name]
  if type(v) ~= "string" or v == "" then return nil end
  return (b64.decode_url(v))
end

-- Builds an EVP_PKEY of type `name` from OSSL_PARAM_BLD pushes done by
-- fill(bld, bns). The builder keeps pointers, not copies, until
-- OSSL_PARAM_BLD_to_param: the big numbers fill makes go in the list bns
-- and are freed after it, and the strings it pushes are upvalues of fill.
local function pkey_from_params(name, fill)
  local bld = C.OSSL_PARAM_BLD_new()
  if bld == nil then return nil end
  local pkey
  local bns = {}
  local params = fill(bld, bns) and C.OSSL_PARAM_BLD_to_param(bld) or nil
  for i = 1, #bns do C.BN_free(bns[i]) end
  if params ~= nil then
    local pctx = C.EVP_PKEY_CTX_new_from_name(nil, name, nil)
    if pctx ~= nil then
      local out = ffi_new("EVP_PKEY *[1]")
      if C.EVP_PKEY_fromdata_init(pctx) == 1
          and C.EVP_PKEY_fromdata(pctx, out, EVP_PKEY_PUBLIC_KEY, params) == 1 then
        pkey = out[0]
      end
      C.EVP_PKEY_CTX_free(pctx)
    end
    C.OSSL_PARAM_free(params)
  end
  C.OSSL_PARAM_BLD_free(bld)
  if pkey == nil then C.ERR_clear_error() end
  return pkey
end

local function push_bn(bld, bns, key, bytes)
  local bn = C.BN_bin2bn(bytes, #bytes, nil)
  if bn == nil then return false end
  bns[#bns + 1] = bn
  return C.OSSL_PARAM_BLD_push_BN(bld, key, bn) == 1
end

-- public_key_jwk(t): the key of a JWK (RFC 7517) given as a decoded table:
-- kty "RSA" with n and e, or kty "EC" with crv "P-256", x and y. Returns
-- the key, or nil and an error.
function _M.public_key_jwk(t)
  if type(t) ~= "table" then error("gw.crypto.public_key_jwk: a table is required", 2) end
  local pkey
  if t.kty == "RSA" then
    local n, e = b64url_field(t, "n"), b64url_field(t, "e")
    if not n or not e then return nil, "RSA JWK needs base64url n and e" end
    pkey = pkey_from_params("RSA", function(bld, bns)
      return push_bn(bld, bns, "n", n) and push_bn(bld, bns, "e", e)
    end)
  elseif t.kty == "EC" then
    if t.crv ~= "P-256" then return nil, "unsupported EC curve " .. tostring(t.crv) .. " (P-256 only)" end
    local x, y = b64url_field(t, "x"), b64url_field(t, "y")
    if not x or not y or #x ~= 32 or #y ~= 32 then return nil, "P-256 JWK needs 32-byte x and y" end
    local point = "\4" .. x .. y -- an uncompressed point (SEC 1, 2.3.3)
    pkey = pkey_from_params("EC", function(bld)
      return C.OSSL_PARAM_BLD_push_utf8_string(bld, "group", "prime256v1", 0) == 1
        and C.OSSL_PARAM_BLD_push_octet_string(bld, "pub", point, #point) == 1
    end)
  else
    return nil, "unsupported JWK kty " .. tostring(t.kty) .. " (RSA or EC)"
  end
  if pkey == nil then return nil, "invalid public key" end
  return wrap_pkey(pkey)
end

-- JWS carries an ECDSA signature as r || s, each `half` bytes (RFC 7518
-- 3.4); OpenSSL verifies the DER form (an ASN.1 SEQUENCE of two INTEGERs).
local der_pp = ffi_new("unsigned char *[1]")
local function ecdsa_raw_to_der(sig, half)
  if #sig ~= 2 * half then return nil end
  local p = cast("const unsigned char *", sig)
  local r, s = C.BN_bin2bn(p, half, nil), C.BN_bin2bn(p + half, half, nil)
  local esig = C.ECDSA_SIG_new()
  if r == nil or s == nil or esig == nil or C.ECDSA_SIG_set0(esig, r, s) ~= 1 then
    if r ~= nil then C.BN_free(r) end
    if s ~= nil then C.BN_free(s) end
    if esig ~= nil then C.ECDSA_SIG_free(esig) end
    return nil
  end
  -- esig owns r and s now.
  local len = C.i2d_ECDSA_SIG(esig, nil)
  local der
  if len > 0 then
    local buf = ffi_new("unsigned char[?]", len)
    der_pp[0] = buf
    if C.i2d_ECDSA_SIG(esig, der_pp) == len then der = ffi_string(buf, len) end
  end
  C.ECDSA_SIG_free(esig)
  return der
end

local md_ctx = ffi_gc(C.EVP_MD_CTX_new(), C.EVP_MD_CTX_free)

-- key:verify(alg, data, sig): true if sig is a valid `alg` signature of data
-- by this key, else false and an error ("bad signature", or "key does not
-- fit the algorithm"). alg is "RS256" (RSASSA-PKCS1-v1_5 with SHA-256) or
-- "ES256" (ECDSA P-256 with SHA-256, sig as raw r || s).
function Key:verify(alg, data, sig)
  local spec = ALGS[alg]
  if spec == nil then error("key:verify: unsupported algorithm " .. tostring(alg) .. " (RS256 or ES256)", 2) end
  if type(data) ~= "string" or type(sig) ~= "string" then error("key:verify: data and sig must be strings", 2) end
  if spec.kind ~= self.kind or (spec.curve and spec.curve ~= self.curve) then
    return false, "key does not fit the algorithm"
  end
  if spec.half then
    sig = ecdsa_raw_to_der(sig, spec.half)
    if sig == nil then
      C.ERR_clear_error()
      return false, "bad signature"
    end
  end
  local ok = C.EVP_DigestVerifyInit(md_ctx, nil, spec.md, nil, self._pkey) == 1
    and C.EVP_DigestVerify(md_ctx, sig, #sig, data, #data) == 1
  C.EVP_MD_CTX_reset(md_ctx)
  if ok then return true end
  C.ERR_clear_error()
  return false, "bad signature"
end

-- ---- password hashes (crypt(3)) ----

-- crypt_verify(password, hash): true if password matches the crypt(3) hash.
-- Inside a request or timer the hashing runs on libuv's thread pool and the
-- calling coroutine waits (other requests go on); elsewhere it blocks.
function _M.crypt_verify(password, hash)
  check_str(password, "crypt_verify", "password")
  check_str(hash, "crypt_verify", "hash")
  local ctx = sched.current()
  if ctx == nil then
    return C.gw_ffi_crypt_check(nil, 0, password, #password, hash, #hash, base.out_wait) == OK
  end
  local rc = C.gw_ffi_crypt_check(ctx.task, ctx.ts, password, #password, hash, #hash, base.out_wait)
  if rc == AGAIN then return sched.wait(ctx, base.out_wait[0]) == true end
  if rc == BAD_CONTEXT then error(base.FINISHED, 2) end
  return false
end

local SALT_RATING = { [1] = "not a valid crypt(3) hash", [2] = "hash method disabled in libcrypt",
                      [3] = "legacy hash method (weak): use $y$, $2b$ or $6$" }

-- The length of the final, hash part of a complete hash, by method id:
-- crypt_checksalt accepts a bare setting ("$6$salt") too, which no password
-- would ever match.
local HASH_PART = { ["2a"] = 53, ["2b"] = 53, ["2y"] = 53, ["6"] = 86, y = 43, gy = 43, ["7"] = 43 }

-- crypt_supported(hash): true if hash is a complete crypt(3) hash that
-- libcrypt can check passwords against with a method it rates as strong;
-- else false and why. Cheap: nothing is hashed.
function _M.crypt_supported(hash)
  check_str(hash, "crypt_supported", "hash")
  if hash == "" or hash:find("\0", 1, true) then return false, SALT_RATING[1] end
  local why = SALT_RATING[C.gw_ffi_crypt_checksalt(hash)]
  if why then return false, why end
  local want = HASH_PART[hash:match("^%$([^$]*)%$")]
  if want and #(hash:match("([^$]*)$")) ~= want then
    return false, "incomplete crypt(3) hash (a salt without the hash?)"
  end
  return true
end

_M.Key = Key
return _M
