/* HTTP/2 client connections on libnghttp2 (h2conn.h).
 *
 * Bytes read go straight into nghttp2_session_mem_recv, whose callbacks
 * build streams (h2stream.c) and dispatch their requests; everything the
 * session wants to send is pulled with nghttp2_session_mem_send into
 * wbuf, only while wbuf is below a mark, so a client that does not read
 * stops the pulling (and, through each stream's queue, its producers).
 * mem_send is never called from inside nghttp2 (`in_ng`): writers kick
 * the connection instead, which feeds an idle watcher an event, so the
 * send runs right after the current callback and batches what the
 * callback produced.
 *
 * The advertised SETTINGS_MAX_CONCURRENT_STREAMS is limits.h2_max_streams,
 * but nghttp2 is told "unlimited": it would answer a stream over an
 * acknowledged limit with a connection error, and a stream over it is to
 * be refused alone (RST_STREAM REFUSED_STREAM), which on_begin_headers
 * does. So the value is written into the first SETTINGS frame as it goes
 * out (patch_settings).
 *
 * Floods: nghttp2 bounds SETTINGS entries, queued SETTINGS/PING ACKs,
 * CONTINUATION frames per header block and incoming RST_STREAMs; on top of
 * that two token buckets per connection: streams the client resets while
 * their request is in flight (rapid reset), and control frames that cost
 * us work but carry no request (PING, SETTINGS, PRIORITY, empty DATA,
 * invalid frames, refused streams). An HPACK bomb is caught by the decoded
 * size (h2stream.c). Each closes the connection with GOAWAY
 * ENHANCE_YOUR_CALM and touches no other connection. */
#include "h2conn.h"
#include "log.h"
#include "loop.h"
#include "req.h"
#include "tls.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WBUF_HIGH (64 * 1024)      /* stop pulling frames from nghttp2 above this */
#define STREAM_WINDOW (256 * 1024) /* per stream: bounds a paused request's buffered body */
#define CONN_WINDOW (4 * 1024 * 1024)
#define LINGER_SECONDS 2.0
/* A request body nobody reads any more (answered early, e.g. 413) is read
 * and dropped up to this much before the stream is reset: some clients
 * (curl 7.88) drop a complete response when the upload is cut short. */
#define DISCARD_MAX (8 * 1024 * 1024)

#define RST_BURST 200.0            /* client resets of streams in flight */
#define RST_RATE 20.0              /* ... regained per second */
#define CTL_BURST 1000.0           /* control frames */
#define CTL_RATE 100.0

static void h2c_send(mg_h2c_t *c);
static void h2c_close(mg_h2c_t *c);
static void conn_free(void *p);

static const mg_limits_t *limits(mg_h2c_t *c)
{
    return &c->loop->gen->cfg->limits;
}

/* --- flood budgets ------------------------------------------------------- */

/* Takes one token from *bucket (c's buckets refill at their rate up to
 * their burst); 0 when it was empty: the client floods. */
static int spend(mg_h2c_t *c, double *bucket)
{
    double now = ev_now(c->loop->ev);
    double dt = now - c->tokens_at;
    if (dt > 0) {
        c->rst_tokens += dt * RST_RATE;
        if (c->rst_tokens > RST_BURST)
            c->rst_tokens = RST_BURST;
        c->ctl_tokens += dt * CTL_RATE;
        if (c->ctl_tokens > CTL_BURST)
            c->ctl_tokens = CTL_BURST;
        c->tokens_at = now;
    }
    if (*bucket < 1.0)
        return 0;
    *bucket -= 1.0;
    return 1;
}

