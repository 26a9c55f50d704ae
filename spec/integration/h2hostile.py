"""A hostile HTTP/2 upstream for the gateway's h2 client engine: raw
sockets and hand-built frames (hpack for the header blocks), one thread per
connection. It reads the gateway's frames itself (no h2 state machine that
would refuse to send nonsense) and hands each request head to
`handler(conn, sid, headers)`, which writes whatever frames it likes.

Connection-level hostility is set on the server: `on_accept(conn)` runs
before anything is sent (return False to stop there: garbage instead of
SETTINGS, a TCP reset at accept), `settings` are the server's SETTINGS
entries, `window_updates=False` never opens a flow-control window.

Counters: connections, requests [(conn number, sid, path)], resets
[(conn number, sid, code)], goaways, closed."""

import socket
import struct
import threading
import time

import hpack

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


class Conn:
    """One accepted connection; the handler's way to write frames."""

    def __init__(self, srv, sock, num):
        self.srv = srv
        self.sock = sock
        self.num = num
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dead = False
        self.data = {}  # sid -> request body bytes received
        self.ended = set()  # sids whose request ended

    def send(self, b):
        if self.dead:
            return
        try:
            self.sock.sendall(b)
        except OSError:
            self.dead = True

    def frame(self, ftype, flags, sid, payload=b""):
        self.send(frame(ftype, flags, sid, payload))

    def block(self, headers):
        return self.enc.encode(headers)

    def headers(self, sid, headers, end=False):
        self.frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, self.block(headers))

    def body(self, sid, b, end=False):
        self.frame(DATA, END_STREAM if end else 0, sid, b)

    def rst(self, sid, code=2):
        self.frame(RST_STREAM, 0, sid, struct.pack(">I", code))

    def goaway(self, last, code=0):
        self.frame(GOAWAY, 0, 0, struct.pack(">II", last, code))

    def tcp_reset(self):
        """Closes with a TCP RST (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self):
        self.dead = True
        try:
            self.sock.close()
        except OSError:
            pass


class HostileH2:
    def __init__(self, port, handler, on_accept=None, settings=((3, 100),),
                 window_updates=True, silent=False):
        self.port = port
        self.handler = handler
        self.on_accept = on_accept
        self.settings = settings
        self.window_updates = window_updates
        self.silent = silent  # reads, never writes a byte
        self.lock = threading.Lock()
        self.connections = 0
        self.closed = 0
        self.requests = []
        self.resets = []
        self.goaways = 0
        self.conns = []
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.lsock.listen(64)
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def paths(self):
        with self.lock:
            return [p for (_, _, p) in self.requests]

    def _accept(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                c = Conn(self, s, self.connections)
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            self._run(c)
        except (OSError, ValueError, hpack.HPACKError):
            pass
        finally:
            c.close()
            with self.lock:
                self.closed += 1

    def _run(self, c):
        if self.on_accept and self.on_accept(c) is False:
            return
        if self.silent:
            while c.sock.recv(65536):
                pass
            return
        if self.settings is not None:
            c.frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in self.settings))
        buf = b""
        got_preface = False
        block, block_sid, block_flags = b"", 0, 0
        s = c.sock
        while not c.dead:
            d = s.recv(65536)
            if not d:
                return
            buf += d
            if not got_preface:
                if len(buf) < len(PREFACE):
                    continue
                if buf[:len(PREFACE)] != PREFACE:
                    return
                buf = buf[len(PREFACE):]
                got_preface = True
            while len(buf) >= 9 and not c.dead:
                n = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + n:
                    break
                t, fl = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7fffffff
                p = buf[9:9 + n]
                buf = buf[9 + n:]
                if t == SETTINGS and not fl & ACK:
                    c.frame(SETTINGS, ACK, 0)
                elif t == PING and not fl & ACK:
                    c.frame(PING, ACK, 0, p)
                elif t == RST_STREAM:
                    with self.lock:
                        self.resets.append((c.num, sid, int.from_bytes(p[:4], "big")))
                elif t == GOAWAY:
                    with self.lock:
                        self.goaways += 1
                elif t == DATA:
                    if fl & PADDED:
                        p = p[1:len(p) - p[0]]
                    c.data[sid] = c.data.get(sid, b"") + p
                    if fl & END_STREAM:
                        c.ended.add(sid)
                    if self.window_updates and n:
                        c.frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", n))
                        c.frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", n))
                elif t in (HEADERS, CONTINUATION):
                    if t == HEADERS:
                        if fl & PADDED:
                            p = p[1:len(p) - p[0]]
                        if fl & PRIO:
                            p = p[5:]
                        block, block_sid, block_flags = b"", sid, fl
                    block += p
                    if fl & END_HEADERS:
                        hs = [(k.decode() if isinstance(k, bytes) else k,
                               v.decode() if isinstance(v, bytes) else v)
                              for k, v in c.dec.decode(block)]
                        if block_flags & END_STREAM:
                            c.ended.add(block_sid)
                        path = dict(hs).get(":path", "")
                        with self.lock:
                            self.requests.append((c.num, block_sid, path))
                        self.handler(c, block_sid, hs)

    def wait_requests(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.requests) >= n:
                    return True
            time.sleep(0.01)
        raise TimeoutError("hostile upstream: %d requests expected, got %d"
                           % (n, len(self.requests)))

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.close()
