"""Signals as nginx: SIGUSR1 reopens the access and error logs (logrotate),
SIGQUIT stops gracefully like SIGTERM/SIGINT, SIGHUP still reloads. Each in
single-process mode and with workers."""
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import Client, request, wait_for

HANDLER_CONFIG = """
return {
  workers = %(workers)d,
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = "access.log",
  error_log = { path = "error.log" },
  routes = {
    { name = "slow", match = { path = "/slow" },
      handler = function(req) gw.log("info", "slow request started") gw.sleep(0.6)
                                return 200, "slow done" end },
    { name = "all", match = { prefix = "/" },
      handler = function(req) return 200, "ok" end },
  },
}
"""


def lines(path):
    p = Path(path)
    return p.read_text(errors="replace").splitlines() if p.exists() else []


def paths_in(path):
    out = []
    for l in lines(path):
        for word in l.split():
            if word.startswith("/r/"):
                out.append(word)
    return out


class Load:
    """nconns threads, each doing keep-alive requests /r/<t>/<i> on one
    connection until told to finish, then `tail` more (bounded)."""

    def __init__(self, port, nconns, tail=150, limit=20000):
        self.port = port
        self.done = []          # every path that got its 200
        self.after = []         # paths requested after finish() was called
        self.errors = []
        self.lock = threading.Lock()
        self.finish_evt = threading.Event()
        self.tail = tail
        self.limit = limit
        self.threads = [threading.Thread(target=self.run, args=(t,)) for t in range(nconns)]

    def run(self, t):
        try:
            with Client(self.port) as c:
                tail = None
                for i in range(self.limit):
                    if tail is None and self.finish_evt.is_set():
                        tail = self.tail
                    if tail is not None:
                        if tail == 0:
                            break
                        tail -= 1
                    path = "/r/%d/%d" % (t, i)
                    c.request("GET", path)
                    r = c.read_response()
                    if r.status != 200:
                        raise AssertionError("%s -> %d" % (path, r.status))
                    with self.lock:
                        self.done.append(path)
                        if tail is not None:
                            self.after.append(path)
        except Exception as e:  # reported by the test
            self.errors.append(repr(e))

    def start(self):
        for t in self.threads:
            t.start()

    def count(self):
        with self.lock:
            return len(self.done)

    def finish(self):
        self.finish_evt.set()
        for t in self.threads:
            t.join(60)


@pytest.mark.parametrize("workers", [1, 2])
def test_usr1_reopens_logs_under_load_losing_nothing(gateway, tmp_path, workers):
    g = gateway(HANDLER_CONFIG % {"workers": workers})
    log = tmp_path / "access.log"
    elog = tmp_path / "error.log"
    wait_for(lambda: "started" in elog.read_text() if elog.exists() else False,
             what="the error log file")
    nprocs = workers if workers > 1 else 1
    # the workers log "started" when their loop (and signal handlers) is up
    wait_for(lambda: elog.read_text().count("started (pid") >= nprocs,
             what="every worker started")
    load = Load(g.port, nconns=2 * workers)
    load.start()
    wait_for(lambda: load.count() >= 300 or load.errors, timeout=30, what="some load")
    # logrotate: move the files, then USR1
    os.rename(log, tmp_path / "access.log.1")
    os.rename(elog, tmp_path / "error.log.1")
    os.kill(g.pid, signal.SIGUSR1)
    # every process reopened (each says so in the new error log)
    wait_for(lambda: lines(elog) and
             sum("reopened the log files" in l for l in lines(elog)) >= nprocs,
             timeout=10, what="every process to reopen its logs")
    if workers > 1:  # the master reopened its own error log too
        assert any("reopening the log files in %d workers" % workers in l for l in lines(elog))
    load.finish()
    assert not load.errors, load.errors
    assert g.proc.poll() is None, "USR1 killed moongate"
    total = len(load.done)
    assert total > 300 and len(load.after) == 150 * 2 * workers
    old, new = paths_in(tmp_path / "access.log.1"), []
    wait_for(lambda: len(paths_in(tmp_path / "access.log.1")) + len(paths_in(log)) >= total,
             timeout=10, what="every access log line")
    old, new = paths_in(tmp_path / "access.log.1"), paths_in(log)
    # every request has exactly one line, in the old file or the new one
    assert sorted(old + new) == sorted(load.done)
    # the later lines went to the new file
    assert set(load.after) <= set(new)
    assert old, "the old file got nothing"
    # the error log: the rename left older lines in error.log.1
    assert "started" in (tmp_path / "error.log.1").read_text()
    # still serving
    assert request(g.port, "GET", "/after").status == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_sigquit_stops_gracefully(gateway, tmp_path, workers):
    g = gateway(HANDLER_CONFIG % {"workers": workers})
    elog = tmp_path / "error.log"
    wait_for(lambda: elog.exists() and elog.read_text().count("started (pid") >= workers,
             what="every worker started")
    result = {}

    def slow():
        try:
            result["r"] = request(g.port, "GET", "/slow", timeout=10)
        except Exception as e:
            result["e"] = repr(e)

    t = threading.Thread(target=slow)
    t.start()
    # the slow request is in flight (its handler sleeps 0.6 s)
    wait_for(lambda: "slow request started" in elog.read_text(), what="the slow request")
    os.kill(g.pid, signal.SIGQUIT)
    t.join(10)
    assert "e" not in result, result
    assert result["r"].status == 200 and result["r"].body == b"slow done"
    assert g.proc.wait(10) == 0
    # no longer accepting
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", g.port), timeout=1).close()


def test_usr1_with_logs_on_stdout_and_stderr(gateway):
    g = gateway("""
return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = "stdout",
  routes = { { match = { prefix = "/" }, handler = function(req) return 200, "ok" end } },
}
""")
    assert request(g.port, "GET", "/before").status == 200
    os.kill(g.pid, signal.SIGUSR1)
    wait_for(lambda: "reopened the log files" in g.stderr_text(), what="the reopen")
    assert request(g.port, "GET", "/after").status == 200
    wait_for(lambda: "/after" in g.stdout_text(), what="the access log line on stdout")
    assert "/before" in g.stdout_text()
