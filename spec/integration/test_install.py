"""Installing and running under a service manager (issue 13, items 8 and 9):

- `make install` (cmake --install, as the Makefile runs it) with DESTDIR and
  PREFIX=/usr/local puts the binary, the bundled runtime and plugins, the man
  page and the systemd unit where doc/operations.md says; the installed tree,
  moved somewhere else, runs from a third folder and serves a request through
  a bundled plugin (it finds its runtime next to the binary, not in the
  source tree); a binary without its tree says what is missing.
- `--help` lists every option main.c accepts, the signals, and the folders
  the runtime and plugins were found in; the man page says the same.
- The readiness protocol (systemd Type=notify): a Python AF_UNIX datagram
  socket as NOTIFY_SOCKET receives READY=1 once the port accepts,
  RELOADING=1/READY=1 around a reload and STOPPING=1 on SIGTERM, from the
  single process or from the master only (abstract socket names too).
- .ci/deps installs packages without starting or stopping any service.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import (REPO, SANITIZER_MARKS, Raw, config, free_port, request, require_binary,
                      wait_for, wait_listening)

PREFIX = "/usr/local"


def clean_env(**extra):
    """The environment without the runtime-path overrides a developer may have set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MOONGATE_HOME", "MOONGATE_LUA_DIR", "MOONGATE_PLUGIN_DIR",
                        "NOTIFY_SOCKET")}
    env.update(extra)
    return env


def build_dir():
    return require_binary().parent


# --------------------------------------------------------------------------
# make install

