/* Exchanges on shared HTTP/2 upstream connections (h2client.h), on
 * libnghttp2.
 *
 * A connection (mg_h2uconn) owns one upstream.c connection (its socket,
 * watchers and timer: connect, then idle) and one nghttp2 client session.
 * Bytes go through the session's memory interface: what it produces is
 * queued in u->wbuf and written as the socket takes it; what the socket
 * gives is fed to it. nghttp2 calls back from inside mem_recv; those
 * callbacks never tear the connection down, never write, and never submit
 * on their own session: what must happen afterwards is done by after_io()
 * once mem_recv returned.
 *
 * Ownership: an attached exchange is on its connection's list (x->c) and,
 * once submitted, the session's stream user data. Whoever ends an
 * attachment unlinks it from both first, then calls the owner back last. */
#include "h2client.h"
#include "dns.h"
#include "log.h"
#include "loop.h"
#include "tls_client.h"
#include "upstream.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define H2_STREAM_WINDOW (256 * 1024)  /* per stream: the response bytes held while paused */
#define H2_CONN_WINDOW (16 << 20)      /* per connection: given back as bytes arrive */
#define H2_OUT_CHUNK (64 * 1024)       /* frames queued per write */
#define H2_MAX_FIELDS 256              /* response header fields (each of head, trailers) */

typedef struct mg_h2uconn {
    mg_upconn_t *u;
    nghttp2_session *s;
    mg_up_server_t *sv;
    struct mg_h2uconn *next;   /* the server's connections */
    mg_h2u_t *streams;         /* attached exchanges: waiting (sid 0) or open */
    int nstreams;
    unsigned opened;           /* streams submitted on it so far */
    unsigned ready : 1;        /* connected, and the server's SETTINGS arrived */
    unsigned got_settings : 1; /* (set in the callback, acted on in after_io) */
    unsigned draining : 1;     /* GOAWAY (or a changed DNS answer): no new streams */
    unsigned closed : 1;
    unsigned in_io : 1;        /* inside nghttp2 (mem_recv): no writes, no teardown */
    char why[160];             /* nghttp2's last error message (for the logs) */
} mg_h2uconn_t;

static void c_on_read(mg_upconn_t *u);
static void c_on_write(mg_upconn_t *u);
static void c_on_timer(mg_upconn_t *u);
static const mg_upconn_ops_t c_ops = { c_on_read, c_on_write, c_on_timer };

static void c_flush(mg_h2uconn_t *c);
static void c_fail(mg_h2uconn_t *c, mg_h1c_err_t code, const char *why);
static void x_rt_cb(struct ev_loop *ev, ev_timer *w, int revents);
static void x_wake_cb(struct ev_loop *ev, ev_timer *w, int revents);

/* --- the exchange's list on its connection -------------------------------- */

static void link_x(mg_h2uconn_t *c, mg_h2u_t *x)
{
    x->c = c;
    x->prev = NULL;
    x->next = c->streams;
    if (c->streams)
        c->streams->prev = x;
    c->streams = x;
    c->nstreams++;
    c->sv->active++; /* least_conn counts requests in flight: streams here */
    if (c->ready) /* the idle timer; before, it is the connect timer */
        ev_timer_stop(c->u->loop->ev, &c->u->timer);
}

/* Takes x off its connection (and its stream off the session: a stream
 * still open is reset). The connection goes idle when it was the last. */
static void unlink_x(mg_h2u_t *x, int rst)
{
    mg_h2uconn_t *c = x->c;
    if (c == NULL)
        return;
    if (x->sid > 0 && c->s) {
        nghttp2_session_set_stream_user_data(c->s, x->sid, NULL);
        if (rst)
            nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, x->sid, NGHTTP2_CANCEL);
    }
    if (x->prev)
        x->prev->next = x->next;
    else
        c->streams = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
    x->c = NULL;
    c->nstreams--;
    c->sv->active--;
    ev_timer_stop(x->loop->ev, &x->rt);
    if (c->nstreams == 0 && !c->closed && c->ready)
        mg_up_arm_timer(c->u, c->sv->up->cfg->idle_timeout);
    if (!c->in_io && !c->closed)
        mg_up_want_write(c->u, 1); /* the reset, window updates */
}

/* Ends x with an error; the owner is called last. */
static void x_fail(mg_h2u_t *x, mg_h1c_err_t code, const char *why, int connecting)
{
    mg_h1c_error_t e = { code, why, connecting ? 1 : 0 };
    unlink_x(x, !x->got_end || !x->body_end);
    if (x->cb == NULL)
        return; /* freed by its owner (mg_h2u_free) */
    x->cb->on_error(x->ud, &e);
}

