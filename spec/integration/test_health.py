"""Active upstream health checks (PRODUCT.md "Upstream health"): real origin
servers on loopback whose health answer the test switches; the gateway's
checks mark them down after `fall` failures and up after `rise` successes,
the balancer skips down servers in every worker, /status and /metrics show
the state, a reload keeps it, and -t checks the health table."""
import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import (assert_json_error, config, free_port, request, wait_for)
from opshelp import children, metric, parse_metrics

HEALTH = {"path": "/healthz", "interval": 0.1, "timeout": 0.5, "rise": 2, "fall": 3,
          "status": [200, 399]}


class Origin:
    """A real HTTP/1.1 origin: /healthz answers `health_status` (after
    `health_delay` seconds); any other path 200 with the origin's name.
    Counts health checks and other requests separately."""

    def __init__(self, name, port=None):
        self.name = name
        self.health_status = 200
        self.health_delay = 0.0
        self.health_hits = 0
        self.hits = 0
        self.health_hosts = []
        self.lock = threading.Lock()
        me = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path == "/healthz":
                    with me.lock:
                        me.health_hits += 1
                        me.health_hosts.append(self.headers.get("Host"))
                        status, delay = me.health_status, me.health_delay
                    if delay:
                        time.sleep(delay)
                    body = b"ok"
                else:
                    with me.lock:
                        me.hits += 1
                    status, body = 200, me.name.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.port = port or free_port()
        class Srv(ThreadingHTTPServer):
            request_queue_size = 256

        self.srv = Srv(("127.0.0.1", self.port), H)
        self.srv.daemon_threads = True
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def counts(self):
        with self.lock:
            return self.health_hits, self.hits

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def origins():
    made = []

    def make(name, port=None):
        o = Origin(name, port)
        made.append(o)
        return o

    yield make
    for o in made:
        o.stop()


def health_config(servers, health=None, workers=1, **up):
    u = {"servers": [s.addr if isinstance(s, Origin) else s for s in servers],
         "health": dict(HEALTH, **(health or {})), "connect_timeout": 1, "read_timeout": 5}
    u.update(up)
    return config(workers=workers, admin={"addr": "127.0.0.1:$PORT1"},
                  upstreams={"app": u},
                  routes=[{"name": "all", "match": {"prefix": "/"}, "upstream": "app"}])


def start(gateway, text):
    g = gateway(text)
    g.admin_port = g.ports[1]
    return g


def status(g):
    r = request(g.admin_port, "GET", "/status")
    assert r.status == 200, r
    return json.loads(r.body)


def server_state(g, addr, upstream="app"):
    for s in status(g)["upstreams"][upstream]["servers"]:
        if s["server"] == addr:
            return s
    raise AssertionError("%s not in /status" % addr)


def wait_state(g, origin, state, timeout=10):
    return wait_for(lambda: server_state(g, origin.addr)["state"] == state and
                    server_state(g, origin.addr), timeout=timeout,
                    what="%s %s in /status" % (origin.addr, state))


def gauge(g, addr):
    r = request(g.admin_port, "GET", "/metrics")
    assert r.status == 200
    return metric(parse_metrics(r.text()), "moongate_upstream_server_up", upstream="app",
                  server=addr)


def bodies(port, n):
    out = []
    for _ in range(n):
        r = request(port, "GET", "/work")
        assert r.status == 200, (r.status, r.body[:200])
        out.append(r.text())
    return out


# --------------------------------------------------------------------------

def test_failing_server_goes_down_after_fall_and_back_after_rise(gateway, origins):
    a, b = origins("A"), origins("B")
    g = start(gateway, health_config([a, b]))
    # servers start up, and the prober checks both
    wait_for(lambda: a.counts()[0] >= 2 and b.counts()[0] >= 2, what="first checks")
    assert server_state(g, b.addr)["state"] == "up"
    assert sorted(set(bodies(g.port, 10))) == ["A", "B"]

    b.health_status = 500
    hits_before = b.counts()[0]
    s = wait_state(g, b, "down")
    # down only after `fall` failed checks in a row
    assert b.counts()[0] - hits_before >= 3
    assert s["check"] == "active" and s["fails"] >= 3 and s["last_error"] == "status 500"
    assert server_state(g, a.addr)["state"] == "up"
    assert gauge(g, b.addr) == 0 and gauge(g, a.addr) == 1
    served_b = b.counts()[1]
    assert bodies(g.port, 30) == ["A"] * 30
    assert b.counts()[1] == served_b, "a down server got requests"
    assert "server %s is down" % b.addr in g.stderr_text()

    b.health_status = 204  # inside { 200, 399 }
    hits_before = b.counts()[0]
    wait_state(g, b, "up")
    assert b.counts()[0] - hits_before >= 2  # `rise` good checks
    assert gauge(g, b.addr) == 1
    assert "B" in bodies(g.port, 10)


