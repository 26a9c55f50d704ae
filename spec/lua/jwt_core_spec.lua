-- lua/moongate/jwt_core.lua through both plugins that use it: jwt and
-- redis_credentials apply one set of rules (alg allow-list, none refused,
-- exp/nbf/iat with leeway, the verified-token cache). Runs inside the real
-- runtime (moongate --script busted).
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/lua"
local root = here .. "/../.."
local runtime = require "moongate.runtime"
local core = require "moongate.jwt_core"
local jwt = dofile(root .. "/plugins/jwt.lua")
local rc = dofile(root .. "/plugins/redis_credentials.lua")

local b64u = gw.base64.url_encode

local function hs(alg, secret, claims, header)
  local md = ({ HS256 = "sha256", HS384 = "sha384", HS512 = "sha512" })[alg]
  header = header or { alg = alg, typ = "JWT" }
  local input = b64u(gw.json.encode(header)) .. "." .. b64u(gw.json.encode(claims))
  return input .. "." .. b64u(gw.crypto.hmac(md, secret, input))
end

local function jconf(t)
  t.secret = t.secret or "k"
  assert(runtime.check_conf(jwt, t))
  return t
end

local function rconf(t)
  t.secret = t.secret or "k"
  assert(runtime.check_conf(rc, t))
  return t
end

local function fake_req(t)
  local req = { ctx = t.ctx or {}, headers = t.headers or {}, cookies = t.cookies or {},
                method = "GET", path = "/", query = "" }
  function req:header(n) return self.headers[n:lower()] end
  function req:set_header(n, v) self.headers[n:lower()] = v end
  function req:remove_header(n) self.headers[n:lower()] = nil end
  function req:cookie(n) return self.cookies[n] end
  function req:remove_cookie(n) local had = self.cookies[n] ~= nil self.cookies[n] = nil return had end
  function req:respond(status, body, headers)
    self.status, self.body, self.rheaders = status, body, headers
    return true
  end
  return req
end

