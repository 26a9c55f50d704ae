#include "pwhash.h"

#include <crypt.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

static const char itoa64[] = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static int all_b64(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\0' || strchr(itoa64, s[i]) == NULL)
            return 0;
    return 1;
}

/* A $id$[rounds=N$]salt$hash crypt string with a hash part of `hlen`. */
static int crypt_shape(const char *h, size_t idlen, size_t hlen)
{
    const char *p = h + idlen;
    if (strncmp(p, "rounds=", 7) == 0) {
        p += 7;
        while (*p >= '0' && *p <= '9')
            p++;
        if (*p++ != '$')
            return 0;
    }
    const char *d = strchr(p, '$');
    if (d == NULL || d == p || d - p > 16 || !all_b64(p, (size_t)(d - p)))
        return 0;
    return strlen(d + 1) == hlen && all_b64(d + 1, hlen);
}

int mg_pw_format(const char *h)
{
    size_t n = strlen(h);
    if ((strncmp(h, "$2y$", 4) == 0 || strncmp(h, "$2b$", 4) == 0 ||
         strncmp(h, "$2a$", 4) == 0) &&
        n == 60 && h[4] >= '0' && h[4] <= '3' && h[5] >= '0' && h[5] <= '9' && h[6] == '$' &&
        all_b64(h + 7, 53))
        return MG_PW_BCRYPT;
    if (strncmp(h, "$5$", 3) == 0 && crypt_shape(h, 3, 43))
        return MG_PW_SHA256;
    if (strncmp(h, "$6$", 3) == 0 && crypt_shape(h, 3, 86))
        return MG_PW_SHA512;
    if (strncmp(h, "$1$", 3) == 0 && crypt_shape(h, 3, 22))
        return MG_PW_MD5;
    if (strncmp(h, "$apr1$", 6) == 0 && crypt_shape(h, 6, 22))
        return MG_PW_APR1;
    if (strncmp(h, "{SHA}", 5) == 0 && n == 5 + 28 && h[n - 1] == '=')
        return MG_PW_SHA1;
    return MG_PW_UNKNOWN;
}

static void to64(char *out, unsigned long v, int n)
{
    while (n-- > 0) {
        *out++ = itoa64[v & 0x3f];
        v >>= 6;
    }
}

static int md5_of(EVP_MD_CTX *c, const void *a, size_t an, const void *b, size_t bn,
                  const void *d, size_t dn, unsigned char out[16])
{
    return EVP_DigestInit_ex(c, EVP_md5(), NULL) && EVP_DigestUpdate(c, a, an) &&
           EVP_DigestUpdate(c, b, bn) && EVP_DigestUpdate(c, d, dn) &&
           EVP_DigestFinal_ex(c, out, NULL);
}

/* Apache's MD5 crypt ($apr1$): the FreeBSD MD5-crypt algorithm with the
 * magic "$apr1$". Writes "$apr1$salt$hash" into out[64]. 0, or -1. */
static int apr1(const char *pw, size_t pwlen, const char *hash, char out[64])
{
    static const char magic[] = "$apr1$";
    const char *salt = hash + 6;
    size_t sl = 0;
    while (sl < 8 && salt[sl] && salt[sl] != '$')
        sl++;
    unsigned char alt[16], fin[16];
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c != NULL && md5_of(c, pw, pwlen, salt, sl, pw, pwlen, alt) &&
             EVP_DigestInit_ex(c, EVP_md5(), NULL) && EVP_DigestUpdate(c, pw, pwlen) &&
             EVP_DigestUpdate(c, magic, 6) && EVP_DigestUpdate(c, salt, sl);
    for (size_t left = pwlen; ok && left > 0; left -= left > 16 ? 16 : left)
        ok = EVP_DigestUpdate(c, alt, left > 16 ? 16 : left);
    for (size_t i = pwlen; ok && i; i >>= 1)
        ok = EVP_DigestUpdate(c, (i & 1) ? "" : pw, 1);
    ok = ok && EVP_DigestFinal_ex(c, fin, NULL);
    /* 1000 rounds, to make brute force slower */
    for (int i = 0; ok && i < 1000; i++) {
        ok = EVP_DigestInit_ex(c, EVP_md5(), NULL) &&
             ((i & 1) ? EVP_DigestUpdate(c, pw, pwlen) : EVP_DigestUpdate(c, fin, 16)) &&
             (i % 3 == 0 || EVP_DigestUpdate(c, salt, sl)) &&
             (i % 7 == 0 || EVP_DigestUpdate(c, pw, pwlen)) &&
             ((i & 1) ? EVP_DigestUpdate(c, fin, 16) : EVP_DigestUpdate(c, pw, pwlen)) &&
             EVP_DigestFinal_ex(c, fin, NULL);
    }
    EVP_MD_CTX_free(c);
    if (!ok)
        return -1;
    char *p = out;
    memcpy(p, magic, 6);
    p += 6;
    memcpy(p, salt, sl);
    p += sl;
    *p++ = '$';
    static const int groups[5][3] = { { 0, 6, 12 }, { 1, 7, 13 }, { 2, 8, 14 }, { 3, 9, 15 },
                                      { 4, 10, 5 } };
    for (int g = 0; g < 5; g++, p += 4)
        to64(p, ((unsigned long)fin[groups[g][0]] << 16) |
                    ((unsigned long)fin[groups[g][1]] << 8) | fin[groups[g][2]], 4);
    to64(p, fin[11], 2);
    p[2] = '\0';
    return 0;
}

static int same(const char *a, const char *b)
{
    size_t an = strlen(a), bn = strlen(b);
    return an == bn && CRYPTO_memcmp(a, b, an) == 0;
}

int mg_pw_verify(const char *hash, const char *pw, size_t pwlen)
{
    int f = mg_pw_format(hash);
    if (f == MG_PW_UNKNOWN)
        return -1;
    if (f == MG_PW_SHA1) {
        unsigned char md[20];
        unsigned char b64[32];
        if (!EVP_Digest(pw, pwlen, md, NULL, EVP_sha1(), NULL))
            return -1;
        EVP_EncodeBlock(b64, md, 20);
        return same((const char *)b64, hash + 5);
    }
    if (f == MG_PW_APR1) {
        char out[64];
        if (apr1(pw, pwlen, hash, out) != 0)
            return -1;
        return same(out, hash);
    }
    /* crypt(3) takes a C string: a password with a NUL in it cannot match
     * what htpasswd hashed from a C string either */
    if (memchr(pw, '\0', pwlen) != NULL)
        return 0;
    char *key = malloc(pwlen + 1);
    struct crypt_data *cd = calloc(1, sizeof *cd); /* ~32 KiB: not on the stack */
    int r = -1;
    if (key && cd) {
        memcpy(key, pw, pwlen);
        key[pwlen] = '\0';
        const char *out = crypt_r(key, hash, cd);
        if (out && out[0] != '*')
            r = same(out, hash);
        OPENSSL_cleanse(key, pwlen);
    }
    free(key);
    free(cd);
    return r;
}
