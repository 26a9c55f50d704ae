"""Hostile peers: upstreams that answer garbage or never finish, clients that
leave at the worst moment, and pipelines with a bad request in them. After
each, the gateway answers the next request, and its gauges (requests in
flight, request coroutines alive) are back to 0: nothing was left waiting."""
import socket
import struct
import threading
import time

import pytest

from conftest import Client, assert_json_error, is_sanitized_build, request, wait_for
from luahelp import handler, hook, lua_config, settled


# --------------------------------------------------------------------------
# a scripted upstream: reads one request head, then runs a script on the socket

class Scripted:
    def __init__(self, script):
        self.script = script
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            self.requests += 1
            self.script(c)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.sock.close()


def send_then(data, pace=0.0):
    def script(c):
        for piece in data if isinstance(data, list) else [data]:
            c.sendall(piece)
            if pace:
                time.sleep(pace)
        time.sleep(0.2)
    return script


def hang(head):
    def script(c):
        c.sendall(head)
        time.sleep(30)
    return script


def storm(c):
    for _ in range(3000):
        c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(0.005)


BAD_HEADS = {
    "cl_and_te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\n\r\n",
    "cl_negative": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello",
    "cl_huge": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nhello",
    "cl_conflicting": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "status_two_digits": b"HTTP/1.1 22 Odd\r\nContent-Length: 0\r\n\r\n",
    "status_zero": b"HTTP/1.1 0 Zero\r\nContent-Length: 0\r\n\r\n",
    "empty_field_name": b"HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 0\r\n\r\n",
    "head_over_limit": b"HTTP/1.1 200 OK\r\n" + b"".join(
        b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(70)) + b"Content-Length: 0\r\n\r\n",
    "switching_protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    "not_http": b"SSH-2.0-OpenSSH\r\n\r\n",
}


@pytest.fixture
def hostile(gateway, upstream):
    """start(script) -> (gateway, admin port, scripted upstream); route /bad/
    goes to the scripted upstream, everything else to a well-behaved one."""
    made = []

    def start(script, read_timeout=10, extra_routes=()):
        s = Scripted(script)
        made.append(s)
        ups = {"bad": {"servers": [s.addr], "keepalive": 4, "connect_timeout": 1,
                       "read_timeout": read_timeout, "retries": 0}}
        routes = list(extra_routes) + [
            {"match": {"prefix": "/bad/"}, "upstream": "bad"},
            {"match": {"prefix": "/"}, "upstream": "app"},
        ]
        text = lua_config(routes, upstream, upstreams=ups).replace(
            "return {", 'return {\n  admin = { addr = "127.0.0.1:$PORT1" },', 1)
        g = gateway(text, nports=2)
        return g, g.ports[1], s

    yield start
    for s in made:
        s.close()


def still_serves(g, admin):
    r = request(g.port, "GET", "/echo?after=1")
    assert r.status == 200 and r.json()["path"] == "/echo?after=1"
    settled(admin)


@pytest.mark.parametrize("name", sorted(BAD_HEADS))
def test_garbage_from_upstream_is_502(hostile, name):
    g, admin, s = hostile(send_then(BAD_HEADS[name]))
    r = request(g.port, "GET", "/bad/x")
    assert_json_error(r, 502)
    still_serves(g, admin)


def test_interim_response_storm_is_502(hostile):
    # 100 Continue every 5 ms: each one re-arms the read timeout, so without
    # a bound the request would wait as long as the upstream likes
    g, admin, s = hostile(storm, read_timeout=1)
    t0 = time.monotonic()
    r = request(g.port, "GET", "/bad/storm", timeout=20)
    assert_json_error(r, 502)
    assert time.monotonic() - t0 < 5
    still_serves(g, admin)


def _cut_after_head(g, path, timeout=15):
    """The response started (200 head) and the connection is then cut."""
    with Client(g.port, timeout=timeout) as c:
        c.request("GET", path)
        head = c.read_head()
        assert head.status == 200, head
        # whatever body bytes came, the client can tell the response is cut:
        # no last chunk, fewer bytes than the length said, then the close
        rest = c.buf
        c.sock.settimeout(timeout)
        try:
            while True:
                d = c.sock.recv(65536)
                if not d:
                    break
                rest += d
        except ConnectionResetError:
            pass
        assert not rest.endswith(b"0\r\n\r\n") and len(rest) < 100, rest