describe("jwt_core: one set of rules for jwt and redis_credentials", function()
  local now = math.floor(gw.now())

  it("expires a token at exp + leeway in both plugins (RFC 7519: now must be before exp)", function()
    for _, case in ipairs {
      { jwt = jconf {}, alg = "HS256" },
      { jwt = rconf {}, alg = "HS512" },
    } do
      local c = case.jwt
      assert.same({ nil, "token expired" },
        { core.verify(c, hs(case.alg, "k", { sid = "s", exp = now })) })
      assert.is_table((core.verify(c, hs(case.alg, "k", { sid = "s", exp = now + 5 }))))
    end
    local c = rconf { leeway = 10 }
    assert.is_table((core.verify(c, hs("HS512", "k", { sid = "s", exp = now - 5 }))))
  end)

  it("refuses a non-numeric nbf and a future iat in redis_credentials too", function()
    local c = rconf {}
    local exp = now + 60
    assert.same({ nil, "nbf is not a number" },
      { core.verify(c, hs("HS512", "k", { sid = "s", exp = exp, nbf = "soon" })) })
    assert.same({ nil, "token not valid yet" },
      { core.verify(c, hs("HS512", "k", { sid = "s", exp = exp, nbf = now + 30 })) })
    assert.same({ nil, "token issued in the future" },
      { core.verify(c, hs("HS512", "k", { sid = "s", exp = exp, iat = now + 30 })) })
    assert.is_table((core.verify(rconf { leeway = 60 },
      hs("HS512", "k", { sid = "s", exp = exp, iat = now + 30 }))))
  end)

  it("redis_credentials requires exp unless check_exp = false; jwt does not", function()
    assert.same({ nil, "token has no exp" }, { core.verify(rconf {}, hs("HS512", "k", { sid = "s" })) })
    local off = rconf { check_exp = false }
    assert.is_table((core.verify(off, hs("HS512", "k", { sid = "s" }))))
    assert.is_table((core.verify(off, hs("HS512", "k", { sid = "s", exp = now - 3600 }))))
    assert.is_table((core.verify(jconf {}, hs("HS256", "k", { sub = "s" }))))
  end)

  it("keeps the defaults apart: HS256 for jwt, HS512 for redis_credentials", function()
    local t256, t512 = hs("HS256", "k", { exp = now + 60 }), hs("HS512", "k", { exp = now + 60 })
    assert.is_table((core.verify(jconf {}, t256)))
    assert.same({ nil, "algorithm not allowed" }, { core.verify(jconf {}, t512) })
    assert.is_table((core.verify(rconf {}, t512)))
    assert.same({ nil, "algorithm not allowed" }, { core.verify(rconf {}, t256) })
  end)

  it("refuses alg none in any spelling and key confusion in redis_credentials", function()
    local c = rconf { algorithms = { "HS256", "HS512" } }
    local body = b64u(gw.json.encode { sid = "s", exp = now + 60 })
    for _, spelling in ipairs { "none", "None", "NONE", "nOnE" } do
      local h = b64u(gw.json.encode { alg = spelling })
      assert.same({ nil, "unsigned tokens are not accepted" }, { core.verify(c, h .. "." .. body .. ".") })
    end
    local ok, err = runtime.check_conf(rc, { secret = "k", algorithms = { "none" } })
    assert.is_nil(ok)
    assert.matches("unsupported algorithm", err)
    -- an RS256 token is not checked with the secret
    local h = b64u('{"alg":"RS256"}')
    local input = h .. "." .. body
    assert.same({ nil, "algorithm not allowed" },
      { core.verify(c, input .. "." .. b64u(gw.crypto.hmac("sha256", "k", input))) })
  end)

  it("takes a JWK only for verifying: use \"sig\" and key_ops with \"verify\" (RFC 7517 4.2, 4.3)",
     function()
    local x = b64u(string.rep("\1", 32))
    local function jwk(extra)
      local k = { kty = "OKP", crv = "Ed25519", x = x }
      for name, v in pairs(extra) do k[name] = v end
      return core.jwk_to_key(k)
    end
    assert.is_table(jwk {})
    assert.is_table(jwk { use = "sig" })
    assert.is_table(jwk { key_ops = { "verify" } })
    assert.is_table(jwk { key_ops = { "sign", "verify" } })
    for _, bad in ipairs { { use = "enc" }, { key_ops = { "encrypt" } }, { key_ops = {} },
                           { key_ops = "verify" }, { key_ops = { "sign" } },
                           { use = "sig", key_ops = { "decrypt", "wrapKey" } } } do
      assert.is_nil((jwk(bad)), gw.json.encode(bad))
    end
  end)

  it("redis_credentials takes the jwt plugin's public_key option (RFC 7515 A.2, RS256)", function()
    local n = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1"
      .. "Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpa"
      .. "SHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4"
      .. "LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"
    local pem = assert(core.jwk_to_key { kty = "RSA", e = "AQAB", n = n }).pem
    local token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6"
      .. "Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__d"
      .. "zERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZ"
      .. "cAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_e"
      .. "SN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6"
      .. "LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
    local c = { public_key = pem, algorithms = { "RS256" }, check_exp = false, claim = "iss" }
    assert(runtime.check_conf(rc, c))
    local claims, err = core.verify(c, token)
    assert.is_table(claims, err)
    assert.equals("joe", claims.iss)
    -- the 2011 exp counts once check_exp is on
    c = { public_key = pem, algorithms = { "RS256" } }
    assert(runtime.check_conf(rc, c))
    assert.same({ nil, "token expired" }, { core.verify(c, token) })
    -- HS512 (the default) with only a public key: refused at load
    local ok, cerr = runtime.check_conf(rc, { public_key = pem })
    assert.is_nil(ok)
    assert.matches("secret", cerr)
  end)

  it("takes one algorithm as a string", function()
    local c = jconf { algorithms = "HS384" }
    assert.same({ "HS384" }, c.algorithms)
    assert.is_table((core.verify(c, hs("HS384", "k", { a = 1 }))))
    assert.is_nil((runtime.check_conf(rc, { secret = "k", algorithms = "none" })))
  end)

  it("checks issuer and audience for redis_credentials as for jwt", function()
    local c = rconf { issuer = "https://id", audience = { "api" } }
    local good = { sid = "s", exp = now + 60, iss = "https://id", aud = { "web", "api" } }
    assert.is_table((core.verify(c, hs("HS512", "k", good))))
    good.iss = "https://evil"
    assert.same({ nil, "issuer not allowed" }, { core.verify(c, hs("HS512", "k", good)) })
  end)
end)

