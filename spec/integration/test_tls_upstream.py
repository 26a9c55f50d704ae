"""Client-side TLS: upstreams with `tls = true` and gw.http with https://.

Real TLS servers: tlsupstream.py (upstream.py's behaviours behind Python's
ssl module, counting connections, handshakes and resumed sessions) and nginx
(plain HTTP, for "TLS spoken to a plain server"); certificates are made with
the openssl command line tool for each test module (a test CA, a second CA
with its own server certificate)."""

import hashlib
import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (stop_proc, Client, Raw, assert_json_error, config, free_port, lua,
                      pattern_sha256, proxy_config, request, wait_for, wait_listening)
from tlsupstream import TlsUpstream, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_factory(tmp_path, pki):
    started = []

    def make(other=False, name_only=False, idle_timeout=None):
        cert, key = (pki.other_cert, pki.other_key) if other else (pki.cert, pki.key)
        if name_only:
            cert, key = pki.name_cert, pki.name_key
        u = TlsUpstream(tmp_path, cert, key, idle_timeout)
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


@pytest.fixture
def tls_up(tls_factory):
    return tls_factory()


class Nginx:
    """nginx serving plain HTTP on a free port (one process, stopped by PID)."""

    def __init__(self, tmp):
        d = Path(tmp) / ("nginx-%d" % id(self))
        d.mkdir()
        self.port = free_port()
        (d / "nginx.conf").write_text("""
daemon off; master_process off; worker_processes 1;
pid %(d)s/nginx.pid; error_log %(d)s/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %(d)s/b; proxy_temp_path %(d)s/p; fastcgi_temp_path %(d)s/f;
  uwsgi_temp_path %(d)s/u; scgi_temp_path %(d)s/s;
  server { listen 127.0.0.1:%(port)d; location / { return 200 "plain\\n"; } }
}
""" % {"d": d, "port": self.port})
        self.proc = subprocess.Popen(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, 10, "nginx")

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        stop_proc(self.proc)


@pytest.fixture
def plain_nginx(tmp_path):
    n = Nginx(tmp_path)
    yield n
    n.stop()


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections (the kernel does, from the backlog)
    but never reads or answers: a ClientHello gets no reply."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s.getsockname()[1]
    s.close()


def tls_proxy(servers, **opts):
    opts.setdefault("tls", True)
    return proxy_config(servers, **opts)


def counted(u, pki):
    s = u.stats(pki.ca)
    s.pop("log", None)
    return s


# --------------------------------------------------------------------------
# proxying to a TLS upstream

def test_get_post_and_streams_through_tls(gateway, tls_up, pki):
    g = gateway(tls_proxy([tls_up.addr]))
    r = request(g.port, "GET", "/echo/a?x=1", headers=[("X-Custom", "abc")])
    assert r.status == 200, r
    doc = r.json()
    assert doc["path"] == "/echo/a?x=1" and doc["method"] == "GET"
    assert ["X-Custom", "abc"] in doc["headers"]
    assert ["X-Forwarded-Proto", "http"] in doc["headers"]
    assert r.header("X-Upstream-Port") == str(tls_up.port)

    body = os.urandom(1 << 20)
    r = request(g.port, "POST", "/upload", body=body)
    assert r.status == 200, r
    assert r.json()["length"] == len(body)
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()

    # chunked request body, streamed up
    r = request(g.port, "POST", "/upload", body=body[:300000], chunked=True)
    assert r.json()["sha256"] == hashlib.sha256(body[:300000]).hexdigest()

    n = 20 * 1000 * 1000
    for path in ("/bytes/%d" % n, "/chunked/%d" % n, "/close/%d" % n):
        h = hashlib.sha256()
        with Client(g.port, timeout=60) as c:
            c.request("GET", path)
            r = c.read_response(sink=h.update, timeout=60)
        assert r.status == 200 and r.body_len == n, (path, r)
        assert h.hexdigest() == pattern_sha256(n), path


def test_keepalive_reuses_the_tls_connection(gateway, tls_up, pki):
    g = gateway(tls_proxy([tls_up.addr]))
    with Client(g.port) as c:
        for i in range(50):
            c.request("GET", "/echo?i=%d" % i)
            r = c.read_response()
            assert r.status == 200 and r.json()["path"] == "/echo?i=%d" % i
    for i in range(10):  # new client connections share the pool too
        assert request(g.port, "GET", "/echo").status == 200
    s = counted(tls_up, pki)
    assert s["requests"] == 60
    assert s["connections"] <= 2, s
    # the handshake count includes our one /__stats probe
    assert s["handshakes"] <= 3, s


