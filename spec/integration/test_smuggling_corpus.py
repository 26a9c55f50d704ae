"""A request-smuggling corpus of our own (issue 11), run against the real
gateway in front of a counting raw upstream.

Every case asserts two things: what the client got (statuses, in order, and
whether the connection was closed), and exactly what the upstream acted on.
The upstream is a plain socket server with a strict parser of its own: it
records every byte of every connection and counts only requests a strict
RFC 9112 back end would have acted on, so a request hidden in another's
bytes is either in its list or nowhere. After each exchange a sentinel
request goes through the gateway on a fresh connection: the upstream's
accept queue is FIFO, so once the sentinel has arrived every connection the
gateway opened before it has been accepted, and the check waits for those to
be closed before it reads the record.

Classes: header-block terminators, line endings inside the request line and
field lines, line folding, chunk size / extension / data / CRLF
permutations (PortSwigger's TERM.SPILL, SPILL.TERM, ONE.TWO, TWO.ONE,
ZERO.TWO, TWO.ZERO, written here from their descriptions), trailers, and
header names with underscores under each limits.underscore_headers policy."""
import json
import re
import socket
import threading

import pytest

from conftest import Client, PeerClosed, assert_json_error, proxy_config, wait_for

# --------------------------------------------------------------------------
# the counting raw upstream

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class Malformed(Exception):
    pass


class NeedMore(Exception):
    pass


def _line(buf, i):
    """The line at buf[i:] up to CRLF, strictly; (line, next offset)."""
    j = buf.find(b"\r\n", i)
    if j < 0:
        if b"\n" in buf[i:] or b"\r" in buf[i:-1]:
            raise Malformed("bare CR or LF")
        raise NeedMore()
    line = buf[i:j]
    if b"\r" in line or b"\n" in line:
        raise Malformed("bare CR or LF")
    return line, j + 2


def parse_request(buf, partial=None):
    """One request from the start of buf: (dict, bytes used). Raises
    NeedMore or Malformed. `partial`, a list, gets the chunk data read so
    far when the body is cut short."""
    line, i = _line(buf, 0)
    parts = line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        raise Malformed("request line %r" % line)
    headers = []
    while True:
        line, i = _line(buf, i)
        if line == b"":
            break
        name, sep, value = line.partition(b":")
        if not sep or not TOKEN.match(name) or value[:1] not in (b"", b" ", b"\t"):
            raise Malformed("field line %r" % line)
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    lower = [(n.lower(), v) for n, v in headers]
    te = [v for n, v in lower if n == "transfer-encoding"]
    cl = [v for n, v in lower if n == "content-length"]
    if te and cl:
        raise Malformed("both Content-Length and Transfer-Encoding")
    body, framing = b"", "none"
    if te:
        if te != ["chunked"]:
            raise Malformed("transfer-encoding %r" % te)
        framing = "chunked"
        chunks = partial if partial is not None else []
        while True:
            line, i = _line(buf, i)
            if not re.match(rb"^[0-9A-Fa-f]+$", line):  # we send no extensions
                raise Malformed("chunk size line %r" % line)
            size = int(line, 16)
            if size == 0:
                line, i = _line(buf, i)  # trailers are not forwarded
                if line != b"":
                    raise Malformed("trailer %r" % line)
                break
            if len(buf) < i + size + 2:
                chunks.append(buf[i:i + size])
                raise NeedMore()
            if buf[i + size:i + size + 2] != b"\r\n":
                raise Malformed("chunk data not followed by CRLF")
            chunks.append(buf[i:i + size])
            i += size + 2
        body = b"".join(chunks)
    elif cl:
        if len(cl) != 1 or not cl[0].isdigit():
            raise Malformed("content-length %r" % cl)
        framing = "content-length"
        n = int(cl[0])
        if len(buf) < i + n:
            raise NeedMore()
        body, i = buf[i:i + n], i + n
    return {"method": parts[0].decode(), "target": parts[1].decode("latin-1"),
            "headers": headers, "body": body, "framing": framing}, i


