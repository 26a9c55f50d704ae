"""The bundled jwt plugin through the real gateway and the test upstream:
token sources (Bearer, cookie, query), HS/RS/ES/EdDSA keys (text and file),
401s with their WWW-Authenticate and JSON bodies, claims_to_headers (and
spoofed copies removed), req.ctx.jwt, registered claims, the verified-token
cache, config checks (-t) and JWKS (fetch, kid refetch, one fetch at a time)."""
import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from conftest import assert_json_error, request, wait_for

SECRET = "s3cret-for-tests"


def b64u(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64u_int(n):
    return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def make_token(claims, alg="HS256", key=SECRET, header=None):
    h = header if header is not None else {"alg": alg, "typ": "JWT"}
    signing = (b64u(json.dumps(h)) + "." + b64u(json.dumps(claims))).encode()
    bits = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
    if alg.startswith("HS"):
        k = key.encode() if isinstance(key, str) else key
        sig = hmac.new(k, signing, getattr(hashlib, "sha" + alg[2:])).digest()
    elif alg.startswith("RS"):
        sig = key.sign(signing, padding.PKCS1v15(), bits[alg[2:]])
    elif alg.startswith("PS"):
        h_ = bits[alg[2:]]
        sig = key.sign(signing, padding.PSS(mgf=padding.MGF1(h_), salt_length=h_.digest_size),
                       h_)
    elif alg.startswith("ES"):
        r, s = decode_dss_signature(key.sign(signing, ec.ECDSA(bits[alg[2:]])))
        size = 32 if alg == "ES256" else 48
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg == "EdDSA":
        sig = key.sign(signing)
    else:
        sig = b""
    return signing.decode() + "." + b64u(sig)


def pub_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }


def lua_str(s):
    return "[==[" + s + "]==]"


def bearer(token):
    return [("Authorization", "Bearer " + token)]


def echo_headers(r):
    """The request headers the upstream received, as [name, value]."""
    assert r.status == 200, (r, r.body[:300])
    return r.json()["headers"]


def hdr_values(headers, name):
    return [v for n, v in headers if n.lower() == name.lower()]


def now():
    return int(time.time())


@pytest.fixture
def gw_jwt(gateway, upstream, keys, tmp_path):
    (tmp_path / "rsa.pub").write_text(pub_pem(keys["rsa"]))
    cfg = """
return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = false,
  upstreams = { app = { servers = { "%(up)s" }, keepalive = 8 } },
  routes = {
    { match = { prefix = "/hs/" }, upstream = "app",
      plugins = { { "jwt", secret = "%(secret)s",
                    claims_to_headers = { sub = "X-User", role = "X-Role", n = "X-N" } } } },
    { match = { prefix = "/hs512/" }, upstream = "app",
      plugins = { { "jwt", secret = "%(secret)s", algorithms = { "HS512" } } } },
    { match = { prefix = "/cookie/" }, upstream = "app",
      plugins = { { "jwt", secret = "%(secret)s", cookie = "session" } } },
    { match = { prefix = "/query/" }, upstream = "app",
      plugins = { { "jwt", secret = "%(secret)s", query = "access_token" } } },
    { match = { prefix = "/rs/" }, upstream = "app",
      plugins = { { "jwt", public_key_file = "$DIR/rsa.pub", algorithms = { "RS256", "PS256" },
                    claims_to_headers = { sub = "X-User" } } } },
    { match = { prefix = "/es/" }, upstream = "app",
      plugins = { { "jwt", public_key = %(p256)s, algorithms = { "ES256" } } } },
    { match = { prefix = "/ed/" }, upstream = "app",
      plugins = { { "jwt", public_key = %(ed)s, algorithms = { "EdDSA" } } } },
    { match = { prefix = "/claims/" }, upstream = "app",
      plugins = { { "jwt", secret = "%(secret)s", issuer = "https://issuer.test",
                    audience = { "api", "web" }, leeway = 30 } } },
    { match = { prefix = "/short/" }, upstream = "app",
      plugins = { { "jwt", secret = "%(secret)s", cache_ttl = 60 } } },
    { match = { path = "/ctx" },
      plugins = { { "jwt", secret = "%(secret)s" } },
      handler = function(req) return 200, gw.json.encode(req.ctx.jwt),
                                     { ["Content-Type"] = "application/json" } end },
  },
}
""" % {"up": upstream.addr, "secret": SECRET, "p256": lua_str(pub_pem(keys["p256"])),
       "ed": lua_str(pub_pem(keys["ed"]))}
    return gateway(cfg)


