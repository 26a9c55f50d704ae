/* Client-side TLS (tls_client.h): OpenSSL 3 on nonblocking sockets.
 *
 * Reads use read-ahead, so one read(2) brings in as many records as the
 * socket holds and mg_tlsc_recv hands out several of them per call. The
 * price: records can sit decrypted-but-unread inside OpenSSL where epoll
 * cannot see them, which is what MG_TLSC_MORE reports (the caller then
 * reads again without waiting for the socket).
 *
 * Renegotiation is refused, so in practice a read never needs to write and
 * a write never needs to read; the flags for those cases exist so a caller
 * can still handle them without spinning. */
#include "tls_client.h"
#include "mg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define READ_BUFFER (32 * 1024) /* OpenSSL's read-ahead buffer per connection */

struct mg_tlsc {
    SSL_CTX *ctx;
    int verify;
};

/* The server issued a session (TLS 1.3: a ticket, after the handshake):
 * keep the newest in the connection's slot for the next connect. */
static int new_session_cb(SSL *s, SSL_SESSION *sess)
{
    SSL_SESSION **slot = SSL_get_app_data(s);
    if (slot == NULL)
        return 0;
    SSL_SESSION_free(*slot);
    *slot = sess;
    return 1; /* the reference is ours now */
}

static void ssl_errors(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "unknown error";
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, errlen, "%s: %s", what, buf);
    ERR_clear_error();
}

mg_tlsc_t *mg_tlsc_new(int verify, const char *ca_file, char *err, size_t errlen)
{
    mg_tlsc_t *t = calloc(1, sizeof *t);
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ERR_clear_error();
    t->verify = verify ? 1 : 0;
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (t->ctx == NULL) {
        ssl_errors(err, errlen, "cannot create a TLS context");
        goto fail;
    }
    SSL_CTX *c = t->ctx;
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(c, 1);
    SSL_CTX_set_default_read_buffer_len(c, READ_BUFFER);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c, new_session_cb);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(c, alpn, sizeof alpn - 1);
    if (t->verify) {
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
        int ok = ca_file ? SSL_CTX_load_verify_locations(c, ca_file, NULL)
                         : SSL_CTX_set_default_verify_paths(c);
        if (ok != 1) {
            char what[300];
            snprintf(what, sizeof what, "cannot load CA file '%s'", ca_file ? ca_file : "(system)");
            ssl_errors(err, errlen, what);
            goto fail;
        }
    } else {
        SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
    }
    ERR_clear_error();
    return t;
fail:
    mg_tlsc_free(t);
    return NULL;
}

void mg_tlsc_free(mg_tlsc_t *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}

int mg_tlsc_verifies(const mg_tlsc_t *t)
{
    return t->verify;
}

int mg_tlsc_offer_h2(mg_tlsc_t *t)
{
    static const unsigned char alpn[] = "\x02h2";
    return SSL_CTX_set_alpn_protos(t->ctx, alpn, sizeof alpn - 1) == 0 ? 0 : -1;
}

int mg_tlsc_is_h2(struct ssl_st *s)
{
    const unsigned char *p = NULL;
    unsigned n = 0;
    SSL_get0_alpn_selected(s, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

static int is_ip_literal(const char *name)
{
    unsigned char b[16];
    return inet_pton(AF_INET, name, b) == 1 || inet_pton(AF_INET6, name, b) == 1;
}

struct ssl_st *mg_tlsc_open(mg_tlsc_t *t, int fd, const char *name,
                            struct ssl_session_st **cache)
{
    ERR_clear_error();
    SSL *s = SSL_new(t->ctx);
    if (s == NULL)
        goto fail;
    if (SSL_set_fd(s, fd) != 1)
        goto fail;
    int ip = is_ip_literal(name);
    if (!ip && name[0] && SSL_set_tlsext_host_name(s, name) != 1)
        goto fail;
    if (t->verify) {
        int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), name)
                    : SSL_set1_host(s, name);
        if (ok != 1)
            goto fail;
    }
    if (cache) {
        SSL_set_app_data(s, cache);
        if (*cache)
            SSL_set_session(s, *cache);
    }
    SSL_set_connect_state(s);
    return s;
fail:
    SSL_free(s);
    ERR_clear_error();
    return NULL;
}

