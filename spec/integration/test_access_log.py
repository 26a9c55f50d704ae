"""Access log: one line per request (time, client, method, path, status, bytes,
upstream, duration) to a file or stdout, or none; the error log on stderr."""
import json
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


# --- fields, JSON format, method "-" (issue 13 items 3 and 11) -------------

JSON_KEYS = {"time", "remote_addr", "method", "path", "status", "bytes_sent", "upstream",
             "duration", "route", "request_id", "user_agent", "http_version"}


def _fields_config(upstream, log, fmt=None):
    from conftest import config
    al = str(log) if fmt is None else {"path": str(log), "format": fmt}
    return config(access_log=al,
                  upstreams={"app": {"servers": [upstream.addr]}},
                  routes=[{"name": "api", "match": {"prefix": "/echo/"}, "upstream": "app",
                           "plugins": [["request_id"]]},
                          {"name": "plain", "match": {"prefix": "/"}, "upstream": "app"}])


def test_text_line_has_route_request_id_and_user_agent(gateway, upstream, tmp_path):
    log = tmp_path / "access.log"
    g = gateway(_fields_config(upstream, log))
    r = request(g.port, "GET", "/echo/a?x=1", headers=[("User-Agent", 'curl/8 "quoted" x'),
                                                       ("X-Request-Id", "abc-123")])
    assert r.status == 200
    r = request(g.port, "GET", "/other", headers=[("User-Agent", "plain-agent")])
    assert r.status == 200
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= 2 else None)(log_lines(log)),
                     what="2 lines")
    f = lines[0].split(" ")
    # time client method path status bytes upstream duration route request_id "ua"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", f[0]), lines[0]
    assert f[1:5] == ["127.0.0.1", "GET", "/echo/a?x=1", "200"], lines[0]
    assert int(f[5]) > 0 and f[6] == upstream.addr and float(f[7]) >= 0
    assert f[8] == "api" and f[9] == "abc-123", lines[0]
    assert lines[0].endswith(' "curl/8 \\x22quoted\\x22 x"'), lines[0]
    g2 = lines[1].split(" ")
    assert g2[8] == "plain" and g2[9] == "-" and lines[1].endswith('"plain-agent"'), lines[1]


def test_json_lines(gateway, upstream, tmp_path):
    log = tmp_path / "access.json"
    g = gateway(_fields_config(upstream, log, "json"))
    ua = 'ua "with" \\ and \t and caf\xc3\xa9'
    with Client(g.port) as c:
        c.send(b"GET /echo/j?q=%22 HTTP/1.1\r\nHost: x\r\nUser-Agent: " + ua.encode("latin-1") +
               b"\r\n\r\n")
        assert c.read_response().status == 200
        c.send(b"GET /nothing HTTP/1.0\r\n\r\n")
        assert c.read_response().status == 200
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= 2 else None)(log_lines(log)),
                     what="2 json lines")
    a, b = [json.loads(l) for l in lines]
    assert set(a) == JSON_KEYS and set(b) == JSON_KEYS
    assert a["method"] == "GET" and a["path"] == "/echo/j?q=%22" and a["status"] == 200
    assert a["remote_addr"] == "127.0.0.1" and a["upstream"] == upstream.addr
    assert a["route"] == "api" and re.match(r"^[0-9a-f-]{36}$", a["request_id"]), a
    assert a["http_version"] == "1.1" and isinstance(a["bytes_sent"], int) and a["bytes_sent"] > 0
    assert isinstance(a["duration"], float) and 0 <= a["duration"] < 5
    # every byte of the agent survives escaping (non-ASCII bytes as \u00HH)
    assert a["user_agent"] == ua.encode("latin-1").decode("latin-1"), a["user_agent"]
    assert b["route"] == "plain" and b["request_id"] is None and b["user_agent"] is None
    assert b["http_version"] == "1.0"


def test_refused_before_method_logs_dash(gateway, upstream, tmp_path):
    import socket
    log = tmp_path / "access.log"
    g = gateway(_fields_config(upstream, log, "json"))
    # a TLS ClientHello on a plain port (an HTTP/2 preface is h2c there now),
    # and a CL+TE smuggling attempt
    for data in (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        s.close()
        assert got.startswith(b"HTTP/1.1 400"), got
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= 2 else None)(log_lines(log)),
                     what="2 lines")
    recs = [json.loads(l) for l in lines]
    assert [r["method"] for r in recs] == ["-", "-"], recs
    assert [r["status"] for r in recs] == [400, 400]
    assert all(r["http_version"] is None for r in recs)


def test_access_log_table_text_and_off(gateway, upstream, tmp_path, run_moongate):
    from conftest import config
    log = tmp_path / "t.log"
    g = gateway(config(access_log={"path": str(log)}, upstreams={"app": {"servers": [upstream.addr]}},
                       routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
    assert request(g.port, "GET", "/echo/t").status == 200
    line = wait_for(lambda: log_lines(log), what="a text line")[0]
    assert " GET /echo/t 200 " in line and not line.startswith("{")
    bad = run_moongate("-t", "-c", "$CFG", config=config(access_log={"path": str(log), "format": "xml"}))
    assert bad.returncode == 1 and re.search(r"moongate\.lua:\d+: access_log\.format", bad.stderr_text + bad.stdout_text), bad.stderr_text
