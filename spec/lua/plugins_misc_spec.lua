-- Unit checks of the bundled plugins' pure helpers (the integration tests in
-- spec/integration/test_plugin_misc.py drive the plugins through the gateway).
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/lua"
local root = here .. "/../.."
local function plugin(name) return dofile(root .. "/plugins/" .. name .. ".lua") end

describe("ip_restriction: address parsing", function()
  local ipr = plugin("ip_restriction")
  local function hex(b)
    return b and (b:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
  end

  it("parses IPv4 and refuses near misses", function()
    assert.equals("7f000001", hex(ipr._parse_ip("127.0.0.1")))
    for _, bad in ipairs { "256.0.0.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "a.b.c.d", "",
                           "1.2.3.4 ", "1.2.3.-1" } do
      assert.is_nil(ipr._parse_ip(bad), bad)
    end
  end)

  it("parses IPv6, compressed forms and embedded IPv4", function()
    assert.equals("00000000000000000000000000000001", hex(ipr._parse_ip("::1")))
    assert.equals("20010db8000000000000000000000001", hex(ipr._parse_ip("2001:db8::1")))
    assert.equals("20010db8000000000000000000000000", hex(ipr._parse_ip("2001:db8::")))
    assert.equals("20010db8000100020003000400050006",
      hex(ipr._parse_ip("2001:db8:1:2:3:4:5:6")))
    assert.equals("00000000000000000000000000000000", hex(ipr._parse_ip("::")))
    assert.equals("0000000000000000000000000a000001", hex(ipr._parse_ip("::10.0.0.1")))
    -- IPv4-mapped addresses are their IPv4 address
    assert.equals("01020304", hex(ipr._parse_ip("::ffff:1.2.3.4")))
    assert.equals("01020304", hex(ipr._parse_ip("::ffff:102:304")))
    for _, bad in ipairs { "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7",
                           "g::1", ":::", "1:2:3:4:5:6:7::8" } do
      assert.is_nil(ipr._parse_ip(bad), bad)
    end
  end)

  it("matches CIDR blocks of both families", function()
    local list = assert(ipr._compile("allow", { "10.0.0.0/8", "192.168.1.128/25",
                                               "2001:db8::/32", "::1", "172.16.5.4" }))
    local function m(ip) return ipr._matches(list, assert(ipr._parse_ip(ip))) end
    assert.is_true(m("10.255.1.2"))
    assert.is_false(m("11.0.0.1"))
    assert.is_true(m("192.168.1.200"))
    assert.is_false(m("192.168.1.127"))
    assert.is_true(m("2001:db8:ffff::1"))
    assert.is_false(m("2001:db9::1"))
    assert.is_true(m("::1"))
    assert.is_false(m("::2"))
    assert.is_true(m("172.16.5.4"))
    assert.is_false(m("172.16.5.5"))
    assert.is_true(m("::ffff:10.1.1.1"))
    local zero = assert(ipr._compile("allow", { "0.0.0.0/0" }))
    assert.is_true(ipr._matches(zero, ipr._parse_ip("8.8.8.8")))
    assert.is_false(ipr._matches(zero, ipr._parse_ip("::8")))
  end)

  it("check() refuses bad entries", function()
    for _, bad in ipairs { "10.0.0.0/33", "::/129", "nope", "10.0.0.0/", "1.2.3.4/-1" } do
      local ok, err = ipr.check { allow = { bad }, status = 403, message = "x" }
      assert.is_nil(ok, bad)
      assert.matches("not an IP", err)
    end
    assert.is_nil((ipr.check { status = 403, message = "x" }))
  end)
end)

describe("basic_auth: configuration", function()
  local ba = plugin("basic_auth")
  it("takes plain and hashed passwords and refuses bad hashes", function()
    local conf = { users = { a = "pw", b = "sha256:" .. ("ab"):rep(32) }, realm = "r",
                   user_header = "X-User", plaintext = true, cache_ttl = 60 }
    assert(ba.check(conf))
    assert.equals(gw.crypto.digest("sha256", "pw"), conf._users.a.digest)
    assert.is_nil((ba.check { users = { a = "sha256:abc" }, realm = "r", cache_ttl = 60 }))
    -- a plain password needs plaintext = true
    local ok, err = ba.check { users = { a = "pw" }, realm = "r", cache_ttl = 60 }
    assert.is_nil(ok)
    assert.matches("not a password hash", err)
    -- a hash we cannot read is never taken as a password, plaintext or not
    for _, bad in ipairs { "$apr1$short", "$2y$05$tooshort", "{SHA}abc", "$argon2id$v=19$x" } do
      ok, err = ba.check { users = { a = bad }, realm = "r", plaintext = false, cache_ttl = 60 }
      assert.is_nil(ok, bad)
      assert.matches("hash", err)
    end
    -- a digest of the wrong length is refused, not taken as a literal password
    assert.is_nil((ba.check { users = { a = "sha256:" .. ("ab"):rep(31) }, realm = "r" }))
    assert.is_nil((ba.check { users = { a = "sha1:" .. ("ab"):rep(20) }, realm = "r" }))
    assert.is_nil((ba.check { users = {}, realm = "r" }))
    assert.is_nil((ba.check { users = { ["a:b"] = "x" }, realm = "r" }))
  end)
end)

describe("cors: configuration", function()
  local cors = plugin("cors")
  it("splits origins into exact names and wildcard patterns", function()
    local conf = { origins = { "https://a.example", "https://*.example.org" },
                   methods = "GET, post", credentials = false }
    assert(cors.check(conf))
    assert.is_true(conf._exact["https://a.example"])
    assert.equals("GET, POST", conf._methods)
    assert.truthy(("https://x.y.example.org"):match(conf._globs[1]))
    assert.falsy(("https://example.org"):match(conf._globs[1]))
    assert.falsy(("https://x.example.org.evil"):match(conf._globs[1]))
    assert.falsy(("http://x.example.org"):match(conf._globs[1]))
  end)
end)

describe("rate_limit: configuration", function()
  local rl = plugin("rate_limit")
  it("defaults burst to rate and refuses bad keys", function()
    local conf = { rate = 5, key = "remote_addr", scope = "local", status = 429, max_keys = 10 }
    assert(rl.check(conf))
    assert.equals(5, conf.burst)
    for _, k in ipairs { "header:", "claim:", "cookie:x", "ip" } do
      assert.is_nil((rl.check { rate = 1, key = k, scope = "local", status = 429,
                                max_keys = 10 }), k)
    end
    assert.is_nil((rl.check { rate = 0, key = "remote_addr", scope = "local", status = 429,
                              max_keys = 10 }))
  end)
end)
