#include "http1.h"

#include <stdlib.h>
#include <string.h>

enum { SPAN_NONE, SPAN_URL, SPAN_STATUS, SPAN_FIELD, SPAN_VALUE };

/* Which bytes a request parser expects next (mg_h1_t.mode). */
enum {
    FR_OFF,   /* a response parser: llhttp alone */
    FR_HEAD,  /* a request head, or the empty lines before one */
    FR_RAW,   /* a Content-Length body (or none): llhttp counts it */
    FR_CHUNK, /* a chunked body: checked by h1frame.c first */
};

static mg_h1_t *H(llhttp_t *p) { return (mg_h1_t *)p->data; }

int mg_h1_find(const mg_h1_head_t *h, const char *name, size_t n, int from)
{
    for (int i = from; i < h->nhdrs; i++)
        if (mg_str_eq_ci(mg_h1_name(h, i), name, n))
            return i;
    return -1;
}

void mg_h1_head_reset(mg_h1_head_t *h)
{
    mg_buf_reset(&h->store);
    h->url_off = h->url_len = h->reason_off = h->reason_len = 0;
    h->nhdrs = 0;
    h->method = h->status = 0;
    h->http_major = h->http_minor = 0;
    h->flags = 0;
    h->content_length = 0;
    h->host_count = 0;
}

int mg_h1_head_add(mg_h1_head_t *h, const char *name, size_t nn, const char *value, size_t vn)
{
    if (h->nhdrs == h->hcap) {
        int cap = h->hcap ? h->hcap * 2 : 16;
        mg_h1_hdr_t *a = realloc(h->hdrs, sizeof *a * (size_t)cap);
        if (a == NULL)
            return MG_ENOMEM;
        h->hdrs = a;
        h->hcap = cap;
    }
    uint32_t off = (uint32_t)h->store.len;
    if (mg_buf_append(&h->store, name, nn) != MG_OK || mg_buf_append(&h->store, value, vn) != MG_OK)
        return MG_ENOMEM;
    mg_h1_hdr_t *e = &h->hdrs[h->nhdrs++];
    e->name_off = off;
    e->name_len = (uint32_t)nn;
    e->value_off = off + (uint32_t)nn;
    e->value_len = (uint32_t)vn;
    return MG_OK;
}

void mg_h1_head_free(mg_h1_head_t *h)
{
    if (h == NULL)
        return;
    mg_buf_free(&h->store);
    free(h->hdrs);
    h->hdrs = NULL;
    h->nhdrs = h->hcap = 0;
}

static int fail(mg_h1_t *h, int status, const char *reason)
{
    h->err_status = status;
    h->err_reason = reason;
    return -1;
}

/* Appends a span to the store. A name or value split over two reads arrives
 * in two callbacks: the second extends the first (they are contiguous in the
 * store because nothing else is appended in between). */
