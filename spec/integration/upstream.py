#!/usr/bin/env python3
"""A small real HTTP/1.1 origin server for moongate's integration tests.

Standard library only; one thread per connection; keep-alive (HTTP/1.1 by
default, HTTP/1.0 with "Connection: keep-alive"); Content-Length and chunked
request bodies (with trailers); answers "HTTP/1.1 100 Continue" before reading
a body when the request carries "Expect: 100-continue", as nginx does.

    upstream.py --port PORT [--host 127.0.0.1] [--idle-timeout SECONDS]

Behaviour by path (the query string never changes which behaviour runs):

  /echo            200, JSON {method, path (with query), headers ([name, value]
                   in received order), body (latin-1 string), http_version,
                   port, framing ("content-length" | "chunked" | "none")}.
                   Any path not listed here behaves as /echo.
  /upload          reads the body without keeping it; 200, JSON {length, sha256,
                   framing, headers}.
  /status/NNN      status NNN; 204 and 304 carry no body, others a short JSON one.
  /bytes/N         N bytes (the deterministic pattern of pattern_stream()) with
                   Content-Length, written in 64 KiB pieces (N up to 200 MB and
                   more, never held in memory).
  /chunked/N       the same N bytes, chunked (chunk size from ?chunk=K, default
                   65536; ?trailer=1 adds a trailer field "X-Trailer: yes").
  /close/N         the same N bytes with neither Content-Length nor chunked:
                   the end of the body is the close of the connection.
  /slow/MS         waits MS milliseconds, then answers as /echo.
  /drip/N/MS       chunked: N chunks "chunk I\n" (I from 0), MS milliseconds
                   apart (the first one at once).
  /garbage         writes "NOT HTTP\\r\\n\\r\\n" and closes.
  /reset           closes abruptly (SO_LINGER 0, so the peer sees a RST) and
                   answers nothing.
  /half            headers with Content-Length: 1000, then 10 bytes, then close.
  /__stats         200, JSON {connections, requests, accepted, open, inflight,
                   max_inflight, log}. Requests to /__stats are not counted, and a
                   connection whose first request is /__stats is not counted:
                     connections  TCP connections accepted that carried a counted
                                  request, plus those closed without any request
                     accepted     every TCP connection accepted
                     open         counted connections still open
                     requests     counted requests received
                     inflight     counted requests being handled right now
                     max_inflight the highest inflight seen
                     log          [method, target] of the last 1000 counted requests

Modifiers in the query string, valid with every behaviour above:

  delay=MS         wait MS milliseconds before answering.
  hdr=Name:Value   add a response header field (repeatable).
  close=1          send "Connection: close" and close after the response.

HEAD is answered with the headers the GET would have had, and no body.
Every response carries X-Upstream-Port (this server's port), X-Upstream-Conn
(the serial number of the TCP connection, from 1) and X-Upstream-Req (the
number of the request on that connection, from 1).
"""

import argparse
import hashlib
import json
import socket
import struct
import sys
import threading
import time
from urllib.parse import parse_qsl, urlsplit

PIECE = 65536
MAX_HEAD = 1 << 20

_BLOCK = None


def pattern_block():
    """The 64 KiB block that /bytes, /chunked and /close repeat."""
    global _BLOCK
    if _BLOCK is None:
        out = bytearray()
        h = b"moongate"
        while len(out) < PIECE:
            h = hashlib.sha256(h).digest()
            out += h
        _BLOCK = bytes(out[:PIECE])
    return _BLOCK


def pattern_stream(n):
    """Yields the n bytes of the /bytes/n body in pieces of at most 64 KiB."""
    block = pattern_block()
    while n > 0:
        k = min(n, PIECE)
        yield block if k == PIECE else block[:k]
        n -= k


def pattern_bytes(n):
    return b"".join(pattern_stream(n))


def pattern_sha256(n):
    h = hashlib.sha256()
    for piece in pattern_stream(n):
        h.update(piece)
    return h.hexdigest()


REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    418: "I'm a teapot", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}


class Closed(Exception):
    pass


class BadRequest(Exception):
    pass


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.accepted = 0
        self.connections = 0
        self.open = 0
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0
        self.log = []

    def snapshot(self):
        with self.lock:
            return {
                "connections": self.connections, "requests": self.requests,
                "accepted": self.accepted, "open": self.open,
                "inflight": self.inflight, "max_inflight": self.max_inflight,
                "log": list(self.log),
            }


