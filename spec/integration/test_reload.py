"""Reload (SIGHUP, POST /reload, watch = true): new requests see the new
config and plugins, in-flight ones finish on the old generation, broken
configs and plugins are refused while the old generation keeps serving, no
connection is refused or reset, and listeners follow the config.
Every test runs with workers = 1 (in-process reload) and workers = 2 (a
master signalling its workers)."""
import os
import re
import signal
import threading
import time

import pytest

from conftest import PeerClosed, request, wait_for
from opshelp import (Wrk, all_answer, body_of, connect_refused, keepalive_client,
                     ops_config, poll_body, poll_streak, post_reload, reloads, replace_file,
                     rewrite_config, start_ops, status, subst, version_line_number,
                     version_plugin_text, workers_on, write_file)

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["w1", "w2"])


def reload_by(g, how):
    """Reloads by SIGHUP to the (master) process or POST /reload; returns the
    POST's answer (None for SIGHUP)."""
    if how == "hup":
        g.proc.send_signal(signal.SIGHUP)
        return None
    code, doc = post_reload(g)
    assert code == 200 and doc["ok"] is True, (code, doc)
    return doc


def reload_and_wait(g, how, ok_before):
    """Reloads and waits until the reload counted as ok."""
    reload_by(g, how)
    wait_for(lambda: reloads_tolerant(g)[0] >= ok_before + 1, timeout=5,
             what="the reload to complete")


def reloads_tolerant(g):
    """reloads(g), or (-1, -1) when the admin connection is dropped: during a
    rolling restart (workers > 1, listeners changed) the old worker 0 may drop
    a connection it accepted just before its stop; the tests that check that
    connections survive do so on the traffic listener."""
    try:
        return reloads(g)
    except (PeerClosed, OSError):
        return (-1, -1)


def expect_after_reload(g, workers, path, want):
    """After a reload completed: with one process the very next request sees
    the new generation; with workers, each worker reloads on its own signal,
    so poll first, then every request must see it."""
    if workers == 1:
        all_answer(g.port, path, want, n=5)
    else:
        assert workers_on(g, status(g)["generation"]), \
            "not every worker reports the new generation in the log"
        poll_streak(g.port, path, want, streak=10, timeout=5)
        all_answer(g.port, path, want, n=20)


# --------------------------------------------------------------------------
# under load

@WORKERS
@pytest.mark.parametrize("target", ["plugin", "upstream"])
def test_reload_every_second_under_load(gateway, upstream, tmp_path, workers, target):
    """wrk -t1 -c20 -d10s while the config flips between two versions every
    second (SIGHUP and POST /reload alternating): no socket error, no non-2xx,
    and both versions were served."""
    kw = dict(workers=workers, upstream=upstream)
    g = start_ops(gateway, tmp_path, **kw)
    path, tag = ("/cfg", "cfg-%s") if target == "plugin" else ("/up/echo", "up-%s")
    assert body_of(g.port, "/cfg") == "cfg-A"
    wrk = Wrk(tmp_path, g.port, path, conns=20, duration=10)
    issued = 0
    try:
        t0 = time.monotonic()
        for i in range(1, 10):
            time.sleep(max(0.0, t0 + i - time.monotonic()))
            rewrite_config(g, version="B" if i % 2 else "A", **kw)
            reload_by(g, "hup" if i % 2 else "post")
            issued += 1
        res = wrk.result()
    finally:
        wrk.stop()
    summary = {k: v for k, v in res.items() if k != "text"}
    assert res["requests"] > 500, summary
    assert (res["connect"], res["read"], res["write"], res["timeout"]) == (0, 0, 0, 0), summary
    assert res["bad"] == 0 and res["status"] == 0, summary
    assert res["ok"] == res["requests"] or res["ok"] >= res["requests"] - 20, summary
    assert res["seen"].get(tag % "A", 0) > 0 and res["seen"].get(tag % "B", 0) > 0, summary
    assert set(res["seen"]) <= {tag % "A", tag % "B"}, summary
    wait_for(lambda: reloads(g) == (issued, 0), timeout=5,
             what="%d ok reloads and no failed one (have %r)" % (issued, reloads(g)))
    assert status(g)["generation"] == 1 + issued
    # the last config (i = 9: B) is in force
    expect_after_reload(g, workers, "/cfg", "cfg-B")


