"""The bundled forward_auth plugin (Traefik ForwardAuth semantics) through the
real gateway, a real auth server (authserver.py, in this process) and the
test upstream: what the auth server receives (method, X-Forwarded-*, the
client's forwarded family deleted in any spelling unless trusted, no
hop-by-hop, Proxy-Authorization kept, allow-list, body), what the upstream
receives on 2xx (auth response headers deleted then copied, by list and by
pattern, a repeated one as separate fields), denials passed through (every
header but hop-by-hop ones, Proxy-Authenticate included, one Location made
absolute, sign-in redirect), the body limit, status_on_error (refused,
hanging) and the allow-decision cache."""

import time

import pytest

from authserver import AuthServer
from conftest import Raw, assert_json_error, config, free_port, lua, request


@pytest.fixture
def auth():
    a = AuthServer().start()
    yield a
    a.stop()


def plugin(**opts):
    return Raw('{ "forward_auth",' + lua(opts)[1:])


def fa_gateway(gateway, upstream, *routes, **top):
    """routes: (prefix, forward_auth options) -> one route each to the upstream."""
    rs = [{"match": {"prefix": p}, "upstream": "app", "plugins": [plugin(**o)]}
          for p, o in routes]
    return gateway(config(upstreams={"app": {"servers": [upstream.addr], "keepalive": 8}},
                          routes=rs, workers=1, **top))


def values(headers, name):
    return [v for n, v in headers if n.lower() == name.lower()]


def echo(r):
    assert r.status == 200, (r, r.body[:300])
    return r.json()


def upstream_requests(upstream):
    return upstream.stats()["requests"]


def test_allowed_request_reaches_upstream_and_auth_gets_a_get_with_forwarded_headers(
        gateway, upstream, auth):
    g = fa_gateway(gateway, upstream, ("/", {"address": auth.url("/auth/check")}))
    r = request(g.port, "POST", "/echo/a?x=1&y=2", host="gw.example:8443",
                headers=[("Content-Type", "text/plain"), ("X-Custom", "abc")],
                body="payload")
    doc = echo(r)
    assert doc["method"] == "POST" and doc["path"] == "/echo/a?x=1&y=2"
    assert doc["body"] == "payload"
    assert auth.count() == 1
    a = auth.last()
    assert a["method"] == "GET"
    assert a["target"] == "/auth/check"  # address called as is
    assert a["body"] == b""
    h = a["headers"]
    assert values(h, "X-Forwarded-Method") == ["POST"]
    assert values(h, "X-Forwarded-Proto") == ["http"]
    assert values(h, "X-Forwarded-Host") == ["gw.example:8443"]
    assert values(h, "X-Forwarded-Uri") == ["/echo/a?x=1&y=2"]
    assert values(h, "X-Forwarded-For") == ["127.0.0.1"]
    assert values(h, "X-Forwarded-Port") == ["8443"]
    assert values(h, "X-Custom") == ["abc"]  # client headers go along
    # the client's Host and Content-Length are not the auth request's
    assert "gw.example:8443" not in values(h, "Host")
    assert values(h, "Content-Length") in ([], ["0"])

    # no port in Host: 80
    request(g.port, "GET", "/x", host="plain.example")
    h = auth.last()["headers"]
    assert values(h, "X-Forwarded-Host") == ["plain.example"]
    assert values(h, "X-Forwarded-Port") == ["80"]
    assert values(h, "X-Forwarded-Uri") == ["/x"]


def test_preserve_request_method(gateway, upstream, auth):
    g = fa_gateway(gateway, upstream,
                   ("/keep/", {"address": auth.url(), "preserve_request_method": True}),
                   ("/", {"address": auth.url()}))
    assert echo(request(g.port, "DELETE", "/keep/1"))["method"] == "DELETE"
    assert auth.last()["method"] == "DELETE"
    assert echo(request(g.port, "PUT", "/other", body="b"))["method"] == "PUT"
    assert auth.last()["method"] == "GET"
    assert values(auth.last()["headers"], "X-Forwarded-Method") == ["PUT"]


