"""gw.http.request from route handlers, through the real gateway: many
requests waiting on the upstream at once, pooled connections, and a client
that goes away while its handler waits (the connection must be closed, not
pooled). The client's own behaviour (framing, errors, timeouts, stale
connections) is covered in spec/lua/http_spec.lua."""

import threading
import time

import pytest

from conftest import Client, Raw, config, request, wait_for

HANDLER = """function(req)
  local path = req.path == "/slow" and "/slow/3000" or "/echo"
  local r, err = gw.http.request{
    url = "http://127.0.0.1:%d" .. path .. "?" .. (req.query or ""),
    headers = { ["X-From"] = "gateway" }, timeout = 5 }
  if not r then return 502, "error: " .. err end
  return r.status, r.body, { ["X-Up-Conn"] = r.headers["x-upstream-conn"] }
end"""


def http_config(upstream_port):
    return config(routes=[{"name": "call", "match": {"prefix": "/"},
                           "handler": Raw(HANDLER % upstream_port)}])


def test_handler_requests_in_parallel_all_succeed(gateway, upstream):
    g = gateway(http_config(upstream.port))
    n = 100
    barrier = threading.Barrier(n)
    results = [None] * n

    def one(i):
        with Client(g.port, timeout=20) as c:
            barrier.wait()
            # the upstream holds each answer 200 ms: handlers that did not
            # wait concurrently would take 20 s and never overlap
            c.request("GET", "/x?i=%d&delay=200" % i)
            results[i] = c.read_response()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    for i, r in enumerate(results):
        assert r is not None, "request %d got no response" % i
        assert r.status == 200, (i, r.status, r.body[:200])
        e = r.json()
        assert e["path"] == "/echo?i=%d&delay=200" % i
        assert ["X-From", "gateway"] in e["headers"]
    st = upstream.stats()
    assert st["requests"] == n
    assert st["max_inflight"] > 1, "the handlers did not wait on the upstream concurrently"
    assert elapsed < 15, "100 calls of 200 ms took %.1f s" % elapsed
    opened = st["connections"]
    assert opened <= n
    # the pool keeps connections: sequential requests open no new ones
    for i in range(20):
        r = request(g.port, "GET", "/again?i=%d" % i)
        assert r.status == 200
    st = upstream.stats()
    assert st["requests"] == n + 20
    assert st["connections"] == opened


def test_sequential_handler_calls_share_one_upstream_connection(gateway, upstream):
    g = gateway(http_config(upstream.port))
    conns = set()
    for i in range(20):
        r = request(g.port, "GET", "/seq?i=%d" % i)
        assert r.status == 200
        conns.add(r.header("x-up-conn"))
    assert len(conns) == 1, conns
    assert upstream.stats()["connections"] == 1


def test_client_abort_closes_the_upstream_connection(gateway, upstream):
    g = gateway(http_config(upstream.port))
    first = request(g.port, "GET", "/fast")
    assert first.status == 200
    pooled = first.header("x-up-conn")
    # the slow call takes the pooled connection, then its client leaves
    c = Client(g.port, timeout=10)
    c.request("GET", "/slow")
    wait_for(lambda: upstream.stats()["inflight"] == 1, what="the slow call to reach the upstream")
    c.close()
    # the gateway must not put the half-finished connection back in the
    # pool: the next call gets a new connection and its own answer at once
    t0 = time.monotonic()
    r = wait_for(lambda: request(g.port, "GET", "/fast2"), what="a response")
    assert r.status == 200
    assert r.header("x-up-conn") not in (None, pooled)
    assert r.json()["path"] == "/echo?"
    assert time.monotonic() - t0 < 2.5
    # and the aborted connection is really closed
    wait_for(lambda: upstream.stats()["open"] == 1, timeout=10,
             what="the aborted upstream connection to close")
    assert "plugin error" not in g.stderr_text()


def test_handler_gets_errors_as_values(gateway, upstream_factory):
    gone = upstream_factory()
    port = gone.port
    gone.stop()
    g = gateway(http_config(port))
    r = request(g.port, "GET", "/refused")
    assert r.status == 502
    assert r.body == b"error: connection refused"
    # the worker keeps serving
    r = request(g.port, "GET", "/refused")
    assert r.status == 502


