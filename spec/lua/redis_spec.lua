-- gw.redis against real redis-server processes, inside the real runtime:
--   moongate --script /usr/bin/busted -o utfTerminal spec/lua/redis_spec.lua
-- Each server gets a free 127.0.0.1 port and a temp dir, and is stopped by PID.

-- A port nobody uses on this machine: random, below the ephemeral range,
-- and absent from /proc/net/tcp{,6} (no python start-up per port).
local function free_port()
  local used = {}
  for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    local h = io.open(f)
    if h then
      for line in h:lines() do
        local port = line:match("^%s*%d+: %x+:(%x+) ")
        if port then used[tonumber(port, 16)] = true end
      end
      h:close()
    end
  end
  for _ = 1, 1000 do
    local port = math.random(20000, 32000)
    if not used[port] then return port end
  end
  error("no free port")
end

local function have_redis()
  local f = io.popen("command -v redis-server")
  local p = f:read("*l")
  f:close()
  return p ~= nil and p ~= ""
end

-- Starts redis-server; returns a server object { port, pid, dir, extra }.
local function start_server(extra, port)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  port = port or free_port()
  local cmd = ("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no " ..
               "--daemonize no --enable-debug-command local --dir %s %s > %s/log 2>&1 & echo $!")
      :format(port, dir, extra or "", dir)
  local f = assert(io.popen(cmd))
  local pid = tonumber(f:read("*l"))
  f:close()
  return { port = port, pid = assert(pid), dir = dir, extra = extra,
           addr = "127.0.0.1:" .. port }
end

-- True while pid runs (a zombie left for init to reap counts as gone).
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local st = f:read("*l") or ""
  f:close()
  return st:match("%) (%a)") ~= "Z"
end

local function stop_server(s)
  if not s or not s.pid then return end
  os.execute("kill " .. s.pid .. " 2>/dev/null")
  for _ = 1, 200 do
    if not alive(s.pid) then break end
    gw.sleep(0.01)
  end
  s.pid = nil
end

-- Polls until `red` answers PING (readiness) or fails the test.
local function wait_ready(red, what)
  local err
  for _ = 1, 300 do
    local v, e = red:call("PING")
    if v == "PONG" then return end
    err = e
    if e and e:match("NOAUTH") then return end -- a server that wants AUTH is up
    gw.sleep(0.02)
  end
  error((what or "redis") .. " not ready: " .. tostring(err))
end

local function elapsed(fn)
  gw.sleep(0) -- gw.now() is the loop time: refresh it first
  local t0 = gw.now()
  local a, b = fn()
  gw.sleep(0)
  return gw.now() - t0, a, b
end

if not have_redis() then
  describe("gw.redis", function()
    pending("redis-server is not installed")
  end)
  return
end