describe("jwt_core: the verified-token cache", function()
  local now = math.floor(gw.now())

  it("caches for at most exp + leeway - now and re-checks exp on every hit", function()
    local c = jconf { cache_ttl = 300 }
    local token = hs("HS256", "k", { sub = "a", exp = now + 60 })
    local claims = assert(core.authenticate(c, token))
    assert.equals(claims, gw.cache:get(c._jwt.id .. token))
    -- a stale entry (as if the clock had moved past exp) is refused and dropped
    gw.cache:set(c._jwt.id .. token, { sub = "a", exp = now - 1 }, 300)
    assert.same({ nil, "token expired" }, { core.authenticate(c, token) })
    assert.is_nil(gw.cache:get(c._jwt.id .. token))
  end)

  it("an entry expires with the token", function()
    local c = rconf { cache_ttl = 300 }
    local exp = gw.now() + 0.2
    local token = hs("HS512", "k", { sid = "s", exp = exp })
    assert.is_table((core.authenticate(c, token)))
    assert.is_table(gw.cache:get(c._jwt.id .. token))
    gw.sleep(0.3)
    assert.is_nil(gw.cache:get(c._jwt.id .. token))
    assert.same({ nil, "token expired" }, { core.authenticate(c, token) })
  end)

  it("is off with cache_ttl = 0, and keys differ per route configuration", function()
    local off = jconf { cache_ttl = 0 }
    local token = hs("HS256", "k", { sub = "a", exp = now + 60 })
    assert.is_table((core.authenticate(off, token)))
    assert.is_nil(gw.cache:get(off._jwt.id .. token))
    local a, b = jconf {}, jconf {}
    assert.are_not.equal(a._jwt.id, b._jwt.id)
    -- a token cached on a lenient route is not accepted by a strict one
    local lenient = jconf { cache_ttl = 60 }
    local strict = jconf { cache_ttl = 60, audience = "api" }
    assert.is_table((core.authenticate(lenient, token)))
    assert.same({ nil, "audience not allowed" }, { core.authenticate(strict, token) })
  end)
end)

describe("redis_credentials: access without Redis", function()
  it("answers 401 JSON without a verified token or a key", function()
    local c = { }
    assert(runtime.check_conf(rc, c))
    local req = fake_req {}
    rc.access(c, req)
    assert.equals(401, req.status)
    assert.equals("application/json", req.rheaders["Content-Type"])
    assert.matches("no verified token", gw.json.decode(req.body).error)
  end)

  it("reads the cookie as base64 of the JWT (a trailing newline, quotes inside), or a bare JWT",
     function()
    -- an unknown redis name answers 503: the token got as far as the lookup
    local c = { secret = "k", redis = "no-such-redis" }
    assert(runtime.check_conf(rc, c))
    local token = hs("HS512", "k", { sid = "s1", exp = math.floor(gw.now()) + 60 })
    for _, v in ipairs { gw.base64.encode(token), gw.base64.encode(token .. "\n"), token,
                         gw.base64.encode('"' .. token .. '"'),
                         gw.base64.encode('"' .. token .. '"\n') } do
      local req = fake_req { cookies = { Authorization = v } }
      rc.access(c, req)
      assert.equals(503, req.status, v)
    end
    for _, v in ipairs { "!!", gw.base64.encode("a.b.c"), "", gw.base64.encode('"'),
                         gw.base64.encode('"' .. token) } do
      local req = fake_req { cookies = { Authorization = v } }
      rc.access(c, req)
      assert.equals(401, req.status, v)
    end
  end)

  it("fails closed with 503 when the redis name is unknown", function()
    local c = { redis = "no-such-redis" }
    assert(runtime.check_conf(rc, c))
    local req = fake_req { ctx = { jwt = { sid = "s1" } } }
    rc.access(c, req)
    assert.equals(503, req.status)
    assert.same({ error = "session store unavailable" }, gw.json.decode(req.body))
    assert.equals("application/json", req.rheaders["Content-Type"])
  end)
end)