def test_client_forwarded_headers_overwritten_unless_trusted(gateway, upstream, auth):
    g = fa_gateway(gateway, upstream,
                   ("/trust/", {"address": auth.url(), "trust_forward_header": True}),
                   ("/", {"address": auth.url()}))
    spoof = [("x-forwarded-method", "PATCH"), ("X-Forwarded-Proto", "https"),
             ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Uri", "/admin"),
             ("X-Forwarded-For", "10.9.9.9"), ("X-Forwarded-Port", "444")]
    echo(request(g.port, "GET", "/plain?q=1", host="gw.example", headers=spoof))
    h = auth.last()["headers"]
    assert values(h, "X-Forwarded-Method") == ["GET"]
    assert values(h, "X-Forwarded-Proto") == ["http"]
    assert values(h, "X-Forwarded-Host") == ["gw.example"]
    assert values(h, "X-Forwarded-Uri") == ["/plain?q=1"]
    assert values(h, "X-Forwarded-For") == ["127.0.0.1"]
    assert values(h, "X-Forwarded-Port") == ["80"]

    echo(request(g.port, "GET", "/trust/x", host="gw.example", headers=spoof))
    h = auth.last()["headers"]
    assert values(h, "X-Forwarded-Method") == ["PATCH"]
    assert values(h, "X-Forwarded-Proto") == ["https"]
    assert values(h, "X-Forwarded-Host") == ["evil.example"]
    assert values(h, "X-Forwarded-Uri") == ["/admin"]
    assert values(h, "X-Forwarded-For") == ["10.9.9.9, 127.0.0.1"]
    assert values(h, "X-Forwarded-Port") == ["444"]


HOP_BY_HOP = [("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Trailer", "X-T"),
              ("Proxy-Connection", "keep-alive")]


def test_hop_by_hop_headers_never_reach_the_auth_server(gateway, upstream, auth):
    g = fa_gateway(gateway, upstream, ("/", {"address": auth.url()}))
    echo(request(g.port, "GET", "/echo", headers=[("Connection", "keep-alive")]
                 + HOP_BY_HOP + [("X-Kept", "1")]))
    names = {n.lower() for n, _ in auth.last()["headers"]}
    for n, _ in HOP_BY_HOP:
        assert n.lower() not in names, auth.last()["headers"]
    assert values(auth.last()["headers"], "X-Kept") == ["1"]
    # what the auth server got as Connection (if anything) is its own, not the client's
    assert values(auth.last()["headers"], "Connection") in ([], ["keep-alive"], ["close"])


