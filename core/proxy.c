/* The proxy exchange between one request and one upstream connection.
 *
 * The exchange itself (writing the request, parsing the response, the
 * stale-connection replay) runs in h1client.c on r->exchange; r->up points at it
 * while it runs. This file builds the request head, picks servers (retries
 * a failed connect on the next one, passive health), turns the response
 * into the client's and failures into 502/504, and hands a 101 over to a
 * tunnel. Whoever ends the exchange (its callbacks, a client abort) clears
 * r->up first; nothing touches the connection after that. */
#include "proxy.h"
#include "conn.h"
#include "h1client.h"
#include "log.h"
#include "loop.h"
#include "req.h"
#include "tunnel.h"
#include "upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { FAIL_CONNECT, FAIL_CONNECT_TIMEOUT, FAIL_RESET, FAIL_TIMEOUT, FAIL_GARBAGE };

static void proxy_fail(mg_req_t *r, int kind, const char *why);

/* --- the request head for the upstream ------------------------------------ */

static int is_hop_by_hop(mg_str_t n)
{
    return MG_STR_EQ_CI(n, "connection") || MG_STR_EQ_CI(n, "keep-alive") ||
           MG_STR_EQ_CI(n, "proxy-connection") || MG_STR_EQ_CI(n, "te") ||
           MG_STR_EQ_CI(n, "trailer") || MG_STR_EQ_CI(n, "transfer-encoding") ||
           MG_STR_EQ_CI(n, "upgrade");
}

/* True if `name` is one of the comma-separated tokens of a Connection
 * header; `first` is the index of the head's first Connection header (-1:
 * none), looked up once per head rather than once per header. */
static int connection_lists(const mg_h1_head_t *h, int first, mg_str_t name)
{
    for (int i = first; i >= 0; i = mg_h1_find(h, "connection", 10, i + 1))
        if (mg_h1_list_has(mg_h1_value(h, i), name.p, name.n))
            return 1;
    return 0;
}

/* The names a head's Connection headers list, gathered once per head
 * rather than re-tokenized for every header (a hot path: every request and
 * response head). More than 8: the per-header scan above. */
typedef struct conn_tokens {
    int first;      /* index of the first Connection header, -1: none */
    int n;          /* tokens in t, or -1 when there were too many */
    mg_str_t t[8];
} conn_tokens_t;

static void connection_tokens(const mg_h1_head_t *h, conn_tokens_t *ct)
{
    ct->first = mg_h1_find(h, "connection", 10, 0);
    ct->n = 0;
    for (int i = ct->first; i >= 0; i = mg_h1_find(h, "connection", 10, i + 1)) {
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
            if (e > a) {
                if (ct->n == (int)MG_ARRAY_LEN(ct->t)) {
                    ct->n = -1;
                    return;
                }
                ct->t[ct->n++] = (mg_str_t){ v.p + a, e - a };
            }
            a = b;
        }
    }
}

/* Whether a header from either side is forwarded to the other. */
static int forwardable(const mg_h1_head_t *h, const conn_tokens_t *ct, mg_str_t n)
{
    if (is_hop_by_hop(n))
        return 0;
    if (ct->n < 0)
        return !connection_lists(h, ct->first, n);
    for (int i = 0; i < ct->n; i++)
        if (ct->t[i].n == n.n && mg_str_eq_ci(n, ct->t[i].p, ct->t[i].n))
            return 0;
    return 1;
}

static int is_framing(mg_str_t n);

/* Whether the route tunnels `proto` (its `upgrades`; the name part before a
 * "/version" counts too). h2c never is. */
static int upgrade_allowed(const mg_cfg_route_t *rt, mg_str_t proto)
{
    mg_str_t name = proto;
    const char *slash = memchr(proto.p, '/', proto.n);
    if (slash)
        name.n = (size_t)(slash - proto.p);
    if (MG_STR_EQ_CI(name, "h2c"))
        return 0;
    for (int i = 0; i < rt->nupgrades; i++) {
        size_t n = strlen(rt->upgrades[i]);
        if (mg_str_eq_ci(proto, rt->upgrades[i], n) || mg_str_eq_ci(name, rt->upgrades[i], n))
            return 1;
    }
    return 0;
}