class RawUpstream:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []     # per connection: {"data", "closed", "error"}
        self.requests = []  # complete requests, in arrival order
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            rec = {"data": b"", "closed": False, "error": None}
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self._serve, args=(s, rec), daemon=True).start()

    def _serve(self, s, rec):
        buf = b""
        try:
            while True:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return
                with self.lock:
                    rec["data"] += data
                buf += data
                while buf:
                    try:
                        req, used = parse_request(buf)
                    except NeedMore:
                        break
                    except Malformed as e:
                        with self.lock:
                            rec["error"] = str(e)
                        return
                    buf = buf[used:]
                    with self.lock:
                        self.requests.append(req)
                    body = json.dumps({"target": req["target"],
                                       "body": req["body"].decode("latin-1")}).encode()
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        finally:
            with self.lock:
                rec["closed"] = True
            s.close()

    def settle(self, port):
        """Sends the sentinel through the gateway, waits for every earlier
        upstream connection to close; returns (connections, requests)
        before the sentinel's."""
        with Client(port) as c:
            c.request("GET", "/sentinel")
            r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/sentinel", r

        def settled():
            with self.lock:
                if not self.requests or self.requests[-1]["target"] != "/sentinel":
                    return False
                # the sentinel's connection (the last one with bytes) may stay
                # open for keep-alive; all others have been closed
                return all(c["closed"] for c in self.conns[:-1])
        wait_for(settled, timeout=10, what="earlier upstream connections to close")
        with self.lock:
            return [dict(c) for c in self.conns[:-1]], self.requests[:-1]

    def stop(self):
        self.sock.close()


@pytest.fixture
def raw_up():
    u = RawUpstream()
    yield u
    u.stop()


def start(gateway, up, underscores=None):
    limits = {"header_timeout": 5}
    if underscores:
        limits["underscore_headers"] = underscores
    return gateway(proxy_config([up.addr], limits=limits))


def exchange(port, data, n):
    """Sends data and reads n responses; returns (statuses, closed). When
    the last one is not a 400, a "GET /last" follows on the same
    connection and must be answered next (no response was left over, and
    the connection still serves): then closed is False."""
    statuses = []
    with Client(port) as c:
        c.send(data)
        for _ in range(n):
            try:
                r = c.read_response()
            except PeerClosed:
                return statuses, True
            statuses.append(r.status)
            if r.status == 400:
                assert_json_error(r, 400)
        if statuses and statuses[-1] == 400:
            return statuses, c.closed(5)
        c.request("GET", "/last")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/last", r
        return statuses, False


def only_partial(conns, prefix):
    """The upstream connections the gateway opened for a refused chunked
    request: each got nothing, or the head and (part of) the body up to the
    wrong byte, re-chunked, and never a complete message."""
    for c in conns:
        assert c["error"] is None, c
        if not c["data"]:
            continue
        got = []
        with pytest.raises(NeedMore):
            parse_request(c["data"], got)
        assert prefix.startswith(b"".join(got)), (got, prefix)


# --------------------------------------------------------------------------
# the corpus

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
TE_HEAD = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

