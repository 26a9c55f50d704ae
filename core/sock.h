/* One nonblocking socket, plain TCP or TLS (server side through tls.c,
 * client side through tls_client.c), read and written like recv(2) and
 * send(2). The one transport under client connections (conn.c), upstream
 * connections (upstream.c) and tunnels (tunnel.c).
 *
 * What TLS adds is in three flags the owner's watchers follow: decrypted
 * bytes OpenSSL holds where epoll cannot see them (`more`: read again at
 * once), a read that needs the socket writable (`rd_ww`) and a write that
 * needs it readable (`wr_wr`). The owner clears rd_ww/wr_wr when it retries
 * the call that set them. No libev here. */
#ifndef MG_SOCK_H
#define MG_SOCK_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

typedef struct mg_tls mg_tls_t;
struct ssl_st;

typedef struct mg_sock {
    int fd;
    mg_tls_t *tls;          /* server-side TLS (a client's connection), or NULL */
    struct ssl_st *ssl;     /* client-side TLS (to an upstream), or NULL */
    unsigned more : 1;      /* TLS holds decrypted bytes the kernel will not report */
    unsigned rd_ww : 1;     /* a TLS read waits for the socket to be writable */
    unsigned wr_wr : 1;     /* a TLS write waits for it to be readable */
} mg_sock_t;

/* The TLS paths: results as recv/send (>0, 0 at EOF, -1 with errno; EAGAIN:
 * nothing now, retry with at least the same bytes), flags set as above. */
ssize_t mg_sock_tls_recv(mg_sock_t *s, void *p, size_t n);
ssize_t mg_sock_tls_send(mg_sock_t *s, const void *p, size_t n);

/* Reads and drops what the socket has (raw bytes: a lingering close, where
 * nothing more matters, TLS or not), buf[0..cap) as scratch. 0: nothing
 * more for now (EAGAIN); -1: the peer is gone (EOF or an error): close. */
int mg_sock_discard(int fd, char *buf, size_t cap);

static inline ssize_t mg_sock_recv(mg_sock_t *s, void *p, size_t n)
{
    if (s->tls == NULL && s->ssl == NULL)
        return recv(s->fd, p, n, 0); /* recv: skips the VFS layer of read() */
    return mg_sock_tls_recv(s, p, n);
}

static inline ssize_t mg_sock_send(mg_sock_t *s, const void *p, size_t n)
{
    if (s->tls == NULL && s->ssl == NULL)
        return send(s->fd, p, n, MSG_NOSIGNAL);
    return mg_sock_tls_send(s, p, n);
}

#endif
