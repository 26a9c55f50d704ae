"""The bundled redis_credentials plugin (hyper-auth-proxy scenario) through the
real gateway, a real redis-server and the test upstream: token from the
cookie (base64 of the JWT, quoted or not) or a Bearer header, verified here
(HS512 by default, allow-list, exp) or taken from a jwt plugin earlier on the
route; session record from Redis (plain or AES-256-GCM) -> Authorization:
Basic for the upstream; 401/500/503 answers; Redis restarts without a gateway
restart; tokens and credentials never in the logs."""

import base64
import hashlib
import hmac
import json
import os
import shutil
import time

import pytest

from conftest import Raw, assert_json_error, config, lua, request, wait_for
from test_redis import Redis

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed")

SECRET = "proxy-secret-for-tests"
JWT_SECRET = "jwt-plugin-secret"
KEY = bytes(range(32))
CREDS = "alice:pw-Secret-42"


def b64u(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_token(claims, alg="HS512", key=SECRET, header=None):
    h = header if header is not None else {"alg": alg, "typ": "JWT"}
    signing = b64u(json.dumps(h)) + "." + b64u(json.dumps(claims))
    if alg.startswith("HS"):
        sig = hmac.new(key.encode(), signing.encode(), getattr(hashlib, "sha" + alg[2:])).digest()
    else:
        sig = b""
    return signing + "." + b64u(sig)


def claims(sid="sess1", ttl=300, **more):
    c = {"sub": "alice", "sid": sid, "exp": int(time.time()) + ttl}
    c.update(more)
    return c


def b64(s):
    return base64.b64encode(s.encode()).decode()


def cookie(token, quoted=False, name="Authorization"):
    v = b64(token)
    return (name, '"%s"' % v if quoted else v)


def basic(creds):
    return "Basic " + b64(creds)


def record(creds):
    return json.dumps({"credentials": creds})


def encrypt(plain, key=KEY):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plain.encode(), None)).decode()


def plugin(name, **opts):
    return Raw('{ %s,' % lua(name) + lua(opts)[1:]) if opts else Raw('{ %s }' % lua(name))


ROUTES = [
    ("/hdr/", [plugin("redis_credentials", secret=SECRET, source="header")]),
    ("/pfx/", [plugin("redis_credentials", secret=SECRET, key_prefix="session:")]),
    ("/claim/", [plugin("redis_credentials", secret=SECRET, claim="sess")]),
    ("/noexp/", [plugin("redis_credentials", secret=SECRET, check_exp=False)]),
    ("/raw/", [plugin("redis_credentials", secret=SECRET, encode=False)]),
    ("/aes/", [plugin("redis_credentials", secret=SECRET, key_prefix="enc:",
                      cipher="aes-256-gcm", key_hex=KEY.hex())]),
    ("/jwt/", [plugin("jwt", secret=JWT_SECRET, algorithms=["HS256"]),
               plugin("redis_credentials")]),
    ("/", [plugin("redis_credentials", secret=SECRET)]),
]


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


@pytest.fixture
def rc(gateway, upstream, redis):
    redis.command("SET", "sess1", record(CREDS))
    routes = [{"match": {"prefix": p}, "upstream": "app", "plugins": ps} for p, ps in ROUTES]
    return gateway(config(
        upstreams={"app": {"servers": [upstream.addr], "keepalive": 8}},
        redis={"default": {"addr": redis.addr, "pool": 2, "timeout": 0.5}},
        routes=routes, workers=1, access_log="$DIR/access.log"))


def values(headers, name):
    return [v for n, v in headers if n.lower() == name.lower()]


def upstream_got(r):
    assert r.status == 200, (r, r.body[:300])
    return r.json()["headers"]


def test_cookie_token_to_basic_credentials(rc, upstream):
    tok = make_token(claims())
    for c in (cookie(tok), cookie(tok, quoted=True), ("Authorization", tok)):
        r = request(rc.port, "GET", "/echo", headers=[
            ("Authorization", "Basic Ym9ndXM6Ym9ndXM="),
            ("Cookie", "theme=dark; %s=%s; lang=en" % c)])
        h = upstream_got(r)
        assert values(h, "Authorization") == [basic(CREDS)]
        assert values(h, "Cookie") == ["theme=dark; lang=en"]
    # the token cookie alone: no Cookie header left
    h = upstream_got(request(rc.port, "GET", "/echo", headers=[("Cookie", "%s=%s" % cookie(tok))]))
    assert values(h, "Cookie") == []
    assert values(h, "Authorization") == [basic(CREDS)]


