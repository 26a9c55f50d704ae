/* Upstream pools and connects. An idle connection keeps its read watcher
 * on, so a server closing it is noticed and the connection dropped before
 * anyone tries to reuse it.
 *
 * TLS pools: a connection counts as connecting until its handshake is
 * done, so the exchange code sees one "connect" (and one connect timeout)
 * either way; read events during the handshake go to ops->on_write, which
 * calls mg_up_connect_step. Afterwards the exchange reads and writes
 * through mg_up_recv/mg_up_send; the watcher callbacks here cover what
 * OpenSSL adds: decrypted data buffered where epoll cannot see it
 * (sock.more: read again at once), and a read needing a write or the other
 * way round (sock.rd_ww/sock.wr_wr, sock.h). */
#include "upstream.h"
#include "dns.h"
#include "log.h"
#include "loop.h"
#include "tls_client.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MG_UP_SURPLUS_IDLE 1.0 /* seconds an idle connection beyond keepalive lives */

static void upconn_free(void *p);

int mg_up_init(mg_up_t *up, mg_loop_t *loop, const mg_cfg_upstream_t *cfg)
{
    memset(up, 0, sizeof *up);
    up->loop = loop;
    up->cfg = cfg;
    up->nservers = cfg->nservers;
    up->servers = calloc((size_t)cfg->nservers + 1, sizeof *up->servers);
    if (up->servers == NULL)
        return MG_ENOMEM;
    for (int i = 0; i < cfg->nservers; i++) {
        up->servers[i].up = up;
        up->servers[i].addr = &cfg->servers[i];
        /* a host name: resolved (and kept fresh) by the loop's resolver;
         * connects use its latest answer */
        if (cfg->servers[i].name && loop->dns &&
            (up->servers[i].dns = mg_dns_name(loop->dns, cfg->servers[i].name)) == NULL) {
            mg_up_close(up);
            return MG_ENOMEM;
        }
    }
    if (cfg->tls) {
        char err[512];
        mg_tlsc_t *t = mg_tlsc_new(cfg->tls_verify, cfg->tls_ca, err, sizeof err);
        if (t == NULL) {
            mg_log_error("upstream %s: %s", cfg->name, err);
            mg_up_close(up);
            return MG_EINVAL;
        }
        up->tls_owned = 1;
        if ((cfg->h2 && mg_tlsc_offer_h2(t) != 0) ||
            mg_up_use_tls(up, t, cfg->tls_server_name) != MG_OK) {
            mg_up_close(up);
            return MG_ENOMEM;
        }
    }
    return MG_OK;
}

/* The host part of "host:port" / "[v6]:port", as written in the config. */
static char *host_of(const char *text)
{
    const char *b = text, *e;
    if (*b == '[') {
        b++;
        e = strchr(b, ']');
    } else {
        e = strrchr(b, ':');
    }
    if (e == NULL)
        e = b + strlen(b);
    char *h = malloc((size_t)(e - b) + 1);
    if (h) {
        memcpy(h, b, (size_t)(e - b));
        h[e - b] = '\0';
    }
    return h;
}

int mg_up_use_tls(mg_up_t *up, mg_tlsc_t *t, const char *name)
{
    up->tls = t;
    for (int i = 0; i < up->nservers; i++) {
        mg_up_server_t *sv = &up->servers[i];
        free(sv->tls_name);
        sv->tls_name = name ? strdup(name) : host_of(sv->addr->text);
        if (sv->tls_name == NULL)
            return MG_ENOMEM;
    }
    return MG_OK;
}

void mg_up_close(mg_up_t *up)
{
    if (up->servers == NULL)
        return;
    for (int i = 0; i < up->nservers; i++) {
        mg_up_server_t *sv = &up->servers[i];
        if (sv->h2 && up->close_h2)
            up->close_h2(sv);
        while (sv->idle)
            mg_up_conn_close(sv->idle);
        free(sv->tls_name);
        mg_tlsc_session_free(sv->tls_sess);
        mg_dns_name_unref(sv->dns);
    }
    free(up->servers);
    up->servers = NULL;
    if (up->tls_owned)
        mg_tlsc_free(up->tls);
    up->tls = NULL;
    up->tls_owned = 0;
}

uint32_t mg_up_hash(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 16777619u;
    }
    return h;
}

static int tried_bit(uint64_t tried, int i)
{
    return i < 64 && ((tried >> i) & 1);
}

