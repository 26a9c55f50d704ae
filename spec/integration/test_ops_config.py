"""What operators expect of the config and the answers (issue 13): Date on
every answer and Allow on a 405; error_log (path, level, reopen) and
MOONGATE_LOG_LEVEL checked; relative paths and dofile against the config's
folder, watched; os.getenv in the config."""
import email.utils
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Client, Raw, config, proxy_config, request, wait_for


def assert_date(r):
    dates = r.headers_all("date")
    assert len(dates) == 1, r
    parsed = email.utils.parsedate_to_datetime(dates[0])
    assert abs(parsed.timestamp() - time.time()) < 5, dates[0]
    assert re.match(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|"
                    r"Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$", dates[0]), dates[0]


def test_every_answer_carries_date_and_405_carries_allow(gateway, upstream):
    g = gateway("""
return {
  listen = { { addr = "127.0.0.1:$PORT0" } },
  admin = { addr = "127.0.0.1:$PORT1" },
  access_log = false,
  upstreams = { app = { servers = { "%s" } } },
  routes = {
    { match = { path = "/hello" }, handler = function(req) return 200, "Hello" end },
    { match = { path = "/deny" }, plugins = { { "ip_restriction", deny = { "127.0.0.1" } } },
      upstream = "app" },
    { match = { path = "/boom" }, handler = function(req) error("boom") end },
    { match = { prefix = "/up/" }, upstream = "app" },
  },
}
""" % upstream.addr)
    port, admin = g.ports
    for path, status in (("/hello", 200), ("/nothing-here", 404), ("/deny", 403),
                         ("/boom", 500), ("/up/echo", 200)):
        r = request(port, "GET", path)
        assert r.status == status, (path, r)
        assert_date(r)
    # an upstream that sends its own Date keeps it (and there is only one)
    theirs = "Mon, 02 Jan 2006 15:04:05 GMT"
    r = request(port, "GET", "/up/echo?hdr=Date:" + theirs.replace(" ", "%20"))
    assert r.status == 200 and r.headers_all("date") == [theirs], r
    # refusals before any route: a malformed request, a too long URI
    with Client(port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        r = c.read_response()
    assert r.status == 400
    assert_date(r)
    r = request(port, "GET", "/" + "a" * 10000)
    assert r.status == 414
    assert_date(r)
    # admin answers, and the 405s with Allow
    for path in ("/status", "/metrics"):
        r = request(admin, "GET", path)
        assert r.status == 200
        assert_date(r)
    r = request(admin, "GET", "/reload")
    assert r.status == 405 and r.header("allow") == "POST", r
    assert_date(r)
    r = request(admin, "POST", "/status")
    assert r.status == 405 and r.header("allow") == "GET, HEAD", r
    r = request(admin, "GET", "/nope")
    assert r.status == 404
    assert_date(r)


def test_error_log_file_level_and_reopen(gateway, upstream, tmp_path):
    (tmp_path / "logs").mkdir()
    g = gateway("""
return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = false,
  error_log = { path = "logs/error.log", level = "debug" },
  upstreams = { app = { servers = { "%s" } } },
  routes = { { name = "api", match = { prefix = "/api/" }, upstream = "app" } },
}
""" % upstream.addr)
    elog = tmp_path / "logs" / "error.log"
    wait_for(lambda: elog.exists() and "started" in elog.read_text(), what="the error log file")
    assert "started" not in g.stderr_text()
    assert request(g.port, "GET", "/api/echo").status == 200
    text = wait_for(lambda: (lambda t: t if "picked" in t else None)(elog.read_text()),
                    what="the debug lines")
    # routing and proxying at debug level
    assert re.search(r"\[debug\].*GET /api/echo from 127\.0\.0\.1: route api -> app", text), text
    assert re.search(r"\[debug\].*upstream app: server %s picked" % re.escape(upstream.addr),
                     text), text
    os.rename(elog, tmp_path / "logs" / "error.log.1")
    os.kill(g.pid, signal.SIGUSR1)
    wait_for(lambda: elog.exists() and "reopened" in elog.read_text(), what="a new error log")
    assert g.proc.poll() is None


def test_error_log_info_has_no_debug_lines(gateway, upstream, tmp_path):
    g = gateway("""
return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = false,
  error_log = { path = "stdout", level = "info" },
  upstreams = { app = { servers = { "%s" } } },
  routes = { { name = "api", match = { prefix = "/" }, upstream = "app" } },
}
""" % upstream.addr)
    assert request(g.port, "GET", "/echo").status == 200
    wait_for(lambda: "started" in g.stdout_text(), what="the error log on stdout")
    assert "[debug]" not in g.stdout_text()
    assert "started" not in g.stderr_text()


@pytest.mark.parametrize("level", ["verbose", "DEBUGGING", "1"])
def test_bad_log_levels_are_errors(run_moongate, gateway, level):
    cfg = config(error_log={"level": level})
    p = run_moongate("-t", "-c", "$CFG", config=cfg)
    assert p.returncode == 1
    assert re.search(r"moongate\.lua:3: error_log\.level: expected debug, info, warn or error",
                     p.stderr_text), p.stderr_text
    # the environment variable: a start error, not a silent default
    g = gateway(config(), env={"MOONGATE_LOG_LEVEL": level}, wait=False)
    assert g.proc.wait(10) == 1
    g.returncode = 0  # expected to have exited
    assert "MOONGATE_LOG_LEVEL" in g.stderr_text() and level in g.stderr_text()


def test_log_level_env_accepts_levels(gateway, upstream):
    g = gateway(proxy_config([upstream.addr]), env={"MOONGATE_LOG_LEVEL": "debug"})
    assert request(g.port, "GET", "/echo").status == 200
    wait_for(lambda: "[debug]" in g.stderr_text(), what="debug lines")


def test_relative_paths_and_dofile_against_the_config_folder(gateway, tmp_path, upstream):
    conf = tmp_path / "conf"
    (conf / "logs").mkdir(parents=True)
    (conf / "routes.lua").write_text(
        'return { { match = { path = "/from-dofile" },\n'
        '           handler = function(req) return 200, "v1" end } }\n')
    (conf / "extra.lua").write_text('return "loaded"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cfg = conf / "moongate.lua"
    port = None
    from conftest import free_port, Gateway, require_binary, wait_listening
    port = free_port()
    cfg.write_text("""
local extra = assert(loadfile("extra.lua"))()
assert(extra == "loaded")
return {
  listen = { { addr = "127.0.0.1:" .. os.getenv("TEST_PORT") } },
  watch = true,
  access_log = "logs/access.log",
  error_log = { path = "logs/error.log" },
  routes = dofile("routes.lua"),
}
""")
    g = Gateway(require_binary(), cfg, [port], elsewhere, env={"TEST_PORT": str(port)})
    try:
        wait_listening(port, g.proc, 15, "moongate", g.stderr_path)
        r = request(port, "GET", "/from-dofile")
        assert r.status == 200 and r.body == b"v1"
        # access_log and error_log are in conf/logs, not in the working folder
        wait_for(lambda: (conf / "logs" / "access.log").exists() and
                 "/from-dofile" in (conf / "logs" / "access.log").read_text(),
                 what="the access log in the config's folder")
        assert "started" in (conf / "logs" / "error.log").read_text()
        assert not (elsewhere / "logs").exists()
        # watch = true also watches the file the config dofile'd
        (conf / "routes.lua").write_text(
            'return { { match = { path = "/from-dofile" },\n'
            '           handler = function(req) return 200, "v2" end } }\n')
        wait_for(lambda: request(port, "GET", "/from-dofile").body == b"v2", timeout=10,
                 what="the reload after routes.lua changed")
    finally:
        g.check_clean()


def test_start_with_bad_config_exits_nonzero_with_file_line(gateway, tmp_path):
    g = gateway("""return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = false,
  upstreams = { app = { servers = { "127.0.0.1" } } },
}
""", wait=False, filename="bad.lua")
    assert g.proc.wait(10) == 1
    g.returncode = 0  # expected to have exited
    assert re.search(r"bad\.lua:4: upstreams\.app\.servers\[1\]:", g.stderr_text()), \
        g.stderr_text()


BAD_CONFIG = """return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  upstreams = {
    app = { servers = { "127.0.0.1" },
            keeplive = 64 },
    other = { servers = { "127.0.0.1:9001" }, retries = "x" },
  },
  routes = {
    { name = "api", match = { prefix = "/api/" }, upstream = "other",
      plugins = { { "jwtt", secret = "s" } } },
    { name = "api", match = { prefix = "/v2/" },
      upstream = os.getenv("MOONGATE_TEST_NOPE") },
    { name = "b", match = { prefix = "/b/" }, upstream = "aap",
      plugins = { { "jwt", secrett = "s" } } },
    { name = "h", match = { path = "/h" }, handler = function(req)
        local t = { a = 1, b = { 2, 3 } }
        return 200, "x"
      end },
  },
  acess_log = false,
}
"""


def test_check_reports_every_error_with_its_line_and_suggestions(run_moongate):
    p = run_moongate("-t", "-c", "$CFG", config=BAD_CONFIG)
    assert p.returncode == 1
    assert p.stdout_text == ""
    got = [re.sub(r"^.*moongate\.lua:", "", l) for l in p.stderr_text.strip().splitlines()]
    assert got == [
        "4: upstreams.app.servers[1]: invalid address '127.0.0.1' (want host:port)",
        "5: upstreams.app.keeplive: unknown option (did you mean 'keepalive'?)",
        "6: upstreams.other.retries: expected a number, got string",
        "10: routes[1].plugins[1]: plugin 'jwtt' not found in plugin_path (did you mean 'jwt'?)",
        "11: routes[2]: a route needs an upstream or a handler",
        "11: routes[2].name: 'api' is already the name of routes[1]",
        "13: routes[3].upstream: unknown upstream 'aap' (did you mean 'app'?)",
        "14: routes[3].plugins[1] (jwt): unknown option 'secrett' (did you mean 'secret'?)",
        "20: acess_log: unknown option (did you mean 'access_log'?)",
    ], p.stderr_text
    # each line is "file:line: path: why"
    for l in p.stderr_text.strip().splitlines():
        assert re.match(r"^/\S+/moongate\.lua:\d+: [\w.\[\]]+( \(\w+\))?: \S", l), l


def test_check_ok_exits_0(run_moongate, tmp_path):
    p = run_moongate("-t", "-c", "$CFG", config=config(routes=[
        {"name": "a", "match": {"path": "/a"}, "handler": Raw("function() return 200 end")},
        {"name": "b", "match": {"path": "/b"}, "handler": Raw("function() return 200 end")}]))
    assert p.returncode == 0, p.stderr_text
    assert p.stdout_text.strip() == "OK"


def test_reload_refuses_a_bad_config_with_file_line(gateway, tmp_path):
    g = gateway(config(routes=[{"name": "a", "match": {"path": "/a"},
                                "handler": Raw('function() return 200, "one" end')}]),
                filename="moongate.lua")
    bad = config(routes=[
        {"name": "a", "match": {"path": "/a"}, "handler": Raw('function() return 200, "two" end')},
        {"name": "a", "match": {"path": "/b"}, "handler": Raw('function() return 200 end')}])
    bad = bad.replace("$PORT", str(g.port))
    g.config_path.write_text(bad)
    os.kill(g.pid, signal.SIGHUP)
    wait_for(lambda: "reload failed" in g.stderr_text(), what="the refused reload")
    assert re.search(r"moongate\.lua:\d+: routes\[2\]\.name: 'a' is already the name of "
                     r"routes\[1\]", g.stderr_text()), g.stderr_text()
    assert request(g.port, "GET", "/a").body == b"one"


def test_tls_ca_is_relative_to_the_config_folder(run_moongate, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
                    "-days", "2", "-subj", "/CN=test ca"], cwd=str(conf), check=True,
                   capture_output=True)
    text = config(upstreams={"app": {"servers": ["127.0.0.1:9443"], "tls": True,
                                     "tls_verify": True, "tls_ca": "ca.pem"}},
                  access_log="logs.txt")
    # run from tmp_path: neither ca.pem nor logs.txt is there
    p = run_moongate("-t", "-c", "$CFG", config=text, name="conf/moongate.lua")
    assert p.returncode == 0, p.stderr_text
    assert (conf / "logs.txt").exists() and not (tmp_path / "logs.txt").exists()


def test_check_reports_every_bad_value_of_one_section(run_moongate):
    """A bad value does not hide the next one in the same section: each is
    reported at its line, bounds written as numbers people write."""
    text = ("return {\n"
            "  listen = { { addr = \"127.0.0.1:$PORT\" } },\n"
            "  limits = { header_timeout = \"x\",\n"
            "             idle_timeout = -2,\n"
            "             max_body_bytes = -1 },\n"
            "  upstreams = { a = { servers = { \"127.0.0.1:1\" }, keepalive = -1,\n"
            "                      retries = 1.5, read_timeout = \"slow\" } },\n"
            "  routes = {},\n"
            "  trusted_proxies = { \"10.0.0.0/33\", \"10.0.0.0/8\", \"nope\" },\n"
            "}\n")
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 1
    got = [re.sub(r"^.*moongate\.lua:", "", l) for l in p.stderr_text.strip().splitlines()]
    assert got == [
        "3: limits.header_timeout: expected a number, got string",
        "4: limits.idle_timeout: must be at least 0.001, got -2",
        "5: limits.max_body_bytes: must be at least 0, got -1",
        "6: upstreams.a.keepalive: must be at least 0, got -1",
        "7: upstreams.a.read_timeout: expected a number, got string",
        "7: upstreams.a.retries: expected a whole number, got 1.5",
        "9: trusted_proxies[1]: expected an address or CIDR like \"10.0.0.0/8\" or \"::1/128\","
        " got '10.0.0.0/33'",
        "9: trusted_proxies[3]: expected an address or CIDR like \"10.0.0.0/8\" or \"::1/128\","
        " got 'nope'",
    ], p.stderr_text
