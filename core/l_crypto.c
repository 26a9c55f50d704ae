/* moongate.crypto: HMAC, digests, signature verification, AES-256 and random
 * bytes for plugins (PRODUCT.md gw.crypto). Every call is synchronous and
 * bounded by the size of its inputs; nothing waits on I/O, so nothing yields.
 *
 * Errors (STYLE.md (d)): a wrong argument type, an unknown algorithm name or
 * a key, iv or tag of the wrong size is a programmer mistake and raises.
 * Input a plugin must expect from the network (a forged signature, a key that
 * does not fit the token's alg, a tampered ciphertext) answers false or
 * nil, err.
 *
 * No OpenSSL object is held across a Lua call that may raise (a raise would
 * longjmp over the free). Each function checks its arguments and allocates
 * its Lua output buffer first, then creates, uses and frees its OpenSSL
 * context in a stretch with no Lua API calls, and pushes results last. The
 * OpenSSL objects that outlive a call (a parsed public key, an HMAC key's
 * keyed contexts, the fetched HMAC algorithm) are each owned by a userdata
 * whose __gc frees them.
 *
 * Every path that may have failed inside OpenSSL clears the thread's error
 * queue: TLS code on the same thread reads that queue (SSL_get_error) and
 * must not find our leftovers there. */
#include <limits.h>
#include <string.h>

#include "pwhash.h"

#include <lauxlib.h>
#include <lua.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "l_bindings.h"
#include "mg.h"

/* Registry name of the metatable of parsed-key userdata. */
#define PKEY_MT "moongate.crypto.pkey"
/* Registry field holding the key cache: PEM text → pkey userdata, plus the
 * entry count at integer index 1 (PEM keys are strings, so they never
 * collide with it). */
#define KEY_CACHE "moongate.crypto.key_cache"
/* Keys come from configuration (a handful) or from a JWKS (tens), so 256
 * entries hold them all; a plugin that feeds attacker-chosen PEMs only gets
 * the table cleared, not unbounded memory use. */
#define KEY_CACHE_MAX 256

#define AES_KEY_LEN 32
#define AES_BLOCK_LEN 16
#define GCM_TAG_LEN 16
/* OpenSSL's GCM accepts IVs of 1..128 bytes (GCM_IV_MAX_SIZE). */
#define GCM_IV_MAX 128

#define RANDOM_MAX 65536

static const char *const md_names[] = { "sha1", "sha256", "sha384", "sha512", NULL };

/* The digest named by argument `arg`; raises on an unknown name. */
static const EVP_MD *MG_LJMP check_md(lua_State *L, int arg)
{
    switch (luaL_checkoption(L, arg, NULL, md_names)) {
    case 0:
        return EVP_sha1();
    case 1:
        return EVP_sha256();
    case 2:
        return EVP_sha384();
    default:
        return EVP_sha512();
    }
}

/* ---- HMAC ---- */

/* HMAC absorbs the key into two hash states (key ^ ipad, key ^ opad) before
 * it reads any data: two extra compression-function calls per MAC, plus
 * OpenSSL 3's algorithm fetch and context setup when done one-shot. Keys are
 * few and long-lived (a JWT secret, a cookie-signing key), so each key's
 * keyed contexts are kept, one per digest, and a MAC with a known key only
 * re-initialises from the stored state (EVP_MAC_init with no key). The cache
 * maps key bytes → a userdata owning the contexts; like the public-key cache
 * it is cleared when full, so a plugin that feeds per-request keys costs
 * little more than before and memory stays bounded. Its values are weak: a
 * garbage collection cycle drops (and cleanses) them, so a secret replaced
 * by a reload does not stay in memory, at the price of setting a live key
 * up again once per cycle. */
#define HMAC_MT "moongate.crypto.hmac_keys"
#define HMAC_CACHE_MAX 256
/* Upvalues of hmac(): the key cache, and the userdata owning the fetched
 * HMAC algorithm. */
#define HMAC_UV_CACHE lua_upvalueindex(1)
#define HMAC_UV_MAC lua_upvalueindex(2)
#define HMAC_ALG_MT "moongate.crypto.hmac_alg"

