-- The bundled plugins configured as Kong/APISIX/Traefik users write them,
-- and their error answers ({"error": ...} JSON). Plugins run inside the real
-- runtime with a stand-in req (doc/plugins.md, "Testing a plugin").
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/lua"
local root = here .. "/../.."
local runtime = require "moongate.runtime"
local function plugin(name) return dofile(root .. "/plugins/" .. name .. ".lua") end

local function fake_req(t)
  t = t or {}
  local req = { ctx = {}, _h = {}, method = t.method or "GET", path = "/",
                query = "", remote_addr = t.remote_addr or "127.0.0.1", route = "r" }
  for k, v in pairs(t.headers or {}) do req._h[k:lower()] = v end
  function req:header(n) return self._h[n:lower()] end
  function req:set_header(n, v) self._h[n:lower()] = v end
  function req:remove_header(n) self._h[n:lower()] = nil end
  function req:headers()
    local out = {}
    for k, v in pairs(self._h) do out[k] = v end
    return out
  end
  function req:respond(status, body, headers)
    self.status, self.body, self.rheaders = status, body, headers or {}
    return true
  end
  return req
end

local function fake_res(headers)
  local res = { status = 200, _h = {} }
  for k, v in pairs(headers or {}) do res._h[k:lower()] = v end
  function res:header(n) return self._h[n:lower()] end
  function res:set_header(n, v) self._h[n:lower()] = v end
  function res:remove_header(n) self._h[n:lower()] = nil end
  return res
end

local function conf_of(p, t)
  local ok, err = runtime.check_conf(p, t)
  assert(ok, err)
  return t
end

local function json_error(req, status)
  assert.equals(status, req.status)
  assert.equals("application/json", req.rheaders["Content-Type"])
  local doc = gw.json.decode(req.body)
  assert.is_string(doc.error)
  return doc
end

describe("rate_limit", function()
  local rl = plugin("rate_limit")

  it("takes a rate under 1 without a burst (the bucket holds one request)", function()
    local c = conf_of(rl, { rate = 0.5 })
    assert.equals(1, c.burst)
    local req = fake_req { remote_addr = "10.9.9.1" }
    rl.access(c, req)
    assert.is_nil(req.status)
    req = fake_req { remote_addr = "10.9.9.1" }
    rl.access(c, req)
    local doc = json_error(req, 429)
    assert.equals("rate limit exceeded", doc.error)
    assert.equals("2", req.rheaders["Retry-After"])
    assert.equals("1", req.rheaders["RateLimit-Limit"])
    assert.equals("0", req.rheaders["RateLimit-Remaining"])
    assert.equals("2", req.rheaders["RateLimit-Reset"])
  end)

  it("puts RateLimit-* on allowed proxied responses", function()
    local c = conf_of(rl, { rate = 10, burst = 3 })
    local req = fake_req { remote_addr = "10.9.9.2" }
    rl.access(c, req)
    local res = fake_res()
    rl.response(c, req, res)
    assert.equals("3", res:header("RateLimit-Limit"))
    assert.equals("2", res:header("RateLimit-Remaining"))
  end)
end)

