-- The Lua side of the moongate runtime.
--
-- build(config, file): at config load (and by `moongate -t`), loads every
-- route's plugins from plugin_path, checks their options against their
-- schemas and returns one chain per route (false for plain proxy routes).
-- run(req, chain): the body of every request coroutine; runs the phases
-- access -> handler or upstream -> response -> log (PRODUCT.md).
local M = {}

M.bundled_dir = nil -- set by the C runtime: <source>/plugins

local PHASES = { "access", "response", "log" }

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function readable(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

-- Finds <dir>/<name>.lua along plugin_path, then the bundled plugins.
local function find_plugin(dirs, name)
  for _, dir in ipairs(dirs) do
    local path = dir .. "/" .. name .. ".lua"
    if readable(path) then return path end
  end
  return nil
end

-- "did you mean": the candidate nearest to word by edit distance, if it is
-- close enough to be a likely misspelling (1 edit for short words, 2 from 5
-- letters, 3 from 9).
local function distance(a, b)
  if #a > 64 or #b > 64 then return 99 end
  local row = {}
  for j = 0, #b do row[j] = j end
  for i = 1, #a do
    local diag = row[0]
    row[0] = i
    for j = 1, #b do
      local up = row[j]
      local cost = a:sub(i, i):lower() == b:sub(j, j):lower() and 0 or 1
      row[j] = math.min(diag + cost, up + 1, row[j - 1] + 1)
      diag = up
    end
  end
  return row[#b]
end

function M.suggest(word, candidates)
  if type(word) ~= "string" then return nil end
  local limit = #word >= 9 and 3 or #word >= 5 and 2 or 1
  local best, bd = nil, limit + 1
  for _, c in ipairs(candidates) do
    local d = distance(word, c)
    if d < bd and d < #word then best, bd = c, d end
  end
  return best
end

local function did_you_mean(word, candidates)
  local hint = M.suggest(word, candidates)
  return hint and (" (did you mean '%s'?)"):format(hint) or ""
end

-- Plugin names on plugin_path (M.listdir is set by the C config loader).
local function plugin_names(dirs)
  local names = {}
  for _, dir in ipairs(dirs) do
    for _, f in ipairs(M.listdir and M.listdir(dir) or {}) do
      local n = f:match("^(.+)%.lua$")
      if n then names[#names + 1] = n end
    end
  end
  table.sort(names)
  return names
end

local function plugin_dirs(config, file)
  local base = dirname(file)
  local dirs = {}
  local pp = config.plugin_path
  if type(pp) == "string" then pp = { pp } end
  if pp ~= nil and type(pp) ~= "table" then
    return nil, "plugin_path: expected a list of directories", "plugin_path"
  end
  for _, d in ipairs(pp or {}) do
    if type(d) ~= "string" then
      return nil, "plugin_path: expected a list of directories", "plugin_path"
    end
    dirs[#dirs + 1] = d:sub(1, 1) == "/" and d or (base .. "/" .. d)
  end
  if M.bundled_dir then dirs[#dirs + 1] = M.bundled_dir end
  return dirs
end

-- Loads a plugin module file. Each generation loads plugins afresh, so a
-- reload picks up edited plugin code.
local function load_plugin(path, name)
  local chunk, err = loadfile(path)
  if not chunk then return nil, err end
  local ok, mod = pcall(chunk, name)
  if not ok then return nil, path .. ": " .. tostring(mod) end
  if type(mod) ~= "table" then
    return nil, path .. ": a plugin must return a table, got " .. type(mod)
  end
  for _, phase in ipairs(PHASES) do
    if mod[phase] ~= nil and type(mod[phase]) ~= "function" then
      return nil, path .. ": " .. phase .. " must be a function"
    end
  end
  if mod.schema ~= nil and type(mod.schema) ~= "table" then
    return nil, path .. ": schema must be a table"
  end
  if mod.priority ~= nil and type(mod.priority) ~= "number" then
    return nil, path .. ": priority must be a number"
  end
  mod.name = mod.name or name
  return mod
end

-- Schema types: "string", "number", "integer", "boolean", "table",
-- "function", "any", alternatives joined with "|" ("string|table"), or a
-- table { type = ..., required = true, default = v, one_of = {...} }.
local function type_ok(spec, v)
  for t in spec:gmatch("[^|]+") do
    if t == "any" or type(v) == t then return true end
    if t == "integer" and math.type(v) == "integer" then return true end
    if t == "array" and type(v) == "table" then return true end
  end
  return false
end

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end

-- Checks conf (a copy of the route's plugin entry without [1]) against the
-- plugin's schema. Returns true, or nil, message, needle.
function M.check_conf(plugin, conf)
  local schema = plugin.schema or {}
  for k, v in pairs(conf) do
    local spec = schema[k]
    if spec == nil then
      local keys = {}
      for name in pairs(schema) do keys[#keys + 1] = name end
      table.sort(keys)
      return nil, ("unknown option '%s'%s"):format(tostring(k), did_you_mean(k, keys)),
        tostring(k)
    end
    local t = type(spec) == "table" and (spec.type or "any") or spec
    if not type_ok(t, v) then
      return nil, ("option '%s' must be %s, got %s"):format(k, t, type(v)), k
    end
    if type(spec) == "table" and spec.one_of then
      local found = false
      for _, allowed in ipairs(spec.one_of) do
        if allowed == v then found = true end
      end
      if not found then
        return nil, ("option '%s' must be one of %s"):format(k,
          table.concat(spec.one_of, ", ")), k
      end
    end
  end
  for k, spec in pairs(schema) do
    if type(spec) == "table" then
      if conf[k] == nil and spec.default ~= nil then conf[k] = copy(spec.default) end
      if conf[k] == nil and spec.required then
        return nil, ("option '%s' is required"):format(k), plugin.name
      end
    end
  end
  if plugin.check then
    local ok, err = plugin.check(conf)
    if not ok then return nil, tostring(err or "invalid configuration"), plugin.name end
  end
  return true
end

local loaded_files

-- Builds one route's chain. Every error goes into errs as
-- { message, path (the config path, for the line), needle }; returns the
-- chain, or nil if this route had any.
local function build_route(route, i, dirs, loaded, errs)
  local where = ("routes[%d]"):format(i)
  local nerr = #errs
  local function fail(message, path, needle)
    errs[#errs + 1] = { message = message, path = path, needle = needle }
  end
  local plugins = route.plugins or {}
  if type(plugins) ~= "table" then
    fail(where .. ".plugins: expected a list", where .. ".plugins", "plugins")
    return nil
  end
  local order = route.plugin_order
  if order ~= nil and order ~= "priority" and order ~= "listed" then
    fail(where .. ".plugin_order: expected \"priority\" or \"listed\"", where .. ".plugin_order",
      "plugin_order")
  end
  local entries = {}
  for j, entry in ipairs(plugins) do
    local pw = ("%s.plugins[%d]"):format(where, j)
    local name = type(entry) == "string" and entry or (type(entry) == "table" and entry[1])
    local plugin
    if type(name) ~= "string" then
      fail(pw .. ": expected { \"name\", option = value, ... }", pw, "plugins")
      goto next
    end
    plugin = loaded[name]
    if not plugin then
      local path = find_plugin(dirs, name)
      if not path then
        fail(("%s: plugin '%s' not found in plugin_path%s"):format(pw, name,
          did_you_mean(name, plugin_names(dirs))), pw, name)
        goto next
      end
      local err
      plugin, err = load_plugin(path, name)
      if not plugin then
        fail(("%s (%s): %s"):format(pw, name, err), pw, name)
        goto next
      end
      loaded_files[#loaded_files + 1] = path
      loaded[name] = plugin
    end
    do
      local conf = {}
      if type(entry) == "table" then
        for k, v in pairs(entry) do
          if k ~= 1 then conf[k] = v end
        end
      end
      local ok, err, needle = M.check_conf(plugin, conf)
      if not ok then
        local at = pw
        if type(needle) == "string" and conf[needle] ~= nil then at = pw .. "." .. needle end
        fail(("%s (%s): %s"):format(pw, name, err), at, needle or name)
      else
        entries[#entries + 1] = { plugin = plugin, conf = conf, name = name, index = j }
      end
    end
    ::next::
  end
  if #errs > nerr then return nil end
  if order ~= "listed" then
    table.sort(entries, function(a, b)
      local pa, pb = a.plugin.priority or 0, b.plugin.priority or 0
      if pa ~= pb then return pa > pb end
      return a.index < b.index
    end)
  end
  local chain = { access = {}, response = {}, log = {}, handler = route.handler,
                  route = route.name or ("route" .. i) }
  for _, e in ipairs(entries) do
    for _, phase in ipairs(PHASES) do
      local fn = e.plugin[phase]
      if fn then
        local list = chain[phase]
        list[#list + 1] = { fn = fn, conf = e.conf, name = e.name }
      end
    end
  end
  chain.has_response = #chain.response > 0
  chain.has_log = #chain.log > 0
  return chain
end

-- Returns chains (a list, false for routes that need no Lua), or nil,
-- message, needle (text locating the line in the config file) of the first
-- error, and the list of every error ({ message, path, needle }).
M.redis_conf = {}

function M.build(config, file)
  local dirs, err, needle = plugin_dirs(config, file)
  if not dirs then
    return nil, err, needle, { { message = err, path = "plugin_path", needle = needle } }
  end
  local errs = {}
  M.redis_conf_read = nil -- a well-formed redis section, even if the rest fails (-t)
  if config.redis ~= nil then
    local ok, rerr, rneedle = M.check_redis(config.redis)
    if not ok then errs[#errs + 1] = { message = rerr, needle = rneedle } end
    if ok then M.redis_conf_read = config.redis end
  end
  local loaded = {}
  local chains = {}
  loaded_files = {}
  for i, route in ipairs(type(config.routes) == "table" and config.routes or {}) do
    if type(route) == "table" and (route.plugins or route.handler) then
      chains[i] = build_route(route, i, dirs, loaded, errs) or false
    else
      chains[i] = false
    end
  end
  if #errs > 0 then return nil, errs[1].message, errs[1].needle, errs end
  M.redis_conf = config.redis or {}
  M.loaded_files = loaded_files
  return chains
end

-- Checks the `redis` section: { name = { addr = "host:port", pool = n,
-- timeout = s, password = "...", db = n } }. Returns true, or nil, why, needle.
function M.check_redis(redis)
  if type(redis) ~= "table" then return nil, "redis: expected a table", "redis" end
  local allowed = { addr = "string", pool = "integer", timeout = "number",
                    password = "string", db = "integer", connect_timeout = "number" }
  for name, conf in pairs(redis) do
    if type(name) ~= "string" or type(conf) ~= "table" then
      return nil, "redis: expected { name = { addr = \"host:port\", ... } }", "redis"
    end
    for k, v in pairs(conf) do
      local t = allowed[k]
      if not t then return nil, ("redis.%s: unknown option '%s'"):format(name, k), k end
      if not type_ok(t, v) then
        return nil, ("redis.%s.%s: must be %s, got %s"):format(name, k, t, type(v)), k
      end
    end
    if type(conf.addr) ~= "string" or not (conf.addr:match(":%d+$") or
        conf.addr:match("^unix:/.") or conf.addr:match("^/.")) then
      return nil, ("redis.%s.addr: expected \"host:port\" or \"unix:/path\""):format(name), name
    end
  end
  return true
end

local log = require("moongate.core").log

-- The C runtime's private operations on a request (op.proxy(req, ...),
-- op.wait_done(req), ...). They are not req methods: plugin code cannot
-- reach them. Set once by M._init at boot.
local op

-- The log phase: waits until the response went out, then runs every log
-- plugin of the route.
local function run_log(req, chain)
  op.wait_done(req)
  local res = op.res(req)
  local list = chain.log
  for i = 1, #list do
    local p = list[i]
    -- one failing log plugin must not keep the others from running
    local ok, err = xpcall(p.fn, debug.traceback, p.conf, req, res)
    if not ok then log("error", "log phase of plugin ", p.name, " failed: ", err) end
  end
end

-- After a Lua error answered 500, the C runtime calls this in a new
-- coroutine, so the route's log plugins still see the request.
local function run_log_after_error(req, chain)
  if chain.has_log then run_log(req, chain) end
end

-- The body of a request coroutine.
--
-- The response phase sees every answer the route gives: the upstream's, a
-- handler's, and one a plugin gave with req:respond (as Kong runs
-- header_filter after kong.response.exit). With response plugins on the
-- route, the last two are held (op.stage_replies) until the phase ends.
local function run(req, chain)
  local has_response = chain.has_response
  if has_response then op.stage_replies(req) end
  local access = chain.access
  local res
  for i = 1, #access do
    local p = access[i]
    p.fn(p.conf, req)
    if op.done(req) then
      if has_response then res = op.staged(req) end
      goto answered
    end
  end
  if chain.handler then
    res = op.reply(req, chain.handler(req))
  else
    res = op.proxy(req, has_response, chain.has_log)
  end
  ::answered::
  if res then
    local response = chain.response
    for i = 1, #response do
      local p = response[i]
      p.fn(p.conf, req, res)
    end
    op.send_head(req)
  end
  if chain.has_log then run_log(req, chain) end
end

-- Called once by the C runtime at boot with its private operations;
-- returns the coroutine bodies (run, and the log phase after an error).
-- It removes itself, so nothing loaded later can call it.
function M._init(ops)
  op = ops
  M._init = nil
  return run, run_log_after_error
end

return M