describe("gw.redis", function()
  local srv, red

  setup(function()
    srv = start_server()
    red = gw.redis({ addr = srv.addr, timeout = 0.5, pool = 4 })
    wait_ready(red)
  end)

  teardown(function()
    stop_server(srv)
  end)

  before_each(function()
    assert.equal("OK", red:call("FLUSHALL"))
  end)

  describe("replies", function()
    it("status -> string", function()
      assert.equal("OK", red:call("SET", "k", "v"))
      assert.equal("PONG", red:call("PING"))
    end)

    it("bulk -> string, binary safe", function()
      local v = "a\0b\r\n" .. string.rep("x", 100000)
      assert.equal("OK", red:call("SET", "bin", v))
      assert.equal(v, red:call("GET", "bin"))
      assert.equal("", (red:call("SET", "empty", "")) and red:call("GET", "empty"))
    end)

    it("integer -> integer", function()
      assert.equal(1, red:call("INCR", "n"))
      assert.equal(42, red:call("INCRBY", "n", 41))
      assert.is_true(math.type(red:call("INCR", "n")) == "integer")
      assert.equal(-5, red:call("DECRBY", "m", 5))
    end)

    it("numbers as arguments are sent as strings", function()
      assert.equal("OK", red:call("SET", "f", 1.5))
      assert.equal("1.5", red:call("GET", "f"))
      assert.equal("OK", red:call("SET", 7, 8))
      assert.equal("8", red:call("GET", "7"))
    end)

    it("nil -> nil (and no error)", function()
      local v, err = red:call("GET", "missing")
      assert.is_nil(v)
      assert.is_nil(err)
      assert.equal(2, select("#", red:call("GET", "missing")) + 1) -- one nil value
    end)

    it("array -> table; nil inside an array is false", function()
      red:call("SET", "a", "1")
      red:call("SET", "c", "3")
      assert.same({ "1", false, "3" }, red:call("MGET", "a", "b", "c"))
      assert.same({}, red:call("LRANGE", "nolist", 0, -1))
      red:call("RPUSH", "l", "x", "y", "z")
      assert.same({ "x", "y", "z" }, red:call("LRANGE", "l", 0, -1))
    end)

    it("nested arrays -> nested tables", function()
      local v = red:call("EVAL", "return {1, 'two', {3, {'four', {5}}}, {}}", 0)
      assert.same({ 1, "two", { 3, { "four", { 5 } } }, {} }, v)
    end)

    it("error reply -> nil, Redis's message", function()
      local v, err = red:call("NOSUCHCOMMAND", "x")
      assert.is_nil(v)
      assert.matches("^ERR unknown command", err)
      red:call("SET", "s", "str")
      v, err = red:call("LPUSH", "s", "x")
      assert.is_nil(v)
      assert.matches("^WRONGTYPE", err)
    end)

    it("an error inside an array (EVAL) is { false, msg }", function()
      local v = red:call("EVAL", "return {1, redis.error_reply('boom')}", 0)
      assert.equal(1, v[1])
      assert.is_false(v[2][1])
      assert.matches("boom$", v[2][2])
    end)
  end)

  describe("pipeline", function()
    it("returns the replies in order", function()
      local res, err = red:pipeline({
        { "SET", "p", "1" },
        { "INCR", "p" },
        { "GET", "p" },
        { "GET", "nothing" },
        { "RPUSH", "pl", "a", "b" },
        { "LRANGE", "pl", 0, -1 },
      })
      assert.is_nil(err)
      assert.same({ "OK", 2, "2", false, 2, { "a", "b" } }, res)
    end)

    it("an error reply inside is { false, msg } and the rest still runs", function()
      red:call("SET", "str", "x")
      local res = red:pipeline({ { "INCR", "c" }, { "LPUSH", "str", "y" }, { "INCR", "c" } })
      assert.equal(1, res[1])
      assert.is_false(res[2][1])
      assert.matches("^WRONGTYPE", res[2][2])
      assert.equal(2, res[3])
    end)

    it("an empty pipeline gives an empty table", function()
      assert.same({}, red:pipeline({}))
    end)

    it("runs MULTI/EXEC atomically inside one pipeline", function()
      local res = red:pipeline({ { "MULTI" }, { "INCR", "t" }, { "INCR", "t" }, { "EXEC" } })
      assert.same({ "OK", "QUEUED", "QUEUED", { 1, 2 } }, res)
    end)

    it("many commands in one pipeline", function()
      local cmds = {}
      for i = 1, 2000 do cmds[i] = { "INCR", "many" } end
      local res = red:pipeline(cmds)
      assert.equal(2000, #res)
      assert.equal(2000, res[2000])
      assert.equal("2000", red:call("GET", "many"))
    end)

    it("rejects bad commands before sending anything", function()
      assert.has_error(function() red:pipeline({ "GET" }) end)
      assert.has_error(function() red:pipeline({ {} }) end)
      assert.has_error(function() red:pipeline({ { "GET", {} } }) end)
      assert.has_error(function() red:pipeline({ { "MULTI" }, { "INCR", "x" } }) end)
      assert.has_error(function() red:pipeline({ { "WATCH", "x" } }) end)
      assert.is_nil(red:call("GET", "x")) -- nothing ran
    end)
  end)

  describe("misuse raises", function()
    it("rejects non-string arguments", function()
      assert.has_error(function() red:call("GET", {}) end)
      assert.has_error(function() red:call("SET", "a", true) end)
      assert.has_error(function() red:call() end)
    end)

    it("refuses commands that would change a shared connection", function()
      for _, c in ipairs({ { "SUBSCRIBE", "ch" }, { "PSUBSCRIBE", "c*" }, { "MONITOR" },
                           { "SELECT", "1" }, { "QUIT" }, { "AUTH", "x" },
                           { "CLIENT", "REPLY", "OFF" }, { "MULTI" }, { "WATCH", "k" } }) do
        local ok, err = pcall(red.call, red, table.unpack(c))
        assert.is_false(ok, c[1])
        assert.matches("gw.redis", err)
      end
      assert.equal("PONG", red:call("PING")) -- the pool is fine
    end)

    it("needs a request coroutine", function()
      local co = coroutine.create(function() return red:call("PING") end)
      local ok, err = coroutine.resume(co)
      assert.is_false(ok)
      assert.matches("request coroutine", err)
    end)

    it("checks options", function()
      -- host names and unix sockets are taken (resolved without blocking);
      -- what is neither is refused
      assert.has_no.errors(function() gw.redis({ addr = "redis.example:6379" }) end)
      assert.has_no.errors(function() gw.redis({ addr = "unix:/run/redis.sock" }) end)
      local ok, err = pcall(gw.redis, { addr = "bad host!:6379" })
      assert.is_false(ok)
      assert.matches("bad host", err)
      assert.has_error(function() gw.redis({ addr = "unix:relative.sock" }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1" }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1:70000" }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1:1", bogus = 1 }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1:1", pool = 0 }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1:1", timeout = "x" }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1:1", timeout = 0/0 }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1:1", timeout = 0 }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1:1", pool = 1 << 40 }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1:1", db = -1 }) end)
      assert.has_error(function() gw.redis({ addr = "127.0.0.1:1", password = 5 }) end)
      assert.has_error(function() gw.redis(42) end)
    end)

    it("raises for a name the config does not have", function()
      local ok, err = pcall(gw.redis, "nosuch")
      assert.is_false(ok)
      assert.matches("no redis named 'nosuch'", err)
      assert.has_error(function() gw.redis() end) -- script mode has no config
    end)
  end)

  it("accepts localhost", function()
    local r2 = gw.redis({ addr = "localhost:" .. srv.port })
    assert.equal("PONG", r2:call("PING"))
  end)

  it("the same options give the same pool", function()
    local a = gw.redis({ addr = srv.addr, timeout = 0.5, pool = 4 })
    assert.equal(tostring(red), tostring(a))
  end)

  describe("EVALSHA", function()
    local script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"

    it("plain EVALSHA of an unknown script returns nil, NOSCRIPT", function()
      red:call("SCRIPT", "FLUSH")
      local v, err = red:call("EVALSHA", string.rep("0", 40), 0)
      assert.is_nil(v)
      assert.matches("^NOSCRIPT", err)
    end)

    it("the documented EVALSHA -> EVAL fallback pattern works", function()
      red:call("SCRIPT", "FLUSH")
      local sha = red:call("SCRIPT", "LOAD", script) -- only to learn the sha
      red:call("SCRIPT", "FLUSH")
      local v, err = red:call("EVALSHA", sha, 1, "e", 5)
      if not v and err:match("^NOSCRIPT") then
        v, err = red:call("EVAL", script, 1, "e", 5)
      end
      assert.is_nil(err)
      assert.equal(5, v)
      assert.equal(10, red:call("EVALSHA", sha, 1, "e", 5)) -- now cached
    end)

    it("eval_cached falls back to EVAL once, then hits the cache", function()
      red:call("SCRIPT", "FLUSH")
      assert.equal(3, red:eval_cached(script, 1, "ec", 3))
      local sha = red:call("SCRIPT", "LOAD", script)
      assert.same({ 1 }, red:call("SCRIPT", "EXISTS", sha))
      assert.equal(7, red:eval_cached(script, 1, "ec", 4))
      local v, err = red:eval_cached("return redis.error_reply('nope')", 0)
      assert.is_nil(v)
      assert.matches("nope$", err)
    end)
  end)

  describe("timeouts", function()
    it("a slow reply -> nil, 'timeout'; the late reply is discarded", function()
      local slow = gw.redis({ addr = srv.addr, timeout = 0.2, pool = 1 })
      assert.equal("OK", slow:call("SET", "tk", "before"))
      local dt, v, err = elapsed(function() return slow:call("DEBUG", "SLEEP", "1") end)
      assert.is_nil(v)
      assert.equal("timeout", err)
      assert.is_true(dt >= 0.15 and dt < 0.8, "took " .. dt)
      -- Redis is still asleep: later calls also time out, none hangs
      local dt2, v2, err2 = elapsed(function() return slow:call("GET", "tk") end)
      assert.is_nil(v2)
      assert.equal("timeout", err2)
      assert.is_true(dt2 < 0.8, "took " .. dt2)
      gw.sleep(1) -- the sleep ends, the late replies arrive and are dropped
      assert.equal("before", slow:call("GET", "tk"))
      assert.equal("OK", slow:call("SET", "tk", "after"))
      assert.equal("after", slow:call("GET", "tk"))
    end)

    it("a pipeline times out as a whole", function()
      local slow = gw.redis({ addr = srv.addr, timeout = 0.2, pool = 1 })
      local res, err = slow:pipeline({ { "PING" }, { "DEBUG", "SLEEP", "0.5" }, { "PING" } })
      assert.is_nil(res)
      assert.equal("timeout", err)
      gw.sleep(0.6)
      assert.same({ "PONG", "PONG" }, slow:pipeline({ { "PING" }, { "PING" } }))
    end)
  end)
