"""HTTP/2 from clients (PRODUCT.md "HTTP/2 and gRPC"): h2c with prior
knowledge on a plain listener, every stream an ordinary request (handlers,
Lua, the proxy to an HTTP/1.1 upstream), request and response bodies with
flow control, independent streams, the writer's HEADERS/DATA/END_STREAM
shapes, limits, errors and the access log. Clients: curl
--http2-prior-knowledge, nghttp and python3-h2 over a raw socket
(h2help.py)."""

import hashlib
import json
import subprocess
import threading
import time

import pytest

from conftest import assert_json_error, curl, pattern_sha256, request, wait_for
from h2help import H2Conn

HELLO = """
local function hello(req)
  return 200, "hello " .. req.http_version .. " " .. req.method .. " " .. req.path
end
"""


def h2_config(upstream=None, limits=None, extra_routes="", access_log="false", listen=None):
    up = ""
    if upstream is not None:
        up = 'upstreams = { app = { servers = { "%s" }, keepalive = 16, read_timeout = 10 } },' \
            % upstream.addr
    lim = ""
    if limits:
        lim = "limits = { %s }," % ", ".join("%s = %s" % (k, json.dumps(v))
                                            for k, v in limits.items())
    return """%s
return {
  listen = { %s },
  access_log = %s,
  %s
  %s
  routes = {
    { name = "hello", match = { path = "/hello" }, handler = hello },
    { name = "empty", match = { path = "/empty" },
      handler = function(req) return 200, "", { ["X-Empty"] = "yes" } end },
    { name = "lua", match = { path = "/lua" }, handler = function(req)
        return 200, req.http_version .. "|" .. req.remote_addr .. "|" ..
          tostring(req:header("x-a")) .. "|" .. tostring(req:header("host")) .. "|" ..
          tostring(req:header("cookie")) .. "|" .. #(req:body() or "")
      end },
    %s
    %s
  },
}
""" % (HELLO, listen or '{ addr = "127.0.0.1:$PORT" }', access_log, up, lim, extra_routes,
       '{ name = "up", match = { prefix = "/" }, upstream = "app" },' if upstream else "")


def test_curl_prior_knowledge_handler(gateway):
    g = gateway(h2_config())
    p = curl("--http2-prior-knowledge", "-i", "http://127.0.0.1:%d/hello" % g.port)
    out = p.stdout.decode()
    assert p.returncode == 0, p.stderr
    assert out.startswith("HTTP/2 200"), out
    assert out.endswith("hello 2 GET /hello"), out
    assert "\ndate: " in out
    # the same port still speaks HTTP/1.1
    r = request(g.port, "GET", "/hello")
    assert r.status == 200 and r.body == b"hello 1.1 GET /hello"


def test_nghttp_handler_and_settings(gateway):
    g = gateway(h2_config(limits={"h2_max_streams": 7}))
    p = subprocess.run(["nghttp", "-nv", "http://127.0.0.1:%d/hello" % g.port],
                       capture_output=True, timeout=20)
    out = p.stdout.decode()
    assert p.returncode == 0, out
    assert "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7" in out, out
    assert "(stream_id=13) :status: 200" in out