/* Serializes the request for the upstream into r->uhead: the original
 * headers minus hop-by-hop ones, Lua's edits (set_header/remove_header win
 * over originals and over our X-Forwarded-*), X-Forwarded-For (appended to
 * the client's), -Proto and -Host, and our own body framing. */
static void build_request_head(mg_req_t *r)
{
    mg_h1_head_t *h = r->head;
    mg_buf_t *o = &r->uhead;
    const mg_edits_t *e = &r->edits;
    mg_str_t url = mg_h1_url(h);
    mg_buf_puts(o, llhttp_method_name(h->method));
    mg_buf_append(o, " ", 1);
    if (r->path_override) {
        mg_buf_puts(o, r->path_override);
        if (r->query.n) {
            mg_buf_append(o, "?", 1);
            mg_buf_append(o, r->query.p, r->query.n);
        }
    } else {
        /* origin-form target: the path view starts inside the url */
        mg_buf_append(o, r->path.p, (size_t)(url.p + url.n - r->path.p));
    }
    mg_buf_append(o, " HTTP/1.1\r\n", 11);
    /* An upgrade the route tunnels goes up with its two headers; any other
     * loses them (they are hop-by-hop) and goes up as plain HTTP. */
    mg_str_t proto = mg_req_upgrade(r);
    r->upgrading = proto.p && r->route >= 0 &&
                   upgrade_allowed(&r->gen->cfg->routes[r->route], proto);
    r->websocket = r->upgrading && MG_STR_EQ_CI(proto, "websocket");
    if (r->upgrading) {
        mg_buf_puts(o, "Connection: upgrade\r\nUpgrade: ");
        mg_buf_append(o, proto.p, proto.n);
        mg_buf_append(o, "\r\n", 2);
    }
    conn_tokens_t ct;
    connection_tokens(h, &ct);
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        if (!forwardable(h, &ct, n) || is_framing(n) || MG_STR_EQ_CI(n, "expect") ||
            MG_STR_EQ_CI(n, "x-forwarded-proto") || MG_STR_EQ_CI(n, "x-forwarded-host") ||
            MG_STR_EQ_CI(n, "x-forwarded-for"))
            continue;
        if (e->n && mg_edits_find(e, n.p, n.n))
            continue;
        mg_buf_append(o, n.p, n.n);
        mg_buf_append(o, ": ", 2);
        mg_buf_append(o, v.p, v.n);
        mg_buf_append(o, "\r\n", 2);
    }
    if (!(e->n && mg_edits_find(e, "x-forwarded-for", 15))) {
        mg_buf_append(o, "X-Forwarded-For: ", 17);
        for (int i = mg_h1_find(h, "x-forwarded-for", 15, 0); i >= 0;
             i = mg_h1_find(h, "x-forwarded-for", 15, i + 1)) {
            mg_str_t v = mg_h1_value(h, i);
            if (v.n) {
                mg_buf_append(o, v.p, v.n);
                mg_buf_append(o, ", ", 2);
            }
        }
        /* the peer (after a PROXY header), not the client found in
         * X-Forwarded-For: the chain keeps every hop once */
        mg_buf_puts(o, r->conn ? r->conn->remote : r->remote);
        mg_buf_append(o, "\r\n", 2);
    }
    if (!(e->n && mg_edits_find(e, "x-forwarded-proto", 17)))
        mg_buf_puts(o, r->https ? "X-Forwarded-Proto: https\r\n"
                                   : "X-Forwarded-Proto: http\r\n");
    if (!(e->n && mg_edits_find(e, "x-forwarded-host", 16))) {
        int hi = mg_h1_find(h, "host", 4, 0);
        if (hi >= 0) {
            mg_str_t host = mg_h1_value(h, hi);
            mg_buf_append(o, "X-Forwarded-Host: ", 18);
            mg_buf_append(o, host.p, host.n);
            mg_buf_append(o, "\r\n", 2);
        }
    }
    for (int i = 0; i < e->n; i++) {
        mg_str_t n = { e->v[i].name, e->v[i].name_len };
        if (e->v[i].value == NULL || is_framing(n) || is_hop_by_hop(n) ||
            MG_STR_EQ_CI(n, "expect"))
            continue;
        mg_buf_append(o, n.p, n.n);
        mg_buf_append(o, ": ", 2);
        mg_buf_append(o, e->v[i].value, e->v[i].value_len);
        mg_buf_append(o, "\r\n", 2);
    }
    if (h->flags & MG_H1_CHUNKED) {
        r->req_chunked = 1;
        mg_buf_puts(o, "Transfer-Encoding: chunked\r\n");
    } else if (h->flags & MG_H1_HAS_CL) {
        mg_buf_append(o, "Content-Length: ", 16);
        mg_buf_putu(o, h->content_length);
        mg_buf_append(o, "\r\n", 2);
    }
    mg_buf_append(o, "\r\n", 2);
}

