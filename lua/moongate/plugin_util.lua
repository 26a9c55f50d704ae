-- Small helpers shared by the bundled plugins (not part of the gw API).
local M = {}

-- Answers `status` with the short JSON body every gateway error has
-- (PRODUCT.md: {"error": "..."}, Content-Type application/json). `extra`
-- adds headers (WWW-Authenticate, Retry-After...). When the cors plugin
-- granted the request's origin earlier on the route, the answer carries
-- that grant too. Returns what req:respond returns.
function M.json_error(req, status, msg, extra)
  local headers = { ["Content-Type"] = "application/json" }
  local ctx = req.ctx
  local cors = ctx and ctx._cors_headers
  if cors then
    for k, v in pairs(cors) do headers[k] = v end
  end
  if extra then
    for k, v in pairs(extra) do headers[k] = v end
  end
  return req:respond(status, gw.json.encode({ error = msg }), headers)
end

-- A fresh copy of a list of strings (plugin options such as `origins`), or
-- nil when an item is not a string.
function M.strings(list)
  local out = {}
  for _, x in ipairs(list) do
    if type(x) ~= "string" then return nil end
    out[#out + 1] = x
  end
  return out
end

local SPACE = { [9] = true, [10] = true, [11] = true, [12] = true, [13] = true, [32] = true }

-- s without leading and trailing blanks (%s). A byte loop: the pattern
-- form "^%s*(.-)%s*$" tests a character class at every position of a long
-- token, which cost the auth proxy more than its Redis round trip.
function M.trim(s)
  local a, b = 1, #s
  while a <= b and SPACE[s:byte(a)] do a = a + 1 end
  while b >= a and SPACE[s:byte(b)] do b = b - 1 end
  if a == 1 and b == #s then return s end
  return s:sub(a, b)
end

M.TOKEN = "^[%w!#$%%&'*+.^_`|~-]+$" -- an HTTP header name (RFC 9110 token)

return M
