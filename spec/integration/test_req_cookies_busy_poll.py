"""req:cookie / req:remove_cookie through real requests, and the busy_poll
setting: checked by -t, serving with it on, and a worker that goes back to
sleep once traffic stops (no endless spin)."""
import time

from conftest import request
from luahelp import handler, hook, lua_config


def up_cookies(r):
    assert r.status == 200, (r, r.body[:300])
    return [v for n, v in r.json()["headers"] if n.lower() == "cookie"]


def test_req_cookie_values(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/c"},
         "handler": handler('local v = req:cookie(req:header("x-name")) '
                            'return 200, v == nil and "<nil>" or "[" .. v .. "]"')},
    ]))
    jar = 'x=1; a = "v 1" ;b=2;  empty=; q="";sid=abc=def'
    cases = [("a", "[v 1]"), ("x", "[1]"), ("b", "[2]"), ("empty", "[]"), ("q", "[]"),
             ("sid", "[abc=def]"), ("A", "<nil>"), ("missing", "<nil>"), ("v 1", "<nil>")]
    for name, want in cases:
        r = request(g.port, "GET", "/c", headers=[("Cookie", jar), ("X-Name", name)])
        assert r.status == 200, r
        assert r.body.decode() == want, name
    r = request(g.port, "GET", "/c", headers=[("X-Name", "a")])  # no Cookie header
    assert r.body.decode() == "<nil>"


def test_req_remove_cookie(gateway, upstream):
    strip = hook(access='local removed = req:remove_cookie("tok") '
                        'req:set_header("X-Removed", tostring(removed))')
    g = gateway(lua_config([{"match": {"prefix": "/"}, "upstream": "app", "plugins": [strip]}],
                           upstream))
    r = request(g.port, "GET", "/echo", headers=[("Cookie", "a=1; tok=secret; b=2; tok=again")])
    assert up_cookies(r) == ["a=1; b=2"]
    assert [v for n, v in r.json()["headers"] if n.lower() == "x-removed"] == ["true"]
    r = request(g.port, "GET", "/echo", headers=[("Cookie", "tok=secret")])
    assert up_cookies(r) == []  # the header goes when no cookie is left
    r = request(g.port, "GET", "/echo", headers=[("Cookie", "a=1;  b=2")])
    assert up_cookies(r) == ["a=1;  b=2"]  # nothing removed: left as it was
    assert [v for n, v in r.json()["headers"] if n.lower() == "x-removed"] == ["false"]


def test_busy_poll_checked(run_moongate):
    for value, ok in (("0", True), ("0.0002", True), ("0.01", True), ("0.5", False),
                      ("-1", False), ('"fast"', False)):
        text = ('return {\n  listen = { { addr = "127.0.0.1:$PORT" } },\n'
                '  busy_poll = %s,\n  routes = {},\n}\n' % value)
        p = run_moongate("-t", "-c", "$CFG", config=text)
        if ok:
            assert p.returncode == 0, (value, p.stderr_text)
        else:
            assert p.returncode == 1, value
            assert ":3:" in p.stderr_text and "busy_poll" in p.stderr_text, p.stderr_text


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_poll_serves_and_then_sleeps(gateway, upstream):
    g = gateway(lua_config([
        {"match": {"path": "/h"}, "handler": handler('return 200, "hi"')},
        {"match": {"prefix": "/"}, "upstream": "app"},
    ], upstream, busy_poll=0.002))
    for _ in range(50):
        assert request(g.port, "GET", "/h").body == b"hi"
        assert request(g.port, "GET", "/echo").status == 200
    # idle: the worker polls at most 2 ms after its last event, then sleeps
    time.sleep(0.05)
    before = cpu_seconds(g.pid)
    time.sleep(1.0)
    assert cpu_seconds(g.pid) - before < 0.2
