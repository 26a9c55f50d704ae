/* One HTTP/2 stream as a request's client side: the request head built
 * from the decoded header list, and the stream as the request's response
 * writer and request source (writer.h), as h1writer.c is for HTTP/1.
 *
 * Nothing here calls into nghttp2's send path: heads and body bytes are
 * kept on the stream and the connection is kicked (mg_h2c_kick); the next
 * send submits them (mg_h2s_submit) outside any nghttp2 callback. The
 * response body is copied once into s->out and once more into the frame
 * nghttp2 builds; nghttp2's flow control decides how fast it leaves, and
 * `full`/on_drained carry that back to the producer. */
#include "h2conn.h"
#include "config.h"
#include "h1fields.h"
#include "log.h"
#include "loop.h"
#include "req.h"
#include "tunnel.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define S_OF_W(p) mg_container_of(p, mg_h2s_t, w)
#define S_OF_SRC(p) mg_container_of(p, mg_h2s_t, src)

/* A stream's queue pauses its producer above its high mark and lets it go
 * on below a quarter of it. The mark is the writer's (MG_WRITER_HIGH) while
 * the connection has few streams, and shrinks to share OUT_CONN_BUDGET
 * among many (down to OUT_MIN_HIGH): a client that opens h2_max_streams
 * streams and reads none holds about OUT_CONN_BUDGET plus one producer's
 * read per stream, not MG_WRITER_HIGH per stream. */
#define OUT_CONN_BUDGET (2 * 1024 * 1024)
#define OUT_MIN_HIGH (16 * 1024)

static size_t out_high(const mg_h2c_t *c)
{
    size_t h = OUT_CONN_BUDGET / (size_t)(c->nstreams > 0 ? c->nstreams : 1);
    return h > MG_WRITER_HIGH ? MG_WRITER_HIGH : h < OUT_MIN_HIGH ? OUT_MIN_HIGH : h;
}

/* --- the request head --------------------------------------------------- */