def test_status_outside_range_and_host_header(gateway, origins):
    a, b = origins("A"), origins("B")
    b.health_status = 404
    g = start(gateway, health_config([a, b], health={"status": [200, 299],
                                                     "host": "health.example"}))
    wait_state(g, b, "down")
    assert server_state(g, a.addr)["state"] == "up"
    assert set(a.health_hosts) == {"health.example"}


def test_tcp_check_only_connects(gateway, origins):
    a = origins("A")
    a.health_status = 500  # a tcp check never asks, so this does not matter
    gone = free_port()
    g = start(gateway, health_config([a, "127.0.0.1:%d" % gone],
                                     health={"type": "tcp", "path": None, "status": None}))
    wait_for(lambda: server_state(g, "127.0.0.1:%d" % gone)["state"] == "down",
             what="refused server down")
    s = server_state(g, "127.0.0.1:%d" % gone)
    assert "refused" in s["last_error"].lower(), s
    wait_for(lambda: server_state(g, a.addr)["checks"] >= 5, what="tcp checks of A")
    assert server_state(g, a.addr)["state"] == "up"
    assert a.counts() == (0, 0), "a tcp check sent a request"
    assert bodies(g.port, 10) == ["A"] * 10
    # the server comes (back) on its port: `rise` connects bring it up
    b = origins("B", port=gone)
    wait_state(g, b, "up")
    assert "B" in bodies(g.port, 10)


def test_check_timeout_marks_down(gateway, origins):
    a, b = origins("A"), origins("B")
    b.health_delay = 3
    g = start(gateway, health_config([a, b], health={"interval": 0.2, "timeout": 0.2,
                                                     "fall": 2}))
    t0 = time.monotonic()
    s = wait_state(g, b, "down")
    assert "timed out" in s["last_error"], s
    # two checks of 0.2 s each, not the origin's 3 s
    assert time.monotonic() - t0 < 2.5
    assert bodies(g.port, 10) == ["A"] * 10


def test_every_server_down_is_503_no_healthy_upstream(gateway, origins):
    a, b = origins("A"), origins("B")
    a.health_status = b.health_status = 503
    g = start(gateway, health_config([a, b]))
    wait_state(g, a, "down")
    wait_state(g, b, "down")
    r = request(g.port, "GET", "/work")
    doc = assert_json_error(r, 503)
    assert doc == {"error": "no healthy upstream"}
    assert a.counts()[1] == 0 and b.counts()[1] == 0
    # one comes back: served again
    a.health_status = 200
    wait_state(g, a, "up")
    assert bodies(g.port, 3) == ["A"] * 3


def test_single_server_upstream_can_go_down(gateway, origins):
    a = origins("A")
    a.health_status = 500
    g = start(gateway, health_config([a]))
    wait_state(g, a, "down")
    assert_json_error(request(g.port, "GET", "/work"), 503)