int mg_tlsc_handshake(struct ssl_st *s, char *err, size_t errlen)
{
    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(s);
    if (rc == 1)
        return MG_TLSC_DONE;
    int e = SSL_get_error(s, rc);
    if (e == SSL_ERROR_WANT_READ)
        return MG_TLSC_WANT_READ;
    if (e == SSL_ERROR_WANT_WRITE)
        return MG_TLSC_WANT_WRITE;
    unsigned long code = ERR_peek_error();
    long vr = SSL_get_verify_result(s);
    if (code && ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED && vr != X509_V_OK) {
        snprintf(err, errlen, "tls handshake failed: certificate verify failed (%s)",
                 X509_verify_cert_error_string(vr));
    } else if (code) {
        const char *why = ERR_reason_error_string(code);
        char buf[256];
        if (why == NULL) {
            ERR_error_string_n(code, buf, sizeof buf);
            why = buf;
        }
        snprintf(err, errlen, "tls handshake failed: %s", why);
    } else if (e == SSL_ERROR_SYSCALL && errno != 0) {
        snprintf(err, errlen, "tls handshake failed: %s", strerror(errno));
    } else {
        snprintf(err, errlen, "tls handshake failed: connection closed by the server");
    }
    ERR_clear_error();
    return MG_TLSC_FAILED;
}

/* The error of a failed SSL_read/SSL_write as a read(2)-style result.
 * `other` is the flag for "needs the opposite direction". */
static ssize_t io_error(SSL *s, int rc, unsigned *flags, unsigned other)
{
    switch (SSL_get_error(s, rc)) {
    case SSL_ERROR_WANT_READ:
        if (other == MG_TLSC_WR_WANTS_READ)
            *flags |= other;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        if (other == MG_TLSC_RD_WANTS_WRITE)
            *flags |= other;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        if (errno == 0)
            return 0; /* EOF without close_notify */
        return -1;
    default:
        ERR_clear_error();
        errno = EPROTO;
        return -1;
    }
}

ssize_t mg_tlsc_recv(struct ssl_st *s, void *p, size_t n, unsigned *flags)
{
    size_t got = 0;
    *flags = 0;
    ERR_clear_error();
    while (got < n) {
        size_t k = 0;
        errno = 0;
        int rc = SSL_read_ex(s, (char *)p + got, n - got, &k);
        if (rc == 1) {
            got += k;
            if (!SSL_has_pending(s))
                return (ssize_t)got; /* the rest, if any, is still in the socket */
            continue;
        }
        if (got > 0) {
            /* Hand out what we have; the error (or EAGAIN) comes back on the
             * next call, which MORE asks for unless it is plain EAGAIN. */
            unsigned f = 0;
            ssize_t r = io_error(s, rc, &f, MG_TLSC_RD_WANTS_WRITE);
            if (!(r < 0 && errno == EAGAIN))
                *flags |= MG_TLSC_MORE;
            *flags |= f;
            return (ssize_t)got;
        }
        return io_error(s, rc, flags, MG_TLSC_RD_WANTS_WRITE);
    }
    if (SSL_has_pending(s))
        *flags |= MG_TLSC_MORE;
    return (ssize_t)got;
}

ssize_t mg_tlsc_send(struct ssl_st *s, const void *p, size_t n, unsigned *flags)
{
    *flags = 0;
    ERR_clear_error();
    errno = 0;
    size_t k = 0;
    int rc = SSL_write_ex(s, p, n, &k);
    if (rc == 1)
        return (ssize_t)k;
    ssize_t r = io_error(s, rc, flags, MG_TLSC_WR_WANTS_READ);
    if (r == 0) {
        errno = EPIPE; /* the peer closed: a write cannot succeed */
        r = -1;
    }
    return r;
}

int mg_tlsc_idle_ok(struct ssl_st *s, void *scratch, size_t n)
{
    ERR_clear_error();
    errno = 0;
    size_t k = 0;
    int rc = SSL_read_ex(s, scratch, n, &k);
    if (rc == 1)
        return 0; /* bytes nobody asked for */
    int e = SSL_get_error(s, rc);
    ERR_clear_error();
    return e == SSL_ERROR_WANT_READ;
}

void mg_tlsc_close(struct ssl_st *s, int peer_gone)
{
    if (s == NULL)
        return;
    ERR_clear_error();
    if (!peer_gone && SSL_is_init_finished(s) && SSL_get_shutdown(s) == 0)
        SSL_shutdown(s); /* one close_notify write; the answer is not awaited */
    ERR_clear_error();
    SSL_free(s);
}

void mg_tlsc_shutdown(struct ssl_st *s)
{
    if (s == NULL || !SSL_is_init_finished(s) || (SSL_get_shutdown(s) & SSL_SENT_SHUTDOWN))
        return;
    ERR_clear_error();
    SSL_shutdown(s);
    ERR_clear_error();
}

void mg_tlsc_session_free(struct ssl_session_st *sess)
{
    SSL_SESSION_free(sess);
}
