/* Request lifecycle: dispatch (limits, routing, 100-continue), responses
 * built by the gateway itself, the access log line, finish and abort.
 *
 * A request ends once (finish or abort: `done`) but is freed only when no
 * coroutine holds it any more: a log phase may still run after the client
 * has its response. */
#include "req.h"
#include "accesslog.h"
#include "log.h"
#include "metrics.h"
#include "realip.h"
#include "router.h"
#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BODY_HOLD_HIGH (256 * 1024)

static void req_free(void *p);

const char *mg_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status < 200 ? "Informational" : status < 300 ? "OK" : status < 400 ? "Redirect"
                  : status < 500 ? "Client Error" : "Server Error";
    }
}

/* --- creation and dispatch ------------------------------------------------ */

#define FREE_REQS_MAX 256

mg_req_t *mg_req_new(mg_loop_t *loop, mg_h1_head_t *head)
{
    mg_req_t *r = loop->free_reqs;
    if (r) {
        /* reuse a finished request; keep its upstream-head buffer */
        loop->free_reqs = r->next_free;
        loop->nfree_reqs--;
        mg_buf_t uhead = r->uhead;
        memset(r, 0, sizeof *r);
        r->uhead = uhead;
        mg_buf_reset(&r->uhead);
    } else if ((r = calloc(1, sizeof *r)) == NULL) {
        return NULL;
    }
    r->loop = loop;
    r->gen = loop->gen;
    mg_gen_ref(r->gen);
    r->route = -1;
    r->upstream = -1;
    r->co_ref = -2; /* LUA_NOREF */
    if (head) {
        r->head = head;
    } else if ((r->head = calloc(1, sizeof *r->head)) == NULL) {
        mg_gen_unref(r->gen);
        mg_buf_free(&r->uhead); /* a reused request's kept buffer */
        free(r);
        return NULL;
    }
    r->t_start = ev_time(); /* not the loop's cached time: latencies are sub-ms */
    loop->stats.active++;
    return r;
}

mg_str_t mg_req_header(const mg_req_t *r, const char *name)
{
    size_t nn = strlen(name);
    if (r->edits.n) {
        const mg_hdr_edit_t *e = mg_edits_find(&r->edits, name, nn);
        if (e)
            return e->value ? (mg_str_t){ e->value, e->value_len } : (mg_str_t){ NULL, 0 };
    }
    int i = mg_h1_find(r->head, name, nn, 0);
    if (i < 0)
        return (mg_str_t){ NULL, 0 };
    return mg_h1_value(r->head, i);
}

uint32_t mg_req_hash(const mg_req_t *r, const char *key)
{
    mg_str_t v;
    if (strcmp(key, "uri") == 0)
        v = mg_h1_url(r->head);
    else if (strncmp(key, "header:", 7) == 0)
        v = mg_req_header(r, key + 7);
    else
        v = (mg_str_t){ r->remote, strlen(r->remote) };
    if (v.p == NULL)
        v = (mg_str_t){ "", 0 };
    return mg_up_hash(v.p, v.n);
}

mg_str_t mg_req_upgrade(const mg_req_t *r)
{
    const mg_h1_head_t *h = r->head;
    mg_str_t none = { NULL, 0 };
    if (h == NULL)
        return none;
    int i = mg_h1_find(h, "upgrade", 7, 0);
    if (i < 0)
        return none;
    int asked = 0;
    for (int c = mg_h1_find(h, "connection", 10, 0); c >= 0 && !asked;
         c = mg_h1_find(h, "connection", 10, c + 1))
        asked = mg_h1_list_has(mg_h1_value(h, c), "upgrade", 7);
    if (!asked)
        return none;
    mg_str_t v = mg_h1_value(h, i);
    size_t a = 0;
    while (a < v.n && (v.p[a] == ' ' || v.p[a] == '\t' || v.p[a] == ','))
        a++;
    size_t b = a;
    while (b < v.n && v.p[b] != ',' && v.p[b] != ' ' && v.p[b] != '\t')
        b++;
    if (b == a)
        return none;
    return (mg_str_t){ v.p + a, b - a };
}

