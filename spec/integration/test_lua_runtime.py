"""The Lua runtime seen through real requests (issue 3): plugin loading from
plugin_path, priority and listed order, per-route options, schema errors (by
`moongate -t` and at start), handler routes, Lua match functions and header
matches, the routing order, every req/res field and method, yielding in every
phase, gw.sleep/now/log/cache.

The test plugins live in spec/integration/plugins/ (t_*.lua)."""
import hashlib
import re
import threading
import time

import pytest

from conftest import Client, Raw, assert_json_error, request, wait_for
from luahelp import PLUGINS, handler, hook, lua_config, plugin


def up_headers(doc, name):
    """Values of header `name` as the upstream /echo received them."""
    return [v for n, v in doc["headers"] if n.lower() == name.lower()]


def up_header(doc, name):
    vals = up_headers(doc, name)
    assert len(vals) <= 1, "header %s sent %d times: %r" % (name, len(vals), vals)
    return vals[0] if vals else None


def route(plugins=None, match=None, **kw):
    r = {"match": match or {"prefix": "/"}}
    if plugins is not None:
        r["plugins"] = plugins
    r.update(kw)
    if "handler" not in r and "upstream" not in r:
        r["upstream"] = "app"
    return r


# --------------------------------------------------------------------------
# plugin loading and order

def test_plugins_run_by_priority_whatever_the_listed_order(gateway, upstream):
    g = gateway(lua_config([route([plugin("t_order_lo"), plugin("t_order_hi"),
                                   plugin("t_order_mid")])], upstream))
    r = request(g.port, "GET", "/echo")
    assert r.status == 200, r
    assert r.header("X-Order-Res") == "hi,mid,lo"       # response phase
    assert up_header(r.json(), "X-Order") == "hi,mid,lo"  # access phase


def test_plugin_order_listed_runs_plugins_as_listed(gateway, upstream):
    g = gateway(lua_config([
        route([plugin("t_order_lo"), plugin("t_order_hi"), plugin("t_order_mid")],
              match={"prefix": "/listed/"}, plugin_order="listed"),
        route([plugin("t_order_lo"), plugin("t_order_hi"), plugin("t_order_mid")],
              match={"prefix": "/prio/"}),
    ], upstream))
    r = request(g.port, "GET", "/listed/echo")
    assert r.status == 200, r
    assert r.header("X-Order-Res") == "lo,hi,mid"
    assert up_header(r.json(), "X-Order") == "lo,hi,mid"
    # the same plugins on another route of the same config keep priority order
    r = request(g.port, "GET", "/prio/echo")
    assert up_header(r.json(), "X-Order") == "hi,mid,lo"


def test_access_order_seen_by_a_handler(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/prio"}, "handler": handler('return 200, req:header("x-order")'),
         "plugins": [plugin("t_order_mid"), plugin("t_order_lo"), plugin("t_order_hi")]},
        {"match": {"path": "/listed"}, "handler": handler('return 200, req:header("x-order")'),
         "plugin_order": "listed",
         "plugins": [plugin("t_order_mid"), plugin("t_order_lo"), plugin("t_order_hi")]},
    ]))
    assert request(g.port, "GET", "/prio").body == b"hi,mid,lo"
    assert request(g.port, "GET", "/listed").body == b"mid,lo,hi"


def test_per_route_plugin_options(gateway, upstream):
    g = gateway(lua_config([
        route([plugin("t_tag", value="A", mode="alpha", count=3)], match={"prefix": "/a/"}),
        route([plugin("t_tag", value="B", header="X-Other")], match={"prefix": "/b/"}),
        route([plugin("t_order_hi", tag="first"), plugin("t_tag", value="C", flag=True)],
              match={"prefix": "/c/"}),
        route(match={"prefix": "/"}),
    ], upstream))
    a = request(g.port, "GET", "/a/echo").json()
    assert up_header(a, "X-Tag") == "A:alpha:3"
    assert up_header(a, "X-Other") is None
    b = request(g.port, "GET", "/b/echo").json()
    assert up_header(b, "X-Other") == "B"          # option given
    assert up_header(b, "X-Tag") is None
    c = request(g.port, "GET", "/c/echo").json()
    assert up_header(c, "X-Tag") == "C"            # schema default for header
    assert up_header(c, "X-Order") == "first"
    plain = request(g.port, "GET", "/echo").json()
    assert up_header(plain, "X-Tag") is None and up_header(plain, "X-Order") is None


def _plugin_file(d, name, header, value):
    d.mkdir(parents=True, exist_ok=True)
    (d / (name + ".lua")).write_text(
        'return { name = "%s", access = function(conf, req) req:set_header("%s", "%s") end }\n'
        % (name, header, value))


