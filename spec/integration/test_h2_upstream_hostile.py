"""A hostile HTTP/2 upstream (protocol = "h2") against the gateway's h2
client engine: garbage, malformed and oversized frames, floods, bad
statuses, stalls, resets and GOAWAYs at every stage. For each: the client
gets a short JSON 502/504 (or a cut once its response started), a
bystander on a healthy h2 upstream of the same gateway is served during and
after, the failure is counted in moongate_upstream_errors_total, and the
gateway exits clean (ASan builds included)."""

import concurrent.futures
import socket
import struct
import time

import pytest

from conftest import Client, assert_json_error, config, free_port, request, wait_for
from h2help import H2Conn
from h2hostile import (CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, PING,
                       PUSH_PROMISE, SETTINGS, WINDOW_UPDATE, HostileH2, frame)
from h2upstream import H2Upstream
from opshelp import metric, metrics


def hpack_literal(name, value):
    """A literal header field with incremental indexing, new name (no
    Huffman): it enters the decoder's dynamic table."""
    def length(n, prefix_bits=7):
        limit = (1 << prefix_bits) - 1
        if n < limit:
            return bytes([n])
        out = [limit]
        n -= limit
        while n >= 128:
            out.append((n & 0x7f) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)
    return b"\x40" + length(len(name)) + name + length(len(value)) + value


def status_head(code, extra=()):
    return [(":status", code)] + list(extra)


# --- the hostile upstream's answers, by path ---------------------------------

def h_ok(c, sid, hs):
    c.headers(sid, status_head("200", [("content-length", "2")]))
    c.body(sid, b"ok", end=True)


def h_status(c, sid, hs):
    v = dict(hs)[":path"].split("=", 1)[1]
    extra = [("content-length", "0")]
    if v == "none":
        c.headers(sid, extra, end=True)
    else:
        c.headers(sid, status_head(v, extra), end=True)


def h_malformed_mid(c, sid, hs):
    c.headers(sid, status_head("200", [("content-length", "100000")]))
    c.body(sid, b"x" * 1000)
    time.sleep(0.1)
    # WINDOW_UPDATE with a 3-byte payload: FRAME_SIZE_ERROR for the connection
    c.send(frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"))


def h_big_head(c, sid, hs):
    block = c.block(status_head("200") + [("x-big-%d" % i, "v" * 1000) for i in range(80)])
    first, rest = block[:16384], block[16384:]
    c.frame(HEADERS, 0, sid, first)
    while rest:
        part, rest = rest[:16384], rest[16384:]
        c.frame(CONTINUATION, END_HEADERS if not rest else 0, sid, part)


def h_many_fields(c, sid, hs):
    c.headers(sid, status_head("200") + [("x-f%d" % i, "1") for i in range(400)], end=True)


def h_hpack_bomb(c, sid, hs):
    # one 4000-byte entry in the dynamic table, then 1-byte references to it:
    # 16 KiB of frames decode to ~64 MB of header fields
    block = c.block(status_head("200")) + hpack_literal(b"x-bomb", b"b" * 3900)
    block += b"\xbe" * 16000
    first, rest = block[:16384], block[16384:]
    c.frame(HEADERS, END_HEADERS if not rest else 0, sid, first)
    while rest:
        part, rest = rest[:16384], rest[16384:]
        c.frame(CONTINUATION, END_HEADERS if not rest else 0, sid, part)
    # the connection is wrecked by now (the rest of the block goes to a reset
    # stream); whatever comes next must not matter


def h_continuation_flood(c, sid, hs):
    c.frame(HEADERS, 0, sid, c.block(status_head("200")))
    small = c.block([("x-c", "1")])
    for _ in range(20000):
        c.frame(CONTINUATION, 0, sid, small)
        if c.dead:
            return


def h_ping_flood(c, sid, hs):
    c.send(b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(20000)))
    h_ok(c, sid, hs)


def h_settings_flood(c, sid, hs):
    c.send(b"".join(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 65535)) for _ in range(20000)))
    h_ok(c, sid, hs)


def h_silent(c, sid, hs):
    pass


