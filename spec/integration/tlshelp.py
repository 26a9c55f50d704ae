"""Helpers for the TLS listener tests: a throwaway CA and server certificates
made with the openssl CLI in the test's directory, and a raw HTTP/1.x client
over TLS (conftest's Client with its socket wrapped)."""

import socket
import ssl
import subprocess
from pathlib import Path

from conftest import Client


def openssl(*args, cwd):
    p = subprocess.run(["openssl", *args], cwd=str(cwd), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p


class CA:
    """A self-signed CA in directory d (ca.pem, ca.key)."""

    def __init__(self, d, name="moongate test CA"):
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.pem"
        self.key = self.dir / "ca.key"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
                "-subj", "/CN=" + name, cwd=self.dir)

    def issue(self, stem, cn="localhost", serial=1, chain=False):
        """stem.pem (certificate, for 127.0.0.1 and localhost) and stem.key.
        With chain, stem.pem holds the leaf followed by the CA certificate."""
        key = self.dir / (stem + ".key")
        csr = self.dir / (stem + ".csr")
        crt = self.dir / (stem + ".pem")
        ext = self.dir / (stem + ".ext")
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                       "basicConstraints=CA:FALSE\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", "/CN=" + cn, cwd=self.dir)
        openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey",
                str(self.key), "-set_serial", str(serial), "-out", str(crt), "-days", "2",
                "-extfile", str(ext), cwd=self.dir)
        if chain:
            crt.write_bytes(crt.read_bytes() + self.cert.read_bytes())
        return crt, key


def client_context(ca):
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class TlsClient(Client):
    """conftest.Client over TLS: same request/read_response/closed methods."""

    def __init__(self, port, ca, timeout=10.0, server_hostname="localhost"):
        super().__init__(port, timeout=timeout)
        self.raw = self.sock
        self.sock = client_context(ca).wrap_socket(self.raw, server_hostname=server_hostname)

    def peer_cert(self):
        return self.sock.getpeercert()

    def peer_serial(self):
        return int(self.sock.getpeercert()["serialNumber"], 16)


def tls_request(port, ca, method="GET", path="/", timeout=10.0, **kw):
    """One request on a fresh TLS connection; returns the Response."""
    with TlsClient(port, ca, timeout=timeout) as c:
        c.request(method, path, **kw)
        return c.read_response(method=method)


def peer_serial(port, ca):
    """The serial number of the certificate a fresh connection sees."""
    with TlsClient(port, ca) as c:
        return c.peer_serial()


def client_hello(ca):
    """The bytes of a real TLS ClientHello (from Python's ssl, in memory)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context(ca).wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    assert data[:1] == b"\x16", data[:10]  # a handshake record
    return data


def eof_within(sock, timeout):
    """True if the peer closes sock (EOF, RST or a TLS alert then EOF) within
    timeout; False if it stays open that long."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except socket.timeout:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
