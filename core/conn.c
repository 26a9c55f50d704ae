/* Client connections. Reads go into the loop's shared scratch buffer and are
 * parsed at once; only bytes that cannot be parsed yet (a pipelined request
 * behind one in flight) are kept in the connection's own rbuf, so an idle
 * keep-alive connection costs no buffer.
 *
 * Reads and writes go through c->sock (sock.h, the transport upstream
 * connections and tunnels use too): plain TCP stays on recv()/send()
 * behind an inline test that no TLS is set; on a TLS listener tls.c's
 * session. TLS differs in three ways: a read may need the socket writable
 * (and a write readable), which sock's rd_ww/wr_wr flags route through the
 * other watcher; OpenSSL may hold bytes it already took off the socket,
 * which the kernel will not report, so the read watcher is fed by hand
 * while it does; and a clean close sends close_notify first (never on an
 * abort, where it would make a truncated response look complete). */
#include "conn.h"
#include "h2conn.h"
#include "log.h"
#include "loop.h"
#include "proxyproto.h"
#include "realip.h"
#include "req.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MG_LINGER_SECONDS 2.0

enum { T_NONE, T_IDLE, T_HEADER, T_BUSY, T_LINGER };

static void conn_process(mg_conn_t *c);
static void conn_free(void *p);

/* Closes a connection with nothing in flight, saying goodbye first on TLS. */
static void close_clean(mg_conn_t *c)
{
    if (c->sock.tls)
        mg_tls_shutdown(c->sock.tls);
    mg_conn_close(c);
}

/* Starts the read watcher. Bytes OpenSSL holds would never wake it, so
 * then it is fed at once. */
static inline void rio_start(mg_conn_t *c)
{
    ev_io_start(c->loop->ev, &c->rio);
    c->rio_on = 1;
    if (c->sock.tls && mg_tls_pending(c->sock.tls))
        ev_feed_event(c->loop->ev, &c->rio, EV_READ);
}

/* --- timers ---------------------------------------------------------------- */

static const mg_limits_t *limits(mg_conn_t *c)
{
    return &c->loop->gen->cfg->limits;
}

/* The one timer follows the deadline lazily (loop.h's mg_timer_follow): a
 * keep-alive connection's timeouts change several times per request (idle,
 * header, busy, idle). T_NONE leaves the timer to fire and find nothing to
 * do. */
static void set_timeout(mg_conn_t *c, int kind, double secs)
{
    struct ev_loop *ev = c->loop->ev;
    c->timeout_kind = kind;
    if (kind == T_NONE)
        return;
    c->deadline_at = ev_now(ev) + secs;
    mg_timer_follow(ev, &c->timer, &c->armed_at, c->deadline_at);
}

static void write_raw_error(mg_conn_t *c, int status, const char *msg)
{
    char buf[512];
    char body[256];
    int bn = snprintf(body, sizeof body, "{\"error\":\"%s\"}", msg);
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %d %s\r\n%sContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                     status, mg_status_reason(status), mg_loop_date(c->loop), bn, body);
    mg_conn_write(c, buf, (size_t)n);
}

/* Answers status on a connection that will close: through the request when
 * one is being parsed (so it is logged), else directly. */
static void conn_fail(mg_conn_t *c, int status, const char *msg)
{
    c->closing = 1;
    mg_req_t *r = c->req;
    if (r && !mg_rs_sent(r)) {
        mg_req_error(r, status, msg);
    } else if (r) {
        mg_conn_close(c); /* mid-response: nothing sensible to send */
        return;
    } else if (status) {
        write_raw_error(c, status, msg);
    }
    mg_conn_flush(c);
}

