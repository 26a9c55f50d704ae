-- ip_restriction: allows or denies requests by client address, as Kong's
-- ip-restriction and APISIX's ip-restriction. `allow` and `deny` are lists
-- of IPv4/IPv6 addresses and CIDR blocks. An address in `deny` is refused;
-- with a non-empty `allow`, only addresses in it pass. Refused: `status`
-- (default 403) with a JSON body. IPv4-mapped IPv6 addresses
-- (::ffff:1.2.3.4) count as their IPv4 address. doc/plugins/ip_restriction.md.
local util = require "moongate.plugin_util"

local M = {
  name = "ip_restriction",
  priority = 990, -- Kong's ip-restriction
  schema = {
    allow = "table|string",
    deny = "table|string",
    status = { type = "integer", default = 403 },
    message = { type = "string", default = "forbidden" },
    whitelist = "table|string", -- APISIX's names for allow and deny
    blacklist = "table|string",
  },
}

-- "1.2.3.4" -> 4 bytes, or nil
local function parse4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  local out = {}
  for i, x in ipairs { a, b, c, d } do
    if #x > 3 or (#x > 1 and x:sub(1, 1) == "0") then return nil end
    local n = tonumber(x)
    if n > 255 then return nil end
    out[i] = n
  end
  return string.char(table.unpack(out))
end

-- "2001:db8::1", "::ffff:1.2.3.4" -> 16 bytes, or nil
local function parse6(s)
  if not s:find(":", 1, true) then return nil end
  local tail4
  local v4 = s:match(":(%d+%.%d+%.%d+%.%d+)$")
  if v4 then
    tail4 = parse4(v4)
    if not tail4 then return nil end
    s = s:sub(1, #s - #v4) .. "0:0"
  end
  local head, tail = s, nil
  local dc = s:find("::", 1, true)
  if dc then
    head, tail = s:sub(1, dc - 1), s:sub(dc + 2)
    if tail:find("::", 1, true) then return nil end
  end
  local function groups(part)
    local g = {}
    if part == "" then return g end
    for x in (part .. ":"):gmatch("([^:]*):") do
      if not x:match("^%x%x?%x?%x?$") then return nil end
      g[#g + 1] = tonumber(x, 16)
    end
    return g
  end
  local hg, tg = groups(head), groups(tail or "")
  if not hg or not tg then return nil end
  local all
  if dc then
    local missing = 8 - #hg - #tg
    if missing < 1 then return nil end
    all = hg
    for _ = 1, missing do all[#all + 1] = 0 end
    for _, x in ipairs(tg) do all[#all + 1] = x end
  else
    if #hg ~= 8 then return nil end
    all = hg
  end
  local bytes = {}
  for _, x in ipairs(all) do
    bytes[#bytes + 1] = string.char(x >> 8, x & 0xff)
  end
  local out = table.concat(bytes)
  if tail4 then out = out:sub(1, 12) .. tail4 end
  return out
end

local MAPPED = string.rep("\0", 10) .. "\xff\xff"

-- An address as bytes: 4 for IPv4 (mapped IPv6 included), 16 for IPv6.
local function parse_ip(s)
  local b = parse4(s)
  if b then return b end
  b = parse6(s)
  if b and b:sub(1, 12) == MAPPED then return b:sub(13) end
  return b
end
M._parse_ip = parse_ip

-- "10.0.0.0/8" -> { bytes, prefix bits }
local function parse_cidr(s)
  local addr, bits = s:match("^([^/]+)/(%d+)$")
  addr = addr or s
  local b = parse_ip(addr)
  if not b then return nil end
  local max = #b * 8
  local n = bits and tonumber(bits) or max
  if n > max then return nil end
  return { bytes = b, bits = n }
end
M._parse_cidr = parse_cidr

local function in_block(ip, block)
  if #ip ~= #block.bytes then return false end
  local full = block.bits // 8
  if full > 0 and ip:sub(1, full) ~= block.bytes:sub(1, full) then return false end
  local rest = block.bits % 8
  if rest == 0 then return true end
  local mask = (0xff << (8 - rest)) & 0xff
  return (ip:byte(full + 1) & mask) == (block.bytes:byte(full + 1) & mask)
end

local function matches(list, ip)
  for _, block in ipairs(list) do
    if in_block(ip, block) then return true end
  end
  return false
end
M._matches = matches

local function compile(name, v)
  if v == nil then return {} end
  if type(v) == "string" then v = { v } end
  local out = {}
  for _, s in ipairs(v) do
    local block = type(s) == "string" and parse_cidr(s)
    if not block then
      return nil, ("%s: %q is not an IP address or CIDR block"):format(name, tostring(s))
    end
    out[#out + 1] = block
  end
  return out
end
M._compile = compile

function M.check(conf)
  if conf.whitelist ~= nil then
    if conf.allow ~= nil then return nil, "set allow or whitelist, not both" end
    conf.allow = conf.whitelist
  end
  if conf.blacklist ~= nil then
    if conf.deny ~= nil then return nil, "set deny or blacklist, not both" end
    conf.deny = conf.blacklist
  end
  local err
  conf._allow, err = compile("allow", conf.allow)
  if not conf._allow then return nil, err end
  conf._deny, err = compile("deny", conf.deny)
  if not conf._deny then return nil, err end
  if #conf._allow == 0 and #conf._deny == 0 then
    return nil, "set allow, deny or both"
  end
  if conf.status < 400 or conf.status > 599 then return nil, "status: expected 4xx or 5xx" end
  return true
end

function M.access(conf, req)
  local ip = parse_ip(req.remote_addr or "")
  local ok
  if not ip then
    ok = false -- not an IP (a unix socket): only an empty allow-list lets it pass
    if #conf._allow == 0 then ok = true end
  else
    ok = not matches(conf._deny, ip) and (#conf._allow == 0 or matches(conf._allow, ip))
  end
  if not ok then
    return util.json_error(req, conf.status, conf.message)
  end
end

return M
