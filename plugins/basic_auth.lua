-- basic_auth: HTTP Basic authentication (RFC 7617) against a user list in
-- the config: users = { alice = "password", bob = "sha256:<hex>" } (also
-- "sha512:<hex>"). Passwords are compared as digests with gw.crypto.equal,
-- so the time taken says nothing about the password, and an unknown user
-- costs the same as a known one. On success the user name is in
-- req.ctx.user (and the header `user_header`, which clients cannot spoof);
-- otherwise 401 with WWW-Authenticate: Basic realm="...". doc/plugins/basic_auth.md.
local gw = gw
local util = require "moongate.plugin_util"

local M = {
  name = "basic_auth",
  priority = 1100, -- Kong's basic-auth
  schema = {
    users = "table",
    credentials = "table", -- another name for users
    realm = { type = "string", default = "moongate" },
    hide_credentials = { type = "boolean", default = false },
    user_header = { type = "string|boolean", default = "X-Consumer-Username" },
    anonymous = "string",  -- as Kong: let a failed request through as this user
  },
}

local ANON_HEADER = "X-Anonymous-Consumer" -- Kong's marker for anonymous requests

-- users/credentials entries: name = password, or list items "name:password"
-- (Traefik's users form) or { username = ..., password = ... } (Kong's and
-- APISIX's credential objects). Returns { name = secret } or nil, why.
local function user_map(t)
  local out = {}
  for k, v in pairs(t) do
    local name, secret = k, v
    if math.type(k) == "integer" then
      if type(v) == "string" then
        name, secret = v:match("^([^:]*):(.*)$")
        if not name then return nil, ("users[%d]: expected \"name:password\""):format(k) end
      elseif type(v) == "table" then
        name, secret = v.username, v.password
      else
        return nil, ("users[%d]: expected \"name:password\" or { username, password }")
          :format(k)
      end
    end
    if type(name) ~= "string" or name == "" or name:find(":", 1, true) then
      return nil, "users: names must be non-empty strings without ':'"
    end
    if out[name] ~= nil then return nil, ("users: %s listed twice"):format(name) end
    out[name] = secret
  end
  return out
end

local function unhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

function M.check(conf)
  if conf.users and conf.credentials then return nil, "set users or credentials, not both" end
  local given, err = user_map(conf.users or conf.credentials or {})
  if not given then return nil, err end
  local users = {}
  local n = 0
  for name, secret in pairs(given) do
    if type(secret) ~= "string" then
      return nil, ("users.%s: expected a password or \"sha256:<hex>\""):format(name)
    end
    local alg, hexd = secret:match("^(sha%d+):(%x+)$")
    if alg then
      local len = ({ sha256 = 64, sha512 = 128 })[alg]
      if not len or #hexd ~= len then
        return nil, ("users.%s: expected sha256:<64 hex> or sha512:<128 hex>"):format(name)
      end
      users[name] = { alg = alg, digest = unhex(hexd:lower()) }
    else
      users[name] = { alg = "sha256", digest = gw.crypto.digest("sha256", secret) }
    end
    n = n + 1
  end
  if n == 0 then return nil, "users: at least one user is needed" end
  if conf.realm:find('["\\%c]') then return nil, "realm: no quotes or control characters" end
  if conf.user_header == true then conf.user_header = "X-Consumer-Username" end
  if conf.anonymous == "" then return nil, "anonymous: must not be empty" end
  if conf.user_header and not conf.user_header:match(util.TOKEN) then
    return nil, "user_header: not a valid header name"
  end
  conf._users = users
  -- as Kong, APISIX and Traefik send it: Basic realm="..."
  conf._challenge = { ["WWW-Authenticate"] = ('Basic realm="%s"'):format(conf.realm) }
  conf._dummy = { alg = "sha256", digest = gw.crypto.digest("sha256", gw.crypto.random(16)) }
  return true
end

local function pass(conf, req, user)
  req.ctx.user = user
  if conf.user_header then req:set_header(conf.user_header, user) end
  if conf.hide_credentials then req:remove_header("Authorization") end
end

local function deny(conf, req, why)
  if conf.anonymous then
    req.ctx.anonymous = true
    req:set_header(ANON_HEADER, "true")
    return pass(conf, req, conf.anonymous)
  end
  return util.json_error(req, 401, why, conf._challenge)
end

function M.access(conf, req)
  if conf.user_header then req:remove_header(conf.user_header) end
  req:remove_header(ANON_HEADER) -- never the client's
  local auth = req:header("authorization")
  local b64 = auth and auth:match("^[Bb][Aa][Ss][Ii][Cc] +([%w+/=]+)%s*$")
  if not b64 then return deny(conf, req, "authentication required") end
  local raw = gw.base64.decode(b64)
  local user, password = (raw or ""):match("^([^:]*):(.*)$")
  if not user then return deny(conf, req, "malformed credentials") end
  local entry = conf._users[user]
  local known = entry ~= nil
  entry = entry or conf._dummy
  local ok = gw.crypto.equal(gw.crypto.digest(entry.alg, password), entry.digest)
  if not (ok and known) then return deny(conf, req, "invalid credentials") end
  pass(conf, req, user)
end

return M