static const char *const md_ossl_names[] = { "SHA1", "SHA256", "SHA384", "SHA512" };

typedef struct {
    EVP_MAC_CTX *ctx[MG_ARRAY_LEN(md_ossl_names)];
} hmac_keys_t;

static int hmac_keys_gc(lua_State *L)
{
    hmac_keys_t *k = luaL_checkudata(L, 1, HMAC_MT);
    for (size_t i = 0; i < MG_ARRAY_LEN(k->ctx); i++) {
        EVP_MAC_CTX_free(k->ctx[i]); /* cleanses the key material */
        k->ctx[i] = NULL;
    }
    return 0;
}

static int hmac_alg_gc(lua_State *L)
{
    EVP_MAC **mac = luaL_checkudata(L, 1, HMAC_ALG_MT);
    EVP_MAC_free(*mac);
    *mac = NULL;
    return 0;
}

/* Pushes a new, empty key cache (weak values). */
static void MG_LJMP hmac_cache_new(lua_State *L)
{
    lua_createtable(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
}

/* The cached contexts of the key at stack index `arg`, creating (and caching)
 * their holder if needed; pushes the holder, which keeps them alive while the
 * caller uses them. May raise (OOM) while holding no OpenSSL object: a new
 * holder starts empty. */
static hmac_keys_t *MG_LJMP hmac_keys_get(lua_State *L, int arg)
{
    hmac_keys_t *k;
    lua_Integer count;

    lua_pushvalue(L, arg);
    if (lua_rawget(L, HMAC_UV_CACHE) == LUA_TUSERDATA)
        return lua_touserdata(L, -1);
    lua_pop(L, 1);
    k = lua_newuserdatauv(L, sizeof *k, 0);
    memset(k, 0, sizeof *k);
    luaL_setmetatable(L, HMAC_MT); /* holder */
    lua_rawgeti(L, HMAC_UV_CACHE, 1);
    count = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (count >= HMAC_CACHE_MAX) {
        /* Full: start over, in place (hmac and hmac_verify share the
         * table). Holders in use stay alive through their callers' stacks;
         * the rest are collected (and cleansed). lua_next allows clearing
         * fields during the traversal. */
        lua_pushnil(L);
        while (lua_next(L, HMAC_UV_CACHE) != 0) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_pushnil(L);
            lua_rawset(L, HMAC_UV_CACHE);
        }
        count = 0;
    }
    lua_pushvalue(L, arg);
    lua_pushvalue(L, -2);
    lua_rawset(L, HMAC_UV_CACHE); /* cache[key] = holder */
    lua_pushinteger(L, count + 1);
    lua_rawseti(L, HMAC_UV_CACHE, 1);
    return k;
}

/* A context keyed with key[0..klen) for digest `i`, created in *slot if it is
 * not there yet. NULL on an OpenSSL failure. Calls no Lua API. */
static EVP_MAC_CTX *hmac_ctx(EVP_MAC *mac, EVP_MAC_CTX **slot, size_t i, const char *key,
                             size_t klen)
{
    OSSL_PARAM params[2];

    if (*slot != NULL)
        return EVP_MAC_init(*slot, NULL, 0, NULL) == 1 ? *slot : NULL;
    if (mac == NULL || (*slot = EVP_MAC_CTX_new(mac)) == NULL)
        return NULL;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 (char *)md_ossl_names[i], 0);
    params[1] = OSSL_PARAM_construct_end();
    if (EVP_MAC_init(*slot, (const unsigned char *)key, klen, params) != 1) {
        /* half set up: never reuse it */
        EVP_MAC_CTX_free(*slot);
        *slot = NULL;
        return NULL;
    }
    return *slot;
}

/* The HMAC of the arguments alg, key, data (1..3) into out; returns its
 * length. Raises on bad arguments or an OpenSSL failure. Shared by hmac and
 * hmac_verify, which have the same upvalues. */