def test_plugin_path_is_searched_in_order(gateway, upstream, tmp_path):
    d1, d2 = tmp_path / "first", tmp_path / "second"
    _plugin_file(d1, "t_same", "X-From", "first")
    _plugin_file(d2, "t_same", "X-From", "second")
    _plugin_file(d2, "t_only_second", "X-Only", "second")
    _plugin_file(tmp_path / "rel", "t_relative", "X-Rel", "yes")
    g = gateway(lua_config([route([plugin("t_same"), plugin("t_only_second"),
                                   plugin("t_relative"), plugin("t_order_hi")])],
                           upstream, plugin_path=[str(d1), str(d2), "rel", str(PLUGINS)]))
    doc = request(g.port, "GET", "/echo").json()
    assert up_header(doc, "X-From") == "first"
    assert up_header(doc, "X-Only") == "second"
    assert up_header(doc, "X-Rel") == "yes"      # relative to the config's directory
    assert up_header(doc, "X-Order") == "hi"


# --------------------------------------------------------------------------
# schema and plugin errors: moongate -t and at start

BAD_PLUGIN_CONFIG = """return {
  listen = { { addr = "127.0.0.1:$PORT" } },
  plugin_path = { "%s" },
  upstreams = { app = { servers = { "127.0.0.1:9" } } },
  routes = {
    { match = { path = "/ok" }, upstream = "app" },
    { match = { prefix = "/" }, upstream = "app",
      plugins = {
        { "t_order_hi" },
        %s
      } },
  },
}
"""
BAD_LINE = 10  # the line of the second plugin entry above

# name: (plugin entry on BAD_LINE, regexes the message after "file:line:" must match)
BAD_PLUGINS = {
    "unknown_option": ('{ "t_tag", value = "v", colour = "red" },',
                       [r"t_tag", r"colour", r"unknown"]),
    "wrong_type": ('{ "t_tag", value = "v", count = "three" },',
                   [r"t_tag", r"count", r"integer"]),
    "wrong_type_boolean": ('{ "t_tag", value = "v", flag = "yes" },',
                           [r"t_tag", r"flag", r"boolean"]),
    "not_one_of": ('{ "t_tag", value = "v", mode = "gamma" },',
                   [r"t_tag", r"mode", r"alpha|one of"]),
    "required_missing": ('{ "t_tag", header = "X-Y" },',
                         [r"t_tag", r"value", r"required"]),
    "check_rejects": ('{ "t_check", min = 5, max = 1 },',
                      [r"t_check", r"min must not exceed max"]),
    "missing_plugin": ('{ "t_nosuch" },', [r"t_nosuch", r"not found"]),
    "syntax_error_in_plugin": ('{ "t_syntax" },', [r"t_syntax", r"t_syntax\.lua:3"]),
    "plugin_raises_at_load": ('{ "t_load_error" },',
                              [r"t_load_error", r"refuses to load"]),
}


def _bad_text(entry):
    text = BAD_PLUGIN_CONFIG % (PLUGINS, entry)
    assert text.split("\n")[BAD_LINE - 1].strip() == entry
    return text


def _check_message(stderr, cfg_name, wants):
    m = re.search(re.escape(cfg_name) + r":(\d+): ?(.+)", stderr)
    assert m, "expected %s:LINE: why, got %r" % (cfg_name, stderr)
    assert int(m.group(1)) == BAD_LINE, "error reported at line %s, the entry is on %d: %r" \
        % (m.group(1), BAD_LINE, stderr)
    why = m.group(2)
    assert re.search(r"routes\[2\]|route 2\b|route #2", why), \
        "the message does not name the route (routes[2]): %r" % why
    for w in wants:
        assert re.search(w, why, re.I), "%r does not match %r" % (why, w)


@pytest.mark.parametrize("name", sorted(BAD_PLUGINS))
def test_check_reports_plugin_errors(run_moongate, name):
    entry, wants = BAD_PLUGINS[name]
    p = run_moongate("-t", "-c", "$CFG", config=_bad_text(entry))
    assert p.returncode == 1, (p.returncode, p.stdout_text, p.stderr_text)
    assert "OK" not in p.stdout_text
    _check_message(p.stderr_text, p.config_path.name, wants)


def test_check_accepts_good_plugin_config(run_moongate):
    p = run_moongate("-t", "-c", "$CFG",
                     config=_bad_text('{ "t_tag", value = "v", mode = "beta", count = 2 },'))
    assert p.returncode == 0, p.stderr_text
    assert p.stdout_text.strip() == "OK"


