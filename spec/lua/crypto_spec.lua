-- moongate.crypto (gw.crypto in PRODUCT.md): published test vectors for the
-- digests, HMAC and AES, and signatures made at test time by the openssl CLI
-- (plus the fixed RFC 7515 / RFC 8037 examples) for verify.

local crypto = require "moongate.crypto"
local base64 = require "moongate.base64"

local function unhex(s)
  s = s:gsub("%s", "")
  return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function b64url(s)
  return assert(base64.url_decode(s))
end

-- Flips the low bit of byte i (default: the last).
local function flip(s, i)
  i = i or #s
  return s:sub(1, i - 1) .. string.char(s:byte(i) ~ 1) .. s:sub(i + 1)
end

describe("moongate.crypto", function()
  describe("digest", function()
    -- FIPS 180-2 appendix examples: the one-block message "abc".
    local abc = {
      sha1 = "a9993e364706816aba3e25717850c26c9cd0d89d",
      sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      sha384 = "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed"
        .. "8086072ba1e7cc2358baeca134c825a7",
      sha512 = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        .. "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
    }
    for alg, want in pairs(abc) do
      it(alg .. ' of "abc" (FIPS 180)', function()
        assert.are.equal(want, hex(crypto.digest(alg, "abc")))
      end)
    end

    it("returns raw bytes for the empty string", function()
      assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        hex(crypto.digest("sha256", "")))
    end)

    it("raises on an unknown algorithm or a non-string", function()
      assert.has_error(function() crypto.digest("md5", "abc") end)
      assert.has_error(function() crypto.digest("SHA256", "abc") end)
      assert.has_error(function() crypto.digest("sha256", nil) end)
      assert.has_error(function() crypto.digest(nil, "abc") end)
    end)
  end)

  describe("hmac", function()
    -- RFC 4231 section 4; case 5 (truncated output) does not apply.
    local aa131 = string.rep("\xaa", 131)
    local cases = {
      { n = 1, key = string.rep("\x0b", 20), data = "Hi There",
        sha256 = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        sha384 = "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
          .. "faea9ea9076ede7f4af152e8b2fa9cb6",
        sha512 = "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
          .. "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854" },
      { n = 2, key = "Jefe", data = "what do ya want for nothing?",
        sha256 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        sha384 = "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
          .. "8e2240ca5e69e2c78b3239ecfab21649",
        sha512 = "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
          .. "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737" },
      { n = 3, key = string.rep("\xaa", 20), data = string.rep("\xdd", 50),
        sha256 = "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        sha384 = "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144"
          .. "b2a5ab39dc13814b94e3ab6e101a34f27",
        sha512 = "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39"
          .. "bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb" },
      { n = 4, key = unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
        data = string.rep("\xcd", 50),
        sha256 = "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        sha384 = "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e"
          .. "6801dd23c4a7d679ccf8a386c674cffb",
        sha512 = "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db"
          .. "a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd" },
      { n = 6, key = aa131, data = "Test Using Larger Than Block-Size Key - Hash Key First",
        sha256 = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        sha384 = "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6"
          .. "0c2ef6ab4030fe8296248df163f44952",
        sha512 = "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
          .. "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598" },
      { n = 7, key = aa131,
        data = "This is a test using a larger than block-size key and a larger than "
          .. "block-size data. The key needs to be hashed before being used by the "
          .. "HMAC algorithm.",
        sha256 = "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        sha384 = "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5"
          .. "a678cc31e799176d3860e6110c46523e",
        sha512 = "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944"
          .. "b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58" },
    }
    for _, c in ipairs(cases) do
      for _, alg in ipairs({ "sha256", "sha384", "sha512" }) do
        it("RFC 4231 test case " .. c.n .. " with " .. alg, function()
          assert.are.equal(c[alg], hex(crypto.hmac(alg, c.key, c.data)))
        end)
      end
    end

    it("RFC 2202 HMAC-SHA-1 test cases 1 and 2", function()
      assert.are.equal("b617318655057264e28bc0b6fb378c8ef146be00",
        hex(crypto.hmac("sha1", string.rep("\x0b", 20), "Hi There")))
      assert.are.equal("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        hex(crypto.hmac("sha1", "Jefe", "what do ya want for nothing?")))
    end)

    it("RFC 7515 A.1: the HS256 JWS example", function()
      local key = b64url("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
      local input = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
        .. ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
      assert.are.equal("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        base64.url_encode(crypto.hmac("sha256", key, input)))
    end)

    it("takes an empty key and empty data", function()
      assert.are.equal("b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad",
        hex(crypto.hmac("sha256", "", "")))
    end)

    -- HMAC from its definition (RFC 2104) on crypto.digest: the oracle for
    -- the keyed contexts hmac() keeps per key.
    local BLOCK = { sha1 = 64, sha256 = 64, sha384 = 128, sha512 = 128 }
    local function xor_pad(k, byte)
      return (k:gsub(".", function(c) return string.char(c:byte() ~ byte) end))
    end
    local function ref_hmac(alg, key, data)
      local b = BLOCK[alg]
      if #key > b then key = crypto.digest(alg, key) end
      key = key .. string.rep("\0", b - #key)
      return crypto.digest(alg, xor_pad(key, 0x5c)
        .. crypto.digest(alg, xor_pad(key, 0x36) .. data))
    end

    it("gives the same MAC on every call with a key it has seen (kept contexts)", function()
      local algs = { "sha1", "sha256", "sha384", "sha512" }
      local keys = { "k1", "k2", string.rep("x", 200), "a\0b", "a\0c", "" }
      -- interleave keys, digests and data, three rounds: each call must
      -- start from the key's state, never from the previous call's data
      for round = 1, 3 do
        for _, alg in ipairs(algs) do
          for ki, key in ipairs(keys) do
            local data = ("data %d %d"):format(round, ki) .. string.rep("z", round * 70)
            assert.are.equal(hex(ref_hmac(alg, key, data)), hex(crypto.hmac(alg, key, data)))
          end
        end
      end
    end)

    it("stays correct past its key cache's size (keys evicted and made again)", function()
      local first = crypto.hmac("sha256", "key-1", "msg")
      for i = 1, 600 do
        local key = "key-" .. i
        assert.are.equal(hex(ref_hmac("sha256", key, "msg")), hex(crypto.hmac("sha256", key, "msg")))
      end
      assert.are.equal(first, crypto.hmac("sha256", "key-1", "msg"))
      assert.are.equal(hex(ref_hmac("sha512", "key-599", "m")), hex(crypto.hmac("sha512", "key-599", "m")))
    end)

    it("stays correct across garbage collections (kept key states are dropped)", function()
      local want = hex(ref_hmac("sha384", "gc-key", "data"))
      for _ = 1, 3 do
        assert.are.equal(want, hex(crypto.hmac("sha384", "gc-key", "data")))
        collectgarbage("collect")
        collectgarbage("collect")
      end
      assert.are.equal(want, hex(crypto.hmac("sha384", "gc-key", "data")))
    end)

    it("hmac_verify: true for the MAC, false for any other string", function()
      for _, alg in ipairs({ "sha1", "sha256", "sha384", "sha512" }) do
        local mac = crypto.hmac(alg, "vk", "payload")
        assert.is_true(crypto.hmac_verify(alg, "vk", "payload", mac))
        assert.is_false(crypto.hmac_verify(alg, "vk", "payload", mac:sub(1, -2)))
        assert.is_false(crypto.hmac_verify(alg, "vk", "payload", mac .. "x"))
        assert.is_false(crypto.hmac_verify(alg, "vk", "payload", ""))
        local flipped = string.char(mac:byte(1) ~ 1) .. mac:sub(2)
        assert.is_false(crypto.hmac_verify(alg, "vk", "payload", flipped))
        assert.is_false(crypto.hmac_verify(alg, "other", "payload", mac))
        assert.is_false(crypto.hmac_verify(alg, "vk", "payload2", mac))
      end
      assert.has_error(function() crypto.hmac_verify("sha256", "k", "d") end)
      assert.has_error(function() crypto.hmac_verify("md5", "k", "d", "m") end)
      assert.has_error(function() crypto.hmac_verify("sha256", "k", {}, "m") end)
    end)

    it("hmac and hmac_verify share the key states, past the cache's size too", function()
      for i = 1, 600 do
        local key = "shared-" .. i
        local mac = crypto.hmac("sha256", key, "m")
        assert.are.equal(hex(ref_hmac("sha256", key, "m")), hex(mac))
        assert.is_true(crypto.hmac_verify("sha256", key, "m", mac))
      end
    end)

    it("takes a number as key or data, as the string it converts to", function()
      assert.are.equal(crypto.hmac("sha256", "12", "34"), crypto.hmac("sha256", 12, 34))
    end)

    it("raises on an unknown algorithm or a non-string", function()
      assert.has_error(function() crypto.hmac("md5", "k", "d") end)
      assert.has_error(function() crypto.hmac("sha256", nil, "d") end)
      assert.has_error(function() crypto.hmac("sha256", "k", {}) end)
    end)
  end)

  describe("AES-256-GCM", function()
    -- McGrew & Viega, "The Galois/Counter Mode of Operation", test cases
    -- 13-15 (256-bit key, 96-bit IV, no additional data; case 16 needs AAD,
    -- which the API does not take).
    local k0 = string.rep("\0", 32)
    local iv0 = string.rep("\0", 12)
    local k15 = unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
    local iv15 = unhex("cafebabefacedbaddecaf888")
    local p15 = unhex([[d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255]])
    local cases = {
      { n = 13, key = k0, iv = iv0, p = "", c = "",
        tag = "530f8afbc74536b9a963b4f1c4cb738b" },
      { n = 14, key = k0, iv = iv0, p = string.rep("\0", 16),
        c = "cea7403d4d606b6e074ec5d3baf39d18", tag = "d0d1c8a799996bf0265b98b5d48ab919" },
      { n = 15, key = k15, iv = iv15, p = p15,
        c = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
          .. "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
        tag = "b094dac5d93471bdec1a502270e3cc6c" },
    }
    for _, c in ipairs(cases) do
      it("encrypts GCM test case " .. c.n, function()
        local ct, tag = crypto.encrypt("aes-256-gcm", c.key, c.iv, c.p)
        assert.are.equal(c.c, hex(ct))
        assert.are.equal(c.tag, hex(tag))
      end)
      it("decrypts GCM test case " .. c.n, function()
        assert.are.equal(c.p, crypto.decrypt("aes-256-gcm", c.key, c.iv, unhex(c.c), unhex(c.tag)))
      end)
    end

    it("refuses tampered ciphertext, tag, iv or key with nil, err", function()
      local ct, tag = unhex(cases[3].c), unhex(cases[3].tag)
      local function fails(k, iv, data, t)
        local p, err = crypto.decrypt("aes-256-gcm", k, iv, data, t)
        assert.is_nil(p)
        assert.are.equal("decryption failed", err)
      end
      fails(k15, iv15, flip(ct, 1), tag)
      fails(k15, iv15, ct, flip(tag))
      fails(k15, iv15, ct:sub(1, -2), tag)
      fails(k15, flip(iv15), ct, tag)
      fails(flip(k15), iv15, ct, tag)
      fails(k0, iv0, "", flip(unhex(cases[1].tag)))
    end)

    it("round-trips with IVs other than 12 bytes", function()
      local key = crypto.random(32)
      for _, ivlen in ipairs({ 1, 8, 16, 60, 128 }) do
        local iv = crypto.random(ivlen)
        for _, len in ipairs({ 0, 1, 15, 16, 17, 1000 }) do
          local p = crypto.random(len)
          local ct, tag = crypto.encrypt("aes-256-gcm", key, iv, p)
          assert.are.equal(len, #ct)
          assert.are.equal(16, #tag)
          assert.are.equal(p, crypto.decrypt("aes-256-gcm", key, iv, ct, tag))
        end
      end
    end)

    it("decrypts the nonce || ciphertext || tag form redis_credentials stores", function()
      local key = crypto.random(32)
      local nonce = crypto.random(12)
      local ct, tag = crypto.encrypt("aes-256-gcm", key, nonce, "alice:s3cret")
      local blob = assert(base64.decode(base64.encode(nonce .. ct .. tag)))
      assert.are.equal("alice:s3cret",
        crypto.decrypt("aes-256-gcm", key, blob:sub(1, 12), blob:sub(13, -17), blob:sub(-16)))
    end)

    it("raises on misuse: key size, iv size, missing or short tag, bad types", function()
      assert.has_error(function() crypto.decrypt("aes-256-gcm", k0:sub(2), iv0, "", unhex(cases[1].tag)) end)
      assert.has_error(function() crypto.encrypt("aes-256-gcm", k0 .. "x", iv0, "") end)
      assert.has_error(function() crypto.encrypt("aes-256-gcm", k0, "", "") end)
      assert.has_error(function() crypto.encrypt("aes-256-gcm", k0, string.rep("\0", 129), "") end)
      assert.has_error(function() crypto.decrypt("aes-256-gcm", k0, iv0, "") end)
      assert.has_error(function() crypto.decrypt("aes-256-gcm", k0, iv0, "", "short") end)
      assert.has_error(function() crypto.decrypt("aes-128-gcm", k0, iv0, "", unhex(cases[1].tag)) end)
      assert.has_error(function() crypto.encrypt("aes-256-gcm", k0, iv0, nil) end)
    end)
  end)

  describe("AES-256-CBC", function()
    -- NIST SP 800-38A F.2.5 (CBC-AES256.Encrypt) / F.2.6 (Decrypt). The
    -- vector has no padding; with PKCS#7 a fifth block follows.
    local key = unhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    local iv = unhex("000102030405060708090a0b0c0d0e0f")
    local plain = unhex([[6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                          30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710]])
    local cipher = unhex([[f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
                           39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b]])

    it("encrypts SP 800-38A F.2.5, then one block of padding", function()
      local ct = crypto.encrypt("aes-256-cbc", key, iv, plain)
      assert.are.equal(80, #ct)
      assert.are.equal(hex(cipher), hex(ct:sub(1, 64)))
    end)

    it("decrypts SP 800-38A F.2.6 once the padding block is added", function()
      -- The padding block is E(K, C4 xor 0x10..10): CBC over one block of
      -- 0x10 bytes with C4 as the iv, which this module itself computes.
      local pad = crypto.encrypt("aes-256-cbc", key, cipher:sub(49, 64), string.rep("\x10", 16))
      assert.are.equal(plain, crypto.decrypt("aes-256-cbc", key, iv, cipher .. pad:sub(1, 16)))
    end)

    it("refuses bad padding and partial blocks with nil, err", function()
      local function fails(data)
        local p, err = crypto.decrypt("aes-256-cbc", key, iv, data)
        assert.is_nil(p)
        assert.are.equal("decryption failed", err)
      end
      fails(cipher) -- P4 does not end in a valid PKCS#7 pad
      fails(cipher:sub(1, 63))
      fails("")
      local padded = crypto.encrypt("aes-256-cbc", key, iv, "exactly sixteen!")
      -- Flipping the last byte of C1 turns the 0x10 pad byte into 0x11.
      fails(flip(padded:sub(1, 16), 16) .. padded:sub(17, 32))
    end)

    it("round-trips every length around the block size", function()
      for len = 0, 33 do
        local p = crypto.random(len)
        local ct = crypto.encrypt("aes-256-cbc", key, iv, p)
        assert.are.equal((len // 16 + 1) * 16, #ct)
        assert.are.equal(p, crypto.decrypt("aes-256-cbc", key, iv, ct))
      end
    end)

    it("raises on misuse: key or iv size", function()
      assert.has_error(function() crypto.encrypt("aes-256-cbc", key:sub(2), iv, "x") end)
      assert.has_error(function() crypto.encrypt("aes-256-cbc", key, iv:sub(2), "x") end)
      assert.has_error(function() crypto.decrypt("aes-256-cbc", key, iv .. "x", cipher) end)
    end)
  end)

  describe("random", function()
    it("returns n bytes, different each time", function()
      assert.are.equal("", crypto.random(0))
      assert.are.equal(32, #crypto.random(32))
      assert.are.equal(65536, #crypto.random(65536))
      assert.are_not.equal(crypto.random(16), crypto.random(16))
    end)

    it("raises outside 0..65536 or on a non-integer", function()
      assert.has_error(function() crypto.random(-1) end)
      assert.has_error(function() crypto.random(65537) end)
      assert.has_error(function() crypto.random("x") end)
      assert.has_error(function() crypto.random(1.5) end)
    end)
  end)

  describe("equal", function()
    it("compares contents", function()
      assert.is_true(crypto.equal("", ""))
      assert.is_true(crypto.equal("abc", "abc"))
      assert.is_false(crypto.equal("abc", "abd"))
      assert.is_false(crypto.equal("abc", "ab"))
      assert.is_false(crypto.equal("a\0b", "a\0c"))
    end)

    it("raises on a non-string", function()
      assert.has_error(function() crypto.equal("a", nil) end)
      assert.has_error(function() crypto.equal({}, "a") end)
    end)
  end)

  describe("verify", function()
    -- DER and PEM building, enough to turn the RFCs' JWKs into SPKI PEMs.
    local function der_len(n)
      if n < 0x80 then return string.char(n) end
      if n < 0x100 then return "\x81" .. string.char(n) end
      return "\x82" .. string.char(n >> 8, n & 0xff)
    end
    local function tlv(tag, body) return string.char(tag) .. der_len(#body) .. body end
    local function der_uint(b)
      b = b:gsub("^\0+", "")
      if b == "" or b:byte(1) >= 0x80 then b = "\0" .. b end
      return tlv(0x02, b)
    end
    local function pem(der)
      local b = base64.encode(der)
      local lines = {}
      for i = 1, #b, 64 do lines[#lines + 1] = b:sub(i, i + 63) end
      return "-----BEGIN PUBLIC KEY-----\n" .. table.concat(lines, "\n") .. "\n-----END PUBLIC KEY-----\n"
    end
    local function rsa_pem(n, e)
      local alg = tlv(0x30, tlv(0x06, unhex("2a864886f70d010101")) .. tlv(0x05, ""))
      return pem(tlv(0x30, alg .. tlv(0x03, "\0" .. tlv(0x30, der_uint(n) .. der_uint(e)))))
    end
    local function p256_pem(x, y)
      local alg = tlv(0x30, tlv(0x06, unhex("2a8648ce3d0201")) .. tlv(0x06, unhex("2a8648ce3d030107")))
      return pem(tlv(0x30, alg .. tlv(0x03, "\0\4" .. x .. y)))
    end
    local function ed25519_pem(x)
      return pem(tlv(0x30, tlv(0x30, tlv(0x06, "\x2b\x65\x70")) .. tlv(0x03, "\0" .. x)))
    end

    -- openssl CLI plumbing, in a temporary directory.
    local dir
    local function path(name) return dir .. "/" .. name end
    local function sh(cmd)
      local ok = os.execute("cd '" .. dir .. "' && " .. cmd .. " >/dev/null 2>&1")
      assert(ok, "command failed: " .. cmd)
    end
    local function slurp(name)
      local f = assert(io.open(path(name), "rb"))
      local s = f:read("a")
      f:close()
      return s
    end
    local function spit(name, s)
      local f = assert(io.open(path(name), "wb"))
      f:write(s)
      f:close()
    end

    -- DER ECDSA-Sig-Value → JOSE r || s, each `half` bytes.
    local function der_to_raw(der, half)
      local function int_at(i)
        assert(der:byte(i) == 0x02)
        local len = der:byte(i + 1)
        local v = der:sub(i + 2, i + 1 + len):gsub("^\0+", "")
        return string.rep("\0", half - #v) .. v, i + 2 + len
      end
      assert(der:byte(1) == 0x30)
      local start = der:byte(2) == 0x81 and 4 or 3
      local r, i = int_at(start)
      local s = int_at(i)
      return r .. s
    end

    local data = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9"
    local keys = {}  -- name → public PEM text
    local sigs = {}  -- name → signature

    local function sign(name, key, args)
      sh("openssl dgst " .. args .. " -sign " .. key .. ".pem -out " .. name .. ".sig data")
      sigs[name] = slurp(name .. ".sig")
    end

    setup(function()
      local p = assert(io.popen("mktemp -d"))
      dir = p:read("l")
      p:close()
      assert(dir and dir ~= "")
      spit("data", data)
      local gen = {
        rsa = "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
        rsa2 = "-algorithm RSA -pkeyopt rsa_keygen_bits:2048",
        p256 = "-algorithm EC -pkeyopt ec_paramgen_curve:P-256",
        p384 = "-algorithm EC -pkeyopt ec_paramgen_curve:P-384",
        k256 = "-algorithm EC -pkeyopt ec_paramgen_curve:secp256k1",
        ed25519 = "-algorithm ED25519",
        ed448 = "-algorithm ED448",
      }
      for name, args in pairs(gen) do
        sh("openssl genpkey " .. args .. " -out " .. name .. ".pem")
        sh("openssl pkey -in " .. name .. ".pem -pubout -out " .. name .. ".pub")
        keys[name] = slurp(name .. ".pub")
      end
      sh("openssl req -x509 -new -key rsa.pem -subj /CN=moongate-test -days 1 -out rsa.crt")
      keys.rsa_cert = slurp("rsa.crt")
      sh("openssl rsa -in rsa.pem -RSAPublicKey_out -out rsa.pkcs1")
      keys.rsa_pkcs1 = slurp("rsa.pkcs1")

      for _, bits in ipairs({ "256", "384", "512" }) do
        sign("RS" .. bits, "rsa", "-sha" .. bits)
        sign("PS" .. bits, "rsa", "-sha" .. bits .. " -sigopt rsa_padding_mode:pss"
          .. " -sigopt rsa_pss_saltlen:digest -sigopt rsa_mgf1_md:sha" .. bits)
      end
      sign("PS256_maxsalt", "rsa", "-sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:max")
      sign("ES256_der", "p256", "-sha256")
      sign("ES384_der", "p384", "-sha384")
      sign("K256_der", "k256", "-sha256")
      sigs.ES256 = der_to_raw(sigs.ES256_der, 32)
      sigs.ES384 = der_to_raw(sigs.ES384_der, 48)
      sigs.K256 = der_to_raw(sigs.K256_der, 32)
      sh("openssl pkeyutl -sign -rawin -inkey ed25519.pem -in data -out ed25519.sig")
      sigs.EdDSA = slurp("ed25519.sig")
      sh("openssl pkeyutl -sign -rawin -inkey ed448.pem -in data -out ed448.sig")
      sigs.Ed448 = slurp("ed448.sig")
    end)

    teardown(function()
      if dir then os.execute("rm -rf '" .. dir .. "'") end
    end)

    local good = {
      { "RS256", "rsa" }, { "RS384", "rsa" }, { "RS512", "rsa" },
      { "PS256", "rsa" }, { "PS384", "rsa" }, { "PS512", "rsa" },
      { "ES256", "p256" }, { "ES384", "p384" }, { "EdDSA", "ed25519" },
    }
    for _, g in ipairs(good) do
      local alg, key = g[1], g[2]
      it(alg .. ": a signature made by openssl verifies; tampering does not", function()
        assert.is_true(crypto.verify(alg, keys[key], data, sigs[alg]))
        assert.is_false(crypto.verify(alg, keys[key], data .. "x", sigs[alg]))
        assert.is_false(crypto.verify(alg, keys[key], flip(data, 1), sigs[alg]))
        assert.is_false(crypto.verify(alg, keys[key], data, flip(sigs[alg], 5)))
        assert.is_false(crypto.verify(alg, keys[key], data, sigs[alg]:sub(1, -2)))
        assert.is_false(crypto.verify(alg, keys[key], data, ""))
      end)
    end

    it("refuses another key of the right type", function()
      assert.is_false(crypto.verify("RS256", keys.rsa2, data, sigs.RS256))
      assert.is_false(crypto.verify("PS256", keys.rsa2, data, sigs.PS256))
    end)

    it("accepts a DER ECDSA signature as well as r || s", function()
      assert.is_true(crypto.verify("ES256", keys.p256, data, sigs.ES256_der))
      assert.is_true(crypto.verify("ES384", keys.p384, data, sigs.ES384_der))
      assert.is_false(crypto.verify("ES256", keys.p256, "other", sigs.ES256_der))
    end)

    it("answers false when the key does not fit the alg (key confusion)", function()
      assert.is_false(crypto.verify("ES256", keys.rsa, data, sigs.ES256))
      assert.is_false(crypto.verify("ES256", keys.p384, data, sigs.ES256))
      assert.is_false(crypto.verify("ES384", keys.p256, data, sigs.ES384))
      assert.is_false(crypto.verify("ES256", keys.k256, data, sigs.K256))
      assert.is_false(crypto.verify("RS256", keys.p256, data, sigs.RS256))
      assert.is_false(crypto.verify("PS256", keys.ed25519, data, sigs.PS256))
      assert.is_false(crypto.verify("RS256", keys.ed25519, data, sigs.EdDSA))
      assert.is_false(crypto.verify("EdDSA", keys.rsa, data, sigs.RS256))
      assert.is_false(crypto.verify("EdDSA", keys.p256, data, sigs.ES256))
    end)

    it("keeps the JOSE algs apart: padding, hash and salt length", function()
      assert.is_false(crypto.verify("PS256", keys.rsa, data, sigs.RS256))
      assert.is_false(crypto.verify("RS256", keys.rsa, data, sigs.PS256))
      assert.is_false(crypto.verify("RS384", keys.rsa, data, sigs.RS256))
      assert.is_false(crypto.verify("PS512", keys.rsa, data, sigs.PS384))
      -- JWA fixes the PSS salt at the hash length.
      assert.is_false(crypto.verify("PS256", keys.rsa, data, sigs.PS256_maxsalt))
      assert.is_false(crypto.verify("ES384", keys.p384, data, sigs.ES256))
    end)

    it("also verifies Ed448 under EdDSA (RFC 8037)", function()
      assert.is_true(crypto.verify("EdDSA", keys.ed448, data, sigs.Ed448))
      assert.is_false(crypto.verify("EdDSA", keys.ed448, data .. "x", sigs.Ed448))
    end)

    it("takes the key from a certificate or a PKCS#1 RSA PUBLIC KEY", function()
      assert.is_true(crypto.verify("RS256", keys.rsa_cert, data, sigs.RS256))
      assert.is_true(crypto.verify("PS384", keys.rsa_cert, data, sigs.PS384))
      assert.is_true(crypto.verify("RS512", keys.rsa_pkcs1, data, sigs.RS512))
    end)

    it("answers nil, err for a PEM that is not a public key", function()
      local bad = {
        "garbage",
        "",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        keys.rsa:sub(1, 100) .. "\n-----END PUBLIC KEY-----\n", -- truncated DER
        slurp("rsa.pem"), -- a private key is not accepted as a public one
      }
      for _, pem_text in ipairs(bad) do
        local ok, err = crypto.verify("RS256", pem_text, data, sigs.RS256)
        assert.is_nil(ok)
        assert.are.equal("invalid public key", err)
      end
    end)

    it("raises on an unknown alg or a non-string argument", function()
      assert.has_error(function() crypto.verify("HS256", keys.rsa, data, sigs.RS256) end)
      assert.has_error(function() crypto.verify("none", keys.rsa, data, sigs.RS256) end)
      assert.has_error(function() crypto.verify("RS256", nil, data, sigs.RS256) end)
      assert.has_error(function() crypto.verify("RS256", keys.rsa, nil, sigs.RS256) end)
      assert.has_error(function() crypto.verify("RS256", keys.rsa, data, {}) end)
    end)

    it("keeps working as the key cache fills, clears and is collected", function()
      -- Each variant is a distinct cache key for the same key: trailing
      -- newlines do not change the PEM.
      for i = 1, 600 do
        local variant = keys.p256 .. string.rep("\n", i)
        assert.is_true(crypto.verify("ES256", variant, data, sigs.ES256))
        if i % 100 == 0 then collectgarbage() end
      end
      if debug and debug.getregistry then
        local cache = debug.getregistry()["moongate.crypto.key_cache"]
        local n = 0
        for k in pairs(cache) do if type(k) == "string" then n = n + 1 end end
        assert.is_true(n <= 256)
      end
      collectgarbage()
      assert.is_true(crypto.verify("ES256", keys.p256, data, sigs.ES256))
    end)

    describe("RFC examples", function()
      local payload = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"

      it("RFC 7515 A.2: RS256", function()
        local key = rsa_pem(b64url("ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"),
          b64url("AQAB"))
        local sig = b64url("cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7"
          .. "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4"
          .. "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K"
          .. "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv"
          .. "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB"
          .. "p0igcN_IoypGlUPQGe77Rw")
        local input = "eyJhbGciOiJSUzI1NiJ9." .. payload
        assert.is_true(crypto.verify("RS256", key, input, sig))
        assert.is_false(crypto.verify("RS256", key, input .. ".", sig))
        assert.is_false(crypto.verify("PS256", key, input, sig))
      end)

      it("RFC 7515 A.3: ES256 with a raw r || s signature", function()
        local key = p256_pem(b64url("f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"),
          b64url("x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"))
        local sig = b64url("DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q")
        local input = "eyJhbGciOiJFUzI1NiJ9." .. payload
        assert.are.equal(64, #sig)
        assert.is_true(crypto.verify("ES256", key, input, sig))
        assert.is_false(crypto.verify("ES256", key, input, flip(sig)))
        assert.is_false(crypto.verify("ES384", key, input, sig))
      end)

      it("RFC 8037 A.4: EdDSA with Ed25519", function()
        local key = ed25519_pem(b64url("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"))
        local sig = b64url("hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg")
        local input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
        assert.is_true(crypto.verify("EdDSA", key, input, sig))
        assert.is_false(crypto.verify("EdDSA", key, input .. "x", sig))
      end)
    end)
  end)
end)
