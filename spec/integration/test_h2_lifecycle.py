"""HTTP/2 connections over their life: TLS with ALPN (h2 offered, or only
http/1.1 with `http2 = false`), idle and header timeouts, a reload that
keeps the connection, a graceful stop (GOAWAY, the streams in flight
finish, exit 0), metrics."""

import json
import os
import signal
import socket
import ssl
import subprocess
import time

import pytest

from conftest import curl, request, wait_for
from h2help import PREFACE, H2Conn, frame, read_frames
from tlshelp import CA


@pytest.fixture
def ca(tmp_path):
    c = CA(tmp_path / "pki")
    c.issue("server")
    return c


def config(upstream=None, tls=True, http2=True, limits="", admin=False):
    lines = ['{ addr = "127.0.0.1:$PORT0"%s%s }' % (
        ', tls = { cert = "pki/server.pem", key = "pki/server.key" }' if tls else "",
        "" if http2 else ", http2 = false")]
    up = ""
    route = ""
    if upstream is not None:
        up = 'upstreams = { app = { servers = { "%s" }, keepalive = 16 } },' % upstream.addr
        route = '{ match = { prefix = "/" }, upstream = "app" },'
    return """return {
  listen = { %s },
  %s
  access_log = false,
  limits = { %s },
  %s
  routes = {
    { match = { path = "/hello" }, handler = function(req)
        return 200, "hello " .. req.http_version .. " " .. req.scheme end },
    %s
  },
}
""" % (", ".join(lines), 'admin = { addr = "127.0.0.1:$PORT1" },' if admin else "", limits, up,
       route)


def test_tls_alpn_h2_curl_and_nghttp(gateway, upstream, ca):
    g = gateway(config(upstream, limits="max_body_bytes = 8388608"))
    p = curl("--http2", "-k", "-i", "https://127.0.0.1:%d/hello" % g.port)
    out = p.stdout.decode()
    assert out.startswith("HTTP/2 200"), out
    assert out.endswith("hello 2 https")
    p = subprocess.run(["nghttp", "-n", "-s", "https://127.0.0.1:%d/echo" % g.port],
                       capture_output=True, timeout=20)
    assert p.returncode == 0 and b" 200 " in p.stdout, p.stdout + p.stderr
    c = H2Conn(g.port, tls=True)
    assert c.alpn == "h2"
    s = c.get("/echo?tls=1")
    doc = json.loads(bytes(s.data))
    hdrs = {k.lower(): v for k, v in doc["headers"]}
    assert hdrs["x-forwarded-proto"] == "https"
    # big bodies both ways over TLS
    import hashlib
    body = bytes(range(256)) * 4096 * 4  # 4 MiB
    s = c.response(c.request("POST", "/upload", body=body), 30)
    assert json.loads(bytes(s.data))["sha256"] == hashlib.sha256(body).hexdigest()
    s = c.get("/bytes/%d" % (8 * 1024 * 1024), timeout=30)
    assert len(s.data) == 8 * 1024 * 1024
    # HTTP/1.1 clients still get HTTP/1.1
    p = curl("--http1.1", "-k", "https://127.0.0.1:%d/hello" % g.port)
    assert p.stdout == b"hello 1.1 https"


def test_tls_http2_off_offers_only_http11(gateway, ca):
    g = gateway(config(http2=False))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", g.port), timeout=5),
                         server_hostname="localhost") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    p = curl("--http2", "-k", "-i", "https://127.0.0.1:%d/hello" % g.port)
    assert p.stdout.startswith(b"HTTP/1.1 200"), p.stdout


def test_idle_connection_gets_goaway(gateway, ca):
    g = gateway(config(tls=False, limits="idle_timeout = 0.5"))
    c = H2Conn(g.port)
    assert c.get("/hello").status == 200
    t0 = time.monotonic()
    c.wait(lambda: c.closed, 5)
    assert c.goaway is not None and c.goaway[0] == 0
    assert 0.3 < time.monotonic() - t0 < 3


def test_preface_only_connection_times_out(gateway, ca):
    g = gateway(config(tls=False, limits="header_timeout = 0.5"))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    s.sendall(PREFACE + frame(4, 0, 0))
    t0 = time.monotonic()
    frames = read_frames(s, 5)
    assert any(t == 7 for t, *_ in frames)  # GOAWAY
    assert time.monotonic() - t0 < 3


