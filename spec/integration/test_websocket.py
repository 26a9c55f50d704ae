"""WebSocket and other Upgrade tunnels (PRODUCT.md "WebSocket and other
upgrades"): real WebSocket clients and a real server (python3-websockets,
wsecho.py), raw sockets for framing edge cases, and a raw upgrade server in
this file for half-close and the abort matrix."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import pytest
import websockets

from conftest import (HERE, Raw, config, free_port, is_sanitized_build, request, wait_for,
                      wait_listening, stop_proc)

# --------------------------------------------------------------------------
# helpers


def raise_nofile(n=8192):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(n, soft), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


class WsEcho:
    """wsecho.py on a free port (TLS with cert/key)."""

    def __init__(self, tmp, cert=None, key=None):
        self.port = free_port()
        args = [sys.executable, "-B", str(HERE / "wsecho.py"), "--port", str(self.port)]
        if cert:
            args += ["--cert", str(cert), "--key", str(key)]
        self.tls = cert is not None
        self.log = open(os.path.join(str(tmp), "wsecho-%d.log" % self.port), "wb")

        def more_fds():
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))

        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log,
                                     stdin=subprocess.DEVNULL, preexec_fn=more_fds)
        if not self.tls:
            wait_listening(self.port, self.proc, 10, "wsecho.py",
                           probe=b"GET /__stats HTTP/1.1\r\nHost: x\r\n\r\n")
        else:
            deadline = time.monotonic() + 10
            while True:
                try:
                    self.stats()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stats(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s)
        s.sendall(b"GET /__stats HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        return json.loads(data.split(b"\r\n\r\n", 1)[1])

    def stop(self):
        stop_proc(self.proc)
        self.log.close()


@pytest.fixture
def wsecho(tmp_path):
    started = []

    def make(**kw):
        w = WsEcho(tmp_path, **kw)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


def ws_config(servers, routes=None, limits=None, access_log=False, tls_up=False, listen=None,
              plugin_path=None, **extra):
    up = {"servers": list(servers), "keepalive": 16, "connect_timeout": 2, "read_timeout": 10}
    if tls_up:
        up.update({"tls": True, "tls_verify": False})
    top = {"upstreams": {"ws": up},
           "routes": routes or [{"name": "ws", "match": {"prefix": "/"}, "upstream": "ws"}],
           "access_log": access_log, "admin": {"addr": "127.0.0.1:$PORT1"}}
    if listen:
        top["listen"] = listen
    if limits:
        top["limits"] = limits
    if plugin_path:
        top["plugin_path"] = plugin_path
    top.update(extra)
    return config(**top)


def metrics(g):
    out = {}
    for line in request(g.ports[1], "GET", "/metrics").text().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def gauges_zero(g):
    m = metrics(g)
    return m["moongate_tunnels_active"] == 0 and m["moongate_requests_active"] == 0


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def uri(g, path, tls=False):
    return "%s://127.0.0.1:%d%s" % ("wss" if tls else "ws", g.port, path)


CONNECT = {"max_size": None, "compression": None, "ping_interval": None, "max_queue": 4}

# raw WebSocket framing (RFC 6455 5.2)


def frame(opcode, payload=b"", fin=True, mask=True):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


class RawWs:
    """A WebSocket client on a plain socket: the handshake by hand, frames by hand."""

    def __init__(self, port, path="/echo", proto="websocket", extra=b"", timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n"
                          b"Connection: Upgrade\r\nUpgrade: " + proto.encode() + b"\r\n"
                          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key +
                          b"\r\n" + extra + b"\r\n")
        self.status, self.headers = self.read_head()

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            b = self.sock.recv(65536)
            if not b:
                raise ConnectionError("closed before the response head: %r" % self.buf)
            self.buf += b
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
        return status, hdrs

    def need(self, n):
        while len(self.buf) < n:
            b = self.sock.recv(65536)
            if not b:
                raise ConnectionError("closed")
            self.buf += b

    def read_frame(self):
        self.need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7f
        off = 2
        if n == 126:
            self.need(4)
            n = struct.unpack("!H", self.buf[2:4])[0]
            off = 4
        elif n == 127:
            self.need(10)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            off = 10
        assert not (b1 & 0x80), "a frame to the client must not be masked"
        self.need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x80 != 0, b0 & 0x0f, payload

    def send(self, data):
        self.sock.sendall(data)

    def read_eof(self, timeout=10):
        """Reads to EOF; returns what came."""
        self.sock.settimeout(timeout)
        data = self.buf
        self.buf = b""
        while True:
            b = self.sock.recv(65536)
            if not b:
                return data
            data += b

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------
# a raw upgrade server for half-close and aborts


class RawUpgradeServer:
    """Answers upgrade requests by path:
      /x/eofecho        101, reads to EOF, then sends "got:" + sha256 hex of it, closes
      /x/finfirst       101 + "hello", half-closes, reads to EOF (kept in .got)
      /x/hold           reads the request and never answers (until the peer goes)
      /x/fin-before     reads the request and closes (FIN)
      /x/rst-before     reads the request and resets (RST)
      /x/fin-after      101, then closes
      /x/rst-after      101, then resets
      /x/fin-mid        101 + half a WebSocket frame, then closes
      /x/rst-mid        101 + half a WebSocket frame, then resets
    """

    def __init__(self, ctx=None):
        self.ctx = ctx  # TLS server context, or None for plain TCP
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.got = {}
        self.requests = []
        self.stopping = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def accept_loop(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(s,), daemon=True).start()

    @staticmethod
    def reset(s):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    def serve(self, s):
        s.settimeout(30)
        buf = b""
        try:
            if self.ctx:
                s = self.ctx.wrap_socket(s, server_side=True)
            while b"\r\n\r\n" not in buf:
                b = s.recv(65536)
                if not b:
                    s.close()
                    return
                buf += b
            head, rest = buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ")[1].decode()
            self.requests.append(head.decode("latin-1"))
            sw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x-echo\r\n\r\n"
            if path == "/x/eofecho":
                s.sendall(sw)
                data = rest
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    data += b
                s.sendall(b"got:" + hashlib.sha256(data).hexdigest().encode())
                s.close()
            elif path == "/x/finfirst":
                s.sendall(sw + b"hello")
                s.shutdown(socket.SHUT_WR)
                data = rest
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    data += b
                self.got[path] = data
                s.close()
            elif path == "/x/hold":
                while s.recv(65536):
                    pass
                s.close()
            elif path == "/x/fin-before":
                s.close()
            elif path == "/x/rst-before":
                self.reset(s)
            elif path in ("/x/fin-after", "/x/rst-after", "/x/fin-mid", "/x/rst-mid"):
                s.sendall(sw + (b"\x82\x7e\x10\x00" + b"a" * 100 if "mid" in path else b""))
                time.sleep(0.2)
                if path.startswith("/x/rst"):
                    self.reset(s)
                else:
                    s.close()
            else:
                s.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                s.close()
        except OSError:
            s.close()

    def stop(self):
        self.stopping = True
        self.lsock.close()


@pytest.fixture
def rawup():
    r = RawUpgradeServer()
    yield r
    r.stop()


# --------------------------------------------------------------------------
# messages


def test_messages_text_and_binary_0_to_16mib_exact_both_ways(gateway, wsecho, tmp_path):
    w = wsecho()
    g = gateway(ws_config([w.addr], access_log=str(tmp_path / "access.log")))
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 65537, 1 << 20, 16 << 20]

    async def go():
        sent = hashlib.sha256()
        got = hashlib.sha256()
        async with websockets.connect(uri(g, "/echo"), **CONNECT) as ws:
            for n in sizes:
                b = os.urandom(n)
                sent.update(b)
                await ws.send(b)
                r = await ws.recv()
                assert isinstance(r, bytes) and len(r) == n
                got.update(r)
                t = ("é" * (n // 2))[: n // 2]
                await ws.send(t)
                r = await ws.recv()
                assert isinstance(r, str) and r == t
                sent.update(t.encode())
                got.update(r.encode())
        return sent.hexdigest(), got.hexdigest()

    s, r = run(go())
    assert s == r
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")
    # the access log line is written when the tunnel closes, with the bytes each way
    line = wait_for(lambda: [l for l in (tmp_path / "access.log").read_text().splitlines()
                             if " 101 " in l], what="access log line")[0]
    up = int(line.split("tunnel_up=")[1].split()[0])
    down = int(line.split("tunnel_down=")[1].split()[0])
    payload = sum(sizes) + sum(len(("é" * (n // 2))[: n // 2].encode()) for n in sizes)
    assert up > payload and down > payload  # framing (and the close frames) on top
    assert up - payload < 4096 and down - payload < 4096


def test_fragmentation_ping_pong_and_control_frames_raw(gateway, wsecho):
    w = wsecho()
    g = gateway(ws_config([w.addr]))
    c = RawWs(g.port, "/echo")
    assert c.status == 101
    assert c.headers["upgrade"].lower() == "websocket"
    assert "upgrade" in c.headers["connection"].lower()
    assert "sec-websocket-accept" in c.headers
    # a text message in three fragments, with a ping between them
    c.send(frame(0x1, b"hel", fin=False) + frame(0x0, b"lo ", fin=False))
    c.send(frame(0x9, b"are you there"))
    c.send(frame(0x0, b"world", fin=True))
    seen = []
    while len(seen) < 2:
        seen.append(c.read_frame())
    assert (True, 0xA, b"are you there") in seen
    assert (True, 0x1, b"hello world") in seen
    # a binary message split over many writes, byte by byte for its header
    data = os.urandom(70000)
    f = frame(0x2, data)
    for i in range(0, 16):
        c.send(f[i:i + 1])
    c.send(f[16:])
    fin, op, payload = c.read_frame()
    assert (fin, op) == (True, 0x2) and hashlib.sha256(payload).digest() == \
        hashlib.sha256(data).digest()
    # close with a code: the server answers the close, then the tunnel ends
    c.send(frame(0x8, struct.pack("!H", 4001) + b"done"))
    fin, op, payload = c.read_frame()
    assert op == 0x8 and struct.unpack("!H", payload[:2])[0] == 4001
    assert c.read_eof() == b""
    c.close()
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")


def test_close_codes_relayed_both_ways(gateway, wsecho):
    w = wsecho()
    g = gateway(ws_config([w.addr]))

    async def go():
        ws = await websockets.connect(uri(g, "/echo"), **CONNECT)
        await ws.send("x")
        assert await ws.recv() == "x"
        await ws.close(code=4001, reason="client says bye")
        ws2 = await websockets.connect(uri(g, "/close/4002"), **CONNECT)
        with pytest.raises(websockets.ConnectionClosed):
            await ws2.recv()
        return ws2.close_code, ws2.close_reason

    code, reason = run(go())
    assert (code, reason) == (4002, "bye")
    wait_for(lambda: [4001, "client says bye"] in w.stats()["closes"],
             what="the upstream saw the client's close code")
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")


# --------------------------------------------------------------------------
# the handshake is an ordinary request


def hs256(secret, claims):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    h = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = enc(json.dumps(claims).encode())
    sig = enc(hmac.new(secret.encode(), h + b"." + p, hashlib.sha256).digest())
    return (h + b"." + p + b"." + sig).decode()


def test_auth_refusal_on_the_handshake_never_reaches_the_upstream(gateway, wsecho, tmp_path):
    w = wsecho()
    routes = [{"name": "ws", "match": {"prefix": "/"}, "upstream": "ws",
               "plugins": [Raw('{ "jwt", secret = "s3cret" }')]}]
    g = gateway(ws_config([w.addr], routes=routes))
    c = RawWs(g.port, "/echo")
    assert c.status == 401
    c.close()
    assert w.stats()["handshakes"] == 0

    async def go():
        tok = hs256("s3cret", {"sub": "alice", "exp": int(time.time()) + 600})
        async with websockets.connect(uri(g, "/echo"), extra_headers={
                "Authorization": "Bearer " + tok}, **CONNECT) as ws:
            await ws.send("through auth")
            return await ws.recv()

    assert run(go()) == "through auth"
    assert w.stats()["handshakes"] == 1
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")


def test_non_101_answer_is_an_ordinary_response_and_keeps_the_connection(gateway, wsecho):
    w = wsecho()
    g = gateway(ws_config([w.addr]))
    c = RawWs(g.port, "/plain")
    assert c.status == 200
    n = int(c.headers["content-length"])
    c.need(n)
    assert c.buf[:n] == b"plain"
    c.buf = c.buf[n:]
    # the same connection serves the next request
    c.send(b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n")
    st, h = c.read_head()
    assert st == 200
    c.close()
    assert metrics(g)["moongate_tunnels_active"] == 0


def test_retry_next_server_on_connect_failure(gateway, wsecho):
    w = wsecho()
    dead = "127.0.0.1:%d" % free_port()
    g = gateway(ws_config([dead, w.addr]))

    async def go():
        out = []
        for _ in range(4):
            async with websockets.connect(uri(g, "/echo"), **CONNECT) as ws:
                await ws.send("r")
                out.append(await ws.recv())
        return out

    assert run(go()) == ["r"] * 4


def test_upgrades_list_drops_unlisted_protocols_and_h2c(gateway, upstream):
    routes = [
        {"name": "none", "match": {"prefix": "/none"}, "upstream": "ws", "upgrades": []},
        {"name": "dflt", "match": {"prefix": "/"}, "upstream": "ws"},
    ]
    g = gateway(ws_config([upstream.addr], routes=routes))
    for path, proto in (("/none/x", "websocket"), ("/d/x", "h2c"), ("/d/y", "foo")):
        c = RawWs(g.port, path, proto=proto)
        assert c.status == 200, (path, proto)
        n = int(c.headers["content-length"])
        c.need(n)
        hdrs = {k.lower(): v for k, v in json.loads(c.buf[:n])["headers"]}
        assert "upgrade" not in hdrs and "connection" not in hdrs, (path, hdrs)
        c.close()
    # a listed protocol goes up with both headers
    c = RawWs(g.port, "/d/z")
    n = int(c.headers["content-length"])
    c.need(n)
    hdrs = {k.lower(): v for k, v in json.loads(c.buf[:n])["headers"]}
    assert hdrs["upgrade"] == "websocket" and hdrs["connection"].lower() == "upgrade"
    assert c.status == 200  # upstream.py does not switch: an ordinary answer
    c.close()


def write_log_plugin(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "t_wslog.lua").write_text("""
return {
  name = "t_wslog",
  access = function(conf, req) req.ctx.up = tostring(req.upgrade) end,
  response = function(conf, req, res) res:set_header("X-Resp-Phase", "yes") end,
  log = function(conf, req, res)
    gw.log("warn", "WSLOG status=", res.status, " upgrade=", req.ctx.up)
  end,
}
""")


def test_req_upgrade_and_log_phase_at_tunnel_close(gateway, wsecho, tmp_path):
    w = wsecho()
    write_log_plugin(tmp_path)
    routes = [{"name": "ws", "match": {"prefix": "/"}, "upstream": "ws",
               "plugins": ["t_wslog"]},
              ]
    g = gateway(ws_config([w.addr], routes=routes, plugin_path=str(tmp_path / "plugins")))
    c = RawWs(g.port, "/echo", proto="WebSocket")
    assert c.status == 101
    assert c.headers["x-resp-phase"] == "yes"
    c.send(frame(0x1, b"hi"))
    assert c.read_frame() == (True, 0x1, b"hi")
    time.sleep(0.3)
    assert "WSLOG" not in g.stderr_text()  # not before the tunnel closes
    c.send(frame(0x8, struct.pack("!H", 1000)))
    c.read_frame()
    c.read_eof()
    c.close()
    wait_for(lambda: "WSLOG status=101 upgrade=websocket" in g.stderr_text(),
             what="the log phase at tunnel close")
    assert g.stderr_text().count("WSLOG") == 1
    # a request without Connection: upgrade has no req.upgrade
    r = request(g.port, "GET", "/plain", headers=[("Upgrade", "websocket")])
    assert r.status == 200
    wait_for(lambda: "WSLOG status=200 upgrade=nil" in g.stderr_text(), what="second log")
    wait_for(lambda: gauges_zero(g) and metrics(g)["moongate_lua_coroutines"] == 0,
             what="gauges at 0")


def test_response_phase_may_turn_the_switch_down(gateway, wsecho, tmp_path):
    w = wsecho()
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "t_no101.lua").write_text("""
return {
  name = "t_no101",
  response = function(conf, req, res)
    if req.query == "deny" then res.status = 403 end
  end,
}
""")
    routes = [{"name": "ws", "match": {"prefix": "/"}, "upstream": "ws", "plugins": ["t_no101"]}]
    g = gateway(ws_config([w.addr], routes=routes, plugin_path=str(tmp_path / "plugins")))
    c = RawWs(g.port, "/echo?deny")
    assert c.status == 403, c.headers
    assert c.headers.get("connection") == "close", c.headers
    assert c.read_eof() == b""
    c.close()
    c = RawWs(g.port, "/echo")
    assert c.status == 101
    c.send(frame(0x1, b"ok"))
    assert c.read_frame() == (True, 0x1, b"ok")
    c.close()
    wait_for(lambda: gauges_zero(g), what="gauges at 0")


@pytest.mark.parametrize("bad, want", [
    ('upgrades = "websocket"', "routes[1].upgrades: expected a list of protocol names"),
    ('upgrades = { "h2c" }', "routes[1].upgrades[1]: h2c upgrades are never tunneled"),
    ('upgrades = { "web socket" }', "routes[1].upgrades[1]: expected a protocol name"),
    ('upgrades = { 1 }', "routes[1].upgrades[1]: expected a protocol name"),
])
def test_config_errors_name_the_upgrades_line(run_moongate, bad, want):
    text = ('return {\n  listen = { "127.0.0.1:$PORT" },\n'
            '  upstreams = { ws = { servers = { "127.0.0.1:1" } } },\n'
            '  routes = { { upstream = "ws",\n    %s } },\n}\n' % bad)
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 1 and want in p.stderr_text, p.stderr_text
    assert "moongate.lua:5:" in p.stderr_text, p.stderr_text  # the upgrades line


def test_config_tunnel_idle_timeout_checked(run_moongate):
    ok = ('return { listen = { "127.0.0.1:$PORT" }, limits = { tunnel_idle_timeout = 5 },\n'
          '  upstreams = { ws = { servers = { "127.0.0.1:1" } } },\n'
          '  routes = { { upstream = "ws", upgrades = { "WebSocket", "x-echo/2" } } } }\n')
    assert run_moongate("-t", "-c", "$CFG", config=ok).returncode == 0
    p = run_moongate("-t", "-c", "$CFG", config=ok.replace("= 5", "= 0"))
    assert p.returncode == 1 and "limits.tunnel_idle_timeout" in p.stderr_text, p.stderr_text


# --------------------------------------------------------------------------
# scale, reloads, memory


def test_1000_concurrent_tunnels_on_one_worker(gateway, wsecho):
    raise_nofile(8192)
    w = wsecho()
    g = gateway(ws_config([w.addr], workers=1))
    N = 1000

    async def go():
        conns = []
        for i in range(0, N, 100):
            conns += await asyncio.gather(*[websockets.connect(uri(g, "/echo"), **CONNECT)
                                            for _ in range(100)])
        await asyncio.gather(*[c.send("m%d" % i) for i, c in enumerate(conns)])
        got = await asyncio.gather(*[c.recv() for c in conns])
        assert got == ["m%d" % i for i in range(N)]
        active = metrics(g)["moongate_tunnels_active"]
        await asyncio.gather(*[c.close() for c in conns])
        return active

    assert run(go(), timeout=300) == N
    wait_for(lambda: gauges_zero(g), timeout=30, what="tunnel gauges at 0")


@pytest.mark.parametrize("workers", [1, 2])
def test_100_tunnels_survive_50_reloads(gateway, wsecho, workers):
    # with workers = 2, SIGHUP goes to the master, which reloads its workers
    # in place (master.c); POST /reload reaches a worker, which asks the master
    raise_nofile(4096)
    w = wsecho()
    g = gateway(ws_config([w.addr], workers=workers))

    def gen():
        return metrics(g)["moongate_config_generation"]

    async def go():
        conns = await asyncio.gather(*[websockets.connect(uri(g, "/echo"), **CONNECT)
                                       for _ in range(100)])
        g0 = gen()
        for i in range(50):
            # one at a time: signals that arrive together count once
            if i % 2:
                os.kill(g.pid, signal.SIGHUP)
            else:
                request(g.ports[1], "POST", "/reload")
            wait_for(lambda: gen() >= g0 + i + 1, timeout=20, what="reload %d" % (i + 1))
            await asyncio.gather(*[c.send("r%d" % i) for c in conns[:5]])
            assert await asyncio.gather(*[c.recv() for c in conns[:5]]) == ["r%d" % i] * 5
        await asyncio.gather(*[c.send("after") for c in conns])
        got = await asyncio.gather(*[c.recv() for c in conns])
        assert got == ["after"] * 100
        assert all(c.open for c in conns)
        assert metrics(g)["moongate_tunnels_active"] == 100
        await asyncio.gather(*[c.close() for c in conns])

    run(go(), timeout=300)
    closes = wait_for(lambda: (lambda c: c if len(c) >= 100 else None)(w.stats()["closes"]),
                      what="the upstream saw 100 closes")
    assert closes == [[1000, ""]] * 100  # each by its client: none by the reloads
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")


@pytest.mark.skipif(is_sanitized_build(), reason="RSS means nothing under ASan")
def test_slow_reader_keeps_gateway_memory_bounded(gateway, wsecho):
    w = wsecho()
    g = gateway(ws_config([w.addr]))
    rss0 = g.rss_kb()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.connect(("127.0.0.1", g.port))
    s.sendall(b"GET /flood/256 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
              b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    # the upstream floods 256 MiB; the client reads nothing for a while
    time.sleep(3)
    grown = g.rss_kb() - rss0
    assert grown < 16 * 1024, "gateway grew %d KiB with a client that does not read" % grown
    # then it reads everything: nothing was lost
    s.settimeout(30)
    total = 0
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    total = len(head.split(b"\r\n\r\n", 1)[1])
    want = 256 * ((1 << 20) + 10)  # 1 MiB frames with a 10-byte header
    while total < want:
        b = s.recv(1 << 20)
        assert b
        total += len(b)
    assert total == want
    assert g.hwm_kb() - rss0 < 32 * 1024
    s.close()
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")


def test_idle_timeout_closes_a_quiet_tunnel_only(gateway, wsecho):
    w = wsecho()
    g = gateway(ws_config([w.addr], limits={"tunnel_idle_timeout": 1}))

    async def go():
        busy = await websockets.connect(uri(g, "/echo"), **CONNECT)
        quiet = await websockets.connect(uri(g, "/hold"), **CONNECT)
        t0 = time.monotonic()
        for i in range(8):  # 2 s of traffic, 0.25 s apart: never idle for 1 s
            await busy.send("k%d" % i)
            assert await busy.recv() == "k%d" % i
            await asyncio.sleep(0.25)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(quiet.recv(), 5)
        closed_after = time.monotonic() - t0
        assert busy.open
        await busy.close()
        return closed_after

    t = run(go())
    assert t < 4
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")


# --------------------------------------------------------------------------
# half-close and aborts (raw upgrade server)


def xconfig(addr, **kw):
    routes = [{"name": "x", "match": {"prefix": "/x"}, "upstream": "ws",
               "upgrades": ["websocket", "x-echo"]}]
    return ws_config([addr], routes=routes, **kw)


def test_half_close_client_first(gateway, rawup):
    g = gateway(xconfig(rawup.addr))
    c = RawWs(g.port, "/x/eofecho", proto="x-echo")
    assert c.status == 101
    data = os.urandom(300000)
    c.send(data)
    c.sock.shutdown(socket.SHUT_WR)  # our FIN reaches the server ...
    out = c.read_eof()  # ... and its answer still reaches us
    assert out == b"got:" + hashlib.sha256(data).hexdigest().encode()
    c.close()
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")


def test_half_close_upstream_first(gateway, rawup):
    g = gateway(xconfig(rawup.addr))
    c = RawWs(g.port, "/x/finfirst", proto="x-echo")
    assert c.status == 101
    assert c.read_eof() == b"hello"  # the server's FIN came through
    c.send(b"still talking")  # and our direction still flows
    c.sock.shutdown(socket.SHUT_WR)
    wait_for(lambda: rawup.got.get("/x/finfirst") == b"still talking",
             what="bytes after the upstream's FIN")
    c.close()
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")


def rst(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("stage", ["handshake", "after101", "midmessage"])
def test_abort_matrix_client_side(gateway, rawup, wsecho, stage, how):
    w = wsecho()
    routes = [{"name": "x", "match": {"prefix": "/x"}, "upstream": "x",
               "upgrades": ["x-echo"]},
              {"name": "ws", "match": {"prefix": "/"}, "upstream": "ws"}]
    text = ws_config([w.addr], routes=routes).replace(
        "upstreams = {", "upstreams = {\n    x = { servers = { \"%s\" } }," % rawup.addr, 1)
    g = gateway(text)
    if stage == "handshake":
        s = socket.create_connection(("127.0.0.1", g.port))
        s.sendall(b"GET /x/hold HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\n"
                  b"Upgrade: x-echo\r\n\r\n")
        wait_for(lambda: any("/x/hold" in r for r in rawup.requests), what="request upstream")
        if how == "fin":
            s.shutdown(socket.SHUT_WR)
            time.sleep(0.2)
            s.close()
        else:
            rst(s)
    else:
        c = RawWs(g.port, "/echo")
        assert c.status == 101
        c.send(frame(0x1, b"one"))
        assert c.read_frame() == (True, 0x1, b"one")
        if stage == "midmessage":
            c.send(frame(0x2, os.urandom(100000))[:50000])
            time.sleep(0.1)
        if how == "fin":
            c.sock.shutdown(socket.SHUT_WR)
            c.read_eof()
            c.close()
        else:
            rst(c.sock)
    wait_for(lambda: gauges_zero(g), what="tunnel and request gauges at 0")
    # still serving
    c = RawWs(g.port, "/echo")
    c.send(frame(0x1, b"alive"))
    assert c.read_frame() == (True, 0x1, b"alive")
    c.close()
    wait_for(lambda: gauges_zero(g), what="gauges at 0 again")


@pytest.mark.parametrize("path", ["/x/fin-before", "/x/rst-before", "/x/fin-after",
                                  "/x/rst-after", "/x/fin-mid", "/x/rst-mid"])
def test_abort_matrix_upstream_side(gateway, rawup, path):
    g = gateway(xconfig(rawup.addr))
    c = RawWs(g.port, path, proto="x-echo")
    if "before" in path:
        assert c.status == 502
    else:
        assert c.status == 101
        got = c.read_eof()  # the tunnel ends: we see its end, whatever came first
        if "mid" in path:
            assert got.startswith(b"\x82\x7e\x10\x00")
        else:
            assert got == b""
    c.close()
    wait_for(lambda: gauges_zero(g), what="tunnel and request gauges at 0")
    assert request(g.ports[1], "GET", "/metrics").status == 200


# --------------------------------------------------------------------------
# TLS, graceful stop


def test_half_close_through_tls_on_both_sides(gateway, tmp_path):
    from tlshelp import CA
    ca = CA(tmp_path / "pki")
    crt, key = ca.issue("server")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(crt), str(key))
    up = RawUpgradeServer(sctx)
    try:
        listen = [{"addr": "127.0.0.1:$PORT", "tls": {"cert": str(crt), "key": str(key)}}]
        g = gateway(xconfig(up.addr, tls_up=True, listen=listen))
        raw = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        s = ssl.create_default_context(cafile=str(ca.cert)).wrap_socket(
            raw, server_hostname="localhost")
        s.sendall(b"GET /x/eofecho HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\n"
                  b"Upgrade: x-echo\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        data = os.urandom(300000)
        s.sendall(data)
        socket.socket.shutdown(s, socket.SHUT_WR)  # a TCP FIN (passed on as close_notify + FIN)
        out = rest
        while True:
            b = s.recv(65536)  # the upstream's answer after our FIN, then its close_notify
            if not b:
                break
            out += b
        assert out == b"got:" + hashlib.sha256(data).hexdigest().encode()
        s.close()
        wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")
    finally:
        up.stop()


def test_wss_on_a_tls_listener_to_a_tls_upstream(gateway, wsecho, tmp_path):
    from tlshelp import CA
    ca = CA(tmp_path / "pki")
    crt, key = ca.issue("server")
    w = wsecho(cert=crt, key=key)
    listen = [{"addr": "127.0.0.1:$PORT", "tls": {"cert": str(crt), "key": str(key)}}]
    g = gateway(ws_config([w.addr], tls_up=True, listen=listen))
    ctx = ssl.create_default_context(cafile=str(ca.cert))

    async def go():
        async with websockets.connect(uri(g, "/echo", tls=True), ssl=ctx,
                                      server_hostname="localhost", **CONNECT) as ws:
            out = []
            for n in (0, 100, 70000, 5 << 20):
                b = os.urandom(n)
                await ws.send(b)
                r = await ws.recv()
                out.append(hashlib.sha256(r).digest() == hashlib.sha256(b).digest())
            await ws.ping()
            await ws.close(code=4003)
            return out

    assert run(go()) == [True] * 4
    wait_for(lambda: [4003, ""] in w.stats()["closes"], what="close code through TLS")
    wait_for(lambda: gauges_zero(g), what="tunnel gauges at 0")


@pytest.mark.parametrize("lua", [False, True])
def test_graceful_stop_says_going_away_at_drain_timeout(gateway, wsecho, tmp_path, lua):
    w = wsecho()
    kw = {}
    if lua:
        write_log_plugin(tmp_path)
        kw = {"routes": [{"name": "ws", "match": {"prefix": "/"}, "upstream": "ws",
                          "plugins": ["t_wslog"]}], "plugin_path": str(tmp_path / "plugins")}
    g = gateway(ws_config([w.addr], limits={"drain_timeout": 1}, **kw))

    async def go():
        ws = await websockets.connect(uri(g, "/echo"), **CONNECT)
        await ws.send("x")
        assert await ws.recv() == "x"
        t0 = time.monotonic()
        os.kill(g.pid, signal.SIGTERM)
        await asyncio.sleep(0.5)
        await ws.send("still open while draining")
        assert await ws.recv() == "still open while draining"
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code, time.monotonic() - t0

    code, t = run(go())
    assert code == 1001
    assert 0.8 < t < 5
    wait_for(lambda: [1001, ""] in w.stats()["closes"], what="the upstream got 1001 too")
    assert g.proc.wait(10) == 0
    if lua:
        assert "WSLOG status=101" in g.stderr_text()


def test_graceful_stop_adds_no_close_frame_inside_a_frame(gateway, wsecho):
    # the client is half-way through a frame to the upstream when the drain
    # ends: a close frame there would corrupt the stream, so the upstream gets
    # none (its connection just ends), while the client, whose direction is
    # between frames, gets its 1001
    w = wsecho()
    g = gateway(ws_config([w.addr], limits={"drain_timeout": 1}))
    c = RawWs(g.port, "/echo")
    assert c.status == 101
    c.send(frame(0x1, b"whole"))
    assert c.read_frame() == (True, 0x1, b"whole")
    c.send(frame(0x2, os.urandom(5000))[:1000])
    time.sleep(0.2)
    os.kill(g.pid, signal.SIGTERM)
    fin, op, payload = c.read_frame()
    assert (op, struct.unpack("!H", payload[:2])[0]) == (0x8, 1001)
    assert c.read_eof() == b""
    c.close()
    assert g.proc.wait(10) == 0
    closes = wait_for(lambda: w.stats()["closes"], what="the upstream's close")
    assert closes[0][0] == 1006, closes  # cut, not a 1001 spliced into the frame


def test_bytes_behind_the_handshake_and_behind_the_101(gateway, rawup, wsecho, tmp_path):
    # the client's first frame in the same packet as its handshake: it waits
    # for the 101 and then goes up
    w = wsecho()
    g = gateway(ws_config([w.addr]))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
              + frame(0x1, b"early bird"))
    c = RawWs.__new__(RawWs)
    c.sock, c.buf = s, b""
    st, _ = c.read_head()
    assert st == 101
    assert c.read_frame() == (True, 0x1, b"early bird")
    c.close()
    # the upstream's bytes in the same packet as its 101, with a response
    # plugin holding the head: they follow the 101
    write_log_plugin(tmp_path)
    routes = [{"name": "x", "match": {"prefix": "/x"}, "upstream": "ws",
               "upgrades": ["x-echo"], "plugins": ["t_wslog"]}]
    g2 = gateway(ws_config([rawup.addr], routes=routes, plugin_path=str(tmp_path / "plugins")))
    c = RawWs(g2.port, "/x/finfirst", proto="x-echo")
    assert c.status == 101 and c.headers["x-resp-phase"] == "yes"
    assert c.read_eof() == b"hello"
    c.send(b"late")
    c.sock.shutdown(socket.SHUT_WR)
    wait_for(lambda: rawup.got.get("/x/finfirst") == b"late", what="bytes after FIN")
    c.close()
    wait_for(lambda: gauges_zero(g2), what="gauges at 0")


# --------------------------------------------------------------------------
# examples/websocket.lua, as examples/README.md runs it


def test_example_websocket_lua_and_its_readme_commands(gateway, tmp_path):
    import re
    import shutil
    from conftest import REPO
    ex = REPO / "examples"
    shutil.copytree(ex / "plugins", tmp_path / "plugins")
    up = free_port()
    echo = subprocess.Popen([sys.executable, "-B", str(ex / "ws_echo.py")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, UPSTREAM_PORT=str(up)))
    try:
        wait_listening(up, echo, 10, "ws_echo.py", probe=b"GET / HTTP/1.1\r\nHost: x\r\n"
                                                          b"Connection: close\r\n\r\n")
        gport, aport = free_port(), free_port()
        env = {"MOONGATE_PORT": str(gport), "ADMIN_PORT": str(aport), "UPSTREAM_PORT": str(up)}
        g = gateway((ex / "websocket.lua").read_text(), nports=0, env=env, wait=False)
        wait_listening(gport, g.proc, 15, "moongate", g.stderr_path)
        text = (ex / "README.md").read_text()
        sec = re.search(r"^## websocket\.lua[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S).group(1)
        lines = [l[4:] for l in sec.splitlines() if l.startswith("    ")]
        ran = 0
        for line in lines:
            if not (line.startswith("python3 examples/ws_client.py") or line.startswith("curl")):
                continue
            cmd, _, comment = line.partition("#")
            cmd = cmd.replace("localhost:8080", "localhost:%d" % gport)
            cmd = cmd.replace("localhost:9901", "localhost:%d" % aport)
            run_cmd = cmd.replace("python3 ", sys.executable + " ", 1)  # Debian's, with websockets
            p = subprocess.run(["bash", "-c", run_cmd], capture_output=True, text=True,
                               timeout=30, cwd=str(REPO))
            ran += 1
            comment = comment.strip()
            if cmd.startswith("python3"):
                words = cmd.split()[3:]
                m = re.match(r"refused: HTTP (\d+)", comment)
                if m:
                    assert p.returncode == 1 and "refused: HTTP %s" % m.group(1) in p.stderr, \
                        (cmd, p.stdout, p.stderr)
                else:
                    assert p.returncode == 0 and p.stdout.split() == words, (cmd, p.stdout,
                                                                            p.stderr)
            elif "metrics" in cmd:
                wait_for(lambda: "moongate_tunnels_active 0" in subprocess.run(
                    ["bash", "-c", cmd], capture_output=True, text=True).stdout,
                    what="tunnels_active 0")
            else:
                assert p.returncode == 0 and '"ok"' in p.stdout.replace(" ", ""), p.stdout
        assert ran == 6
        wait_for(lambda: "route echo: websocket /echo -> 101" in g.stderr_text(),
                 what="the example's log phase")
        assert " 101 " in g.stdout_text() and "tunnel_up=" in g.stdout_text()
    finally:
        stop_proc(echo)
