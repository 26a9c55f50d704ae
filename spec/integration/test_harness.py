"""The test upstream itself (no gateway): the behaviours the other tests rely on."""
import time

from conftest import Client, PeerClosed, pattern_sha256, request, sha256


def test_echo_and_stats(upstream):
    r = request(upstream.port, "POST", "/echo?a=1", headers=[("X-A", "1")], body=b"hi")
    assert r.status == 200
    doc = r.json()
    assert doc["method"] == "POST" and doc["path"] == "/echo?a=1"
    assert ["X-A", "1"] in doc["headers"] and doc["body"] == "hi"
    assert r.header("X-Upstream-Port") == str(upstream.port)
    st = upstream.stats()
    assert st["connections"] == 1 and st["requests"] == 1
    assert st["log"] == [["POST", "/echo?a=1"]]


def test_keepalive_counts_one_connection(upstream):
    with Client(upstream.port) as c:
        for i in range(5):
            c.request("GET", "/echo?i=%d" % i)
            r = c.read_response()
            assert r.header("X-Upstream-Req") == str(i + 1)
    st = upstream.stats()
    assert st["connections"] == 1 and st["requests"] == 5


def test_bodies(upstream):
    r = request(upstream.port, "GET", "/bytes/200000")
    assert r.body_len == 200000 and sha256(r.body) == pattern_sha256(200000)
    r = request(upstream.port, "GET", "/chunked/100000?chunk=1000&trailer=1")
    assert r.chunked and sha256(r.body) == pattern_sha256(100000)
    assert r.trailers == ["X-Trailer: yes"]
    r = request(upstream.port, "GET", "/close/70000")
    assert r.close_delimited and sha256(r.body) == pattern_sha256(70000)
    r = request(upstream.port, "HEAD", "/bytes/5000")
    assert r.header("Content-Length") == "5000" and r.body == b""
    r = request(upstream.port, "GET", "/status/204")
    assert r.status == 204 and r.body == b""
    r = request(upstream.port, "POST", "/upload", body=b"x" * 1000, chunked=True)
    assert r.json()["length"] == 1000 and r.json()["framing"] == "chunked"


def test_failure_paths(upstream):
    with Client(upstream.port) as c:
        c.request("GET", "/garbage")
        assert c.sock.recv(100).startswith(b"NOT HTTP")
    with Client(upstream.port) as c:
        c.request("GET", "/reset")
        try:
            data = c.sock.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b""
    with Client(upstream.port) as c:
        c.request("GET", "/half")
        try:
            c.read_response()
            assert False, "expected a truncated body"
        except PeerClosed:
            pass
    t = time.monotonic()
    r = request(upstream.port, "GET", "/slow/300")
    assert r.status == 200 and time.monotonic() - t >= 0.3
    r = request(upstream.port, "GET", "/echo?hdr=X-Foo:bar&close=1")
    assert r.header("X-Foo") == "bar" and r.header("Connection") == "close"


def test_expect_continue(upstream):
    with Client(upstream.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
               b"Expect: 100-continue\r\n\r\n")
        r = c.read_response(interim=True)
        assert r.status == 100
        c.send(b"abc")
        assert c.read_response().json()["body"] == "abc"
