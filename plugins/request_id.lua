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
    generator = { type = "string", one_of = { "uuid", "uuid#counter", "hex", "nanoid" },
                  default = "uuid" },
    echo_downstream = { type = "boolean", default = true },
    trust_incoming = { type = "boolean", default = true },
    -- APISIX request-id's names for generator and echo_downstream
    algorithm = { type = "string", one_of = { "uuid", "nanoid" } },
    include_in_response = "boolean",
  },
}

function M.check(conf)
  if conf.algorithm ~= nil then conf.generator = conf.algorithm end
  if conf.include_in_response ~= nil then conf.echo_downstream = conf.include_in_response end
  if not conf.header_name:match("^[%w!#$%%&'*+.^_`|~-]+$") then
    return nil, "header_name: not a valid header name"
  end
  return true
end

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local NANOID = "useandom-26T198340PX75pxJACKVERYMINDBUSHWOLF_GQZbfghjklqvwyzrict"

-- Kong's uuid#counter: one random UUID per worker (per config load) and a
-- counter, "<uuid>#<n>"; cheaper than a UUID per request, still unique.
local counter_base, counter = nil, 0

local function generate(kind)
  if kind == "uuid#counter" then
    counter_base = counter_base or generate("uuid")
    counter = counter + 1
    return counter_base .. "#" .. counter
  end
  local r = gw.crypto.random(kind == "nanoid" and 21 or 16)
  if kind == "hex" then return hex(r) end
  if kind == "nanoid" then
    -- 21 characters of a 64-letter URL-safe alphabet: 126 random bits
    return (r:gsub(".", function(c)
      local i = (c:byte() & 63) + 1
      return NANOID:sub(i, i)
    end))
  end
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
  if req._log_request_id then req:_log_request_id(id) end -- the access log's request_id
end

function M.response(conf, req, res)
  if conf.echo_downstream and req.ctx.request_id then
    res:set_header(conf.header_name, req.ctx.request_id)
  end
end

return M