def test_proxy_get_post_and_big_bodies(gateway, upstream):
    g = gateway(h2_config(upstream, limits={"max_body_bytes": 32 * 1024 * 1024}))
    c = H2Conn(g.port)
    s = c.get("/echo?x=1", headers=[("x-a", "1"), ("cookie", "a=1"), ("cookie", "b=2")])
    assert s.status == 200
    doc = json.loads(bytes(s.data))
    hdrs = [(k.lower(), v) for k, v in doc["headers"]]
    assert doc["path"] == "/echo?x=1" and doc["http_version"] == "HTTP/1.1"
    assert ("host", "localhost") in hdrs
    assert ("cookie", "a=1; b=2") in hdrs  # crumbs joined for the HTTP/1.1 upstream
    assert ("x-forwarded-proto", "http") in hdrs
    assert s.header("x-upstream-port") == str(upstream.port)
    # a big upload with a length, and one without (chunked upstream)
    body = bytes(range(256)) * 20000  # 5 MB
    sid = c.request("POST", "/upload", headers=[("content-length", str(len(body)))], body=body)
    s = c.response(sid, 30)
    doc = json.loads(bytes(s.data))
    assert doc["length"] == len(body) and doc["framing"] == "content-length"
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()
    sid = c.request("POST", "/upload", body=body)
    s = c.response(sid, 30)
    doc = json.loads(bytes(s.data))
    assert doc["length"] == len(body) and doc["framing"] == "chunked"
    # a big download, with flow control
    s = c.get("/bytes/%d" % (20 * 1024 * 1024), timeout=60)
    assert s.status == 200 and len(s.data) == 20 * 1024 * 1024
    assert hashlib.sha256(s.data).hexdigest() == pattern_sha256(20 * 1024 * 1024)
    s = c.get("/chunked/300000")
    assert len(s.data) == 300000
    c.close()


def test_curl_upload_download(gateway, upstream, tmp_path):
    g = gateway(h2_config(upstream, limits={"max_body_bytes": 8 * 1024 * 1024}))
    f = tmp_path / "up.bin"
    data = bytes(range(251)) * 12000
    f.write_bytes(data)
    p = curl("--http2-prior-knowledge", "--data-binary", "@%s" % f,
             "http://127.0.0.1:%d/upload" % g.port)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["sha256"] == hashlib.sha256(data).hexdigest()
    p = curl("--http2-prior-knowledge", "http://127.0.0.1:%d/bytes/3000000" % g.port)
    assert hashlib.sha256(p.stdout).hexdigest() == pattern_sha256(3000000)


def test_lua_sees_request(gateway):
    g = gateway(h2_config())
    c = H2Conn(g.port)
    s = c.response(c.request("POST", "/lua", headers=[("x-a", "A"), ("cookie", "k=1"),
                                                      ("cookie", "j=2")], body=b"x" * 1000))
    assert s.status == 200
    assert bytes(s.data) == b"2|127.0.0.1|A|localhost|k=1; j=2|1000"


def test_empty_generated_body_is_one_headers_frame(gateway):
    """gRPC's Trailers-Only shape: a head with no body is one HEADERS frame
    that ends the stream."""
    g = gateway(h2_config())
    c = H2Conn(g.port)
    s = c.get("/empty")
    assert s.status == 200 and s.head_ended and bytes(s.data) == b""
    assert s.header("x-empty") == "yes"
    assert s.frames == ["ResponseReceived", "StreamEnded"]
    s = c.get("/hello")
    assert not s.head_ended and bytes(s.data) == b"hello 2 GET /hello"


def test_errors_are_json_with_date(gateway, upstream):
    g = gateway(h2_config(upstream, limits={"max_body_bytes": 1000}))
    c = H2Conn(g.port)
    s = c.response(c.request("POST", "/x", body=b"y" * 5000))
    assert s.status == 413
    assert json.loads(bytes(s.data)) == {"error": "request body too large"}
    assert s.header("date")
    g2 = gateway(h2_config())
    c2 = H2Conn(g2.port)
    s = c2.get("/nothing-here")
    assert s.status == 404 and json.loads(bytes(s.data)) == {"error": "no route"}
    assert s.header("content-type") == "application/json"
    # hop-by-hop fields of the upstream never reach an HTTP/2 client
    s = c.get("/echo?hdr=Connection:close&hdr=Keep-Alive:timeout=5&hdr=X-Kept:1")
    assert s.status == 200 and s.header("x-kept") == "1"
    assert s.header("connection") is None and s.header("keep-alive") is None