static void timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)revents;
    mg_conn_t *c = w->data;
    if (c->timeout_kind == T_NONE)
        return;
    if (mg_timer_early(ev, &c->timer, &c->armed_at, c->deadline_at))
        return; /* the deadline moved on */
    switch (c->timeout_kind) {
    case T_IDLE:
        close_clean(c);
        return;
    case T_HEADER:
        if (c->pp_wait) {
            mg_log_info("closing %s: no PROXY protocol header in time", c->remote);
            mg_conn_close(c);
            return;
        }
        if (c->sock.tls && !mg_tls_ready(c->sock.tls)) {
            mg_log_info("closing %s: TLS handshake timeout", c->remote);
            mg_conn_close(c); /* no session to answer on */
            return;
        }
        conn_fail(c, 408, "request header timeout");
        return;
    case T_LINGER:
        mg_conn_close(c);
        return;
    case T_BUSY: {
        /* Only a client that stops reading our output, or stops sending a
         * body we are waiting for, is timed out here; a slow upstream is
         * the upstream's read_timeout's business. */
        mg_req_t *r = c->req;
        if (r == NULL && c->wbuf.len == 0) {
            close_clean(c); /* idle keep-alive connection */
            return;
        }
        if (c->wbuf.len > 0 || (r && !r->body_done && !c->src.paused)) {
            mg_log_info("closing %s: client idle for %.1fs", c->remote,
                        limits(c)->idle_timeout);
            mg_conn_close(c);
            return;
        }
        set_timeout(c, T_BUSY, limits(c)->idle_timeout);
        return;
    }
    default:
        return;
    }
}

/* Progress pushes the busy deadline forward without touching the timer
 * (libev "be smart about timeouts"): timer_cb re-arms when it fires early. */
static inline void progress(mg_conn_t *c)
{
    if (c->timeout_kind == T_BUSY)
        c->deadline_at = ev_now(c->loop->ev) + limits(c)->idle_timeout;
}

/* --- parser callbacks --------------------------------------------------- */

static mg_h1_head_t *on_begin(void *ud)
{
    mg_conn_t *c = ud;
    if (c->req != NULL || c->closed || c->closing)
        return NULL;
    mg_req_t *r = mg_req_new(c->loop, c->spare);
    if (r == NULL)
        return NULL;
    c->spare = NULL; /* the request's now */
    c->req = r;
    r->w = &c->w;
    r->src = &c->src;
    memcpy(r->remote, c->remote, sizeof r->remote);
    memcpy(r->peer, c->remote, sizeof r->peer);
    r->https = c->https;
    r->admin_listener = c->admin;
    if (c->timeout_kind != T_HEADER)
        set_timeout(c, T_HEADER, limits(c)->header_timeout);
    return r->head;
}

static int on_head(void *ud, mg_h1_head_t *head)
{
    mg_conn_t *c = ud;
    (void)head;
    set_timeout(c, T_BUSY, limits(c)->idle_timeout);
    mg_req_dispatch(c->req); /* may finish the request */
    return 0;
}

static int on_body(void *ud, const char *p, size_t n)
{
    mg_conn_t *c = ud;
    if (c->req && !c->req->done)
        mg_req_body(c->req, p, n);
    return 0;
}

/* Pauses after each message so a pipelined request waits for the one in
 * flight, unless that one already finished (answered before its body
 * ended): then parsing goes straight on, or stops if we are closing. */
static int on_done(void *ud)
{
    mg_conn_t *c = ud;
    if (c->req && !c->req->done)
        mg_req_body_done(c->req);
    if (c->closed || c->closing)
        return 0;
    return c->req == NULL && !c->parse_held ? 1 : 0;
}

/* A chunked request's trailers: kept with the request (an h2 upstream
 * gets them as trailing HEADERS). */
static mg_h1_head_t *on_trailers(void *ud)
{
    mg_conn_t *c = ud;
    return c->req && !c->req->done ? mg_req_trailer_store(c->req) : NULL;
}

static const mg_h1_cb_t req_cbs = { on_begin, on_head, on_body, on_done, on_trailers };

/* --- reading -------------------------------------------------------------- */

/* Feeds p[0..n) to the parser. Returns bytes consumed, or -1 when the
 * connection failed (error answered, or closed). */
