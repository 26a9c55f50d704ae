"""Helpers for the operations tests (test_operations.py, test_reload.py,
test_workers.py): configs with an admin listener, the ops_version plugin
copied into the test directory (so a test can edit or break it), the admin
API (/status, /metrics, /reload), worker processes from /proc, and a wrk run
that counts statuses and the version each response carries."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Client, request, subst

HERE = Path(__file__).resolve().parent
PLUGINS_OPS = HERE / "plugins_ops"
VERSION_LINE = 'local VERSION = "v1"'


# --------------------------------------------------------------------------
# plugins and configs

def version_plugin_text(version="v1", broken=False):
    text = (PLUGINS_OPS / "ops_version.lua").read_text()
    assert VERSION_LINE in text
    if broken:
        # a syntax error on the VERSION line
        return text.replace(VERSION_LINE, 'local VERSION = = "%s"' % version)
    return text.replace(VERSION_LINE, 'local VERSION = "%s"' % version)


def version_line_number():
    text = (PLUGINS_OPS / "ops_version.lua").read_text()
    return text[:text.index(VERSION_LINE)].count("\n") + 1


def install_plugins(workdir, version="v1"):
    """tmp/plugins/ with ops_version.lua (VERSION = version) and ops_counter.lua."""
    d = Path(workdir) / "plugins"
    d.mkdir(exist_ok=True)
    write_file(d / "ops_version.lua", version_plugin_text(version))
    shutil.copy(PLUGINS_OPS / "ops_counter.lua", d / "ops_counter.lua")
    return d / "ops_version.lua"


def write_file(path, text):
    """Rewrites a file in place (same inode), as `cat > file` does."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def replace_file(path, text):
    """Writes a temporary file and renames it over path, as most editors do."""
    tmp = Path(str(path) + ".tmp~")
    write_file(tmp, text)
    os.replace(tmp, path)


def ops_config(workers=1, version="A", extra_routes="", listen=None, admin=True,
               limits="drain_timeout = 10", watch=False, upstream=None, extra_top=""):
    """Config text: traffic on $PORT0 (or `listen`, a list of $PORTn), admin
    on $PORT1; plugins from $DIR/plugins. Routes:
      /v        ops_version answering (version from VERSION in the plugin file)
      /cfg      ops_version with version = "cfg-<version>" (changes with the config)
      /hello    handler answering "hello-<version>"
      /sleep    handler: sleeps ?s= seconds (default 2), answers "slept-<version>"
      /count    ops_counter (per-worker count)
      /up/...   (with upstream) the upstream, X-Ops-Version: "up-<version>"
    """
    listen = listen or ["$PORT0"]
    ls = ", ".join('{ addr = "127.0.0.1:%s" }' % p for p in listen)
    w = '"auto"' if workers == "auto" else str(workers)
    ups = ""
    up_route = ""
    if upstream is not None:
        ups = ('upstreams = { app = { servers = { "%s" }, keepalive = 32, '
               'connect_timeout = 2, read_timeout = 10 } },' % upstream.addr)
        up_route = ('{ name = "up", match = { prefix = "/up/" }, upstream = "app",\n'
                    '      plugins = { { "ops_version", mode = "header", version = "up-%s" } } },'
                    % version)
    return """return {
  workers = %(w)s,
  listen = { %(ls)s },
  %(admin)s
  access_log = false,
  watch = %(watch)s,
  limits = { %(limits)s },
  plugin_path = { "$DIR/plugins" },
  %(ups)s
  %(extra_top)s
  routes = {
    { name = "v", match = { path = "/v" }, plugins = { { "ops_version" } } },
    { name = "cfg", match = { path = "/cfg" },
      plugins = { { "ops_version", version = "cfg-%(version)s" } } },
    { name = "hello", match = { path = "/hello" },
      handler = function(req) return 200, "hello-%(version)s" end },
    { name = "sleep", match = { path = "/sleep" },
      handler = function(req)
        gw.sleep(tonumber(req.query:match("s=([%%d.]+)") or "2"))
        return 200, "slept-%(version)s"
      end },
    { name = "count", match = { path = "/count" }, plugins = { { "ops_counter" } } },
    %(up_route)s
    %(extra_routes)s
  },
}
""" % {"w": w, "ls": ls, "admin": 'admin = { addr = "127.0.0.1:$PORT1" },' if admin else "",
       "watch": "true" if watch else "false", "limits": limits, "version": version,
       "ups": ups, "up_route": up_route, "extra_routes": extra_routes,
       "extra_top": extra_top}


