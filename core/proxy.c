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
#include "tunnel.h"
#include "upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define UP_WBUF_HIGH (256 * 1024)
#define UP_WBUF_LOW (64 * 1024)
#define MAX_STALE_RETRIES 4
/* 1xx responses allowed before the final one (100 Continue, a few 103s) */
#define MAX_INTERIM 16

enum { FAIL_CONNECT, FAIL_CONNECT_TIMEOUT, FAIL_RESET, FAIL_TIMEOUT, FAIL_GARBAGE };

static void up_on_read(mg_upconn_t *u);
static void up_on_write(mg_upconn_t *u);
static void up_on_timer(mg_upconn_t *u);
static const mg_upconn_ops_t up_ops = { up_on_read, up_on_write, up_on_timer };
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

static mg_h1_head_t *r_on_begin(void *ud)
{
    mg_upconn_t *u = ud;
    return &u->head;
}

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

static int r_on_head(void *ud, mg_h1_head_t *h)
{
    mg_upconn_t *u = ud;
    mg_req_t *r = u->req;
    if (r == NULL)
        return -1;
    if (h->status == 101 && (!r->upgrading || !r->body_done)) {
        /* a switch nobody asked for (or before the request ended) */
        u->h1.err_status = 502;
        u->h1.err_reason = "upstream switched protocols";
        return -1;
    }
    if (h->status >= 100 && h->status < 200 && h->status != 101) {
        /* Interim responses are dropped, the final one follows. Every
         * byte re-arms the read timeout, so an upstream sending 100s
         * forever would hold the request forever: bound them. */
        if (++u->interim > MAX_INTERIM) {
            u->h1.err_status = 502;
            u->h1.err_reason = "too many interim responses";
            return -1;
        }
        return 0;
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
            u->h1.err_status = 500;
            u->h1.err_reason = "out of memory";
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
        u->h1.err_status = 500;
        u->h1.err_reason = "out of memory";
        return -1;
    }
    r->resp_started = 1;
    return (head_req || h->status == 101) ? 1 : 0;
}

static void pause_upstream(mg_upconn_t *u, int pause)
{
    if (!pause != !u->read_paused)
        mg_up_pause_read(u, pause);
}

static int r_on_body(void *ud, const char *p, size_t n)
{
    mg_upconn_t *u = ud;
    mg_req_t *r = u->req;
    if (r == NULL || r->conn == NULL)
        return -1;
    mg_buf_t *o = r->held ? &r->hold : &r->conn->wbuf;
    size_t before = o->len;
    if (r->resp_chunked) {
        mg_buf_putx(o, n);
        mg_buf_append(o, "\r\n", 2);
        mg_buf_append(o, p, n);
        mg_buf_append(o, "\r\n", 2);
    } else {
        mg_buf_append(o, p, n);
    }
    if (o->failed) { /* the rest cannot follow a missing piece: the exchange fails */
        u->h1.err_reason = "out of memory";
        return -1;
    }
    if (!r->held)
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
    if (!r->resp_started && !r->held)
        return 1; /* an interim 1xx ended: parse the final response */
    if (r->resp_chunked && r->held) {
        if (mg_buf_append(&r->hold, "0\r\n\r\n", 5) != MG_OK)
            return -1;
    } else if (r->resp_chunked && r->conn) {
        if (mg_buf_append(&r->conn->wbuf, "0\r\n\r\n", 5) != MG_OK)
            return -1;
        r->resp_bytes += 5;
    }
    u->resp_done = 1;
    return 0;
}

static const mg_h1_cb_t resp_cbs = { r_on_begin, r_on_head, r_on_body, r_on_done };

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
    mg_upconn_t *u = r->up;
    mg_conn_t *c = r->conn;
    mg_tun_end_t ce = { 0 }, ue = { 0 };
    r->up = NULL;
    r->conn = NULL;
    r->tunnel = 1;
    r->resp_started = 1;
    mg_up_detach(u, &ue.fd, &ue.ssl, &ue.out);
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
static void switched(mg_upconn_t *u, const char *in, size_t n)
{
    mg_req_t *r = u->req;
    if (r->held) {
        /* response plugins run first: the bytes wait with the head */
        if (mg_buf_append(&r->hold, in, n) != MG_OK) {
            up_fail(u, FAIL_RESET, "out of memory");
            return;
        }
        pause_upstream(u, 1);
        return;
    }
    if (r->conn == NULL)
        return;
    start_tunnel(r, in, n);
}

/* The response is complete and queued: end the exchange. */
static void exchange_done(mg_upconn_t *u, int leftover)
{
    mg_req_t *r = u->req;
    int reusable = !leftover && (u->head.flags & MG_H1_KEEPALIVE) && r->body_done &&
                   u->wbuf.len == 0 && !u->wbuf.failed && !u->closed;
    r->up = NULL;
    u->req = NULL;
    if (reusable)
        mg_up_release(u);
    else
        mg_up_conn_close(u);
    if (r->held) {
        r->resp_complete = 1; /* finished when the Lua response phase sends it */
        return;
    }
    if (r->resp_close && r->conn)
        r->conn->closing = 1;
    mg_req_finish(r);
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
        pause_upstream(r->up, 0);
    mg_conn_flush(c);
}

/* --- I/O ------------------------------------------------------------------ */

static void arm_timer(mg_upconn_t *u, double secs)
{
    mg_up_arm_timer(u, secs);
}