/* The client floods: GOAWAY ENHANCE_YOUR_CALM, then the connection ends. */
static int calm_down(mg_h2c_t *c, const char *what)
{
    if (!c->calm)
        mg_log_warn("closing HTTP/2 connection from %s: %s flood", c->remote, what);
    c->calm = 1;
    nghttp2_session_terminate_session(c->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    return 0;
}

static int ctl_frame(mg_h2c_t *c, const char *what)
{
    if (!spend(c, &c->ctl_tokens))
        return calm_down(c, what);
    return 0;
}

/* --- nghttp2 callbacks ----------------------------------------------------- */

static mg_h2s_t *stream_of(nghttp2_session *ng, int32_t id)
{
    return id ? nghttp2_session_get_stream_user_data(ng, id) : NULL;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    mg_h2c_t *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (c->nstreams >= c->max_streams) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, f->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return ctl_frame(c, "refused stream");
    }
    mg_h2s_t *s = calloc(1, sizeof *s);
    mg_h1_head_t *h = s ? calloc(1, sizeof *h) : NULL;
    if (h == NULL) {
        free(s);
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, f->hd.stream_id,
                                  NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    s->c = c;
    s->id = f->hd.stream_id;
    s->t0 = ev_now(c->loop->ev);
    s->head = h;
    s->w.ops = &mg_h2s_writer_ops;
    s->src.ops = &mg_h2s_src_ops;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->nstreams++;
    c->served = 1;
    if (c->timer.repeat > c->period) { /* the timer slept through an idle stretch */
        c->timer.repeat = c->period;
        ev_timer_again(c->loop->ev, &c->timer);
    }
    nghttp2_session_set_stream_user_data(ng, s->id, s);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                     size_t nn, const uint8_t *value, size_t vn, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    mg_h2s_t *s = stream_of(ng, f->hd.stream_id);
    if (s == NULL || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (s->headers_done)
        return mg_h2s_trailer(s, name, nn, value, vn);
    return mg_h2s_header(s, name, nn, value, vn);
}

static void body_done(mg_h2s_t *s)
{
    s->end_stream = 1;
    if (s->req && !s->req->done)
        mg_req_body_done(s->req);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    mg_h2c_t *c = ud;
    mg_h2s_t *s = stream_of(ng, f->hd.stream_id);
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        if (s == NULL)
            return 0;
        if (!s->headers_done) {
            if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
                s->end_stream = 1;
            mg_h2s_start(s);
        } else if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
            body_done(s);
        }
        return 0;
    case NGHTTP2_DATA:
        if (f->hd.length == 0 && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            return ctl_frame(c, "empty DATA");
        if (s && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            body_done(s);
        return 0;
    case NGHTTP2_RST_STREAM:
        if (s && s->req && !s->req->done && !spend(c, &c->rst_tokens))
            return calm_down(c, "stream reset");
        return 0;
    case NGHTTP2_PING:
        return (f->hd.flags & NGHTTP2_FLAG_ACK) ? 0 : ctl_frame(c, "PING");
    case NGHTTP2_SETTINGS:
        return (f->hd.flags & NGHTTP2_FLAG_ACK) ? 0 : ctl_frame(c, "SETTINGS");
    case NGHTTP2_PRIORITY:
        return ctl_frame(c, "PRIORITY");
    default:
        return 0;
    }
}

static int on_invalid_frame(nghttp2_session *ng, const nghttp2_frame *f, int err, void *ud)
{
    (void)ng;
    (void)f;
    (void)err;
    return ctl_frame(ud, "invalid frame");
}

static int on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *p, size_t n,
                   void *ud)
{
    (void)flags;
    (void)ud;
    /* the connection's window reopens at once: a paused stream holds up
     * no other */
    nghttp2_session_consume_connection(ng, n);
    mg_h2s_t *s = stream_of(ng, id);
    if (s && s->req && !s->req->done)
        mg_req_body(s->req, (const char *)p, n); /* may pause, answer or abort */
    else if (s && s->reset_after && (s->discarded += n) > DISCARD_MAX && !s->closed) {
        /* answered long ago and still sending: enough (RFC 9113 8.1) */
        s->reset_after = 0;
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR);
    }
    if (s && s->src.paused && s->req && !s->closed)
        s->unacked += n;
    else
        nghttp2_session_consume_stream(ng, id, n);
    return 0;
}

