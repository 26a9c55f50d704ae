"""The command line and the config file: --version, -t, file:line errors, a bad
config at start, several listeners, the default config path, RLIMIT_NOFILE."""
import re
import resource
import time

import pytest

from conftest import Raw, can_connect, config, free_port, request

HELLO = config(routes=[{"match": {"path": "/hello"},
                        "handler": Raw('function(req) return 200, "Hello, World" end')}])


def test_version(run_moongate):
    p = run_moongate("--version")
    assert p.returncode == 0, p.stderr_text
    assert re.fullmatch(r"moongate \d+\.\d+\.\d+\s*", p.stdout_text), p.stdout_text


def test_check_good_config_prints_ok(run_moongate):
    p = run_moongate("-t", "-c", "$CFG", config=HELLO)
    assert p.returncode == 0, p.stderr_text
    assert p.stdout_text.strip() == "OK"


def test_check_full_config_prints_ok(run_moongate):
    text = """return {
  listen = { { addr = "127.0.0.1:$PORT" }, { addr = "127.0.0.1:%d" } },
  limits = { max_uri_bytes = 8192, max_header_bytes = 16384, max_body_bytes = 1048576,
             header_timeout = 10, idle_timeout = 60.5, drain_timeout = 30 },
  access_log = "stdout",
  upstreams = {
    app = { servers = { "127.0.0.1:9000", "127.0.0.1:9001" }, balance = "round_robin",
            keepalive = 64, connect_timeout = 1, read_timeout = 30, retries = 1 },
    other = { servers = { "127.0.0.1:9002" }, balance = "least_conn" },
  },
  routes = {
    { name = "api", match = { prefix = "/api/", methods = { "GET", "POST" } }, upstream = "app" },
    { match = { host = "b.example", path = "/x", headers = { ["x-a"] = "1" } }, upstream = "other" },
    { match = { path = "/hello" }, handler = function(req) return 200, "Hello" end },
  },
}
""" % free_port()
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 0, p.stderr_text
    assert p.stdout_text.strip() == "OK"


def test_check_does_not_start_serving(run_moongate):
    port = free_port()
    t0 = time.monotonic()
    p = run_moongate("-t", "-c", "$CFG",
                     config=HELLO.replace("$PORT", str(port)), timeout=10)
    assert p.returncode == 0
    assert time.monotonic() - t0 < 5
    assert not can_connect(port)


