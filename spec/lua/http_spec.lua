-- gw.http.request against real HTTP servers, run inside the real runtime:
--   moongate --script /usr/bin/busted spec/lua/http_spec.lua
-- The origin is spec/integration/upstream.py (started with io.popen, stopped
-- by PID); a second small Python server below closes a kept-alive connection
-- when it receives the second request on it (a stale pooled connection).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local UPSTREAM = here .. "../integration/upstream.py"
local PYTHON = io.open("/usr/bin/python3") and "/usr/bin/python3" or "python3"

-- Starts `python3 FILE ARGS`; it prints "READY PORT" once it listens, so
-- reading that line is the readiness check.
local function spawn(file, args)
  local f = assert(io.popen("exec sh -c 'echo $$; exec " .. PYTHON .. " -B " .. file .. " " ..
                            (args or "") .. " 2>/dev/null'", "r"))
  local pid = assert(tonumber(f:read("l")), "no pid")
  local ready = f:read("l")
  local port = ready and tonumber(ready:match("^READY (%d+)"))
  assert(port, "server did not start: " .. tostring(ready))
  return { pid = pid, port = port, pipe = f,
           url = function(self, path) return "http://127.0.0.1:" .. self.port .. path end }
end

local function stop(s)
  if s and s.pid then
    os.execute("kill " .. s.pid .. " 2>/dev/null")
    s.pipe:close()
    s.pid = nil
  end
end

local function stats(s)
  local r = assert(gw.http.request{ url = s:url("/__stats") })
  assert.equal(200, r.status)
  return gw.json.decode(r.body)
end

local STALE_SERVER = [[
import socket, sys, threading
def serve(c, serial):
    buf = b""
    n = 0
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            cl = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    cl = int(v)
            while len(buf) < cl:
                buf += c.recv(65536)
            buf = buf[cl:]
            n += 1
            if n == 2:
                return  # the race a keep-alive client can lose: closed, no answer
            body = b"conn %d req %d" % (serial, n)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(64)
print("READY %d" % s.getsockname()[1], flush=True)
serial = 0
while True:
    c, _ = s.accept()
    serial += 1
    threading.Thread(target=serve, args=(c, serial), daemon=True).start()
]]