/* --- response side -------------------------------------------------------- */

/* A deep copy of a response head, for response and log plugins. */
static mg_h1_head_t *head_copy(const mg_h1_head_t *h)
{
    mg_h1_head_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    *c = *h;
    c->store = (mg_buf_t){ 0 };
    c->hdrs = NULL;
    c->hcap = c->nhdrs;
    if (mg_buf_append(&c->store, h->store.base, h->store.off + h->store.len) != MG_OK)
        goto fail;
    if (h->nhdrs) {
        c->hdrs = malloc(sizeof *c->hdrs * (size_t)h->nhdrs);
        if (c->hdrs == NULL)
            goto fail;
        memcpy(c->hdrs, h->hdrs, sizeof *c->hdrs * (size_t)h->nhdrs);
    }
    return c;
fail:
    mg_h1_head_free(c);
    free(c);
    return NULL;
}

static int is_framing(mg_str_t n)
{
    return MG_STR_EQ_CI(n, "content-length") || MG_STR_EQ_CI(n, "transfer-encoding") ||
           MG_STR_EQ_CI(n, "connection");
}

/* Writes the client's response head: the upstream's status and headers
 * (minus hop-by-hop ones), Lua's edits, and our framing. */
static void write_head(mg_req_t *r, const mg_h1_head_t *h, const mg_edits_t *e, mg_buf_t *o)
{
    size_t before = o->len;
    mg_buf_append(o, "HTTP/1.1 ", 9);
    mg_buf_putu(o, (unsigned)r->status);
    mg_buf_append(o, " ", 1);
    if (h->reason_len && r->status == h->status)
        mg_buf_append(o, h->store.base + h->reason_off, h->reason_len);
    else
        mg_buf_puts(o, mg_status_reason(r->status));
    mg_buf_append(o, "\r\n", 2);
    conn_tokens_t ct;
    connection_tokens(h, &ct);
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        if (!forwardable(h, &ct, n))
            continue;
        if (e && e->n && !is_framing(n) && mg_edits_find(e, n.p, n.n))
            continue;
        mg_buf_append(o, n.p, n.n);
        mg_buf_append(o, ": ", 2);
        mg_buf_append(o, v.p, v.n);
        mg_buf_append(o, "\r\n", 2);
    }
    for (int i = 0; e && i < e->n; i++) {
        mg_str_t n = { e->v[i].name, e->v[i].name_len };
        if (e->v[i].value == NULL || is_framing(n) || is_hop_by_hop(n))
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
    if (r->resp_chunked)
        mg_buf_append(o, "Transfer-Encoding: chunked\r\n", 28);
    if (r->status == 101) {
        /* the switch: the upstream's Upgrade (hop-by-hop, so not copied
         * above) and our Connection: upgrade */
        int ui = mg_h1_find(h, "upgrade", 7, 0);
        mg_str_t uv = ui >= 0 ? mg_h1_value(h, ui) : mg_req_upgrade(r);
        mg_buf_append(o, "Upgrade: ", 9);
        mg_buf_append(o, uv.p, uv.n);
        mg_buf_puts(o, "\r\nConnection: upgrade\r\n\r\n");
    } else {
        mg_req_end_head(r, o);
    }
    r->resp_bytes += o->len - before;
}

