"""The core against PRODUCT.md, black-box: places where it differed from the
contract (or from what an OpenResty/Traefik user expects), each with the
check that shows it fixed."""
import re
import time

from conftest import (Client, Raw, assert_json_error, config, free_port, proxy_config,
                      raw_exchange, request, wait_for)
from luahelp import handler, hook, lua_config, plugin


# --------------------------------------------------------------------------
# access_log: a path that cannot be opened is a config error (file:line)

def test_access_log_unwritable_path_is_a_config_error(run_moongate, tmp_path):
    text = config(access_log=str(tmp_path / "no-such-dir" / "access.log"),
                  routes=[{"match": {"path": "/h"},
                           "handler": Raw('function() return 200, "h" end')}])
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 1, (p.stdout_text, p.stderr_text)
    assert re.search(r"moongate\.lua:\d+: access_log: cannot open .*no-such-dir",
                     p.stderr_text), p.stderr_text
    # at start too, with file:line, and at once (no worker restarted in a loop)
    for workers in (1, 2):
        t = text.replace("return {", "return {\n  workers = %d," % workers, 1)
        p = run_moongate("-c", "$CFG", config=t, timeout=10)
        assert p.returncode != 0, p.stderr_text
        assert re.search(r"moongate\.lua:\d+: access_log: cannot open", p.stderr_text), \
            p.stderr_text


def test_access_log_path_is_created_by_check(run_moongate, tmp_path):
    log = tmp_path / "access.log"
    text = config(access_log=str(log), routes=[])
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 0 and p.stdout_text.strip() == "OK", p.stderr_text


# --------------------------------------------------------------------------
# the log phase still runs after a Lua error answered 500

LOG_MARK = 'gw.log("warn", "logphase-ran ", req.path, " status=", res.status)'


def test_log_phase_runs_after_a_lua_error(gateway, upstream):
    routes = [
        {"match": {"path": "/access-error"}, "upstream": "app",
         "plugins": [hook(log=LOG_MARK), plugin("t_error", phase="access")]},
        {"match": {"path": "/response-error"}, "upstream": "app",
         "plugins": [hook(log=LOG_MARK), plugin("t_error", phase="response")]},
        {"match": {"path": "/handler-error"}, "plugins": [hook(log=LOG_MARK)],
         "handler": handler('gw.sleep(0.01); error("handler broke")')},
        {"match": {"path": "/runaway"}, "plugins": [hook(log=LOG_MARK)],
         "handler": handler("while true do end")},
        {"match": {"path": "/log-waits"},
         "plugins": [hook(log="gw.sleep(0.05); " + LOG_MARK)],
         "handler": handler('error("x")')},
        {"match": {"path": "/fine"}, "plugins": [hook(log=LOG_MARK)],
         "handler": handler('return 200, "fine"')},
    ]
    g = gateway(lua_config(routes, upstream, lua={"max_instructions": 1e6}))
    paths = ["/access-error", "/response-error", "/handler-error", "/runaway", "/log-waits"]
    for path in paths:
        r = request(g.port, "GET", path)
        assert assert_json_error(r, 500) == {"error": "internal error"}, path
        assert b"traceback" not in r.body
        assert request(g.port, "GET", "/fine").body == b"fine"
    for path in paths:
        wait_for(lambda: "logphase-ran %s status=500" % path in g.stderr_text(), timeout=5,
                 what="the log phase of " + path)
    err = g.stderr_text()
    # the error itself is still logged once, with its traceback
    assert err.count("handler broke") == 1, err[-3000:]
    assert "stack traceback" in err
    # once per request: the log phase is not run twice
    assert err.count("logphase-ran /access-error") == 1


def test_log_phase_after_a_lua_error_sees_req_ctx(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/ctx"},
         "plugins": [hook(access='req.ctx.user = "alice"; error("access broke")',
                          log='gw.log("warn", "ctx-user=", tostring(req.ctx.user), '
                              '" status=", res.status)')],
         "handler": handler('return 200, "unreachable"')},
        {"match": {"path": "/no-ctx"},
         "plugins": [hook(log='gw.log("warn", "ctx-empty=", tostring(next(req.ctx)))')],
         "handler": handler('while true do end')},
    ], lua={"max_instructions": 1e6}))
    assert_json_error(request(g.port, "GET", "/ctx"), 500)
    wait_for(lambda: "ctx-user=alice status=500" in g.stderr_text(), timeout=5,
             what="the log phase with req.ctx")
    assert_json_error(request(g.port, "GET", "/no-ctx"), 500)
    wait_for(lambda: "ctx-empty=nil" in g.stderr_text(), timeout=5,
             what="the log phase with an empty req.ctx")


