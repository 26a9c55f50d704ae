/* Server-side TLS: an SSL_CTX per TLS listener and config generation, and
 * the per-connection transport (handshake, read, write, close_notify) on a
 * nonblocking fd. No libev here: a call that cannot finish returns MG_EAGAIN
 * and says which readiness it waits for; the connection arms its watchers. */
#ifndef MG_TLS_H
#define MG_TLS_H

#include <stddef.h>
#include <sys/types.h>

struct ssl_ctx_st;
typedef struct mg_tls mg_tls_t;

/* What an MG_EAGAIN result waits for. */
enum { MG_TLS_WANT_NONE, MG_TLS_WANT_READ, MG_TLS_WANT_WRITE };

/* Builds a server context from a PEM certificate file (the leaf first, then
 * any chain) and its PEM private key: TLS 1.2 minimum, ALPN "http/1.1",
 * session cache and tickets on. Checks that the key matches the certificate.
 * Returns the context (the caller owns one reference), or NULL with a reason
 * naming the file in err and *key_at_fault set when the key (not the
 * certificate) is the one to fix. Blocking file reads: config time only. */
struct ssl_ctx_st *mg_tls_ctx_new(const char *cert, const char *key, int *key_at_fault, char *err,
                                  size_t errlen);
/* Drops the caller's reference. Connections made from it keep their own
 * (OpenSSL counts them), so an old generation's certificate lives on for
 * its connections after a reload. NULL-tolerant. */
void mg_tls_ctx_free(struct ssl_ctx_st *ctx);
/* Whether ALPN offers h2 (before http/1.1) on ctx's connections; a new
 * context offers only http/1.1. */
void mg_tls_ctx_h2(struct ssl_ctx_st *ctx, int on);
/* True once the handshake agreed on h2. */
int mg_tls_alpn_h2(const mg_tls_t *t);

/* A server-side TLS session on fd (borrowed: the caller closes it). NULL on
 * out of memory. The handshake runs inside the first reads and writes. */
mg_tls_t *mg_tls_new(struct ssl_ctx_st *ctx, int fd);
/* NULL-tolerant; sends nothing (see mg_tls_shutdown). */
void mg_tls_free(mg_tls_t *t);

/* Reads up to n decrypted bytes: what one socket read brings, plus what
 * OpenSSL already holds, up to n. Returns the byte count, 0 at the peer's
 * end of stream (close_notify or a plain TCP EOF), MG_EAGAIN (see
 * mg_tls_want), or MG_ECLOSED on a protocol or socket error (a client that
 * spoke plain HTTP to a TLS port ends here). */
ssize_t mg_tls_read(mg_tls_t *t, void *buf, size_t n);
/* Writes up to n bytes; returns the count taken (n, or less only with
 * partial writes off: never), MG_EAGAIN (see mg_tls_want) or MG_ECLOSED.
 * After MG_EAGAIN, call again with the same bytes (OpenSSL's rule). */
ssize_t mg_tls_write(mg_tls_t *t, const void *buf, size_t n);
/* The readiness the last MG_EAGAIN waits for (MG_TLS_WANT_*). */
int mg_tls_want(const mg_tls_t *t);
/* True while OpenSSL holds bytes already taken off the socket that a read
 * can use without the socket: the kernel will not report them, so the
 * reader must come back without waiting. */
int mg_tls_pending(const mg_tls_t *t);
/* True once the handshake has finished. */
int mg_tls_ready(const mg_tls_t *t);
/* Sends close_notify if the session got that far, best effort: never
 * waits, never retries. */
void mg_tls_shutdown(mg_tls_t *t);

#endif
