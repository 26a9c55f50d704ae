"""The errors users see (PRODUCT.md "Errors users see"): status, short JSON
body, connection handling, and the gateway serving everyone else afterwards."""
import socket
import time

import pytest

from conftest import (Client, PeerClosed, Raw, assert_json_error, assert_serves, free_port,
                      proxy_config, raw_exchange, request)

LIMITS = {"max_uri_bytes": 1024, "max_header_bytes": 4096, "max_body_bytes": 10000,
          "header_timeout": 1, "idle_timeout": 30}


@pytest.fixture
def gw(gateway, upstream):
    return gateway(proxy_config([upstream.addr], limits=LIMITS, read_timeout=1))


def expect_error_and_close(port, data, status):
    r, closed = raw_exchange(port, data)
    assert_json_error(r, status)
    assert closed, "the gateway closes the connection after a %d" % status
    assert_serves(port)
    return r


# -- 404 ---------------------------------------------------------------------

def test_404_no_route(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], routes=[
        {"match": {"prefix": "/api/"}, "upstream": "app"}]))
    with Client(g.port) as c:
        c.request("GET", "/nothing/here")
        assert_json_error(c.read_response(), 404)
        c.request("GET", "/api/x")              # keep-alive survives a 404
        assert c.read_response().status == 200
    assert upstream.stats()["log"] == [["GET", "/api/x"]]


def _answered_before_the_body(port, path, body_len, extra=(), split=True):
    """POST with a body the gateway answers without reading (no route, a
    refusal), then a pipelined GET: (first response, second response or
    None if the connection closed instead)."""
    with Client(port) as c:
        head = Client.build("POST", path, headers=[("Content-Length", str(body_len))] + list(extra))
        c.send(head)
        if split:
            r = c.read_response(method="POST")  # answered before any body byte
        c.send(b"x" * body_len + Client.build("GET", "/echo?second=1"))
        if not split:
            r = c.read_response(method="POST")
        try:
            return r, c.read_response()
        except PeerClosed:
            return r, None


@pytest.mark.parametrize("split", [True, False])
def test_answer_before_the_body_keeps_the_connection(gateway, upstream, split):
    # the unread rest of a Content-Length body (up to 64 KiB) is read and
    # dropped: the connection stays usable, as after any other 404/401
    g = gateway(proxy_config([upstream.addr], routes=[
        {"match": {"prefix": "/echo"}, "upstream": "app"},
        {"match": {"prefix": "/h/"}, "handler": Raw('function() return 401, "no" end')}]))
    for path, status in (("/nothing", 404), ("/h/x", 401)):
        for n in (5, 65536):
            r, second = _answered_before_the_body(g.port, path, n, split=split)
            assert r.status == status and not r.has("connection"), (path, n, r)
            assert second is not None and second.status == 200, (path, n)
            assert second.json()["path"] == "/echo?second=1"
    assert upstream.stats()["log"] == [["GET", "/echo?second=1"]] * 4


def test_answer_before_a_big_or_awaited_body_closes(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], routes=[
        {"match": {"prefix": "/echo"}, "upstream": "app"}]))
    # more than 64 KiB still to come: not worth reading, the connection ends
    r, second = _answered_before_the_body(g.port, "/nothing", 65537)
    assert r.status == 404 and r.header("connection") == "close" and second is None
    # Expect: 100-continue answered with a final status: the client may
    # never send the body, so its next bytes cannot be taken for one
    r, second = _answered_before_the_body(g.port, "/nothing", 5,
                                          extra=[("Expect", "100-continue")])
    assert r.status == 404 and r.header("connection") == "close" and second is None
    assert_serves(g.port)


def test_h2_answer_before_the_body_leaves_the_connection_usable(gateway, upstream):
    # over HTTP/2 the stream's own rules apply (its unread body is dropped
    # or the stream reset): the answer comes, the connection goes on
    import socket
    import h2.config
    import h2.connection
    import h2.events
    g = gateway(proxy_config([upstream.addr], routes=[
        {"match": {"prefix": "/echo"}, "upstream": "app"}]))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", "/nothing"),
                          (":authority", "x"), ("content-length", "100")])
    s.sendall(conn.data_to_send())
    status = {}

    def until_ended(sid):
        while True:
            data = s.recv(65536)
            assert data, status
            for e in conn.receive_data(data):
                if isinstance(e, h2.events.ResponseReceived):
                    status[e.stream_id] = dict(e.headers)[b":status"]
                if isinstance(e, h2.events.StreamEnded) and e.stream_id == sid:
                    s.sendall(conn.data_to_send())
                    return
            s.sendall(conn.data_to_send())
    try:
        until_ended(1)
        conn.send_headers(3, [(":method", "GET"), (":scheme", "http"), (":path", "/echo"),
                              (":authority", "x")], end_stream=True)
        s.sendall(conn.data_to_send())
        until_ended(3)
    finally:
        s.close()
    assert status == {1: b"404", 3: b"200"}, status


