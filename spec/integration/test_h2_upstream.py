"""Upstreams reached over HTTP/2 (protocol = "h2"): h2c with prior knowledge,
ALPN h2 over TLS; one connection per server carrying many streams, a second
only at the server's stream limit; trailers; failures as 502/504."""

import concurrent.futures
import json
import ssl

import pytest

from conftest import (Client, free_port, proxy_config, request, sha256, assert_json_error,
                      wait_for)
from h2upstream import H2Upstream, pattern


@pytest.fixture
def h2up():
    started = []

    def make(**kw):
        u = H2Upstream(free_port(), **kw)
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


def h2_config(servers, **kw):
    kw.setdefault("protocol", "h2")
    return proxy_config(servers, **kw)


def test_get_and_post_reach_an_h2c_upstream(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    r = request(g.port, "GET", "/echo/a?b=1", headers=[("X-Thing", "one")])
    assert r.status == 200, r
    assert r.header("x-upstream") == "h2"
    doc = r.json()
    assert doc["method"] == "GET" and doc["path"] == "/echo/a?b=1"
    assert doc["scheme"] == "http" and doc["authority"] == "localhost"
    hdrs = dict((k, v) for k, v in doc["headers"] if not k.startswith(":"))
    assert hdrs["x-thing"] == "one"
    assert hdrs["x-forwarded-for"] == "127.0.0.1"
    assert "connection" not in hdrs and "host" not in hdrs
    body = pattern(300000)
    r = request(g.port, "POST", "/echo/post", body=body)
    assert r.status == 200, r
    doc = r.json()
    assert doc["method"] == "POST"
    assert doc["body_len"] == len(body) and doc["body_sha256"] == sha256(body)
    # a chunked request body goes up as DATA frames too
    with Client(g.port) as c:
        c.send(Client.build("PUT", "/echo/chunked", body=b"abc" * 1000, chunked=True))
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["body_len"] == 3000
        # the client connection stays usable
        c.request("GET", "/echo/again")
        assert c.read_response().status == 200
    assert up.connections == 1


def test_response_trailers_reach_an_http1_client(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    with Client(g.port) as c:
        c.request("GET", "/trailers", headers=[("TE", "trailers")])
        r = c.read_response()
    assert r.status == 200, r
    assert r.chunked
    assert r.body == b"hello"
    assert "x-checksum: abc" in [t.lower() for t in r.trailers]
    assert "grpc-status: 0" in [t.lower() for t in r.trailers]
    # the client's TE: trailers went up as te: trailers (gRPC servers want it)
    assert ["te", "trailers"] in up.requests[-1]["headers"]


def test_big_response_streams_through(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    n = 3 * 1024 * 1024
    r = request(g.port, "GET", "/big?n=%d" % n, timeout=30)
    assert r.status == 200
    assert len(r.body) == n and r.body == pattern(n)
