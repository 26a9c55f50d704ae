/* One outgoing HTTP/1.1 exchange on a pooled connection (h1client.h).
 *
 * Ownership: while attached, x->u is the connection and u->owner is x
 * (that is how the connection's events find the exchange). Whoever ends an
 * attachment (response complete, failure, timeout, cancel, switch) clears
 * both links first, then releases, closes or hands over the connection, and
 * calls the owner's callback last: it may free the owner or start another
 * exchange, so nothing touches x afterwards. */
#include "h1client.h"
#include "log.h"
#include "loop.h"
#include "upstream.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static void x_on_read(mg_upconn_t *u);
static void x_on_write(mg_upconn_t *u);
static void x_on_timer(mg_upconn_t *u);
static const mg_upconn_ops_t x_ops = { x_on_read, x_on_write, x_on_timer };

const char *mg_h1c_strerror(mg_h1c_err_t code)
{
    switch (code) {
    case MG_H1C_TIMEOUT:
        return "timeout";
    case MG_H1C_REFUSED:
        return "connection refused";
    case MG_H1C_UNREACHABLE:
        return "network unreachable";
    case MG_H1C_CONNECT:
        return "connect failed";
    case MG_H1C_TLS:
        return "tls handshake failed";
    case MG_H1C_RESET:
        return "connection reset";
    case MG_H1C_CLOSED:
        return "connection closed";
    case MG_H1C_WRITE:
        return "write failed";
    case MG_H1C_TOO_LARGE:
        return "response too large";
    case MG_H1C_NOMEM:
        return "out of memory";
    default:
        return "invalid response";
    }
}

mg_h1c_err_t mg_h1c_errno(int e)
{
    switch (e) {
    case ECONNREFUSED:
        return MG_H1C_REFUSED;
    case ECONNRESET:
    case EPIPE:
        return MG_H1C_RESET;
    case ETIMEDOUT:
        return MG_H1C_TIMEOUT;
    case ENETUNREACH:
    case EHOSTUNREACH:
        return MG_H1C_UNREACHABLE;
    case ENOMEM:
        return MG_H1C_NOMEM;
    default:
        return MG_H1C_CONNECT;
    }
}

/* --- parser callbacks ------------------------------------------------------ */

static mg_h1_head_t *p_on_begin(void *ud)
{
    mg_h1c_t *x = ud;
    x->head = x->cb->head_store ? x->cb->head_store(x->ud) : &x->u->head;
    return x->head;
}

static int p_on_head(void *ud, mg_h1_head_t *h)
{
    mg_h1c_t *x = ud;
    if (h->status >= 100 && h->status < 200 && h->status != 101) {
        /* Interim responses are dropped, the final one follows. Every byte
         * re-arms the read timeout, so an upstream sending 100s forever
         * would hold the exchange forever: bound them. */
        x->final = 0;
        if (++x->interim > MG_H1C_MAX_INTERIM) {
            mg_h1c_reason(x, MG_H1C_INVALID, "too many interim responses");
            return -1;
        }
        return 0;
    }
    x->final = 1;
    return x->cb->on_head(x->ud, h);
}

static int p_on_body(void *ud, const char *p, size_t n)
{
    mg_h1c_t *x = ud;
    if (!x->final)
        return 0;
    return x->cb->on_body(x->ud, p, n);
}

static int p_on_done(void *ud)
{
    mg_h1c_t *x = ud;
    if (!x->final)
        return 1; /* an interim response ended: parse the final one */
    if (x->cb->on_end && x->cb->on_end(x->ud) < 0)
        return -1;
    x->resp_done = 1;
    return 0;
}

static const mg_h1_cb_t parser_cbs = { p_on_begin, p_on_head, p_on_body, p_on_done, NULL };

/* --- ending an attachment -------------------------------------------------- */

static mg_upconn_t *unlink_conn(mg_h1c_t *x)
{
    mg_upconn_t *u = x->u;
    x->u = NULL;
    u->owner = NULL;
    return u;
}