static size_t MG_LJMP hmac_compute(lua_State *L, unsigned char out[EVP_MAX_MD_SIZE])
{
    size_t i = (size_t)luaL_checkoption(L, 1, NULL, md_names);
    size_t klen, dlen, outlen = 0;
    const char *key = luaL_checklstring(L, 2, &klen);
    const char *data = luaL_checklstring(L, 3, &dlen);
    EVP_MAC **mac = lua_touserdata(L, HMAC_UV_MAC);
    hmac_keys_t *k = hmac_keys_get(L, 2); /* pushes the holder: keeps the contexts alive */
    EVP_MAC_CTX *ctx = hmac_ctx(*mac, &k->ctx[i], i, key, klen);

    if (ctx == NULL || EVP_MAC_update(ctx, (const unsigned char *)data, dlen) != 1 ||
        EVP_MAC_final(ctx, out, &outlen, EVP_MAX_MD_SIZE) != 1) {
        ERR_clear_error();
        luaL_error(L, "hmac: OpenSSL failure");
    }
    lua_pop(L, 1); /* the holder */
    return outlen;
}

/* hmac(alg, key, data) → raw MAC bytes. */
static int l_hmac(lua_State *L)
{
    unsigned char out[EVP_MAX_MD_SIZE];
    size_t n = hmac_compute(L, out);

    lua_pushlstring(L, (const char *)out, n);
    return 1;
}

/* hmac_verify(alg, key, data, mac) → boolean: whether mac is the HMAC,
 * compared in constant time (for the length). The same as
 * equal(hmac(alg, key, data), mac) without making the MAC a Lua string. */
static int l_hmac_verify(lua_State *L)
{
    unsigned char out[EVP_MAX_MD_SIZE];
    size_t mlen;
    const char *expect = luaL_checklstring(L, 4, &mlen);
    size_t n = hmac_compute(L, out);

    lua_pushboolean(L, mlen == n && CRYPTO_memcmp(out, expect, n) == 0);
    return 1;
}

/* digest(alg, data) → raw digest bytes. */
static int l_digest(lua_State *L)
{
    const EVP_MD *md = check_md(L, 1);
    size_t dlen;
    const char *data = luaL_checklstring(L, 2, &dlen);
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int outlen = 0;

    if (EVP_Digest(data, dlen, out, &outlen, md, NULL) != 1) {
        ERR_clear_error();
        return luaL_error(L, "digest: OpenSSL failure");
    }
    lua_pushlstring(L, (const char *)out, outlen);
    return 1;
}

/* ---- public keys ---- */

static int pkey_gc(lua_State *L)
{
    EVP_PKEY **box = luaL_checkudata(L, 1, PKEY_MT);
    EVP_PKEY_free(*box);
    *box = NULL;
    return 0;
}

/* Public key PEMs are never encrypted; this keeps OpenSSL from ever falling
 * back to its default callback, which would prompt on the terminal. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* Parses a "PUBLIC KEY" PEM (OpenSSL 3's reader also takes PKCS#1 "RSA
 * PUBLIC KEY"), or failing that a "CERTIFICATE" PEM whose subject key is
 * taken. Private keys are refused: a public key is all verify needs.
 * Returns a new reference the caller owns, or NULL. Calls no Lua API, so it
 * cannot leak on a raise. */
static EVP_PKEY *pkey_parse(const char *pem, size_t n)
{
    BIO *bio = NULL;
    X509 *cert = NULL;
    EVP_PKEY *pkey = NULL;

    if (n > INT_MAX)
        goto done;
    bio = BIO_new_mem_buf(pem, (int)n);
    if (bio == NULL)
        goto done;
    pkey = PEM_read_bio_PUBKEY(bio, NULL, no_password, NULL);
    if (pkey != NULL)
        goto done;
    /* The PEM reader consumed the BIO looking for a PUBLIC KEY block; a
     * fresh one over the same bytes is simpler than rewinding. */
    BIO_free(bio);
    bio = BIO_new_mem_buf(pem, (int)n);
    if (bio == NULL)
        goto done;
    cert = PEM_read_bio_X509(bio, NULL, no_password, NULL);
    if (cert != NULL)
        pkey = X509_get_pubkey(cert);
done:
    X509_free(cert);
    BIO_free(bio);
    ERR_clear_error();
    return pkey;
}

