"""gw.shared dictionaries across worker processes (workers = 2): a value one
worker sets is read by the other, incr is atomic under concurrent requests
on both workers, values survive a reload, a full dict evicts (forcible) or
answers "no memory", ttl/expire, a worker killed with SIGKILL while the
others keep using the dict does not wedge them; rate_limit's local scope is
one bucket for the whole instance; the `shared` config key is checked."""
import json
import os
import signal
import time

from conftest import request, wait_for
from luahelp import get, run_flights
from opshelp import post_reload, write_file

# One handler runs dict operations given in the query: op=NAME&d=DICT&k=KEY&v=T:VALUE
# &ttl=..&n=..; answers {"w": worker id, "r": [tostring of each result]}.
HANDLER = r'''
local me
-- taken while the config loads, as OpenResty code takes ngx.shared.NAME
local top, ghost = gw.shared("d"), gw.shared("ghost")
local function arg(q, name) return q:match("[?&]" .. name .. "=([^&]*)") end
local function val(s)
  if s == nil or s == "nil" then return nil end
  local t, v = s:match("^(%a):(.*)$")
  if t == "i" then return math.tointeger(tonumber(v)) end
  if t == "f" then return tonumber(v) + 0.0 end
  if t == "b" then return v == "true" end
  if t == "x" then return ("x"):rep(tonumber(v)) end
  return v
end
local function op(req)
  me = me or gw.base64.url_encode(gw.crypto.random(6))
  local q = "?" .. (req.query or "")
  local name = arg(q, "d") or "d"
  local d = gw.shared(name)
  local o = arg(q, "op")
  local res
  if d == nil then res = { "nodict" }
  elseif o == "fill" then -- n sets of k<i> = x:size; counts forcible
    local forced, fails = 0, 0
    for i = 1, tonumber(arg(q, "n")) do
      local ok, err, f = d:set(arg(q, "k") .. i, val(arg(q, "v")))
      if f then forced = forced + 1 end
      if not ok then fails = fails + 1 end
    end
    res = { forced, fails }
  elseif o == "spin" then -- hold the lock most of the time: a big set walks ~500 chunks
    local big = ("x"):rep(30000)
    for _ = 1, tonumber(arg(q, "n")) do d:set("spin", big) end
    res = { "spun" }
  elseif o == "keys" then
    res = { #d:keys(0) }
  else
    local a = { arg(q, "k") }
    if o == "set" or o == "add" then a[2] = val(arg(q, "v")); a[3] = tonumber(arg(q, "ttl")) end
    if o == "incr" then a[2] = tonumber(arg(q, "n")); a[3] = val(arg(q, "init")) end
    if o == "expire" then a[2] = tonumber(arg(q, "ttl")) end
    res = table.pack(d[o](d, a[1], a[2], a[3]))
  end
  local out = {}
  for i = 1, res.n or #res do out[i] = tostring(res[i]) end
  return 200, gw.json.encode({ w = me, r = out })
end
'''


def cfg(shared="d = 65536, small = 8192", workers=2, extra=""):
    return HANDLER + '''
return {
  workers = %d,
  listen = { { addr = "127.0.0.1:$PORT" } },
  admin = { addr = "127.0.0.1:$PORT1" },
  access_log = false,
  shared = { %s },
  routes = {
    { match = { path = "/hello" }, handler = function() return 200, "hi" end },
    { match = { path = "/op" }, handler = op },
    { match = { path = "/top" }, handler = function()
        return 200, tostring((top:incr("top", 1, 0))) end },
    { match = { path = "/ghost" }, handler = function()
        return 200, tostring(ghost:get("x")) end },
    { match = { prefix = "/rl/" },
      plugins = { { "rate_limit", rate = 0.001, burst = 5 } },
      handler = function() return 200, "ok" end },
    %s
  },
}
''' % (workers, shared, extra)


def start(gateway, **kw):
    g = gateway(cfg(**kw), nports=2, wait=False)
    wait_for(lambda: _ok(g.port, "/hello"), timeout=15, what="moongate answering")
    return g


def _ok(port, path):
    try:
        return request(port, "GET", path, timeout=2).status == 200
    except OSError:
        return False


def op(g, query, timeout=10):
    r = request(g.port, "GET", "/op?" + query, timeout=timeout)
    assert r.status == 200, (query, r, r.body[:300])
    return r.json()


def on_each_worker(g, query, want=2, timeout=10):
    """Sends query on many parallel connections until `want` workers have
    answered; returns {worker: result list}."""
    seen = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want:
        assert time.monotonic() < deadline, "only workers %r answered" % list(seen)
        for f in run_flights(g.port, [get("/op?" + query) for _ in range(12)], timeout=10):
            if f.status == 200:
                body = json.loads(f.body)
                seen.setdefault(body["w"], body["r"])
    return seen