/* The response is complete: the connection goes back to its pool if
 * nothing is left over on it either way. */
static void finish(mg_h1c_t *x, int leftover)
{
    mg_upconn_t *u = x->u;
    int reusable = !leftover && (x->head->flags & MG_H1_KEEPALIVE) && x->body_end &&
                   u->wbuf.len == 0 && !u->wbuf.failed && !u->closed;
    unlink_conn(x);
    if (reusable)
        mg_up_release(u);
    else
        mg_up_conn_close(u);
    x->cb->on_done(x->ud);
}

static int replay(mg_h1c_t *x);

/* How many of msg's bytes may have been written for the request to still
 * go again unchanged (h1client.h's replay rule). */
static size_t replay_limit(mg_h1c_t *x)
{
    if (x->idempotent)
        return x->msg->len;
    if (x->head_len == MG_H1C_FIND_HEAD) {
        const char *p = mg_buf_data(x->msg);
        const char *e = x->msg->len ? memmem(p, x->msg->len, "\r\n\r\n", 4) : NULL;
        x->head_len = e ? (size_t)(e + 4 - p) : x->msg->len;
    }
    return x->head_len;
}

/* Fails the attachment. `io`: a socket read or write failed (or the server
 * closed), the one kind of failure a replay answers. */
static void fail(mg_h1c_t *x, mg_h1c_err_t code, const char *why, int io)
{
    mg_upconn_t *u = x->u;
    mg_h1c_error_t e = { code, why, u->connecting };
    /* a stale pooled connection: nothing of the response arrived, and the
     * request can go again unchanged (every written byte is still in msg;
     * with a non-idempotent request, no body byte was written) */
    if (io && u->reused && !x->got_any && !x->replayed && !u->connecting &&
        x->wrote <= replay_limit(x) && replay(x) == MG_OK)
        return;
    unlink_conn(x);
    if (e.connecting || x->wrote == 0) {
        /* nothing was sent: the bytes stay for a retry elsewhere */
        mg_buf_free(&x->carry);
        x->carry = u->wbuf;
        u->wbuf = (mg_buf_t){ 0 };
    }
    mg_up_conn_close(u);
    x->cb->on_error(x->ud, &e);
}

/* Sends the request again on a fresh connection to the same server. The
 * queue always starts with the whole message (a replay or retry puts it
 * back in front), so it is msg's written prefix plus what was unsent. */
static int replay(mg_h1c_t *x)
{
    mg_upconn_t *u = x->u;
    mg_up_server_t *sv = u->server;
    mg_up_t *up = sv->up;
    mg_buf_free(&x->carry);
    mg_buf_append(&x->carry, mg_buf_data(x->msg), x->wrote);
    mg_buf_append(&x->carry, mg_buf_data(&u->wbuf), u->wbuf.len);
    if (x->carry.failed) {
        mg_buf_free(&x->carry);
        return MG_ENOMEM;
    }
    unlink_conn(x);
    mg_up_conn_close(u);
    while (sv->idle) /* as old as the one that failed, or older */
        mg_up_conn_close(sv->idle);
    x->replayed = 1;
    mg_log_debug("upstream %s: kept connection was closed; sending the request again",
                 sv->addr->text);
    const char *err = NULL;
    if (mg_h1c_attach(x, up, (int)(sv - up->servers), &err) != MG_OK) {
        mg_h1c_error_t e = { MG_H1C_CONNECT, err ? err : "connect failed", 1 };
        x->cb->on_error(x->ud, &e);
    }
    return MG_OK;
}

/* --- I/O ------------------------------------------------------------------- */

