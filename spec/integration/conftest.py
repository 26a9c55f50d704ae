"""Fixtures and helpers for moongate's black-box integration tests.

Run:  /usr/bin/python3 -m pytest spec/integration
      MOONGATE_BIN=build-asan/moongate /usr/bin/python3 -m pytest spec/integration

MOONGATE_BIN is the binary under test (default build/moongate); a relative
path is taken from the repository root.

Fixtures:
  upstream            one upstream.py server on a free loopback port
  upstream_factory    start more of them: upstream_factory(idle_timeout=...)
  gateway             factory: gateway(config_text) starts moongate on it and
                      returns a Gateway (.port, .ports, .proc, .stderr_text(),
                      .stdout_text()); "$PORT" (= "$PORT0"; "$PORT1", ... for more) in
                      the text become free ports, "$DIR" the test's directory.
                      At teardown: SIGTERM, then the test fails if moongate did
                      not exit 0 within 10 s or if a sanitizer reported anything.
  run_moongate        run the binary to completion with arguments (for -t, --version).

Helpers: free_port, lua (Python values to Lua text), proxy_config, Client
(raw socket HTTP/1.x client, pipelining), request (one request on a fresh
connection), curl, wait_for, proc_status_kb.
"""

import hashlib
import json
import os
import re
import resource
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.dont_write_bytecode = True

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import upstream as upstream_mod  # noqa: E402

pattern_sha256 = upstream_mod.pattern_sha256
pattern_bytes = upstream_mod.pattern_bytes

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer",
                   "ERROR: UndefinedBehaviorSanitizer")


def moongate_bin():
    p = Path(os.environ.get("MOONGATE_BIN", "build/moongate"))
    if not p.is_absolute():
        p = REPO / p
    return p


_ASAN = None


def is_sanitized_build():
    """True when the binary under test is built with ASan (memory numbers mean
    nothing there: the quarantine keeps freed memory on purpose)."""
    global _ASAN
    if _ASAN is None:
        try:
            _ASAN = b"__asan_init" in moongate_bin().read_bytes()
        except OSError:
            _ASAN = False
    return _ASAN


def require_binary():
    b = moongate_bin()
    if not (b.is_file() and os.access(b, os.X_OK)):
        pytest.fail("moongate binary not found at %s (build it, or set MOONGATE_BIN)" % b,
                    pytrace=False)
    return b


# --------------------------------------------------------------------------
# ports and polling

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def can_connect(port, host="127.0.0.1", probe=None):
    """True if port accepts a connection (and, with probe bytes, answers them)."""
    try:
        s = socket.create_connection((host, port), timeout=0.5)
    except OSError:
        return False
    try:
        if probe:
            s.settimeout(5)
            s.sendall(probe)
            while s.recv(65536):
                pass
    except OSError:
        return False
    finally:
        s.close()
    return True


