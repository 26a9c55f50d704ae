"""The response phase runs for every answer a route gives: the upstream's, a
handler's, and a plugin's req:respond (as Kong runs header_filter after
kong.response.exit), so headers/cors/request_id/rate_limit decorate them."""
import hashlib

import pytest

from conftest import Client, pattern_sha256, request

CONFIG = """
local seen = {}
return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  access_log = false,
  plugin_path = { "$DIR/plugins" },
  upstreams = { app = { servers = { "%(up)s" } } },
  routes = {
    { match = { path = "/h" },
      plugins = { { "headers", response = { set = { ["X-Frame-Options"] = "DENY" },
                                            remove = { "X-Secret" } } },
                  { "request_id" } },
      handler = function(req)
        return 201, "made", { ["X-Secret"] = "s", ["X-Kept"] = "k",
                              ["Set-Cookie"] = { "a=1", "b=2" } }
      end },
    { match = { path = "/jwt" },
      plugins = { { "jwt", secret = "k" },
                  { "headers", response = { set = { ["X-Gw"] = "moongate" } } } },
      handler = function() return 200, "never" end },
    { match = { path = "/cors" },
      plugins = { { "cors", origins = { "https://a.example" } } },
      handler = function() return 200, "ok" end },
    { match = { path = "/edit" },
      plugins = { { "edit" } },
      handler = function() return 200, "body stays", { ["Content-Type"] = "text/x-test" } end },
    { match = { path = "/again" },
      plugins = { { "edit" } },
      handler = function(req)
        req:respond(418, "first", { ["X-First"] = "1" })
        req:respond(409, "second", { ["X-Second"] = "2" })
        return 200, "ignored"
      end },
    { match = { path = "/plain" },
      handler = function() return 200, "no response plugins", { ["X-A"] = "1" } end },
    { match = { prefix = "/up/" }, upstream = "app",
      plugins = { { "headers", response = { set = { ["X-Gw"] = "up" } } } } },
    -- upstream answers held while a response plugin yields: their bytes
    -- wait unframed and are framed by the writer when the head goes out
    { match = { prefix = "/chunked/" }, upstream = "app", plugins = { { "edit" } } },
    { match = { prefix = "/close/" }, upstream = "app", plugins = { { "edit" } } },
    { match = { prefix = "/echo" }, upstream = "app", plugins = { { "edit" } } },
  },
}
"""

EDIT_PLUGIN = """
return {
  name = "edit",
  response = function(conf, req, res)
    gw.sleep(0.01) -- the phase may yield while the answer is held
    res:set_header("X-Status-Seen", tostring(res.status))
    res:set_header("X-Ctype-Seen", res:header("content-type") or "none")
    if req.path == "/edit" then res.status = 202 end
  end,
}
"""


@pytest.fixture
def gw(gateway, upstream, tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "edit.lua").write_text(EDIT_PLUGIN)
    return gateway(CONFIG % {"up": upstream.addr})


def test_handler_answer_goes_through_the_response_phase(gw):
    r = request(gw.port, path="/h")
    assert r.status == 201 and r.body == b"made"
    assert r.header("x-frame-options") == "DENY"
    assert r.header("x-secret") is None
    assert r.header("x-kept") == "k"
    assert sorted(r.headers_all("set-cookie")) == ["a=1", "b=2"]
    assert r.header("x-request-id")
    assert r.header("content-length") == "4"


def test_plugin_refusal_goes_through_the_response_phase(gw):
    r = request(gw.port, path="/jwt")
    assert r.status == 401
    assert r.header("x-gw") == "moongate"
    assert r.header("www-authenticate") == 'Bearer error="invalid_token"'
    assert r.json()["error"]


def test_cors_grant_on_a_handler_answer(gw):
    r = request(gw.port, path="/cors", headers=[("Origin", "https://a.example")])
    assert r.status == 200 and r.body == b"ok"
    assert r.header("access-control-allow-origin") == "https://a.example"
    r = request(gw.port, path="/cors", headers=[("Origin", "https://evil.example")])
    assert r.header("access-control-allow-origin") is None


def test_response_plugin_sees_and_edits_a_handler_answer(gw):
    r = request(gw.port, path="/edit")
    assert r.status == 202 and r.body == b"body stays"
    assert r.header("x-status-seen") == "200"
    assert r.header("x-ctype-seen") == "text/x-test"
    assert r.header("content-type") == "text/x-test"


def test_head_request_keeps_length_and_drops_body(gw):
    from conftest import Client
    with Client(gw.port) as c:
        c.request("HEAD", "/edit")
        r = c.read_response(method="HEAD")
        assert r.status == 202 and r.body == b""
        assert r.header("content-length") == "10"
        c.request("GET", "/h")  # the connection stays in sync
        r = c.read_response()
        assert r.status == 201 and r.body == b"made"


def test_a_later_respond_replaces_a_held_one(gw):
    r = request(gw.port, path="/again")
    assert r.status == 409 and r.body == b"second"
    assert r.header("x-second") == "2" and r.header("x-first") is None
    assert r.header("x-status-seen") == "409"


def test_routes_without_response_plugins_and_upstream_answers_unchanged(gw):
    r = request(gw.port, path="/plain")
    assert r.status == 200 and r.body == b"no response plugins" and r.header("x-a") == "1"
    r = request(gw.port, path="/up/x")
    assert r.status == 200 and r.header("x-gw") == "up"


def test_keepalive_sequence_of_held_answers(gw):
    from conftest import Client
    with Client(gw.port) as c:
        for path, status in [("/h", 201), ("/jwt", 401), ("/edit", 202), ("/h", 201)]:
            c.request("GET", path)
            r = c.read_response()
            assert r.status == status, (path, r)


def test_held_chunked_answer_is_framed_once_and_keeps_the_connection(gw):
    # 600000 bytes: more than the writer's high mark arrive while held
    n = 600000
    with Client(gw.port) as c:
        c.request("GET", "/chunked/%d?chunk=1000" % n)
        r = c.read_response()
        assert r.status == 200 and r.chunked and r.header("x-status-seen") == "200"
        assert r.body_len == n and hashlib.sha256(r.body).hexdigest() == pattern_sha256(n)
        c.request("HEAD", "/chunked/%d" % n)
        r = c.read_response(method="HEAD")
        assert r.status == 200 and r.body_len == 0 and r.header("x-status-seen") == "200"
        c.request("GET", "/echo?after=held")
        r = c.read_response()
        assert r.json()["path"] == "/echo?after=held" and r.header("x-status-seen") == "200"


@pytest.mark.parametrize("kind", ["chunked", "close"])
def test_held_answer_to_http10_client_ends_with_the_connection(gw, kind):
    n = 300000
    with Client(gw.port) as c:
        c.request("GET", "/%s/%d" % (kind, n), version="HTTP/1.0")
        r = c.read_response()
        assert r.status == 200 and not r.chunked and r.header("x-status-seen") == "200"
        assert r.body_len == n and hashlib.sha256(r.body).hexdigest() == pattern_sha256(n)
