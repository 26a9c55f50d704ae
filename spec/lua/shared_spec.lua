-- gw.shared(name): ngx.shared.DICT's API and return values, in the real
-- runtime (--script defines dictionaries outside a config with define).
local gw = require "gw"
local shared = require "moongate.shared"

describe("gw.shared", function()
  local d
  before_each(function()
    d = shared.define("spec", 65536)
    d:flush_all()
  end)

  it("is nil for a name nobody declared", function()
    assert.is_nil(gw.shared("nope"))
    assert.equals(d, gw.shared("spec")) -- the same object every time
  end)

  it("keeps strings, integers, floats and booleans with their types", function()
    assert.same({ true, nil, false }, { d:set("s", "hello") })
    d:set("i", 42); d:set("f", 1.5); d:set("t", true); d:set("z", false); d:set("e", "")
    assert.equals("hello", d:get("s"))
    assert.equals(42, d:get("i")); assert.equals("integer", math.type(d:get("i")))
    assert.equals(1.5, d:get("f"))
    assert.is_true(d:get("t")); assert.is_false(d:get("z"))
    assert.equals("", d:get("e"))
    assert.is_nil(d:get("missing"))
    d:set("s", nil) -- nil deletes, as OpenResty
    assert.is_nil(d:get("s"))
  end)

  it("raises for a table value and answers bad keys with nil, err", function()
    assert.has_error(function() d:set("k", {}) end)
    assert.has_error(function() d:add("k", function() end) end)
    assert.same({ nil, "nil key" }, { d:get(nil) })
    assert.same({ nil, "empty key" }, { d:get("") })
    assert.same({ false, "empty key", false }, { d:set("", 1) })
    assert.same({ nil, "key too long" }, { d:get(("x"):rep(65536)) })
    d:set(7, "seven") -- a number key is its string
    assert.equals("seven", d:get("7"))
  end)

  it("add refuses a present key", function()
    assert.same({ true, nil, false }, { d:add("a", 1) })
    assert.same({ false, "exists", false }, { d:add("a", 2) })
    assert.equals(1, d:get("a"))
  end)

  it("incr: not found, init, init ttl, not a number", function()
    assert.same({ nil, "not found", false }, { d:incr("n", 1) })
    assert.same({ 11, nil, false }, { d:incr("n", 1, 10) })
    assert.same({ 13, nil, false }, { d:incr("n", 2, 100) }) -- init only when missing
    assert.equals(12.5, (d:incr("n", -0.5)))
    d:set("s", "x")
    assert.same({ nil, "not a number", false }, { d:incr("s", 1) })
    d:incr("m", 1, 0, 30)
    assert.is_true(d:ttl("m") > 25)
    assert.equals(14.5, (d:incr("n", "2"))) -- a numeric string is its number
    assert.has_error(function() d:incr("n", "one") end)
  end)

  it("ttl, expire and expiry", function()
    d:set("a", "v", 30) -- long enough to read back on a loaded machine
    local t = d:ttl("a")
    assert.is_true(t > 25 and t <= 30)
    assert.is_true(d:expire("a", 0.05))
    d:set("b", "v")
    assert.equals(0, d:ttl("b")) -- never expires
    assert.same({ nil, "not found" }, { d:ttl("nope") })
    assert.same({ nil, "not found" }, { d:expire("nope", 1) })
    assert.is_true(d:expire("b", 0.05))
    gw.sleep(0.08)
    assert.is_nil(d:get("a")); assert.is_nil(d:get("b"))
    assert.same({ nil, "not found" }, { d:ttl("a") })
    assert.is_true((d:add("a", 1))) -- an expired key is absent
    d:set("c", 1, 30)
    assert.is_true(d:expire("c", 0)) -- 0: never again
    assert.equals(0, d:ttl("c"))
    assert.equals(1, d:get("c"))
    assert.has_error(function() d:set("x", 1, -1) end)
  end)

  it("keys: most recent first, max (default 1024, 0 = all), not the expired", function()
    local d = shared.define("spec_keys", 1048576)
    for i = 1, 1100 do d:set("k" .. i, i) end
    d:set("gone", 1, 0.01)
    gw.sleep(0.03)
    assert.equals(1024, #d:keys())
    assert.equals(1100, #d:keys(0))
    assert.same({ "k1100", "k1099" }, d:keys(2))
    d:delete("k1100")
    assert.equals("k1099", d:keys(1)[1])
  end)

  it("a full dict evicts the least recently used: true, nil, forcible", function()
    local small = shared.define("spec_small", 8192)
    small:flush_all()
    local forcible_seen = false
    for i = 1, 300 do
      local ok, err, forcible = small:set("k" .. i, ("v"):rep(40))
      assert.is_true(ok); assert.is_nil(err)
      if forcible then forcible_seen = true end
      if i == 10 then small:get("k1") end -- k1 is recent now
    end
    assert.is_true(forcible_seen)
    assert.equals(("v"):rep(40), small:get("k300"))
    assert.is_nil(small:get("k2"))
    -- bigger than the dict: no memory, nothing lost
    assert.same({ false, "no memory", false }, { small:set("k300", ("x"):rep(9000)) })
    assert.equals(("v"):rep(40), small:get("k300"))
  end)

  it("free_space shrinks as it fills and comes back on delete", function()
    local full = d:free_space()
    assert.is_true(full > 60000 and full <= d:capacity())
    d:set("big", ("x"):rep(10000))
    assert.is_true(d:free_space() <= full - 10000)
    d:delete("big")
    assert.equals(full, d:free_space())
  end)

  it("take: a token bucket", function()
    local got = {}
    for i = 1, 4 do got[i] = (d:take("ip", 0.001, 3)) end
    assert.same({ true, true, true, false }, got)
    local ok, left, retry = d:take("ip", 0.001, 3)
    assert.is_false(ok); assert.is_true(left < 1); assert.is_true(retry > 900)
    ok, left = d:take("fast", 1000, 2, 2)
    assert.is_true(ok); assert.is_true(left < 0.5)
    gw.sleep(0.01)
    assert.is_true((d:take("fast", 1000, 2, 2))) -- refilled
    d:set("s", "x")
    assert.same({ nil, "not a bucket" }, { d:take("s", 1, 1) })
  end)
end)
