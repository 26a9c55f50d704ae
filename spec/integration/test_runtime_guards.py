"""The runtime's private operations are out of plugin code's reach, and every
call that waits checks where it runs (issue 12).

- The operations the runtime uses to drive a request (proxy, wait for the
  response to end, hold and send the head, ...) are not methods of `req`:
  a handler or plugin that tries one gets a Lua error, answered 500 at once,
  never a request that hangs. The runtime module does not hand them out
  either. The access log's request id is set through a public, checked
  method (req:set_request_id) instead of a private hook.
- gw.sleep, req:body(), gw.redis and gw.http.request raise when called from a
  route match function (the main thread: there is no request coroutine to
  suspend) or outside any request (a plugin's top level, at config load)."""
import time

import pytest

from conftest import Raw, assert_json_error, request, wait_for
from luahelp import handler, hook, lua_config, settled

# Everything the runtime used to reach through req's metatable.
PRIVATE = ["_proxy", "_wait_done", "_done", "_reply", "_stage_replies", "_staged",
           "_send_head", "_res", "_init", "_log_request_id"]


def metrics_config(routes, upstream=None, **kw):
    return lua_config(routes, upstream, **kw).replace(
        "return {", 'return {\n  admin = { addr = "127.0.0.1:$PORT1" },', 1)


def assert_500_fast(port, path, method="GET", **kw):
    t = time.monotonic()
    r = request(port, method, path, timeout=10, **kw)
    took = time.monotonic() - t
    doc = assert_json_error(r, 500)
    assert doc == {"error": "internal error"}, (path, doc)
    assert took < 2, "%s took %.1fs: the request hung" % (path, took)


def test_private_operations_are_not_req_methods(gateway, upstream):
    routes = []
    for name in PRIVATE:
        # a handler, and an access plugin in front of the proxy (the wait for
        # the upstream's head and for the response's end are the hangs)
        routes.append({"match": {"path": "/h/" + name},
                       "handler": handler("return req:%s(true, true)" % name)})
        routes.append({"match": {"prefix": "/a/%s/" % name}, "upstream": "app",
                       "plugins": [hook(access="req:%s(true, true)" % name,
                                        log="gw.log('info', 'log ran')")]})
    routes.append({"match": {"path": "/field"}, "handler": handler(
        'local t = {} for _, k in ipairs({%s}) do t[#t + 1] = tostring(req[k]) end '
        'return 200, table.concat(t, ",")' % ", ".join('"%s"' % n for n in PRIVATE))})
    routes.append({"match": {"path": "/fast"}, "handler": handler('return 200, "fast"')})
    g = gateway(metrics_config(routes, upstream), nports=2)
    for name in PRIVATE:
        assert_500_fast(g.port, "/h/" + name)
        assert_500_fast(g.port, "/a/%s/echo" % name)
        assert request(g.port, "GET", "/fast").body == b"fast"
    # reading them as fields gives nil, not a function
    r = request(g.port, "GET", "/field")
    assert (r.status, r.body) == (200, b",".join([b"nil"] * len(PRIVATE)))
    assert upstream.stats()["requests"] == 0   # no access plugin got its request proxied
    settled(g.ports[1])