static ssize_t feed(mg_conn_t *c, const char *p, size_t n)
{
    ssize_t k = mg_h1_feed(&c->h1, p, n);
    if (k < 0 && (c->closed || c->closing)) {
        if (!c->closed)
            mg_conn_flush(c);
        return -1;
    }
    if (k < 0) {
        int status = c->h1.err_status ? c->h1.err_status : 400;
        const char *why = c->h1.err_reason ? c->h1.err_reason : "bad request";
        mg_log_info("%s: %d %s", c->remote, status, why);
        conn_fail(c, status, why);
        return -1;
    }
    return k;
}

/* Parses buffered bytes while the parser accepts them. */
static void conn_process(mg_conn_t *c)
{
    if (c->in_process)
        return;
    c->in_process = 1;
    while (!c->closed && !c->closing && c->rbuf.len > 0 && !mg_h1_is_paused(&c->h1)) {
        ssize_t k = feed(c, mg_buf_data(&c->rbuf), c->rbuf.len);
        if (k < 0)
            break;
        mg_buf_consume(&c->rbuf, (size_t)k);
    }
    if (!c->closed && c->rbuf.len == 0 && c->rbuf.cap > MG_CONN_RBUF_MAX / 4)
        mg_buf_free(&c->rbuf); /* give big buffers back between requests */
    c->in_process = 0;
    if (!c->closed && !c->closing && c->eof && c->req == NULL && c->rbuf.len == 0) {
        /* the client half-closed and its last pipelined request is
         * answered (it finished inside the parser, before its bytes were
         * consumed, so mg_conn_request_done saw them still buffered) */
        c->closing = 1;
        set_timeout(c, T_BUSY, limits(c)->idle_timeout); /* a client that stops reading */
        mg_conn_flush(c);
        return;
    }
    if (!c->closed && !c->rio_on && !c->src.paused && !c->closing &&
        c->rbuf.len < MG_CONN_RBUF_MAX && !c->eof)
        rio_start(c);
}

static void next_request(mg_conn_t *c);

/* After a flush from an I/O callback: a pipelined request held back by a
 * full write queue goes on once the queue is low. Never from inside the
 * parser (in_process): the write watcher comes back. */
static void drained(mg_conn_t *c)
{
    if (!c->parse_held || c->in_process || c->wbuf.len >= MG_CONN_WBUF_LOW)
        return;
    c->parse_held = 0;
    if (c->closing || c->req != NULL)
        return;
    next_request(c);
}

static void linger_read(mg_conn_t *c)
{
    if (mg_sock_discard(c->sock.fd, c->loop->scratch, c->loop->scratch_cap) != 0)
        mg_conn_close(c);
}

/* The connection's first bytes, p[0..n) (read into rbuf's free room
 * unless `direct`): when TLS agreed on h2 or the client starts with the
 * HTTP/2 preface, the socket and every byte so far go to h2conn.c and
 * this connection ends. Returns 1 when it took care of the bytes (handed
 * over, or keeping the start of a preface), 0 to parse them as HTTP/1. */
static int h2_first_bytes(mg_conn_t *c, const char *p, size_t n, int direct)
{
    static const char preface[24] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if (c->sock.tls) {
        c->h2_sniff = 0;
        if (!mg_tls_alpn_h2(c->sock.tls))
            return 0;
    } else {
        const char *all = direct ? p : mg_buf_data(&c->rbuf);
        size_t have = direct ? n : c->rbuf.len + n;
        if (memcmp(all, preface, have < 24 ? have : 24) != 0) {
            c->h2_sniff = 0;
            return 0;
        }
        if (have < 24) { /* the rest of the preface is still to come */
            if (!direct)
                c->rbuf.len += n;
            else if (mg_buf_append(&c->rbuf, p, n) != MG_OK)
                mg_conn_close(c);
            return 1;
        }
    }
    if (!direct) {
        c->rbuf.len += n;
        p = mg_buf_data(&c->rbuf);
        n = c->rbuf.len;
    }
    mg_sock_t s = c->sock;
    c->sock.fd = -1; /* h2conn's now */
    c->sock.tls = NULL;
    int flags = (c->https ? MG_H2_F_HTTPS : 0) | (c->admin ? MG_H2_F_ADMIN : 0);
    mg_conn_close(c); /* c (and rbuf, which p may point into) is freed later */
    mg_h2_accept(c->loop, &s, c->remote, flags, p, n);
    return 1;
}

