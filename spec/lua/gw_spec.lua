-- gw module basics, run inside the real runtime:
--   moongate --script /usr/bin/busted spec/lua
describe("gw.sleep", function()
  it("yields the coroutine and resumes after the delay", function()
    gw.sleep(0) -- gw.now() is the cached loop time: refresh it first
    local t0 = gw.now()
    assert.is_true(gw.sleep(0.05))
    local dt = gw.now() - t0
    assert.is_true(dt >= 0.045, "slept " .. dt)
    assert.is_true(dt < 1, "slept " .. dt)
  end)
  it("accepts 0 and fractional values", function()
    assert.is_true(gw.sleep(0))
    assert.is_true(gw.sleep(0.001))
  end)
  it("rejects negative delays and wrong types", function()
    assert.has_error(function() gw.sleep(-1) end)
    assert.has_error(function() gw.sleep("x") end)
  end)
  it("refuses to yield from a user coroutine", function()
    local co = coroutine.create(function() return gw.sleep(0.01) end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("request coroutine", err)
  end)
end)

describe("gw.json", function()
  it("round-trips values", function()
    local s = gw.json.encode({ a = 1, b = { 1, 2, 3 }, c = "x" })
    local v = gw.json.decode(s)
    assert.same({ a = 1, b = { 1, 2, 3 }, c = "x" }, v)
  end)
  it("returns nil, err on bad input", function()
    local v, err = gw.json.decode("{bad")
    assert.is_nil(v)
    assert.is_string(err)
  end)
end)

describe("gw.json (PRODUCT.md: string; value, decode error -> nil, err)", function()
  it("encodes an empty table as {} and gw.json.null as null", function()
    assert.equals("{}", gw.json.encode({}))
    assert.equals('{"a":null}', gw.json.encode({ a = gw.json.null }))
    assert.equals(gw.json.null, gw.json.decode("null"))
  end)

  it("decode: nil, err for invalid or too deeply nested JSON; raises on a non-string", function()
    for _, s in ipairs { "", "  ", "{", "[1,]", "{'a':1}", "nul", ('['):rep(129) .. (']'):rep(129) } do
      local v, err = gw.json.decode(s)
      assert.is_nil(v, s)
      assert.is_string(err, s)
    end
    assert.same({ { { 1 } } }, gw.json.decode("[[[1]]]"))
    assert.has_error(function() gw.json.decode(nil) end)
    assert.has_error(function() gw.json.decode({}) end)
  end)

  it("encode raises on what JSON cannot hold, at the caller's line", function()
    local ok, err = pcall(gw.json.encode, { f = function() end })
    assert.is_false(ok)
    assert.matches("^gw%.json%.encode: ", err)
    ok, err = pcall(function() local s = gw.json.encode(0 / 0) return s end)
    assert.is_false(ok)
    assert.matches("gw_spec%.lua:%d+: gw%.json%.encode", err)
  end)
end)

describe("gw.cache (PRODUCT.md: per-worker LRU with TTL)", function()
  after_each(function()
    for _, k in ipairs { "gwspec:a", "gwspec:b" } do gw.cache:delete(k) end
  end)

  it("get/set/delete with the documented return values", function()
    assert.is_nil(gw.cache:get("gwspec:a"))
    assert.is_true(gw.cache:set("gwspec:a", { 1 }, 0))  -- 0: no expiry
    assert.same({ 1 }, gw.cache:get("gwspec:a"))
    assert.is_true(gw.cache:delete("gwspec:a"))
    assert.is_false(gw.cache:delete("gwspec:a"))
    gw.cache:set("gwspec:b", "x")
    gw.cache:set("gwspec:b", nil)                        -- a nil value deletes
    assert.is_nil(gw.cache:get("gwspec:b"))
    assert.is_nil(gw.cache:get(nil))
  end)

  it("expires an entry after its ttl", function()
    gw.cache:set("gwspec:a", "v", 0.05)
    gw.sleep(0.08)
    assert.is_nil(gw.cache:get("gwspec:a"))
  end)

  it("raises on a nil or NaN key and a negative, NaN or non-number ttl", function()
    assert.has_error(function() gw.cache:set(nil, 1) end)
    assert.has_error(function() gw.cache:set(0 / 0, 1) end)
    for _, ttl in ipairs { -1, 0 / 0, "5", {} } do
      assert.has_error(function() gw.cache:set("gwspec:a", 1, ttl) end)
    end
  end)

  it("is bounded: 10000 entries, least recently used out first", function()
    local before = gw.cache:count()
    gw.cache:set("gwspec:a", "keep")
    for i = 1, 10000 do
      gw.cache:set("gwspec:fill" .. i, i)
      if i % 1000 == 0 then assert.equals("keep", gw.cache:get("gwspec:a")) end
    end
    assert.is_true(gw.cache:count() <= 10000)
    assert.equals("keep", gw.cache:get("gwspec:a"))
    assert.is_nil(gw.cache:get("gwspec:fill1"))
    assert.equals(10000, gw.cache:get("gwspec:fill10000"))
    for i = 1, 10000 do gw.cache:delete("gwspec:fill" .. i) end
    assert.is_true(gw.cache:count() <= before + 1)
  end)
end)