# Refused on the head: 400, closed, the upstream never sees a byte.
HEAD_400 = {
    # header-block terminators
    "issue_bare_cr_ends_block": b"POST / HTTP/1.1\r\nHost: x\r\nFoo: bar\r\n\rTransfer-Encoding: "
                                b"chunked\r\nContent-Length: 4\r\n\r\n1\r\nZ\r\n0\r\n\r\n" + SMUGGLED,
    "term_crlf_cr_x": b"GET / HTTP/1.1\r\nHost: x\r\n\rX" + SMUGGLED,
    "term_crlf_cr_cr_lf": b"GET / HTTP/1.1\r\nHost: x\r\n\r\r\n" + SMUGGLED,
    "term_lf_lf": b"GET / HTTP/1.1\r\nHost: x\n\n" + SMUGGLED,
    "term_crlf_lf": b"GET / HTTP/1.1\r\nHost: x\r\n\n" + SMUGGLED,
    "term_lf_crlf": b"GET / HTTP/1.1\r\nHost: x\n\r\n" + SMUGGLED,
    "term_cr_cr": b"GET / HTTP/1.1\r\nHost: x\r\r" + SMUGGLED,
    "all_bare_lf": b"POST / HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello" + SMUGGLED,
    # the request line
    "request_line_bare_lf": b"GET / HTTP/1.1\nHost: x\r\n\r\n" + SMUGGLED,
    "request_line_bare_cr": b"GET / HTTP/1.1\rHost: x\r\n\r\n" + SMUGGLED,
    "target_bare_cr": b"GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED,
    "before_request_bare_cr": b"\rGET / HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED,
    "before_request_bare_lf": b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED,
    # line endings inside field lines
    "value_bare_cr_te": b"POST / HTTP/1.1\r\nHost: x\r\nX: a\rTransfer-Encoding: chunked\r\n"
                        b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "value_bare_lf_te": b"POST / HTTP/1.1\r\nHost: x\r\nX: a\nTransfer-Encoding: chunked\r\n"
                        b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "value_cr_cr_lf": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\r\n\r\n" + SMUGGLED,
    "name_bare_cr": b"GET / HTTP/1.1\r\nHost: x\r\nX\r: a\r\n\r\n" + SMUGGLED,
    "field_line_bare_lf": b"GET / HTTP/1.1\r\nHost: x\nContent-Length: 36\r\n\r\n" + SMUGGLED,
    "obs_fold": b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n" + SMUGGLED,
    "obs_fold_tab_te": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\tchunked\r\n"
                       b"\r\n0\r\n\r\n" + SMUGGLED,
    "first_field_indented": b"GET / HTTP/1.1\r\n Host: x\r\n\r\n" + SMUGGLED,
    "space_before_colon": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n"
                          b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "cl_te": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
             b"\r\n0\r\n\r\n" + SMUGGLED,
}

# Refused in the chunked body: 400 and closed; the upstream may have the head
# and the data before the wrong byte (streamed), never a complete request.
# value: (body after TE_HEAD, data a strict parser read before the wrong byte)
CHUNK_400 = {
    "issue_data_then_xx": (b"5\r\nAAAAAXXc\r\n17\r\nAAAABBBB\r\n0\r\n\r\n", b"AAAAA"),
    # TERM.SPILL: x stands where the data's CRLF belongs, the rest follows
    "term_spill_xx": (b"5\r\nAAAAAXX0\r\n\r\n", b"AAAAA"),
    "term_spill_cr_x": (b"5\r\nAAAAA\rX0\r\n\r\n", b"AAAAA"),
    "term_spill_cr_cr": (b"5\r\nAAAAA\r\r0\r\n\r\n", b"AAAAA"),
    # SPILL.TERM: x spills past the data, then a CRLF
    "spill_term_xx": (b"5\r\nAAAAAXX\r\n0\r\n\r\n", b"AAAAA"),
    "spill_term_cr_x": (b"5\r\nAAAAA\rX\r\n0\r\n\r\n", b"AAAAA"),
    "spill_term_cr_cr": (b"5\r\nAAAAA\r\r\r\n0\r\n\r\n", b"AAAAA"),
    # ONE.TWO: a lone LF or CR ends the size line
    "one_two_lf": (b"5\nAAAAA\r\n0\r\n\r\n", b""),
    "one_two_cr": (b"5\rAAAAA\r\n0\r\n\r\n", b""),
    # TWO.ONE: a lone LF or CR ends the data
    "two_one_lf": (b"5\r\nAAAAA\n0\r\n\r\n", b"AAAAA"),
    "two_one_cr": (b"5\r\nAAAAA\r0\r\n\r\n", b"AAAAA"),
    # ZERO.TWO: the last chunk, with two bytes of data after it
    "zero_two": (b"0\r\nXX\r\n\r\n", b""),
    # TWO.ZERO: a size of two, no data
    "two_zero": (b"2\r\n\r\n0\r\n\r\n", b"\r\n"),
    # the end of the body
    "last_chunk_cr_x": (b"0\r\n\rX", b""),
    "last_chunk_bare_lf": (b"0\n\n", b""),
    "trailer_bare_lf": (b"0\r\nT: 1\n\r\n", b""),
    "trailer_bare_cr": (b"0\r\nT: 1\rX: 2\r\n\r\n", b""),
    "trailer_folded": (b"0\r\nT: 1\r\n 2\r\n\r\n", b""),
    # size lines and extensions
    "size_space": (b"5 \r\nAAAAA\r\n0\r\n\r\n", b""),
    "size_0x": (b"0x5\r\nAAAAA\r\n0\r\n\r\n", b""),
    "size_overflow": (b"10000000000000005\r\nAAAAA\r\n0\r\n\r\n", b""),
    "size_empty": (b"\r\nAAAAA\r\n0\r\n\r\n", b""),
    "ext_bare_cr": (b"5;a\rb\r\nAAAAA\r\n0\r\n\r\n", b""),
    "ext_bare_lf": (b"5;a\nAAAAA\r\n0\r\n\r\n", b""),
    "ext_control_byte": (b"5;a=\"\x01\"\r\nAAAAA\r\n0\r\n\r\n", b""),
    "second_chunk_bad": (b"3\r\nabc\r\n2\r\nde\rX0\r\n\r\n", b"abcde"),
}


