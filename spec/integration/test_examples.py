"""The configs, commands and code samples users copy from README.md,
examples/ and doc/ work as written: every example passes `moongate -t`; the
README's five-minute tour gives the output the README shows; each section of
examples/README.md runs (its shell lines, with the ports moved to free ones)
and every curl there answers the status its comment names; the complete
configs and the plugin tests of doc/ pass.

Each example runs from a copy of examples/ in the test's directory, with its
ports taken from the environment as the configs read them (MOONGATE_PORT,
UPSTREAM_PORT, ADMIN_PORT, REDIS_PORT: free ports here; 8080, 9000, 9901 and
6379 by default), and the README's commands rewritten to those ports; the demo
upstream is python3's http.server over examples/www (as `make run` starts it)
where the README shows its output, else the echoing upstream.py, so the test
can see what the upstream received."""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import (REPO, Gateway, can_connect, free_port, request, require_binary, stop_proc,
                      wait_for, wait_listening)

EXAMPLES = REPO / "examples"
README = (REPO / "README.md").read_text()
EX_README = (EXAMPLES / "README.md").read_text()


def example_files():
    return sorted(p.name for p in EXAMPLES.glob("*.lua"))


# --------------------------------------------------------------------------
# helpers

class Ports:
    def __init__(self):
        self.gw, self.up, self.admin, self.redis = (free_port() for _ in range(4))

    def env(self):
        """The environment the example configs and run-quickstart.sh take
        their ports from."""
        return {"MOONGATE_PORT": str(self.gw), "UPSTREAM_PORT": str(self.up),
                "ADMIN_PORT": str(self.admin), "REDIS_PORT": str(self.redis)}

    def rewrite(self, text):
        """Moves the default ports in README commands to this test's free ones."""
        text = re.sub(r"(127\.0\.0\.1|localhost):8080\b", r"\g<1>:%d" % self.gw, text)
        text = re.sub(r"(127\.0\.0\.1|localhost):9000\b", r"\g<1>:%d" % self.up, text)
        text = re.sub(r"(127\.0\.0\.1|localhost):9901\b", r"\g<1>:%d" % self.admin, text)
        text = re.sub(r"(127\.0\.0\.1|localhost):6379\b", r"\g<1>:%d" % self.redis, text)
        return text


@pytest.fixture
def ports():
    return Ports()


@pytest.fixture
def procs():
    """Processes a test starts (upstreams, Redis), stopped by PID at teardown."""
    started = []
    yield started
    for p in started:
        stop_proc(p)


@pytest.fixture
def example(tmp_path, ports):
    """example(name) -> Gateway running a port-rewritten copy of examples/NAME."""
    started = []

    def start(name):
        b = require_binary()
        work = tmp_path / "examples"
        if not work.exists():
            shutil.copytree(EXAMPLES, work)
        cfg = work / name
        g = Gateway(b, cfg, [ports.gw], tmp_path, env=ports.env())
        started.append(g)
        wait_listening(ports.gw, g.proc, 15, "moongate", g.stderr_path)
        return g

    yield start
    for g in started:
        g.check_clean()