class Conn:
    def __init__(self, server, sock, serial):
        self.server = server
        self.sock = sock
        self.serial = serial
        self.buf = b""
        self.nreq = 0
        self.counted = False

    # -- reading -----------------------------------------------------------
    def fill(self):
        data = self.sock.recv(PIECE)
        if not data:
            raise Closed()
        self.buf += data

    def read_line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            if len(self.buf) > MAX_HEAD:
                raise BadRequest("line too long")
            self.fill()

    def read_exact_into(self, n, sink):
        while n > 0:
            if not self.buf:
                self.fill()
            take = self.buf[:n]
            self.buf = self.buf[len(take):]
            n -= len(take)
            sink(take)

    def read_head(self, first):
        """Returns (method, target, version, headers) or None on a clean EOF."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            if len(self.buf) > MAX_HEAD:
                raise BadRequest("head too long")
            if first:
                self.sock.settimeout(None)
            else:
                self.sock.settimeout(self.server.idle_timeout)
            try:
                data = self.sock.recv(PIECE)
            except socket.timeout:
                raise Closed()
            finally:
                self.sock.settimeout(None)
            if not data:
                if self.buf.strip():
                    raise BadRequest("truncated head")
                raise Closed()
            self.buf += data
        head, self.buf = self.buf[:i], self.buf[i + 4:]
        lines = head.split(b"\r\n")
        while lines and lines[0] == b"":       # tolerate stray CRLF between requests
            lines.pop(0)
        if not lines:
            raise BadRequest("empty head")
        parts = lines[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            raise BadRequest("bad request line")
        method, target, version = parts
        headers = []
        for line in lines[1:]:
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest("bad header line")
            headers.append([name, value.strip(" \t")])
        return method, target, version, headers

    def read_body(self, headers, sink):
        te = ",".join(v for n, v in headers if n.lower() == "transfer-encoding")
        cls = [v for n, v in headers if n.lower() == "content-length"]
        if te:
            if te.replace(" ", "").lower().split(",")[-1] != "chunked":
                raise BadRequest("unsupported transfer-encoding")
            while True:
                line = self.read_line()
                size_s = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    raise BadRequest("bad chunk size")
                if size == 0:
                    while self.read_line() != b"":   # trailers
                        pass
                    return "chunked"
                self.read_exact_into(size, sink)
                if self.read_line() != b"":
                    raise BadRequest("bad chunk end")
        if cls:
            try:
                n = int(cls[0])
            except ValueError:
                raise BadRequest("bad content-length")
            self.read_exact_into(n, sink)
            return "content-length"
        return "none"

    # -- writing -----------------------------------------------------------
    def send(self, data):
        self.sock.sendall(data)

    def head_bytes(self, status, headers, version="HTTP/1.1"):
        out = ["%s %d %s\r\n" % (version, status, REASONS.get(status, "Status"))]
        for n, v in headers:
            out.append("%s: %s\r\n" % (n, v))
        out.append("\r\n")
        return "".join(out).encode("latin-1")

    # -- the request loop --------------------------------------------------
    def serve(self):
        st = self.server.stats
        first = True
        try:
            while True:
                try:
                    req = self.read_head(first)
                except Closed:
                    return
                except (BadRequest, UnicodeDecodeError):
                    self.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                              b"Connection: close\r\n\r\n")
                    return
                method, target, version, headers = req
                path = urlsplit(target).path
                is_stats = path == "/__stats"
                if first:
                    first = False
                    if not is_stats:
                        self.counted = True
                        with st.lock:
                            st.connections += 1
                            st.open += 1
                self.nreq += 1
                if not is_stats:
                    with st.lock:
                        st.requests += 1
                        st.inflight += 1
                        st.max_inflight = max(st.max_inflight, st.inflight)
                        st.log.append([method, target])
                        del st.log[:-1000]
                try:
                    keep = self.handle(method, target, version, headers)
                finally:
                    if not is_stats:
                        with st.lock:
                            st.inflight -= 1
                if not keep:
                    return
        except (Closed, ConnectionError, BrokenPipeError, OSError, BadRequest):
            return
        finally:
            with st.lock:
                if self.counted:
                    st.open -= 1
                elif self.nreq == 0:
                    st.connections += 1
            try:
                self.sock.close()
            except OSError:
                pass

    def handle(self, method, target, version, headers):
        split = urlsplit(target)
        path = split.path
        query = parse_qsl(split.query, keep_blank_values=True)
        q = {}
        extra = []
        for k, v in query:
            q.setdefault(k, v)
            if k == "hdr":
                name, _, value = v.partition(":")
                extra.append((name, value.strip()))
        hget = {}
        for n, v in headers:
            hget.setdefault(n.lower(), v)
        conn_tokens = [t.strip().lower() for n, v in headers if n.lower() == "connection"
                       for t in v.split(",")]
        if version == "HTTP/1.1":
            keep = "close" not in conn_tokens
        else:
            keep = "keep-alive" in conn_tokens
        if q.get("close") == "1":
            keep = False
        has_body = ("transfer-encoding" in hget or
                    int(hget.get("content-length", "0") or 0) > 0)
        if has_body and hget.get("expect", "").lower() == "100-continue":
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

        parts = path.split("/")
        kind = parts[1] if len(parts) > 1 else ""
        arg = parts[2] if len(parts) > 2 else ""

        # The body first, so that the connection stays in sync.
        body = bytearray()
        digest = hashlib.sha256()
        length = [0]
        if kind == "upload":
            def sink(b):
                digest.update(b)
                length[0] += len(b)
        else:
            sink = body.extend
        framing = self.read_body(headers, sink)

        delay = int(q.get("delay", "0") or 0)
        if kind == "slow":
            delay += int(arg or 0)
        if delay:
            time.sleep(delay / 1000.0)

        std = [("X-Upstream-Port", str(self.server.port)),
               ("X-Upstream-Conn", str(self.serial)),
               ("X-Upstream-Req", str(self.nreq))]
        if not keep:
            std.append(("Connection", "close"))
        std += extra
        is_head = method == "HEAD"

        def reply(status, ctype, payload):
            hs = [("Content-Type", ctype), ("Content-Length", str(len(payload)))] + std
            self.send(self.head_bytes(status, hs) + (b"" if is_head else payload))
            return keep

        if path == "/__stats":
            return reply(200, "application/json",
                         json.dumps(self.server.stats.snapshot()).encode())
        if kind == "status":
            status = int(arg)
            if status in (204, 304):
                self.send(self.head_bytes(status, std))
                return keep
            return reply(status, "application/json",
                         json.dumps({"status": status}).encode())
        if kind == "bytes":
            n = int(arg)
            hs = [("Content-Type", "application/octet-stream"),
                  ("Content-Length", str(n))] + std
            head = self.head_bytes(200, hs)
            if is_head or n == 0:
                self.send(head)
                return keep
            first = True
            for piece in pattern_stream(n):
                self.send(head + piece if first else piece)
                first = False
            return keep
        if kind == "chunked":
            n = int(arg)
            csize = int(q.get("chunk", PIECE))
            trailer = q.get("trailer") == "1"
            hs = [("Content-Type", "application/octet-stream"),
                  ("Transfer-Encoding", "chunked")] + std
            if trailer:
                hs.append(("Trailer", "X-Trailer"))
            head = self.head_bytes(200, hs)
            if is_head:
                self.send(head)
                return keep
            out = [head]
            pending = len(head)
            data = pattern_bytes(n) if n <= (4 << 20) else None
            if data is None:
                stream = pattern_stream(n)
                chunks = (p[i:i + csize] for p in stream for i in range(0, len(p), csize))
            else:
                chunks = (data[i:i + csize] for i in range(0, n, csize))
            for c in chunks:
                out.append(b"%x\r\n" % len(c) + c + b"\r\n")
                pending += len(c)
                if pending >= PIECE:
                    self.send(b"".join(out))
                    out, pending = [], 0
            out.append(b"0\r\n" + (b"X-Trailer: yes\r\n" if trailer else b"") + b"\r\n")
            self.send(b"".join(out))
            return keep
        if kind == "drip":
            n = int(arg)
            ms = int(parts[3]) if len(parts) > 3 else 100
            hs = [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")] + std
            self.send(self.head_bytes(200, hs))
            if is_head:
                return keep
            for i in range(n):
                if i:
                    time.sleep(ms / 1000.0)
                c = b"chunk %d\n" % i
                self.send(b"%x\r\n%s\r\n" % (len(c), c))
            self.send(b"0\r\n\r\n")
            return keep
        if kind == "close":
            n = int(arg)
            hs = [("Content-Type", "application/octet-stream")] + \
                 [h for h in std if h[0] != "Connection"] + [("Connection", "close")]
            head = self.head_bytes(200, hs)
            if is_head:
                self.send(head)
                return False
            first = True
            for piece in pattern_stream(n):
                self.send(head + piece if first else piece)
                first = False
            if n == 0:
                self.send(head)
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return False
        if kind == "garbage":
            self.send(b"NOT HTTP\r\n\r\n")
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return False
        if kind == "reset":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if kind == "half":
            hs = [("Content-Type", "application/octet-stream"),
                  ("Content-Length", "1000")] + std
            self.send(self.head_bytes(200, hs) + b"0123456789")
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return False
        if kind == "upload":
            return reply(200, "application/json", json.dumps({
                "length": length[0], "sha256": digest.hexdigest(),
                "framing": framing, "headers": headers,
            }).encode())
        # /echo, /slow/MS and everything else.
        return reply(200, "application/json", json.dumps({
            "method": method, "path": target, "headers": headers,
            "body": bytes(body).decode("latin-1"), "http_version": version,
            "port": self.server.port, "framing": framing,
        }).encode())


class Server:
    def __init__(self, host, port, idle_timeout):
        self.stats = Stats()
        self.idle_timeout = idle_timeout
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(1024)
        self.port = self.lsock.getsockname()[1]

    def run(self):
        serial = 0
        while True:
            try:
                sock, _ = self.lsock.accept()
            except InterruptedError:
                continue
            serial += 1
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.stats.lock:
                self.stats.accepted += 1
            c = Conn(self, sock, serial)
            threading.Thread(target=c.serve, daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--idle-timeout", type=float, default=60.0)
    a = ap.parse_args()
    srv = Server(a.host, a.port, a.idle_timeout)
    sys.stdout.write("READY %d\n" % srv.port)
    sys.stdout.flush()
    try:
        srv.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