/* The final response head (1xx interim ones are dropped by h1client). */
static int r_on_head(void *ud, mg_h1_head_t *h)
{
    mg_req_t *r = ud;
    if (h->status == 101 && (!r->upgrading || !r->body_done)) {
        /* a switch nobody asked for (or before the request ended) */
        mg_h1c_reason(r->up, MG_H1C_INVALID, "upstream switched protocols");
        return -1;
    }
    mg_conn_t *c = r->conn;
    if (c == NULL)
        return -1;
    int head_req = r->head->method == HTTP_HEAD;
    int no_body = head_req || h->status == 204 || h->status == 304 || h->status == 101;
    r->status = h->status;
    if (!no_body && !(h->flags & MG_H1_HAS_CL)) {
        if (r->http10)
            r->resp_close = 1; /* HTTP/1.0 clients read to EOF */
        else
            r->resp_chunked = 1;
    }
    if ((r->hold_head || r->keep_res_head) && r->res_head == NULL) {
        r->res_head = head_copy(h);
        if (r->res_head == NULL) {
            mg_h1c_reason(r->up, MG_H1C_NOMEM, "out of memory");
            return -1;
        }
    }
    if (r->hold_head) {
        /* response plugins edit the head before it goes out */
        r->held = 1;
        mg_req_wake(r);
        return (head_req || h->status == 101) ? 1 : 0;
    }
    size_t mark = c->wbuf.len;
    write_head(r, h, NULL, &c->wbuf);
    if (c->wbuf.failed) { /* nothing of the head goes out (buf.h) */
        mg_buf_rollback(&c->wbuf, mark);
        r->resp_bytes = 0;
        mg_h1c_reason(r->up, MG_H1C_NOMEM, "out of memory");
        return -1;
    }
    r->resp_started = 1;
    return (head_req || h->status == 101) ? 1 : 0;
}

static int r_on_body(void *ud, const char *p, size_t n)
{
    mg_req_t *r = ud;
    if (r->conn == NULL)
        return -1;
    mg_buf_t *o = r->held ? &r->hold : &r->conn->wbuf;
    size_t before = o->len;
    if (r->resp_chunked)
        mg_h1_put_chunk(o, p, n);
    else
        mg_buf_append(o, p, n);
    if (o->failed) { /* the rest cannot follow a missing piece: the exchange fails */
        mg_h1c_reason(r->up, MG_H1C_NOMEM, "out of memory");
        return -1;
    }
    if (!r->held)
        r->resp_bytes += o->len - before;
    r->resp_body_bytes += n;
    if (o->len > MG_CONN_WBUF_HIGH)
        mg_h1c_pause_read(r->up, 1);
    return 0;
}

static int r_on_done(void *ud)
{
    mg_req_t *r = ud;
    if (r->resp_chunked && r->held) {
        if (mg_buf_append(&r->hold, "0\r\n\r\n", 5) != MG_OK)
            return -1;
    } else if (r->resp_chunked && r->conn) {
        if (mg_buf_append(&r->conn->wbuf, "0\r\n\r\n", 5) != MG_OK)
            return -1;
        r->resp_bytes += 5;
    }
    return 0;
}

/* --- upgrades: the exchange becomes a tunnel ------------------------------- */

/* The tunnel ended: the request ends with it (access log, log phase),
 * with the bytes relayed each way. */
static void tunnel_done(void *ud, const uint64_t bytes[2], const char *why)
{
    (void)why;
    mg_req_t *r = ud;
    r->tun_bytes[MG_TUN_UP] = bytes[MG_TUN_UP];
    r->tun_bytes[MG_TUN_DOWN] = bytes[MG_TUN_DOWN];
    r->resp_bytes += bytes[MG_TUN_DOWN];
    r->loop->stats.active++; /* a tunnel is not a request in flight; finish counts it out */
    mg_req_finish(r);
}

