"""Graceful stop: SIGTERM/SIGINT stop accepting, finish in-flight requests
within drain_timeout, and exit 0."""
import os
import signal
import threading
import time

import pytest

from conftest import Client, can_connect, proxy_config, request, wait_for


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_graceful_stop_finishes_in_flight(gateway, upstream, sig):
    g = gateway(proxy_config([upstream.addr], limits={"drain_timeout": 10}))
    out = {}

    def inflight():
        out["r"] = request(g.port, "GET", "/slow/1500?inflight=1", timeout=10)

    t = threading.Thread(target=inflight)
    t.start()
    wait_for(lambda: upstream.stats()["inflight"] == 1, timeout=3,
             what="the request to reach the upstream")
    os.kill(g.pid, sig)
    wait_for(lambda: not can_connect(g.port), timeout=1.0,
             what="the gateway to stop accepting")
    t.join()
    assert out["r"].status == 200 and out["r"].json()["path"] == "/slow/1500?inflight=1"
    t0 = time.monotonic()
    rc = g.proc.wait(5)
    assert rc == 0
    assert time.monotonic() - t0 < 3


def test_drain_timeout_bounds_the_stop(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], read_timeout=30, limits={"drain_timeout": 1}))
    c = Client(g.port, timeout=15)
    c.request("GET", "/slow/8000")
    wait_for(lambda: upstream.stats()["inflight"] == 1, timeout=3,
             what="the request to reach the upstream")
    t0 = time.monotonic()
    os.kill(g.pid, signal.SIGTERM)
    rc = g.proc.wait(6)
    assert time.monotonic() - t0 < 4, "drain_timeout=1 but the stop took longer"
    assert rc == 0
    c.close()


def test_idle_keepalive_connections_do_not_delay_stop(gateway, upstream):
    g = gateway(proxy_config([upstream.addr], limits={"drain_timeout": 20, "idle_timeout": 60}))
    clients = []
    for i in range(5):
        c = Client(g.port)
        c.request("GET", "/echo?i=%d" % i)
        assert c.read_response().status == 200
        clients.append(c)
    t0 = time.monotonic()
    os.kill(g.pid, signal.SIGTERM)
    rc = g.proc.wait(10)
    assert rc == 0
    assert time.monotonic() - t0 < 3, "idle keep-alive clients held the stop"
    for c in clients:
        assert c.closed(2)
        c.close()
