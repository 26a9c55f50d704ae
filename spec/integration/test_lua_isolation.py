"""A plugin that fails harms only its own request (issue 3): Lua errors are a
generic 500 with the traceback in the error log; endless loops and memory
hogs are stopped and answered 500 while the worker lives on; no request sees
another's ctx; a stray coroutine.yield is a 500, not a hang."""
import re
import threading
import time

import pytest

from conftest import Raw, assert_json_error, request, wait_for
from luahelp import get, handler, hook, lua_config, plugin, run_flights

# The worker's pid, read by the worker itself: a worker that died and was
# replaced shows a new pid.
PID = {"match": {"path": "/pid"}, "handler": handler(
    'local f = io.open("/proc/self/stat"); local s = f:read("l"); f:close(); '
    'return 200, s:match("^%d+")')}
FAST = {"match": {"path": "/fast"}, "handler": handler('return 200, "fast"')}


def worker_pid(port):
    r = request(port, "GET", "/pid")
    assert r.status == 200, r
    return int(r.body)


def assert_internal_error(r, *must_not_leak):
    doc = assert_json_error(r, 500)
    assert doc == {"error": "internal error"}, doc
    body = r.body.decode("latin-1")
    for s in ("traceback", ".lua", "stack") + must_not_leak:
        assert s not in body, "the body leaks %r: %r" % (s, body)


# --------------------------------------------------------------------------
# Lua errors

MATCH_ERROR = Raw('function(req) if req.path == "/match-error" then '
                  'error("match failed tb-marker-match") end return false end')

def test_lua_error_is_a_generic_500_with_traceback_in_the_log(gateway, upstream):
    g = gateway(lua_config([
        {"match": {"prefix": "/access/"}, "upstream": "app",
         "plugins": [plugin("t_error", phase="access")]},
        {"match": {"prefix": "/response/"}, "upstream": "app",
         "plugins": [plugin("t_error", phase="response")]},
        {"match": {"prefix": "/after-sleep/"}, "upstream": "app",
         "plugins": [hook(access='gw.sleep(0.05); error("late failure tb-marker-late")')]},
        {"match": {"path": "/handler"},
         "handler": handler('error("handler failed tb-marker-handler")')},
        {"match": {"path": "/not-a-status"}, "handler": handler('return "two hundred"')},
        {"match": {"path": "/table-error"}, "handler": handler('error({ code = 42 })')},
        {"match": MATCH_ERROR, "handler": handler('return 200, "unreachable"')},
        FAST,
    ], upstream))
    cases = [("/access/echo", "tb-marker-access"), ("/response/echo", "tb-marker-response"),
             ("/after-sleep/echo", "tb-marker-late"), ("/handler", "tb-marker-handler"),
             ("/not-a-status", None), ("/table-error", None),
             ("/match-error", "tb-marker-match")]
    for path, marker in cases:
        r = request(g.port, "GET", path)
        assert_internal_error(r, *([marker] if marker else []))
        assert request(g.port, "GET", "/fast").body == b"fast", path
    err = wait_for(lambda: (lambda t: t if "tb-marker-match" in t else None)(g.stderr_text()),
                   timeout=3, what="the error log")
    for marker in ("t_error exploded in tb-marker-access", "tb-marker-response",
                   "tb-marker-late", "tb-marker-handler", "tb-marker-match"):
        assert marker in err, marker
    assert err.count("stack traceback") >= 5, err[-3000:]
    # the traceback names the plugin's file and line
    assert re.search(r"t_error\.lua:\d+", err), err[-3000:]
    st = upstream.stats()
    assert st["requests"] == 1, st     # only /response/echo reached the upstream


def test_log_phase_error_does_not_touch_the_response(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/l"}, "plugins": [plugin("t_error", phase="log")],
         "handler": handler('return 200, "fine"')},
    ]))
    r = request(g.port, "GET", "/l")
    assert (r.status, r.body) == (200, b"fine")
    wait_for(lambda: "tb-marker-log" in g.stderr_text(), timeout=3, what="the log error")
    assert request(g.port, "GET", "/l").status == 200