def test_make_install_is_cmake_install_with_prefix_and_destdir():
    """The Makefile's install target configures PREFIX and runs cmake --install
    (which takes DESTDIR from the environment make exports)."""
    p = subprocess.run(["make", "-n", "install", "BUILD=b", "PREFIX=/opt/mg", "DESTDIR=/stage"],
                       cwd=str(REPO), capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "-DCMAKE_INSTALL_PREFIX=/opt/mg" in p.stdout
    assert re.search(r"^cmake --install b\s*$", p.stdout, re.M), p.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """cmake --install of the build under test with DESTDIR=<tmp>/stage and
    PREFIX=/usr/local, then the PREFIX tree moved to <tmp>/moved/mg."""
    tmp = tmp_path_factory.mktemp("install")
    stage = tmp / "stage"
    p = subprocess.run(["cmake", "--install", str(build_dir()), "--prefix", PREFIX],
                       env=clean_env(DESTDIR=str(stage)), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    root = stage / PREFIX.lstrip("/")
    files = sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())
    moved = tmp / "moved" / "mg"
    moved.parent.mkdir()
    shutil.move(str(root), str(moved))
    return {"tmp": tmp, "root": moved, "files": files}


def test_install_layout(installed):
    files = installed["files"]
    assert "bin/moongate" in files
    for f in (REPO / "lua").rglob("*.lua"):
        assert "share/moongate/lua/" + str(f.relative_to(REPO / "lua")) in files
    plugins = sorted(f.name for f in (REPO / "plugins").glob("*.lua"))
    assert plugins
    for name in plugins:
        assert "share/moongate/plugins/" + name in files
    assert "share/man/man8/moongate.8" in files
    assert "lib/systemd/system/moongate.service" in files
    # nothing of the build or source tree comes along
    assert not [f for f in files if "spec" in f or f.endswith(".c") or "CMake" in f]


def test_installed_tree_moved_serves_with_a_bundled_plugin(installed, upstream):
    """The moved tree, started from a third folder, finds its runtime next to
    the binary and runs the bundled jwt plugin."""
    root = installed["root"]
    binary = root / "bin" / "moongate"
    elsewhere = installed["tmp"] / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    port = free_port()
    cfg = elsewhere / "gw.lua"
    cfg.write_text("""return {
  listen = { { addr = "127.0.0.1:%d" } },
  access_log = false,
  upstreams = { app = { servers = { "%s" } } },
  routes = {
    { name = "api", match = { prefix = "/" }, upstream = "app",
      plugins = { { "jwt", secret = "install-secret", claims_to_headers = { sub = "X-User" } } } },
  },
}
""" % (port, upstream.addr))
    # --help names the moved folders, found next to the binary
    h = subprocess.run([str(binary), "--help"], cwd=str(elsewhere), env=clean_env(),
                       capture_output=True, text=True, timeout=20)
    assert h.returncode == 0
    assert re.search(r"^\s*Lua runtime\s+%s$" % re.escape(str(root / "share/moongate/lua")),
                     h.stdout, re.M), h.stdout
    assert re.search(r"^\s*bundled plugins\s+%s$"
                     % re.escape(str(root / "share/moongate/plugins")), h.stdout, re.M)
    assert "found next to the binary" in h.stdout
    assert str(REPO) not in h.stdout

    t = subprocess.run([str(binary), "-t", "-c", "gw.lua"], cwd=str(elsewhere),
                       env=clean_env(), capture_output=True, text=True, timeout=20)
    assert (t.returncode, t.stdout) == (0, "OK\n"), t.stderr

    errf = open(elsewhere / "gw.stderr", "wb")
    proc = subprocess.Popen([str(binary), "-c", "gw.lua"], cwd=str(elsewhere),
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=errf,
                            stdin=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, 15, "installed moongate", elsewhere / "gw.stderr")
        r = request(port, "GET", "/x")
        assert r.status == 401 and "invalid_token" in r.header("www-authenticate", "")
        r = request(port, "GET", "/x", headers=[("Authorization", "Bearer " + hs256(
            {"sub": "alice", "exp": int(time.time()) + 600}, b"install-secret"))])
        assert r.status == 200
        seen = {n.lower(): v for n, v in r.json()["headers"]}
        assert seen["x-user"] == "alice"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        errf.close()
    err = (elsewhere / "gw.stderr").read_text()
    assert rc == 0 and not [m for m in SANITIZER_MARKS if m in err], err


def test_binary_without_its_tree_says_what_is_missing(installed, run_moongate):
    """A binary copied alone (no share/moongate next to it, not in a build
    tree) fails with the folder it looked in and the way out."""
    lone = installed["tmp"] / "lone" / "bin"
    lone.mkdir(parents=True)
    shutil.copy2(installed["root"] / "bin" / "moongate", lone / "moongate")
    cfg = installed["tmp"] / "lone" / "gw.lua"
    cfg.write_text(config(routes=[]).replace("$PORT", str(free_port())))
    p = subprocess.run([str(lone / "moongate"), "-t", "-c", str(cfg)], env=clean_env(),
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 1
    assert not [m for m in SANITIZER_MARKS if m in p.stderr], p.stderr
    assert "cannot find the bundled Lua runtime in %s" % (lone / "../share/moongate/lua") \
        in p.stderr, p.stderr
    assert "MOONGATE_HOME" in p.stderr
    # and MOONGATE_HOME is the way out
    p = subprocess.run([str(lone / "moongate"), "-t", "-c", str(cfg)],
                       env=clean_env(MOONGATE_HOME=str(installed["root"] / "share/moongate")),
                       capture_output=True, text=True, timeout=20)
    assert (p.returncode, p.stdout) == (0, "OK\n"), p.stderr


def test_systemd_unit(installed):
    unit = (installed["root"] / "lib/systemd/system/moongate.service").read_text()
    lines = [l.strip() for l in unit.splitlines() if l.strip() and not l.startswith("#")]
    assert "Type=notify" in lines
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines
    assert "ExecStart=%s/bin/moongate -c /etc/moongate/moongate.lua" % PREFIX in lines
    assert "ConfigurationDirectory=moongate" in lines  # the folder it names exists
    assert "WantedBy=multi-user.target" in lines
    # doc/operations.md shows this unit, comments left out
    ops = (REPO / "doc/operations.md").read_text()
    block = re.search(r"## Running under systemd\n.*?```ini\n(.*?)```", ops, re.S).group(1)
    assert [l for l in block.splitlines() if l.strip()] == lines
    analyze = shutil.which("systemd-analyze")
    if analyze:
        # systemd's own parser, with ExecStart pointing at the moved binary
        fixed = unit.replace(PREFIX + "/bin/moongate", str(installed["root"] / "bin/moongate"))
        fixed = re.sub(r"^Documentation=.*\n", "", fixed, flags=re.M)
        d = installed["tmp"] / "unit"
        d.mkdir(exist_ok=True)
        (d / "moongate.service").write_text(fixed)
        p = subprocess.run([analyze, "verify", str(d / "moongate.service")],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and "moongate.service" not in p.stderr, p.stderr


def test_man_page(installed):
    page = installed["root"] / "share/man/man8/moongate.8"
    text = page.read_text()
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "SIGNALS", "FILES", "ENVIRONMENT",
                    "EXAMPLES"):
        assert re.search(r"^\.SH %s$" % section, text, re.M), section
    for opt in accepted_options():
        assert opt.replace("-", r"\-") in text, opt
    for sig in ("SIGHUP", "SIGTERM", "SIGINT"):
        assert sig in text
    for name in (REPO / "plugins").glob("*.lua"):
        assert name.stem in text.replace(r"\-", "-"), name.stem
    if shutil.which("groff"):
        p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", str(page)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and p.stderr == "", p.stderr
        assert "moongate - programmable HTTP gateway" in p.stdout


def test_man_page_example_config_passes_check(run_moongate, monkeypatch):
    text = (REPO / "doc/moongate.8").read_text()
    m = re.search(r"^\.nf\n(return \{.*?)^\.fi$", text, re.M | re.S)
    assert m
    cfg = m.group(1).replace(r"\-", "-")
    monkeypatch.setenv("JWT_SECRET", "s")  # the example reads it
    p = run_moongate("-t", "-c", "$CFG", config=cfg)
    assert (p.returncode, p.stdout_text) == (0, "OK\n"), p.stderr_text


def hs256(claims, secret):
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64(sig))


# --------------------------------------------------------------------------
# --help

def accepted_options():
    """Every option core/main.c compares argv against."""
    src = (REPO / "core/main.c").read_text()
    opts = sorted(set(re.findall(r'strcmp\(argv\[i\], "(-[^"]+)"\)', src)))
    assert {"-c", "-t", "--help", "--version", "--script"} <= set(opts), opts
    return opts


def test_help_lists_every_option_the_signals_and_the_runtime_folders(run_moongate):
    p = run_moongate("--help")
    assert p.returncode == 0 and p.stderr_text == ""
    out = p.stdout_text
    for opt in accepted_options():
        assert re.search(r"(^|[\s,\[|])%s\b" % re.escape(opt), out), opt
    for sig in ("HUP", "TERM", "INT", "QUIT", "USR1"):
        assert re.search(r"^\s+.*\b%s\b" % sig, out, re.M), sig
    for var in ("MOONGATE_HOME", "MOONGATE_LOG_LEVEL", "NOTIFY_SOCKET"):
        assert var in out
    # the build under test runs from its build tree: the source tree's folders
    assert re.search(r"^\s*Lua runtime\s+%s$" % re.escape(str(REPO / "lua")), out, re.M), out
    assert re.search(r"^\s*bundled plugins\s+%s$" % re.escape(str(REPO / "plugins")), out,
                     re.M), out
    assert len(out.splitlines()) > 20  # was four lines
    # a bad option: the same text on stderr, exit 2
    bad = run_moongate("--no-such-option")
    assert bad.returncode == 2 and "usage: moongate" in bad.stderr_text
    # ... saying what was wrong first
    assert bad.stderr_text.startswith("moongate: unknown option '--no-such-option'\n")
    bad = run_moongate("-c")
    assert bad.returncode == 2 and bad.stderr_text.startswith("moongate: -c needs a FILE\n")


# --------------------------------------------------------------------------
# the readiness protocol (sd_notify, written by moongate itself)

class NotifySocket:
    """An AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET; keeps the
    sender's pid of each message (SO_PASSCRED), as systemd checks it."""

    def __init__(self, tmp, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            name = "moongate-test-%d-%d" % (os.getpid(), free_port())
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            path = str(tmp / "notify.sock")
            self.sock.bind(path)
            self.env = path
        self.got = []

    def recv(self, timeout=15.0):
        """The next message as (pid, {key: value}), or None on timeout."""
        self.sock.settimeout(timeout)
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except (socket.timeout, BlockingIOError):
            return None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(l.split("=", 1) for l in data.decode().split("\n") if "=" in l)
        self.got.append((pid, fields))
        return pid, fields

    def expect(self, key, timeout=15.0):
        m = self.recv(timeout)
        assert m is not None, "no %s=1 message (got %r)" % (key, self.got)
        assert m[1].get(key) == "1", (key, m)
        return m

    def rest(self):
        """Whatever else was sent (the sender has exited)."""
        out = []
        while True:
            m = self.recv(0.0)
            if m is None:
                return out
            out.append(m)

    def close(self):
        self.sock.close()


HELLO = config(routes=[{"name": "hi", "match": {"path": "/hi"},
                        "handler": Raw('function() return 200, "hi\\n" end')}])


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_single_process(gateway, tmp_path, abstract):
    ns = NotifySocket(tmp_path, abstract)
    try:
        g = gateway(HELLO, env={"NOTIFY_SOCKET": ns.env}, wait=False)
        pid, ready = ns.expect("READY")
        assert pid == g.pid and ready.get("MAINPID") == str(g.pid)
        # READY=1 comes once the listener accepts: no wait needed
        assert request(g.port, "GET", "/hi").status == 200
        os.kill(g.pid, signal.SIGHUP)
        pid, reloading = ns.expect("RELOADING")
        assert pid == g.pid and int(reloading["MONOTONIC_USEC"]) > 0
        assert ns.expect("READY")[0] == g.pid
        wait_for(lambda: "reloaded: generation 2" in g.stderr_text(), what="the reload")
        os.kill(g.pid, signal.SIGTERM)
        assert ns.expect("STOPPING")[0] == g.pid
        assert g.proc.wait(15) == 0
        assert ns.rest() == []
    finally:
        ns.close()


def test_notify_master_only(gateway, tmp_path):
    """With workers, the master (systemd's main pid) sends every message; the
    workers send none."""
    ns = NotifySocket(tmp_path, abstract=True)
    try:
        g = gateway(HELLO.replace("return {", "return { workers = 2,", 1),
                    env={"NOTIFY_SOCKET": ns.env}, wait=False)
        pid, ready = ns.expect("READY")
        assert pid == g.pid
        wait_listening(g.port, g.proc, 15, "moongate", g.stderr_path)
        assert request(g.port, "GET", "/hi").status == 200
        os.kill(g.pid, signal.SIGHUP)
        assert ns.expect("RELOADING")[0] == g.pid
        assert ns.expect("READY")[0] == g.pid
        os.kill(g.pid, signal.SIGTERM)
        assert ns.expect("STOPPING")[0] == g.pid
        assert g.proc.wait(30) == 0
        assert ns.rest() == []  # no READY/STOPPING from a worker
    finally:
        ns.close()


def test_no_notify_socket_no_message(gateway, tmp_path):
    """Without NOTIFY_SOCKET nothing is sent (and nothing breaks): a socket
    that is not named in the environment receives nothing."""
    ns = NotifySocket(tmp_path)
    try:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        g = gateway(HELLO, env=env)
        assert request(g.port, "GET", "/hi").status == 200
        os.kill(g.pid, signal.SIGTERM)
        assert g.proc.wait(15) == 0
        assert ns.rest() == []
    finally:
        ns.close()


# --------------------------------------------------------------------------
# .ci/deps: packages without touching services

def fake_tools(tmp, missing, apt_rc=0):
    """dpkg-query that reports `missing` as not installed, and an apt-get that
    records its arguments and what policy-rc.d said while it ran (a real
    apt-get would change this machine)."""
    bindir = tmp / "fakebin"
    bindir.mkdir()
    log = tmp / "apt.log"
    (bindir / "dpkg-query").write_text(
        "#!/bin/sh\nfor p in %s; do [ \"$p\" = \"$3\" ] && exit 1; done\n"
        "printf 'install ok installed'\n" % " ".join(missing))
    (bindir / "apt-get").write_text(
        "#!/bin/sh\necho \"apt-get $*\" >> %s\n"
        "if [ -x \"$MOONGATE_POLICY_RC_D\" ]; then \"$MOONGATE_POLICY_RC_D\" nginx start;"
        " echo \"policy $?\" >> %s; else echo 'policy none' >> %s; fi\nexit %d\n"
        % (log, log, log, apt_rc))
    for f in bindir.iterdir():
        f.chmod(0o755)
    return bindir, log


def run_deps(tmp, bindir, policy, *lists):
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]),
               MOONGATE_POLICY_RC_D=str(policy))
    return subprocess.run(["sh", str(REPO / ".ci/deps"), *lists], cwd=str(tmp), env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="the fake apt-get runs without sudo as root")