# --------------------------------------------------------------------------
# in-flight requests finish on the old generation

@WORKERS
def test_sleeping_request_keeps_the_old_generation(gateway, upstream, tmp_path, workers):
    """Requests sleeping 3 s (in a plugin, in a handler, and in an upstream
    call behind a plugin) when the reload happens answer 200 with the old
    behaviour; a request made after the reload sees the new one."""
    kw = dict(workers=workers, upstream=upstream)
    g = start_ops(gateway, tmp_path, **kw)
    results = {}

    def slow(name, path, port=g.port):
        t = time.monotonic()
        r = request(port, "GET", path, timeout=15)
        results[name] = (r, time.monotonic() - t, time.monotonic())

    threads = [threading.Thread(target=slow, args=a) for a in
               [("plugin", "/v?sleep=3"), ("handler", "/sleep?s=3"),
                ("upstream", "/up/echo?delay=3000")]]
    for t in threads:
        t.start()
    wait_for(lambda: upstream.stats()["inflight"] == 1, timeout=5,
             what="the upstream request to arrive")
    time.sleep(0.2)  # let the plugin and handler requests reach their sleeps
    write_file(tmp_path / "plugins" / "ops_version.lua", version_plugin_text("v2"))
    rewrite_config(g, version="B", **kw)
    t_reload = time.monotonic()
    doc = reload_by(g, "post")
    if workers == 1:
        assert doc["generation"] == 2
    wait_for(lambda: status(g)["generation"] == 2, timeout=5, what="generation 2")
    expect_after_reload(g, workers, "/v", "v2")
    expect_after_reload(g, workers, "/hello", "hello-B")
    r = request(g.port, "GET", "/up/echo?after=1")
    assert r.status == 200 and r.header("X-Ops-Version") == "up-B", r
    t_new = time.monotonic()
    for t in threads:
        t.join(15)
    for name in ("plugin", "handler", "upstream"):
        assert name in results, "the %s request got no answer" % name
    rp, dp, endp = results["plugin"]
    rh, dh, endh = results["handler"]
    ru, du, endu = results["upstream"]
    assert rp.status == 200 and rp.text() == "v1", (rp, rp.body)
    assert rh.status == 200 and rh.text() == "slept-A", (rh, rh.body)
    assert ru.status == 200 and ru.header("X-Ops-Version") == "up-A", ru
    assert ru.json()["path"] == "/up/echo?delay=3000"
    # the new behaviour was seen while the old requests were still sleeping
    assert t_new < min(endp, endh, endu), "the reload only took effect after the old requests"
    assert min(dp, dh, du) >= 2.9
    assert t_reload < min(endp, endh, endu)


# --------------------------------------------------------------------------
# refused reloads

def _assert_refused_state(g, before_failed, pattern):
    st = status(g)
    assert st["last_reload"] is not None, st
    assert st["last_reload"]["ok"] is False, st
    assert re.search(pattern, st["last_reload"]["error"]), st
    assert isinstance(st["last_reload"]["at"], (int, float)), st
    assert st["reloads"]["failed"] == before_failed + 1, st
    ok, failed = reloads(g)
    assert failed == before_failed + 1