def test_new_connections_resume_the_tls_session(gateway, tls_up, pki):
    g = gateway(tls_proxy([tls_up.addr]))
    assert request(g.port, "GET", "/echo").status == 200
    # the server closes after each of these: the next one needs a new
    # connection, which resumes the session the previous one got
    for _ in range(3):
        r = request(g.port, "GET", "/echo?close=1")
        assert r.status == 200
    assert request(g.port, "GET", "/echo").status == 200
    s = counted(tls_up, pki)
    assert s["connections"] == 4, s
    assert s["resumed"] == 3, s


def test_verify_with_the_test_ca(gateway, tls_up, pki):
    # by name (SNI and name check) and by IP literal (IP SAN check)
    cfg = config(upstreams={
        "byname": {"servers": ["localhost:%d" % tls_up.port], "tls": True, "tls_verify": True,
                   "tls_ca": str(pki.ca)},
        "byip": {"servers": [tls_up.addr], "tls": True, "tls_verify": True,
                 "tls_ca": str(pki.ca)},
        "override": {"servers": [tls_up.addr], "tls": True, "tls_verify": True,
                     "tls_ca": str(pki.ca), "tls_server_name": "localhost"},
    }, routes=[{"match": {"prefix": "/%s/" % n}, "upstream": n}
               for n in ("byname", "byip", "override")])
    g = gateway(cfg)
    for n in ("byname", "byip", "override"):
        r = request(g.port, "GET", "/%s/echo" % n)
        assert r.status == 200, (n, r, g.stderr_text()[-2000:])


def test_verify_failures_are_502_and_the_gateway_keeps_serving(gateway, tls_factory, pki):
    good = tls_factory()
    other = tls_factory(other=True)
    cfg = config(upstreams={
        "other": {"servers": [other.addr], "tls": True, "tls_verify": True,
                  "tls_ca": str(pki.ca), "retries": 0},
        "wrongname": {"servers": [good.addr], "tls": True, "tls_verify": True,
                      "tls_ca": str(pki.ca), "tls_server_name": "not-this.example",
                      "retries": 0},
        "good": {"servers": [good.addr], "tls": True, "tls_verify": True,
                 "tls_ca": str(pki.ca)},
        "noverify": {"servers": [other.addr], "tls": True},
    }, routes=[{"match": {"prefix": "/%s/" % n}, "upstream": n}
               for n in ("other", "wrongname", "good", "noverify")])
    g = gateway(cfg)
    for _ in range(3):
        assert_json_error(request(g.port, "GET", "/other/echo"), 502)
        assert_json_error(request(g.port, "GET", "/wrongname/echo"), 502)
        assert request(g.port, "GET", "/good/echo").status == 200
    # without verification the same server is fine
    assert request(g.port, "GET", "/noverify/echo").status == 200
    err = g.stderr_text()
    assert "certificate verify failed" in err, err[-2000:]
    assert "hostname mismatch" in err, err[-2000:]
    assert other.stats(pki.other_ca)["requests"] == 1  # only the unverified one got in


def test_tls_to_a_plain_http_server_is_502_quickly(gateway, plain_nginx):
    g = gateway(tls_proxy([plain_nginx.addr], connect_timeout=5, retries=0))
    t0 = time.monotonic()
    r = request(g.port, "GET", "/echo")
    took = time.monotonic() - t0
    assert_json_error(r, 502)
    assert took < 2, took
    assert "tls handshake failed" in g.stderr_text()