int mg_up_server_failed(mg_up_t *up, int s, double now)
{
    const mg_cfg_upstream_t *cfg = up->cfg;
    if (cfg->max_fails <= 0 || up->nservers < 2)
        return 0;
    mg_up_server_t *sv = &up->servers[s];
    if (sv->down_until > now)
        return 0; /* a connect started before it was marked */
    if (sv->fails == 0 || now - sv->fail_start > cfg->fail_timeout) {
        sv->fails = 0;
        sv->fail_start = now;
    }
    if (++sv->fails < cfg->max_fails)
        return 0;
    sv->fails = 0;
    sv->down_until = now + cfg->fail_timeout;
    if (sv->down_until > up->down_max)
        up->down_max = sv->down_until;
    return 1;
}

/* Active health: the prober has server sv down. */
static int health_down(const mg_up_server_t *sv)
{
    return sv->hdown && __atomic_load_n(sv->hdown, __ATOMIC_RELAXED) != 0;
}

int mg_up_any_up(const mg_up_t *up, double now)
{
    if (now >= up->down_max && !up->health)
        return up->nservers > 0;
    for (int i = 0; i < up->nservers; i++)
        if (up->servers[i].down_until <= now && !health_down(&up->servers[i]))
            return 1;
    return 0;
}

int mg_up_pick(mg_up_t *up, uint32_t hash, uint64_t tried)
{
    return mg_up_pick_at(up, hash, tried, up->down_max > 0 ? ev_now(up->loop->ev) : 0);
}

int mg_up_pick_at(mg_up_t *up, uint32_t hash, uint64_t tried, double now)
{
    int n = up->nservers;
    if (n == 0)
        return -1;
    if (now < up->down_max) /* some server is down: skip it as if tried */
        for (int i = 0; i < n && i < 64; i++)
            if (up->servers[i].down_until > now)
                tried |= (uint64_t)1 << i;
    if (up->health) /* active checks have it down: the same */
        for (int i = 0; i < n && i < 64; i++)
            if (health_down(&up->servers[i]))
                tried |= (uint64_t)1 << i;
    switch (up->cfg->balance) {
    case MG_BAL_LEAST_CONN: {
        int best = -1;
        unsigned start = up->rr++;
        for (int k = 0; k < n; k++) {
            int i = (int)((start + (unsigned)k) % (unsigned)n);
            if (tried_bit(tried, i))
                continue;
            if (best < 0 || up->servers[i].active < up->servers[best].active)
                best = i;
        }
        return best;
    }
    case MG_BAL_HASH: {
        int first = (int)(hash % (uint32_t)n);
        for (int k = 0; k < n; k++) {
            int i = (first + k) % n;
            if (!tried_bit(tried, i))
                return i;
        }
        return -1;
    }
    default:
        for (int k = 0; k < n; k++) {
            int i = (int)(up->rr++ % (unsigned)n);
            if (!tried_bit(tried, i))
                return i;
        }
        return -1;
    }
}

static void rio_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)revents;
    mg_upconn_t *u = w->data;
    if (u->owner == NULL) {
        /* An idle connection has nothing to say: EOF, reset or stray bytes
         * all make it unusable. Over TLS it may have been a session ticket
         * the library consumes by itself. */
        if (u->sock.ssl && !u->sock.more &&
            mg_tlsc_idle_ok(u->sock.ssl, u->loop->scratch, u->loop->scratch_cap))
            return;
        mg_up_conn_close(u);
        return;
    }
    if (u->connecting) {
        u->ops->on_write(u); /* the TLS handshake goes on */
        return;
    }
    if (u->sock.wr_wr) {
        u->sock.wr_wr = 0;
        u->ops->on_write(u);
        if (u->closed || u->owner == NULL)
            return;
    }
    u->ops->on_read(u);
    if (u->sock.more && u->rio_on && !u->closed)
        ev_feed_event(ev, &u->rio, EV_READ);
}

static void wio_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_upconn_t *u = w->data;
    if (u->owner == NULL) {
        u->sock.rd_ww = 0;
        mg_up_want_write(u, 0);
        return;
    }
    if (u->sock.rd_ww && !u->connecting) {
        u->sock.rd_ww = 0;
        u->ops->on_read(u);
        if (u->closed || u->owner == NULL)
            return;
    }
    u->ops->on_write(u);
}

static void timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)revents;
    mg_upconn_t *u = w->data;
    if (mg_timer_early(ev, &u->timer, &u->armed_at, u->deadline))
        return; /* the deadline moved on */
    if (u->owner == NULL) {
        mg_up_conn_close(u); /* idle too long */
        return;
    }
    u->ops->on_timer(u);
}