/* Looks up or parses the PEM at stack index `arg` (a string) and pushes one
 * value: the userdata owning the key, or nil if the PEM does not parse. The
 * returned key is borrowed from that userdata; the caller keeps the userdata
 * on the stack for as long as it uses the key, since clearing the cache may
 * otherwise let the GC free it. May raise (OOM) while holding nothing: a
 * parsed key is in its userdata before the next Lua call. */
static EVP_PKEY *MG_LJMP pkey_get(lua_State *L, int arg)
{
    size_t n;
    const char *pem = lua_tolstring(L, arg, &n);
    EVP_PKEY **box;
    lua_Integer count;

    if (lua_getfield(L, LUA_REGISTRYINDEX, KEY_CACHE) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, KEY_CACHE);
    }
    lua_pushvalue(L, arg); /* cache, pem */
    if (lua_rawget(L, -2) == LUA_TUSERDATA) {
        box = lua_touserdata(L, -1);
        lua_remove(L, -2); /* box */
        return *box;
    }
    lua_pop(L, 1); /* cache */

    box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = NULL;
    luaL_setmetatable(L, PKEY_MT); /* cache, box */
    *box = pkey_parse(pem, n);
    if (*box == NULL) {
        lua_pop(L, 2);
        lua_pushnil(L);
        return NULL;
    }

    lua_rawgeti(L, -2, 1);
    count = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (count >= KEY_CACHE_MAX) {
        /* Full: start over. Keys still in use stay alive through their
         * callers' stacks; the rest are collected. */
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, KEY_CACHE);
        lua_replace(L, -3); /* new cache, box */
        count = 0;
    }
    lua_pushvalue(L, arg);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4); /* cache[pem] = box */
    lua_pushinteger(L, count + 1);
    lua_rawseti(L, -3, 1);
    lua_remove(L, -2); /* box */
    return *box;
}

/* ---- signatures ---- */

typedef enum { SIG_RSA, SIG_PSS, SIG_EC, SIG_ED } sig_kind_t;

static const char *const jose_names[] = {
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", NULL,
};

/* What one JOSE alg needs: the key type, the hash (NULL for EdDSA, which
 * hashes internally), and for ECDSA the curve and the size of r and s. */
typedef struct {
    sig_kind_t kind;
    const EVP_MD *md;
    int curve;
    size_t half;
} sig_alg_t;

static sig_alg_t MG_LJMP check_sig_alg(lua_State *L, int arg)
{
    switch (luaL_checkoption(L, arg, NULL, jose_names)) {
    case 0:
        return (sig_alg_t){ SIG_RSA, EVP_sha256(), 0, 0 };
    case 1:
        return (sig_alg_t){ SIG_RSA, EVP_sha384(), 0, 0 };
    case 2:
        return (sig_alg_t){ SIG_RSA, EVP_sha512(), 0, 0 };
    case 3:
        return (sig_alg_t){ SIG_PSS, EVP_sha256(), 0, 0 };
    case 4:
        return (sig_alg_t){ SIG_PSS, EVP_sha384(), 0, 0 };
    case 5:
        return (sig_alg_t){ SIG_PSS, EVP_sha512(), 0, 0 };
    case 6:
        return (sig_alg_t){ SIG_EC, EVP_sha256(), NID_X9_62_prime256v1, 32 };
    case 7:
        return (sig_alg_t){ SIG_EC, EVP_sha384(), NID_secp384r1, 48 };
    default:
        return (sig_alg_t){ SIG_ED, NULL, 0, 0 };
    }
}

/* Whether `pkey` may be used with `alg`. This is the defence against key
 * confusion: a token that names ES256 must not be checked with an RSA key,
 * nor with an EC key on another curve. */
