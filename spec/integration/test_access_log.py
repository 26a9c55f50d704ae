"""Access log: one line per request (time, client, method, path, status, bytes,
upstream, duration) to a file or stdout, or none; the error log on stderr."""
import re
import time
from pathlib import Path

from conftest import Client, free_port, proxy_config, request, wait_for


def log_lines(path):
    p = Path(path)
    if not p.exists():
        return []
    return [l for l in p.read_text(errors="replace").splitlines() if l.strip()]


def test_access_log_to_file(gateway, upstream, tmp_path):
    log = tmp_path / "access.log"
    g = gateway(proxy_config([upstream.addr], access_log=str(log), routes=[
        {"match": {"prefix": "/echo/"}, "upstream": "app"},
        {"match": {"prefix": "/bytes/"}, "upstream": "app"}]))
    assert request(g.port, "GET", "/echo/first?q=1").status == 200
    assert request(g.port, "GET", "/missing").status == 404
    assert request(g.port, "POST", "/bytes/12345", body=b"hello").status == 200
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= 3 else None)(log_lines(log)),
                     timeout=5, what="3 access log lines")
    assert len(lines) == 3, lines
    first, second, third = lines
    assert "GET" in first and "/echo/first" in first and re.search(r"\b200\b", first)
    assert "127.0.0.1" in first
    assert upstream.addr in first or str(upstream.port) in first, first
    assert "GET" in second and "/missing" in second and re.search(r"\b404\b", second)
    assert "POST" in third and "/bytes/12345" in third and re.search(r"\b200\b", third)
    # bytes sent: the 12345-byte body at least
    nums = [int(x) for x in re.findall(r"\b\d+\b", third.replace("/bytes/12345", ""))]
    assert any(12345 <= n < 13000 for n in nums), third
    # One line per request, also on a keep-alive connection.
    with Client(g.port) as c:
        for i in range(5):
            c.request("GET", "/echo/ka?i=%d" % i)
            assert c.read_response().status == 200
    wait_for(lambda: len(log_lines(log)) >= 8, timeout=5, what="8 access log lines")
    time.sleep(0.2)
    assert len(log_lines(log)) == 8
    assert "/echo/ka" not in g.stdout_text()


def test_access_log_to_stdout(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], access_log="stdout"))
    assert request(g.port, "GET", "/echo/to-stdout").status == 200
    line = wait_for(lambda: [l for l in g.stdout_text().splitlines() if "/echo/to-stdout" in l],
                    timeout=5, what="an access log line on stdout")
    assert "GET" in line[0] and re.search(r"\b200\b", line[0])


def test_access_log_off(gateway, upstream, tmp_path):
    g = gateway(proxy_config([upstream.addr], access_log=False))
    before = set(p.name for p in tmp_path.iterdir())
    assert request(g.port, "GET", "/echo/quiet").status == 200
    time.sleep(0.3)
    assert "/echo/quiet" not in g.stdout_text()
    assert "/echo/quiet" not in g.stderr_text()
    assert set(p.name for p in tmp_path.iterdir()) == before


def test_upstream_error_in_error_log(gateway, upstream):
    dead = "127.0.0.1:%d" % free_port()
    g = gateway(proxy_config([dead], retries=0))
    assert request(g.port, "GET", "/echo").status == 502
    text = wait_for(lambda: g.stderr_text() if str(dead.split(":")[1]) in g.stderr_text()
                    else None, timeout=5, what="the failed upstream in the error log")
    line = [l for l in text.splitlines() if dead.split(":")[1] in l][0]
    assert re.search(r"error|warn|crit", line, re.I), line
