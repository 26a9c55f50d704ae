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
    users = { type = "table", required = true },
    realm = { type = "string", default = "moongate" },
    hide_credentials = { type = "boolean", default = false },
    user_header = { type = "string|boolean", default = "X-Consumer-Username" },
  },
}

local function unhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

function M.check(conf)
  local users = {}
  local n = 0
  for name, secret in pairs(conf.users) do
    if type(name) ~= "string" or name == "" or name:find(":", 1, true) then
      return nil, "users: names must be non-empty strings without ':'"
    end
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
  if conf.user_header and not conf.user_header:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    return nil, "user_header: not a valid header name"
  end
  conf._users = users
  -- as Kong, APISIX and Traefik send it: Basic realm="..."
  conf._challenge = { ["WWW-Authenticate"] = ('Basic realm="%s"'):format(conf.realm) }
  conf._dummy = { alg = "sha256", digest = gw.crypto.digest("sha256", gw.crypto.random(16)) }
  return true
end

local function deny(conf, req, why)
  return util.json_error(req, 401, why, conf._challenge)
end

function M.access(conf, req)
  if conf.user_header then req:remove_header(conf.user_header) end
  local auth = req:header("authorization")
  local b64 = auth and auth:match("^[Bb][Aa][Ss][Ii][Cc] +([%w+/=]+)%s*$")
  if not b64 then return deny(conf, req, "authentication required") end
  local raw = gw.base64.decode(b64)
  local user, pass = (raw or ""):match("^([^:]*):(.*)$")
  if not user then return deny(conf, req, "malformed credentials") end
  local entry = conf._users[user]
  local known = entry ~= nil
  entry = entry or conf._dummy
  local ok = gw.crypto.equal(gw.crypto.digest(entry.alg, pass), entry.digest)
  if not (ok and known) then return deny(conf, req, "invalid credentials") end
  req.ctx.user = user
  if conf.user_header then req:set_header(conf.user_header, user) end
  if conf.hide_credentials then req:remove_header("Authorization") end
end

return M