static int span(mg_h1_t *h, int kind, const char *at, size_t n)
{
    mg_h1_head_t *hd = h->head;
    if (h->in_body) {
        /* chunked trailers: never part of the head; kept apart if the
         * owner wants them */
        if (h->tr == NULL && (h->cb->trailer_store == NULL ||
                              (h->tr = h->cb->trailer_store(h->ud)) == NULL))
            return 0;
        hd = h->tr;
    }
    if (hd == NULL)
        return fail(h, 400, "bad request");
    if (n == 0)
        return 0; /* llhttp may call with an empty span: it starts nothing
                   * (an empty field name stays "no name": 400) */
    h->head_bytes += n;
    /* a field's ": " and CRLF count from its first byte, before the check:
     * counted after it, the limit depended on how the bytes were split */
    if (kind == SPAN_FIELD && h->last != SPAN_FIELD)
        h->head_bytes += 4;
    if (kind == SPAN_URL && h->max_uri && (size_t)hd->url_len + n > h->max_uri)
        return fail(h, 414, "uri too long");
    /* the URI is judged by max_uri alone until it is complete, so 414 wins
     * over 431 however the bytes arrive */
    if (kind != SPAN_URL && h->max_header && h->head_bytes > h->max_header)
        return fail(h, 431, "request header fields too large");
    uint32_t off = (uint32_t)hd->store.len;
    if (mg_buf_append(&hd->store, at, n) != MG_OK)
        return fail(h, 500, "out of memory");
    int cont = h->last == kind;
    h->last = kind;
    switch (kind) {
    case SPAN_URL:
        if (!cont)
            hd->url_off = off;
        hd->url_len += (uint32_t)n;
        break;
    case SPAN_STATUS:
        if (!cont)
            hd->reason_off = off;
        hd->reason_len += (uint32_t)n;
        break;
    case SPAN_FIELD:
        if (!cont) {
            if (hd->nhdrs == MG_H1_MAX_HEADERS)
                return fail(h, 431, "too many header fields");
            if (hd->nhdrs == hd->hcap) {
                int cap = hd->hcap ? hd->hcap * 2 : 16;
                mg_h1_hdr_t *a = realloc(hd->hdrs, sizeof *a * (size_t)cap);
                if (a == NULL)
                    return fail(h, 500, "out of memory");
                hd->hdrs = a;
                hd->hcap = cap;
            }
            mg_h1_hdr_t *e = &hd->hdrs[hd->nhdrs++];
            e->name_off = off;
            e->name_len = 0;
            e->value_off = off;
            e->value_len = 0;
        }
        hd->hdrs[hd->nhdrs - 1].name_len += (uint32_t)n;
        break;
    case SPAN_VALUE:
        if (hd->nhdrs == 0)
            return fail(h, 400, "bad request");
        if (!cont)
            hd->hdrs[hd->nhdrs - 1].value_off = off;
        hd->hdrs[hd->nhdrs - 1].value_len += (uint32_t)n;
        break;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) { return span(H(p), SPAN_URL, at, n); }

static int on_url_complete(llhttp_t *p)
{
    mg_h1_t *h = H(p);
    h->last = SPAN_NONE;
    if (h->max_header && h->head_bytes > h->max_header)
        return fail(h, 431, "request header fields too large");
    return 0;
}
static int on_status(llhttp_t *p, const char *at, size_t n) { return span(H(p), SPAN_STATUS, at, n); }
static int on_field(llhttp_t *p, const char *at, size_t n) { return span(H(p), SPAN_FIELD, at, n); }
static int on_value(llhttp_t *p, const char *at, size_t n) { return span(H(p), SPAN_VALUE, at, n); }

static int on_message_begin(llhttp_t *p)
{
    mg_h1_t *h = H(p);
    h->head = h->cb->on_begin(h->ud);
    if (h->head == NULL)
        return fail(h, 500, "out of memory");
    mg_h1_head_reset(h->head);
    h->in_msg = 1;
    h->tr = NULL;
    h->last = SPAN_NONE;
    h->head_bytes = 0;
    h->drop_field = 0;
    return 0;
}

/* An empty header value gives no value callback: make sure a field always
 * has a (possibly empty) value, and trim trailing whitespace llhttp keeps. */
static int on_value_complete(llhttp_t *p)
{
    mg_h1_t *h = H(p);
    /* chunked trailers end here too: in their own store, or dropped by
     * span(); the head's last field (already seen by the owner) is not
     * theirs to edit */
    mg_h1_head_t *hd = h->in_body ? h->tr : h->head;
    if (hd == NULL || hd->nhdrs == 0)
        return 0;
    mg_h1_hdr_t *e = &hd->hdrs[hd->nhdrs - 1];
    if (h->drop_field) {
        /* the field is the last thing in the store: it goes entirely */
        h->drop_field = 0;
        hd->store.len = e->name_off;
        hd->nhdrs--;
        h->last = SPAN_NONE;
        return 0;
    }
    if (h->last != SPAN_VALUE) {
        e->value_off = (uint32_t)hd->store.len;
        e->value_len = 0;
    }
    while (e->value_len > 0) {
        char c = hd->store.base[e->value_off + e->value_len - 1];
        if (c != ' ' && c != '\t')
            break;
        e->value_len--;
    }
    h->last = SPAN_NONE;
    return 0;
}

extern const unsigned char mg_h1f_tchar[256]; /* h1frame.c, read-only */

static inline int is_tchar(unsigned char c)
{
    return mg_h1f_tchar[c];
}

int mg_h1_is_token(const char *p, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)p[i]))
            return 0;
    return 1;
}

