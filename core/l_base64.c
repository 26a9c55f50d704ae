/* moongate.base64: RFC 4648 base64, standard (section 4, padded) and URL-safe
 * (section 5, unpadded as JOSE uses it). PRODUCT.md gw.base64.
 *
 * The codec is written here rather than taken from OpenSSL: EVP_DecodeBlock
 * skips leading and trailing whitespace, returns the padding bytes as zeros
 * (the caller has to count the '=' to trim them), knows no URL alphabet and
 * accepts non-zero bits under the padding. Fixing all of that around it is
 * more code than the table-driven codec below.
 *
 * Decoding is strict because its input comes from the network (tokens,
 * cookies) and a lenient decoder gives several spellings to one value, which
 * breaks "compare the encoded form" checks: the length must fit, every
 * character must be in the alphabet, '=' may only end the input, and the
 * unused low bits of the last character must be zero (the canonical form;
 * RFC 4648 section 3.5 allows a decoder to insist on this). Bad input returns
 * nil, "invalid base64"; a non-string argument raises. */
#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

#include "l_bindings.h"
#include "mg.h"

static const char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Byte → 6-bit value, -1 if the byte is not in the alphabet (all of 0x80 and
 * up). '=' maps to -1 as well: padding is stripped before decoding, so one
 * anywhere else is an error. Every byte has an entry: one load a character. */
static const signed char std_values[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    /* bytes >= 0x80 */
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};
static const signed char url_values[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, 63,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    /* bytes >= 0x80 */
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

/* Writes the encoding of src[0..n) to dst, which has room for
 * 4 * ceil(n / 3) bytes; returns the number of bytes written. Padding is
 * written only if `pad`. */
static size_t b64_encode(const char *alphabet, int pad, const unsigned char *src, size_t n,
                         char *dst)
{
    char *d = dst;
    size_t i = 0;

    for (; n - i >= 3; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        *d++ = alphabet[v >> 18];
        *d++ = alphabet[(v >> 12) & 63];
        *d++ = alphabet[(v >> 6) & 63];
        *d++ = alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)src[i] << 16;
        *d++ = alphabet[v >> 18];
        *d++ = alphabet[(v >> 12) & 63];
        if (pad) {
            *d++ = '=';
            *d++ = '=';
        }
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8;
        *d++ = alphabet[v >> 18];
        *d++ = alphabet[(v >> 12) & 63];
        *d++ = alphabet[(v >> 6) & 63];
        if (pad)
            *d++ = '=';
    }
    return (size_t)(d - dst);
}

/* Decodes n characters with the padding already stripped into dst, which has
 * room for n / 4 * 3 + 2 bytes. Returns the number of bytes written, or -1 if
 * a character is outside the alphabet, the length is impossible (n % 4 == 1)
 * or the bits under the missing padding are not zero. Whole groups of four
 * are decoded with one validity check per group: tokens and cookies are
 * hundreds of characters, decoded on every request. */
static ptrdiff_t b64_decode(const signed char *values, const unsigned char *src, size_t n,
                            unsigned char *dst)
{
    unsigned char *d = dst;
    size_t i, whole = n / 4 * 4;
    int32_t a, b, c, e;

    if (n % 4 == 1)
        return -1;
    for (i = 0; i < whole; i += 4) {
        a = values[src[i]];
        b = values[src[i + 1]];
        c = values[src[i + 2]];
        e = values[src[i + 3]];
        if ((a | b | c | e) < 0)
            return -1;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)e;
        d[0] = (unsigned char)(v >> 16);
        d[1] = (unsigned char)(v >> 8);
        d[2] = (unsigned char)v;
        d += 3;
    }
    switch (n - whole) {
    case 2: /* 12 bits: one byte and 4 zero bits */
        a = values[src[i]];
        b = values[src[i + 1]];
        if ((a | b) < 0 || (b & 0xf))
            return -1;
        *d++ = (unsigned char)(a << 2 | b >> 4);
        break;
    case 3: /* 18 bits: two bytes and 2 zero bits */
        a = values[src[i]];
        b = values[src[i + 1]];
        c = values[src[i + 2]];
        if ((a | b | c) < 0 || (c & 0x3))
            return -1;
        *d++ = (unsigned char)(a << 2 | b >> 4);
        *d++ = (unsigned char)((b & 0xf) << 4 | c >> 2);
        break;
    }
    return d - dst;
}

