"""gRPC calls get the gateway's and plugins' own answers the gRPC way
(PRODUCT.md "Errors users see"): HTTP 200 with no body (Content-Length: 0
over HTTP/1.1), grpc-status mapped from the HTTP error and grpc-message,
the plugin's other headers kept; the upstream's own answers pass untouched;
the access log and metrics keep the status the gateway decided. Over HTTP/2
(h2c) the answer is one HEADERS frame that ends the stream (gRPC's
Trailers-Only form), and a grpcio client reads its code and message."""
import json
import struct
import urllib.parse

import pytest

from authserver import AuthServer
from conftest import Client, assert_json_error, config, free_port, request, wait_for
from luahelp import PLUGINS, handler, plugin

# one length-prefixed gRPC message (uncompressed, 3 bytes)
FRAME = struct.pack(">BI", 0, 3) + b"abc"


def grpc_call(port, path, ctype="application/grpc", headers=()):
    with Client(port) as c:
        c.request("POST", path, headers=[("Content-Type", ctype), ("TE", "trailers")]
                  + list(headers), body=FRAME)
        return c.read_response(method="POST")


def assert_grpc(r, code, message=None):
    """The Trailers-Only answer: 200, no body, grpc-status/-message."""
    assert r.status == 200, (r, r.body[:300])
    assert r.header("grpc-status") == str(code), r.headers
    assert r.header("content-length") == "0", r.headers
    assert r.body == b""
    assert r.header("content-type").startswith("application/grpc"), r.headers
    assert len(r.headers_all("content-type")) == 1, r.headers
    assert r.has("date"), r.headers
    msg = r.header("grpc-message")
    assert msg, r.headers
    # percent-encoded: only printable ASCII on the wire
    assert all(0x20 <= ord(ch) <= 0x7e for ch in msg), msg
    if message is not None:
        assert urllib.parse.unquote(msg) == message, msg
    return urllib.parse.unquote(msg)


@pytest.fixture
def auth():
    a = AuthServer().start()
    yield a
    a.stop()


@pytest.fixture
def gw(gateway, upstream, auth, tmp_path):
    dead = free_port()  # nothing listens there: connects are refused
    routes = [
        {"match": {"prefix": "/jwt/"}, "upstream": "app",
         "plugins": [plugin("jwt", secret="k")]},
        {"match": {"prefix": "/jwtresp/"}, "upstream": "app",
         "plugins": [plugin("jwt", secret="k"),
                     plugin("headers", response={"set": {"X-Gw": "moongate"}})]},
        {"match": {"prefix": "/fa/"}, "upstream": "app",
         "plugins": [plugin("forward_auth",
                            address=auth.url("/deny?status=403&body=go+away"
                                             "&h=X-Why:policy"))]},
        {"match": {"prefix": "/rl/"}, "upstream": "app",
         "plugins": [plugin("rate_limit", rate=1, burst=1)]},
        {"match": {"prefix": "/refused/"}, "upstream": "dead"},
        {"match": {"prefix": "/slow/"}, "upstream": "slow"},
        {"match": {"prefix": "/status/"}, "upstream": "app"},
        {"match": {"prefix": "/plugerr/"}, "upstream": "app",
         "plugins": [plugin("t_error")]},
        {"match": {"path": "/h401"},
         "handler": handler('return 401, "who are you? 100% unknown caf\\u{e9}\\n", '
                            '{ ["WWW-Authenticate"] = "Basic realm=\\"x\\"" }')},
        {"match": {"path": "/h200"},
         "handler": handler('return 200, "fine", { ["grpc-status"] = "0" }')},
        {"match": {"path": "/hown"},
         "handler": handler('return 403, "", { ["grpc-status"] = "9", '
                            '["grpc-message"] = "mine" }')},
        {"match": {"path": "/hjson"},
         "handler": handler('return 500, \'{"code": 7, "error": "db \\\\"down\\\\" \\\\u00e9"}\', '
                            '{ ["Content-Type"] = "application/json" }')},
    ]
    g = gateway(config(
        workers=1, plugin_path=[str(PLUGINS)],
        access_log={"path": "$DIR/access.log", "format": "json"},
        admin={"addr": "127.0.0.1:$PORT1"},
        upstreams={
            "app": {"servers": [upstream.addr], "keepalive": 8},
            "dead": {"servers": ["127.0.0.1:%d" % dead], "connect_timeout": 1, "retries": 0},
            "slow": {"servers": [upstream.addr], "read_timeout": 0.3},
        },
        routes=routes))
    g.log_path = tmp_path / "access.log"
    return g


