"""Clients behind proxies (issue 13 item 12): trusted_proxies and
X-Forwarded-For, PROXY protocol v1/v2 on proxy_protocol listeners (plain and
TLS), and ip_restriction, rate_limit and the access log acting on the real
client."""
import json
import socket
import ssl
import struct

import pytest

from conftest import Client, Raw, config, request, wait_for

ECHO = Raw('function(req) return 200, req.remote_addr end')


def who_config(trusted=None, pp=False, extra=None, access_log=False, tls=None):
    listen = {"addr": "127.0.0.1:$PORT"}
    if pp:
        listen["proxy_protocol"] = True
    if tls:
        listen["tls"] = tls
    top = {"listen": [listen], "access_log": access_log,
           "routes": (extra or []) + [{"match": {"path": "/who"}, "handler": ECHO}]}
    if trusted is not None:
        top["trusted_proxies"] = trusted
    return config(**top)


def who(port, xff=None):
    hs = [("X-Forwarded-For", x) for x in ([xff] if isinstance(xff, str) else xff or [])]
    r = request(port, "GET", "/who", headers=hs)
    assert r.status == 200, r
    return r.body.decode()


# --- X-Forwarded-For ----------------------------------------------------------

def test_xff_ignored_without_trusted_proxies(gateway):
    g = gateway(who_config())
    assert who(g.port, "203.0.113.9") == "127.0.0.1"


def test_xff_from_trusted_peer(gateway):
    g = gateway(who_config(["127.0.0.1", "10.0.0.0/8", "::1/128"]))
    assert who(g.port) == "127.0.0.1"  # no header: the peer
    assert who(g.port, "203.0.113.9") == "203.0.113.9"
    # right-most untrusted hop: trusted hops are skipped, a forged left part is not believed
    assert who(g.port, "6.6.6.6, 203.0.113.9, 10.1.2.3") == "203.0.113.9"
    # two headers make one list
    assert who(g.port, ["6.6.6.6, 198.51.100.4", "10.0.0.7"]) == "198.51.100.4"
    # every hop trusted: the left-most
    assert who(g.port, "10.0.0.8, 10.0.0.9") == "10.0.0.8"
    # a hop that is not an address stops the walk at the hop to its right
    assert who(g.port, "203.0.113.9, garbage, 10.0.0.5") == "10.0.0.5"
    assert who(g.port, "[2001:db8::7]:1234") == "2001:db8::7"


def test_xff_from_untrusted_peer_ignored(gateway):
    g = gateway(who_config(["10.0.0.0/8"]))
    assert who(g.port, "203.0.113.9") == "127.0.0.1"


def test_trusted_proxies_bad_entry_is_config_error(run_moongate):
    p = run_moongate("-t", "-c", "$CFG", config=who_config(["10.0.0.0/8", "10.0.0.0/33"]))
    assert p.returncode == 1
    assert "trusted_proxies[2]" in p.stderr_text and "moongate.lua:" in p.stderr_text, p.stderr_text


