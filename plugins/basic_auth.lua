-- basic_auth: HTTP Basic authentication (RFC 7617) against a user list in
-- the config. Users are "name:hash" lines as htpasswd writes them (bcrypt
-- $2y$/$2b$/$2a$, $apr1$, {SHA}, $5$, $6$, $1$), as Traefik takes them, or
-- "sha256:<hex>"/"sha512:<hex>" digests; plain passwords only with
-- plaintext = true. Hashes are checked by gw.crypto.password_verify (kept
-- code: libxcrypt, OpenSSL) and compared in constant time; an unknown user
-- costs the same work as a known one. A success with a slow hash is
-- remembered for cache_ttl seconds (per worker), so bcrypt is not paid on
-- every request. On success the user name is in req.ctx.user (and the
-- header `user_header`, which clients cannot spoof); otherwise 401 with
-- WWW-Authenticate: Basic realm="...". doc/plugins/basic_auth.md.
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
    plaintext = { type = "boolean", default = false }, -- allow plain passwords
    cache_ttl = { type = "number", default = 60 },     -- remember successes (slow hashes)
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

-- What a user's secret is: { kind = "hash", hash = ... } (password_verify),
-- { kind = "digest", alg, digest } (sha256:/sha512: hex, or a plain password
-- hashed at load with plaintext = true), or nil, why.
local function secret_entry(conf, name, secret)
  if type(secret) ~= "string" then
    return nil, ("users.%s: expected a password hash (htpasswd)"):format(name)
  end
  local fmt = gw.crypto.password_format(secret)
  if fmt then
    return { kind = "hash", hash = secret, slow = fmt ~= "sha1" }
  end
  local alg, hexd = secret:match("^(sha%d+):(%x+)$")
  if alg then
    local len = ({ sha256 = 64, sha512 = 128 })[alg]
    if not len or #hexd ~= len then
      return nil, ("users.%s: expected sha256:<64 hex> or sha512:<128 hex>"):format(name)
    end
    return { kind = "digest", alg = alg, digest = unhex(hexd:lower()) }
  end
  if conf.plaintext then
    return { kind = "digest", alg = "sha256", digest = gw.crypto.digest("sha256", secret) }
  end
  -- never take a hash we cannot read (or anything else) as the password itself
  if secret:match("^%$") or secret:match("^{") then
    return nil, ("users.%s: unsupported or malformed password hash (bcrypt $2y$/$2b$/$2a$, "
      .. "$apr1$, {SHA}, $5$, $6$ or $1$, as htpasswd writes them)"):format(name)
  end
  return nil, ("users.%s: not a password hash; write one with htpasswd -nB %s "
    .. "(or set plaintext = true to allow plain passwords)"):format(name, name)
end

function M.check(conf)
  if conf.users and conf.credentials then return nil, "set users or credentials, not both" end
  local given, err = user_map(conf.users or conf.credentials or {})
  if not given then return nil, err end
  local users = {}
  local n = 0
  local names = {}
  for name in pairs(given) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local entry, why = secret_entry(conf, name, given[name])
    if not entry then return nil, why end
    users[name] = entry
    n = n + 1
  end
  if n == 0 then return nil, "users: at least one user is needed" end
  if conf.realm:find('["\\%c]') then return nil, "realm: no quotes or control characters" end
  if conf.user_header == true then conf.user_header = "X-Consumer-Username" end
  if conf.anonymous == "" then return nil, "anonymous: must not be empty" end
  if conf.user_header and not conf.user_header:match(util.TOKEN) then
    return nil, "user_header: not a valid header name"
  end
  if conf.cache_ttl < 0 then return nil, "cache_ttl: must be at least 0" end
  conf._users = users
  -- as Kong, APISIX and Traefik send it: Basic realm="..."
  conf._challenge = { ["WWW-Authenticate"] = ('Basic realm="%s"'):format(conf.realm) }
  -- an unknown user is checked against the first user's secret (same work)
  conf._dummy = users[names[1]]
  -- cache keys are MACs under a key of this config: no password is kept,
  -- and a reload (new key) forgets every success
  conf._cache_key = gw.crypto.random(32)
  return true
end

-- True if `password` is `entry`'s. Constant-time compares inside.
local function verify(entry, password)
  if entry.kind == "hash" then
    return gw.crypto.password_verify(entry.hash, password) == true
  end
  return gw.crypto.equal(gw.crypto.digest(entry.alg, password), entry.digest)
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
  local key
  if known and entry.slow and conf.cache_ttl > 0 then
    key = "basic_auth\0" .. gw.crypto.hmac("sha256", conf._cache_key, user .. "\0" .. password)
    if gw.cache:get(key) then return pass(conf, req, user) end
  end
  local ok = verify(entry or conf._dummy, password)
  if not (ok and known) then return deny(conf, req, "invalid credentials") end
  if key then gw.cache:set(key, true, conf.cache_ttl) end
  pass(conf, req, user)
end

return M