/* Writes what the socket takes. MG_OK, or -1 when the exchange failed. */
static int flush(mg_h1c_t *x)
{
    mg_upconn_t *u = x->u;
    while (u->wbuf.len > 0) {
        ssize_t n = mg_up_send(u, mg_buf_data(&u->wbuf), u->wbuf.len);
        if (n > 0) {
            mg_buf_consume(&u->wbuf, (size_t)n);
            x->wrote += (size_t)n;
            u->last_io = ev_now(u->loop->ev);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n < 0)
            fail(x, mg_h1c_errno(errno), strerror(errno), 1);
        else
            fail(x, MG_H1C_WRITE, "write failed", 1);
        return -1;
    }
    mg_up_want_write(u, u->wbuf.len > 0);
    if (x->cb->on_sendable && u->wbuf.len < MG_H1C_WBUF_LOW)
        x->cb->on_sendable(x->ud, 1);
    return MG_OK;
}

/* Connected (or a pooled connection): the read timeout runs from now. */
static void ready(mg_h1c_t *x)
{
    mg_upconn_t *u = x->u;
    mg_up_server_ok(u->server);
    u->last_io = ev_now(u->loop->ev);
    if (x->read_timeout > 0)
        mg_up_arm_timer(u, x->read_timeout);
    else
        ev_timer_stop(u->loop->ev, &u->timer); /* the pool's idle timer */
    if (!u->rio_on && !u->read_paused)
        mg_up_pause_read(u, 0);
}

static void x_on_write(mg_upconn_t *u)
{
    mg_h1c_t *x = u->owner;
    if (u->connecting) {
        /* the TCP connect, then for TLS the handshake (its read events come
         * here too): both are "connecting" */
        char err[256]; /* on_error runs before this returns */
        int sys_errno;
        int rc = mg_up_connect_step(u, err, sizeof err, &sys_errno);
        if (rc == MG_EAGAIN)
            return;
        if (rc != MG_OK) {
            fail(x, sys_errno ? mg_h1c_errno(sys_errno) : MG_H1C_TLS, err, 0);
            return;
        }
        mg_log_debug("upstream %s: connection ready, sending the request", u->server->addr->text);
        ready(x);
    }
    flush(x);
}

static void x_on_read(mg_upconn_t *u)
{
    mg_h1c_t *x = u->owner;
    mg_loop_t *loop = u->loop;
    ssize_t n = mg_up_recv(u, loop->scratch, loop->scratch_cap);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        fail(x, mg_h1c_errno(errno), strerror(errno), 1);
        return;
    }
    u->last_io = ev_now(loop->ev);
    if (n == 0) {
        if (x->got_any && mg_h1_eof(&u->h1) == 0 && x->resp_done) {
            u->closed_by_peer = 1;
            finish(x, 1); /* a close-delimited body */
            return;
        }
        if (x->got_any)
            fail(x, MG_H1C_CLOSED, "upstream closed mid-response", 1);
        else
            fail(x, MG_H1C_CLOSED, "upstream closed the connection", 1);
        return;
    }
    x->got_any = 1;
    ssize_t k = mg_h1_feed(&u->h1, loop->scratch, (size_t)n);
    if (k < 0) {
        const char *why = x->why ? x->why : u->h1.err_reason ? u->h1.err_reason : "invalid response";
        fail(x, x->code ? x->code : MG_H1C_INVALID, why, 0);
        return;
    }
    if (x->resp_done) {
        if (x->head->status == 101) {
            x->cb->on_switch(x->ud, loop->scratch + k, (size_t)(n - k));
            return;
        }
        finish(x, k < n);
        return;
    }
    if (x->cb->on_read)
        x->cb->on_read(x->ud);
}

static void x_on_timer(mg_upconn_t *u)
{
    mg_h1c_t *x = u->owner;
    if (u->connecting) {
        fail(x, MG_H1C_TIMEOUT, u->handshaking ? "tls handshake timed out" : "connect timed out",
             0);
        return;
    }
    double rt = x->read_timeout;
    if (rt <= 0) {
        ev_timer_stop(u->loop->ev, &u->timer);
        return;
    }
    double left = u->last_io + rt - ev_now(u->loop->ev);
    /* Not the upstream's fault: the request is still being sent (its body
     * streams in), or the consumer is slow to take the response (its own
     * timeout covers that). */
    if (left > 1e-3 || u->read_paused || !x->body_end) {
        mg_up_arm_timer(u, left > 1e-3 ? left : rt);
        return;
    }
    fail(x, MG_H1C_TIMEOUT, "upstream timed out", 0);
}