describe("gw.http.request", function()
  local up

  setup(function()
    up = spawn(UPSTREAM, "--port 0")
  end)
  teardown(function()
    stop(up)
  end)

  it("GETs with headers in and out", function()
    local r, err = gw.http.request{ url = up:url("/echo?a=1"), headers = { ["X-Test"] = "v1", ["X-Num"] = 42 } }
    assert.is_nil(err)
    assert.equal(200, r.status)
    assert.equal("application/json", r.headers["content-type"])
    assert.equal(tostring(up.port), r.headers["x-upstream-port"])
    local e = gw.json.decode(r.body)
    assert.equal("GET", e.method)
    assert.equal("/echo?a=1", e.path)
    local got = {}
    for _, h in ipairs(e.headers) do got[h[1]] = h[2] end
    assert.equal("v1", got["X-Test"])
    assert.equal("42", got["X-Num"])
    assert.equal("127.0.0.1:" .. up.port, got["Host"])
    assert.equal("none", e.framing)
  end)

  it("POSTs a body with Content-Length and gets it echoed", function()
    local payload = string.rep("0123456789", 5000) .. "\0\r\n"
    local r = assert(gw.http.request{ method = "POST", url = up:url("/echo"), body = payload })
    assert.equal(200, r.status)
    local e = gw.json.decode(r.body)
    assert.equal("POST", e.method)
    assert.equal("content-length", e.framing)
    assert.equal(payload, e.body)
  end)

  it("sends Content-Length: 0 for a POST without a body, and replaces caller framing", function()
    local r = assert(gw.http.request{ method = "post", url = up:url("/echo"),
                                      headers = { ["Content-Length"] = "99", ["Transfer-Encoding"] = "chunked" } })
    local e = gw.json.decode(r.body)
    assert.equal("POST", e.method)
    local cl = {}
    for _, h in ipairs(e.headers) do
      assert.not_equal("transfer-encoding", h[1]:lower())
      if h[1]:lower() == "content-length" then cl[#cl + 1] = h[2] end
    end
    assert.same({ "0" }, cl)
  end)

  it("joins repeated response headers and keeps the original list", function()
    local r = assert(gw.http.request{ url = up:url("/echo?hdr=X-Multi:a&hdr=X-Multi:b&hdr=X-Other:c") })
    assert.equal("a, b", r.headers["x-multi"])
    assert.equal("c", r.headers["x-other"])
    local multi = {}
    for _, p in ipairs(r.headers_list) do
      if p[1] == "X-Multi" then multi[#multi + 1] = p[2] end
    end
    assert.same({ "a", "b" }, multi)
    assert.equal("Content-Type", r.headers_list[1][1])
    -- the repeated names only, each with its fields
    r = assert(gw.http.request{ url = up:url("/echo?hdr=X-Multi:a&hdr=x-multi:b,%20c"
                                             .. "&hdr=X-Other:c&hdr=X-Multi:d") })
    assert.same({ ["x-multi"] = { "a", "b, c", "d" } }, r.repeated_headers)
    assert.equal("a, b, c, d", r.headers["x-multi"])
    r = assert(gw.http.request{ url = up:url("/echo?hdr=X-One:a,%20b") })
    assert.is_nil(r.repeated_headers)
    assert.equal("a, b", r.headers["x-one"])
  end)

  it("sends repeated request headers from a list value", function()
    local r = assert(gw.http.request{ url = up:url("/echo"), headers = { ["X-Rep"] = { "1", "2" } } })
    local vals = {}
    for _, h in ipairs(gw.json.decode(r.body).headers) do
      if h[1] == "X-Rep" then vals[#vals + 1] = h[2] end
    end
    assert.same({ "1", "2" }, vals)
  end)

  it("lets the caller set Host", function()
    local r = assert(gw.http.request{ url = up:url("/echo"), headers = { host = "example.test" } })
    local hosts = {}
    for _, h in ipairs(gw.json.decode(r.body).headers) do
      if h[1]:lower() == "host" then hosts[#hosts + 1] = h[2] end
    end
    assert.same({ "example.test" }, hosts)
  end)

  it("reads chunked and close-delimited bodies", function()
    local n = 300000
    local plain = assert(gw.http.request{ url = up:url("/bytes/" .. n) })
    assert.equal(n, #plain.body)
    local chunked = assert(gw.http.request{ url = up:url("/chunked/" .. n .. "?chunk=1000") })
    assert.equal("chunked", chunked.headers["transfer-encoding"])
    assert.equal(plain.body, chunked.body)
    local closed = assert(gw.http.request{ url = up:url("/close/" .. n) })
    assert.is_nil(closed.headers["content-length"])
    assert.equal(plain.body, closed.body)
    local empty = assert(gw.http.request{ url = up:url("/close/0") })
    assert.equal("", empty.body)
  end)

  it("answers HEAD without reading a body, then reuses the connection", function()
    local r = assert(gw.http.request{ method = "HEAD", url = up:url("/bytes/5000") })
    assert.equal(200, r.status)
    assert.equal("5000", r.headers["content-length"])
    assert.equal("", r.body)
    local again = assert(gw.http.request{ url = up:url("/bytes/10") })
    assert.equal(10, #again.body)
    assert.equal(r.headers["x-upstream-conn"], again.headers["x-upstream-conn"])
  end)

  it("skips 1xx interim responses", function()
    local r = assert(gw.http.request{ method = "PUT", url = up:url("/echo"), body = "abc",
                                      headers = { Expect = "100-continue" } })
    assert.equal(200, r.status)
    assert.equal("abc", gw.json.decode(r.body).body)
  end)

  it("returns 204 and error statuses as responses", function()
    local r = assert(gw.http.request{ url = up:url("/status/204") })
    assert.equal(204, r.status)
    assert.equal("", r.body)
    r = assert(gw.http.request{ url = up:url("/status/503") })
    assert.equal(503, r.status)
    assert.equal(503, gw.json.decode(r.body).status)
  end)

  it("keeps one connection alive over 20 sequential requests", function()
    local fresh = spawn(UPSTREAM, "--port 0")
    finally(function() stop(fresh) end)
    local conn
    for i = 1, 20 do
      local r = assert(gw.http.request{ url = fresh:url("/echo?i=" .. i) })
      assert.equal(200, r.status)
      assert.equal(tostring(i), r.headers["x-upstream-req"])
      conn = conn or r.headers["x-upstream-conn"]
      assert.equal(conn, r.headers["x-upstream-conn"])
    end
    local st = stats(fresh)
    assert.equal(1, st.connections)
    assert.equal(20, st.requests)
    assert.equal(1, st.accepted)
  end)

  it("times out against a slow server and drops the connection", function()
    gw.sleep(0)
    local t0 = gw.now()
    local r, err = gw.http.request{ url = up:url("/slow/3000"), timeout = 0.3 }
    local dt = gw.now() - t0
    assert.is_nil(r)
    assert.equal("timeout", err)
    assert.is_true(dt >= 0.25 and dt < 2, "took " .. dt)
    -- not returned to the pool: the next request gets another connection
    -- and its own answer at once
    local a = assert(gw.http.request{ url = up:url("/echo?after=timeout"), timeout = 2 })
    assert.equal("/echo?after=timeout", gw.json.decode(a.body).path)
  end)

  it("reports garbage as an invalid response", function()
    local r, err = gw.http.request{ url = up:url("/garbage") }
    assert.is_nil(r)
    assert.equal("invalid response", err)
  end)

  it("reports a reset or a truncated response", function()
    local r, err = gw.http.request{ method = "POST", url = up:url("/reset"), body = "x" }
    assert.is_nil(r)
    assert.matches("^connection", err)
    r, err = gw.http.request{ url = up:url("/half") }
    assert.is_nil(r)
    assert.equal("connection closed", err)
  end)

  it("reports a refused connection", function()
    local gone = spawn(UPSTREAM, "--port 0")
    stop(gone) -- its port is now closed
    local r, err = gw.http.request{ url = gone:url("/") }
    assert.is_nil(r)
    assert.equal("connection refused", err)
  end)

  it("reports a connect the kernel refuses at once by its cause", function()
    -- Linux refuses TCP to a broadcast address with ENETUNREACH, inside
    -- connect() itself: the failure is classified by its errno, not its text
    local r, err = gw.http.request{ url = "http://255.255.255.255:80/", timeout = 2 }
    assert.is_nil(r)
    assert.equal("network unreachable", err)
  end)

  it("caps the response size", function()
    local r, err = gw.http.request{ url = up:url("/bytes/100000"), max_body = 1000 }
    assert.is_nil(r)
    assert.equal("response too large", err)
    r, err = gw.http.request{ url = up:url("/chunked/100000"), max_body = 1000 }
    assert.is_nil(r)
    assert.equal("response too large", err)
    r, err = gw.http.request{ url = up:url("/close/100000"), max_body = 99999 }
    assert.is_nil(r)
    assert.equal("response too large", err)
    r = assert(gw.http.request{ url = up:url("/bytes/1000"), max_body = 1000 })
    assert.equal(1000, #r.body)
    -- the default cap is 8 MiB
    r, err = gw.http.request{ url = up:url("/bytes/" .. (8 * 1024 * 1024 + 1)) }
    assert.is_nil(r)
    assert.equal("response too large", err)
  end)

  it("resolves names from /etc/hosts without blocking", function()
    local name
    local f = io.open("/etc/hosts")
    if f then
      for line in f:lines() do
        local rest = line:match("^%s*127%.0%.0%.1%s+(.*)$")
        for n in (rest or ""):gmatch("%S+") do
          if n:match("^#") then break end
          if n ~= "localhost" and not name then name = n end
        end
      end
      f:close()
    end
    if not name then
      pending("no /etc/hosts alias for 127.0.0.1")
      return
    end
    local r = assert(gw.http.request{ url = "http://" .. name .. ":" .. up.port .. "/echo" })
    assert.equal(200, r.status)
    local host
    for _, h in ipairs(gw.json.decode(r.body).headers) do
      if h[1] == "Host" then host = h[2] end
    end
    assert.equal(name .. ":" .. up.port, host)
  end)

  it("reports names that do not resolve", function()
    local r, err = gw.http.request{ url = "http://name-that-does-not-exist.invalid/", timeout = 3 }
    assert.is_nil(r)
    assert.is_true(err == "could not resolve host" or err == "timeout", err)
  end)

  it("answers localhost and bad urls", function()
    local r = assert(gw.http.request{ url = "http://localhost:" .. up.port .. "/echo" })
    assert.equal(200, r.status)
    -- https urls are taken (spec/integration/test_tls_upstream.py covers TLS)
    local gone = spawn(UPSTREAM, "--port 0")
    stop(gone)
    local _, err = gw.http.request{ url = "https://127.0.0.1:" .. gone.port .. "/" }
    assert.equal("connection refused", err)
    for _, bad in ipairs({ "ftp://x/", "http://", "http://:80/", "http://h:0/", "http://h:99999/",
                           "http://a b/", "http://[::1/", "http://h/pa th" }) do
      local r2, e2 = gw.http.request{ url = bad }
      assert.is_nil(r2, bad)
      assert.matches("invalid url", e2, 1, true)
    end
  end)

  it("raises on misuse", function()
    assert.has_error(function() gw.http.request("http://x/") end)
    assert.has_error(function() gw.http.request{} end)
    assert.has_error(function() gw.http.request{ url = up:url("/"), method = "G T" } end)
    assert.has_error(function() gw.http.request{ url = up:url("/"), headers = { ["bad name"] = "v" } } end)
    assert.has_error(function() gw.http.request{ url = up:url("/"), headers = { X = "a\r\nInjected: 1" } } end)
    assert.has_error(function() gw.http.request{ url = up:url("/"), headers = { X = true } } end)
    assert.has_error(function() gw.http.request{ url = up:url("/"), body = 5 } end)
    assert.has_error(function() gw.http.request{ url = up:url("/"), timeout = -1 } end)
    assert.has_error(function() gw.http.request{ url = up:url("/"), max_body = 1.5 } end)
  end)

  it("refuses to yield from a user coroutine", function()
    local co = coroutine.create(function() return gw.http.request{ url = up:url("/") } end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.matches("request coroutine", err)
  end)
end)

describe("gw.http.request on a stale pooled connection", function()
  local srv, file

  setup(function()
    file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write(STALE_SERVER)
    f:close()
    srv = spawn(file)
  end)
  teardown(function()
    stop(srv)
    os.remove(file)
  end)

  it("replays an idempotent request once on a fresh connection", function()
    local r1 = assert(gw.http.request{ url = srv:url("/a") })
    assert.equal("conn 1 req 1", r1.body)
    -- the pooled connection 1 is closed by the server on the next request
    local r2, err = gw.http.request{ url = srv:url("/b") }
    assert.is_nil(err)
    assert.equal("conn 2 req 1", r2.body)
  end)

  it("does not replay a POST that may have reached the server", function()
    local r, err = gw.http.request{ method = "POST", url = srv:url("/c"), body = "once" }
    assert.is_nil(r)
    assert.equal("connection closed", err)
    local r2 = assert(gw.http.request{ url = srv:url("/d") })
    assert.equal("conn 3 req 1", r2.body)
  end)
end)

-- The options that keep data in C: templates, a flat header list, lazy
-- responses, res:header, and forwarding a request's headers (here from a
-- stand-in req; spec/integration/test_http_client.py forwards real ones).
describe("gw.http templates, forward and lazy responses", function()
  local up
  setup(function()
    up = spawn(UPSTREAM, "--port 0")
  end)
  teardown(function()
    stop(up)
  end)

  -- the echoed request's { name = { values... } } (names as sent)
  local function sent(r)
    local e = gw.json.decode(r.body)
    local got = {}
    for _, h in ipairs(e.headers) do
      got[h[1]] = got[h[1]] or {}
      table.insert(got[h[1]], h[2])
    end
    return e, got
  end

  local function stand_in(headers)
    return { headers = function() local t = {} for k, v in pairs(headers) do t[k] = v end return t end }
  end

  it("reuses a template: method, url and options parsed once, per-call overrides", function()
    local t = gw.http.template{ url = up:url("/echo?t=1"), method = "put", timeout = 5 }
    for i = 1, 3 do
      local r = assert(t:request{ headers = { ["X-I"] = i }, body = "b" .. i })
      local e, got = sent(r)
      assert.equal("PUT", e.method)
      assert.equal("/echo?t=1", e.path)
      assert.equal("b" .. i, e.body)
      assert.same({ tostring(i) }, got["X-I"])
      assert.same({ "127.0.0.1:" .. up.port }, got["Host"])
    end
    local r = assert(t:request{ method = "delete" })
    assert.equal("DELETE", (sent(r)).method)
    r = assert(t:request()) -- no options at all
    assert.equal("PUT", (sent(r)).method)
    assert.same({ "0" }, (select(2, sent(r)))["Content-Length"])
  end)

  it("refuses bad templates and bad per-call options", function()
    assert.has_error(function() gw.http.template{ url = "ftp://x/" } end,
      "gw.http.template: invalid url (expected http[s]://host[:port]/path)")
    assert.has_error(function() gw.http.template{} end, "gw.http.template: url must be a string")
    assert.has_error(function() gw.http.template{ url = up:url("/"), forward_drop = { "a b" } } end,
      "gw.http.template: forward_drop: invalid header name 'a b'")
    assert.has_error(function() gw.http.template{ url = up:url("/"), forward_only = { 1 } } end,
      "gw.http.template: forward_only must be a list of header names")
    local t = gw.http.template{ url = up:url("/") }
    assert.has_error(function() t:request{ bogus = 1 } end,
      "gw.http template request: unknown option or wrong type: 'bogus'")
    assert.has_error(function() t:request{ body = 1 } end,
      "gw.http template request: unknown option or wrong type: 'body'")
    assert.has_error(function() t:request{ forward = {} } end,
      "gw.http.request: forward must be a req object")
    assert.has_error(function() t.request({}, {}) end)
  end)

  it("takes headers as a flat list, sent in order, repeated names kept", function()
    local r = assert(gw.http.request{ url = up:url("/echo"),
      headers = { "X-B", "2", "X-A", 1, "X-B", "3", "Content-Length", "9" } })
    local e = gw.json.decode(r.body)
    local names = {}
    for _, h in ipairs(e.headers) do
      if h[1]:sub(1, 2) == "X-" then names[#names + 1] = h[1] .. "=" .. h[2] end
      assert.not_equal("9", h[2])
    end
    assert.same({ "X-B=2", "X-A=1", "X-B=3" }, names)
    assert.has_error(function()
      gw.http.request{ url = up:url("/echo"), headers = { "X-A" } }
    end, "gw.http.request: header X-A: value must be a string")
    assert.has_error(function()
      gw.http.request{ url = up:url("/echo"), headers = { "X-A", "a\r\nX-Evil: 1" } }
    end, "gw.http.request: header X-A has a line break or NUL in its value")
  end)

  it("reads one response header with res:header, lazily or not", function()
    local url = up:url("/echo?hdr=X-Multi:a&hdr=x-multi:b&hdr=X-One:1")
    for _, lazy in ipairs { false, true } do
      local r = assert(gw.http.request{ url = url, lazy_headers = lazy })
      assert.equal("1", r:header("x-one"))
      assert.is_nil((select(2, r:header("X-One"))))
      local v, list = r:header("X-MULTI")
      assert.equal("a, b", v)
      assert.same({ "a", "b" }, list)
      assert.is_nil(r:header("x-none"))
    end
  end)

  it("res:header reads nothing past a head someone replaced", function()
    local r = assert(gw.http.request{ url = up:url("/echo") })
    local header = r.header
    getmetatable(r)[1] = "no-separator" -- a table response keeps its head there
    assert.is_nil(r:header("no-separator"))
    assert.is_nil(header(setmetatable({}, { "a\0b" }), "a")) -- no closing NUL
    assert.equal("b", header(setmetatable({}, { "a\0b\0" }), "A"))
    assert.has_error(function() header({}, "a") end, "res:header: not a gw.http response")
  end)

  it("with lazy_headers returns a read-only response that builds its tables on first use", function()
    local r = assert(gw.http.request{ url = up:url("/echo?hdr=X-Multi:a&hdr=X-Multi:b"),
                                      lazy_headers = true })
    assert.equal("userdata", type(r))
    assert.equal(200, r.status)
    assert.equal("GET", gw.json.decode(r.body).method)
    assert.same({ ["x-multi"] = { "a", "b" } }, r.repeated_headers) -- before headers
    assert.equal("a, b", r.headers["x-multi"])
    assert.equal(r.headers, r.headers) -- built once
    local multi = {}
    for _, p in ipairs(r.headers_list) do
      if p[1] == "X-Multi" then multi[#multi + 1] = p[2] end
    end
    assert.same({ "a", "b" }, multi)
    assert.equal(r.headers_list, r.headers_list)
    assert.is_nil(r.nothing)
    assert.has_error(function() r.status = 1 end)
    local plain = assert(gw.http.request{ url = up:url("/echo"), lazy_headers = true })
    assert.is_nil(plain.repeated_headers)
    assert.equal("application/json", plain.headers["content-type"])
    assert.is_nil(plain.repeated_headers)
    local t = gw.http.template{ url = up:url("/status/204"), lazy_headers = true }
    local r204 = assert(t:request())
    assert.equal(204, r204.status)
    assert.equal("", r204.body)
  end)

  it("forwards a stand-in req's headers through the template's filters", function()
    local t = gw.http.template{ url = up:url("/echo"),
      forward_drop = { "Connection", "X-Drop", "host" }, lazy_headers = true }
    local req = stand_in { connection = "X-Listed, close", ["x-listed"] = "l", ["x-drop"] = "d",
      ["x-keep"] = "k", ["x-over"] = "client", ["content-length"] = "5", host = "client.example",
      ["x-rep"] = { "1", "2" } }
    local r = assert(t:request{ forward = req, headers = { "X-Over", "ours" } })
    local _, got = sent(r)
    assert.same({ "k" }, got["x-keep"])
    assert.same({ "ours" }, got["X-Over"])
    assert.is_nil(got["x-over"])
    assert.is_nil(got["x-listed"])
    assert.is_nil(got["x-drop"])
    assert.is_nil(got["connection"])
    assert.is_nil(got["content-length"])
    assert.same({ "1", "2" }, got["x-rep"])
    assert.same({ "127.0.0.1:" .. up.port }, got["Host"]) -- host dropped: the url's
    -- an allow list: only those (the headers table always goes)
    t = gw.http.template{ url = up:url("/echo"), forward_only = { "X-KEEP", "host" } }
    r = assert(t:request{ forward = req, headers = { ["X-Mine"] = "m" } })
    _, got = sent(r)
    assert.same({ "k" }, got["x-keep"])
    assert.same({ "client.example" }, got["host"]) -- forwarded Host replaces the url's
    assert.is_nil(got["Host"])
    assert.same({ "m" }, got["X-Mine"])
    assert.is_nil(got["x-rep"])
    -- plain gw.http.request forwards too (no lists: all but hop-by-hop,
    -- framing and Connection-listed fields)
    req = stand_in { connection = "X-Listed, close", ["x-listed"] = "l", ["x-drop"] = "d",
      ["keep-alive"] = "1", te = "trailers", trailer = "x", upgrade = "websocket",
      ["proxy-connection"] = "close", ["transfer-encoding"] = "chunked" }
    r = assert(gw.http.request{ url = up:url("/echo"), forward = req })
    local e
    e, got = sent(r)
    assert.same({ "d" }, got["x-drop"])
    for name in pairs(got) do
      assert.is_nil(({ ["x-listed"] = 1, connection = 1, ["keep-alive"] = 1, te = 1, trailer = 1,
                       upgrade = 1, ["proxy-connection"] = 1, ["transfer-encoding"] = 1 })[name], name)
    end
    assert.equal("none", e.framing)
  end)
end)