/* llhttp 8 lets a space inside a header name through; a name is a token
 * (RFC 9110), and "Transfer Encoding" is a classic smuggling probe. An
 * underscore is dropped or refused here (limits.underscore_headers). */
static int on_field_complete(llhttp_t *p)
{
    mg_h1_t *h = H(p);
    int had_name = h->last == SPAN_FIELD;
    h->last = SPAN_NONE;
    mg_h1_head_t *hd = h->in_body ? h->tr : h->head;
    if (hd == NULL)
        return 0;
    /* llhttp 8 also lets an empty name through (a line ": v"): no field
     * bytes arrived, and the value would be added to the previous field
     * (or an empty-named one reach the upstream) */
    if (!had_name || hd->nhdrs == 0)
        return fail(h, 400, "invalid header name");
    mg_str_t n = mg_h1_name(hd, hd->nhdrs - 1);
    if (!mg_h1_is_token(n.p, n.n))
        return fail(h, 400, "invalid header name");
    if (h->underscores != MG_H1_US_ALLOW && h->mode != FR_OFF && memchr(n.p, '_', n.n) != NULL) {
        if (h->underscores == MG_H1_US_REJECT)
            return fail(h, 400, "underscore in header name");
        h->drop_field = 1;
    }
    return 0;
}

/* The value of a Transfer-Encoding header must be exactly "chunked" in a
 * request we accept: anything else ("xchunked", "chunked, identity",
 * "gzip, chunked") is a smuggling vector or unsupported. */
static int te_is_plain_chunked(mg_str_t v)
{
    return MG_STR_EQ_CI(v, "chunked");
}