end)

describe("gw.redis when Redis is not there", function()
  it("connection refused -> nil, err quickly", function()
    local port = free_port() -- nobody listens there
    local red = gw.redis({ addr = "127.0.0.1:" .. port, timeout = 2 })
    local dt, v, err = elapsed(function() return red:call("PING") end)
    assert.is_nil(v)
    assert.equal("connection refused", err)
    assert.is_true(dt < 0.5, "took " .. dt)
    -- while backing off, calls fail at once with the same error
    dt, v, err = elapsed(function() return red:pipeline({ { "PING" } }) end)
    assert.is_nil(v)
    assert.equal("connection refused", err)
    assert.is_true(dt < 0.5, "took " .. dt)
  end)

  it("calls waiting when the connection drops return nil, err at once", function()
    local srv = start_server()
    local ok, e = pcall(function()
      local red = gw.redis({ addr = srv.addr, timeout = 3, pool = 1 })
      wait_ready(red)
      -- SIGKILL while the server sleeps inside DEBUG SLEEP with our commands queued
      os.execute(("(sleep 0.3; kill -9 %d) >/dev/null 2>&1 &"):format(srv.pid))
      local dt, res, err = elapsed(function()
        return red:pipeline({ { "DEBUG", "SLEEP", "2" }, { "PING" } })
      end)
      assert.is_nil(res)
      assert.is_string(err)
      assert.not_equal("timeout", err)
      assert.is_true(dt < 2, "took " .. dt)
    end)
    stop_server(srv)
    assert(ok, e)
  end)

  it("fails fast while Redis is down and recovers after a restart", function()
    local srv = start_server()
    local ok, e = pcall(function()
      local red = gw.redis({ addr = srv.addr, timeout = 0.5, pool = 2 })
      wait_ready(red)
      assert.equal("OK", red:call("SET", "r", "1"))
      stop_server(srv)
      local failures = 0
      for _ = 1, 10 do
        local dt, v, err = elapsed(function() return red:call("GET", "r") end)
        assert.is_nil(v)
        assert.is_string(err)
        assert.is_true(dt < 0.45, "a call took " .. dt .. " while Redis was down")
        failures = failures + 1
        gw.sleep(0.02)
      end
      assert.equal(10, failures)
      srv = start_server(nil, srv.port)
      local v
      for _ = 1, 200 do -- backoff is at most 1 s
        v = red:call("PING")
        if v then break end
        gw.sleep(0.02)
      end
      assert.equal("PONG", v)
      assert.equal("OK", red:call("SET", "r", "2"))
      assert.equal("2", red:call("GET", "r"))
    end)
    stop_server(srv)
    assert(ok, e)
  end)
end)

