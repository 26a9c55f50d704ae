/* The HTTP/1 connection as a request's response writer and request source
 * (writer.h). Responses are appended straight into the connection's write
 * queue (no copy of body bytes beyond that one), framed as the head
 * decided: Content-Length, chunked, or close-delimited for an HTTP/1.0
 * client. A head is taken back whole if any piece of it failed (buf.h), so
 * no partial head ever goes out. */
#include "conn.h"
#include "h1fields.h"
#include "loop.h"
#include "req.h"
#include "tunnel.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define CONN_OF(p, field) mg_container_of(p, mg_conn_t, field)


/* The Connection header as needed, and the blank line. */
static void end_head(mg_conn_t *c, const mg_req_t *r, mg_buf_t *o)
{
    if (!r->keepalive || (!r->body_done && !mg_req_discard_body(r)) || c->resp_close)
        mg_buf_append(o, "Connection: close\r\n\r\n", 21);
    else if (r->http10)
        mg_buf_append(o, "Connection: keep-alive\r\n\r\n", 26);
    else
        mg_buf_append(o, "\r\n", 2);
}

/* The gateway's own answer: status, Date, Content-Type, Content-Length,
 * the handler's lines. */
static void generated_head(mg_conn_t *c, const mg_req_t *r, const mg_resp_head_t *h, mg_buf_t *o)
{
    mg_buf_printf(o, "HTTP/1.1 %d %s\r\n", h->status, mg_status_reason(h->status));
    if (!mg_h1f_lines_have_date(h->extra))
        mg_buf_puts(o, mg_loop_date(r->loop));
    if (h->ctype)
        mg_buf_printf(o, "Content-Type: %s\r\n", h->ctype);
    if (!mg_status_no_length(h->status))
        mg_buf_printf(o, "Content-Length: %zu\r\n", h->length);
    if (h->extra)
        mg_buf_append(o, h->extra, strlen(h->extra));
    end_head(c, r, o);
}

/* A forwarded head: the fields that cross a proxy (minus those the edits
 * replace), the edits, Date, and our framing. */
static void forwarded_head(mg_conn_t *c, const mg_req_t *r, const mg_resp_head_t *rh,
                           mg_buf_t *o)
{
    const mg_h1_head_t *h = rh->fields;
    const mg_edits_t *e = rh->edits;
    mg_buf_append(o, "HTTP/1.1 ", 9);
    mg_buf_putu(o, (unsigned)rh->status);
    mg_buf_append(o, " ", 1);
    if (rh->reason.p)
        mg_buf_append(o, rh->reason.p, rh->reason.n);
    else
        mg_buf_puts(o, mg_status_reason(rh->status));
    mg_buf_append(o, "\r\n", 2);
    mg_h1f_tokens_t ct;
    mg_h1f_tokens(h, &ct);
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        if (!mg_h1f_forwardable(h, &ct, n))
            continue;
        if (e && e->n && !mg_h1f_framing(n) && mg_edits_find(e, n.p, n.n))
            continue;
        mg_buf_append(o, n.p, n.n);
        mg_buf_append(o, ": ", 2);
        mg_buf_append(o, v.p, v.n);
        mg_buf_append(o, "\r\n", 2);
    }
    for (int i = 0; e && i < e->n; i++) {
        mg_str_t n = { e->v[i].name, e->v[i].name_len };
        if (e->v[i].value == NULL || mg_h1f_framing(n) || mg_h1f_hop_by_hop(n))
            continue;
        mg_buf_append(o, n.p, n.n);
        mg_buf_append(o, ": ", 2);
        mg_buf_append(o, e->v[i].value, e->v[i].value_len);
        mg_buf_append(o, "\r\n", 2);
    }
    /* every answer carries Date: the upstream's (or a plugin's), else ours */
    const mg_hdr_edit_t *de = e && e->n ? mg_edits_find(e, "date", 4) : NULL;
    if (de ? de->value == NULL : mg_h1_find(h, "date", 4, 0) < 0)
        mg_buf_puts(o, mg_loop_date(r->loop));
    if (c->resp_chunked)
        mg_buf_append(o, "Transfer-Encoding: chunked\r\n", 28);
    if (rh->status == 101) {
        /* the switch: the upstream's Upgrade (hop-by-hop, so not copied
         * above) and our Connection: upgrade */
        int ui = mg_h1_find(h, "upgrade", 7, 0);
        mg_str_t uv = ui >= 0 ? mg_h1_value(h, ui) : mg_req_upgrade(r);
        mg_buf_append(o, "Upgrade: ", 9);
        mg_buf_append(o, uv.p, uv.n);
        mg_buf_puts(o, "\r\nConnection: upgrade\r\n\r\n");
    } else {
        end_head(c, r, o);
    }
}

