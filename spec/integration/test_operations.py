"""The admin listener: GET /status (JSON), GET /metrics (Prometheus text),
POST /reload; kept apart from the traffic listeners."""
import json
import re
import subprocess
import threading
import time

import pytest

from conftest import assert_json_error, free_port, moongate_bin, request, wait_for
from luahelp import get, run_flights
from opshelp import (body_of, metric, metrics, parse_metrics, post_reload, reloads,
                     start_ops, status, write_file)

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["w1", "w2"])


@WORKERS
def test_status_fields_and_types(gateway, tmp_path, workers):
    t_start = time.monotonic()
    g = start_ops(gateway, tmp_path, workers=workers)
    r = request(g.admin_port, "GET", "/status")
    assert r.status == 200
    assert r.header("content-type", "").split(";")[0].strip() == "application/json", r.headers
    st = r.json()
    for key, typ in [("version", str), ("pid", int), ("uptime", (int, float)),
                     ("workers", int), ("generation", int), ("reloads", dict)]:
        assert key in st, (key, st)
        assert isinstance(st[key], typ) and not isinstance(st[key], bool), (key, st)
    assert "last_reload" in st and st["last_reload"] is None, st
    assert re.match(r"^\d+\.\d+\.\d+", st["version"]), st
    v = subprocess.run([str(moongate_bin()), "--version"], capture_output=True, text=True)
    assert st["version"] in v.stdout, (st["version"], v.stdout)
    assert st["pid"] == g.pid, "pid is the process the user signals (the master)"
    assert 0 <= st["uptime"] <= time.monotonic() - t_start + 1, st
    assert st["workers"] == workers
    assert st["generation"] == 1
    assert st["reloads"] == {"ok": 0, "failed": 0}, st
    time.sleep(0.3)
    assert status(g)["uptime"] >= st["uptime"] + 0.25
    # after a reload: last_reload is {ok, at, error}
    code, doc = post_reload(g)
    assert code == 200 and doc["ok"] is True and isinstance(doc["generation"], int), doc
    # (that the generation is exactly the new one: test_post_reload_answers_the_new_generation)
    wait_for(lambda: status(g)["generation"] == 2, timeout=5, what="generation 2")
    st = status(g)
    lr = st["last_reload"]
    assert set(lr) >= {"ok", "at", "error"}, lr
    assert lr["ok"] is True and lr["error"] is None, lr
    assert isinstance(lr["at"], (int, float)) and abs(lr["at"] - time.time()) < 60, lr
    assert st["reloads"] == {"ok": 1, "failed": 0}, st


@WORKERS
def test_admin_and_traffic_listeners_are_separate(gateway, tmp_path, workers):
    g = start_ops(gateway, tmp_path, workers=workers)
    # admin endpoints are not on the traffic listener
    for method, path in [("GET", "/status"), ("GET", "/metrics"), ("POST", "/reload")]:
        r = request(g.port, method, path, body="" if method == "POST" else None)
        assert_json_error(r, 404)
    assert status(g)["generation"] == 1 and reloads(g) == (0, 0), \
        "POST /reload on the traffic listener must not reload"
    # traffic routes are not on the admin listener
    for path in ["/hello", "/v", "/count"]:
        r = request(g.admin_port, "GET", path)
        assert r.status == 404, (path, r, r.body)
        assert b"hello" not in r.body and r.body != b"v1"
    assert_json_error(request(g.admin_port, "GET", "/nosuch"), 404)
    # and the traffic listener still serves traffic
    assert body_of(g.port, "/hello") == "hello-A"
    # methods
    assert_json_error(request(g.admin_port, "GET", "/reload"), 405)
    assert_json_error(request(g.admin_port, "POST", "/status", body=""), 405)
    assert_json_error(request(g.admin_port, "DELETE", "/metrics"), 405)
    assert reloads(g) == (0, 0)


def test_admin_on_a_catch_all_config(gateway, tmp_path):
    """A prefix "/" route catches /status on the traffic listener; the admin
    listener still answers its own endpoints only."""
    g = start_ops(gateway, tmp_path, workers=1, extra_routes=(
        '{ name = "all", match = { prefix = "/" }, '
        'handler = function(req) return 200, "traffic:" .. req.path end },'))
    assert body_of(g.port, "/status") == "traffic:/status"
    assert body_of(g.port, "/metrics") == "traffic:/metrics"
    assert status(g)["generation"] == 1
    assert request(g.admin_port, "GET", "/anything").status == 404


