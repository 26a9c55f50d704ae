"""A tiny authoritative DNS server for tests: UDP on a free loopback port,
answers A queries from a dict the test changes while it runs (AAAA: no
records; unknown names: NXDOMAIN; `fail = True`: SERVFAIL for everything).
Enough for c-ares to resolve against (`resolver = { "127.0.0.1:PORT" }`)."""
import socket
import struct
import threading


class FakeDNS:
    def __init__(self, records=None):
        self.records = dict(records or {})  # name (lower case, no dot) -> [ipv4, ...]
        self.fail = False
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stopped:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(data)
            except Exception:  # a malformed query: no answer
                continue
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, q):
        qid, flags, qd = struct.unpack("!HHH", q[:6])
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode().lower())
            i += 1 + q[i]
        i += 1
        qtype, qclass = struct.unpack("!HH", q[i:i + 4])
        question = q[12:i + 4]
        name = ".".join(labels)
        self.queries.append((name, qtype))
        rd = flags & 0x0100
        if self.fail:
            return struct.pack("!HHHHHH", qid, 0x8000 | rd | 0x0080 | 2, 1, 0, 0, 0) + question
        ips = self.records.get(name)
        if ips is None:
            return struct.pack("!HHHHHH", qid, 0x8400 | rd | 0x0080 | 3, 1, 0, 0, 0) + question
        answers = b""
        n = 0
        if qtype == 1:
            for ip in ips:
                answers += struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(ip)
                n += 1
        return struct.pack("!HHHHHH", qid, 0x8400 | rd | 0x0080, 1, n, 0, 0) + question + answers

    def stop(self):
        self.stopped = True
        self.thread.join(2)
        self.sock.close()
