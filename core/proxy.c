/* The proxy exchange between one request and one upstream connection.
 *
 * Ownership: while an exchange runs, r->up and u->req point at each other.
 * Whoever ends it (response complete, failure, client abort) detaches both
 * sides first, then releases or closes u, then finishes or fails r. Nothing
 * touches r or u after that: they may be freed (deferred) by then. */
#include "proxy.h"
#include "conn.h"
#include "log.h"
#include "loop.h"
#include "req.h"
#include "upstream.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define UP_WBUF_HIGH (256 * 1024)
#define UP_WBUF_LOW (64 * 1024)
#define MAX_STALE_RETRIES 4

enum { FAIL_CONNECT, FAIL_CONNECT_TIMEOUT, FAIL_RESET, FAIL_TIMEOUT, FAIL_GARBAGE };

static void up_read_cb(struct ev_loop *ev, ev_io *w, int revents);
static void up_write_cb(struct ev_loop *ev, ev_io *w, int revents);
static void up_timer_cb(struct ev_loop *ev, ev_timer *w, int revents);
static void up_fail(mg_upconn_t *u, int kind, const char *why);
static void up_flush(mg_upconn_t *u);

static const mg_cfg_upstream_t *ucfg(mg_upconn_t *u)
{
    return u->server->up->cfg;
}

/* --- the request head for the upstream ------------------------------------ */

static int is_hop_by_hop(mg_str_t n)
{
    return MG_STR_EQ_CI(n, "connection") || MG_STR_EQ_CI(n, "keep-alive") ||
           MG_STR_EQ_CI(n, "proxy-connection") || MG_STR_EQ_CI(n, "te") ||
           MG_STR_EQ_CI(n, "trailer") || MG_STR_EQ_CI(n, "transfer-encoding") ||
           MG_STR_EQ_CI(n, "upgrade");
}

/* True if `name` is one of the comma-separated tokens of a Connection header. */
static int connection_lists(const mg_h1_head_t *h, mg_str_t name)
{
    for (int i = mg_h1_find(h, "connection", 10, 0); i >= 0;
         i = mg_h1_find(h, "connection", 10, i + 1)) {
        mg_str_t v = mg_h1_value(h, i);
        size_t a = 0;
        while (a < v.n) {
            while (a < v.n && (v.p[a] == ' ' || v.p[a] == '\t' || v.p[a] == ','))
                a++;
            size_t b = a;
            while (b < v.n && v.p[b] != ',')
                b++;
            size_t e = b;
            while (e > a && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'))
                e--;
            if (e > a && mg_str_eq_ci(name, v.p + a, e - a))
                return 1;
            a = b;
        }
    }
    return 0;
}

/* Whether a header from either side is forwarded to the other. */
static int forwardable(const mg_h1_head_t *h, mg_str_t n)
{
    return !is_hop_by_hop(n) && !connection_lists(h, n);
}

static void build_request_head(mg_req_t *r)
{
    mg_h1_head_t *h = r->head;
    mg_buf_t *o = &r->uhead;
    mg_str_t url = mg_h1_url(h);
    /* origin-form target: the path view starts inside the url */
    const char *t = r->path.p;
    size_t tn = (size_t)(url.p + url.n - t);
    mg_buf_printf(o, "%s %.*s HTTP/1.1\r\n", llhttp_method_name(h->method), (int)tn, t);
    mg_str_t xff = { NULL, 0 };
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        if (!forwardable(h, n) || MG_STR_EQ_CI(n, "content-length") || MG_STR_EQ_CI(n, "expect") ||
            MG_STR_EQ_CI(n, "x-forwarded-proto") || MG_STR_EQ_CI(n, "x-forwarded-host"))
            continue;
        if (MG_STR_EQ_CI(n, "x-forwarded-for")) {
            if (xff.p == NULL)
                xff = v; /* first one; later ones are joined below */
            continue;
        }
        mg_buf_append(o, n.p, n.n);
        mg_buf_append(o, ": ", 2);
        mg_buf_append(o, v.p, v.n);
        mg_buf_append(o, "\r\n", 2);
    }
    mg_buf_append(o, "X-Forwarded-For: ", 17);
    for (int i = mg_h1_find(h, "x-forwarded-for", 15, 0); i >= 0;
         i = mg_h1_find(h, "x-forwarded-for", 15, i + 1)) {
        mg_str_t v = mg_h1_value(h, i);
        if (v.n) {
            mg_buf_append(o, v.p, v.n);
            mg_buf_append(o, ", ", 2);
        }
    }
    (void)xff;
    const char *remote = r->conn ? r->conn->remote : "unknown";
    mg_buf_printf(o, "%s\r\nX-Forwarded-Proto: http\r\n", remote);
    mg_str_t host = mg_req_header(r, "host");
    if (host.p)
        mg_buf_printf(o, "X-Forwarded-Host: %.*s\r\n", (int)host.n, host.p);
    if (h->flags & MG_H1_CHUNKED) {
        r->req_chunked = 1;
        mg_buf_append(o, "Transfer-Encoding: chunked\r\n", 28);
    } else if (h->flags & MG_H1_HAS_CL) {
        mg_buf_printf(o, "Content-Length: %llu\r\n", (unsigned long long)h->content_length);
    }
    mg_buf_append(o, "\r\n", 2);
}

