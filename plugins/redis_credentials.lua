-- redis_credentials: the hyper-auth-proxy scenario. A JWT (from the jwt
-- plugin earlier on the route, or read and verified here) names a session;
-- the session's credentials come from Redis (optionally AES-256-GCM
-- encrypted) and reach the upstream as `Authorization: Basic ...`.
-- Fails closed: Redis down or slow → 503. Never logs tokens or credentials.
local core = require "moongate.jwt_core"
local util = require "moongate.plugin_util"
local json_error = util.json_error
local type, byte, sub = type, string.byte, string.sub
-- what util.trim strips (%s); a token without any at its ends skips it
local BLANK = { [9] = true, [10] = true, [11] = true, [12] = true, [13] = true, [32] = true }
local b64decode, b64encode = gw.base64.decode, gw.base64.encode
local json_decode = gw.json.decode

-- JWKS states by URL: shared by this plugin's routes, fresh on every reload
local jwks_states = {}

local function token_of(conf, req)
  if conf.source == "header" then return core.bearer(req) end
  local raw = req:cookie(conf.cookie) -- surrounding quotes already stripped
  if not raw then return nil end
  -- hyper-auth-proxy stores base64(JWT); accept a bare JWT as well (plain
  -- find: base64 has no dots, a JWT always has two)
  if raw:find(".", 1, true) then return raw end
  local token = b64decode(raw)
  if not token then return nil end
  -- `echo "$jwt" | base64` also encodes the newline, and hyper-auth-proxy's
  -- own clients encode the JWT in double quotes (it strips them, src/lib.rs)
  local first, last = byte(token, 1), byte(token, -1)
  if BLANK[first] or BLANK[last] then
    token = util.trim(token)
    first, last = byte(token, 1), byte(token, -1)
  end
  if first == 34 and last == 34 and #token >= 2 then token = sub(token, 2, -2) end
  return token
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

local M = {
  name = "redis_credentials",
  priority = 1000, -- after jwt (1450), so req.ctx.jwt is there when both run
  schema = {
    algorithms = { type = "string|table", default = { "HS512" } },
    check_exp = { type = "boolean", default = true },
    source = { type = "string", one_of = { "cookie", "header" }, default = "cookie" },
    cookie = { type = "string", default = "Authorization" },
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
}
-- the jwt plugin's key and claim options (secret, public_key, jwks_url,
-- issuer, audience, leeway, cache_ttl...), verified by the same code
for k, v in pairs(core.SCHEMA) do M.schema[k] = v end

function M.check(conf)
  if conf.cache_ttl < 0 then return nil, "cache_ttl: must not be negative" end
  if conf.leeway < 0 then return nil, "leeway: must not be negative" end
  if not conf.header:match(util.TOKEN) then return nil, "header: not a valid header name" end
  -- without a key the claims must come from a jwt plugin earlier on the route
  if core.has_key(conf) then
    local ok, err = core.prepare(conf, { name = "redis_credentials",
                                         require_exp = conf.check_exp,
                                         check_exp = conf.check_exp,
                                         jwks_states = jwks_states })
    if not ok then return nil, err end
  end
  if conf.cipher then
    local hex = conf.key_hex or (conf.key_env and os.getenv(conf.key_env))
    conf._key = from_hex(hex)
    if not conf._key then
      return nil, "cipher needs a 32-byte key as 64 hex digits in key_hex or in $key_env"
    end
  end
  return true
end

-- A named handle looks its pool up in the current config at each call
-- (PRODUCT.md gw.redis), so one per conf serves every request. Made on first
-- use, inside the caller's pcall: an unknown name raises there (503).
local function get_record(conf, key)
  local red = conf._redis
  if not red then
    red = gw.redis(conf.redis)
    conf._redis = red
  end
  return red:call("GET", key)
end

function M.access(conf, req)
  local claims = req.ctx.jwt
  if not claims then
    if not conf._jwt then
      return json_error(req, 401, "no verified token (no jwt plugin ran and no key is set)")
    end
    local token = token_of(conf, req)
    if not token then return json_error(req, 401, "missing token") end
    local err
    claims, err = core.authenticate(conf, token)
    if not claims then return json_error(req, 401, "invalid token: " .. err) end
  end
  local sid = claims[conf.claim]
  if type(sid) ~= "string" and math.type(sid) ~= "integer" then
    return json_error(req, 401, "token has no " .. conf.claim .. " claim")
  end
  -- pcall: an unknown redis name raises; that is an outage too (fail closed)
  -- an integer sid concatenates as tostring writes it
  local ok, value, err = pcall(get_record, conf, conf.key_prefix .. sid)
  if not ok then value, err = nil, value end
  if err then
    gw.log("error", "redis_credentials: session store: ", err)
    return json_error(req, 503, "session store unavailable")
  end
  if value == nil then return json_error(req, 401, "unknown session") end
  local record = json_decode(value)
  local creds = type(record) == "table" and record.credentials
  if type(creds) ~= "string" then
    gw.log("error", "redis_credentials: session record has no credentials string")
    return json_error(req, 500, "invalid session record")
  end
  if conf.decode or conf.cipher then
    if conf.decode then
      creds = conf.decode(creds)
    else
      creds = decrypt(conf, creds)
    end
    if type(creds) ~= "string" then
      gw.log("error", "redis_credentials: credentials could not be decrypted")
      return json_error(req, 500, "credentials could not be decrypted")
    end
  end
  -- stored with `echo`: one trailing newline is dropped, as hyper-auth-proxy
  -- does (set_basic_auth)
  if creds:byte(-1) == 10 then creds = creds:sub(1, -2) end
  if conf.encode then
    creds = b64encode(creds)
  elseif creds:find("[\0\r\n]") then -- as stored, they must fit in a header
    gw.log("error", "redis_credentials: credentials contain CR, LF or NUL (encode = false)")
    return json_error(req, 500, "invalid credentials")
  end
  req:set_header(conf.header, "Basic " .. creds)
  -- the token cookie stays here, also when a jwt plugin read the token
  if conf.source == "cookie" and conf.strip_cookie then
    req:remove_cookie(conf.cookie)
  end
end

-- Verifies a token under a checked conf, without the cache: claims, or nil, why.
M._token_of = token_of

function M._verify(conf, token)
  return core.verify(conf, token)
end

return M
