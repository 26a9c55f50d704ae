"""gRPC end to end: grpcio clients speak HTTP/2 (h2c, and h2 over TLS) to the
gateway, which proxies to a grpcio server behind an upstream with protocol
= "h2": unary, server/client streaming, bidi, status errors (Trailers-Only
and after messages), and the gateway's own answers the gRPC way. This is
the client half of PRODUCT.md "HTTP/2 and gRPC"; test_grpc.py covers the
upstream half with an HTTP/1.1 client."""

import grpc
import pytest

from conftest import proxy_config
from test_grpc import grpc_server  # noqa: F401 - the fixture

IDENT = lambda b: b  # noqa: E731 - raw bytes both ways


def stubs(channel):
    return {
        "Unary": channel.unary_unary("/test.Echo/Unary", IDENT, IDENT),
        "ServerStream": channel.unary_stream("/test.Echo/ServerStream", IDENT, IDENT),
        "ClientStream": channel.stream_unary("/test.Echo/ClientStream", IDENT, IDENT),
        "Bidi": channel.stream_stream("/test.Echo/Bidi", IDENT, IDENT),
        "Fail": channel.unary_unary("/test.Echo/Fail", IDENT, IDENT),
        "FailLate": channel.unary_stream("/test.Echo/FailLate", IDENT, IDENT),
        "Missing": channel.unary_unary("/nowhere.Svc/Missing", IDENT, IDENT),
    }


def test_grpcio_client_through_the_gateway(gateway, grpc_server):  # noqa: F811
    g = gateway(proxy_config([grpc_server], protocol="h2"))
    with grpc.insecure_channel("127.0.0.1:%d" % g.port) as ch:
        s = stubs(ch)
        assert s["Unary"](b"hi", timeout=10) == b"echo:hi"
        assert list(s["ServerStream"](b"x", timeout=10)) == [b"0:x", b"1:x", b"2:x"]
        assert s["ClientStream"](iter([b"a", b"b", b"c"]), timeout=10) == b"a+b+c"
        assert list(s["Bidi"](iter([b"one", b"two"]), timeout=10)) == [b"ONE", b"TWO"]
        # many calls at once on the one connection
        futs = [s["Unary"].future(b"%d" % i, timeout=10) for i in range(50)]
        assert [f.result() for f in futs] == [b"echo:%d" % i for i in range(50)]
        with pytest.raises(grpc.RpcError) as e:
            s["Fail"](b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert e.value.details() == "not for you"
        it = s["FailLate"](b"x", timeout=10)
        assert next(it) == b"partial"
        with pytest.raises(grpc.RpcError) as e:
            next(it)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.details() == "out of quota"


def test_gateway_answers_reach_grpcio_clients(gateway, grpc_server):  # noqa: F811
    routes = [{"name": "echo", "match": {"prefix": "/test.Echo/"}, "upstream": "app"}]
    g = gateway(proxy_config([grpc_server], protocol="h2", routes=routes))
    with grpc.insecure_channel("127.0.0.1:%d" % g.port) as ch:
        s = stubs(ch)
        with pytest.raises(grpc.RpcError) as e:
            s["Missing"](b"x", timeout=10)  # no route: 404, the gRPC way
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert s["Unary"](b"still", timeout=10) == b"echo:still"


def test_grpcio_over_tls_alpn_h2(gateway, grpc_server, tmp_path):  # noqa: F811
    from tlshelp import CA
    ca = CA(tmp_path / "pki")
    ca.issue("server")
    cfg = proxy_config([grpc_server], protocol="h2").replace(
        'addr = "127.0.0.1:$PORT"',
        'addr = "127.0.0.1:$PORT", tls = { cert = "pki/server.pem", key = "pki/server.key" }')
    assert "tls" in cfg, cfg
    g = gateway(cfg)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
    with grpc.secure_channel("localhost:%d" % g.port, creds) as ch:
        s = stubs(ch)
        assert s["Unary"](b"tls", timeout=10) == b"echo:tls"
        assert list(s["Bidi"](iter([b"a", b"b"]), timeout=10)) == [b"A", b"B"]


def test_trailers_both_ways_h2_client_to_h2_upstream(gateway):
    """Request trailers from an HTTP/2 client reach an h2 upstream; the
    upstream's response trailers reach the client as a trailing HEADERS
    frame."""
    from conftest import free_port
    from h2help import H2Conn
    from h2upstream import H2Upstream
    import json
    up = H2Upstream(free_port())
    try:
        g = gateway(proxy_config([up.addr], protocol="h2"))
        c = H2Conn(g.port)
        sid = c.request("POST", "/echo", headers=[("te", "trailers")], body=b"abc", end=False)
        c.h2.send_headers(sid, [("x-req-trailer", "yes")], end_stream=True)
        c.flush()
        s = c.response(sid)
        assert s.status == 200
        doc = json.loads(bytes(s.data))
        assert ["x-req-trailer", "yes"] in doc["trailers"], doc
        s = c.get("/trailers", headers=[("te", "trailers")])
        assert bytes(s.data) == b"hello"
        assert ("x-checksum", "abc") in s.trailers and ("grpc-status", "0") in s.trailers
        assert s.frames[-2:] == ["TrailersReceived", "StreamEnded"]
    finally:
        up.stop()