# -- 408 ---------------------------------------------------------------------

def test_408_slow_headers(gw):
    with Client(gw.port) as c:
        t0 = time.monotonic()
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Partial: 1\r\n")
        r = c.read_response(timeout=6)
        elapsed = time.monotonic() - t0
        assert_json_error(r, 408)
        assert 0.5 <= elapsed < 4, elapsed
        assert c.closed(3)
    assert_serves(gw.port)


def test_silent_connection_is_closed(gw):
    # A client that connects and sends nothing must not hold a connection
    # forever (header_timeout 1 s, idle_timeout 30 s): closed, 408 or not.
    with Client(gw.port) as c:
        t0 = time.monotonic()
        c.sock.settimeout(8)
        try:
            data = c.sock.recv(65536)
            while data:
                c.buf += data
                data = c.sock.recv(65536)
        except socket.timeout:
            assert False, "a silent connection was still open after 8 s"
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < 5
        if c.buf:
            c.eof = True
            assert_json_error(c.read_response(timeout=1), 408)
    assert_serves(gw.port)


def test_408_partial_request_line(gw):
    with Client(gw.port) as c:
        c.send(b"GET /ec")
        r = c.read_response(timeout=6)
        assert_json_error(r, 408)
        assert c.closed(3)
    assert_serves(gw.port)


def test_408_slowloris_trickle_is_not_reset_by_each_byte(gw):
    # One byte every 0.2 s must not extend header_timeout (1 s) indefinitely.
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    with Client(gw.port) as c:
        t0 = time.monotonic()
        for b in head:
            if time.monotonic() - t0 > 6:
                break
            try:
                c.send(bytes([b]))
            except OSError:
                break                   # closed: the answer is already buffered
            c.sock.settimeout(0.2)
            try:
                data = c.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            c.buf += data
            break
        elapsed = time.monotonic() - t0
        r = c.read_response(timeout=3)
        assert_json_error(r, 408)
        assert elapsed < 4, "408 came %.1fs after the first byte" % elapsed
    assert_serves(gw.port)


