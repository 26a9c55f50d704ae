/* Upstream pools and connects. An idle connection keeps its read watcher
 * on, so a server closing it is noticed and the connection dropped before
 * anyone tries to reuse it. */
#include "upstream.h"
#include "conn.h"
#include "log.h"
#include "loop.h"
#include "req.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
    }
    return MG_OK;
}

void mg_up_close(mg_up_t *up)
{
    if (up->servers == NULL)
        return;
    for (int i = 0; i < up->nservers; i++)
        while (up->servers[i].idle)
            mg_up_conn_close(up->servers[i].idle);
    free(up->servers);
    up->servers = NULL;
}

static uint32_t fnv1a(const char *p, size_t n)
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

int mg_up_pick(mg_up_t *up, mg_req_t *r, uint64_t tried)
{
    int n = up->nservers;
    if (n == 0)
        return -1;
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
        const char *key = up->cfg->hash_key;
        mg_str_t v = { "", 0 };
        if (strcmp(key, "uri") == 0)
            v = mg_h1_url(r->head);
        else if (strncmp(key, "header:", 7) == 0)
            v = mg_req_header(r, key + 7);
        else if (r->conn)
            v = (mg_str_t){ r->conn->remote, strlen(r->conn->remote) };
        if (v.p == NULL)
            v = (mg_str_t){ "", 0 };
        int first = (int)(fnv1a(v.p, v.n) % (uint32_t)n);
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
    (void)ev;
    (void)revents;
    mg_upconn_t *u = w->data;
    if (u->req == NULL) {
        /* An idle connection has nothing to say: EOF, reset or stray bytes
         * all make it unusable. */
        mg_up_conn_close(u);
        return;
    }
    u->ops->on_read(u);
}

static void wio_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_upconn_t *u = w->data;
    if (u->req == NULL) {
        mg_up_want_write(u, 0);
        return;
    }
    u->ops->on_write(u);
}

static void timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_upconn_t *u = w->data;
    if (u->req == NULL) {
        mg_up_conn_close(u); /* idle too long */
        return;
    }
    u->ops->on_timer(u);
}

void mg_up_want_write(mg_upconn_t *u, int on)
{
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
    }
}

void mg_up_arm_timer(mg_upconn_t *u, double secs)
{
    ev_timer_stop(u->loop->ev, &u->timer);
    ev_timer_set(&u->timer, secs, 0.);
    ev_timer_start(u->loop->ev, &u->timer);
}

mg_upconn_t *mg_up_get(mg_up_t *up, int s, mg_req_t *req, const mg_upconn_ops_t *ops,
                       const char **err)
{
    mg_up_server_t *sv = &up->servers[s];
    mg_loop_t *loop = up->loop;
    if (sv->idle) {
        mg_upconn_t *u = sv->idle;
        sv->idle = u->next;
        u->next = NULL;
        sv->nidle--;
        up->nidle--;
        u->reused = 1;
        u->wrote_any = u->got_any = u->resp_done = 0;
        u->in_use = 1;
        u->req = req;
        u->ops = ops;
        sv->active++;
        return u;
    }
    int fd = socket(sv->addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
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
        return NULL;
    }
    u->loop = loop;
    u->server = sv;
    u->fd = fd;
    int rc = connect(fd, (const struct sockaddr *)&sv->addr->sa, sv->addr->len);
    if (rc != 0 && errno != EINPROGRESS) {
        *err = strerror(errno);
        close(fd);
        free(u);
        return NULL;
    }
    u->connecting = rc != 0;
    u->in_use = 1;
    u->req = req;
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

void mg_up_release(mg_upconn_t *u)
{
    mg_up_server_t *sv = u->server;
    mg_up_t *up = sv->up;
    mg_loop_t *loop = u->loop;
    u->req = NULL;
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
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
    mg_loop_defer(loop, upconn_free, u);
}

static void upconn_free(void *p)
{
    mg_upconn_t *u = p;
    mg_buf_free(&u->wbuf);
    mg_h1_head_free(&u->head);
    free(u);
}
