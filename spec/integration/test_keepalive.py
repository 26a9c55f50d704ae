"""Keep-alive on both sides, TCP_NODELAY, idle timeouts, pooled upstream
connections (reuse, limit, stale connections)."""
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import Client, config, proxy_config, request, wait_for, Raw


def test_200_sequential_gets_on_one_connection_are_fast(gateway, upstream):
    # A 40 ms Nagle/delayed-ACK stall per request would take 8 s.
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.request("GET", "/echo?warm=1")
        c.read_response()
        t0 = time.monotonic()
        for i in range(200):
            c.request("GET", "/echo?i=%d" % i)
            r = c.read_response()
            assert r.status == 200
        elapsed = time.monotonic() - t0
    assert elapsed < 2.0, "200 keep-alive requests took %.2fs" % elapsed


def test_200_sequential_posts_on_one_connection_are_fast(gateway, upstream):
    # The head and the body leave the client as two segments.
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        t0 = time.monotonic()
        for i in range(200):
            body = b"x" * (100 + i)
            c.send(b"POST /echo?i=%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                   % (i, len(body)))
            c.send(body)
            r = c.read_response()
            assert r.status == 200 and len(r.json()["body"]) == len(body)
        elapsed = time.monotonic() - t0
    assert elapsed < 2.0, "200 keep-alive POSTs took %.2fs" % elapsed


def test_200_sequential_handler_requests_are_fast(gateway):
    g = gateway(config(routes=[{"match": {"path": "/hello"},
                                "handler": Raw('function(req) return 200, "hi" end')}]))
    with Client(g.port) as c:
        t0 = time.monotonic()
        for i in range(200):
            c.request("GET", "/hello")
            assert c.read_response().body == b"hi"
        elapsed = time.monotonic() - t0
    assert elapsed < 2.0, "200 keep-alive requests took %.2fs" % elapsed


def test_upstream_connections_reused(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], keepalive=8))
    with Client(g.port) as c:
        for i in range(50):
            c.request("GET", "/echo?i=%d" % i)
            assert c.read_response().status == 200
    for i in range(50):                      # a new client connection each time
        assert request(g.port, "GET", "/echo?j=%d" % i).status == 200
    st = upstream.stats()
    assert st["requests"] == 100
    assert st["connections"] <= 2, st


def test_upstream_idle_pool_is_bounded_by_keepalive(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], keepalive=2))
    with ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda i: request(g.port, "GET", "/slow/400?i=%d" % i), range(8)))
    assert all(r.status == 200 for r in rs)
    st = upstream.stats()
    assert st["max_inflight"] >= 4, "the requests did run concurrently: %r" % st
    wait_for(lambda: upstream.stats()["open"] <= 2, timeout=5,
             what="the gateway to keep at most keepalive=2 idle upstream connections")


def test_upstream_connection_close_is_not_reused(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        for i in range(10):
            c.request("GET", "/echo?close=1&i=%d" % i)
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == "/echo?close=1&i=%d" % i
    assert upstream.stats()["connections"] == 10


def test_stale_pooled_connection_is_not_a_502(gateway, upstream_factory):
    up = upstream_factory(idle_timeout=0.3)  # the origin drops idle connections
    g = gateway(proxy_config([up.addr]))
    for i in range(3):
        r = request(g.port, "GET", "/echo?i=%d" % i)
        assert r.status == 200, r
        time.sleep(0.8)


def test_client_keepalive_many_requests_same_connection(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        for i in range(50):
            c.request("GET", "/echo?i=%d" % i)
            r = c.read_response()
            assert r.json()["path"] == "/echo?i=%d" % i
            assert "close" not in r.header("Connection", "").lower()
        assert not c.closed(0.2)


def test_idle_timeout_closes_idle_client(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], limits={"idle_timeout": 1}))
    with Client(g.port) as c:
        # Activity keeps the connection alive past idle_timeout in total.
        for i in range(6):
            c.request("GET", "/echo?i=%d" % i)
            assert c.read_response().status == 200
            time.sleep(0.3)
        t0 = time.monotonic()
        assert c.closed(5), "idle connection still open 5 s after idle_timeout=1"
        assert time.monotonic() - t0 < 4
    r = request(g.port, "GET", "/echo")
    assert r.status == 200
