-- redis_credentials: the hyper-auth-proxy scenario. A JWT (from the jwt
-- plugin earlier on the route, or read and verified here) names a session;
-- the session's credentials come from Redis (optionally AES-256-GCM
-- encrypted) and reach the upstream as `Authorization: Basic ...`.
-- Fails closed: Redis down or slow → 503. Never logs tokens or credentials.
local ALGS = { HS256 = "sha256", HS384 = "sha384", HS512 = "sha512" }

local function json_error(req, status, msg, extra)
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(extra or {}) do headers[k] = v end
  return req:respond(status, gw.json.encode({ error = msg }), headers)
end

-- Verifies an HS256/384/512 token with the configured secret. The
-- algorithm must be in the allow-list: the token's header alone never
-- decides ("none" and anything unlisted are refused).
local function verify(conf, token)
  local h64, p64, s64 = token:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]*)$")
  if not h64 then return nil, "malformed token" end
  local hjson, pjson, sig = gw.base64.url_decode(h64), gw.base64.url_decode(p64),
                            gw.base64.url_decode(s64)
  if not (hjson and pjson and sig) then return nil, "malformed token" end
  local header, claims = gw.json.decode(hjson), gw.json.decode(pjson)
  if type(header) ~= "table" or type(claims) ~= "table" then return nil, "malformed token" end
  local alg = header.alg
  if type(alg) ~= "string" or not conf._algs[alg] or not ALGS[alg] then
    return nil, "algorithm not allowed"
  end
  local want = gw.crypto.hmac(ALGS[alg], conf.secret, h64 .. "." .. p64)
  if not gw.crypto.equal(want, sig) then return nil, "bad signature" end
  local now, leeway = gw.now(), conf.leeway
  if conf.check_exp then
    if type(claims.exp) ~= "number" then return nil, "token has no exp" end
    if now > claims.exp + leeway then return nil, "token expired" end
  end
  if type(claims.nbf) == "number" and now + leeway < claims.nbf then
    return nil, "token not yet valid"
  end
  return claims
end

-- Verified tokens, keyed by the token text, for cache_ttl seconds and
-- never past exp + leeway; the time claims are checked again on a hit.
local function cached(conf, token)
  if conf.cache_ttl <= 0 then return nil end
  local claims = gw.cache:get(conf._id .. token)
  if not claims then return nil end
  local now, leeway = gw.now(), conf.leeway
  if conf.check_exp and now > claims.exp + leeway then return nil end
  if type(claims.nbf) == "number" and now + leeway < claims.nbf then return nil end
  return claims
end

local function remember(conf, token, claims)
  local ttl = conf.cache_ttl
  if type(claims.exp) == "number" then ttl = math.min(ttl, claims.exp + conf.leeway - gw.now()) end
  if ttl > 0 then gw.cache:set(conf._id .. token, claims, ttl) end
end

local function token_of(conf, req)
  if conf.source == "header" then
    local auth = req:header("authorization")
    return auth and auth:match("^[Bb]earer%s+(%S+)%s*$")
  end
  local raw = req:cookie(conf.cookie) -- surrounding quotes already stripped
  if not raw then return nil end
  -- hyper-auth-proxy stores base64(JWT); accept a bare JWT as well
  if raw:match("^[%w_-]+%.[%w_-]+%.[%w_-]*$") then return raw end
  return gw.base64.decode(raw)
end

local function decrypt(conf, stored)
  local raw = gw.base64.decode(stored)
  if not raw or #raw < 12 + 16 + 1 then return nil end
  local nonce, ct, tag = raw:sub(1, 12), raw:sub(13, -17), raw:sub(-16)
  return gw.crypto.decrypt("aes-256-gcm", conf._key, nonce, ct, tag)
end

local function from_hex(s)
  if not s or #s ~= 64 or s:find("[^%x]") then return nil end
  return (s:gsub("..", function(b) return string.char(tonumber(b, 16)) end))
end

return {
  name = "redis_credentials",
  priority = 1000, -- after jwt (1450), so req.ctx.jwt is there when both run
  schema = {
    secret = "string",
    algorithms = { type = "table", default = { "HS512" } },
    leeway = { type = "number", default = 0 },
    check_exp = { type = "boolean", default = true },
    source = { type = "string", one_of = { "cookie", "header" }, default = "cookie" },
    cookie = { type = "string", default = "Authorization" },
    cache_ttl = { type = "number", default = 300 },
    strip_cookie = { type = "boolean", default = true },
    claim = { type = "string", default = "sid" },
    key_prefix = { type = "string", default = "" },
    redis = { type = "string", default = "default" },
    cipher = { type = "string", one_of = { "aes-256-gcm" } },
    key_hex = "string",
    key_env = "string",
    decode = "function",
    encode = { type = "boolean", default = true },
    header = { type = "string", default = "Authorization" },
  },

  check = function(conf)
    if conf.cache_ttl < 0 then return nil, "cache_ttl: must not be negative" end
    -- cache keys must not survive into a new config generation (gw.cache does)
    conf._id = "redis_credentials\0" .. gw.crypto.random(12) .. "\0"
    conf._algs = {}
    for _, a in ipairs(conf.algorithms) do
      if not ALGS[a] then return nil, "algorithms: only HS256, HS384 and HS512 are supported" end
      conf._algs[a] = true
    end
    if conf.cipher then
      local hex = conf.key_hex or (conf.key_env and os.getenv(conf.key_env))
      conf._key = from_hex(hex)
      if not conf._key then
        return nil, "cipher needs a 32-byte key as 64 hex digits in key_hex or in $key_env"
      end
    end
    return true
  end,

  access = function(conf, req)
    local claims = req.ctx.jwt
    local token
    if not claims then
      if not conf.secret then
        return json_error(req, 401, "no verified token (no jwt plugin ran and no secret is set)")
      end
      token = token_of(conf, req)
      if not token then return json_error(req, 401, "missing token") end
      claims = cached(conf, token)
      if not claims then
        local err
        claims, err = verify(conf, token)
        if not claims then return json_error(req, 401, "invalid token: " .. err) end
        remember(conf, token, claims)
      end
    end
    local sid = claims[conf.claim]
    if type(sid) ~= "string" and math.type(sid) ~= "integer" then
      return json_error(req, 401, "token has no " .. conf.claim .. " claim")
    end
    local value, err = gw.redis(conf.redis):call("GET", conf.key_prefix .. tostring(sid))
    if err then
      gw.log("error", "redis_credentials: session store: ", err)
      return json_error(req, 503, "session store unavailable")
    end
    if value == nil then return json_error(req, 401, "unknown session") end
    local record = gw.json.decode(value)
    local creds = type(record) == "table" and record.credentials
    if type(creds) ~= "string" then
      gw.log("error", "redis_credentials: session record has no credentials string")
      return json_error(req, 500, "invalid session record")
    end
    if conf.decode then
      creds = conf.decode(creds)
    elseif conf.cipher then
      creds = decrypt(conf, creds)
    end
    if type(creds) ~= "string" then
      gw.log("error", "redis_credentials: credentials could not be decrypted")
      return json_error(req, 500, "credentials could not be decrypted")
    end
    req:set_header(conf.header, "Basic " .. (conf.encode and gw.base64.encode(creds) or creds))
    if conf.source == "cookie" and conf.strip_cookie and token then
      req:remove_cookie(conf.cookie)
    end
  end,

  _verify = verify,
}
