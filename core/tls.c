/* Server-side TLS on OpenSSL 3. The handshake is driven by the first reads
 * (SSL_read runs it), so a connection needs no extra state: the caller's
 * header timeout bounds it. Partial writes are on and the write buffer may
 * move between retries, so the caller can keep its queue as for plain TCP. */
#include "tls.h"
#include "mg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

struct mg_tls {
    SSL *ssl;
    int want;               /* MG_TLS_WANT_* of the last MG_EAGAIN */
    unsigned failed : 1;    /* fatal error: no close_notify, no more I/O */
    unsigned starved : 1;   /* the last read needs more bytes from the socket */
    unsigned shut : 1;      /* close_notify sent */
};

static const unsigned char alpn_http11[] = "\x08http/1.1";
static const unsigned char alpn_h2[] = "\x02h2\x08http/1.1";

/* Picks h2 (when the listener speaks HTTP/2: arg non-NULL), else
 * http/1.1, in our order of preference among what the client offers;
 * with neither, goes on without ALPN rather than failing the handshake
 * (the client then gets HTTP/1.1 errors it can read, not an alert). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    unsigned char *sel = NULL;
    const unsigned char *ours = arg ? alpn_h2 : alpn_http11;
    unsigned int n = arg ? sizeof alpn_h2 - 1 : sizeof alpn_http11 - 1;
    if (SSL_select_next_proto(&sel, outlen, ours, n, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* An encrypted key fails to load instead of OpenSSL asking for its
 * passphrase on the terminal, which would block a reload. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* "why" from the OpenSSL error queue (emptied), or dflt. */
static const char *ssl_reason(char *buf, size_t n, const char *dflt)
{
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        if (last == 0)
            last = e; /* the first is the cause ("no start line"), the rest context */
    if (last == 0)
        return dflt;
    const char *r = ERR_reason_error_string(last);
    if (r == NULL) {
        ERR_error_string_n(last, buf, n);
        return buf;
    }
    snprintf(buf, n, "%s", r);
    return buf;
}

/* Opens the file to report a missing or unreadable one with errno's words
 * rather than OpenSSL's. 0, or -1 with err filled. */
static int readable(const char *what, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "cannot read %s %s: %s", what, path, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

struct ssl_ctx_st *mg_tls_ctx_new(const char *cert, const char *key, int *key_at_fault, char *err,
                                  size_t errlen)
{
    char why[256];
    SSL_CTX *ctx = NULL;
    *key_at_fault = 0;
    ERR_clear_error();
    if (readable("certificate", cert, err, errlen) != 0)
        return NULL;
    *key_at_fault = 1;
    if (readable("private key", key, err, errlen) != 0)
        return NULL;
    *key_at_fault = 0;
    ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create a TLS context: %s",
                 ssl_reason(why, sizeof why, "out of memory"));
        return NULL;
    }
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(err, errlen, "cannot load certificate %s: %s", cert,
                 ssl_reason(why, sizeof why, "not a PEM certificate"));
        goto fail;
    }
    *key_at_fault = 1;
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            snprintf(err, errlen, "private key %s does not match certificate %s", key, cert);
            goto fail;
        }
        int encrypted = 0;
        unsigned long last = 0;
        while ((e = ERR_get_error()) != 0) {
            if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ)
                encrypted = 1;
            if (last == 0)
                last = e;
        }
        if (encrypted) {
            snprintf(err, errlen,
                     "cannot load private key %s: it is encrypted (a passphrase-less key is "
                     "needed)", key);
            goto fail;
        }
        const char *r = last ? ERR_reason_error_string(last) : NULL;
        snprintf(err, errlen, "cannot load private key %s (want a PEM private key): %s", key,
                 r ? r : "unreadable");
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "private key %s does not match certificate %s", key, cert);
        goto fail;
    }
    *key_at_fault = 0;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* one socket read may bring several records: fewer syscalls; the
     * reader checks mg_tls_pending for what it holds */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"moongate", 8);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void mg_tls_ctx_h2(struct ssl_ctx_st *ctx, int on)
{
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, on ? (void *)alpn_h2 : NULL);
}

int mg_tls_alpn_h2(const mg_tls_t *t)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

void mg_tls_ctx_free(struct ssl_ctx_st *ctx)
{
    SSL_CTX_free(ctx);
}

mg_tls_t *mg_tls_new(struct ssl_ctx_st *ctx, int fd)
{
    mg_tls_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->ssl = SSL_new(ctx);
    if (t->ssl == NULL || SSL_set_fd(t->ssl, fd) != 1) {
        ERR_clear_error();
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    SSL_set_accept_state(t->ssl);
    return t;
}

void mg_tls_free(mg_tls_t *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl);
    free(t);
}

/* Maps a failed SSL_* call: MG_EAGAIN with want set, 0 at a clean end of
 * stream, MG_ECLOSED otherwise (the session is then unusable). */
static ssize_t map_error(mg_tls_t *t, int rc)
{
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        t->want = MG_TLS_WANT_READ;
        return MG_EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        t->want = MG_TLS_WANT_WRITE;
        return MG_EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == EAGAIN || errno == EINTR) {
            /* not expected from the socket BIO, but harmless */
            t->want = MG_TLS_WANT_READ;
            return MG_EAGAIN;
        }
        /* fall through */
    default:
        ERR_clear_error();
        t->failed = 1;
        return MG_ECLOSED;
    }
}

ssize_t mg_tls_read(mg_tls_t *t, void *buf, size_t n)
{
    if (t->failed)
        return MG_ECLOSED;
    size_t got = 0;
    t->want = MG_TLS_WANT_NONE;
    do {
        size_t k = 0;
        ERR_clear_error();
        int rc = SSL_read_ex(t->ssl, (char *)buf + got, n - got, &k);
        if (rc != 1) {
            if (got == 0) {
                ssize_t e = map_error(t, rc);
                t->starved = e == MG_EAGAIN;
                return e;
            }
            /* return the bytes; the next call sees the condition again.
             * An incomplete record waits for the socket, not for us. */
            t->starved = SSL_get_error(t->ssl, rc) == SSL_ERROR_WANT_READ;
            ERR_clear_error();
            return (ssize_t)got;
        }
        got += k;
    } while (got < n && SSL_has_pending(t->ssl));
    t->starved = 0;
    return (ssize_t)got;
}

ssize_t mg_tls_write(mg_tls_t *t, const void *buf, size_t n)
{
    if (t->failed || t->shut)
        return MG_ECLOSED;
    size_t k = 0;
    t->want = MG_TLS_WANT_NONE;
    ERR_clear_error();
    int rc = SSL_write_ex(t->ssl, buf, n, &k);
    if (rc != 1) {
        ssize_t e = map_error(t, rc);
        return e == 0 ? MG_ECLOSED : e;
    }
    return (ssize_t)k;
}

int mg_tls_want(const mg_tls_t *t)
{
    return t->want;
}

int mg_tls_pending(const mg_tls_t *t)
{
    /* SSL_has_pending counts an incomplete record too: after a read that
     * starved on one, the kernel reports the rest */
    return !t->failed && !t->starved && SSL_has_pending(t->ssl);
}

int mg_tls_ready(const mg_tls_t *t)
{
    return SSL_is_init_finished(t->ssl);
}

void mg_tls_shutdown(mg_tls_t *t)
{
    if (t == NULL || t->failed || t->shut || !SSL_is_init_finished(t->ssl))
        return;
    t->shut = 1;
    ERR_clear_error();
    if (SSL_shutdown(t->ssl) < 0)
        ERR_clear_error(); /* socket full or gone: the close goes without it */
}