/* encode(s) / url_encode(s). Raises if s is not a string (or number). */
static int MG_LJMP push_encoded(lua_State *L, const char *alphabet, int pad)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char *dst;

    luaL_argcheck(L, n <= (SIZE_MAX - 3) / 4 * 3 - 3, 1, "string too long");
    dst = luaL_buffinitsize(L, &b, (n + 2) / 3 * 4);
    luaL_pushresultsize(&b, b64_encode(alphabet, pad, (const unsigned char *)s, n, dst));
    return 1;
}

/* Narrows s[0..*n) to the bytes i..j of it, 1-based and inclusive, negative
 * counting from the end, clamped to the string: string.sub's rules. */
static const unsigned char *narrow(const unsigned char *s, size_t *n, lua_Integer i,
                                   lua_Integer j)
{
    lua_Integer len = (lua_Integer)*n;

    if (i < 0)
        i = i < -len ? 1 : len + i + 1;
    else if (i == 0)
        i = 1;
    if (j < 0)
        j = j < -len ? 0 : len + j + 1;
    else if (j > len)
        j = len;
    if (i > j) {
        *n = 0;
        return s;
    }
    *n = (size_t)(j - i + 1);
    return s + (i - 1);
}

/* decode(s[, i[, j]]) / url_decode(s[, i[, j]]): the bytes, or nil, "invalid
 * base64". The standard form requires padding; the URL form takes unpadded
 * input (what JOSE sends) and also correctly padded input. With i and j only
 * s:sub(i, j) is decoded, without making that substring (a JWT's parts).
 * Raises only if s is not a string (or number) or i, j are not integers. */
static int MG_LJMP push_decoded(lua_State *L, const signed char *values, int pad_required)
{
    size_t n, pads = 0;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    unsigned char *dst;
    ptrdiff_t len;

    if (!lua_isnoneornil(L, 2) || !lua_isnoneornil(L, 3))
        s = narrow(s, &n, luaL_optinteger(L, 2, 1), luaL_optinteger(L, 3, -1));

    /* At most two '=' and only on a whole 4-character group; any other '='
     * reaches b64_decode and is rejected there. */
    if (n % 4 == 0 && n > 0 && s[n - 1] == '=')
        pads = s[n - 2] == '=' ? 2 : 1;
    if (pad_required && n % 4 != 0)
        goto invalid;
    dst = (unsigned char *)luaL_buffinitsize(L, &b, n / 4 * 3 + 2);
    len = b64_decode(values, s, n - pads, dst);
    if (len < 0) {
        luaL_pushresultsize(&b, 0);
        lua_pop(L, 1);
        goto invalid;
    }
    luaL_pushresultsize(&b, (size_t)len);
    return 1;

invalid:
    lua_pushnil(L);
    lua_pushliteral(L, "invalid base64");
    return 2;
}

static int l_encode(lua_State *L)
{
    return push_encoded(L, std_alphabet, 1);
}

static int l_decode(lua_State *L)
{
    return push_decoded(L, std_values, 1);
}

static int l_url_encode(lua_State *L)
{
    return push_encoded(L, url_alphabet, 0);
}

static int l_url_decode(lua_State *L)
{
    return push_decoded(L, url_values, 0);
}

int luaopen_moongate_base64(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        { "encode", l_encode },
        { "decode", l_decode },
        { "url_encode", l_url_encode },
        { "url_decode", l_url_decode },
        { NULL, NULL },
    };

    luaL_newlib(L, funcs);
    return 1;
}