@pytest.mark.parametrize("name", sorted(HEAD_400))
def test_refused_on_the_head(gateway, raw_up, name):
    gw = start(gateway, raw_up)
    statuses, closed = exchange(gw.port, HEAD_400[name], 2)
    assert statuses == [400] and closed
    conns, reqs = raw_up.settle(gw.port)
    assert reqs == [] and conns == [], (reqs, conns)


@pytest.mark.parametrize("name", sorted(CHUNK_400))
def test_refused_in_the_chunked_body(gateway, raw_up, name):
    body, prefix = CHUNK_400[name]
    gw = start(gateway, raw_up)
    statuses, closed = exchange(gw.port, TE_HEAD + body + SMUGGLED, 2)
    assert statuses == [400] and closed
    conns, reqs = raw_up.settle(gw.port)
    assert reqs == [], reqs
    only_partial(conns, prefix)


def test_refused_chunk_split_over_reads(gateway, raw_up):
    """The same refusal when the bad bytes come in a later read, after the
    data was streamed upstream: still no complete request there."""
    gw = start(gateway, raw_up)
    with Client(gw.port) as c:
        c.send(TE_HEAD + b"5\r\nAAAAA")
        wait_for(lambda: raw_up.conns and b"AAAAA" in raw_up.conns[0]["data"],
                 timeout=10, what="the first data to reach the upstream")
        c.send(b"\r")
        c.send(b"X0\r\n\r\n" + SMUGGLED)
        r = c.read_response()
        assert_json_error(r, 400)
        assert c.closed(5)
    conns, reqs = raw_up.settle(gw.port)
    assert reqs == []
    only_partial(conns, b"AAAAA")
    assert conns and b"AAAAA" in conns[0]["data"]


# --------------------------------------------------------------------------
# what is accepted reaches the upstream as parsed, re-framed, and nothing more