static mg_str_t header_cb(void *ud, const char *name)
{
    return mg_req_header(ud, name);
}

static int match_cb(void *ud, int ref)
{
    return mg_req_lua_match(ud, ref);
}

/* Splits the request-target into path and query; absolute-form targets
 * ("http://host/path") are reduced to their path. 0, or -1 if unusable. */
static int split_target(mg_req_t *r)
{
    mg_str_t u = mg_h1_url(r->head);
    if (u.n == 1 && u.p[0] == '*') {
        r->path = u;
        r->query = (mg_str_t){ u.p + u.n, 0 };
        return 0;
    }
    if (u.n > 7 && (strncasecmp(u.p, "http://", 7) == 0 || strncasecmp(u.p, "https://", 8) == 0)) {
        const char *p = memchr(u.p + 8, '/', u.n - 8);
        if (p == NULL)
            return -1;
        u.n -= (size_t)(p - u.p);
        u.p = p;
    }
    if (u.n == 0 || u.p[0] != '/')
        return -1;
    const char *q = memchr(u.p, '?', u.n);
    if (q) {
        r->path = (mg_str_t){ u.p, (size_t)(q - u.p) };
        r->query = (mg_str_t){ q + 1, u.n - (size_t)(q - u.p) - 1 };
    } else {
        r->path = u;
        r->query = (mg_str_t){ u.p + u.n, 0 };
    }
    return 0;
}

void mg_req_dispatch(mg_req_t *r)
{
    mg_h1_head_t *h = r->head;
    const mg_cfg_t *cfg = r->gen->cfg;
    r->http10 = h->http_major == 1 && h->http_minor == 0;
    if (cfg->ntrusted)
        mg_rip_apply(cfg->trusted, cfg->ntrusted, h, r->remote); /* X-Forwarded-For */
    r->keepalive = (h->flags & MG_H1_KEEPALIVE) && !r->loop->stopping;
    r->has_body = (h->flags & MG_H1_CHUNKED) || ((h->flags & MG_H1_HAS_CL) && h->content_length);
    if (!r->has_body)
        r->body_done = 1; /* nothing to wait for: on_done follows at once */
    if (split_target(r) != 0) {
        r->keepalive = 0; /* as for every 400: nothing pipelined behind it is served */
        mg_req_error(r, 400, "invalid request target");
        return;
    }
    if ((h->flags & MG_H1_HAS_CL) && h->content_length > cfg->limits.max_body_bytes) {
        r->keepalive = 0; /* a body over the limit is not read, not even to drop it */
        mg_req_error(r, 413, "request body too large");
        return;
    }
    if (r->admin_listener && r->loop->admin_handler) {
        r->admin = 1;
        r->loop->admin_handler(r);
        return;
    }
    mg_str_t host = mg_req_header(r, "host");
    if (host.p) {
        /* strip the port, keeping IPv6 brackets intact */
        for (size_t i = host.n; i > 0; i--) {
            if (host.p[i - 1] == ':') {
                host.n = i - 1;
                break;
            }
            if (host.p[i - 1] < '0' || host.p[i - 1] > '9')
                break;
        }
    }
    mg_route_input_t in = {
        .path = r->path, .host = host, .method = h->method,
        .header = header_cb, .call_match = match_cb, .ud = r,
    };
    /* Routes see the normalized path; the upstream still gets the target
     * as sent (nginx: locations match $uri, proxy_pass sends the original). */
    char stackbuf[512];
    size_t nn = 0;
    char *nbuf = stackbuf;
    int nrc = 0;
    if (!mg_router_path_is_normal(r->path.p, r->path.n)) { /* rare: allocate only then */
        if (r->path.n > sizeof stackbuf && (nbuf = malloc(r->path.n)) == NULL) {
            mg_req_error(r, 500, "internal error");
            return;
        }
        nrc = mg_router_normalize(r->path.p, r->path.n, nbuf, &nn);
    }
    if (nrc < 0) {
        if (nbuf != stackbuf)
            free(nbuf);
        r->keepalive = 0;
        mg_req_error(r, 400, "invalid request target");
        return;
    }
    if (nrc > 0)
        in.path = (mg_str_t){ nbuf, nn };
    r->route = mg_router_match(cfg, &in);
    if (nbuf != stackbuf)
        free(nbuf);
    if (r->done)
        return; /* a match function failed and answered 500 */
    if (r->route < 0) {
        mg_req_error(r, 404, "no route");
        return;
    }
    const mg_cfg_route_t *rt = &cfg->routes[r->route];
    r->upstream = rt->upstream;
    mg_log_debug("%s %.*s from %s: route %s -> %s", llhttp_method_name(h->method),
                 (int)r->path.n, r->path.p, r->remote, rt->name,
                 rt->chain_ref >= 0 ? "Lua chain"
                 : rt->upstream >= 0 ? cfg->upstreams[rt->upstream].name : "-");
    if ((h->flags & MG_H1_EXPECT_100) && r->has_body && !r->http10 && r->w) {
        r->w->ops->interim(r->w, 100);
        if (r->done)
            return;
    }
    if (rt->chain_ref >= 0) {
        mg_req_lua_start(r, rt->chain_ref);
        return;
    }
    r->loop->proxy_handler(r);
}

