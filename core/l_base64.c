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

/* Decoding tables: for each alphabet, four tables giving a byte's 6-bit
 * value already shifted to its place in a 24-bit group (bits 18, 12, 6, 0),
 * so a group of four characters is four loads and three ORs. A byte outside
 * the alphabet (all of 0x80 and up, and '=': padding is stripped before
 * decoding, so one anywhere else is an error) gives B64_BAD, a bit no valid
 * group has. Built by the preprocessor from the same rules as the alphabets
 * above. */
#define B64_BAD 0x1000000u
#define B64_DIGIT(c) ((c) >= 'A' && (c) <= 'Z'   ? (c) - 'A'                                  \
                      : (c) >= 'a' && (c) <= 'z' ? (c) - 'a' + 26                             \
                      : (c) >= '0' && (c) <= '9' ? (c) - '0' + 52                             \
                                                 : -1)
#define B64_STD(c) (B64_DIGIT(c) >= 0 ? B64_DIGIT(c) : (c) == '+' ? 62 : (c) == '/' ? 63 : -1)
#define B64_URL(c) (B64_DIGIT(c) >= 0 ? B64_DIGIT(c) : (c) == '-' ? 62 : (c) == '_' ? 63 : -1)
#define B64_E(f, c, sh) (f(c) < 0 ? B64_BAD : (uint32_t)f(c) << (sh))
#define B64_R4(f, c, sh) B64_E(f, c, sh), B64_E(f, (c) + 1, sh), B64_E(f, (c) + 2, sh), \
                         B64_E(f, (c) + 3, sh)
#define B64_R16(f, c, sh) B64_R4(f, c, sh), B64_R4(f, (c) + 4, sh), B64_R4(f, (c) + 8, sh), \
                          B64_R4(f, (c) + 12, sh)
#define B64_R64(f, c, sh) B64_R16(f, c, sh), B64_R16(f, (c) + 16, sh),                   \
                          B64_R16(f, (c) + 32, sh), B64_R16(f, (c) + 48, sh)
#define B64_TABLE(f, sh) { B64_R64(f, 0, sh), B64_R64(f, 64, sh), B64_R64(f, 128, sh), \
                           B64_R64(f, 192, sh) }

typedef uint32_t b64_tables_t[4][256];

static const b64_tables_t std_values = {
    B64_TABLE(B64_STD, 18), B64_TABLE(B64_STD, 12), B64_TABLE(B64_STD, 6), B64_TABLE(B64_STD, 0),
};
static const b64_tables_t url_values = {
    B64_TABLE(B64_URL, 18), B64_TABLE(B64_URL, 12), B64_TABLE(B64_URL, 6), B64_TABLE(B64_URL, 0),
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
static ptrdiff_t b64_decode(const b64_tables_t t, const unsigned char *src, size_t n,
                            unsigned char *dst)
{
    unsigned char *d = dst;
    size_t i, whole = n / 4 * 4;
    uint32_t v;

    if (n % 4 == 1)
        return -1;
    for (i = 0; i < whole; i += 4) {
        v = t[0][src[i]] | t[1][src[i + 1]] | t[2][src[i + 2]] | t[3][src[i + 3]];
        if (v & B64_BAD)
            return -1;
        d[0] = (unsigned char)(v >> 16);
        d[1] = (unsigned char)(v >> 8);
        d[2] = (unsigned char)v;
        d += 3;
    }
    switch (n - whole) {
    case 2: /* 12 bits: one byte and 4 zero bits */
        v = t[0][src[i]] | t[1][src[i + 1]];
        if ((v & B64_BAD) || (v & 0xf000))
            return -1;
        *d++ = (unsigned char)(v >> 16);
        break;
    case 3: /* 18 bits: two bytes and 2 zero bits */
        v = t[0][src[i]] | t[1][src[i + 1]] | t[2][src[i + 2]];
        if ((v & B64_BAD) || (v & 0xc0))
            return -1;
        *d++ = (unsigned char)(v >> 16);
        *d++ = (unsigned char)(v >> 8);
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
static int MG_LJMP push_decoded(lua_State *L, const b64_tables_t values, int pad_required)
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