def test_curl_413_upload_gets_the_answer(gateway, tmp_path):
    """An upload over max_body_bytes gets its 413 even while the client is
    still sending (curl drops a response whose upload is reset)."""
    g = gateway(h2_config(limits={"max_body_bytes": 1024}))
    f = tmp_path / "big.bin"
    f.write_bytes(b"z" * (3 * 1024 * 1024))
    p = curl("--http2-prior-knowledge", "-w", "\n%{http_code}", "--data-binary", "@%s" % f,
             "http://127.0.0.1:%d/hello" % g.port)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().endswith("\n413"), p.stdout


def test_slow_stream_holds_up_no_other(gateway, upstream):
    g = gateway(h2_config(upstream))
    c = H2Conn(g.port)
    slow = c.request("GET", "/slow/1500")
    t0 = time.monotonic()
    fast = [c.request("GET", "/echo?n=%d" % i) for i in range(5)]
    hello = c.request("GET", "/hello")
    c.wait(lambda: all(c.streams[s].done for s in fast + [hello]))
    assert time.monotonic() - t0 < 1.2
    assert not c.streams[slow].done
    assert all(c.streams[s].status == 200 for s in fast)
    s = c.response(slow)
    assert s.status == 200 and json.loads(bytes(s.data))["path"] == "/slow/1500"


def test_many_concurrent_streams(gateway, upstream):
    g = gateway(h2_config(upstream))
    c = H2Conn(g.port)
    sids = [c.request("GET", "/echo?i=%d" % i) for i in range(60)]
    c.wait(lambda: all(c.streams[s].done for s in sids), 20)
    for i, sid in enumerate(sids):
        s = c.streams[sid]
        assert s.status == 200 and json.loads(bytes(s.data))["path"] == "/echo?i=%d" % i


def test_client_reset_aborts_only_that_stream(gateway, upstream, tmp_path):
    g = gateway(h2_config(upstream, access_log='{ path = "$DIR/access.log", format = "json" }'))
    c = H2Conn(g.port)
    slow = c.request("GET", "/slow/3000")
    time.sleep(0.2)
    c.reset(slow)
    s = c.get("/echo?after=reset")
    assert s.status == 200
    log = tmp_path / "access.log"
    wait_for(lambda: log.exists() and "499" in log.read_text() and "after=reset" in log.read_text(),
             what="both lines")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    by_path = {x["path"]: x for x in lines}
    assert by_path["/slow/3000"]["status"] == 499
    assert by_path["/echo?after=reset"]["status"] == 200
    assert all(x["http_version"] == "2" for x in lines)


def test_header_limits(gateway):
    g = gateway(h2_config(limits={"max_header_bytes": 2048, "max_uri_bytes": 100}))
    c = H2Conn(g.port)
    s = c.get("/hello", headers=[("x-big", "a" * 3000)])
    assert s.status == 431
    s = c.get("/hello?" + "q" * 200)
    assert s.status == 414
    s = c.get("/hello")
    assert s.status == 200  # the connection goes on


def test_max_streams_refuses_the_one_over(gateway, upstream):
    g = gateway(h2_config(upstream, limits={"h2_max_streams": 2}))
    c = H2Conn(g.port)
    c.wait(lambda: 3 in c.settings)  # MAX_CONCURRENT_STREAMS
    assert c.settings[3] == 2
    c.h2.remote_settings.max_concurrent_streams = 100  # be the client that ignores it
    c.h2.remote_settings.acknowledge()
    a = c.request("GET", "/slow/700")
    b = c.request("GET", "/slow/700")
    over = c.request("GET", "/echo?over")
    c.wait(lambda: c.streams[over].done)
    assert c.streams[over].reset == 7  # REFUSED_STREAM
    assert c.response(a).status == 200 and c.response(b).status == 200
    assert c.goaway is None
    s = c.get("/echo?after")  # a slot is free again
    assert s.status == 200


def test_h2_off_listener(gateway):
    g = gateway(h2_config(listen='{ addr = "127.0.0.1:$PORT", http2 = false }'))
    r = request(g.port, "GET", "/hello")
    assert r.status == 200
    p = curl("--http2-prior-knowledge", "-s", "-o", "/dev/null", "-w", "%{http_code}",
             "http://127.0.0.1:%d/hello" % g.port)
    assert p.returncode != 0 or p.stdout != b"200"
    import socket
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 400"), data


