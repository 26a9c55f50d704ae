/* Request lifecycle: dispatch (limits, routing, 100-continue), responses
 * built by the gateway itself, the access log line, finish and abort. */
#include "req.h"
#include "conn.h"
#include "log.h"
#include "lrt.h"
#include "proxy.h"
#include "router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void req_free(void *p);

const char *mg_status_reason(int status)
{
    const char *s = llhttp_status_name((llhttp_status_t)status);
    if (s == NULL || strcmp(s, "<unknown>") == 0)
        return "Unknown";
    return s;
}

mg_req_t *mg_req_new(mg_conn_t *c)
{
    mg_req_t *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->loop = c->loop;
    r->conn = c;
    r->gen = c->loop->gen;
    mg_gen_ref(r->gen);
    r->route = -1;
    if (c->spare) {
        r->head = c->spare;
        c->spare = NULL;
    } else if ((r->head = calloc(1, sizeof *r->head)) == NULL) {
        mg_gen_unref(r->gen);
        free(r);
        return NULL;
    }
    r->t_start = ev_now(c->loop->ev);
    c->loop->stats.active++;
    return r;
}

mg_str_t mg_req_header(const mg_req_t *r, const char *name)
{
    int i = mg_h1_find(r->head, name, strlen(name), 0);
    if (i < 0)
        return (mg_str_t){ NULL, 0 };
    return mg_h1_value(r->head, i);
}

static mg_str_t header_cb(void *ud, const char *name)
{
    return mg_req_header(ud, name);
}

static int match_cb(void *ud, int ref)
{
    return mg_lrt_match(ud, ref);
}

/* Splits the request-target into path and query; absolute-form targets
 * ("http://host/path") are reduced to their path. 0, or -1 if unusable. */
static int split_target(mg_req_t *r)
{
    mg_str_t u = mg_h1_url(r->head);
    if (u.n == 1 && u.p[0] == '*') {
        r->path = u;
        return 0;
    }
    if (u.n > 7 && (strncasecmp(u.p, "http://", 7) == 0 || strncasecmp(u.p, "https://", 8) == 0)) {
        const char *p = memchr(u.p + 8, '/', u.n - 8);
        if (p == NULL) {
            u = MG_STR("/");
        } else {
            u.n -= (size_t)(p - u.p);
            u.p = p;
        }
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

int mg_req_dispatch(mg_req_t *r)
{
    mg_h1_head_t *h = r->head;
    const mg_cfg_t *cfg = r->gen->cfg;
    r->http10 = h->http_major == 1 && h->http_minor == 0;
    r->keepalive = (h->flags & MG_H1_KEEPALIVE) && !r->loop->stopping;
    r->has_body = (h->flags & MG_H1_CHUNKED) || ((h->flags & MG_H1_HAS_CL) && h->content_length);
    if (!r->has_body)
        r->body_done = 1; /* nothing to wait for: on_done follows at once */
    if (split_target(r) != 0) {
        mg_req_error(r, 400, "invalid request target");
        return -1;
    }
    if ((h->flags & MG_H1_HAS_CL) && h->content_length > cfg->limits.max_body_bytes) {
        mg_req_error(r, 413, "request body too large");
        return -1;
    }
    mg_str_t host = mg_req_header(r, "host");
    if (host.p) {
        /* strip the port, keeping IPv6 brackets intact */
        for (size_t i = host.n; i > 0; i--) {
            if (host.p[i - 1] == ':') {
                host.n = i - 1;
                break;
            }
            if (host.p[i - 1] == ']' || host.p[i - 1] < '0' || host.p[i - 1] > '9')
                break;
        }
    }
    mg_route_input_t in = {
        .path = r->path, .host = host, .method = h->method,
        .header = header_cb, .call_match = match_cb, .ud = r,
    };
    r->route = mg_router_match(cfg, &in);
    if (r->done)
        return -1; /* a match function failed and answered 500 */
    if (r->route < 0) {
        mg_req_error(r, 404, "no route");
        return -1;
    }
    const mg_cfg_route_t *rt = &cfg->routes[r->route];
    if ((h->flags & MG_H1_EXPECT_100) && r->has_body && !r->http10 && r->conn) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        mg_conn_write(r->conn, cont, sizeof cont - 1);
        mg_conn_flush(r->conn);
        if (r->done)
            return -1;
    }
    if (rt->handler_ref >= 0) {
        mg_lrt_handle(r, rt->handler_ref);
        return 0;
    }
    mg_proxy_start(r, rt->upstream);
    return 0;
}

void mg_req_body(mg_req_t *r, const char *p, size_t n)
{
    r->body_bytes += n;
    if (r->body_bytes > r->gen->cfg->limits.max_body_bytes) {
        if (!r->resp_started) {
            mg_req_error(r, 413, "request body too large");
        } else if (r->conn) {
            mg_conn_close(r->conn);
        }
        return;
    }
    if (r->up)
        mg_proxy_body(r, p, n);
}

void mg_req_body_done(mg_req_t *r)
{
    if (r->body_done)
        return;
    r->body_done = 1;
    if (r->up)
        mg_proxy_body_done(r);
}

void mg_req_end_head(mg_req_t *r, mg_buf_t *out)
{
    if (!r->keepalive || !r->body_done || r->resp_close)
        mg_buf_append(out, "Connection: close\r\n\r\n", 21);
    else if (r->http10)
        mg_buf_append(out, "Connection: keep-alive\r\n\r\n", 26);
    else
        mg_buf_append(out, "\r\n", 2);
}

void mg_req_respond(mg_req_t *r, int status, const char *ctype, const char *body, size_t n,
                    const char *extra_headers)
{
    if (r->done || r->resp_started)
        return;
    if (r->up)
        mg_proxy_abort(r);
    mg_conn_t *c = r->conn;
    r->status = status;
    r->resp_started = 1;
    if (c == NULL) {
        mg_req_finish(r);
        return;
    }
    /* a response before the body arrived: the rest of it is not read */
    int no_body = status == 204 || status == 304 || (status >= 100 && status < 200) ||
                  r->head->method == HTTP_HEAD;
    mg_buf_t *out = &c->wbuf;
    size_t before = out->len;
    mg_buf_printf(out, "HTTP/1.1 %d %s\r\n", status, mg_status_reason(status));
    if (ctype)
        mg_buf_printf(out, "Content-Type: %s\r\n", ctype);
    if (status != 204 && status != 304)
        mg_buf_printf(out, "Content-Length: %zu\r\n", n);
    if (extra_headers)
        mg_buf_append(out, extra_headers, strlen(extra_headers));
    mg_req_end_head(r, out);
    if (!no_body)
        mg_buf_append(out, body, n);
    r->resp_bytes = out->len - before;
    r->resp_body_bytes = no_body ? 0 : n;
    mg_req_finish(r);
}

void mg_req_error(mg_req_t *r, int status, const char *msg)
{
    char body[256];
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\"}", msg);
    mg_req_respond(r, status, "application/json", body, (size_t)n, NULL);
}