static int on_headers_complete(llhttp_t *p)
{
    mg_h1_t *h = H(p);
    mg_h1_head_t *hd = h->head;
    if (hd == NULL)
        return fail(h, 400, "bad request");
    /* llhttp ended the head where the strict check did not (a lenient
     * line ending): refused before the owner sees anything */
    if (h->mode != FR_OFF && !h->at_end)
        return fail(h, 400, "malformed request head");
    h->gate = 1;
    h->last = SPAN_NONE;
    hd->method = p->method;
    hd->flags |= MG_H1_HEAD_READ;
    hd->status = p->status_code;
    hd->http_major = p->http_major;
    hd->http_minor = p->http_minor;
    if (p->flags & F_CHUNKED)
        hd->flags |= MG_H1_CHUNKED;
    if (p->flags & F_CONTENT_LENGTH) {
        hd->flags |= MG_H1_HAS_CL;
        hd->content_length = p->content_length;
    }
    if (llhttp_should_keep_alive(p))
        hd->flags |= MG_H1_KEEPALIVE;
    for (int i = 0; i < hd->nhdrs; i++) {
        mg_str_t n = mg_h1_name(hd, i);
        if (MG_STR_EQ_CI(n, "host"))
            hd->host_count++;
        else if (MG_STR_EQ_CI(n, "transfer-encoding")) {
            hd->flags |= MG_H1_HAS_TE;
            if (p->type == HTTP_REQUEST && !te_is_plain_chunked(mg_h1_value(hd, i)))
                return fail(h, 400, "unsupported transfer-encoding");
        } else if (MG_STR_EQ_CI(n, "expect") && p->type == HTTP_REQUEST) {
            if (MG_STR_EQ_CI(mg_h1_value(hd, i), "100-continue"))
                hd->flags |= MG_H1_EXPECT_100;
        }
    }
    /* llhttp 8.1 takes "HTTP/1.1 22" or "HTTP/1.1 0": a status code is
     * three digits (RFC 9110 15), and a proxy must not relay status 0 */
    if (p->type == HTTP_RESPONSE && (hd->status < 100 || hd->status > 999))
        return fail(h, 400, "invalid status code");
    if (p->type == HTTP_REQUEST) {
        /* Our value check trims trailing whitespace, llhttp does not take
         * "chunked<TAB>" as chunked: the body would be read as empty and
         * the chunked bytes after the head as the next request. What we
         * accept as chunked must be what llhttp parses as chunked. */
        if ((hd->flags & MG_H1_HAS_TE) && !(p->flags & F_CHUNKED))
            return fail(h, 400, "unsupported transfer-encoding");
        if ((hd->flags & MG_H1_HAS_TE) && hd->http_major == 1 && hd->http_minor == 0)
            return fail(h, 400, "transfer-encoding in HTTP/1.0");
        if (hd->host_count > 1)
            return fail(h, 400, "duplicate host header");
        if (hd->host_count == 0 && hd->http_major == 1 && hd->http_minor >= 1)
            return fail(h, 400, "missing host header");
        if (hd->method == HTTP_CONNECT)
            return fail(h, 400, "CONNECT is not supported");
        if (hd->url_len == 0)
            return fail(h, 400, "bad request");
    }
    h->in_body = 1;
    int r = h->cb->on_head(h->ud, hd);
    if (r < 0) {
        if (h->err_status == 0)
            fail(h, 500, "internal error");
        return -1;
    }
    /* Upgrade (websocket, h2c) is not proxied: the upgrade headers are
     * dropped as hop-by-hop and the message is handled as plain HTTP. */
    p->upgrade = 0;
    if (h->mode != FR_OFF) {
        /* r == 1: llhttp ends the message here, whatever the framing */
        if (r != 1 && (p->flags & F_CHUNKED)) {
            h->mode = FR_CHUNK;
            mg_h1f_chunked_start(&h->frame);
        } else {
            h->mode = FR_RAW;
        }
    }
    return r == 1 ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    mg_h1_t *h = H(p);
    if (h->cb->on_body(h->ud, at, n) < 0) {
        if (h->err_status == 0)
            fail(h, 500, "internal error");
        return -1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    mg_h1_t *h = H(p);
    if (h->mode == FR_CHUNK && !h->at_end)
        return fail(h, 400, "malformed chunked body");
    if (h->mode != FR_OFF) {
        h->gate = 1;
        h->mode = FR_HEAD;
        mg_h1f_head_start(&h->frame);
    }
    h->in_body = 0;
    h->in_msg = 0;
    h->head = NULL;
    h->tr = NULL;
    p->upgrade = 0;
    int r = h->cb->on_done(h->ud);
    if (r < 0) {
        if (h->err_status == 0)
            fail(h, 500, "internal error");
        return -1;
    }
    if (r == 1) {
        if (h->mode == FR_OFF)
            return 0;
        /* the next head must go through the framing check first */
        h->ipaused = 1;
        return HPE_PAUSED;
    }
    h->paused = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_status = on_status,
    .on_header_field = on_field,
    .on_header_value = on_value,
    .on_header_field_complete = on_field_complete,
    .on_header_value_complete = on_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void mg_h1_init(mg_h1_t *h, int type, const mg_h1_cb_t *cb, void *ud, size_t max_uri,
                size_t max_header)
{
    memset(h, 0, sizeof *h);
    llhttp_init(&h->p, (llhttp_type_t)type, &settings);
    h->p.data = h;
    h->cb = cb;
    h->ud = ud;
    h->max_uri = max_uri;
    h->max_header = max_header;
    if (type == HTTP_REQUEST) {
        h->mode = FR_HEAD;
        mg_h1f_head_start(&h->frame);
    }
}

static int map_error(mg_h1_t *h, llhttp_errno_t e)
{
    if (h->err_status)
        return -1;
    switch (e) {
    case HPE_INVALID_URL:
        h->err_reason = "invalid request target";
        break;
    case HPE_INVALID_CHUNK_SIZE:
        h->err_reason = "invalid chunk size";
        break;
    case HPE_UNEXPECTED_CONTENT_LENGTH:
    case HPE_INVALID_CONTENT_LENGTH:
        h->err_reason = "invalid content-length";
        break;
    case HPE_INVALID_TRANSFER_ENCODING:
        h->err_reason = "invalid transfer-encoding";
        break;
    case HPE_INVALID_METHOD:
        h->err_reason = "invalid method";
        break;
    case HPE_INVALID_VERSION:
        h->err_reason = "invalid http version";
        break;
    case HPE_INVALID_HEADER_TOKEN:
        h->err_reason = "invalid header";
        break;
    default:
        h->err_reason = "malformed request";
        break;
    }
    h->err_status = 400;
    return -1;
}

/* Runs llhttp over p[0..n) (n > 0). Returns the bytes consumed (fewer than
 * n after a pause) or -1. A pause of our own at a message end (the owner
 * said go on) is resumed here. */
static ssize_t exec(mg_h1_t *h, const char *p, size_t n)
{
    llhttp_errno_t e = llhttp_execute(&h->p, p, n);
    if (e == HPE_OK)
        return (ssize_t)n;
    if (e == HPE_PAUSED && (h->paused || h->ipaused)) {
        ssize_t k = llhttp_get_error_pos(&h->p) - p;
        if (h->ipaused) {
            h->ipaused = 0;
            llhttp_resume(&h->p);
        }
        return k;
    }
    return map_error(h, e);
}

/* Feeds llhttp p[0..n), all of it checked; n > 0. With `last`, the final
 * byte ends the head or the chunked body, and llhttp must end it on that
 * byte and not before (on_headers_complete / on_message_complete check
 * at_end). Returns 0 or -1. */
static int exec_checked(mg_h1_t *h, const char *p, size_t n, int last)
{
    size_t k = last ? n - 1 : n;
    if (k > 0) {
        ssize_t r = exec(h, p, k);
        if (r < 0)
            return -1;
        if ((size_t)r != k)
            return fail(h, 400, "malformed request");
    }
    if (!last)
        return 0;
    h->at_end = 1;
    h->gate = 0;
    ssize_t r = exec(h, p + k, 1);
    h->at_end = 0;
    if (r < 0)
        return -1;
    if (r != 1 || !h->gate)
        return fail(h, 400, "malformed request");
    return 0;
}

/* A request parser: each byte is checked (h1frame.c) before llhttp sees
 * it, except Content-Length bodies, which have no framing bytes. */
static ssize_t feed_request(mg_h1_t *h, const char *p, size_t n)
{
    size_t off = 0;
    while (off < n && !h->paused) {
        if (h->mode == FR_RAW) {
            ssize_t k = exec(h, p + off, n - off);
            if (k < 0)
                return -1;
            off += (size_t)k;
            continue;
        }
        size_t used;
        int st = h->mode == FR_HEAD ? mg_h1f_head(&h->frame, p + off, n - off, &used)
                                    : mg_h1f_chunked(&h->frame, p + off, n - off, &used);
        if (st == MG_H1F_BAD) {
            /* what came before the bad byte is parsed first, so a limit
             * or an llhttp error in it wins however the bytes arrive */
            if (used > 0 && exec_checked(h, p + off, used, 0) < 0)
                return -1;
            return fail(h, 400, h->frame.why);
        }
        if (exec_checked(h, p + off, used, st == MG_H1F_END) < 0)
            return -1;
        off += used;
    }
    return (ssize_t)off;
}

ssize_t mg_h1_feed(mg_h1_t *h, const char *p, size_t n)
{
    if (h->paused)
        return 0;
    if (h->err_status)
        return -1;
    if (h->mode != FR_OFF)
        return n ? feed_request(h, p, n) : 0;
    llhttp_errno_t e = llhttp_execute(&h->p, p, n);
    if (e == HPE_OK)
        return (ssize_t)n;
    if (e == HPE_PAUSED && h->paused)
        return llhttp_get_error_pos(&h->p) - p;
    return map_error(h, e);
}

void mg_h1_resume(mg_h1_t *h)
{
    if (!h->paused)
        return;
    h->paused = 0;
    llhttp_resume(&h->p);
}

int mg_h1_eof(mg_h1_t *h)
{
    if (h->paused || h->err_status)
        return h->err_status ? -1 : 0;
    if (!h->in_msg)
        return 0; /* between messages: a clean end */
    llhttp_errno_t e = llhttp_finish(&h->p);
    if (e == HPE_OK || (e == HPE_PAUSED && h->paused))
        return 0;
    return -1;
}

int mg_h1_list_has(mg_str_t v, const char *tok, size_t tn)
{
    size_t at = 0;
    mg_str_t t;
    while (mg_h1_list_next(v, &at, &t))
        if (mg_str_eq_ci(t, tok, tn))
            return 1;
    return 0;
}