describe("gw.redis AUTH and SELECT", function()
  local srv

  setup(function()
    srv = start_server("--requirepass s3cret")
    wait_ready(gw.redis({ addr = srv.addr }), "redis with requirepass")
  end)

  teardown(function()
    stop_server(srv)
  end)

  it("sends AUTH on connect", function()
    local red = gw.redis({ addr = srv.addr, password = "s3cret" })
    assert.equal("PONG", red:call("PING"))
    assert.equal("OK", red:call("SET", "auth", "yes"))
    assert.equal("yes", red:call("GET", "auth"))
  end)

  it("without the password, commands get Redis's NOAUTH error", function()
    local v, err = gw.redis({ addr = srv.addr }):call("GET", "auth")
    assert.is_nil(v)
    assert.matches("NOAUTH", err)
  end)

  it("a wrong password fails the call with Redis's message", function()
    local red = gw.redis({ addr = srv.addr, password = "wrong" })
    local v, err = red:call("PING")
    assert.is_nil(v)
    assert.matches("WRONGPASS", err)
  end)

  it("selects db on connect", function()
    local db0 = gw.redis({ addr = srv.addr, password = "s3cret" })
    local db3 = gw.redis({ addr = srv.addr, password = "s3cret", db = 3 })
    assert.equal("OK", db3:call("SET", "where", "three"))
    assert.is_nil(db0:call("GET", "where"))
    assert.equal("three", db3:call("GET", "where"))
    local info = db3:call("CLIENT", "INFO")
    assert.matches("db=3", info)
  end)
end)