def test_upgrade_h2c_is_not_tunneled(gateway, upstream):
    g = gateway(h2_config(upstream))
    r = request(g.port, "GET", "/echo", headers=[("Connection", "Upgrade, HTTP2-Settings"),
                                                 ("Upgrade", "h2c"),
                                                 ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")])
    assert r.status == 200
    names = [k.lower() for k, _ in r.json()["headers"]]
    assert "upgrade" not in names


def test_access_log_text_and_json(gateway, tmp_path):
    g = gateway(h2_config(access_log='{ path = "$DIR/a.json", format = "json" }'))
    c = H2Conn(g.port)
    assert c.get("/hello", headers=[("user-agent", "h2test")]).status == 200
    log = tmp_path / "a.json"
    wait_for(lambda: log.exists() and log.read_text().strip(), what="access log")
    e = json.loads(log.read_text().splitlines()[-1])
    assert e["http_version"] == "2" and e["method"] == "GET" and e["path"] == "/hello"
    assert e["user_agent"] == "h2test" and e["status"] == 200 and e["bytes_sent"] > 0


def test_trusted_proxies_over_h2(gateway):
    cfg = h2_config().replace("access_log = false,", 'access_log = false,\n  trusted_proxies = { "127.0.0.1/32" },')
    g = gateway(cfg)
    c = H2Conn(g.port)
    s = c.get("/lua", headers=[("x-forwarded-for", "203.0.113.9")])
    assert bytes(s.data).split(b"|")[1] == b"203.0.113.9"


def test_stalled_stream_holds_up_no_other(gateway, upstream):
    """A stream whose client grants no more window (stops reading it) leaves
    the connection's other streams free."""
    g = gateway(h2_config(upstream))
    c = H2Conn(g.port)
    big = c.request("GET", "/bytes/%d" % (30 * 1024 * 1024))
    c.no_ack.add(big)
    c.wait(lambda: len(c.streams[big].data) >= 60000)
    for i in range(5):
        s = c.get("/echo?other=%d" % i)
        assert s.status == 200
    assert not c.streams[big].done
    assert len(c.streams[big].data) < 2 * 1024 * 1024  # held to its window


def test_request_body_backpressure_holds_the_window(gateway):
    """A request whose body nobody reads yet (Lua sleeps before req:body())
    does not reopen its stream window: the client is stopped, then all of
    it arrives."""
    route = '''{ name = "slowbody", match = { path = "/slowbody" }, handler = function(req)
        gw.sleep(1.0)
        local b = req:body()
        return 200, tostring(#b)
      end },'''
    g = gateway(h2_config(limits={"max_body_bytes": 16 * 1024 * 1024}, extra_routes=route))
    c = H2Conn(g.port)
    sid = c.request("POST", "/slowbody", end=False)
    body = b"b" * (8 * 1024 * 1024)
    sent = 0
    t0 = time.monotonic()
    stalled_at = None
    while sent < len(body):
        win = min(c.h2.local_flow_control_window(sid), c.h2.max_outbound_frame_size)
        if win <= 0:
            if stalled_at is None:
                stalled_at = time.monotonic() - t0
            c.read_once()
            continue
        c.h2.send_data(sid, body[sent:sent + win])
        sent += win
        c.flush()
    c.h2.end_stream(sid)
    c.flush()
    s = c.response(sid, 20)
    assert s.status == 200 and bytes(s.data) == str(len(body)).encode()
    assert stalled_at is not None and stalled_at < 0.9  # held back while Lua slept


def test_extended_connect_is_refused(gateway, upstream):
    """WebSocket over HTTP/2 (RFC 8441) is not offered: no
    SETTINGS_ENABLE_CONNECT_PROTOCOL, and such a request is refused on its
    stream; plain CONNECT gets 400 as over HTTP/1.1."""
    g = gateway(h2_config(upstream))
    c = H2Conn(g.port)
    c.wait(lambda: 3 in c.settings)
    assert c.settings.get(8) in (None, 0)  # ENABLE_CONNECT_PROTOCOL
    c.h2.config.validate_outbound_headers = False
    c.h2.config.normalize_outbound_headers = False
    sid = c.h2.get_next_available_stream_id()
    c.streams[sid] = __import__("h2help").Stream(sid)
    c.h2.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"),
                            (":scheme", "http"), (":path", "/chat"), (":authority", "x"),
                            ("sec-websocket-version", "13")])
    c.flush()
    s = c.response(sid)
    assert s.reset is not None or s.status == 400, (s.reset, s.status)
    sid = c.h2.get_next_available_stream_id()
    c.streams[sid] = __import__("h2help").Stream(sid)
    c.h2.send_headers(sid, [(":method", "CONNECT"), (":authority", "example.com:443")])
    c.flush()
    s = c.response(sid)
    assert s.status == 400 or s.reset is not None
    assert c.get("/echo?still").status == 200