def test_a_server_that_never_answers_the_hello_times_out_within_connect_timeout(
        gateway, silent_port, tls_up):
    cfg = config(upstreams={
        "mute": {"servers": ["127.0.0.1:%d" % silent_port], "tls": True,
                 "connect_timeout": 1, "retries": 0},
        "good": {"servers": [tls_up.addr], "tls": True},
    }, routes=[{"match": {"prefix": "/mute/"}, "upstream": "mute"},
               {"match": {"prefix": "/"}, "upstream": "good"}])
    g = gateway(cfg)
    # other requests go on while the handshake hangs
    with Client(g.port, timeout=10) as c:
        t0 = time.monotonic()
        c.request("GET", "/mute/x")
        assert request(g.port, "GET", "/echo").status == 200
        r = c.read_response()
        took = time.monotonic() - t0
    assert r.status in (502, 504), r
    assert_json_error(r, r.status)
    assert 0.9 <= took < 3, took
    assert "tls handshake timed out" in g.stderr_text()


def test_retry_moves_on_from_a_bad_tls_server(gateway, tls_factory, plain_nginx, pki):
    good = tls_factory()
    other = tls_factory(other=True)
    for bad in (plain_nginx.addr, other.addr):
        g = gateway(config(upstreams={"app": {
            "servers": [bad, good.addr], "tls": True, "tls_verify": True,
            "tls_ca": str(pki.ca), "tls_server_name": "localhost", "retries": 1,
            "connect_timeout": 2}},
            routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
        for i in range(4):  # round robin: half of them start on the bad one
            r = request(g.port, "GET", "/echo?i=%d" % i)
            assert r.status == 200, r
            assert r.header("X-Upstream-Port") == str(good.port)
        g.stop()


def test_client_abort_during_handshake_and_transfer(gateway, silent_port, tls_up):
    cfg = config(upstreams={
        "mute": {"servers": ["127.0.0.1:%d" % silent_port], "tls": True,
                 "connect_timeout": 5},
        "good": {"servers": [tls_up.addr], "tls": True},
    }, routes=[{"match": {"prefix": "/mute/"}, "upstream": "mute"},
               {"match": {"prefix": "/"}, "upstream": "good"}], admin={"addr": "127.0.0.1:$PORT1"})
    g = gateway(cfg)
    for path in ("/mute/x", "/bytes/50000000"):
        c = Client(g.port)
        c.request("GET", path)
        if path.startswith("/bytes"):
            c.read_head()
        c.close()
    # the gateway serves on, and nothing stays in flight
    assert request(g.port, "GET", "/echo").status == 200

    def active():
        m = request(g.ports[1], "GET", "/metrics").text()
        return [float(line.split()[-1]) for line in m.splitlines()
                if line.startswith("moongate_requests_active ")]
    assert len(active()) == 1
    wait_for(lambda: active() == [0.0], 5, what="no request in flight")


# --------------------------------------------------------------------------
# config

@pytest.mark.parametrize("opts,needle,message", [
    ({"tls": True, "tls_ca": "/nonexistent/ca.pem"}, "tls_ca", "cannot read"),
    ({"tls": True, "tls_ca": "$DIR/moongate.lua"}, "tls_ca", "no PEM certificate"),
    ({"tls_verify": True}, "tls_verify", "needs tls = true"),
    ({"tls": "yes"}, "tls", "expected true or false"),
    ({"tls": True, "tls_server_name": ""}, "tls_server_name", "expected a host name"),
])
def test_check_reports_tls_option_errors_with_file_line(run_moongate, opts, needle, message):
    up = {"servers": ["127.0.0.1:9"]}
    up.update(opts)
    text = "return {\n  listen = { \"127.0.0.1:$PORT\" },\n  upstreams = {\n    app = {\n"
    for k, v in up.items():
        text += "      %s = %s,\n" % (k, lua(v))
    text += "    },\n  },\n  routes = { { match = { prefix = \"/\" }, upstream = \"app\" } },\n}\n"
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode != 0
    out = p.stderr_text + p.stdout_text
    line = next(i + 1 for i, l in enumerate(p.config_path.read_text().splitlines())
                if needle + " =" in l)
    assert "moongate.lua:%d:" % line in out, out
    assert message in out, out


def test_check_accepts_tls_options(run_moongate, pki):
    p = run_moongate("-t", "-c", "$CFG", config=config(upstreams={"app": {
        "servers": ["127.0.0.1:9"], "tls": True, "tls_verify": True, "tls_ca": str(pki.ca),
        "tls_server_name": "api.internal"}},
        routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
    assert p.returncode == 0, p.stderr_text
    assert "OK" in p.stdout_text


# --------------------------------------------------------------------------
# gw.http with https://

def handler_route(path, lua_body):
    return {"match": {"prefix": path}, "handler": Raw("function(req)\n" + lua_body + "\nend")}


FETCH = """
  local url = req:header("x-url")
  local opts = { url = url, timeout = 5 }
  if req:header("x-verify") == "0" then opts.tls_verify = false end
  local r, err = gw.http.request(opts)
  if not r then return 599, "ERR " .. err end
  return r.status, r.body
"""


def fetch(g, url, verify=True):
    hs = [("X-Url", url)]
    if not verify:
        hs.append(("X-Verify", "0"))
    return request(g.port, "GET", "/fetch", headers=hs)


def test_gw_http_https_verified_with_ssl_cert_file(gateway, tls_factory, pki):
    good = tls_factory()
    other = tls_factory(other=True)
    g = gateway(config(routes=[handler_route("/fetch", FETCH)]),
                env={"SSL_CERT_FILE": str(pki.ca)})
    r = fetch(g, "https://localhost:%d/echo?a=1" % good.port)
    assert r.status == 200, r.body
    doc = json.loads(r.body)
    assert doc["path"] == "/echo?a=1"
    assert ["Host", "localhost:%d" % good.port] in doc["headers"]
    r = fetch(g, "https://127.0.0.1:%d/status/201" % good.port)  # IP SAN
    assert r.status == 201, r.body

    r = fetch(g, "https://localhost:%d/echo" % other.port)
    assert r.status == 599
    assert r.text().startswith("ERR tls handshake failed: certificate verify failed"), r.body
    # tls_verify = false: the same server is fine, and a verified request after
    # it does not get the unverified pooled connection
    r = fetch(g, "https://localhost:%d/echo" % other.port, verify=False)
    assert r.status == 200, r.body
    r = fetch(g, "https://localhost:%d/echo" % other.port)
    assert r.status == 599 and "certificate verify failed" in r.text(), r.body


def test_gw_http_https_checks_the_name(gateway, tls_factory, pki):
    u = tls_factory(name_only=True)  # a certificate for "localhost" only
    g = gateway(config(routes=[handler_route("/fetch", FETCH)]),
                env={"SSL_CERT_FILE": str(pki.ca)})
    assert fetch(g, "https://localhost:%d/echo" % u.port).status == 200
    r = fetch(g, "https://127.0.0.1:%d/echo" % u.port)
    assert r.status == 599, r.body
    assert r.text() == ("ERR tls handshake failed: certificate verify failed "
                        "(IP address mismatch)"), r.body
    assert fetch(g, "https://127.0.0.1:%d/echo" % u.port, verify=False).status == 200


def test_gw_http_https_keepalive_and_pools_apart_from_http(gateway, tls_up, pki):
    g = gateway(config(routes=[handler_route("/fetch", FETCH)]),
                env={"SSL_CERT_FILE": str(pki.ca)})
    url = "https://localhost:%d/echo" % tls_up.port
    for _ in range(30):
        assert fetch(g, url).status == 200
    s = counted(tls_up, pki)
    assert s["requests"] == 30 and s["connections"] == 1, s
    # plain http to the TLS port must not borrow the pooled TLS connection
    r = fetch(g, "http://localhost:%d/echo" % tls_up.port)
    assert r.status == 599, r.body
    assert fetch(g, url).status == 200
    assert counted(tls_up, pki)["requests"] == 31


def test_gw_http_https_post_and_large_body(gateway, tls_up, pki):
    lua_body = """
  local body = string.rep("x", 500000)
  local r, err = gw.http.request{ method = "POST", url = req:header("x-url") .. "/upload",
                                  body = body, timeout = 10 }
  if not r then return 599, err end
  local r2, err2 = gw.http.request{ url = req:header("x-url") .. "/bytes/3000000",
                                    timeout = 10 }
  if not r2 then return 599, err2 end
  return 200, gw.json.decode(r.body).sha256 .. " " .. #r2.body .. " " ..
              gw.crypto.digest("sha256", r2.body)
"""
    g = gateway(config(routes=[handler_route("/post", lua_body)]),
                env={"SSL_CERT_FILE": str(pki.ca)})
    r = request(g.port, "GET", "/post", headers=[("X-Url", "https://localhost:%d" % tls_up.port)])
    assert r.status == 200, r.body
    sha, n, digest = r.body.split(b" ", 2)
    assert sha.decode() == hashlib.sha256(b"x" * 500000).hexdigest()
    assert int(n) == 3000000 and digest.hex() == pattern_sha256(3000000)


def test_gw_http_https_to_a_plain_server_fails_cleanly(gateway, plain_nginx, silent_port):
    g = gateway(config(routes=[handler_route("/fetch", FETCH)]))
    r = fetch(g, "https://127.0.0.1:%d/" % plain_nginx.port)
    assert r.status == 599 and r.text().startswith("ERR tls handshake failed: "), r.body
    t0 = time.monotonic()
    hs = [("X-Url", "https://127.0.0.1:%d/" % silent_port)]
    r = request(g.port, "GET", "/fetch", headers=hs, timeout=15)
    assert r.status == 599 and r.text() == "ERR timeout", r.body
    assert time.monotonic() - t0 < 8


# --------------------------------------------------------------------------
# plugins over https

def test_forward_auth_with_an_https_address(gateway, tls_factory, upstream, pki):
    auth = tls_factory()
    other = tls_factory(other=True)

    def fa(address, **o):
        o["address"] = address
        return Raw('{ "forward_auth",' + lua(o)[1:])

    base = "https://localhost:%d" % auth.port
    routes = [
        {"match": {"prefix": "/ok/"}, "upstream": "app", "plugins": [fa(base + "/status/200")]},
        {"match": {"prefix": "/no/"}, "upstream": "app", "plugins": [fa(base + "/status/401")]},
        {"match": {"prefix": "/bad/"}, "upstream": "app",
         "plugins": [fa("https://localhost:%d/status/200" % other.port)]},
        {"match": {"prefix": "/insecure/"}, "upstream": "app",
         "plugins": [fa("https://localhost:%d/status/200" % other.port, tls_verify=False)]},
    ]
    g = gateway(config(upstreams={"app": {"servers": [upstream.addr]}}, routes=routes),
                env={"SSL_CERT_FILE": str(pki.ca)})
    r = request(g.port, "GET", "/ok/x")
    assert r.status == 200 and r.json()["path"] == "/ok/x", r
    assert request(g.port, "GET", "/no/x").status == 401
    assert request(g.port, "GET", "/bad/x").status == 500  # status_on_error
    assert "certificate verify failed" in g.stderr_text()
    assert request(g.port, "GET", "/insecure/x").status == 200
    a = auth.stats(pki.ca)
    assert a["requests"] == 2
    assert [x[1] for x in a["log"]] == ["/status/200", "/status/401"]


def _b64u(b):
    import base64
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TlsJwks:
    """A JWKS document served over TLS (stdlib http.server, socket wrapped)."""

    def __init__(self, pki, doc):
        body = json.dumps(doc).encode()
        outer = self
        self.fetches = 0

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki.cert), str(pki.key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_jwt_fetches_jwks_over_https(gateway, upstream, pki):
    crypto = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    key = crypto.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()

    def b64int(n):
        return _b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))

    jwks = TlsJwks(pki, {"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig",
                                   "n": b64int(pub.n), "e": b64int(pub.e)}]})
    try:
        g = gateway(config(upstreams={"app": {"servers": [upstream.addr]}}, routes=[
            {"match": {"prefix": "/"}, "upstream": "app",
             "plugins": [Raw('{ "jwt", jwks_url = "https://localhost:%d/jwks.json", '
                             'algorithms = { "RS256" }, claims_to_headers = { sub = "X-User" } }'
                             % jwks.port)]}]),
            env={"SSL_CERT_FILE": str(pki.ca)})
        head = _b64u(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode())
        claims = _b64u(json.dumps({"sub": "alice", "exp": int(time.time()) + 60}).encode())
        sig = key.sign(("%s.%s" % (head, claims)).encode(), padding.PKCS1v15(), hashes.SHA256())
        tok = "%s.%s.%s" % (head, claims, _b64u(sig))
        r = request(g.port, "GET", "/echo", headers=[("Authorization", "Bearer " + tok)])
        assert r.status == 200, (r, r.body, g.stderr_text()[-2000:])
        assert ["X-User", "alice"] in r.json()["headers"]
        assert jwks.fetches == 1
    finally:
        jwks.stop()