def test_header_timeout_does_not_cut_a_slow_body(gateway, upstream):
    # header_timeout is about the head; a body that takes longer is fine.
    g = gateway(proxy_config([upstream.addr], limits=LIMITS, read_timeout=10))
    with Client(g.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        time.sleep(1.5)
        c.send(b"cd")
        r = c.read_response(timeout=5)
        assert r.status == 200 and r.json()["body"] == "abcd"


# -- 413 ---------------------------------------------------------------------

def test_413_content_length_over_limit(gw, upstream):
    data = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10001\r\n\r\n" + b"a" * 10001
    expect_error_and_close(gw.port, data, 413)
    assert ["POST", "/echo"] not in upstream.stats()["log"]


def test_413_content_length_answered_before_the_body(gw):
    # The limit is known from the head: no need to wait for (or read) the body.
    with Client(gw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        r = c.read_response(timeout=5)
        assert_json_error(r, 413)
        assert c.closed(5)
    assert_serves(gw.port)


def test_413_expect_continue_gets_no_100(gw):
    with Client(gw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n"
               b"Expect: 100-continue\r\n\r\n")
        r = c.read_response(interim=True, timeout=5)
        assert_json_error(r, 413)
    assert_serves(gw.port)


def test_413_chunked_body_over_limit(gw):
    with Client(gw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(5):
                c.send(b"1000\r\n" + b"z" * 4096 + b"\r\n")
            c.send(b"0\r\n\r\n")
        except OSError:
            pass                        # the gateway may answer and close early
        r = c.read_response(timeout=5)
        assert_json_error(r, 413)
        assert c.closed(5)
    assert_serves(gw.port)


def test_body_at_limit_is_accepted(gw):
    body = b"q" * 10000
    r = request(gw.port, "POST", "/echo", body=body)
    assert r.status == 200 and len(r.json()["body"]) == 10000
    with Client(gw.port) as c:
        c.request("POST", "/echo", body=body, chunked=True)
        r = c.read_response()
        assert r.status == 200 and len(r.json()["body"]) == 10000


# -- 414 and 431 -------------------------------------------------------------

def test_414_uri_too_long(gw, upstream):
    path = "/echo?" + "u" * 1100
    expect_error_and_close(gw.port, Client.build("GET", path), 414)
    assert upstream.stats()["requests"] == 1          # only assert_serves' request


def test_414_even_when_request_line_exceeds_header_limit(gw):
    path = "/echo?" + "u" * 6000                      # > max_header_bytes (4096) too
    expect_error_and_close(gw.port, Client.build("GET", path), 414)


def test_uri_under_limit_is_fine(gw):
    path = "/echo?" + "u" * 900
    r = request(gw.port, "GET", path)
    assert r.status == 200 and r.json()["path"] == path


def test_431_too_many_headers(gw):
    hs = [("X-H%03d" % i, "v" * 40) for i in range(120)]      # ~6 KB
    expect_error_and_close(gw.port, Client.build("GET", "/echo", headers=hs), 431)


def test_431_one_huge_header(gw):
    hs = [("X-Huge", "h" * 5000)]
    expect_error_and_close(gw.port, Client.build("GET", "/echo", headers=hs), 431)


def test_431_not_414_for_short_uri(gw):
    r, closed = raw_exchange(gw.port, Client.build("GET", "/e", headers=[("X-Huge", "h" * 8000)]))
    assert_json_error(r, 431)


# -- 400 (malformed; smuggling has its own file) -----------------------------

MALFORMED = {
    "garbage_line": b"HELLO\r\n\r\n",
    "garbage_words": b"THIS IS NOT HTTP AT ALL\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_version": b"GET / HTTP/1.x\r\nHost: x\r\n\r\n",
    "header_without_colon": b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "space_in_header_name": b"GET / HTTP/1.1\r\nHost: x\r\nX Bad: 1\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "nul_in_header_value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "cr_in_header_value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "missing_host_http11": b"GET /echo HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "duplicate_host": b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_400_malformed(gw, upstream, name):
    expect_error_and_close(gw.port, MALFORMED[name], 400)
    assert upstream.stats()["requests"] == 1          # only assert_serves' request


# -- 502 and 504 -------------------------------------------------------------

def test_502_upstream_refused(gateway):
    dead = free_port()
    g = gateway(proxy_config(["127.0.0.1:%d" % dead], retries=0))
    t0 = time.monotonic()
    assert_json_error(request(g.port, "GET", "/echo"), 502)
    assert time.monotonic() - t0 < 3
    assert_json_error(request(g.port, "GET", "/echo"), 502)


def test_502_upstream_reset(gw, upstream):
    assert_json_error(request(gw.port, "GET", "/reset"), 502)
    assert_serves(gw.port)


def test_502_upstream_garbage(gw, upstream):
    assert_json_error(request(gw.port, "GET", "/garbage"), 502)
    assert_serves(gw.port)


def test_502_keeps_client_connection_usable(gw, upstream):
    with Client(gw.port) as c:
        c.request("GET", "/garbage")
        assert_json_error(c.read_response(), 502)
        try:
            c.request("GET", "/echo?after=502")
            r = c.read_response()
        except (PeerClosed, OSError):
            r = None                                   # closing is allowed too
        if r is not None:
            assert r.status == 200 and r.json()["path"] == "/echo?after=502"
    assert_serves(gw.port)


def test_truncated_upstream_body_is_not_passed_off_as_complete(gw, upstream):
    # Headers (Content-Length: 1000) already went out; only 10 bytes follow.
    with Client(gw.port, timeout=8) as c:
        c.request("GET", "/half")
        t0 = time.monotonic()
        try:
            r = c.read_response(timeout=8)
        except PeerClosed:
            r = None
        assert time.monotonic() - t0 < 6, "the client hung on a truncated response"
        if r is not None:
            assert r.status == 502, "a complete response was made of a truncated one: %r" % r
    assert_serves(gw.port)


def test_504_upstream_read_timeout(gw, upstream):
    t0 = time.monotonic()
    r = request(gw.port, "GET", "/slow/4000")
    elapsed = time.monotonic() - t0
    assert_json_error(r, 504)
    assert 0.7 <= elapsed < 3.5, elapsed
    assert_serves(gw.port)


def test_upstream_under_read_timeout_is_fine(gw):
    r = request(gw.port, "GET", "/slow/300")
    assert r.status == 200


def test_errors_leak_nothing(gw, upstream):
    for data, status in ((b"HELLO\r\n\r\n", 400), (Client.build("GET", "/reset"), 502)):
        r, _ = raw_exchange(gw.port, data)
        assert_json_error(r, status)
        low = r.body.lower()
        for leak in (b"traceback", b".c:", b".lua:", b"stack", b"127.0.0.1:%d" % upstream.port):
            assert leak not in low, r.body


def test_upstream_5xx_passes_through_untouched(gw):
    r = request(gw.port, "GET", "/status/502")
    assert r.status == 502 and r.json() == {"status": 502}
