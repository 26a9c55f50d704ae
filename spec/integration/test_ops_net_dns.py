"""Host names without blocking (issue 13 item 2): upstream servers and Redis
given as host names are resolved through c-ares on the loop, against a name
server the config names (`resolver`); upstream names are resolved again
every `resolver.valid` seconds, so a changed answer moves traffic without a
reload, and a failing answer keeps the last addresses. `moongate -t`
reports names that do not resolve. Redis on a unix socket."""
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import Raw, config, free_port, request, wait_for
from dnshelp import FakeDNS


@pytest.fixture
def dns():
    d = FakeDNS()
    yield d
    d.stop()


class Named(ThreadingHTTPServer):
    daemon_threads = True


def named_upstream(host, port, name):
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = Named((host, port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("workers", [1, 2])
def test_upstream_name_re_resolved_without_reload(gateway, dns, workers):
    port = free_port()
    a = named_upstream("127.0.0.1", port, "A")
    b = named_upstream("127.0.0.2", port, "B")
    try:
        dns.records["app.test"] = ["127.0.0.1"]
        g = gateway(config(workers=workers, resolver=[dns.addr, Raw("valid = 0.5")],
                           upstreams={"app": {"servers": ["app.test:%d" % port],
                                              "keepalive": 4}},
                           routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
        assert all(request(g.port, "GET", "/").body == b"A" for _ in range(4))
        assert ("app.test", 1) in dns.queries
        dns.records["app.test"] = ["127.0.0.2"]
        # within a few refresh periods every request goes to the new address,
        # kept-alive connections to the old one included
        # (every worker resolves on its own: ask until several in a row agree)
        wait_for(lambda: all(request(g.port, "GET", "/").body == b"B" for _ in range(6)),
                 timeout=10, what="traffic on the new address")
        # a failing name server: the last good address stays in use
        dns.fail = True
        n = len(dns.queries)
        wait_for(lambda: len(dns.queries) > n + 1, timeout=10, what="failed re-resolutions")
        assert all(request(g.port, "GET", "/").body == b"B" for _ in range(3))
        wait_for(lambda: "keeping the last addresses" in g.stderr_text(), what="the failure logged")
    finally:
        a.shutdown()
        b.shutdown()


def test_check_reports_unresolvable_names(run_moongate, dns):
    dns.records["good.test"] = ["127.0.0.1"]
    text = config(resolver=[dns.addr],
                  upstreams={"app": {"servers": ["good.test:80", "nope.test:80"]}},
                  redis={"default": {"addr": "gone.test:6379"}},
                  routes=[{"match": {"prefix": "/"}, "upstream": "app"}])
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 1, p.stdout_text + p.stderr_text
    lines = p.config_path.read_text().splitlines()
    err = p.stderr_text
    import re
    m = re.search(r'moongate\.lua:(\d+): upstreams\.app\.servers\[2\]: cannot resolve "nope\.test"', err)
    assert m, err
    assert "nope.test" in lines[int(m.group(1)) - 1]
    m = re.search(r'moongate\.lua:(\d+): redis\.default\.addr: cannot resolve "gone\.test"', err)
    assert m, err
    assert "gone.test" in lines[int(m.group(1)) - 1]
    assert "servers[1]" not in err
    dns.records["nope.test"] = ["127.0.0.1"]
    dns.records["gone.test"] = ["127.0.0.1"]
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 0 and p.stdout_text.strip() == "OK", p.stderr_text


def test_localhost_upstream_without_resolver(gateway):
    port = free_port()
    a = named_upstream("127.0.0.1", port, "L")
    try:
        g = gateway(config(upstreams={"app": {"servers": ["localhost:%d" % port]}},
                           routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
        assert request(g.port, "GET", "/").body == b"L"
    finally:
        a.shutdown()


REDIS_INCR = Raw('function(req) local v, err = gw.redis():call("INCR", "k") '
                 'if not v then return 503, err end return 200, tostring(v) end')


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")
def test_redis_by_host_name_and_unix_socket(gateway, dns, tmp_path):
    from test_redis import Redis
    r = Redis(tmp_path, "--unixsocket", str(tmp_path / "redis.sock"), "--unixsocketperm", "700")
    try:
        dns.records["redis.test"] = ["127.0.0.1"]
        g = gateway(config(resolver=[dns.addr, Raw("valid = 0.2")],
                           redis={"default": {"addr": "redis.test:%d" % r.port, "timeout": 2}},
                           routes=[{"match": {"path": "/incr"}, "handler": REDIS_INCR}]))
        # the pool is made at the first gw.redis call, long after the start:
        # the config's Redis names are kept resolved meanwhile
        time.sleep(1.5)
        assert request(g.port, "GET", "/incr").body == b"1"
        assert request(g.port, "GET", "/incr").body == b"2"
        g.stop()
        for addr in ("unix:" + str(tmp_path / "redis.sock"), str(tmp_path / "redis.sock")):
            g = gateway(config(redis={"default": {"addr": addr, "timeout": 2}},
                               routes=[{"match": {"path": "/incr"}, "handler": REDIS_INCR}]))
            v = request(g.port, "GET", "/incr")
            assert v.status == 200 and int(v.body) >= 3, v
            g.stop()
    finally:
        r.stop()


def test_http_request_resolves_through_the_same_resolver(gateway, dns):
    port = free_port()
    a = named_upstream("127.0.0.1", port, "H")
    try:
        dns.records["svc.test"] = ["127.0.0.1"]
        h = Raw('function(req) local r, err = gw.http.request{ url = "http://svc.test:%d/x", '
                'timeout = 3 } if not r then return 502, err end return 200, r.body end' % port)
        miss = Raw('function(req) local r, err = gw.http.request{ url = "http://nx.test:%d/", '
                   'timeout = 3 } return 200, tostring(err) end' % port)
        g = gateway(config(resolver=[dns.addr],
                           routes=[{"match": {"path": "/h"}, "handler": h},
                                   {"match": {"path": "/miss"}, "handler": miss}]))
        assert request(g.port, "GET", "/h").body == b"H"
        assert ("svc.test", 1) in dns.queries  # asked our name server, not glibc
        r = request(g.port, "GET", "/miss")
        assert r.status == 200 and b"resolve" in r.body, r
    finally:
        a.shutdown()


def test_check_reports_a_redis_socket_path_that_is_not_a_socket(run_moongate, tmp_path):
    (tmp_path / "plain.file").write_text("x")
    text = config(redis={"a": {"addr": "unix:" + str(tmp_path / "missing.sock")},
                         "b": {"addr": str(tmp_path / "plain.file")},
                         "c": {"addr": "localhost:6379"}},
                  routes=[])
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 1
    import re
    assert re.search(r"moongate\.lua:\d+: redis\.a\.addr: .*missing\.sock\" is not a unix socket",
                     p.stderr_text), p.stderr_text
    assert re.search(r"moongate\.lua:\d+: redis\.b\.addr: .*plain\.file\" is not a unix socket",
                     p.stderr_text), p.stderr_text
    assert "redis.c." not in p.stderr_text


def test_check_reports_unresolvable_names_among_other_errors(run_moongate, dns):
    """-t reports every error: a config with a typo still has its upstream
    and Redis host names checked (and the typo reported)."""
    import re
    dns.records["good.test"] = ["127.0.0.1"]
    text = config(resolver=[dns.addr], workerz=1,
                  upstreams={"app": {"servers": ["good.test:80", "nope.test:80"]},
                             "other": {"servers": ["also-nope.test:81"], "balanse": "x"}},
                  redis={"default": {"addr": "gone.test:6379"}},
                  routes=[{"match": {"prefix": "/"}, "upstream": "app"}])
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 1, p.stdout_text + p.stderr_text
    err = p.stderr_text
    lines = p.config_path.read_text().splitlines()
    assert re.search(r"moongate\.lua:\d+: workerz: unknown option", err), err
    assert re.search(r"moongate\.lua:\d+: upstreams\.other\.balanse: unknown option", err), err
    for up, i, host in (("app", 2, "nope.test"), ("other", 1, "also-nope.test")):
        m = re.search(r'moongate\.lua:(\d+): upstreams\.%s\.servers\[%d\]: cannot resolve "%s"'
                      % (up, i, re.escape(host)), err)
        assert m, err
        assert host in lines[int(m.group(1)) - 1]
    m = re.search(r'moongate\.lua:(\d+): redis\.default\.addr: cannot resolve "gone\.test"', err)
    assert m, err
    assert "gone.test" in lines[int(m.group(1)) - 1]
    assert "good.test\"" not in err and "servers[1]: cannot" not in err.replace(
        "other.servers[1]", ""), err
