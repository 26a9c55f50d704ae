"""TLS listeners (listen[].tls = { cert, key }): a CA and server certificates
made with the openssl CLI per test; requests over TLS to the upstream and to
handlers, X-Forwarded-Proto / req.scheme, keep-alive, pipelining, large
bodies both ways, clients that never handshake or speak plain HTTP, a plain
listener next to a TLS one, certificate renewal by SIGHUP, a reload with a
missing key, `moongate -t` on bad files, and workers = 2."""

import hashlib
import json
import os
import signal
import socket
import time

import pytest

from authserver import AuthServer
from conftest import Client, curl, free_port, pattern_sha256, request, wait_for
from opshelp import reloads
from tlshelp import (CA, TlsClient, client_hello, eof_within, openssl, peer_serial,
                     tls_request)


@pytest.fixture
def ca(tmp_path):
    return CA(tmp_path / "pki")


def tls_config(upstream=None, workers=1, cert="pki/server.pem", key="pki/server.key",
               header_timeout=10, extra_routes=""):
    """TLS on $PORT0, plain HTTP on $PORT1, admin on $PORT2. Routes: /hello
    (handler: "hello <req.scheme>"), everything else to the upstream."""
    up = ""
    route = ""
    if upstream is not None:
        up = 'upstreams = { app = { servers = { "%s" }, keepalive = 16 } },' % upstream.addr
        route = '{ match = { prefix = "/" }, upstream = "app" },'
    return """return {
  workers = %d,
  listen = {
    { addr = "127.0.0.1:$PORT0",
      tls = { cert = "%s",
              key = "%s" } },
    { addr = "127.0.0.1:$PORT1" },
  },
  admin = { addr = "127.0.0.1:$PORT2" },
  access_log = false,
  limits = { header_timeout = %s, max_body_bytes = 4194304, drain_timeout = 5 },
  %s
  routes = {
    { match = { path = "/hello" },
      handler = function(req) return 200, "hello " .. req.scheme end },
    %s
    %s
  },
}
""" % (workers, cert, key, header_timeout, up, extra_routes, route)


def start(gateway, ca, upstream=None, chain=False, **kw):
    ca.issue("server", serial=1, chain=chain)
    g = gateway(tls_config(upstream, **kw))
    g.tls_port, g.plain_port, g.admin_port = g.ports
    return g


def ported(text):
    """A config text with its $PORTn filled (run_moongate fills only $PORT)."""
    for i in range(3):
        text = text.replace("$PORT%d" % i, str(free_port()))
    return text


def curl_tls(ca, *args, timeout=60):
    return curl("--cacert", str(ca.cert), *args, timeout=timeout)


def header_values(doc, name):
    return [v for n, v in doc["headers"] if n.lower() == name.lower()]


# --------------------------------------------------------------------------
# serving

def test_https_to_upstream_and_handler_with_forwarded_proto(gateway, upstream, ca):
    g = start(gateway, ca, upstream)
    base = "https://127.0.0.1:%d" % g.tls_port
    p = curl_tls(ca, "-i", base + "/echo/x?y=1")
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 200", b"HTTP/2 200")), head  # ALPN: curl picks h2
    doc = json.loads(body)
    assert doc["path"] == "/echo/x?y=1"
    assert header_values(doc, "X-Forwarded-Proto") == ["https"]
    p = curl_tls(ca, base + "/hello")
    assert p.returncode == 0 and p.stdout == b"hello https", (p.stdout, p.stderr)
    # the plain listener of the same config says http
    r = request(g.plain_port, "GET", "/echo/plain")
    assert r.status == 200 and header_values(r.json(), "X-Forwarded-Proto") == ["http"]
    assert request(g.plain_port, "GET", "/hello").body == b"hello http"
    # a client's own X-Forwarded-Proto does not pass
    r = tls_request(g.tls_port, ca, "GET", "/echo/spoof",
                    headers=[("X-Forwarded-Proto", "http")])
    assert header_values(r.json(), "X-Forwarded-Proto") == ["https"]


def test_alpn_http11_tls12_minimum_and_chain_file(gateway, ca):
    g = start(gateway, ca, chain=True)
    with TlsClient(g.tls_port, ca) as c:
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    # TLS 1.1 is refused
    p = curl_tls(ca, "--tlsv1.1", "--tls-max", "1.1", "https://127.0.0.1:%d/hello" % g.tls_port)
    assert p.returncode != 0
    # TLS 1.2 works; the certificate file is a chain (leaf then CA)
    p = curl_tls(ca, "--tlsv1.2", "--tls-max", "1.2", "https://127.0.0.1:%d/hello" % g.tls_port)
    assert p.returncode == 0 and p.stdout == b"hello https", p.stderr


