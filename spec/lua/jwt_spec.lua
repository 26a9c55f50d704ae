-- plugins/jwt.lua: the verification logic, with the published RFC 7515 and
-- RFC 8037 vectors and with tokens signed at test time by the openssl CLI.
-- Runs inside the real runtime (moongate --script busted), so gw is real.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec/lua"
local root = here .. "/../.."
local jwt = dofile(root .. "/plugins/jwt.lua")

local b64u = gw.base64.url_encode

local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -p " .. tmp))
teardown(function() os.execute("rm -rf " .. tmp) end)

local function sh(cmd)
  local ok = os.execute(cmd .. " 2>/dev/null")
  assert(ok, "command failed: " .. cmd)
end

local function readf(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function writef(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- { HS256 token maker }
local function hs(alg, secret, header, claims)
  local md = ({ HS256 = "sha256", HS384 = "sha384", HS512 = "sha512" })[alg]
  header = header or { alg = alg, typ = "JWT" }
  local input = b64u(gw.json.encode(header)) .. "." .. b64u(gw.json.encode(claims))
  return input .. "." .. b64u(gw.crypto.hmac(md, secret, input))
end

-- DER ECDSA-Sig-Value -> JOSE r || s
local function der_to_raw(der, half)
  local pos = 1
  local function read_tlv()
    local tag = der:byte(pos)
    local len = der:byte(pos + 1)
    pos = pos + 2
    if len >= 0x80 then
      local nb = len & 0x7f
      len = 0
      for _ = 1, nb do
        len = (len << 8) | der:byte(pos)
        pos = pos + 1
      end
    end
    local v = der:sub(pos, pos + len - 1)
    pos = pos + len
    return tag, v
  end
  local _, seq = read_tlv()
  der, pos = seq, 1
  local _, r = read_tlv()
  local _, s = read_tlv()
  local function fix(x)
    x = x:gsub("^%z+", "")
    return string.rep("\0", half - #x) .. x
  end
  return fix(r) .. fix(s)
end

-- Keys made once with the openssl CLI: name -> { priv, pub (PEM text), file }
local keys = {}
local function key(name, genargs)
  if keys[name] then return keys[name] end
  local priv, pub = tmp .. "/" .. name .. ".key", tmp .. "/" .. name .. ".pub"
  sh("openssl genpkey " .. genargs .. " -out " .. priv)
  sh("openssl pkey -in " .. priv .. " -pubout -out " .. pub)
  keys[name] = { priv = priv, pub = readf(pub), pubfile = pub }
  return keys[name]
end
local function rsa() return key("rsa", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048") end
local function p256() return key("p256", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256") end
local function p384() return key("p384", "-algorithm EC -pkeyopt ec_paramgen_curve:P-384") end
local function ed() return key("ed", "-algorithm ED25519") end

-- Signs header.claims with the openssl CLI.
local function ossl(alg, k, claims, header)
  header = header or { alg = alg }
  local input = b64u(gw.json.encode(header)) .. "." .. b64u(gw.json.encode(claims))
  local inf, sigf = tmp .. "/in", tmp .. "/sig"
  writef(inf, input)
  local bits = alg:match("%d+")
  if alg:match("^RS") then
    sh(("openssl dgst -sha%s -sign %s -out %s %s"):format(bits, k.priv, sigf, inf))
  elseif alg:match("^PS") then
    sh(("openssl dgst -sha%s -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest "
      .. "-sign %s -out %s %s"):format(bits, k.priv, sigf, inf))
  elseif alg:match("^ES") then
    sh(("openssl dgst -sha%s -sign %s -out %s %s"):format(bits, k.priv, sigf, inf))
  else
    sh(("openssl pkeyutl -sign -rawin -inkey %s -in %s -out %s"):format(k.priv, inf, sigf))
  end
  local sig = readf(sigf)
  if alg == "ES256" then sig = der_to_raw(sig, 32) end
  if alg == "ES384" then sig = der_to_raw(sig, 48) end
  return input .. "." .. b64u(sig)
end

local function conf(t)
  assert(jwt.check(t))
  return t
end

-- RFC 7515 appendix A: the common payload (iss "joe", exp 1300819380)
local RFC_PAYLOAD = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxl"
  .. "LmNvbS9pc19yb290Ijp0cnVlfQ"
local EVER = 1e10 -- leeway that makes the 2011 vectors unexpired

describe("jwt: RFC vectors", function()
  it("A.1 HS256", function()
    local token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9." .. RFC_PAYLOAD
      .. ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    local k = gw.base64.url_decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtM"
      .. "N3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
    local claims, err = jwt._verify(token, conf { secret = k, leeway = EVER })
    assert.is_table(claims, err)
    assert.equals("joe", claims.iss)
    assert.equals(1300819380, claims.exp)
    assert.is_true(claims["http://example.com/is_root"])
    -- the signature is checked first: the 2011 exp is what fails without leeway
    assert.same({ nil, "token expired" }, { jwt._verify(token, conf { secret = k }) })
    -- one flipped signature character
    local bad = token:sub(1, -2) .. "j"
    assert.same({ nil, "bad signature" }, { jwt._verify(bad, conf { secret = k, leeway = EVER }) })
    -- another secret
    assert.same({ nil, "bad signature" },
      { jwt._verify(token, conf { secret = "other", leeway = EVER }) })
  end)

  local rsa_jwk = {
    kty = "RSA", e = "AQAB",
    n = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1"
      .. "Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpa"
      .. "SHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4"
      .. "LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
  }

  it("A.2 RS256 with the published key, converted from its JWK", function()
    local token = "eyJhbGciOiJSUzI1NiJ9." .. RFC_PAYLOAD .. ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__d"
      .. "zERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZ"
      .. "cAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_e"
      .. "SN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6"
      .. "LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
    local k = assert(jwt._jwk_to_key(rsa_jwk))
    assert.matches("^%-%-%-%-%-BEGIN PUBLIC KEY%-%-%-%-%-\n", k.pem)
    local c = conf { public_key = k.pem, algorithms = { "RS256" }, leeway = EVER }
    local claims, err = jwt._verify(token, c)
    assert.is_table(claims, err)
    assert.equals("joe", claims.iss)
    -- the same signature under RS384 or PS256 is not valid
    local c2 = conf { public_key = k.pem, algorithms = { "RS256", "PS256" }, leeway = EVER }
    local h = b64u('{"alg":"PS256"}')
    assert.same({ nil, "bad signature" },
      { jwt._verify(h .. token:match("%..*$"), c2) })
  end)

  it("A.2: the PEM built from the JWK is the one openssl derives", function()
    -- openssl reads our DER back and prints the same modulus
    local k = assert(jwt._jwk_to_key(rsa_jwk))
    writef(tmp .. "/a2.pem", k.pem)
    local p = io.popen("openssl pkey -pubin -in " .. tmp .. "/a2.pem -noout -text 2>&1")
    local text = p:read("a")
    p:close()
    assert.matches("Public%-Key: %(2048 bit%)", text)
    assert.matches("Exponent: 65537", text)
  end)

  it("A.3 ES256 with the published key, converted from its JWK", function()
    local token = "eyJhbGciOiJFUzI1NiJ9." .. RFC_PAYLOAD .. ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4"
      .. "GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
    local k = assert(jwt._jwk_to_key { kty = "EC", crv = "P-256",
      x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
      y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" })
    local claims, err = jwt._verify(token, conf { public_key = k.pem, algorithms = { "ES256" },
                                                   leeway = EVER })
    assert.is_table(claims, err)
    assert.equals("joe", claims.iss)
    -- an ES384 allow-list with this P-256 key: the alg is not allowed at all
    assert.same({ nil, "algorithm not allowed" },
      { jwt._verify(token, conf { public_key = k.pem, algorithms = { "ES384" } }) })
  end)

  it("RFC 8037 A.4 EdDSA (Ed25519) with the published key", function()
    local jws = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLW"
      .. "G1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    local k = assert(jwt._jwk_to_key { kty = "OKP", crv = "Ed25519",
                                       x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" })
    local c = conf { public_key = k.pem, algorithms = { "EdDSA" } }
    local header, payload = jwt._verify_jws(jws, c)
    assert.is_table(header, payload)
    assert.equals("EdDSA", header.alg)
    assert.equals("Example of Ed25519 signing", payload)
    -- its payload is not a JWT claims set: _verify says so
    assert.same({ nil, "token payload is not a JSON object" }, { jwt._verify(jws, c) })
    local bad = jws:gsub("%.h", ".i", 1)
    assert.same({ nil, "bad signature" }, { jwt._verify_jws(bad, c) })
  end)
end)

describe("jwt: tokens signed by the openssl CLI", function()
  local claims = { sub = "alice", iat = 1000 }

  for _, case in ipairs {
    { "RS256", rsa }, { "RS384", rsa }, { "RS512", rsa },
    { "PS256", rsa }, { "PS384", rsa }, { "PS512", rsa },
    { "ES256", p256 }, { "ES384", p384 }, { "EdDSA", ed },
  } do
    local alg, mk = case[1], case[2]
    it(alg .. " verifies, a tampered payload does not", function()
      local k = mk()
      local token = ossl(alg, k, claims)
      local c = conf { public_key = k.pub, algorithms = { alg } }
      local got, err = jwt._verify(token, c)
      assert.is_table(got, err)
      assert.equals("alice", got.sub)
      local h, _, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      local forged = h .. "." .. b64u(gw.json.encode { sub = "mallory", iat = 1000 }) .. "." .. s
      assert.same({ nil, "bad signature" }, { jwt._verify(forged, c) })
    end)
  end

  it("reads public_key_file in check(), not on the request path", function()
    local k = rsa()
    local c = { public_key_file = k.pubfile, algorithms = { "RS256" } }
    assert(jwt.check(c))
    assert.equals(k.pub, c._jwt.pem)
    local token = ossl("RS256", k, claims)
    os.rename(k.pubfile, k.pubfile .. ".gone")
    local got, err = jwt._verify(token, c)
    os.rename(k.pubfile .. ".gone", k.pubfile)
    assert.is_table(got, err)
  end)

  it("check() refuses a missing file, a private key and a non-PEM", function()
    local ok, err = jwt.check { public_key_file = tmp .. "/nope.pem", algorithms = { "RS256" } }
    assert.is_nil(ok)
    assert.matches("public_key_file", err)
    ok, err = jwt.check { public_key = readf(rsa().priv), algorithms = { "RS256" } }
    assert.is_nil(ok)
    assert.matches("public key", err)
    ok = jwt.check { public_key = "hello", algorithms = { "RS256" } }
    assert.is_nil(ok)
  end)

  it("an EC token against an RSA key is refused even when both algs are allowed", function()
    local token = ossl("ES256", p256(), claims)
    local c = conf { public_key = rsa().pub, algorithms = { "RS256", "ES256" } }
    assert.same({ nil, "bad signature" }, { jwt._verify(token, c) })
  end)

  it("ES256/ES384 take only the JWS r || s form, not DER (RFC 7518 3.4)", function()
    for _, case in ipairs { { "ES256", p256, "sha256" }, { "ES384", p384, "sha384" } } do
      local alg, k = case[1], case[2]()
      local token = ossl(alg, k, claims)
      local input = token:match("^(.*)%.[^.]*$")
      writef(tmp .. "/in", input)
      sh(("openssl dgst -%s -sign %s -out %s %s"):format(case[3], k.priv, tmp .. "/sig",
        tmp .. "/in"))
      local der = readf(tmp .. "/sig")
      -- gw.crypto.verify itself accepts DER; a JWS signature must be raw
      assert.is_true(gw.crypto.verify(alg, k.pub, input, der))
      local c = conf { public_key = k.pub, algorithms = { alg } }
      assert.is_table((jwt._verify(token, c)))
      assert.same({ nil, "bad signature" }, { jwt._verify(input .. "." .. b64u(der), c) })
    end
  end)

  it("a P-384 key does not verify ES256 tokens", function()
    local token = ossl("ES256", p256(), claims)
    local c = conf { public_key = p384().pub, algorithms = { "ES256", "ES384" } }
    assert.same({ nil, "bad signature" }, { jwt._verify(token, c) })
  end)
end)

describe("jwt: alg none and key confusion", function()
  local c = conf { secret = "s3cret", algorithms = { "HS256", "HS384", "HS512" } }
  local body = b64u(gw.json.encode { sub = "admin" })

  for _, spelling in ipairs { "none", "None", "NONE", "nOnE", "NoNe" } do
    it("rejects alg " .. spelling .. " with and without a signature", function()
      local h = b64u(gw.json.encode { alg = spelling, typ = "JWT" })
      assert.same({ nil, "unsigned tokens are not accepted" },
        { jwt._verify(h .. "." .. body .. ".", c) })
      assert.same({ nil, "unsigned tokens are not accepted" },
        { jwt._verify(h .. "." .. body .. "." .. b64u("sig"), c) })
      assert.is_nil((jwt._verify(h .. "." .. body, c)))
    end)
  end

  it("never allows none in the allow-list", function()
    for _, a in ipairs { "none", "None", "HS256 ", "hs256", "ES512", "RS1" } do
      local ok, err = jwt.check { secret = "s", algorithms = { "HS256", a } }
      assert.is_nil(ok, a)
      assert.matches("unsupported algorithm", err)
    end
  end)

  it("rejects an HS256 token signed with the RSA public key PEM as secret", function()
    local pub = rsa().pub
    local token = hs("HS256", pub, nil, { sub = "admin" })
    -- the classic attack: the verifier only has the public key
    local rc = conf { public_key = pub, algorithms = { "RS256" } }
    assert.same({ nil, "algorithm not allowed" }, { jwt._verify(token, rc) })
    -- HS* next to a public key, with no secret: refused at config time
    local ok, err = jwt.check { public_key = pub, algorithms = { "RS256", "HS256" } }
    assert.is_nil(ok)
    assert.matches("secret", err)
    -- the PEM itself as the secret: refused at config time
    ok, err = jwt.check { secret = pub, algorithms = { "HS256" } }
    assert.is_nil(ok)
    assert.matches("PEM", err)
    -- with a real secret next to the public key, the PEM-signed token fails
    local both = conf { secret = "real", public_key = pub, algorithms = { "RS256", "HS256" } }
    assert.same({ nil, "bad signature" }, { jwt._verify(token, both) })
  end)

  it("rejects an RS256 token when only HS256 is allowed", function()
    local token = ossl("RS256", rsa(), { sub = "x" })
    assert.same({ nil, "algorithm not allowed" }, { jwt._verify(token, c) })
  end)

  it("HS384/HS512 and malformed tokens", function()
    assert.is_table((jwt._verify(hs("HS384", "s3cret", nil, { a = 1 }), c)))
    assert.is_table((jwt._verify(hs("HS512", "s3cret", nil, { a = 1 }), c)))
    for _, t in ipairs { "", "a.b", "a.b.c.d", "!!.x.y", "e30.e30.", "e30.e30.e30",
                         b64u("[1]") .. ".e30.e30" } do
      assert.is_nil((jwt._verify(t, c)), t)
    end
    -- crit is not understood, so it is refused (RFC 7515 4.1.11)
    local t = hs("HS256", "s3cret", { alg = "HS256", crit = { "exp" }, exp = 1 }, { a = 1 })
    assert.same({ nil, "unsupported critical header" }, { jwt._verify(t, c) })
    -- a JSON array payload
    local h = b64u('{"alg":"HS256"}')
    local input = h .. "." .. b64u("[1,2]")
    t = input .. "." .. b64u(gw.crypto.hmac("sha256", "s3cret", input))
    assert.same({ nil, "token payload is not a JSON object" }, { jwt._verify(t, c) })
  end)
end)

describe("jwt: registered claims", function()
  local now = math.floor(gw.now()) -- integers, as issuers write them
  local function v(claims, opts)
    opts = opts or {}
    opts.secret = "k"
    return jwt._verify(hs("HS256", "k", nil, claims), conf(opts))
  end

  it("exp", function()
    assert.is_table((v { exp = now + 60 }))
    assert.same({ nil, "token expired" }, { v { exp = now - 1 } })
    assert.same({ nil, "token expired" }, { v { exp = math.floor(now) } })
    assert.is_table((v({ exp = now - 5 }, { leeway = 10 })))
    assert.same({ nil, "token expired" }, { v({ exp = now - 15 }, { leeway = 10 }) })
    assert.same({ nil, "exp is not a number" }, { v { exp = "tomorrow" } })
  end)

  it("nbf", function()
    assert.is_table((v { nbf = now - 1 }))
    assert.same({ nil, "token not valid yet" }, { v { nbf = now + 60 } })
    assert.is_table((v({ nbf = now + 5 }, { leeway = 10 })))
    assert.same({ nil, "token not valid yet" }, { v({ nbf = now + 15 }, { leeway = 10 }) })
  end)

  it("iat in the future", function()
    assert.is_table((v { iat = now }))
    assert.same({ nil, "token issued in the future" }, { v { iat = now + 60 } })
    assert.is_table((v({ iat = now + 5 }, { leeway = 10 })))
  end)

  it("issuer", function()
    assert.is_table((v({ iss = "a" }, { issuer = "a" })))
    assert.is_table((v({ iss = "b" }, { issuer = { "a", "b" } })))
    assert.same({ nil, "issuer not allowed" }, { v({ iss = "c" }, { issuer = { "a", "b" } }) })
    assert.same({ nil, "issuer not allowed" }, { v({}, { issuer = "a" }) })
    assert.same({ nil, "issuer not allowed" }, { v({ iss = { "a" } }, { issuer = "a" }) })
  end)

  it("audience: string or array on both sides", function()
    assert.is_table((v({ aud = "api" }, { audience = "api" })))
    assert.is_table((v({ aud = { "x", "api" } }, { audience = "api" })))
    assert.is_table((v({ aud = "web" }, { audience = { "api", "web" } })))
    assert.is_table((v({ aud = { "web", "z" } }, { audience = { "api", "web" } })))
    assert.same({ nil, "audience not allowed" }, { v({ aud = "web" }, { audience = "api" }) })
    assert.same({ nil, "audience not allowed" }, { v({ aud = { "a", "b" } }, { audience = "api" }) })
    assert.same({ nil, "audience not allowed" }, { v({}, { audience = "api" }) })
    -- no audience configured: any aud passes
    assert.is_table((v { aud = "whatever" }))
  end)
end)

describe("jwt: JWK conversion", function()
  it("refuses bad JWKs", function()
    for _, jwk in ipairs {
      { kty = "RSA", n = "AQAB" },
      { kty = "EC", crv = "P-521", x = "AA", y = "AA" },
      { kty = "EC", crv = "P-256", x = "AAAA", y = "AAAA" },
      { kty = "OKP", crv = "X25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
      { kty = "oct", k = "AAAA" },
      { kty = "RSA", n = "AQAB", e = "AQAB", use = "enc" },
      "not a table",
    } do
      assert.is_nil((jwt._jwk_to_key(jwk)))
    end
  end)

  it("converts EC P-384 and Ed25519 keys openssl made", function()
    -- round trip: openssl's raw public key bytes -> JWK -> PEM == openssl's PEM
    local k = ed()
    local p = io.popen("openssl pkey -pubin -in " .. k.pubfile .. " -outform DER 2>/dev/null")
    local derbytes = p:read("a")
    p:close()
    local x = derbytes:sub(-32)
    local got = assert(jwt._jwk_to_key { kty = "OKP", crv = "Ed25519", x = b64u(x) })
    assert.equals(k.pub, got.pem)
    local e = p384()
    p = io.popen("openssl pkey -pubin -in " .. e.pubfile .. " -outform DER 2>/dev/null")
    derbytes = p:read("a")
    p:close()
    local point = derbytes:sub(-97)
    assert.equals(4, point:byte(1))
    got = assert(jwt._jwk_to_key { kty = "EC", crv = "P-384", x = b64u(point:sub(2, 49)),
                                   y = b64u(point:sub(50, 97)) })
    assert.equals(e.pub, got.pem)
  end)
end)