def test_api_misuse_raises(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/sleep-string"}, "handler": handler('gw.sleep("soon")')},
        {"match": {"path": "/sleep-negative"}, "handler": handler("gw.sleep(-1)")},
        {"match": {"path": "/bad-header-name"},
         "handler": handler('req:set_header("bad name", "v"); return 200, "no"')},
        {"match": {"path": "/bad-header-value"},
         "handler": handler('req:set_header("X-Ok", "a\\r\\nInjected: 1"); return 200, "no"')},
        FAST,
    ]))
    for path in ("/sleep-string", "/sleep-negative", "/bad-header-name", "/bad-header-value"):
        r = request(g.port, "GET", path)
        assert_internal_error(r)
        assert not r.has("Injected")
    assert request(g.port, "GET", "/fast").status == 200


# --------------------------------------------------------------------------
# runaway plugins

LIMITS = {"max_instructions": 1e7, "memory_limit": 64 * 1024 * 1024}


@pytest.mark.parametrize("mode", ["plain", "pcall", "sort", "wrap", "resume"])
def test_endless_loop_is_stopped_and_others_are_served(gateway, mode):
    g = gateway(lua_config([
        {"match": {"path": "/loop"}, "plugins": [plugin("t_loop", mode=mode)],
         "handler": handler('return 200, "finished?"')},
        {"match": {"path": "/work"}, "handler": handler(
            "local x = 0 for i = 1, 1000000 do x = x + i end return 200, tostring(x)")},
        FAST, PID,
    ], lua=LIMITS))
    pid = worker_pid(g.port)
    out = {}

    def looper():
        t = time.monotonic()
        try:
            out["r"] = request(g.port, "GET", "/loop", timeout=6)
        except OSError as e:
            out["r"] = e
        out["t"] = time.monotonic() - t

    th = threading.Thread(target=looper)
    th.start()
    time.sleep(0.05)
    t = time.monotonic()
    try:
        fast = request(g.port, "GET", "/fast", timeout=6)
    except OSError as e:
        fast = e
    fast_t = time.monotonic() - t
    th.join(10)
    assert not th.is_alive()
    assert not isinstance(out["r"], Exception), \
        "no answer to the endless loop within 6 s (%r): it was not stopped" % out["r"]
    assert_internal_error(out["r"])
    assert out["t"] < 5, "the loop was stopped only after %.1f s" % out["t"]
    assert not isinstance(fast, Exception), "another client was not served: %r" % fast
    assert fast.status == 200 and fast_t < 5
    # right after: served at once, by the same worker; work under the budget is fine
    t = time.monotonic()
    assert request(g.port, "GET", "/fast").status == 200
    assert time.monotonic() - t < 0.5
    assert request(g.port, "GET", "/work").body == b"500000500000"
    assert worker_pid(g.port) == pid
    wait_for(lambda: "t_loop" in g.stderr_text(), timeout=3, what="the loop in the log")


def test_endless_loop_is_stopped_in_forked_workers(gateway):
    # workers are forked from the master: the budget's watchdog (a CPU-time
    # timer, not inherited by fork) must run in each of them
    g = gateway(lua_config([
        {"match": {"path": "/loop"}, "plugins": [plugin("t_loop", mode="plain")],
         "handler": handler('return 200, "finished?"')},
        FAST,
    ], lua=LIMITS, workers=2))
    for _ in range(4):  # new connections: both workers get some
        t = time.monotonic()
        r = request(g.port, "GET", "/loop", timeout=6)
        assert_internal_error(r)
        assert time.monotonic() - t < 5
        assert request(g.port, "GET", "/fast").status == 200