/* Reads what the socket has and parses it. */
static inline void read_some(mg_conn_t *c)
{
    int direct = c->rbuf.len == 0 && !mg_h1_is_paused(&c->h1) && !c->in_process;
    char *dst;
    size_t room;
    if (direct) {
        dst = c->loop->scratch;
        room = c->loop->scratch_cap;
    } else {
        if (c->rbuf.len >= MG_CONN_RBUF_MAX) {
            ev_io_stop(c->loop->ev, &c->rio);
            c->rio_on = 0;
            return;
        }
        if (mg_buf_reserve(&c->rbuf, 16384) != MG_OK) {
            mg_conn_close(c);
            return;
        }
        dst = c->rbuf.base + c->rbuf.off + c->rbuf.len;
        room = mg_buf_room(&c->rbuf);
    }
    ssize_t n = mg_sock_recv(&c->sock, dst, room);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            if (c->sock.rd_ww && !c->wio_on) { /* the TLS read waits for writability */
                ev_io_start(c->loop->ev, &c->wio);
                c->wio_on = 1;
            }
            return;
        }
        if (c->sock.tls && !mg_tls_ready(c->sock.tls)) /* a reset after it is unremarkable */
            mg_log_info("closing %s: TLS handshake failed", c->remote);
        mg_conn_close(c);
        return;
    }
    if (n == 0) {
        /* EOF. Nothing in flight: done. A request in flight with no
         * pipelined bytes behind it: the client gave up (abort, as nginx's
         * 499). Pipelined requests still buffered: answer them, then close. */
        c->eof = 1;
        ev_io_stop(c->loop->ev, &c->rio);
        c->rio_on = 0;
        if (c->req == NULL && c->rbuf.len == 0 && c->wbuf.len > 0) {
            /* answered, and the answer is still going out: a client may
             * half-close once it has sent its request */
            c->closing = 1;
            mg_conn_flush(c);
            return;
        }
        if ((c->req == NULL && !c->parse_held) || c->rbuf.len == 0)
            mg_conn_close(c);
        return;
    }
    progress(c);
    if (c->h2_sniff && h2_first_bytes(c, dst, (size_t)n, direct))
        return;
    if (!direct) {
        c->rbuf.len += (size_t)n;
        conn_process(c);
        return;
    }
    c->in_process = 1;
    ssize_t k = feed(c, dst, (size_t)n);
    c->in_process = 0;
    if (k < 0 || c->closed)
        return;
    if ((size_t)k < (size_t)n && !c->closing &&
        mg_buf_append(&c->rbuf, dst + k, (size_t)n - (size_t)k) != MG_OK) {
        mg_conn_close(c);
        return;
    }
    conn_process(c);
}

/* A TLS connection is readable, or OpenSSL holds bytes: first the write
 * that waited for this, then the read; then come back at once if OpenSSL
 * still holds bytes and reading goes on. */
static void tls_read_event(mg_conn_t *c)
{
    if (c->sock.wr_wr) {
        c->sock.wr_wr = 0;
        mg_conn_flush(c);
        if (c->closed || c->timeout_kind == T_LINGER)
            return;
    }
    read_some(c);
    if (!c->closed)
        drained(c);
    if (!c->closed && c->rio_on && c->timeout_kind != T_LINGER && mg_tls_pending(c->sock.tls))
        ev_feed_event(c->loop->ev, &c->rio, EV_READ);
}

/* Reads the PROXY protocol header that starts a connection on a
 * proxy_protocol listener, before TLS and HTTP see a byte. Bytes are
 * peeked and only the header's own are taken off the socket (what follows
 * belongs to OpenSSL or the HTTP parser); a partial header is kept in
 * rbuf, which is empty until the header is done. Returns 0 when the header
 * is done (c->remote is the client it names), 1 to wait, -1 when closed. */