def assert_401(r, description=None):
    doc = assert_json_error(r, 401)
    # PRODUCT.md names the challenge exactly, for every refusal; the reason
    # is in the JSON body
    assert r.header("WWW-Authenticate") == 'Bearer error="invalid_token"'
    assert r.header("Content-Type") == "application/json"
    if description is None:
        assert doc["error"] == "missing token"
    else:
        assert doc["error"] == description or description in doc["error"], doc
    return doc


def test_missing_token_is_401_with_the_challenge(gw_jwt, upstream):
    before = upstream.stats()["requests"]
    assert_401(request(gw_jwt.port, "GET", "/hs/x"))
    assert_401(request(gw_jwt.port, "GET", "/hs/x", headers=[("Authorization", "Basic Zm9vOmJhcg==")]))
    assert_401(request(gw_jwt.port, "GET", "/hs/x", headers=[("Authorization", "Bearer")]))
    assert upstream.stats()["requests"] == before, "a refused request must not reach the upstream"


def test_valid_hs256_reaches_upstream_with_claim_headers(gw_jwt):
    tok = make_token({"sub": "alice", "role": "admin", "n": 42, "exp": now() + 600})
    hs = echo_headers(request(gw_jwt.port, "GET", "/hs/x", headers=bearer(tok)))
    assert hdr_values(hs, "X-User") == ["alice"]
    assert hdr_values(hs, "X-Role") == ["admin"]
    assert hdr_values(hs, "X-N") == ["42"]
    # the token itself is passed on untouched
    assert hdr_values(hs, "Authorization") == ["Bearer " + tok]
    # lower-case scheme works too
    r = request(gw_jwt.port, "GET", "/hs/x", headers=[("Authorization", "bearer " + tok)])
    assert r.status == 200


def test_spoofed_claim_headers_are_removed(gw_jwt):
    tok = make_token({"sub": "alice", "exp": now() + 600})
    spoof = [("X-User", "root"), ("X-Role", "superuser"), ("x-user", "root2")]
    hs = echo_headers(request(gw_jwt.port, "GET", "/hs/x", headers=bearer(tok) + spoof))
    assert hdr_values(hs, "X-User") == ["alice"]
    # the token has no role claim: the client's X-Role is gone, none is made up
    assert hdr_values(hs, "X-Role") == []