/* --- response side -------------------------------------------------------- */

static mg_h1_head_t *r_on_begin(void *ud)
{
    mg_upconn_t *u = ud;
    return &u->head;
}

static int r_on_head(void *ud, mg_h1_head_t *h)
{
    mg_upconn_t *u = ud;
    mg_req_t *r = u->req;
    if (r == NULL)
        return -1;
    if (h->status >= 100 && h->status < 200) {
        if (h->status == 101) {
            u->h1.err_status = 502;
            u->h1.err_reason = "upstream switched protocols";
            return -1;
        }
        return 0; /* interim response: dropped, the final one follows */
    }
    mg_conn_t *c = r->conn;
    if (c == NULL)
        return -1;
    int head_req = r->head->method == HTTP_HEAD;
    int no_body = head_req || h->status == 204 || h->status == 304;
    r->status = h->status;
    r->resp_started = 1;
    mg_buf_t *o = &c->wbuf;
    size_t before = o->len;
    if (h->reason_len)
        mg_buf_printf(o, "HTTP/1.1 %d %.*s\r\n", h->status, (int)h->reason_len,
                      h->store.base + h->reason_off);
    else
        mg_buf_printf(o, "HTTP/1.1 %d %s\r\n", h->status, mg_status_reason(h->status));
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        if (!forwardable(h, n))
            continue;
        mg_buf_append(o, n.p, n.n);
        mg_buf_append(o, ": ", 2);
        mg_buf_append(o, v.p, v.n);
        mg_buf_append(o, "\r\n", 2);
    }
    if (!no_body && !(h->flags & MG_H1_HAS_CL)) {
        if (r->http10) {
            r->resp_close = 1; /* HTTP/1.0 clients read to EOF */
        } else {
            r->resp_chunked = 1;
            mg_buf_append(o, "Transfer-Encoding: chunked\r\n", 28);
        }
    }
    mg_req_end_head(r, o);
    r->resp_bytes += o->len - before;
    return head_req ? 1 : 0;
}

static void pause_upstream(mg_upconn_t *u, int pause)
{
    if (pause && !u->read_paused) {
        u->read_paused = 1;
        if (u->rio_on) {
            ev_io_stop(u->loop->ev, &u->rio);
            u->rio_on = 0;
        }
    } else if (!pause && u->read_paused) {
        u->read_paused = 0;
        if (!u->rio_on && !u->closed) {
            ev_io_start(u->loop->ev, &u->rio);
            u->rio_on = 1;
        }
    }
}