/* The response ended and every byte of it went up. */
static void x_complete(mg_h2u_t *x)
{
    if (x->cb->on_end && x->cb->on_end(x->ud) < 0) {
        x_fail(x, x->code ? x->code : MG_H1C_INVALID, x->why ? x->why : "invalid response", 0);
        return;
    }
    if (x->c == NULL)
        return; /* the owner ended it */
    x->resp_done = 1;
    /* the request may still be streaming up: the server is done with it */
    unlink_x(x, !x->body_end || x->body.len > 0);
    x->cb->on_done(x->ud);
}

/* Hands response body bytes up (or holds them while paused). 0, or -1
 * when x ended (failed). */
static int x_body(mg_h2u_t *x, const uint8_t *p, size_t n)
{
    if (x->paused || x->pending.len) {
        if (mg_buf_append(&x->pending, p, n) != MG_OK) {
            x_fail(x, MG_H1C_NOMEM, "out of memory", 0);
            return -1;
        }
        return 0;
    }
    if (!x->no_body && x->cb->on_body(x->ud, (const char *)p, n) < 0) {
        x_fail(x, x->code ? x->code : MG_H1C_INVALID, x->why ? x->why : "invalid response", 0);
        return -1;
    }
    if (x->c == NULL)
        return -1; /* the owner ended it */
    x->got_data = 1;
    if (x->sid > 0)
        nghttp2_session_consume_stream(x->c->s, x->sid, n);
    return 0;
}

/* --- the request head as an HTTP/2 header list ---------------------------- */

static int skip_field(const char *n, size_t nn)
{
    static const char *const drop[] = { "connection", "keep-alive", "proxy-connection",
                                        "transfer-encoding", "upgrade", "te", "host", NULL };
    for (const char *const *d = drop; *d; d++)
        if (strlen(*d) == nn && strncasecmp(*d, n, nn) == 0)
            return 1;
    return 0;
}

static void nv_set(nghttp2_nv *v, const char *n, size_t nn, const char *val, size_t vn)
{
    v->name = (uint8_t *)n;
    v->namelen = nn;
    v->value = (uint8_t *)val;
    v->valuelen = vn;
    v->flags = NGHTTP2_NV_FLAG_NONE;
}

/* The header list of a head in HTTP/1.1 text (request line, fields, blank
 * line): *nva and *low (lower-cased names) are the caller's to free.
 * Returns the count, or -1 (no memory, or not a request head). */