describe("cors under Kong's and APISIX's option names", function()
  local cors = plugin("cors")

  local function preflight(c, origin, headers)
    local req = fake_req { method = "OPTIONS", headers = {
      Origin = origin, ["Access-Control-Request-Method"] = "PUT",
      ["Access-Control-Request-Headers"] = headers } }
    cors.access(c, req)
    return req
  end

  it("Kong: exposed_headers", function()
    local c = conf_of(cors, { origins = { "https://app.example" }, exposed_headers = { "X-Total" },
                              credentials = true, max_age = 60 })
    local req = fake_req { headers = { Origin = "https://app.example" } }
    cors.access(c, req)
    local res = fake_res()
    cors.response(c, req, res)
    assert.equals("https://app.example", res:header("Access-Control-Allow-Origin"))
    assert.equals("X-Total", res:header("Access-Control-Expose-Headers"))
    assert.equals("true", res:header("Access-Control-Allow-Credentials"))
    assert.equals("Origin", res:header("Vary"))
  end)

  it("APISIX: allow_origins, allow_methods = \"*\", allow_headers = \"*\", allow_credential", function()
    local c = conf_of(cors, { allow_origins = "https://a.example,https://b.example",
                              allow_methods = "*", allow_headers = "*", allow_credential = true })
    local req = preflight(c, "https://b.example", "X-Custom, Content-Type")
    assert.equals(204, req.status)
    local h = req.rheaders
    assert.equals("https://b.example", h["Access-Control-Allow-Origin"])
    assert.matches("PUT", h["Access-Control-Allow-Methods"])
    assert.matches("OPTIONS", h["Access-Control-Allow-Methods"])
    assert.equals("X-Custom, Content-Type", h["Access-Control-Allow-Headers"])
    assert.equals("true", h["Access-Control-Allow-Credentials"])
    req = preflight(c, "https://evil.example")
    assert.is_nil(req.rheaders["Access-Control-Allow-Origin"])
  end)

  it("preflight_status = 200 as Kong answers", function()
    local c = conf_of(cors, { preflight_status = 200 })
    local req = preflight(c, "https://any.example")
    assert.equals(200, req.status)
    assert.equals("*", req.rheaders["Access-Control-Allow-Origin"])
  end)
end)