def test_expect_100_continue_head_and_many_fields(gateway, upstream):
    g = gateway(h2_config(upstream))
    c = H2Conn(g.port)
    # 100-continue: an interim HEADERS before the final answer
    sid = c.request("POST", "/upload", headers=[("expect", "100-continue"),
                                                ("content-length", "5")], end=False)
    c.wait(lambda: "InformationalResponseReceived" in c.streams[sid].frames)
    c.send_body(sid, b"hello")
    s = c.response(sid)
    assert s.status == 200 and json.loads(bytes(s.data))["length"] == 5
    # HEAD: the GET's head (Content-Length included), one HEADERS frame
    s = c.response(c.request("HEAD", "/bytes/1000"))
    assert s.status == 200 and s.header("content-length") == "1000"
    assert bytes(s.data) == b""
    # more fields than HTTP/1 allows (128): 431, the connection goes on
    s = c.get("/echo", headers=[("x-f%d" % i, "v") for i in range(140)])
    assert s.status == 431
    assert c.get("/echo?ok").status == 200


def test_proxy_protocol_then_h2c(gateway):
    """A PROXY protocol header, then the HTTP/2 preface: the stream's client
    is the one the header names."""
    import socket
    import h2.config
    import h2.connection
    import h2.events
    g = gateway(h2_config(listen='{ addr = "127.0.0.1:$PORT", proxy_protocol = true }'))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    s.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/lua"), (":scheme", "http"),
                          (":authority", "h")], end_stream=True)
    s.sendall(conn.data_to_send())
    body = b""
    done = False
    while not done:
        data = s.recv(65536)
        assert data
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                body += ev.data
            if isinstance(ev, h2.events.StreamEnded):
                done = True
        s.sendall(conn.data_to_send())
    assert body.split(b"|")[:2] == [b"2", b"198.51.100.7"], body


def test_preface_in_pieces_and_lookalike_http1(gateway):
    """The preface may arrive in pieces; a request that only starts like it
    (POST, PUT) is HTTP/1.1."""
    import socket
    import h2.config
    import h2.connection
    import h2.events
    g = gateway(h2_config())
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/hello"), (":scheme", "http"),
                          (":authority", "h")], end_stream=True)
    data = conn.data_to_send()
    for piece in (data[:1], data[1:5], data[5:23], data[23:]):
        s.sendall(piece)
        time.sleep(0.05)
    body = b""
    done = False
    while not done:
        d = s.recv(65536)
        assert d
        for ev in conn.receive_data(d):
            if isinstance(ev, h2.events.DataReceived):
                body += ev.data
            if isinstance(ev, h2.events.StreamEnded):
                done = True
    assert body == b"hello 2 GET /hello"
    r = request(g.port, "POST", "/hello", body=b"x")
    assert r.status == 200 and r.body == b"hello 1.1 POST /hello"
    r = request(g.port, "PUT", "/hello", body=b"x")
    assert r.status == 200