@WORKERS
def test_metrics_format_and_names(gateway, tmp_path, upstream, workers):
    g = start_ops(gateway, tmp_path, workers=workers, upstream=upstream)
    for _ in range(3):
        assert body_of(g.port, "/hello") == "hello-A"
    assert request(g.port, "GET", "/nosuch").status == 404
    r = request(g.admin_port, "GET", "/metrics")
    assert r.status == 200
    assert r.header("content-type", "").startswith("text/plain"), r.headers
    text = r.text()
    assert text.endswith("\n")
    ms = parse_metrics(text)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    want = {
        "moongate_requests_total": "counter",
        "moongate_request_duration_seconds": "histogram",
        "moongate_upstream_connect_errors_total": "counter",
        "moongate_upstream_timeouts_total": "counter",
        "moongate_upstream_retries_total": "counter",
        "moongate_connections_active": "gauge",
        "moongate_requests_active": "gauge",
        "moongate_upstream_connections_idle": "gauge",
        "moongate_lua_memory_bytes": "gauge",
        "moongate_reloads_total": "counter",
        "moongate_config_generation": "gauge",
        "moongate_workers": "gauge",
        "moongate_worker_restarts_total": "counter",
    }
    for name, typ in want.items():
        assert types.get(name) == typ, (name, types.get(name))
        assert re.search(r"^# HELP %s \S" % name, text, re.M), name
    # every sample belongs to a declared family
    for (name, _labels) in ms:
        fam = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or fam in types, name
    assert metric(ms, "moongate_requests_total", route="hello", status="200") >= 3
    # unmatched requests are counted too, under some route label
    assert sum(v for (n, l), v in ms.items()
               if n == "moongate_requests_total" and ("status", "404") in l) >= 1
    for w in range(workers):
        assert metric(ms, "moongate_lua_memory_bytes", worker=str(w)) > 0, w
    assert metric(ms, "moongate_workers") == workers
    assert metric(ms, "moongate_config_generation") == 1
    assert metric(ms, "moongate_reloads_total", result="ok") == 0
    assert metric(ms, "moongate_reloads_total", result="failed") == 0
    assert metric(ms, "moongate_connections_active") >= 1  # this /metrics request
    # histogram, by route: cumulative buckets ending in +Inf == count
    buckets = sorted(((float(dict(l)["le"]), v) for (n, l), v in ms.items()
                      if n == "moongate_request_duration_seconds_bucket"
                      and dict(l).get("route") == "hello"), key=lambda x: x[0])
    assert len(buckets) >= 5 and buckets[-1][0] == float("inf")
    vals = [v for _, v in buckets]
    assert vals == sorted(vals), buckets
    assert vals[-1] == metric(ms, "moongate_request_duration_seconds_count", route="hello") >= 3
    # each configured upstream has its error and retry series from the start, at 0
    for fam in ("moongate_upstream_connect_errors_total", "moongate_upstream_timeouts_total",
                "moongate_upstream_retries_total"):
        assert ms.get((fam, (("upstream", "app"),))) == 0, fam
    for kind in ("connect", "timeout", "reset", "invalid"):
        assert ms.get(("moongate_upstream_errors_total",
                       (("kind", kind), ("upstream", "app")))) == 0, kind
    # every histogram sample names its route
    assert all("route" in dict(l) for (n, l) in ms
               if n.startswith("moongate_request_duration_seconds")), ms


@WORKERS
def test_latency_histogram_sees_slow_requests(gateway, tmp_path, workers):
    g = start_ops(gateway, tmp_path, workers=workers)
    ms0 = metrics(g)
    for _ in range(2):
        assert body_of(g.port, "/sleep?s=0.3") == "slept-A"
    ms = metrics(g)

    def bucket(m, le):
        return metric(m, "moongate_request_duration_seconds_bucket", route="sleep", le=le)

    # both land above 0.25 s and at or below 0.5 s, in their route's histogram
    assert bucket(ms, "0.25") - bucket(ms0, "0.25") == 0
    assert bucket(ms, "0.5") - bucket(ms0, "0.5") == 2
    dsum = metric(ms, "moongate_request_duration_seconds_sum", route="sleep") - \
        metric(ms0, "moongate_request_duration_seconds_sum", route="sleep")
    assert 0.59 <= dsum < 1.5, dsum
    # another route's histogram saw none of them
    assert metric(ms, "moongate_request_duration_seconds_count", route="hello") == \
        metric(ms0, "moongate_request_duration_seconds_count", route="hello")


