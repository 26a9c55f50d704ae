#include "server.h"
#include "conn.h"
#include "log.h"
#include "loop.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

void mg_srv_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        if (want == RLIM_INFINITY || want > 1048576)
            want = 1048576;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            mg_log_warn("cannot raise RLIMIT_NOFILE: %s", strerror(errno));
    }
}

int mg_srv_bind(const mg_addr_t *addr, int shared, char *err, size_t errlen)
{
    int fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (shared)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (addr->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&addr->sa, addr->len) != 0) {
        snprintf(err, errlen, "bind %s: %s", addr->text, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 4096) != 0) {
        snprintf(err, errlen, "listen %s: %s", addr->text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void retry_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)revents;
    mg_listener_t *l = w->data;
    if (l->fd >= 0 && !l->loop->stopping)
        ev_io_start(ev, &l->io);
}

/* Accepts in a bounded batch so one busy listener cannot starve the loop.
 * Out of fds: stop accepting for a moment rather than spin ([libev]
 * "accept()ing when you can't"); the kernel backlog holds the clients. */
static void accept_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)revents;
    mg_listener_t *l = w->data;
    /* the current generation's context: a reload's new certificate serves
     * new connections, old ones keep theirs */
    struct ssl_ctx_st *tls = l->admin ? NULL : mg_gen_tls(l->loop->gen, l->addr.text);
    const mg_cfg_listen_t *lc = l->admin ? NULL : mg_cfg_listener(l->loop->gen->cfg, l->addr.text);
    int flags = (l->admin ? MG_CONN_F_ADMIN : 0) |
                (lc && lc->proxy_protocol ? MG_CONN_F_PROXY_PROTOCOL : 0) |
                (lc == NULL || lc->http2 ? MG_CONN_F_H2 : 0);
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                mg_log_error("accept on %s: %s; pausing accepts for 100 ms", l->addr.text,
                             strerror(errno));
                ev_io_stop(ev, &l->io);
                ev_timer_stop(ev, &l->retry);
                ev_timer_set(&l->retry, 0.1, 0.);
                ev_timer_start(ev, &l->retry);
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        mg_conn_accept(l->loop, fd, (struct sockaddr *)&ss, flags, tls);
    }
}

void mg_srv_start(mg_loop_t *loop, mg_listener_t *l, int fd, const mg_addr_t *addr, int admin)
{
    l->loop = loop;
    l->admin = admin;
    l->fd = fd;
    l->addr = *addr;
    ev_io_init(&l->io, accept_cb, fd, EV_READ);
    l->io.data = l;
    ev_init(&l->retry, retry_cb);
    l->retry.data = l;
    ev_io_start(loop->ev, &l->io);
}

void mg_srv_close(mg_listener_t *l)
{
    if (l->fd < 0)
        return;
    ev_io_stop(l->loop->ev, &l->io);
    ev_timer_stop(l->loop->ev, &l->retry);
    close(l->fd);
    l->fd = -1;
}