def test_keepalive_over_tls(gateway, upstream, ca):
    g = start(gateway, ca, upstream)
    base = "https://127.0.0.1:%d" % g.tls_port
    p = curl_tls(ca, "-v", base + "/hello", base + "/echo/2")
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 0, err
    assert "Re-using existing connection" in err, err
    assert p.stdout.startswith(b"hello https")
    with TlsClient(g.tls_port, ca) as c:
        for i in range(5):
            c.request("GET", "/echo/ka%d" % i)
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == "/echo/ka%d" % i
            c.request("GET", "/hello")
            assert c.read_response().body == b"hello https"


def test_pipelined_requests_over_tls_answered_in_order(gateway, upstream, ca):
    g = start(gateway, ca, upstream)
    with TlsClient(g.tls_port, ca) as c:
        reqs = b""
        paths = []
        for i in range(8):
            path = "/hello" if i % 3 == 1 else "/echo/p%d" % i
            paths.append(path)
            reqs += Client.build("GET", path)
        c.send(reqs)
        for path in paths:
            r = c.read_response()
            assert r.status == 200
            if path == "/hello":
                assert r.body == b"hello https"
            else:
                assert r.json()["path"] == path


def test_large_response_streams_intact(gateway, upstream, ca):
    g = start(gateway, ca, upstream)
    n = 20 * 1024 * 1024
    p = curl_tls(ca, "https://127.0.0.1:%d/bytes/%d" % (g.tls_port, n), timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) == n
    assert hashlib.sha256(p.stdout).hexdigest() == pattern_sha256(n)
    # chunked too, through the raw client (reads in small steps)
    with TlsClient(g.tls_port, ca, timeout=60) as c:
        h = hashlib.sha256()
        c.request("GET", "/chunked/%d" % (3 * 1024 * 1024))
        r = c.read_response(sink=h.update)
        assert r.status == 200 and r.chunked
        assert h.hexdigest() == pattern_sha256(3 * 1024 * 1024)


def test_client_gone_mid_download_and_mid_upload(gateway, upstream, ca):
    g = start(gateway, ca, upstream)
    with TlsClient(g.tls_port, ca) as c:
        c.request("GET", "/bytes/%d" % (50 * 1024 * 1024))
        r = c.read_head()
        assert r.status == 200
        got = len(c.buf)
        while got < 1024 * 1024:
            got += len(c.sock.recv(65536))
    with TlsClient(g.tls_port, ca) as c:
        c.send(Client.build("POST", "/upload", headers=[("Content-Length", "3000000")]))
        c.send(b"x" * 500000)
    # neither left anything behind: the gateway serves on, on both listeners
    wait_for(lambda: upstream.stats()["inflight"] == 0, what="the upstream exchanges to end")
    assert tls_request(g.tls_port, ca, "GET", "/hello").body == b"hello https"
    assert request(g.plain_port, "GET", "/hello").body == b"hello http"


def test_request_body_arrives_intact(gateway, upstream, ca, tmp_path):
    g = start(gateway, ca, upstream)
    body = os.urandom(1024 * 1024)
    f = tmp_path / "body.bin"
    f.write_bytes(body)
    p = curl_tls(ca, "--data-binary", "@%s" % f, "-H", "Content-Type: application/octet-stream",
                 "https://127.0.0.1:%d/upload" % g.tls_port)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["length"] == len(body)
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()
    # 4 MB: more than the socket buffers hold, so reading the client pauses
    # and resumes while OpenSSL may hold bytes the kernel no longer reports
    big = os.urandom(4 * 1024 * 1024)
    f.write_bytes(big)
    p = curl_tls(ca, "--data-binary", "@%s" % f, "https://127.0.0.1:%d/upload" % g.tls_port)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["length"] == len(big) and doc["sha256"] == hashlib.sha256(big).hexdigest()
    # chunked, in one send with the head, on a kept-alive connection
    with TlsClient(g.tls_port, ca, timeout=30) as c:
        for _ in range(2):
            c.send(Client.build("POST", "/upload", body=body[:300000], chunked=True))
            doc = c.read_response().json()
            assert doc["length"] == 300000 and doc["framing"] == "chunked"
            assert doc["sha256"] == hashlib.sha256(body[:300000]).hexdigest()