describe("token extraction (plain finds, no per-byte patterns)", function()
  local util = require "moongate.plugin_util"

  it("trims blanks only at the ends", function()
    assert.equal("abc", util.trim("abc"))
    assert.equal("a b", util.trim(" \t a b\r\n"))
    assert.equal("", util.trim(" \n "))
    assert.equal("", util.trim(""))
  end)

  it("reads Authorization: Bearer in any case, one token, blanks around it", function()
    local function bearer(v) return core.bearer(fake_req { headers = { authorization = v } }) end
    assert.equal("t.o.k", bearer("Bearer t.o.k"))
    assert.equal("t.o.k", bearer("bEaReR    t.o.k  "))
    assert.is_nil(bearer("Bearer"))
    assert.is_nil(bearer("Bearer   "))
    assert.is_nil(bearer("Bearer a b"))
    assert.is_nil(bearer("Bearer a\tb"))
    assert.is_nil(bearer("Bearerx t.o.k"))
    assert.is_nil(bearer("Basic dXNlcjpwYXNz"))
    assert.is_nil(core.bearer(fake_req {}))
  end)

  it("redis_credentials takes a bare JWT or base64 of one, newline and all", function()
    local token = hs("HS512", "k", { sid = "s1", exp = gw.now() + 60 })
    for _, cookie in ipairs { token, gw.base64.encode(token), gw.base64.encode(token .. "\n") } do
      local c = rconf {}
      local req = fake_req { cookies = { Authorization = cookie } }
      assert.equal(token, rc._token_of(c, req))
    end
  end)
end)