def test_encode_false_sends_credentials_as_stored(rc, redis):
    redis.command("SET", "sess1", record("YWxyZWFkeTplbmNvZGVk"))
    tok = make_token(claims())
    h = upstream_got(request(rc.port, "GET", "/raw/echo",
                             headers=[("Cookie", "%s=%s" % cookie(tok))]))
    assert values(h, "Authorization") == ["Basic YWxyZWFkeTplbmNvZGVk"]


def test_jwt_in_double_quotes_inside_the_base64_is_accepted(rc, upstream):
    # hyper-auth-proxy's own tests and clients encode "\"<jwt>\"" (it strips
    # the quotes after decoding, src/lib.rs decode_token)
    tok = make_token(claims())
    for inner in ('"%s"' % tok, '"%s"\n' % tok):
        for v in (b64(inner), '"%s"' % b64(inner)):  # quoted outside the base64 too
            h = upstream_got(request(rc.port, "GET", "/echo",
                                     headers=[("Cookie", "Authorization=" + v)]))
            assert values(h, "Authorization") == [basic(CREDS)]
            assert values(h, "Cookie") == []
    # only a matching pair is stripped; a signature under quotes is not the token's
    for inner in ('"%s' % tok, '%s"' % tok, '""%s""' % tok, "'%s'" % tok):
        r = request(rc.port, "GET", "/echo", headers=[("Cookie", "Authorization=" + b64(inner))])
        assert_json_error(r, 401)


def test_one_trailing_newline_of_stored_credentials_is_dropped(rc, redis, upstream):
    # stored with `echo`; hyper-auth-proxy's set_basic_auth drops one "\n"
    hs = [("Cookie", "%s=%s" % cookie(make_token(claims())))]
    redis.command("SET", "sess1", record("YWxpY2U6cHc=\n"))
    h = upstream_got(request(rc.port, "GET", "/raw/echo", headers=hs))
    assert values(h, "Authorization") == ["Basic YWxpY2U6cHc="]
    redis.command("SET", "sess1", record(CREDS + "\n"))
    h = upstream_got(request(rc.port, "GET", "/echo", headers=hs))
    assert values(h, "Authorization") == [basic(CREDS)]

    # anything else that cannot go in a header as stored: a clean 500
    before = upstream.stats()["requests"]
    for stored in ("YWxpY2U6cHc=\n\n", "YWxpY2U6cHc=\r\n", "a\r\nX-Injected: 1", "a\u0000b"):
        redis.command("SET", "sess1", record(stored))
        r = request(rc.port, "GET", "/raw/echo", headers=hs)
        assert_json_error(r, 500)
    assert upstream.stats()["requests"] == before
    assert request(rc.port, "GET", "/echo", headers=hs).status == 200  # base64 fits
    rc.stop()
    err = rc.stderr_text()
    assert "credentials contain CR, LF or NUL" in err
    assert "traceback" not in err.lower() and "YWxpY2U6cHc" not in err


def test_bearer_source_prefix_and_claim_options(rc, redis):
    redis.command("SET", "session:s-9", record("bob:pfx"))
    redis.command("SET", "other-7", record("carol:claim"))
    tok = make_token(claims())
    h = upstream_got(request(rc.port, "GET", "/hdr/echo",
                             headers=[("Authorization", "Bearer " + tok)]))
    assert values(h, "Authorization") == [basic(CREDS)]
    # the header source ignores the cookie
    assert_json_error(request(rc.port, "GET", "/hdr/echo",
                              headers=[("Cookie", "%s=%s" % cookie(tok))]), 401)

    h = upstream_got(request(rc.port, "GET", "/pfx/echo", headers=[
        ("Cookie", "%s=%s" % cookie(make_token(claims(sid="s-9"))))]))
    assert values(h, "Authorization") == [basic("bob:pfx")]

    tok = make_token(claims(sid="sess1", sess="other-7"))
    h = upstream_got(request(rc.port, "GET", "/claim/echo",
                             headers=[("Cookie", "%s=%s" % cookie(tok))]))
    assert values(h, "Authorization") == [basic("carol:claim")]
    # a token without that claim
    r = request(rc.port, "GET", "/claim/echo",
                headers=[("Cookie", "%s=%s" % cookie(make_token(claims())))])
    assert_json_error(r, 401)