void mg_req_body(mg_req_t *r, const char *p, size_t n)
{
    r->body_bytes += n;
    if (r->body_bytes > r->gen->cfg->limits.max_body_bytes) {
        r->keepalive = 0;
        if (!mg_rs_sent(r)) {
            mg_req_error(r, 413, "request body too large");
        } else {
            mg_req_cut(r);
        }
        return;
    }
    if (r->up) {
        r->upx->body(r, p, n);
        return;
    }
    if (r->co == NULL)
        return; /* nobody will read it */
    /* Lua runs before the proxy: keep the body, within bounds unless
     * req:body() asked for all of it (max_body_bytes bounds that). */
    if (mg_buf_append(&r->body_buf, p, n) != MG_OK) {
        mg_req_error(r, 500, "out of memory");
        return;
    }
    if (r->body_buf.len > BODY_HOLD_HIGH && !r->want_body)
        mg_req_pause_body(r, 1);
}

void mg_req_body_done(mg_req_t *r)
{
    if (r->body_done)
        return;
    r->body_done = 1;
    if (r->up)
        r->upx->body_done(r);
    if (r->want_body) {
        r->want_body = 0;
        mg_req_wake(r);
    }
}

mg_h1_head_t *mg_req_trailer_store(mg_req_t *r)
{
    if (r->req_trailers == NULL)
        r->req_trailers = calloc(1, sizeof *r->req_trailers);
    return r->req_trailers;
}

/* --- responses ------------------------------------------------------------- */

void mg_req_respond(mg_req_t *r, int status, const char *ctype, const char *body, size_t n,
                    const char *extra_headers)
{
    if (r->done || mg_rs_sent(r))
        return;
    /* a gRPC call's error goes the gRPC way (req_grpc.c); made now, while
     * `body` may still be the held response's */
    mg_resp_head_t h = { .status = status, .ctype = ctype, .extra = extra_headers, .length = n };
    mg_buf_t glines = { 0 };
    int grpc = mg_req_grpc_head(r, status, extra_headers, body, n, &h, &glines);
    if (grpc > 0) {
        body = "";
        n = 0;
    } else if (grpc < 0) { /* no memory for it: the plain answer goes out */
        mg_buf_free(&glines);
    }
    if (r->up)
        r->upx->cancel(r);
    if (mg_rs_held(r)) { /* an error before a held upstream response went out */
        mg_rs_drop_held(r);
        r->resp_bytes = 0;
    }
    r->status = status;
    mg_rs_send(r);
    if (r->w == NULL) {
        mg_buf_free(&glines);
        mg_req_finish(r);
        return;
    }
    int no_body = mg_status_no_length(status) || r->head->method == HTTP_HEAD;
    ssize_t k = r->w->ops->head(r->w, r, &h, body ? body : "", n);
    if (k < 0) {
        /* nothing of this response goes out, and the connection ends
         * after what was queued before */
        mg_log_error("out of memory queueing a %d response; closing the connection", status);
        r->keepalive = 0;
        r->w->ops->close(r->w);
        k = 0;
    }
    mg_buf_free(&glines);
    r->resp_bytes = (uint64_t)k;
    r->resp_body_bytes = no_body || k == 0 ? 0 : n;
    mg_req_finish(r);
}