# (config text, line the error must be reported at or None, regex the reason must match)
BAD = {
    "syntax_error": ("""return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  routes = {
    { match = { path = "/x" } handler = function(req) return 200, "x" end },
  },
}
""", 4, None),
    "runtime_error": ("""local x = 1
error("boom in config")
return {}
""", 2, r"boom in config"),
    "not_a_table": ("return 42\n", None, None),
    "unknown_upstream": (config(routes=[{"match": {"prefix": "/"}, "upstream": "nosuch"}]),
                         None, r"nosuch"),
    "bad_balance": (config(upstreams={"app": {"servers": ["127.0.0.1:9000"],
                                              "balance": "random_walk"}},
                           routes=[{"match": {"prefix": "/"}, "upstream": "app"}]),
                    None, r"balance|random_walk"),
    "bad_listen_addr": (config(listen=[{"addr": "127.0.0.1:notaport"}]), None,
                        r"listen|notaport|addr"),
    "bad_server_addr": (config(upstreams={"app": {"servers": ["127.0.0.1:99999"]}},
                               routes=[{"match": {"prefix": "/"}, "upstream": "app"}]),
                        None, r"server|99999|addr"),
    "empty_servers": (config(upstreams={"app": {"servers": []}},
                             routes=[{"match": {"prefix": "/"}, "upstream": "app"}]),
                      None, r"servers"),
    "limit_wrong_type": (config(limits={"max_body_bytes": "big"}), None, r"max_body_bytes"),
    "limit_negative": (config(limits={"header_timeout": -1}), None, r"header_timeout"),
    "access_log_wrong_type": (config(access_log=42), None, r"access_log"),
    "route_without_target": (config(routes=[{"match": {"prefix": "/"}}]), None,
                             r"upstream|handler|route"),
    "methods_not_a_list": (config(routes=[{"match": {"prefix": "/", "methods": 7},
                                           "handler": Raw("function() return 200, '' end")}]),
                           None, r"methods"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_check_bad_config_reports_file_line(run_moongate, name):
    text, line, why = BAD[name]
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 1, (p.returncode, p.stdout_text, p.stderr_text)
    assert "OK" not in p.stdout_text
    fname = p.config_path.name
    lineno = str(line) if line else r"\d+"
    m = re.search(re.escape(fname) + ":" + lineno + r": ?(.+)", p.stderr_text)
    assert m, "expected %s:%s: why, got: %r" % (fname, line or "LINE", p.stderr_text)
    if why:
        assert re.search(why, m.group(1), re.I), p.stderr_text


def test_check_missing_file(run_moongate, tmp_path):
    missing = tmp_path / "nope.lua"
    p = run_moongate("-t", "-c", str(missing))
    assert p.returncode == 1
    assert "nope.lua" in p.stderr_text


def test_bad_config_at_start_exits_nonzero_with_file_line(run_moongate):
    text, line, _ = BAD["syntax_error"]
    p = run_moongate("-c", "$CFG", config=text, timeout=15)
    assert p.returncode != 0 and p.returncode > 0, p.returncode
    assert re.search(re.escape(p.config_path.name) + ":4:", p.stderr_text), p.stderr_text


def test_unknown_upstream_at_start_exits_nonzero(run_moongate):
    text, _, why = BAD["unknown_upstream"]
    p = run_moongate("-c", "$CFG", config=text, timeout=15)
    assert p.returncode > 0
    assert re.search(re.escape(p.config_path.name) + r":\d+:.*nosuch", p.stderr_text), \
        p.stderr_text


def test_listen_port_in_use_exits_nonzero(run_moongate):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        p = run_moongate("-c", "$CFG", config=HELLO.replace("$PORT", str(port)), timeout=15)
        assert p.returncode > 0
        assert str(port) in p.stderr_text, p.stderr_text
    finally:
        s.close()


def test_several_listeners(gateway):
    g = gateway(config(listen=[{"addr": "127.0.0.1:$PORT0"}, {"addr": "127.0.0.1:$PORT1"},
                               {"addr": "127.0.0.1:$PORT2"}],
                       routes=[{"match": {"path": "/hello"},
                                "handler": Raw('function(req) return 200, "Hello, World" end')}]))
    assert len(g.ports) == 3
    for port in g.ports:
        r = request(port, "GET", "/hello")
        assert r.status == 200 and r.body == b"Hello, World"


def test_default_config_path(gateway):
    g = gateway(HELLO, filename="moongate.lua", pass_c=False)
    assert request(g.port, "GET", "/hello").body == b"Hello, World"


def test_rlimit_nofile_raised(gateway):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("hard RLIMIT_NOFILE is %d: nothing to raise to" % hard)
    g = gateway(HELLO)                  # started with a soft limit of 1024
    limits = open("/proc/%d/limits" % g.pid).read()
    m = re.search(r"^Max open files\s+(\S+)\s+(\S+)", limits, re.M)
    assert m, limits
    got = m.group(1)
    assert got == "unlimited" or int(got) > 1024, limits


def test_many_connections_beyond_1024_fds(gateway):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2600:
        pytest.skip("hard RLIMIT_NOFILE %d too low for this test" % hard)
    if soft < 2600:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    import socket
    g = gateway(HELLO)
    socks = []
    try:
        for _ in range(1500):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
            socks.append(s)
        for s in socks[::100]:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks[::100]:
            data = b""
            while b"Hello, World" not in data:
                d = s.recv(4096)
                assert d, "connection closed: %r" % data
                data += d
            assert data.startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()
    assert request(g.port, "GET", "/hello").status == 200
