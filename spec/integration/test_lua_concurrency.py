"""Nothing ever blocks (issue 3): requests that wait in gw.sleep yield their
coroutine and one worker serves thousands at once; clients that go away while
their coroutine waits are cancelled cleanly (run this under ASan too:
MOONGATE_BIN=<asan build>/moongate)."""
import selectors
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import Client, request, wait_for
from luahelp import (close_all, get, handler, hook, lua_config, open_flights, pump,
                     raise_nofile, run_flights)

# Counts the requests inside the sleep (gw.cache is per worker) and the most
# seen at once; /fast reports them without waiting.
SLEEPER_ACCESS = """
    local n = (gw.cache:get("in") or 0) + 1
    gw.cache:set("in", n)
    if n > (gw.cache:get("max") or 0) then gw.cache:set("max", n) end
    gw.sleep(tonumber(req.query:match("s=([%d.]+)")) or 1)
    gw.cache:set("in", gw.cache:get("in") - 1)
    gw.cache:set("resumed", (gw.cache:get("resumed") or 0) + 1)
"""

ROUTES = [
    {"match": {"path": "/sleep"}, "plugins": [hook(access=SLEEPER_ACCESS)],
     "handler": handler('return 200, "slept"')},
    {"match": {"path": "/fast"}, "handler": handler(
        'return 200, (gw.cache:get("in") or 0) .. "/" .. (gw.cache:get("max") or 0) '
        '.. "/" .. (gw.cache:get("resumed") or 0)')},
]


def counters(port):
    r = request(port, "GET", "/fast")
    assert r.status == 200, r
    inside, most, resumed = (int(x) for x in r.body.split(b"/"))
    return inside, most, resumed


def test_200_requests_at_concurrency_40_take_about_5s(gateway):
    g = gateway(lua_config(ROUTES))

    def five(_):
        out = []
        for _ in range(5):
            r = request(g.port, "GET", "/sleep?s=1", timeout=15)
            out.append((r.status, r.body))
        return out

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = [x for chunk in pool.map(five, range(40)) for x in chunk]
    took = time.monotonic() - t0
    assert len(results) == 200
    assert all(r == (200, b"slept") for r in results), [r for r in results if r[0] != 200][:5]
    assert took >= 4.9, "each of the 40 clients waited 5 x 1 s: %.2f" % took
    assert took < 10, "200 sleeps of 1 s at concurrency 40 took %.1f s (expected ~5)" % took
    inside, most, resumed = counters(g.port)
    assert inside == 0 and resumed == 200
    assert most >= 35, "at most %d requests slept at once on the worker" % most


def test_1000_concurrent_sleepers_on_one_worker(gateway):
    assert raise_nofile(4096) >= 2100
    g = gateway(lua_config(ROUTES, workers=1))
    t0 = time.monotonic()
    flights = run_flights(g.port, [get("/sleep?s=1")] * 1000, timeout=15)
    last = max((f.t_done or float("inf")) for f in flights)
    bad = [(f.i, f.status, f.error) for f in flights if f.status != 200 or f.body != b"slept"]
    assert not bad, "%d of 1000 failed, e.g. %r" % (len(bad), bad[:5])
    took = last - t0
    assert took < 4.0, "1000 concurrent 1 s sleepers took %.2f s" % took
    inside, most, resumed = counters(g.port)
    assert (inside, resumed) == (0, 1000)
    assert most >= 900, "only %d slept at once" % most


def test_fast_route_answers_in_milliseconds_while_500_sleep(gateway):
    assert raise_nofile(4096) >= 1100
    g = gateway(lua_config(ROUTES, workers=1))
    sel = selectors.DefaultSelector()
    flights = open_flights(g.port, [get("/sleep?s=3")] * 500, sel)
    try:
        deadline = time.monotonic() + 10
        pump(sel, flights, deadline, until=lambda: all(f.sent >= len(f.data) for f in flights))
        assert all(f.sent >= len(f.data) for f in flights), "could not send 500 requests"
        wait_for(lambda: counters(g.port)[0] == 500, timeout=3,
                 what="500 requests sleeping in the gateway")
        times = []
        for _ in range(20):
            t = time.monotonic()
            with Client(g.port) as c:
                c.request("GET", "/fast")
                r = c.read_response()
            times.append(time.monotonic() - t)
            assert r.status == 200
            assert r.body.startswith(b"500/"), r.body   # the sleepers are still waiting
        assert max(times) < 0.1, "fast route latencies while 500 sleep: %r" % times
        assert not any(f.t_done for f in flights), "a sleeper was answered early"
        left = pump(sel, flights, deadline)
        assert left == 0, "%d sleepers never answered" % left
    finally:
        close_all(sel, flights)
    bad = [(f.status, f.error) for f in flights if f.status != 200]
    assert not bad, bad[:5]
    assert counters(g.port)[2] == 500


def _abandon(port, data, rst=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(data)
    if rst:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_hundreds_of_clients_close_mid_sleep(gateway, upstream):
    raise_nofile(4096)
    routes = ROUTES + [
        # waiting on the upstream, then in a response phase
        {"match": {"prefix": "/up/"}, "upstream": "app",
         "plugins": [hook(access="gw.sleep(0.3)", response="gw.sleep(1)")]},
        # waiting for a request body that never comes
        {"match": {"path": "/body"}, "handler": handler("return 200, req:body()")},
        # the response went out; the log phase is still waiting
        {"match": {"path": "/logwait"}, "plugins": [hook(log="gw.sleep(1.5)")],
         "handler": handler('return 200, "ok"')},
    ]
    g = gateway(lua_config(routes, upstream, workers=1))
    sleep_req = get("/sleep?s=2").encode()
    jobs = [(sleep_req, i % 3 == 0) for i in range(300)]
    jobs += [(get("/up/echo?delay=200").encode(), i % 2 == 0) for i in range(40)]
    jobs += [(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial",
              i % 2 == 0) for i in range(40)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(lambda j: _abandon(g.port, *j), jobs))

    # clients that read their response and leave while the log phase sleeps
    for _ in range(30):
        with Client(g.port) as c:
            c.request("GET", "/logwait")
            assert c.read_response().status == 200

    # the gateway keeps serving everyone, at once and after the sleeps end
    r = request(g.port, "GET", "/up/echo")
    assert r.status == 200, r
    t0 = time.monotonic()
    flights = run_flights(g.port, [get("/sleep?s=0.2")] * 50, timeout=10)
    assert all(f.status == 200 for f in flights), [f.error for f in flights if f.status != 200]
    assert time.monotonic() - t0 < 3
    time.sleep(2.5)  # past every abandoned sleep: nothing may touch the freed requests
    inside, _, resumed = counters(g.port)
    # abandoned sleepers entered the sleep (and never left it)
    assert inside >= 150, "only %d of the 300 abandoned requests reached gw.sleep" % inside
    assert resumed == 50, "abandoned sleeps were resumed (%d resumes, expected only the " \
                          "50 live ones): the wait was not cancelled" % resumed
    assert request(g.port, "GET", "/fast").status == 200
    errors = [line for line in g.stderr_text().splitlines() if "[error]" in line]
    assert not errors, errors[:5]