static int method_of(const uint8_t *p, size_t n)
{
#define XX(num, name, string)                                                                      \
    if (n == sizeof #string - 1 && memcmp(p, #string, n) == 0)                                     \
        return num;
    HTTP_METHOD_MAP(XX)
#undef XX
    return -1;
}

static void head_fail(mg_h2s_t *s, int status, const char *why)
{
    if (s->err_status == 0) {
        s->err_status = status;
        s->err_reason = why;
    }
}

int mg_h2s_header(mg_h2s_t *s, const uint8_t *name, size_t nn, const uint8_t *value, size_t vn)
{
    const mg_limits_t *lim = &s->c->loop->gen->cfg->limits;
    mg_h1_head_t *h = s->head;
    s->hbytes += nn + vn + 4; /* as "name: value\r\n" in HTTP/1 */
    /* A header block that decodes to far more than any request may carry
     * is an HPACK bomb (a few bytes referencing a big table entry): the
     * connection goes, not just the stream. */
    if (s->hbytes > 4 * lim->max_header_bytes + 65536) {
        s->c->calm = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (s->hbytes > lim->max_header_bytes)
        head_fail(s, 431, "request header fields too large");
    if (s->err_status || h == NULL)
        return 0;
    if (nn > 0 && name[0] == ':') {
        if (nn == 7 && memcmp(name, ":method", 7) == 0) {
            int m = method_of(value, vn);
            if (m < 0) {
                head_fail(s, 400, "bad request");
                return 0;
            }
            if (m == HTTP_CONNECT) {
                head_fail(s, 400, "CONNECT is not supported");
                return 0;
            }
            h->method = m;
            h->flags |= MG_H1_HEAD_READ;
        } else if (nn == 5 && memcmp(name, ":path", 5) == 0) {
            if (vn > lim->max_uri_bytes) {
                head_fail(s, 414, "uri too long");
                return 0;
            }
            h->url_off = (uint32_t)h->store.len;
            h->url_len = (uint32_t)vn;
            if (mg_buf_append(&h->store, value, vn) != MG_OK)
                head_fail(s, 500, "internal error");
        } else if (nn == 10 && memcmp(name, ":authority", 10) == 0) {
            s->authority = 1;
            if (mg_h1_head_add(h, "host", 4, (const char *)value, vn) != MG_OK)
                head_fail(s, 500, "internal error");
        }
        return 0; /* :scheme: the listener says; :protocol is refused by nghttp2 */
    }
    if (nn == 6 && memcmp(name, "cookie", 6) == 0) {
        if ((s->cookie.len && mg_buf_append(&s->cookie, "; ", 2) != MG_OK) ||
            mg_buf_append(&s->cookie, value, vn) != MG_OK)
            head_fail(s, 500, "internal error");
        return 0;
    }
    if (nn == 4 && memcmp(name, "host", 4) == 0 && s->authority)
        return 0; /* :authority wins (RFC 9113 8.3.1) */
    if (memchr(name, '_', nn)) {
        if (lim->underscore_headers == MG_CFG_US_DROP)
            return 0;
        if (lim->underscore_headers == MG_CFG_US_REJECT) {
            head_fail(s, 400, "underscore in header name");
            return 0;
        }
    }
    if (h->nhdrs >= MG_H1_MAX_HEADERS) {
        head_fail(s, 431, "too many header fields");
        return 0;
    }
    if (nn == 14 && memcmp(name, "content-length", 14) == 0) {
        uint64_t v = 0;
        for (size_t i = 0; i < vn; i++)
            v = v * 10 + (uint64_t)(value[i] - '0'); /* digits: nghttp2 checked */
        h->flags |= MG_H1_HAS_CL;
        h->content_length = v;
    } else if (nn == 6 && memcmp(name, "expect", 6) == 0 && vn == 12 &&
               strncasecmp((const char *)value, "100-continue", 12) == 0) {
        h->flags |= MG_H1_EXPECT_100;
    }
    if (mg_h1_head_add(h, (const char *)name, nn, (const char *)value, vn) != MG_OK)
        head_fail(s, 500, "internal error");
    return 0;
}

int mg_h2s_trailer(mg_h2s_t *s, const uint8_t *name, size_t nn, const uint8_t *value,
                   size_t vn)
{
    const mg_limits_t *lim = &s->c->loop->gen->cfg->limits;
    s->hbytes += nn + vn + 4; /* the head's and the trailers' bytes together */
    if (s->hbytes > 4 * lim->max_header_bytes + 65536) {
        s->c->calm = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    mg_req_t *r = s->req;
    if (r == NULL || r->done || s->hbytes > lim->max_header_bytes || (nn && name[0] == ':'))
        return 0; /* over the limit: dropped */
    mg_h1_head_t *t = mg_req_trailer_store(r);
    if (t && t->nhdrs < MG_H1_MAX_HEADERS)
        mg_h1_head_add(t, (const char *)name, nn, (const char *)value, vn);
    return 0;
}

void mg_h2s_start(mg_h2s_t *s)
{
    mg_h2c_t *c = s->c;
    mg_h1_head_t *h = s->head;
    s->headers_done = 1;
    if (s->cookie.len && s->err_status == 0 &&
        mg_h1_head_add(h, "cookie", 6, mg_buf_data(&s->cookie), s->cookie.len) != MG_OK)
        head_fail(s, 500, "internal error");
    mg_buf_free(&s->cookie);
    if (h->url_len == 0)
        head_fail(s, 400, "bad request");
    h->http_major = 2;
    h->http_minor = 0;
    h->flags |= MG_H1_KEEPALIVE;
    /* a body of unknown length: chunked to an HTTP/1.1 upstream */
    if (!s->end_stream && !(h->flags & MG_H1_HAS_CL))
        h->flags |= MG_H1_CHUNKED;
    mg_req_t *r = mg_req_new(c->loop, h);
    if (r == NULL) {
        mg_log_error("out of memory starting an HTTP/2 request");
        nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        mg_h2c_kick(c);
        return;
    }
    s->head = NULL; /* the request's */
    s->req = r;
    r->w = &s->w;
    r->src = &s->src;
    memcpy(r->remote, c->remote, sizeof r->remote);
    memcpy(r->peer, c->remote, sizeof r->peer);
    r->https = c->https;
    r->admin_listener = c->admin;
    if (s->err_status) {
        mg_log_info("%s: %d %s (HTTP/2 stream %d)", c->remote, s->err_status, s->err_reason,
                    (int)s->id);
        if (!s->end_stream)
            r->has_body = 1; /* its body is not read: reset once answered */
        mg_req_error(r, s->err_status, s->err_reason);
        return;
    }
    mg_req_dispatch(r);
}

/* --- response heads ------------------------------------------------------ */

/* Adds name (lower-cased) and value to the head h being built. */
static void put(mg_h1_head_t *h, const char *n, size_t nn, const char *v, size_t vn, int *fail)
{
    size_t at = h->store.len;
    if (mg_h1_head_add(h, n, nn, v, vn) != MG_OK) {
        *fail = 1;
        return;
    }
    char *p = h->store.base + h->store.off + at;
    for (size_t i = 0; i < nn; i++)
        if (p[i] >= 'A' && p[i] <= 'Z')
            p[i] = (char)(p[i] + 32);
}

/* A field that must not cross into HTTP/2 (RFC 9113 8.2.2), besides the
 * hop-by-hop ones. */
static int h2_forbidden(mg_str_t n)
{
    return mg_h1f_hop_by_hop(n) || MG_STR_EQ_CI(n, "host") || (n.n && n.p[0] == ':');
}

/* A handler's own lines ("Name: value\r\n"...). */
static void put_lines(mg_h1_head_t *h, const char *x, int *fail)
{
    while (x && *x) {
        const char *eol = strstr(x, "\r\n");
        size_t len = eol ? (size_t)(eol - x) : strlen(x);
        const char *colon = memchr(x, ':', len);
        if (colon && colon > x) {
            mg_str_t n = { x, (size_t)(colon - x) };
            const char *v = colon + 1;
            const char *end = x + len;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
                end--;
            if (!h2_forbidden(n) && !mg_h1f_framing(n))
                put(h, n.p, n.n, v, (size_t)(end - v), fail);
        }
        x = eol ? eol + 2 : x + len;
    }
}

static mg_h1_head_t *fresh(mg_h1_head_t **slot)
{
    if (*slot == NULL)
        *slot = calloc(1, sizeof **slot);
    if (*slot)
        mg_h1_head_reset(*slot);
    return *slot;
}

/* The Date value of the loop's "Date: ...\r\n" line. */
static mg_str_t loop_date(mg_loop_t *loop)
{
    const char *d = mg_loop_date(loop);
    size_t n = strlen(d);
    return (mg_str_t){ d + 6, n >= 8 ? n - 8 : 0 };
}

static ssize_t w_head(mg_writer_t *w, mg_req_t *r, const mg_resp_head_t *rh, const char *body,
                      size_t n)
{
    mg_h2s_t *s = S_OF_W(w);
    mg_h1_head_t *h = fresh(&s->rhead);
    if (h == NULL)
        return MG_ENOMEM;
    int fail = 0;
    h->status = rh->status;
    if (rh->fields) {
        const mg_h1_head_t *f = rh->fields;
        const mg_edits_t *e = rh->edits;
        mg_h1f_tokens_t ct;
        mg_h1f_tokens(f, &ct);
        for (int i = 0; i < f->nhdrs; i++) {
            mg_str_t hn = mg_h1_name(f, i), hv = mg_h1_value(f, i);
            if (!mg_h1f_forwardable(f, &ct, hn) || h2_forbidden(hn))
                continue;
            if (e && e->n && !mg_h1f_framing(hn) && mg_edits_find(e, hn.p, hn.n))
                continue;
            put(h, hn.p, hn.n, hv.p, hv.n, &fail);
        }
        for (int i = 0; e && i < e->n; i++) {
            mg_str_t en = { e->v[i].name, e->v[i].name_len };
            if (e->v[i].value == NULL || mg_h1f_framing(en) || h2_forbidden(en))
                continue;
            put(h, en.p, en.n, e->v[i].value, e->v[i].value_len, &fail);
        }
        const mg_hdr_edit_t *de = e && e->n ? mg_edits_find(e, "date", 4) : NULL;
        if (de ? de->value == NULL : mg_h1_find(f, "date", 4, 0) < 0) {
            mg_str_t d = loop_date(r->loop);
            put(h, "date", 4, d.p, d.n, &fail);
        }
    } else {
        if (!mg_h1f_lines_have_date(rh->extra)) {
            mg_str_t d = loop_date(r->loop);
            put(h, "date", 4, d.p, d.n, &fail);
        }
        if (rh->ctype)
            put(h, "content-type", 12, rh->ctype, strlen(rh->ctype), &fail);
        if (!mg_status_no_length(rh->status)) {
            char num[24];
            int k = snprintf(num, sizeof num, "%zu", rh->length);
            put(h, "content-length", 14, num, (size_t)k, &fail);
        }
        put_lines(h, rh->extra, &fail);
    }
    size_t before = s->out.len;
    if (body && r->head->method != HTTP_HEAD && !mg_status_no_length(rh->status) && n &&
        mg_buf_append(&s->out, body, n) != MG_OK)
        fail = 1;
    if (fail) {
        mg_buf_rollback(&s->out, before);
        mg_h1_head_reset(h);
        return MG_ENOMEM;
    }
    if (body)
        s->ended = 1;
    s->head_pending = 1;
    mg_h2c_pend(s);
    /* what the head weighs uncompressed, as HTTP/1 would count it */
    return (ssize_t)(h->store.len + 4 * (size_t)h->nhdrs + 13 + (s->out.len - before));
}

static ssize_t w_body(mg_writer_t *w, const char *p, size_t n)
{
    mg_h2s_t *s = S_OF_W(w);
    if (n == 0)
        return 0;
    if (mg_buf_append(&s->out, p, n) != MG_OK)
        return MG_ENOMEM;
    w->full = s->out.len > out_high(s->c);
    mg_h2c_pend(s);
    return (ssize_t)n;
}

static ssize_t w_end(mg_writer_t *w, const mg_h1_head_t *trailers)
{
    mg_h2s_t *s = S_OF_W(w);
    size_t bytes = 0;
    if (trailers && trailers->nhdrs) {
        mg_h1_head_t *t = fresh(&s->trl);
        if (t == NULL)
            return MG_ENOMEM;
        int fail = 0;
        for (int i = 0; i < trailers->nhdrs; i++) {
            mg_str_t tn = mg_h1_name(trailers, i), tv = mg_h1_value(trailers, i);
            if (h2_forbidden(tn) || mg_h1f_framing(tn))
                continue;
            put(t, tn.p, tn.n, tv.p, tv.n, &fail);
        }
        if (fail) {
            mg_h1_head_reset(t);
            return MG_ENOMEM;
        }
        bytes = t->store.len + 4 * (size_t)t->nhdrs;
    }
    s->ended = 1;
    mg_h2c_pend(s);
    return (ssize_t)bytes;
}

static void w_interim(mg_writer_t *w, int status)
{
    mg_h2s_t *s = S_OF_W(w);
    char num[8];
    int k = snprintf(num, sizeof num, "%d", status);
    nghttp2_nv nv = { (uint8_t *)":status", (uint8_t *)num, 7, (size_t)k, NGHTTP2_NV_FLAG_NONE };
    nghttp2_submit_headers(s->c->ng, NGHTTP2_FLAG_NONE, s->id, NULL, &nv, 1, NULL);
    mg_h2c_kick(s->c);
}

static void w_flush(mg_writer_t *w)
{
    mg_h2c_kick(S_OF_W(w)->c);
}

/* The response is all there is: a request body still coming is read and
 * dropped, within bounds (h2conn.c's on_data). */
static void w_close(mg_writer_t *w)
{
    mg_h2s_t *s = S_OF_W(w);
    if (!s->end_stream)
        s->reset_after = 1;
}

static void reset(mg_h2s_t *s, uint32_t code)
{
    if (!s->closed)
        nghttp2_submit_rst_stream(s->c->ng, NGHTTP2_FLAG_NONE, s->id, code);
    mg_h2c_kick(s->c);
}

static void w_abort(mg_writer_t *w)
{
    mg_h2s_t *s = S_OF_W(w);
    reset(s, NGHTTP2_INTERNAL_ERROR);
    mg_h2s_detach(s);
}

/* No request over HTTP/2 can ask for an upgrade (nghttp2 refuses the
 * Connection and Upgrade fields), so nothing ever switches: the tunnel
 * gets no socket and the stream is reset. */
static void w_take_over(mg_writer_t *w, mg_tun_end_t *e)
{
    mg_h2s_t *s = S_OF_W(w);
    e->fd = -1;
    reset(s, NGHTTP2_INTERNAL_ERROR);
    s->req = NULL;
}

const mg_writer_ops_t mg_h2s_writer_ops = {
    w_head, w_body, w_end, w_interim, w_flush, w_close, w_abort, w_take_over,
};

/* --- the request source --------------------------------------------------- */

/* Pausing holds the stream's window back: the client may send what the
 * window allows and then waits (the bytes still reach the request, which
 * buffers them). The connection's window is reopened at once, so other
 * streams never wait for this one. */
static void s_pause(mg_reqsrc_t *src, int pause)
{
    mg_h2s_t *s = S_OF_SRC(src);
    src->paused = pause ? 1 : 0;
    if (!pause && s->unacked && !s->closed) {
        nghttp2_session_consume_stream(s->c->ng, s->id, s->unacked);
        s->unacked = 0;
        mg_h2c_kick(s->c);
    }
}

static int s_done(mg_reqsrc_t *src, int keepalive, mg_h1_head_t *head)
{
    (void)keepalive;
    (void)head;
    mg_h2s_t *s = S_OF_SRC(src);
    s->req = NULL;
    if (!s->end_stream)
        s->reset_after = 1;
    if (s->unacked && !s->closed) { /* a body held back is now dropped as it comes */
        nghttp2_session_consume_stream(s->c->ng, s->id, s->unacked);
        s->unacked = 0;
        mg_h2c_kick(s->c);
    }
    return 0;
}

const mg_reqsrc_ops_t mg_h2s_src_ops = { s_pause, s_done };

/* --- submitting ------------------------------------------------------------ */

static ssize_t data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *source, void *ud);

/* h's fields as nghttp2 name/value pairs (nghttp2 copies them), with
 * :status first when status is set. Returns the count, or -1. */
static int to_nv(const mg_h1_head_t *h, int status, char *num, nghttp2_nv **out)
{
    int n = h->nhdrs + (status ? 1 : 0);
    nghttp2_nv *nv = malloc(sizeof *nv * (size_t)(n ? n : 1));
    if (nv == NULL)
        return -1;
    int k = 0;
    if (status) {
        int l = snprintf(num, 8, "%d", status);
        nv[k++] = (nghttp2_nv){ (uint8_t *)":status", (uint8_t *)num, 7, (size_t)l,
                                NGHTTP2_NV_FLAG_NONE };
    }
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t hn = mg_h1_name(h, i), hv = mg_h1_value(h, i);
        nv[k++] = (nghttp2_nv){ (uint8_t *)hn.p, (uint8_t *)hv.p, hn.n, hv.n,
                                NGHTTP2_NV_FLAG_NONE };
    }
    *out = nv;
    return k;
}

static void submit_trailers(mg_h2s_t *s)
{
    nghttp2_nv *nv;
    int n = to_nv(s->trl, 0, NULL, &nv);
    if (n < 0 || nghttp2_submit_trailer(s->c->ng, s->id, nv, (size_t)n) != 0)
        nghttp2_submit_rst_stream(s->c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
    free(n < 0 ? NULL : nv);
}

static ssize_t data_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *source, void *ud)
{
    (void)ng;
    (void)id;
    (void)ud;
    mg_h2s_t *s = source->ptr;
    size_t was = s->out.len;
    size_t n = was < len ? was : len;
    if (n) {
        memcpy(buf, mg_buf_data(&s->out), n);
        mg_buf_consume(&s->out, n);
    }
    if (s->out.len == 0 && s->ended) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->trl && s->trl->nhdrs) {
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            submit_trailers(s);
        }
    } else if (n == 0) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (s->w.full && s->out.len < out_high(s->c) / 4) {
        s->w.full = 0;
        s->drained = 1; /* the producer hears it after this send (h2conn.c) */
    }
    if (s->out.len == 0 && s->out.cap > MG_WRITER_HIGH)
        mg_buf_free(&s->out);
    return (ssize_t)n;
}

