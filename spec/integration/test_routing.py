"""Route matching: exact path, longest prefix, methods, host, headers; a route
sends to an upstream or runs a handler; no match is a 404."""
import pytest

from conftest import Raw, assert_json_error, config, request


@pytest.fixture
def three(upstream_factory):
    return [upstream_factory() for _ in range(3)]


def ups(*servers):
    return {"u%d" % i: {"servers": [s.addr], "keepalive": 4} for i, s in enumerate(servers)}


def which(r, servers):
    """The index of the upstream that answered (by X-Upstream-Port)."""
    assert r.status == 200, r
    port = int(r.header("X-Upstream-Port"))
    return [s.port for s in servers].index(port)


def test_exact_path_beats_prefix(gateway, three):
    g = gateway(config(upstreams=ups(*three), routes=[
        {"name": "pre", "match": {"prefix": "/api/"}, "upstream": "u0"},
        {"name": "exact", "match": {"path": "/api/special"}, "upstream": "u1"},
    ]))
    assert which(request(g.port, "GET", "/api/special"), three) == 1
    assert which(request(g.port, "GET", "/api/special?x=1"), three) == 1
    assert which(request(g.port, "GET", "/api/specialx"), three) == 0
    assert which(request(g.port, "GET", "/api/special/more"), three) == 0
    assert_json_error(request(g.port, "GET", "/api"), 404)


def test_longest_prefix_wins_whatever_the_order(gateway, three):
    g = gateway(config(upstreams=ups(*three), routes=[
        {"match": {"prefix": "/"}, "upstream": "u0"},
        {"match": {"prefix": "/api/v2/"}, "upstream": "u2"},
        {"match": {"prefix": "/api/"}, "upstream": "u1"},
    ]))
    assert which(request(g.port, "GET", "/api/v2/users"), three) == 2
    assert which(request(g.port, "GET", "/api/v1/users"), three) == 1
    assert which(request(g.port, "GET", "/api/v2"), three) == 1
    assert which(request(g.port, "GET", "/other"), three) == 0
    assert which(request(g.port, "GET", "/apix"), three) == 0


def test_path_sent_upstream_unchanged(gateway, three):
    g = gateway(config(upstreams=ups(*three), routes=[
        {"match": {"prefix": "/api/"}, "upstream": "u1"}]))
    r = request(g.port, "GET", "/api/a/b?c=d")
    assert r.json()["path"] == "/api/a/b?c=d"


def test_methods(gateway, three):
    g = gateway(config(upstreams=ups(*three), routes=[
        {"match": {"prefix": "/m/", "methods": ["GET", "POST"]}, "upstream": "u0"},
    ]))
    assert which(request(g.port, "GET", "/m/x"), three) == 0
    assert which(request(g.port, "POST", "/m/x", body=b"b"), three) == 0
    assert_json_error(request(g.port, "PUT", "/m/x", body=b"b"), 404)
    assert_json_error(request(g.port, "DELETE", "/m/x"), 404)


def test_method_mismatch_falls_through_to_shorter_prefix(gateway, three):
    g = gateway(config(upstreams=ups(*three), routes=[
        {"match": {"prefix": "/m/", "methods": ["POST"]}, "upstream": "u1"},
        {"match": {"prefix": "/"}, "upstream": "u0"},
    ]))
    assert which(request(g.port, "POST", "/m/x", body=b"b"), three) == 1
    assert which(request(g.port, "GET", "/m/x"), three) == 0


def test_host(gateway, three):
    g = gateway(config(upstreams=ups(*three), routes=[
        {"match": {"host": "a.example", "prefix": "/"}, "upstream": "u0"},
        {"match": {"host": "b.example", "prefix": "/"}, "upstream": "u1"},
    ]))
    assert which(request(g.port, "GET", "/x", host="a.example"), three) == 0
    assert which(request(g.port, "GET", "/x", host="b.example"), three) == 1
    assert which(request(g.port, "GET", "/x", host="B.Example"), three) == 1
    assert which(request(g.port, "GET", "/x", host="b.example:8080"), three) == 1
    assert_json_error(request(g.port, "GET", "/x", host="c.example"), 404)


def test_headers(gateway, three):
    g = gateway(config(upstreams=ups(*three), routes=[
        {"match": {"prefix": "/", "headers": {"x-canary": "1"}}, "upstream": "u1"},
        {"match": {"prefix": "/"}, "upstream": "u0"},
    ]))
    assert which(request(g.port, "GET", "/x", headers=[("X-Canary", "1")]), three) == 1
    assert which(request(g.port, "GET", "/x", headers=[("X-Canary", "0")]), three) == 0
    assert which(request(g.port, "GET", "/x"), three) == 0


def test_upstream_and_handler_routes_side_by_side(gateway, three):
    g = gateway(config(upstreams=ups(*three), routes=[
        {"match": {"path": "/hello"}, "handler": Raw('function(req) return 200, "Hello, World" end')},
        {"match": {"prefix": "/"}, "upstream": "u2"},
    ]))
    r = request(g.port, "GET", "/hello")
    assert r.status == 200 and r.body == b"Hello, World"
    assert r.header("X-Upstream-Port") is None
    assert which(request(g.port, "GET", "/hello2"), three) == 2
    assert sum(s.stats()["requests"] for s in three) == 1


def test_no_route_is_404_json(gateway, three):
    g = gateway(config(upstreams=ups(*three), routes=[
        {"match": {"path": "/only"}, "upstream": "u0"}]))
    assert_json_error(request(g.port, "GET", "/"), 404)
    assert_json_error(request(g.port, "POST", "/nope", body=b"abc"), 404)
    assert_json_error(request(g.port, "GET", "/only/"), 404)
    assert sum(s.stats()["requests"] for s in three) == 0