@WORKERS
def test_broken_plugin_is_refused_and_old_generation_serves(gateway, tmp_path, workers):
    g = start_ops(gateway, tmp_path, workers=workers)
    plugin = tmp_path / "plugins" / "ops_version.lua"
    line = version_line_number()
    pattern = r"ops_version\.lua:%d:" % line
    write_file(plugin, version_plugin_text("v2", broken=True))
    # POST /reload answers 400 with file:line
    r = request(g.admin_port, "POST", "/reload", body="")
    assert r.status == 400, (r, r.body)
    doc = r.json()
    assert doc["ok"] is False and re.search(pattern, doc["error"]), doc
    _assert_refused_state(g, 0, pattern)
    all_answer(g.port, "/v", "v1", n=10 if workers == 1 else 20)
    assert status(g)["generation"] == 1
    # SIGHUP: the error goes to the log
    n_logged = len(re.findall(pattern, g.stderr_text()))
    g.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(g)[1] == 2, timeout=5, what="the SIGHUP reload to fail")
    wait_for(lambda: len(re.findall(pattern, g.stderr_text())) > n_logged, timeout=3,
             what="the error in stderr")
    st = status(g)
    assert st["last_reload"]["ok"] is False and re.search(pattern, st["last_reload"]["error"])
    assert st["generation"] == 1 and st["reloads"] == {"ok": 0, "failed": 2}, st
    all_answer(g.port, "/v", "v1", n=10 if workers == 1 else 20)
    # fixed: the next reload goes through
    write_file(plugin, version_plugin_text("v2"))
    reload_and_wait(g, "post", 0)
    expect_after_reload(g, workers, "/v", "v2")
    st = status(g)
    assert st["last_reload"]["ok"] is True and st["last_reload"]["error"] is None, st
    assert st["generation"] == 2 and st["reloads"] == {"ok": 1, "failed": 2}, st


BROKEN_CONFIGS = {
    # Lua syntax error on the access_log line
    "syntax": (lambda text: text.replace("access_log = false,", "access_log = = false,"),
               "access_log = = false,"),
    # a route naming an upstream that does not exist
    "unknown_upstream": (lambda text: text.replace(
        '{ name = "count",', '{ name = "bad", match = { path = "/bad" }, upstream = "nope" },\n'
        '    { name = "count",'), '{ name = "count",'),
    # a plugin that is on no path
    "missing_plugin": (lambda text: text.replace(
        '{ name = "count",', '{ name = "bad", match = { path = "/bad" }, '
        'plugins = { { "ops_nosuch" } } },\n    { name = "count",'), '{ name = "count",'),
}


@WORKERS
@pytest.mark.parametrize("kind", sorted(BROKEN_CONFIGS))
def test_broken_config_is_refused_and_old_generation_serves(gateway, tmp_path, workers, kind):
    g = start_ops(gateway, tmp_path, workers=workers)
    edit, marker = BROKEN_CONFIGS[kind]
    good = g.config_path.read_text()
    bad = edit(ops_config(workers=workers, version="B"))
    line = bad[:bad.index(marker)].count("\n") + 1
    write_file(g.config_path, subst(bad, g.ports, g.dir))
    name = re.escape(g.config_path.name)
    pattern = r"%s:%d:" % (name, line) if kind == "syntax" else r"%s:\d+:" % name
    r = request(g.admin_port, "POST", "/reload", body="")
    assert r.status == 400, (r, r.body)
    doc = r.json()
    assert doc["ok"] is False and re.search(pattern, doc["error"]), (pattern, doc)
    _assert_refused_state(g, 0, pattern)
    all_answer(g.port, "/hello", "hello-A", n=10 if workers == 1 else 20)
    g.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(g)[1] == 2, timeout=5, what="the SIGHUP reload to fail")
    wait_for(lambda: re.search(pattern, g.stderr_text()), timeout=3, what="the error in stderr")
    assert status(g)["generation"] == 1
    all_answer(g.port, "/hello", "hello-A", n=10 if workers == 1 else 20)
    assert request(g.port, "GET", "/bad").status == 404
    # the good config again
    write_file(g.config_path, good.replace("hello-A", "hello-C"))
    reload_and_wait(g, "hup", 0)
    expect_after_reload(g, workers, "/hello", "hello-C")


# --------------------------------------------------------------------------
# watch = true

