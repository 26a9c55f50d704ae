/* The TLS paths of a socket (sock.h): server-side sessions (tls.c) report
 * MG_EAGAIN and what they wait for, client-side ones (tls_client.c) errno
 * and flags; both come out as recv/send results and the three flags. */
#include "sock.h"
#include "mg.h"
#include "tls.h"
#include "tls_client.h"

#include <errno.h>

ssize_t mg_sock_tls_recv(mg_sock_t *s, void *p, size_t n)
{
    if (s->tls) {
        ssize_t r = mg_tls_read(s->tls, p, n);
        s->more = r > 0 && mg_tls_pending(s->tls);
        if (r == MG_EAGAIN) {
            s->rd_ww = mg_tls_want(s->tls) == MG_TLS_WANT_WRITE;
            errno = EAGAIN;
            return -1;
        }
        if (r < 0) {
            errno = ECONNRESET;
            return -1;
        }
        return r;
    }
    unsigned fl = 0;
    ssize_t r = mg_tlsc_recv(s->ssl, p, n, &fl);
    int e = errno;
    s->more = (fl & MG_TLSC_MORE) != 0;
    if (fl & MG_TLSC_RD_WANTS_WRITE)
        s->rd_ww = 1;
    errno = e;
    return r;
}

ssize_t mg_sock_tls_send(mg_sock_t *s, const void *p, size_t n)
{
    if (s->tls) {
        ssize_t r = mg_tls_write(s->tls, p, n);
        if (r == MG_EAGAIN) {
            s->wr_wr = mg_tls_want(s->tls) == MG_TLS_WANT_READ;
            errno = EAGAIN;
            return -1;
        }
        if (r < 0) {
            errno = EPIPE;
            return -1;
        }
        return r;
    }
    unsigned fl = 0;
    ssize_t r = mg_tlsc_send(s->ssl, p, n, &fl);
    int e = errno;
    if (fl & MG_TLSC_WR_WANTS_READ)
        s->wr_wr = 1;
    errno = e;
    return r;
}

int mg_sock_discard(int fd, char *buf, size_t cap)
{
    for (;;) {
        ssize_t n = recv(fd, buf, cap, 0);
        if (n > 0 || (n < 0 && errno == EINTR))
            continue;
        return n < 0 && errno == EAGAIN ? 0 : -1;
    }
}
