-- gateway.base64: gw.base64, Base64 (RFC 4648 section 4) and its URL-safe
-- alphabet (section 5), over OpenSSL's EVP_EncodeBlock/EVP_DecodeBlock.
--
--   encode(s)      standard alphabet, with "=" padding
--   decode(s)      the bytes, or nil and "invalid base64"
--   encode_url(s)  "-" and "_" for "+" and "/", no padding (as JWT wants)
--   decode_url(s)  accepts the URL-safe alphabet with or without padding
--
-- Decoding is strict: no whitespace, no characters outside the alphabet,
-- padding only where it belongs, and the unused low bits of the last
-- character must be zero (RFC 4648 section 3.5), so every byte string has
-- exactly one accepted encoding. Misuse (a non-string argument) raises.
local ffi = require "ffi"

local C = ffi.C
local ffi_string, ffi_new = ffi.string, ffi.new
local type, error = type, error
local find, gsub, sub, rep = string.find, string.gsub, string.sub, string.rep
local floor = math.floor

ffi.cdef [[
int EVP_EncodeBlock(unsigned char *t, const unsigned char *f, int n);
int EVP_DecodeBlock(unsigned char *t, const unsigned char *f, int n);
]]

local _M = {}

-- A scratch buffer, grown on demand, reused by every call (nothing yields
-- between a fill and the ffi.string that copies it out).
local buf, buf_size = nil, 0
local function scratch(n)
  if n > buf_size then
    buf_size = n < 1024 and 1024 or n
    buf = ffi_new("unsigned char[?]", buf_size)
  end
  return buf
end

local function check(s, name)
  if type(s) ~= "string" then error("gw.base64." .. name .. ": a string is required", 3) end
end

local function encode(s)
  local n = #s
  local out = scratch(4 * floor((n + 2) / 3) + 1)
  local len = C.EVP_EncodeBlock(out, s, n)
  return ffi_string(out, len)
end

function _M.encode(s)
  check(s, "encode")
  return encode(s)
end

-- Decodes a standard, padded string; nil when it is not canonical Base64.
local function decode(s)
  local n = #s
  if n == 0 then return "" end
  if n % 4 ~= 0 or find(s, "[^%w+/=]") then return nil, "invalid base64" end
  local pad = 0
  if sub(s, -2) == "==" then
    pad = 2
  elseif sub(s, -1) == "=" then
    pad = 1
  end
  -- "=" anywhere but the end.
  local first = find(s, "=", 1, true)
  if first and first <= n - pad then return nil, "invalid base64" end
  local out = scratch(n / 4 * 3 + 1)
  local len = C.EVP_DecodeBlock(out, s, n)
  if len < 0 then return nil, "invalid base64" end
  local bytes = ffi_string(out, len - pad)
  -- Non-zero unused bits would decode to the same bytes: refuse them.
  if encode(bytes) ~= s then return nil, "invalid base64" end
  return bytes
end

function _M.decode(s)
  check(s, "decode")
  return decode(s)
end

local TO_URL = { ["+"] = "-", ["/"] = "_" }
local FROM_URL = { ["-"] = "+", ["_"] = "/" }

function _M.encode_url(s)
  check(s, "encode_url")
  local t = gsub(encode(s), "[+/]", TO_URL)
  return (gsub(t, "=+$", ""))
end

function _M.decode_url(s)
  check(s, "decode_url")
  if find(s, "[+/]") then return nil, "invalid base64" end
  local r = #s % 4
  if r ~= 0 then
    -- Unpadded: add the padding; a padded string must be whole.
    if r == 1 or find(s, "=", 1, true) then return nil, "invalid base64" end
    s = s .. rep("=", 4 - r)
  end
  return decode((gsub(s, "[-_]", FROM_URL)))
end

return _M