def test_a_value_set_by_one_worker_is_read_by_the_other(gateway):
    g = start(gateway)
    first = op(g, "op=set&k=greeting&v=s:hello")
    assert first["r"] == ["true", "nil", "false"]
    seen = on_each_worker(g, "op=get&k=greeting")
    assert len(seen) == 2
    assert all(r == ["hello"] for r in seen.values()), seen
    # a delete on one is seen by all
    op(g, "op=delete&k=greeting")
    assert all(r == ["nil"] for r in on_each_worker(g, "op=get&k=greeting").values())


def test_types_and_ngx_return_values(gateway):
    g = start(gateway, workers=1)
    assert op(g, "op=set&k=i&v=i:42")["r"] == ["true", "nil", "false"]
    assert op(g, "op=get&k=i")["r"] == ["42"]
    op(g, "op=set&k=f&v=f:1.5")
    assert op(g, "op=get&k=f")["r"] == ["1.5"]
    op(g, "op=set&k=b&v=b:false")
    assert op(g, "op=get&k=b")["r"] == ["false"]
    assert op(g, "op=add&k=i&v=i:1")["r"] == ["false", "exists", "false"]
    assert op(g, "op=incr&k=nope&n=1")["r"] == ["nil", "not found", "false"]
    assert op(g, "op=incr&k=nope&n=1&init=i:5")["r"] == ["6", "nil", "false"]
    op(g, "op=set&k=s&v=s:x")
    assert op(g, "op=incr&k=s&n=1")["r"] == ["nil", "not a number", "false"]
    assert op(g, "op=ttl&k=missing")["r"] == ["nil", "not found"]
    assert op(g, "op=expire&k=missing&ttl=1")["r"] == ["nil", "not found"]
    assert op(g, "op=get&k=x&d=nope")["r"] == ["nodict"]
    # a table value raises: the handler fails with a 500, the worker lives
    g2 = gateway(cfg(workers=1, extra='{ match = { path = "/tbl" }, handler = function() '
                     'gw.shared("d"):set("t", {}) return 200, "no" end },'), nports=2, wait=False)
    wait_for(lambda: _ok(g2.port, "/hello"), timeout=15, what="second gateway")
    assert request(g2.port, "GET", "/tbl").status == 500
    assert request(g2.port, "GET", "/hello").status == 200


def test_a_dict_taken_at_config_load_is_the_shared_one(gateway):
    g = start(gateway)
    for i in range(1, 6):
        assert request(g.port, "GET", "/top").text() == str(i)
    assert op(g, "op=get&k=top")["r"] == ["5"]
    # a name the config does not declare: using the handle raises (500)
    assert request(g.port, "GET", "/ghost").status == 500
    assert "declares no dictionary ghost" in g.stderr_text()
    assert request(g.port, "GET", "/top").text() == "6"


def test_incr_is_atomic_across_workers(gateway):
    g = start(gateway)
    total = 0
    workers = set()
    for _ in range(10):
        flights = run_flights(g.port, [get("/op?op=incr&k=hits&n=1&init=i:0")
                                       for _ in range(20)], timeout=20)
        for f in flights:
            assert f.status == 200, f.error
            workers.add(json.loads(f.body)["w"])
        total += len(flights)
    assert total == 200
    assert op(g, "op=get&k=hits")["r"] == ["200"]
    assert len(workers) == 2, "both workers must have counted: %r" % workers


def test_values_survive_a_reload_and_a_new_dict_appears(gateway):
    g = start(gateway)
    admin = g.ports[1]
    g.admin_port = admin
    op(g, "op=set&k=kept&v=s:yes")
    op(g, "op=incr&k=n&n=5&init=i:0")
    # the same dicts plus a new one; d keeps its values
    write_file(g.config_path, cfg(shared="d = 65536, small = 8192, fresh = 16384")
               .replace("$PORT1", str(admin)).replace("$PORT", str(g.port)))
    status, body = post_reload(g)
    assert status == 200, body
    wait_for(lambda: all(r == ["nil"] for r in
                         on_each_worker(g, "op=get&k=x&d=fresh").values()),
             timeout=10, what="every worker to have the new dict")
    seen = on_each_worker(g, "op=get&k=kept")
    assert all(r == ["yes"] for r in seen.values()), seen
    assert op(g, "op=get&k=n")["r"] == ["5"]
    # the new dict is shared too
    op(g, "op=set&k=a&v=s:1&d=fresh")
    assert all(r == ["1"] for r in on_each_worker(g, "op=get&k=a&d=fresh").values())
    # a size change: a new empty dict under that name, with a warning
    write_file(g.config_path, cfg(shared="d = 131072, small = 8192, fresh = 16384")
               .replace("$PORT1", str(admin)).replace("$PORT", str(g.port)))
    status, body = post_reload(g)
    assert status == 200, body
    wait_for(lambda: all(r == ["nil"] for r in on_each_worker(g, "op=get&k=kept").values()),
             timeout=10, what="the resized dict in every worker")
    assert "shared dictionary d: new size 131072" in g.stderr_text()