static void up_on_read(mg_upconn_t *u)
{
    mg_loop_t *loop = u->loop;
    mg_req_t *r = u->req;
    ssize_t n = mg_up_recv(u, loop->scratch, loop->scratch_cap);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        up_fail(u, FAIL_RESET, strerror(errno));
        return;
    }
    u->last_io = ev_now(loop->ev);
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
    if (u->resp_done && r->upgrading && r->status == 101) {
        switched(u, loop->scratch + k, (size_t)(n - k));
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
        ssize_t n = mg_up_send(u, mg_buf_data(&u->wbuf), u->wbuf.len);
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
    mg_up_want_write(u, u->wbuf.len > 0);
    mg_req_t *r = u->req;
    if (r && r->conn && r->conn->read_paused && u->wbuf.len < UP_WBUF_LOW)
        mg_conn_pause_read(r->conn, 0);
}

static void connected(mg_upconn_t *u)
{
    mg_req_t *r = u->req;
    mg_log_debug("upstream %s: connection ready, sending the request",
                 r ? r->upstream_addr : "?");
    u->connecting = 0;
    mg_up_server_ok(u->server);
    u->last_io = ev_now(u->loop->ev);
    arm_timer(u, ucfg(u)->read_timeout);
    if (!u->rio_on && !u->read_paused)
        mg_up_pause_read(u, 0);
    up_flush(u);
}

static void up_on_write(mg_upconn_t *u)
{
    if (u->connecting) {
        /* the TCP connect, then (TLS) the handshake: both are "connect" */
        char err[256];
        int sys_errno;
        int rc = mg_up_connect_step(u, err, sizeof err, &sys_errno);
        if (rc == MG_EAGAIN)
            return;
        if (rc != MG_OK) {
            up_fail(u, FAIL_CONNECT, err);
            return;
        }
        connected(u);
        return;
    }
    up_flush(u);
}

static void up_on_timer(mg_upconn_t *u)
{
    struct ev_loop *ev = u->loop->ev;
    if (u->connecting) {
        up_fail(u, FAIL_CONNECT_TIMEOUT,
                u->handshaking ? "tls handshake timed out" : "connect timed out");
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
static void client_drained(mg_req_t *r);

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
    mg_up_t *up = u->server->up;
    double now = ev_now(loop->ev);
    if (kind == FAIL_CONNECT || kind == FAIL_CONNECT_TIMEOUT) {
        loop->stats.up_connect_errors++;
        if (mg_up_server_failed(up, (int)(u->server - up->servers), now))
            mg_log_warn("upstream %s: server %s marked down for %gs (%s)", cfg->name,
                        u->server->addr->text, cfg->fail_timeout, why);
    }
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
    /* a retry needs a server that is not down; else the client gets this
     * failure (502/504), not the 503 of a request that found all down */
    if (replayable && (kind == FAIL_CONNECT || kind == FAIL_CONNECT_TIMEOUT) &&
        r->tries < cfg->retries && mg_up_any_up(up, now)) {
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
    uint32_t hash = up->cfg->balance == MG_BAL_HASH ? mg_req_hash(r, up->cfg->hash_key) : 0;
    for (;;) {
        int s = mg_up_pick(up, hash, r->tried);
        if (s < 0 && r->tried && up->nservers > 0) {
            /* every server tried once: allow another round for retries */
            r->tried = 0;
            s = mg_up_pick(up, hash, r->tried);
        }
        if (s < 0) {
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
        mg_upconn_t *u = mg_up_get(up, s, r, &up_ops, &err);
        mg_log_debug("upstream %s: server %s picked (try %d): %s", up->cfg->name,
                     r->upstream_addr, r->tries + 1,
                     u == NULL ? (err ? err : "connect failed")
                     : u->connecting ? "connecting" : "idle keep-alive connection");
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
        const mg_buf_t *head = carry ? carry : &r->uhead;
        if (mg_buf_append(&u->wbuf, mg_buf_data(head), head->len) != MG_OK) {
            mg_up_conn_close(u);
            mg_log_error("out of memory queueing the upstream request");
            mg_req_error(r, 500, "internal error");
            return;
        }
        r->up = u;
        mg_h1_head_reset(&u->head);
        mg_h1_init(&u->h1, HTTP_RESPONSE, &resp_cbs, u, 0, 64 * 1024);
        u->interim = 0;
        if (u->connecting) {
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
    r->on_drained = client_drained;
    build_request_head(r);
    if (r->uhead.failed) { /* one check for the whole head (buf.h) */
        mg_buf_reset(&r->uhead);
        mg_log_error("out of memory building the upstream request head");
        mg_req_error(r, 500, "internal error");
        return;
    }
    proxy_attach(r, NULL);
}

void mg_proxy_body(mg_req_t *r, const char *p, size_t n)
{
    mg_upconn_t *u = r->up;
    if (r->req_chunked) {
        mg_buf_putx(&u->wbuf, n);
        mg_buf_append(&u->wbuf, "\r\n", 2);
        mg_buf_append(&u->wbuf, p, n);
        mg_buf_append(&u->wbuf, "\r\n", 2);
    } else {
        mg_buf_append(&u->wbuf, p, n);
    }
    if (u->wbuf.failed) { /* a piece is missing: the request cannot go on */
        up_fail(u, FAIL_RESET, "out of memory queueing the request body");
        return;
    }
    if (u->wbuf.len > UP_WBUF_HIGH && r->conn)
        mg_conn_pause_read(r->conn, 1);
    if (!u->connecting)
        up_flush(u);
}

void mg_proxy_body_done(mg_req_t *r)
{
    mg_upconn_t *u = r->up;
    if (r->req_chunked && mg_buf_append(&u->wbuf, "0\r\n\r\n", 5) != MG_OK) {
        up_fail(u, FAIL_RESET, "out of memory queueing the request body");
        return;
    }
    if (!u->connecting)
        up_flush(u);
}

/* r->on_drained: the client's write queue drained, resume reading the
 * upstream. */
static void client_drained(mg_req_t *r)
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