static int r_on_body(void *ud, const char *p, size_t n)
{
    mg_upconn_t *u = ud;
    mg_req_t *r = u->req;
    if (r == NULL || r->conn == NULL)
        return -1;
    mg_buf_t *o = &r->conn->wbuf;
    size_t before = o->len;
    if (r->resp_chunked) {
        mg_buf_printf(o, "%zx\r\n", n);
        mg_buf_append(o, p, n);
        mg_buf_append(o, "\r\n", 2);
    } else {
        mg_buf_append(o, p, n);
    }
    r->resp_bytes += o->len - before;
    r->resp_body_bytes += n;
    if (o->len > MG_CONN_WBUF_HIGH)
        pause_upstream(u, 1);
    return 0;
}

static int r_on_done(void *ud)
{
    mg_upconn_t *u = ud;
    mg_req_t *r = u->req;
    if (r == NULL)
        return -1;
    if (!r->resp_started)
        return 1; /* an interim 1xx ended: parse the final response */
    if (r->resp_chunked && r->conn) {
        mg_buf_append(&r->conn->wbuf, "0\r\n\r\n", 5);
        r->resp_bytes += 5;
    }
    u->resp_done = 1;
    return 0;
}

static const mg_h1_cb_t resp_cbs = { r_on_begin, r_on_head, r_on_body, r_on_done };

/* The response is complete and queued: end the exchange. */
static void exchange_done(mg_upconn_t *u, int leftover)
{
    mg_req_t *r = u->req;
    int reusable = !leftover && (u->head.flags & MG_H1_KEEPALIVE) && r->body_done &&
                   u->wbuf.len == 0 && !u->closed;
    r->up = NULL;
    u->req = NULL;
    if (reusable)
        mg_up_release(u);
    else
        mg_up_conn_close(u);
    if (r->resp_close && r->conn)
        r->conn->closing = 1;
    mg_req_finish(r);
}

/* --- I/O ------------------------------------------------------------------ */

static void arm_timer(mg_upconn_t *u, double secs)
{
    ev_timer_stop(u->loop->ev, &u->timer);
    ev_timer_set(&u->timer, secs, 0.);
    ev_timer_start(u->loop->ev, &u->timer);
}

static void up_read_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)revents;
    mg_upconn_t *u = w->data;
    mg_loop_t *loop = u->loop;
    mg_req_t *r = u->req;
    if (r == NULL) {
        mg_up_conn_close(u);
        return;
    }
    ssize_t n = read(u->fd, loop->scratch, loop->scratch_cap);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        up_fail(u, FAIL_RESET, strerror(errno));
        return;
    }
    u->last_io = ev_now(ev);
    if (n == 0) {
        if (u->got_any && mg_h1_eof(&u->h1) == 0 && u->resp_done) {
            u->closed_by_peer = 1;
            mg_conn_t *c = r->conn;
            exchange_done(u, 1);
            if (c && !c->closed)
                mg_conn_flush(c);
            return;
        }
        up_fail(u, FAIL_RESET, u->got_any ? "upstream closed mid-response"
                                          : "upstream closed the connection");
        return;
    }
    u->got_any = 1;
    mg_conn_t *c = r->conn;
    ssize_t k = mg_h1_feed(&u->h1, loop->scratch, (size_t)n);
    if (k < 0) {
        up_fail(u, FAIL_GARBAGE, u->h1.err_reason ? u->h1.err_reason : "invalid response");
        return;
    }
    if (u->resp_done) {
        exchange_done(u, k < n);
    }
    if (c && !c->closed)
        mg_conn_flush(c);
}