static int read_proxy_header(mg_conn_t *c)
{
    for (;;) {
        if (mg_buf_reserve(&c->rbuf, MG_PP_MAX) != MG_OK) {
            mg_conn_close(c);
            return -1;
        }
        size_t have = c->rbuf.len;
        uint8_t *base = (uint8_t *)c->rbuf.base + c->rbuf.off;
        ssize_t m = recv(c->sock.fd, base + have, MG_PP_MAX - have, MSG_PEEK);
        if (m < 0 && (errno == EAGAIN || errno == EINTR))
            return 1;
        if (m <= 0) {
            mg_conn_close(c);
            return -1;
        }
        mg_pp_result_t pp;
        int k = mg_pp_parse(base, have + (size_t)m, &pp);
        size_t take = k > 0 ? (size_t)k - have : (size_t)m;
        if (k < 0 || (k == 0 && have + (size_t)m >= MG_PP_MAX)) {
            mg_log_info("closing %s: invalid PROXY protocol header", c->remote);
            mg_conn_close(c);
            return -1;
        }
        if (recv(c->sock.fd, base + have, take, 0) != (ssize_t)take) { /* peeked: it is there */
            mg_conn_close(c);
            return -1;
        }
        if (k == 0) {
            c->rbuf.len += take;
            continue;
        }
        mg_buf_free(&c->rbuf); /* the header's room is not kept for the connection's life */
        c->pp_wait = 0;
        if (!pp.local) {
            inet_ntop(pp.family, pp.src, c->remote, sizeof c->remote);
            c->remote_port = pp.src_port;
        }
        return 0;
    }
}

static void read_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_conn_t *c = w->data;
    if (c->pp_wait && read_proxy_header(c) != 0)
        return;
    if (c->timeout_kind == T_LINGER) {
        linger_read(c); /* raw bytes: nothing after close_notify matters */
        return;
    }
    if (c->sock.tls) {
        tls_read_event(c);
        return;
    }
    read_some(c);
}

/* --- writing -------------------------------------------------------------- */

int mg_conn_write(mg_conn_t *c, const void *p, size_t n)
{
    if (c->closed)
        return MG_ECLOSED;
    return mg_buf_append(&c->wbuf, p, n);
}

static void start_linger(mg_conn_t *c)
{
    /* Half-close and drain what the client still sends, so the kernel does
     * not reset the connection and destroy the response we just sent. */
    if (c->sock.tls)
        mg_tls_shutdown(c->sock.tls);
    shutdown(c->sock.fd, SHUT_WR);
    set_timeout(c, T_LINGER, MG_LINGER_SECONDS);
    if (c->wio_on) {
        ev_io_stop(c->loop->ev, &c->wio);
        c->wio_on = 0;
    }
    if (!c->rio_on && !c->eof)
        rio_start(c);
    if (c->eof)
        mg_conn_close(c);
}

void mg_conn_flush(mg_conn_t *c)
{
    if (c->closed || c->timeout_kind == T_LINGER)
        return;
    int wrote = 0, wait_read = 0;
    while (c->wbuf.len > 0) {
        ssize_t n = mg_sock_send(&c->sock, mg_buf_data(&c->wbuf), c->wbuf.len);
        if (n > 0) {
            mg_buf_consume(&c->wbuf, (size_t)n);
            wrote = 1;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            wait_read = c->sock.wr_wr;
            break;
        }
        mg_conn_close(c);
        return;
    }
    if (wrote)
        progress(c);
    if (c->wbuf.len > 0 && wait_read) {
        /* the session must hear from the client first: the read watcher
         * retries this write (tls_read_event) */
        c->sock.wr_wr = 1;
        if (c->wio_on && !c->sock.rd_ww) {
            ev_io_stop(c->loop->ev, &c->wio);
            c->wio_on = 0;
        }
        if (!c->rio_on)
            rio_start(c);
    } else if (c->wbuf.len > 0) {
        if (!c->wio_on) {
            ev_io_start(c->loop->ev, &c->wio);
            c->wio_on = 1;
        }
    } else {
        if (c->wio_on && !c->sock.rd_ww) {
            ev_io_stop(c->loop->ev, &c->wio);
            c->wio_on = 0;
        }
        if (c->wbuf.cap > MG_CONN_WBUF_HIGH)
            mg_buf_free(&c->wbuf);
        if (c->closing && c->req == NULL) {
            start_linger(c);
            return;
        }
    }
    /* the response's producer (the proxy) resumes through its callback */
    if (c->req && c->req->on_drained && c->wbuf.len < MG_CONN_WBUF_LOW)
        c->req->on_drained(c->req);
}