def test_no_route_is_unimplemented(gw):
    assert_grpc(grpc_call(gw.port, "/pkg.Svc/Nothing"), 12, "no route")


def test_jwt_missing_token_is_unauthenticated_with_its_challenge(gw, upstream):
    r = grpc_call(gw.port, "/jwt/pkg.Svc/M")
    assert_grpc(r, 16, "missing token")
    assert r.header("www-authenticate") == 'Bearer error="invalid_token"', r.headers
    assert upstream.stats()["requests"] == 0


def test_held_reply_with_response_plugins_goes_the_grpc_way_with_their_edits(gw):
    # a response plugin on the route: the jwt answer is held for it, and
    # still leaves as one gRPC answer carrying the plugin's header
    r = grpc_call(gw.port, "/jwtresp/pkg.Svc/M")
    assert_grpc(r, 16, "missing token")
    assert r.header("x-gw") == "moongate", r.headers
    assert r.header("www-authenticate") == 'Bearer error="invalid_token"', r.headers


def test_forward_auth_denial_is_permission_denied(gw, upstream):
    r = grpc_call(gw.port, "/fa/pkg.Svc/M")
    assert_grpc(r, 7, "go away")
    assert r.header("x-why") == "policy", r.headers
    assert upstream.stats()["requests"] == 0


def test_rate_limit_is_resource_exhausted_with_retry_after(gw):
    assert grpc_call(gw.port, "/rl/pkg.Svc/M").status == 200  # the upstream's echo
    r = grpc_call(gw.port, "/rl/pkg.Svc/M")
    assert_grpc(r, 8)
    assert r.has("retry-after") and r.has("ratelimit-limit"), r.headers


def test_upstream_refused_is_unavailable(gw):
    assert_grpc(grpc_call(gw.port, "/refused/pkg.Svc/M"), 14, "bad gateway")


def test_upstream_timeout_is_deadline_exceeded(gw):
    assert_grpc(grpc_call(gw.port, "/slow/3000"), 4, "upstream timed out")


def test_lua_plugin_error_is_internal_and_leaks_nothing(gw):
    msg = assert_grpc(grpc_call(gw.port, "/plugerr/pkg.Svc/M"), 13)
    assert "t_error" not in msg and "tb-marker" not in msg, msg
    wait_for(lambda: "tb-marker-access" in gw.stderr_text(), what="the error logged")


def test_handler_401_keeps_its_headers_and_encodes_its_body_as_the_message(gw):
    r = grpc_call(gw.port, "/h401")
    assert_grpc(r, 16, "who are you? 100% unknown caf\u00e9")
    assert "%25" in r.header("grpc-message") and "%C3%A9" in r.header("grpc-message")
    assert r.header("www-authenticate") == 'Basic realm="x"', r.headers


def test_json_error_text_becomes_the_message(gw):
    assert_grpc(grpc_call(gw.port, "/hjson"), 13, 'db "down" \u00e9')


def test_a_grpc_status_the_handler_set_is_kept(gw):
    r = grpc_call(gw.port, "/hown")
    assert_grpc(r, 9, "mine")
    assert len(r.headers_all("grpc-status")) == 1 and len(r.headers_all("grpc-message")) == 1


def test_success_answers_are_left_as_given(gw):
    r = grpc_call(gw.port, "/h200")
    assert r.status == 200 and r.body == b"fine" and r.header("grpc-status") == "0"
    assert r.header("content-type").startswith("text/plain"), r.headers


def test_grpc_plus_proto_and_grpc_web_count(gw):
    assert_grpc(grpc_call(gw.port, "/none", ctype="application/grpc+proto"), 12)
    r = grpc_call(gw.port, "/none", ctype="application/grpc-web+proto")
    assert_grpc(r, 12)
    assert r.header("content-type") == "application/grpc-web+proto"