static int key_fits(EVP_PKEY *pkey, const sig_alg_t *alg)
{
    char group[64];

    switch (alg->kind) {
    case SIG_RSA:
        return EVP_PKEY_is_a(pkey, "RSA");
    case SIG_PSS:
        /* An RSA-PSS key (id-RSASSA-PSS) is only good for PSS. */
        return EVP_PKEY_is_a(pkey, "RSA") || EVP_PKEY_is_a(pkey, "RSA-PSS");
    case SIG_EC: {
        int nid;
        if (!EVP_PKEY_is_a(pkey, "EC") ||
            EVP_PKEY_get_group_name(pkey, group, sizeof group, NULL) != 1)
            return 0;
        nid = OBJ_sn2nid(group);
        if (nid == NID_undef)
            nid = EC_curve_nist2nid(group);
        return nid == alg->curve;
    }
    case SIG_ED:
        /* RFC 8037's EdDSA covers both curves. */
        return EVP_PKEY_is_a(pkey, "ED25519") || EVP_PKEY_is_a(pkey, "ED448");
    }
    return 0;
}

/* Converts a JOSE ECDSA signature (r || s, each `half` bytes, big-endian)
 * into the DER ECDSA-Sig-Value OpenSSL verifies, written to out[0..cap).
 * Returns the DER length, or -1. Calls no Lua API. */
static int ecdsa_raw_to_der(const unsigned char *raw, size_t half, unsigned char *out, int cap)
{
    ECDSA_SIG *sig = NULL;
    BIGNUM *r = NULL, *s = NULL;
    int len;

    r = BN_bin2bn(raw, (int)half, NULL);
    s = BN_bin2bn(raw + half, (int)half, NULL);
    sig = ECDSA_SIG_new();
    if (r == NULL || s == NULL || sig == NULL)
        goto fail;
    if (ECDSA_SIG_set0(sig, r, s) != 1)
        goto fail;
    r = s = NULL; /* owned by sig now */
    len = i2d_ECDSA_SIG(sig, NULL);
    if (len <= 0 || len > cap)
        goto fail;
    len = i2d_ECDSA_SIG(sig, &out);
    ECDSA_SIG_free(sig);
    return len;

fail:
    ECDSA_SIG_free(sig);
    BN_free(s);
    BN_free(r);
    return -1;
}

/* Verifies sig over data with pkey. Any failure, from a malformed signature
 * to a key OpenSSL refuses for these parameters, is "not valid": 0. Calls no
 * Lua API. */
static int sig_verify(EVP_PKEY *pkey, const sig_alg_t *alg, const unsigned char *data,
                      size_t dlen, const unsigned char *sig, size_t slen)
{
    /* A DER ECDSA-Sig-Value for P-384 is at most 2 + 2 * (2 + 49) = 104. */
    unsigned char der[128];
    EVP_MD_CTX *mdctx = NULL;
    EVP_PKEY_CTX *pctx = NULL; /* owned by mdctx */
    int ok = 0;

    if (alg->kind == SIG_EC && slen == 2 * alg->half) {
        /* The JOSE form. A DER signature of exactly this length would need
         * r and s about 2^40 times smaller than usual, so any other length
         * is taken as DER; OpenSSL rejects non-canonical DER itself. */
        int len = ecdsa_raw_to_der(sig, alg->half, der, (int)sizeof der);
        if (len < 0)
            goto done;
        sig = der;
        slen = (size_t)len;
    }
    mdctx = EVP_MD_CTX_new();
    if (mdctx == NULL)
        goto done;
    if (EVP_DigestVerifyInit(mdctx, &pctx, alg->md, NULL, pkey) != 1)
        goto done;
    if (alg->kind == SIG_PSS &&
        (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
         EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, alg->md) != 1))
        goto done;
    /* One-shot, as EdDSA requires; for the others it is update + final. */
    ok = EVP_DigestVerify(mdctx, sig, slen, data, dlen) == 1;
done:
    EVP_MD_CTX_free(mdctx);
    ERR_clear_error();
    return ok;
}

/* verify(alg, public_key_pem, data, sig) → boolean, or nil, "invalid public
 * key" if the PEM does not parse. A key whose type or curve does not fit alg
 * gives false. Parsed keys are cached by PEM text. */