def wait_for(pred, timeout=5.0, interval=0.02, what="condition"):
    """Polls pred() until it returns a true value; returns that value or fails."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def wait_listening(port, proc, timeout, what, stderr_path=None, probe=None):
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = ""
            if stderr_path:
                err = Path(stderr_path).read_text(errors="replace")
            pytest.fail("%s exited with %s before listening on %d\n%s"
                        % (what, proc.returncode, port, err), pytrace=False)
        if can_connect(port, probe=probe):
            return
        if time.monotonic() > deadline:
            pytest.fail("%s not listening on %d after %ss" % (what, port, timeout),
                        pytrace=False)
        time.sleep(0.01)


def stop_proc(proc):
    """SIGTERM, then SIGKILL after 5 s; waits for the process."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def proc_status_kb(pid, field):
    """VmRSS, VmHWM, ... of /proc/PID/status, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


# --------------------------------------------------------------------------
# the upstream

class Upstream:
    def __init__(self, tmp, idle_timeout=None):
        self.port = free_port()
        args = [sys.executable, "-B", str(HERE / "upstream.py"), "--port", str(self.port)]
        if idle_timeout is not None:
            args += ["--idle-timeout", str(idle_timeout)]
        self.log_path = Path(tmp) / ("upstream-%d.log" % self.port)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._log,
                                     stdin=subprocess.DEVNULL)
        # The probe asks for /__stats, so it is not counted as a connection.
        wait_listening(self.port, self.proc, 10, "upstream.py", self.log_path,
                       probe=b"GET /__stats HTTP/1.1\r\nHost: probe\r\n"
                             b"Connection: close\r\n\r\n")

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stats(self):
        r = request(self.port, "GET", "/__stats")
        assert r.status == 200
        return r.json()

    def stop(self):
        stop_proc(self.proc)
        self._log.close()


@pytest.fixture
def upstream_factory(tmp_path):
    started = []

    def make(idle_timeout=None):
        u = Upstream(tmp_path, idle_timeout)
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


@pytest.fixture
def upstream(upstream_factory):
    return upstream_factory()


# --------------------------------------------------------------------------
# the gateway

class Gateway:
    def __init__(self, bin_path, cfg_path, ports, workdir, args=(), env=None, pass_c=True):
        self.ports = ports
        self.port = ports[0] if ports else None
        self.dir = Path(workdir)
        self.config_path = Path(cfg_path)
        self.stderr_path = self.dir / ("moongate-%s.stderr" % (self.port or "x"))
        self.stdout_path = self.dir / ("moongate-%s.stdout" % (self.port or "x"))
        self._err = open(self.stderr_path, "wb")
        self._out = open(self.stdout_path, "wb")
        self.returncode = None

        def limit_nofile():
            # Start from the usual default soft limit so that raising it is observable.
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))

        e = dict(os.environ)
        if env:
            e.update(env)
        argv = [str(bin_path), *args] + (["-c", str(cfg_path)] if pass_c else [])
        self.proc = subprocess.Popen(argv,
                                     stdout=self._out, stderr=self._err,
                                     stdin=subprocess.DEVNULL, cwd=str(self.dir),
                                     preexec_fn=limit_nofile, env=e)

    @property
    def pid(self):
        return self.proc.pid

    def stderr_text(self):
        return self.stderr_path.read_text(errors="replace")

    def stdout_text(self):
        return self.stdout_path.read_text(errors="replace")

    def rss_kb(self):
        return proc_status_kb(self.pid, "VmRSS")

    def hwm_kb(self):
        return proc_status_kb(self.pid, "VmHWM")

    def stop(self, timeout=10):
        """SIGTERM, wait; returns the exit status (negative: signal)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                self.returncode = "timeout"
                return self.returncode
        if self.returncode is None:
            self.returncode = self.proc.returncode
        self._err.close()
        self._out.close()
        return self.returncode

    def check_clean(self):
        """The checks every test gets at teardown: exit 0, no sanitizer report."""
        rc = self.stop()
        err = self.stderr_text()
        problems = []
        if rc == "timeout":
            problems.append("moongate did not exit within 10 s of SIGTERM (killed)")
        elif rc < 0:
            problems.append("moongate died with signal %d" % -rc)
        elif rc != 0:
            problems.append("moongate exited %d after SIGTERM (expected 0)" % rc)
        for mark in SANITIZER_MARKS:
            if mark in err:
                problems.append("sanitizer report in stderr: %r" % mark)
        if problems:
            tail = err[-6000:]
            pytest.fail("; ".join(problems) + "\n--- moongate stderr (tail) ---\n" + tail,
                        pytrace=False)


def subst(config_text, ports, workdir):
    mapping = {"DIR": str(workdir)}
    for i, p in enumerate(ports):
        mapping["PORT%d" % i] = str(p)
    if ports:
        mapping["PORT"] = str(ports[0])
    return string.Template(config_text).safe_substitute(mapping)


@pytest.fixture
def gateway(tmp_path):
    """gateway(config_text, nports=None, args=(), env=None, wait=True,
    filename=None, pass_c=True) -> Gateway."""
    started = []
    counter = [0]

    def start(config_text, nports=None, args=(), env=None, wait=True, filename=None,
              pass_c=True):
        b = require_binary()
        counter[0] += 1
        if nports is None:
            nports = max([1] + [int(m) + 1 for m in re.findall(r"\$PORT(\d+)", config_text)])
        ports = [free_port() for _ in range(nports)]
        text = subst(config_text, ports, tmp_path)
        cfg = tmp_path / (filename or "moongate-%d.lua" % counter[0])
        cfg.write_text(text)
        g = Gateway(b, cfg, ports, tmp_path, args=args, env=env, pass_c=pass_c)
        started.append(g)
        if wait:
            for p in ports:
                wait_listening(p, g.proc, 15, "moongate", g.stderr_path)
        return g

    yield start
    failures = []
    for g in started:
        try:
            g.check_clean()
        except pytest.fail.Exception as e:  # check every gateway, then report
            failures.append(str(e))
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