mg_h1_head_t *mg_req_stage_begin(mg_req_t *r, int status, const char *ctype, size_t n)
{
    if (r->done || mg_rs_sent(r) || r->w == NULL)
        return NULL;
    if (r->up)
        r->upx->cancel(r);
    mg_h1_head_t *h = r->res_head;
    if (h == NULL && (h = calloc(1, sizeof *h)) == NULL)
        return NULL;
    r->res_head = h;
    r->own_held = 1; /* the gateway's own answer, held (req_grpc.c) */
    mg_h1_head_reset(h);
    h->status = status;
    h->http_major = h->http_minor = 1;
    mg_edits_free(&r->res_edits); /* edits made to a response this one replaces */
    mg_buf_reset(&r->hold);
    char num[24];
    int nl = snprintf(num, sizeof num, "%zu", n);
    if ((ctype && mg_h1_head_add(h, "Content-Type", 12, ctype, strlen(ctype)) != MG_OK) ||
        (!mg_status_no_length(status) &&
         mg_h1_head_add(h, "Content-Length", 14, num, (size_t)nl) != MG_OK))
        return NULL;
    if (!mg_status_no_length(status))
        h->flags |= MG_H1_HAS_CL; /* the writer frames it by its length */
    return h;
}

int mg_req_stage_end(mg_req_t *r, const char *body, size_t n)
{
    int status = r->res_head->status;
    if (!mg_status_no_length(status) && r->head->method != HTTP_HEAD &&
        mg_buf_append(&r->hold, body, n) != MG_OK)
        return MG_ENOMEM; /* mg_req_respond drops whatever was held */
    r->status = status;
    r->resp_body_bytes = r->hold.len;
    mg_rs_staged(r);
    return MG_OK;
}

void mg_req_error(mg_req_t *r, int status, const char *msg)
{
    char body[256];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}", msg);
    mg_req_respond(r, status, "application/json", body, (size_t)n, NULL);
}

static void access_log(mg_req_t *r)
{
    FILE *f = r->loop->access_log;
    if (f == NULL)
        return;
    const mg_h1_head_t *h = r->head;
    int parsed = (h->flags & MG_H1_HEAD_READ) != 0; /* else llhttp's method 0 means nothing */
    mg_alog_entry_t e = {
        .time = ev_now(r->loop->ev),
        .remote = r->remote,
        .method = parsed ? llhttp_method_name(h->method) : "-",
        .path = h->url_len ? mg_h1_url(h) : (mg_str_t){ NULL, 0 },
        .status = r->aborted ? 499 : r->status,
        .bytes_sent = r->resp_bytes,
        .upstream = r->upstream_addr[0] ? r->upstream_addr : NULL,
        .duration = ev_time() - r->t_start,
        .route = r->route >= 0 ? r->gen->cfg->routes[r->route].name : NULL,
        .request_id = { r->request_id, r->request_id ? strlen(r->request_id) : 0 },
        .http_major = parsed ? h->http_major : 0,
        .http_minor = parsed ? h->http_minor : 0,
        .tunnel = r->tunnel,
        .tunnel_up = r->tun_bytes[0],
        .tunnel_down = r->tun_bytes[1],
    };
    int ua = parsed ? mg_h1_find(h, "user-agent", 10, 0) : -1;
    if (ua >= 0)
        e.user_agent = mg_h1_value(h, ua);
    mg_alog_write(f, r->gen->cfg->access_log_format, &e);
}

/* `spare_head`: the head store may go to the next request (no coroutine
 * can read it any more). */
static void release_conn(mg_req_t *r, int spare_head)
{
    mg_reqsrc_t *src = r->src;
    if (!r->done || src == NULL || r->in_lua)
        return;
    int keepalive = r->keepalive && (r->body_done || mg_req_discard_body(r));
    r->w = NULL;
    r->src = NULL;
    if (src->ops->done(src, keepalive, spare_head ? r->head : NULL))
        r->head = NULL; /* the source reuses the head store for its next request */
}