def h_cl_short(c, sid, hs):
    c.headers(sid, status_head("200", [("content-length", "1000")]))
    c.body(sid, b"y" * 10, end=True)


def h_cl_long(c, sid, hs):
    c.headers(sid, status_head("200", [("content-length", "10")]))
    c.body(sid, b"z" * 1000, end=True)


def h_interim(c, sid, hs):
    n = int(dict(hs)[":path"].split("=", 1)[1])
    for _ in range(n):
        c.headers(sid, status_head("103", [("link", "</a.css>; rel=preload")]))
    h_ok(c, sid, hs)


def h_push(c, sid, hs):
    promised = c.block([(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                        (":path", "/pushed")])
    c.frame(PUSH_PROMISE, END_HEADERS, sid, struct.pack(">I", 2) + promised)
    h_ok(c, sid, hs)


def h_rst_after_partial(c, sid, hs):
    c.headers(sid, status_head("200"))
    c.body(sid, b"partial-")
    time.sleep(0.2)
    c.rst(sid, 2)


def h_rst_head(c, sid, hs):
    c.tcp_reset()


def h_rst_after_head(c, sid, hs):
    c.headers(sid, status_head("200", [("content-length", "5000")]))
    time.sleep(0.1)
    c.tcp_reset()


def h_rst_mid_body(c, sid, hs):
    c.headers(sid, status_head("200", [("content-length", "5000")]))
    c.body(sid, b"q" * 100)
    time.sleep(0.1)
    c.tcp_reset()


def h_crlf(c, sid, hs):
    c.headers(sid, status_head("200", [("content-length", "2"),
                                       ("x-evil", "a\r\nx-injected: 1"),
                                       ("connection", "close")]))
    c.body(sid, b"ok", end=True)


HANDLERS = {
    "/crlf": h_crlf,
    "/ok": h_ok, "/status": h_status, "/malformed-mid": h_malformed_mid,
    "/big-head": h_big_head, "/many-fields": h_many_fields, "/hpack-bomb": h_hpack_bomb,
    "/continuation-flood": h_continuation_flood, "/ping-flood": h_ping_flood,
    "/settings-flood": h_settings_flood, "/silent": h_silent, "/cl-short": h_cl_short,
    "/cl-long": h_cl_long, "/interim": h_interim, "/push": h_push,
    "/rst-after-partial": h_rst_after_partial, "/rst-head": h_rst_head,
    "/rst-after-head": h_rst_after_head, "/rst-mid-body": h_rst_mid_body,
}


def dispatch(c, sid, hs):
    path = dict(hs).get(":path", "").split("?", 1)[0]
    HANDLERS.get(path, h_ok)(c, sid, hs)


# --- fixtures ------------------------------------------------------------------

@pytest.fixture
def servers():
    started = []

    def make(kind, *a, **kw):
        s = kind(free_port(), *a, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def gw_config(bad, good, limits=None, **bad_opts):
    b = {"servers": [bad], "protocol": "h2", "connect_timeout": 2, "read_timeout": 5,
         "retries": 0, "max_fails": 0}
    b.update(bad_opts)
    return config(
        upstreams={"bad": b, "good": {"servers": [good], "protocol": "h2"}},
        routes=[{"name": "good", "match": {"prefix": "/echo/"}, "upstream": "good"},
                {"name": "big", "match": {"path": "/big"}, "upstream": "good"},
                {"name": "slow", "match": {"path": "/slow"}, "upstream": "good"},
                {"name": "bad", "match": {"prefix": "/"}, "upstream": "bad"}],
        admin={"addr": "127.0.0.1:$PORT1"}, **({"limits": limits} if limits else {}))


@pytest.fixture
def env(gateway, servers):
    """env(handler=dispatch, **hostile_kw, up=dict of upstream options) ->
    (gateway, hostile upstream, good upstream)."""
    def start(handler=dispatch, up=None, limits=None, **kw):
        bad = servers(HostileH2, handler, **kw)
        good = servers(H2Upstream)
        g = gateway(gw_config(bad.addr, good.addr, limits=limits, **(up or {})))
        g.admin_port = g.ports[1]
        g.good = good
        bystander(g)
        return g, bad, good
    return start


def bystander(g, n=1):
    for i in range(n):
        r = request(g.port, "GET", "/echo/by%d" % i)
        assert r.status == 200, r
        assert r.json()["path"] == "/echo/by%d" % i


def errors(g, kind):
    return metric(metrics(g), "moongate_upstream_errors_total", upstream="bad", kind=kind)


def during(g, fn, *a, **kw):
    """Runs fn(*a) in a thread while bystanders are served; returns its result."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        f = ex.submit(fn, *a, **kw)
        bystander(g, 3)
        r = f.result(30)
    bystander(g)
    return r


def read_cut(port, path, timeout=10):
    """A GET whose response starts and is then cut: (head bytes, body bytes
    read before the close)."""
    with Client(port, timeout=timeout) as c:
        c.request("GET", path)
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.sock.recv(65536)
            assert d, "closed before the head: %r" % data
            data += d
        head, body = data.split(b"\r\n\r\n", 1)
        while True:
            d = c.sock.recv(65536)
            if not d:
                break
            body += d
    return head, body


# --- the tests -------------------------------------------------------------------

def test_garbage_instead_of_settings_is_502(env):
    def garbage(c):
        c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 10)
        time.sleep(0.2)
        return False
    g, bad, _ = env(on_accept=garbage)
    r = during(g, request, g.port, "GET", "/x")
    assert_json_error(r, 502)
    assert errors(g, "connect") >= 1
    assert bad.connections == 1


def test_tcp_reset_at_accept_is_502(env):
    def reset(c):
        c.tcp_reset()
        return False
    g, bad, _ = env(on_accept=reset)
    assert_json_error(during(g, request, g.port, "GET", "/x"), 502)
    assert errors(g, "connect") >= 1


def test_settings_ack_before_settings_is_502(env):
    g, bad, _ = env(settings=None)
    assert_json_error(during(g, request, g.port, "GET", "/x"), 502)
    assert errors(g, "connect") >= 1


def test_no_settings_is_504(env):
    g, bad, _ = env(silent=True, up={"connect_timeout": 0.5})
    t0 = time.monotonic()
    assert_json_error(during(g, request, g.port, "GET", "/x"), 504)
    assert time.monotonic() - t0 < 4
    assert errors(g, "timeout") >= 1


@pytest.mark.parametrize("v", ["abc", "99", "1000", "none", "20x", "101"])
def test_missing_or_invalid_status_is_502(env, v):
    g, bad, _ = env()
    assert_json_error(during(g, request, g.port, "GET", "/status?v=" + v), 502)
    assert errors(g, "reset") + errors(g, "invalid") >= 1
    # the same connection still serves a good answer
    r = request(g.port, "GET", "/ok")
    assert r.status == 200 and r.body == b"ok"


def test_malformed_frame_mid_response_cuts_the_client(env):
    g, bad, _ = env()
    head, body = during(g, read_cut, g.port, "/malformed-mid")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) < 100000
    assert errors(g, "invalid") >= 1
    # a new connection serves the next one
    assert request(g.port, "GET", "/ok").status == 200
    assert bad.connections == 2


@pytest.mark.parametrize("path", ["/big-head", "/many-fields"])
def test_oversized_response_head_is_502(env, path):
    g, bad, _ = env()
    assert_json_error(during(g, request, g.port, "GET", path), 502)
    assert errors(g, "invalid") >= 1
    assert request(g.port, "GET", "/ok").status == 200


def test_hpack_bomb_is_502_and_bounded(env):
    g, bad, _ = env()
    rss0 = g.rss_kb()
    t0 = time.monotonic()
    assert_json_error(during(g, request, g.port, "GET", "/hpack-bomb"), 502)
    assert time.monotonic() - t0 < 10
    assert g.rss_kb() - rss0 < 32 * 1024, "the bomb went off in memory"
    assert request(g.port, "GET", "/ok").status == 200


def test_continuation_flood_is_an_error_and_bounded(env):
    g, bad, _ = env(up={"read_timeout": 2})
    rss0 = g.rss_kb()
    r = during(g, request, g.port, "GET", "/continuation-flood")
    assert r.status in (502, 504)
    assert_json_error(r, r.status)
    assert g.rss_kb() - rss0 < 32 * 1024
    assert request(g.port, "GET", "/ok").status == 200


@pytest.mark.parametrize("path", ["/ping-flood", "/settings-flood"])
def test_control_frame_flood_from_the_upstream(env, path):
    g, bad, _ = env()
    r = during(g, request, g.port, "GET", path)
    # either the flood is caught (the connection is dropped: 502) or it is
    # absorbed and the answer goes through; never a hang or a crash
    if r.status != 200:
        assert_json_error(r, 502)
        assert errors(g, "invalid") >= 1
    assert request(g.port, "GET", "/ok").status == 200


def test_content_length_shorter_than_the_body_cuts(env):
    g, bad, _ = env()
    head, body = during(g, read_cut, g.port, "/cl-long")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 10" in head.lower()
    assert len(body) < 10  # never more than announced, and the cut shows
    assert errors(g, "reset") + errors(g, "invalid") >= 1
    assert request(g.port, "GET", "/ok").status == 200


def test_content_length_longer_than_the_body_cuts(env):
    g, bad, _ = env()
    head, body = during(g, read_cut, g.port, "/cl-short")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"y" * 10
    assert errors(g, "reset") + errors(g, "invalid") >= 1
    assert request(g.port, "GET", "/ok").status == 200


def test_interim_storm_is_502_a_few_are_fine(env):
    g, bad, _ = env()
    r = request(g.port, "GET", "/interim?n=3")
    assert r.status == 200 and r.body == b"ok"
    assert_json_error(during(g, request, g.port, "GET", "/interim?n=40"), 502)
    assert errors(g, "invalid") >= 1


def test_push_promise_is_refused(env):
    g, bad, _ = env()
    r = during(g, request, g.port, "GET", "/push")
    assert_json_error(r, 502)
    assert "/pushed" not in bad.paths()
    assert request(g.port, "GET", "/ok").status == 200


def test_rst_stream_after_partial_body_http1_client(env):
    g, bad, _ = env()
    with Client(g.port) as c:
        c.request("GET", "/rst-after-partial")
        data = b""
        while True:
            d = c.sock.recv(65536)
            if not d:
                break
            data += d
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"partial-" in body
    assert not body.endswith(b"0\r\n\r\n"), "the cut must not look like a complete body"
    assert errors(g, "reset") >= 1
    bystander(g)


def test_rst_stream_after_partial_body_h2_client(env):
    g, bad, _ = env()
    c = H2Conn(g.port)
    try:
        st = c.get("/rst-after-partial")
        assert st.status == 200
        assert bytes(st.data) == b"partial-"
        assert st.reset is not None and not st.ended
        # the client's connection goes on
        st = c.get("/echo/after")
        assert st.status == 200
    finally:
        c.close()


@pytest.mark.parametrize("path", ["/rst-head", "/rst-after-head", "/rst-mid-body"])
def test_tcp_reset_at_each_stage(env, path):
    g, bad, _ = env()
    if path == "/rst-head":
        assert_json_error(during(g, request, g.port, "GET", path), 502)
    else:
        head, body = during(g, read_cut, g.port, path)
        assert head.startswith(b"HTTP/1.1 200")
        assert len(body) < 5000
    assert errors(g, "reset") + errors(g, "invalid") >= 1
    assert request(g.port, "GET", "/ok").status == 200


def test_goaway_below_streams_in_flight_replays_them(env):
    state = {"held": []}

    def handler(c, sid, hs):
        if c.num > 1:
            return h_ok(c, sid, hs)
        state["held"].append(sid)
        if len(state["held"]) == 3:
            first = min(state["held"])
            c.goaway(first)
            h_ok(c, first, hs)
    g, bad, _ = env(handler=handler)
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        fs = [ex.submit(request, g.port, "GET", "/g%d" % i) for i in range(3)]
        rs = [f.result(20) for f in fs]
    assert [r.status for r in rs] == [200] * 3
    assert all(r.body == b"ok" for r in rs)
    assert bad.connections == 2
    # the two streams past the GOAWAY went again on the second connection
    assert len([1 for (n, _, _) in bad.requests if n == 2]) >= 2
    bystander(g)


def test_read_timeout_is_504_and_others_unaffected(env):
    g, bad, _ = env(up={"read_timeout": 1})
    t0 = time.monotonic()
    assert_json_error(during(g, request, g.port, "GET", "/silent"), 504)
    assert time.monotonic() - t0 < 5
    assert errors(g, "timeout") >= 1


def test_upload_into_a_closed_window_is_504(env):
    g, bad, _ = env(up={"read_timeout": 1}, settings=((3, 100), (4, 0)),
                    window_updates=False)
    body = b"u" * (900 * 1024)  # under the default body limit, over every buffer

    def upload():
        with Client(g.port, timeout=20) as c:
            c.sock.settimeout(20)
            c.send(Client.build("POST", "/silent", headers=[("Content-Length", str(len(body)))]))
            sent = 0
            c.sock.setblocking(False)
            deadline = time.monotonic() + 15
            r = None
            while time.monotonic() < deadline:
                try:
                    if sent < len(body):
                        sent += c.sock.send(body[sent:sent + 65536])
                except BlockingIOError:
                    pass
                try:
                    d = c.sock.recv(65536)
                    if d:
                        c.buf += d
                        break
                    break
                except BlockingIOError:
                    time.sleep(0.01)
            c.sock.setblocking(True)
            return c.read_response()
    t0 = time.monotonic()
    r = during(g, upload)
    assert_json_error(r, 504)
    assert time.monotonic() - t0 < 8
    assert errors(g, "timeout") >= 1


def test_stalled_streams_do_not_stall_their_connection(env):
    """Many streams whose clients take nothing: each holds at most its own
    stream window of response bytes, and the upstream connection's window
    is not used up by them, so a new stream on it is still answered."""
    import h2.settings
    g, bad, good = env()
    c = H2Conn(g.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    try:
        n = 70
        for i in range(n):
            sid = c.request("GET", "/big?n=1048576&i=%d" % i)
            c.no_ack.add(sid)

        def waiting():
            try:
                c.sock.settimeout(0.05)
                c.read_once()
            except socket.timeout:
                pass
            return sum(len(p.window_waiters) for p in list(good.protos)) >= n
        wait_for(waiting, timeout=30, what="every stalled stream waiting on a window")
        assert good.connections == 1
        r = request(g.port, "GET", "/echo/bystander", timeout=5)
        assert r.status == 200 and r.json()["conn"] == 1
    finally:
        c.close()


def test_graceful_stop_with_streams_in_flight(env):
    """SIGTERM: a stream that ends within drain_timeout is answered; one
    that never would is dropped at drain_timeout, and the worker exits
    clean (no leak, no sanitizer report: the fixture checks)."""
    import signal
    g, bad, good = env(limits={"drain_timeout": 1.5}, up={"read_timeout": 30})
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        stuck = ex.submit(read_or_cut, g.port, "/silent")
        slow = ex.submit(request, g.port, "GET", "/slow?ms=600")
        bad.wait_requests(1)
        wait_for(lambda: any(q["path"].startswith("/slow") for q in good.requests),
                 what="the slow request upstream")
        t0 = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        r = slow.result(10)
        assert r.status == 200 and r.json()["path"] == "/slow?ms=600"
        assert stuck.result(10) is None  # cut, no answer
        assert g.proc.wait(10) == 0
        assert time.monotonic() - t0 < 5


def read_or_cut(port, path):
    """A GET's response, or None when the connection closes first."""
    try:
        return request(port, "GET", path, timeout=15)
    except Exception:  # the peer closed (PeerClosed) or reset
        return None


def test_response_field_with_crlf_is_refused(env):
    g, bad, _ = env()
    with Client(g.port) as c:
        c.request("GET", "/crlf")
        r = c.read_response()
    assert r.status == 502, r
    assert not r.has("x-injected") and not r.has("x-evil")
    assert errors(g, "invalid") >= 1
    bystander(g)