# --------------------------------------------------------------------------
# clients that do not speak TLS

def test_plain_http_to_tls_port_is_closed_and_gateway_serves_on(gateway, upstream, ca):
    g = start(gateway, ca, upstream)
    for _ in range(3):
        with Client(g.tls_port) as c:
            c.send(Client.build("GET", "/hello"))
            assert eof_within(c.sock, 5), "a plain HTTP request on the TLS port stays open"
    assert tls_request(g.tls_port, ca, "GET", "/hello").body == b"hello https"
    assert request(g.plain_port, "GET", "/hello").body == b"hello http"
    assert "TLS handshake failed" in g.stdout_text() + g.stderr_text()


def test_silent_client_closed_after_header_timeout(gateway, ca):
    g = start(gateway, ca, header_timeout=1)
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", g.tls_port))
    try:
        assert eof_within(s, 6), "a client that never handshakes stays connected"
    finally:
        s.close()
    took = time.monotonic() - t0
    assert 0.8 <= took < 5, took
    assert tls_request(g.tls_port, ca, "GET", "/hello").status == 200


def test_half_client_hello_then_stall_is_closed(gateway, ca):
    g = start(gateway, ca, header_timeout=1)
    hello = client_hello(ca)
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", g.tls_port))
    try:
        s.sendall(hello[:len(hello) // 2])
        assert eof_within(s, 6), "a stalled handshake stays connected"
    finally:
        s.close()
    took = time.monotonic() - t0
    assert 0.8 <= took < 5, took
    assert "TLS handshake timeout" in g.stdout_text() + g.stderr_text()
    assert tls_request(g.tls_port, ca, "GET", "/hello").status == 200


def test_handshake_then_silence_gets_408_over_tls(gateway, ca):
    """After the handshake the header timeout answers as on plain HTTP."""
    g = start(gateway, ca, header_timeout=1)
    with TlsClient(g.tls_port, ca) as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        r = c.read_response(timeout=6)
        assert r.status == 408
        assert c.closed(5)


def test_graceful_stop_closes_idle_tls_connections(gateway, ca):
    g = start(gateway, ca)
    c = TlsClient(g.tls_port, ca)
    c.request("GET", "/hello")
    assert c.read_response().body == b"hello https"
    t0 = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    assert c.closed(5), "idle keep-alive TLS connection not closed on stop"
    c.close()
    g.proc.wait(10)
    assert g.proc.returncode == 0
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------
# certificates and reload

def test_sighup_serves_a_renewed_certificate(gateway, upstream, ca):
    g = start(gateway, ca, upstream)
    assert peer_serial(g.tls_port, ca) == 1
    old = TlsClient(g.tls_port, ca)  # made before the reload, kept alive
    old.request("GET", "/hello")
    assert old.read_response().body == b"hello https"
    ok0, failed0 = reloads(g)
    ca.issue("server", cn="renewed.localhost", serial=2)
    g.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(g)[0] >= ok0 + 1, what="the reload")
    with TlsClient(g.tls_port, ca) as c:
        assert c.peer_serial() == 2
        subject = dict(x[0] for x in c.peer_cert()["subject"])
        assert subject["commonName"] == "renewed.localhost"
        c.request("GET", "/echo/new")
        assert c.read_response().json()["path"] == "/echo/new"
    # the old connection keeps its session and goes on
    assert old.peer_serial() == 1
    old.request("GET", "/echo/old")
    assert old.read_response().json()["path"] == "/echo/old"
    old.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_with_missing_key_fails_and_old_cert_serves(gateway, ca, tmp_path, workers):
    g = start(gateway, ca, workers=workers)
    ok0, failed0 = reloads(g)
    (tmp_path / "pki" / "server.key").unlink()
    g.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(g)[1] >= failed0 + 1, what="the reload to fail")
    assert reloads(g)[0] == ok0
    log = g.stdout_text() + g.stderr_text()
    assert "reload failed" in log and "server.key" in log, log[-2000:]
    for _ in range(6):  # every worker
        assert peer_serial(g.tls_port, ca) == 1
        assert tls_request(g.tls_port, ca, "GET", "/hello").body == b"hello https"


