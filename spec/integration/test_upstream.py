"""Upstream pools: balancing, retries, timeouts, concurrency, and small load
checks with ab and wrk."""
import re
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (assert_json_error, assert_serves, free_port, proxy_config, request,
                      wait_for)


@pytest.fixture
def two(upstream_factory):
    return upstream_factory(), upstream_factory()


@pytest.fixture
def blackhole():
    """A listening address whose accept queue is full: connects to it hang."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    time.sleep(0.05)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.1", port))
        hangs = False
    except socket.timeout:
        hangs = True
    finally:
        probe.close()
    if not hangs:
        pytest.skip("this kernel does not leave connects to a full backlog hanging")
    yield "127.0.0.1:%d" % port
    for s in fillers:
        s.close()
    lsock.close()


def port_of(r):
    assert r.status == 200, r
    return int(r.header("X-Upstream-Port"))


def test_round_robin_alternates(gateway, two):
    a, b = two
    g = gateway(proxy_config([a.addr, b.addr], balance="round_robin"))
    seq = [port_of(request(g.port, "GET", "/echo?i=%d" % i)) for i in range(10)]
    assert seq.count(a.port) == 5 and seq.count(b.port) == 5, seq
    assert all(x != y for x, y in zip(seq, seq[1:])), seq


def test_least_conn_prefers_idle_server(gateway, two):
    a, b = two
    g = gateway(proxy_config([a.addr, b.addr], balance="least_conn"))
    held = {}

    def hold():
        held["r"] = request(g.port, "GET", "/slow/2500?held=1", timeout=10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        busy = wait_for(lambda: ([u for u in two if u.stats()["inflight"] == 1] or [None])[0],
                        timeout=3, what="the held request to reach an upstream")
        idle = b if busy is a else a
        seq = [port_of(request(g.port, "GET", "/echo?i=%d" % i)) for i in range(6)]
        assert seq == [idle.port] * 6, \
            "least_conn sent requests to the busy server: %r (busy=%d)" % (seq, busy.port)
    finally:
        t.join()
    assert port_of(held["r"]) == busy.port


def test_retry_next_server_when_connect_fails(gateway, upstream):
    dead = "127.0.0.1:%d" % free_port()
    g = gateway(proxy_config([dead, upstream.addr], retries=1, balance="round_robin"))
    for i in range(8):
        r = request(g.port, "GET", "/echo?i=%d" % i)
        assert r.status == 200, r
        assert port_of(r) == upstream.port
    assert upstream.stats()["requests"] == 8


def test_all_servers_dead_is_502(gateway):
    dead = ["127.0.0.1:%d" % free_port() for _ in range(2)]
    g = gateway(proxy_config(dead, retries=1))
    assert_json_error(request(g.port, "GET", "/echo"), 502)
    # both are now marked down (passive health, fail_timeout 10 s): 503
    for i in range(2):
        assert_json_error(request(g.port, "GET", "/echo"), 503)
    assert_json_error(request(g.port, "POST", "/echo", body=b"abc"), 503)
    # without passive health, every request tries them: 502 each time
    g = gateway(proxy_config(dead, retries=1, max_fails=0))
    for i in range(3):
        assert_json_error(request(g.port, "GET", "/echo"), 502)
    assert_json_error(request(g.port, "POST", "/echo", body=b"abc"), 502)


def test_retries_zero_does_not_retry(gateway, upstream):
    dead = "127.0.0.1:%d" % free_port()
    g = gateway(proxy_config([dead, upstream.addr], retries=0, balance="round_robin"))
    statuses = [request(g.port, "GET", "/echo?i=%d" % i).status for i in range(4)]
    assert 502 in statuses, statuses
    assert set(statuses) <= {200, 502}, statuses


def test_no_retry_after_the_request_was_sent(gateway, two):
    # retries are for connect failures: a POST the upstream may have processed
    # is not replayed on the next server.
    a, b = two
    g = gateway(proxy_config([a.addr, b.addr], retries=1))
    assert_json_error(request(g.port, "POST", "/reset", body=b"pay once"), 502)
    total = a.stats()["requests"] + b.stats()["requests"]
    assert total == 1, "the POST reached the upstreams %d times" % total


def test_connect_timeout(gateway, blackhole):
    g = gateway(proxy_config([blackhole], connect_timeout=0.5, retries=0))
    t0 = time.monotonic()
    r = request(g.port, "GET", "/echo", timeout=10)
    elapsed = time.monotonic() - t0
    assert r.status in (502, 504), r
    assert_json_error(r, r.status)
    assert 0.3 <= elapsed < 3, elapsed


def test_connect_timeout_then_retry_next(gateway, blackhole, upstream):
    g = gateway(proxy_config([blackhole, upstream.addr], connect_timeout=0.5, retries=1,
                             balance="round_robin"))
    t0 = time.monotonic()
    for i in range(2):
        r = request(g.port, "GET", "/echo?i=%d" % i, timeout=10)
        assert port_of(r) == upstream.port
    assert time.monotonic() - t0 < 4


def test_concurrent_clients_get_their_own_responses(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], keepalive=8))

    def worker(k):
        out = []
        for i in range(5):
            p = "/echo?client=%d&i=%d" % (k, i)
            body = ("body-%d-%d" % (k, i)).encode()
            r = request(g.port, "POST", p, body=body)
            out.append(r.status == 200 and r.json()["path"] == p
                       and r.json()["body"].encode() == body)
        return out

    with ThreadPoolExecutor(30) as ex:
        results = [x for xs in ex.map(worker, range(30)) for x in xs]
    assert results.count(True) == 150, results.count(False)
    assert_serves(g.port)


def test_ab_keepalive_load(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], keepalive=32))
    p = subprocess.run(["ab", "-q", "-k", "-n", "3000", "-c", "20", "-s", "10",
                        "http://127.0.0.1:%d/echo" % g.port],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr + p.stdout
    assert re.search(r"Complete requests:\s+3000\b", p.stdout), p.stdout
    assert re.search(r"Failed requests:\s+0\b", p.stdout), p.stdout
    assert "Non-2xx" not in p.stdout, p.stdout
    st = upstream.stats()
    assert st["requests"] == 3000
    assert st["connections"] <= 64, st


def test_wrk_many_connections(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], keepalive=64))
    p = subprocess.run(["wrk", "-t1", "-c200", "-d2s", "--timeout", "5s",
                        "http://127.0.0.1:%d/echo" % g.port],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr + p.stdout
    assert "Socket errors" not in p.stdout, p.stdout
    assert "Non-2xx" not in p.stdout, p.stdout
    m = re.search(r"(\d+) requests in", p.stdout)
    assert m and int(m.group(1)) > 200, p.stdout
    assert_serves(g.port)
