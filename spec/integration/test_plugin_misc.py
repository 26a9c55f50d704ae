"""The bundled rate_limit, cors, basic_auth, ip_restriction, request_id and
headers plugins through the real gateway and the test upstream."""
import base64
import hashlib
import json
import re
import subprocess
import time

import pytest

from conftest import assert_json_error, request, wait_for


def gw_config(upstream, routes, extra=""):
    return """
return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = false,
  %s
  upstreams = { app = { servers = { "%s" }, keepalive = 8 } },
  routes = { %s },
}
""" % (extra, upstream.addr, ",\n".join(routes))


def route(prefix, plugins):
    return '{ match = { prefix = "%s" }, upstream = "app", plugins = { %s } }' % (prefix, plugins)


def upstream_headers(r):
    assert r.status == 200, (r, r.body[:300])
    return r.json()["headers"]


def values(headers, name):
    return [v for n, v in headers if n.lower() == name.lower()]


def basic(user, pw):
    return [("Authorization", "Basic " + base64.b64encode(("%s:%s" % (user, pw)).encode()).decode())]


# --------------------------------------------------------------------------
# rate_limit

@pytest.fixture
def gw_rl(gateway, upstream):
    return gateway(gw_config(upstream, [
        route("/rl/", '{ "rate_limit", rate = 2, burst = 3 }'),
        route("/hdr/", '{ "rate_limit", rate = 1, key = "header:X-Api-Key" }'),
        route("/fn/", '{ "rate_limit", rate = 1, key = function(req) '
                      'return req:header("x-tenant") end }'),
        route("/claim/", '{ "jwt", secret = "k" }, { "rate_limit", rate = 1, key = "claim:sub" }'),
        route("/ns1/", '{ "rate_limit", rate = 1, namespace = "shared" }'),
        route("/ns2/", '{ "rate_limit", rate = 1, namespace = "shared" }'),
    ]))


def test_rate_limit_burst_then_429_with_headers(gw_rl, upstream):
    seen = []
    for _ in range(3):
        r = request(gw_rl.port, "GET", "/rl/x")
        assert r.status == 200, r
        assert r.header("RateLimit-Limit") == "3"
        seen.append(int(r.header("RateLimit-Remaining")))
    assert seen[-1] == 0 and seen == sorted(seen, reverse=True), seen
    before = upstream.stats()["requests"]
    r = request(gw_rl.port, "GET", "/rl/x")
    assert_json_error(r, 429)
    assert int(r.header("Retry-After")) >= 1
    assert r.header("RateLimit-Limit") == "3"
    assert r.header("RateLimit-Remaining") == "0"
    assert int(r.header("RateLimit-Reset")) >= 1
    assert upstream.stats()["requests"] == before, "a limited request must not reach the upstream"


def test_rate_limit_refills(gw_rl):
    while request(gw_rl.port, "GET", "/rl/y").status == 200:
        pass
    t0 = time.monotonic()
    # 2 tokens per second: one is back within about half a second
    wait_for(lambda: request(gw_rl.port, "GET", "/rl/y").status == 200, timeout=3,
             interval=0.05, what="a token to come back")
    assert time.monotonic() - t0 < 2.0
    assert request(gw_rl.port, "GET", "/rl/y").status == 429


def test_rate_limit_keys(gw_rl):
    def burst(path, hdrs):
        return [request(gw_rl.port, "GET", path, headers=hdrs).status for _ in range(2)]

    assert burst("/hdr/", [("X-Api-Key", "a")]) == [200, 429]
    assert burst("/hdr/", [("X-Api-Key", "b")]) == [200, 429]
    assert burst("/fn/", [("X-Tenant", "t1")]) == [200, 429]
    assert burst("/fn/", [("X-Tenant", "t2")]) == [200, 429]