def test_memory_hog_gets_500_and_the_worker_lives(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/hog"}, "plugins": [plugin("t_hog")],
         "handler": handler('return 200, "never"')},
        {"match": {"path": "/sleeper"}, "handler": handler(
            'local t = { "a" } gw.cache:set("sleeping", "yes") gw.sleep(0.5) '
            't[2] = string.rep("b", 1000) return 200, #t[1] + #t[2] .. ""')},
        {"match": {"path": "/sleeping"},
         "handler": handler('return 200, tostring(gw.cache:get("sleeping"))')},
        {"match": {"path": "/big"}, "handler": handler(
            'local s = string.rep("z", 8 * 1024 * 1024) return 200, tostring(#s)')},
        FAST, PID,
    ], lua=LIMITS))
    pid = worker_pid(g.port)
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", request(g.port, "GET", "/sleeper")))
    th.start()
    # the sleeper is inside gw.sleep while the hog runs
    wait_for(lambda: request(g.port, "GET", "/sleeping").body == b"yes", timeout=3,
             what="the sleeper to start sleeping")
    for _ in range(2):
        t = time.monotonic()
        r = request(g.port, "GET", "/hog", timeout=30)
        assert_internal_error(r)
        assert time.monotonic() - t < 10
        assert request(g.port, "GET", "/fast").body == b"fast"
    th.join(10)
    assert out["r"].status == 200 and out["r"].body == b"1001", out["r"]
    # the memory came back: a legitimate 8 MB allocation still works
    assert request(g.port, "GET", "/big").body == str(8 * 1024 * 1024).encode()
    assert worker_pid(g.port) == pid


# --------------------------------------------------------------------------
# ctx and coroutine state

def test_no_request_sees_another_requests_ctx(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/ctx"},
         "plugins": [hook(access="""
             local mine = req:header("x-v")
             local before = tostring(req.ctx.v) .. "," .. tostring(req.ctx.leak)
             req.ctx.v = mine
             local n = 0
             for _ in pairs(req.ctx) do n = n + 1 end
             gw.sleep(0.3)
             req.ctx.seen = before .. "," .. n .. "," .. tostring(req.ctx.v == mine)
             req.ctx.leak = "leaked-from-" .. mine
         """)],
         "handler": handler('gw.sleep(0.05); return 200, req.ctx.v .. "|" .. req.ctx.seen')},
    ]))
    reqs = [get("/ctx", headers=[("X-V", "value-%d" % i)]) for i in range(60)]
    flights = run_flights(g.port, reqs, timeout=10)
    for f in flights:
        assert f.status == 200, (f.i, f.status, f.error)
        assert f.body.decode() == "value-%d|nil,nil,1,true" % f.i, f.body
    # and one after the others
    r = request(g.port, "GET", "/ctx", headers=[("X-V", "last")])
    assert r.body == b"last|nil,nil,1,true"


def test_locals_survive_a_sleep_per_request(gateway):
    g = gateway(lua_config([{"match": {"path": "/co"}, "handler": handler("""
        local mine = req:header("x-v")
        local acc = {}
        for i = 1, 5 do acc[i] = mine .. i; gw.sleep(0.02) end
        return 200, table.concat(acc, ",")
    """)}]))
    reqs = [get("/co", headers=[("X-V", "r%d-" % i)]) for i in range(40)]
    for f in run_flights(g.port, reqs, timeout=10):
        assert f.status == 200, (f.status, f.error)
        want = ",".join("r%d-%d" % (f.i, k) for k in range(1, 6))
        assert f.body.decode() == want


def test_direct_coroutine_yield_is_a_500_not_a_hang(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/yield"}, "plugins": [plugin("t_yield")],
         "handler": handler('return 200, "no"')},
        {"match": {"path": "/yield-handler"}, "handler": handler("coroutine.yield(1, 2)")},
        {"match": {"path": "/sleep-in-user-coroutine"}, "handler": handler(
            "local co = coroutine.wrap(function() gw.sleep(0.01) end) co() "
            'return 200, "no"')},
        {"match": {"path": "/user-coroutines"}, "handler": handler("""
            local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
            local ok = pcall(gw.sleep, 0.01)
            return 200, gen() .. gen() .. gen() .. tostring(ok)
        """)},
        FAST,
    ]))
    for path in ("/yield", "/yield-handler", "/sleep-in-user-coroutine"):
        t = time.monotonic()
        r = request(g.port, "GET", path, timeout=10)
        assert_internal_error(r)
        assert time.monotonic() - t < 2, path
        assert request(g.port, "GET", "/fast").status == 200
    # coroutines of the plugin's own, and gw.sleep under pcall, work
    r = request(g.port, "GET", "/user-coroutines")
    assert (r.status, r.body) == (200, b"123true")