static void access_log(mg_req_t *r, int aborted)
{
    FILE *f = r->loop->access_log;
    if (f == NULL)
        return;
    char ts[32];
    double now = ev_now(r->loop->ev);
    mg_log_time(now, ts);
    const char *method = r->head->method >= 0 ? llhttp_method_name(r->head->method) : "-";
    mg_str_t url = mg_h1_url(r->head);
    if (url.n == 0)
        url = MG_STR("-");
    fprintf(f, "%s %s %s %.*s %d %llu %s %.3f%s\n", ts, r->conn ? r->conn->remote : "-",
            r->status ? method : method, (int)(url.n > 2048 ? 2048 : url.n), url.p,
            aborted ? 499 : r->status, (unsigned long long)r->resp_bytes,
            r->upstream_addr[0] ? r->upstream_addr : "-", now - r->t_start,
            aborted ? " aborted" : "");
}

void mg_req_finish(mg_req_t *r)
{
    if (r->done)
        return;
    r->done = 1;
    if (r->up)
        mg_proxy_abort(r);
    mg_loop_t *loop = r->loop;
    loop->stats.requests++;
    loop->stats.active--;
    access_log(r, 0);
    mg_conn_t *c = r->conn;
    if (c) {
        int keepalive = r->keepalive && r->body_done && !r->resp_close;
        if (!r->body_done)
            c->closing = 1; /* the rest of the body will not be read */
        r->conn = NULL;
        if (c->spare == NULL) {
            c->spare = r->head;
            r->head = NULL;
        }
        mg_conn_request_done(c, keepalive);
    }
    mg_loop_defer(loop, req_free, r);
    mg_loop_check_drained(loop);
}

void mg_req_abort(mg_req_t *r)
{
    if (r->done)
        return;
    r->done = 1;
    if (r->up)
        mg_proxy_abort(r);
    r->loop->stats.active--;
    if (r->head->nhdrs || r->head->url_len)
        access_log(r, 1);
    r->conn = NULL;
    mg_loop_defer(r->loop, req_free, r);
    mg_loop_check_drained(r->loop);
}

static void req_free(void *p)
{
    mg_req_t *r = p;
    if (r->head) {
        mg_h1_head_free(r->head);
        free(r->head);
    }
    mg_buf_free(&r->uhead);
    mg_gen_unref(r->gen);
    free(r);
}