void mg_up_want_write(mg_upconn_t *u, int on)
{
    if (u->sock.rd_ww)
        on = 1; /* a read waits for writability */
    else if (u->sock.wr_wr)
        on = 0; /* the write waits for readability, not writability */
    if (on && !u->wio_on && !u->closed) {
        ev_io_start(u->loop->ev, &u->wio);
        u->wio_on = 1;
    } else if (!on && u->wio_on) {
        ev_io_stop(u->loop->ev, &u->wio);
        u->wio_on = 0;
    }
}

void mg_up_pause_read(mg_upconn_t *u, int pause)
{
    u->read_paused = pause ? 1 : 0;
    if (pause && u->rio_on) {
        ev_io_stop(u->loop->ev, &u->rio);
        u->rio_on = 0;
    } else if (!pause && !u->rio_on && !u->closed) {
        ev_io_start(u->loop->ev, &u->rio);
        u->rio_on = 1;
        if (u->sock.more) /* already received: the socket will not tell */
            ev_feed_event(u->loop->ev, &u->rio, EV_READ);
    }
}

/* Lazily (loop.h's mg_timer_follow): a pooled connection goes idle -> read
 * timeout -> idle on every exchange. */
void mg_up_arm_timer(mg_upconn_t *u, double secs)
{
    struct ev_loop *ev = u->loop->ev;
    u->deadline = ev_now(ev) + secs;
    mg_timer_follow(ev, &u->timer, &u->armed_at, u->deadline);
}

mg_upconn_t *mg_up_get(mg_up_t *up, int s, void *owner, const mg_upconn_ops_t *ops,
                       const char **err)
{
    mg_up_server_t *sv = &up->servers[s];
    mg_loop_t *loop = up->loop;
    /* a kept connection to an address the name no longer has goes */
    while (sv->dns && sv->idle && sv->idle->dns_gen != mg_dns_name_gen(sv->dns))
        mg_up_conn_close(sv->idle);
    if (sv->idle) {
        mg_upconn_t *u = sv->idle;
        sv->idle = u->next;
        u->next = NULL;
        sv->nidle--;
        up->nidle--;
        u->reused = 1;
        u->in_use = 1;
        u->owner = owner;
        u->ops = ops;
        sv->active++;
        return u;
    }
    const struct sockaddr *sa = (const struct sockaddr *)&sv->addr->sa;
    socklen_t salen = sv->addr->len;
    struct sockaddr_storage resolved;
    if (sv->addr->name) {
        if (sv->dns == NULL) {
            *err = "host name without a resolver";
            errno = EHOSTUNREACH;
            return NULL;
        }
        if (mg_dns_name_addr(sv->dns, sv->addr->port, &resolved, &salen, err) != 0) {
            errno = EHOSTUNREACH; /* no address for the name (yet) */
            return NULL;
        }
        sa = (const struct sockaddr *)&resolved;
    }
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = strerror(errno);
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    mg_upconn_t *u = calloc(1, sizeof *u);
    if (u == NULL) {
        close(fd);
        *err = "out of memory";
        errno = ENOMEM;
        return NULL;
    }
    u->loop = loop;
    u->server = sv;
    u->sock.fd = fd;
    u->dns_gen = sv->dns ? mg_dns_name_gen(sv->dns) : 0;
    int rc = connect(fd, sa, salen);
    if (rc != 0 && errno != EINPROGRESS) {
        int e = errno;
        *err = strerror(e);
        close(fd);
        free(u);
        errno = e; /* the caller classifies the failure by it */
        return NULL;
    }
    /* TLS: the handshake starts from the write watcher even when the
     * connect completed at once. */
    u->connecting = rc != 0 || up->tls != NULL;
    u->in_use = 1;
    u->owner = owner;
    u->ops = ops;
    sv->active++;
    ev_io_init(&u->rio, rio_cb, fd, EV_READ);
    /* Upstream responses go first in each loop iteration: they finish
     * requests and return connections to the pool before new client
     * requests of the same iteration go looking for one. */
    ev_set_priority(&u->rio, 1);
    u->rio.data = u;
    ev_io_init(&u->wio, wio_cb, fd, EV_WRITE);
    u->wio.data = u;
    ev_init(&u->timer, timer_cb);
    u->timer.data = u;
    if (u->connecting) {
        mg_up_want_write(u, 1);
    } else {
        ev_io_start(loop->ev, &u->rio);
        u->rio_on = 1;
    }
    return u;
}