static int l_verify(lua_State *L)
{
    sig_alg_t alg = check_sig_alg(L, 1);
    size_t dlen, slen;
    const char *data, *sig;
    EVP_PKEY *pkey;

    luaL_checkstring(L, 2);
    data = luaL_checklstring(L, 3, &dlen);
    sig = luaL_checklstring(L, 4, &slen);
    pkey = pkey_get(L, 2); /* pushes its owner: keeps pkey alive below */
    if (pkey == NULL) {
        lua_pushnil(L);
        lua_pushliteral(L, "invalid public key");
        return 2;
    }
    lua_pushboolean(L, key_fits(pkey, &alg) &&
                           sig_verify(pkey, &alg, (const unsigned char *)data, dlen,
                                      (const unsigned char *)sig, slen));
    return 1;
}

/* ---- AES-256 ---- */

static const char *const cipher_names[] = { "aes-256-gcm", "aes-256-cbc", NULL };

/* encrypt(cipher, key, iv, data) → ciphertext[, tag] and
 * decrypt(cipher, key, iv, data[, tag]) → plaintext, or nil, "decryption
 * failed" when the GCM tag does not match or the CBC padding is bad. */
static int MG_LJMP aes_crypt(lua_State *L, int enc)
{
    int gcm = luaL_checkoption(L, 1, NULL, cipher_names) == 0;
    size_t klen, ivlen, dlen, taglen;
    const char *key = luaL_checklstring(L, 2, &klen);
    const char *iv = luaL_checklstring(L, 3, &ivlen);
    const char *data = luaL_checklstring(L, 4, &dlen);
    const char *tag = NULL;
    unsigned char tagout[GCM_TAG_LEN];
    unsigned char *out;
    luaL_Buffer b;
    EVP_CIPHER_CTX *ctx = NULL;
    int n1 = 0, n2 = 0;
    enum { FAILED, REJECTED, DONE } state = FAILED;

    luaL_argcheck(L, klen == AES_KEY_LEN, 2, "key must be 32 bytes");
    if (gcm)
        luaL_argcheck(L, ivlen >= 1 && ivlen <= GCM_IV_MAX, 3, "iv must be 1..128 bytes");
    else
        luaL_argcheck(L, ivlen == AES_BLOCK_LEN, 3, "iv must be 16 bytes");
    /* EVP lengths are ints; leave room for the final padding block. */
    luaL_argcheck(L, dlen <= INT_MAX - 2 * AES_BLOCK_LEN, 4, "data too long");
    if (gcm && !enc) {
        tag = luaL_checklstring(L, 5, &taglen);
        luaL_argcheck(L, taglen == GCM_TAG_LEN, 5, "tag must be 16 bytes");
    }
    /* The output buffer is the last thing that may raise before the
     * context exists. CBC output grows by at most one block. */
    out = (unsigned char *)luaL_buffinitsize(L, &b, dlen + AES_BLOCK_LEN);

    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        goto done;
    if (EVP_CipherInit_ex(ctx, gcm ? EVP_aes_256_gcm() : EVP_aes_256_cbc(), NULL, NULL, NULL,
                          enc) != 1)
        goto done;
    if (gcm && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, (int)ivlen, NULL) != 1)
        goto done;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, (const unsigned char *)key,
                          (const unsigned char *)iv, enc) != 1)
        goto done;
    if (EVP_CipherUpdate(ctx, out, &n1, (const unsigned char *)data, (int)dlen) != 1)
        goto done;
    /* OpenSSL copies the tag; the cast only drops a const its API lacks. */
    if (tag != NULL &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, GCM_TAG_LEN, (void *)tag) != 1)
        goto done;
    /* Final is where GCM checks the tag and CBC checks the padding (and
     * the length being whole blocks). */
    if (EVP_CipherFinal_ex(ctx, out + n1, &n2) != 1) {
        state = enc ? FAILED : REJECTED;
        goto done;
    }
    if (gcm && enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, GCM_TAG_LEN, tagout) != 1)
        goto done;
    state = DONE;
done:
    EVP_CIPHER_CTX_free(ctx);
    ERR_clear_error();
    if (state == DONE) {
        luaL_pushresultsize(&b, (size_t)n1 + (size_t)n2);
        if (!(gcm && enc))
            return 1;
        lua_pushlstring(L, (const char *)tagout, GCM_TAG_LEN);
        return 2;
    }
    /* GCM decryption wrote unauthenticated plaintext; wipe it. */
    OPENSSL_cleanse(out, dlen + AES_BLOCK_LEN);
    luaL_pushresultsize(&b, 0);
    lua_pop(L, 1);
    if (state == REJECTED) {
        lua_pushnil(L);
        lua_pushliteral(L, "decryption failed");
        return 2;
    }
    return luaL_error(L, "%s: OpenSSL failure", enc ? "encrypt" : "decrypt");
}

