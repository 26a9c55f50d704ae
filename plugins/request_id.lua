-- request_id: gives every request an id, in the header `header_name`
-- (default X-Request-Id) sent to the upstream, in req.ctx.request_id, and
-- echoed in the response. A client-supplied id is kept when it looks sane
-- (printable, at most 128 bytes) unless trust_incoming = false.
-- As Kong's correlation-id and APISIX's request-id. doc/plugins/request_id.md.
local gw = gw

local M = {
  name = "request_id",
  priority = 100001, -- Kong's correlation-id: first, so every plugin sees the id
  schema = {
    header_name = { type = "string", default = "X-Request-Id" },
    generator = { type = "string", one_of = { "uuid", "hex" }, default = "uuid" },
    echo_downstream = { type = "boolean", default = true },
    trust_incoming = { type = "boolean", default = true },
  },
}

function M.check(conf)
  if not conf.header_name:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    return nil, "header_name: not a valid header name"
  end
  return true
end

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function generate(kind)
  local r = gw.crypto.random(16)
  if kind == "hex" then return hex(r) end
  -- RFC 9562 version 4: 122 random bits
  local b = { r:byte(1, 16) }
  b[7] = (b[7] & 0x0f) | 0x40
  b[9] = (b[9] & 0x3f) | 0x80
  local h = hex(string.char(table.unpack(b)))
  return ("%s-%s-%s-%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(13, 16), h:sub(17, 20),
    h:sub(21, 32))
end

function M.access(conf, req)
  local id = conf.trust_incoming and req:header(conf.header_name) or nil
  if id and (#id > 128 or id == "" or not id:match("^[\33-\126]+$")) then id = nil end
  if not id then
    id = generate(conf.generator)
    req:set_header(conf.header_name, id)
  end
  req.ctx.request_id = id
end

function M.response(conf, req, res)
  if conf.echo_downstream and req.ctx.request_id then
    res:set_header(conf.header_name, req.ctx.request_id)
  end
end

return M
