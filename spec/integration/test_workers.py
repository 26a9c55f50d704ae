"""Worker processes and graceful stop: a killed worker is restarted by the
master while the others keep serving, SIGTERM drains in-flight requests and
exits 0 (a second SIGINT stops at once), and the metrics add up over all
workers."""
import os
import signal
import threading
import time
from collections import Counter

import pytest

from conftest import request, wait_for
from luahelp import get, run_flights
from opshelp import (Wrk, body_of, children, connect_refused, holds_socket,
                     keepalive_client, listening_inode, metric, metrics, start_ops, status,
                     version_plugin_text, worker_pids, write_file)

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["w1", "w2"])


def in_flight(g):
    return metric(metrics(g), "moongate_requests_active")


def start_sleepers(g, n, seconds):
    """n requests to /sleep?s=seconds, each on its own connection, in a
    thread; returns (thread, results list)."""
    out = []

    def go():
        out.extend(run_flights(g.port, [get("/sleep?s=%s&i=%d" % (seconds, i))
                                        for i in range(n)], timeout=seconds + 20))

    t = threading.Thread(target=go)
    t.start()
    return t, out


# --------------------------------------------------------------------------
# worker restarts

@pytest.mark.parametrize("which", ["worker1", "worker0_admin"])
def test_kill_9_worker_under_load_is_restarted(gateway, tmp_path, which):
    g = start_ops(gateway, tmp_path, workers=2)
    pids = worker_pids(g, 2)
    admin_inode = listening_inode(g.admin_port)
    assert admin_inode is not None
    w0 = [p for p in pids if holds_socket(p, admin_inode)]
    assert len(w0) == 1, "exactly one worker serves the admin listener: %r" % w0
    victim = w0[0] if which == "worker0_admin" else [p for p in pids if p != w0[0]][0]
    survivor = [p for p in pids if p != victim][0]
    before = metric(metrics(g), "moongate_worker_restarts_total")
    assert before == 0
    wrk = Wrk(tmp_path, g.port, "/hello", conns=20, duration=6)
    try:
        time.sleep(2)
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        new = wait_for(lambda: [p for p in children(g.pid) if p not in pids], timeout=5,
                       what="a new worker process")
        assert len(new) == 1, new
        assert victim not in children(g.pid)
        assert survivor in children(g.pid), "the other worker must keep running"
        res = wrk.result()
    finally:
        wrk.stop()
    summary = {k: v for k, v in res.items() if k != "text"}
    # only the killed worker's connections (at most 20) may fail
    errors = res["connect"] + res["read"] + res["write"] + res["timeout"]
    assert res["requests"] > 1000, summary
    assert errors <= 20, summary
    assert res["bad"] == 0, summary
    assert res["ok"] >= 0.99 * (res["requests"] + errors), summary
    wait_for(lambda: status(g)["workers"] == 2, timeout=5, what="/status workers = 2")
    assert metric(metrics(g), "moongate_worker_restarts_total") == before + 1
    # every new request after the restart succeeds, the admin API included
    for i in range(100):
        assert body_of(g.port, "/hello") == "hello-A"
    assert status(g)["generation"] == 1
    assert sorted(children(g.pid)) == sorted([survivor] + new)
    err = g.stderr_text()
    assert "pid %d" % victim in err and "signal 9" in err, err[-2000:]
    assert time.monotonic() - t_kill < 30


def test_crash_looping_worker_is_backed_off(gateway, tmp_path):
    """A worker killed again right after every start is restarted with a
    growing delay (not in a tight loop), and the gateway recovers."""
    g = start_ops(gateway, tmp_path, workers=2)
    pids = worker_pids(g, 2)
    admin_inode = listening_inode(g.admin_port)
    victim = [p for p in pids if not holds_socket(p, admin_inode)][0]
    known = set(pids)
    starts = []
    t0 = time.monotonic()
    for i in range(4):
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: [p for p in children(g.pid) if p not in known], timeout=10,
                       what="restart %d" % (i + 1))
        starts.append(time.monotonic() - t0)
        known.update(new)
        victim = new[0]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # back-off 0.1, 0.2, 0.4, 0.8 s ...: later gaps are longer than the first
    assert gaps[-1] > 0.3, (starts, gaps)
    assert metric(metrics(g), "moongate_worker_restarts_total") == 4
    for _ in range(40):
        assert body_of(g.port, "/hello") == "hello-A"


# --------------------------------------------------------------------------
# graceful stop

@WORKERS
def test_sigterm_drains_20_in_flight_requests(gateway, tmp_path, workers):
    g = start_ops(gateway, tmp_path, workers=workers, limits="drain_timeout = 10")
    t, flights = start_sleepers(g, 20, 2)
    wait_for(lambda: in_flight(g) == 20, timeout=5, what="20 requests in flight")
    t_stop = time.monotonic()
    os.kill(g.pid, signal.SIGTERM)
    # (that new connections are refused meanwhile: the next test)
    t.join(30)
    assert len(flights) == 20
    bad = [(f.i, f.status, f.error) for f in flights if f.status != 200 or f.error]
    assert not bad, bad
    assert all(f.body == b"slept-A" for f in flights)
    rc = g.proc.wait(10)
    assert rc == 0
    took = time.monotonic() - t_stop
    assert took < 5, "the stop took %.1fs for 2 s requests" % took
    assert all(f.t_done - t_stop < 4 for f in flights)
    if workers > 1:
        assert children(g.pid) == []


