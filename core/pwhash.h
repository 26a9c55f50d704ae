/* Password hashes as htpasswd writes them (what Traefik's BasicAuth takes):
 * bcrypt ($2y$, $2b$, $2a$), SHA-crypt ($5$, $6$) and MD5-crypt ($1$)
 * through libxcrypt's crypt_r; Apache's $apr1$ MD5 and {SHA} on OpenSSL.
 * Synchronous: bcrypt costs what its cost factor says (tens of ms at 10). */
#ifndef MG_PWHASH_H
#define MG_PWHASH_H

#include <stddef.h>

enum { MG_PW_UNKNOWN = 0, MG_PW_BCRYPT, MG_PW_SHA256, MG_PW_SHA512, MG_PW_MD5, MG_PW_APR1,
       MG_PW_SHA1 };

/* The format of `hash` (MG_PW_*), checked for shape (prefix, salt, length),
 * so a config error can be reported before any password is tried. */
int mg_pw_format(const char *hash);
/* 1 if `pw` (pwlen bytes, may hold NUL) matches `hash`, 0 if not, -1 if
 * the hash is not in a known format or hashing failed. The final compare
 * is constant-time. */
int mg_pw_verify(const char *hash, const char *pw, size_t pwlen);

#endif