def test_valid_chunked_is_reframed(gateway, raw_up):
    gw = start(gateway, raw_up)
    data = (TE_HEAD + b"5;name=value\r\nhello\r\n00A;q=\"a b\"\r\n0123456789\r\n0\r\n"
            b"X-Trailer: t\r\n\r\n" + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    statuses, closed = exchange(gw.port, data, 2)
    assert statuses == [200, 200] and not closed
    conns, reqs = raw_up.settle(gw.port)
    assert [(r["method"], r["target"], r["body"], r["framing"]) for r in reqs] == [
        ("POST", "/c", b"hello0123456789", "chunked"), ("GET", "/next", b"", "none"),
        ("GET", "/last", b"", "none")]
    # extensions and trailers are not forwarded: the body was re-chunked
    raw = b"".join(c["data"] for c in conns) + b"".join(
        c["data"] for c in raw_up.conns[len(conns):])
    assert b"name=value" not in raw and b"X-Trailer" not in raw


def test_empty_lines_before_a_request_are_skipped(gateway, raw_up):
    gw = start(gateway, raw_up)
    statuses, closed = exchange(gw.port, b"\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    assert statuses == [200] and not closed
    conns, reqs = raw_up.settle(gw.port)
    assert [r["target"] for r in reqs] == ["/a", "/last"]


@pytest.mark.parametrize("ntokens", [1, 8, 9, 20])
def test_connection_listed_headers_not_forwarded(gateway, raw_up, ntokens):
    """Names listed in Connection are hop-by-hop (RFC 9110 7.6.1), however
    many there are; listing a framing header changes nothing upstream."""
    gw = start(gateway, raw_up)
    listed = ["X-L%d" % i for i in range(ntokens - 1)] + ["Content-Length"]
    head = (b"POST /h HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, %s\r\n"
            % ", ".join(listed).encode())
    head += b"".join(b"%s: v\r\n" % n.encode() for n in listed[:-1])
    data = head + b"X-Keep: k\r\nContent-Length: 5\r\n\r\nhello"
    statuses, closed = exchange(gw.port, data, 1)
    assert statuses == [200] and not closed
    conns, reqs = raw_up.settle(gw.port)
    assert [(r["target"], r["body"], r["framing"]) for r in reqs] == [
        ("/h", b"hello", "content-length"), ("/last", b"", "none")]
    got = names(reqs[0])
    assert "x-keep" in got and "connection" not in got
    assert not [n for n in got if n.startswith("x-l")], got


# --------------------------------------------------------------------------
# header names with underscores

UNDERSCORE_TE = (b"POST /u HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n"
                 b"Content-Length: %d\r\n\r\n0\r\n\r\n%s" % (5 + len(SMUGGLED), SMUGGLED))
UNDERSCORE_CL = (b"POST /u HTTP/1.1\r\nHost: x\r\nContent_Length: 0\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
UNDERSCORE_XFF = b"GET /u HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\n\r\n"


def names(req):
    return [n.lower() for n, _ in req["headers"]]


@pytest.mark.parametrize("policy", [None, "drop"], ids=["default", "drop"])
def test_underscore_headers_dropped(gateway, raw_up, policy):
    gw = start(gateway, raw_up, policy)
    statuses, closed = exchange(gw.port, UNDERSCORE_TE + UNDERSCORE_CL + UNDERSCORE_XFF, 3)
    assert statuses == [200, 200, 200] and not closed
    conns, reqs = raw_up.settle(gw.port)
    assert [(r["target"], r["body"], r["framing"]) for r in reqs] == [
        ("/u", b"0\r\n\r\n" + SMUGGLED, "content-length"),
        ("/u", b"hello", "chunked"),
        ("/u", b"", "none"), ("/last", b"", "none")]
    for r in reqs:
        assert not any("_" in n for n in names(r)), r["headers"]
    xff = [v for n, v in reqs[2]["headers"] if n.lower() == "x-forwarded-for"]
    assert xff == ["127.0.0.1"]


def test_underscore_headers_rejected(gateway, raw_up):
    gw = start(gateway, raw_up, "reject")
    for data in (UNDERSCORE_TE, UNDERSCORE_CL, UNDERSCORE_XFF,
                 b"GET / HTTP/1.1\r\nHost: x\r\nx_: 1\r\n\r\n"):
        statuses, closed = exchange(gw.port, data, 2)
        assert statuses == [400] and closed
    conns, reqs = raw_up.settle(gw.port)
    assert reqs == [] and conns == []
    # names without underscores are untouched
    statuses, closed = exchange(gw.port, b"GET /ok HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n", 1)
    assert statuses == [200] and not closed


def test_underscore_headers_allowed(gateway, raw_up):
    gw = start(gateway, raw_up, "allow")
    statuses, closed = exchange(gw.port, UNDERSCORE_TE + UNDERSCORE_XFF, 2)
    assert statuses == [200, 200] and not closed
    conns, reqs = raw_up.settle(gw.port)
    # forwarded as fields, framed by the real Content-Length only
    assert [(r["target"], r["body"], r["framing"]) for r in reqs] == [
        ("/u", b"0\r\n\r\n" + SMUGGLED, "content-length"), ("/u", b"", "none"),
        ("/last", b"", "none")]
    assert "transfer_encoding" in names(reqs[0])
    assert "x_forwarded_for" in names(reqs[1])


def test_bad_underscore_policy_is_a_config_error(run_moongate):
    p = run_moongate("-t", "-c", "$CFG", config=proxy_config(
        ["127.0.0.1:9"], limits={"underscore_headers": "ignore"}))
    assert p.returncode != 0
    assert 'limits.underscore_headers: expected "drop", "allow" or "reject"' in \
        p.stderr_text + p.stdout_text
