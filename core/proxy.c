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
#include "h1client.h"
#include "h1fields.h"
#include "h2client.h"
#include "log.h"
#include "metrics.h"
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

/* --- the two exchange engines --------------------------------------------- */
/* An upstream with protocol = "h2" runs its exchanges on h2client.c
 * (r->h2x), any other on h1client.c (r->exchange); both call the same
 * callbacks below. */

static void up_reason(mg_req_t *r, mg_h1c_err_t code, const char *why)
{
    if (r->h2x)
        mg_h2u_reason(r->h2x, code, why);
    else
        mg_h1c_reason(&r->exchange, code, why);
}

static void up_pause(mg_req_t *r, int pause)
{
    if (r->up == NULL)
        return;
    if (r->h2x)
        mg_h2u_pause_read(r->h2x, pause);
    else
        mg_h1c_pause_read(r->up, pause);
}

/* Ends the exchange without callbacks (r->up already NULL). */
static void up_end(mg_req_t *r)
{
    if (r->h2x) {
        mg_h2u_free(r->h2x);
        r->h2x = NULL;
    } else {
        mg_h1c_cancel(&r->exchange);
    }
}

/* --- the request head for the upstream ------------------------------------ */

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
    if (r->gen->ups[r->upstream].cfg->h2)
        r->upgrading = 0; /* no 101 over HTTP/2: it goes up as plain HTTP */
    r->websocket = r->upgrading && MG_STR_EQ_CI(proto, "websocket");
    if (r->upgrading) {
        mg_buf_puts(o, "Connection: upgrade\r\nUpgrade: ");
        mg_buf_append(o, proto.p, proto.n);
        mg_buf_append(o, "\r\n", 2);
    }
    mg_h1f_tokens_t ct;
    mg_h1f_tokens(h, &ct);
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t n = mg_h1_name(h, i), v = mg_h1_value(h, i);
        if (!mg_h1f_forwardable(h, &ct, n) || mg_h1f_framing(n) || MG_STR_EQ_CI(n, "expect") ||
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
        mg_buf_puts(o, r->peer);
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
        if (e->v[i].value == NULL || mg_h1f_framing(n) || mg_h1f_hop_by_hop(n) ||
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

/* Queues the client's response head: h's status line and fields, with
 * the edits e (or NULL); the writer frames it. MG_ENOMEM: nothing was
 * queued. */
static int send_head(mg_req_t *r, const mg_h1_head_t *h, const mg_edits_t *e)
{
    mg_resp_head_t rh = { .status = r->status, .fields = h, .edits = e };
    if (h->reason_len && r->status == h->status)
        rh.reason = (mg_str_t){ h->store.base + h->reason_off, h->reason_len };
    ssize_t k = r->w->ops->head(r->w, r, &rh, NULL, 0);
    if (k < 0)
        return MG_ENOMEM;
    r->resp_bytes += (uint64_t)k;
    return MG_OK;
}

/* The final response head (1xx interim ones are dropped by h1client). */
static int r_on_head(void *ud, mg_h1_head_t *h)
{
    mg_req_t *r = ud;
    if (h->status == 101 && (!r->upgrading || !r->body_done)) {
        /* a switch nobody asked for (or before the request ended) */
        up_reason(r, MG_H1C_INVALID, "upstream switched protocols");
        return -1;
    }
    if (r->w == NULL)
        return -1;
    int head_req = r->head->method == HTTP_HEAD;
    r->status = h->status;
    int hold = r->rs == MG_RS_HOLDING;
    if ((hold || r->keep_res_head) && r->res_head == NULL) {
        r->res_head = head_copy(h);
        if (r->res_head == NULL) {
            up_reason(r, MG_H1C_NOMEM, "out of memory");
            return -1;
        }
    }
    if (mg_rs_upstream_head(r)) {
        /* response plugins edit the head before it goes out */
        mg_req_wake(r);
        return (head_req || h->status == 101) ? 1 : 0;
    }
    if (send_head(r, h, NULL) != MG_OK) { /* nothing of the head went out */
        r->resp_bytes = 0;
        up_reason(r, MG_H1C_NOMEM, "out of memory");
        return -1;
    }
    mg_rs_send(r);
    return (head_req || h->status == 101) ? 1 : 0;
}

static int r_on_body(void *ud, const char *p, size_t n)
{
    mg_req_t *r = ud;
    if (r->w == NULL)
        return -1;
    if (mg_rs_held(r)) { /* raw bytes: framed when the held head goes out */
        if (mg_buf_append(&r->hold, p, n) != MG_OK) {
            up_reason(r, MG_H1C_NOMEM, "out of memory");
            return -1;
        }
        r->resp_body_bytes += n;
        if (r->hold.len > MG_WRITER_HIGH)
            up_pause(r, 1);
        return 0;
    }
    ssize_t k = r->w->ops->body(r->w, p, n);
    if (k < 0) { /* the rest cannot follow a missing piece: the exchange fails */
        up_reason(r, MG_H1C_NOMEM, "out of memory");
        return -1;
    }
    r->resp_bytes += (uint64_t)k;
    r->resp_body_bytes += n;
    if (r->w->full)
        up_pause(r, 1);
    return 0;
}

static int r_on_done(void *ud)
{
    mg_req_t *r = ud;
    const mg_h1_head_t *t = r->h2x ? mg_h2u_trailers(r->h2x) : NULL;
    if (mg_rs_sent(r) && r->w) {
        ssize_t k = r->w->ops->end(r->w, t);
        if (k < 0)
            return -1;
        r->resp_bytes += (uint64_t)k;
    } else if (t && r->res_trailers == NULL) {
        /* a held response: its trailers go out with it */
        r->res_trailers = head_copy(t);
        if (r->res_trailers == NULL) {
            up_reason(r, MG_H1C_NOMEM, "out of memory");
            return -1;
        }
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
    mg_writer_t *w = r->w;
    mg_tun_end_t ce = { 0 }, ue = { 0 };
    r->up = NULL;
    r->w = NULL;
    r->src = NULL;
    r->tunnel = 1;
    mg_rs_send(r);
    mg_h1c_detach(x, &ue.fd, &ue.ssl, &ue.out);
    ue.in = in;
    ue.in_n = n;
    w->ops->take_over(w, &ce);
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
    if (mg_rs_held(r)) {
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
    if (r->w == NULL)
        return;
    start_tunnel(r, in, n);
}

/* The response is complete and queued; the connection is back in its
 * pool (or closed). */
static void x_on_done(void *ud)
{
    mg_req_t *r = ud;
    r->up = NULL;
    if (r->h2x) {
        mg_h2u_free(r->h2x); /* h2client touches it no more */
        r->h2x = NULL;
    }
    mg_writer_t *w = r->w;
    if (mg_rs_held(r)) {
        mg_rs_held_complete(r); /* finished when the Lua response phase sends it */
    } else {
        mg_req_finish(r);
    }
    if (w)
        w->ops->flush(w);
}

/* A read's response bytes are queued for the client: send them. */
static void x_on_read(void *ud)
{
    mg_req_t *r = ud;
    if (r->w)
        r->w->ops->flush(r->w);
}

/* The request body's backpressure: the client's reading follows the
 * upstream queue. */
static void x_on_sendable(void *ud, int ok)
{
    mg_req_pause_body(ud, !ok);
}

/* The held response could not be queued: the connection ends. */
static void held_failed(mg_req_t *r, mg_writer_t *w)
{
    mg_buf_free(&r->hold);
    mg_log_error("out of memory sending a held response; closing the connection");
    w->ops->abort(w); /* aborts r */
}

void mg_proxy_send_held(mg_req_t *r)
{
    if (!mg_rs_held(r) || r->done)
        return;
    int complete = mg_rs_send(r);
    mg_writer_t *w = r->w;
    if (w == NULL)
        return;
    int switched = r->up && !r->h2x && ((mg_h1c_t *)r->up)->resp_done && r->upgrading &&
                   r->res_head &&
                   r->res_head->status == 101;
    if (switched && r->status != 101)
        r->keepalive = 0; /* a plugin turned the switch down: the body ends at close */
    if (send_head(r, r->res_head, &r->res_edits) != MG_OK) { /* no head goes out half */
        held_failed(r, w);
        return;
    }
    if (switched) {
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
        ssize_t k = w->ops->body(w, mg_buf_data(&r->hold), r->hold.len);
        mg_buf_free(&r->hold);
        if (k < 0) {
            held_failed(r, w);
            return;
        }
        r->resp_bytes += (uint64_t)k;
    }
    if (complete) {
        ssize_t k = w->ops->end(w, r->res_trailers);
        if (k < 0) {
            held_failed(r, w);
            return;
        }
        r->resp_bytes += (uint64_t)k;
        mg_req_finish(r);
        return;
    }
    up_pause(r, 0);
    w->ops->flush(w);
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
    if (mg_rs_sent(r)) {
        mg_log_warn("upstream %s: %s after the response started", r->upstream_addr, why);
        if (r->w)
            mg_req_cut(r); /* aborts r */
        else
            mg_req_abort(r);
        return;
    }
    respond_fail(r, kind, why);
}

/* Counts an MG_MET_UP_* event of r's upstream (metrics.h). */
static void count_up(mg_req_t *r, int what)
{
    if (r->loop->met)
        mg_met_upstream(r->loop->met, r->gen->cfg->upstreams[r->upstream].name, what);
}

/* h1client's failure (a stale pooled connection was already replayed
 * there): a failed connect is retried on the next server where that is
 * allowed, with the bytes it did not send. */
static void x_on_error(void *ud, const mg_h1c_error_t *e)
{
    mg_req_t *r = ud;
    mg_loop_t *loop = r->loop;
    mg_up_server_t *sv = r->h2x ? r->h2x->server : r->exchange.server;
    r->up = NULL;
    int kind = e->code == MG_H1C_TIMEOUT ? (e->connecting ? FAIL_CONNECT_TIMEOUT : FAIL_TIMEOUT)
               : e->connecting           ? FAIL_CONNECT
               : e->code == MG_H1C_INVALID || e->code == MG_H1C_NOMEM ||
                       e->code == MG_H1C_TOO_LARGE
                   ? FAIL_GARBAGE
                   : FAIL_RESET;
    mg_up_t *up = sv->up;
    const mg_cfg_upstream_t *cfg = up->cfg;
    double now = ev_now(loop->ev);
    if (kind == FAIL_CONNECT || kind == FAIL_CONNECT_TIMEOUT) {
        count_up(r, MG_MET_UP_CONNECT);
        if (mg_up_server_failed(up, (int)(sv - up->servers), now))
            mg_log_warn("upstream %s: server %s marked down for %gs (%s)", cfg->name,
                        sv->addr->text, cfg->fail_timeout, e->why);
    }
    if (kind == FAIL_TIMEOUT || kind == FAIL_CONNECT_TIMEOUT)
        count_up(r, MG_MET_UP_TIMEOUT);
    else if (kind == FAIL_RESET || kind == FAIL_GARBAGE)
        count_up(r, kind == FAIL_RESET ? MG_MET_UP_RESET : MG_MET_UP_INVALID);
    /* a retry needs a server that is not down; else the client gets this
     * failure (502/504), not the 503 of a request that found all down */
    if (e->connecting && !mg_rs_sent(r) && r->tries < cfg->retries && mg_up_any_up(up, now)) {
        r->tries++;
        count_up(r, MG_MET_UP_RETRY);
        mg_log_info("upstream %s: %s; retrying", r->upstream_addr, e->why);
        proxy_attach(r);
        return;
    }
    up_end(r);
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
            up_end(r);
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
        int rc = r->h2x ? mg_h2u_attach(r->h2x, up, s, &err)
                        : mg_h1c_attach(&r->exchange, up, s, &err);
        mg_log_debug("upstream %s: server %s picked (try %d): %s", up->cfg->name,
                     r->upstream_addr, r->tries + 1,
                     rc != MG_OK  ? (err ? err : "connect failed")
                     : r->h2x     ? (mg_h2u_connecting(r->h2x) ? "HTTP/2, connecting"
                                                               : "HTTP/2 connection")
                     : r->exchange.u->connecting ? "connecting"
                                                 : "idle keep-alive connection");
        if (rc == MG_ENOMEM) {
            up_end(r);
            mg_log_error("out of memory queueing the upstream request");
            mg_req_error(r, 500, "internal error");
            return;
        }
        if (rc != MG_OK) {
            count_up(r, MG_MET_UP_CONNECT);
            if (r->tries < up->cfg->retries) {
                r->tries++;
                count_up(r, MG_MET_UP_RETRY);
                continue;
            }
            up_end(r);
            respond_fail(r, FAIL_CONNECT, err ? err : "connect failed");
            return;
        }
        r->up = r->h2x ? (void *)r->h2x : (void *)&r->exchange;
        return;
    }
}

static const mg_req_exchange_ops_t exchange_ops = {
    mg_proxy_body, mg_proxy_body_done, mg_proxy_abort,
};

static int idempotent(int method)
{
    return method == HTTP_GET || method == HTTP_HEAD || method == HTTP_PUT ||
           method == HTTP_DELETE || method == HTTP_OPTIONS || method == HTTP_TRACE;
}

void mg_proxy_start(mg_req_t *r, int upstream)
{
    r->upstream = upstream;
    r->upx = &exchange_ops;
    r->on_drained = client_drained;
    build_request_head(r);
    if (r->uhead.failed) { /* one check for the whole head (buf.h) */
        mg_buf_reset(&r->uhead);
        mg_log_error("out of memory building the upstream request head");
        mg_req_error(r, 500, "internal error");
        return;
    }
    const mg_cfg_upstream_t *cfg = r->gen->ups[upstream].cfg;
    if (cfg->h2) {
        mg_h2u_free(r->h2x);
        r->h2x = mg_h2u_new(r->loop, &x_cbs, r, &r->uhead, r->body_done && !r->has_body);
        if (r->h2x == NULL) {
            mg_log_error("out of memory starting an HTTP/2 upstream exchange");
            mg_req_error(r, 500, "internal error");
            return;
        }
        int te = mg_h1_find(r->head, "te", 2, 0);
        r->h2x->te_trailers = te >= 0 && mg_h1_list_has(mg_h1_value(r->head, te), "trailers", 8);
        r->h2x->connect_timeout = cfg->connect_timeout;
        r->h2x->read_timeout = cfg->read_timeout;
        proxy_attach(r);
        return;
    }
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
    if (r->h2x == NULL) {
        mg_h1c_send(r->up, p, n);
        return;
    }
    if (mg_h2u_send(r->h2x, p, n) != MG_OK) { /* a piece is missing: no way on */
        r->up = NULL;
        up_end(r);
        proxy_fail(r, FAIL_GARBAGE, "out of memory queueing the request body");
    }
}

void mg_proxy_body_done(mg_req_t *r)
{
    if (r->h2x)
        mg_h2u_end(r->h2x, r->req_trailers);
    else
        mg_h1c_end(r->up);
}

/* r->on_drained: the client's write queue drained, resume reading the
 * upstream. */
static void client_drained(mg_req_t *r)
{
    up_pause(r, 0);
}

void mg_proxy_abort(mg_req_t *r)
{
    if (r->up == NULL)
        return;
    r->up = NULL;
    up_end(r);
}

void mg_proxy_run(mg_req_t *r)
{
    if (r->done)
        return;
    if (r->upstream < 0) {
        mg_log_error("route %s: no upstream to proxy to", r->gen->cfg->routes[r->route].name);
        mg_req_error(r, 500, "internal error");
        return;
    }
    mg_proxy_start(r, r->upstream);
    if (r->done || r->up == NULL)
        return;
    /* body bytes that arrived while Lua ran */
    if (r->body_buf.len) {
        mg_proxy_body(r, mg_buf_data(&r->body_buf), r->body_buf.len);
        mg_buf_free(&r->body_buf);
        if (r->up)
            mg_req_pause_body(r, 0);
    }
    if (r->body_done && r->has_body && r->up)
        mg_proxy_body_done(r);
}
