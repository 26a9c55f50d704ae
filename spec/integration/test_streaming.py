"""Bodies stream both ways with bounded memory; backpressure; re-framing of
chunked and close-delimited responses."""
import hashlib
import json
import threading
import time

import pytest

from conftest import (Client, curl, is_sanitized_build, pattern_sha256, proxy_config,
                      request, sha256)

MB = 1 << 20
RSS_BOUND_KB = 16 * 1024


class RssSampler:
    """Samples the gateway's VmRSS every 10 ms; .peak_kb is the highest seen."""

    def __init__(self, g):
        self.g = g
        self.peak_kb = g.rss_kb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak_kb = max(self.peak_kb, self.g.rss_kb())
            except (OSError, KeyError):
                return
            time.sleep(0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


def reset_hwm(pid):
    """Resets VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def no_asan():
    if is_sanitized_build():
        pytest.skip("RSS bounds are meaningless under ASan (its quarantine keeps freed memory)")


def test_100mb_response_with_bounded_memory(gateway, upstream):
    no_asan()
    n = 100 * MB
    g = gateway(proxy_config([upstream.addr]))
    assert request(g.port, "GET", "/bytes/%d" % MB).body_len == MB   # warm up
    base = g.rss_kb()
    hwm_ok = reset_hwm(g.pid)
    h = hashlib.sha256()
    t0 = time.monotonic()
    with RssSampler(g) as s, Client(g.port, timeout=60) as c:
        c.request("GET", "/bytes/%d" % n)
        r = c.read_response(sink=h.update, timeout=60)
    elapsed = time.monotonic() - t0
    assert r.status == 200 and r.body_len == n
    assert h.hexdigest() == pattern_sha256(n)
    peak = max(s.peak_kb, g.hwm_kb() if hwm_ok else 0)
    assert peak - base < RSS_BOUND_KB, \
        "RSS grew by %d KiB while streaming 100 MB" % (peak - base)
    assert elapsed < 30


def test_slow_reader_does_not_make_gateway_buffer(gateway, upstream):
    n = 64 * MB
    g = gateway(proxy_config([upstream.addr], read_timeout=30))
    assert request(g.port, "GET", "/bytes/%d" % MB).body_len == MB   # warm up
    base = g.rss_kb()
    h = hashlib.sha256()
    with Client(g.port, timeout=60, rcvbuf=65536) as c:
        c.request("GET", "/bytes/%d" % n)
        r = c.read_head()
        assert r.status == 200
        got = len(c.buf)
        h.update(c.buf)
        c.buf = b""
        while got < 65536:
            d = c.sock.recv(65536)
            assert d
            h.update(d)
            got += len(d)
        time.sleep(2.0)                     # the client stops reading
        grown = g.rss_kb() - base
        bound = RSS_BOUND_KB * (4 if is_sanitized_build() else 1)
        assert grown < bound, \
            "gateway RSS grew by %d KiB while the client was not reading" % grown
        remaining = n - got
        while remaining > 0:
            d = c.sock.recv(min(remaining, 1 << 18))
            assert d, "connection closed with %d bytes missing" % remaining
            h.update(d)
            remaining -= len(d)
    assert h.hexdigest() == pattern_sha256(n)


def test_response_streams_before_upstream_finishes(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        t0 = time.monotonic()
        c.request("GET", "/drip/5/400")
        r = c.read_head()
        assert r.status == 200
        while b"chunk 0" not in c.buf:
            c._fill(time.monotonic() + 5)
        first = time.monotonic() - t0
        r = None
    assert first < 1.2, "first chunk reached the client after %.2fs" % first


def test_drip_response_complete(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    r = request(g.port, "GET", "/drip/4/50")
    assert r.body == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"


def test_chunked_response_small_chunks(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    n = 3 * MB
    with Client(g.port) as c:
        c.request("GET", "/chunked/%d?chunk=1000" % n)
        r = c.read_response()
        assert r.status == 200 and r.body_len == n and sha256(r.body) == pattern_sha256(n)
        c.request("GET", "/echo?after=chunked")
        assert c.read_response().json()["path"] == "/echo?after=chunked"


def test_chunked_response_with_trailers(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.request("GET", "/chunked/10000?trailer=1")
        r = c.read_response(timeout=5)
        assert r.status == 200 and sha256(r.body) == pattern_sha256(10000)
        c.request("GET", "/echo?after=trailer")
        assert c.read_response(timeout=5).json()["path"] == "/echo?after=trailer"


def test_close_delimited_response_http11_client(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    n = 2 * MB + 123
    with Client(g.port) as c:
        c.request("GET", "/close/%d" % n)
        r = c.read_response()
        assert r.status == 200 and r.body_len == n and sha256(r.body) == pattern_sha256(n)
        if not r.close_delimited:
            # Re-framed (chunked): the client connection stays usable.
            c.request("GET", "/echo?after=close")
            assert c.read_response().json()["path"] == "/echo?after=close"
    assert request(g.port, "GET", "/echo").status == 200


def test_close_delimited_response_http10_client(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    n = 500000
    with Client(g.port) as c:
        c.request("GET", "/close/%d" % n, version="HTTP/1.0")
        r = c.read_response()
        assert r.status == 200 and not r.chunked
        assert r.body_len == n and sha256(r.body) == pattern_sha256(n)


def test_empty_body_response(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]))
    with Client(g.port) as c:
        c.request("GET", "/bytes/0")
        r = c.read_response()
        assert r.status == 200 and r.body == b""
        c.request("GET", "/echo?after=empty")
        assert c.read_response().json()["path"] == "/echo?after=empty"


def _send_upload(c, n, chunked, piece=65536):
    block = b"".join(bytes([(i * 7 + j) % 256 for j in range(256)]) for i in range(256))
    h = hashlib.sha256()
    if chunked:
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    else:
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n)
    left = n
    while left > 0:
        p = block[:min(piece, left)]
        h.update(p)
        c.send((b"%x\r\n" % len(p) + p + b"\r\n") if chunked else p)
        left -= len(p)
    if chunked:
        c.send(b"0\r\n\r\n")
    return h.hexdigest()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_20mb_upload_arrives_intact(gateway, upstream, chunked):
    n = 20 * MB
    g = gateway(proxy_config([upstream.addr], limits={"max_body_bytes": 64 * MB}))
    assert request(g.port, "GET", "/echo").status == 200            # warm up
    base = g.rss_kb()
    with RssSampler(g) as s, Client(g.port, timeout=60) as c:
        digest = _send_upload(c, n, chunked)
        r = c.read_response(timeout=60)
    assert r.status == 200, r
    doc = r.json()
    assert doc["length"] == n and doc["sha256"] == digest
    if not is_sanitized_build():
        assert s.peak_kb - base < RSS_BOUND_KB, \
            "RSS grew by %d KiB during a 20 MB upload" % (s.peak_kb - base)


def test_curl_chunked_upload(gateway, upstream, tmp_path):
    g = gateway(proxy_config([upstream.addr], limits={"max_body_bytes": 8 * MB}))
    f = tmp_path / "up.bin"
    data = bytes(range(256)) * 4096 + b"tail"
    f.write_bytes(data)
    p = curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@%s" % f,
             "http://127.0.0.1:%d/upload" % g.port)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["length"] == len(data) and doc["sha256"] == sha256(data)