def test_log_phase_error_after_a_lua_error_is_only_logged(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/x"},
         "plugins": [hook(log='error("log broke too")'), hook(log=LOG_MARK)],
         "handler": handler('error("handler broke")')},
        {"match": {"path": "/fine"}, "handler": handler('return 200, "fine"')},
    ]))
    assert_json_error(request(g.port, "GET", "/x"), 500)
    wait_for(lambda: "logphase-ran /x status=500" in g.stderr_text(), timeout=5,
             what="the second log plugin")
    assert "log broke too" in g.stderr_text()
    assert request(g.port, "GET", "/fine").body == b"fine"


# --------------------------------------------------------------------------
# passive health: a server that failed to connect is skipped for a while;
# when every server is down, 503 without trying

def refused_addr():
    return "127.0.0.1:%d" % free_port()


def refusals(g):
    """Connects refused so far, from the error log (one line each)."""
    return len(re.findall(r"upstream 127\.0\.0\.1:\d+(?: for \S+)?: Connection refused",
                          g.stderr_text()))


def test_failed_server_is_skipped_then_tried_again(gateway, upstream):
    dead = refused_addr()
    g = gateway(proxy_config([dead, upstream.addr], retries=1, fail_timeout=0.6))
    for _ in range(6):
        assert request(g.port, "GET", "/echo").status == 200
    err = g.stderr_text()
    assert "server %s marked down for 0.6s" % dead in err, err
    assert refusals(g) == 1, err    # tried once, then skipped
    time.sleep(0.7)                 # the window passed: tried again (and retried)
    for _ in range(4):
        assert request(g.port, "GET", "/echo").status == 200
    assert refusals(g) == 2, g.stderr_text()


def test_every_server_down_is_503_without_trying(gateway):
    dead = [refused_addr(), refused_addr()]
    g = gateway(proxy_config(dead, retries=1, fail_timeout=0.5))
    r = request(g.port, "GET", "/x")
    assert_json_error(r, 502)       # both tried and refused
    n = refusals(g)
    assert n == 2, g.stderr_text()
    for _ in range(3):
        r = request(g.port, "GET", "/x")
        assert assert_json_error(r, 503) == {"error": "no healthy upstream"}
    assert refusals(g) == n         # not tried
    time.sleep(0.6)
    assert_json_error(request(g.port, "GET", "/x"), 502)     # tried again
    assert refusals(g) > n


def test_single_server_is_never_marked_down(gateway):
    g = gateway(proxy_config([refused_addr()], retries=0))
    for _ in range(3):
        assert_json_error(request(g.port, "GET", "/x"), 502)
    assert "marked down" not in g.stderr_text()


def test_max_fails_zero_disables_passive_health(gateway, upstream):
    dead = refused_addr()
    g = gateway(proxy_config([dead, upstream.addr], retries=1, max_fails=0))
    for _ in range(4):
        assert request(g.port, "GET", "/echo").status == 200
    assert "marked down" not in g.stderr_text()
    assert refusals(g) >= 2         # the dead server keeps being tried


def test_health_options_are_checked(run_moongate):
    for opts, why in (({"max_fails": -1}, r"max_fails"), ({"max_fails": 1.5}, r"max_fails"),
                      ({"fail_timeout": "10s"}, r"fail_timeout"),
                      ({"retries": 0.5}, r"retries")):
        p = run_moongate("-t", "-c", "$CFG", config=proxy_config(["127.0.0.1:9"], **opts))
        assert p.returncode == 1, (opts, p.stdout_text)
        assert re.search(r"moongate\.lua:\d+: .*" + why, p.stderr_text), p.stderr_text
    p = run_moongate("-t", "-c", "$CFG",
                     config=proxy_config(["127.0.0.1:9"], max_fails=3, fail_timeout=2.5))
    assert p.returncode == 0, p.stderr_text


# --------------------------------------------------------------------------
# routes match the normalized path (as nginx locations do): "..", ".",
# "//" and %XX cannot be used to walk around a route's plugins

def test_routes_match_the_normalized_path(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], routes=[
        {"match": {"prefix": "/admin/"}, "handler": Raw('function() return 403, "denied" end')},
        {"match": {"path": "/secret"}, "handler": Raw('function() return 403, "denied" end')},
        {"match": {"prefix": "/"}, "upstream": "app"},
    ]))
    for path in ("/admin/x", "/public/../admin/x", "/%61dmin/x", "//admin/x", "/./admin/x",
                 "/admin%2Fx", "/x/%2e%2e/admin/x", "/secret", "/%73ecret", "/a/b/../../secret",
                 "/admin/x?q=/../y"):
        r = request(g.port, "GET", path)
        assert (r.status, r.body) == (403, b"denied"), (path, r)
    assert upstream.stats()["requests"] == 0
    # the upstream still gets the request-target exactly as sent
    for path in ("/echo/a%20b", "/echo/./x", "/echo//y", "/echo/z/..?q=1"):
        r = request(g.port, "GET", path)
        assert r.status == 200 and r.json()["path"] == path, (path, r)
    # a ".." above the root, a bad %XX or a %00: 400
    for path in ("/..", "/%2e%2e/admin/x", "/a/../../b", "/a%zz", "/a%4", "/a%00b"):
        r, closed = raw_exchange(g.port, Client.build("GET", path) + Client.build("GET", "/echo"))
        assert_json_error(r, 400)
        assert closed, "a 400 closes the connection; the pipelined request is not served"
    assert request(g.port, "GET", "/echo").status == 200