@pytest.mark.parametrize("name", ["unknown_option", "wrong_type", "missing_plugin",
                                  "syntax_error_in_plugin"])
def test_bad_plugin_config_at_start_exits_nonzero(run_moongate, name):
    entry, wants = BAD_PLUGINS[name]
    p = run_moongate("-c", "$CFG", config=_bad_text(entry), timeout=15)
    assert p.returncode != 0
    _check_message(p.stderr_text, p.config_path.name, wants)


# --------------------------------------------------------------------------
# handler routes

def test_handler_bodies_headers_and_statuses(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/string"}, "handler": handler('return 200, "just a string"')},
        {"match": {"path": "/table"},
         "handler": handler('return 200, { "one,", "two,", "three" }')},
        {"match": {"path": "/headers"},
         "handler": handler('return 201, "{}", { ["Content-Type"] = "application/json", '
                            '["X-One"] = "1", ["X-Two"] = "two" }')},
        {"match": {"prefix": "/status/"},
         "handler": handler('return tonumber(req.path:sub(9)), "status " .. req.path:sub(9)')},
        {"match": {"path": "/empty"}, "handler": handler('return 200')},
    ]))
    r = request(g.port, "GET", "/string")
    assert (r.status, r.body) == (200, b"just a string")
    assert r.header("Content-Type", "").startswith("text/plain")
    r = request(g.port, "GET", "/table")
    assert (r.status, r.body) == (200, b"one,two,three")
    assert r.header("Content-Length") == "13"
    r = request(g.port, "GET", "/headers")
    assert (r.status, r.body) == (201, b"{}")
    assert r.header("X-One") == "1" and r.header("X-Two") == "two"
    assert r.headers_all("Content-Type") == ["application/json"]
    for status in (202, 302, 404, 418, 451, 503):
        r = request(g.port, "GET", "/status/%d" % status)
        assert r.status == status, r
        assert r.body == b"status %d" % status
    r = request(g.port, "GET", "/empty")
    assert r.status == 200 and r.body == b""
    r = request(g.port, "HEAD", "/string")
    assert r.status == 200 and r.body == b""


def test_match_function_routes(gateway):
    g = gateway(lua_config([
        {"name": "canary", "match": Raw('function(req) return req:header("x-canary") == "1" end'),
         "handler": handler('return 200, "canary"')},
        {"name": "deletes", "match": Raw('function(req) return req.method == "DELETE" end'),
         "handler": handler('return 200, "delete " .. req.path')},
        {"name": "query", "match": Raw('function(req) return req.query == "fn=yes" end'),
         "handler": handler('return 200, "query"')},
    ]))
    assert request(g.port, "GET", "/x", headers=[("X-Canary", "1")]).body == b"canary"
    assert request(g.port, "DELETE", "/thing").body == b"delete /thing"
    # the first function that matches wins
    assert request(g.port, "DELETE", "/thing", headers=[("X-Canary", "1")]).body == b"canary"
    assert request(g.port, "GET", "/q?fn=yes").body == b"query"
    assert_json_error(request(g.port, "GET", "/x", headers=[("X-Canary", "0")]), 404)
    assert_json_error(request(g.port, "GET", "/q?fn=no"), 404)


def test_headers_match(gateway):
    g = gateway(lua_config([
        {"match": {"prefix": "/h/", "headers": {"x-team": "blue"}},
         "handler": handler('return 200, "blue"')},
        {"match": {"prefix": "/h/", "headers": {"X-Team": "red", "x-env": "prod"}},
         "handler": handler('return 200, "red-prod"')},
        {"match": {"prefix": "/"}, "handler": handler('return 200, "default"')},
    ]))
    assert request(g.port, "GET", "/h/1", headers=[("X-Team", "blue")]).body == b"blue"
    assert request(g.port, "GET", "/h/1", headers=[("x-team", "red"), ("X-Env", "prod")]
                   ).body == b"red-prod"
    # every listed header must match, values exactly
    assert request(g.port, "GET", "/h/1", headers=[("X-Team", "red")]).body == b"default"
    assert request(g.port, "GET", "/h/1", headers=[("X-Team", "bluest")]).body == b"default"
    assert request(g.port, "GET", "/h/1").body == b"default"