void mg_req_release_conn(mg_req_t *r)
{
    release_conn(r, 0);
}

void mg_req_finish(mg_req_t *r)
{
    if (r->done)
        return;
    r->done = 1;
    if (r->up)
        r->upx->cancel(r);
    mg_loop_t *loop = r->loop;
    loop->stats.requests++;
    loop->stats.active--;
    if (!r->admin) {
        access_log(r);
        if (loop->met)
            mg_met_request(loop->met, r->route >= 0 ? r->gen->cfg->routes[r->route].name : "",
                           r->status, ev_time() - r->t_start);
    }
    if (r->w) {
        if (mg_req_discard_body(r))
            mg_req_pause_body(r, 0); /* the rest is read and dropped */
        else if (!r->body_done)
            r->w->ops->close(r->w); /* the rest of the body will not be read */
        /* inside Lua, conn goes on once lua_resume returned (req_lua.c):
         * it must not parse the next request under a running coroutine */
        release_conn(r, r->co == NULL);
    }
    /* a coroutine waiting on this request's progress goes on now */
    if (r->wait.armed && (r->wait.kind == MG_WAIT_DONE || r->wait.kind == MG_WAIT_BODY ||
                          r->wait.kind == MG_WAIT_HEAD)) {
        r->want_body = 0;
        mg_req_wake(r);
    }
    mg_req_maybe_free(r);
    mg_loop_check_drained(loop);
}

void mg_req_abort(mg_req_t *r)
{
    if (r->done)
        return;
    r->done = 1;
    r->aborted = 1;
    if (r->up)
        r->upx->cancel(r);
    r->loop->stats.active--;
    if (r->head && (r->head->nhdrs || r->head->url_len) && !r->admin) {
        access_log(r);
        if (r->loop->met)
            mg_met_request(r->loop->met, r->route >= 0 ? r->gen->cfg->routes[r->route].name : "",
                           499, ev_now(r->loop->ev) - r->t_start);
    }
    r->w = NULL;
    r->src = NULL;
    if (r->lua_abort)
        r->lua_abort(r);
    mg_req_maybe_free(r);
    mg_loop_check_drained(r->loop);
}

void mg_req_wake(mg_req_t *r)
{
    if (!r->wait.armed || r->co == NULL)
        return;
    /* Queue the wake-up as a pending event of the wait timer: libev runs it
     * right after the current callback returns, in this same iteration (no
     * extra poll), and stopping the timer (abort) drops it again. */
    ev_timer_stop(r->loop->ev, &r->wait.timer);
    ev_feed_event(r->loop->ev, &r->wait.timer, EV_TIMER);
}

void mg_req_maybe_free(mg_req_t *r)
{
    if (!r->done || r->co != NULL || r->in_lua || r->wait.armed || r->freeing)
        return;
    if (r->lua_handle)
        *r->lua_handle = NULL;
    if (r->res_handle)
        *r->res_handle = NULL;
    r->lua_handle = r->res_handle = NULL;
    r->freeing = 1;
    mg_loop_defer(r->loop, req_free, r);
}

static void req_free(void *p)
{
    mg_req_t *r = p;
    if (r->head) {
        mg_h1_head_free(r->head);
        free(r->head);
    }
    if (r->res_head) {
        mg_h1_head_free(r->res_head);
        free(r->res_head);
    }
    if (r->res_trailers) {
        mg_h1_head_free(r->res_trailers);
        free(r->res_trailers);
    }
    if (r->req_trailers) {
        mg_h1_head_free(r->req_trailers);
        free(r->req_trailers);
    }
    mg_buf_free(&r->body_buf);
    mg_buf_free(&r->hold);
    mg_edits_free(&r->edits);
    mg_edits_free(&r->res_edits);
    free(r->path_override);
    free(r->request_id);
    mg_gen_unref(r->gen);
    mg_loop_t *loop = r->loop;
    if (loop->nfree_reqs < FREE_REQS_MAX && r->uhead.cap <= 4096 && !r->script) {
        r->next_free = loop->free_reqs;
        loop->free_reqs = r;
        loop->nfree_reqs++;
        return;
    }
    mg_buf_free(&r->uhead);
    free(r);
}