def start_ops(gateway, workdir, nports=2, plugin_version="v1", **kw):
    """Installs the plugins and starts moongate on ops_config(**kw)."""
    install_plugins(workdir, plugin_version)
    g = gateway(ops_config(**kw), nports=nports, wait=False)
    g.admin_port = g.ports[1]
    wait_workers_ready(g)
    return g


def rewrite_config(g, **kw):
    """Writes a new ops_config(**kw) over the running gateway's config file."""
    write_file(g.config_path, subst(ops_config(**kw), g.ports, g.dir))


# --------------------------------------------------------------------------
# admin API

def status(g):
    r = request(g.admin_port, "GET", "/status")
    assert r.status == 200, r
    return r.json()


def post_reload(g):
    r = request(g.admin_port, "POST", "/reload", body="")
    return r.status, json.loads(r.body)


_METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> {(name, ((label, value), ...)): float}. Fails on a
    line that is neither a comment nor a sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metrics(g):
    r = request(g.admin_port, "GET", "/metrics")
    assert r.status == 200, r
    return parse_metrics(r.text())


def metric(ms, name, **labels):
    return ms.get((name, tuple(sorted(labels.items()))), 0.0)


def reloads(g):
    ms = metrics(g)
    return (metric(ms, "moongate_reloads_total", result="ok"),
            metric(ms, "moongate_reloads_total", result="failed"))


# --------------------------------------------------------------------------
# processes

def children(pid):
    """PIDs of pid's child processes (its workers)."""
    kids = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                kids += [int(x) for x in
                         Path("/proc/%d/task/%s/children" % (pid, tid)).read_text().split()]
            except OSError:
                pass
    except OSError:
        return []
    return sorted(set(kids))


def listening_inode(port):
    """The inode of the socket listening on 127.0.0.1:port (from /proc/net/tcp)."""
    want = "0100007F:%04X" % port
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == want and f[3] == "0A":
            return int(f[9])
    return None


def holds_socket(pid, inode):
    tag = "socket:[%d]" % inode
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == tag:
                    return True
            except OSError:
                pass
    except OSError:
        pass
    return False


def worker_pids(g, expect):
    """Waits until the master has `expect` children; returns their PIDs."""
    deadline = time.monotonic() + 10
    while True:
        kids = children(g.pid)
        if len(kids) == expect:
            return kids
        if time.monotonic() > deadline:
            pytest.fail("expected %d workers under master %d, found %r"
                        % (expect, g.pid, kids))
        time.sleep(0.05)


def wait_workers_ready(g, timeout=15):
    """The listeners are bound before the workers run (multi-worker mode):
    waits until the admin API and the traffic listener answer."""
    deadline = time.monotonic() + timeout
    while True:
        if g.proc.poll() is not None:
            pytest.fail("moongate exited with %s at start\n%s"
                        % (g.proc.returncode, g.stderr_text()[-3000:]))
        try:
            if request(g.admin_port, "GET", "/status", timeout=2).status == 200 and \
                    request(g.port, "GET", "/hello", timeout=2).status == 200:
                return
        except (OSError, AssertionError):
            pass
        if time.monotonic() > deadline:
            pytest.fail("moongate not answering after %ss\n%s" % (timeout, g.stderr_text()[-3000:]))
        time.sleep(0.05)


def body_of(port, path, timeout=10):
    r = request(port, "GET", path, timeout=timeout)
    assert r.status == 200, (path, r, r.body[:300])
    return r.text()