def test_full_dict_evicts_lru_and_too_big_is_no_memory(gateway):
    g = start(gateway)
    r = op(g, "op=fill&d=small&k=f&v=x:40&n=300")["r"]
    assert int(r[0]) > 0 and r[1] == "0", r  # forcible evictions, no failures
    assert op(g, "op=get&d=small&k=f300")["r"] == ["x" * 40]
    assert op(g, "op=get&d=small&k=f1")["r"] == ["nil"]
    assert op(g, "op=set&d=small&k=f300&v=x:9000")["r"] == ["false", "no memory", "false"]
    assert op(g, "op=get&d=small&k=f300")["r"] == ["x" * 40]


def test_ttl_and_expire_across_workers(gateway):
    g = start(gateway)
    # long enough to read back on a loaded machine, then shortened
    op(g, "op=set&k=t&v=s:v&ttl=30")
    ttl = float(op(g, "op=ttl&k=t")["r"][0])
    assert 25 < ttl <= 30
    op(g, "op=set&k=forever&v=s:v")
    assert op(g, "op=ttl&k=forever")["r"] == ["0"]
    assert op(g, "op=expire&k=t&ttl=0.3")["r"] == ["true"]
    assert op(g, "op=expire&k=forever&ttl=0.3")["r"] == ["true"]
    wait_for(lambda: all(r == ["nil"] for r in on_each_worker(g, "op=get&k=t").values()) and
             all(r == ["nil"] for r in on_each_worker(g, "op=get&k=forever").values()),
             timeout=5, what="both keys to expire everywhere")


def test_rate_limit_local_is_one_bucket_for_all_workers(gateway):
    g = start(gateway)
    # 5 tokens, next one in 1000 s: exactly 5 of 30 requests spread over
    # both workers get through
    workers = set()
    codes = []
    for _ in range(3):
        for f in run_flights(g.port, [get("/rl/a") for _ in range(10)], timeout=20):
            codes.append(f.status)
    assert codes.count(200) == 5, codes
    assert codes.count(429) == 25, codes
    # both workers did answer in this configuration
    workers = on_each_worker(g, "op=get&k=x")
    assert len(workers) == 2


def test_killed_worker_holding_the_dict_does_not_wedge_the_others(gateway):
    g = start(gateway)
    from opshelp import children
    # until one of the killed workers held the lock (the spinner holds it
    # most of the time), at most 12 kills
    for _ in range(12):
        if "died holding its lock" in g.stderr_text():
            break
        # the master restarts a killed worker with back-off: wait for both
        pids = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(children(g.pid)),
                        timeout=15, what="two workers")
        # a spinner on some worker; kill every worker that is spinning (busy)
        run_flights(g.port, [get("/op?op=spin&n=10000000")], timeout=0.2)
        busy = wait_for(lambda: [p for p in pids if _cpu_running(p)], timeout=5,
                        what="the spinning worker")
        for victim in busy:
            os.kill(victim, signal.SIGKILL)
        # the survivors (and the restarted worker) keep using the dict
        wait_for(lambda: len([p for p in children(g.pid) if p not in busy]) == 2, timeout=10,
                 what="the worker restarted")
        t0 = time.monotonic()
        seen = on_each_worker(g, "op=incr&k=after&n=1&init=i:0", timeout=15)
        assert time.monotonic() - t0 < 15
        assert len(seen) == 2
    assert "died holding its lock" in g.stderr_text(), "no kill caught a worker in the dict"
    assert request(g.port, "GET", "/hello").status == 200


def _cpu_running(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "R"
    except OSError:
        return False


def test_config_checks_shared(run_moongate):
    bad = [
        ('shared = { d = 100 }', "shared.d: expected a size in bytes"),
        ('shared = { d = "big" }', "shared.d: expected a size in bytes"),
        ('shared = { ["a b"] = 65536 }', "shared.a b: a name is"),
        ('shared = 5', "shared"),
    ]
    for text, why in bad:
        r = run_moongate("-t", "-c", "$CFG", config='return {\n  listen = { { addr = '
                         '"127.0.0.1:1" } },\n  %s,\n}\n' % text)
        assert r.returncode != 0, text
        out = r.stderr_text + r.stdout_text
        assert why in out, (text, out)
        assert ":3:" in out, (text, out)  # the line of the key


def test_single_process_keeps_values_across_a_reload(gateway):
    g = start(gateway, workers=1)
    op(g, "op=set&k=kept&v=s:yes")
    write_file(g.config_path, cfg(workers=1, shared="d = 65536, small = 8192, late = 16384")
               .replace("$PORT1", str(g.ports[1])).replace("$PORT", str(g.port)))
    os.kill(g.pid, signal.SIGHUP)
    wait_for(lambda: op(g, "op=get&k=x&d=late")["r"] == ["nil"], timeout=10,
             what="the reload with the new dict")
    assert op(g, "op=get&k=kept")["r"] == ["yes"]
    assert op(g, "op=set&k=a&v=i:1&d=late")["r"] == ["true", "nil", "false"]