static int l_encrypt(lua_State *L)
{
    return aes_crypt(L, 1);
}

static int l_decrypt(lua_State *L)
{
    return aes_crypt(L, 0);
}

/* ---- misc ---- */

/* random(n) → n bytes from the CSPRNG. Raises if the RNG fails rather than
 * returning something a plugin might use as a key unchecked. */
static int l_random(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_Buffer b;
    unsigned char *p;

    luaL_argcheck(L, n >= 0 && n <= RANDOM_MAX, 1, "must be 0..65536");
    p = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)n);
    if (n > 0 && RAND_bytes(p, (int)n) != 1) {
        ERR_clear_error();
        return luaL_error(L, "random: RNG failure");
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* equal(a, b) → boolean. Time depends on the length only, so comparing a
 * MAC from the network against the expected one leaks nothing but its
 * length, which is public anyway. */
static int l_equal(lua_State *L)
{
    size_t an, bn;
    const char *a = luaL_checklstring(L, 1, &an);
    const char *b = luaL_checklstring(L, 2, &bn);

    lua_pushboolean(L, an == bn && CRYPTO_memcmp(a, b, an) == 0);
    return 1;
}

/* password_verify(hash, password) → boolean, or nil, err for a hash in no
 * known format. htpasswd hashes (pwhash.h); synchronous: a bcrypt hash
 * costs what its cost factor says. */
static int l_password_verify(lua_State *L)
{
    size_t pn;
    const char *hash = luaL_checkstring(L, 1);
    const char *pw = luaL_checklstring(L, 2, &pn);
    int r = mg_pw_verify(hash, pw, pn);
    if (r < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, mg_pw_format(hash) ? "hashing failed" : "unknown hash format");
        return 2;
    }
    lua_pushboolean(L, r);
    return 1;
}

/* password_format(hash) → "bcrypt", "sha256-crypt", "sha512-crypt",
 * "md5-crypt", "apr1", "sha1", or nil: checks a hash's shape at config time. */
static int l_password_format(lua_State *L)
{
    static const char *const names[] = { NULL, "bcrypt", "sha256-crypt", "sha512-crypt",
                                         "md5-crypt", "apr1", "sha1" };
    const char *n = names[mg_pw_format(luaL_checkstring(L, 1))];
    if (n)
        lua_pushstring(L, n);
    else
        luaL_pushfail(L);
    return 1;
}

int luaopen_moongate_crypto(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        { "digest", l_digest },   { "verify", l_verify },
        { "encrypt", l_encrypt }, { "decrypt", l_decrypt }, { "random", l_random },
        { "equal", l_equal },     { "password_verify", l_password_verify },
        { "password_format", l_password_format }, { NULL, NULL },
    };
    EVP_MAC **mac;

    if (luaL_newmetatable(L, PKEY_MT)) {
        lua_pushcfunction(L, pkey_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "locked");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, HMAC_MT)) {
        lua_pushcfunction(L, hmac_keys_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "locked");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    luaL_newlib(L, funcs);

    /* hmac's upvalues: its key cache and the HMAC algorithm, fetched once.
     * A failed fetch leaves NULL there, and hmac() raises when called. */
    hmac_cache_new(L);
    mac = lua_newuserdatauv(L, sizeof *mac, 0);
    *mac = NULL;
    if (luaL_newmetatable(L, HMAC_ALG_MT)) {
        lua_pushcfunction(L, hmac_alg_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    *mac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
    ERR_clear_error();
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2); /* lib, cache, mac, cache, mac */
    lua_pushcclosure(L, l_hmac, 2);
    lua_setfield(L, -4, "hmac");
    lua_pushcclosure(L, l_hmac_verify, 2);
    lua_setfield(L, -2, "hmac_verify");
    return 1;
}