def test_routing_order_exact_then_longest_prefix_then_functions(gateway):
    g = gateway(lua_config([
        {"match": Raw("function(req) return req:header('x-fn') ~= nil end"),
         "handler": handler('return 200, "fn-header"')},
        {"match": Raw("function(req) return true end"), "handler": handler('return 200, "fn-any"')},
        {"match": {"prefix": "/p/"}, "handler": handler('return 200, "prefix"')},
        {"match": {"prefix": "/p/longer/"}, "handler": handler('return 200, "longer"')},
        {"match": {"path": "/p/exact"}, "handler": handler('return 200, "exact"')},
    ]))
    for path, want in [("/p/exact", b"exact"), ("/p/longer/x", b"longer"), ("/p/x", b"prefix"),
                       ("/p/exactly", b"prefix"), ("/other", b"fn-any")]:
        assert request(g.port, "GET", path).body == want, path
        # a function route never beats an exact or prefix route, even listed first
        assert request(g.port, "GET", path, headers=[("X-Fn", "1")]).body == \
            (b"fn-header" if want == b"fn-any" else want), path


def test_handler_on_route_with_plugins(gateway):
    g = gateway(lua_config([
        {"match": {"prefix": "/"}, "plugins": [plugin("t_ctx_set")],
         "handler": handler('return 200, tostring(req.ctx.who)')},
    ]))
    r = request(g.port, "GET", "/")
    assert (r.status, r.body) == (200, b"set-by-t_ctx_set")


# --------------------------------------------------------------------------
# req

FIELDS = handler("""
  local h = req:headers()
  local names_lower = true
  for k in pairs(h) do if k ~= k:lower() then names_lower = false end end
  return 200, gw.json.encode({
    method = req.method, path = req.path, query = req.query,
    remote_addr = req.remote_addr, ctx_type = type(req.ctx),
    mixed = req:header("X-Mixed-Case"), lower = req:header("x-mixed-case"),
    missing = req:header("x-not-sent") == nil,
    h_mixed = h["x-mixed-case"], h_host = h["host"], names_lower = names_lower,
  }), { ["Content-Type"] = "application/json" }
""")


def test_req_fields_and_header_reads(gateway):
    g = gateway(lua_config([{"match": {"prefix": "/f/"}, "handler": FIELDS}]))
    r = request(g.port, "POST", "/f/a/b?x=1&y=two", body=b"ignored",
                headers=[("X-Mixed-Case", "Value 1")], host="fields.example")
    assert r.status == 200, r
    d = r.json()
    assert d["method"] == "POST"
    assert d["path"] == "/f/a/b"
    assert d["query"] == "x=1&y=two"
    assert d["remote_addr"] == "127.0.0.1"
    assert d["ctx_type"] == "table"
    assert d["mixed"] == "Value 1" and d["lower"] == "Value 1"
    assert d["missing"] is True
    assert d["h_mixed"] == "Value 1" and d["h_host"] == "fields.example"
    assert d["names_lower"] is True
    d = request(g.port, "GET", "/f/").json()
    assert d["method"] == "GET" and d["path"] == "/f/" and d["query"] == ""


def test_ctx_is_shared_by_the_routes_plugins(gateway, upstream):
    g = gateway(lua_config([route([
        plugin("t_ctx_get"), plugin("t_ctx_set"),
        hook(access='req.ctx.n = req.ctx.n + 10',
             response='res:set_header("X-Ctx-Res", req.ctx.who .. "/" .. req.ctx.n)'),
    ])], upstream))
    r = request(g.port, "GET", "/echo")
    # t_ctx_set (200) runs before t_ctx_get (100) before t_hook (0)
    assert up_header(r.json(), "X-Ctx") == "set-by-t_ctx_set/1"
    assert r.header("X-Ctx-Res") == "set-by-t_ctx_set/11"
    # a fresh ctx for the next request
    r = request(g.port, "GET", "/echo")
    assert up_header(r.json(), "X-Ctx") == "set-by-t_ctx_set/1"


def test_set_and_remove_header_reach_the_upstream(gateway, upstream):
    g = gateway(lua_config([route([hook(access="""
        req:set_header("X-Added", "yes")
        req:set_header("X-Replace", "new")
        req:set_header("X-Number", 42)
        req:remove_header("X-Secret")
        req:remove_header("X-Never-Sent")
        local h = req:headers()
        req:set_header("X-Seen", table.concat({ tostring(req:header("x-added")),
          tostring(req:header("X-SECRET")), tostring(h["x-replace"]),
          tostring(h["x-secret"]) }, ","))
    """)])], upstream))
    r = request(g.port, "GET", "/echo", headers=[("X-Replace", "old"), ("X-Secret", "s3"),
                                                 ("X-Kept", "k")])
    assert r.status == 200, r
    d = r.json()
    assert up_header(d, "X-Added") == "yes"
    assert up_headers(d, "X-Replace") == ["new"]
    assert up_header(d, "X-Number") == "42"
    assert up_headers(d, "X-Secret") == []
    assert up_header(d, "X-Kept") == "k"
    assert up_header(d, "X-Seen") == "yes,nil,new,nil"