/* The 101 head is queued for the client: both connections leave their
 * owners (the upstream one never returns to the pool) and become one
 * tunnel. in[0..n): bytes the upstream sent after its 101. */
static void start_tunnel(mg_req_t *r, const char *in, size_t n)
{
    mg_loop_t *loop = r->loop;
    mg_h1c_t *x = r->up;
    mg_conn_t *c = r->conn;
    mg_tun_end_t ce = { 0 }, ue = { 0 };
    r->up = NULL;
    r->conn = NULL;
    r->tunnel = 1;
    r->resp_started = 1;
    mg_h1c_detach(x, &ue.fd, &ue.ssl, &ue.out);
    ue.in = in;
    ue.in_n = n;
    mg_conn_detach(c, &ce.fd, &ce.tls, &ce.out, &ce.in, &ce.in_n, &ce.eof);
    mg_buf_free(&r->uhead); /* no retry from here: an idle tunnel keeps no buffer */
    loop->stats.active--;
    double idle = r->gen->cfg->limits.tunnel_idle_timeout;
    if (mg_tun_start(loop, &ce, &ue, r->websocket, idle, tunnel_done, r) == NULL) {
        static const uint64_t none[2] = { 0, 0 };
        mg_log_error("out of memory starting a tunnel");
        tunnel_done(r, none, "out of memory");
    }
}

/* The upstream answered 101 and its head is parsed; in[0..n) is what
 * followed it in the same read. */
static void x_on_switch(void *ud, const char *in, size_t n)
{
    mg_req_t *r = ud;
    if (r->held) {
        /* response plugins run first: the bytes wait with the head */
        if (mg_buf_append(&r->hold, in, n) != MG_OK) {
            mg_h1c_t *x = r->up;
            r->up = NULL;
            mg_h1c_cancel(x);
            proxy_fail(r, FAIL_RESET, "out of memory");
            return;
        }
        mg_h1c_pause_read(r->up, 1);
        return;
    }
    if (r->conn == NULL)
        return;
    start_tunnel(r, in, n);
}

/* The response is complete and queued; the connection is back in its
 * pool (or closed). */
static void x_on_done(void *ud)
{
    mg_req_t *r = ud;
    mg_conn_t *c = r->conn;
    r->up = NULL;
    if (r->held) {
        r->resp_complete = 1; /* finished when the Lua response phase sends it */
    } else {
        if (r->resp_close && c)
            c->closing = 1;
        mg_req_finish(r);
    }
    if (c && !c->closed)
        mg_conn_flush(c);
}

/* A read's response bytes are queued for the client: send them. */
static void x_on_read(void *ud)
{
    mg_req_t *r = ud;
    mg_conn_t *c = r->conn;
    if (c && !c->closed)
        mg_conn_flush(c);
}

/* The request body's backpressure: the client's reading follows the
 * upstream queue. */
static void x_on_sendable(void *ud, int ok)
{
    mg_req_t *r = ud;
    if (r->conn && (ok ? r->conn->read_paused : 1))
        mg_conn_pause_read(r->conn, !ok);
}

void mg_proxy_send_held(mg_req_t *r)
{
    if (!r->held || r->done)
        return;
    r->held = 0;
    r->resp_started = 1;
    mg_conn_t *c = r->conn;
    if (c == NULL)
        return;
    size_t mark = c->wbuf.len;
    int switched = r->up && r->up->resp_done && r->upgrading && r->res_head &&
                   r->res_head->status == 101;
    if (switched && r->status != 101)
        r->keepalive = 0; /* a plugin turned the switch down: the body ends at close */
    write_head(r, r->res_head, &r->res_edits, &c->wbuf);
    if (switched) {
        if (c->wbuf.failed) { /* the head does not go out half (buf.h) */
            mg_buf_rollback(&c->wbuf, mark);
            mg_buf_free(&r->hold);
            mg_log_error("out of memory sending a held response; closing the connection");
            mg_conn_close(c); /* aborts r */
            return;
        }
        if (r->status == 101) {
            start_tunnel(r, mg_buf_data(&r->hold), r->hold.len);
        } else {
            mg_proxy_abort(r);
            mg_req_finish(r);
        }
        mg_buf_free(&r->hold);
        return;
    }
    if (r->hold.len) {
        r->resp_bytes += r->hold.len;
        mg_buf_append(&c->wbuf, mg_buf_data(&r->hold), r->hold.len);
        mg_buf_free(&r->hold);
    }
    if (c->wbuf.failed) { /* neither head nor body goes out half (buf.h) */
        mg_buf_rollback(&c->wbuf, mark);
        mg_log_error("out of memory sending a held response; closing the connection");
        mg_conn_close(c); /* aborts r */
        return;
    }
    if (r->resp_complete) {
        if (r->resp_close)
            c->closing = 1;
        mg_req_finish(r);
        return;
    }
    if (r->up)
        mg_h1c_pause_read(r->up, 0);
    mg_conn_flush(c);
}