@pytest.fixture
def run_moongate(tmp_path):
    """run_moongate(*args, config=None) -> CompletedProcess; config text is written
    to tmp_path/moongate.lua and "$CFG" in args becomes its path."""

    def run(*args, config=None, name="moongate.lua", timeout=20):
        b = require_binary()
        cfg = tmp_path / name
        if config is not None:
            cfg.write_text(subst(config, [free_port()], tmp_path))
        argv = [str(b)] + [str(cfg) if a == "$CFG" else a for a in args]
        p = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=str(tmp_path),
                           stdin=subprocess.DEVNULL)
        p.stdout_text = p.stdout.decode(errors="replace")
        p.stderr_text = p.stderr.decode(errors="replace")
        p.config_path = cfg
        for mark in SANITIZER_MARKS:
            assert mark not in p.stderr_text, p.stderr_text
        return p

    return run


# --------------------------------------------------------------------------
# config text

class Raw(str):
    """Lua source inserted as is (a function, an expression)."""


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def lua(v, indent=""):
    """Python value -> Lua constructor text."""
    if isinstance(v, Raw):
        return str(v)
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    inner = indent + "  "
    if isinstance(v, dict):
        items = []
        for k, x in v.items():
            key = k if _IDENT.match(k) else "[%s]" % lua(k)
            items.append("%s%s = %s" % (inner, key, lua(x, inner)))
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(v, (list, tuple)):
        return "{\n" + ",\n".join(inner + lua(x, inner) for x in v) + "\n" + indent + "}"
    raise TypeError(type(v))


def config(**top):
    """The Lua text of a config; listen defaults to 127.0.0.1:$PORT."""
    top.setdefault("listen", [{"addr": "127.0.0.1:$PORT"}])
    top.setdefault("access_log", False)
    return "return " + lua(top) + "\n"


def proxy_config(servers, limits=None, routes=None, access_log=False, **up_opts):
    """One upstream "app" with `servers`, and one route / -> app (unless routes)."""
    up = {"servers": list(servers), "keepalive": 16, "connect_timeout": 2,
          "read_timeout": 10}
    up.update(up_opts)
    top = {"upstreams": {"app": up},
           "routes": routes or [{"name": "all", "match": {"prefix": "/"}, "upstream": "app"}],
           "access_log": access_log}
    if limits:
        top["limits"] = limits
    return config(**top)


# --------------------------------------------------------------------------
# raw HTTP client

class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = []
        self.body = b""
        self.body_len = 0
        self.chunked = False
        self.close_delimited = False
        self.trailers = []
        self.raw_head = b""

    def header(self, name, default=None):
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return default

    def headers_all(self, name):
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def has(self, name):
        return bool(self.headers_all(name))

    def json(self):
        return json.loads(self.body)

    def text(self):
        return self.body.decode("latin-1")

    def __repr__(self):
        return "<Response %s %s %r body=%d>" % (self.version, self.status, self.headers,
                                              self.body_len)


class PeerClosed(Exception):
    pass