static int request_nva(const mg_h2u_t *x, int tls, nghttp2_nv **nva, char **low)
{
    const char *p = mg_buf_data(x->msg), *end = p + x->msg->len;
    size_t lines = 0;
    for (const char *q = p; q < end; q++)
        lines += *q == '\n';
    *nva = malloc(sizeof **nva * (lines + 6));
    *low = malloc(x->msg->len + 1);
    if (*nva == NULL || *low == NULL)
        goto fail;
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    const char *sp1 = eol ? memchr(p, ' ', (size_t)(eol - p)) : NULL;
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (sp2 == NULL)
        goto fail;
    nghttp2_nv *v = *nva;
    int n = 0;
    nv_set(&v[n++], ":method", 7, p, (size_t)(sp1 - p));
    nv_set(&v[n++], ":scheme", 7, tls ? "https" : "http", tls ? 5 : 4);
    int auth = n++; /* :authority, filled below */
    nv_set(&v[auth], ":authority", 10, x->server->addr->text, strlen(x->server->addr->text));
    nv_set(&v[n++], ":path", 5, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    char *lo = *low;
    for (const char *l = eol + 2; l < end;) {
        const char *le = memchr(l, '\r', (size_t)(end - l));
        if (le == NULL || le == l)
            break;
        const char *colon = memchr(l, ':', (size_t)(le - l));
        if (colon == NULL || colon == l)
            goto fail;
        size_t nn = (size_t)(colon - l);
        const char *val = colon + 1;
        while (val < le && (*val == ' ' || *val == '\t'))
            val++;
        size_t vn = (size_t)(le - val);
        if (nn == 4 && strncasecmp(l, "host", 4) == 0) {
            nv_set(&v[auth], ":authority", 10, val, vn);
        } else if (!skip_field(l, nn)) {
            for (size_t i = 0; i < nn; i++)
                lo[i] = (char)((l[i] >= 'A' && l[i] <= 'Z') ? l[i] + 32 : l[i]);
            nv_set(&v[n++], lo, nn, val, vn);
            lo += nn;
        }
        l = le + 2;
    }
    if (x->te_trailers)
        nv_set(&v[n++], "te", 2, "trailers", 8);
    return n;
fail:
    free(*nva);
    free(*low);
    *nva = NULL;
    *low = NULL;
    return -1;
}

/* --- the request body (nghttp2 pulls it) ---------------------------------- */

/* The request's trailers as a trailing HEADERS frame (names lower-cased;
 * framing and hop-by-hop fields left out). 1 if submitted. */
static int submit_trailers(nghttp2_session *s, int32_t sid, const mg_h1_head_t *t)
{
    nghttp2_nv *nv = malloc(sizeof *nv * (size_t)t->nhdrs);
    char *low = malloc(t->store.len + 1);
    int k = 0, ok = 0;
    if (nv == NULL || low == NULL)
        goto out;
    char *lo = low;
    for (int i = 0; i < t->nhdrs; i++) {
        mg_str_t tn = mg_h1_name(t, i), tv = mg_h1_value(t, i);
        if (skip_field(tn.p, tn.n) || MG_STR_EQ_CI(tn, "content-length") ||
            MG_STR_EQ_CI(tn, "trailer"))
            continue;
        for (size_t j = 0; j < tn.n; j++)
            lo[j] = (char)((tn.p[j] >= 'A' && tn.p[j] <= 'Z') ? tn.p[j] + 32 : tn.p[j]);
        nv_set(&nv[k++], lo, tn.n, tv.p, tv.n);
        lo += tn.n;
    }
    ok = k > 0 && nghttp2_submit_trailer(s, sid, nv, (size_t)k) == 0;
out:
    free(nv);
    free(low);
    return ok;
}

static ssize_t body_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)src;
    (void)ud;
    mg_h2u_t *x = nghttp2_session_get_stream_user_data(s, sid);
    if (x == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* cancelled: reset */
    size_t n = x->body.len < length ? x->body.len : length;
    if (n) {
        memcpy(buf, mg_buf_data(&x->body), n);
        mg_buf_consume(&x->body, n);
        x->sent += n;
        x->last_io = ev_now(x->loop->ev); /* bytes written count as progress */
    }
    if (x->body.len == 0 && x->body_end) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (x->req_trailers && x->req_trailers->nhdrs && submit_trailers(s, sid, x->req_trailers))
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    } else if (n == 0) {
        x->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* Submits x's request on its (ready) connection. MG_OK or an error. */
static int submit(mg_h2u_t *x)
{
    mg_h2uconn_t *c = x->c;
    nghttp2_nv *nva;
    char *low;
    int n = request_nva(x, c->sv->up->tls != NULL, &nva, &low);
    if (n < 0)
        return MG_ENOMEM;
    nghttp2_data_provider dp = { .source.ptr = x, .read_callback = body_read };
    int has_body = !x->body_end || x->body.len > 0 ||
                   (x->req_trailers && x->req_trailers->nhdrs);
    int32_t sid = nghttp2_submit_request(c->s, NULL, nva, (size_t)n, has_body ? &dp : NULL, x);
    free(nva);
    free(low);
    if (sid < 0) {
        c->draining = 1; /* out of stream ids, most likely */
        return MG_ECLOSED;
    }
    x->sid = sid;
    /* not the connection's first: it may have died idle under this one */
    x->reused = c->opened++ > 0;
    x->last_io = ev_now(x->loop->ev);
    if (x->read_timeout > 0) {
        ev_timer_set(&x->rt, x->read_timeout, 0.);
        ev_timer_start(x->loop->ev, &x->rt);
    }
    return MG_OK;
}

/* --- nghttp2 callbacks (inside mem_recv) ---------------------------------- */

static int cb_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    mg_h2u_t *x = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (x == NULL || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (!x->final) {
        mg_h1_head_reset(&x->head);
        x->in_head = 1;
    } else {
        mg_h1_head_reset(&x->trailers);
        x->in_trailers = 1;
    }
    return 0;
}

static int cb_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t nn, const uint8_t *value, size_t vn, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    mg_h2u_t *x = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (x == NULL)
        return 0;
    mg_h1_head_t *h = x->in_trailers ? &x->trailers : &x->head;
    if (nn > 0 && name[0] == ':') {
        if (nn == 7 && memcmp(name, ":status", 7) == 0 && vn == 3 && !x->in_trailers)
            h->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
        return 0;
    }
    if (h->nhdrs >= H2_MAX_FIELDS || h->store.len + nn + vn > MG_H1C_MAX_HEAD) {
        mg_h2u_reason(x, MG_H1C_TOO_LARGE, "response head too large");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (mg_h1_head_add(h, (const char *)name, nn, (const char *)value, vn) != MG_OK) {
        mg_h2u_reason(x, MG_H1C_NOMEM, "out of memory");
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (!x->in_trailers && nn == 14 && memcmp(name, "content-length", 14) == 0) {
        uint64_t v = 0;
        for (size_t i = 0; i < vn && value[i] >= '0' && value[i] <= '9'; i++)
            v = v * 10 + (uint64_t)(value[i] - '0');
        h->flags |= MG_H1_HAS_CL;
        h->content_length = v;
    }
    return 0;
}

/* A complete head: interim ones are dropped, the final one goes up. 0, or
 * -1 when x ended. */
static int got_head(mg_h2u_t *x)
{
    mg_h1_head_t *h = &x->head;
    x->in_head = 0;
    x->last_io = ev_now(x->loop->ev);
    h->http_major = 2;
    h->http_minor = 0;
    h->flags |= MG_H1_KEEPALIVE | MG_H1_HEAD_READ;
    if (h->status >= 100 && h->status < 200) {
        if (++x->interim > MG_H1C_MAX_INTERIM) {
            x_fail(x, MG_H1C_INVALID, "too many interim responses", 0);
            return -1;
        }
        return 0;
    }
    if (h->status < 200 || h->status > 999) {
        x_fail(x, MG_H1C_INVALID, "invalid response status", 0);
        return -1;
    }
    x->final = 1;
    int rc = x->cb->on_head(x->ud, h);
    if (rc < 0) {
        x_fail(x, x->code ? x->code : MG_H1C_INVALID, x->why ? x->why : "invalid response", 0);
        return -1;
    }
    if (x->c == NULL)
        return -1; /* the owner ended it */
    x->no_body = rc == 1;
    x->got_data = 1;
    return 0;
}

/* END_STREAM: the response is complete once its held bytes went up. */
static void got_end(mg_h2u_t *x)
{
    x->got_end = 1;
    if (!x->final) {
        x_fail(x, MG_H1C_INVALID, "upstream ended the stream without a response", 0);
        return;
    }
    if (x->pending.len == 0)
        x_complete(x);
}

static int cb_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    mg_h2uconn_t *c = ud;
    if (f->hd.stream_id == 0) {
        if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK))
            c->got_settings = 1;
        else if (f->hd.type == NGHTTP2_GOAWAY)
            c->draining = 1;
        return 0;
    }
    mg_h2u_t *x = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (x == NULL)
        return 0;
    x->last_io = ev_now(x->loop->ev);
    if (f->hd.type == NGHTTP2_RST_STREAM)
        x->peer_rst = 1;
    if (f->hd.type == NGHTTP2_HEADERS) {
        if (x->in_head && got_head(x) < 0)
            return 0;
        if (x->in_trailers) {
            x->in_trailers = 0;
            if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
                x_fail(x, MG_H1C_INVALID, "trailers without the end of the stream", 0);
                return 0;
            }
        }
    }
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        got_end(x);
    return 0;
}

