-- The `gw` module plugins use (PRODUCT.md): available as the global `gw`
-- and as require "gw". Every call that waits yields the request coroutine.
local core = require "moongate.core"
local cjson = require("cjson").new()
if cjson.encode_empty_table_as_object then cjson.encode_empty_table_as_object(true) end
if cjson.decode_max_depth then cjson.decode_max_depth(128) end

-- decode goes through cjson.safe, the same parser configured the same, which
-- catches its errors in C: no Lua-level pcall on every decode
local okc_safe, cjson_safe = pcall(require, "cjson.safe")
local safe_decode
if okc_safe and cjson_safe.new then
  local j = cjson_safe.new()
  if j.decode_max_depth then j.decode_max_depth(128) end
  safe_decode = j.decode
end

local gw = {
  sleep = core.sleep,
  now = core.now,
  log = core.log,
}

gw.json = {
  -- misuse (a function, NaN, a sparse array) raises at the caller's line
  encode = function(v)
    local ok, s = pcall(cjson.encode, v)
    if ok then return s end
    error("gw.json.encode: " .. tostring(s), 2)
  end,
  decode = safe_decode and function(s)
    if type(s) ~= "string" then error("gw.json.decode: expected a string", 2) end
    return safe_decode(s)
  end or function(s)
    if type(s) ~= "string" then error("gw.json.decode: expected a string", 2) end
    local ok, v = pcall(cjson.decode, s)
    if ok then return v end
    return nil, v
  end,
  null = cjson.null,
}

local ok, base64 = pcall(require, "moongate.base64")
if ok then gw.base64 = base64 end
local okc, crypto = pcall(require, "moongate.crypto")
if okc then gw.crypto = crypto end
gw.redis = require("moongate.redis").open
gw.http = require "moongate.http"
gw.shared = require("moongate.shared").open

gw.cache = require("moongate.cache").new(10000)

package.loaded.gw = gw
_G.gw = gw
return gw