static void unlink_pending(mg_h2c_t *c, mg_h2s_t *s)
{
    if (!s->in_pend)
        return;
    for (mg_h2s_t **pp = &c->pending; *pp; pp = &(*pp)->pend) {
        if (*pp == s) {
            *pp = s->pend;
            break;
        }
    }
    s->in_pend = 0;
}

static void stream_free(void *p)
{
    mg_h2s_free(p);
}

/* Takes s out of c (it is closed or the connection goes) and frees it
 * later: a caller up the stack may still hold it. */
static void stream_gone(mg_h2c_t *c, mg_h2s_t *s)
{
    s->closed = 1;
    unlink_pending(c, s);
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    c->nstreams--;
    if (c->streams == NULL)
        c->last_busy = ev_now(c->loop->ev);
    mg_h2s_detach(s); /* a request still in flight is aborted */
    mg_loop_defer(c->loop, stream_free, s);
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    (void)code;
    mg_h2s_t *s = stream_of(ng, id);
    if (s == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    stream_gone(ud, s);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    mg_h2s_t *s = stream_of(ng, f->hd.stream_id);
    if (s)
        s->eof_sent = 1;
    return 0;
}

static int on_error(nghttp2_session *ng, int code, const char *msg, size_t len, void *ud)
{
    (void)ng;
    mg_h2c_t *c = ud;
    mg_log_debug("HTTP/2 %s: %.*s (%d)", c->remote, (int)len, msg, code);
    return 0;
}

/* --- I/O -------------------------------------------------------------------- */

static void start_linger(mg_h2c_t *c);

/* nghttp2 gave up on the session (a fatal error from mem_recv/mem_send):
 * GOAWAY by hand, since the session can no longer make one, then close. */
static void fatal(mg_h2c_t *c, int rv)
{
    uint32_t code = (c->calm || rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_CALLBACK_FAILURE ||
                     rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS || rv == NGHTTP2_ERR_TOO_MANY_SETTINGS)
                        ? NGHTTP2_ENHANCE_YOUR_CALM
                    : rv == NGHTTP2_ERR_NOMEM ? NGHTTP2_INTERNAL_ERROR
                                              : NGHTTP2_PROTOCOL_ERROR;
    if (code == NGHTTP2_ENHANCE_YOUR_CALM)
        mg_log_warn("closing HTTP/2 connection from %s: %s", c->remote,
                    rv == NGHTTP2_ERR_CALLBACK_FAILURE ? "header block too large (HPACK bomb)"
                                                        : nghttp2_strerror(rv));
    else
        mg_log_info("closing HTTP/2 connection from %s: %s", c->remote, nghttp2_strerror(rv));
    int32_t last = nghttp2_session_get_last_proc_stream_id(c->ng);
    uint8_t g[17] = { 0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0,
                      (uint8_t)(last >> 24 & 0x7f), (uint8_t)(last >> 16), (uint8_t)(last >> 8),
                      (uint8_t)last, (uint8_t)(code >> 24), (uint8_t)(code >> 16),
                      (uint8_t)(code >> 8), (uint8_t)code };
    mg_buf_append(&c->wbuf, g, sizeof g);
    c->stopping = 1;
    start_linger(c);
}

/* Writes wbuf as far as the socket takes it. 0, or -1 when closed. */
static int write_out(mg_h2c_t *c)
{
    while (c->wbuf.len > 0) {
        ssize_t n = mg_sock_send(&c->sock, mg_buf_data(&c->wbuf), c->wbuf.len);
        if (n > 0) {
            mg_buf_consume(&c->wbuf, (size_t)n);
            c->last_write = ev_now(c->loop->ev);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        h2c_close(c);
        return -1;
    }
    int want_w = c->wbuf.len > 0 && !c->sock.wr_wr;
    if (c->sock.rd_ww)
        want_w = 1;
    if (want_w && !c->wio_on) {
        ev_io_start(c->loop->ev, &c->wio);
        c->wio_on = 1;
    } else if (!want_w && c->wio_on) {
        ev_io_stop(c->loop->ev, &c->wio);
        c->wio_on = 0;
    }
    if (c->wbuf.len == 0 && c->wbuf.cap > 4 * WBUF_HIGH)
        mg_buf_free(&c->wbuf);
    return 0;
}

/* The first SETTINGS frame (at wbuf[at..at+n)) advertises h2_max_streams
 * where nghttp2 was given "unlimited" (the file comment says why). */
static void patch_settings(mg_h2c_t *c, size_t at, size_t n)
{
    c->settings_patch = 0;
    uint8_t *p = (uint8_t *)mg_buf_data(&c->wbuf) + at;
    if (n < 9 || p[3] != NGHTTP2_SETTINGS || (p[4] & NGHTTP2_FLAG_ACK))
        return;
    size_t len = (size_t)p[0] << 16 | (size_t)p[1] << 8 | p[2];
    for (size_t i = 9; i + 6 <= 9 + len && i + 6 <= n; i += 6) {
        if ((p[i] << 8 | p[i + 1]) == NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) {
            uint32_t v = (uint32_t)c->max_streams;
            p[i + 2] = (uint8_t)(v >> 24);
            p[i + 3] = (uint8_t)(v >> 16);
            p[i + 4] = (uint8_t)(v >> 8);
            p[i + 5] = (uint8_t)v;
        }
    }
}

/* While stopping: a stream whose request is done and whose response is
 * all sent only waits for the client's unread body: reset it (NO_ERROR),
 * so it keeps neither the connection nor the worker up. 1 if any was. */
static int reset_finished(mg_h2c_t *c)
{
    int any = 0;
    for (mg_h2s_t *s = c->streams; s; s = s->next) {
        if (s->req == NULL && s->eof_sent && !s->end_stream && !s->closed && s->reset_after) {
            s->reset_after = 0;
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
            any = 1;
        }
    }
    return any;
}

/* Hands nghttp2 what the streams queued, pulls frames, writes them. */
static void h2c_send(mg_h2c_t *c)
{
    if (c->closed || c->in_ng)
        return;
    c->kicked = 0;
    if (c->lingering) {
        write_out(c);
        return;
    }
    if (c->stopping)
        reset_finished(c);
    while (c->pending) {
        mg_h2s_t *s = c->pending;
        c->pending = s->pend;
        s->in_pend = 0;
        mg_h2s_submit(s);
    }
    /* pull frames while the socket takes them */
    for (;;) {
        int more;
        c->in_ng = 1;
        while (c->wbuf.len < WBUF_HIGH) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(c->ng, &data);
            if (n < 0) {
                c->in_ng = 0;
                fatal(c, (int)n);
                return;
            }
            if (n == 0)
                break;
            size_t at = c->wbuf.len;
            if (mg_buf_append(&c->wbuf, data, (size_t)n) != MG_OK) {
                c->in_ng = 0;
                mg_log_error("out of memory on an HTTP/2 connection; closing it");
                h2c_close(c);
                return;
            }
            if (c->settings_patch)
                patch_settings(c, at, (size_t)n);
        }
        c->in_ng = 0;
        more = c->wbuf.len >= WBUF_HIGH; /* stopped short: pull again once written */
        if (write_out(c) != 0)
            return;
        if (!more || c->wbuf.len > 0)
            break;
    }
    /* producers whose stream queue went below its low mark go on */
    for (mg_h2s_t *s = c->streams; s; s = s->next) {
        if (!s->drained)
            continue;
        s->drained = 0;
        if (s->req && s->req->on_drained)
            s->req->on_drained(s->req);
        if (c->closed)
            return;
    }
    if (c->stopping && reset_finished(c)) /* a response ended in this send */
        mg_h2c_kick(c);
    int done = !nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng);
    if (c->wbuf.len == 0 && (done || (c->stopping && c->streams == NULL)))
        start_linger(c);
}

