"""Helpers for the Lua runtime tests (test_lua_*.py): configs that load the
test plugins in spec/integration/plugins/, plugin entries with inline Lua, and
a selector-driven client that keeps hundreds of requests in flight at once."""

import resource
import selectors
import socket
import time
from pathlib import Path

from conftest import Raw, config, lua, request, wait_for

PLUGINS = Path(__file__).resolve().parent / "plugins"


def plugin(name, **opts):
    """A route's plugin entry: { "name", opt = value, ... } (Raw values are Lua)."""
    parts = [lua(name)] + ["%s = %s" % (k, lua(v)) for k, v in opts.items()]
    return Raw("{ " + ", ".join(parts) + " }")


def hook(**phases):
    """The t_hook plugin with inline phase functions: hook(access="gw.sleep(1)")
    wraps each body in function(req) / function(req, res)."""
    opts = {}
    for phase, body in phases.items():
        args = "req" if phase == "access" else "req, res"
        opts[phase] = Raw("function(%s) %s end" % (args, body))
    return plugin("t_hook", **opts)


def handler(body):
    """A handler function from its Lua body text."""
    return Raw("function(req) %s end" % body)


def lua_config(routes, upstream=None, upstreams=None, plugin_path=None, **top):
    """A config with the test plugins on plugin_path; `upstream` (an Upstream)
    becomes upstreams.app."""
    ups = dict(upstreams or {})
    if upstream is not None:
        ups["app"] = {"servers": [upstream.addr], "keepalive": 16, "connect_timeout": 2,
                      "read_timeout": 10}
    if ups:
        top["upstreams"] = ups
    top["plugin_path"] = plugin_path if plugin_path is not None else [str(PLUGINS)]
    top.setdefault("workers", 1)
    return config(routes=routes, **top)


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Flight:
    """One request on its own nonblocking connection."""

    def __init__(self, i, data):
        self.i = i
        self.data = data
        self.sent = 0
        self.buf = b""
        self.status = None
        self.body = None
        self.headers = {}
        self.error = None
        self.t_done = None
        self.sock = None
        self.need = None  # total bytes of head + body once the head is known

    def parse(self):
        """True once a whole response (Content-Length framed) is in buf."""
        if self.need is None:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return False
            lines = self.buf[:i].decode("latin-1").split("\r\n")
            self.status = int(lines[0].split(" ")[1])
            for line in lines[1:]:
                n, _, v = line.partition(":")
                self.headers[n.strip().lower()] = v.strip()
            self.need = i + 4 + int(self.headers.get("content-length", "0"))
        if len(self.buf) >= self.need:
            self.body = self.buf[self.buf.find(b"\r\n\r\n") + 4:self.need]
            return True
        return False


def open_flights(port, requests, sel, connect_batch=200):
    """Connects one socket per request and registers them; returns the flights."""
    flights = []
    for i, data in enumerate(requests):
        if isinstance(data, str):
            data = data.encode("latin-1")
        f = Flight(i, data)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        f.sock = s
        sel.register(s, selectors.EVENT_WRITE, f)
        flights.append(f)
    return flights


def pump(sel, flights, deadline, until=None):
    """Drives the flights until all are done (or until() is true, or the
    deadline passes). Returns the number still open."""
    open_n = sum(1 for f in flights if f.t_done is None)
    while open_n and time.monotonic() < deadline:
        if until is not None and until():
            break
        for key, ev in sel.select(timeout=min(0.05, max(0.0, deadline - time.monotonic()))):
            f = key.data
            s = f.sock
            try:
                if ev & selectors.EVENT_WRITE:
                    if f.sent < len(f.data):
                        f.sent += s.send(f.data[f.sent:])
                    if f.sent >= len(f.data):
                        sel.modify(s, selectors.EVENT_READ, f)
                    continue
                chunk = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                f.error = e
                chunk = b""
            if chunk:
                f.buf += chunk
                if not f.parse():
                    continue
            elif f.error is None:
                f.error = "closed before a whole response (%d bytes)" % len(f.buf)
            f.t_done = time.monotonic()
            sel.unregister(s)
            s.close()
            open_n -= 1
    return open_n


def close_all(sel, flights):
    for f in flights:
        if f.t_done is None:
            try:
                sel.unregister(f.sock)
            except (KeyError, ValueError):
                pass
            f.sock.close()
    sel.close()


def run_flights(port, requests, timeout):
    """Sends every request on its own connection, all at once; returns the
    flights (each with .status, .body, .t_done, .error) after all finished or
    the timeout passed."""
    sel = selectors.DefaultSelector()
    flights = open_flights(port, requests, sel)
    try:
        pump(sel, flights, time.monotonic() + timeout)
    finally:
        close_all(sel, flights)
    return flights


def get(path, host="localhost", headers=()):
    hs = "".join("%s: %s\r\n" % h for h in headers)
    return "GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n" % (path, host, hs)


def gauges(admin):
    """The admin API's requests_active and lua_coroutines gauges."""
    out = {}
    for line in request(admin, "GET", "/metrics").text().splitlines():
        for name in ("moongate_requests_active", "moongate_lua_coroutines"):
            if line.startswith(name + " "):
                out[name] = int(line.split()[1])
    return out


def settled(admin):
    """Waits until nothing is in flight and no request coroutine is alive."""
    wait_for(lambda: gauges(admin) == {"moongate_requests_active": 0,
                                        "moongate_lua_coroutines": 0},
             timeout=8, what="requests_active and lua_coroutines back to 0")