static void up_flush(mg_upconn_t *u)
{
    while (u->wbuf.len > 0) {
        ssize_t n = send(u->fd, mg_buf_data(&u->wbuf), u->wbuf.len, MSG_NOSIGNAL);
        if (n > 0) {
            mg_buf_consume(&u->wbuf, (size_t)n);
            u->wrote_any = 1;
            u->last_io = ev_now(u->loop->ev);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        up_fail(u, FAIL_RESET, n < 0 ? strerror(errno) : "write failed");
        return;
    }
    if (u->wbuf.len > 0 && !u->wio_on) {
        ev_io_start(u->loop->ev, &u->wio);
        u->wio_on = 1;
    } else if (u->wbuf.len == 0 && u->wio_on) {
        ev_io_stop(u->loop->ev, &u->wio);
        u->wio_on = 0;
    }
    mg_req_t *r = u->req;
    if (r && r->conn && r->conn->read_paused && u->wbuf.len < UP_WBUF_LOW)
        mg_conn_pause_read(r->conn, 0);
}

static void connected(mg_upconn_t *u)
{
    u->connecting = 0;
    u->last_io = ev_now(u->loop->ev);
    arm_timer(u, ucfg(u)->read_timeout);
    if (!u->rio_on && !u->read_paused) {
        ev_io_start(u->loop->ev, &u->rio);
        u->rio_on = 1;
    }
    up_flush(u);
}

static void up_write_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_upconn_t *u = w->data;
    if (u->connecting) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0) {
            up_fail(u, FAIL_CONNECT, strerror(err));
            return;
        }
        connected(u);
        return;
    }
    up_flush(u);
}

static void up_timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)revents;
    mg_upconn_t *u = w->data;
    if (u->connecting) {
        up_fail(u, FAIL_CONNECT_TIMEOUT, "connect timed out");
        return;
    }
    mg_req_t *r = u->req;
    double rt = ucfg(u)->read_timeout;
    double left = u->last_io + rt - ev_now(ev);
    /* Not the upstream's fault: the client is still sending the body, or
     * is slow to take the response (its own timeout covers that). */
    if (left > 1e-3 || u->read_paused || (r && !r->body_done)) {
        arm_timer(u, left > 1e-3 ? left : rt);
        return;
    }
    up_fail(u, FAIL_TIMEOUT, "upstream timed out");
}

/* --- starting an exchange ------------------------------------------------- */

static void proxy_attach(mg_req_t *r, mg_buf_t *carry);

static void respond_fail(mg_req_t *r, int kind, const char *why)
{
    int status = (kind == FAIL_TIMEOUT || kind == FAIL_CONNECT_TIMEOUT) ? 504 : 502;
    mg_log_warn("upstream %s for %.*s: %s", r->upstream_addr[0] ? r->upstream_addr : "-",
                (int)r->path.n, r->path.p, why);
    mg_req_error(r, status, status == 504 ? "upstream timed out" : "bad gateway");
}

/* Fails the exchange on u: retries where that is safe, else answers the
 * client (or cuts it off when the response has already started). */
static void up_fail(mg_upconn_t *u, int kind, const char *why)
{
    mg_req_t *r = u->req;
    mg_loop_t *loop = u->loop;
    if (r == NULL) {
        mg_up_conn_close(u);
        return;
    }
    r->up = NULL;
    u->req = NULL;
    const mg_cfg_upstream_t *cfg = ucfg(u);
    if (kind == FAIL_CONNECT || kind == FAIL_CONNECT_TIMEOUT)
        loop->stats.up_connect_errors++;
    if (kind == FAIL_TIMEOUT || kind == FAIL_CONNECT_TIMEOUT)
        loop->stats.up_timeouts++;
    if (r->resp_started) {
        mg_log_warn("upstream %s: %s after the response started", r->upstream_addr, why);
        mg_up_conn_close(u);
        if (r->conn)
            mg_conn_close(r->conn); /* aborts r */
        else
            mg_req_abort(r);
        return;
    }
    /* Nothing reached the server yet, or a pooled connection the server had
     * already closed: the request can go again, unchanged. */
    int replayable = !u->wrote_any || (u->reused && !u->got_any && !r->has_body);
    mg_buf_t carry = { 0 };
    if (!u->wrote_any) {
        carry = u->wbuf; /* the head and any body bytes, unsent */
        u->wbuf = (mg_buf_t){ 0 };
    }
    int stale = u->reused && !u->got_any && kind == FAIL_RESET;
    mg_up_conn_close(u);
    if (replayable && stale && r->stale_retries < MAX_STALE_RETRIES) {
        r->stale_retries++;
        proxy_attach(r, carry.len ? &carry : NULL);
        mg_buf_free(&carry);
        return;
    }
    if (replayable && (kind == FAIL_CONNECT || kind == FAIL_CONNECT_TIMEOUT) &&
        r->tries < cfg->retries) {
        r->tries++;
        loop->stats.up_retries++;
        mg_log_info("upstream %s: %s; retrying", r->upstream_addr, why);
        proxy_attach(r, carry.len ? &carry : NULL);
        mg_buf_free(&carry);
        return;
    }
    mg_buf_free(&carry);
    respond_fail(r, kind, why);
}