@pytest.mark.parametrize("body", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"zz\r\n"],
], ids=["closes_mid_chunk", "closes_short_of_length", "bad_chunk_size_later"])
def test_upstream_fails_after_the_head_cuts_the_client(hostile, body):
    g, admin, s = hostile(send_then(body, pace=0.2))
    _cut_after_head(g, "/bad/x")
    still_serves(g, admin)


def test_response_that_never_ends_times_out(hostile):
    g, admin, s = hostile(hang(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart"),
                          read_timeout=1)
    t0 = time.monotonic()
    _cut_after_head(g, "/bad/x")
    assert time.monotonic() - t0 < 5
    still_serves(g, admin)


# --------------------------------------------------------------------------
# the abort matrix: the client leaves while the request waits on something

def _blackhole():
    """A port whose connects hang: a listener that never accepts, its
    backlog filled."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(ls.getsockname())
        except BlockingIOError:
            pass
        fillers.append(f)
    time.sleep(0.1)
    return ls, fillers


ABORT_POINTS = ["sleep", "gw_http", "upstream_connect", "upstream_body", "held_response",
                "req_body", "log_phase"]


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_abort_matrix(gateway, upstream, rst):
    ls, fillers = _blackhole()
    try:
        slow = "http://%s/slow/3000" % upstream.addr
        routes = [
            {"match": {"path": "/sleep"}, "handler": handler("gw.sleep(3) return 200, 'late'")},
            {"match": {"path": "/gw_http"},
             "handler": handler("local r = gw.http.request{ url = %r, timeout = 5 } "
                                "return 200, 'x'" % slow)},
            {"match": {"path": "/upstream_connect"}, "upstream": "hole"},
            {"match": {"prefix": "/drip/"}, "upstream": "app"},
            {"match": {"prefix": "/held/"}, "upstream": "app",
             "plugins": [hook(response="gw.sleep(3)")]},
            {"match": {"path": "/req_body"}, "handler": handler("return 200, req:body()")},
            {"match": {"path": "/log_phase"}, "plugins": [hook(log="gw.sleep(1)")],
             "handler": handler("return 200, 'ok'")},
            {"match": {"prefix": "/"}, "upstream": "app"},
        ]
        ups = {"hole": {"servers": ["127.0.0.1:%d" % ls.getsockname()[1]],
                        "connect_timeout": 5, "read_timeout": 5, "retries": 0}}
        text = lua_config(routes, upstream, upstreams=ups).replace(
            "return {", 'return {\n  admin = { addr = "127.0.0.1:$PORT1" },', 1)
        g = gateway(text, nports=2)
        admin = g.ports[1]
        reqs = {
            "sleep": Client.build("GET", "/sleep"),
            "gw_http": Client.build("GET", "/gw_http"),
            "upstream_connect": Client.build("GET", "/upstream_connect"),
            "upstream_body": Client.build("GET", "/drip/50/100"),
            "held_response": Client.build("GET", "/held/echo"),
            "req_body": b"POST /req_body HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npart",
            "log_phase": Client.build("GET", "/log_phase"),
        }
        for point in ABORT_POINTS:
            socks = []
            for _ in range(5):
                c = socket.create_connection(("127.0.0.1", g.port), timeout=5)
                c.sendall(reqs[point])
                socks.append(c)
            time.sleep(0.3)  # every request is waiting now
            if point == "upstream_body":
                for c in socks:
                    assert c.recv(100).startswith(b"HTTP/1.1 200")
            for c in socks:
                if rst:
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            settled(admin)
            r = request(g.port, "GET", "/echo?after=%s" % point)
            assert r.status == 200, (point, r)
        time.sleep(0.5)  # past nothing in particular: late callbacks would land now
        settled(admin)
        errors = [l for l in g.stderr_text().splitlines() if "[error]" in l]
        assert not errors, errors[:5]
    finally:
        for f in fillers:
            f.close()
        ls.close()


# --------------------------------------------------------------------------
# hostile clients

def test_pipeline_with_a_malformed_request(gateway, upstream):
    text = lua_config([{"match": {"prefix": "/"}, "upstream": "app"}], upstream)
    g = gateway(text)
    data = (Client.build("GET", "/echo?n=1") + Client.build("GET", "/echo?n=2")
            + b"GET /bad HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"
            + Client.build("GET", "/echo?n=3"))
    with Client(g.port) as c:
        c.send(data)
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
        assert (r1.status, r2.status) == (200, 200)
        assert r1.json()["path"] == "/echo?n=1" and r2.json()["path"] == "/echo?n=2"
        assert_json_error(r3, 400)
        assert c.closed()
    assert upstream.stats()["log"] == [["GET", "/echo?n=1"], ["GET", "/echo?n=2"]]


def test_slowloris_gets_408_and_others_are_served(gateway, upstream):
    text = lua_config([{"match": {"prefix": "/"}, "upstream": "app"}], upstream,
                      limits={"header_timeout": 2})
    g = gateway(text)
    head = Client.build("GET", "/echo?slow=1")
    socks = [socket.create_connection(("127.0.0.1", g.port), timeout=5) for _ in range(200)]
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 3.5:
        for c in socks:
            try:
                c.send(head[i:i + 1])
            except OSError:
                pass
        i += 1
        r = request(g.port, "GET", "/echo?fast=1", timeout=2)
        assert r.status == 200
        time.sleep(0.5)
    answered = 0
    for c in socks:
        c.settimeout(3)
        data = b""
        try:
            while True:
                d = c.recv(4096)
                if not d:
                    break
                data += d
        except OSError:
            pass
        if data.startswith(b"HTTP/1.1 408"):
            answered += 1
        c.close()
    assert answered == len(socks)
    assert ["GET", "/echo?slow=1"] not in upstream.stats()["log"]


BIG_HANDLER = {"match": {"path": "/big"},
               "handler": handler('return 200, string.rep("x", 100000)')}


def test_pipelining_without_reading_does_not_grow_memory(gateway, upstream):
    # 31-byte requests for 100 kB answers, never read: the gateway stops
    # taking requests once the answers queue up, instead of queueing them all
    g = gateway(lua_config([BIG_HANDLER], upstream))
    s = socket.create_connection(("127.0.0.1", g.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    req = Client.build("GET", "/big") * 1000
    base = g.rss_kb()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:
        try:
            s.send(req)
        except BlockingIOError:
            time.sleep(0.01)
    grown = g.rss_kb() - base
    s.close()
    # before the fix: hundreds of MB within these 3 s
    if not is_sanitized_build():
        assert grown < 40 * 1024, "RSS grew by %d kB" % grown
    assert request(g.port, "GET", "/big").status == 200


def test_pipelined_answers_all_arrive_when_read_late(gateway, upstream):
    # the other side of the bound: held requests go on as the client reads,
    # in order, and a half-close after the last request loses nothing
    g = gateway(lua_config([BIG_HANDLER], upstream))
    n = 60
    with Client(g.port, timeout=20) as c:
        c.send(Client.build("GET", "/big") * n)
        c.sock.shutdown(socket.SHUT_WR)
        time.sleep(0.5)
        for _ in range(n):
            r = c.read_response()
            assert r.status == 200 and len(r.body) == 100000
        assert c.closed()


def test_half_close_after_the_request_gets_the_whole_answer(gateway, upstream):
    # the answer is queued whole (a handler's), the client half-closes while
    # it is still going out: it used to be cut where the queue stood
    routes = [{"match": {"path": "/huge"},
               "handler": handler('return 200, string.rep("x", 20000000)')}]
    g = gateway(lua_config(routes, upstream))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(Client.build("GET", "/huge"))
    time.sleep(0.3)
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
    got = bytearray()
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        got += d
    s.close()
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == 20000000, (head[:100], len(body))


def test_client_that_stops_reading_a_closing_answer_is_timed_out(gateway, upstream):
    # "Connection: close" (or HTTP/1.0): the last answer used to go out with
    # no timeout at all, so a client that never read it held the connection
    # and the queued answer for ever
    routes = [{"match": {"path": "/huge"},
               "handler": handler('return 200, string.rep("x", 20000000)')}]
    g = gateway(lua_config(routes, upstream, limits={"idle_timeout": 1}))
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /huge HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    # never read: the gateway gives up on it after idle_timeout
    wait_for(lambda: "client idle" in g.stderr_text(), timeout=5,
             what="the client that stopped reading closed after idle_timeout")
    s.close()

    assert request(g.port, "GET", "/nothing-here").status == 404  # still serving