def test_headers_table_names_are_lower_case_at_any_length(gateway, upstream):
    long = "X-" + "Long" * 75  # 302 bytes
    g = gateway(lua_config([route([hook(access="""
        local h = req:headers()
        local n = 0
        for k, v in pairs(h) do
          if #k > 256 then n = n + 1; req:set_header("X-Long-Seen", k == k:lower() and v or "upper") end
        end
        req:set_header("X-Long-Count", n)
    """)])], upstream))
    r = request(g.port, "GET", "/echo", headers=[(long, "v1")])
    assert r.status == 200, r
    d = r.json()
    assert up_header(d, "X-Long-Count") == "1"
    assert up_header(d, "X-Long-Seen") == "v1"


def test_set_header_with_a_list_sends_one_field_per_value(gateway, upstream):
    g = gateway(lua_config([route([hook(access="""
        req:set_header("X-Group", { "g1", "g2", 3 })
        req:set_header("X-Twice", { "a", "b" })
        req:set_header("X-Twice", "once")          -- a plain set replaces all
        req:set_header("X-Gone", { "a", "b" })
        req:remove_header("X-Gone")
        req:set_header("X-Empty", {})              -- an empty list removes
        req:set_header("X-Replace", { "n1", "n2" })
        local crlf = string.char(13, 10)
        local ok, err = pcall(req.set_header, req, "X-Bad", { "ok", "bad" .. crlf .. "X-Inj: 1" })
        local h = req:headers()
        req:set_header("X-Seen", table.concat({ req:header("x-group"), h["x-group"],
          h["x-twice"], tostring(h["x-gone"]), tostring(ok), tostring(req:header("x-bad")),
          tostring(err):match("CR, LF or NUL") or tostring(err) }, "|"))
    """, response="""
        res:set_header("X-Res", { "r1", "r2" })
    """)])], upstream))
    r = request(g.port, "GET", "/echo", headers=[("X-Replace", "old"), ("X-Empty", "e"),
                                                 ("X-Gone", "g")])
    assert r.status == 200, r
    d = r.json()
    assert up_headers(d, "X-Group") == ["g1", "g2", "3"]
    assert up_headers(d, "X-Twice") == ["once"]
    assert up_headers(d, "X-Gone") == []
    assert up_headers(d, "X-Empty") == []
    assert up_headers(d, "X-Replace") == ["n1", "n2"]
    assert up_headers(d, "X-Bad") == [] and up_headers(d, "X-Inj") == []
    assert up_header(d, "X-Seen") == "g1|g1, g2, 3|once|nil|false|nil|CR, LF or NUL"
    assert r.headers_all("X-Res") == ["r1", "r2"]


def _hex_digest_lua():
    return ('local function hex(s) return (s:gsub(".", function(c) '
            'return string.format("%02x", c:byte()) end)) end ')


BODY_SIZES = [0, 1, 1000, 65537, 700 * 1024]


def test_req_body_in_access_then_forwarded(gateway, upstream):
    g = gateway(lua_config([
        {"match": {"path": "/echo-body"}, "handler": handler("return 200, req:body()")},
        route([hook(access=_hex_digest_lua() + """
            local b = req:body()
            local again = req:body()
            req:set_header("X-Body-Len", #b)
            req:set_header("X-Body-Sha", hex(gw.crypto.digest("sha256", b)))
            req:set_header("X-Body-Again", tostring(again == b))
        """)], match={"prefix": "/"}),
    ], upstream, limits={"max_body_bytes": 1024 * 1024}))
    for n in BODY_SIZES:
        body = bytes((i * 7 + n) % 251 for i in range(n))
        r = request(g.port, "POST", "/echo-body", body=body)
        assert r.status == 200, (n, r)
        assert r.body == body, n
        r = request(g.port, "POST", "/upload", body=body)
        assert r.status == 200, (n, r)
        d = r.json()
        assert d["length"] == n and d["sha256"] == hashlib.sha256(body).hexdigest(), n
        hs = {k.lower(): v for k, v in d["headers"]}
        assert hs["x-body-len"] == str(n)
        assert hs["x-body-sha"] == hashlib.sha256(body).hexdigest()
        assert hs["x-body-again"] == "true"
    # chunked request bodies too
    body = b"c" * 100000
    r = request(g.port, "POST", "/echo-body", body=body, chunked=True)
    assert r.status == 200 and r.body == body
    # a GET without a body reads as ""
    r = request(g.port, "GET", "/echo-body")
    assert r.status == 200 and r.body == b""