static void write_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_conn_t *c = w->data;
    if (c->sock.rd_ww) {
        c->sock.rd_ww = 0;
        if (c->wbuf.len == 0 && c->wio_on) {
            ev_io_stop(ev, &c->wio);
            c->wio_on = 0;
        }
        tls_read_event(c);
        if (c->closed)
            return;
    }
    mg_conn_flush(c);
    if (!c->closed)
        drained(c);
}

/* --- lifecycle ------------------------------------------------------------ */

void mg_conn_accept(mg_loop_t *loop, int fd, const struct sockaddr *sa, int flags,
                    struct ssl_ctx_st *tls)
{
    int admin = flags & MG_CONN_F_ADMIN;
    mg_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return;
    }
    if (tls) {
        c->sock.tls = mg_tls_new(tls, fd);
        if (c->sock.tls == NULL) {
            mg_log_error("out of memory starting a TLS session");
            free(c);
            close(fd);
            return;
        }
        c->https = 1;
    }
    c->admin = admin ? 1 : 0;
    c->w.ops = &mg_conn_writer_ops;
    c->src.ops = &mg_conn_src_ops;
    c->loop = loop;
    c->sock.fd = fd;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, c->remote, sizeof c->remote);
        c->remote_port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, c->remote, sizeof c->remote);
        c->remote_port = ntohs(in6->sin6_port);
    } else {
        snprintf(c->remote, sizeof c->remote, "unix");
    }
    if (flags & MG_CONN_F_PROXY_PROTOCOL) {
        /* Only a trusted balancer may say who the client is: from any
         * other address the connection is refused (with no trusted_proxies
         * the listener's own setting is the trust: everyone connecting
         * must be a balancer). */
        const mg_cfg_t *cfg = loop->gen->cfg;
        if (cfg->ntrusted && !mg_cidr_match_text(cfg->trusted, cfg->ntrusted, c->remote)) {
            mg_log_info("refusing %s on a proxy_protocol listener: not in trusted_proxies",
                        c->remote);
            mg_tls_free(c->sock.tls);
            free(c);
            close(fd);
            return;
        }
        c->pp_wait = 1;
    }
    c->h2_sniff = (flags & MG_CONN_F_H2) ? 1 : 0;
    ev_io_init(&c->rio, read_cb, fd, EV_READ);
    c->rio.data = c;
    ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
    c->wio.data = c;
    ev_init(&c->timer, timer_cb);
    c->timer.data = c;
    const mg_limits_t *lim = &loop->gen->cfg->limits;
    mg_h1_init(&c->h1, HTTP_REQUEST, &req_cbs, c, lim->max_uri_bytes, lim->max_header_bytes);
    _Static_assert((int)MG_CFG_US_DROP == (int)MG_H1_US_DROP &&
                       (int)MG_CFG_US_REJECT == (int)MG_H1_US_REJECT &&
                       (int)MG_CFG_US_ALLOW == (int)MG_H1_US_ALLOW,
                   "underscore policy numbers");
    c->h1.underscores = (unsigned char)lim->underscore_headers;
    c->next = loop->conns;
    if (loop->conns)
        loop->conns->prev = c;
    loop->conns = c;
    loop->stats.conns++;
    loop->stats.accepted++;
    ev_io_start(loop->ev, &c->rio);
    c->rio_on = 1;
    set_timeout(c, T_HEADER, lim->header_timeout);
}