void mg_h2c_kick(mg_h2c_t *c)
{
    if (c->kicked || c->closed)
        return;
    c->kicked = 1;
    /* its own watcher: stopping wio would drop the event */
    ev_feed_event(c->loop->ev, &c->kick, EV_IDLE);
}

void mg_h2c_pend(mg_h2s_t *s)
{
    mg_h2c_t *c = s->c;
    if (!s->in_pend && !s->closed) {
        s->in_pend = 1;
        s->pend = c->pending;
        c->pending = s;
    }
    mg_h2c_kick(c);
}

/* Feeds p[0..n) to the session, then sends what it produced. */
static void feed(mg_h2c_t *c, const char *p, size_t n)
{
    c->last_read = ev_now(c->loop->ev);
    c->in_ng = 1;
    ssize_t rv = nghttp2_session_mem_recv(c->ng, (const uint8_t *)p, n);
    c->in_ng = 0;
    if (c->closed)
        return;
    if (rv < 0) {
        fatal(c, (int)rv);
        return;
    }
    h2c_send(c);
}

static void linger_read(mg_h2c_t *c)
{
    if (mg_sock_discard(c->sock.fd, c->loop->scratch, c->loop->scratch_cap) != 0)
        h2c_close(c);
}

static void read_some(mg_h2c_t *c)
{
    ssize_t n = mg_sock_recv(&c->sock, c->loop->scratch, c->loop->scratch_cap);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            if (c->sock.rd_ww && !c->wio_on) { /* the TLS read waits for writability */
                ev_io_start(c->loop->ev, &c->wio);
                c->wio_on = 1;
            }
            return;
        }
        h2c_close(c);
        return;
    }
    if (n == 0) { /* the client went: what is in flight is aborted */
        h2c_close(c);
        return;
    }
    feed(c, c->loop->scratch, (size_t)n);
}