def test_exp_checked_unless_check_exp_false(rc, upstream):
    expired = make_token(claims(ttl=-60))
    no_exp = make_token({"sid": "sess1"})
    for tok in (expired, no_exp):
        r = request(rc.port, "GET", "/echo", headers=[("Cookie", "%s=%s" % cookie(tok))])
        assert_json_error(r, 401)
        h = upstream_got(request(rc.port, "GET", "/noexp/echo",
                                 headers=[("Cookie", "%s=%s" % cookie(tok))]))
        assert values(h, "Authorization") == [basic(CREDS)]


def test_invalid_tokens_and_unknown_sessions_get_401(rc, upstream):
    good = claims()
    bad = {
        "bad signature": make_token(good, key="wrong-secret"),
        "alg none": make_token(good, alg="none", header={"alg": "none", "typ": "JWT"}),
        "alg none, HS512 signature": make_token(good, header={"alg": "none", "typ": "JWT"}),
        "HS256 not allowed": make_token(good, alg="HS256"),
        "unknown session": make_token(claims(sid="nope")),
        "not yet valid": make_token(claims(nbf=int(time.time()) + 300)),
        "garbage": "not-a-token",
    }
    before = upstream.stats()["requests"]
    for what, tok in bad.items():
        r = request(rc.port, "GET", "/echo", headers=[("Cookie", "%s=%s" % cookie(tok))])
        assert r.status == 401, what
        assert_json_error(r, 401)
    for hs in ([], [("Cookie", "theme=dark")], [("Authorization", "Bearer " + make_token(good))]):
        assert_json_error(request(rc.port, "GET", "/echo", headers=hs), 401)
    assert upstream.stats()["requests"] == before


def test_aes_256_gcm_credentials(rc, redis, upstream):
    pytest.importorskip("cryptography")
    redis.command("SET", "enc:s1", record(encrypt(CREDS)))
    tok = make_token(claims(sid="s1"))
    h = upstream_got(request(rc.port, "GET", "/aes/echo",
                             headers=[("Cookie", "%s=%s" % cookie(tok))]))
    assert values(h, "Authorization") == [basic(CREDS)]

    before = upstream.stats()["requests"]
    wrong_key = encrypt(CREDS, key=bytes(32))
    raw = bytearray(base64.b64decode(encrypt(CREDS)))
    raw[15] ^= 1
    tampered = base64.b64encode(bytes(raw)).decode()
    for stored in (wrong_key, tampered, "bm90IGVub3VnaA==", "%%%not base64%%%"):
        redis.command("SET", "enc:s1", record(stored))
        r = request(rc.port, "GET", "/aes/echo", headers=[("Cookie", "%s=%s" % cookie(tok))])
        assert_json_error(r, 500)
    assert upstream.stats()["requests"] == before


def test_record_without_credentials_is_500(rc, redis):
    redis.command("SET", "sess1", json.dumps({"user": "alice"}))
    r = request(rc.port, "GET", "/echo",
                headers=[("Cookie", "%s=%s" % cookie(make_token(claims())))])
    assert_json_error(r, 500)


def test_redis_down_503_then_back_without_restart(rc, redis, tmp_path):
    tok = make_token(claims())
    hs = [("Cookie", "%s=%s" % cookie(tok))]
    assert request(rc.port, "GET", "/echo", headers=hs).status == 200
    redis.stop()
    t0 = time.monotonic()
    assert_json_error(request(rc.port, "GET", "/echo", headers=hs), 503)
    assert time.monotonic() - t0 < 2.0
    again = Redis(tmp_path, port=redis.port)
    try:
        again.command("SET", "sess1", record(CREDS))
        r = wait_for(lambda: (lambda x: x if x.status == 200 else None)(
            request(rc.port, "GET", "/echo", headers=hs)), timeout=10,
            what="the gateway to reconnect to Redis")
        assert values(r.json()["headers"], "Authorization") == [basic(CREDS)]
    finally:
        again.stop()