def test_request_id_for_the_access_log_is_public_and_checked(gateway, upstream, tmp_path):
    """req:set_request_id(id) is how the request_id plugin (or any plugin)
    names the request in the access log: a checked, public method. A bad id
    is a Lua error (500 at once) and the log line shows no id; a req kept
    past its request cannot set one."""
    import json
    log = tmp_path / "access.json"
    bad = {"space": '"a b"', "empty": '""', "long": 'string.rep("x", 129)',
           "ctl": "string.char(97, 1, 98)", "high": "string.char(99, 200)", "table": "{}"}
    routes = [{"name": "ok", "match": {"path": "/ok"},
               "handler": handler('req:set_request_id("first") req:set_request_id("id-42") '
                                  'return 200, "ok"')},
              {"name": "max", "match": {"path": "/max"},
               "handler": handler('req:set_request_id(string.rep("m", 128)) return 200, "max"')},
              {"name": "kept", "match": {"path": "/keep"},
               "handler": handler('_G.kept_req = req return 200, "kept"')},
              {"name": "late", "match": {"path": "/late"}, "handler": handler(
                  'local ok, err = pcall(_G.kept_req.set_request_id, _G.kept_req, "x") '
                  'return 200, tostring(ok) .. ":" .. tostring(err)')},
              {"name": "plugin", "match": {"prefix": "/p/"}, "upstream": "app",
               "plugins": [["request_id"]]}]
    for name, arg in bad.items():
        routes.append({"name": "bad_" + name, "match": {"path": "/bad/" + name},
                       "handler": handler("req:set_request_id(%s) return 200, 'no'" % arg)})
    g = gateway(metrics_config(routes, upstream,
                               access_log={"path": str(log), "format": "json"}), nports=2)
    assert request(g.port, "GET", "/ok").body == b"ok"
    assert request(g.port, "GET", "/max").body == b"max"
    for name in bad:
        assert_500_fast(g.port, "/bad/" + name)
    assert request(g.port, "GET", "/keep").body == b"kept"
    r = request(g.port, "GET", "/late")
    assert r.status == 200 and r.body.startswith(b"false:") and b"request finished" in r.body, r.body
    r = request(g.port, "GET", "/p/x", headers=[("X-Request-Id", "from-client-7")])
    assert r.status == 200
    want = 5 + len(bad)  # ok, max, keep, late, plugin and the bad ones
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= want else None)(
        [l for l in log.read_text().splitlines() if l]), what="%d log lines" % want)
    by_route = {}
    for l in lines:
        e = json.loads(l)
        by_route[e["route"]] = e
    assert by_route["ok"]["request_id"] == "id-42"      # the last call wins
    assert by_route["max"]["request_id"] == "m" * 128
    for name in bad:
        e = by_route["bad_" + name]
        assert e["status"] == 500 and e["request_id"] is None, e
    assert by_route["plugin"]["request_id"] == "from-client-7"
    assert by_route["late"]["request_id"] is None
    settled(g.ports[1])

def test_runtime_module_hands_out_nothing_private(gateway, upstream):
    """require "moongate.runtime" is reachable from plugins; it no longer
    carries the coroutine bodies or the operations' initializer."""
    g = gateway(metrics_config([
        {"match": {"path": "/fields"}, "handler": handler(
            'local rt = require("moongate.runtime") '
            'return 200, tostring(rt.run) .. "," .. tostring(rt.run_log) .. "," .. '
            'tostring(rt._init)')},
        {"match": {"path": "/rerun"}, "handler": handler(
            'return require("moongate.runtime").run(req, { access = {}, response = {}, log = {} })')},
    ], upstream), nports=2)
    r = request(g.port, "GET", "/fields")
    assert (r.status, r.body) == (200, b"nil,nil,nil")
    assert_500_fast(g.port, "/rerun")
    settled(g.ports[1])


YIELDERS = {
    "sleep": "gw.sleep(0.01)",
    "body": "req:body()",
    "redis": 'gw.redis("default"):call("PING")',
    "http": 'gw.http.request({ url = "http://127.0.0.1:9/" })',
}


@pytest.mark.parametrize("name", sorted(YIELDERS))
def test_waiting_call_in_a_match_function_raises(gateway, name):
    match = Raw('function(req) if req.path == "/m" then %s end return false end'
                % YIELDERS[name])
    g = gateway(metrics_config([
        {"match": match, "handler": handler('return 200, "matched"')},
        {"match": {"path": "/fast"}, "handler": handler('return 200, "fast"')},
    ], redis={"default": {"addr": "127.0.0.1:9"}}), nports=2)
    # a body still to come: req:body() would have to wait for it
    assert_500_fast(g.port, "/m", method="POST", body=b"x" * 10)
    wait_for(lambda: "needs a request coroutine" in g.stderr_text(), timeout=3,
             what="the match function's error in the log")
    assert request(g.port, "GET", "/fast").body == b"fast"
    settled(g.ports[1])


PLUGIN_AT_LOAD = """return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  plugin_path = { "%s" },
  routes = { { match = { prefix = "/" }, plugins = { { "t_waits_at_load" } },
               handler = function(req) return 200, "no" end } },
}
"""


@pytest.mark.parametrize("call", ["gw.sleep(0.01)", 'gw.http.request({ url = "http://127.0.0.1:9/" })',
                                  'gw.redis({ addr = "127.0.0.1:9" }):call("PING")'])
def test_waiting_call_outside_a_request_raises(run_moongate, tmp_path, call):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "t_waits_at_load.lua").write_text(
        "%s\nreturn { access = function() end }\n" % call)
    p = run_moongate("-t", "-c", "$CFG", config=PLUGIN_AT_LOAD % d)
    assert p.returncode == 1, (p.returncode, p.stdout_text, p.stderr_text)
    assert "needs a request coroutine" in p.stderr_text, p.stderr_text