static int cb_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *p, size_t n,
                   void *ud)
{
    (void)flags;
    mg_h2u_t *x = nghttp2_session_get_stream_user_data(s, sid);
    if (x == NULL) {
        nghttp2_session_consume_connection(s, n); /* a cancelled stream's */
        (void)ud;
        return 0;
    }
    x->last_io = ev_now(x->loop->ev);
    /* the connection's window is given back at once: only the stream's
     * window holds what its consumer has not taken, so stalled streams
     * (however many, and whether they end or not) stall no other */
    nghttp2_session_consume_connection(s, n);
    x_body(x, p, n);
    return 0;
}

static int cb_stream_close(nghttp2_session *s, int32_t sid, uint32_t err, void *ud)
{
    mg_h2u_t *x = nghttp2_session_get_stream_user_data(s, sid);
    if (x == NULL)
        return 0;
    if (err == NGHTTP2_REFUSED_STREAM && !x->final && x->sent == 0 && !x->replayed) {
        /* not processed (over the limit, or past a GOAWAY): again, once,
         * from the next iteration (never on this session's own stack) */
        unlink_x(x, 0);
        x->sid = 0;
        x->replay = 1;
        ev_timer_set(&x->wake, 0., 0.);
        ev_timer_start(x->loop->ev, &x->wake);
        return 0;
    }
    if (!x->peer_rst) {
        /* nghttp2 reset it: the response broke the protocol (a bad :status,
         * a field or a length it refused), or a callback of ours failed */
        mg_h2uconn_t *c = ud;
        x_fail(x, x->code ? x->code : MG_H1C_INVALID,
               x->why ? x->why : c->why[0] ? c->why : "invalid response", 0);
        return 0;
    }
    char why[128];
    snprintf(why, sizeof why, "upstream reset the stream (%s)", nghttp2_http2_strerror(err));
    x_fail(x, MG_H1C_RESET, why, 0);
    return 0;
}

/* What went wrong, as nghttp2 says it (a connection error it answers with
 * GOAWAY on its own, garbage instead of SETTINGS): kept for the failure's
 * log line. */