@pytest.mark.parametrize("case", ["bad_sig", "other_secret", "garbage", "two_parts", "wrong_alg"])
def test_invalid_tokens_are_401_invalid_token(gw_jwt, upstream, case):
    good = make_token({"sub": "alice", "exp": now() + 600})
    tok, why = {
        "bad_sig": (good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"), "bad signature"),
        "other_secret": (make_token({"sub": "a"}, key="nope"), "bad signature"),
        "garbage": ("not-a-token", "malformed token"),
        "two_parts": (".".join(good.split(".")[:2]), "malformed token"),
        "wrong_alg": (make_token({"sub": "a"}, alg="HS384"), "algorithm not allowed"),
    }[case]
    before = upstream.stats()["requests"]
    assert_401(request(gw_jwt.port, "GET", "/hs/x", headers=bearer(tok)), why)
    assert upstream.stats()["requests"] == before


@pytest.mark.parametrize("spelling", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(gw_jwt, spelling):
    tok = make_token({"sub": "admin"}, alg=spelling, header={"alg": spelling, "typ": "JWT"})
    assert_401(request(gw_jwt.port, "GET", "/hs/x", headers=bearer(tok)),
               "unsigned tokens are not accepted")


def test_expired_and_not_yet_valid(gw_jwt):
    assert_401(request(gw_jwt.port, "GET", "/hs/x",
                       headers=bearer(make_token({"sub": "a", "exp": now() - 10}))),
               "token expired")
    assert_401(request(gw_jwt.port, "GET", "/hs/x",
                       headers=bearer(make_token({"sub": "a", "nbf": now() + 100}))),
               "token not valid yet")


def test_hs512_route(gw_jwt):
    ok = make_token({"sub": "a"}, alg="HS512")
    assert request(gw_jwt.port, "GET", "/hs512/", headers=bearer(ok)).status == 200
    assert_401(request(gw_jwt.port, "GET", "/hs512/", headers=bearer(make_token({"sub": "a"}))),
               "algorithm not allowed")


def test_cookie_source(gw_jwt):
    tok = make_token({"sub": "c"})
    r = request(gw_jwt.port, "GET", "/cookie/", headers=[("Cookie", "a=1; session=%s; b=2" % tok)])
    assert r.status == 200
    r = request(gw_jwt.port, "GET", "/cookie/", headers=[("Cookie", 'session="%s"' % tok)])
    assert r.status == 200
    assert_401(request(gw_jwt.port, "GET", "/cookie/", headers=[("Cookie", "other=%s" % tok)]))
    assert_401(request(gw_jwt.port, "GET", "/cookie/", headers=[("Cookie", "session=x.y.z")]),
               "malformed token")
    # the Bearer header is still accepted on a cookie route
    assert request(gw_jwt.port, "GET", "/cookie/", headers=bearer(tok)).status == 200


def test_query_source(gw_jwt):
    tok = make_token({"sub": "q"})
    r = request(gw_jwt.port, "GET", "/query/p?x=1&access_token=%s&y=2" % tok)
    assert r.status == 200
    assert r.json()["path"].startswith("/query/p?")
    assert_401(request(gw_jwt.port, "GET", "/query/p?token=%s" % tok))
    # the query parameter is not looked at on a route that did not ask for it
    assert_401(request(gw_jwt.port, "GET", "/hs/p?access_token=%s" % tok))


def test_rs256_and_ps256_from_public_key_file(gw_jwt, keys):
    for alg in ("RS256", "PS256"):
        tok = make_token({"sub": "r-" + alg}, alg=alg, key=keys["rsa"])
        hs = echo_headers(request(gw_jwt.port, "GET", "/rs/", headers=bearer(tok)))
        assert hdr_values(hs, "X-User") == ["r-" + alg]
    other = make_token({"sub": "x"}, alg="RS256", key=keys["rsa2"])
    assert_401(request(gw_jwt.port, "GET", "/rs/", headers=bearer(other)), "bad signature")


def test_key_confusion_hs256_signed_with_the_public_key(gw_jwt, keys):
    pem = pub_pem(keys["rsa"])
    tok = make_token({"sub": "admin"}, alg="HS256", key=pem)
    assert_401(request(gw_jwt.port, "GET", "/rs/", headers=bearer(tok)), "algorithm not allowed")


def test_es256_and_eddsa(gw_jwt, keys):
    tok = make_token({"sub": "e"}, alg="ES256", key=keys["p256"])
    assert request(gw_jwt.port, "GET", "/es/", headers=bearer(tok)).status == 200
    tok = make_token({"sub": "d"}, alg="EdDSA", key=keys["ed"])
    assert request(gw_jwt.port, "GET", "/ed/", headers=bearer(tok)).status == 200
    # the EdDSA token on the ES256 route
    assert_401(request(gw_jwt.port, "GET", "/es/", headers=bearer(tok)), "algorithm not allowed")


def test_issuer_audience_leeway(gw_jwt):
    base = {"iss": "https://issuer.test", "aud": "web", "exp": now() + 60}
    ok = request(gw_jwt.port, "GET", "/claims/", headers=bearer(make_token(base)))
    assert ok.status == 200
    ok = request(gw_jwt.port, "GET", "/claims/",
                 headers=bearer(make_token(dict(base, aud=["zzz", "api"]))))
    assert ok.status == 200
    assert_401(request(gw_jwt.port, "GET", "/claims/",
                       headers=bearer(make_token(dict(base, aud="other")))),
               "audience not allowed")
    assert_401(request(gw_jwt.port, "GET", "/claims/",
                       headers=bearer(make_token(dict(base, iss="https://evil.test")))),
               "issuer not allowed")
    # 30 s of leeway: expired 10 s ago still passes, 100 s ago does not
    assert request(gw_jwt.port, "GET", "/claims/",
                   headers=bearer(make_token(dict(base, exp=now() - 10)))).status == 200
    assert_401(request(gw_jwt.port, "GET", "/claims/",
                       headers=bearer(make_token(dict(base, exp=now() - 100)))),
               "token expired")


def test_claims_in_ctx(gw_jwt):
    claims = {"sub": "alice", "scope": ["a", "b"], "n": 7}
    r = request(gw_jwt.port, "GET", "/ctx", headers=bearer(make_token(claims)))
    assert r.status == 200, r.body
    assert r.json() == claims


def test_cached_token_still_expires(gw_jwt):
    """A verified token is cached, but never past its exp."""
    tok = make_token({"sub": "a", "exp": time.time() + 1.5})
    assert request(gw_jwt.port, "GET", "/short/", headers=bearer(tok)).status == 200
    assert request(gw_jwt.port, "GET", "/short/", headers=bearer(tok)).status == 200
    r = wait_for(lambda: (lambda r: r if r.status == 401 else None)(
        request(gw_jwt.port, "GET", "/short/", headers=bearer(tok))),
        timeout=5, interval=0.1, what="the cached token to expire")
    assert_401(r, "token expired")


def test_token_not_in_logs(gw_jwt):
    tok = make_token({"sub": "a"}, key="wrong")
    request(gw_jwt.port, "GET", "/hs/", headers=bearer(tok))
    request(gw_jwt.port, "GET", "/hs/", headers=bearer(make_token({"sub": "a"})))
    sig = tok.split(".")[2]
    assert sig not in gw_jwt.stderr_text() + gw_jwt.stdout_text()


# --------------------------------------------------------------------------
# configuration errors, found by -t and at start

@pytest.mark.parametrize("plugin,needle", [
    ('{ "jwt" }', "HS* but no secret"),
    ('{ "jwt", secret = "x", algorithms = { "none" } }', "unsupported algorithm"),
    ('{ "jwt", secret = "x", algorithms = { "HS256", "NONE" } }', "unsupported algorithm"),
    ('{ "jwt", public_key_file = "$DIR/missing.pem", algorithms = { "RS256" } }',
     "public_key_file"),
    ('{ "jwt", public_key = "not a pem", algorithms = { "RS256" } }', "public key"),
    ('{ "jwt", secret = "x", algorithms = { "RS256" } }', "asymmetric"),
    ('{ "jwt", secret = "x", bogus = 1 }', "unknown option"),
])
def test_bad_config_is_refused_by_dash_t(run_moongate, plugin, needle):
    cfg = """return { listen = { { addr = "127.0.0.1:$PORT" } },
  routes = { { match = { prefix = "/" }, handler = function() return 200, "ok" end,
               plugins = { %s } } } }
""" % plugin
    p = run_moongate("-t", "-c", "$CFG", config=cfg)
    assert p.returncode == 1, (p.stdout_text, p.stderr_text)
    assert needle in p.stdout_text + p.stderr_text, (p.stdout_text, p.stderr_text)


def test_good_config_passes_dash_t(run_moongate, tmp_path, keys):
    (tmp_path / "k.pem").write_text(pub_pem(keys["p256"]))
    cfg = """return { listen = { { addr = "127.0.0.1:$PORT" } },
  routes = { { match = { prefix = "/" }, handler = function() return 200, "ok" end,
               plugins = { { "jwt", public_key_file = "$DIR/k.pem", algorithms = { "ES256" } },
                           { "rate_limit", rate = 5 } } } } }
"""
    p = run_moongate("-t", "-c", "$CFG", config=cfg)
    assert p.returncode == 0, (p.stdout_text, p.stderr_text)
    assert "OK" in p.stdout_text + p.stderr_text


# --------------------------------------------------------------------------
# JWKS (needs gw.http)

class JWKS:
    """A JWKS endpoint on a free port: serves .doc, counts fetches, can be slow."""

    def __init__(self):
        self.doc = {"keys": []}
        self.fetches = 0
        self.delay = 0.0
        self.status = 200
        self.lock = threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with outer.lock:
                    outer.fetches += 1
                    body = json.dumps(outer.doc).encode()
                    delay = outer.delay
                    status = outer.status
                if delay:
                    time.sleep(delay)
                if status != 200:
                    body = b"oops"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def rsa_jwk(key, kid):
    n = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64u_int(n.n), "e": b64u_int(n.e)}


def ec_jwk(key, kid):
    n = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "kid": kid, "x": b64u(n.x.to_bytes(32, "big")),
            "y": b64u(n.y.to_bytes(32, "big"))}