def test_proxy_authorization_and_proxy_authenticate_reach_the_auth_server(
        gateway, upstream, auth):
    # Traefik forwards them on purpose (RFC 9110 11.7: the auth server may
    # be the proxy's own authenticator); so does the main proxy path
    g = fa_gateway(gateway, upstream, ("/", {"address": auth.url()}))
    doc = echo(request(g.port, "GET", "/echo", headers=[
        ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"), ("Proxy-Authenticate", "Basic")]))
    h = auth.last()["headers"]
    assert values(h, "Proxy-Authorization") == ["Basic cHJveHk6c2VjcmV0"]
    assert values(h, "Proxy-Authenticate") == ["Basic"]
    assert values(doc["headers"], "Proxy-Authorization") == ["Basic cHJveHk6c2VjcmV0"]


# The X-Forwarded-* family (and X-Real-Ip, X-Scheme) as a client may spell
# it: underscores for dashes, in any position.
SPOOFED = [("X_Forwarded_For", "10.6.6.6"), ("X-Forwarded_Host", "evil.example"),
           ("X_Forwarded-Proto", "https"), ("x_forwarded_uri", "/admin"),
           ("X_FORWARDED_METHOD", "PATCH"), ("X-Forwarded_Port", "1"),
           ("X-Forwarded-Prefix", "/admin"), ("X_Forwarded_Prefix", "/admin"),
           ("X-Forwarded-Server", "evil"), ("X-Forwarded-Tls-Client-Cert", "c"),
           ("X_Forwarded_Tls_Client_Cert_Info", "i"), ("X-Real-Ip", "10.6.6.6"),
           ("X_Real_IP", "10.6.6.6"), ("X-Scheme", "https"), ("X-Forwarded-Scheme", "https")]


def forwarded_family(headers):
    """{normalized name: [(name as received, value)]} of the X-Forwarded-*-like
    headers received."""
    out = {}
    for n, v in headers:
        k = n.lower().replace("_", "-")
        if k.startswith("x-forwarded-") or k in ("x-real-ip", "x-scheme"):
            out.setdefault(k, []).append((n.lower(), v))
    return out


def test_untrusted_client_forwarded_headers_in_any_spelling_never_reach_the_auth_server(
        gateway, upstream, auth):
    # Traefik (trustForwardHeader = false) deletes every X-Forwarded-* it
    # manages, underscore spellings included, before setting its own
    g = fa_gateway(gateway, upstream,
                   ("/trust/", {"address": auth.url(), "trust_forward_header": True}),
                   ("/", {"address": auth.url()}))
    echo(request(g.port, "GET", "/plain", host="gw.example", headers=SPOOFED))
    got = forwarded_family(auth.last()["headers"])
    assert got == {
        "x-forwarded-method": [("x-forwarded-method", "GET")],
        "x-forwarded-proto": [("x-forwarded-proto", "http")],
        "x-forwarded-host": [("x-forwarded-host", "gw.example")],
        "x-forwarded-uri": [("x-forwarded-uri", "/plain")],
        "x-forwarded-for": [("x-forwarded-for", "127.0.0.1")],
        "x-forwarded-port": [("x-forwarded-port", "80")],
    }, auth.last()["headers"]

    # trusted: the client's (dash-spelled) ones go along
    echo(request(g.port, "GET", "/trust/x", host="gw.example", headers=SPOOFED))
    h = auth.last()["headers"]
    assert values(h, "X-Forwarded-Prefix") == ["/admin"]
    assert values(h, "X-Real-Ip") == ["10.6.6.6"]
    assert values(h, "X-Forwarded-For") == ["127.0.0.1"]  # none sent with dashes


def test_headers_named_in_connection_are_hop_by_hop_too(gateway, upstream, auth):
    # RFC 9110 7.6.1 (and Traefik: RemoveConnectionHeaders)
    g = fa_gateway(gateway, upstream, ("/", {"address": auth.url()}))
    echo(request(g.port, "GET", "/echo",
                 headers=[("Connection", "X-Hop-Secret"), ("X-Hop-Secret", "s")]))
    assert values(auth.last()["headers"], "X-Hop-Secret") == []


def test_auth_request_headers_allow_list(gateway, upstream, auth):
    g = fa_gateway(gateway, upstream,
                   ("/", {"address": auth.url(),
                          "auth_request_headers": ["Authorization", "X-Tenant"]}))
    doc = echo(request(g.port, "GET", "/echo", headers=[
        ("Authorization", "Bearer t"), ("X-Tenant", "acme"), ("Cookie", "c=1"),
        ("X-Other", "o")]))
    h = auth.last()["headers"]
    assert values(h, "Authorization") == ["Bearer t"]
    assert values(h, "X-Tenant") == ["acme"]
    assert values(h, "Cookie") == [] and values(h, "X-Other") == []
    assert values(h, "X-Forwarded-Uri") == ["/echo"]  # always sent
    # the upstream still gets everything
    assert values(doc["headers"], "Cookie") == ["c=1"]
    assert values(doc["headers"], "X-Other") == ["o"]


def test_auth_response_headers_deleted_then_copied(gateway, upstream, auth):
    g = fa_gateway(gateway, upstream,
                   ("/", {"address": auth.url("/ok?h=X-User:alice&h=X-Not-Listed:n"
                                              "&body=authbody&ctype=text/plain"),
                          "auth_response_headers": ["X-User", "X-Email"]}))
    doc = echo(request(g.port, "GET", "/echo", headers=[
        ("X-User", "mallory"), ("X-Email", "mallory@evil"), ("X-Keep", "k")]))
    h = doc["headers"]
    assert values(h, "X-User") == ["alice"]
    assert values(h, "X-Email") == []  # spoofed, and the auth server sent none
    assert values(h, "X-Not-Listed") == []
    assert values(h, "X-Keep") == ["k"]
    assert doc["body"] == ""  # the auth body is dropped


def test_auth_response_headers_regex(gateway, upstream, auth):
    g = fa_gateway(gateway, upstream,
                   ("/", {"address": auth.url("/ok?h=X-Auth-User:bob&h=X-Auth-Role:admin"
                                              "&h=X-Other:o"),
                          "auth_response_headers_regex": "^X-Auth-.*"}))
    doc = echo(request(g.port, "GET", "/echo", headers=[
        ("X-Auth-Spoof", "evil"), ("X-Auth-User", "mallory")]))
    h = doc["headers"]
    assert values(h, "X-Auth-User") == ["bob"]
    assert values(h, "X-Auth-Role") == ["admin"]
    assert values(h, "X-Auth-Spoof") == []
    assert values(h, "X-Other") == []


def test_auth_response_header_sent_twice_reaches_the_upstream_as_two_fields(
        gateway, upstream, auth):
    url = auth.url("/ok?h=X-Auth-Group:group1&h=X-Auth-Group:group2"
                   "&h=X-Auth-One:a,%20b&h=X-Auth-Role:r1&h=X-Auth-Role:r2")
    g = fa_gateway(gateway, upstream,
                   ("/list/", {"address": url,
                               "auth_response_headers": ["X-Auth-Group", "X-Auth-One"]}),
                   ("/regex/", {"address": url, "auth_response_headers_regex": "^X-Auth-"}),
                   ("/cached/", {"address": url, "cache_ttl": 30,
                                 "cache_key": ["Authorization"],
                                 "auth_response_headers": ["X-Auth-Group"]}))
    spoof = [("X-Auth-Group", "admins"), ("X-Auth-Group", "root")]
    for path in ("/list/echo", "/regex/echo", "/cached/echo", "/cached/echo"):
        n_auth = auth.count()
        doc = echo(request(g.port, "GET", path, headers=spoof + [("Authorization", "A")]))
        h = doc["headers"]
        assert values(h, "X-Auth-Group") == ["group1", "group2"], (path, h)
        if path != "/cached/echo":
            assert values(h, "X-Auth-One") == ["a, b"]  # one field with a comma stays one
        if path == "/regex/echo":
            assert values(h, "X-Auth-Role") == ["r1", "r2"]
    assert n_auth == auth.count()  # the last one came from the cache


def test_denial_passes_every_auth_header_but_hop_by_hop_ones(gateway, upstream, auth):
    # Traefik copies the whole auth response head to the client, minus
    # hop-by-hop headers; Proxy-Authenticate is the auth server's to send
    q = ("&h=Proxy-Authenticate:Basic%20realm%3D%22proxy%22&h=WWW-Authenticate:Basic"
         "&h=X-Reason:no&h=Keep-Alive:timeout%3D5&h=Proxy-Connection:keep-alive"
         "&h=Location:/a&h=Location:/b&body=denied")
    g = fa_gateway(gateway, upstream,
                   ("/403/", {"address": auth.url("/deny?status=403" + q)}),
                   ("/407/", {"address": auth.url("/deny?status=407" + q)}))
    for status in (403, 407):
        r = request(g.port, "GET", "/%d/echo" % status)
        assert r.status == status and r.body == b"denied"
        assert r.headers_all("Proxy-Authenticate") == ['Basic realm="proxy"']
        assert r.headers_all("WWW-Authenticate") == ["Basic"]
        assert r.headers_all("X-Reason") == ["no"]
        assert not r.has("Keep-Alive") and not r.has("Proxy-Connection")
        # one Location (Traefik sets the first, resolved against address)
        assert r.headers_all("Location") == ["http://127.0.0.1:%d/a" % auth.port]
        assert r.headers_all("Content-Length") == ["6"]
    assert upstream_requests(upstream) == 0


def test_denial_goes_to_the_client_verbatim_and_upstream_sees_nothing(
        gateway, upstream, auth):
    g = fa_gateway(gateway, upstream,
                   ("/", {"address": auth.url("/deny?status=403&h=X-Reason:no-role"
                                              "&h=WWW-Authenticate:Bearer%20realm%3D%22x%22"
                                              "&h=Set-Cookie:a=1&h=Set-Cookie:b=2"
                                              "&body=forbidden%20by%20auth&ctype=text/plain"),
                          "auth_response_headers": ["X-Reason"]}))
    before = upstream_requests(upstream)
    r = request(g.port, "POST", "/echo", body="data")
    assert r.status == 403
    assert r.body == b"forbidden by auth"
    assert r.header("X-Reason") == "no-role"
    assert r.header("WWW-Authenticate") == 'Bearer realm="x"'
    assert r.header("Content-Type") == "text/plain"
    assert r.headers_all("Set-Cookie") == ["a=1", "b=2"]  # repeated headers kept
    assert upstream_requests(upstream) == before
    assert auth.count() == 1


def test_location_made_absolute_unless_preserved(gateway, upstream, auth):
    base = auth.url("/auth/check")
    g = fa_gateway(
        gateway, upstream,
        ("/abs/", {"address": base + "?status=302&h=Location:/login%3Fnext%3D1"}),
        ("/rel/", {"address": base + "?status=302&h=Location:login"}),
        ("/full/", {"address": base + "?status=302&h=Location:https://sso.example/l"}),
        ("/keep/", {"address": base + "?status=302&h=Location:/login%3Fnext%3D1",
                    "preserve_location_header": True}))
    r = request(g.port, "GET", "/abs/x")
    assert r.status == 302
    assert r.header("Location") == "http://127.0.0.1:%d/login?next=1" % auth.port
    r = request(g.port, "GET", "/rel/x")
    assert r.header("Location") == "http://127.0.0.1:%d/auth/login" % auth.port
    assert request(g.port, "GET", "/full/x").header("Location") == "https://sso.example/l"
    r = request(g.port, "GET", "/keep/x")
    assert r.status == 302 and r.header("Location") == "/login?next=1"
    assert upstream_requests(upstream) == 0


def test_auth_signin_url_turns_401_into_302(gateway, upstream, auth):
    g = fa_gateway(
        gateway, upstream,
        ("/u/", {"address": auth.url("/?status=401&body=who"),
                 "auth_signin_url": "https://sso.example/signin"}),
        ("/f/", {"address": auth.url("/?status=403&body=no"),
                 "auth_signin_url": "https://sso.example/signin"}))
    r = request(g.port, "GET", "/u/page")
    assert r.status == 302
    assert r.header("Location") == "https://sso.example/signin"
    r = request(g.port, "GET", "/f/page")
    assert r.status == 403 and r.body == b"no"
    assert upstream_requests(upstream) == 0


def test_forward_body_and_max_body_size(gateway, upstream, auth):
    g = fa_gateway(gateway, upstream,
                   ("/", {"address": auth.url(), "forward_body": True,
                          "max_body_size": 100, "preserve_request_method": True}))
    body = "x" * 60 + "y" * 40  # exactly the limit
    doc = echo(request(g.port, "POST", "/echo", body=body))
    assert doc["body"] == body  # upstream: intact
    a = auth.last()
    assert a["method"] == "POST" and a["body"] == body.encode()

    n_auth = auth.count()
    before = upstream_requests(upstream)
    r = request(g.port, "POST", "/echo", body="z" * 101)
    assert r.status == 413
    assert auth.count() == n_auth
    assert upstream_requests(upstream) == before

    # chunked bodies are buffered and forwarded the same way
    doc = echo(request(g.port, "POST", "/echo", body="chunky", chunked=True))
    assert doc["body"] == "chunky"
    assert auth.last()["body"] == b"chunky"


def test_status_on_error_when_auth_server_refuses(gateway, upstream, auth):
    dead = "http://127.0.0.1:%d/auth" % free_port()
    g = fa_gateway(gateway, upstream,
                   ("/custom/", {"address": dead, "status_on_error": 503}),
                   ("/", {"address": dead}))
    # the short JSON body of every gateway error
    assert_json_error(request(g.port, "GET", "/echo"), 500)
    assert_json_error(request(g.port, "GET", "/custom/echo"), 503)
    assert upstream_requests(upstream) == 0


def test_hanging_auth_server_answered_within_timeout(gateway, upstream, auth):
    g = fa_gateway(gateway, upstream,
                   ("/", {"address": auth.url("/hang"), "timeout": 0.5,
                          "status_on_error": 504}))
    t0 = time.monotonic()
    r = request(g.port, "GET", "/echo", timeout=10)
    took = time.monotonic() - t0
    assert r.status == 504
    assert 0.4 <= took < 3.0, took
    assert auth.count() == 1  # it did reach the auth server
    assert upstream_requests(upstream) == 0


def test_cache_allow_decisions_by_key_but_never_denials(gateway, upstream, auth):
    g = fa_gateway(gateway, upstream,
                   ("/deny/", {"address": auth.url("/no?status=401"), "cache_ttl": 30,
                               "cache_key": ["Authorization"]}),
                   ("/", {"address": auth.url("/ok?h=X-User:alice"), "cache_ttl": 30,
                          "cache_key": ["Authorization"],
                          "auth_response_headers": ["X-User"]}))
    a = [("Authorization", "Bearer A")]
    doc = echo(request(g.port, "GET", "/echo/1", headers=a))
    assert values(doc["headers"], "X-User") == ["alice"]
    assert auth.count() == 1
    # same key: a cache hit, and the cached header still replaces a spoofed one
    doc = echo(request(g.port, "GET", "/echo/2", headers=a + [("X-User", "mallory")]))
    assert values(doc["headers"], "X-User") == ["alice"]
    assert auth.count() == 1
    # another key asks again
    echo(request(g.port, "GET", "/echo/3", headers=[("Authorization", "Bearer B")]))
    assert auth.count() == 2
    echo(request(g.port, "GET", "/echo/4", headers=[("Authorization", "Bearer B")]))
    assert auth.count() == 2

    # denials are not cached
    for i in range(3):
        r = request(g.port, "GET", "/deny/x", headers=a)
        assert r.status == 401
        assert auth.count() == 3 + i


def test_cached_decisions_are_per_route(gateway, upstream, auth):
    # same auth address and cache key, different headers to copy: a decision
    # cached for /a/ (which copies X-User only) must not serve /b/
    url = auth.url("/ok?h=X-User:alice&h=X-Role:admin")
    g = fa_gateway(gateway, upstream,
                   ("/a/", {"address": url, "cache_ttl": 30, "cache_key": ["Authorization"],
                            "auth_response_headers": ["X-User"]}),
                   ("/b/", {"address": url, "cache_ttl": 30, "cache_key": ["Authorization"],
                            "auth_response_headers": ["X-User", "X-Role"]}))
    a = [("Authorization", "Bearer A")]
    doc = echo(request(g.port, "GET", "/a/echo", headers=a))
    assert values(doc["headers"], "X-Role") == []
    assert auth.count() == 1
    doc = echo(request(g.port, "GET", "/b/echo", headers=a))
    assert values(doc["headers"], "X-Role") == ["admin"]
    assert auth.count() == 2
    echo(request(g.port, "GET", "/b/echo", headers=a))
    assert auth.count() == 2


def test_config_check_refuses_bad_options(run_moongate):
    def check(opts):
        text = config(routes=[{"match": {"prefix": "/"},
                               "handler": Raw("function() return 200, 'x' end"),
                               "plugins": [plugin(**opts)]}])
        return run_moongate("-t", "-c", "$CFG", config=text)

    assert check({"address": "http://127.0.0.1:1/a"}).returncode == 0
    for bad in ({"address": "ftp://x/a"},
                {"address": "http://127.0.0.1:1/a", "cache_ttl": 5},
                {"address": "http://127.0.0.1:1/a", "auth_response_headers_regex": "X-(A|B)"}):
        p = check(bad)
        assert p.returncode != 0, (bad, p.stdout_text, p.stderr_text)


def test_requests_interleaved_while_a_body_arrives_each_send_their_own_forwarded_headers(
        gateway, upstream, auth):
    # the plugin refills one per-worker argument table per call: a request
    # waiting for its body must not see (or send) another's values
    g = fa_gateway(gateway, upstream,
                   ("/withbody/", {"address": auth.url(), "forward_body": True}),
                   ("/", {"address": auth.url()}))
    from conftest import Client
    with Client(g.port, timeout=10) as a:
        a.send(b"POST /withbody/a?q=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 10\r\n"
               b"X-Who: a\r\n\r\n12345")
        time.sleep(0.2)  # not a readiness wait: A must be parked mid-body (nothing to poll)
        r = request(g.port, "GET", "/b/x", host="b.example", headers=[("X-Who", "b")])
        assert r.status == 200
        hb = auth.last()["headers"]
        assert values(hb, "X-Forwarded-Uri") == ["/b/x"]
        assert values(hb, "X-Who") == ["b"]
        a.send(b"67890")
        ra = a.read_response()
        assert ra.status == 200, ra.body
    last = auth.last()
    assert last["body"] == b"1234567890"
    h = last["headers"]
    assert values(h, "X-Forwarded-Uri") == ["/withbody/a?q=1"]
    assert values(h, "X-Forwarded-Host") == ["a.example"]
    assert values(h, "X-Who") == ["a"]
    assert values(h, "X-Forwarded-Method") == ["POST"]
