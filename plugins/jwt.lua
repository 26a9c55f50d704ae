-- jwt: verifies a JSON Web Token (RFC 7519, JWS compact form, RFC 7515) and
-- puts its claims in req.ctx.jwt. doc/plugins/jwt.md lists every option.
--
-- Parsing, key handling (public keys, JWKS), the claim rules and the
-- verified-token cache live in lua/moongate/jwt_core.lua, shared with
-- redis_credentials: the alg comes from the allow-list and the key type,
-- never from the token; "none" is refused in any spelling. Tokens are
-- never logged.
local gw = gw
local core = require "moongate.jwt_core"
local util = require "moongate.plugin_util"

local M = {
  name = "jwt",
  priority = 1450, -- Kong's jwt plugin priority: after cors and request ids
  schema = {
    algorithms = { type = "string|table", default = { "HS256" } },
    cookie = "string",
    query = "string",
    claims_to_headers = "table",
  },
}
for k, v in pairs(core.SCHEMA) do M.schema[k] = v end

M._jwk_to_key = core.jwk_to_key

-- JWKS states by URL: shared by this plugin's routes, fresh on every reload
local jwks_states = {}

-- Validates conf and fills the derived fields (conf._jwt). Runs at load
-- and in `moongate -t`; fills defaults itself so it can be called directly.
function M.check(conf)
  if conf._checked then return true end
  for k, spec in pairs(M.schema) do
    if conf[k] == nil and type(spec) == "table" and spec.default ~= nil then
      conf[k] = spec.default
    end
  end
  local ok, err = core.prepare(conf, { name = "jwt", jwks_states = jwks_states })
  if not ok then return nil, err end
  if conf.claims_to_headers then
    for claim, header in pairs(conf.claims_to_headers) do
      if type(claim) ~= "string" or type(header) ~= "string"
          or not header:match(util.TOKEN) then
        return nil, "claims_to_headers: expected { claim = \"Header-Name\" }"
      end
    end
  end
  conf._checked = true
  return true
end

local function checked(conf)
  if not conf._checked then
    local ok, err = M.check(conf)
    if not ok then error("jwt: bad configuration: " .. tostring(err), 3) end
  end
end

-- Checks the signature of a compact JWS under conf: the decoded header and
-- the raw payload, or nil, why. May yield (JWKS fetch).
function M._verify_jws(token, conf)
  checked(conf)
  return core.verify_jws(conf, token)
end

-- Verifies a JWT under conf (no cache): the claims, or nil, why.
function M._verify(token, conf)
  checked(conf)
  return core.verify(conf, token)
end

---------------------------------------------------------------------------
-- the access phase

-- The token, or nil.
local function find_token(conf, req)
  local t = core.bearer(req)
  if t then return t end
  if conf.cookie then
    t = req:cookie(conf.cookie) -- surrounding quotes already stripped
    if t and t ~= "" then return t end
  end
  if conf.query then
    t = core.query_value(req, conf.query)
    if t and t ~= "" then return t end
  end
  return nil
end

-- Every refusal, a missing token included, carries the challenge PRODUCT.md
-- names, exactly; the reason is in the JSON body only.
local CHALLENGE = { ["WWW-Authenticate"] = 'Bearer error="invalid_token"' }

local function reject(req, why)
  return util.json_error(req, 401, why or "missing token", CHALLENGE)
end

local function header_value(v)
  local t = type(v)
  if t == "string" then
    return v
  elseif t == "number" then
    local i = math.tointeger(v)
    return i and tostring(i) or string.format("%.17g", v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    return gw.json.encode(v)
  end
  return nil
end

function M.access(conf, req)
  local map = conf.claims_to_headers
  if map then
    for _, header in pairs(map) do req:remove_header(header) end
  end
  local token = find_token(conf, req)
  if not token then return reject(req, nil) end

  local claims, err = core.authenticate(conf, token)
  if not claims then return reject(req, err) end
  req.ctx.jwt = claims
  if map then
    for claim, header in pairs(map) do
      local v = header_value(claims[claim])
      if v and not v:find("[%z\r\n]") then req:set_header(header, v) end
    end
  end
end

return M