void mg_h2s_submit(mg_h2s_t *s)
{
    mg_h2c_t *c = s->c;
    if (s->closed)
        return;
    if (s->head_pending) {
        s->head_pending = 0;
        nghttp2_nv *nv;
        char num[8];
        int n = to_nv(s->rhead, s->rhead->status, num, &nv);
        /* a response that is all head (no body, no trailers) is one
         * HEADERS frame with END_STREAM: gRPC's Trailers-Only form */
        int bare = s->ended && s->out.len == 0 && !(s->trl && s->trl->nhdrs);
        nghttp2_data_provider prd = { .source.ptr = s, .read_callback = data_read };
        if (n < 0 || nghttp2_submit_response(c->ng, s->id, nv, (size_t)n, bare ? NULL : &prd)) {
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        } else {
            s->head_sent = 1;
        }
        if (n >= 0)
            free(nv);
        mg_h1_head_free(s->rhead);
        free(s->rhead);
        s->rhead = NULL;
    } else if (s->deferred && s->head_sent && (s->out.len || s->ended)) {
        s->deferred = 0;
        nghttp2_session_resume_data(c->ng, s->id);
    }
}

/* --- ending ------------------------------------------------------------------ */

void mg_h2s_detach(mg_h2s_t *s)
{
    mg_req_t *r = s->req;
    if (r == NULL)
        return;
    s->req = NULL;
    r->w = NULL;
    r->src = NULL;
    if (!r->done)
        mg_req_abort(r);
}

void mg_h2s_free(mg_h2s_t *s)
{
    if (s == NULL)
        return;
    if (s->head) {
        mg_h1_head_free(s->head);
        free(s->head);
    }
    if (s->rhead) {
        mg_h1_head_free(s->rhead);
        free(s->rhead);
    }
    if (s->trl) {
        mg_h1_head_free(s->trl);
        free(s->trl);
    }
    mg_buf_free(&s->cookie);
    mg_buf_free(&s->out);
    free(s);
}