def ed_jwk(key, kid):
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64u(raw)}


def has_gw_http(run_moongate, tmp_path):
    s = tmp_path / "probe.lua"
    s.write_text('io.write(gw.http and gw.http.request and "yes" or "no")\n')
    p = run_moongate("--script", str(s))
    return p.stdout_text.strip().endswith("yes")


@pytest.fixture
def jwks_server():
    s = JWKS()
    yield s
    s.stop()


@pytest.fixture
def gw_jwks(gateway, upstream, jwks_server, run_moongate, tmp_path):
    if not has_gw_http(run_moongate, tmp_path):
        pytest.skip("gw.http is not in this build yet")
    cfg = """
return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = false,
  upstreams = { app = { servers = { "%s" }, keepalive = 8 } },
  routes = {
    { match = { prefix = "/" }, upstream = "app",
      plugins = { { "jwt", jwks_url = "http://127.0.0.1:%d/jwks.json", jwks_ttl = 300,
                    jwks_refetch_interval = 1,
                    algorithms = { "RS256", "ES256", "EdDSA" },
                    claims_to_headers = { sub = "X-User" } } } },
  },
}
""" % (upstream.addr, jwks_server.port)
    return gateway(cfg)


def test_jwks_keys_by_kid(gw_jwks, jwks_server, keys):
    jwks_server.doc = {"keys": [rsa_jwk(keys["rsa"], "r1"), ec_jwk(keys["p256"], "e1"),
                                ed_jwk(keys["ed"], "d1")]}
    for alg, k, kid in (("RS256", "rsa", "r1"), ("ES256", "p256", "e1"), ("EdDSA", "ed", "d1")):
        tok = make_token({"sub": kid}, alg=alg, key=keys[k], header={"alg": alg, "kid": kid})
        hs = echo_headers(request(gw_jwks.port, "GET", "/", headers=bearer(tok)))
        assert hdr_values(hs, "X-User") == [kid]
    assert jwks_server.fetches == 1, "the set is cached"
    # a kid naming a key of another type is refused
    tok = make_token({"sub": "x"}, alg="RS256", key=keys["rsa"], header={"alg": "RS256", "kid": "e1"})
    assert_401(request(gw_jwks.port, "GET", "/", headers=bearer(tok)), "no key for this token")
    # the right kid with another key's signature
    tok = make_token({"sub": "x"}, alg="RS256", key=keys["rsa2"], header={"alg": "RS256", "kid": "r1"})
    assert_401(request(gw_jwks.port, "GET", "/", headers=bearer(tok)), "bad signature")