describe("request_id under Kong's and APISIX's option names", function()
  local rid = plugin("request_id")

  it("APISIX: include_in_response = false, algorithm = nanoid", function()
    local c = conf_of(rid, { include_in_response = false, algorithm = "nanoid" })
    assert.is_false(c.echo_downstream)
    local req = fake_req()
    rid.access(c, req)
    assert.matches("^[%w_-]+$", req.ctx.request_id)
    assert.equals(21, #req.ctx.request_id)
    assert.equals(req.ctx.request_id, req:header("X-Request-Id"))
    local res = fake_res()
    rid.response(c, req, res)
    assert.is_nil(res:header("X-Request-Id"))
  end)

  it("Kong: generator uuid#counter, echo_downstream", function()
    local c = conf_of(rid, { header_name = "Kong-Request-ID", generator = "uuid#counter" })
    local a, b = fake_req(), fake_req()
    rid.access(c, a)
    rid.access(c, b)
    local base, n = a.ctx.request_id:match("^(%x+%-%x+%-4%x+%-[89ab]%x+%-%x+)#(%d+)$")
    assert.truthy(base, a.ctx.request_id)
    assert.equals(base .. "#" .. (tonumber(n) + 1), b.ctx.request_id)
    local res = fake_res()
    rid.response(c, a, res)
    assert.equals(a.ctx.request_id, res:header("Kong-Request-ID"))
  end)

  it("uuid by default: RFC 9562 version 4", function()
    local c = conf_of(rid, {})
    local req = fake_req()
    rid.access(c, req)
    assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x+$", req.ctx.request_id)
    assert.equals(36, #req.ctx.request_id)
  end)
end)

describe("basic_auth", function()
  local ba = plugin("basic_auth")
  local function auth(user, pw)
    return { Authorization = "Basic " .. gw.base64.encode(user .. ":" .. pw) }
  end

  it("answers 401 JSON with WWW-Authenticate: Basic realm=\"...\"", function()
    local c = conf_of(ba, { users = { alice = "pw" }, realm = "staff", plaintext = true })
    local req = fake_req()
    ba.access(c, req)
    json_error(req, 401)
    assert.equals('Basic realm="staff"', req.rheaders["WWW-Authenticate"])
  end)

  it("takes users as a list of \"name:password\" or { username, password }, or as credentials", function()
    for _, users in ipairs {
      { "alice:pw:with:colons", { username = "bob", password = "hunter2" } },
    } do
      for _, key in ipairs { "users", "credentials" } do
        local c = conf_of(ba, { [key] = users, plaintext = true })
        local req = fake_req { headers = auth("alice", "pw:with:colons") }
        ba.access(c, req)
        assert.is_nil(req.status)
        assert.equals("alice", req.ctx.user)
        req = fake_req { headers = auth("bob", "hunter2") }
        ba.access(c, req)
        assert.equals("bob", req:header("X-Consumer-Username"))
      end
    end
    assert.is_nil((runtime.check_conf(ba, { users = { 42 } })))
    assert.is_nil((runtime.check_conf(ba, { users = { "nocolon" } })))
    assert.is_nil((runtime.check_conf(ba, { users = { "a:1", a = "2" } })))
    assert.is_nil((runtime.check_conf(ba, { users = { a = "1" }, credentials = { b = "2" } })))
    assert.is_nil((runtime.check_conf(ba, {})))
  end)

  it("anonymous (as Kong): a failed request goes on as that user, marked", function()
    local c = conf_of(ba, { users = { alice = "pw" }, anonymous = "guest", plaintext = true })
    local req = fake_req { headers = { ["X-Anonymous-Consumer"] = "false",
                                       ["X-Consumer-Username"] = "root" } }
    ba.access(c, req)
    assert.is_nil(req.status)
    assert.equals("guest", req.ctx.user)
    assert.equals("guest", req:header("X-Consumer-Username"))
    assert.equals("true", req:header("X-Anonymous-Consumer"))
    req = fake_req { headers = auth("alice", "pw") }
    req._h["x-anonymous-consumer"] = "true" -- spoofed
    ba.access(c, req)
    assert.equals("alice", req.ctx.user)
    assert.is_nil(req:header("X-Anonymous-Consumer"))
  end)
end)

describe("ip_restriction", function()
  local ipr = plugin("ip_restriction")

  it("APISIX: whitelist and blacklist", function()
    local c = conf_of(ipr, { whitelist = { "10.0.0.0/8" } })
    local req = fake_req { remote_addr = "192.0.2.1" }
    ipr.access(c, req)
    assert.equals("forbidden", json_error(req, 403).error)
    req = fake_req { remote_addr = "10.1.2.3" }
    ipr.access(c, req)
    assert.is_nil(req.status)
    c = conf_of(ipr, { blacklist = "2001:db8::/32", message = "go away" })
    req = fake_req { remote_addr = "2001:db8::7" }
    ipr.access(c, req)
    assert.equals("go away", json_error(req, 403).error)
    assert.is_nil((runtime.check_conf(ipr, { allow = { "10.0.0.1" }, whitelist = { "10.0.0.2" } })))
  end)
end)

describe("headers", function()
  local hp = plugin("headers")

  it("takes Kong's \"Name:value\" lists for set, add and rename", function()
    local c = conf_of(hp, { request = { set = { "X-Env: prod", "X-Url:http://a:1/" },
                                        add = { "X-Via:gw" }, rename = { "X-Old:X-New" } } })
    local req = fake_req { headers = { ["X-Via"] = "edge", ["X-Old"] = "v" } }
    hp.access(c, req)
    assert.equals("prod", req:header("X-Env"))
    assert.equals("http://a:1/", req:header("X-Url"))
    assert.equals("edge, gw", req:header("X-Via"))
    assert.equals("v", req:header("X-New"))
    assert.is_nil(req:header("X-Old"))
    assert.is_nil((runtime.check_conf(hp, { request = { set = { "no colon" } } })))
  end)
end)

describe("forward_auth", function()
  local fa = plugin("forward_auth")

  it("answers status_on_error with a JSON error when the auth server is unreachable", function()
    local c = conf_of(fa, { address = "http://127.0.0.1:1/auth", status_on_error = 503,
                            timeout = 2 })
    local req = fake_req()
    req.scheme = "http"
    fa.access(c, req)
    json_error(req, 503)
  end)
end)
