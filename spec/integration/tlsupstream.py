#!/usr/bin/env python3
"""upstream.py behind TLS, and the certificates the TLS tests need.

As a script:
    tlsupstream.py --port PORT --cert CERT --key KEY [--idle-timeout S]
serves exactly what upstream.py serves (same paths, same /__stats), each
connection wrapped in TLS (handshake on the connection's own thread, so a
stuck handshake blocks nobody). /__stats gains "handshakes" (completed TLS
handshakes) and "resumed" (how many of them resumed a session). Prints
"READY <port>" once listening.

As a module (for tests): make_pki(dir) writes a CA, a server certificate for
localhost / 127.0.0.1 signed by it, and a second CA with its own server
certificate, all with the openssl command line tool; TlsUpstream starts the
script as a subprocess and stops it by PID.
"""

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import upstream as upstream_mod  # noqa: E402


# --------------------------------------------------------------------------
# the server

class TlsStats(upstream_mod.Stats):
    def __init__(self):
        super().__init__()
        self.handshakes = 0
        self.resumed = 0

    def snapshot(self):
        s = super().snapshot()
        with self.lock:
            s["handshakes"] = self.handshakes
            s["resumed"] = self.resumed
        return s


class TlsConn(upstream_mod.Conn):
    def serve(self):
        try:
            self.sock.do_handshake()
        except (ssl.SSLError, OSError):
            try:
                self.sock.close()
            except OSError:
                pass
            return
        with self.server.stats.lock:
            self.server.stats.handshakes += 1
            if self.sock.session_reused:
                self.server.stats.resumed += 1
        super().serve()


class TlsServer(upstream_mod.Server):
    def __init__(self, host, port, idle_timeout, cert, key):
        super().__init__(host, port, idle_timeout)
        self.stats = TlsStats()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)

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
            try:
                tsock = self.ctx.wrap_socket(sock, server_side=True,
                                             do_handshake_on_connect=False)
            except (ssl.SSLError, OSError):
                sock.close()
                continue
            c = TlsConn(self, tsock, serial)
            threading.Thread(target=c.serve, daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--idle-timeout", type=float, default=60.0)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    a = ap.parse_args()
    srv = TlsServer(a.host, a.port, a.idle_timeout, a.cert, a.key)
    sys.stdout.write("READY %d\n" % srv.port)
    sys.stdout.flush()
    try:
        srv.run()
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------
# certificates

def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=str(cwd), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ca(d, name):
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=moongate test %s" % name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "%s.key" % name, "-out", "%s.pem" % name, cwd=d)


def _leaf(d, name, ca, sans):
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % name,
             "-keyout", "%s.key" % name, "-out", "%s.csr" % name, cwd=d)
    ext = Path(d) / ("%s.ext" % name)
    ext.write_text("subjectAltName=%s\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth\n" % sans)
    _openssl("x509", "-req", "-in", "%s.csr" % name, "-CA", "%s.pem" % ca,
             "-CAkey", "%s.key" % ca, "-CAcreateserial", "-days", "2",
             "-extfile", ext.name, "-out", "%s.pem" % name, cwd=d)


class Pki:
    """Paths: ca (the test CA), cert/key (localhost, 127.0.0.1, ::1; signed by
    ca), other_ca, other_cert/other_key (same names, signed by other_ca),
    name_cert/name_key (localhost only, no IP address; signed by ca)."""

    def __init__(self, d):
        d = Path(d)
        self.dir = d
        self.ca = d / "ca.pem"
        self.cert, self.key = d / "server.pem", d / "server.key"
        self.other_ca = d / "otherca.pem"
        self.other_cert, self.other_key = d / "other.pem", d / "other.key"
        self.name_cert, self.name_key = d / "nameonly.pem", d / "nameonly.key"


def make_pki(d):
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    sans = "DNS:localhost,IP:127.0.0.1,IP:::1"
    _ca(d, "ca")
    _leaf(d, "server", "ca", sans)
    _leaf(d, "nameonly", "ca", "DNS:localhost")
    _ca(d, "otherca")
    _leaf(d, "other", "otherca", sans)
    return Pki(d)


# --------------------------------------------------------------------------
# the subprocess

class TlsUpstream:
    def __init__(self, tmp, cert, key, idle_timeout=None):
        args = [sys.executable, "-B", str(HERE / "tlsupstream.py"), "--port", "0",
                "--cert", str(cert), "--key", str(key)]
        if idle_timeout is not None:
            args += ["--idle-timeout", str(idle_timeout)]
        self.log_path = Path(tmp) / ("tlsupstream-%d.log" % id(self))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log,
                                     stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError("tlsupstream.py did not start: %r\n%s"
                               % (line, self.log_path.read_text(errors="replace")))
        self.port = int(line.split()[1])

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def client_context(self, ca):
        ctx = ssl.create_default_context(cafile=str(ca))
        return ctx

    def get(self, path, ca):
        """One GET over TLS straight to the server (not through moongate)."""
        ctx = self.client_context(ca)
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\n"
                           "Connection: close\r\n\r\n" % path).encode())
                data = b""
                while True:
                    b = t.recv(65536)
                    if not b:
                        break
                    data += b
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def stats(self, ca):
        status, body = self.get("/__stats", ca)
        assert status == 200
        return json.loads(body)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc.stdout.close()
        self._log.close()


if __name__ == "__main__":
    main()
