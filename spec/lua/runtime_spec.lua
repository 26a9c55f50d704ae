-- lua/moongate/runtime.lua: plugin loading, schema checks and chains.
local runtime = require "moongate.runtime"

local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -p " .. tmp .. "/plugins"))

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

write(tmp .. "/plugins/high.lua", [[
return { name = "high", priority = 900, schema = { header = "string", n = "integer",
  mode = { type = "string", one_of = { "a", "b" }, default = "a" } },
  access = function(conf, req) end, log = function() end }
]])
write(tmp .. "/plugins/low.lua", [[
return { name = "low", priority = 100, schema = { secret = { type = "string", required = true } },
  access = function(conf, req) end, response = function() end }
]])
write(tmp .. "/plugins/broken.lua", "return {")
write(tmp .. "/plugins/checked.lua", [[
return { schema = { x = "number" }, check = function(conf)
  if conf.x and conf.x > 10 then return nil, "x must be at most 10" end return true end }
]])
local file = tmp .. "/moongate.lua"

local function build(routes)
  return runtime.build({ plugin_path = { "plugins" }, routes = routes }, file)
end

describe("runtime.build", function()
  it("leaves plain proxy routes to C", function()
    local chains = assert(build({ { upstream = "app" } }))
    assert.is_false(chains[1])
  end)

  it("orders plugins by priority, highest first", function()
    local chains = assert(build({ { plugins = { { "low", secret = "s" }, { "high" } } } }))
    local access = chains[1].access
    assert.equals("high", access[1].name)
    assert.equals("low", access[2].name)
    assert.is_true(chains[1].has_response)
    assert.is_true(chains[1].has_log)
  end)

  it("keeps the listed order with plugin_order = 'listed'", function()
    local chains = assert(build({ { plugin_order = "listed",
      plugins = { { "low", secret = "s" }, { "high" } } } }))
    assert.equals("low", chains[1].access[1].name)
    assert.equals("high", chains[1].access[2].name)
  end)

  it("fills defaults and passes options as conf", function()
    local chains = assert(build({ { plugins = { { "high", header = "X-A" } } } }))
    local conf = chains[1].access[1].conf
    assert.equals("X-A", conf.header)
    assert.equals("a", conf.mode)
    assert.is_nil(conf[1])
  end)

  it("names route, plugin and option for an unknown option", function()
    local ok, err, needle = build({ { plugins = { { "high", colour = "red" } } } })
    assert.is_nil(ok)
    assert.matches("routes%[1%]%.plugins%[1%] %(high%): unknown option 'colour'", err)
    assert.equals("colour", needle)
  end)

  it("rejects wrong types", function()
    local ok, err = build({ { plugins = { { "high", n = 1.5 } } } })
    assert.is_nil(ok)
    assert.matches("option 'n' must be integer, got number", err)
    ok, err = build({ { plugins = { { "high", header = 42 } } } })
    assert.is_nil(ok)
    assert.matches("option 'header' must be string", err)
  end)

  it("enforces required options and one_of", function()
    local ok, err = build({ { plugins = { { "low" } } } })
    assert.is_nil(ok)
    assert.matches("option 'secret' is required", err)
    ok, err = build({ { plugins = { { "high", mode = "c" } } } })
    assert.is_nil(ok)
    assert.matches("must be one of a, b", err)
  end)

  it("runs a plugin's own check", function()
    assert.truthy(build({ { plugins = { { "checked", x = 3 } } } }))
    local ok, err = build({ { plugins = { { "checked", x = 30 } } } })
    assert.is_nil(ok)
    assert.matches("x must be at most 10", err)
  end)

  it("reports missing and broken plugins", function()
    local ok, err = build({ { plugins = { { "nope" } } } })
    assert.is_nil(ok)
    assert.matches("plugin 'nope' not found", err)
    ok, err = build({ { plugins = { { "broken" } } } })
    assert.is_nil(ok)
    assert.matches("broken", err)
  end)

  it("finds bundled plugins after plugin_path", function()
    assert.is_string(runtime.bundled_dir)
  end)

  it("loads plugins afresh for every build (hot reload)", function()
    local a = assert(build({ { plugins = { { "high" } } } }))
    local b = assert(build({ { plugins = { { "high" } } } }))
    assert.are_not.equal(a[1].access[1].fn, b[1].access[1].fn)
  end)
end)

describe("gw.cache", function()
  local Cache = require "moongate.cache"

  it("stores, fetches and deletes", function()
    local c = Cache.new(10)
    c:set("a", 1)
    assert.equals(1, c:get("a"))
    assert.is_true(c:delete("a"))
    assert.is_nil(c:get("a"))
  end)

  it("evicts the least recently used entry past its size cap", function()
    local c = Cache.new(2)
    c:set("a", 1)
    c:set("b", 2)
    assert.equals(1, c:get("a")) -- a is now the most recent
    c:set("c", 3)
    assert.is_nil(c:get("b"))
    assert.equals(1, c:get("a"))
    assert.equals(3, c:get("c"))
    assert.equals(2, c:count())
  end)

  it("expires entries after their ttl", function()
    local c = Cache.new(10)
    c:set("k", "v", 0.05)
    assert.equals("v", c:get("k"))
    gw.sleep(0.08)
    assert.is_nil(c:get("k"))
    assert.equals(0, c:count())
  end)

  it("is exposed as gw.cache", function()
    assert.truthy(gw.cache.get and gw.cache.set and gw.cache.delete)
  end)
end)