@WORKERS
def test_watch_picks_up_plugin_and_config_edits(gateway, tmp_path, workers):
    kw = dict(workers=workers, watch=True)
    g = start_ops(gateway, tmp_path, **kw)
    plugin = tmp_path / "plugins" / "ops_version.lua"
    time.sleep(1.1)  # a later mtime second than the files' creation
    # an editor that writes in place
    write_file(plugin, version_plugin_text("v2-in-place"))
    poll_body(g.port, "/v", "v2-in-place", timeout=5, what="the edited plugin")
    expect_after_reload(g, workers, "/v", "v2-in-place")
    # an editor that writes a new file and renames it over the old one
    replace_file(plugin, version_plugin_text("v3-renamed"))
    poll_body(g.port, "/v", "v3-renamed", timeout=5, what="the replaced plugin")
    # the config file
    rewrite_config(g, version="B", **kw)
    poll_body(g.port, "/hello", "hello-B", timeout=5, what="the edited config")
    expect_after_reload(g, workers, "/hello", "hello-B")
    ok, failed = reloads(g)
    assert ok >= 3 and failed == 0, (ok, failed)
    # a broken save is refused; the next good save goes through
    write_file(plugin, version_plugin_text("v4", broken=True))
    wait_for(lambda: reloads(g)[1] >= 1, timeout=5, what="the broken save to be refused")
    assert status(g)["last_reload"]["ok"] is False
    all_answer(g.port, "/v", "v3-renamed", n=5)
    write_file(plugin, version_plugin_text("v5-fixed"))
    poll_body(g.port, "/v", "v5-fixed", timeout=5, what="the fixed plugin")


@WORKERS
def test_watch_sees_quick_same_size_edits(gateway, tmp_path, workers):
    """Two saves within the same second that keep the file's size (v1 -> v2
    -> v3, the second save after v2 is live, written over the old bytes
    without truncating first, as `dd conv=notrunc` or an mmap editor does):
    the last one must win. Size, inode and whole-second mtime are unchanged;
    only the nanoseconds of st_mtim show the save."""
    kw = dict(workers=workers, watch=True)
    g = start_ops(gateway, tmp_path, **kw)
    plugin = tmp_path / "plugins" / "ops_version.lua"
    for attempt in range(5):
        # start right after a wall-clock second begins, so that both saves
        # fall in the same second
        time.sleep(1.02 - (time.time() % 1.0))
        write_file(plugin, version_plugin_text("v2" if attempt % 2 == 0 else "v4"))
        first = "v2" if attempt % 2 == 0 else "v4"
        sec = int(plugin.stat().st_mtime)
        poll_body(g.port, "/v", first, timeout=5, what="the first edit")
        if int(time.time()) != sec:
            continue  # the reload took too long to keep both saves in one second: again
        second = "v3" if attempt % 2 == 0 else "v5"
        overwrite_in_place(plugin, version_plugin_text(second))
        if int(plugin.stat().st_mtime) != sec:
            continue
        poll_body(g.port, "/v", second, timeout=5,
                  what="the second edit (same size, same second, same inode)")
        return
    pytest.skip("could not fit two saves into one second on this machine")


