"""Upstreams reached over HTTP/2 (protocol = "h2"): h2c with prior knowledge,
ALPN h2 over TLS; one connection per server carrying many streams, a second
only at the server's stream limit; trailers; failures as 502/504."""

import concurrent.futures
import json
import ssl

import pytest

from conftest import (Client, free_port, proxy_config, request, sha256, assert_json_error,
                      wait_for)
from h2upstream import H2Upstream, pattern


@pytest.fixture
def h2up():
    started = []

    def make(port=None, **kw):
        u = H2Upstream(port or free_port(), **kw)
        started.append(u)
        return u

    yield make
    for u in started:
        u.stop()


def h2_config(servers, **kw):
    kw.setdefault("protocol", "h2")
    return proxy_config(servers, **kw)


def test_get_and_post_reach_an_h2c_upstream(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    r = request(g.port, "GET", "/echo/a?b=1", headers=[("X-Thing", "one")])
    assert r.status == 200, r
    assert r.header("x-upstream") == "h2"
    doc = r.json()
    assert doc["method"] == "GET" and doc["path"] == "/echo/a?b=1"
    assert doc["scheme"] == "http" and doc["authority"] == "localhost"
    hdrs = dict((k, v) for k, v in doc["headers"] if not k.startswith(":"))
    assert hdrs["x-thing"] == "one"
    assert hdrs["x-forwarded-for"] == "127.0.0.1"
    assert "connection" not in hdrs and "host" not in hdrs
    body = pattern(300000)
    r = request(g.port, "POST", "/echo/post", body=body)
    assert r.status == 200, r
    doc = r.json()
    assert doc["method"] == "POST"
    assert doc["body_len"] == len(body) and doc["body_sha256"] == sha256(body)
    # a chunked request body goes up as DATA frames too
    with Client(g.port) as c:
        c.send(Client.build("PUT", "/echo/chunked", body=b"abc" * 1000, chunked=True))
        r = c.read_response()
        assert r.status == 200, r
        assert r.json()["body_len"] == 3000
        # the client connection stays usable
        c.request("GET", "/echo/again")
        assert c.read_response().status == 200
    assert up.connections == 1


def test_response_trailers_reach_an_http1_client(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    with Client(g.port) as c:
        c.request("GET", "/trailers", headers=[("TE", "trailers")])
        r = c.read_response()
    assert r.status == 200, r
    assert r.chunked
    assert r.body == b"hello"
    assert "x-checksum: abc" in [t.lower() for t in r.trailers]
    assert "grpc-status: 0" in [t.lower() for t in r.trailers]
    # the client's TE: trailers went up as te: trailers (gRPC servers want it)
    assert ["te", "trailers"] in up.requests[-1]["headers"]


def test_big_response_streams_through(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    n = 3 * 1024 * 1024
    r = request(g.port, "GET", "/big?n=%d" % n, timeout=30)
    assert r.status == 200
    assert len(r.body) == n and r.body == pattern(n)


def parallel(port, paths, timeout=20):
    with concurrent.futures.ThreadPoolExecutor(len(paths)) as ex:
        return list(ex.map(lambda p: request(port, "GET", p, timeout=timeout), paths))


def test_parallel_requests_share_one_connection(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    n = 16
    rs = parallel(g.port, ["/slow?ms=400&i=%d" % i for i in range(n)])
    assert [r.status for r in rs] == [200] * n
    assert sorted(r.json()["path"] for r in rs) == sorted("/slow?ms=400&i=%d" % i
                                                          for i in range(n))
    # every request on one upstream connection, several at once on it
    assert up.connections == 1
    assert up.peak >= 4, up.peak
    assert {r.json()["conn"] for r in rs} == {1}


def test_stream_limit_opens_another_connection(gateway, h2up):
    up = h2up(max_streams=2)
    g = gateway(h2_config([up.addr]))
    n = 6
    rs = parallel(g.port, ["/slow?ms=500&i=%d" % i for i in range(n)])
    assert [r.status for r in rs] == [200] * n
    assert up.peak <= 2
    assert up.connections >= 2, up.connections
    # connections are reused once they have room again: no more than needed
    assert up.connections <= 3, up.connections
    assert up.resets == 0


def test_reset_stream_before_the_response_is_502(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    r = request(g.port, "GET", "/reset")
    assert_json_error(r, 502)
    # the connection itself goes on serving
    assert request(g.port, "GET", "/echo/x").status == 200
    assert up.connections == 1


def test_upstream_dies_mid_response(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    with Client(g.port) as c:
        c.request("GET", "/die")
        head = b""
        while b"\r\n\r\n" not in head:
            data = c.sock.recv(65536)
            assert data, "closed before the head"
            head += data
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        # the body stops short and the client connection is cut
        got = len(head.split(b"\r\n\r\n", 1)[1])
        while True:
            data = c.sock.recv(65536)
            if not data:
                break
            got += len(data)
        assert got < 100000
    # a new connection serves the next request
    r = request(g.port, "GET", "/echo/after")
    assert r.status == 200
    assert up.connections == 2


def test_goaway_lets_the_stream_finish_and_a_new_connection_follows(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    r = request(g.port, "GET", "/goaway")
    assert r.status == 200 and r.body == b"bye"
    r = request(g.port, "GET", "/echo/next")
    assert r.status == 200 and r.json()["conn"] == 2
    assert up.connections == 2


def test_upstream_timeout_is_504(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr], read_timeout=0.3))
    r = request(g.port, "GET", "/slow?ms=2000")
    assert_json_error(r, 504)
    # the stream was reset; the connection serves on
    r = request(g.port, "GET", "/echo/ok")
    assert r.status == 200 and r.json()["conn"] == 1
    wait_for(lambda: up.resets >= 1, what="the timed-out stream reset")


def test_refused_connect_retries_the_next_server_then_502(gateway, h2up):
    up = h2up()
    dead = "127.0.0.1:%d" % free_port()
    g = gateway(h2_config([dead, up.addr], retries=1))
    for i in range(4):
        r = request(g.port, "GET", "/echo/%d" % i)
        assert r.status == 200, r
    g2 = gateway(h2_config([dead]))
    assert_json_error(request(g2.port, "GET", "/echo/x"), 502)


def test_status_and_head_pass_through(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    r = request(g.port, "GET", "/status?code=404")
    assert r.status == 404 and r.body == b"status 404"
    r = request(g.port, "HEAD", "/echo/head")
    assert r.status == 200 and r.body == b""


def test_slow_client_reads_a_big_response(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    n = 8 * 1024 * 1024
    with Client(g.port, timeout=30, rcvbuf=16384) as c:
        c.request("GET", "/big?n=%d" % n)
        import time
        time.sleep(0.5)  # the writer fills; the stream's window stays closed
        # meanwhile other requests on the same upstream connection go on
        r = request(g.port, "GET", "/echo/meanwhile")
        assert r.status == 200 and r.json()["conn"] == 1
        r = c.read_response()
    assert r.status == 200 and len(r.body) == n and r.body == pattern(n)


def test_client_abort_resets_only_its_stream(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    c = Client(g.port)
    c.request("GET", "/slow?ms=1500")
    wait_for(lambda: any(q["path"] == "/slow?ms=1500" for q in up.requests),
             what="the slow request upstream")
    c.close()
    wait_for(lambda: up.resets >= 1, what="the stream reset")
    r = request(g.port, "GET", "/echo/other")
    assert r.status == 200 and r.json()["conn"] == 1


def test_stream_left_out_by_goaway_goes_again_on_a_new_connection(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    r = request(g.port, "GET", "/refuse-first")
    assert r.status == 200, r
    assert r.json()["conn"] == 2
    assert up.connections == 2


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tlsupstream import make_pki
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_ctx(pki, alpn):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.cert), str(pki.key))
    ctx.set_alpn_protocols(alpn)
    return ctx


def test_tls_upstream_with_alpn_h2(gateway, h2up, pki):
    up = h2up(ssl_ctx=server_ctx(pki, ["h2"]))
    g = gateway(h2_config([up.addr], tls=True, tls_verify=True, tls_ca=str(pki.ca),
                          tls_server_name="localhost"))
    rs = parallel(g.port, ["/slow?ms=200&i=%d" % i for i in range(6)])
    assert [r.status for r in rs] == [200] * 6
    assert {r.json()["scheme"] for r in rs} == {"https"}
    assert up.connections == 1
    with Client(g.port) as c:
        c.request("GET", "/trailers", headers=[("TE", "trailers")])
        r = c.read_response()
    assert r.body == b"hello" and "x-checksum: abc" in [t.lower() for t in r.trailers]


def test_tls_upstream_without_h2_is_502(gateway, h2up, pki):
    up = h2up(ssl_ctx=server_ctx(pki, ["http/1.1"]))
    g = gateway(h2_config([up.addr], tls=True, tls_verify=True, tls_ca=str(pki.ca),
                          tls_server_name="localhost"))
    assert_json_error(request(g.port, "GET", "/echo/x"), 502)
    assert "did not select h2" in g.stderr_text()


def test_protocol_option_is_checked(run_moongate, h2up):
    def check(extra, health=None):
        up = {"servers": ["127.0.0.1:9"]}
        up.update(extra)
        if health is not None:
            up["health"] = health
        from conftest import config
        return run_moongate("-t", "-c", "$CFG", config=config(
            upstreams={"app": up},
            routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
    p = check({"protocol": "h3"})
    assert p.returncode != 0
    assert 'upstreams.app.protocol: expected "http1" or "h2"' in p.stderr_text
    assert check({"protocol": "h2"}).returncode == 0
    assert check({"protocol": "http1"}).returncode == 0
    # an h2 upstream's health checks only connect
    assert check({"protocol": "h2"}, health=True).returncode == 0
    assert check({"protocol": "h2"}, health={"type": "tcp"}).returncode == 0
    p = check({"protocol": "h2"}, health={"path": "/healthz"})
    assert p.returncode != 0 and "type" in p.stderr_text


def test_chunked_request_trailers_go_up_as_trailing_headers(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    with Client(g.port) as c:
        c.send(b"POST /echo/tr HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
               b"\r\n5\r\nhello\r\n0\r\nX-Sum: 5\r\nGrpc-Thing: yes\r\n"
               b"Content-Length: 99\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        doc = r.json()
        assert doc["body_len"] == 5
        # names lower-cased; framing fields left out
        assert doc["trailers"] == [["x-sum", "5"], ["grpc-thing", "yes"]]
        # a chunked request without trailers ends with END_STREAM on DATA
        c.send(Client.build("POST", "/echo/none", body=b"abc", chunked=True))
        r = c.read_response()
        assert r.status == 200 and r.json()["trailers"] == [] and r.json()["body_len"] == 3


def test_no_settings_within_connect_timeout_is_504(gateway):
    import socket
    import threading
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    accepted = []

    def accept_silently():
        while True:
            try:
                s, _ = lsock.accept()
            except OSError:
                return
            accepted.append(s)  # never answers: no SETTINGS

    t = threading.Thread(target=accept_silently, daemon=True)
    t.start()
    try:
        addr = "127.0.0.1:%d" % lsock.getsockname()[1]
        g = gateway(h2_config([addr], connect_timeout=0.3, retries=0))
        import time
        t0 = time.monotonic()
        assert_json_error(request(g.port, "GET", "/echo/x"), 504)
        assert time.monotonic() - t0 < 3
        assert len(accepted) == 1
    finally:
        lsock.close()
        for s in accepted:
            s.close()


def test_response_plugins_keep_the_trailers(gateway, h2up):
    up = h2up()
    from conftest import Raw
    routes = [{"name": "all", "match": {"prefix": "/"}, "upstream": "app",
               "plugins": Raw('{ { "headers", response = { set = { ["X-Gw"] = "held" } } } }')}]
    g = gateway(h2_config([up.addr], routes=routes))
    with Client(g.port) as c:
        c.request("GET", "/trailers", headers=[("TE", "trailers")])
        r = c.read_response()
        assert r.status == 200 and r.header("x-gw") == "held"
        assert r.body == b"hello"
        assert "x-checksum: abc" in [t.lower() for t in r.trailers]
        c.request("POST", "/echo/p", body=b"z" * 70000)
        r = c.read_response()
        assert r.status == 200 and r.header("x-gw") == "held"
        assert r.json()["body_len"] == 70000


def test_reload_moves_to_a_new_connection_and_closes_the_old(gateway, h2up):
    import signal
    up = h2up()
    g = gateway(h2_config([up.addr]))
    assert request(g.port, "GET", "/echo/1").json()["conn"] == 1
    # a request in flight keeps the old generation (and its connection)
    slow = concurrent.futures.ThreadPoolExecutor(1).submit(
        request, g.port, "GET", "/slow?ms=700")
    wait_for(lambda: any(q["path"] == "/slow?ms=700" for q in up.requests),
             what="the slow request upstream")
    g.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: request(g.port, "GET", "/echo/2").json()["conn"] == 2,
             what="a request on the new generation's connection")
    r = slow.result(10)
    assert r.status == 200 and r.json()["conn"] == 1
    # the old generation ends with its last request: its connection closes
    wait_for(lambda: up.closed >= 1, what="the old connection closed")
    assert request(g.port, "GET", "/echo/3").json()["conn"] == 2


def test_least_conn_counts_streams(gateway, h2up):
    a, b = h2up(), h2up()
    g = gateway(h2_config([a.addr, b.addr], balance="least_conn"))
    # both servers get their connection first
    for i in range(4):
        assert request(g.port, "GET", "/echo/warm%d" % i).status == 200
    assert a.connections == 1 and b.connections == 1
    ex = concurrent.futures.ThreadPoolExecutor(1)
    slow = ex.submit(request, g.port, "GET", "/slow?ms=1500")
    wait_for(lambda: any(q["path"].startswith("/slow") for u in (a, b) for q in u.requests),
             what="the slow request upstream")
    busy = a if any(q["path"].startswith("/slow") for q in a.requests) else b
    free = b if busy is a else a
    before = len(free.requests)
    # one stream in flight on busy's connection, none on free's: every quick
    # request goes to free (counting connections, they would alternate)
    for i in range(4):
        assert request(g.port, "GET", "/echo/q%d" % i).status == 200
    assert len(free.requests) == before + 4
    assert slow.result(10).status == 200


def test_connection_dropped_between_requests(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]))
    for i in range(10):
        r = request(g.port, "GET", "/close-after?i=%d" % i)
        assert r.status == 200, r
        # the next one finds the connection gone (or about to go): it gets a
        # new one, sent again at most once, never an error
        r = request(g.port, "GET", "/echo/next%d" % i)
        assert r.status == 200, r
    assert up.connections >= 11


def test_streams_of_an_h2_client_share_one_upstream_connection(gateway, h2up):
    from h2help import H2Conn
    up = h2up()
    g = gateway(h2_config([up.addr]))
    c = H2Conn(g.port)
    try:
        sids = [c.request("GET", "/slow?ms=300&i=%d" % i) for i in range(10)]
        for s in sids:
            st = c.response(s)
            assert st.status == 200 and json.loads(bytes(st.data))["conn"] == 1
        assert up.connections == 1 and up.peak >= 4
    finally:
        c.close()


def test_big_request_body_goes_up_under_flow_control(gateway, h2up):
    """8 MiB: far past the upstream's 1 MiB window and the gateway's 256 KiB
    request queue, so both flow control and the client's backpressure run."""
    up = h2up()
    g = gateway(h2_config([up.addr], limits={"max_body_bytes": 16 * 1024 * 1024}))
    body = pattern(8 * 1024 * 1024)
    r = request(g.port, "POST", "/echo/big", body=body, timeout=60)
    assert r.status == 200, r
    doc = r.json()
    assert doc["body_len"] == len(body) and doc["body_sha256"] == sha256(body)


def test_upstream_restart_in_flight_streams_fail_then_service_resumes(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr], retries=0))
    assert request(g.port, "GET", "/echo/first").status == 200
    ex = concurrent.futures.ThreadPoolExecutor(4)
    futs = [ex.submit(request, g.port, "GET", "/slow?ms=3000&i=%d" % i) for i in range(4)]
    wait_for(lambda: sum(q["path"].startswith("/slow") for q in up.requests) == 4,
             what="4 streams upstream")
    up.stop()  # the server goes away under 4 streams
    for f in futs:
        assert_json_error(f.result(10), 502)
    # nothing listens: a refused connect
    assert_json_error(request(g.port, "GET", "/echo/down"), 502)
    # back on the same port: a new connection serves again
    up2 = h2up(port=up.port)
    r = request(g.port, "GET", "/echo/back")
    assert r.status == 200 and up2.connections == 1


def test_one_connection_per_worker(gateway, h2up):
    up = h2up()
    g = gateway(h2_config([up.addr]).replace("return {", "return { workers = 2,", 1))
    rs = parallel(g.port, ["/slow?ms=300&i=%d" % i for i in range(24)])
    assert [r.status for r in rs] == [200] * 24
    # each worker has its own connection to the server, and only one
    conns = {r.json()["conn"] for r in rs}
    assert 1 <= len(conns) <= 2 and up.connections == len(conns), (conns, up.connections)