static void read_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_h2c_t *c = w->data;
    if (c->lingering && c->wbuf.len == 0) {
        linger_read(c);
        return;
    }
    if (c->sock.wr_wr) { /* a TLS write waited for this */
        c->sock.wr_wr = 0;
        if (write_out(c) != 0)
            return;
    }
    if (c->lingering) {
        linger_read(c);
        return;
    }
    read_some(c);
    if (!c->closed && c->sock.tls && mg_tls_pending(c->sock.tls))
        ev_feed_event(c->loop->ev, &c->rio, EV_READ);
}

static void kick_cb(struct ev_loop *ev, ev_idle *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_h2c_t *c = w->data;
    h2c_send(c);
    if (!c->closed && c->lingering && c->wbuf.len == 0)
        start_linger(c);
}

static void write_cb(struct ev_loop *ev, ev_io *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_h2c_t *c = w->data;
    if (c->sock.rd_ww) { /* a TLS read waited for this */
        c->sock.rd_ww = 0;
        read_some(c);
        if (c->closed)
            return;
    }
    h2c_send(c);
    if (!c->closed && c->lingering && c->wbuf.len == 0)
        start_linger(c);
}

/* --- closing ---------------------------------------------------------------- */

/* The session is over: once wbuf is out, half-close and drain what the
 * client still sends for a moment, so our last frames (a GOAWAY) are not
 * destroyed by a reset; then close. */
static void start_linger(mg_h2c_t *c)
{
    if (c->closed)
        return;
    c->stopping = 1;
    if (!c->lingering) {
        /* no more frames: streams still in flight are cut off now */
        while (c->streams) {
            nghttp2_session_set_stream_user_data(c->ng, c->streams->id, NULL);
            stream_gone(c, c->streams);
        }
    }
    c->lingering = 1;
    if (write_out(c) != 0 || c->wbuf.len > 0)
        return; /* the write watcher comes back here */
    if (c->shut)
        return;
    c->shut = 1;
    if (c->sock.tls)
        mg_tls_shutdown(c->sock.tls);
    shutdown(c->sock.fd, SHUT_WR);
    ev_timer_stop(c->loop->ev, &c->timer);
    ev_timer_set(&c->timer, LINGER_SECONDS, 0.);
    ev_timer_start(c->loop->ev, &c->timer);
    if (!c->rio_on) {
        ev_io_start(c->loop->ev, &c->rio);
        c->rio_on = 1;
    }
}