def demo_upstream(tmp_path, ports, procs):
    """`make run`'s demo upstream: python3 -m http.server over examples/www."""
    p = subprocess.Popen([sys.executable, "-m", "http.server", str(ports.up), "--bind",
                          "127.0.0.1", "--directory", str(EXAMPLES / "www")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    procs.append(p)
    wait_listening(ports.up, p, 10, "http.server")


def echo_upstream(ports, procs):
    """spec/integration/upstream.py: answers every path with what it received."""
    p = subprocess.Popen([sys.executable, "-B", str(REPO / "spec/integration/upstream.py"),
                          "--port", str(ports.up)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    procs.append(p)
    wait_listening(ports.up, p, 10, "upstream.py")


def start_redis(tmp_path, ports, procs):
    d = tmp_path / "redis"
    d.mkdir()
    p = subprocess.Popen(["redis-server", "--port", str(ports.redis), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", str(d)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL)
    procs.append(p)
    wait_listening(ports.redis, p, 10, "redis-server")


def upstream_saw(r):
    """The request headers upstream.py echoed, as a {lower-case name: value} dict."""
    assert r.status == 200, r
    return {n.lower(): v for n, v in r.json()["headers"]}


def section(text, heading):
    """The indented command lines of the section of examples/README.md whose
    heading starts with `heading`."""
    m = re.search(r"^## %s[^\n]*\n(.*?)(?=^## |\Z)" % re.escape(heading), text, re.M | re.S)
    assert m, "no section %r in examples/README.md" % heading
    return [line[4:] for line in m.group(1).splitlines() if line.startswith("    ")]


def run_section(lines, ports, env_redis=False):
    """Runs an examples/README.md section as bash: the b64url helper, then its
    lines with the ports moved; every curl prints only its status. Returns the
    list of (status, expected status from the line's `# NNN` comment)."""
    helper = [l[4:] for l in EX_README.splitlines() if l.startswith("    b64url()")]
    script, expected = list(helper), []
    for line in lines:
        if line.startswith("redis-server "):
            continue  # the test started one on a free port
        line = ports.rewrite(line)
        line = re.sub(r"\bredis-cli\b", "redis-cli -p %d" % ports.redis, line)
        if "curl " in line:
            m = re.search(r"#\s*(\d{3})\b", line)
            expected.append(int(m.group(1)) if m else 200)
            line = re.sub(r"\bcurl -i\b", "curl", line)
            line = re.sub(r"\bcurl -s\b", "curl", line)
            line = line.replace("curl ", "curl -sS -o /dev/null -w '%{http_code}\\n' ", 1)
        script.append(line)
    p = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True,
                       timeout=60, cwd=str(REPO))
    got = [int(x) for x in re.findall(r"^(\d{3})$", p.stdout, re.M)]
    assert len(got) == len(expected), (p.stdout, p.stderr, script)
    return list(zip(got, expected))


# --------------------------------------------------------------------------
# moongate -t

@pytest.mark.parametrize("name", example_files())
def test_every_example_passes_check(run_moongate, name):
    p = run_moongate("-t", "-c", str(EXAMPLES / name))
    assert (p.returncode, p.stdout_text, p.stderr_text) == (0, "OK\n", "")


def test_readme_check_commands(run_moongate, tmp_path):
    """The README's two `moongate -t` examples print what it shows."""
    m = re.search(r"\$ printf '(.*?)' > /tmp/bad\.lua\n"
                  r"\s*\$ build/moongate -t -c /tmp/bad\.lua; echo \"exit \$\?\"\n"
                  r"\s*(/tmp/bad\.lua:.*)\n\s*exit 1", README)
    assert m, "README's -t example moved"
    bad = tmp_path / "bad.lua"
    subprocess.run(["bash", "-c", "printf '%s' > %s" % (m.group(1), bad)], check=True)
    p = run_moongate("-t", "-c", str(bad))
    assert p.returncode == 1
    assert p.stderr_text.strip() == m.group(2).replace("/tmp/bad.lua", str(bad))
    p = run_moongate("-t", "-c", str(EXAMPLES / "quickstart.lua"))
    assert (p.returncode, p.stdout_text) == (0, "OK\n")


# --------------------------------------------------------------------------
# README: the five-minute tour on examples/quickstart.lua

def test_readme_tour(example, ports, procs, tmp_path):
    demo_upstream(tmp_path, ports, procs)
    g = example("quickstart.lua")

    r = request(ports.gw, "GET", "/hello")
    assert r.status == 200 and r.body == b"Hello, World\n"
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert r.header("content-length") == "13"

    r = request(ports.gw, "GET", "/app/")
    assert r.status == 200 and r.body == b"<h1>moongate demo upstream</h1>\n"
    assert r.header("content-length") == "32"

    r = request(ports.gw, "GET", "/nope")
    assert (r.status, r.body) == (404, b'{"error":"no route"}')
    assert r.header("content-type") == "application/json"
    assert r.header("content-length") == "20"

    r = request(ports.gw, "GET", "/api/")
    assert (r.status, r.body) == (401, b'{"error":"missing token"}')
    assert r.header("www-authenticate") == 'Bearer error="invalid_token"'
    assert r.header("content-type") == "application/json"
    assert re.fullmatch(r"[0-9a-f-]{36}", r.header("x-request-id", ""))
    assert 'WWW-Authenticate: Bearer error="invalid_token"' in README

    token = re.search(r'curl -i -H "Authorization: Bearer ([\w.-]+)" localhost:8080/api/',
                      README).group(1)
    r = request(ports.gw, "GET", "/api/", headers=[("Authorization", "Bearer " + token)])
    assert r.status == 200 and r.body == b'{"hello":"from the demo upstream"}\n'
    assert re.fullmatch(r"[0-9a-f-]{36}", r.header("x-request-id", ""))

    r = request(ports.admin, "GET", "/metrics")
    lines = r.text().splitlines()
    assert 'moongate_requests_total{route="api",status="200"} 1' in lines
    assert 'moongate_requests_total{route="",status="404"} 1' in lines
    st = request(ports.admin, "GET", "/status").json()
    assert st["version"] == "0.1.0" and st["workers"] == 1 and st["generation"] == 1
    assert {"pid", "uptime"} <= set(st)

    r = request(ports.gw, "GET", "/whoami")
    assert r.status == 200 and r.header("x-served-by") == "moongate"
    assert r.body == b"you are 127.0.0.1, asking for /whoami\n"
    assert request(ports.gw, "POST", "/whoami").status == 404

    # one access-log line per request on stdout, as the README shows it
    wait_for(lambda: " GET /whoami 200 " in g.stdout_text(), what="access log line")
    line = [l for l in g.stdout_text().splitlines() if " GET /whoami 200 " in l][0]
    assert re.fullmatch(r"\S+Z 127\.0\.0\.1 GET /whoami 200 \d+ - \d+\.\d{3} whoami - "
                        r'(-|"[^"]*")', line), line

    # reload with the admin API, as the README says
    r = request(ports.admin, "POST", "/reload")
    assert r.status == 200 and r.json() == {"ok": True, "generation": 2}


def test_quickstart_upstream_gets_user(example, ports, procs):
    """The quickstart's comment: the API is proxied with X-User: alice."""
    echo_upstream(ports, procs)
    example("quickstart.lua")
    token = re.search(r'Bearer ([\w.-]+)" localhost:8080/api/', README).group(1)
    r = request(ports.gw, "GET", "/api/", headers=[("Authorization", "Bearer " + token),
                                                   ("X-User", "mallory")])
    assert upstream_saw(r)["x-user"] == "alice"


def test_run_quickstart_script_takes_ports_from_env(ports, tmp_path):
    """`make run`'s script (examples/run-quickstart.sh) starts the demo upstream
    and moongate on the ports of the environment, not on fixed ones: a user
    whose 8080 or 9000 is taken moves them with MOONGATE_PORT=... make run."""
    b = require_binary()
    env = dict(os.environ, **ports.env())
    err = tmp_path / "run.stderr"
    with open(tmp_path / "run.stdout", "wb") as out, open(err, "wb") as errf:
        # a session of its own: the script, its upstream and moongate are
        # stopped together, by this process group, at the end
        p = subprocess.Popen(["bash", str(EXAMPLES / "run-quickstart.sh"), str(b)],
                             cwd=str(tmp_path), env=env, stdout=out, stderr=errf,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_listening(ports.gw, p, 15, "run-quickstart.sh", err)
        r = request(ports.gw, "GET", "/hello")
        assert (r.status, r.body) == (200, b"Hello, World\n")
        r = request(ports.gw, "GET", "/app/")
        assert r.status == 200 and r.body == b"<h1>moongate demo upstream</h1>\n"
        assert request(ports.admin, "GET", "/status").json()["workers"] == 1
        out = (tmp_path / "run.stdout").read_text()
        assert "demo upstream on 127.0.0.1:%d" % ports.up in out
        assert "moongate on 127.0.0.1:%d" % ports.gw in out
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)  # Ctrl-C, as a user stops make run
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
    assert p.returncode == 0, err.read_text()
    # the script stopped its upstream
    wait_for(lambda: not can_connect(ports.up), what="the demo upstream to stop")


# --------------------------------------------------------------------------
# examples/README.md, section by section

def test_examples_readme_quickstart(example, ports, procs, tmp_path):
    demo_upstream(tmp_path, ports, procs)
    example("quickstart.lua")
    for got, want in run_section(section(EX_README, "quickstart.lua"), ports):
        assert got == want


def test_examples_readme_jwt_api(example, ports, procs):
    echo_upstream(ports, procs)
    example("jwt_api.lua")
    results = run_section(section(EX_README, "jwt_api.lua"), ports)
    assert [w for _, w in results] == [200, 401]
    for got, want in results:
        assert got == want
    r = request(ports.gw, "GET", "/api/")
    assert r.status == 401 and r.header("www-authenticate") == 'Bearer error="invalid_token"'


def test_examples_readme_forward_auth(example, ports, procs):
    echo_upstream(ports, procs)
    example("forward_auth.lua")
    results = run_section(section(EX_README, "forward_auth.lua"), ports)
    assert [w for _, w in results] == [401, 200]
    for got, want in results:
        assert got == want
    r = request(ports.gw, "GET", "/app/")
    assert (r.status, r.body) == (401, b'{"error":"who are you?"}')
    assert r.header("www-authenticate") == "ApiKey"
    r = request(ports.gw, "GET", "/app/", headers=[("X-Api-Key", "let-me-in"),
                                                   ("X-User", "mallory")])
    assert upstream_saw(r)["x-user"] == "alice"


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="redis-server is not installed")
def test_examples_readme_auth_proxy(example, ports, procs, tmp_path):
    echo_upstream(ports, procs)
    start_redis(tmp_path, ports, procs)
    example("auth_proxy.lua")
    lines = section(EX_README, "auth_proxy.lua")
    # the section ends with SHUTDOWN; first check what the upstream receives
    results = run_section([l for l in lines if "SHUTDOWN" not in l], ports)
    assert [w for _, w in results] == [200, 401]
    for got, want in results:
        assert got == want
    script = "\n".join(l for l in lines if l.split("=")[0] in ("H", "P", "S", "COOKIE"))
    helper = [l[4:] for l in EX_README.splitlines() if l.startswith("    b64url()")][0]
    cookie = subprocess.run(["bash", "-c", helper + "\n" + script + '\nprintf %s "$COOKIE"'],
                            capture_output=True, text=True, check=True).stdout
    r = request(ports.gw, "GET", "/", headers=[("Cookie", "Authorization=" + cookie)])
    want = re.search(r"upstream gets Authorization: (Basic \S+)", EX_README).group(1)
    assert want == "Basic " + base64.b64encode(b"alice:wonderland").decode()
    assert upstream_saw(r)["authorization"] == want
    # then the whole section, down to the 503 once Redis is gone
    results = run_section(lines, ports)
    assert [w for _, w in results] == [200, 401, 503]
    for got, want in results:
        assert got == want


def test_examples_readme_hello_plugin(example, ports, procs):
    echo_upstream(ports, procs)
    g = example("hello_plugin.lua")
    results = run_section(section(EX_README, "hello_plugin.lua"), ports)
    assert [w for _, w in results] == [401, 200, 200, 200]
    for got, want in results:
        assert got == want
    r = request(ports.gw, "GET", "/me")
    assert (r.status, r.body) == (401, b'{"error":"unknown api key"}')
    assert not r.has("x-user")
    r = request(ports.gw, "GET", "/me", headers=[("X-Api-Key", "k-alice")])
    assert (r.status, r.body, r.header("x-user")) == (200, b"hello alice\n", "alice")
    r = request(ports.gw, "GET", "/app/", headers=[("X-Api-Key", "k-bob")])
    assert r.header("x-user") == "bob"
    seen = upstream_saw(r)
    assert seen["x-user"] == "bob" and "x-api-key" not in seen
    r = request(ports.gw, "GET", "/app/")
    assert r.header("x-user") == "anonymous" and upstream_saw(r)["x-user"] == "anonymous"
    wait_for(lambda: "[lua] route me: user - GET /me -> 401" in g.stderr_text(),
             what="the log phase's line")
    assert "plugin error" not in g.stderr_text()


# --------------------------------------------------------------------------
# doc/: complete configs and the plugin guide's tests

def test_config_md_complete_example(run_moongate):
    text = (REPO / "doc/config.md").read_text()
    blocks = re.findall(r"```lua\n(return \{.*?)```", text, re.S)
    assert blocks
    for b in blocks:
        p = run_moongate("-t", "-c", "$CFG", config=b)
        assert (p.returncode, p.stdout_text) == (0, "OK\n"), p.stderr_text


def plugin_guide_block(kind, marker):
    text = (REPO / "doc/plugins.md").read_text()
    for k, b in re.findall(r"```(lua|python)\n(.*?)```", text, re.S):
        if k == kind and marker in b:
            return b
    pytest.fail("doc/plugins.md has no %s block with %r" % (kind, marker))


def test_plugin_guide_busted_spec(tmp_path):
    spec = tmp_path / "add_user_spec.lua"
    spec.write_text(plugin_guide_block("lua", "describe("))
    p = subprocess.run([str(require_binary()), "--script", "/usr/bin/busted", "-o",
                        "utfTerminal", str(spec)], capture_output=True, text=True,
                       timeout=60, cwd=str(REPO))
    assert p.returncode == 0 and "0 failures / 0 errors" in p.stdout, p.stdout + p.stderr


def test_plugin_guide_pytest(tmp_path):
    test = tmp_path / "test_add_user.py"
    test.write_text(plugin_guide_block("python", "def test_add_user"))
    env = {"MOONGATE_BIN": str(require_binary()), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path)}
    p = subprocess.run(["/usr/bin/python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        str(test)], capture_output=True, text=True, timeout=60,
                       cwd=str(REPO), env=env)
    assert p.returncode == 0 and "1 passed" in p.stdout, p.stdout + p.stderr


def test_plugin_guide_example_matches_file():
    """The plugin guide's access/response/log code is the example file's."""
    guide = plugin_guide_block("lua", "access = function(conf, req)")
    src = (EXAMPLES / "plugins/add_user.lua").read_text()
    norm = lambda s: [l.strip() for l in s.splitlines() if l.strip()]  # noqa: E731
    body = "\n".join(norm(src))
    assert "\n".join(norm(guide)) in body


WRAP = """local P = {}
local function collect(list) P[#P + 1] = list end
%s
local routes = {}
for i, list in ipairs(P) do
  for j, entry in ipairs(list) do
    local name = ("r%%d_%%d"):format(i, j)
    routes[#routes + 1] = { name = name, match = { path = "/" .. name },
                            plugins = { entry }, upstream = "u" }
  end
end
assert(#routes > 0, "no plugin entries in the sample")
return { listen = { { addr = "127.0.0.1:$PORT" } }, access_log = false,
         redis = { default = { addr = "127.0.0.1:6379" } },
         upstreams = { u = { servers = { "127.0.0.1:9" } } }, routes = routes }
"""


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "doc/plugins").glob("*.md")))
def test_plugin_page_sample_passes_check(run_moongate, tmp_path, page):
    """The first Lua sample of each doc/plugins/ page: every plugin entry in it,
    on a route of its own, passes `moongate -t`."""
    text = (REPO / "doc/plugins" / page).read_text()
    sample = re.search(r"```lua\n(.*?)```", text, re.S).group(1)
    if "/etc/moongate/issuer.pem" in sample:  # jwt.md names a key file: make one
        key = tmp_path / "issuer.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", str(tmp_path / "priv.pem")],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "priv.pem"), "-pubout",
                        "-out", str(key)], check=True, capture_output=True)
        sample = sample.replace("/etc/moongate/issuer.pem", str(key))
    if re.search(r"^routes = ", sample, re.M):  # a config fragment (redis_credentials.md)
        cfg = ("return { listen = { { addr = \"127.0.0.1:$PORT\" } }, access_log = false,\n"
               "upstreams = { backend = { servers = { \"127.0.0.1:9\" } } },\n%s}\n" % sample)
    else:
        assert re.search(r"^plugins = ", sample, re.M), sample
        cfg = WRAP % re.sub(r"^plugins = ", "collect ", sample, flags=re.M)
    p = run_moongate("-t", "-c", "$CFG", config=cfg)
    assert (p.returncode, p.stdout_text) == (0, "OK\n"), p.stderr_text + "\n" + cfg