def test_header_block_never_finished_times_out(gateway, ca):
    g = gateway(config(tls=False, limits="header_timeout = 0.5"))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    s.sendall(PREFACE + frame(4, 0, 0) + frame(1, 0x1, 1, b"\x82\x84"))  # no END_HEADERS
    t0 = time.monotonic()
    read_frames(s, 5)
    assert time.monotonic() - t0 < 3
    assert request(g.port, "GET", "/hello").status == 200


def test_reload_keeps_connection(gateway, upstream, ca):
    g = gateway(config(upstream, tls=False))
    c = H2Conn(g.port)
    assert c.get("/hello").status == 200
    slow = c.request("GET", "/slow/800")
    os.kill(g.pid, signal.SIGHUP)
    wait_for(lambda: "generation 2" in g.stderr_text() or "reloaded" in g.stderr_text(),
             what="the reload")
    assert c.response(slow).status == 200
    assert c.get("/hello").status == 200
    assert c.goaway is None


def test_graceful_stop_finishes_streams(gateway, upstream, ca):
    """nghttp as the client (python3-h2 drops every frame after a GOAWAY)."""
    g = gateway(config(upstream, tls=False))
    p = subprocess.Popen(["nghttp", "-v", "http://127.0.0.1:%d/slow/1000" % g.port],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.3)  # the request is in flight (the upstream answers after 1 s)
    os.kill(g.pid, signal.SIGTERM)
    out = p.communicate(timeout=15)[0].decode()
    assert "recv GOAWAY" in out and "error_code=NO_ERROR" in out, out
    goaway_at = out.index("recv GOAWAY")
    status_at = out.index(":status: 200")
    assert status_at > goaway_at, out  # the stream in flight finished after GOAWAY
    assert '"path": "/slow/1000"' in out
    assert g.proc.wait(10) == 0


def test_metrics_count_h2_requests(gateway, ca):
    g = gateway(config(tls=False, admin=True))
    c = H2Conn(g.ports[0])
    for _ in range(3):
        assert c.get("/hello").status == 200
    r = request(g.ports[1], "GET", "/metrics")
    assert r.status == 200
    text = r.body.decode()
    lines = [x for x in text.splitlines() if x.startswith("moongate_requests_total") and
             'status="200"' in x]
    assert lines and sum(float(x.split()[-1]) for x in lines) >= 3, text[:2000]
    # the admin API answers over h2c too
    a = H2Conn(g.ports[1])
    assert a.get("/status").status == 200


@pytest.mark.parametrize("after_idle", [False, True])
def test_trickled_header_block_times_out(gateway, ca, after_idle):
    """A HEADERS frame whose bytes trickle in (slowloris) is bounded by
    header_timeout from its start, not reset by each byte; also on a
    connection that sat idle after a request (its timer slept)."""
    g = gateway(config(tls=False, limits="header_timeout = 0.5"))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    block = b"\x82\x84\x86" + b"\x40\x03x-a\x0a0123456789" * 20
    sid = 1
    s.sendall(PREFACE + frame(4, 0, 0))
    if after_idle:
        s.sendall(frame(1, 0x5, 1, b"\x82\x84\x86\x41\x01h"))  # GET / http, :authority h
        read_frames(s, 1.0, until=lambda t, f, i, p: i == 1 and f & 1)
        time.sleep(0.6)
        sid = 3
    s.sendall(frame(1, 0x5, sid, block)[:12])
    t0 = time.monotonic()
    closed = False
    for b in block[3:]:
        time.sleep(0.05)
        try:
            s.sendall(bytes([b]))
        except OSError:
            closed = True
            break
        if time.monotonic() - t0 > 3:
            break
    if not closed:
        s.settimeout(3)
        try:
            while s.recv(65536):
                pass
            closed = True
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            pass
    assert closed and time.monotonic() - t0 < 3


def test_config_check_of_the_http2_options(run_moongate):
    p = run_moongate("-t", "-c", "$CFG", config="""return {
  listen = { { addr = "127.0.0.1:$PORT", htp2 = false }, { addr = "127.0.0.1:1", http2 = "yes" } },
  limits = { h2_max_streams = 0 },
  routes = {},
}
""")
    assert p.returncode == 1
    err = p.stdout_text + p.stderr_text
    assert "listen[1].htp2: unknown option (did you mean 'http2'?)" in err, err
    assert "listen[2].http2: expected true or false, got string" in err, err
    assert "limits.h2_max_streams: must be at least 1, got 0" in err, err
    p = run_moongate("-t", "-c", "$CFG", config="""return {
  listen = { { addr = "127.0.0.1:$PORT", http2 = false } },
  limits = { h2_max_streams = 16 },
  routes = {},
}
""")
    assert p.returncode == 0, p.stdout_text + p.stderr_text