def test_passive_down_everywhere_is_the_same_503(gateway, origins):
    """No active checks: servers that refuse are marked down passively, and a
    request that then finds none gets the same 503 as with active checks."""
    p1, p2 = free_port(), free_port()
    g = start(gateway, config(admin={"addr": "127.0.0.1:$PORT1"},
                              upstreams={"app": {"servers": ["127.0.0.1:%d" % p1,
                                                             "127.0.0.1:%d" % p2],
                                                 "retries": 1, "max_fails": 1,
                                                 "fail_timeout": 30}},
                              routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
    r = request(g.port, "GET", "/work")
    assert r.status == 502  # both refused the one request
    assert assert_json_error(request(g.port, "GET", "/work"), 503) == \
        {"error": "no healthy upstream"}
    st = status(g)["upstreams"]["app"]["servers"]
    assert [s["state"] for s in st] == ["down", "down"] and st[0]["check"] == "passive"
    assert gauge(g, "127.0.0.1:%d" % p1) == 0


def worker_pids_to(port_to, master):
    """PIDs of the master's workers holding a connection to 127.0.0.1:port_to."""
    out = subprocess.run(["ss", "-tnpH", "state", "established",
                          "( dport = :%d )" % port_to], capture_output=True, text=True).stdout
    kids = set(children(master))
    found = set()
    for k in kids:
        if "pid=%d," % k in out:
            found.add(k)
    return found


def test_two_workers_share_the_state(gateway, origins):
    a, b = origins("A"), origins("B")
    b.health_status = 500
    g = start(gateway, health_config([a, b], workers=2, keepalive=64))
    wait_for(lambda: len(children(g.pid)) == 2, what="two workers")
    wait_state(g, b, "down")
    served_b = b.counts()[1]
    # many connections at once, until both workers have served some
    seen = set()
    for _ in range(30):
        socks = []
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
            socks.append(s)
        for s in socks:
            s.sendall(b"GET /work HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks:
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 1:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"A"), data[:200]
            s.close()
        seen |= worker_pids_to(a.port, g.pid)
        if len(seen) == 2:
            break
    assert len(seen) == 2, "both workers should have served (saw %r)" % seen
    assert b.counts()[1] == served_b, "a worker sent requests to the down server"
    # one prober per instance: checks come at about one per interval
    h0 = b.counts()[0]
    time.sleep(1.0)  # measuring a rate: the wait is the measurement
    rate = b.counts()[0] - h0
    assert 1 <= rate <= 15, "%d checks in 1 s with interval 0.1 (one prober?)" % rate


def test_state_survives_reload(gateway, origins):
    a, b = origins("A"), origins("B")
    b.health_status = 500
    g = start(gateway, health_config([a, b]))
    wait_state(g, b, "down")
    # the new generation checks rarely: if it started B as up, B would stay
    # up (one failure of three) and get requests
    text = g.config_path.read_text()
    assert "interval = 0.1" in text
    g.config_path.write_text(text.replace("interval = 0.1", "interval = 30"))
    r = request(g.admin_port, "POST", "/reload", body="")
    assert r.status == 200 and json.loads(r.body)["ok"] is True, r.body
    served_b = b.counts()[1]
    assert bodies(g.port, 20) == ["A"] * 20
    assert b.counts()[1] == served_b
    assert server_state(g, b.addr)["state"] == "down"
    assert gauge(g, b.addr) == 0


def test_new_server_after_reload_starts_up(gateway, origins):
    a, b, c = origins("A"), origins("B"), origins("C")
    g = start(gateway, health_config([a, b]))
    wait_for(lambda: c.counts()[0] == 0 and a.counts()[0] >= 1, what="checks")
    text = g.config_path.read_text()
    g.config_path.write_text(text.replace('"%s"' % b.addr, '"%s",\n"%s"' % (b.addr, c.addr)))
    r = request(g.admin_port, "POST", "/reload", body="")
    assert r.status == 200, r.body
    assert server_state(g, c.addr)["state"] == "up"
    wait_for(lambda: c.counts()[0] >= 1, what="the new server checked")
    assert "C" in bodies(g.port, 12)


def test_tls_upstream_is_checked_over_tls(gateway, tmp_path):
    from tlsupstream import TlsUpstream, make_pki
    pki = make_pki(tmp_path / "pki")
    up = TlsUpstream(tmp_path, pki.cert, pki.key)
    try:
        g = start(gateway, config(
            admin={"addr": "127.0.0.1:$PORT1"},
            upstreams={"app": {"servers": ["127.0.0.1:%d" % up.port], "tls": True,
                               "tls_verify": True, "tls_ca": str(pki.ca),
                               "tls_server_name": "localhost",
                               "health": dict(HEALTH, path="/status/200")}},
            routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
        wait_for(lambda: server_state(g, "127.0.0.1:%d" % up.port)["checks"] >= 3,
                 what="TLS checks")
        s = server_state(g, "127.0.0.1:%d" % up.port)
        assert s["state"] == "up" and s["last_error"] is None, s
        st = up.stats(pki.ca)
        assert st["handshakes"] >= 3
        assert ["GET", "/status/200"] in st["log"]
    finally:
        up.stop()


# --------------------------------------------------------------------------
# -t

@pytest.mark.parametrize("health,why", [
    ('{ path = "/h", intervl = 2 }', "upstreams.app.health.intervl: unknown option "
                                    "(did you mean 'interval'?)"),
    ('{ rise = 0 }', "upstreams.app.health.rise: must be at least"),
    ('{ fall = 1.5 }', "upstreams.app.health.fall: expected a whole number"),
    ('{ interval = "2" }', "upstreams.app.health.interval: expected a number, got string"),
    ('{ timeout = 0 }', "upstreams.app.health.timeout: must be at least"),
    ('{ status = { 500, 200 } }', "upstreams.app.health.status: expected { low, high }"),
    ('{ status = { 200 } }', "upstreams.app.health.status: expected { low, high }"),
    ('{ status = { 200, 700 } }', "upstreams.app.health.status: expected { low, high }"),
    ('{ type = "udp" }', 'upstreams.app.health.type: expected "http" or "tcp"'),
    ('{ path = "healthz" }', "upstreams.app.health.path: expected a path starting with '/'"),
    ('{ type = "tcp", path = "/h" }', "upstreams.app.health.path: a tcp check sends no request"),
    ('"yes"', "upstreams.app.health: expected a table or true, got string"),
])
def test_check_rejects_bad_health_tables(run_moongate, health, why):
    text = ('return {\n  listen = { { addr = "127.0.0.1:$PORT" } },\n'
            '  upstreams = { app = { servers = { "127.0.0.1:9" },\n'
            '    health = %s } },\n'
            '  routes = { { match = { prefix = "/" }, upstream = "app" } },\n}\n' % health)
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 1, p.stdout_text + p.stderr_text
    out = p.stdout_text + p.stderr_text
    assert why in out, out
    assert "moongate.lua:4:" in out, out


def test_check_reports_every_health_error(run_moongate):
    text = ('return {\n  listen = { { addr = "127.0.0.1:$PORT" } },\n'
            '  upstreams = {\n'
            '    a = { servers = { "127.0.0.1:9" }, health = { falls = 2 } },\n'
            '    b = { servers = { "127.0.0.1:9" }, health = { rise = -1 } },\n'
            '  },\n'
            '  routes = { { match = { prefix = "/" }, upstream = "a" } },\n}\n')
    p = run_moongate("-t", "-c", "$CFG", config=text)
    out = p.stdout_text + p.stderr_text
    assert p.returncode == 1
    assert "moongate.lua:4: upstreams.a.health.falls: unknown option (did you mean 'fall'?)" \
        in out, out
    assert "moongate.lua:5: upstreams.b.health.rise: must be at least" in out, out


def test_check_accepts_health_tables(run_moongate):
    text = ('return {\n  listen = { { addr = "127.0.0.1:$PORT" } },\n'
            '  upstreams = {\n'
            '    a = { servers = { "127.0.0.1:9" }, health = true },\n'
            '    b = { servers = { "127.0.0.1:9" }, health = { type = "tcp", interval = 5 } },\n'
            '    c = { servers = { "127.0.0.1:9" }, health = { path = "/healthz", interval = 2,'
            ' timeout = 1, rise = 2, fall = 3, status = { 200, 399 } } },\n'
            '  },\n'
            '  routes = { { match = { prefix = "/" }, upstream = "a" } },\n}\n')
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 0, p.stdout_text + p.stderr_text


def test_host_name_server_is_checked_at_its_current_address(gateway, origins):
    """A server written as a host name is checked where the resolver's latest
    answer points: moving the name to an address nobody listens on takes it
    down, without a reload."""
    from conftest import Raw
    from dnshelp import FakeDNS
    dns = FakeDNS({"app.test": ["127.0.0.1"]})
    a, b = origins("A"), origins("B")
    try:
        name = "app.test:%d" % a.port
        g = start(gateway, config(
            admin={"addr": "127.0.0.1:$PORT1"}, resolver=[dns.addr, Raw("valid = 0.3")],
            upstreams={"app": {"servers": [name, b.addr], "health": HEALTH}},
            routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
        wait_for(lambda: a.counts()[0] >= 2, what="checks of the named server")
        assert server_state(g, name)["state"] == "up"
        dns.records["app.test"] = ["127.0.0.2"]  # nothing listens there on a's port
        wait_for(lambda: server_state(g, name)["state"] == "down", timeout=10,
                 what="the named server down at its new address")
        assert bodies(g.port, 10) == ["B"] * 10
    finally:
        dns.stop()


def test_restarted_worker0_keeps_state_and_checking(gateway, origins):
    """The prober runs in worker 0; when it dies the master's new worker 0
    finds the state in shared memory and checks on."""
    import os
    import signal
    from opshelp import holds_socket, listening_inode
    a, b = origins("A"), origins("B")
    b.health_status = 500
    g = start(gateway, health_config([a, b], workers=2,
                                     health={"interval": 0.2, "fall": 2, "rise": 2}))
    wait_for(lambda: len(children(g.pid)) == 2, what="two workers")
    wait_state(g, b, "down")
    inode = listening_inode(g.admin_port)
    w0 = [p for p in children(g.pid) if holds_socket(p, inode)]
    assert len(w0) == 1
    os.kill(w0[0], signal.SIGKILL)
    wait_for(lambda: len(children(g.pid)) == 2 and w0[0] not in children(g.pid),
             what="worker 0 restarted")
    wait_for(lambda: status(g)["workers"] == 2, what="/status answers")
    assert server_state(g, b.addr)["state"] == "down"
    served_b = b.counts()[1]
    assert bodies(g.port, 10) == ["A"] * 10
    assert b.counts()[1] == served_b
    b.health_status = 200
    wait_state(g, b, "up")