def test_ip_restriction_rate_limit_and_log_see_real_client(gateway, tmp_path):
    log = tmp_path / "access.json"
    extra = [{"match": {"path": "/guarded"}, "handler": ECHO,
              "plugins": [["ip_restriction", Raw('deny = { "203.0.113.0/24" }')]]},
             {"match": {"path": "/limited"}, "handler": ECHO,
              "plugins": [["rate_limit", Raw("rate = 1, burst = 1")]]}]
    g = gateway(who_config(["127.0.0.1"], extra=extra,
                           access_log={"path": str(log), "format": "json"}))
    xff = lambda ip: [("X-Forwarded-For", ip)]
    assert request(g.port, "GET", "/guarded", headers=xff("203.0.113.5")).status == 403
    assert request(g.port, "GET", "/guarded", headers=xff("198.51.100.5")).status == 200
    assert request(g.port, "GET", "/guarded").status == 200  # the proxy itself
    # one bucket per real client, not one for the balancer
    assert request(g.port, "GET", "/limited", headers=xff("192.0.2.1")).status == 200
    assert request(g.port, "GET", "/limited", headers=xff("192.0.2.2")).status == 200
    assert request(g.port, "GET", "/limited", headers=xff("192.0.2.1")).status == 429
    recs = wait_for(lambda: (lambda ls: ls if len(ls) >= 6 else None)(
        [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []),
        what="6 log lines")
    assert [r["remote_addr"] for r in recs] == ["203.0.113.5", "198.51.100.5", "127.0.0.1",
                                                "192.0.2.1", "192.0.2.2", "192.0.2.1"]


def test_xff_sent_upstream_keeps_every_hop(gateway, upstream):
    g = gateway(config(trusted_proxies=["127.0.0.1"],
                       upstreams={"app": {"servers": [upstream.addr]}},
                       routes=[{"match": {"prefix": "/"}, "upstream": "app"}]))
    r = request(g.port, "GET", "/echo/x", headers=[("X-Forwarded-For", "203.0.113.9")])
    assert r.status == 200
    seen = r.json()
    hdrs = {k.lower(): v for k, v in seen["headers"]} if isinstance(seen["headers"], list) \
        else {k.lower(): v for k, v in seen["headers"].items()}
    assert hdrs["x-forwarded-for"] == "203.0.113.9, 127.0.0.1", hdrs


# --- PROXY protocol -----------------------------------------------------------

V2SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd, fam, src, dst, sport, dport, tlv=b""):
    if fam == 0x11:
        addr = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
    elif fam == 0x21:
        addr = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    else:
        addr = b""
    body = addr + (struct.pack("!HH", sport, dport) if addr else b"") + tlv
    return V2SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def pp_exchange(port, header, path="/who", split=False):
    """Sends header (in two writes when split) then a request; returns the
    response bytes ("" when the gateway closed without answering)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        req = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode()
        if split:
            s.sendall(header[:7])
            import time
            time.sleep(0.1)
            s.sendall(header[7:] + req)
        else:
            s.sendall(header + req)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return got
    finally:
        s.close()


def body_of(resp):
    assert resp.startswith(b"HTTP/1.1 200"), resp
    return resp.split(b"\r\n\r\n", 1)[1].decode()


def test_proxy_protocol_v1_and_v2(gateway):
    g = gateway(who_config(["127.0.0.1"], pp=True))
    assert body_of(pp_exchange(g.port, b"PROXY TCP4 192.0.2.10 10.0.0.1 40000 80\r\n")) \
        == "192.0.2.10"
    assert body_of(pp_exchange(g.port, b"PROXY TCP6 2001:db8::10 2001:db8::1 40000 80\r\n")) \
        == "2001:db8::10"
    assert body_of(pp_exchange(g.port, b"PROXY UNKNOWN\r\n")) == "127.0.0.1"
    assert body_of(pp_exchange(g.port, v2(1, 0x11, "198.51.100.20", "10.0.0.1", 5555, 80))) \
        == "198.51.100.20"
    tlv = b"\x04\x00\x05hello"
    assert body_of(pp_exchange(g.port, v2(1, 0x21, "2001:db8::20", "::1", 5555, 80, tlv))) \
        == "2001:db8::20"
    # LOCAL (the balancer's own health check): the socket's address
    assert body_of(pp_exchange(g.port, v2(0, 0x00, None, None, 0, 0))) == "127.0.0.1"
    # a header split over two reads
    assert body_of(pp_exchange(g.port, b"PROXY TCP4 192.0.2.11 10.0.0.1 40000 80\r\n",
                               split=True)) == "192.0.2.11"
    assert body_of(pp_exchange(g.port, v2(1, 0x11, "198.51.100.21", "10.0.0.1", 1, 80),
                               split=True)) == "198.51.100.21"


def test_proxy_protocol_required_and_validated(gateway):
    g = gateway(who_config(["127.0.0.1"], pp=True))
    assert pp_exchange(g.port, b"") == b""  # plain HTTP: closed, no answer
    assert pp_exchange(g.port, b"PROXY TCP4 1.2.3.4 5.6.7.8 01 80\r\n") == b""
    assert pp_exchange(g.port, V2SIG + b"\x21\x11\x00\x04\x01\x02\x03\x04") == b""
    wait_for(lambda: g.stderr_text().count("invalid PROXY protocol header") >= 3,
             what="the bad headers logged")
    # still serving
    assert body_of(pp_exchange(g.port, b"PROXY TCP4 192.0.2.12 10.0.0.1 1 80\r\n")) == "192.0.2.12"


def test_proxy_protocol_then_trusted_xff(gateway):
    # an L4 balancer (PROXY) in front of an L7 proxy at 10.0.0.2 (X-Forwarded-For)
    g = gateway(who_config(["127.0.0.1", "10.0.0.0/8"], pp=True))
    hdr = b"PROXY TCP4 10.0.0.2 10.0.0.1 40000 80\r\n"
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    s.sendall(hdr + b"GET /who HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.50\r\n"
                    b"Connection: close\r\n\r\n")
    got = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        got += c
    s.close()
    assert body_of(got) == "203.0.113.50"


def test_proxy_protocol_from_untrusted_peer_refused(gateway):
    g = gateway(who_config(["10.0.0.0/8"], pp=True))
    assert pp_exchange(g.port, b"PROXY TCP4 192.0.2.10 10.0.0.1 40000 80\r\n") == b""
    wait_for(lambda: "not in trusted_proxies" in g.stderr_text(), what="the refusal logged")


def test_proxy_protocol_on_tls_listener(gateway, tmp_path):
    from tlshelp import CA, client_context
    ca = CA(tmp_path / "pki")
    ca.issue("server")
    g = gateway(who_config(["127.0.0.1"], pp=True,
                           tls={"cert": "pki/server.pem", "key": "pki/server.key"}))
    for header, want in ((b"PROXY TCP4 192.0.2.30 10.0.0.1 40000 443\r\n", "192.0.2.30"),
                         (v2(1, 0x11, "198.51.100.31", "10.0.0.1", 1, 443), "198.51.100.31")):
        raw = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        raw.sendall(header)
        s = client_context(ca).wrap_socket(raw, server_hostname="localhost")
        s.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while True:
            try:
                c = s.recv(65536)
            except ssl.SSLError:
                break
            if not c:
                break
            got += c
        s.close()
        assert body_of(got) == want


def _can_connect6(port):
    try:
        socket.create_connection(("::1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_ipv6_peer_trusted_by_cidr(gateway):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    g = gateway(config(listen=[{"addr": "[::1]:$PORT"}, {"addr": "[::1]:$PORT1",
                                                          "proxy_protocol": True}],
                       trusted_proxies=["::1/128"],
                       routes=[{"match": {"path": "/who"}, "handler": ECHO}]), wait=False)
    for p in g.ports:
        wait_for(lambda: _can_connect6(p), timeout=15, what="moongate on [::1]:%d" % p)
    s = socket.create_connection(("::1", g.ports[0]), timeout=5)
    s.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 2001:db8::99\r\n"
              b"Connection: close\r\n\r\n")
    got = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        got += c
    s.close()
    assert body_of(got) == "2001:db8::99"
    s = socket.create_connection(("::1", g.ports[1]), timeout=5)
    s.sendall(v2(1, 0x21, "2001:db8::77", "::1", 1, 80) +
              b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    got = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        got += c
    s.close()
    assert body_of(got) == "2001:db8::77"
