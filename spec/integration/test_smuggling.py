"""Request smuggling: every ambiguous framing is a 400 and a closed
connection, and nothing smuggled ever reaches the upstream as a request."""
import pytest

from conftest import Client, assert_json_error, assert_serves, proxy_config, raw_exchange

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


def post(headers, body=b"", version=b"HTTP/1.1"):
    return (b"POST /echo " + version + b"\r\nHost: x\r\n" + b"".join(h + b"\r\n" for h in headers)
            + b"\r\n" + body)


# Each one carries (or is followed by) a request to /smuggled.
CASES = {
    # Content-Length and Transfer-Encoding together, in both orders.
    "cl_te": post([b"Content-Length: 6", b"Transfer-Encoding: chunked"],
                  b"0\r\n\r\n" + SMUGGLED),
    "te_cl": post([b"Transfer-Encoding: chunked", b"Content-Length: 40"],
                  b"0\r\n\r\n" + SMUGGLED),
    "cl_te_zero": post([b"Content-Length: 0", b"Transfer-Encoding: chunked"],
                       b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    # Duplicate / conflicting / malformed Content-Length.
    "cl_duplicate_same": post([b"Content-Length: 5", b"Content-Length: 5"], b"hello" + SMUGGLED),
    "cl_conflicting": post([b"Content-Length: 5", b"Content-Length: 41"], b"hello" + SMUGGLED),
    "cl_list": post([b"Content-Length: 5, 41"], b"hello" + SMUGGLED),
    "cl_list_same": post([b"Content-Length: 5, 5"], b"hello" + SMUGGLED),
    "cl_plus": post([b"Content-Length: +5"], b"hello" + SMUGGLED),
    "cl_negative": post([b"Content-Length: -1"], b"hello" + SMUGGLED),
    "cl_hex": post([b"Content-Length: 0x5"], b"hello" + SMUGGLED),
    "cl_letters": post([b"Content-Length: five"], b"hello" + SMUGGLED),
    "cl_inner_space": post([b"Content-Length: 1 2"], b"hello" + SMUGGLED),
    "cl_overflow": post([b"Content-Length: 18446744073709551621"], b"hello" + SMUGGLED),
    "cl_space_before_colon": post([b"Content-Length : 5"], b"hello" + SMUGGLED),
    # Obfuscated Transfer-Encoding.
    "te_xchunked": post([b"Transfer-Encoding: xchunked"], b"0\r\n\r\n" + SMUGGLED),
    "te_chunkedx": post([b"Transfer-Encoding: chunkedx"], b"0\r\n\r\n" + SMUGGLED),
    "te_chunked_identity": post([b"Transfer-Encoding: chunked, identity"],
                                b"0\r\n\r\n" + SMUGGLED),
    "te_two_headers_last_identity": post([b"Transfer-Encoding: chunked",
                                          b"Transfer-Encoding: identity"],
                                         b"0\r\n\r\n" + SMUGGLED),
    "te_space_before_colon": post([b"Transfer-Encoding : chunked"], b"0\r\n\r\n" + SMUGGLED),
    "te_vertical_tab": post([b"Transfer-Encoding:\x0bchunked"], b"0\r\n\r\n" + SMUGGLED),
    # llhttp does not take "chunked<TAB>" as chunked; trimmed, it looked so
    "te_trailing_tab": post([b"Transfer-Encoding: chunked\t"], SMUGGLED),
    "te_trailing_tab_space": post([b"Transfer-Encoding: chunked\t "], b"0\r\n\r\n" + SMUGGLED),
    "te_chunked_chunked": post([b"Transfer-Encoding: chunked, chunked"], b"0\r\n\r\n" + SMUGGLED),
    "te_two_chunked_headers": post([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
                                   b"0\r\n\r\n" + SMUGGLED),
    "te_obs_fold": post([b"Transfer-Encoding: chunked", b" , identity"], b"0\r\n\r\n" + SMUGGLED),
    # a field line with an empty name (llhttp 8.1 lets it through)
    "empty_field_name": post([b"Content-Length: 0", b": x"]) + SMUGGLED,
    "empty_field_name_te": post([b": chunked", b"Content-Length: 5"], b"hello" + SMUGGLED),
    "nul_in_value": post([b"X-A: a\x00b", b"Content-Length: 5"], b"hello" + SMUGGLED),
    "bare_lf_head": (b"POST /echo HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello" + SMUGGLED),
    "te_in_http10": post([b"Transfer-Encoding: chunked"], b"0\r\n\r\n" + SMUGGLED,
                         version=b"HTTP/1.0"),
    # Bad chunk sizes and chunk framing.
    "chunk_size_letters": post([b"Transfer-Encoding: chunked"], b"zz\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_negative": post([b"Transfer-Encoding: chunked"], b"-1\r\nh\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_0x": post([b"Transfer-Encoding: chunked"], b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_overflow": post([b"Transfer-Encoding: chunked"],
                                b"fffffffffffffffff1\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_empty": post([b"Transfer-Encoding: chunked"], b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_huge": post([b"Transfer-Encoding: chunked"],
                            b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_size_bare_lf": post([b"Transfer-Encoding: chunked"], b"5\nhello\n0\n\n" + SMUGGLED),
    "chunk_ext_bad_byte": post([b"Transfer-Encoding: chunked"],
                               b"5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    "chunk_data_longer_than_size": post([b"Transfer-Encoding: chunked"],
                                        b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
}


@pytest.fixture
def gw(gateway, upstream):
    return gateway(proxy_config([upstream.addr], limits={"header_timeout": 5}))


@pytest.mark.parametrize("name", sorted(CASES))
def test_smuggling_attempt_is_400_and_never_reaches_upstream(gw, upstream, name):
    r, closed = raw_exchange(gw.port, CASES[name])
    assert_json_error(r, 400)
    assert closed, "the connection must close after a 400"
    assert_serves(gw.port)
    log = upstream.stats()["log"]
    assert ["GET", "/smuggled"] not in log, log
    if not name.startswith("chunk_"):
        # Rejected on the head alone: the upstream saw nothing of it.
        assert log == [["GET", "/echo?after=1"]], log


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_request_inside_a_body_stays_a_body(gw, upstream, chunked):
    body = b"x" + SMUGGLED
    with Client(gw.port) as c:
        c.send(Client.build("POST", "/echo", body=body, chunked=chunked) +
               Client.build("GET", "/echo?second=1"))
        r1 = c.read_response()
        r2 = c.read_response()
    assert r1.status == 200 and r1.json()["body"].encode() == body
    assert r2.status == 200 and r2.json()["path"] == "/echo?second=1"
    assert upstream.stats()["log"] == [["POST", "/echo"], ["GET", "/echo?second=1"]]


def test_get_with_content_length_body_is_one_request(gw, upstream):
    with Client(gw.port) as c:
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
               + SMUGGLED)
        r = c.read_response()
        assert r.status == 200
        c.request("GET", "/echo?next=1")
        assert c.read_response().json()["path"] == "/echo?next=1"
    log = upstream.stats()["log"]
    assert ["GET", "/smuggled"] not in log
    assert log == [["GET", "/echo"], ["GET", "/echo?next=1"]]


def test_pipelined_request_after_a_400_is_not_served(gw, upstream):
    data = CASES["cl_te"] + Client.build("GET", "/echo?pipelined=1")
    r, closed = raw_exchange(gw.port, data)
    assert_json_error(r, 400)
    assert closed
    assert upstream.stats()["requests"] == 0


def test_valid_chunk_extensions_and_trailers_accepted(gw):
    with Client(gw.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["body"] == "hello"