def jwt_hs256(claims, key=b"k"):
    import hmac

    def b64u(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    s = b64u(b'{"alg":"HS256"}') + "." + b64u(json.dumps(claims).encode())
    return s + "." + b64u(hmac.new(key, s.encode(), hashlib.sha256).digest())


def test_rate_limit_by_claim(gw_rl):
    for sub in ("alice", "bob"):
        h = [("Authorization", "Bearer " + jwt_hs256({"sub": sub}))]
        assert [request(gw_rl.port, "GET", "/claim/", headers=h).status
                for _ in range(2)] == [200, 429]


def test_rate_limit_namespace_is_shared_across_routes(gw_rl):
    assert request(gw_rl.port, "GET", "/ns1/").status == 200
    assert request(gw_rl.port, "GET", "/ns2/").status == 429


def test_rate_limit_redis_fails_open_or_closed(gateway, upstream, run_moongate, tmp_path):
    """scope = "redis" with Redis down: fault_tolerant lets requests through,
    otherwise 503. Needs gw.redis."""
    probe = tmp_path / "probe.lua"
    probe.write_text('io.write(gw.redis and "yes" or "no")\n')
    if not run_moongate("--script", str(probe)).stdout_text.strip().endswith("yes"):
        pytest.skip("gw.redis is not in this build yet")
    from conftest import free_port
    dead = free_port()
    g = gateway(gw_config(upstream, [
        route("/open/", '{ "rate_limit", rate = 1, scope = "redis" }'),
        route("/closed/", '{ "rate_limit", rate = 1, scope = "redis", fault_tolerant = false }'),
        route("/unknown/", '{ "rate_limit", rate = 1, scope = "redis", redis = "nope", '
                           'fault_tolerant = false }'),
    ], extra='redis = { default = { addr = "127.0.0.1:%d", timeout = 0.3 } },' % dead))
    for _ in range(3):
        assert request(g.port, "GET", "/open/").status == 200
    assert_json_error(request(g.port, "GET", "/closed/"), 503)
    assert_json_error(request(g.port, "GET", "/unknown/"), 503)
    # one warning, not one per request
    assert g.stderr_text().count("letting requests through") == 1


# --------------------------------------------------------------------------
# cors

@pytest.fixture
def gw_cors(gateway, upstream):
    return gateway(gw_config(upstream, [
        route("/c/", '{ "cors", origins = { "https://app.example", "https://*.example.org" }, '
                     'methods = { "GET", "POST" }, expose_headers = { "X-Upstream-Port" }, '
                     'credentials = true, max_age = 600 }'),
        route("/any/", '{ "cors" }'),
        route("/fixed/", '{ "cors", headers = { "X-A", "X-B" } }'),
    ]))


def preflight(port, path, origin, method="POST", req_headers=None):
    hs = [("Origin", origin), ("Access-Control-Request-Method", method)]
    if req_headers:
        hs.append(("Access-Control-Request-Headers", req_headers))
    return request(port, "OPTIONS", path, headers=hs)


def test_cors_preflight_answered_without_upstream(gw_cors, upstream):
    before = upstream.stats()["requests"]
    r = preflight(gw_cors.port, "/c/x", "https://app.example", req_headers="content-type, x-token")
    assert r.status == 204
    assert r.body == b""
    assert r.header("Access-Control-Allow-Origin") == "https://app.example"
    assert r.header("Access-Control-Allow-Methods") == "GET, POST"
    assert r.header("Access-Control-Allow-Headers") == "content-type, x-token"
    assert r.header("Access-Control-Allow-Credentials") == "true"
    assert r.header("Access-Control-Max-Age") == "600"
    assert "Origin" in r.header("Vary", "")
    r = preflight(gw_cors.port, "/c/x", "https://deep.sub.example.org")
    assert r.header("Access-Control-Allow-Origin") == "https://deep.sub.example.org"
    assert upstream.stats()["requests"] == before


def test_cors_preflight_from_unknown_origin_gets_no_grant(gw_cors, upstream):
    before = upstream.stats()["requests"]
    for origin in ("https://evil.example", "https://example.org", "https://app.example.evil"):
        r = preflight(gw_cors.port, "/c/x", origin)
        assert r.status == 204
        assert not r.has("Access-Control-Allow-Origin"), (origin, r.headers)
        assert not r.has("Access-Control-Allow-Methods")
    assert upstream.stats()["requests"] == before


def test_cors_actual_requests(gw_cors):
    r = request(gw_cors.port, "GET", "/c/x", headers=[("Origin", "https://app.example")])
    assert r.status == 200
    assert r.header("Access-Control-Allow-Origin") == "https://app.example"
    assert r.header("Access-Control-Allow-Credentials") == "true"
    assert r.header("Access-Control-Expose-Headers") == "X-Upstream-Port"
    assert "Origin" in r.header("Vary", "")
    r = request(gw_cors.port, "GET", "/c/x", headers=[("Origin", "https://evil.example")])
    assert r.status == 200
    assert not r.has("Access-Control-Allow-Origin")
    # a plain OPTIONS (no Access-Control-Request-Method) is not a preflight
    r = request(gw_cors.port, "OPTIONS", "/c/x", headers=[("Origin", "https://app.example")])
    assert r.status == 200 and r.json()["method"] == "OPTIONS"
    # no Origin: nothing added
    r = request(gw_cors.port, "GET", "/c/x")
    assert not r.has("Access-Control-Allow-Origin")


def test_cors_wildcard_and_fixed_headers(gw_cors):
    r = request(gw_cors.port, "GET", "/any/", headers=[("Origin", "https://whoever.test")])
    assert r.header("Access-Control-Allow-Origin") == "*"
    assert not r.has("Access-Control-Allow-Credentials")
    r = preflight(gw_cors.port, "/fixed/", "https://x.test", req_headers="x-other")
    assert r.header("Access-Control-Allow-Origin") == "*"
    assert r.header("Access-Control-Allow-Headers") == "X-A, X-B"
    assert r.header("Access-Control-Allow-Methods") == "GET, HEAD, PUT, PATCH, POST, DELETE"


def test_cors_grant_on_refusals_by_later_plugins(gateway, upstream):
    # as Kong's cors: a browser can read the 401/429 the next plugins answer
    g = gateway(gw_config(upstream, [
        route("/jwt/", '{ "cors", origins = { "https://app.example" }, credentials = true }, '
                       '{ "jwt", secret = "k" }'),
        route("/rl/", '{ "cors" }, { "rate_limit", rate = 1, burst = 1 }'),
    ]))
    before = upstream.stats()["requests"]
    r = request(g.port, "GET", "/jwt/x", headers=[("Origin", "https://app.example")])
    assert_json_error(r, 401)
    assert r.header("WWW-Authenticate") == 'Bearer error="invalid_token"'
    assert r.header("Access-Control-Allow-Origin") == "https://app.example"
    assert r.header("Access-Control-Allow-Credentials") == "true"
    assert r.header("Vary") == "Origin"
    # another origin gets no grant, and no Origin no CORS headers at all
    r = request(g.port, "GET", "/jwt/x", headers=[("Origin", "https://evil.example")])
    assert_json_error(r, 401)
    assert not r.has("Access-Control-Allow-Origin")
    assert not request(g.port, "GET", "/jwt/x").has("Access-Control-Allow-Origin")
    o = [("Origin", "https://x.test")]
    assert request(g.port, "GET", "/rl/", headers=o).status == 200
    r = request(g.port, "GET", "/rl/", headers=o)
    assert_json_error(r, 429)
    assert r.header("Access-Control-Allow-Origin") == "*"
    assert r.has("Retry-After")
    assert upstream.stats()["requests"] == before + 1


# --------------------------------------------------------------------------
# basic_auth

@pytest.fixture
def gw_basic(gateway, upstream):
    hashed = hashlib.sha256(b"hunter2").hexdigest()
    return gateway(gw_config(upstream, [
        route("/b/", '{ "basic_auth", users = { alice = "wonderland", bob = "sha256:%s" }, '
                     'realm = "staff", plaintext = true }' % hashed),
        route("/hide/", '{ "basic_auth", users = { alice = "wonderland" }, plaintext = true, '
                        'hide_credentials = true, user_header = "X-User" }'),
    ]))


def assert_basic_401(r, realm):
    assert_json_error(r, 401)
    # as Kong, APISIX and Traefik send it
    assert r.header("WWW-Authenticate") == 'Basic realm="%s"' % realm


def test_basic_auth_refusals(gw_basic, upstream):
    before = upstream.stats()["requests"]
    assert_basic_401(request(gw_basic.port, "GET", "/b/"), "staff")
    assert_basic_401(request(gw_basic.port, "GET", "/b/", headers=basic("alice", "wrong")), "staff")
    assert_basic_401(request(gw_basic.port, "GET", "/b/", headers=basic("mallory", "wonderland")),
                     "staff")
    assert_basic_401(request(gw_basic.port, "GET", "/b/", headers=basic("bob", "sha256:" +
                     hashlib.sha256(b"hunter2").hexdigest())), "staff")
    assert_basic_401(request(gw_basic.port, "GET", "/b/",
                             headers=[("Authorization", "Basic !!!")]), "staff")
    assert_basic_401(request(gw_basic.port, "GET", "/b/",
                             headers=[("Authorization", "Basic " + base64.b64encode(b"nocolon")
                                       .decode())]), "staff")
    assert upstream.stats()["requests"] == before


def test_basic_auth_accepts_plain_and_hashed(gw_basic):
    hs = upstream_headers(request(gw_basic.port, "GET", "/b/",
                                  headers=basic("alice", "wonderland") +
                                  [("X-Consumer-Username", "root")]))
    assert values(hs, "X-Consumer-Username") == ["alice"]
    assert values(hs, "Authorization"), "credentials are passed on by default"
    hs = upstream_headers(request(gw_basic.port, "GET", "/b/", headers=basic("bob", "hunter2")))
    assert values(hs, "X-Consumer-Username") == ["bob"]
    # a password with a colon
    assert request(gw_basic.port, "GET", "/b/", headers=basic("alice", "wonderland:")).status == 401


def test_basic_auth_hide_credentials(gw_basic):
    hs = upstream_headers(request(gw_basic.port, "GET", "/hide/",
                                  headers=basic("alice", "wonderland")))
    assert values(hs, "Authorization") == []
    assert values(hs, "X-User") == ["alice"]
    assert_basic_401(request(gw_basic.port, "GET", "/hide/"), "moongate")


def htpasswd_line(user, pw, how):
    if how in ("-B", "-m", "-s"):
        out = subprocess.run(["htpasswd", "-nb", how, user, pw], capture_output=True, check=True)
        return out.stdout.decode().strip()
    out = subprocess.run(["openssl", "passwd", how, pw], capture_output=True, check=True)
    return "%s:%s" % (user, out.stdout.decode().strip())


HTPASSWD = [("bc", "bcrypt pw", "-B"), ("apr", "apr1 pw", "-m"), ("sha", "sha1 pw", "-s"),
            ("five", "sha-256 pw", "-5"), ("six", "sha-512 pw", "-6"), ("one", "md5 pw", "-1")]


def test_basic_auth_htpasswd_hashes(gateway, upstream):
    """users as htpasswd writes them (as Traefik takes them): the password
    opens, the hash string itself never does."""
    lines = [htpasswd_line(u, pw, how) for u, pw, how in HTPASSWD]
    # Traefik's documented example: user test, password test
    lines.append("test:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/")
    users = ", ".join('"%s"' % l.replace("$", "$$") for l in lines)
    g = gateway(gw_config(upstream, [route("/h/", '{ "basic_auth", users = { %s } }' % users)]))
    before = upstream.stats()["requests"]
    for (user, pw, _), line in zip(HTPASSWD + [("test", "test", "")], lines):
        hs = upstream_headers(request(g.port, "GET", "/h/", headers=basic(user, pw)))
        assert values(hs, "X-Consumer-Username") == [user], line
        the_hash = line.split(":", 1)[1]
        for wrong in (the_hash, pw + "x", pw[:-1], ""):
            r = request(g.port, "GET", "/h/", headers=basic(user, wrong))
            assert_basic_401(r, "moongate")
    # the wrong user with a right password
    assert_basic_401(request(g.port, "GET", "/h/", headers=basic("six", "bcrypt pw")), "moongate")
    assert upstream.stats()["requests"] == before + len(lines)
    # a success is remembered per worker (cache_ttl): a second bcrypt login works too
    hs = upstream_headers(request(g.port, "GET", "/h/", headers=basic("bc", "bcrypt pw")))
    assert values(hs, "X-Consumer-Username") == ["bc"]


@pytest.mark.parametrize("users,why", [
    ('{ "alice:wonderland" }', "users.alice: not a password hash"),
    ('{ alice = "wonderland" }', "users.alice: not a password hash"),
    ('{ "alice:$apr1$short" }', "users.alice: unsupported or malformed password hash"),
    ('{ "alice:{SHA}nope" }', "users.alice: unsupported or malformed password hash"),
])
def test_basic_auth_plain_password_needs_plaintext(run_moongate, upstream, users, why):
    cfg = gw_config(upstream, [route("/h/", '{ "basic_auth", users = %s }' % users)])
    p = run_moongate("-t", "-c", "$CFG", config=cfg)
    assert p.returncode == 1, p.stdout_text
    assert why in p.stderr_text, p.stderr_text
    assert re.search(r"moongate\.lua:\d+: ", p.stderr_text)


# --------------------------------------------------------------------------
# ip_restriction

def test_ip_restriction_allow_and_deny(gateway, upstream):
    g = gateway(gw_config(upstream, [
        route("/loop/", '{ "ip_restriction", allow = { "127.0.0.0/8", "::1" } }'),
        route("/ten/", '{ "ip_restriction", allow = { "10.0.0.0/8", "2001:db8::/32" } }'),
        route("/deny/", '{ "ip_restriction", deny = { "192.168.0.0/16", "127.0.0.1/32" } }'),
        route("/both/", '{ "ip_restriction", allow = { "127.0.0.0/8" }, deny = { "127.0.0.1" }, '
                        'status = 401, message = "go away" }'),
        route("/other/", '{ "ip_restriction", deny = { "127.0.0.2" } }'),
    ]))
    before = upstream.stats()["requests"]
    assert request(g.port, "GET", "/loop/").status == 200
    assert assert_json_error(request(g.port, "GET", "/ten/"), 403)["error"] == "forbidden"
    assert_json_error(request(g.port, "GET", "/deny/"), 403)
    assert assert_json_error(request(g.port, "GET", "/both/"), 401)["error"] == "go away"
    assert request(g.port, "GET", "/other/").status == 200
    assert upstream.stats()["requests"] == before + 2


def test_ip_restriction_bad_cidr_fails_dash_t(run_moongate):
    cfg = """return { listen = { { addr = "127.0.0.1:$PORT" } },
  routes = { { match = { prefix = "/" }, handler = function() return 200, "ok" end,
               plugins = { { "ip_restriction", allow = { "10.0.0.0/40" } } } } } }
"""
    p = run_moongate("-t", "-c", "$CFG", config=cfg)
    assert p.returncode == 1
    assert "10.0.0.0/40" in p.stdout_text + p.stderr_text


# --------------------------------------------------------------------------
# request_id

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture
def gw_rid(gateway, upstream):
    return gateway(gw_config(upstream, [
        route("/r/", '{ "request_id" }'),
        route("/hex/", '{ "request_id", header_name = "X-Trace", generator = "hex", '
                       'trust_incoming = false }'),
        route("/quiet/", '{ "request_id", echo_downstream = false }'),
    ]))


def test_request_id_generated_forwarded_and_echoed(gw_rid):
    ids = set()
    for _ in range(5):
        r = request(gw_rid.port, "GET", "/r/")
        rid = r.header("X-Request-Id")
        assert rid and UUID4.match(rid), rid
        assert values(upstream_headers(r), "X-Request-Id") == [rid]
        ids.add(rid)
    assert len(ids) == 5


def test_request_id_incoming_kept_or_replaced(gw_rid):
    r = request(gw_rid.port, "GET", "/r/", headers=[("X-Request-Id", "abc-123")])
    assert r.header("X-Request-Id") == "abc-123"
    assert values(upstream_headers(r), "X-Request-Id") == ["abc-123"]
    r = request(gw_rid.port, "GET", "/r/", headers=[("X-Request-Id", "x" * 300)])
    assert UUID4.match(r.header("X-Request-Id"))
    r = request(gw_rid.port, "GET", "/hex/", headers=[("X-Trace", "client-chosen")])
    rid = r.header("X-Trace")
    assert re.match(r"^[0-9a-f]{32}$", rid), rid
    assert values(upstream_headers(r), "X-Trace") == [rid]
    r = request(gw_rid.port, "GET", "/quiet/")
    assert not r.has("X-Request-Id")
    assert UUID4.match(values(upstream_headers(r), "X-Request-Id")[0])


# --------------------------------------------------------------------------
# headers

def test_headers_request_and_response(gateway, upstream):
    g = gateway(gw_config(upstream, [
        route("/h/", '{ "headers", '
                     'request = { remove = { "X-Debug" }, set = { ["X-Env"] = "prod", '
                     '["X-Remote"] = function(req) return req.remote_addr end }, '
                     'add = { ["X-Tag"] = "gw" }, rename = { ["X-Old"] = "X-New" } }, '
                     'response = { remove = { "X-Upstream-Conn" }, '
                     'set = { ["X-Frame-Options"] = "DENY" }, add = { ["X-Extra"] = "b" } } }'),
    ]))
    r = request(g.port, "GET", "/h/x?hdr=X-Extra:a", headers=[
        ("X-Debug", "1"), ("X-Env", "dev"), ("X-Tag", "client"), ("X-Old", "v")])
    hs = upstream_headers(r)
    assert values(hs, "X-Debug") == []
    assert values(hs, "X-Env") == ["prod"]
    assert values(hs, "X-Remote") == ["127.0.0.1"]
    assert values(hs, "X-Tag") == ["client, gw"]
    assert values(hs, "X-Old") == [] and values(hs, "X-New") == ["v"]
    assert not r.has("X-Upstream-Conn")
    assert r.has("X-Upstream-Port")
    assert r.header("X-Frame-Options") == "DENY"
    assert r.header("X-Extra") == "a, b"
    # without the client's X-Tag, add sets it
    hs = upstream_headers(request(g.port, "GET", "/h/"))
    assert values(hs, "X-Tag") == ["gw"]


def test_headers_bad_config(run_moongate):
    cfg = """return { listen = { { addr = "127.0.0.1:$PORT" } },
  routes = { { match = { prefix = "/" }, handler = function() return 200, "ok" end,
               plugins = { { "headers", request = { replace = { a = "b" } } } } } } }
"""
    p = run_moongate("-t", "-c", "$CFG", config=cfg)
    assert p.returncode == 1
    assert "unknown key 'replace'" in p.stdout_text + p.stderr_text


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free port, stopped by its PID."""
    import shutil
    import signal
    import subprocess
    from conftest import can_connect, free_port
    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: can_connect(port, probe=b"PING\r\nQUIT\r\n"), timeout=10,
             what="redis-server")
    yield port
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def redis_cmd(port, *args):
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        return s.recv(65536)
    finally:
        s.close()


def test_rate_limit_redis_is_shared_by_gateways(gateway, upstream, redis_server, run_moongate,
                                                 tmp_path):
    probe = tmp_path / "probe.lua"
    probe.write_text('io.write(gw.redis and "yes" or "no")\n')
    if not run_moongate("--script", str(probe)).stdout_text.strip().endswith("yes"):
        pytest.skip("gw.redis is not in this build yet")
    cfg = gw_config(upstream, [
        route("/r/", '{ "rate_limit", rate = 1, burst = 3, scope = "redis", namespace = "fleet" }'),
    ], extra='redis = { default = { addr = "127.0.0.1:%d" } },' % redis_server)
    a, b = gateway(cfg), gateway(cfg)
    got = [request(g.port, "GET", "/r/").status for g in (a, b, a, b)]
    assert got == [200, 200, 200, 429], got
    r = request(b.port, "GET", "/r/")
    assert r.status == 429 and int(r.header("Retry-After")) >= 1
    assert r.header("RateLimit-Limit") == "3"
    # the bucket lives in Redis, with a TTL
    keys = redis_cmd(redis_server, "KEYS", "moongate:rl:*")
    assert b"moongate:rl:fleet:127.0.0.1" in keys, keys
    assert redis_cmd(redis_server, "PTTL", "moongate:rl:fleet:127.0.0.1").startswith(b":")
    # a flushed script cache is survived (EVALSHA -> NOSCRIPT -> EVAL)
    assert redis_cmd(redis_server, "SCRIPT", "FLUSH") == b"+OK\r\n"
    redis_cmd(redis_server, "DEL", "moongate:rl:fleet:127.0.0.1")
    assert request(a.port, "GET", "/r/").status == 200
    # refill at 1 token per second
    wait_for(lambda: request(a.port, "GET", "/r/").status == 429, timeout=5, interval=0.01,
             what="the bucket to run dry")
    wait_for(lambda: request(b.port, "GET", "/r/").status == 200, timeout=3, interval=0.1,
             what="a token to come back")


def request6(port, path):
    """GET over IPv6 loopback; returns (status, body)."""
    import socket
    s = socket.create_connection(("::1", port), timeout=10)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_ip_restriction_ipv6_clients(gateway, upstream):
    import socket
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    cfg = gw_config(upstream, [
        route("/v6only/", '{ "ip_restriction", allow = { "::1/128" } }'),
        route("/v6net/", '{ "ip_restriction", allow = { "::/64" }, deny = { "::2" } }'),
        route("/nov6/", '{ "ip_restriction", deny = { "::1" } }'),
        route("/v4only/", '{ "ip_restriction", allow = { "127.0.0.0/8" } }'),
    ]).replace('listen = { { addr = "127.0.0.1:$PORT" } }',
               'listen = { { addr = "127.0.0.1:$PORT0" }, { addr = "[::1]:$PORT1" } }')
    g = gateway(cfg, wait=False)
    from conftest import wait_listening
    wait_listening(g.ports[0], g.proc, 15, "moongate", g.stderr_path)
    v6 = g.ports[1]
    def v6_ok():
        try:
            return request6(v6, "/v6only/")[0] == 200
        except OSError:
            return False
    wait_for(v6_ok, timeout=10, what="the IPv6 listener")
    assert request6(v6, "/v6net/")[0] == 200
    status, body = request6(v6, "/nov6/")
    assert status == 403 and json.loads(body) == {"error": "forbidden"}
    assert request6(v6, "/v4only/")[0] == 403
    # and the IPv4 client is judged by IPv4 rules
    assert request(g.ports[0], "GET", "/v6only/").status == 403
    assert request(g.ports[0], "GET", "/v4only/").status == 200
