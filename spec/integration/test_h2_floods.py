"""HTTP/2 floods (PRODUCT.md "HTTP/2 and gRPC"): rapid reset, PING and
SETTINGS floods, a CONTINUATION flood and an HPACK bomb each close the
offending connection with GOAWAY ENHANCE_YOUR_CALM, while another client on
the same gateway keeps being served throughout."""

import socket
import threading
import time

import h2.connection

from h2help import (ENHANCE_YOUR_CALM, PREFACE, H2Conn, frame, goaway_code, read_frames)

CONFIG = """return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = false,
  upstreams = { app = { servers = { "%s" }, keepalive = 16 } },
  routes = {
    { match = { path = "/hello" }, handler = function(req) return 200, "hello" end },
    { match = { prefix = "/" }, upstream = "app" },
  },
}
"""


class Bystander:
    """Another client that keeps asking during a flood: over HTTP/2 and
    HTTP/1.1, every answer must come."""

    def __init__(self, port):
        self.port = port
        self.ok = 0
        self.errors = []
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()
        # the flood starts once this client is being served, and finish()
        # wants an answer that came after that
        self.started = self.wait_more(0)

    def wait_more(self, than):
        deadline = time.monotonic() + 10
        while self.ok <= than and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.ok

    def run(self):
        try:
            c = H2Conn(self.port)
            while not self.stop:
                s = c.get("/echo?bystander=1")
                if s.status != 200:
                    self.errors.append(s.status)
                self.ok += 1
            c.close()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))

    def finish(self):
        self.wait_more(self.started)
        self.stop = True
        self.t.join(10)
        assert not self.errors, self.errors
        assert self.started > 0 and self.ok > self.started, (self.started, self.ok)


def raw_conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(PREFACE + frame(4, 0, 0))  # preface, empty SETTINGS
    return s


def expect_calm(sock, timeout=10):
    frames = read_frames(sock, timeout, until=lambda t, *_: t == 7)
    code = goaway_code(frames)
    assert code == ENHANCE_YOUR_CALM, [(t, f, s) for t, f, s, _ in frames][-10:]
    # and the connection ends
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, socket.timeout):
        pass


def hpack_int(v, prefix_bits, first=0):
    m = (1 << prefix_bits) - 1
    if v < m:
        return bytes([first | v])
    out = [first | m]
    v -= m
    while v >= 128:
        out.append((v & 0x7f) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def test_rapid_reset(gateway, upstream):
    g = gateway(CONFIG % upstream.addr)
    b = Bystander(g.port)
    c = H2Conn(g.port)
    for _ in range(1000):
        sid = c.h2.get_next_available_stream_id()
        c.h2.send_headers(sid, [(":method", "GET"), (":path", "/slow/2000"),
                                (":scheme", "http"), (":authority", "x")])
        c.h2.reset_stream(sid, error_code=8)
    try:
        c.flush()
    except OSError:
        pass
    c.wait(lambda: c.goaway is not None, 10)
    assert c.goaway[0] == ENHANCE_YOUR_CALM
    b.finish()
    assert "stream reset flood" in g.stderr_text()


def test_ping_flood(gateway, upstream):
    g = gateway(CONFIG % upstream.addr)
    b = Bystander(g.port)
    s = raw_conn(g.port)
    pings = b"".join(frame(6, 0, 0, b"%08d" % i) for i in range(5000))
    try:
        s.sendall(pings)
    except OSError:
        pass
    expect_calm(s)
    b.finish()


def test_settings_flood(gateway, upstream):
    g = gateway(CONFIG % upstream.addr)
    b = Bystander(g.port)
    s = raw_conn(g.port)
    try:
        s.sendall(frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64") * 5000)
    except OSError:
        pass
    expect_calm(s)
    b.finish()


def test_settings_ack_flood_client_not_reading(gateway, upstream):
    """The old shape of the attack: SETTINGS and PINGs whose ACKs pile up
    because the client reads nothing."""
    g = gateway(CONFIG % upstream.addr)
    b = Bystander(g.port)
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(PREFACE + frame(4, 0, 0))
    sent = 0
    s.settimeout(0.2)
    try:
        for _ in range(200):
            s.sendall(frame(6, 0, 0, b"12345678") * 500)
            sent += 500
    except (socket.timeout, OSError):
        pass
    # closed by the gateway: reads end (GOAWAY may be lost behind the ACKs)
    s.settimeout(10)
    deadline = time.monotonic() + 10
    closed = False
    while time.monotonic() < deadline:
        try:
            d = s.recv(1 << 20)
        except ConnectionResetError:
            closed = True
            break
        except socket.timeout:
            break
        if not d:
            closed = True
            break
    assert closed
    b.finish()


def test_continuation_flood(gateway, upstream):
    g = gateway(CONFIG % upstream.addr)
    b = Bystander(g.port)
    s = raw_conn(g.port)
    block = b"\x82\x84\x86"  # :method GET, :path /, :scheme http
    data = frame(1, 0x1, 1, block)  # HEADERS, END_STREAM, no END_HEADERS
    lit = b"\x40" + hpack_int(3, 7) + b"x-a" + hpack_int(10, 7) + b"0123456789"
    data += b"".join(frame(9, 0, 1, lit) for _ in range(2000))  # CONTINUATION
    try:
        s.sendall(data)
    except OSError:
        pass
    expect_calm(s)
    b.finish()


def test_hpack_bomb(gateway, upstream):
    g = gateway(CONFIG % upstream.addr)
    b = Bystander(g.port)
    s = raw_conn(g.port)
    value = b"v" * 4000
    block = b"\x82\x84\x86"
    block += b"\x40" + hpack_int(5, 7) + b"x-big" + hpack_int(len(value), 7) + value
    block += b"\xbe" * 12000  # index 62: the big entry again, 4 kB each
    try:
        s.sendall(frame(1, 0x5, 1, block))  # END_STREAM | END_HEADERS
    except OSError:
        pass
    expect_calm(s)
    b.finish()
    assert "HPACK bomb" in g.stderr_text()


def test_normal_client_is_not_a_flood(gateway, upstream):
    """Hundreds of requests, some cancelled, a few PINGs: no GOAWAY."""
    g = gateway(CONFIG % upstream.addr)
    c = H2Conn(g.port)
    for i in range(300):
        sid = c.request("GET", "/echo?i=%d" % i)
        if i % 10 == 0:
            c.reset(sid)
        else:
            assert c.response(sid).status == 200
        if i % 50 == 0:
            c.h2.ping(b"%08d" % i)
            c.flush()
    assert c.goaway is None
    assert c.get("/hello").status == 200