def poll_body(port, path, want, timeout=5.0, what=None):
    """Polls GET path on fresh connections until the body is `want`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = body_of(port, path, timeout=3)
            if last == want:
                return
        except (OSError, AssertionError) as e:
            last = repr(e)
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.1fs waiting for %s to answer %r (last: %r)"
                        % (timeout, what or path, want, last))
        time.sleep(0.05)


_ON_GEN = re.compile(r"\] (\d+): (?:reloaded: generation (\d+)\b|moongate \S+ started "
                     r"\(pid \d+, worker \d+, generation (\d+)\))")


def workers_on(g, gen, timeout=5.0):
    """Waits until every worker of the master g logged that it runs
    generation `gen` (each worker reloads on its own signal); False if that
    did not happen within the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        on = {int(p) for p, a, b in _ON_GEN.findall(g.stderr_text()) if int(a or b) == gen}
        kids = children(g.pid)
        if kids and set(kids) <= on:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def poll_streak(port, path, want, streak=10, timeout=5.0, what=None):
    """Polls until `streak` consecutive fresh-connection requests answer
    `want` (with several workers, each reloads on its own signal)."""
    deadline = time.monotonic() + timeout
    run, last = 0, None
    while run < streak:
        try:
            last = body_of(port, path, timeout=3)
        except (OSError, AssertionError) as e:
            last = repr(e)
        run = run + 1 if last == want else 0
        if run < streak and time.monotonic() > deadline:
            pytest.fail("timed out after %.1fs waiting for %s to answer %r %d times in a row "
                        "(last: %r)" % (timeout, what or path, want, streak, last))


def all_answer(port, path, want, n=20):
    """n requests on fresh connections all answer `want`."""
    got = [body_of(port, path) for _ in range(n)]
    assert got == [want] * n, got


# --------------------------------------------------------------------------
# wrk

WRK_SCRIPT = r"""
-- counts statuses and the version each response carries (X-Ops-Version or
-- a short body); prints OPSWRK/OPSSEEN lines at the end.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; bad = 0; badlist = ""; seen = {} end
function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else
    bad = bad + 1
    if #badlist < 300 then badlist = badlist .. status .. " " end
  end
  local v = headers["X-Ops-Version"] or headers["x-ops-version"]
  if v == nil and body and #body <= 40 then v = body end
  v = v or "?"
  seen[v] = (seen[v] or 0) + 1
end
function done(summary, latency, requests)
  local okn, badn, bl, all = 0, 0, "", {}
  for _, t in ipairs(threads) do
    okn = okn + t:get("ok"); badn = badn + t:get("bad"); bl = bl .. t:get("badlist")
    for k, v in pairs(t:get("seen")) do all[k] = (all[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format("OPSWRK requests=%d ok=%d bad=%d connect=%d read=%d write=%d "
    .. "timeout=%d status=%d\n", summary.requests, okn, badn, e.connect, e.read, e.write,
    e.timeout, e.status))
  io.write("OPSBAD " .. bl .. "\n")
  for k, v in pairs(all) do io.write(string.format("OPSSEEN %s %d\n", k, v)) end
end
"""


class Wrk:
    """wrk -t1 -cC -dDs against 127.0.0.1:port/path in the background."""

    def __init__(self, workdir, port, path, conns=20, duration=10, timeout=5):
        script = Path(workdir) / "ops-wrk.lua"
        script.write_text(WRK_SCRIPT)
        self.out_path = Path(workdir) / ("wrk-%d.out" % port)
        self._out = open(self.out_path, "wb")
        self.duration = duration
        self.proc = subprocess.Popen(
            ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--timeout", "%ds" % timeout,
             "-s", str(script), "http://127.0.0.1:%d%s" % (port, path)],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def result(self):
        try:
            self.proc.wait(self.duration + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail("wrk did not finish")
        finally:
            self._out.close()
        text = self.out_path.read_text(errors="replace")
        m = re.search(r"OPSWRK requests=(\d+) ok=(\d+) bad=(\d+) connect=(\d+) read=(\d+) "
                      r"write=(\d+) timeout=(\d+) status=(\d+)", text)
        assert m, "no summary from wrk:\n" + text
        keys = ["requests", "ok", "bad", "connect", "read", "write", "timeout", "status"]
        res = dict(zip(keys, (int(x) for x in m.groups())))
        res["seen"] = {k: int(v) for k, v in re.findall(r"^OPSSEEN (\S+) (\d+)$", text, re.M)}
        res["badlist"] = (re.search(r"^OPSBAD (.*)$", text, re.M) or [None, ""])[1]
        res["text"] = text
        return res

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if not self._out.closed:
            self._out.close()


# --------------------------------------------------------------------------
# raw sockets

def connect_refused(port):
    """True if a connect to 127.0.0.1:port is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


def keepalive_client(port, path="/hello"):
    """A connection that has done one request and stays open."""
    c = Client(port, timeout=10)
    c.request("GET", path)
    r = c.read_response()
    assert r.status == 200, r
    return c, r


def send_signal(pid, sig=signal.SIGHUP):
    os.kill(pid, sig)
