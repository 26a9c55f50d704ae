-- JWT verification shared by the bundled jwt and redis_credentials plugins
-- (RFC 7519; JWS compact form, RFC 7515): one set of rules for both.
--
-- The algorithm comes from the allow-list AND the key, never from the token
-- alone: the token's "alg" must be in `algorithms`, HS* is only ever checked
-- with `secret`, every other alg only with a public key (configured, or a
-- JWK whose type and curve fit the alg); gw.crypto.verify refuses a key of
-- the wrong type as well. "none", in any spelling, can never be allowed.
--
-- Time claims: exp (expired once now >= exp + leeway), nbf (now + leeway >=
-- nbf), iat (not after now + leeway); a non-numeric one fails. `exp` is
-- optional unless the plugin requires it (redis_credentials' check_exp).
--
-- Verified tokens are cached in gw.cache (per worker, LRU-bounded) for
-- min(cache_ttl, exp + leeway - now) seconds, under a key unique to one
-- route's configuration in one config generation; the time claims are
-- checked again on every hit.
--
-- Keys from files are read by prepare(), at load time and by `moongate -t`;
-- the request path reads no file. A JWKS is fetched with gw.http on first
-- use, cached for `jwks_ttl` seconds, refetched on an unknown kid at most
-- once per `jwks_refetch_interval`, and only one fetch per URL runs at a
-- time: other requests wait for it. Tokens are never logged.
local gw = gw
local type, HUGE = type, math.huge

local util = require "moongate.plugin_util"

local M = {}

local HMAC = { HS256 = "sha256", HS384 = "sha384", HS512 = "sha512" }
-- alg -> the JWK kty (and crv) it needs
local ASYM = {
  RS256 = { kty = "RSA" }, RS384 = { kty = "RSA" }, RS512 = { kty = "RSA" },
  PS256 = { kty = "RSA" }, PS384 = { kty = "RSA" }, PS512 = { kty = "RSA" },
  ES256 = { kty = "EC", crv = "P-256" }, ES384 = { kty = "EC", crv = "P-384" },
  EdDSA = { kty = "OKP" },
}
M.HMAC, M.ASYM = HMAC, ASYM

-- The options every JWT-verifying plugin takes (schema entries); each
-- plugin adds its own defaults for `algorithms`.
M.SCHEMA = {
  secret = "string",
  public_key = "string",
  public_key_file = "string",
  jwks_url = "string",
  jwks_ttl = { type = "number", default = 300 },
  jwks_timeout = { type = "number", default = 5 },
  jwks_refetch_interval = { type = "number", default = 10 },
  issuer = "string|table",
  audience = "string|table",
  leeway = { type = "number", default = 0 },
  cache_ttl = { type = "number", default = 300 },
}

-- JWS ECDSA signatures are r || s of exactly this size (RFC 7518 3.4);
-- gw.crypto.verify also takes DER, which a token must not use
local ES_SIG_LEN = { ES256 = 64, ES384 = 96 }

local JWKS_POLL = 0.005     -- step of the wait on another request's fetch
local MAX_TOKEN = 16384
local HEADER_MEMO_MAX = 32  -- distinct headers remembered per conf (then cleared)

---------------------------------------------------------------------------
-- DER and PEM, to turn JWKs into the PEM text gw.crypto.verify takes

local function der_len(n)
  if n < 0x80 then return string.char(n) end
  local bytes = ""
  while n > 0 do
    bytes = string.char(n & 0xff) .. bytes
    n = n >> 8
  end
  return string.char(0x80 | #bytes) .. bytes
end

local function der(tag, content)
  return string.char(tag) .. der_len(#content) .. content
end

-- A positive INTEGER from big-endian bytes: no leading zeros, and a 0x00 in
-- front when the high bit is set.
local function der_uint(bytes)
  bytes = bytes:gsub("^%z+", "")
  if bytes == "" then bytes = "\0" end
  if bytes:byte(1) >= 0x80 then bytes = "\0" .. bytes end
  return der(0x02, bytes)
end

local OID_RSA = "\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01"
local OID_EC = "\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"
local CURVES = {
  ["P-256"] = { oid = "\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07", size = 32 },
  ["P-384"] = { oid = "\x06\x05\x2b\x81\x04\x00\x22", size = 48 },
}
local OKP = {
  Ed25519 = { oid = "\x06\x03\x2b\x65\x70", size = 32 },
  Ed448 = { oid = "\x06\x03\x2b\x65\x71", size = 57 },
}

local function pem(label, derbytes)
  local b64 = gw.base64.encode(derbytes)
  local lines = {}
  for i = 1, #b64, 64 do lines[#lines + 1] = b64:sub(i, i + 63) end
  return ("-----BEGIN %s-----\n%s\n-----END %s-----\n"):format(label,
    table.concat(lines, "\n"), label)
end

local function spki(alg_id, key_bits)
  return pem("PUBLIC KEY", der(0x30, der(0x30, alg_id) .. der(0x03, "\0" .. key_bits)))
end

local function b64field(jwk, name)
  local v = jwk[name]
  if type(v) ~= "string" or v == "" then return nil end
  return gw.base64.url_decode(v)
end

-- Converts one JWK (a decoded JSON object) to { pem, kty, crv, alg, kid },
-- or nil, why.
function M.jwk_to_key(jwk)
  if type(jwk) ~= "table" then return nil, "not an object" end
  if jwk.use ~= nil and jwk.use ~= "sig" then return nil, "not a signing key" end
  -- RFC 7517 4.3: a key whose key_ops are given may do only those
  local ops = jwk.key_ops
  if ops ~= nil then
    local verify = false
    if type(ops) == "table" then
      for _, op in ipairs(ops) do
        if op == "verify" then verify = true end
      end
    end
    if not verify then return nil, "not a verification key (key_ops)" end
  end
  local kty, key = jwk.kty, nil
  if kty == "RSA" then
    local n, e = b64field(jwk, "n"), b64field(jwk, "e")
    if not n or not e then return nil, "RSA key without n or e" end
    key = spki(OID_RSA .. "\x05\x00", der(0x30, der_uint(n) .. der_uint(e)))
  elseif kty == "EC" then
    local c = CURVES[jwk.crv]
    if not c then return nil, "unsupported curve" end
    local x, y = b64field(jwk, "x"), b64field(jwk, "y")
    if not x or not y or #x ~= c.size or #y ~= c.size then
      return nil, "EC key with bad x or y"
    end
    key = spki(OID_EC .. c.oid, "\x04" .. x .. y)
  elseif kty == "OKP" then
    local c = OKP[jwk.crv]
    if not c then return nil, "unsupported curve" end
    local x = b64field(jwk, "x")
    if not x or #x ~= c.size then return nil, "OKP key with bad x" end
    key = spki(c.oid, x)
  else
    return nil, "unsupported key type"
  end
  return { pem = key, kty = kty, crv = jwk.crv,
           alg = type(jwk.alg) == "string" and jwk.alg or nil,
           kid = type(jwk.kid) == "string" and jwk.kid or nil }
end

-- Whether `key` (from a JWK) may check a token signed with `alg`.
local function key_fits(key, alg)
  local need = ASYM[alg]
  if not need or key.kty ~= need.kty then return false end
  if need.crv and key.crv ~= need.crv then return false end
  if key.alg and key.alg ~= alg then return false end
  return true
end

---------------------------------------------------------------------------
-- JWKS: one state per URL, per worker and config generation. The states
-- live in a table the plugin passes to prepare() from its main chunk, which
-- every reload runs afresh (this module itself is required once per worker).

local function parse_jwks(body)
  local doc = gw.json.decode(body)
  if type(doc) ~= "table" or type(doc.keys) ~= "table" then
    return nil, "JWKS is not a JSON object with \"keys\""
  end
  local set = { list = {}, by_kid = {} }
  for _, jwk in ipairs(doc.keys) do
    local key = M.jwk_to_key(jwk)
    if key then
      set.list[#set.list + 1] = key
      if key.kid then set.by_kid[key.kid] = key end
    end
  end
  return set
end

local function fetch_jwks(conf, st)
  local res, err = gw.http.request { method = "GET", url = conf.jwks_url,
                                     headers = { accept = "application/json" },
                                     timeout = conf.jwks_timeout, max_body = 1048576 }
  if not res then return nil, "JWKS fetch failed: " .. tostring(err) end
  if res.status ~= 200 then return nil, "JWKS fetch answered " .. tostring(res.status) end
  local set, perr = parse_jwks(res.body or "")
  if not set then return nil, perr end
  st.set = set
  st.expires = gw.now() + conf.jwks_ttl
  return true
end

-- Makes sure the state for conf.jwks_url is fresh (or refetched because of
-- an unknown kid, when `force`). One fetch at a time: others wait on it.
-- A fetch whose request was aborted mid-way never clears `fetching`, so
-- the flag carries a deadline after which it no longer counts.
local function refresh_jwks(conf, st, force)
  if st.fetching and gw.now() < st.fetch_deadline then
    while st.fetching and gw.now() < st.fetch_deadline do gw.sleep(JWKS_POLL) end
    return
  end
  local now = gw.now()
  if st.set and not force and now < st.expires then return end
  if st.last_fetch then
    local since = now - st.last_fetch
    -- unknown kids refetch at most every jwks_refetch_interval; with no
    -- keys at all, retry a failed fetch after 1 s rather than on every request
    if force and since < conf.jwks_refetch_interval then return end
    if not st.set and since < 1 then return end
  end
  st.fetching = true
  st.fetch_deadline = now + conf.jwks_timeout + 1
  st.last_fetch = now
  local ok, res, err = pcall(fetch_jwks, conf, st)
  st.fetching = false
  if not ok then
    gw.log("error", "jwt: JWKS fetch from ", conf.jwks_url, " raised: ", tostring(res))
  elseif not res then
    gw.log("warn", "jwt: ", err, " (", conf.jwks_url, ")")
  end
  if not (ok and res) and st.set then
    -- a failed fetch keeps the stale keys, and is retried as an unknown kid is
    st.expires = now + conf.jwks_refetch_interval
  end
end

-- The candidate keys for a token: a list of PEMs.
local function jwks_keys(conf, alg, kid)
  local states = conf._jwt.jwks_states
  local st = states[conf.jwks_url]
  if not st then
    st = {}
    states[conf.jwks_url] = st
  end
  refresh_jwks(conf, st, false)
  local function pick()
    local out = {}
    local set = st.set
    if not set then return out end
    if kid and set.by_kid[kid] then
      local key = set.by_kid[kid]
      if key_fits(key, alg) then out[1] = key.pem end
      return out
    end
    -- no kid in the token: every key that fits; an unknown kid: the keys
    -- that have no kid themselves (some issuers publish none)
    for _, key in ipairs(set.list) do
      if (not kid or not key.kid) and key_fits(key, alg) then out[#out + 1] = key.pem end
    end
    return out
  end
  local keys = pick()
  if #keys == 0 and kid and st.set and not st.set.by_kid[kid] then
    refresh_jwks(conf, st, true)
    keys = pick()
  end
  return keys
end

---------------------------------------------------------------------------
-- configuration

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("a")
  f:close()
  return text
end

local function as_list(v)
  if v == nil then return nil end
  if type(v) == "string" then return { v } end
  return util.strings(v)
end

-- Whether conf names any key to verify with.
function M.has_key(conf)
  return conf.secret ~= nil or conf.public_key ~= nil or conf.public_key_file ~= nil
    or conf.jwks_url ~= nil
end

-- Validates the JWT options of conf (defaults already filled) and stores
-- what verification needs in conf._jwt. `opts.require_exp`: a token
-- without a numeric exp is refused; `opts.check_exp = false`: exp is not
-- looked at; `opts.name` prefixes the cache keys; `opts.jwks_states` is the
-- plugin's per-generation table of JWKS states (one per URL). Runs at config load and
-- in `moongate -t`; reads public_key_file. Returns true or nil, why.
function M.prepare(conf, opts)
  opts = opts or {}
  local allowed = {}
  local want_hmac, want_asym = false, false
  if type(conf.algorithms) == "string" then conf.algorithms = { conf.algorithms } end
  if type(conf.algorithms) ~= "table" or #conf.algorithms == 0 then
    return nil, "algorithms: expected a non-empty list"
  end
  for _, alg in ipairs(conf.algorithms) do
    if type(alg) ~= "string" or not (HMAC[alg] or ASYM[alg]) then
      return nil, ("algorithms: unsupported algorithm %q (supported: HS256, HS384, "
        .. "HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)")
        :format(tostring(alg))
    end
    allowed[alg] = true
    if HMAC[alg] then want_hmac = true else want_asym = true end
  end
  if conf.public_key and conf.public_key_file then
    return nil, "set public_key or public_key_file, not both"
  end
  local pemtext = conf.public_key
  if conf.public_key_file then
    local text, err = read_file(conf.public_key_file)
    if not text then return nil, "public_key_file: " .. tostring(err) end
    pemtext = text
  end
  if pemtext then
    local ok = gw.crypto.verify("RS256", pemtext, "", "")
    if ok == nil then return nil, "public key: not a PEM public key or certificate" end
  end
  if want_hmac and not conf.secret then
    return nil, "algorithms lists HS* but no secret is set (an HMAC is never checked "
      .. "with a public key)"
  end
  if conf.secret and conf.secret == "" then return nil, "secret: must not be empty" end
  if conf.secret and conf.secret:find("-----BEGIN", 1, true) then
    return nil, "secret looks like a PEM key; use public_key for RS*/PS*/ES*/EdDSA"
  end
  if want_asym and not pemtext and not conf.jwks_url then
    return nil, "algorithms lists asymmetric algorithms but neither public_key, "
      .. "public_key_file nor jwks_url is set"
  end
  if not want_asym and (pemtext or conf.jwks_url) then
    return nil, "a public key or jwks_url is set but algorithms lists no asymmetric "
      .. "algorithm"
  end
  if conf.jwks_url and not conf.jwks_url:match("^https?://") then
    return nil, "jwks_url: expected an http:// or https:// URL"
  end
  if conf.jwks_ttl <= 0 then return nil, "jwks_ttl: must be positive" end
  if conf.jwks_timeout <= 0 then return nil, "jwks_timeout: must be positive" end
  if conf.jwks_refetch_interval < 0 then
    return nil, "jwks_refetch_interval: must not be negative"
  end
  if conf.leeway < 0 then return nil, "leeway: must not be negative" end
  if conf.cache_ttl < 0 then return nil, "cache_ttl: must not be negative" end
  local issuers, audiences = as_list(conf.issuer), as_list(conf.audience)
  if conf.issuer ~= nil and not issuers then return nil, "issuer: expected strings" end
  if conf.audience ~= nil and not audiences then return nil, "audience: expected strings" end
  conf._jwt = {
    allowed = allowed,
    pem = pemtext,
    issuers = issuers,
    audiences = audiences,
    require_exp = opts.require_exp and true or false,
    check_exp = opts.check_exp ~= false,
    jwks_states = opts.jwks_states or {},
    -- decoded headers of verified tokens by their base64url text: an
    -- issuer's tokens share a few headers, so each is parsed once
    headers = {},
    nheaders = 0,
    -- cache keys must not survive into a new config generation (gw.cache does)
    id = (opts.name or "jwt") .. "\0" .. gw.crypto.random(12) .. "\0",
  }
  return true
end

---------------------------------------------------------------------------
-- verification

-- the request path's calls, resolved once
local find, sub, match = string.find, string.sub, string.match
local url_decode = gw.base64.url_decode
local hmac_verify = gw.crypto.hmac_verify
local json_decode = gw.json.decode

-- The JSON object (or array) in raw, or nil.
local function json_object(raw)
  local v = json_decode(raw)
  if type(v) ~= "table" then return nil end
  return v
end

local function is_num(v)
  return type(v) == "number" and v == v and v > -HUGE and v < HUGE
end

local function contains(list, v)
  for _, x in ipairs(list) do
    if x == v then return true end
  end
  return false
end

-- exp/nbf/iat against now; true or nil, why. Cheap: also run on cache hits.
local function check_time(conf, claims, now)
  local j, leeway = conf._jwt, conf.leeway
  if j.check_exp then
    local exp = claims.exp
    if exp ~= nil then
      -- is_num, inlined: every verified token has an exp
      if type(exp) ~= "number" or exp ~= exp or exp <= -HUGE or exp >= HUGE then
        return nil, "exp is not a number"
      end
      if now >= exp + leeway then return nil, "token expired" end
    elseif j.require_exp then
      return nil, "token has no exp"
    end
  end
  if claims.nbf ~= nil then
    if not is_num(claims.nbf) then return nil, "nbf is not a number" end
    if now + leeway < claims.nbf then return nil, "token not valid yet" end
  end
  if claims.iat ~= nil then
    if not is_num(claims.iat) then return nil, "iat is not a number" end
    if now + leeway < claims.iat then return nil, "token issued in the future" end
  end
  return true
end

-- Checks the registered claims; returns true or nil, why.
function M.check_claims(conf, claims, now)
  local ok, err = check_time(conf, claims, now)
  if not ok then return nil, err end
  local j = conf._jwt
  if j.issuers then
    if type(claims.iss) ~= "string" or not contains(j.issuers, claims.iss) then
      return nil, "issuer not allowed"
    end
  end
  if j.audiences then
    local aud = claims.aud
    local found = false
    if type(aud) == "string" then
      found = contains(j.audiences, aud)
    elseif type(aud) == "table" then
      for _, a in ipairs(aud) do
        if type(a) == "string" and contains(j.audiences, a) then found = true end
      end
    end
    if not found then return nil, "audience not allowed" end
  end
  return true
end

-- Checks the signature of a compact JWS under conf (prepared). Returns the
-- decoded header and the raw payload bytes, or nil, why (a short text safe
-- to show the client). May yield (JWKS fetch). The header table is shared
-- with later tokens that carry the same header: read it, never change it.
function M.verify_jws(conf, token)
  local j = conf._jwt
  if type(token) ~= "string" or #token > MAX_TOKEN then return nil, "malformed token" end
  -- Split at the two dots with plain finds and let the base64url decoder
  -- check the alphabet: the same as matching
  -- ^([%w_-]+)%.([%w_-]*)%.([%w_-]*)$ (which, tried at every byte of a
  -- long token, cost more than the HMAC), as long as there is no '=' (the
  -- decoder takes padding, the pattern does not) and the header part is not
  -- empty. Anything else goes to the pattern, so every error is the one
  -- the pattern order gives.
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  local h64, p64, s64, header, payload, sig
  local input_end = d2 and d2 - 1 -- the signing input is token:sub(1, input_end)
  if d2 and d1 > 1 and not find(token, "=", 1, true) then
    h64 = sub(token, 1, d1 - 1)
    payload, sig = url_decode(token, d1 + 1, input_end), url_decode(token, d2 + 1)
    -- a header seen in a verified token (so base64url) is not parsed again
    header = j.headers[h64]
    if header == nil then
      local raw = url_decode(h64)
      if raw then header = json_object(raw) or false end
    end
  end
  if header == nil or not payload or not sig then
    h64, p64, s64 = match(token, "^([%w_-]+)%.([%w_-]*)%.([%w_-]*)$")
    if not h64 then return nil, "malformed token" end
    local raw
    raw, payload, sig = url_decode(h64), url_decode(p64), url_decode(s64)
    header = raw and json_object(raw)
    input_end = #h64 + #p64 + 1
  end
  if not header then return nil, "malformed token header" end
  local alg = header.alg
  if type(alg) ~= "string" then return nil, "token has no alg" end
  -- "none" in any spelling is never in the allow-list; say so plainly
  if #alg == 4 and alg:lower() == "none" then return nil, "unsigned tokens are not accepted" end
  if not j.allowed[alg] then return nil, "algorithm not allowed" end
  if header.crit ~= nil then return nil, "unsupported critical header" end
  if not sig or sig == "" then return nil, "bad signature" end
  if ES_SIG_LEN[alg] and #sig ~= ES_SIG_LEN[alg] then return nil, "bad signature" end
  if not payload then return nil, "malformed token payload" end
  local signing_input = sub(token, 1, input_end) -- h64 .. "." .. p64

  local valid = false
  local md = HMAC[alg]
  if md then
    valid = hmac_verify(md, conf.secret, signing_input, sig)
  else
    local keys
    if j.pem then
      keys = { j.pem }
    else
      local kid = header.kid
      if kid ~= nil and type(kid) ~= "string" then return nil, "bad kid" end
      keys = jwks_keys(conf, alg, kid)
      if #keys == 0 then return nil, "no key for this token" end
    end
    for _, pemtext in ipairs(keys) do
      if gw.crypto.verify(alg, pemtext, signing_input, sig) then
        valid = true
        break
      end
    end
  end
  if not valid then return nil, "bad signature" end
  if j.headers[h64] == nil then
    -- only signed headers are remembered: a forger cannot fill the memo
    if j.nheaders >= HEADER_MEMO_MAX then j.headers, j.nheaders = {}, 0 end
    j.headers[h64] = header
    j.nheaders = j.nheaders + 1
  end
  return header, payload
end

-- Verifies a JWT under conf: signature, then exp/nbf/iat/iss/aud. Returns
-- the claims table, or nil, why. No cache.
function M.verify(conf, token)
  local header, payload = M.verify_jws(conf, token)
  if not header then return nil, payload end
  local claims = json_decode(payload)
  if type(claims) ~= "table" or claims[1] ~= nil then
    return nil, "token payload is not a JSON object"
  end
  local ok, err = M.check_claims(conf, claims, gw.now())
  if not ok then return nil, err end
  return claims
end

-- M.verify with the verified-token cache in front: a hit is re-checked
-- against exp/nbf/iat; an entry never outlives exp + leeway.
function M.authenticate(conf, token)
  local ttl = conf.cache_ttl
  local key = ttl > 0 and type(token) == "string" and (conf._jwt.id .. token) or nil
  if key then
    local claims = gw.cache:get(key)
    if claims then
      local ok, err = check_time(conf, claims, gw.now())
      if ok then return claims end
      gw.cache:delete(key)
      return nil, err
    end
  end
  local claims, err = M.verify(conf, token)
  if not claims then return nil, err end
  if key then
    if is_num(claims.exp) then ttl = math.min(ttl, claims.exp + conf.leeway - gw.now()) end
    if ttl > 0 then gw.cache:set(key, claims, ttl) end
  end
  return claims
end

---------------------------------------------------------------------------
-- where tokens come from

-- The token of `Authorization: Bearer <token>` (scheme case-insensitive), or nil.
function M.bearer(req)
  local auth = req:header("authorization")
  if not auth or #auth < 8 or auth:byte(7) ~= 32 or auth:sub(1, 6):lower() ~= "bearer" then
    return nil
  end
  -- plain finds, not a class tested at every byte of the token
  local token = util.trim(auth:sub(8))
  if token == "" or token:find(" ", 1, true) or token:find("\t", 1, true) then return nil end
  return token
end

local function unescape(s)
  s = s:gsub("%+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The percent-decoded value of query parameter `name`, or nil.
function M.query_value(req, name)
  local q = req.query
  if not q or q == "" then return nil end
  for pair in q:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    if unescape(k) == name then return unescape(v) end
  end
  return nil
end

return M
