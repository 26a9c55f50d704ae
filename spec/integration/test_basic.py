"""Proxying basics: round trips, HTTP/1.0 and 1.1, HEAD/204/304, Expect,
Connection: close, pipelining, X-Forwarded-*, hop-by-hop headers."""
import json
import time

from conftest import (Client, Raw, assert_serves, config, curl,
                      pattern_sha256, proxy_config, request, sha256)


def test_get_round_trip(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    r = request(g.port, "GET", "/echo/some/path?a=1&b=%20x")
    assert r.status == 200
    doc = r.json()
    assert doc["method"] == "GET"
    assert doc["path"] == "/echo/some/path?a=1&b=%20x"
    assert r.header("X-Upstream-Port") == str(upstream.port)
    assert upstream.stats()["requests"] == 1


def test_post_content_length_body(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    body = bytes(range(256)) * 40
    r = request(g.port, "POST", "/echo", body=body, headers=[("Content-Type", "x/y")])
    doc = r.json()
    assert doc["method"] == "POST"
    assert doc["body"].encode("latin-1") == body
    assert ["Content-Type", "x/y"] in doc["headers"]


def test_chunked_request_body_arrives(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-T: 1\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    assert r.json()["body"] == "hello world!"


def test_upstream_status_and_body_pass_through(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    r = request(g.port, "GET", "/status/418")
    assert r.status == 418
    assert r.json() == {"status": 418}
    r = request(g.port, "GET", "/status/503")
    assert r.status == 503 and r.json() == {"status": 503}


def test_response_headers_pass_through(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    r = request(g.port, "GET", "/echo?hdr=X-Foo:bar&hdr=Set-Cookie:a=1&hdr=Set-Cookie:b=2")
    assert r.header("X-Foo") == "bar"
    assert sorted(r.headers_all("Set-Cookie")) == ["a=1", "b=2"]


def test_duplicate_request_headers_reach_upstream(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    r = request(g.port, "GET", "/echo", headers=[("X-Dup", "one"), ("X-Dup", "two")])
    vals = [v for n, v in r.json()["headers"] if n.lower() == "x-dup"]
    assert ", ".join(vals).replace(" ", "") == "one,two"


def test_curl_get(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    p = curl("-w", "\n%{http_code}", "http://127.0.0.1:%d/echo?curl=1" % g.port)
    assert p.returncode == 0, p.stderr
    body, code = p.stdout.rsplit(b"\n", 1)
    assert code == b"200"
    assert json.loads(body)["path"] == "/echo?curl=1"


def test_handler_route(gateway):
    g = gateway(config(routes=[
        {"match": {"path": "/hello"},
         "handler": Raw('function(req) return 200, "Hello, World" end')},
        {"match": {"path": "/made"},
         "handler": Raw('function(req) return 201, "made", { ["X-Handler"] = "yes" } end')},
    ]))
    r = request(g.port, "GET", "/hello")
    assert r.status == 200 and r.body == b"Hello, World"
    r = request(g.port, "GET", "/made")
    assert r.status == 201 and r.body == b"made" and r.header("X-Handler") == "yes"


def test_http10_client_never_gets_chunked(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.request("GET", "/chunked/300000?chunk=1000", version="HTTP/1.0")
        r = c.read_response()
        assert r.status == 200
        assert r.version in ("HTTP/1.0", "HTTP/1.1")
        assert not r.chunked and "chunked" not in ",".join(r.headers_all("Transfer-Encoding"))
        assert r.body_len == 300000 and sha256(r.body) == pattern_sha256(300000)
        assert c.closed(5), "HTTP/1.0 without keep-alive: the connection closes"


def test_http10_keepalive(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        for i in range(3):
            c.request("GET", "/echo?i=%d" % i, version="HTTP/1.0",
                      headers=[("Connection", "keep-alive")])
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == "/echo?i=%d" % i
            assert not r.chunked


def test_head_has_no_body(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        # Pipelined: any stray body byte after the HEAD would corrupt what follows.
        c.send(Client.build("HEAD", "/bytes/5000") + Client.build("HEAD", "/chunked/5000") +
               Client.build("GET", "/echo?after=head"))
        r1 = c.read_response(method="HEAD")
        r2 = c.read_response(method="HEAD")
        r3 = c.read_response()
    assert r1.status == 200 and r1.body == b""
    assert r1.header("Content-Length") in (None, "5000")
    assert r2.status == 200 and r2.body == b""
    assert r3.status == 200 and r3.json()["path"] == "/echo?after=head"


def test_204_and_304_have_no_body(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.send(Client.build("GET", "/status/204") + Client.build("GET", "/status/304") +
               Client.build("GET", "/echo?after=304"))
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
    assert r1.status == 204 and r1.body == b"" and not r1.chunked
    assert r1.header("Transfer-Encoding") is None
    assert r2.status == 304 and r2.body == b"" and not r2.chunked
    assert r3.status == 200 and r3.json()["path"] == "/echo?after=304"


def test_handler_204_sends_no_body(gateway):
    g = gateway(config(routes=[
        {"match": {"path": "/nobody"},
         "handler": Raw('function(req) return 204, "must not be sent" end')},
        {"match": {"path": "/ok"}, "handler": Raw('function(req) return 200, "ok" end')},
    ]))
    with Client(g.port) as c:
        c.send(Client.build("GET", "/nobody") + Client.build("GET", "/ok"))
        r1 = c.read_response()
        r2 = c.read_response()
    assert r1.status == 204 and r1.body == b""
    assert r2.status == 200 and r2.body == b"ok"


def test_expect_100_continue(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
               b"Expect: 100-continue\r\n\r\n")
        interim = c.read_response(interim=True, timeout=3)
        assert interim.status == 100
        assert interim.raw_head.startswith(b"HTTP/1.1 100 Continue")
        c.send(b"hello world")
        r = c.read_response()
        assert r.status == 200 and r.json()["body"] == "hello world"
        # Only one 100 Continue: the final response follows directly.
        c.request("GET", "/echo?next=1")
        assert c.read_response().json()["path"] == "/echo?next=1"


def test_expect_100_continue_chunked(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Expect: 100-continue\r\n\r\n")
        interim = c.read_response(interim=True, timeout=3)
        assert interim.status == 100
        c.send(b"3\r\nabc\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["body"] == "abc"


def test_curl_large_post_uses_expect(gateway, upstream, tmp_path):
    # curl sends "Expect: 100-continue" for bodies over 1 MiB and waits for it.
    g = gateway(proxy_config([upstream.addr], limits={"max_body_bytes": 8 << 20}))
    f = tmp_path / "body.bin"
    data = bytes(range(256)) * (12 * 1024)     # 3 MiB
    f.write_bytes(data)
    t0 = time.monotonic()
    p = curl("-H", "Expect: 100-continue", "--expect100-timeout", "20",
             "--data-binary", "@%s" % f, "http://127.0.0.1:%d/upload" % g.port)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["length"] == len(data) and doc["sha256"] == sha256(data)
    assert time.monotonic() - t0 < 10


def test_connection_close_honoured(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.request("GET", "/echo", headers=[("Connection", "close")])
        r = c.read_response()
        assert r.status == 200
        assert "close" in r.header("Connection", "").lower()
        assert c.closed(5)


def test_http10_closes_after_response(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.request("GET", "/echo", version="HTTP/1.0")
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/echo"
        assert c.closed(5)


def test_pipelining_answered_in_order(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    reqs = [("GET", "/slow/300?n=0", None), ("GET", "/echo?n=1", None),
            ("POST", "/echo?n=2", b"body-two"), ("HEAD", "/echo?n=3", None),
            ("GET", "/slow/100?n=4", None), ("GET", "/status/204?n=5", None),
            ("GET", "/echo?n=6", None)]
    data = b"".join(Client.build(m, p, body=b) for m, p, b in reqs)
    with Client(g.port) as c:
        c.send(data)
        rs = [c.read_response(method=m) for m, _, _ in reqs]
    for i, (m, p, b) in enumerate(reqs):
        r = rs[i]
        if m == "HEAD":
            assert r.status == 200 and r.body == b""
        elif "/status/204" in p:
            assert r.status == 204
        else:
            doc = r.json()
            assert doc["path"] == p, (i, doc["path"])
            if b:
                assert doc["body"] == b.decode()


def test_pipelining_burst(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    n = 100
    with Client(g.port) as c:
        c.send(b"".join(Client.build("GET", "/echo?i=%d" % i) for i in range(n)))
        for i in range(n):
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == "/echo?i=%d" % i


def test_forwarded_headers(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    r = request(g.port, "GET", "/echo", host="front.example:8080")
    hs = r.json()["headers"]
    got = {}
    for n, v in hs:
        got.setdefault(n.lower(), []).append(v)
    assert got["host"] == ["front.example:8080"], "Host passes unchanged"
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-forwarded-host"] == ["front.example:8080"]


def test_x_forwarded_for_appends(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    r = request(g.port, "GET", "/echo", headers=[("X-Forwarded-For", "203.0.113.7")])
    xff = [v for n, v in r.json()["headers"] if n.lower() == "x-forwarded-for"]
    assert ", ".join(xff).replace(" ", "") == "203.0.113.7,127.0.0.1"


def test_hop_by_hop_request_headers_removed(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    r = request(g.port, "GET", "/echo", headers=[
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("Keep-Alive", "timeout=77"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Foo"),
        ("Upgrade", "foo/1"),
        ("X-Secret-Hop", "must-not-pass"),
        ("X-End-To-End", "kept"),
    ])
    assert r.status == 200
    hs = r.json()["headers"]
    names = [n.lower() for n, _ in hs]
    for hop in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade",
                "x-secret-hop"):
        assert hop not in names, (hop, hs)
    for n, v in hs:
        if n.lower() == "connection":
            assert "x-secret-hop" not in v.lower()
    assert ["X-End-To-End", "kept"] in hs


def test_hop_by_hop_response_headers_removed(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    q = "&".join("hdr=" + h for h in (
        "Connection:X-Up-Hop", "X-Up-Hop:secret", "Keep-Alive:timeout=77",
        "Proxy-Connection:keep-alive", "Trailer:X-Nope", "Upgrade:foo/1",
        "X-Kept:yes"))
    with Client(g.port) as c:
        c.request("GET", "/echo?" + q)
        r = c.read_response()
        assert r.status == 200
        assert r.header("X-Kept") == "yes"
        for hop in ("X-Up-Hop", "Proxy-Connection", "Trailer", "Upgrade"):
            assert not r.has(hop), (hop, r.headers)
        assert all("77" not in v for v in r.headers_all("Keep-Alive")), r.headers
        assert all("x-up-hop" not in v.lower() for v in r.headers_all("Connection"))
        # The connection is still usable afterwards.
        c.request("GET", "/echo?again=1")
        assert c.read_response().json()["path"] == "/echo?again=1"


def test_request_headers_near_limit_pass_intact(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], limits={"max_header_bytes": 16384}))
    big = "v" * 8000
    r = request(g.port, "GET", "/echo", headers=[("X-Big", big)])
    assert r.status == 200
    assert ["X-Big", big] in r.json()["headers"]
    assert_serves(g.port)