/* --- API ------------------------------------------------------------------- */

int mg_h1c_attach(mg_h1c_t *x, mg_up_t *up, int s, const char **err)
{
    mg_upconn_t *u = mg_up_get(up, s, x, &x_ops, err);
    if (u == NULL) {
        x->code = mg_h1c_errno(errno);
        return x->code == MG_H1C_NOMEM ? MG_ENOMEM : MG_ECLOSED;
    }
    x->u = u;
    x->server = u->server;
    x->wrote = 0;
    x->got_any = x->final = x->resp_done = 0;
    x->interim = 0;
    x->why = NULL;
    x->code = 0;
    x->head = NULL;
    mg_h1_init(&u->h1, HTTP_RESPONSE, &parser_cbs, x, 0, MG_H1C_MAX_HEAD);
    if (x->carry.len) {
        mg_buf_free(&u->wbuf);
        u->wbuf = x->carry;
        x->carry = (mg_buf_t){ 0 };
    } else if (mg_buf_append(&u->wbuf, mg_buf_data(x->msg), x->msg->len) != MG_OK) {
        mg_up_conn_close(unlink_conn(x));
        *err = "out of memory";
        x->code = MG_H1C_NOMEM;
        return MG_ENOMEM;
    }
    if (u->connecting) {
        if (x->connect_timeout > 0)
            mg_up_arm_timer(u, x->connect_timeout);
        return MG_OK;
    }
    ready(x);
    /* A pooled connection is usually writable: send now and skip two
     * epoll_ctl calls. Anything but full success (a short write, an error)
     * is left to the write watcher, so no callback runs from here. */
    ssize_t n = mg_up_send(u, mg_buf_data(&u->wbuf), u->wbuf.len);
    if (n > 0) {
        mg_buf_consume(&u->wbuf, (size_t)n);
        x->wrote += (size_t)n;
    }
    if (u->wbuf.len)
        mg_up_want_write(u, 1);
    return MG_OK;
}

int mg_h1c_send(mg_h1c_t *x, const char *p, size_t n)
{
    mg_upconn_t *u = x->u;
    mg_buf_t *w = &u->wbuf;
    if (x->chunked)
        mg_h1_put_chunk(w, p, n);
    else
        mg_buf_append(w, p, n);
    if (w->failed) { /* a piece is missing: the request cannot go on */
        fail(x, MG_H1C_NOMEM, "out of memory queueing the request body", 0);
        return -1;
    }
    if (w->len > MG_H1C_WBUF_HIGH && x->cb->on_sendable)
        x->cb->on_sendable(x->ud, 0);
    if (u->connecting)
        return MG_OK;
    return flush(x);
}

int mg_h1c_end(mg_h1c_t *x)
{
    mg_upconn_t *u = x->u;
    x->body_end = 1;
    if (x->chunked && mg_buf_append(&u->wbuf, "0\r\n\r\n", 5) != MG_OK) {
        fail(x, MG_H1C_NOMEM, "out of memory queueing the request body", 0);
        return -1;
    }
    if (u->connecting)
        return MG_OK;
    return flush(x);
}

void mg_h1c_pause_read(mg_h1c_t *x, int pause)
{
    mg_upconn_t *u = x->u;
    if (u && !pause != !u->read_paused)
        mg_up_pause_read(u, pause);
}

void mg_h1c_cancel(mg_h1c_t *x)
{
    if (x->carry.base)
        mg_buf_free(&x->carry);
    if (x->u)
        mg_up_conn_close(unlink_conn(x));
}

void mg_h1c_detach(mg_h1c_t *x, int *fd, struct ssl_st **ssl, mg_buf_t *out)
{
    mg_up_detach(unlink_conn(x), fd, ssl, out);
}