static ssize_t w_head(mg_writer_t *w, mg_req_t *r, const mg_resp_head_t *h, const char *body,
                      size_t n)
{
    mg_conn_t *c = CONN_OF(w, w);
    mg_buf_t *o = &c->wbuf;
    size_t before = o->len;
    c->resp_chunked = c->resp_close = 0;
    if (h->fields) {
        /* framing from the head as it came (a plugin's status change does
         * not re-frame the body) */
        int st = h->fields->status;
        int no_body = r->head->method == HTTP_HEAD || st == 204 || st == 304 || st == 101;
        if (!no_body && !(h->fields->flags & MG_H1_HAS_CL)) {
            if (r->http10)
                c->resp_close = 1; /* HTTP/1.0 clients read to EOF */
            else
                c->resp_chunked = 1;
        }
        forwarded_head(c, r, h, o);
    } else {
        generated_head(c, r, h, o);
    }
    if (body && r->head->method != HTTP_HEAD && !mg_status_no_length(h->status))
        mg_buf_append(o, body, n);
    if (o->failed) { /* one check for the whole piece (buf.h): nothing goes out */
        mg_buf_rollback(o, before);
        c->resp_chunked = c->resp_close = 0;
        return MG_ENOMEM;
    }
    return (ssize_t)(o->len - before);
}

static ssize_t w_body(mg_writer_t *w, const char *p, size_t n)
{
    mg_conn_t *c = CONN_OF(w, w);
    mg_buf_t *o = &c->wbuf;
    size_t before = o->len;
    if (c->resp_chunked) {
        mg_buf_putx(o, n);
        mg_buf_append(o, "\r\n", 2);
        mg_buf_append(o, p, n);
        mg_buf_append(o, "\r\n", 2);
    } else {
        mg_buf_append(o, p, n);
    }
    if (o->failed) {
        mg_buf_rollback(o, before);
        return MG_ENOMEM;
    }
    w->full = o->len > MG_WRITER_HIGH;
    return (ssize_t)(o->len - before);
}

static ssize_t w_end(mg_writer_t *w, const mg_h1_head_t *trailers)
{
    mg_conn_t *c = CONN_OF(w, w);
    mg_buf_t *o = &c->wbuf;
    size_t before = o->len;
    if (c->resp_close)
        c->closing = 1; /* the body ends with the connection */
    if (!c->resp_chunked)
        return 0; /* trailers need chunked framing: dropped */
    if (trailers == NULL || trailers->nhdrs == 0) {
        mg_buf_append(o, "0\r\n\r\n", 5);
    } else {
        mg_buf_append(o, "0\r\n", 3);
        for (int i = 0; i < trailers->nhdrs; i++) {
            mg_str_t tn = mg_h1_name(trailers, i), tv = mg_h1_value(trailers, i);
            mg_buf_append(o, tn.p, tn.n);
            mg_buf_append(o, ": ", 2);
            mg_buf_append(o, tv.p, tv.n);
            mg_buf_append(o, "\r\n", 2);
        }
        mg_buf_append(o, "\r\n", 2);
    }
    if (o->failed) {
        mg_buf_rollback(o, before);
        return MG_ENOMEM;
    }
    return (ssize_t)(o->len - before);
}

static void w_interim(mg_writer_t *w, int status)
{
    mg_conn_t *c = CONN_OF(w, w);
    char line[64];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n\r\n", status, mg_status_reason(status));
    mg_conn_write(c, line, (size_t)n);
    mg_conn_flush(c);
}

static void w_flush(mg_writer_t *w)
{
    mg_conn_flush(CONN_OF(w, w));
}

static void w_close(mg_writer_t *w)
{
    CONN_OF(w, w)->closing = 1;
}

static void w_abort(mg_writer_t *w)
{
    mg_conn_close(CONN_OF(w, w)); /* aborts the request */
}

static void w_take_over(mg_writer_t *w, mg_tun_end_t *e)
{
    mg_conn_detach(CONN_OF(w, w), &e->fd, &e->tls, &e->out, &e->in, &e->in_n, &e->eof);
}

const mg_writer_ops_t mg_conn_writer_ops = {
    w_head, w_body, w_end, w_interim, w_flush, w_close, w_abort, w_take_over,
};

/* --- the request source ----------------------------------------------------- */

static void s_pause(mg_reqsrc_t *s, int pause)
{
    if (!pause == !s->paused)
        return;
    mg_conn_pause_read(CONN_OF(s, src), pause);
}

static int s_done(mg_reqsrc_t *s, int keepalive, mg_h1_head_t *head)
{
    mg_conn_t *c = CONN_OF(s, src);
    int took = 0;
    if (head && c->spare == NULL) {
        c->spare = head; /* the head store is reused for the next request */
        took = 1;
    }
    keepalive = keepalive && !c->resp_close;
    c->resp_chunked = c->resp_close = 0;
    mg_conn_request_done(c, keepalive);
    return took;
}

const mg_reqsrc_ops_t mg_conn_src_ops = { s_pause, s_done };