def test_jwks_keys_whose_key_ops_lack_verify_are_not_used(gw_jwks, jwks_server, keys):
    # RFC 7517 4.3 (Wycheproof JWS tc355/tc356): key_ops limit what a key may do
    def with_ops(jwk, ops):
        jwk = dict(jwk)
        del jwk["use"]
        jwk["key_ops"] = ops
        return jwk

    jwks_server.doc = {"keys": [
        with_ops(rsa_jwk(keys["rsa"], "enc"), ["encrypt"]),
        with_ops(rsa_jwk(keys["rsa"], "none"), []),
        with_ops(rsa_jwk(keys["rsa"], "str"), "verify"),  # not an array
        with_ops(rsa_jwk(keys["rsa2"], "ver"), ["sign", "verify"]),
        dict(ec_jwk(keys["p256"], "use-enc"), use="enc"),
    ]}
    for kid in ("enc", "none", "str"):
        tok = make_token({"sub": kid}, alg="RS256", key=keys["rsa"],
                         header={"alg": "RS256", "kid": kid})
        assert_401(request(gw_jwks.port, "GET", "/", headers=bearer(tok)),
                   "no key for this token")
    tok = make_token({"sub": "e"}, alg="ES256", key=keys["p256"],
                     header={"alg": "ES256", "kid": "use-enc"})
    assert_401(request(gw_jwks.port, "GET", "/", headers=bearer(tok)), "no key for this token")
    # without a kid every fitting key is tried: only "ver" is, and it is another key
    tok = make_token({"sub": "x"}, alg="RS256", key=keys["rsa"], header={"alg": "RS256"})
    assert_401(request(gw_jwks.port, "GET", "/", headers=bearer(tok)), "bad signature")
    # a key that may verify does
    for header in ({"alg": "RS256", "kid": "ver"}, {"alg": "RS256"}):
        tok = make_token({"sub": "ok"}, alg="RS256", key=keys["rsa2"], header=header)
        hs = echo_headers(request(gw_jwks.port, "GET", "/", headers=bearer(tok)))
        assert hdr_values(hs, "X-User") == ["ok"]