/* --- starting an exchange ------------------------------------------------- */

static void proxy_attach(mg_req_t *r);
static void client_drained(mg_req_t *r);

static void respond_fail(mg_req_t *r, int kind, const char *why)
{
    int status = (kind == FAIL_TIMEOUT || kind == FAIL_CONNECT_TIMEOUT) ? 504 : 502;
    mg_log_warn("upstream %s for %.*s: %s", r->upstream_addr[0] ? r->upstream_addr : "-",
                (int)r->path.n, r->path.p, why);
    mg_req_error(r, status, status == 504 ? "upstream timed out" : "bad gateway");
}

/* The exchange failed (r->up already NULL, its connection closed): the
 * client gets the failure, or is cut off when the response has started. */
static void proxy_fail(mg_req_t *r, int kind, const char *why)
{
    if (r->resp_started) {
        mg_log_warn("upstream %s: %s after the response started", r->upstream_addr, why);
        if (r->conn)
            mg_conn_close(r->conn); /* aborts r */
        else
            mg_req_abort(r);
        return;
    }
    respond_fail(r, kind, why);
}

/* h1client's failure (a stale pooled connection was already replayed
 * there): a failed connect is retried on the next server where that is
 * allowed, with the bytes it did not send. */
static void x_on_error(void *ud, const mg_h1c_error_t *e)
{
    mg_req_t *r = ud;
    mg_loop_t *loop = r->loop;
    mg_h1c_t *x = &r->exchange;
    r->up = NULL;
    int kind = e->code == MG_H1C_TIMEOUT ? (e->connecting ? FAIL_CONNECT_TIMEOUT : FAIL_TIMEOUT)
               : e->connecting           ? FAIL_CONNECT
               : e->code == MG_H1C_INVALID || e->code == MG_H1C_NOMEM ? FAIL_GARBAGE
                                                                       : FAIL_RESET;
    mg_up_t *up = x->server->up;
    const mg_cfg_upstream_t *cfg = up->cfg;
    double now = ev_now(loop->ev);
    if (kind == FAIL_CONNECT || kind == FAIL_CONNECT_TIMEOUT) {
        loop->stats.up_connect_errors++;
        if (mg_up_server_failed(up, (int)(x->server - up->servers), now))
            mg_log_warn("upstream %s: server %s marked down for %gs (%s)", cfg->name,
                        x->server->addr->text, cfg->fail_timeout, e->why);
    }
    if (kind == FAIL_TIMEOUT || kind == FAIL_CONNECT_TIMEOUT)
        loop->stats.up_timeouts++;
    /* a retry needs a server that is not down; else the client gets this
     * failure (502/504), not the 503 of a request that found all down */
    if (e->connecting && !r->resp_started && r->tries < cfg->retries && mg_up_any_up(up, now)) {
        r->tries++;
        loop->stats.up_retries++;
        mg_log_info("upstream %s: %s; retrying", r->upstream_addr, e->why);
        proxy_attach(r);
        return;
    }
    mg_h1c_cancel(x);
    proxy_fail(r, kind, e->why);
}

static const mg_h1c_cbs_t x_cbs = {
    .on_head = r_on_head,
    .on_body = r_on_body,
    .on_end = r_on_done,
    .on_done = x_on_done,
    .on_switch = x_on_switch,
    .on_error = x_on_error,
    .on_read = x_on_read,
    .on_sendable = x_on_sendable,
};