class Client:
    """One TCP connection to 127.0.0.1:port speaking raw HTTP/1.x."""

    def __init__(self, port, timeout=10.0, nodelay=True, rcvbuf=None):
        self.port = port
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    @staticmethod
    def build(method="GET", path="/", headers=None, body=None, version="HTTP/1.1",
              host="localhost", chunked=False):
        hs = []
        if host is not None:
            hs.append(("Host", host))
        hs += list(headers or [])
        names = {n.lower() for n, _ in hs}
        if isinstance(body, str):
            body = body.encode("latin-1")
        if chunked:
            if "transfer-encoding" not in names:
                hs.append(("Transfer-Encoding", "chunked"))
            b = body or b""
            payload = (b"%x\r\n%s\r\n" % (len(b), b) if b else b"") + b"0\r\n\r\n"
        else:
            payload = body or b""
            if body is not None and "content-length" not in names \
                    and "transfer-encoding" not in names:
                hs.append(("Content-Length", str(len(payload))))
        head = "%s %s %s\r\n" % (method, path, version)
        head += "".join("%s: %s\r\n" % (n, v) for n, v in hs) + "\r\n"
        return head.encode("latin-1") + payload

    def request(self, method="GET", path="/", **kw):
        self.send(self.build(method, path, **kw))

    # -- reading ---------------------------------------------------------
    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("response not complete before the deadline")
        self.sock.settimeout(min(remaining, self.timeout))
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise PeerClosed()
        self.buf += data

    def _line(self, deadline):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill(deadline)

    def _exact(self, n, deadline, sink):
        while n > 0:
            if not self.buf:
                self._fill(deadline)
            take = self.buf[:n]
            self.buf = self.buf[len(take):]
            n -= len(take)
            sink(take)

    def read_head(self, deadline=None):
        deadline = deadline or time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        i = self.buf.index(b"\r\n\r\n")
        head, self.buf = self.buf[:i], self.buf[i + 4:]
        r = Response()
        r.raw_head = head
        lines = head.split(b"\r\n")
        status_line = lines[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        assert parts[0].startswith("HTTP/"), "not an HTTP status line: %r" % status_line
        r.version = parts[0]
        r.status = int(parts[1])
        r.reason = parts[2] if len(parts) > 2 else ""
        for line in lines[1:]:
            n, sep, v = line.decode("latin-1").partition(":")
            assert sep, "bad header line %r" % line
            r.headers.append((n, v.strip(" \t")))
        return r

    def read_response(self, method="GET", sink=None, timeout=None, interim=False):
        """Reads one response. 1xx responses are skipped unless interim=True.
        sink(bytes) receives the body instead of Response.body when given."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            r = self.read_head(deadline)
            if 100 <= r.status < 200 and r.status != 101:
                if interim:
                    return r
                continue
            break
        parts = []

        def keep(b):
            r.body_len += len(b)
            if sink:
                sink(b)
            else:
                parts.append(b)

        te = ",".join(r.headers_all("transfer-encoding")).lower()
        cl = r.headers_all("content-length")
        if method == "HEAD" or r.status in (204, 304) or 100 <= r.status < 200:
            pass
        elif "chunked" in te:
            r.chunked = True
            while True:
                line = self._line(deadline)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = self._line(deadline)
                        if not t:
                            break
                        r.trailers.append(t.decode("latin-1"))
                    break
                self._exact(size, deadline, keep)
                crlf = self._line(deadline)
                assert crlf == b"", "chunk data longer than its size"
        elif cl:
            assert len(set(cl)) == 1, "conflicting Content-Length in response: %r" % cl
            self._exact(int(cl[0]), deadline, keep)
        else:
            r.close_delimited = True
            if self.buf:
                keep(self.buf)
                self.buf = b""
            while True:
                try:
                    self._fill(deadline)
                except PeerClosed:
                    break
                keep(self.buf)
                self.buf = b""
        r.body = b"".join(parts)
        return r

    def read_responses(self, n, methods=None):
        return [self.read_response(method=(methods[i] if methods else "GET"))
                for i in range(n)]

    def closed(self, timeout=3.0):
        """True if the peer closes (EOF or RST) within timeout with no further
        bytes; False on timeout; fails if unexpected bytes arrive."""
        if self.eof:
            return True
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                assert not self.buf, "unexpected bytes before close: %r" % self.buf[:200]
                return True
            pytest.fail("expected the connection to close, got bytes: %r"
                        % (self.buf + data)[:300])


def request(port, method="GET", path="/", timeout=10.0, **kw):
    """One request on a fresh connection; returns the Response."""
    with Client(port, timeout=timeout) as c:
        c.request(method, path, **kw)
        return c.read_response(method=method)


def raw_exchange(port, data, timeout=10.0, method="GET"):
    """Sends raw bytes; returns (Response, closed_afterwards)."""
    with Client(port, timeout=timeout) as c:
        c.send(data)
        r = c.read_response(method=method)
        return r, c.closed(5)


def curl(*args, timeout=60):
    p = subprocess.run(["curl", "-sS", "--noproxy", "*", *args], capture_output=True,
                       timeout=timeout)
    return p


def assert_json_error(r, status):
    """moongate's error responses: the status, application/json, {"error": "..."}."""
    assert r.status == status, "expected %d, got %s: %r" % (status, r.status, r.body[:300])
    ctype = r.header("content-type", "")
    assert ctype.split(";")[0].strip().lower() == "application/json", r.headers
    doc = json.loads(r.body)
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    assert isinstance(doc["error"], str) and doc["error"], doc
    assert len(r.body) < 512, "error bodies are short"
    return doc


def assert_serves(port, upstream_too=True):
    """A fresh, normal request still works."""
    r = request(port, "GET", "/echo?after=1")
    assert r.status == 200, r
    if upstream_too:
        assert r.json()["path"] == "/echo?after=1"
    return r


def sha256(b):
    return hashlib.sha256(b).hexdigest()
