-- cors: Cross-Origin Resource Sharing as Kong's and APISIX's cors plugins.
-- A preflight (OPTIONS with Origin and Access-Control-Request-Method) is
-- answered 204 here and never reaches the upstream; other requests from an
-- allowed origin get Access-Control-Allow-Origin (and -Credentials,
-- -Expose-Headers) on the upstream's response, and on the error answers
-- of the bundled plugins that run after it. doc/plugins/cors.md.
local util = require "moongate.plugin_util"

local M = {
  name = "cors",
  priority = 2000, -- Kong's cors: before authentication, so preflights pass
  schema = {
    origins = { type = "string|table", default = "*" },
    methods = { type = "string|table",
                default = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE" } },
    headers = "string|table",  -- allowed request headers; default: echo the request's
    expose_headers = "string|table",
    credentials = { type = "boolean", default = false },
    max_age = "number",
    preflight_status = { type = "integer", default = 204 },
    -- the same options under Kong's and APISIX's names
    exposed_headers = "string|table",                 -- Kong
    allow_origins = "string|table",                   -- APISIX
    allow_methods = "string|table",
    allow_headers = "string|table",
    allow_credential = "boolean",
  },
}

local ALIASES = { exposed_headers = "expose_headers", allow_origins = "origins",
                  allow_methods = "methods", allow_headers = "headers",
                  allow_credential = "credentials" }

local ALL_METHODS = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE",
                      "CONNECT" }

local function list(v)
  if v == nil then return nil end
  if type(v) == "string" then
    local out = {}
    for item in v:gmatch("[^,%s]+") do out[#out + 1] = item end
    return out
  end
  return util.strings(v)
end

-- "https://*.example.com" -> a Lua pattern matching one or more labels
local function glob(origin)
  local p = origin:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", "[%%w%%-%%.]+")
  return "^" .. p .. "$"
end

function M.check(conf)
  for alias, name in pairs(ALIASES) do
    if conf[alias] ~= nil then conf[name] = conf[alias] end
  end
  local origins = list(conf.origins)
  if not origins or #origins == 0 then return nil, "origins: expected \"*\" or a list" end
  conf._any = false
  conf._exact, conf._globs = {}, {}
  for _, o in ipairs(origins) do
    if o == "*" or o == "**" then -- APISIX's "**": any origin, credentials or not
      conf._any = true
    elseif o:find("*", 1, true) then
      conf._globs[#conf._globs + 1] = glob(o:lower())
    else
      conf._exact[o:lower()] = true
    end
  end
  local methods = list(conf.methods)
  if not methods then return nil, "methods: expected a list of strings" end
  if #methods == 1 and (methods[1] == "*" or methods[1] == "**") then
    methods = { table.unpack(ALL_METHODS) }
  end
  for i, m in ipairs(methods) do methods[i] = m:upper() end
  conf._methods = table.concat(methods, ", ")
  local headers = list(conf.headers)
  if conf.headers ~= nil and not headers then return nil, "headers: expected strings" end
  -- "*": any request header, i.e. echo Access-Control-Request-Headers (a
  -- literal "*" would not cover credentialed requests)
  if headers and #headers == 1 and (headers[1] == "*" or headers[1] == "**") then
    headers = nil
  end
  conf._headers = headers and table.concat(headers, ", ") or nil
  local expose = list(conf.expose_headers)
  if conf.expose_headers ~= nil and not expose then
    return nil, "expose_headers: expected strings"
  end
  conf._expose = expose and #expose > 0 and table.concat(expose, ", ") or nil
  if conf.max_age and conf.max_age < 0 then return nil, "max_age: must not be negative" end
  return true
end

local function allowed(conf, origin)
  if conf._any then return true end
  local o = origin:lower()
  if conf._exact[o] then return true end
  for _, p in ipairs(conf._globs) do
    if o:match(p) then return true end
  end
  return false
end

-- The Access-Control-Allow-Origin value, or nil if the origin is refused.
-- With credentials a literal "*" is not allowed by browsers: echo it.
local function allow_origin(conf, origin)
  if not allowed(conf, origin) then return nil end
  if conf._any and not conf.credentials then return "*" end
  return origin
end

local function clean(v)
  return v and not v:find("[%z\r\n]") and v or nil
end

function M.access(conf, req)
  local origin = clean(req:header("origin"))
  if not origin then return end
  local acao = allow_origin(conf, origin)
  if req.method == "OPTIONS" and req:header("access-control-request-method") then
    local h = {}
    if acao then
      h["Access-Control-Allow-Origin"] = acao
      h["Access-Control-Allow-Methods"] = conf._methods
      local rh = conf._headers or clean(req:header("access-control-request-headers"))
      if rh and rh ~= "" then h["Access-Control-Allow-Headers"] = rh end
      if conf.credentials then h["Access-Control-Allow-Credentials"] = "true" end
      if conf.max_age then h["Access-Control-Max-Age"] = tostring(math.floor(conf.max_age)) end
    end
    if not conf._any or conf.credentials then h["Vary"] = "Origin" end
    return req:respond(conf.preflight_status, "", h)
  end
  if acao then
    req.ctx._cors_origin = acao
    -- the grant for answers the bundled plugins make later on this route (a
    -- 401 from jwt, a 429): plugin_util.json_error adds it, so browser code
    -- can read why it was refused, as with Kong's cors
    local h = { ["Access-Control-Allow-Origin"] = acao }
    if conf.credentials then h["Access-Control-Allow-Credentials"] = "true" end
    if conf._expose then h["Access-Control-Expose-Headers"] = conf._expose end
    if not conf._any or conf.credentials then h["Vary"] = "Origin" end
    req.ctx._cors_headers = h
  end
end

function M.response(conf, req, res)
  local acao = req.ctx._cors_origin
  if not conf._any or conf.credentials then
    local vary = res:header("vary")
    if not vary then
      res:set_header("Vary", "Origin")
    elseif not vary:lower():find("origin", 1, true) and vary ~= "*" then
      res:set_header("Vary", vary .. ", Origin")
    end
  end
  if not acao then return end
  res:set_header("Access-Control-Allow-Origin", acao)
  if conf.credentials then res:set_header("Access-Control-Allow-Credentials", "true") end
  if conf._expose then res:set_header("Access-Control-Expose-Headers", conf._expose) end
end

return M