static void h2c_close(mg_h2c_t *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    mg_loop_t *loop = c->loop;
    while (c->streams) {
        mg_h2s_t *s = c->streams;
        if (c->ng)
            nghttp2_session_set_stream_user_data(c->ng, s->id, NULL);
        stream_gone(c, s);
    }
    ev_io_stop(loop->ev, &c->rio);
    ev_io_stop(loop->ev, &c->wio);
    ev_idle_stop(loop->ev, &c->kick); /* drops a queued kick */
    ev_timer_stop(loop->ev, &c->timer);
    if (c->sock.fd >= 0)
        close(c->sock.fd);
    c->sock.fd = -1;
    mg_tls_free(c->sock.tls);
    c->sock.tls = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        loop->h2conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    loop->stats.conns--;
    mg_loop_defer(loop, conn_free, c);
    mg_loop_check_drained(loop);
}

static void conn_free(void *p)
{
    mg_h2c_t *c = p;
    nghttp2_session_del(c->ng);
    mg_buf_free(&c->wbuf);
    free(c);
}

/* GOAWAY with the last stream we took: those finish, then the connection
 * closes. */
static void goaway(mg_h2c_t *c)
{
    if (c->closed || c->stopping)
        return;
    c->stopping = 1;
    nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    mg_h2c_kick(c);
}

/* --- timeouts --------------------------------------------------------------- */

/* One timer checks the deadlines: every `period` while streams are open,
 * once at the deadline while the connection is idle (10,000 idle
 * connections cost no wake-ups). A connection with no stream closes after
 * header_timeout (before its first request) or idle_timeout; a header
 * block not finished header_timeout after it began (however slowly its
 * bytes trickle in), or a client that reads nothing of ours or sends none
 * of a body we wait for in idle_timeout, ends the connection. */
static void timer_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)revents;
    mg_h2c_t *c = w->data;
    if (c->lingering) {
        if (c->shut) {
            h2c_close(c);
            return;
        }
        if (ev_now(ev) - c->last_write >= limits(c)->idle_timeout) {
            h2c_close(c); /* a goodbye the client never reads */
            return;
        }
        return;
    }
    double now = ev_now(ev);
    const mg_limits_t *lim = limits(c);
    if (c->streams == NULL) {
        double t = c->served ? lim->idle_timeout : lim->header_timeout;
        double left = c->last_busy + t - now;
        if (left <= 1e-3) {
            if (!c->served)
                mg_log_info("closing %s: no HTTP/2 request in time", c->remote);
            goaway(c);
            return;
        }
        /* idle: wake at the deadline, not every period (on_begin_headers
         * brings the period back) */
        w->repeat = left;
        ev_timer_again(ev, w);
        return;
    }
    int want_body = 0, want_out = c->wbuf.len > 0;
    for (mg_h2s_t *s = c->streams; s; s = s->next) {
        if (!s->headers_done && now - s->t0 >= lim->header_timeout) {
            mg_log_info("closing %s: HTTP/2 request header timeout", c->remote);
            h2c_close(c);
            return;
        }
        if (s->req && !s->req->done && !s->req->body_done && !s->src.paused)
            want_body = 1;
        if (s->out.len)
            want_out = 1;
        if (s->reset_after && s->eof_sent && now - c->last_read >= lim->idle_timeout) {
            s->reset_after = 0; /* an unread body that stopped coming */
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
            mg_h2c_kick(c);
        }
    }
    if ((want_out && now - c->last_write >= lim->idle_timeout) ||
        (want_body && now - c->last_read >= lim->idle_timeout)) {
        mg_log_info("closing %s: HTTP/2 client idle for %.1fs", c->remote, lim->idle_timeout);
        h2c_close(c);
    }
}