def test_jwks_unknown_kid_refetches_once_per_10s(gw_jwks, jwks_server, keys):
    jwks_server.doc = {"keys": [rsa_jwk(keys["rsa"], "old")]}
    tok = make_token({"sub": "a"}, alg="RS256", key=keys["rsa"], header={"alg": "RS256", "kid": "old"})
    assert request(gw_jwks.port, "GET", "/", headers=bearer(tok)).status == 200
    assert jwks_server.fetches == 1
    # the issuer rotates: the new kid is unknown, so the set is fetched again,
    # once jwks_refetch_interval (1 s here) has passed since the last fetch
    jwks_server.doc = {"keys": [rsa_jwk(keys["rsa"], "old"), rsa_jwk(keys["rsa2"], "new")]}
    tok2 = make_token({"sub": "b"}, alg="RS256", key=keys["rsa2"], header={"alg": "RS256", "kid": "new"})
    t0 = time.monotonic()
    wait_for(lambda: request(gw_jwks.port, "GET", "/", headers=bearer(tok2)).status == 200,
             timeout=5, interval=0.1, what="the rotated key to be fetched")
    assert time.monotonic() - t0 < 3
    assert jwks_server.fetches == 2
    # unknown kids right after: no fetch storm
    for i in range(5):
        bad = make_token({"sub": "c"}, alg="RS256", key=keys["rsa2"],
                         header={"alg": "RS256", "kid": "nope%d" % i})
        assert_401(request(gw_jwks.port, "GET", "/", headers=bearer(bad)), "no key for this token")
    assert jwks_server.fetches == 2


def test_jwks_concurrent_first_use_fetches_once(gw_jwks, jwks_server, keys):
    jwks_server.doc = {"keys": [rsa_jwk(keys["rsa"], "k")]}
    jwks_server.delay = 0.4
    tok = make_token({"sub": "a"}, alg="RS256", key=keys["rsa"], header={"alg": "RS256", "kid": "k"})
    with ThreadPoolExecutor(8) as ex:
        res = list(ex.map(lambda _: request(gw_jwks.port, "GET", "/", headers=bearer(tok)).status,
                          range(8)))
    assert res == [200] * 8
    assert jwks_server.fetches == 1


def test_jwks_outage_keeps_known_keys_and_recovers(gateway, upstream, jwks_server, keys,
                                                   run_moongate, tmp_path):
    if not has_gw_http(run_moongate, tmp_path):
        pytest.skip("gw.http is not in this build yet")
    cfg = """
return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = false,
  upstreams = { app = { servers = { "%s" }, keepalive = 8 } },
  routes = {
    { match = { prefix = "/" }, upstream = "app",
      plugins = { { "jwt", jwks_url = "http://127.0.0.1:%d/jwks.json", jwks_ttl = 0.3,
                    jwks_refetch_interval = 0.3, cache_ttl = 0, algorithms = { "ES256" } } } },
  },
}
""" % (upstream.addr, jwks_server.port)
    # the JWKS endpoint is down at first: 401, and the gateway keeps serving
    jwks_server.status = 500
    g = gateway(cfg)
    tok = make_token({"sub": "a"}, alg="ES256", key=keys["p256"], header={"alg": "ES256", "kid": "e"})
    assert_401(request(g.port, "GET", "/", headers=bearer(tok)), "no key for this token")
    # it comes back: within about a second the keys are there
    jwks_server.doc = {"keys": [ec_jwk(keys["p256"], "e")]}
    jwks_server.status = 200
    wait_for(lambda: request(g.port, "GET", "/", headers=bearer(tok)).status == 200,
             timeout=5, interval=0.1, what="the JWKS to be fetched after the outage")
    # down again: past the ttl the stale keys are still used
    jwks_server.status = 500
    n = jwks_server.fetches
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert request(g.port, "GET", "/", headers=bearer(tok)).status == 200
        time.sleep(0.05)
    assert jwks_server.fetches > n, "the set was refetched after its ttl"
    # ... but not on every request: about one try per refetch interval
    assert jwks_server.fetches - n <= 8, jwks_server.fetches - n