static int cb_error(nghttp2_session *s, int code, const char *msg, size_t len, void *ud)
{
    (void)s;
    (void)code;
    mg_h2uconn_t *c = ud;
    snprintf(c->why, sizeof c->why, "%.*s", (int)(len < sizeof c->why ? len : sizeof c->why - 1),
             msg);
    return 0;
}

/* --- the connection ------------------------------------------------------- */

static void conn_free(void *p)
{
    free(p);
}

/* Takes c off its server's list: no new exchange finds it. */
static void c_unlist(mg_h2uconn_t *c)
{
    for (mg_h2uconn_t **pp = &c->sv->h2; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    c->next = NULL;
}

/* Closes c without calling anyone: its exchanges (if any) are only
 * detached. */
static void c_close(mg_h2uconn_t *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    c_unlist(c);
    while (c->streams) {
        mg_h2u_t *x = c->streams;
        unlink_x(x, 0);
    }
    nghttp2_session_del(c->s);
    c->s = NULL;
    mg_upconn_t *u = c->u;
    u->owner = NULL;
    mg_up_conn_close(u);
    mg_loop_defer(u->loop, conn_free, c);
}

/* The connection failed: every exchange on it fails (a connect failure if
 * it never got ready: nothing was sent), or goes again when that is safe. */
static void c_fail(mg_h2uconn_t *c, mg_h1c_err_t code, const char *why)
{
    if (c->closed)
        return;
    int connecting = !c->ready;
    c_unlist(c);
    char why_copy[256];
    snprintf(why_copy, sizeof why_copy, "%s", why);
    mg_log_debug("upstream %s: HTTP/2 connection failed: %s", c->sv->addr->text, why_copy);
    /* detach them all first: a callback may attach elsewhere */
    mg_h2u_t *list = NULL;
    while (c->streams) {
        mg_h2u_t *x = c->streams;
        unlink_x(x, 0);
        x->next = list;
        list = x;
    }
    c_close(c);
    while (list) {
        mg_h2u_t *x = list;
        list = x->next;
        x->next = NULL;
        if (x->cb == NULL)
            continue; /* its owner freed it from an earlier one's on_error */
        if (!connecting && x->reused && !x->final && x->sent == 0 && !x->replayed) {
            /* a kept connection died under a request that saw no answer */
            x->sid = 0;
            x->replay = 1;
            ev_timer_set(&x->wake, 0., 0.);
            ev_timer_start(x->loop->ev, &x->wake);
            continue;
        }
        mg_h1c_error_t e = { code, why_copy, connecting ? 1 : 0 };
        x->sid = 0;
        x->cb->on_error(x->ud, &e);
    }
}

/* The session's frames out to the socket, as far as it takes them. */
static void c_flush(mg_h2uconn_t *c)
{
    mg_upconn_t *u = c->u;
    if (c->closed || u->connecting || c->in_io)
        return;
    for (;;) {
        while (u->wbuf.len < H2_OUT_CHUNK) {
            const uint8_t *d;
            ssize_t n = nghttp2_session_mem_send(c->s, &d);
            if (n < 0) {
                c_fail(c, MG_H1C_INVALID, nghttp2_strerror((int)n));
                return;
            }
            if (n == 0)
                break;
            if (mg_buf_append(&u->wbuf, d, (size_t)n) != MG_OK) {
                c_fail(c, MG_H1C_NOMEM, "out of memory");
                return;
            }
        }
        if (u->wbuf.len == 0)
            break;
        ssize_t n = mg_up_send(u, mg_buf_data(&u->wbuf), u->wbuf.len);
        if (n > 0) {
            mg_buf_consume(&u->wbuf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            mg_up_want_write(u, 1);
            return;
        }
        c_fail(c, n < 0 ? mg_h1c_errno(errno) : MG_H1C_WRITE,
               n < 0 ? strerror(errno) : "write failed");
        return;
    }
    mg_up_want_write(u, 0);
    /* request producers that were told to stop may go on */
    for (mg_h2u_t *x = c->streams; x; x = x->next) {
        if (x->stop_send && x->body.len < MG_H1C_WBUF_LOW && x->cb->on_sendable) {
            x->stop_send = 0;
            x->cb->on_sendable(x->ud, 1);
        }
    }
    if (c->closed || nghttp2_session_want_read(c->s) || nghttp2_session_want_write(c->s))
        return;
    if (c->nstreams > 0) /* nghttp2 ended the session under them (it sent GOAWAY) */
        c_fail(c, MG_H1C_INVALID, c->why[0] ? c->why : "HTTP/2 session ended");
    else
        c_close(c); /* after GOAWAY both ways, with nothing in flight */
}

static int c_limit(const mg_h2uconn_t *c)
{
    uint32_t m = nghttp2_session_get_remote_settings(c->s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    /* 0 (no new streams for now): one waits on it, not a new connection
     * per request */
    return m == 0 ? 1 : m > 1000000 ? 1000000 : (int)m;
}

static int place(mg_h2u_t *x, mg_up_t *up, int s, mg_h2uconn_t *not, const char **err);

/* Closes a server's connections when its pool closes (up->close_h2). */
static void close_server(mg_up_server_t *sv)
{
    while (sv->h2)
        c_close(sv->h2);
}

/* The server's SETTINGS arrived: waiting exchanges go out up to its stream
 * limit; the rest find other connections. */
static void c_ready(mg_h2uconn_t *c)
{
    c->ready = 1;
    mg_upconn_t *u = c->u;
    mg_up_server_ok(c->sv);
    if (c->nstreams == 0)
        mg_up_arm_timer(u, c->sv->up->cfg->idle_timeout);
    else
        ev_timer_stop(u->loop->ev, &u->timer);
    int limit = c_limit(c), open = 0;
    mg_h2u_t *over = NULL;
    for (mg_h2u_t *x = c->streams, *nx; x; x = nx) {
        nx = x->next;
        if (x->sid > 0) {
            open++;
            continue;
        }
        if (open < limit && !c->draining && submit(x) == MG_OK) {
            open++;
            continue;
        }
        unlink_x(x, 0);
        x->next = over;
        over = x;
    }
    while (over) {
        mg_h2u_t *x = over;
        over = x->next;
        x->next = NULL;
        if (x->cb == NULL)
            continue; /* its owner freed it from an earlier one's on_error */
        const char *err = NULL;
        mg_up_t *up = c->sv->up;
        if (place(x, up, (int)(c->sv - up->servers), c, &err) != MG_OK) {
            mg_h1c_error_t e = { MG_H1C_CONNECT, err ? err : "connect failed", 1 };
            x->cb->on_error(x->ud, &e);
        }
    }
}

/* After nghttp2 ran (or a watcher fired): what its callbacks left to do. */
static void after_io(mg_h2uconn_t *c)
{
    if (c->closed)
        return;
    if (c->got_settings && !c->ready) {
        c->got_settings = 0;
        c_ready(c);
        if (c->closed)
            return;
    }
    if (c->draining) {
        /* waiting ones go elsewhere; the open ones finish here */
        for (mg_h2u_t *x = c->streams, *nx; x; x = nx) {
            nx = x->next;
            if (x->sid == 0 && c->ready) {
                unlink_x(x, 0);
                x->replay = 1;
                ev_timer_set(&x->wake, 0., 0.);
                ev_timer_start(x->loop->ev, &x->wake);
            }
        }
        if (c->nstreams == 0 && c->ready) {
            c_close(c);
            return;
        }
    }
    c_flush(c);
}

static void c_on_read(mg_upconn_t *u)
{
    mg_h2uconn_t *c = u->owner;
    mg_loop_t *loop = u->loop;
    ssize_t n = mg_up_recv(u, loop->scratch, loop->scratch_cap);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        c_fail(c, mg_h1c_errno(errno), strerror(errno));
        return;
    }
    if (n == 0) {
        if (c->nstreams == 0) {
            c_close(c); /* an idle connection the server closed */
            return;
        }
        c_fail(c, MG_H1C_CLOSED, "upstream closed the connection");
        return;
    }
    c->in_io = 1;
    ssize_t k = nghttp2_session_mem_recv(c->s, (const uint8_t *)loop->scratch, (size_t)n);
    c->in_io = 0;
    if (k < 0) {
        c_fail(c, MG_H1C_INVALID, nghttp2_strerror((int)k));
        return;
    }
    /* response bytes went up: the consumers' writers may send (a callback
     * may end its own exchange, never another) */
    for (mg_h2u_t *x = c->streams, *nx; x && !c->closed; x = nx) {
        nx = x->next;
        if (x->got_data && x->cb && x->cb->on_read) {
            x->got_data = 0;
            x->cb->on_read(x->ud);
        }
    }
    after_io(c);
}

static void c_on_write(mg_upconn_t *u)
{
    mg_h2uconn_t *c = u->owner;
    if (u->connecting) {
        char err[256];
        int sys_errno;
        int rc = mg_up_connect_step(u, err, sizeof err, &sys_errno);
        if (rc == MG_EAGAIN)
            return;
        if (rc != MG_OK) {
            c_fail(c, sys_errno ? mg_h1c_errno(sys_errno) : MG_H1C_TLS, err);
            return;
        }
        if (u->sock.ssl && !mg_tlsc_is_h2(u->sock.ssl)) {
            c_fail(c, MG_H1C_TLS, "the upstream did not select h2 (ALPN)");
            return;
        }
        mg_log_debug("upstream %s: HTTP/2 connection up", c->sv->addr->text);
        if (!u->rio_on && !u->read_paused)
            mg_up_pause_read(u, 0);
    }
    c_flush(c);
}

static void c_on_timer(mg_upconn_t *u)
{
    mg_h2uconn_t *c = u->owner;
    if (!c->ready) {
        c_fail(c, MG_H1C_TIMEOUT,
               u->connecting ? (u->handshaking ? "tls handshake timed out" : "connect timed out")
                             : "no HTTP/2 SETTINGS from the upstream");
        return;
    }
    if (c->nstreams == 0) {
        /* idle too long: a polite GOAWAY, then the close */
        nghttp2_session_terminate_session(c->s, NGHTTP2_NO_ERROR);
        c_flush(c);
        c_close(c);
    }
}

/* A new connection to server s; NULL with *err. */
static mg_h2uconn_t *c_new(mg_up_t *up, int s, double connect_timeout, const char **err)
{
    mg_up_server_t *sv = &up->servers[s];
    mg_h2uconn_t *c = calloc(1, sizeof *c);
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    if (c == NULL || nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0) {
        *err = "out of memory";
        goto fail;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, cb_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, cb_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, cb_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, cb_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, cb_stream_close);
    nghttp2_session_callbacks_set_error_callback2(cbs, cb_error);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    if (nghttp2_session_client_new2(&c->s, cbs, c, opt) != 0) {
        *err = "out of memory";
        goto fail;
    }
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    cbs = NULL;
    opt = NULL;
    nghttp2_settings_entry iv[] = {
        { NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
        { NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW },
    };
    if (nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, 2) != 0 ||
        nghttp2_session_set_local_window_size(c->s, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) != 0) {
        *err = "out of memory";
        goto fail;
    }
    c->sv = sv;
    c->u = mg_up_get(up, s, c, &c_ops, err);
    if (c->u == NULL)
        goto fail;
    up->close_h2 = close_server;
    c->next = sv->h2;
    sv->h2 = c;
    /* the connect, the TLS handshake and the server's SETTINGS */
    if (connect_timeout > 0)
        mg_up_arm_timer(c->u, connect_timeout);
    if (!c->u->connecting)
        mg_up_want_write(c->u, 1); /* connected at once: the preface goes when writable */
    return c;
fail:
    if (cbs)
        nghttp2_session_callbacks_del(cbs);
    if (opt)
        nghttp2_option_del(opt);
    if (c && c->s)
        nghttp2_session_del(c->s);
    free(c);
    return NULL;
}


/* Puts x on a connection to server s with room for it (not `not`), or a
 * new one. */
static int place(mg_h2u_t *x, mg_up_t *up, int s, mg_h2uconn_t *not, const char **err)
{
    mg_up_server_t *sv = &up->servers[s];
    mg_h2uconn_t *c;
    for (c = sv->h2; c; c = c->next) {
        if (c == not || c->draining || c->closed)
            continue;
        if (sv->dns && c->u->dns_gen != mg_dns_name_gen(sv->dns)) {
            /* the name moved: this one ends with its streams (or its idle
             * timer) */
            c->draining = 1;
            continue;
        }
        if (c->nstreams < c_limit(c))
            break;
    }
    if (c == NULL && (c = c_new(up, s, x->connect_timeout, err)) == NULL)
        return MG_ECLOSED;
    x->server = sv;
    x->deferred = 0;
    link_x(c, x);
    if (c->ready) {
        if (submit(x) != MG_OK) {
            unlink_x(x, 0);
            *err = "cannot open an HTTP/2 stream";
            return MG_ECLOSED;
        }
        if (!c->in_io)
            mg_up_want_write(c->u, 1);
    }
    return MG_OK;
}

/* --- timers of an exchange ------------------------------------------------ */

static void x_rt_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)revents;
    mg_h2u_t *x = w->data;
    double rt = x->read_timeout;
    double left = x->last_io + rt - ev_now(ev);
    /* not the upstream's fault: the consumer is slow to take the response,
     * or the client is slow to send the request (every byte it sent was
     * taken); bytes the upstream does not take (its window stays shut) are */
    if (left > 1e-3 || x->paused || (!x->body_end && x->body.len == 0)) {
        ev_timer_set(w, left > 1e-3 ? left : rt, 0.);
        ev_timer_start(ev, w);
        return;
    }
    mg_h2uconn_t *c = x->c;
    x_fail(x, MG_H1C_TIMEOUT, "upstream timed out", 0);
    if (c)
        after_io(c);
}

