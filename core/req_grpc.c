/* The request layer's gRPC answers: a gRPC call (its Content-Type starts
 * with application/grpc) that the gateway or a plugin answers with an
 * error gets it the gRPC way, as gRPC's "Trailers-Only" response: HTTP 200,
 * no body, grpc-status and grpc-message in the head (PRODUCT.md "Errors
 * users see"). The answer is a generated head with an empty body, so every
 * writer sends it whole (HTTP/1: Content-Length: 0; HTTP/2: one HEADERS
 * frame that ends the stream). The upstream's own answers are never
 * touched; the access log and metrics keep the status the gateway decided
 * (401, 429, 502, ...), not the 200 that carries it. */
#include "grpc_status.h"
#include "h1fields.h"
#include "req.h"

#include <string.h>
#include <strings.h>

int mg_req_grpc_call(const mg_req_t *r)
{
    const mg_h1_head_t *h = r->head;
    if (r->admin || h == NULL || !(h->flags & MG_H1_HEAD_READ))
        return 0; /* before the head is complete its Content-Type is unknown */
    int i = mg_h1_find(h, "content-type", 12, 0);
    return i >= 0 && mg_grpc_is_call(mg_h1_value(h, i));
}

/* Whether the CRLF-ended line at p names header `name` (nn bytes). */
static int line_is(const char *p, size_t len, const char *name, size_t nn)
{
    return len > nn && p[nn] == ':' && strncasecmp(p, name, nn) == 0;
}

int mg_req_grpc_head(const mg_req_t *r, int status, const char *extra, const char *body,
                     size_t n, mg_resp_head_t *h, mg_buf_t *lines)
{
    if (status < 400 || !mg_req_grpc_call(r))
        return 0;
    /* the answer's lines: the handler's or plugin's (WWW-Authenticate,
     * Retry-After, ...) but its Content-Type; a grpc-status or
     * grpc-message it set itself is kept and not added again */
    int has_status = 0, has_message = 0;
    for (const char *p = extra; p && *p;) {
        const char *eol = strstr(p, "\r\n");
        size_t len = eol ? (size_t)(eol - p) + 2 : strlen(p);
        if (line_is(p, len, "grpc-status", 11))
            has_status = 1;
        else if (line_is(p, len, "grpc-message", 12))
            has_message = 1;
        if (!line_is(p, len, "content-type", 12))
            mg_buf_append(lines, p, len);
        p += len;
    }
    /* gRPC-Web clients get their own type back, everyone else the plain one */
    int ci = mg_h1_find(r->head, "content-type", 12, 0);
    mg_str_t ct = mg_h1_value(r->head, ci);
    mg_buf_puts(lines, "content-type: ");
    if (ct.n >= 20 && strncasecmp(ct.p, "application/grpc-web", 20) == 0)
        mg_buf_append(lines, ct.p, ct.n);
    else
        mg_buf_puts(lines, "application/grpc");
    mg_buf_puts(lines, "\r\n");
    if (!has_status)
        mg_buf_printf(lines, "grpc-status: %d\r\n", mg_grpc_code(status));
    if (!has_message) {
        mg_buf_puts(lines, "grpc-message: ");
        mg_grpc_message(lines, body, n, mg_status_reason(status));
        mg_buf_puts(lines, "\r\n");
    }
    mg_buf_append(lines, "", 1);
    if (lines->failed)
        return -1;
    *h = (mg_resp_head_t){ .status = 200, .extra = lines->base, .length = 0 };
    return 1;
}

/* The held head's fields (minus framing and hop-by-hop ones, and those
 * the edits replace) and the response plugins' edits, as CRLF lines. */
static void held_lines(const mg_req_t *r, mg_buf_t *o)
{
    const mg_h1_head_t *h = r->res_head;
    const mg_edits_t *e = &r->res_edits;
    mg_h1f_tokens_t ct;
    mg_h1f_tokens(h, &ct);
    for (int i = 0; i < h->nhdrs; i++) {
        mg_str_t nm = mg_h1_name(h, i), v = mg_h1_value(h, i);
        if (!mg_h1f_forwardable(h, &ct, nm) || mg_h1f_framing(nm) ||
            (e->n && mg_edits_find(e, nm.p, nm.n)))
            continue;
        mg_buf_append(o, nm.p, nm.n);
        mg_buf_append(o, ": ", 2);
        mg_buf_append(o, v.p, v.n);
        mg_buf_append(o, "\r\n", 2);
    }
    for (int i = 0; i < e->n; i++) {
        mg_str_t nm = { e->v[i].name, e->v[i].name_len };
        if (e->v[i].value == NULL || mg_h1f_framing(nm) || mg_h1f_hop_by_hop(nm))
            continue;
        mg_buf_append(o, nm.p, nm.n);
        mg_buf_append(o, ": ", 2);
        mg_buf_append(o, e->v[i].value, e->v[i].value_len);
        mg_buf_append(o, "\r\n", 2);
    }
    mg_buf_append(o, "", 1);
}

int mg_req_grpc_send_held(mg_req_t *r)
{
    if (!mg_rs_held(r) || r->done || !r->own_held || r->res_head == NULL || r->status < 400 ||
        !mg_req_grpc_call(r))
        return 0;
    mg_buf_t lines = { 0 };
    held_lines(r, &lines);
    if (lines.failed) {
        mg_buf_free(&lines);
        mg_req_error(r, 500, "out of memory"); /* replaces the held answer */
        return 1;
    }
    /* mg_req_respond turns it into the gRPC answer (reading the held body
     * for grpc-message before it drops the held response) */
    mg_req_respond(r, r->status, NULL, r->hold.base ? mg_buf_data(&r->hold) : "", r->hold.len,
                   lines.base);
    mg_buf_free(&lines);
    return 1;
}