def test_non_grpc_requests_are_unchanged(gw):
    with Client(gw.port) as c:
        c.request("POST", "/pkg.Svc/Nothing", headers=[("Content-Type", "application/json")],
                  body=b"{}")
        r = c.read_response(method="POST")
    assert_json_error(r, 404)
    assert not r.has("grpc-status")
    r = request(gw.port, "GET", "/h401")
    assert r.status == 401 and r.body.startswith(b"who are you?"), r
    assert not r.has("grpc-status")


def test_the_upstreams_own_error_passes_untouched(gw):
    r = grpc_call(gw.port, "/status/500")
    assert r.status == 500, r
    assert not r.has("grpc-status"), r.headers
    assert r.header("x-upstream-port"), r.headers


def test_access_log_and_metrics_keep_the_decided_status(gw):
    assert_grpc(grpc_call(gw.port, "/jwt/pkg.Svc/Log"), 16)
    assert_grpc(grpc_call(gw.port, "/h401"), 16)

    def lines():
        if not gw.log_path.exists():
            return []
        return [json.loads(x) for x in gw.log_path.read_text().splitlines() if x.strip()]
    wait_for(lambda: len(lines()) >= 2, what="two access-log lines")
    got = {(e["path"], e["status"]) for e in lines()}
    assert ("/jwt/pkg.Svc/Log", 401) in got and ("/h401", 401) in got, got
    m = request(gw.ports[1], "GET", "/metrics").text()
    assert any('status="401"' in ln for ln in m.splitlines()
               if ln.startswith("moongate_requests_total")), m

# --- over HTTP/2 (h2c with prior knowledge on the plain listener) -----------

def h2_grpc_call(port, path, headers=()):
    """One gRPC-shaped POST over h2c; returns (events of the response, the
    frames' flags seen): the response must be one HEADERS frame with
    END_STREAM."""
    import socket
    import h2.config
    import h2.connection
    import h2.events
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path),
                            (":authority", "localhost"), ("content-type", "application/grpc"),
                            ("te", "trailers")] + list(headers))
    conn.send_data(sid, FRAME, end_stream=True)
    s.sendall(conn.data_to_send())
    got = []
    try:
        while not any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in got):
            data = s.recv(65536)
            if not data:
                break
            got += conn.receive_data(data)
            s.sendall(conn.data_to_send())
    finally:
        s.close()
    return sid, got


@pytest.mark.parametrize("path,code,message", [
    ("/pkg.Svc/Nothing", 12, "no route"),
    ("/jwt/pkg.Svc/M", 16, "missing token"),
    ("/jwtresp/pkg.Svc/M", 16, "missing token"),
    ("/h401", 16, None),
])
def test_h2_answer_is_one_headers_frame_that_ends_the_stream(gw, path, code, message):
    import h2.events
    sid, got = h2_grpc_call(gw.port, path)
    mine = [e for e in got if getattr(e, "stream_id", None) == sid]
    resp = [e for e in mine if isinstance(e, h2.events.ResponseReceived)]
    assert len(resp) == 1, mine
    # END_STREAM on that HEADERS frame itself (Trailers-Only), no DATA, no trailers
    assert resp[0].stream_ended is not None, mine
    assert not [e for e in mine if isinstance(e, (h2.events.DataReceived,
                                                   h2.events.TrailersReceived))], mine
    h = {k.decode(): v.decode() for k, v in resp[0].headers}
    assert h[":status"] == "200" and h["grpc-status"] == str(code), h
    assert h["content-type"] == "application/grpc", h
    if message is not None:
        assert urllib.parse.unquote(h["grpc-message"]) == message, h


def test_grpcio_client_gets_the_status_and_message(gw):
    grpc = pytest.importorskip("grpc")
    with grpc.insecure_channel("127.0.0.1:%d" % gw.port) as ch:
        call = ch.unary_unary("/pkg.Svc/Nothing", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as ei:
            call(b"abc", timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert ei.value.details() == "no route"
        call = ch.unary_unary("/jwt/pkg.Svc/M", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as ei:
            call(b"abc", timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ei.value.details() == "missing token"
        call = ch.unary_unary("/h401", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as ei:
            call(b"abc", timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ei.value.details() == "who are you? 100% unknown caf\u00e9"