/* Gets a connection for r and starts sending. `carry`, when given, holds
 * the bytes of a failed attempt (head and body so far) to send instead of
 * the head. */
static void proxy_attach(mg_req_t *r, mg_buf_t *carry)
{
    mg_up_t *up = &r->gen->ups[r->upstream];
    for (;;) {
        int s = mg_up_pick(up, r, r->tried);
        if (s < 0 && r->tried && up->nservers > 0) {
            /* every server tried once: allow another round for retries */
            r->tried = 0;
            s = mg_up_pick(up, r, r->tried);
        }
        if (s < 0) {
            mg_req_error(r, 503, "no healthy upstream");
            return;
        }
        if (s < 64)
            r->tried |= (uint64_t)1 << s;
        snprintf(r->upstream_addr, sizeof r->upstream_addr, "%s", up->servers[s].addr->text);
        int is_new = 0;
        const char *err = NULL;
        mg_upconn_t *u = mg_up_get(up, s, &is_new, &err);
        if (u == NULL) {
            r->loop->stats.up_connect_errors++;
            if (r->tries < up->cfg->retries) {
                r->tries++;
                r->loop->stats.up_retries++;
                continue;
            }
            respond_fail(r, FAIL_CONNECT, err ? err : "connect failed");
            return;
        }
        u->req = r;
        r->up = u;
        u->resp_done = 0;
        if (carry) {
            mg_buf_append(&u->wbuf, mg_buf_data(carry), carry->len);
        } else {
            mg_buf_append(&u->wbuf, mg_buf_data(&r->uhead), r->uhead.len);
        }
        mg_h1_head_reset(&u->head);
        mg_h1_init(&u->h1, HTTP_RESPONSE, &resp_cbs, u, 0, 64 * 1024);
        ev_io_init(&u->rio, up_read_cb, u->fd, EV_READ);
        u->rio.data = u;
        ev_io_init(&u->wio, up_write_cb, u->fd, EV_WRITE);
        u->wio.data = u;
        ev_init(&u->timer, up_timer_cb);
        u->timer.data = u;
        if (u->connecting) {
            ev_io_start(r->loop->ev, &u->wio);
            u->wio_on = 1;
            arm_timer(u, up->cfg->connect_timeout);
        } else {
            connected(u);
        }
        return;
    }
}

void mg_proxy_start(mg_req_t *r, int upstream)
{
    r->upstream = upstream;
    build_request_head(r);
    proxy_attach(r, NULL);
}

void mg_proxy_body(mg_req_t *r, const char *p, size_t n)
{
    mg_upconn_t *u = r->up;
    if (r->req_chunked) {
        mg_buf_printf(&u->wbuf, "%zx\r\n", n);
        mg_buf_append(&u->wbuf, p, n);
        mg_buf_append(&u->wbuf, "\r\n", 2);
    } else {
        mg_buf_append(&u->wbuf, p, n);
    }
    if (u->wbuf.len > UP_WBUF_HIGH && r->conn)
        mg_conn_pause_read(r->conn, 1);
    if (!u->connecting)
        up_flush(u);
}

void mg_proxy_body_done(mg_req_t *r)
{
    mg_upconn_t *u = r->up;
    if (r->req_chunked)
        mg_buf_append(&u->wbuf, "0\r\n\r\n", 5);
    if (!u->connecting)
        up_flush(u);
}

void mg_proxy_client_drained(mg_req_t *r)
{
    if (r->up && r->up->read_paused)
        pause_upstream(r->up, 0);
}

void mg_proxy_abort(mg_req_t *r)
{
    mg_upconn_t *u = r->up;
    if (u == NULL)
        return;
    r->up = NULL;
    u->req = NULL;
    mg_up_conn_close(u);
}