/* Starts parsing the next (pipelined) request. */
static void next_request(mg_conn_t *c)
{
    mg_h1_resume(&c->h1);
    set_timeout(c, c->rbuf.len ? T_HEADER : T_IDLE,
                c->rbuf.len ? limits(c)->header_timeout : limits(c)->idle_timeout);
    if (c->wbuf.len)
        set_timeout(c, T_BUSY, limits(c)->idle_timeout);
    conn_process(c);
    if (!c->closed && c->req == NULL) {
        mg_conn_flush(c);
        if (!c->closed && c->req == NULL && c->wbuf.len == 0 && c->timeout_kind == T_BUSY)
            set_timeout(c, c->rbuf.len ? T_HEADER : T_IDLE,
                        c->rbuf.len ? limits(c)->header_timeout : limits(c)->idle_timeout);
    }
}

void mg_conn_request_done(mg_conn_t *c, int keepalive)
{
    c->req = NULL;
    if (c->closed)
        return;
    if (!keepalive || c->loop->stopping || (c->eof && c->rbuf.len == 0))
        c->closing = 1;
    if (c->closing) {
        /* the answer may still be going out: a client that stops reading
         * it is timed out like any other (no timeout here held the
         * connection and its queued answer for ever) */
        set_timeout(c, c->wbuf.len ? T_BUSY : T_NONE, limits(c)->idle_timeout);
        mg_conn_flush(c);
        return;
    }
    if (c->wbuf.len > MG_CONN_WBUF_HIGH) {
        /* A client that pipelines requests and does not read the answers
         * would have us queue every answer (a 30-byte request can ask for
         * a large one). The next request waits until the answers before
         * it have mostly gone out (drained(), from the write watcher). */
        mg_conn_flush(c);
        if (c->closed)
            return;
        if (c->wbuf.len > MG_CONN_WBUF_HIGH) {
            c->parse_held = 1;
            set_timeout(c, T_BUSY, limits(c)->idle_timeout);
            return;
        }
    }
    next_request(c);
}

void mg_conn_pause_read(mg_conn_t *c, int pause)
{
    if (c->closed)
        return;
    c->src.paused = pause ? 1 : 0;
    if (pause && c->rio_on) {
        ev_io_stop(c->loop->ev, &c->rio);
        c->rio_on = 0;
    } else if (!pause && !c->rio_on && !c->eof) {
        rio_start(c);
    }
}

void mg_conn_close_idle(mg_conn_t *c)
{
    if (c->req == NULL && c->wbuf.len == 0)
        close_clean(c);
}

void mg_conn_detach(mg_conn_t *c, int *fd, struct mg_tls **tls, mg_buf_t *out, const char **in,
                    size_t *in_n, int *eof)
{
    *fd = c->sock.fd;
    *tls = c->sock.tls;
    *out = c->wbuf;
    *eof = c->eof;
    c->wbuf = (mg_buf_t){ 0 };
    c->sock.fd = -1;
    c->sock.tls = NULL;
    c->req = NULL;
    /* the parser stopped after the request: what follows is the tunnel's */
    *in = c->rbuf.len ? mg_buf_data(&c->rbuf) : NULL; /* freed with c, later */
    *in_n = c->rbuf.len;
    mg_conn_close(c);
}

void mg_conn_close(mg_conn_t *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    mg_loop_t *loop = c->loop;
    mg_req_t *r = c->req;
    c->req = NULL;
    if (r) {
        r->w = NULL;
        r->src = NULL;
        mg_req_abort(r);
    }
    ev_io_stop(loop->ev, &c->rio);
    ev_io_stop(loop->ev, &c->wio);
    ev_timer_stop(loop->ev, &c->timer);
    if (c->sock.fd >= 0)
        close(c->sock.fd);
    c->sock.fd = -1;
    mg_tls_free(c->sock.tls); /* after close(): SSL_free sends nothing */
    c->sock.tls = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        loop->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    loop->stats.conns--;
    mg_loop_defer(loop, conn_free, c);
    mg_loop_check_drained(loop);
}

static void conn_free(void *p)
{
    mg_conn_t *c = p;
    mg_buf_free(&c->rbuf);
    mg_buf_free(&c->wbuf);
    if (c->spare) {
        mg_h1_head_free(c->spare);
        free(c->spare);
    }
    free(c);
}