def hosts_alias():
    """A name /etc/hosts maps to 127.0.0.1, other than localhost (or None)."""
    try:
        lines = open("/etc/hosts").read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if len(parts) > 1 and parts[0] == "127.0.0.1":
            for name in parts[1:]:
                if name != "localhost":
                    return name
    return None


def test_concurrent_calls_share_one_name_lookup(gateway, upstream):
    """Calls made while a name is being resolved (getaddrinfo_a) wait for that
    lookup and then all go out."""
    name = hosts_alias()
    if name is None:
        pytest.skip("no /etc/hosts alias for 127.0.0.1")
    handler = HANDLER.replace("127.0.0.1", name)
    g = gateway(config(routes=[{"name": "call", "match": {"prefix": "/"},
                                "handler": Raw(handler % upstream.port)}]))
    n = 30
    barrier = threading.Barrier(n)
    results = [None] * n

    def one(i):
        with Client(g.port, timeout=20) as c:
            barrier.wait()
            c.request("GET", "/n?i=%d" % i)
            results[i] = c.read_response()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, r in enumerate(results):
        assert r is not None and r.status == 200, (i, r)
        e = r.json()
        assert e["path"] == "/echo?i=%d" % i
        assert ["Host", "%s:%d" % (name, upstream.port)] in e["headers"]
    assert upstream.stats()["requests"] == n


# A handler that forwards its request's headers to the upstream (echo) with
# gw.http: through a template with drop and allow lists, after editing the
# request the way an earlier plugin would.
FORWARD_HANDLER = """function(req)
  req:set_header("X-Edited", "by-plugin")
  req:remove_header("X-Removed")
  req:set_header("X-Listed-Edit", {"e1", "e2"})
  local t = gw.http.template{ url = "http://127.0.0.1:%d/echo",
    forward_drop = { "X-Drop", "Host" },
    forward_only = req.path == "/only" and { "x-keep", "X-Edited", "host" } or nil,
    lazy_headers = req.path == "/lazy" }
  local r, err = t:request{ forward = req, headers = { "X-Over", "ours" } }
  if not r then return 502, "error: " .. err end
  return r.status, r.body, { ["X-Lazy"] = type(r) }
end"""


def test_forward_sends_the_request_headers_as_plugins_see_them(gateway, upstream):
    g = gateway(config(routes=[{"name": "fwd", "match": {"prefix": "/"},
                                "handler": Raw(FORWARD_HANDLER % upstream.port)}]))
    hdrs = [("X-Keep", "k"), ("X-Rep", "1"), ("X-Rep", "2"), ("X-Removed", "r"),
            ("X-Edited", "client"), ("X-Drop", "d"), ("Connection", "X-Hop"),
            ("X-Hop", "h"), ("X-Over", "client"), ("Keep-Alive", "timeout=5"),
            ("Content-Type", "text/plain")]
    for path in ("/all", "/lazy"):
        r = request(g.port, "POST", path, host="client.example", headers=hdrs, body="abc")
        assert r.status == 200, r.body
        assert r.header("x-lazy") == ("userdata" if path == "/lazy" else "table")
        e = r.json()
        got = e["headers"]

        def vals(name):
            return [v for n, v in got if n.lower() == name.lower()]
        assert vals("X-Keep") == ["k"]
        assert vals("X-Rep") == ["1", "2"]  # each field as received
        assert ["X-Rep", "1"] in got  # names as the client spelled them
        assert vals("X-Removed") == []
        assert vals("X-Edited") == ["by-plugin"]
        assert vals("X-Listed-Edit") == ["e1", "e2"]
        assert vals("X-Drop") == []
        assert vals("X-Hop") == []  # named by Connection
        assert vals("Keep-Alive") == []
        assert vals("X-Over") == ["ours"]
        assert vals("Content-Type") == ["text/plain"]
        assert vals("Host") == ["127.0.0.1:%d" % upstream.port]
        assert vals("Content-Length") in ([], ["0"])  # the client's body is not sent
        assert e["method"] == "GET" and e["body"] == ""

    r = request(g.port, "GET", "/only", host="client.example", headers=hdrs)
    got = r.json()["headers"]
    names = sorted(n.lower() for n, _ in got)
    # only the allowed ones (Host is dropped: the url's), and the headers table
    assert names == ["host", "x-edited", "x-keep", "x-over"], got