/* Next-iteration work: held response bytes after a resume, or a replay. */
static void x_wake_cb(struct ev_loop *ev, ev_timer *w, int revents)
{
    (void)ev;
    (void)revents;
    mg_h2u_t *x = w->data;
    if (x->replay) {
        x->replay = 0;
        x->replayed = 1;
        mg_up_server_t *sv = x->server;
        mg_up_t *up = sv->up;
        const char *err = NULL;
        mg_log_debug("upstream %s: stream not processed; sending the request again",
                     sv->addr->text);
        if (place(x, up, (int)(sv - up->servers), NULL, &err) != MG_OK) {
            mg_h1c_error_t e = { MG_H1C_CONNECT, err ? err : "connect failed", 1 };
            x->cb->on_error(x->ud, &e);
        }
        return;
    }
    mg_h2uconn_t *c = x->c;
    if (c == NULL)
        return;
    while (x->pending.len && !x->paused) {
        size_t n = x->pending.len;
        const char *p = mg_buf_data(&x->pending);
        if (!x->no_body && x->cb->on_body(x->ud, p, n) < 0) {
            x_fail(x, x->code ? x->code : MG_H1C_INVALID, x->why ? x->why : "invalid response",
                   0);
            after_io(c);
            return;
        }
        if (x->c == NULL)
            return;
        if (x->sid > 0)
            nghttp2_session_consume_stream(c->s, x->sid, n);
        mg_buf_consume(&x->pending, n);
    }
    if (x->cb->on_read)
        x->cb->on_read(x->ud);
    if (x->c && x->pending.len == 0 && x->got_end && !x->paused)
        x_complete(x);
    after_io(c);
}