def test_claims_from_a_jwt_plugin_earlier_on_the_route(rc, upstream):
    tok = make_token(claims(), alg="HS256", key=JWT_SECRET)
    h = upstream_got(request(rc.port, "GET", "/jwt/echo", headers=[
        ("Authorization", "Bearer " + tok), ("Cookie", "keep=1")]))
    assert values(h, "Authorization") == [basic(CREDS)]
    assert values(h, "Cookie") == ["keep=1"]
    # the jwt plugin refuses first; redis_credentials has no secret of its own
    r = request(rc.port, "GET", "/jwt/echo",
                headers=[("Authorization", "Bearer " + make_token(claims()))])
    assert r.status == 401
    assert upstream.stats()["requests"] == 1


def test_tokens_and_credentials_never_logged(rc, redis):
    tok = make_token(claims())
    bad = make_token(claims(), key="wrong")
    hs = [("Cookie", "%s=%s" % cookie(tok))]
    assert request(rc.port, "GET", "/echo?n=1", headers=hs).status == 200
    assert request(rc.port, "GET", "/echo?n=2",
                   headers=[("Cookie", "%s=%s" % cookie(bad))]).status == 401
    assert request(rc.port, "GET", "/hdr/echo",
                   headers=[("Authorization", "Bearer " + tok)]).status == 200
    redis.command("SET", "enc:sess1", record(encrypt(CREDS, key=bytes(32))))
    assert request(rc.port, "GET", "/aes/echo", headers=hs).status == 500
    redis.command("SET", "sess1", json.dumps({"credentials": 42, "pw": CREDS}))
    assert request(rc.port, "GET", "/echo", headers=hs).status == 500
    redis.stop()
    assert request(rc.port, "GET", "/echo", headers=hs).status == 503
    rc.stop()
    access = (rc.dir / "access.log").read_text(errors="replace")
    assert "/echo?n=1" in access  # the log is there and has the requests
    assert "redis_credentials" in rc.stderr_text()  # and the plugin's error lines too
    text = access + rc.stderr_text() + rc.stdout_text()
    for secret in (tok, b64(tok), bad, b64(bad), tok.split(".")[2], CREDS, b64(CREDS),
                   "pw-Secret-42", SECRET):
        assert secret not in text, secret


def test_verified_tokens_are_cached_but_never_past_exp_nor_the_session(rc, redis, upstream):
    # exp 2 s ahead: served from the cache meanwhile, refused once exp passed
    tok = make_token(claims(ttl=2))
    hdr = [("Cookie", "%s=%s" % cookie(tok))]
    for _ in range(3):
        assert values(upstream_got(request(rc.port, "GET", "/echo", headers=hdr)),
                      "Authorization") == [basic(CREDS)]
    wait_for(lambda: request(rc.port, "GET", "/echo", headers=hdr).status == 401,
             timeout=6, interval=0.2, what="the cached token to expire")
    # a cached token whose session is deleted is refused at once: Redis is asked every time
    tok = make_token(claims(sid="sess-gone"))
    redis.command("SET", "sess-gone", record(CREDS))
    hdr = [("Cookie", "%s=%s" % cookie(tok))]
    assert request(rc.port, "GET", "/echo", headers=hdr).status == 200
    redis.command("DEL", "sess-gone")
    assert_json_error(request(rc.port, "GET", "/echo", headers=hdr), 401)


def test_cache_ttl_checked(run_moongate):
    text = ('return {\n  listen = { { addr = "127.0.0.1:$PORT" } },\n'
            '  routes = { { match = { prefix = "/" }, handler = function() return 200 end,\n'
            '    plugins = { { "redis_credentials", secret = "s", cache_ttl = -1 } } } },\n}\n')
    p = run_moongate("-t", "-c", "$CFG", config=text)
    assert p.returncode == 1
    assert "cache_ttl" in p.stderr_text, p.stderr_text
