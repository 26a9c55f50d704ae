-- moongate.base64 (gw.base64 in PRODUCT.md): RFC 4648 vectors, the URL
-- alphabet without padding, and the strictness of both decoders.

local base64 = require "moongate.base64"

local function invalid(f, s, ...)
  local v, err = f(s, ...)
  assert.is_nil(v, ("%q should not decode"):format(s))
  assert.are.equal("invalid base64", err)
end

describe("moongate.base64", function()
  -- RFC 4648 section 10.
  local vectors = {
    { "", "" },
    { "f", "Zg==" },
    { "fo", "Zm8=" },
    { "foo", "Zm9v" },
    { "foob", "Zm9vYg==" },
    { "fooba", "Zm9vYmE=" },
    { "foobar", "Zm9vYmFy" },
  }

  describe("standard alphabet", function()
    for _, v in ipairs(vectors) do
      it(("RFC 4648 section 10: %q <-> %q"):format(v[1], v[2]), function()
        assert.are.equal(v[2], base64.encode(v[1]))
        assert.are.equal(v[1], base64.decode(v[2]))
      end)
    end

    it("uses + and /", function()
      assert.are.equal("+/8=", base64.encode("\xfb\xff"))
      assert.are.equal("\xfb\xff", base64.decode("+/8="))
      assert.are.equal("+/+/", base64.encode("\xfb\xff\xbf"))
    end)

    it("round-trips every byte value and every length", function()
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      all = table.concat(all)
      for len = 0, 256 do
        local s = all:sub(1, len)
        assert.are.equal(s, base64.decode(base64.encode(s)))
      end
    end)

    it("is strict: length, alphabet, padding, whitespace", function()
      for _, s in ipairs({
        "abc",       -- not a multiple of 4
        "Zg=",       -- short padding
        "Zg",        -- unpadded
        "ab=c",      -- '=' inside
        "a=bc",
        "====",
        "Zg===",
        "Z===",      -- one character cannot make a byte
        "a b c d",
        "Zm9v\n",
        " Zm9v",
        "Zm9v!A==",
        "Zm9v-_==",  -- URL alphabet
        "Zm\0v",
        "Zm9v\xff\xff\xff\xff",
        "Zh==",      -- non-zero bits under the padding (canonical is Zg==)
        "Zm9=",      -- canonical is Zm8=
        "Zg==Zg==",  -- padding in the middle
      }) do
        invalid(base64.decode, s)
      end
    end)

    it("raises on a non-string", function()
      assert.has_error(function() base64.encode(nil) end)
      assert.has_error(function() base64.decode({}) end)
    end)
  end)

  describe("URL alphabet", function()
    for _, v in ipairs(vectors) do
      local unpadded = v[2]:gsub("=", "")
      it(("encodes %q as %q and decodes it padded or not"):format(v[1], unpadded), function()
        assert.are.equal(unpadded, base64.url_encode(v[1]))
        assert.are.equal(v[1], base64.url_decode(unpadded))
        assert.are.equal(v[1], base64.url_decode(v[2]))
      end)
    end

    it("uses - and _ (bytes 0xfb 0xff)", function()
      assert.are.equal("-_8", base64.url_encode("\xfb\xff"))
      assert.are.equal("\xfb\xff", base64.url_decode("-_8"))
      assert.are.equal("\xfb\xff", base64.url_decode("-_8="))
      assert.are.equal("-_-_", base64.url_encode("\xfb\xff\xbf"))
    end)

    it("round-trips every length", function()
      for len = 0, 100 do
        local s = string.rep("\xfe\x01\xff", 34):sub(1, len)
        assert.are.equal(s, base64.url_decode(base64.url_encode(s)))
      end
    end)

    it("refuses any byte outside the alphabet at any place of a group or the tail", function()
      -- groups of four are checked at once; the tail (2 or 3 characters) on its own
      local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
      local ok = {}
      for i = 1, #alphabet do ok[alphabet:byte(i)] = true end
      for _, good in ipairs({ "QUJDREVG", "QUJDREU", "QUJDRA" }) do -- 8, 7 and 6 characters
        assert.is_string(base64.url_decode(good))
        for byte = 0, 255 do
          if not ok[byte] and byte ~= 61 then -- '=' only pads, tested above
            for pos = 1, #good do
              local bad = good:sub(1, pos - 1) .. string.char(byte) .. good:sub(pos + 1)
              invalid(base64.url_decode, bad)
            end
          end
        end
      end
    end)

    it("decodes what a bit-by-bit reference decodes", function()
      local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
      local function ref(s)
        local bits, out = {}, {}
        for i = 1, #s do
          local v = alphabet:find(s:sub(i, i), 1, true) - 1
          for b = 5, 0, -1 do bits[#bits + 1] = (v >> b) & 1 end
        end
        for i = 1, #bits - 7, 8 do
          local byte = 0
          for b = 0, 7 do byte = byte << 1 | bits[i + b] end
          out[#out + 1] = string.char(byte)
        end
        return table.concat(out)
      end
      local seed = 12345
      for len = 0, 70 do
        if len % 4 ~= 1 then
          local t = {}
          for i = 1, len do
            seed = (seed * 1103515245 + 12345) % 2147483648
            t[i] = alphabet:sub(seed % 64 + 1, seed % 64 + 1)
          end
          -- make the unused low bits zero, as canonical input has them
          local s = table.concat(t)
          local canon = base64.url_encode(ref(s))
          assert.are.equal(ref(canon), base64.url_decode(canon))
        end
      end
    end)

    it("decodes s:sub(i, j) when given i and j, with string.sub's rules", function()
      local s = "xx." .. base64.url_encode("hello") .. ".yy"  -- "xx.aGVsbG8.yy"
      assert.are.equal("hello", base64.url_decode(s, 4, 10))
      assert.are.equal("hello", base64.url_decode(s, 4, -4))
      assert.are.equal("hello", base64.url_decode(s, -10, -4))
      assert.are.equal("hello", base64.url_decode(base64.url_encode("hello"), -100, 100))
      assert.are.equal("hello", base64.url_decode(s:sub(4), 1, 7))
      assert.are.equal(base64.url_decode("yy"), base64.url_decode(s, 12))
      assert.are.equal("", base64.url_decode(s, 5, 4))
      assert.are.equal("", base64.url_decode(s, 100))
      assert.are.equal("", base64.url_decode(s, 1, 0))
      assert.are.equal("", base64.url_decode(s, 1, -100))
      assert.are.equal(base64.url_decode("xx"), base64.url_decode(s, 0, 2))
      invalid(base64.url_decode, s, 3, 10)   -- takes the dot
      invalid(base64.url_decode, s, 4, 8)    -- 5 characters
      invalid(base64.url_decode, s)
      assert.are.equal("foo", base64.decode("[Zm9v]", 2, 5))
      invalid(base64.decode, "[Zm9v]", 2, 4) -- padding is still required
      assert.has_error(function() base64.url_decode(s, "x") end)
      assert.has_error(function() base64.url_decode(s, 1, 2.5) end)
    end)

    it("decodes a JWS header", function()
      assert.are.equal('{"alg":"RS256"}', base64.url_decode("eyJhbGciOiJSUzI1NiJ9"))
    end)

    it("is strict otherwise", function()
      for _, s in ipairs({
        "a",         -- one character cannot make a byte
        "abcde",
        "Zg=",       -- partial padding
        "Zm8==",
        "ab=c",
        "====",
        "Z===",
        "a b c d",
        "+/8=",      -- standard alphabet
        "Zm9v.",
        "Zh",        -- non-zero unused bits (canonical is Zg)
        "Zm9",       -- canonical is Zm8
        "Zg==Zg",
      }) do
        invalid(base64.url_decode, s)
      end
    end)

    it("raises on a non-string", function()
      assert.has_error(function() base64.url_encode(nil) end)
      assert.has_error(function() base64.url_decode(true) end)
    end)
  end)
end)