def test_deps_forbids_service_starts_while_installing(tmp_path):
    bindir, log = fake_tools(tmp_path, ["nginx", "redis-server"])
    policy = tmp_path / "policy-rc.d"
    p = run_deps(tmp_path, bindir, policy, ".ci/packages", ".ci/packages-test")
    assert p.returncode == 0, p.stderr
    lines = log.read_text().splitlines()
    install = [l for l in lines if l.startswith("apt-get install")]
    assert len(install) == 1 and install[0].split()[-2:] == ["nginx", "redis-server"]
    # while apt-get ran, invoke-rc.d would have been told 101: action forbidden
    assert lines.count("policy 101") == 2
    assert not policy.exists() and not policy.is_symlink()  # removed afterwards

    # a failed apt-get removes it too
    failing = tmp_path / "failing"
    failing.mkdir()
    fail_bin, fail_log = fake_tools(failing, ["nginx"], apt_rc=100)
    p = run_deps(failing, fail_bin, policy, ".ci/packages-test")
    assert p.returncode != 0 and "policy 101" in fail_log.read_text()
    assert not policy.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the fake apt-get runs without sudo as root")
def test_deps_keeps_an_existing_policy_and_only_installs_the_lists_asked(tmp_path):
    bindir, log = fake_tools(tmp_path, ["nginx", "caddy"])
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")  # the machine's own policy
    policy.chmod(0o755)
    # build+run only: nginx and caddy are test/bench packages, nothing to do
    p = run_deps(tmp_path, bindir, policy)
    assert p.returncode == 0 and not log.exists()
    p = run_deps(tmp_path, bindir, policy, ".ci/packages", ".ci/packages-bench")
    assert p.returncode == 0, p.stderr
    assert "apt-get install" in log.read_text() and "policy 0" in log.read_text()
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"  # untouched