/* --- API ------------------------------------------------------------------- */

mg_h2u_t *mg_h2u_new(mg_loop_t *loop, const mg_h1c_cbs_t *cb, void *ud, const mg_buf_t *msg,
                     int body_end)
{
    mg_h2u_t *x = calloc(1, sizeof *x);
    if (x == NULL)
        return NULL;
    x->loop = loop;
    x->cb = cb;
    x->ud = ud;
    x->msg = msg;
    x->body_end = body_end ? 1 : 0;
    ev_init(&x->rt, x_rt_cb);
    x->rt.data = x;
    ev_init(&x->wake, x_wake_cb);
    x->wake.data = x;
    return x;
}

static void x_free(void *p)
{
    mg_h2u_t *x = p;
    mg_buf_free(&x->body);
    mg_buf_free(&x->pending);
    mg_h1_head_free(&x->head);
    mg_h1_head_free(&x->trailers);
    free(x);
}

void mg_h2u_free(mg_h2u_t *x)
{
    if (x == NULL)
        return;
    mg_h2uconn_t *c = x->c;
    unlink_x(x, 1);
    ev_timer_stop(x->loop->ev, &x->rt);
    ev_timer_stop(x->loop->ev, &x->wake);
    x->cb = NULL;
    if (c && !c->in_io && !c->closed && c->draining && c->nstreams == 0 && c->ready)
        c_close(c);
    mg_loop_defer(x->loop, x_free, x);
}

