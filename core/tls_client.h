/* Client-side TLS on nonblocking sockets: connections to upstreams and
 * gw.http's https exchanges. An mg_tlsc_t is one SSL_CTX with its settings
 * (verification on or off, the CA store); each connection gets its own SSL
 * on its socket. Nothing here blocks or touches libev: the calls report
 * what the socket must become (readable, writable) and the caller arms its
 * watchers accordingly (upstream.c does that for every pooled connection).
 *
 * The socket BIO writes with write(2): the process ignores SIGPIPE. */
#ifndef MG_TLS_CLIENT_H
#define MG_TLS_CLIENT_H

#include <stddef.h>
#include <sys/types.h>

struct ssl_st;
struct ssl_session_st;
typedef struct mg_tlsc mg_tlsc_t;

/* What a handshake step needs next. */
enum {
    MG_TLSC_DONE = 0,        /* the handshake is complete */
    MG_TLSC_WANT_READ = 1,   /* call again when the socket is readable */
    MG_TLSC_WANT_WRITE = 2,  /* ... when it is writable */
    MG_TLSC_FAILED = -1,     /* err says why */
};

/* Flags reported by mg_tlsc_recv / mg_tlsc_send. */
#define MG_TLSC_MORE 1u       /* decrypted data may be left inside OpenSSL: read again
                               * without waiting for the socket */
#define MG_TLSC_RD_WANTS_WRITE 2u /* the read needs the socket writable */
#define MG_TLSC_WR_WANTS_READ 4u  /* the write needs the socket readable */

/* A client context. verify: check the peer's certificate chain (and, per
 * connection, its name). ca_file: PEM file of trusted CAs; NULL for the
 * system store (SSL_CERT_FILE / SSL_CERT_DIR honoured), only loaded when
 * verify is on. This reads files: call it at config time or once per
 * worker, not per request. NULL with the reason in err. */
mg_tlsc_t *mg_tlsc_new(int verify, const char *ca_file, char *err, size_t errlen);
/* NULL-tolerant. Connections made from it must be closed first. */
void mg_tlsc_free(mg_tlsc_t *t);
int mg_tlsc_verifies(const mg_tlsc_t *t);
/* Makes t's connections offer ALPN "h2" only (instead of "http/1.1"):
 * for HTTP/2 upstreams. 0 or -1 (out of memory). */
int mg_tlsc_offer_h2(mg_tlsc_t *t);
/* Whether the server selected ALPN "h2" on the finished handshake s. */
int mg_tlsc_is_h2(struct ssl_st *s);

/* A TLS client on the connected socket fd (not owned). name: SNI and the
 * name the certificate must match; an IP literal is checked against the
 * certificate's IP addresses and sends no SNI. *cache, when not NULL, is a
 * session to resume; new sessions the server issues replace it there (the
 * slot must outlive the SSL). NULL on OOM. */
struct ssl_st *mg_tlsc_open(mg_tlsc_t *t, int fd, const char *name,
                            struct ssl_session_st **cache);
/* One handshake step: MG_TLSC_DONE, _WANT_READ, _WANT_WRITE, or _FAILED
 * with "tls handshake failed: ..." in err. */
int mg_tlsc_handshake(struct ssl_st *s, char *err, size_t errlen);
/* Reads decrypted bytes like read(2): >0 bytes, 0 at the end of the
 * stream, -1 with errno (EAGAIN: nothing yet). Fills as much of p as
 * OpenSSL has ready, so one call may return several records. *flags gets
 * MG_TLSC_MORE / MG_TLSC_RD_WANTS_WRITE. */
ssize_t mg_tlsc_recv(struct ssl_st *s, void *p, size_t n, unsigned *flags);
/* Writes like send(2): >0 bytes taken, -1 with errno (EAGAIN: retry when
 * writable, or readable with MG_TLSC_WR_WANTS_READ in *flags). A retry
 * after EAGAIN must offer at least the bytes offered before (the buffer
 * may move). */
ssize_t mg_tlsc_send(struct ssl_st *s, const void *p, size_t n, unsigned *flags);
/* An idle connection's socket became readable: true when that was only a
 * TLS message for the library (a session ticket) and the connection is
 * still clean; false on EOF, close_notify, an error or stray data. */
int mg_tlsc_idle_ok(struct ssl_st *s, void *scratch, size_t n);
/* Sends close_notify when the connection is healthy (best effort, never
 * waits) and frees s. The caller closes the fd. NULL-tolerant. */
void mg_tlsc_close(struct ssl_st *s, int peer_gone);
/* Sends close_notify (best effort, never waits) without freeing s: a
 * half-close; reading goes on. NULL-tolerant. */
void mg_tlsc_shutdown(struct ssl_st *s);
/* Releases a cached session. NULL-tolerant. */
void mg_tlsc_session_free(struct ssl_session_st *sess);

#endif
