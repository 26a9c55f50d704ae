"""gw.redis through the gateway: a real redis-server on a free port, the real
binary, real HTTP clients. Concurrency (many requests multiplexed on a small
pool), Redis down, reload, and clients that go away while their request waits
on Redis."""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Client, PeerClosed, Raw, config, free_port, request, wait_for

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed")


class Redis:
    """redis-server on a free 127.0.0.1 port in a temp dir, stopped by PID."""

    def __init__(self, tmp, *extra, port=None):
        self.port = port or free_port()
        self.dir = tmp / ("redis-%d" % self.port)
        self.dir.mkdir(exist_ok=True)
        self.log = open(self.dir / "log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--dir", str(self.dir), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(self.ping, timeout=10, what="redis-server on %d" % self.port)

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def command(self, *args):
        """One command over a fresh connection; returns the raw RESP reply."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data
        finally:
            s.close()

    def ping(self):
        if self.proc.poll() is not None:
            pytest.fail("redis-server exited: %s" % (self.dir / "log").read_text())
        try:
            reply = self.command("PING")
            return reply == b"+PONG\r\n" or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def redis_factory(tmp_path):
    started = []

    def make(*extra, port=None):
        r = Redis(tmp_path, *extra, port=port)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def redis(redis_factory):
    return redis_factory()


HANDLERS = {
    "/incr": 'function(req) local v, err = gw.redis():call("INCR", "k") '
             'if not v then return 503, err end return 200, tostring(v) end',
    "/get": 'function(req) local v, err = gw.redis():call("GET", req.query) '
            'if err then return 503, err end return 200, tostring(v) end',
    "/blpop": 'function(req) local v, err = gw.redis():call("BLPOP", "queue", 1) '
              'return 200, tostring(v and v[2] or err) end',
    "/pipe": 'function(req) local r, err = gw.redis():pipeline({ {"INCR", "p"}, '
             '{"INCR", "p"}, {"LPUSH", "k", "x"} }) '
             'if not r then return 503, err end '
             'return 200, r[1] .. "," .. r[2] .. "," .. tostring(r[3][1]) end',
}


def redis_config(addr, pool=2, timeout=2, workers=1, **more):
    conf = {"addr": addr, "pool": pool, "timeout": timeout}
    conf.update(more)
    routes = [{"match": {"path": p}, "handler": Raw(h)} for p, h in HANDLERS.items()]
    return config(redis={"default": conf}, routes=routes, workers=workers)


@pytest.mark.parametrize("workers", [1, 2])
def test_200_concurrent_requests_on_a_pool_of_2(gateway, redis, workers):
    g = gateway(redis_config(redis.addr, pool=2, workers=workers))

    def one(_):
        return request(g.port, "GET", "/incr", timeout=20)

    with ThreadPoolExecutor(max_workers=50) as ex:
        rs = list(ex.map(one, range(200)))
    assert [r.status for r in rs] == [200] * 200, [r.body for r in rs if r.status != 200][:3]
    assert sorted(int(r.body) for r in rs) == list(range(1, 201))
    assert redis.command("GET", "k") == b"$3\r\n200\r\n"
    # at most the pool's 2 connections per worker (plus this probe's own)
    info = redis.command("INFO", "clients").decode()
    clients = int(info.split("connected_clients:")[1].split("\r\n")[0])
    assert clients <= 2 * workers + 1, info


def test_pipeline_through_a_handler(gateway, redis):
    redis.command("SET", "k", "str")
    g = gateway(redis_config(redis.addr))
    r = request(g.port, "GET", "/pipe")
    assert r.status == 200
    assert r.body == b"1,2,false"  # the error reply is { false, msg }


def test_redis_down_fails_fast_then_recovers(gateway, redis_factory):
    port = free_port()
    g = gateway(redis_config("127.0.0.1:%d" % port, timeout=2))
    t0 = time.monotonic()
    r = request(g.port, "GET", "/incr")
    assert r.status == 503 and b"connection refused" in r.body
    assert time.monotonic() - t0 < 1.0
    for _ in range(5):  # backing off: still fast
        t0 = time.monotonic()
        assert request(g.port, "GET", "/incr").status == 503
        assert time.monotonic() - t0 < 1.0
    redis_factory(port=port)
    wait_for(lambda: request(g.port, "GET", "/incr").status == 200, timeout=10,
             what="the gateway to reconnect")


def test_redis_restart_mid_run(gateway, redis_factory):
    redis = redis_factory()
    g = gateway(redis_config(redis.addr))
    assert request(g.port, "GET", "/incr").body == b"1"
    redis.stop()
    for _ in range(3):
        t0 = time.monotonic()
        r = request(g.port, "GET", "/incr")
        assert r.status == 503
        assert time.monotonic() - t0 < 1.0
    redis_factory(port=redis.port)
    r = wait_for(lambda: (lambda x: x if x.status == 200 else None)(
        request(g.port, "GET", "/incr")), timeout=10, what="reconnect after restart")
    assert r.body == b"1"  # a fresh server (no persistence)


def test_password_and_db_from_the_config(gateway, redis_factory):
    redis = redis_factory("--requirepass", "pw")
    g = gateway(redis_config(redis.addr, password="pw", db=2))
    assert request(g.port, "GET", "/incr").body == b"1"
    assert b"NOAUTH" in redis.command("GET", "k")


def _abort_while_waiting(port, n):
    """n clients send /blpop (waits on Redis up to 1 s) and hang up mid-wait."""
    clients = []
    for _ in range(n):
        c = Client(port, timeout=5)
        c.request("GET", "/blpop")
        clients.append(c)
    time.sleep(0.2)  # let the requests reach Redis: BLPOP holds them there
    for c in clients:
        c.close()


def requests_active(admin_port):
    body = request(admin_port, "GET", "/metrics").text()
    for line in body.splitlines():
        if line.startswith("moongate_requests_active "):
            return int(line.split()[1])
    raise AssertionError("no moongate_requests_active in /metrics")


def test_client_disconnect_while_waiting_on_redis(gateway, redis):
    text = redis_config(redis.addr, pool=2, timeout=3).replace(
        "return {", 'return {\n  admin = { addr = "127.0.0.1:$PORT1" },', 1)
    g = gateway(text)
    admin = g.ports[1]
    _abort_while_waiting(g.port, 10)
    # The aborted requests are gone at once, though Redis still holds them.
    wait_for(lambda: requests_active(admin) == 0, timeout=5,
             what="requests_active to drop to 0 after the clients left")
    # Wake the abandoned BLPOPs: their replies land in detached tickets.
    for i in range(10):
        redis.command("RPUSH", "queue", "v%d" % i)
    time.sleep(0.2)
    # The worker lives and the pool still works.
    for _ in range(5):
        r = request(g.port, "GET", "/incr")
        assert r.status == 200
    r = request(g.port, "GET", "/get?k")
    assert r.status == 200 and r.body == b"5"
    # A waiter that stays gets its value.
    with Client(g.port, timeout=5) as c:
        c.request("GET", "/blpop")
        time.sleep(0.1)
        redis.command("RPUSH", "queue", "mine")
        r = c.read_response()
        assert r.status == 200 and r.body == b"mine"


def test_client_disconnect_then_late_reply_after_timeout(gateway, redis):
    # BLPOP outlives the call's timeout: the call returns "timeout", the
    # client may be gone too, and the late reply (nil after 1 s) is discarded.
    g = gateway(redis_config(redis.addr, pool=2, timeout=0.3))
    _abort_while_waiting(g.port, 5)
    with Client(g.port, timeout=5) as c:
        c.request("GET", "/blpop")
        r = c.read_response()
        assert r.status == 200 and r.body == b"timeout"
    time.sleep(1.2)  # the BLPOPs end on the server; their replies are dropped
    assert request(g.port, "GET", "/incr").status == 200


def test_reload_switches_the_named_pool(gateway, redis):
    g = gateway(redis_config(redis.addr, db=0))
    assert request(g.port, "GET", "/incr").body == b"1"
    g.config_path.write_text(redis_config(redis.addr, db=4).replace("$PORT", str(g.port)))
    os.kill(g.pid, signal.SIGHUP)
    wait_for(lambda: "reloaded" in g.stderr_text(), timeout=10, what="the reload")
    assert request(g.port, "GET", "/incr").body == b"1"  # db 4 has its own k
    assert redis.command("GET", "k") == b"$1\r\n1\r\n"