int mg_up_connect_step(mg_upconn_t *u, char *err, size_t errlen, int *sys_errno)
{
    mg_up_server_t *sv = u->server;
    *sys_errno = 0;
    if (!u->handshaking) {
        int e = 0;
        socklen_t el = sizeof e;
        if (getsockopt(u->sock.fd, SOL_SOCKET, SO_ERROR, &e, &el) != 0)
            e = errno;
        if (e == EINPROGRESS)
            return MG_EAGAIN;
        if (e != 0) {
            *sys_errno = e;
            snprintf(err, errlen, "%s", strerror(e));
            return MG_ECLOSED;
        }
        if (sv->up->tls == NULL) {
            u->connecting = 0;
            return MG_OK;
        }
        u->sock.ssl = mg_tlsc_open(sv->up->tls, u->sock.fd, sv->tls_name ? sv->tls_name : "",
                              &sv->tls_sess);
        if (u->sock.ssl == NULL) {
            snprintf(err, errlen, "tls setup failed: out of memory");
            return MG_ECLOSED;
        }
        u->handshaking = 1;
    }
    switch (mg_tlsc_handshake(u->sock.ssl, err, errlen)) {
    case MG_TLSC_WANT_READ:
        mg_up_want_write(u, 0);
        if (!u->rio_on) {
            ev_io_start(u->loop->ev, &u->rio);
            u->rio_on = 1;
        }
        return MG_EAGAIN;
    case MG_TLSC_WANT_WRITE:
        mg_up_want_write(u, 1);
        return MG_EAGAIN;
    case MG_TLSC_DONE:
        u->handshaking = 0;
        u->connecting = 0;
        return MG_OK;
    default:
        return MG_ECLOSED;
    }
}

ssize_t mg_up_tls_recv(mg_upconn_t *u, void *p, size_t n)
{
    ssize_t r = mg_sock_tls_recv(&u->sock, p, n);
    if (u->sock.rd_ww) {
        int e = errno;
        mg_up_want_write(u, 1);
        errno = e;
    }
    return r;
}

void mg_up_release(mg_upconn_t *u)
{
    mg_up_server_t *sv = u->server;
    mg_up_t *up = sv->up;
    mg_loop_t *loop = u->loop;
    u->owner = NULL;
    mg_up_want_write(u, 0);
    /* Beyond `keepalive` idle connections, a few more are kept for a
     * moment: under a burst (more requests in flight than `keepalive`) the
     * next request reuses them instead of closing one connection and
     * opening another; when the burst is over they go within a second. */
    int keep = up->cfg->keepalive;
    int surplus = up->nidle >= keep;
    if (keep == 0 || up->nidle >= keep * 4 || loop->stopping || u->wbuf.len || u->read_paused ||
        !u->rio_on) {
        mg_up_conn_close(u);
        return;
    }
    sv->active--;
    u->in_use = 0;
    if (u->wbuf.cap > 65536)
        mg_buf_free(&u->wbuf);
    mg_buf_reset(&u->wbuf);
    mg_up_arm_timer(u, surplus ? MG_UP_SURPLUS_IDLE : up->cfg->idle_timeout);
    u->next = sv->idle;
    sv->idle = u;
    sv->nidle++;
    up->nidle++;
}

static void unlink_idle(mg_upconn_t *u)
{
    mg_up_server_t *sv = u->server;
    for (mg_upconn_t **pp = &sv->idle; *pp; pp = &(*pp)->next) {
        if (*pp == u) {
            *pp = u->next;
            sv->nidle--;
            sv->up->nidle--;
            u->next = NULL;
            return;
        }
    }
}

void mg_up_conn_close(mg_upconn_t *u)
{
    if (u->closed)
        return;
    u->closed = 1;
    mg_loop_t *loop = u->loop;
    if (u->in_use) {
        u->server->active--;
        u->in_use = 0;
    } else {
        unlink_idle(u);
    }
    ev_io_stop(loop->ev, &u->rio);
    ev_io_stop(loop->ev, &u->wio);
    ev_timer_stop(loop->ev, &u->timer);
    /* Freed now, not deferred: no OpenSSL callback (a session arriving)
     * can run once the pool may be gone. */
    mg_tlsc_close(u->sock.ssl, u->closed_by_peer);
    u->sock.ssl = NULL;
    if (u->sock.fd >= 0)
        close(u->sock.fd);
    u->sock.fd = -1;
    mg_loop_defer(loop, upconn_free, u);
}

void mg_up_detach(mg_upconn_t *u, int *fd, struct ssl_st **ssl, mg_buf_t *out)
{
    *fd = u->sock.fd;
    *ssl = u->sock.ssl;
    *out = u->wbuf;
    u->sock.fd = -1;
    u->sock.ssl = NULL;
    u->wbuf = (mg_buf_t){ 0 };
    u->owner = NULL;
    mg_up_conn_close(u);
}

static void upconn_free(void *p)
{
    mg_upconn_t *u = p;
    mg_buf_free(&u->wbuf);
    mg_h1_head_free(&u->head);
    free(u);
}