def test_req_body_over_max_body_bytes_is_413(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/echo-body"}, "handler": handler("return 200, req:body()")},
    ], limits={"max_body_bytes": 10000}))
    assert_json_error(request(g.port, "POST", "/echo-body", body=b"x" * 20000), 413)
    assert_json_error(request(g.port, "POST", "/echo-body", body=b"x" * 20000, chunked=True),
                      413)
    r = request(g.port, "POST", "/echo-body", body=b"y" * 10000)
    assert r.status == 200 and r.body == b"y" * 10000


def test_req_body_waits_without_blocking_others(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/echo-body"},
         "handler": handler('gw.cache:set("reading", "yes"); return 200, req:body()')},
        {"match": {"path": "/fast"},
         "handler": handler('return 200, "fast " .. tostring(gw.cache:get("reading"))')},
    ]))
    with Client(g.port) as slow:
        slow.send(b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        # the slow request is inside req:body(); others are served meanwhile
        wait_for(lambda: request(g.port, "GET", "/fast").body == b"fast yes", timeout=3,
                 what="the slow request to reach req:body()")
        t0 = time.monotonic()
        r = request(g.port, "GET", "/fast")
        assert r.body == b"fast yes" and time.monotonic() - t0 < 0.5
        slow.send(b"world")
        r = slow.read_response()
        assert (r.status, r.body) == (200, b"helloworld")


def test_set_path_reaches_the_upstream(gateway, upstream):
    g = gateway(lua_config([route([hook(access="""
        req:set_path("/new" .. req.path:sub(5))
        req:set_header("X-Path-Now", req.path)
    """)], match={"prefix": "/old/"})], upstream))
    d = request(g.port, "GET", "/old/x/y?q=1&r=2").json()
    assert d["path"] == "/new/x/y?q=1&r=2"
    assert up_header(d, "X-Path-Now") == "/new/x/y"


def test_set_upstream_switches_upstream(gateway, upstream_factory):
    u0, u1 = upstream_factory(), upstream_factory()
    ups = {"u0": {"servers": [u0.addr]}, "u1": {"servers": [u1.addr]}}
    g = gateway(lua_config([route([hook(access="""
        local to = req:header("x-to")
        if to then req:set_upstream(to) end
    """)], upstream="u0")], upstreams=ups))
    r = request(g.port, "GET", "/echo")
    assert int(r.header("X-Upstream-Port")) == u0.port
    r = request(g.port, "GET", "/echo", headers=[("X-To", "u1")])
    assert r.status == 200 and int(r.header("X-Upstream-Port")) == u1.port
    r = request(g.port, "GET", "/echo", headers=[("X-To", "u0")])
    assert int(r.header("X-Upstream-Port")) == u0.port


def test_respond_short_circuits(gateway, upstream):
    g = gateway(lua_config([
        route([plugin("t_order_lo"), plugin("t_respond", status=403),
               hook(access='gw.cache:set("later-plugin-ran", "yes")')],
              match={"prefix": "/deny/"}),
        route([plugin("t_respond", status=200, body=Raw('{ "a", "b", "c" }'))],
              match={"prefix": "/ok/"}),
        {"match": {"path": "/probe"},
         "handler": handler('return 200, tostring(gw.cache:get("later-plugin-ran"))')},
    ], upstream))
    r = request(g.port, "GET", "/deny/echo")
    assert r.status == 403, r
    assert r.body == b"denied by t_respond"
    assert r.header("X-Short") == "t_respond"
    assert r.header("Content-Type") == "text/x-test"
    r = request(g.port, "POST", "/ok/echo", body=b"payload")
    assert (r.status, r.body) == (200, b"abc")
    assert request(g.port, "GET", "/probe").body == b"nil"
    st = upstream.stats()
    assert st["requests"] == 0 and st["connections"] == 0, st


def test_response_phase_edits_reach_the_client(gateway, upstream):
    g = gateway(lua_config([route([hook(response="""
        local before = res.status .. "/" .. tostring(res:header("x-upstream-port"))
            .. "/" .. tostring(res:headers()["x-upstream-port"])
        if res.status == 404 then res.status = 200 else res.status = 299 end
        res:set_header("X-Added", "by-response")
        res:set_header("Content-Type", "text/x-edited")
        res:remove_header("X-Upstream-Conn")
        res:set_header("X-Before", before)
        res:set_header("X-Status-Now", res.status)
    """)])], upstream))
    r = request(g.port, "GET", "/echo")
    assert r.status == 299, r
    assert r.header("X-Added") == "by-response"
    assert r.headers_all("Content-Type") == ["text/x-edited"]
    assert not r.has("X-Upstream-Conn")
    assert r.header("X-Before") == "200/%d/%d" % (upstream.port, upstream.port)
    assert r.header("X-Status-Now") == "299"
    assert r.json()["path"] == "/echo"          # the body is untouched
    r = request(g.port, "GET", "/status/404")
    assert r.status == 200 and r.header("X-Before").startswith("404/")
    assert r.json() == {"status": 404}


# --------------------------------------------------------------------------
# every phase may yield

def test_every_phase_may_sleep(gateway, upstream):
    g = gateway(lua_config([
        route([hook(access='gw.sleep(0.3); req:set_header("X-Slept", "access")',
                    response='gw.sleep(0.3); res:set_header("X-Slept-Res", "response")',
                    log='gw.sleep(2); gw.cache:set("log-done", req.path .. " " .. res.status)')],
              match={"prefix": "/s/"}),
        {"match": {"path": "/probe"},
         "handler": handler('return 200, tostring(gw.cache:get("log-done"))')},
    ], upstream))
    t0 = time.monotonic()
    r = request(g.port, "GET", "/s/echo")
    took = time.monotonic() - t0
    assert r.status == 200, r
    assert up_header(r.json(), "X-Slept") == "access"
    assert r.header("X-Slept-Res") == "response"
    assert 0.55 <= took < 1.5, took        # both sleeps, not the log phase's
    assert request(g.port, "GET", "/probe").body == b"nil"   # the log phase still sleeps
    wait_for(lambda: request(g.port, "GET", "/probe").body == b"/s/echo 200", timeout=5,
             what="the log phase to finish its sleep")


LOG_SLEEP = 'gw.sleep(2); gw.cache:set("logs", (gw.cache:get("logs") or 0) + 1)'


def test_log_phase_that_sleeps_does_not_delay_the_client(gateway, upstream):
    g = gateway(lua_config([
        route([hook(log=LOG_SLEEP)], match={"prefix": "/up/"}),
        {"match": {"path": "/h"}, "plugins": [hook(log=LOG_SLEEP)],
         "handler": handler('return 200, "handled"')},
        {"match": {"path": "/probe"},
         "handler": handler('return 200, tostring(gw.cache:get("logs"))')},
    ], upstream))
    for path in ("/up/echo", "/h"):
        with Client(g.port) as c:
            t0 = time.monotonic()
            c.request("GET", path)
            r1 = c.read_response()
            t1 = time.monotonic() - t0
            # the next request on the same connection is not held back either
            c.request("GET", path)
            r2 = c.read_response()
            t2 = time.monotonic() - t0
        assert r1.status == 200 and r2.status == 200, (r1, r2)
        assert t1 < 0.5, (path, t1)
        assert t2 < 0.8, (path, t2)
    assert request(g.port, "GET", "/probe").body == b"nil"
    # and every log phase did run to its end
    wait_for(lambda: request(g.port, "GET", "/probe").body == b"4", timeout=5,
             what="the four log phases to finish")


def test_stop_while_a_log_phase_waits(gateway):
    """SIGTERM drains in-flight work: a log phase that is still waiting is
    finished (well within drain_timeout), then moongate exits 0 (and, under
    ASan, frees everything)."""
    g = gateway(lua_config([
        {"match": {"path": "/h"}, "handler": handler('return 200, "handled"'),
         "plugins": [hook(log='gw.sleep(0.5); gw.log("warn", "log phase finished for ", '
                              'req.path)')]},
    ], limits={"drain_timeout": 5}))
    assert request(g.port, "GET", "/h").status == 200
    t0 = time.monotonic()
    rc = g.stop()
    assert rc == 0, (rc, g.stderr_text()[-3000:])
    assert time.monotonic() - t0 < 4
    assert "log phase finished for /h" in g.stderr_text()


def test_handler_may_sleep(gateway):
    g = gateway(lua_config([
        {"match": {"path": "/h"}, "handler": handler('gw.sleep(0.2); return 200, "late"')},
    ]))
    t0 = time.monotonic()
    r = request(g.port, "GET", "/h")
    assert (r.status, r.body) == (200, b"late")
    assert 0.18 <= time.monotonic() - t0 < 1.0


# --------------------------------------------------------------------------
# gw.sleep, gw.now, gw.log, gw.cache

def test_sleep_zero_fractional_and_now(gateway):
    g = gateway(lua_config([{"match": {"path": "/t"}, "handler": handler("""
        local t0 = gw.now()
        assert(gw.sleep(0) ~= false)
        local t1 = gw.now()
        gw.sleep(0.25)
        local t2 = gw.now()
        local x = 0
        for i = 1, 200000 do x = x + i end
        local t3 = gw.now()
        return 200, gw.json.encode({ t0 = t0, t1 = t1, t2 = t2, t3 = t3,
                                     ty = math.type(t0) })
    """)}]))
    wall0 = time.time()
    t0 = time.monotonic()
    r = request(g.port, "GET", "/t")
    took = time.monotonic() - t0
    assert r.status == 200, r
    d = r.json()
    assert d["ty"] == "float"
    assert abs(d["t0"] - wall0) < 2.0, (d, wall0)    # loop time: seconds since the epoch
    assert d["t0"] <= d["t1"] < d["t0"] + 0.2
    assert 0.2 <= d["t2"] - d["t1"] < 0.6, d
    assert d["t3"] == d["t2"], "gw.now() is the cached loop time while Lua runs"
    assert 0.24 <= took < 1.0, took


def test_many_sleep_zero_calls(gateway):
    g = gateway(lua_config([{"match": {"path": "/z"}, "handler": handler("""
        for i = 1, 1000 do gw.sleep(0) end
        return 200, "done"
    """)}]))
    t0 = time.monotonic()
    assert request(g.port, "GET", "/z").body == b"done"
    assert time.monotonic() - t0 < 2.0


def test_gw_log_goes_to_the_error_log(gateway):
    g = gateway(lua_config([{"match": {"path": "/l"}, "handler": handler("""
        gw.log("warn", "marker-", 42, "-", true)
        gw.log("error", "second-marker")
        return 200, "logged"
    """)}]))
    assert request(g.port, "GET", "/l").body == b"logged"
    wait_for(lambda: "marker-42-true" in g.stderr_text() and
             "second-marker" in g.stderr_text(), timeout=3, what="gw.log lines")
    line = [x for x in g.stderr_text().splitlines() if "marker-42-true" in x][0]
    assert "warn" in line.lower()


CACHE_ROUTES = [
    {"match": {"path": "/set"}, "handler": handler("""
        gw.cache:set(req:header("x-k"), req:header("x-v"), tonumber(req:header("x-ttl")))
        return 200, "set"
    """)},
    {"match": {"path": "/get"},
     "handler": handler('return 200, tostring(gw.cache:get(req:header("x-k")))')},
    {"match": {"path": "/del"},
     "handler": handler('gw.cache:delete(req:header("x-k")); return 200, "deleted"')},
]


def test_cache_is_shared_across_requests_with_ttl(gateway):
    g = gateway(lua_config(CACHE_ROUTES))

    def get(k):
        return request(g.port, "GET", "/get", headers=[("X-K", k)]).body.decode()

    def put(k, v, ttl=None):
        hs = [("X-K", k), ("X-V", v)] + ([("X-Ttl", str(ttl))] if ttl is not None else [])
        assert request(g.port, "GET", "/set", headers=hs).body == b"set"

    assert get("a") == "nil"
    put("a", "1")
    put("b", "2", ttl=0.4)
    put("c", "3", ttl=30)
    for _ in range(3):                 # separate connections, separate requests
        assert get("a") == "1" and get("b") == "2" and get("c") == "3"
    time.sleep(0.8)                    # b's TTL runs out (that is what is tested)
    assert get("b") == "nil"
    assert get("a") == "1" and get("c") == "3"
    put("a", "one")
    assert get("a") == "one"
    request(g.port, "GET", "/del", headers=[("X-K", "a")])
    assert get("a") == "nil" and get("c") == "3"


def test_cache_is_shared_between_concurrent_requests(gateway):
    g = gateway(lua_config(CACHE_ROUTES + [
        {"match": {"path": "/wait"}, "handler": handler("""
            gw.cache:set("waiting", "1")
            local deadline = gw.now() + 3
            while gw.cache:get("go") == nil and gw.now() < deadline do gw.sleep(0.02) end
            return 200, tostring(gw.cache:get("go"))
        """)},
    ]))
    out = {}

    def waiter():
        out["r"] = request(g.port, "GET", "/wait")

    t = threading.Thread(target=waiter)
    t.start()
    wait_for(lambda: request(g.port, "GET", "/get", headers=[("X-K", "waiting")]).body == b"1",
             timeout=3, what="the waiter to start polling the cache")
    request(g.port, "GET", "/set", headers=[("X-K", "go"), ("X-V", "now")])
    t.join(5)
    assert not t.is_alive()
    assert out["r"].body == b"now"
