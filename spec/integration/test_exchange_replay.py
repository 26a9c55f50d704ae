"""The one replay rule of the upstream exchange (core/h1client.c), for both
its users, the proxy and gw.http: a request is sent again, once, on a fresh
connection only when a pooled connection failed before any response byte
and the request is idempotent or no byte of its body left yet.

The upstream here is a small real server that answers the first request on
each connection and closes the connection, without answering, when the
second request on it has arrived in full: the race a keep-alive client
loses when the server closes an idle connection just as it reuses it."""

import socket
import threading

import pytest

from conftest import Client, Raw, config, proxy_config, request, wait_for


class ClosingServer:
    def __init__(self, close_on_head=False):
        self.close_on_head = close_on_head  # close when the 2nd head arrived, before its body
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.lock = threading.Lock()
        self.serial = 0
        self.seen = []  # (connection, method, path, body) for every request that arrived
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.serial += 1
                serial = self.serial
            threading.Thread(target=self.serve, args=(c, serial), daemon=True).start()

    def serve(self, c, serial):
        buf = b""
        n = 0
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                cl = 0
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        cl = int(v)
                if n == 1 and self.close_on_head:
                    with self.lock:
                        self.seen.append((serial, method.decode(), path.decode(), None))
                    return
                while len(buf) < cl:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                body, buf = buf[:cl], buf[cl:]
                n += 1
                with self.lock:
                    self.seen.append((serial, method.decode(), path.decode(), body))
                if n == 2:
                    return  # closed with no answer
                out = b"conn %d req %d" % (serial, n)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
        except OSError:
            pass
        finally:
            c.close()

    def connections(self):
        with self.lock:
            return self.serial

    def requests_for(self, path):
        with self.lock:
            return [s for s in self.seen if s[2] == path]

    def stop(self):
        self.sock.close()


@pytest.fixture
def closing_server():
    s = ClosingServer()
    yield s
    s.stop()


@pytest.fixture
def head_closing_server():
    s = ClosingServer(close_on_head=True)
    yield s
    s.stop()


def test_proxy_replays_get_on_fresh_connection(gateway, closing_server):
    g = gateway(proxy_config([closing_server.addr], keepalive=4))
    r = request(g.port, "GET", "/a")
    assert r.status == 200 and r.body == b"conn 1 req 1"
    # connection 1 is pooled; the server closes it when /b arrives on it
    r = request(g.port, "GET", "/b")
    assert r.status == 200, r
    assert r.body == b"conn 2 req 1"
    assert [s[0] for s in closing_server.requests_for("/b")] == [1, 2]


def test_proxy_does_not_replay_post_whose_body_went(gateway, closing_server):
    g = gateway(proxy_config([closing_server.addr], keepalive=4))
    assert request(g.port, "GET", "/a").body == b"conn 1 req 1"
    r = request(g.port, "POST", "/pay", body=b"once")
    assert r.status == 502, r
    # the server saw it once, with its body, and no fresh connection was
    # opened for it: the next request is the first on connection 2
    assert closing_server.requests_for("/pay") == [(1, "POST", "/pay", b"once")]
    r = request(g.port, "GET", "/c")
    assert r.status == 200 and r.body == b"conn 2 req 1"


def test_proxy_replays_post_without_body(gateway, closing_server):
    # no body byte had left: the body is still entirely held
    g = gateway(proxy_config([closing_server.addr], keepalive=4))
    assert request(g.port, "GET", "/a").body == b"conn 1 req 1"
    r = request(g.port, "POST", "/ping", body=b"")
    assert r.status == 200, r
    assert r.body == b"conn 2 req 1"
    assert [s[0] for s in closing_server.requests_for("/ping")] == [1, 2]


def test_proxy_replays_post_whose_body_had_not_left(gateway, head_closing_server):
    # The server closes the pooled connection when the POST's head arrives;
    # its body is still with the client, so nothing of it left: replayed.
    srv = head_closing_server
    g = gateway(proxy_config([srv.addr], keepalive=4))
    assert request(g.port, "GET", "/a").body == b"conn 1 req 1"
    with Client(g.port) as c:
        c.send(b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        # the replay opens connection 2 before the body exists
        wait_for(lambda: srv.connections() == 2, what="the replay's fresh connection")
        c.send(b"body")
        r = c.read_response()
    assert r.status == 200, r
    assert r.body == b"conn 2 req 1"
    assert srv.requests_for("/late") == [(1, "POST", "/late", None), (2, "POST", "/late", b"body")]


HANDLER = """function(req)
  local m = req.query:match("m=(%%a+)")
  local body = req.query:match("b=(%%a*)")
  local r, err = gw.http.request{ method = m, url = "http://127.0.0.1:%d" .. req.path,
                                  body = body, timeout = 5 }
  if not r then return 502, "error: " .. err end
  return r.status, r.body
end"""


def test_gw_http_same_rule(gateway, closing_server):
    g = gateway(config(routes=[{"name": "call", "match": {"prefix": "/"},
                                "handler": Raw(HANDLER % closing_server.port)}]))
    assert request(g.port, "GET", "/a?m=GET").body == b"conn 1 req 1"
    # idempotent: replayed on a fresh connection
    r = request(g.port, "GET", "/b?m=GET")
    assert r.status == 200 and r.body == b"conn 2 req 1", r
    # a POST whose body went: not replayed
    r = request(g.port, "GET", "/pay?m=POST&b=once")
    assert r.status == 502 and r.body == b"error: connection closed", r
    assert closing_server.requests_for("/pay") == [(2, "POST", "/pay", b"once")]
    # a POST with an empty body (nothing of it left): replayed, as the proxy does
    assert request(g.port, "GET", "/c?m=GET").body == b"conn 3 req 1"
    r = request(g.port, "GET", "/ping?m=POST&b=")
    assert r.status == 200 and r.body == b"conn 4 req 1", r
    assert [s[0] for s in closing_server.requests_for("/ping")] == [3, 4]