@WORKERS
def test_active_gauges_follow_in_flight_requests(gateway, tmp_path, workers):
    g = start_ops(gateway, tmp_path, workers=workers)
    out = []
    t = threading.Thread(target=lambda: out.extend(
        run_flights(g.port, [get("/sleep?s=1.5&i=%d" % i) for i in range(6)], timeout=20)))
    t.start()
    wait_for(lambda: metric(metrics(g), "moongate_requests_active") == 6, timeout=5,
             what="6 requests active")
    ms = metrics(g)
    assert metric(ms, "moongate_connections_active") >= 7  # 6 + this /metrics one
    t.join(20)
    assert all(f.status == 200 for f in out)
    wait_for(lambda: metric(metrics(g), "moongate_requests_active") == 0, timeout=3,
             what="no request active")


def test_upstream_error_counters(gateway, tmp_path, upstream):
    """A dead server in the pool: connect errors and retries are counted; a
    read timeout is counted as a timeout."""
    dead = "127.0.0.1:%d" % free_port()
    extra = ('upstreams = { app = { servers = { "%s", "%s" }, retries = 1, keepalive = 8, '
             'connect_timeout = 1, read_timeout = 0.5 } },' % (dead, upstream.addr))
    g = start_ops(gateway, tmp_path, workers=1, extra_top=extra, extra_routes=(
        '{ name = "app", match = { prefix = "/app/" }, upstream = "app" },'
        '{ name = "reset", match = { path = "/reset" }, upstream = "app" },'
        '{ name = "garbage", match = { path = "/garbage" }, upstream = "app" },'))
    ok = 0
    for i in range(6):
        r = request(g.port, "GET", "/app/echo?i=%d" % i)
        ok += r.status == 200
    assert ok == 6, "retries must hide the dead server"
    ms = metrics(g)
    assert metric(ms, "moongate_upstream_connections_idle") >= 1, "the pool keeps a connection"
    ce = metric(ms, "moongate_upstream_connect_errors_total", upstream="app")
    assert ce >= 1
    assert metric(ms, "moongate_upstream_errors_total", upstream="app", kind="connect") == ce
    assert metric(ms, "moongate_upstream_retries_total", upstream="app") >= 1
    t0 = metric(ms, "moongate_upstream_timeouts_total", upstream="app")
    r = request(g.port, "GET", "/app/echo?delay=2000")
    assert r.status == 504, r
    ms = metrics(g)
    assert metric(ms, "moongate_upstream_timeouts_total", upstream="app") == t0 + 1
    assert metric(ms, "moongate_upstream_errors_total", upstream="app", kind="timeout") == t0 + 1
    # a reset and an answer that is not HTTP, counted by kind; all by upstream
    r0 = metric(ms, "moongate_upstream_errors_total", upstream="app", kind="reset")
    for path in ("/reset", "/garbage"):
        for _ in range(3):  # the dead server may be picked first: retried, then these
            if request(g.port, "GET", path).status == 502:
                break
    ms = metrics(g)
    assert metric(ms, "moongate_upstream_errors_total", upstream="app", kind="reset") >= r0 + 1
    assert metric(ms, "moongate_upstream_errors_total", upstream="app", kind="invalid") >= 1
    assert all(dict(l).get("upstream") for (n, l) in ms if n.startswith("moongate_upstream_")
               and n.endswith("_total")), ms


def test_failed_reload_error_is_json_escaped(gateway, tmp_path):
    """An error message with quotes and a newline still makes valid JSON."""
    g = start_ops(gateway, tmp_path, workers=1)
    text = g.config_path.read_text().replace('access_log = false,',
                                             'access_log = "a\\"b\\n", x = = 1,')
    write_file(g.config_path, text)
    r = request(g.admin_port, "POST", "/reload", body="")
    assert r.status == 400
    doc = json.loads(r.body)
    assert doc["ok"] is False and g.config_path.name in doc["error"]
    st = status(g)
    assert st["last_reload"]["ok"] is False
    assert st["last_reload"]["error"] == doc["error"]


@WORKERS
def test_post_reload_answers_the_new_generation(gateway, tmp_path, workers):
    """Each POST /reload answers the generation that reload put in force
    (the one /status then shows), reload after reload."""
    g = start_ops(gateway, tmp_path, workers=workers)
    wrong = []
    for i in range(8):
        code, doc = post_reload(g)
        assert code == 200 and doc["ok"] is True, doc
        wait_for(lambda: status(g)["reloads"]["ok"] == i + 1, timeout=5,
                 what="reload %d to complete" % (i + 1))
        gen = status(g)["generation"]
        if doc["generation"] != gen:
            wrong.append((i + 1, doc["generation"], gen))
    assert not wrong, "POST /reload answered (reload #, generation answered, in force): %r" % wrong
    assert status(g)["generation"] == 9