int mg_h2u_attach(mg_h2u_t *x, mg_up_t *up, int s, const char **err)
{
    x->final = x->in_head = x->in_trailers = x->got_end = x->resp_done = x->no_body = 0;
    x->interim = 0;
    x->why = NULL;
    x->code = 0;
    x->sid = 0;
    x->peer_rst = 0;
    return place(x, up, s, NULL, err);
}

int mg_h2u_connecting(const mg_h2u_t *x)
{
    return x->c && !x->c->ready;
}

/* New body bytes (or the end) for a stream that waits for them. */
static void x_more(mg_h2u_t *x)
{
    mg_h2uconn_t *c = x->c;
    if (c == NULL || x->sid == 0)
        return;
    if (x->deferred) {
        x->deferred = 0;
        nghttp2_session_resume_data(c->s, x->sid);
    }
    if (!c->in_io)
        mg_up_want_write(c->u, 1);
}

int mg_h2u_send(mg_h2u_t *x, const char *p, size_t n)
{
    if (mg_buf_append(&x->body, p, n) != MG_OK)
        return MG_ENOMEM;
    if (x->body.len > MG_H1C_WBUF_HIGH && x->cb->on_sendable && !x->stop_send) {
        x->stop_send = 1;
        x->cb->on_sendable(x->ud, 0);
    }
    x_more(x);
    return MG_OK;
}

int mg_h2u_end(mg_h2u_t *x, const mg_h1_head_t *trailers)
{
    x->body_end = 1;
    x->req_trailers = trailers;
    x_more(x);
    return MG_OK;
}

void mg_h2u_pause_read(mg_h2u_t *x, int pause)
{
    if (!pause == !x->paused)
        return;
    x->paused = pause ? 1 : 0;
    if (!pause && x->c && (x->pending.len || x->got_end)) {
        ev_timer_set(&x->wake, 0., 0.);
        ev_timer_start(x->loop->ev, &x->wake);
    }
}