def overwrite_in_place(path, text):
    """Writes text over the file's bytes without truncating it first."""
    fd = os.open(path, os.O_WRONLY)
    try:
        data = text.encode()
        assert os.pwrite(fd, data, 0) == len(data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# connections across reloads; listen changes

@WORKERS
def test_keepalive_connections_survive_reloads(gateway, tmp_path, workers):
    """Idle keep-alive connections between requests are neither closed nor
    reset by a reload, and their next request runs on the new generation."""
    g = start_ops(gateway, tmp_path, workers=workers)
    conns = [keepalive_client(g.port)[0] for _ in range(6)]
    try:
        for i, how in enumerate(["hup", "post", "hup"]):
            v = "ABC"[(i + 1) % 3]
            rewrite_config(g, workers=workers, version=v)
            reload_and_wait(g, how, i)
            if workers > 1:
                assert workers_on(g, i + 2), "a worker did not reload"
            for n, c in enumerate(conns):
                c.request("GET", "/hello")
                try:
                    r = c.read_response()
                except (PeerClosed, OSError) as e:
                    pytest.fail("keep-alive connection %d broke across reload %d: %r" % (n, i, e))
                assert r.status == 200 and r.text() == "hello-" + v, (n, i, r.body)
    finally:
        for c in conns:
            c.close()


@WORKERS
def test_listen_changes_on_reload(gateway, tmp_path, workers):
    """A listener the new config adds starts answering, one it drops stops
    (connections to it are refused)."""
    g = start_ops(gateway, tmp_path, nports=3, workers=workers)
    p0, p2 = g.ports[0], g.ports[2]
    assert connect_refused(p2)
    rewrite_config(g, workers=workers, version="B", listen=["$PORT0", "$PORT2"])
    reload_and_wait(g, "post", 0)
    if workers == 1:
        assert body_of(p2, "/hello") == "hello-B"
    else:
        poll_body(p2, "/hello", "hello-B", timeout=5, what="the new listener")
    all_answer(p2, "/hello", "hello-B", n=10)
    poll_body(p0, "/hello", "hello-B", timeout=5)
    all_answer(p0, "/hello", "hello-B", n=10)
    rewrite_config(g, workers=workers, version="C", listen=["$PORT2"])
    reload_and_wait(g, "hup", 1)
    wait_for(lambda: connect_refused(p0), timeout=5, what="the dropped listener to close")
    poll_body(p2, "/hello", "hello-C", timeout=5)
    all_answer(p2, "/hello", "hello-C", n=10)
    assert connect_refused(p0)
    st = status(g)
    assert st["generation"] == 3 and st["reloads"] == {"ok": 2, "failed": 0}, st
    # and back: the address can be bound again
    rewrite_config(g, workers=workers, version="D", listen=["$PORT0"])
    reload_and_wait(g, "post", 2)
    poll_body(p0, "/hello", "hello-D", timeout=5)
    wait_for(lambda: connect_refused(p2), timeout=5, what="the second listener to close")


@WORKERS
def test_keepalive_on_kept_listener_survives_listen_change(gateway, tmp_path, workers):
    """Idle keep-alive connections on a listener the new config keeps are not
    closed or reset by a reload that adds or drops another listener."""
    g = start_ops(gateway, tmp_path, nports=3, workers=workers)
    conns = [keepalive_client(g.port)[0] for _ in range(4)]
    try:
        for step, (listen, how) in enumerate([(["$PORT0", "$PORT2"], "post"),
                                              (["$PORT0"], "hup")]):
            rewrite_config(g, workers=workers, version="BC"[step], listen=listen)
            reload_and_wait(g, how, step)
            poll_body(g.port, "/hello", "hello-" + "BC"[step], timeout=5)
            broken = []
            for n, c in enumerate(conns):
                try:
                    c.request("GET", "/hello")
                    r = c.read_response()
                    assert r.status == 200 and r.text() in ("hello-A", "hello-B", "hello-C")
                except (PeerClosed, OSError) as e:
                    broken.append((n, repr(e)))
            assert not broken, "keep-alive connections closed by reload %d (listen %r): %r" \
                % (step + 1, listen, broken)
    finally:
        for c in conns:
            c.close()


@WORKERS
def test_reload_with_listener_changes_under_load(gateway, tmp_path, workers):
    """wrk on a kept listener while reloads add and drop a second listener:
    no socket error, no non-2xx."""
    g = start_ops(gateway, tmp_path, nports=3, workers=workers)
    wrk = Wrk(tmp_path, g.port, "/hello", conns=20, duration=6)
    try:
        t0 = time.monotonic()
        for i in range(1, 6):
            time.sleep(max(0.0, t0 + i - time.monotonic()))
            listen = ["$PORT0", "$PORT2"] if i % 2 else ["$PORT0"]
            rewrite_config(g, workers=workers, version="B" if i % 2 else "A", listen=listen)
            reload_by(g, "hup" if i % 2 else "post")
        res = wrk.result()
    finally:
        wrk.stop()
    summary = {k: v for k, v in res.items() if k != "text"}
    assert res["requests"] > 300, summary
    assert (res["connect"], res["read"], res["write"], res["timeout"]) == (0, 0, 0, 0), summary
    assert res["bad"] == 0, summary
    wait_for(lambda: reloads_tolerant(g) == (5, 0), timeout=5, what="5 ok reloads")