describe("token shape (split with plain finds, errors as the shape pattern gives them)", function()
  -- verify_jws splits at the dots and lets the base64url decoder check the
  -- alphabet; each malformed shape must still get the error the pattern
  -- ^([%w_-]+)%.([%w_-]*)%.([%w_-]*)$ and the checks after it give.
  local c = jconf { algorithms = { "HS256" } }
  local h = b64u('{"alg":"HS256","typ":"JWT"}')
  local p = b64u('{"sub":"x"}')
  local input = h .. "." .. p
  local s = b64u(gw.crypto.hmac("sha256", "k", input))
  local function hdr(t) return b64u(gw.json.encode(t)) end
  local cases = {
    { input .. "." .. s, nil },
    { "", "malformed token" },
    { "a.b", "malformed token" },
    { input .. "." .. s .. ".x", "malformed token" },
    { "." .. p .. "." .. s, "malformed token" },                 -- empty header
    { input .. "." .. s .. "=", "malformed token" },             -- padding: the pattern refuses it
    { gw.base64.encode('{"alg":"HS256" }') .. "." .. p .. "." .. s, "malformed token" }, -- padded
    { h .. "!." .. p .. "." .. s, "malformed token" },
    { input .. "." .. s:sub(1, 5) .. "+" .. s:sub(7), "malformed token" },
    { input .. "." .. s:sub(1, 5) .. "/" .. s:sub(7), "malformed token" },
    { h .. "." .. p .. "\xc3\xa9." .. s, "malformed token" },
    { h .. "." .. p .. " ." .. s, "malformed token" },
    { hdr { alg = "RS256" } .. "." .. p .. ".!!", "malformed token" }, -- shape before alg
    { "abcde." .. p .. "." .. s, "malformed token header" },      -- 5 chars: not base64
    { b64u("not json") .. "." .. p .. "." .. s, "malformed token header" },
    { b64u('"str"') .. "." .. p .. "." .. s, "malformed token header" },
    { b64u("[1]") .. "." .. p .. "." .. s, "token has no alg" },
    { hdr { alg = "NoNe" } .. "." .. p .. ".", "unsigned tokens are not accepted" },
    { hdr { alg = "none " } .. "." .. p .. ".", "algorithm not allowed" },
    { hdr { alg = "RS256" } .. "." .. p .. "." .. s, "algorithm not allowed" },
    { hdr { alg = "HS256", crit = { "x" } } .. "." .. p .. "." .. s, "unsupported critical header" },
    { input .. ".", "bad signature" },
    { input .. ".abcde", "bad signature" },                     -- 5 chars: not base64
    { h .. ".abcde." .. s, "malformed token payload" },
    { h .. ".." .. s, "bad signature" },                        -- empty payload, MAC of h.
    { input .. "." .. b64u(("x"):rep(32)), "bad signature" },
  }
  for i, case in ipairs(cases) do
    it(("case %d: %s"):format(i, case[2] or "valid"), function()
      local claims, err = core.verify(c, case[1])
      if case[2] == nil then
        assert.is_table(claims)
        assert.equal("x", claims.sub)
      else
        assert.same({ nil, case[2] }, { claims, err })
      end
    end)
  end

  it("parses a header once it was in a verified token, and checks it every time", function()
    local m = jconf { algorithms = { "HS256" } }
    local forged = input .. "." .. b64u(("x"):rep(32))
    assert.same({ nil, "bad signature" }, { core.verify(m, forged) })
    assert.is_nil(m._jwt.headers[h], "a forged token's header is not remembered")
    assert.is_table((core.verify(m, input .. "." .. s)))
    assert.same({ alg = "HS256", typ = "JWT" }, m._jwt.headers[h])
    -- the remembered header: still the signature, the payload and the claims
    assert.same({ nil, "bad signature" }, { core.verify(m, forged) })
    local p2 = b64u('{"sub":"y","exp":1}')
    local t2 = h .. "." .. p2 .. "." .. b64u(gw.crypto.hmac("sha256", "k", h .. "." .. p2))
    assert.same({ nil, "token expired" }, { core.verify(m, t2) })
    assert.same({ nil, "malformed token payload" }, { core.verify(m, h .. ".abcde." .. s) })
    assert.same({ nil, "malformed token" }, { core.verify(m, h .. ".e30." .. s .. "!") })
    -- a token of another route's conf (another key) is not helped by it
    local other = jconf { algorithms = { "HS256" }, secret = "other" }
    assert.same({ nil, "bad signature" }, { core.verify(other, input .. "." .. s) })
  end)

  it("remembers a bounded number of headers", function()
    local m = jconf { algorithms = { "HS256" } }
    for i = 1, 100 do
      local hi = b64u(gw.json.encode { alg = "HS256", n = i })
      local t = hi .. "." .. p .. "." .. b64u(gw.crypto.hmac("sha256", "k", hi .. "." .. p))
      assert.equal("x", core.verify(m, t).sub)
      assert.is_true(m._jwt.nheaders <= 32)
    end
  end)

  it("takes a valid token with an empty payload part as a bad payload, not a bad shape", function()
    local e = h .. "."
    local t = e .. "." .. b64u(gw.crypto.hmac("sha256", "k", e))
    assert.same({ nil, "token payload is not a JSON object" }, { core.verify(c, t) })
  end)
end)
