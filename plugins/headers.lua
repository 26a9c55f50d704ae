-- headers: edits request headers (before the upstream) and response headers
-- (when the upstream's head arrives), configured as APISIX's proxy-rewrite /
-- response-rewrite `headers` and Kong's request-/response-transformer:
--
--   { "headers",
--     request  = { remove = { "X-Debug" }, set = { ["X-Env"] = "prod" },
--                  add = { ["X-Tag"] = "gw" } },
--     response = { remove = { "Server" }, set = { ["X-Frame-Options"] = "DENY" } } }
--
-- set/add/rename may also be lists of "Name:value" strings, as Kong's
-- request-/response-transformer take them.
--
-- Per direction the order is: remove, rename, set, add. `set` replaces,
-- `add` appends to an existing value (", "-joined) or sets it when absent.
-- A value may be a function: function(req) for the request,
-- function(req, res) for the response, returning a string (or nil: skip).
local M = {
  name = "headers",
  priority = 800, -- Kong's transformers (801/800): after auth and rate limits
  schema = { request = "table", response = "table" },
}

local TOKEN = "^[%w!#$%%&'*+.^_`|~-]+$"

local function check_side(side, t)
  if t == nil then return true end
  for k, v in pairs(t) do
    if k ~= "set" and k ~= "add" and k ~= "remove" and k ~= "rename" then
      return nil, ("%s: unknown key '%s' (expected set, add, remove, rename)"):format(side,
        tostring(k))
    end
    if type(v) ~= "table" then return nil, ("%s.%s: expected a table"):format(side, k) end
  end
  -- Kong's transformer form: a list of "Name:value" ("Old:New" for rename)
  for _, op in ipairs { "set", "add", "rename" } do
    local m = t[op]
    if m and #m > 0 then
      local out = {}
      for k, v in pairs(m) do
        if math.type(k) == "integer" then
          local name, value
          if type(v) == "string" then name, value = v:match("^([^:]+):%s*(.-)%s*$") end
          if not name then
            return nil, ('%s.%s[%d]: expected "Name:value"'):format(side, op, k)
          end
          out[name] = value
        else
          out[k] = v
        end
      end
      t[op] = out
    end
  end
  for _, name in ipairs(t.remove or {}) do
    if type(name) ~= "string" or not name:match(TOKEN) then
      return nil, side .. ".remove: expected a list of header names"
    end
  end
  for _, op in ipairs { "set", "add", "rename" } do
    for name, value in pairs(t[op] or {}) do
      if type(name) ~= "string" or not name:match(TOKEN) then
        return nil, ("%s.%s: bad header name %s"):format(side, op, tostring(name))
      end
      local vt = type(value)
      if op == "rename" and (vt ~= "string" or not value:match(TOKEN)) then
        return nil, ("%s.rename.%s: expected the new header name"):format(side, name)
      end
      if vt == "number" then
        t[op][name] = tostring(value)
      elseif vt == "string" then
        if value:find("[%z\r\n]") then
          return nil, ("%s.%s.%s: value contains CR, LF or NUL"):format(side, op, name)
        end
      elseif vt ~= "function" then
        return nil, ("%s.%s.%s: expected a string or a function"):format(side, op, name)
      end
    end
  end
  return true
end

function M.check(conf)
  local ok, err = check_side("request", conf.request)
  if not ok then return nil, err end
  return check_side("response", conf.response)
end

local function value_of(v, req, res)
  if type(v) == "function" then
    v = v(req, res)
    if v == nil then return nil end
    v = tostring(v)
  end
  return v
end

-- obj: req or res (both have header/set_header/remove_header)
local function apply(t, obj, req, res)
  for _, name in ipairs(t.remove or {}) do obj:remove_header(name) end
  for from, to in pairs(t.rename or {}) do
    local v = obj:header(from)
    if v ~= nil then
      obj:remove_header(from)
      obj:set_header(to, v)
    end
  end
  for name, v in pairs(t.set or {}) do
    v = value_of(v, req, res)
    if v ~= nil then obj:set_header(name, v) end
  end
  for name, v in pairs(t.add or {}) do
    v = value_of(v, req, res)
    if v ~= nil then
      local old = obj:header(name)
      obj:set_header(name, old and (old .. ", " .. v) or v)
    end
  end
end

function M.access(conf, req)
  if conf.request then apply(conf.request, req, req, nil) end
end

function M.response(conf, req, res)
  if conf.response then apply(conf.response, res, req, res) end
end

return M