def test_deps_has_no_service_commands():
    code = [l.split("#")[0] for l in (REPO / ".ci/deps").read_text().splitlines()]
    code = "\n".join(code)
    assert not re.search(r"\b(service|systemctl|invoke-rc\.d|rc-service)\b", code)


def test_run_packages_are_only_build_and_run():
    """`make run` / `make build` install .ci/packages only; servers, load
    generators and test frameworks live in the other lists."""
    def names(f):
        return {w for l in (REPO / f).read_text().splitlines()
                for w in l.split("#")[0].split()}
    run, test, bench = (names(".ci/packages"), names(".ci/packages-test"),
                        names(".ci/packages-bench"))
    for heavy in ("nginx", "haproxy", "caddy", "wrk", "httperf", "redis-server",
                  "libcmocka-dev", "lua-busted", "python3-pytest"):
        assert heavy not in run, heavy
    assert {"nginx", "redis-server", "lua-busted", "python3-pytest", "wrk"} <= test
    assert {"nginx", "haproxy", "caddy", "wrk", "httperf"} <= bench
    mk = (REPO / "Makefile").read_text()
    assert re.search(r"^deps:\n\t@sh \.ci/deps \.ci/packages\n", mk, re.M)
    assert re.search(r"^build: deps$", mk, re.M) and re.search(r"^run: build$", mk, re.M)
    assert re.search(r"^test: deps-test build$", mk, re.M)
    # the Dockerfile's build stage installs what .ci/packages lists for building
    docker = (REPO / "Dockerfile").read_text()
    stage = docker.split("FROM debian:12-slim AS build", 1)[1].split("\nFROM ", 1)[0]
    dev = set(re.findall(r"\b[\w.+-]+-dev\b", stage))
    assert dev and dev <= run, dev - run