static double timer_period(const mg_limits_t *lim)
{
    double t = lim->header_timeout < lim->idle_timeout ? lim->header_timeout : lim->idle_timeout;
    t /= 4;
    return t > 1.0 ? 1.0 : t < 0.01 ? 0.01 : t;
}

/* --- accept and stop ----------------------------------------------------------- */

void mg_h2_accept(mg_loop_t *loop, mg_sock_t *sock, const char *remote, int flags,
                  const char *in, size_t n)
{
    mg_h2c_t *c = calloc(1, sizeof *c);
    nghttp2_session_callbacks *cb = NULL;
    nghttp2_option *opt = NULL;
    if (c == NULL || nghttp2_session_callbacks_new(&cb) != 0 || nghttp2_option_new(&opt) != 0)
        goto fail;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_error_callback2(cb, on_error);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_settings(opt, 16);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    if (nghttp2_session_server_new2(&c->ng, cb, c, opt) != 0)
        goto fail;
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    cb = NULL;
    opt = NULL;
    const mg_limits_t *lim = &loop->gen->cfg->limits;
    c->max_streams = lim->h2_max_streams;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0xffffffffu }, /* patched: h2_max_streams */
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW },
    };
    if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, MG_ARRAY_LEN(iv)) != 0 ||
        nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0)
        goto fail;
    c->settings_patch = 1;
    c->loop = loop;
    c->sock = *sock;
    c->https = (flags & MG_H2_F_HTTPS) ? 1 : 0;
    c->admin = (flags & MG_H2_F_ADMIN) ? 1 : 0;
    snprintf(c->remote, sizeof c->remote, "%s", remote);
    double now = ev_now(loop->ev);
    c->last_read = c->last_write = c->last_busy = c->tokens_at = now;
    c->rst_tokens = RST_BURST;
    c->ctl_tokens = CTL_BURST;
    ev_io_init(&c->rio, read_cb, c->sock.fd, EV_READ);
    c->rio.data = c;
    ev_io_init(&c->wio, write_cb, c->sock.fd, EV_WRITE);
    c->wio.data = c;
    ev_idle_init(&c->kick, kick_cb);
    c->kick.data = c;
    ev_init(&c->timer, timer_cb);
    c->timer.data = c;
    c->period = timer_period(lim);
    c->timer.repeat = c->period;
    ev_timer_again(loop->ev, &c->timer);
    c->next = loop->h2conns;
    if (loop->h2conns)
        loop->h2conns->prev = c;
    loop->h2conns = c;
    loop->stats.conns++;
    ev_io_start(loop->ev, &c->rio);
    c->rio_on = 1;
    feed(c, in, n);
    if (!c->closed && loop->stopping)
        goaway(c); /* came in while the worker drains: its first streams finish */
    if (!c->closed && c->sock.tls && mg_tls_pending(c->sock.tls))
        ev_feed_event(loop->ev, &c->rio, EV_READ);
    return;
fail:
    mg_log_error("out of memory starting an HTTP/2 connection");
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    if (c)
        nghttp2_session_del(c->ng);
    free(c);
    if (sock->fd >= 0)
        close(sock->fd);
    mg_tls_free(sock->tls);
}

void mg_h2_stop_all(mg_loop_t *loop)
{
    for (mg_h2c_t *c = loop->h2conns; c; c = c->next)
        goaway(c);
}

void mg_h2_close_idle_all(mg_loop_t *loop)
{
    for (mg_h2c_t *c = loop->h2conns; c; c = c->next) {
        if (c->streams == NULL) {
            goaway(c);
            mg_h2c_kick(c); /* closes once the GOAWAY is out */
        } else if (c->stopping && reset_finished(c)) {
            mg_h2c_kick(c); /* the streams close as the resets go out */
        }
    }
}

void mg_h2_close_all(mg_loop_t *loop)
{
    while (loop->h2conns)
        h2c_close(loop->h2conns);
}