@WORKERS
def test_sigterm_refuses_new_connections_at_once(gateway, tmp_path, workers):
    """While in-flight requests drain, a new connection is refused (not left
    waiting in a backlog nobody accepts from)."""
    g = start_ops(gateway, tmp_path, workers=workers, limits="drain_timeout = 10")
    t, flights = start_sleepers(g, 2, 3)
    wait_for(lambda: in_flight(g) == 2, timeout=5, what="2 requests in flight")
    os.kill(g.pid, signal.SIGTERM)
    time.sleep(0.5)
    refused = connect_refused(g.port)
    admin_refused = connect_refused(g.admin_port)
    t.join(30)
    assert all(f.status == 200 for f in flights), [(f.status, f.error) for f in flights]
    assert refused, "a new connection was accepted 0.5 s into the stop"
    assert admin_refused, "a new admin connection was accepted 0.5 s into the stop"
    assert g.proc.wait(10) == 0


@WORKERS
def test_second_sigint_stops_at_once(gateway, tmp_path, workers):
    g = start_ops(gateway, tmp_path, workers=workers, limits="drain_timeout = 30")
    t, flights = start_sleepers(g, 5, 20)
    wait_for(lambda: in_flight(g) == 5, timeout=5, what="5 requests in flight")
    os.kill(g.pid, signal.SIGINT)
    time.sleep(0.5)
    assert g.proc.poll() is None, "the first SIGINT must wait for in-flight requests"
    t0 = time.monotonic()
    os.kill(g.pid, signal.SIGINT)
    rc = g.proc.wait(10)
    took = time.monotonic() - t0
    assert took < 2, "second SIGINT: stop took %.1fs" % took
    assert rc == 0
    if workers > 1:
        wait_for(lambda: children(g.pid) == [], timeout=2, what="no worker left")
    t.join(30)
    # the in-flight requests were cut, not answered after 20 s
    assert all(f.status is None for f in flights), [(f.status, f.error) for f in flights]


def test_idle_keepalive_connections_closed_on_stop_with_workers(gateway, tmp_path):
    g = start_ops(gateway, tmp_path, workers=2, limits="drain_timeout = 20")
    conns = [keepalive_client(g.port)[0] for _ in range(6)]
    t0 = time.monotonic()
    os.kill(g.pid, signal.SIGTERM)
    assert g.proc.wait(10) == 0
    assert time.monotonic() - t0 < 3, "idle keep-alive connections held the stop"
    for c in conns:
        assert c.closed(2)
        c.close()


# --------------------------------------------------------------------------
# metrics over workers

def test_requests_total_counts_exactly_across_workers(gateway, tmp_path):
    g = start_ops(gateway, tmp_path, workers=2)
    worker_pids(g, 2)
    before = metric(metrics(g), "moongate_requests_total", route="count", status="200")
    before_all = metric(metrics(g), "moongate_request_duration_seconds_count", route="count")
    n = 300
    bodies = []
    lock = threading.Lock()

    def client(k):
        for i in range(n // 10):
            r = request(g.port, "GET", "/count?c=%d&i=%d" % (k, i))
            assert r.status == 200
            with lock:
                bodies.append(int(r.text()))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(bodies) == n
    after = metric(metrics(g), "moongate_requests_total", route="count", status="200")
    assert after - before == n, (before, after)
    # each worker counts on its own: the same count twice means both served
    dup = [k for k, v in Counter(bodies).items() if v > 1]
    assert dup, "one worker served all %d requests" % n
    assert max(bodies) < n
    assert sorted(bodies) != list(range(1, n + 1))
    # the route's latency histogram counted them too, across workers
    after_all = metric(metrics(g), "moongate_request_duration_seconds_count", route="count")
    assert after_all - before_all == n, (before_all, after_all)


def test_workers_auto_starts_one_per_core(gateway, tmp_path):
    g = start_ops(gateway, tmp_path, workers="auto")
    ncpu = os.cpu_count()
    if ncpu > 1:
        worker_pids(g, ncpu)
    st = status(g)
    assert st["workers"] == ncpu, st
    assert metric(metrics(g), "moongate_workers") == ncpu


def test_drain_timeout_bounds_the_stop_with_workers(gateway, tmp_path):
    g = start_ops(gateway, tmp_path, workers=2, limits="drain_timeout = 1")
    t, flights = start_sleepers(g, 2, 8)
    wait_for(lambda: in_flight(g) == 2, timeout=5, what="2 requests in flight")
    t0 = time.monotonic()
    os.kill(g.pid, signal.SIGTERM)
    rc = g.proc.wait(10)
    took = time.monotonic() - t0
    assert took < 3.5, "drain_timeout = 1 but the stop took %.1fs" % took
    assert rc == 0
    assert children(g.pid) == []
    t.join(20)
    assert all(f.status is None for f in flights)


def test_restarted_worker_uses_the_last_good_config(gateway, tmp_path):
    """A worker restarted after a crash runs the config the master last
    accepted, not a broken or newer file on disk."""
    g = start_ops(gateway, tmp_path, workers=2)
    pids = worker_pids(g, 2)
    write_file(tmp_path / "plugins" / "ops_version.lua", version_plugin_text("v9", broken=True))
    g.config_path.write_text(g.config_path.read_text().replace("hello-A", "hello-Z"))
    for p in pids:
        os.kill(p, signal.SIGKILL)
    wait_for(lambda: len([p for p in children(g.pid) if p not in pids]) == 2, timeout=10,
             what="both workers restarted")
    wait_for(lambda: status(g)["workers"] == 2, timeout=5, what="the admin API back")
    for _ in range(20):
        assert body_of(g.port, "/hello") == "hello-A"
        assert body_of(g.port, "/v") == "v1"
    assert metric(metrics(g), "moongate_worker_restarts_total") == 2