/* Gets a connection for r and starts sending (the head, or the bytes a
 * failed connect did not send). */
static void proxy_attach(mg_req_t *r)
{
    mg_up_t *up = &r->gen->ups[r->upstream];
    uint32_t hash = up->cfg->balance == MG_BAL_HASH ? mg_req_hash(r, up->cfg->hash_key) : 0;
    for (;;) {
        int s = mg_up_pick(up, hash, r->tried);
        if (s < 0 && r->tried && up->nservers > 0) {
            /* every server tried once: allow another round for retries */
            r->tried = 0;
            s = mg_up_pick(up, hash, r->tried);
        }
        if (s < 0) {
            mg_h1c_cancel(&r->exchange);
            mg_req_error(r, 503, "no healthy upstream");
            return;
        }
        if (s < 64)
            r->tried |= (uint64_t)1 << s;
        const char *at = up->servers[s].addr->text;
        size_t an = strnlen(at, sizeof r->upstream_addr - 1);
        memcpy(r->upstream_addr, at, an); /* for the log: no printf per request */
        r->upstream_addr[an] = '\0';
        const char *err = NULL;
        int rc = mg_h1c_attach(&r->exchange, up, s, &err);
        mg_log_debug("upstream %s: server %s picked (try %d): %s", up->cfg->name,
                     r->upstream_addr, r->tries + 1,
                     rc != MG_OK ? (err ? err : "connect failed")
                     : r->exchange.u->connecting ? "connecting" : "idle keep-alive connection");
        if (rc == MG_ENOMEM) {
            mg_h1c_cancel(&r->exchange);
            mg_log_error("out of memory queueing the upstream request");
            mg_req_error(r, 500, "internal error");
            return;
        }
        if (rc != MG_OK) {
            r->loop->stats.up_connect_errors++;
            if (r->tries < up->cfg->retries) {
                r->tries++;
                r->loop->stats.up_retries++;
                continue;
            }
            mg_h1c_cancel(&r->exchange);
            respond_fail(r, FAIL_CONNECT, err ? err : "connect failed");
            return;
        }
        r->up = &r->exchange;
        return;
    }
}

static int idempotent(int method)
{
    return method == HTTP_GET || method == HTTP_HEAD || method == HTTP_PUT ||
           method == HTTP_DELETE || method == HTTP_OPTIONS || method == HTTP_TRACE;
}

void mg_proxy_start(mg_req_t *r, int upstream)
{
    r->upstream = upstream;
    r->on_drained = client_drained;
    build_request_head(r);
    if (r->uhead.failed) { /* one check for the whole head (buf.h) */
        mg_buf_reset(&r->uhead);
        mg_log_error("out of memory building the upstream request head");
        mg_req_error(r, 500, "internal error");
        return;
    }
    const mg_cfg_upstream_t *cfg = r->gen->ups[upstream].cfg;
    mg_h1c_t *x = &r->exchange;
    mg_h1c_init(x, &x_cbs, r, &r->uhead, r->uhead.len, r->body_done && !r->has_body);
    x->chunked = r->req_chunked;
    x->idempotent = idempotent(r->head->method);
    x->connect_timeout = cfg->connect_timeout;
    x->read_timeout = cfg->read_timeout;
    proxy_attach(r);
}

void mg_proxy_body(mg_req_t *r, const char *p, size_t n)
{
    mg_h1c_send(r->up, p, n);
}

void mg_proxy_body_done(mg_req_t *r)
{
    mg_h1c_end(r->up);
}

/* r->on_drained: the client's write queue drained, resume reading the
 * upstream. */
static void client_drained(mg_req_t *r)
{
    if (r->up)
        mg_h1c_pause_read(r->up, 0);
}

void mg_proxy_abort(mg_req_t *r)
{
    mg_h1c_t *x = r->up;
    if (x == NULL)
        return;
    r->up = NULL;
    mg_h1c_cancel(x);
}