def test_check_reports_missing_cert_with_file_and_line(run_moongate, tmp_path, ca):
    ca.issue("server")
    text = tls_config(cert="pki/nope.pem")
    p = run_moongate("-t", "-c", "$CFG", config=ported(text))
    assert p.returncode == 1, p.stdout_text + p.stderr_text
    line = text.splitlines().index('    { addr = "127.0.0.1:$PORT0",') + 2
    err = p.stderr_text
    assert "moongate.lua:%d:" % line in err, err
    assert "nope.pem" in err and "No such file" in err, err


def test_check_reports_mismatched_or_bad_key_on_its_line(run_moongate, tmp_path, ca):
    ca.issue("server", serial=1)
    ca.issue("other", serial=2)
    text = tls_config(key="pki/other.key")
    p = run_moongate("-t", "-c", "$CFG", config=ported(text))
    assert p.returncode == 1
    line = text.splitlines().index('              key = "pki/other.key" } },') + 1
    assert "moongate.lua:%d:" % line in p.stderr_text, p.stderr_text
    assert "does not match" in p.stderr_text and "other.key" in p.stderr_text
    # a key file that is not a key
    text = tls_config(key="pki/ca.pem")
    p = run_moongate("-t", "-c", "$CFG", config=ported(text))
    assert p.returncode == 1 and "ca.pem" in p.stderr_text, p.stderr_text
    # an encrypted key is refused, not prompted for
    openssl("pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out", "enc.key",
            cwd=ca.dir)
    p = run_moongate("-t", "-c", "$CFG", config=ported(tls_config(key="pki/enc.key")))
    assert p.returncode == 1 and "encrypted" in p.stderr_text, p.stderr_text
    # the good pair checks OK
    p = run_moongate("-t", "-c", "$CFG", config=ported(tls_config()))
    assert p.returncode == 0 and "OK" in p.stdout_text, p.stderr_text


def test_relative_cert_paths_are_relative_to_the_config_file(run_moongate, tmp_path, ca):
    ca.issue("server")
    conf = tmp_path / "conf"
    conf.mkdir()
    os.replace(tmp_path / "pki" / "server.pem", conf / "server.pem")
    os.replace(tmp_path / "pki" / "server.key", conf / "server.key")
    # run from tmp_path: "server.pem" exists only next to the config
    p = run_moongate("-t", "-c", "$CFG", name="conf/moongate.lua",
                     config=ported(tls_config(cert="server.pem", key="server.key")))
    assert p.returncode == 0, p.stderr_text


def test_start_with_bad_cert_exits_non_zero_naming_the_file(run_moongate, ca):
    ca.issue("server")
    for workers in (1, 2):
        p = run_moongate("-c", "$CFG", config=ported(tls_config(cert="pki/missing.pem",
                                                                workers=workers)))
        assert p.returncode == 1
        assert "missing.pem" in p.stderr_text + p.stdout_text, p.stderr_text


# --------------------------------------------------------------------------
# workers, forward_auth

def test_two_workers_with_a_tls_listener(gateway, upstream, ca):
    g = start(gateway, ca, upstream, workers=2)
    for i in range(20):
        r = tls_request(g.tls_port, ca, "GET", "/echo/w%d" % i)
        assert r.status == 200 and header_values(r.json(), "X-Forwarded-Proto") == ["https"]
    ok0, _ = reloads(g)
    ca.issue("server", serial=7)
    g.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(g)[0] >= ok0 + 1, what="the reload")
    # each worker reloads on its own signal: wait for a streak of new serials
    streak = [0]

    def renewed():
        streak[0] = streak[0] + 1 if peer_serial(g.tls_port, ca) == 7 else 0
        return streak[0] >= 10
    wait_for(renewed, timeout=10, what="every worker serving the renewed certificate")


def test_forward_auth_sees_https(gateway, upstream, ca):
    auth = AuthServer().start()
    try:
        route = ('{ match = { prefix = "/fa/" }, upstream = "app",'
                 ' plugins = { { "forward_auth", address = "%s" } } },' % auth.url("/auth"))
        g = start(gateway, ca, upstream, extra_routes=route)
        r = tls_request(g.tls_port, ca, "GET", "/fa/x", host="gw.example")
        assert r.status == 200, r
        h = auth.last()["headers"]
        assert [v for n, v in h if n.lower() == "x-forwarded-proto"] == ["https"]
        assert [v for n, v in h if n.lower() == "x-forwarded-port"] == ["443"]
        r = request(g.plain_port, "GET", "/fa/y", host="gw.example")
        assert r.status == 200
        h = auth.last()["headers"]
        assert [v for n, v in h if n.lower() == "x-forwarded-proto"] == ["http"]
    finally:
        auth.stop()