# --------------------------------------------------------------------------
# PRODUCT.md's example config, as written there (ports and paths changed)

PRODUCT_EXAMPLE = """return {
  workers = "auto",                           -- or "auto": one per core
  listen  = {
    { addr = "127.0.0.1:$PORT0" },
    { addr = "127.0.0.1:$PORT1", tls = { cert = "cert.pem", key = "key.pem" } },
  },
  admin   = { addr = "127.0.0.1:$PORT2" },      -- GET /metrics, GET /status, POST /reload
  limits  = { max_uri_bytes = 8192, max_header_bytes = 16384,
              max_body_bytes = 1048576, header_timeout = 10,
              idle_timeout = 60, drain_timeout = 30 },
  access_log = "stdout",                      -- or a path, or false
  redis   = { default = { addr = "127.0.0.1:6379", pool = 16, timeout = 0.5 } },
  upstreams = {
    app = { servers = { "$UP", "$DEAD" },
            balance = "round_robin",          -- or "least_conn", "hash" (with hash_key)
            keepalive = 64, connect_timeout = 1, read_timeout = 30,
            retries = 1, tls = false },
  },
  plugin_path = { "plugins" },                -- searched in order; bundled plugins last
  routes = {
    { name = "api", match = { prefix = "/api/", methods = { "GET", "POST" } },
      plugins = { { "jwt", secret = "s3cret" },
                  { "forward_auth", address = "http://127.0.0.1:9100/auth" } },
      upstream = "app" },
    { match = { path = "/hello" },
      handler = function(req) return 200, "Hello, World" end },
    { match = function(req) return req:header("x-canary") == "1" end,
      upstream = "app" },
  },
}
"""


def test_product_example_config_checks_and_serves(gateway, run_moongate, upstream, tmp_path):
    from tlshelp import CA, tls_request
    ca = CA(tmp_path / "ca")
    crt, key = ca.issue("server")
    (tmp_path / "cert.pem").write_bytes(crt.read_bytes())
    (tmp_path / "key.pem").write_bytes(key.read_bytes())
    (tmp_path / "plugins").mkdir()
    text = PRODUCT_EXAMPLE.replace("$UP", upstream.addr).replace("$DEAD", refused_addr())
    for variant in (text, text.replace('workers = "auto",', "workers = 1,"),
                    text.replace('balance = "round_robin",',
                                 'balance = "hash", hash_key = "header:X-User",'),
                    text.replace('access_log = "stdout",', 'access_log = "access.log",'),
                    text.replace('access_log = "stdout",', "access_log = false,")):
        p = run_moongate("-t", "-c", "$CFG", config=variant.replace("$PORT", "1"))
        assert p.returncode == 0 and p.stdout_text.strip() == "OK", p.stderr_text
    g = gateway(text, nports=3)
    r = request(g.ports[0], "GET", "/hello")
    assert (r.status, r.body) == (200, b"Hello, World")
    r = tls_request(g.ports[1], ca, "GET", "/hello")
    assert (r.status, r.body) == (200, b"Hello, World")
    assert request(g.ports[0], "GET", "/echo", headers=[("X-Canary", "1")]).status == 200
    assert_json_error(request(g.ports[0], "GET", "/nope"), 404)
    # the api route's plugins answer (forward_auth's address is unreachable)
    assert request(g.ports[0], "GET", "/api/x").status in (401, 500)
    assert request(g.ports[2], "GET", "/status").json()["workers"] >= 1
    assert "moongate_requests_total" in request(g.ports[2], "GET", "/metrics").text()


def test_unknown_hash_key_is_a_config_error(run_moongate):
    for key in ("cookie:session", "header:", "remote-addr"):
        p = run_moongate("-t", "-c", "$CFG", config=proxy_config(
            ["127.0.0.1:9", "127.0.0.1:10"], balance="hash", hash_key=key))
        assert p.returncode == 1, key
        assert re.search(r"moongate\.lua:\d+: upstreams\.app\.hash_key: expected", p.stderr_text), \
            p.stderr_text
    for key in ("remote_addr", "uri", "header:X-User"):
        p = run_moongate("-t", "-c", "$CFG", config=proxy_config(
            ["127.0.0.1:9", "127.0.0.1:10"], balance="hash", hash_key=key))
        assert p.returncode == 0, p.stderr_text
