"""gRPC through the gateway to a grpcio server behind a route whose upstream
has protocol = "h2" (h2c).

The grpcio server uses generic handlers with raw-bytes messages (no
protobuf). The calls here are made by a client speaking HTTP/1.1 to the
gateway with gRPC's framing (length-prefixed messages, TE: trailers): that
exercises the upstream half (HTTP/2 to a real gRPC server, trailers back).
grpcio clients (HTTP/2 to the gateway) are at the end: a bidi call answered
message by message, and a jwt plugin refusing calls."""

import struct
from concurrent import futures

import grpc
import pytest

from conftest import Client, free_port, proxy_config


def frame(msg):
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def unframe(data):
    out = []
    while data:
        assert len(data) >= 5, data
        flag, n = data[0], struct.unpack(">I", data[1:5])[0]
        assert flag == 0
        out.append(data[5:5 + n])
        data = data[5 + n:]
    return out


def _unary(req, ctx):
    return b"echo:" + req


def _server_stream(req, ctx):
    for i in range(3):
        yield b"%d:" % i + req


def _client_stream(it, ctx):
    return b"+".join(it)


def _bidi(it, ctx):
    for m in it:
        yield m.upper()


def _fail(req, ctx):
    ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")


def _fail_late(req, ctx):
    yield b"partial"
    ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of quota")


@pytest.fixture
def grpc_server():
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "FailLate": grpc.unary_stream_rpc_method_handler(_fail_late),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo",
                                                                          handlers),))
    port = server.add_insecure_port("127.0.0.1:%d" % free_port())
    server.start()
    yield "127.0.0.1:%d" % port
    server.stop(0)


def call_h1(port, method, msgs):
    """One gRPC call over HTTP/1.1 (chunked request body, TE: trailers)."""
    body = b"".join(frame(m) for m in msgs)
    with Client(port) as c:
        c.send(Client.build("POST", "/test.Echo/" + method, body=body, chunked=True,
                            headers=[("Content-Type", "application/grpc"),
                                     ("TE", "trailers")]))
        r = c.read_response()
    trailers = dict(t.split(": ", 1) for t in r.trailers)
    trailers = {k.lower(): v for k, v in trailers.items()}
    return r, trailers


def test_grpc_calls_over_http1_reach_a_grpcio_server(gateway, grpc_server):
    g = gateway(proxy_config([grpc_server], protocol="h2"))
    r, t = call_h1(g.port, "Unary", [b"hi"])
    assert r.status == 200, r
    assert r.header("content-type") == "application/grpc"
    assert unframe(r.body) == [b"echo:hi"]
    assert t.get("grpc-status") == "0", (r.headers, r.trailers)

    r, t = call_h1(g.port, "ServerStream", [b"x"])
    assert unframe(r.body) == [b"0:x", b"1:x", b"2:x"] and t["grpc-status"] == "0"

    r, t = call_h1(g.port, "ClientStream", [b"a", b"b", b"c"])
    assert unframe(r.body) == [b"a+b+c"] and t["grpc-status"] == "0"

    r, t = call_h1(g.port, "Bidi", [b"one", b"two"])
    assert unframe(r.body) == [b"ONE", b"TWO"] and t["grpc-status"] == "0"


def test_grpc_status_errors_reach_the_client(gateway, grpc_server):
    g = gateway(proxy_config([grpc_server], protocol="h2"))
    # Trailers-Only: the status is in the one HEADERS frame, a head here
    r, t = call_h1(g.port, "Fail", [b"x"])
    assert r.status == 200
    status = r.header("grpc-status") or t.get("grpc-status")
    message = r.header("grpc-message") or t.get("grpc-message")
    assert status == "7", (r.headers, r.trailers)
    assert message == "not for you"
    # after messages: in the trailers
    r, t = call_h1(g.port, "FailLate", [b"x"])
    assert unframe(r.body) == [b"partial"]
    assert t["grpc-status"] == "8" and t["grpc-message"] == "out of quota"


# --------------------------------------------------------------------------
# grpcio clients (HTTP/2 to the gateway); test_h2_grpc.py has the calls of
# every kind and the status errors

def test_grpcio_bidi_streams_message_by_message(gateway, grpc_server):
    """Each answer comes back before the next request message is sent:
    nothing waits for the end of either stream."""
    import queue
    g = gateway(proxy_config([grpc_server], protocol="h2"))
    q = queue.Queue()

    def requests():
        while True:
            m = q.get()
            if m is None:
                return
            yield m

    with grpc.insecure_channel("127.0.0.1:%d" % g.port) as ch:
        call = ch.stream_stream("/test.Echo/Bidi")(requests(), timeout=10)
        for word in (b"alpha", b"beta", b"gamma"):
            q.put(word)
            assert next(call) == word.upper()
        q.put(None)
        assert list(call) == []
        assert call.code() == grpc.StatusCode.OK


def _hs256(secret, claims):
    import base64
    import hashlib
    import hmac
    import json

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def test_grpcio_call_refused_by_jwt(gateway, grpc_server):
    import time
    from conftest import Raw
    routes = [{"name": "grpc", "match": {"prefix": "/"}, "upstream": "app",
               "plugins": Raw('{ { "jwt", secret = "s3cret" } }')}]
    g = gateway(proxy_config([grpc_server], protocol="h2", routes=routes))
    with grpc.insecure_channel("127.0.0.1:%d" % g.port) as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        with pytest.raises(grpc.RpcError) as ei:
            unary(b"hi", timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = _hs256("wrong", {"sub": "u1", "exp": int(time.time()) + 600})
        with pytest.raises(grpc.RpcError) as ei:
            unary(b"hi", timeout=10, metadata=[("authorization", "Bearer " + bad)])
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # streaming calls are refused the same way, before anything goes up
        with pytest.raises(grpc.RpcError) as ei:
            list(ch.unary_stream("/test.Echo/ServerStream")(b"x", timeout=10))
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = _hs256("s3cret", {"sub": "u1", "exp": int(time.time()) + 600})
        meta = [("authorization", "Bearer " + token)]
        assert unary(b"hi", timeout=10, metadata=meta) == b"echo:hi"
        assert list(ch.stream_stream("/test.Echo/Bidi")(iter([b"a"]), timeout=10,
                                                        metadata=meta)) == [b"A"]
